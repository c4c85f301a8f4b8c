// The rule runtime: loading, declarations, handlers, errors with
// file:line, the next best action, variations, limits, the model, cohorts,
// explain, and the sandbox.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/err.h"
#include "core/json.h"
#include "core/log.h"
#include "core/store.h"
#include "lua/rules.h"

static char      dir[64];
static ch_rules *rules;
static ch_store *store;
static MDB_txn  *txn;
static int64_t   now = 1767225600000;

static msgpack_sbuffer st_in, st_out, reply, emits;

static void
setup(void)
{
	ch_log_set_level(CH_LOG_OFF);
	snprintf(dir, sizeof(dir), "/tmp/choreo-rules-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	msgpack_sbuffer_init(&st_in);
	msgpack_sbuffer_init(&st_out);
	msgpack_sbuffer_init(&reply);
	msgpack_sbuffer_init(&emits);
	rules = NULL;
	store = NULL;
	txn   = NULL;
}

static void
teardown(void)
{
	if (txn != NULL) {
		ch_store_abort(txn);
	}
	ch_store_close(store);
	ch_rules_free(rules);
	msgpack_sbuffer_destroy(&st_in);
	msgpack_sbuffer_destroy(&st_out);
	msgpack_sbuffer_destroy(&reply);
	msgpack_sbuffer_destroy(&emits);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(rules, .init = setup, .fini = teardown);

static void
write_file(const char *biz, const char *file, const char *text)
{
	char p[256];
	snprintf(p, sizeof(p), "%s/%s", dir, biz);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/%s/%s", dir, biz, file);
	FILE *f = fopen(p, "w");
	cr_assert_not_null(f);
	fputs(text, f);
	fclose(f);
}

static ch_str
S(const char *s)
{
	return ((ch_str) { s, (uint32_t) strlen(s) });
}

static void
load_with(ch_rules_opts o)
{
	ch_rules_free(rules);
	cr_assert_eq(ch_rules_load(&rules, dir, &o), CH_OK);
	if (store == NULL) {
		char          why[200];
		char          sdir[80];
		ch_store_opts so = { false, (size_t) 1 << 30, 0 };
		snprintf(sdir, sizeof(sdir), "%s/.store", dir);
		cr_assert_eq(ch_store_open(&store, sdir, &so, why, sizeof(why)),
		    CH_OK);
		cr_assert_eq(ch_store_begin(store, NULL, &txn), CH_OK);
	}
}

static void
load(void)
{
	load_with(CH_RULES_OPTS_DEFAULT);
}

static ch_biz *
biz(const char *name)
{
	ch_biz *b = ch_rules_find(rules, S(name));
	cr_assert_not_null(b, "business %s should serve: %s", name,
	    ch_rules_error(rules, S(name)) ? ch_rules_error(rules, S(name))
	                                   : "?");
	return (b);
}

// The reply (or state) as JSON text, for easy assertions.
static json_t *last_reply, *last_state;

static json_t *
to_json(msgpack_sbuffer *b)
{
	msgpack_unpacked up;
	size_t           off = 0;
	msgpack_unpacked_init(&up);
	cr_assert_eq(msgpack_unpack_next(&up, b->data, b->size, &off),
	    MSGPACK_UNPACK_SUCCESS);
	json_t *j = ch_msgpack_to_json(&up.data);
	msgpack_unpacked_destroy(&up);
	return (j);
}

typedef struct {
	const char *type, *channel, *region, *product, *id;
	bool        nodecide, norecord, explain;
	int         limit;
	const char *data_json;
} ev;

// run sends one event (or a decision when type is NULL) for customer c1,
// carrying the state forward. Returns the rule call's status.
static int
run(const char *business, ev e, char *err, size_t errlen)
{
	ch_req r = { 0 };
	r.op       = e.type ? CH_OP_EVENT : CH_OP_DECIDE;
	r.business = S(business);
	r.customer = S("c1");
	r.type     = e.type ? S(e.type) : (ch_str) { NULL, 0 };
	r.channel  = e.channel ? S(e.channel) : (ch_str) { NULL, 0 };
	r.region   = e.region ? S(e.region) : (ch_str) { NULL, 0 };
	r.product  = e.product ? S(e.product) : (ch_str) { NULL, 0 };
	r.id       = e.id ? S(e.id) : (ch_str) { NULL, 0 };
	r.decide   = !e.nodecide;
	r.record   = !e.norecord;
	r.explain  = e.explain;
	r.limit    = e.limit ? e.limit : 3;
	msgpack_unpacked data;
	msgpack_sbuffer  dbuf;
	msgpack_unpacked_init(&data);
	msgpack_sbuffer_init(&dbuf);
	if (e.data_json != NULL) {
		json_error_t je;
		json_t      *j = json_loads(e.data_json, 0, &je);
		cr_assert_not_null(j, "%s", je.text);
		msgpack_packer pk;
		msgpack_packer_init(&pk, &dbuf, msgpack_sbuffer_write);
		ch_json_to_msgpack(j, &pk);
		json_decref(j);
		size_t off = 0;
		msgpack_unpack_next(&data, dbuf.data, dbuf.size, &off);
		r.data = &data.data;
	}
	st_out.size = reply.size = emits.size = 0;
	ch_rule_out out = { .store = store, .txn = txn, .state = &st_out,
		.reply = &reply, .emits = &emits };
	ch_biz *b  = biz(business);
	int     rc = r.op == CH_OP_EVENT
	        ? ch_biz_event(b, &r, st_in.size ? st_in.data : NULL,
	              st_in.size, now, &out)
	        : ch_biz_decide(b, &r, st_in.size ? st_in.data : NULL,
	              st_in.size, now, &out);
	msgpack_unpacked_destroy(&data);
	msgpack_sbuffer_destroy(&dbuf);
	if (err != NULL) {
		snprintf(err, errlen, "%s", out.errmsg);
	}
	if (rc == CH_OK) {
		json_decref(last_reply);
		last_reply = to_json(&reply);
		if (st_out.size > 0) {
			msgpack_sbuffer_clear(&st_in);
			msgpack_sbuffer_write(&st_in, st_out.data, st_out.size);
			json_decref(last_state);
			last_state = to_json(&st_in);
		}
	}
	return (rc);
}

static void
ok(const char *business, ev e)
{
	char err[600];
	int  rc = run(business, e, err, sizeof(err));
	cr_assert_eq(rc, CH_OK, "rule failed: %s", err);
}

// at: a value in the last reply by path, e.g. at("actions.0.name")
static json_t *
at(json_t *j, const char *path)
{
	char p[256];
	snprintf(p, sizeof(p), "%s", path);
	for (char *tok = strtok(p, "."); tok && j; tok = strtok(NULL, ".")) {
		if (json_is_array(j)) {
			j = json_array_get(j, (size_t) atoi(tok));
		} else {
			j = json_object_get(j, tok);
		}
	}
	return (j);
}

static const char *
str_at(json_t *j, const char *path)
{
	json_t *v = at(j, path);
	return (json_is_string(v) ? json_string_value(v) : NULL);
}

static double
num_at(json_t *j, const char *path)
{
	json_t *v = at(j, path);
	cr_assert(json_is_number(v), "%s is not a number", path);
	return (json_number_value(v));
}

static const char BASE[] =
    "params { price = 9.99 }\n"
    "journey 'onboarding' { stages = { 'visitor', 'applied', 'funded' }, goal = 'funded' }\n"
    "action 'gold' { group = 'cards', channels = { 'web', 'app' }, value = 100,\n"
    "  eligible = function(c) return (c.attrs.age or 0) >= 18 end,\n"
    "  payload = { title = 'Gold', price = params.price } }\n"
    "action 'basic' { group = 'cards', value = 40 }\n"
    "action 'news' { value = 40 }\n";

Test(rules, handlers_run_in_file_order_and_star_runs_for_every_event)
{
	write_file("shop", "10.lua", BASE);
	write_file("shop", "20.lua",
	    "on('x', function(c, e) c.attrs.log = (c.attrs.log or '') .. 'a' end)\n"
	    "on('*', function(c, e) c.attrs.log = (c.attrs.log or '') .. '*' end)\n");
	write_file("shop", "30.lua",
	    "on('x', function(c, e) c.attrs.log = (c.attrs.log or '') .. 'b' end)\n"
	    "on('y', function(c, e) c:count('ys') end)\n");
	load();
	ok("shop", (ev) { .type = "x", .nodecide = true });
	cr_assert_str_eq(str_at(last_state, "attrs.log"), "a*b");
	ok("shop", (ev) { .type = "y", .nodecide = true });
	cr_assert_str_eq(str_at(last_state, "attrs.log"), "a*b*");
	cr_assert_eq(num_at(last_state, "counters.ys"), 1);
}

Test(rules, advance_records_history_and_names_unknown_stages)
{
	write_file("shop", "10.lua", BASE);
	write_file("shop", "20.lua",
	    "on('apply', function(c) c:advance('onboarding', 'applied') end)\n"
	    "on('typo', function(c)\n"
	    "  c:advance('onboarding', 'payed')\n"
	    "end)\n"
	    "on('nojourney', function(c) c:advance('onbording', 'applied') end)\n");
	load();
	ok("shop", (ev) { .type = "apply", .nodecide = true });
	cr_assert_str_eq(str_at(last_reply, "journeys.onboarding.stage"),
	    "applied");
	cr_assert_str_eq(str_at(last_state,
	                     "journeys.onboarding.history.0.stage"),
	    "applied");
	char err[600];
	cr_assert_eq(run("shop", (ev) { .type = "typo" }, err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "20.lua:3:"), "%s", err);
	cr_assert_not_null(strstr(err, "'payed'"), "%s", err);
	cr_assert_eq(run("shop", (ev) { .type = "nojourney" }, err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "20.lua:5:"), "%s", err);
	cr_assert_not_null(strstr(err, "unknown journey 'onbording'"), "%s",
	    err);
}

// A journey keeps the newest history.keep moves (20 unless declared), none
// older than history.max_age; moves, entered and started_at count every move
// whatever was trimmed.
Test(rules, the_history_is_capped_and_its_counts_are_exact)
{
	write_file("shop", "10.lua",
	    "journey 'loop' { stages = { 'a', 'b', 'c' }, goal = 'c' }\n"
	    "journey 'short' { stages = { 'a', 'b' },\n"
	    "  history = { keep = 5, max_age = '1h' } }\n"
	    "on('flip', function(c)\n"
	    "  local s = c:stage('loop') == 'a' and 'b' or 'a'\n"
	    "  c:advance('loop', s)\n"
	    "  c:advance('short', s)\n"
	    "end)\n");
	load();
	int64_t start = now;
	size_t  size_at[2] = { 0, 0 };
	for (int i = 1; i <= 3000; i++) {
		ok("shop", (ev) { .type = "flip", .nodecide = true });
		if (i == 1000 || i == 3000) {
			size_at[i / 3000] = st_in.size;
		}
		now += 60000;
	}
	// bounded: 2000 more moves add nothing but a few bytes of counts
	cr_assert_lt(size_at[1], 1024, "state of %zu bytes", size_at[1]);
	cr_assert_leq(size_at[1], size_at[0] + 8, "%zu then %zu", size_at[0],
	    size_at[1]);
	cr_assert_eq(json_array_size(at(last_state, "journeys.loop.history")),
	    20);
	// the newest 20: moves 2981 (an 'a', as every odd one) to 3000
	cr_assert_str_eq(str_at(last_state, "journeys.loop.history.0.stage"),
	    "a");
	cr_assert_eq(num_at(last_state, "journeys.loop.history.0.at"),
	    (double) (start + 2980 * 60000LL));
	cr_assert_eq(num_at(last_state, "journeys.loop.history.19.at"),
	    (double) (start + 2999 * 60000LL));
	cr_assert_eq(num_at(last_state, "journeys.loop.moves"), 3000);
	cr_assert_eq(num_at(last_state, "journeys.loop.entered.a"), 1500);
	cr_assert_eq(num_at(last_state, "journeys.loop.entered.b"), 1500);
	cr_assert_null(at(last_state, "journeys.loop.entered.c"));
	cr_assert_eq(num_at(last_state, "journeys.loop.started_at"),
	    (double) start);
	// keep = 5; a minute apart, none is older than max_age
	cr_assert_eq(json_array_size(at(last_state, "journeys.short.history")),
	    5);
	cr_assert_eq(num_at(last_state, "journeys.short.moves"), 3000);
	// two hours later, the move leaves only itself
	now += 2 * 3600 * 1000;
	ok("shop", (ev) { .type = "flip", .nodecide = true });
	cr_assert_eq(json_array_size(at(last_state, "journeys.short.history")),
	    1);
	cr_assert_eq(num_at(last_state, "journeys.short.history.0.at"),
	    (double) now);
	cr_assert_eq(num_at(last_state, "journeys.short.moves"), 3001);
	cr_assert_eq(num_at(last_state, "journeys.short.entered.a"), 1501);
	cr_assert_eq(json_array_size(at(last_state, "journeys.loop.history")),
	    20);
}

// A variation may change a journey's history settings like any other.
Test(rules, a_variation_changes_the_history_kept)
{
	write_file("shop", "10.lua",
	    "journey 'j' { stages = { 'a', 'b' }, history = { keep = 10 } }\n"
	    "variation { region = 'EU' } { journey 'j' { history = { keep = 3 } } }\n"
	    "on('flip', function(c)\n"
	    "  c:advance('j', c:stage('j') == 'a' and 'b' or 'a')\n"
	    "end)\n");
	load();
	for (int i = 0; i < 20; i++) {
		ok("shop", (ev) { .type = "flip", .nodecide = true });
		now += 1000;
	}
	cr_assert_eq(json_array_size(at(last_state, "journeys.j.history")), 10);
	ok("shop", (ev) { .type = "flip", .region = "EU", .nodecide = true });
	cr_assert_eq(json_array_size(at(last_state, "journeys.j.history")), 3);
	cr_assert_eq(num_at(last_state, "journeys.j.moves"), 21);
}

// A state stored before the counts were kept: they are made from its
// history at the next move, before it is trimmed.
Test(rules, a_long_history_stored_before_the_counts_gets_them)
{
	write_file("shop", "10.lua",
	    "journey 'j' { stages = { 'a', 'b' } }\n"
	    "on('b', function(c) c:advance('j', 'b') end)\n");
	load();
	msgpack_packer pk;
	msgpack_sbuffer_clear(&st_in);
	msgpack_packer_init(&pk, &st_in, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 6);
	msgpack_pack_str_with_body(&pk, "id", 2);
	msgpack_pack_str_with_body(&pk, "c1", 2);
	const char *empty[] = { "attrs", "counters", "cases", "actions" };
	for (int i = 0; i < 4; i++) {
		msgpack_pack_str_with_body(&pk, empty[i], strlen(empty[i]));
		msgpack_pack_map(&pk, 0);
	}
	msgpack_pack_str_with_body(&pk, "journeys", 8);
	msgpack_pack_map(&pk, 1);
	msgpack_pack_str_with_body(&pk, "j", 1);
	msgpack_pack_map(&pk, 3);
	msgpack_pack_str_with_body(&pk, "stage", 5);
	msgpack_pack_str_with_body(&pk, "a", 1);
	msgpack_pack_str_with_body(&pk, "since", 5);
	msgpack_pack_int64(&pk, now - 1000);
	msgpack_pack_str_with_body(&pk, "history", 7);
	msgpack_pack_array(&pk, 501);
	for (int i = 0; i < 501; i++) {
		msgpack_pack_map(&pk, 2);
		msgpack_pack_str_with_body(&pk, "stage", 5);
		msgpack_pack_str_with_body(&pk, i % 2 ? "b" : "a", 1);
		msgpack_pack_str_with_body(&pk, "at", 2);
		msgpack_pack_int64(&pk, now - 1000 * (501 - i));
	}
	ok("shop", (ev) { .type = "b", .nodecide = true });
	cr_assert_eq(json_array_size(at(last_state, "journeys.j.history")), 20);
	cr_assert_eq(num_at(last_state, "journeys.j.moves"), 502);
	cr_assert_eq(num_at(last_state, "journeys.j.entered.a"), 251);
	cr_assert_eq(num_at(last_state, "journeys.j.entered.b"), 251);
	cr_assert_eq(num_at(last_state, "journeys.j.started_at"),
	    (double) (now - 501000));
}

Test(rules, runtime_errors_carry_file_and_line)
{
	write_file("shop", "10.lua", BASE);
	write_file("shop", "20.lua",
	    "on('nil', function(c) local t = nil; return t.x end)\n"
	    "on('tbl', function(c) error({}) end)\n"
	    "on('lvl0', function(c) error('plain', 0) end)\n");
	load();
	char err[600];
	cr_assert_eq(run("shop", (ev) { .type = "nil" }, err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "20.lua:1:"), "%s", err);
	cr_assert_eq(run("shop", (ev) { .type = "tbl" }, err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "20.lua:2:"), "%s", err);
	cr_assert_eq(run("shop", (ev) { .type = "lvl0" }, err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "20.lua:3: plain"), "%s", err);
}

static void
expect_load_error(const char *file_text, const char *msg, int line)
{
	write_file("shop", "10.lua", file_text);
	write_file("good", "10.lua", "on('x', function(c) end)\n");
	load();
	cr_assert_null(ch_rules_find(rules, S("shop")));
	biz("good"); // the other business serves
	const char *e = ch_rules_error(rules, S("shop"));
	cr_assert_not_null(e);
	cr_assert_not_null(strstr(e, msg), "'%s' should say '%s'", e, msg);
	char where[64];
	snprintf(where, sizeof(where), "10.lua:%d:", line);
	cr_assert_not_null(strstr(e, where), "'%s' should be at %s", e, where);
	// and the rules op reports it with file and line
	msgpack_sbuffer b;
	msgpack_packer  pk;
	msgpack_sbuffer_init(&b);
	msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
	cr_assert_eq(ch_rules_pack_info(rules, S("shop"), &pk), CH_OK);
	json_t *j = to_json(&b);
	cr_assert_eq(num_at(j, "businesses.shop.error.line"), line);
	cr_assert_not_null(strstr(str_at(j, "businesses.shop.error.file"),
	    "shop/10.lua"));
	cr_assert(json_is_number(at(j, "businesses.shop.error.at")));
	json_decref(j);
	msgpack_sbuffer_destroy(&b);
}

Test(rules, a_syntax_error_stops_only_its_business)
{
	expect_load_error("on('x', function(c)\n  c:count('x'\nend)\n", "expected",
	    3);
}

Test(rules, declaration_checks)
{
	expect_load_error("\naction 'gold_card' { value = 'a lot' }\n",
	    "action 'gold_card': value must be a number, got string", 2);
}

Test(rules, unknown_field)
{
	expect_load_error("action 'x' {\n  value = 1,\n  valeu = 2 }\n",
	    "unknown field 'valeu'", 1);
}

Test(rules, unknown_goal_stage)
{
	expect_load_error("journey 'j' { stages = { 'a' }, goal = 'b' }\n",
	    "goal 'b' is not one of its stages", 1);
}

Test(rules, lever_for_nothing)
{
	expect_load_error("action 'a' { value = 1 }\nlevers { nothing = 2 }\n",
	    "'nothing' is neither an action nor a group", 2);
}

Test(rules, bad_duration)
{
	expect_load_error("case 'c' { sla = '2 days' }\n",
	    "must be a duration", 1);
}

Test(rules, bad_history_settings)
{
	expect_load_error("journey 'j' { stages = { 'a' },\n"
	                  "  history = { keep = -1 } }\n",
	    "journey 'j': history.keep must be a whole number from 1 to 1000, got -1",
	    1);
	expect_load_error("\njourney 'j' { stages = { 'a' }, history = { keep = 'ten' } }\n",
	    "journey 'j': history.keep must be a whole number from 1 to 1000, got string",
	    2);
	expect_load_error("journey 'j' { stages = { 'a' }, history = { keep = 2.5 } }\n",
	    "history.keep must be a whole number from 1 to 1000, got 2.5", 1);
	expect_load_error("journey 'j' { stages = { 'a' }, history = { keep = 0/0 } }\n",
	    "history.keep must be a whole number from 1 to 1000", 1);
	expect_load_error("journey 'j' { stages = { 'a' }, history = { max_age = '90 days' } }\n",
	    "journey 'j': history.max_age must be a duration", 1);
	expect_load_error("journey 'j' { stages = { 'a' }, history = { max_age = 90 } }\n",
	    "journey 'j': history.max_age must be a duration", 1);
	expect_load_error("journey 'j' { stages = { 'a' }, history = { kept = 5 } }\n",
	    "journey 'j': history: unknown field 'kept' (known fields: keep, max_age)",
	    1);
	expect_load_error("journey 'j' { stages = { 'a' }, history = 100 }\n",
	    "journey 'j': history must be a table such as { keep = 20, max_age = \"180d\" }, got integer",
	    1);
	expect_load_error("journey 'j' { stages = { 'a' } }\n"
	                  "variation { region = 'EU' } {\n"
	                  "  journey 'j' { history = { keep = 5000 } } }\n",
	    "journey 'j': history.keep must be a whole number from 1 to 1000, got 5000",
	    3);
}

// NaN and the infinities are no value, weight, prior, limit, lever, budget,
// param or payload number: each is a load error at its line, base or
// variation.
Test(rules, numbers_in_declarations_are_finite)
{
	expect_load_error("action 'a' { value = 0/0 }\n",
	    "action 'a': value must be a finite number, got NaN", 1);
	expect_load_error("\naction 'a' { value = 1, weight = math.huge }\n",
	    "action 'a': weight must be a finite number, got infinity", 2);
	expect_load_error("action 'a' { value = -1/0 }\n",
	    "action 'a': value must be a finite number, got -infinity", 1);
	expect_load_error("action 'a' { value = 1, prior = 0/0 }\n",
	    "action 'a': prior must be a number between 0 and 1, got NaN", 1);
	expect_load_error("action 'a' { value = 1,\n"
	                  "  limits = { max_impressions = 0/0 } }\n",
	    "action 'a': limits.max_impressions must be a finite number of 0 or "
	    "more, got NaN", 1);
	expect_load_error("action 'a' { value = 1, limits = { per_day = math.huge } }\n",
	    "action 'a': limits.per_day must be a finite number of 0 or more, "
	    "got infinity", 1);
	expect_load_error("action 'a' { value = 1, limits = { stop_after_rejects = -2 } }\n",
	    "action 'a': limits.stop_after_rejects must be a finite number of 0 "
	    "or more, got -2", 1);
	expect_load_error("action 'a' { value = 1,\n"
	                  "  payload = { title = 'x', price = { eur = 0/0 } } }\n",
	    "action 'a': payload.price.eur must be a finite number, got NaN", 1);
	expect_load_error("action 'a' { value = 1 }\nlevers { a = 0/0 }\n",
	    "levers: 'a' must be a finite number of 0 or more, got NaN", 2);
	expect_load_error("contact_policy { max_per_day = math.huge }\n",
	    "max_per_day must be a finite number, got infinity", 1);
	expect_load_error("contact_policy { per_channel = { sms = 0/0 } }\n",
	    "per_channel: 'sms' must be a finite number of 0 or more, got NaN", 1);
	expect_load_error("max_per_group(0/0)\n",
	    "max_per_group: expected a finite number of at least 1, got NaN", 1);
	expect_load_error("params { price = 9.99,\n  fee = 0/0 }\n",
	    "params: 'fee' must be a finite number, got NaN", 1);
	expect_load_error("params { tiers = { gold = { fee = math.huge } } }\n",
	    "params: 'tiers.gold.fee' must be a finite number, got infinity", 1);
	expect_load_error("case 'c' { sla = '99999999999d' }\n",
	    "case 'c': sla must be a duration of at most 100 years, got \"99999999999d\"",
	    1);
	// a variation's overrides and params
	expect_load_error("action 'a' { value = 1 }\n"
	                  "variation { region = 'EU' } {\n"
	                  "  action 'a' { value = 0/0 } }\n",
	    "action 'a': value must be a finite number, got NaN", 3);
	expect_load_error("params { v = 1 }\n"
	                  "action 'a' { value = params.v }\n"
	                  "variation { region = 'EU' } {\n"
	                  "  params { v = 1/0 } }\n",
	    "params: 'v' must be a finite number, got infinity", 4);
}

// At run time, numbers that reach the analytics must be finite too.
Test(rules, scores_and_counts_are_finite)
{
	write_file("shop", "10.lua",
	    "journey 'j' { stages = { 'a' } }\n"
	    "on('x', function(c, e)\n"
	    "  c:advance('j', 'a')\n"
	    "  c:score('j', 'csat', e.data.v / e.data.d)\n"
	    "end)\n"
	    "on('n', function(c, e)\n"
	    "  c:count('clicks', e.data.v / e.data.d)\n"
	    "end)\n");
	load();
	char err[600];
	cr_assert_eq(run("shop", (ev) { .type = "x", .nodecide = true,
	                                .data_json = "{\"v\": 0, \"d\": 0}" },
	                 err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "10.lua:4: c:score('j', 'csat', value): "
	                               "value must be a finite number, got NaN"),
	    "%s", err);
	cr_assert_eq(run("shop", (ev) { .type = "n", .nodecide = true,
	                                .data_json = "{\"v\": 1, \"d\": 0}" },
	                 err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "10.lua:7: c:count('clicks', n): n must "
	                               "be a finite number, got infinity"),
	    "%s", err);
}

// Names go into the store's keys and analytics counters joined with NUL
// bytes, so each must be text: valid UTF-8 without NUL.
Test(rules, declared_names_must_be_text)
{
	const struct {
		const char *src, *msg;
		int         line;
	} cases[] = {
		{ "journey 'a\\0b' { stages = { 'x' } }\n",
		    "journey: a name must be valid UTF-8 without NUL bytes, got "
		    "\"a\\0b\"",
		    1 },
		{ "\njourney 'j' { stages = { 'x', 'y\\255' } }\n",
		    "journey 'j': stages: each must be valid UTF-8 without NUL",
		    2 },
		{ "action '\\xff' { value = 1 }\n",
		    "action: a name must be valid UTF-8", 1 },
		{ "action 'a' { value = 1,\n channels = { 'web\\0' } }\n",
		    "action 'a': channels: each must be valid UTF-8", 1 },
		{ "action 'a' { value = 1, group = 'g\\0' }\n",
		    "action 'a': group must be valid UTF-8 without NUL", 1 },
		{ "case 'k\\0' { sla = '1h' }\n", "case: a name must be", 1 },
		{ "on('x\\0y', function(c) end)\n",
		    "on: the event type must be valid UTF-8", 1 },
		{ "variation { region = 'EU\\0' } { }\n",
		    "variation: region must be valid UTF-8", 1 },
		{ "variation { channel = '' } { }\n",
		    "variation: channel must be a string, got \"\"", 1 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		expect_load_error(cases[i].src, cases[i].msg, cases[i].line);
	}
}

Test(rules, names_given_at_run_time_must_be_text)
{
	write_file("shop", "10.lua", BASE);
	write_file("shop", "20.lua",
	    "on('timer', function(c) c:after('1h', 'x\\0y') end)\n"
	    "on('emit', function(c) c:emit('a\\255', {}) end)\n"
	    "on('score', function(c)\n"
	    "  c:advance('onboarding', 'visitor')\n"
	    "  c:score('onboarding', 'csat\\0', 5)\n"
	    "end)\n"
	    "on('count', function(c) c:count('n\\0') end)\n"
	    "on('cohort', function(c) c:cohort('\\xc3', { a = 1 }) end)\n"
	    "on('region', function(c, e)\n"
	    "  c.attrs.region = 'EU\\0x'\n"
	    "end)\n"
	    "on('channel', function(c, e) c.attrs.channel = '\\xff' end)\n"
	    "on('fine', function(c, e)\n"
	    "  c:count('Zoë ✓')\n"
	    "  c.attrs.region = 'Ελλάδα'\n"
	    "end)\n");
	load();
	const struct {
		const char *type, *msg;
	} cases[] = {
		{ "timer", "20.lua:1: c:after: the event type must be valid UTF-8 "
		           "without NUL bytes, got \"x\\0y\"" },
		{ "emit", "20.lua:2: c:emit: the name must be valid UTF-8" },
		{ "score", "20.lua:5: c:score: the metric must be valid UTF-8" },
		{ "count", "20.lua:7: c:count: the counter name must be valid" },
		{ "cohort", "20.lua:8: c:cohort: the experiment name must be" },
		{ "region", "20.lua:9: c.attrs.region is the customer's region and "
		            "must be valid UTF-8 without NUL bytes (left there by "
		            "this handler for 'region')" },
		{ "channel", "20.lua:12: c.attrs.channel is the customer's channel" },
	};
	char err[600];
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_assert_eq(run("shop", (ev) { .type = cases[i].type }, err,
		                 sizeof(err)),
		    CH_ERULE, "%s", cases[i].type);
		cr_assert_not_null(strstr(err, cases[i].msg), "%s: '%s' should say "
		                                              "'%s'",
		    cases[i].type, err, cases[i].msg);
	}
	ok("shop", (ev) { .type = "fine", .nodecide = true });
	cr_assert_eq(num_at(last_state, "counters.Zoë ✓"), 1);
}

Test(rules, nba_filters_and_scores)
{
	write_file("shop", "10.lua", BASE);
	load();
	// no age: gold is ineligible; basic and news tie on 40 × 0.5: by name
	ok("shop", (ev) { .type = "x", .channel = "web", .norecord = true });
	cr_assert_str_eq(str_at(last_reply, "actions.0.name"), "basic");
	cr_assert_str_eq(str_at(last_reply, "actions.1.name"), "news");
	cr_assert_eq(num_at(last_reply, "actions.0.score"), 20);
	cr_assert_eq(num_at(last_reply, "actions.0.propensity"), 0.5);
	cr_assert_str_eq(str_at(last_reply, "actions.0.channel"), "web");
}

Test(rules, eligibility_channel_and_limit)
{
	write_file("shop", "10.lua", BASE);
	write_file("shop", "20.lua",
	    "on('profile', function(c, e) c.attrs.age = e.data.age end)\n");
	load();
	ok("shop", (ev) { .type = "profile", .data_json = "{\"age\": 30}",
	                   .channel = "web", .limit = 1, .norecord = true });
	cr_assert_eq(json_array_size(at(last_reply, "actions")), 1);
	cr_assert_str_eq(str_at(last_reply, "actions.0.name"), "gold");
	cr_assert_eq(num_at(last_reply, "actions.0.payload.price"), 9.99);
	// not on this channel
	ok("shop", (ev) { .channel = "email", .norecord = true });
	cr_assert_str_eq(str_at(last_reply, "actions.0.name"), "basic");
}

static const char VARIATIONS[] =
    "params { price = 9.99, sla = '48h' }\n"
    "action 'card' { group = 'cards', value = 120, channels = { 'web', 'app' },\n"
    "  payload = { title = 'Card', price = params.price, extra = { a = 1, b = 2 } } }\n"
    "variation { region = 'EU' } {\n"
    "  params { price = 8.99 },\n"
    "  action 'card' { value = 100, channels = { 'app' } },\n"
    "}\n"
    "variation { region = 'EU', channel = 'app' } {\n"
    "  action 'card' { payload = { title = 'Card (app)', extra = { b = 3 } } },\n"
    "  action 'only_here' { value = 1, payload = { title = 'x' } },\n"
    "}\n"
    "variation { channel = 'app' } { action 'card' { value = 110 } }\n"
    "variation { region = 'EU' } { action 'card' { weight = 2 } }\n"
    "on('p', function(c) c:emit('price', { p = params.price, q = c.params.price }) end)\n";

Test(rules, variations_apply_least_to_most_specific_and_merge_fields)
{
	write_file("shop", "10.lua", VARIATIONS);
	load();
	// no circumstance: the base
	ok("shop", (ev) { .norecord = true });
	cr_assert_eq(num_at(last_reply, "actions.0.value"), 120);
	cr_assert_eq(num_at(last_reply, "actions.0.payload.price"), 9.99);
	// EU on app: {channel=app} and both {region=EU} (1 key, in order),
	// then {region=EU, channel=app}
	ok("shop", (ev) { .region = "EU", .channel = "app", .norecord = true,
	                   .explain = true });
	json_t *card = NULL;
	for (size_t i = 0; i < json_array_size(at(last_reply, "actions")); i++) {
		json_t *a = json_array_get(at(last_reply, "actions"), i);
		if (strcmp(json_string_value(json_object_get(a, "name")), "card") ==
		    0) {
			card = a;
		}
	}
	cr_assert_not_null(card);
	// value: {channel=app} (110) was declared after {region=EU} (100):
	// same specificity, the later declaration wins
	cr_assert_eq(num_at(card, "value"), 110);
	cr_assert_str_eq(str_at(card, "payload.title"), "Card (app)");
	cr_assert_eq(num_at(card, "payload.price"), 8.99);   // the EU param
	cr_assert_eq(num_at(card, "payload.extra.a"), 1);    // merged
	cr_assert_eq(num_at(card, "payload.extra.b"), 3);
	cr_assert_eq(num_at(card, "score"), 110 * 0.5 * 2);  // weight 2
	cr_assert_str_eq(str_at(last_reply, "actions.0.name"), "card");
	cr_assert_str_eq(str_at(last_reply, "actions.1.name"), "only_here");
	// the trace lists the variations in the order applied
	json_t *applied = at(last_reply, "trace.0.applied");
	cr_assert_eq(json_array_size(applied), 4);
	cr_assert_str_eq(str_at(applied, "0.region"), "EU");
	cr_assert_str_eq(str_at(applied, "1.channel"), "app");
	cr_assert_str_eq(str_at(applied, "2.region"), "EU");
	cr_assert_str_eq(str_at(applied, "3.channel"), "app");
	cr_assert_str_eq(str_at(applied, "3.region"), "EU");
	// lists are replaced: in the EU, card is app-only
	ok("shop", (ev) { .region = "EU", .channel = "web", .norecord = true });
	cr_assert_eq(json_array_size(at(last_reply, "actions")), 0);
	// params inside handlers are the circumstance's
	ok("shop", (ev) { .type = "p", .region = "EU", .nodecide = true });
	cr_assert_eq(num_at(last_reply, "emitted.0.data.p"), 8.99);
	cr_assert_eq(num_at(last_reply, "emitted.0.data.q"), 8.99);
}

// A field that names a param may be overridden by a variation with
// another param; the contact policy's numbers may name params too.
Test(rules, params_references_in_overrides_and_the_contact_policy)
{
	write_file("shop", "10.lua",
	    "params { a = 1, b = 2, per_day = 1 }\n"
	    "contact_policy { max_per_day = params.per_day }\n"
	    "action 'x' { value = 2, payload = { price = params.a } }\n"
	    "action 'y' { value = 1 }\n"
	    "variation { region = 'EU' } {\n"
	    "  params { per_day = 2 },\n"
	    "  action 'x' { payload = { price = params.b } } }\n");
	load();
	ok("shop", (ev) { .limit = 2 });
	cr_assert_eq(json_array_size(at(last_reply, "actions")), 1);
	cr_assert_eq(num_at(last_reply, "actions.0.payload.price"), 1);
	ok("shop", (ev) { .limit = 2 });
	cr_assert_eq(json_array_size(at(last_reply, "actions")), 0,
	    "one contact a day");
	now += 25 * 3600 * 1000;
	ok("shop", (ev) { .region = "EU", .limit = 2 });
	cr_assert_eq(json_array_size(at(last_reply, "actions")), 2);
	cr_assert_eq(num_at(last_reply, "actions.0.payload.price"), 2);
	expect_load_error("params { n = 1 }\n"
	                  "contact_policy { max_per_day = params.n }\n"
	                  "variation { region = 'EU' } { params { n = 'lots' } }\n",
	    "max_per_day must be a number, got string", 3);
}

Test(rules, the_circumstance_falls_back_to_attrs)
{
	write_file("shop", "10.lua", VARIATIONS);
	write_file("shop", "20.lua",
	    "on('move', function(c, e) c.attrs.region = e.data.region end)\n");
	load();
	ok("shop", (ev) { .type = "move", .data_json = "{\"region\":\"EU\"}",
	                   .channel = "app", .norecord = true });
	cr_assert_eq(num_at(last_reply, "actions.0.payload.price"), 8.99);
}

Test(rules, the_handler_that_left_a_value_that_cannot_be_stored_is_named)
{
	write_file("shop", "10.lua",
	    "on('*', function(c, e)\n"
	    "  if e.data.first then c.attrs.f = print end\n"
	    "end)\n"
	    "on('x', function(c, e)\n"
	    "  if e.data.second then c.attrs.list = { 1, print } end\n"
	    "end)\n"
	    "on('y', function(c, e)\n"
	    "  c.attrs[e.data.key and {} or 'ok'] = 1\n"
	    "end)\n");
	load();
	char err[600];
	cr_assert_eq(run("shop", (ev) { .type = "x", .data_json = "{\"first\":1}" },
	                 err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "10.lua:1: c.attrs.f: cannot store a "
	                               "value of type function (left there by "
	                               "this handler for 'x')"),
	    "%s", err);
	cr_assert_eq(run("shop", (ev) { .type = "x", .data_json = "{\"second\":1}" },
	                 err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "10.lua:4: c.attrs.list[2]: cannot store"),
	    "%s", err);
	cr_assert_eq(run("shop", (ev) { .type = "y", .data_json = "{\"key\":1}" },
	                 err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "10.lua:7: c.attrs: a table key must be"),
	    "%s", err);
	// and nothing of it was kept
	ok("shop", (ev) { .type = "y", .nodecide = true });
	cr_assert_null(at(last_state, "attrs.f"));
	cr_assert_eq(num_at(last_state, "attrs.ok"), 1);
}

static bool has(const char *name);

Test(rules, circumstances_that_join_alike_have_their_own_views)
{
	// region 'a' with channel 'b\1', and region 'a\1b' alone, once made
	// the same key of the views' cache
	write_file("shop", "10.lua",
	    "action 'base' { value = 1 }\n"
	    "variation { region = 'a', channel = 'b\\1' } {\n"
	    "  action 'only_there' { value = 99 },\n"
	    "}\n");
	load();
	ok("shop", (ev) { .type = "x", .region = "a", .channel = "b\1",
	                   .norecord = true });
	cr_assert(has("only_there"));
	ok("shop", (ev) { .type = "x", .region = "a\1" "b", .norecord = true });
	cr_assert_not(has("only_there"), "the variation of another "
	                                 "circumstance applied");
}

static const char LIMITS[] =
    "action 'a' { value = 10, limits = { max_impressions = 2 } }\n"
    "action 'b' { value = 9, limits = { cooldown = '1h' } }\n"
    "action 'c' { value = 8, limits = { stop_after_rejects = 1 } }\n"
    "action 'd' { value = 7, limits = { per_day = 1 } }\n";

static bool
has(const char *name)
{
	json_t *acts = at(last_reply, "actions");
	for (size_t i = 0; i < json_array_size(acts); i++) {
		if (strcmp(str_at(json_array_get(acts, i), "name"), name) == 0) {
			return (true);
		}
	}
	return (false);
}

Test(rules, every_limit_and_its_window)
{
	write_file("shop", "10.lua", LIMITS);
	load();
	ok("shop", (ev) { .limit = 4 }); // all shown once
	cr_assert(has("a") && has("b") && has("c") && has("d"));
	now += 60 * 1000; // a minute later: b cools down, d had its day
	ok("shop", (ev) { .limit = 4 });
	cr_assert(has("a"));
	cr_assert(!has("b"), "cooldown");
	cr_assert(!has("d"), "per_day");
	now += 2 * 3600 * 1000; // +2 h: b is back
	ok("shop", (ev) { .limit = 4 });
	cr_assert(!has("a"), "max_impressions reached at 2");
	cr_assert(has("b"));
	cr_assert(!has("d"));
	now += 24 * 3600 * 1000; // a day later: d again
	ok("shop", (ev) { .limit = 4, .explain = true });
	cr_assert(has("d"));
	// a rejection stops c
	ok("shop", (ev) { .type = "response",
	                   .data_json = "{\"action\":\"c\",\"outcome\":\"rejected\"}",
	                   .limit = 4 });
	cr_assert(!has("c"));
	ok("shop", (ev) { .limit = 4, .explain = true, .norecord = true });
	json_t *trace = at(last_reply, "trace");
	bool    seen  = false;
	for (size_t i = 0; i < json_array_size(trace); i++) {
		json_t *t = json_array_get(trace, i);
		const char *a = str_at(t, "action");
		if (a && strcmp(a, "c") == 0) {
			cr_assert_str_eq(str_at(t, "reason"), "stop_after_rejects");
			seen = true;
		}
	}
	cr_assert(seen);
}

Test(rules, the_contact_budget_spans_actions)
{
	write_file("shop", "10.lua",
	    "contact_policy { max_per_day = 2, per_channel = { sms = 1 } }\n"
	    "action 'a' { value = 3, channels = { 'sms', 'app' } }\n"
	    "action 'b' { value = 2, channels = { 'sms', 'app' } }\n"
	    "action 'c' { value = 1, channels = { 'sms', 'app' } }\n");
	load();
	ok("shop", (ev) { .channel = "sms", .limit = 3, .explain = true });
	cr_assert_eq(json_array_size(at(last_reply, "actions")), 1, "one sms");
	ok("shop", (ev) { .channel = "app", .limit = 3 });
	cr_assert_eq(json_array_size(at(last_reply, "actions")), 1,
	    "one left of the day's two");
	ok("shop", (ev) { .channel = "app", .limit = 3, .explain = true });
	cr_assert_eq(json_array_size(at(last_reply, "actions")), 0);
	cr_assert_str_eq(str_at(last_reply, "trace.1.reason"), "max_per_day");
	now += 25 * 3600 * 1000;
	ok("shop", (ev) { .channel = "app", .limit = 3 });
	cr_assert_eq(json_array_size(at(last_reply, "actions")), 2);
}

Test(rules, responses_teach_the_model_in_the_store)
{
	write_file("shop", "10.lua",
	    "action 'a' { value = 10 }\n"
	    "action 'b' { value = 10, prior = 0.2 }\n"
	    "on('response', function(c, e) c.attrs.last = e.data.outcome end)\n");
	load();
	ok("shop", (ev) { .norecord = true });
	cr_assert_eq(num_at(last_reply, "actions.0.propensity"), 0.5);
	cr_assert_str_eq(str_at(last_reply, "actions.0.name"), "a");
	cr_assert_eq(num_at(last_reply, "actions.1.propensity"), 0.2);
	ok("shop", (ev) { .type = "response",
	                   .data_json = "{\"action\":\"a\",\"outcome\":\"accepted\"}" });
	cr_assert_str_eq(str_at(last_state, "attrs.last"), "accepted");
	cr_assert_eq(num_at(last_state, "actions.a.accepted"), 1);
	// Beta(1+1, 1+0): 2/3
	ok("shop", (ev) { .norecord = true });
	cr_assert_float_eq(num_at(last_reply, "actions.0.propensity"), 2.0 / 3,
	    1e-9);
	// the model lives in the store: a fresh load of the rules sees it
	load();
	ok("shop", (ev) { .norecord = true });
	cr_assert_float_eq(num_at(last_reply, "actions.0.propensity"), 2.0 / 3,
	    1e-9);
	char err[600];
	cr_assert_eq(run("shop", (ev) { .type = "response",
	                              .data_json = "{\"action\":\"zz\",\"outcome\":\"accepted\"}" },
	                 err, sizeof(err)),
	    CH_EBADREQ);
	cr_assert_eq(run("shop", (ev) { .type = "response",
	                              .data_json = "{\"action\":\"a\",\"outcome\":\"maybe\"}" },
	                 err, sizeof(err)),
	    CH_EBADREQ);
}

Test(rules, explore_is_reproducible)
{
	write_file("shop", "10.lua", "action 'a' { value = 10, explore = true }\n");
	load();
	ok("shop", (ev) { .id = "e1", .norecord = true });
	double p1 = num_at(last_reply, "actions.0.propensity");
	ok("shop", (ev) { .id = "e1", .norecord = true });
	cr_assert_eq(num_at(last_reply, "actions.0.propensity"), p1);
	ok("shop", (ev) { .id = "e2", .norecord = true });
	cr_assert_neq(num_at(last_reply, "actions.0.propensity"), p1);
}

Test(rules, levers_max_per_group_and_arbitrate)
{
	write_file("shop", "10.lua",
	    "action 'a' { group = 'g', value = 10 }\n"
	    "action 'b' { group = 'g', value = 9 }\n"
	    "action 'c' { group = 'h', value = 1 }\n"
	    "levers { c = 100 }\n"
	    "max_per_group(1)\n");
	load();
	ok("shop", (ev) { .norecord = true });
	cr_assert_str_eq(str_at(last_reply, "actions.0.name"), "c");
	cr_assert_str_eq(str_at(last_reply, "actions.1.name"), "a");
	cr_assert_eq(json_array_size(at(last_reply, "actions")), 2);
	write_file("shop", "20.lua",
	    "arbitrate(function(c, cands)\n"
	    "  local out = {}\n"
	    "  for i = #cands, 1, -1 do out[#out + 1] = cands[i] end\n"
	    "  return out\n"
	    "end)\n");
	load();
	ok("shop", (ev) { .norecord = true });
	cr_assert_str_eq(str_at(last_reply, "actions.0.name"), "b");
}

// A propensity(c) or eligible(c) answering with the wrong kind of value
// is an error at the line where the analyst wrote the function, whichever
// way the decision asks it: lazily, with explain, or for arbitrate.
static const char WRONG[] =
    "on('set', function(c, e) c.attrs.p = e.data.p; c.attrs.e = e.data.e end)\n"
    "action 'a' { value = 10,\n"
    "  propensity = function(c)\n"
    "    if c.attrs.p == 'nan' then return 0/0 end\n"
    "    if c.attrs.p == 'inf' then return math.huge end\n"
    "    if c.attrs.p == 'nil' then return nil end\n"
    "    return c.attrs.p\n"
    "  end }\n"
    "action 'b' { value = 5, eligible = function(c) return c.attrs.e end }\n";

static void
expect_wrong(const char *data, bool explain, const char *msg)
{
	char err[600];
	ok("shop", (ev) { .type = "set", .nodecide = true, .data_json = data });
	cr_assert_eq(run("shop", (ev) { .norecord = true, .explain = explain,
	                                .limit = 2 },
	                 err, sizeof(err)),
	    CH_ERULE, "%s: %s", data, err);
	cr_assert_not_null(strstr(err, msg), "%s: '%s' should say '%s'", data,
	    err, msg);
	cr_assert_null(strstr(err, "prelude"), "%s", err);
	// an event's decision is asked the same way
	cr_assert_eq(run("shop", (ev) { .type = "x", .explain = explain,
	                                .limit = 2 },
	                 err, sizeof(err)),
	    CH_ERULE, "%s: %s", data, err);
	cr_assert_not_null(strstr(err, msg), "%s: '%s' should say '%s'", data,
	    err, msg);
}

static void
expect_all_wrong(bool explain)
{
	expect_wrong("{\"p\": \"high\", \"e\": true}", explain,
	    "10.lua:3: propensity of action 'a' returned a string, expected a "
	    "number between 0 and 1");
	expect_wrong("{\"p\": \"nan\", \"e\": true}", explain,
	    "10.lua:3: propensity of action 'a' returned NaN, expected a number "
	    "between 0 and 1");
	expect_wrong("{\"p\": \"inf\", \"e\": true}", explain,
	    "10.lua:3: propensity of action 'a' returned infinity, expected a "
	    "number between 0 and 1");
	expect_wrong("{\"p\": \"nil\", \"e\": true}", explain,
	    "10.lua:3: propensity of action 'a' returned nil, expected a number "
	    "between 0 and 1");
	expect_wrong("{\"p\": 0.5, \"e\": 1}", explain,
	    "10.lua:9: eligible of action 'b' returned a number, expected true "
	    "or false");
	expect_wrong("{\"p\": 0.5, \"e\": \"yes\"}", explain,
	    "10.lua:9: eligible of action 'b' returned a string, expected true "
	    "or false");
	// right answers: a propensity is clamped, nil is not eligible
	ok("shop", (ev) { .type = "set", .nodecide = true,
	                  .data_json = "{\"p\": 7}" });
	ok("shop", (ev) { .norecord = true, .explain = explain });
	cr_assert_eq(num_at(last_reply, "actions.0.propensity"), 1);
	cr_assert_eq(json_array_size(at(last_reply, "actions")), 1);
}

Test(rules, a_wrong_answer_of_a_predicate_names_its_line)
{
	write_file("shop", "10.lua", WRONG);
	load();
	expect_all_wrong(false);
}

Test(rules, a_wrong_answer_of_a_predicate_names_its_line_with_explain)
{
	write_file("shop", "10.lua", WRONG);
	load();
	expect_all_wrong(true);
}

Test(rules, a_wrong_answer_of_a_predicate_names_its_line_with_arbitrate)
{
	write_file("shop", "10.lua", WRONG);
	write_file("shop", "20.lua",
	    "arbitrate(function(c, cands) return cands end)\n");
	load();
	expect_all_wrong(false);
}

// What the prelude raises on the analyst's behalf names the analyst's
// line, never the prelude's.
static void
expect_rule_error(const char *type, const char *msg)
{
	char err[600];
	cr_assert_eq(run("shop", (ev) { .type = type, .nodecide = true }, err,
	                 sizeof(err)),
	    CH_ERULE, "%s: %s", type, err);
	cr_assert_not_null(strstr(err, msg), "%s: '%s' should say '%s'", type,
	    err, msg);
	cr_assert_null(strstr(err, "prelude"), "%s: %s", type, err);
}

Test(rules, a_method_called_with_a_dot_names_the_line)
{
	write_file("shop", "10.lua",
	    "journey 'j' { stages = { 'a' } }\n"
	    "on('advance', function(c) c.advance('j', 'a') end)\n"
	    "on('stage', function(c) return c.stage('j') end)\n"
	    "on('count', function(c) c.count('n') end)\n"
	    "on('after', function(c)\n"
	    "  c.after('1h', 'x')\n"
	    "end)\n");
	load();
	expect_rule_error("advance", "10.lua:2: c.advance(...): call it with a "
	                             "colon, c:advance(...)");
	// a tail call: the handler's own frame is gone, its line stands in
	expect_rule_error("stage", "10.lua:3: c.stage(...): call it with a "
	                           "colon, c:stage(...)");
	expect_rule_error("count", "10.lua:4: c.count(...)");
	expect_rule_error("after", "10.lua:6: c.after(...)");
}

Test(rules, an_error_in_a_tail_call_names_the_handler)
{
	write_file("shop", "10.lua",
	    "journey 'j' { stages = { 'a' } }\n"
	    "local function go(c, s) return c:advance('j', s) end\n"
	    "on('x', function(c)\n"
	    "  return go(c, 'zz')\n"
	    "end)\n"
	    "on('y', function(c) return c:cohort('e', { a = 0/0 }) end)\n");
	load();
	expect_rule_error("x", "10.lua:3: journey 'j' has no stage 'zz'");
	expect_rule_error("y", "10.lua:6: c:cohort('e', shares): every share "
	                       "must be name = a finite number of 0 or more");
}

Test(rules, an_error_without_a_sentence_of_its_own_is_at_the_rule_line)
{
	// reaching into the state's internals: the prelude's own error, with
	// the rule's position instead of the prelude's
	write_file("shop", "10.lua",
	    "on('x', function(c)\n"
	    "  c._s.counters.n = 'many'\n"
	    "  c:count('n')\n"
	    "end)\n");
	load();
	expect_rule_error("x", "10.lua:3: attempt to");
}

// A view resolved at load for a variation's circumstance names the line
// of the variation that made it wrong.
Test(rules, an_error_in_a_resolved_view_names_the_variation)
{
	expect_load_error("journey 'j' { stages = { 'a', 'b' } }\n"
	                  "variation { region = 'EU' } {\n"
	                  "  journey 'j' { goal = 'c' } }\n",
	    "journey 'j': goal 'c' is not one of its stages", 2);
	expect_load_error("params { w = 1 }\n"
	                  "action 'a' { value = 1, weight = params.w }\n"
	                  "variation { region = 'EU' } { params { w = 'heavy' } }\n",
	    "action 'a': weight must be a number, got string", 3);
	expect_load_error("params { sla = '1h' }\n"
	                  "case 'k' { sla = params.sla }\n"
	                  "variation { region = 'EU' } { params { sla = 'soon' } }\n",
	    "case 'k': sla must be a duration", 3);
	expect_load_error("action 'a' { value = 1e300, weight = 1e10 }\n",
	    "action 'a': value × weight × levers is too large to score", 1);
	expect_load_error("action 'a' { group = 'g', value = 1e300 }\n"
	                  "\n"
	                  "variation { channel = 'app' } { levers { g = 1e10 } }\n",
	    "action 'a': value × weight × levers is too large to score", 3);
	// a name too long for its timers
	char text[400];
	snprintf(text, sizeof(text), "\njourney '%0200d' { stages = { 'a' } }\n",
	    7);
	expect_load_error(text, "a journey's name is at most 120 bytes", 2);
}

Test(rules, arbitrate_may_not_list_a_candidate_twice)
{
	write_file("shop", "10.lua",
	    "action 'a' { value = 10 }\n"
	    "action 'b' { value = 9 }\n"
	    "arbitrate(function(c, cands) return { cands[1], cands[1] } end)\n");
	load();
	char err[600];
	cr_assert_eq(run("shop", (ev) { .norecord = true }, err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "10.lua:3: arbitrate: entry 2 ('a') is listed twice"),
	    "%s", err);
}

// The decision asks an action eligible(c), its limits and its propensity
// only when it could still be chosen; explain asks every action. Both
// must choose the same actions, whatever the history, limits and budgets.
static const char MIXED[] =
    "on('set', function(c, e) for k, v in pairs(e.data) do c.attrs[k] = v end end)\n"
    "contact_policy { max_per_day = 4, per_channel = { sms = 2 } }\n"
    "max_per_group(2)\n"
    "action 'a1' { group = 'g1', value = 50, channels = { 'web', 'app' },\n"
    "  eligible = function(c) return c.attrs.age >= 18 end }\n"
    "action 'a2' { group = 'g1', value = 50, prior = 0.5,\n"
    "  limits = { max_impressions = 2 } }\n"
    "action 'a3' { group = 'g1', value = 80, propensity = function(c) return c.attrs.p end }\n"
    "action 'a4' { group = 'g2', value = 30, channels = { 'sms' },\n"
    "  limits = { cooldown = '1h' } }\n"
    "action 'a5' { group = 'g2', value = 30, prior = 0.2, explore = true,\n"
    "  eligible = function(c) return c.attrs.seg ~= 'x' end }\n"
    "action 'a6' { value = 12, limits = { per_day = 1 } }\n"
    "action 'a7' { value = -5 }\n"
    "action 'a8' { group = 'g3', value = 20, channels = { 'sms', 'web' },\n"
    "  propensity = function(c) return 1 - c.attrs.p end,\n"
    "  limits = { stop_after_rejects = 1 } }\n"
    "action 'a9' { group = 'g3', value = 25, prior = 0.9,\n"
    "  eligible = function(c) return c.attrs.age % 3 ~= 0 end }\n";

Test(rules, a_lazy_decision_chooses_what_explain_does)
{
	write_file("shop", "10.lua", MIXED);
	load();
	const char *channels[] = { NULL, "web", "app", "sms" };
	const char *segs[]     = { "x", "y" };
	for (int k = 0; k < 300; k++) {
		char data[128], id[16];
		snprintf(data, sizeof(data), "{\"age\": %d, \"seg\": \"%s\", "
		    "\"p\": %.2f}", 10 + k % 23, segs[k % 2], (k % 11) / 10.0);
		snprintf(id, sizeof(id), "e%d", k);
		ok("shop", (ev) { .type = "set", .nodecide = true,
		                  .data_json = data });
		ev d = { .channel = channels[k % 4], .limit = 1 + k % 5,
			.id = id, .norecord = true };
		ok("shop", d);
		json_t *lazy = json_incref(at(last_reply, "actions"));
		d.explain = true;
		ok("shop", d);
		cr_assert(json_equal(lazy, at(last_reply, "actions")),
		    "decision %d: %s vs %s", k, json_dumps(lazy, 0),
		    json_dumps(at(last_reply, "actions"), 0));
		json_decref(lazy);
		if (k % 3 == 0) {
			d.explain  = false;
			d.norecord = false;
			ok("shop", d); // a history, for the limits and budgets
		}
		if (k % 7 == 0) {
			char resp[96];
			snprintf(resp, sizeof(resp), "{\"action\": \"a%d\", "
			    "\"outcome\": \"rejected\"}", 1 + k % 9);
			ok("shop", (ev) { .type = "response", .nodecide = true,
			                  .data_json = resp });
		}
		now += 600000; // ten minutes
	}
}

Test(rules, cohorts_are_stable_and_split)
{
	write_file("shop", "10.lua",
	    "on('x', function(c, e) c.attrs.g = c:cohort('exp', { control = 0.1, treatment = 0.9 }) end)\n");
	load();
	ok("shop", (ev) { .type = "x", .nodecide = true });
	char g[32];
	snprintf(g, sizeof(g), "%s", str_at(last_state, "attrs.g"));
	cr_assert(strcmp(g, "control") == 0 || strcmp(g, "treatment") == 0);
	cr_assert_str_eq(str_at(last_state, "cohorts.exp"), g);
	ok("shop", (ev) { .type = "x", .nodecide = true });
	cr_assert_str_eq(str_at(last_state, "attrs.g"), g);
	// the split: over 2000 customers, about 10 % in control
	int control = 0;
	for (int i = 0; i < 2000; i++) {
		char id[32];
		snprintf(id, sizeof(id), "cust-%d", i);
		ch_req r  = { 0 };
		r.op       = CH_OP_EVENT;
		r.business = S("shop");
		r.customer = S(id);
		r.type     = S("x");
		st_out.size = reply.size = emits.size = 0;
		ch_rule_out out = { .state = &st_out, .reply = &reply,
			.emits = &emits };
		cr_assert_eq(ch_biz_event(biz("shop"), &r, NULL, 0, now, &out),
		    CH_OK);
		json_t *j = to_json(&st_out);
		control += strcmp(str_at(j, "attrs.g"), "control") == 0;
		json_decref(j);
	}
	cr_assert(control > 140 && control < 260, "control: %d of 2000",
	    control);
}

Test(rules, decide_without_record_changes_nothing)
{
	write_file("shop", "10.lua", BASE);
	load();
	ok("shop", (ev) { .norecord = true });
	cr_assert_eq(st_out.size, 0);
	ok("shop", (ev) { 0 });
	cr_assert_gt(st_out.size, 0);
	cr_assert_eq(num_at(last_state, "actions.basic.impressions"), 1);
}

Test(rules, emit_builds_a_pub_message)
{
	write_file("shop", "10.lua",
	    "on('x', function(c) c:emit('welcome', { n = 1 }) end)\n");
	load();
	ok("shop", (ev) { .type = "x", .nodecide = true });
	cr_assert_gt(emits.size, 4);
	const char *topic = emits.data + 4;
	cr_assert_str_eq(topic, "choreo/shop/emit/welcome");
	cr_assert_str_eq(str_at(last_reply, "emitted.0.name"), "welcome");
}

Test(rules, the_sandbox_has_no_way_out)
{
	const char *escapes[] = { "io.open('/etc/passwd')", "os.execute('true')",
		"require('os')", "debug.getinfo(1)", "package.loadlib('x','y')",
		"string.dump(print)", "dofile('/etc/passwd')",
		"collectgarbage()", "getmetatable('').__index.rep('a', 2)",
		"load('\\27Lua')()", "coroutine.create(print)" };
	for (size_t i = 0; i < sizeof(escapes) / sizeof(escapes[0]); i++) {
		char src[256], err[600];
		snprintf(src, sizeof(src), "on('x', function(c) return %s end)\n",
		    escapes[i]);
		write_file("shop", "10.lua", src);
		load();
		cr_assert_eq(run("shop", (ev) { .type = "x" }, err, sizeof(err)),
		    CH_ERULE, "%s must fail", escapes[i]);
		cr_assert_not_null(strstr(err, "10.lua:1:"), "%s: %s",
		    escapes[i], err);
	}
}

Test(rules, undefined_globals_are_named)
{
	write_file("shop", "10.lua", "on('x', function(c) return foo + 1 end)\n");
	load();
	char err[600];
	cr_assert_eq(run("shop", (ev) { .type = "x" }, err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "undefined global 'foo'"), "%s", err);
}

Test(rules, budgets_end_in_rule_limit_and_the_state_lives_on)
{
	write_file("shop", "10.lua",
	    "on('loop', function(c) while true do end end)\n"
	    "on('ploop', function(c) while true do pcall(function() while true do end end) end end)\n"
	    "on('xloop', function(c) xpcall(function() while true do end end, function() while true do end end) end)\n"
	    "on('bomb', function(c) local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(1000) .. i end end)\n"
	    "on('pattern', function(c) return ('a'):rep(26):find(('a*'):rep(26) .. 'b') end)\n"
	    "on('gc', function(c) setmetatable({}, { __gc = function() while true do end end }) end)\n"
	    "on('ok', function(c) c:count('ok') end)\n");
	ch_rules_opts o = CH_RULES_OPTS_DEFAULT;
	o.instr_budget  = 200000;
	o.mem_limit     = 8u << 20;
	load_with(o);
	const char *bad[] = { "loop", "ploop", "xloop", "bomb", "pattern" };
	for (size_t i = 0; i < 5; i++) {
		char err[600];
		cr_assert_eq(run("shop", (ev) { .type = bad[i] }, err, sizeof(err)),
		    CH_ERULELIMIT, "%s: %s", bad[i], err);
		ok("shop", (ev) { .type = "ok", .nodecide = true });
	}
	char err[600];
	cr_assert_eq(run("shop", (ev) { .type = "gc" }, err, sizeof(err)),
	    CH_ERULE);
	cr_assert_not_null(strstr(err, "__gc"), "%s", err);
}

Test(rules, a_business_sets_its_own_budget_and_memory_cap)
{
	// the daemon's defaults are generous; this business asks for less
	write_file("shop", "10.lua",
	    "sandbox { instructions = 2000000, memory = \"8MiB\" }\n"
	    "on('loop', function(c) for i = 1, 1e7 do end end)\n"
	    "on('bomb', function(c) local t = {} for i = 1, 1e6 do t[i] = ('x'):rep(100) .. i end end)\n"
	    "on('ok', function(c) for i = 1, 1000 do end c:count('ok') end)\n");
	load();
	char err[600];
	cr_assert_eq(run("shop", (ev) { .type = "loop" }, err, sizeof(err)),
	    CH_ERULELIMIT, "%s", err);
	cr_assert_not_null(strstr(err, "2000000 instructions"), "%s", err);
	cr_assert_eq(run("shop", (ev) { .type = "bomb" }, err, sizeof(err)),
	    CH_ERULELIMIT, "%s", err);
	cr_assert_not_null(strstr(err, "memory limit (8 MiB"), "%s", err);
	ok("shop", (ev) { .type = "ok", .nodecide = true });

	expect_load_error("sandbox { instructions = 5 }\n",
	    "sandbox: instructions must be an integer from 100000", 1);
	expect_load_error("\nsandbox { memory = \"lots\" }\n",
	    "sandbox: memory must be from \"8MiB\" to \"1GiB\"", 2);
	expect_load_error("sandbox { cpu = 1 }\n",
	    "sandbox: unknown field 'cpu'", 1);
}

Test(rules, pattern_functions_keep_lua_semantics)
{
	write_file("shop", "10.lua",
	    "on('x', function(c)\n"
	    "  local a = c.attrs\n"
	    "  a.find = ('hello world'):find('wor')\n"
	    "  a.match = ('key=value'):match('(%w+)=(%w+)')\n"
	    "  a.gsub = ('a,b,c'):gsub(',', ';')\n"
	    "  local t = {} for w in ('one two'):gmatch('%a+') do t[#t+1] = w end\n"
	    "  a.gmatch = table.concat(t, '|')\n"
	    "  a.trim = ('  x  '):match('^%s*(.-)%s*$')\n"
	    "  a.fn = ('hello'):gsub('l+', function(x) return '<' .. x .. '>' end)\n"
	    "  a.bal = ('f(a(b)c)d'):match('%b()')\n"
	    "  a.plain = ('a.b'):find('.', 1, true)\n"
	    "end)\n");
	load();
	ok("shop", (ev) { .type = "x", .nodecide = true });
	cr_assert_eq(num_at(last_state, "attrs.find"), 7);
	cr_assert_str_eq(str_at(last_state, "attrs.match"), "key");
	cr_assert_str_eq(str_at(last_state, "attrs.gsub"), "a;b;c");
	cr_assert_str_eq(str_at(last_state, "attrs.gmatch"), "one|two");
	cr_assert_str_eq(str_at(last_state, "attrs.trim"), "x");
	cr_assert_str_eq(str_at(last_state, "attrs.fn"), "he<ll>o");
	cr_assert_str_eq(str_at(last_state, "attrs.bal"), "(a(b)c)");
	cr_assert_eq(num_at(last_state, "attrs.plain"), 2);
}

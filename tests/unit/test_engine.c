// The engine with a virtual clock: the dedup window and the sweep of
// expired dedup records.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/engine.h"
#include "core/err.h"
#include "core/json.h"
#include "core/store.h"
#include "lua/rules.h"

#define HOUR 3600000LL

static char       dir[64];
static ch_store  *st;
static ch_engine *eng;
static int64_t    clock_ms = 1767225600000;

static int64_t
virtual_clock(void)
{
	return (clock_ms);
}

static ch_str
S(const char *s)
{
	return ((ch_str) { s, (uint32_t) strlen(s) });
}

static void
setup(void)
{
	char why[256], path[128];
	snprintf(dir, sizeof(dir), "/tmp/choreo-unit-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/rules/shop", dir);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "mkdir -p %s/data %s", dir, path);
	cr_assert_eq(system(cmd), 0);
	snprintf(path, sizeof(path), "%s/rules/shop/10.lua", dir);
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs("on('*', function(c) c:count('events') end)\n", f);
	fclose(f);
	// a funnel for the analytics
	snprintf(cmd, sizeof(cmd), "mkdir -p %s/rules/funnel", dir);
	cr_assert_eq(system(cmd), 0);
	snprintf(path, sizeof(path), "%s/rules/funnel/10.lua", dir);
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs("journey 'buy' { stages = { 'look', 'cart', 'paid' }, goal = 'paid' }\n"
	      "action 'offer' { channels = { 'web' }, value = 10 }\n"
	      "on('look', function(c) c:advance('buy', 'look') end)\n"
	      "on('cart', function(c) c:advance('buy', 'cart') end)\n"
	      "on('paid', function(c) c:advance('buy', 'paid') end)\n"
	      "on('rate', function(c, e) c:score('buy', 'csat', e.data.csat) end)\n"
	      "on('boom', function(c) c:advance('buy', 'paid'); error('no') end)\n",
	    f);
	fclose(f);

	snprintf(path, sizeof(path), "%s/data", dir);
	ch_store_opts so = { false, (size_t) 1 << 30, 0 };
	cr_assert_eq(ch_store_open(&st, path, &so, why, sizeof(why)), CH_OK,
	    "%s", why);
	ch_rules     *rules;
	ch_rules_opts ro = CH_RULES_OPTS_DEFAULT;
	snprintf(path, sizeof(path), "%s/rules", dir);
	cr_assert_eq(ch_rules_load(&rules, path, &ro), CH_OK);
	ch_engine_opts eo = { .rules_dir = path, .rules = rules, .store = st,
		.dedup_window_ms = 24 * HOUR, .clock = virtual_clock };
	cr_assert_eq(ch_engine_new(&eng, &eo), CH_OK);
}

static void
teardown(void)
{
	ch_engine_free(eng);
	ch_store_close(st);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(engine, .init = setup, .fini = teardown);

static void
job_done(ch_job *j)
{
	(void) j; // run_one returns once the reply is final
}

// event runs one event with an id and says whether it was a duplicate.
static bool
event(const char *id)
{
	ch_req r = { 0 };
	r.op       = CH_OP_EVENT;
	r.business = S("shop");
	r.customer = S("c1");
	r.type     = S("page_view");
	r.id       = S(id);
	r.record   = true;
	r.limit    = 3;
	ch_job j;
	ch_job_init(&j);
	j.req  = &r;
	j.done = job_done;
	ch_engine_run_one(eng, &j);
	cr_assert_eq(j.err, CH_OK);
	// "duplicate" appears in the reply only for a repeated id
	bool dup = memmem(j.reply.data, j.reply.size, "duplicate", 9) != NULL;
	ch_job_fini(&j);
	return (dup);
}

static bool
has_dedup_record(const char *id)
{
	char     key[400];
	size_t   kl = ch_store_key(key, S("shop"), S(id));
	MDB_txn *txn;
	MDB_val  v;
	cr_assert_eq(mdb_txn_begin(ch_store_env(st), NULL, MDB_RDONLY, &txn), 0);
	int rc = ch_store_get(st, txn, CH_DB_DEDUP, key, kl, &v);
	mdb_txn_abort(txn);
	return (rc == CH_OK);
}

static size_t
age_entries(void)
{
	MDB_txn *txn;
	MDB_stat ms;
	cr_assert_eq(mdb_txn_begin(ch_store_env(st), NULL, MDB_RDONLY, &txn), 0);
	cr_assert_eq(mdb_stat(txn, ch_store_dbi(st, CH_DB_DEDUP_AGE), &ms), 0);
	mdb_txn_abort(txn);
	return (ms.ms_entries);
}

static size_t
entries(enum ch_db db)
{
	MDB_txn *txn;
	MDB_stat ms;
	cr_assert_eq(mdb_txn_begin(ch_store_env(st), NULL, MDB_RDONLY, &txn), 0);
	cr_assert_eq(mdb_stat(txn, ch_store_dbi(st, db), &ms), 0);
	mdb_txn_abort(txn);
	return (ms.ms_entries);
}

Test(engine, a_timer_key_that_reads_two_ways_is_dropped_not_run)
{
	// written before customer ids were refused with a NUL: the timer of
	// 'victim\0zz' named 'a:x'; read up to the first NUL, it would run
	// on 'victim' with the name 'zz\0a:x'
	char     key[CH_TIMER_KEY_MAX];
	size_t   kl = ch_timer_key(key, sizeof(key), clock_ms - 1, S("shop"),
	      (ch_str) { "victim\0zz", 9 }, S("a:x"));
	MDB_txn *txn;
	cr_assert_eq(ch_store_begin(st, NULL, &txn), CH_OK);
	const char val[] = "\x81\xa4type\xa1x"; // {type = "x"}
	cr_assert_eq(ch_store_put(st, txn, CH_DB_TIMERS, key, kl, val,
	                 sizeof(val) - 1),
	    CH_OK);
	cr_assert_eq(ch_store_commit(st, txn), CH_OK);
	cr_assert_eq(entries(CH_DB_TIMERS), 1);
	ch_engine_fire_timers(eng);
	cr_assert_eq(entries(CH_DB_TIMERS), 0, "the record is gone");
	cr_assert_eq(entries(CH_DB_CUSTOMERS), 0,
	    "the timer ran as an event of another customer");
}

Test(engine, an_id_is_a_duplicate_within_the_window_only)
{
	cr_assert_not(event("e1"));
	clock_ms += 23 * HOUR;
	cr_assert(event("e1"), "within 24 h the id is a duplicate");
	clock_ms += 2 * HOUR;
	cr_assert_not(event("e1"), "past the window it applies again");
}

Test(engine, expired_dedup_records_are_swept)
{
	for (int i = 0; i < 50; i++) {
		char id[16];
		snprintf(id, sizeof(id), "old-%d", i);
		cr_assert_not(event(id));
	}
	cr_assert(has_dedup_record("old-0"));
	cr_assert_eq(age_entries(), 50);
	clock_ms += 25 * HOUR;
	// each batch sweeps a bounded number (2 per event + 16): a few
	// events later every expired record is gone, the new ones stay
	for (int i = 0; i < 3; i++) {
		char id[16];
		snprintf(id, sizeof(id), "new-%d", i);
		cr_assert_not(event(id));
	}
	cr_assert_not(has_dedup_record("old-0"));
	cr_assert_not(has_dedup_record("old-49"));
	cr_assert(has_dedup_record("new-0"));
	cr_assert_eq(age_entries(), 3);
}

Test(engine, an_id_applied_again_keeps_its_new_record)
{
	cr_assert_not(event("again"));
	clock_ms += 25 * HOUR;
	// applied again: its new record must survive the sweep of the old one
	cr_assert_not(event("again"));
	cr_assert_not(event("other"));
	cr_assert(has_dedup_record("again"));
	clock_ms += 1 * HOUR;
	cr_assert(event("again"), "still a duplicate of its second run");
}

// request runs one request of business funnel and returns its reply as JSON.
static json_t *
request(enum ch_op op, const char *customer, const char *type,
    const char *channel, const char *data_json, const char *journey)
{
	ch_req r = { 0 };
	r.op       = op;
	r.business = S("funnel");
	r.customer = S(customer ? customer : "");
	r.type     = S(type ? type : "");
	r.channel  = S(channel ? channel : "");
	r.journey  = S(journey ? journey : "");
	r.decide   = channel != NULL;
	r.record   = true;
	r.limit    = 3;
	msgpack_unpacked data;
	msgpack_unpacked_init(&data);
	msgpack_sbuffer  db;
	msgpack_sbuffer_init(&db);
	if (data_json != NULL) {
		msgpack_packer pk;
		msgpack_packer_init(&pk, &db, msgpack_sbuffer_write);
		json_t *j = json_loads(data_json, 0, NULL);
		cr_assert_not_null(j);
		cr_assert_eq(ch_json_to_msgpack(j, &pk), 0);
		json_decref(j);
		cr_assert_eq(msgpack_unpack_next(&data, db.data, db.size, NULL),
		    MSGPACK_UNPACK_SUCCESS);
		r.data = &data.data;
	}
	ch_job j;
	ch_job_init(&j);
	j.req  = &r;
	j.done = job_done;
	ch_engine_run_one(eng, &j);
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	cr_assert_eq(msgpack_unpack_next(&up, j.reply.data, j.reply.size, NULL),
	    MSGPACK_UNPACK_SUCCESS);
	json_t *out = ch_msgpack_to_json(&up.data);
	msgpack_unpacked_destroy(&up);
	msgpack_unpacked_destroy(&data);
	msgpack_sbuffer_destroy(&db);
	ch_job_fini(&j);
	return (out);
}

static double
num(json_t *j, const char *path)
{
	char p[256];
	snprintf(p, sizeof(p), "%s", path);
	for (char *t = strtok(p, "."); t != NULL && j != NULL; t = strtok(NULL, ".")) {
		j = json_object_get(j, t);
	}
	cr_assert(json_is_number(j), "%s is not a number", path);
	return (json_number_value(j));
}

static void
ev(const char *customer, const char *type, const char *channel,
    const char *data_json)
{
	json_t *r = request(CH_OP_EVENT, customer, type, channel, data_json, NULL);
	json_decref(r);
}

Test(engine, stats_count_the_funnel_scores_and_impressions)
{
	ev("c1", "look", "web", NULL);
	ev("c2", "look", "web", NULL);
	clock_ms += 60000;
	ev("c1", "cart", NULL, NULL);
	clock_ms += 60000;
	ev("c1", "paid", NULL, NULL);
	ev("c1", "rate", NULL, "{\"csat\": 3}");
	ev("c2", "rate", NULL, "{\"csat\": 5}");
	ev("c2", "boom", NULL, NULL); // rolled back, and its counts with it
	json_t *s = request(CH_OP_STATS, NULL, NULL, NULL, NULL, NULL);
	cr_assert(json_is_true(json_object_get(s, "ok")));
	cr_assert_eq(num(s, "journeys.buy.customers"), 2);
	cr_assert_eq(num(s, "journeys.buy.stages.look.entered"), 2);
	cr_assert_eq(num(s, "journeys.buy.stages.look.current"), 1);
	cr_assert_eq(num(s, "journeys.buy.stages.cart.entered"), 1);
	cr_assert_eq(num(s, "journeys.buy.stages.cart.current"), 0);
	cr_assert_eq(num(s, "journeys.buy.stages.paid.current"), 1);
	cr_assert_eq(num(s, "journeys.buy.converted"), 1);
	cr_assert_float_eq(num(s, "journeys.buy.conversion_rate"), 0.5, 1e-9);
	// 2 minutes to the goal, within a histogram bucket (a 4th of a doubling)
	double p50 = num(s, "journeys.buy.elapsed_ms.p50");
	cr_assert(p50 > 120000 / 1.2 && p50 < 120000 * 1.2, "p50 %f", p50);
	cr_assert_eq(num(s, "journeys.buy.scores.csat.count"), 2);
	cr_assert_float_eq(num(s, "journeys.buy.scores.csat.mean"), 4, 1e-9);
	cr_assert_eq(num(s, "journeys.buy.by.channel.web.customers"), 2);
	cr_assert_eq(num(s, "actions.offer.impressions"), 2);
	cr_assert_eq(num(s, "actions.offer.by_channel.web.impressions"), 2);
	json_decref(s);
	// one journey only; an unknown one is a bad request
	s = request(CH_OP_STATS, NULL, NULL, NULL, NULL, "buy");
	cr_assert_null(json_object_get(s, "actions"));
	cr_assert_eq(num(s, "journeys.buy.customers"), 2);
	json_decref(s);
	s = request(CH_OP_STATS, NULL, NULL, NULL, NULL, "sell");
	cr_assert(json_is_false(json_object_get(s, "ok")));
	json_decref(s);
	// a forgotten customer is no longer in its stage; what happened stays
	s = request(CH_OP_FORGET, "c2", NULL, NULL, NULL, NULL);
	cr_assert(json_is_true(json_object_get(s, "ok")));
	json_decref(s);
	s = request(CH_OP_STATS, NULL, NULL, NULL, NULL, "buy");
	cr_assert_eq(num(s, "journeys.buy.stages.look.current"), 0);
	cr_assert_eq(num(s, "journeys.buy.stages.look.entered"), 2);
	json_decref(s);
}

// The time to the goal runs from the journey's first move, however much of
// the history was trimmed on the way (20 moves are kept).
Test(engine, the_time_to_the_goal_outlives_the_trimmed_history)
{
	for (int i = 0; i < 300; i++) {
		ev("c1", i % 2 ? "cart" : "look", NULL, NULL);
		clock_ms += 60000;
	}
	ev("c1", "paid", NULL, NULL);
	json_t *s = request(CH_OP_STATS, NULL, NULL, NULL, NULL, "buy");
	double p50 = num(s, "journeys.buy.elapsed_ms.p50");
	cr_assert(p50 > 300 * 60000 / 1.2 && p50 < 300 * 60000 * 1.2, "p50 %f",
	    p50);
	cr_assert_eq(num(s, "journeys.buy.stages.look.entered"), 150);
	cr_assert_eq(num(s, "journeys.buy.stages.cart.entered"), 150);
	json_decref(s);
	json_t *g = request(CH_OP_GET, "c1", NULL, NULL, NULL, NULL);
	cr_assert_eq(num(g, "customer.journeys.buy.moves"), 301);
	cr_assert_eq(num(g, "customer.journeys.buy.entered.look"), 150);
	cr_assert_eq(num(g, "customer.journeys.buy.entered.paid"), 1);
	json_decref(g);
}

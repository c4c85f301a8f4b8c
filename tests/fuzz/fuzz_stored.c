// Fuzz target: a customer's stored state, through the engine's real paths.
// The input is the value of a customers record, byte for byte — what a
// damaged disk, an older schema or a bug of ours may have left in LMDB
// (empty: no record). It is stored for seven customers of a small fixed
// rule set, with three due timers for one of them, and then the engine
// runs, each on its own customer: an event that moves a journey, opens a
// case and sets a timer; a response to an action; an event that closes the
// case and cancels the timer; a decision; a get; the due timers; a forget.
// Every reply must be one well-formed msgpack map — ok=true or an error
// with a code and a message — every state the engine writes back must be a
// well-formed map, and every emit a topic and a map; never a crash.
#include <lmdb.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/codec.h"
#include "core/engine.h"
#include "core/err.h"
#include "core/log.h"
#include "core/store.h"
#include "fuzz_util.h"
#include "lua/conv.h"
#include "lua/rules.h"

static const char RULES[] =
    "params { vip = 100 }\n"
    "journey 'onboarding' {\n"
    "  stages = { 'visitor', 'browsing', 'cart', 'customer' },\n"
    "  goal = 'customer', inactive_after = '3d',\n"
    "}\n"
    "case 'ticket' { sla = '48h' }\n"
    "action 'offer' {\n"
    "  group = 'discounts', channels = { 'web', 'app' }, value = 20,\n"
    "  eligible = function(c) return (c.attrs.orders or 0) < 3 end,\n"
    "  limits = { max_impressions = 3, cooldown = '1h', stop_after_rejects = 2 },\n"
    "  payload = { title = '10% off' },\n"
    "}\n"
    "action 'premium' {\n"
    "  group = 'memberships', value = 120,\n"
    "  eligible = function(c) return (c.attrs.spend or 0) >= c.params.vip end,\n"
    "  propensity = function(c)\n"
    "    local h = c:history('offer')\n"
    "    return h and h.accepted and 0.5 or 0.1\n"
    "  end,\n"
    "}\n"
    "action 'newsletter' { value = 2, explore = true }\n"
    "variation { region = 'EU' } {\n"
    "  params { vip = 80 },\n"
    "  action 'offer' { value = 25 },\n"
    "}\n"
    "on('*', function(c, e)\n"
    "  c:count('events')\n"
    "  if c:stage('onboarding') == nil then c:advance('onboarding', 'visitor') end\n"
    "end)\n"
    "on('visit', function(c, e)\n"
    "  c:advance('onboarding', 'browsing')\n"
    "  c.attrs.visits = (c.attrs.visits or 0) + 1\n"
    "  c.attrs.spend = (c.attrs.spend or 0) + (tonumber(e.data.amount) or 0)\n"
    "  c:after('1h', 'remind', { n = c.attrs.visits })\n"
    "  c:open_case('ticket', { subject = 'hello' })\n"
    "  c:score('onboarding', 'csat', 4)\n"
    "  c:cohort('exp', { a = 1, b = 1 })\n"
    "  local h = c:history('offer')\n"
    "  if h then c:count('seen', h.impressions or 0) end\n"
    "end)\n"
    "on('close', function(c, e)\n"
    "  c:cancel('remind')\n"
    "  c:close_case('ticket', 'solved')\n"
    "  c:advance('onboarding', 'customer')\n"
    "end)\n"
    "on('remind', function(c, e)\n"
    "  if c:stage('onboarding') == 'browsing' then\n"
    "    c:emit('mail', { n = e.data.n, customer = c.id })\n"
    "  end\n"
    "end)\n"
    "on('inactive', function(c, e) c:count('inactive_' .. e.data.journey) end)\n"
    "on('sla_breached', function(c, e) c:emit('escalate', { case = e.data.case }) end)\n";

static const int64_t NOW = 1767225600000; // the virtual clock, fixed

static char       root[256];
static ch_store  *st;
static ch_engine *eng;

static int64_t
clock_fixed(void)
{
	return (NOW);
}

static ch_str
S(const char *s)
{
	return ((ch_str) { s, (uint32_t) strlen(s) });
}

static void
cleanup(void)
{
	ch_engine_free(eng);
	ch_store_close(st);
	fuzz_rmtree(root);
}

static void
setup(void)
{
	char path[512], why[256];
	ch_log_set_level(CH_LOG_OFF);
	fuzz_tempdir(root, sizeof(root), "stored");
	fuzz_mkdir(root, "data");
	fuzz_mkdir(root, "rules");
	snprintf(path, sizeof(path), "%s/rules", root);
	fuzz_mkdir(path, "shop");
	snprintf(path, sizeof(path), "%s/rules/shop/10.lua", root);
	FILE *f = fopen(path, "w");
	FUZZ_ASSERT(f != NULL && fputs(RULES, f) >= 0 && fclose(f) == 0);

	snprintf(path, sizeof(path), "%s/data", root);
	ch_store_opts so = { false, (size_t) 1 << 30, 0 };
	FUZZ_ASSERT(ch_store_open(&st, path, &so, why, sizeof(why)) == CH_OK);
	ch_rules     *rules;
	ch_rules_opts ro = CH_RULES_OPTS_DEFAULT;
	ro.instr_budget  = 1000000;
	snprintf(path, sizeof(path), "%s/rules", root);
	FUZZ_ASSERT(ch_rules_load(&rules, path, &ro) == CH_OK);
	FUZZ_ASSERT(ch_rules_serving(rules, 0)); // the rule set itself loads
	ch_engine_opts eo = { .rules_dir = path, .rules = rules, .store = st,
		.clock = clock_fixed };
	FUZZ_ASSERT(ch_engine_new(&eng, &eo) == CH_OK);
	atexit(cleanup);
}

// put_timer stores a due timer of customer: name → {type, data}.
static void
put_timer(MDB_txn *txn, const char *customer, const char *name,
    const char *type, const char *dkey, const char *dval)
{
	char            key[CH_TIMER_KEY_MAX];
	size_t          kl = ch_timer_key(key, sizeof(key), NOW - 1000, S("shop"),
	             S(customer), S(name));
	msgpack_sbuffer b;
	msgpack_packer  pk;
	msgpack_sbuffer_init(&b);
	msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 2);
	ch_pack_kv_str(&pk, "type", type);
	ch_pack_str(&pk, "data");
	msgpack_pack_map(&pk, 1);
	ch_pack_kv_str(&pk, dkey, dval);
	FUZZ_ASSERT(kl > 0 && ch_store_put(st, txn, CH_DB_TIMERS, key, kl,
	                          b.data, b.size) == CH_OK);
	msgpack_sbuffer_destroy(&b);
}

#define NCUSTOMERS 7

// reset empties the store (so that every run starts alike) and stores the
// input as customers c0..c6, and c5's due timers.
static void
reset(const uint8_t *data, size_t size)
{
	MDB_txn *txn;
	FUZZ_ASSERT(ch_store_begin(st, NULL, &txn) == CH_OK);
	for (int db = 0; db < CH_DB_COUNT; db++) {
		if (db != CH_DB_META) {
			FUZZ_ASSERT(mdb_drop(txn, ch_store_dbi(st, db), 0) == 0);
		}
	}
	for (int i = 0; size > 0 && i < NCUSTOMERS; i++) {
		char   cust[8], key[64 + 1 + 256];
		snprintf(cust, sizeof(cust), "c%d", i);
		size_t kl = ch_store_key(key, S("shop"), S(cust));
		FUZZ_ASSERT(ch_store_put(st, txn, CH_DB_CUSTOMERS, key, kl, data,
		                size) == CH_OK);
	}
	put_timer(txn, "c5", "a:remind", "remind", "n", "1");
	put_timer(txn, "c5", "i:onboarding", "inactive", "journey", "onboarding");
	put_timer(txn, "c5", "s:ticket", "sla_breached", "case", "ticket");
	FUZZ_ASSERT(ch_store_commit(st, txn) == CH_OK);
	ch_rules_model_rollback(); // the model's counts went: no cache keeps them
}

static void
job_done(ch_job *j)
{
	(void) j;
}

// check_map: buf holds exactly one msgpack map, at most depth deep. Returns
// whether msgpack-c could unpack it into up (it stops at 32 levels).
static bool
check_map(msgpack_unpacked *up, const void *buf, size_t len, int depth)
{
	const char *why;
	FUZZ_ASSERT(ch_mp_prescan(buf, len, depth, &why, NULL) == CH_OK);
	const unsigned char *p = buf;
	FUZZ_ASSERT((p[0] & 0xf0) == 0x80 || p[0] == 0xde || p[0] == 0xdf);
	if (ch_mp_prescan(buf, len, CH_MP_MAX_DEPTH, &why, NULL) != CH_OK) {
		return (false);
	}
	FUZZ_ASSERT(msgpack_unpack_next(up, buf, len, NULL) ==
	    MSGPACK_UNPACK_SUCCESS);
	return (true);
}

// A state the engine writes is at most CH_CONV_PACK_DEPTH deep; a reply
// or an emit, whatever the state it was given, is one msgpack-c reads.
#define STATE_DEPTH CH_CONV_PACK_DEPTH
#define REPLY_DEPTH CH_MP_MAX_DEPTH

static void
check_reply(const ch_job *j)
{
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	if (!check_map(&up, j->reply.data, j->reply.size, REPLY_DEPTH)) {
		msgpack_unpacked_destroy(&up);
		return; // a get of a state deeper than msgpack-c reads
	}
	const msgpack_object *ok = ch_mp_get(&up.data, "ok",
	    MSGPACK_OBJECT_BOOLEAN);
	FUZZ_ASSERT(ok != NULL && ok->via.boolean == (j->err == CH_OK));
	if (!ok->via.boolean) {
		const msgpack_object *e = ch_mp_get(&up.data, "error",
		    MSGPACK_OBJECT_MAP);
		const msgpack_object *code = ch_mp_get(e, "code",
		    MSGPACK_OBJECT_STR);
		FUZZ_ASSERT(code != NULL &&
		    ch_mp_get(e, "message", MSGPACK_OBJECT_STR) != NULL);
		const char *want = ch_err_code(j->err);
		FUZZ_ASSERT(code->via.str.size == strlen(want) &&
		    memcmp(code->via.str.ptr, want, code->via.str.size) == 0);
	}
	msgpack_unpacked_destroy(&up);
	// emits: u32 length ‖ topic \0 map
	size_t off = 0;
	while (off < j->emits.size) {
		uint32_t len;
		FUZZ_ASSERT(off + 4 <= j->emits.size);
		memcpy(&len, j->emits.data + off, 4);
		off += 4;
		FUZZ_ASSERT(len <= j->emits.size - off);
		const char *m = j->emits.data + off;
		const char *z = memchr(m, '\0', len);
		FUZZ_ASSERT(z != NULL);
		msgpack_unpacked_init(&up);
		check_map(&up, z + 1, len - (size_t) (z + 1 - m), REPLY_DEPTH);
		msgpack_unpacked_destroy(&up);
		off += len;
	}
}

static const uint8_t *input; // the run's input
static size_t         input_len;

// check_state: what the store now holds for customer is the input as it
// was, a map, or nothing.
static void
check_state(const char *customer)
{
	MDB_txn *txn;
	MDB_val  v;
	char     key[64 + 1 + 256];
	size_t   kl = ch_store_key(key, S("shop"), S(customer));
	FUZZ_ASSERT(mdb_txn_begin(ch_store_env(st), NULL, MDB_RDONLY, &txn) ==
	    0);
	if (ch_store_get(st, txn, CH_DB_CUSTOMERS, key, kl, &v) == CH_OK &&
	    (v.mv_size != input_len ||
	        memcmp(v.mv_data, input, input_len) != 0)) {
		msgpack_unpacked up;
		msgpack_unpacked_init(&up);
		check_map(&up, v.mv_data, v.mv_size, STATE_DEPTH);
		msgpack_unpacked_destroy(&up);
	}
	mdb_txn_abort(txn);
}

// run runs one request on customer; wrote: it may have rewritten the state.
static void
run(ch_req *r, const char *customer, bool wrote, const msgpack_object *data)
{
	r->business = S("shop");
	r->customer = S(customer);
	r->data     = data;
	ch_job j;
	ch_job_init(&j);
	j.req  = r;
	j.done = job_done;
	ch_engine_run_one(eng, &j);
	check_reply(&j);
	ch_job_fini(&j);
	if (wrote) {
		check_state(customer);
	}
}

// event_data unpacks a small map for an event's data.
static const msgpack_object *
event_data(msgpack_unpacked *up, msgpack_sbuffer *b, const char *k1,
    const char *v1, const char *k2, const char *v2)
{
	msgpack_packer pk;
	b->size = 0;
	msgpack_packer_init(&pk, b, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, k2 ? 2 : 1);
	ch_pack_kv_str(&pk, k1, v1);
	if (k2 != NULL) {
		ch_pack_kv_str(&pk, k2, v2);
	}
	FUZZ_ASSERT(msgpack_unpack_next(up, b->data, b->size, NULL) ==
	    MSGPACK_UNPACK_SUCCESS);
	return (&up->data);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (eng == NULL) {
		setup();
	}
	reset(data, size);
	input     = data;
	input_len = size;
	msgpack_sbuffer b;
	msgpack_unpacked up;
	msgpack_sbuffer_init(&b);
	msgpack_unpacked_init(&up);

	ch_req r = { .op = CH_OP_EVENT, .type = S("visit"), .channel = S("web"),
		.region = S("EU"), .decide = true, .explain = true,
		.record = true, .limit = 3 };
	run(&r, "c0", true, event_data(&up, &b, "amount", "30", NULL, NULL));

	r = (ch_req) { .op = CH_OP_EVENT, .type = S("response"),
		.channel = S("web"), .decide = true, .record = true, .limit = 3 };
	run(&r, "c1", true,
	    event_data(&up, &b, "action", "offer", "outcome", "rejected"));

	r = (ch_req) { .op = CH_OP_EVENT, .type = S("close"), .limit = 3,
		.record = true };
	run(&r, "c2", true, NULL);

	r = (ch_req) { .op = CH_OP_DECIDE, .channel = S("app"), .explain = true,
		.record = true, .limit = 2 };
	run(&r, "c3", true, NULL);

	r = (ch_req) { .op = CH_OP_GET };
	run(&r, "c4", false, NULL);

	// c5's three timers: a c:after, an inactivity and a case SLA
	ch_engine_fire_timers(eng);
	check_state("c5");

	r = (ch_req) { .op = CH_OP_FORGET };
	run(&r, "c6", false, NULL);

	msgpack_unpacked_destroy(&up);
	msgpack_sbuffer_destroy(&b);
	return (0);
}

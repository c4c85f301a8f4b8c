// K5: memory exhaustion on the event path (SQLite's OOM loop). The engine
// runs in this process, as in tests/unit/test_engine.c, and this program is
// linked with --wrap=malloc,calloc,realloc,msgpack_unpack_next: every
// allocation choreo's own code makes — the engine, the store's glue, the
// rule runtime, msgpack-c's inline buffers, and Lua's, which goes through
// the business's allocator (lua/rules.c) — and every unpack in libmsgpackc
// (which allocates in its zone) comes here first. Armed, the Nth of them
// fails, once (transient) or from then on (persistent), for N = 1, 2, ...
// until a request completes without reaching the Nth.
//
// After each round, as a client would see it: the reply is a well-formed
// map; ok=true means the event is stored once, an error that nothing is —
// the whole store byte for byte as before; the engine then serves the next
// event of the same customer normally. No crash, and (in the ASan build)
// no leak.
//
// Out of scope: allocations inside LMDB and nng, which this cannot reach
// (an LMDB failure would come back as ENOMEM, like any of its errors; nng
// 1.5.2 has known crashes on allocation failure, RELIABILITY.md §2.3), and
// the server's decoding of the request before it reaches the engine.
//
// CHOREO_K5_STRIDE (default 1: every N) thins the loop for a quick look.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "core/err.h"
#include "core/store.h"
#include "lua/rules.h"

/*
** {======================================================
** The failing allocator
** =======================================================
*/

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
msgpack_unpack_return __real_msgpack_unpack_next(msgpack_unpacked *r,
    const char *data, size_t len, size_t *off);

static struct {
	bool     armed, persistent;
	uint64_t n;      // fail the nth allocation after arming
	uint64_t count;  // allocations since arming
	uint64_t failed; // failed since arming
} oom;

static bool
fail_now(void)
{
	if (!oom.armed) {
		return (false);
	}
	oom.count++;
	if (oom.count == oom.n || (oom.persistent && oom.count > oom.n)) {
		oom.failed++;
		return (true);
	}
	return (false);
}

void *
__wrap_malloc(size_t n)
{
	return (fail_now() ? NULL : __real_malloc(n));
}

void *
__wrap_calloc(size_t n, size_t m)
{
	return (fail_now() ? NULL : __real_calloc(n, m));
}

void *
__wrap_realloc(void *p, size_t n)
{
	// a realloc to 0 frees: that is not an allocation
	if (n == 0 || !fail_now()) {
		return (__real_realloc(p, n));
	}
	return (NULL);
}

msgpack_unpack_return
__wrap_msgpack_unpack_next(msgpack_unpacked *r, const char *data, size_t len,
    size_t *off)
{
	if (fail_now()) {
		return (MSGPACK_UNPACK_NOMEM_ERROR);
	}
	return (__real_msgpack_unpack_next(r, data, len, off));
}

static void
arm(uint64_t n, bool persistent)
{
	oom.n          = n;
	oom.persistent = persistent;
	oom.count      = 0;
	oom.failed     = 0;
	oom.armed      = true;
}

static void
disarm(void)
{
	oom.armed = false;
}

/* }====================================================== */

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

// engine_new (re)builds the engine and its rule set on the store: its
// scratch buffers start empty, as after a restart.
static void
engine_new(void)
{
	static char   path[160];
	ch_rules     *rules;
	ch_rules_opts ro = CH_RULES_OPTS_DEFAULT;
	ch_engine_free(eng);
	snprintf(path, sizeof(path), "%s/rules", dir);
	cr_assert_eq(ch_rules_load(&rules, path, &ro), CH_OK);
	ch_engine_opts eo = { .rules_dir = path, .rules = rules, .store = st,
		.dedup_window_ms = 3600000, .clock = virtual_clock };
	cr_assert_eq(ch_engine_new(&eng, &eo), CH_OK);
}

static void
setup(void)
{
	char why[256], path[160], cmd[400];
	snprintf(dir, sizeof(dir), "/tmp/choreo-oom-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	// the e2e shop: state, counters, a journey, actions, emits, timers
	snprintf(cmd, sizeof(cmd), "mkdir -p %s/data %s/rules && cp -r %s/shop "
	                           "%s/rules/",
	    dir, dir, CH_E2E_RULES, dir);
	cr_assert_eq(system(cmd), 0);
	snprintf(path, sizeof(path), "%s/data", dir);
	ch_store_opts so = { false, (size_t) 1 << 30, 0 };
	cr_assert_eq(ch_store_open(&st, path, &so, why, sizeof(why)), CH_OK,
	    "%s", why);
	engine_new();
}

static void
teardown(void)
{
	disarm();
	ch_engine_free(eng);
	ch_store_close(st);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(oom, .init = setup, .fini = teardown);

/*
** {======================================================
** What the store holds
** =======================================================
*/

// snapshot: every record of every database, in order, as one buffer.
static void
snapshot(msgpack_sbuffer *out)
{
	MDB_txn *txn;
	out->size = 0;
	cr_assert_eq(mdb_txn_begin(ch_store_env(st), NULL, MDB_RDONLY, &txn), 0);
	for (int db = 0; db < CH_DB_COUNT; db++) {
		MDB_cursor *c;
		MDB_val     k, v;
		cr_assert_eq(mdb_cursor_open(txn, ch_store_dbi(st, db), &c), 0);
		while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
			uint64_t h[3] = { (uint64_t) db, k.mv_size, v.mv_size };
			msgpack_sbuffer_write(out, (const char *) h, sizeof(h));
			msgpack_sbuffer_write(out, k.mv_data, k.mv_size);
			msgpack_sbuffer_write(out, v.mv_data, v.mv_size);
		}
		mdb_cursor_close(c);
	}
	mdb_txn_abort(txn);
}

// counter_of: a counter of customer c's stored state (0 when absent).
static int64_t
counter_of(const char *c, const char *name)
{
	char     key[400];
	size_t   kl = ch_store_key(key, S("shop"), S(c));
	MDB_txn *txn;
	MDB_val  v;
	int64_t  n = 0;
	cr_assert_eq(mdb_txn_begin(ch_store_env(st), NULL, MDB_RDONLY, &txn), 0);
	if (ch_store_get(st, txn, CH_DB_CUSTOMERS, key, kl, &v) == CH_OK) {
		msgpack_unpacked up;
		msgpack_unpacked_init(&up);
		cr_assert_eq(__real_msgpack_unpack_next(&up, v.mv_data, v.mv_size,
		                 NULL),
		    MSGPACK_UNPACK_SUCCESS, "%s: a damaged state", c);
		const msgpack_object *o = ch_mp_get(
		    ch_mp_get(&up.data, "counters", MSGPACK_OBJECT_MAP), name,
		    MSGPACK_OBJECT_POSITIVE_INTEGER);
		n = o != NULL ? (int64_t) o->via.u64 : 0;
		msgpack_unpacked_destroy(&up);
	}
	mdb_txn_abort(txn);
	return (n);
}

// stats_of: the stats database as text, one "key=value" line per counter
// (key's \0s shown as '|'), in key order.
static void
stats_of(msgpack_sbuffer *out)
{
	MDB_txn    *txn;
	MDB_cursor *c;
	MDB_val     k, v;
	out->size = 0;
	cr_assert_eq(mdb_txn_begin(ch_store_env(st), NULL, MDB_RDONLY, &txn), 0);
	cr_assert_eq(mdb_cursor_open(txn, ch_store_dbi(st, CH_DB_STATS), &c), 0);
	while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
		char   line[64];
		double x = 0;
		if (v.mv_size == sizeof(double)) {
			memcpy(&x, v.mv_data, sizeof(x));
		}
		for (size_t i = 0; i < k.mv_size; i++) {
			char ch = ((const char *) k.mv_data)[i];
			msgpack_sbuffer_write(out, ch == '\0' ? "|" : &ch, 1);
		}
		int n = snprintf(line, sizeof(line), "=%.17g\n", x);
		msgpack_sbuffer_write(out, line, (size_t) n);
	}
	mdb_cursor_close(c);
	mdb_txn_abort(txn);
}

// delta: the counters that moved from a to b (two stats_of texts), as
// "key+d" lines; the customer's own name is left out of the keys.
static void
delta(const msgpack_sbuffer *a, const msgpack_sbuffer *b, msgpack_sbuffer *out)
{
	out->size = 0;
	const char *pb = b->data, *eb = b->data + b->size;
	for (; pb < eb;) {
		const char *nl = memchr(pb, '\n', (size_t) (eb - pb));
		const char *eq = memrchr(pb, '=', (size_t) (nl - pb));
		double      vb = strtod(eq + 1, NULL), va = 0;
		// the same key in a
		const char *pa = a->data, *ea = a->data + a->size;
		while (pa < ea) {
			const char *nla = memchr(pa, '\n', (size_t) (ea - pa));
			const char *eqa = memrchr(pa, '=', (size_t) (nla - pa));
			if (eqa - pa == eq - pb && memcmp(pa, pb, (size_t) (eq - pb)) == 0) {
				va = strtod(eqa + 1, NULL);
				break;
			}
			pa = nla + 1;
		}
		if (vb != va) {
			char line[700];
			int  n = snprintf(line, sizeof(line), "%.*s%+.17g\n",
			     (int) (eq - pb), pb, vb - va);
			msgpack_sbuffer_write(out, line, (size_t) n);
		}
		pb = nl + 1;
	}
}

/* }====================================================== */

typedef struct {
	bool ok;
	char code[32];
	bool emits; // the reply carries pub messages
} verdict;

static void
job_done(ch_job *j)
{
	(void) j;
}

// judge: the reply must be one msgpack map with a boolean ok, and an
// error reply an error code.
static verdict
judge(const ch_job *j, const char *what)
{
	verdict          v = { 0 };
	msgpack_unpacked up;
	size_t           off = 0;
	msgpack_unpacked_init(&up);
	cr_assert_eq(__real_msgpack_unpack_next(&up, j->reply.data,
	                 j->reply.size, &off),
	    MSGPACK_UNPACK_SUCCESS, "%s: the reply is not msgpack (%zu bytes)",
	    what, j->reply.size);
	cr_assert_eq(off, j->reply.size, "%s: bytes after the reply", what);
	cr_assert_eq(up.data.type, MSGPACK_OBJECT_MAP, "%s: not a map", what);
	const msgpack_object *o = ch_mp_get(&up.data, "ok",
	    MSGPACK_OBJECT_BOOLEAN);
	cr_assert_not_null(o, "%s: a reply without ok", what);
	v.ok = o->via.boolean;
	if (!v.ok) {
		const msgpack_object *c = ch_mp_get(ch_mp_get(&up.data, "error",
		                                        MSGPACK_OBJECT_MAP),
		    "code", MSGPACK_OBJECT_STR);
		cr_assert_not_null(c, "%s: an error without a code", what);
		snprintf(v.code, sizeof(v.code), "%.*s", (int) c->via.str.size,
		    c->via.str.ptr);
		cr_assert_eq(j->err != CH_OK, true);
	}
	v.emits = j->emits.size > 0;
	msgpack_unpacked_destroy(&up);
	// the pub messages: u32 length, then "topic \0 msgpack map", exactly
	for (size_t at = 0; at < j->emits.size;) {
		uint32_t len;
		cr_assert_leq(at + 4, j->emits.size, "%s: a torn emit", what);
		memcpy(&len, j->emits.data + at, 4);
		cr_assert_leq(at + 4 + len, j->emits.size, "%s: an emit of %u "
		                                           "bytes past the end",
		    what, len);
		const char *m = j->emits.data + at + 4;
		const char *z = memchr(m, '\0', len);
		cr_assert_not_null(z, "%s: an emit without a topic", what);
		msgpack_unpacked_init(&up);
		off = 0;
		cr_assert_eq(__real_msgpack_unpack_next(&up, z + 1,
		                 (size_t) (m + len - z - 1), &off),
		    MSGPACK_UNPACK_SUCCESS, "%s: an emit is not msgpack", what);
		cr_assert_eq(up.data.type, MSGPACK_OBJECT_MAP);
		msgpack_unpacked_destroy(&up);
		at += 4 + len;
	}
	return (v);
}

// request runs one event (or decide) of the shop for customer c.
static verdict
request(enum ch_op op, const char *c, const char *type, const char *id,
    const char *what)
{
	bool was = oom.armed;
	disarm(); // the request is built without faults
	ch_req r = { 0 };
	r.op       = op;
	r.business = S("shop");
	r.customer = S(c);
	r.type     = S(type);
	r.id       = S(id ? id : "");
	r.channel  = S("web");
	r.decide   = true;
	r.record   = true;
	r.limit    = 3;
	// data {amount = 120, after = "1s", note = "n"}: for purchase and
	// remind_me
	msgpack_sbuffer db;
	msgpack_sbuffer_init(&db);
	msgpack_packer pk;
	msgpack_packer_init(&pk, &db, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 3);
	msgpack_pack_str_with_body(&pk, "amount", 6);
	msgpack_pack_int(&pk, 120);
	msgpack_pack_str_with_body(&pk, "after", 5);
	msgpack_pack_str_with_body(&pk, "1s", 2);
	msgpack_pack_str_with_body(&pk, "note", 4);
	msgpack_pack_str_with_body(&pk, "n", 1);
	msgpack_unpacked data;
	msgpack_unpacked_init(&data);
	cr_assert_eq(__real_msgpack_unpack_next(&data, db.data, db.size, NULL),
	    MSGPACK_UNPACK_SUCCESS);
	r.data = &data.data;
	ch_job j;
	ch_job_init(&j);
	j.req  = &r;
	j.done    = job_done;
	oom.armed = was;
	ch_engine_run_one(eng, &j);
	disarm(); // and judged without
	verdict v = judge(&j, what);
	oom.armed = was;
	ch_job_fini(&j);
	msgpack_unpacked_destroy(&data);
	msgpack_sbuffer_destroy(&db);
	clock_ms += 1000;
	return (v);
}

// The errors an allocation failure may answer with: the engine's own, or a
// rule stopped by it (Lua raises a memory error).
static bool
oom_code(const char *code)
{
	return (strcmp(code, "internal") == 0 || strcmp(code, "rule_limit") == 0 ||
	    strcmp(code, "rule_error") == 0);
}

typedef struct {
	uint64_t rounds, faults, acked, refused;
	uint64_t internal, rule_limit, rule_error; // the refusals' codes
} tally;

enum scenario { FIRST_EVENT, NEXT_EVENT, DECIDE, TIMER, COLD_ENGINE, STATS,
	FORGET, GET };

static const char *const scenario_names[] = { "a customer's first event",
	"an event with emits on a stored state", "a decision", "a timer firing",
	"a new engine's first event", "the stats op", "a forget", "a get" };

static int
stride(void)
{
	const char *s = getenv("CHOREO_K5_STRIDE");
	return (s != NULL && atoi(s) > 0 ? atoi(s) : 1);
}

// prepare makes the customer's history, without faults.
static void
prepare(enum scenario sc, const char *c, const char *what)
{
	if (sc == COLD_ENGINE) {
		engine_new(); // every buffer it keeps between events is empty
		return;
	}
	if (sc != FIRST_EVENT) {
		cr_assert(request(CH_OP_EVENT, c, "add_to_cart", NULL, what).ok);
	}
	if (sc == TIMER) {
		cr_assert(request(CH_OP_EVENT, c, "remind_me", NULL, what).ok);
		clock_ms += 2000; // due
	}
}

// act runs the scenario's request (a timer has no reply: ok).
static verdict
act(enum scenario sc, const char *c, const char *id, const char *what)
{
	verdict v = { .ok = true };
	switch (sc) {
	case FIRST_EVENT:
	case COLD_ENGINE:
		v = request(CH_OP_EVENT, c, "page_view", id, what);
		break;
	case NEXT_EVENT:
		v = request(CH_OP_EVENT, c, "purchase", id, what);
		break;
	case DECIDE:
		v = request(CH_OP_DECIDE, c, "", NULL, what);
		break;
	case TIMER:
		ch_engine_fire_timers(eng);
		break;
	case STATS:
		v = request(CH_OP_STATS, c, "", NULL, what);
		break;
	case FORGET:
		v = request(CH_OP_FORGET, c, "", NULL, what);
		break;
	case GET:
		v = request(CH_OP_GET, c, "", NULL, what);
		break;
	}
	return (v);
}

// one_round runs the scenario's request with the Nth allocation failing and
// checks the outcome against the same request, unfaulted, for another
// customer at the same (virtual) time; false once it completed without
// reaching N.
static bool
one_round(enum scenario sc, uint64_t n, bool persistent, tally *t)
{
	char c[64], id[64], ref[64], rid[64], what[160];
	snprintf(c, sizeof(c), "c-%d-%d-%llu", sc, persistent,
	    (unsigned long long) n);
	snprintf(id, sizeof(id), "id-%s", c);
	snprintf(ref, sizeof(ref), "r-%d-%d-%llu", sc, persistent,
	    (unsigned long long) n);
	snprintf(rid, sizeof(rid), "id-%s", ref);
	snprintf(what, sizeof(what), "%s, allocation %llu failing %s",
	    scenario_names[sc], (unsigned long long) n,
	    persistent ? "from then on" : "once");
	msgpack_sbuffer before, after, s0, s1, dref, d;
	msgpack_sbuffer_init(&before);
	msgpack_sbuffer_init(&after);
	msgpack_sbuffer_init(&s0);
	msgpack_sbuffer_init(&s1);
	msgpack_sbuffer_init(&dref);
	msgpack_sbuffer_init(&d);
	// the reference
	int64_t t0 = clock_ms;
	prepare(sc, ref, what);
	stats_of(&s0);
	cr_assert(act(sc, ref, rid, what).ok);
	stats_of(&s1);
	delta(&s0, &s1, &dref);
	// the same, with the fault
	clock_ms = t0;
	prepare(sc, c, what);
	snapshot(&before);
	stats_of(&s0);
	int64_t events    = counter_of(c, "events");
	int64_t reminders = counter_of(c, "reminders");
	if (getenv("CHOREO_K5_TRACE") != NULL) {
		fprintf(stderr, "K5 round: %s\n", what);
	}
	arm(n, persistent);
	verdict v = act(sc, c, id, what);
	disarm();
	bool hit = oom.failed > 0;
	t->rounds++;
	t->faults += hit;
	snapshot(&after);
	stats_of(&s1);
	delta(&s0, &s1, &d);
	bool same = before.size == after.size &&
	    memcmp(before.data, after.data, before.size) == 0;
	if (sc == TIMER) {
		// it fired (and counted) or it stays due
		int64_t r = counter_of(c, "reminders");
		cr_assert(r == reminders + 1 || (r == reminders && same),
		    "%s: reminders %lld -> %lld, store %s", what,
		    (long long) reminders, (long long) r,
		    same ? "unchanged" : "changed");
		v.ok = r == reminders + 1;
		if (!v.ok) {
			ch_engine_fire_timers(eng); // it fires now
			cr_assert_eq(counter_of(c, "reminders"), reminders + 1,
			    "%s: the timer did not fire after the fault", what);
		}
	}
	if (v.ok) {
		t->acked++;
		msgpack_sbuffer_write(&d, "", 1);
		msgpack_sbuffer_write(&dref, "", 1);
		cr_assert_str_eq(d.data, dref.data, "%s: acknowledged, but its "
		                                    "analytics differ from the "
		                                    "same event's without a "
		                                    "fault:\n%s\nwithout:\n%s",
		    what, d.data, dref.data);
		if (sc == FORGET) {
			cr_assert_eq(counter_of(c, "events"), 0,
			    "%s: acknowledged, and the customer is still there",
			    what);
		}
		if (sc == FIRST_EVENT || sc == NEXT_EVENT || sc == COLD_ENGINE) {
			cr_assert_eq(counter_of(c, "events"), events + 1,
			    "%s: acknowledged, not stored", what);
			verdict again = request(CH_OP_EVENT, c, "purchase", id, what);
			cr_assert(again.ok, "%s: acknowledged, and the same id "
			                    "again answers %s",
			    what, again.code);
			cr_assert_eq(counter_of(c, "events"), events + 1,
			    "%s: the id was not recorded with the event", what);
		}
	} else if (sc != TIMER) {
		t->refused++;
		cr_assert(oom_code(v.code), "%s: answered %s", what, v.code);
		t->internal += strcmp(v.code, "internal") == 0;
		t->rule_limit += strcmp(v.code, "rule_limit") == 0;
		t->rule_error += strcmp(v.code, "rule_error") == 0;
		cr_assert_not(v.emits, "%s: an error reply with emits", what);
		cr_assert(same, "%s: answered %s, but the store changed", what,
		    v.code);
	} else {
		t->refused++;
	}
	// the engine serves the customer's next event normally
	int64_t now = counter_of(c, "events");
	cr_assert(request(CH_OP_EVENT, c, "page_view", NULL, what).ok,
	    "%s: the next event failed", what);
	cr_assert_eq(counter_of(c, "events"), now + 1);
	msgpack_sbuffer_destroy(&before);
	msgpack_sbuffer_destroy(&after);
	msgpack_sbuffer_destroy(&s0);
	msgpack_sbuffer_destroy(&s1);
	msgpack_sbuffer_destroy(&dref);
	msgpack_sbuffer_destroy(&d);
	return (hit);
}

static void
loop(enum scenario sc)
{
	tally t = { 0 };
	int   s = stride();
	for (int persistent = 0; persistent < 2; persistent++) {
		uint64_t n = 1;
		while (one_round(sc, n, persistent, &t)) {
			n += (uint64_t) s;
			cr_assert_lt(n, 1000000, "the loop does not end");
		}
	}
	fprintf(stderr,
	    "K5 %s: %llu rounds, %llu allocation failures survived: %llu "
	    "acknowledged and stored, %llu refused with nothing stored "
	    "(internal %llu, rule_limit %llu, rule_error %llu)\n",
	    scenario_names[sc], (unsigned long long) t.rounds,
	    (unsigned long long) t.faults, (unsigned long long) t.acked,
	    (unsigned long long) t.refused, (unsigned long long) t.internal,
	    (unsigned long long) t.rule_limit,
	    (unsigned long long) t.rule_error);
}

Test(oom, a_first_event)
{
	loop(FIRST_EVENT);
}

Test(oom, an_event_with_emits)
{
	loop(NEXT_EVENT);
}

Test(oom, a_decision)
{
	loop(DECIDE);
}

Test(oom, a_timer)
{
	loop(TIMER);
}

Test(oom, a_new_engines_first_event)
{
	loop(COLD_ENGINE);
}

Test(oom, the_stats_op)
{
	loop(STATS);
}

Test(oom, a_forget)
{
	loop(FORGET);
}

Test(oom, a_get)
{
	loop(GET);
}

// choreo — the engine. See engine.h.
#include "engine.h"

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../lua/conv.h"
#include "../lua/rules.h"
#include "../lua/running.h"
#include "err.h"
#include "log.h"
#include "metrics.h"

// How often the engine thread clears the reader slots of dead processes.
#define CH_READER_CHECK_MS 1000

// Growing a store's map unmaps its memory and maps it again
// (mdb_env_set_mapsize), which LMDB allows only while no transaction of the
// process is open on that store — yet the stats op reads every shard's
// store from shard 0's thread. A growth takes this lock for writing, those
// reads take it for reading.
static pthread_rwlock_t grow_lock = PTHREAD_RWLOCK_INITIALIZER;

static int
grow(ch_store *s)
{
	pthread_rwlock_wrlock(&grow_lock);
	int rc = ch_store_grow(s);
	pthread_rwlock_unlock(&grow_lock);
	return (rc);
}

struct ch_engine {
	ch_engine_opts  o;
	ch_rules       *rules;
	pthread_t       thread;
	bool            started;
	pthread_mutex_t mu;
	pthread_cond_t  cv;
	ch_job         *head, *tail;
	int             depth;
	bool            stopping;
	ch_swap        *pending; // a rule set handed over by the reloader
	pthread_cond_t  swap_cv;
	msgpack_sbuffer state; // scratch: a customer's new state
	msgpack_sbuffer tmp;   // scratch
	struct timer_slot *timers; // CH_TIMER_BATCH slots for fire_timers
	msgpack_sbuffer    ev_stats; // the running event's analytics deltas
	bool               dead;     // its store is dead: restarting
	const char        *batch_why; // why the running batch failed, or NULL
	struct stat_map {
		struct stat_ent *t;
		uint32_t         cap, n;
	} stats; // the batch's analytics deltas, by stats key
};

// An analytics counter of the batch: key = business \0 counter name (the
// business has no NUL, so the first one ends it; the name's own NULs
// separate its fields, see stat in lua/prelude.lua).
typedef struct stat_ent {
	char    *key; // NULL: free slot
	uint32_t klen;
	double   v;
} stat_ent;

// A timer being fired: a copy of its key and value (LMDB's pages change
// under writes), the request made of them, and its job.
typedef struct timer_slot {
	ch_job           job;
	ch_req           req;
	msgpack_sbuffer  val;
	msgpack_unpacked up;
	char             key[CH_TIMER_KEY_MAX];
	size_t           klen;
} timer_slot;

static bool stat_merge(ch_engine *e, ch_str biz);
static bool stat_add(struct stat_map *m, ch_str biz, const char *name,
    uint32_t nl, double v);
static int  stat_flush(ch_engine *e, MDB_txn *txn);
static void stat_clear(struct stat_map *m);
static void run_stats(ch_engine *e, ch_job *j);

static int64_t
real_clock(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ((int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

static uint64_t
mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000);
}

// The reply of a job when even its error cannot be packed for want of
// memory: {ok = false, error = {code = "internal", message = "out of
// memory"}}, copied into the room ch_job_init sets aside for it.
static const char oom_reply[] = "\x82\xa2ok\xc2\xa5" "error\x82\xa4" "code"
                                "\xa8internal\xa7message\xad" "out of memory";
#define REPLY_ROOM 64
static const char OOM_WHY[] = "the server ran out of memory; nothing was "
                              "applied";

void
ch_job_init(ch_job *j)
{
	memset(j, 0, sizeof(*j));
	msgpack_sbuffer_init(&j->reply);
	msgpack_sbuffer_init(&j->emits);
	ch_sbuffer_room(&j->reply, REPLY_ROOM); // reply_err tries again if need be
}

void
ch_job_fini(ch_job *j)
{
	msgpack_sbuffer_destroy(&j->reply);
	msgpack_sbuffer_destroy(&j->emits);
}

int
ch_mp_map_reheader(msgpack_sbuffer *out, const void *src, size_t len,
    uint32_t extra)
{
	const uint8_t *p = src;
	uint32_t       n;
	size_t         h;
	if (len >= 1 && (p[0] & 0xf0) == 0x80) {
		n = p[0] & 0x0f, h = 1;
	} else if (len >= 3 && p[0] == 0xde) {
		n = (uint32_t) p[1] << 8 | p[2], h = 3;
	} else if (len >= 5 && p[0] == 0xdf) {
		n = (uint32_t) p[1] << 24 | (uint32_t) p[2] << 16 |
		    (uint32_t) p[3] << 8 | p[4];
		h = 5;
	} else {
		return (CH_EINTERNAL);
	}
	msgpack_packer pk;
	msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, n + extra);
	msgpack_sbuffer_write(out, (const char *) p + h, len - h);
	return (CH_OK);
}

/*
** {======================================================
** Replies
** =======================================================
*/

static void
reply_err(ch_job *j, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
reply_err(ch_job *j, int err, const char *fmt, ...)
{
	char    msg[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	j->reply.size = 0;
	j->emits.size = 0;
	j->err        = err;
	// the map, its keys and the code take less than 64 bytes: with room
	// for them and the message (escaped where it is not UTF-8), packing
	// cannot fail half-way
	if (ch_sbuffer_room(&j->reply, 64 + ch_pack_strn_len(msg, strlen(msg))) != 0) {
		// no memory for it: the fixed reply, in the room set aside
		if (ch_sbuffer_room(&j->reply, sizeof(oom_reply)) == 0) {
			memcpy(j->reply.data, oom_reply, sizeof(oom_reply) - 1);
			j->reply.size = sizeof(oom_reply) - 1;
		}
		j->err = CH_EINTERNAL;
		return;
	}
	msgpack_packer pk;
	msgpack_packer_init(&pk, &j->reply, msgpack_sbuffer_write);
	ch_pack_error(&pk, err, msg);
}

static void
reply_ok(ch_job *j)
{
	j->reply.size = 0;
	j->err        = CH_OK;
	msgpack_packer pk;
	msgpack_packer_init(&pk, &j->reply, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	ch_pack_str(&pk, "ok");
	msgpack_pack_true(&pk);
}

bool
ch_job_reply_fits(ch_job *j)
{
	size_t n = j->reply.size;
	if (j->reply_budget == NULL) {
		return (j->reply_limit == 0 || n <= j->reply_limit);
	}
	if (n <= CH_REPLY_RESERVE) {
		return (true);
	}
	size_t need = n - CH_REPLY_RESERVE;
	size_t have = atomic_load(j->reply_budget);
	while (have >= need) {
		if (atomic_compare_exchange_weak(j->reply_budget, &have,
		        have - need)) {
			j->reply_taken += need;
			return (true);
		}
	}
	return (false);
}

// reply_give_back returns what a job took from its batch's budget, before
// it runs again (a batch replayed after the map grew takes afresh).
static void
reply_give_back(ch_job *j)
{
	if (j->reply_budget != NULL && j->reply_taken > 0) {
		atomic_fetch_add(j->reply_budget, j->reply_taken);
		j->reply_taken = 0;
	}
}

void
ch_job_reply_too_large(ch_job *j, const char *what, size_t size,
    bool rolled_back)
{
	const char *after = rolled_back ? ": the event was rolled back, nothing "
	                                  "applied"
	                                : "";
	if (j->reply_budget != NULL) {
		reply_err(j, CH_EREPLYTOOLARGE,
		    "%s would be %zu bytes, more than is left of the batch's "
		    "reply under --max-message%s",
		    what, size, after);
	} else {
		reply_err(j, CH_EREPLYTOOLARGE,
		    "%s would be %zu bytes, more than --max-message allows "
		    "(%zu)%s",
		    what, size, j->reply_limit, after);
	}
}

// emits_fit: whether every message the event emits fits --max-message; if
// not, *big is the size of the first that does not.
static bool
emits_fit(const ch_engine *e, const ch_job *j, size_t *big)
{
	size_t off = 0;
	while (e->o.max_message > 0 && off + 4 <= j->emits.size) {
		uint32_t len;
		memcpy(&len, j->emits.data + off, 4);
		if (len > e->o.max_message) {
			*big = len;
			return (false);
		}
		off += 4 + len;
	}
	return (true);
}

#define BIZ_FMT "%.*s"
#define BIZ_ARG(s) (int) (s).n, (s).p

/* }====================================================== */

/*
** {======================================================
** Running one job inside the batch's transaction
** =======================================================
*/

// Each run_* returns CH_OK once the job's reply is set (an error reply
// included), or CH_ESTORAGEFULL when the map is full and the whole batch
// must be replayed after growing it.

static ch_biz *
biz_or_reply(ch_engine *e, ch_job *j)
{
	ch_biz *b = ch_rules_find(e->rules, j->req->business);
	if (b == NULL) {
		reply_err(j, CH_EUNKNOWNBUSINESS,
		    "no rule set is loaded for business '" BIZ_FMT "'",
		    BIZ_ARG(j->req->business));
		return (NULL);
	}
	// forget is an admin op when the daemon has an admin token
	bool admin = j->req->op == CH_OP_FORGET && e->o.admin_token != NULL;
	if (admin && !ch_token_ok(e->o.admin_token, j->req->token)) {
		reply_err(j, CH_EUNAUTHORIZED, "forget needs the admin token");
		return (NULL);
	}
	// a timer was set by the business's own rules: no token to check
	if (!admin && j->req->timer.n == 0 &&
	    !ch_biz_authorized(b, j->req->token)) {
		reply_err(j, CH_EUNAUTHORIZED,
		    "business '" BIZ_FMT "' needs its token (field 'token')",
		    BIZ_ARG(j->req->business));
		return (NULL);
	}
	return (b);
}

static int
store_failed(ch_job *j, MDB_txn *txn, int rc)
{
	ch_rules_model_rollback();
	if (txn != NULL) {
		ch_store_abort(txn);
	}
	if (rc == CH_ESTORAGEFULL) {
		return (rc);
	}
	reply_err(j, CH_EINTERNAL, "the store failed; see the server log");
	return (CH_OK);
}

static int
run_rules(ch_engine *e, ch_job *j, MDB_txn *parent, int64_t now)
{
	const ch_req *r   = j->req;
	ch_store     *s   = e->o.store;
	MDB_txn      *txn = NULL;
	char          ckey[64 + 1 + 256], dkey[64 + 1 + 128];
	size_t        cklen, dklen = 0;
	MDB_val       v;
	int           rc;
	ch_biz       *b = biz_or_reply(e, j);

	if (b == NULL) {
		return (CH_OK);
	}
	if ((rc = ch_store_begin(s, parent, &txn)) != CH_OK) {
		return (store_failed(j, NULL, rc));
	}
	if (r->op == CH_OP_EVENT && r->id.n > 0) {
		dklen = ch_store_key(dkey, r->business, r->id);
		rc    = ch_store_get(s, txn, CH_DB_DEDUP, dkey, dklen, &v);
		if (rc == CH_OK && v.mv_size >= 8) {
			int64_t at;
			memcpy(&at, v.mv_data, 8);
			if (now - at < e->o.dedup_window_ms) {
				j->reply.size = 0;
				j->err        = CH_OK;
				if (ch_mp_map_reheader(&j->reply,
				        (char *) v.mv_data + 8, v.mv_size - 8,
				        1) != CH_OK) {
					ch_store_abort(txn);
					reply_err(j, CH_EINTERNAL,
					    "a dedup record is damaged");
					return (CH_OK);
				}
				msgpack_packer pk;
				msgpack_packer_init(&pk, &j->reply, msgpack_sbuffer_write);
				ch_pack_str(&pk, "duplicate");
				msgpack_pack_true(&pk);
				ch_store_abort(txn);
				j->duplicate = true;
				CH_COUNT(duplicates, 1);
				return (CH_OK);
			}
		} else if (rc != CH_ENOTFOUND && rc != CH_OK) {
			return (store_failed(j, txn, rc));
		}
	}
	cklen = ch_store_key(ckey, r->business, r->customer);
	rc    = ch_store_get(s, txn, CH_DB_CUSTOMERS, ckey, cklen, &v);
	if (rc != CH_OK && rc != CH_ENOTFOUND) {
		return (store_failed(j, txn, rc));
	}
	ch_rule_out out;
	e->state.size  = 0;
	j->reply.size  = 0;
	j->emits.size  = 0;
	out.store      = s;
	out.txn        = txn;
	out.state      = &e->state;
	out.reply      = &j->reply;
	out.emits      = &j->emits;
	out.errmsg[0]  = '\0';
	out.nactions   = 0;
	e->ev_stats.size = 0;
	out.stats      = &e->ev_stats;
	const void *st = rc == CH_OK ? v.mv_data : NULL;
	size_t      sl = rc == CH_OK ? v.mv_size : 0;
	rc             = r->op == CH_OP_EVENT
	                ? ch_biz_event(b, r, st, sl, now, &out)
	                : ch_biz_decide(b, r, st, sl, now, &out);
	if (rc != CH_OK) {
		ch_rules_model_rollback();
	}
	if (rc == CH_ESTORAGEFULL ||
	    (rc == CH_EINTERNAL && out.store_err != CH_OK)) {
		return (store_failed(j, txn, rc));
	}
	if (rc != CH_OK) { // a rule's error, or out of memory
		ch_store_abort(txn);
		reply_err(j, rc, "%s", out.errmsg);
		return (CH_OK);
	}
	j->err      = CH_OK;
	j->nactions = out.nactions;
	// a reply the client cannot receive would be resent on every
	// reconnect, and applied each time: it is refused, nothing applied
	size_t big = 0;
	if (!emits_fit(e, j, &big) || !ch_job_reply_fits(j)) {
		const char *what = big > 0 ? "a message the rules emitted"
		                           : "the reply";
		size_t      size = big > 0 ? big : j->reply.size;
		ch_rules_model_rollback();
		ch_store_abort(txn);
		ch_job_reply_too_large(j, what, size, true);
		return (CH_OK);
	}
	if (e->state.size > 0 &&
	    (rc = ch_store_put(s, txn, CH_DB_CUSTOMERS, ckey, cklen,
	         e->state.data, e->state.size)) != CH_OK) {
		return (store_failed(j, txn, rc));
	}
	if (dklen > 0) {
		e->tmp.size = 0;
		if (ch_sbuffer_room(&e->tmp, 8 + j->reply.size) != 0) {
			// no room to copy the reply into the dedup record: the
			// event is refused rather than stored with half of it
			ch_rules_model_rollback();
			ch_store_abort(txn);
			reply_err(j, CH_EINTERNAL, "%s", OOM_WHY);
			return (CH_OK);
		}
		msgpack_sbuffer_write(&e->tmp, (const char *) &now, 8);
		msgpack_sbuffer_write(&e->tmp, j->reply.data, j->reply.size);
		if ((rc = ch_store_put(s, txn, CH_DB_DEDUP, dkey, dklen,
		         e->tmp.data, e->tmp.size)) != CH_OK) {
			return (store_failed(j, txn, rc));
		}
		// and in time order, for sweep_dedup to find it when it expires
		char akey[8 + sizeof(dkey)];
		ch_be64_put(akey, now);
		memcpy(akey + 8, dkey, dklen);
		if ((rc = ch_store_put(s, txn, CH_DB_DEDUP_AGE, akey, 8 + dklen,
		         "", 0)) != CH_OK) {
			return (store_failed(j, txn, rc));
		}
	}
	if ((rc = ch_store_commit(s, txn)) != CH_OK) {
		return (store_failed(j, NULL, rc));
	}
	// only now: the event is in the batch. Without its counts the batch
	// would commit it half: the batch fails whole instead.
	if (!stat_merge(e, r->business)) {
		e->batch_why = OOM_WHY;
		return (CH_EINTERNAL);
	}
	return (CH_OK);
}

// prescan_stored: a value the store holds — which a damaged disk or an old
// bug may have left in any shape — is whole and sane enough for msgpack-c
// to unpack (which allocates whatever a header claims, and reads at most
// CH_MP_MAX_DEPTH levels: what nests deeper is damaged to it).
static bool
prescan_stored(const void *p, size_t len, int depth)
{
	const char *why;
	return (ch_mp_prescan(p, len, depth, &why, NULL) == CH_OK);
}

// state_ok: the stored state is one map, as the rules write it, that a
// client's msgpack-c can read inside the get reply's map.
static bool
state_ok(const MDB_val *v)
{
	const unsigned char *p = v->mv_data;
	return (v->mv_size > 0 &&
	    ((p[0] & 0xf0) == 0x80 || p[0] == 0xde || p[0] == 0xdf) &&
	    prescan_stored(v->mv_data, v->mv_size, CH_MP_MAX_DEPTH - 1));
}

static int
run_get(ch_engine *e, ch_job *j, MDB_txn *parent)
{
	const ch_req *r = j->req;
	char          key[64 + 1 + 256];
	MDB_val       v;
	if (biz_or_reply(e, j) == NULL) {
		return (CH_OK);
	}
	size_t klen = ch_store_key(key, r->business, r->customer);
	int rc = ch_store_get(e->o.store, parent, CH_DB_CUSTOMERS, key, klen, &v);
	if (rc == CH_ENOTFOUND) {
		reply_err(j, CH_ENOTFOUND,
		    "business '" BIZ_FMT "' has no customer '" BIZ_FMT
		    "' (never seen, or forgotten)",
		    BIZ_ARG(r->business), BIZ_ARG(r->customer));
		return (CH_OK);
	}
	if (rc != CH_OK) {
		return (store_failed(j, NULL, rc));
	}
	if (!state_ok(&v)) {
		// copied into the reply as it is, it would make a malformed one
		ch_log_error("get: the stored state of " BIZ_FMT "/" BIZ_FMT
		             " is damaged (%zu bytes)",
		    BIZ_ARG(r->business), BIZ_ARG(r->customer), v.mv_size);
		reply_err(j, CH_EINTERNAL,
		    "the stored state of customer '" BIZ_FMT "' is damaged",
		    BIZ_ARG(r->customer));
		return (CH_OK);
	}
	j->reply.size = 0;
	j->err        = CH_OK;
	// the map's head takes 16 bytes: with the room made first, no write
	// below can fail half-way
	if (ch_sbuffer_room(&j->reply, 16 + v.mv_size) != 0) {
		reply_err(j, CH_EINTERNAL, "the server ran out of memory");
		return (CH_OK);
	}
	msgpack_packer pk;
	msgpack_packer_init(&pk, &j->reply, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 2);
	ch_pack_str(&pk, "ok");
	msgpack_pack_true(&pk);
	ch_pack_str(&pk, "customer");
	msgpack_sbuffer_write(&j->reply, v.mv_data, v.mv_size);
	return (CH_OK);
}

// forget_stages takes a forgotten customer out of the analytics' "current"
// count of each stage it was in (the counts of what happened stay): the
// deltas go to e->ev_stats, as an event's do, and into the batch's counts
// only once the forget has committed. false: out of memory.
static bool
forget_stages(ch_engine *e, const msgpack_object *journeys)
{
	msgpack_packer pk;
	uint32_t       n = 0;
	for (uint32_t x = 0; x < journeys->via.map.size; x++) {
		const msgpack_object *js = &journeys->via.map.ptr[x].val;
		n += journeys->via.map.ptr[x].key.type == MSGPACK_OBJECT_STR &&
		    ch_mp_get(js, "stage", MSGPACK_OBJECT_STR) != NULL;
	}
	e->ev_stats.size = 0;
	msgpack_packer_init(&pk, &e->ev_stats, msgpack_sbuffer_write);
	if (n == 0) {
		return (true);
	}
	bool ok = msgpack_pack_array(&pk, (size_t) n * 2) == 0;
	for (uint32_t x = 0; ok && x < journeys->via.map.size; x++) {
		const msgpack_object *jn = &journeys->via.map.ptr[x].key;
		const msgpack_object *v  = ch_mp_get(&journeys->via.map.ptr[x].val,
		     "stage", MSGPACK_OBJECT_STR);
		if (jn->type != MSGPACK_OBJECT_STR || v == NULL) {
			continue;
		}
		char     name[400];
		uint32_t nl = (uint32_t) snprintf(name, sizeof(name),
		    "j%c%.*s%ccurrent%c%.*s", 0, (int) jn->via.str.size,
		    jn->via.str.ptr, 0, 0, (int) v->via.str.size,
		    v->via.str.ptr);
		// a name that long is not counted, as stat_add would drop it
		ok = msgpack_pack_str_with_body(&pk, name,
		         nl < sizeof(name) ? nl : 0) == 0 &&
		    msgpack_pack_double(&pk, nl < sizeof(name) ? -1 : 0) == 0;
	}
	return (ok);
}

// forget_timers deletes the customer's pending timers, listed in its state
// as timers = {name = due}, and readies the analytics' deltas.
static int
forget_timers(ch_engine *e, MDB_txn *txn, const ch_req *r, const MDB_val *st)
{
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	int rc = CH_OK;
	e->ev_stats.size = 0;
	if (!prescan_stored(st->mv_data, st->mv_size, CH_MP_MAX_DEPTH)) {
		msgpack_unpacked_destroy(&up);
		return (CH_OK); // a damaged state has no timers we can find
	}
	int ur = msgpack_unpack_next(&up, st->mv_data, st->mv_size, NULL);
	if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
		msgpack_unpacked_destroy(&up);
		return (CH_EINTERNAL); // no memory to find its timers
	}
	if (ur != MSGPACK_UNPACK_SUCCESS || up.data.type != MSGPACK_OBJECT_MAP) {
		msgpack_unpacked_destroy(&up);
		return (CH_OK); // a damaged state has no timers we can find
	}
	const msgpack_object *js = ch_mp_get(&up.data, "journeys",
	    MSGPACK_OBJECT_MAP);
	if (js != NULL && !forget_stages(e, js)) {
		rc = CH_EINTERNAL;
	}
	const msgpack_object *t = ch_mp_get(&up.data, "timers",
	    MSGPACK_OBJECT_MAP);
	if (t != NULL) {
		for (uint32_t x = 0; x < t->via.map.size && rc == CH_OK; x++) {
			const msgpack_object *name = &t->via.map.ptr[x].key;
			const msgpack_object *due  = &t->via.map.ptr[x].val;
			if (name->type != MSGPACK_OBJECT_STR ||
			    (due->type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
			        due->type != MSGPACK_OBJECT_FLOAT64)) {
				continue;
			}
			// a due no timer key can have (NaN, out of range)
			if (due->type == MSGPACK_OBJECT_FLOAT64 &&
			    !(due->via.f64 >= 0 && due->via.f64 < 0x1p63)) {
				continue;
			}
			int64_t d = due->type == MSGPACK_OBJECT_FLOAT64
			    ? (int64_t) due->via.f64
			    : (int64_t) due->via.u64;
			char    key[CH_TIMER_KEY_MAX];
			size_t  kl = ch_timer_key(key, sizeof(key), d,
			     r->business, r->customer,
			     (ch_str) { name->via.str.ptr, name->via.str.size });
			if (kl > 0) {
				rc = ch_store_del(e->o.store, txn, CH_DB_TIMERS,
				    key, kl);
				rc = rc == CH_ENOTFOUND ? CH_OK : rc;
			}
		}
	}
	msgpack_unpacked_destroy(&up);
	return (rc);
}

// run_forget erases the customer in a nested transaction of its own: all
// of it (state, timers, its stages' current counts) or, on any failure,
// none of it.
static int
run_forget(ch_engine *e, ch_job *j, MDB_txn *parent)
{
	const ch_req *r = j->req;
	ch_store     *s = e->o.store;
	char          key[64 + 1 + 256];
	MDB_txn      *txn;
	if (biz_or_reply(e, j) == NULL) {
		return (CH_OK);
	}
	int rc = ch_store_begin(s, parent, &txn);
	if (rc != CH_OK) {
		return (store_failed(j, NULL, rc));
	}
	size_t  klen = ch_store_key(key, r->business, r->customer);
	MDB_val v;
	rc = ch_store_get(s, txn, CH_DB_CUSTOMERS, key, klen, &v);
	if (rc == CH_OK && (rc = forget_timers(e, txn, r, &v)) == CH_OK) {
		rc = ch_store_del(s, txn, CH_DB_CUSTOMERS, key, klen);
	}
	if (rc == CH_ENOTFOUND) {
		ch_store_abort(txn);
		reply_err(j, CH_ENOTFOUND,
		    "business '" BIZ_FMT "' has no customer '" BIZ_FMT
		    "' (never seen, or forgotten)",
		    BIZ_ARG(r->business), BIZ_ARG(r->customer));
		return (CH_OK);
	}
	if (rc != CH_OK) {
		return (store_failed(j, txn, rc));
	}
	if ((rc = ch_store_commit(s, txn)) != CH_OK) {
		return (store_failed(j, NULL, rc));
	}
	// as for an event: without its counts the batch would commit it half
	if (!stat_merge(e, r->business)) {
		e->batch_why = OOM_WHY;
		return (CH_EINTERNAL);
	}
	reply_ok(j);
	return (CH_OK);
}

static void
run_rules_info(ch_engine *e, ch_job *j)
{
	j->reply.size = 0;
	j->err        = CH_OK;
	msgpack_packer pk;
	msgpack_packer_init(&pk, &j->reply, msgpack_sbuffer_write);
	if (j->req->history) {
		if (j->req->business.n == 0) {
			reply_err(j, CH_EBADREQ,
			    "field 'business' is required with history");
			return;
		}
		msgpack_pack_map(&pk, 3);
		ch_pack_str(&pk, "ok");
		msgpack_pack_true(&pk);
		ch_pack_str(&pk, "business");
		ch_pack_strn(&pk, j->req->business.p, j->req->business.n);
		ch_pack_str(&pk, "history");
		ch_rules_pack_history(e->o.store, e->rules, j->req->business, &pk);
		return;
	}
	if (ch_rules_pack_info(e->rules, j->req->business, &pk) != CH_OK) {
		reply_err(j, CH_EUNKNOWNBUSINESS,
		    "no rule set is known for business '" BIZ_FMT "'",
		    BIZ_ARG(j->req->business));
	}
}

static int
run_job(ch_engine *e, ch_job *j, MDB_txn *parent, int64_t now)
{
	int  rc    = CH_OK;
	bool rules = false; // run_rules checks its own reply's size
	j->nactions  = 0;
	j->duplicate = false;
	reply_give_back(j);
	switch (j->req->op) {
	case CH_OP_EVENT:
	case CH_OP_DECIDE:
		rc    = run_rules(e, j, parent, now);
		rules = true;
		break;
	case CH_OP_GET:
		rc = run_get(e, j, parent);
		break;
	case CH_OP_FORGET:
		rc = run_forget(e, j, parent);
		break;
	case CH_OP_RULES:
		run_rules_info(e, j);
		break;
	case CH_OP_PING:
		reply_ok(j);
		break;
	case CH_OP_STATS:
		run_stats(e, j);
		break;
	default:
		reply_err(j, CH_EBADREQ, "op '%s' is not served by an engine",
		    ch_op_name(j->req->op));
		break;
	}
	// replies that changed nothing: read-only ops, errors, duplicates
	if (rc == CH_OK && (!rules || j->err != CH_OK || j->duplicate) &&
	    !ch_job_reply_fits(j)) {
		ch_job_reply_too_large(j, "the reply", j->reply.size, false);
	}
	return (rc);
}

/* }====================================================== */

/*
** {======================================================
** Group commit
** =======================================================
*/

static void
finish(ch_engine *e, ch_job **jobs, int n)
{
	for (int i = 0; i < n; i++) {
		ch_job *j = jobs[i];
		if (j->err == CH_OK && j->req->op == CH_OP_EVENT &&
		    !j->duplicate) {
			CH_COUNT(events, 1);
		}
		if (j->err == CH_OK && j->nactions > 0) {
			CH_COUNT(decisions, (uint64_t) j->nactions);
		}
		if (j->err != CH_OK) {
			CH_COUNT(errors[ch_err_index(j->err)], 1);
		}
		// publish what the rules emitted, now that it is durable
		size_t off = 0;
		while (j->err == CH_OK && off + 4 <= j->emits.size) {
			uint32_t len;
			memcpy(&len, j->emits.data + off, 4);
			if (e->o.publish != NULL) {
				e->o.publish(e->o.publish_arg,
				    j->emits.data + off + 4, len);
			}
			CH_COUNT(emitted, 1);
			off += 4 + len;
		}
		j->done(j);
	}
}

// full_why: what a job is told when the store had no room for it.
static const char *
full_why(ch_engine *e)
{
	return ((ch_store_faults(e->o.store) & CH_STORE_DISK_FULL)
	        ? "the disk is full; nothing was applied"
	        : "the store is full (--max-size); nothing was applied");
}

// run_alone runs each job in its own transaction: the path once the map
// cannot grow any further, so that what still fits is applied.
static void
run_alone(ch_engine *e, ch_job **jobs, int n, int64_t now)
{
	for (int i = 0; i < n; i++) {
		MDB_txn *txn;
		int      rc = ch_store_begin(e->o.store, NULL, &txn);
		stat_clear(&e->stats);
		if (rc == CH_OK) {
			rc = run_job(e, jobs[i], txn, now);
			if (rc == CH_OK && jobs[i]->err == CH_OK) {
				rc = stat_flush(e, txn);
			}
			if (rc == CH_OK && jobs[i]->err == CH_OK) {
				rc = ch_store_commit(e->o.store, txn);
			} else {
				ch_store_abort(txn);
			}
		}
		if (rc == CH_ESTORAGEFULL) {
			reply_err(jobs[i], CH_ESTORAGEFULL, "%s", full_why(e));
		} else if (rc != CH_OK) {
			reply_err(jobs[i], CH_EINTERNAL,
			    "the store failed; see the server log");
		}
	}
}

/*
** {======================================================
** Analytics: counters summed per batch, written once per batch
** =======================================================
*/

static uint64_t
hash_bytes(const char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++) {
		h = (h ^ (unsigned char) p[i]) * 0x100000001b3ull;
	}
	return (h);
}

static stat_ent *
stat_slot(struct stat_map *m, const char *k, uint32_t kl)
{
	uint32_t i = (uint32_t) hash_bytes(k, kl) & (m->cap - 1);
	while (m->t[i].key != NULL &&
	    (m->t[i].klen != kl || memcmp(m->t[i].key, k, kl) != 0)) {
		i = (i + 1) & (m->cap - 1);
	}
	return (&m->t[i]);
}

static bool
stat_add(struct stat_map *m, ch_str biz, const char *name, uint32_t nl,
    double v)
{
	if ((m->n + 1) * 2 > m->cap) {
		uint32_t  cap = m->cap ? m->cap * 2 : 256;
		stat_ent *old = m->t;
		uint32_t  oc  = m->cap;
		if ((m->t = calloc(cap, sizeof(stat_ent))) == NULL) {
			m->t = old;
			return (false);
		}
		m->cap = cap;
		for (uint32_t i = 0; i < oc; i++) {
			if (old[i].key != NULL) {
				*stat_slot(m, old[i].key, old[i].klen) = old[i];
			}
		}
		free(old);
	}
	char key[512];
	if (biz.n + 1 + nl > sizeof(key)) {
		return (true); // a counter name that long is dropped
	}
	memcpy(key, biz.p, biz.n);
	key[biz.n] = '\0';
	memcpy(key + biz.n + 1, name, nl);
	uint32_t  kl = biz.n + 1 + nl;
	stat_ent *e  = stat_slot(m, key, kl);
	if (e->key == NULL) {
		if ((e->key = malloc(kl)) == NULL) {
			return (false);
		}
		memcpy(e->key, key, kl);
		e->klen = kl;
		e->v    = 0;
		m->n++;
	}
	e->v += v;
	return (true);
}

static void
stat_clear(struct stat_map *m)
{
	for (uint32_t i = 0; m->n > 0 && i < m->cap; i++) {
		if (m->t[i].key != NULL) {
			free(m->t[i].key);
			m->t[i].key = NULL;
			m->n--;
		}
	}
	m->n = 0;
}

// stat_merge adds the event's deltas ([name, delta, ...]) to the batch's:
// false when there was no memory to (some may be in, some not).
static bool
stat_merge(ch_engine *e, ch_str biz)
{
	if (e->ev_stats.size == 0) {
		return (true);
	}
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	bool done = msgpack_unpack_next(&up, e->ev_stats.data,
	                e->ev_stats.size, NULL) == MSGPACK_UNPACK_SUCCESS;
	if (done && up.data.type == MSGPACK_OBJECT_ARRAY) {
		const msgpack_object_array *a = &up.data.via.array;
		for (uint32_t i = 0; i + 1 < a->size && done; i += 2) {
			if (a->ptr[i].type == MSGPACK_OBJECT_STR &&
			    a->ptr[i + 1].type == MSGPACK_OBJECT_FLOAT64) {
				done = stat_add(&e->stats, biz,
				    a->ptr[i].via.str.ptr, a->ptr[i].via.str.size,
				    a->ptr[i + 1].via.f64);
			}
		}
	}
	msgpack_unpacked_destroy(&up);
	return (done);
}

// stat_flush writes the batch's counters into the stats database.
static int
stat_flush(ch_engine *e, MDB_txn *txn)
{
	int rc = CH_OK;
	for (uint32_t i = 0; i < e->stats.cap && rc == CH_OK; i++) {
		stat_ent *x = &e->stats.t[i];
		if (x->key == NULL || x->v == 0) {
			continue;
		}
		MDB_val v;
		double  cur = 0;
		rc = ch_store_get(e->o.store, txn, CH_DB_STATS, x->key, x->klen,
		    &v);
		if (rc == CH_OK && v.mv_size == sizeof(double)) {
			memcpy(&cur, v.mv_data, sizeof(double));
		} else if (rc != CH_OK && rc != CH_ENOTFOUND) {
			break;
		}
		cur += x->v;
		rc = ch_store_put(e->o.store, txn, CH_DB_STATS, x->key, x->klen,
		    &cur, sizeof(cur));
	}
	stat_clear(&e->stats);
	return (rc);
}

// run_stats answers the stats op from every shard's counters.
static void
run_stats(ch_engine *e, ch_job *j)
{
	ch_biz *b = biz_or_reply(e, j);
	if (b == NULL) {
		return;
	}
	const ch_req    *r = j->req;
	msgpack_sbuffer  flat;
	msgpack_sbuffer  items;
	msgpack_packer   pk;
	uint32_t         n = 0;
	msgpack_sbuffer_init(&flat);
	msgpack_sbuffer_init(&items);
	msgpack_packer_init(&pk, &items, msgpack_sbuffer_write);
	char   prefix[70];
	size_t plen = (size_t) r->business.n + 1;
	memcpy(prefix, r->business.p, r->business.n);
	prefix[r->business.n] = '\0';
	ch_store **stores  = e->o.all_stores ? e->o.all_stores : &e->o.store;
	int        nstores = e->o.all_stores ? e->o.nstores : 1;
	pthread_rwlock_rdlock(&grow_lock); // no map moves under the reads
	for (int s = 0; s < nstores; s++) {
		MDB_txn    *txn;
		MDB_cursor *cur;
		if (stores[s] == NULL ||
		    mdb_txn_begin(ch_store_env(stores[s]), NULL, MDB_RDONLY,
		        &txn) != 0) {
			continue;
		}
		if (mdb_cursor_open(txn, ch_store_dbi(stores[s], CH_DB_STATS),
		        &cur) == 0) {
			MDB_val k = { plen, prefix }, v;
			int     rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
			while (rc == 0 && k.mv_size >= plen &&
			    memcmp(k.mv_data, prefix, plen) == 0) {
				double x = 0;
				if (v.mv_size == sizeof(double)) {
					memcpy(&x, v.mv_data, sizeof(double));
				}
				msgpack_pack_str_with_body(&pk,
				    (const char *) k.mv_data + plen,
				    k.mv_size - plen);
				msgpack_pack_double(&pk, x);
				n++;
				rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
			}
			mdb_cursor_close(cur);
		}
		mdb_txn_abort(txn);
	}
	pthread_rwlock_unlock(&grow_lock);
	msgpack_packer_init(&pk, &flat, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, (size_t) n * 2);
	msgpack_sbuffer_write(&flat, items.data, items.size);
	char err[512] = "";
	j->reply.size = 0;
	int rc = ch_biz_stats(b, flat.data, flat.size, r->journey, &j->reply,
	    err, sizeof(err));
	if (rc != CH_OK) {
		reply_err(j, rc, "%s", err);
	} else {
		j->err = CH_OK;
	}
	msgpack_sbuffer_destroy(&flat);
	msgpack_sbuffer_destroy(&items);
}

/* }====================================================== */

static void
timer_done(ch_job *j)
{
	(void) j; // nobody waits for a timer's reply
}

// timer_parse fills t->req from t->key and t->val: business \0 customer \0
// name, and {type, data}. 1, 0 when the record is damaged, -1 when there
// was no memory to read it. None of the three holds a NUL (the codec
// refuses one in a business or customer, the prelude in a timer's name),
// so a key with a third NUL was written before that was so and reads two
// ways: it is damaged, dropped, never run on a guess.
static int
timer_parse(timer_slot *t)
{
	const char *p = t->key + 8, *end = t->key + t->klen;
	const char *z1 = memchr(p, '\0', (size_t) (end - p));
	const char *z2 = z1 ? memchr(z1 + 1, '\0', (size_t) (end - z1 - 1))
	                    : NULL;
	if (z2 == NULL || z1 == p || z2 == z1 + 1 || z2 + 1 == end ||
	    memchr(z2 + 1, '\0', (size_t) (end - z2 - 1)) != NULL) {
		return (0);
	}
	memset(&t->req, 0, sizeof(t->req));
	t->req.op       = CH_OP_EVENT;
	t->req.business = (ch_str) { p, (uint32_t) (z1 - p) };
	t->req.customer = (ch_str) { z1 + 1, (uint32_t) (z2 - z1 - 1) };
	t->req.timer    = (ch_str) { z2 + 1, (uint32_t) (end - z2 - 1) };
	t->req.record   = true;
	t->req.limit    = 3;
	msgpack_unpacked_destroy(&t->up);
	msgpack_unpacked_init(&t->up);
	if (!prescan_stored(t->val.data, t->val.size, CH_MP_MAX_DEPTH)) {
		return (0);
	}
	msgpack_unpack_return u = msgpack_unpack_next(&t->up, t->val.data,
	    t->val.size, NULL);
	if (u == MSGPACK_UNPACK_NOMEM_ERROR) {
		return (-1);
	}
	if (u != MSGPACK_UNPACK_SUCCESS || t->up.data.type != MSGPACK_OBJECT_MAP) {
		return (0);
	}
	const msgpack_object *type = ch_mp_get(&t->up.data, "type",
	    MSGPACK_OBJECT_STR);
	if (type != NULL) {
		t->req.type = (ch_str) { type->via.str.ptr, type->via.str.size };
	}
	t->req.data = ch_mp_get(&t->up.data, "data", MSGPACK_OBJECT_MAP);
	return (t->req.type.n > 0);
}

// reply_message: the error message of a packed error reply, for the log.
static void
reply_message(const ch_job *j, char *out, size_t cap)
{
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	snprintf(out, cap, "%s", ch_err_code(j->err));
	if (msgpack_unpack_next(&up, j->reply.data, j->reply.size, NULL) ==
	    MSGPACK_UNPACK_SUCCESS) {
		const msgpack_object *m = ch_mp_get(ch_mp_get(&up.data, "error",
		                                        MSGPACK_OBJECT_MAP),
		    "message", MSGPACK_OBJECT_STR);
		if (m != NULL) {
			snprintf(out, cap, "%s: %.*s", ch_err_code(j->err),
			    (int) m->via.str.size, m->via.str.ptr);
		}
	}
	msgpack_unpacked_destroy(&up);
}

static void finish(ch_engine *e, ch_job **jobs, int n);

int
ch_engine_fire_timers(ch_engine *e)
{
	int64_t     now = e->o.clock ? e->o.clock() : real_clock();
	ch_store   *s   = e->o.store;
	MDB_txn    *txn;
	MDB_cursor *cur;
	MDB_val     k, v;
	int         n = 0, rc;
	if (e->timers == NULL || ch_store_begin(s, NULL, &txn) != CH_OK) {
		return (0);
	}
	stat_clear(&e->stats);
	if (mdb_cursor_open(txn, ch_store_dbi(s, CH_DB_TIMERS), &cur) != 0) {
		ch_store_abort(txn);
		return (0);
	}
	int op = MDB_FIRST, damaged = 0;
	while (n < CH_TIMER_BATCH && mdb_cursor_get(cur, &k, &v, op) == 0) {
		op = MDB_NEXT;
		if (k.mv_size >= 8 && ch_be64_get(k.mv_data) > now) {
			break;
		}
		timer_slot *t = &e->timers[n];
		if (k.mv_size < 8 || k.mv_size > sizeof(t->key)) {
			damaged++;
			mdb_cursor_del(cur, 0); // MDB_NEXT then reads what followed
			continue;
		}
		t->val.size = 0;
		if (ch_sbuffer_room(&t->val, v.mv_size) != 0) {
			break; // out of memory: this one and the rest wait
		}
		memcpy(t->key, k.mv_data, k.mv_size);
		t->klen = k.mv_size;
		msgpack_sbuffer_write(&t->val, v.mv_data, v.mv_size);
		n++;
	}
	mdb_cursor_close(cur);
	int fired = 0;
	rc        = CH_OK;
	ch_job *jobs[CH_TIMER_BATCH];
	for (int i = 0; i < n && rc == CH_OK; i++) {
		timer_slot *t = &e->timers[i];
		// deleted in the transaction that runs it: a timer fires once,
		// even when its rule fails
		rc = ch_store_del(s, txn, CH_DB_TIMERS, t->key, t->klen);
		if (rc == CH_ENOTFOUND) {
			rc = CH_OK;
		}
		if (rc != CH_OK) {
			break;
		}
		int parsed = timer_parse(t);
		if (parsed < 0) {
			rc = CH_EINTERNAL; // out of memory: they stay due
			break;
		}
		if (parsed == 0) {
			damaged++;
			continue;
		}
		t->job.req  = &t->req;
		t->job.done = timer_done;
		t->job.err  = CH_OK;
		rc          = run_job(e, &t->job, txn, now);
		if (rc == CH_OK && t->job.err == CH_EINTERNAL) {
			// the server failed, not the rule (the store, or out
			// of memory): the timers stay due, for the next tick
			rc = CH_EINTERNAL;
		}
		jobs[fired++] = &t->job;
	}
	if (rc != CH_OK) {
		// the store failed (or is full): nothing fired; they stay due
		ch_store_abort(txn);
		ch_rules_model_rollback();
		if (rc == CH_ESTORAGEFULL) {
			grow(s);
		}
		return (0);
	}
	if (n == 0 && damaged == 0) {
		ch_store_abort(txn); // nothing due: the usual case
		return (0);
	}
	if ((rc = stat_flush(e, txn)) != CH_OK) {
		ch_store_abort(txn);
		ch_rules_model_rollback();
		return (0);
	}
	if ((rc = ch_store_commit(s, txn)) != CH_OK) {
		ch_rules_model_rollback();
		return (0);
	}
	if (damaged > 0) {
		ch_log_warn("timers: dropped %d damaged timer record(s)", damaged);
	}
	for (int i = 0; i < fired; i++) {
		if (jobs[i]->err != CH_OK) {
			char m[600];
			reply_message(jobs[i], m, sizeof(m));
			ch_log_warn("timer '%.*s' of %.*s/%.*s failed: %s",
			    (int) jobs[i]->req->type.n, jobs[i]->req->type.p,
			    (int) jobs[i]->req->business.n,
			    jobs[i]->req->business.p,
			    (int) jobs[i]->req->customer.n,
			    jobs[i]->req->customer.p, m);
		}
	}
	CH_COUNT(timers_fired, (uint64_t) fired);
	finish(e, jobs, fired);
	return (n);
}

// next_due: the due time of the earliest timer, or INT64_MAX.
static int64_t
next_due(ch_engine *e)
{
	MDB_txn    *txn;
	MDB_cursor *cur;
	MDB_val     k, v;
	int64_t     due = INT64_MAX;
	if (mdb_txn_begin(ch_store_env(e->o.store), NULL, MDB_RDONLY, &txn) != 0) {
		return (due);
	}
	if (mdb_cursor_open(txn, ch_store_dbi(e->o.store, CH_DB_TIMERS),
	        &cur) == 0) {
		if (mdb_cursor_get(cur, &k, &v, MDB_FIRST) == 0 &&
		    k.mv_size >= 8) {
			due = ch_be64_get(k.mv_data);
		}
		mdb_cursor_close(cur);
	}
	mdb_txn_abort(txn);
	return (due);
}

void
ch_engine_run_timers_until(ch_engine *e, int64_t *vclock, int64_t target)
{
	for (int rounds = 0; rounds < 100000; rounds++) {
		int64_t due = next_due(e);
		if (due > target) {
			break;
		}
		if (due > *vclock) {
			*vclock = due;
		}
		if (ch_engine_fire_timers(e) == 0) {
			break; // nothing could fire (the store failed)
		}
	}
	if (target > *vclock) {
		*vclock = target;
	}
}

// sweep_dedup removes up to max dedup records older than the window, oldest
// first, in a nested transaction of the batch's: a failure only leaves them
// for the next batch. A record whose id was applied again since (a newer
// commit time) stays.
static void
sweep_dedup(ch_engine *e, MDB_txn *parent, int64_t now, int max)
{
	ch_store   *s = e->o.store;
	MDB_txn    *txn;
	MDB_cursor *cur;
	if (ch_store_begin(s, parent, &txn) != CH_OK) {
		return;
	}
	if (mdb_cursor_open(txn, ch_store_dbi(s, CH_DB_DEDUP_AGE), &cur) != 0) {
		ch_store_abort(txn);
		return;
	}
	MDB_dbi dedup  = ch_store_dbi(s, CH_DB_DEDUP);
	int64_t cutoff = now - e->o.dedup_window_ms;
	int     n = 0, rc = 0;
	MDB_val k, v;
	while (n < max && (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0) {
		if (k.mv_size < 8) {
			break;
		}
		int64_t at = ch_be64_get(k.mv_data);
		if (at >= cutoff) {
			break;
		}
		MDB_val dk = { k.mv_size - 8, (char *) k.mv_data + 8 }, dv;
		if (mdb_get(txn, dedup, &dk, &dv) == 0 && dv.mv_size >= 8) {
			int64_t stored;
			memcpy(&stored, dv.mv_data, 8);
			if (stored == at &&
			    (rc = mdb_del(txn, dedup, &dk, NULL)) != 0) {
				break;
			}
		}
		if ((rc = mdb_cursor_del(cur, 0)) != 0) {
			break;
		}
		n++;
	}
	mdb_cursor_close(cur);
	if ((rc != 0 && rc != MDB_NOTFOUND) || n == 0) {
		ch_store_abort(txn);
	} else if (ch_store_commit(s, txn) == CH_OK) { // frees txn either way
		CH_COUNT(dedup_expired, (uint64_t) n);
	}
}

static void
run_batch(ch_engine *e, ch_job **jobs, int n)
{
	int64_t  now = e->o.clock ? e->o.clock() : real_clock();
	MDB_txn *txn;
	int      rc;
	bool     retried = false;
	e->batch_why     = NULL;
	for (;;) {
		if ((rc = ch_store_begin(e->o.store, NULL, &txn)) != CH_OK) {
			break;
		}
		stat_clear(&e->stats);
		for (int i = 0; i < n && rc == CH_OK; i++) {
			rc = run_job(e, jobs[i], txn, now);
		}
		if (rc == CH_OK) {
			rc = stat_flush(e, txn);
		}
		if (rc == CH_OK) {
			sweep_dedup(e, txn, now, 2 * n + 16);
		}
		if (rc != CH_OK) {
			ch_store_abort(txn);
			ch_rules_model_rollback();
		} else {
			uint64_t t0 = mono_us();
			rc          = ch_store_commit(e->o.store, txn);
			CH_COUNT(commit_us, mono_us() - t0);
			if (rc != CH_OK) {
				ch_rules_model_rollback();
			}
		}
		unsigned f = ch_store_faults(e->o.store);
		if (rc == CH_OK || (f & CH_STORE_DEAD)) {
			break;
		}
		if ((f & CH_STORE_IO_ERROR) && !retried) {
			retried = true; // once more: an error may pass
			continue;
		}
		if (rc != CH_ESTORAGEFULL) {
			break;
		}
		// Every transaction of this store is closed: grow and replay.
		if (grow(e->o.store) != CH_OK) {
			run_alone(e, jobs, n, now);
			rc = CH_OK;
			break;
		}
		CH_COUNT(map_grows, 1);
	}
	if (rc != CH_OK) {
		bool full = ch_store_faults(e->o.store) & CH_STORE_DISK_FULL;
		for (int i = 0; i < n; i++) {
			reply_err(jobs[i], full ? CH_ESTORAGEFULL : CH_EINTERNAL,
			    "%s",
			    full           ? full_why(e)
			    : e->batch_why ? e->batch_why
			                   : "the store failed to commit; nothing "
			                     "was applied");
		}
	}
	CH_COUNT(batches, 1);
	CH_COUNT(batch_jobs, (uint64_t) n);
	finish(e, jobs, n);
	// the scratch keeps what a usual customer needs, not the largest one
	ch_sbuffer_trim(&e->state, 16 * CH_SBUFFER_KEEP);
	ch_sbuffer_trim(&e->tmp, 16 * CH_SBUFFER_KEEP);
}

// check_dead: LMDB refuses every transaction of a store whose meta page
// failed to write, until the environment is opened again. The engine
// process stops as on SIGTERM — every queued job answered, every reply
// sent — and serve then ends it by a signal, so that its supervisor starts
// a new one (crash-only).
static void
check_dead(ch_engine *e)
{
	if (!e->dead && (ch_store_faults(e->o.store) & CH_STORE_DEAD)) {
		e->dead = true;
		ch_log_error("engine: shard %d's store failed to write its meta "
		             "page and refuses every transaction: restarting",
		    e->o.shard);
		kill(getpid(), SIGTERM);
	}
}

// swap puts a freshly loaded rule set in service, between two batches: a
// rollback's stored version first, then the quarantine, then the old
// versions of businesses that failed; the versions go to the history.
static void
swap(ch_engine *e, ch_swap *sw)
{
	ch_rules *fresh = sw->fresh;
	sw->rc          = CH_OK;
	if (sw->rollback_business != NULL) {
		sw->rc = ch_rules_use_version(fresh, e->o.store, e->o.rules_dir,
		    sw->rollback_business, sw->rollback_version, sw->why,
		    sizeof(sw->why));
		if (sw->rc != CH_OK) {
			ch_rules_free(fresh); // nothing changes
			return;
		}
	}
	ch_rules_apply_quarantine(fresh, e->o.store, e->o.rules_dir);
	ch_rules_keep_serving(fresh, e->rules);
	ch_rules_record_versions(fresh, e->o.store);
	if (e->o.shard == 0 && e->o.publish != NULL) {
		ch_rules_publish_changes(fresh, e->rules, e->o.publish,
		    e->o.publish_arg);
	}
	ch_rules_free(e->rules);
	e->rules = fresh;
}

int
ch_engine_swap_rules(ch_engine *e, ch_swap *sw)
{
	pthread_mutex_lock(&e->mu);
	if (e->stopping) {
		pthread_mutex_unlock(&e->mu);
		ch_rules_free(sw->fresh); // going down: nothing to serve with it
		return (CH_EOVERLOADED);
	}
	if (!e->started) {
		pthread_mutex_unlock(&e->mu);
		swap(e, sw); // no engine thread (tools)
		return (sw->rc);
	}
	while (e->pending != NULL) {
		pthread_cond_wait(&e->swap_cv, &e->mu);
	}
	e->pending = sw;
	pthread_cond_signal(&e->cv);
	while (e->pending == sw) {
		pthread_cond_wait(&e->swap_cv, &e->mu);
	}
	pthread_mutex_unlock(&e->mu);
	return (sw->rc);
}

static void *
engine_main(void *arg)
{
	ch_engine *e   = arg;
	int        cap = e->o.batch_max;
	char       name[16];
	snprintf(name, sizeof(name), "choreo:eng%d", e->o.shard);
	pthread_setname_np(pthread_self(), name); // for top -H, perf, gdb
	ch_running_enter(e->o.shard);
	ch_job   **jobs = calloc((size_t) cap, sizeof(ch_job *));
	if (jobs == NULL) {
		ch_log_error("engine: out of memory");
		abort();
	}
	uint64_t next_timers = 0; // mono µs of the next look at the timers
	uint64_t next_readers = 0; // and for readers of dead processes
	for (;;) {
		if (mono_us() >= next_timers) {
			// due timers run as events, between batches; a full round
			// means more are due: look again at once
			int fired   = ch_engine_fire_timers(e);
			next_timers = fired == CH_TIMER_BATCH
			    ? 0
			    : mono_us() + CH_TIMER_TICK_MS * 1000;
			check_dead(e);
		}
		if (mono_us() >= next_readers) {
			// A process killed inside a read transaction (mdb_dump,
			// a backup) keeps its reader slot, and LMDB reuses no
			// page its snapshot can see: the file would grow with
			// every commit until the next start. Clear such slots as
			// LMDB asks, periodically.
			int dead = 0;
			mdb_reader_check(ch_store_env(e->o.store), &dead);
			if (dead > 0) {
				ch_log_warn("store: cleared %d stale reader slot(s)",
				    dead);
			}
			next_readers = mono_us() + CH_READER_CHECK_MS * 1000;
		}
		pthread_mutex_lock(&e->mu);
		while (e->head == NULL && !e->stopping && e->pending == NULL) {
			uint64_t        now_us = mono_us();
			if (now_us >= next_timers) {
				break;
			}
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			uint64_t wait_ns = (next_timers - now_us) * 1000 +
			    (uint64_t) ts.tv_nsec;
			ts.tv_sec += (time_t) (wait_ns / 1000000000u);
			ts.tv_nsec = (long) (wait_ns % 1000000000u);
			pthread_cond_timedwait(&e->cv, &e->mu, &ts);
		}
		if (e->head == NULL && !e->stopping && e->pending == NULL) {
			pthread_mutex_unlock(&e->mu);
			continue; // time for the timers
		}
		if (e->pending != NULL) {
			// between two batches: the events in flight ran on the
			// old version, the next ones run on the new
			ch_swap *sw = e->pending;
			pthread_mutex_unlock(&e->mu);
			swap(e, sw);
			pthread_mutex_lock(&e->mu);
			e->pending = NULL;
			pthread_cond_broadcast(&e->swap_cv);
			pthread_mutex_unlock(&e->mu);
			continue;
		}
		if (e->head == NULL) {
			pthread_mutex_unlock(&e->mu);
			break;
		}
		int n = 0;
		while (e->head != NULL && n < cap) {
			jobs[n++] = e->head;
			e->head   = e->head->next;
		}
		if (e->head == NULL) {
			e->tail = NULL;
		}
		e->depth -= n;
		pthread_mutex_unlock(&e->mu);
		atomic_fetch_sub(&ch_m.queue_depth, n);
		run_batch(e, jobs, n);
		check_dead(e);
	}
	free(jobs);
	ch_running_leave();
	return (NULL);
}

/* }====================================================== */

int
ch_engine_new(ch_engine **out, const ch_engine_opts *o)
{
	ch_engine *e = calloc(1, sizeof(*e));
	if (e == NULL) {
		return (CH_EINTERNAL);
	}
	e->o     = *o;
	e->rules = o->rules;
	if (e->o.batch_max <= 0) {
		e->o.batch_max = 256;
	}
	if (e->o.queue_cap <= 0) {
		e->o.queue_cap = 4096;
	}
	if (e->o.dedup_window_ms <= 0) {
		e->o.dedup_window_ms = 24 * 3600 * 1000;
	}
	pthread_mutex_init(&e->mu, NULL);
	pthread_cond_init(&e->cv, NULL);
	pthread_cond_init(&e->swap_cv, NULL);
	msgpack_sbuffer_init(&e->state);
	msgpack_sbuffer_init(&e->tmp);
	msgpack_sbuffer_init(&e->ev_stats);
	e->timers = calloc(CH_TIMER_BATCH, sizeof(timer_slot));
	for (int i = 0; e->timers != NULL && i < CH_TIMER_BATCH; i++) {
		ch_job_init(&e->timers[i].job);
		msgpack_sbuffer_init(&e->timers[i].val);
		msgpack_unpacked_init(&e->timers[i].up);
	}
	*out = e;
	return (CH_OK);
}

void
ch_engine_set_publish_arg(ch_engine *e, void *arg)
{
	e->o.publish_arg = arg;
}

int
ch_engine_run(ch_engine *e)
{
	if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
		return (CH_EINTERNAL);
	}
	e->started = true;
	return (CH_OK);
}

int
ch_engine_start(ch_engine **out, const ch_engine_opts *o)
{
	ch_engine *e;
	if (ch_engine_new(&e, o) != CH_OK) {
		return (CH_EINTERNAL);
	}
	if (ch_engine_run(e) != CH_OK) {
		ch_engine_free(e);
		return (CH_EINTERNAL);
	}
	*out = e;
	return (CH_OK);
}

int
ch_engine_submit(ch_engine *e, ch_job *j, bool force)
{
	j->next = NULL;
	pthread_mutex_lock(&e->mu);
	if ((!force && e->depth >= e->o.queue_cap) || e->stopping) {
		pthread_mutex_unlock(&e->mu);
		return (CH_EOVERLOADED);
	}
	if (e->tail != NULL) {
		e->tail->next = j;
	} else {
		e->head = j;
	}
	e->tail = j;
	e->depth++;
	pthread_cond_signal(&e->cv);
	pthread_mutex_unlock(&e->mu);
	atomic_fetch_add(&ch_m.queue_depth, 1);
	return (CH_OK);
}

void
ch_engine_run_one(ch_engine *e, ch_job *j)
{
	run_batch(e, &j, 1);
}

void
ch_engine_stop(ch_engine *e)
{
	if (e == NULL || !e->started) {
		return;
	}
	pthread_mutex_lock(&e->mu);
	e->stopping = true;
	pthread_cond_broadcast(&e->cv);
	pthread_mutex_unlock(&e->mu);
	pthread_join(e->thread, NULL);
	e->started = false;
}

void
ch_engine_free(ch_engine *e)
{
	if (e == NULL) {
		return;
	}
	ch_engine_stop(e);
	ch_rules_free(e->rules);
	msgpack_sbuffer_destroy(&e->state);
	msgpack_sbuffer_destroy(&e->tmp);
	for (int i = 0; e->timers != NULL && i < CH_TIMER_BATCH; i++) {
		ch_job_fini(&e->timers[i].job);
		msgpack_sbuffer_destroy(&e->timers[i].val);
		msgpack_unpacked_destroy(&e->timers[i].up);
	}
	free(e->timers);
	stat_clear(&e->stats);
	free(e->stats.t);
	msgpack_sbuffer_destroy(&e->ev_stats);
	pthread_mutex_destroy(&e->mu);
	pthread_cond_destroy(&e->cv);
	pthread_cond_destroy(&e->swap_cv);
	free(e);
}

// K1: kill -9 at random moments under mixed load, round after round.
//
// Seven clients run at once on libnng sockets, as integrators would: two
// send single events over REQ, two send `batch` requests of 2 to 8 events
// over REQ, two send events over PUSH, one asks for `stats` (which the
// engine reads in read-only transactions). Every event has an id. A REQ
// client has at most one request outstanding; when no reply comes within
// K1_REQ_MS it sends the very same request again (same ids), until a reply
// says ok — as docs/protocol.md asks of integrators. A PUSH client sends
// and forgets: at most once by contract.
//
// A round: the clients start on fresh customers; after a uniformly random
// time in [50 ms, 2 s] of load, SIGKILL — the engine child alone on even
// rounds (the supervisor starts another), the whole service on odd ones
// (the supervisor's pid: the engine dies with it; then `serve` again on
// the same data dir, on new ports, where the clients follow it). A pinger
// measures the restart: from the kill to the first reply to a `get`. The
// clients finish their outstanding request against the new engine and
// stop. Then every business must answer an event, `rules` must show no
// quarantine, `mdb_stat -r` must list no reader of a dead process, and
// the checker reads every customer of the round back with `get`.
//
// Every other pair of rounds the stores are held open by other processes
// (RELIABILITY.md's K1b): a thread of this process reads snapshots over
// and over, so the new engine finds the lock file as the dead one left it
// — its writer mutex owned by a dead process — instead of making a fresh
// one; and a reader process, killed -9 just before the engine, leaves
// reader slots that the new engine must clear.
//
// The rules make application countable: `ledger` counts each event under
// its id (counters[id]), `tally` appends each id to attrs.log. The checker
// classifies every event as Jepsen does: acknowledged (a reply said ok,
// duplicate=true included) must be applied exactly once; indeterminate (an
// attempt got no reply, a push handed to nng) at most once; refused (only
// error replies, or a push nng never took) never. Any id applied that no
// client sent is a failure too. After the last round the checker reads
// every round again: the final state.
//
// CHOREO_K1_ROUNDS (default 8) sets the rounds, CHOREO_K1_SEED the random
// schedule (printed at the start), CHOREO_K1_SHARDS the shards (2),
// CHOREO_K1_RESTART_MS the longest restart allowed (3000). The figures go
// to standard error, one line per round and a summary
// (docs/reliability.md has the long run and its command).
#include <criterion/criterion.h>
#include <errno.h>
#include <lmdb.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

#define K1_CLIENTS 7      // 2 REQ, 2 batch, 2 PUSH, 1 stats
#define K1_CUSTOMERS 8    // per client per round
#define K1_REQ_MS 1500    // a REQ attempt's wait for its reply
#define K1_SETTLE_MS 30000 // to finish the outstanding request
#define K1_PUSH_GAP_MS 3  // between two pushes of one client
#define K1_ROUND_S 120    // a round that runs longer hangs
#define K1_MAX_SHARDS 8

static daemon_t d;
static char     rules[512];

static void
setup(void)
{
	memset(&d, 0, sizeof(d));
	rules[0] = '\0';
}

static void
teardown(void)
{
	d_cleanup(&d);
	if (rules[0] != '\0' && getenv("CHOREO_E2E_KEEP") == NULL) {
		char cmd[600];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", rules);
		if (system(cmd) != 0) {
			fprintf(stderr, "cannot remove %s\n", rules);
		}
	}
}

TestSuite(kill9, .init = setup, .fini = teardown);

static int
env_int(const char *name, int dflt)
{
	const char *v = getenv(name);
	return (v != NULL && *v != '\0' ? atoi(v) : dflt);
}

/*
** {======================================================
** The history: every event any client sent
** =======================================================
*/

enum { K_REQ, K_BATCH, K_PUSH, K_PROBE, K_STATS };
static const char *const biz_names[2] = { "ledger", "tally" };

typedef struct {
	char     id[32];
	char     customer[32];
	uint32_t round;
	uint8_t  biz;      // index into biz_names
	uint8_t  kind;     // K_*
	uint8_t  acked;    // a reply said ok (first time or duplicate=true)
	uint8_t  dup;      // acknowledged by a duplicate=true reply
	uint8_t  unknown;  // an attempt ended without a reply
	uint8_t  refused;  // an error reply
	uint8_t  sent;     // PUSH: nng took it
	uint32_t attempts; // REQ: requests sent carrying it
	uint32_t applied;  // the checker's count in the state
} ev_t;

typedef struct {
	ev_t  *ev;
	size_t n, cap;
} hist_t;

// hist_add: a new event (no cr_assert: client threads call this).
static ev_t *
hist_add(hist_t *h)
{
	if (h->n == h->cap) {
		size_t cap = h->cap ? 2 * h->cap : 1024;
		ev_t  *ev  = realloc(h->ev, cap * sizeof(*ev));
		if (ev == NULL) {
			abort(); // the test process is out of memory
		}
		h->ev  = ev;
		h->cap = cap;
	}
	ev_t *e = &h->ev[h->n++];
	memset(e, 0, sizeof(*e));
	return (e);
}

static void
pack_str(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void
pack_event(msgpack_packer *pk, const ev_t *e)
{
	msgpack_pack_map(pk, 4);
	pack_str(pk, "business");
	pack_str(pk, biz_names[e->biz]);
	pack_str(pk, "customer");
	pack_str(pk, e->customer);
	pack_str(pk, "type");
	pack_str(pk, "tick");
	pack_str(pk, "id");
	pack_str(pk, e->id);
}

/* }====================================================== */

/*
** {======================================================
** The clients
** =======================================================
*/

// What the clients share with the driver: where the daemon listens (it
// moves when the whole service restarts), and when to stop.
typedef struct {
	pthread_mutex_t mu;
	char            rep[64], pull[64];
	atomic_bool     stop;         // the round's load ends
	atomic_llong    settle_until; // the outstanding request's deadline
	uint32_t        round;
} k1_t;

static k1_t k1 = { .mu = PTHREAD_MUTEX_INITIALIZER };

typedef struct {
	int        idx, kind;
	char       tag; // first letter of its ids and customers
	nng_socket s;
	nng_dialer dl;
	bool       open, dialed;
	char       url[64];
	pthread_t  th;
	bool       running;
	unsigned   rng;
	uint32_t   seq;
	hist_t     hist;
	// the outstanding request: its events (hist.ev[pfirst..+pn]), bytes
	size_t          pfirst, pn;
	msgpack_sbuffer pbuf;
	// figures
	uint64_t attempts, timeouts, overloaded;
	int      anomalies;
	char     anomaly[256];
} client_k1;

static client_k1 cl[K1_CLIENTS];

static void
anomaly(client_k1 *c, const char *fmt, const char *arg)
{
	if (c->anomalies++ == 0) {
		snprintf(c->anomaly, sizeof(c->anomaly), fmt, arg);
	}
}

// redial points the socket at the daemon's current endpoint.
static void
redial(client_k1 *c)
{
	char url[64];
	pthread_mutex_lock(&k1.mu);
	snprintf(url, sizeof(url), "%s", c->kind == K_PUSH ? k1.pull : k1.rep);
	pthread_mutex_unlock(&k1.mu);
	if (c->dialed && strcmp(url, c->url) == 0) {
		return;
	}
	if (c->dialed) {
		nng_dialer_close(c->dl);
		c->dialed = false;
	}
	// non-blocking: nng connects (and reconnects) in the background
	if (nng_dial(c->s, url, &c->dl, NNG_FLAG_NONBLOCK) == 0) {
		c->dialed = true;
		snprintf(c->url, sizeof(c->url), "%s", url);
	}
}

static ev_t *
new_event(client_k1 *c)
{
	ev_t *e = hist_add(&c->hist);
	snprintf(e->id, sizeof(e->id), "%c%d-%u-%u", c->tag, c->idx, k1.round,
	    c->seq++);
	snprintf(e->customer, sizeof(e->customer), "%c%d-%u-%u", c->tag,
	    c->idx, k1.round, (unsigned) (rand_r(&c->rng) % K1_CUSTOMERS));
	e->round = k1.round;
	e->biz   = (uint8_t) (rand_r(&c->rng) % 2);
	e->kind  = (uint8_t) c->kind;
	return (e);
}

// make_request: the next request (one event, or a batch of 2 to 8).
static void
make_request(client_k1 *c)
{
	int n = c->kind == K_BATCH ? 2 + (int) (rand_r(&c->rng) % 7) : 1;
	c->pfirst = c->hist.n;
	c->pn     = (size_t) n;
	for (int i = 0; i < n; i++) {
		new_event(c);
	}
	c->pbuf.size = 0;
	msgpack_packer pk;
	msgpack_packer_init(&pk, &c->pbuf, msgpack_sbuffer_write);
	if (c->kind == K_BATCH) {
		msgpack_pack_map(&pk, 2);
		pack_str(&pk, "op");
		pack_str(&pk, "batch");
		pack_str(&pk, "events");
		msgpack_pack_array(&pk, (size_t) n);
	}
	for (int i = 0; i < n; i++) {
		pack_event(&pk, &c->hist.ev[c->pfirst + (size_t) i]);
	}
}

// member: what one reply map says of its event. 1: applied (or already
// was), 0: to be sent again (overloaded), -1: refused for good.
static int
member(client_k1 *c, ev_t *e, const msgpack_object *o)
{
	const msgpack_object *okv = o ? at(o, "ok") : NULL;
	if (okv != NULL && okv->type == MSGPACK_OBJECT_BOOLEAN &&
	    okv->via.boolean) {
		const msgpack_object *dup = at(o, "duplicate");
		e->acked                  = 1;
		e->dup = dup != NULL && dup->type == MSGPACK_OBJECT_BOOLEAN &&
		    dup->via.boolean;
		return (1);
	}
	const msgpack_object *code = o ? at(o, "error.code") : NULL;
	char                  cs[64] = "(no code)";
	if (code != NULL && code->type == MSGPACK_OBJECT_STR) {
		snprintf(cs, sizeof(cs), "%.*s", (int) code->via.str.size,
		    code->via.str.ptr);
	}
	if (strcmp(cs, "overloaded") == 0) {
		c->overloaded++;
		return (0);
	}
	e->refused = 1;
	anomaly(c, "an event was refused: %s", cs);
	return (-1);
}

// settle_reply reads a reply to the outstanding request: true when it is
// settled (every event acknowledged or refused for good).
static bool
settle_reply(client_k1 *c, const char *buf, size_t len)
{
	msgpack_unpacked up;
	size_t           off = 0;
	msgpack_unpacked_init(&up);
	bool settled = false;
	if (msgpack_unpack_next(&up, buf, len, &off) != MSGPACK_UNPACK_SUCCESS ||
	    up.data.type != MSGPACK_OBJECT_MAP) {
		anomaly(c, "%s", "a reply is not a msgpack map");
		msgpack_unpacked_destroy(&up);
		return (false);
	}
	const msgpack_object *o = &up.data;
	int                   again = 0;
	if (c->kind == K_BATCH) {
		const msgpack_object *res = at(o, "results");
		bool                  all = res != NULL &&
		    res->type == MSGPACK_OBJECT_ARRAY &&
		    res->via.array.size == c->pn;
		for (size_t i = 0; i < c->pn; i++) {
			// no results: the batch itself was refused
			again += member(c, &c->hist.ev[c->pfirst + i],
			             all ? &res->via.array.ptr[i] : o) == 0;
		}
	} else {
		again = member(c, &c->hist.ev[c->pfirst], o) == 0;
	}
	settled = again == 0;
	msgpack_unpacked_destroy(&up);
	return (settled);
}

static void *
req_main(void *arg)
{
	client_k1 *c = arg;
	for (;;) {
		if (c->pn == 0) {
			if (atomic_load(&k1.stop)) {
				break;
			}
			make_request(c);
		} else if (atomic_load(&k1.stop) &&
		    now_ms() > atomic_load(&k1.settle_until)) {
			break; // it stays indeterminate
		}
		redial(c);
		int rv = nng_send(c->s, c->pbuf.data, c->pbuf.size, 0);
		if (rv != 0) {
			sleep_ms(20); // not sent: no endpoint yet
			continue;
		}
		c->attempts++;
		for (size_t i = 0; i < c->pn; i++) {
			c->hist.ev[c->pfirst + i].attempts++;
		}
		char  *r;
		size_t rl;
		if ((rv = nng_recv(c->s, &r, &rl, NNG_FLAG_ALLOC)) != 0) {
			// no reply: applied or not, nobody knows; same again
			c->timeouts++;
			for (size_t i = 0; i < c->pn; i++) {
				c->hist.ev[c->pfirst + i].unknown = 1;
			}
			continue;
		}
		bool settled = settle_reply(c, r, rl);
		nng_free(r, rl);
		if (settled) {
			c->pn = 0;
		} else {
			sleep_ms(20);
		}
	}
	return (NULL);
}

static void *
push_main(void *arg)
{
	client_k1 *c = arg;
	while (!atomic_load(&k1.stop)) {
		redial(c);
		ev_t *e      = new_event(c);
		c->pbuf.size = 0;
		msgpack_packer pk;
		msgpack_packer_init(&pk, &c->pbuf, msgpack_sbuffer_write);
		pack_event(&pk, e);
		e->sent = nng_send(c->s, c->pbuf.data, c->pbuf.size, 0) == 0;
		sleep_ms(K1_PUSH_GAP_MS);
	}
	return (NULL);
}

// stats_main asks for the analytics, over and over: the engine reads them
// in read-only transactions, so a kill may leave a reader slot behind.
static void *
stats_main(void *arg)
{
	client_k1 *c = arg;
	while (!atomic_load(&k1.stop)) {
		redial(c);
		int b        = (int) (rand_r(&c->rng) % 2);
		c->pbuf.size = 0;
		msgpack_packer pk;
		msgpack_packer_init(&pk, &c->pbuf, msgpack_sbuffer_write);
		msgpack_pack_map(&pk, 2);
		pack_str(&pk, "op");
		pack_str(&pk, "stats");
		pack_str(&pk, "business");
		pack_str(&pk, biz_names[b]);
		char  *r;
		size_t rl;
		if (nng_send(c->s, c->pbuf.data, c->pbuf.size, 0) != 0) {
			sleep_ms(20);
			continue;
		}
		c->attempts++;
		if (nng_recv(c->s, &r, &rl, NNG_FLAG_ALLOC) != 0) {
			c->timeouts++;
			continue;
		}
		msgpack_unpacked up;
		msgpack_unpacked_init(&up);
		const msgpack_object *okv = NULL;
		if (msgpack_unpack_next(&up, r, rl, NULL) == MSGPACK_UNPACK_SUCCESS) {
			okv = at(&up.data, "ok");
		}
		if (okv == NULL || okv->type != MSGPACK_OBJECT_BOOLEAN ||
		    !okv->via.boolean) {
			anomaly(c, "%s", "a stats request failed");
		}
		msgpack_unpacked_destroy(&up);
		nng_free(r, rl);
	}
	return (NULL);
}

static void
clients_open(void)
{
	static const char tags[K1_CLIENTS]  = { 'q', 'q', 'b', 'b', 'p', 'p',
		 's' };
	static const int  kinds[K1_CLIENTS] = { K_REQ, K_REQ, K_BATCH, K_BATCH,
		 K_PUSH, K_PUSH, K_STATS };
	for (int i = 0; i < K1_CLIENTS; i++) {
		client_k1 *c = &cl[i];
		memset(c, 0, sizeof(*c));
		c->idx  = i;
		c->kind = kinds[i];
		c->tag  = tags[i];
		c->rng  = (unsigned) rand();
		msgpack_sbuffer_init(&c->pbuf);
		int rv = c->kind == K_PUSH ? nng_push0_open(&c->s)
		                           : nng_req0_open(&c->s);
		cr_assert_eq(rv, 0, "nng socket: %s", nng_strerror(rv));
		c->open = true;
		nng_socket_set_ms(c->s, NNG_OPT_SENDTIMEO,
		    c->kind == K_PUSH ? 200 : 1000);
		nng_socket_set_ms(c->s, NNG_OPT_RECVTIMEO, K1_REQ_MS);
		nng_socket_set_ms(c->s, NNG_OPT_RECONNMINT, 20);
		nng_socket_set_ms(c->s, NNG_OPT_RECONNMAXT, 100);
	}
}

static void
clients_close(void)
{
	for (int i = 0; i < K1_CLIENTS; i++) {
		client_k1 *c = &cl[i];
		if (c->open) {
			c->open = false;
			close_bounded(c->s);
		}
		msgpack_sbuffer_destroy(&c->pbuf);
		free(c->hist.ev);
		c->hist.ev = NULL;
	}
}

static void
clients_start(uint32_t round)
{
	k1.round = round;
	atomic_store(&k1.stop, false);
	for (int i = 0; i < K1_CLIENTS; i++) {
		client_k1 *c = &cl[i];
		c->seq       = 0;
		int rv = pthread_create(&c->th, NULL,
		    c->kind == K_PUSH    ? push_main
		        : c->kind == K_STATS ? stats_main
		                             : req_main,
		    c);
		cr_assert_eq(rv, 0, "pthread_create: %s", strerror(rv));
		c->running = true;
	}
}

// clients_stop: no new request; the outstanding ones are sent until they
// are settled (K1_SETTLE_MS at most), then the threads end.
static void
clients_stop(void)
{
	atomic_store(&k1.settle_until, now_ms() + K1_SETTLE_MS);
	atomic_store(&k1.stop, true);
	for (int i = 0; i < K1_CLIENTS; i++) {
		if (cl[i].running) {
			pthread_join(cl[i].th, NULL);
			cl[i].running = false;
		}
	}
}

static void
endpoints_moved(void)
{
	pthread_mutex_lock(&k1.mu);
	snprintf(k1.rep, sizeof(k1.rep), "%s", d.rep);
	snprintf(k1.pull, sizeof(k1.pull), "%s", d.pull);
	pthread_mutex_unlock(&k1.mu);
}

// The pinger measures a restart as a client sees it: from the kill to the
// first reply to a `get` (a request the engine thread answers, not the
// receiving side alone) sent once the killed processes could run no more,
// asking every 2 ms, each try waiting 50 ms.
typedef struct {
	nng_socket   s;
	nng_dialer   dl;
	bool         dialed;
	char         url[64];
	pthread_t    th;
	atomic_bool  stop;
	atomic_llong dead_at; // µs: the killed processes run no more (0: none)
	atomic_llong back_at; // µs: the first reply to a request sent after
} pinger_t;

static pinger_t pg;

static int64_t
now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
}

static void *
pinger_main(void *arg)
{
	(void) arg;
	// {op="get", business="ledger", customer="pinger"}
	static const char get[] = "\x83\xa2op\xa3get\xa8"
	                          "business\xa6ledger\xa8"
	                          "customer\xa6pinger";
	while (!atomic_load(&pg.stop)) {
		char url[64];
		pthread_mutex_lock(&k1.mu);
		snprintf(url, sizeof(url), "%s", k1.rep);
		pthread_mutex_unlock(&k1.mu);
		if (!pg.dialed || strcmp(url, pg.url) != 0) {
			if (pg.dialed) {
				nng_dialer_close(pg.dl);
			}
			pg.dialed = nng_dial(pg.s, url, &pg.dl, NNG_FLAG_NONBLOCK) == 0;
			snprintf(pg.url, sizeof(pg.url), "%s", url);
		}
		char   *r;
		size_t  rl;
		int64_t sent = now_us();
		if (nng_send(pg.s, (void *) get, sizeof(get) - 1, 0) == 0 &&
		    nng_recv(pg.s, &r, &rl, NNG_FLAG_ALLOC) == 0) {
			nng_free(r, rl);
			int64_t   dead = atomic_load(&pg.dead_at);
			long long none = 0;
			if (dead != 0 && sent > dead) {
				atomic_compare_exchange_strong(&pg.back_at, &none,
				    now_us());
			}
		}
		sleep_ms(2);
	}
	return (NULL);
}

static void
pinger_start(void)
{
	memset(&pg, 0, sizeof(pg));
	cr_assert_eq(nng_req0_open(&pg.s), 0);
	nng_socket_set_ms(pg.s, NNG_OPT_SENDTIMEO, 50);
	nng_socket_set_ms(pg.s, NNG_OPT_RECVTIMEO, 50);
	nng_socket_set_ms(pg.s, NNG_OPT_RECONNMINT, 5);
	nng_socket_set_ms(pg.s, NNG_OPT_RECONNMAXT, 20);
	cr_assert_eq(pthread_create(&pg.th, NULL, pinger_main, NULL), 0);
}

static void
pinger_stop(void)
{
	atomic_store(&pg.stop, true);
	pthread_join(pg.th, NULL);
	close_bounded(pg.s);
}

// back_in waits (10 s at most) for the first reply after the kill made
// at t0 (µs): the ms it took.
static int64_t
back_in(int64_t t0)
{
	int64_t end = now_ms() + 10000;
	while (atomic_load(&pg.back_at) == 0) {
		cr_assert_lt(now_ms(), end, "no reply within 10 s of the kill; "
		                            "log: %s",
		    d_log_tail(&d));
		sleep_ms(1);
	}
	int64_t ms = (atomic_load(&pg.back_at) - t0 + 500) / 1000;
	atomic_store(&pg.dead_at, 0);
	atomic_store(&pg.back_at, 0);
	return (ms);
}

// engine_child: the supervisor's child, the engine, as /proc lists it (0
// while it has none).
static pid_t
engine_child(void)
{
	char path[64];
	int  child = 0;
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int) d.pid,
	    (int) d.pid);
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	if (fscanf(f, "%d", &child) != 1) {
		child = 0;
	}
	fclose(f);
	return ((pid_t) child);
}

// kill_engine: SIGKILL to the engine alone, as an operator or the OOM
// killer would; waits, 10 s at most, for the supervisor's next engine.
static void
kill_engine(void)
{
	pid_t old = d.engine;
	cr_assert_eq(kill(old, SIGKILL), 0, "cannot kill the engine (pid %d): "
	                                   "%s",
	    (int) old, strerror(errno));
	atomic_store(&pg.dead_at, now_us());
	int64_t end = now_ms() + 10000;
	pid_t   now;
	while ((now = engine_child()) == 0 || now == old) {
		cr_assert_lt(now_ms(), end, "no new engine within 10 s; log: %s",
		    d_log_tail(&d));
		sleep_ms(1);
	}
	d.engine = now;
}

// log_count: the lines of the daemon's log (every start's) that hold s.
static int
log_count(const char *s)
{
	char  line[1024];
	int   n = 0;
	FILE *f = fopen(d.log, "r");
	cr_assert_not_null(f, "%s: %s", d.log, strerror(errno));
	while (fgets(line, sizeof(line), f) != NULL) {
		n += strstr(line, s) != NULL;
	}
	fclose(f);
	return (n);
}

/* }====================================================== */

/*
** {======================================================
** The second process's view of the stores (K1b)
** =======================================================
*/

// A thread of this process keeps every shard's store open read-only and
// reads a snapshot every few milliseconds: to the engine this process is
// another process with the environment open, so a new engine finds the
// lock file as the dead one left it. Beside it a child process opens a
// read transaction on every store and waits; it is killed -9 together
// with the engine, so the new engine always finds reader slots of a dead
// process to clear (the engine itself holds a read transaction only for
// microseconds, so a kill seldom leaves one of its own).
typedef struct {
	MDB_env    *env[K1_MAX_SHARDS];
	int         n;
	pthread_t   th;
	bool        on;
	atomic_bool stop;
	int         err;
	pid_t       victim; // the reader process killed with the engine
} observer_t;

static observer_t obs;

static void *
observer_main(void *arg)
{
	(void) arg;
	while (!atomic_load(&obs.stop)) {
		for (int i = 0; i < obs.n; i++) {
			MDB_txn *txn;
			int      rc = mdb_txn_begin(obs.env[i], NULL, MDB_RDONLY, &txn);
			if (rc == MDB_MAP_RESIZED) {
				// the engine grew the map: adopt its size
				mdb_env_set_mapsize(obs.env[i], 0);
				rc = mdb_txn_begin(obs.env[i], NULL, MDB_RDONLY, &txn);
			}
			if (rc != 0) {
				if (obs.err == 0) {
					obs.err = rc;
				}
				continue;
			}
			MDB_stat st;
			mdb_stat(txn, 0, &st);
			sleep_ms(1); // hold the snapshot a little
			mdb_txn_abort(txn);
		}
		sleep_ms(5);
	}
	return (NULL);
}

static void
store_dir(char *out, size_t len, int shards, int i)
{
	if (shards == 1) {
		snprintf(out, len, "%s", d.data);
	} else {
		snprintf(out, len, "%s/shard-%d", d.data, i);
	}
}

// reader_spawn starts a process that opens every shard's store, begins a
// read transaction on each and waits, in it, to be killed.
static pid_t
reader_spawn(int shards)
{
	int ready[2];
	cr_assert_eq(pipe(ready), 0);
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
	if (pid == 0) {
		// no cr_assert here: this is not the test process
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(ready[0]);
		for (int i = 0; i < shards; i++) {
			char     dir[128];
			MDB_env *env;
			MDB_txn *txn;
			store_dir(dir, sizeof(dir), shards, i);
			if (mdb_env_create(&env) != 0 ||
			    mdb_env_open(env, dir, MDB_RDONLY, 0644) != 0 ||
			    mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) != 0) {
				_exit(1);
			}
		}
		if (write(ready[1], "r", 1) != 1) {
			_exit(1);
		}
		for (;;) {
			pause();
		}
	}
	close(ready[1]);
	char    c;
	ssize_t n = read(ready[0], &c, 1); // EOF if it failed
	close(ready[0]);
	cr_assert_eq(n, 1, "the reader process could not open the stores");
	return (pid);
}

static void
observer_start(int shards)
{
	memset(&obs, 0, sizeof(obs));
	for (int i = 0; i < shards; i++) {
		char dir[128];
		store_dir(dir, sizeof(dir), shards, i);
		cr_assert_eq(mdb_env_create(&obs.env[i]), 0);
		mdb_env_set_maxdbs(obs.env[i], 16);
		int rc = mdb_env_open(obs.env[i], dir, MDB_RDONLY | MDB_NOTLS, 0644);
		cr_assert_eq(rc, 0, "open %s read-only: %s", dir, mdb_strerror(rc));
		obs.n++;
	}
	cr_assert_eq(pthread_create(&obs.th, NULL, observer_main, NULL), 0);
	obs.on     = true;
	obs.victim = reader_spawn(shards);
}

// victim_kill kills the reader process in the middle of its transactions.
static void
victim_kill(void)
{
	if (obs.victim > 0) {
		kill(obs.victim, SIGKILL);
		waitpid(obs.victim, NULL, 0);
		obs.victim = 0;
	}
}

static void
observer_stop(void)
{
	if (!obs.on) {
		return;
	}
	victim_kill();
	atomic_store(&obs.stop, true);
	pthread_join(obs.th, NULL);
	for (int i = 0; i < obs.n; i++) {
		mdb_env_close(obs.env[i]);
	}
	obs.on = false;
	cr_assert_eq(obs.err, 0, "the read-only view of the stores failed: %s",
	    mdb_strerror(obs.err));
}

// stale_readers: the reader slots `mdb_stat -r` lists for processes that
// no longer exist (out: every slot listed).
static int
stale_readers(const char *dir, int *listed)
{
	char cmd[256], line[256];
	snprintf(cmd, sizeof(cmd), "mdb_stat -r '%s' 2>&1", dir);
	fflush(NULL);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p, "popen mdb_stat: %s", strerror(errno));
	int  stale = 0;
	bool table = false;
	*listed    = 0;
	while (fgets(line, sizeof(line), p) != NULL) {
		int pid;
		if (strstr(line, "Reader Table Status") != NULL) {
			table = true;
		} else if (table && sscanf(line, "%d", &pid) == 1 && pid > 0) {
			(*listed)++;
			if (kill(pid, 0) != 0 && errno == ESRCH) {
				stale++;
			}
		}
	}
	int st = pclose(p);
	cr_assert(table && st != -1, "mdb_stat -r %s did not list the reader "
	                              "table (is lmdb-utils installed?)",
	    dir);
	return (stale);
}

// stale_all: stale_readers over every shard's store.
static int
stale_all(int shards, int *listed)
{
	int stale = 0;
	*listed   = 0;
	for (int i = 0; i < shards; i++) {
		char dir[128];
		int  l;
		store_dir(dir, sizeof(dir), shards, i);
		stale += stale_readers(dir, &l);
		*listed += l;
	}
	return (stale);
}

/* }====================================================== */

/*
** {======================================================
** The checker
** =======================================================
*/

static hist_t probes; // the driver's own events, one per business a round

typedef struct {
	uint64_t acked, acked_dup, unresolved, refused;
	uint64_t req_events, batch_events, retried;
	uint64_t pushed, push_applied, push_unsent;
} figures_t;

static int
ev_cmp(const void *a, const void *b)
{
	const ev_t *x = *(ev_t *const *) a, *y = *(ev_t *const *) b;
	return (strcmp(x->id, y->id));
}

static ev_t *
find(ev_t **all, size_t n, const char *id, size_t idlen)
{
	char key[sizeof(((ev_t *) 0)->id)];
	if (idlen >= sizeof(key)) {
		return (NULL);
	}
	memcpy(key, id, idlen);
	key[idlen] = '\0';
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int    c   = strcmp(all[mid]->id, key);
		if (c == 0) {
			return (all[mid]);
		}
		if (c < 0) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	return (NULL);
}

static int
cust_cmp(const void *a, const void *b)
{
	const ev_t *x = *(ev_t *const *) a, *y = *(ev_t *const *) b;
	return (x->biz != y->biz ? x->biz - y->biz
	                         : strcmp(x->customer, y->customer));
}

// applied_one records that the state holds id n times.
static void
applied_one(ev_t **all, size_t n, const ev_t *owner, const char *id,
    size_t idlen, uint64_t times)
{
	ev_t *e = find(all, n, id, idlen);
	cr_assert_not_null(e, "%s/%s holds an event no client sent: '%.*s'",
	    biz_names[owner->biz], owner->customer, (int) idlen, id);
	cr_assert(e->biz == owner->biz && strcmp(e->customer, owner->customer) == 0,
	    "event %s was applied to %s/%s, sent to %s/%s", e->id,
	    biz_names[owner->biz], owner->customer, biz_names[e->biz],
	    e->customer);
	e->applied += (uint32_t) times;
}

// read_customer adds what one customer's state holds to the events'
// applied counts.
static void
read_customer(client_t *c, ev_t **all, size_t n, const ev_t *owner)
{
	req_t q;
	req_init(&q, 3);
	req_str(&q, "op", "get");
	req_str(&q, "business", biz_names[owner->biz]);
	req_str(&q, "customer", owner->customer);
	reply_t r;
	client_call(c, q.buf.data, q.buf.size, &r);
	req_free(&q);
	if (!ok(&r)) {
		assert_code(&r, "not_found"); // none of its events applied
		reply_free(&r);
		return;
	}
	if (owner->biz == 0) { // ledger: counters[id] and counters.events
		const msgpack_object *m = rat(&r, "customer.counters");
		cr_assert(m != NULL && m->type == MSGPACK_OBJECT_MAP, "%s",
		    dump(&r));
		int64_t events = -1, sum = 0;
		for (uint32_t i = 0; i < m->via.map.size; i++) {
			const msgpack_object *k = &m->via.map.ptr[i].key;
			const msgpack_object *v = &m->via.map.ptr[i].val;
			cr_assert(k->type == MSGPACK_OBJECT_STR &&
			        v->type == MSGPACK_OBJECT_POSITIVE_INTEGER,
			    "ledger/%s: a counter that is not a count: %s",
			    owner->customer, dump(&r));
			if (k->via.str.size == 6 &&
			    memcmp(k->via.str.ptr, "events", 6) == 0) {
				events = (int64_t) v->via.u64;
				continue;
			}
			applied_one(all, n, owner, k->via.str.ptr, k->via.str.size,
			    v->via.u64);
			sum += (int64_t) v->via.u64;
		}
		cr_assert_eq(events, sum, "ledger/%s counted %lld events, its "
		                          "ids %lld: %s",
		    owner->customer, (long long) events, (long long) sum,
		    dump(&r));
	} else { // tally: attrs.log "id;id;..." and attrs.n
		const msgpack_object *log = rat(&r, "customer.attrs.log");
		cr_assert(log != NULL && log->type == MSGPACK_OBJECT_STR, "%s",
		    dump(&r));
		const char *p = log->via.str.ptr, *end = p + log->via.str.size;
		int64_t     count = 0;
		while (p < end) {
			const char *semi = memchr(p, ';', (size_t) (end - p));
			cr_assert_not_null(semi, "tally/%s: a log without its "
			                         "last ';': %s",
			    owner->customer, dump(&r));
			applied_one(all, n, owner, p, (size_t) (semi - p), 1);
			count++;
			p = semi + 1;
		}
		cr_assert_eq(int_at(&r, "customer.attrs.n"), count,
		    "tally/%s: n and the log disagree: %s", owner->customer,
		    dump(&r));
	}
	reply_free(&r);
}

static void
gather(hist_t *hs, ev_t ***all, size_t *n, size_t *cap, uint32_t from,
    uint32_t to)
{
	for (size_t i = 0; i < hs->n; i++) {
		ev_t *e = &hs->ev[i];
		if (e->round < from || e->round > to) {
			continue;
		}
		if (*n == *cap) {
			*cap = *cap ? 2 * *cap : 4096;
			*all = realloc(*all, *cap * sizeof(**all));
			cr_assert_not_null(*all);
		}
		e->applied  = 0;
		(*all)[(*n)++] = e;
	}
}

// check reads back every customer of rounds [from, to] and holds each
// event to its outcome; f gets the figures.
static void
check(uint32_t from, uint32_t to, figures_t *f)
{
	ev_t **all = NULL;
	size_t n = 0, cap = 0;
	for (int i = 0; i < K1_CLIENTS; i++) {
		gather(&cl[i].hist, &all, &n, &cap, from, to);
	}
	gather(&probes, &all, &n, &cap, from, to);
	if (n == 0) {
		return;
	}
	qsort(all, n, sizeof(*all), ev_cmp);
	for (size_t i = 1; i < n; i++) {
		cr_assert_str_neq(all[i - 1]->id, all[i]->id, "two events with "
		                                              "one id");
	}
	// each customer once: sort a copy by business and customer
	ev_t **by = malloc(n * sizeof(*by));
	cr_assert_not_null(by);
	memcpy(by, all, n * sizeof(*by));
	qsort(by, n, sizeof(*by), cust_cmp);
	client_t c;
	client_open(&d, &c);
	for (size_t i = 0; i < n; i++) {
		if (i == 0 || cust_cmp(&by[i - 1], &by[i]) != 0) {
			read_customer(&c, all, n, by[i]);
		}
	}
	client_close(&c);
	free(by);
	memset(f, 0, sizeof(*f));
	for (size_t i = 0; i < n; i++) {
		ev_t *e = all[i];
		cr_assert_leq(e->applied, 1,
		    "event %s (%s/%s, round %u) was applied %u times: "
		    "acked=%d dup=%d unknown=%d attempts=%u",
		    e->id, biz_names[e->biz], e->customer, e->round, e->applied,
		    e->acked, e->dup, e->unknown, e->attempts);
		if (e->acked) {
			cr_assert_eq(e->applied, 1,
			    "event %s (%s/%s, round %u) was acknowledged but is "
			    "not in the state: dup=%d unknown=%d attempts=%u",
			    e->id, biz_names[e->biz], e->customer, e->round,
			    e->dup, e->unknown, e->attempts);
		} else if (!e->unknown && !e->sent) {
			cr_assert_eq(e->applied, 0,
			    "event %s (%s/%s, round %u) was refused (or never "
			    "sent) yet applied",
			    e->id, biz_names[e->biz], e->customer, e->round);
		}
		if (e->kind == K_PUSH) {
			f->pushed += e->sent;
			f->push_unsent += !e->sent;
			f->push_applied += e->applied;
			continue;
		}
		f->req_events += e->kind != K_BATCH;
		f->batch_events += e->kind == K_BATCH;
		f->acked += e->acked;
		f->acked_dup += e->dup;
		f->retried += e->attempts > 1;
		f->unresolved += !e->acked && e->unknown;
		f->refused += !e->acked && !e->unknown;
	}
	free(all);
}

/* }====================================================== */

/*
** {======================================================
** The rounds
** =======================================================
*/

static const char ledger_rules[] =
    "-- K1's ledger: each event counts once under its own id\n"
    "action \"hello\" { value = 1 }\n"
    "on(\"*\", function(c, e)\n"
    "  c:count(\"events\")\n"
    "  c:count(e.id)\n"
    "end)\n";

static const char tally_rules[] =
    "-- K1's tally: each event appends its id to a log\n"
    "journey \"progress\" { stages = { \"new\", \"active\" }, goal = "
    "\"active\" }\n"
    "on(\"*\", function(c, e)\n"
    "  c.attrs.n = (c.attrs.n or 0) + 1\n"
    "  c.attrs.log = (c.attrs.log or \"\") .. e.id .. \";\"\n"
    "  if c:stage(\"progress\") == nil then c:advance(\"progress\", \"new\")\n"
    "  elseif c.attrs.n == 10 then c:advance(\"progress\", \"active\") end\n"
    "end)\n";

static uint32_t round_now;

static void
on_round_alarm(int sig)
{
	(void) sig;
	char m[96];
	int  n = snprintf(m, sizeof(m),
	     "k1: round %u has run for %d s: it hangs; stopping\n", round_now,
	     K1_ROUND_S);
	if (write(2, m, (size_t) n) < 0) {
		_exit(98);
	}
	_exit(99);
}

// serves: each business applies an event (the round's probe, which the
// checker counts like any other), and `rules` shows every business
// serving its version with nothing quarantined.
static void
serves(uint32_t round)
{
	for (int b = 0; b < 2; b++) {
		ev_t *e = hist_add(&probes);
		snprintf(e->id, sizeof(e->id), "probe-%u-%d", round, b);
		snprintf(e->customer, sizeof(e->customer), "probe-%u", round);
		e->round = round;
		e->biz   = (uint8_t) b;
		e->kind  = K_PROBE;
		req_t q;
		req_init(&q, -1);
		pack_event(&q.pk, e);
		reply_t r;
		call(&d, &q, &r);
		req_free(&q);
		e->attempts = 1;
		cr_assert(ok(&r), "round %u: %s does not serve after the "
		                  "restart: %s; log: %s",
		    round, biz_names[b], dump(&r), d_log_tail(&d));
		e->acked = 1;
		reply_free(&r);
	}
	reply_t r;
	call_json(&d, "{\"op\":\"rules\"}", &r);
	assert_ok(&r);
	for (int b = 0; b < 2; b++) {
		char p[96];
		snprintf(p, sizeof(p), "businesses.%s.version", biz_names[b]);
		cr_assert(has(&r, p), "round %u: %s has no version: %s", round,
		    biz_names[b], dump(&r));
		snprintf(p, sizeof(p), "businesses.%s.quarantine", biz_names[b]);
		cr_assert(!has(&r, p), "round %u: kill -9 quarantined %s: %s",
		    round, biz_names[b], dump(&r));
		snprintf(p, sizeof(p), "businesses.%s.error", biz_names[b]);
		cr_assert(!has(&r, p), "round %u: %s: %s", round, biz_names[b],
		    dump(&r));
	}
	reply_free(&r);
}

typedef struct {
	int64_t ms[2][1024]; // restart times: [0] engine, [1] service
	int     n[2];
} restarts_t;

static int
i64_cmp(const void *a, const void *b)
{
	int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
	return (x < y ? -1 : x > y);
}

static void
print_restarts(const char *what, int64_t *ms, int n)
{
	if (n == 0) {
		return;
	}
	qsort(ms, (size_t) n, sizeof(*ms), i64_cmp);
	fprintf(stderr, "k1: %s restarts: %d, median %lld ms, max %lld ms\n",
	    what, n, (long long) ms[n / 2], (long long) ms[n - 1]);
}

Test(kill9, k1_rounds_of_kill_9_under_mixed_load)
{
	int rounds     = env_int("CHOREO_K1_ROUNDS", 8);
	int shards     = env_int("CHOREO_K1_SHARDS", 2);
	int restart_max = env_int("CHOREO_K1_RESTART_MS", 3000);
	unsigned seed  = (unsigned) env_int("CHOREO_K1_SEED", (int) time(NULL));
	cr_assert(rounds >= 1 && shards >= 1 && shards <= K1_MAX_SHARDS);
	srand(seed);
	fprintf(stderr, "k1: %d rounds, %d shard(s), seed %u "
	                "(CHOREO_K1_SEED=%u repeats the schedule)\n",
	    rounds, shards, seed, seed);

	rules_dir(rules, sizeof(rules));
	rules_write(rules, "ledger", "10_ledger.lua", ledger_rules);
	rules_write(rules, "tally", "10_tally.lua", tally_rules);
	snprintf(d.extra, sizeof(d.extra), "--shards %d", shards);
	d_start(&d, rules, false);
	signal(SIGALRM, on_round_alarm); // after d_start's own
	endpoints_moved();
	clients_open();
	pinger_start();

	static restarts_t rs;
	memset(&rs, 0, sizeof(rs));
	int64_t began      = now_ms();
	int     left_total = 0, engine_kills = 0;
	for (uint32_t round = 0; round < (uint32_t) rounds; round++) {
		round_now = round;
		alarm(K1_ROUND_S);
		bool service  = round % 2 == 1;
		bool observer = round / 2 % 2 == 1;
		if (observer) {
			observer_start(shards);
		}
		clients_start(round);
		int after = 50 + rand() % 1951; // [50, 2000] ms of load
		sleep_ms(after);
		cr_assert_eq(engine_child(), d.engine, "round %u: the engine "
		                                       "was replaced before the "
		                                       "kill; log: %s",
		    round, d_log_tail(&d));
		victim_kill(); // its reader slots go stale
		int64_t t0    = now_us();
		int64_t paused = 0; // µs
		int     left = 0, listed;
		if (service) {
			d_kill9(&d); // asserts the engine died with it
			atomic_store(&pg.dead_at, now_us());
			if (observer) {
				// the reader slots the dead processes left in
				// the lock files this process keeps open (not
				// counted in the restart time)
				int64_t p0 = now_us();
				left       = stale_all(shards, &listed);
				paused     = now_us() - p0;
				left_total += left;
			}
			d_restart(&d);
			endpoints_moved();
		} else {
			kill_engine();
			engine_kills++;
		}
		int64_t restart = back_in(t0 + paused);
		rs.ms[service][rs.n[service]++ % 1024] = restart;
		clients_stop();
		serves(round);
		int stale = stale_all(shards, &listed);
		observer_stop();
		for (int i = 0; i < K1_CLIENTS; i++) {
			cr_assert_eq(cl[i].anomalies, 0, "client %d: %s", i,
			    cl[i].anomaly);
		}
		figures_t f;
		check(round, round, &f);
		fprintf(stderr,
		    "k1: round %u: %s kill -9 after %d ms%s, serving again in "
		    "%lld ms; %llu events acknowledged (%llu by a duplicate "
		    "reply), %llu sent more than once, %llu unresolved; pushed "
		    "%llu, applied %llu; reader slots %d, stale %d (%d left by "
		    "the kill)\n",
		    round, service ? "service" : "engine", after,
		    observer ? " (stores held open)" : "", (long long) restart,
		    (unsigned long long) f.acked,
		    (unsigned long long) f.acked_dup,
		    (unsigned long long) f.retried,
		    (unsigned long long) f.unresolved,
		    (unsigned long long) f.pushed,
		    (unsigned long long) f.push_applied, listed, stale, left);
		cr_assert_eq(stale, 0, "round %u: %d reader slot(s) of dead "
		                       "processes in the stores",
		    round, stale);
		// the supervisor saw our kills and nothing else
		cr_assert_eq(log_count("the engine died"), engine_kills,
		    "round %u: the engine died other than by our kills; log: %s",
		    round, d_log_tail(&d));
		cr_assert_eq(log_count("the engine died (signal 9,"),
		    engine_kills, "round %u: log: %s", round, d_log_tail(&d));
		cr_assert_eq(log_count("the engine crashed") +
		        log_count("watchdog"),
		    0, "round %u: log: %s", round, d_log_tail(&d));
		cr_assert_leq(restart, restart_max, "round %u: the %s took %lld "
		                                    "ms to serve again",
		    round, service ? "service" : "engine", (long long) restart);
	}
	alarm(K1_ROUND_S);
	// the final state: every round again, once late pushes have landed
	figures_t f, g;
	check(0, (uint32_t) rounds - 1, &f);
	for (int i = 0; i < 20; i++) {
		sleep_ms(100);
		check(0, (uint32_t) rounds - 1, &g);
		if (g.push_applied == f.push_applied) {
			break;
		}
		f = g;
	}
	uint64_t timeouts = 0, overloaded = 0;
	for (int i = 0; i < K1_CLIENTS; i++) {
		if (cl[i].kind == K_REQ || cl[i].kind == K_BATCH) {
			timeouts += cl[i].timeouts;
			overloaded += cl[i].overloaded;
		}
	}
	fprintf(stderr,
	    "k1: %d rounds in %lld s: %llu REQ events (%llu single, %llu in "
	    "batches) acknowledged %llu, lost 0, applied twice 0; %llu were "
	    "sent more than once (%llu replies timed out, %llu overloaded), "
	    "%llu acknowledged as duplicates; %llu unresolved, %llu refused; "
	    "%llu pushed, %llu applied, %llu lost in the kills, none twice; "
	    "%llu pushes nng did not take\n",
	    rounds, (long long) (now_ms() - began) / 1000,
	    (unsigned long long) (f.req_events + f.batch_events),
	    (unsigned long long) f.req_events,
	    (unsigned long long) f.batch_events, (unsigned long long) f.acked,
	    (unsigned long long) f.retried, (unsigned long long) timeouts,
	    (unsigned long long) overloaded, (unsigned long long) f.acked_dup,
	    (unsigned long long) f.unresolved, (unsigned long long) f.refused,
	    (unsigned long long) f.pushed,
	    (unsigned long long) f.push_applied,
	    (unsigned long long) (f.pushed - f.push_applied),
	    (unsigned long long) f.push_unsent);
	fprintf(stderr, "k1: %llu stats requests answered; %d reader slot(s) "
	                "of dead processes found before a restart, none "
	                "after\n",
	    (unsigned long long) (cl[6].attempts - cl[6].timeouts), left_total);
	print_restarts("engine", rs.ms[0], rs.n[0] < 1024 ? rs.n[0] : 1024);
	print_restarts("service", rs.ms[1], rs.n[1] < 1024 ? rs.n[1] : 1024);
	pinger_stop();
	clients_close();
	free(probes.ev);
	probes.ev = NULL;
	probes.n = probes.cap = 0;
	d_stop(&d);
}

// A process killed inside a read transaction of the store — an `mdb_dump`
// killed -9, a backup script the OOM killer took — keeps its reader slot.
// LMDB reuses no page that slot's snapshot can still see, so while the
// slot stays, every commit grows the file (4 000 events of the shop took
// it from 2 MB to 171 MB; 2 MB without the dead reader). The engine clears
// such slots as it runs, not only when it starts.
Test(kill9, a_reader_killed_inside_a_transaction_leaves_no_stale_slot)
{
	d_start(&d, d_rules(), false);
	pid_t   engine = engine_child();
	reply_t r;
	call_json(&d, "{\"business\":\"shop\",\"customer\":\"s1\","
	              "\"type\":\"page_view\"}",
	    &r);
	assert_ok(&r);
	reply_free(&r);
	pid_t reader = reader_spawn(1);
	int   listed;
	cr_assert_eq(stale_all(1, &listed), 0);
	cr_assert_geq(listed, 1, "the reader's slot is not listed");
	kill(reader, SIGKILL);
	waitpid(reader, NULL, 0);
	// the engine keeps serving; within 5 s the slot is gone
	int64_t end   = now_ms() + 5000;
	int     stale = 1;
	for (int i = 0; stale > 0 && now_ms() < end; i++) {
		char ev[160];
		snprintf(ev, sizeof(ev),
		    "{\"business\":\"shop\",\"customer\":\"s1\",\"type\":"
		    "\"page_view\",\"id\":\"s1-%d\"}",
		    i);
		call_json(&d, ev, &r);
		assert_ok(&r);
		reply_free(&r);
		stale = stale_all(1, &listed);
		sleep_ms(50);
	}
	cr_assert_eq(stale, 0, "the slot of a reader killed -9 is still in the "
	                       "store 5 s later");
	cr_assert_eq(engine_child(), engine, "the engine restarted meanwhile");
	d_stop(&d);
}

/* }====================================================== */

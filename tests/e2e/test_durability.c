// Durability: a reply means the event is on disk, whatever happens next —
// a clean restart, kill -9, or SIGTERM while clients are sending.
//
// The load comes from several REQ clients in threads, each with its own
// customer and an id on every event, counting the replies with ok=true.
// After the restart each customer's "events" counter (the shop's "*"
// handler counts every event) must equal its client's acknowledged
// events, plus at most the one request that was in flight; resending that
// one (same id) settles it, so the final count is exact.
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

static daemon_t d;

static void
setup(void)
{
	memset(&d, 0, sizeof(d));
}

static void
teardown(void)
{
	d_cleanup(&d); // kills what still runs (a failed test), removes data
}

TestSuite(durability, .init = setup, .fini = teardown);

static int64_t
events_of(const char *customer)
{
	char    q[256];
	reply_t r;
	snprintf(q, sizeof(q),
	    "{\"op\":\"get\",\"business\":\"shop\",\"customer\":\"%s\"}",
	    customer);
	call_json(&d, q, &r);
	int64_t n = 0;
	if (ok(&r)) {
		n = int_at(&r, "customer.counters.events");
	} else {
		assert_code(&r, "not_found");
	}
	reply_free(&r);
	return (n);
}

static void
event(const char *json)
{
	reply_t r;
	call_json(&d, json, &r);
	assert_ok(&r);
	reply_free(&r);
}

Test(durability, state_survives_a_clean_restart)
{
	d_start(&d, d_rules(), false);
	for (int i = 0; i < 5; i++) {
		event("{\"business\":\"shop\",\"customer\":\"r1\",\"type\":"
		      "\"page_view\",\"channel\":\"web\"}");
	}
	event("{\"business\":\"shop\",\"customer\":\"r1\",\"type\":\"purchase\","
	      "\"data\":{\"amount\":120},\"id\":\"order-1\"}");
	event("{\"business\":\"shop\",\"customer\":\"r2\",\"type\":"
	      "\"add_to_cart\"}");
	reply_t before, after, r;
	call_json(&d, "{\"op\":\"get\",\"business\":\"shop\",\"customer\":"
	              "\"r1\"}",
	    &before);
	assert_ok(&before);
	call_json(&d, "{\"op\":\"rules\",\"business\":\"shop\"}", &r);
	char version[64];
	snprintf(version, sizeof(version), "%s",
	    str_at(&r, "businesses.shop.version"));
	reply_free(&r);

	d_stop(&d); // SIGTERM, exit status 0
	d_restart(&d);

	call_json(&d, "{\"op\":\"get\",\"business\":\"shop\",\"customer\":"
	              "\"r1\"}",
	    &after);
	assert_ok(&after);
	cr_assert_eq(int_at(&after, "customer.counters.events"), 6);
	cr_assert_eq(int_at(&after, "customer.attrs.spend"), 120);
	cr_assert_str_eq(str_at(&after, "customer.journeys.onboarding.stage"),
	    "customer");
	cr_assert(msgpack_object_equal(*rat(&before, "customer"),
	              *rat(&after, "customer")),
	    "the state changed across the restart:\n%s\n%s", dump(&before),
	    dump(&after));
	reply_free(&before);
	reply_free(&after);
	call_json(&d, "{\"op\":\"get\",\"business\":\"shop\",\"customer\":"
	              "\"r2\"}",
	    &r);
	assert_ok(&r);
	cr_assert_str_eq(str_at(&r, "customer.journeys.onboarding.stage"),
	    "cart");
	reply_free(&r);
	// the dedup record survived too
	call_json(&d, "{\"business\":\"shop\",\"customer\":\"r1\",\"type\":"
	              "\"purchase\",\"data\":{\"amount\":120},\"id\":"
	              "\"order-1\"}",
	    &r);
	assert_ok(&r);
	cr_assert(bool_at(&r, "duplicate"), "%s", dump(&r));
	reply_free(&r);
	cr_assert_eq(events_of("r1"), 6);
	// the same rules, the same version
	call_json(&d, "{\"op\":\"rules\",\"business\":\"shop\"}", &r);
	cr_assert_str_eq(str_at(&r, "businesses.shop.version"), version);
	reply_free(&r);
	d_stop(&d);
}

/*
** {======================================================
** Concurrent clients
** =======================================================
*/

#define NWORKERS 4

// The workers speak REQ over plain TCP (support's sp_*): when the daemon
// dies they see the connection drop at once, and nothing resends behind
// their back (an nng REQ socket would resend after a reconnect).
typedef struct {
	int          port;
	int          id;
	int          max;       // events to send at most
	atomic_int  *acked_all; // every worker's acks
	int          stop_at;   // stop once acked_all reaches this (0: never)
	atomic_bool *stop;
	int          acked;       // replies with ok=true
	int          pending;     // the event sent without a reply, or -1
	int          error;       // what ended it: 0, or an errno value
	char         refused[32]; // the error code that stopped it, if any
} worker_t;

static void
pack_event(msgpack_sbuffer *b, int worker, int i)
{
	char cust[32], id[64];
	snprintf(cust, sizeof(cust), "w%d", worker);
	snprintf(id, sizeof(id), "w%d-%d", worker, i);
	msgpack_packer pk;
	msgpack_packer_init(&pk, b, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 5);
	msgpack_pack_str_with_body(&pk, "business", 8);
	msgpack_pack_str_with_body(&pk, "shop", 4);
	msgpack_pack_str_with_body(&pk, "customer", 8);
	msgpack_pack_str_with_body(&pk, cust, strlen(cust));
	msgpack_pack_str_with_body(&pk, "type", 4);
	msgpack_pack_str_with_body(&pk, "page_view", 9);
	msgpack_pack_str_with_body(&pk, "channel", 7);
	msgpack_pack_str_with_body(&pk, "web", 3);
	msgpack_pack_str_with_body(&pk, "id", 2);
	msgpack_pack_str_with_body(&pk, id, strlen(id));
}

// reply_verdict: 1 for ok=true, 0 for an error reply (its code copied),
// -1 for something that is not a reply at all. No cr_assert here: this
// runs on the workers' threads.
static int
reply_verdict(const void *buf, size_t len, char *code, size_t clen)
{
	msgpack_unpacked up;
	size_t           off = 0;
	msgpack_unpacked_init(&up);
	int verdict = -1;
	if (msgpack_unpack_next(&up, buf, len, &off) == MSGPACK_UNPACK_SUCCESS &&
	    up.data.type == MSGPACK_OBJECT_MAP) {
		const msgpack_object *o = at(&up.data, "ok");
		const msgpack_object *c = at(&up.data, "error.code");
		if (o != NULL && o->type == MSGPACK_OBJECT_BOOLEAN) {
			verdict = o->via.boolean ? 1 : 0;
		}
		if (verdict == 0 && c != NULL && c->type == MSGPACK_OBJECT_STR) {
			snprintf(code, clen, "%.*s", (int) c->via.str.size,
			    c->via.str.ptr);
		}
	}
	msgpack_unpacked_destroy(&up);
	return (verdict);
}

static void *
worker_main(void *arg)
{
	worker_t *w = arg;
	sp_t      c;
	w->pending = -1;
	if ((w->error = sp_connect(&c, w->port)) != 0) {
		return (NULL);
	}
	for (int i = 0; i < w->max && !atomic_load(w->stop); i++) {
		if (w->stop_at > 0 && atomic_load(w->acked_all) >= w->stop_at) {
			break;
		}
		msgpack_sbuffer b;
		msgpack_sbuffer_init(&b);
		pack_event(&b, w->id, i);
		w->pending = i;
		w->error   = sp_send(&c, b.data, b.size);
		msgpack_sbuffer_destroy(&b);
		char  *r;
		size_t rl;
		if (w->error != 0 ||
		    (w->error = sp_recv(&c, E2E_REQ_MS, &r, &rl)) != 0) {
			break; // the daemon is gone: not acknowledged
		}
		int v = reply_verdict(r, rl, w->refused, sizeof(w->refused));
		free(r);
		if (v != 1) {
			// an error reply: nothing was applied
			w->pending = -1;
			if (v < 0) {
				snprintf(w->refused, sizeof(w->refused),
				    "(not a reply)");
			}
			break;
		}
		w->pending = -1;
		w->acked++;
		atomic_fetch_add(w->acked_all, 1);
	}
	sp_close(&c);
	return (NULL);
}

typedef struct {
	worker_t    w[NWORKERS];
	pthread_t   th[NWORKERS];
	atomic_int  acked_all;
	atomic_bool stop;
} load_t;

static void
load_start(load_t *l, int max_each, int stop_at)
{
	memset(l, 0, sizeof(*l));
	for (int i = 0; i < NWORKERS; i++) {
		worker_t *w  = &l->w[i];
		w->port      = d.rep_port;
		w->id        = i;
		w->max       = max_each;
		w->acked_all = &l->acked_all;
		w->stop_at   = stop_at;
		w->stop      = &l->stop;
		cr_assert_eq(pthread_create(&l->th[i], NULL, worker_main, w), 0);
	}
}

// load_wait_acks waits, at most ms, until the workers have n acks.
static void
load_wait_acks(load_t *l, int n, int ms)
{
	for (int waited = 0; atomic_load(&l->acked_all) < n; waited += 2) {
		cr_assert_lt(waited, ms, "only %d of %d events acknowledged in "
		                         "%d ms; log: %s",
		    atomic_load(&l->acked_all), n, ms, d_log_tail(&d));
		usleep(2 * 1000);
	}
}

// load_join waits for the workers (they end by themselves once the daemon
// is gone, or once stop_at is reached).
static void
load_join(load_t *l)
{
	atomic_store(&l->stop, true);
	for (int i = 0; i < NWORKERS; i++) {
		pthread_join(l->th[i], NULL);
	}
}

// check_after_restart: every acked event is there, at most the one in
// flight more; resending that one (its id) settles it, exactly once.
static void
check_after_restart(load_t *l)
{
	int total = 0;
	for (int i = 0; i < NWORKERS; i++) {
		worker_t *w = &l->w[i];
		char      cust[16];
		snprintf(cust, sizeof(cust), "w%d", i);
		int64_t stored = events_of(cust);
		cr_assert_geq(stored, w->acked,
		    "%s: %lld events stored, %d acknowledged: an acknowledged "
		    "event was lost",
		    cust, (long long) stored, w->acked);
		cr_assert_leq(stored, w->acked + (w->pending >= 0 ? 1 : 0),
		    "%s: %lld events stored, %d acknowledged, %s in flight",
		    cust, (long long) stored, w->acked,
		    w->pending >= 0 ? "one" : "none");
		if (w->pending >= 0) {
			msgpack_sbuffer b;
			msgpack_sbuffer_init(&b);
			pack_event(&b, i, w->pending);
			reply_t r;
			call_raw(&d, b.data, b.size, &r);
			msgpack_sbuffer_destroy(&b);
			assert_ok(&r);
			cr_assert_eq(bool_at(&r, "duplicate"), stored == w->acked + 1,
			    "%s: the resent event in flight should be a "
			    "duplicate exactly when it was stored: %s",
			    cust, dump(&r));
			reply_free(&r);
			cr_assert_eq(events_of(cust), w->acked + 1);
		}
		total += w->acked;
	}
	cr_assert_eq(total, atomic_load(&l->acked_all));
}

Test(durability, kill_9_after_200_acks_loses_none)
{
	d_start(&d, d_rules(), false);
	cr_assert_gt(d.engine, 0, "serve runs its engine in a supervised "
	                          "child process");
	int rep_port = d.rep_port, http_port = d.http_port;
	// the workers stop once 200 are acknowledged: nothing is in flight
	load_t l;
	load_start(&l, 1000, 200);
	for (int i = 0; i < NWORKERS; i++) {
		pthread_join(l.th[i], NULL);
	}
	int total = atomic_load(&l.acked_all);
	cr_assert_geq(total, 200, "the workers stopped early: %d acks; log: "
	                          "%s",
	    total, d_log_tail(&d));
	for (int i = 0; i < NWORKERS; i++) {
		cr_assert_eq(l.w[i].pending, -1);
		cr_assert_eq(l.w[i].refused[0], '\0', "worker %d: %s", i,
		    l.w[i].refused);
		cr_assert_eq(l.w[i].error, 0, "worker %d: %s", i,
		    strerror(l.w[i].error));
	}
	d_kill9(&d); // asserts the engine died with its supervisor
	cr_assert(port_is_free(rep_port), "port %d is still held after kill "
	                                  "-9",
	    rep_port);
	cr_assert(port_is_free(http_port), "port %d is still held after kill "
	                                   "-9",
	    http_port);
	d_restart(&d);
	int sum = 0;
	for (int i = 0; i < NWORKERS; i++) {
		char cust[16];
		snprintf(cust, sizeof(cust), "w%d", i);
		int64_t stored = events_of(cust);
		cr_assert_eq(stored, l.w[i].acked,
		    "%s: %lld stored after kill -9, %d acknowledged", cust,
		    (long long) stored, l.w[i].acked);
		sum += (int) stored;
	}
	cr_assert_eq(sum, total);
	d_stop(&d);
}

Test(durability, kill_9_while_clients_send_loses_no_ack)
{
	d_start(&d, d_rules(), false);
	load_t l;
	load_start(&l, 1000000, 0);
	load_wait_acks(&l, 200, 20000);
	d_kill9(&d); // mid-stream: requests are in flight
	load_join(&l);
	d_restart(&d);
	check_after_restart(&l);
	d_stop(&d);
}

Test(durability, sigterm_while_clients_send_loses_no_ack)
{
	d_start(&d, d_rules(), false);
	load_t l;
	load_start(&l, 1000000, 0);
	load_wait_acks(&l, 200, 20000);
	d_stop(&d); // SIGTERM mid-stream; asserts exit status 0
	load_join(&l);
	for (int i = 0; i < NWORKERS; i++) {
		// a request refused while stopping is refused as overloaded
		cr_assert(l.w[i].refused[0] == '\0' ||
		        strcmp(l.w[i].refused, "overloaded") == 0,
		    "worker %d was refused with %s", i, l.w[i].refused);
	}
	d_restart(&d);
	check_after_restart(&l);
	d_stop(&d);
}

Test(durability, ids_stay_applied_once_across_kill_9)
{
	d_start(&d, d_rules(), false);
	const char *ev = "{\"business\":\"shop\",\"customer\":\"dd\",\"type\":"
	                 "\"page_view\",\"id\":\"same\"}";
	event(ev);
	d_kill9(&d);
	d_restart(&d);
	reply_t r;
	call_json(&d, ev, &r);
	assert_ok(&r);
	cr_assert(bool_at(&r, "duplicate"), "%s", dump(&r));
	reply_free(&r);
	cr_assert_eq(events_of("dd"), 1);
	d_stop(&d);
}

/* }====================================================== */

Test(durability, a_second_daemon_on_the_same_data_is_refused)
{
	d_start(&d, d_rules(), false);
	event("{\"business\":\"shop\",\"customer\":\"one\",\"type\":\"page_view\"}");
	// a second serve on the same folder, on other ports: refused at once,
	// saying who holds it (it would serve for ever without the lock)
	int p[4];
	for (int i = 0; i < 4; i++) {
		p[i] = d.rep_port + 1000 + i;
	}
	char cmd[2048], log[128], out[2048] = "";
	snprintf(log, sizeof(log), "%s.second", d.log);
	snprintf(cmd, sizeof(cmd),
	    "timeout 10 '%s' serve --rules '%s' --data '%s' "
	    "--rep tcp://127.0.0.1:%d --pull tcp://127.0.0.1:%d "
	    "--pub tcp://127.0.0.1:%d --http http://127.0.0.1:%d "
	    ">/dev/null 2>'%s'",
	    getenv("CHOREO_BIN"), d_rules(), d.data, p[0], p[1], p[2], p[3],
	    log);
	int st = system(cmd);
	FILE *f = fopen(log, "r");
	if (f != NULL) {
		size_t n = fread(out, 1, sizeof(out) - 1, f);
		out[n] = '\0';
		fclose(f);
	}
	unlink(log);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1,
	    "the second daemon should exit 1 at once, got status %d: %s", st,
	    out);
	char want[64];
	snprintf(want, sizeof(want), "(pid %d)", (int) d.pid);
	cr_assert_not_null(strstr(out, "is already served by another choreo serve"),
	    "%s", out);
	cr_assert_not_null(strstr(out, want), "%s", out);
	// the first serves on, and once it stops, the folder is free again
	event("{\"business\":\"shop\",\"customer\":\"one\",\"type\":\"page_view\"}");
	d_stop(&d);
	d_restart(&d);
	cr_assert_eq(events_of("one"), 2);
}

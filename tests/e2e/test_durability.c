// Durability: a reply means the event is on disk, whatever happens next.
#include <criterion/criterion.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
	d_cleanup(&d);
}

TestSuite(durability, .init = setup, .fini = teardown);

static int64_t
events_of(const char *customer)
{
	char    q[256];
	reply_t r;
	snprintf(q, sizeof(q),
	    "{\"op\":\"get\",\"business\":\"shop\",\"customer\":\"%s\"}", customer);
	call_json(&d, q, &r);
	int64_t n = ok(&r) ? int_at(&r, "customer.counters.events") : 0;
	reply_free(&r);
	return (n);
}

Test(durability, state_survives_a_clean_restart)
{
	d_start(&d, getenv("CHOREO_E2E_RULES"), false);
	reply_t r;
	for (int i = 0; i < 5; i++) {
		call_json(&d, "{\"business\":\"shop\",\"customer\":\"r1\",\"type\":\"page_view\"}", &r);
		cr_assert(ok(&r));
		reply_free(&r);
	}
	d_stop(&d);
	d_start(&d, getenv("CHOREO_E2E_RULES"), true);
	cr_assert_eq(events_of("r1"), 5);
	d_stop(&d);
}

// Clients that send events as fast as replies come, counting acks.
typedef struct {
	daemon_t   *d;
	int         id;
	int         max;
	atomic_int *stop;
	int         acked;
} client_t;

static void *
client_main(void *arg)
{
	client_t  *c = arg;
	nng_socket s;
	if (nng_req0_open(&s) != 0 || nng_dial(s, c->d->rep, NULL, 0) != 0) {
		return (NULL);
	}
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 3000);
	for (int i = 0; i < c->max && !atomic_load(c->stop); i++) {
		msgpack_sbuffer b;
		msgpack_packer  pk;
		msgpack_sbuffer_init(&b);
		msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
		char cust[32], id[64];
		snprintf(cust, sizeof(cust), "k%d", c->id);
		snprintf(id, sizeof(id), "k%d-%d", c->id, i);
		msgpack_pack_map(&pk, 4);
		msgpack_pack_str(&pk, 8);
		msgpack_pack_str_body(&pk, "business", 8);
		msgpack_pack_str(&pk, 4);
		msgpack_pack_str_body(&pk, "shop", 4);
		msgpack_pack_str(&pk, 8);
		msgpack_pack_str_body(&pk, "customer", 8);
		msgpack_pack_str(&pk, strlen(cust));
		msgpack_pack_str_body(&pk, cust, strlen(cust));
		msgpack_pack_str(&pk, 4);
		msgpack_pack_str_body(&pk, "type", 4);
		msgpack_pack_str(&pk, 9);
		msgpack_pack_str_body(&pk, "page_view", 9);
		msgpack_pack_str(&pk, 2);
		msgpack_pack_str_body(&pk, "id", 2);
		msgpack_pack_str(&pk, strlen(id));
		msgpack_pack_str_body(&pk, id, strlen(id));
		int rv = nng_send(s, b.data, b.size, 0);
		msgpack_sbuffer_destroy(&b);
		char  *r;
		size_t rl;
		if (rv != 0 || nng_recv(s, &r, &rl, NNG_FLAG_ALLOC) != 0) {
			break; // the daemon is gone: this one is not acknowledged
		}
		// "ok":true appears as a3 6f 6b c3 in the reply
		if (memmem(r, rl, "\xa2ok\xc3", 4) != NULL) {
			c->acked++;
		}
		nng_free(r, rl);
	}
	nng_close(s);
	return (NULL);
}

static void
run_clients(int n, int max, int stop_after_ms, void (*stopper)(daemon_t *),
    client_t *cs)
{
	pthread_t  th[16];
	atomic_int stop = 0;
	for (int i = 0; i < n; i++) {
		cs[i] = (client_t) { &d, i, max, &stop, 0 };
		pthread_create(&th[i], NULL, client_main, &cs[i]);
	}
	if (stopper != NULL) {
		usleep((useconds_t) stop_after_ms * 1000);
		stopper(&d);
		atomic_store(&stop, 1); // a client waiting for a reply stops at
		                        // its receive timeout
	}
	for (int i = 0; i < n; i++) {
		pthread_join(th[i], NULL);
	}
}

static void
kill9_only(daemon_t *x)
{
	d_kill9(x);
}

static void
term_only(daemon_t *x)
{
	d_stop(x);
}

Test(durability, kill_9_loses_no_acknowledged_event)
{
	d_start(&d, getenv("CHOREO_E2E_RULES"), false);
	client_t cs[4];
	run_clients(4, 100000, 1500, kill9_only, cs);
	int total = 0;
	for (int i = 0; i < 4; i++) {
		total += cs[i].acked;
	}
	cr_assert_gt(total, 200, "the clients got %d acks before the kill", total);
	d_start(&d, getenv("CHOREO_E2E_RULES"), true);
	for (int i = 0; i < 4; i++) {
		char cust[16];
		snprintf(cust, sizeof(cust), "k%d", i);
		int64_t stored = events_of(cust);
		// every ack is on disk; at most one more (applied, reply lost)
		cr_assert_geq(stored, cs[i].acked, "%s: %lld stored < %d acked",
		    cust, (long long) stored, cs[i].acked);
		cr_assert_leq(stored, cs[i].acked + 1);
	}
	d_stop(&d);
}

Test(durability, sigterm_under_load_loses_nothing_acknowledged)
{
	d_start(&d, getenv("CHOREO_E2E_RULES"), false);
	client_t cs[4];
	run_clients(4, 100000, 800, term_only, cs);
	d_start(&d, getenv("CHOREO_E2E_RULES"), true);
	for (int i = 0; i < 4; i++) {
		char cust[16];
		snprintf(cust, sizeof(cust), "k%d", i);
		int64_t stored = events_of(cust);
		cr_assert_geq(stored, cs[i].acked);
		cr_assert_leq(stored, cs[i].acked + 1);
	}
	d_stop(&d);
}

Test(durability, resent_ids_are_applied_once_across_restarts)
{
	d_start(&d, getenv("CHOREO_E2E_RULES"), false);
	const char *ev = "{\"business\":\"shop\",\"customer\":\"dd\",\"type\":\"page_view\",\"id\":\"same\"}";
	reply_t r;
	call_json(&d, ev, &r);
	reply_free(&r);
	d_kill9(&d);
	d_start(&d, getenv("CHOREO_E2E_RULES"), true);
	call_json(&d, ev, &r);
	cr_assert(bool_at(&r, "duplicate"));
	reply_free(&r);
	cr_assert_eq(events_of("dd"), 1);
	d_stop(&d);
}

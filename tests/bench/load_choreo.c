// bench_load against choreo: closed loop over REQ (one socket per client,
// --depth contexts each, driven by nng callbacks or by one thread per
// context; or the same protocol by hand, --io raw), open loop over PUSH,
// and populate with the batch op.
#include "load.h"

#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/req.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
** {======================================================
** Requests
** =======================================================
*/

static void
ps(msgpack_packer *pk, const char *s)
{
	size_t n = strlen(s);
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

static void
pcust(msgpack_packer *pk, uint64_t i)
{
	char buf[32];
	int  n = snprintf(buf, sizeof(buf), "c%llu", (unsigned long long) i);
	msgpack_pack_str(pk, (size_t) n);
	msgpack_pack_str_body(pk, buf, (size_t) n);
}

// {business, customer, type, channel=web, limit=3[, data={action, outcome}]}
void
ld_choreo_event(msgpack_packer *pk, uint64_t k)
{
	ld_event e;
	ld_event_gen(k, &e);
	bool resp = ld.is_response[e.type];
	msgpack_pack_map(pk, resp ? 6 : 5);
	ps(pk, "business");
	ps(pk, ld.business);
	ps(pk, "customer");
	pcust(pk, e.customer);
	ps(pk, "type");
	ps(pk, ld.types[e.type]);
	ps(pk, "channel");
	ps(pk, "web");
	ps(pk, "limit");
	msgpack_pack_int(pk, 3);
	if (resp) {
		char a[8];
		snprintf(a, sizeof(a), "a%02d", e.action);
		ps(pk, "data");
		msgpack_pack_map(pk, 2);
		ps(pk, "action");
		ps(pk, a);
		ps(pk, "outcome");
		ps(pk, ld_outcomes[e.outcome]);
	}
}

// the profile event of customer i: its ten attributes, no decision
static void
pack_profile(msgpack_packer *pk, uint64_t i)
{
	ld_profile p;
	ld_profile_of(i, &p);
	msgpack_pack_map(pk, 5);
	ps(pk, "business");
	ps(pk, ld.business);
	ps(pk, "customer");
	pcust(pk, i);
	ps(pk, "type");
	ps(pk, "profile");
	ps(pk, "decide");
	msgpack_pack_false(pk);
	ps(pk, "data");
	msgpack_pack_map(pk, 10);
	ps(pk, "age");
	msgpack_pack_int(pk, p.age);
	ps(pk, "segment");
	ps(pk, p.segment);
	ps(pk, "region");
	ps(pk, p.region);
	ps(pk, "plan");
	ps(pk, p.plan);
	ps(pk, "tenure");
	msgpack_pack_int(pk, p.tenure);
	ps(pk, "country");
	ps(pk, p.country);
	ps(pk, "language");
	ps(pk, p.language);
	ps(pk, "device");
	ps(pk, p.device);
	ps(pk, "newsletter");
	if (p.newsletter) {
		msgpack_pack_true(pk);
	} else {
		msgpack_pack_false(pk);
	}
	ps(pk, "score");
	msgpack_pack_int(pk, p.score);
}

// {op=batch, events=[the profile events of unit k]}
void
ld_choreo_batch(msgpack_packer *pk, uint64_t k)
{
	uint64_t n = ld_unit_size(k);
	msgpack_pack_map(pk, 2);
	ps(pk, "op");
	ps(pk, "batch");
	ps(pk, "events");
	msgpack_pack_array(pk, (size_t) n);
	for (uint64_t i = 0; i < n; i++) {
		pack_profile(pk, k * LD_POP_BATCH + i);
	}
}

/*
** {======================================================
** Replies: {ok, error={code, message}, results=[...]}
** =======================================================
*/

typedef struct {
	bool        ok;
	const char *code, *msg;
	uint32_t    codelen, msglen;
	bool        has_results;
	ld_mp       results;
} creply;

static bool
read_reply(ld_mp *r, creply *o)
{
	uint32_t n;
	bool     seen_ok = false;
	*o               = (creply) { .code = "", .msg = "" };
	if (!ld_mp_map(r, &n)) {
		return (false);
	}
	for (uint32_t i = 0; i < n; i++) {
		const char *key;
		uint32_t    kn, m;
		if (!ld_mp_str(r, &key, &kn)) {
			if (!ld_mp_skip(r) || !ld_mp_skip(r)) {
				return (false);
			}
			continue;
		}
		if (ld_mp_eq(key, kn, "ok")) {
			if (!ld_mp_bool(r, &o->ok)) {
				return (false);
			}
			seen_ok = true;
		} else if (ld_mp_eq(key, kn, "error") && ld_mp_map(r, &m)) {
			for (uint32_t j = 0; j < m; j++) {
				const char *ek, *ev;
				uint32_t    ekn, evn;
				if (ld_mp_str(r, &ek, &ekn) && ld_mp_str(r, &ev, &evn)) {
					if (ld_mp_eq(ek, ekn, "code")) {
						o->code    = ev;
						o->codelen = evn;
					} else if (ld_mp_eq(ek, ekn, "message")) {
						o->msg    = ev;
						o->msglen = evn;
					}
				} else if (r->bad || !ld_mp_skip(r)) {
					return (false);
				}
			}
		} else if (ld_mp_eq(key, kn, "results")) {
			o->results     = *r;
			o->has_results = true;
			if (!ld_mp_skip(r)) {
				return (false);
			}
		} else if (!ld_mp_skip(r)) {
			return (false);
		}
	}
	return (seen_ok && !r->bad);
}

static void
bad_reply(ld_stats *st, uint64_t k, uint64_t n, const char *why)
{
	ld_stats_err(st, k, "bad_reply", 9, why, strlen(why), n);
}

void
ld_choreo_reply(ld_stats *st, uint64_t k, const void *p, size_t len,
    int64_t t0, int64_t t1)
{
	ld_mp    r;
	creply   o;
	uint64_t want = ld.populate ? ld_unit_size(k) : 1;
	ld_mp_init(&r, p, len);
	if (!read_reply(&r, &o)) {
		bad_reply(st, k, want, "a reply without ok, or not msgpack");
	} else if (!o.ok) {
		ld_stats_err(st, k, o.code, o.codelen, o.msg, o.msglen, want);
	} else if (ld.populate) {
		uint32_t m = 0;
		if (!o.has_results || !ld_mp_array(&o.results, &m)) {
			bad_reply(st, k, want, "a batch reply without results");
			m = 0;
		}
		for (uint32_t i = 0; i < m; i++) {
			creply e;
			if (!read_reply(&o.results, &e)) {
				bad_reply(st, k, m - i, "a batch result without ok");
				break;
			}
			if (!e.ok) {
				ld_stats_err(st, k, e.code, e.codelen, e.msg, e.msglen, 1);
			}
		}
		if (m != 0 && m != want) {
			bad_reply(st, k, m < want ? want - m : m - want,
			    "a batch reply with another number of results");
		}
	}
	ld_stats_done(st, k, t0, t1, want);
}

/*
** {======================================================
** req: one socket per client, depth contexts on each
** =======================================================
*/

typedef struct {
	nng_ctx         ctx;
	nng_aio        *aio;
	bool            sending;
	uint64_t        k;
	int64_t         t0;
	msgpack_sbuffer sb;
	msgpack_packer  pk;
	ld_stats       *st;
	pthread_t       th;
} cctx;

static _Atomic int active;

static bool
none_active(void *arg)
{
	(void) arg;
	return (atomic_load(&active) == 0);
}

static void
c_fail(cctx *c, int rv)
{
	uint64_t    n    = ld.populate ? ld_unit_size(c->k) : 1;
	const char *code = rv == NNG_ETIMEDOUT ? "timeout" : nng_strerror(rv);
	ld_stats_err(c->st, c->k, code, strlen(code), NULL, 0, n);
	ld_stats_done(c->st, c->k, -1, ld_now_ns(), n);
	// a reply that never comes (the server died: REQ never resends here)
	// or a socket that fails ends the run
	if (!atomic_exchange(&ld_r.abort, true)) {
		fprintf(stderr, "bench_load: %s: %s\n", ld.addr, nng_strerror(rv));
	}
}

// c_build fills m (or a new message) with request k.
static nng_msg *
c_build(cctx *c, uint64_t k, nng_msg *m)
{
	c->sb.size = 0;
	if (ld.populate) {
		ld_choreo_batch(&c->pk, k);
	} else {
		ld_choreo_event(&c->pk, k);
	}
	if (m == NULL) {
		if (nng_msg_alloc(&m, c->sb.size) != 0) {
			fprintf(stderr, "bench_load: out of memory\n");
			exit(2);
		}
		memcpy(nng_msg_body(m), c->sb.data, c->sb.size);
	} else { // the reply's message, reused: no allocation
		nng_msg_header_clear(m);
		nng_msg_clear(m);
		if (nng_msg_append(m, c->sb.data, c->sb.size) != 0) {
			fprintf(stderr, "bench_load: out of memory\n");
			exit(2);
		}
	}
	return (m);
}

// c_issue sends the next request, reusing m, or retires the context.
static void
c_issue(cctx *c, nng_msg *m)
{
	uint64_t k;
	if (!ld_take(&k)) {
		if (m != NULL) {
			nng_msg_free(m);
		}
		atomic_fetch_sub(&active, 1);
		return;
	}
	m          = c_build(c, k, m);
	c->k       = k;
	c->sending = true;
	nng_aio_set_msg(c->aio, m);
	c->t0 = ld_now_ns();
	nng_ctx_send(c->ctx, c->aio);
}

static void
c_cb(void *arg)
{
	cctx *c  = arg;
	int   rv = nng_aio_result(c->aio);
	if (c->sending) {
		if (rv != 0) {
			nng_msg_free(nng_aio_get_msg(c->aio));
			c_fail(c, rv);
			c_issue(c, NULL);
			return;
		}
		c->sending = false;
		nng_ctx_recv(c->ctx, c->aio);
		return;
	}
	int64_t t1 = ld_now_ns();
	if (rv != 0) {
		c_fail(c, rv);
		c_issue(c, NULL);
		return;
	}
	nng_msg *m = nng_aio_get_msg(c->aio);
	ld_choreo_reply(c->st, c->k, nng_msg_body(m), nng_msg_len(m), c->t0, t1);
	c_issue(c, m);
}

// the other way: a thread per context, waiting on its aio
static void *
c_thread(void *arg)
{
	cctx    *c = arg;
	nng_msg *m = NULL;
	while (ld_take(&c->k)) {
		m = c_build(c, c->k, m);
		nng_aio_set_msg(c->aio, m);
		c->t0 = ld_now_ns();
		nng_ctx_send(c->ctx, c->aio);
		nng_aio_wait(c->aio);
		int rv = nng_aio_result(c->aio);
		if (rv != 0) {
			nng_msg_free(m);
			m = NULL;
			c_fail(c, rv);
			continue;
		}
		nng_ctx_recv(c->ctx, c->aio);
		nng_aio_wait(c->aio);
		int64_t t1 = ld_now_ns();
		m          = NULL;
		if ((rv = nng_aio_result(c->aio)) != 0) {
			c_fail(c, rv);
			continue;
		}
		m = nng_aio_get_msg(c->aio);
		ld_choreo_reply(c->st, c->k, nng_msg_body(m), nng_msg_len(m), c->t0, t1);
	}
	if (m != NULL) {
		nng_msg_free(m);
	}
	atomic_fetch_sub(&active, 1);
	return (NULL);
}

static int
dial(nng_socket s, const char *url, const char *what)
{
	// reconnect quickly; never resend a request (an event would be
	// applied twice: the events carry no id)
	nng_socket_set_ms(s, NNG_OPT_RECONNMINT, 10);
	nng_socket_set_ms(s, NNG_OPT_RECONNMAXT, 200);
	int rv = nng_dial(s, url, NULL, 0); // blocking: wait for the connection
	if (rv != 0) {
		fprintf(stderr, "bench_load: cannot connect %s to %s: %s\n", what,
		    url, nng_strerror(rv));
	}
	return (rv);
}

static int
run_req(ld_result *res)
{
	int         n     = ld.clients * ld.depth;
	nng_socket *socks = calloc((size_t) ld.clients, sizeof(nng_socket));
	cctx       *cx    = calloc((size_t) n, sizeof(cctx));
	res->st           = calloc((size_t) n, sizeof(ld_stats));
	res->nst          = n;
	if (socks == NULL || cx == NULL || res->st == NULL) {
		fprintf(stderr, "bench_load: out of memory\n");
		free(socks);
		free(cx);
		return (2);
	}
	int rc = 0, nsock = 0, nctx = 0;
	for (int i = 0; i < ld.clients && rc == 0; i++) {
		if ((rc = nng_req0_open(&socks[i])) != 0) {
			fprintf(stderr, "bench_load: req: %s\n", nng_strerror(rc));
			break;
		}
		nsock++;
		nng_socket_set_ms(socks[i], NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
		if ((rc = dial(socks[i], ld.addr, "req")) != 0) {
			break;
		}
		for (int j = 0; j < ld.depth && rc == 0; j++) {
			cctx *c = &cx[nctx];
			c->st   = &res->st[nctx];
			msgpack_sbuffer_init(&c->sb);
			msgpack_packer_init(&c->pk, &c->sb, msgpack_sbuffer_write);
			if ((rc = nng_ctx_open(&c->ctx, socks[i])) != 0) {
				fprintf(stderr, "bench_load: req context: %s\n", nng_strerror(rc));
				msgpack_sbuffer_destroy(&c->sb);
				break;
			}
			if ((rc = nng_aio_alloc(&c->aio, ld.io == LD_IO_THREADS ? NULL : c_cb, c)) != 0) {
				fprintf(stderr, "bench_load: aio: %s\n", nng_strerror(rc));
				nng_ctx_close(c->ctx);
				msgpack_sbuffer_destroy(&c->sb);
				break;
			}
			nctx++;
			nng_ctx_set_ms(c->ctx, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
			nng_aio_set_timeout(c->aio, ld.timeout_ms);
		}
	}
	if (rc == 0) {
		ld_info("bench_load: %d client(s) connected to %s, %d context(s) each",
		    ld.clients, ld.addr, ld.depth);
		atomic_store(&active, n);
		ld_r.t_first = ld_now_ns();
		for (int i = 0; i < n; i++) {
			if (ld.io == LD_IO_THREADS) {
				if (pthread_create(&cx[i].th, NULL, c_thread, &cx[i]) != 0) {
					fprintf(stderr, "bench_load: cannot start thread %d\n", i);
					exit(2);
				}
			} else {
				c_issue(&cx[i], NULL);
			}
		}
		ld_wait(none_active, NULL);
		for (int i = 0; i < n && ld.io == LD_IO_THREADS; i++) {
			pthread_join(cx[i].th, NULL);
		}
	}
	for (int i = 0; i < nctx; i++) {
		nng_aio_free(cx[i].aio); // waits for a callback still running
		nng_ctx_close(cx[i].ctx);
		msgpack_sbuffer_destroy(&cx[i].sb);
	}
	for (int i = 0; i < nsock; i++) {
		nng_close(socks[i]);
	}
	free(cx);
	free(socks);
	return (rc == 0 ? 0 : 2);
}

/*
** {======================================================
** push: open loop at --rate, optionally counting decisions on pub
** =======================================================
*/

typedef struct {
	nng_socket      sock;
	int             fd; // --io raw: the SP socket by hand
	ld_buf          w;
	msgpack_sbuffer sb;
	msgpack_packer  pk;
	ld_stats       *st;
} pclient;

static _Atomic bool     sub_stop;
static _Atomic uint64_t sub_received;
static _Atomic int64_t  sub_last;


static bool
p_flush(pclient *p)
{
	errno = 0;
	if (p->w.n > 0 && !ld_write_all(p->fd, p->w.p, p->w.n)) {
		ld_sp_fatal("write");
		return (false);
	}
	p->w.n = 0;
	return (true);
}

static void *
p_thread(void *arg)
{
	pclient *p    = arg;
	double   rate = ld.rate / ld.clients; // this client's share
	int64_t  t0   = ld_now_ns();
	uint64_t sent = 0, k;
	bool     raw  = ld.io == LD_IO_RAW;
	for (;;) {
		if (rate > 0) { // the schedule, not the replies, sets the pace
			int64_t due = t0 + (int64_t) ((double) sent * 1e9 / rate);
			int64_t now = ld_now_ns();
			if (due > now) {
				// wake at most every millisecond, then send what is due
				if (raw && !p_flush(p)) {
					break;
				}
				ld_sleep_ns(due - now > 1000000 ? due - now : 1000000);
			}
		}
		if (!ld_take(&k)) {
			break;
		}
		p->sb.size = 0;
		ld_choreo_event(&p->pk, k);
		if (raw) { // a 64-bit big-endian length, the body
			unsigned char len[8];
			ld_put_be(len, p->sb.size, 8);
			ld_buf_put(&p->w, len, 8);
			ld_buf_put(&p->w, p->sb.data, p->sb.size);
			if (p->w.n >= 65536 && !p_flush(p)) {
				break;
			}
		} else {
			int rv = nng_send(p->sock, p->sb.data, p->sb.size, 0);
			if (rv != 0) {
				const char *code = nng_strerror(rv);
				ld_stats_err(p->st, k, code, strlen(code), NULL, 0, 1);
				if (!atomic_exchange(&ld_r.abort, true)) {
					fprintf(stderr, "bench_load: push: %s\n", code);
				}
			}
		}
		ld_stats_done(p->st, k, -1, ld_now_ns(), 1);
		sent++;
	}
	if (raw) {
		p_flush(p);
		p->st->t_last = ld_now_ns(); // the last bytes are out
	}
	ld_thread_done();
	return (NULL);
}

static void *
s_thread(void *arg)
{
	nng_socket s = *(nng_socket *) arg;
	while (!atomic_load(&sub_stop)) {
		char  *buf;
		size_t n;
		int    rv = nng_recv(s, &buf, &n, NNG_FLAG_ALLOC);
		if (rv == NNG_ETIMEDOUT) {
			continue;
		}
		if (rv != 0) {
			fprintf(stderr, "bench_load: sub: %s\n", nng_strerror(rv));
			break;
		}
		atomic_fetch_add(&sub_received, 1);
		atomic_store(&sub_last, ld_now_ns());
		nng_free(buf, n);
	}
	return (NULL);
}

static int
run_push(ld_result *res)
{
	pclient   *pc = calloc((size_t) ld.clients, sizeof(pclient));
	res->st       = calloc((size_t) ld.clients, sizeof(ld_stats));
	res->nst      = ld.clients;
	res->no_latency = true;
	if (pc == NULL || res->st == NULL) {
		fprintf(stderr, "bench_load: out of memory\n");
		free(pc);
		return (2);
	}
	nng_socket sub;
	pthread_t  sth;
	int        rc = 0, np = 0;
	bool       subbed = false;
	if (ld.sub != NULL) {
		char topic[128];
		snprintf(topic, sizeof(topic), "choreo/%s/decision", ld.business);
		if ((rc = nng_sub0_open(&sub)) != 0) {
			fprintf(stderr, "bench_load: sub: %s\n", nng_strerror(rc));
			free(pc);
			return (2);
		}
		nng_socket_set(sub, NNG_OPT_SUB_SUBSCRIBE, topic, strlen(topic));
		nng_socket_set_ms(sub, NNG_OPT_RECVTIMEO, 100);
		nng_socket_set_size(sub, NNG_OPT_RECVBUF, 8192);
		if (dial(sub, ld.sub, "sub") != 0) {
			nng_close(sub);
			free(pc);
			return (2);
		}
		subbed = true;
		ld_sleep_ns(200 * 1000000); // let the subscription reach pub
		pthread_create(&sth, NULL, s_thread, &sub);
	}
	for (int i = 0; i < ld.clients && rc == 0; i++) {
		pclient *p = &pc[i];
		p->st      = &res->st[i];
		p->fd      = -1;
		msgpack_sbuffer_init(&p->sb);
		msgpack_packer_init(&p->pk, &p->sb, msgpack_sbuffer_write);
		np++;
		if (ld.io == LD_IO_RAW) { // PUSH 0x0050 to PULL 0x0051
			rc = (p->fd = ld_sp_connect(0x50, 0x51)) < 0 ? 2 : 0;
			continue;
		}
		if ((rc = nng_push0_open(&p->sock)) != 0) {
			fprintf(stderr, "bench_load: push: %s\n", nng_strerror(rc));
			break;
		}
		nng_socket_set_ms(p->sock, NNG_OPT_SENDTIMEO, ld.timeout_ms);
		rc = dial(p->sock, ld.addr, "push");
	}
	if (rc == 0) {
		ld_info("bench_load: %d push client(s) connected to %s, %s", ld.clients,
		    ld.addr, ld.rate > 0 ? "paced" : "unpaced");
		ld_run_threads(ld.clients, p_thread, pc, sizeof(pc[0]));
	}
	if (subbed) {
		// the decisions still on their way: wait until every event is
		// accounted for, or nothing came for 2 s
		uint64_t sent = atomic_load(&ld_r.next);
		if (sent > ld_r.limit) {
			sent = ld_r.limit;
		}
		int64_t idle_since = ld_now_ns();
		uint64_t seen      = atomic_load(&sub_received);
		while (rc == 0 && seen < sent &&
		    ld_now_ns() - idle_since < 2000000000) {
			ld_sleep_ns(20 * 1000000);
			uint64_t now_seen = atomic_load(&sub_received);
			if (now_seen != seen) {
				seen       = now_seen;
				idle_since = ld_now_ns();
			}
		}
		atomic_store(&sub_stop, true);
		pthread_join(sth, NULL);
		nng_close(sub);
		res->received = atomic_load(&sub_received);
		res->t_recv   = atomic_load(&sub_last);
	} else {
		ld_sleep_ns(200 * 1000000); // nng does not linger on close: let the
		                            // queued messages go
	}
	for (int i = 0; i < np; i++) {
		if (ld.io == LD_IO_RAW) {
			if (pc[i].fd >= 0) {
				close(pc[i].fd);
			}
			ld_buf_free(&pc[i].w);
		} else if (nng_socket_id(pc[i].sock) > 0) {
			nng_close(pc[i].sock);
		}
		msgpack_sbuffer_destroy(&pc[i].sb);
	}
	free(pc);
	return (rc == 0 ? 0 : 2);
}

int
ld_run_choreo(ld_result *res)
{
	return (ld.push ? run_push(res) : ld.io == LD_IO_RAW ? ld_run_sp_req(res)
	                                                     : run_req(res));
}

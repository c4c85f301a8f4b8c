// bench_load against Tarantool 2.x: IPROTO by hand over blocking TCP, one
// thread per connection, guest access (the server script grants it). Each
// event is CALL bench_event(customer, type, action, outcome); a connection
// keeps --depth calls in flight and matches the replies by sync.
#include "load.h"

#include <errno.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
	IPROTO_REQUEST_TYPE  = 0x00,
	IPROTO_SYNC          = 0x01,
	IPROTO_CALL          = 0x0a,
	IPROTO_TUPLE         = 0x21,
	IPROTO_FUNCTION_NAME = 0x22,
	IPROTO_DATA          = 0x30,
	IPROTO_ERROR_24      = 0x31, // the error message
	IPROTO_TYPE_ERROR    = 0x8000,
};

typedef struct {
	int             fd;
	ld_buf          w, r;
	msgpack_packer  pk; // into w
	ld_stats       *st;
	uint64_t        seq;
	// the calls in flight: slot i has sync (seq << 16 | i)
	uint64_t       *sync, *k;
	int64_t        *t0;
	bool           *busy;
} tconn;

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

// call_begin writes the length prefix (filled by call_end), the header
// and the body up to the tuple's array header.
static size_t
call_begin(tconn *c, uint64_t sync, const char *fn, uint32_t nargs)
{
	size_t at = c->w.n;
	ld_buf_put(&c->w, "\xce\0\0\0\0", 5);
	msgpack_pack_map(&c->pk, 2);
	msgpack_pack_uint8(&c->pk, IPROTO_REQUEST_TYPE);
	msgpack_pack_uint8(&c->pk, IPROTO_CALL);
	msgpack_pack_uint8(&c->pk, IPROTO_SYNC);
	msgpack_pack_uint64(&c->pk, sync);
	msgpack_pack_map(&c->pk, 2);
	msgpack_pack_uint8(&c->pk, IPROTO_FUNCTION_NAME);
	ps(&c->pk, fn);
	msgpack_pack_uint8(&c->pk, IPROTO_TUPLE);
	msgpack_pack_array(&c->pk, nargs);
	return (at);
}

static void
call_end(tconn *c, size_t at)
{
	uint32_t       n = (uint32_t) (c->w.n - at - 5);
	unsigned char *p = (unsigned char *) c->w.p + at + 1;
	p[0]             = (unsigned char) (n >> 24);
	p[1]             = (unsigned char) (n >> 16);
	p[2]             = (unsigned char) (n >> 8);
	p[3]             = (unsigned char) n;
}

// bench_event(customer, type, action or "", outcome or "")
static void
call_event(tconn *c, uint64_t sync, uint64_t k)
{
	ld_event e;
	ld_event_gen(k, &e);
	size_t at = call_begin(c, sync, "bench_event", 4);
	pcust(&c->pk, e.customer);
	ps(&c->pk, ld.types[e.type]);
	if (ld.is_response[e.type]) {
		char a[8];
		snprintf(a, sizeof(a), "a%02d", e.action);
		ps(&c->pk, a);
		ps(&c->pk, ld_outcomes[e.outcome]);
	} else {
		ps(&c->pk, "");
		ps(&c->pk, "");
	}
	call_end(c, at);
}

// bench_populate(customer, age, segment, region, plan, tenure, country,
// language, device, newsletter, score)
static void
call_profile(tconn *c, uint64_t sync, uint64_t i)
{
	ld_profile p;
	ld_profile_of(i, &p);
	size_t at = call_begin(c, sync, "bench_populate", 11);
	pcust(&c->pk, i);
	msgpack_pack_int(&c->pk, p.age);
	ps(&c->pk, p.segment);
	ps(&c->pk, p.region);
	ps(&c->pk, p.plan);
	msgpack_pack_int(&c->pk, p.tenure);
	ps(&c->pk, p.country);
	ps(&c->pk, p.language);
	ps(&c->pk, p.device);
	if (p.newsletter) {
		msgpack_pack_true(&c->pk);
	} else {
		msgpack_pack_false(&c->pk);
	}
	msgpack_pack_int(&c->pk, p.score);
	call_end(c, at);
}

/*
** {======================================================
** Replies: 0xce len, header {0x00: code, 0x01: sync}, body
** {0x30: data} or {0x31: message}
** =======================================================
*/

typedef struct {
	uint64_t    code, sync;
	const char *msg;
	uint32_t    msglen;
} treply;

static void
fatal(const char *what)
{
	if (!atomic_exchange(&ld_r.abort, true)) {
		fprintf(stderr, "bench_load: tarantool %s: %s\n", what,
		    errno ? strerror(errno) : "connection closed");
	}
}

// parse_reply: the packet p[0..n) without its length prefix
static bool
parse_reply(const char *p, size_t n, treply *o)
{
	ld_mp    r;
	uint32_t m;
	*o = (treply) { .msg = "" };
	ld_mp_init(&r, p, n);
	if (!ld_mp_map(&r, &m)) {
		return (false);
	}
	bool has_sync = false;
	for (uint32_t i = 0; i < m; i++) {
		uint64_t key;
		if (!ld_mp_uint(&r, &key)) {
			if (!ld_mp_skip(&r) || !ld_mp_skip(&r)) {
				return (false);
			}
			continue;
		}
		if (key == IPROTO_REQUEST_TYPE && ld_mp_uint(&r, &o->code)) {
		} else if (key == IPROTO_SYNC && ld_mp_uint(&r, &o->sync)) {
			has_sync = true;
		} else if (!ld_mp_skip(&r)) {
			return (false);
		}
	}
	if (r.p < r.end && ld_mp_map(&r, &m)) { // the body
		for (uint32_t i = 0; i < m; i++) {
			uint64_t key;
			bool     isk = ld_mp_uint(&r, &key);
			if (isk && key == IPROTO_ERROR_24 &&
			    ld_mp_str(&r, &o->msg, &o->msglen)) {
				continue;
			}
			if ((!isk && !ld_mp_skip(&r)) || !ld_mp_skip(&r)) {
				return (false);
			}
		}
	}
	return (has_sync && !r.bad);
}

static bool
read_one(tconn *c, treply *o)
{
	for (;;) {
		const unsigned char *p = (const unsigned char *) c->r.p + c->r.off;
		size_t               n = c->r.n - c->r.off;
		if (n >= 5) {
			if (p[0] != 0xce) {
				errno = EPROTO;
				fatal("reply");
				return (false);
			}
			size_t len = (size_t) p[1] << 24 | (size_t) p[2] << 16 |
			    (size_t) p[3] << 8 | p[4];
			if (n >= 5 + len) {
				if (!parse_reply((const char *) p + 5, len, o)) {
					errno = EPROTO;
					fatal("reply");
					return (false);
				}
				ld_buf_consume(&c->r, 5 + len);
				return (true);
			}
			ld_buf_reserve(&c->r, 5 + len - n); // a big reply
		}
		errno = 0;
		if (!ld_buf_fill(&c->r, c->fd)) {
			fatal("read");
			return (false);
		}
	}
}

static void
count(ld_stats *st, uint64_t k, const treply *o)
{
	if (o->code & IPROTO_TYPE_ERROR) {
		char code[24];
		int  n = snprintf(code, sizeof(code), "%llu",
		     (unsigned long long) (o->code & 0x7fff));
		ld_stats_err(st, k, code, (size_t) n, o->msg, o->msglen, 1);
	}
}

static bool
flush(tconn *c)
{
	errno = 0;
	if (!ld_write_all(c->fd, c->w.p, c->w.n)) {
		fatal("write");
		return (false);
	}
	c->w.n = 0;
	return (true);
}


static void
issue(tconn *c, int slot, uint64_t k)
{
	c->sync[slot] = ++c->seq << 16 | (uint64_t) slot;
	c->k[slot]    = k;
	c->busy[slot] = true;
	call_event(c, c->sync[slot], k);
	c->t0[slot] = ld_now_ns();
}

static void
run_events(tconn *c)
{
	int      cnt = 0;
	uint64_t k;
	while (cnt < ld.depth && ld_take(&k)) {
		issue(c, cnt++, k);
	}
	int64_t t = ld_now_ns();
	for (int i = 0; i < cnt; i++) {
		c->t0[i] = t;
	}
	if (cnt > 0 && !flush(c)) {
		return;
	}
	while (cnt > 0) {
		treply o;
		if (!read_one(c, &o)) {
			return;
		}
		int64_t t1   = ld_now_ns();
		int     slot = (int) (o.sync & 0xffff);
		if (slot >= ld.depth || !c->busy[slot] || c->sync[slot] != o.sync) {
			errno = 0;
			fatal("reply: a sync nobody waits for");
			return;
		}
		c->busy[slot] = false;
		cnt--;
		count(c->st, c->k[slot], &o);
		ld_stats_done(c->st, c->k[slot], c->t0[slot], t1, 1);
		if (ld_take(&k)) {
			issue(c, slot, k);
			cnt++;
			if (!flush(c)) {
				return;
			}
		}
	}
}

static void
run_populate(tconn *c)
{
	uint64_t k;
	while (ld_take(&k)) {
		uint64_t n = ld_unit_size(k);
		for (uint64_t i = 0; i < n; i++) {
			call_profile(c, ++c->seq, k * LD_POP_BATCH + i);
		}
		int64_t t0 = ld_now_ns();
		if (!flush(c)) {
			return;
		}
		for (uint64_t i = 0; i < n; i++) {
			treply o;
			if (!read_one(c, &o)) {
				return;
			}
			count(c->st, k, &o);
		}
		ld_stats_done(c->st, k, t0, ld_now_ns(), n);
	}
}

static void *
t_thread(void *arg)
{
	tconn *c = arg;
	if (ld.populate) {
		run_populate(c);
	} else {
		run_events(c);
	}
	ld_thread_done();
	return (NULL);
}

// connect reads the 128-byte greeting ("Tarantool 2.x (Binary) uuid",
// then the salt, unused: guest needs no auth).
static int
connect_one(void)
{
	int fd = ld_tcp_connect(ld.addr, ld.timeout_ms);
	if (fd < 0) {
		return (-1);
	}
	char   g[128];
	size_t got = 0;
	while (got < sizeof(g)) {
		ssize_t r = read(fd, g + got, sizeof(g) - got);
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r <= 0) {
			break;
		}
		got += (size_t) r;
	}
	if (got < sizeof(g) || memcmp(g, "Tarantool", 9) != 0) {
		fprintf(stderr, "bench_load: %s did not greet as Tarantool\n", ld.addr);
		close(fd);
		return (-1);
	}
	return (fd);
}

int
ld_run_tarantool(ld_result *res)
{
	tconn *cs = calloc((size_t) ld.clients, sizeof(tconn));
	res->st   = calloc((size_t) ld.clients, sizeof(ld_stats));
	res->nst  = ld.clients;
	if (cs == NULL || res->st == NULL) {
		fprintf(stderr, "bench_load: out of memory\n");
		free(cs);
		return (2);
	}
	int rc = 0, n = 0;
	for (; n < ld.clients; n++) {
		tconn *c = &cs[n];
		size_t d = (size_t) ld.depth;
		c->st    = &res->st[n];
		c->sync  = calloc(d, sizeof(uint64_t));
		c->k     = calloc(d, sizeof(uint64_t));
		c->t0    = calloc(d, sizeof(int64_t));
		c->busy  = calloc(d, sizeof(bool));
		msgpack_packer_init(&c->pk, &c->w, ld_msgpack_write);
		if (c->sync == NULL || c->k == NULL || c->t0 == NULL ||
		    c->busy == NULL || (c->fd = connect_one()) < 0) {
			free(c->sync);
			free(c->k);
			free(c->t0);
			free(c->busy);
			rc = 2;
			break;
		}
	}
	if (rc == 0) {
		ld_info("bench_load: %d connection(s) to tarantool %s", n, ld.addr);
		ld_run_threads(n, t_thread, cs, sizeof(cs[0]));
	}
	for (int i = 0; i < n; i++) {
		close(cs[i].fd);
		ld_buf_free(&cs[i].w);
		ld_buf_free(&cs[i].r);
		free(cs[i].sync);
		free(cs[i].k);
		free(cs[i].t0);
		free(cs[i].busy);
	}
	free(cs);
	return (rc);
}

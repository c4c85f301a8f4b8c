// bench_load against choreo without nng: the SP protocol's REQ and PUSH
// sides written by hand over blocking TCP (--io raw). See load_choreo.c
// for the requests and replies.
#include "load.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


/*
** {======================================================
** The SP protocol's REQ side by hand over a blocking TCP socket (what
** nng's REQ puts on the wire), one thread per connection, depth requests
** in flight matched by request id. It costs the client far less CPU than
** nng's callbacks, which matters when the client and the server share
** two cores. tcp:// only. PUSH (load_choreo.c) uses the same handshake.
**
** Wire: both sides send 00 'S' 'P' 00, their protocol (REQ 0x0030, REP
** 0x0031) big-endian, 00 00; then each message is a 64-bit big-endian
** length and that many bytes: the 32-bit request id (high bit set: the
** end of the backtrace) and the body. REP echoes the id before its body.
** =======================================================
*/

typedef struct {
	int            fd;
	ld_buf         w, r;
	msgpack_packer pk; // into w
	ld_stats      *st;
	uint32_t       seq;
	uint32_t      *id; // slot i: id (seq & 0x7fff) << 16 | i | 1 << 31
	uint64_t      *k;
	int64_t       *t0;
	bool          *busy;
} rawc;

void
ld_put_be(unsigned char *p, uint64_t v, int n)
{
	for (int i = n - 1; i >= 0; i--, v >>= 8) {
		p[i] = (unsigned char) v;
	}
}

void
ld_sp_fatal(const char *what)
{
	if (!atomic_exchange(&ld_r.abort, true)) {
		fprintf(stderr, "bench_load: %s %s: %s\n", ld.addr, what,
		    errno ? strerror(errno) : "connection closed");
	}
}

static void
raw_put(rawc *c, int slot, uint64_t k)
{
	static const char zero[12] = { 0 };
	c->seq++;
	uint32_t id = 0x80000000u | (c->seq & 0x7fff) << 16 | (uint32_t) slot;
	size_t   at = c->w.n;
	ld_buf_put(&c->w, zero, sizeof(zero));
	if (ld.populate) {
		ld_choreo_batch(&c->pk, k);
	} else {
		ld_choreo_event(&c->pk, k);
	}
	unsigned char *p = (unsigned char *) c->w.p + at;
	ld_put_be(p, c->w.n - at - 8, 8);
	ld_put_be(p + 8, id, 4);
	c->id[slot]   = id;
	c->k[slot]    = k;
	c->busy[slot] = true;
	c->t0[slot]   = ld_now_ns();
}

// raw_read: the next reply's id and body (valid until the next read)
static bool
raw_read(rawc *c, uint32_t *id, const char **body, size_t *n)
{
	for (;;) {
		const unsigned char *p = (const unsigned char *) c->r.p + c->r.off;
		size_t               a = c->r.n - c->r.off;
		if (a >= 8) {
			uint64_t len = 0;
			for (int i = 0; i < 8; i++) {
				len = len << 8 | p[i];
			}
			if (len < 4 || len > ((uint64_t) 1 << 31)) {
				errno = EPROTO;
				ld_sp_fatal("reply");
				return (false);
			}
			if (a >= 8 + len) {
				*id   = (uint32_t) p[8] << 24 | (uint32_t) p[9] << 16 |
				    (uint32_t) p[10] << 8 | p[11];
				*body = (const char *) p + 12;
				*n    = (size_t) len - 4;
				ld_buf_consume(&c->r, 8 + (size_t) len);
				return (true);
			}
			ld_buf_reserve(&c->r, 8 + (size_t) len - a);
		}
		errno = 0;
		if (!ld_buf_fill(&c->r, c->fd)) {
			ld_sp_fatal("read");
			return (false);
		}
	}
}

static bool
raw_flush(rawc *c)
{
	errno = 0;
	if (!ld_write_all(c->fd, c->w.p, c->w.n)) {
		ld_sp_fatal("write");
		return (false);
	}
	c->w.n = 0;
	return (true);
}

static void *
raw_thread(void *arg)
{
	rawc    *c   = arg;
	int      cnt = 0;
	uint64_t k;
	while (cnt < ld.depth && ld_take(&k)) {
		raw_put(c, cnt++, k);
	}
	int64_t t = ld_now_ns();
	for (int i = 0; i < cnt; i++) {
		c->t0[i] = t;
	}
	if (cnt > 0 && !raw_flush(c)) {
		cnt = 0;
	}
	while (cnt > 0) {
		uint32_t    id;
		const char *body;
		size_t      n;
		if (!raw_read(c, &id, &body, &n)) {
			break;
		}
		int64_t t1   = ld_now_ns();
		int     slot = (int) (id & 0xffff);
		if (slot >= ld.depth || !c->busy[slot] || c->id[slot] != id) {
			errno = 0;
			ld_sp_fatal("reply: an id nobody waits for");
			break;
		}
		c->busy[slot] = false;
		cnt--;
		ld_choreo_reply(c->st, c->k[slot], body, n, c->t0[slot], t1);
		if (ld_take(&k)) {
			raw_put(c, slot, k);
			cnt++;
			if (!raw_flush(c)) {
				break;
			}
		}
	}
	ld_thread_done();
	return (NULL);
}

// raw_connect: a TCP connection to ld.addr speaking SP as proto (REQ
// 0x30, PUSH 0x50) to a peer of protocol peer (REP 0x31, PULL 0x51)
int
ld_sp_connect(unsigned char proto, unsigned char peer_proto)
{
	if (strncmp(ld.addr, "tcp://", 6) != 0) {
		fprintf(stderr, "bench_load: --io raw takes a tcp:// address\n");
		return (-1);
	}
	int fd = ld_tcp_connect(ld.addr + 6, ld.timeout_ms);
	if (fd < 0) {
		return (-1);
	}
	const unsigned char hello[8] = { 0, 'S', 'P', 0, 0, proto, 0, 0 };
	unsigned char       peer[8];
	size_t                     got = 0;
	bool                       ok  = ld_write_all(fd, hello, sizeof(hello));
	while (ok && got < sizeof(peer)) {
		ssize_t r = read(fd, peer + got, sizeof(peer) - got);
		if (r < 0 && errno == EINTR) {
			continue;
		}
		ok = r > 0;
		got += ok ? (size_t) r : 0;
	}
	if (!ok || memcmp(peer, "\0SP\0\0", 5) != 0 || peer[5] != peer_proto) {
		fprintf(stderr, "bench_load: %s is not an SP %s socket\n", ld.addr,
		    peer_proto == 0x31 ? "REP" : "PULL");
		close(fd);
		return (-1);
	}
	return (fd);
}

int
ld_run_sp_req(ld_result *res)
{
	rawc *cs = calloc((size_t) ld.clients, sizeof(rawc));
	res->st  = calloc((size_t) ld.clients, sizeof(ld_stats));
	res->nst = ld.clients;
	if (cs == NULL || res->st == NULL) {
		fprintf(stderr, "bench_load: out of memory\n");
		free(cs);
		return (2);
	}
	int rc = 0, n = 0;
	for (; n < ld.clients; n++) {
		rawc  *c = &cs[n];
		size_t d = (size_t) ld.depth;
		c->st    = &res->st[n];
		c->id    = calloc(d, sizeof(uint32_t));
		c->k     = calloc(d, sizeof(uint64_t));
		c->t0    = calloc(d, sizeof(int64_t));
		c->busy  = calloc(d, sizeof(bool));
		msgpack_packer_init(&c->pk, &c->w, ld_msgpack_write);
		if (c->id == NULL || c->k == NULL || c->t0 == NULL ||
		    c->busy == NULL || (c->fd = ld_sp_connect(0x30, 0x31)) < 0) {
			free(c->id);
			free(c->k);
			free(c->t0);
			free(c->busy);
			rc = 2;
			break;
		}
	}
	if (rc == 0) {
		ld_info("bench_load: %d connection(s) to %s (raw SP)", n, ld.addr);
		ld_run_threads(n, raw_thread, cs, sizeof(cs[0]));
	}
	for (int i = 0; i < n; i++) {
		close(cs[i].fd);
		ld_buf_free(&cs[i].w);
		ld_buf_free(&cs[i].r);
		free(cs[i].id);
		free(cs[i].k);
		free(cs[i].t0);
		free(cs[i].busy);
	}
	free(cs);
	return (rc);
}

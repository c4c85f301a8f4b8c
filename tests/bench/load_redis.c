// bench_load against Redis 7: RESP2 by hand over blocking TCP, one thread
// per connection. The workload is the peer scripts, loaded with SCRIPT LOAD
// and run with EVALSHA; a connection keeps --depth commands in flight
// (write D, then read one / write one; replies come in order).
#include "load.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char sha_event[41], sha_populate[41];

/*
** {======================================================
** Commands: *N\r\n then $len\r\narg\r\n for each argument
** =======================================================
*/

static void
put_u(ld_buf *b, char lead, uint64_t v)
{
	char  tmp[24];
	char *e = tmp + sizeof(tmp), *p = e;
	do {
		*--p = (char) ('0' + v % 10);
		v /= 10;
	} while (v > 0);
	*--p = lead;
	ld_buf_put(b, p, (size_t) (e - p));
	ld_buf_put(b, "\r\n", 2);
}

static void
arg(ld_buf *b, const char *s, size_t n)
{
	put_u(b, '$', n);
	ld_buf_put(b, s, n);
	ld_buf_put(b, "\r\n", 2);
}

static void
args(ld_buf *b, const char *s)
{
	arg(b, s, strlen(s));
}

static void
argu(ld_buf *b, const char *prefix, uint64_t v)
{
	char buf[32];
	int  n = snprintf(buf, sizeof(buf), "%s%llu", prefix, (unsigned long long) v);
	arg(b, buf, (size_t) n);
}

// EVALSHA sha 1 c<k> type action-or-"" outcome-or-""
static void
cmd_event(ld_buf *b, uint64_t k)
{
	ld_event e;
	ld_event_gen(k, &e);
	put_u(b, '*', 7);
	args(b, "EVALSHA");
	arg(b, sha_event, 40);
	args(b, "1");
	argu(b, "c", e.customer);
	args(b, ld.types[e.type]);
	if (ld.is_response[e.type]) {
		char a[8];
		snprintf(a, sizeof(a), "a%02d", e.action);
		args(b, a);
		args(b, ld_outcomes[e.outcome]);
	} else {
		args(b, "");
		args(b, "");
	}
}

// EVALSHA sha 1 c<i> age segment region plan tenure country language
// device newsletter(1|0) score
static void
cmd_profile(ld_buf *b, uint64_t i)
{
	ld_profile p;
	ld_profile_of(i, &p);
	put_u(b, '*', 14);
	args(b, "EVALSHA");
	arg(b, sha_populate, 40);
	args(b, "1");
	argu(b, "c", i);
	argu(b, "", (uint64_t) p.age);
	args(b, p.segment);
	args(b, p.region);
	args(b, p.plan);
	argu(b, "", (uint64_t) p.tenure);
	args(b, p.country);
	args(b, p.language);
	args(b, p.device);
	args(b, p.newsletter ? "1" : "0");
	argu(b, "", (uint64_t) p.score);
}

/*
** {======================================================
** Replies: + - : $ * (arrays recursively)
** =======================================================
*/

typedef struct {
	char        type; // of the top-level reply
	const char *str;  // error text, simple or bulk string
	size_t      len;
	bool        nil;
} rreply;

static bool
line_int(const char *p, const char *end, long long *v)
{
	bool neg = p < end && *p == '-';
	p += neg;
	if (p == end) {
		return (false);
	}
	long long x = 0;
	for (; p < end; p++) {
		if (*p < '0' || *p > '9' || x > 1000000000000LL) {
			return (false);
		}
		x = x * 10 + (*p - '0');
	}
	*v = neg ? -x : x;
	return (true);
}

// Bytes of the reply at p[0..n), 0 when it is not all there yet, -1 when
// it is not RESP2.
static long
resp_parse(const char *p, size_t n, rreply *o, int depth)
{
	const char *cr = n > 0 ? memchr(p, '\r', n) : NULL;
	if (cr == NULL || (size_t) (cr - p) + 2 > n) {
		return (0);
	}
	if (cr[1] != '\n' || depth > 16) {
		return (-1);
	}
	size_t    line = (size_t) (cr - p) + 2;
	long long v    = 0;
	if (depth == 0) {
		*o = (rreply) { .type = p[0] };
	}
	switch (p[0]) {
	case '+':
	case '-':
		if (depth == 0) {
			o->str = p + 1;
			o->len = (size_t) (cr - p - 1);
		}
		return ((long) line);
	case ':':
		return ((long) line);
	case '$':
		if (!line_int(p + 1, cr, &v)) {
			return (-1);
		}
		if (v < 0) {
			o->nil = depth == 0;
			return ((long) line);
		}
		if (n < line + (size_t) v + 2) {
			return (0);
		}
		if (depth == 0) {
			o->str = p + line;
			o->len = (size_t) v;
		}
		return ((long) (line + (size_t) v + 2));
	case '*': {
		if (!line_int(p + 1, cr, &v)) {
			return (-1);
		}
		size_t used = line;
		for (long long i = 0; i < v; i++) {
			long r = resp_parse(p + used, n - used, o, depth + 1);
			if (r <= 0) {
				return (r);
			}
			used += (size_t) r;
		}
		return ((long) used);
	}
	default:
		return (-1);
	}
}

typedef struct {
	int       fd;
	ld_buf    w, r;
	ld_stats *st;
	uint64_t *rk; // the ring of commands in flight: index ...
	int64_t  *rt; // ... and when it was sent
} rconn;

static void
fatal(const char *what)
{
	if (!atomic_exchange(&ld_r.abort, true)) {
		fprintf(stderr, "bench_load: redis %s: %s\n", what,
		    errno ? strerror(errno) : "connection closed");
	}
}

// Reads the next reply into o (valid until the next read); false when the
// connection failed.
static bool
read_one(rconn *c, rreply *o)
{
	for (;;) {
		long used = resp_parse(c->r.p + c->r.off, c->r.n - c->r.off, o, 0);
		if (used < 0) {
			errno = EPROTO;
			fatal("reply");
			return (false);
		}
		if (used > 0) {
			// the bytes stay put until the next fill: o stays valid
			ld_buf_consume(&c->r, (size_t) used);
			return (true);
		}
		errno = 0;
		if (!ld_buf_fill(&c->r, c->fd)) {
			fatal("read");
			return (false);
		}
	}
}

// an error reply counts under its first word: ERR, NOSCRIPT, bad_request
static void
count_error(ld_stats *st, uint64_t k, const rreply *o)
{
	size_t w = 0;
	while (w < o->len && o->str[w] != ' ' && o->str[w] != ':') {
		w++;
	}
	ld_stats_err(st, k, o->str, w, o->str, o->len, 1);
}

static bool
flush(rconn *c)
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
run_events(rconn *c)
{
	int      d = ld.depth, head = 0, cnt = 0;
	uint64_t k;
	while (cnt < d && ld_take(&k)) {
		cmd_event(&c->w, k);
		c->rk[cnt++] = k;
	}
	int64_t t = ld_now_ns();
	for (int i = 0; i < cnt; i++) {
		c->rt[i] = t;
	}
	if (cnt > 0 && !flush(c)) {
		return;
	}
	while (cnt > 0) {
		rreply o;
		if (!read_one(c, &o)) {
			break;
		}
		int64_t  t1 = ld_now_ns();
		uint64_t kk = c->rk[head];
		int64_t  t0 = c->rt[head];
		head        = (head + 1) % d;
		cnt--;
		if (o.type == '-') {
			count_error(c->st, kk, &o);
		} else if (o.type != '*') {
			ld_stats_err(c->st, kk, "not_array", 9, o.str, o.str ? o.len : 0, 1);
		}
		ld_stats_done(c->st, kk, t0, t1, 1);
		if (ld_take(&k)) {
			int slot    = (head + cnt++) % d;
			c->rk[slot] = k;
			cmd_event(&c->w, k);
			c->rt[slot] = ld_now_ns();
			if (!flush(c)) {
				break;
			}
		}
	}
}

static void
run_populate(rconn *c)
{
	uint64_t k;
	while (ld_take(&k)) {
		uint64_t n = ld_unit_size(k);
		for (uint64_t i = 0; i < n; i++) {
			cmd_profile(&c->w, k * LD_POP_BATCH + i);
		}
		int64_t t0 = ld_now_ns();
		if (!flush(c)) {
			return;
		}
		for (uint64_t i = 0; i < n; i++) {
			rreply o;
			if (!read_one(c, &o)) {
				return;
			}
			if (o.type == '-') {
				count_error(c->st, k, &o);
			}
		}
		ld_stats_done(c->st, k, t0, ld_now_ns(), n);
	}
}

static void *
r_thread(void *arg)
{
	rconn *c = arg;
	if (ld.populate) {
		run_populate(c);
	} else {
		run_events(c);
	}
	ld_thread_done();
	return (NULL);
}

/*
** {======================================================
** Setup: SCRIPT LOAD the peer scripts
** =======================================================
*/

static bool
script_load(int fd, const char *name, char sha[41])
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", ld.scripts, name);
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		fprintf(stderr, "bench_load: %s: %s\n", path, strerror(errno));
		return (false);
	}
	ld_buf src = { 0 };
	char   chunk[8192];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
		ld_buf_put(&src, chunk, n);
	}
	fclose(f);
	rconn c = { .fd = fd };
	put_u(&c.w, '*', 3);
	args(&c.w, "SCRIPT");
	args(&c.w, "LOAD");
	arg(&c.w, src.p, src.n);
	ld_buf_free(&src);
	rreply o;
	bool   ok = flush(&c) && read_one(&c, &o);
	if (ok && (o.type != '$' || o.len != 40)) {
		fprintf(stderr, "bench_load: SCRIPT LOAD %s: %.*s\n", path,
		    (int) (o.str ? o.len : 0), o.str ? o.str : "not a sha");
		ok = false;
	}
	if (ok) {
		memcpy(sha, o.str, 40);
		sha[40] = 0;
	}
	ld_buf_free(&c.w);
	ld_buf_free(&c.r);
	return (ok);
}

int
ld_run_redis(ld_result *res)
{
	int fd = ld_tcp_connect(ld.addr, ld.timeout_ms);
	if (fd < 0) {
		return (2);
	}
	bool ok = ld.populate ? script_load(fd, "redis_populate.lua", sha_populate)
	                      : script_load(fd, "redis_event.lua", sha_event);
	close(fd);
	if (!ok) {
		return (2);
	}
	rconn *cs = calloc((size_t) ld.clients, sizeof(rconn));
	res->st   = calloc((size_t) ld.clients, sizeof(ld_stats));
	res->nst  = ld.clients;
	if (cs == NULL || res->st == NULL) {
		fprintf(stderr, "bench_load: out of memory\n");
		free(cs);
		return (2);
	}
	int rc = 0, n = 0;
	for (; n < ld.clients; n++) {
		rconn *c = &cs[n];
		c->st    = &res->st[n];
		c->rk    = calloc((size_t) ld.depth, sizeof(uint64_t));
		c->rt    = calloc((size_t) ld.depth, sizeof(int64_t));
		if (c->rk == NULL || c->rt == NULL ||
		    (c->fd = ld_tcp_connect(ld.addr, ld.timeout_ms)) < 0) {
			free(c->rk);
			free(c->rt);
			rc = 2;
			break;
		}
	}
	if (rc == 0) {
		ld_info("bench_load: %d connection(s) to redis %s, script %s", n,
		    ld.addr, ld.populate ? sha_populate : sha_event);
		ld_run_threads(n, r_thread, cs, sizeof(cs[0]));
	}
	for (int i = 0; i < n; i++) {
		close(cs[i].fd);
		ld_buf_free(&cs[i].w);
		ld_buf_free(&cs[i].r);
		free(cs[i].rk);
		free(cs[i].rt);
	}
	free(cs);
	return (rc);
}

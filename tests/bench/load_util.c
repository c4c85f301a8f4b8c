// bench_load's plumbing: the latency histogram, a msgpack reader that
// does not allocate, blocking TCP and byte buffers. See load.h.
#include "load.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/*
** {======================================================
** Histogram: values below 2*SUB ns are exact; above, each power of two
** is cut into SUB buckets (relative width at most 1/SUB)
** =======================================================
*/

static int
h_index(int64_t v)
{
	if (v < 0) {
		v = 0;
	}
	if (v > LD_H_MAX_NS) {
		v = LD_H_MAX_NS;
	}
	if (v < 2 * LD_H_SUB) {
		return ((int) v);
	}
	int e     = 63 - __builtin_clzll((unsigned long long) v); // >= 8
	int shift = e - 7;
	return (2 * LD_H_SUB + (e - 8) * LD_H_SUB +
	    (int) ((v >> shift) - LD_H_SUB));
}

static int64_t
h_high(int i)
{
	if (i < 2 * LD_H_SUB) {
		return (i);
	}
	int e     = (i - 2 * LD_H_SUB) / LD_H_SUB + 8;
	int sub   = (i - 2 * LD_H_SUB) % LD_H_SUB + LD_H_SUB;
	int shift = e - 7;
	return (((int64_t) (sub + 1) << shift) - 1);
}

void
ld_hist_add(ld_hist *h, int64_t ns)
{
	h->n[h_index(ns)]++;
	h->total++;
	if (ns > h->max_ns) {
		h->max_ns = ns;
	}
}

void
ld_hist_merge(ld_hist *into, const ld_hist *h)
{
	for (int i = 0; i < LD_H_BUCKETS; i++) {
		into->n[i] += h->n[i];
	}
	into->total += h->total;
	if (h->max_ns > into->max_ns) {
		into->max_ns = h->max_ns;
	}
}

int64_t
ld_hist_pct(const ld_hist *h, double pct)
{
	if (h->total == 0) {
		return (0);
	}
	uint64_t want = (uint64_t) ceil(pct / 100.0 * (double) h->total);
	if (want < 1) {
		want = 1;
	}
	uint64_t seen = 0;
	for (int i = 0; i < LD_H_BUCKETS; i++) {
		seen += h->n[i];
		if (seen >= want) {
			int64_t v = h_high(i);
			return (v < h->max_ns ? v : h->max_ns);
		}
	}
	return (h->max_ns);
}

/*
** {======================================================
** msgpack reader
** =======================================================
*/

void
ld_mp_init(ld_mp *r, const void *p, size_t n)
{
	r->p   = p;
	r->end = r->p + n;
	r->bad = false;
}

static bool
need(ld_mp *r, size_t n)
{
	if ((size_t) (r->end - r->p) < n) {
		r->bad = true;
		return (false);
	}
	return (true);
}

static uint64_t
be(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++) {
		v = v << 8 | p[i];
	}
	return (v);
}

// container: a map or array header of n entries (maps count pairs)
static bool
container(ld_mp *r, uint32_t *n, uint8_t fix, uint8_t b16, uint8_t b32)
{
	if (!need(r, 1)) {
		return (false);
	}
	uint8_t b = r->p[0];
	if ((b & 0xf0) == fix) {
		*n = b & 0x0f;
		r->p++;
		return (true);
	}
	int w = b == b16 ? 2 : b == b32 ? 4 : 0;
	if (w == 0 || !need(r, 1 + (size_t) w)) {
		return (false);
	}
	*n = (uint32_t) be(r->p + 1, w);
	r->p += 1 + w;
	return (true);
}

bool
ld_mp_map(ld_mp *r, uint32_t *n)
{
	return (container(r, n, 0x80, 0xde, 0xdf));
}

bool
ld_mp_array(ld_mp *r, uint32_t *n)
{
	return (container(r, n, 0x90, 0xdc, 0xdd));
}

bool
ld_mp_str(ld_mp *r, const char **s, uint32_t *n)
{
	if (!need(r, 1)) {
		return (false);
	}
	uint8_t b = r->p[0];
	int     w = -1;
	if ((b & 0xe0) == 0xa0) {
		*n = b & 0x1f;
		w  = 0;
	} else if (b == 0xd9 || b == 0xc4) {
		w = 1;
	} else if (b == 0xda || b == 0xc5) {
		w = 2;
	} else if (b == 0xdb || b == 0xc6) {
		w = 4;
	}
	if (w < 0 || !need(r, 1 + (size_t) w)) {
		return (false);
	}
	if (w > 0) {
		*n = (uint32_t) be(r->p + 1, w);
	}
	if (!need(r, 1 + (size_t) w + *n)) {
		return (false);
	}
	*s = (const char *) r->p + 1 + w;
	r->p += 1 + w + *n;
	return (true);
}

bool
ld_mp_bool(ld_mp *r, bool *v)
{
	if (!need(r, 1) || (r->p[0] != 0xc2 && r->p[0] != 0xc3)) {
		return (false);
	}
	*v = *r->p++ == 0xc3;
	return (true);
}

bool
ld_mp_uint(ld_mp *r, uint64_t *v)
{
	if (!need(r, 1)) {
		return (false);
	}
	uint8_t b = r->p[0];
	if (b < 0x80) {
		*v = b;
		r->p++;
		return (true);
	}
	int w = b == 0xcc ? 1 : b == 0xcd ? 2 : b == 0xce ? 4 : b == 0xcf ? 8 : 0;
	if (w == 0 || !need(r, 1 + (size_t) w)) {
		return (false);
	}
	*v = be(r->p + 1, w);
	r->p += 1 + w;
	return (true);
}

// Skips one value, containers included, without recursion: `left` counts
// the values still to skip.
bool
ld_mp_skip(ld_mp *r)
{
	uint64_t left = 1;
	while (left > 0) {
		left--;
		if (!need(r, 1)) {
			return (false);
		}
		uint8_t  b    = r->p[0];
		size_t   head = 1, body = 0;
		uint64_t more = 0;
		if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
		} else if (b <= 0x8f) {
			more = 2 * (uint64_t) (b & 0x0f);
		} else if (b <= 0x9f) {
			more = b & 0x0f;
		} else if (b <= 0xbf) {
			body = b & 0x1f;
		} else {
			int w = 0;
			switch (b) {
			case 0xcc: case 0xd0: body = 1; break;
			case 0xcd: case 0xd1: body = 2; break;
			case 0xca: case 0xce: case 0xd2: body = 4; break;
			case 0xcb: case 0xcf: case 0xd3: body = 8; break;
			case 0xd4: body = 2; break;
			case 0xd5: body = 3; break;
			case 0xd6: body = 5; break;
			case 0xd7: body = 9; break;
			case 0xd8: body = 17; break;
			case 0xc4: case 0xd9: w = 1; break;
			case 0xc5: case 0xda: w = 2; break;
			case 0xc6: case 0xdb: w = 4; break;
			case 0xc7: w = 1; body = 1; break; // ext: length, then type
			case 0xc8: w = 2; body = 1; break;
			case 0xc9: w = 4; body = 1; break;
			case 0xdc: case 0xde: w = -2; break;
			case 0xdd: case 0xdf: w = -4; break;
			default: r->bad = true; return (false); // 0xc1
			}
			if (w != 0) {
				int aw = w < 0 ? -w : w;
				if (!need(r, 1 + (size_t) aw)) {
					return (false);
				}
				uint64_t n = be(r->p + 1, aw);
				head += (size_t) aw;
				if (w > 0) {
					body += n;
				} else {
					more = b == 0xde || b == 0xdf ? 2 * n : n;
				}
			}
		}
		if (!need(r, head + body)) {
			return (false);
		}
		r->p += head + body;
		left += more;
	}
	return (true);
}

bool
ld_mp_eq(const char *s, uint32_t n, const char *key)
{
	return (n == strlen(key) && memcmp(s, key, n) == 0);
}

/*
** {======================================================
** TCP and buffers
** =======================================================
*/

int
ld_tcp_connect(const char *addr, int timeout_ms)
{
	char        host[256];
	const char *colon = strrchr(addr, ':');
	if (colon == NULL || (size_t) (colon - addr) >= sizeof(host)) {
		fprintf(stderr, "bench_load: address '%s' is not host:port\n", addr);
		return (-1);
	}
	size_t hl = (size_t) (colon - addr);
	if (hl >= 2 && addr[0] == '[' && addr[hl - 1] == ']') { // [::1]:port
		addr++;
		hl -= 2;
	}
	memcpy(host, addr, hl);
	host[hl] = 0;
	struct addrinfo hints = { .ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM }, *ai;
	int rc = getaddrinfo(host, colon + 1, &hints, &ai);
	if (rc != 0) {
		fprintf(stderr, "bench_load: %s: %s\n", addr, gai_strerror(rc));
		return (-1);
	}
	int fd = -1, err = 0;
	for (struct addrinfo *a = ai; a != NULL; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
		if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
			break;
		}
		err = errno;
		if (fd >= 0) {
			close(fd);
		}
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		fprintf(stderr, "bench_load: cannot connect to %s: %s\n", addr,
		    strerror(err));
		return (-1);
	}
	int            one = 1;
	struct timeval tv  = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return (fd);
}

bool
ld_write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR) {
			continue;
		}
		if (w <= 0) {
			return (false);
		}
		c += w;
		n -= (size_t) w;
	}
	return (true);
}

void
ld_buf_reserve(ld_buf *b, size_t extra)
{
	if (b->cap - b->n >= extra) {
		return;
	}
	if (b->off > 0) { // slide the unread bytes to the front
		memmove(b->p, b->p + b->off, b->n - b->off);
		b->n -= b->off;
		b->off = 0;
		if (b->cap - b->n >= extra) {
			return;
		}
	}
	size_t cap = b->cap ? b->cap : 4096;
	while (cap - b->n < extra) {
		cap *= 2;
	}
	char *p = realloc(b->p, cap);
	if (p == NULL) {
		fprintf(stderr, "bench_load: out of memory\n");
		exit(2);
	}
	b->p   = p;
	b->cap = cap;
}

void
ld_buf_put(ld_buf *b, const void *p, size_t n)
{
	ld_buf_reserve(b, n);
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

void
ld_buf_free(ld_buf *b)
{
	free(b->p);
	b->p   = NULL;
	b->off = b->n = b->cap = 0;
}

bool
ld_buf_fill(ld_buf *b, int fd)
{
	if (b->off == b->n) {
		b->off = b->n = 0;
	}
	ld_buf_reserve(b, 16384);
	for (;;) {
		ssize_t r = recv(fd, b->p + b->n, b->cap - b->n, 0);
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r <= 0) {
			return (false);
		}
		b->n += (size_t) r;
		return (true);
	}
}

void
ld_buf_consume(ld_buf *b, size_t n)
{
	b->off += n;
	if (b->off == b->n) {
		b->off = b->n = 0;
	}
}

int
ld_msgpack_write(void *data, const char *buf, size_t len)
{
	ld_buf_put(data, buf, len);
	return (0);
}

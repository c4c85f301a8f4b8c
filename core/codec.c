// choreo — the wire codec. See codec.h.
#include "codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "utf8.h"

/*
** {======================================================
** Pre-scan: the guard in front of msgpack-c
** =======================================================
*/

static uint64_t
be(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++) {
		v = (v << 8) | p[i];
	}
	return (v);
}

int
ch_mp_prescan(const void *buf, size_t len, int max_depth, const char **why,
    ch_str *field)
{
	const uint8_t *p   = buf;
	size_t         pos = 0;
	// left[d]: elements still expected in the container open at depth d.
	uint64_t left[CH_MP_MAX_DEPTH + 2];
	int      depth = 0;
	bool     top_map = len > 0 && ((p[0] & 0xf0) == 0x80 || p[0] == 0xde ||
            p[0] == 0xdf);
	const char *dummy;
	ch_str      nofield;

	if (why == NULL) {
		why = &dummy;
	}
	if (field == NULL) {
		field = &nofield;
	}
	field->p = NULL;
	field->n = 0;
	if (max_depth > CH_MP_MAX_DEPTH) {
		max_depth = CH_MP_MAX_DEPTH;
	}
	if (len == 0) {
		*why = "empty message";
		return (CH_EBADREQ);
	}
	left[0] = 1; // the one top-level object
	for (;;) {
		if (depth == 1 && top_map && left[1] % 2 == 0) {
			field->n = 0; // a new key: no field is to blame yet
		}
		if (pos >= len) {
			*why = "truncated msgpack";
			return (CH_EBADREQ);
		}
		uint8_t  b     = p[pos];
		size_t   hdr   = 1; // header bytes
		uint64_t body  = 0; // payload bytes after the header
		uint64_t count = 0; // container elements
		bool     cont  = false;

		if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 ||
		    b == 0xc3) {
			// fixint, nil, bool
		} else if (b >= 0x80 && b <= 0x8f) {
			cont = true, count = 2 * (uint64_t) (b & 0x0f);
		} else if (b >= 0x90 && b <= 0x9f) {
			cont = true, count = b & 0x0f;
		} else if (b >= 0xa0 && b <= 0xbf) {
			body = b & 0x1f;
		} else {
			int w; // width of the length/count field
			switch (b) {
			case 0xc4: case 0xd9: w = 1; break;         // bin8, str8
			case 0xc5: case 0xda: w = 2; break;         // bin16, str16
			case 0xc6: case 0xdb: w = 4; break;         // bin32, str32
			case 0xc7: w = 1; break;                    // ext8
			case 0xc8: w = 2; break;                    // ext16
			case 0xc9: w = 4; break;                    // ext32
			case 0xcc: case 0xd0: body = 1; w = 0; break;
			case 0xcd: case 0xd1: body = 2; w = 0; break;
			case 0xca: case 0xce: case 0xd2: body = 4; w = 0; break;
			case 0xcb: case 0xcf: case 0xd3: body = 8; w = 0; break;
			case 0xd4: body = 2; w = 0; break;          // fixext1
			case 0xd5: body = 3; w = 0; break;
			case 0xd6: body = 5; w = 0; break;
			case 0xd7: body = 9; w = 0; break;
			case 0xd8: body = 17; w = 0; break;
			case 0xdc: w = 2; cont = true; break;       // array16
			case 0xdd: w = 4; cont = true; break;       // array32
			case 0xde: w = 2; cont = true; break;       // map16
			case 0xdf: w = 4; cont = true; break;       // map32
			default:
				*why = "invalid msgpack byte 0xc1";
				return (CH_EBADREQ);
			}
			if (w > 0) {
				if (len - pos < 1 + (size_t) w) {
					*why = "truncated msgpack";
					return (CH_EBADREQ);
				}
				uint64_t v = be(p + pos + 1, w);
				hdr        = 1 + (size_t) w;
				if (cont) {
					count = (b == 0xde || b == 0xdf) ? 2 * v : v;
				} else {
					body = v;
					if (b >= 0xc7 && b <= 0xc9) {
						body += 1; // the ext type byte
					}
				}
			}
		}
		if (len - pos < hdr || body > len - pos - hdr) {
			*why = "truncated msgpack (a length exceeds the message)";
			return (CH_EBADREQ);
		}
		if (depth == 1 && top_map && left[1] % 2 == 0) {
			// a top-level key: remember it to name the field
			bool str = (b >= 0xa0 && b <= 0xbf) || b == 0xd9 ||
			    b == 0xda || b == 0xdb;
			field->p = str ? (const char *) p + pos + hdr : NULL;
			field->n = str ? (uint32_t) body : 0;
		}
		pos += hdr + (size_t) body;
		left[depth]--;
		if (cont) {
			if (depth + 1 > max_depth) {
				*why = "nested more than 32 levels deep";
				return (CH_EBADREQ);
			}
			// every element needs at least one byte
			if (count > len - pos) {
				*why = "truncated msgpack (a count exceeds the message)";
				return (CH_EBADREQ);
			}
			if (count > 0) {
				left[++depth] = count;
				continue;
			}
		}
		while (depth > 0 && left[depth] == 0) {
			depth--;
		}
		if (depth == 0 && left[0] == 0) {
			break;
		}
	}
	if (pos != len) {
		field->n = 0; // past the map: none of its fields
		*why     = "trailing bytes after the msgpack map";
		return (CH_EBADREQ);
	}
	return (CH_OK);
}

/* }====================================================== */

/*
** {======================================================
** Request validation
** =======================================================
*/

static const char *const op_names[] = {
	[CH_OP_EVENT] = "event",   [CH_OP_DECIDE] = "decide",
	[CH_OP_GET] = "get",       [CH_OP_FORGET] = "forget",
	[CH_OP_STATS] = "stats",   [CH_OP_RULES] = "rules",
	[CH_OP_RELOAD] = "reload", [CH_OP_BATCH] = "batch",
	[CH_OP_PING] = "ping",     [CH_OP_ROLLBACK] = "rollback",
};

const char *
ch_op_name(enum ch_op op)
{
	return (op_names[op]);
}

static bool
key_is(const msgpack_object *k, const char *s)
{
	size_t n = strlen(s);
	return (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
	    memcmp(k->via.str.ptr, s, n) == 0);
}

const msgpack_object *
ch_mp_get(const msgpack_object *map, const char *key, msgpack_object_type type)
{
	if (map == NULL || map->type != MSGPACK_OBJECT_MAP) {
		return (NULL);
	}
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		if (key_is(&map->via.map.ptr[i].key, key)) {
			const msgpack_object *v = &map->via.map.ptr[i].val;
			return (v->type == type ? v : NULL);
		}
	}
	return (NULL);
}

int
ch_mp_depth(const msgpack_object *o)
{
	int d = 0;
	if (o->type == MSGPACK_OBJECT_ARRAY) {
		for (uint32_t i = 0; i < o->via.array.size; i++) {
			int e = ch_mp_depth(&o->via.array.ptr[i]);
			d     = e > d ? e : d;
		}
		return (d + 1);
	}
	if (o->type == MSGPACK_OBJECT_MAP) {
		for (uint32_t i = 0; i < o->via.map.size; i++) {
			int e = ch_mp_depth(&o->via.map.ptr[i].key);
			d     = e > d ? e : d;
			e     = ch_mp_depth(&o->via.map.ptr[i].val);
			d     = e > d ? e : d;
		}
		return (d + 1);
	}
	return (0);
}

// mp_size returns the encoded size of o (as msgpack-c would pack it),
// stopping early once it passes cap.
static size_t
mp_size(const msgpack_object *o, size_t cap)
{
	size_t n = 0;
	switch (o->type) {
	case MSGPACK_OBJECT_STR:
	case MSGPACK_OBJECT_BIN:
		return (5 + o->via.str.size);
	case MSGPACK_OBJECT_EXT:
		return (6 + o->via.ext.size);
	case MSGPACK_OBJECT_ARRAY:
		n = 5;
		for (uint32_t i = 0; i < o->via.array.size && n <= cap; i++) {
			n += mp_size(&o->via.array.ptr[i], cap);
		}
		return (n);
	case MSGPACK_OBJECT_MAP:
		n = 5;
		for (uint32_t i = 0; i < o->via.map.size && n <= cap; i++) {
			n += mp_size(&o->via.map.ptr[i].key, cap);
			n += mp_size(&o->via.map.ptr[i].val, cap);
		}
		return (n);
	default:
		return (9);
	}
}

// data_utf8 looks for a msgpack str in o, key or value, that is not valid
// UTF-8 (bin is bytes and may hold anything). On finding one it returns
// false with path[0..len) naming where ("data.a[2].b") and *key telling
// whether it was a key (of the map at path) or a value (at path).
static bool
data_utf8(const msgpack_object *o, char *path, size_t cap, size_t len,
    bool *key)
{
	if (o->type == MSGPACK_OBJECT_STR) {
		*key = false;
		return (ch_utf8_valid(o->via.str.ptr, o->via.str.size));
	}
	if (o->type == MSGPACK_OBJECT_ARRAY) {
		for (uint32_t i = 0; i < o->via.array.size; i++) {
			int n = snprintf(path + len, cap - len, "[%u]", i);
			size_t l = len + (size_t) n < cap ? len + (size_t) n
			                                  : cap - 1;
			if (!data_utf8(&o->via.array.ptr[i], path, cap, l, key)) {
				return (false);
			}
		}
		path[len] = '\0';
		return (true);
	}
	if (o->type != MSGPACK_OBJECT_MAP) {
		return (true);
	}
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key;
		size_t                l = len;
		if (k->type == MSGPACK_OBJECT_STR) {
			if (!ch_utf8_valid(k->via.str.ptr, k->via.str.size)) {
				path[len] = '\0';
				*key      = true;
				return (false);
			}
			if (len + 1 < cap) {
				path[l++] = '.';
				l += ch_utf8_escape(path + l, cap - l,
				    k->via.str.ptr, k->via.str.size, true);
				l = l < cap ? l : strlen(path);
			}
		} else if (k->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
			int n = snprintf(path + len, cap - len, "[%llu]",
			    (unsigned long long) k->via.u64);
			l = len + (size_t) n < cap ? len + (size_t) n : cap - 1;
		} else {
			int n = snprintf(path + len, cap - len, "[?]");
			l = len + (size_t) n < cap ? len + (size_t) n : cap - 1;
		}
		if (k->type != MSGPACK_OBJECT_STR &&
		    !data_utf8(k, path, cap, l, key)) {
			*key = true; // a str inside a key that is a container
			return (false);
		}
		if (!data_utf8(&o->via.map.ptr[i].val, path, cap, l, key)) {
			return (false);
		}
	}
	path[len] = '\0';
	return (true);
}

static bool
ident_ok(ch_str s)
{
	for (uint32_t i = 0; i < s.n; i++) {
		char c = s.p[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		        (c >= '0' && c <= '9') || c == '_' || c == '-')) {
			return (false);
		}
	}
	return (true);
}

// quote writes the first bytes of a request's string for a message:
// what is not UTF-8, and control bytes, as \xNN; cut between characters.
static void
quote(char *out, size_t cap, const char *p, size_t n)
{
	ch_utf8_escape(out, cap, p, n > 4 * cap ? 4 * cap : n, true);
}

#define FAIL(...)                                             \
	do {                                                  \
		snprintf(msg, msglen, __VA_ARGS__);           \
		return (CH_EBADREQ);                          \
	} while (0)

static int
get_str(const msgpack_object *v, const char *name, uint32_t max, ch_str *out,
    char *msg, size_t msglen)
{
	if (v->type != MSGPACK_OBJECT_STR) {
		FAIL("field '%s' must be a string", name);
	}
	if (v->via.str.size < 1 || v->via.str.size > max) {
		FAIL("field '%s' must be 1 to %u bytes long, got %u", name,
		    max, v->via.str.size);
	}
	// Identifiers are joined with \0 into the store's keys (business \0
	// customer, business \0 id, due ‖ business \0 customer \0 timer):
	// without NUL in them, each key reads back one way only. And they
	// are quoted in replies, which must be valid UTF-8.
	if (!ch_utf8_text(v->via.str.ptr, v->via.str.size)) {
		FAIL("field '%s' must be valid UTF-8 without NUL bytes", name);
	}
	out->p = v->via.str.ptr;
	out->n = v->via.str.size;
	return (CH_OK);
}

static int
get_bool(const msgpack_object *v, const char *name, bool *out, char *msg,
    size_t msglen)
{
	if (v->type != MSGPACK_OBJECT_BOOLEAN) {
		FAIL("field '%s' must be a boolean", name);
	}
	*out = v->via.boolean;
	return (CH_OK);
}

static int
get_int(const msgpack_object *v, const char *name, int64_t lo, int64_t hi,
    int64_t *out, char *msg, size_t msglen)
{
	int64_t x;
	if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
		if (v->via.u64 > (uint64_t) INT64_MAX) {
			FAIL("field '%s' is out of range", name);
		}
		x = (int64_t) v->via.u64;
	} else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		x = v->via.i64;
	} else {
		FAIL("field '%s' must be an integer", name);
	}
	if (x < lo || x > hi) {
		FAIL("field '%s' must be between %lld and %lld, got %lld", name,
		    (long long) lo, (long long) hi, (long long) x);
	}
	*out = x;
	return (CH_OK);
}

// Which fields each op requires; the others are optional or ignored.
enum {
	F_BUSINESS = 1 << 0,
	F_CUSTOMER = 1 << 1,
	F_TYPE     = 1 << 2,
	F_VERSION  = 1 << 3,
};

static int
required(enum ch_op op)
{
	switch (op) {
	case CH_OP_EVENT:
		return (F_BUSINESS | F_CUSTOMER | F_TYPE);
	case CH_OP_DECIDE:
	case CH_OP_GET:
	case CH_OP_FORGET:
		return (F_BUSINESS | F_CUSTOMER);
	case CH_OP_STATS:
		return (F_BUSINESS);
	case CH_OP_ROLLBACK:
		return (F_BUSINESS | F_VERSION);
	default:
		return (0);
	}
}

static int decode_map(const msgpack_object *o, ch_req *r, bool in_batch,
    char *msg, size_t msglen);

static int
decode_batch(const msgpack_object *ev, ch_req *r, char *msg, size_t msglen)
{
	if (ev->type != MSGPACK_OBJECT_ARRAY) {
		FAIL("field 'events' must be an array of event requests");
	}
	if (ev->via.array.size > CH_MAX_BATCH) {
		FAIL("field 'events' holds %u requests, at most %d are allowed",
		    ev->via.array.size, CH_MAX_BATCH);
	}
	r->nevents = ev->via.array.size;
	if (r->nevents == 0) {
		return (CH_OK);
	}
	r->events = calloc(r->nevents, sizeof(ch_req));
	if (r->events == NULL) {
		FAIL("out of memory");
	}
	for (uint32_t i = 0; i < r->nevents; i++) {
		ch_req *e = &r->events[i];
		char    sub[200];
		e->err = decode_map(&ev->via.array.ptr[i], e, true, sub,
		    sizeof(sub));
		if (e->err != CH_OK) {
			size_t n  = strlen(sub) + 32;
			e->errmsg = malloc(n);
			if (e->errmsg != NULL) {
				snprintf(e->errmsg, n, "events[%u]: %s", i, sub);
			}
		}
	}
	return (CH_OK);
}

static int
decode_map(const msgpack_object *o, ch_req *r, bool in_batch, char *msg,
    size_t msglen)
{
	int     rv;
	int     have = 0;
	int64_t x = 0;
	const msgpack_object *events = NULL;

	r->op     = CH_OP_EVENT;
	r->decide = true;
	r->record = true;
	r->limit  = 3;
	if (o->type != MSGPACK_OBJECT_MAP) {
		FAIL("the request must be a msgpack map");
	}
	// op first: it decides which fields are required.
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key;
		const msgpack_object *v = &o->via.map.ptr[i].val;
		if (!key_is(k, "op")) {
			continue;
		}
		if (v->type != MSGPACK_OBJECT_STR) {
			FAIL("field 'op' must be a string");
		}
		size_t j;
		for (j = 0; j < sizeof(op_names) / sizeof(op_names[0]); j++) {
			if (v->via.str.size == strlen(op_names[j]) &&
			    memcmp(v->via.str.ptr, op_names[j],
			        v->via.str.size) == 0) {
				break;
			}
		}
		if (j == sizeof(op_names) / sizeof(op_names[0])) {
			char q[68];
			quote(q, sizeof(q), v->via.str.ptr, v->via.str.size);
			FAIL("unknown op '%s'", q);
		}
		r->op = (enum ch_op) j;
	}
	if (in_batch && r->op != CH_OP_EVENT) {
		FAIL("a batch holds only event requests, got op '%s'",
		    op_names[r->op]);
	}
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key;
		const msgpack_object *v = &o->via.map.ptr[i].val;
		if (k->type != MSGPACK_OBJECT_STR) {
			continue; // unknown top-level fields are ignored
		}
		if (key_is(k, "business")) {
			if ((rv = get_str(v, "business", 64, &r->business, msg,
			         msglen)) != CH_OK) {
				return (rv);
			}
			if (!ident_ok(r->business)) {
				FAIL("field 'business' may hold only letters, "
				     "digits, '_' and '-'");
			}
			have |= F_BUSINESS;
		} else if (key_is(k, "customer")) {
			if ((rv = get_str(v, "customer", 256, &r->customer, msg,
			         msglen)) != CH_OK) {
				return (rv);
			}
			have |= F_CUSTOMER;
		} else if (key_is(k, "type")) {
			if ((rv = get_str(v, "type", 64, &r->type, msg,
			         msglen)) != CH_OK) {
				return (rv);
			}
			have |= F_TYPE;
		} else if (key_is(k, "id")) {
			rv = get_str(v, "id", 128, &r->id, msg, msglen);
		} else if (key_is(k, "channel")) {
			rv = get_str(v, "channel", 64, &r->channel, msg, msglen);
		} else if (key_is(k, "region")) {
			rv = get_str(v, "region", 64, &r->region, msg, msglen);
		} else if (key_is(k, "product")) {
			rv = get_str(v, "product", 64, &r->product, msg, msglen);
		} else if (key_is(k, "token")) {
			rv = get_str(v, "token", 256, &r->token, msg, msglen);
		} else if (key_is(k, "journey")) {
			rv = get_str(v, "journey", 64, &r->journey, msg, msglen);
		} else if (key_is(k, "version")) {
			rv = get_str(v, "version", 64, &r->version, msg, msglen);
			have |= F_VERSION;
		} else if (key_is(k, "history")) {
			rv = get_bool(v, "history", &r->history, msg, msglen);
		} else if (key_is(k, "ts")) {
			rv = get_int(v, "ts", 0, INT64_MAX, &r->ts, msg, msglen);
		} else if (key_is(k, "limit")) {
			rv = get_int(v, "limit", 1, 100, &x, msg, msglen);
			r->limit = (int) x;
		} else if (key_is(k, "decide")) {
			rv = get_bool(v, "decide", &r->decide, msg, msglen);
		} else if (key_is(k, "explain")) {
			rv = get_bool(v, "explain", &r->explain, msg, msglen);
		} else if (key_is(k, "record")) {
			rv = get_bool(v, "record", &r->record, msg, msglen);
		} else if (key_is(k, "data")) {
			if (v->type != MSGPACK_OBJECT_MAP) {
				FAIL("field 'data' must be a map");
			}
			if (mp_size(v, CH_MAX_DATA_BYTES) > CH_MAX_DATA_BYTES) {
				FAIL("field 'data' is larger than 64 KiB");
			}
			if (ch_mp_depth(v) > CH_MP_MAX_DEPTH) {
				FAIL("field 'data' nests more than 32 levels");
			}
			char path[96] = "data";
			bool key;
			if (!data_utf8(v, path, sizeof(path), 4, &key)) {
				if (key) {
					FAIL("field 'data': a key of %s is not "
					     "valid UTF-8",
					    path);
				}
				FAIL("field 'data': the string at %s is not "
				     "valid UTF-8 (bytes go as msgpack bin)",
				    path);
			}
			r->data = v;
			rv      = CH_OK;
		} else if (key_is(k, "events") && !in_batch) {
			events = v;
			rv     = CH_OK;
		} else {
			rv = CH_OK;
		}
		if (rv != CH_OK) {
			return (rv);
		}
	}
	int need = required(r->op);
	if ((need & F_BUSINESS) && !(have & F_BUSINESS)) {
		FAIL("field 'business' is required");
	}
	if ((need & F_CUSTOMER) && !(have & F_CUSTOMER)) {
		FAIL("field 'customer' is required");
	}
	if ((need & F_TYPE) && !(have & F_TYPE)) {
		FAIL("field 'type' is required");
	}
	if ((need & F_VERSION) && !(have & F_VERSION)) {
		FAIL("field 'version' is required");
	}
	if (r->op == CH_OP_BATCH) {
		if (events == NULL) {
			FAIL("field 'events' is required");
		}
		return (decode_batch(events, r, msg, msglen));
	}
	return (CH_OK);
}

int
ch_doc_decode(ch_doc *doc, const void *buf, size_t len)
{
	const char *why;
	size_t      off = 0;

	memset(&doc->req, 0, sizeof(doc->req));
	doc->errmsg[0] = '\0';
	msgpack_unpacked_init(&doc->up);
	ch_str field;
	if (ch_mp_prescan(buf, len, CH_MP_MAX_DEPTH, &why, &field) != CH_OK) {
		if (field.n > 0) {
			char q[68];
			quote(q, sizeof(q), field.p, field.n);
			snprintf(doc->errmsg, sizeof(doc->errmsg),
			    "field '%s': %s", q, why);
		} else {
			snprintf(doc->errmsg, sizeof(doc->errmsg),
			    "not a valid msgpack message: %s", why);
		}
		return (CH_EBADREQ);
	}
	if (msgpack_unpack_next(&doc->up, buf, len, &off) !=
	        MSGPACK_UNPACK_SUCCESS ||
	    off != len) {
		snprintf(doc->errmsg, sizeof(doc->errmsg),
		    "not a valid msgpack message");
		return (CH_EBADREQ);
	}
	return (decode_map(&doc->up.data, &doc->req, false, doc->errmsg,
	    sizeof(doc->errmsg)));
}

void
ch_doc_fini(ch_doc *doc)
{
	ch_req *r = &doc->req;
	for (uint32_t i = 0; i < r->nevents; i++) {
		free(r->events[i].errmsg);
	}
	free(r->events);
	r->events  = NULL;
	r->nevents = 0;
	msgpack_unpacked_destroy(&doc->up);
}

/* }====================================================== */

/*
** {======================================================
** Reply packing
** =======================================================
*/

int
ch_sbuffer_room(msgpack_sbuffer *b, size_t n)
{
	if (b->alloc - b->size >= n) {
		return (0);
	}
	size_t want = b->size + n;
	if (want < b->alloc * 2) {
		want = b->alloc * 2;
	}
	char *p = realloc(b->data, want);
	if (p == NULL) {
		return (-1);
	}
	b->data  = p;
	b->alloc = want;
	return (0);
}

void
ch_sbuffer_trim(msgpack_sbuffer *b, size_t keep)
{
	b->size = 0;
	if (b->alloc > keep && keep >= 4096) {
		char *p = realloc(b->data, 4096);
		if (p != NULL) { // else it keeps its memory, no harm done
			b->data  = p;
			b->alloc = 4096;
		}
	}
}

void
ch_pack_strn(msgpack_packer *pk, const char *s, size_t n)
{
	if (ch_utf8_valid(s, n)) {
		msgpack_pack_str(pk, n);
		msgpack_pack_str_body(pk, s, n);
		return;
	}
	// a message quoting bytes from elsewhere (a rule's error, a file
	// name): what is not UTF-8 is written as \xNN, in pieces of whole
	// characters through a buffer on the stack — nothing to allocate, so
	// an error reply with room for ch_pack_strn_len bytes always packs
	msgpack_pack_str(pk, ch_utf8_escape(NULL, 0, s, n, false));
	char   out[4 * 64];
	size_t i = 0;
	while (i < n) {
		size_t end = i;
		while (end < n && end - i < 60) {
			size_t q = ch_utf8_seq((const unsigned char *) s + end,
			    n - end);
			end += q > 0 ? q : 1;
		}
		size_t w = ch_utf8_escape(out, sizeof(out), s + i, end - i, false);
		msgpack_pack_str_body(pk, out, w);
		i = end;
	}
}

size_t
ch_pack_strn_len(const char *s, size_t n)
{
	size_t e = ch_utf8_valid(s, n) ? n : ch_utf8_escape(NULL, 0, s, n, false);
	return (5 + e);
}

void
ch_pack_str(msgpack_packer *pk, const char *s)
{
	ch_pack_strn(pk, s, strlen(s));
}

void
ch_pack_kv_str(msgpack_packer *pk, const char *k, const char *v)
{
	ch_pack_str(pk, k);
	ch_pack_str(pk, v);
}

void
ch_pack_error(msgpack_packer *pk, int err, const char *msg)
{
	msgpack_pack_map(pk, 2);
	ch_pack_str(pk, "ok");
	msgpack_pack_false(pk);
	ch_pack_str(pk, "error");
	msgpack_pack_map(pk, 2);
	ch_pack_kv_str(pk, "code", ch_err_code(err));
	ch_pack_kv_str(pk, "message", msg != NULL ? msg : ch_err_code(err));
}

/* }====================================================== */

// choreo — JSON ↔ msgpack. See json.h.
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"

static int
to_mp(json_t *j, msgpack_packer *pk, int depth)
{
	if (depth > CH_JSON_MAX_DEPTH) {
		return (-1);
	}
	switch (json_typeof(j)) {
	case JSON_OBJECT: {
		const char *k;
		json_t     *v;
		msgpack_pack_map(pk, json_object_size(j));
		json_object_foreach (j, k, v) {
			size_t n = strlen(k);
			msgpack_pack_str(pk, n);
			msgpack_pack_str_body(pk, k, n);
			if (to_mp(v, pk, depth + 1) != 0) {
				return (-1);
			}
		}
		return (0);
	}
	case JSON_ARRAY: {
		size_t  i;
		json_t *v;
		msgpack_pack_array(pk, json_array_size(j));
		json_array_foreach (j, i, v) {
			if (to_mp(v, pk, depth + 1) != 0) {
				return (-1);
			}
		}
		return (0);
	}
	case JSON_STRING: {
		size_t n = json_string_length(j);
		msgpack_pack_str(pk, n);
		msgpack_pack_str_body(pk, json_string_value(j), n);
		return (0);
	}
	case JSON_INTEGER:
		msgpack_pack_int64(pk, json_integer_value(j));
		return (0);
	case JSON_REAL:
		msgpack_pack_double(pk, json_real_value(j));
		return (0);
	case JSON_TRUE:
		msgpack_pack_true(pk);
		return (0);
	case JSON_FALSE:
		msgpack_pack_false(pk);
		return (0);
	default:
		msgpack_pack_nil(pk);
		return (0);
	}
}

int
ch_json_to_msgpack(json_t *j, msgpack_packer *pk)
{
	return (to_mp(j, pk, 0));
}

// text: bytes as a JSON string — as they are when valid UTF-8, else with
// each byte that is not as \xNN. NULL only when out of memory.
static json_t *
text(const char *p, size_t n)
{
	if (p == NULL) {
		p = ""; // msgpack-c's empty str, bin or ext (jansson fails on NULL)
	}
	if (ch_utf8_valid(p, n)) {
		return (json_stringn_nocheck(p, n));
	}
	size_t e   = ch_utf8_escape(NULL, 0, p, n, false);
	char  *out = malloc(e + 1);
	if (out == NULL) {
		return (NULL);
	}
	ch_utf8_escape(out, e + 1, p, n, false);
	json_t *j = json_stringn_nocheck(out, e);
	free(out);
	return (j);
}

// set: m[key] = v, the key as text (see text); v is stolen. -1 when out
// of memory.
static int
set(json_t *m, const char *k, size_t n, json_t *v)
{
	json_t *key = text(k, n);
	if (key == NULL) {
		json_decref(v);
		return (-1);
	}
	int rv = json_object_setn_new_nocheck(m, json_string_value(key),
	    json_string_length(key), v);
	json_decref(key);
	return (rv);
}

static json_t *
to_json(const msgpack_object *o, int depth)
{
	if (depth > CH_JSON_MAX_DEPTH) {
		return (NULL);
	}
	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		return (json_null());
	case MSGPACK_OBJECT_BOOLEAN:
		return (json_boolean(o->via.boolean));
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (o->via.u64 > (uint64_t) INT64_MAX) {
			return (json_real((double) o->via.u64));
		}
		return (json_integer((json_int_t) o->via.u64));
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		return (json_integer((json_int_t) o->via.i64));
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		if (!isfinite(o->via.f64)) {
			return (json_null());
		}
		return (json_real(o->via.f64));
	case MSGPACK_OBJECT_STR:
		return (text(o->via.str.ptr, o->via.str.size));
	case MSGPACK_OBJECT_BIN:
		return (text(o->via.bin.ptr, o->via.bin.size));
	case MSGPACK_OBJECT_EXT:
		return (text(o->via.ext.ptr, o->via.ext.size));
	case MSGPACK_OBJECT_ARRAY: {
		json_t *a = json_array();
		for (uint32_t i = 0; i < o->via.array.size; i++) {
			json_t *v = to_json(&o->via.array.ptr[i], depth + 1);
			if (v == NULL) {
				json_decref(a);
				return (NULL);
			}
			json_array_append_new(a, v);
		}
		return (a);
	}
	case MSGPACK_OBJECT_MAP: {
		json_t *m = json_object();
		for (uint32_t i = 0; i < o->via.map.size; i++) {
			const msgpack_object *k = &o->via.map.ptr[i].key;
			char                  kbuf[64] = "";
			if (k->type == MSGPACK_OBJECT_STR ||
			    k->type == MSGPACK_OBJECT_BIN) {
				json_t *v = to_json(&o->via.map.ptr[i].val,
				    depth + 1);
				if (v == NULL || set(m, k->via.str.ptr,
				                     k->via.str.size, v) != 0) {
					json_decref(m);
					return (NULL);
				}
				continue;
			} else if (k->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
				snprintf(kbuf, sizeof(kbuf), "%llu",
				    (unsigned long long) k->via.u64);
			} else if (k->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
				snprintf(kbuf, sizeof(kbuf), "%lld",
				    (long long) k->via.i64);
			} else if (k->type == MSGPACK_OBJECT_BOOLEAN) {
				snprintf(kbuf, sizeof(kbuf), "%s",
				    k->via.boolean ? "true" : "false");
			} else if (k->type == MSGPACK_OBJECT_FLOAT32 ||
			    k->type == MSGPACK_OBJECT_FLOAT64) {
				snprintf(kbuf, sizeof(kbuf), "%g", k->via.f64);
			} else {
				snprintf(kbuf, sizeof(kbuf), "(%s key)",
				    k->type == MSGPACK_OBJECT_NIL ? "nil"
				    : k->type == MSGPACK_OBJECT_EXT ? "ext"
				                                    : "container");
			}
			json_t *v = to_json(&o->via.map.ptr[i].val, depth + 1);
			if (v == NULL) {
				json_decref(m);
				return (NULL);
			}
			json_object_set_new_nocheck(m, kbuf, v);
		}
		return (m);
	}
	}
	return (json_null());
}

json_t *
ch_msgpack_to_json(const msgpack_object *o)
{
	return (to_json(o, 0));
}

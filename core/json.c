// choreo — JSON ↔ msgpack. See json.h.
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

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

// msgpack-c unpacks an empty str, bin or ext with a NULL pointer, which
// jansson takes for a failure (and strndup may not be given)
static const char *
bytes(const char *p)
{
	return (p != NULL ? p : "");
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
		return (json_stringn_nocheck(bytes(o->via.str.ptr),
		    o->via.str.size));
	case MSGPACK_OBJECT_BIN:
		return (json_stringn_nocheck(bytes(o->via.bin.ptr),
		    o->via.bin.size));
	case MSGPACK_OBJECT_EXT:
		return (json_stringn_nocheck(bytes(o->via.ext.ptr),
		    o->via.ext.size));
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
			char                  kbuf[64];
			char                 *key = kbuf;
			if (k->type == MSGPACK_OBJECT_STR) {
				key = strndup(bytes(k->via.str.ptr),
				    k->via.str.size);
			} else if (k->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
				snprintf(kbuf, sizeof(kbuf), "%llu",
				    (unsigned long long) k->via.u64);
			} else if (k->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
				snprintf(kbuf, sizeof(kbuf), "%lld",
				    (long long) k->via.i64);
			} else if (k->type == MSGPACK_OBJECT_BOOLEAN) {
				snprintf(kbuf, sizeof(kbuf), "%s",
				    k->via.boolean ? "true" : "false");
			} else {
				snprintf(kbuf, sizeof(kbuf), "%g", k->via.f64);
			}
			json_t *v = to_json(&o->via.map.ptr[i].val, depth + 1);
			if (v == NULL || key == NULL) {
				json_decref(v);
				json_decref(m);
				if (key != kbuf) {
					free(key);
				}
				return (NULL);
			}
			// checked: jansson dumps a key that is not UTF-8 as a
			// broken string (it checks only values when dumping)
			int rc = json_object_set_new(m, key, v);
			if (key != kbuf) {
				free(key);
			}
			if (rc != 0) {
				json_decref(m);
				return (NULL);
			}
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

// Fuzz target: the JSON of the command line (core/json.c), both ways, as
// `choreo send` runs them. The input is taken twice:
//  - as a request line: JSON text → a JSON object → msgpack, which must be
//    one well-formed msgpack value that decodes back to the same JSON, and
//    which the server's request decoder then reads;
//  - as a reply: msgpack bytes → JSON → the printed text, which must be
//    there for any map or array and parse again as JSON.
#include <jansson.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/codec.h"
#include "core/err.h"
#include "core/json.h"
#include "fuzz_util.h"

static void
as_request(const uint8_t *data, size_t size)
{
	// cli.c reads a NUL-terminated line or argument
	char *text = malloc(size + 1);
	FUZZ_ASSERT(text != NULL);
	memcpy(text, data, size);
	text[size] = '\0';
	json_error_t err;
	json_t      *req = json_loads(text, 0, &err);
	free(text);
	if (req == NULL || !json_is_object(req)) {
		json_decref(req);
		return;
	}
	msgpack_sbuffer buf;
	msgpack_packer  pk;
	msgpack_sbuffer_init(&buf);
	msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
	if (ch_json_to_msgpack(req, &pk) == 0) {
		const char *why;
		int rc = ch_mp_prescan(buf.data, buf.size, CH_JSON_MAX_DEPTH + 1,
		    &why, NULL);
		FUZZ_ASSERT(rc == CH_OK); // one well-formed value, nothing after
		// what the server does with it
		ch_doc doc;
		ch_doc_decode(&doc, buf.data, buf.size);
		ch_doc_fini(&doc);
		// and it is the same JSON again, when msgpack-c can unpack it
		msgpack_unpacked up;
		msgpack_unpacked_init(&up);
		if (ch_mp_prescan(buf.data, buf.size, CH_MP_MAX_DEPTH, &why,
		        NULL) == CH_OK) {
			FUZZ_ASSERT(msgpack_unpack_next(&up, buf.data, buf.size,
			                NULL) == MSGPACK_UNPACK_SUCCESS);
			json_t *back = ch_msgpack_to_json(&up.data);
			FUZZ_ASSERT(back != NULL && json_equal(req, back));
			json_decref(back);
		}
		msgpack_unpacked_destroy(&up);
	}
	msgpack_sbuffer_destroy(&buf);
	json_decref(req);
}

static void
as_reply(const uint8_t *data, size_t size)
{
	const char *why;
	if (ch_mp_prescan(data, size, CH_MP_MAX_DEPTH, &why, NULL) != CH_OK) {
		return;
	}
	msgpack_unpacked up;
	size_t           off = 0;
	msgpack_unpacked_init(&up);
	FUZZ_ASSERT(msgpack_unpack_next(&up, (const char *) data, size, &off) ==
	    MSGPACK_UNPACK_SUCCESS);
	json_t *j = ch_msgpack_to_json(&up.data);
	if (j != NULL) {
		for (int pretty = 0; pretty < 2; pretty++) {
			char *s = json_dumps(j, JSON_REAL_PRECISION(15) |
			        (pretty ? JSON_INDENT(2) : JSON_COMPACT));
			// whatever the map or array, it prints (json_dumps
			// writes nothing else, and a reply is a map)
			if (s == NULL) {
				FUZZ_ASSERT(!json_is_object(j) && !json_is_array(j));
				continue;
			}
			// and what is printed is JSON. jansson reads \u0000 back
			// in a string only when asked, and never in a key: every
			// \u0000 becomes \u0001 (as the text of an escaped
			// backslash, "\\u0000" stays as valid as it was)
			for (char *z = s; (z = strstr(z, "\\u0000")) != NULL;) {
				z[5] = '1';
			}
			json_error_t err;
			json_t *again = json_loads(s, JSON_DECODE_ANY, &err);
			FUZZ_ASSERT(again != NULL);
			json_decref(again);
			free(s);
		}
		(void) json_is_true(json_object_get(j, "ok"));
		json_decref(j);
	}
	msgpack_unpacked_destroy(&up);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	as_request(data, size);
	as_reply(data, size);
	return (0);
}

// msgpack to JSON for the command-line tools (core/json.c): whatever the
// reply holds — bin, a str that is not UTF-8, keys with NUL — the JSON is
// one json_dumps writes, never the "null" it gives for invalid UTF-8.
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"

static msgpack_sbuffer buf;
static msgpack_packer  pk;

static void
setup(void)
{
	msgpack_sbuffer_init(&buf);
	msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
}

static void
teardown(void)
{
	msgpack_sbuffer_destroy(&buf);
}

TestSuite(json, .init = setup, .fini = teardown);

static void
str(const char *s, size_t n)
{
	msgpack_pack_str(&pk, n);
	msgpack_pack_str_body(&pk, s, n);
}

static void
bin(const char *s, size_t n)
{
	msgpack_pack_bin(&pk, n);
	msgpack_pack_bin_body(&pk, s, n);
}

// dumped: what was packed, as the JSON text the CLI prints (malloc'd).
static char *
dumped(void)
{
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	cr_assert_eq(msgpack_unpack_next(&up, buf.data, buf.size, NULL),
	    MSGPACK_UNPACK_SUCCESS);
	json_t *j = ch_msgpack_to_json(&up.data);
	cr_assert_not_null(j);
	char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
	cr_assert_not_null(s, "json_dumps refused the value");
	json_decref(j);
	msgpack_unpacked_destroy(&up);
	return (s);
}

Test(json, bytes_and_strings_that_are_not_utf8_print_with_escapes)
{
	msgpack_pack_map(&pk, 5);
	str("bin", 3);
	bin("\xff\0a", 3);
	str("latin1", 6);
	str("caf\xe9", 4); // a str that is not UTF-8 (an older daemon's)
	str("text", 4);
	str("Zoë", 4);
	bin("\xc8", 1); // a bin key
	str("k", 1);
	str("a\0b", 3); // a key with a NUL: kept whole
	msgpack_pack_int(&pk, 1);
	char *s = dumped();
	cr_assert_str_eq(s, "{\"\\\\xc8\":\"k\",\"a\\u0000b\":1,"
	                    "\"bin\":\"\\\\xff\\u0000a\",\"latin1\":\"caf\\\\xe9\","
	                    "\"text\":\"Zoë\"}");
	free(s);
}

Test(json, keys_of_other_types_are_text)
{
	msgpack_pack_map(&pk, 4);
	msgpack_pack_int(&pk, -3);
	msgpack_pack_true(&pk);
	msgpack_pack_true(&pk);
	msgpack_pack_int(&pk, 1);
	msgpack_pack_nil(&pk);
	msgpack_pack_int(&pk, 2);
	msgpack_pack_array(&pk, 0);
	msgpack_pack_int(&pk, 3);
	char *s = dumped();
	cr_assert_str_eq(s, "{\"(container key)\":3,\"(nil key)\":2,\"-3\":true,"
	                    "\"true\":1}");
	free(s);
}

Test(json, too_deep_is_null_for_the_caller_to_report)
{
	// deeper than msgpack-c unpacks: built by hand
	enum { N = CH_JSON_MAX_DEPTH + 2 };
	msgpack_object o[N + 1];
	for (int i = 0; i < N; i++) {
		o[i].type           = MSGPACK_OBJECT_ARRAY;
		o[i].via.array.size = 1;
		o[i].via.array.ptr  = &o[i + 1];
	}
	o[N].type = MSGPACK_OBJECT_NIL;
	cr_assert_null(ch_msgpack_to_json(&o[0]));
	json_t *j = ch_msgpack_to_json(&o[N - CH_JSON_MAX_DEPTH]);
	cr_assert_not_null(j, "at the limit it converts");
	json_decref(j);
}

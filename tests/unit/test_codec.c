// The request codec: every way a request can be refused, and the defaults.
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "core/codec.h"
#include "core/err.h"
#include "core/utf8.h"

static msgpack_sbuffer buf;
static msgpack_packer  pk;
static ch_doc          doc;

static void
setup(void)
{
	msgpack_sbuffer_init(&buf);
	msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
}

static void
teardown(void)
{
	ch_doc_fini(&doc);
	msgpack_sbuffer_destroy(&buf);
}

TestSuite(codec, .init = setup, .fini = teardown);

static void
kv(const char *k, const char *v)
{
	msgpack_pack_str(&pk, strlen(k));
	msgpack_pack_str_body(&pk, k, strlen(k));
	msgpack_pack_str(&pk, strlen(v));
	msgpack_pack_str_body(&pk, v, strlen(v));
}

static void
key(const char *k)
{
	msgpack_pack_str(&pk, strlen(k));
	msgpack_pack_str_body(&pk, k, strlen(k));
}

static int
decode(void)
{
	return (ch_doc_decode(&doc, buf.data, buf.size));
}

static int
decode_bytes(const char *b, size_t n)
{
	return (ch_doc_decode(&doc, b, n));
}

// event3 packs a map header of 3 + extra entries and the three required
// fields of an event.
static void
event3(int extra)
{
	msgpack_pack_map(&pk, 3 + extra);
	kv("business", "shop");
	kv("customer", "c1");
	kv("type", "page_view");
}

#define REFUSED(substr)                                                  \
	do {                                                             \
		cr_assert_eq(decode(), CH_EBADREQ);                      \
		cr_assert_not_null(strstr(doc.errmsg, substr),           \
		    "message '%s' should mention '%s'", doc.errmsg, substr); \
	} while (0)

Test(codec, a_minimal_event_and_its_defaults)
{
	event3(0);
	cr_assert_eq(decode(), CH_OK, "%s", doc.errmsg);
	cr_assert_eq(doc.req.op, CH_OP_EVENT);
	cr_assert_eq(doc.req.business.n, 4);
	cr_assert_eq(memcmp(doc.req.business.p, "shop", 4), 0);
	cr_assert_eq(doc.req.decide, true);
	cr_assert_eq(doc.req.record, true);
	cr_assert_eq(doc.req.explain, false);
	cr_assert_eq(doc.req.limit, 3);
	cr_assert_null(doc.req.data);
}

Test(codec, every_optional_field)
{
	event3(9);
	kv("id", "e-1");
	key("ts");
	msgpack_pack_int64(&pk, 1767225600000);
	kv("channel", "web");
	kv("region", "EU");
	kv("product", "card");
	key("data");
	msgpack_pack_map(&pk, 1);
	kv("amount", "10");
	key("decide");
	msgpack_pack_false(&pk);
	key("limit");
	msgpack_pack_int(&pk, 7);
	key("unknown_field_is_ignored");
	msgpack_pack_nil(&pk);
	cr_assert_eq(decode(), CH_OK, "%s", doc.errmsg);
	cr_assert_eq(doc.req.ts, 1767225600000);
	cr_assert_eq(doc.req.limit, 7);
	cr_assert_eq(doc.req.decide, false);
	cr_assert_not_null(doc.req.data);
	cr_assert_eq(doc.req.region.n, 2);
}

Test(codec, not_msgpack)
{
	cr_assert_eq(decode_bytes("\xc1", 1), CH_EBADREQ);
	cr_assert_not_null(strstr(doc.errmsg, "msgpack"));
}

Test(codec, empty_message)
{
	cr_assert_eq(decode_bytes("", 0), CH_EBADREQ);
}

Test(codec, garbage_text)
{
	const char *g = "GET / HTTP/1.1\r\n\r\n";
	cr_assert_eq(decode_bytes(g, strlen(g)), CH_EBADREQ);
}

Test(codec, an_array_body)
{
	msgpack_pack_array(&pk, 1);
	msgpack_pack_int(&pk, 1);
	REFUSED("must be a msgpack map");
}

Test(codec, trailing_bytes)
{
	event3(0);
	msgpack_pack_int(&pk, 1);
	REFUSED("trailing");
	// they follow the map: no field of it is to blame
	cr_assert_null(strstr(doc.errmsg, "field"), "%s", doc.errmsg);
	cr_assert_str_eq(doc.errmsg, "not a valid msgpack message: trailing "
	                             "bytes after the msgpack map");
}

Test(codec, the_field_whose_value_is_cut_short_is_named)
{
	// the last value truncated: that field; a key cut short: no field
	event3(1);
	key("data");
	msgpack_pack_map(&pk, 2);
	kv("a", "b");
	cr_assert_eq(decode(), CH_EBADREQ);
	cr_assert_not_null(strstr(doc.errmsg, "field 'data': truncated"), "%s",
	    doc.errmsg);
	ch_doc_fini(&doc);
	msgpack_sbuffer_clear(&buf);
	event3(1);
	cr_assert_eq(decode(), CH_EBADREQ);
	cr_assert_str_eq(doc.errmsg, "not a valid msgpack message: truncated "
	                             "msgpack");
}

Test(codec, truncated)
{
	event3(0);
	cr_assert_eq(decode_bytes(buf.data, buf.size - 3), CH_EBADREQ);
	cr_assert_not_null(strstr(doc.errmsg, "truncated"), "%s", doc.errmsg);
}

Test(codec, five_byte_headers_claiming_billions_are_refused_before_unpacking)
{
	// msgpack-c would allocate for the claimed count (1 GiB, 8 GiB, 256 GiB)
	const char *bombs[] = { "\xdd\x0f\xff\xff\xff", "\xdf\x00\xff\xff\xff",
		"\xdf\xff\xff\xff\xff", "\xdb\xff\xff\xff\xff" };
	for (size_t i = 0; i < 4; i++) {
		cr_assert_eq(decode_bytes(bombs[i], 5), CH_EBADREQ);
		cr_assert_not_null(strstr(doc.errmsg, "exceeds"), "%s",
		    doc.errmsg);
		ch_doc_fini(&doc);
	}
	memset(&doc, 0, sizeof(doc));
	msgpack_unpacked_init(&doc.up);
}

static void
nested(int depth)
{
	event3(1);
	key("data");
	for (int i = 0; i < depth; i++) {
		msgpack_pack_map(&pk, 1);
		key("a");
	}
	msgpack_pack_int(&pk, 1);
}

Test(codec, nesting_past_msgpack_c_limit_names_the_field)
{
	nested(32); // the request map + 32 = 33 containers
	REFUSED("field 'data'");
	cr_assert_not_null(strstr(doc.errmsg, "32 levels"));
}

Test(codec, a_2000_deep_map)
{
	nested(2000);
	REFUSED("32 levels");
}

Test(codec, nesting_at_the_limit_is_accepted)
{
	nested(31);
	cr_assert_eq(decode(), CH_OK, "%s", doc.errmsg);
}

Test(codec, required_fields_per_op)
{
	msgpack_pack_map(&pk, 2);
	kv("business", "shop");
	kv("customer", "c1");
	REFUSED("field 'type' is required");
}

Test(codec, decide_needs_a_customer)
{
	msgpack_pack_map(&pk, 2);
	kv("op", "decide");
	kv("business", "shop");
	REFUSED("field 'customer' is required");
}

Test(codec, get_needs_a_business)
{
	msgpack_pack_map(&pk, 2);
	kv("op", "get");
	kv("customer", "c1");
	REFUSED("field 'business' is required");
}

Test(codec, rules_and_ping_need_nothing)
{
	msgpack_pack_map(&pk, 1);
	kv("op", "ping");
	cr_assert_eq(decode(), CH_OK);
	cr_assert_eq(doc.req.op, CH_OP_PING);
}

Test(codec, unknown_op)
{
	msgpack_pack_map(&pk, 1);
	kv("op", "explode");
	REFUSED("unknown op 'explode'");
}

Test(codec, business_as_an_integer)
{
	msgpack_pack_map(&pk, 3);
	key("business");
	msgpack_pack_int(&pk, 1);
	kv("customer", "c1");
	kv("type", "x");
	REFUSED("field 'business' must be a string");
}

Test(codec, customer_as_an_integer)
{
	msgpack_pack_map(&pk, 3);
	kv("business", "b");
	key("customer");
	msgpack_pack_int(&pk, 1);
	kv("type", "x");
	REFUSED("field 'customer' must be a string");
}

Test(codec, business_with_a_bad_character)
{
	const char *bad[] = { "a b", "a/b", "../x", "é" };
	for (size_t i = 0; i < 4; i++) {
		msgpack_sbuffer_clear(&buf);
		msgpack_pack_map(&pk, 3);
		kv("business", bad[i]);
		kv("customer", "c1");
		kv("type", "x");
		cr_assert_eq(decode(), CH_EBADREQ, "%s", bad[i]);
		cr_assert_not_null(strstr(doc.errmsg, "'business'"));
		ch_doc_fini(&doc);
	}
	memset(&doc, 0, sizeof(doc));
	msgpack_unpacked_init(&doc.up);
}

static void
sized(const char *field, size_t n)
{
	char *s = malloc(n + 1);
	memset(s, 'x', n);
	s[n] = '\0';
	msgpack_pack_map(&pk, 4);
	kv("business", "shop");
	kv("customer", "c1");
	kv("type", "t");
	kv(field, s);
	free(s);
}

Test(codec, field_lengths)
{
	struct {
		const char *f;
		size_t      ok, bad;
	} cases[] = { { "business", 64, 65 }, { "customer", 256, 257 },
		{ "type", 64, 65 }, { "id", 128, 129 }, { "channel", 64, 65 },
		{ "region", 64, 65 }, { "product", 64, 65 } };
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		msgpack_sbuffer_clear(&buf);
		sized(cases[i].f, cases[i].ok);
		cr_assert_eq(decode(), CH_OK, "%s %zu: %s", cases[i].f,
		    cases[i].ok, doc.errmsg);
		ch_doc_fini(&doc);
		msgpack_sbuffer_clear(&buf);
		sized(cases[i].f, cases[i].bad);
		cr_assert_eq(decode(), CH_EBADREQ, "%s %zu", cases[i].f,
		    cases[i].bad);
		cr_assert_not_null(strstr(doc.errmsg, cases[i].f));
		ch_doc_fini(&doc);
		msgpack_sbuffer_clear(&buf);
		sized(cases[i].f, 0);
		cr_assert_eq(decode(), CH_EBADREQ, "%s empty", cases[i].f);
		ch_doc_fini(&doc);
	}
	memset(&doc, 0, sizeof(doc));
	msgpack_unpacked_init(&doc.up);
}

// with: an event whose field f holds v[0..n) (a fourth field, or one of
// the three replaced).
static void
with(const char *f, const char *v, size_t n)
{
	const char *req[] = { "business", "customer", "type" };
	const char *val[] = { "shop", "c1", "t" };
	bool        own   = true;
	for (int i = 0; i < 3; i++) {
		own = own && strcmp(req[i], f) != 0;
	}
	msgpack_pack_map(&pk, own ? 4 : 3);
	for (int i = 0; i < 3; i++) {
		key(req[i]);
		bool here = strcmp(req[i], f) == 0;
		msgpack_pack_str(&pk, here ? n : strlen(val[i]));
		msgpack_pack_str_body(&pk, here ? v : val[i],
		    here ? n : strlen(val[i]));
	}
	if (own) {
		key(f);
		msgpack_pack_str(&pk, n);
		msgpack_pack_str_body(&pk, v, n);
	}
}

Test(codec, identifiers_are_utf8_without_nul)
{
	const char *fields[] = { "business", "customer", "type", "id",
		"channel", "region", "product", "token", "journey", "version" };
	const struct {
		const char *v;
		size_t      n;
	} bad[] = { { "a\0b", 3 }, { "\0", 1 }, { "ab\0", 3 }, { "\xff", 1 },
		{ "a\xc3", 2 }, { "\xc0\xaf", 2 }, { "\xed\xa0\x80", 3 },
		{ "\xf4\x90\x80\x80", 4 }, { "\x80" "abc", 4 } };
	for (size_t f = 0; f < sizeof(fields) / sizeof(fields[0]); f++) {
		for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
			msgpack_sbuffer_clear(&buf);
			with(fields[f], bad[b].v, bad[b].n);
			cr_assert_eq(decode(), CH_EBADREQ, "%s, bad[%zu]",
			    fields[f], b);
			char want[64];
			snprintf(want, sizeof(want), "field '%s'", fields[f]);
			cr_assert_not_null(strstr(doc.errmsg, want), "%s",
			    doc.errmsg);
			ch_doc_fini(&doc);
		}
		if (strcmp(fields[f], "business") != 0) {
			msgpack_sbuffer_clear(&buf);
			with(fields[f], "Zoë ✓ 顧客", strlen("Zoë ✓ 顧客"));
			cr_assert_eq(decode(), CH_OK, "%s: %s", fields[f],
			    doc.errmsg);
			ch_doc_fini(&doc);
		}
	}
	memset(&doc, 0, sizeof(doc));
	msgpack_unpacked_init(&doc.up);
}

Test(codec, a_nul_in_a_customer_is_named)
{
	with("customer", "victim\0zz", 9);
	REFUSED("field 'customer' must be valid UTF-8 without NUL bytes");
}

// data_event: an event whose data is the map packed by the caller next.
static void
data_event(void)
{
	event3(1);
	key("data");
}

Test(codec, strings_in_data_are_utf8_and_the_path_is_named)
{
	data_event();
	msgpack_pack_map(&pk, 2);
	kv("ok", "Zoë");
	key("list");
	msgpack_pack_array(&pk, 3);
	msgpack_pack_int(&pk, 1);
	msgpack_pack_map(&pk, 1);
	key("note");
	msgpack_pack_str(&pk, 2);
	msgpack_pack_str_body(&pk, "a\xff", 2);
	msgpack_pack_nil(&pk);
	REFUSED("field 'data': the string at data.list[1].note is not valid "
	        "UTF-8");
}

Test(codec, a_key_in_data_that_is_not_utf8_is_named)
{
	data_event();
	msgpack_pack_map(&pk, 1);
	key("profile");
	msgpack_pack_map(&pk, 1);
	msgpack_pack_str(&pk, 2);
	msgpack_pack_str_body(&pk, "\xc3(", 2);
	msgpack_pack_int(&pk, 1);
	REFUSED("field 'data': a key of data.profile is not valid UTF-8");
}

Test(codec, bin_in_data_is_bytes_and_nul_in_a_data_string_is_text)
{
	data_event();
	msgpack_pack_map(&pk, 2);
	key("blob");
	msgpack_pack_bin(&pk, 3);
	msgpack_pack_bin_body(&pk, "\xff\0\xc3", 3);
	key("text");
	msgpack_pack_str(&pk, 3);
	msgpack_pack_str_body(&pk, "a\0b", 3);
	cr_assert_eq(decode(), CH_OK, "%s", doc.errmsg);
}

Test(codec, a_long_path_is_cut_between_characters)
{
	data_event();
	for (int i = 0; i < 20; i++) {
		msgpack_pack_map(&pk, 1);
		key("ééééé");
	}
	msgpack_pack_str(&pk, 1);
	msgpack_pack_str_body(&pk, "\xff", 1);
	cr_assert_eq(decode(), CH_EBADREQ);
	cr_assert(ch_utf8_valid(doc.errmsg, strlen(doc.errmsg)), "%s",
	    doc.errmsg);
	cr_assert_not_null(strstr(doc.errmsg, "data.ééééé.ééééé"), "%s",
	    doc.errmsg);
}

Test(codec, a_300k_field)
{
	sized("customer", 300 * 1024);
	REFUSED("'customer' must be 1 to 256 bytes");
}

Test(codec, data_over_64k)
{
	char *big = malloc(70000);
	memset(big, 'y', 70000);
	event3(1);
	key("data");
	msgpack_pack_map(&pk, 1);
	key("blob");
	msgpack_pack_str(&pk, 70000);
	msgpack_pack_str_body(&pk, big, 70000);
	free(big);
	REFUSED("'data' is larger than 64 KiB");
}

Test(codec, data_as_an_array)
{
	event3(1);
	key("data");
	msgpack_pack_array(&pk, 0);
	REFUSED("field 'data' must be a map");
}

Test(codec, ts_as_a_string)
{
	event3(1);
	kv("ts", "yesterday");
	REFUSED("field 'ts' must be an integer");
}

Test(codec, negative_ts)
{
	event3(1);
	key("ts");
	msgpack_pack_int(&pk, -5);
	REFUSED("field 'ts'");
}

Test(codec, limit_bounds)
{
	int bad[] = { 0, 101, -1 };
	for (int i = 0; i < 3; i++) {
		msgpack_sbuffer_clear(&buf);
		event3(1);
		key("limit");
		msgpack_pack_int(&pk, bad[i]);
		cr_assert_eq(decode(), CH_EBADREQ);
		cr_assert_not_null(strstr(doc.errmsg, "'limit'"));
		ch_doc_fini(&doc);
	}
	memset(&doc, 0, sizeof(doc));
	msgpack_unpacked_init(&doc.up);
}

Test(codec, decide_as_a_string)
{
	event3(1);
	kv("decide", "yes");
	REFUSED("field 'decide' must be a boolean");
}

static void
batch(int n, int bad_at)
{
	msgpack_pack_map(&pk, 2);
	kv("op", "batch");
	key("events");
	msgpack_pack_array(&pk, (size_t) n);
	for (int i = 0; i < n; i++) {
		msgpack_pack_map(&pk, 3);
		kv("business", "shop");
		if (i == bad_at) {
			key("customer");
			msgpack_pack_int(&pk, 7);
		} else {
			kv("customer", "c1");
		}
		kv("type", "t");
	}
}

Test(codec, a_batch_of_1000)
{
	batch(1000, -1);
	cr_assert_eq(decode(), CH_OK, "%s", doc.errmsg);
	cr_assert_eq(doc.req.nevents, 1000);
	cr_assert_eq(doc.req.events[999].err, CH_OK);
}

Test(codec, a_batch_of_1001)
{
	batch(1001, -1);
	REFUSED("at most 1000");
}

Test(codec, a_bad_batch_member_has_its_own_error)
{
	batch(3, 1);
	cr_assert_eq(decode(), CH_OK);
	cr_assert_eq(doc.req.events[0].err, CH_OK);
	cr_assert_eq(doc.req.events[1].err, CH_EBADREQ);
	cr_assert_not_null(strstr(doc.req.events[1].errmsg, "events[1]"));
	cr_assert_not_null(strstr(doc.req.events[1].errmsg, "'customer'"));
	cr_assert_eq(doc.req.events[2].err, CH_OK);
}

Test(codec, pack_error_reads_back)
{
	ch_pack_error(&pk, CH_ENOTFOUND, "gone");
	msgpack_unpacked up;
	size_t           off = 0;
	msgpack_unpacked_init(&up);
	cr_assert_eq(msgpack_unpack_next(&up, buf.data, buf.size, &off),
	    MSGPACK_UNPACK_SUCCESS);
	cr_assert_eq(up.data.type, MSGPACK_OBJECT_MAP);
	cr_assert_eq(up.data.via.map.size, 2);
	msgpack_object *ok  = &up.data.via.map.ptr[0].val;
	msgpack_object *err = &up.data.via.map.ptr[1].val;
	cr_assert_eq(ok->type, MSGPACK_OBJECT_BOOLEAN);
	cr_assert_eq(ok->via.boolean, false);
	cr_assert_eq(err->via.map.ptr[0].val.via.str.size, 9);
	cr_assert_eq(memcmp(err->via.map.ptr[0].val.via.str.ptr, "not_found", 9),
	    0);
	msgpack_unpacked_destroy(&up);
}

Test(codec, packed_strings_are_utf8_whatever_they_quote)
{
	ch_pack_error(&pk, CH_ERULE, "rules/x.lua:3: cannot use caf\xe9 \xc3");
	ch_pack_strn(&pk, "é\0ok", 5);
	msgpack_unpacked up;
	size_t           off = 0;
	msgpack_unpacked_init(&up);
	cr_assert_eq(msgpack_unpack_next(&up, buf.data, buf.size, &off),
	    MSGPACK_UNPACK_SUCCESS);
	const msgpack_object *m = ch_mp_get(ch_mp_get(&up.data, "error",
	                                        MSGPACK_OBJECT_MAP),
	    "message", MSGPACK_OBJECT_STR);
	cr_assert_not_null(m);
	cr_assert_eq(m->via.str.size, strlen("rules/x.lua:3: cannot use "
	                                     "caf\\xe9 \\xc3"));
	cr_assert_eq(memcmp(m->via.str.ptr,
	                 "rules/x.lua:3: cannot use caf\\xe9 \\xc3",
	                 m->via.str.size),
	    0);
	// valid text goes as it is, NUL included
	cr_assert_eq(msgpack_unpack_next(&up, buf.data, buf.size, &off),
	    MSGPACK_UNPACK_SUCCESS);
	cr_assert_eq(up.data.type, MSGPACK_OBJECT_STR);
	cr_assert_eq(up.data.via.str.size, 5);
	cr_assert_eq(memcmp(up.data.via.str.ptr, "é\0ok", 5), 0);
	msgpack_unpacked_destroy(&up);
}

Test(codec, a_long_string_is_escaped_in_pieces_alike)
{
	// whole characters across the pieces ch_pack_strn escapes at a time
	char in[1200];
	size_t n = 0;
	for (int i = 0; i < 150; i++) {
		memcpy(in + n, i % 7 == 3 ? "\xff" : "\xe2\x9c\x93", i % 7 == 3 ? 1 : 3);
		n += i % 7 == 3 ? 1 : 3;
		in[n++] = (char) ('a' + i % 26);
	}
	ch_pack_strn(&pk, in, n);
	size_t want = ch_utf8_escape(NULL, 0, in, n, false);
	char  *all  = malloc(want + 1);
	ch_utf8_escape(all, want + 1, in, n, false);
	cr_assert_eq(ch_pack_strn_len(in, n), 5 + want);
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	cr_assert_eq(msgpack_unpack_next(&up, buf.data, buf.size, NULL),
	    MSGPACK_UNPACK_SUCCESS);
	cr_assert_eq(up.data.type, MSGPACK_OBJECT_STR);
	cr_assert_eq(up.data.via.str.size, want);
	cr_assert_eq(memcmp(up.data.via.str.ptr, all, want), 0);
	cr_assert(ch_utf8_valid(up.data.via.str.ptr, want));
	msgpack_unpacked_destroy(&up);
	free(all);
}

Test(codec, an_unknown_op_is_quoted_as_text)
{
	msgpack_pack_map(&pk, 1);
	key("op");
	msgpack_pack_str(&pk, 4);
	msgpack_pack_str_body(&pk, "\xff\0\xc3\xa9", 4);
	REFUSED("unknown op '\\xff\\x00é'");
}

Test(codec, prescan_agrees_with_the_unpacker)
{
	// a valid document with every type: prescan and unpacker both accept
	msgpack_pack_map(&pk, 7);
	kv("s", "x");
	key("i");
	msgpack_pack_int64(&pk, -123456789012);
	key("u");
	msgpack_pack_uint64(&pk, 18446744073709551615ull);
	key("f");
	msgpack_pack_double(&pk, 1.5);
	key("b");
	msgpack_pack_bin(&pk, 3);
	msgpack_pack_bin_body(&pk, "abc", 3);
	key("e");
	msgpack_pack_ext(&pk, 2, 1);
	msgpack_pack_ext_body(&pk, "zz", 2);
	key("a");
	msgpack_pack_array(&pk, 0);
	const char *why;
	cr_assert_eq(ch_mp_prescan(buf.data, buf.size, 32, &why, NULL), CH_OK);
}

// Identifiers and text: what a request's strings may hold, and what choreo
// writes back. An identifier is valid UTF-8 without NUL bytes, or the
// request is refused and nothing changes; every string of every reply is
// valid UTF-8 (support.c holds every decoded reply to it); bytes a rule
// stores come back byte for byte as msgpack bin.
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support.h"

static daemon_t d;

static void
setup(void)
{
	memset(&d, 0, sizeof(d));
}

static void
teardown(void)
{
	d_cleanup(&d);
}

TestSuite(text, .init = setup, .fini = teardown);

static void
event(const char *json)
{
	reply_t r;
	call_json(&d, json, &r);
	assert_ok(&r);
	reply_free(&r);
}

// get_shop: the get reply for a customer of the shop (any bytes).
static void
get_shop(const char *customer, size_t n, reply_t *r)
{
	req_t q;
	req_init(&q, 3);
	req_str(&q, "op", "get");
	req_str(&q, "business", "shop");
	req_strn(&q, "customer", customer, n);
	call(&d, &q, r);
	req_free(&q);
}

/*
** {======================================================
** Identifiers
** =======================================================
*/

Test(text, a_nul_in_a_customer_id_is_refused_and_no_one_else_is_touched)
{
	d_start(&d, d_rules(), false);
	event("{\"business\":\"shop\",\"customer\":\"victim\",\"type\":"
	      "\"page_view\"}");
	// "victim\0zz" sets a timer: its key, cut at the NUL, would name
	// "victim", and the timer would run on victim
	req_t q;
	req_init(&q, 4);
	req_str(&q, "business", "shop");
	req_strn(&q, "customer", "victim\0zz", 9);
	req_str(&q, "type", "remind_me");
	req_key(&q, "data");
	msgpack_pack_map(&q.pk, 1);
	req_str(&q, "after", "1s");
	reply_t r;
	call(&d, &q, &r);
	req_free(&q);
	assert_code(&r, "bad_request");
	cr_assert_not_null(strstr(emsg(&r), "'customer'"), "%s", dump(&r));
	cr_assert_not_null(strstr(emsg(&r), "NUL"), "%s", dump(&r));
	reply_free(&r);
	get_shop("victim\0zz", 9, &r);
	assert_code(&r, "bad_request");
	reply_free(&r);
	// well past the timer's due time: victim is as it was
	usleep(2500 * 1000);
	get_shop("victim", 6, &r);
	assert_ok(&r);
	cr_assert_eq(int_at(&r, "customer.counters.events"), 1, "%s", dump(&r));
	cr_assert_not(has(&r, "customer.counters.reminders"),
	    "a timer of another customer ran on victim: %s", dump(&r));
	cr_assert_not(has(&r, "customer.timers"), "%s", dump(&r));
	reply_free(&r);
	d_stop(&d);
}

// expect_refused sends an event whose field holds bytes v[0..n) and
// expects bad_request naming that field (the reply's strings are valid
// UTF-8: support.c checks every reply).
static void
expect_refused(const char *field, const char *v, size_t n)
{
	const char *fields[] = { "business", "customer", "type" };
	const char *values[] = { "shop", "c1", "page_view" };
	req_t       q;
	req_init(&q, 4);
	for (int i = 0; i < 3; i++) {
		if (strcmp(fields[i], field) == 0) {
			req_strn(&q, field, v, n);
		} else {
			req_str(&q, fields[i], values[i]);
		}
	}
	if (strcmp(field, "business") == 0 || strcmp(field, "customer") == 0 ||
	    strcmp(field, "type") == 0) {
		req_str(&q, "channel", "web"); // the fourth pair
	} else {
		req_strn(&q, field, v, n);
	}
	reply_t r;
	call(&d, &q, &r);
	req_free(&q);
	assert_code(&r, "bad_request");
	char want[64];
	snprintf(want, sizeof(want), "'%s'", field);
	cr_assert_not_null(strstr(emsg(&r), want), "%s: %s", field, dump(&r));
	reply_free(&r);
}

Test(text, every_identifier_must_be_utf8_without_nul)
{
	d_start(&d, d_rules(), false);
	const char *fields[] = { "business", "customer", "type", "id",
		"channel", "region", "product", "token", "journey", "version" };
	// a stray continuation byte, a truncated sequence, an overlong '/', a
	// surrogate, a code point past U+10FFFF, a NUL
	const struct {
		const char *v;
		size_t      n;
	} bad[] = { { "a\x80", 2 }, { "ab\xc3", 3 }, { "\xc0\xaf", 2 },
		{ "\xed\xa0\x80", 3 }, { "\xf4\x90\x80\x80", 4 }, { "a\0b", 3 },
		{ "\xff", 1 } };
	for (size_t f = 0; f < sizeof(fields) / sizeof(fields[0]); f++) {
		for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
			expect_refused(fields[f], bad[b].v, bad[b].n);
		}
	}
	// and the same field with text in it is fine
	event("{\"business\":\"shop\",\"customer\":\"Zoë ✓ 顧客\",\"type\":"
	      "\"page_view\",\"region\":\"Ελλάδα\",\"id\":\"ü-1\"}");
	reply_t r;
	get_shop("Zoë ✓ 顧客", strlen("Zoë ✓ 顧客"), &r);
	assert_ok(&r);
	cr_assert_str_eq(str_at(&r, "customer.id"), "Zoë ✓ 顧客");
	reply_free(&r);
	// nothing was stored for any refused request
	get_shop("c1", 2, &r);
	assert_code(&r, "not_found");
	reply_free(&r);
	d_stop(&d);
}

Test(text, trailing_bytes_blame_no_field)
{
	d_start(&d, d_rules(), false);
	req_t q;
	req_init(&q, 3);
	req_str(&q, "business", "shop");
	req_str(&q, "customer", "c1");
	req_str(&q, "type", "page_view");
	msgpack_pack_int(&q.pk, 7); // after the map
	reply_t r;
	call(&d, &q, &r);
	req_free(&q);
	assert_code(&r, "bad_request");
	cr_assert_str_eq(emsg(&r), "not a valid msgpack message: trailing "
	                           "bytes after the msgpack map");
	reply_free(&r);
	d_stop(&d);
}

Test(text, strings_in_data_must_be_utf8_bytes_go_as_bin)
{
	d_start(&d, d_rules(), false);
	req_t q;
	req_init(&q, 4);
	req_str(&q, "business", "shop");
	req_str(&q, "customer", "d1");
	req_str(&q, "type", "profile");
	req_key(&q, "data");
	msgpack_pack_map(&q.pk, 1);
	req_strn(&q, "note", "caf\xe9", 4); // Latin-1, not UTF-8
	reply_t r;
	call(&d, &q, &r);
	req_free(&q);
	assert_code(&r, "bad_request");
	cr_assert_not_null(strstr(emsg(&r), "data.note"), "%s", dump(&r));
	reply_free(&r);
	// a key too
	req_init(&q, 4);
	req_str(&q, "business", "shop");
	req_str(&q, "customer", "d1");
	req_str(&q, "type", "profile");
	req_key(&q, "data");
	msgpack_pack_map(&q.pk, 1);
	req_strn(&q, "caf\xe9", "x", 1);
	call(&d, &q, &r);
	req_free(&q);
	assert_code(&r, "bad_request");
	cr_assert_not_null(strstr(emsg(&r), "'data'"), "%s", dump(&r));
	reply_free(&r);
	get_shop("d1", 2, &r);
	assert_code(&r, "not_found");
	reply_free(&r);
	// the same bytes as bin are data like any other
	req_init(&q, 4);
	req_str(&q, "business", "shop");
	req_str(&q, "customer", "d1");
	req_str(&q, "type", "page_view");
	req_key(&q, "data");
	msgpack_pack_map(&q.pk, 1);
	req_key(&q, "note");
	msgpack_pack_bin(&q.pk, 4);
	msgpack_pack_bin_body(&q.pk, "caf\xe9", 4);
	call(&d, &q, &r);
	req_free(&q);
	assert_ok(&r);
	reply_free(&r);
	d_stop(&d);
}

/* }====================================================== */

/*
** {======================================================
** What choreo writes
** =======================================================
*/

// text_rules: a rules folder with the business "text" (d_start's rules).
static char text_dir[256];

static void
start_text(void)
{
	rules_dir(text_dir, sizeof(text_dir));
	rules_write(text_dir, "text", "10_text.lua",
	    "action 'offer' { value = 1 }\n"
	    "on('boom', function(c, e)\n"
	    "  error('cannot use ' .. e.data.raw)\n"
	    "end)\n"
	    "on('bytes', function(c, e)\n"
	    "  c.attrs.raw = string.char(255, 0, 97)\n"
	    "  c.attrs[string.char(200)] = 'k'\n"
	    "  c.attrs.text = 'Zoë'\n"
	    "  c.attrs.copy = e.data.raw\n"
	    "  c:emit('bytes', { raw = c.attrs.raw })\n"
	    "end)\n"
	    "case 'ticket' { sla = '1h' }\n"
	    "on('fn_attr', function(c, e)\n"          /* line 13 */
	    "  c.attrs.f = print\n"
	    "end)\n"
	    "on('fn_deep', function(c, e)\n"          /* line 16 */
	    "  c.attrs.list = { 1, { ok = true, fn = string.len } }\n"
	    "end)\n"
	    "on('table_key', function(c, e)\n"        /* line 19 */
	    "  c.attrs[{}] = 1\n"
	    "end)\n"
	    "on('fn_emit', function(c, e)\n"
	    "  c:emit('x', { f = function() end })\n"  /* line 23 */
	    "end)\n"
	    "on('fn_timer', function(c, e)\n"
	    "  c:after('1h', 'later', { f = print })\n" /* line 26 */
	    "end)\n"
	    "on('fn_case', function(c, e)\n"          /* line 28 */
	    "  c:open_case('ticket', { f = print })\n"
	    "end)\n"
	    "on('late_emit', function(c, e)\n"
	    "  local d = { n = 1 }\n"
	    "  c:emit('late', d)\n"
	    "  d.f = print\n"
	    "end)\n"
	    "on('later', function(c, e)\n"
	    "  c:after('1h', e.data.kind)\n"         /* line 37 */
	    "end)\n");
	rules_write(text_dir, "badpay", "10.lua",
	    "action 'a' { value = 1 }\n"
	    "action 'b' { value = 1, payload = { title = 'x', f = print } }\n");
	d_start(&d, text_dir, false);
}

static void
stop_text(void)
{
	d_stop(&d);
	rules_remove(text_dir);
}

// raw_event: an event of the text business whose data.raw is bin bytes.
static void
raw_event(const char *type, const char *raw, size_t n, reply_t *r)
{
	req_t q;
	req_init(&q, 4);
	req_str(&q, "business", "text");
	req_str(&q, "customer", "t1");
	req_str(&q, "type", type);
	req_key(&q, "data");
	msgpack_pack_map(&q.pk, 1);
	req_key(&q, "raw");
	msgpack_pack_bin(&q.pk, n);
	msgpack_pack_bin_body(&q.pk, raw, n);
	call(&d, &q, r);
	req_free(&q);
}

Test(text, messages_that_quote_bytes_escape_what_is_not_utf8)
{
	start_text();
	// an unknown op, quoted
	reply_t r;
	req_t   q;
	req_init(&q, 1);
	req_strn(&q, "op", "g\xff" "et\n", 5);
	call(&d, &q, &r);
	req_free(&q);
	assert_code(&r, "bad_request");
	cr_assert_not_null(strstr(emsg(&r), "'g\\xffet\\x0a'"), "%s",
	    dump(&r));
	reply_free(&r);
	// a field named by the pre-scan: its key is not UTF-8
	const char trunc[] = "\x81\xa2\xc3(\xd9\xc8x";
	call_raw(&d, trunc, sizeof(trunc) - 1, &r);
	assert_code(&r, "bad_request");
	cr_assert_not_null(strstr(emsg(&r), "field '\\xc3('"), "%s",
	    dump(&r));
	reply_free(&r);
	// a rule's message with the bytes of a bin value in it
	raw_event("boom", "caf\xe9", 4, &r);
	assert_code(&r, "rule_error");
	cr_assert_not_null(strstr(emsg(&r), "10_text.lua:3:"), "%s", dump(&r));
	cr_assert_not_null(strstr(emsg(&r), "cannot use caf\\xe9"), "%s",
	    dump(&r));
	reply_free(&r);
	// a response naming an action with such bytes (a coded error)
	req_init(&q, 4);
	req_str(&q, "business", "text");
	req_str(&q, "customer", "t1");
	req_str(&q, "type", "response");
	req_key(&q, "data");
	msgpack_pack_map(&q.pk, 2);
	req_str(&q, "outcome", "accepted");
	req_key(&q, "action");
	msgpack_pack_bin(&q.pk, 3);
	msgpack_pack_bin_body(&q.pk, "of\xfe", 3);
	call(&d, &q, &r);
	req_free(&q);
	assert_code(&r, "bad_request");
	cr_assert_not_null(strstr(emsg(&r), "'of\\xfe'"), "%s", dump(&r));
	reply_free(&r);
	stop_text();
}

// bin_at: the bytes of a bin at path (asserting it is one).
static const msgpack_object *
bin_at(const reply_t *r, const char *path)
{
	const msgpack_object *o = rat(r, path);
	cr_assert_not_null(o, "%s absent: %s", path, dump(r));
	cr_assert_eq(o->type, MSGPACK_OBJECT_BIN, "%s is not bin: %s", path,
	    dump(r));
	return (o);
}

Test(text, bytes_a_rule_stores_come_back_as_bin_byte_for_byte)
{
	start_text();
	sub_t s;
	sub_open(&d, &s, "choreo/text/emit/bytes");
	usleep(200 * 1000);
	reply_t r;
	raw_event("bytes", "caf\xe9", 4, &r);
	assert_ok(&r);
	cr_assert_eq(bin_at(&r, "emitted.0.data.raw")->via.bin.size, 3);
	reply_free(&r);
	char topic[128];
	cr_assert(sub_recv(&s, 5000, topic, sizeof(topic), &r),
	    "the emit was not published");
	cr_assert_eq(memcmp(bin_at(&r, "data.raw")->via.bin.ptr, "\xff\0a", 3),
	    0);
	reply_free(&r);
	sub_close(&s);
	// get: a reply every client can decode, the bytes as they were
	req_t q;
	req_init(&q, 3);
	req_str(&q, "op", "get");
	req_str(&q, "business", "text");
	req_str(&q, "customer", "t1");
	call(&d, &q, &r);
	req_free(&q);
	assert_ok(&r);
	const msgpack_object *raw = bin_at(&r, "customer.attrs.raw");
	cr_assert_eq(raw->via.bin.size, 3);
	cr_assert_eq(memcmp(raw->via.bin.ptr, "\xff\0a", 3), 0);
	const msgpack_object *copy = bin_at(&r, "customer.attrs.copy");
	cr_assert_eq(copy->via.bin.size, 4);
	cr_assert_eq(memcmp(copy->via.bin.ptr, "caf\xe9", 4), 0);
	cr_assert_str_eq(str_at(&r, "customer.attrs.text"), "Zoë");
	// the key that is not UTF-8 is a bin key
	const msgpack_object *attrs = rat(&r, "customer.attrs");
	bool                  found = false;
	for (uint32_t i = 0; i < attrs->via.map.size; i++) {
		const msgpack_object *k = &attrs->via.map.ptr[i].key;
		if (k->type == MSGPACK_OBJECT_BIN && k->via.bin.size == 1 &&
		    (unsigned char) k->via.bin.ptr[0] == 200) {
			found = true;
		}
	}
	cr_assert(found, "no bin key \\xc8: %s", dump(&r));
	reply_free(&r);
	// and they survive another event: read back, written again alike
	raw_event("bytes", "caf\xe9", 4, &r);
	assert_ok(&r);
	reply_free(&r);
	// the command line prints valid JSON, the bytes as \xNN
	char out[8192], args[512];
	snprintf(args, sizeof(args),
	    "get --url %s --business text --customer t1", d.rep);
	cr_assert_eq(run_cli(args, out, sizeof(out)), 0, "%s", out);
	json_error_t e;
	json_t      *j = json_loads(out, JSON_ALLOW_NUL, &e);
	cr_assert_not_null(j, "not JSON (%s): %s", e.text, out);
	json_t *a = json_object_get(json_object_get(j, "customer"), "attrs");
	cr_assert_str_eq(json_string_value(json_object_get(a, "copy")),
	    "caf\\xe9");
	json_t *jraw = json_object_get(a, "raw");
	cr_assert_eq(json_string_length(jraw), 6, "%s", out);
	cr_assert_eq(memcmp(json_string_value(jraw), "\\xff\0a", 6), 0);
	cr_assert_str_eq(json_string_value(json_object_get(a, "\\xc8")), "k");
	json_decref(j);
	stop_text();
}

// expect_rule_error: an event of type of the text business (customer t9)
// fails with rule_error whose message holds each of the strings given,
// and leaves the customer as it was (never seen).
static void
expect_rule_error(const char *type, const char *at, const char *what)
{
	char q[256];
	snprintf(q, sizeof(q),
	    "{\"business\":\"text\",\"customer\":\"t9\",\"type\":\"%s\"}",
	    type);
	reply_t r;
	call_json(&d, q, &r);
	assert_code(&r, "rule_error");
	cr_assert_not_null(strstr(emsg(&r), at), "%s: want %s: %s", type, at,
	    dump(&r));
	cr_assert_not_null(strstr(emsg(&r), what), "%s: want %s: %s", type,
	    what, dump(&r));
	reply_free(&r);
	call_json(&d, "{\"op\":\"get\",\"business\":\"text\","
	              "\"customer\":\"t9\"}",
	    &r);
	assert_code(&r, "not_found");
	reply_free(&r);
}

Test(text, a_value_that_cannot_be_stored_is_a_rule_error_at_its_line)
{
	start_text();
	expect_rule_error("fn_attr", "10_text.lua:13:",
	    "c.attrs.f: cannot store a value of type function");
	expect_rule_error("fn_deep", "10_text.lua:16:",
	    "c.attrs.list[2].fn: cannot store a value of type function");
	expect_rule_error("table_key", "10_text.lua:19:",
	    "c.attrs: a table key must be a string, number or boolean");
	expect_rule_error("fn_emit", "10_text.lua:23:",
	    "c:emit data.f: cannot store a value of type function");
	expect_rule_error("fn_timer", "10_text.lua:26:",
	    "timer data.f: cannot store a value of type function");
	expect_rule_error("fn_case", "10_text.lua:28:",
	    "c.cases.ticket.data.f: cannot store a value of type function");
	// a name from the request's data that holds a NUL (valid in data)
	req_t q;
	req_init(&q, 4);
	req_str(&q, "business", "text");
	req_str(&q, "customer", "t9");
	req_str(&q, "type", "later");
	req_key(&q, "data");
	msgpack_pack_map(&q.pk, 1);
	req_strn(&q, "kind", "a\0b", 3);
	reply_t r;
	call(&d, &q, &r);
	req_free(&q);
	assert_code(&r, "rule_error");
	cr_assert_not_null(strstr(emsg(&r), "10_text.lua:37: c:after: the event "
	                                    "type must be valid UTF-8 without "
	                                    "NUL bytes"),
	    "%s", dump(&r));
	reply_free(&r);
	// emit data is taken when c:emit is called
	call_json(&d, "{\"business\":\"text\",\"customer\":\"t8\","
	              "\"type\":\"late_emit\"}",
	    &r);
	assert_ok(&r);
	cr_assert_eq(int_at(&r, "emitted.0.data.n"), 1, "%s", dump(&r));
	cr_assert_not(has(&r, "emitted.0.data.f"), "%s", dump(&r));
	reply_free(&r);
	// a payload is checked where the action is declared
	call_json(&d, "{\"op\":\"rules\",\"business\":\"badpay\"}", &r);
	assert_ok(&r);
	const char *file = str_at(&r, "businesses.badpay.error.file");
	cr_assert_not_null(file, "%s", dump(&r));
	cr_assert_not_null(strstr(file, "badpay/10.lua"), "%s", dump(&r));
	cr_assert_eq(int_at(&r, "businesses.badpay.error.line"), 2, "%s",
	    dump(&r));
	cr_assert_not_null(strstr(str_at(&r, "businesses.badpay.error.message"),
	                       "payload.f: cannot store a value of type "
	                       "function"),
	    "%s", dump(&r));
	reply_free(&r);
	stop_text();
}

// version_of: the version the rules op reports serving for business.
static void
version_of(const char *business, char *out, size_t len)
{
	char    q[128];
	reply_t r;
	snprintf(q, sizeof(q), "{\"op\":\"rules\",\"business\":\"%s\"}",
	    business);
	call_json(&d, q, &r);
	assert_ok(&r);
	snprintf(q, sizeof(q), "businesses.%s.version", business);
	const char *v = str_at(&r, q);
	cr_assert_not_null(v, "%s", dump(&r));
	snprintf(out, len, "%s", v);
	reply_free(&r);
}

Test(text, rule_sources_that_are_not_utf8_are_kept_byte_for_byte)
{
	// a Latin-1 byte in a long string is Lua, and the version history
	// must give back the very bytes for a rollback
	start_text();
	rules_write(text_dir, "latin", "10.lua",
	    "action 'a' { value = 1, payload = { t = [[caf\xe9]] } }\n");
	reply_t r;
	call_json(&d, "{\"op\":\"reload\"}", &r);
	assert_ok(&r);
	reply_free(&r);
	char v1[32], v2[32];
	version_of("latin", v1, sizeof(v1));
	rules_write(text_dir, "latin", "10.lua",
	    "action 'a' { value = 2, payload = { t = [[caf\xe9]] } }\n");
	call_json(&d, "{\"op\":\"reload\"}", &r);
	assert_ok(&r);
	reply_free(&r);
	version_of("latin", v2, sizeof(v2));
	cr_assert_str_neq(v1, v2);
	char q[200];
	snprintf(q, sizeof(q),
	    "{\"op\":\"rollback\",\"business\":\"latin\",\"version\":\"%s\"}",
	    v1);
	call_json(&d, q, &r);
	assert_ok(&r);
	reply_free(&r);
	version_of("latin", v2, sizeof(v2));
	cr_assert_str_eq(v2, v1, "the sources rolled back to are not the ones "
	                         "of that version");
	call_json(&d, "{\"op\":\"decide\",\"business\":\"latin\","
	              "\"customer\":\"c\"}",
	    &r);
	assert_ok(&r);
	cr_assert_eq(int_at(&r, "actions.0.value"), 1);
	const msgpack_object *t = bin_at(&r, "actions.0.payload.t");
	cr_assert_eq(t->via.bin.size, 4);
	cr_assert_eq(memcmp(t->via.bin.ptr, "caf\xe9", 4), 0);
	reply_free(&r);
	stop_text();
}

/* }====================================================== */

// The protocol as a client sees it: every op, the replies, the errors, and
// what the daemon does with bad input. Each test starts its own daemon on
// fresh ports and a fresh data dir (tests/e2e/rules: shop, broken, faulty).
#include <criterion/criterion.h>
#include <errno.h>
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
	d_start(&d, d_rules(), false);
}

static void
teardown(void)
{
	d_stop(&d); // asserts exit status 0
	d_cleanup(&d);
}

TestSuite(protocol, .init = setup, .fini = teardown);

static void
expect_ping(void)
{
	reply_t r;
	call_json(&d, "{\"op\":\"ping\"}", &r);
	assert_ok(&r);
	reply_free(&r);
}

static void
event(const char *json)
{
	reply_t r;
	call_json(&d, json, &r);
	assert_ok(&r);
	reply_free(&r);
}

static void
get(const char *business, const char *customer, reply_t *r)
{
	char q[512];
	snprintf(q, sizeof(q),
	    "{\"op\":\"get\",\"business\":\"%s\",\"customer\":\"%s\"}", business,
	    customer);
	call_json(&d, q, r);
}

static void
expect_not_found(const char *business, const char *customer)
{
	reply_t r;
	get(business, customer, &r);
	assert_code(&r, "not_found");
	reply_free(&r);
}

/*
** {======================================================
** The ops
** =======================================================
*/

Test(protocol, ping)
{
	reply_t r;
	call_json(&d, "{\"op\":\"ping\"}", &r);
	assert_ok(&r);
	const char *v = str_at(&r, "version");
	cr_assert_not_null(v, "ping has a version: %s", dump(&r));
	cr_assert_gt(strlen(v), 0);
	reply_free(&r);
}

Test(protocol, an_event_returns_decisions_and_journeys)
{
	reply_t r;
	call_json(&d, "{\"business\":\"shop\",\"customer\":\"c1\",\"type\":"
	              "\"page_view\",\"channel\":\"web\"}",
	    &r);
	assert_ok(&r);
	const char *version = str_at(&r, "rules");
	cr_assert_not_null(version, "an event reply names the rules version");
	cr_assert_gt(strlen(version), 0);
	// journeys = {NAME = {stage, since}}
	cr_assert_str_eq(str_at(&r, "journeys.onboarding.stage"), "browsing");
	cr_assert_gt(int_at(&r, "journeys.onboarding.since"), 1600000000000);
	// actions = [{name, score, value, propensity, group, channel, payload}]
	// ranked by score: discount 0.5 × 20 = 10, newsletter 0.5 × 2 = 1;
	// membership is not eligible (no spend)
	cr_assert_eq(len_at(&r, "actions"), 2, "%s", dump(&r));
	cr_assert_str_eq(str_at(&r, "actions.0.name"), "discount");
	cr_assert_float_eq(num_at(&r, "actions.0.score"), 10.0, 1e-9);
	cr_assert_float_eq(num_at(&r, "actions.0.value"), 20.0, 1e-9);
	cr_assert_float_eq(num_at(&r, "actions.0.propensity"), 0.5, 1e-9);
	cr_assert_str_eq(str_at(&r, "actions.0.group"), "offers");
	cr_assert_str_eq(str_at(&r, "actions.0.channel"), "web");
	cr_assert_str_eq(str_at(&r, "actions.0.payload.title"), "10% off");
	cr_assert_float_eq(num_at(&r, "actions.0.payload.price"), 9.99, 1e-9);
	cr_assert_str_eq(str_at(&r, "actions.1.name"), "newsletter");
	cr_assert_float_eq(num_at(&r, "actions.1.score"), 1.0, 1e-9);
	cr_assert_str_eq(str_at(&r, "actions.1.group"), "engagement");
	cr_assert_not(has(&r, "trace"), "trace only with explain");
	reply_free(&r);

	// the version is the one the rules op reports
	call_json(&d, "{\"op\":\"rules\",\"business\":\"shop\"}", &r);
	assert_ok(&r);
	cr_assert_str_eq(str_at(&r, "businesses.shop.version"), version);
	reply_free(&r);
}

Test(protocol, channels_eligibility_and_limit_shape_the_actions)
{
	event("{\"business\":\"shop\",\"customer\":\"c2\",\"type\":\"purchase\","
	      "\"data\":{\"amount\":150}}");
	reply_t r;
	// web: membership (eligible now) first; discount is not (an order)
	call_json(&d, "{\"op\":\"decide\",\"business\":\"shop\",\"customer\":"
	              "\"c2\",\"channel\":\"web\"}",
	    &r);
	assert_ok(&r);
	cr_assert_str_eq(str_at(&r, "actions.0.name"), "membership", "%s",
	    dump(&r));
	cr_assert_str_eq(str_at(&r, "actions.1.name"), "newsletter");
	cr_assert_eq(len_at(&r, "actions"), 2, "%s", dump(&r));
	reply_free(&r);
	// app: membership is for web only
	call_json(&d, "{\"op\":\"decide\",\"business\":\"shop\",\"customer\":"
	              "\"c2\",\"channel\":\"app\"}",
	    &r);
	assert_ok(&r);
	cr_assert_str_eq(str_at(&r, "actions.0.name"), "newsletter", "%s",
	    dump(&r));
	cr_assert_str_eq(str_at(&r, "actions.0.channel"), "app");
	cr_assert_eq(len_at(&r, "actions"), 1, "%s", dump(&r));
	reply_free(&r);
	// limit
	call_json(&d, "{\"op\":\"decide\",\"business\":\"shop\",\"customer\":"
	              "\"c2\",\"channel\":\"web\",\"limit\":1}",
	    &r);
	assert_ok(&r);
	cr_assert_eq(len_at(&r, "actions"), 1, "%s", dump(&r));
	reply_free(&r);
	// decide=false: no actions, the journeys still
	call_json(&d, "{\"business\":\"shop\",\"customer\":\"c2\",\"type\":"
	              "\"page_view\",\"decide\":false}",
	    &r);
	assert_ok(&r);
	cr_assert(!has(&r, "actions") || len_at(&r, "actions") == 0, "%s",
	    dump(&r));
	cr_assert_str_eq(str_at(&r, "journeys.onboarding.stage"), "customer");
	reply_free(&r);
}

Test(protocol, get_returns_the_whole_state)
{
	event("{\"business\":\"shop\",\"customer\":\"g1\",\"type\":"
	      "\"page_view\",\"channel\":\"web\"}");
	event("{\"business\":\"shop\",\"customer\":\"g1\",\"type\":\"purchase\","
	      "\"channel\":\"web\",\"data\":{\"amount\":150}}");
	event("{\"business\":\"shop\",\"customer\":\"g1\",\"type\":\"profile\","
	      "\"data\":{\"tier\":\"gold\",\"age\":41}}");
	reply_t r;
	get("shop", "g1", &r);
	assert_ok(&r);
	cr_assert_str_eq(str_at(&r, "customer.id"), "g1");
	// attrs, written by the handlers
	cr_assert_eq(int_at(&r, "customer.attrs.spend"), 150);
	cr_assert_eq(int_at(&r, "customer.attrs.orders"), 1);
	cr_assert_str_eq(str_at(&r, "customer.attrs.tier"), "gold");
	cr_assert_eq(int_at(&r, "customer.attrs.age"), 41);
	// counters: "*" ran on every event, c:count(name, 2) added 2
	cr_assert_eq(int_at(&r, "customer.counters.events"), 3);
	cr_assert_eq(int_at(&r, "customer.counters.profile_updates"), 2);
	// journeys with their history
	cr_assert_str_eq(str_at(&r, "customer.journeys.onboarding.stage"),
	    "customer");
	cr_assert_eq(len_at(&r, "customer.journeys.onboarding.history"), 2,
	    "%s", dump(&r));
	cr_assert_str_eq(
	    str_at(&r, "customer.journeys.onboarding.history.0.stage"),
	    "browsing");
	cr_assert_str_eq(
	    str_at(&r, "customer.journeys.onboarding.history.1.stage"),
	    "customer");
	int64_t at0 = int_at(&r, "customer.journeys.onboarding.history.0.at");
	int64_t at1 = int_at(&r, "customer.journeys.onboarding.history.1.at");
	cr_assert_leq(at0, at1);
	cr_assert_eq(int_at(&r, "customer.journeys.onboarding.since"), at1);
	// actions with impressions: discount shown by the first event, then
	// membership by the purchase and the profile events
	cr_assert_eq(int_at(&r, "customer.actions.discount.impressions"), 1,
	    "%s", dump(&r));
	cr_assert_eq(int_at(&r, "customer.actions.membership.impressions"), 2,
	    "%s", dump(&r));
	cr_assert_gt(int_at(&r, "customer.actions.membership.last_shown"), 0);
	cr_assert_eq(int_at(&r, "customer.actions.newsletter.impressions"), 3);
	int64_t created = int_at(&r, "customer.created_at");
	int64_t updated = int_at(&r, "customer.updated_at");
	cr_assert_gt(created, 1600000000000);
	cr_assert_geq(updated, created);
	cr_assert_eq(created, at0, "created by the first event");
	reply_free(&r);
}

Test(protocol, unknown_customers_are_not_found)
{
	expect_not_found("shop", "nobody");
	reply_t r;
	call_json(&d, "{\"op\":\"forget\",\"business\":\"shop\",\"customer\":"
	              "\"nobody\"}",
	    &r);
	assert_code(&r, "not_found");
	reply_free(&r);
}

Test(protocol, forget_erases_the_customer)
{
	event("{\"business\":\"shop\",\"customer\":\"f9\",\"type\":"
	      "\"page_view\"}");
	event("{\"business\":\"shop\",\"customer\":\"keep\",\"type\":"
	      "\"page_view\"}");
	reply_t r;
	call_json(&d, "{\"op\":\"forget\",\"business\":\"shop\",\"customer\":"
	              "\"f9\"}",
	    &r);
	assert_ok(&r);
	reply_free(&r);
	expect_not_found("shop", "f9");
	// only that one
	get("shop", "keep", &r);
	assert_ok(&r);
	reply_free(&r);
	// a new event starts from nothing
	event("{\"business\":\"shop\",\"customer\":\"f9\",\"type\":"
	      "\"page_view\"}");
	get("shop", "f9", &r);
	assert_ok(&r);
	cr_assert_eq(int_at(&r, "customer.counters.events"), 1);
	reply_free(&r);
}

Test(protocol, decide_ranks_and_records_impressions)
{
	reply_t r;
	// record=false: answers, stores nothing
	call_json(&d, "{\"op\":\"decide\",\"business\":\"shop\",\"customer\":"
	              "\"d1\",\"channel\":\"web\",\"record\":false,"
	              "\"explain\":true}",
	    &r);
	assert_ok(&r);
	cr_assert_str_eq(str_at(&r, "actions.0.name"), "discount");
	cr_assert_not_null(str_at(&r, "rules"));
	cr_assert(has(&r, "trace"), "explain=true returns a trace: %s",
	    dump(&r));
	reply_free(&r);
	expect_not_found("shop", "d1");
	// record (the default): the impressions are kept
	call_json(&d, "{\"op\":\"decide\",\"business\":\"shop\",\"customer\":"
	              "\"d1\",\"channel\":\"web\"}",
	    &r);
	assert_ok(&r);
	cr_assert_str_eq(str_at(&r, "actions.0.name"), "discount");
	cr_assert_not(has(&r, "trace"));
	reply_free(&r);
	get("shop", "d1", &r);
	assert_ok(&r);
	cr_assert_eq(int_at(&r, "customer.actions.discount.impressions"), 1,
	    "%s", dump(&r));
	cr_assert(!has(&r, "customer.counters.events"),
	    "decide runs no handler: %s", dump(&r));
	reply_free(&r);
}

Test(protocol, rules_lists_versions_files_and_load_errors)
{
	reply_t r;
	call_json(&d, "{\"op\":\"rules\"}", &r);
	assert_ok(&r);
	const char *v = str_at(&r, "businesses.shop.version");
	cr_assert_not_null(v, "%s", dump(&r));
	cr_assert_gt(strlen(v), 0);
	cr_assert_gt(int_at(&r, "businesses.shop.loaded_at"), 0);
	cr_assert_eq(len_at(&r, "businesses.shop.files"), 1);
	const char *f = str_at(&r, "businesses.shop.files.0");
	cr_assert_not_null(f);
	cr_assert_not_null(strstr(f, "shop/10_shop.lua"), "%s", f);
	cr_assert_not(has(&r, "businesses.shop.error"), "%s", dump(&r));
	cr_assert_not_null(str_at(&r, "businesses.faulty.version"));
	// broken: the syntax error with file and line
	const char *file = str_at(&r, "businesses.broken.error.file");
	cr_assert_not_null(file, "%s", dump(&r));
	size_t fl = strlen(file), want = strlen("broken/10_broken.lua");
	cr_assert(fl >= want &&
	        strcmp(file + fl - want, "broken/10_broken.lua") == 0,
	    "error.file should end in broken/10_broken.lua: %s", file);
	cr_assert_eq(int_at(&r, "businesses.broken.error.line"), 3);
	const char *m = str_at(&r, "businesses.broken.error.message");
	cr_assert_not_null(m);
	cr_assert_not_null(strstr(m, "10_broken.lua:3:"), "%s", m);
	cr_assert_gt(int_at(&r, "businesses.broken.error.at"), 1600000000000);
	cr_assert_not(has(&r, "businesses.broken.version"),
	    "broken never loaded: %s", dump(&r));
	reply_free(&r);
	// one business
	call_json(&d, "{\"op\":\"rules\",\"business\":\"faulty\"}", &r);
	assert_ok(&r);
	cr_assert_not_null(str_at(&r, "businesses.faulty.version"));
	cr_assert_not(has(&r, "businesses.shop"), "only faulty: %s", dump(&r));
	reply_free(&r);
}

Test(protocol, unknown_businesses)
{
	const char *reqs[] = {
		"{\"business\":\"broken\",\"customer\":\"c\",\"type\":\"x\"}",
		"{\"business\":\"nosuch\",\"customer\":\"c\",\"type\":\"x\"}",
		"{\"op\":\"decide\",\"business\":\"nosuch\",\"customer\":\"c\"}",
		"{\"op\":\"get\",\"business\":\"nosuch\",\"customer\":\"c\"}",
		"{\"op\":\"forget\",\"business\":\"nosuch\",\"customer\":\"c\"}",
	};
	for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
		reply_t r;
		call_json(&d, reqs[i], &r);
		cr_assert_str_eq(code(&r), "unknown_business", "%s -> %s",
		    reqs[i], dump(&r));
		cr_assert_eq(bool_at(&r, "ok"), false);
		cr_assert_not_null(str_at(&r, "error.message"));
		reply_free(&r);
	}
}

Test(protocol, a_batch_answers_each_event_in_order)
{
	reply_t r;
	call_json(&d, "{\"op\":\"batch\",\"events\":["
	              "{\"business\":\"shop\",\"customer\":\"b1\",\"type\":"
	              "\"page_view\"},"
	              "{\"business\":\"shop\",\"customer\":7,\"type\":"
	              "\"page_view\"},"
	              "{\"business\":\"shop\",\"customer\":\"b1\",\"type\":"
	              "\"add_to_cart\"}]}",
	    &r);
	assert_ok(&r);
	cr_assert_eq(len_at(&r, "results"), 3, "%s", dump(&r));
	cr_assert(bool_at(&r, "results.0.ok"), "%s", dump(&r));
	cr_assert_str_eq(str_at(&r, "results.0.journeys.onboarding.stage"),
	    "browsing");
	cr_assert_not_null(str_at(&r, "results.0.rules"));
	cr_assert_eq(bool_at(&r, "results.1.ok"), false);
	cr_assert_str_eq(str_at(&r, "results.1.error.code"), "bad_request",
	    "%s", dump(&r));
	cr_assert_not_null(strstr(str_at(&r, "results.1.error.message"),
	                       "customer"),
	    "the message names the field: %s", dump(&r));
	cr_assert(bool_at(&r, "results.2.ok"));
	cr_assert_str_eq(str_at(&r, "results.2.journeys.onboarding.stage"),
	    "cart");
	reply_free(&r);
	get("shop", "b1", &r);
	assert_ok(&r);
	cr_assert_eq(int_at(&r, "customer.counters.events"), 2);
	reply_free(&r);
	// an empty batch
	call_json(&d, "{\"op\":\"batch\",\"events\":[]}", &r);
	assert_ok(&r);
	cr_assert_eq(len_at(&r, "results"), 0);
	reply_free(&r);
}

Test(protocol, a_batch_over_1000_events_is_refused)
{
	req_t q;
	req_init(&q, 2);
	req_str(&q, "op", "batch");
	req_key(&q, "events");
	msgpack_pack_array(&q.pk, 1001);
	for (int i = 0; i < 1001; i++) {
		msgpack_pack_map(&q.pk, 3);
		msgpack_pack_str_with_body(&q.pk, "business", 8);
		msgpack_pack_str_with_body(&q.pk, "shop", 4);
		msgpack_pack_str_with_body(&q.pk, "customer", 8);
		msgpack_pack_str_with_body(&q.pk, "big", 3);
		msgpack_pack_str_with_body(&q.pk, "type", 4);
		msgpack_pack_str_with_body(&q.pk, "page_view", 9);
	}
	reply_t r;
	call(&d, &q, &r);
	assert_code(&r, "bad_request");
	req_free(&q);
	reply_free(&r);
	expect_not_found("shop", "big");
}

/* }====================================================== */

/*
** {======================================================
** Bad input
** =======================================================
*/

// expect_bad sends bytes, expects bad_request (naming field when given),
// then checks that the daemon still answers.
static void
expect_bad(const void *bytes, size_t len, const char *field, const char *why)
{
	reply_t r;
	call_raw(&d, bytes, len, &r);
	cr_assert_str_eq(code(&r), "bad_request", "%s: %s", why, dump(&r));
	cr_assert_eq(bool_at(&r, "ok"), false, "%s", why);
	const char *m = str_at(&r, "error.message");
	cr_assert_not_null(m, "%s: a message says why", why);
	if (field != NULL) {
		cr_assert_not_null(strstr(m, field),
		    "%s: the message should name '%s': %s", why, field, m);
	}
	reply_free(&r);
	expect_ping();
}

static void
expect_bad_req(req_t *q, const char *field, const char *why)
{
	expect_bad(q->buf.data, q->buf.size, field, why);
	req_free(q);
}

static void
expect_bad_json(const char *json, const char *field)
{
	req_t q;
	req_json(&q, json);
	expect_bad_req(&q, field, json);
}

Test(protocol, bad_inputs_get_bad_request_and_the_daemon_carries_on)
{
	expect_bad("garbage bytes \xc1\xff", 16, NULL, "garbage");
	expect_bad("", 0, NULL, "an empty message");
	expect_bad("\x93\x01\x02\x03", 4, NULL, "an array body");
	expect_bad("\xa4ping", 5, NULL, "a string body");
	expect_bad("\x82\xa2op", 4, NULL, "a truncated map");
	expect_bad("\xdf\xff\xff\xff\xff", 5, NULL,
	    "a map claiming 4 billion pairs");
	expect_bad("\x81\xa8" "customer" "\xdb\xff\xff\xff\xff", 15, NULL,
	    "a string claiming 4 GiB");
	expect_bad("\x81\x01\x02", 3, NULL, "a map with an integer key");

	req_t q;
	// a map with wrong types: customer as an integer
	req_init(&q, 3);
	req_str(&q, "business", "shop");
	req_int(&q, "customer", 12);
	req_str(&q, "type", "x");
	expect_bad_req(&q, "customer", "customer as an integer");
	// a 300 KB customer
	size_t big_n = 300 * 1024;
	char  *big   = malloc(big_n + 1);
	memset(big, 'x', big_n);
	big[big_n] = '\0';
	req_init(&q, 3);
	req_str(&q, "business", "shop");
	req_strn(&q, "customer", big, big_n);
	req_str(&q, "type", "x");
	expect_bad_req(&q, "customer", "a 300 KB customer");
	// 300 KB inside data (over the 64 KiB rule)
	req_init(&q, 4);
	req_str(&q, "business", "shop");
	req_str(&q, "customer", "bigdata");
	req_str(&q, "type", "x");
	req_key(&q, "data");
	msgpack_pack_map(&q.pk, 1);
	req_strn(&q, "blob", big, big_n);
	expect_bad_req(&q, "data", "300 KB of data");
	free(big);
	// a 2000-deep map in data
	req_init(&q, 4);
	req_str(&q, "business", "shop");
	req_str(&q, "customer", "deep");
	req_str(&q, "type", "x");
	req_key(&q, "data");
	for (int i = 0; i < 2000; i++) {
		msgpack_pack_map(&q.pk, 1);
		msgpack_pack_str_with_body(&q.pk, "a", 1);
	}
	msgpack_pack_nil(&q.pk);
	expect_bad_req(&q, NULL, "a 2000-deep map in data");
	// 40 levels: over the documented 32
	req_init(&q, 4);
	req_str(&q, "business", "shop");
	req_str(&q, "customer", "deep");
	req_str(&q, "type", "x");
	req_key(&q, "data");
	for (int i = 0; i < 40; i++) {
		msgpack_pack_map(&q.pk, 1);
		msgpack_pack_str_with_body(&q.pk, "a", 1);
	}
	msgpack_pack_nil(&q.pk);
	expect_bad_req(&q, NULL, "a 40-deep map in data");

	expect_bad_json("{\"op\":\"frobnicate\"}", "op");
	expect_bad_json("{\"op\":5}", "op");
	expect_bad_json("{\"business\":\"shop\",\"customer\":\"m\"}", "type");
	expect_bad_json("{\"business\":\"shop\",\"type\":\"x\"}", "customer");
	expect_bad_json("{\"customer\":\"m\",\"type\":\"x\"}", "business");
	expect_bad_json("{\"business\":\"../etc\",\"customer\":\"m\",\"type\":"
	                "\"x\"}",
	    "business");
	expect_bad_json("{\"business\":\"\",\"customer\":\"m\",\"type\":\"x\"}",
	    "business");
	expect_bad_json("{\"business\":\"shop\",\"customer\":\"\",\"type\":"
	                "\"x\"}",
	    "customer");
	expect_bad_json("{\"business\":\"shop\",\"customer\":\"m\",\"type\":"
	                "\"x\",\"data\":\"not a map\"}",
	    "data");
	expect_bad_json("{\"business\":\"shop\",\"customer\":\"m\",\"type\":"
	                "\"x\",\"limit\":0}",
	    "limit");
	expect_bad_json("{\"business\":\"shop\",\"customer\":\"m\",\"type\":"
	                "\"x\",\"limit\":101}",
	    "limit");
	expect_bad_json("{\"business\":\"shop\",\"customer\":\"m\",\"type\":"
	                "\"x\",\"ts\":\"yesterday\"}",
	    "ts");
	expect_bad_json("{\"business\":\"shop\",\"customer\":\"m\",\"type\":"
	                "\"x\",\"decide\":\"yes\"}",
	    "decide");
	expect_bad_json("{\"op\":\"batch\",\"events\":{}}", "events");

	// nothing was stored for any of them
	expect_not_found("shop", "m");
	expect_not_found("shop", "deep");
	expect_not_found("shop", "bigdata");
}

Test(protocol, unknown_top_level_fields_are_ignored)
{
	reply_t r;
	call_json(&d, "{\"business\":\"shop\",\"customer\":\"u1\",\"type\":"
	              "\"page_view\",\"colour\":\"blue\",\"extra\":{\"a\":[1]}}",
	    &r);
	assert_ok(&r);
	reply_free(&r);
}

Test(protocol, a_message_over_max_message_gets_no_reply)
{
	// 2 MiB (the default --max-message is 1 MiB), sent over a plain TCP
	// socket speaking REQ: nng refuses it by closing the connection, with
	// no reply; the daemon serves the next client
	size_t n   = 2u << 20;
	char  *big = malloc(n);
	memset(big, 'x', n);
	req_t q;
	req_init(&q, 3);
	req_str(&q, "business", "shop");
	req_str(&q, "type", "page_view");
	req_strn(&q, "customer", big, n - 64);
	free(big);
	cr_assert_gt(q.buf.size, 1u << 20);
	sp_t c;
	int  rv = sp_connect(&c, d.rep_port);
	cr_assert_eq(rv, 0, "connect: %s", strerror(rv));
	rv = sp_send(&c, q.buf.data, q.buf.size); // may fail half way: fine
	char  *body = NULL;
	size_t blen = 0;
	if (rv == 0) {
		rv = sp_recv(&c, 5000, &body, &blen);
	}
	sp_close(&c);
	req_free(&q);
	if (rv == 0) {
		free(body);
	}
	cr_assert_neq(rv, 0, "a 2 MiB message got a reply (%zu bytes)", blen);
	cr_assert_neq(rv, ETIMEDOUT, "the connection should be dropped, not "
	                             "left hanging");
	expect_ping();
	event("{\"business\":\"shop\",\"customer\":\"after\",\"type\":"
	      "\"page_view\"}");

	// just under the limit: a reply (bad_request: customer too long)
	n   = 900 * 1024;
	big = malloc(n);
	memset(big, 'y', n);
	req_init(&q, 3);
	req_str(&q, "business", "shop");
	req_str(&q, "type", "page_view");
	req_strn(&q, "customer", big, n);
	free(big);
	reply_t r;
	sp_call(&d, q.buf.data, q.buf.size, &r);
	assert_code(&r, "bad_request");
	reply_free(&r);
	req_free(&q);
}

Test(protocol, a_plain_tcp_req_client_is_served)
{
	// the SP protocol over TCP, written by hand: what any REQ client of
	// any language sends
	req_t q;
	req_json(&q, "{\"op\":\"ping\"}");
	reply_t r;
	sp_call(&d, q.buf.data, q.buf.size, &r);
	assert_ok(&r);
	req_free(&q);
	reply_free(&r);
	// several requests, one connection, in turn
	sp_t c;
	cr_assert_eq(sp_connect(&c, d.rep_port), 0);
	for (int i = 0; i < 3; i++) {
		req_json(&q, "{\"business\":\"shop\",\"customer\":\"sp\","
		             "\"type\":\"page_view\"}");
		cr_assert_eq(sp_send(&c, q.buf.data, q.buf.size), 0);
		req_free(&q);
		char  *b;
		size_t bl;
		int    rv = sp_recv(&c, E2E_REQ_MS, &b, &bl);
		cr_assert_eq(rv, 0, "reply %d: %s", i, strerror(rv));
		free(b);
	}
	sp_close(&c);
	get("shop", "sp", &r);
	cr_assert_eq(int_at(&r, "customer.counters.events"), 3);
	reply_free(&r);
}

/* }====================================================== */

/*
** {======================================================
** Rule errors, dedup
** =======================================================
*/

Test(protocol, a_rule_error_rolls_the_event_back)
{
	reply_t r, before, after;
	event("{\"business\":\"faulty\",\"customer\":\"f1\",\"type\":\"fine\"}");
	get("faulty", "f1", &before);
	assert_ok(&before);
	cr_assert(bool_at(&before, "customer.attrs.fine"));

	call_json(&d, "{\"business\":\"faulty\",\"customer\":\"f1\",\"type\":"
	              "\"boom\"}",
	    &r);
	assert_code(&r, "rule_error");
	const char *m = emsg(&r);
	cr_assert_not_null(strstr(m, "10_faulty.lua:3:"),
	    "the message has file:line: %s", m);
	cr_assert_not_null(strstr(m, "on purpose"), "%s", m);
	reply_free(&r);

	// nothing changed: attrs, counters, updated_at
	get("faulty", "f1", &after);
	assert_ok(&after);
	cr_assert_not(has(&after, "customer.attrs.touched"),
	    "the handler's change to c.attrs was rolled back: %s",
	    dump(&after));
	cr_assert(msgpack_object_equal(*rat(&before, "customer"),
	              *rat(&after, "customer")),
	    "the stored customer changed:\n%s\n%s", dump(&before),
	    dump(&after));
	reply_free(&before);
	reply_free(&after);

	// a new customer whose first event fails is not created
	call_json(&d, "{\"business\":\"faulty\",\"customer\":\"f2\",\"type\":"
	              "\"boom\"}",
	    &r);
	assert_code(&r, "rule_error");
	reply_free(&r);
	expect_not_found("faulty", "f2");
	// and the same business goes on serving
	event("{\"business\":\"faulty\",\"customer\":\"f2\",\"type\":\"fine\"}");
}

Test(protocol, a_rule_error_in_a_batch_rolls_back_only_its_event)
{
	reply_t r;
	call_json(&d, "{\"op\":\"batch\",\"events\":["
	              "{\"business\":\"faulty\",\"customer\":\"fb\",\"type\":"
	              "\"fine\"},"
	              "{\"business\":\"faulty\",\"customer\":\"fb\",\"type\":"
	              "\"boom\"},"
	              "{\"business\":\"shop\",\"customer\":\"fb\",\"type\":"
	              "\"page_view\"}]}",
	    &r);
	assert_ok(&r);
	cr_assert(bool_at(&r, "results.0.ok"), "%s", dump(&r));
	cr_assert_str_eq(str_at(&r, "results.1.error.code"), "rule_error");
	cr_assert(bool_at(&r, "results.2.ok"), "%s", dump(&r));
	reply_free(&r);
	get("faulty", "fb", &r);
	assert_ok(&r);
	cr_assert(bool_at(&r, "customer.attrs.fine"));
	cr_assert_not(has(&r, "customer.attrs.touched"), "%s", dump(&r));
	reply_free(&r);
	get("shop", "fb", &r);
	assert_ok(&r);
	reply_free(&r);
}

Test(protocol, an_id_is_applied_once)
{
	const char *ev = "{\"business\":\"shop\",\"customer\":\"i1\",\"type\":"
	                 "\"page_view\",\"channel\":\"web\",\"id\":\"ev-1\"}";
	reply_t     r1, r2;
	call_json(&d, ev, &r1);
	assert_ok(&r1);
	cr_assert_not(bool_at(&r1, "duplicate"));
	call_json(&d, ev, &r2);
	assert_ok(&r2);
	cr_assert(bool_at(&r2, "duplicate"), "the second has duplicate=true: "
	                                     "%s",
	    dump(&r2));
	// the first reply, again
	cr_assert_str_eq(str_at(&r2, "journeys.onboarding.stage"), "browsing");
	cr_assert_str_eq(str_at(&r2, "actions.0.name"),
	    str_at(&r1, "actions.0.name"));
	cr_assert_str_eq(str_at(&r2, "rules"), str_at(&r1, "rules"));
	reply_free(&r1);
	reply_free(&r2);
	get("shop", "i1", &r1);
	assert_ok(&r1);
	cr_assert_eq(int_at(&r1, "customer.counters.events"), 1,
	    "counted once: %s", dump(&r1));
	cr_assert_eq(int_at(&r1, "customer.actions.discount.impressions"), 1);
	reply_free(&r1);
	// another id is another event
	event("{\"business\":\"shop\",\"customer\":\"i1\",\"type\":"
	      "\"page_view\",\"id\":\"ev-2\"}");
	get("shop", "i1", &r1);
	cr_assert_eq(int_at(&r1, "customer.counters.events"), 2);
	reply_free(&r1);
	// ids are per business: the same id in another business is applied
	call_json(&d, "{\"business\":\"faulty\",\"customer\":\"i1\",\"type\":"
	              "\"fine\",\"id\":\"ev-1\"}",
	    &r1);
	assert_ok(&r1);
	cr_assert_not(bool_at(&r1, "duplicate"), "%s", dump(&r1));
	reply_free(&r1);
}

/* }====================================================== */

/*
** {======================================================
** PUSH → PUB, HTTP, CLI
** =======================================================
*/

Test(protocol, pushed_events_publish_decisions_and_emits)
{
	sub_t dec, emit;
	sub_open(&d, &dec, "choreo/shop/decision");
	sub_open(&d, &emit, "choreo/shop/emit/");
	push_json(&d, "{\"business\":\"shop\",\"customer\":\"p1\",\"type\":"
	              "\"purchase\",\"channel\":\"web\",\"data\":{\"amount\":5},"
	              "\"id\":\"push-1\"}");
	char    topic[128];
	reply_t m;
	cr_assert(sub_recv(&dec, 5000, topic, sizeof(topic), &m),
	    "a decision on pub within 5 s");
	cr_assert_str_eq(topic, "choreo/shop/decision");
	assert_ok(&m);
	cr_assert_str_eq(str_at(&m, "customer"), "p1");
	cr_assert_str_eq(str_at(&m, "business"), "shop");
	cr_assert_str_eq(str_at(&m, "type"), "purchase");
	cr_assert_str_eq(str_at(&m, "id"), "push-1");
	cr_assert_not_null(str_at(&m, "rules"));
	cr_assert_gt(len_at(&m, "actions"), 0, "%s", dump(&m));
	cr_assert_not_null(str_at(&m, "actions.0.name"));
	cr_assert_str_eq(str_at(&m, "journeys.onboarding.stage"), "customer");
	reply_free(&m);

	cr_assert(sub_recv(&emit, 5000, topic, sizeof(topic), &m),
	    "c:emit on pub within 5 s");
	cr_assert_str_eq(topic, "choreo/shop/emit/thanks");
	cr_assert_eq(int_at(&m, "data.amount"), 5, "%s", dump(&m));
	cr_assert_str_eq(str_at(&m, "customer"), "p1", "%s", dump(&m));
	reply_free(&m);
	// one of each, and the decision subscriber got no emit
	cr_assert_not(sub_recv(&dec, 300, topic, sizeof(topic), &m),
	    "an unexpected message on %s", topic);
	cr_assert_not(sub_recv(&emit, 100, topic, sizeof(topic), &m),
	    "an unexpected message on %s", topic);

	// the pushed event is stored like any other
	reply_t r;
	get("shop", "p1", &r);
	assert_ok(&r);
	cr_assert_eq(int_at(&r, "customer.attrs.spend"), 5);
	reply_free(&r);

	// a REQ event emits too
	event("{\"business\":\"shop\",\"customer\":\"p2\",\"type\":\"purchase\","
	      "\"data\":{\"amount\":7}}");
	cr_assert(sub_recv(&emit, 5000, topic, sizeof(topic), &m));
	cr_assert_str_eq(topic, "choreo/shop/emit/thanks");
	cr_assert_eq(int_at(&m, "data.amount"), 7);
	reply_free(&m);
	sub_close(&emit);
	sub_close(&dec);

	// a malformed push is dropped and counted; the daemon carries on
	push_json(&d, "{\"business\":\"shop\"}");
	push_raw(&d, "\xc1", 1);
	char body[65536];
	bool counted = false;
	for (int i = 0; i < 50 && !counted; i++) {
		cr_assert_eq(http_get(&d, "/metrics", body, sizeof(body)), 200);
		counted = strstr(body, "choreo_pull_malformed_total 2") != NULL;
		if (!counted) {
			usleep(20 * 1000);
		}
	}
	cr_assert(counted, "two malformed pushes counted: %s", body);
	expect_ping();
}

Test(protocol, stats_report_the_journey_and_the_actions)
{
	event("{\"business\":\"shop\",\"customer\":\"s1\",\"type\":"
	      "\"page_view\",\"channel\":\"web\",\"region\":\"EU\"}");
	event("{\"business\":\"shop\",\"customer\":\"s2\",\"type\":"
	      "\"page_view\",\"channel\":\"web\"}");
	event("{\"business\":\"shop\",\"customer\":\"s2\",\"type\":"
	      "\"purchase\",\"data\":{\"amount\":5}}");
	reply_t r;
	call_json(&d, "{\"op\":\"stats\",\"business\":\"shop\"}", &r);
	assert_ok(&r);
	cr_assert_eq(int_at(&r, "journeys.onboarding.customers"), 2);
	cr_assert_eq(int_at(&r, "journeys.onboarding.stages.browsing.entered"), 2);
	cr_assert_eq(int_at(&r, "journeys.onboarding.stages.browsing.current"), 1);
	cr_assert_eq(int_at(&r, "journeys.onboarding.converted"), 1);
	cr_assert_str_eq(str_at(&r, "journeys.onboarding.goal"), "customer");
	cr_assert_eq(int_at(&r, "journeys.onboarding.by.region.EU.customers"), 1);
	cr_assert_gt(int_at(&r, "actions.discount.impressions"), 0);
	reply_free(&r);
	call_json(&d, "{\"op\":\"stats\",\"business\":\"shop\",\"journey\":"
	              "\"nope\"}", &r);
	assert_code(&r, "bad_request");
	reply_free(&r);
	call_json(&d, "{\"op\":\"stats\",\"business\":\"nope\"}", &r);
	assert_code(&r, "unknown_business");
	reply_free(&r);
}

Test(protocol, http_healthz_and_metrics)
{
	char    body[65536], want[64];
	reply_t r;
	const char *ev = "{\"business\":\"shop\",\"customer\":\"m1\",\"type\":"
	                 "\"page_view\",\"channel\":\"web\",\"id\":\"m-1\"}";
	call_json(&d, ev, &r);
	assert_ok(&r);
	uint32_t nactions = len_at(&r, "actions");
	cr_assert_gt(nactions, 0);
	reply_free(&r);
	call_json(&d, ev, &r); // a duplicate is answered, not applied again
	cr_assert(bool_at(&r, "duplicate"));
	reply_free(&r);
	cr_assert_eq(http_get(&d, "/healthz", body, sizeof(body)), 200);
	cr_assert_eq(strncmp(body, "ok", 2), 0, "/healthz says ok: '%s'", body);
	cr_assert_eq(http_get(&d, "/metrics", body, sizeof(body)), 200);
	cr_assert_not_null(strstr(body, "choreo_events_total"), "%s", body);
	cr_assert_not_null(strstr(body, "choreo_events_total 1\n"), "%s",
	    body);
	cr_assert_not_null(strstr(body, "choreo_requests_total{op=\"event\"} 2"),
	    "%s", body);
	snprintf(want, sizeof(want), "choreo_decisions_total %u\n", nactions);
	cr_assert_not_null(strstr(body, want), "%s in %s", want, body);
	cr_assert_not_null(strstr(body, "choreo_duplicates_total 1\n"), "%s",
	    body);
	int st = http_get(&d, "/no/such/page", body, sizeof(body));
	cr_assert_eq(st, 404, "an unknown path is 404, got %d", st);
}

Test(protocol, the_cli_speaks_json_and_exits_by_outcome)
{
	char out[8192], args[512];
	snprintf(args, sizeof(args), "ping --url %s", d.rep);
	cr_assert_eq(run_cli(args, out, sizeof(out)), 0);
	cr_assert_not_null(strstr(out, "\"ok\":true"), "%s", out);
	snprintf(args, sizeof(args),
	    "send --url %s '{\"business\":\"shop\",\"customer\":\"k\","
	    "\"type\":\"page_view\",\"channel\":\"web\"}'",
	    d.rep);
	cr_assert_eq(run_cli(args, out, sizeof(out)), 0, "%s", out);
	cr_assert_not_null(strstr(out, "\"discount\""), "%s", out);
	snprintf(args, sizeof(args),
	    "get --url %s --business shop --customer nobody", d.rep);
	cr_assert_eq(run_cli(args, out, sizeof(out)), 1);
	cr_assert_not_null(strstr(out, "not_found"), "%s", out);
	cr_assert_eq(run_cli("ping --url tcp://127.0.0.1:1", out, sizeof(out)),
	    2);
}

/* }====================================================== */

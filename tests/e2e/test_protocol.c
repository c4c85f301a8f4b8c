// The protocol as a client sees it: every op, the replies, the errors.
#include <criterion/criterion.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

static daemon_t d;

static void
setup(void)
{
	memset(&d, 0, sizeof(d));
	d_start(&d, getenv("CHOREO_E2E_RULES"), false);
}

static void
teardown(void)
{
	d_stop(&d);
	d_cleanup(&d);
}

TestSuite(protocol, .init = setup, .fini = teardown);

Test(protocol, ping)
{
	reply_t r;
	call_json(&d, "{\"op\":\"ping\"}", &r);
	cr_assert(ok(&r));
	cr_assert_not_null(str_at(&r, "version"));
	reply_free(&r);
}

Test(protocol, an_event_returns_decisions_and_journeys)
{
	reply_t r;
	call_json(&d, "{\"business\":\"shop\",\"customer\":\"c1\",\"type\":\"page_view\",\"channel\":\"web\"}", &r);
	cr_assert(ok(&r), "%s", code(&r));
	cr_assert_not_null(str_at(&r, "rules"));
	cr_assert_str_eq(str_at(&r, "journeys.onboarding.stage"), "browsing");
	cr_assert_gt(int_at(&r, "journeys.onboarding.since"), 1700000000000);
	cr_assert_str_eq(str_at(&r, "actions.0.name"), "discount");
	cr_assert_eq(num_at(&r, "actions.0.score"), 10.0);
	cr_assert_eq(num_at(&r, "actions.0.value"), 20);
	cr_assert_eq(num_at(&r, "actions.0.propensity"), 0.5);
	cr_assert_str_eq(str_at(&r, "actions.0.group"), "offers");
	cr_assert_str_eq(str_at(&r, "actions.0.channel"), "web");
	cr_assert_eq(num_at(&r, "actions.0.payload.price"), 9.99);
	cr_assert_str_eq(str_at(&r, "actions.1.name"), "newsletter");
	reply_free(&r);
}

Test(protocol, get_returns_the_whole_state)
{
	reply_t r;
	call_json(&d, "{\"business\":\"shop\",\"customer\":\"c1\",\"type\":\"purchase\",\"data\":{\"amount\":150}}", &r);
	cr_assert(ok(&r));
	reply_free(&r);
	call_json(&d, "{\"op\":\"get\",\"business\":\"shop\",\"customer\":\"c1\"}", &r);
	cr_assert(ok(&r), "%s", code(&r));
	cr_assert_str_eq(str_at(&r, "customer.id"), "c1");
	cr_assert_eq(int_at(&r, "customer.attrs.spend"), 150);
	cr_assert_eq(int_at(&r, "customer.counters.events"), 1);
	cr_assert_str_eq(str_at(&r, "customer.journeys.onboarding.stage"), "customer");
	cr_assert_str_eq(str_at(&r, "customer.journeys.onboarding.history.0.stage"), "customer");
	cr_assert_eq(int_at(&r, "customer.actions.membership.impressions"), 1);
	cr_assert_gt(int_at(&r, "customer.created_at"), 0);
	cr_assert_gt(int_at(&r, "customer.updated_at"), 0);
	reply_free(&r);
}

Test(protocol, unknown_customers_are_not_found)
{
	reply_t r;
	call_json(&d, "{\"op\":\"get\",\"business\":\"shop\",\"customer\":\"nobody\"}", &r);
	cr_assert_str_eq(code(&r), "not_found");
	reply_free(&r);
	call_json(&d, "{\"op\":\"forget\",\"business\":\"shop\",\"customer\":\"nobody\"}", &r);
	cr_assert_str_eq(code(&r), "not_found");
	reply_free(&r);
}

Test(protocol, forget_erases)
{
	reply_t r;
	call_json(&d, "{\"business\":\"shop\",\"customer\":\"c9\",\"type\":\"page_view\"}", &r);
	reply_free(&r);
	call_json(&d, "{\"op\":\"forget\",\"business\":\"shop\",\"customer\":\"c9\"}", &r);
	cr_assert(ok(&r), "%s", code(&r));
	reply_free(&r);
	call_json(&d, "{\"op\":\"get\",\"business\":\"shop\",\"customer\":\"c9\"}", &r);
	cr_assert_str_eq(code(&r), "not_found");
	reply_free(&r);
}

Test(protocol, decide_without_record_changes_nothing)
{
	reply_t r;
	call_json(&d, "{\"op\":\"decide\",\"business\":\"shop\",\"customer\":\"d1\",\"channel\":\"web\",\"record\":false,\"explain\":true}", &r);
	cr_assert(ok(&r), "%s", code(&r));
	cr_assert_str_eq(str_at(&r, "actions.0.name"), "discount");
	cr_assert_not_null(at(&r.up.data, "trace"));
	reply_free(&r);
	call_json(&d, "{\"op\":\"get\",\"business\":\"shop\",\"customer\":\"d1\"}", &r);
	cr_assert_str_eq(code(&r), "not_found");
	reply_free(&r);
}

Test(protocol, rules_reports_versions_and_load_errors)
{
	reply_t r;
	call_json(&d, "{\"op\":\"rules\"}", &r);
	cr_assert(ok(&r));
	cr_assert_not_null(str_at(&r, "businesses.shop.version"));
	cr_assert_not_null(at(&r.up.data, "businesses.shop.files.0"));
	cr_assert_null(at(&r.up.data, "businesses.shop.error"));
	const char *file = str_at(&r, "businesses.broken.error.file");
	cr_assert_not_null(file);
	cr_assert_not_null(strstr(file, "broken/10_broken.lua"), "%s", file);
	cr_assert_eq(int_at(&r, "businesses.broken.error.line"), 3);
	cr_assert_not_null(strstr(str_at(&r, "businesses.broken.error.message"), "10_broken.lua:3:"));
	cr_assert_gt(int_at(&r, "businesses.broken.error.at"), 0);
	reply_free(&r);
	call_json(&d, "{\"business\":\"broken\",\"customer\":\"c\",\"type\":\"x\"}", &r);
	cr_assert_str_eq(code(&r), "unknown_business");
	reply_free(&r);
	call_json(&d, "{\"business\":\"nosuch\",\"customer\":\"c\",\"type\":\"x\"}", &r);
	cr_assert_str_eq(code(&r), "unknown_business");
	reply_free(&r);
}

Test(protocol, a_batch_answers_in_order)
{
	reply_t r;
	call_json(&d, "{\"op\":\"batch\",\"events\":["
	    "{\"business\":\"shop\",\"customer\":\"b1\",\"type\":\"page_view\"},"
	    "{\"business\":\"shop\",\"customer\":7,\"type\":\"page_view\"},"
	    "{\"business\":\"shop\",\"customer\":\"b1\",\"type\":\"add_to_cart\"}]}", &r);
	cr_assert(ok(&r), "%s", code(&r));
	cr_assert(bool_at(&r, "results.0.ok"));
	cr_assert_str_eq(str_at(&r, "results.1.error.code"), "bad_request");
	cr_assert_str_eq(str_at(&r, "results.2.journeys.onboarding.stage"), "cart");
	reply_free(&r);
}

static void
expect_bad(const void *bytes, size_t len, const char *why)
{
	reply_t r;
	call_raw(&d, bytes, len, &r);
	cr_assert_str_eq(code(&r), "bad_request", "%s", why);
	cr_assert_not_null(str_at(&r, "error.message"));
	reply_free(&r);
	call_json(&d, "{\"op\":\"ping\"}", &r); // and it still serves
	cr_assert(ok(&r));
	reply_free(&r);
}

Test(protocol, bad_inputs_get_bad_request_and_change_nothing)
{
	expect_bad("garbage bytes \xc1\xff", 15, "garbage");
	expect_bad("\x91\x01", 2, "an array body");
	expect_bad("\xdf\xff\xff\xff\xff", 5, "a map claiming 4 billion pairs");
	req_t q;
	req_init(&q, 3);
	req_str(&q, "business", "shop");
	req_int(&q, "customer", 12);
	req_str(&q, "type", "x");
	reply_t r;
	call(&d, &q, &r);
	cr_assert_str_eq(code(&r), "bad_request");
	cr_assert_not_null(strstr(str_at(&r, "error.message"), "customer"));
	reply_free(&r);
	req_free(&q);
	// a 300 KB field
	char *big = malloc(300 * 1024 + 1);
	memset(big, 'x', 300 * 1024);
	big[300 * 1024] = '\0';
	req_init(&q, 3);
	req_str(&q, "business", "shop");
	req_str(&q, "customer", big);
	req_str(&q, "type", "x");
	call(&d, &q, &r);
	cr_assert_str_eq(code(&r), "bad_request");
	reply_free(&r);
	req_free(&q);
	free(big);
	// a 2000-deep map in data
	req_init(&q, 4);
	req_str(&q, "business", "shop");
	req_str(&q, "customer", "deep");
	req_str(&q, "type", "x");
	req_key(&q, "data");
	for (int i = 0; i < 2000; i++) {
		msgpack_pack_map(&q.pk, 1);
		msgpack_pack_str(&q.pk, 1);
		msgpack_pack_str_body(&q.pk, "a", 1);
	}
	msgpack_pack_nil(&q.pk);
	call(&d, &q, &r);
	cr_assert_str_eq(code(&r), "bad_request");
	reply_free(&r);
	req_free(&q);
	call_json(&d, "{\"op\":\"frobnicate\"}", &r);
	cr_assert_str_eq(code(&r), "bad_request");
	cr_assert_not_null(strstr(str_at(&r, "error.message"), "unknown op"));
	reply_free(&r);
	// nothing was stored for those customers
	call_json(&d, "{\"op\":\"get\",\"business\":\"shop\",\"customer\":\"deep\"}", &r);
	cr_assert_str_eq(code(&r), "not_found");
	reply_free(&r);
}

Test(protocol, a_message_over_max_message_is_refused_by_nng)
{
	size_t n   = 2 << 20;
	char  *big = calloc(1, n);
	big[0]     = (char) 0xc4; // bin8 of garbage: never read anyway
	// no reply comes on that connection; the daemon serves the next one
	nng_socket s;
	cr_assert_eq(nng_req0_open(&s), 0);
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 1500);
	cr_assert_eq(nng_dial(s, d.rep, NULL, 0), 0);
	nng_send(s, big, n, 0);
	char  *rb;
	size_t rl;
	cr_assert_neq(nng_recv(s, &rb, &rl, NNG_FLAG_ALLOC), 0);
	nng_close(s);
	free(big);
	reply_t r;
	call_json(&d, "{\"op\":\"ping\"}", &r);
	cr_assert(ok(&r));
	reply_free(&r);
}

Test(protocol, a_rule_error_rolls_the_event_back)
{
	reply_t r;
	call_json(&d, "{\"business\":\"faulty\",\"customer\":\"f1\",\"type\":\"fine\"}", &r);
	cr_assert(ok(&r));
	reply_free(&r);
	call_json(&d, "{\"business\":\"faulty\",\"customer\":\"f1\",\"type\":\"boom\"}", &r);
	cr_assert_str_eq(code(&r), "rule_error");
	const char *m = str_at(&r, "error.message");
	cr_assert_not_null(strstr(m, "10_faulty.lua:3:"), "%s", m);
	cr_assert_not_null(strstr(m, "on purpose"), "%s", m);
	reply_free(&r);
	call_json(&d, "{\"op\":\"get\",\"business\":\"faulty\",\"customer\":\"f1\"}", &r);
	cr_assert(ok(&r));
	cr_assert(bool_at(&r, "customer.attrs.fine"));
	cr_assert_null(at(&r.up.data, "customer.attrs.touched"));
	reply_free(&r);
}

Test(protocol, an_id_is_applied_once)
{
	const char *ev = "{\"business\":\"shop\",\"customer\":\"i1\",\"type\":\"page_view\",\"id\":\"ev-1\"}";
	reply_t     r;
	call_json(&d, ev, &r);
	cr_assert(ok(&r));
	cr_assert_not(bool_at(&r, "duplicate"));
	reply_free(&r);
	call_json(&d, ev, &r);
	cr_assert(ok(&r));
	cr_assert(bool_at(&r, "duplicate"));
	cr_assert_str_eq(str_at(&r, "journeys.onboarding.stage"), "browsing");
	reply_free(&r);
	call_json(&d, "{\"op\":\"get\",\"business\":\"shop\",\"customer\":\"i1\"}", &r);
	cr_assert_eq(int_at(&r, "customer.counters.events"), 1);
	reply_free(&r);
}

Test(protocol, pushed_events_publish_decisions_and_emits)
{
	sub_t s;
	sub_open(&d, &s, "choreo/shop/");
	push_json(&d, "{\"business\":\"shop\",\"customer\":\"p1\",\"type\":\"purchase\",\"data\":{\"amount\":5},\"id\":\"push-1\"}");
	bool saw_decision = false, saw_emit = false;
	for (int i = 0; i < 2; i++) {
		char    topic[128];
		reply_t m;
		cr_assert(sub_recv(&s, 5000, topic, sizeof(topic), &m),
		    "a message on pub");
		if (strcmp(topic, "choreo/shop/decision") == 0) {
			cr_assert(ok(&m));
			cr_assert_str_eq(str_at(&m, "customer"), "p1");
			cr_assert_not_null(at(&m.up.data, "actions"));
			saw_decision = true;
		} else if (strcmp(topic, "choreo/shop/emit/thanks") == 0) {
			cr_assert_eq(int_at(&m, "data.amount"), 5);
			cr_assert_str_eq(str_at(&m, "customer"), "p1");
			saw_emit = true;
		}
		reply_free(&m);
	}
	cr_assert(saw_decision && saw_emit);
	sub_close(&s);
	// a malformed push is dropped and counted; the daemon carries on
	push_json(&d, "{\"business\":\"shop\"}");
	char body[16384];
	cr_assert_eq(http_get(&d, "/metrics", body, sizeof(body)), 200);
	cr_assert_not_null(strstr(body, "choreo_pull_malformed_total 1"), "%s", body);
}

Test(protocol, http_healthz_and_metrics)
{
	char    body[16384];
	reply_t r;
	call_json(&d, "{\"business\":\"shop\",\"customer\":\"m1\",\"type\":\"page_view\"}", &r);
	reply_free(&r);
	cr_assert_eq(http_get(&d, "/healthz", body, sizeof(body)), 200);
	cr_assert_not_null(strstr(body, "ok"));
	cr_assert_eq(http_get(&d, "/metrics", body, sizeof(body)), 200);
	cr_assert_not_null(strstr(body, "choreo_events_total 1"), "%s", body);
	cr_assert_not_null(strstr(body, "choreo_requests_total{op=\"event\"} 1"));
}

Test(protocol, the_cli_speaks_json_and_exits_by_outcome)
{
	char out[8192], args[512];
	snprintf(args, sizeof(args), "ping --url %s", d.rep);
	cr_assert_eq(run_cli(args, out, sizeof(out)), 0);
	cr_assert_not_null(strstr(out, "\"ok\":true"));
	snprintf(args, sizeof(args),
	    "send --url %s '{\"business\":\"shop\",\"customer\":\"k\",\"type\":\"page_view\"}'",
	    d.rep);
	cr_assert_eq(run_cli(args, out, sizeof(out)), 0);
	cr_assert_not_null(strstr(out, "\"discount\""));
	snprintf(args, sizeof(args), "get --url %s --business shop --customer nobody",
	    d.rep);
	cr_assert_eq(run_cli(args, out, sizeof(out)), 1);
	cr_assert_not_null(strstr(out, "not_found"));
	cr_assert_eq(run_cli("ping --url tcp://127.0.0.1:1", out, sizeof(out)), 2);
}

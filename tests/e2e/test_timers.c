// Timers seen from outside: c:after fires as an event on time, survives a
// restart, and c:cancel and forget remove it.
#include <criterion/criterion.h>
#include <stdio.h>
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

TestSuite(timers, .init = setup, .fini = teardown);

static void
event(const char *json)
{
	reply_t r;
	call_json(&d, json, &r);
	assert_ok(&r);
	reply_free(&r);
}

// reminders_of returns the customer's "reminders" counter (0 when absent),
// or -1 when the customer is not found.
static int64_t
reminders_of(const char *customer)
{
	char    q[200];
	reply_t r;
	snprintf(q, sizeof(q),
	    "{\"op\":\"get\",\"business\":\"shop\",\"customer\":\"%s\"}",
	    customer);
	call_json(&d, q, &r);
	int64_t n = -1;
	if (ok(&r)) {
		n = has(&r, "customer.counters.reminders")
		    ? int_at(&r, "customer.counters.reminders")
		    : 0;
	} else {
		assert_code(&r, "not_found");
	}
	reply_free(&r);
	return (n);
}

static int64_t
wait_reminders(const char *customer, int64_t want, int ms)
{
	int64_t n = reminders_of(customer);
	for (int t = 0; t < ms && n != want; t += 100) {
		usleep(100 * 1000);
		n = reminders_of(customer);
	}
	return (n);
}

Test(timers, a_timer_fires_as_an_event_and_publishes_its_emit)
{
	d_start(&d, d_rules(), false);
	sub_t s;
	sub_open(&d, &s, "choreo/shop/emit/reminded");
	usleep(200 * 1000);
	event("{\"business\":\"shop\",\"customer\":\"t1\",\"type\":\"remind_me\","
	      "\"data\":{\"after\":\"1s\",\"note\":\"hi\"}}");
	cr_assert_eq(reminders_of("t1"), 0, "not before its time");
	char    topic[128];
	reply_t m;
	cr_assert(sub_recv(&s, 5000, topic, sizeof(topic), &m),
	    "the timer's emit was not published within 5 s");
	cr_assert_str_eq(str_at(&m, "customer"), "t1");
	cr_assert_str_eq(str_at(&m, "data.note"), "hi");
	reply_free(&m);
	sub_close(&s);
	cr_assert_eq(reminders_of("t1"), 1);
	d_stop(&d);
}

Test(timers, a_pending_timer_survives_a_restart)
{
	d_start(&d, d_rules(), false);
	event("{\"business\":\"shop\",\"customer\":\"t2\",\"type\":\"remind_me\","
	      "\"data\":{\"after\":\"2s\"}}");
	d_stop(&d);
	d_restart(&d);
	cr_assert_eq(wait_reminders("t2", 1, 6000), 1,
	    "the timer set before the restart did not fire");
	usleep(500 * 1000);
	cr_assert_eq(reminders_of("t2"), 1, "a timer fires once");
	d_stop(&d);
}

Test(timers, cancel_and_forget_remove_a_timer)
{
	d_start(&d, d_rules(), false);
	event("{\"business\":\"shop\",\"customer\":\"t3\",\"type\":\"remind_me\"}");
	event("{\"business\":\"shop\",\"customer\":\"t3\",\"type\":\"never_mind\"}");
	event("{\"business\":\"shop\",\"customer\":\"t4\",\"type\":\"remind_me\"}");
	event("{\"op\":\"forget\",\"business\":\"shop\",\"customer\":\"t4\"}");
	usleep(2000 * 1000);
	cr_assert_eq(reminders_of("t3"), 0, "a cancelled timer fired");
	cr_assert_eq(reminders_of("t4"), -1,
	    "a forgotten customer came back through its timer");
	d_stop(&d);
}

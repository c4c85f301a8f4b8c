// What the daemon sends back is bounded like what it takes in: no reply,
// batch reply or emitted message is larger than --max-message (a client
// whose receive limit is the same would drop the connection, and nng's REQ
// would resend the request on every reconnect — applying it each time), and
// the memory it keeps does not grow with the largest reply it ever sent.
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <sys/socket.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support.h"

#define LIMIT 65536

static daemon_t d;
static char     rules[128];

// Three actions of ~30 KB each: a decision of all three is ~90 KB, of two
// ~60 KB. An emit of 70 KB. A customer that grows by what events bring.
static const char RULES[] =
    "action 'big1' { value = 3, payload = { blob = ('x'):rep(30000) } }\n"
    "action 'big2' { value = 2, payload = { blob = ('y'):rep(30000) } }\n"
    "action 'big3' { value = 1, payload = { blob = ('z'):rep(30000) } }\n"
    "on('view', function(c) c:count('views') end)\n"
    "on('shout', function(c) c:count('shouts')\n"
    "  c:emit('loud', { blob = ('e'):rep(70000) }) end)\n"
    "on('grow', function(c, e) local n = c:count('grows')\n"
    "  c.attrs['k' .. n] = e.data.blob end)\n"
    "on('nest', function(c, e) local t = {} local top = t\n"
    "  for i = 1, e.data.levels do t.x = {} t = t.x end\n"
    "  c.attrs.deep = top end)\n";

static void
setup(void)
{
	memset(&d, 0, sizeof(d));
	rules_dir(rules, sizeof(rules));
	rules_write(rules, "big", "10.lua", RULES);
	snprintf(d.extra, sizeof(d.extra), "--max-message %d", LIMIT);
	d_start(&d, rules, false);
}

static void
teardown(void)
{
	d_stop(&d);
	d_cleanup(&d);
	rules_remove(rules);
}

TestSuite(limits, .init = setup, .fini = teardown);

// A client whose receive limit is the daemon's.
static void
limited_client(client_t *c)
{
	client_open(&d, c);
	cr_assert_eq(nng_socket_set_size(c->s, NNG_OPT_RECVMAXSZ, LIMIT), 0);
}

static void
call_limited(const char *json, reply_t *r)
{
	client_t c;
	req_t    q;
	limited_client(&c);
	req_json(&q, json);
	int rv = client_try(&c, q.buf.data, q.buf.size, r);
	cr_assert_eq(rv, 0, "%s: no reply a client limited to %d bytes can "
	                    "receive (%s)",
	    json, LIMIT, nng_strerror(rv));
	cr_assert_leq(r->len, LIMIT);
	req_free(&q);
	client_close(&c);
}

static int64_t
counter(const char *customer, const char *name)
{
	char    q[256], path[64];
	reply_t r;
	snprintf(q, sizeof(q), "{\"op\":\"get\",\"business\":\"big\","
	                       "\"customer\":\"%s\"}", customer);
	call_json(&d, q, &r);
	if (!ok(&r)) {
		assert_code(&r, "not_found");
		reply_free(&r);
		return (0);
	}
	snprintf(path, sizeof(path), "customer.counters.%s", name);
	int64_t n = has(&r, path) ? int_at(&r, path) : 0;
	reply_free(&r);
	return (n);
}

Test(limits, a_reply_over_max_message_is_refused_and_nothing_applied)
{
	reply_t r;
	// three 30 KB actions: ~90 KB, over the limit
	call_limited("{\"business\":\"big\",\"customer\":\"c1\",\"type\":\"view\"}", &r);
	assert_code(&r, "reply_too_large");
	cr_assert_not_null(strstr(str_at(&r, "error.message"), "nothing applied"));
	cr_assert_not_null(strstr(str_at(&r, "error.message"), "(65536)"));
	reply_free(&r);
	// no resend applied it behind the client's back either
	usleep(300 * 1000);
	cr_assert_eq(counter("c1", "views"), 0);
	// two fit
	call_limited("{\"business\":\"big\",\"customer\":\"c1\",\"type\":\"view\",\"limit\":2}", &r);
	assert_ok(&r);
	reply_free(&r);
	cr_assert_eq(counter("c1", "views"), 1);
	// a decision, read-only or recorded, is held to the same limit
	call_limited("{\"op\":\"decide\",\"business\":\"big\",\"customer\":\"c1\"}", &r);
	assert_code(&r, "reply_too_large");
	reply_free(&r);
}

Test(limits, an_emit_over_max_message_is_refused_and_nothing_applied)
{
	sub_t s;
	sub_open(&d, &s, "choreo/big/emit/");
	reply_t r;
	call_limited("{\"business\":\"big\",\"customer\":\"c2\",\"type\":\"shout\",\"decide\":false}", &r);
	assert_code(&r, "reply_too_large");
	cr_assert_not_null(strstr(str_at(&r, "error.message"), "emitted"));
	reply_free(&r);
	char    topic[128];
	reply_t m;
	cr_assert(!sub_recv(&s, 300, topic, sizeof(topic), &m),
	    "a refused event's emit was published");
	sub_close(&s);
	cr_assert_eq(counter("c2", "shouts"), 0);
}

Test(limits, a_get_over_max_message_is_refused)
{
	char blob[20001];
	memset(blob, 'g', sizeof(blob) - 1);
	blob[sizeof(blob) - 1] = '\0';
	char *q = malloc(sizeof(blob) + 256);
	snprintf(q, sizeof(blob) + 256,
	    "{\"business\":\"big\",\"customer\":\"c3\",\"type\":\"grow\","
	    "\"decide\":false,\"data\":{\"blob\":\"%s\"}}",
	    blob);
	for (int i = 0; i < 4; i++) { // ~80 KB of state
		reply_t r;
		call_limited(q, &r);
		assert_ok(&r);
		reply_free(&r);
	}
	free(q);
	reply_t r;
	call_limited("{\"op\":\"get\",\"business\":\"big\",\"customer\":\"c3\"}", &r);
	assert_code(&r, "reply_too_large");
	reply_free(&r);
}

Test(limits, a_batch_reply_fits_as_a_whole)
{
	// each member's reply is ~30 KB: two fit in 64 KiB, the third does
	// not, and only the third is refused and rolled back
	reply_t r;
	call_limited("{\"op\":\"batch\",\"events\":["
	             "{\"business\":\"big\",\"customer\":\"b1\",\"type\":\"view\",\"limit\":1},"
	             "{\"business\":\"big\",\"customer\":\"b2\",\"type\":\"view\",\"limit\":1},"
	             "{\"business\":\"big\",\"customer\":\"b3\",\"type\":\"view\",\"limit\":1}]}",
	    &r);
	assert_ok(&r);
	int refused = 0;
	for (int i = 0; i < 3; i++) {
		char path[32], cust[8];
		snprintf(path, sizeof(path), "results.%d.ok", i);
		snprintf(cust, sizeof(cust), "b%d", i + 1);
		const msgpack_object *o = rat(&r, path);
		cr_assert_not_null(o);
		if (o->via.boolean) {
			cr_assert_eq(counter(cust, "views"), 1, "%s", cust);
		} else {
			snprintf(path, sizeof(path), "results.%d.error.code", i);
			cr_assert_str_eq(str_at(&r, path), "reply_too_large");
			cr_assert_eq(counter(cust, "views"), 0, "%s", cust);
			refused++;
		}
	}
	cr_assert_eq(refused, 1);
	reply_free(&r);
}

Test(limits, a_batch_too_large_to_answer_is_refused_whole)
{
	// 300 members need 300 × 256 bytes set aside for their errors alone
	size_t cap = 300 * 96 + 64;
	char  *q   = malloc(cap);
	size_t n   = (size_t) snprintf(q, cap, "{\"op\":\"batch\",\"events\":[");
	for (int i = 0; i < 300; i++) {
		n += (size_t) snprintf(q + n, cap - n,
		    "%s{\"business\":\"big\",\"customer\":\"m%d\",\"type\":\"view\",\"limit\":1}",
		    i ? "," : "", i);
	}
	snprintf(q + n, cap - n, "]}");
	reply_t r;
	call_limited(q, &r);
	free(q);
	assert_code(&r, "reply_too_large");
	cr_assert_not_null(strstr(str_at(&r, "error.message"), "fewer events"));
	reply_free(&r);
	cr_assert_eq(counter("m0", "views"), 0);
}

/*
** Memory: what the daemon keeps does not grow with the largest reply
*/

static daemon_t big;
static char     big_rules[128];

static void
big_setup(void)
{
	memset(&big, 0, sizeof(big));
	rules_dir(big_rules, sizeof(big_rules));
	rules_write(big_rules, "big", "10.lua",
	    "on('grow', function(c, e) local n = c:count('grows')\n"
	    "  c.attrs['k' .. n] = e.data.blob end)\n"
	    "on('shout', function(c) c:emit('loud', { blob = ('e'):rep(30000) }) end)\n"
	    "on('peep', function(c) c:emit('soft', { n = 1 }) end)\n");
	snprintf(big.extra, sizeof(big.extra), "--max-message 8M --pub-queue 8M");
	d_start(&big, big_rules, false);
}

static void
big_teardown(void)
{
	d_stop(&big);
	d_cleanup(&big);
	rules_remove(big_rules);
}

TestSuite(memory, .init = big_setup, .fini = big_teardown);

// ASan's allocator keeps what is freed in a quarantine of its own and never
// hands it back: the resident set of a daemon built with it tells nothing.
#ifdef __SANITIZE_ADDRESS__
#define SKIP_UNDER_ASAN() \
	cr_skip_test("RSS is not the daemon's own under AddressSanitizer")
#else
#define SKIP_UNDER_ASAN() (void) 0
#endif

// rss_kb: the resident set of a process, in KiB.
static long
rss_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) {
			break;
		}
	}
	fclose(f);
	return (kb);
}

typedef struct {
	int n, ok;
} getter_t;

static void *
getter_main(void *arg)
{
	getter_t *g = arg;
	client_t  c;
	client_open(&big, &c);
	req_t q;
	req_json(&q, "{\"op\":\"get\",\"business\":\"big\",\"customer\":\"fat\"}");
	for (int i = 0; i < g->n; i++) {
		reply_t r;
		if (client_try(&c, q.buf.data, q.buf.size, &r) == 0) {
			g->ok += ok(&r);
			reply_free(&r);
		}
	}
	req_free(&q);
	client_close(&c);
	return (NULL);
}

Test(memory, rss_does_not_keep_the_largest_replies)
{
	SKIP_UNDER_ASAN();
	// a customer of ~4 MiB: 64 events bringing 64 KB each
	static char q[64 * 1024 + 256];
	int         n = snprintf(q, sizeof(q),
	            "{\"business\":\"big\",\"customer\":\"fat\",\"type\":\"grow\","
	            "\"decide\":false,\"data\":{\"blob\":\"");
	memset(q + n, 'f', 64000);
	snprintf(q + n + 64000, sizeof(q) - (size_t) n - 64000, "\"}}");
	for (int i = 0; i < 64; i++) {
		reply_t r;
		call_json(&big, q, &r);
		assert_ok(&r);
		reply_free(&r);
	}
	long before = rss_kb(big.engine);
	// 300 gets of it from 30 connections at once: each reply is 4 MiB
	enum { THREADS = 30 };
	pthread_t th[THREADS];
	getter_t  g[THREADS];
	for (int i = 0; i < THREADS; i++) {
		g[i] = (getter_t) { .n = 10 };
		pthread_create(&th[i], NULL, getter_main, &g[i]);
	}
	int got = 0;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		got += g[i].ok;
	}
	cr_assert_eq(got, 300);
	usleep(500 * 1000);
	long after = rss_kb(big.engine);
	// 30 contexts keeping a 4 MiB reply each would hold 120 MiB or more
	cr_assert_lt(after - before, 48 * 1024,
	    "the engine's RSS went from %ld to %ld KiB after 300 gets of a "
	    "4 MiB customer, and stayed there",
	    before, after);
}

// slow_subscriber connects to pub as a SUB peer speaking SP over TCP, then
// never reads: nng queues for it what it cannot send.
static int
slow_subscriber(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_geq(fd, 0);
	int small = 4096;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	struct sockaddr_in a = { .sin_family = AF_INET,
		.sin_port = htons((uint16_t) big.pub_port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(fd, (struct sockaddr *) &a, sizeof(a)), 0);
	// SP header: 0, 'S', 'P', version 0, protocol SUB0 (0x21), reserved
	static const unsigned char hello[8] = { 0, 'S', 'P', 0, 0, 0x21, 0, 0 };
	cr_assert_eq(write(fd, hello, sizeof(hello)), (ssize_t) sizeof(hello));
	return (fd);
}

// emit_batches sends batches of events of type, each with its own
// customer, that decide nothing.
static void
emit_batches(const char *type, int per, int batches)
{
	size_t cap = (size_t) per * 128 + 64;
	char  *q   = malloc(cap);
	for (int b = 0; b < batches; b++) {
		size_t n = (size_t) snprintf(q, cap, "{\"op\":\"batch\",\"events\":[");
		for (int i = 0; i < per; i++) {
			n += (size_t) snprintf(q + n, cap - n,
			    "%s{\"business\":\"big\",\"customer\":\"s%d\","
			    "\"type\":\"%s\",\"decide\":false}",
			    i ? "," : "", i, type);
		}
		snprintf(q + n, cap - n, "]}");
		reply_t r;
		call_json(&big, q, &r);
		assert_ok(&r);
		reply_free(&r);
	}
	free(q);
}

Test(memory, a_subscriber_that_never_reads_holds_at_most_pub_queue_bytes)
{
	SKIP_UNDER_ASAN();
	int slow[4];
	for (int i = 0; i < 4; i++) {
		slow[i] = slow_subscriber();
	}
	usleep(200 * 1000); // the pipes are up
	// more small messages first than a queue holds (8 192): the bound
	// must follow what is published now, not what was published first
	emit_batches("peep", 500, 20);
	long before = rss_kb(big.engine);
	// 2 000 emits of 30 KB: 60 MB published, all queued for the four
	// subscribers that never read, were it not for --pub-queue 8M
	emit_batches("shout", 50, 40);
	long during = rss_kb(big.engine);
	cr_assert_lt(during - before, 24 * 1024,
	    "four subscribers that never read took the engine's RSS from %ld "
	    "to %ld KiB (--pub-queue 8M)",
	    before, during);
	// once they are gone, what they held goes back to the system
	for (int i = 0; i < 4; i++) {
		close(slow[i]);
	}
	long after = during;
	for (int i = 0; i < 80 && after - before > 8 * 1024; i++) {
		usleep(100 * 1000);
		after = rss_kb(big.engine);
	}
	cr_assert_lt(after - before, 8 * 1024,
	    "the engine's RSS stayed at %ld KiB (from %ld) after the slow "
	    "subscribers left",
	    after, before);
}

Test(limits, what_is_stored_nests_no_deeper_than_msgpack_c_reads)
{
	// msgpack-c reads 32 levels: a state nested deeper could be written
	// but not read back by the CLI, C clients, or the engine's own forget
	reply_t r;
	call_json(&d, "{\"business\":\"big\",\"customer\":\"n1\",\"type\":\"nest\","
	              "\"decide\":false,\"data\":{\"levels\":40}}", &r);
	assert_code(&r, "rule_error");
	cr_assert_not_null(strstr(str_at(&r, "error.message"), "nested too deeply"),
	    "%s", str_at(&r, "error.message"));
	reply_free(&r);
	// as deep as may be stored: get reads it, and forget forgets it
	call_json(&d, "{\"business\":\"big\",\"customer\":\"n1\",\"type\":\"nest\","
	              "\"decide\":false,\"data\":{\"levels\":26}}", &r);
	assert_ok(&r);
	reply_free(&r);
	char out[16384];
	char args[256];
	snprintf(args, sizeof(args), "get --url %s --business big --customer n1",
	    d.rep);
	cr_assert_eq(run_cli(args, out, sizeof(out)), 0, "%s", out);
	cr_assert_not_null(strstr(out, "\"deep\""), "%s", out);
	call_json(&d, "{\"op\":\"forget\",\"business\":\"big\",\"customer\":\"n1\"}", &r);
	assert_ok(&r);
	reply_free(&r);
}

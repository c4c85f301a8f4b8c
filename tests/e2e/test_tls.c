// TLS end to end: the daemon's tls+tcp://, wss:// and https:// endpoints
// with throwaway certificates made by openssl for each test, clients that
// verify it by the name localhost, client certificates, and what does not
// get in: a client that cannot verify the daemon, one without an accepted
// certificate, plain TCP on a TLS port, a message over --max-message.
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/req.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

static daemon_t    d;
static tls_files_t t;

static void
setup(void)
{
	memset(&d, 0, sizeof(d));
	memset(&t, 0, sizeof(t));
	cr_assert(tls_make(&t), "openssl could not make the test certificates "
	                        "(is openssl installed?)");
}

static void
teardown(void)
{
	if (d.pid > 0) {
		d_stop(&d); // asserts exit status 0
	}
	d_cleanup(&d);
	tls_remove(&t);
}

TestSuite(tls, .init = setup, .fini = teardown);

// start serves the e2e rules with the endpoints in tls on TLS, the test
// certificate, and client certificates from ca required when ca is set.
static void
start(unsigned tls, const char *ca, const char *more)
{
	d.tls = tls;
	snprintf(d.extra, sizeof(d.extra), "--tls-cert %s --tls-key %s%s%s %s",
	    t.cert, t.key, ca != NULL ? " --tls-ca " : "", ca != NULL ? ca : "",
	    more != NULL ? more : "");
	d_start(&d, d_rules(), false);
}

// tls_call: one request over a fresh TLS connection presenting id.
static void
tls_call(const tls_id_t *id, const char *json, reply_t *r)
{
	client_t c;
	req_t    q;
	tls_client_open(&d, &c, id);
	req_json(&q, json);
	client_call(&c, q.buf.data, q.buf.size, r);
	req_free(&q);
	client_close(&c);
}

static void
expect_not_found(const tls_id_t *id, const char *customer)
{
	char    q[256];
	reply_t r;
	snprintf(q, sizeof(q), "{\"op\":\"get\",\"business\":\"shop\","
	                       "\"customer\":\"%s\"}",
	    customer);
	tls_call(id, q, &r);
	assert_code(&r, "not_found");
	reply_free(&r);
}

// expect_refused: a client presenting id does not get through the TLS
// handshake with the rep endpoint.
static void
expect_refused(const tls_id_t *id, const char *who)
{
	client_t c;
	int      rv = tls_client_try(&d, &c, id);
	cr_assert_neq(rv, 0, "%s got through the TLS handshake", who);
}

// raw_talk connects to 127.0.0.1:port with a plain TCP socket, sends
// bytes, and reads what comes back until the peer closes or ms pass.
// Returns the number of bytes read; *closed says whether the peer closed.
static size_t
raw_talk(int port, const void *bytes, size_t len, char *out, size_t cap,
    int ms, bool *closed)
{
	int                fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a  = { 0 };
	a.sin_family          = AF_INET;
	a.sin_port            = htons((uint16_t) port);
	a.sin_addr.s_addr     = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(fd, (struct sockaddr *) &a, sizeof(a)), 0,
	    "connect to port %d: %s", port, strerror(errno));
	cr_assert_eq(send(fd, bytes, len, MSG_NOSIGNAL), (ssize_t) len);
	size_t          got = 0;
	struct timespec t0, now;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	*closed = false;
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		long left = ms - ((now.tv_sec - t0.tv_sec) * 1000 +
		                     (now.tv_nsec - t0.tv_nsec) / 1000000);
		if (left <= 0) {
			break;
		}
		struct pollfd pf = { fd, POLLIN, 0 };
		if (poll(&pf, 1, (int) left) <= 0) {
			continue;
		}
		ssize_t r = recv(fd, out + got, cap - got, 0);
		if (r <= 0) {
			*closed = r == 0 || errno == ECONNRESET;
			if (r == 0 || errno != EINTR) {
				break;
			}
			continue;
		}
		got += (size_t) r;
		if (got == cap) {
			break;
		}
	}
	close(fd);
	return (got);
}

/*
** {======================================================
** Served over TLS
** =======================================================
*/

Test(tls, a_verifying_client_is_served_on_every_endpoint)
{
	start(E2E_TLS_ALL, NULL, NULL);
	tls_id_t id = { t.ca, NULL, NULL };
	reply_t  r;
	tls_call(&id, "{\"op\":\"ping\"}", &r);
	assert_ok(&r);
	reply_free(&r);
	tls_call(&id, "{\"business\":\"shop\",\"customer\":\"t1\",\"type\":"
	              "\"page_view\",\"channel\":\"web\"}",
	    &r);
	assert_ok(&r);
	cr_assert_str_eq(str_at(&r, "journeys.onboarding.stage"), "browsing");
	reply_free(&r);

	// PUSH over TLS; its decision comes out on pub, over TLS
	sub_t   dec;
	char    topic[128];
	tls_sub_open(&d, &dec, "choreo/shop/decision", &id);
	tls_push_json(&d, "{\"business\":\"shop\",\"customer\":\"t2\",\"type\":"
	                  "\"purchase\",\"data\":{\"amount\":5},\"id\":\"tls-1\"}",
	    &id);
	cr_assert(sub_recv(&dec, 5000, topic, sizeof(topic), &r),
	    "a decision on pub (TLS) within 5 s");
	cr_assert_str_eq(topic, "choreo/shop/decision");
	cr_assert_str_eq(str_at(&r, "customer"), "t2");
	cr_assert_str_eq(str_at(&r, "id"), "tls-1");
	reply_free(&r);
	sub_close(&dec);
	tls_call(&id, "{\"op\":\"get\",\"business\":\"shop\",\"customer\":"
	              "\"t2\"}",
	    &r);
	assert_ok(&r);
	cr_assert_eq(int_at(&r, "customer.attrs.spend"), 5);
	reply_free(&r);

	// https
	char body[65536];
	cr_assert_eq(https_get(&d, "/healthz", &id, body, sizeof(body)), 200,
	    "GET https /healthz");
	cr_assert_str_eq(body, "ok\n");
	cr_assert_eq(https_get(&d, "/metrics", &id, body, sizeof(body)), 200);
	cr_assert_not_null(strstr(body, "choreo_"), "%.200s", body);
	tls_id_t other = { t.other_ca, NULL, NULL };
	cr_assert_eq(https_get(&d, "/healthz", &other, body, sizeof(body)), 0,
	    "https with a CA that did not sign the daemon's certificate");
}

// A TLS 1.2 ClientHello (one ECDHE-ECDSA suite, SNI localhost), as a
// client sends it before it sees the daemon's certificate.
static const char client_hello[] =
    "\x16\x03\x01\x00\x95\x01\x00\x00\x91\x03\x03\x19\x3e\xc4\x38\x3b"
    "\x73\x65\xc8\xf8\xa9\xc2\x02\x47\xb7\xad\xbf\x4e\x1e\x5e\x8c\x78"
    "\xfe\x22\xe0\x25\x0f\x1e\x73\x82\x77\x74\xc4\x00\x00\x04\xc0\x2b"
    "\x00\xff\x01\x00\x00\x64\x00\x00\x00\x0e\x00\x0c\x00\x00\x09\x6c"
    "\x6f\x63\x61\x6c\x68\x6f\x73\x74\x00\x0b\x00\x04\x03\x00\x01\x02"
    "\x00\x0a\x00\x0c\x00\x0a\x00\x1d\x00\x17\x00\x1e\x00\x19\x00\x18"
    "\x00\x23\x00\x00\x00\x16\x00\x00\x00\x17\x00\x00\x00\x0d\x00\x2a"
    "\x00\x28\x04\x03\x05\x03\x06\x03\x08\x07\x08\x08\x08\x09\x08\x0a"
    "\x08\x0b\x08\x04\x08\x05\x08\x06\x04\x01\x05\x01\x06\x01\x03\x03"
    "\x03\x01\x03\x02\x04\x02\x05\x02\x06\x02";

// abort_handshakes: n connections that send a ClientHello and reset the
// connection while the daemon answers it.
static void
abort_handshakes(int port, int n)
{
	for (int i = 0; i < n; i++) {
		int                fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a  = { 0 };
		struct linger      rst = { 1, 0 };
		a.sin_family          = AF_INET;
		a.sin_port            = htons((uint16_t) port);
		a.sin_addr.s_addr     = htonl(INADDR_LOOPBACK);
		cr_assert_eq(connect(fd, (struct sockaddr *) &a, sizeof(a)), 0,
		    "connect to port %d: %s", port, strerror(errno));
		cr_assert_eq(send(fd, client_hello, sizeof(client_hello) - 1,
		                 MSG_NOSIGNAL),
		    (ssize_t) sizeof(client_hello) - 1);
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
		close(fd);
	}
}

Test(tls, wss_is_served_and_outlasts_aborted_handshakes)
{
	start(E2E_WSS_REP, NULL, NULL);
	tls_id_t id = { t.ca, NULL, NULL };
	reply_t  r;
	tls_call(&id, "{\"business\":\"shop\",\"customer\":\"w1\",\"type\":"
	              "\"page_view\"}",
	    &r);
	assert_ok(&r);
	reply_free(&r);
	tls_id_t other = { t.other_ca, NULL, NULL };
	expect_refused(&other, "a wss client with another CA");
	// clients that give up mid-handshake do not stop the listener (they
	// stop nng 1.5.2's tls+tcp:// listener: docs/security.md). The
	// daemon may still be busy with their handshakes (each signs one; a
	// websocket handshake must end within 2 s): dial until 20 s are up.
	abort_handshakes(d.rep_port, 100);
	client_t c;
	int      rv = -1;
	for (int i = 0; i < 40 && rv != 0; i++) {
		if ((rv = tls_client_try(&d, &c, &id)) != 0) {
			usleep(500 * 1000);
		}
	}
	cr_assert_eq(rv, 0, "no wss connection after the aborted handshakes: "
	                    "%s", nng_strerror(rv));
	req_t q;
	req_json(&q, "{\"business\":\"shop\",\"customer\":\"w2\",\"type\":"
	             "\"page_view\"}");
	client_call(&c, q.buf.data, q.buf.size, &r);
	req_free(&q);
	client_close(&c);
	assert_ok(&r);
	reply_free(&r);
}

/* }====================================================== */

/*
** {======================================================
** What does not get in
** =======================================================
*/

Test(tls, a_client_that_cannot_verify_the_daemon_is_refused)
{
	start(E2E_TLS_REP | E2E_TLS_PUB, NULL, NULL);
	tls_id_t other = { t.other_ca, NULL, NULL };
	expect_refused(&other, "a client trusting another CA");
	sub_t s;
	cr_assert_neq(tls_sub_try(&d, &s, "", &other), 0,
	    "a subscriber trusting another CA got through");
	// the CLI sends nothing to a daemon it cannot verify
	char args[1024], out[4096];
	char url[128];
	tls_dial_url(d.rep, url, sizeof(url));
	snprintf(args, sizeof(args),
	    "send --url %s --tls-ca %s '{\"business\":\"shop\",\"customer\":"
	    "\"intruder\",\"type\":\"page_view\"}'",
	    url, t.other_ca);
	cr_assert_eq(run_cli_all(args, out, sizeof(out)), 2, "%s", out);
	tls_id_t id = { t.ca, NULL, NULL };
	expect_not_found(&id, "intruder");
}

Test(tls, client_certificates_when_the_daemon_asks_for_them)
{
	// the CA file carries the CRL that revokes t.revoked_cert
	start(E2E_TLS_REP | E2E_TLS_PULL | E2E_TLS_PUB, t.ca_crl, NULL);
	tls_id_t none    = { t.ca, NULL, NULL };
	tls_id_t other   = { t.ca, t.other_cert, t.other_key };
	tls_id_t revoked = { t.ca, t.revoked_cert, t.revoked_key };
	tls_id_t server  = { t.ca, t.cert, t.key }; // not for client use
	tls_id_t good    = { t.ca, t.client_cert, t.client_key };
	expect_refused(&none, "a client without a certificate");
	expect_refused(&other, "a client whose certificate another CA signed");
	expect_refused(&revoked, "a client whose certificate is revoked");
	expect_refused(&server, "a client presenting a server certificate");
	sub_t s;
	cr_assert_neq(tls_sub_try(&d, &s, "", &none), 0,
	    "a subscriber without a certificate got through");

	reply_t r;
	tls_call(&good, "{\"business\":\"shop\",\"customer\":\"c1\",\"type\":"
	                "\"page_view\"}",
	    &r);
	assert_ok(&r);
	reply_free(&r);
	sub_t dec;
	char  topic[128];
	tls_sub_open(&d, &dec, "choreo/shop/decision", &good);
	tls_push_json(&d, "{\"business\":\"shop\",\"customer\":\"c2\",\"type\":"
	                  "\"page_view\"}",
	    &good);
	cr_assert(sub_recv(&dec, 5000, topic, sizeof(topic), &r),
	    "a decision on pub within 5 s");
	cr_assert_str_eq(str_at(&r, "customer"), "c2");
	reply_free(&r);
	sub_close(&dec);
}

Test(tls, plain_tcp_does_not_get_in)
{
	start(E2E_TLS_ALL, NULL, NULL);
	// nng's plain tcp:// transport, on each TLS port
	const int ports[] = { d.rep_port, d.pull_port, d.pub_port };
	for (int i = 0; i < 3; i++) {
		nng_socket s;
		char       url[64];
		cr_assert_eq(i == 0 ? nng_req0_open(&s)
		                    : i == 1 ? nng_push0_open(&s)
		                             : nng_sub0_open(&s),
		    0);
		snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", ports[i]);
		int rv = nng_dial(s, url, NULL, 0);
		nng_close(s);
		cr_assert_neq(rv, 0, "a plain nng client connected to %s", url);
	}
	// the SP handshake and a whole request, written at once
	req_t q;
	req_json(&q, "{\"business\":\"shop\",\"customer\":\"plain\","
	             "\"type\":\"page_view\"}");
	unsigned char msg[512] = { 0, 'S', 'P', 0, 0, 0x30, 0, 0 };
	size_t        n        = q.buf.size + 4;
	for (int i = 0; i < 8; i++) {
		msg[8 + i] = (unsigned char) ((uint64_t) n >> (56 - 8 * i));
	}
	memcpy(msg + 16, "\x80\x00\x00\x01", 4);
	memcpy(msg + 20, q.buf.data, q.buf.size);
	char buf[4096];
	bool closed;
	size_t got = raw_talk(d.rep_port, msg, 20 + q.buf.size, buf,
	    sizeof(buf), 5000, &closed);
	req_free(&q);
	cr_assert(closed, "the daemon should close a connection that does not "
	                  "speak TLS");
	cr_assert(got < 4 || memcmp(buf, "\0SP\0", 4) != 0,
	    "the daemon answered the SP handshake on a TLS port");
	// plain HTTP on the https port
	const char get[] = "GET /healthz HTTP/1.0\r\n\r\n";
	got = raw_talk(d.http_port, get, sizeof(get) - 1, buf, sizeof(buf) - 1,
	    5000, &closed);
	buf[got] = '\0';
	cr_assert_null(strstr(buf, "HTTP/"), "plain HTTP on https: '%s'", buf);

	tls_id_t id = { t.ca, NULL, NULL };
	expect_not_found(&id, "plain");
}

Test(tls, max_message_holds_on_tls_listeners)
{
	start(E2E_TLS_REP, NULL, "--max-message 4096");
	tls_id_t id = { t.ca, NULL, NULL };
	char     big[8192 + 256], filler[8193];
	memset(filler, 'x', 8192);
	filler[8192] = '\0';
	snprintf(big, sizeof(big), "{\"business\":\"shop\",\"customer\":"
	                           "\"big\",\"type\":\"page_view\",\"data\":"
	                           "{\"note\":\"%s\"}}",
	    filler);
	req_t q;
	req_json(&q, big);
	cr_assert_gt(q.buf.size, 4096u);
	client_t c;
	reply_t  r;
	tls_client_open(&d, &c, &id);
	nng_socket_set_ms(c.s, NNG_OPT_RECVTIMEO, 2000);
	int rv = client_try(&c, q.buf.data, q.buf.size, &r);
	if (rv == 0) {
		reply_free(&r);
	}
	client_close(&c);
	req_free(&q);
	cr_assert_neq(rv, 0, "a message over --max-message got a reply over "
	                     "TLS");
	// the daemon serves the next client, and applied nothing
	tls_call(&id, "{\"business\":\"shop\",\"customer\":\"small\",\"type\":"
	              "\"page_view\"}",
	    &r);
	assert_ok(&r);
	reply_free(&r);
	expect_not_found(&id, "big");
}

/* }====================================================== */

/*
** {======================================================
** The command line
** =======================================================
*/

Test(tls, the_cli_verifies_the_daemon)
{
	start(E2E_TLS_REP, t.ca, NULL);
	char url[128], args[1024], out[4096];
	tls_dial_url(d.rep, url, sizeof(url));
	const char *mine = "--tls-cert %s --tls-key %s";
	char        cert[400];
	snprintf(cert, sizeof(cert), mine, t.client_cert, t.client_key);

	snprintf(args, sizeof(args), "ping --url %s --tls-ca %s %s", url, t.ca,
	    cert);
	cr_assert_eq(run_cli_all(args, out, sizeof(out)), 0, "%s", out);
	cr_assert_not_null(strstr(out, "\"ok\":true"), "%s", out);
	snprintf(args, sizeof(args),
	    "send --url %s --tls-ca %s %s '{\"business\":\"shop\",\"customer\":"
	    "\"cli\",\"type\":\"page_view\"}'",
	    url, t.ca, cert);
	cr_assert_eq(run_cli_all(args, out, sizeof(out)), 0, "%s", out);

	// refusals: exit 2, a message that says why, nothing sent
	struct {
		const char *args, *says;
	} bad[] = {
		{ "--tls-ca %s %s", "does not verify" },          // other CA
		{ "--tls-ca %s", "client certificate" },          // no cert
		{ "", "needs --tls-ca" },                         // no CA
		{ "--tls-ca %s --tls-cert %s", "go together" },   // no key
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char flags[600];
		if (i == 0) {
			snprintf(flags, sizeof(flags), bad[i].args, t.other_ca, cert);
		} else if (i == 3) {
			snprintf(flags, sizeof(flags), bad[i].args, t.ca,
			    t.client_cert);
		} else {
			snprintf(flags, sizeof(flags), bad[i].args, t.ca);
		}
		snprintf(args, sizeof(args),
		    "send --url %s %s '{\"business\":\"shop\",\"customer\":"
		    "\"refused\",\"type\":\"page_view\"}'",
		    url, flags);
		cr_assert_eq(run_cli_all(args, out, sizeof(out)), 2, "%s: %s",
		    args, out);
		cr_assert_not_null(strstr(out, bad[i].says), "%s: '%s' should "
		                                             "say '%s'",
		    args, out, bad[i].says);
	}
	// an address instead of the certificate's name
	snprintf(args, sizeof(args), "ping --url tls+tcp://127.0.0.1:%d "
	                             "--tls-ca %s %s",
	    d.rep_port, t.ca, cert);
	cr_assert_eq(run_cli_all(args, out, sizeof(out)), 2, "%s", out);
	cr_assert_not_null(strstr(out, "DNS name"), "%s", out);
	// TLS flags with a plain URL
	snprintf(args, sizeof(args), "ping --url tcp://127.0.0.1:%d --tls-ca %s",
	    d.rep_port, t.ca);
	cr_assert_eq(run_cli_all(args, out, sizeof(out)), 2, "%s", out);
	cr_assert_not_null(strstr(out, "are for tls+tcp://"), "%s", out);

	tls_id_t id = { t.ca, t.client_cert, t.client_key };
	expect_not_found(&id, "refused");
	reply_t r;
	tls_call(&id, "{\"op\":\"get\",\"business\":\"shop\",\"customer\":"
	              "\"cli\"}",
	    &r);
	assert_ok(&r);
	reply_free(&r);
}

Test(tls, bad_tls_flags_stop_the_start_and_name_the_file)
{
	char data[128], args[2048], out[4096];
	snprintf(data, sizeof(data), "%s/data", t.dir); // must stay absent
	struct {
		const char *flags, *says;
	} bad[] = {
		{ "--rep tls+tcp://127.0.0.1:7", "--rep tls+tcp://127.0.0.1:7 "
		                                 "needs --tls-cert" },
		{ "--pub tls+tcp://127.0.0.1:7 --tls-cert %s/nope.pem "
		  "--tls-key %s/server.key",
		    "nope.pem: No such file" },
		{ "--pull tls+tcp://127.0.0.1:7 --tls-cert %s/server.key "
		  "--tls-key %s/server.key",
		    "server.key: no certificate can be read" },
		{ "--rep tls+tcp://127.0.0.1:7 --tls-cert %s/server.pem "
		  "--tls-key %s/client.key",
		    "client.key: this key does not belong to the certificate" },
		{ "--http https://127.0.0.1:7 --tls-cert %s/server.pem "
		  "--tls-key %s/server.key --tls-ca %s/ca.cnf",
		    "ca.cnf: not a PEM file" },
		{ "--tls-cert %s/server.pem --tls-key %s/server.key",
		    "no endpoint is tls+tcp://" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char flags[1024];
		snprintf(flags, sizeof(flags), bad[i].flags, t.dir, t.dir, t.dir);
		// the endpoints that are not TLS: ports nothing listens on,
		// should the start go ahead after all
		snprintf(args, sizeof(args),
		    "serve --rules %s --data %s --rep tcp://127.0.0.1:9 --pull "
		    "tcp://127.0.0.1:9 --pub tcp://127.0.0.1:9 --http "
		    "http://127.0.0.1:9 %s",
		    d_rules(), data, flags);
		cr_assert_eq(run_cli_all(args, out, sizeof(out)), 2, "%s: %s",
		    flags, out);
		cr_assert_not_null(strstr(out, bad[i].says), "%s: '%s' should "
		                                             "say '%s'",
		    flags, out, bad[i].says);
		cr_assert_neq(access(data, F_OK), 0, "%s: the data dir was "
		                                     "made",
		    flags);
	}
}

/* }====================================================== */

// End-to-end support: `choreo serve` as a black box over real sockets.
//
// Every helper checks what it does with cr_assert, so a failure reads as
// the step that went wrong ("the daemon did not print its endpoint lines",
// "no reply within 10000 ms"). Every wait has its own deadline: no test
// relies on Criterion's .timeout, which can deadlock on a loaded machine.
#ifndef E2E_SUPPORT_H
#define E2E_SUPPORT_H

#include <msgpack.h>
#include <nng/nng.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define E2E_START_MS 10000 // the endpoint lines must come within this
#define E2E_STOP_MS 15000  // SIGTERM to exit
#define E2E_REQ_MS 10000   // REQ send and receive timeouts

// now_ms: a monotonic clock in ms; sleep_ms sleeps ms, whatever signals
// come meanwhile.
int64_t now_ms(void);
void    sleep_ms(int ms);

/*
** The daemon
*/

typedef struct {
	pid_t pid;          // the process we started (the supervisor)
	pid_t engine;       // its engine child, when it has one (else 0)
	char  data[64];     // the store: a mkdtemp dir
	char  rules[512];   // the rules folder
	char  rep[64], pull[64], pub[64], http[64];
	int   rep_port, pull_port, pub_port, http_port;
	char  log[96];      // the daemon's stderr (data dir + ".log")
	char  extra[512];   // extra flags for serve, separated by spaces
	unsigned tls;       // E2E_TLS_* bits: which endpoints use TLS
} daemon_t;

// The endpoints d->tls puts on TLS: tls+tcp://127.0.0.1:PORT (https://
// for http), or for E2E_WSS_REP the rep endpoint on wss://localhost:PORT/
// (a ws listener wants the Host header to match its own host). The flags
// for the certificate go in d->extra.
#define E2E_TLS_REP  1u
#define E2E_TLS_PULL 2u
#define E2E_TLS_PUB  4u
#define E2E_TLS_HTTP 8u
#define E2E_TLS_ALL  15u
#define E2E_WSS_REP  16u

// d_start starts `$CHOREO_BIN serve` on four free ports with a fresh data
// dir (or the one already in d->data when keep_data) and waits, at most
// E2E_START_MS, for the four endpoint lines on its standard output.
void d_start(daemon_t *d, const char *rules, bool keep_data);
// d_restart starts it again on the same data dir (new ports).
void d_restart(daemon_t *d);
// d_rules is $CHOREO_E2E_RULES.
const char *d_rules(void);
// d_stop sends SIGTERM and asserts the daemon exits with status 0.
void d_stop(daemon_t *d);
// d_kill9 kills the daemon with SIGKILL and asserts that its engine child
// dies with it (so nothing keeps the store or the ports).
void d_kill9(daemon_t *d);
// d_kill_engine sends sig to the engine child alone (as an operator's kill
// or the OOM killer would), waits for the supervisor to start a new one and
// for it to answer ping, and sets d->engine to it. Asserts it did, within
// 10 s.
void d_kill_engine(daemon_t *d, int sig);
// d_cleanup kills whatever still runs and removes the data dir and log: for
// a suite's .fini, so that a failed test leaves nothing behind.
void d_cleanup(daemon_t *d);
// d_log_tail: the end of the daemon's log, for failure messages.
const char *d_log_tail(const daemon_t *d);
// port_is_free: nothing listens on 127.0.0.1:port any more.
bool port_is_free(int port);

// A rules folder made for one test (a temp dir), with files written into
// it (file may be "tests/10.lua"); written then renamed, as editors do.
void rules_dir(char *out, size_t len);
void rules_write(const char *dir, const char *business, const char *file,
    const char *text);
// rules_remove removes a folder rules_dir made, with all it holds.
void rules_remove(const char *dir);

/*
** Requests, built with msgpack_packer
*/

typedef struct {
	msgpack_sbuffer buf;
	msgpack_packer  pk;
} req_t;

void req_init(req_t *r, int nfields); // a map of nfields pairs follows
void req_key(req_t *r, const char *k); // then pack the value on r->pk
void req_str(req_t *r, const char *k, const char *v);
void req_strn(req_t *r, const char *k, const char *v, size_t n);
void req_int(req_t *r, const char *k, int64_t v);
void req_bool(req_t *r, const char *k, bool v);
void req_free(req_t *r);
// req_json packs a JSON text (the test's own converter, via jansson):
// integers stay integers, reals are float64, objects are maps.
void req_json(req_t *r, const char *json);

/*
** Replies
*/

typedef struct {
	msgpack_unpacked up;
	void            *raw;
	size_t           len;
} reply_t;

// A REQ client: nng req0 dialled to the rep endpoint, with E2E_REQ_MS send
// and receive timeouts.
typedef struct {
	nng_socket s;
	bool       open;
} client_t;

void client_open(daemon_t *d, client_t *c);
// client_call sends bytes and asserts that a msgpack map comes back.
void client_call(client_t *c, const void *buf, size_t len, reply_t *out);
// client_try: as client_call, but returns the nng error instead of
// asserting (0: a reply, decoded; anything else: no reply).
int  client_try(client_t *c, const void *buf, size_t len, reply_t *out);
void client_close(client_t *c);
// close_bounded closes any nng socket, giving up after 5 s: nng 1.5.2's
// nng_close can hang when it races a connection going away (nng#1543).
void close_bounded(nng_socket s);

// One request on a fresh connection.
void call_raw(daemon_t *d, const void *buf, size_t len, reply_t *out);
void call(daemon_t *d, req_t *r, reply_t *out);
void call_json(daemon_t *d, const char *json, reply_t *out);
void reply_free(reply_t *r);

// Accessors by dotted path ("error.code", "actions.0.name"): a number is
// an array index. at returns NULL when the path is absent.
const msgpack_object *at(const msgpack_object *o, const char *path);
const msgpack_object *rat(const reply_t *r, const char *path);
bool        has(const reply_t *r, const char *path); // present, not nil
const char *str_at(const reply_t *r, const char *path); // NULL if absent
int64_t     int_at(const reply_t *r, const char *path); // asserts an int
double      num_at(const reply_t *r, const char *path); // int or float
bool        bool_at(const reply_t *r, const char *path); // false if absent
uint32_t    len_at(const reply_t *r, const char *path); // array/map size
bool        ok(const reply_t *r);
const char *code(const reply_t *r);  // error.code, or "(none)"
const char *emsg(const reply_t *r);  // error.message, or ""
// dump: the reply as text, for failure messages (a static buffer).
const char *dump(const reply_t *r);
// utf8_strict: buf[0..n) is well-formed UTF-8. Every reply and pub message
// the helpers decode is held to it, string by string.
bool utf8_strict(const void *buf, size_t n);

// The two checks most tests start with.
#define assert_ok(r) \
	cr_assert(ok(r), "expected ok=true, got %s", dump(r))
#define assert_code(r, c) \
	cr_assert_str_eq(code(r), (c), "expected error %s, got %s", (c), \
	    dump(r))

/*
** REQ over a plain TCP socket (the SP protocol's TCP mapping), for what an
** nng client hides: seeing the daemon drop a connection, or stopping at
** once when it dies. Each side sends "\0SP\0", its protocol (REQ 0x30,
** REP 0x31) and two zero bytes; then each message is a 64-bit big-endian
** length and the payload: a 4-byte request id (top bit set), then the
** body; the reply carries the same id. These return errors instead of
** asserting, so worker threads may use them (no cr_assert off the main
** thread).
*/

typedef struct {
	int      fd;
	uint32_t id; // the last request id sent
} sp_t;

// sp_connect connects to 127.0.0.1:port and does the handshake: 0, or an
// errno value (EPROTO for a bad handshake).
int sp_connect(sp_t *c, int port);
// sp_send sends one request: 0 or an errno value.
int sp_send(sp_t *c, const void *body, size_t len);
// sp_recv waits up to ms for the reply to the last request: 0 with the
// body (malloc'd) in *body, *blen; ETIMEDOUT; EPIPE when the daemon closed
// the connection; EPROTO for a malformed frame or a wrong id.
int  sp_recv(sp_t *c, int ms, char **body, size_t *blen);
void sp_close(sp_t *c);
// sp_call: connect, send, receive, decode — asserting each step.
void sp_call(daemon_t *d, const void *buf, size_t len, reply_t *out);

/*
** PUSH, PUB/SUB, HTTP, CLI
*/

typedef struct {
	nng_socket s;
	bool       open;
} sub_t;

// sub_open dials the pub endpoint, subscribed to the topic prefix.
void sub_open(daemon_t *d, sub_t *s, const char *prefix);
// sub_recv waits up to ms for a message, asserts it is "topic \0 msgpack"
// and splits it. false when nothing came in time.
bool sub_recv(sub_t *s, int ms, char *topic, size_t tlen, reply_t *body);
void sub_close(sub_t *s);

// push sends bytes (or a JSON request) over PUSH to the pull endpoint.
void push_raw(daemon_t *d, const void *buf, size_t len);
void push_json(daemon_t *d, const char *json);

// http_get sends "GET path HTTP/1.0" over a plain TCP socket and returns
// the status; the body (after the blank line) goes into body.
int http_get(daemon_t *d, const char *path, char *body, size_t len);

// run_cli runs `$CHOREO_BIN args` (a shell word list) and returns its exit
// status, with its standard output in out.
int run_cli(const char *args, char *out, size_t len);
// run_cli_all: as run_cli, with standard error in out too.
int run_cli_all(const char *args, char *out, size_t len);

/*
** TLS: throwaway certificates made with openssl, and clients that verify
** the daemon by its DNS name (tls+tcp://localhost:PORT: mbed TLS 2.28
** does not verify IP addresses).
*/

typedef struct {
	char dir[64];
	char ca[128];                         // the test CA
	char cert[128], key[128];             // the daemon's: DNS:localhost
	char client_cert[128], client_key[128]; // a client's, from the CA
	char revoked_cert[128], revoked_key[128]; // another, then revoked
	char ca_crl[128];                     // the CA and its CRL
	char other_ca[128];                   // another CA, which signed:
	char other_cert[128], other_key[128]; // a client's
} tls_files_t;

// tls_make makes every file of t in a new temp dir with openssl (about
// 0.15 s): true, or false with openssl's complaint on stderr.
bool tls_make(tls_files_t *t);
void tls_remove(tls_files_t *t);

// What a TLS client presents: the CA to verify the daemon with (NULL: none
// at all, not even TLS — a plain client), its certificate and key.
typedef struct {
	const char *ca, *cert, *key;
} tls_id_t;

// tls_dial_url: the URL a client dials for a daemon's endpoint URL (the
// daemon's 127.0.0.1 becomes localhost).
void tls_dial_url(const char *listen_url, char *out, size_t len);
// tls_client_try: a REQ client dialled (synchronously) to the rep endpoint
// with id; 0, or the nng error of the dial (then c is closed).
int  tls_client_try(daemon_t *d, client_t *c, const tls_id_t *id);
void tls_client_open(daemon_t *d, client_t *c, const tls_id_t *id);
// tls_sub_try: a SUB socket dialled (synchronously) to the pub endpoint
// with id and subscribed to prefix; 0, or the dial's error (s closed).
int  tls_sub_try(daemon_t *d, sub_t *s, const char *prefix,
     const tls_id_t *id);
// tls_sub_open, tls_push_json: sub_open and push_json over TLS.
void tls_sub_open(daemon_t *d, sub_t *s, const char *prefix,
    const tls_id_t *id);
void tls_push_json(daemon_t *d, const char *json, const tls_id_t *id);
// https_get: GET path over https with id; the status (0 when the request
// failed: no TLS, no verification), the body in body.
int https_get(daemon_t *d, const char *path, const tls_id_t *id, char *body,
    size_t len);

#endif

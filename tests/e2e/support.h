// End-to-end support: the daemon as a black box over real nng sockets.
#ifndef E2E_SUPPORT_H
#define E2E_SUPPORT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
	pid_t pid;
	char  data[64];     // the store (a temp dir)
	char  rules[512];   // the rules folder
	char  rep[64], pull[64], pub[64], http[64];
	int   http_port;
	char  log[96];      // the daemon's stderr
	char  extra[256];   // extra flags
} daemon_t;

// d_start starts `choreo serve` on free ports with a fresh data dir (or the
// one already in d->data when keep_data) and waits for its endpoint lines.
void d_start(daemon_t *d, const char *rules, bool keep_data);
// d_stop sends SIGTERM and asserts exit status 0; d_kill9 kills it hard.
void d_stop(daemon_t *d);
void d_kill9(daemon_t *d);
void d_cleanup(daemon_t *d); // removes the data dir

// A rules folder made for one test (a temp dir), with files written into it.
void rules_dir(char *out, size_t len);
void rules_write(const char *dir, const char *business, const char *file,
    const char *text);

// A request built with the msgpack packer.
typedef struct {
	msgpack_sbuffer buf;
	msgpack_packer  pk;
} req_t;

void req_init(req_t *r, int nfields);
void req_str(req_t *r, const char *k, const char *v);
void req_int(req_t *r, const char *k, int64_t v);
void req_bool(req_t *r, const char *k, bool v);
void req_key(req_t *r, const char *k); // then pack the value on r->pk
void req_free(req_t *r);

// A reply, decoded.
typedef struct {
	msgpack_unpacked up;
	void            *raw;
	size_t           len;
} reply_t;

// call sends bytes over REQ and decodes the reply (asserts a reply came).
void call_raw(daemon_t *d, const void *buf, size_t len, reply_t *out);
void call(daemon_t *d, req_t *r, reply_t *out);
// call_json: the request as a JSON text, for brevity.
void call_json(daemon_t *d, const char *json, reply_t *out);
void reply_free(reply_t *r);

// Accessors by dotted path ("error.code", "actions.0.name").
const msgpack_object *at(const msgpack_object *o, const char *path);
const char *str_at(const reply_t *r, const char *path); // static buffer
int64_t     int_at(const reply_t *r, const char *path);
double      num_at(const reply_t *r, const char *path);
bool        bool_at(const reply_t *r, const char *path);
bool        ok(const reply_t *r);
const char *code(const reply_t *r);

// A SUB socket on d's pub endpoint, subscribed to prefix.
typedef struct {
	int sock_id; // nng_socket.id
} sub_t;
void sub_open(daemon_t *d, sub_t *s, const char *prefix);
// sub_recv waits up to ms for a message: topic into topic, body decoded.
bool sub_recv(sub_t *s, int ms, char *topic, size_t tlen, reply_t *body);
void sub_close(sub_t *s);

// push sends one request over PUSH to d's pull endpoint.
void push_json(daemon_t *d, const char *json);

// http_get returns the status code, body into buf.
int http_get(daemon_t *d, const char *path, char *buf, size_t len);

// The client binary, for CLI tests: runs `choreo ARGS` and returns its exit
// status with stdout in out.
int run_cli(const char *args, char *out, size_t len);

#endif

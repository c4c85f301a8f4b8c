// End-to-end support. See support.h.
#include "support.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/req.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/json.h"

static int
free_port(void)
{
	int                s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { 0 };
	socklen_t          l = sizeof(a);
	a.sin_family         = AF_INET;
	a.sin_addr.s_addr    = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(s, (struct sockaddr *) &a, sizeof(a)), 0);
	cr_assert_eq(getsockname(s, (struct sockaddr *) &a, &l), 0);
	int port = ntohs(a.sin_port);
	close(s);
	return (port);
}

static const char *
bin(void)
{
	const char *b = getenv("CHOREO_BIN");
	cr_assert_not_null(b, "CHOREO_BIN is not set");
	return (b);
}

void
d_start(daemon_t *d, const char *rules, bool keep_data)
{
	if (!keep_data) {
		snprintf(d->data, sizeof(d->data), "/tmp/choreo-e2e-XXXXXX");
		cr_assert_not_null(mkdtemp(d->data));
	}
	snprintf(d->rules, sizeof(d->rules), "%s", rules);
	int p[4];
	for (int i = 0; i < 4; i++) {
		p[i] = free_port();
	}
	snprintf(d->rep, sizeof(d->rep), "tcp://127.0.0.1:%d", p[0]);
	snprintf(d->pull, sizeof(d->pull), "tcp://127.0.0.1:%d", p[1]);
	snprintf(d->pub, sizeof(d->pub), "tcp://127.0.0.1:%d", p[2]);
	snprintf(d->http, sizeof(d->http), "http://127.0.0.1:%d", p[3]);
	d->http_port = p[3];
	snprintf(d->log, sizeof(d->log), "%s.log", d->data);
	int out[2];
	cr_assert_eq(pipe(out), 0);
	d->pid = fork();
	cr_assert_neq(d->pid, -1);
	if (d->pid == 0) {
		dup2(out[1], 1);
		int e = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		dup2(e, 2);
		close(out[0]);
		char cmd[2048];
		snprintf(cmd, sizeof(cmd),
		    "exec '%s' serve --rules '%s' --data '%s' --rep %s --pull %s "
		    "--pub %s --http %s %s",
		    bin(), d->rules, d->data, d->rep, d->pull, d->pub, d->http,
		    d->extra);
		execl("/bin/sh", "sh", "-c", cmd, (char *) NULL);
		_exit(127);
	}
	close(out[1]);
	// the four endpoint lines, within 20 s
	char   buf[4096];
	size_t n     = 0;
	int    lines = 0;
	time_t end   = time(NULL) + 20;
	while (lines < 4 && time(NULL) < end) {
		struct pollfd pf = { out[0], POLLIN, 0 };
		if (poll(&pf, 1, 200) <= 0) {
			continue;
		}
		ssize_t r = read(out[0], buf + n, sizeof(buf) - n - 1);
		if (r <= 0) {
			break;
		}
		for (ssize_t i = 0; i < r; i++) {
			lines += buf[n + (size_t) i] == '\n';
		}
		n += (size_t) r;
	}
	buf[n] = '\0';
	close(out[0]);
	cr_assert_eq(lines, 4, "the daemon did not say where it listens: '%s' "
	                       "(log %s)",
	    buf, d->log);
	cr_assert_not_null(strstr(buf, d->rep), "%s", buf);
}

static int
wait_exit(pid_t pid, int ms)
{
	int st;
	for (int waited = 0; waited < ms; waited += 20) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			return (st);
		}
		usleep(20 * 1000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return (-1);
}

void
d_stop(daemon_t *d)
{
	if (d->pid <= 0) {
		return;
	}
	kill(d->pid, SIGTERM);
	int st = wait_exit(d->pid, 15000);
	d->pid = 0;
	cr_assert_neq(st, -1, "the daemon did not stop within 15 s");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
	    "the daemon should exit 0 on SIGTERM (status %d)", st);
}

void
d_kill9(daemon_t *d)
{
	if (d->pid <= 0) {
		return;
	}
	kill(d->pid, SIGKILL);
	int st;
	waitpid(d->pid, &st, 0);
	d->pid = 0;
	usleep(100 * 1000); // the engine child follows its parent
}

void
d_cleanup(daemon_t *d)
{
	if (d->pid > 0) {
		d_kill9(d);
	}
	if (d->data[0] != '\0') {
		char cmd[256];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", d->data, d->log);
		if (system(cmd) != 0) {
			fprintf(stderr, "cannot remove %s\n", d->data);
		}
	}
}

void
rules_dir(char *out, size_t len)
{
	snprintf(out, len, "/tmp/choreo-e2e-rules-XXXXXX");
	cr_assert_not_null(mkdtemp(out));
}

void
rules_write(const char *dir, const char *business, const char *file,
    const char *text)
{
	char p[1024];
	snprintf(p, sizeof(p), "%s/%s", dir, business);
	mkdir(p, 0755);
	const char *slash = strrchr(file, '/');
	if (slash != NULL) { // e.g. tests/10.lua
		snprintf(p, sizeof(p), "%s/%s/%.*s", dir, business,
		    (int) (slash - file), file);
		mkdir(p, 0755);
		file = slash + 1;
	}
	// write, then rename: as an editor that saves by rename would
	char tmp[1100], dst[1100];
	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", p, file);
	snprintf(dst, sizeof(dst), "%s/%s", p, file);
	FILE *f = fopen(tmp, "w");
	cr_assert_not_null(f, "%s: %s", tmp, strerror(errno));
	fputs(text, f);
	fclose(f);
	cr_assert_eq(rename(tmp, dst), 0);
}

void
req_init(req_t *r, int nfields)
{
	msgpack_sbuffer_init(&r->buf);
	msgpack_packer_init(&r->pk, &r->buf, msgpack_sbuffer_write);
	msgpack_pack_map(&r->pk, (size_t) nfields);
}

void
req_key(req_t *r, const char *k)
{
	msgpack_pack_str(&r->pk, strlen(k));
	msgpack_pack_str_body(&r->pk, k, strlen(k));
}

void
req_str(req_t *r, const char *k, const char *v)
{
	req_key(r, k);
	msgpack_pack_str(&r->pk, strlen(v));
	msgpack_pack_str_body(&r->pk, v, strlen(v));
}

void
req_int(req_t *r, const char *k, int64_t v)
{
	req_key(r, k);
	msgpack_pack_int64(&r->pk, v);
}

void
req_bool(req_t *r, const char *k, bool v)
{
	req_key(r, k);
	if (v) {
		msgpack_pack_true(&r->pk);
	} else {
		msgpack_pack_false(&r->pk);
	}
}

void
req_free(req_t *r)
{
	msgpack_sbuffer_destroy(&r->buf);
}

void
call_raw(daemon_t *d, const void *buf, size_t len, reply_t *out)
{
	nng_socket s;
	cr_assert_eq(nng_req0_open(&s), 0);
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 20000);
	nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 20000);
	cr_assert_eq(nng_dial(s, d->rep, NULL, 0), 0, "dial %s", d->rep);
	cr_assert_eq(nng_send(s, (void *) buf, len, 0), 0);
	char  *r;
	size_t rl;
	int    rv = nng_recv(s, &r, &rl, NNG_FLAG_ALLOC);
	cr_assert_eq(rv, 0, "no reply: %s", nng_strerror(rv));
	out->raw = malloc(rl);
	memcpy(out->raw, r, rl);
	out->len = rl;
	nng_free(r, rl);
	nng_close(s);
	size_t off = 0;
	msgpack_unpacked_init(&out->up);
	cr_assert_eq(msgpack_unpack_next(&out->up, out->raw, rl, &off),
	    MSGPACK_UNPACK_SUCCESS, "the reply is not msgpack");
	cr_assert_eq(out->up.data.type, MSGPACK_OBJECT_MAP);
}

void
call(daemon_t *d, req_t *r, reply_t *out)
{
	call_raw(d, r->buf.data, r->buf.size, out);
}

static void
pack_json(const char *json, msgpack_sbuffer *b)
{
	json_error_t e;
	json_t      *j = json_loads(json, 0, &e);
	cr_assert_not_null(j, "bad JSON in the test: %s", e.text);
	msgpack_packer pk;
	msgpack_packer_init(&pk, b, msgpack_sbuffer_write);
	ch_json_to_msgpack(j, &pk);
	json_decref(j);
}

void
call_json(daemon_t *d, const char *json, reply_t *out)
{
	msgpack_sbuffer b;
	msgpack_sbuffer_init(&b);
	pack_json(json, &b);
	call_raw(d, b.data, b.size, out);
	msgpack_sbuffer_destroy(&b);
}

void
reply_free(reply_t *r)
{
	msgpack_unpacked_destroy(&r->up);
	free(r->raw);
	r->raw = NULL;
}

const msgpack_object *
at(const msgpack_object *o, const char *path)
{
	char p[256];
	snprintf(p, sizeof(p), "%s", path);
	char *save;
	for (char *tok = strtok_r(p, ".", &save); tok && o;
	     tok = strtok_r(NULL, ".", &save)) {
		if (o->type == MSGPACK_OBJECT_ARRAY) {
			size_t i = (size_t) atoi(tok);
			o = i < o->via.array.size ? &o->via.array.ptr[i] : NULL;
		} else if (o->type == MSGPACK_OBJECT_MAP) {
			const msgpack_object *found = NULL;
			for (uint32_t i = 0; i < o->via.map.size; i++) {
				const msgpack_object *k = &o->via.map.ptr[i].key;
				if (k->type == MSGPACK_OBJECT_STR &&
				    k->via.str.size == strlen(tok) &&
				    memcmp(k->via.str.ptr, tok, k->via.str.size) ==
				        0) {
					found = &o->via.map.ptr[i].val;
				}
			}
			o = found;
		} else {
			o = NULL;
		}
	}
	return (o);
}

const char *
str_at(const reply_t *r, const char *path)
{
	static _Thread_local char buf[4][1024];
	static _Thread_local int  next;
	const msgpack_object     *o = at(&r->up.data, path);
	if (o == NULL || o->type != MSGPACK_OBJECT_STR) {
		return (NULL);
	}
	char *b = buf[next++ % 4];
	snprintf(b, sizeof(buf[0]), "%.*s", (int) o->via.str.size,
	    o->via.str.ptr);
	return (b);
}

int64_t
int_at(const reply_t *r, const char *path)
{
	const msgpack_object *o = at(&r->up.data, path);
	cr_assert_not_null(o, "no %s in the reply", path);
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
		return ((int64_t) o->via.u64);
	}
	if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		return (o->via.i64);
	}
	cr_assert_fail("%s is not an integer", path);
	return (0);
}

double
num_at(const reply_t *r, const char *path)
{
	const msgpack_object *o = at(&r->up.data, path);
	cr_assert_not_null(o, "no %s in the reply", path);
	if (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32) {
		return (o->via.f64);
	}
	return ((double) int_at(r, path));
}

bool
bool_at(const reply_t *r, const char *path)
{
	const msgpack_object *o = at(&r->up.data, path);
	return (o != NULL && o->type == MSGPACK_OBJECT_BOOLEAN &&
	    o->via.boolean);
}

bool
ok(const reply_t *r)
{
	return (bool_at(r, "ok"));
}

const char *
code(const reply_t *r)
{
	const char *c = str_at(r, "error.code");
	return (c ? c : "(none)");
}

void
sub_open(daemon_t *d, sub_t *s, const char *prefix)
{
	nng_socket sock;
	cr_assert_eq(nng_sub0_open(&sock), 0);
	cr_assert_eq(nng_socket_set(sock, NNG_OPT_SUB_SUBSCRIBE, prefix,
	                 strlen(prefix)),
	    0);
	cr_assert_eq(nng_dial(sock, d->pub, NULL, 0), 0);
	s->sock_id = (int) sock.id;
	usleep(200 * 1000); // let the subscription reach the publisher
}

bool
sub_recv(sub_t *s, int ms, char *topic, size_t tlen, reply_t *body)
{
	nng_socket sock = { (uint32_t) s->sock_id };
	nng_socket_set_ms(sock, NNG_OPT_RECVTIMEO, ms);
	char  *m;
	size_t ml;
	if (nng_recv(sock, &m, &ml, NNG_FLAG_ALLOC) != 0) {
		return (false);
	}
	size_t tl = strnlen(m, ml);
	cr_assert_lt(tl, ml, "a pub message is topic, 0x00, msgpack");
	snprintf(topic, tlen, "%.*s", (int) tl, m);
	body->len = ml - tl - 1;
	body->raw = malloc(body->len);
	memcpy(body->raw, m + tl + 1, body->len);
	nng_free(m, ml);
	size_t off = 0;
	msgpack_unpacked_init(&body->up);
	cr_assert_eq(msgpack_unpack_next(&body->up, body->raw, body->len, &off),
	    MSGPACK_UNPACK_SUCCESS);
	return (true);
}

void
sub_close(sub_t *s)
{
	nng_socket sock = { (uint32_t) s->sock_id };
	nng_close(sock);
}

void
push_json(daemon_t *d, const char *json)
{
	nng_socket s;
	cr_assert_eq(nng_push0_open(&s), 0);
	cr_assert_eq(nng_dial(s, d->pull, NULL, 0), 0);
	msgpack_sbuffer b;
	msgpack_sbuffer_init(&b);
	pack_json(json, &b);
	nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 5000);
	cr_assert_eq(nng_send(s, b.data, b.size, 0), 0);
	msgpack_sbuffer_destroy(&b);
	usleep(100 * 1000); // PUSH has no reply: let it leave before closing
	nng_close(s);
}

int
http_get(daemon_t *d, const char *path, char *buf, size_t len)
{
	int                s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { 0 };
	a.sin_family         = AF_INET;
	a.sin_port           = htons((uint16_t) d->http_port);
	a.sin_addr.s_addr    = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(s, (struct sockaddr *) &a, sizeof(a)), 0);
	char req[256];
	int  n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
	     path);
	cr_assert_eq(write(s, req, (size_t) n), n);
	size_t got = 0;
	ssize_t r;
	while (got < len - 1 && (r = read(s, buf + got, len - 1 - got)) > 0) {
		got += (size_t) r;
	}
	buf[got] = '\0';
	close(s);
	int status = 0;
	sscanf(buf, "HTTP/1.%*d %d", &status);
	return (status);
}

int
run_cli(const char *args, char *out, size_t len)
{
	char cmd[2048];
	snprintf(cmd, sizeof(cmd), "'%s' %s 2>/dev/null", bin(), args);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	size_t n = fread(out, 1, len - 1, p);
	out[n]   = '\0';
	int st   = pclose(p);
	return (WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

// End-to-end support. See support.h.
#include "support.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/http/http.h>
#include <nng/supplemental/tls/tls.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/*
** {======================================================
** Time, ports, files
** =======================================================
*/

int64_t
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

void
sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long) (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

// free_ports binds n sockets to port 0 on 127.0.0.1 at once (so the n
// ports differ), reads the ports and closes them.
static void
free_ports(int *ports, int n)
{
	int fds[8];
	cr_assert_leq(n, 8);
	for (int i = 0; i < n; i++) {
		struct sockaddr_in a = { 0 };
		socklen_t          l = sizeof(a);
		a.sin_family         = AF_INET;
		a.sin_addr.s_addr    = htonl(INADDR_LOOPBACK);
		fds[i]               = socket(AF_INET, SOCK_STREAM, 0);
		cr_assert_geq(fds[i], 0, "socket: %s", strerror(errno));
		cr_assert_eq(bind(fds[i], (struct sockaddr *) &a, sizeof(a)), 0,
		    "bind 127.0.0.1:0: %s", strerror(errno));
		cr_assert_eq(getsockname(fds[i], (struct sockaddr *) &a, &l), 0);
		ports[i] = ntohs(a.sin_port);
	}
	for (int i = 0; i < n; i++) {
		close(fds[i]);
	}
}

bool
port_is_free(int port)
{
	int                s   = socket(AF_INET, SOCK_STREAM, 0);
	int                one = 1;
	struct sockaddr_in a   = { 0 };
	a.sin_family           = AF_INET;
	a.sin_port             = htons((uint16_t) port);
	a.sin_addr.s_addr      = htonl(INADDR_LOOPBACK);
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	bool free = bind(s, (struct sockaddr *) &a, sizeof(a)) == 0 &&
	    listen(s, 1) == 0;
	close(s);
	return (free);
}

static const char *
bin(void)
{
	const char *b = getenv("CHOREO_BIN");
	cr_assert_not_null(b, "CHOREO_BIN is not set (run the e2e tests "
	                      "through ctest)");
	cr_assert_eq(access(b, X_OK), 0, "CHOREO_BIN=%s: %s", b,
	    strerror(errno));
	return (b);
}

const char *
d_rules(void)
{
	const char *r = getenv("CHOREO_E2E_RULES");
	cr_assert_not_null(r, "CHOREO_E2E_RULES is not set");
	return (r);
}

const char *
d_log_tail(const daemon_t *d)
{
	static _Thread_local char buf[2048];
	buf[0]  = '\0';
	FILE *f = fopen(d->log, "r");
	if (f == NULL) {
		return ("(no log)");
	}
	fseek(f, 0, SEEK_END);
	long size = ftell(f);
	fseek(f, size > (long) sizeof(buf) - 1 ? size - (long) sizeof(buf) + 1 : 0,
	    SEEK_SET);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n]   = '\0';
	fclose(f);
	return (buf);
}

/* }====================================================== */

/*
** {======================================================
** The daemon
** =======================================================
*/

// engine_of: the supervisor's one child, the engine (0 when it has none,
// as with --no-supervisor).
static pid_t
engine_of(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int) pid,
	    (int) pid);
	FILE *f = fopen(path, "r");
	int   child = 0;
	if (f != NULL) {
		if (fscanf(f, "%d", &child) != 1) {
			child = 0;
		}
		fclose(f);
	}
	return ((pid_t) child);
}

// wait_pid waits up to ms for pid to end; -1 when it is still running.
// pid must be our child (we are a subreaper, so an orphaned engine is).
static int
wait_pid(pid_t pid, int ms)
{
	int64_t end = now_ms() + ms;
	for (;;) {
		int   st;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			return (st);
		}
		if (r < 0 && errno == ECHILD) {
			// not our child: poll for it to be gone
			if (kill(pid, 0) != 0 && errno == ESRCH) {
				return (0);
			}
		}
		if (now_ms() >= end) {
			return (-1);
		}
		sleep_ms(10);
	}
}

static void
kill_hard(pid_t pid)
{
	if (pid > 0) {
		kill(pid, SIGKILL);
		wait_pid(pid, 5000);
	}
}

// The last resort against a hang (an nng_close that never returns, say): a
// test process still running after E2E_TEST_S seconds exits, and its
// daemons die with it (PR_SET_PDEATHSIG), instead of ctest's 600 s.
#define E2E_TEST_S 90

static void
on_alarm(int sig)
{
	(void) sig;
	static const char m[] = "e2e: this test has run for 90 s: it hangs; "
	                        "stopping it\n";
	if (write(2, m, sizeof(m) - 1) < 0) {
		_exit(98);
	}
	_exit(99);
}

// Every daemon started in this process, cleaned up at exit too: a .fini
// whose own check fails (d_stop's exit status) stops before d_cleanup.
static daemon_t *started[16];

static void
cleanup_all(void)
{
	for (int i = 0; i < 16; i++) {
		if (started[i] != NULL) {
			d_cleanup(started[i]);
		}
	}
}

static void
remember(daemon_t *d)
{
	int free_slot = -1;
	for (int i = 0; i < 16; i++) {
		if (started[i] == d) {
			return;
		}
		if (started[i] == NULL && free_slot < 0) {
			free_slot = i;
		}
	}
	if (free_slot >= 0) {
		started[free_slot] = d;
	}
}

// spawn starts serve on four free ports and reads its standard output
// until the four endpoint lines, the deadline or the end: the number of
// lines read, the text in buf.
static int
spawn(daemon_t *d, char *buf, size_t blen, bool *eofp)
{
	int p[4];
	free_ports(p, 4);
	d->rep_port  = p[0];
	d->pull_port = p[1];
	d->pub_port  = p[2];
	d->http_port = p[3];
#define SCHEME(bit, secure, plain) ((d->tls & (bit)) ? (secure) : (plain))
	snprintf(d->rep, sizeof(d->rep), "%s://127.0.0.1:%d",
	    SCHEME(E2E_TLS_REP, "tls+tcp", "tcp"), p[0]);
	if (d->tls & E2E_WSS_REP) {
		snprintf(d->rep, sizeof(d->rep), "wss://localhost:%d/", p[0]);
	}
	snprintf(d->pull, sizeof(d->pull), "%s://127.0.0.1:%d",
	    SCHEME(E2E_TLS_PULL, "tls+tcp", "tcp"), p[1]);
	snprintf(d->pub, sizeof(d->pub), "%s://127.0.0.1:%d",
	    SCHEME(E2E_TLS_PUB, "tls+tcp", "tcp"), p[2]);
	snprintf(d->http, sizeof(d->http), "%s://127.0.0.1:%d",
	    SCHEME(E2E_TLS_HTTP, "https", "http"), p[3]);
#undef SCHEME

	const char *argv[32];
	int         n = 0;
	argv[n++]     = bin();
	argv[n++]     = "serve";
	argv[n++]     = "--rules";
	argv[n++]     = d->rules;
	argv[n++]     = "--data";
	argv[n++]     = d->data;
	argv[n++]     = "--rep";
	argv[n++]     = d->rep;
	argv[n++]     = "--pull";
	argv[n++]     = d->pull;
	argv[n++]     = "--pub";
	argv[n++]     = d->pub;
	argv[n++]     = "--http";
	argv[n++]     = d->http;
	// the extra flags, split on spaces (a copy: argv points into it)
	static char extra[sizeof(d->extra)];
	snprintf(extra, sizeof(extra), "%s", d->extra);
	char *save;
	for (char *w = strtok_r(extra, " ", &save); w != NULL && n < 31;
	     w = strtok_r(NULL, " ", &save)) {
		argv[n++] = w;
	}
	argv[n] = NULL;

	int out[2];
	cr_assert_eq(pipe2(out, O_CLOEXEC), 0, "pipe: %s", strerror(errno));
	fflush(NULL);
	d->engine = 0;
	d->pid    = fork();
	cr_assert_neq(d->pid, -1, "fork: %s", strerror(errno));
	if (d->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); // if the test process dies
		int in  = open("/dev/null", O_RDONLY);
		int err = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		dup2(in, 0);
		dup2(out[1], 1);
		if (err >= 0) {
			dup2(err, 2);
		}
		execv(argv[0], (char *const *) argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(out[1]);

	// the four endpoint lines, within E2E_START_MS
	size_t  got   = 0;
	int     lines = 0;
	bool    eof   = false;
	int64_t end   = now_ms() + E2E_START_MS;
	while (lines < 4 && !eof && now_ms() < end) {
		struct pollfd pf = { out[0], POLLIN, 0 };
		int           left = (int) (end - now_ms());
		if (poll(&pf, 1, left > 0 ? left : 0) <= 0) {
			continue;
		}
		ssize_t r = read(out[0], buf + got, blen - 1 - got);
		if (r <= 0) {
			eof = r == 0 || errno != EINTR;
			continue;
		}
		for (ssize_t i = 0; i < r; i++) {
			lines += buf[got + (size_t) i] == '\n';
		}
		got += (size_t) r;
	}
	buf[got] = '\0';
	close(out[0]);
	*eofp = eof;
	return (lines);
}

// log_size: where the log ends now (to read what one start wrote).
static long
log_size(const daemon_t *d)
{
	struct stat st;
	return (stat(d->log, &st) == 0 ? (long) st.st_size : 0);
}

// port_taken: the start that wrote the log from offset on failed to
// listen because a port was taken meanwhile (ctest -j runs other tests).
static bool
port_taken(const daemon_t *d, long offset)
{
	char  text[4096];
	FILE *f = fopen(d->log, "r");
	if (f == NULL) {
		return (false);
	}
	fseek(f, offset, SEEK_SET);
	size_t n = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	text[n] = '\0';
	return (strstr(text, "in use") != NULL);
}

void
d_start(daemon_t *d, const char *rules, bool keep_data)
{
	static bool armed;
	if (!armed) {
		armed = true;
		signal(SIGALRM, on_alarm);
		signal(SIGPIPE, SIG_IGN);
		alarm(E2E_TEST_S);
		atexit(cleanup_all);
	}
	remember(d);
	// an engine whose supervisor is killed becomes our child, so that
	// d_kill9 can see it die
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	cr_assert_eq(d->pid, 0, "d_start: this daemon is still running");
	if (!keep_data || d->data[0] == '\0') {
		d_cleanup(d); // a data dir of an earlier start
		snprintf(d->data, sizeof(d->data), "/tmp/choreo-e2e-XXXXXX");
		cr_assert_not_null(mkdtemp(d->data), "mkdtemp: %s",
		    strerror(errno));
	}
	if (rules != d->rules) {
		snprintf(d->rules, sizeof(d->rules), "%s", rules);
	}
	snprintf(d->log, sizeof(d->log), "%s.log", d->data);
	char buf[4096];
	bool eof   = false;
	int  lines = 0;
	for (int attempt = 0; attempt < 3; attempt++) {
		long offset = log_size(d);
		lines       = spawn(d, buf, sizeof(buf), &eof);
		if (lines >= 4 || !eof || !port_taken(d, offset)) {
			break;
		}
		// a port went to someone else between our probe and its bind
		kill_hard(d->pid);
		d->pid = 0;
	}
	if (lines < 4) {
		// it will not serve: reap it, so that no .fini trips on it
		kill_hard(engine_of(d->pid));
		kill_hard(d->pid);
		d->pid = 0;
	}
	cr_assert_geq(lines, 4,
	    "the daemon did not print its 4 endpoint lines within %d ms%s; "
	    "stdout: '%s'; log: %s",
	    E2E_START_MS, eof ? " (it closed stdout: did it exit?)" : "", buf,
	    d_log_tail(d));
	char want[512];
	snprintf(want, sizeof(want), "rep  %s\npull %s\npub  %s\nhttp %s\n",
	    d->rep, d->pull, d->pub, d->http);
	cr_assert_str_eq(buf, want, "stdout should list exactly the four "
	                            "endpoints");
	d->engine = engine_of(d->pid);
}

void
d_kill_engine(daemon_t *d, int sig)
{
	pid_t old = d->engine;
	cr_assert_gt(old, 0, "the daemon has no engine child to kill");
	cr_assert_eq(kill(old, sig), 0, "cannot signal the engine (pid %d)",
	    (int) old);
	int64_t end = now_ms() + 10000;
	pid_t   now = 0;
	while (now_ms() < end) {
		now = engine_of(d->pid);
		if (now > 0 && now != old) {
			break;
		}
		sleep_ms(10);
	}
	cr_assert(now > 0 && now != old,
	    "no new engine within 10 s of signal %d to the old one; log: %s",
	    sig, d_log_tail(d));
	d->engine = now;
	// it serves once it answers
	nng_socket s;
	cr_assert_eq(nng_req0_open(&s), 0);
	nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 500);
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 500);
	nng_dial(s, d->rep, NULL, NNG_FLAG_NONBLOCK);
	static const char ping[] = "\x81\xa2op\xa4ping"; // {op: "ping"}
	bool served = false;
	while (!served && now_ms() < end) {
		nng_msg *m;
		if (nng_send(s, (void *) ping, sizeof(ping) - 1, 0) == 0 &&
		    nng_recvmsg(s, &m, 0) == 0) {
			served = true;
			nng_msg_free(m);
		}
	}
	nng_close(s);
	cr_assert(served, "the new engine did not answer ping within 10 s; "
	                  "log: %s",
	    d_log_tail(d));
}

void
d_restart(daemon_t *d)
{
	d_start(d, d->rules, true);
}

static void
close_push(daemon_t *d);

// stacks_of writes the threads' stacks of a hung daemon into a file that
// outlives the test (when gdb is installed), for the report; its path goes
// to out.
static void
stacks_of(pid_t pid, char *out, size_t len)
{
	snprintf(out, len, "(gdb is not installed)");
	if (access("/usr/bin/gdb", X_OK) != 0) {
		return;
	}
	char path[128], cmd[512];
	snprintf(path, sizeof(path), "/tmp/choreo-e2e-hang-%d.txt", (int) pid);
	snprintf(cmd, sizeof(cmd),
	    "timeout 30 /usr/bin/gdb -p %d -batch -ex 'thread apply all bt' "
	    "> '%s' 2>&1",
	    (int) pid, path);
	if (system(cmd) == 0) {
		snprintf(out, len, "%s", path);
	} else {
		snprintf(out, len, "(gdb could not read pid %d)", (int) pid);
	}
}

void
d_stop(daemon_t *d)
{
	close_push(d);
	if (d->pid <= 0) {
		return;
	}
	pid_t pid = d->pid, engine = d->engine;
	cr_assert_eq(kill(pid, SIGTERM), 0, "kill: %s", strerror(errno));
	int st = wait_pid(pid, E2E_STOP_MS);
	char stacks[160] = "";
	if (st == -1) {
		stacks_of(engine > 0 ? engine : pid, stacks, sizeof(stacks));
		kill_hard(engine);
		kill_hard(pid);
	}
	d->pid    = 0;
	d->engine = 0;
	cr_assert_neq(st, -1, "the daemon did not stop within %d ms of "
	                      "SIGTERM; its stacks: %s; log: %s",
	    E2E_STOP_MS, stacks, d_log_tail(d));
	if (engine > 0) {
		// the supervisor waited for its engine before exiting
		cr_assert_neq(wait_pid(engine, 2000), -1,
		    "the engine outlived the stopped supervisor");
	}
	cr_assert(WIFEXITED(st), "the daemon died of signal %d on SIGTERM; "
	                         "log: %s",
	    WIFSIGNALED(st) ? WTERMSIG(st) : 0, d_log_tail(d));
	cr_assert_eq(WEXITSTATUS(st), 0, "the daemon exited %d on SIGTERM; "
	                                 "log: %s",
	    WEXITSTATUS(st), d_log_tail(d));
}

void
d_kill9(daemon_t *d)
{
	close_push(d);
	if (d->pid <= 0) {
		return;
	}
	pid_t pid = d->pid, engine = d->engine;
	kill(pid, SIGKILL);
	int st     = wait_pid(pid, 5000);
	d->pid     = 0;
	d->engine  = 0;
	cr_assert_neq(st, -1, "the daemon survived SIGKILL");
	if (engine > 0) {
		// the engine dies with its parent (PR_SET_PDEATHSIG)
		int est = wait_pid(engine, 5000);
		if (est == -1) {
			kill_hard(engine);
		}
		cr_assert_neq(est, -1, "the engine (pid %d) outlived its "
		                       "supervisor's kill -9 by 5 s",
		    (int) engine);
	}
}

void
d_cleanup(daemon_t *d)
{
	close_push(d);
	if (d->pid > 0) {
		kill_hard(d->engine);
		kill_hard(d->pid);
		d->pid    = 0;
		d->engine = 0;
	}
	if (d->data[0] != '\0' && getenv("CHOREO_E2E_KEEP") == NULL) {
		char cmd[256];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", d->data, d->log);
		if (system(cmd) != 0) {
			fprintf(stderr, "cannot remove %s\n", d->data);
		}
		d->data[0] = '\0';
	}
}

void
rules_dir(char *out, size_t len)
{
	snprintf(out, len, "/tmp/choreo-e2e-rules-XXXXXX");
	cr_assert_not_null(mkdtemp(out), "mkdtemp: %s", strerror(errno));
}

void
rules_remove(const char *dir)
{
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	cr_assert_eq(system(cmd), 0, "cannot remove %s", dir);
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
	cr_assert_eq(fclose(f), 0, "%s: %s", tmp, strerror(errno));
	cr_assert_eq(rename(tmp, dst), 0, "rename %s: %s", dst,
	    strerror(errno));
}

// nng_close of nng 1.5.2 can hang for good when it races with a
// connection going away (nanomsg/nng#1543, fixed after 1.5.2). A close
// that takes more than 5 s is left to itself, with a warning: the test
// process ends soon anyway. But nng's own exit handler (atexit(nng_fini))
// would close that socket again and hang the end of the process until the
// alarm fails the test: once a close was left, the process ends before
// nng_fini runs (this handler, registered after nng's, runs first). The
// test's result went to Criterion's runner before exit.
typedef struct {
	nng_socket  s;
	atomic_bool done;
} closer_t;

static void *
closer_main(void *arg)
{
	closer_t *c = arg;
	nng_close(c->s);
	atomic_store(&c->done, true);
	return (NULL);
}

static void
skip_nng_fini(void)
{
	_exit(0);
}

void
close_bounded(nng_socket s)
{
	closer_t *c = calloc(1, sizeof(*c)); // leaked if the close hangs
	pthread_t th;
	if (c == NULL) {
		nng_close(s);
		return;
	}
	c->s = s;
	if (pthread_create(&th, NULL, closer_main, c) != 0) {
		nng_close(s);
		free(c);
		return;
	}
	for (int waited = 0; waited < 5000 && !atomic_load(&c->done);
	     waited += 1) {
		sleep_ms(1);
	}
	if (atomic_load(&c->done)) {
		pthread_join(th, NULL);
		free(c);
		return;
	}
	pthread_detach(th);
	cr_log_warn("nng_close has not returned in 5 s (nng 1.5.2's "
	            "close race); going on without it");
	static atomic_bool skipping;
	if (!atomic_exchange(&skipping, true)) {
		atexit(skip_nng_fini);
	}
}

/* }====================================================== */

/*
** {======================================================
** Requests
** =======================================================
*/

void
req_init(req_t *r, int nfields)
{
	msgpack_sbuffer_init(&r->buf);
	msgpack_packer_init(&r->pk, &r->buf, msgpack_sbuffer_write);
	if (nfields >= 0) {
		msgpack_pack_map(&r->pk, (size_t) nfields);
	}
}

void
req_key(req_t *r, const char *k)
{
	msgpack_pack_str(&r->pk, strlen(k));
	msgpack_pack_str_body(&r->pk, k, strlen(k));
}

void
req_strn(req_t *r, const char *k, const char *v, size_t n)
{
	req_key(r, k);
	msgpack_pack_str(&r->pk, n);
	msgpack_pack_str_body(&r->pk, v, n);
}

void
req_str(req_t *r, const char *k, const char *v)
{
	req_strn(r, k, v, strlen(v));
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

static void
pack_json_value(msgpack_packer *pk, json_t *j)
{
	switch (json_typeof(j)) {
	case JSON_OBJECT: {
		const char *k;
		json_t     *v;
		msgpack_pack_map(pk, json_object_size(j));
		json_object_foreach(j, k, v)
		{
			msgpack_pack_str(pk, strlen(k));
			msgpack_pack_str_body(pk, k, strlen(k));
			pack_json_value(pk, v);
		}
		break;
	}
	case JSON_ARRAY: {
		size_t  i;
		json_t *v;
		msgpack_pack_array(pk, json_array_size(j));
		json_array_foreach(j, i, v)
		{
			pack_json_value(pk, v);
		}
		break;
	}
	case JSON_STRING:
		msgpack_pack_str(pk, json_string_length(j));
		msgpack_pack_str_body(pk, json_string_value(j),
		    json_string_length(j));
		break;
	case JSON_INTEGER:
		msgpack_pack_int64(pk, json_integer_value(j));
		break;
	case JSON_REAL:
		msgpack_pack_double(pk, json_real_value(j));
		break;
	case JSON_TRUE:
		msgpack_pack_true(pk);
		break;
	case JSON_FALSE:
		msgpack_pack_false(pk);
		break;
	case JSON_NULL:
		msgpack_pack_nil(pk);
		break;
	}
}

void
req_json(req_t *r, const char *json)
{
	json_error_t e;
	json_t      *j = json_loads(json, JSON_DECODE_ANY, &e);
	cr_assert_not_null(j, "bad JSON in the test (%s): %s", e.text, json);
	req_init(r, -1);
	pack_json_value(&r->pk, j);
	json_decref(j);
}

/* }====================================================== */

/*
** {======================================================
** Replies
** =======================================================
*/

// utf8_strict: the well-formed byte sequences of the Unicode standard
// (chapter 3, table 3-7), written out range by range — on purpose not the
// daemon's own checker, which this one checks.
bool
utf8_strict(const void *buf, size_t n)
{
	static const struct {
		unsigned char first_lo, first_hi, second_lo, second_hi;
		int           len;
	} rows[] = {
		{ 0x00, 0x7f, 0, 0, 1 },       { 0xc2, 0xdf, 0x80, 0xbf, 2 },
		{ 0xe0, 0xe0, 0xa0, 0xbf, 3 }, { 0xe1, 0xec, 0x80, 0xbf, 3 },
		{ 0xed, 0xed, 0x80, 0x9f, 3 }, { 0xee, 0xef, 0x80, 0xbf, 3 },
		{ 0xf0, 0xf0, 0x90, 0xbf, 4 }, { 0xf1, 0xf3, 0x80, 0xbf, 4 },
		{ 0xf4, 0xf4, 0x80, 0x8f, 4 },
	};
	const unsigned char *p = buf;
	size_t               i = 0;
	while (i < n) {
		size_t r;
		for (r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
			if (p[i] >= rows[r].first_lo && p[i] <= rows[r].first_hi) {
				break;
			}
		}
		if (r == sizeof(rows) / sizeof(rows[0]) ||
		    n - i < (size_t) rows[r].len) {
			return (false);
		}
		if (rows[r].len > 1 && (p[i + 1] < rows[r].second_lo ||
		                           p[i + 1] > rows[r].second_hi)) {
			return (false);
		}
		for (int k = 2; k < rows[r].len; k++) {
			if (p[i + k] < 0x80 || p[i + k] > 0xbf) {
				return (false);
			}
		}
		i += (size_t) rows[r].len;
	}
	return (true);
}

// assert_text: every msgpack str in o is valid UTF-8, or a client that
// decodes strings could not read the reply at all.
static void
assert_text(const msgpack_object *o, const reply_t *r)
{
	switch (o->type) {
	case MSGPACK_OBJECT_STR:
		cr_assert(utf8_strict(o->via.str.ptr, o->via.str.size),
		    "a string of the reply is not valid UTF-8: %s", dump(r));
		break;
	case MSGPACK_OBJECT_ARRAY:
		for (uint32_t i = 0; i < o->via.array.size; i++) {
			assert_text(&o->via.array.ptr[i], r);
		}
		break;
	case MSGPACK_OBJECT_MAP:
		for (uint32_t i = 0; i < o->via.map.size; i++) {
			assert_text(&o->via.map.ptr[i].key, r);
			assert_text(&o->via.map.ptr[i].val, r);
		}
		break;
	default:
		break;
	}
}

static void
decode(reply_t *out, const void *buf, size_t len)
{
	out->raw = malloc(len > 0 ? len : 1);
	cr_assert_not_null(out->raw);
	memcpy(out->raw, buf, len);
	out->len   = len;
	size_t off = 0;
	msgpack_unpacked_init(&out->up);
	int rc = msgpack_unpack_next(&out->up, out->raw, len, &off);
	cr_assert_eq(rc, MSGPACK_UNPACK_SUCCESS,
	    "the reply (%zu bytes) is not msgpack (%d)", len, rc);
	cr_assert_eq(off, len, "the reply has %zu bytes after its msgpack "
	                       "value",
	    len - off);
	cr_assert_eq(out->up.data.type, MSGPACK_OBJECT_MAP,
	    "the reply is not a map: %s", dump(out));
	assert_text(&out->up.data, out);
}

void
client_open(daemon_t *d, client_t *c)
{
	int rv;
	cr_assert_eq(rv = nng_req0_open(&c->s), 0, "req0: %s",
	    nng_strerror(rv));
	c->open = true;
	nng_socket_set_ms(c->s, NNG_OPT_SENDTIMEO, E2E_REQ_MS);
	nng_socket_set_ms(c->s, NNG_OPT_RECVTIMEO, E2E_REQ_MS);
	nng_socket_set_size(c->s, NNG_OPT_RECVMAXSZ, 0);
	rv = nng_dial(c->s, d->rep, NULL, 0);
	cr_assert_eq(rv, 0, "dial %s: %s", d->rep, nng_strerror(rv));
}

int
client_try(client_t *c, const void *buf, size_t len, reply_t *out)
{
	int rv = nng_send(c->s, (void *) buf, len, 0);
	if (rv != 0) {
		return (rv);
	}
	char  *r;
	size_t rl;
	if ((rv = nng_recv(c->s, &r, &rl, NNG_FLAG_ALLOC)) != 0) {
		return (rv);
	}
	decode(out, r, rl);
	nng_free(r, rl);
	return (0);
}

void
client_call(client_t *c, const void *buf, size_t len, reply_t *out)
{
	int rv = nng_send(c->s, (void *) buf, len, 0);
	cr_assert_eq(rv, 0, "cannot send a request: %s", nng_strerror(rv));
	char  *r;
	size_t rl;
	rv = nng_recv(c->s, &r, &rl, NNG_FLAG_ALLOC);
	cr_assert_eq(rv, 0, "no reply within %d ms: %s", E2E_REQ_MS,
	    nng_strerror(rv));
	decode(out, r, rl);
	nng_free(r, rl);
}

void
client_close(client_t *c)
{
	if (c->open) {
		c->open = false;
		close_bounded(c->s);
	}
}

void
call_raw(daemon_t *d, const void *buf, size_t len, reply_t *out)
{
	client_t c;
	client_open(d, &c);
	client_call(&c, buf, len, out);
	client_close(&c);
}

void
call(daemon_t *d, req_t *r, reply_t *out)
{
	call_raw(d, r->buf.data, r->buf.size, out);
}

void
call_json(daemon_t *d, const char *json, reply_t *out)
{
	req_t r;
	req_json(&r, json);
	call(d, &r, out);
	req_free(&r);
}

void
reply_free(reply_t *r)
{
	if (r->raw != NULL) {
		msgpack_unpacked_destroy(&r->up);
		free(r->raw);
		r->raw = NULL;
	}
}

const msgpack_object *
at(const msgpack_object *o, const char *path)
{
	char p[256];
	snprintf(p, sizeof(p), "%s", path);
	char *save;
	for (char *tok = strtok_r(p, ".", &save); tok != NULL && o != NULL;
	     tok = strtok_r(NULL, ".", &save)) {
		if (o->type == MSGPACK_OBJECT_ARRAY) {
			char  *end;
			size_t i = (size_t) strtoul(tok, &end, 10);
			o        = *end == '\0' && i < o->via.array.size
			           ? &o->via.array.ptr[i]
			           : NULL;
		} else if (o->type == MSGPACK_OBJECT_MAP) {
			const msgpack_object *found = NULL;
			size_t                tl    = strlen(tok);
			for (uint32_t i = 0; i < o->via.map.size; i++) {
				const msgpack_object *k = &o->via.map.ptr[i].key;
				if (k->type == MSGPACK_OBJECT_STR &&
				    k->via.str.size == tl &&
				    memcmp(k->via.str.ptr, tok, tl) == 0) {
					found = &o->via.map.ptr[i].val;
					break;
				}
			}
			o = found;
		} else {
			o = NULL;
		}
	}
	return (o);
}

const msgpack_object *
rat(const reply_t *r, const char *path)
{
	return (at(&r->up.data, path));
}

bool
has(const reply_t *r, const char *path)
{
	const msgpack_object *o = rat(r, path);
	return (o != NULL && o->type != MSGPACK_OBJECT_NIL);
}

const char *
str_at(const reply_t *r, const char *path)
{
	static _Thread_local char buf[8][4096];
	static _Thread_local int  next;
	const msgpack_object     *o = rat(r, path);
	if (o == NULL || o->type != MSGPACK_OBJECT_STR) {
		return (NULL);
	}
	char *b = buf[next++ % 8];
	snprintf(b, sizeof(buf[0]), "%.*s", (int) o->via.str.size,
	    o->via.str.ptr);
	return (b);
}

int64_t
int_at(const reply_t *r, const char *path)
{
	const msgpack_object *o = rat(r, path);
	cr_assert_not_null(o, "no '%s' in %s", path, dump(r));
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
		return ((int64_t) o->via.u64);
	}
	if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		return (o->via.i64);
	}
	cr_assert_fail("'%s' is not an integer in %s", path, dump(r));
	return (0);
}

double
num_at(const reply_t *r, const char *path)
{
	const msgpack_object *o = rat(r, path);
	cr_assert_not_null(o, "no '%s' in %s", path, dump(r));
	if (o->type == MSGPACK_OBJECT_FLOAT64 ||
	    o->type == MSGPACK_OBJECT_FLOAT32) {
		return (o->via.f64);
	}
	return ((double) int_at(r, path));
}

bool
bool_at(const reply_t *r, const char *path)
{
	const msgpack_object *o = rat(r, path);
	return (o != NULL && o->type == MSGPACK_OBJECT_BOOLEAN &&
	    o->via.boolean);
}

uint32_t
len_at(const reply_t *r, const char *path)
{
	const msgpack_object *o = rat(r, path);
	cr_assert_not_null(o, "no '%s' in %s", path, dump(r));
	if (o->type == MSGPACK_OBJECT_ARRAY) {
		return (o->via.array.size);
	}
	if (o->type == MSGPACK_OBJECT_MAP) {
		return (o->via.map.size);
	}
	cr_assert_fail("'%s' is neither an array nor a map in %s", path,
	    dump(r));
	return (0);
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
	return (c != NULL ? c : "(none)");
}

const char *
emsg(const reply_t *r)
{
	const char *m = str_at(r, "error.message");
	return (m != NULL ? m : "");
}

const char *
dump(const reply_t *r)
{
	static _Thread_local char buf[2][4096];
	static _Thread_local int  next;
	char                     *b = buf[next++ % 2];
	b[0]                        = '\0';
	if (r == NULL || r->raw == NULL) {
		return ("(no reply)");
	}
	msgpack_object_print_buffer(b, sizeof(buf[0]), r->up.data);
	return (b);
}

/* }====================================================== */

/*
** {======================================================
** REQ over plain TCP
** =======================================================
*/

static int
write_all(int fd, const void *buf, size_t len, int flags)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL | flags);
		if (w < 0) {
			if (errno == EINTR) {
				continue;
			}
			return (errno == ECONNRESET ? EPIPE : errno);
		}
		p += w;
		len -= (size_t) w;
	}
	return (0);
}

// read_all reads len bytes by the deadline: 0, ETIMEDOUT, or EPIPE when
// the peer closed (or reset) the connection.
static int
read_all(int fd, void *buf, size_t len, int64_t deadline)
{
	char *p = buf;
	while (len > 0) {
		int left = (int) (deadline - now_ms());
		if (left <= 0) {
			return (ETIMEDOUT);
		}
		struct pollfd pf = { fd, POLLIN, 0 };
		int           n  = poll(&pf, 1, left);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			continue;
		}
		ssize_t r = recv(fd, p, len, 0);
		if (r == 0) {
			return (EPIPE);
		}
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				continue;
			}
			return (EPIPE); // ECONNRESET and friends
		}
		p += r;
		len -= (size_t) r;
	}
	return (0);
}

int
sp_connect(sp_t *c, int port)
{
	static atomic_uint ids = 1;
	c->id                  = atomic_fetch_add(&ids, 1000000) & 0x7fffffff;
	c->fd                  = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		return (errno);
	}
	struct sockaddr_in a = { 0 };
	a.sin_family         = AF_INET;
	a.sin_port           = htons((uint16_t) port);
	a.sin_addr.s_addr    = htonl(INADDR_LOOPBACK);
	if (connect(c->fd, (struct sockaddr *) &a, sizeof(a)) != 0) {
		int e = errno;
		sp_close(c);
		return (e);
	}
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	static const unsigned char hello[8] = { 0, 'S', 'P', 0, 0, 0x30, 0, 0 };
	unsigned char              peer[8];
	int                        rv = write_all(c->fd, hello, 8, 0);
	if (rv == 0) {
		rv = read_all(c->fd, peer, 8, now_ms() + E2E_REQ_MS);
	}
	if (rv == 0 && (memcmp(peer, "\0SP\0", 4) != 0 || peer[4] != 0 ||
	                   peer[5] != 0x31)) {
		rv = EPROTO; // not a REP of the SP protocol
	}
	if (rv != 0) {
		sp_close(c);
	}
	return (rv);
}

int
sp_send(sp_t *c, const void *body, size_t len)
{
	unsigned char h[12];
	uint64_t      n = (uint64_t) len + 4;
	c->id           = (c->id + 1) & 0x7fffffff;
	for (int i = 0; i < 8; i++) {
		h[i] = (unsigned char) (n >> (56 - 8 * i));
	}
	uint32_t id = c->id | 0x80000000u;
	h[8]        = (unsigned char) (id >> 24);
	h[9]        = (unsigned char) (id >> 16);
	h[10]       = (unsigned char) (id >> 8);
	h[11]       = (unsigned char) id;
	// the header goes out with the body (MSG_MORE), not as a packet of
	// its own that Nagle would hold back
	int rv = write_all(c->fd, h, sizeof(h), MSG_MORE);
	return (rv != 0 ? rv : write_all(c->fd, body, len, 0));
}

int
sp_recv(sp_t *c, int ms, char **body, size_t *blen)
{
	int64_t       deadline = now_ms() + ms;
	unsigned char h[12];
	int           rv = read_all(c->fd, h, 8, deadline);
	if (rv != 0) {
		return (rv);
	}
	uint64_t n = 0;
	for (int i = 0; i < 8; i++) {
		n = n << 8 | h[i];
	}
	if (n < 4 || n > (64u << 20)) {
		return (EPROTO);
	}
	if ((rv = read_all(c->fd, h + 8, 4, deadline)) != 0) {
		return (rv);
	}
	uint32_t id = (uint32_t) h[8] << 24 | (uint32_t) h[9] << 16 |
	    (uint32_t) h[10] << 8 | h[11];
	char *b = malloc((size_t) n - 4 + 1);
	if (b == NULL) {
		return (ENOMEM);
	}
	if ((rv = read_all(c->fd, b, (size_t) n - 4, deadline)) != 0) {
		free(b);
		return (rv);
	}
	if (id != (c->id | 0x80000000u)) {
		free(b);
		return (EPROTO);
	}
	*body = b;
	*blen = (size_t) n - 4;
	return (0);
}

void
sp_close(sp_t *c)
{
	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
}

void
sp_call(daemon_t *d, const void *buf, size_t len, reply_t *out)
{
	sp_t c;
	int  rv = sp_connect(&c, d->rep_port);
	cr_assert_eq(rv, 0, "SP connect to %s: %s", d->rep, strerror(rv));
	rv = sp_send(&c, buf, len);
	cr_assert_eq(rv, 0, "SP send: %s", strerror(rv));
	char  *b;
	size_t bl;
	rv = sp_recv(&c, E2E_REQ_MS, &b, &bl);
	sp_close(&c);
	cr_assert_eq(rv, 0, "no SP reply: %s", strerror(rv));
	decode(out, b, bl);
	free(b);
}

/* }====================================================== */

/*
** {======================================================
** PUSH, SUB, HTTP, CLI
** =======================================================
*/

void
sub_open(daemon_t *d, sub_t *s, const char *prefix)
{
	int rv;
	cr_assert_eq(rv = nng_sub0_open(&s->s), 0, "sub0: %s",
	    nng_strerror(rv));
	s->open = true;
	rv      = nng_socket_set(s->s, NNG_OPT_SUB_SUBSCRIBE, prefix,
	         strlen(prefix));
	cr_assert_eq(rv, 0, "subscribe: %s", nng_strerror(rv));
	rv = nng_dial(s->s, d->pub, NULL, 0);
	cr_assert_eq(rv, 0, "dial %s: %s", d->pub, nng_strerror(rv));
	sleep_ms(200); // the publisher's side of the pipe comes up
}

bool
sub_recv(sub_t *s, int ms, char *topic, size_t tlen, reply_t *body)
{
	nng_socket_set_ms(s->s, NNG_OPT_RECVTIMEO, ms);
	char  *m;
	size_t ml;
	if (nng_recv(s->s, &m, &ml, NNG_FLAG_ALLOC) != 0) {
		return (false);
	}
	size_t tl = strnlen(m, ml);
	if (tl >= ml) {
		nng_free(m, ml);
		cr_assert_fail("a pub message must be topic, 0x00, msgpack; "
		               "this one has no 0x00");
	}
	snprintf(topic, tlen, "%.*s", (int) tl, m);
	decode(body, m + tl + 1, ml - tl - 1);
	nng_free(m, ml);
	return (true);
}

void
sub_close(sub_t *s)
{
	if (s->open) {
		s->open = false;
		close_bounded(s->s);
	}
}

static int dial_with(nng_socket s, const char *listen_url, const tls_id_t *id,
    int flags);

// One PUSH socket per process, kept open while its daemon lives: closing a
// PUSH socket right after a send may drop what is still queued.
static nng_socket push_sock;
static bool       push_open;
static char       push_url[64];

static void
close_push(daemon_t *d)
{
	(void) d;
	if (push_open) {
		push_open = false;
		close_bounded(push_sock);
	}
}

static void
push_with(daemon_t *d, const void *buf, size_t len, const tls_id_t *id)
{
	int rv;
	if (push_open && strcmp(push_url, d->pull) != 0) {
		close_push(d);
	}
	if (!push_open) {
		cr_assert_eq(rv = nng_push0_open(&push_sock), 0, "push0: %s",
		    nng_strerror(rv));
		push_open = true;
		snprintf(push_url, sizeof(push_url), "%s", d->pull);
		nng_socket_set_ms(push_sock, NNG_OPT_SENDTIMEO, E2E_REQ_MS);
		rv = dial_with(push_sock, d->pull, id, 0);
		cr_assert_eq(rv, 0, "dial %s: %s", d->pull, nng_strerror(rv));
	}
	rv = nng_send(push_sock, (void *) buf, len, 0);
	cr_assert_eq(rv, 0, "push: %s", nng_strerror(rv));
}

void
push_raw(daemon_t *d, const void *buf, size_t len)
{
	push_with(d, buf, len, NULL);
}

void
push_json(daemon_t *d, const char *json)
{
	req_t r;
	req_json(&r, json);
	push_raw(d, r.buf.data, r.buf.size);
	req_free(&r);
}

int
http_get(daemon_t *d, const char *path, char *body, size_t len)
{
	int                s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { 0 };
	struct timeval     tv = { E2E_REQ_MS / 1000, 0 };
	a.sin_family          = AF_INET;
	a.sin_port            = htons((uint16_t) d->http_port);
	a.sin_addr.s_addr     = htonl(INADDR_LOOPBACK);
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	cr_assert_eq(connect(s, (struct sockaddr *) &a, sizeof(a)), 0,
	    "connect to %s: %s", d->http, strerror(errno));
	char req[512];
	int  n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
	cr_assert_eq(send(s, req, (size_t) n, MSG_NOSIGNAL), n,
	    "http write: %s", strerror(errno));
	// read to the end of the body: Content-Length, or the server closing
	static _Thread_local char resp[256 * 1024];
	size_t                    got = 0;
	long                      clen = -1;
	char                     *hend = NULL;
	for (;;) {
		if (hend != NULL && clen >= 0 &&
		    got >= (size_t) (hend + 4 - resp) + (size_t) clen) {
			break;
		}
		ssize_t r = read(s, resp + got, sizeof(resp) - 1 - got);
		if (r < 0 && errno == EINTR) {
			continue;
		}
		cr_assert_geq(r, 0, "http read %s: %s", path, strerror(errno));
		if (r == 0 || got + (size_t) r >= sizeof(resp) - 1) {
			got += (size_t) r;
			break;
		}
		got += (size_t) r;
		resp[got] = '\0';
		if (hend == NULL && (hend = strstr(resp, "\r\n\r\n")) != NULL) {
			const char *cl = strcasestr(resp, "\r\nContent-Length:");
			if (cl != NULL && cl < hend) {
				clen = strtol(cl + 17, NULL, 10);
			}
		}
	}
	resp[got] = '\0';
	close(s);
	int status = 0;
	cr_assert_eq(sscanf(resp, "HTTP/1.%*d %d", &status), 1,
	    "not an HTTP response: '%.200s'", resp);
	hend = strstr(resp, "\r\n\r\n");
	snprintf(body, len, "%s", hend != NULL ? hend + 4 : "");
	return (status);
}

static int
run_cli_to(const char *args, const char *err, char *out, size_t len)
{
	char cmd[4096];
	// coreutils' timeout: a hung client fails the test instead of
	// hanging it
	snprintf(cmd, sizeof(cmd), "timeout 20 '%s' %s %s", bin(), args, err);
	fflush(NULL);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p, "popen: %s", strerror(errno));
	size_t n = fread(out, 1, len - 1, p);
	out[n]   = '\0';
	int st   = pclose(p);
	return (WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

int
run_cli(const char *args, char *out, size_t len)
{
	return (run_cli_to(args, "2>/dev/null", out, len));
}

int
run_cli_all(const char *args, char *out, size_t len)
{
	return (run_cli_to(args, "2>&1", out, len));
}

/* }====================================================== */

/*
** {======================================================
** TLS
** =======================================================
*/

// The certificates: a CA, the daemon's (DNS:localhost, for servers), two
// clients' from the CA (one then revoked in the CA's CRL), another CA and
// a client of it. P-256 keys: the whole set takes about 0.15 s.
static const char tls_script[] =
    "set -e\n"
    "cd \"$1\"\n"
    "ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'\n"
    "openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 "
    "-subj '/CN=choreo test CA'\n"
    "openssl req -x509 $ec -keyout other-ca.key -out other-ca.pem -days 2 "
    "-subj '/CN=choreo other CA'\n"
    "printf 'subjectAltName=DNS:localhost\\nextendedKeyUsage=serverAuth\\n' "
    "> server.ext\n"
    "printf 'extendedKeyUsage=clientAuth\\n' > client.ext\n"
    "leaf() {\n"
    "  openssl req $ec -keyout $1.key -out $1.csr -subj /CN=$1\n"
    "  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key "
    "-set_serial $4 -days 2 -extfile $3 -out $1.pem\n"
    "}\n"
    "leaf server ca server.ext 1\n"
    "leaf client ca client.ext 2\n"
    "leaf revoked ca client.ext 3\n"
    "leaf other other-ca client.ext 4\n"
    "printf '[ca]\\ndefault_ca=d\\n[d]\\ndatabase=index.txt\\n"
    "crlnumber=crlnumber\\ndefault_md=sha256\\ndefault_crl_days=2\\n' "
    "> ca.cnf\n"
    ": > index.txt\n"
    "echo 01 > crlnumber\n"
    "openssl ca -config ca.cnf -keyfile ca.key -cert ca.pem "
    "-revoke revoked.pem\n"
    "openssl ca -config ca.cnf -keyfile ca.key -cert ca.pem -gencrl "
    "-out crl.pem\n"
    "cat ca.pem crl.pem > ca-crl.pem\n";

static void
tls_paths(tls_files_t *t)
{
#define P(field, name) snprintf(t->field, sizeof(t->field), "%s/%s", t->dir, name)
	P(ca, "ca.pem");
	P(cert, "server.pem");
	P(key, "server.key");
	P(client_cert, "client.pem");
	P(client_key, "client.key");
	P(revoked_cert, "revoked.pem");
	P(revoked_key, "revoked.key");
	P(ca_crl, "ca-crl.pem");
	P(other_ca, "other-ca.pem");
	P(other_cert, "other.pem");
	P(other_key, "other.key");
#undef P
}

bool
tls_make(tls_files_t *t)
{
	snprintf(t->dir, sizeof(t->dir), "/tmp/choreo-e2e-tls-XXXXXX");
	if (mkdtemp(t->dir) == NULL) {
		fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
		t->dir[0] = '\0';
		return (false);
	}
	tls_paths(t);
	char script[128], cmd[512];
	snprintf(script, sizeof(script), "%s/make.sh", t->dir);
	FILE *f = fopen(script, "w");
	if (f == NULL || fputs(tls_script, f) < 0 || fclose(f) != 0) {
		fprintf(stderr, "%s: %s\n", script, strerror(errno));
		return (false);
	}
	snprintf(cmd, sizeof(cmd), "sh '%s' '%s' > '%s/make.log' 2>&1 || "
	                           "{ cat '%s/make.log' >&2; exit 1; }",
	    script, t->dir, t->dir, t->dir);
	fflush(NULL);
	return (system(cmd) == 0);
}

void
tls_remove(tls_files_t *t)
{
	if (t->dir[0] != '\0' && getenv("CHOREO_E2E_KEEP") == NULL) {
		char cmd[128];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->dir);
		if (system(cmd) != 0) {
			fprintf(stderr, "cannot remove %s\n", t->dir);
		}
	}
	t->dir[0] = '\0';
}

void
tls_dial_url(const char *listen_url, char *out, size_t len)
{
	const char *host = strstr(listen_url, "://127.0.0.1:");
	if (host == NULL) {
		snprintf(out, len, "%s", listen_url);
		return;
	}
	snprintf(out, len, "%.*s://localhost:%s", (int) (host - listen_url),
	    listen_url, host + strlen("://127.0.0.1:"));
}

// tls_config_of: a client configuration verifying the daemon by name
// (the dialed URL's host) against id->ca, presenting id's certificate.
static nng_tls_config *
tls_config_of(const tls_id_t *id, const char *host)
{
	nng_tls_config *cfg;
	int             rv;
	cr_assert_eq(rv = nng_tls_config_alloc(&cfg, NNG_TLS_MODE_CLIENT), 0,
	    "tls config: %s", nng_strerror(rv));
	cr_assert_eq(rv = nng_tls_config_ca_file(cfg, id->ca), 0, "%s: %s",
	    id->ca, nng_strerror(rv));
	cr_assert_eq(rv = nng_tls_config_server_name(cfg, host), 0);
	cr_assert_eq(rv = nng_tls_config_auth_mode(cfg,
	                 NNG_TLS_AUTH_MODE_REQUIRED),
	    0);
	if (id->cert != NULL) {
		// cert and key in one PEM text, as nng's file helper wants
		char both[160], cmd[512];
		snprintf(both, sizeof(both), "%s.both", id->cert);
		snprintf(cmd, sizeof(cmd), "cat '%s' '%s' > '%s'", id->cert,
		    id->key, both);
		cr_assert_eq(system(cmd), 0, "%s", cmd);
		cr_assert_eq(rv = nng_tls_config_cert_key_file(cfg, both, NULL),
		    0, "%s: %s", both, nng_strerror(rv));
	}
	return (cfg);
}

// dial_with dials the endpoint listening on listen_url: plainly when id
// is NULL, else with TLS as id says, at the name localhost.
static int
dial_with(nng_socket s, const char *listen_url, const tls_id_t *id,
    int flags)
{
	char url[128];
	if (id == NULL) {
		return (nng_dial(s, listen_url, NULL, flags));
	}
	tls_dial_url(listen_url, url, sizeof(url));
	nng_url *u;
	int      rv = nng_url_parse(&u, url);
	cr_assert_eq(rv, 0, "%s: %s", url, nng_strerror(rv));
	nng_tls_config *cfg = tls_config_of(id, u->u_hostname);
	nng_url_free(u);
	nng_dialer dl;
	if ((rv = nng_dialer_create(&dl, s, url)) == 0 &&
	    (rv = nng_dialer_set_ptr(dl, NNG_OPT_TLS_CONFIG, cfg)) == 0) {
		rv = nng_dialer_start(dl, flags);
	}
	nng_tls_config_free(cfg);
	return (rv);
}

int
tls_client_try(daemon_t *d, client_t *c, const tls_id_t *id)
{
	int rv;
	cr_assert_eq(rv = nng_req0_open(&c->s), 0, "req0: %s",
	    nng_strerror(rv));
	c->open = true;
	nng_socket_set_ms(c->s, NNG_OPT_SENDTIMEO, E2E_REQ_MS);
	nng_socket_set_ms(c->s, NNG_OPT_RECVTIMEO, E2E_REQ_MS);
	if ((rv = dial_with(c->s, d->rep, id, 0)) != 0) {
		client_close(c);
	}
	return (rv);
}

void
tls_client_open(daemon_t *d, client_t *c, const tls_id_t *id)
{
	int rv = tls_client_try(d, c, id);
	cr_assert_eq(rv, 0, "TLS dial of %s (CA %s): %s; log: %s", d->rep,
	    id != NULL ? id->ca : "none", nng_strerror(rv), d_log_tail(d));
}

int
tls_sub_try(daemon_t *d, sub_t *s, const char *prefix, const tls_id_t *id)
{
	int rv;
	cr_assert_eq(rv = nng_sub0_open(&s->s), 0, "sub0: %s",
	    nng_strerror(rv));
	s->open = true;
	rv      = nng_socket_set(s->s, NNG_OPT_SUB_SUBSCRIBE, prefix,
	         strlen(prefix));
	cr_assert_eq(rv, 0, "subscribe: %s", nng_strerror(rv));
	if ((rv = dial_with(s->s, d->pub, id, 0)) != 0) {
		sub_close(s);
		return (rv);
	}
	sleep_ms(200); // the publisher's side of the pipe comes up
	return (0);
}

void
tls_sub_open(daemon_t *d, sub_t *s, const char *prefix, const tls_id_t *id)
{
	int rv = tls_sub_try(d, s, prefix, id);
	cr_assert_eq(rv, 0, "TLS dial %s: %s", d->pub, nng_strerror(rv));
}

void
tls_push_json(daemon_t *d, const char *json, const tls_id_t *id)
{
	req_t r;
	req_json(&r, json);
	push_with(d, r.buf.data, r.buf.size, id);
	req_free(&r);
}

int
https_get(daemon_t *d, const char *path, const tls_id_t *id, char *body,
    size_t len)
{
	char base[128], full[256];
	tls_dial_url(d->http, base, sizeof(base));
	snprintf(full, sizeof(full), "%s%s", base, path);
	nng_url             *u;
	nng_http_client     *hc;
	nng_http_req        *req;
	nng_http_res        *res;
	nng_aio             *aio;
	int                  rv;
	cr_assert_eq(rv = nng_url_parse(&u, full), 0, "%s: %s", full,
	    nng_strerror(rv));
	nng_tls_config *cfg = tls_config_of(id, u->u_hostname);
	cr_assert_eq(nng_http_client_alloc(&hc, u), 0);
	cr_assert_eq(nng_http_client_set_tls(hc, cfg), 0);
	cr_assert_eq(nng_http_req_alloc(&req, u), 0);
	cr_assert_eq(nng_http_res_alloc(&res), 0);
	cr_assert_eq(nng_aio_alloc(&aio, NULL, NULL), 0);
	nng_aio_set_timeout(aio, E2E_REQ_MS);
	nng_http_client_transact(hc, req, res, aio);
	nng_aio_wait(aio);
	int status = 0;
	body[0]    = '\0';
	if ((rv = nng_aio_result(aio)) == 0) {
		void  *data;
		size_t n;
		status = nng_http_res_get_status(res);
		nng_http_res_get_data(res, &data, &n);
		snprintf(body, len, "%.*s", (int) n, (const char *) data);
	}
	nng_aio_free(aio);
	nng_http_res_free(res);
	nng_http_req_free(req);
	nng_http_client_free(hc);
	nng_tls_config_free(cfg);
	nng_url_free(u);
	return (status);
}

/* }====================================================== */

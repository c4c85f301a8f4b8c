// choreo — `choreo serve`. See serve.h.
//
// Start-up order: flags, signals blocked (so only this thread sees them),
// then per shard the store, the rules and the engine thread, then the nng
// endpoints. The main thread then only waits for signals: SIGHUP reloads,
// SIGINT/SIGTERM stop cleanly — no new requests, every queued job run and
// committed, its reply sent, the store closed, exit 0.
#include "serve.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lua/rules.h"
#include "../lua/running.h"
#include "engine.h"
#include "err.h"
#include "log.h"
#include "reload.h"
#include "server.h"
#include "store.h"
#include "tls.h"

typedef struct {
	const char *rules, *data, *rep, *pull, *pub, *http;
	bool        sync_full;
	int         shards;
	size_t      max_size, max_message, pub_queue;
	int         batch_max, queue_cap;
	const char *admin_token;
	bool        supervise;       // fork a supervised engine process
	int         rule_timeout_ms; // the watchdog's hard limit
	ch_tls_files tls;            // for every tls+tcp://, wss://, https://
} serve_opts;

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: choreo serve [options]\n"
	    "\n"
	    "Serves customer events over nng with the business rules in --rules,\n"
	    "keeping journey state in LMDB under --data.\n"
	    "\n"
	    "  --rules DIR         rule folders, one per business (./rules)\n"
	    "  --data DIR          the LMDB store (./data)\n"
	    "  --rep URL           request/reply endpoint (tcp://127.0.0.1:7450)\n"
	    "  --pull URL          events without replies (tcp://127.0.0.1:7451)\n"
	    "  --pub URL           decisions and emits (tcp://127.0.0.1:7452)\n"
	    "  --http URL          /metrics and /healthz (http://127.0.0.1:7453)\n"
	    "  --tls-cert FILE     PEM certificate of every tls+tcp://, wss://\n"
	    "                      and https:// endpoint (needs --tls-key)\n"
	    "  --tls-key FILE      its PEM private key, unencrypted\n"
	    "  --tls-ca FILE       PEM CA: TLS clients must present a\n"
	    "                      certificate it signed\n"
	    "  --sync full|os      full: a reply means the event is on disk;\n"
	    "                      os: committed, not fsynced (full)\n"
	    "  --shards N          engine threads, each with its own store (1)\n"
	    "  --max-size BYTES    the store never grows past this (64G)\n"
	    "  --max-message BYTES larger requests are refused by nng, larger\n"
	    "                      replies by reply_too_large (1M)\n"
	    "  --pub-queue BYTES   how far a subscriber may fall behind before\n"
	    "                      pub drops its oldest messages (32M)\n"
	    "  --batch N           most events per group commit (64)\n"
	    "  --queue N           queued requests per shard before\n"
	    "                      'overloaded' (4096)\n"
	    "  --admin-token T     reload, rollback and forget need this token\n"
	    "  --rule-timeout MS   a rule running longer stops the engine, which\n"
	    "                      restarts with that rule version quarantined\n"
	    "                      (2000)\n"
	    "  --no-supervisor     run the engine in this process (no restart)\n"
	    "\n"
	    "SIGHUP reloads the rules; SIGINT or SIGTERM stop cleanly.\n");
}

// check_tls: the TLS flags and the endpoints agree, and the files are
// good — here, before the supervisor forks, so that a wrong file stops
// the start with a message naming it. -1 when all is well, else 2.
static int
check_tls(const serve_opts *o)
{
	const struct {
		const char *flag, *url;
	} eps[] = { { "--rep", o->rep }, { "--pull", o->pull },
		{ "--pub", o->pub }, { "--http", o->http } };
	const char *tls_flag = NULL, *tls_url = NULL;
	for (size_t i = 0; i < sizeof(eps) / sizeof(eps[0]); i++) {
		if (tls_url == NULL && ch_tls_url(eps[i].url)) {
			tls_flag = eps[i].flag;
			tls_url  = eps[i].url;
		}
	}
	const ch_tls_files *t = &o->tls;
	if (tls_url != NULL && (t->cert == NULL || t->key == NULL)) {
		fprintf(stderr, "choreo serve: %s %s needs --tls-cert FILE and "
		                "--tls-key FILE\n",
		    tls_flag, tls_url);
		return (2);
	}
	if (tls_url == NULL &&
	    (t->cert != NULL || t->key != NULL || t->ca != NULL)) {
		fprintf(stderr, "choreo serve: %s is given but no endpoint is "
		                "tls+tcp://, wss:// or https:// (nothing would "
		                "be encrypted)\n",
		    t->cert != NULL ? "--tls-cert"
		    : t->key != NULL ? "--tls-key"
		                     : "--tls-ca");
		return (2);
	}
	char why[512];
	if (tls_url != NULL && ch_tls_check(t, why, sizeof(why)) != CH_OK) {
		fprintf(stderr, "choreo serve: %s\n", why);
		return (2);
	}
	return (-1);
}

static int
parse(int argc, char **argv, serve_opts *o)
{
	static const struct option longs[] = {
		{ "rules", required_argument, NULL, 'r' },
		{ "data", required_argument, NULL, 'd' },
		{ "rep", required_argument, NULL, 'R' },
		{ "pull", required_argument, NULL, 'P' },
		{ "pub", required_argument, NULL, 'B' },
		{ "http", required_argument, NULL, 'H' },
		{ "sync", required_argument, NULL, 's' },
		{ "shards", required_argument, NULL, 'n' },
		{ "max-size", required_argument, NULL, 'm' },
		{ "max-message", required_argument, NULL, 'M' },
		{ "pub-queue", required_argument, NULL, 'Q' },
		{ "batch", required_argument, NULL, 'b' },
		{ "queue", required_argument, NULL, 'q' },
		{ "admin-token", required_argument, NULL, 'A' },
		{ "rule-timeout", required_argument, NULL, 'T' },
		{ "no-supervisor", no_argument, NULL, 'S' },
		{ "tls-cert", required_argument, NULL, 'C' },
		{ "tls-key", required_argument, NULL, 'K' },
		{ "tls-ca", required_argument, NULL, 'Y' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
		switch (c) {
		case 'r': o->rules = optarg; break;
		case 'd': o->data = optarg; break;
		case 'R': o->rep = optarg; break;
		case 'P': o->pull = optarg; break;
		case 'B': o->pub = optarg; break;
		case 'H': o->http = optarg; break;
		case 's':
			if (strcmp(optarg, "full") == 0) {
				o->sync_full = true;
			} else if (strcmp(optarg, "os") == 0) {
				o->sync_full = false;
			} else {
				fprintf(stderr, "choreo serve: --sync takes "
				                "'full' or 'os'\n");
				return (2);
			}
			break;
		case 'n':
			o->shards = atoi(optarg);
			if (o->shards < 1 || o->shards > 64) {
				fprintf(stderr, "choreo serve: --shards takes "
				                "1 to 64\n");
				return (2);
			}
			break;
		case 'm':
		case 'M':
		case 'Q': {
			size_t v = ch_parse_size(optarg);
			if (v == 0) {
				fprintf(stderr, "choreo serve: '%s' is not a "
				                "size (e.g. 1048576, 64M, 2G)\n",
				    optarg);
				return (2);
			}
			if (c == 'm') {
				o->max_size = v;
			} else if (c == 'M') {
				o->max_message = v;
			} else {
				o->pub_queue = v;
			}
			break;
		}
		case 'b':
			o->batch_max = atoi(optarg);
			break;
		case 'q':
			o->queue_cap = atoi(optarg);
			break;
		case 'A':
			o->admin_token = optarg;
			break;
		case 'T':
			o->rule_timeout_ms = atoi(optarg);
			if (o->rule_timeout_ms < 100) {
				fprintf(stderr, "choreo serve: --rule-timeout "
				                "takes at least 100 (ms)\n");
				return (2);
			}
			break;
		case 'S':
			o->supervise = false;
			break;
		case 'C': o->tls.cert = optarg; break;
		case 'K': o->tls.key = optarg; break;
		case 'Y': o->tls.ca = optarg; break;
		case 'h':
			usage(stdout);
			return (0);
		default:
			usage(stderr);
			return (2);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "choreo serve: unexpected argument '%s'\n",
		    argv[optind]);
		return (2);
	}
	return (check_tls(o));
}

/*
** {======================================================
** Crash-only: the supervisor, the watchdog, the quarantine
** =======================================================
*/

static int64_t
mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

static int64_t
wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ((int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

// The quarantined versions, fixed at start-up: what the store holds plus
// what the supervisor wrote after the last crash.
typedef struct {
	char business[65], version[17];
} qentry;

static qentry *quarantine;
static int     nquarantine;

static bool
is_quarantined(void *arg, const char *business, const char *version)
{
	(void) arg;
	for (int i = 0; i < nquarantine; i++) {
		if (strcmp(quarantine[i].business, business) == 0 &&
		    strcmp(quarantine[i].version, version) == 0) {
			return (true);
		}
	}
	return (false);
}

static void
quarantine_add(const char *business, const char *version)
{
	if (is_quarantined(NULL, business, version)) {
		return;
	}
	qentry *q = realloc(quarantine, sizeof(qentry) * (size_t) (nquarantine + 1));
	if (q == NULL) {
		return;
	}
	quarantine = q;
	snprintf(q[nquarantine].business, sizeof(q->business), "%s", business);
	snprintf(q[nquarantine].version, sizeof(q->version), "%s", version);
	nquarantine++;
}

// quarantine_load moves the supervisor's notes (data/quarantine.log: one
// "business TAB version TAB event-type TAB at" line per crash) into every
// shard's store, then reads the quarantined versions of the first store.
static void
quarantine_load(const char *data, ch_store **stores, int shards)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/quarantine.log", data);
	FILE *f = fopen(path, "r");
	char  line[512];
	while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
		char    biz[65], ver[17], type[65];
		long long at;
		if (sscanf(line, "%64[^\t]\t%16[^\t]\t%64[^\t]\t%lld", biz, ver,
		        type, &at) != 4) {
			continue;
		}
		for (int i = 0; i < shards; i++) {
			ch_rules_quarantine(stores[i], biz, ver, type, at);
		}
		ch_log_warn("serve: version %s of '%s' is quarantined: it "
		            "stopped the engine on a '%s' event",
		    ver, biz, type);
	}
	if (f != NULL) {
		fclose(f);
		unlink(path);
	}
	// every quarantine record of the store
	MDB_txn    *txn;
	MDB_cursor *c;
	if (mdb_txn_begin(ch_store_env(stores[0]), NULL, MDB_RDONLY, &txn) != 0) {
		return;
	}
	if (mdb_cursor_open(txn, ch_store_dbi(stores[0], CH_DB_META), &c) == 0) {
		MDB_val k = { 11, "quarantine" }, v; // with its \0
		int     rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
		while (rc == 0 && k.mv_size > 11 &&
		    memcmp(k.mv_data, "quarantine", 11) == 0) {
			const char *biz = (const char *) k.mv_data + 11;
			size_t      bl  = strnlen(biz, k.mv_size - 11);
			if (11 + bl + 1 < k.mv_size) {
				char b[65], ver[17];
				snprintf(b, sizeof(b), "%.*s", (int) bl, biz);
				snprintf(ver, sizeof(ver), "%.*s",
				    (int) (k.mv_size - 11 - bl - 1),
				    biz + bl + 1);
				quarantine_add(b, ver);
			}
			rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
		}
		mdb_cursor_close(c);
	}
	mdb_txn_abort(txn);
}

typedef struct {
	int             timeout_ms;
	pthread_mutex_t mu;
	pthread_cond_t  cv;
	bool            stop;
} watchdog;

// The watchdog: a rule that runs past the hard limit is stuck where the
// budget cannot reach (inside C, or a Lua bug). Abort; the supervisor
// restarts the engine with that version quarantined.
static void *
watchdog_main(void *arg)
{
	watchdog *w = arg;
	pthread_setname_np(pthread_self(), "choreo:watch");
	pthread_mutex_lock(&w->mu);
	while (!w->stop) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&w->cv, &w->mu, &ts);
		int64_t now = mono_ms();
		for (int i = 0; i < CH_RUNNING_SLOTS; i++) {
			int64_t since = atomic_load(&ch_running_slots[i].since);
			if (since != 0 && now - since > w->timeout_ms) {
				ch_log_error("watchdog: a rule of '%s' (version %s, "
				             "event '%s') has run %lld ms: stopping "
				             "the engine",
				    ch_running_slots[i].business,
				    ch_running_slots[i].version,
				    ch_running_slots[i].type,
				    (long long) (now - since));
				ch_running_convict(i, CH_CAUGHT_WATCHDOG, SIGABRT);
				abort();
			}
		}
	}
	pthread_mutex_unlock(&w->mu);
	return (NULL);
}

// convicted reads the verdict the dead engine left (running.h) and sets
// aside the rule version it names: a line in data/quarantine.log, which the
// next engine moves into its store. Without a verdict — kill -9 from an
// operator, the OOM killer, a fault outside any rule — nothing is
// quarantined: the same versions serve again.
static void
convicted(const char *data, int sig)
{
	int slot = atomic_load(&ch_running_verdict->slot);
	if (slot < 0 || slot >= CH_RUNNING_SLOTS) {
		ch_log_error("serve: the engine died (signal %d, %s) outside any "
		             "rule: nothing is quarantined; restarting",
		    sig, strsignal(sig));
		return;
	}
	ch_running *r = &ch_running_slots[slot];
	char        path[4200];
	snprintf(path, sizeof(path), "%s/quarantine.log", data);
	FILE *f = fopen(path, "a");
	if (f != NULL) {
		fprintf(f, "%s\t%s\t%s\t%lld\n", r->business, r->version,
		    r->type, (long long) wall_ms());
		fclose(f);
	}
	if (atomic_load(&ch_running_verdict->caught) == CH_CAUGHT_WATCHDOG) {
		ch_log_error("serve: the watchdog stopped a rule of '%s' (version "
		             "%s, event '%s') that overran --rule-timeout: that "
		             "version is quarantined; restarting",
		    r->business, r->version, r->type);
	} else {
		int fsig = atomic_load(&ch_running_verdict->signo);
		ch_log_error("serve: the engine crashed (signal %d, %s) inside a "
		             "rule of '%s' (version %s, event '%s'): that version "
		             "is quarantined; restarting",
		    fsig, strsignal(fsig), r->business, r->version, r->type);
	}
}

// supervise runs the engine in a child process and restarts it whenever it
// dies of a signal, quarantining the rule version the evidence convicts
// (convicted, above). To an
// operator the pair is one process: signals are passed on, the child dies
// with the parent (PR_SET_PDEATHSIG), and the parent exits with the
// child's status once a stop was asked for.
static int serve(serve_opts *op, const char *version);

static int
supervise(serve_opts *o, const char *version)
{
	void *map = mmap(NULL, CH_RUNNING_MAP_SIZE, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED) {
		ch_log_error("serve: cannot map the watchdog's memory: %s",
		    strerror(errno));
		return (1);
	}
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGCHLD);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	pid_t   parent   = getpid();
	int64_t crash_at[3] = { 0, 0, 0 };
	for (int round = 0;; round++) {
		ch_running_share(map);
		pid_t pid = fork();
		if (pid < 0) {
			ch_log_error("serve: fork: %s", strerror(errno));
			return (1);
		}
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != parent) {
				_exit(1); // the parent is already gone
			}
			sigset_t chld;
			sigemptyset(&chld);
			sigaddset(&chld, SIGCHLD);
			sigprocmask(SIG_UNBLOCK, &chld, NULL);
			o->supervise = false;
			_exit(serve(o, version));
		}
		bool stopping = false;
		int  st       = 0;
		for (;;) {
			int sig;
			if (sigwait(&sigs, &sig) != 0) {
				continue;
			}
			if (sig == SIGCHLD) {
				if (waitpid(pid, &st, WNOHANG) == pid) {
					break;
				}
				continue;
			}
			if (sig != SIGHUP) {
				stopping = true;
			}
			kill(pid, sig);
		}
		if (stopping || WIFEXITED(st)) {
			// asked to stop, or it stopped by itself (a start-up
			// error says why in the log): not a crash
			return (WIFEXITED(st) ? WEXITSTATUS(st) : 1);
		}
		// a crash: quarantine what the evidence convicts, restart
		convicted(o->data, WTERMSIG(st));
		// three crashes within ten seconds: slow down a little
		crash_at[round % 3] = mono_ms();
		if (round >= 2 && crash_at[round % 3] - crash_at[(round + 1) % 3] <
		        10000) {
			sleep(1);
		}
	}
}

/* }====================================================== */


// claim_data makes this the one `choreo serve` of its data folder: a lock
// (flock on <data>/serve.lock, with the holder's pid in it) held until the
// process ends — the supervisor's, and its engine's copy across fork.
// LMDB would keep one store consistent under two daemons, but two would
// each run the timers, write the quarantine log and rotate the dedup
// records; the second is refused instead, saying who holds it.
static int
claim_data(const char *data)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/serve.lock", data);
	int fd = -1;
	if (ch_store_mkdirs(data) != 0 ||
	    (fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0) {
		ch_log_error("serve: cannot use the data folder '%s': %s", data,
		    strerror(errno));
		return (-1);
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		char    pid[32] = "";
		ssize_t n       = read(fd, pid, sizeof(pid) - 1);
		pid[n > 0 ? n : 0] = '\0';
		pid[strcspn(pid, "\n")] = '\0';
		ch_log_error("serve: '%s' is already served by another choreo "
		             "serve (pid %s): stop it first, or give this one "
		             "another --data",
		    data, pid[0] ? pid : "?");
		close(fd);
		return (-1);
	}
	char pid[32];
	int  n = snprintf(pid, sizeof(pid), "%d\n", (int) getpid());
	if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t) n, 0) != n) {
		ch_log_warn("serve: cannot write %s: %s", path, strerror(errno));
	}
	return (fd); // never closed: the lock lasts as long as the process
}

int
ch_serve_main(int argc, char **argv, const char *version)
{
	serve_opts o = {
		.rules       = "./rules",
		.data        = "./data",
		.rep         = "tcp://127.0.0.1:7450",
		.pull        = "tcp://127.0.0.1:7451",
		.pub         = "tcp://127.0.0.1:7452",
		.http        = "http://127.0.0.1:7453",
		.sync_full   = true,
		.shards      = 1,
		.max_size    = (size_t) 64 << 30,
		.max_message = 1 << 20,
		.pub_queue   = (size_t) 32 << 20,
		.batch_max   = 64, // small enough that nng keeps the next batch coming meanwhile
		.queue_cap   = 4096,
		.supervise   = true,
		.rule_timeout_ms = 2000,
	};
	int rv = parse(argc, argv, &o);
	if (rv >= 0) {
		return (rv);
	}
	if (claim_data(o.data) < 0) {
		return (1);
	}
	if (o.supervise) {
		return (supervise(&o, version));
	}
	return (serve(&o, version));
}

static int
serve(serve_opts *op, const char *version)
{
	serve_opts o = *op;
	sigset_t   sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	// Large buffers (a big customer's reply, its state) get their own
	// mappings, returned to the system when freed. A fixed threshold also
	// stops glibc from raising it after such a free, which would keep the
	// next ones in the heap for good.
	mallopt(M_MMAP_THRESHOLD, 256 * 1024);

	ch_store  *stores[64]  = { 0 };
	ch_engine *engines[64] = { 0 };
	ch_server   *srv      = NULL;
	ch_reloader *reloader = NULL;
	char       why[512];
	int        status = 1, nbiz = 0;

	watchdog  wd      = { .timeout_ms = o.rule_timeout_ms };
	pthread_t wd_thread;
	bool      wd_on   = false;
	if (ch_running_slots != NULL) {
		pthread_mutex_init(&wd.mu, NULL);
		pthread_cond_init(&wd.cv, NULL);
		wd_on = pthread_create(&wd_thread, NULL, watchdog_main, &wd) == 0;
		ch_running_guard();
		// start-up loads run on this thread
		ch_running_enter(CH_RUNNING_SLOTS - 2);
	}
	for (int i = 0; i < o.shards; i++) {
		char dir[4096];
		if (o.shards == 1) {
			snprintf(dir, sizeof(dir), "%s", o.data);
		} else {
			snprintf(dir, sizeof(dir), "%s/shard-%d", o.data, i);
		}
		ch_store_opts so = { o.sync_full, o.max_size, 0 };
		if (ch_store_open(&stores[i], dir, &so, why, sizeof(why)) !=
		    CH_OK) {
			ch_log_error("serve: %s", why);
			goto out;
		}
		if (i == o.shards - 1) {
			quarantine_load(o.data, stores, o.shards);
		}
	}
	for (int i = 0; i < o.shards; i++) {
		ch_rules     *rules;
		ch_rules_opts ro = CH_RULES_OPTS_DEFAULT;
		ro.quarantined   = is_quarantined;
		if (ch_rules_load(&rules, o.rules, &ro) != CH_OK) {
			ch_log_error("serve: cannot read the rules in '%s'",
			    o.rules);
			goto out;
		}
		ch_rules_apply_quarantine(rules, stores[i], o.rules);
		ch_rules_record_versions(rules, stores[i]);
		nbiz              = ch_rules_count(rules);
		ch_engine_opts eo = {
			.shard           = i,
			.rules_dir       = o.rules,
			.rules           = rules,
			.store           = stores[i],
			.queue_cap       = o.queue_cap,
			.batch_max       = o.batch_max,
			.publish         = ch_server_publish,
			.publish_arg     = NULL,
			.admin_token     = o.admin_token,
			.all_stores      = stores, // filled by the time stats run
			.nstores         = o.shards,
			.max_message     = o.max_message,
		};
		if (ch_engine_new(&engines[i], &eo) != CH_OK) {
			ch_rules_free(rules);
			goto out;
		}
	}
	ch_running_leave(); // the start-up loads are done
	ch_server_opts sopts = {
		.rep_url     = o.rep,
		.pull_url    = o.pull,
		.pub_url     = o.pub,
		.http_url    = o.http,
		.max_message = o.max_message,
		.pub_queue   = o.pub_queue,
		.engines     = engines,
		.stores      = stores,
		.shards      = o.shards,
		.version     = version,
		.admin_token = o.admin_token,
		.tls         = o.tls,
	};
	if (ch_server_start(&srv, &sopts, why, sizeof(why)) != CH_OK) {
		ch_log_error("serve: cannot listen: %s", why);
		goto out;
	}
	for (int i = 0; i < o.shards; i++) {
		ch_engine_set_publish_arg(engines[i], srv);
		if (ch_engine_run(engines[i]) != CH_OK) {
			ch_log_error("serve: cannot start engine thread %d", i);
			goto out;
		}
	}
	ch_reloader_opts ropts = {
		.rules_dir  = o.rules,
		.engines    = engines,
		.nengines   = o.shards,
		.rules_opts = { .instr_budget = CH_DEFAULT_INSTR_BUDGET,
		    .mem_limit = CH_DEFAULT_MEM_LIMIT,
		    .quarantined = is_quarantined },
		.watch      = true,
	};
	if (ch_reloader_start(&reloader, &ropts) != CH_OK) {
		ch_log_error("serve: cannot start the rules watcher");
		goto out;
	}
	ch_server_set_reloader(srv, reloader);
	ch_log_info("serve: choreo %s serving %d business(es) from %s, data "
	            "in %s",
	    version, nbiz, o.rules, o.data);
	// standard output says only where it listens, one line per endpoint
	printf("rep  %s\npull %s\npub  %s\nhttp %s\n", o.rep, o.pull, o.pub,
	    o.http);
	fflush(stdout);

	for (;;) {
		// every few seconds, hand the memory freed meanwhile back to
		// the system (a burst of large replies, subscribers gone)
		struct timespec tick = { 5, 0 };
		int             sig  = sigtimedwait(&sigs, NULL, &tick);
		if (sig < 0) {
			malloc_trim(0);
			continue;
		}
		if (sig == SIGHUP) {
			ch_log_info("serve: SIGHUP: reloading the rules");
			ch_reloader_trigger(reloader);
			continue;
		}
		ch_log_info("serve: %s: stopping", strsignal(sig));
		break;
	}
	ch_server_quiesce(srv);
	ch_server_set_reloader(srv, NULL);
	ch_reloader_stop(reloader); // before the engines it hands rules to
	reloader = NULL;
	for (int i = 0; i < o.shards; i++) {
		ch_engine_stop(engines[i]); // runs and commits what is queued
	}
	ch_server_drain(srv, 2000);
	status = 0;
out:
	ch_reloader_stop(reloader);
	ch_server_close(srv);
	if (wd_on) {
		pthread_mutex_lock(&wd.mu);
		wd.stop = true;
		pthread_cond_signal(&wd.cv);
		pthread_mutex_unlock(&wd.mu);
		pthread_join(wd_thread, NULL);
	}
	bool dead = false;
	for (int i = 0; i < o.shards; i++) {
		ch_engine_free(engines[i]);
		dead |= stores[i] != NULL &&
		    (ch_store_faults(stores[i]) & CH_STORE_DEAD);
		ch_store_close(stores[i]);
	}
	if (dead) {
		// an engine stopped us because LMDB gave up on its store: end
		// by a signal, so that the supervisor starts a new engine
		ch_log_error("serve: a store must be opened again: restarting");
		abort();
	}
	if (status == 0) {
		ch_log_info("serve: stopped");
	}
	return (status);
}


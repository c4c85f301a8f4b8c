// choreo — the reloader: rules go live without a restart. See reload.h.
//
// One thread watches the rules folder with inotify (files created, changed,
// removed or renamed, business folders appearing and disappearing; editors
// that save by rename), waits for ~100 ms of quiet, then compiles a fresh
// rule set per shard — new Lua states, off the engine threads — and hands
// each engine its set, which the engine swaps in between two batches. A
// business whose new files fail keeps its old version (ch_rules_keep_serving)
// and the failure is reported by the `rules` op, in the log and on pub.
#include "reload.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

#include "../lua/atest.h"
#include "../lua/rules.h"
#include "../lua/running.h"
#include "err.h"
#include "log.h"
#include "metrics.h"

#define DEBOUNCE_MS 100
#define MAX_WAITERS 64

typedef struct {
	ch_reload_done done;
	void          *arg;
	char           business[65]; // a rollback: its business and version
	char           version[17];
} waiter;

struct ch_reloader {
	ch_reloader_opts o;
	pthread_t        thread;
	pthread_mutex_t  mu;
	pthread_cond_t   cv;
	bool             stopping;
	bool             wanted;   // a reload was asked for (signal, op)
	waiter           waiters[MAX_WAITERS];
	int              nwaiters;
	int              ifd;      // inotify, or -1
	int              pipe[2];  // wakes poll() when asked
};

static int64_t
mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

// rewatch watches the rules folder, each business folder and its tests/.
// Adding a watch that exists only refreshes it, and the watch of a removed
// folder goes by itself; the descriptor stays, so no change made while a
// reload runs is lost.
static void
rewatch(ch_reloader *r)
{
	const uint32_t mask = IN_CREATE | IN_DELETE | IN_CLOSE_WRITE |
	    IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF |
	    IN_MOVE_SELF | IN_MODIFY;
	if (r->ifd < 0) {
		r->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	}
	if (r->ifd < 0) {
		ch_log_warn("reload: inotify: %s; reload with SIGHUP",
		    strerror(errno));
		return;
	}
	inotify_add_watch(r->ifd, r->o.rules_dir, mask);
	DIR *d = opendir(r->o.rules_dir);
	if (d == NULL) {
		return;
	}
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		char        p[4096];
		struct stat st;
		if (e->d_name[0] == '.') {
			continue;
		}
		snprintf(p, sizeof(p), "%s/%s", r->o.rules_dir, e->d_name);
		if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
			inotify_add_watch(r->ifd, p, mask);
			char t[4200];
			snprintf(t, sizeof(t), "%s/tests", p);
			inotify_add_watch(r->ifd, t, mask); // absent: ignored
		}
	}
	closedir(d);
}

// drain reads every pending inotify event; true when there were some.
static bool
drain(ch_reloader *r)
{
	char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
	bool any = false;
	for (;;) {
		ssize_t n = read(r->ifd, buf, sizeof(buf));
		if (n <= 0) {
			break;
		}
		any = true;
	}
	return (any);
}

static int
reload_now(ch_reloader *r, const char *rb_business, const char *rb_version,
    char *why, size_t whylen)
{
	ch_rules     *fresh[64];
	ch_rules_opts ro = r->o.rules_opts;
	int           n  = r->o.nengines;
	int           ok = 0;
	for (int i = 0; i < n; i++) {
		fresh[i] = NULL;
		if (ch_rules_load(&fresh[i], r->o.rules_dir, &ro) == CH_OK) {
			ok++;
		}
	}
	if (ok != n) {
		ch_log_error("reload: cannot read the rules folder %s; the "
		             "current rules keep serving",
		    r->o.rules_dir);
		for (int i = 0; i < n; i++) {
			ch_rules_free(fresh[i]);
		}
		snprintf(why, whylen, "cannot read the rules folder");
		return (CH_EINTERNAL);
	}
	// the gate: a business whose analyst tests fail does not go live
	for (int k = 0; ch_rules_name(fresh[0], k) != NULL; k++) {
		const char *biz = ch_rules_name(fresh[0], k);
		if (!ch_rules_serving(fresh[0], k)) {
			continue;
		}
		int  passed, failed;
		char first[600];
		FILE *devnull = fopen("/dev/null", "w");
		ch_atest_run(r->o.rules_dir, biz, devnull ? devnull : stderr,
		    &passed, &failed, first, sizeof(first));
		if (devnull != NULL) {
			fclose(devnull);
		}
		if (failed > 0) {
			char msg[700];
			snprintf(msg, sizeof(msg), "%d analyst test(s) failed; "
			                           "first: %s",
			    failed, first);
			for (int i = 0; i < n; i++) {
				ch_rules_fail(fresh[i], biz, msg);
			}
		}
	}
	int rc = CH_OK;
	for (int i = 0; i < n; i++) {
		ch_swap sw = { fresh[i], rb_business, rb_version, CH_OK, "" };
		int     src = ch_engine_swap_rules(r->o.engines[i], &sw);
		if (src != CH_OK && rc == CH_OK) {
			rc = src;
			snprintf(why, whylen, "%s", sw.why);
		}
	}
	CH_COUNT(reloads, 1);
	return (rc);
}

static void *
reloader_main(void *arg)
{
	ch_reloader *r        = arg;
	int64_t      deadline = -1; // a change seen: reload at this time
	pthread_setname_np(pthread_self(), "choreo:reload");
	ch_running_enter(CH_RUNNING_SLOTS - 1);
	for (;;) {
		struct pollfd p[2] = {
			{ r->pipe[0], POLLIN, 0 },
			{ r->ifd, POLLIN, 0 },
		};
		int timeout = -1;
		if (deadline >= 0) {
			int64_t left = deadline - mono_ms();
			timeout      = left > 0 ? (int) left : 0;
		}
		poll(p, r->ifd >= 0 ? 2 : 1, timeout);
		if (p[0].revents & POLLIN) {
			char b[64];
			while (read(r->pipe[0], b, sizeof(b)) > 0) {
			}
		}
		if (r->ifd >= 0 && (p[1].revents & POLLIN) && drain(r)) {
			deadline = mono_ms() + DEBOUNCE_MS; // wait for quiet
		}
		pthread_mutex_lock(&r->mu);
		if (r->stopping) {
			pthread_mutex_unlock(&r->mu);
			break;
		}
		bool wanted = r->wanted;
		r->wanted   = false;
		waiter ws[MAX_WAITERS];
		int    nw   = r->nwaiters;
		memcpy(ws, r->waiters, sizeof(waiter) * (size_t) nw);
		r->nwaiters = 0;
		pthread_mutex_unlock(&r->mu);
		bool due = deadline >= 0 && mono_ms() >= deadline;
		bool plain = due || wanted;
		for (int i = 0; i < nw; i++) {
			plain = plain || ws[i].business[0] == '\0';
		}
		int  rc = CH_OK;
		char why[300] = "";
		if (plain) {
			deadline = -1;
			ch_log_info("reload: %s", due ? "the rules changed"
			                               : "asked for");
			rc = reload_now(r, NULL, NULL, why, sizeof(why));
		}
		for (int i = 0; i < nw; i++) {
			if (ws[i].business[0] == '\0') {
				ws[i].done(ws[i].arg, rc, why);
				continue;
			}
			ch_log_info("reload: rolling %s back to %s",
			    ws[i].business, ws[i].version);
			char rwhy[300] = "";
			int  rrc       = reload_now(r, ws[i].business,
			           ws[i].version, rwhy, sizeof(rwhy));
			if (rrc != CH_OK) {
				ch_log_error("reload: %s stays as it was: "
				             "cannot roll back to %s: %s",
				    ws[i].business, ws[i].version, rwhy);
			} else {
				ch_log_info("reload: %s is at %s again",
				    ws[i].business, ws[i].version);
			}
			ws[i].done(ws[i].arg, rrc, rwhy);
		}
		if ((plain || nw > 0) && r->o.watch) {
			rewatch(r); // folders may have come or gone
		}
	}
	ch_running_leave();
	return (NULL);
}

int
ch_reloader_start(ch_reloader **out, const ch_reloader_opts *o)
{
	ch_reloader *r = calloc(1, sizeof(*r));
	if (r == NULL) {
		return (CH_EINTERNAL);
	}
	r->o   = *o;
	r->ifd = -1;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	if (pipe(r->pipe) != 0) {
		free(r);
		return (CH_EINTERNAL);
	}
	for (int i = 0; i < 2; i++) {
		int fl = O_NONBLOCK;
		fcntl(r->pipe[i], F_SETFL, fl);
	}
	if (o->watch) {
		rewatch(r);
	}
	if (pthread_create(&r->thread, NULL, reloader_main, r) != 0) {
		close(r->pipe[0]);
		close(r->pipe[1]);
		free(r);
		return (CH_EINTERNAL);
	}
	*out = r;
	return (CH_OK);
}

static void
wake(ch_reloader *r)
{
	ssize_t n = write(r->pipe[1], "x", 1);
	(void) n; // a full pipe already means "wake up"
}

void
ch_reloader_trigger(ch_reloader *r)
{
	pthread_mutex_lock(&r->mu);
	r->wanted = true;
	pthread_mutex_unlock(&r->mu);
	wake(r);
}

int
ch_reloader_request(ch_reloader *r, const char *business, const char *version,
    ch_reload_done done, void *arg)
{
	pthread_mutex_lock(&r->mu);
	if (r->nwaiters == MAX_WAITERS || r->stopping) {
		pthread_mutex_unlock(&r->mu);
		return (CH_EOVERLOADED);
	}
	waiter *w = &r->waiters[r->nwaiters++];
	*w        = (waiter) { done, arg, "", "" };
	if (business != NULL) {
		snprintf(w->business, sizeof(w->business), "%s", business);
		snprintf(w->version, sizeof(w->version), "%s", version);
	}
	pthread_mutex_unlock(&r->mu);
	wake(r);
	return (CH_OK);
}

void
ch_reloader_stop(ch_reloader *r)
{
	if (r == NULL) {
		return;
	}
	pthread_mutex_lock(&r->mu);
	r->stopping = true;
	pthread_mutex_unlock(&r->mu);
	wake(r);
	pthread_join(r->thread, NULL);
	// answer whoever still waits: the reload did not happen
	for (int i = 0; i < r->nwaiters; i++) {
		r->waiters[i].done(r->waiters[i].arg, CH_EOVERLOADED,
		    "the server is stopping");
	}
	if (r->ifd >= 0) {
		close(r->ifd);
	}
	close(r->pipe[0]);
	close(r->pipe[1]);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	free(r);
}

// K2: power loss. A kill -9 cannot lose a write the kernel already has, so
// it cannot catch a missing fsync: the shim journals every write of the
// store not yet known durable, and after each crash the test builds what
// the disk would hold had the power gone at that moment (image.c: what was
// synced, and a random subset of the rest, sector by sector), restarts
// choreo on that image and checks it.
//
// One trial: four REQ clients, each with its own customer and an id on
// every event, send events one after the other and count the replies with
// ok=true; the daemon is killed — by SIGKILL at a random moment, or by the
// shim itself right after a random write or before a random sync — its
// power-loss image is built and read in full (store_check), choreo starts
// on it, and each customer's "events" counter must be at least its
// client's acknowledged events (at most one more: the one in flight), and
// the last acknowledged id a duplicate. The store then lives on into the
// next trial, as a machine's disk does after a reboot.
//
// With --sync full there must be no loss and no damaged store. With
// --sync os (MDB_NOSYNC) the same harness must catch a loss or a damaged
// store, or it would prove nothing.
//
// CHOREO_K2_TRIALS (default 20 for full, 10 for os) and CHOREO_K2_SEED
// (default: the clock; printed) size and replay a run; the figures go to
// standard error on a "K2" line.
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fsupport.h"
#include "image.h"

#define NW 4 // clients

static daemon_t    d;
static faults_ctl *ctl;

static void
setup(void)
{
	memset(&d, 0, sizeof(d));
	ctl = NULL;
}

static void
teardown(void)
{
	d_cleanup(&d);
}

TestSuite(power_loss, .init = setup, .fini = teardown);

/*
** {======================================================
** The clients: raw SP over TCP, so nothing resends behind their back and a
** dead daemon is seen at once. No cr_assert on these threads.
** =======================================================
*/

typedef struct {
	int         port, w;
	long        next;    // the number of its next event (ids w<k>-<n>)
	long        acked;   // ok replies this trial
	long        pending; // the event sent without a reply, or -1
	int         refused; // error replies (there should be none)
	atomic_int *acks;    // every client's acks this trial
	atomic_bool *stop;
} client;

static void *
client_main(void *arg)
{
	client *c = arg;
	sp_t    s;
	c->pending = -1;
	if (sp_connect(&s, c->port) != 0) {
		return (NULL);
	}
	while (!atomic_load(c->stop)) {
		char ev[300], cust[16], id[48];
		snprintf(cust, sizeof(cust), "w%d", c->w);
		snprintf(id, sizeof(id), "w%d-%ld", c->w, c->next);
		req_t r;
		req_json(&r, ev_json(ev, sizeof(ev), cust, id));
		c->pending = c->next;
		int rv = sp_send(&s, r.buf.data, r.buf.size);
		req_free(&r);
		char  *b;
		size_t bl;
		if (rv != 0 || sp_recv(&s, E2E_REQ_MS, &b, &bl) != 0) {
			break; // the daemon is gone: not acknowledged
		}
		bool okay = memmem(b, bl, "\xa2ok\xc3", 4) != NULL;
		free(b);
		if (!okay) {
			c->refused++;
			c->pending = -1;
			break;
		}
		c->pending = -1;
		c->acked++;
		c->next++;
		atomic_fetch_add(c->acks, 1);
	}
	sp_close(&s);
	return (NULL);
}

/* }====================================================== */

typedef struct {
	int      trials, killed, self_crashed;
	long     acked, lost, trials_lost, corrupt, caught;
	uint64_t writes, sectors, applied, durable;
} figures;

static int
env_int(const char *name, int dflt)
{
	const char *v = getenv(name);
	return (v != NULL && atoi(v) > 0 ? atoi(v) : dflt);
}

// crash runs the clients until the daemon dies: killed with SIGKILL after
// a random delay, or (self) by the shim at a random op a little ahead.
static void
crash(client *cs, uint64_t *rng, bool self, figures *f)
{
	pthread_t   th[NW];
	atomic_int  acks = 0;
	atomic_bool stop = false;
	for (int i = 0; i < NW; i++) {
		cs[i].port    = d.rep_port;
		cs[i].acked   = 0;
		cs[i].refused = 0;
		cs[i].acks    = &acks;
		cs[i].stop    = &stop;
		cr_assert_eq(pthread_create(&th[i], NULL, client_main, &cs[i]), 0);
	}
	// something acknowledged first, so that the crash lands under load
	for (int i = 0; i < 5000 && atomic_load(&acks) < NW; i++) {
		sleep_ms(1);
	}
	sleep_ms((int) (pl_rand(rng) % 150));
	if (self) {
		uint64_t at = atomic_load(&ctl->ops) + 1 + pl_rand(rng) % 12;
		atomic_store(&ctl->crash_at, at);
		for (int i = 0; i < 3000 && kill(d.pid, 0) == 0; i++) {
			int st;
			if (waitpid(d.pid, &st, WNOHANG) == d.pid) {
				d.pid = 0;
				break;
			}
			sleep_ms(1);
		}
		f->self_crashed += d.pid == 0;
	}
	if (d.pid != 0) {
		f->killed++;
		d_kill9(&d);
	}
	atomic_store(&ctl->crash_at, 0);
	atomic_store(&stop, true);
	for (int i = 0; i < NW; i++) {
		pthread_join(th[i], NULL);
		cr_assert_eq(cs[i].refused, 0, "client %d got an error reply; "
		                               "log: %s",
		    i, d_log_tail(&d));
	}
}

// power_off turns the killed daemon's files into its power-loss image.
static void
power_off(uint64_t *rng, double p, figures *f)
{
	char     why[512];
	pl_stats st;
	cr_assert_eq(pl_image(fd_path(&d, "data.mdb"), fd_path(&d, "journal"),
	                 fd_path(&d, "data.mdb.pl"), p, rng, &st, why,
	                 sizeof(why)),
	    0, "%s", why);
	cr_assert_eq(rename(fd_path(&d, "data.mdb.pl"), fd_path(&d, "data.mdb")),
	    0, "rename: %s", strerror(errno));
	unlink(fd_path(&d, "journal"));
	unlink(fd_path(&d, "lock.mdb")); // a reboot's lock file is stale
	f->writes += st.writes;
	f->sectors += st.sectors;
	f->applied += st.applied;
	f->durable += st.durable;
}

// stored_events: customer c's "events" counter on the restarted daemon, 0
// when it is not found, -1 for any other answer.
static long long
stored_events(const char *c)
{
	char    q[256];
	reply_t r;
	snprintf(q, sizeof(q),
	    "{\"op\":\"get\",\"business\":\"shop\",\"customer\":\"%s\"}", c);
	call_json(&d, q, &r);
	long long n = -1;
	if (ok(&r)) {
		const msgpack_object *o = rat(&r, "customer.counters.events");
		n = o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER
		    ? (long long) o->via.u64
		    : -1;
	} else if (strcmp(code(&r), "not_found") == 0) {
		n = 0;
	}
	reply_free(&r);
	return (n);
}

// known: resending event id says duplicate (it was stored).
static bool
known(const char *c, const char *id)
{
	char    ev[300];
	reply_t r;
	call_json(&d, ev_json(ev, sizeof(ev), c, id), &r);
	bool dup = ok(&r) && bool_at(&r, "duplicate");
	reply_free(&r);
	return (dup);
}

// A check that fails the test when the store must be sound (strict), and
// is otherwise counted as the harness catching a loss.
#define EXPECT(cond, ...)                                                  \
	do {                                                               \
		if (!(cond)) {                                             \
			cr_assert_not(strict, __VA_ARGS__);                \
			bad++;                                             \
		}                                                          \
	} while (0)

// verify checks the restarted daemon against what the clients saw, and
// returns how many acknowledged events are missing (or 1 for any other
// inconsistency). Each client then counts on from what is stored.
static long
verify(client *cs, bool strict)
{
	long bad = 0, lost = 0;
	for (int i = 0; i < NW; i++) {
		client *c = &cs[i];
		char    cust[16], id[48];
		snprintf(cust, sizeof(cust), "w%d", i);
		long long stored = stored_events(cust);
		long long want   = c->next; // acknowledged since the store began
		EXPECT(stored >= 0, "%s: the restarted daemon cannot read it; "
		                    "log: %s",
		    cust, d_log_tail(&d));
		EXPECT(stored < 0 || stored >= want,
		    "%s: %lld events stored, %lld acknowledged: an acknowledged "
		    "event was lost",
		    cust, stored, want);
		EXPECT(stored <= want + (c->pending >= 0),
		    "%s: %lld stored, but only %lld acknowledged and %s in "
		    "flight",
		    cust, stored, want, c->pending >= 0 ? "one" : "none");
		if (stored >= 0 && stored < want) {
			lost += want - stored;
		}
		if (stored >= want && c->next > 0) {
			snprintf(id, sizeof(id), "w%d-%ld", i, c->next - 1);
			EXPECT(known(cust, id), "%s: the last acknowledged event "
			                        "%s is counted, its id unknown",
			    cust, id);
		}
		if (stored == want + 1 && c->pending >= 0) {
			snprintf(id, sizeof(id), "w%d-%ld", i, c->pending);
			EXPECT(known(cust, id), "%s: the event in flight %s is "
			                        "counted, its id unknown",
			    cust, id);
		}
		c->next = stored > 0 ? stored : 0;
	}
	return (lost > 0 ? lost : bad);
}

static void
run(const char *sync, int trials, bool strict, figures *f)
{
	uint64_t seed = (uint64_t) env_int("CHOREO_K2_SEED", 0);
	if (seed == 0) {
		seed = (uint64_t) time(NULL);
	}
	uint64_t rng = seed * 0x9e3779b97f4a7c15ull + 1;
	fprintf(stderr, "K2 --sync %s: %d trials, seed %llu\n", sync, trials,
	    (unsigned long long) seed);
	snprintf(d.extra, sizeof(d.extra), "--no-supervisor --sync %s", sync);
	client cs[NW];
	memset(cs, 0, sizeof(cs));
	bool fresh = true;
	for (int t = 0; t < trials; t++) {
		if (fresh) {
			memset(cs, 0, sizeof(cs));
			for (int i = 0; i < NW; i++) {
				cs[i].w = i;
			}
			// a new store, stopped cleanly once, so that it is on
			// the disk whatever the sync mode
			fd_start(&d, &ctl, false, true);
			d_stop(&d);
			unlink(fd_path(&d, "journal"));
			fd_start(&d, &ctl, true, true);
			alarm((unsigned) (trials - t) * 15 + 60); // the run's own
			fresh = false;                            // deadline
		}
		crash(cs, &rng, t % 2 == 1, f);
		// a quarter of the trials lose every unsynced write, a quarter
		// keep them all; the rest keep each sector with a random chance
		double p = t % 4 == 0 ? 0 : t % 4 == 1 ? 1 : pl_unit(&rng);
		power_off(&rng, p, f);
		f->trials++;
		char why[512];
		if (store_check(d.data, why, sizeof(why)) != 0) {
			cr_assert_not(strict, "trial %d (seed %llu): the store "
			                      "is damaged after a power loss: %s "
			                      "(CHOREO_E2E_KEEP=1 keeps %s)",
			    t, (unsigned long long) seed, why, d.data);
			f->corrupt++;
			f->caught++;
			fresh = true;
			continue;
		}
		fd_start(&d, &ctl, true, true);
		for (int i = 0; i < NW; i++) {
			f->acked += cs[i].acked;
		}
		long lost = verify(cs, strict);
		if (lost > 0) {
			f->lost += lost;
			f->trials_lost++;
			f->caught++;
			d_kill9(&d);
			fresh = true;
		}
	}
	if (d.pid != 0) {
		d_stop(&d);
	}
	fprintf(stderr,
	    "K2 --sync %s: %d trials (%d killed by SIGKILL, %d crashed by "
	    "the shim), %ld events acknowledged, %ld acknowledged events "
	    "lost in %ld trials, %ld damaged stores; unsynced writes at the "
	    "crashes: %llu (%llu sectors, %llu of them kept), %llu durable "
	    "O_DSYNC writes\n",
	    sync, f->trials, f->killed, f->self_crashed, f->acked, f->lost,
	    f->trials_lost, f->corrupt, (unsigned long long) f->writes,
	    (unsigned long long) f->sectors, (unsigned long long) f->applied,
	    (unsigned long long) f->durable);
}

Test(power_loss, sync_full_loses_no_acknowledged_event)
{
	figures f = { 0 };
	run("full", env_int("CHOREO_K2_TRIALS", 20), true, &f);
	cr_assert_eq(f.lost, 0);
	cr_assert_eq(f.corrupt, 0);
	cr_assert_gt(f.acked, 0, "no event was acknowledged");
}

Test(power_loss, sync_os_is_caught_losing_events)
{
	figures f = { 0 };
	run("os", env_int("CHOREO_K2_TRIALS", 10), false, &f);
	cr_assert_gt(f.caught, 0,
	    "%d power losses with --sync os and no acknowledged event lost, "
	    "no store damaged: the harness cannot see a missing fsync",
	    f.trials);
}

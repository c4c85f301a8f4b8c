// K4: I/O errors. The shim fails the Nth write or sync of the store's
// data.mdb with ENOSPC or EIO, once (transient) or from then on
// (persistent), for N = 1, 2, ... until an event completes without
// reaching op N (SQLite's I/O error loop). Whatever fails, a client sees
// what a user may rely on:
//   - an ok reply only for an event that is stored, exactly once;
//   - an error reply — storage_full for a full disk, internal for an I/O
//     error — or no reply, for an event that is not stored at all;
//   - the daemon serving again once the fault is gone (it carried on, or
//     its supervisor started a new engine);
//   - a store whose every page reads back, and counts that match.
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fsupport.h"

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

TestSuite(io_errors, .init = setup, .fini = teardown);

enum outcome { ACKED, REFUSED, DROPPED };

// reply_verdict: 1 for ok=true, 0 for an error (its code copied), -1 for
// what is not a reply.
static int
reply_verdict(const void *buf, size_t len, char *code, size_t clen)
{
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	int v   = -1;
	code[0] = '\0';
	if (msgpack_unpack_next(&up, buf, len, NULL) == MSGPACK_UNPACK_SUCCESS) {
		const msgpack_object *o = at(&up.data, "ok");
		const msgpack_object *c = at(&up.data, "error.code");
		if (o != NULL && o->type == MSGPACK_OBJECT_BOOLEAN) {
			v = o->via.boolean ? 1 : 0;
		}
		if (v == 0 && c != NULL && c->type == MSGPACK_OBJECT_STR) {
			snprintf(code, clen, "%.*s", (int) c->via.str.size,
			    c->via.str.ptr);
		}
	}
	msgpack_unpacked_destroy(&up);
	return (v);
}

// send_event sends one event over raw SP (no resend behind our back) and
// says what came back: ACKED, REFUSED (its error code in code), or
// DROPPED when the connection closed first (the engine restarted).
static enum outcome
send_event(const char *c, const char *id, char *code, size_t clen)
{
	char  ev[300];
	sp_t  s;
	int   rv = sp_connect(&s, d.rep_port);
	cr_assert_eq(rv, 0, "connect: %s; log: %s", strerror(rv), d_log_tail(&d));
	req_t r;
	req_json(&r, ev_json(ev, sizeof(ev), c, id));
	rv = sp_send(&s, r.buf.data, r.buf.size);
	req_free(&r);
	char  *body = NULL;
	size_t blen = 0;
	if (rv == 0) {
		rv = sp_recv(&s, E2E_REQ_MS, &body, &blen);
	}
	sp_close(&s);
	code[0] = '\0';
	if (rv == EPIPE) {
		return (DROPPED);
	}
	cr_assert_eq(rv, 0, "event %s: no reply: %s; log: %s", id,
	    strerror(rv), d_log_tail(&d));
	int v = reply_verdict(body, blen, code, clen);
	cr_assert_geq(v, 0, "event %s: not a reply", id);
	enum outcome out = v == 1 ? ACKED : REFUSED;
	free(body);
	return (out);
}

// wait_serving: within 10 s the daemon answers a get from its store (not
// overloaded, as while an engine restarts, nor internal, as a dying engine
// does).
static void
wait_serving(void)
{
	for (int i = 0; i < 1000; i++) {
		sp_t s;
		if (sp_connect(&s, d.rep_port) == 0) {
			req_t r;
			req_json(&r, "{\"op\":\"get\",\"business\":\"shop\","
			             "\"customer\":\"k\"}");
			int    rv = sp_send(&s, r.buf.data, r.buf.size);
			char  *b  = NULL;
			size_t bl;
			req_free(&r);
			if (rv == 0 && (rv = sp_recv(&s, 2000, &b, &bl)) == 0) {
				char code[64];
				int  v = reply_verdict(b, bl, code, sizeof(code));
				free(b);
				sp_close(&s);
				if (v == 1 || strcmp(code, "not_found") == 0) {
					return;
				}
			} else {
				sp_close(&s);
			}
		}
		usleep(10 * 1000);
	}
	cr_assert_fail("the daemon does not serve again; log: %s",
	    d_log_tail(&d));
}

// is_duplicate resends event id: whether it was stored already (the
// resend applies it otherwise).
static bool
is_duplicate(const char *c, const char *id)
{
	char    ev[300];
	reply_t r;
	call_json(&d, ev_json(ev, sizeof(ev), c, id), &r);
	assert_ok(&r);
	bool dup = bool_at(&r, "duplicate");
	reply_free(&r);
	return (dup);
}

static void
stop_and_check(void)
{
	char why[512];
	d_stop(&d);
	cr_assert_eq(store_check(d.data, why, sizeof(why)), 0,
	    "the store is damaged: %s", why);
}

Test(io_errors, a_full_disk_answers_storage_full_and_serving_goes_on)
{
	char code[64];
	fd_start(&d, &ctl, false, false);
	cr_assert_eq(send_event("k", "e0", code, sizeof(code)), ACKED, "%s",
	    code);
	faults_arm(ctl, 1, true, ENOSPC, FAULT_UNWRITTEN);
	cr_assert_eq(send_event("k", "e1", code, sizeof(code)), REFUSED);
	cr_assert_str_eq(code, "storage_full", "a full disk answered %s; "
	                                       "log: %s",
	    code, d_log_tail(&d));
	cr_assert_gt(atomic_load(&ctl->injected), 0);
	cr_assert_eq(counter(&d, "k"), 1, "nothing of e1 may be stored");
	// space is back: the same event applies, once
	faults_clear(ctl);
	cr_assert_not(is_duplicate("k", "e1"));
	cr_assert_eq(counter(&d, "k"), 2);
	stop_and_check();
}

Test(io_errors, writes_cut_short_by_a_full_disk_answer_storage_full)
{
	// a filesystem with no room left writes what fits in the blocks a
	// write already has and returns a short count, which LMDB makes EIO;
	// written again, the same write is cut short again
	char code[64];
	fd_start(&d, &ctl, false, false);
	cr_assert_eq(send_event("k", "e0", code, sizeof(code)), ACKED, "%s",
	    code);
	atomic_store(&ctl->no_room, 1);
	faults_arm(ctl, 1, true, ENOSPC, FAULT_SHORT);
	cr_assert_eq(send_event("k", "e1", code, sizeof(code)), REFUSED);
	cr_assert_str_eq(code, "storage_full", "a full disk answered %s; "
	                                       "log: %s",
	    code, d_log_tail(&d));
	cr_assert_gt(atomic_load(&ctl->cut), 1, "no write was cut short twice");
	faults_clear(ctl);
	atomic_store(&ctl->no_room, 0);
	cr_assert_eq(counter(&d, "k"), 1);
	cr_assert_not(is_duplicate("k", "e1"));
	cr_assert_eq(counter(&d, "k"), 2);
	stop_and_check();
}

// engine_pid: the supervisor's child, the engine process (0 if none).
static pid_t
engine_pid(void)
{
	char path[64];
	int  child = 0;
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int) d.pid,
	    (int) d.pid);
	FILE *f = fopen(path, "r");
	if (f != NULL) {
		if (fscanf(f, "%d", &child) != 1) {
			child = 0;
		}
		fclose(f);
	}
	return ((pid_t) child);
}

// profile: a "profile" event of customer c setting a 3 000-byte
// attribute (an overflow page of its own), with id c.
static enum outcome
profile(const char *c, char *code, size_t clen)
{
	char blob[3001], ev[3300];
	memset(blob, 'x', 3000);
	blob[3000] = '\0';
	snprintf(ev, sizeof(ev),
	    "{\"business\":\"shop\",\"customer\":\"%s\",\"type\":"
	    "\"profile\",\"id\":\"%s\",\"data\":{\"blob\":\"%s\"}}",
	    c, c, blob);
	sp_t  sp;
	int   rv = sp_connect(&sp, d.rep_port);
	cr_assert_eq(rv, 0, "connect: %s", strerror(rv));
	req_t r;
	req_json(&r, ev);
	rv = sp_send(&sp, r.buf.data, r.buf.size);
	req_free(&r);
	char  *b = NULL;
	size_t bl;
	if (rv == 0) {
		rv = sp_recv(&sp, E2E_REQ_MS, &b, &bl);
	}
	sp_close(&sp);
	cr_assert_eq(rv, 0, "%s: no reply: %s; log: %s", c, strerror(rv),
	    d_log_tail(&d));
	int v = reply_verdict(b, bl, code, clen);
	free(b);
	cr_assert_geq(v, 0, "%s: not a reply", c);
	return (v == 1 ? ACKED : REFUSED);
}

static long long
profiles_of(const char *c)
{
	char    q[256];
	reply_t r;
	snprintf(q, sizeof(q),
	    "{\"op\":\"get\",\"business\":\"shop\",\"customer\":\"%s\"}", c);
	call_json(&d, q, &r);
	long long n = ok(&r) ? int_at(&r, "customer.counters.profile_updates") : 0;
	if (!ok(&r)) {
		assert_code(&r, "not_found");
	}
	reply_free(&r);
	return (n);
}

// A full disk as a filesystem makes it: a write past the end of data.mdb
// fails — cut short at the end when it starts before it (LMDB: EIO), with
// ENOSPC when it starts there — and statvfs says no room is left. What fits
// in the store's free pages still commits; everything else answers
// storage_full, never internal, and the engine never restarts (the meta
// page is written in place, where a full disk does not stop it).
Test(io_errors, a_full_disk_lets_through_what_fits_in_free_pages)
{
	char code[64], c[32];
	fd_start(&d, &ctl, false, false);
	// free pages inside the file: big customers, the newest forgotten, so
	// that free pages end the file and a commit's run of pages goes on
	// past its end (cut short, then)
	for (int i = 0; i < 40; i++) {
		snprintf(c, sizeof(c), "f%d", i);
		cr_assert_eq(profile(c, code, sizeof(code)), ACKED, "%s", code);
	}
	for (int i = 39; i >= 20; i--) {
		char    q[128];
		reply_t r;
		snprintf(q, sizeof(q), "{\"op\":\"forget\",\"business\":"
		                       "\"shop\",\"customer\":\"f%d\"}", i);
		call_json(&d, q, &r);
		assert_ok(&r);
		reply_free(&r);
	}
	pid_t engine = engine_pid();
	atomic_store(&ctl->full, 1);
	int  acked = 0, refused = 0;
	bool was_refused[60] = { false };
	for (int i = 0; i < 60; i++) {
		snprintf(c, sizeof(c), "g%d", i);
		enum outcome o = profile(c, code, sizeof(code));
		if (o == ACKED) {
			acked++;
			cr_assert_eq(profiles_of(c), 2, "%s: acked, not stored", c);
		} else {
			refused++;
			was_refused[i] = true;
			cr_assert_str_eq(code, "storage_full", "%s: refused with "
			                                       "%s; log: %s",
			    c, code, d_log_tail(&d));
			cr_assert_eq(profiles_of(c), 0, "%s: refused, yet stored", c);
		}
	}
	uint64_t cut = atomic_load(&ctl->injected);
	cr_assert_gt(refused, 0, "the full disk refused nothing");
	cr_assert_eq(engine_pid(), engine, "the engine restarted; log: %s",
	    d_log_tail(&d));
	// room again: what was refused applies, once
	atomic_store(&ctl->full, 0);
	for (int i = 0; i < 60; i++) {
		snprintf(c, sizeof(c), "g%d", i);
		if (was_refused[i]) {
			cr_assert_eq(profile(c, code, sizeof(code)), ACKED, "%s",
			    code);
			cr_assert_eq(profiles_of(c), 2);
		}
	}
	fprintf(stderr, "K4 full disk: 60 events, %d committed in free pages, "
	                "%d refused with storage_full (%llu writes failed, %llu "
	                "of them cut short), then all applied\n",
	    acked, refused, (unsigned long long) cut,
	    (unsigned long long) atomic_load(&ctl->cut));
	stop_and_check();
}

// The loop: every op of an event's commit fails in turn.
typedef struct {
	int faults, acked, refused, dropped, rounds, restarts;
} tally;

static void
fault_loop(int err, bool persistent, int how, long long *stored, tally *t)
{
	static const char *const hows[] = { "", "-short", "-written" };
	const char *want = err == ENOSPC ? "storage_full" : "internal";
	for (int n = 1; n <= 64; n++) {
		char id[64], code[64];
		snprintf(id, sizeof(id), "%s-%s%s-%d", strerror(err),
		    persistent ? "persistent" : "once", hows[how], n);
		uint64_t before = atomic_load(&ctl->injected);
		pid_t    engine = engine_pid();
		// writes cut short: by a disk with no room, as statvfs says
		atomic_store(&ctl->no_room, how == FAULT_SHORT);
		faults_arm(ctl, (uint64_t) n, persistent, err, how);
		enum outcome o = send_event("k", id, code, sizeof(code));
		faults_clear(ctl);
		atomic_store(&ctl->no_room, 0);
		bool hit = atomic_load(&ctl->injected) > before;
		wait_serving();
		bool restarted = engine_pid() != engine;
		long long now = counter(&d, "k");
		t->rounds++;
		t->faults += hit;
		t->restarts += restarted;
		if (o == ACKED) {
			t->acked++;
			cr_assert_eq(now, *stored + 1, "%s: acked, but %lld "
			                               "stored after %lld",
			    id, now, *stored);
			cr_assert(is_duplicate("k", id), "%s: acked, not stored", id);
			*stored = now;
		} else {
			if (o == REFUSED) {
				t->refused++;
				// a short write of the meta page is EIO to LMDB, and
				// the store must be opened again: internal, and a
				// new engine, which then meets the full disk
				cr_assert(strcmp(code, want) == 0 ||
				        (restarted && strcmp(code, "internal") == 0),
				    "%s: refused with %s%s; log: %s", id, code,
				    restarted ? " (the engine restarted)" : "",
				    d_log_tail(&d));
			} else {
				t->dropped++;
			}
			cr_assert_eq(now, *stored, "%s: refused (%s), but %lld "
			                           "stored after %lld",
			    id, o == REFUSED ? code : "dropped", now, *stored);
			cr_assert_not(is_duplicate("k", id), "%s: refused, yet its "
			                                     "id is known", id);
			*stored = counter(&d, "k");
			cr_assert_eq(*stored, now + 1);
		}
		if (!hit) {
			return; // the event completed before op n: all covered
		}
	}
	cr_assert_fail("an event still reached op 64");
}

Test(io_errors, every_failed_write_or_sync_is_refused_or_durable)
{
	fd_start(&d, &ctl, false, false);
	long long stored = 0;
	char      code[64];
	cr_assert_eq(send_event("k", "first", code, sizeof(code)), ACKED);
	stored = 1;
	tally t = { 0 };
	static const struct {
		int  err;
		bool persistent;
		int  how;
	} modes[] = {
		{ EIO, false, FAULT_UNWRITTEN }, { EIO, true, FAULT_UNWRITTEN },
		{ EIO, false, FAULT_WRITTEN },
		{ ENOSPC, false, FAULT_UNWRITTEN }, { ENOSPC, true, FAULT_UNWRITTEN },
		{ ENOSPC, true, FAULT_SHORT },
	};
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		fault_loop(modes[i].err, modes[i].persistent, modes[i].how,
		    &stored, &t);
	}
	fprintf(stderr,
	    "K4: %d rounds, %d faults injected and survived: %d acked (and "
	    "stored), %d refused, %d dropped by a restart (none stored); %d "
	    "engine restarts\n",
	    t.rounds, t.faults, t.acked, t.refused, t.dropped, t.restarts);
	stop_and_check();
	d_restart(&d);
	cr_assert_eq(counter(&d, "k"), stored);
	d_stop(&d);
}

// A batch request: its events reach the engine together and go into one
// commit, which writes more pages. Each member is acknowledged and stored,
// or refused and not stored, whatever op of that commit fails.
Test(io_errors, a_batch_is_applied_member_by_member_or_not_at_all)
{
	fd_start(&d, &ctl, false, false);
	enum { M = 12 };
	int  faults = 0, rounds = 0;
	for (int n = 1; n <= 64; n++) {
		for (int persistent = 0; persistent < 2; persistent++) {
			long long before[M];
			char      req[M * 160 + 64], *p = req;
			p += sprintf(p, "{\"op\":\"batch\",\"events\":[");
			for (int i = 0; i < M; i++) {
				char c[16], id[48], ev[300];
				snprintf(c, sizeof(c), "b%d", i);
				snprintf(id, sizeof(id), "b%d-%d-%d", i, n, persistent);
				before[i] = counter(&d, c);
				p += sprintf(p, "%s%s", i ? "," : "",
				    ev_json(ev, sizeof(ev), c, id));
			}
			sprintf(p, "]}");
			uint64_t inj = atomic_load(&ctl->injected);
			faults_arm(ctl, (uint64_t) n, persistent, EIO, FAULT_UNWRITTEN);
			reply_t r;
			call_json(&d, req, &r); // nng REQ: a restart resends it
			faults_clear(ctl);
			bool hit = atomic_load(&ctl->injected) > inj;
			faults += hit;
			rounds++;
			wait_serving(); // a failed meta page restarts the engine
			assert_ok(&r);
			cr_assert_eq(len_at(&r, "results"), M);
			for (int i = 0; i < M; i++) {
				char c[16], path[32];
				snprintf(c, sizeof(c), "b%d", i);
				snprintf(path, sizeof(path), "results.%d.ok", i);
				long long now = counter(&d, c);
				bool      acked = bool_at(&r, path);
				cr_assert_eq(now, before[i] + (acked ? 1 : 0),
				    "round %d%s, member %d: %s, but %lld stored "
				    "after %lld",
				    n, persistent ? " (persistent)" : "", i,
				    acked ? "acked" : "refused", now, before[i]);
			}
			reply_free(&r);
			if (!hit && persistent) {
				fprintf(stderr, "K4 batch of %d: %d rounds, %d "
				                "faults injected and survived\n",
				    M, rounds, faults);
				stop_and_check();
				return;
			}
		}
	}
	cr_assert_fail("a batch still reached op 64");
}

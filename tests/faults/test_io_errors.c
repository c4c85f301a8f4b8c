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
	faults_arm(ctl, 1, true, ENOSPC, false);
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

Test(io_errors, a_disk_filling_mid_write_answers_storage_full)
{
	// a filesystem running out of space mid-write writes what fits and
	// returns a short count (LMDB makes that EIO), then fails with ENOSPC
	char code[64];
	fd_start(&d, &ctl, false, false);
	cr_assert_eq(send_event("k", "e0", code, sizeof(code)), ACKED, "%s",
	    code);
	faults_arm(ctl, 1, true, ENOSPC, true);
	cr_assert_eq(send_event("k", "e1", code, sizeof(code)), REFUSED);
	cr_assert_str_eq(code, "storage_full", "a full disk answered %s; "
	                                       "log: %s",
	    code, d_log_tail(&d));
	faults_clear(ctl);
	cr_assert_eq(counter(&d, "k"), 1);
	cr_assert_not(is_duplicate("k", "e1"));
	cr_assert_eq(counter(&d, "k"), 2);
	stop_and_check();
}

// The loop: every op of an event's commit fails in turn.
typedef struct {
	int faults, acked, refused, dropped, rounds;
} tally;

static void
fault_loop(int err, bool persistent, bool short_write, long long *stored,
    tally *t)
{
	const char *want = err == ENOSPC ? "storage_full" : "internal";
	for (int n = 1; n <= 64; n++) {
		char id[64], code[64];
		snprintf(id, sizeof(id), "%s-%s%s-%d", strerror(err),
		    persistent ? "persistent" : "once", short_write ? "-short" : "",
		    n);
		uint64_t before = atomic_load(&ctl->injected);
		faults_arm(ctl, (uint64_t) n, persistent, err, short_write);
		enum outcome o = send_event("k", id, code, sizeof(code));
		faults_clear(ctl);
		bool hit = atomic_load(&ctl->injected) > before;
		wait_serving();
		long long now = counter(&d, "k");
		t->rounds++;
		t->faults += hit;
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
				cr_assert_str_eq(code, want, "%s: refused with %s; "
				                             "log: %s",
				    id, code, d_log_tail(&d));
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
		bool persistent, short_write;
	} modes[] = {
		{ EIO, false, false }, { EIO, true, false },
		{ ENOSPC, false, false }, { ENOSPC, true, false },
		{ ENOSPC, true, true },
	};
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		fault_loop(modes[i].err, modes[i].persistent, modes[i].short_write,
		    &stored, &t);
	}
	fprintf(stderr,
	    "K4: %d rounds, %d faults injected and survived: %d acked (and "
	    "stored), %d refused, %d dropped by a restart (none stored)\n",
	    t.rounds, t.faults, t.acked, t.refused, t.dropped);
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
			faults_arm(ctl, (uint64_t) n, persistent, EIO, false);
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

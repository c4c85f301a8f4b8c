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

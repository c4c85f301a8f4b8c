// What the fault tests share. See fsupport.h.
#include "fsupport.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <lmdb.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

const char *
fd_path(const daemon_t *d, const char *name)
{
	static _Thread_local char p[4][160];
	static _Thread_local int  k;
	char                     *out = p[k++ % 4];
	snprintf(out, sizeof(p[0]), "%s/%s", d->data, name);
	return (out);
}

void
fd_start(daemon_t *d, faults_ctl **ctl, bool keep, bool journal)
{
	const char *pre = getenv("CHOREO_FAULTS_PRELOAD");
	cr_assert_not_null(pre, "CHOREO_FAULTS_PRELOAD is not set (run the "
	                        "fault tests through ctest)");
	if (!keep || d->data[0] == '\0') {
		faults_unmap(*ctl); // its file goes with the old data dir
		*ctl = NULL;
		d_cleanup(d);
		snprintf(d->data, sizeof(d->data), "/tmp/choreo-faults-XXXXXX");
		cr_assert_not_null(mkdtemp(d->data), "mkdtemp: %s",
		    strerror(errno));
	}
	if (*ctl == NULL) {
		*ctl = faults_map(fd_path(d, "faults.ctl"), true);
		cr_assert_not_null(*ctl, "cannot map %s",
		    fd_path(d, "faults.ctl"));
	}
	faults_ctl *c = *ctl;
	faults_clear(c);
	atomic_store(&c->ops, 0);
	atomic_store(&c->injected, 0);
	atomic_store(&c->crash_at, 0);
	atomic_store(&c->syncs, 0);
	atomic_store(&c->full, 0);
	atomic_store(&c->cut, 0);
	atomic_store(&c->no_room, 0);
	setenv("LD_PRELOAD", pre, 1);
	setenv("CHOREO_FAULTS_FILE", fd_path(d, "data.mdb"), 1);
	setenv("CHOREO_FAULTS_CTL", fd_path(d, "faults.ctl"), 1);
	if (journal) {
		setenv("CHOREO_FAULTS_JOURNAL", fd_path(d, "journal"), 1);
	}
	d_start(d, d_rules(), true);
	unsetenv("LD_PRELOAD");
	unsetenv("CHOREO_FAULTS_FILE");
	unsetenv("CHOREO_FAULTS_CTL");
	unsetenv("CHOREO_FAULTS_JOURNAL");
}

/*
** {======================================================
** The full read
** =======================================================
*/

// walk reads every entry of dbi and compares the count with the tree's;
// msgpack: each value (after skip bytes) must be one msgpack map.
static int
walk(MDB_txn *txn, MDB_dbi dbi, const char *name, size_t skip, bool msgpack,
    char *why, size_t len)
{
	MDB_cursor *c;
	MDB_stat    ms;
	MDB_val     k, v;
	size_t      n = 0;
	int         rc;
	if ((rc = mdb_stat(txn, dbi, &ms)) != 0 ||
	    (rc = mdb_cursor_open(txn, dbi, &c)) != 0) {
		snprintf(why, len, "%s: %s", name, mdb_strerror(rc));
		return (-1);
	}
	while ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
		n++;
		if (!msgpack) {
			continue;
		}
		msgpack_unpacked up;
		size_t           off = 0;
		msgpack_unpacked_init(&up);
		bool good = v.mv_size > skip &&
		    msgpack_unpack_next(&up, (const char *) v.mv_data + skip,
		        v.mv_size - skip, &off) == MSGPACK_UNPACK_SUCCESS &&
		    up.data.type == MSGPACK_OBJECT_MAP &&
		    off == v.mv_size - skip;
		msgpack_unpacked_destroy(&up);
		if (!good) {
			snprintf(why, len, "%s: entry %zu is not a msgpack map",
			    name, n);
			mdb_cursor_close(c);
			return (-1);
		}
	}
	mdb_cursor_close(c);
	if (rc != MDB_NOTFOUND) {
		snprintf(why, len, "%s: after %zu entries: %s", name, n,
		    mdb_strerror(rc));
		return (-1);
	}
	if (n != ms.ms_entries) {
		snprintf(why, len, "%s: %zu entries read, the tree says %zu",
		    name, n, (size_t) ms.ms_entries);
		return (-1);
	}
	return (0);
}

static int
check_in_child(const char *dir, char *why, size_t len)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi  main;
	int      rc;
	mdb_env_create(&env);
	mdb_env_set_maxdbs(env, 16);
	mdb_env_set_mapsize(env, (size_t) 1 << 32);
	if ((rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOLOCK, 0644)) != 0 ||
	    (rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn)) != 0 ||
	    (rc = mdb_dbi_open(txn, NULL, 0, &main)) != 0) {
		snprintf(why, len, "open: %s", mdb_strerror(rc));
		return (-1);
	}
	// dbi 0 is the free list (mdb_stat -f reads it the same way)
	if (walk(txn, 0, "free list", 0, false, why, len) != 0 ||
	    walk(txn, main, "main", 0, false, why, len) != 0) {
		return (-1);
	}
	static const struct {
		const char *name;
		size_t      skip;
		bool        msgpack;
	} dbs[] = {
		{ "customers", 0, true }, { "dedup", 8, true },
		{ "models", 0, false }, { "stats", 0, false },
		{ "timers", 0, false }, { "meta", 0, false },
		{ "dedup_age", 0, false },
	};
	for (size_t i = 0; i < sizeof(dbs) / sizeof(dbs[0]); i++) {
		MDB_dbi dbi;
		if ((rc = mdb_dbi_open(txn, dbs[i].name, 0, &dbi)) != 0) {
			snprintf(why, len, "%s: %s", dbs[i].name,
			    mdb_strerror(rc));
			return (-1);
		}
		if (walk(txn, dbi, dbs[i].name, dbs[i].skip, dbs[i].msgpack, why,
		        len) != 0) {
			return (-1);
		}
	}
	mdb_txn_abort(txn);
	mdb_env_close(env);
	return (0);
}

int
store_check(const char *dir, char *why, size_t len)
{
	char *msg = mmap(NULL, 512, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(msg, MAP_FAILED);
	msg[0] = '\0';
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		_exit(check_in_child(dir, msg, 512) == 0 ? 0 : 1);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
	}
	int rv = 0;
	if (WIFSIGNALED(st)) {
		snprintf(why, len, "reading the store died of signal %d (%s)",
		    WTERMSIG(st), strsignal(WTERMSIG(st)));
		rv = -1;
	} else if (WEXITSTATUS(st) != 0) {
		snprintf(why, len, "%s", msg);
		rv = -1;
	}
	munmap(msg, 512);
	return (rv);
}

/* }====================================================== */

const char *
ev_json(char *buf, size_t len, const char *c, const char *id)
{
	snprintf(buf, len,
	    "{\"business\":\"shop\",\"customer\":\"%s\",\"type\":\"page_view\","
	    "\"channel\":\"web\",\"id\":\"%s\"}",
	    c, id);
	return (buf);
}

long long
counter(daemon_t *d, const char *c)
{
	char    q[256];
	reply_t r;
	snprintf(q, sizeof(q),
	    "{\"op\":\"get\",\"business\":\"shop\",\"customer\":\"%s\"}", c);
	call_json(d, q, &r);
	long long n = 0;
	if (ok(&r)) {
		n = has(&r, "customer.counters.events")
		    ? (long long) int_at(&r, "customer.counters.events")
		    : 0;
	} else {
		assert_code(&r, "not_found");
	}
	reply_free(&r);
	return (n);
}

// choreo — the LMDB store. See store.h.
#include "store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "err.h"
#include "log.h"

#define SCHEMA_VERSION 1

struct ch_store {
	MDB_env      *env;
	MDB_dbi       dbi[CH_DB_COUNT];
	size_t        map_size;
	ch_store_opts o;
	unsigned      faults; // CH_STORE_* of the running transaction
};

static const char *const db_names[CH_DB_COUNT] = {
	"customers", "dedup", "models", "stats", "timers", "meta", "dedup_age",
};

int
ch_store_mkdirs(const char *dir)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s", dir);
	for (char *c = p + 1; *c; c++) {
		if (*c == '/') {
			*c = '\0';
			if (mkdir(p, 0755) != 0 && errno != EEXIST) {
				return (-1);
			}
			*c = '/';
		}
	}
	if (mkdir(p, 0755) != 0 && errno != EEXIST) {
		return (-1);
	}
	return (0);
}

int
ch_store_open(ch_store **out, const char *dir, const ch_store_opts *o,
    char *why, size_t whylen)
{
	ch_store *s = calloc(1, sizeof(*s));
	MDB_txn  *txn = NULL;
	int       rc;
	if (s == NULL) {
		snprintf(why, whylen, "out of memory");
		return (CH_EINTERNAL);
	}
	s->o = *o;
	if (ch_store_mkdirs(dir) != 0) {
		snprintf(why, whylen, "cannot create %s: %s", dir,
		    strerror(errno));
		free(s);
		return (CH_EINTERNAL);
	}
	if ((rc = mdb_env_create(&s->env)) != 0) {
		goto fail;
	}
	mdb_env_set_maxdbs(s->env, CH_DB_COUNT + 2);
	mdb_env_set_maxreaders(s->env, 256);
	// Start from the size the file already has, else 64 MiB.
	size_t      size = o->init_size ? o->init_size : (64u << 20);
	char        path[4200];
	struct stat st;
	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	if (stat(path, &st) == 0 && (size_t) st.st_size > size) {
		size = (size_t) st.st_size;
	}
	if (size > o->max_size) {
		size = o->max_size;
	}
	s->map_size = size;
	if ((rc = mdb_env_set_mapsize(s->env, size)) != 0) {
		goto fail;
	}
	unsigned flags = MDB_NOTLS | MDB_NORDAHEAD;
	if (!o->sync_full) {
		flags |= MDB_NOSYNC;
	}
	if ((rc = mdb_env_open(s->env, dir, flags, 0644)) != 0) {
		goto fail;
	}
	MDB_envinfo info;
	mdb_env_info(s->env, &info);
	s->map_size = info.me_mapsize;
	int dead;
	mdb_reader_check(s->env, &dead);
	if (dead > 0) {
		ch_log_warn("store: cleared %d stale reader slot(s)", dead);
	}
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0) {
		goto fail;
	}
	for (int i = 0; i < CH_DB_COUNT; i++) {
		if ((rc = mdb_dbi_open(txn, db_names[i], MDB_CREATE,
		         &s->dbi[i])) != 0) {
			goto fail;
		}
	}
	MDB_val k = { 6, "schema" }, v;
	uint32_t ver = SCHEMA_VERSION;
	rc = mdb_get(txn, s->dbi[CH_DB_META], &k, &v);
	if (rc == MDB_NOTFOUND) {
		v.mv_size = sizeof(ver);
		v.mv_data = &ver;
		rc        = mdb_put(txn, s->dbi[CH_DB_META], &k, &v, 0);
	} else if (rc == 0 && (v.mv_size != sizeof(ver) ||
	                          memcmp(v.mv_data, &ver, sizeof(ver)) != 0)) {
		snprintf(why, whylen, "%s holds an unknown schema version", dir);
		mdb_txn_abort(txn);
		mdb_env_close(s->env);
		free(s);
		return (CH_EINTERNAL);
	}
	if (rc != 0) {
		goto fail;
	}
	rc  = mdb_txn_commit(txn);
	txn = NULL;
	if (rc != 0) {
		goto fail;
	}
	*out = s;
	return (CH_OK);
fail:
	snprintf(why, whylen, "cannot open the store in %s: %s", dir,
	    mdb_strerror(rc));
	if (txn != NULL) {
		mdb_txn_abort(txn);
	}
	if (s->env != NULL) {
		mdb_env_close(s->env);
	}
	free(s);
	return (CH_EINTERNAL);
}

void
ch_store_close(ch_store *s)
{
	if (s == NULL) {
		return;
	}
	mdb_env_sync(s->env, 1);
	mdb_env_close(s->env);
	free(s);
}

MDB_env *
ch_store_env(ch_store *s)
{
	return (s->env);
}

MDB_dbi
ch_store_dbi(ch_store *s, enum ch_db db)
{
	return (s->dbi[db]);
}

size_t
ch_store_map_size(ch_store *s)
{
	return (s->map_size);
}

// Below this much room for it, the disk of a store is full.
#define MIN_ROOM ((uint64_t) 64 << 20)

// no_room: the filesystem of the store has (almost) no room left. A write
// that needs more blocks than are free is cut short, and LMDB reports a
// short write as EIO; written again, it is cut short again.
static bool
no_room(ch_store *s)
{
	int            fd;
	struct statvfs v;
	return (mdb_env_get_fd(s->env, &fd) == 0 && fstatvfs(fd, &v) == 0 &&
	    (uint64_t) v.f_bavail * v.f_frsize < MIN_ROOM);
}

// xlate turns an LMDB result into a choreo code and notes in s->faults
// what a failure means for the engine (see store.h).
static int
xlate(ch_store *s, int rc, const char *what)
{
	if (rc == EIO && no_room(s)) {
		ch_log_error("store: %s: %s, with the disk full", what,
		    mdb_strerror(rc));
		s->faults |= CH_STORE_DISK_FULL;
		return (CH_ESTORAGEFULL);
	}
	switch (rc) {
	case 0:
		return (CH_OK);
	case MDB_NOTFOUND:
		return (CH_ENOTFOUND);
	case MDB_MAP_FULL:
	case MDB_TXN_FULL:
		return (CH_ESTORAGEFULL);
	case ENOSPC:
	case EDQUOT:
		ch_log_error("store: %s: %s", what, mdb_strerror(rc));
		s->faults |= CH_STORE_DISK_FULL;
		return (CH_ESTORAGEFULL);
	case MDB_PANIC:
		ch_log_error("store: %s: %s", what, mdb_strerror(rc));
		s->faults |= CH_STORE_DEAD;
		return (CH_EINTERNAL);
	case EIO:
		ch_log_error("store: %s: %s", what, mdb_strerror(rc));
		s->faults |= CH_STORE_IO_ERROR;
		return (CH_EINTERNAL);
	default:
		ch_log_error("store: %s: %s", what, mdb_strerror(rc));
		return (CH_EINTERNAL);
	}
}

int
ch_store_begin(ch_store *s, MDB_txn *parent, MDB_txn **txn)
{
	if (parent == NULL) {
		s->faults &= CH_STORE_DEAD; // a new transaction; dead stays dead
	}
	return (xlate(s, mdb_txn_begin(s->env, parent, 0, txn), "begin"));
}

int
ch_store_commit(ch_store *s, MDB_txn *txn)
{
	int rc = mdb_txn_commit(txn);
	if (rc > 0) {
		// An I/O error. One that hit the meta page leaves LMDB refusing
		// every transaction until the environment is opened again, which
		// it says only at the next begin: ask now, so the engine knows.
		MDB_txn *probe;
		int      p = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &probe);
		if (p == MDB_PANIC) {
			s->faults |= CH_STORE_DEAD;
		} else if (p == 0) {
			mdb_txn_abort(probe);
		}
	}
	return (xlate(s, rc, "commit"));
}

unsigned
ch_store_faults(const ch_store *s)
{
	return (s->faults);
}

void
ch_store_abort(MDB_txn *txn)
{
	mdb_txn_abort(txn);
}

int
ch_store_grow(ch_store *s)
{
	if (s->map_size >= s->o.max_size || (s->faults & CH_STORE_DISK_FULL)) {
		return (CH_ESTORAGEFULL);
	}
	size_t next = s->map_size * 2;
	if (next > s->o.max_size || next < s->map_size) {
		next = s->o.max_size;
	}
	int rc = mdb_env_set_mapsize(s->env, next);
	if (rc != 0) {
		ch_log_error("store: cannot grow the map to %zu bytes: %s",
		    next, mdb_strerror(rc));
		return (CH_ESTORAGEFULL);
	}
	MDB_envinfo info;
	mdb_env_info(s->env, &info);
	s->map_size = info.me_mapsize;
	ch_log_info("store: map grown to %zu MiB", s->map_size >> 20);
	return (CH_OK);
}

size_t
ch_timer_key(char *buf, size_t cap, int64_t due, ch_str business,
    ch_str customer, ch_str name)
{
	size_t n = 8 + business.n + 1 + customer.n + 1 + name.n;
	if (n > cap) {
		return (0);
	}
	ch_be64_put(buf, due);
	char *p = buf + 8;
	memcpy(p, business.p, business.n);
	p += business.n;
	*p++ = '\0';
	memcpy(p, customer.p, customer.n);
	p += customer.n;
	*p++ = '\0';
	memcpy(p, name.p, name.n);
	return (n);
}

size_t
ch_store_key(char *buf, ch_str business, ch_str rest)
{
	memcpy(buf, business.p, business.n);
	buf[business.n] = '\0';
	memcpy(buf + business.n + 1, rest.p, rest.n);
	return (business.n + 1 + rest.n);
}

int
ch_store_get(ch_store *s, MDB_txn *txn, enum ch_db db, const void *key,
    size_t klen, MDB_val *val)
{
	MDB_val k = { klen, (void *) key };
	return (xlate(s, mdb_get(txn, s->dbi[db], &k, val), "get"));
}

int
ch_store_put(ch_store *s, MDB_txn *txn, enum ch_db db, const void *key,
    size_t klen, const void *val, size_t vlen)
{
	MDB_val k = { klen, (void *) key };
	MDB_val v = { vlen, (void *) val };
	return (xlate(s, mdb_put(txn, s->dbi[db], &k, &v, 0), "put"));
}

int
ch_store_del(ch_store *s, MDB_txn *txn, enum ch_db db, const void *key,
    size_t klen)
{
	MDB_val k = { klen, (void *) key };
	return (xlate(s, mdb_del(txn, s->dbi[db], &k, NULL), "del"));
}

size_t
ch_parse_size(const char *s)
{
	char              *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (end == s) {
		return (0);
	}
	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	case 't': case 'T': v <<= 40; end++; break;
	default: break;
	}
	if (*end == 'i' || *end == 'B' || *end == 'b') {
		end++;
	}
	if (*end == 'B') {
		end++;
	}
	return (*end == '\0' ? (size_t) v : 0);
}

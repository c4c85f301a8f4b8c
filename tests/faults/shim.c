// The storage fault shim, loaded into `choreo serve` with LD_PRELOAD. See
// faults.h for what it does; this file is how.
//
// What LMDB 0.9.24 (Debian's liblmdb0, default flags, no MDB_WRITEMAP —
// how core/store.c opens the environment) does to data.mdb, read from its
// mdb.c and from the symbols liblmdb.so imports (pwrite, write, writev,
// lseek, fsync, fdatasync):
//   - a commit writes its dirty pages through the read-write descriptor
//     me_fd: one pwrite for a single page, else lseek + writev of up to 64
//     contiguous pages (mdb_page_flush);
//   - then fdatasync(me_fd) (mdb_env_sync; skipped with MDB_NOSYNC, i.e.
//     --sync os);
//   - then the new meta page with one pwrite through me_mfd, a second
//     descriptor opened O_DSYNC, so that write is on the disk when it
//     returns (mdb_env_write_meta); with MDB_NOSYNC through me_fd, unsynced.
//     If that write fails LMDB writes the old meta back through me_fd and
//     marks the environment unusable (MDB_PANIC until it is reopened);
//   - a new file gets its two meta pages with one pwrite (mdb_env_init_meta).
// Reads go through the mmap, so every write must reach the file: the shim
// journals writes, it never withholds them (except a write it fails).
//
// Ops are counted on the watched file only (matched by device and inode),
// so sockets, logs and lock.mdb pass through untouched and uncounted.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include "faults.h"

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_fstatvfs)(int, struct statvfs *);

static const char     *watch_path;   // CHOREO_FAULTS_FILE
static const char     *journal_path; // CHOREO_FAULTS_JOURNAL
static faults_ctl     *ctl;          // CHOREO_FAULTS_CTL
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static bool            wknown;       // wdev/wino hold the watched file
static dev_t           wdev;
static ino_t           wino;
static int             jfd = -1; // the journal, O_APPEND
static int             rfd = -1; // the watched file, to read old bytes
static uint64_t        seq;      // journaled writes
static bool            trace;    // CHOREO_FAULTS_TRACE: each op to stderr

static void
resolve(void)
{
	if (real_write != NULL) {
		return;
	}
	real_pwrite    = dlsym(RTLD_NEXT, "pwrite");
	real_writev    = dlsym(RTLD_NEXT, "writev");
	real_pwritev   = dlsym(RTLD_NEXT, "pwritev");
	real_fsync     = dlsym(RTLD_NEXT, "fsync");
	real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
	real_fstatvfs  = dlsym(RTLD_NEXT, "fstatvfs");
	real_write     = dlsym(RTLD_NEXT, "write");
}

__attribute__((constructor)) static void
init(void)
{
	resolve();
	watch_path      = getenv("CHOREO_FAULTS_FILE");
	journal_path    = getenv("CHOREO_FAULTS_JOURNAL");
	trace           = getenv("CHOREO_FAULTS_TRACE") != NULL;
	const char *cp  = getenv("CHOREO_FAULTS_CTL");
	if (watch_path != NULL && cp != NULL) {
		ctl = faults_map(cp, false);
	}
}

// watched: fd is the watched file (not known until it exists).
static bool
watched(int fd)
{
	struct stat st;
	if (watch_path == NULL || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		return (false);
	}
	if (!wknown) {
		struct stat ws;
		if (stat(watch_path, &ws) != 0) {
			return (false);
		}
		wdev   = ws.st_dev;
		wino   = ws.st_ino;
		wknown = true;
	}
	return (st.st_dev == wdev && st.st_ino == wino);
}

/*
** {======================================================
** The journal
** =======================================================
*/

static bool
put_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t w = real_write(fd, p, len);
		if (w < 0 && errno == EINTR) {
			continue;
		}
		if (w <= 0) {
			return (false);
		}
		p += w;
		len -= (size_t) w;
	}
	return (true);
}

static bool
journal_open(void)
{
	if (jfd >= 0) {
		return (true);
	}
	jfd = open(journal_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	rfd = open(watch_path, O_RDONLY | O_CLOEXEC);
	return (jfd >= 0 && rfd >= 0);
}

// journal_write records a write of total bytes (iov) at off, before it is
// made: its number, or 0 when there is no journal. A journal that cannot
// be written would make the trial meaningless: the process stops.
static uint64_t
journal_write(int fd, const struct iovec *iov, int n, off_t off, size_t total)
{
	if (journal_path == NULL) {
		return (0);
	}
	struct stat st;
	if (!journal_open() || fstat(fd, &st) != 0) {
		abort();
	}
	pl_rec r = { FAULTS_MAGIC, PL_WRITE, ++seq, (uint64_t) off, total,
		(uint64_t) st.st_size, 0 };
	if ((uint64_t) off < r.old_size) {
		r.old_len = r.old_size - (uint64_t) off;
		if (r.old_len > total) {
			r.old_len = total;
		}
	}
	size_t len = sizeof(r) + r.old_len + total;
	char  *buf = malloc(len);
	if (buf == NULL) {
		abort();
	}
	if (r.old_len > 0 &&
	    pread(rfd, buf + sizeof(r), r.old_len, off) != (ssize_t) r.old_len) {
		abort();
	}
	memcpy(buf, &r, sizeof(r));
	char *p = buf + sizeof(r) + r.old_len;
	for (int i = 0; i < n; i++) {
		memcpy(p, iov[i].iov_base, iov[i].iov_len);
		p += iov[i].iov_len;
	}
	// one write: a record is whole or (killed meanwhile) a torn tail the
	// reader drops, and then the write it describes was never made
	if (!put_all(jfd, buf, len)) {
		abort();
	}
	free(buf);
	return (r.seq);
}

static void
journal_durable(uint64_t s)
{
	pl_rec r = { FAULTS_MAGIC, PL_DURABLE, s, 0, 0, 0, 0 };
	if (jfd >= 0 && !put_all(jfd, &r, sizeof(r))) {
		abort();
	}
}

// journal_synced: the file is on the disk; nothing journaled is pending.
static void
journal_synced(void)
{
	if (jfd >= 0 && ftruncate(jfd, 0) != 0) {
		abort();
	}
}

/* }====================================================== */

// op: counts one op on the watched file and says whether to fail it (its
// errno in *err, and how) or to crash at it.
static void
op(int *err, int *how, bool *crash)
{
	*err   = 0;
	*how   = FAULT_UNWRITTEN;
	*crash = false;
	if (ctl == NULL) {
		return;
	}
	uint64_t n    = atomic_fetch_add(&ctl->ops, 1) + 1;
	uint64_t from = atomic_load(&ctl->fail_from);
	if (from != 0 && n >= from && n <= atomic_load(&ctl->fail_to)) {
		*err = atomic_load(&ctl->err);
		*how = atomic_load(&ctl->how);
		atomic_fetch_add(&ctl->injected, 1);
	}
	*crash = atomic_load(&ctl->crash_at) == n;
	if (trace) {
		char line[96];
		int  l = snprintf(line, sizeof(line), "faults: op %llu%s%s\n",
		     (unsigned long long) n, *err ? " fails" : "",
		     *crash ? " crashes" : "");
		if (real_write(2, line, (size_t) l) < 0) {
			return;
		}
	}
}

static void
die(void)
{
	kill(getpid(), SIGKILL);
	for (;;) {
		pause();
	}
}

// do_write: a write of the watched file — count it, fail it, journal it,
// make it (off < 0: at the descriptor's position), crash after it.
static ssize_t
do_write(int fd, const struct iovec *iov, int n, off_t off)
{
	size_t total = 0;
	for (int i = 0; i < n; i++) {
		total += iov[i].iov_len;
	}
	pthread_mutex_lock(&mu);
	int  err, how;
	bool crash;
	op(&err, &how, &crash);
	bool half = err != 0 && how == FAULT_SHORT && total >= 2;
	if (err != 0 && !half && how != FAULT_WRITTEN) {
		pthread_mutex_unlock(&mu);
		errno = err;
		return (-1);
	}
	off_t at = off;
	if (at < 0) {
		at = (fcntl(fd, F_GETFL) & O_APPEND) ? lseek(fd, 0, SEEK_END)
		                                     : lseek(fd, 0, SEEK_CUR);
	}
	struct stat st;
	size_t      keep = total; // with a full disk: what fits in the file
	if (err == 0 && ctl != NULL && atomic_load(&ctl->full) &&
	    fstat(fd, &st) == 0 && (uint64_t) at + total > (uint64_t) st.st_size) {
		atomic_fetch_add(&ctl->injected, 1);
		if (at >= st.st_size) {
			pthread_mutex_unlock(&mu);
			errno = ENOSPC;
			return (-1);
		}
		keep = (size_t) (st.st_size - at);
		half = true;
	}
	struct iovec one[64];
	if (half) {
		atomic_fetch_add(&ctl->cut, 1);
		// what a filling filesystem does: the first bytes, then no more
		size_t want = keep < total ? keep : total / 2, got = 0;
		int    m    = 0;
		for (int i = 0; i < n && got < want && m < 64; i++, m++) {
			one[m]         = iov[i];
			if (one[m].iov_len > want - got) {
				one[m].iov_len = want - got;
			}
			got += one[m].iov_len;
		}
		iov   = one;
		n     = m;
		total = got;
	}
	if (trace) {
		char line[128];
		int  l = snprintf(line, sizeof(line), "faults: write at %lld, %zu "
		     "bytes, file %lld\n", (long long) at, total,
		     fstat(fd, &st) == 0 ? (long long) st.st_size : -1LL);
		if (real_write(2, line, (size_t) l) < 0) {
			abort();
		}
	}
	uint64_t s     = journal_write(fd, iov, n, at, total);
	bool     dsync = (fcntl(fd, F_GETFL) & O_DSYNC) == O_DSYNC;
	ssize_t  w     = off < 0 ? real_writev(fd, iov, n)
	                         : real_pwritev(fd, iov, n, off);
	int      saved = errno;
	if (err != 0 && how == FAULT_WRITTEN) {
		w     = -1; // in the page cache, and failed all the same
		saved = err;
	} else if (s != 0 && dsync && w == (ssize_t) total) {
		journal_durable(s);
	}
	if (crash) {
		die(); // the write is in the page cache, not known durable
	}
	pthread_mutex_unlock(&mu);
	errno = saved;
	return (w);
}

static int
do_sync(int fd, int (*real)(int))
{
	pthread_mutex_lock(&mu);
	int  err, how;
	bool crash;
	op(&err, &how, &crash);
	if (crash) {
		die(); // before the sync: nothing pending reached the disk
	}
	if (err != 0) {
		if (how == FAULT_WRITTEN) {
			real(fd); // what reached the disk is unknown: the
		}                 // journal stays as it is
		pthread_mutex_unlock(&mu);
		errno = err;
		return (-1);
	}
	int rc = real(fd);
	int saved = errno;
	if (rc == 0) {
		journal_synced();
		if (ctl != NULL) {
			atomic_fetch_add(&ctl->syncs, 1);
		}
	}
	pthread_mutex_unlock(&mu);
	errno = saved;
	return (rc);
}

/*
** {======================================================
** The interposed calls
** =======================================================
*/

ssize_t
write(int fd, const void *buf, size_t len)
{
	resolve();
	if (!watched(fd)) {
		return (real_write(fd, buf, len));
	}
	struct iovec v = { (void *) buf, len };
	return (do_write(fd, &v, 1, -1));
}

ssize_t
pwrite(int fd, const void *buf, size_t len, off_t off)
{
	resolve();
	if (!watched(fd)) {
		return (real_pwrite(fd, buf, len, off));
	}
	struct iovec v = { (void *) buf, len };
	return (do_write(fd, &v, 1, off));
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off)
    __attribute__((alias("pwrite")));

ssize_t
writev(int fd, const struct iovec *iov, int n)
{
	resolve();
	if (!watched(fd)) {
		return (real_writev(fd, iov, n));
	}
	return (do_write(fd, iov, n, -1));
}

ssize_t
pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
	resolve();
	if (!watched(fd)) {
		return (real_pwritev(fd, iov, n, off));
	}
	return (do_write(fd, iov, n, off));
}

ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t off)
    __attribute__((alias("pwritev")));

int
fsync(int fd)
{
	resolve();
	return (watched(fd) ? do_sync(fd, real_fsync) : real_fsync(fd));
}

int
fdatasync(int fd)
{
	resolve();
	return (watched(fd) ? do_sync(fd, real_fdatasync)
	                    : real_fdatasync(fd));
}

// With a full disk (or no_room), the watched file's filesystem has no room.
int
fstatvfs(int fd, struct statvfs *v)
{
	resolve();
	int rc = real_fstatvfs(fd, v);
	if (rc == 0 && ctl != NULL &&
	    (atomic_load(&ctl->full) || atomic_load(&ctl->no_room)) &&
	    watched(fd)) {
		v->f_bfree  = 0;
		v->f_bavail = 0;
	}
	return (rc);
}

/* }====================================================== */

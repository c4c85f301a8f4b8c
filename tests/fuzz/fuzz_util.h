// Helpers shared by the fuzz targets: an assertion that stops the fuzzer
// with its reason, and scratch folders (in /dev/shm when there is one, so
// that a target writing files per input does not wait on a disk).
#ifndef TESTS_FUZZ_UTIL_H
#define TESTS_FUZZ_UTIL_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FUZZ_ASSERT(x)                                                     \
	do {                                                               \
		if (!(x)) {                                                \
			fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", \
			    __FILE__, __LINE__, #x);                       \
			abort();                                           \
		}                                                          \
	} while (0)

// fuzz_tempdir makes a fresh folder $TMPDIR/choreo-fuzz-<what>-XXXXXX
// (TMPDIR unset: /dev/shm, else /tmp) and writes its path into buf.
static inline void
fuzz_tempdir(char *buf, size_t cap, const char *what)
{
	const char *t = getenv("TMPDIR");
	struct stat st;
	if (t == NULL || *t == '\0') {
		t = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) &&
		        access("/dev/shm", W_OK) == 0
		    ? "/dev/shm"
		    : "/tmp";
	}
	snprintf(buf, cap, "%s/choreo-fuzz-%s-XXXXXX", t, what);
	FUZZ_ASSERT(mkdtemp(buf) != NULL);
}

// fuzz_mkdir makes dir/name.
static inline void
fuzz_mkdir(const char *dir, const char *name)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	FUZZ_ASSERT(mkdir(p, 0700) == 0);
}

static inline int
fuzz_rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void) st, (void) flag, (void) ftw;
	return (remove(p));
}

// fuzz_rmtree removes dir and everything under it.
static inline void
fuzz_rmtree(const char *dir)
{
	nftw(dir, fuzz_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

#endif

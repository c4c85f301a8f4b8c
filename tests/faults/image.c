// The power-loss image: what a disk holds after the power goes, built from
// the file a killed process left (the page cache: every write it made) and
// the shim's journal of the writes not yet known durable. See faults.h.
//
// The model (SQLite's crash VFS, test6.c, at sector granularity):
//   - what was synced is on the disk: fsync/fdatasync returned, so every
//     write before it is there; an O_DSYNC write is there once it returned;
//   - of every other write, each 512-byte sector reached the disk or not,
//     independently (probability p), the older versions first — so a
//     sector holds its synced content or one of the versions written since,
//     never a mix inside a sector and never garbage (a sector is written
//     whole: the atomicity LMDB's meta page relies on);
//   - the file's size is the size it had at the last sync, grown only by
//     the writes that reached the disk.
// Building it: undo the journaled writes, newest first, with their old bytes
// (this gives the file as of the last sync), then redo the durable ones and
// the chosen sectors of the others, oldest first.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "faults.h"
#include "image.h"

typedef struct {
	pl_rec      r;
	const char *old, *new;
	bool        durable;
} rec;

static char *
slurp(const char *path, size_t *len, bool missing_ok)
{
	*len   = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		return (missing_ok && errno == ENOENT ? calloc(1, 1) : NULL);
	}
	struct stat st;
	if (fstat(fd, &st) != 0) {
		close(fd);
		return (NULL);
	}
	char  *buf = malloc((size_t) st.st_size + 1);
	size_t got = 0;
	while (buf != NULL && got < (size_t) st.st_size) {
		ssize_t r = read(fd, buf + got, (size_t) st.st_size - got);
		if (r <= 0) {
			break;
		}
		got += (size_t) r;
	}
	close(fd);
	*len = got;
	return (buf);
}

int
pl_image(const char *file, const char *journal, const char *out, double p,
    uint64_t *rng, pl_stats *st, char *why, size_t whylen)
{
	size_t flen, jlen;
	char  *f = slurp(file, &flen, false);
	char  *j = slurp(journal, &jlen, true);
	rec   *rs = NULL;
	size_t nr = 0, cap = 0;
	char  *img = NULL;
	int    rv  = -1;
	memset(st, 0, sizeof(*st));
	if (f == NULL || j == NULL) {
		snprintf(why, whylen, "cannot read %s or %s: %s", file, journal,
		    strerror(errno));
		goto out;
	}
	st->bytes_in = flen;
	// the records; a torn tail (killed while appending) describes a write
	// that was never made
	size_t   end = flen;
	uint64_t min_size = flen;
	for (size_t at = 0; at + sizeof(pl_rec) <= jlen;) {
		pl_rec r;
		memcpy(&r, j + at, sizeof(r));
		if (r.magic != FAULTS_MAGIC ||
		    (r.kind != PL_WRITE && r.kind != PL_DURABLE) ||
		    r.old_len > r.len) {
			snprintf(why, whylen, "%s: a damaged record at %zu",
			    journal, at);
			goto out;
		}
		size_t body = r.kind == PL_WRITE ? r.old_len + r.len : 0;
		if (at + sizeof(r) + body > jlen) {
			break;
		}
		if (r.kind == PL_DURABLE) {
			for (size_t i = nr; i-- > 0;) {
				if (rs[i].r.seq == r.seq) {
					rs[i].durable = true;
					break;
				}
			}
		} else {
			if (nr == cap) {
				cap     = cap ? cap * 2 : 64;
				rec *nx = realloc(rs, cap * sizeof(*rs));
				if (nx == NULL) {
					snprintf(why, whylen, "out of memory");
					goto out;
				}
				rs = nx;
			}
			rs[nr].r       = r;
			rs[nr].old     = j + at + sizeof(r);
			rs[nr].new     = rs[nr].old + r.old_len;
			rs[nr].durable = false;
			if (nr == 0) {
				min_size = r.old_size; // the size at the last sync
			}
			if (r.off + r.len > end) {
				end = r.off + r.len;
			}
			nr++;
		}
		at += sizeof(r) + body;
	}
	if ((img = calloc(1, end > 0 ? end : 1)) == NULL) {
		snprintf(why, whylen, "out of memory");
		goto out;
	}
	memcpy(img, f, flen);
	// undo, newest first: what the file held at the last sync
	for (size_t i = nr; i-- > 0;) {
		const pl_rec *r = &rs[i].r;
		memcpy(img + r->off, rs[i].old, r->old_len);
		memset(img + r->off + r->old_len, 0, r->len - r->old_len);
	}
	size_t size = min_size;
	memset(img + size, 0, end - size);
	// redo, oldest first: the durable writes, and the sectors that made it
	for (size_t i = 0; i < nr; i++) {
		const pl_rec *r = &rs[i].r;
		if (rs[i].durable) {
			st->durable++;
			memcpy(img + r->off, rs[i].new, r->len);
			if (r->off + r->len > size) {
				size = r->off + r->len;
			}
			continue;
		}
		st->writes++;
		for (uint64_t a = r->off; a < r->off + r->len;) {
			uint64_t b = (a / PL_SECTOR + 1) * PL_SECTOR;
			if (b > r->off + r->len) {
				b = r->off + r->len;
			}
			st->sectors++;
			if (pl_unit(rng) < p) {
				st->applied++;
				memcpy(img + a, rs[i].new + (a - r->off), b - a);
				if (b > size) {
					size = b;
				}
			}
			a = b;
		}
	}
	int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		snprintf(why, whylen, "%s: %s", out, strerror(errno));
		goto out;
	}
	size_t put = 0;
	while (put < size) {
		ssize_t w = write(fd, img + put, size - put);
		if (w <= 0) {
			break;
		}
		put += (size_t) w;
	}
	close(fd);
	if (put != size) {
		snprintf(why, whylen, "%s: short write", out);
		goto out;
	}
	st->bytes_out = size;
	rv            = 0;
out:
	free(f);
	free(j);
	free(rs);
	free(img);
	return (rv);
}

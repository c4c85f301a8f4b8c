// The power-loss image: what a disk holds after the power goes, built from
// a killed process's file and the shim's journal (faults.h). See image.c.
#ifndef TESTS_FAULTS_IMAGE_H
#define TESTS_FAULTS_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#define PL_SECTOR 512 // the unit a disk writes whole or not at all

typedef struct {
	uint64_t writes;    // writes not known durable at the crash
	uint64_t durable;   // O_DSYNC writes among the journaled ones
	uint64_t sectors;   // sectors those writes touched
	uint64_t applied;   // of which the "disk" got
	uint64_t bytes_in;  // the file as the killed process left it
	uint64_t bytes_out; // the image
} pl_stats;

// pl_image writes to out what the disk would hold after a power loss at
// the moment the process that wrote file (with journal) was killed: the
// state as of the last sync, every durable write, and of the other
// journaled writes each sector independently with probability p, in the
// order they were written (so a sector holds one of the versions it had).
// 0, or -1 with why filled.
int pl_image(const char *file, const char *journal, const char *out,
    double p, uint64_t *rng, pl_stats *st, char *why, size_t whylen);

// A small xorshift generator, so a trial is replayed from its seed.
static inline uint64_t
pl_rand(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return (*s = x);
}

static inline double
pl_unit(uint64_t *s)
{
	return ((double) (pl_rand(s) >> 11) / (double) (1ull << 53));
}

#endif

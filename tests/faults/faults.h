// Storage fault injection: what the LD_PRELOAD shim (shim.c) and the tests
// that drive it share.
//
// The shim watches one file, the store's data.mdb (CHOREO_FAULTS_FILE), and
// counts every write to it (write, pwrite, writev, pwritev) and every
// fsync/fdatasync of it as one "op". Through a control block in a file that
// the test maps too (CHOREO_FAULTS_CTL) the test can
//   - fail ops fail_from..fail_to with an errno (K4: I/O errors), as `how`
//     says;
//   - play a full disk: writes past the end of the file fail, fstatvfs of
//     it says there is no room (full), or only the latter (no_room);
//   - kill the process with SIGKILL at op crash_at (K2: power loss).
// With CHOREO_FAULTS_JOURNAL set it also journals every write since the
// last sync (K2), from which pl_image() builds what a power loss would
// leave on disk (image.h). Nothing is injected or journaled for other files.
// CHOREO_FAULTS_TRACE=1 prints each op to standard error.
#ifndef TESTS_FAULTS_H
#define TESTS_FAULTS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FAULTS_MAGIC 0x43484654u // "CHFT"

typedef struct {
	uint32_t         magic;
	_Atomic uint64_t ops;       // ops on the watched file so far
	_Atomic uint64_t fail_from; // first op to fail (0: none)
	_Atomic uint64_t fail_to;   // last op to fail (UINT64_MAX: for ever)
	_Atomic int      err;       // the errno of a failed op
	_Atomic int      how;       // how a failing op fails
	_Atomic uint64_t injected;  // ops failed so far
	_Atomic uint64_t crash_at;  // SIGKILL at this op (0: never)
	_Atomic uint64_t syncs;     // fsync/fdatasync of the file that succeeded
	_Atomic int      full;      // a full disk: a write past the end of
	                            // the file fails with ENOSPC, cut short
	                            // at the end when it starts before it
	_Atomic uint64_t cut;       // writes the shim cut short
	_Atomic int      no_room;   // fstatvfs says the disk has no room
} faults_ctl;

// faults_map maps (creating when create) the control block at path, shared
// with every process that maps it: NULL on failure.
faults_ctl *faults_map(const char *path, bool create);
void        faults_unmap(faults_ctl *c);

// How a failing op fails.
enum {
	FAULT_UNWRITTEN, // nothing is written
	FAULT_SHORT,     // a write writes half its bytes and returns that
	                 // count, as a filesystem with no room left does with
	                 // a write that needs new blocks (a sync just fails)
	FAULT_WRITTEN,   // the bytes reach the page cache (a sync runs) and
	                 // the call fails all the same, as when the device
	                 // fails the writeback of an O_DSYNC write or fsync
};

// faults_arm fails the next op after n more (n = 1: the very next one),
// once or for ever, with err, as how says; faults_clear stops failing.
void faults_arm(faults_ctl *c, uint64_t n, bool persistent, int err,
    int how);
void faults_clear(faults_ctl *c);

/*
** The power-loss journal: records appended before each write to the
** watched file reaches the kernel, emptied once an fsync/fdatasync of the
** file returns. A write record carries the file's bytes before the write
** (what undoes it) and the bytes written (what redoes it). A write through
** an O_DSYNC descriptor is durable once the call returns: a DURABLE record
** naming its sequence number follows it then. So at any moment the
** journal lists exactly the writes not known to be on the disk, oldest
** first, and the file itself (the page cache, which a killed process does
** not lose) holds all of them.
*/

enum { PL_WRITE = 1, PL_DURABLE = 2 };

typedef struct {
	uint32_t magic; // FAULTS_MAGIC
	uint32_t kind;  // PL_WRITE or PL_DURABLE
	uint64_t seq;   // the write's number (a DURABLE names its write)
	uint64_t off;   // where it writes
	uint64_t len;   // bytes written (0 for DURABLE)
	uint64_t old_size; // the file's size before the write
	uint64_t old_len;  // old bytes that follow (<= len: the rest was
	                   // past the end of the file)
} pl_rec;

#endif

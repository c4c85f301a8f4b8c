// What the fault tests share: the daemon started with the fault shim, and a
// full read of a store.
#ifndef TESTS_FAULTS_FSUPPORT_H
#define TESTS_FAULTS_FSUPPORT_H

#include <stdbool.h>
#include <stddef.h>

#include "faults.h"
#include "support.h"

// fd_start starts `choreo serve` (d->extra as its flags) with the shim
// preloaded ($CHOREO_FAULTS_PRELOAD) and watching d->data/data.mdb: a
// fresh data dir unless keep, the control block d->data/faults.ctl (mapped
// into *ctl, counters zeroed), and the power-loss journal d->data/journal
// when journal. The flags and the environment go to this start only.
void fd_start(daemon_t *d, faults_ctl **ctl, bool keep, bool journal);
// fd_path: d->data/name.
const char *fd_path(const daemon_t *d, const char *name);

// store_check reads all of the LMDB store in dir, in a child process (a
// page past the end of the file is a SIGBUS): the free list, the main
// database, every named database entry by entry against its own entry
// count, and every customer state and dedup record as msgpack. 0 when it
// is whole, else -1 with what is wrong in why. No other process may have
// the store open (it reads without the lock file).
int store_check(const char *dir, char *why, size_t len);

// ev_json: an event of the e2e shop for customer c with id, as JSON.
const char *ev_json(char *buf, size_t len, const char *c, const char *id);
// counter: customer c's "events" counter (0 when it is not found).
long long counter(daemon_t *d, const char *c);

#endif

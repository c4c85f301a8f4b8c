// choreo — the LMDB store: one environment per shard.
//
// Named databases: customers (business \0 customer → msgpack state), dedup
// (business \0 id → u64 time ‖ reply), models, stats, timers and meta
// (schema version). Write transactions belong to the engine thread that
// owns the store; MDB_MAP_FULL comes back as CH_ESTORAGEFULL so the engine
// can abort, ch_store_grow, and replay the batch; ch_store_faults says
// when that would not help (a full disk, a dead environment).
#ifndef CORE_STORE_H
#define CORE_STORE_H

#include <lmdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"

typedef struct ch_store ch_store;

enum ch_db {
	CH_DB_CUSTOMERS,
	CH_DB_DEDUP,
	CH_DB_MODELS,
	CH_DB_STATS,
	CH_DB_TIMERS,
	CH_DB_META,
	CH_DB_DEDUP_AGE, // commit time (8 bytes, big-endian) ‖ dedup key
	CH_DB_COUNT,
};

typedef struct {
	bool   sync_full; // fsync at every commit (else MDB_NOSYNC)
	size_t max_size;  // the map never grows past this
	size_t init_size; // first map size (0: 64 MiB, capped by max_size)
} ch_store_opts;

// ch_store_open opens (creating if needed) the environment in dir.
// Returns CH_OK, or CH_EINTERNAL with why filled.
int  ch_store_open(ch_store **out, const char *dir, const ch_store_opts *o,
     char *why, size_t whylen);
void ch_store_close(ch_store *s);

MDB_env *ch_store_env(ch_store *s);
MDB_dbi  ch_store_dbi(ch_store *s, enum ch_db db);
size_t   ch_store_map_size(ch_store *s);

// ch_store_begin starts a write transaction, nested in parent when given.
int ch_store_begin(ch_store *s, MDB_txn *parent, MDB_txn **txn);
// ch_store_commit commits (and frees) txn: CH_OK, CH_ESTORAGEFULL on
// MDB_MAP_FULL or a full disk (ENOSPC, EDQUOT), CH_EINTERNAL otherwise
// (logged). Either way nothing of txn is applied.
int  ch_store_commit(ch_store *s, MDB_txn *txn);
void ch_store_abort(MDB_txn *txn);

// What the failures of the running top-level transaction (since its
// ch_store_begin) mean, for the engine to answer and recover:
//   CH_STORE_DISK_FULL  the disk is full (ENOSPC, EDQUOT, or EIO with
//                       less than 64 MiB free: LMDB reports a write the
//                       filesystem cut short as EIO): growing the map
//                       will not help;
//   CH_STORE_IO_ERROR   EIO on a disk with room: worth one replay;
//   CH_STORE_DEAD       a write of the meta page failed: LMDB refuses
//                       every transaction (MDB_PANIC) until the
//                       environment is opened again, by a new process.
//                       It stays set.
enum { CH_STORE_DISK_FULL = 1, CH_STORE_IO_ERROR = 2, CH_STORE_DEAD = 4 };
unsigned ch_store_faults(const ch_store *s);

// ch_store_grow doubles the map, up to max_size. No transaction of the
// process may be open. CH_OK, or CH_ESTORAGEFULL at the cap or when the
// disk, not the map, is full.
int ch_store_grow(ch_store *s);

// Keys that join fields join them with NUL bytes, and every field but the
// last is text without NUL (the codec refuses a NUL in a request's fields,
// the prelude in a rule's names), so each key reads back one way only:
// business \0 customer, business \0 id, business \0 action \0 channel,
// due ‖ business \0 customer \0 timer name, business \0 counter name
// (whose fields are names too). docs/architecture.md, storage layout.

// ch_store_key builds business \0 rest into buf (at least 64+1+256 bytes).
size_t ch_store_key(char *buf, ch_str business, ch_str rest);
// Keys that sort by time start with 8 bytes of big-endian milliseconds.
static inline void
ch_be64_put(void *buf, int64_t v)
{
	unsigned char *p = buf;
	for (int i = 0; i < 8; i++) {
		p[i] = (unsigned char) ((uint64_t) v >> (56 - 8 * i));
	}
}

static inline int64_t
ch_be64_get(const void *buf)
{
	const unsigned char *p = buf;
	uint64_t             v = 0;
	for (int i = 0; i < 8; i++) {
		v = v << 8 | p[i];
	}
	return ((int64_t) v);
}

// ch_timer_key builds a timers key: due (8 bytes, big-endian) ‖ business
// \0 customer \0 name; 0 when it does not fit in cap.
#define CH_TIMER_KEY_MAX (8 + 64 + 1 + 256 + 1 + 128)
size_t ch_timer_key(char *buf, size_t cap, int64_t due, ch_str business,
    ch_str customer, ch_str name);

// ch_store_get: CH_OK (val borrowed until the txn's next write or end),
// CH_ENOTFOUND, or CH_EINTERNAL.
int ch_store_get(ch_store *s, MDB_txn *txn, enum ch_db db, const void *key,
    size_t klen, MDB_val *val);
// ch_store_put: CH_OK, CH_ESTORAGEFULL or CH_EINTERNAL.
int ch_store_put(ch_store *s, MDB_txn *txn, enum ch_db db, const void *key,
    size_t klen, const void *val, size_t vlen);
// ch_store_del: CH_OK, CH_ENOTFOUND or CH_EINTERNAL.
int ch_store_del(ch_store *s, MDB_txn *txn, enum ch_db db, const void *key,
    size_t klen);

// ch_parse_size reads "1048576", "64M", "2G"... Returns 0 when invalid.
size_t ch_parse_size(const char *s);

// ch_store_mkdirs creates dir and its parents as needed: 0, or -1 with
// errno set.
int ch_store_mkdirs(const char *dir);

#endif

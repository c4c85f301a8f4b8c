// choreo — the counters the engine keeps, served on /metrics.
//
// Plain atomics, written by the engine and server threads with relaxed
// ordering and read by the HTTP thread.
#ifndef CORE_METRICS_H
#define CORE_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "err.h"

#define CH_NOPS (CH_OP_ROLLBACK + 1)

typedef struct {
	atomic_uint_fast64_t requests[CH_NOPS];   // by op, as received
	atomic_uint_fast64_t errors[CH_NERR];     // replies by error code
	atomic_uint_fast64_t events;              // events applied
	atomic_uint_fast64_t duplicates;          // events answered from dedup
	atomic_uint_fast64_t dedup_expired;       // dedup records past the window, removed
	atomic_uint_fast64_t timers_fired;        // timers run as events
	atomic_uint_fast64_t decisions;           // actions returned
	atomic_uint_fast64_t emitted;             // c:emit messages published
	atomic_uint_fast64_t batches;             // group commits
	atomic_uint_fast64_t batch_jobs;          // jobs in those commits
	atomic_uint_fast64_t commit_us;           // time spent committing
	atomic_uint_fast64_t pull_malformed;      // bad messages on pull
	atomic_uint_fast64_t pull_failed;         // pulled events that failed
	atomic_uint_fast64_t published;           // pub messages sent
	atomic_uint_fast64_t map_grows;           // LMDB map resizes
	atomic_int_fast64_t  queue_depth;         // jobs waiting, all shards
	atomic_uint_fast64_t reloads;             // rule reloads done
} ch_metrics;

extern ch_metrics ch_m;

#define CH_COUNT(field, n) \
	atomic_fetch_add_explicit(&ch_m.field, (n), memory_order_relaxed)

// ch_metrics_render writes the Prometheus text exposition into buf and
// returns its length (truncated to cap).
size_t ch_metrics_render(char *buf, size_t cap, int shards, size_t map_bytes);

#endif

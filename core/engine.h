// choreo — the engine: one thread per shard that owns the shard's LMDB
// write transaction and its Lua states.
//
// nng callbacks decode a request and submit a job. The engine drains its
// queue in batches (group commit): one write transaction per batch, one
// nested transaction per job, so a failing rule rolls back only its own
// event; then it commits, publishes what the rules emitted, and calls every
// job's done callback, which sends the reply. A reply therefore always
// follows the commit of its event.
#ifndef CORE_ENGINE_H
#define CORE_ENGINE_H

#include <msgpack.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "codec.h"
#include "store.h"

typedef struct ch_engine ch_engine;
typedef struct ch_job    ch_job;
typedef struct ch_rules  ch_rules;

// done runs on the engine thread once the job's reply is final (after
// commit for writes). It must not block.
typedef void (*ch_job_done)(ch_job *job);

struct ch_job {
	ch_job         *next;    // queue link (engine's)
	const ch_req   *req;     // what to run (borrowed)
	ch_job_done     done;
	void           *owner;   // the submitter's
	uint32_t        index;   // the submitter's (e.g. batch slot)
	int             err;     // CH_OK or the error of the reply
	int             nactions; // actions the reply returns (engine writes)
	bool            duplicate; // answered from the dedup window
	msgpack_sbuffer reply;   // the reply map (engine writes)
	msgpack_sbuffer emits;   // pub messages: u32 len ‖ topic \0 map
	// The reply must fit the receiver's --max-message: a job's reply may
	// be at most reply_limit bytes (0: no limit), and the members of a
	// batch share reply_budget instead (the batch reply is one message).
	// A reply that does not fit is replaced by reply_too_large, and the
	// event is rolled back.
	size_t          reply_limit;
	_Atomic size_t *reply_budget;
	size_t          reply_taken; // what this job took from the budget
};

// Every member of a batch has this much of the batch's reply set aside for
// the error that says its own reply did not fit; a longer reply takes the
// rest from the shared budget. A batch of n events therefore needs
// CH_BATCH_REPLY_HEAD + n * CH_REPLY_RESERVE bytes at least.
#define CH_REPLY_RESERVE 256
#define CH_BATCH_REPLY_HEAD 32

// ch_job_reply_fits: whether j's reply fits, taking from the batch's
// budget when it has one. Thread-safe across a batch's members.
bool ch_job_reply_fits(ch_job *j);
// ch_job_reply_too_large replaces j's reply with reply_too_large: what
// would not fit, its size, and whether an event was rolled back for it (the
// message stays within CH_REPLY_RESERVE).
void ch_job_reply_too_large(ch_job *j, const char *what, size_t size,
    bool rolled_back);

// ch_job_init/fini manage the job's buffers.
void ch_job_init(ch_job *j);
void ch_job_fini(ch_job *j);

typedef void (*ch_publish_fn)(void *arg, const void *msg, size_t len);

typedef struct {
	int         shard;
	const char *rules_dir;
	ch_rules   *rules;        // taken over by the engine
	ch_store   *store;        // borrowed
	int         queue_cap;    // beyond it, submit says overloaded
	int         batch_max;    // jobs per group commit
	int64_t     dedup_window_ms;
	ch_publish_fn publish;    // for c:emit; called on the engine thread
	void         *publish_arg;
	int64_t (*clock)(void);   // ms since the epoch; NULL: the real clock
	const char *admin_token;  // forget needs it; NULL: none
	ch_store  **all_stores;   // every shard's store, for stats; NULL: store
	int         nstores;
	size_t      max_message;  // an emit larger than this is refused; 0: none
} ch_engine_opts;

int  ch_engine_start(ch_engine **out, const ch_engine_opts *o);
// ch_engine_submit queues a job: CH_OK, or CH_EOVERLOADED when the queue is
// full (unless force). Thread-safe.
int  ch_engine_submit(ch_engine *e, ch_job *j, bool force);
// ch_engine_stop runs every job already queued, then joins the thread.
void ch_engine_stop(ch_engine *e);
void ch_engine_free(ch_engine *e);

// A rule set handed to an engine: fresh (taken over), and for a rollback
// the business and the stored version to put in it.
typedef struct {
	ch_rules   *fresh;
	const char *rollback_business;
	const char *rollback_version;
	int         rc;
	char        why[300];
} ch_swap;

// ch_engine_swap_rules hands a freshly loaded rule set to the engine, which
// puts it in service between two batches (businesses that failed to load
// keep their old version; quarantined versions give way to the newest good
// one), and returns once it has: CH_OK, or the rollback's error (why).
int ch_engine_swap_rules(ch_engine *e, ch_swap *sw);

// ch_engine_run_one runs one job synchronously on the caller's thread, in
// its own transaction (for tools and tests; never while the thread runs).
void ch_engine_run_one(ch_engine *e, ch_job *j);

// ch_engine_fire_timers runs the timers due by the engine's clock (at most
// CH_TIMER_BATCH) as events, in one transaction; returns how many were due.
// The engine thread calls it every CH_TIMER_TICK_MS; tools with a virtual
// clock call it after moving the clock (never while the thread runs).
#define CH_TIMER_BATCH 64
#define CH_TIMER_TICK_MS 100
int ch_engine_fire_timers(ch_engine *e);
// ch_engine_run_timers_until, for tools whose clock function returns
// *vclock: fires every timer due up to target in due order, with *vclock
// at each one's due time (so timers set by timers fire too), then sets
// *vclock = target.
void ch_engine_run_timers_until(ch_engine *e, int64_t *vclock,
    int64_t target);

// ch_engine_new builds an engine without starting its thread; ch_engine_run
// starts it (ch_engine_start does both).
int  ch_engine_new(ch_engine **out, const ch_engine_opts *o);
int  ch_engine_run(ch_engine *e);
void ch_engine_set_publish_arg(ch_engine *e, void *arg);

// Helpers to extend a packed reply map with extra fields.
// ch_mp_map_reheader copies src (a packed map) into out with its count
// raised by extra; the caller then packs extra key/value pairs.
int ch_mp_map_reheader(msgpack_sbuffer *out, const void *src, size_t len,
    uint32_t extra);

#endif

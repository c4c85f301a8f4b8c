// bench_load's shared parts: the options, the seeded event stream, the
// latency histogram, per-worker statistics and a small msgpack reader.
// load.c holds main, the options, the event stream and the report;
// load_util.c the histogram, the msgpack reader, TCP and buffers;
// load_choreo.c (nng), load_sp.c (SP by hand), load_redis.c and
// load_tarantool.c drive the targets.
#ifndef CH_BENCH_LOAD_H
#define CH_BENCH_LOAD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <msgpack.h>

#define LD_MAX_TYPES 16
#define LD_ERR_MAX 16
#define LD_POP_BATCH 1000 // customers per populate batch / pipeline

typedef enum { LD_CHOREO, LD_REDIS, LD_TARANTOOL } ld_target;
// choreo req: nng callbacks, a thread per nng context, or SP by hand
typedef enum { LD_IO_CALLBACK, LD_IO_THREADS, LD_IO_RAW } ld_io;

typedef struct {
	ld_target   target;
	const char *addr;
	const char *business;
	const char *scripts; // redis: the folder of redis_event.lua ...
	const char *json;
	const char *sub;     // choreo push: count decisions on this pub URL
	bool        populate;
	bool        push;    // choreo --mode push
	ld_io       io;      // choreo --io
	bool        quiet;
	uint64_t    customers;
	bool        zipf;
	double      zipf_s;
	int         clients;
	int         depth;
	uint64_t    events;
	double      duration; // seconds; > 0 replaces events
	uint64_t    warmup;
	double      rate;     // push: events/s over all clients (0: no pacing)
	uint64_t    seed;
	int         timeout_ms;
	// the mix: ntypes names with cumulative weights out of wsum
	int         ntypes;
	char        types[LD_MAX_TYPES][64];
	bool        is_response[LD_MAX_TYPES];
	uint32_t    cum[LD_MAX_TYPES];
	uint32_t    wsum;
	// zipf: the cumulative distribution over ranks 1..customers
	double     *zipf_cdf;
} ld_cfg;

extern ld_cfg ld;

/*
** {======================================================
** Time
** =======================================================
*/

int64_t ld_now_ns(void);
void    ld_sleep_ns(int64_t ns);

/*
** {======================================================
** The event stream: event k is a pure function of (seed, k)
** =======================================================
*/

static const char *const ld_outcomes[3] = { "accepted", "rejected",
	"ignored" };

typedef struct {
	uint64_t customer;
	int      type;    // index into ld.types
	int      action;  // 1..20, responses only (else 0)
	int      outcome; // index into ld_outcomes, responses only
} ld_event;

void ld_event_gen(uint64_t k, ld_event *e);

// The ten attributes of customer i (tests/bench/reference/README.md).
typedef struct {
	int         age, tenure, score;
	const char *segment, *region, *plan, *country, *language, *device;
	bool        newsletter;
} ld_profile;

void ld_profile_of(uint64_t i, ld_profile *p);

/*
** {======================================================
** Latency histogram: log-linear, 1 ns .. 60 s, < 1 % relative error
** =======================================================
*/

#define LD_H_SUB 128                     // sub-buckets per power of two
#define LD_H_BUCKETS (2 * LD_H_SUB + 28 * LD_H_SUB)
#define LD_H_MAX_NS ((int64_t) 60 * 1000000000)

typedef struct {
	uint64_t n[LD_H_BUCKETS];
	uint64_t total;
	int64_t  max_ns;
} ld_hist;

void    ld_hist_add(ld_hist *h, int64_t ns);
void    ld_hist_merge(ld_hist *into, const ld_hist *h);
int64_t ld_hist_pct(const ld_hist *h, double pct); // ns

/*
** {======================================================
** What one worker measured
** =======================================================
*/

typedef struct {
	char     code[48];
	char     first[160]; // the first message seen with that code
	uint64_t n;
} ld_err;

typedef struct {
	ld_hist  h;
	uint64_t events;  // measured completions (replies and failures)
	int64_t  t_last;  // when the last measured completion arrived
	int      nerr;
	ld_err   err[LD_ERR_MAX];
} ld_stats;

// Event (or populate unit) k of nevents events completed at t1; its
// latency t1 - t0 is recorded unless t0 < 0.
void ld_stats_done(ld_stats *s, uint64_t k, int64_t t0, int64_t t1,
    uint64_t nevents);
// Counts n failures of event (or populate unit) k under code; msg may be
// NULL. Failures of warmup events are not counted.
void ld_stats_err(ld_stats *s, uint64_t k, const char *code, size_t codelen,
    const char *msg, size_t msglen, uint64_t n);

/*
** {======================================================
** The run: workers take event indices from one counter
** =======================================================
*/

typedef struct {
	_Atomic uint64_t next;
	uint64_t         limit;   // warmup + events (or units), UINT64_MAX: time
	_Atomic int64_t  t_start; // first measured event taken (0: not yet)
	_Atomic int64_t  t_end;   // duration mode: no new event after this
	_Atomic uint64_t done;    // completions, for progress
	_Atomic bool     abort;   // a worker hit a fatal failure
	int64_t          t_first; // when the workers were started
} ld_run;

extern ld_run ld_r;

// ld_take gives the next index to send, or false when the run is over.
bool ld_take(uint64_t *k);
static inline bool
ld_measured(uint64_t k)
{
	return (ld.populate || k >= ld.warmup);
}
// Populate: unit k is customers [k*LD_POP_BATCH, min(N, (k+1)*LD_POP_BATCH)).
uint64_t ld_unit_size(uint64_t k);

/*
** {======================================================
** The targets: each runs the whole measurement, filling stats
** =======================================================
*/

typedef struct {
	ld_stats *st;       // one per worker
	int       nst;
	const char *note;   // a line for the report, or NULL
	uint64_t  received; // push with --sub: decisions seen
	int64_t   t_recv;   // ... the last one at
	bool      no_latency;
} ld_result;

// 0 on success; otherwise the run could not be set up (message printed).
int ld_run_choreo(ld_result *res);
int ld_run_redis(ld_result *res);
int ld_run_tarantool(ld_result *res);

// choreo's requests and replies (load_choreo.c): event k, populate unit k
// as one batch op, and counting a reply (a batch's results one by one).
void ld_choreo_event(msgpack_packer *pk, uint64_t k);
void ld_choreo_batch(msgpack_packer *pk, uint64_t k);
void ld_choreo_reply(ld_stats *st, uint64_t k, const void *p, size_t len,
    int64_t t0, int64_t t1);

// SP by hand (load_sp.c): a TCP connection to ld.addr (tcp://host:port)
// speaking protocol proto (REQ 0x30, PUSH 0x50) to peer (REP 0x31, PULL
// 0x51); -1 and a message on failure.
int  ld_sp_connect(unsigned char proto, unsigned char peer);
// Ends the run with a message naming what failed (errno, if set).
void ld_sp_fatal(const char *what);
void ld_put_be(unsigned char *p, uint64_t v, int n);
// The closed loop over a hand-written REQ (--io raw).
int  ld_run_sp_req(ld_result *res);

// Waits for the workers (done() true), printing progress unless quiet.
void ld_wait(bool (*done)(void *), void *arg);
// ld_run_threads starts fn on each of n items (item i at items + i * size),
// shows progress until every one has called ld_thread_done, and joins them.
void ld_run_threads(int n, void *(*fn)(void *), void *items, size_t size);
void ld_thread_done(void);
void ld_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
** {======================================================
** A msgpack reader over a buffer, without allocation
** =======================================================
*/

typedef struct {
	const uint8_t *p, *end;
	bool           bad;
} ld_mp;

void ld_mp_init(ld_mp *r, const void *p, size_t n);
bool ld_mp_map(ld_mp *r, uint32_t *n);
bool ld_mp_array(ld_mp *r, uint32_t *n);
bool ld_mp_str(ld_mp *r, const char **s, uint32_t *n);
bool ld_mp_bool(ld_mp *r, bool *b);
bool ld_mp_uint(ld_mp *r, uint64_t *v);
bool ld_mp_skip(ld_mp *r);
// The string s (n bytes) equals the C string key.
bool ld_mp_eq(const char *s, uint32_t n, const char *key);

/*
** {======================================================
** Blocking TCP for redis and tarantool
** =======================================================
*/

// Connects to host:port with TCP_NODELAY; -1 and a message on failure.
int  ld_tcp_connect(const char *addr, int timeout_ms);
bool ld_write_all(int fd, const void *p, size_t n);

// A growable byte buffer, reused between requests.
typedef struct {
	char  *p;
	size_t off, n, cap; // unread bytes are p[off..n)
} ld_buf;

void ld_buf_reserve(ld_buf *b, size_t extra);
void ld_buf_put(ld_buf *b, const void *p, size_t n);
void ld_buf_free(ld_buf *b);
// Reads more from fd into b (at least 1 byte); false on EOF or error.
bool ld_buf_fill(ld_buf *b, int fd);
// Drops the first n unread bytes.
void ld_buf_consume(ld_buf *b, size_t n);
int  ld_msgpack_write(void *data, const char *buf, size_t len);

#endif

// bench_load: sends the reference workload (tests/bench/reference/README.md)
// to choreo, to Redis 7 running tests/bench/peers/redis_*.lua, or to
// Tarantool running the peer procedures, and measures throughput and
// latency. The event stream is a pure function of --seed, so every target
// gets the same events.
//
//   build/tests/bench_load --populate --customers 100000
//   build/tests/bench_load --clients 16 --depth 16 --events 60000
//   build/tests/bench_load --target redis --addr 127.0.0.1:6379 ...
//
// Closed loop: every connection keeps --depth requests outstanding (choreo:
// one nng REQ socket per client with depth contexts, or with --io raw the
// same SP protocol by hand, which costs the client a third of the CPU;
// redis: pipelining; tarantool: pipelining matched by sync). Open loop
// (choreo --mode push): events at --rate over PUSH, reporting the rate
// achieved; --sub URL counts the decisions coming back on pub (pub drops
// what a slow subscriber cannot take, so this undercounts under load).
//
// Each request's latency, from just before its send to its reply, goes to
// a log-linear histogram per worker (< 1 % error, 1 ns .. 60 s). Requests
// and replies are built and read in reused buffers: no allocation per
// request (except inside nng, which owns a message per send).
//
// Exit status: 0; 1 when more than 1 % of the events failed or the run was
// cut short; 2 when the target could not be reached or set up.
#include "load.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

ld_cfg ld;
ld_run ld_r;

/*
** {======================================================
** Time
** =======================================================
*/

int64_t
ld_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec);
}

void
ld_sleep_ns(int64_t ns)
{
	if (ns <= 0) {
		return;
	}
	struct timespec ts = { (time_t) (ns / 1000000000), (long) (ns % 1000000000) };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

void
ld_info(const char *fmt, ...)
{
	if (ld.quiet) {
		return;
	}
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/*
** {======================================================
** The event stream
** =======================================================
*/

#define GOLDEN 0x9e3779b97f4a7c15ULL

static uint64_t
mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return (z ^ (z >> 31));
}

// below(r, n): r scaled to [0, n)
static uint64_t
below(uint64_t r, uint64_t n)
{
	return ((uint64_t) (((unsigned __int128) r * n) >> 64));
}

// Event k draws four numbers of a splitmix64 sequence seeded by --seed:
// the (4k+1)th .. (4k+4)th. No state, so any thread can make any event.
void
ld_event_gen(uint64_t k, ld_event *e)
{
	uint64_t base = mix64(ld.seed + GOLDEN) + 4 * k * GOLDEN;
	uint64_t r0   = mix64(base + 1 * GOLDEN);
	uint64_t r1   = mix64(base + 2 * GOLDEN);
	uint64_t r2   = mix64(base + 3 * GOLDEN);
	uint64_t r3   = mix64(base + 4 * GOLDEN);
	if (ld.zipf_cdf != NULL) {
		double   u  = (double) (r0 >> 11) * 0x1p-53;
		uint64_t lo = 0, hi = ld.customers - 1;
		while (lo < hi) { // the first rank whose cdf exceeds u
			uint64_t mid = lo + (hi - lo) / 2;
			if (ld.zipf_cdf[mid] > u) {
				hi = mid;
			} else {
				lo = mid + 1;
			}
		}
		e->customer = lo;
	} else {
		e->customer = below(r0, ld.customers);
	}
	uint32_t w = (uint32_t) below(r1, ld.wsum);
	e->type    = 0;
	while (e->type < ld.ntypes - 1 && w >= ld.cum[e->type]) {
		e->type++;
	}
	e->action  = 0;
	e->outcome = 0;
	if (ld.is_response[e->type]) {
		e->action     = 1 + (int) below(r2, 20);
		uint64_t o    = below(r3, 10); // 30 % / 40 % / 30 %
		e->outcome    = o < 3 ? 0 : o < 7 ? 1 : 2;
	}
}

void
ld_profile_of(uint64_t i, ld_profile *p)
{
	static const char *const seg[3]  = { "gold", "silver", "bronze" };
	static const char *const reg[3]  = { "EU", "US", "APAC" };
	static const char *const plan[4] = { "free", "basic", "pro", "team" };
	static const char *const ctry[3] = { "DE", "US", "SG" };
	static const char *const lang[3] = { "de", "en", "en" };
	static const char *const dev[2]  = { "web", "app" };
	p->age        = (int) (16 + i % 60);
	p->segment    = seg[i % 3];
	p->region     = reg[(i / 3) % 3];
	p->plan       = plan[i % 4];
	p->tenure     = (int) (i % 120);
	p->country    = ctry[(i / 3) % 3];
	p->language   = lang[(i / 3) % 3];
	p->device     = dev[i % 2];
	p->newsletter = i % 2 == 0;
	p->score      = (int) (i % 1000);
}

static bool
zipf_init(void)
{
	ld.zipf_cdf = malloc(ld.customers * sizeof(double));
	if (ld.zipf_cdf == NULL) {
		return (false);
	}
	double sum = 0;
	for (uint64_t r = 0; r < ld.customers; r++) {
		sum += pow((double) (r + 1), -ld.zipf_s);
		ld.zipf_cdf[r] = sum;
	}
	for (uint64_t r = 0; r < ld.customers; r++) {
		ld.zipf_cdf[r] /= sum;
	}
	ld.zipf_cdf[ld.customers - 1] = 1.0;
	return (true);
}

/*
** {======================================================
** Statistics and the run
** =======================================================
*/

void
ld_stats_done(ld_stats *s, uint64_t k, int64_t t0, int64_t t1,
    uint64_t nevents)
{
	atomic_fetch_add_explicit(&ld_r.done, nevents, memory_order_relaxed);
	if (!ld_measured(k)) {
		return;
	}
	if (t0 >= 0) {
		ld_hist_add(&s->h, t1 - t0);
	}
	s->events += nevents;
	s->t_last = t1;
}

static void
err_add(ld_stats *s, const char *code, size_t codelen, const char *msg,
    size_t msglen, uint64_t n)
{
	if (codelen >= sizeof(s->err[0].code)) {
		codelen = sizeof(s->err[0].code) - 1;
	}
	for (int i = 0; i < s->nerr; i++) {
		if (strlen(s->err[i].code) == codelen &&
		    memcmp(s->err[i].code, code, codelen) == 0) {
			s->err[i].n += n;
			return;
		}
	}
	ld_err *e = &s->err[s->nerr < LD_ERR_MAX ? s->nerr : LD_ERR_MAX - 1];
	if (s->nerr < LD_ERR_MAX) {
		s->nerr++;
		memcpy(e->code, code, codelen);
		e->code[codelen] = 0;
		if (msglen >= sizeof(e->first)) {
			msglen = sizeof(e->first) - 1;
		}
		memcpy(e->first, msg, msglen);
		e->first[msglen] = 0;
	} else { // the table is full: the last entry gathers the rest
		snprintf(e->code, sizeof(e->code), "other");
	}
	e->n += n;
}

void
ld_stats_err(ld_stats *s, uint64_t k, const char *code, size_t codelen,
    const char *msg, size_t msglen, uint64_t n)
{
	if (!ld_measured(k)) {
		return;
	}
	err_add(s, code, codelen, msg == NULL ? "" : msg, msg == NULL ? 0 : msglen,
	    n);
}

bool
ld_take(uint64_t *k)
{
	if (atomic_load_explicit(&ld_r.abort, memory_order_relaxed)) {
		return (false);
	}
	if (ld.duration > 0) {
		int64_t end = atomic_load_explicit(&ld_r.t_end, memory_order_relaxed);
		if (end != 0 && ld_now_ns() >= end) {
			return (false);
		}
	}
	uint64_t i = atomic_fetch_add_explicit(&ld_r.next, 1, memory_order_relaxed);
	if (i >= ld_r.limit) {
		return (false);
	}
	if (i == (ld.populate ? 0 : ld.warmup)) {
		int64_t t = ld_now_ns();
		atomic_store(&ld_r.t_start, t);
		if (ld.duration > 0) {
			atomic_store(&ld_r.t_end, t + (int64_t) (ld.duration * 1e9));
		}
	}
	*k = i;
	return (true);
}

uint64_t
ld_unit_size(uint64_t k)
{
	uint64_t lo = k * LD_POP_BATCH;
	uint64_t hi = lo + LD_POP_BATCH;
	return ((hi > ld.customers ? ld.customers : hi) - lo);
}

void
ld_wait(bool (*done)(void *), void *arg)
{
	bool     tty  = !ld.quiet && isatty(2);
	int64_t  last = ld_now_ns();
	uint64_t prev = 0;
	while (!done(arg)) {
		ld_sleep_ns(20 * 1000000);
		int64_t now = ld_now_ns();
		if (tty && now - last >= 1000000000) {
			uint64_t d = atomic_load(&ld_r.done);
			fprintf(stderr, "\r  %llu %s, %.0f/s   ", (unsigned long long) d,
			    ld.populate ? "customers" : "events",
			    (double) (d - prev) * 1e9 / (double) (now - last));
			prev = d;
			last = now;
		}
	}
	if (tty && prev > 0) {
		fputs("\r                                              \r", stderr);
	}
}

static _Atomic int running;

void
ld_thread_done(void)
{
	atomic_fetch_sub(&running, 1);
}

static bool
none_running(void *arg)
{
	(void) arg;
	return (atomic_load(&running) == 0);
}

void
ld_run_threads(int n, void *(*fn)(void *), void *items, size_t size)
{
	pthread_t *th = calloc((size_t) n, sizeof(*th));
	if (th == NULL) {
		fprintf(stderr, "bench_load: out of memory\n");
		exit(2);
	}
	atomic_store(&running, n);
	ld_r.t_first = ld_now_ns();
	for (int i = 0; i < n; i++) {
		void *arg = (char *) items + (size_t) i * size;
		if (pthread_create(&th[i], NULL, fn, arg) != 0) {
			fprintf(stderr, "bench_load: cannot start a thread\n");
			exit(2);
		}
	}
	ld_wait(none_running, NULL);
	for (int i = 0; i < n; i++) {
		pthread_join(th[i], NULL);
	}
	free(th);
}

/*
** {======================================================
** Options
** =======================================================
*/

static void
usage(FILE *f)
{
	fputs(
	    "usage: bench_load [options]\n"
	    "  --target choreo|redis|tarantool   (default choreo)\n"
	    "  --addr ADDR      choreo: nng URL of rep (default tcp://127.0.0.1:7450),\n"
	    "                   or of pull with --mode push (default tcp://127.0.0.1:7451);\n"
	    "                   redis/tarantool: host:port (127.0.0.1:6379 / 127.0.0.1:3301)\n"
	    "  --business B     choreo business (default bench)\n"
	    "  --populate       pre-populate customers 0..N-1 (profile events) and exit\n"
	    "  --customers N    default 100000\n"
	    "  --dist uniform|zipf   (default uniform); --zipf-s S (default 0.99)\n"
	    "  --clients C      connections (default 1)\n"
	    "  --depth D        outstanding requests per connection (default 1)\n"
	    "  --events N       measured events (default 20000), or --duration SEC\n"
	    "  --warmup N       events sent before measuring (default 0)\n"
	    "  --mode req|push  choreo: closed loop over REQ (default) or open loop\n"
	    "                   over PUSH at --rate R events/s (0: as fast as it takes)\n"
	    "  --sub URL        push: count the decisions published on this pub URL\n"
	    "  --io callback|threads|raw   choreo req: nng callbacks (default), a\n"
	    "                   thread per nng context, or the SP protocol by hand\n"
	    "                   (a thread per connection; tcp:// only; lightest)\n"
	    "  --mix page_view=60,add_to_cart=20,purchase=5,response=15\n"
	    "  --seed S         the event stream is a pure function of it (default 1)\n"
	    "  --scripts DIR    redis: folder of redis_event.lua, redis_populate.lua\n"
	    "                   (default " CH_BENCH_DIR "/peers)\n"
	    "  --timeout MS     per request (default 60000)\n"
	    "  --json FILE      also write the results as JSON\n"
	    "  --quiet          no progress or setup lines on stderr\n",
	    f);
}

static bool
parse_mix(const char *s)
{
	ld.ntypes = 0;
	ld.wsum   = 0;
	while (*s) {
		const char *eq  = strchr(s, '=');
		const char *end = strchr(s, ',');
		if (end == NULL) {
			end = s + strlen(s);
		}
		if (eq == NULL || eq > end || eq == s || eq - s >= 64 ||
		    ld.ntypes == LD_MAX_TYPES) {
			return (false);
		}
		char *e;
		long  w = strtol(eq + 1, &e, 10);
		if (e != end || w < 0 || w > 1000000) {
			return (false);
		}
		int i = ld.ntypes++;
		memcpy(ld.types[i], s, (size_t) (eq - s));
		ld.types[i][eq - s] = 0;
		ld.is_response[i]   = strcmp(ld.types[i], "response") == 0;
		ld.wsum += (uint32_t) w;
		ld.cum[i] = ld.wsum;
		s         = *end ? end + 1 : end;
	}
	return (ld.ntypes > 0 && ld.wsum > 0);
}

static bool
num(const char *s, double lo, double hi, double *out)
{
	char *e;
	errno    = 0;
	double v = strtod(s, &e);
	if (errno != 0 || e == s || *e != 0 || v < lo || v > hi) {
		return (false);
	}
	*out = v;
	return (true);
}

static int
parse_args(int argc, char **argv)
{
	enum { O_TARGET = 256, O_ADDR, O_BUSINESS, O_POPULATE, O_CUSTOMERS,
		O_DIST, O_ZIPF_S, O_CLIENTS, O_DEPTH, O_EVENTS, O_DURATION,
		O_WARMUP, O_MODE, O_RATE, O_MIX, O_SEED, O_JSON, O_QUIET,
		O_SCRIPTS, O_SUB, O_IO, O_TIMEOUT };
	static const struct option opts[] = {
		{ "target", 1, 0, O_TARGET }, { "addr", 1, 0, O_ADDR },
		{ "business", 1, 0, O_BUSINESS }, { "populate", 0, 0, O_POPULATE },
		{ "customers", 1, 0, O_CUSTOMERS }, { "dist", 1, 0, O_DIST },
		{ "zipf-s", 1, 0, O_ZIPF_S }, { "clients", 1, 0, O_CLIENTS },
		{ "depth", 1, 0, O_DEPTH }, { "events", 1, 0, O_EVENTS },
		{ "duration", 1, 0, O_DURATION }, { "warmup", 1, 0, O_WARMUP },
		{ "mode", 1, 0, O_MODE }, { "rate", 1, 0, O_RATE },
		{ "mix", 1, 0, O_MIX }, { "seed", 1, 0, O_SEED },
		{ "json", 1, 0, O_JSON }, { "quiet", 0, 0, O_QUIET },
		{ "scripts", 1, 0, O_SCRIPTS }, { "sub", 1, 0, O_SUB },
		{ "io", 1, 0, O_IO }, { "timeout", 1, 0, O_TIMEOUT },
		{ "help", 0, 0, 'h' }, { 0, 0, 0, 0 }
	};
	ld = (ld_cfg) { .target = LD_CHOREO, .business = "bench",
		.scripts = CH_BENCH_DIR "/peers", .customers = 100000,
		.zipf_s = 0.99, .clients = 1, .depth = 1, .events = 20000,
		.seed = 1, .timeout_ms = 60000 };
	parse_mix("page_view=60,add_to_cart=20,purchase=5,response=15");
	int    c, oi = 0;
	double v;
	while ((c = getopt_long(argc, argv, "h", opts, &oi)) != -1) {
		bool ok = true;
		switch (c) {
		case O_TARGET:
			ok = true;
			if (strcmp(optarg, "choreo") == 0) {
				ld.target = LD_CHOREO;
			} else if (strcmp(optarg, "redis") == 0) {
				ld.target = LD_REDIS;
			} else if (strcmp(optarg, "tarantool") == 0) {
				ld.target = LD_TARANTOOL;
			} else {
				ok = false;
			}
			break;
		case O_ADDR: ld.addr = optarg; break;
		case O_BUSINESS: ld.business = optarg; break;
		case O_POPULATE: ld.populate = true; break;
		case O_CUSTOMERS:
			ok = num(optarg, 1, 1e9, &v);
			ld.customers = (uint64_t) v;
			break;
		case O_DIST:
			ok      = strcmp(optarg, "uniform") == 0 || strcmp(optarg, "zipf") == 0;
			ld.zipf = strcmp(optarg, "zipf") == 0;
			break;
		case O_ZIPF_S: ok = num(optarg, 0, 10, &ld.zipf_s); break;
		case O_CLIENTS:
			ok         = num(optarg, 1, 4096, &v);
			ld.clients = (int) v;
			break;
		case O_DEPTH:
			ok       = num(optarg, 1, 4096, &v);
			ld.depth = (int) v;
			break;
		case O_EVENTS:
			ok        = num(optarg, 1, 1e15, &v);
			ld.events = (uint64_t) v;
			break;
		case O_DURATION: ok = num(optarg, 0.001, 1e7, &ld.duration); break;
		case O_WARMUP:
			ok        = num(optarg, 0, 1e15, &v);
			ld.warmup = (uint64_t) v;
			break;
		case O_MODE:
			ok      = strcmp(optarg, "req") == 0 || strcmp(optarg, "push") == 0;
			ld.push = strcmp(optarg, "push") == 0;
			break;
		case O_RATE: ok = num(optarg, 0, 1e9, &ld.rate); break;
		case O_MIX: ok = parse_mix(optarg); break;
		case O_SEED:
			ok      = num(optarg, 0, 1.8e19, &v);
			ld.seed = strtoull(optarg, NULL, 10);
			break;
		case O_JSON: ld.json = optarg; break;
		case O_QUIET: ld.quiet = true; break;
		case O_SCRIPTS: ld.scripts = optarg; break;
		case O_SUB: ld.sub = optarg; break;
		case O_IO:
			ok    = true;
			if (strcmp(optarg, "callback") == 0) {
				ld.io = LD_IO_CALLBACK;
			} else if (strcmp(optarg, "threads") == 0) {
				ld.io = LD_IO_THREADS;
			} else if (strcmp(optarg, "raw") == 0) {
				ld.io = LD_IO_RAW;
			} else {
				ok = false;
			}
			break;
		case O_TIMEOUT:
			ok            = num(optarg, 1, 3600000, &v);
			ld.timeout_ms = (int) v;
			break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return (-1);
		}
		if (!ok) {
			fprintf(stderr, "bench_load: bad value '%s' for --%s\n", optarg,
			    opts[oi].name);
			return (-1);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "bench_load: unexpected argument '%s'\n", argv[optind]);
		return (-1);
	}
	if (ld.push && ld.target != LD_CHOREO) {
		fprintf(stderr, "bench_load: --mode push is for choreo only\n");
		return (-1);
	}
	if (ld.push && ld.populate) {
		fprintf(stderr, "bench_load: --populate sends batches over req; drop --mode push\n");
		return (-1);
	}
	if (ld.depth > 65535) {
		fprintf(stderr, "bench_load: --depth is at most 65535\n");
		return (-1);
	}
	if (ld.addr == NULL) {
		ld.addr = ld.target == LD_REDIS ? "127.0.0.1:6379"
		    : ld.target == LD_TARANTOOL ? "127.0.0.1:3301"
		    : ld.push                  ? "tcp://127.0.0.1:7451"
		                               : "tcp://127.0.0.1:7450";
	}
	return (0);
}

/*
** {======================================================
** Report
** =======================================================
*/

static void
json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char) *s;
		if (c == '"' || c == '\\') {
			fprintf(f, "\\%c", c);
		} else if (c < 0x20) {
			fprintf(f, "\\u%04x", c);
		} else {
			fputc(c, f);
		}
	}
	fputc('"', f);
}

static const char *
target_name(void)
{
	return (ld.target == LD_REDIS ? "redis"
	    : ld.target == LD_TARANTOOL ? "tarantool" : "choreo");
}

static int
report(ld_result *res, double cpu_s)
{
	static ld_stats all; // the merge (big: keep it off the stack)
	int64_t         t_last = 0;
	for (int i = 0; i < res->nst; i++) {
		ld_stats *s = &res->st[i];
		ld_hist_merge(&all.h, &s->h);
		all.events += s->events;
		if (s->t_last > t_last) {
			t_last = s->t_last;
		}
		for (int j = 0; j < s->nerr; j++) {
			err_add(&all, s->err[j].code, strlen(s->err[j].code),
			    s->err[j].first, strlen(s->err[j].first), s->err[j].n);
		}
	}
	int64_t  t0      = atomic_load(&ld_r.t_start);
	double   seconds = all.events > 0 && t_last > t0 ? (double) (t_last - t0) / 1e9 : 0;
	double   rate    = seconds > 0 ? (double) all.events / seconds : 0;
	uint64_t nerr    = 0;
	for (int j = 0; j < all.nerr; j++) {
		nerr += all.err[j].n;
	}
	const double pcts[5] = { 50, 90, 99, 99.9, 100 };
	double       us[5];
	for (int i = 0; i < 5; i++) {
		us[i] = (double) ld_hist_pct(&all.h, pcts[i]) / 1000.0;
	}
	bool lat = !res->no_latency && all.h.total > 0;

	char mode[96];
	if (ld.target != LD_CHOREO) {
		snprintf(mode, sizeof(mode), "%s", ld.populate ? "populate, pipelined" : "pipelined");
	} else {
		snprintf(mode, sizeof(mode), "%s%s%s", ld.populate ? "populate, batch, " : "",
		    ld.push ? "push" : "req",
		    ld.io == LD_IO_RAW             ? ", raw SP"
		        : ld.push                  ? ""
		        : ld.io == LD_IO_THREADS ? ", threads"
		                                   : ", callbacks");
	}
	uint64_t next = atomic_load(&ld_r.next);
	uint64_t sent = next < ld_r.limit ? next : ld_r.limit;
	printf("target:     %s %s (%s)\n", target_name(), ld.addr, mode);
	printf("clients:    %d x %d\n", ld.clients, ld.depth);
	printf("%-11s %llu\n", ld.populate ? "customers:" : "events:",
	    (unsigned long long) all.events);
	printf("seconds:    %.3f\n", seconds);
	printf("events/s:   %.0f\n", rate);
	if (lat) {
		printf("latency us: p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f%s\n",
		    us[0], us[1], us[2], us[3], us[4],
		    ld.populate ? "  (per batch)" : "");
	} else {
		printf("latency us: n/a\n");
	}
	printf("errors:     ");
	if (all.nerr == 0) {
		printf("none");
	}
	for (int j = 0; j < all.nerr; j++) {
		printf("%s%s=%llu", j ? ", " : "", all.err[j].code,
		    (unsigned long long) all.err[j].n);
	}
	printf("\n");
	for (int j = 0; j < all.nerr; j++) {
		if (all.err[j].first[0]) {
			printf("            %s: %s\n", all.err[j].code, all.err[j].first);
		}
	}
	if (res->note != NULL) {
		printf("%s\n", res->note);
	}
	if (ld.sub != NULL && ld.push) {
		int64_t span = res->t_recv - ld_r.t_first;
		printf("published:  %llu decisions of %llu events sent (%.0f/s from the "
		       "first send to the last decision)\n",
		    (unsigned long long) res->received, (unsigned long long) sent,
		    span > 0 ? (double) res->received * 1e9 / (double) span : 0.0);
	}
	printf("client cpu: %.2f s, %.1f us per event sent\n", cpu_s,
	    sent > 0 ? cpu_s * 1e6 / (double) (ld.populate ? ld.customers : sent) : 0.0);
	fflush(stdout);

	if (ld.json != NULL) {
		FILE *f = fopen(ld.json, "w");
		if (f == NULL) {
			fprintf(stderr, "bench_load: %s: %s\n", ld.json, strerror(errno));
			return (2);
		}
		fprintf(f, "{\"target\":");
		json_str(f, target_name());
		fprintf(f, ",\"mode\":");
		json_str(f, mode);
		fprintf(f, ",\"populate\":%s,\"clients\":%d,\"depth\":%d,\"events\":%llu,"
		           "\"seconds\":%.6f,\"events_per_s\":%.1f",
		    ld.populate ? "true" : "false", ld.clients, ld.depth,
		    (unsigned long long) all.events, seconds, rate);
		const char *keys[5] = { "p50_us", "p90_us", "p99_us", "p999_us", "max_us" };
		for (int i = 0; i < 5; i++) {
			if (lat) {
				fprintf(f, ",\"%s\":%.1f", keys[i], us[i]);
			} else {
				fprintf(f, ",\"%s\":null", keys[i]);
			}
		}
		fprintf(f, ",\"errors\":{");
		for (int j = 0; j < all.nerr; j++) {
			fprintf(f, "%s", j ? "," : "");
			json_str(f, all.err[j].code);
			fprintf(f, ":%llu", (unsigned long long) all.err[j].n);
		}
		fprintf(f, "},\"client_cpu_s\":%.3f", cpu_s);
		if (ld.sub != NULL && ld.push) {
			fprintf(f, ",\"published\":%llu", (unsigned long long) res->received);
		}
		fprintf(f, ",\"seed\":%llu,\"customers\":%llu,\"dist\":\"%s\"}\n",
		    (unsigned long long) ld.seed, (unsigned long long) ld.customers,
		    ld.zipf ? "zipf" : "uniform");
		if (fclose(f) != 0) {
			fprintf(stderr, "bench_load: %s: %s\n", ld.json, strerror(errno));
			return (2);
		}
	}

	if (atomic_load(&ld_r.abort)) {
		fprintf(stderr, "bench_load: the run was cut short (see above)\n");
		return (1);
	}
	if (all.events > 0 && (double) nerr > 0.01 * (double) all.events) {
		fprintf(stderr, "bench_load: %llu of %llu %s failed (more than 1 %%)\n",
		    (unsigned long long) nerr, (unsigned long long) all.events,
		    ld.populate ? "customers" : "events");
		return (1);
	}
	if (all.events == 0) {
		fprintf(stderr, "bench_load: nothing was measured\n");
		return (1);
	}
	return (0);
}

static double
cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ((double) ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	    (double) ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
}

int
main(int argc, char **argv)
{
	if (parse_args(argc, argv) != 0) {
		return (2);
	}
	signal(SIGPIPE, SIG_IGN);
	if (ld.zipf && !ld.populate && !zipf_init()) {
		fprintf(stderr, "bench_load: out of memory for the zipf table\n");
		return (2);
	}
	if (ld.populate) {
		ld_r.limit = (ld.customers + LD_POP_BATCH - 1) / LD_POP_BATCH;
	} else if (ld.duration > 0) {
		ld_r.limit = UINT64_MAX;
	} else {
		ld_r.limit = ld.warmup + ld.events;
	}
	ld_result res = { 0 };
	double    cpu = cpu_seconds();
	int       rc  = ld.target == LD_REDIS ? ld_run_redis(&res)
	           : ld.target == LD_TARANTOOL ? ld_run_tarantool(&res)
	                                      : ld_run_choreo(&res);
	if (rc != 0) {
		free(res.st);
		free(ld.zipf_cdf);
		return (2);
	}
	rc = report(&res, cpu_seconds() - cpu);
	free(res.st);
	free(ld.zipf_cdf);
	return (rc);
}

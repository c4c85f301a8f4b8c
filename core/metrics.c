#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>

ch_metrics ch_m;

static uint64_t
rd(atomic_uint_fast64_t *v)
{
	return (atomic_load_explicit(v, memory_order_relaxed));
}

typedef struct {
	char  *buf;
	size_t cap, len;
} out;

static void
put(out *o, const char *fmt, ...)
{
	if (o->len >= o->cap) {
		return;
	}
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
	va_end(ap);
	if (n > 0) {
		o->len += (size_t) n;
		if (o->len > o->cap) {
			o->len = o->cap;
		}
	}
}

static void
counter(out *o, const char *name, const char *help, uint64_t v)
{
	put(o, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name,
	    name, (unsigned long long) v);
}

size_t
ch_metrics_render(char *buf, size_t cap, int shards, size_t map_bytes)
{
	out o = { buf, cap, 0 };
	put(&o, "# HELP choreo_requests_total Requests received, by op.\n"
	        "# TYPE choreo_requests_total counter\n");
	for (int i = 0; i < CH_NOPS; i++) {
		put(&o, "choreo_requests_total{op=\"%s\"} %llu\n",
		    ch_op_name((enum ch_op) i),
		    (unsigned long long) rd(&ch_m.requests[i]));
	}
	put(&o, "# HELP choreo_errors_total Error replies, by code.\n"
	        "# TYPE choreo_errors_total counter\n");
	for (int i = 1; i < CH_NERR; i++) {
		put(&o, "choreo_errors_total{code=\"%s\"} %llu\n",
		    ch_err_code(-i), (unsigned long long) rd(&ch_m.errors[i]));
	}
	counter(&o, "choreo_events_total", "Events applied and committed.",
	    rd(&ch_m.events));
	counter(&o, "choreo_duplicates_total",
	    "Events answered from the dedup window.", rd(&ch_m.duplicates));
	counter(&o, "choreo_timers_fired_total",
	    "Timers (c:after, inactivity, case SLAs) run as events.",
	    rd(&ch_m.timers_fired));
	counter(&o, "choreo_dedup_expired_total",
	    "Dedup records removed once past the window.",
	    rd(&ch_m.dedup_expired));
	counter(&o, "choreo_decisions_total", "Actions returned.",
	    rd(&ch_m.decisions));
	counter(&o, "choreo_emitted_total", "Messages emitted by rules.",
	    rd(&ch_m.emitted));
	counter(&o, "choreo_batches_total", "Group commits.",
	    rd(&ch_m.batches));
	counter(&o, "choreo_batch_jobs_total",
	    "Requests applied in those group commits.", rd(&ch_m.batch_jobs));
	put(&o, "# HELP choreo_commit_seconds_total Time spent committing.\n"
	        "# TYPE choreo_commit_seconds_total counter\n"
	        "choreo_commit_seconds_total %.6f\n",
	    (double) rd(&ch_m.commit_us) / 1e6);
	counter(&o, "choreo_pull_malformed_total",
	    "Malformed messages received on pull.", rd(&ch_m.pull_malformed));
	counter(&o, "choreo_pull_failed_total",
	    "Pulled events that ended in an error.", rd(&ch_m.pull_failed));
	counter(&o, "choreo_published_total", "Messages sent on pub.",
	    rd(&ch_m.published));
	counter(&o, "choreo_map_grows_total", "LMDB map resizes.",
	    rd(&ch_m.map_grows));
	counter(&o, "choreo_reloads_total", "Rule reloads.",
	    rd(&ch_m.reloads));
	put(&o, "# HELP choreo_queue_depth Requests waiting for an engine.\n"
	        "# TYPE choreo_queue_depth gauge\nchoreo_queue_depth %lld\n",
	    (long long) atomic_load(&ch_m.queue_depth));
	put(&o, "# HELP choreo_shards Engine shards.\n"
	        "# TYPE choreo_shards gauge\nchoreo_shards %d\n",
	    shards);
	put(&o, "# HELP choreo_map_bytes LMDB map size, all shards.\n"
	        "# TYPE choreo_map_bytes gauge\nchoreo_map_bytes %zu\n",
	    map_bytes);
	return (o.len);
}

// What a next best action over 20 actions with 3 variations adds to an
// event: the same event run without a decision, with a read-only decision
// (record=false) and with a recorded one (the default), in process, against
// a real store (the adaptive model is read from LMDB).
//
//   build/tests/bench_nba [N] [RUN]
//
// The runs (see runs[] in main) alternate in 40 rounds of N/40 events, and
// each figure is the best round's mean: on a shared machine, other tenants
// only ever add time. tests/bench/nba/rules holds the rules. Given a RUN,
// only that run is made, once (for a profiler: compare two of them).
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/codec.h"
#include "core/err.h"
#include "core/log.h"
#include "core/store.h"
#include "lua/rules.h"

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (ts.tv_sec + ts.tv_nsec / 1e9);
}

static ch_str
S(const char *s)
{
	return ((ch_str) { s, (uint32_t) strlen(s) });
}

static double
run(ch_biz *b, ch_store *st, const ch_req *req, const msgpack_sbuffer *state,
    int n)
{
	msgpack_sbuffer ns, reply, emits;
	msgpack_sbuffer_init(&ns);
	msgpack_sbuffer_init(&reply);
	msgpack_sbuffer_init(&emits);
	MDB_txn *txn;
	ch_store_begin(st, NULL, &txn);
	ch_rule_out out = { .store = st, .txn = txn, .state = &ns,
		.reply = &reply, .emits = &emits };
	double t0 = now_s();
	for (int i = 0; i < n; i++) {
		ns.size = reply.size = emits.size = 0;
		if (ch_biz_event(b, req, state->data, state->size,
		        1767225600000 + i, &out) != CH_OK) {
			fprintf(stderr, "rule failed: %s\n", out.errmsg);
			exit(1);
		}
	}
	double dt = now_s() - t0;
	ch_store_abort(txn);
	msgpack_sbuffer_destroy(&ns);
	msgpack_sbuffer_destroy(&reply);
	msgpack_sbuffer_destroy(&emits);
	return (dt / n * 1e6);
}

// customer packs a customer of ten attributes, one journey and a history
// for the 20 actions: shown 0 to 2 times, the last time two days ago; or,
// seen_all, shown each as often as its limits allow.
static void
customer(msgpack_sbuffer *state, bool seen_all)
{
	msgpack_packer pk;
	msgpack_sbuffer_init(state);
	msgpack_packer_init(&pk, state, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 8);
	ch_pack_kv_str(&pk, "id", "c1");
	ch_pack_str(&pk, "attrs");
	msgpack_pack_map(&pk, 10);
	ch_pack_str(&pk, "age");
	msgpack_pack_int(&pk, 34);
	ch_pack_kv_str(&pk, "segment", "gold");
	ch_pack_kv_str(&pk, "region", "EU");
	for (int i = 0; i < 7; i++) {
		char k[16];
		snprintf(k, sizeof(k), "attr%d", i);
		ch_pack_str(&pk, k);
		msgpack_pack_int(&pk, i * 11);
	}
	ch_pack_str(&pk, "counters");
	msgpack_pack_map(&pk, 0);
	ch_pack_str(&pk, "journeys");
	msgpack_pack_map(&pk, 0);
	ch_pack_str(&pk, "cases");
	msgpack_pack_map(&pk, 0);
	ch_pack_str(&pk, "actions");
	msgpack_pack_map(&pk, 20);
	for (int i = 0; i < 20; i++) {
		char k[16];
		int  shown = seen_all ? 3 : i % 3;
		snprintf(k, sizeof(k), "a%02d", i);
		ch_pack_str(&pk, k);
		msgpack_pack_map(&pk, shown > 0 ? 5 : 4);
		ch_pack_str(&pk, "impressions");
		msgpack_pack_int(&pk, shown);
		ch_pack_str(&pk, "accepted");
		msgpack_pack_int(&pk, 0);
		ch_pack_str(&pk, "rejected");
		msgpack_pack_int(&pk, i % 2);
		ch_pack_str(&pk, "ignored");
		msgpack_pack_int(&pk, 0);
		if (shown > 0) {
			ch_pack_str(&pk, "last_shown");
			msgpack_pack_int64(&pk, 1767225600000 - 2 * 86400000);
		}
	}
	ch_pack_str(&pk, "created_at");
	msgpack_pack_int64(&pk, 1767225600000);
	ch_pack_str(&pk, "updated_at");
	msgpack_pack_int64(&pk, 1767225600000);
}

int
main(int argc, char **argv)
{
	int  n = argc > 1 ? atoi(argv[1]) : 200000;
	char dir[] = "/tmp/choreo-bench-XXXXXX";
	char why[256];
	ch_log_set_level(CH_LOG_WARN);
	if (mkdtemp(dir) == NULL) {
		return (1);
	}
	ch_store     *st;
	ch_store_opts so = { false, (size_t) 1 << 30, 0 };
	if (ch_store_open(&st, dir, &so, why, sizeof(why)) != CH_OK) {
		fprintf(stderr, "%s\n", why);
		return (1);
	}
	ch_rules     *rules;
	ch_rules_opts ro = CH_RULES_OPTS_DEFAULT;
	if (ch_rules_load(&rules, CH_BENCH_RULES, &ro) != CH_OK) {
		return (1);
	}
	ch_biz *b = ch_rules_find(rules, S("bench"));
	if (b == NULL) {
		fprintf(stderr, "the bench rules did not load\n");
		return (1);
	}
	msgpack_sbuffer typical, seen_all;
	customer(&typical, false);
	customer(&seen_all, true);

	ch_req req = { 0 };
	req.op       = CH_OP_EVENT;
	req.business = S("bench");
	req.customer = S("c1");
	req.type     = S("page_view");
	req.region   = S("EU");
	req.channel  = S("app");
	req.limit    = 3;
	req.record   = false;

	// the runs, alternated round by round
	struct {
		const char            *name;
		const msgpack_sbuffer *state;
		bool                   decide, record;
		double                 best;
	} runs[] = {
		{ "without", &typical, false, false, 1e300 },
		{ "with", &typical, true, false, 1e300 },
		{ "record", &typical, true, true, 1e300 },
		{ "seen-all-without", &seen_all, false, false, 1e300 },
		{ "seen-all", &seen_all, true, false, 1e300 },
	};
	int nruns = (int) (sizeof(runs) / sizeof(runs[0]));
	run(b, st, &req, &typical, n / 10); // warm up: views cached
	if (argc > 2) {
		for (int m = 0; m < nruns; m++) {
			if (strcmp(argv[2], runs[m].name) == 0) {
				req.decide = runs[m].decide;
				req.record = runs[m].record;
				printf("event, %s: %.2f us\n", argv[2],
				    run(b, st, &req, runs[m].state, n));
			}
		}
	} else {
		enum { ROUNDS = 40 };
		for (int r = 0; r < ROUNDS; r++) {
			for (int m = 0; m < nruns; m++) {
				req.decide = runs[m].decide;
				req.record = runs[m].record;
				double t   = run(b, st, &req, runs[m].state,
				      n / ROUNDS);
				if (t < runs[m].best) {
					runs[m].best = t;
				}
			}
		}
		printf("event without a decision: %.2f us\n", runs[0].best);
		printf("a read-only decision (20 actions, 3 variations, top "
		       "3) adds: %.2f us\n", runs[1].best - runs[0].best);
		printf("a recorded decision adds: %.2f us\n",
		    runs[2].best - runs[0].best);
		printf("a decision that asks every action (the customer has "
		       "seen them all) adds: %.2f us\n",
		    runs[4].best - runs[3].best);
	}
	msgpack_sbuffer_destroy(&typical);
	msgpack_sbuffer_destroy(&seen_all);
	ch_rules_free(rules);
	ch_store_close(st);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return (system(cmd) == 0 ? 0 : 1);
}

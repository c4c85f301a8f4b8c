// Shards: the stats op runs on shard 0's thread and reads every shard's
// store, while the other shards' engines write to theirs — and grow their
// maps. Growing a map unmaps and maps again the store's memory
// (mdb_env_set_mapsize), which LMDB allows only while no transaction of
// the process is open on that store.
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "core/err.h"
#include "core/log.h"
#include "core/store.h"
#include "lua/rules.h"

#define EVENTS 1000      // 8 KiB each: a 64 KiB map doubles 8 times
#define IN_FLIGHT 64
#define ASKERS 4         // threads asking for the stats
#define ROUNDS 12        // each from empty stores

static char       dir[64];
static ch_store  *st[2];
static ch_engine *eng[2];

static ch_str
S(const char *s)
{
	return ((ch_str) { s, (uint32_t) strlen(s) });
}

static void
setup(void)
{
	char path[128], cmd[300];
	ch_log_set_level(CH_LOG_WARN); // not every growth of the map
	snprintf(dir, sizeof(dir), "/tmp/choreo-unit-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(cmd, sizeof(cmd), "mkdir -p %s/rules/shop", dir);
	cr_assert_eq(system(cmd), 0);
	snprintf(path, sizeof(path), "%s/rules/shop/10.lua", dir);
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs("journey 'j' { stages = { 'a', 'b' } }\n"
	      "on('*', function(c, e)\n"
	      "  c.attrs.blob = e.data.blob\n"
	      "  if c:stage('j') == nil then c:advance('j', 'a') end\n"
	      "end)\n",
	    f);
	fclose(f);
}

// open_shards opens two stores (round r's, with 64 KiB maps) and starts
// an engine on each.
static void
open_shards(int r)
{
	char why[256], path[128];
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s/%d/shard-%d", dir, r, i);
		ch_store_opts so = { false, (size_t) 1 << 30, 64 << 10 };
		cr_assert_eq(ch_store_open(&st[i], path, &so, why, sizeof(why)),
		    CH_OK, "%s", why);
	}
	static char rules_dir[128]; // the engines keep the pointer
	snprintf(rules_dir, sizeof(rules_dir), "%s/rules", dir);
	for (int i = 0; i < 2; i++) {
		ch_rules     *rules;
		ch_rules_opts ro = CH_RULES_OPTS_DEFAULT;
		cr_assert_eq(ch_rules_load(&rules, rules_dir, &ro), CH_OK);
		ch_engine_opts eo = { .shard = i, .rules_dir = rules_dir,
			.rules = rules,
			.store = st[i], .queue_cap = 4096, .batch_max = 64,
			.all_stores = st, .nstores = 2 };
		cr_assert_eq(ch_engine_start(&eng[i], &eo), CH_OK);
	}
}

static void
close_shards(void)
{
	for (int i = 0; i < 2; i++) {
		ch_engine_free(eng[i]);
		eng[i] = NULL;
		ch_store_close(st[i]);
		st[i] = NULL;
	}
}

static void
teardown(void)
{
	close_shards();
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(shards, .init = setup, .fini = teardown);

// Jobs finish on the engine threads; done counts the events, and sets the
// flag a stats job's owner points to.
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t  cv = PTHREAD_COND_INITIALIZER;
static int             events_done;

static void
job_done(ch_job *j)
{
	pthread_mutex_lock(&mu);
	if (j->owner != NULL) {
		*(bool *) j->owner = true;
	} else {
		events_done++;
	}
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

static atomic_bool stop;
static atomic_int  stats_ok;

// asks shard 0 for the stats, one request at a time, until stop
static void *
stats_main(void *arg)
{
	(void) arg;
	ch_req r   = { 0 };
	r.op       = CH_OP_STATS;
	r.business = S("shop");
	while (!atomic_load(&stop)) {
		ch_job j;
		bool   done = false;
		ch_job_init(&j);
		j.req   = &r;
		j.done  = job_done;
		j.owner = &done;
		if (ch_engine_submit(eng[0], &j, true) != CH_OK) {
			ch_job_fini(&j);
			break;
		}
		pthread_mutex_lock(&mu);
		while (!done) {
			pthread_cond_wait(&cv, &mu);
		}
		pthread_mutex_unlock(&mu);
		if (j.err == CH_OK) {
			atomic_fetch_add(&stats_ok, 1);
		}
		ch_job_fini(&j);
	}
	return (NULL);
}

// one_round: shard 1 takes EVENTS events of 8 KiB (its map doubles from
// 64 KiB to 64 MiB) while ASKERS threads keep shard 0 answering stats.
static void
one_round(int r, const msgpack_object *data)
{
	static ch_req req[EVENTS];
	static ch_job job[EVENTS];
	static char   cust[EVENTS][16];
	open_shards(r);
	size_t    map0 = ch_store_map_size(st[1]);
	pthread_t th[ASKERS];
	atomic_store(&stop, false);
	atomic_store(&stats_ok, 0);
	events_done = 0;
	for (int i = 0; i < ASKERS; i++) {
		cr_assert_eq(pthread_create(&th[i], NULL, stats_main, NULL), 0);
	}
	for (int i = 0; i < EVENTS; i++) {
		snprintf(cust[i], sizeof(cust[i]), "c%d", i);
		req[i]          = (ch_req) { 0 };
		req[i].op       = CH_OP_EVENT;
		req[i].business = S("shop");
		req[i].customer = S(cust[i]);
		req[i].type     = S("put");
		req[i].record   = true;
		req[i].limit    = 3;
		req[i].data     = data;
		ch_job_init(&job[i]);
		job[i].req  = &req[i];
		job[i].done = job_done;
		// at most IN_FLIGHT events queued at shard 1
		pthread_mutex_lock(&mu);
		while (i - events_done >= IN_FLIGHT) {
			pthread_cond_wait(&cv, &mu);
		}
		pthread_mutex_unlock(&mu);
		cr_assert_eq(ch_engine_submit(eng[1], &job[i], true), CH_OK);
	}
	ch_engine_stop(eng[1]); // runs what is queued
	atomic_store(&stop, true);
	for (int i = 0; i < ASKERS; i++) {
		pthread_join(th[i], NULL);
	}
	for (int i = 0; i < EVENTS; i++) {
		cr_assert_eq(job[i].err, CH_OK, "event %d failed", i);
		ch_job_fini(&job[i]);
	}
	cr_assert_geq(ch_store_map_size(st[1]), map0 * 128,
	    "shard 1's map grew from %zu to %zu bytes only", map0,
	    ch_store_map_size(st[1]));
	cr_assert_gt(atomic_load(&stats_ok), 0);
	close_shards();
}

Test(shards, stats_read_every_store_while_another_grows_its_map)
{
	// the events' data: {blob = 8 KiB of x}
	static char     blob[8192];
	msgpack_sbuffer db;
	msgpack_packer  pk;
	memset(blob, 'x', sizeof(blob));
	msgpack_sbuffer_init(&db);
	msgpack_packer_init(&pk, &db, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	msgpack_pack_str_with_body(&pk, "blob", 4);
	msgpack_pack_str_with_body(&pk, blob, sizeof(blob));
	msgpack_unpacked data;
	msgpack_unpacked_init(&data);
	cr_assert_eq(msgpack_unpack_next(&data, db.data, db.size, NULL),
	    MSGPACK_UNPACK_SUCCESS);
	for (int r = 0; r < ROUNDS; r++) {
		one_round(r, &data.data);
	}
	msgpack_unpacked_destroy(&data);
	msgpack_sbuffer_destroy(&db);
}

// The engine with a virtual clock: the dedup window and the sweep of
// expired dedup records.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "core/err.h"
#include "core/store.h"
#include "lua/rules.h"

#define HOUR 3600000LL

static char       dir[64];
static ch_store  *st;
static ch_engine *eng;
static int64_t    clock_ms = 1767225600000;

static int64_t
virtual_clock(void)
{
	return (clock_ms);
}

static ch_str
S(const char *s)
{
	return ((ch_str) { s, (uint32_t) strlen(s) });
}

static void
setup(void)
{
	char why[256], path[128];
	snprintf(dir, sizeof(dir), "/tmp/choreo-unit-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/rules/shop", dir);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "mkdir -p %s/data %s", dir, path);
	cr_assert_eq(system(cmd), 0);
	snprintf(path, sizeof(path), "%s/rules/shop/10.lua", dir);
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs("on('*', function(c) c:count('events') end)\n", f);
	fclose(f);

	snprintf(path, sizeof(path), "%s/data", dir);
	ch_store_opts so = { false, (size_t) 1 << 30, 0 };
	cr_assert_eq(ch_store_open(&st, path, &so, why, sizeof(why)), CH_OK,
	    "%s", why);
	ch_rules     *rules;
	ch_rules_opts ro = CH_RULES_OPTS_DEFAULT;
	snprintf(path, sizeof(path), "%s/rules", dir);
	cr_assert_eq(ch_rules_load(&rules, path, &ro), CH_OK);
	ch_engine_opts eo = { .rules_dir = path, .rules = rules, .store = st,
		.dedup_window_ms = 24 * HOUR, .clock = virtual_clock };
	cr_assert_eq(ch_engine_new(&eng, &eo), CH_OK);
}

static void
teardown(void)
{
	ch_engine_free(eng);
	ch_store_close(st);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(engine, .init = setup, .fini = teardown);

static void
job_done(ch_job *j)
{
	(void) j; // run_one returns once the reply is final
}

// event runs one event with an id and says whether it was a duplicate.
static bool
event(const char *id)
{
	ch_req r = { 0 };
	r.op       = CH_OP_EVENT;
	r.business = S("shop");
	r.customer = S("c1");
	r.type     = S("page_view");
	r.id       = S(id);
	r.record   = true;
	r.limit    = 3;
	ch_job j;
	ch_job_init(&j);
	j.req  = &r;
	j.done = job_done;
	ch_engine_run_one(eng, &j);
	cr_assert_eq(j.err, CH_OK);
	// "duplicate" appears in the reply only for a repeated id
	bool dup = memmem(j.reply.data, j.reply.size, "duplicate", 9) != NULL;
	ch_job_fini(&j);
	return (dup);
}

static bool
has_dedup_record(const char *id)
{
	char     key[400];
	size_t   kl = ch_store_key(key, S("shop"), S(id));
	MDB_txn *txn;
	MDB_val  v;
	cr_assert_eq(mdb_txn_begin(ch_store_env(st), NULL, MDB_RDONLY, &txn), 0);
	int rc = ch_store_get(st, txn, CH_DB_DEDUP, key, kl, &v);
	mdb_txn_abort(txn);
	return (rc == CH_OK);
}

static size_t
age_entries(void)
{
	MDB_txn *txn;
	MDB_stat ms;
	cr_assert_eq(mdb_txn_begin(ch_store_env(st), NULL, MDB_RDONLY, &txn), 0);
	cr_assert_eq(mdb_stat(txn, ch_store_dbi(st, CH_DB_DEDUP_AGE), &ms), 0);
	mdb_txn_abort(txn);
	return (ms.ms_entries);
}

Test(engine, an_id_is_a_duplicate_within_the_window_only)
{
	cr_assert_not(event("e1"));
	clock_ms += 23 * HOUR;
	cr_assert(event("e1"), "within 24 h the id is a duplicate");
	clock_ms += 2 * HOUR;
	cr_assert_not(event("e1"), "past the window it applies again");
}

Test(engine, expired_dedup_records_are_swept)
{
	for (int i = 0; i < 50; i++) {
		char id[16];
		snprintf(id, sizeof(id), "old-%d", i);
		cr_assert_not(event(id));
	}
	cr_assert(has_dedup_record("old-0"));
	cr_assert_eq(age_entries(), 50);
	clock_ms += 25 * HOUR;
	// each batch sweeps a bounded number (2 per event + 16): a few
	// events later every expired record is gone, the new ones stay
	for (int i = 0; i < 3; i++) {
		char id[16];
		snprintf(id, sizeof(id), "new-%d", i);
		cr_assert_not(event(id));
	}
	cr_assert_not(has_dedup_record("old-0"));
	cr_assert_not(has_dedup_record("old-49"));
	cr_assert(has_dedup_record("new-0"));
	cr_assert_eq(age_entries(), 3);
}

Test(engine, an_id_applied_again_keeps_its_new_record)
{
	cr_assert_not(event("again"));
	clock_ms += 25 * HOUR;
	// applied again: its new record must survive the sweep of the old one
	cr_assert_not(event("again"));
	cr_assert_not(event("other"));
	cr_assert(has_dedup_record("again"));
	clock_ms += 1 * HOUR;
	cr_assert(event("again"), "still a duplicate of its second run");
}

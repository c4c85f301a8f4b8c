// The LMDB store: keys, nested transactions, persistence, map growth.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/store.h"

static char      dir[64];
static ch_store *st;

static ch_str
S(const char *s)
{
	return ((ch_str) { s, (uint32_t) strlen(s) });
}

static void
open_store(size_t init, size_t max)
{
	char          why[256];
	ch_store_opts o = { false, max, init };
	int           rc = ch_store_open(&st, dir, &o, why, sizeof(why));
	cr_assert_eq(rc, CH_OK, "%s", why);
}

static void
setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/choreo-unit-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	open_store(0, (size_t) 1 << 30);
}

static void
teardown(void)
{
	ch_store_close(st);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(store, .init = setup, .fini = teardown);

static void
put(MDB_txn *t, const char *b, const char *c, const char *v)
{
	char   k[400];
	size_t kl = ch_store_key(k, S(b), S(c));
	cr_assert_eq(ch_store_put(st, t, CH_DB_CUSTOMERS, k, kl, v, strlen(v)),
	    CH_OK);
}

static int
get(MDB_txn *t, const char *b, const char *c, char *out, size_t cap)
{
	char    k[400];
	MDB_val v;
	size_t  kl = ch_store_key(k, S(b), S(c));
	int     rc = ch_store_get(st, t, CH_DB_CUSTOMERS, k, kl, &v);
	if (rc == CH_OK) {
		snprintf(out, cap, "%.*s", (int) v.mv_size, (char *) v.mv_data);
	}
	return (rc);
}

Test(store, put_get_del)
{
	MDB_txn *t;
	char     out[64];
	cr_assert_eq(ch_store_begin(st, NULL, &t), CH_OK);
	put(t, "shop", "c1", "state-1");
	cr_assert_eq(get(t, "shop", "c1", out, sizeof(out)), CH_OK);
	cr_assert_str_eq(out, "state-1");
	cr_assert_eq(get(t, "shop", "c2", out, sizeof(out)), CH_ENOTFOUND);
	// business \0 customer: the same customer id in two businesses differs
	cr_assert_eq(get(t, "sho", "pc1", out, sizeof(out)), CH_ENOTFOUND);
	char   k[400];
	size_t kl = ch_store_key(k, S("shop"), S("c1"));
	cr_assert_eq(ch_store_del(st, t, CH_DB_CUSTOMERS, k, kl), CH_OK);
	cr_assert_eq(ch_store_del(st, t, CH_DB_CUSTOMERS, k, kl), CH_ENOTFOUND);
	cr_assert_eq(ch_store_commit(st, t), CH_OK);
}

Test(store, a_nested_abort_keeps_the_parent_and_its_siblings)
{
	MDB_txn *t, *a, *b;
	char     out[64];
	cr_assert_eq(ch_store_begin(st, NULL, &t), CH_OK);
	put(t, "shop", "parent", "p");
	cr_assert_eq(ch_store_begin(st, t, &a), CH_OK);
	put(a, "shop", "ok", "kept");
	cr_assert_eq(ch_store_commit(st, a), CH_OK);
	cr_assert_eq(ch_store_begin(st, t, &b), CH_OK);
	put(b, "shop", "bad", "rolled back");
	put(b, "shop", "ok", "overwritten then rolled back");
	ch_store_abort(b);
	cr_assert_eq(ch_store_commit(st, t), CH_OK);

	cr_assert_eq(ch_store_begin(st, NULL, &t), CH_OK);
	cr_assert_eq(get(t, "shop", "parent", out, sizeof(out)), CH_OK);
	cr_assert_eq(get(t, "shop", "ok", out, sizeof(out)), CH_OK);
	cr_assert_str_eq(out, "kept");
	cr_assert_eq(get(t, "shop", "bad", out, sizeof(out)), CH_ENOTFOUND);
	ch_store_abort(t);
}

Test(store, aborting_the_parent_drops_committed_children)
{
	MDB_txn *t, *a;
	char     out[64];
	cr_assert_eq(ch_store_begin(st, NULL, &t), CH_OK);
	cr_assert_eq(ch_store_begin(st, t, &a), CH_OK);
	put(a, "shop", "c", "x");
	cr_assert_eq(ch_store_commit(st, a), CH_OK);
	ch_store_abort(t);
	cr_assert_eq(ch_store_begin(st, NULL, &t), CH_OK);
	cr_assert_eq(get(t, "shop", "c", out, sizeof(out)), CH_ENOTFOUND);
	ch_store_abort(t);
}

Test(store, persists_across_reopen)
{
	MDB_txn *t;
	char     out[64];
	cr_assert_eq(ch_store_begin(st, NULL, &t), CH_OK);
	put(t, "shop", "c1", "durable");
	cr_assert_eq(ch_store_commit(st, t), CH_OK);
	ch_store_close(st);
	open_store(0, (size_t) 1 << 30);
	cr_assert_eq(ch_store_begin(st, NULL, &t), CH_OK);
	cr_assert_eq(get(t, "shop", "c1", out, sizeof(out)), CH_OK);
	cr_assert_str_eq(out, "durable");
	ch_store_abort(t);
}

// fill writes 4 KB values until the map is full; returns how many fit.
static int
fill(int from, int *rc_out)
{
	MDB_txn *t;
	char     val[4000];
	memset(val, 'v', sizeof(val));
	int rc = ch_store_begin(st, NULL, &t);
	cr_assert_eq(rc, CH_OK);
	int i;
	for (i = from; i < from + 100000; i++) {
		char   k[400], c[32];
		snprintf(c, sizeof(c), "c%d", i);
		size_t kl = ch_store_key(k, S("shop"), S(c));
		rc = ch_store_put(st, t, CH_DB_CUSTOMERS, k, kl, val, sizeof(val));
		if (rc != CH_OK) {
			break;
		}
		if (i % 50 == 49) {
			rc = ch_store_commit(st, t);
			if (rc != CH_OK) {
				break;
			}
			cr_assert_eq(ch_store_begin(st, NULL, &t), CH_OK);
		}
	}
	if (rc == CH_OK) {
		rc = ch_store_commit(st, t);
	} else if (rc != CH_ESTORAGEFULL || i % 50 != 49) {
		ch_store_abort(t);
	}
	*rc_out = rc;
	return (i);
}

Test(store, the_map_grows_up_to_max_size)
{
	ch_store_close(st);
	open_store((size_t) 1 << 20, (size_t) 8 << 20);
	cr_assert_eq(ch_store_map_size(st), (size_t) 1 << 20);
	int rc, n = fill(0, &rc);
	cr_assert_eq(rc, CH_ESTORAGEFULL, "a 1 MiB map must fill up");
	int grown = 0;
	while (ch_store_grow(st) == CH_OK) {
		grown++;
		n = fill(n - (n % 50), &rc); // replay the aborted part
		if (rc == CH_OK) {
			break;
		}
	}
	cr_assert_gt(grown, 0);
	cr_assert_leq(ch_store_map_size(st), (size_t) 8 << 20);
	// at the cap: growing refuses, and writing more fails cleanly
	while (ch_store_grow(st) == CH_OK) {
	}
	cr_assert_eq(ch_store_map_size(st), (size_t) 8 << 20);
	fill(100000, &rc);
	cr_assert_eq(rc, CH_ESTORAGEFULL);
	cr_assert_eq(ch_store_grow(st), CH_ESTORAGEFULL);
	// what was committed is all there
	MDB_txn *t;
	char     out[8];
	cr_assert_eq(ch_store_begin(st, NULL, &t), CH_OK);
	cr_assert_eq(get(t, "shop", "c0", out, sizeof(out)), CH_OK);
	ch_store_abort(t);
}

Test(store, parse_size)
{
	cr_assert_eq(ch_parse_size("1048576"), (size_t) 1048576);
	cr_assert_eq(ch_parse_size("64M"), (size_t) 64 << 20);
	cr_assert_eq(ch_parse_size("2G"), (size_t) 2 << 30);
	cr_assert_eq(ch_parse_size("1KiB"), (size_t) 1024);
	cr_assert_eq(ch_parse_size("12x"), (size_t) 0);
	cr_assert_eq(ch_parse_size("big"), (size_t) 0);
}

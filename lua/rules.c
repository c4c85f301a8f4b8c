// choreo — business rule sets. See rules.h.
#include "rules.h"

#include <ctype.h>
#include <dirent.h>
#include <stdatomic.h>
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../core/err.h"
#include "../core/log.h"
#include "../core/store.h"
#include "../core/utf8.h"
#include "conv.h"
#include "nba.h"
#include "pattern.h"
#include "rules_int.h"
#include "running.h"
#include "prelude.h" // generated: ch_prelude_lua[], ch_prelude_lua_len

struct ch_rules {
	ch_biz       **biz; // sorted by name
	int            n;
	ch_rules_opts  opts;
};

static void pack_biz(const ch_biz *b, msgpack_packer *pk);

static int64_t
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ((int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

/*
** {======================================================
** The sandbox: allocator cap, instruction budget, error messages
** =======================================================
*/

static void *
biz_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	ch_biz *b = ud;
	if (ptr == NULL) {
		osize = 0; // osize encodes the object's type then
	}
	if (nsize == 0) {
		b->mem_used -= osize;
		free(ptr);
		return (NULL);
	}
	if (nsize > osize && b->mem_used + (nsize - osize) > b->mem_limit) {
		b->limit_hit  = true;
		b->limit_what = "memory limit";
		return (NULL);
	}
	void *p = realloc(ptr, nsize);
	if (p != NULL) {
		b->mem_used = b->mem_used - osize + nsize;
	}
	return (p);
}

ch_biz *
ch_biz_of(lua_State *L)
{
	void *ud;
	lua_getallocf(L, &ud);
	return (ud);
}

// The budget hook fires once the event's instructions are spent; it then
// re-arms itself on every instruction, so a pcall in the rule that swallows
// the error only meets it again (Redis does the same).
static void
budget_hook(lua_State *L, lua_Debug *ar)
{
	(void) ar;
	ch_biz *b = ch_biz_of(L);
	b->limit_hit  = true;
	b->limit_what = "instruction budget";
	lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
	// no position of its own: msgh names the rule's line
	lua_pushfstring(L, "rule ran past its instruction budget (%I "
	                   "instructions)",
	    (lua_Integer) b->budget);
	lua_error(L);
}

int
ch_biz_charge(ch_biz *b, uint64_t n)
{
	b->steps += n;
	if (b->steps <= b->budget) {
		return (0);
	}
	b->limit_hit  = true;
	b->limit_what = "instruction budget";
	lua_sethook(b->L, budget_hook, LUA_MASKCOUNT, 1); // sticky from now
	return (-1);
}

static void
arm(ch_biz *b)
{
	b->limit_hit = false;
	b->steps     = 0;
	int count    = b->budget > (uint64_t) INT32_MAX ? INT32_MAX
	                                                : (int) b->budget;
	lua_sethook(b->L, budget_hook, LUA_MASKCOUNT, count);
}

static void
disarm(ch_biz *b)
{
	lua_sethook(b->L, NULL, 0, 0);
}

// unprelude skips the position of the prelude ("prelude:123: ") at the
// start of an error raised by the prelude's own code: it means nothing to
// the analyst, whose line msgh puts there instead.
static const char *
unprelude(const char *msg)
{
	const char *p = msg + 8;
	if (strncmp(msg, "prelude:", 8) != 0 || *p < '0' || *p > '9') {
		return (msg);
	}
	while (*p >= '0' && *p <= '9') {
		p++;
	}
	return (p[0] == ':' && p[1] == ' ' ? p + 2 : msg);
}

// Set while do_call packs the customer's state: a value there that cannot
// be stored was left by a handler, and only the prelude knows which.
static _Thread_local bool packing_state;

// msgh turns any error value into "file:line: message": when the message
// does not already start with a rule file's position, the innermost frame
// of a rule file is prefixed (in place of the prelude's position, if any)
// — or, when none is running because the state is being packed, the
// prelude's API.blame names the handler.
static int
msgh(lua_State *L)
{
	const char *msg;
	if (lua_type(L, 1) == LUA_TTABLE &&
	    lua_getfield(L, 1, "code") == LUA_TSTRING) {
		lua_settop(L, 1);
		return (1); // a coded error (bad_request...): kept as it is
	}
	lua_settop(L, 1);
	if (lua_type(L, 1) == LUA_TSTRING) {
		msg = lua_tostring(L, 1);
	} else if (luaL_callmeta(L, 1, "__tostring") &&
	    lua_type(L, -1) == LUA_TSTRING) {
		msg = lua_tostring(L, -1);
	} else {
		msg = lua_pushfstring(L, "error object is a %s value",
		    luaL_typename(L, 1));
	}
	lua_Debug ar;
	for (int level = 0; lua_getstack(L, level, &ar); level++) {
		lua_getinfo(L, "Sl", &ar);
		if (ar.source[0] != '@' || ar.currentline <= 0) {
			continue;
		}
		size_t n = strlen(ar.source + 1);
		if (strncmp(msg, ar.source + 1, n) == 0 && msg[n] == ':') {
			lua_pushstring(L, msg);
			return (1); // already located in a rule file
		}
		lua_pushfstring(L, "%s:%d: %s", ar.source + 1, ar.currentline,
		    unprelude(msg));
		return (1);
	}
	if (packing_state) {
		packing_state = false;
		lua_rawgeti(L, LUA_REGISTRYINDEX, ch_biz_of(L)->api);
		lua_getfield(L, -1, "blame");             /* api, blame */
		lua_pushstring(L, msg);
		if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_isstring(L, -1)) {
			return (1);
		}
	}
	lua_pushstring(L, msg);
	return (1);
}

static int64_t
mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

// mark tells the watchdog and the supervisor what runs now (type NULL:
// nothing).
static void
mark(ch_biz *b, const char *type, size_t tlen)
{
	ch_running *r = ch_running_mine;
	if (r == NULL) {
		return;
	}
	if (type == NULL) {
		atomic_store(&r->since, 0);
		return;
	}
	snprintf(r->business, sizeof(r->business), "%s", b->name);
	snprintf(r->version, sizeof(r->version), "%s", b->version);
	snprintf(r->type, sizeof(r->type), "%.*s", (int) tlen, type);
	atomic_store(&r->since, mono_ms());
}

// pcall_rule calls the function below nargs arguments with the budget armed
// and returns CH_OK, CH_ERULE or CH_ERULELIMIT, or CH_EINTERNAL when the
// process ran out of memory, leaving the error message (or the nres
// results) on the stack.
static int
pcall_rule(ch_biz *b, int nargs, int nres)
{
	lua_State *L    = b->L;
	int        base = lua_gettop(L) - nargs;
	lua_pushcfunction(L, msgh);
	lua_insert(L, base);
	arm(b);
	int st = lua_pcall(L, nargs, nres, base);
	disarm(b);
	packing_state = false; // a memory error passes msgh by
	lua_remove(L, base);
	if (st == LUA_OK) {
		return (CH_OK);
	}
	if (st == LUA_ERRMEM && !b->limit_hit) {
		// The process, not the rule, is out of memory. Lua's own message
		// (made when the state was) stays: a string pushed here could
		// fail too, outside any protected call, and Lua would abort.
		return (CH_EINTERNAL);
	}
	if (st == LUA_ERRMEM) {
		lua_pop(L, 1);
		lua_pushfstring(L,
		    "rule ran past its memory limit (%d MiB for the business)",
		    (int) (b->mem_limit >> 20));
		lua_gc(L, LUA_GCCOLLECT);
		return (CH_ERULELIMIT);
	}
	if (lua_type(L, -1) == LUA_TTABLE) {
		lua_getfield(L, -1, "code");
		const char *code = lua_tostring(L, -1);
		int rv = CH_ERULE;
		if (code != NULL && strcmp(code, "bad_request") == 0) {
			rv = CH_EBADREQ;
		}
		lua_getfield(L, -2, "message");
		lua_replace(L, -3);
		lua_pop(L, 1);
		return (rv);
	}
	return (b->limit_hit ? CH_ERULELIMIT : CH_ERULE);
}

static uint64_t
fnv1a64(const void *p, size_t n)
{
	const unsigned char *s = p;
	uint64_t             h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ull;
	}
	// finalise (splitmix64) so that close inputs spread over all bits
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebull;
	h ^= h >> 31;
	return (h);
}

static int
l_hash64(lua_State *L)
{
	size_t      n;
	const char *s = luaL_checklstring(L, 1, &n);
	lua_pushinteger(L, (lua_Integer) fnv1a64(s, n));
	return (1);
}

static int
l_hash01(lua_State *L)
{
	size_t      n;
	const char *s = luaL_checklstring(L, 1, &n);
	lua_pushnumber(L, (double) (fnv1a64(s, n) >> 11) / 9007199254740992.0);
	return (1);
}

// The adaptive model's counts per (business, action, channel): three u64,
// accepted, rejected, ignored, in the models database, read and written
// in the event's own transaction. Key: business \0 action \0 channel, where
// neither the business nor the action name holds a NUL (the rules folder's
// name; a declared action name is text), so the channel ("*", the
// request's, or attrs' — text too) is whatever follows the second.
static size_t
model_key(ch_biz *b, const char *a, size_t an, const char *c, size_t cn,
    char *key, size_t cap)
{
	size_t bn = strlen(b->name);
	if (bn + an + cn + 2 > cap) {
		return (0);
	}
	memcpy(key, b->name, bn + 1);
	memcpy(key + bn + 1, a, an);
	key[bn + 1 + an] = '\0';
	memcpy(key + bn + 2 + an, c, cn);
	return (bn + an + cn + 2);
}

static int
model_read(ch_biz *b, const char *key, size_t klen, uint64_t v[3])
{
	MDB_val val;
	v[0] = v[1] = v[2] = 0;
	if (b->cur == NULL || b->cur->store == NULL) {
		return (CH_OK);
	}
	int rc = ch_store_get(b->cur->store, b->cur->txn, CH_DB_MODELS, key, klen,
	    &val);
	if (rc == CH_OK && val.mv_size == 3 * sizeof(uint64_t)) {
		memcpy(v, val.mv_data, 3 * sizeof(uint64_t));
	} else if (rc != CH_OK && rc != CH_ENOTFOUND) {
		return (rc);
	}
	return (CH_OK);
}

void
ch_biz_model_read(ch_biz *b, const char *action, size_t alen, const char *ch,
    size_t chlen, uint64_t v[3])
{
	char   key[64 + 2 * 256 + 2];
	size_t klen = model_key(b, action, alen, ch, chlen, key, sizeof(key));
	int    rc   = klen == 0 ? CH_OK : model_read(b, key, klen, v);
	if (rc != CH_OK) {
		b->cur->store_err = rc;
		luaL_error(b->L, "the store failed");
	}
}

static int
l_model_get(lua_State *L)
{
	ch_biz     *b = ch_biz_of(L);
	size_t      an, cn;
	const char *a = luaL_checklstring(L, 1, &an);
	const char *c = luaL_checklstring(L, 2, &cn);
	uint64_t    v[3];
	ch_biz_model_read(b, a, an, c, cn, v);
	lua_pushinteger(L, (lua_Integer) v[0]);
	lua_pushinteger(L, (lua_Integer) (v[1] + v[2]));
	return (2);
}

static int
l_model_add(lua_State *L)
{
	ch_biz     *b = ch_biz_of(L);
	char        key[64 + 2 * 256 + 2];
	uint64_t    v[3];
	size_t      an, cn;
	const char *a       = luaL_checklstring(L, 1, &an);
	const char *c       = luaL_checklstring(L, 2, &cn);
	const char *outcome = luaL_checkstring(L, 3);
	size_t      klen    = model_key(b, a, an, c, cn, key, sizeof(key));
	b->model_gen++;
	if (b->cur == NULL || b->cur->store == NULL || klen == 0) {
		return (0);
	}
	int rc = model_read(b, key, klen, v);
	if (rc == CH_OK) {
		v[strcmp(outcome, "accepted") == 0   ? 0
		    : strcmp(outcome, "rejected") == 0 ? 1
		                                       : 2]++;
		rc = ch_store_put(b->cur->store, b->cur->txn, CH_DB_MODELS, key,
		    klen, v, sizeof(v));
	}
	if (rc != CH_OK) {
		b->cur->store_err = rc;
		return (luaL_error(L, "the store failed"));
	}
	return (0);
}

// Timers: key = due (8 bytes, big-endian) ‖ business \0 customer \0 name,
// value = {type, data} packed; the engine fires them (core/engine.c),
// reading the fields back at the NULs: none of them holds one (the
// customer is a request's, the name "a:" type, "i:" journey or "s:" case,
// all text).
static size_t
timer_key(ch_biz *b, int64_t due, const char *c, size_t cn, const char *n,
    size_t nn, char *key, size_t cap)
{
	ch_str biz = { b->name, (uint32_t) strlen(b->name) };
	return (ch_timer_key(key, cap, due, biz, (ch_str) { c, (uint32_t) cn },
	    (ch_str) { n, (uint32_t) nn }));
}

// H.timer_put(customer, name, due, type, data|nil)
static int
l_timer_put(lua_State *L)
{
	ch_biz     *b = ch_biz_of(L);
	size_t      cn, nn, tn;
	const char *c   = luaL_checklstring(L, 1, &cn);
	const char *n   = luaL_checklstring(L, 2, &nn);
	int64_t     due = (int64_t) luaL_checkinteger(L, 3);
	const char *t   = luaL_checklstring(L, 4, &tn);
	char        key[CH_TIMER_KEY_MAX];
	size_t      klen = timer_key(b, due, c, cn, n, nn, key, sizeof(key));
	if (b->cur == NULL || b->cur->store == NULL) {
		return (0); // lint and tools: nothing is kept
	}
	if (klen == 0) {
		return (luaL_error(L, "a timer name is too long"));
	}
	// {type, data} in the state's scratch (data that cannot be stored
	// raises before anything needs freeing)
	msgpack_sbuffer *v = ch_conv_scratch(L);
	msgpack_packer   pk;
	msgpack_packer_init(&pk, v, msgpack_sbuffer_write);
	bool data = lua_istable(L, 5);
	msgpack_pack_map(&pk, data ? 2 : 1);
	ch_pack_str(&pk, "type");
	msgpack_pack_str_with_body(&pk, t, tn);
	if (data) {
		ch_pack_str(&pk, "data");
		ch_conv_pack(L, 5, v, "timer data");
	}
	int rc = ch_store_put(b->cur->store, b->cur->txn, CH_DB_TIMERS, key,
	    klen, v->data, v->size);
	if (rc != CH_OK) {
		b->cur->store_err = rc;
		return (luaL_error(L, "the store failed"));
	}
	return (0);
}

// H.timer_del(customer, name, due)
static int
l_timer_del(lua_State *L)
{
	ch_biz     *b = ch_biz_of(L);
	size_t      cn, nn;
	const char *c   = luaL_checklstring(L, 1, &cn);
	const char *n   = luaL_checklstring(L, 2, &nn);
	int64_t     due = (int64_t) luaL_checkinteger(L, 3);
	char        key[CH_TIMER_KEY_MAX];
	size_t      klen = timer_key(b, due, c, cn, n, nn, key, sizeof(key));
	if (b->cur == NULL || b->cur->store == NULL || klen == 0) {
		return (0);
	}
	int rc = ch_store_del(b->cur->store, b->cur->txn, CH_DB_TIMERS, key,
	    klen);
	if (rc != CH_OK && rc != CH_ENOTFOUND) {
		b->cur->store_err = rc;
		return (luaL_error(L, "the store failed"));
	}
	return (0);
}

// The model epoch: bumped whenever a transaction that may have written the
// model is rolled back, so that the rules' cached counts are dropped.
static atomic_uint_fast64_t model_epoch;

void
ch_rules_model_rollback(void)
{
	atomic_fetch_add(&model_epoch, 1);
}

uint64_t
ch_rules_epoch(void)
{
	return (atomic_load(&model_epoch));
}

static int
l_model_epoch(lua_State *L)
{
	lua_pushinteger(L, (lua_Integer) atomic_load(&model_epoch));
	return (1);
}

// H.storable(v, what) -> nil, or why v cannot be stored ("c.attrs.f:
// cannot store a value of type function"), for the prelude to raise where
// the value was put.
static int
l_storable(lua_State *L)
{
	const char *what = luaL_checkstring(L, 2);
	lua_settop(L, 2);
	if (ch_conv_check(L, 1, what)) {
		return (1);
	}
	lua_pushnil(L);
	return (1);
}

// H.is_text(v) -> whether v is a string of valid UTF-8 without NUL bytes,
// what a name that goes into a key must be.
static int
l_is_text(lua_State *L)
{
	size_t      n;
	const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n)
	                                             : NULL;
	lua_pushboolean(L, s != NULL && ch_utf8_text(s, n));
	return (1);
}

// circ_problem: with the attrs at 2, 1 and the message pushed when
// attrs.region, .channel or .product holds a string that is not text.
static int
circ_problem(lua_State *L)
{
	static const char *const circ[] = { "region", "channel", "product" };
	for (int i = 0; i < 3; i++) {
		size_t      n = 0;
		const char *v = lua_getfield(L, 2, circ[i]) ==
		        LUA_TSTRING
		    ? lua_tolstring(L, -1, &n)
		    : NULL;
		if (v != NULL && !ch_utf8_text(v, n)) {
			lua_pushfstring(L, "c.attrs.%s is the customer's "
			                   "%s and must be valid UTF-8 "
			                   "without NUL bytes",
			    circ[i], circ[i]);
			return (1);
		}
		lua_pop(L, 1);
	}
	return (0);
}

// H.state_problem(st[, all]) -> nil, or what is wrong with what handlers
// write in a customer's state: attrs.region, .channel and .product, the
// circumstance when a request has none, must be text (they name analytics
// counters); with all, attrs and cases must also be storable (a walk of
// both, so the prelude asks it only between handlers: packing the state
// checks after the last).
static int
l_state_problem(lua_State *L)
{
	bool all = lua_toboolean(L, 2);
	lua_settop(L, 1);
	if (lua_getfield(L, 1, "attrs") == LUA_TTABLE) {      /* st, attrs */
		if ((all && ch_conv_check(L, 2, "c.attrs")) || circ_problem(L)) {
			return (1);
		}
	}
	if (all && lua_getfield(L, 1, "cases") == LUA_TTABLE &&
	    ch_conv_check(L, -1, "c.cases")) {
		return (1);
	}
	lua_pushnil(L);
	return (1);
}

// H.pack(v, what) -> v packed now (a value the packer writes as it is);
// raises, at the caller's line, on a value that cannot be stored.
static int
l_pack(lua_State *L)
{
	const char *what = luaL_checkstring(L, 2);
	return (ch_conv_prepack_as(L, 1, what));
}

static int
l_log(lua_State *L)
{
	ch_biz     *b = ch_biz_of(L);
	luaL_Buffer buf;
	int         n = lua_gettop(L);
	luaL_buffinit(L, &buf);
	for (int i = 1; i <= n; i++) {
		if (i > 1) {
			luaL_addchar(&buf, '\t');
		}
		luaL_tolstring(L, i, NULL);
		luaL_addvalue(&buf);
	}
	luaL_pushresult(&buf);
	ch_log_info("rules[%s]: %s", b->name, lua_tostring(L, -1));
	return (0);
}

/* }====================================================== */

/*
** {======================================================
** Loading a business
** =======================================================
*/

// full_path: Lua shortens a chunk name longer than LUA_IDSIZE to "..." and
// its end in syntax errors; the error's file is then the rule file that
// ends so.
static void
full_path(ch_biz *b)
{
	const char *f = b->err.file;
	if (f == NULL || strncmp(f, "...", 3) != 0) {
		return;
	}
	size_t n = strlen(f + 3);
	for (int i = 0; i < b->nfiles; i++) {
		size_t fl = b->files[i] != NULL ? strlen(b->files[i]) : 0;
		if (fl >= n && strcmp(b->files[i] + fl - n, f + 3) == 0) {
			free(b->err.file);
			b->err.file = strdup(b->files[i]);
			return;
		}
	}
}

static void
set_error(ch_biz *b, const char *msg, const char *file)
{
	free(b->err.message);
	free(b->err.file);
	b->err.message = strdup(msg);
	b->err.file    = file ? strdup(file) : NULL;
	b->err.line    = 0;
	b->err.at      = now_ms();
	// "path:line: text" — take the position from the message itself
	const char *m = msg;
	while ((m = strchr(m, ':')) != NULL) {
		const char *d = m + 1;
		while (*d >= '0' && *d <= '9') {
			d++;
		}
		if (d > m + 1 && *d == ':' && m - msg >= 4 &&
		    strncmp(m - 4, ".lua", 4) == 0) {
			const char *start = m;
			while (start > msg && start[-1] != ' ') {
				start--; // the path begins after a space
			}
			free(b->err.file);
			b->err.file = strndup(start, (size_t) (m - start));
			b->err.line = atoi(m + 1);
			full_path(b);
			break;
		}
		m++;
	}
}

static int
cmp_str(const void *a, const void *b)
{
	return (strcmp(*(char *const *) a, *(char *const *) b));
}

static bool
ident_ok(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > 64) {
		return (false);
	}
	for (; *s; s++) {
		char c = *s;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		        (c >= '0' && c <= '9') || c == '_' || c == '-')) {
			return (false);
		}
	}
	return (true);
}

char *
ch_rules_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		return (NULL);
	}
	size_t cap = 4096, n = 0;
	char  *buf = malloc(cap);
	size_t r;
	while (buf != NULL && (r = fread(buf + n, 1, cap - n, f)) > 0) {
		n += r;
		if (n == cap) {
			char *nb = realloc(buf, cap *= 2);
			if (nb == NULL) {
				free(buf);
				buf = NULL;
			}
			buf = nb;
		}
	}
	fclose(f);
	*len = n;
	return (buf);
}

// ch_rules_list_lua returns the *.lua regular files of dir, sorted.
char **
ch_rules_list_lua(const char *dir, int *count)
{
	DIR *d = opendir(dir);
	*count = 0;
	if (d == NULL) {
		return (NULL);
	}
	char         **names = NULL;
	int            n = 0, cap = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);
		if (l < 5 || strcmp(e->d_name + l - 4, ".lua") != 0 ||
		    e->d_name[0] == '.') {
			continue;
		}
		char path[4096];
		struct stat st;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
			continue;
		}
		if (n == cap) {
			cap       = cap ? cap * 2 : 16;
			char **nn = realloc(names, (size_t) cap * sizeof(char *));
			if (nn == NULL) {
				break;
			}
			names = nn;
		}
		names[n++] = strdup(e->d_name);
	}
	closedir(d);
	if (n > 0) {
		qsort(names, (size_t) n, sizeof(char *), cmp_str);
	}
	*count = n;
	return (names);
}

static uint64_t
fnv1a(uint64_t h, const void *p, size_t n)
{
	const unsigned char *s = p;
	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ull;
	}
	return (h);
}

// open_state makes the Lua state with only the safe libraries, runs the
// prelude and keeps its API table. Returns 0, or -1 with the error set.
static int
open_state(ch_biz *b)
{
	lua_State *L = lua_newstate(biz_alloc, b);
	if (L == NULL) {
		set_error(b, "cannot create a Lua state (out of memory)", NULL);
		return (-1);
	}
	b->L = L;
	luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
	luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
	luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
	luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
	luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
	luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 1);
	luaL_requiref(L, LUA_DBLIBNAME, luaopen_debug, 0); /* not global */
	lua_settop(L, 0);
	ch_conv_init(L);
	ch_nba_open(L);
	lua_gc(L, LUA_GCGEN, 0, 0);

	if (luaL_loadbufferx(L, (const char *) ch_prelude_lua,
	        ch_prelude_lua_len, "=prelude", "t") != LUA_OK) {
		set_error(b, lua_tostring(L, -1), NULL);
		return (-1);
	}
	lua_createtable(L, 0, 3);                 /* prelude, H */
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
	lua_getfield(L, -1, LUA_DBLIBNAME);       /* prelude, H, loaded, debug */
	lua_getfield(L, -1, "getinfo");
	lua_setfield(L, -4, "getinfo");           /* H.getinfo = debug.getinfo */
	lua_getfield(L, -1, "getmetatable");
	lua_setfield(L, -4, "getmetatable");      /* H.getmetatable = debug's */
	lua_pop(L, 2);                            /* prelude, H */
	ch_conv_push_array_mt(L);
	lua_setfield(L, -2, "array_mt");
	lua_pushcfunction(L, l_log);
	lua_setfield(L, -2, "log");
	lua_pushcfunction(L, l_hash64);
	lua_setfield(L, -2, "hash64");
	lua_pushcfunction(L, l_hash01);
	lua_setfield(L, -2, "hash01");
	lua_pushcfunction(L, l_model_get);
	lua_setfield(L, -2, "model_get");
	lua_pushcfunction(L, l_model_add);
	lua_setfield(L, -2, "model_add");
	lua_pushcfunction(L, l_timer_put);
	lua_setfield(L, -2, "timer_put");
	lua_pushcfunction(L, l_timer_del);
	lua_setfield(L, -2, "timer_del");
	lua_pushcfunction(L, l_model_epoch);
	lua_setfield(L, -2, "model_epoch");
	lua_pushcfunction(L, l_storable);
	lua_setfield(L, -2, "storable");
	lua_pushcfunction(L, l_is_text);
	lua_setfield(L, -2, "is_text");
	lua_pushcfunction(L, l_state_problem);
	lua_setfield(L, -2, "state_problem");
	lua_pushcfunction(L, l_pack);
	lua_setfield(L, -2, "pack");
	ch_nba_register(L, lua_gettop(L));
	lua_newtable(L);
	ch_pattern_install(L, -1);
	lua_setfield(L, -2, "patterns");
	lua_pushstring(L, b->name);
	lua_setfield(L, -2, "business");
	if (pcall_rule(b, 1, 1) != CH_OK) {       /* API */
		set_error(b, lua_tostring(L, -1), NULL);
		return (-1);
	}
	b->api = luaL_ref(L, LUA_REGISTRYINDEX);
	// The debug library was only for the prelude: drop it from the state.
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
	lua_pushnil(L);
	lua_setfield(L, -2, LUA_DBLIBNAME);
	lua_pop(L, 1);
	lua_pushnil(L);
	lua_setglobal(L, "debug");
	return (0);
}

static void
biz_free(ch_biz *b)
{
	if (b == NULL) {
		return;
	}
	if (b->L != NULL) {
		lua_close(b->L);
	}
	for (int i = 0; i < b->nfiles; i++) {
		free(b->files[i]);
		if (b->srcs != NULL) {
			free(b->srcs[i]);
		}
	}
	free(b->files);
	free(b->srcs);
	free(b->srclens);
	free(b->err.message);
	free(b->err.file);
	free(b->token);
	free(b);
}

static ch_biz *
biz_new(const char *name, const ch_rules_opts *o)
{
	ch_biz *b = calloc(1, sizeof(*b));
	if (b == NULL) {
		return (NULL);
	}
	snprintf(b->name, sizeof(b->name), "%s", name);
	b->mem_limit = o->mem_limit;
	b->budget    = o->instr_budget;
	b->loaded_at = now_ms();
	b->api       = LUA_NOREF;
	b->opts      = *o;
	return (b);
}

static void biz_compile(ch_biz *b, const char *dir);

static void
biz_log(ch_biz *b)
{
	if (b->err.message != NULL) {
		ch_log_error("rules[%s]: these files do not load: %s", b->name,
		    b->err.message);
		if (b->L != NULL) {
			lua_close(b->L);
			b->L = NULL;
		}
	} else {
		ch_log_info("rules[%s]: version %s compiled, %d file(s)", b->name,
		    b->version, b->nfiles);
	}
}

// biz_load reads rules_dir/name/*.lua (kept, for the version history) and
// compiles them.
static ch_biz *
biz_load(const char *rules_dir, const char *name, const ch_rules_opts *o)
{
	ch_biz *b = biz_new(name, o);
	if (b == NULL) {
		return (NULL);
	}
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s/%s", rules_dir, name);
	int    n;
	char **names = ch_rules_list_lua(dir, &n);
	b->files     = calloc((size_t) (n > 0 ? n : 1), sizeof(char *));
	b->srcs      = calloc((size_t) (n > 0 ? n : 1), sizeof(char *));
	b->srclens   = calloc((size_t) (n > 0 ? n : 1), sizeof(size_t));
	if (b->files == NULL || b->srcs == NULL || b->srclens == NULL) {
		set_error(b, "out of memory", NULL);
		n = 0;
	}
	for (int i = 0; i < n; i++) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		b->files[i] = strdup(path);
		b->srcs[i]  = ch_rules_read_file(path, &b->srclens[i]);
		b->nfiles++;
		if (b->srcs[i] == NULL && b->err.message == NULL) {
			char m[4300];
			snprintf(m, sizeof(m), "%s: cannot read: %s", path,
			    strerror(errno));
			set_error(b, m, path);
		}
	}
	for (int i = 0; i < n; i++) {
		free(names[i]);
	}
	free(names);
	if (b->err.message == NULL && n == 0) {
		set_error(b, "the folder holds no .lua rule files", dir);
	}
	if (b->err.message == NULL) {
		biz_compile(b, dir);
	}
	biz_log(b);
	return (b);
}

typedef struct {
	const char *p, *end;
	int         line; // of the last line handed out
} line_reader;

static const char *
read_line(lua_State *L, void *ud, size_t *size)
{
	line_reader *r = ud;
	(void) L;
	if (r->p >= r->end) {
		return (NULL);
	}
	const char *s  = r->p;
	const char *nl = memchr(s, '\n', (size_t) (r->end - s));
	r->p           = nl != NULL ? nl + 1 : r->end;
	r->line++;
	*size = (size_t) (r->p - s);
	return (s);
}

// unplaced_load_error gives a position to the load error of file i when
// Lua named none: it refuses a binary chunk, and a text nested deeper than
// the C stack allows ("C stack overflow"), without one. Parsing it again a
// line at a time tells the line the parser had reached.
static void
unplaced_load_error(ch_biz *b, int i)
{
	lua_State  *L = b->L;
	line_reader r = { b->srcs[i], b->srcs[i] + b->srclens[i], 0 };
	char        chunk[4100], m[4800];
	snprintf(chunk, sizeof(chunk), "@%s", b->files[i]);
	if (lua_load(L, read_line, &r, chunk, "t") == LUA_OK) {
		r.line = 0; // it loads now (memory): no line to tell
	}
	lua_pop(L, 1);
	if (r.line == 0) {
		return;
	}
	if (b->srclens[i] > 0 && b->srcs[i][0] == LUA_SIGNATURE[0]) {
		snprintf(m, sizeof(m), "%s:1: a rule file is Lua text; this is "
		                       "a precompiled (binary) chunk",
		    b->files[i]);
	} else {
		snprintf(m, sizeof(m), "%s:%d: %s", b->files[i], r.line,
		    b->err.message);
	}
	set_error(b, m, b->files[i]);
}

// read_token_file reads rules/<b>/token: *tok is the token, or NULL when
// there is no such file. A file that is there but unreadable, empty, only
// whitespace, shorter than a declared token may be (8), or more than one
// line would switch authentication off or weaken it without a word: it
// refuses the version instead (-1, the error set with file:line).
static int
read_token_file(ch_biz *b, const char *path, char **tok)
{
	size_t len;
	char  *t = ch_rules_read_file(path, &len);
	char   msg[4400];
	size_t line = 1;
	*tok        = NULL;
	if (t == NULL) {
		if (errno == ENOENT) {
			return (0);
		}
		snprintf(msg, sizeof(msg), "%s:1: the token file cannot be read: "
		                           "%s",
		    path, strerror(errno));
		goto refuse;
	}
	size_t lo = 0, hi = len;
	while (lo < hi && isspace((unsigned char) t[lo])) {
		lo++;
	}
	while (hi > lo && isspace((unsigned char) t[hi - 1])) {
		hi--;
	}
	for (size_t i = 0; i < lo; i++) {
		line += t[i] == '\n';
	}
	if (hi == lo) {
		snprintf(msg, sizeof(msg),
		    "%s:1: the token file is empty: write the business's token "
		    "in it (at least 8 characters), or remove the file",
		    path);
		goto refuse;
	}
	for (size_t i = lo; i < hi; i++) {
		unsigned char c = (unsigned char) t[i];
		line += c == '\n'; // a second line: the error is on it
		if (c < 0x21 || c == 0x7f) {
			snprintf(msg, sizeof(msg),
			    "%s:%zu: the token file must hold one token: no "
			    "spaces, line breaks or control characters inside it",
			    path, line);
			goto refuse;
		}
	}
	if (hi - lo < 8) {
		snprintf(msg, sizeof(msg),
		    "%s:%zu: the token is %zu characters long: it needs at "
		    "least 8",
		    path, line, hi - lo);
		goto refuse;
	}
	memmove(t, t + lo, hi - lo);
	t[hi - lo] = '\0';
	*tok       = t;
	return (0);
refuse:
	free(t);
	set_error(b, msg, path);
	b->err.line = (int) line;
	if (b->L != NULL) {
		lua_close(b->L);
		b->L = NULL;
	}
	return (-1);
}

// biz_compile runs the files already read into a fresh sandboxed state.
static void
biz_compile(ch_biz *b, const char *dir)
{
	int      n = b->nfiles;
	uint64_t h = 0xcbf29ce484222325ull;
	for (int i = 0; i < n; i++) {
		const char *base = strrchr(b->files[i], '/');
		base             = base ? base + 1 : b->files[i];
		h = fnv1a(h, base, strlen(base) + 1);
		h = fnv1a(h, b->srcs[i], b->srclens[i]);
		h = fnv1a(h, "", 1);
	}
	snprintf(b->version, sizeof(b->version), "%012llx",
	    (unsigned long long) (h & 0xffffffffffffull));
	if (b->opts.quarantined != NULL &&
	    b->opts.quarantined(b->opts.qarg, b->name, b->version)) {
		// it crashed the engine once: never run it again
		snprintf(b->quarantined, sizeof(b->quarantined), "%s",
		    b->version);
		set_error(b, "this version is quarantined", NULL);
		return;
	}
	if (open_state(b) != 0) {
		return;
	}
	mark(b, "load", 4);
	for (int i = 0; i < n; i++) {
		lua_State  *L = b->L;
		char chunk[4100];
		snprintf(chunk, sizeof(chunk), "@%s", b->files[i]);
		int st = luaL_loadbufferx(L, b->srcs[i], b->srclens[i], chunk,
		    "t");
		if (st != LUA_OK) {
			set_error(b, lua_tostring(L, -1), b->files[i]);
			if (b->err.line == 0) {
				unplaced_load_error(b, i);
			}
			lua_settop(L, 0);
			mark(b, NULL, 0);
			return;
		}
		lua_rawgeti(L, LUA_REGISTRYINDEX, b->api); /* chunk, API */
		lua_getfield(L, -1, "env");                /* chunk, API, env */
		lua_remove(L, -2);
		lua_setupvalue(L, -2, 1);                  /* chunk._ENV = env */
		if (pcall_rule(b, 0, 0) != CH_OK) {
			set_error(b, lua_tostring(L, -1), b->files[i]);
			lua_settop(L, 0);
			mark(b, NULL, 0);
			return;
		}
	}
	mark(b, NULL, 0);
	// cross-references between declarations, once everything is loaded
	lua_rawgeti(b->L, LUA_REGISTRYINDEX, b->api);
	lua_getfield(b->L, -1, "check");
	lua_remove(b->L, -2);
	if (pcall_rule(b, 0, 0) != CH_OK) {
		set_error(b, lua_tostring(b->L, -1), NULL);
		lua_settop(b->L, 0);
		return;
	}
	// sandbox { instructions = N, memory = M } overrides the defaults
	lua_rawgeti(b->L, LUA_REGISTRYINDEX, b->api);
	lua_getfield(b->L, -1, "sandbox");
	lua_remove(b->L, -2);
	if (pcall_rule(b, 0, 2) == CH_OK) {
		if (lua_isinteger(b->L, -2)) {
			b->budget = (uint64_t) lua_tointeger(b->L, -2);
		}
		if (lua_isinteger(b->L, -1)) {
			b->mem_limit = (size_t) lua_tointeger(b->L, -1);
		}
	}
	lua_settop(b->L, 0);
	// the token: a file next to the rules wins over a declaration
	char tpath[4200];
	snprintf(tpath, sizeof(tpath), "%s/token", dir);
	char *tok = NULL;
	if (read_token_file(b, tpath, &tok) != 0) {
		return; // refused: the version does not load
	}
	if (tok == NULL) {
		lua_rawgeti(b->L, LUA_REGISTRYINDEX, b->api);
		lua_getfield(b->L, -1, "token");
		lua_remove(b->L, -2);
		if (pcall_rule(b, 0, 1) == CH_OK &&
		    lua_type(b->L, -1) == LUA_TSTRING) {
			tok = strdup(lua_tostring(b->L, -1));
		}
		lua_settop(b->L, 0);
	}
	b->token = tok;
}

static int
cmp_biz(const void *a, const void *b)
{
	return (strcmp((*(ch_biz *const *) a)->name,
	    (*(ch_biz *const *) b)->name));
}

int
ch_rules_load(ch_rules **out, const char *dir, const ch_rules_opts *o)
{
	ch_rules *r = calloc(1, sizeof(*r));
	if (r == NULL) {
		return (CH_EINTERNAL);
	}
	r->opts = *o;
	DIR *d  = opendir(dir);
	if (d == NULL) {
		ch_log_error("rules: cannot open '%s': %s", dir, strerror(errno));
		free(r);
		return (CH_EINTERNAL);
	}
	struct dirent *e;
	int            cap = 0;
	while ((e = readdir(d)) != NULL) {
		char        path[4096];
		struct stat st;
		if (e->d_name[0] == '.') {
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
			continue;
		}
		if (!ident_ok(e->d_name)) {
			ch_log_warn("rules: skipping folder '%s': a business "
			            "name is 1-64 of [A-Za-z0-9_-]",
			    e->d_name);
			continue;
		}
		if (r->n == cap) {
			cap         = cap ? cap * 2 : 8;
			ch_biz **nb = realloc(r->biz, (size_t) cap * sizeof(*nb));
			if (nb == NULL) {
				break;
			}
			r->biz = nb;
		}
		ch_biz *b = biz_load(dir, e->d_name, o);
		if (b != NULL) {
			r->biz[r->n++] = b;
		}
	}
	closedir(d);
	if (r->n > 0) {
		qsort(r->biz, (size_t) r->n, sizeof(ch_biz *), cmp_biz);
	}
	*out = r;
	return (CH_OK);
}

int
ch_rules_load_one(ch_rules **out, const char *dir, const char *business,
    const ch_rules_opts *o)
{
	ch_rules *r = calloc(1, sizeof(*r));
	if (r == NULL) {
		return (CH_EINTERNAL);
	}
	r->opts = *o;
	r->biz  = calloc(1, sizeof(ch_biz *));
	if (r->biz == NULL || (r->biz[0] = biz_load(dir, business, o)) == NULL) {
		free(r->biz);
		free(r);
		return (CH_EINTERNAL);
	}
	r->n = 1;
	*out = r;
	return (CH_OK);
}

void
ch_rules_free(ch_rules *r)
{
	if (r == NULL) {
		return;
	}
	for (int i = 0; i < r->n; i++) {
		biz_free(r->biz[i]);
	}
	free(r->biz);
	free(r);
}

static ch_biz *
lookup(ch_rules *r, ch_str name)
{
	int lo = 0, hi = r->n - 1;
	while (lo <= hi) {
		int    mid = (lo + hi) / 2;
		size_t ml  = strlen(r->biz[mid]->name);
		int    c   = memcmp(r->biz[mid]->name, name.p,
		             ml < name.n ? ml : name.n);
		if (c == 0) {
			c = (ml > name.n) - (ml < name.n);
		}
		if (c == 0) {
			return (r->biz[mid]);
		}
		if (c < 0) {
			lo = mid + 1;
		} else {
			hi = mid - 1;
		}
	}
	return (NULL);
}

ch_biz *
ch_rules_find(ch_rules *r, ch_str business)
{
	ch_biz *b = lookup(r, business);
	return ((b != NULL && b->L != NULL) ? b : NULL);
}

void
ch_rules_keep_serving(ch_rules *fresh, ch_rules *old)
{
	for (int i = 0; i < fresh->n; i++) {
		ch_biz *fb = fresh->biz[i];
		if (fb->L != NULL) {
			continue;
		}
		ch_str  name = { fb->name, (uint32_t) strlen(fb->name) };
		ch_biz *ob   = lookup(old, name);
		if (ob == NULL || ob->L == NULL) {
			continue;
		}
		// The old version keeps serving, with the new version's error.
		for (int j = 0; j < old->n; j++) {
			if (old->biz[j] == ob) {
				old->biz[j] = fb;
			}
		}
		free(ob->err.message);
		free(ob->err.file);
		ob->err        = fb->err;
		fb->err.message = NULL;
		fb->err.file    = NULL;
		fresh->biz[i]   = ob;
		ch_log_warn("rules[%s]: version %s keeps serving", ob->name,
		    ob->version);
	}
}

void
ch_rules_publish_changes(ch_rules *fresh, ch_rules *old,
    void (*publish)(void *, const void *, size_t), void *arg)
{
	msgpack_sbuffer b;
	msgpack_packer  pk;
	msgpack_sbuffer_init(&b);
	for (int i = 0; i < fresh->n; i++) {
		ch_biz *fb   = fresh->biz[i];
		ch_str  name = { fb->name, (uint32_t) strlen(fb->name) };
		ch_biz *ob   = lookup(old, name);
		bool    changed = ob == NULL || ob->L == NULL ||
		    strcmp(ob->version, fb->version) != 0;
		// an error that went away (the files were put back) is news
		// to whoever saw it
		bool cleared = ob != NULL && ob->err.message != NULL &&
		    fb->err.message == NULL;
		if (!changed && !cleared && fb->err.message == NULL) {
			ch_log_info("rules[%s]: version %s unchanged, still live",
			    fb->name, fb->version);
			continue; // the same files as before
		}
		if (changed && fb->err.message == NULL && fb->L != NULL) {
			ch_log_info("rules[%s]: version %s is live", fb->name,
			    fb->version);
		}
		b.size = 0;
		char topic[128];
		int  tl = snprintf(topic, sizeof(topic), "choreo/%s/rules",
		     fb->name);
		msgpack_sbuffer_write(&b, topic, (size_t) tl + 1);
		msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
		msgpack_pack_map(&pk, 3);
		ch_pack_str(&pk, "ok");
		if (fb->err.message == NULL) {
			msgpack_pack_true(&pk);
		} else {
			msgpack_pack_false(&pk);
		}
		ch_pack_str(&pk, "businesses");
		msgpack_pack_map(&pk, 1);
		pack_biz(fb, &pk);
		ch_pack_kv_str(&pk, "business", fb->name);
		publish(arg, b.data, b.size);
	}
	// businesses that are gone
	for (int i = 0; i < old->n; i++) {
		ch_biz *ob   = old->biz[i];
		ch_str  name = { ob->name, (uint32_t) strlen(ob->name) };
		if (lookup(fresh, name) != NULL) {
			continue;
		}
		b.size = 0;
		char topic[128];
		int  tl = snprintf(topic, sizeof(topic), "choreo/%s/rules",
		     ob->name);
		msgpack_sbuffer_write(&b, topic, (size_t) tl + 1);
		msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
		msgpack_pack_map(&pk, 3);
		ch_pack_str(&pk, "ok");
		msgpack_pack_true(&pk);
		ch_pack_kv_str(&pk, "business", ob->name);
		ch_pack_str(&pk, "removed");
		msgpack_pack_true(&pk);
		publish(arg, b.data, b.size);
	}
	msgpack_sbuffer_destroy(&b);
}

void
ch_rules_fail(ch_rules *r, const char *business, const char *msg)
{
	ch_str  name = { business, (uint32_t) strlen(business) };
	ch_biz *b    = lookup(r, name);
	if (b == NULL) {
		return;
	}
	set_error(b, msg, NULL);
	ch_log_error("rules[%s]: refused: %s", business, msg);
	if (b->L != NULL) {
		lua_close(b->L);
		b->L = NULL;
	}
}

const char *
ch_rules_name(const ch_rules *r, int i)
{
	return (i < r->n ? r->biz[i]->name : NULL);
}

bool
ch_rules_serving(const ch_rules *r, int i)
{
	return (i < r->n && r->biz[i]->L != NULL);
}

/*
** {======================================================
** Version history and quarantine, in the store's meta database
** =======================================================
*/

#define HISTORY_KEEP 10

// meta keys: kind \0 business \0 version; the kind is ours, the business
// a folder name of [A-Za-z0-9_-], the version hex.
static size_t
meta_key(char *buf, size_t cap, const char *kind, const char *biz,
    const char *version)
{
	int n = snprintf(buf, cap, "%s%c%s%c%s", kind, 0, biz, 0,
	    version ? version : "");
	return (n < 0 ? 0 : (size_t) n);
}

typedef struct {
	char    version[17];
	int64_t at;
} hist_entry;

static int
cmp_hist(const void *a, const void *b)
{
	const hist_entry *x = a, *y = b;
	return ((x->at < y->at) - (x->at > y->at)); // newest first
}

// history lists the versions stored for biz, newest first.
static int
history(ch_store *s, MDB_txn *txn, const char *biz, hist_entry *out, int cap)
{
	char       prefix[128];
	size_t     plen = meta_key(prefix, sizeof(prefix), "rules", biz, NULL);
	MDB_cursor *c;
	MDB_val     k = { plen, prefix }, v;
	int         n = 0;
	if (mdb_cursor_open(txn, ch_store_dbi(s, CH_DB_META), &c) != 0) {
		return (0);
	}
	int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
	while (rc == 0 && k.mv_size > plen &&
	    memcmp(k.mv_data, prefix, plen) == 0) {
		if (n < cap && v.mv_size >= 8 && k.mv_size - plen < 17) {
			memcpy(&out[n].at, v.mv_data, 8);
			memcpy(out[n].version, (char *) k.mv_data + plen,
			    k.mv_size - plen);
			out[n].version[k.mv_size - plen] = '\0';
			n++;
		}
		rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(c);
	qsort(out, (size_t) n, sizeof(hist_entry), cmp_hist);
	return (n);
}

int
ch_rules_record_versions(ch_rules *r, ch_store *s)
{
	MDB_txn *txn;
	if (ch_store_begin(s, NULL, &txn) != CH_OK) {
		return (CH_EINTERNAL);
	}
	msgpack_sbuffer b;
	msgpack_packer  pk;
	msgpack_sbuffer_init(&b);
	int rc = CH_OK;
	for (int i = 0; i < r->n && rc == CH_OK; i++) {
		ch_biz *z = r->biz[i];
		char    key[128];
		MDB_val v;
		if (z->L == NULL || z->srcs == NULL) {
			continue;
		}
		size_t klen = meta_key(key, sizeof(key), "rules", z->name,
		    z->version);
		if (ch_store_get(s, txn, CH_DB_META, key, klen, &v) == CH_OK) {
			continue; // known: keep its first load time
		}
		// u64 load time ‖ msgpack [[path, source]...]
		b.size = 0;
		msgpack_sbuffer_write(&b, (const char *) &z->loaded_at, 8);
		msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
		msgpack_pack_array(&pk, (size_t) z->nfiles);
		for (int f = 0; f < z->nfiles; f++) {
			// byte for byte, as the files are (ch_pack_str would
			// escape what is not UTF-8): a rollback compiles them
			msgpack_pack_array(&pk, 2);
			msgpack_pack_str_with_body(&pk, z->files[f],
			    strlen(z->files[f]));
			msgpack_pack_str_with_body(&pk, z->srcs[f],
			    z->srclens[f]);
		}
		rc = ch_store_put(s, txn, CH_DB_META, key, klen, b.data, b.size);
		// keep the newest HISTORY_KEEP
		hist_entry h[64];
		int        n = history(s, txn, z->name, h, 64);
		for (int k = HISTORY_KEEP; k < n && rc == CH_OK; k++) {
			klen = meta_key(key, sizeof(key), "rules", z->name,
			    h[k].version);
			rc = ch_store_del(s, txn, CH_DB_META, key, klen);
		}
	}
	msgpack_sbuffer_destroy(&b);
	if (rc != CH_OK) {
		ch_store_abort(txn);
		return (rc);
	}
	return (ch_store_commit(s, txn));
}

int
ch_rules_pack_history(ch_store *s, ch_rules *r, ch_str business,
    msgpack_packer *pk)
{
	const ch_biz *serving = lookup(r, business);
	MDB_txn   *txn;
	hist_entry h[64];
	char       biz[65];
	snprintf(biz, sizeof(biz), "%.*s", (int) business.n, business.p);
	if (mdb_txn_begin(ch_store_env(s), NULL, MDB_RDONLY, &txn) != 0) {
		return (CH_EINTERNAL);
	}
	int n = history(s, txn, biz, h, 64);
	msgpack_pack_array(pk, (size_t) n);
	for (int i = 0; i < n; i++) {
		char    key[128];
		MDB_val v;
		size_t  klen = meta_key(key, sizeof(key), "quarantine", biz,
		     h[i].version);
		bool    q = ch_store_get(s, txn, CH_DB_META, key, klen, &v) ==
		    CH_OK;
		bool live = serving != NULL && serving->L != NULL &&
		    strcmp(serving->version, h[i].version) == 0;
		msgpack_pack_map(pk, 2 + q + live);
		ch_pack_kv_str(pk, "version", h[i].version);
		ch_pack_str(pk, "loaded_at");
		msgpack_pack_int64(pk, h[i].at);
		if (live) {
			ch_pack_str(pk, "live");
			msgpack_pack_true(pk);
		}
		if (q) {
			ch_pack_str(pk, "quarantined");
			msgpack_pack_true(pk);
		}
	}
	mdb_txn_abort(txn);
	return (CH_OK);
}

// from_history compiles a stored version of a business.
static ch_biz *
from_history(ch_store *s, MDB_txn *txn, const char *rules_dir,
    const char *biz, const char *version, const ch_rules_opts *o)
{
	char    key[128];
	MDB_val v;
	size_t  klen = meta_key(key, sizeof(key), "rules", biz, version);
	if (ch_store_get(s, txn, CH_DB_META, key, klen, &v) != CH_OK ||
	    v.mv_size < 8) {
		return (NULL);
	}
	msgpack_unpacked up;
	size_t           off = 0;
	msgpack_unpacked_init(&up);
	if (msgpack_unpack_next(&up, (char *) v.mv_data + 8, v.mv_size - 8,
	        &off) != MSGPACK_UNPACK_SUCCESS ||
	    up.data.type != MSGPACK_OBJECT_ARRAY) {
		msgpack_unpacked_destroy(&up);
		return (NULL);
	}
	ch_biz  *b = biz_new(biz, o);
	uint32_t n = up.data.via.array.size;
	if (b == NULL) {
		msgpack_unpacked_destroy(&up);
		return (NULL);
	}
	b->files   = calloc(n + 1, sizeof(char *));
	b->srcs    = calloc(n + 1, sizeof(char *));
	b->srclens = calloc(n + 1, sizeof(size_t));
	for (uint32_t i = 0; b->srclens != NULL && i < n; i++) {
		msgpack_object *f = &up.data.via.array.ptr[i];
		if (f->type != MSGPACK_OBJECT_ARRAY || f->via.array.size != 2 ||
		    f->via.array.ptr[0].type != MSGPACK_OBJECT_STR ||
		    f->via.array.ptr[1].type != MSGPACK_OBJECT_STR) {
			continue;
		}
		msgpack_object_str *p = &f->via.array.ptr[0].via.str;
		msgpack_object_str *c = &f->via.array.ptr[1].via.str;
		b->files[b->nfiles]   = strndup(p->ptr, p->size);
		b->srcs[b->nfiles]    = malloc(c->size + 1);
		if (b->srcs[b->nfiles] != NULL) {
			memcpy(b->srcs[b->nfiles], c->ptr, c->size);
		}
		b->srclens[b->nfiles] = c->size;
		b->nfiles++;
	}
	msgpack_unpacked_destroy(&up);
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s/%s", rules_dir, biz);
	biz_compile(b, dir);
	biz_log(b);
	return (b);
}

// replace puts b in r in place of the business of the same name.
static void
replace(ch_rules *r, ch_biz *b)
{
	ch_str name = { b->name, (uint32_t) strlen(b->name) };
	for (int i = 0; i < r->n; i++) {
		if (strcmp(r->biz[i]->name, b->name) == 0) {
			biz_free(r->biz[i]);
			r->biz[i] = b;
			return;
		}
	}
	(void) name;
	biz_free(b); // the folder is gone: nothing to replace
}

int
ch_rules_use_version(ch_rules *r, ch_store *s, const char *rules_dir,
    const char *business, const char *version, char *why, size_t whylen)
{
	MDB_txn *txn;
	if (mdb_txn_begin(ch_store_env(s), NULL, MDB_RDONLY, &txn) != 0) {
		snprintf(why, whylen, "cannot read the version history");
		return (CH_EINTERNAL);
	}
	ch_biz *b = from_history(s, txn, rules_dir, business, version,
	    &r->opts);
	mdb_txn_abort(txn);
	if (b == NULL) {
		snprintf(why, whylen, "business '%s' has no version '%s' in its "
		                      "history",
		    business, version);
		return (CH_ENOTFOUND);
	}
	if (b->L == NULL) {
		snprintf(why, whylen, "version '%s' does not load: %s", version,
		    b->err.message ? b->err.message : "?");
		biz_free(b);
		return (CH_ERULE);
	}
	replace(r, b);
	return (CH_OK);
}

int
ch_rules_quarantine(ch_store *s, const char *business, const char *version,
    const char *event_type, int64_t at)
{
	MDB_txn *txn;
	char     key[128];
	if (ch_store_begin(s, NULL, &txn) != CH_OK) {
		return (CH_EINTERNAL);
	}
	msgpack_sbuffer b;
	msgpack_packer  pk;
	msgpack_sbuffer_init(&b);
	msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 2);
	ch_pack_kv_str(&pk, "event_type", event_type);
	ch_pack_str(&pk, "at");
	msgpack_pack_int64(&pk, at);
	size_t klen = meta_key(key, sizeof(key), "quarantine", business,
	    version);
	int rc = ch_store_put(s, txn, CH_DB_META, key, klen, b.data, b.size);
	msgpack_sbuffer_destroy(&b);
	if (rc != CH_OK) {
		ch_store_abort(txn);
		return (rc);
	}
	return (ch_store_commit(s, txn));
}

// last_resort: z's version is quarantined and no earlier good version is
// kept. A quarantine must never leave a business with nothing to serve, so
// z serves anyway — compiled again if its load was refused — except for
// requests of the event type it stopped the engine on, and the rules op,
// the log and the rules topic say so.
static void
last_resort(ch_biz *z, const char *rules_dir, const char *qtype)
{
	// (one that stopped the engine while loading would stop it again)
	if (z->L == NULL && z->quarantined[0] != '\0' && z->nfiles > 0 &&
	    strcmp(qtype, "load") != 0) {
		char dir[4200];
		snprintf(dir, sizeof(dir), "%s/%s", rules_dir, z->name);
		free(z->err.message);
		free(z->err.file);
		memset(&z->err, 0, sizeof(z->err));
		bool (*q)(void *, const char *, const char *) = z->opts.quarantined;
		z->opts.quarantined = NULL;
		biz_compile(z, dir);
		z->opts.quarantined = q;
		if (z->err.message != NULL && z->L != NULL) {
			lua_close(z->L);
			z->L = NULL;
		}
	}
	char msg[400];
	if (z->L == NULL) {
		snprintf(msg, sizeof(msg),
		    "version %s is quarantined: it stopped the engine on a '%s' "
		    "event, no earlier good version is kept, and it does not "
		    "load again%s%s",
		    z->version, qtype, z->err.message ? ": " : "",
		    z->err.message ? z->err.message : "");
		set_error(z, msg, NULL);
		ch_log_error("rules[%s]: %s", z->name, msg);
		return;
	}
	snprintf(z->refused_type, sizeof(z->refused_type), "%s", qtype);
	snprintf(msg, sizeof(msg),
	    "version %s is quarantined: it stopped the engine on a '%s' event. "
	    "No earlier good version is kept, so it still serves, refusing "
	    "'%s' events; fix the rules",
	    z->version, qtype, qtype);
	set_error(z, msg, NULL);
	ch_log_error("rules[%s]: %s", z->name, msg);
}

void
ch_rules_apply_quarantine(ch_rules *r, ch_store *s, const char *rules_dir)
{
	MDB_txn *txn;
	if (mdb_txn_begin(ch_store_env(s), NULL, MDB_RDONLY, &txn) != 0) {
		return;
	}
	for (int i = 0; i < r->n; i++) {
		ch_biz *z = r->biz[i];
		char    key[128];
		MDB_val v;
		if (z->L == NULL && z->quarantined[0] == '\0') {
			continue; // failed to load: nothing to fall back from
		}
		size_t klen = meta_key(key, sizeof(key), "quarantine", z->name,
		    z->version);
		if (ch_store_get(s, txn, CH_DB_META, key, klen, &v) != CH_OK) {
			continue;
		}
		// what it crashed on, for the rules op
		char    qver[17], qtype[65] = "";
		int64_t qat = 0;
		snprintf(qver, sizeof(qver), "%s", z->version);
		msgpack_unpacked up;
		size_t           off = 0;
		msgpack_unpacked_init(&up);
		if (msgpack_unpack_next(&up, v.mv_data, v.mv_size, &off) ==
		        MSGPACK_UNPACK_SUCCESS &&
		    up.data.type == MSGPACK_OBJECT_MAP) {
			for (uint32_t k = 0; k < up.data.via.map.size; k++) {
				msgpack_object_kv *kv = &up.data.via.map.ptr[k];
				if (kv->key.type != MSGPACK_OBJECT_STR) {
					continue;
				}
				if (kv->key.via.str.size == 10 &&
				    kv->val.type == MSGPACK_OBJECT_STR) {
					snprintf(qtype, sizeof(qtype), "%.*s",
					    (int) kv->val.via.str.size,
					    kv->val.via.str.ptr);
				} else if (kv->val.type ==
				    MSGPACK_OBJECT_POSITIVE_INTEGER) {
					qat = (int64_t) kv->val.via.u64;
				}
			}
		}
		msgpack_unpacked_destroy(&up);
		// fall back to the newest stored version not quarantined
		hist_entry h[64];
		int        n    = history(s, txn, z->name, h, 64);
		ch_biz    *good = NULL;
		for (int k = 0; k < n && good == NULL; k++) {
			klen = meta_key(key, sizeof(key), "quarantine", z->name,
			    h[k].version);
			if (strcmp(h[k].version, qver) == 0 ||
			    ch_store_get(s, txn, CH_DB_META, key, klen, &v) ==
			        CH_OK) {
				continue;
			}
			good = from_history(s, txn, rules_dir, z->name,
			    h[k].version, &r->opts);
			if (good != NULL && good->L == NULL) {
				biz_free(good);
				good = NULL;
			}
		}
		if (good == NULL) {
			last_resort(z, rules_dir, qtype);
			good = z;
		} else {
			ch_log_warn("rules[%s]: version %s is quarantined; "
			            "serving %s",
			    z->name, qver, good->version);
			replace(r, good);
		}
		snprintf(good->quarantined, sizeof(good->quarantined), "%s",
		    qver);
		snprintf(good->quarantine_type, sizeof(good->quarantine_type),
		    "%s", qtype);
		good->quarantine_at = qat;
	}
	mdb_txn_abort(txn);
}

/* }====================================================== */

const char *
ch_rules_error(ch_rules *r, ch_str business)
{
	ch_biz *b = lookup(r, business);
	if (b == NULL) {
		return ("no such business folder");
	}
	return (b->err.message);
}

int
ch_rules_count(const ch_rules *r)
{
	return (r->n);
}

bool
ch_token_ok(const char *want, ch_str got)
{
	if (want == NULL) {
		return (true);
	}
	size_t n = strlen(want);
	// the same time whatever the first wrong byte
	unsigned char diff = (unsigned char) (n != got.n);
	for (size_t i = 0; i < n; i++) {
		diff |= (unsigned char) (want[i] ^ (i < got.n ? got.p[i] : 0));
	}
	return (diff == 0);
}

bool
ch_biz_authorized(const ch_biz *b, ch_str token)
{
	return (ch_token_ok(b->token, token));
}

const char *
ch_biz_token(const ch_biz *b)
{
	return (b->token);
}

const char *
ch_biz_version(const ch_biz *b)
{
	return (b->version);
}

static void
pack_biz(const ch_biz *b, msgpack_packer *pk)
{
	ch_pack_str(pk, b->name);
	msgpack_pack_map(pk, (b->err.message ? 4 : 3) + (b->quarantined[0] != 0));
	if (b->quarantined[0] != 0) {
		bool refusing = b->refused_type[0] != '\0';
		ch_pack_str(pk, "quarantine");
		msgpack_pack_map(pk, 3 + refusing);
		ch_pack_kv_str(pk, "version", b->quarantined);
		ch_pack_kv_str(pk, "event_type", b->quarantine_type);
		ch_pack_str(pk, "at");
		msgpack_pack_int64(pk, b->quarantine_at);
		if (refusing) {
			// the quarantined version itself still serves
			ch_pack_kv_str(pk, "refused", b->refused_type);
		}
	}
	ch_pack_str(pk, "version");
	if (b->L == NULL) {
		msgpack_pack_nil(pk);
	} else {
		ch_pack_str(pk, b->version);
	}
	ch_pack_str(pk, "loaded_at");
	msgpack_pack_int64(pk, b->loaded_at);
	ch_pack_str(pk, "files");
	msgpack_pack_array(pk, (size_t) b->nfiles);
	for (int i = 0; i < b->nfiles; i++) {
		ch_pack_str(pk, b->files[i]);
	}
	if (b->err.message) {
		ch_pack_str(pk, "error");
		msgpack_pack_map(pk, 4);
		ch_pack_kv_str(pk, "message", b->err.message);
		ch_pack_str(pk, "file");
		if (b->err.file) {
			ch_pack_str(pk, b->err.file);
		} else {
			msgpack_pack_nil(pk);
		}
		ch_pack_str(pk, "line");
		msgpack_pack_int(pk, b->err.line);
		ch_pack_str(pk, "at");
		msgpack_pack_int64(pk, b->err.at);
	}
}

int
ch_rules_pack_info(ch_rules *r, ch_str business, msgpack_packer *pk)
{
	ch_biz *one = NULL;
	if (business.n > 0 && (one = lookup(r, business)) == NULL) {
		return (CH_EUNKNOWNBUSINESS);
	}
	msgpack_pack_map(pk, 2);
	ch_pack_str(pk, "ok");
	msgpack_pack_true(pk);
	ch_pack_str(pk, "businesses");
	if (one != NULL) {
		msgpack_pack_map(pk, 1);
		pack_biz(one, pk);
		return (CH_OK);
	}
	msgpack_pack_map(pk, (size_t) r->n);
	for (int i = 0; i < r->n; i++) {
		pack_biz(r->biz[i], pk);
	}
	return (CH_OK);
}

/* }====================================================== */

/*
** {======================================================
** Running an event or a decision
** =======================================================
*/

static void
setfield_str(lua_State *L, const char *k, ch_str s)
{
	if (s.n > 0) {
		lua_pushlstring(L, s.p, s.n);
		lua_setfield(L, -2, k);
	}
}

static void
push_req(lua_State *L, const ch_req *r)
{
	lua_createtable(L, 0, 12);
	setfield_str(L, "customer", r->customer);
	setfield_str(L, "type", r->type);
	setfield_str(L, "id", r->id);
	setfield_str(L, "channel", r->channel);
	setfield_str(L, "region", r->region);
	setfield_str(L, "product", r->product);
	if (r->ts != 0) {
		lua_pushinteger(L, r->ts);
		lua_setfield(L, -2, "ts");
	}
	if (r->data != NULL) {
		ch_conv_push_obj(L, r->data);
		lua_setfield(L, -2, "data");
	}
	lua_pushboolean(L, r->decide);
	lua_setfield(L, -2, "decide");
	lua_pushboolean(L, r->record);
	lua_setfield(L, -2, "record");
	lua_pushboolean(L, r->explain);
	lua_setfield(L, -2, "explain");
	lua_pushinteger(L, r->limit);
	lua_setfield(L, -2, "limit");
	setfield_str(L, "timer", r->timer);
}

typedef struct {
	ch_biz         *b;
	const char     *entry; // "event" or "decide"
	const ch_req   *req;
	const void     *state;
	size_t          slen;
	int64_t         now;
	ch_rule_out    *out;
	bool            oom;   // packing the results ran out of memory
} call_args;

// room makes room for n more bytes in sb, or raises (a->oom set): the
// msgpack-c writes that follow cannot then fail half-way.
static void
room(lua_State *L, call_args *a, msgpack_sbuffer *sb, size_t n)
{
	if (ch_sbuffer_room(sb, n) != 0) {
		a->oom = true;
		luaL_error(L, "out of memory");
	}
}

// pack_emits turns the reply's emitted list into pub messages.
static void
pack_emits(lua_State *L, int reply, call_args *a)
{
	lua_getfield(L, reply, "emitted");
	if (!lua_istable(L, -1)) {
		lua_pop(L, 1);
		return;
	}
	int             list = lua_gettop(L);
	lua_Integer     n    = (lua_Integer) lua_rawlen(L, list);
	// each message in the state's scratch: emit data that cannot be
	// stored raises before anything needs freeing
	msgpack_sbuffer *one = ch_conv_scratch(L);
	msgpack_packer  pk;
	msgpack_packer_init(&pk, one, msgpack_sbuffer_write);
	for (lua_Integer i = 1; i <= n; i++) {
		lua_rawgeti(L, list, i);                 /* {name=, data=} */
		lua_getfield(L, -1, "name");
		size_t      nl;
		const char *name = lua_tolstring(L, -1, &nl);
		char        topic[256];
		int tl = snprintf(topic, sizeof(topic), "choreo/%s/emit/%.*s",
		    a->b->name, (int) (nl > 128 ? 128 : nl), name);
		one->size = 0;
		// the topic and every field but data (ch_conv_pack checks its
		// own writes)
		room(L, a, one, (size_t) tl + 1 + 96 + strlen(a->b->name) +
		        a->req->customer.n + nl);
		msgpack_sbuffer_write(one, topic, (size_t) tl + 1);
		msgpack_pack_map(&pk, 5);
		ch_pack_kv_str(&pk, "business", a->b->name);
		ch_pack_str(&pk, "customer");
		ch_pack_strn(&pk, a->req->customer.p, a->req->customer.n);
		ch_pack_str(&pk, "name");
		ch_pack_strn(&pk, name, nl);
		ch_pack_str(&pk, "at");
		msgpack_pack_int64(&pk, a->now);
		ch_pack_str(&pk, "data");
		lua_getfield(L, -2, "data");
		ch_conv_pack(L, -1, one, "emit data");
		lua_pop(L, 3);
		uint32_t len = (uint32_t) one->size;
		room(L, a, a->out->emits, 4 + one->size);
		msgpack_sbuffer_write(a->out->emits, (const char *) &len, 4);
		msgpack_sbuffer_write(a->out->emits, one->data, one->size);
	}
	lua_pop(L, 1);
}

// do_call runs in protected mode: decode the state, call the prelude's
// entry, pack the new state and the reply.
static int
do_call(lua_State *L)
{
	call_args *a = lua_touserdata(L, 1);
	lua_rawgeti(L, LUA_REGISTRYINDEX, a->b->api);
	lua_getfield(L, -1, a->entry);                /* fn */
	if (a->state == NULL) {
		lua_pushnil(L);
	} else if (ch_conv_push_bytes(L, a->state, a->slen) != 0) {
		return (luaL_error(L, "the stored state of customer '%s' is "
		                      "damaged",
		    lua_pushlstring(L, a->req->customer.p, a->req->customer.n)));
	}
	push_req(L, a->req);
	lua_pushinteger(L, a->now);
	lua_pushstring(L, a->b->version);
	lua_call(L, 4, 3);                      /* state, reply, stats */
	msgpack_packer pk;
	if (a->out->stats != NULL && lua_istable(L, -1)) {
		// the analytics counters: a flat array key, delta, key, delta...
		int n = 0;
		lua_pushnil(L);
		while (lua_next(L, -2) != 0) {
			n++;
			lua_pop(L, 1);
		}
		if (n > 0) {
			msgpack_packer_init(&pk, a->out->stats, msgpack_sbuffer_write);
			room(L, a, a->out->stats, 5);
			msgpack_pack_array(&pk, (size_t) n * 2);
			lua_pushnil(L);
			while (lua_next(L, -2) != 0) {
				size_t      kl;
				const char *k = lua_tolstring(L, -2, &kl);
				room(L, a, a->out->stats, 5 + kl + 9);
				msgpack_pack_str_with_body(&pk, k, kl);
				msgpack_pack_double(&pk, lua_tonumber(L, -1));
				lua_pop(L, 1);
			}
		}
	}
	if (lua_istable(L, -1)) {
		// handed over: emptied in place, so that the next event's
		// counters find the table already grown
		lua_pushnil(L);
		while (lua_next(L, -2) != 0) {
			lua_pop(L, 1);
			lua_pushvalue(L, -1);
			lua_pushnil(L);
			lua_rawset(L, -4);
		}
	}
	lua_pop(L, 1);                                 /* state, reply */
	if (!lua_isnil(L, -2)) {
		packing_state = true;
		ch_conv_pack(L, -2, a->out->state, "c");
		packing_state = false;
	}
	ch_conv_pack(L, -1, a->out->reply, "reply");
	lua_getfield(L, -1, "actions");
	a->out->nactions = (int) ch_conv_count(L, -1);
	lua_pop(L, 1);
	pack_emits(L, lua_gettop(L), a);
	return (0);
}

static int
run(ch_biz *b, const char *entry, const ch_req *req, const void *state,
    size_t slen, int64_t now, ch_rule_out *out)
{
	call_args  a = { b, entry, req, state, slen, now, out, false };
	lua_State *L = b->L;
	if (b->refused_type[0] != '\0') {
		const char *t  = req->type.n > 0 ? req->type.p : entry;
		size_t      tn = req->type.n > 0 ? req->type.n : strlen(entry);
		if (tn == strlen(b->refused_type) &&
		    memcmp(t, b->refused_type, tn) == 0) {
			snprintf(out->errmsg, sizeof(out->errmsg),
			    "version %s of '%s' is quarantined: it stopped the "
			    "engine on a '%s' event, so these are refused until "
			    "the rules change",
			    b->version, b->name, b->refused_type);
			return (CH_ERULE);
		}
	}
	lua_settop(L, 0);
	if (req->type.n > 0) {
		mark(b, req->type.p, req->type.n);
	} else {
		mark(b, entry, strlen(entry));
	}
	lua_pushcfunction(L, do_call);
	lua_pushlightuserdata(L, &a);
	out->store_err = CH_OK;
	b->cur         = out;
	int rv         = pcall_rule(b, 1, 0);
	b->cur         = NULL;
	mark(b, NULL, 0);
	if (rv != CH_OK && out->store_err != CH_OK) {
		rv = out->store_err; // the store, not the rule, failed
	} else if (rv != CH_OK && a.oom) {
		rv = CH_EINTERNAL; // nor when the server ran out of memory
	}
	if (rv != CH_OK) {
		const char *m = lua_tostring(L, -1);
		if (rv == CH_EINTERNAL && out->store_err == CH_OK) {
			m = "the server ran out of memory; nothing was applied";
		}
		snprintf(out->errmsg, sizeof(out->errmsg), "%s",
		    m ? m : "rule failed");
		out->state->size = 0;
		out->reply->size = 0;
		out->emits->size = 0;
	}
	lua_settop(L, 0);
	return (rv);
}

// do_stats, under protection: a failed allocation or a bad value raises
// into pcall_rule instead of panicking the state. Argument: stats_args.
typedef struct {
	ch_biz                     *b;
	const msgpack_object_array *counters; // NULL: none
	ch_str                      journey;
	msgpack_sbuffer            *reply;
} stats_args;

static int
do_stats(lua_State *L)
{
	stats_args *a = lua_touserdata(L, 1);
	lua_settop(L, 0);
	lua_rawgeti(L, LUA_REGISTRYINDEX, a->b->api);
	lua_getfield(L, -1, "stats");
	lua_remove(L, -2);
	// the counters, summed (a key comes once per shard)
	lua_newtable(L);
	for (uint32_t i = 0; a->counters != NULL && i + 1 < a->counters->size;
	     i += 2) {
		const msgpack_object *k = &a->counters->ptr[i];
		const msgpack_object *v = &a->counters->ptr[i + 1];
		if (k->type != MSGPACK_OBJECT_STR ||
		    v->type != MSGPACK_OBJECT_FLOAT64) {
			continue;
		}
		lua_pushlstring(L, k->via.str.ptr, k->via.str.size);
		lua_pushvalue(L, -1);
		lua_rawget(L, -3);
		lua_Number sum = lua_tonumber(L, -1) + v->via.f64;
		lua_pop(L, 1);
		if (sum == (lua_Number) (lua_Integer) sum) {
			lua_pushinteger(L, (lua_Integer) sum);
		} else {
			lua_pushnumber(L, sum);
		}
		lua_rawset(L, -3);
	}
	if (a->journey.n > 0) {
		lua_pushlstring(L, a->journey.p, a->journey.n);
	} else {
		lua_pushnil(L);
	}
	lua_call(L, 2, 1);
	ch_conv_pack(L, -1, a->reply, "stats");
	return (0);
}

int
ch_biz_stats(ch_biz *b, const void *counters, size_t len, ch_str journey,
    msgpack_sbuffer *reply, char *errmsg, size_t errlen)
{
	lua_State       *L = b->L;
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	stats_args a = { b, NULL, journey, reply };
	if (len > 0 && msgpack_unpack_next(&up, counters, len, NULL) ==
	        MSGPACK_UNPACK_SUCCESS && up.data.type == MSGPACK_OBJECT_ARRAY) {
		a.counters = &up.data.via.array;
	}
	lua_settop(L, 0);
	lua_pushcfunction(L, do_stats);
	lua_pushlightuserdata(L, &a);
	int rc = pcall_rule(b, 1, 0);
	if (rc != CH_OK) {
		snprintf(errmsg, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "stats failed");
		reply->size = 0;
	}
	lua_settop(L, 0);
	msgpack_unpacked_destroy(&up);
	return (rc);
}

int
ch_biz_event(ch_biz *b, const ch_req *req, const void *state, size_t slen,
    int64_t now, ch_rule_out *out)
{
	return (run(b, "event", req, state, slen, now, out));
}

int
ch_biz_decide(ch_biz *b, const ch_req *req, const void *state, size_t slen,
    int64_t now, ch_rule_out *out)
{
	return (run(b, "decide", req, state, slen, now, out));
}

/* }====================================================== */

// choreo — analyst tests: rules/<business>/tests/*.lua.
//
//   test("EU customers see the EU price", function(t)
//     local r = t:event { customer = "c1", type = "page_view", region = "EU" }
//     t:eq(r.actions[1].payload.price, 8.99)
//   end)
//
// Each test runs against a fresh temporary store and a virtual clock that
// starts at 2026-01-01T00:00:00Z, through the real engine path (codec, store,
// rules, commit), so a test sees exactly what a client would. The test
// files run in their own sandboxed Lua state with a budget per test.
#include "atest.h"

#include <errno.h>
#include <ftw.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/codec.h"
#include "../core/engine.h"
#include "../core/err.h"
#include "../core/log.h"
#include "../core/store.h"
#include "conv.h"
#include "rules_int.h"

#define CLOCK_START 1767225600000 // 2026-01-01T00:00:00Z
#define TEST_BUDGET 50000000

static int64_t vclock; // the virtual clock of the test running

static int64_t
test_clock(void)
{
	return (vclock);
}

typedef struct {
	const char *rules_dir;
	const char *business;
	ch_engine  *engine;     // over the test's temporary store
	ch_store   *store;
	char        dir[64];
	FILE       *out;
	char        last_err[600]; // the test's last error reply, if any
	char        token[257];    // the business's token, "" if none
} harness;

static const char HKEY = 'h';

static harness *
harness_of(lua_State *L)
{
	lua_rawgetp(L, LUA_REGISTRYINDEX, &HKEY);
	harness *h = lua_touserdata(L, -1);
	lua_pop(L, 1);
	return (h);
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void) st;
	(void) flag;
	(void) ftw;
	return (remove(path));
}

static void
job_done(ch_job *j)
{
	(void) j;
}

// fresh_store gives the test a new, empty store and engine.
static int
fresh_store(harness *h, char *why, size_t whylen)
{
	if (h->engine != NULL) {
		ch_engine_free(h->engine); // frees its rules too
		h->engine = NULL;
	}
	if (h->store != NULL) {
		ch_store_close(h->store);
		nftw(h->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
		h->store = NULL;
	}
	snprintf(h->dir, sizeof(h->dir), "/tmp/choreo-test-XXXXXX");
	if (mkdtemp(h->dir) == NULL) {
		snprintf(why, whylen, "cannot make a temporary store: %s",
		    strerror(errno));
		return (-1);
	}
	ch_store_opts so = { false, (size_t) 1 << 32, 1 << 20 };
	if (ch_store_open(&h->store, h->dir, &so, why, whylen) != CH_OK) {
		return (-1);
	}
	ch_rules     *rules;
	ch_rules_opts ro = CH_RULES_OPTS_DEFAULT;
	if (ch_rules_load_one(&rules, h->rules_dir, h->business, &ro) !=
	    CH_OK) {
		snprintf(why, whylen, "cannot load the rules of %s",
		    h->business);
		return (-1);
	}
	// the tests act as the business's own clients: they carry its token
	ch_biz *b = ch_rules_find(rules,
	    (ch_str) { h->business, (uint32_t) strlen(h->business) });
	const char *tok = b != NULL ? ch_biz_token(b) : NULL;
	snprintf(h->token, sizeof(h->token), "%s", tok != NULL ? tok : "");
	ch_engine_opts eo = { .rules_dir = h->rules_dir, .rules = rules,
		.store = h->store, .clock = test_clock };
	if (ch_engine_new(&h->engine, &eo) != CH_OK) {
		ch_rules_free(rules);
		return (-1);
	}
	vclock = CLOCK_START;
	return (0);
}

// call runs the request table at index 2 (with op forced when given) and
// returns the reply as a table.
static int
call(lua_State *L, const char *op)
{
	harness *h = harness_of(L);
	luaL_checktype(L, 2, LUA_TTABLE);
	lua_settop(L, 2);
	if (op != NULL) {
		lua_pushstring(L, op);
		lua_setfield(L, 2, "op");
	}
	if (lua_getfield(L, 2, "business") == LUA_TNIL) {
		lua_pushstring(L, h->business);
		lua_setfield(L, 2, "business");
	}
	lua_pop(L, 1);
	// the business's token unless the test gives one; token = false
	// sends none (to test that a request without it is refused)
	int tt = lua_getfield(L, 2, "token");
	if (tt == LUA_TNIL && h->token[0] != '\0') {
		lua_pushstring(L, h->token);
		lua_setfield(L, 2, "token");
	} else if (tt == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
		lua_pushnil(L);
		lua_setfield(L, 2, "token");
	}
	lua_pop(L, 1);
	if (lua_getfield(L, 2, "ts") == LUA_TNIL) {
		lua_pushinteger(L, vclock);
		lua_setfield(L, 2, "ts");
	}
	lua_pop(L, 1);
	msgpack_sbuffer req;
	msgpack_sbuffer_init(&req);
	// packed first into the state's scratch: a bad value raises here
	// before anything of ours needs freeing
	msgpack_sbuffer *scratch = ch_conv_scratch(L);
	ch_conv_pack(L, 2, scratch, "request");
	msgpack_sbuffer_write(&req, scratch->data, scratch->size);
	ch_doc doc;
	ch_job j;
	ch_job_init(&j);
	int rc = ch_doc_decode(&doc, req.data, req.size);
	if (rc != CH_OK) {
		msgpack_packer pk;
		msgpack_packer_init(&pk, &j.reply, msgpack_sbuffer_write);
		ch_pack_error(&pk, rc, doc.errmsg);
	} else {
		j.req  = &doc.req;
		j.done = job_done;
		ch_engine_run_one(h->engine, &j);
	}
	int ok = ch_conv_push_bytes(L, j.reply.data, j.reply.size);
	ch_job_fini(&j);
	ch_doc_fini(&doc);
	msgpack_sbuffer_destroy(&req);
	if (ok != 0) {
		return (luaL_error(L, "the engine's reply could not be read"));
	}
	// kept to explain a failing test: a rule error is often the cause
	if (lua_getfield(L, -1, "error") == LUA_TTABLE) {
		lua_getfield(L, -1, "code");
		lua_getfield(L, -2, "message");
		snprintf(h->last_err, sizeof(h->last_err), "%s: %s",
		    lua_tostring(L, -2) ? lua_tostring(L, -2) : "?",
		    lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
		lua_pop(L, 2);
	}
	lua_pop(L, 1);
	return (1);
}

static int
t_event(lua_State *L)
{
	return (call(L, "event"));
}

static int
t_decide(lua_State *L)
{
	return (call(L, "decide"));
}

static int
t_send(lua_State *L)
{
	return (call(L, NULL));
}

static int
t_get(lua_State *L)
{
	const char *customer = luaL_checkstring(L, 2);
	lua_settop(L, 1);
	lua_createtable(L, 0, 2);
	lua_pushstring(L, customer);
	lua_setfield(L, 2, "customer");
	call(L, "get");
	lua_getfield(L, -1, "customer"); // nil for an unknown customer
	return (1);
}

static int
t_advance_clock(lua_State *L)
{
	const char *d = luaL_checkstring(L, 2);
	char       *end;
	double      n = strtod(d, &end);
	int64_t     unit;
	switch (*end) {
	case 's': unit = 1000; break;
	case 'm': unit = 60000; break;
	case 'h': unit = 3600000; break;
	case 'd': unit = 86400000; break;
	case 'w': unit = 604800000; break;
	default: unit = 0; break;
	}
	if (end == d || unit == 0 || end[1] != '\0' || n < 0) {
		return (luaL_error(L, "t:advance_clock: expected a duration "
		                      "such as \"30s\" or \"2d\", got \"%s\"",
		    d));
	}
	// timers due meanwhile fire, each at its due time
	ch_engine_run_timers_until(harness_of(L)->engine, &vclock,
	    vclock + (int64_t) (n * (double) unit));
	lua_pushinteger(L, vclock);
	return (1);
}

static int
t_now(lua_State *L)
{
	lua_pushinteger(L, vclock);
	return (1);
}

// The assertions, in Lua: a failure is an error at the test's own line.
static const char ASSERTIONS[] =
    "local T = ...\n"
    "local function repr(v, d)\n"
    "  d = d or 0\n"
    "  if type(v) == 'string' then return string.format('%q', v) end\n"
    "  if type(v) ~= 'table' then return tostring(v) end\n"
    "  if d > 3 then return '{...}' end\n"
    "  local keys = {}\n"
    "  for k in pairs(v) do keys[#keys + 1] = k end\n"
    "  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)\n"
    "  local parts = {}\n"
    "  for i, k in ipairs(keys) do\n"
    "    if i > 12 then parts[#parts + 1] = '...'; break end\n"
    "    local kv = math.type(k) == 'integer' and '' or (tostring(k) .. '=')\n"
    "    parts[#parts + 1] = kv .. repr(v[k], d + 1)\n"
    "  end\n"
    "  return '{' .. table.concat(parts, ', ') .. '}'\n"
    "end\n"
    "local function deq(a, b, d)\n"
    "  if type(a) ~= 'table' or type(b) ~= 'table' then return a == b end\n"
    "  if d > 32 then return false end\n"
    "  for k, v in pairs(a) do if not deq(v, b[k], d + 1) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "function T.eq(t, a, b, msg)\n"
    "  if not deq(a, b, 0) then\n"
    "    error((msg and (msg .. ': ') or '') .. 'expected ' .. repr(b) .. ', got ' .. repr(a), 2)\n"
    "  end\n"
    "end\n"
    "function T.ok(t, v, msg)\n"
    "  if not v then error((msg or 'expected a true value') .. ' (got ' .. repr(v) .. ')', 2) end\n"
    "end\n";

static int
l_test(lua_State *L)
{
	luaL_checkstring(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_getfield(L, LUA_REGISTRYINDEX, "choreo.tests");
	lua_createtable(L, 0, 3);
	lua_pushvalue(L, 1);
	lua_setfield(L, -2, "name");
	lua_pushvalue(L, 2);
	lua_setfield(L, -2, "fn");
	lua_rawseti(L, -2, (lua_Integer) lua_rawlen(L, -2) + 1);
	return (0);
}

static void
hook(lua_State *L, lua_Debug *ar)
{
	(void) ar;
	lua_sethook(L, hook, LUA_MASKCOUNT, 1); // sticky
	lua_pushstring(L, "the test ran past its instruction budget");
	lua_error(L);
}

static lua_State *
harness_state(harness *h)
{
	lua_State *L = luaL_newstate();
	if (L == NULL) {
		return (NULL);
	}
	luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
	luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
	luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
	luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
	luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
	lua_settop(L, 0);
	// what test files must not reach
	static const char *const drop[] = { "dofile", "loadfile", "load",
		"collectgarbage", "require", NULL };
	for (int i = 0; drop[i] != NULL; i++) {
		lua_pushnil(L);
		lua_setglobal(L, drop[i]);
	}
	ch_conv_init(L);
	lua_pushlightuserdata(L, h);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &HKEY);
	lua_newtable(L);
	lua_setfield(L, LUA_REGISTRYINDEX, "choreo.tests");
	lua_pushcfunction(L, l_test);
	lua_setglobal(L, "test");
	static const luaL_Reg methods[] = {
		{ "event", t_event },
		{ "decide", t_decide },
		{ "send", t_send },
		{ "get", t_get },
		{ "advance_clock", t_advance_clock },
		{ "now", t_now },
		{ NULL, NULL },
	};
	luaL_newlib(L, methods);
	lua_pushvalue(L, -1);
	lua_setfield(L, -2, "__index");
	if (luaL_loadbufferx(L, ASSERTIONS, sizeof(ASSERTIONS) - 1,
	        "=assertions", "t") != LUA_OK) {
		lua_close(L);
		return (NULL);
	}
	lua_pushvalue(L, -2);
	lua_call(L, 1, 0);
	lua_setfield(L, LUA_REGISTRYINDEX, "choreo.t");
	return (L);
}

// msgh turns any error value into a string.
static int
msgh(lua_State *L)
{
	lua_settop(L, 1);
	const char *msg = lua_type(L, 1) == LUA_TSTRING
	    ? lua_tostring(L, 1)
	    : luaL_tolstring(L, 1, NULL);
	lua_pushstring(L, msg);
	return (1);
}

static int
run_tests(const char *rules_dir, const char *business, FILE *out,
    int *passed, int *failed, char *first_fail, size_t fflen)
{
	harness h = { .rules_dir = rules_dir, .business = business, .out = out };
	char    dir[4200], why[512];
	*passed = *failed = 0;
	if (first_fail != NULL && fflen > 0) {
		first_fail[0] = '\0';
	}
	snprintf(dir, sizeof(dir), "%s/%s/tests", rules_dir, business);
	int    nf;
	char **files = ch_rules_list_lua(dir, &nf);
	if (nf == 0) {
		free(files);
		return (CH_OK); // no tests
	}
	lua_State *L = harness_state(&h);
	if (L == NULL) {
		return (CH_EINTERNAL);
	}
	int rc = CH_OK;
	for (int i = 0; i < nf; i++) {
		char path[4500];
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		char chunk[4600];
		snprintf(chunk, sizeof(chunk), "@%s", path);
		size_t len;
		char  *src = ch_rules_read_file(path, &len);
		lua_pushcfunction(L, msgh);
		if (src == NULL ||
		    luaL_loadbufferx(L, src, len, chunk, "t") != LUA_OK ||
		    (lua_sethook(L, hook, LUA_MASKCOUNT, TEST_BUDGET),
		        lua_pcall(L, 0, 0, 1) != LUA_OK)) {
			const char *m = src == NULL ? strerror(errno)
			                            : lua_tostring(L, -1);
			fprintf(out, "FAIL %s: %s: %s\n", business, path,
			    m ? m : "cannot load");
			if (first_fail != NULL && first_fail[0] == '\0') {
				snprintf(first_fail, fflen, "%s", m ? m : path);
			}
			(*failed)++;
		}
		lua_sethook(L, NULL, 0, 0);
		free(src);
		lua_settop(L, 0);
	}
	lua_getfield(L, LUA_REGISTRYINDEX, "choreo.tests");
	int tests = lua_gettop(L);
	int n     = (int) lua_rawlen(L, tests);
	for (int i = 1; i <= n; i++) {
		lua_rawgeti(L, tests, i);
		lua_getfield(L, -1, "name");
		const char *name = lua_tostring(L, -1);
		if (fresh_store(&h, why, sizeof(why)) != 0) {
			fprintf(out, "FAIL %s: %s: %s\n", business, name, why);
			(*failed)++;
			rc = CH_EINTERNAL;
			lua_settop(L, tests);
			break;
		}
		lua_pushcfunction(L, msgh);
		lua_getfield(L, -3, "fn");
		lua_newtable(L);                          /* t */
		lua_getfield(L, LUA_REGISTRYINDEX, "choreo.t");
		lua_setmetatable(L, -2);
		lua_sethook(L, hook, LUA_MASKCOUNT, TEST_BUDGET);
		h.last_err[0] = '\0';
		int st = lua_pcall(L, 1, 0, -3);
		lua_sethook(L, NULL, 0, 0);
		if (st == LUA_OK) {
			fprintf(out, "ok   %s: %s\n", business, name);
			(*passed)++;
		} else {
			const char *m = lua_tostring(L, -1);
			fprintf(out, "FAIL %s: %s\n     %s\n", business, name,
			    m ? m : "(error)");
			if (h.last_err[0] != '\0') {
				fprintf(out, "     (the test's last reply was an "
				             "error: %s)\n",
				    h.last_err);
			}
			if (first_fail != NULL && first_fail[0] == '\0') {
				snprintf(first_fail, fflen, "test '%s' failed: %s",
				    name, m ? m : "(error)");
			}
			(*failed)++;
		}
		lua_settop(L, tests);
	}
	if (h.engine != NULL) {
		ch_engine_free(h.engine);
	}
	if (h.store != NULL) {
		ch_store_close(h.store);
		nftw(h.dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	}
	lua_close(L);
	for (int i = 0; i < nf; i++) {
		free(files[i]);
	}
	free(files);
	return (rc);
}

// The tests' own engines and rule loads log nothing: their outcome is what
// the tests print.
int
ch_atest_run(const char *rules_dir, const char *business, FILE *out,
    int *passed, int *failed, char *first_fail, size_t fflen)
{
	bool was = ch_log_quiet(true);
	int  rc  = run_tests(rules_dir, business, out, passed, failed,
	      first_fail, fflen);
	ch_log_quiet(was);
	return (rc);
}

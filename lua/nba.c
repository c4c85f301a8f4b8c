// choreo — the next best action's inner loop, in C.
//
// For each action of a resolved view: the channel filter, eligible(c), the
// contact limits against the customer's history, the propensity (the
// action's own function, or the adaptive model's counts, cached per view)
// and the score. Only the analyst's predicates run in Lua. The prelude
// compiles a view once (nba_compile) and calls nba_score per decision; the
// ranking, the contact budget and the reply stay in lua/prelude.lua.
#include "nba.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"
#include "../core/store.h"
#include "rules_int.h"

#define MAX_CHANNELS 16
#define DAY_MS 86400000

typedef struct {
	const char *name;
	size_t      namelen;
	double      value, weight, lever, alpha0, beta0;
	bool        eligible, propensity, explore;
	bool        limits;
	int64_t     max_impressions, stop_after_rejects, per_day; // -1: none
	int64_t     cooldown_ms;                                  // -1: none
	int         nch; // -1: every channel
	const char *ch[MAX_CHANNELS];
	size_t      chlen[MAX_CHANNELS];
	// the adaptive model's counts for this view's channel, while valid
	uint64_t    m_epoch, m_gen;
	double      m_acc, m_fail;
	bool        m_valid;
} cact;

typedef struct {
	int  n;
	cact a[];
} cview;

// A candidate while scoring: sorted by score (descending), then name.
typedef struct {
	int         i; // index in the view
	double      score, p;
	int         src; // K_RULE, K_MODEL or K_EXPLORE
} cand;


// The uservalue of a compiled view is its action list (Lua tables), which
// keeps every string the structs point into alive.

static double
num_field(lua_State *L, int t, const char *k, double dflt)
{
	double v = dflt;
	if (lua_getfield(L, t, k) == LUA_TNUMBER) {
		v = lua_tonumber(L, -1);
	}
	lua_pop(L, 1);
	return (v);
}

static int64_t
int_field(lua_State *L, int t, const char *k)
{
	int64_t v = -1;
	if (lua_getfield(L, t, k) == LUA_TNUMBER) {
		v = (int64_t) lua_tonumber(L, -1);
	}
	lua_pop(L, 1);
	return (v);
}

static bool
has_field(lua_State *L, int t, const char *k, int type)
{
	bool yes = lua_getfield(L, t, k) == type;
	lua_pop(L, 1);
	return (yes);
}

// nba_compile(list) -> compiled view (userdata)
static int
l_compile(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	int    n  = (int) lua_rawlen(L, 1);
	cview *cv = lua_newuserdatauv(L, sizeof(cview) + (size_t) n *
	    sizeof(cact), 2);                                 /* list, cv */
	memset(cv, 0, sizeof(cview) + (size_t) n * sizeof(cact));
	luaL_setmetatable(L, CH_NBA_VIEW);
	cv->n = n;
	lua_pushvalue(L, 1);
	lua_setiuservalue(L, -2, 1);                          /* keeps list */
	lua_createtable(L, n, 0);                     /* the names, by index */
	for (int i = 0; i < n; i++) {
		lua_rawgeti(L, 1, i + 1);
		lua_getfield(L, -1, "name");
		lua_rawseti(L, -3, i + 1);
		lua_pop(L, 1);
	}
	lua_setiuservalue(L, -2, 2);
	for (int i = 0; i < n; i++) {
		cact *a = &cv->a[i];
		lua_rawgeti(L, 1, i + 1);                     /* list, cv, a */
		int t = lua_gettop(L);
		lua_getfield(L, t, "name");
		a->name = lua_tolstring(L, -1, &a->namelen);
		lua_pop(L, 1);
		a->value      = num_field(L, t, "value", 0);
		a->weight     = num_field(L, t, "weight", 1);
		a->lever      = num_field(L, t, "lever", 1);
		a->alpha0     = num_field(L, t, "alpha0", 1);
		a->beta0      = num_field(L, t, "beta0", 1);
		a->eligible   = has_field(L, t, "eligible", LUA_TFUNCTION);
		a->propensity = has_field(L, t, "propensity", LUA_TFUNCTION);
		lua_getfield(L, t, "explore");
		a->explore = lua_toboolean(L, -1);
		lua_pop(L, 1);
		a->cooldown_ms = int_field(L, t, "cooldown_ms");
		a->max_impressions = a->stop_after_rejects = a->per_day = -1;
		if (lua_getfield(L, t, "limits") == LUA_TTABLE) {
			int l                 = lua_gettop(L);
			a->limits             = true;
			a->max_impressions    = int_field(L, l, "max_impressions");
			a->stop_after_rejects = int_field(L, l, "stop_after_rejects");
			a->per_day            = int_field(L, l, "per_day");
		}
		lua_pop(L, 1);
		a->nch = -1;
		if (lua_getfield(L, t, "channels") == LUA_TTABLE) {
			int c  = lua_gettop(L);
			int nc = (int) lua_rawlen(L, c);
			if (nc <= MAX_CHANNELS) {
				a->nch = nc;
				for (int k = 0; k < nc; k++) {
					lua_rawgeti(L, c, k + 1);
					// the string lives in the action's list
					a->ch[k] = lua_tolstring(L, -1, &a->chlen[k]);
					lua_pop(L, 1);
				}
			}
		}
		lua_pop(L, 2);                                /* list, cv */
	}
	return (1);
}

static bool
on_channel(const cact *a, const char *ch, size_t chlen, lua_State *L, int act)
{
	if (a->nch < 0) {
		// every channel, unless the list was too long to compile
		if (lua_getfield(L, act, "channel_set") != LUA_TTABLE) {
			lua_pop(L, 1);
			return (true);
		}
		lua_pushlstring(L, ch, chlen);
		bool yes = lua_rawget(L, -2) != LUA_TNIL;
		lua_pop(L, 2);
		return (yes);
	}
	for (int k = 0; k < a->nch; k++) {
		if (a->chlen[k] == chlen && memcmp(a->ch[k], ch, chlen) == 0) {
			return (true);
		}
	}
	return (false);
}

// l_score's upvalues: the strings it looks up, interned once, so that the
// loop below never hashes or compares a key (lua_getfield with a C string
// does both).
enum {
	K_IMPRESSIONS = 1,
	K_REJECTED,
	K_LAST_SHOWN,
	K_RECENT,
	K_ELIGIBLE,
	K_PROPENSITY,
	K_RULE,
	K_MODEL,
	K_EXPLORE,
	K_COUNT
};
static const char *const keys[K_COUNT] = { NULL, "impressions", "rejected",
	"last_shown", "recent", "eligible", "propensity", "rule", "model",
	"explore" };

// key_num: t[upvalue k] as a number, or dflt.
static double
key_num(lua_State *L, int t, int k, double dflt)
{
	double v = dflt;
	lua_pushvalue(L, lua_upvalueindex(k));
	if (lua_rawget(L, t) == LUA_TNUMBER) {
		v = lua_tonumber(L, -1);
	}
	lua_pop(L, 1);
	return (v);
}

// limit_reason: the same checks as the prelude's limit_reason; the
// action's name is at index names[i + 1].
static const char *
limit_reason(lua_State *L, const cact *a, int names, int i, int hist,
    int64_t now)
{
	lua_rawgeti(L, names, i + 1);
	if (lua_rawget(L, hist) != LUA_TTABLE) {
		lua_pop(L, 1);
		return (NULL); // never shown
	}
	int         h      = lua_gettop(L);
	const char *reason = NULL;
	if (a->max_impressions >= 0 &&
	    key_num(L, h, K_IMPRESSIONS, 0) >= (double) a->max_impressions) {
		reason = "max_impressions";
	} else if (a->stop_after_rejects >= 0 &&
	    key_num(L, h, K_REJECTED, 0) >= (double) a->stop_after_rejects) {
		reason = "stop_after_rejects";
	} else if (a->cooldown_ms >= 0 &&
	    key_num(L, h, K_LAST_SHOWN, -1e300) >
	        (double) now - (double) a->cooldown_ms) {
		reason = "cooldown";
	} else if (a->per_day >= 0) {
		lua_pushvalue(L, lua_upvalueindex(K_RECENT));
		if (lua_rawget(L, h) == LUA_TTABLE) {
			int     r = lua_gettop(L), shown = 0;
			lua_Integer nr = (lua_Integer) lua_rawlen(L, r);
			for (lua_Integer k = 1; k <= nr; k++) {
				lua_rawgeti(L, r, k);
				if (lua_tonumber(L, -1) > (double) (now - DAY_MS)) {
					shown++;
				}
				lua_pop(L, 1);
			}
			if (shown >= a->per_day) {
				reason = "per_day";
			}
		}
	}
	lua_settop(L, h - 1);
	return (reason);
}

static void
model_counts(ch_biz *b, cact *a, const char *ch, size_t chlen, double *acc,
    double *fail)
{
	uint64_t epoch = ch_rules_epoch();
	if (a->m_valid && a->m_epoch == epoch && a->m_gen == b->model_gen) {
		*acc  = a->m_acc;
		*fail = a->m_fail;
		return;
	}
	uint64_t v[3] = { 0, 0, 0 };
	ch_biz_model_read(b, a->name, a->namelen, ch, chlen, v);
	a->m_acc   = (double) v[0];
	a->m_fail  = (double) (v[1] + v[2]);
	a->m_epoch = epoch;
	a->m_gen   = b->model_gen;
	a->m_valid = true;
	*acc       = a->m_acc;
	*fail      = a->m_fail;
}

static double
clamp01(double p)
{
	if (p != p || p < 0) {
		return (0);
	}
	return (p > 1 ? 1 : p);
}

// nba_score(cview, c, hist, channel|nil, now, seed, sample, CA, CS, CP,
//           CSRC, reasons|nil, want) -> n
// Fills the scratch arrays with the candidates 1..n, ranked (score
// descending, ties by name) and, when reasons is a table, reasons[i] with
// why the i-th action of the view was dropped.
static int
l_score(lua_State *L)
{
	cview      *cv = luaL_checkudata(L, 1, CH_NBA_VIEW);
	int         c = 2, hist = 3, sample = 7;
	size_t      chlen = 0;
	const char *ch    = lua_tolstring(L, 4, &chlen);
	int64_t     now   = (int64_t) luaL_checkinteger(L, 5);
	int         CA = 8, CS = 9, CP = 10, CSRC = 11, R = 12;
	bool        want_reasons = lua_istable(L, R);
	ch_biz     *b            = ch_biz_of(L);
	int         n            = 0;

	cand  stack_cands[64];
	cand *cands = cv->n <= 64 ? stack_cands
	                          : lua_newuserdatauv(L, sizeof(cand) *
	                                (size_t) cv->n, 0);
	lua_getiuservalue(L, 1, 2);                           /* names */
	int names = lua_gettop(L);
	lua_getiuservalue(L, 1, 1);                           /* list */
	int list = lua_gettop(L);
	for (int i = 0; i < cv->n; i++) {
		cact       *a = &cv->a[i];
		const char *reason = NULL;
		lua_rawgeti(L, list, i + 1);                  /* list, act */
		int act = lua_gettop(L);
		if (ch != NULL && !on_channel(a, ch, chlen, L, act)) {
			reason = "channel";
		} else if (a->eligible) {
			lua_pushvalue(L, lua_upvalueindex(K_ELIGIBLE));
			lua_rawget(L, act);
			lua_pushvalue(L, c);
			lua_call(L, 1, 1);
			if (!lua_toboolean(L, -1)) {
				reason = "ineligible";
			}
			lua_pop(L, 1);
		}
		if (reason == NULL && a->limits) {
			reason = limit_reason(L, a, names, i, hist, now);
		}
		if (reason != NULL) {
			if (want_reasons) {
				lua_pushstring(L, reason);
				lua_rawseti(L, R, i + 1);
			}
			lua_settop(L, list);
			continue;
		}
		double      p;
		int         src;
		if (a->propensity) {
			lua_pushvalue(L, lua_upvalueindex(K_PROPENSITY));
			lua_rawget(L, act);
			lua_pushvalue(L, c);
			lua_call(L, 1, 1);
			if (lua_type(L, -1) != LUA_TNUMBER) {
				return (luaL_error(L,
				    "action '%s': propensity(c) must return a "
				    "number, got %s",
				    a->name, luaL_typename(L, -1)));
			}
			p   = clamp01(lua_tonumber(L, -1));
			src = K_RULE;
			lua_pop(L, 1);
		} else {
			double acc, fail;
			model_counts(b, a, ch ? ch : "*", ch ? chlen : 1, &acc,
			    &fail);
			double alpha = a->alpha0 + acc, beta = a->beta0 + fail;
			if (a->explore) {
				lua_pushvalue(L, sample); // sample(alpha, beta, name)
				lua_pushnumber(L, alpha);
				lua_pushnumber(L, beta);
				lua_pushlstring(L, a->name, a->namelen);
				lua_pushvalue(L, 6);      // the request's seed
				lua_call(L, 4, 1);
				p   = clamp01(lua_tonumber(L, -1));
				src = K_EXPLORE;
				lua_pop(L, 1);
			} else {
				p   = alpha / (alpha + beta);
				src = K_MODEL;
			}
		}
		cands[n].i     = i;
		cands[n].score = p * a->value * a->weight * a->lever;
		cands[n].p     = p;
		cands[n].src   = src;
		n++;
		lua_settop(L, list);
	}
	// rank: score descending, ties by name — an insertion sort, the
	// fastest for the few dozen actions of a view
	for (int k = 1; k < n; k++) {
		cand x = cands[k];
		int  j = k - 1;
		while (j >= 0 && (cands[j].score < x.score ||
		                     (cands[j].score == x.score &&
		                         strcmp(cv->a[cands[j].i].name,
		                             cv->a[x.i].name) > 0))) {
			cands[j + 1] = cands[j];
			j--;
		}
		cands[j + 1] = x;
	}
	// only the top `want` are looked at (0: all of them)
	lua_Integer want = luaL_optinteger(L, 13, 0);
	if (want > 0 && want < n) {
		n = (int) want;
	}
	for (int k = 0; k < n; k++) {
		lua_rawgeti(L, list, cands[k].i + 1);
		lua_rawseti(L, CA, k + 1);
		lua_pushnumber(L, cands[k].score);
		lua_rawseti(L, CS, k + 1);
		lua_pushnumber(L, cands[k].p);
		lua_rawseti(L, CP, k + 1);
		lua_pushvalue(L, lua_upvalueindex(cands[k].src));
		lua_rawseti(L, CSRC, k + 1);
	}
	lua_pushinteger(L, n);
	return (1);
}

void
ch_nba_open(lua_State *L)
{
	luaL_newmetatable(L, CH_NBA_VIEW);
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 1);
}

void
ch_nba_register(lua_State *L, int h)
{
	lua_pushcfunction(L, l_compile);
	lua_setfield(L, h, "nba_compile");
	for (int k = 1; k < K_COUNT; k++) {
		lua_pushstring(L, keys[k]);
	}
	lua_pushcclosure(L, l_score, K_COUNT - 1);
	lua_setfield(L, h, "nba_score");
}

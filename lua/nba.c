// choreo — the next best action, in C.
//
// The prelude compiles each resolved view once (nba_compile): every
// action's channel membership, limits, group, the channel its reply names,
// its predicates, its stats counters' keys and its contact budget.
// nba_decide then makes the whole decision:
//
//   rank the actions offered on the channel, score descending, ties by
//   name; an action at the top is asked eligible(c), its limits against
//   the customer's history and its propensity (its own function, else the
//   adaptive model's counts, cached per view) before it is ranked
//   -> arbitrate(c, candidates), when declared (through the prelude)
//   -> choose in rank order under max_per_group, the contact budget and
//      the limit
//   -> the reply's actions, packed straight to msgpack
//   -> when recording: impressions, last_shown and recent in the history,
//      the contacts list, the impression counters
//
// The ranking is lazy: only what could still be chosen is asked (see
// start and next). Only the analyst's functions run in Lua. With explain,
// every action is asked and leaves a trace row; the prelude adds the
// sentences.
#include "nba.h"

#include <lauxlib.h>
#include <math.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"
#include "../core/store.h"
#include "conv.h"
#include "rules_int.h"

#define DAY_MS 86400000

typedef struct {
	const char *name;
	size_t      namelen;
	const char *group; // NULL: none
	size_t      grouplen;
	int         gidx;  // the group's number in the view, -1: none
	const char *rch;   // the reply's channel: the view's, else the first
	size_t      rchlen; // of the action's channels; NULL: none
	int64_t     rch_cap; // the contact budget of rch, -1: none
	int         slot;    // the action whose rch counts for this one's
	double      value, weight, lever, alpha0, beta0;
	bool        value_int;
	lua_Integer ivalue;
	bool        explore, payload;
	bool        limits;
	int64_t     max_impressions, stop_after_rejects, per_day; // -1: none
	int64_t     cooldown_ms;                                  // -1: none
	bool        off_channel; // not offered on the view's channel
	int         eligible_ref, propensity_ref; // the functions, in keep
	int         key_total, key_ch; // the impression counters, in keep
	int         packed_ref;        // the payload packed, in keep; 0: not yet
	const char *packed;
	size_t      packedlen;
	// the adaptive model's counts for this view's channel, while valid
	uint64_t    m_epoch, m_gen;
	double      m_acc, m_fail;
	bool        m_valid;
} cact;

// A candidate while deciding. While pending, eligible(c) and the limits
// are still to be asked and, without src, score is only a bound.
typedef struct {
	int    i; // index in the view
	double score, p;
	int    src; // K_RULE, K_MODEL or K_EXPLORE; 0: not known yet
	bool   pending;
} cand;

typedef struct {
	int         n, ngroups;
	const char *channel; // the view's channel, NULL: none
	size_t      chlen;
	int64_t     max_per_group, max_per_day; // -1: none
	bool        policy; // a contact_policy applies: contacts are kept
	int         nkeep;
	// scratch for one decision (a state runs one at a time): cands (the
	// ranked) and pool (the not yet ranked) hold n each, counts n + the
	// groups (by group, then by channel slot)
	cand   *cands, *pool;
	int64_t *counts;
	cact    a[];
} cview;

// The uservalues of a compiled view.
enum { UV_LIST = 1, UV_NAMES, UV_KEEP, UV_COUNT = UV_KEEP };

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

// to_int64: a count or a duration from a declaration, in range.
static int64_t
to_int64(double d)
{
	if (d != d) {
		return (-1);
	}
	if (d >= 9.2e18 || d <= -9.2e18) {
		return (d > 0 ? INT64_MAX : INT64_MIN);
	}
	return ((int64_t) d);
}

static int64_t
int_field(lua_State *L, int t, const char *k)
{
	int64_t v = -1;
	if (lua_getfield(L, t, k) == LUA_TNUMBER) {
		v = to_int64(lua_tonumber(L, -1));
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

static bool
same(const char *a, size_t an, const char *b, size_t bn)
{
	return (an == bn && memcmp(a, b, an) == 0);
}

// keep pins the value on top of the stack in the view's keep table (at
// index keep) and returns where.
static int
keep(lua_State *L, int keep, cview *cv)
{
	lua_rawseti(L, keep, ++cv->nkeep);
	return (cv->nkeep);
}

static void
compile_action(lua_State *L, cview *cv, int i, int t, int policy, int kp)
{
	cact *a = &cv->a[i];
	lua_getfield(L, t, "name");
	a->name = lua_tolstring(L, -1, &a->namelen);
	lua_pop(L, 1);
	lua_getfield(L, t, "value"); // packed as declared: integer or float
	a->value_int = lua_isinteger(L, -1);
	a->ivalue    = lua_tointeger(L, -1);
	a->value     = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
	lua_pop(L, 1);
	a->weight     = num_field(L, t, "weight", 1);
	a->lever      = num_field(L, t, "lever", 1);
	a->alpha0     = num_field(L, t, "alpha0", 1);
	a->beta0      = num_field(L, t, "beta0", 1);
	a->payload    = !has_field(L, t, "payload", LUA_TNIL);
	if (lua_getfield(L, t, "eligible") == LUA_TFUNCTION) {
		a->eligible_ref = keep(L, kp, cv);
	} else {
		lua_pop(L, 1);
	}
	if (lua_getfield(L, t, "propensity") == LUA_TFUNCTION) {
		a->propensity_ref = keep(L, kp, cv);
	} else {
		lua_pop(L, 1);
	}
	lua_getfield(L, t, "explore");
	a->explore = lua_toboolean(L, -1);
	lua_pop(L, 1);
	a->cooldown_ms     = int_field(L, t, "cooldown_ms");
	a->max_impressions = a->stop_after_rejects = a->per_day = -1;
	if (lua_getfield(L, t, "limits") == LUA_TTABLE) {
		int l                 = lua_gettop(L);
		a->limits             = true;
		a->max_impressions    = int_field(L, l, "max_impressions");
		a->stop_after_rejects = int_field(L, l, "stop_after_rejects");
		a->per_day            = int_field(L, l, "per_day");
	}
	lua_pop(L, 1);
	if (cv->channel != NULL) {
		// offered on the view's channel: on every one without a list
		if (lua_getfield(L, t, "channel_set") == LUA_TTABLE) {
			lua_pushlstring(L, cv->channel, cv->chlen);
			a->off_channel = lua_rawget(L, -2) == LUA_TNIL;
		}
		a->rch    = cv->channel;
		a->rchlen = cv->chlen;
	} else if (lua_getfield(L, t, "channels") == LUA_TTABLE &&
	    lua_rawgeti(L, -1, 1) == LUA_TSTRING) {
		// the reply names the first of the action's channels (the
		// string lives in the action's list)
		a->rch = lua_tolstring(L, -1, &a->rchlen);
	}
	lua_settop(L, t);
	a->gidx = -1;
	if (lua_getfield(L, t, "group") == LUA_TSTRING) {
		a->group = lua_tolstring(L, -1, &a->grouplen);
		for (int k = 0; k < i && a->gidx < 0; k++) {
			if (cv->a[k].group != NULL &&
			    same(cv->a[k].group, cv->a[k].grouplen, a->group,
			        a->grouplen)) {
				a->gidx = cv->a[k].gidx;
			}
		}
		if (a->gidx < 0) {
			a->gidx = cv->ngroups++;
		}
	}
	lua_pop(L, 1);
	// the contact budget of the reply's channel; actions replying on the
	// same channel count in the slot of the first of them
	a->rch_cap = -1;
	a->slot    = i;
	if (policy != 0 && a->rch != NULL) {
		if (lua_getfield(L, policy, "per_channel") == LUA_TTABLE) {
			lua_pushlstring(L, a->rch, a->rchlen);
			if (lua_rawget(L, -2) == LUA_TNUMBER) {
				a->rch_cap = to_int64(lua_tonumber(L, -1));
			}
			lua_pop(L, 1);
		}
		lua_pop(L, 1);
		for (int k = 0; k < i; k++) {
			if (cv->a[k].rch != NULL && same(cv->a[k].rch,
			        cv->a[k].rchlen, a->rch, a->rchlen)) {
				a->slot = cv->a[k].slot;
				break;
			}
		}
	}
	// the impression counters' keys, made once per view
	lua_pushliteral(L, "a");
	lua_pushlstring(L, "\0", 1);
	lua_pushlstring(L, a->name, a->namelen);
	lua_pushlstring(L, "\0impressions", 12);
	lua_concat(L, 4);
	a->key_total = keep(L, kp, cv);
	if (a->rch != NULL) {
		lua_pushliteral(L, "a");
		lua_pushlstring(L, "\0", 1);
		lua_pushlstring(L, a->name, a->namelen);
		lua_pushlstring(L, "\0ch\0", 4);
		lua_pushlstring(L, a->rch, a->rchlen);
		lua_pushlstring(L, "\0impressions", 12);
		lua_concat(L, 6);
		a->key_ch = keep(L, kp, cv);
	}
}

// nba_compile(list, channel|nil, policy|nil, max_per_group|nil) -> view
static int
l_compile(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	int    policy = lua_istable(L, 3) ? 3 : 0;
	int    n      = (int) lua_rawlen(L, 1);
	size_t size   = sizeof(cview) + (size_t) n * sizeof(cact);
	size_t align  = sizeof(double);
	size = (size + align - 1) / align * align;
	size_t total = size + 2 * (size_t) n * sizeof(cand) +
	    2 * (size_t) n * sizeof(int64_t);
	cview *cv = lua_newuserdatauv(L, total, UV_COUNT);
	memset(cv, 0, total);
	luaL_setmetatable(L, CH_NBA_VIEW);
	int v = lua_gettop(L);
	cv->n          = n;
	cv->cands      = (cand *) (void *) ((char *) cv + size);
	cv->pool       = cv->cands + n;
	cv->counts     = (int64_t *) (void *) (cv->pool + n);
	cv->max_per_group = lua_isnumber(L, 4) ? to_int64(lua_tonumber(L, 4))
	                                       : -1;
	cv->policy      = policy != 0;
	cv->max_per_day = policy != 0 ? int_field(L, policy, "max_per_day") : -1;
	lua_pushvalue(L, 1);
	lua_setiuservalue(L, v, UV_LIST);
	lua_createtable(L, n, 0);                     /* the names, by index */
	for (int i = 0; i < n; i++) {
		lua_rawgeti(L, 1, i + 1);
		lua_getfield(L, -1, "name");
		lua_rawseti(L, -3, i + 1);
		lua_pop(L, 1);
	}
	lua_setiuservalue(L, v, UV_NAMES);
	lua_createtable(L, 2 * n + 1, 0);             /* keep */
	int kp = lua_gettop(L);
	if (lua_type(L, 2) == LUA_TSTRING) {
		lua_pushvalue(L, 2);
		cv->channel = lua_tolstring(L, -1, &cv->chlen);
		keep(L, kp, cv);
	}
	for (int i = 0; i < n; i++) {
		lua_rawgeti(L, 1, i + 1);
		compile_action(L, cv, i, lua_gettop(L), policy, kp);
		lua_pop(L, 1);
	}
	lua_setiuservalue(L, v, UV_KEEP);
	lua_settop(L, v);
	return (1);
}

// l_decide's upvalues: the strings it looks up, interned once, so that the
// loops below never hash or compare a key (lua_getfield with a C string
// does both).
enum {
	K_IMPRESSIONS = 1,
	K_ACCEPTED,
	K_REJECTED,
	K_IGNORED,
	K_LAST_SHOWN,
	K_RECENT,
	K_AT,
	K_CHANNEL,
	K_ACTIONS,
	K_CONTACTS,
	K_RULE,
	K_MODEL,
	K_EXPLORE,
	K_COUNT
};
static const char *const keys[K_COUNT] = { NULL, "impressions", "accepted",
	"rejected", "ignored", "last_shown", "recent", "at", "channel",
	"actions", "contacts", "rule", "model", "explore" };

// key_peek: t[upvalue k] as a number, or dflt, left on the stack (the
// caller drops them all at once).
static double
key_peek(lua_State *L, int t, int k, double dflt)
{
	lua_pushvalue(L, lua_upvalueindex(k));
	return (lua_rawget(L, t) == LUA_TNUMBER ? lua_tonumber(L, -1) : dflt);
}

// key_num: t[upvalue k] as a number, or dflt.
static double
key_num(lua_State *L, int t, int k, double dflt)
{
	double v = key_peek(L, t, k, dflt);
	lua_pop(L, 1);
	return (v);
}

// key_get pushes t[upvalue k] and returns its type.
static int
key_get(lua_State *L, int t, int k)
{
	lua_pushvalue(L, lua_upvalueindex(k));
	return (lua_rawget(L, t));
}

// key_set: t[upvalue k] = the value on top (popped).
static void
key_set(lua_State *L, int t, int k)
{
	t = lua_absindex(L, t);
	lua_pushvalue(L, lua_upvalueindex(k));
	lua_insert(L, -2);
	lua_rawset(L, t);
}

// limit_reason: why the contact limits drop the action, or NULL; the
// action's name is at index names[i + 1].
static const char *
limit_reason(lua_State *L, const cact *a, int names, int i, int hist,
    int64_t now)
{
	if (hist == 0) {
		return (NULL);
	}
	lua_rawgeti(L, names, i + 1);
	if (lua_rawget(L, hist) != LUA_TTABLE) {
		lua_pop(L, 1);
		return (NULL); // never shown
	}
	int         h      = lua_gettop(L);
	const char *reason = NULL;
	if (a->max_impressions >= 0 &&
	    key_peek(L, h, K_IMPRESSIONS, 0) >= (double) a->max_impressions) {
		reason = "max_impressions";
	} else if (a->stop_after_rejects >= 0 &&
	    key_peek(L, h, K_REJECTED, 0) >= (double) a->stop_after_rejects) {
		reason = "stop_after_rejects";
	} else if (a->cooldown_ms >= 0 &&
	    key_peek(L, h, K_LAST_SHOWN, -1e300) >
	        (double) now - (double) a->cooldown_ms) {
		reason = "cooldown";
	} else if (a->per_day >= 0 && key_get(L, h, K_RECENT) == LUA_TTABLE) {
		int         r = lua_gettop(L), shown = 0;
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
	lua_settop(L, h - 1);
	return (reason);
}

static void
model_counts(ch_biz *b, const cview *cv, cact *a, double *acc, double *fail)
{
	uint64_t epoch = ch_rules_epoch();
	if (!a->m_valid || a->m_epoch != epoch || a->m_gen != b->model_gen) {
		uint64_t v[3] = { 0, 0, 0 };
		ch_biz_model_read(b, a->name, a->namelen,
		    cv->channel ? cv->channel : "*", cv->channel ? cv->chlen : 1,
		    v);
		a->m_acc   = (double) v[0];
		a->m_fail  = (double) (v[1] + v[2]);
		a->m_epoch = epoch;
		a->m_gen   = b->model_gen;
		a->m_valid = true;
	}
	*acc  = a->m_acc;
	*fail = a->m_fail;
}

static double
clamp01(double p)
{
	if (p != p || p < 0) {
		return (0);
	}
	return (p > 1 ? 1 : p);
}

// The arguments of nba_decide (see l_decide).
enum {
	A_VIEW = 1,
	A_C,
	A_STATE,
	A_NOW,
	A_SEED,
	A_SAMPLE,
	A_LIMIT,
	A_RECORD,
	A_STATS,
	A_TRACE,
	A_ARBITRATE
};

// trace_row pushes a new trace row for action i of the view and leaves it
// on the stack: { step = "action", action = name, kept, reason }, kept when
// there is no reason.
static void
trace_row(lua_State *L, int names, int i, const char *reason)
{
	lua_createtable(L, 0, 8);
	lua_pushliteral(L, "action");
	lua_setfield(L, -2, "step");
	lua_rawgeti(L, names, i + 1);
	lua_setfield(L, -2, "action");
	lua_pushboolean(L, reason == NULL);
	lua_setfield(L, -2, "kept");
	if (reason != NULL) {
		lua_pushstring(L, reason);
		lua_setfield(L, -2, "reason");
	}
}

static void
trace_append(lua_State *L)
{
	lua_rawseti(L, A_TRACE, (lua_Integer) lua_rawlen(L, A_TRACE) + 1);
}

// One decision. The ranking is lazy: an action is asked eligible(c), the
// limits and its propensity only when it could be the next candidate —
// when nothing left can outscore it. Explain and arbitrate need every
// action ranked, and so ask every action, in the view's order.
typedef struct {
	lua_State *L;
	cview     *cv;
	int        kp, names, hist; // stack indices; hist 0: no history
	int64_t    now;
	bool       trace;
	int        npool, nranked;
} decision;

// drop leaves action i out, with a trace row saying why.
static void
drop(decision *d, int i, const char *reason)
{
	if (d->trace) {
		trace_row(d->L, d->names, i, reason);
		trace_append(d->L);
	}
}

// wrong_answer raises the error for an answer of the wrong kind (on top of
// the stack) from the analyst's function at keep[ref], named where the
// function was written. lua_error, not luaL_error: the position of the
// caller, the prelude, means nothing to the analyst.
static int
wrong_answer(decision *d, int ref, const char *what, const char *name,
    const char *expected)
{
	lua_State  *L = d->L;
	const char *got;
	char        kind[32];
	double      v = lua_tonumber(L, -1);
	if (lua_type(L, -1) == LUA_TNUMBER && !isfinite(v)) {
		got = isnan(v) ? "NaN" : v > 0 ? "infinity" : "-infinity";
	} else if (lua_isnil(L, -1)) {
		got = "nil";
	} else {
		snprintf(kind, sizeof(kind), "a %s", luaL_typename(L, -1));
		got = kind;
	}
	lua_Debug ar;
	lua_rawgeti(L, d->kp, ref);
	lua_getinfo(L, ">S", &ar);
	lua_pushfstring(L, "%s:%d: %s of action '%s' returned %s, expected %s",
	    ar.source[0] == '@' ? ar.source + 1 : ar.short_src, ar.linedefined,
	    what, name, got, expected);
	return (lua_error(L));
}

// ask puts a pending candidate to eligible(c), the limits and, when not
// known yet, its propensity. Returns false when the action is dropped.
static bool
ask(decision *d, cand *x)
{
	lua_State  *L = d->L;
	cact       *a = &d->cv->a[x->i];
	const char *reason = NULL;
	int         top    = lua_gettop(L);
	if (a->eligible_ref != 0) {
		lua_rawgeti(L, d->kp, a->eligible_ref);
		lua_pushvalue(L, A_C);
		lua_call(L, 1, 1);
		int t = lua_type(L, -1);
		if (t != LUA_TBOOLEAN && t != LUA_TNIL) {
			wrong_answer(d, a->eligible_ref, "eligible", a->name,
			    "true or false");
		}
		if (!lua_toboolean(L, -1)) {
			reason = "ineligible";
		}
		lua_settop(L, top);
	}
	if (reason == NULL && a->limits) {
		reason = limit_reason(L, a, d->names, x->i, d->hist, d->now);
	}
	if (reason != NULL) {
		drop(d, x->i, reason);
		return (false);
	}
	x->pending = false;
	if (x->src != 0) {
		return (true);
	}
	if (a->propensity_ref != 0) {
		lua_rawgeti(L, d->kp, a->propensity_ref);
		lua_pushvalue(L, A_C);
		lua_call(L, 1, 1);
		if (lua_type(L, -1) != LUA_TNUMBER ||
		    !isfinite(lua_tonumber(L, -1))) {
			wrong_answer(d, a->propensity_ref, "propensity", a->name,
			    "a number between 0 and 1");
		}
		x->src = K_RULE;
	} else {
		// sample(alpha, beta, name, the request's seed)
		double acc, fail;
		model_counts(ch_biz_of(L), d->cv, a, &acc, &fail);
		lua_pushvalue(L, A_SAMPLE);
		lua_pushnumber(L, a->alpha0 + acc);
		lua_pushnumber(L, a->beta0 + fail);
		lua_rawgeti(L, d->names, x->i + 1);
		lua_pushvalue(L, A_SEED);
		lua_call(L, 4, 1);
		x->src = K_EXPLORE;
	}
	x->p     = clamp01(lua_tonumber(L, -1));
	x->score = x->p * a->value * a->weight * a->lever;
	lua_settop(L, top);
	return (true);
}

// before: does x rank before y? Score descending, ties by name. A pending
// candidate's score is a bound that asking can only lower, so a candidate
// known to rank before it ranks before it whatever it is asked.
static bool
before(const cview *cv, const cand *x, const cand *y)
{
	if (x->score != y->score) {
		return (x->score > y->score);
	}
	return (strcmp(cv->a[x->i].name, cv->a[y->i].name) < 0);
}

// sink moves pool[k] down to its place: the pool is kept in reverse rank
// order, its best candidate last.
static void
sink(cview *cv, int k)
{
	cand x = cv->pool[k];
	for (; k > 0 && before(cv, &cv->pool[k - 1], &x); k--) {
		cv->pool[k] = cv->pool[k - 1];
	}
	cv->pool[k] = x;
}

// start fills the pool, in reverse rank order: every action offered on the
// view's channel, its score exact when the adaptive model gives its
// propensity, else bounded by propensity 1. With every, each action is
// asked at once, in the view's order.
static void
start(decision *d, bool every)
{
	cview  *cv = d->cv;
	ch_biz *b  = ch_biz_of(d->L);
	d->npool = d->nranked = 0;
	for (int i = 0; i < cv->n; i++) {
		cact *a = &cv->a[i];
		if (a->off_channel) {
			drop(d, i, "channel");
			continue;
		}
		cand  *x  = &cv->pool[d->npool];
		double vw = a->value * a->weight * a->lever;
		*x        = (cand) { .i = i, .pending = true };
		if (a->propensity_ref != 0 || a->explore) {
			x->score = vw > 0 ? vw : 0; // the best propensity 1 or 0 allow
		} else {
			double acc, fail;
			model_counts(b, cv, a, &acc, &fail);
			double alpha = a->alpha0 + acc, beta = a->beta0 + fail;
			x->p     = alpha / (alpha + beta);
			x->score = x->p * a->value * a->weight * a->lever;
			x->src   = K_MODEL;
		}
		if (a->eligible_ref == 0 && !a->limits && x->src != 0) {
			x->pending = false;
		}
		if (every && x->pending && !ask(d, x)) {
			continue;
		}
		sink(cv, d->npool++);
	}
}

// next ranks one more candidate, at cv->cands[d->nranked]; false when none
// is left. A pending candidate at the top is asked, then put back in its
// place.
static bool
next(decision *d)
{
	cview *cv = d->cv;
	while (d->npool > 0) {
		cand *x = &cv->pool[d->npool - 1];
		if (!x->pending) {
			cv->cands[d->nranked++] = *x;
			d->npool--;
			return (true);
		}
		if (ask(d, x)) {
			sink(cv, d->npool - 1);
		} else {
			d->npool--;
		}
	}
	return (false);
}

// arbitrate ranks every candidate and hands them to the prelude's
// arbitrate hook, fn(actions, scores, propensities) -> the ranks kept, in
// their new order (the hook has checked them); cv->cands is rewritten to
// match.
static void
arbitrate(decision *d, int list)
{
	lua_State *L  = d->L;
	cview     *cv = d->cv;
	while (next(d)) {
	}
	int n = d->nranked;
	lua_pushvalue(L, A_ARBITRATE);
	lua_createtable(L, n, 0);
	lua_createtable(L, n, 0);
	lua_createtable(L, n, 0);
	for (int k = 0; k < n; k++) {
		lua_rawgeti(L, list, cv->cands[k].i + 1);
		lua_rawseti(L, -4, k + 1);
		lua_pushnumber(L, cv->cands[k].score);
		lua_rawseti(L, -3, k + 1);
		lua_pushnumber(L, cv->cands[k].p);
		lua_rawseti(L, -2, k + 1);
	}
	lua_call(L, 3, 1);
	int m = lua_istable(L, -1) ? (int) lua_rawlen(L, -1) : 0;
	if (m > n) {
		luaL_error(L, "arbitrate: more candidates than given");
	}
	for (int k = 0; k < m; k++) {
		lua_rawgeti(L, -1, k + 1);
		lua_Integer r = lua_tointeger(L, -1);
		lua_pop(L, 1);
		if (r < 1 || r > n) {
			luaL_error(L, "arbitrate: bad rank %I", r);
		}
		cv->pool[k] = cv->cands[r - 1]; // the pool is empty: scratch
	}
	lua_pop(L, 1);
	memcpy(cv->cands, cv->pool, (size_t) m * sizeof(cand));
	d->nranked = m;
}

// contacts_today counts the contacts of the last day, in all and by the
// channel slots of the view (cv->counts + ngroups).
static int64_t
contacts_today(lua_State *L, cview *cv, int st, int64_t now)
{
	int64_t  total = 0;
	int64_t *slots = cv->counts + cv->ngroups;
	if (key_get(L, st, K_CONTACTS) != LUA_TTABLE) {
		lua_pop(L, 1);
		return (0);
	}
	int         cl = lua_gettop(L);
	lua_Integer nc = (lua_Integer) lua_rawlen(L, cl);
	for (lua_Integer k = 1; k <= nc; k++) {
		if (lua_rawgeti(L, cl, k) != LUA_TTABLE) {
			lua_pop(L, 1);
			continue;
		}
		int t = lua_gettop(L);
		if (key_num(L, t, K_AT, -1e300) > (double) (now - DAY_MS)) {
			total++;
			size_t      chn;
			const char *ch = NULL;
			if (key_get(L, t, K_CHANNEL) == LUA_TSTRING) {
				ch = lua_tolstring(L, -1, &chn);
			}
			for (int i = 0; ch != NULL && i < cv->n; i++) {
				const cact *a = &cv->a[i];
				if (a->slot == i && a->rch != NULL &&
				    same(a->rch, a->rchlen, ch, chn)) {
					slots[i]++;
					break;
				}
			}
		}
		lua_settop(L, t - 1);
	}
	lua_pop(L, 1);
	return (total);
}

// choose walks the ranked candidates and moves the chosen to the front of
// cv->cands; returns how many. With a trace, every candidate gets a row.
static int
choose(decision *d, int list, lua_Integer limit)
{
	lua_State *L         = d->L;
	cview     *cv        = d->cv;
	int        names     = d->names;
	bool       trace     = d->trace;
	int64_t   *per_group = cv->counts, *slots = cv->counts + cv->ngroups;
	memset(cv->counts, 0, (size_t) (cv->ngroups + cv->n) * sizeof(int64_t));
	int64_t day_total = cv->policy ? contacts_today(L, cv, A_STATE, d->now)
	                               : 0;
	int     nout      = 0;
	for (int k = 0;; k++) {
		if (nout >= limit && !trace) {
			break; // nobody asked why the rest lost
		}
		if (k >= d->nranked && !next(d)) {
			break;
		}
		cand        x = cv->cands[k];
		const cact *a = &cv->a[x.i];
		const char *reason = NULL, *why_x = NULL;
		size_t      why_xlen = 0;
		if (cv->max_per_group >= 0 && a->gidx >= 0 &&
		    per_group[a->gidx] >= cv->max_per_group) {
			reason = "max_per_group";
			why_x = a->group, why_xlen = a->grouplen;
		} else if (cv->max_per_day >= 0 && day_total >= cv->max_per_day) {
			reason = "max_per_day";
		} else if (a->rch_cap >= 0 && slots[a->slot] >= a->rch_cap) {
			reason = "per_channel";
			why_x = a->rch, why_xlen = a->rchlen;
		} else if (nout >= limit) {
			reason = "limit";
		}
		if (trace) {
			trace_row(L, names, x.i, reason);
			int row = lua_gettop(L);
			if (why_x != NULL) {
				lua_pushlstring(L, why_x, why_xlen);
				lua_setfield(L, row, "_x");
			}
			lua_pushinteger(L, k + 1);
			lua_setfield(L, row, "rank");
			lua_pushnumber(L, x.score);
			lua_setfield(L, row, "score");
			lua_createtable(L, 0, 5);
			lua_pushnumber(L, x.p);
			lua_setfield(L, -2, "propensity");
			lua_rawgeti(L, list, x.i + 1);
			lua_getfield(L, -1, "value");
			lua_setfield(L, -3, "value");
			lua_getfield(L, -1, "weight");
			lua_setfield(L, -3, "weight");
			lua_getfield(L, -1, "lever");
			lua_setfield(L, -3, "lever");
			lua_pop(L, 1);
			lua_pushvalue(L, lua_upvalueindex(x.src));
			lua_setfield(L, -2, "source");
			lua_setfield(L, row, "factors");
			trace_append(L);
		}
		if (reason == NULL) {
			cv->cands[nout++] = x;
			if (a->gidx >= 0) {
				per_group[a->gidx]++;
			}
			day_total++;
			slots[a->slot]++;
		}
	}
	return (nout);
}

static int
pack_str(msgpack_packer *pk, const char *s, size_t n)
{
	return (msgpack_pack_str_with_body(pk, s, n));
}

// pack_actions pushes the reply's actions, packed: [{name, score, value,
// propensity, group, channel, payload}...] for the first nout candidates.
static void
pack_actions(lua_State *L, cview *cv, int list, int kp, int nout)
{
	// every payload is packed once per view, before the scratch buffer
	// below is in use (prepacking uses it too)
	for (int k = 0; k < nout; k++) {
		cact *a = &cv->a[cv->cands[k].i];
		if (a->payload && a->packed_ref == 0) {
			lua_rawgeti(L, list, cv->cands[k].i + 1);
			lua_getfield(L, -1, "payload");
			ch_conv_prepack(L, -1);           /* act, payload, packed */
			a->packed     = lua_touserdata(L, -1);
			a->packedlen  = lua_rawlen(L, -1);
			a->packed_ref = keep(L, kp, cv);
			lua_pop(L, 2);
		}
	}
	msgpack_sbuffer *sb = ch_conv_scratch(L);
	msgpack_packer   pk;
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	int rc = msgpack_pack_array(&pk, (size_t) nout);
	for (int k = 0; k < nout; k++) {
		const cand *x = &cv->cands[k];
		const cact *a = &cv->a[x->i];
		rc |= msgpack_pack_map(&pk, 4 + (a->group != NULL) +
		                                (a->rch != NULL) + a->payload);
		rc |= pack_str(&pk, "name", 4);
		rc |= pack_str(&pk, a->name, a->namelen);
		rc |= pack_str(&pk, "score", 5);
		rc |= msgpack_pack_double(&pk, x->score);
		rc |= pack_str(&pk, "value", 5);
		rc |= a->value_int ? msgpack_pack_int64(&pk, a->ivalue)
		                   : msgpack_pack_double(&pk, a->value);
		rc |= pack_str(&pk, "propensity", 10);
		rc |= msgpack_pack_double(&pk, x->p);
		if (a->group != NULL) {
			rc |= pack_str(&pk, "group", 5);
			rc |= pack_str(&pk, a->group, a->grouplen);
		}
		if (a->rch != NULL) {
			rc |= pack_str(&pk, "channel", 7);
			rc |= pack_str(&pk, a->rch, a->rchlen);
		}
		if (a->payload) {
			rc |= pack_str(&pk, "payload", 7);
			rc |= msgpack_sbuffer_write(sb, a->packed, a->packedlen);
		}
	}
	if (rc != 0) {
		luaL_error(L, "not enough memory");
	}
	void *p = lua_newuserdatauv(L, sb->size, 0);
	memcpy(p, sb->data, sb->size);
	luaL_setmetatable(L, CH_PACKED);
}

// add_one: t[key] = (t[key] or 0) + 1, the key on top (popped); t is an
// absolute index.
static void
add_one(lua_State *L, int t)
{
	lua_pushvalue(L, -1);
	lua_rawget(L, t);
	if (lua_isinteger(L, -1)) {
		lua_Integer i = lua_tointeger(L, -1);
		lua_pop(L, 1);
		lua_pushinteger(L, i + 1);
	} else if (lua_type(L, -1) == LUA_TNUMBER) {
		double d = lua_tonumber(L, -1);
		lua_pop(L, 1);
		lua_pushnumber(L, d + 1);
	} else {
		lua_pop(L, 1);
		lua_pushinteger(L, 1);
	}
	lua_rawset(L, t);
}

// recent_list pushes a new list (an array, for packing) of the entries of
// t[k] — times, or tables with a time at .at — since `since`.
static int
recent_list(lua_State *L, int t, int k, int64_t since)
{
	int nt = key_get(L, t, k);
	int old = lua_gettop(L);
	lua_newtable(L);
	ch_conv_push_array_mt(L);
	lua_setmetatable(L, -2);
	int         out = lua_gettop(L), j = 0;
	lua_Integer n   = nt == LUA_TTABLE ? (lua_Integer) lua_rawlen(L, old)
	                                   : 0;
	for (lua_Integer e = 1; e <= n; e++) {
		double at;
		if (lua_rawgeti(L, old, e) == LUA_TTABLE) {
			at = key_num(L, lua_gettop(L), K_AT, -1e300);
		} else {
			at = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : -1e300;
		}
		if (at >= (double) since) {
			lua_rawseti(L, out, ++j);
		} else {
			lua_pop(L, 1);
		}
	}
	lua_remove(L, old);
	return (j);
}

// record writes the impressions of the chosen actions in the customer's
// history and the impression counters, and the contacts when a policy
// applies.
static void
record(lua_State *L, cview *cv, int kp, int names, int nout, int hist,
    int64_t now)
{
	for (int k = 0; k < nout; k++) {
		int         i = cv->cands[k].i;
		const cact *a = &cv->a[i];
		lua_rawgeti(L, names, i + 1);
		if (lua_rawget(L, hist) != LUA_TTABLE) {
			lua_pop(L, 1);
			lua_createtable(L, 0, 6);
			int h = lua_gettop(L);
			for (int f = K_IMPRESSIONS; f <= K_IGNORED; f++) {
				lua_pushinteger(L, 0);
				key_set(L, h, f);
			}
			lua_rawgeti(L, names, i + 1);
			lua_pushvalue(L, h);
			lua_rawset(L, hist);
		}
		int h = lua_gettop(L);
		lua_pushvalue(L, lua_upvalueindex(K_IMPRESSIONS));
		add_one(L, h);
		lua_pushinteger(L, now);
		key_set(L, h, K_LAST_SHOWN);
		if (a->per_day >= 0) {
			int j = recent_list(L, h, K_RECENT, now - DAY_MS);
			lua_pushinteger(L, now);
			lua_rawseti(L, -2, j + 1);
			key_set(L, h, K_RECENT);
		}
		lua_pop(L, 1);
		lua_rawgeti(L, kp, a->key_total);
		add_one(L, A_STATS);
		if (a->rch != NULL) {
			lua_rawgeti(L, kp, a->key_ch);
			add_one(L, A_STATS);
		}
	}
	if (!cv->policy) {
		return;
	}
	int j = recent_list(L, A_STATE, K_CONTACTS, now - DAY_MS);
	for (int k = 0; k < nout; k++) {
		const cact *a = &cv->a[cv->cands[k].i];
		lua_createtable(L, 0, 2);
		lua_pushinteger(L, now);
		key_set(L, -2, K_AT);
		if (a->rch != NULL) {
			lua_pushlstring(L, a->rch, a->rchlen);
			key_set(L, -2, K_CHANNEL);
		}
		lua_rawseti(L, -2, ++j);
	}
	key_set(L, A_STATE, K_CONTACTS);
}

// nba_decide(view, c, st, now, seed, sample, limit, record, STATS,
//            trace|nil, arbitrate|nil) -> actions (packed), recorded
//
// sample(alpha, beta, name, seed) draws an exploring action's propensity;
// STATS takes the impression counters; trace, when a table, gets one row
// per action (the prelude adds why); arbitrate(actions, scores,
// propensities) returns the ranks to choose from, in order.
static int
l_decide(lua_State *L)
{
	cview      *cv     = luaL_checkudata(L, A_VIEW, CH_NBA_VIEW);
	int64_t     now    = (int64_t) luaL_checkinteger(L, A_NOW);
	lua_Integer limit  = luaL_checkinteger(L, A_LIMIT);
	bool        rec    = lua_toboolean(L, A_RECORD);
	bool        trace  = lua_istable(L, A_TRACE);
	luaL_checktype(L, A_STATE, LUA_TTABLE);
	luaL_checktype(L, A_STATS, LUA_TTABLE);
	lua_settop(L, A_ARBITRATE);
	lua_getiuservalue(L, A_VIEW, UV_NAMES);
	int names = lua_gettop(L);
	lua_getiuservalue(L, A_VIEW, UV_LIST);
	int list = lua_gettop(L);
	lua_getiuservalue(L, A_VIEW, UV_KEEP);
	int kp   = lua_gettop(L);
	int hist = key_get(L, A_STATE, K_ACTIONS) == LUA_TTABLE ? lua_gettop(L)
	                                                        : 0;
	decision d = { .L = L, .cv = cv, .kp = kp, .names = names,
		.hist = hist, .now = now, .trace = trace };
	bool arbitrated = lua_isfunction(L, A_ARBITRATE);
	start(&d, trace || arbitrated);
	if (arbitrated) {
		arbitrate(&d, list);
	}
	int nout = choose(&d, list, limit);
	pack_actions(L, cv, list, kp, nout);
	int packed = lua_gettop(L);
	if (rec && nout > 0) {
		if (hist == 0) {
			lua_newtable(L);
			lua_pushvalue(L, -1);
			key_set(L, A_STATE, K_ACTIONS);
			hist = lua_gettop(L);
		}
		record(L, cv, kp, names, nout, hist, now);
	}
	lua_pushvalue(L, packed);
	lua_pushboolean(L, rec && nout > 0);
	return (2);
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
	lua_pushcclosure(L, l_decide, K_COUNT - 1);
	lua_setfield(L, h, "nba_decide");
}

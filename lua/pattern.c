// choreo — string.find, match, gmatch and gsub for rules, with a budget.
//
// Lua's own pattern functions run in C, where the count hook never fires: a
// pattern such as ("a*"):rep(16) .. "b" against a short subject backtracks
// for seconds. These are the same functions (Lua 5.4 pattern syntax: classes,
// sets, quantifiers * + - ?, anchors, captures, position captures, %b, %f,
// back-references), written as a backtracking matcher that counts its steps
// against the event's budget. Past it, the event ends in rule_limit and the
// budget hook turns sticky, so a pcall in the rule cannot carry on.
#include "pattern.h"

#include <ctype.h>
#include <lauxlib.h>
#include <string.h>

#include "rules_int.h"

#define MAXCAPTURES 32
#define MAXDEPTH 200
#define CAP_UNFINISHED (-1)
#define CAP_POSITION (-2)
#define L_ESC '%'
#define SPECIALS "^$*+?.([%-"

typedef struct {
	const char *src_init, *src_end, *p_end;
	lua_State  *L;
	ch_biz     *b;
	int         depth;
	int         level;
	struct {
		const char *init;
		ptrdiff_t   len;
	} capture[MAXCAPTURES];
} mstate;

static const char *do_match(mstate *ms, const char *s, const char *p);

// step charges one unit of work against the event's budget.
static void
step(mstate *ms)
{
	if (ch_biz_charge(ms->b, 1) != 0) {
		luaL_error(ms->L, "pattern ran past the instruction budget "
		                  "(too much backtracking)");
	}
}

static int
check_capture(mstate *ms, int l)
{
	l -= '1';
	if (l < 0 || l >= ms->level || ms->capture[l].len == CAP_UNFINISHED) {
		return (luaL_error(ms->L, "invalid capture index %%%d", l + 1));
	}
	return (l);
}

static int
capture_to_close(mstate *ms)
{
	int level = ms->level;
	for (level--; level >= 0; level--) {
		if (ms->capture[level].len == CAP_UNFINISHED) {
			return (level);
		}
	}
	return (luaL_error(ms->L, "invalid pattern capture"));
}

static const char *
class_end(mstate *ms, const char *p)
{
	switch (*p++) {
	case L_ESC:
		if (p == ms->p_end) {
			luaL_error(ms->L, "malformed pattern (ends with '%%')");
		}
		return (p + 1);
	case '[':
		if (*p == '^') {
			p++;
		}
		do { // look for a ']'
			if (p == ms->p_end) {
				luaL_error(ms->L, "malformed pattern (missing ']')");
			}
			if (*(p++) == L_ESC && p < ms->p_end) {
				p++; // skip escapes (e.g. '%]')
			}
		} while (*p != ']');
		return (p + 1);
	default:
		return (p);
	}
}

static int
single_class(int c, int cl)
{
	int res;
	switch (tolower(cl)) {
	case 'a': res = isalpha(c); break;
	case 'c': res = iscntrl(c); break;
	case 'd': res = isdigit(c); break;
	case 'g': res = isgraph(c); break;
	case 'l': res = islower(c); break;
	case 'p': res = ispunct(c); break;
	case 's': res = isspace(c); break;
	case 'u': res = isupper(c); break;
	case 'w': res = isalnum(c); break;
	case 'x': res = isxdigit(c); break;
	default: return (cl == c);
	}
	if (isupper(cl)) {
		res = !res;
	}
	return (res);
}

static int
match_set(int c, const char *p, const char *ec)
{
	int sig = 1;
	if (*(p + 1) == '^') {
		sig = 0;
		p++; // skip the '^'
	}
	while (++p < ec) {
		if (*p == L_ESC) {
			p++;
			if (single_class(c, (unsigned char) *p)) {
				return (sig);
			}
		} else if (*(p + 1) == '-' && (p + 2 < ec)) {
			p += 2;
			if ((unsigned char) *(p - 2) <= c &&
			    c <= (unsigned char) *p) {
				return (sig);
			}
		} else if ((unsigned char) *p == c) {
			return (sig);
		}
	}
	return (!sig);
}

static int
single_match(mstate *ms, const char *s, const char *p, const char *ep)
{
	if (s >= ms->src_end) {
		return (0);
	}
	int c = (unsigned char) *s;
	switch (*p) {
	case '.': return (1);
	case L_ESC: return (single_class(c, (unsigned char) *(p + 1)));
	case '[': return (match_set(c, p, ep - 1));
	default: return ((unsigned char) *p == c);
	}
}

static const char *
match_balance(mstate *ms, const char *s, const char *p)
{
	if (p >= ms->p_end - 1) {
		luaL_error(ms->L, "malformed pattern (missing arguments to '%%b')");
	}
	if (*s != *p) {
		return (NULL);
	}
	int b = *p, e = *(p + 1), cont = 1;
	while (++s < ms->src_end) {
		step(ms);
		if (*s == e) {
			if (--cont == 0) {
				return (s + 1);
			}
		} else if (*s == b) {
			cont++;
		}
	}
	return (NULL);
}

static const char *
max_expand(mstate *ms, const char *s, const char *p, const char *ep)
{
	ptrdiff_t i = 0;
	while (single_match(ms, s + i, p, ep)) {
		step(ms);
		i++;
	}
	// try with the most repetitions, then fewer
	while (i >= 0) {
		step(ms);
		const char *res = do_match(ms, (s + i), ep + 1);
		if (res) {
			return (res);
		}
		i--;
	}
	return (NULL);
}

static const char *
min_expand(mstate *ms, const char *s, const char *p, const char *ep)
{
	for (;;) {
		step(ms);
		const char *res = do_match(ms, s, ep + 1);
		if (res != NULL) {
			return (res);
		} else if (single_match(ms, s, p, ep)) {
			s++;
		} else {
			return (NULL);
		}
	}
}

static const char *
start_capture(mstate *ms, const char *s, const char *p, int what)
{
	int level = ms->level;
	if (level >= MAXCAPTURES) {
		luaL_error(ms->L, "too many captures");
	}
	ms->capture[level].init = s;
	ms->capture[level].len  = what;
	ms->level               = level + 1;
	const char *res         = do_match(ms, s, p);
	if (res == NULL) {
		ms->level--; // undo the capture
	}
	return (res);
}

static const char *
end_capture(mstate *ms, const char *s, const char *p)
{
	int l                 = capture_to_close(ms);
	ms->capture[l].len    = s - ms->capture[l].init;
	const char *res       = do_match(ms, s, p);
	if (res == NULL) {
		ms->capture[l].len = CAP_UNFINISHED;
	}
	return (res);
}

static const char *
match_capture(mstate *ms, const char *s, int l)
{
	l          = check_capture(ms, l);
	size_t len = (size_t) ms->capture[l].len;
	if ((size_t) (ms->src_end - s) >= len &&
	    memcmp(ms->capture[l].init, s, len) == 0) {
		return (s + len);
	}
	return (NULL);
}

static const char *
do_match(mstate *ms, const char *s, const char *p)
{
	if (ms->depth-- == 0) {
		luaL_error(ms->L, "pattern too complex");
	}
	step(ms);
	while (p != ms->p_end) {
		switch (*p) {
		case '(':
			if (*(p + 1) == ')') {
				s = start_capture(ms, s, p + 2, CAP_POSITION);
			} else {
				s = start_capture(ms, s, p + 1, CAP_UNFINISHED);
			}
			goto done;
		case ')':
			s = end_capture(ms, s, p + 1);
			goto done;
		case '$':
			if ((p + 1) != ms->p_end) {
				goto dflt; // '$' not at the end is a literal
			}
			s = (s == ms->src_end) ? s : NULL;
			goto done;
		case L_ESC:
			switch (*(p + 1)) {
			case 'b':
				s = match_balance(ms, s, p + 2);
				if (s != NULL) {
					p += 4;
					continue;
				}
				goto done;
			case 'f': {
				p += 2;
				if (*p != '[') {
					luaL_error(ms->L, "missing '[' after '%%f' "
					                  "in pattern");
				}
				const char *ep   = class_end(ms, p);
				int         prev = (s == ms->src_init)
				            ? '\0'
				            : (unsigned char) *(s - 1);
				int cur = (s < ms->src_end) ? (unsigned char) *s
				                            : '\0';
				if (!match_set(prev, p, ep - 1) &&
				    match_set(cur, p, ep - 1)) {
					p = ep;
					continue;
				}
				s = NULL;
				goto done;
			}
			case '0': case '1': case '2': case '3': case '4':
			case '5': case '6': case '7': case '8': case '9':
				s = match_capture(ms, s, (unsigned char) *(p + 1));
				if (s != NULL) {
					p += 2;
					continue;
				}
				goto done;
			default:
				goto dflt;
			}
		default:
		dflt: {
			const char *ep = class_end(ms, p);
			if (!single_match(ms, s, p, ep)) {
				if (*ep == '*' || *ep == '?' || *ep == '-') {
					p = ep + 1; // accept empty
					continue;
				}
				s = NULL;
			} else {
				switch (*ep) {
				case '?': {
					const char *res = do_match(ms, s + 1, ep + 1);
					if (res != NULL) {
						s = res;
					} else {
						p = ep + 1;
						continue;
					}
					break;
				}
				case '+':
					s = max_expand(ms, s + 1, p, ep);
					break;
				case '*':
					s = max_expand(ms, s, p, ep);
					break;
				case '-':
					s = min_expand(ms, s, p, ep);
					break;
				default:
					s++;
					p = ep;
					continue;
				}
			}
			goto done;
		}
		}
	}
done:
	ms->depth++;
	return (s);
}

/*
** {======================================================
** find, match, gmatch, gsub
** =======================================================
*/

static size_t
get_onecapture(mstate *ms, int i, const char *s, const char *e,
    const char **cap)
{
	if (i >= ms->level) {
		if (i != 0) {
			luaL_error(ms->L, "invalid capture index %%%d", i + 1);
		}
		*cap = s;
		return ((size_t) (e - s));
	}
	ptrdiff_t capl = ms->capture[i].len;
	*cap           = ms->capture[i].init;
	if (capl == CAP_UNFINISHED) {
		luaL_error(ms->L, "unfinished capture");
	} else if (capl == CAP_POSITION) {
		lua_pushinteger(ms->L,
		    (ms->capture[i].init - ms->src_init) + 1);
	}
	return ((size_t) capl);
}

static void
push_onecapture(mstate *ms, int i, const char *s, const char *e)
{
	const char *cap;
	ptrdiff_t   l = (ptrdiff_t) get_onecapture(ms, i, s, e, &cap);
	if (l != CAP_POSITION) {
		lua_pushlstring(ms->L, cap, (size_t) l);
	}
}

static int
push_captures(mstate *ms, const char *s, const char *e)
{
	int nlevels = (ms->level == 0 && s) ? 1 : ms->level;
	luaL_checkstack(ms->L, nlevels, "too many captures");
	for (int i = 0; i < nlevels; i++) {
		push_onecapture(ms, i, s, e);
	}
	return (nlevels);
}

static int
nospecials(const char *p, size_t l)
{
	size_t upto = 0;
	do {
		if (strpbrk(p + upto, SPECIALS)) {
			return (0);
		}
		upto += strlen(p + upto) + 1;
	} while (upto <= l);
	return (1);
}

static size_t
posrelat(lua_Integer pos, size_t len)
{
	if (pos > 0) {
		return ((size_t) pos);
	} else if (pos == 0) {
		return (1);
	} else if (pos < -(lua_Integer) len) {
		return (1);
	}
	return (len + (size_t) pos + 1);
}

static void
prepstate(mstate *ms, lua_State *L, const char *s, size_t ls, const char *p,
    size_t lp)
{
	ms->L        = L;
	ms->b        = ch_biz_of(L);
	ms->depth    = MAXDEPTH;
	ms->src_init = s;
	ms->src_end  = s + ls;
	ms->p_end    = p + lp;
}

static void
reprepstate(mstate *ms)
{
	ms->level = 0;
	ms->depth = MAXDEPTH;
}

static int
str_find_aux(lua_State *L, int find)
{
	size_t      ls, lp;
	const char *s    = luaL_checklstring(L, 1, &ls);
	const char *p    = luaL_checklstring(L, 2, &lp);
	size_t      init = posrelat(luaL_optinteger(L, 3, 1), ls) - 1;
	if (init > ls) {
		luaL_pushfail(L);
		return (1);
	}
	if (find && (lua_toboolean(L, 4) || nospecials(p, lp))) {
		// plain search: linear; charge the subject's length once
		ch_biz_charge(ch_biz_of(L), (ls - init) / 16 + 1);
		const char *hit = memmem(s + init, ls - init, p, lp);
		if (hit != NULL) {
			lua_pushinteger(L, (hit - s) + 1);
			lua_pushinteger(L, (hit - s) + (lua_Integer) lp);
			return (2);
		}
	} else {
		mstate      ms;
		const char *s1     = s + init;
		int         anchor = (*p == '^');
		if (anchor) {
			p++;
			lp--;
		}
		prepstate(&ms, L, s, ls, p, lp);
		do {
			const char *res;
			reprepstate(&ms);
			if ((res = do_match(&ms, s1, p)) != NULL) {
				if (find) {
					lua_pushinteger(L, (s1 - s) + 1);
					lua_pushinteger(L, res - s);
					return (push_captures(&ms, NULL, 0) + 2);
				}
				return (push_captures(&ms, s1, res));
			}
		} while (s1++ < ms.src_end && !anchor);
	}
	luaL_pushfail(L);
	return (1);
}

static int
str_find(lua_State *L)
{
	return (str_find_aux(L, 1));
}

static int
str_match(lua_State *L)
{
	return (str_find_aux(L, 0));
}

typedef struct {
	mstate      ms;
	const char *src;
	const char *p;
	const char *lastmatch;
} gmatch_state;

static int
gmatch_aux(lua_State *L)
{
	gmatch_state *gm = lua_touserdata(L, lua_upvalueindex(3));
	gm->ms.L         = L;
	gm->ms.b         = ch_biz_of(L);
	for (const char *src = gm->src; src <= gm->ms.src_end; src++) {
		const char *e;
		reprepstate(&gm->ms);
		if ((e = do_match(&gm->ms, src, gm->p)) != NULL &&
		    e != gm->lastmatch) {
			gm->src = gm->lastmatch = e;
			return (push_captures(&gm->ms, src, e));
		}
	}
	return (0);
}

static int
str_gmatch(lua_State *L)
{
	size_t      ls, lp;
	const char *s    = luaL_checklstring(L, 1, &ls);
	const char *p    = luaL_checklstring(L, 2, &lp);
	size_t      init = posrelat(luaL_optinteger(L, 3, 1), ls) - 1;
	lua_settop(L, 2);
	gmatch_state *gm = lua_newuserdatauv(L, sizeof(gmatch_state), 0);
	if (init > ls) {
		init = ls + 1;
	}
	prepstate(&gm->ms, L, s, ls, p, lp);
	gm->src       = s + init;
	gm->p         = p;
	gm->lastmatch = NULL;
	lua_pushcclosure(L, gmatch_aux, 3); // keeps s and p alive
	return (1);
}

static void
add_s(mstate *ms, luaL_Buffer *b, const char *s, const char *e)
{
	size_t      l;
	lua_State  *L    = ms->L;
	const char *news = lua_tolstring(L, 3, &l);
	const char *p;
	while ((p = memchr(news, L_ESC, l)) != NULL) {
		luaL_addlstring(b, news, (size_t) (p - news));
		p++;
		if (*p == L_ESC) {
			luaL_addchar(b, *p);
		} else if (*p == '0') {
			luaL_addlstring(b, s, (size_t) (e - s));
		} else if (isdigit((unsigned char) *p)) {
			const char *cap;
			ptrdiff_t   resl = (ptrdiff_t) get_onecapture(ms,
			      *p - '1', s, e, &cap);
			if (resl == CAP_POSITION) {
				luaL_addvalue(b);
			} else {
				luaL_addlstring(b, cap, (size_t) resl);
			}
		} else {
			luaL_error(L, "invalid use of '%c' in replacement string",
			    L_ESC);
		}
		l -= (size_t) (p + 1 - news);
		news = p + 1;
	}
	luaL_addlstring(b, news, l);
}

static int
add_value(mstate *ms, luaL_Buffer *b, const char *s, const char *e, int tr)
{
	lua_State *L = ms->L;
	switch (tr) {
	case LUA_TFUNCTION: {
		lua_pushvalue(L, 3);
		int n = push_captures(ms, s, e);
		lua_call(L, n, 1);
		break;
	}
	case LUA_TTABLE:
		push_onecapture(ms, 0, s, e);
		lua_gettable(L, 3);
		break;
	default:
		add_s(ms, b, s, e);
		return (1);
	}
	if (!lua_toboolean(L, -1)) {
		lua_pop(L, 1);
		luaL_addlstring(b, s, (size_t) (e - s)); // keep the original
		return (0);
	} else if (!lua_isstring(L, -1)) {
		return (luaL_error(L, "invalid replacement value (a %s)",
		    luaL_typename(L, -1)));
	}
	luaL_addvalue(b);
	return (1);
}

static int
str_gsub(lua_State *L)
{
	size_t      srcl, lp;
	const char *src    = luaL_checklstring(L, 1, &srcl);
	const char *p      = luaL_checklstring(L, 2, &lp);
	const char *lastmatch = NULL;
	int         tr     = lua_type(L, 3);
	lua_Integer max_s  = luaL_optinteger(L, 4, (lua_Integer) srcl + 1);
	int         anchor = (*p == '^');
	lua_Integer n      = 0;
	int         changed = 0;
	mstate      ms;
	luaL_Buffer b;
	luaL_argexpected(L,
	    tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION ||
	        tr == LUA_TTABLE,
	    3, "string/function/table");
	luaL_buffinit(L, &b);
	if (anchor) {
		p++;
		lp--;
	}
	prepstate(&ms, L, src, srcl, p, lp);
	while (n < max_s) {
		const char *e;
		reprepstate(&ms);
		if ((e = do_match(&ms, src, p)) != NULL && e != lastmatch) {
			n++;
			changed = add_value(&ms, &b, src, e, tr) | changed;
			src = lastmatch = e;
		} else if (src < ms.src_end) {
			luaL_addchar(&b, *src++);
		} else {
			break;
		}
		if (anchor) {
			break;
		}
	}
	if (!changed) {
		lua_pushvalue(L, 1);
	} else {
		luaL_addlstring(&b, src, (size_t) (ms.src_end - src));
		luaL_pushresult(&b);
	}
	lua_pushinteger(L, n);
	return (2);
}

/* }====================================================== */

void
ch_pattern_install(lua_State *L, int strtab)
{
	static const luaL_Reg fns[] = {
		{ "find", str_find },
		{ "match", str_match },
		{ "gmatch", str_gmatch },
		{ "gsub", str_gsub },
		{ NULL, NULL },
	};
	strtab = lua_absindex(L, strtab);
	for (const luaL_Reg *f = fns; f->name != NULL; f++) {
		lua_pushcfunction(L, f->func);
		lua_setfield(L, strtab, f->name);
	}
}

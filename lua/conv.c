// choreo — msgpack ↔ Lua conversion. See conv.h.
#include "conv.h"

#include <lauxlib.h>
#include <string.h>

#include "../core/codec.h"
#include "../core/utf8.h"

static const char ARRAY_MT_KEY = 'a'; // its address keys the registry

// The scratch buffer: one per state, freed with it, for packing that may
// raise (a value that cannot be stored) without leaking a buffer of the
// caller's.
static const char SCRATCH_KEY = 's';

static int
scratch_gc(lua_State *L)
{
	msgpack_sbuffer *sb = lua_touserdata(L, 1);
	msgpack_sbuffer_destroy(sb);
	return (0);
}

void
ch_conv_init(lua_State *L)
{
	lua_newtable(L);                         /* the array metatable */
	lua_pushliteral(L, "array");
	lua_setfield(L, -2, "__name");           /* mt.__name = "array" */
	lua_rawsetp(L, LUA_REGISTRYINDEX, &ARRAY_MT_KEY);
	msgpack_sbuffer *sb = lua_newuserdatauv(L, sizeof(*sb), 0);
	msgpack_sbuffer_init(sb);
	lua_newtable(L);
	lua_pushcfunction(L, scratch_gc);
	lua_setfield(L, -2, "__gc");
	lua_setmetatable(L, -2);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &SCRATCH_KEY);
	luaL_newmetatable(L, CH_PACKED);         /* pre-packed msgpack */
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 1);
}

msgpack_sbuffer *
ch_conv_scratch(lua_State *L)
{
	lua_rawgetp(L, LUA_REGISTRYINDEX, &SCRATCH_KEY);
	msgpack_sbuffer *sb = lua_touserdata(L, -1);
	lua_pop(L, 1);
	sb->size = 0;
	return (sb);
}

int
ch_conv_prepack(lua_State *L, int idx)
{
	return (ch_conv_prepack_as(L, idx, "payload"));
}

int
ch_conv_prepack_as(lua_State *L, int idx, const char *what)
{
	idx = lua_absindex(L, idx);
	msgpack_sbuffer *b = ch_conv_scratch(L);
	ch_conv_pack(L, idx, b, what);
	void *p = lua_newuserdatauv(L, b->size, 0);
	memcpy(p, b->data, b->size);
	luaL_setmetatable(L, CH_PACKED);
	return (1);
}

size_t
ch_conv_count(lua_State *L, int idx)
{
	if (lua_istable(L, idx)) {
		return (lua_rawlen(L, idx));
	}
	const unsigned char *p = luaL_testudata(L, idx, CH_PACKED);
	size_t               n = p != NULL ? lua_rawlen(L, idx) : 0;
	if (n >= 1 && (p[0] & 0xf0) == 0x90) {
		return (p[0] & 0x0f);
	}
	if (n >= 3 && p[0] == 0xdc) {
		return ((size_t) p[1] << 8 | p[2]);
	}
	if (n >= 5 && p[0] == 0xdd) {
		return ((size_t) p[1] << 24 | (size_t) p[2] << 16 |
		    (size_t) p[3] << 8 | p[4]);
	}
	return (0);
}

void
ch_conv_push_array_mt(lua_State *L)
{
	lua_rawgetp(L, LUA_REGISTRYINDEX, &ARRAY_MT_KEY);
}

void
ch_conv_push_obj(lua_State *L, const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		lua_pushnil(L);
		break;
	case MSGPACK_OBJECT_BOOLEAN:
		lua_pushboolean(L, o->via.boolean);
		break;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (o->via.u64 > (uint64_t) LUA_MAXINTEGER) {
			lua_pushnumber(L, (lua_Number) o->via.u64);
		} else {
			lua_pushinteger(L, (lua_Integer) o->via.u64);
		}
		break;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		lua_pushinteger(L, (lua_Integer) o->via.i64);
		break;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		lua_pushnumber(L, o->via.f64);
		break;
	case MSGPACK_OBJECT_STR:
		lua_pushlstring(L, o->via.str.ptr, o->via.str.size);
		break;
	case MSGPACK_OBJECT_BIN:
		lua_pushlstring(L, o->via.bin.ptr, o->via.bin.size);
		break;
	case MSGPACK_OBJECT_EXT:
		lua_pushlstring(L, o->via.ext.ptr, o->via.ext.size);
		break;
	case MSGPACK_OBJECT_ARRAY:
		luaL_checkstack(L, 4, "msgpack nested too deeply");
		lua_createtable(L, (int) o->via.array.size, 0);
		for (uint32_t i = 0; i < o->via.array.size; i++) {
			ch_conv_push_obj(L, &o->via.array.ptr[i]);
			lua_rawseti(L, -2, (lua_Integer) i + 1);
		}
		ch_conv_push_array_mt(L);
		lua_setmetatable(L, -2);
		break;
	case MSGPACK_OBJECT_MAP:
		luaL_checkstack(L, 4, "msgpack nested too deeply");
		lua_createtable(L, 0, (int) o->via.map.size);
		for (uint32_t i = 0; i < o->via.map.size; i++) {
			ch_conv_push_obj(L, &o->via.map.ptr[i].key);
			if (lua_isnil(L, -1)) {
				lua_pop(L, 1); /* a nil key cannot be kept */
				continue;
			}
			ch_conv_push_obj(L, &o->via.map.ptr[i].val);
			lua_rawset(L, -3);
		}
		break;
	}
}

/*
** {======================================================
** Bytes → Lua: a bounds-checked cursor, no allocation besides Lua's
** =======================================================
*/

typedef struct {
	const uint8_t *p, *end;
} cursor;

static int
need(cursor *c, size_t n)
{
	return ((size_t) (c->end - c->p) >= n ? 0 : -1);
}

static uint64_t
rd(cursor *c, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++) {
		v = (v << 8) | *c->p++;
	}
	return (v);
}

static int push_value(lua_State *L, cursor *c, int depth);

static int
push_container(lua_State *L, cursor *c, int depth, uint64_t n, int map)
{
	if (depth >= CH_CONV_MAX_DEPTH || n > (uint64_t) (c->end - c->p)) {
		return (-1);
	}
	luaL_checkstack(L, 4, "msgpack nested too deeply");
	if (map) {
		lua_createtable(L, 0, (int) n);
		for (uint64_t i = 0; i < n; i++) {
			if (push_value(L, c, depth + 1) != 0) {
				lua_pop(L, 1);
				return (-1);
			}
			if (push_value(L, c, depth + 1) != 0) {
				lua_pop(L, 2);
				return (-1);
			}
			if (lua_isnil(L, -2) ||
			    (lua_type(L, -2) == LUA_TNUMBER &&
			        lua_tonumber(L, -2) != lua_tonumber(L, -2))) {
				lua_pop(L, 2); /* nil or NaN key: drop */
				continue;
			}
			lua_rawset(L, -3);
		}
	} else {
		lua_createtable(L, (int) n, 0);
		for (uint64_t i = 0; i < n; i++) {
			if (push_value(L, c, depth + 1) != 0) {
				lua_pop(L, 1);
				return (-1);
			}
			lua_rawseti(L, -2, (lua_Integer) i + 1);
		}
		ch_conv_push_array_mt(L);
		lua_setmetatable(L, -2);
	}
	return (0);
}

static int
push_bytes_n(lua_State *L, cursor *c, uint64_t n)
{
	if (n > (uint64_t) (c->end - c->p)) {
		return (-1);
	}
	lua_pushlstring(L, (const char *) c->p, (size_t) n);
	c->p += n;
	return (0);
}

static int
push_value(lua_State *L, cursor *c, int depth)
{
	if (need(c, 1) != 0) {
		return (-1);
	}
	uint8_t b = *c->p++;
	if (b <= 0x7f) {
		lua_pushinteger(L, b);
		return (0);
	}
	if (b >= 0xe0) {
		lua_pushinteger(L, (int8_t) b);
		return (0);
	}
	if (b >= 0x80 && b <= 0x8f) {
		return (push_container(L, c, depth, b & 0x0f, 1));
	}
	if (b >= 0x90 && b <= 0x9f) {
		return (push_container(L, c, depth, b & 0x0f, 0));
	}
	if (b >= 0xa0 && b <= 0xbf) {
		return (push_bytes_n(L, c, b & 0x1f));
	}
	int w;
	switch (b) {
	case 0xc0:
		lua_pushnil(L);
		return (0);
	case 0xc2:
		lua_pushboolean(L, 0);
		return (0);
	case 0xc3:
		lua_pushboolean(L, 1);
		return (0);
	case 0xc4: case 0xd9: w = 1; goto bytes;
	case 0xc5: case 0xda: w = 2; goto bytes;
	case 0xc6: case 0xdb: w = 4;
	bytes:
		if (need(c, (size_t) w) != 0) {
			return (-1);
		}
		return (push_bytes_n(L, c, rd(c, w)));
	case 0xca: {
		if (need(c, 4) != 0) {
			return (-1);
		}
		uint32_t u = (uint32_t) rd(c, 4);
		float    f;
		memcpy(&f, &u, 4);
		lua_pushnumber(L, f);
		return (0);
	}
	case 0xcb: {
		if (need(c, 8) != 0) {
			return (-1);
		}
		uint64_t u = rd(c, 8);
		double   d;
		memcpy(&d, &u, 8);
		lua_pushnumber(L, d);
		return (0);
	}
	case 0xcc: case 0xcd: case 0xce: case 0xcf: {
		w = 1 << (b - 0xcc);
		if (need(c, (size_t) w) != 0) {
			return (-1);
		}
		uint64_t u = rd(c, w);
		if (u > (uint64_t) LUA_MAXINTEGER) {
			lua_pushnumber(L, (lua_Number) u);
		} else {
			lua_pushinteger(L, (lua_Integer) u);
		}
		return (0);
	}
	case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
		w = 1 << (b - 0xd0);
		if (need(c, (size_t) w) != 0) {
			return (-1);
		}
		uint64_t u = rd(c, w);
		int64_t  v;
		if (w == 1) {
			v = (int8_t) u;
		} else if (w == 2) {
			v = (int16_t) u;
		} else if (w == 4) {
			v = (int32_t) u;
		} else {
			v = (int64_t) u;
		}
		lua_pushinteger(L, v);
		return (0);
	}
	case 0xdc: case 0xde:
		if (need(c, 2) != 0) {
			return (-1);
		}
		return (push_container(L, c, depth, rd(c, 2), b == 0xde));
	case 0xdd: case 0xdf:
		if (need(c, 4) != 0) {
			return (-1);
		}
		return (push_container(L, c, depth, rd(c, 4), b == 0xdf));
	case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: {
		size_t n = (size_t) 1 << (b - 0xd4);
		if (need(c, 1 + n) != 0) {
			return (-1);
		}
		c->p++; /* ext type */
		return (push_bytes_n(L, c, n));
	}
	case 0xc7: case 0xc8: case 0xc9: {
		w = 1 << (b - 0xc7);
		if (need(c, (size_t) w + 1) != 0) {
			return (-1);
		}
		uint64_t n = rd(c, w);
		c->p++; /* ext type */
		return (push_bytes_n(L, c, n));
	}
	default:
		return (-1);
	}
}

int
ch_conv_push_bytes(lua_State *L, const void *buf, size_t len)
{
	cursor c = { buf, (const uint8_t *) buf + len };
	int    top = lua_gettop(L);
	if (push_value(L, &c, 0) != 0 || c.p != c.end) {
		lua_settop(L, top);
		return (-1);
	}
	return (0);
}

/* }====================================================== */

/*
** {======================================================
** Lua → msgpack
** =======================================================
*/

// Where the packer is, for an error message only: a string key, or a
// number key (formatted when an error needs it, never on the way down).
typedef struct {
	const char *what;
	const char *path[CH_CONV_MAX_DEPTH + 1];
	lua_Number  num[CH_CONV_MAX_DEPTH + 1];
} packctx;

// push_where pushes "what.path.to[3]: why" for the value at depth.
static void
push_where(lua_State *L, packctx *pc, int depth, const char *why)
{
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	luaL_addstring(&b, pc->what);
	for (int i = 1; i <= depth; i++) {
		if (pc->path[i] != NULL) {
			luaL_addchar(&b, '.');
			luaL_addstring(&b, pc->path[i]);
		} else {
			char idx[40];
			snprintf(idx, sizeof(idx), "[%.17g]", (double) pc->num[i]);
			luaL_addstring(&b, idx);
		}
	}
	luaL_addstring(&b, ": ");
	luaL_addstring(&b, why);
	luaL_pushresult(&b);
}

static void
pack_fail(lua_State *L, packctx *pc, int depth, const char *why)
{
	push_where(L, pc, depth, why);
	lua_error(L);
}

static const char BAD_KEY[] = "a table key must be a string, number or "
                              "boolean";
static const char TOO_DEEP[] = "tables nested too deeply (or a cycle)";

// is_array: a table with the array metatable, or a non-empty sequence.
static int
is_array(lua_State *L, int idx, lua_Integer *n)
{
	*n = (lua_Integer) lua_rawlen(L, idx);
	if (lua_getmetatable(L, idx)) {               /* mt */
		ch_conv_push_array_mt(L);               /* mt, amt */
		int yes = lua_rawequal(L, -1, -2);
		lua_pop(L, 2);
		if (yes) {
			return (1);
		}
	}
	if (*n == 0) {
		return (0);
	}
	lua_Integer count = 0;
	lua_pushnil(L);
	while (lua_next(L, idx) != 0) {
		lua_pop(L, 1);
		if (++count > *n) {
			lua_pop(L, 1);
			return (0);
		}
	}
	return (count == *n);
}

/*
** Straight into a buffer: no callback per piece, and a map's header is
** written after its entries (one pass over the table, not two). The bytes
** are the ones msgpack-c's packer writes (tests/unit/test_conv.c).
*/

static void
sb_need(lua_State *L, msgpack_sbuffer *sb, size_t n)
{
	if (ch_sbuffer_room(sb, n) != 0) {
		luaL_error(L, "out of memory");
	}
}

static void
sb_be(msgpack_sbuffer *sb, uint64_t v, int bytes)
{
	for (int i = bytes - 1; i >= 0; i--) {
		sb->data[sb->size++] = (char) (v >> (8 * i));
	}
}

// sb_str writes a Lua string: as msgpack str when it is valid UTF-8, else
// as bin — every str choreo writes is text a client can decode, and bytes
// (string.char(255), a bin value from a request) come back byte for byte.
static void
sb_str(lua_State *L, msgpack_sbuffer *sb, const char *s, size_t n)
{
	sb_need(L, sb, n + 5);
	if (!ch_utf8_valid(s, n)) {
		if (n < 256) {
			sb->data[sb->size++] = (char) 0xc4;
			sb_be(sb, n, 1);
		} else if (n < 65536) {
			sb->data[sb->size++] = (char) 0xc5;
			sb_be(sb, n, 2);
		} else {
			sb->data[sb->size++] = (char) 0xc6;
			sb_be(sb, n, 4);
		}
	} else if (n < 32) {
		sb->data[sb->size++] = (char) (0xa0 | n);
	} else if (n < 256) {
		sb->data[sb->size++] = (char) 0xd9;
		sb_be(sb, n, 1);
	} else if (n < 65536) {
		sb->data[sb->size++] = (char) 0xda;
		sb_be(sb, n, 2);
	} else {
		sb->data[sb->size++] = (char) 0xdb;
		sb_be(sb, n, 4);
	}
	memcpy(sb->data + sb->size, s, n);
	sb->size += n;
}

static void
sb_int(lua_State *L, msgpack_sbuffer *sb, lua_Integer i)
{
	sb_need(L, sb, 9);
	if (i >= 0) {
		uint64_t u = (uint64_t) i;
		if (u < 128) {
			sb->data[sb->size++] = (char) u;
		} else if (u < 256) {
			sb->data[sb->size++] = (char) 0xcc;
			sb_be(sb, u, 1);
		} else if (u < 65536) {
			sb->data[sb->size++] = (char) 0xcd;
			sb_be(sb, u, 2);
		} else if (u < 4294967296u) {
			sb->data[sb->size++] = (char) 0xce;
			sb_be(sb, u, 4);
		} else {
			sb->data[sb->size++] = (char) 0xcf;
			sb_be(sb, u, 8);
		}
	} else if (i >= -32) {
		sb->data[sb->size++] = (char) (0xe0 | (i + 32));
	} else if (i >= -128) {
		sb->data[sb->size++] = (char) 0xd0;
		sb_be(sb, (uint64_t) i, 1);
	} else if (i >= -32768) {
		sb->data[sb->size++] = (char) 0xd1;
		sb_be(sb, (uint64_t) i, 2);
	} else if (i >= INT32_MIN) {
		sb->data[sb->size++] = (char) 0xd2;
		sb_be(sb, (uint64_t) i, 4);
	} else {
		sb->data[sb->size++] = (char) 0xd3;
		sb_be(sb, (uint64_t) i, 8);
	}
}

static void sb_value(lua_State *L, int idx, msgpack_sbuffer *sb, packctx *pc,
    int depth);

// sb_key writes a map key and notes it for an error message.
static void
sb_key(lua_State *L, msgpack_sbuffer *sb, packctx *pc, int depth)
{
	switch (lua_type(L, -2)) {
	case LUA_TSTRING: {
		size_t      kl;
		const char *k = lua_tolstring(L, -2, &kl);
		sb_str(L, sb, k, kl);
		pc->path[depth + 1] = k;
		return;
	}
	case LUA_TNUMBER:
		pc->path[depth + 1] = NULL;
		pc->num[depth + 1]  = lua_tonumber(L, -2);
		if (lua_isinteger(L, -2)) {
			sb_int(L, sb, lua_tointeger(L, -2));
		} else {
			double d = lua_tonumber(L, -2);
			uint64_t u;
			memcpy(&u, &d, 8);
			sb_need(L, sb, 9);
			sb->data[sb->size++] = (char) 0xcb;
			sb_be(sb, u, 8);
		}
		return;
	case LUA_TBOOLEAN:
		sb_need(L, sb, 1);
		sb->data[sb->size++] = lua_toboolean(L, -2) ? (char) 0xc3
		                                            : (char) 0xc2;
		pc->path[depth + 1] = lua_toboolean(L, -2) ? "[true]" : "[false]";
		return;
	default:
		pack_fail(L, pc, depth, BAD_KEY);
	}
}

static void
sb_table(lua_State *L, int idx, msgpack_sbuffer *sb, packctx *pc, int depth)
{
	lua_Integer n;
	if (depth >= CH_CONV_PACK_DEPTH) {
		pack_fail(L, pc, depth, TOO_DEEP);
	}
	luaL_checkstack(L, 6, "tables nested too deeply");
	if (is_array(L, idx, &n)) {
		sb_need(L, sb, 5);
		if (n < 16) {
			sb->data[sb->size++] = (char) (0x90 | n);
		} else if (n < 65536) {
			sb->data[sb->size++] = (char) 0xdc;
			sb_be(sb, (uint64_t) n, 2);
		} else {
			sb->data[sb->size++] = (char) 0xdd;
			sb_be(sb, (uint64_t) n, 4);
		}
		for (lua_Integer i = 1; i <= n; i++) {
			lua_rawgeti(L, idx, i);
			pc->path[depth + 1] = NULL;
			pc->num[depth + 1]  = (lua_Number) i;
			sb_value(L, lua_gettop(L), sb, pc, depth + 1);
			lua_pop(L, 1);
		}
		return;
	}
	// a fixmap header now; a longer one once the count is known
	sb_need(L, sb, 1);
	size_t at = sb->size++;
	size_t count = 0;
	lua_pushnil(L);
	while (lua_next(L, idx) != 0) {             /* key, value */
		sb_key(L, sb, pc, depth);
		sb_value(L, lua_gettop(L), sb, pc, depth + 1);
		lua_pop(L, 1);                          /* key */
		count++;
	}
	if (count < 16) {
		sb->data[at] = (char) (0x80 | count);
		return;
	}
	size_t extra = count < 65536 ? 2 : 4;
	sb_need(L, sb, extra);
	memmove(sb->data + at + 1 + extra, sb->data + at + 1, sb->size - at - 1);
	sb->size += extra;
	size_t end = sb->size;
	sb->size   = at;
	sb->data[sb->size++] = count < 65536 ? (char) 0xde : (char) 0xdf;
	sb_be(sb, count, (int) extra);
	sb->size = end;
}

static void
sb_value(lua_State *L, int idx, msgpack_sbuffer *sb, packctx *pc, int depth)
{
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		sb_need(L, sb, 1);
		sb->data[sb->size++] = (char) 0xc0;
		break;
	case LUA_TBOOLEAN:
		sb_need(L, sb, 1);
		sb->data[sb->size++] = lua_toboolean(L, idx) ? (char) 0xc3
		                                             : (char) 0xc2;
		break;
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx)) {
			sb_int(L, sb, lua_tointeger(L, idx));
		} else {
			double   d = lua_tonumber(L, idx);
			uint64_t u;
			memcpy(&u, &d, 8);
			sb_need(L, sb, 9);
			sb->data[sb->size++] = (char) 0xcb;
			sb_be(sb, u, 8);
		}
		break;
	case LUA_TSTRING: {
		size_t      n;
		const char *s = lua_tolstring(L, idx, &n);
		sb_str(L, sb, s, n);
		break;
	}
	case LUA_TTABLE:
		sb_table(L, idx, sb, pc, depth);
		break;
	case LUA_TUSERDATA:
		if (luaL_testudata(L, idx, CH_PACKED) != NULL) {
			size_t n = lua_rawlen(L, idx);
			sb_need(L, sb, n);
			memcpy(sb->data + sb->size, lua_touserdata(L, idx), n);
			sb->size += n;
			break;
		}
		/* FALLTHROUGH */
	default:
		pack_fail(L, pc, depth,
		    lua_pushfstring(L, "cannot store a value of type %s",
		        luaL_typename(L, idx)));
	}
}

/*
** Checking without packing: the same rules as the packer, for rules that
** want the error where the value was stored, not where it is packed.
*/

// check_value returns NULL when the value at idx can be stored, else why
// not, with pc's path filled up to *at.
static const char *
check_value(lua_State *L, int idx, packctx *pc, int depth, int *at)
{
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
	case LUA_TBOOLEAN:
	case LUA_TNUMBER:
	case LUA_TSTRING:
		return (NULL);
	case LUA_TUSERDATA:
		if (luaL_testudata(L, idx, CH_PACKED) != NULL) {
			return (NULL);
		}
		break;
	case LUA_TTABLE:
		if (depth >= CH_CONV_PACK_DEPTH) {
			*at = depth;
			return (TOO_DEEP);
		}
		luaL_checkstack(L, 3, "tables nested too deeply");
		lua_pushnil(L);
		while (lua_next(L, idx) != 0) {     /* key, value */
			const char *why = NULL;
			switch (lua_type(L, -2)) {
			case LUA_TSTRING:
				pc->path[depth + 1] = lua_tostring(L, -2);
				break;
			case LUA_TNUMBER:
				pc->path[depth + 1] = NULL;
				pc->num[depth + 1]  = lua_tonumber(L, -2);
				break;
			case LUA_TBOOLEAN:
				pc->path[depth + 1] = lua_toboolean(L, -2)
				    ? "[true]"
				    : "[false]";
				break;
			default:
				*at = depth;
				why = BAD_KEY;
			}
			if (why == NULL) {
				why = check_value(L, lua_gettop(L), pc,
				    depth + 1, at);
			}
			if (why != NULL) {
				lua_pop(L, 2);
				return (why);
			}
			lua_pop(L, 1);                  /* key */
		}
		return (NULL);
	default:
		break;
	}
	*at = depth;
	switch (lua_type(L, idx)) {
	case LUA_TFUNCTION:
		return ("cannot store a value of type function");
	case LUA_TTHREAD:
		return ("cannot store a value of type thread");
	default:
		return ("cannot store a value of type userdata");
	}
}

int
ch_conv_check(lua_State *L, int idx, const char *what)
{
	packctx pc;
	int     at = 0;
	pc.what    = what;
	pc.path[0] = NULL;
	const char *why = check_value(L, lua_absindex(L, idx), &pc, 0, &at);
	if (why == NULL) {
		return (0);
	}
	push_where(L, &pc, at, why);
	return (1);
}

void
ch_conv_pack(lua_State *L, int idx, msgpack_sbuffer *sb, const char *what)
{
	packctx pc;
	pc.what    = what;
	pc.path[0] = NULL;
	// an error (lua_error) leaves what was written so far: every caller
	// clears its buffer on failure
	sb_value(L, lua_absindex(L, idx), sb, &pc, 0);
}

/* }====================================================== */

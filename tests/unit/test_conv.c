// Lua tables to msgpack: the packer writes exactly what msgpack-c writes for
// the same values (unpacked and packed again by msgpack-c, the bytes do not
// change), and names the value it cannot store.
#include <criterion/criterion.h>
#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

#include "lua/conv.h"

static lua_State *
state(void)
{
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	ch_conv_init(L);
	return (L);
}

// canonical packs the global `v` of the chunk src and checks that
// msgpack-c, unpacking and packing those bytes again, writes them alike.
static void
canonical(const char *src)
{
	lua_State *L = state();
	cr_assert_eq(luaL_dostring(L, src), LUA_OK, "%s", lua_tostring(L, -1));
	lua_getglobal(L, "v");
	msgpack_sbuffer ours, theirs;
	msgpack_sbuffer_init(&ours);
	msgpack_sbuffer_init(&theirs);
	ch_conv_pack(L, -1, &ours, "v");
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	size_t off = 0;
	cr_assert_eq(msgpack_unpack_next(&up, ours.data, ours.size, &off),
	    MSGPACK_UNPACK_SUCCESS, "%s: not msgpack", src);
	cr_assert_eq(off, ours.size, "%s: bytes after the value", src);
	msgpack_packer pk;
	msgpack_packer_init(&pk, &theirs, msgpack_sbuffer_write);
	msgpack_pack_object(&pk, up.data);
	cr_assert_eq(ours.size, theirs.size, "%s: %zu bytes against %zu", src,
	    ours.size, theirs.size);
	cr_assert_eq(memcmp(ours.data, theirs.data, ours.size), 0, "%s", src);
	// and it reads back as the same value
	lua_settop(L, 0);
	ch_conv_push_obj(L, &up.data);
	msgpack_sbuffer again;
	msgpack_sbuffer_init(&again);
	ch_conv_pack(L, -1, &again, "v");
	cr_assert_eq(again.size, ours.size, "%s: round trip", src);
	msgpack_sbuffer_destroy(&again);
	msgpack_unpacked_destroy(&up);
	msgpack_sbuffer_destroy(&ours);
	msgpack_sbuffer_destroy(&theirs);
	lua_close(L);
}

Test(conv, the_packer_writes_what_msgpack_c_writes)
{
	canonical("v = nil");
	canonical("v = { a = true, b = false, c = 'x', d = 1.5, e = -1 }");
	canonical("v = { 0, 127, 128, 255, 256, 65535, 65536, 4294967295,"
	          " 4294967296, -1, -32, -33, -128, -129, -32768, -32769,"
	          " -2147483648, -2147483649, math.maxinteger, math.mininteger }");
	canonical("v = { s31 = ('x'):rep(31), s32 = ('x'):rep(32),"
	          " s255 = ('x'):rep(255), s256 = ('x'):rep(256),"
	          " s65536 = ('x'):rep(65536), [''] = '' }");
	canonical("v = {} for i = 1, 15 do v['k' .. i] = i end");
	canonical("v = {} for i = 1, 16 do v['k' .. i] = { i, { x = i } } end");
	canonical("v = {} for i = 1, 70000 do v['k' .. i] = i end");
	canonical("v = {} for i = 1, 15 do v[i] = i end");
	canonical("v = {} for i = 1, 16 do v[i] = i end");
	canonical("v = {} for i = 1, 70000 do v[i] = i end");
	canonical("v = { [1] = 'a', [3] = 'c', [2.5] = 'f', [true] = 1 }");
	canonical("v = { nested = { deeper = { deepest = { 1, 2, { 3 } } } } }");
}

// packed_type: the msgpack type of v.k once v is packed.
static msgpack_object_type
packed(const char *src, msgpack_object *key, msgpack_object *val,
    msgpack_unpacked *up, msgpack_sbuffer *b)
{
	lua_State *L = state();
	cr_assert_eq(luaL_dostring(L, src), LUA_OK, "%s", lua_tostring(L, -1));
	lua_getglobal(L, "v");
	msgpack_sbuffer_init(b);
	ch_conv_pack(L, -1, b, "v");
	lua_close(L);
	msgpack_unpacked_init(up);
	cr_assert_eq(msgpack_unpack_next(up, b->data, b->size, NULL),
	    MSGPACK_UNPACK_SUCCESS);
	cr_assert_eq(up->data.type, MSGPACK_OBJECT_MAP);
	cr_assert_eq(up->data.via.map.size, 1);
	*key = up->data.via.map.ptr[0].key;
	*val = up->data.via.map.ptr[0].val;
	return (val->type);
}

Test(conv, a_string_that_is_not_utf8_is_packed_as_bin)
{
	struct {
		const char         *src;
		msgpack_object_type key, val;
		size_t              vlen;
	} cases[] = {
		{ "v = { k = 'Zoë ✓' }", MSGPACK_OBJECT_STR, MSGPACK_OBJECT_STR, 8 },
		{ "v = { k = 'a\\0b' }", MSGPACK_OBJECT_STR, MSGPACK_OBJECT_STR, 3 },
		{ "v = { k = string.char(255, 0, 97) }", MSGPACK_OBJECT_STR,
		    MSGPACK_OBJECT_BIN, 3 },
		{ "v = { [string.char(200)] = 'x' }", MSGPACK_OBJECT_BIN,
		    MSGPACK_OBJECT_STR, 1 },
		{ "v = { k = ('\\xed\\xa0\\x80'):rep(100) }", MSGPACK_OBJECT_STR,
		    MSGPACK_OBJECT_BIN, 300 },
		{ "v = { k = ('\\xff'):rep(70000) }", MSGPACK_OBJECT_STR,
		    MSGPACK_OBJECT_BIN, 70000 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		msgpack_object   k, v;
		msgpack_unpacked up;
		msgpack_sbuffer  b;
		packed(cases[i].src, &k, &v, &up, &b);
		cr_assert_eq(k.type, cases[i].key, "%s: key", cases[i].src);
		cr_assert_eq(v.type, cases[i].val, "%s: value", cases[i].src);
		cr_assert_eq(v.via.str.size, cases[i].vlen, "%s", cases[i].src);
		msgpack_unpacked_destroy(&up);
		msgpack_sbuffer_destroy(&b);
	}
	// and msgpack-c writes the same bytes for them
	canonical("v = { b8 = string.char(255):rep(255), b16 = "
	          "string.char(255):rep(256), b32 = string.char(255):rep(65536),"
	          " [string.char(128)] = 1 }");
}

static int
pack(lua_State *L)
{
	ch_conv_pack(L, 1, lua_touserdata(L, 2), "customer state");
	return (0);
}

// pack_error: the message packing the global v raises (asserting it does).
static void
expect_pack_error(const char *src, const char *want)
{
	lua_State *L = state();
	cr_assert_eq(luaL_dostring(L, src), LUA_OK, "%s", lua_tostring(L, -1));
	msgpack_sbuffer b;
	msgpack_sbuffer_init(&b);
	lua_pushcfunction(L, pack);
	lua_getglobal(L, "v");
	lua_pushlightuserdata(L, &b);
	cr_assert_neq(lua_pcall(L, 2, 0, 0), LUA_OK, "%s packed", src);
	cr_assert_str_eq(lua_tostring(L, -1), want);
	// and the check without packing says the same
	lua_settop(L, 0);
	lua_getglobal(L, "v");
	cr_assert_eq(ch_conv_check(L, 1, "customer state"), 1, "%s", src);
	cr_assert_str_eq(lua_tostring(L, -1), want);
	cr_assert_eq(lua_gettop(L), 2);
	msgpack_sbuffer_destroy(&b);
	lua_close(L);
}

Test(conv, a_function_in_a_map_is_an_error_not_left_out)
{
	expect_pack_error("v = { a = 1, f = print }",
	    "customer state.f: cannot store a value of type function");
	expect_pack_error("v = { attrs = { co = coroutine.create(print) } }",
	    "customer state.attrs.co: cannot store a value of type thread");
	expect_pack_error("v = { attrs = { io.stdout } }",
	    "customer state.attrs[1]: cannot store a value of type userdata");
	expect_pack_error("v = { attrs = { [{}] = 1 } }",
	    "customer state.attrs: a table key must be a string, number or "
	    "boolean");
	expect_pack_error("v = { [true] = { x = { [2.5] = print } } }",
	    "customer state.[true].x[2.5]: cannot store a value of type "
	    "function");
	char cycle[512] = "customer state";
	for (int i = 0; i < CH_CONV_PACK_DEPTH; i++) {
		strcat(cycle, ".self");
	}
	strcat(cycle, ": tables nested too deeply (or a cycle)");
	expect_pack_error("v = {} v.self = v", cycle);
}

Test(conv, what_can_be_stored_passes_the_check)
{
	lua_State *L = state();
	luaL_dostring(L, "v = { a = 1, b = 'x', c = { 1, 2, { d = true } },"
	                 " [3] = 2.5, [false] = string.char(255) }");
	lua_getglobal(L, "v");
	cr_assert_eq(ch_conv_check(L, 1, "v"), 0);
	cr_assert_eq(lua_gettop(L), 1, "nothing left on the stack");
	lua_close(L);
}

Test(conv, a_value_that_cannot_be_stored_is_named_by_its_path)
{
	lua_State *L = state();
	luaL_dostring(L, "v = { attrs = { list = { 1, print } } }");
	msgpack_sbuffer b;
	msgpack_sbuffer_init(&b);
	lua_pushcfunction(L, pack);
	lua_getglobal(L, "v");
	lua_pushlightuserdata(L, &b);
	cr_assert_neq(lua_pcall(L, 2, 0, 0), LUA_OK);
	cr_assert_str_eq(lua_tostring(L, -1),
	    "customer state.attrs.list[2]: cannot store a value of type "
	    "function");
	msgpack_sbuffer_destroy(&b);
	lua_close(L);
}

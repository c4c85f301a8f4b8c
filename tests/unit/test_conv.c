// Lua tables to msgpack: the direct packer writes exactly what the
// msgpack-c packer writes, and fails the same way.
#include <criterion/criterion.h>
#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

#include "lua/conv.h"

static int
sbuf_write(void *data, const char *buf, size_t len)
{
	return (msgpack_sbuffer_write(data, buf, len));
}

// both packs the global `v` of the chunk src both ways and compares.
static void
both(const char *src)
{
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	ch_conv_init(L);
	cr_assert_eq(luaL_dostring(L, src), LUA_OK, "%s", lua_tostring(L, -1));
	lua_getglobal(L, "v");
	msgpack_sbuffer a, b;
	msgpack_packer  pk;
	msgpack_sbuffer_init(&a);
	msgpack_sbuffer_init(&b);
	msgpack_packer_init(&pk, &a, sbuf_write);
	ch_conv_pack(L, -1, &pk, "v");
	ch_conv_pack_sbuf(L, -1, &b, "v");
	cr_assert_eq(a.size, b.size, "%s: %zu bytes against %zu", src, a.size,
	    b.size);
	cr_assert_eq(memcmp(a.data, b.data, a.size), 0, "%s", src);
	msgpack_sbuffer_destroy(&a);
	msgpack_sbuffer_destroy(&b);
	lua_close(L);
}

Test(conv, the_direct_packer_writes_what_msgpack_c_writes)
{
	both("v = nil");
	both("v = { a = true, b = false, c = 'x', d = 1.5, e = -1 }");
	both("v = { 0, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296,"
	     " -1, -32, -33, -128, -129, -32768, -32769, -2147483648,"
	     " -2147483649, math.maxinteger, math.mininteger }");
	both("v = { s31 = ('x'):rep(31), s32 = ('x'):rep(32),"
	     " s255 = ('x'):rep(255), s256 = ('x'):rep(256),"
	     " s65536 = ('x'):rep(65536), [''] = '' }");
	both("v = {} for i = 1, 15 do v['k' .. i] = i end");
	both("v = {} for i = 1, 16 do v['k' .. i] = { i, { x = i } } end");
	both("v = {} for i = 1, 70000 do v['k' .. i] = i end");
	both("v = {} for i = 1, 70000 do v[i] = i end");
	both("v = { [1] = 'a', [3] = 'c', [2.5] = 'f', [true] = 1, f = print }");
	both("v = { nested = { deeper = { deepest = { 1, 2, { 3 } } } } }");
}

static int
pack_direct(lua_State *L)
{
	msgpack_sbuffer *b = lua_touserdata(L, 2);
	ch_conv_pack_sbuf(L, 1, b, "customer state");
	return (0);
}

static int
pack_msgpack_c(lua_State *L)
{
	msgpack_sbuffer *b = lua_touserdata(L, 2);
	msgpack_packer   pk;
	msgpack_packer_init(&pk, b, sbuf_write);
	ch_conv_pack(L, 1, &pk, "customer state");
	return (0);
}

Test(conv, both_packers_name_the_bad_value)
{
	lua_CFunction fns[] = { pack_direct, pack_msgpack_c };
	for (int i = 0; i < 2; i++) {
		lua_State *L = luaL_newstate();
		luaL_openlibs(L);
		ch_conv_init(L);
		luaL_dostring(L, "v = { attrs = { list = { 1, print } } }");
		msgpack_sbuffer b;
		msgpack_sbuffer_init(&b);
		lua_pushcfunction(L, fns[i]);
		lua_getglobal(L, "v");
		lua_pushlightuserdata(L, &b);
		cr_assert_neq(lua_pcall(L, 2, 0, 0), LUA_OK);
		cr_assert_str_eq(lua_tostring(L, -1),
		    "customer state.attrs.list[2]: cannot store a value of "
		    "type function");
		msgpack_sbuffer_destroy(&b);
		lua_close(L);
	}
}

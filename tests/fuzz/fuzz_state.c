// Fuzz target: the stored-state decoder (msgpack bytes → Lua tables) and
// the encoder back, as the engine runs them on every event.
#include <lauxlib.h>
#include <lualib.h>
#include <msgpack.h>
#include <stdint.h>

#include "lua/conv.h"

static lua_State *L;

static int
pack(lua_State *L)
{
	msgpack_sbuffer *b = lua_touserdata(L, 2);
	ch_conv_pack(L, 1, b, "state");
	return (0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (L == NULL) {
		L = luaL_newstate();
		ch_conv_init(L);
	}
	lua_settop(L, 0);
	if (ch_conv_push_bytes(L, data, size) != 0) {
		return (0);
	}
	msgpack_sbuffer b;
	msgpack_sbuffer_init(&b);
	lua_pushcfunction(L, pack);
	lua_pushvalue(L, 1);
	lua_pushlightuserdata(L, &b);
	if (lua_pcall(L, 2, 0, 0) == LUA_OK) {
		// what was packed decodes again
		lua_settop(L, 0);
		if (ch_conv_push_bytes(L, b.data, b.size) != 0) {
			__builtin_trap();
		}
	}
	msgpack_sbuffer_destroy(&b);
	lua_settop(L, 0);
	lua_gc(L, LUA_GCCOLLECT);
	return (0);
}

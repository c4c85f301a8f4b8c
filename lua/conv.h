// choreo — msgpack ↔ Lua conversion.
//
// Maps become tables; arrays become tables carrying the array metatable
// (ch_conv_array_mt), so that an empty list packs back as an array and not
// as a map. Integers stay integers, floats stay floats. A string is packed
// as msgpack str when it is valid UTF-8 and as bin when it is not; str,
// bin and ext all read back as Lua strings.
#ifndef LUA_CONV_H
#define LUA_CONV_H

#include <lua.h>
#include <msgpack.h>
#include <stddef.h>

// Nesting deeper than this is refused both ways (it also stops cycles).
#define CH_CONV_MAX_DEPTH 64
// What choreo packs — a state, a reply, an emit, a timer's data — nests at
// most this deep, so that with the map a reply or a pub message wraps it
// in (one level, two for a batch's result) msgpack-c, which reads 32
// levels, still reads it: the CLI, the engine's own forget and timers,
// and C clients.
#define CH_CONV_PACK_DEPTH 29

// ch_conv_init registers the array metatable in L's registry. Call once.
void ch_conv_init(lua_State *L);

// ch_conv_prepack pushes a userdata holding the value at idx packed as
// msgpack; ch_conv_pack writes its bytes as they are. For values packed on
// every request that never change (payloads of a cached view).
#define CH_PACKED "choreo.packed"
int ch_conv_prepack(lua_State *L, int idx);
// ch_conv_prepack_as: the same, with what naming the value in errors.
int ch_conv_prepack_as(lua_State *L, int idx, const char *what);

// ch_conv_count: how many entries the list at idx has, a table or a packed
// array; 0 for anything else.
size_t ch_conv_count(lua_State *L, int idx);

// ch_conv_push_array_mt pushes the array metatable.
void ch_conv_push_array_mt(lua_State *L);

// ch_conv_push_obj pushes a decoded msgpack object. Raises on memory errors.
void ch_conv_push_obj(lua_State *L, const msgpack_object *o);

// ch_conv_push_bytes decodes one msgpack value from buf and pushes it.
// Returns 0, or -1 (pushing nothing) when the bytes are not one well-formed
// value. Raises on memory errors.
int ch_conv_push_bytes(lua_State *L, const void *buf, size_t len);

// ch_conv_pack packs the value at idx. Raises a Lua error naming the path
// ("c.attrs.x: cannot store a value of type function") on a value msgpack
// cannot hold — a function, a thread, a userdata, a table key of another
// type than string, number or boolean — rather than leave it out.
// what names the root in messages ("payload", "state").
void ch_conv_pack(lua_State *L, int idx, msgpack_sbuffer *sb,
    const char *what);

// ch_conv_check tells whether ch_conv_pack would accept the value at idx,
// without packing it: 0, or 1 with the message it would raise pushed
// ("c.attrs.f: cannot store a value of type function"). Only Lua's own
// memory errors are raised.
int ch_conv_check(lua_State *L, int idx, const char *what);

// ch_conv_scratch: the state's own buffer, emptied, for packing that may
// raise an error without leaking a buffer (valid until the next call).
msgpack_sbuffer *ch_conv_scratch(lua_State *L);

#endif

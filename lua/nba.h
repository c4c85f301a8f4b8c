// choreo — the next best action, in C (see nba.c).
#ifndef LUA_NBA_H
#define LUA_NBA_H

#include <lua.h>

#define CH_NBA_VIEW "choreo.nba_view"

// ch_nba_open registers the compiled view's metatable in L.
void ch_nba_open(lua_State *L);
// ch_nba_register sets nba_compile and nba_decide in the table at index h.
void ch_nba_register(lua_State *L, int h);

#endif

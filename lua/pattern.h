// choreo — string.find/match/gmatch/gsub with a step budget (pattern.c).
#ifndef LUA_PATTERN_H
#define LUA_PATTERN_H

#include <lua.h>

// ch_pattern_install sets find, match, gmatch and gsub in the table at
// strtab to the budgeted versions.
void ch_pattern_install(lua_State *L, int strtab);

#endif

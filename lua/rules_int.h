// choreo — what lua/rules.c shares with the other files of lua/ (nba.c);
// not for core/.
#ifndef LUA_RULES_INT_H
#define LUA_RULES_INT_H

#include <lua.h>
#include <stdbool.h>
#include <stdint.h>

#include "rules.h"

typedef struct {
	char *message;
	char *file;
	int   line;
	int64_t at;
} load_error;

struct ch_biz {
	char       name[65];
	lua_State *L;
	char       version[17];
	int64_t    loaded_at;
	char     **files; // display paths, in load order
	char     **srcs;  // their contents, kept for the version history
	size_t    *srclens;
	int        nfiles;
	char       quarantined[17]; // the version set aside, "" if none
	char       quarantine_type[65];
	int64_t    quarantine_at;
	// the quarantined version serves anyway, as the last one there is:
	// requests of this event type (the one it stopped the engine on) are
	// refused; "" when the version is not quarantined
	char       refused_type[65];
	load_error err;   // err.message != NULL: failed, serves nothing
	int        api;   // registry ref of the prelude's API table
	// the sandbox's budgets
	size_t   mem_used, mem_limit;
	uint64_t budget;
	bool     limit_hit;  // the running call ran out of budget
	const char *limit_what;
	ch_rule_out *cur;    // the call running, for the model's store access
	uint64_t     model_gen; // bumped by every model write (nba.c's cache)
	char        *token;     // requests must carry it; NULL: none
	uint64_t     steps;     // C work charged to the running call
	ch_rules_opts opts;
};

// ch_rules_read_file reads a whole file (malloc'd); NULL with errno set.
char *ch_rules_read_file(const char *path, size_t *len);
// ch_rules_list_lua returns the sorted *.lua files of dir (malloc'd).
char **ch_rules_list_lua(const char *dir, int *count);

// ch_biz_of returns the business whose state L is.
ch_biz *ch_biz_of(lua_State *L);

// ch_biz_charge adds n steps of work done in C (pattern matching) to the
// running call; past the budget it arms the sticky budget hook and returns
// -1 (the caller then raises).
int ch_biz_charge(ch_biz *b, uint64_t n);

// ch_rules_epoch: bumped by ch_rules_model_rollback.
uint64_t ch_rules_epoch(void);

// ch_biz_model_read reads the model's counts (accepted, rejected, ignored)
// of (action, channel) in the running call's transaction; zeros when the
// call has no store. Raises a Lua error when the store fails.
void ch_biz_model_read(ch_biz *b, const char *action, size_t alen,
    const char *ch, size_t chlen, uint64_t v[3]);

#endif

// choreo — the reloader: watches the rules folder and swaps new rule sets
// into the engines. Reloads come from inotify (debounced), SIGHUP and the
// reload op, and all take the same path.
#ifndef CORE_RELOAD_H
#define CORE_RELOAD_H

#include <stdbool.h>

#include "../lua/rules.h"
#include "engine.h"

typedef struct ch_reloader ch_reloader;

typedef struct {
	const char   *rules_dir;
	ch_engine   **engines; // one per shard
	int           nengines;
	ch_rules_opts rules_opts;
	bool          watch;   // inotify; false: only asked reloads
} ch_reloader_opts;

int  ch_reloader_start(ch_reloader **out, const ch_reloader_opts *o);
// ch_reloader_trigger asks for a reload (async-signal unsafe: call it from
// a thread, e.g. the one that sigwait()s).
void ch_reloader_trigger(ch_reloader *r);
typedef void (*ch_reload_done)(void *arg, int rc, const char *why);
// ch_reloader_request asks for a reload — or, with business and version, a
// rollback to that stored version — and calls done on the reloader's
// thread once every engine has swapped. CH_OK or CH_EOVERLOADED.
int ch_reloader_request(ch_reloader *r, const char *business,
    const char *version, ch_reload_done done, void *arg);
void ch_reloader_stop(ch_reloader *r);

#endif

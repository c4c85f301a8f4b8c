// choreo — what each engine thread's rules are running right now, in memory
// shared with the supervising parent: when the engine dies inside a rule,
// the parent knows which business, version and event type to quarantine,
// and the watchdog knows how long the rule has been running.
#ifndef LUA_RUNNING_H
#define LUA_RUNNING_H

#include <stdatomic.h>
#include <stdint.h>

#define CH_RUNNING_SLOTS 64

typedef struct {
	atomic_int_fast64_t since; // ms (monotonic) the call began; 0: idle
	char                business[65];
	char                version[17];
	char                type[65]; // the event type, "load" for a file
} ch_running;

// The slots: NULL when nothing watches (tools); else CH_RUNNING_SLOTS.
extern ch_running *ch_running_slots;
// The slot of the calling thread (set by the engine thread), or NULL.
extern _Thread_local ch_running *ch_running_mine;

#endif

// choreo — what each engine thread's rules are running right now, in memory
// shared with the supervising parent: the watchdog knows how long a rule has
// been running, and when the engine dies the parent knows whether a rule is
// to blame — and which business, version and event type to quarantine.
//
// The evidence is the verdict. Only two things convict a rule: the
// watchdog's own abort (the rule overran --rule-timeout), and a fault the
// kernel raised (SIGSEGV, SIGBUS, SIGILL, SIGFPE) or an abort() the thread
// called on itself while that thread was inside a rule call. An engine that
// dies any other way — kill -9 from an operator, the OOM killer, a signal
// sent from outside, a fault on a thread that runs no rule — convicts
// nobody, and nothing is quarantined.
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

// What the evidence says when the engine dies: the slot whose rule is to
// blame (-1: none), and how it was caught.
enum { CH_CAUGHT_NONE, CH_CAUGHT_WATCHDOG, CH_CAUGHT_FAULT };
typedef struct {
	atomic_int slot;
	atomic_int caught; // CH_CAUGHT_*
	atomic_int signo;  // the fault's signal
} ch_verdict;

// The shared mapping: the slots, then the verdict.
#define CH_RUNNING_MAP_SIZE \
	(sizeof(ch_running) * CH_RUNNING_SLOTS + sizeof(ch_verdict))

// The slots: NULL when nothing watches (tools); else CH_RUNNING_SLOTS.
extern ch_running *ch_running_slots;
// The verdict, beside the slots; NULL when nothing watches.
extern ch_verdict *ch_running_verdict;
// The slot of the calling thread (set by ch_running_enter), or NULL.
extern _Thread_local ch_running *ch_running_mine;

// ch_running_share points the slots and the verdict into a mapping of
// CH_RUNNING_MAP_SIZE bytes and clears them (the supervisor, before each
// start of the engine).
void ch_running_share(void *map);
// ch_running_enter: the calling thread runs rules in slot i from now on.
// It gets an alternate signal stack, so that a fault from a stack overflow
// inside a rule is still caught. No-op when nothing watches.
void ch_running_enter(int i);
// ch_running_leave: the calling thread runs no more rules (before it ends).
void ch_running_leave(void);
// ch_running_guard installs the fault handlers that write the verdict
// (the engine process, once, before any rule runs).
void ch_running_guard(void);
// ch_running_convict records that slot i is to blame (the watchdog, just
// before it aborts). The first verdict stands.
void ch_running_convict(int i, int caught, int signo);

#endif

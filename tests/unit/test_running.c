// The verdict the engine leaves when it dies (lua/running.c): only a fault
// the kernel raised, or an abort the thread called, while that thread is
// inside a rule call convicts the rule; signals from outside convict
// nobody.
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lua/running.h"

enum { FAULT_IN_RULE, FAULT_OUTSIDE_RULE, ABORT_IN_RULE, KILLED_IN_RULE,
	SEGV_FROM_OUTSIDE_IN_RULE };

static void *map;

static void
setup(void)
{
	map = mmap(NULL, CH_RUNNING_MAP_SIZE, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(map, MAP_FAILED);
	ch_running_share(map);
}

static void
teardown(void)
{
	munmap(map, CH_RUNNING_MAP_SIZE);
}

TestSuite(running, .init = setup, .fini = teardown);

// die runs a child that enters slot 3, maybe opens a rule call, and dies
// the way `how` says; returns the signal it died of.
static int
die(int how)
{
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		ch_running_guard();
		ch_running_enter(3);
		if (how != FAULT_OUTSIDE_RULE) {
			atomic_store(&ch_running_mine->since, 1);
		}
		switch (how) {
		case FAULT_IN_RULE:
		case FAULT_OUTSIDE_RULE: {
			// a page that may not be touched: a real fault, which no
			// sanitizer reports first (a NULL store would be UBSan's)
			volatile int *p = mmap(NULL, 4096, PROT_NONE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			*p              = 1;
			break;
		}
		case ABORT_IN_RULE:
			abort();
		default:
			pause(); // the parent sends the signal
		}
		_exit(0);
	}
	if (how == KILLED_IN_RULE || how == SEGV_FROM_OUTSIDE_IN_RULE) {
		// let the child get into its rule call first
		while (atomic_load(&ch_running_slots[3].since) == 0) {
			usleep(1000);
		}
		kill(pid, how == KILLED_IN_RULE ? SIGKILL : SIGSEGV);
	}
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFSIGNALED(st), "the child should die of a signal");
	return (WTERMSIG(st));
}

Test(running, a_fault_inside_a_rule_call_convicts_its_slot)
{
	cr_assert_eq(die(FAULT_IN_RULE), SIGSEGV);
	cr_assert_eq(atomic_load(&ch_running_verdict->slot), 3);
	cr_assert_eq(atomic_load(&ch_running_verdict->caught), CH_CAUGHT_FAULT);
	cr_assert_eq(atomic_load(&ch_running_verdict->signo), SIGSEGV);
}

Test(running, an_abort_inside_a_rule_call_convicts_its_slot)
{
	cr_assert_eq(die(ABORT_IN_RULE), SIGABRT);
	cr_assert_eq(atomic_load(&ch_running_verdict->slot), 3);
}

Test(running, a_fault_outside_a_rule_call_convicts_nobody)
{
	cr_assert_eq(die(FAULT_OUTSIDE_RULE), SIGSEGV);
	cr_assert_eq(atomic_load(&ch_running_verdict->slot), -1);
}

Test(running, kill_9_during_a_rule_call_convicts_nobody)
{
	cr_assert_eq(die(KILLED_IN_RULE), SIGKILL);
	cr_assert_eq(atomic_load(&ch_running_verdict->slot), -1);
}

Test(running, a_segv_sent_from_outside_convicts_nobody_and_still_kills)
{
	cr_assert_eq(die(SEGV_FROM_OUTSIDE_IN_RULE), SIGSEGV);
	cr_assert_eq(atomic_load(&ch_running_verdict->slot), -1);
}

Test(running, the_first_verdict_stands)
{
	ch_running_convict(5, CH_CAUGHT_WATCHDOG, SIGABRT);
	ch_running_convict(7, CH_CAUGHT_FAULT, SIGSEGV);
	cr_assert_eq(atomic_load(&ch_running_verdict->slot), 5);
	cr_assert_eq(atomic_load(&ch_running_verdict->caught),
	    CH_CAUGHT_WATCHDOG);
}

// choreo — the running slots and the verdict. See running.h.
#include "running.h"

#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

ch_running               *ch_running_slots;
ch_verdict               *ch_running_verdict;
_Thread_local ch_running *ch_running_mine;

#define ALTSTACK_SIZE (64 * 1024)
static _Thread_local void *altstack; // this thread's, mmap'd

void
ch_running_share(void *map)
{
	memset(map, 0, CH_RUNNING_MAP_SIZE);
	ch_running_slots   = map;
	ch_running_verdict = (ch_verdict *) (ch_running_slots + CH_RUNNING_SLOTS);
	atomic_store(&ch_running_verdict->slot, -1);
}

void
ch_running_enter(int i)
{
	if (ch_running_slots == NULL || i < 0 || i >= CH_RUNNING_SLOTS) {
		return;
	}
	ch_running_mine = &ch_running_slots[i];
	if (altstack == NULL) {
		void *p = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		stack_t ss = { .ss_sp = p, .ss_size = ALTSTACK_SIZE };
		if (p != MAP_FAILED && sigaltstack(&ss, NULL) == 0) {
			altstack = p;
		} else if (p != MAP_FAILED) {
			munmap(p, ALTSTACK_SIZE);
		}
	}
}

void
ch_running_leave(void)
{
	ch_running_mine = NULL;
	if (altstack != NULL) {
		stack_t ss = { .ss_flags = SS_DISABLE };
		sigaltstack(&ss, NULL);
		munmap(altstack, ALTSTACK_SIZE);
		altstack = NULL;
	}
}

void
ch_running_convict(int i, int caught, int signo)
{
	if (ch_running_verdict == NULL) {
		return;
	}
	int none = -1;
	if (atomic_compare_exchange_strong(&ch_running_verdict->slot, &none,
	        i)) {
		atomic_store(&ch_running_verdict->caught, caught);
		atomic_store(&ch_running_verdict->signo, signo);
	}
}

// on_fault runs on the thread that took the signal, on its alternate
// stack. It convicts that thread's rule only when the kernel raised the
// fault (si_code > 0) or the thread aborted itself (tgkill from our own
// pid) while a rule call is open; a signal another process sent (kill,
// si_code <= 0) is no evidence. SA_RESETHAND has restored the default
// action, so raising the signal again ends the process by it, as it would
// have without the handler — whoever sent it.
static void
on_fault(int sig, siginfo_t *si, void *uc)
{
	(void) uc;
	ch_running *r    = ch_running_mine;
	bool        self = si->si_code > 0 ||
	    (si->si_code == SI_TKILL && si->si_pid == getpid());
	if (self && r != NULL && atomic_load(&r->since) != 0) {
		ch_running_convict((int) (r - ch_running_slots), CH_CAUGHT_FAULT,
		    sig);
	}
	raise(sig);
}

void
ch_running_guard(void)
{
	if (ch_running_slots == NULL) {
		return;
	}
	static const int sigs[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT };
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_fault;
	sa.sa_flags     = SA_SIGINFO | SA_RESETHAND | SA_ONSTACK | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	for (size_t k = 0; k < sizeof(sigs) / sizeof(sigs[0]); k++) {
		sigaction(sigs[k], &sa, NULL);
	}
}

// The shared control block of the fault shim. See faults.h.
#include "faults.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

faults_ctl *
faults_map(const char *path, bool create)
{
	int fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
	if (fd < 0) {
		return (NULL);
	}
	if (create && ftruncate(fd, sizeof(faults_ctl)) != 0) {
		close(fd);
		return (NULL);
	}
	void *p = mmap(NULL, sizeof(faults_ctl), PROT_READ | PROT_WRITE,
	    MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		return (NULL);
	}
	faults_ctl *c = p;
	if (create) {
		c->magic = FAULTS_MAGIC;
	} else if (c->magic != FAULTS_MAGIC) {
		munmap(p, sizeof(faults_ctl));
		return (NULL);
	}
	return (c);
}

void
faults_unmap(faults_ctl *c)
{
	if (c != NULL) {
		munmap(c, sizeof(faults_ctl));
	}
}

void
faults_arm(faults_ctl *c, uint64_t n, bool persistent, int err,
    int how)
{
	uint64_t at = atomic_load(&c->ops) + n;
	atomic_store(&c->fail_from, 0); // never half-armed while we write
	atomic_store(&c->err, err);
	atomic_store(&c->how, how);
	atomic_store(&c->fail_to, persistent ? UINT64_MAX : at);
	atomic_store(&c->fail_from, at);
}

void
faults_clear(faults_ctl *c)
{
	atomic_store(&c->fail_from, 0);
	atomic_store(&c->fail_to, 0);
}

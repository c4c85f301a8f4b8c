// choreo — a small synchronous nng REQ client for the command-line tools.
#ifndef CORE_CLIENT_H
#define CORE_CLIENT_H

#include <stddef.h>

typedef struct ch_client ch_client;

// ch_client_open dials url (an unreachable daemon fails here at once) with
// timeout_ms for every send and receive. Returns 0 or an nng error.
int ch_client_open(ch_client **c, const char *url, int timeout_ms);
// ch_client_call sends req and waits for the reply (*reply: free() it).
int  ch_client_call(ch_client *c, const void *req, size_t len, void **reply,
     size_t *rlen);
void ch_client_close(ch_client *c);
const char *ch_client_strerror(int err);

#endif

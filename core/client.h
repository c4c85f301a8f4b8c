// choreo — a small synchronous nng REQ client for the command-line tools.
#ifndef CORE_CLIENT_H
#define CORE_CLIENT_H

#include <stddef.h>

#include "tls.h"

typedef struct ch_client ch_client;

// ch_client_open dials url (an unreachable daemon fails here at once) with
// timeout_ms for every send and receive. A tls+tcp:// or wss:// URL needs
// tls->ca, which the daemon's certificate must chain to for the URL's host
// name; tls->cert and tls->key are presented when the daemon asks for a
// client certificate. Returns 0, or an nng error with why filled (a
// sentence for the user).
int ch_client_open(ch_client **c, const char *url, int timeout_ms,
    const ch_tls_files *tls, char *why, size_t whylen);
// ch_client_call sends req and waits for the reply (*reply: free() it).
int  ch_client_call(ch_client *c, const void *req, size_t len, void **reply,
     size_t *rlen);
void ch_client_close(ch_client *c);
const char *ch_client_strerror(int err);

#endif

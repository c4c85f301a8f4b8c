// choreo — the REQ client. See client.h.
#include "client.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <stdlib.h>
#include <string.h>

struct ch_client {
	nng_socket sock;
};

int
ch_client_open(ch_client **out, const char *url, int timeout_ms)
{
	ch_client *c = calloc(1, sizeof(*c));
	int        rv;
	if (c == NULL) {
		return (NNG_ENOMEM);
	}
	if ((rv = nng_req0_open(&c->sock)) != 0) {
		free(c);
		return (rv);
	}
	nng_socket_set_ms(c->sock, NNG_OPT_SENDTIMEO, timeout_ms);
	nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, timeout_ms);
	// never resend: the CLI reports a timeout instead of repeating
	nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	if ((rv = nng_dial(c->sock, url, NULL, 0)) != 0) {
		nng_close(c->sock);
		free(c);
		return (rv);
	}
	*out = c;
	return (0);
}

int
ch_client_call(ch_client *c, const void *req, size_t len, void **reply,
    size_t *rlen)
{
	int   rv;
	char *buf;
	if ((rv = nng_send(c->sock, (void *) req, len, 0)) != 0) {
		return (rv);
	}
	if ((rv = nng_recv(c->sock, &buf, rlen, NNG_FLAG_ALLOC)) != 0) {
		return (rv);
	}
	*reply = malloc(*rlen > 0 ? *rlen : 1);
	if (*reply == NULL) {
		nng_free(buf, *rlen);
		return (NNG_ENOMEM);
	}
	memcpy(*reply, buf, *rlen);
	nng_free(buf, *rlen);
	return (0);
}

void
ch_client_close(ch_client *c)
{
	if (c != NULL) {
		nng_close(c->sock);
		free(c);
	}
}

const char *
ch_client_strerror(int err)
{
	return (nng_strerror(err));
}

// choreo — the REQ client. See client.h.
#include "client.h"

#include <arpa/inet.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

struct ch_client {
	nng_socket sock;
};

// dial_error explains why a dial failed; for TLS, the likely causes.
static void
dial_error(int rv, bool secure, const char *url, const nng_url *u,
    const ch_tls_files *tls, char *why, size_t whylen)
{
	int n = snprintf(why, whylen, "cannot reach %s: ", url);
	if (n < 0 || (size_t) n >= whylen) {
		return;
	}
	why += n;
	whylen -= (size_t) n;
	static const char by_name[] = "; certificates are verified by DNS "
	                              "name: dial the name in the daemon's "
	                              "certificate, not an address";
	unsigned char     addr[16];
	bool              ip = inet_pton(AF_INET, u->u_hostname, addr) == 1 ||
	    inet_pton(AF_INET6, u->u_hostname, addr) == 1;
	// mbed TLS fails both ends' refusals alike: nng says ECRYPTO
	if (secure && (rv == NNG_ECRYPTO || rv == NNG_EPEERAUTH) &&
	    tls->cert == NULL) {
		snprintf(why, whylen,
		    "the daemon's certificate does not verify against the CA "
		    "in %s for the name '%s' (another CA, another name, or out "
		    "of date), or the other end does not speak TLS%s",
		    tls->ca, u->u_hostname, ip ? by_name : "");
	} else if (secure && (rv == NNG_ECRYPTO || rv == NNG_EPEERAUTH)) {
		snprintf(why, whylen,
		    "the TLS handshake failed: the daemon's certificate does "
		    "not verify against the CA in %s for the name '%s', or "
		    "the daemon refused the certificate in %s (not from its "
		    "CA, revoked, or out of date), or the other end does not "
		    "speak TLS%s",
		    tls->ca, u->u_hostname, tls->cert, ip ? by_name : "");
	} else if (secure && (rv == NNG_ECONNSHUT || rv == NNG_ECLOSED ||
	                         rv == NNG_ECONNRESET)) {
		snprintf(why, whylen,
		    "the daemon closed the connection during the TLS "
		    "handshake: it wants a client certificate signed by its "
		    "CA%s (or it does not speak TLS on this port)",
		    tls->cert != NULL ? ", and did not accept this one"
		                      : " (--tls-cert and --tls-key)");
	} else {
		snprintf(why, whylen, "%s", nng_strerror(rv));
	}
}

int
ch_client_open(ch_client **out, const char *url, int timeout_ms,
    const ch_tls_files *tls, char *why, size_t whylen)
{
	static const ch_tls_files none = { NULL, NULL, NULL };
	nng_url        *u   = NULL;
	nng_tls_config *cfg = NULL;
	ch_client      *c;
	nng_dialer      d;
	int             rv;
	bool            secure = ch_tls_url(url);
	if (tls == NULL) {
		tls = &none;
	}
	if (!secure && (tls->ca != NULL || tls->cert != NULL ||
	                   tls->key != NULL)) {
		snprintf(why, whylen, "--tls-ca, --tls-cert and --tls-key are "
		                      "for tls+tcp:// and wss:// URLs");
		return (NNG_EINVAL);
	}
	if (secure && tls->ca == NULL) {
		snprintf(why, whylen, "a TLS URL needs --tls-ca FILE, the CA "
		                      "certificate that signed the daemon's "
		                      "(the daemon is always verified)");
		return (NNG_EINVAL);
	}
	if ((tls->cert == NULL) != (tls->key == NULL)) {
		snprintf(why, whylen, "--tls-cert and --tls-key go together");
		return (NNG_EINVAL);
	}
	if (secure && ch_tls_check(tls, why, whylen) != CH_OK) {
		return (NNG_EINVAL);
	}
	if ((rv = nng_url_parse(&u, url)) != 0) {
		snprintf(why, whylen, "%s: not a URL: %s", url, nng_strerror(rv));
		return (rv);
	}
	if (secure && ch_tls_config(&cfg, tls, false, u->u_hostname, why,
	                  whylen) != CH_OK) {
		nng_url_free(u);
		return (NNG_EINVAL);
	}
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		rv = NNG_ENOMEM;
		snprintf(why, whylen, "out of memory");
		goto out;
	}
	if ((rv = nng_req0_open(&c->sock)) != 0) {
		snprintf(why, whylen, "cannot open a socket: %s", nng_strerror(rv));
		free(c);
		goto out;
	}
	nng_socket_set_ms(c->sock, NNG_OPT_SENDTIMEO, timeout_ms);
	nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, timeout_ms);
	// never resend: the CLI reports a timeout instead of repeating
	nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	if ((rv = nng_dialer_create(&d, c->sock, url)) != 0 ||
	    (cfg != NULL &&
	        (rv = nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, cfg)) != 0) ||
	    (rv = nng_dialer_start(d, 0)) != 0) {
		dial_error(rv, secure, url, u, tls, why, whylen);
		nng_close(c->sock);
		free(c);
		goto out;
	}
	*out = c;
out:
	if (cfg != NULL) {
		nng_tls_config_free(cfg); // the dialer holds its own reference
	}
	nng_url_free(u);
	return (rv);
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

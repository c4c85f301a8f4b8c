// choreo — TLS for the endpoints and the command-line client.
//
// nng 1.5.2 does TLS with mbed TLS 2.28. The files are checked here with
// mbed TLS itself, without starting nng (the supervisor checks them before
// it forks), so that a wrong file is an error naming that file rather than
// a "Cryptographic error" at the first handshake.
#ifndef CORE_TLS_H
#define CORE_TLS_H

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct {
	const char *cert; // PEM certificate (chain) presented to the peer
	const char *key;  // PEM private key of cert, unencrypted
	const char *ca;   // PEM CA certificates the peer's certificate must
	                  // chain to (a server: clients must present one)
} ch_tls_files;

// ch_tls_url: the URL's transport is TLS (tls+tcp, wss, https and their
// 4/6 variants).
bool ch_tls_url(const char *url);

// ch_tls_check reads and parses the files that are set: the certificate
// (in force today), its key (unencrypted, and the certificate's own), the
// CA certificates. CH_OK, or CH_EBADREQ with why naming the file and
// what is wrong with it. Starts no nng thread.
int ch_tls_check(const ch_tls_files *f, char *why, size_t whylen);

// ch_tls_describe writes one line about cert for the log: its subject,
// its DNS names, when it expires.
void ch_tls_describe(const char *cert, char *out, size_t outlen);

// ch_tls_config makes an nng TLS configuration from checked files.
// A server presents cert and key, and with ca requires every client to
// present a certificate signed by it. A client verifies the server's
// certificate against ca for server_name, and presents cert and key when
// set. CH_OK, or CH_EINTERNAL with why filled; free with
// nng_tls_config_free.
int ch_tls_config(nng_tls_config **cfg, const ch_tls_files *f, bool server,
    const char *server_name, char *why, size_t whylen);

#endif

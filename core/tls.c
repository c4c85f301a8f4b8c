// choreo — TLS for the endpoints and the command-line client. See tls.h.
#include "tls.h"

#include <errno.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crl.h>
#include <mbedtls/x509_crt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

#define PEM_MAX (4u << 20) // a system's whole CA bundle is ~200 KiB

bool
ch_tls_url(const char *url)
{
	static const char *schemes[] = { "tls+tcp://", "tls+tcp4://",
		"tls+tcp6://", "wss://", "wss4://", "wss6://", "https://" };
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		if (strncmp(url, schemes[i], strlen(schemes[i])) == 0) {
			return (true);
		}
	}
	return (false);
}

// read_pem reads a whole PEM file, NUL-terminated (mbed TLS wants the NUL
// counted in the length). NULL with why filled.
static char *
read_pem(const char *path, size_t *len, char *why, size_t whylen)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		snprintf(why, whylen, "%s: %s", path, strerror(errno));
		return (NULL);
	}
	char  *buf = malloc(PEM_MAX + 1);
	size_t n   = buf != NULL ? fread(buf, 1, PEM_MAX + 1, f) : 0;
	int    err = ferror(f) ? errno : 0;
	fclose(f);
	if (buf == NULL) {
		snprintf(why, whylen, "%s: out of memory", path);
		return (NULL);
	}
	if (err != 0) {
		snprintf(why, whylen, "%s: %s", path, strerror(err));
	} else if (n > PEM_MAX) {
		snprintf(why, whylen, "%s: larger than %u MiB; not a PEM file",
		    path, PEM_MAX >> 20);
	} else if (memchr(buf, '\0', n) != NULL ||
	    memmem(buf, n, "-----BEGIN ", 11) == NULL) {
		snprintf(why, whylen, "%s: not a PEM file (no '-----BEGIN' "
		                      "line; DER must be converted, e.g. openssl "
		                      "x509 -inform der)",
		    path);
	} else {
		buf[n] = '\0';
		*len   = n;
		return (buf);
	}
	free(buf);
	return (NULL);
}

static void
date_of(const mbedtls_x509_time *t, char *out, size_t len)
{
	snprintf(out, len, "%04d-%02d-%02d %02d:%02d:%02d UTC", t->year,
	    t->mon, t->day, t->hour, t->min, t->sec);
}

// parse_certs parses every certificate of a PEM file into crt.
static int
parse_certs(mbedtls_x509_crt *crt, const char *path, const char *what,
    char *why, size_t whylen)
{
	size_t len;
	char  *pem = read_pem(path, &len, why, whylen);
	if (pem == NULL) {
		return (CH_EBADREQ);
	}
	int rv = mbedtls_x509_crt_parse(crt, (const unsigned char *) pem,
	    len + 1);
	if (rv == 0 && strstr(pem, "-----BEGIN X509 CRL-----") != NULL) {
		// a CA file may carry the CRL of the CA (nng loads it too)
		mbedtls_x509_crl crl;
		mbedtls_x509_crl_init(&crl);
		int crv = mbedtls_x509_crl_parse(&crl,
		    (const unsigned char *) pem, len + 1);
		mbedtls_x509_crl_free(&crl);
		if (crv != 0) {
			char m[200];
			mbedtls_strerror(crv, m, sizeof(m));
			snprintf(why, whylen, "%s: its CRL cannot be read: %s",
			    path, m);
			free(pem);
			return (CH_EBADREQ);
		}
	}
	free(pem);
	if (rv < 0) {
		char m[200];
		mbedtls_strerror(rv, m, sizeof(m));
		snprintf(why, whylen, "%s: no %s can be read from it: %s", path,
		    what, m);
		return (CH_EBADREQ);
	}
	if (rv > 0) {
		snprintf(why, whylen, "%s: %d of its certificates cannot be "
		                      "read",
		    path, rv);
		return (CH_EBADREQ);
	}
	return (CH_OK);
}

int
ch_tls_check(const ch_tls_files *f, char *why, size_t whylen)
{
	int rv = CH_OK;
	if (f->cert != NULL) {
		mbedtls_x509_crt crt;
		mbedtls_x509_crt_init(&crt);
		rv = parse_certs(&crt, f->cert, "certificate", why, whylen);
		char when[40];
		if (rv == CH_OK && mbedtls_x509_time_is_past(&crt.valid_to)) {
			date_of(&crt.valid_to, when, sizeof(when));
			snprintf(why, whylen, "%s: the certificate expired on %s",
			    f->cert, when);
			rv = CH_EBADREQ;
		} else if (rv == CH_OK &&
		    mbedtls_x509_time_is_future(&crt.valid_from)) {
			date_of(&crt.valid_from, when, sizeof(when));
			snprintf(why, whylen, "%s: the certificate is not valid "
			                      "before %s",
			    f->cert, when);
			rv = CH_EBADREQ;
		}
		if (rv == CH_OK && f->key != NULL) {
			size_t len;
			char  *pem = read_pem(f->key, &len, why, whylen);
			if (pem == NULL) {
				rv = CH_EBADREQ;
			} else {
				mbedtls_pk_context pk;
				mbedtls_pk_init(&pk);
				int prv = mbedtls_pk_parse_key(&pk,
				    (const unsigned char *) pem, len + 1, NULL, 0);
				char m[200];
				if (prv == MBEDTLS_ERR_PK_PASSWORD_REQUIRED) {
					snprintf(why, whylen,
					    "%s: the key is encrypted; choreo needs "
					    "it unencrypted (openssl pkey -in FILE "
					    "-out NEWFILE), readable only by the "
					    "daemon's user",
					    f->key);
					rv = CH_EBADREQ;
				} else if (prv != 0) {
					mbedtls_strerror(prv, m, sizeof(m));
					snprintf(why, whylen, "%s: no private key can "
					                      "be read from it: %s",
					    f->key, m);
					rv = CH_EBADREQ;
				} else if (mbedtls_pk_check_pair(&crt.pk, &pk) !=
				    0) {
					snprintf(why, whylen, "%s: this key does not "
					                      "belong to the "
					                      "certificate in %s",
					    f->key, f->cert);
					rv = CH_EBADREQ;
				}
				mbedtls_pk_free(&pk);
				free(pem);
			}
		}
		mbedtls_x509_crt_free(&crt);
	}
	if (rv == CH_OK && f->ca != NULL) {
		mbedtls_x509_crt ca;
		mbedtls_x509_crt_init(&ca);
		rv = parse_certs(&ca, f->ca, "CA certificate", why, whylen);
		mbedtls_x509_crt_free(&ca);
	}
	return (rv);
}

void
ch_tls_describe(const char *cert, char *out, size_t outlen)
{
	mbedtls_x509_crt crt;
	char             why[256];
	mbedtls_x509_crt_init(&crt);
	snprintf(out, outlen, "%s", cert);
	if (parse_certs(&crt, cert, "certificate", why, sizeof(why)) != CH_OK) {
		mbedtls_x509_crt_free(&crt);
		return;
	}
	char   subject[256], when[40];
	size_t n = 0;
	if (mbedtls_x509_dn_gets(subject, sizeof(subject), &crt.subject) < 0) {
		snprintf(subject, sizeof(subject), "?");
	}
	n += (size_t) snprintf(out + n, outlen - n, "%s (%s", cert, subject);
	for (const mbedtls_x509_sequence *s = &crt.subject_alt_names;
	     s != NULL && n < outlen; s = s->next) {
		if (s->buf.p != NULL &&
		    s->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC |
		                      MBEDTLS_X509_SAN_DNS_NAME)) {
			n += (size_t) snprintf(out + n, outlen - n, ", DNS:%.*s",
			    (int) s->buf.len, (const char *) s->buf.p);
		}
	}
	date_of(&crt.valid_to, when, sizeof(when));
	if (n < outlen) {
		snprintf(out + n, outlen - n, "; valid until %s)", when);
	}
	mbedtls_x509_crt_free(&crt);
}

int
ch_tls_config(nng_tls_config **out, const ch_tls_files *f, bool server,
    const char *server_name, char *why, size_t whylen)
{
	nng_tls_config *cfg;
	int             rv;
	if ((rv = nng_tls_config_alloc(&cfg, server ? NNG_TLS_MODE_SERVER
	                                           : NNG_TLS_MODE_CLIENT)) != 0) {
		snprintf(why, whylen, "TLS: %s", nng_strerror(rv));
		return (CH_EINTERNAL);
	}
	if (f->cert != NULL && f->key != NULL) {
		size_t clen, klen;
		char  *cert = read_pem(f->cert, &clen, why, whylen);
		char  *key  = cert != NULL ? read_pem(f->key, &klen, why, whylen)
		                           : NULL;
		if (cert == NULL || key == NULL) {
			free(cert);
			nng_tls_config_free(cfg);
			return (CH_EINTERNAL);
		}
		rv = nng_tls_config_own_cert(cfg, cert, key, NULL);
		// our copy of the key goes (mbed TLS keeps its parsed one)
		memset(key, 0, klen);
		free(key);
		free(cert);
		if (rv != 0) {
			snprintf(why, whylen, "%s, %s: %s", f->cert, f->key,
			    nng_strerror(rv));
			nng_tls_config_free(cfg);
			return (CH_EINTERNAL);
		}
	}
	if (f->ca != NULL) {
		if ((rv = nng_tls_config_ca_file(cfg, f->ca)) != 0) {
			snprintf(why, whylen, "%s: %s", f->ca, nng_strerror(rv));
			nng_tls_config_free(cfg);
			return (CH_EINTERNAL);
		}
	}
	if (server) {
		rv = nng_tls_config_auth_mode(cfg, f->ca != NULL
		        ? NNG_TLS_AUTH_MODE_REQUIRED
		        : NNG_TLS_AUTH_MODE_NONE);
	} else {
		rv = nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_REQUIRED);
		if (rv == 0 && server_name != NULL) {
			rv = nng_tls_config_server_name(cfg, server_name);
		}
	}
	if (rv != 0) {
		snprintf(why, whylen, "TLS: %s", nng_strerror(rv));
		nng_tls_config_free(cfg);
		return (CH_EINTERNAL);
	}
	*out = cfg;
	return (CH_OK);
}

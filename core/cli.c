// choreo — the client commands. See cli.h.
//
// Each builds a request as JSON (from its argument, standard input, or its
// flags), sends it as msgpack over nng REQ, and prints the reply as JSON.
#include "cli.h"

#include <getopt.h>
#include <jansson.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "codec.h"
#include "err.h"
#include "json.h"

typedef struct {
	const char *name;
	const char *op;      // the request's op
	const char *summary;
	unsigned    flags;   // which flags the command takes
} command;

enum {
	F_BUSINESS = 1 << 0, // --business (required)
	F_CUSTOMER = 1 << 1, // --customer (required)
	F_CIRCUM   = 1 << 2, // --channel --region --product
	F_DECIDE   = 1 << 3, // --limit --explain --no-record
	F_TOKEN    = 1 << 4,
	F_OPTBIZ   = 1 << 5, // --business (optional)
	F_JOURNEY  = 1 << 6,
	F_HISTORY  = 1 << 7,
	F_VERSION  = 1 << 8, // --version (required)
};

static const command commands[] = {
	{ "send", NULL, "send one request (JSON), or JSON lines from stdin "
	                "with '-'", 0 },
	{ "decide", "decide", "the next best actions for a customer",
	    F_BUSINESS | F_CUSTOMER | F_CIRCUM | F_DECIDE | F_TOKEN },
	{ "get", "get", "a customer's whole journey state",
	    F_BUSINESS | F_CUSTOMER | F_TOKEN },
	{ "forget", "forget", "erase a customer",
	    F_BUSINESS | F_CUSTOMER | F_TOKEN },
	{ "rules", "rules", "the loaded rule versions and load errors",
	    F_OPTBIZ | F_HISTORY },
	{ "reload", "reload", "reload the rules now", F_OPTBIZ | F_TOKEN },
	{ "rollback", "rollback", "make an earlier rule version live again",
	    F_BUSINESS | F_VERSION | F_TOKEN },
	{ "stats", "stats", "journey and action analytics",
	    F_BUSINESS | F_JOURNEY | F_TOKEN },
	{ "ping", "ping", "is the daemon there?", 0 },
	{ NULL, NULL, NULL, 0 },
};

static void
usage(FILE *f, const command *c)
{
	if (strcmp(c->name, "send") == 0) {
		fprintf(f, "usage: choreo send [--url URL] [--timeout MS] "
		           "[--pretty] JSON|-\n");
	} else if (strcmp(c->name, "rollback") == 0) {
		fprintf(f, "usage: choreo rollback [--url URL] [--token T] "
		           "BUSINESS VERSION\n");
	} else {
		fprintf(f, "usage: choreo %s [--url URL] [--timeout MS] "
		           "[--pretty]%s%s%s%s%s%s%s%s\n",
		    c->name,
		    (c->flags & F_BUSINESS) ? " --business B" : "",
		    (c->flags & F_OPTBIZ) ? " [--business B]" : "",
		    (c->flags & F_CUSTOMER) ? " --customer C" : "",
		    (c->flags & F_CIRCUM) ? " [--channel X] [--region X] "
		                            "[--product X]"
		                          : "",
		    (c->flags & F_DECIDE) ? " [--limit N] [--explain] "
		                            "[--no-record]"
		                          : "",
		    (c->flags & F_JOURNEY) ? " [--journey J]" : "",
		    (c->flags & F_HISTORY) ? " [--history]" : "",
		    (c->flags & F_TOKEN) ? " [--token T]" : "");
	}
	fprintf(f,
	    "\n%s.\n\n"
	    "Talks to a running daemon over nng REQ (default URL\n"
	    "tcp://127.0.0.1:7450) and prints the reply as JSON. Exit status:\n"
	    "0 when the reply says ok, 1 on an error reply, 2 when the daemon\n"
	    "cannot be reached or the command line is wrong.\n",
	    c->summary);
	fprintf(f,
	    "\nOver TLS (--url tls+tcp://HOST:PORT, or wss://): --tls-ca FILE\n"
	    "is the CA that signed the daemon's certificate, which must name\n"
	    "HOST; --tls-cert FILE and --tls-key FILE are this client's, for a\n"
	    "daemon that asks for client certificates. A daemon that does not\n"
	    "verify is not talked to (exit status 2).\n");
	if (strcmp(c->name, "send") == 0) {
		fprintf(f,
		    "\nJSON is one request, e.g.\n"
		    "  choreo send '{\"business\":\"demo\",\"customer\":\"c1\","
		    "\"type\":\"page_view\"}'\n"
		    "(op defaults to event). With '-', each line of standard "
		    "input is\nsent in turn and each reply printed on its own "
		    "line.\n");
	}
}

// one sends a JSON request and prints the reply. Returns 0, 1 (an error
// reply) or 2 (no reply).
static int
one(ch_client *cl, json_t *req, bool pretty)
{
	msgpack_sbuffer buf;
	msgpack_packer  pk;
	msgpack_sbuffer_init(&buf);
	msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
	if (ch_json_to_msgpack(req, &pk) != 0) {
		fprintf(stderr, "choreo: the request nests too deeply\n");
		msgpack_sbuffer_destroy(&buf);
		return (2);
	}
	void  *reply;
	size_t rlen;
	int    rv = ch_client_call(cl, buf.data, buf.size, &reply, &rlen);
	msgpack_sbuffer_destroy(&buf);
	if (rv != 0) {
		fprintf(stderr, "choreo: no reply: %s\n", ch_client_strerror(rv));
		return (2);
	}
	msgpack_unpacked up;
	size_t           off = 0;
	const char      *why;
	msgpack_unpacked_init(&up);
	int status = 2;
	// the pre-scan first: msgpack-c allocates what a reply's header
	// claims, and the reply comes from whatever --url names
	if (ch_mp_prescan(reply, rlen, CH_MP_MAX_DEPTH, &why, NULL) == CH_OK &&
	    msgpack_unpack_next(&up, reply, rlen, &off) ==
	        MSGPACK_UNPACK_SUCCESS) {
		// a reply that cannot be printed is an error, never "null"
		json_t *j = ch_msgpack_to_json(&up.data);
		char   *s = j == NULL ? NULL
		                      : json_dumps(j, JSON_REAL_PRECISION(15) |
		                            (pretty ? JSON_INDENT(2)
		                                    : JSON_COMPACT));
		if (s != NULL) {
			printf("%s\n", s);
			fflush(stdout);
			status = json_is_true(json_object_get(j, "ok")) ? 0 : 1;
		} else {
			fprintf(stderr, "choreo: the reply (%zu bytes of "
			                "msgpack) cannot be written as JSON%s\n",
			    rlen,
			    j == NULL ? ": it nests too deeply" : "");
		}
		free(s);
		json_decref(j);
	} else {
		fprintf(stderr, "choreo: the reply is not msgpack\n");
	}
	msgpack_unpacked_destroy(&up);
	free(reply);
	return (status);
}


// json_reason: jansson's parse error, in the user's words where its own
// name for the rule would mean nothing to them.
static const char *
json_reason(const json_error_t *e)
{
	if (strstr(e->text, "JSON_ALLOW_NUL") != NULL) {
		return ("a \\u0000 (a NUL byte) inside a string is not allowed");
	}
	return (e->text);
}

static int
send_lines(ch_client *cl, bool pretty)
{
	char  *line = NULL;
	size_t cap  = 0;
	long   no   = 0;
	int    status = 0;
	while (getline(&line, &cap, stdin) != -1) {
		no++;
		char *p = line;
		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
			p++;
		}
		if (*p == '\0') {
			continue;
		}
		json_error_t err;
		json_t      *req = json_loads(p, 0, &err);
		if (req == NULL || !json_is_object(req)) {
			fprintf(stderr, "choreo: line %ld, column %d: %s\n", no,
			    req == NULL ? err.column : 1,
			    req == NULL ? json_reason(&err) : "expected a JSON object");
			json_decref(req);
			free(line);
			return (2);
		}
		int rv = one(cl, req, pretty);
		json_decref(req);
		if (rv == 2) {
			free(line);
			return (2);
		}
		if (rv == 1) {
			status = 1;
		}
	}
	free(line);
	return (status);
}

int
ch_cli_main(const char *cmd, int argc, char **argv)
{
	const command *c = NULL;
	for (int i = 0; commands[i].name != NULL; i++) {
		if (strcmp(commands[i].name, cmd) == 0) {
			c = &commands[i];
		}
	}
	if (c == NULL) {
		return (CH_CLI_UNKNOWN);
	}
	static const struct option longs[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "timeout", required_argument, NULL, 't' },
		{ "pretty", no_argument, NULL, 'P' },
		{ "business", required_argument, NULL, 'b' },
		{ "customer", required_argument, NULL, 'c' },
		{ "channel", required_argument, NULL, 'C' },
		{ "region", required_argument, NULL, 'R' },
		{ "product", required_argument, NULL, 'D' },
		{ "limit", required_argument, NULL, 'l' },
		{ "explain", no_argument, NULL, 'x' },
		{ "no-record", no_argument, NULL, 'n' },
		{ "token", required_argument, NULL, 'k' },
		{ "journey", required_argument, NULL, 'j' },
		{ "history", no_argument, NULL, 'H' },
		{ "tls-ca", required_argument, NULL, 'A' },
		{ "tls-cert", required_argument, NULL, 'E' },
		{ "tls-key", required_argument, NULL, 'K' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *url = "tcp://127.0.0.1:7450";
	ch_tls_files tls = { NULL, NULL, NULL };
	int         timeout = 10000;
	bool        pretty  = false;
	json_t     *req     = json_object();
	if (c->op != NULL) {
		json_object_set_new(req, "op", json_string(c->op));
	}
	int opt;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
		const char *field = NULL;
		unsigned    need  = 0;
		switch (opt) {
		case 'u': url = optarg; continue;
		case 'A': tls.ca = optarg; continue;
		case 'E': tls.cert = optarg; continue;
		case 'K': tls.key = optarg; continue;
		case 't': timeout = atoi(optarg); continue;
		case 'P': pretty = true; continue;
		case 'h': usage(stdout, c); json_decref(req); return (0);
		case 'b': field = "business"; need = F_BUSINESS | F_OPTBIZ; break;
		case 'c': field = "customer"; need = F_CUSTOMER; break;
		case 'C': field = "channel"; need = F_CIRCUM; break;
		case 'R': field = "region"; need = F_CIRCUM; break;
		case 'D': field = "product"; need = F_CIRCUM; break;
		case 'k': field = "token"; need = F_TOKEN; break;
		case 'j': field = "journey"; need = F_JOURNEY; break;
		case 'l':
			if (!(c->flags & F_DECIDE)) {
				goto bad;
			}
			json_object_set_new(req, "limit",
			    json_integer(strtoll(optarg, NULL, 10)));
			continue;
		case 'x':
			if (!(c->flags & F_DECIDE)) {
				goto bad;
			}
			json_object_set_new(req, "explain", json_true());
			continue;
		case 'n':
			if (!(c->flags & F_DECIDE)) {
				goto bad;
			}
			json_object_set_new(req, "record", json_false());
			continue;
		case 'H':
			if (!(c->flags & F_HISTORY)) {
				goto bad;
			}
			json_object_set_new(req, "history", json_true());
			continue;
		default:
			goto bad;
		}
		if (!(c->flags & need)) {
			goto bad;
		}
		json_object_set_new(req, field, json_string(optarg));
	}
	if (strcmp(c->name, "send") == 0) {
		if (optind != argc - 1) {
			goto bad;
		}
		json_decref(req);
		req = NULL;
		if (strcmp(argv[optind], "-") != 0) {
			json_error_t err;
			req = json_loads(argv[optind], 0, &err);
			if (req == NULL || !json_is_object(req)) {
				fprintf(stderr, "choreo send: column %d: %s\n",
				    req == NULL ? err.column : 1,
				    req == NULL ? json_reason(&err)
				                : "expected a JSON object");
				json_decref(req);
				return (2);
			}
		}
	} else if (strcmp(c->name, "rollback") == 0) {
		if (optind != argc - 2) {
			goto bad;
		}
		json_object_set_new(req, "business", json_string(argv[optind]));
		json_object_set_new(req, "version",
		    json_string(argv[optind + 1]));
	} else if (optind != argc) {
		goto bad;
	}
	if (((c->flags & F_BUSINESS) && !json_object_get(req, "business")) ||
	    ((c->flags & F_CUSTOMER) && !json_object_get(req, "customer"))) {
		fprintf(stderr, "choreo %s: --business and --customer are "
		                "required\n",
		    c->name);
		json_decref(req);
		return (2);
	}
	ch_client *cl;
	char       why[512];
	int        rv = ch_client_open(&cl, url, timeout, &tls, why, sizeof(why));
	if (rv != 0) {
		fprintf(stderr, "choreo: %s\n", why);
		json_decref(req);
		return (2);
	}
	int status = req != NULL ? one(cl, req, pretty) : send_lines(cl, pretty);
	json_decref(req);
	ch_client_close(cl);
	return (status);
bad:
	usage(stderr, c);
	json_decref(req);
	return (2);
}

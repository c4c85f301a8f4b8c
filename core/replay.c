// choreo — `choreo replay --rules DIR FILE`: feed JSON lines of requests
// through a rule set with a virtual clock taken from their ts, and print one
// JSON reply per line. Deterministic, so two rule versions can be diffed.
//
// It runs the real engine path (codec, store, rules, group commit) in this
// process, on a temporary store that is removed afterwards.
#include "replay.h"

#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../lua/rules.h"
#include "codec.h"
#include "engine.h"
#include "err.h"
#include "json.h"
#include "log.h"
#include "store.h"

// The virtual clock: the ts of the request being run. Requests without a
// ts run at the time of the previous one (the first at 2026-01-01).
static int64_t virtual_now = 1767225600000;

static int64_t
replay_clock(void)
{
	return (virtual_now);
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void) st;
	(void) flag;
	(void) ftw;
	return (remove(path));
}

typedef struct {
	FILE *out;
	int   failed;
	bool  pretty;
} replay_ctx;

static replay_ctx *the_ctx;

static void
print_reply(const void *data, size_t len)
{
	msgpack_unpacked up;
	size_t           off = 0;
	msgpack_unpacked_init(&up);
	if (msgpack_unpack_next(&up, data, len, &off) ==
	    MSGPACK_UNPACK_SUCCESS) {
		json_t *j = ch_msgpack_to_json(&up.data);
		size_t  flags = JSON_SORT_KEYS | JSON_REAL_PRECISION(15) |
		    (the_ctx->pretty ? JSON_INDENT(2) : JSON_COMPACT);
		char *s       = j != NULL ? json_dumps(j, flags) : NULL;
		bool  printed = s != NULL;
		if (printed) {
			fprintf(the_ctx->out, "%s\n", s);
		} else {
			fprintf(stderr, "choreo replay: a reply cannot be "
			                "written as JSON: it nests too deeply\n");
		}
		free(s);
		json_t *ok = json_is_object(j) ? json_object_get(j, "ok") : NULL;
		if (!printed || !json_is_true(ok)) {
			the_ctx->failed++;
		}
		json_decref(j);
	}
	msgpack_unpacked_destroy(&up);
}

static void
job_done(ch_job *j)
{
	(void) j;
}

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: choreo replay --rules DIR [--pretty] FILE|-\n"
	    "\n"
	    "Runs JSON lines of requests (event, decide, get, forget, batch) through\n"
	    "the rules in DIR on a temporary store, with a virtual clock taken from\n"
	    "each request's ts, and prints one JSON reply per line, keys sorted.\n"
	    "Exit status: 0 when every reply was ok, 1 otherwise, 2 on bad input.\n");
}

// run_one runs one decoded request (each member of a batch in turn).
static void
run_req(ch_engine *e, const ch_req *r, msgpack_sbuffer *batch_out)
{
	ch_job j;
	ch_job_init(&j);
	j.req  = r;
	j.done = job_done;
	if (r->ts > 0) {
		// the timers due before this request fire first
		ch_engine_run_timers_until(e, &virtual_now, r->ts);
		virtual_now = r->ts;
	}
	ch_engine_run_one(e, &j);
	if (batch_out != NULL) {
		msgpack_sbuffer_write(batch_out, j.reply.data, j.reply.size);
	} else {
		print_reply(j.reply.data, j.reply.size);
	}
	ch_job_fini(&j);
}

int
ch_replay_main(int argc, char **argv)
{
	static const struct option longs[] = {
		{ "rules", required_argument, NULL, 'r' },
		{ "pretty", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *rules_dir = NULL;
	replay_ctx  ctx       = { stdout, 0, false };
	int         c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
		switch (c) {
		case 'r': rules_dir = optarg; break;
		case 'p': ctx.pretty = true; break;
		case 'h': usage(stdout); return (0);
		default: usage(stderr); return (2);
		}
	}
	if (rules_dir == NULL || optind != argc - 1) {
		usage(stderr);
		return (2);
	}
	const char *path = argv[optind];
	FILE *in = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	if (in == NULL) {
		fprintf(stderr, "choreo replay: cannot open %s: %s\n", path,
		    strerror(errno));
		return (2);
	}
	the_ctx = &ctx;
	ch_log_set_level(CH_LOG_WARN);

	char tmp[] = "/tmp/choreo-replay-XXXXXX";
	if (mkdtemp(tmp) == NULL) {
		fprintf(stderr, "choreo replay: cannot make a temporary "
		                "directory: %s\n",
		    strerror(errno));
		return (2);
	}
	ch_store     *store = NULL;
	ch_rules     *rules = NULL;
	ch_engine    *e     = NULL;
	char          why[512];
	int           status = 2;
	ch_store_opts so     = { false, (size_t) 1 << 34, 0 };
	ch_rules_opts ro = CH_RULES_OPTS_DEFAULT;
	if (ch_store_open(&store, tmp, &so, why, sizeof(why)) != CH_OK) {
		fprintf(stderr, "choreo replay: %s\n", why);
		goto out;
	}
	if (ch_rules_load(&rules, rules_dir, &ro) != CH_OK) {
		fprintf(stderr, "choreo replay: cannot read the rules in %s\n",
		    rules_dir);
		goto out;
	}
	ch_engine_opts eo = {
		.rules_dir = rules_dir,
		.rules     = rules,
		.store     = store,
		.clock     = replay_clock,
	};
	if (ch_engine_new(&e, &eo) != CH_OK) {
		ch_rules_free(rules);
		goto out;
	}

	char  *line = NULL;
	size_t cap  = 0;
	long   no   = 0;
	status      = 0;
	while (getline(&line, &cap, in) != -1) {
		no++;
		char *p = line;
		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
			p++;
		}
		if (*p == '\0' || *p == '#') {
			continue;
		}
		json_error_t jerr;
		json_t      *j = json_loads(p, 0, &jerr);
		if (j == NULL || !json_is_object(j)) {
			fprintf(stderr, "choreo replay: %s:%ld:%d: %s\n", path,
			    no, jerr.column,
			    j == NULL ? jerr.text : "expected a JSON object");
			json_decref(j);
			status = 2;
			break;
		}
		msgpack_sbuffer buf;
		msgpack_packer  pk;
		msgpack_sbuffer_init(&buf);
		msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
		ch_json_to_msgpack(j, &pk);
		json_decref(j);
		ch_doc doc;
		int   rc = ch_doc_decode(&doc, buf.data, buf.size);
		if (rc != CH_OK) {
			msgpack_sbuffer err;
			msgpack_sbuffer_init(&err);
			msgpack_packer_init(&pk, &err, msgpack_sbuffer_write);
			ch_pack_error(&pk, rc, doc.errmsg);
			print_reply(err.data, err.size);
			msgpack_sbuffer_destroy(&err);
		} else if (doc.req.op == CH_OP_BATCH) {
			msgpack_sbuffer out;
			msgpack_sbuffer_init(&out);
			msgpack_packer_init(&pk, &out, msgpack_sbuffer_write);
			msgpack_pack_map(&pk, 2);
			ch_pack_str(&pk, "ok");
			msgpack_pack_true(&pk);
			ch_pack_str(&pk, "results");
			msgpack_pack_array(&pk, doc.req.nevents);
			for (uint32_t i = 0; i < doc.req.nevents; i++) {
				ch_req *m = &doc.req.events[i];
				if (m->err != CH_OK) {
					ch_pack_error(&pk, m->err, m->errmsg);
				} else {
					run_req(e, m, &out);
				}
			}
			print_reply(out.data, out.size);
			msgpack_sbuffer_destroy(&out);
		} else if (doc.req.op == CH_OP_PING) {
			static const char pong[] = "\x81\xa2ok\xc3";
			print_reply(pong, sizeof(pong) - 1);
		} else {
			run_req(e, &doc.req, NULL);
		}
		ch_doc_fini(&doc);
		msgpack_sbuffer_destroy(&buf);
	}
	free(line);
	if (status == 0 && ctx.failed > 0) {
		status = 1;
	}
out:
	if (in != stdin) {
		fclose(in);
	}
	ch_engine_free(e);
	ch_store_close(store);
	nftw(tmp, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	return (status);
}

// choreo — `choreo serve`. See serve.h.
//
// Start-up order: flags, signals blocked (so only this thread sees them),
// then per shard the store, the rules and the engine thread, then the nng
// endpoints. The main thread then only waits for signals: SIGHUP reloads,
// SIGINT/SIGTERM stop cleanly — no new requests, every queued job run and
// committed, its reply sent, the store closed, exit 0.
#include "serve.h"

#include <getopt.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lua/rules.h"
#include "engine.h"
#include "err.h"
#include "log.h"
#include "reload.h"
#include "server.h"
#include "store.h"

typedef struct {
	const char *rules, *data, *rep, *pull, *pub, *http;
	bool        sync_full;
	int         shards;
	size_t      max_size, max_message;
	int         batch_max, queue_cap;
	const char *admin_token;
} serve_opts;

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: choreo serve [options]\n"
	    "\n"
	    "Serves customer events over nng with the business rules in --rules,\n"
	    "keeping journey state in LMDB under --data.\n"
	    "\n"
	    "  --rules DIR         rule folders, one per business (./rules)\n"
	    "  --data DIR          the LMDB store (./data)\n"
	    "  --rep URL           request/reply endpoint (tcp://127.0.0.1:7450)\n"
	    "  --pull URL          events without replies (tcp://127.0.0.1:7451)\n"
	    "  --pub URL           decisions and emits (tcp://127.0.0.1:7452)\n"
	    "  --http URL          /metrics and /healthz (http://127.0.0.1:7453)\n"
	    "  --sync full|os      full: a reply means the event is on disk;\n"
	    "                      os: committed, not fsynced (full)\n"
	    "  --shards N          engine threads, each with its own store (1)\n"
	    "  --max-size BYTES    the store never grows past this (64G)\n"
	    "  --max-message BYTES larger messages are refused by nng (1M)\n"
	    "  --batch N           most events per group commit (256)\n"
	    "  --queue N           queued requests per shard before\n"
	    "                      'overloaded' (4096)\n"
	    "  --admin-token T     reload and forget need this token\n"
	    "\n"
	    "SIGHUP reloads the rules; SIGINT or SIGTERM stop cleanly.\n");
}

static int
parse(int argc, char **argv, serve_opts *o)
{
	static const struct option longs[] = {
		{ "rules", required_argument, NULL, 'r' },
		{ "data", required_argument, NULL, 'd' },
		{ "rep", required_argument, NULL, 'R' },
		{ "pull", required_argument, NULL, 'P' },
		{ "pub", required_argument, NULL, 'B' },
		{ "http", required_argument, NULL, 'H' },
		{ "sync", required_argument, NULL, 's' },
		{ "shards", required_argument, NULL, 'n' },
		{ "max-size", required_argument, NULL, 'm' },
		{ "max-message", required_argument, NULL, 'M' },
		{ "batch", required_argument, NULL, 'b' },
		{ "queue", required_argument, NULL, 'q' },
		{ "admin-token", required_argument, NULL, 'A' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
		switch (c) {
		case 'r': o->rules = optarg; break;
		case 'd': o->data = optarg; break;
		case 'R': o->rep = optarg; break;
		case 'P': o->pull = optarg; break;
		case 'B': o->pub = optarg; break;
		case 'H': o->http = optarg; break;
		case 's':
			if (strcmp(optarg, "full") == 0) {
				o->sync_full = true;
			} else if (strcmp(optarg, "os") == 0) {
				o->sync_full = false;
			} else {
				fprintf(stderr, "choreo serve: --sync takes "
				                "'full' or 'os'\n");
				return (2);
			}
			break;
		case 'n':
			o->shards = atoi(optarg);
			if (o->shards < 1 || o->shards > 64) {
				fprintf(stderr, "choreo serve: --shards takes "
				                "1 to 64\n");
				return (2);
			}
			break;
		case 'm':
		case 'M': {
			size_t v = ch_parse_size(optarg);
			if (v == 0) {
				fprintf(stderr, "choreo serve: '%s' is not a "
				                "size (e.g. 1048576, 64M, 2G)\n",
				    optarg);
				return (2);
			}
			if (c == 'm') {
				o->max_size = v;
			} else {
				o->max_message = v;
			}
			break;
		}
		case 'b':
			o->batch_max = atoi(optarg);
			break;
		case 'q':
			o->queue_cap = atoi(optarg);
			break;
		case 'A':
			o->admin_token = optarg;
			break;
		case 'h':
			usage(stdout);
			return (0);
		default:
			usage(stderr);
			return (2);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "choreo serve: unexpected argument '%s'\n",
		    argv[optind]);
		return (2);
	}
	return (-1);
}

int
ch_serve_main(int argc, char **argv, const char *version)
{
	serve_opts o = {
		.rules       = "./rules",
		.data        = "./data",
		.rep         = "tcp://127.0.0.1:7450",
		.pull        = "tcp://127.0.0.1:7451",
		.pub         = "tcp://127.0.0.1:7452",
		.http        = "http://127.0.0.1:7453",
		.sync_full   = true,
		.shards      = 1,
		.max_size    = (size_t) 64 << 30,
		.max_message = 1 << 20,
		.batch_max   = 256,
		.queue_cap   = 4096,
	};
	int rv = parse(argc, argv, &o);
	if (rv >= 0) {
		return (rv);
	}

	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	ch_store  *stores[64]  = { 0 };
	ch_engine *engines[64] = { 0 };
	ch_server   *srv      = NULL;
	ch_reloader *reloader = NULL;
	char       why[512];
	int        status = 1, nbiz = 0;

	for (int i = 0; i < o.shards; i++) {
		char dir[4096];
		if (o.shards == 1) {
			snprintf(dir, sizeof(dir), "%s", o.data);
		} else {
			snprintf(dir, sizeof(dir), "%s/shard-%d", o.data, i);
		}
		ch_store_opts so = { o.sync_full, o.max_size, 0 };
		if (ch_store_open(&stores[i], dir, &so, why, sizeof(why)) !=
		    CH_OK) {
			ch_log_error("serve: %s", why);
			goto out;
		}
		ch_rules     *rules;
		ch_rules_opts ro = { CH_DEFAULT_INSTR_BUDGET,
			CH_DEFAULT_MEM_LIMIT };
		if (ch_rules_load(&rules, o.rules, &ro) != CH_OK) {
			ch_log_error("serve: cannot read the rules in '%s'",
			    o.rules);
			goto out;
		}
		ch_rules_apply_quarantine(rules, stores[i], o.rules);
		ch_rules_record_versions(rules, stores[i]);
		nbiz              = ch_rules_count(rules);
		ch_engine_opts eo = {
			.shard           = i,
			.rules_dir       = o.rules,
			.rules           = rules,
			.store           = stores[i],
			.queue_cap       = o.queue_cap,
			.batch_max       = o.batch_max,
			.publish         = ch_server_publish,
			.publish_arg     = NULL,
			.admin_token     = o.admin_token,
		};
		if (ch_engine_new(&engines[i], &eo) != CH_OK) {
			ch_rules_free(rules);
			goto out;
		}
	}
	ch_server_opts sopts = {
		.rep_url     = o.rep,
		.pull_url    = o.pull,
		.pub_url     = o.pub,
		.http_url    = o.http,
		.max_message = o.max_message,
		.engines     = engines,
		.stores      = stores,
		.shards      = o.shards,
		.version     = version,
		.admin_token = o.admin_token,
	};
	if (ch_server_start(&srv, &sopts, why, sizeof(why)) != CH_OK) {
		ch_log_error("serve: cannot listen: %s", why);
		goto out;
	}
	for (int i = 0; i < o.shards; i++) {
		ch_engine_set_publish_arg(engines[i], srv);
		if (ch_engine_run(engines[i]) != CH_OK) {
			ch_log_error("serve: cannot start engine thread %d", i);
			goto out;
		}
	}
	ch_reloader_opts ropts = {
		.rules_dir  = o.rules,
		.engines    = engines,
		.nengines   = o.shards,
		.rules_opts = { CH_DEFAULT_INSTR_BUDGET, CH_DEFAULT_MEM_LIMIT },
		.watch      = true,
	};
	if (ch_reloader_start(&reloader, &ropts) != CH_OK) {
		ch_log_error("serve: cannot start the rules watcher");
		goto out;
	}
	ch_server_set_reloader(srv, reloader);
	ch_log_info("serve: choreo %s serving %d business(es) from %s, data "
	            "in %s",
	    version, nbiz, o.rules, o.data);
	// standard output says only where it listens, one line per endpoint
	printf("rep  %s\npull %s\npub  %s\nhttp %s\n", o.rep, o.pull, o.pub,
	    o.http);
	fflush(stdout);

	for (;;) {
		int sig;
		if (sigwait(&sigs, &sig) != 0) {
			continue;
		}
		if (sig == SIGHUP) {
			ch_log_info("serve: SIGHUP: reloading the rules");
			ch_reloader_trigger(reloader);
			continue;
		}
		ch_log_info("serve: %s: stopping", strsignal(sig));
		break;
	}
	ch_server_quiesce(srv);
	ch_server_set_reloader(srv, NULL);
	ch_reloader_stop(reloader); // before the engines it hands rules to
	reloader = NULL;
	for (int i = 0; i < o.shards; i++) {
		ch_engine_stop(engines[i]); // runs and commits what is queued
	}
	ch_server_drain(srv, 2000);
	status = 0;
out:
	ch_reloader_stop(reloader);
	ch_server_close(srv);
	for (int i = 0; i < o.shards; i++) {
		ch_engine_free(engines[i]);
		ch_store_close(stores[i]);
	}
	if (status == 0) {
		ch_log_info("serve: stopped");
	}
	return (status);
}

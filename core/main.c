// choreo — the command line: `choreo COMMAND [options]`.
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "replay.h"
#include "tools.h"
#include "serve.h"

#define CHOREO_VERSION "0.1.0"

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: choreo COMMAND [options]   (choreo COMMAND --help)\n"
	    "\n"
	    "the daemon:\n"
	    "  serve     serve events over nng with the rules in --rules\n"
	    "\n"
	    "tools (no daemon needed):\n"
	    "  test      run the analyst tests of a business (or all of them)\n"
	    "  lint      check rules without serving them\n"
	    "  replay    run JSON lines of requests through a rule set with a\n"
	    "            virtual clock; one JSON reply per line\n"
	    "\n"
	    "clients (talk to a running daemon, --url, JSON in and out):\n"
	    "  send      send one request (JSON), or JSON lines with '-'\n"
	    "  decide    next best actions for a customer\n"
	    "  get       a customer's whole journey state\n"
	    "  forget    erase a customer\n"
	    "  rules     loaded rule versions and load errors\n"
	    "  reload    reload the rules now\n"
	    "  rollback  make an earlier rule version live again\n"
	    "  stats     journey and action analytics\n"
	    "  ping      is the daemon there?\n");
}

int
main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return (argc < 2 ? 2 : 0);
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("choreo %s\n", CHOREO_VERSION);
		return (0);
	}
	if (strcmp(argv[1], "serve") == 0) {
		return (ch_serve_main(argc - 1, argv + 1, CHOREO_VERSION));
	}
	if (strcmp(argv[1], "test") == 0) {
		return (ch_test_main(argc - 1, argv + 1));
	}
	if (strcmp(argv[1], "lint") == 0) {
		return (ch_lint_main(argc - 1, argv + 1));
	}
	if (strcmp(argv[1], "replay") == 0) {
		return (ch_replay_main(argc - 1, argv + 1));
	}
	int rv = ch_cli_main(argv[1], argc - 1, argv + 1);
	if (rv == CH_CLI_UNKNOWN) {
		fprintf(stderr, "choreo: unknown command '%s'\n\n", argv[1]);
		usage(stderr);
		return (2);
	}
	return (rv);
}

// choreo — the client commands: send, decide, get, forget, rules, reload,
// ping. Each talks to a running daemon over nng REQ, takes JSON and prints
// JSON. Exit status: 0 on ok=true, 1 on an error reply, 2 when the daemon
// cannot be reached (or the command line is wrong).
#ifndef CORE_CLI_H
#define CORE_CLI_H

#define CH_CLI_UNKNOWN (-1)

// ch_cli_main runs client command cmd; argv[0] is the command's name.
// Returns the exit status, or CH_CLI_UNKNOWN when cmd is not a client
// command.
int ch_cli_main(const char *cmd, int argc, char **argv);

#endif

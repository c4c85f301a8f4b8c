// choreo — `choreo serve`: the daemon's start-up and shutdown.
#ifndef CORE_SERVE_H
#define CORE_SERVE_H

int ch_serve_main(int argc, char **argv, const char *version);

#endif

// choreo — `choreo replay`: requests through a rule set with a virtual
// clock, one JSON reply per line.
#ifndef CORE_REPLAY_H
#define CORE_REPLAY_H

int ch_replay_main(int argc, char **argv);

#endif

// choreo — `choreo test` and `choreo lint`, the analyst's tools.
#ifndef CORE_TOOLS_H
#define CORE_TOOLS_H

int ch_test_main(int argc, char **argv);
int ch_lint_main(int argc, char **argv);

#endif

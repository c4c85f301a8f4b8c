// choreo — analyst tests (rules/<business>/tests/*.lua), see atest.c.
#ifndef LUA_ATEST_H
#define LUA_ATEST_H

#include <stddef.h>
#include <stdio.h>

// ch_atest_run runs the tests of one business of rules_dir, printing each
// as "ok   business: name" or "FAIL business: name" with file:line and both
// values, and counts them. first_fail (may be NULL) gets the first
// failure's message. Returns CH_OK, or CH_EINTERNAL when the tests could
// not be run at all.
int ch_atest_run(const char *rules_dir, const char *business, FILE *out,
    int *passed, int *failed, char *first_fail, size_t fflen);

#endif

#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

static enum ch_log_level level = CH_LOG_INFO;

static const char *const names[] = { "error", "warn", "info", "debug" };

void
ch_log_set_level(enum ch_log_level lv)
{
	level = lv;
}

static _Thread_local bool quiet;

bool
ch_log_quiet(bool q)
{
	bool was = quiet;
	quiet    = q;
	return (was);
}

void
ch_log(enum ch_log_level lv, const char *fmt, ...)
{
	if (lv > level || quiet) {
		return;
	}
	char            line[2048];
	struct timespec ts;
	struct tm       tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof(line),
	    "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ", tm.tm_year + 1900,
	    tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
	    ts.tv_nsec / 1000000, names[lv]);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t) n, fmt, ap);
	va_end(ap);
	// one write per line, so lines from several threads never interleave
	fprintf(stderr, "%s\n", line);
}

// choreo — logging to standard error, one line per message.
#ifndef CORE_LOG_H
#define CORE_LOG_H

#include <stdbool.h>

enum ch_log_level {
	CH_LOG_OFF = -1,
	CH_LOG_ERROR,
	CH_LOG_WARN,
	CH_LOG_INFO,
	CH_LOG_DEBUG,
};

// ch_log_set_level sets the most verbose level printed (default INFO).
void ch_log_set_level(enum ch_log_level lv);

// ch_log_quiet(true) silences every message from the calling thread until
// ch_log_quiet(false) (the analyst tests' engines, whose outcome is
// reported by the tests themselves). Returns the previous setting.
bool ch_log_quiet(bool quiet);

void ch_log(enum ch_log_level lv, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define ch_log_error(...) ch_log(CH_LOG_ERROR, __VA_ARGS__)
#define ch_log_warn(...) ch_log(CH_LOG_WARN, __VA_ARGS__)
#define ch_log_info(...) ch_log(CH_LOG_INFO, __VA_ARGS__)
#define ch_log_debug(...) ch_log(CH_LOG_DEBUG, __VA_ARGS__)

#endif

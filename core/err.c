#include "err.h"

static const char *const codes[CH_NERR] = {
	"ok",
	"bad_request",
	"unknown_business",
	"not_found",
	"unauthorized",
	"rule_error",
	"rule_limit",
	"overloaded",
	"storage_full",
	"internal",
	"reply_too_large",
};

const char *
ch_err_code(int err)
{
	return (codes[ch_err_index(err)]);
}

// choreo — error codes shared by every module.
//
// 0 is success. choreo's own codes are small negative numbers; each maps
// to one of the wire error codes of DESIGN.md ("bad_request", ...).
#ifndef CORE_ERR_H
#define CORE_ERR_H

enum ch_err {
	CH_OK               = 0,
	CH_EBADREQ          = -1,  // bad_request
	CH_EUNKNOWNBUSINESS = -2,  // unknown_business
	CH_ENOTFOUND        = -3,  // not_found
	CH_EUNAUTHORIZED    = -4,  // unauthorized
	CH_ERULE            = -5,  // rule_error
	CH_ERULELIMIT       = -6,  // rule_limit
	CH_EOVERLOADED      = -7,  // overloaded
	CH_ESTORAGEFULL     = -8,  // storage_full
	CH_EINTERNAL        = -9,  // internal
	CH_EREPLYTOOLARGE   = -10, // reply_too_large
};
#define CH_NERR 11

// ch_err_code returns the wire name of an error ("bad_request", ...).
const char *ch_err_code(int err);

// ch_err_index maps an error to 0..CH_NERR-1 (for counters).
static inline int
ch_err_index(int err)
{
	return (err <= 0 && err > -CH_NERR) ? -err : -CH_EINTERNAL;
}

#endif

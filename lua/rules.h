// choreo — business rule sets: one sandboxed Lua state per business.
//
// A rule set is loaded from rules/<business>/*.lua in lexical order, text
// only, into an environment that sees the safe libraries and the rule
// language (lua/prelude.lua). All functions here run on the thread that owns
// the ch_rules (an engine thread); none is thread-safe.
#ifndef LUA_RULES_H
#define LUA_RULES_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "../core/codec.h"

typedef struct ch_rules ch_rules;
typedef struct ch_biz   ch_biz;
typedef struct ch_store ch_store;

typedef struct {
	uint64_t instr_budget; // per event, Lua VM instructions
	size_t   mem_limit;    // per business, bytes
	// when set and true for (business, version), that version is not run
	// at all (it crashed the engine once)
	bool (*quarantined)(void *arg, const char *business, const char *version);
	void *qarg;
} ch_rules_opts;

#define CH_DEFAULT_INSTR_BUDGET 10000000u
#define CH_DEFAULT_MEM_LIMIT (64u << 20)
#define CH_RULES_OPTS_DEFAULT                                  \
	((ch_rules_opts) { .instr_budget = CH_DEFAULT_INSTR_BUDGET, \
	    .mem_limit = CH_DEFAULT_MEM_LIMIT })

// ch_rules_load loads every business folder under dir. A business whose
// files fail to load is kept with its error (ch_rules_find skips it).
// Returns CH_OK, or CH_EINTERNAL when dir cannot be read.
int  ch_rules_load(ch_rules **out, const char *dir, const ch_rules_opts *o);
void ch_rules_free(ch_rules *r);
// ch_rules_load_one loads only business from dir.
int ch_rules_load_one(ch_rules **out, const char *dir, const char *business,
    const ch_rules_opts *o);

// ch_rules_keep_serving: every business that failed to load in fresh but
// was serving in old keeps its old version (moved into fresh), carrying the
// new error for the rules op to report.
void ch_rules_keep_serving(ch_rules *fresh, ch_rules *old);

// ch_rules_publish_changes publishes, on choreo/<business>/rules, every
// business of fresh that is new, changed version or failed to load, and
// every business of old that is gone.
void ch_rules_publish_changes(ch_rules *fresh, ch_rules *old,
    void (*publish)(void *, const void *, size_t), void *arg);

// ch_rules_find returns the serving rule set of a business, or NULL.
ch_biz *ch_rules_find(ch_rules *r, ch_str business);

// ch_rules_fail marks a business as failed (its analyst tests did not
// pass, say): it serves nothing from this set, and msg is its error.
void ch_rules_fail(ch_rules *r, const char *business, const char *msg);
// ch_rules_name/serving: the i-th business (sorted by name), or NULL.
const char *ch_rules_name(const ch_rules *r, int i);
bool        ch_rules_serving(const ch_rules *r, int i);

// The version history (the last 10 versions' sources per business) and the
// quarantine, in the store's meta database.
//
// ch_rules_record_versions stores every serving business's version not yet
// stored (in its own write transaction: only between batches).
int ch_rules_record_versions(ch_rules *r, ch_store *s);
// ch_rules_pack_history packs [{version, loaded_at, quarantined, live}...],
// newest first by first load; live marks the version r serves.
int ch_rules_pack_history(ch_store *s, ch_rules *r, ch_str business,
    msgpack_packer *pk);
// ch_rules_use_version compiles a stored version of business and puts it
// in r in place of the loaded one. CH_OK, CH_ENOTFOUND, CH_ERULE (it does
// not load), with why filled.
int ch_rules_use_version(ch_rules *r, ch_store *s, const char *rules_dir,
    const char *business, const char *version, char *why, size_t whylen);
// ch_rules_quarantine records that version crashed the engine on an event.
int ch_rules_quarantine(ch_store *s, const char *business, const char *version,
    const char *event_type, int64_t at);
// ch_rules_apply_quarantine replaces every quarantined version in r by the
// newest good one of its history (or serves nothing).
void ch_rules_apply_quarantine(ch_rules *r, ch_store *s, const char *rules_dir);

// ch_rules_error returns the last load error of a business, or NULL.
const char *ch_rules_error(ch_rules *r, ch_str business);

// ch_rules_count returns how many businesses were found (serving or not).
int ch_rules_count(const ch_rules *r);

// ch_rules_pack_info packs the rules op's reply: {ok, businesses={...}},
// for one business when business.n > 0 (unknown_business if absent).
int ch_rules_pack_info(ch_rules *r, ch_str business, msgpack_packer *pk);

// ch_biz_authorized: the business has no token, or token is it.
bool ch_biz_authorized(const ch_biz *b, ch_str token);
// ch_token_ok compares a token in constant time; want NULL accepts any.
bool ch_token_ok(const char *want, ch_str got);

// ch_biz_stats builds the stats reply of a business (one journey when
// journey.n > 0) from counters, a packed flat array key, value, ... (keys
// without the business; repeated keys add up). CH_OK, or CH_EBADREQ for
// an unknown journey (errmsg says so).
int ch_biz_stats(ch_biz *b, const void *counters, size_t len, ch_str journey,
    msgpack_sbuffer *reply, char *errmsg, size_t errlen);

// ch_biz_token: the token requests for the business must carry, or NULL.
const char *ch_biz_token(const ch_biz *b);

// ch_biz_version returns the rule version (a short hash of the files).
const char *ch_biz_version(const ch_biz *b);

// What one rule call produced. The caller owns the buffers and clears them
// before each call.
typedef struct {
	ch_store        *store;   // for the adaptive model; NULL: none kept
	void            *txn;     // the event's MDB_txn (with store)
	int              store_err; // set when the store failed mid-call
	msgpack_sbuffer *state;   // the new customer state; empty: unchanged
	msgpack_sbuffer *reply;   // the reply map
	msgpack_sbuffer *emits;   // pub messages, each: u32 length ‖ topic \0 map
	int              nactions; // how many actions the reply returns
	msgpack_sbuffer *stats;   // NULL, or analytics deltas: [key, n, ...]
	char             errmsg[512];
} ch_rule_out;

// ch_biz_event runs the handlers of an event and, when asked, the next best
// action. state/slen is the stored customer (NULL for a new one). Returns
// CH_OK, CH_ERULE or CH_ERULELIMIT (errmsg says why, with file:line),
// CH_EBADREQ for a malformed response event, or the store's error
// (CH_ESTORAGEFULL, CH_EINTERNAL) when the model could not be written
// (out->store_err says which), or CH_EINTERNAL when the server ran out of
// memory (errmsg says so). A failed call leaves out's state, reply and
// emits empty.
int ch_biz_event(ch_biz *b, const ch_req *req, const void *state, size_t slen,
    int64_t now, ch_rule_out *out);

// ch_rules_model_rollback tells every rule set that a transaction which may
// have written the adaptive model was rolled back (their caches go).
void ch_rules_model_rollback(void);

// ch_biz_decide ranks next best actions without an event.
int ch_biz_decide(ch_biz *b, const ch_req *req, const void *state,
    size_t slen, int64_t now, ch_rule_out *out);

#endif

// choreo — the wire codec: msgpack requests in, msgpack replies out.
//
// Decoding is two steps. ch_mp_prescan walks the raw bytes first and
// refuses anything whose declared counts or lengths exceed the bytes that
// are actually there, or that nests deeper than msgpack-c can unpack —
// msgpack-c 4.0.0 allocates whatever a 5-byte header claims (DESIGN, "Known
// pitfalls"). Only then does msgpack-c unpack, and ch_req_decode checks every
// field of DESIGN's request table. Nothing here allocates per byte claimed.
#ifndef CORE_CODEC_H
#define CORE_CODEC_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// msgpack-c's unpacker holds at most this many open containers.
#define CH_MP_MAX_DEPTH 32

#define CH_MAX_BATCH 1000
#define CH_MAX_DATA_BYTES (64 * 1024)

typedef struct {
	const char *p;
	uint32_t    n;
} ch_str;

enum ch_op {
	CH_OP_EVENT,
	CH_OP_DECIDE,
	CH_OP_GET,
	CH_OP_FORGET,
	CH_OP_STATS,
	CH_OP_RULES,
	CH_OP_RELOAD,
	CH_OP_BATCH,
	CH_OP_PING,
	CH_OP_ROLLBACK,
};

typedef struct ch_req ch_req;
struct ch_req {
	enum ch_op op;
	ch_str     business, customer, type, id, channel, region, product;
	ch_str     token, journey, version;
	ch_str     timer;   // a timer firing: its name (never from the wire)
	int64_t    ts;      // 0 when absent
	bool       decide;  // default true
	bool       explain; // default false
	bool       record;  // default true
	bool       history; // rules: the version history of business
	int        limit;   // default 3
	const msgpack_object *data; // a map, or NULL; points into the unpacked doc
	// batch only: the events, each decoded as if sent alone; a member that
	// failed validation has err set and errmsg filled.
	ch_req  *events;
	uint32_t nevents;
	int      err;
	char    *errmsg;
};

// A decoded message: the unpacked object tree (which points into the
// caller's buffer, so the buffer must outlive it) and the request.
typedef struct {
	msgpack_unpacked up;
	ch_req           req;
	char             errmsg[200];
} ch_doc;

// ch_mp_prescan checks that buf[0..len) holds exactly one msgpack object
// whose every declared count and length fits in the bytes present and whose
// containers nest at most max_depth deep (empty ones count, as in msgpack-c).
// Returns CH_OK or CH_EBADREQ with a reason in why (static string); when
// the failure lies under a top-level key of a map, field names that key.
int ch_mp_prescan(const void *buf, size_t len, int max_depth, const char **why,
    ch_str *field);

// ch_doc_decode pre-scans, unpacks and validates one request. On CH_OK the
// request is in doc->req. On CH_EBADREQ doc->errmsg says which field and
// why. Either way, release with ch_doc_fini. buf must outlive doc.
int  ch_doc_decode(ch_doc *doc, const void *buf, size_t len);
void ch_doc_fini(ch_doc *doc);

// ch_op_name returns the op's wire name.
const char *ch_op_name(enum ch_op op);

// Packing helpers for replies. What they write is always valid UTF-8: a
// byte of s that is not is written as the four characters \xNN (messages
// may quote bytes from rules, files or requests); they allocate nothing
// but what the packer's buffer needs, at most ch_pack_strn_len bytes.
// Records kept byte for byte (rule sources) are packed with msgpack-c.
void ch_pack_str(msgpack_packer *pk, const char *s);
void ch_pack_strn(msgpack_packer *pk, const char *s, size_t n);
size_t ch_pack_strn_len(const char *s, size_t n);
void ch_pack_kv_str(msgpack_packer *pk, const char *k, const char *v);
// ch_pack_error writes {ok=false, error={code, message}}.
void ch_pack_error(msgpack_packer *pk, int err, const char *msg);

// ch_sbuffer_room makes room in b for n more bytes, growing it at least
// twofold: 0, or -1 when there is no memory (b is then as it was). After
// it, msgpack-c's writes of up to n bytes cannot fail half-way.
int ch_sbuffer_room(msgpack_sbuffer *b, size_t n);

// ch_sbuffer_trim shrinks b to 4 KiB when more than keep bytes are
// allocated (b is left empty; what is left still holds an error reply, so
// that one needs no allocation): buffers reused for every request keep what
// the common case needs, not the largest message ever seen.
#define CH_SBUFFER_KEEP (64 * 1024)
void ch_sbuffer_trim(msgpack_sbuffer *b, size_t keep);

// ch_mp_depth returns how deeply o nests (a scalar is 0, {} is 1).
// ch_mp_get: the value of key in a msgpack map when it has that type, or
// NULL (absent, another type, or not a map).
const msgpack_object *ch_mp_get(const msgpack_object *map, const char *key,
    msgpack_object_type type);
int ch_mp_depth(const msgpack_object *o);

#endif

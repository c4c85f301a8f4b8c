// choreo — JSON (jansson) ↔ msgpack, for the command-line tools.
#ifndef CORE_JSON_H
#define CORE_JSON_H

#include <jansson.h>
#include <msgpack.h>

// Containers nest at most this deep either way.
#define CH_JSON_MAX_DEPTH 64

// ch_json_to_msgpack packs j: objects become maps with string keys,
// integers stay integers, reals become float64. Returns 0, or -1 when j
// nests too deeply.
int ch_json_to_msgpack(json_t *j, msgpack_packer *pk);

// ch_msgpack_to_json builds a new JSON value (the caller decrefs), always
// one json_dumps can write: str, bin and ext become strings, as they are
// when valid UTF-8, else with each byte that is not as the four characters
// \xNN (a rule's bytes come as bin); map keys likewise, other keys as text
// ("12", "true"); an integer above INT64_MAX becomes a real, NaN and
// infinities null. Returns NULL when o nests too deeply (or memory ran
// out).
json_t *ch_msgpack_to_json(const msgpack_object *o);

#endif

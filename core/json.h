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

// ch_msgpack_to_json builds a new JSON value (the caller decrefs): map keys
// that are not strings are written as text, bin and ext as strings, an
// integer above INT64_MAX as a real, NaN and infinities as null. Returns
// NULL when o nests too deeply or has a map key that is not UTF-8.
json_t *ch_msgpack_to_json(const msgpack_object *o);

#endif

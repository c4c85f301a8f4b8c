// Fuzz target: the request decoder — the pre-scan guard, msgpack-c's
// unpacker and the field checks. Whatever the bytes, no crash, no
// allocation beyond what the bytes justify, and the guard and msgpack-c
// agree on every input the guard lets through.
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/codec.h"
#include "core/err.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	ch_doc doc;
	ch_doc_decode(&doc, data, size);
	ch_doc_fini(&doc);

	const char *why;
	if (ch_mp_prescan(data, size, CH_MP_MAX_DEPTH, &why, NULL) == CH_OK) {
		msgpack_unpacked up;
		size_t           off = 0;
		msgpack_unpacked_init(&up);
		int rc = msgpack_unpack_next(&up, (const char *) data, size, &off);
		if (rc != MSGPACK_UNPACK_SUCCESS || off != size) {
			__builtin_trap(); // the guard let through what msgpack-c refuses
		}
		msgpack_unpacked_destroy(&up);
	}
	return (0);
}

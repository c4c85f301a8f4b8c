// Fuzz target: the rule loader. The input is a rule file, written into a
// fresh rules folder as <business>/10.lua; ch_rules_load_one reads it,
// compiles it in the sandbox (text only, the instruction budget, the
// memory cap) and checks the declarations. Whatever the text, the load
// ends in a serving version or in a load error that the rules op reports
// with a message, the file and its line — never a crash. The budget is
// small so that a loop costs milliseconds, not the fuzzer's time.
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/codec.h"
#include "core/err.h"
#include "core/log.h"
#include "fuzz_util.h"
#include "lua/rules.h"

static char root[256], file[300];

static void
cleanup(void)
{
	fuzz_rmtree(root);
}

static void
setup(void)
{
	// a path longer than Lua keeps in a message (LUA_IDSIZE, 60)
	fuzz_tempdir(root, sizeof(root), "rules-in-a-folder-with-a-long-name");
	fuzz_mkdir(root, "shop");
	snprintf(file, sizeof(file), "%s/shop/10.lua", root);
	atexit(cleanup);
	ch_log_set_level(CH_LOG_OFF);
}

// check: the rules op's view of the business agrees with the load.
static void
check(ch_rules *r)
{
	msgpack_sbuffer b;
	msgpack_packer  pk;
	msgpack_sbuffer_init(&b);
	msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
	if (ch_rules_pack_info(r, (ch_str) { "shop", 4 }, &pk) != CH_OK) {
		__builtin_trap(); // the business is not listed
	}
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	FUZZ_ASSERT(msgpack_unpack_next(&up, b.data, b.size, NULL) ==
	    MSGPACK_UNPACK_SUCCESS);
	const msgpack_object *biz = ch_mp_get(ch_mp_get(&up.data, "businesses",
	                                          MSGPACK_OBJECT_MAP),
	    "shop", MSGPACK_OBJECT_MAP);
	FUZZ_ASSERT(biz != NULL);
	const msgpack_object *err = ch_mp_get(biz, "error", MSGPACK_OBJECT_MAP);
	bool serving = ch_rules_serving(r, 0);
	// serving, or an error; never both, never neither
	FUZZ_ASSERT(serving == (err == NULL));
	FUZZ_ASSERT(serving == (ch_rules_error(r, (ch_str) { "shop", 4 }) == NULL));
	if (err != NULL) {
		const msgpack_object *m = ch_mp_get(err, "message",
		    MSGPACK_OBJECT_STR);
		const msgpack_object *f = ch_mp_get(err, "file",
		    MSGPACK_OBJECT_STR);
		const msgpack_object *l = ch_mp_get(err, "line",
		    MSGPACK_OBJECT_POSITIVE_INTEGER);
		FUZZ_ASSERT(m != NULL && m->via.str.size > 0);
		// the error names the rule file and a line of it — but for the
		// memory limit, which Lua raises with no position to report
		bool memory = memmem(m->via.str.ptr, m->via.str.size,
		    "memory limit", 12) != NULL;
		bool located = f != NULL && f->via.str.size == strlen(file) &&
		    memcmp(f->via.str.ptr, file, f->via.str.size) == 0 &&
		    l != NULL && (l->via.u64 > 0 || memory);
		if (!located) {
			fprintf(stderr, "load error without its file:line: %.*s\n",
			    (int) m->via.str.size, m->via.str.ptr);
		}
		FUZZ_ASSERT(located);
	}
	msgpack_unpacked_destroy(&up);
	msgpack_sbuffer_destroy(&b);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (root[0] == '\0') {
		setup();
	}
	FILE *f = fopen(file, "wb");
	FUZZ_ASSERT(f != NULL);
	FUZZ_ASSERT(fwrite(data, 1, size, f) == size);
	FUZZ_ASSERT(fclose(f) == 0);

	ch_rules     *r;
	ch_rules_opts o = CH_RULES_OPTS_DEFAULT;
	o.instr_budget  = 2000000;
	o.mem_limit     = 16u << 20;
	FUZZ_ASSERT(ch_rules_load_one(&r, root, "shop", &o) == CH_OK);
	check(r);
	ch_rules_free(r);
	return (0);
}

/*
 * fuzz-rpc — the rpc framer and its JSON handling under libFuzzer or
 * AFL++ (see fuzz-svc.c for the input format and the runs).
 *
 * Beyond "any cut gives the same output", the output of the whole run
 * must be well-formed: frames with a 4-byte big-endian length, each a JSON
 * object {"out":"pong"|"error","result":...}, and nothing after the last
 * frame.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fuzz-svc.h"

static void
bad(const char *why, size_t off)
{
	fprintf(stderr, "fuzz-rpc: bad output at byte %zu: %s\n", off, why);
	abort();
}

static void
check_frames(const uint8_t *p, size_t len, const uint8_t *bcast, size_t blen)
{
	json_error_t e;
	json_t *j, *out;
	size_t off = 0, n;

	if (blen > 0)
		bad("rpc broadcast something", 0);
	while (off < len) {
		if (len - off < 4)
			bad("a truncated length", off);
		n = (size_t)p[off] << 24 | (size_t)p[off + 1] << 16 |
		    (size_t)p[off + 2] << 8 | p[off + 3];
		if (n > len - off - 4)
			bad("a truncated frame", off);
		j = json_loadb((const char *)p + off + 4, n, JSON_ALLOW_NUL, &e);
		if (j == NULL)
			bad(e.text, off);
		out = json_object_get(j, "out");
		if (!json_is_string(out) || json_object_get(j, "result") == NULL ||
		    (strcmp(json_string_value(out), "pong") != 0 &&
		    strcmp(json_string_value(out), "error") != 0))
			bad("not {\"out\":\"pong\"|\"error\",\"result\":...}", off);
		json_decref(j);
		off += 4 + n;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_svc("rpc", data, size, check_frames);
}

/*
 * fuzz-rpc — the rpc framer and its JSON handling under libFuzzer or
 * AFL++ (see fuzz-svc.c for the input format and the runs).
 *
 * Beyond "any cut gives the same output", the output of the whole run
 * must be well-formed: frames with a 4-byte length (all in the byte order
 * of the first request), each a JSON object {"out":"pong"|"error","result":...}, and nothing after the last
 * frame.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fuzz-svc.h"

/*
 * The frames of P, their lengths in big- (LE 0) or little-endian order:
 * NULL when well-formed, else why not (and where, in *OFF).
 */
static const char *
frames_ok(const uint8_t *p, size_t len, int le, size_t *off)
{
	json_error_t e;
	json_t *j, *out;
	const char *why = NULL;
	size_t n;

	for (*off = 0; *off < len && why == NULL; *off += 4 + n) {
		const uint8_t *h = p + *off;

		if (len - *off < 4)
			return "a truncated length";
		n = le ? (size_t)h[3] << 24 | (size_t)h[2] << 16 |
		    (size_t)h[1] << 8 | h[0] :
		    (size_t)h[0] << 24 | (size_t)h[1] << 16 |
		    (size_t)h[2] << 8 | h[3];
		if (n > len - *off - 4)
			return "a truncated frame";
		j = json_loadb((const char *)h + 4, n, JSON_ALLOW_NUL, &e);
		if (j == NULL)
			return "an answer that is not JSON";
		out = json_object_get(j, "out");
		if (!json_is_string(out) || json_object_get(j, "result") == NULL ||
		    (strcmp(json_string_value(out), "pong") != 0 &&
		    strcmp(json_string_value(out), "error") != 0))
			why = "not {\"out\":\"pong\"|\"error\",\"result\":...}";
		json_decref(j);
	}
	return why;
}

/*
 * A connection is answered in one byte order, the one its first frame
 * was read in (svc-rpc.c): all of the output parses one way or the other.
 */
static void
check_frames(const uint8_t *p, size_t len, const uint8_t *bcast, size_t blen)
{
	const char *be, *le;
	size_t off_be, off_le;

	if (blen > 0) {
		fprintf(stderr, "fuzz-rpc: rpc broadcast something\n");
		abort();
	}
	if ((be = frames_ok(p, len, 0, &off_be)) == NULL ||
	    (le = frames_ok(p, len, 1, &off_le)) == NULL)
		return;
	fprintf(stderr, "fuzz-rpc: bad output: big-endian, at byte %zu: %s; "
	    "little-endian, at byte %zu: %s\n", off_be, be, off_le, le);
	abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_svc("rpc", data, size, check_frames);
}

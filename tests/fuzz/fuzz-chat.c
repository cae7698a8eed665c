/*
 * fuzz-chat — the chat line splitter and JSON object scanner under
 * libFuzzer or AFL++ (see fuzz-svc.c for the input format and the runs).
 *
 * Beyond "any cut gives the same output", the output of the whole run
 * must be whole lines: to the sender, notices ("* "), errors ("! ") and
 * its own JSON messages ("[NAME] text"); to the room, "[NAME] text" or
 * notices.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-svc.h"

static void
check_lines(const char *who, const uint8_t *p, size_t len, const char *ok)
{
	const uint8_t *nl;
	size_t n;

	while (len > 0) {
		if ((nl = memchr(p, '\n', len)) == NULL) {
			fprintf(stderr, "fuzz-chat: %s: %zu bytes without a "
			    "newline at the end\n", who, len);
			abort();
		}
		n = (size_t)(nl - p);
		if (n < 2 || strchr(ok, p[0]) == NULL ||
		    (p[0] != '[' && p[1] != ' ')) {
			fprintf(stderr, "fuzz-chat: %s: a line that starts "
			    "with neither of \"%s\": %.*s\n", who, ok, (int)n, p);
			abort();
		}
		p += n + 1;
		len -= n + 1;
	}
}

static void
check(const uint8_t *reply, size_t rlen, const uint8_t *bcast, size_t blen)
{
	/* A JSON message comes back to its sender as "[user] text". */
	check_lines("to the sender", reply, rlen, "*![");
	check_lines("to the room", bcast, blen, "*[");
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_svc("chat", data, size, check);
}

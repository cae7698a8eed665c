/*
 * tool — what the client programs share.  See tool.h.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tool.h"

static const char *tool_prog = "iomodels";
static void (*tool_usage)(FILE *);

void
tool_init(const char *prog, void (*usage)(FILE *))
{
	tool_prog = prog;
	tool_usage = usage;
}

void
tool_usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", tool_prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (tool_usage)
		tool_usage(stderr);
	exit(TOOL_EX_USAGE);
}

int64_t
tool_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t
tool_now_ms(void)
{
	return tool_now_us() / 1000;
}

/*
 * tool — what the client programs share (rpc-ping, iomodels-chat, and the
 * test client tests/helpers/iotest): the one-line reason and the usage on
 * a bad command line, exit statuses, monotonic time.  The servers have
 * the same in server.h (srv_); a client is not a server, and neither
 * layer depends on the other.
 */
#ifndef IOMODELS_TOOL_H
#define IOMODELS_TOOL_H

#include <stdint.h>
#include <stdio.h>

/* Exit statuses (sysexits.h values, spelled out for readers). */
#define TOOL_EX_USAGE		64
#define TOOL_EX_UNAVAILABLE	69
#define TOOL_EX_IOERR		74
#define TOOL_EX_PROTOCOL	76

/*
 * The program's name and its usage printer: USAGE(stderr) prints the
 * usage line only, USAGE(stdout) the whole help.
 */
void	tool_init(const char *prog, void (*usage)(FILE *));

/* "PROG: MSG" and the usage on stderr, exit 64. */
void	tool_usage_error(const char *fmt, ...)
	    __attribute__((format(printf, 1, 2), noreturn));

/* Monotonic time, in microseconds and in milliseconds. */
int64_t	tool_now_us(void);
int64_t	tool_now_ms(void);

#endif

/*
 * rpc-ping — the documents' RPC client: N pings over the rpc service, each
 * answer printed with its round-trip time.
 *
 * One connection and one request in flight, as in the documents' client:
 * write a frame (a 4-byte big-endian length, then {"in":METHOD,
 * "params":P}), read the answer's length and body, check the answer.
 * --le sends the length little-endian, as the documents' client does
 * (struct.pack("I") on x86-64), and reads the answers' lengths so.  The
 * round trip is timed from just before the request's write to the end of
 * the answer's read, on the monotonic clock.
 *
 * A length field is a promise: an answer announcing more than MAX_ANSWER
 * bytes is a protocol error, not an allocation.  Exit status: 0 when every
 * answer was {"out":"pong"} carrying P back; 76 (EX_PROTOCOL) for an error
 * answer, another result, a malformed or oversized frame, no answer in
 * time, or a connection closed early; 69 when the connection cannot be
 * made; 64 for a bad command line.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "net.h"
#include "tool.h"

#define PROG		"rpc-ping"
#define MAX_ANSWER	(64u * 1024 * 1024)	/* at least; see answer_limit() */

struct opts {
	long		 count;
	double		 interval;	/* seconds between pings */
	double		 timeout;	/* seconds to wait for each answer */
	const char	*method;
	json_t		*params;	/* -P, or NULL: "ping N" */
	int		 quiet;
	int		 le;		/* --le: lengths little-endian */
	int		 port;
	const char	*addr;
};

struct stats {
	long	sent, pongs, errors;
	double	min, max, sum;		/* milliseconds */
};

static void
usage(FILE *f)
{
	fprintf(f, "usage: %s [-q] [--le] [-c count] [-i seconds] [-t seconds] "
	    "[-M method] [-P json] [-p port] [addr]\n", PROG);
	if (f != stdout)
		return;
	fprintf(f, "Send pings over the rpc service (4-byte big-endian length + "
	    "JSON) and time the answers.\n\n"
	    "  -c, --count N        pings to send (default 10)\n"
	    "  -i, --interval SECS  pause between pings (default 1; 0 for none)\n"
	    "  -t, --timeout SECS   wait this long for each answer (default 5)\n"
	    "  -M, --method NAME    the method to call (default ping)\n"
	    "  -P, --params JSON    the params of every request (default the "
	    "string \"ping N\")\n"
	    "  -p, --port PORT      port, when addr has none (default 7007)\n"
	    "  -q, --quiet          print only the summary\n"
	    "      --le             lengths little-endian (the documents' "
	    "struct.pack(\"I\"))\n"
	    "  -h, --help           show this help and exit\n"
	    "      --version        show the version and exit\n"
	    "addr: 127.0.0.1 (default), [::1], HOST:PORT or unix:/path.\n"
	    "Exit status: 0 every answer a matching pong, 64 bad usage, "
	    "69 cannot connect, 76 protocol error.\n");
}

static double
parse_secs(const char *name, const char *arg, double max)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(arg, &end);
	if (errno || end == arg || *end != '\0' || !isfinite(v) || v < 0 ||
	    v > max)
		tool_usage_error("%s: '%s' is not a number of seconds from 0 to %g",
		    name, arg, max);
	return v;
}

static long
parse_long(const char *name, const char *arg, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(arg, &end, 10);
	if (errno || end == arg || *end != '\0' || v < min || v > max)
		tool_usage_error("%s: '%s' is not a number from %ld to %ld", name,
		    arg, min, max);
	return v;
}

static void
parse_args(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "count", 1, NULL, 'c' }, { "interval", 1, NULL, 'i' },
		{ "timeout", 1, NULL, 't' }, { "method", 1, NULL, 'M' },
		{ "params", 1, NULL, 'P' }, { "port", 1, NULL, 'p' },
		{ "quiet", 0, NULL, 'q' }, { "help", 0, NULL, 'h' },
		{ "version", 0, NULL, 'V' }, { "le", 0, NULL, 'E' },
		{ NULL, 0, NULL, 0 },
	};
	json_error_t e;
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":c:i:t:M:P:p:qh", lo, NULL)) != -1) {
		switch (c) {
		case 'c':
			o->count = parse_long("-c", optarg, 1, 1000000000L);
			break;
		case 'i':
			o->interval = parse_secs("-i", optarg, 3600);
			break;
		case 't':
			o->timeout = parse_secs("-t", optarg, 3600);
			if (o->timeout < 0.001)
				tool_usage_error("-t: at least 0.001 seconds");
			break;
		case 'M':
			o->method = optarg;
			break;
		case 'P':
			json_decref(o->params);
			o->params = json_loads(optarg,
			    JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
			if (o->params == NULL)
				tool_usage_error("-P: not JSON: %s", e.text);
			break;
		case 'p':
			o->port = (int)parse_long("-p", optarg, 1, 65535);
			break;
		case 'q':
			o->quiet = 1;
			break;
		case 'E':
			o->le = 1;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case 'V':
			printf("%s (%s) %s\n", PROG, PACKAGE_NAME, PACKAGE_VERSION);
			exit(0);
		case ':':
			tool_usage_error("option '%s' needs an argument",
			    argv[optind - 1]);
		default:
			tool_usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		o->addr = argv[optind++];
	if (optind < argc)
		tool_usage_error("unexpected argument '%s'", argv[optind]);
}

/* Milliseconds, with the microseconds a round trip on loopback needs. */
static double
now_ms(void)
{
	return (double)tool_now_us() / 1e3;
}

static void
pause_secs(double s)
{
	struct timespec ts;

	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void
put_len(unsigned char *p, uint32_t v, int le)
{
	int i;

	for (i = 0; i < 4; i++)
		p[le ? i : 3 - i] = (unsigned char)(v >> (8 * i));
}

/* A frame of its own: the 4-byte length, then the JSON. */
static int
send_request(int fd, const struct opts *o, const json_t *params, size_t *size)
{
	json_t *req;
	size_t n;
	char *buf;
	ssize_t w;

	req = json_pack("{s:s,s:O}", "in", o->method, "params", params);
	if (req == NULL)
		return -ENOMEM;
	n = json_dumpb(req, NULL, 0, JSON_COMPACT);
	if (n == 0 || n > UINT32_MAX || (buf = malloc(4 + n)) == NULL) {
		json_decref(req);
		return -ENOMEM;
	}
	json_dumpb(req, buf + 4, n, JSON_COMPACT);
	json_decref(req);
	put_len((unsigned char *)buf, (uint32_t)n, o->le);
	w = net_write_all(fd, buf, 4 + n);
	free(buf);
	*size = n;
	return w < 0 ? (int)w : 0;
}

static const char *
read_error(ssize_t r, int mid, double timeout)
{
	static char msg[128];

	if (r == -EAGAIN)
		snprintf(msg, sizeof(msg), "no answer within %g s", timeout);
	else if (r < 0)
		snprintf(msg, sizeof(msg), "read: %s", strerror((int)-r));
	else
		snprintf(msg, sizeof(msg), "the server closed the connection%s",
		    mid ? " in the middle of an answer" : "");
	return msg;
}

/* An answer's body, or NULL with *WHY set. */
static char *
read_answer(int fd, int le, size_t limit, double timeout, size_t *len,
    const char **why)
{
	unsigned char hdr[4];
	ssize_t r;
	size_t n;
	char *body;

	if ((r = net_read_full(fd, hdr, 4)) != 4) {
		*why = read_error(r, r > 0, timeout);
		return NULL;
	}
	if (le)
		n = (size_t)hdr[3] << 24 | (size_t)hdr[2] << 16 |
		    (size_t)hdr[1] << 8 | hdr[0];
	else
		n = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 |
		    (size_t)hdr[2] << 8 | hdr[3];
	if (n > limit) {
		static char msg[96];

		snprintf(msg, sizeof(msg), "an answer of %zu bytes announced "
		    "(more than %zu): not reading it", n, limit);
		*why = msg;
		return NULL;
	}
	if ((body = malloc(n ? n : 1)) == NULL) {
		*why = "out of memory";
		return NULL;
	}
	if ((r = net_read_full(fd, body, n)) != (ssize_t)n) {
		*why = read_error(r, 1, timeout);
		free(body);
		return NULL;
	}
	*len = n;
	return body;
}

/* Print the result, cut at 120 bytes: a big params makes a big answer. */
static void
print_answer(long seq, const char *out, const json_t *result, double ms)
{
	char *s = json_dumps(result, JSON_COMPACT | JSON_ENCODE_ANY);
	int n = s ? (int)strlen(s) : 0;

	printf("%s seq=%ld result=%.*s%s time=%.3f ms\n", out, seq,
	    n > 120 ? 120 : n, s ? s : "?", n > 120 ? "..." : "", ms);
	free(s);
}

static void
stats_add(struct stats *st, double ms)
{
	if (st->pongs + st->errors == 1 || ms < st->min)
		st->min = ms;
	if (ms > st->max)
		st->max = ms;
	st->sum += ms;
}

/* One round trip: 0, 1 for an answer that is not the right pong, -1 for a
 * failure after which the connection cannot be used. */
static int
ping_once(int fd, const struct opts *o, long seq, struct stats *st)
{
	json_t *params, *ans = NULL, *out, *result;
	const char *why = NULL;
	size_t n = 0, len = 0;
	char *body = NULL, text[32];
	double t0, ms;
	json_error_t e;
	int rc = -1, r;

	if (o->params)
		params = json_incref(o->params);
	else {
		snprintf(text, sizeof(text), "ping %ld", seq);
		params = json_string(text);
	}
	t0 = now_ms();
	if ((r = send_request(fd, o, params, &n)) < 0) {
		fprintf(stderr, "%s: seq=%ld: sending: %s\n", PROG, seq,
		    r == -EPIPE || r == -ECONNRESET ?
		    "the server closed the connection" : strerror(-r));
		goto out;
	}
	st->sent++;
	body = read_answer(fd, o->le, n * 2 + 1024 > MAX_ANSWER ? n * 2 + 1024 :
	    MAX_ANSWER, o->timeout, &len, &why);
	ms = now_ms() - t0;
	if (body == NULL) {
		fprintf(stderr, "%s: seq=%ld: %s\n", PROG, seq, why);
		goto out;
	}
	ans = json_loadb(body, len, JSON_ALLOW_NUL, &e);
	out = json_object_get(ans, "out");
	result = json_object_get(ans, "result");
	if (ans == NULL || !json_is_object(ans) || !json_is_string(out) ||
	    result == NULL) {
		fprintf(stderr, "%s: seq=%ld: not an answer: %s\n", PROG, seq,
		    ans ? "want {\"out\":...,\"result\":...}" : e.text);
		goto out;
	}
	rc = 0;
	if (strcmp(json_string_value(out), "pong") == 0 &&
	    json_equal(result, params)) {
		st->pongs++;
		stats_add(st, ms);
	} else {
		st->errors++;
		stats_add(st, ms);
		rc = 1;
		if (strcmp(json_string_value(out), "pong") == 0)
			fprintf(stderr, "%s: seq=%ld: the result is not the "
			    "params sent\n", PROG, seq);
	}
	if (!o->quiet)
		print_answer(seq, json_string_value(out), result, ms);
out:
	json_decref(ans);
	json_decref(params);
	free(body);
	return rc;
}

static void
set_timeout(int fd, double secs)
{
	struct timeval tv;

	tv.tv_sec = (time_t)secs;
	tv.tv_usec = (suseconds_t)((secs - (double)tv.tv_sec) * 1e6);
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

int
main(int argc, char **argv)
{
	struct opts o = {
		.count = 10, .interval = 1, .timeout = 5, .method = "ping",
		.port = 7007, .addr = "127.0.0.1",
	};
	struct stats st = { 0 };
	char name[NET_ADDRSTRLEN];
	struct net_addr a;
	int fd, r, bad = 0;
	long i;

	tool_init(PROG, usage);
	parse_args(argc, argv, &o);
	if (net_parse_addr(o.addr, o.port, &a) < 0)
		tool_usage_error("not an address: '%s' (want 127.0.0.1, [::1], "
		    "HOST:PORT or unix:/path)", o.addr);
	net_addr_str(&a, name, sizeof(name));
	signal(SIGPIPE, SIG_IGN);	/* a closed server: EPIPE, said */
	if ((fd = net_connect(&a, 0)) < 0) {
		fprintf(stderr, "%s: cannot connect to %s: %s\n", PROG, name,
		    strerror(-fd));
		return TOOL_EX_UNAVAILABLE;
	}
	(void)net_set_nodelay(fd);
	set_timeout(fd, o.timeout);
	for (i = 0; i < o.count; i++) {
		if (i > 0 && o.interval > 0)
			pause_secs(o.interval);
		if ((r = ping_once(fd, &o, i, &st)) < 0) {
			bad = 1;
			break;
		}
		bad |= r;
	}
	close(fd);
	printf("--- %s: %ld sent, %ld pong%s, %ld error%s", name, st.sent,
	    st.pongs, st.pongs == 1 ? "" : "s", st.errors,
	    st.errors == 1 ? "" : "s");
	if (st.pongs + st.errors > 0)
		printf("; rtt min/avg/max %.3f/%.3f/%.3f ms", st.min,
		    st.sum / (double)(st.pongs + st.errors), st.max);
	printf("\n");
	json_decref(o.params);
	return bad ? TOOL_EX_PROTOCOL : 0;
}

/*
 * iomodels-chat — an interactive client for the chat service (-s chat).
 *
 * The documents' selector client: one thread waits in poll(2) on the
 * terminal and on the socket at once; what is typed goes to the server,
 * what the server says goes to the terminal.  Without the multiplexing, a
 * client blocked reading the terminal would not see the room talk, and
 * one blocked on the socket would not let its user type.
 *
 * Pitfalls the documents' client has and this one avoids:
 *   - it sends with a blocking send() while not reading: if the server
 *     stops reading us (its backpressure) while we stop reading it, both
 *     wait forever.  Here the socket is non-blocking, typed input waits in
 *     a bounded queue written as the socket allows, and the terminal is
 *     not read while the queue is full; the socket is always read.
 *   - end of input: the queue is sent, then shutdown(SHUT_WR) tells the
 *     server, and the client leaves when the server closes (or after
 *     EOF_WAIT_MS), so nothing typed is lost: `cmd | iomodels-chat` works.
 * Exit status: 0 at the end of the input or when the server closes, 69
 * when the connection cannot be made, 74 when it fails, 64 for a bad
 * command line.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "net.h"
#include "tool.h"

#define PROG		"iomodels-chat"
#define QUEUE_MAX	(64 * 1024)	/* typed, not yet sent */
#define EOF_WAIT_MS	5000		/* after our EOF, wait this for the server's */

struct chat {
	int	 fd;
	uint8_t	 q[QUEUE_MAX];	/* typed, to send */
	size_t	 qoff, qlen;
	int	 in_eof;	/* standard input ended */
	int	 shut;		/* our side is shut down */
	int64_t	 deadline;	/* after shut: leave by then */
};

static void
usage(FILE *f)
{
	fprintf(f, "usage: %s [-n name] [-p port] [addr]\n", PROG);
	if (f != stdout)
		return;
	fprintf(f, "Talk in a chat room served by any iomodels server run "
	    "with -s chat.\n\n"
	    "  -n, --name NAME   choose a name (sends /nick NAME first)\n"
	    "  -p, --port PORT   port, when addr has none (default 7007)\n"
	    "  -h, --help        show this help and exit\n"
	    "      --version     show the version and exit\n"
	    "addr: 127.0.0.1 (default), [::1], HOST:PORT or unix:/path.\n"
	    "Lines typed go to everyone else; /help asks the server for its "
	    "commands.\nEnd of input (^D) or the server closing ends the "
	    "client.\n");
}

static void
queue(struct chat *c, const void *buf, size_t len)
{
	memcpy(c->q + c->qlen, buf, len);
	c->qlen += len;
}

/* Standard input is readable: take what fits in the queue. */
static void
on_stdin(struct chat *c)
{
	ssize_t n;

	if (c->qoff > 0) {
		memmove(c->q, c->q + c->qoff, c->qlen - c->qoff);
		c->qlen -= c->qoff;
		c->qoff = 0;
	}
	n = read(STDIN_FILENO, c->q + c->qlen, sizeof(c->q) - c->qlen);
	if (n > 0)
		c->qlen += (size_t)n;
	else if (n == 0 || (errno != EINTR && errno != EAGAIN))
		c->in_eof = 1;
}

/* The socket is writable: send what is queued.  0, or -errno. */
static int
on_writable(struct chat *c)
{
	ssize_t n;

	while (c->qoff < c->qlen) {
		n = write(c->fd, c->q + c->qoff, c->qlen - c->qoff);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? 0 : -errno;
		}
		c->qoff += (size_t)n;
	}
	c->qoff = c->qlen = 0;
	return 0;
}

/* The socket is readable: 1 while open, 0 at the server's close, -errno. */
static int
on_readable(struct chat *c)
{
	uint8_t buf[16384];
	ssize_t n;

	n = net_read_some(c->fd, buf, sizeof(buf));
	if (n == -EAGAIN)
		return 1;
	if (n <= 0)
		return (int)n;
	/*
	 * Blocking: a terminal or a pipe that does not take the output
	 * stops us reading the server, whose backpressure then applies.
	 */
	if (net_write_all(STDOUT_FILENO, buf, (size_t)n) < 0)
		return -EPIPE;
	return 1;
}

static int
run(struct chat *c)
{
	struct pollfd p[2];
	int nfds, timeout, r;

	for (;;) {
		if (c->in_eof && c->qoff == c->qlen && !c->shut) {
			/* All typed is sent: say so, and wait for the server. */
			(void)shutdown(c->fd, SHUT_WR);
			c->shut = 1;
			c->deadline = tool_now_ms() + EOF_WAIT_MS;
		}
		p[0].fd = c->fd;
		p[0].events = POLLIN | (c->qoff < c->qlen ? POLLOUT : 0);
		nfds = 1;
		if (!c->in_eof && c->qlen - c->qoff < sizeof(c->q)) {
			p[1].fd = STDIN_FILENO;
			p[1].events = POLLIN;
			nfds = 2;
		}
		timeout = -1;
		if (c->shut && (timeout = (int)(c->deadline - tool_now_ms())) <= 0)
			return 0;
		if (poll(p, (nfds_t)nfds, timeout) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			if ((r = on_readable(c)) <= 0) {
				if (r == 0 && !c->shut)
					fprintf(stderr, "%s: the server closed "
					    "the connection\n", PROG);
				return r;
			}
		}
		if ((p[0].revents & POLLOUT) && (r = on_writable(c)) < 0)
			return r;
		if (nfds == 2 && (p[1].revents & (POLLIN | POLLHUP | POLLERR)))
			on_stdin(c);
	}
}

static int
parse_port(const char *arg)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(arg, &end, 10);
	if (errno || end == arg || *end != '\0' || v < 1 || v > 65535)
		tool_usage_error("-p: '%s' is not a port from 1 to 65535", arg);
	return (int)v;
}

int
main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "name", 1, NULL, 'n' }, { "port", 1, NULL, 'p' },
		{ "help", 0, NULL, 'h' }, { "version", 0, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	static struct chat c;
	const char *addr = "127.0.0.1", *nick = NULL;
	char name[NET_ADDRSTRLEN];
	struct net_addr a;
	int ch, port = 7007, r;

	tool_init(PROG, usage);
	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":n:p:h", lo, NULL)) != -1) {
		switch (ch) {
		case 'n':
			nick = optarg;
			if (*nick == '\0' || strlen(nick) > 32 ||
			    strpbrk(nick, " \t\r\n"))
				tool_usage_error("-n: a name is 1 to 32 characters, "
				    "no blank");
			break;
		case 'p':
			port = parse_port(optarg);
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("%s (%s) %s\n", PROG, PACKAGE_NAME, PACKAGE_VERSION);
			return 0;
		case ':':
			tool_usage_error("option '%s' needs an argument",
			    argv[optind - 1]);
		default:
			tool_usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		addr = argv[optind++];
	if (optind < argc)
		tool_usage_error("unexpected argument '%s'", argv[optind]);
	if (net_parse_addr(addr, port, &a) < 0)
		tool_usage_error("not an address: '%s' (want 127.0.0.1, [::1], "
		    "HOST:PORT or unix:/path)", addr);
	net_addr_str(&a, name, sizeof(name));
	signal(SIGPIPE, SIG_IGN);	/* EPIPE, said, rather than death */
	if ((c.fd = net_connect(&a, NET_NONBLOCK)) < 0) {
		fprintf(stderr, "%s: cannot connect to %s: %s\n", PROG, name,
		    strerror(-c.fd));
		return TOOL_EX_UNAVAILABLE;
	}
	if (nick) {
		queue(&c, "/nick ", 6);
		queue(&c, nick, strlen(nick));
		queue(&c, "\n", 1);
	}
	r = run(&c);
	close(c.fd);
	if (r < 0) {
		fprintf(stderr, "%s: %s: %s\n", PROG, name, strerror(-r));
		return TOOL_EX_IOERR;
	}
	return 0;
}

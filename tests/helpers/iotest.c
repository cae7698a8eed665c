/*
 * iotest — the conformance suite's test client.
 *
 * One small program with a subcommand per behaviour the suite checks
 * (exact echo, full-duplex stream, pipelining, concurrency, half-close,
 * resets, backpressure, idle connections, churn, round trips).  Every
 * subcommand exits 0 when the server behaved, 1 with a one-line reason on
 * stderr when it did not, 2 on a bad command line.  Every wait is bounded
 * by a deadline (-T), so a broken server fails a test instead of hanging
 * it.
 *
 * The payload of a connection is a keyed pseudo-random stream: byte I of
 * connection C is a pure function of (seed(C), I).  Any byte received can
 * then be checked without keeping what was sent, connections never share
 * data (cross-talk shows up at the first foreign byte), and a lost,
 * duplicated or reordered chunk shows up at its first byte.
 *
 * One epoll loop drives every connection: non-blocking sockets, edge
 * triggered, each connection writing and reading at the same time, so the
 * client never deadlocks a server that echoes while it is still being fed.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "net.h"
#include "tool.h"

#define CHUNK		(64 * 1024)
#define EX_FAIL		1
#define EX_USAGE	2

/* The command line, shared by every subcommand. */
static struct {
	const char	*cmd;
	struct net_addr	 addr;
	const char	*addrstr;
	long		 n;		/* connections, messages, iterations */
	long		 m;		/* round trips per connection */
	long long	 size;		/* bytes; meaning depends on cmd */
	int		 size_set;
	const char	*data;		/* echo -d */
	const char	*file;		/* echo -f */
	int		 upper;		/* -U: expect the upper service */
	int		 timeout_ms;	/* -T */
	int		 rcvbuf;	/* -r */
	int		 sndbuf;	/* -w */
	uint64_t	 seed;		/* -S */
	int		 tolerant;	/* -k */
	int		 hold_ms;	/* -h */
	int		 hold_stdin;	/* -i */
	int		 expect_closed;	/* -E */
	int		 ping_ms;	/* -P */
	int		 stall_ms;	/* -t */
	int		 fill;		/* -F: halfclose once the server stops reading */
	int		 duration_ms;	/* -D: roundtrip for this long */
} opt = {
	.timeout_ms = 30000,
	.hold_ms = 120000,
	.ping_ms = 3000,
	.stall_ms = 1000,
};

static int64_t	deadline;		/* ms, monotonic */
static int64_t	stop_at;		/* roundtrip -D: last round trip starts */
static volatile sig_atomic_t released;

static int
remaining_ms(void)
{
	int64_t left = deadline - tool_now_ms();

	return left < 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
}

static void __attribute__((format(printf, 1, 2), noreturn))
fail(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "iotest %s: ", opt.cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (server %s, seed %" PRIu64 ")\n", opt.addrstr, opt.seed);
	/* _exit: a failure report, not followed by a leak report. */
	_exit(EX_FAIL);
}

static void
say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

/* ---- payloads --------------------------------------------------------- */

static uint64_t
mix(uint64_t x)
{
	/* splitmix64's finaliser: consecutive inputs, unrelated outputs. */
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t rng_state;

static uint64_t
rnd(uint64_t bound)
{
	return mix(rng_state++) % bound;
}

/* What a connection sends: a fixed buffer, or the keyed stream of SEED. */
struct src {
	const uint8_t	*buf;
	uint64_t	 seed;
};

static void
gen(const struct src *s, uint64_t off, uint8_t *out, size_t len)
{
	uint64_t v;
	unsigned i;

	if (s->buf != NULL) {
		memcpy(out, s->buf + off, len);
		return;
	}
	while (len > 0) {
		v = mix(s->seed + (off >> 3));
		for (i = off & 7; i < 8 && len > 0; i++, len--, off++)
			*out++ = (uint8_t)(v >> (8 * i));
	}
}

/* What must come back for what was sent (the echo or upper service). */
static void
expect(const struct src *s, uint64_t off, uint8_t *out, size_t len)
{
	size_t i;

	gen(s, off, out, len);
	if (opt.upper)
		for (i = 0; i < len; i++)
			out[i] = (uint8_t)toupper(out[i]);
}

/* ---- sockets ------------------------------------------------------------ */

static int
is_tcp(void)
{
	return opt.addr.ss.ss_family != AF_UNIX;
}

static void
set_timeo(int fd, int optname, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	if (ms == 0)
		tv.tv_usec = 1000;	/* 0 would mean "no timeout" */
	setsockopt(fd, SOL_SOCKET, optname, &tv, sizeof(tv));
}

/*
 * A non-blocking socket with a connect under way (*pending = 1) or done.
 * Unix sockets answer a full backlog with EAGAIN instead of queueing the
 * attempt: wait for room with a blocking connect bounded by SO_SNDTIMEO.
 * Returns the descriptor or -errno.
 */
static int
sock_connect(int *pending)
{
	int fd, one = 1, err;

	fd = socket(opt.addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (opt.rcvbuf > 0)
		net_set_bufsizes(fd, 0, opt.rcvbuf);
	if (opt.sndbuf > 0)
		net_set_bufsizes(fd, opt.sndbuf, 0);
	if (is_tcp())
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	*pending = 0;
	if (connect(fd, (struct sockaddr *)&opt.addr.ss, opt.addr.len) == 0)
		return fd;
	err = errno;
	if (err == EINPROGRESS) {
		*pending = 1;
		return fd;
	}
	if (err == EAGAIN && !is_tcp()) {
		net_set_nonblock(fd, 0);
		set_timeo(fd, SO_SNDTIMEO, remaining_ms());
		if (connect(fd, (struct sockaddr *)&opt.addr.ss, opt.addr.len) == 0) {
			net_set_nonblock(fd, 1);
			return fd;
		}
		err = errno == EINPROGRESS ? ETIMEDOUT : errno;
	}
	close(fd);
	return -err;
}

static int
sock_error(int fd)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return errno;
	return err;
}

/* poll() one descriptor until EVENTS or the deadline: 1, 0 (timeout). */
static int
wait_fd(int fd, short events, int ms)
{
	struct pollfd p = { .fd = fd, .events = events };
	int n;

	do
		n = poll(&p, 1, ms);
	while (n < 0 && errno == EINTR && !released);
	return n > 0;
}

/* A connected, non-blocking socket, or fail(). */
static int
connect_one(const char *what)
{
	int fd, pending, err;

	fd = sock_connect(&pending);
	if (fd < 0)
		fail("%s: connect: %s", what, strerror(-fd));
	if (pending) {
		if (!wait_fd(fd, POLLOUT, remaining_ms()))
			fail("%s: connect timed out", what);
		if ((err = sock_error(fd)) != 0)
			fail("%s: connect: %s", what, strerror(err));
	}
	return fd;
}

/* ---- the connection engine ---------------------------------------------- */

enum { C_CONNECTING = 1, C_OPEN, C_DONE, C_FAILED };

/* How a connection ended, for tolerant runs. */
enum { R_NONE, R_SERVED, R_CLOSED, R_PENDING };

struct client {
	int		 fd;
	unsigned	 id;
	int		 state;
	int		 result;
	struct src	 src;
	uint64_t	 len;		/* bytes to send, and to get back */
	uint64_t	 tx, rx;
	uint64_t	 window;	/* most bytes in flight, 0 = no limit */
	uint64_t	 msize;		/* fixed message size: one write each */
	const uint64_t	*ends;		/* pipeline: end offset of each message */
	size_t		 nends, txmsg;
	int		 shut_early;	/* shutdown(SHUT_WR) once all is sent */
	int		 lazy_read;	/* read only once shut, or when writes block */
	int		 blocked;	/* the last write would have blocked */
	int		 slow_read;	/* read a window at a time, 2 ms apart */
	int		 keep;		/* stay open when done (no shutdown) */
	int		 shut;
	char		 why[160];	/* failure, for tolerant runs */
};

struct engine {
	int		 epfd;
	unsigned	 left;		/* connections not yet done */
	int		 tolerant;
	uint8_t		 buf[CHUNK], want[CHUNK];
};

static struct engine eng;

static void
engine_init(void)
{
	eng.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (eng.epfd < 0)
		fail("epoll_create1: %s", strerror(errno));
}

static size_t
msg_of(const struct client *c, uint64_t off)
{
	size_t lo = 0, hi = c->nends;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (c->ends[mid] <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static const char *
where(const struct client *c, uint64_t off)
{
	static char s[96];

	if (c->ends != NULL)
		snprintf(s, sizeof(s), "client %u, message %zu of %zu, byte %" PRIu64,
		    c->id, msg_of(c, off) + 1, c->nends, off);
	else if (c->msize != 0)
		snprintf(s, sizeof(s), "client %u, round trip %" PRIu64 ", byte %" PRIu64,
		    c->id, off / c->msize + 1, off);
	else
		snprintf(s, sizeof(s), "client %u, byte %" PRIu64 " of %" PRIu64,
		    c->id, off, c->len);
	return s;
}

/* Record a failure: fatal unless the run is tolerant. */
static void __attribute__((format(printf, 3, 4)))
client_fail(struct client *c, int result, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->why, sizeof(c->why), fmt, ap);
	va_end(ap);
	if (!eng.tolerant)
		fail("%s", c->why);
	c->state = C_FAILED;
	c->result = result;
	close(c->fd);
	c->fd = -1;
	eng.left--;
}

static void
client_done(struct client *c)
{
	c->state = C_DONE;
	c->result = R_SERVED;
	if (!c->keep) {
		close(c->fd);
		c->fd = -1;
	}
	eng.left--;
}

/* How much the next write may carry. */
static size_t
tx_room(const struct client *c)
{
	uint64_t end = c->len;

	if (c->window != 0 && c->tx - c->rx >= c->window)
		return 0;
	if (c->window != 0 && c->rx + c->window < end)
		end = c->rx + c->window;
	if (c->ends != NULL && c->txmsg < c->nends && c->ends[c->txmsg] < end)
		end = c->ends[c->txmsg];
	if (c->msize != 0 && (c->tx / c->msize + 1) * c->msize < end)
		end = (c->tx / c->msize + 1) * c->msize;
	return end - c->tx > CHUNK ? CHUNK : (size_t)(end - c->tx);
}

/* Returns 1 on progress, 0 when blocked, -1 when the connection ended. */
static int
client_write(struct client *c)
{
	size_t n = tx_room(c);
	ssize_t w;

	if (n == 0 || c->shut)
		return 0;
	gen(&c->src, c->tx, eng.buf, n);
	w = write(c->fd, eng.buf, n);
	if (w < 0) {
		if (errno == EAGAIN || errno == EINTR) {
			c->blocked = 1;
			return 0;
		}
		client_fail(c, R_CLOSED, "%s: write: %s", where(c, c->tx), strerror(errno));
		return -1;
	}
	c->tx += (uint64_t)w;
	while (c->ends != NULL && c->txmsg < c->nends && c->ends[c->txmsg] <= c->tx)
		c->txmsg++;
	return 1;
}

static int
client_verify(struct client *c, size_t n)
{
	size_t i;

	if (c->rx + n > c->len) {
		client_fail(c, R_CLOSED, "client %u: %" PRIu64 " bytes came back for %" PRIu64 " sent",
		    c->id, c->rx + n, c->len);
		return -1;
	}
	expect(&c->src, c->rx, eng.want, n);
	if (memcmp(eng.buf, eng.want, n) == 0)
		return 0;
	for (i = 0; eng.buf[i] == eng.want[i]; i++)
		;
	client_fail(c, R_CLOSED, "%s: got 0x%02x, want 0x%02x",
	    where(c, c->rx + i), eng.buf[i], eng.want[i]);
	return -1;
}

static int
client_read(struct client *c)
{
	ssize_t r;

	if (c->slow_read)
		usleep(2000);
	r = read(c->fd, eng.buf, sizeof(eng.buf));
	if (r < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		client_fail(c, R_CLOSED, "%s: read: %s", where(c, c->rx), strerror(errno));
		return -1;
	}
	if (r == 0) {
		if (c->shut && c->rx == c->len) {
			client_done(c);
			return -1;
		}
		client_fail(c, R_CLOSED, "%s: the server closed the connection early (%" PRIu64
		    " of %" PRIu64 " bytes echoed)", where(c, c->rx), c->rx, c->len);
		return -1;
	}
	if (client_verify(c, (size_t)r) < 0)
		return -1;
	c->rx += (uint64_t)r;
	return 1;
}

static void
client_open(struct client *c)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET };
	int pending;

	c->fd = sock_connect(&pending);
	if (c->fd < 0) {
		int err = -c->fd;

		c->fd = -1;
		if (err == EMFILE || err == ENFILE)
			fail("client %u: socket: %s (raise ulimit -n)", c->id, strerror(err));
		client_fail(c, R_CLOSED, "client %u: connect: %s", c->id, strerror(err));
		return;
	}
	c->state = pending ? C_CONNECTING : C_OPEN;
	ev.data.ptr = c;
	if (epoll_ctl(eng.epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
		fail("epoll_ctl: %s", strerror(errno));
}

/* Drive C as far as it goes without blocking. */
static void
client_run(struct client *c)
{
	int progress, err;

	if (c->state == C_CONNECTING) {
		if ((err = sock_error(c->fd)) != 0) {
			client_fail(c, R_CLOSED, "client %u: connect: %s", c->id, strerror(err));
			return;
		}
		c->state = C_OPEN;
	}
	if (c->state != C_OPEN)
		return;
	do {
		progress = 0;
		/* -D: between two round trips, past the time: the last one. */
		if (stop_at != 0 && c->msize != 0 && c->rx == c->tx &&
		    c->tx < c->len && tool_now_ms() >= stop_at)
			c->len = c->tx;
		switch (client_write(c)) {
		case -1:
			return;
		case 1:
			progress = 1;
		}
		if (!c->shut && c->tx == c->len && (c->shut_early || c->rx == c->len)) {
			if (c->keep) {
				if (c->rx == c->len) {
					client_done(c);
					return;
				}
			} else {
				if (shutdown(c->fd, SHUT_WR) < 0) {
					client_fail(c, R_CLOSED, "client %u: shutdown: %s",
					    c->id, strerror(errno));
					return;
				}
				c->shut = 1;
			}
		}
		if (c->lazy_read && !c->shut && !c->blocked)
			continue;
		c->blocked = 0;
		switch (client_read(c)) {
		case -1:
			return;
		case 1:
			progress = 1;
		}
	} while (progress);
}

static const char *
client_status(const struct client *c)
{
	static char s[200];

	snprintf(s, sizeof(s), "client %u %s, sent %" PRIu64 "/%" PRIu64
	    ", echoed %" PRIu64 "/%" PRIu64 "%s", c->id,
	    c->state == C_CONNECTING ? "still connecting" : "connected",
	    c->tx, c->len, c->rx, c->len, c->shut ? ", write side shut" : "");
	return s;
}

/*
 * Run connections (already open or to open now) until each is done or the
 * deadline.  Returns the number left unfinished (tolerant runs only: they
 * are marked R_PENDING).
 */
static unsigned
engine_run(struct client *cs, size_t n, int open)
{
	struct epoll_event evs[256];
	unsigned stuck = 0;
	size_t i;
	int k, j;

	for (i = 0; i < n; i++) {
		if (cs[i].state == C_DONE && cs[i].fd >= 0)
			cs[i].state = C_OPEN;	/* kept open, reused */
		else if (cs[i].state == C_FAILED)
			continue;
		eng.left++;
		if (open)
			client_open(&cs[i]);
	}
	for (i = 0; i < n; i++)
		if (cs[i].state == C_OPEN || cs[i].state == C_CONNECTING)
			client_run(&cs[i]);
	while (eng.left > 0) {
		k = epoll_wait(eng.epfd, evs, 256, remaining_ms());
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			fail("epoll_wait: %s", strerror(errno));
		if (k == 0)
			break;
		for (j = 0; j < k; j++)
			client_run(evs[j].data.ptr);
	}
	if (eng.left == 0)
		return 0;
	for (i = 0; i < n; i++) {
		struct client *c = &cs[i];

		if (c->state != C_OPEN && c->state != C_CONNECTING)
			continue;
		if (!eng.tolerant)
			fail("timed out after %d ms: %u of %zu clients unfinished; %s",
			    opt.timeout_ms, eng.left, n, client_status(c));
		snprintf(c->why, sizeof(c->why), "%s", client_status(c));
		c->result = R_PENDING;
		c->state = C_FAILED;
		close(c->fd);
		c->fd = -1;
		stuck++;
	}
	eng.left = 0;
	return stuck;
}

/*
 * The few allocations a run makes live until it ends; they are freed
 * then, so that a sanitizer build's leak check stays quiet.
 */
static void	*allocs[8];
static size_t	 nallocs;

static void *
xcalloc(size_t n, size_t size)
{
	void *p;

	if (nallocs == sizeof(allocs) / sizeof(allocs[0]) ||
	    (p = calloc(n ? n : 1, size)) == NULL)
		fail("out of memory");
	return allocs[nallocs++] = p;
}

static void
free_all(void)
{
	while (nallocs > 0)
		free(allocs[--nallocs]);
}

static struct client *
clients_new(size_t n)
{
	struct client *cs = xcalloc(n, sizeof(*cs));
	size_t i;

	for (i = 0; i < n; i++) {
		cs[i].fd = -1;
		cs[i].id = (unsigned)i + 1;
		cs[i].src.seed = mix(opt.seed + i);
	}
	return cs;
}

/* ---- subcommands ---------------------------------------------------------- */

static uint8_t *
slurp(const char *path, size_t *len)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t cap = 0, n;

	if (f == NULL) {
		fprintf(stderr, "iotest: %s: %s\n", path, strerror(errno));
		exit(EX_USAGE);
	}
	*len = 0;
	do {
		if (*len == cap) {
			cap = cap ? cap * 2 : 65536;
			if ((buf = realloc(buf, cap)) == NULL)
				fail("out of memory");
		}
		n = fread(buf + *len, 1, cap - *len, f);
		*len += n;
	} while (n > 0);
	if (f != stdin)
		fclose(f);
	if (nallocs == sizeof(allocs) / sizeof(allocs[0]))
		fail("out of memory");
	return allocs[nallocs++] = buf;
}

/* echo: send the given bytes, read exactly them back, then EOF. */
static int
cmd_echo(void)
{
	struct client *c = clients_new(1);
	static const char dflt[] = "hello, echo\n";
	size_t len;

	if (opt.file != NULL)
		c->src.buf = slurp(opt.file, &len);
	else if (opt.data != NULL) {
		c->src.buf = (const uint8_t *)opt.data;
		len = strlen(opt.data);
	} else {
		c->src.buf = (const uint8_t *)dflt;
		len = sizeof(dflt) - 1;
	}
	if (len == 0)
		fail("nothing to send");
	c->len = len;
	engine_run(c, 1, 1);
	say("echo: %zu bytes back intact", len);
	return 0;
}

/* stream: SIZE random bytes, written and read at the same time. */
static int
cmd_stream(void)
{
	struct client *c = clients_new(1);
	int64_t t0 = tool_now_ms();

	c->len = opt.size_set ? (uint64_t)opt.size : 16u << 20;
	engine_run(c, 1, 1);
	say("stream: %" PRIu64 " bytes full duplex in %" PRId64 " ms", c->len, tool_now_ms() - t0);
	return 0;
}

/* pipeline: N messages of random sizes, one write each, back to back. */
static int
cmd_pipeline(void)
{
	struct client *c = clients_new(1);
	long n = opt.n ? opt.n : 20000;
	uint64_t max = opt.size_set ? (uint64_t)opt.size : 512, off = 0;
	uint64_t *ends = xcalloc((size_t)n, sizeof(*ends));
	long i;

	for (i = 0; i < n; i++) {
		off += 1 + rnd(max);
		ends[i] = off;
	}
	c->ends = ends;
	c->nends = (size_t)n;
	c->len = off;
	engine_run(c, 1, 1);
	say("pipeline: %ld messages (%" PRIu64 " bytes) back in order", n, off);
	return 0;
}

/* concurrent: N clients at once, random sizes, each its own data. */
static int
cmd_concurrent(void)
{
	long n = opt.n ? opt.n : 300, i;
	uint64_t max = opt.size_set ? (uint64_t)opt.size : 128 * 1024, total = 0;
	struct client *cs = clients_new((size_t)n);
	int64_t t0 = tool_now_ms();

	for (i = 0; i < n; i++) {
		cs[i].len = 1 + rnd(max);
		total += cs[i].len;
	}
	engine_run(cs, (size_t)n, 1);
	say("concurrent: %ld clients, %" PRIu64 " bytes, no cross-talk, %" PRId64 " ms",
	    n, total, tool_now_ms() - t0);
	return 0;
}

/* halfclose: send, shut the write side at once, expect all of it, then EOF. */
static int cmd_halfclose_fill(void);

static int
cmd_halfclose(void)
{
	struct client *c;

	if (opt.fill)
		return cmd_halfclose_fill();
	c = clients_new(1);

	c->len = opt.size_set ? (uint64_t)opt.size : 1u << 20;
	c->shut_early = 1;
	/*
	 * Read nothing before the shutdown unless writing would block: the
	 * server then sees EOF while its echo is still queued behind our
	 * full receive window (make it small with -r), and must flush it.
	 */
	c->lazy_read = 1;
	engine_run(c, 1, 1);
	say("halfclose: %" PRIu64 " bytes echoed after shutdown(SHUT_WR), then EOF", c->len);
	return 0;
}

/* Close with SO_LINGER 0: the peer gets a RST instead of a FIN. */
static void
reset_close(int fd)
{
	if (net_set_linger0(fd) < 0)
		fail("SO_LINGER: %s", strerror(errno));
	close(fd);
}

/* Write what fits of LEN pseudo-random bytes without blocking. */
static void
push(int fd, uint64_t seed, uint64_t len)
{
	struct src s = { .seed = seed };
	uint64_t off = 0;
	ssize_t w;

	while (off < len) {
		size_t n = len - off > CHUNK ? CHUNK : (size_t)(len - off);

		gen(&s, off, eng.buf, n);
		w = write(fd, eng.buf, n);
		if (w <= 0)
			break;
		off += (uint64_t)w;
	}
}

/*
 * resetstorm: N connections in waves; each sends SIZE bytes without
 * reading (so the server has output pending) and is then reset.  One in
 * four resets right after connecting, one in four after some echo came
 * back.  Then the server must still serve a client exactly.
 */
static int
cmd_resetstorm(void)
{
	long n = opt.n ? opt.n : 200, i, wave = 50, w;
	uint64_t size = opt.size_set ? (uint64_t)opt.size : 1u << 20;
	int fds[50];
	struct client *c;

	for (i = 0; i < n; i += wave) {
		long k = n - i < wave ? n - i : wave;

		for (w = 0; w < k; w++)
			fds[w] = connect_one("storm");
		for (w = 0; w < k; w++)
			if ((i + w) % 4 != 0)
				push(fds[w], mix(opt.seed + (uint64_t)(i + w)), size);
		for (w = 0; w < k; w++) {
			/* Bounded: a server that serves one client at a time never answers. */
			if ((i + w) % 4 == 1)
				wait_fd(fds[w], POLLIN, 200);
			reset_close(fds[w]);
		}
	}
	c = clients_new(1);
	c->len = 256 * 1024;
	engine_run(c, 1, 1);
	say("resetstorm: %ld connections reset mid-stream; the server still serves", n);
	return 0;
}

static void
on_release(int sig)
{
	(void)sig;
	released = 1;
}

static void
catch_release(void)
{
	struct sigaction sa = { .sa_handler = on_release };

	/* No SA_RESTART: poll() must wake up to see the flag. */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
}

/* Hold until SIGTERM/SIGINT/SIGUSR1, stdin EOF (-i), or -h ms. */
static void
hold(void)
{
	int64_t until = tool_now_ms() + opt.hold_ms;
	struct pollfd p = { .fd = opt.hold_stdin ? 0 : -1, .events = POLLIN };
	char c[256];

	while (!released) {
		int64_t left = until - tool_now_ms();

		if (left <= 0)
			break;
		if (poll(&p, 1, left > 1000 ? 1000 : (int)left) > 0 &&
		    read(0, c, sizeof(c)) <= 0)
			break;
	}
}

/*
 * Send on C without reading until the server stops reading: no write
 * progress for -t ms.  More than LIMIT bytes means no backpressure.
 */
static void
fill(struct client *c, uint64_t limit)
{
	ssize_t w;

	for (;;) {
		if (c->tx >= limit)
			fail("%" PRIu64 " bytes sent and the server still reads:"
			    " no backpressure", c->tx);
		gen(&c->src, c->tx, eng.buf, CHUNK);
		w = write(c->fd, eng.buf, CHUNK);
		if (w > 0) {
			c->tx += (uint64_t)w;
			continue;
		}
		if (w < 0 && errno != EAGAIN && errno != EINTR)
			fail("write after %" PRIu64 " bytes: %s", c->tx, strerror(errno));
		if (!wait_fd(c->fd, POLLOUT, opt.stall_ms))
			return;
		if (remaining_ms() == 0)
			fail("the server neither read %" PRIu64 " bytes nor stalled in time",
			    c->tx);
	}
}

/* Hand a connection made by connect_one() to the engine: read C->tx back. */
static void
drain(struct client *c)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
		.data.ptr = c };

	c->len = c->tx;
	c->state = C_OPEN;
	if (epoll_ctl(eng.epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
		fail("epoll_ctl: %s", strerror(errno));
	engine_run(c, 1, 0);
}

/*
 * halfclose -F: fill the server until it stops reading, shut down, and
 * only then read, a small window at a time with pauses, so that the
 * server's socket send buffer is full whenever it reads: it then meets EOF
 * with output still queued in its own memory and must flush all of it.
 * That is the case a naive "EOF: close" gets wrong, and one a plain
 * halfclose rarely reaches on loopback, where the kernel's send buffer
 * absorbs megabytes.
 */
static int
cmd_halfclose_fill(void)
{
	struct client *c = clients_new(1);

	if (opt.rcvbuf == 0)
		opt.rcvbuf = 64 * 1024;	/* no autotuned megabytes on our side */
	c->slow_read = 1;
	c->fd = connect_one("halfclose");
	fill(c, opt.size_set ? (uint64_t)opt.size : 256u << 20);
	if (shutdown(c->fd, SHUT_WR) < 0)
		fail("shutdown: %s", strerror(errno));
	c->shut = 1;
	drain(c);
	say("halfclose: %" PRIu64 " bytes queued in the server at shutdown(SHUT_WR),"
	    " all echoed, then EOF", c->len);
	return 0;
}

/*
 * slowreader: send without reading until the server stops reading, say
 * "blocked BYTES", hold, then read the echo of everything back (the server
 * must resume once drained) and expect EOF.
 */
static int
cmd_slowreader(void)
{
	struct client *c = clients_new(1);

	catch_release();
	c->fd = connect_one("slow reader");
	fill(c, opt.size_set ? (uint64_t)opt.size : 256u << 20);
	say("blocked %" PRIu64, c->tx);
	hold();
	deadline = tool_now_ms() + opt.timeout_ms;
	drain(c);
	say("drained %" PRIu64 " bytes intact", c->len);
	return 0;
}

/*
 * idle: open N connections, echo one byte on each (so the server has
 * accepted them all), say "ready served=S closed=C pending=P", hold, then
 * check they are all still served (or, with -E, that the server closed
 * them all).  Without -k every connection must be served.
 */
#define IDLE_WAVE	256

static int
cmd_idle(void)
{
	long n = opt.n ? opt.n : 2000, i;
	struct client *cs = clients_new((size_t)n);
	unsigned count[4] = { 0 };
	const char *first = NULL;
	int64_t end;

	catch_release();
	eng.tolerant = opt.tolerant;
	for (i = 0; i < n; i++) {
		cs[i].len = 1;
		cs[i].keep = 1;
	}
	/*
	 * Open them in waves smaller than the servers' default backlog (511).
	 * Thousands of handshakes at once overflow the accept queue of a
	 * slow acceptor (a fork per connection on a busy machine): the
	 * kernel then drops SYNs and final ACKs, and with syncookies on, a
	 * data segment that arrives for a handshake it no longer remembers
	 * is answered with a reset.  That is TCP's listen queue, not the
	 * model; what is tested here is holding the connections.
	 */
	end = deadline;
	for (i = 0; i < n; i += IDLE_WAVE) {
		/*
		 * The pings get their own, shorter deadline when some may
		 * stay unanswered: each wave its own.
		 */
		deadline = end;
		if (opt.tolerant && opt.ping_ms < remaining_ms())
			deadline = tool_now_ms() + opt.ping_ms;
		engine_run(cs + i, (size_t)(n - i < IDLE_WAVE ? n - i : IDLE_WAVE), 1);
	}
	for (i = 0; i < n; i++) {
		count[cs[i].result]++;
		if (cs[i].result != R_SERVED && first == NULL)
			first = cs[i].why;
	}
	say("ready served=%u closed=%u pending=%u", count[R_SERVED], count[R_CLOSED],
	    count[R_PENDING]);
	if (first != NULL)
		fprintf(stderr, "iotest idle: first unserved: %s\n", first);
	hold();

	deadline = tool_now_ms() + opt.timeout_ms;
	if (opt.expect_closed) {
		for (i = 0; i < n; i++) {
			struct client *c = &cs[i];
			ssize_t r;

			if (c->fd < 0)
				continue;
			if (!wait_fd(c->fd, POLLIN, remaining_ms()))
				fail("client %u: still open %d ms after the release",
				    c->id, opt.timeout_ms);
			r = read(c->fd, eng.buf, sizeof(eng.buf));
			if (r > 0)
				fail("client %u: %zd unexpected bytes instead of a close",
				    c->id, r);
			close(c->fd);
			c->fd = -1;
		}
		say("closed: the server closed all %u connections", count[R_SERVED]);
		return 0;
	}
	eng.tolerant = 0;
	for (i = 0; i < n; i++)
		if (cs[i].result == R_SERVED) {
			cs[i].len = 2;		/* one more byte of the same stream */
			cs[i].keep = 0;
		}
	engine_run(cs, (size_t)n, 0);
	say("released: %u connections still served", count[R_SERVED]);
	return 0;
}

/* churn: connect, echo, close, N times in a row. */
static int
cmd_churn(void)
{
	long n = opt.n ? opt.n : 1000, i;
	uint64_t size = opt.size_set ? (uint64_t)opt.size : 64;
	struct client *c = clients_new(1);
	int64_t t0 = tool_now_ms();

	for (i = 0; i < n; i++) {
		memset(c, 0, sizeof(*c));
		c->fd = -1;
		c->id = (unsigned)i + 1;
		c->src.seed = mix(opt.seed + (uint64_t)i);
		c->len = size;
		engine_run(c, 1, 1);
	}
	say("churn: %ld connections in %" PRId64 " ms", n, tool_now_ms() - t0);
	return 0;
}

/* roundtrip: N connections x M round trips of SIZE bytes, closed loop. */
static int
cmd_roundtrip(void)
{
	long n = opt.n ? opt.n : 1, m = opt.m ? opt.m : 1000, i;
	uint64_t size = opt.size_set ? (uint64_t)opt.size : 128;
	struct client *cs = clients_new((size_t)n);
	int64_t t0, ms;
	double secs;

	uint64_t total = 0;

	if (opt.duration_ms != 0 && opt.m == 0)
		m = 100000000;
	for (i = 0; i < n; i++) {
		cs[i].msize = size;
		cs[i].window = size;
		cs[i].len = size * (uint64_t)m;
	}
	t0 = tool_now_ms();
	if (opt.duration_ms != 0)
		stop_at = t0 + opt.duration_ms;
	engine_run(cs, (size_t)n, 1);
	ms = tool_now_ms() - t0;
	secs = ms > 0 ? ms / 1000.0 : 0.001;
	for (i = 0; i < n; i++)
		total += cs[i].len / size;
	say("round trips: %" PRIu64 " in %.3f s (%.0f/s), %ld connections x %" PRIu64
	    " bytes", total, secs, (double)total / secs, n, size);
	return 0;
}

/* ---- main ------------------------------------------------------------------- */

static const struct {
	const char	*name;
	int		(*fn)(void);
	const char	*help;
} cmds[] = {
	{ "echo", cmd_echo, "send -d TEXT or -f FILE, read exactly it back, then EOF" },
	{ "stream", cmd_stream, "-s bytes (16m) random binary, full duplex" },
	{ "pipeline", cmd_pipeline, "-n messages (20000) of 1..-s bytes (512), one write each" },
	{ "concurrent", cmd_concurrent, "-n clients (300) of 1..-s bytes (128k) at once" },
	{ "halfclose", cmd_halfclose, "-s bytes (1m), shutdown(SHUT_WR) once sent, echo then EOF;\n"
	    "              -F: fill until the server stops reading, then shut down" },
	{ "resetstorm", cmd_resetstorm, "-n connections (200) reset mid-stream, then a check" },
	{ "slowreader", cmd_slowreader, "send without reading until blocked, hold, drain" },
	{ "idle", cmd_idle, "-n idle connections (2000), \"ready ...\", hold, check" },
	{ "churn", cmd_churn, "-n times (1000) connect, echo -s bytes (64), close" },
	{ "roundtrip", cmd_roundtrip, "-n connections x -m round trips of -s bytes (128),\n"
	    "              or as many as -D SECS allows" },
};

static void __attribute__((noreturn))
usage(const char *why)
{
	size_t i;

	if (why != NULL)
		fprintf(stderr, "iotest: %s\n", why);
	fprintf(stderr,
	    "usage: iotest COMMAND [options] ADDR\n"
	    "  ADDR: 127.0.0.1:PORT, [::1]:PORT or unix:/path\n"
	    "options: -n N  -m M  -s BYTES[k|m]  -d TEXT  -f FILE  -U (upper service)\n"
	    "  -T SECS timeout (30)  -r/-w BYTES client SO_RCVBUF/SO_SNDBUF\n"
	    "  -S SEED  -k (idle: tolerate unserved)  -E (idle: expect closes)\n"
	    "  -h SECS hold at most (120)  -i (hold until stdin EOF)\n"
	    "  -P MS idle ping wait with -k (3000)  -t MS write stall = blocked (1000)\n"
	    "commands:\n");
	for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		fprintf(stderr, "  %-11s %s\n", cmds[i].name, cmds[i].help);
	exit(EX_USAGE);
}

static long long
num(const char *s, long long min, long long max)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (end != s && (*end == 'k' || *end == 'K'))
		v *= 1024, end++;
	else if (end != s && (*end == 'm' || *end == 'M'))
		v *= 1024 * 1024, end++;
	if (errno || end == s || *end != '\0' || v < min || v > max) {
		fprintf(stderr, "iotest: bad number '%s' (%lld..%lld)\n", s, min, max);
		exit(EX_USAGE);
	}
	return v;
}

int
main(int argc, char **argv)
{
	size_t i;
	int ch;

	if (argc < 2)
		usage(NULL);
	opt.cmd = argv[1];
	opt.seed = (uint64_t)getpid() ^ (uint64_t)time(NULL) << 16;
	optind = 2;
	while ((ch = getopt(argc, argv, "n:m:s:d:f:UT:r:w:S:kEh:iP:t:FD:")) != -1) {
		switch (ch) {
		case 'n': opt.n = (long)num(optarg, 1, 10000000); break;
		case 'm': opt.m = (long)num(optarg, 1, 100000000); break;
		case 's': opt.size = num(optarg, 1, 1LL << 40); opt.size_set = 1; break;
		case 'd': opt.data = optarg; break;
		case 'f': opt.file = optarg; break;
		case 'U': opt.upper = 1; break;
		case 'T': opt.timeout_ms = (int)num(optarg, 1, 3600) * 1000; break;
		case 'r': opt.rcvbuf = (int)num(optarg, 1, 1 << 30); break;
		case 'w': opt.sndbuf = (int)num(optarg, 1, 1 << 30); break;
		case 'S': opt.seed = (uint64_t)num(optarg, 0, INT64_MAX); break;
		case 'k': opt.tolerant = 1; break;
		case 'E': opt.expect_closed = 1; break;
		case 'h': opt.hold_ms = (int)num(optarg, 0, 3600) * 1000; break;
		case 'i': opt.hold_stdin = 1; break;
		case 'P': opt.ping_ms = (int)num(optarg, 1, 3600000); break;
		case 'F': opt.fill = 1; break;
		case 'D': opt.duration_ms = (int)num(optarg, 1, 3600) * 1000; break;
		case 't': opt.stall_ms = (int)num(optarg, 1, 3600000); break;
		default: usage(NULL);
		}
	}
	if (optind != argc - 1)
		usage("one address expected after the options");
	opt.addrstr = argv[optind];
	if (net_parse_addr(opt.addrstr, -1, &opt.addr) < 0)
		usage("bad address (want HOST:PORT, [V6]:PORT or unix:/path)");
	rng_state = mix(opt.seed ^ 0x5eed);
	signal(SIGPIPE, SIG_IGN);
	deadline = tool_now_ms() + opt.timeout_ms;
	engine_init();
	for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(cmds[i].name, opt.cmd) == 0) {
			ch = cmds[i].fn();
			free_all();
			return ch;
		}
	usage("unknown command");
}

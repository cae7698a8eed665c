/*
 * echo-bench — the load generator the IO-model comparison is measured with.
 *
 * Closed loop: N connections, each with D messages in flight; a new message
 * leaves when an echo completes.  Open loop (--rate): messages leave on a
 * fixed schedule whatever the server does, and latency is counted from the
 * time a message was *meant* to leave, so a server that stalls cannot hide
 * its stall by slowing the client down (no coordinated omission).  Churn
 * (--churn): connect, echo one message, close, again: connections/second.
 * Idle connections (--idle) each echo one byte, so the server has really
 * accepted them, and then stay silent for the whole run.
 *
 * Cost: each thread is one level-triggered epoll loop over its share of the
 * connections.  Every message is SIZE bytes cut from a per-connection
 * offset into one shared pseudo-random pattern, so sending needs no copy
 * and checking an echo is one memcmp against the pattern; a connection
 * carries no buffer of its own.  With one message in flight a connection
 * never reads twice per echo: it knows how many bytes are due.
 *
 * Pitfalls handled: short reads and writes (a message may leave or arrive
 * in pieces), EINTR, non-blocking connect (EINPROGRESS; EAGAIN on a full
 * unix-socket backlog), connection errors and mismatches counted rather
 * than fatal.  Given --server-pid, the server's CPU time, times scheduled
 * and proportional memory are read from /proc for its whole process tree,
 * and --syscalls runs perf(1) on that tree for the measured window only.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>

#ifdef BENCH_WITH_URING
#include <liburing.h>
#endif

#include "net.h"

#define BENCH_PROG	"echo-bench"
#define BENCH_PORT	7007
#define BENCH_EX_USAGE	64
#define BENCH_EX_UNAVAILABLE 69

/*
 * The pattern is a prime number of bytes long, so consecutive messages of
 * any size start at different offsets and a server that swapped, dropped
 * or repeated a message produces bytes we did not expect.  It is followed
 * by a copy of its first BENCH_WINDOW bytes, so any window of up to that
 * many bytes starting anywhere in it is contiguous.
 */
#define BENCH_PATLEN	65521
#define BENCH_WINDOW	(64 * 1024)
#define BENCH_RBUF	(64 * 1024)
/*
 * Connections being set up at once, per thread, counted until the server
 * has echoed the hello byte, i.e. accepted them.  A connect completes in
 * the kernel before the server accepts; launching thousands at once
 * overflows a busy server's accept queue, and each dropped handshake
 * then waits out TCP's retransmission backoff (1, 2, 4, 8 ... s).
 */
#define BENCH_CONNECTING_MAX 256	/* well under a listen backlog of 511 */
#define BENCH_DRAIN_NS	(1 * NS)	/* wait for late echoes after the end */
#define BENCH_PERF_MAX_TASKS 2048
#define NS		1000000000LL

/* ---- latency histogram --------------------------------------------------- */

/*
 * Log-linear buckets, as in HdrHistogram: values below 2^HIST_SUB are
 * exact; above, every power of two is cut into 2^HIST_SUB equal buckets,
 * so any value is known within 1/128 (0.8%) over the whole 64-bit range,
 * in a fixed 58 KiB per thread.
 */
#define HIST_SUB	7
#define HIST_N		((64 - HIST_SUB + 1) << HIST_SUB)

struct hist {
	uint64_t	count[HIST_N];
	uint64_t	total;
	uint64_t	max;
	double		sum;
};

static unsigned
hist_index(uint64_t v)
{
	unsigned shift;

	if (v < (1u << HIST_SUB))
		return (unsigned)v;
	shift = 63 - __builtin_clzll(v) - HIST_SUB;
	return ((shift + 1) << HIST_SUB) +
	    (unsigned)((v >> shift) - (1u << HIST_SUB));
}

/* The middle of bucket I. */
static double
hist_value(unsigned i)
{
	unsigned shift;
	uint64_t lo;

	if (i < (1u << HIST_SUB))
		return i;
	shift = (i >> HIST_SUB) - 1;
	lo = ((uint64_t)(i & ((1u << HIST_SUB) - 1)) + (1u << HIST_SUB)) << shift;
	return lo + ((1ULL << shift) - 1) / 2.0;
}

static void
hist_add(struct hist *h, uint64_t v)
{
	h->count[hist_index(v)]++;
	h->total++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
}

static void
hist_merge(struct hist *to, const struct hist *from)
{
	unsigned i;

	for (i = 0; i < HIST_N; i++)
		to->count[i] += from->count[i];
	to->total += from->total;
	to->sum += from->sum;
	if (from->max > to->max)
		to->max = from->max;
}

/* The value at quantile Q, in the same unit as what was added. */
static double
hist_quantile(const struct hist *h, double q)
{
	uint64_t want, cum = 0;
	unsigned i;
	double v;

	if (h->total == 0)
		return NAN;
	want = (uint64_t)ceil(q * (double)h->total);
	if (want == 0)
		want = 1;
	for (i = 0; i < HIST_N; i++) {
		cum += h->count[i];
		if (cum >= want)
			break;
	}
	v = hist_value(i);
	return v > (double)h->max ? (double)h->max : v;
}

/* ---- options ------------------------------------------------------------ */

enum bench_mode { MODE_CLOSED, MODE_OPEN, MODE_CHURN };
enum bench_engine { ENGINE_AUTO, ENGINE_EPOLL, ENGINE_URING };
enum bench_out { OUT_TABLE, OUT_CSV, OUT_JSON };

struct bench_proto;

struct bench_opts {
	struct net_addr	 addr;
	char		 addrstr[NET_ADDRSTRLEN];
	enum bench_mode	 mode;
	enum bench_out	 out;
	int		 conns;
	int		 idle;
	int		 depth;
	int		 threads;
	size_t		 size;
	double		 rate;		/* messages/s, all connections */
	int64_t		 duration;	/* ns */
	int64_t		 warmup;	/* ns */
	int64_t		 connect_timeout; /* ns */
	pid_t		 server_pid;
	int		 syscalls;	/* run perf on the server */
	int		 engine;	/* ENGINE_* */
	int		 header;	/* CSV header line */
	int		 quiet;
	const char	*label;
	const struct bench_proto *proto;
};

static struct bench_opts opt;

/* ---- protocols ---------------------------------------------------------- */

/*
 * What the bench speaks.  Each direction is a tape: a byte string that
 * repeats every PERIOD bytes, followed by a copy of its first BENCH_WINDOW
 * bytes so that any window of up to that many bytes is contiguous.  A
 * connection sends its request tape from an offset of its own and checks
 * what comes back against its reply tape from the matching offset, so
 * neither sending nor checking copies or parses anything.  echo and upper
 * are byte streams: both tapes are the pattern, a unit is one byte, the
 * hello is one byte and the reply is as long as the request.  rpc is
 * framed: a unit is one whole frame, on each tape, and the frames on the
 * two tapes differ in length.  The loops below only count bytes.
 */
struct bench_wire {
	const uint8_t	*tx, *rx;	/* request and reply tapes */
	size_t		 unit_tx;	/* tape bytes per unit (seed step) */
	size_t		 unit_rx;
	size_t		 units;		/* units per period */
	size_t		 msg_tx;	/* request bytes per message */
	size_t		 msg_rx;	/* reply bytes per message */
	size_t		 hello_tx;	/* request bytes of the hello */
	size_t		 hello_rx;
};

struct bench_proto {
	const char	*name;
	/* Fill WIRE for messages of opt.size bytes, from the pattern. */
	void		(*init)(struct bench_wire *wire, const uint8_t *pat);
	/* Is BUF what WANT (the reply tape) says?  LEN <= BENCH_WINDOW. */
	int		(*check)(const uint8_t *want, const uint8_t *buf, size_t len);
};

static struct bench_wire bench_wire;

static void
proto_stream_init(struct bench_wire *w, const uint8_t *pat)
{
	w->tx = w->rx = pat;
	w->unit_tx = w->unit_rx = 1;
	w->units = BENCH_PATLEN;
	w->msg_tx = w->msg_rx = opt.size;
	w->hello_tx = w->hello_rx = 1;
}

static int
proto_echo_check(const uint8_t *want, const uint8_t *buf, size_t len)
{
	return memcmp(want, buf, len) == 0;
}

static int
proto_upper_check(const uint8_t *want, const uint8_t *buf, size_t len)
{
	size_t i;
	uint8_t c;

	for (i = 0; i < len; i++) {
		c = want[i];
		if (c >= 'a' && c <= 'z')
			c -= 'a' - 'A';
		if (buf[i] != c)
			return 0;
	}
	return 1;
}

/*
 * rpc (svc-rpc.c): a frame is a 4-byte big-endian length and compact JSON.
 * The payload is a JSON string of letters and digits taken from the
 * pattern, so it needs no escaping and the server prints it back as is;
 * the envelopes are the exact text svc-rpc.c prints (keys in this order,
 * no spaces).  BENCH_RPC_FRAMES different frames, a prime number, so
 * neighbouring messages differ and a swapped or repeated answer shows.
 */
#define BENCH_RPC_FRAMES 31
#define BENCH_RPC_REQ_HEAD	"{\"in\":\"ping\",\"params\":\""
#define BENCH_RPC_REP_HEAD	"{\"out\":\"pong\",\"result\":\""
#define BENCH_RPC_TAIL		"\"}"

static uint8_t *
rpc_tape(const uint8_t *pat, size_t plen, const char *head, size_t *unit)
{
	static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "abcdefghijklmnopqrstuvwxyz0123456789";
	size_t hlen = strlen(head), tlen = strlen(BENCH_RPC_TAIL);
	size_t body = hlen + plen + tlen, period, i, k;
	uint8_t *tape, *f;

	*unit = 4 + body;
	period = BENCH_RPC_FRAMES * *unit;
	if ((tape = malloc(period + BENCH_WINDOW)) == NULL)
		abort();
	for (k = 0; k < BENCH_RPC_FRAMES; k++) {
		f = tape + k * *unit;
		f[0] = (uint8_t)(body >> 24);
		f[1] = (uint8_t)(body >> 16);
		f[2] = (uint8_t)(body >> 8);
		f[3] = (uint8_t)body;
		memcpy(f + 4, head, hlen);
		for (i = 0; i < plen; i++)
			f[4 + hlen + i] = alnum[pat[(k * plen + i) %
			    BENCH_PATLEN] % (sizeof(alnum) - 1)];
		memcpy(f + 4 + hlen + plen, BENCH_RPC_TAIL, tlen);
	}
	for (i = period; i < period + BENCH_WINDOW; i++)
		tape[i] = tape[i - period];
	return tape;
}

/* The request frame is opt.size bytes, or as small as one payload byte. */
static void
proto_rpc_init(struct bench_wire *w, const uint8_t *pat)
{
	size_t over = 4 + strlen(BENCH_RPC_REQ_HEAD) + strlen(BENCH_RPC_TAIL);
	size_t plen = opt.size > over ? opt.size - over : 1;

	w->tx = rpc_tape(pat, plen, BENCH_RPC_REQ_HEAD, &w->unit_tx);
	w->rx = rpc_tape(pat, plen, BENCH_RPC_REP_HEAD, &w->unit_rx);
	w->units = BENCH_RPC_FRAMES;
	w->msg_tx = w->hello_tx = w->unit_tx;
	w->msg_rx = w->hello_rx = w->unit_rx;
}

static const struct bench_proto bench_protos[] = {
	{ "echo", proto_stream_init, proto_echo_check },
	{ "upper", proto_stream_init, proto_upper_check },
	{ "rpc", proto_rpc_init, proto_echo_check },
	{ NULL, NULL, NULL }
};

/* ---- time --------------------------------------------------------------- */

static int64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * NS + ts.tv_nsec;
}

static void
sleep_until(int64_t t)
{
	struct timespec ts = { t / NS, t % NS };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static int64_t
thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * NS + ts.tv_nsec;
}

/* ---- the shared run state ----------------------------------------------- */

static uint8_t *bench_pat;		/* BENCH_PATLEN + BENCH_WINDOW bytes */

/*
 * Written once by the main thread, read by the load threads.  GO is
 * released after the three times are set, so a thread that sees GO sees
 * the times.
 */
static struct {
	atomic_int	go;
	atomic_int	stop;		/* SIGINT, or the run is over */
	atomic_long	setup_done;	/* connections set up, or failed */
	atomic_int	measured;	/* the server has been looked at: close */
	int64_t		t_go;		/* open loop schedule origin */
	int64_t		t_start;	/* measured window [t_start, t_end) */
	int64_t		t_end;
} run;

static volatile sig_atomic_t bench_interrupted;

/* ---- connections -------------------------------------------------------- */

enum conn_state {
	CS_NEW,			/* not connected yet */
	CS_CONNECTING,
	CS_HELLO,		/* idle connection waiting for its one byte */
	CS_RUNNING,		/* active */
	CS_IDLE,		/* idle, set up */
	CS_DEAD
};

struct conn {
	int		 fd;
	uint8_t		 state;
	uint8_t		 idle;
	uint8_t		 pollout;	/* EPOLLOUT in the interest set */
	uint8_t		 on_ring;	/* its bytes move through io_uring */
	uint8_t		 sending;	/* io_uring: a send is in flight */
	uint8_t		*buf;		/* io_uring: its receive buffer */
	uint32_t	 idx;		/* among the thread's active ones */
	uint32_t	 seed;		/* request tape offset of byte 0 */
	uint32_t	 rseed;		/* reply tape offset of byte 0 */
	uint64_t	 tx;		/* bytes written */
	uint64_t	 tx_goal;	/* bytes queued (written or not) */
	uint64_t	 rx;		/* bytes received and checked */
	uint64_t	 rx_goal;	/* reply bytes due for what is queued */
	uint64_t	 base;		/* stream offset of message 0 */
	uint64_t	 sent;		/* messages queued */
	uint64_t	 done;		/* messages whose echo is complete */
	uint64_t	 inwin;		/* queued, stamped in the window, not done */
	uint64_t	 done_win;	/* completed in the window */
	uint64_t	 kbase;		/* open loop: schedule row of message 0 */
	int64_t		*stamp;		/* closed loop: DEPTH send times */
	int64_t		 t_conn;	/* churn: connect started */
};

struct bthread {
	pthread_t	 tid;
	int		 id;
	int		 epfd;
	struct conn	*conns;		/* actives first, then idles */
	int		 nconns;
	int		 nactive;
	int64_t		*stamps;
	uint8_t		*rbuf;
#ifdef BENCH_WITH_URING
	struct io_uring	*ring;		/* NULL: the epoll engine */
	uint8_t		*cbufs;		/* the running connections' buffers */
	size_t		 cbuf_size;
	int		 epoll_armed;	/* the epoll fd is polled by the ring */
#endif

	int		 next;		/* next connection to launch */
	int		 connecting;
	int64_t		 retry_at;	/* unix backlog full: wait a bit */
	int		*restart;	/* churn: slots to reconnect */
	int		*restart2;	/* the batch being reconnected */
	int		 nrestart;

	double		 rate;		/* open loop: this thread's msgs/s */
	uint64_t	 issued;	/* open loop: schedule slots used */
	uint64_t	 inwin;		/* sum of the connections' inwin */
	int		 draining;
	int		 started;	/* closed loop: traffic started at GO */
	int64_t		 cpu0, cpu1;	/* own CPU time at the window's edges */
	int		 window;	/* 0 before, 1 in, 2 after */

	struct hist	 hist;
	uint64_t	 msgs;		/* recorded (window) */
	uint64_t	 cycles;	/* churn: connections completed */
	uint64_t	 errors;	/* connection errors */
	uint64_t	 connect_fail;
	uint64_t	 mismatches;
	uint64_t	 unfinished;
	uint64_t	 idle_lost;	/* idle connections closed by the server */
	int		 last_err;	/* errno of the last error, for the report */
	int		 used_ring;	/* ran on the io_uring engine */
};

static void
conn_fail(struct bthread *t, struct conn *c, int err)
{
	if (c->state == CS_DEAD)
		return;
	if (err) {
		t->errors++;
		t->last_err = err;
	}
	if (c->state == CS_CONNECTING || c->state == CS_HELLO) {
		t->connecting--;
		if (opt.mode != MODE_CHURN || c->idle)
			atomic_fetch_add(&run.setup_done, 1);
	}
	if (c->idle && c->state == CS_IDLE)
		t->idle_lost++;
	t->inwin -= c->inwin;
	t->unfinished += c->inwin;
	c->inwin = 0;
	/*
	 * A recv in flight on io_uring holds a reference to the socket, so
	 * close() alone would neither end it nor send our FIN: shut down
	 * first, and the recv completes (its completion finds CS_DEAD).
	 */
	if (c->fd >= 0 && c->on_ring)
		shutdown(c->fd, SHUT_RDWR);
	if (c->fd >= 0)
		close(c->fd);	/* also leaves the epoll set */
	c->fd = -1;
	c->state = CS_DEAD;
	/* A churn slot goes on; not from here, lest a refused connect recurse. */
	if (opt.mode == MODE_CHURN && !c->idle)
		t->restart[t->nrestart++] = c->idx;
}

static int
conn_interest(struct bthread *t, struct conn *c, uint32_t ev, int op)
{
	struct epoll_event e = { .events = ev, .data.ptr = c };

	if (epoll_ctl(t->epfd, op, c->fd, &e) < 0)
		return -errno;
	c->pollout = (ev & EPOLLOUT) != 0;
	return 0;
}

/*
 * Write what is queued, straight from the pattern.  EPOLLOUT is asked for
 * only while bytes are left over: a level-triggered EPOLLOUT on a socket
 * with room would wake the loop for nothing on every pass.
 */
static void
conn_flush(struct bthread *t, struct conn *c)
{
	size_t len, off;
	ssize_t n;

	while (c->tx < c->tx_goal) {
		off = (c->seed + c->tx) % (bench_wire.units *
		    bench_wire.unit_tx);
		len = c->tx_goal - c->tx;
		if (len > BENCH_WINDOW)
			len = BENCH_WINDOW;
		n = send(c->fd, bench_wire.tx + off, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				if (!c->pollout &&
				    conn_interest(t, c, EPOLLIN | EPOLLOUT,
				    EPOLL_CTL_MOD) < 0)
					conn_fail(t, c, errno);
				return;
			}
			conn_fail(t, c, errno);
			return;
		}
		c->tx += n;
	}
	if (c->pollout && conn_interest(t, c, EPOLLIN, EPOLL_CTL_MOD) < 0)
		conn_fail(t, c, errno);
}

static int
in_window(int64_t ts)
{
	return ts >= run.t_start && ts < run.t_end;
}

/* Intended send time of message K of an open-loop connection. */
static int64_t
open_stamp(const struct bthread *t, const struct conn *c, uint64_t k)
{
	double slot = (double)(k + c->kbase) * t->nactive + c->idx;

	return run.t_go + (int64_t)(slot * 1e9 / t->rate);
}

static int64_t
msg_stamp(const struct bthread *t, const struct conn *c, uint64_t k)
{
	if (opt.mode == MODE_OPEN)
		return open_stamp(t, c, k);
	if (opt.mode == MODE_CHURN)
		return c->t_conn;
	return c->stamp[k % opt.depth];
}

/* Queue one message stamped TS. */
static void
conn_queue(struct bthread *t, struct conn *c, int64_t ts)
{
	if (opt.mode == MODE_CLOSED)
		c->stamp[c->sent % opt.depth] = ts;
	c->sent++;
	c->tx_goal += bench_wire.msg_tx;
	c->rx_goal += bench_wire.msg_rx;
	if (atomic_load_explicit(&run.go, memory_order_acquire) &&
	    in_window(ts)) {
		c->inwin++;
		t->inwin++;
	}
}

static int conn_start(struct bthread *t, struct conn *c);

/* Echo of message C->done is complete at NOW. */
static void
conn_message_done(struct bthread *t, struct conn *c, int64_t now)
{
	int64_t ts = msg_stamp(t, c, c->done);
	int go = atomic_load_explicit(&run.go, memory_order_acquire);

	c->done++;
	if (go && in_window(ts)) {
		hist_add(&t->hist, now > ts ? (uint64_t)(now - ts) : 0);
		t->msgs++;
		c->done_win++;
		c->inwin--;
		t->inwin--;
	}
	if (opt.mode == MODE_CHURN) {
		if (go && in_window(ts))
			t->cycles++;
		close(c->fd);
		c->fd = -1;
		c->state = CS_NEW;
		if (!t->draining && !atomic_load(&run.stop))
			conn_start(t, c);
		return;
	}
	if (opt.mode == MODE_CLOSED && !t->draining && !atomic_load(&run.stop))
		conn_queue(t, c, now);
}

static void uring_adopt(struct bthread *t, struct conn *c);
static void uring_send(struct bthread *t, struct conn *c);

/* Bytes are queued: get them moving, whichever engine carries them. */
static void
conn_kick(struct bthread *t, struct conn *c)
{
	if (c->on_ring)
		uring_send(t, c);
	else if (!c->pollout)
		conn_flush(t, c);
}

/* N bytes of echo arrived in BUF at NOW: check them, count messages. */
static void
conn_input(struct bthread *t, struct conn *c, const uint8_t *buf, size_t n,
    int64_t now)
{
	size_t off, got;
	int i;

	if ((uint64_t)n > c->rx_goal - c->rx) {
		/* More than we ever asked for: the server invented bytes. */
		t->mismatches++;
		conn_fail(t, c, 0);
		return;
	}
	off = (c->rseed + c->rx) % (bench_wire.units * bench_wire.unit_rx);
	if (!opt.proto->check(bench_wire.rx + off, buf, n)) {
		t->mismatches++;
		conn_fail(t, c, 0);
		return;
	}
	c->rx += n;
	if (c->state == CS_HELLO) {
		t->connecting--;
		atomic_fetch_add(&run.setup_done, 1);
		if (c->idle) {
			c->state = CS_IDLE;
			return;
		}
		c->state = CS_RUNNING;
		c->base = c->rx;
		uring_adopt(t, c);
		/*
		 * Traffic starts when every connection is set up (GO): a
		 * server busy echoing would otherwise starve its own accept
		 * loop (a fork-per-connection parent gets 1/N of a CPU) and
		 * set-up would take ages.  Open loop: the schedule says when.
		 */
		if (opt.mode == MODE_CLOSED && atomic_load(&run.go))
			for (i = 0; i < opt.depth; i++)
				conn_queue(t, c, now);
	}
	for (got = c->rx - c->base; c->done < c->sent &&
	    got >= (c->done + 1) * bench_wire.msg_rx;) {
		conn_message_done(t, c, now);
		if (c->state != CS_RUNNING)
			return;
	}
	if (c->tx_goal > c->tx)
		conn_kick(t, c);
}

/*
 * Readable (epoll engine).  One read per event: with one message in
 * flight the whole echo usually comes in one piece, and if more is left
 * level-triggered epoll reports the socket again; reading on until EAGAIN
 * would cost a second system call per message for nothing.
 */
static void
conn_read(struct bthread *t, struct conn *c, int64_t now)
{
	size_t want;
	ssize_t n;

	want = BENCH_RBUF;
	if (c->rx_goal - c->rx < want && c->rx_goal > c->rx)
		want = c->rx_goal - c->rx;
	do
		n = recv(c->fd, t->rbuf, want, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		if (errno != EAGAIN)
			conn_fail(t, c, errno);
		return;
	}
	if (n == 0) {
		conn_fail(t, c, c->idle && c->state == CS_IDLE ? 0 : ECONNRESET);
		return;
	}
	conn_input(t, c, t->rbuf, n, now);
}

static int
conn_socket(struct bthread *t, struct conn *c)
{
	int fd, r;

	fd = socket(opt.addr.ss.ss_family,
	    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (opt.addr.ss.ss_family != AF_UNIX && (r = net_set_nodelay(fd)) < 0) {
		close(fd);
		return r;
	}
	c->fd = fd;
	c->tx = c->tx_goal = c->rx = c->rx_goal = c->base = 0;
	c->sent = c->done = 0;
	c->pollout = 0;
	if (connect(fd, (const struct sockaddr *)&opt.addr.ss, opt.addr.len) == 0)
		return 1;
	if (errno == EINPROGRESS)
		return 0;
	r = -errno;
	close(fd);
	c->fd = -1;
	return r;
}

static void conn_connected(struct bthread *t, struct conn *c);

/*
 * Start connecting C.  A unix socket whose backlog is full says EAGAIN
 * instead of queueing the connect: try again a little later.
 */
static int
conn_start(struct bthread *t, struct conn *c)
{
	int r;

	c->t_conn = now_ns();
	r = conn_socket(t, c);
	if (r == -EAGAIN) {
		t->retry_at = c->t_conn + 1000000;
		return -EAGAIN;
	}
	if (r < 0) {
		t->connect_fail++;
		c->state = CS_CONNECTING;
		t->connecting++;
		conn_fail(t, c, -r);
		return 0;
	}
	c->state = CS_CONNECTING;
	t->connecting++;
	if (conn_interest(t, c, EPOLLOUT, EPOLL_CTL_ADD) < 0) {
		conn_fail(t, c, errno);
		return 0;
	}
	if (r == 1)
		conn_connected(t, c);
	return 0;
}

static void
conn_connected(struct bthread *t, struct conn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		t->connect_fail++;
		conn_fail(t, c, err);
		return;
	}
	if (opt.mode == MODE_CHURN && !c->idle) {
		t->connecting--;
		c->state = CS_RUNNING;
		conn_queue(t, c, c->t_conn);
	} else {
		/*
		 * A connect completes in the kernel, before the server has
		 * accepted: echo one byte (rpc: one frame) first, so that
		 * when set-up is over the server really holds every
		 * connection (its process or thread exists, its descriptor
		 * is in its interest set).
		 */
		c->state = CS_HELLO;
		c->tx_goal = bench_wire.hello_tx;
		c->rx_goal = bench_wire.hello_rx;
	}
	if (conn_interest(t, c, EPOLLIN, EPOLL_CTL_MOD) < 0) {
		conn_fail(t, c, errno);
		return;
	}
	conn_flush(t, c);
}

static void
conn_event(struct bthread *t, struct conn *c, uint32_t ev, int64_t now)
{
	if (c->state == CS_CONNECTING) {
		if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			conn_connected(t, c);
		return;
	}
	if (c->state == CS_DEAD || c->state == CS_NEW || c->on_ring)
		return;
	if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
		conn_read(t, c, now);
	/* The hello may just have moved it to the ring, sends and all. */
	if (c->state != CS_DEAD && c->state != CS_NEW && !c->on_ring &&
	    (ev & EPOLLOUT))
		conn_flush(t, c);
}

/* ---- the io_uring engine ------------------------------------------------ */

/*
 * The client must cost less per message than the cheapest server it
 * drives, or it measures itself.  With epoll it makes a recv and a send
 * per message, much what an epoll server makes; through io_uring a whole
 * batch of sends and receives, over every connection, costs one
 * io_uring_enter.  Set-up (connect, the one-byte hello) and idle
 * connections stay on epoll, whose descriptor the ring polls; a connection
 * moves to the ring once it runs, with one recv and at most one send in
 * flight (two sends in flight on one socket could be reordered).
 * Connections are not reused in these modes, so a completion that
 * arrives after its connection died finds it CS_DEAD and is dropped.
 */
#ifdef BENCH_WITH_URING

#define UD_RECV		0x1
#define UD_SEND		0x2
#define UD_EPOLL	((void *)0x3)
#define UD_TAGS		0x3

static struct io_uring_sqe *
uring_sqe(struct bthread *t)
{
	struct io_uring_sqe *sqe;

	/* The SQ is full: hand the kernel what is queued, then go on. */
	while ((sqe = io_uring_get_sqe(t->ring)) == NULL)
		io_uring_submit(t->ring);
	return sqe;
}

static void
uring_recv(struct bthread *t, struct conn *c)
{
	struct io_uring_sqe *sqe = uring_sqe(t);

	io_uring_prep_recv(sqe, c->fd, c->buf, t->cbuf_size, 0);
	io_uring_sqe_set_data(sqe, (void *)((uintptr_t)c | UD_RECV));
}

static void
uring_send(struct bthread *t, struct conn *c)
{
	struct io_uring_sqe *sqe;
	size_t len, off;

	if (c->sending || c->tx >= c->tx_goal)
		return;
	off = (c->seed + c->tx) % (bench_wire.units * bench_wire.unit_tx);
	len = c->tx_goal - c->tx;
	if (len > BENCH_WINDOW)
		len = BENCH_WINDOW;
	sqe = uring_sqe(t);
	io_uring_prep_send(sqe, c->fd, bench_wire.tx + off, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data(sqe, (void *)((uintptr_t)c | UD_SEND));
	c->sending = 1;
}

/* A connection that has said hello leaves epoll for the ring. */
static void
uring_adopt(struct bthread *t, struct conn *c)
{
	if (!t->ring || c->idle)
		return;
	epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	c->pollout = 0;
	c->on_ring = 1;
	c->buf = t->cbufs + (size_t)c->idx * t->cbuf_size;
	uring_recv(t, c);
}

static void
uring_complete(struct bthread *t, struct io_uring_cqe *cqe, int64_t now)
{
	struct epoll_event ev[256];
	uintptr_t ud = (uintptr_t)io_uring_cqe_get_data(cqe);
	struct conn *c = (struct conn *)(ud & ~(uintptr_t)UD_TAGS);
	int i, n, res = cqe->res;

	if ((void *)ud == UD_EPOLL) {
		/* Multishot: re-armed once the kernel says it has ended. */
		if (!(cqe->flags & IORING_CQE_F_MORE))
			t->epoll_armed = 0;
		/*
		 * The poll fires on a wake-up, not while events stay ready:
		 * take them all now, or the rest wait for the next one.
		 */
		do {
			n = epoll_wait(t->epfd, ev, 256, 0);
			for (i = 0; i < n; i++)
				conn_event(t, ev[i].data.ptr, ev[i].events,
				    now);
		} while (n == 256);
		return;
	}
	if ((ud & UD_TAGS) == UD_SEND) {
		c->sending = 0;
		if (c->state != CS_RUNNING)
			return;
		if (res < 0 && res != -EINTR && res != -EAGAIN) {
			conn_fail(t, c, -res);
			return;
		}
		if (res > 0)
			c->tx += res;	/* short send: the rest goes next */
		uring_send(t, c);
		return;
	}
	if (c->state != CS_RUNNING)
		return;
	if (res == -EINTR || res == -EAGAIN || res == -ENOBUFS) {
		uring_recv(t, c);
		return;
	}
	if (res <= 0) {
		conn_fail(t, c, res == 0 ? ECONNRESET : -res);
		return;
	}
	conn_input(t, c, c->buf, res, now);
	if (c->state == CS_RUNNING)
		uring_recv(t, c);
}

/* Submit what is queued and wait up to NS for completions; handle them. */
static int
uring_wait(struct bthread *t, int64_t ns)
{
	struct __kernel_timespec ts = { ns / NS, ns % NS };
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	int64_t now;
	int r;

	if (!t->epoll_armed) {
		sqe = uring_sqe(t);
		io_uring_prep_poll_multishot(sqe, t->epfd, POLLIN);
		io_uring_sqe_set_data(sqe, UD_EPOLL);
		t->epoll_armed = 1;
	}
	r = io_uring_submit_and_wait_timeout(t->ring, &cqe, 1, &ts, NULL);
	if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY)
		return r;
	now = now_ns();
	io_uring_for_each_cqe(t->ring, head, cqe) {
		uring_complete(t, cqe, now);
		n++;
	}
	io_uring_cq_advance(t->ring, n);
	return 0;
}

/*
 * A ring for thread T, or NULL (the epoll engine) when io_uring is not
 * there or not allowed.  Big enough a completion queue that a recv and a
 * send per connection can never overflow it.
 */
static struct io_uring *
uring_make(struct bthread *t)
{
	struct io_uring_params p;
	struct io_uring *ring;
	unsigned cq = 2 * (unsigned)t->nactive + 64;

	if ((ring = calloc(1, sizeof(*ring))) == NULL)
		return NULL;
	memset(&p, 0, sizeof(p));
	/* The thread is the ring's only user: completions run when it waits. */
	p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER |
	    IORING_SETUP_DEFER_TASKRUN;
	p.cq_entries = cq < 4096 ? 4096 : cq;
	if (io_uring_queue_init_params(1024, ring, &p) < 0) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = cq < 4096 ? 4096 : cq;
		if (io_uring_queue_init_params(1024, ring, &p) < 0) {
			free(ring);
			return NULL;
		}
	}
	t->cbuf_size = bench_wire.msg_rx * opt.depth;
	if (t->cbuf_size < 512)
		t->cbuf_size = 512;
	if (t->cbuf_size > BENCH_RBUF)
		t->cbuf_size = BENCH_RBUF;
	t->cbufs = malloc((size_t)(t->nactive ? t->nactive : 1) * t->cbuf_size);
	if (t->cbufs == NULL)
		abort();
	return ring;
}

static void
uring_free(struct bthread *t)
{
	if (!t->ring)
		return;
	io_uring_queue_exit(t->ring);	/* cancels what is still in flight */
	free(t->ring);
	free(t->cbufs);
	t->ring = NULL;
}

#else	/* !BENCH_WITH_URING */

static void
uring_send(struct bthread *t, struct conn *c)
{
}

static void
uring_adopt(struct bthread *t, struct conn *c)
{
}

#endif

/* ---- the load thread ---------------------------------------------------- */

/* Launch connections, a window at a time, actives first. */
static void
thread_launch(struct bthread *t, int64_t now)
{
	int i, k, n, nidle, *batch;

	if (now < t->retry_at)
		return;
	if (t->nrestart && atomic_load(&run.go)) {
		/* Churn slots that failed: again, but not in a tight loop. */
		batch = t->restart;
		t->restart = t->restart2;
		t->restart2 = batch;
		n = t->nrestart;
		t->nrestart = 0;
		t->retry_at = now + 1000000;
		for (i = 0; i < n; i++)
			conn_start(t, &t->conns[batch[i]]);
	}
	nidle = t->nconns - t->nactive;
	while (t->next < t->nconns && t->connecting < BENCH_CONNECTING_MAX) {
		/*
		 * Churn sets up its idle connections first and starts the
		 * churning slots at GO; the other modes connect the active
		 * ones first, so a server that serves one client at a time
		 * gets an active one.
		 */
		k = t->next;
		if (opt.mode == MODE_CHURN) {
			if (k >= nidle && !atomic_load(&run.go))
				return;
			k = k < nidle ? t->nactive + k : k - nidle;
		}
		if (conn_start(t, &t->conns[k]) == -EAGAIN)
			return;
		t->next++;
	}
}

/* Closed loop, at GO: every connection set up so far starts sending. */
static void
thread_start(struct bthread *t, int64_t now)
{
	struct conn *c;
	int i, k;

	if (opt.mode != MODE_CLOSED)
		return;
	for (i = 0; i < t->nactive; i++) {
		c = &t->conns[i];
		if (c->state != CS_RUNNING || c->sent)
			continue;
		for (k = 0; k < opt.depth; k++)
			conn_queue(t, c, now);
		conn_kick(t, c);
	}
}

/* Open loop: send every message whose time has come. */
static void
thread_schedule(struct bthread *t, int64_t now)
{
	uint64_t due;
	struct conn *c;

	if (now < run.t_go)
		return;
	due = (uint64_t)((double)(now - run.t_go) * t->rate / 1e9) + 1;
	if (now >= run.t_end) {
		uint64_t last = (uint64_t)ceil((double)(run.t_end - run.t_go) *
		    t->rate / 1e9);
		if (due > last)
			due = last;
	}
	for (; t->issued < due; t->issued++) {
		c = &t->conns[t->issued % t->nactive];
		if (c->state != CS_RUNNING)
			continue;	/* a dead connection's slots stay empty */
		if (c->sent == 0)
			c->kbase = t->issued / t->nactive;
		conn_queue(t, c, open_stamp(t, c, c->sent));
		conn_kick(t, c);
	}
}

/* How long epoll_wait may sleep. */
static int64_t
thread_timeout(struct bthread *t, int go, int64_t now)
{
	int64_t until = now + 20 * 1000000LL;	/* look at the flags */
	int64_t next;

	if (t->next < t->nconns && t->retry_at > now && t->retry_at < until)
		until = t->retry_at;
	if (go && opt.mode == MODE_OPEN && t->rate > 0 && now < run.t_end) {
		next = run.t_go + (int64_t)((double)t->issued * 1e9 / t->rate);
		if (next < until)
			until = next;
	}
	if (go && t->window == 0 && run.t_start < until)
		until = run.t_start;
	if (go && !t->draining && run.t_end < until)
		until = run.t_end;
	return until > now ? until - now : 0;
}

static int
thread_wait(struct bthread *t, struct epoll_event *ev, int nev, int64_t ns)
{
	struct timespec ts = { ns / NS, ns % NS };
	static int no_pwait2;
	int n;

	/*
	 * epoll_wait counts in milliseconds; an open loop at 100k msg/s
	 * needs microseconds, which epoll_pwait2 (Linux 5.11) gives.
	 */
	if (!no_pwait2) {
		n = epoll_pwait2(t->epfd, ev, nev, &ts, NULL);
		if (n >= 0 || errno != ENOSYS)
			return n;
		no_pwait2 = 1;
	}
	return epoll_wait(t->epfd, ev, nev, (int)((ns + 999999) / 1000000));
}

/* The end: what never came back is counted, at its lower bound. */
static void
thread_unfinished(struct bthread *t, int64_t now)
{
	struct conn *c;
	uint64_t k;
	int64_t ts;
	int i;

	for (i = 0; i < t->nactive; i++) {
		c = &t->conns[i];
		if (c->state == CS_DEAD || !c->inwin)
			continue;
		for (k = c->done; k < c->sent; k++) {
			ts = msg_stamp(t, c, k);
			if (in_window(ts))
				hist_add(&t->hist, (uint64_t)(now - ts));
		}
		t->unfinished += c->inwin;
		c->inwin = 0;
	}
}

static void *
thread_main(void *arg)
{
	struct bthread *t = arg;
	struct epoll_event ev[256];
	int64_t now, deadline = 0;
	int go, i, n;

#ifdef BENCH_WITH_URING
	/* Made here: SINGLE_ISSUER binds the ring to the task that makes it. */
	if (opt.engine == ENGINE_URING && (t->ring = uring_make(t)) == NULL)
		fprintf(stderr, "%s: warning: thread %d: no io_uring, using "
		    "epoll\n", BENCH_PROG, t->id);
	t->used_ring = t->ring != NULL;
#endif
	for (;;) {
		now = now_ns();
		go = atomic_load_explicit(&run.go, memory_order_acquire);
		/*
		 * The thread's own CPU clock at the window's edges: a thread
		 * may be gone by the time the main thread looks.
		 */
		if (go && t->window == 0 && now >= run.t_start) {
			t->cpu0 = thread_cpu_ns();
			t->window = 1;
		}
		if (go && t->window == 1 && now >= run.t_end) {
			t->cpu1 = thread_cpu_ns();
			t->window = 2;
		}
		if (atomic_load(&run.stop) && !t->draining) {
			t->draining = 1;
			deadline = now + BENCH_DRAIN_NS;
		}
		if (go && !t->draining && now >= run.t_end) {
			t->draining = 1;
			deadline = run.t_end + BENCH_DRAIN_NS;
		}
		if (t->draining && (t->inwin == 0 || now >= deadline))
			break;
		if (go && !t->started) {
			t->started = 1;
			thread_start(t, now);
		}
		if (!t->draining)
			thread_launch(t, now);
		if (go && opt.mode == MODE_OPEN)
			thread_schedule(t, now);
#ifdef BENCH_WITH_URING
		if (t->ring) {
			if ((n = uring_wait(t, thread_timeout(t, go, now))) < 0) {
				fprintf(stderr, "%s: io_uring_enter: %s\n",
				    BENCH_PROG, strerror(-n));
				break;
			}
			continue;
		}
#endif
		n = thread_wait(t, ev, 256, thread_timeout(t, go, now));
		if (n < 0 && errno != EINTR) {
			perror(BENCH_PROG ": epoll_wait");
			break;
		}
		now = now_ns();
		for (i = 0; i < n; i++)
			conn_event(t, ev[i].data.ptr, ev[i].events, now);
	}
	if (t->window == 1)		/* interrupted */
		t->cpu1 = thread_cpu_ns();
	thread_unfinished(t, now_ns());
	/*
	 * Keep the connections open until the main thread has read the
	 * server's figures: a thread-per-connection server loses its
	 * threads' CPU time, and every server its memory, when they close.
	 */
	while (!atomic_load(&run.measured))
		usleep(1000);
	for (i = 0; i < t->nconns; i++)
		if (t->conns[i].fd >= 0)
			close(t->conns[i].fd);
#ifdef BENCH_WITH_URING
	uring_free(t);
#endif
	return NULL;
}

/* ---- the server, seen through /proc ------------------------------------- */

struct srvstat {
	int64_t		cpu_ns;		/* on-CPU time of the whole tree */
	uint64_t	sched;		/* times its tasks were scheduled in */
	long		pss_kb;		/* anonymous memory, shared pages split */
	int		nproc;
	int		ntask;
};

/* Parse /proc/PID/stat past the command name (which may hold spaces). */
static int
proc_stat(pid_t pid, pid_t *ppid, uint64_t *cticks)
{
	char path[64], buf[1024], *p;
	unsigned long long cut = 0, cst = 0;
	int fd, ppid_i = 0;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -EIO;
	buf[n] = '\0';
	if ((p = strrchr(buf, ')')) == NULL)
		return -EIO;
	/* state ppid pgrp session tty tpgid flags minflt cminflt majflt
	 * cmajflt utime stime cutime cstime */
	if (sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %llu %llu",
	    &ppid_i, &cut, &cst) != 3)
		return -EIO;
	*ppid = ppid_i;
	if (cticks)
		*cticks = cut + cst;
	return 0;
}

/*
 * The server's process tree: ROOT and every descendant (prefork workers,
 * a child per connection).  Found by walking every /proc/N/stat parent
 * link, a few passes for grandchildren.
 */
static int
tree_pids(pid_t root, pid_t **out)
{
	pid_t *pid = NULL, *ppid = NULL, *tree = NULL, p;
	size_t n = 0, cap = 0, nt = 1, i, j, before;
	struct dirent *de;
	DIR *d;

	if ((d = opendir("/proc")) == NULL)
		return -errno;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] < '1' || de->d_name[0] > '9')
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 1024;
			pid = realloc(pid, cap * sizeof(*pid));
			ppid = realloc(ppid, cap * sizeof(*ppid));
			if (!pid || !ppid)
				abort();
		}
		pid[n] = atoi(de->d_name);
		if (proc_stat(pid[n], &p, NULL) == 0 && pid[n] != root) {
			ppid[n] = p;
			n++;
		}
	}
	closedir(d);
	if ((tree = malloc((n + 1) * sizeof(*tree))) == NULL)
		abort();
	tree[0] = root;
	do {
		before = nt;
		for (i = 0; i < n; i++) {
			if (pid[i] == 0)
				continue;
			for (j = 0; j < nt; j++)
				if (ppid[i] == tree[j])
					break;
			if (j < nt) {
				tree[nt++] = pid[i];
				pid[i] = 0;
			}
		}
	} while (nt != before);
	free(pid);
	free(ppid);
	*out = tree;
	return (int)nt;
}

/*
 * schedstat is the scheduler's own nanosecond account of time on the CPU
 * (and how many times the task ran); /proc/PID/stat's utime/stime come
 * in 10 ms clock ticks, too coarse for a one-second window summed over a
 * thousand processes.  Time of reaped children only exists in ticks
 * (cutime/cstime), which is good enough for the processes a fork-per-
 * connection server loses during a run.
 */
static void
proc_sched(pid_t pid, struct srvstat *st)
{
	char path[96], buf[128];
	unsigned long long run_ns, wait_ns, slices;
	struct dirent *de;
	int fd;
	ssize_t n;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	if ((d = opendir(path)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%.16s/schedstat",
		    (int)pid, de->d_name);
		if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
			continue;
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n <= 0)
			continue;
		buf[n] = '\0';
		if (sscanf(buf, "%llu %llu %llu", &run_ns, &wait_ns, &slices) != 3)
			continue;
		st->cpu_ns += run_ns;
		st->sched += slices;
		st->ntask++;
	}
	closedir(d);
}

static long
proc_pss_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	if ((f = fopen(path, "re")) == NULL)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Pss_Anon: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

static int
srv_snapshot(pid_t root, struct srvstat *st, int with_mem)
{
	long tick = sysconf(_SC_CLK_TCK);
	uint64_t cticks;
	pid_t *tree, pp;
	int i, n;

	memset(st, 0, sizeof(*st));
	if ((n = tree_pids(root, &tree)) < 0)
		return n;
	for (i = 0; i < n; i++) {
		if (proc_stat(tree[i], &pp, &cticks) < 0)
			continue;
		st->nproc++;
		st->cpu_ns += (int64_t)cticks * (NS / tick);
		proc_sched(tree[i], st);
		if (with_mem)
			st->pss_kb += proc_pss_kb(tree[i]);
	}
	free(tree);
	return st->nproc ? 0 : -ESRCH;
}

/* ---- perf, for system calls --------------------------------------------- */

/*
 * perf stat counting raw_syscalls:sys_enter on the server's tree, started
 * disabled (-D -1) and switched on and off through its control pipe at the
 * window's edges, so attaching to a thousand tasks costs nothing measured.
 * Enabling a syscall tracepoint slows every system call a little (the
 * kernel takes the traced entry path), which is why it is opt-in.
 */
struct perf {
	pid_t	pid;
	int	ctl;		/* we write "enable"/"disable" */
	int	ack;		/* perf answers "ack" */
	int	out;		/* its stderr */
	char	why[160];	/* when it could not count */
};

static size_t
proc_ntasks(pid_t pid)
{
	char path[64];
	struct dirent *de;
	size_t n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	if ((d = opendir(path)) == NULL)
		return 0;
	while ((de = readdir(d)) != NULL)
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/*
 * Whether NAME is an executable in $PATH.  Debian's README install has no
 * linux-perf: without this, the failed exec would only show as perf never
 * answering, and the reader would not learn that it simply is not there.
 */
static int
in_path(const char *name)
{
	const char *path = getenv("PATH"), *p, *end;
	char file[PATH_MAX];

	for (p = path ? path : ""; *p; p = *end ? end + 1 : end) {
		end = strchrnul(p, ':');
		if (end == p)
			continue;
		if (snprintf(file, sizeof(file), "%.*s/%s", (int)(end - p), p,
		    name) < (int)sizeof(file) && access(file, X_OK) == 0)
			return 1;
	}
	return 0;
}

static int
perf_start(struct perf *p, pid_t root)
{
	int ctl[2], ack[2], out[2], nt, i;
	char ctlarg[64], *pids;
	pid_t *tree;
	size_t len;

	memset(p, 0, sizeof(*p));
	p->pid = -1;
	if (!in_path("perf")) {
		snprintf(p->why, sizeof(p->why), "perf not installed");
		return -1;
	}
	if ((nt = tree_pids(root, &tree)) < 0) {
		snprintf(p->why, sizeof(p->why), "no server process tree");
		return -1;
	}
	/*
	 * perf opens one counter per task, and attaching to thousands (a
	 * thread or a process per connection) takes longer than a run.
	 */
	for (len = 0, i = 0; i < nt; i++)
		len += proc_ntasks(tree[i]);
	if (len > BENCH_PERF_MAX_TASKS) {
		snprintf(p->why, sizeof(p->why), "the server has %zu tasks, "
		    "more than perf attaches to in time (%d)", len,
		    BENCH_PERF_MAX_TASKS);
		free(tree);
		return -1;
	}
	if ((pids = malloc((size_t)nt * 12 + 1)) == NULL)
		abort();
	for (len = 0, i = 0; i < nt; i++)
		len += sprintf(pids + len, "%s%d", i ? "," : "", (int)tree[i]);
	free(tree);
	if (pipe2(ctl, O_CLOEXEC) < 0 || pipe2(ack, O_CLOEXEC) < 0 ||
	    pipe2(out, O_CLOEXEC) < 0) {
		snprintf(p->why, sizeof(p->why), "pipe: %s", strerror(errno));
		free(pids);
		return -1;
	}
	p->pid = fork();
	if (p->pid == 0) {
		/* Descriptors perf will know by number: 3 control, 4 ack. */
		if (dup2(ctl[0], 3) < 0 || dup2(ack[1], 4) < 0 ||
		    dup2(out[1], 2) < 0)
			_exit(127);
		snprintf(ctlarg, sizeof(ctlarg), "fd:3,4");
		execlp("perf", "perf", "stat", "-x", ",", "--no-big-num",
		    "-e", "raw_syscalls:sys_enter", "-D", "-1",
		    "--control", ctlarg, "-p", pids, (char *)NULL);
		dprintf(2, "cannot run perf: %s\n", strerror(errno));
		_exit(127);
	}
	free(pids);
	close(ctl[0]);
	close(ack[1]);
	close(out[1]);
	p->ctl = ctl[1];
	p->ack = ack[0];
	p->out = out[0];
	if (p->pid < 0) {
		snprintf(p->why, sizeof(p->why), "fork: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* Send CMD and wait up to MS for perf's ack. */
static int
perf_cmd(struct perf *p, const char *cmd, int ms)
{
	struct pollfd pfd = { .fd = p->ack, .events = POLLIN };
	char buf[64];

	if (p->pid < 0 || write(p->ctl, cmd, strlen(cmd)) < 0)
		return -1;
	if (poll(&pfd, 1, ms) != 1 || read(p->ack, buf, sizeof(buf)) <= 0)
		return -1;
	return 0;
}

/* Stop perf; the count, or -1 with P->why set. */
static double
perf_finish(struct perf *p, int enabled)
{
	char buf[4096], *line, *save;
	size_t len = 0;
	double count = -1;
	ssize_t n;
	int status;

	if (p->pid < 0)
		return -1;
	kill(p->pid, SIGINT);
	while (len < sizeof(buf) - 1 &&
	    (n = read(p->out, buf + len, sizeof(buf) - 1 - len)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		len += n;
	}
	buf[len] = '\0';
	waitpid(p->pid, &status, 0);
	close(p->ctl);
	close(p->ack);
	close(p->out);
	for (line = strtok_r(buf, "\n", &save); line;
	    line = strtok_r(NULL, "\n", &save)) {
		if (strstr(line, "raw_syscalls:sys_enter") && line[0] != '<' &&
		    strchr("0123456789", line[0]) && count < 0)
			count = strtod(line, NULL);
		else if (strstr(line, "raw_syscalls:sys_enter") &&
		    strncmp(line, "<not counted>", 13) == 0 && enabled)
			count = 0;	/* no task ran while enabled */
		else if (!p->why[0] && count < 0 && line[0] &&
		    !strstr(line, "Events"))
			snprintf(p->why, sizeof(p->why), "perf: %.140s", line);
	}
	if (count < 0 && !p->why[0])
		snprintf(p->why, sizeof(p->why), "perf exited %d without a count",
		    WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	if (!enabled && count < 0 && !p->why[0])
		snprintf(p->why, sizeof(p->why), "perf did not start in time");
	return count;
}

/* ---- results ------------------------------------------------------------ */

struct result {
	struct hist	*hist;
	uint64_t	 msgs, cycles, errors, connect_fail, mismatches;
	uint64_t	 unfinished, idle_lost, stalled;
	int		 last_err;
	int		 ring_threads;	/* threads that ran on io_uring */
	int		 connected, idle_up;
	double		 secs;
	double		 client_cpu;	/* fraction of a core */
	int		 have_srv;
	struct srvstat	 s0, s1;
	int64_t		 ts0, ts1;	/* when s0 and s1 were taken */
	int64_t		 tp0, tp1;	/* when perf counted from and to */
	long		 pss_base_kb;
	double		 syscalls;	/* -1: not counted */
	const char	*syscalls_why;
};

static void
out_num(FILE *f, double v, int prec)
{
	if (isnan(v) || v < 0)
		return;
	fprintf(f, "%.*f", prec, v);
}

static const char *
engine_name(const struct result *r)
{
	if (r->ring_threads == 0)
		return "epoll";
	return r->ring_threads == opt.threads ? "io_uring" : "mixed";
}

static const char *
mode_name(void)
{
	return opt.mode == MODE_OPEN ? "open" :
	    opt.mode == MODE_CHURN ? "churn" : "closed";
}

/*
 * The server's figures as rates: CPU time and scheduling over the interval
 * the snapshots really covered, system calls over perf's, each divided by
 * the window's message rate.  NAN when unknown, or when the interval
 * covered less than half the window (a machine so loaded that this thread
 * woke far too late) and the rate would mean little.
 */
struct derived {
	double	cpu_pct, cpu_us_msg, sched_msg, sc_msg;
};

static void
derive(const struct result *r, struct derived *d)
{
	double rate = r->msgs / r->secs, span;

	d->cpu_pct = d->cpu_us_msg = d->sched_msg = d->sc_msg = NAN;
	if (!r->have_srv)
		return;
	span = (r->ts1 - r->ts0) / 1e9;
	if (span >= r->secs / 2) {
		d->cpu_pct = 100.0 * (r->s1.cpu_ns - r->s0.cpu_ns) / 1e9 / span;
		if (rate > 0) {
			d->cpu_us_msg = d->cpu_pct / 100 * 1e6 / rate;
			d->sched_msg = (r->s1.sched - r->s0.sched) / span / rate;
		}
	}
	span = (r->tp1 - r->tp0) / 1e9;
	if (r->syscalls >= 0 && rate > 0 && span >= r->secs / 2)
		d->sc_msg = r->syscalls / span / rate;
}

/* All figures, in one order, for CSV and JSON alike. */
struct field {
	const char	*name;
	double		 v;		/* NAN: empty */
	int		 prec;
};

static int
result_fields(const struct result *r, struct field *f)
{
	double msgs = r->msgs, pss = NAN, pss0 = NAN, tasks = NAN;
	const struct hist *h = r->hist;
	struct derived d;
	int n = 0;

	derive(r, &d);
	if (r->have_srv) {
		pss = r->s1.pss_kb;
		pss0 = r->pss_base_kb;
		tasks = r->s1.ntask;
	}
#define F(nm, val, p) do { f[n].name = nm; f[n].v = (val); f[n].prec = p; n++; } while (0)
	F("conns", opt.conns, 0);
	F("idle", opt.idle, 0);
	F("depth", opt.mode == MODE_CLOSED ? opt.depth : NAN, 0);
	F("size", (double)bench_wire.msg_tx, 0);
	F("threads", opt.threads, 0);
	F("rate", opt.mode == MODE_OPEN ? opt.rate : NAN, 0);
	F("seconds", r->secs, 3);
	F("msgs", msgs, 0);
	F("msgs_per_s", msgs / r->secs, 1);
	F("mbytes_per_s", msgs * bench_wire.msg_tx / r->secs / 1e6, 3);
	F("conns_per_s", opt.mode == MODE_CHURN ? r->cycles / r->secs : NAN, 1);
	F("p50_us", hist_quantile(h, 0.50) / 1e3, 2);
	F("p90_us", hist_quantile(h, 0.90) / 1e3, 2);
	F("p99_us", hist_quantile(h, 0.99) / 1e3, 2);
	F("p999_us", hist_quantile(h, 0.999) / 1e3, 2);
	F("max_us", h->total ? h->max / 1e3 : NAN, 2);
	F("mean_us", h->total ? h->sum / h->total / 1e3 : NAN, 2);
	F("errors", r->errors, 0);
	F("connect_errors", r->connect_fail, 0);
	F("mismatches", r->mismatches, 0);
	F("stalled", r->stalled, 0);
	F("unfinished", r->unfinished, 0);
	F("idle_lost", r->idle_lost, 0);
	F("server_cpu_pct", d.cpu_pct, 1);
	F("server_cpu_us_per_msg", d.cpu_us_msg, 4);
	F("server_sched_per_msg", d.sched_msg, 4);
	F("server_syscalls_per_msg", d.sc_msg, 4);
	F("server_mem_base_kb", pss0, 0);
	F("server_mem_kb", pss, 0);
	F("server_tasks", tasks, 0);
	F("client_cpu_pct", 100.0 * r->client_cpu, 1);
#undef F
	return n;
}

static void
print_csv(const struct result *r)
{
	struct field f[40];
	int i, n = result_fields(r, f);

	if (opt.header) {
		printf("label,mode,service,addr");
		for (i = 0; i < n; i++)
			printf(",%s", f[i].name);
		printf(",engine\n");
	}
	printf("%s,%s,%s,%s", opt.label ? opt.label : "", mode_name(),
	    opt.proto->name, opt.addrstr);
	for (i = 0; i < n; i++) {
		putchar(',');
		out_num(stdout, f[i].v, f[i].prec);
	}
	printf(",%s\n", engine_name(r));
}

static void
json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

static void
print_json(const struct result *r)
{
	struct field f[40];
	int i, n = result_fields(r, f);

	printf("{\"label\":");
	json_str(opt.label ? opt.label : "");
	printf(",\"mode\":\"%s\",\"service\":\"%s\",\"addr\":", mode_name(),
	    opt.proto->name);
	json_str(opt.addrstr);
	for (i = 0; i < n; i++) {
		printf(",\"%s\":", f[i].name);
		if (isnan(f[i].v) || f[i].v < 0)
			printf("null");
		else
			out_num(stdout, f[i].v, f[i].prec);
	}
	printf(",\"engine\":\"%s\",\"syscalls_note\":", engine_name(r));
	if (r->syscalls_why)
		json_str(r->syscalls_why);
	else
		printf("null");
	printf("}\n");
}

static void
print_table(const struct result *r)
{
	const struct hist *h = r->hist;
	double msgs = r->msgs;
	struct derived d;

	printf("%s: %s %s, %s loop, %d conns (+%d idle)", BENCH_PROG,
	    opt.addrstr, opt.proto->name, mode_name(), opt.conns, opt.idle);
	if (opt.mode == MODE_CLOSED)
		printf(", depth %d", opt.depth);
	if (opt.mode == MODE_OPEN)
		printf(", %.0f msg/s offered", opt.rate);
	printf(", %zu B, %d %s thread%s, %.2f s\n", bench_wire.msg_tx,
	    opt.threads, engine_name(r), opt.threads > 1 ? "s" : "", r->secs);
	printf("  throughput  %.0f msg/s  %.2f MB/s", msgs / r->secs,
	    msgs * bench_wire.msg_tx / r->secs / 1e6);
	if (opt.mode == MODE_CHURN)
		printf("  %.0f conn/s", r->cycles / r->secs);
	printf("\n");
	if (h->total)
		printf("  latency     p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  "
		    "max %.1f  mean %.1f us\n",
		    hist_quantile(h, .5) / 1e3, hist_quantile(h, .9) / 1e3,
		    hist_quantile(h, .99) / 1e3, hist_quantile(h, .999) / 1e3,
		    h->max / 1e3, h->sum / h->total / 1e3);
	else
		printf("  latency     no message completed\n");
	printf("  errors      %" PRIu64 " connection (%" PRIu64 " connect), %"
	    PRIu64 " mismatches, %" PRIu64 " stalled, %" PRIu64 " unfinished, %"
	    PRIu64 " idle lost", r->errors, r->connect_fail, r->mismatches,
	    r->stalled, r->unfinished, r->idle_lost);
	if (r->last_err)
		printf(" (last: %s)", strerror(r->last_err));
	printf("\n");
	derive(r, &d);
	if (r->have_srv) {
		printf("  server      pid %d, %d process%s, %d task%s: ",
		    (int)opt.server_pid, r->s1.nproc,
		    r->s1.nproc == 1 ? "" : "es", r->s1.ntask,
		    r->s1.ntask == 1 ? "" : "s");
		if (isnan(d.cpu_pct))
			printf("cpu not measured (snapshots too late)");
		else
			printf("cpu %.1f%% of a core", d.cpu_pct);
		if (!isnan(d.cpu_us_msg))
			printf(", %.3f us/msg, %.3f sched/msg", d.cpu_us_msg,
			    d.sched_msg);
		printf("\n              anon memory %ld KiB (before connecting %ld KiB)\n",
		    r->s1.pss_kb, r->pss_base_kb);
		if (!isnan(d.sc_msg))
			printf("              %.3f syscalls/msg\n", d.sc_msg);
		else if (r->syscalls_why)
			printf("              syscalls/msg not counted: %s\n",
			    r->syscalls_why);
	}
	printf("  client      cpu %.1f%% of a core\n", 100 * r->client_cpu);
}

/* ---- command line ------------------------------------------------------- */

static void
usage(FILE *f)
{
	fprintf(f,
"usage: %s [-c CONNS] [-d DEPTH] [-s SIZE] [-D SECONDS] [-W SECONDS]\n"
"                  [-r RATE] [-i IDLE] [-T THREADS] [-E ENGINE] [--churn]\n"
"                  [-S SERVICE]\n"
"                  [--server-pid PID [--syscalls]] [--csv [--no-header] | --json]\n"
"                  [--label TEXT] [-p PORT] [ADDR]\n"
"Load an echo server and measure it.  ADDR: HOST[:PORT], [V6][:PORT] or\n"
"unix:PATH (default 127.0.0.1:7007).\n"
"  -c, --conns N          active connections (default 50)\n"
"  -d, --depth N          messages in flight per connection, closed loop (1)\n"
"  -s, --size BYTES       message size (128; k/m suffixes)\n"
"  -D, --duration SECS    measured time (5)\n"
"  -W, --warmup SECS      unmeasured time before it (1)\n"
"  -r, --rate MSGS        open loop: total messages per second\n"
"  -i, --idle N           idle connections (echo one byte, then silent)\n"
"      --churn            connect, echo one message, close: connections/s\n"
"  -T, --threads N        load threads (1)\n"
"  -E, --engine NAME      auto (io_uring if it can, else epoll), epoll, uring\n"
"  -S, --service NAME     echo, upper or rpc (what is sent, how replies are checked)\n"
"      --server-pid PID   report the CPU time, scheduling and memory of PID\n"
"                         and all its descendants\n"
"      --syscalls         also count its system calls with perf(1)\n"
"      --connect-timeout SECS  give up setting up connections (30)\n"
"      --csv, --json      machine-readable output; --no-header: CSV row only\n"
"      --label TEXT       first column of the CSV / JSON \"label\"\n"
"  -q, --quiet            no progress messages on stderr\n"
"  -h, --help, --version\n", BENCH_PROG);
}

static void __attribute__((noreturn, format(printf, 1, 2)))
bad_usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", BENCH_PROG);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	usage(stderr);
	exit(BENCH_EX_USAGE);
}

static double
parse_double(const char *name, const char *arg, double min, double max)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(arg, &end);
	if (errno || end == arg || *end || !(v >= min && v <= max))
		bad_usage("%s: '%s' is not a number in [%g, %g]", name, arg,
		    min, max);
	return v;
}

static long long
parse_int(const char *name, const char *arg, long long min, long long max,
    int sizes)
{
	long long v;
	char *end;

	errno = 0;
	v = strtoll(arg, &end, 10);
	if (sizes && end != arg && (*end == 'k' || *end == 'K')) {
		v *= 1024;
		end++;
	} else if (sizes && end != arg && (*end == 'm' || *end == 'M')) {
		v *= 1024 * 1024;
		end++;
	}
	if (errno || end == arg || *end || v < min || v > max)
		bad_usage("%s: '%s' is not a number in [%lld, %lld]", name, arg,
		    min, max);
	return v;
}

/*
 * io_uring when it is built in and the kernel lets us make a ring (it may
 * be disabled: kernel.io_uring_disabled, seccomp); epoll otherwise.
 * Churn stays on epoll: a connection there lives for one message.
 */
static void
engine_choose(void)
{
#ifdef BENCH_WITH_URING
	struct io_uring ring;
	int r = -ENOSYS;

	if (opt.engine != ENGINE_EPOLL && opt.mode != MODE_CHURN) {
		if ((r = io_uring_queue_init(8, &ring, 0)) == 0)
			io_uring_queue_exit(&ring);
	}
	if (r == 0) {
		opt.engine = ENGINE_URING;
		return;
	}
	if (opt.engine == ENGINE_URING && opt.mode == MODE_CHURN)
		bad_usage("-E uring: churn mode runs on epoll");
	if (opt.engine == ENGINE_URING) {
		fprintf(stderr, "%s: io_uring is not available: %s\n", BENCH_PROG,
		    strerror(-r));
		exit(BENCH_EX_UNAVAILABLE);
	}
#else
	if (opt.engine == ENGINE_URING)
		bad_usage("-E uring: built without liburing");
#endif
	opt.engine = ENGINE_EPOLL;
}

enum {
	OPT_CHURN = 256, OPT_SERVER_PID, OPT_SYSCALLS, OPT_CSV, OPT_JSON,
	OPT_NO_HEADER, OPT_LABEL, OPT_CONNECT_TIMEOUT, OPT_VERSION
};

static void
parse_args(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "conns", 1, NULL, 'c' }, { "depth", 1, NULL, 'd' },
		{ "size", 1, NULL, 's' }, { "duration", 1, NULL, 'D' },
		{ "warmup", 1, NULL, 'W' }, { "rate", 1, NULL, 'r' },
		{ "idle", 1, NULL, 'i' }, { "threads", 1, NULL, 'T' },
		{ "service", 1, NULL, 'S' }, { "port", 1, NULL, 'p' },
		{ "quiet", 0, NULL, 'q' }, { "help", 0, NULL, 'h' },
		{ "churn", 0, NULL, OPT_CHURN },
		{ "server-pid", 1, NULL, OPT_SERVER_PID },
		{ "syscalls", 0, NULL, OPT_SYSCALLS },
		{ "csv", 0, NULL, OPT_CSV }, { "json", 0, NULL, OPT_JSON },
		{ "no-header", 0, NULL, OPT_NO_HEADER },
		{ "label", 1, NULL, OPT_LABEL },
		{ "connect-timeout", 1, NULL, OPT_CONNECT_TIMEOUT },
		{ "version", 0, NULL, OPT_VERSION },
		{ "engine", 1, NULL, 'E' },
		{ NULL, 0, NULL, 0 }
	};
	const char *target = "127.0.0.1", *svc = "echo";
	int ch, port = BENCH_PORT, churn = 0, i;

	opt.conns = 50;
	opt.depth = 1;
	opt.threads = 1;
	opt.size = 128;
	opt.duration = 5 * NS;
	opt.warmup = 1 * NS;
	opt.connect_timeout = 30 * NS;
	opt.header = 1;
	while ((ch = getopt_long(argc, argv, "c:d:s:D:W:r:i:T:S:p:E:qh", lo,
	    NULL)) != -1) {
		switch (ch) {
		case 'c':
			opt.conns = parse_int("-c", optarg, 0, 1000000, 0);
			break;
		case 'd':
			opt.depth = parse_int("-d", optarg, 1, 4096, 0);
			break;
		case 's':
			opt.size = parse_int("-s", optarg, 1, BENCH_WINDOW, 1);
			break;
		case 'D':
			opt.duration = parse_double("-D", optarg, 0.01, 86400) * NS;
			break;
		case 'W':
			opt.warmup = parse_double("-W", optarg, 0, 3600) * NS;
			break;
		case 'r':
			opt.rate = parse_double("-r", optarg, 1, 1e8);
			break;
		case 'i':
			opt.idle = parse_int("-i", optarg, 0, 1000000, 0);
			break;
		case 'T':
			opt.threads = parse_int("-T", optarg, 1, 256, 0);
			break;
		case 'S':
			svc = optarg;
			break;
		case 'E':
			if (strcmp(optarg, "auto") == 0)
				opt.engine = ENGINE_AUTO;
			else if (strcmp(optarg, "epoll") == 0)
				opt.engine = ENGINE_EPOLL;
			else if (strcmp(optarg, "uring") == 0)
				opt.engine = ENGINE_URING;
			else
				bad_usage("-E: '%s' is not auto, epoll or uring",
				    optarg);
			break;
		case 'p':
			port = parse_int("-p", optarg, 1, 65535, 0);
			break;
		case 'q':
			opt.quiet = 1;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case OPT_VERSION:
			printf("%s (%s) %s\n", BENCH_PROG, PACKAGE_NAME,
			    PACKAGE_VERSION);
			exit(0);
		case OPT_CHURN:
			churn = 1;
			break;
		case OPT_SERVER_PID:
			opt.server_pid = parse_int("--server-pid", optarg, 1,
			    INT_MAX, 0);
			break;
		case OPT_SYSCALLS:
			opt.syscalls = 1;
			break;
		case OPT_CSV:
			opt.out = OUT_CSV;
			break;
		case OPT_JSON:
			opt.out = OUT_JSON;
			break;
		case OPT_NO_HEADER:
			opt.header = 0;
			break;
		case OPT_LABEL:
			opt.label = optarg;
			break;
		case OPT_CONNECT_TIMEOUT:
			opt.connect_timeout = parse_double("--connect-timeout",
			    optarg, 0.1, 3600) * NS;
			break;
		default:
			usage(stderr);
			exit(BENCH_EX_USAGE);
		}
	}
	if (optind < argc)
		target = argv[optind++];
	if (optind < argc)
		bad_usage("unexpected argument '%s'", argv[optind]);
	if (net_parse_addr(target, port, &opt.addr) < 0)
		bad_usage("bad address '%s'", target);
	net_addr_str(&opt.addr, opt.addrstr, sizeof(opt.addrstr));
	for (i = 0; bench_protos[i].name; i++)
		if (strcmp(bench_protos[i].name, svc) == 0)
			opt.proto = &bench_protos[i];
	if (!opt.proto)
		bad_usage("unknown service '%s' (echo, upper, rpc)", svc);
	if (churn && opt.rate > 0)
		bad_usage("--churn and --rate do not mix");
	opt.mode = churn ? MODE_CHURN : opt.rate > 0 ? MODE_OPEN : MODE_CLOSED;
	if (opt.conns == 0 && opt.idle == 0)
		bad_usage("nothing to do: -c 0 and no idle connections");
	if (opt.mode == MODE_OPEN && opt.conns == 0)
		bad_usage("--rate needs active connections");
	if (opt.syscalls && !opt.server_pid)
		bad_usage("--syscalls needs --server-pid");
	if (opt.threads > opt.conns + opt.idle)
		opt.threads = opt.conns + opt.idle;
	engine_choose();
}

/* ---- set-up and the run ------------------------------------------------- */

static void
on_sigint(int sig)
{
	(void)sig;
	bench_interrupted = 1;
	atomic_store(&run.stop, 1);
}

static void
pattern_init(void)
{
	uint64_t x = 0x9e3779b97f4a7c15ULL;
	size_t i;

	if ((bench_pat = malloc(BENCH_PATLEN + BENCH_WINDOW)) == NULL)
		abort();
	for (i = 0; i < BENCH_PATLEN; i++) {
		x ^= x << 13;		/* xorshift64: cheap, and not periodic */
		x ^= x >> 7;		/* at any length we care about */
		x ^= x << 17;
		bench_pat[i] = (uint8_t)(x >> 24);
	}
	/* The window is longer than the pattern: copy forwards, byte by byte. */
	for (i = BENCH_PATLEN; i < BENCH_PATLEN + BENCH_WINDOW; i++)
		bench_pat[i] = bench_pat[i - BENCH_PATLEN];
}

/* CONNS sockets, plus a few descriptors per thread and for stdio. */
static void
raise_nofile(long long conns)
{
	long long want = conns + 16 + 3LL * opt.threads;
	long long have = net_raise_nofile();

	if (have < want)
		fprintf(stderr, "%s: warning: %lld connections need %lld "
		    "descriptors, RLIMIT_NOFILE is %lld\n", BENCH_PROG,
		    conns, want, have < 0 ? 0 : have);
}

static struct bthread *
threads_make(void)
{
	struct bthread *th, *t;
	uint64_t u;
	int i, k, a, id;

	if ((th = calloc(opt.threads, sizeof(*th))) == NULL)
		abort();
	for (i = 0; i < opt.threads; i++) {
		t = &th[i];
		t->id = i;
		t->nactive = opt.conns / opt.threads + (i < opt.conns % opt.threads);
		t->nconns = t->nactive + opt.idle / opt.threads +
		    (i < opt.idle % opt.threads);
		t->conns = calloc(t->nconns ? t->nconns : 1, sizeof(*t->conns));
		t->stamps = calloc((size_t)(t->nactive ? t->nactive : 1) *
		    opt.depth, sizeof(*t->stamps));
		t->rbuf = malloc(BENCH_RBUF);
		t->restart = calloc(t->nactive + 1, sizeof(*t->restart));
		t->restart2 = calloc(t->nactive + 1, sizeof(*t->restart));
		if (!t->conns || !t->stamps || !t->rbuf || !t->restart ||
		    !t->restart2)
			abort();
		if (opt.mode == MODE_OPEN && opt.conns)
			t->rate = opt.rate * t->nactive / opt.conns;
		if ((t->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
			perror(BENCH_PROG ": epoll_create1");
			exit(71);
		}
		for (k = 0; k < t->nconns; k++) {
			struct conn *c = &t->conns[k];

			a = k < t->nactive;
			id = a ? k * opt.threads + i :
			    opt.conns + (k - t->nactive) * opt.threads + i;
			c->fd = -1;
			c->idle = !a;
			c->idx = k;
			u = ((uint64_t)id * 7919 + 1) % bench_wire.units;
			c->seed = (uint32_t)(u * bench_wire.unit_tx);
			c->rseed = (uint32_t)(u * bench_wire.unit_rx);
			if (a)
				c->stamp = t->stamps + (size_t)k * opt.depth;
		}
	}
	return th;
}

static void
threads_free(struct bthread *th)
{
	int i;

	for (i = 0; i < opt.threads; i++) {
		free(th[i].conns);
		free(th[i].stamps);
		free(th[i].rbuf);
		free(th[i].restart);
		free(th[i].restart2);
	}
	free(th);
}

/*
 * Wait until every connection is set up (or failed), or the timeout.  In
 * churn mode only the idle ones are set up beforehand.
 */
static int
wait_setup(void)
{
	long want = opt.mode == MODE_CHURN ? opt.idle : opt.conns + opt.idle;
	int64_t deadline = now_ns() + opt.connect_timeout;

	while (atomic_load(&run.setup_done) < want) {
		if (bench_interrupted || now_ns() > deadline)
			return -1;
		usleep(2000);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct result r = { .syscalls = -1 };
	struct bthread *th;
	struct hist *all;
	struct perf perf = { .pid = -1 };
	int64_t t_setup, t_a;
	struct srvstat smem;
	int i, k, perf_on = 0, rc;
	struct sigaction sa;

	parse_args(argc, argv);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigint;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile((long long)opt.conns + opt.idle);
	pattern_init();
	opt.proto->init(&bench_wire, bench_pat);
	if (opt.server_pid) {
		if (srv_snapshot(opt.server_pid, &r.s0, 1) < 0) {
			fprintf(stderr, "%s: server pid %d: no such process\n",
			    BENCH_PROG, (int)opt.server_pid);
			return BENCH_EX_USAGE;
		}
		r.pss_base_kb = r.s0.pss_kb;
		r.have_srv = 1;
	}
	th = threads_make();
	for (i = 0; i < opt.threads; i++)
		if ((rc = pthread_create(&th[i].tid, NULL, thread_main, &th[i]))) {
			fprintf(stderr, "%s: pthread_create: %s\n", BENCH_PROG,
			    strerror(rc));
			return 71;
		}

	t_setup = now_ns();
	if (wait_setup() < 0 && !bench_interrupted)
		fprintf(stderr, "%s: warning: only %ld of %d connections set up "
		    "after %.1f s\n", BENCH_PROG, atomic_load(&run.setup_done),
		    opt.mode == MODE_CHURN ? opt.idle : opt.conns + opt.idle,
		    opt.connect_timeout / 1e9);
	if (!opt.quiet && opt.out == OUT_TABLE)
		fprintf(stderr, "%s: %d connections set up in %.2f s\n",
		    BENCH_PROG, opt.conns + opt.idle, (now_ns() - t_setup) / 1e9);
	/*
	 * perf takes a while to attach to a large tree; "ping" is answered
	 * once its control loop runs, so the window's "enable" is prompt.
	 */
	if (opt.syscalls && perf_start(&perf, opt.server_pid) < 0)
		r.syscalls_why = perf.why;
	else if (opt.syscalls && perf_cmd(&perf, "ping\n", 10000) < 0)
		snprintf(perf.why, sizeof(perf.why), "perf did not start in 10 s");

	run.t_go = now_ns();
	run.t_start = run.t_go + opt.warmup;
	run.t_end = run.t_start + opt.duration;
	atomic_store_explicit(&run.go, 1, memory_order_release);

	/*
	 * A snapshot of a big process tree takes a while, and on a loaded
	 * machine this thread may wake late: every figure taken here is a
	 * rate over the interval it really covered (its midpoints), scaled
	 * by the message rate of the window.
	 */
	sleep_until(run.t_start);
	if (r.have_srv) {
		t_a = now_ns();
		srv_snapshot(opt.server_pid, &r.s0, 0);
		r.ts0 = (t_a + now_ns()) / 2;
	}
	if (perf.pid > 0) {
		t_a = now_ns();
		perf_on = perf_cmd(&perf, "enable\n", 2000) == 0;
		r.tp0 = (t_a + now_ns()) / 2;
	}

	while (!bench_interrupted && now_ns() < run.t_end)
		sleep_until(run.t_end < now_ns() + 50000000 ? run.t_end :
		    now_ns() + 50000000);
	if (bench_interrupted)
		run.t_end = now_ns();	/* threads read it on their next pass */
	if (perf_on) {
		t_a = now_ns();
		perf_cmd(&perf, "disable\n", 2000);
		r.tp1 = (t_a + now_ns()) / 2;
	}
	if (r.have_srv) {
		t_a = now_ns();
		if (srv_snapshot(opt.server_pid, &r.s1, 0) < 0)
			r.have_srv = 0;		/* it died under us */
		r.ts1 = (t_a + now_ns()) / 2;
		/* Memory last: smaps_rollup of a thousand processes is slow. */
		if (r.have_srv && srv_snapshot(opt.server_pid, &smem, 1) == 0)
			r.s1.pss_kb = smem.pss_kb;
	}
	atomic_store(&run.stop, 1);
	atomic_store(&run.measured, 1);
	if (perf.pid > 0) {
		r.syscalls = perf_finish(&perf, perf_on);
		if (r.syscalls < 0)
			r.syscalls_why = perf.why;
	}
	r.secs = (run.t_end - run.t_start) / 1e9;
	if (r.secs <= 0)
		r.secs = 1e-9;

	if ((all = calloc(1, sizeof(*all))) == NULL)
		abort();
	for (i = 0; i < opt.threads; i++) {
		struct bthread *t = &th[i];

		pthread_join(t->tid, NULL);
		hist_merge(all, &t->hist);
		r.msgs += t->msgs;
		r.cycles += t->cycles;
		r.errors += t->errors;
		r.connect_fail += t->connect_fail;
		r.mismatches += t->mismatches;
		r.unfinished += t->unfinished;
		r.idle_lost += t->idle_lost;
		r.client_cpu += (t->cpu1 - t->cpu0) / 1e9 / r.secs;
		if (t->last_err)
			r.last_err = t->last_err;
		r.ring_threads += t->used_ring;
		if (opt.mode != MODE_CHURN)
			for (k = 0; k < t->nactive; k++)
				r.stalled += t->conns[k].state != CS_DEAD &&
				    t->conns[k].done_win == 0;
		close(t->epfd);
	}
	r.hist = all;
	if (opt.out == OUT_CSV)
		print_csv(&r);
	else if (opt.out == OUT_JSON)
		print_json(&r);
	else
		print_table(&r);
	fflush(stdout);
	/* Freed so that LeakSanitizer runs in the test suite stay quiet. */
	threads_free(th);
	free(all);
	if (r.msgs == 0 && r.errors > 0)
		return BENCH_EX_UNAVAILABLE;
	return r.errors || r.mismatches ? 1 : 0;
}

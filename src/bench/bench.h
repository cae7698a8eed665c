/*
 * echo-bench — the load generator the IO-model comparison is measured with.
 *
 * src/bench/: main.c (command line, set-up, the run), load.c (a connection's
 * life and the load thread), engine-epoll.c and engine-uring.c (how bytes
 * move, behind struct engine_ops), wire.c (what is sent and how echoes
 * are checked), hist.c (latency), probe.c (the server through /proc and
 * perf), output.c (table, CSV, JSON).  This header is what they share.
 *
 * Closed loop: N connections, each with D messages in flight; a new message
 * leaves when an echo completes.  Open loop (--rate): messages leave on a
 * fixed schedule whatever the server does, and latency is counted from the
 * time a message was *meant* to leave, so a server that stalls cannot hide
 * its stall by slowing the client down (no coordinated omission).  Churn
 * (--churn): connect, echo one message, close, again: connections/second.
 * Idle connections (--idle) each echo one byte, so the server has really
 * accepted them, and then stay silent for the whole bench_run.
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
#ifndef BENCH_H
#define BENCH_H

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

#include "net.h"

#define BENCH_PROG	"echo-bench"
#define BENCH_PORT	7007
#define BENCH_EX_USAGE	64
#define BENCH_EX_UNAVAILABLE 69
#define BENCH_EX_OSERR	71

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

/* ---- latency histogram (hist.c) ------------------------------------------ */

#define HIST_SUB	7
#define HIST_N		((64 - HIST_SUB + 1) << HIST_SUB)

struct hist {
	uint64_t	count[HIST_N];
	uint64_t	total;
	uint64_t	max;
	double		sum;
};

void	hist_add(struct hist *h, uint64_t v);
void	hist_merge(struct hist *to, const struct hist *from);
double	hist_quantile(const struct hist *h, double q);

/* ---- options ------------------------------------------------------------ */

enum bench_mode { MODE_CLOSED, MODE_OPEN, MODE_CHURN, MODE_FANOUT };
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
	double		 quota;		/* % of a core for the server, or 0 */
	int		 engine;	/* ENGINE_* */
	int		 header;	/* CSV header line */
	int		 quiet;
	const char	*label;
	const struct bench_proto *proto;
};

extern struct bench_opts opt;

/* ---- protocols (wire.c) ------------------------------------------------- */

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

extern struct bench_wire bench_wire;
extern uint8_t *bench_pat;		/* BENCH_PATLEN + BENCH_WINDOW bytes */

void	wire_pattern_init(void);
/* The protocol called NAME, or NULL. */
const struct bench_proto *wire_proto(const char *name);

/* ---- time --------------------------------------------------------------- */

static inline int64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * NS + ts.tv_nsec;
}

static inline void
sleep_until(int64_t t)
{
	struct timespec ts = { t / NS, t % NS };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static inline int64_t
thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * NS + ts.tv_nsec;
}

/* ---- the shared run state ----------------------------------------------- */

/*
 * Written once by the main thread, read by the load threads.  GO is
 * released after the three times are set, so a thread that sees GO sees
 * the times.
 */
struct bench_run {
	atomic_int	go;
	atomic_int	stop;		/* SIGINT, or the run is over */
	atomic_long	setup_done;	/* connections set up, or failed */
	atomic_int	measured;	/* the server has been looked at: close */
	int64_t		t_go;		/* open loop schedule origin */
	int64_t		t_start;	/* measured window [t_start, t_end) */
	int64_t		t_end;
};

extern struct bench_run bench_run;

extern volatile sig_atomic_t bench_interrupted;

/* ---- connections -------------------------------------------------------- */

enum bconn_state {
	BC_NEW,			/* not connected yet */
	BC_CONNECTING,
	BC_HELLO,		/* idle connection waiting for its one byte */
	BC_RUNNING,		/* active */
	BC_IDLE,		/* idle, set up */
	BC_DEAD
};

struct bench_conn {
	int		 fd;
	uint8_t		 state;
	uint8_t		 idle;
	uint8_t		 pollout;	/* EPOLLOUT in the interest set */
	uint8_t		 adopted;	/* its bytes move through the engine */
	uint8_t		 sending;	/* adopted: a send is in flight */
	uint8_t		*buf;		/* adopted: its receive buffer */
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
	struct bench_conn *conns;		/* actives first, then idles */
	int		 nconns;
	int		 nactive;
	int64_t		*stamps;
	uint8_t		*rbuf;
	const struct engine_ops *engine;
	void		*engine_state;	/* the engine's own, per thread */

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

/* ---- engines (engine-epoll.c, engine-uring.c) ------------------------------ */

/*
 * How a thread moves its bytes.  Every connection is set up on the
 * thread's epoll set (connect, the hello); an engine may then adopt a
 * running connection and carry its sends and receives itself.  The epoll
 * engine adopts nothing.  make returns 0, or -errno when the engine cannot
 * run here (the thread then falls back to epoll).
 */
struct engine_ops {
	const char	*name;
	/* Whether the kernel lets us use it at all: 0 or -errno. */
	int		(*probe)(void);
	int		(*make)(struct bthread *t);
	/* A running connection that said hello: take it over, or not. */
	void		(*adopt)(struct bthread *t, struct bench_conn *c);
	/* Bytes are queued on an adopted connection. */
	void		(*send)(struct bthread *t, struct bench_conn *c);
	/* Wait up to NS for events and handle them: 0, or -errno (fatal). */
	int		(*wait)(struct bthread *t, int64_t ns);
	void		(*free)(struct bthread *t);
};

extern const struct engine_ops bench_engine_epoll;
/* NULL when built without liburing (no-uring.c). */
extern const struct engine_ops *const bench_engine_uring;

/* The epoll side every engine uses for set-up. */
int	bconn_interest(struct bthread *t, struct bench_conn *c, uint32_t ev, int op);
void	bconn_flush(struct bthread *t, struct bench_conn *c);
void	bconn_event(struct bthread *t, struct bench_conn *c, uint32_t ev,
	    int64_t now);
int	epoll_engine_dispatch(struct bthread *t, int64_t ns);

/* ---- connections and the load thread (load.c) ------------------------------ */

void	bconn_fail(struct bthread *t, struct bench_conn *c, int err);
void	bconn_connected(struct bthread *t, struct bench_conn *c);
void	bconn_input(struct bthread *t, struct bench_conn *c, const uint8_t *buf,
	    size_t n, int64_t now);
void	*thread_main(void *arg);

/* --fanout: the chat room, one talker (fanout.c). */
void	*fanout_main(void *arg);

/* ---- the server, through /proc and perf (probe.c) ------------------------- */

struct probe_stat {
	int64_t		cpu_ns;		/* on-CPU time of the whole tree */
	uint64_t	sched;		/* times its tasks were scheduled in */
	long		pss_kb;		/* anonymous memory, shared pages split */
	int		nproc;
	int		ntask;
};

int	probe_snapshot(pid_t root, struct probe_stat *st, int with_mem);
int	tree_pids(pid_t root, pid_t **out);

/* ---- the server-saturated regime (quota.c) -------------------------------- */

struct quota {
	int		 on;		/* the server is in the group */
	int		 applied;	/* it was, for the measured window */
	int		 v2;		/* cgroup v2 cpu.max, else v1 */
	double		 pct;		/* of one core */
	char		 dir[512];
	char		 parent[512];
	uint64_t	 periods0, throttled0, periods1, throttled1;
	char		 why[200];	/* when it could not be set */
};

int	quota_apply(struct quota *q, pid_t root, double pct);
void	quota_mark(struct quota *q, int end);
double	quota_throttled_pct(const struct quota *q);
void	quota_release(struct quota *q);

struct perf {
	pid_t	pid;
	int	ctl;		/* we write "enable"/"disable" */
	int	ack;		/* perf answers "ack" */
	int	out;		/* its stderr */
	char	why[160];	/* when it could not count */
};

int	perf_start(struct perf *p, pid_t root);
int	perf_cmd(struct perf *p, const char *cmd, int ms);
double	perf_finish(struct perf *p, int enabled);

/* ---- results (output.c) ---------------------------------------------------- */

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
	struct probe_stat s0, s1;
	int64_t		 ts0, ts1;	/* when s0 and s1 were taken */
	int64_t		 tp0, tp1;	/* when perf counted from and to */
	long		 pss_base_kb;
	double		 syscalls;	/* -1: not counted */
	const char	*syscalls_why;
	const struct quota *quota;
};

/* client-bound, server-saturated or neither (output.c says how). */
const char *result_regime(const struct result *r);

void	print_csv(const struct result *r);
void	print_json(const struct result *r);
void	print_table(const struct result *r);

#endif

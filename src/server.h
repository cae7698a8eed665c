/*
 * server — what every server binary shares: the command line, signals,
 * logging, the readiness line, listening sockets and limits.
 *
 * A model's main() is:
 *
 *	struct srv s;
 *	srv_init(&s, &model, argc, argv, NULL);	// exits 64 on a bad command line
 *	srv_raise_nofile(&s);
 *	int lfd = srv_listen(&s, NET_NONBLOCK);	// exits 69/71 on failure
 *	... install the stop (srv_signals_block(), or blocking.h's
 *	    blk_wake_signals()), srv_ready(&s), run the loop ...
 *	return SRV_EX_OK;
 *
 * (conn_loop_listen() and blk_listen() do the middle part for
 * the readiness and the blocking models.)
 */
#ifndef IOMODELS_SERVER_H
#define IOMODELS_SERVER_H

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "net.h"
#include "service.h"

/* Exit statuses (sysexits.h values, spelled out for readers). */
#define SRV_EX_OK		0
#define SRV_EX_USAGE		64
#define SRV_EX_UNAVAILABLE	69
#define SRV_EX_SOFTWARE		70
#define SRV_EX_OSERR		71

#define SRV_DEFAULT_PORT	7007
#define SRV_DEFAULT_BUFSIZE	(64 * 1024)
/*
 * Pending output past which a server stops reading from a connection.
 * A client that sends without reading can then cost us at most this much
 * memory (plus one read buffer); its socket buffers fill up and TCP flow
 * control pushes the backpressure back to the client.
 */
#define SRV_DEFAULT_HIGHWATER	(256 * 1024)

/*
 * Time policies every model shares.  At stop, a connection (or a child, a
 * thread) with a reply still going out gets SRV_STOP_GRACE_MS to finish
 * before it is closed (or killed).  After an error reply, a lingering
 * close discards the client's input for at most SRV_LINGER_MS.
 */
#define SRV_STOP_GRACE_MS	2000
#define SRV_LINGER_MS		2000

/*
 * Pacing, for a service that broadcasts.  A recipient whose queue passes
 * the high-water mark is congested: until it drains to half the mark, the
 * senders are paced (not read, or made to wait) instead of queueing more
 * for it.  Without that a talker faster than a listener drives the
 * listener's queue past --max-pending and has it dropped although it
 * reads all along.  A recipient with no write progress for SRV_STALL_MS
 * does not read at all: it stops pacing the others (a client that stops
 * reading costs the room that long), and is dropped at --max-pending.
 */
#define SRV_STALL_MS		1000

/*
 * Options a model adds to the shared command line.  KEY is what the model's
 * handler receives; ARG is NULL for a flag.  The handler returns 0, or -1
 * after having called srv_usage_error().
 */
struct srv_option {
	const char	*name;		/* long name, without "--" */
	int		 has_arg;	/* 0: flag, 1: takes an argument */
	int		 key;		/* > 255 for long-only options */
	const char	*argname;	/* for --help: "N", "MODE", ... */
	const char	*help;
};

struct srv;
typedef int (*srv_option_fn)(struct srv *, int key, const char *arg);

/* Capabilities a model declares, so the shared layer can refuse cleanly. */
#define SRV_CAP_WORKERS		0x1	/* -w means something */
#define SRV_CAP_BROADCAST	0x2	/* can run services that broadcast */
/*
 * -w sizes a pool of threads inside this one process: they share one
 * listener (no SO_REUSEPORT) and one registry of clients, so a
 * broadcast still reaches everyone whatever -w says.
 */
#define SRV_CAP_POOL		0x4
/*
 * -w sizes threads of one process that relay each broadcast to each
 * other (echo-uring: IORING_OP_MSG_RING), so one room spans them; the
 * model refuses -s chat -w 2 itself when it cannot relay.
 */
#define SRV_CAP_ROOM		0x8

struct srv_model {
	const char		*name;		/* "echo-epoll" */
	const char		*summary;	/* one line for --help */
	unsigned		 caps;
	int			 default_workers;
	const char		*workers_help;	/* what -w counts */
	const char		*unavailable;	/* --help: what exit 69 means, if
						   more than "address unavailable" */
	const struct srv_option	*options;	/* NULL-name terminated, or NULL */
	srv_option_fn		 on_option;
};

struct srv {
	const struct srv_model	*model;
	const char		*prog;		/* model->name */

	/* The shared command line, parsed and range-checked. */
	const char		*listen;	/* -l, as given */
	int			 port;		/* -p */
	struct net_addr		 addr;		/* what -l/-p resolve to */
	const struct svc	*svc;		/* -s */
	int			 workers;	/* -w */
	int			 backlog;	/* -b */
	int			 max_conns;	/* -m, 0 = unlimited */
	size_t			 bufsize;	/* -B */
	int			 idle_timeout;	/* -t seconds, 0 = never */
	int			 verbose;	/* -1 quiet, 0 normal, 1+ verbose */
	size_t			 highwater;	/* --highwater BYTES */
	int			 sndbuf, rcvbuf;	/* --sndbuf, --rcvbuf; 0 = kernel's */
	struct svc_config	 svc_cfg;	/* --max-frame, --max-line, ... */
	int			 activated;	/* listener came from systemd */

	void			*model_data;	/* for the model's option handler */
};

/* Parse argv; prints usage and exits 64 on error, exits 0 for --help/--version. */
void	srv_init(struct srv *s, const struct srv_model *m, int argc, char **argv,
	    void *model_data);

/* For model option handlers: print "PROG: MSG" and the usage, exit 64. */
void	srv_usage_error(const struct srv *s, const char *fmt, ...)
	    __attribute__((format(printf, 2, 3), noreturn));

/*
 * Parse a decimal number in [MIN, MAX] for option NAME, or exit 64.
 * Suffixes k/m/g (x1024) are accepted when SIZES is non-zero.
 */
long long srv_parse_num(const struct srv *s, const char *name, const char *arg,
	    long long min, long long max, int sizes);

/*
 * The first listening socket: a systemd-activated one, or a new one on
 * s->addr.  Exits 69 (address in use, not available) or 71 (other OS
 * errors) with the address and strerror.  After it, s->addr carries the
 * port actually bound (for -p 0).
 */
int	srv_listen(struct srv *s, int flags);

/*
 * Another listener on the same address, for a worker that wants its own
 * accept queue (SO_REUSEPORT).  Returns FIRST again (dup'ed) when the
 * address cannot be shared that way (unix socket, systemd activation).
 * Returns a descriptor or -errno.
 */
int	srv_listen_again(struct srv *s, int first, int flags);

/* "PROG: listening on ADDR (service NAME)" on stderr, once, flushed. */
void	srv_ready(const struct srv *s);

/*
 * Signals.  SIGPIPE is always ignored: a write to a reset connection must
 * return EPIPE to the loop, not kill the server.
 *
 * srv_signals_block(): block SIGINT/SIGTERM/SIGHUP in the calling thread
 * (call before creating threads, so they inherit the mask) and return a
 * signalfd for them, for models with a readiness loop.
 *
 * srv_stop: set by the stop handler of the blocking models (conn.c's
 * blk_wake_signals(), which also wakes the blocked call).
 */
extern volatile sig_atomic_t srv_stop;
int	srv_signals_block(void);
void	srv_signals_ignore_pipe(void);

/* Add the stop signals, SIGINT, SIGTERM and SIGHUP, to SET. */
void	srv_sigset_stop(sigset_t *set);

/*
 * Take a signal of SET (blocked) within MS (-1: no limit), into SI if not
 * NULL.  Returns the signal, or 0 when none came in time.
 */
int	srv_wait_signal(const sigset_t *set, siginfo_t *si, int ms);

/*
 * The policy for a recipient of a broadcast that does not read: once
 * PENDING bytes already queued for it plus LEN more pass --max-pending,
 * every model disconnects it, rather than let it hold memory or slow the
 * others down.  srv_too_pending() says when; srv_log_not_reading() says
 * so in the log, one line per client dropped.
 */
int	srv_too_pending(const struct srv *s, size_t pending, size_t len);
void	srv_log_not_reading(const struct srv *s, const char *peer,
	    size_t pending);

/* Logging to stderr, prefixed with the program name (and pid for -w > 1). */
void	srv_log(const struct srv *s, const char *fmt, ...)
	    __attribute__((format(printf, 2, 3)));	/* unless -q */
void	srv_debug(const struct srv *s, const char *fmt, ...)
	    __attribute__((format(printf, 2, 3)));	/* only with -v */
void	srv_warn(const struct srv *s, const char *fmt, ...)
	    __attribute__((format(printf, 2, 3)));	/* always */

/* Monotonic time in milliseconds. */
int64_t	srv_now_ms(void);

/*
 * Waits with a deadline on the monotonic clock, so that a step of the
 * wall clock neither shortens nor stretches them: srv_cond_init() makes
 * a condition variable that measures its timeouts on that clock (0 or
 * -ENOMEM), srv_deadline() the absolute time MS from now on it.
 */
int	srv_cond_init(pthread_cond_t *cv);
void	srv_deadline(struct timespec *ts, int ms);

/*
 * Raise RLIMIT_NOFILE's soft limit to the hard limit: a server that wants
 * 10,000 connections should not stop at the default 1,024.
 */
void	srv_raise_nofile(const struct srv *s);

#endif

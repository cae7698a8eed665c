/*
 * conn — one connection, served either by a blocking caller (a process or
 * thread of its own) or by a readiness loop; what the models share below
 * their own loop.
 *
 * Blocking models (iterative, fork, thread, prefork, threadpool) hand an
 * accepted descriptor to conn_serve(): read, feed the service, write the
 * reply with net_write_all(), until EOF.  Their stop signal wakes the
 * blocked call by shutting the descriptor down (conn_wake_*), and threaded
 * models keep the descriptors being served in a conn_reg so that the main
 * thread can wake and wait for them at stop.
 *
 * Multi-client loops (nonblock, select, poll, sigio) keep a struct conn per
 * client in a struct conn_loop: the output queue, the high-water
 * backpressure, half-close, lingering close, idle expiry and the graceful
 * stop live here; the model only says how it learns that a descriptor is
 * ready, through three hooks (struct conn_ops).
 */
#ifndef IOMODELS_CONN_H
#define IOMODELS_CONN_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "net.h"
#include "server.h"
#include "service.h"

/* ---- blocking: one caller per connection ---------------------------------- */

struct conn_reg;

/*
 * Serve FD until the peer's EOF, an error, the idle timeout (-t, through
 * SO_RCVTIMEO/SO_SNDTIMEO) or a close the service asks for.  BUF is the
 * caller's read buffer of s->bufsize bytes.  The caller closes FD.
 *
 * REG (or NULL) is the registry FD was added to by a threaded model.  A
 * service that broadcasts (chat) reaches the other clients through it:
 * a line is queued to every other registered connection, under that
 * connection's lock, and its own thread writes it.  So the thread serving
 * a client waits in poll() for two things, its socket and an eventfd that
 * says "output was queued for you", instead of in read() alone.
 */
void	conn_serve(const struct srv *s, int fd, const struct net_addr *peer,
	    uint8_t *buf, struct conn_reg *reg);

/*
 * The start and end of a blocking model's main thread.  After srv_init():
 * raise RLIMIT_NOFILE, listen (blocking), open the reserve descriptor for
 * EMFILE into *RESERVE, install the stop handler (conn_wake_signals) and
 * register the listener with it.  Exits 69/71 on failure like
 * srv_listen().  Returns the listener.  conn_blocking_close() unregisters
 * and closes both.
 */
int	conn_blocking_listen(struct srv *s, int *reserve);
void	conn_blocking_close(int lfd, int reserve);

/*
 * Stop signals for blocking models.  The net_ functions retry EINTR, and a
 * signal that lands between the check of a flag and the blocking call
 * would be lost anyway, so the handler wakes the blocked call itself: it
 * sets srv_stop and shuts down (SHUT_RD) the descriptors registered here.
 * A listener's accept() then fails with EINVAL; a connection's read()
 * returns 0, as at EOF, while its writes still go out, so the reply in
 * progress is finished.  A write blocked on a client that does not read
 * would hold the stop forever: the stop also arms alarm() for the grace
 * period, and SIGALRM then shuts the connection down for writing too (the
 * write fails with EPIPE).  SIGALRM is this layer's in blocking models.  CONN_WAKE_EXIT in the connection slot makes the
 * handler _exit(0) instead: a preforked child idle in accept() or in its
 * accept lock has nothing to finish (and must not shut down the listener
 * its siblings share).
 *
 * conn_wake_signals() installs the handler for SIGINT/SIGTERM/SIGHUP (no
 * SA_RESTART) and ignores SIGPIPE.  The slots are per process: only the
 * thread that takes the signal may use them, so threaded models block the
 * signals in every other thread.
 */
#define CONN_WAKE_LISTENER	0
#define CONN_WAKE_CONN		1
#define CONN_WAKE_EXIT		(-2)

void	conn_wake_signals(void);
void	conn_wake_set(int slot, int fd);	/* -1: nothing to wake */

/*
 * The descriptors being served by threads, for the main thread's stop:
 * conn_reg_drain() shuts them down for reading (each thread finishes its
 * reply and sees EOF), waits up to GRACE_MS for the set to empty, then
 * shuts them down for writing too (a thread blocked writing to a client
 * that does not read gets EPIPE) and waits until every thread is out.
 * conn_reg_wait_below() blocks while N or more are registered (-m).
 *
 * It is also the chat room of the threaded models: conn_serve() attaches
 * the connection's output queue to its slot, and a broadcast walks the
 * slots under the registry's lock.  One lock for the whole room: clients
 * that broadcast at the same moment take turns (each only long enough to
 * queue a copy per recipient, never to write to a socket).
 */
struct bconn;

struct conn_reg_slot {
	int		 fd;
	struct bconn	*b;		/* attached by conn_serve(), or NULL */
};

struct conn_reg {
	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;
	struct conn_reg_slot *slots;
	size_t		 n, cap;
	unsigned long	 dels;		/* how many have left */
	int		 closing;	/* draining: refuse new ones */
};

int	conn_reg_init(struct conn_reg *);
void	conn_reg_fini(struct conn_reg *);
int	conn_reg_add(struct conn_reg *, int fd);	/* 0, -ENOMEM, -ESHUTDOWN */
void	conn_reg_del(struct conn_reg *, int fd);
void	conn_reg_wait_below(struct conn_reg *, size_t n);
void	conn_reg_drain(struct conn_reg *, int grace_ms);

/*
 * Block in accept() on the blocking listener LFD until a connection comes
 * or srv_stop is set (-EINTR).  On EMFILE/ENFILE, wait up to a second for
 * a thread of REG (if any) to close its connection, else shed the pending
 * one with the RESERVE descriptor (net_accept_shed()), instead of retrying
 * at once forever; other transient errors are logged and retried after a
 * pause.  Returns the descriptor, -EINTR at stop, or -errno (logged) when
 * the listener itself is unusable.
 */
int	conn_accept_wait(const struct srv *s, int lfd, struct net_addr *peer,
	    int *reserve, struct conn_reg *reg);


/* ---- readiness loops: many connections in one thread ---------------------- */

struct conn_chunk;
struct conn_loop;

/* Connection flags. */
#define CONN_EOF	0x01	/* peer shut down its write side */
#define CONN_PAUSED	0x02	/* not reading: too much output queued */
#define CONN_CLOSE	0x04	/* close once the output is flushed */
#define CONN_LINGER	0x08	/* output done, discarding input until EOF */
#define CONN_DEAD	0x10	/* closed; freed after the current batch */
#define CONN_DOOMED	0x20	/* to be closed once the current event is done */
#define CONN_AGAIN	0x40	/* on the again list (edge-style models) */

struct conn {
	int		 fd;
	unsigned	 flags;
	int		 slot;		/* the model's index (pollfd array, ...) */
	size_t		 pending;	/* bytes queued for output */
	struct conn_chunk *head, *tail;
	int64_t		 last;		/* last activity, for -t and linger */
	struct conn	*prev, *next;	/* live (LRU) or linger list */
	struct conn	*dead_next, *doom_next, *again_next;
	struct svc_sink	 sink;
	char		*peer;		/* only when the service or -v wants it */
	uint64_t	 state[];	/* the service's per-connection state */
};

/*
 * What a model tells the loop.  add: a new connection enters the model's
 * table (< 0 refuses it).  update: the connection's interest
 * (conn_interest()) may have changed; NULL when the model asks every time.
 * remove: the connection leaves the table, just before close().
 */
struct conn_ops {
	int	(*add)(struct conn_loop *, struct conn *);
	void	(*update)(struct conn_loop *, struct conn *);
	void	(*remove)(struct conn_loop *, struct conn *);
};

struct conn_list {
	struct conn	*head, *tail;
};

struct conn_loop {
	struct srv		*srv;
	const struct conn_ops	*ops;
	void			*model;		/* the model's own state */
	int			 lfd, reserve;
	int			 accepting;	/* the model watches lfd */
	int			 accept_again;	/* edge models: try accept */
	int			 fd_limit;	/* refuse fd >= this; 0 = none */
	int			 edge;		/* readiness is not re-reported */
	int			 stopping;
	int64_t			 stop_deadline;
	int			 nconns;
	unsigned long		 progress;	/* bytes moved, accepts, EOFs */
	struct conn_list	 live, linger;
	struct conn		*dead, *doomed, *again;
	uint8_t			*rbuf;
};

/* What a connection waits for. */
#define CONN_WANT_READ	0x1
#define CONN_WANT_WRITE	0x2

int	conn_loop_init(struct conn_loop *, struct srv *, int lfd,
	    const struct conn_ops *, void *model);
void	conn_loop_fini(struct conn_loop *);

unsigned conn_interest(const struct conn *);

/*
 * Accept up to a batch of connections.  Returns 1 when the batch ran out
 * with more perhaps pending (an edge-style model must come back: it also
 * sets accept_again), 0 otherwise.
 */
int	conn_accept(struct conn_loop *);

/*
 * The descriptor is readable / writable (or in error: either will do).
 * conn_drain() reads on past a short read, until EAGAIN: for input that
 * will not be notified again (edge-style models, after lost signals).
 */
void	conn_readable(struct conn_loop *, struct conn *);
void	conn_drain(struct conn_loop *, struct conn *);
void	conn_writable(struct conn_loop *, struct conn *);

/* After each event: close the connections doomed during it. */
void	conn_event_done(struct conn_loop *);

/*
 * Between batches: expire idle and lingering connections and, once
 * stopping, the ones past the grace period; free the dead; resume
 * accepting below -m.  Returns the milliseconds the model may sleep
 * (-1: until something happens; 0 when the again list is not empty).
 */
int	conn_tick(struct conn_loop *);

/*
 * Edge-style models: conn_again() marks a connection that may have input
 * nobody will notify again (just registered, a full batch read, reading
 * resumed); conn_run_again() reads them.
 */
void	conn_again(struct conn_loop *, struct conn *);
void	conn_run_again(struct conn_loop *);

/*
 * Graceful stop: the model stops watching the listener first, then
 * calls this, which closes it; idle connections close now, the others
 * get a grace period to flush.  conn_loop_done() once all are closed.
 */
void	conn_begin_stop(struct conn_loop *);

/*
 * The start of a one-thread loop's main(), after srv_init(): raise
 * RLIMIT_NOFILE, listen non-blocking, and block the stop signals into a
 * signalfd (*SFD).  Exits 69/71 on failure.  Returns the listener.
 */
int	conn_loop_listen(struct srv *s, int *sfd);
/* Drain the non-blocking signalfd SFD (srv_signals_block()); a stop
 * signal begins the stop.  Returns 1 when one came. */
int	conn_signalfd(struct conn_loop *, int sfd);
int	conn_loop_done(const struct conn_loop *);

#endif

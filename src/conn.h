/*
 * conn — a connection in a readiness loop: many connections in one thread.
 *
 * Multi-client loops (nonblock, select, poll, epoll, sigio) keep a struct
 * conn per client in a struct conn_loop: the output queue, the high-water
 * backpressure, half-close, lingering close, idle expiry and the graceful
 * stop live here; the model only says how it learns that a descriptor is
 * ready, through three hooks (struct conn_ops).
 */
#ifndef IOMODELS_CONN_H
#define IOMODELS_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "net.h"
#include "outq.h"
#include "server.h"
#include "service.h"

struct conn_loop;

/* Connection flags. */
#define CONN_EOF	0x01	/* peer shut down its write side */
#define CONN_PAUSED	0x02	/* not reading: too much output queued */
#define CONN_CLOSE	0x04	/* close once the output is flushed */
#define CONN_LINGER	0x08	/* output done, discarding input until EOF */
#define CONN_DEAD	0x10	/* closed; freed after the current batch */
#define CONN_DOOMED	0x20	/* to be closed once the current event is done */
#define CONN_AGAIN	0x40	/* on the again list (edge-style models) */
#define CONN_PACED	0x80	/* not reading: a recipient is congested */
#define CONN_CONGEST	0x100	/* above the high-water mark: paces senders */
#define CONN_STALLED	0x200	/* congested, but no progress for a while */

struct conn {
	int		 fd;
	unsigned	 flags;
	int		 slot;		/* the model's index (pollfd array, ...) */
	unsigned	 watched;	/* the model's: what its kernel set holds */
	struct outq	 out;		/* output the kernel did not take */
	int64_t		 last;		/* last activity, for -t and linger */
	int64_t		 prog;		/* congested: the last write progress */
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
 * remove: the connection leaves the table, just before close().  listen:
 * the loop starts (1) or stops (0) accepting: at its first conn_tick(),
 * at the -m limit and below it again, and at stop before it closes the
 * listener; NULL when the model looks at lp->accepting every time.
 */
struct conn_ops {
	int	(*add)(struct conn_loop *, struct conn *);
	void	(*update)(struct conn_loop *, struct conn *);
	void	(*remove)(struct conn_loop *, struct conn *);
	void	(*listen)(struct conn_loop *, int on);
};

struct conn_list {
	struct conn	*head, *tail;
};

struct conn_loop {
	struct srv		*srv;
	const struct conn_ops	*ops;
	void			*model;		/* the model's own state */
	int			 lfd, reserve;
	int			 accepting;	/* the loop's: see conn_ops.listen */
	int			 accept_again;	/* edge models: try accept */
	int			 fd_limit;	/* init's: refuse fd >= this; 0 = none */
	int			 edge;		/* init's: readiness is not re-reported */
	int			 stopping;
	int64_t			 stop_deadline;
	int			 nconns;
	int			 ncongest;	/* recipients pacing the others */
	unsigned long		 progress;	/* bytes moved, accepts, EOFs */
	unsigned long		 accepts;	/* connections accepted, ever */
	struct conn_list	 live, linger;
	struct conn		*dead, *doomed, *again;
	uint8_t			*rbuf;
};

/* What a connection waits for. */
#define CONN_WANT_READ	0x1
#define CONN_WANT_WRITE	0x2

/*
 * FD_LIMIT (or 0): descriptors from it up are refused (select's
 * FD_SETSIZE).  EDGE: the model hears of input once, when it arrives
 * (sigio): the loop keeps the again list for it.  Returns 0 or -errno.
 */
int	conn_loop_init(struct conn_loop *, struct srv *, int lfd,
	    const struct conn_ops *, void *model, int fd_limit, int edge);
void	conn_loop_fini(struct conn_loop *);

unsigned conn_interest(const struct conn *);

/*
 * Accept up to a batch of connections (nothing unless accepting).
 * Returns 1 when the batch ran out with more perhaps pending (an
 * edge-style model must come back: accept_again is then set; it is
 * cleared otherwise), 0 otherwise.
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
 * Graceful stop: the loop stops accepting (the listen hook) and closes
 * the listener; idle connections close now, the others get
 * SRV_STOP_GRACE_MS to flush.  conn_loop_done() once all are closed.
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

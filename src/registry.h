/*
 * registry — the descriptors being served by threads, and the chat room
 * of the threaded models (one output queue per member).
 */
#ifndef IOMODELS_REGISTRY_H
#define IOMODELS_REGISTRY_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "net.h"
#include "server.h"
#include "service.h"

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

/*
 * A member of the chat room: a connection whose output other threads
 * queue to.
 */
struct bchunk;

struct bconn {
	int		 fd;
	int		 werr;		/* the reply failed: no lingering close */
	const struct srv *srv;
	const char	*peer;

	/* Broadcast services only (a registry was given). */
	struct conn_reg	*reg;
	int		 efd;		/* eventfd: the queue became non-empty */
	pthread_mutex_t	 mu;		/* the queue, pending, doomed */
	struct bchunk	*head, *tail;
	size_t		 pending;	/* bytes queued, not yet written */
	int		 writing;	/* a thread is writing to fd */
	int		 doomed;	/* past --max-pending: shut down */
};

int	conn_reg_init(struct conn_reg *);
void	conn_reg_fini(struct conn_reg *);
int	conn_reg_add(struct conn_reg *, int fd);	/* 0, -ENOMEM, -ESHUTDOWN */
void	conn_reg_del(struct conn_reg *, int fd);
void	conn_reg_wait_below(struct conn_reg *, size_t n);
void	conn_reg_drain(struct conn_reg *, int grace_ms);

/*
 * Wait up to MS for one of the registered to leave (and so free its
 * descriptor); 1 if one did.
 */
int	conn_reg_wait_drop(struct conn_reg *, int ms);

/* The chat member queues (used by conn_serve()). */
void	bconn_writing(struct bconn *b, int on);
int	bconn_broadcast(struct svc_sink *sink, const void *buf, size_t len);
int	bconn_flush(struct bconn *b);
int	bconn_attach(struct bconn *b, struct conn_reg *r);
void	bconn_detach(struct bconn *b);

#endif

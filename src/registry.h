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
 * reg_drain() shuts them down for reading (each thread finishes its
 * reply and sees EOF), waits up to GRACE_MS for the set to empty, then
 * shuts them down for writing too (a thread blocked writing to a client
 * that does not read gets EPIPE) and waits until every thread is out.
 * reg_wait_below() blocks while N or more are registered (-m).
 *
 * It is also the chat room of the threaded models: blk_serve() attaches
 * the connection's output queue to its slot, and a broadcast walks the
 * slots under the registry's lock.  One lock for the whole room: clients
 * that broadcast at the same moment take turns (each only long enough to
 * queue a copy per recipient, never to write to a socket).  A recipient
 * that falls behind but reads paces the broadcasters (SRV_STALL_MS): they
 * wait on the registry's condition variable until it drains.
 */
struct reg_member;

struct reg_slot {
	int		 fd;
	struct reg_member *b;		/* attached by blk_serve(), or NULL */
};

struct registry {
	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;
	struct reg_slot *slots;
	size_t		 n, cap;
	unsigned long	 dels;		/* how many have left */
	int		 closing;	/* draining: refuse new ones */
};

/*
 * A member of the chat room: a connection whose output other threads
 * queue to.
 */
struct reg_chunk;

struct reg_member {
	int		 fd;
	int		 werr;		/* the reply failed: no lingering close */
	const struct srv *srv;
	const char	*peer;

	/* Broadcast services only (a registry was given). */
	struct registry	*reg;
	int		 efd;		/* eventfd: the queue became non-empty */
	pthread_mutex_t	 mu;		/* the queue, pending, doomed */
	struct reg_chunk *head, *tail;
	size_t		 pending;	/* bytes queued, not yet written */
	int		 writing;	/* a thread is writing to fd */
	int		 doomed;	/* past --max-pending: shut down */
	int		 waited;	/* a broadcaster waits for it to drain */
	int64_t		 prog;		/* the queue's last write progress */
	int		 pacing;	/* its thread waits in reg_pace() (reg's lock) */
};

int	reg_init(struct registry *);
void	reg_fini(struct registry *);
int	reg_add(struct registry *, int fd);	/* 0, -ENOMEM, -ESHUTDOWN */
void	reg_del(struct registry *, int fd);
void	reg_wait_below(struct registry *, size_t n);
void	reg_drain(struct registry *, int grace_ms);

/*
 * Wait up to MS for one of the registered to leave (and so free its
 * descriptor); 1 if one did.
 */
int	reg_wait_drop(struct registry *, int ms);

/* The chat member queues (used by blk_serve()). */
void	reg_writing(struct reg_member *b, int on);
int	reg_broadcast(struct svc_sink *sink, const void *buf, size_t len);
int	reg_flush(struct reg_member *b);
int	reg_join(struct reg_member *b, struct registry *r);
void	reg_leave(struct reg_member *b);

#endif

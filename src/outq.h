/*
 * outq — a connection's output that the kernel did not take yet, for the
 * models that write from one thread to non-blocking sockets: the readiness
 * loops (conn.c) and echo-coro.  A byte queue in chunks, written out with
 * writev().
 */
#ifndef IOMODELS_OUTQ_H
#define IOMODELS_OUTQ_H

#include <stddef.h>

struct outq_chunk;

struct outq {
	struct outq_chunk *head, *tail;
	size_t		 pending;	/* bytes queued */
};

/* Append a copy of BUF.  0, or -ENOMEM (nothing queued). */
int	outq_push(struct outq *, const void *buf, size_t len);

/*
 * Write BUF to the non-blocking FD at once when nothing is queued before
 * it (the common case: one write per message, no copy), and queue what
 * the socket does not take.  0, -ENOMEM, or the write's -errno (nothing
 * queued: the connection is broken).
 */
int	outq_send(struct outq *, int fd, const void *buf, size_t len);

/*
 * writev() the queue to FD until it is empty or the socket is full (a
 * short write or EAGAIN).  0, or -errno on error; whether anything went,
 * and whether something is left, the caller reads from PENDING.
 */
int	outq_write(struct outq *, int fd);

/* Drop what is queued. */
void	outq_clear(struct outq *);

#endif

/*
 * registry — the descriptors that threads are serving, and the chat room
 * of the threaded models: one output queue per member.  See registry.h.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "registry.h"

/* ---- chat member queues ------------------------------------------------- */

/*
 * Output other threads queued for a connection.  One copy per recipient:
 * a chunk is freed by the thread that wrote it, whenever that is.  Unlike
 * the readiness loops' conn_chunk, a chunk is never appended to once
 * queued: its owner writes it outside the lock, so its bytes and length
 * must not change under that write.
 */
struct reg_chunk {
	struct reg_chunk	*next;
	size_t		 len;
	uint8_t		 data[];
};

/*
 * With a broadcast service, other clients' threads write to this socket
 * too (reg_queue).  Two writers must not interleave their bytes: the
 * socket's write side belongs to whoever set WRITING under the lock, and
 * a broadcaster that finds it taken queues its bytes instead.
 */
void
reg_writing(struct reg_member *b, int on)
{
	if (b->reg == NULL)
		return;
	pthread_mutex_lock(&b->mu);
	b->writing = on;
	pthread_mutex_unlock(&b->mu);
}

/*
 * Send BUF to B, from another client's thread, with the registry locked
 * (so B's descriptors stay open: B leaves the registry under that lock
 * before its thread closes them).  When nothing is queued for B and no
 * one is writing to it, a non-blocking send() hands the bytes to the
 * kernel at once, as a readiness loop would; what the kernel does not
 * take is copied to B's queue, for B's own thread to write.  Only that
 * queue counts against --max-pending (the kernel's socket buffer is not
 * the client's fault).  Past it, B is not reading: shutting its socket
 * down wakes its thread wherever it blocks (poll() sees EOF, a write
 * fails with EPIPE), and it leaves the room.
 */
static void
reg_queue(struct reg_member *b, const uint8_t *buf, size_t len)
{
	const struct srv *s = b->srv;
	struct reg_chunk *c = NULL;
	size_t pending;
	ssize_t n;
	int wake = 0, doom = 0;

	pthread_mutex_lock(&b->mu);
	if (b->doomed)
		goto out;
	if (b->head == NULL && !b->writing) {
		n = send(b->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			goto out;	/* B's own thread will see the error */
		if (n > 0) {
			buf += n;
			len -= (size_t)n;
		}
		if (len == 0)
			goto out;
	}
	pending = b->pending;
	if (srv_too_pending(s, pending, len) ||
	    (c = malloc(sizeof(*c) + len)) == NULL)
		doom = b->doomed = 1;
	else {
		c->next = NULL;
		c->len = len;
		memcpy(c->data, buf, len);
		if (b->pending == 0)
			b->prog = srv_now_ms();	/* a backlog starts */
		if (b->tail)
			b->tail->next = c;
		else
			b->head = c;
		b->tail = c;
		/* Only the first chunk needs a wake-up: the flush runs until
		 * the queue is empty. */
		wake = b->pending == 0;
		b->pending += len;
	}
out:
	pthread_mutex_unlock(&b->mu);
	if (doom) {
		srv_log_not_reading(s, b->peer, pending);
		(void)shutdown(b->fd, SHUT_RDWR);
	}
	if (wake)
		(void)eventfd_write(b->efd, 1);
}

/*
 * Milliseconds until the first recipient congested now (more than the
 * high-water mark queued) would count as stalled, or 0 when none is.  The
 * registry is locked.  A recipient whose own thread waits here too is
 * left out (it cannot drain while it waits: two broadcasters would wait
 * for each other), and so is one without progress for SRV_STALL_MS: it
 * does not read, and is dropped at --max-pending instead.
 */
static int64_t
reg_congested(struct registry *r, struct reg_member *self)
{
	int64_t now = srv_now_ms(), wait = 0, t;
	struct reg_member *b;
	size_t i;

	for (i = 0; i < r->n; i++) {
		if ((b = r->slots[i].b) == NULL || b == self || b->pacing)
			continue;
		pthread_mutex_lock(&b->mu);
		if (!b->doomed && b->pending >= self->srv->highwater &&
		    (t = b->prog + SRV_STALL_MS - now) > 0) {
			b->waited = 1;
			if (wait == 0 || t < wait)
				wait = t;
		}
		pthread_mutex_unlock(&b->mu);
	}
	return wait;
}

/*
 * Pacing (server.h): the broadcaster's thread waits while a recipient
 * that reads is more than the high-water mark behind, as a readiness loop
 * stops reading the sender; its client's input waits in the kernel, and
 * TCP's window pushes back on the talker.  Woken when a recipient drains
 * to half the mark or leaves; the timeout is when it would count as
 * stalled.  A stop signal cannot reach a condition variable, so a stop
 * waits at most SRV_STALL_MS here.
 */
static void
reg_pace(struct registry *r, struct reg_member *self)
{
	struct timespec ts;
	int64_t wait;

	self->pacing = 1;
	/*
	 * Others waiting on us may stop now (a pacing member does not hold
	 * anyone up): tell them, or they sleep out their timeout.
	 */
	pthread_cond_broadcast(&r->cv);
	while (!srv_stop && (wait = reg_congested(r, self)) > 0) {
		srv_deadline(&ts, (int)wait);
		pthread_cond_timedwait(&r->cv, &r->mu, &ts);
	}
	self->pacing = 0;
}

int
reg_broadcast(struct svc_sink *sink, const void *buf, size_t len)
{
	struct reg_member *self = sink->conn;
	struct registry *r = self->reg;
	size_t i;

	pthread_mutex_lock(&r->mu);
	for (i = 0; i < r->n; i++)
		if (r->slots[i].b != NULL && r->slots[i].b != self)
			reg_queue(r->slots[i].b, buf, len);
	reg_pace(r, self);
	pthread_mutex_unlock(&r->mu);
	return 0;
}

/*
 * Write what the others queued for this client, in its own thread and
 * with blocking writes: a client that does not read stalls only the
 * thread that serves it.  A chunk leaves the queue (and --max-pending's
 * count) once written, so a stalled write keeps counting against the cap.
 */
int
reg_flush(struct reg_member *b)
{
	struct reg_chunk *c;
	ssize_t n;
	int wake;

	for (;;) {
		pthread_mutex_lock(&b->mu);
		c = b->head;
		b->writing = c != NULL;
		pthread_mutex_unlock(&b->mu);
		if (c == NULL)
			return 0;
		n = net_write_all(b->fd, c->data, c->len);
		pthread_mutex_lock(&b->mu);
		b->head = c->next;
		if (b->head == NULL)
			b->tail = NULL;
		b->pending -= c->len;
		b->writing = 0;
		b->prog = srv_now_ms();
		wake = b->waited && b->pending <= b->srv->highwater / 2;
		if (wake)
			b->waited = 0;
		pthread_mutex_unlock(&b->mu);
		if (wake) {
			/* A broadcaster waits in reg_pace(). */
			pthread_mutex_lock(&b->reg->mu);
			pthread_cond_broadcast(&b->reg->cv);
			pthread_mutex_unlock(&b->reg->mu);
		}
		if (n != (ssize_t)c->len) {
			free(c);
			b->werr = n < 0 ? (int)-n : EPIPE;
			return -1;
		}
		free(c);
	}
}

/* Give B a queue and put it in the slot reg_add() made for its fd. */
int
reg_join(struct reg_member *b, struct registry *r)
{
	size_t i;

	b->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (b->efd < 0)
		return -errno;
	if (pthread_mutex_init(&b->mu, NULL) != 0) {
		close(b->efd);
		return -ENOMEM;
	}
	b->reg = r;
	/*
	 * Hold the write side until svc_open() has run: the others' lines
	 * queue behind this client's welcome instead of racing ahead of it.
	 */
	b->writing = 1;
	pthread_mutex_lock(&r->mu);
	for (i = 0; i < r->n && r->slots[i].fd != b->fd; i++)
		;
	if (i < r->n)
		r->slots[i].b = b;
	pthread_mutex_unlock(&r->mu);
	return 0;
}

void
reg_leave(struct reg_member *b)
{
	struct registry *r = b->reg;
	struct reg_chunk *c;
	size_t i;

	pthread_mutex_lock(&r->mu);
	for (i = 0; i < r->n; i++)
		if (r->slots[i].b == b)
			r->slots[i].b = NULL;
	pthread_cond_broadcast(&r->cv);		/* reg_pace() waits for B */
	pthread_mutex_unlock(&r->mu);
	/* Nobody can reach B now. */
	while ((c = b->head) != NULL) {
		b->head = c->next;
		free(c);
	}
	pthread_mutex_destroy(&b->mu);
	close(b->efd);
	b->efd = -1;
}

/* ---- the descriptors threads are serving ----------------------------------- */

int
reg_init(struct registry *r)
{
	memset(r, 0, sizeof(*r));
	if (srv_cond_init(&r->cv) < 0)
		return -ENOMEM;
	if (pthread_mutex_init(&r->mu, NULL) != 0)
		return -ENOMEM;
	return 0;
}

void
reg_fini(struct registry *r)
{
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	free(r->slots);
}

int
reg_add(struct registry *r, int fd)
{
	struct reg_slot *p;
	int err = 0;

	pthread_mutex_lock(&r->mu);
	if (r->closing)
		err = -ESHUTDOWN;
	else if (r->n == r->cap) {
		p = realloc(r->slots, (r->cap ? r->cap * 2 : 64) * sizeof(*p));
		if (p == NULL)
			err = -ENOMEM;
		else {
			r->slots = p;
			r->cap = r->cap ? r->cap * 2 : 64;
		}
	}
	if (err == 0)
		r->slots[r->n++] = (struct reg_slot){ .fd = fd };
	pthread_mutex_unlock(&r->mu);
	return err;
}

void
reg_del(struct registry *r, int fd)
{
	size_t i;

	pthread_mutex_lock(&r->mu);
	for (i = 0; i < r->n; i++)
		if (r->slots[i].fd == fd) {
			r->slots[i] = r->slots[--r->n];
			r->dels++;
			break;
		}
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

void
reg_wait_below(struct registry *r, size_t n)
{
	struct timespec ts;

	/*
	 * A signal handler may not touch a condition variable, so a stop
	 * cannot wake this wait: it looks at srv_stop every 100 ms.
	 */
	pthread_mutex_lock(&r->mu);
	while (r->n >= n && !srv_stop) {
		srv_deadline(&ts, 100);
		pthread_cond_timedwait(&r->cv, &r->mu, &ts);
	}
	pthread_mutex_unlock(&r->mu);
}

/*
 * Wait up to MS for one of the registered to leave (and so free its
 * descriptor); 1 if one did.  Counted, not compared with the number
 * registered: a busy pool takes a new one as soon as one leaves.
 */
int
reg_wait_drop(struct registry *r, int ms)
{
	struct timespec ts;
	unsigned long d0;
	int dropped;

	pthread_mutex_lock(&r->mu);
	d0 = r->dels;
	srv_deadline(&ts, ms);
	while (r->dels == d0 && r->n > 0 && !srv_stop)
		if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT)
			break;
	dropped = r->dels != d0;
	pthread_mutex_unlock(&r->mu);
	return dropped;
}

static void
reg_shutdown(struct registry *r, int how)
{
	size_t i;

	/*
	 * Under the lock, so a descriptor cannot be closed (and its number
	 * reused) between being listed and being shut down: a thread
	 * leaves the set before it closes.
	 */
	for (i = 0; i < r->n; i++)
		(void)shutdown(r->slots[i].fd, how);
}

void
reg_drain(struct registry *r, int grace_ms)
{
	struct timespec ts;

	pthread_mutex_lock(&r->mu);
	r->closing = 1;
	reg_shutdown(r, SHUT_RD);
	srv_deadline(&ts, grace_ms);
	while (r->n > 0)
		if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT)
			break;
	if (r->n > 0)
		reg_shutdown(r, SHUT_RDWR);
	while (r->n > 0)
		pthread_cond_wait(&r->cv, &r->mu);
	pthread_mutex_unlock(&r->mu);
}

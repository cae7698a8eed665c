/*
 * conn — a connection served by a blocking caller, or by a readiness
 * loop.  See conn.h.
 *
 * The readiness half is the machinery of a one-thread server: output that
 * the kernel did not take is queued per connection, a connection that
 * queues too much is no longer read (backpressure), EOF waits for the
 * output (half-close), an error reply is followed by a lingering close,
 * and a connection is freed only after the batch of events that may
 * still name it.  The model supplies how readiness is learnt.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"

#define READS_PER_EVENT		16	/* then let the other connections run */
#define ACCEPTS_PER_EVENT	64
#define LINGER_MS		2000
#define STOP_GRACE_MS		2000
#define EMFILE_WAIT_MS		1000
#define MIN_CHUNK		4096

static int
is_reset(int err)
{
	return err == EPIPE || err == ECONNRESET || err == ENOTCONN ||
	    err == ETIMEDOUT;
}

/* ---- blocking ------------------------------------------------------------ */

/*
 * Output other threads queued for a connection.  One copy per recipient:
 * a chunk is freed by the thread that wrote it, whenever that is.  Unlike
 * the readiness loops' conn_chunk, a chunk is never appended to once
 * queued: its owner writes it outside the lock, so its bytes and length
 * must not change under that write.
 */
struct bchunk {
	struct bchunk	*next;
	size_t		 len;
	uint8_t		 data[];
};

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

/*
 * With a broadcast service, other clients' threads write to this socket
 * too (bconn_queue).  Two writers must not interleave their bytes: the
 * socket's write side belongs to whoever set WRITING under the lock, and
 * a broadcaster that finds it taken queues its bytes instead.
 */
static void
bconn_writing(struct bconn *b, int on)
{
	if (b->reg == NULL)
		return;
	pthread_mutex_lock(&b->mu);
	b->writing = on;
	pthread_mutex_unlock(&b->mu);
}

static int
bconn_reply(struct svc_sink *sink, const void *buf, size_t len)
{
	struct bconn *b = sink->conn;
	ssize_t n;

	bconn_writing(b, 1);
	n = net_write_all(b->fd, buf, len);
	bconn_writing(b, 0);
	if (n == (ssize_t)len)
		return 0;
	b->werr = n < 0 ? (int)-n : EPIPE;
	return -b->werr;
}

static void
set_timeouts(int fd, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = ms % 1000 * 1000 };

	/*
	 * A blocking read() or write() then fails with EAGAIN after MS
	 * without progress: the idle timeout of a model that has no loop
	 * to keep time in.
	 */
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/*
 * The service asked to close after its error reply.  close() with unread
 * input sends RST, which may destroy that reply in the client's receive
 * buffer: send FIN, and read and discard until the client closes too, for
 * at most LINGER_MS.
 */
static void
bconn_linger(int fd, uint8_t *buf, size_t size)
{
	int64_t end = srv_now_ms() + LINGER_MS, left;

	if (shutdown(fd, SHUT_WR) < 0)
		return;
	while ((left = end - srv_now_ms()) > 0) {
		set_timeouts(fd, (int)left);
		if (net_read_some(fd, buf, size) <= 0)
			break;
	}
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
bconn_queue(struct bconn *b, const uint8_t *buf, size_t len)
{
	const struct srv *s = b->srv;
	struct bchunk *c = NULL;
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
	if (pending + len > s->svc_cfg.max_pending ||
	    (c = malloc(sizeof(*c) + len)) == NULL)
		doom = b->doomed = 1;
	else {
		c->next = NULL;
		c->len = len;
		memcpy(c->data, buf, len);
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
		srv_log(s, "%s: %zu bytes of output pending, not reading: "
		    "disconnected", b->peer, pending);
		(void)shutdown(b->fd, SHUT_RDWR);
	}
	if (wake)
		(void)eventfd_write(b->efd, 1);
}

static int
bconn_broadcast(struct svc_sink *sink, const void *buf, size_t len)
{
	struct bconn *self = sink->conn;
	struct conn_reg *r = self->reg;
	size_t i;

	pthread_mutex_lock(&r->mu);
	for (i = 0; i < r->n; i++)
		if (r->slots[i].b != NULL && r->slots[i].b != self)
			bconn_queue(r->slots[i].b, buf, len);
	pthread_mutex_unlock(&r->mu);
	return 0;
}

/*
 * Write what the others queued for this client, in its own thread and
 * with blocking writes: a client that does not read stalls only the
 * thread that serves it.  A chunk leaves the queue (and --max-pending's
 * count) once written, so a stalled write keeps counting against the cap.
 */
static int
bconn_flush(struct bconn *b)
{
	struct bchunk *c;
	ssize_t n;

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
		pthread_mutex_unlock(&b->mu);
		if (n != (ssize_t)c->len) {
			free(c);
			b->werr = n < 0 ? (int)-n : EPIPE;
			return -1;
		}
		free(c);
	}
}

/* Give B a queue and put it in the slot conn_reg_add() made for its fd. */
static int
bconn_attach(struct bconn *b, struct conn_reg *r)
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

static void
bconn_detach(struct bconn *b)
{
	struct conn_reg *r = b->reg;
	struct bchunk *c;
	size_t i;

	pthread_mutex_lock(&r->mu);
	for (i = 0; i < r->n; i++)
		if (r->slots[i].b == b)
			r->slots[i].b = NULL;
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

/*
 * Wait until the client sent something (> 0, read into BUF) or is gone
 * (0: EOF, error or idle; logged).  Without a registry, a blocking read.
 * With one, poll() on the socket and on the eventfd, and write what the
 * others queued in between.
 */
static ssize_t
bconn_read(struct bconn *b, uint8_t *buf, size_t size)
{
	const struct srv *s = b->srv;
	struct pollfd pfd[2] = {
		{ .fd = b->fd, .events = POLLIN },
		{ .fd = b->reg ? b->efd : -1, .events = POLLIN },
	};
	eventfd_t v;
	ssize_t n;
	int r;

	while (b->reg != NULL) {
		r = poll(pfd, 2, s->idle_timeout > 0 ? s->idle_timeout * 1000 : -1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0) {
			srv_debug(s, "%s idle for %d s: closing", b->peer,
			    s->idle_timeout);
			return 0;
		}
		if (r < 0)
			return 0;
		if (pfd[1].revents) {
			(void)eventfd_read(b->efd, &v);
			if (bconn_flush(b) < 0)
				return 0;
		}
		if (pfd[0].revents)
			break;
	}
	n = net_read_some(b->fd, buf, size);
	if (n == -EAGAIN)
		srv_debug(s, "%s idle for %d s: closing", b->peer,
		    s->idle_timeout);
	else if (n < 0 && !is_reset((int)-n))
		srv_debug(s, "%s: read: %s", b->peer, strerror((int)-n));
	return n < 0 ? 0 : n;
}

void
conn_serve(const struct srv *s, int fd, const struct net_addr *peer,
    uint8_t *buf, struct conn_reg *reg)
{
	char name[NET_ADDRSTRLEN];
	struct bconn b = { .fd = fd, .srv = s, .efd = -1 };
	struct svc_sink sink = { .reply = bconn_reply, .conn = &b };
	void *state = NULL;
	ssize_t n;
	int r = 0, opened;

	if (s->idle_timeout > 0)
		set_timeouts(fd, s->idle_timeout * 1000);
	sink.peer = b.peer = peer ? net_addr_str(peer, name, sizeof(name)) : "";
	if (s->svc->state_size > 0 &&
	    (state = calloc(1, s->svc->state_size)) == NULL) {
		srv_warn(s, "%s: out of memory: closing", sink.peer);
		return;
	}
	if (reg != NULL && (s->svc->flags & SVC_NEEDS_BROADCAST)) {
		if ((r = bconn_attach(&b, reg)) < 0) {
			srv_warn(s, "%s: eventfd: %s: closing", sink.peer,
			    strerror(-r));
			free(state);
			return;
		}
		sink.broadcast = bconn_broadcast;
	}
	srv_debug(s, "open %s", sink.peer);
	opened = svc_open(s->svc, &s->svc_cfg, state, &sink) == 0;
	if (opened) {
		bconn_writing(&b, 0);
		while ((n = bconn_read(&b, buf, s->bufsize)) > 0)
			if ((r = svc_input(s->svc, &s->svc_cfg, state, buf,
			    (size_t)n, &sink)) < 0)
				break;
		if (r < 0 && b.werr == 0)
			bconn_linger(fd, buf, s->bufsize);
	}
	/* Out of the room first: the goodbye goes to the others only. */
	if (b.efd >= 0)
		bconn_detach(&b);
	if (opened)
		svc_close(s->svc, &s->svc_cfg, state, &sink);
	srv_debug(s, "close %s", sink.peer);
	free(state);
}

int
conn_blocking_listen(struct srv *s, int *reserve)
{
	int lfd;

	srv_raise_nofile(s);
	lfd = srv_listen(s, 0);
	if ((*reserve = net_reserve_open()) < 0) {
		srv_warn(s, "reserve descriptor: %s", strerror(-*reserve));
		exit(SRV_EX_OSERR);
	}
	conn_wake_signals();
	conn_wake_set(CONN_WAKE_LISTENER, lfd);
	return lfd;
}

void
conn_blocking_close(int lfd, int reserve)
{
	conn_wake_set(CONN_WAKE_LISTENER, -1);
	close(lfd);
	close(reserve);
}

/* ---- stop signals for blocking models -------------------------------------- */

/*
 * The descriptors the stop handler shuts down.  Process-wide state, as a
 * signal handler can reach nothing else.
 */
static volatile sig_atomic_t wake_fds[2] = { -1, -1 };

/*
 * SHUT_RD ends a connection's reads, not a write blocked on a client that
 * sends and never reads: that write waits for room in the client's
 * window, forever.  So a stop also arms an alarm for the grace period,
 * and the alarm shuts the connection down for writing too: the write
 * fails with EPIPE and the serve loop returns.
 */
static void
wake_conn(int how)
{
	int fd = wake_fds[CONN_WAKE_CONN];

	if (fd < 0)
		return;
	(void)shutdown(fd, how);
	if (how == SHUT_RD)
		(void)alarm((STOP_GRACE_MS + 999) / 1000);
}

static void
on_alarm(int sig)
{
	int saved = errno;

	(void)sig;
	if (srv_stop)
		wake_conn(SHUT_RDWR);
	errno = saved;
}

static void
on_wake(int sig)
{
	int saved = errno, fd;

	(void)sig;
	srv_stop = 1;
	if (wake_fds[CONN_WAKE_CONN] == CONN_WAKE_EXIT)
		_exit(SRV_EX_OK);
	wake_conn(SHUT_RD);
	fd = wake_fds[CONN_WAKE_LISTENER];
	if (fd >= 0)
		(void)shutdown(fd, SHUT_RD);
	errno = saved;
}

void
conn_wake_signals(void)
{
	struct sigaction sa;

	srv_signals_ignore_pipe();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_wake;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGINT);
	sigaddset(&sa.sa_mask, SIGTERM);
	sigaddset(&sa.sa_mask, SIGHUP);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
}

void
conn_wake_set(int slot, int fd)
{
	wake_fds[slot] = fd;
	/* A stop that landed before the descriptor was registered. */
	if (srv_stop && fd >= 0 && slot == CONN_WAKE_CONN)
		wake_conn(SHUT_RD);
	else if (srv_stop && fd >= 0)
		(void)shutdown(fd, SHUT_RD);
	else if (srv_stop && fd == CONN_WAKE_EXIT)
		_exit(SRV_EX_OK);
}

/* ---- the descriptors threads are serving ----------------------------------- */

int
conn_reg_init(struct conn_reg *r)
{
	pthread_condattr_t ca;

	memset(r, 0, sizeof(*r));
	/* Deadlines on the monotonic clock: a clock step must not shorten them. */
	if (pthread_condattr_init(&ca) != 0 ||
	    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
	    pthread_cond_init(&r->cv, &ca) != 0)
		return -ENOMEM;
	pthread_condattr_destroy(&ca);
	if (pthread_mutex_init(&r->mu, NULL) != 0)
		return -ENOMEM;
	return 0;
}

void
conn_reg_fini(struct conn_reg *r)
{
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	free(r->slots);
}

int
conn_reg_add(struct conn_reg *r, int fd)
{
	struct conn_reg_slot *p;
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
		r->slots[r->n++] = (struct conn_reg_slot){ .fd = fd };
	pthread_mutex_unlock(&r->mu);
	return err;
}

void
conn_reg_del(struct conn_reg *r, int fd)
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

static void
deadline_in(struct timespec *ts, int ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

void
conn_reg_wait_below(struct conn_reg *r, size_t n)
{
	struct timespec ts;

	/*
	 * A signal handler may not touch a condition variable, so a stop
	 * cannot wake this wait: it looks at srv_stop every 100 ms.
	 */
	pthread_mutex_lock(&r->mu);
	while (r->n >= n && !srv_stop) {
		deadline_in(&ts, 100);
		pthread_cond_timedwait(&r->cv, &r->mu, &ts);
	}
	pthread_mutex_unlock(&r->mu);
}

/*
 * Wait up to MS for one of the registered to leave (and so free its
 * descriptor); 1 if one did.  Counted, not compared with the number
 * registered: a busy pool takes a new one as soon as one leaves.
 */
static int
reg_wait_drop(struct conn_reg *r, int ms)
{
	struct timespec ts;
	unsigned long d0;
	int dropped;

	pthread_mutex_lock(&r->mu);
	d0 = r->dels;
	deadline_in(&ts, ms);
	while (r->dels == d0 && r->n > 0 && !srv_stop)
		if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT)
			break;
	dropped = r->dels != d0;
	pthread_mutex_unlock(&r->mu);
	return dropped;
}

static void
reg_shutdown(struct conn_reg *r, int how)
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
conn_reg_drain(struct conn_reg *r, int grace_ms)
{
	struct timespec ts;

	pthread_mutex_lock(&r->mu);
	r->closing = 1;
	reg_shutdown(r, SHUT_RD);
	deadline_in(&ts, grace_ms);
	while (r->n > 0)
		if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT)
			break;
	if (r->n > 0)
		reg_shutdown(r, SHUT_RDWR);
	while (r->n > 0)
		pthread_cond_wait(&r->cv, &r->mu);
	pthread_mutex_unlock(&r->mu);
}

int
conn_accept_wait(const struct srv *s, int lfd, struct net_addr *peer,
    int *reserve, struct conn_reg *reg)
{
	int fd, r;

	for (;;) {
		if (srv_stop)
			return -EINTR;
		fd = net_accept(lfd, peer, 0);
		if (fd >= 0)
			return fd;
		if (srv_stop)
			return -EINTR;	/* the stop handler shut the listener */
		switch (-fd) {
		case EMFILE:
		case ENFILE:
			/*
			 * The connection stays pending and accept() fails at
			 * once again: without waiting or shedding, a spin.
			 * When threads are serving, one of them closing frees
			 * a descriptor soon: wait for that a while, and shed
			 * the pending connection only if none does.
			 */
			if (reg && reg_wait_drop(reg, EMFILE_WAIT_MS))
				continue;
			r = net_accept_shed(lfd, reserve);
			if (r > 0)
				srv_log(s, "out of descriptors (%s): refused a "
				    "connection", strerror(-fd));
			else
				(void)poll(NULL, 0, 10);
			continue;
		case EINVAL:
		case EBADF:
		case ENOTSOCK:
		case EOPNOTSUPP:
			srv_warn(s, "accept: %s", strerror(-fd));
			return fd;
		default:
			/* ENOBUFS, ENOMEM, EPERM (a firewall): pass, later. */
			srv_warn(s, "accept: %s", strerror(-fd));
			(void)poll(NULL, 0, 10);
		}
	}
}

/* ---- readiness loops -------------------------------------------------------- */

/* Output not yet accepted by the kernel. */
struct conn_chunk {
	struct conn_chunk *next;
	size_t		 off, len, cap;
	uint8_t		 data[];
};

static void conn_doom(struct conn_loop *, struct conn *);

static void
list_remove(struct conn_list *l, struct conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		l->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		l->tail = c->prev;
	c->prev = c->next = NULL;
}

static void
list_append(struct conn_list *l, struct conn *c)
{
	c->prev = l->tail;
	c->next = NULL;
	if (l->tail)
		l->tail->next = c;
	else
		l->head = c;
	l->tail = c;
}

/* The live list is kept in last-activity order: O(1) touch and expiry. */
static void
touch(struct conn_loop *lp, struct conn *c)
{
	c->last = srv_now_ms();
	if (lp->live.tail != c && !(c->flags & CONN_LINGER)) {
		list_remove(&lp->live, c);
		list_append(&lp->live, c);
	}
}

unsigned
conn_interest(const struct conn *c)
{
	unsigned want = 0;

	if (c->flags & (CONN_DEAD | CONN_DOOMED))
		return 0;
	if (!(c->flags & (CONN_EOF | CONN_PAUSED | CONN_CLOSE)) ||
	    (c->flags & CONN_LINGER))
		want |= CONN_WANT_READ;
	if (c->pending > 0)
		want |= CONN_WANT_WRITE;
	return want;
}

static void
update(struct conn_loop *lp, struct conn *c)
{
	if (lp->ops->update && !(c->flags & (CONN_DEAD | CONN_DOOMED)))
		lp->ops->update(lp, c);
}

/*
 * Edge-style models hear of input once, when it arrives.  A connection
 * that stopped reading with input left (a full batch, backpressure, a
 * lingering close starting) goes on the again list, to be read without
 * waiting for a notification that will not come.
 */
void
conn_again(struct conn_loop *lp, struct conn *c)
{
	if (!lp->edge || (c->flags & (CONN_AGAIN | CONN_DEAD)))
		return;
	c->flags |= CONN_AGAIN;
	c->again_next = lp->again;
	lp->again = c;
}

static void
free_chunks(struct conn *c)
{
	struct conn_chunk *k, *next;

	for (k = c->head; k; k = next) {
		next = k->next;
		free(k);
	}
	c->head = c->tail = NULL;
	c->pending = 0;
}

static void
conn_close(struct conn_loop *lp, struct conn *c)
{
	if (c->flags & CONN_DEAD)
		return;
	svc_close(lp->srv->svc, &lp->srv->svc_cfg, c->state, &c->sink);
	if (lp->ops->remove)
		lp->ops->remove(lp, c);
	close(c->fd);
	c->flags |= CONN_DEAD;
	free_chunks(c);
	list_remove((c->flags & CONN_LINGER) ? &lp->linger : &lp->live, c);
	/* Freed after the batch: the model's events may still name it. */
	c->dead_next = lp->dead;
	lp->dead = c;
	lp->nconns--;
	srv_debug(lp->srv, "close %s", c->peer ? c->peer : "");
}

/*
 * A connection that fails while another one is being served (a write
 * error in a broadcast) is closed after the current event: closing runs
 * the service's close hook, which may broadcast in turn, and would unlink
 * connections from the list being walked.
 */
static void
conn_doom(struct conn_loop *lp, struct conn *c)
{
	if (c->flags & (CONN_DEAD | CONN_DOOMED))
		return;
	c->flags |= CONN_DOOMED;
	c->doom_next = lp->doomed;
	lp->doomed = c;
}

void
conn_event_done(struct conn_loop *lp)
{
	struct conn *c;

	while ((c = lp->doomed) != NULL) {
		lp->doomed = c->doom_next;
		conn_close(lp, c);
	}
}

static void
reap_dead(struct conn_loop *lp)
{
	struct conn *c, *keep = NULL;

	while ((c = lp->dead) != NULL) {
		lp->dead = c->dead_next;
		if (c->flags & CONN_AGAIN) {
			/* Still on the again list: freed once it is off. */
			c->dead_next = keep;
			keep = c;
			continue;
		}
		free(c->peer);
		free(c);
	}
	lp->dead = keep;
}

/* Lingering close: see bconn_linger() for why. */
static void
conn_linger(struct conn_loop *lp, struct conn *c)
{
	/*
	 * Input that arrives while lingering ends in after_flush() again
	 * (CONN_CLOSE stays set): moving the connection to the linger list
	 * a second time would link it to itself.
	 */
	if (c->flags & CONN_LINGER)
		return;
	if (shutdown(c->fd, SHUT_WR) < 0) {
		conn_close(lp, c);
		return;
	}
	list_remove(&lp->live, c);
	c->flags |= CONN_LINGER;
	c->last = srv_now_ms();
	list_append(&lp->linger, c);
	update(lp, c);
	conn_again(lp, c);
}

static void
resume(struct conn_loop *lp, struct conn *c)
{
	int was = c->flags & CONN_PAUSED;

	c->flags &= ~CONN_PAUSED;
	update(lp, c);
	if (was)
		conn_again(lp, c);
}

/* Output drained: close, linger, or resume reading, as the state says. */
static void
after_flush(struct conn_loop *lp, struct conn *c)
{
	if (c->flags & CONN_EOF)
		conn_close(lp, c);
	else if (c->flags & CONN_CLOSE)
		conn_linger(lp, c);
	else
		resume(lp, c);
}

/* writev() the queue; 0 when it all went or would block, -errno on error. */
static int
flush_out(struct conn *c)
{
	struct iovec iov[16];
	struct conn_chunk *k;
	ssize_t n;
	int i;

	while (c->head) {
		for (i = 0, k = c->head; k && i < 16; k = k->next, i++) {
			iov[i].iov_base = k->data + k->off;
			iov[i].iov_len = k->len - k->off;
		}
		n = writev(c->fd, iov, i);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? 0 : -errno;
		}
		c->pending -= (size_t)n;
		while (n > 0) {
			k = c->head;
			if ((size_t)n < k->len - k->off) {
				k->off += (size_t)n;
				return 0;	/* short write: the socket is full */
			}
			n -= (ssize_t)(k->len - k->off);
			c->head = k->next;
			if (c->head == NULL)
				c->tail = NULL;
			free(k);
		}
	}
	return 0;
}

static int
enqueue(struct conn *c, const uint8_t *buf, size_t len)
{
	struct conn_chunk *k = c->tail;
	size_t room = k ? k->cap - k->len : 0, cap;

	if (room > 0) {
		room = room < len ? room : len;
		memcpy(k->data + k->len, buf, room);
		k->len += room;
		buf += room;
		len -= room;
		c->pending += room;
	}
	if (len == 0)
		return 0;
	cap = len < MIN_CHUNK ? MIN_CHUNK : len;
	k = malloc(sizeof(*k) + cap);
	if (k == NULL)
		return -ENOMEM;
	k->next = NULL;
	k->off = 0;
	k->len = len;
	k->cap = cap;
	memcpy(k->data, buf, len);
	if (c->tail)
		c->tail->next = k;
	else
		c->head = k;
	c->tail = k;
	c->pending += len;
	return 0;
}

/*
 * Send to one connection: straight to the socket when nothing is queued
 * (the common case: one write per message, no copy), queue the rest.
 */
static int
conn_send(struct conn_loop *lp, struct conn *c, const uint8_t *buf, size_t len)
{
	ssize_t n = 0;

	if (c->flags & (CONN_DEAD | CONN_DOOMED | CONN_LINGER))
		return -EPIPE;
	if (c->pending == 0) {
		do
			n = write(c->fd, buf, len);
		while (n < 0 && errno == EINTR);
		if (n < 0) {
			if (errno != EAGAIN) {
				if (!is_reset(errno))
					srv_debug(lp->srv, "write: %s", strerror(errno));
				conn_doom(lp, c);
				return -EPIPE;
			}
			n = 0;
		}
		if ((size_t)n == len)
			return 0;
	}
	if (enqueue(c, buf + n, len - (size_t)n) < 0) {
		srv_warn(lp->srv, "out of memory queueing output: closing");
		conn_doom(lp, c);
		return -ENOMEM;
	}
	return 0;
}

static int
sink_reply(struct svc_sink *sink, const void *buf, size_t len)
{
	return conn_send(sink->ctx, sink->conn, buf, len);
}

/*
 * Broadcast to every other connection.  A recipient whose queue would pass
 * max_pending has stopped reading: it is dropped rather than allowed to
 * hold memory or slow everyone else down.
 */
static int
sink_broadcast(struct svc_sink *sink, const void *buf, size_t len)
{
	struct conn *self = sink->conn, *c;
	struct conn_loop *lp = sink->ctx;
	size_t cap = lp->srv->svc_cfg.max_pending;

	for (c = lp->live.head; c; c = c->next) {
		if (c == self || (c->flags & (CONN_DOOMED | CONN_CLOSE | CONN_EOF)))
			continue;
		if (c->pending + len > cap) {
			srv_log(lp->srv, "%s: %zu bytes of output pending, "
			    "not reading: disconnected", c->peer ? c->peer : "client",
			    c->pending);
			conn_doom(lp, c);
			continue;
		}
		if (conn_send(lp, c, buf, len) == 0)
			update(lp, c);
	}
	return 0;
}

static void
readable(struct conn_loop *lp, struct conn *c, int drain)
{
	const struct srv *s = lp->srv;
	ssize_t n;
	int i, r;

	if (c->flags & (CONN_DEAD | CONN_DOOMED))
		return;
	for (i = 0; i < READS_PER_EVENT; i++) {
		n = net_read_some(c->fd, lp->rbuf, s->bufsize);
		if (n == -EAGAIN)
			break;
		if (n < 0) {
			if (!is_reset((int)-n))
				srv_debug(s, "read: %s", strerror((int)-n));
			conn_close(lp, c);
			return;
		}
		if (n == 0) {
			/*
			 * Half-close: the peer sends no more but may still
			 * read.  Finish the output first, then close.
			 */
			lp->progress++;
			c->flags |= CONN_EOF;
			break;
		}
		lp->progress++;
		if (c->flags & CONN_LINGER)
			continue;	/* discarding until the peer closes */
		touch(lp, c);
		r = svc_input(s->svc, &s->svc_cfg, c->state, lp->rbuf,
		    (size_t)n, &c->sink);
		if (c->flags & (CONN_DEAD | CONN_DOOMED))
			return;
		if (r < 0) {
			c->flags |= CONN_CLOSE;
			break;
		}
		if (c->pending >= s->highwater) {
			/* Backpressure: TCP's window pushes back on the peer. */
			c->flags |= CONN_PAUSED;
			break;
		}
		/*
		 * A short read means the receive queue was empty a moment
		 * ago; what arrives later is reported again (level-triggered)
		 * or notified afresh (a signal per arrival), so the read that
		 * would only say EAGAIN is skipped.  Not when draining: an
		 * EOF already queued behind the data would never be heard of.
		 */
		if ((size_t)n < s->bufsize && !drain)
			break;
	}
	if (i == READS_PER_EVENT)
		conn_again(lp, c);
	if ((c->flags & CONN_LINGER) && (c->flags & CONN_EOF)) {
		conn_close(lp, c);
		return;
	}
	if (c->pending == 0 && (c->flags & (CONN_EOF | CONN_CLOSE)))
		after_flush(lp, c);
	else
		update(lp, c);
}

void
conn_readable(struct conn_loop *lp, struct conn *c)
{
	readable(lp, c, 0);
}

void
conn_drain(struct conn_loop *lp, struct conn *c)
{
	readable(lp, c, 1);
}

void
conn_writable(struct conn_loop *lp, struct conn *c)
{
	size_t pending;
	int r;

	if (c->flags & (CONN_DEAD | CONN_DOOMED) || c->pending == 0)
		return;
	pending = c->pending;
	r = flush_out(c);
	if (c->pending != pending)
		lp->progress++;
	if (r < 0) {
		if (!is_reset(-r))
			srv_debug(lp->srv, "write: %s", strerror(-r));
		conn_close(lp, c);
		return;
	}
	touch(lp, c);
	/*
	 * Resume reading only once the queue is well below the mark, so a
	 * flood does not flip read interest on and off at every write.
	 */
	if (c->pending == 0)
		after_flush(lp, c);
	else if ((c->flags & CONN_PAUSED) && c->pending <= lp->srv->highwater / 2)
		resume(lp, c);
	else
		update(lp, c);
}

static struct conn *
conn_new(struct conn_loop *lp, int fd, const struct net_addr *peer)
{
	const struct srv *s = lp->srv;
	char buf[NET_ADDRSTRLEN];
	struct conn *c;

	c = calloc(1, sizeof(*c) + s->svc->state_size);
	if (c == NULL)
		return NULL;
	c->fd = fd;
	c->slot = -1;
	c->sink.reply = sink_reply;
	c->sink.broadcast = sink_broadcast;
	c->sink.conn = c;
	c->sink.ctx = lp;
	if (s->svc->state_size > 0 || s->verbose > 0) {
		c->peer = strdup(net_addr_str(peer, buf, sizeof(buf)));
		c->sink.peer = c->peer;
	}
	if (lp->ops->add && lp->ops->add(lp, c) < 0) {
		free(c->peer);
		free(c);
		return NULL;
	}
	c->last = srv_now_ms();
	list_append(&lp->live, c);
	lp->nconns++;
	return c;
}

/* A descriptor the model cannot watch (select: >= FD_SETSIZE). */
static void
refuse_fd(struct conn_loop *lp, int fd, const struct net_addr *peer)
{
	char buf[NET_ADDRSTRLEN];

	int i;

	srv_log(lp->srv, "%s: descriptor %d is past this model's limit "
	    "(FD_SETSIZE %d): refused", net_addr_str(peer, buf, sizeof(buf)),
	    fd, lp->fd_limit);
	/*
	 * An orderly refusal: FIN first, and what the client has sent
	 * already is read and dropped, since close() with unread input
	 * sends RST, which the client sees as a reset, not a refusal.
	 */
	(void)shutdown(fd, SHUT_WR);
	for (i = 0; i < 4; i++)
		if (read(fd, lp->rbuf, lp->srv->bufsize) <= 0)
			break;
	close(fd);
}

int
conn_accept(struct conn_loop *lp)
{
	const struct srv *s = lp->srv;
	struct net_addr peer;
	struct conn *c;
	int fd, i;

	if (!lp->accepting || lp->lfd < 0)
		return 0;
	for (i = 0; i < ACCEPTS_PER_EVENT; i++) {
		if (s->max_conns && lp->nconns >= s->max_conns) {
			/*
			 * At the -m limit the model stops watching the
			 * listener: new clients wait in the kernel's accept
			 * queue instead of being accepted and refused.
			 */
			lp->accepting = 0;
			return 0;
		}
		fd = net_accept(lp->lfd, &peer, NET_NONBLOCK);
		if (fd == -EAGAIN)
			return 0;
		if (fd == -EMFILE || fd == -ENFILE) {
			/*
			 * Not accepting would leave it pending, reported
			 * forever; shed it.  An edge-style model hears of the
			 * ones behind it no more: it comes back for them.
			 */
			if (net_accept_shed(lp->lfd, &lp->reserve) > 0) {
				srv_log(s, "out of descriptors (%s): "
				    "refused a connection", strerror(-fd));
				lp->accept_again = 1;
			}
			return 0;
		}
		if (fd < 0) {
			srv_warn(s, "accept: %s", strerror(-fd));
			return 0;
		}
		if (lp->fd_limit && fd >= lp->fd_limit) {
			refuse_fd(lp, fd, &peer);
			continue;
		}
		lp->progress++;
		c = conn_new(lp, fd, &peer);
		if (c == NULL) {
			srv_warn(s, "cannot register a connection: %s",
			    strerror(errno));
			close(fd);
			continue;
		}
		srv_debug(s, "open %s", c->peer ? c->peer : "");
		if (svc_open(s->svc, &s->svc_cfg, c->state, &c->sink) < 0)
			conn_doom(lp, c);
		update(lp, c);
		conn_event_done(lp);
	}
	lp->accept_again = 1;
	return 1;
}

void
conn_run_again(struct conn_loop *lp)
{
	struct conn *c, *list = lp->again;

	lp->again = NULL;
	while ((c = list) != NULL) {
		list = c->again_next;
		c->flags &= ~CONN_AGAIN;
		if (conn_interest(c) & CONN_WANT_READ)
			conn_drain(lp, c);
		conn_event_done(lp);
	}
}

static void
close_all(struct conn_loop *lp)
{
	while (lp->live.head)
		conn_close(lp, lp->live.head);
	while (lp->linger.head)
		conn_close(lp, lp->linger.head);
}

/* Close what has been idle too long, lingered too long, or outlived stop. */
static int
expire(struct conn_loop *lp)
{
	int64_t now = srv_now_ms(), wait = -1, t;
	int64_t idle = (int64_t)lp->srv->idle_timeout * 1000;
	struct conn *c;

	while ((c = lp->linger.head) && now - c->last >= LINGER_MS)
		conn_close(lp, c);
	if (c)
		wait = LINGER_MS - (now - c->last);
	if (idle > 0) {
		while ((c = lp->live.head) && now - c->last >= idle) {
			srv_debug(lp->srv, "%s idle for %d s: closing",
			    c->peer ? c->peer : "connection", lp->srv->idle_timeout);
			conn_close(lp, c);
		}
		if (c && (wait < 0 || idle - (now - c->last) < wait))
			wait = idle - (now - c->last);
	}
	if (lp->stopping) {
		if (now >= lp->stop_deadline)
			close_all(lp);
		t = lp->stop_deadline - now;
		if (wait < 0 || t < wait)
			wait = t < 0 ? 0 : t;
	}
	return (int)wait;
}

int
conn_tick(struct conn_loop *lp)
{
	const struct srv *s = lp->srv;
	int wait;

	wait = expire(lp);
	conn_event_done(lp);
	reap_dead(lp);
	if (!lp->accepting && !lp->stopping && lp->lfd >= 0 &&
	    (!s->max_conns || lp->nconns < s->max_conns)) {
		lp->accepting = 1;
		lp->accept_again = 1;
	}
	if (lp->again || (lp->edge && lp->accept_again && lp->accepting))
		wait = 0;
	return wait;
}

/*
 * Graceful stop: stop accepting; connections with nothing queued close
 * now, the others get STOP_GRACE_MS to flush, then are closed regardless.
 */
void
conn_begin_stop(struct conn_loop *lp)
{
	struct conn *c, *next;

	if (lp->stopping)
		return;
	lp->stopping = 1;
	lp->stop_deadline = srv_now_ms() + STOP_GRACE_MS;
	lp->accepting = 0;
	if (lp->lfd >= 0)
		close(lp->lfd);
	lp->lfd = -1;
	for (c = lp->live.head; c; c = next) {
		next = c->next;
		if (c->pending == 0)
			conn_close(lp, c);
		else {
			c->flags |= CONN_EOF;	/* close once flushed */
			update(lp, c);
		}
	}
}

int
conn_loop_listen(struct srv *s, int *sfd)
{
	int lfd;

	srv_raise_nofile(s);
	lfd = srv_listen(s, NET_NONBLOCK);
	if ((*sfd = srv_signals_block()) < 0) {
		srv_warn(s, "signalfd: %s", strerror(-*sfd));
		exit(SRV_EX_OSERR);
	}
	return lfd;
}

int
conn_signalfd(struct conn_loop *lp, int sfd)
{
	struct signalfd_siginfo si;
	int got = 0;

	while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		srv_debug(lp->srv, "signal %u: stopping", si.ssi_signo);
		got = 1;
	}
	if (got)
		conn_begin_stop(lp);
	return got;
}

int
conn_loop_done(const struct conn_loop *lp)
{
	return lp->stopping && lp->nconns == 0;
}

int
conn_loop_init(struct conn_loop *lp, struct srv *s, int lfd,
    const struct conn_ops *ops, void *model)
{
	memset(lp, 0, sizeof(*lp));
	lp->srv = s;
	lp->ops = ops;
	lp->model = model;
	lp->lfd = lfd;
	lp->accepting = 1;
	lp->accept_again = 1;
	lp->reserve = net_reserve_open();
	lp->rbuf = malloc(s->bufsize);
	if (lp->reserve < 0 || lp->rbuf == NULL) {
		free(lp->rbuf);
		return lp->reserve < 0 ? lp->reserve : -ENOMEM;
	}
	return 0;
}

void
conn_loop_fini(struct conn_loop *lp)
{
	close_all(lp);
	conn_event_done(lp);
	lp->again = NULL;
	while (lp->dead) {
		struct conn *c = lp->dead;

		lp->dead = c->dead_next;
		free(c->peer);
		free(c);
	}
	if (lp->lfd >= 0)
		close(lp->lfd);
	if (lp->reserve >= 0)
		close(lp->reserve);
	free(lp->rbuf);
}

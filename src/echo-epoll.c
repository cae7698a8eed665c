/*
 * echo-epoll — IO multiplexing with epoll(7): one thread, many connections.
 *
 * The model: every socket is non-blocking; one epoll instance holds the
 * interest list (the listener, a signalfd, every connection) inside the
 * kernel, so each epoll_wait() costs O(ready), not O(watched) as select(2)
 * and poll(2) do.  For one echoed message the loop makes three system
 * calls: epoll_wait, read, write.
 *
 * Level-triggered, on purpose: a descriptor stays reported while it is
 * readable, so the loop may stop reading early (fairness, backpressure)
 * without losing a wake-up.  Edge-triggered mode saves the re-reports but
 * obliges the reader to drain to EAGAIN every time, or hang.
 *
 * Pitfalls handled here, each marked where it is handled:
 *   - a peer that sends and never reads: stop reading it past a high-water
 *     mark of queued output (backpressure), or memory grows without bound;
 *   - EOF with output still queued (half-close): stop watching EPOLLIN, or
 *     the level-triggered EOF is reported forever and the loop spins;
 *   - a connection closed while later events of the same epoll_wait batch
 *     still point at it: free it only after the batch;
 *   - EMFILE on accept: shed with a reserve descriptor instead of spinning;
 *   - EPOLLOUT watched only while output is queued, or every idle
 *     connection wakes the loop on every call.
 *
 * -w N forks N worker processes, each with its own epoll instance and its
 * own SO_REUSEPORT listener (the kernel spreads connections over their
 * accept queues): the multi-process, nginx-style model of the documents.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "net.h"
#include "server.h"
#include "service.h"

#define MAX_EVENTS	256
#define READS_PER_EVENT	16	/* then let the other connections run */
#define ACCEPTS_PER_EVENT 64
#define LINGER_MS	2000
#define STOP_GRACE_MS	2000
#define MIN_CHUNK	4096

/* Output not yet accepted by the kernel. */
struct chunk {
	struct chunk	*next;
	size_t		 off, len, cap;
	uint8_t		 data[];
};

#define C_EOF		0x01	/* peer shut down its write side */
#define C_PAUSED	0x02	/* not reading: too much output queued */
#define C_CLOSE		0x04	/* close once the output is flushed */
#define C_LINGER	0x08	/* output done, discarding input until EOF */
#define C_DEAD		0x10	/* closed; freed after the current batch */
#define C_DOOMED	0x20	/* to be closed once the current event is done */

struct conn {
	int		 fd;
	unsigned	 flags;
	uint32_t	 events;	/* interest registered with epoll */
	size_t		 pending;	/* bytes queued in out */
	struct chunk	*head, *tail;
	int64_t		 last;		/* last activity, for -t and linger */
	struct conn	*prev, *next;	/* on the LRU (or linger) list */
	struct conn	*dead_next;
	struct conn	*doom_next;
	struct svc_sink	 sink;
	char		*peer;		/* only when the service or -v wants it */
	uint64_t	 state[];	/* the service's per-connection state */
};

/* A doubly linked list in last-activity order: O(1) touch and expiry. */
struct clist {
	struct conn	*head, *tail;
};

/*
 * One worker's loop.  All of a worker's state lives here, so -w N is N
 * copies of it in N processes and nothing is shared.
 */
struct loop {
	struct srv	*srv;
	int		 ep, lfd, sfd, reserve;
	int		 accepting;	/* listener in the interest list */
	int		 stopping;
	int64_t		 stop_deadline;
	int		 nconns;
	struct clist	 live, linger;
	struct conn	*dead;
	struct conn	*doomed;
	uint8_t		*rbuf;
	/* Sentinels: epoll_data for the non-connection descriptors. */
	char		 tag_listen, tag_signal;
};

static void conn_doom(struct loop *, struct conn *);

static void
clist_remove(struct clist *l, struct conn *c)
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
clist_append(struct clist *l, struct conn *c)
{
	c->prev = l->tail;
	c->next = NULL;
	if (l->tail)
		l->tail->next = c;
	else
		l->head = c;
	l->tail = c;
}

static void
touch(struct loop *lp, struct conn *c)
{
	c->last = srv_now_ms();
	if (lp->live.tail != c && !(c->flags & C_LINGER)) {
		clist_remove(&lp->live, c);
		clist_append(&lp->live, c);
	}
}

/* Change the interest set only when it differs: epoll_ctl is a syscall. */
static void
set_events(struct loop *lp, struct conn *c, uint32_t ev)
{
	struct epoll_event e = { .events = ev, .data.ptr = c };

	if (c->events == ev)
		return;
	if (epoll_ctl(lp->ep, EPOLL_CTL_MOD, c->fd, &e) < 0) {
		srv_warn(lp->srv, "epoll_ctl: %s", strerror(errno));
		conn_doom(lp, c);
		return;
	}
	c->events = ev;
}

/* What we want to hear about, derived from the connection's state. */
static void
update_events(struct loop *lp, struct conn *c)
{
	uint32_t ev = 0;

	if (c->flags & (C_DEAD | C_DOOMED))
		return;
	if (!(c->flags & (C_EOF | C_PAUSED | C_CLOSE)) || (c->flags & C_LINGER))
		ev |= EPOLLIN | EPOLLRDHUP;
	if (c->pending > 0)
		ev |= EPOLLOUT;
	set_events(lp, c, ev);
}

static void
free_chunks(struct conn *c)
{
	struct chunk *k, *next;

	for (k = c->head; k; k = next) {
		next = k->next;
		free(k);
	}
	c->head = c->tail = NULL;
	c->pending = 0;
}

static void
conn_close(struct loop *lp, struct conn *c)
{
	if (c->flags & C_DEAD)
		return;
	svc_close(lp->srv->svc, &lp->srv->svc_cfg, c->state, &c->sink);
	/*
	 * close() also removes the descriptor from every epoll set (it is
	 * the last reference); no EPOLL_CTL_DEL needed.  The struct lives
	 * on until the end of the batch: events already returned by this
	 * epoll_wait may still point at it.
	 */
	close(c->fd);
	c->flags |= C_DEAD;
	free_chunks(c);
	clist_remove((c->flags & C_LINGER) ? &lp->linger : &lp->live, c);
	c->dead_next = lp->dead;
	lp->dead = c;
	lp->nconns--;
	srv_debug(lp->srv, "close %s", c->peer ? c->peer : "");
}

/*
 * A connection that fails while we are busy with another one (a write
 * error, or a broadcast recipient that stopped reading) is not closed on
 * the spot: closing runs the service's close hook, which may broadcast in
 * turn, and would unlink connections from the list the caller is walking.
 * It is doomed instead, and closed when the current event is done.
 */
static void
conn_doom(struct loop *lp, struct conn *c)
{
	if (c->flags & (C_DEAD | C_DOOMED))
		return;
	c->flags |= C_DOOMED;
	c->doom_next = lp->doomed;
	lp->doomed = c;
}

static void
close_doomed(struct loop *lp)
{
	struct conn *c;

	while ((c = lp->doomed) != NULL) {
		lp->doomed = c->doom_next;
		conn_close(lp, c);
	}
}

static void
reap_dead(struct loop *lp)
{
	struct conn *c;

	while ((c = lp->dead) != NULL) {
		lp->dead = c->dead_next;
		free(c->peer);
		free(c);
	}
}

/*
 * A lingering close.  Closing a socket whose receive queue holds unread
 * data makes the kernel send RST instead of FIN, and an RST can overtake
 * our last reply and destroy it in the client's receive buffer.  So, after
 * a service asks to close (an error reply), send FIN with shutdown(), keep
 * reading and discarding until the client closes too, for at most
 * LINGER_MS.
 */
static void
conn_linger(struct loop *lp, struct conn *c)
{
	if (shutdown(c->fd, SHUT_WR) < 0) {
		conn_close(lp, c);
		return;
	}
	clist_remove(&lp->live, c);
	c->flags |= C_LINGER;
	c->last = srv_now_ms();
	clist_append(&lp->linger, c);
	update_events(lp, c);
}

/* Output drained: close, linger, or resume reading, as the state says. */
static void
after_flush(struct loop *lp, struct conn *c)
{
	if (c->flags & C_EOF)
		conn_close(lp, c);
	else if (c->flags & C_CLOSE)
		conn_linger(lp, c);
	else {
		c->flags &= ~C_PAUSED;
		update_events(lp, c);
	}
}

static int
is_reset(int err)
{
	return err == EPIPE || err == ECONNRESET || err == ENOTCONN ||
	    err == ETIMEDOUT;
}

/* writev() the queue; 0 when it all went or would block, -errno on error. */
static int
flush_out(struct conn *c)
{
	struct iovec iov[16];
	struct chunk *k;
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
	struct chunk *k = c->tail;
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
conn_send(struct loop *lp, struct conn *c, const uint8_t *buf, size_t len)
{
	ssize_t n = 0;

	if (c->flags & (C_DEAD | C_DOOMED | C_LINGER))
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
	struct conn *c = sink->conn;
	struct loop *lp = (struct loop *)sink->ctx;

	return conn_send(lp, c, buf, len);
}

/*
 * Broadcast to every other connection.  A recipient whose queue would pass
 * max_pending has stopped reading: it is dropped rather than allowed to
 * hold memory (or, worse, to slow everyone else down).
 */
static int
sink_broadcast(struct svc_sink *sink, const void *buf, size_t len)
{
	struct conn *self = sink->conn, *c;
	struct loop *lp = (struct loop *)sink->ctx;
	size_t cap = lp->srv->svc_cfg.max_pending;

	for (c = lp->live.head; c; c = c->next) {
		if (c == self || (c->flags & (C_DOOMED | C_CLOSE | C_EOF)))
			continue;
		if (c->pending + len > cap) {
			srv_log(lp->srv, "%s: %zu bytes of output pending, "
			    "not reading: disconnected", c->peer ? c->peer : "client",
			    c->pending);
			conn_doom(lp, c);
			continue;
		}
		if (conn_send(lp, c, buf, len) == 0)
			update_events(lp, c);
	}
	return 0;
}

static void
on_readable(struct loop *lp, struct conn *c)
{
	const struct srv *s = lp->srv;
	ssize_t n;
	int i, r;

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
			 * Half-close: the peer will send no more but may still
			 * read.  Finish the output first, then close.
			 */
			c->flags |= C_EOF;
			break;
		}
		if (c->flags & C_LINGER)
			continue;	/* discarding until the peer closes */
		touch(lp, c);
		r = svc_input(s->svc, &s->svc_cfg, c->state, lp->rbuf,
		    (size_t)n, &c->sink);
		if (c->flags & (C_DEAD | C_DOOMED))
			return;
		if (r < 0) {
			c->flags |= C_CLOSE;
			break;
		}
		if (c->pending >= s->highwater) {
			/* Backpressure: TCP's window will push back on the peer. */
			c->flags |= C_PAUSED;
			break;
		}
		/*
		 * A short read means the receive queue was empty a moment ago.
		 * Level-triggered epoll will report anything that arrives
		 * later, so the read that would only say EAGAIN is skipped:
		 * three system calls per message instead of four.
		 */
		if ((size_t)n < s->bufsize)
			break;
	}
	if ((c->flags & C_LINGER) && (c->flags & C_EOF)) {
		conn_close(lp, c);
		return;
	}
	if (c->pending == 0 && (c->flags & (C_EOF | C_CLOSE)))
		after_flush(lp, c);
	else
		update_events(lp, c);
}

static void
on_writable(struct loop *lp, struct conn *c)
{
	int r = flush_out(c);

	if (r < 0) {
		if (!is_reset(-r))
			srv_debug(lp->srv, "write: %s", strerror(-r));
		conn_close(lp, c);
		return;
	}
	touch(lp, c);
	/*
	 * Resume reading only once the queue is well below the mark, so a
	 * flood does not flip EPOLLIN on and off at every write.
	 */
	if (c->pending == 0)
		after_flush(lp, c);
	else if ((c->flags & C_PAUSED) && c->pending <= lp->srv->highwater / 2) {
		c->flags &= ~C_PAUSED;
		update_events(lp, c);
	} else
		update_events(lp, c);
}

static void
set_accepting(struct loop *lp, int on)
{
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = &lp->tag_listen };

	if (lp->accepting == on || lp->lfd < 0)
		return;
	/*
	 * At the -m limit the listener leaves the interest list: new
	 * clients wait in the kernel's accept queue (and past the backlog
	 * their SYNs are dropped and retried), instead of being accepted
	 * and refused.
	 */
	if (epoll_ctl(lp->ep, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, lp->lfd, &e) < 0)
		srv_warn(lp->srv, "epoll_ctl(listener): %s", strerror(errno));
	lp->accepting = on;
}

static struct conn *
conn_new(struct loop *lp, int fd, const struct net_addr *peer)
{
	const struct srv *s = lp->srv;
	char buf[NET_ADDRSTRLEN];
	struct conn *c;
	struct epoll_event e;

	c = calloc(1, sizeof(*c) + s->svc->state_size);
	if (c == NULL)
		return NULL;
	c->fd = fd;
	c->sink.reply = sink_reply;
	c->sink.broadcast = sink_broadcast;
	c->sink.conn = c;
	c->sink.ctx = lp;
	if (s->svc->state_size > 0 || s->verbose > 0) {
		c->peer = strdup(net_addr_str(peer, buf, sizeof(buf)));
		c->sink.peer = c->peer;
	}
	c->events = EPOLLIN | EPOLLRDHUP;
	e.events = c->events;
	e.data.ptr = c;
	if (epoll_ctl(lp->ep, EPOLL_CTL_ADD, fd, &e) < 0) {
		free(c->peer);
		free(c);
		return NULL;
	}
	c->last = srv_now_ms();
	clist_append(&lp->live, c);
	lp->nconns++;
	return c;
}

static void
on_accept(struct loop *lp)
{
	const struct srv *s = lp->srv;
	struct net_addr peer;
	struct conn *c;
	int fd, i;

	for (i = 0; i < ACCEPTS_PER_EVENT; i++) {
		if (s->max_conns && lp->nconns >= s->max_conns) {
			set_accepting(lp, 0);
			return;
		}
		fd = net_accept(lp->lfd, &peer, NET_NONBLOCK);
		if (fd == -EAGAIN)
			return;
		if (fd == -EMFILE || fd == -ENFILE) {
			/* Level-triggered: not accepting would spin here. */
			if (net_accept_shed(lp->lfd, &lp->reserve) > 0)
				srv_log(s, "out of descriptors (%s): "
				    "refused a connection", strerror(-fd));
			return;
		}
		if (fd < 0) {
			srv_warn(s, "accept: %s", strerror(-fd));
			return;
		}
		(void)net_set_nodelay(fd);
		c = conn_new(lp, fd, &peer);
		if (c == NULL) {
			srv_warn(s, "cannot register a connection: %s", strerror(errno));
			close(fd);
			continue;
		}
		srv_debug(s, "open %s", c->peer ? c->peer : "");
		if (svc_open(s->svc, &s->svc_cfg, c->state, &c->sink) < 0)
			conn_doom(lp, c);
		update_events(lp, c);
		close_doomed(lp);
	}
}

/* Close what has been idle too long, lingered too long, or outlived stop. */
static int
expire(struct loop *lp)
{
	int64_t now = srv_now_ms(), wait = -1, t;
	int idle = lp->srv->idle_timeout * 1000;
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
		if (now >= lp->stop_deadline) {
			while (lp->live.head)
				conn_close(lp, lp->live.head);
			while (lp->linger.head)
				conn_close(lp, lp->linger.head);
		}
		t = lp->stop_deadline - now;
		if (wait < 0 || t < wait)
			wait = t < 0 ? 0 : t;
	}
	return (int)wait;
}

/*
 * Graceful stop: stop accepting; connections with nothing queued close
 * now, the others get STOP_GRACE_MS to flush, then are closed regardless.
 */
static void
begin_stop(struct loop *lp)
{
	struct conn *c, *next;

	lp->stopping = 1;
	lp->stop_deadline = srv_now_ms() + STOP_GRACE_MS;
	set_accepting(lp, 0);
	close(lp->lfd);
	lp->lfd = -1;
	for (c = lp->live.head; c; c = next) {
		next = c->next;
		if (c->pending == 0)
			conn_close(lp, c);
		else {
			c->flags |= C_EOF;	/* close once flushed */
			update_events(lp, c);
		}
	}
}

static void
on_signal(struct loop *lp)
{
	struct signalfd_siginfo si;

	while (read(lp->sfd, &si, sizeof(si)) == sizeof(si))
		if (!lp->stopping) {
			srv_debug(lp->srv, "signal %u: stopping", si.ssi_signo);
			begin_stop(lp);
		}
}

static int
run_loop(struct srv *s, int lfd, int sfd)
{
	struct epoll_event ev[MAX_EVENTS], e;
	struct loop lp;
	int i, n, timeout;

	memset(&lp, 0, sizeof(lp));
	lp.srv = s;
	lp.lfd = lfd;
	lp.sfd = sfd;
	lp.reserve = net_reserve_open();
	lp.rbuf = malloc(s->bufsize);
	lp.ep = epoll_create1(EPOLL_CLOEXEC);
	if (lp.ep < 0 || lp.rbuf == NULL || lp.reserve < 0) {
		srv_warn(s, "cannot set up the loop: %s", strerror(errno));
		return SRV_EX_OSERR;
	}
	e.events = EPOLLIN;
	e.data.ptr = &lp.tag_signal;
	if (epoll_ctl(lp.ep, EPOLL_CTL_ADD, sfd, &e) < 0) {
		srv_warn(s, "epoll_ctl: %s", strerror(errno));
		return SRV_EX_OSERR;
	}
	set_accepting(&lp, 1);

	while (!lp.stopping || lp.nconns > 0) {
		timeout = expire(&lp);
		close_doomed(&lp);
		reap_dead(&lp);
		if (lp.stopping && lp.nconns == 0)
			break;
		n = epoll_wait(lp.ep, ev, MAX_EVENTS, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			srv_warn(s, "epoll_wait: %s", strerror(errno));
			return SRV_EX_OSERR;
		}
		for (i = 0; i < n; i++) {
			void *p = ev[i].data.ptr;
			struct conn *c = p;

			if (p == &lp.tag_listen) {
				if (lp.accepting)
					on_accept(&lp);
				continue;
			}
			if (p == &lp.tag_signal) {
				on_signal(&lp);
				close_doomed(&lp);
				continue;
			}
			if (c->flags & C_DEAD)
				continue;
			/*
			 * EPOLLERR/EPOLLHUP come whatever we asked for; a read
			 * or write then returns the error.  EPOLLOUT first:
			 * draining output may lift backpressure.
			 */
			if (ev[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
				if (c->pending > 0)
					on_writable(&lp, c);
			if (c->flags & C_DEAD)
				continue;
			if (ev[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))
				on_readable(&lp, c);
			close_doomed(&lp);
		}
		if (!lp.accepting && !lp.stopping &&
		    (!s->max_conns || lp.nconns < s->max_conns))
			set_accepting(&lp, 1);
	}
	reap_dead(&lp);
	free(lp.rbuf);
	close(lp.ep);
	close(lp.reserve);
	return SRV_EX_OK;
}

/*
 * -w N: the parent makes every listener before forking (so a bad address
 * fails before the readiness line), keeps them open so a worker that dies
 * can be replaced without losing its accept queue, forwards SIGINT/SIGTERM
 * and reaps every worker.
 */
static pid_t
spawn(struct srv *s, int *lfds, int idx)
{
	pid_t pid = fork();
	int i, sfd;

	if (pid != 0)
		return pid;
	for (i = 0; i < s->workers; i++)
		if (i != idx)
			close(lfds[i]);
	sfd = srv_signals_block();
	if (sfd < 0)
		_exit(SRV_EX_OSERR);
	_exit(run_loop(s, lfds[idx], sfd));
}

static int
run_workers(struct srv *s, int first)
{
	int *lfds = calloc((size_t)s->workers, sizeof(int));
	pid_t *pids = calloc((size_t)s->workers, sizeof(pid_t));
	struct signalfd_siginfo si;
	sigset_t set;
	int i, sfd, live = 0, stopping = 0, status, rc = SRV_EX_OK;
	pid_t pid;

	if (lfds == NULL || pids == NULL)
		return SRV_EX_OSERR;
	lfds[0] = first;
	for (i = 1; i < s->workers; i++) {
		lfds[i] = srv_listen_again(s, first, NET_NONBLOCK);
		if (lfds[i] < 0) {
			srv_warn(s, "listener for worker %d: %s", i, strerror(-lfds[i]));
			return SRV_EX_OSERR;
		}
	}
	/* SIGCHLD joins the signalfd: the parent sleeps in one read(). */
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	srv_signals_ignore_pipe();
	sigprocmask(SIG_BLOCK, &set, NULL);
	sfd = signalfd(-1, &set, SFD_CLOEXEC);
	if (sfd < 0)
		return SRV_EX_OSERR;
	for (i = 0; i < s->workers; i++) {
		pids[i] = spawn(s, lfds, i);
		if (pids[i] < 0) {
			srv_warn(s, "fork: %s", strerror(errno));
			rc = SRV_EX_OSERR;
			stopping = 1;
			break;
		}
		live++;
	}
	if (!stopping)
		srv_ready(s);
	for (i = 0; stopping && i < s->workers; i++)
		if (pids[i] > 0)
			kill(pids[i], SIGTERM);
	while (live > 0) {
		if (read(sfd, &si, sizeof(si)) != sizeof(si)) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (si.ssi_signo != SIGCHLD) {
			stopping = 1;
			for (i = 0; i < s->workers; i++)
				if (pids[i] > 0)
					kill(pids[i], SIGTERM);
			continue;
		}
		/* One SIGCHLD may stand for several exits: reap them all. */
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
			for (i = 0; i < s->workers && pids[i] != pid; i++)
				;
			if (i == s->workers)
				continue;
			live--;
			pids[i] = 0;
			if (stopping)
				continue;
			srv_warn(s, "worker %ld died (%s %d): restarting",
			    (long)pid, WIFSIGNALED(status) ? "signal" : "status",
			    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
			pids[i] = spawn(s, lfds, i);
			if (pids[i] > 0)
				live++;
		}
	}
	for (i = 0; i < s->workers; i++)
		close(lfds[i]);
	free(lfds);
	free(pids);
	return rc;
}

static const struct srv_model model = {
	.name = "echo-epoll",
	.summary = "Echo server: IO multiplexing with epoll(7), one thread per worker process.",
	.caps = SRV_CAP_WORKERS | SRV_CAP_BROADCAST,
	.default_workers = 1,
	.workers_help = "worker processes, each with its own epoll and SO_REUSEPORT listener (default 1)",
};

int
main(int argc, char **argv)
{
	struct srv s;
	int lfd, sfd;

	srv_init(&s, &model, argc, argv, NULL);
	srv_raise_nofile(&s);
	lfd = srv_listen(&s, NET_NONBLOCK);
	if (s.workers > 1)
		return run_workers(&s, lfd);
	sfd = srv_signals_block();
	if (sfd < 0) {
		srv_warn(&s, "signalfd: %s", strerror(-sfd));
		return SRV_EX_OSERR;
	}
	srv_ready(&s);
	return run_loop(&s, lfd, sfd);
}

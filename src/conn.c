/*
 * conn — a connection in a readiness loop.  See conn.h.
 *
 * The machinery of a one-thread server: output that
 * the kernel did not take is queued per connection, a connection that
 * queues too much is no longer read (backpressure), EOF waits for the
 * output (half-close), an error reply is followed by a lingering close,
 * and a connection is freed only after the batch of events that may
 * still name it.  The model supplies how readiness is learnt.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"

#define READS_PER_EVENT		16	/* then let the other connections run */
#define ACCEPTS_PER_EVENT	64

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
	if (!(c->flags & (CONN_EOF | CONN_PAUSED | CONN_PACED | CONN_CLOSE)) ||
	    (c->flags & CONN_LINGER))
		want |= CONN_WANT_READ;
	if (c->out.pending > 0)
		want |= CONN_WANT_WRITE;
	return want;
}

/*
 * The loop alone decides whether it accepts (the -m limit, the stop): the
 * model hears of each change through its listen hook, and so never
 * watches a listener that is about to be closed.
 */
static void
set_accepting(struct conn_loop *lp, int on)
{
	if (lp->accepting == on)
		return;
	lp->accepting = on;
	if (on)
		lp->accept_again = 1;
	if (lp->ops->listen)
		lp->ops->listen(lp, on);
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

/*
 * Pacing (SRV_STALL_MS in server.h): while a recipient is congested, the
 * connections whose input would be broadcast are not read (paced), as a
 * connection whose own queue is too long is not (CONN_PAUSED).
 */
static void
congest(struct conn_loop *lp, struct conn *c)
{
	if ((c->flags & (CONN_CONGEST | CONN_STALLED | CONN_DEAD)) ||
	    c->out.pending < lp->srv->highwater)
		return;
	c->flags |= CONN_CONGEST;
	c->prog = srv_now_ms();
	lp->ncongest++;
}

static void
decongest(struct conn_loop *lp, struct conn *c, int stalled)
{
	struct conn *p;

	if (!(c->flags & CONN_CONGEST))
		return;
	c->flags &= ~CONN_CONGEST;
	if (stalled) {
		c->flags |= CONN_STALLED;
		srv_debug(lp->srv, "%s: no progress for %d ms with %zu bytes "
		    "queued: no longer pacing the others",
		    c->peer ? c->peer : "client", SRV_STALL_MS, c->out.pending);
	}
	if (--lp->ncongest > 0)
		return;
	for (p = lp->live.head; p; p = p->next)
		if (p->flags & CONN_PACED) {
			p->flags &= ~CONN_PACED;
			update(lp, p);
			conn_again(lp, p);
		}
}

static void
conn_close(struct conn_loop *lp, struct conn *c)
{
	if (c->flags & CONN_DEAD)
		return;
	decongest(lp, c, 0);
	svc_close(lp->srv->svc, &lp->srv->svc_cfg, c->state, &c->sink);
	if (lp->ops->remove)
		lp->ops->remove(lp, c);
	close(c->fd);
	c->flags |= CONN_DEAD;
	outq_clear(&c->out);
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

/* Lingering close: see blk_linger() for why. */
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

/* Send to one connection: straight to the socket, or queued (outq.h). */
static int
conn_send(struct conn_loop *lp, struct conn *c, const uint8_t *buf, size_t len)
{
	int r;

	if (c->flags & (CONN_DEAD | CONN_DOOMED | CONN_LINGER))
		return -EPIPE;
	if ((r = outq_send(&c->out, c->fd, buf, len)) == 0)
		return 0;
	if (r == -ENOMEM)
		srv_warn(lp->srv, "out of memory queueing output: closing");
	else if (!net_is_reset(-r))
		srv_debug(lp->srv, "write: %s", strerror(-r));
	conn_doom(lp, c);
	return r == -ENOMEM ? r : -EPIPE;
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

	for (c = lp->live.head; c; c = c->next) {
		if (c == self || (c->flags & (CONN_DOOMED | CONN_CLOSE | CONN_EOF)))
			continue;
		if (srv_too_pending(lp->srv, c->out.pending, len)) {
			srv_log_not_reading(lp->srv, c->peer, c->out.pending);
			conn_doom(lp, c);
			continue;
		}
		if (conn_send(lp, c, buf, len) == 0) {
			update(lp, c);
			congest(lp, c);
		}
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
	if ((c->flags & CONN_PACED) && !(c->flags & CONN_LINGER))
		return;		/* an event from before it was paced */
	for (i = 0; i < READS_PER_EVENT; i++) {
		n = net_read_some(c->fd, lp->rbuf, s->bufsize);
		if (n == -EAGAIN)
			break;
		if (n < 0) {
			if (!net_is_reset((int)-n))
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
		if (c->out.pending >= s->highwater) {
			/* Backpressure: TCP's window pushes back on the peer. */
			c->flags |= CONN_PAUSED;
			break;
		}
		if (lp->ncongest > 0 && (s->svc->flags & SVC_NEEDS_BROADCAST)) {
			c->flags |= CONN_PACED;		/* see congest() */
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
	if (c->out.pending == 0 && (c->flags & (CONN_EOF | CONN_CLOSE)))
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

	if (c->flags & (CONN_DEAD | CONN_DOOMED) || c->out.pending == 0)
		return;
	pending = c->out.pending;
	r = outq_write(&c->out, c->fd);
	if (c->out.pending != pending) {
		lp->progress++;
		c->prog = srv_now_ms();
		if (c->flags & CONN_STALLED) {
			/* It reads again: it paces the others again. */
			c->flags &= ~CONN_STALLED;
			congest(lp, c);
		}
		if (c->out.pending <= lp->srv->highwater / 2)
			decongest(lp, c, 0);
	}
	if (r < 0) {
		if (!net_is_reset(-r))
			srv_debug(lp->srv, "write: %s", strerror(-r));
		conn_close(lp, c);
		return;
	}
	touch(lp, c);
	/*
	 * Resume reading only once the queue is well below the mark, so a
	 * flood does not flip read interest on and off at every write.
	 */
	if (c->out.pending == 0)
		after_flush(lp, c);
	else if ((c->flags & CONN_PAUSED) &&
	    c->out.pending <= lp->srv->highwater / 2)
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

	lp->accept_again = 0;
	if (!lp->accepting || lp->lfd < 0)
		return 0;
	for (i = 0; i < ACCEPTS_PER_EVENT; i++) {
		if (s->max_conns && lp->nconns >= s->max_conns) {
			/*
			 * At the -m limit the model stops watching the
			 * listener: new clients wait in the kernel's accept
			 * queue instead of being accepted and refused.
			 */
			set_accepting(lp, 0);
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
		lp->accepts++;
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

	while ((c = lp->linger.head) && now - c->last >= SRV_LINGER_MS)
		conn_close(lp, c);
	if (c)
		wait = SRV_LINGER_MS - (now - c->last);
	if (idle > 0) {
		while ((c = lp->live.head) && now - c->last >= idle) {
			srv_debug(lp->srv, "%s idle for %d s: closing",
			    c->peer ? c->peer : "connection", lp->srv->idle_timeout);
			conn_close(lp, c);
		}
		if (c && (wait < 0 || idle - (now - c->last) < wait))
			wait = idle - (now - c->last);
	}
	for (c = lp->ncongest > 0 ? lp->live.head : NULL; c; c = c->next) {
		if (!(c->flags & CONN_CONGEST))
			continue;
		if ((t = SRV_STALL_MS - (now - c->prog)) <= 0)
			decongest(lp, c, 1);
		else if (wait < 0 || t < wait)
			wait = t;
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
	    (!s->max_conns || lp->nconns < s->max_conns))
		set_accepting(lp, 1);
	if (lp->again || (lp->edge && lp->accept_again && lp->accepting))
		wait = 0;
	return wait;
}

/*
 * Graceful stop: stop accepting; connections with nothing queued close
 * now, the others get SRV_STOP_GRACE_MS to flush, then are closed regardless.
 */
void
conn_begin_stop(struct conn_loop *lp)
{
	struct conn *c, *next;

	if (lp->stopping)
		return;
	lp->stopping = 1;
	lp->stop_deadline = srv_now_ms() + SRV_STOP_GRACE_MS;
	set_accepting(lp, 0);
	if (lp->lfd >= 0)
		close(lp->lfd);
	lp->lfd = -1;
	for (c = lp->live.head; c; c = next) {
		next = c->next;
		if (c->out.pending == 0)
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
    const struct conn_ops *ops, void *model, int fd_limit, int edge)
{
	memset(lp, 0, sizeof(*lp));
	lp->srv = s;
	lp->ops = ops;
	lp->model = model;
	lp->lfd = lfd;
	lp->fd_limit = fd_limit;
	lp->edge = edge;
	/* The first conn_tick() starts accepting, through the listen hook. */
	lp->accepting = 0;
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

/*
 * uring-conn.c — echo-uring's connections: their lifecycle (open, park
 * past -m, close only once no request names them), their output queues
 * of segments (ring buffers sent in place, pooled copies), the input held
 * while a connection may not take it, the pacing of a broadcasting room,
 * and the provided buffers the kernel hands us.  No request is submitted
 * here: a connection says what it wants armed (uc_want), and the loop
 * arms it (echo-uring.c, arm_conn).
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net.h"
#include "uring.h"

/* ---- what a connection wants armed --------------------------------------- */

void
uc_want(struct worker *w, struct uconn *c, unsigned what)
{
	c->want |= what;
	if (!(c->flags & C_DIRTY)) {
		c->flags |= C_DIRTY;
		TAILQ_INSERT_TAIL(&w->dirty, c, dirty);
	}
}

/* ---- the provided buffers ------------------------------------------------ */

/* The kernel handed us buffer BID with a completion: it is ours now. */
uint8_t *
ubuf_take(struct worker *w, unsigned bid)
{
	if (bid >= w->nbufs || w->bheld[bid]) {
		w->st.bufbugs++;
		return NULL;
	}
	w->bheld[bid] = 1;
	w->nheld++;
	return w->bufs + (size_t)bid * w->bufsize;
}

/*
 * Give buffer BID back: append it to the ring.  The kernel sees it once
 * the tail moves (flush publishes every return of a round at once).  A
 * buffer given back twice would be handed out twice, to two connections
 * at the same time: each id goes back exactly once, and only ids that
 * came to us in a completion.
 */
void
ubuf_return(struct worker *w, unsigned bid)
{
	if (bid >= w->nbufs || !w->bheld[bid]) {
		w->st.bufbugs++;
		return;
	}
	w->bheld[bid] = 0;
	w->nheld--;
	io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * w->bufsize,
	    (unsigned)w->bufsize, (unsigned short)bid, (int)w->brmask,
	    (int)w->br_pending++);
}

void
ubuf_publish(struct worker *w)
{
	if (w->br_pending == 0)
		return;
	/* A release store of the tail: the entries are written first. */
	io_uring_buf_ring_advance(w->br, (int)w->br_pending);
	w->br_pending = 0;
}

/* ---- segments: output queues and held input ------------------------------ */

/*
 * A copy of up to LEN bytes.  Small ones come from a per-worker pool:
 * malloc and free of a page-sized block per message would, at the top of
 * the heap, make glibc grow and trim it with brk(2) over and over.
 */
struct useg *
useg_heap(struct worker *w, size_t len)
{
	size_t cap = len < SMALL_SEG ? SMALL_SEG : len;
	struct useg *s;

	if (cap == SMALL_SEG && (s = w->pool) != NULL) {
		w->pool = s->next;
		w->npool--;
	} else if ((s = malloc(sizeof(*s) + cap)) == NULL)
		return NULL;
	s->next = NULL;
	s->data = (uint8_t *)(s + 1);
	s->off = s->len = 0;
	s->cap = (uint32_t)cap;
	s->kind = SEG_HEAP;
	return s;
}

void
useg_free(struct worker *w, struct useg *s)
{
	if (s->cap == SMALL_SEG && w->npool < POOL_MAX) {
		s->next = w->pool;
		w->pool = s;
		w->npool++;
	} else
		free(s);
}

static void
useg_enqueue(struct uconn *c, struct useg *s)
{
	s->next = NULL;
	if (c->qtail)
		c->qtail->next = s;
	else
		c->qhead = s;
	c->qtail = s;
	c->qbytes += s->len - s->off;
}

/*
 * Append a copy of BUF to the list *HEAD..*TAIL, topping up its last copy
 * first, unless that one is NOTOP (the kernel is sending from it).
 * Returns 1 when it took a new segment, 0 when the top-up sufficed, or
 * -ENOMEM with the list untouched.
 */
static int
useg_append(struct worker *w, struct useg **head, struct useg **tail,
    const uint8_t *buf, size_t len, const struct useg *notop)
{
	struct useg *t = *tail, *s = NULL;
	size_t n = 0;

	if (t && t->kind == SEG_HEAP && t != notop)
		n = t->cap - t->len < len ? t->cap - t->len : len;
	if (n < len && (s = useg_heap(w, len - n)) == NULL)
		return -ENOMEM;
	if (n > 0) {
		memcpy(t->data + t->len, buf, n);
		t->len += (uint32_t)n;
	}
	if (s == NULL)
		return 0;
	memcpy(s->data, buf + n, len - n);
	s->len = (uint32_t)(len - n);
	if (t)
		t->next = s;
	else
		*head = s;
	*tail = s;
	return 1;
}

/* Queue a copy of BUF: what every service's reply does. */
static int
uc_queue_copy(struct worker *w, struct uconn *c, const uint8_t *buf, size_t len)
{
	int rc = useg_append(w, &c->qhead, &c->qtail, buf, len,
	    (c->flags & C_SEND) ? c->send_last : NULL);

	if (rc < 0)
		return rc;
	c->qbytes += len;
	w->st.copies += (unsigned)rc;
	return 0;
}

/*
 * Hold input C may not take now (its output is over the high-water mark,
 * or a recipient of the room is): a multishot recv goes on delivering
 * until its cancel lands, and what it delivered must be neither fed to
 * the service (its output would grow past the mark) nor lost.  It is at
 * most what was in flight: one round of completions.  A copy, so that
 * the ring buffer goes back at once.
 */
static int
uc_hold(struct worker *w, struct uconn *c, const uint8_t *buf, size_t len)
{
	int rc = useg_append(w, &c->inq, &c->inq_tail, buf, len, NULL);

	if (rc < 0)
		return rc;
	w->st.held += (unsigned)rc;
	return 0;
}

/* Release every segment of the list *HEAD (and clear *TAIL). */
static void
useg_release_all(struct worker *w, struct uconn *c, struct useg **head,
    struct useg **tail)
{
	struct useg *s;

	while ((s = *head) != NULL) {
		*head = s->next;
		useg_release(w, c, s);
	}
	*tail = NULL;
}

void
uc_inq_free(struct worker *w, struct uconn *c)
{
	useg_release_all(w, c, &c->inq, &c->inq_tail);
}

void
useg_release(struct worker *w, struct uconn *c, struct useg *s)
{
	if (s->kind >= 0) {
		ubuf_return(w, (unsigned)s->kind);
		if (--c->nheld == 0 && (c->flags & C_HOLDER)) {
			LIST_REMOVE(c, holder);
			c->flags &= ~C_HOLDER;
		}
	} else if (s->kind == SEG_RBUF) {
		c->flags &= ~C_RBUSY;
		uc_want(w, c, W_RECV);
	} else
		useg_free(w, s);
}

/*
 * Replace the pinned segment at *PP (a ring buffer or our receive buffer)
 * by a copy of what is left of it, and release the original: a slow peer
 * then holds malloc'd memory (bounded by the high-water mark) instead of
 * buffers every connection needs.  Never for a segment being sent.
 */
int
useg_unpin(struct worker *w, struct uconn *c, struct useg **pp)
{
	struct useg *s = *pp, *h;
	size_t n = s->len - s->off;

	if ((h = useg_heap(w, n)) == NULL)
		return -ENOMEM;
	memcpy(h->data, s->data + s->off, n);
	h->len = (uint32_t)n;
	h->next = s->next;
	*pp = h;
	if (c->qtail == s)
		c->qtail = h;
	useg_release(w, c, s);
	w->st.copies++;
	return 0;
}

void
uc_queue_free(struct worker *w, struct uconn *c)
{
	useg_release_all(w, c, &c->qhead, &c->qtail);
	c->qbytes = 0;
	uc_inq_free(w, c);
}

/* Replace every ring buffer or receive buffer in C's queue by a copy. */
void
uc_unpin_all(struct worker *w, struct uconn *c)
{
	struct useg **pp;

	for (pp = &c->qhead; *pp; pp = &(*pp)->next)
		if ((*pp)->kind != SEG_HEAP)
			(void)useg_unpin(w, c, pp);
}

/* Is a ring buffer part of C's send in flight? */
static int
uc_sending_rbuf(const struct uconn *c)
{
	const struct useg *s;

	for (s = c->qhead; s; s = s->next) {
		if (s->kind >= 0)
			return 1;
		if (s == c->send_last)
			break;
	}
	return 0;
}

void
ubuf_evict(struct worker *w)
{
	struct uconn *c, *next;
	struct useg **pp;

	for (c = LIST_FIRST(&w->holders); c; c = next) {
		next = LIST_NEXT(c, holder);
		if (c->flags & C_CLOSING)
			continue;
		pp = &c->qhead;
		if (c->flags & C_SEND) {
			if (c->send_gen != w->gen && !(c->flags & C_EVICT) &&
			    uc_sending_rbuf(c)) {
				c->flags |= C_EVICT;
				w->st.evictions++;
				uc_want(w, c, W_CANCEL_SEND);
			}
			pp = &c->send_last->next;
		}
		while (*pp) {
			if ((*pp)->kind >= 0 && useg_unpin(w, c, pp) == 0)
				w->st.evictions++;
			pp = &(*pp)->next;
		}
	}
}

/* ---- connections --------------------------------------------------------- */

void
uc_touch(struct worker *w, struct uconn *c)
{
	c->last = w->now;
	if (!(c->flags & (C_LINGER | C_CLOSING)) && TAILQ_NEXT(c, lru) != NULL) {
		TAILQ_REMOVE(&w->live, c, lru);
		TAILQ_INSERT_TAIL(&w->live, c, lru);
	}
}

int
uc_recv_ok(const struct worker *w, const struct uconn *c)
{
	if (c->flags & (C_RECV | C_CLOSING | C_EOF | C_PAUSED | C_PACED |
	    C_BUFWAIT | C_RBUSY | C_DOOMED) || c->inq != NULL)
		return 0;
	if ((c->flags & C_CLOSE) && !(c->flags & C_LINGER))
		return 0;
	return !w->stopping;
}

/* A connection failing while another is served (broadcast): later. */
static void
uc_doom(struct worker *w, struct uconn *c)
{
	if (c->flags & (C_DOOMED | C_CLOSING))
		return;
	c->flags |= C_DOOMED;
	c->doom_next = w->doomed;
	w->doomed = c;
}

void
uc_run_doomed(struct worker *w)
{
	struct uconn *c;

	while ((c = w->doomed) != NULL) {
		w->doomed = c->doom_next;
		c->flags &= ~C_DOOMED;
		uc_close(w, c);
	}
}

/* ---- backpressure and pacing --------------------------------------------- */

void
uc_check_highwater(struct worker *w, struct uconn *c)
{
	if ((c->flags & C_PAUSED) || c->qbytes < w->s->highwater)
		return;
	/*
	 * Backpressure: stop receiving; the socket's receive buffer fills
	 * and TCP's window stops the peer.  A multishot recv would go on
	 * delivering: cancel it (what it delivers until then is held, see
	 * uc_hold()).  A single-shot one is simply not re-armed.
	 */
	c->flags |= C_PAUSED;
	w->st.pauses++;
	if ((c->flags & C_RECV) && w->ms_recv)
		uc_want(w, c, W_CANCEL_RECV);
}

/*
 * Pacing, for a service that broadcasts.  A recipient whose queue passes
 * the high-water mark is congested, and while one is, no connection's
 * input is fed to the service (each is paced: held, its recv stopped).
 * Without it one round of completions can hand the service megabytes
 * from a talker before a single send to a listener has completed, and a
 * listener that reads as fast as it can would pass --max-pending and be
 * dropped.  A recipient that makes no progress for SRV_STALL_MS (it does not
 * read at all) stops pacing the room: its queue grows again, and it is
 * dropped at --max-pending, as before.
 */
void
uc_congest(struct worker *w, struct uconn *c)
{
	if ((c->flags & (C_CONGEST | C_STALLED | C_CLOSING)) ||
	    c->qbytes < w->s->highwater)
		return;
	c->flags |= C_CONGEST;
	c->prog_ms = w->now;
	TAILQ_INSERT_TAIL(&w->congested, c, cong);
	w->ncongest++;
	uroom_congest(w, 1);
}

void
uc_decongest(struct worker *w, struct uconn *c, int stalled)
{
	if (!(c->flags & C_CONGEST))
		return;
	c->flags &= ~C_CONGEST;
	TAILQ_REMOVE(&w->congested, c, cong);
	w->ncongest--;
	uroom_congest(w, -1);
	if (stalled) {
		c->flags |= C_STALLED;
		w->st.stalls++;
		srv_debug(w->s, "%s: no progress for %d ms with %zu bytes "
		    "queued: no longer pacing the others",
		    c->peer ? c->peer : "client", SRV_STALL_MS, c->qbytes);
	}
}

static void
uc_check_pace(struct worker *w, struct uconn *c)
{
	if (uroom_congested(w) == 0 || (c->flags & (C_PACED | C_CLOSING)) ||
	    !(w->s->svc->flags & SVC_NEEDS_BROADCAST))
		return;
	c->flags |= C_PACED;
	TAILQ_INSERT_TAIL(&w->paced, c, pace);
	w->st.paces++;
	if ((c->flags & C_RECV) && w->ms_recv)
		uc_want(w, c, W_CANCEL_RECV);
}

void
uc_unpace(struct worker *w, struct uconn *c)
{
	if (!(c->flags & C_PACED))
		return;
	c->flags &= ~C_PACED;
	TAILQ_REMOVE(&w->paced, c, pace);
}

/* May C's input be fed to the service now? */
static int
uc_may_take(const struct uconn *c)
{
	return !(c->flags & (C_PAUSED | C_PACED | C_CLOSING | C_DOOMED |
	    C_CLOSE | C_LINGER));
}

/* ---- the service's sinks ------------------------------------------------- */

static int
uc_sink_reply(struct svc_sink *sink, const void *buf, size_t len)
{
	struct uconn *c = sink->conn;
	struct worker *w = sink->ctx;

	if (c->flags & (C_CLOSING | C_DOOMED | C_LINGER))
		return -EPIPE;
	if (uc_queue_copy(w, c, buf, len) < 0) {
		srv_warn(w->s, "out of memory queueing output: closing");
		uc_doom(w, c);
		return -ENOMEM;
	}
	uc_want(w, c, W_SEND);
	return 0;
}

/*
 * A broadcast: to every other connection of this ring, and with -w above
 * 1 to the other rings (uroom_post), whose workers deliver it likewise.
 * A recipient that let more than max_pending pile up is not reading: it
 * is dropped.
 */
void
uc_deliver(struct worker *w, struct uconn *self, const void *buf, size_t len)
{
	struct uconn *c;

	TAILQ_FOREACH(c, &w->live, lru) {
		if (c == self || (c->flags & (C_DOOMED | C_CLOSE | C_EOF)))
			continue;
		if (srv_too_pending(w->s, c->qbytes, len)) {
			srv_log_not_reading(w->s, c->peer, c->qbytes);
			uc_doom(w, c);
			continue;
		}
		if (uc_queue_copy(w, c, buf, len) < 0) {
			uc_doom(w, c);
			continue;
		}
		uc_want(w, c, W_SEND);
		uc_check_highwater(w, c);
		uc_congest(w, c);
	}
}

static int
uc_sink_broadcast(struct svc_sink *sink, const void *buf, size_t len)
{
	struct worker *w = sink->ctx;

	uc_deliver(w, sink->conn, buf, len);
	if (w->sh->room)
		uroom_post(w, buf, len);
	return 0;
}

/* ---- open and close ------------------------------------------------------ */

static void
uc_start(struct worker *w, struct uconn *c)
{
	const struct srv *s = w->s;

	c->last = w->now;
	TAILQ_INSERT_TAIL(&w->live, c, lru);
	w->nconns++;
	if (s->verbose > 1)
		srv_debug(s, "open %s", c->peer ? c->peer : "");
	if (svc_open(s->svc, &s->svc_cfg, c->state, &c->sink) < 0) {
		uc_close(w, c);
		return;
	}
	uc_want(w, c, W_RECV);
}

/*
 * FD is a direct descriptor when FIXED: a slot of the ring's files table,
 * which only requests can name (IOSQE_FIXED_FILE).  No system call can:
 * the peer's address is not asked (the rung is used only when no one
 * wants it: see uw_init) and TCP_NODELAY comes from the listener.
 */
void
uc_new(struct worker *w, int fd, int fixed)
{
	const struct srv *s = w->s;
	char buf[NET_ADDRSTRLEN];
	struct net_addr peer;
	struct uconn *c;

	c = calloc(1, sizeof(*c) + s->svc->state_size);
	if (c == NULL) {
		srv_warn(s, "out of memory: connection refused");
		uw_close_fd(w, fd, fixed);
		return;
	}
	c->w = w;
	c->fd = fd;
	if (fixed)
		c->flags |= C_FIXED;
	c->sink.reply = uc_sink_reply;
	c->sink.broadcast = uc_sink_broadcast;
	c->sink.conn = c;
	c->sink.ctx = w;
	if (!fixed && (s->svc->state_size > 0 || s->verbose > 1) &&
	    net_peer_addr(fd, &peer) == 0) {
		c->peer = strdup(net_addr_str(&peer, buf, sizeof(buf)));
		c->sink.peer = c->peer;
	}
	w->nalloc++;
	w->st.accepts++;
	if (s->max_conns && w->nconns >= s->max_conns) {
		/*
		 * Past -m: a multishot accept takes every connection in the
		 * backlog before our cancel reaches it.  Park the extra ones
		 * (no request, no buffer): to the client it is the same as
		 * waiting in the backlog, and it is served when a slot frees.
		 */
		c->flags |= C_PARKED;
		TAILQ_INSERT_TAIL(&w->parked, c, lru);
		w->st.parked++;
		return;
	}
	uc_start(w, c);
}

/*
 * Close: the service hears of it now, but the socket stays open and the
 * memory allocated until every request naming them has completed.
 * close(2) under a pending request would not even stop it: the request
 * holds its own reference to the file, so a recv would wait on, and its
 * completion would name a freed connection.  Cancel first, then close.
 */
void
uc_close(struct worker *w, struct uconn *c)
{
	struct uconn *p;

	if (c->flags & C_CLOSING)
		return;
	c->flags |= C_CLOSING;
	if (c->flags & C_PARKED) {
		TAILQ_REMOVE(&w->parked, c, lru);
		TAILQ_INSERT_TAIL(&w->closing, c, lru);
		uc_check_free(w, c);
		return;
	}
	svc_close(w->s->svc, &w->s->svc_cfg, c->state, &c->sink);
	uc_decongest(w, c, 0);
	uc_unpace(w, c);
	uc_inq_free(w, c);
	if (c->flags & C_LINGER)
		TAILQ_REMOVE(&w->linger, c, lru);
	else
		TAILQ_REMOVE(&w->live, c, lru);
	TAILQ_INSERT_TAIL(&w->closing, c, lru);
	if (c->flags & C_BUFWAIT) {
		TAILQ_REMOVE(&w->bufwait, c, bufwait);
		c->flags &= ~C_BUFWAIT;
	}
	w->nconns--;
	if (w->s->verbose > 1)
		srv_debug(w->s, "close %s", c->peer ? c->peer : "");
	if (c->flags & (C_RECV | C_SEND))
		uc_want(w, c, W_CANCEL_ALL);
	uc_check_free(w, c);
	if (!w->stopping && (p = TAILQ_FIRST(&w->parked)) != NULL) {
		/* A slot is free: serve the longest waiting. */
		TAILQ_REMOVE(&w->parked, p, lru);
		p->flags &= ~C_PARKED;
		uc_start(w, p);
	}
}

/* The last request has completed: give back buffers, close the socket. */
void
uc_check_free(struct worker *w, struct uconn *c)
{
	if (!(c->flags & C_CLOSING) || c->refs > 0 || (c->flags & C_CLOSESENT))
		return;
	uc_queue_free(w, c);
	if (c->rbuf)
		useg_free(w, c->rbuf);
	c->rbuf = NULL;
	c->flags |= C_CLOSESENT;
	c->want = 0;
	uc_want(w, c, W_CLOSE);
}

void
uc_destroy(struct worker *w, struct uconn *c)
{
	if (c->flags & C_DIRTY)
		TAILQ_REMOVE(&w->dirty, c, dirty);
	TAILQ_REMOVE(&w->closing, c, lru);
	w->emfile = 0;		/* a descriptor is free again: accept */
	free(c->snd);
	free(c->peer);
	free(c);
	w->nalloc--;
}

/*
 * Lingering close, after a service error: the reply is queued and sent;
 * closing now with unread input would make the kernel send a RST that may
 * destroy the reply before the peer reads it.  Shut down our side and
 * read (discarding) until the peer closes, for at most SRV_LINGER_MS.
 */
/* shutdown(2), or its request for a direct descriptor (armed later). */
int
uc_shutdown(struct worker *w, struct uconn *c, int how)
{
	if (c->flags & C_FIXED) {
		uc_want(w, c, how == SHUT_WR ? W_SHUT_WR : W_SHUT_RDWR);
		return 0;
	}
	return shutdown(c->fd, how) < 0 ? -errno : 0;
}

static void
uc_linger(struct worker *w, struct uconn *c)
{
	if (uc_shutdown(w, c, SHUT_WR) < 0) {
		uc_close(w, c);
		return;
	}
	TAILQ_REMOVE(&w->live, c, lru);
	c->flags |= C_LINGER;
	c->last = w->now;
	TAILQ_INSERT_TAIL(&w->linger, c, lru);
	uc_want(w, c, W_RECV);
}

/* The output queue has drained. */
void
uc_drained(struct worker *w, struct uconn *c)
{
	if (c->inq)
		return;			/* held input first: uc_feed() */
	if (c->flags & C_EOF)
		uc_close(w, c);	/* half-close done: all echoed */
	else if ((c->flags & C_CLOSE) && !(c->flags & C_LINGER))
		uc_linger(w, c);
}

/* ---- input --------------------------------------------------------------- */

/* The service answered an error (r < 0): flush, then close. */
static void
uc_input_error(struct worker *w, struct uconn *c, int r)
{
	uc_inq_free(w, c);
	if (r == -ENOMEM) {
		srv_warn(w->s, "out of memory queueing output: closing");
		uc_close(w, c);
		return;
	}
	if (c->flags & C_CLOSING)
		return;
	c->flags |= C_CLOSE;
	if (c->flags & C_RECV)
		uc_want(w, c, W_CANCEL_RECV);
}

/*
 * Feed BUF to the service, a slice at a time, while C may take it: a
 * service may answer far more than it reads (an rpc error to an empty
 * frame is 20 times its size), so the high-water mark is checked after
 * each slice, not after a whole buffer.  Returns the bytes consumed.
 */
static size_t
uc_feed_svc(struct worker *w, struct uconn *c, const uint8_t *buf, size_t n)
{
	const struct srv *s = w->s;
	size_t done = 0, k;
	int r;

	while (done < n && uc_may_take(c)) {
		k = n - done < FEED_SLICE ? n - done : FEED_SLICE;
		r = svc_input(s->svc, &s->svc_cfg, c->state, buf + done, k,
		    &c->sink);
		done += k;
		if (r < 0) {
			uc_input_error(w, c, r);
			return n;
		}
		uc_check_highwater(w, c);
		uc_check_pace(w, c);
	}
	if (c->flags & (C_CLOSING | C_DOOMED | C_CLOSE | C_LINGER))
		return n;	/* the rest is of no use now */
	return done;
}

/*
 * The in-place rung: transform the buffer the kernel wrote into and send
 * that very buffer, no copy.  Past max_held buffers, copy instead: see
 * useg_unpin().  And copy small messages: a buffer sent from stays out of
 * the ring until the send's completion is reaped, a round later, so under
 * load twice the messages of a batch would be out of the ring; copying
 * 128 bytes costs less than that.  Returns 1 when the buffer BID is now
 * in our queue, 0 when the caller may give it back, < 0 on error.
 */
static int
uc_input_inplace(struct worker *w, struct uconn *c, uint8_t *buf, size_t n, int bid)
{
	struct useg *seg;

	w->s->svc->transform(buf, n);
	if (w->cfg->send_inplace && bid >= 0 && c->nheld < w->max_held &&
	    n > w->cfg->copy_below) {
		seg = &w->bseg[bid];
		seg->data = buf;
		seg->off = 0;
		seg->len = (uint32_t)n;
		seg->cap = (uint32_t)w->bufsize;
		seg->kind = bid;
		useg_enqueue(c, seg);
		if (c->nheld++ == 0) {
			LIST_INSERT_HEAD(&w->holders, c, holder);
			c->flags |= C_HOLDER;
		}
		return 1;
	}
	if (w->cfg->send_inplace && bid < 0) {
		c->rbuf->off = 0;
		c->rbuf->len = (uint32_t)n;
		c->rbuf->kind = SEG_RBUF;
		useg_enqueue(c, c->rbuf);
		c->flags |= C_RBUSY;
		return 0;
	}
	return uc_queue_copy(w, c, buf, n);
}

/* Data arrived in BUF (a ring buffer BID >= 0, or our receive buffer). */
void
uc_input(struct worker *w, struct uconn *c, uint8_t *buf, size_t n, int bid)
{
	size_t done;
	int r = 0;

	if (c->flags & (C_CLOSE | C_DOOMED)) {
		/* Closing after a service error: input is of no use. */
	} else if (c->inq || !uc_may_take(c)) {
		/* Arrived after we stopped taking input: keep it. */
		r = uc_hold(w, c, buf, n);
	} else if (w->s->svc->flags & SVC_INPLACE) {
		if ((r = uc_input_inplace(w, c, buf, n, bid)) > 0)
			bid = -1;
		uc_check_highwater(w, c);
	} else if ((done = uc_feed_svc(w, c, buf, n)) < n)
		r = uc_hold(w, c, buf + done, n - done);
	if (bid >= 0)
		ubuf_return(w, (unsigned)bid);
	if (r < 0) {
		uc_input_error(w, c, r);
		return;
	}
	if (c->qhead && !(c->flags & C_CLOSING))
		uc_want(w, c, W_SEND);
}

/*
 * C may take input again: feed what was held, as long as it may, then
 * receive again (or, after an EOF, close once all is answered).
 */
void
uc_feed(struct worker *w, struct uconn *c)
{
	const struct srv *s = w->s;
	struct useg *h;
	size_t n;

	while ((h = c->inq) != NULL && uc_may_take(c)) {
		if (s->svc->flags & SVC_INPLACE) {
			/* The held copy becomes the output. */
			c->inq = h->next;
			s->svc->transform(h->data + h->off, h->len - h->off);
			useg_enqueue(c, h);
			uc_check_highwater(w, c);
		} else {
			n = uc_feed_svc(w, c, h->data + h->off, h->len - h->off);
			if (c->inq != h)
				break;		/* closed: all freed */
			h->off += (uint32_t)n;
			if (h->off < h->len)
				break;
			c->inq = h->next;
			useg_free(w, h);
		}
		if (c->inq == NULL)
			c->inq_tail = NULL;
	}
	if (c->flags & C_CLOSING)
		return;
	if (c->qhead)
		uc_want(w, c, W_SEND);
	if (c->inq)
		return;
	if ((c->flags & C_EOF) && !c->qhead && !(c->flags & C_SEND))
		uc_close(w, c);
	else
		uc_want(w, c, W_RECV);
}

/* ---- time: idle, lingering, stalled -------------------------------------- */

/* Close what has been idle or lingering too long, or outlived the stop. */
void
uw_expire(struct worker *w)
{
	int64_t idle = (int64_t)w->s->idle_timeout * 1000;
	struct uconn *c, *next;

	if (idle > 0)
		while ((c = TAILQ_FIRST(&w->live)) && w->now - c->last >= idle) {
			srv_debug(w->s, "%s idle for %d s: closing",
			    c->peer ? c->peer : "connection",
			    w->s->idle_timeout);
			uc_close(w, c);
		}
	while ((c = TAILQ_FIRST(&w->linger)) && w->now - c->last >= SRV_LINGER_MS)
		uc_close(w, c);
	for (c = TAILQ_FIRST(&w->congested); c; c = next) {
		next = TAILQ_NEXT(c, cong);
		if (w->now - c->prog_ms >= SRV_STALL_MS)
			uc_decongest(w, c, 1);
	}
	if (w->stopping && w->now >= w->stop_deadline)
		while ((c = TAILQ_FIRST(&w->live)) != NULL)
			uc_close(w, c);
	uc_run_doomed(w);
}

/* Milliseconds until uw_expire() has something to do, or -1. */
int64_t
uw_next_deadline(const struct worker *w)
{
	int64_t idle = (int64_t)w->s->idle_timeout * 1000, t = -1, d;
	struct uconn *c;

#define EARLIER(x)	do { d = (x); if (d < 0) d = 0; \
		if (t < 0 || d < t) t = d; } while (0)
	if (idle > 0 && (c = TAILQ_FIRST(&w->live)) != NULL)
		EARLIER(c->last + idle - w->now);
	if ((c = TAILQ_FIRST(&w->linger)) != NULL)
		EARLIER(c->last + SRV_LINGER_MS - w->now);
	if (w->stopping)
		EARLIER(w->now < w->stop_deadline ?
		    w->stop_deadline - w->now : 100);
	if (w->accept_resume > w->now)
		EARLIER(w->accept_resume - w->now);
	if (!TAILQ_EMPTY(&w->bufwait) && w->nheld < w->nbufs)
		EARLIER(1);	/* buffers free, waiters left: see uw_flush() */
	TAILQ_FOREACH(c, &w->congested, cong)
		EARLIER(c->prog_ms + SRV_STALL_MS - w->now);
#undef EARLIER
	return t;
}

/*
 * echo-uring — the completion model ("true asynchronous IO") with
 * io_uring(7): the server says what it wants done, the kernel does it and
 * reports each result once it is complete.
 *
 * The model: two rings shared with the kernel.  We write requests
 * (submission queue entries: accept, recv, send, cancel, close) into the
 * SQ ring; the kernel performs them and writes one completion (CQE, with
 * the result a system call would have returned) into the CQ ring per
 * request, or several for a multishot one.  A readiness model asks "may I
 * read?" and then reads; here the reading itself is the request, so the
 * data is already in our memory when we hear of it.  One io_uring_enter()
 * both submits everything queued and waits for completions: for one echoed
 * message that is one system call, shared by every connection whose
 * requests went into the same batch (epoll: epoll_wait + read + write).
 *
 * The cost: requests own memory while they are in flight, and nothing may
 * be freed, reused or closed under them.  A pending recv needs a buffer
 * for data that has not arrived: 10,000 idle clients would pin 10,000
 * buffers, unless the kernel picks one from a shared pool (provided buffer
 * ring) only when data arrives.  And the kernel has to be new enough: each
 * improvement below is a kernel version, probed at run time.
 *
 * This file is the loop (uw_run), the completions and the arming of
 * requests.  uring-conn.c keeps the connections, their queues and the
 * buffers; uring-setup.c the options, the ring's set-up and main();
 * uring.h what they share.
 *
 * The ladder (each rung can be switched off, -v says which are in use):
 *   single-shot accept/recv/send, one request per operation
 *	(uw_sync_accept, arm_recv, arm_send)
 *   -> multishot accept: one request, a CQE per connection (5.19;
 *	uw_sync_accept, on_accept)
 *   -> direct descriptors: the accept puts the socket in a sparse table
 *	of the ring's own files, and requests name the slot
 *	(IOSQE_FIXED_FILE): no descriptor lookup per request; cancel,
 *	shutdown and close go through the ring (5.19; uw_files_init,
 *	uw_sync_accept, arm_recv, arm_send, arm_conn, uw_close_fd; off by
 *	default, --direct: no gain measured here)
 *   -> provided buffer ring + multishot recv: one request per connection,
 *	buffers taken from a shared ring on arrival (6.0; ubuf_ring_init,
 *	a shim for liburing 2.3; arm_recv, on_recv, ubuf_take/ubuf_return)
 *   -> send straight from the ring buffer the data arrived in, and give
 *	the buffer back only when that send has completed (uc_input_inplace,
 *	useg_release); messages up to --copy-below are copied instead, into
 *	pooled small segments (useg_heap, useg_free)
 *   -> IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN: completions are
 *	produced only when we ask for them, in a batch (6.1); refused, the
 *	ring falls back to COOP_TASKRUN | TASKRUN_FLAG (5.19), which still
 *	spares us the interrupt per completion (uw_ring_init)
 *   -> --sqpoll: a kernel thread polls the SQ, submission costs no
 *	system call at all (a core spinning for us; uw_ring_init, uw_sqe)
 *
 * Always on where the kernel has them:
 *   - SUBMIT_ALL: a bad entry does not stop the rest of a batch, and
 *     CQSIZE | CLAMP: a CQ 32 times the SQ (uw_ring_init);
 *   - the registered ring fd: io_uring_enter() by index, no file lookup
 *     per call (uw_init);
 *   - POLL_FIRST: a single-shot recv after one that left the socket
 *     empty (no IORING_CQE_F_SOCK_NONEMPTY) waits instead of trying
 *     first (on_recv, arm_recv);
 *   - the batched wait: wait for as many completions as the last round
 *     brought, for at most --batch-usec (uw_wait, uw_reap);
 *   - one send carries everything queued, up to 16 segments in one
 *     sendmsg (arm_send);
 *   - cancel by descriptor (ASYNC_CANCEL_ALL) and close through the ring
 *     (arm_conn); the stop signals through a signalfd polled on the ring
 *     (on_wake); the opcodes probed once (uw_probe_ops).
 *
 * The pitfalls, and where they are handled:
 *   - one send in flight per connection, the rest queued behind it:
 *     two sends in flight may complete (and transmit) in any order
 *     (arm_conn);
 *   - short sends: the rest is resubmitted, from copies (on_send);
 *   - ENOBUFS: the buffer ring ran dry; the recv is re-armed when
 *     buffers come back, never given up on (on_recv, uw_flush);
 *   - io_uring_get_sqe() returning NULL: the SQ is full; submit what is
 *     there and retry; arming is deferred to one place (uw_flush) so a
 *     full SQ delays work instead of losing it (uw_sqe);
 *   - CQ overflow: the kernel keeps completions it had no room for
 *     (IORING_FEAT_NODROP) and flags it; we flush them (uw_wait);
 *   - a multishot request ends (no IORING_CQE_F_MORE) on errors, ENOBUFS,
 *     or overflow: re-arm it (on_recv, on_accept);
 *   - a request still refers to the socket, the buffer and our
 *     connection: close only after every request has completed
 *     (per-connection reference count, cancel first: uc_close,
 *     uc_check_free);
 *   - buffer ids: give back exactly those the kernel handed us, once
 *     (ubuf_take, ubuf_return);
 *   - a peer that stops reading must not pin the shared buffer ring:
 *     past a few buffers per connection the data is copied out and the
 *     buffer returned; under shortage, queued buffers are copied out and
 *     stuck sends cancelled (useg_unpin, ubuf_evict);
 *   - a multishot recv goes on delivering after we stop wanting input
 *     (output over --highwater): what arrives until its cancel lands is
 *     held, not fed to the service, and fed once the queue drains, a
 *     slice at a time (uc_check_highwater, uc_input, uc_feed);
 *   - a broadcast room: one round can bring megabytes from a talker
 *     before a send to a listener completes; a recipient over the mark
 *     paces the senders until it drains, unless it stopped reading
 *     (uc_congest, uc_check_pace, uw_expire);
 *   - io_uring's accept takes a descriptor slot before it looks at the
 *     backlog: at EMFILE it fails at once, forever; poll the listener and
 *     shed instead (on_accept, on_lpoll);
 *   - a multishot accept takes the whole backlog before a cancel lands:
 *     past -m, connections are parked, not refused (uc_new).
 *
 * -w N runs N threads, each with its own ring, buffer ring and
 * SO_REUSEPORT listener.  Nothing is shared between them but the stop
 * and, for a service that broadcasts (chat), one room: a line goes to the
 * other rings through a mailbox each, whose doorbell is an
 * IORING_OP_MSG_RING completion on the target ring (5.18; uring-room.c:
 * uroom_post, uroom_on_mail, and why the line is not passed in the
 * completion itself).
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net.h"
#include "uring.h"

static int	uw_wait(struct worker *w);
static void	uw_reap(struct worker *w);
static void	on_cqe(struct worker *w, const struct io_uring_cqe *cqe);
static void	on_recv(struct worker *w, struct uconn *c,
	    const struct io_uring_cqe *cqe);
static void	on_send(struct worker *w, struct uconn *c,
	    const struct io_uring_cqe *cqe);
static void	on_accept(struct worker *w, const struct io_uring_cqe *cqe);
static void	on_lpoll(struct worker *w, const struct io_uring_cqe *cqe);
static void	on_wake(struct worker *w);
static void	uw_flush(struct worker *w);
static int	arm_conn(struct worker *w, struct uconn *c);
static void	arm_recv(struct worker *w, struct uconn *c,
	    struct io_uring_sqe *sqe);
static void	arm_send(struct worker *w, struct uconn *c,
	    struct io_uring_sqe *sqe);
static void	uw_sync_accept(struct worker *w);
static void	uw_begin_stop(struct worker *w);
static int	uw_done(const struct worker *w);

/* ---- the loop ------------------------------------------------------------ */

int
uw_run(struct worker *w)
{
	int r;

	for (;;) {
		w->gen++;
		w->now = srv_now_ms();
		uw_expire(w);
		uw_flush(w);
		if (uw_done(w))
			break;
		if ((r = uw_wait(w)) < 0) {
			srv_warn(w->s, "io_uring_enter: %s", strerror(-r));
			return SRV_EX_OSERR;
		}
		w->now = srv_now_ms();
		uw_reap(w);
	}
	return SRV_EX_OK;
}

/*
 * Submit everything and wait: one io_uring_enter() per round.
 *
 * How many completions to wait for decides how many rounds (and system
 * calls) a message costs.  Waiting for one wakes us for every completion
 * under load; so after sending, we also wait for those sends (they
 * usually complete during the submission itself) plus as many receives
 * as the last round brought, but at most --batch-usec: with
 * DEFER_TASKRUN the kernel does not even wake us before that many are
 * ready, and many connections share each enter.
 *
 * Not when a round brings one receive at most (one or two clients in a
 * closed loop): there is nothing to batch, and a wait with a timeout
 * (an hrtimer armed and cancelled, a wake-up checked against the count)
 * cost more than the enter it saves: measured at 2 connections, 15.6-
 * 18.9 us of server CPU per message against 12.7-13.1 without it.  Then
 * a round trip is two enters: one reaps the send, one sleeps for the
 * next receive.
 */
static int
uw_wait(struct worker *w)
{
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts;
	int64_t tmo_us = -1, ms;
	unsigned nr = 1, extra;
	int r;

	if (io_uring_cq_has_overflow(&w->ring))
		w->st.cq_overflow++;
	w->st.enters++;
	if (io_uring_cq_ready(&w->ring) > 0 ||
	    io_uring_cq_has_overflow(&w->ring)) {
		/*
		 * Overflowed completions wait in a kernel list until an
		 * enter with GETEVENTS moves them into the CQ ring.
		 */
		r = io_uring_submit_and_get_events(&w->ring);
		goto out;
	}
	if ((ms = uw_next_deadline(w)) >= 0)
		tmo_us = ms * 1000;
	if (w->cfg->batch_us > 0 && w->recv_target > 1) {
		extra = w->solo_sends + w->recv_target - 1;
		if (extra > w->cq_entries / 2)
			extra = w->cq_entries / 2;
		if (extra > 0) {
			nr += extra;
			if (tmo_us < 0 || tmo_us > w->cfg->batch_us)
				tmo_us = w->cfg->batch_us;
		}
	}
	if (tmo_us < 0)
		r = io_uring_submit_and_wait(&w->ring, nr);
	else {
		ts.tv_sec = tmo_us / 1000000;
		ts.tv_nsec = (tmo_us % 1000000) * 1000;
		r = io_uring_submit_and_wait_timeout(&w->ring, &cqe, nr, &ts,
		    NULL);
	}
out:
	w->solo_sends = 0;
	if (r >= 0 || r == -ETIME || r == -EINTR || r == -EAGAIN ||
	    r == -EBUSY)
		return 0;
	return r;
}

static void
uw_reap(struct worker *w)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0, cap;

	w->iter_recvs = 0;
	if (w->now != w->senders_ms) {
		w->senders = w->ms_senders;
		w->ms_senders = 0;
		w->senders_ms = w->now;
	}
	io_uring_for_each_cqe(&w->ring, head, cqe) {
		on_cqe(w, cqe);
		uc_run_doomed(w);
		n++;
	}
	io_uring_cq_advance(&w->ring, n);
	w->st.cqes += n;
	/*
	 * Never wait for more than half of the connections that are
	 * sending: in a closed loop the last of them are stragglers, and
	 * waiting for all of them puts us to sleep every round.  Half of
	 * the open connections is the wrong half: 10 busy among 1,000 idle
	 * would ask for all 10 and sleep once per 10 messages (measured:
	 * half the throughput of echo-epoll, twice the CPU per message).
	 * So count the connections heard from in the last millisecond.
	 */
	cap = w->senders / 2;
	cap = cap < 1 ? 1 : cap > 64 ? 64 : cap;
	w->recv_target = w->iter_recvs < 1 ? 1 :
	    w->iter_recvs > cap ? cap : w->iter_recvs;
}

/* ---- completions --------------------------------------------------------- */

static void
on_cqe(struct worker *w, const struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	void *p = (void *)(uintptr_t)(ud & ~(uint64_t)7);
	struct uconn *c = p;

	if (ud == LIBURING_UDATA_TIMEOUT)
		return;		/* liburing's own, without EXT_ARG */
	if ((ud & 7) == UD_BELL && p != NULL) {
		/* A doorbell of ours failed: its mailbox is another's. */
		uroom_bell_failed(w, (struct worker *)(void *)((char *)p -
		    offsetof(struct worker, mb)));
		return;
	}
	switch ((int)(ud & 7)) {
	case UD_ACCEPT:
		on_accept(w, cqe);
		break;
	case UD_RECV:
		on_recv(w, c, cqe);
		break;
	case UD_SEND:
		on_send(w, c, cqe);
		break;
	case UD_CANCEL:
		/* -EALREADY: running in a worker thread, beyond cancel. */
		if (cqe->res == -EALREADY)
			(void)uc_shutdown(w, c, SHUT_RDWR);
		c->refs--;
		uc_check_free(w, c);
		break;
	case UD_CLOSE:
		uc_destroy(w, c);
		break;
	case UD_WAKE:		/* or UD_MAIL */
		if (p == &w->mb)
			uroom_on_mail(w);
		else
			on_wake(w);
		break;
	case UD_LPOLL:
		on_lpoll(w, cqe);
		break;
	default:
		break;
	}
}

static void
on_recv(struct worker *w, struct uconn *c, const struct io_uring_cqe *cqe)
{
	int res = cqe->res, more = cqe->flags & IORING_CQE_F_MORE;
	uint8_t *buf = NULL;
	int bid = -1;

	/*
	 * A CQE that carries a buffer hands it to us whatever its result
	 * (even 0 at EOF on some kernels): take it, and give it back.
	 */
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		bid = (int)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		if ((buf = ubuf_take(w, (unsigned)bid)) == NULL)
			bid = -1;
	}
	if (!more) {
		c->flags &= ~(C_RECV | C_RCANCEL);
		c->refs--;
	}
	if (cqe->flags & IORING_CQE_F_SOCK_NONEMPTY)
		c->flags &= ~C_EMPTY;
	else
		c->flags |= C_EMPTY;
	if (c->flags & C_CLOSING) {
		if (bid >= 0)
			ubuf_return(w, (unsigned)bid);
		uc_check_free(w, c);
		return;
	}
	if (res > 0) {
		w->recv_ok_seen = 1;
		w->st.recvs++;
		w->iter_recvs++;
		if (c->recv_ms != w->now) {
			c->recv_ms = w->now;
			w->ms_senders++;
		}
		uc_touch(w, c);
		if (!w->bufring)
			buf = c->rbuf->data;
		if (c->flags & C_LINGER) {
			if (bid >= 0)
				ubuf_return(w, (unsigned)bid);
		} else if (buf == NULL) {
			srv_warn(w->s, "recv completed without a buffer: closing");
			uc_close(w, c);
			return;
		} else
			uc_input(w, c, buf, (size_t)res, bid);
		if (!more && !(c->flags & C_CLOSING)) {
			if (w->ms_recv)
				w->st.rearms++;	/* multishot ended: re-arm */
			uc_want(w, c, W_RECV);
		}
		return;
	}
	if (bid >= 0)
		ubuf_return(w, (unsigned)bid);
	if (res == 0) {
		/* EOF: the peer may still read (half-close). */
		c->flags |= C_EOF;
		if ((c->flags & C_LINGER) ||
		    (!c->qhead && !c->inq && !(c->flags & C_SEND)))
			uc_close(w, c);
		return;
	}
	switch (-res) {
	case ENOBUFS:
		/*
		 * The ring is empty: every buffer is in use.  The multishot
		 * recv has ended; wait for buffers to come back (flush
		 * re-arms), and free the ones slow peers sit on (evict).
		 */
		w->st.enobufs++;
		if (!(c->flags & C_BUFWAIT)) {
			c->flags |= C_BUFWAIT;
			TAILQ_INSERT_TAIL(&w->bufwait, c, bufwait);
		}
		w->starved = 1;
		break;
	case ECANCELED:
		uc_want(w, c, W_RECV);	/* paused, or re-armed if resumed */
		break;
	case EINVAL:
		if (w->ms_recv && !w->recv_ok_seen) {
			srv_log(w->s, "multishot recv refused by the kernel: "
			    "falling back to single-shot recv");
			w->ms_recv = 0;
			uc_want(w, c, W_RECV);
			break;
		}
		/* FALLTHROUGH */
	default:
		if (res != -ECONNRESET && res != -EPIPE)
			srv_debug(w->s, "recv: %s", strerror(-res));
		uc_close(w, c);
	}
}

static void
on_send(struct worker *w, struct uconn *c, const struct io_uring_cqe *cqe)
{
	const struct srv *srv = w->s;
	struct useg *s;
	size_t left, n;
	int res = cqe->res;

	c->flags &= ~C_SEND;
	c->send_last = NULL;
	c->refs--;
	if (c->flags & C_CLOSING) {
		uc_check_free(w, c);
		return;
	}
	if (res < 0) {
		if (res == -ECANCELED && (c->flags & C_EVICT)) {
			/* Stuck behind a slow peer: copy it, free the buffers. */
			c->flags &= ~C_EVICT;
			uc_unpin_all(w, c);
			uc_want(w, c, W_SEND);
			return;
		}
		if (res != -ECONNRESET && res != -EPIPE)
			srv_debug(srv, "send: %s", strerror(-res));
		uc_close(w, c);
		return;
	}
	c->flags &= ~C_EVICT;
	w->st.sends++;
	uc_touch(w, c);
	c->qbytes -= (size_t)res;
	if ((size_t)res < c->send_len)
		w->st.short_sends++;
	for (n = (size_t)res; n > 0; ) {
		s = c->qhead;
		left = s->len - s->off;
		if (n < left) {
			s->off += (uint32_t)n;
			break;
		}
		n -= left;
		c->qhead = s->next;
		if (c->qhead == NULL)
			c->qtail = NULL;
		useg_release(w, c, s);
	}
	if ((size_t)res < c->send_len) {
		/*
		 * Short send: the socket buffer is full, the peer reads
		 * slower than we send.  Resubmit the rest, from copies: the
		 * next send may wait long, and must not pin ring buffers.
		 */
		uc_unpin_all(w, c);
	}
	if (res > 0) {
		c->prog_ms = w->now;
		if (c->flags & C_STALLED) {
			/* It reads again: it paces the room again. */
			c->flags &= ~C_STALLED;
			uc_congest(w, c);
		}
	}
	if ((c->flags & C_CONGEST) && c->qbytes <= srv->highwater / 2)
		uc_decongest(w, c, 0);
	if ((c->flags & C_PAUSED) && c->qbytes <= srv->highwater / 2) {
		/* Well below the mark, so a flood does not flip it often. */
		c->flags &= ~C_PAUSED;
		uc_feed(w, c);
		if (c->flags & C_CLOSING)
			return;
	}
	if (c->qhead)
		uc_want(w, c, W_SEND);
	else
		uc_drained(w, c);
}

static void
on_accept(struct worker *w, const struct io_uring_cqe *cqe)
{
	const struct srv *s = w->s;
	int res = cqe->res;

	if (!(cqe->flags & IORING_CQE_F_MORE)) {
		w->accept_armed = 0;
		w->accept_cancel = 0;
	}
	if (res >= 0) {
		w->accept_ok = 1;
		if (w->stopping)
			uw_close_fd(w, res, w->direct);
		else
			uc_new(w, res, w->direct);
		return;
	}
	switch (-res) {
	case ECANCELED:
		break;
	case EINVAL:
		if (w->direct && !w->accept_ok) {
			srv_log(s, "accept into the files table refused by "
			    "the kernel: falling back to plain descriptors");
			w->direct = 0;
			break;
		}
		if (w->ms_accept && !w->accept_ok) {
			srv_log(s, "multishot accept refused by the kernel: "
			    "falling back to single-shot accept");
			w->ms_accept = 0;
			break;
		}
		/* FALLTHROUGH */
	case EMFILE:
	case ENFILE:
		/*
		 * Out of descriptors.  io_uring's accept takes a descriptor
		 * slot before it looks at the backlog, so it fails at once
		 * even with nobody waiting: re-arming it would spin.  Watch
		 * the listener instead until descriptors are free again
		 * (on_lpoll).
		 */
		if (!w->emfile)
			srv_log(s, "out of descriptors (%s): shedding new "
			    "connections until some close", strerror(-res));
		w->emfile = 1;
		w->st.emfile++;
		break;
	default:
		if (res != -ECONNABORTED && res != -EINTR)
			srv_warn(s, "accept: %s", strerror(-res));
		w->accept_resume = w->now + ACCEPT_PAUSE_MS;
	}
}

/*
 * The listener is readable while we are out of descriptors: try a real
 * accept (a thread or a close may have freed one), else shed the pending
 * connection with the reserve descriptor: the client sees an orderly close
 * instead of hanging in the backlog, and the poll, re-armed, fires again
 * only for the next one.
 */
static void
on_lpoll(struct worker *w, const struct io_uring_cqe *cqe)
{
	int fd, r;

	w->accept_armed = 0;
	w->accept_cancel = 0;
	if (cqe->res < 0 || w->stopping)
		return;
	fd = net_accept(w->lfd, NULL, 0);
	if (fd >= 0) {
		w->emfile = 0;
		uc_new(w, fd, 0);	/* a plain descriptor, even with direct on */
		return;
	}
	if (fd != -EMFILE && fd != -ENFILE)
		return;
	r = net_accept_shed(w->lfd, &w->reserve);
	if (r > 0)
		w->st.shed++;
	else if (r < 0)
		w->accept_resume = w->now + ACCEPT_PAUSE_MS;
}

static void
on_wake(struct worker *w)
{
	struct signalfd_siginfo si;
	uint64_t one = 1;
	int i;

	w->wake_armed = 0;
	if (w->id == 0) {
		while (read(w->wake_fd, &si, sizeof(si)) == sizeof(si))
			srv_debug(w->s, "signal %u: stopping", si.ssi_signo);
		for (i = 1; i < w->sh->n; i++)
			if (w->sh->w[i].wake_fd >= 0)
				(void)!write(w->sh->w[i].wake_fd, &one, sizeof(one));
	}
	uw_begin_stop(w);
}

/* ---- arming (all submissions go through here) ---------------------------- */

/* Everything decided during the last batch of completions goes out here. */
static void
uw_flush(struct worker *w)
{
	struct io_uring_sqe *sqe;
	struct uconn *c;
	unsigned n;

	if (w->rering)
		uroom_rering(w);
	/*
	 * No recipient congested any more (on any ring, with the room across
	 * rings): the paced take input again.
	 */
	while (uroom_congested(w) == 0 &&
	    (c = TAILQ_FIRST(&w->paced)) != NULL) {
		uc_unpace(w, c);
		uc_feed(w, c);
		uc_run_doomed(w);
	}
	if (w->starved) {
		w->starved = 0;
		ubuf_evict(w);
	}
	/*
	 * Buffers are free: as many connections waiting for one as there
	 * are free buffers try again, oldest first.  Re-arming them all
	 * would be a thundering herd: with 2 buffers and 300 waiters, 298
	 * fresh ENOBUFS per buffer returned.  A re-armed recv takes a
	 * buffer only once its data arrives, so some may leave theirs
	 * unused: uw_next_deadline() then brings us back soon for the rest.
	 */
	for (n = w->nbufs - w->nheld; n > 0; n--) {
		if ((c = TAILQ_FIRST(&w->bufwait)) == NULL)
			break;
		TAILQ_REMOVE(&w->bufwait, c, bufwait);
		c->flags &= ~C_BUFWAIT;
		uc_want(w, c, W_RECV);
	}
	uw_sync_accept(w);
	if (!w->wake_armed && !w->stopping && (sqe = uw_sqe(w)) != NULL) {
		/*
		 * Poll, not read: a read of a non-blocking signalfd or
		 * eventfd through io_uring completes with -EAGAIN.
		 */
		io_uring_prep_poll_add(sqe, w->wake_fd, POLLIN);
		ud_set(sqe, w, UD_WAKE);
		w->wake_armed = 1;
	}
	while ((c = TAILQ_FIRST(&w->dirty)) != NULL) {
		if (arm_conn(w, c) < 0)
			break;
		if (c->want == 0) {
			TAILQ_REMOVE(&w->dirty, c, dirty);
			c->flags &= ~C_DIRTY;
		}
	}
	if (w->bufring)
		ubuf_publish(w);
}

/* Arm what C wants; -1 when the SQ is out of entries (try next round). */
static int
arm_conn(struct worker *w, struct uconn *c)
{
	struct io_uring_sqe *sqe;

	if (c->want & W_CLOSE) {
		if ((sqe = uw_sqe(w)) == NULL)
			return -1;
		/* A direct descriptor is closed by emptying its slot. */
		if (c->flags & C_FIXED)
			io_uring_prep_close_direct(sqe, (unsigned)c->fd);
		else
			io_uring_prep_close(sqe, c->fd);
		ud_set(sqe, c, UD_CLOSE);
		c->want = 0;
		return 0;
	}
	if (c->want & (W_SHUT_WR | W_SHUT_RDWR)) {
		if ((sqe = uw_sqe(w)) == NULL)
			return -1;
		/* The request holds its own reference: no refs needed. */
		io_uring_prep_shutdown(sqe, c->fd, c->want & W_SHUT_RDWR ?
		    SHUT_RDWR : SHUT_WR);
		sqe->flags |= IOSQE_FIXED_FILE;
		ud_set(sqe, NULL, UD_IGNORE);
		c->want &= ~(W_SHUT_WR | W_SHUT_RDWR);
	}
	if (c->want & W_CANCEL_ALL) {
		if ((sqe = uw_sqe(w)) == NULL)
			return -1;
		/* Every request on this descriptor, in one entry. */
		io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL |
		    (c->flags & C_FIXED ? IORING_ASYNC_CANCEL_FD_FIXED : 0));
		ud_set(sqe, c, UD_CANCEL);
		c->refs++;
		c->want &= ~W_CANCEL_ALL;
	}
	if (c->flags & C_CLOSING) {
		c->want = 0;
		return 0;
	}
	if (c->want & W_CANCEL_RECV) {
		if ((c->flags & C_RECV) && !(c->flags & C_RCANCEL)) {
			if ((sqe = uw_sqe(w)) == NULL)
				return -1;
			io_uring_prep_cancel64(sqe, ud_make(c, UD_RECV), 0);
			ud_set(sqe, c, UD_CANCEL);
			c->refs++;
			c->flags |= C_RCANCEL;
		}
		c->want &= ~W_CANCEL_RECV;
	}
	if (c->want & W_CANCEL_SEND) {
		if (c->flags & C_SEND) {
			if ((sqe = uw_sqe(w)) == NULL)
				return -1;
			io_uring_prep_cancel64(sqe, ud_make(c, UD_SEND), 0);
			ud_set(sqe, c, UD_CANCEL);
			c->refs++;
		}
		c->want &= ~W_CANCEL_SEND;
	}
	if (c->want & W_SEND) {
		if (!(c->flags & C_SEND) && c->qhead) {
			if ((sqe = uw_sqe(w)) == NULL)
				return -1;
			arm_send(w, c, sqe);
		}
		c->want &= ~W_SEND;
	}
	if (c->want & W_RECV) {
		if (uc_recv_ok(w, c)) {
			if (!w->bufring && c->rbuf == NULL &&
			    (c->rbuf = useg_heap(w, w->bufsize)) == NULL) {
				c->want = 0;
				uc_close(w, c);
				return 0;
			}
			if ((sqe = uw_sqe(w)) == NULL)
				return -1;
			arm_recv(w, c, sqe);
		}
		c->want &= ~W_RECV;
	}
	return 0;
}

static void
arm_recv(struct worker *w, struct uconn *c, struct io_uring_sqe *sqe)
{
	if (w->bufring) {
		/*
		 * No buffer named: the kernel picks one from group BGID only
		 * when data arrives.  Multishot: one request, a completion
		 * per arrival, until it ends (no F_MORE).
		 */
		if (w->ms_recv)
			io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
		else
			io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = BGID;
	} else
		io_uring_prep_recv(sqe, c->fd, c->rbuf->data,
		    w->bufsize, 0);
	/*
	 * The last recv said the socket was left empty (no SOCK_NONEMPTY):
	 * a recv attempted now would find nothing; skip straight to
	 * waiting (POLL_FIRST) instead of failing one attempt first.
	 */
	if (!w->ms_recv && (c->flags & C_EMPTY))
		sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
	if (c->flags & C_FIXED)
		sqe->flags |= IOSQE_FIXED_FILE;
	ud_set(sqe, c, UD_RECV);
	c->refs++;
	c->flags |= C_RECV;
}

/*
 * One send carries all that is queued (up to SEND_IOV segments): what
 * piled up while the last send was in flight goes out in one request,
 * not one segment per round.  A single segment is a plain send.
 *
 * No MSG_WAITALL: the kernel would then retry a short send itself and
 * hold the buffers until the slowest peer took it all; a short count
 * returned to us lets uc_unpin_all() free the ring buffers.
 */
static void
arm_send(struct worker *w, struct uconn *c, struct io_uring_sqe *sqe)
{
	struct useg *s = c->qhead, *last = s;
	struct usend *u;
	int n;

	/* Out of memory for the iovecs: one segment will do. */
	if (s->next == NULL ||
	    (c->snd == NULL && (c->snd = malloc(sizeof(*c->snd))) == NULL)) {
		io_uring_prep_send(sqe, c->fd, s->data + s->off,
		    s->len - s->off, MSG_NOSIGNAL);
		c->send_len = s->len - s->off;
		if (s->next == NULL)
			w->solo_sends++;
	} else {
		u = c->snd;
		c->send_len = 0;
		for (n = 0; s && n < SEND_IOV; s = s->next, n++) {
			u->iov[n].iov_base = s->data + s->off;
			u->iov[n].iov_len = s->len - s->off;
			c->send_len += s->len - s->off;
			last = s;
		}
		memset(&u->msg, 0, sizeof(u->msg));
		u->msg.msg_iov = u->iov;
		u->msg.msg_iovlen = (size_t)n;
		io_uring_prep_sendmsg(sqe, c->fd, &u->msg, MSG_NOSIGNAL);
		if (s == NULL)
			w->solo_sends++;
	}
	if (c->flags & C_FIXED)
		sqe->flags |= IOSQE_FIXED_FILE;
	ud_set(sqe, c, UD_SEND);
	c->refs++;
	c->flags |= C_SEND;
	c->send_gen = w->gen;
	c->send_last = last;
}

static void
uw_sync_accept(struct worker *w)
{
	const struct srv *s = w->s;
	struct io_uring_sqe *sqe;
	int on = !w->stopping && w->lfd >= 0 &&
	    (!s->max_conns || w->nconns < s->max_conns) &&
	    w->now >= w->accept_resume;

	if (on && !w->accept_armed) {
		if ((sqe = uw_sqe(w)) == NULL)
			return;
		if (w->emfile)
			io_uring_prep_poll_add(sqe, w->lfd, POLLIN);
		else if (w->direct && w->ms_accept)
			io_uring_prep_multishot_accept_direct(sqe, w->lfd,
			    NULL, NULL, 0);
		else if (w->direct)
			/* liburing stores the index plus one: ALLOC - 1. */
			io_uring_prep_accept_direct(sqe, w->lfd, NULL, NULL, 0,
			    IORING_FILE_INDEX_ALLOC - 1);
		else if (w->ms_accept)
			io_uring_prep_multishot_accept(sqe, w->lfd, NULL, NULL,
			    SOCK_CLOEXEC);
		else
			io_uring_prep_accept(sqe, w->lfd, NULL, NULL,
			    SOCK_CLOEXEC);
		w->accept_ud = ud_make(w, w->emfile ? UD_LPOLL : UD_ACCEPT);
		io_uring_sqe_set_data64(sqe, w->accept_ud);
		w->accept_armed = 1;
	} else if (!on && w->accept_armed && !w->accept_cancel) {
		/*
		 * At the -m limit (or stopping): new clients wait in the
		 * kernel's backlog.  A multishot accept would go on taking
		 * them: cancel it.
		 */
		if ((sqe = uw_sqe(w)) == NULL)
			return;
		io_uring_prep_cancel64(sqe, w->accept_ud, 0);
		ud_set(sqe, NULL, UD_IGNORE);
		w->accept_cancel = 1;
	}
	/* The listener is closed only once no accept refers to it. */
	if (w->stopping && !w->accept_armed && w->lfd >= 0) {
		close(w->lfd);
		w->lfd = -1;
	}
}

/*
 * Close a descriptor no connection owns (accepted while stopping, or
 * without memory for its connection).  A direct one is a slot of the
 * files table: only a request can empty it.
 */
void
uw_close_fd(struct worker *w, int fd, int fixed)
{
	struct io_uring_sqe *sqe;

	if (!fixed) {
		close(fd);
		return;
	}
	if ((sqe = uw_sqe(w)) == NULL)
		return;		/* the ring's exit frees the slot */
	io_uring_prep_close_direct(sqe, (unsigned)fd);
	ud_set(sqe, NULL, UD_IGNORE);
}

/* ---- the stop ------------------------------------------------------------ */

static void
uw_begin_stop(struct worker *w)
{
	struct uconn *c, *next;

	if (w->stopping)
		return;
	w->stopping = 1;
	w->stop_deadline = w->now + SRV_STOP_GRACE_MS;
	for (c = TAILQ_FIRST(&w->live); c; c = next) {
		next = TAILQ_NEXT(c, lru);
		uc_inq_free(w, c);		/* no more input is served */
		uc_unpace(w, c);
		if (!c->qhead && !(c->flags & C_SEND))
			uc_close(w, c);
		else {
			c->flags |= C_EOF;	/* close once flushed */
			if (c->flags & C_RECV)
				uc_want(w, c, W_CANCEL_RECV);
		}
	}
	while ((c = TAILQ_FIRST(&w->linger)) != NULL)
		uc_close(w, c);
	while ((c = TAILQ_FIRST(&w->parked)) != NULL)
		uc_close(w, c);
	uc_run_doomed(w);
}

static int
uw_done(const struct worker *w)
{
	if (!w->stopping)
		return 0;
	if (w->nalloc == 0 && !w->accept_armed && w->lfd < 0)
		return 1;
	/* A request that will not end: the ring's exit cancels it. */
	return w->now >= w->stop_deadline + 2000;
}

/*
 * An SQE, or NULL.  The SQ ring has a fixed size: when it is full, hand
 * what is in it to the kernel (io_uring_submit consumes the entries at
 * once, except with SQPOLL, where we wait for the thread to make room).
 * A NULL after that means the kernel refused the batch (no memory):
 * the caller leaves its work for the next round.
 */
struct io_uring_sqe *
uw_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);

	if (sqe != NULL)
		return sqe;
	w->st.sq_full++;
	w->st.enters++;
	(void)io_uring_submit(&w->ring);
	if (w->sqpoll)
		(void)io_uring_sqring_wait(&w->ring);
	return io_uring_get_sqe(&w->ring);
}

/* The binary: its name, its options (uring-setup.c), its capabilities. */
const struct srv_model uring_model = {
	.name = "echo-uring",
	.summary = "Echo server: the completion model with io_uring(7), one ring per worker thread.",
	.caps = SRV_CAP_WORKERS | SRV_CAP_BROADCAST | SRV_CAP_ROOM,
	.default_workers = 1,
	.workers_help = "worker threads, each with its own ring and SO_REUSEPORT listener (default 1)",
	.unavailable = "address or io_uring unavailable",
	.options = uring_opts,
	.on_option = uring_option,
};

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
 * The connection machinery under the loop (src/conn.c, shared with the
 * select, poll and signal-driven servers) handles the pitfalls every
 * readiness loop meets:
 *   - a peer that sends and never reads: stop reading it past a high-water
 *     mark of queued output (backpressure), or memory grows without bound;
 *   - EOF with output still queued (half-close): stop asking for input, or
 *     the level-triggered EOF is reported forever and the loop spins;
 *   - a connection closed while later events of the same epoll_wait batch
 *     still point at it: it is freed only after the batch;
 *   - EMFILE on accept: shed with a reserve descriptor instead of spinning.
 * What is epoll's own: the interest list lives in the kernel (one
 * epoll_ctl per connection, and one per change of interest, which this
 * file makes only on a real change), and EPOLLOUT is asked for only while
 * output is queued.
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
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "net.h"
#include "server.h"
#include "service.h"
#include "workers.h"

#define MAX_EVENTS	256

/*
 * One worker's loop.  The connections themselves (output queues,
 * backpressure, half-close, idle expiry, graceful stop) are the shared
 * conn_loop's; what is epoll's is how the loop learns that a descriptor is
 * ready, and that is all this file shows.  -w N is N copies of this in N
 * processes, sharing nothing.
 */
struct eloop {
	struct conn_loop lp;
	int		 ep, sfd;
	/* Sentinels: epoll_data for the non-connection descriptors. */
	char		 tag_listen, tag_signal;
};

static uint32_t
to_epoll(unsigned want)
{
	/*
	 * EPOLLRDHUP reports the peer's FIN without a read; EPOLLERR and
	 * EPOLLHUP are reported whatever we ask for.  EPOLLOUT is asked for
	 * only while output is queued: a socket with room in its send
	 * buffer is always writable, and every idle connection would wake
	 * the loop on every call.
	 */
	return ((want & CONN_WANT_READ) ? EPOLLIN | EPOLLRDHUP : 0) |
	    ((want & CONN_WANT_WRITE) ? EPOLLOUT : 0);
}

static int
ep_add(struct conn_loop *lp, struct conn *c)
{
	struct eloop *el = lp->model;
	struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = c };

	/* The kernel keeps the interest list: one call per connection. */
	if (epoll_ctl(el->ep, EPOLL_CTL_ADD, c->fd, &e) < 0)
		return -errno;
	c->watched = e.events;		/* what is registered, to skip no-op MODs */
	return 0;
}

static void
ep_update(struct conn_loop *lp, struct conn *c)
{
	struct eloop *el = lp->model;
	struct epoll_event e = { .events = to_epoll(conn_interest(c)), .data.ptr = c };

	/* epoll_ctl is a system call: make it only on a real change. */
	if (c->watched == e.events)
		return;
	if (epoll_ctl(el->ep, EPOLL_CTL_MOD, c->fd, &e) < 0) {
		srv_warn(lp->srv, "epoll_ctl: %s", strerror(errno));
		return;
	}
	c->watched = e.events;
}

/* The loop starts or stops accepting (its first tick, -m, stop). */
static void
ep_listen(struct conn_loop *lp, int on)
{
	struct eloop *el = lp->model;
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = &el->tag_listen };

	/*
	 * At the -m limit the listener leaves the interest list: new
	 * clients wait in the kernel's accept queue instead of being
	 * accepted and refused.
	 */
	if (epoll_ctl(el->ep, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, lp->lfd, &e) < 0)
		srv_warn(lp->srv, "epoll_ctl(listener): %s", strerror(errno));
}

/*
 * Nothing to do on remove: close() drops the descriptor from every epoll
 * set, being its last reference.  (A dup()ed descriptor would keep the
 * registration alive, and events for a closed fd would keep coming: the
 * interest list holds open files, not descriptor numbers.)
 */
static const struct conn_ops ep_ops = {
	.add = ep_add,
	.update = ep_update,
	.listen = ep_listen,
};

static void
dispatch(struct eloop *el, const struct epoll_event *ev)
{
	struct conn *c = ev->data.ptr;

	if (ev->data.ptr == &el->tag_listen) {
		conn_accept(&el->lp);
		return;
	}
	if (ev->data.ptr == &el->tag_signal) {
		conn_signalfd(&el->lp, el->sfd);
		return;
	}
	/*
	 * A connection closed earlier in this batch is still allocated
	 * (freed only between batches), so its stale event is harmless:
	 * the conn_ functions ignore the dead.  EPOLLERR/EPOLLHUP: a read
	 * or a write returns the error.  Output first: draining it may
	 * lift backpressure before we read.
	 */
	if (ev->events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
		conn_writable(&el->lp, c);
	if (ev->events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))
		conn_readable(&el->lp, c);
}

static int
run_loop(struct srv *s, int lfd, int sfd)
{
	struct epoll_event ev[MAX_EVENTS], e;
	struct eloop el;
	int i, n, timeout, r;

	memset(&el, 0, sizeof(el));
	el.sfd = sfd;
	el.ep = epoll_create1(EPOLL_CLOEXEC);
	if (el.ep < 0) {
		srv_warn(s, "epoll_create1: %s", strerror(errno));
		return SRV_EX_OSERR;
	}
	if ((r = conn_loop_init(&el.lp, s, lfd, &ep_ops, &el, 0, 0)) < 0) {
		srv_warn(s, "cannot set up the loop: %s", strerror(-r));
		return SRV_EX_OSERR;
	}
	e.events = EPOLLIN;
	e.data.ptr = &el.tag_signal;
	if (epoll_ctl(el.ep, EPOLL_CTL_ADD, sfd, &e) < 0) {
		srv_warn(s, "epoll_ctl: %s", strerror(errno));
		return SRV_EX_OSERR;
	}
	for (;;) {
		timeout = conn_tick(&el.lp);
		if (conn_loop_done(&el.lp))
			break;
		n = epoll_wait(el.ep, ev, MAX_EVENTS, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			srv_warn(s, "epoll_wait: %s", strerror(errno));
			return SRV_EX_OSERR;
		}
		for (i = 0; i < n; i++) {
			dispatch(&el, &ev[i]);
			conn_event_done(&el.lp);
		}
	}
	conn_loop_fini(&el.lp);
	close(el.ep);
	return SRV_EX_OK;
}

/*
 * -w N: the parent makes every listener before forking (so a bad address
 * fails before the readiness line) and keeps them open, so that a worker
 * that dies is replaced without losing its accept queue.  Forking,
 * replacing and stopping the workers is the supervisor's (workers.c),
 * which also has the kernel stop them if the parent is killed outright.
 */
static void
worker(struct wrk *w, int idx)
{
	int *lfds = w->arg, i, sfd;

	for (i = 0; i < w->n; i++)
		if (i != idx)
			close(lfds[i]);
	sfd = srv_signals_block();
	if (sfd < 0)
		_exit(SRV_EX_OSERR);
	_exit(run_loop(w->srv, lfds[idx], sfd));
}

static int
run_workers(struct srv *s, int first)
{
	int *lfds = calloc((size_t)s->workers, sizeof(int));
	int i, sig, rc = SRV_EX_OK;
	struct wrk w;

	if (lfds == NULL)
		return SRV_EX_OSERR;
	lfds[0] = first;
	for (i = 1; i < s->workers; i++) {
		lfds[i] = srv_listen_again(s, first, NET_NONBLOCK);
		if (lfds[i] < 0) {
			srv_warn(s, "listener for worker %d: %s", i, strerror(-lfds[i]));
			return SRV_EX_OSERR;
		}
	}
	if (wrk_init(&w, s, s->workers, worker, lfds) < 0)
		return SRV_EX_OSERR;
	/* Each worker keeps its own grace period: SIGKILL is for one that overran it. */
	w.grace_ms = 2 * SRV_STOP_GRACE_MS;
	if (wrk_start(&w) < 0)
		rc = SRV_EX_OSERR;
	else {
		srv_ready(s);
		sig = wrk_run(&w);
		srv_debug(s, "signal %d: stopping", sig);
	}
	wrk_stop(&w);
	wrk_fini(&w);
	for (i = 0; i < s->workers; i++)
		close(lfds[i]);
	free(lfds);
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

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
 * -w N forks N worker processes, each with its own epoll instance: the
 * multi-process, nginx-style model of the documents ("PreForking异步").
 * How the workers share the port is the model's one real choice, and this
 * file has all three shapes (see "The listener" below):
 *   reuseport	 (the default) a listener per worker, all bound to the
 *		 port with SO_REUSEPORT: the kernel hashes each connection
 *		 to one accept queue, and only that worker is woken;
 *   --shared-listener
 *		 one listener made by the parent and inherited by every
 *		 worker, in each epoll set with EPOLLEXCLUSIVE: a
 *		 connection wakes one waiting worker, or a few, not all;
 *   --shared-listener=herd
 *		 the same without EPOLLEXCLUSIVE: every worker is woken for
 *		 every connection and all but one find nothing, the
 *		 thundering herd.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "net.h"
#include "server.h"
#include "service.h"
#include "workers.h"

#define MAX_EVENTS	256

/* Since Linux 4.5 (and glibc 2.24); older kernels ignore the bit. */
#ifndef EPOLLEXCLUSIVE
#define EPOLLEXCLUSIVE	(1u << 28)
#endif

#define OPT_SHARED	256

/* How the workers of -w N listen (see the file's header). */
enum shape { SHAPE_REUSEPORT, SHAPE_EXCLUSIVE, SHAPE_HERD };
static const char *const shape_names[] = { "reuseport", "exclusive", "herd" };

/*
 * One worker's listener statistics, in memory shared with the parent
 * (each worker writes only its own slot; the parent reads them after it
 * has reaped every worker, and reports them at stop).  A wake-up is an
 * epoll_wait() that returned the listener; an empty one accepted nothing.
 */
struct wstat {
	unsigned long	 accepts, wakeups, empty;
};

/* The model's state, from the command line to the workers. */
struct epsrv {
	enum shape	 shape;
	int		*lfds;		/* per worker; one for a shared listener */
	struct wstat	*st;		/* per worker, shared memory */
};

/*
 * One worker's loop.  The connections themselves (output queues,
 * backpressure, half-close, idle expiry, graceful stop) are the shared
 * conn_loop's; what is epoll's is how the loop learns that a descriptor is
 * ready, and that is all this file shows.  -w N is N copies of this in N
 * processes, sharing nothing but, with --shared-listener, the listener.
 */
struct eloop {
	struct conn_loop lp;
	int		 ep, sfd;
	uint32_t	 lflags;	/* EPOLLEXCLUSIVE for a shared listener */
	struct wstat	*st;		/* NULL without workers */
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
	struct epoll_event e = {
		.events = EPOLLIN | el->lflags, .data.ptr = &el->tag_listen
	};

	/*
	 * At the -m limit the listener leaves the interest list: new
	 * clients wait in the kernel's accept queue instead of being
	 * accepted and refused (with a shared listener, the other workers
	 * go on taking them).  Leaving and coming back is a DEL and an ADD,
	 * never a MOD: the kernel refuses EPOLL_CTL_MOD on an
	 * EPOLLEXCLUSIVE registration (EINVAL).
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

/*
 * The listener is readable: accept what is there.  With a shared listener
 * finding nothing is normal, not an error: another worker woken by the
 * same connection (all of them in the herd shape; with EPOLLEXCLUSIVE a
 * busy worker whose ready list the connection also reached, see "The
 * listener") may have taken it between the wake-up and our accept(),
 * which then says EAGAIN.  Those wake-ups are the herd's cost made
 * visible, so they are counted.  (Not all of it: a worker woken after
 * the queue is empty again does not even return from epoll_wait, whose
 * level-triggered check finds the listener not readable and sleeps on;
 * that costs a context switch, which echo-bench --server-pid counts.)
 */
static void
listener_ready(struct eloop *el)
{
	unsigned long before = el->lp.accepts;

	conn_accept(&el->lp);
	if (el->st == NULL)
		return;
	el->st->wakeups++;
	el->st->accepts += el->lp.accepts - before;
	if (el->lp.accepts == before)
		el->st->empty++;
}

static void
dispatch(struct eloop *el, const struct epoll_event *ev)
{
	struct conn *c = ev->data.ptr;

	if (ev->data.ptr == &el->tag_listen) {
		listener_ready(el);
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
run_loop(struct srv *s, int lfd, int sfd, uint32_t lflags, struct wstat *st)
{
	struct epoll_event ev[MAX_EVENTS], e;
	struct eloop el;
	int i, n, timeout, r;

	memset(&el, 0, sizeof(el));
	el.sfd = sfd;
	el.lflags = lflags;
	el.st = st;
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
 * The listener.  -w N: how N worker processes share one port, and what
 * the kernel does when a connection arrives (the file's header names the
 * three shapes).
 *
 * reuseport: each worker has a socket of its own, all bound to the port
 * with SO_REUSEPORT.  The kernel picks one of them for each new connection
 * by a hash of its addresses and ports, so the connection wakes exactly
 * one worker, which always finds it.  The price: the hash knows nothing of
 * load.  A worker that is busy, or dead and not yet replaced, keeps
 * receiving its share, and that share waits in its queue while the other
 * workers idle.  (And any process of the same user may join the group by
 * binding the port with SO_REUSEPORT too: srv_listen() binds once without
 * it first, so that a second server fails instead of taking half of the
 * connections.)
 *
 * --shared-listener=herd: one socket, made by the parent before it forks,
 * so one accept queue.  Each worker's epoll instance puts an entry on the
 * socket's wait queue, and a new connection wakes every entry: every
 * waiting worker runs, one accept()s the connection and the others find
 * nothing.  That is the thundering herd: N wake-ups per connection, N - 1
 * of them wasted.  (The accept(2) herd of blocking servers is gone since
 * Linux 2.6: a process blocked in accept() is an exclusive waiter.
 * epoll waiters were not, until EPOLLEXCLUSIVE.)  The queue is shared,
 * though: a busy worker takes nothing, and an idle one serves the backlog.
 *
 * --shared-listener: the same socket added with EPOLLEXCLUSIVE (Linux
 * 4.5).  The entries wait as exclusive waiters, and the kernel's walk of
 * the wait queue stops at the first one whose worker was asleep in
 * epoll_wait(): "one or more" are woken, not one, because the walk also
 * passes the entries of workers that were busy, putting the listener on
 * their ready lists without stopping; when they come back to
 * epoll_wait() they may find the connection gone.  The walk starts at the
 * head of the queue every time, in the order the workers registered, so
 * at light load the first idle worker takes most connections: the spread
 * is uneven by design, and evens out only when the first workers are
 * busy.  nginx offers both its accept_mutex and EPOLLEXCLUSIVE for this,
 * and reuseport.
 *
 * Whatever the shape, the parent keeps the listeners open: a worker that
 * dies is replaced (workers.c) without losing an accept queue, and a unix
 * socket's file is removed once, by the parent, at its exit (server.c).
 */
static void
worker(struct wrk *w, int idx)
{
	struct epsrv *es = w->arg;
	uint32_t lflags = es->shape == SHAPE_EXCLUSIVE ? EPOLLEXCLUSIVE : 0;
	int i, lfd = es->lfds[0], sfd;

	if (es->shape == SHAPE_REUSEPORT) {
		for (i = 0; i < w->n; i++)
			if (i != idx)
				close(es->lfds[i]);
		lfd = es->lfds[idx];
	}
	sfd = srv_signals_block();
	if (sfd < 0)
		_exit(SRV_EX_OSERR);
	/*
	 * At stop the loop takes the listener out of its epoll set before
	 * it closes its descriptor: with a shared listener the parent and
	 * the other workers still hold the socket open, and an epoll
	 * registration lives as long as the open file, not the descriptor.
	 */
	_exit(run_loop(w->srv, lfd, sfd, lflags, &es->st[idx]));
}

/* At stop, with the server's log (not under -q): what each worker took. */
static void
report(const struct srv *s, const struct epsrv *es)
{
	const struct wstat *st;
	unsigned long a = 0, wk = 0, e = 0;
	int i;

	for (i = 0; i < s->workers; i++) {
		st = &es->st[i];
		srv_log(s, "worker %d: %lu accepts, %lu listener wake-ups, "
		    "%lu empty", i, st->accepts, st->wakeups, st->empty);
		a += st->accepts;
		wk += st->wakeups;
		e += st->empty;
	}
	srv_log(s, "listener %s: %lu accepts in %lu wake-ups (%.2f per "
	    "wake-up), %lu empty", shape_names[es->shape], a, wk,
	    wk ? (double)a / (double)wk : 0.0, e);
}

/*
 * -w N: the parent makes the listeners before forking (so a bad address
 * fails before the readiness line).  Forking, replacing and stopping the
 * workers is the supervisor's (workers.c), which also has the kernel stop
 * them if the parent is killed outright.
 */
static int
run_workers(struct srv *s, struct epsrv *es, int first)
{
	size_t size = (size_t)s->workers * sizeof(struct wstat);
	int i, nl, sig, rc = SRV_EX_OK;
	struct wrk w;

	if (es->shape == SHAPE_REUSEPORT &&
	    (s->activated || s->addr.ss.ss_family == AF_UNIX)) {
		/*
		 * SO_REUSEPORT groups are made of TCP and UDP sockets: a
		 * unix socket, or the one socket systemd passed, can only
		 * be shared.
		 */
		es->shape = SHAPE_EXCLUSIVE;
		srv_debug(s, "one listener for every worker: it cannot be "
		    "duplicated with SO_REUSEPORT");
	}
	srv_debug(s, "listener: %s", shape_names[es->shape]);
	nl = es->shape == SHAPE_REUSEPORT ? s->workers : 1;
	es->lfds = calloc((size_t)nl, sizeof(int));
	es->st = mmap(NULL, size, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (es->lfds == NULL || es->st == MAP_FAILED) {
		srv_warn(s, "cannot start: %s", strerror(errno));
		return SRV_EX_OSERR;
	}
	es->lfds[0] = first;
	for (i = 1; i < nl; i++) {
		es->lfds[i] = srv_listen_again(s, first, NET_NONBLOCK);
		if (es->lfds[i] < 0) {
			srv_warn(s, "listener for worker %d: %s", i,
			    strerror(-es->lfds[i]));
			return SRV_EX_OSERR;
		}
	}
	if (wrk_init(&w, s, s->workers, worker, es) < 0)
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
	/* Every worker is reaped: their counters are final. */
	if (rc == SRV_EX_OK)
		report(s, es);
	for (i = 0; i < nl; i++)
		close(es->lfds[i]);
	free(es->lfds);
	munmap(es->st, size);
	return rc;
}

static const struct srv_option options[] = {
	{ "shared-listener", 2, OPT_SHARED, NULL, "with -w: one listener for "
	    "every worker, added with EPOLLEXCLUSIVE (=herd: without)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int
on_option(struct srv *s, int key, const char *arg)
{
	struct epsrv *es = s->model_data;

	if (key != OPT_SHARED)
		return -1;
	if (arg == NULL || strcmp(arg, "exclusive") == 0)
		es->shape = SHAPE_EXCLUSIVE;
	else if (strcmp(arg, "herd") == 0)
		es->shape = SHAPE_HERD;
	else
		srv_usage_error(s, "--shared-listener: '%s' is not exclusive "
		    "or herd", arg);
	return 0;
}

static const struct srv_model model = {
	.name = "echo-epoll",
	.summary = "Echo server: IO multiplexing with epoll(7), one thread per worker process.",
	.caps = SRV_CAP_WORKERS | SRV_CAP_BROADCAST,
	.default_workers = 1,
	.workers_help = "worker processes, each with its own epoll and, unless --shared-listener, its own SO_REUSEPORT listener (default 1)",
	.options = options,
	.on_option = on_option,
};

int
main(int argc, char **argv)
{
	struct epsrv es = { .shape = SHAPE_REUSEPORT };
	struct srv s;
	int lfd, sfd, n;

	srv_init(&s, &model, argc, argv, &es);
	srv_raise_nofile(&s);
	if (s.workers > 1 && es.shape != SHAPE_REUSEPORT) {
		/*
		 * One listener for every worker: bound as for one process,
		 * without SO_REUSEPORT (which srv_listen() gives the first
		 * listener of separate workers), so that nobody else can
		 * join the port.
		 */
		n = s.workers;
		s.workers = 1;
		lfd = srv_listen(&s, NET_NONBLOCK);
		s.workers = n;
	} else
		lfd = srv_listen(&s, NET_NONBLOCK);
	if (s.workers > 1)
		return run_workers(&s, &es, lfd);
	/* One process: one listener whatever the shape, and no herd. */
	sfd = srv_signals_block();
	if (sfd < 0) {
		srv_warn(&s, "signalfd: %s", strerror(-sfd));
		return SRV_EX_OSERR;
	}
	srv_ready(&s);
	return run_loop(&s, lfd, sfd, 0, NULL);
}

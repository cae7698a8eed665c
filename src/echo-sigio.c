/*
 * echo-sigio — signal-driven IO for TCP: every socket is O_ASYNC, and the
 * kernel queues a real-time signal carrying the descriptor and the event
 * (F_SETSIG) whenever one becomes readable or writable; the loop takes
 * them synchronously with sigwaitinfo(2).  The model the classic texts
 * describe and rarely show working for TCP, where "something happened"
 * covers every arriving segment, a connection, an error and freed send
 * space alike.
 *
 * For one echoed message: sigwaitinfo, read, write; per connection, three
 * fcntl() to arm it (F_SETOWN, F_SETSIG, F_SETFL O_ASYNC).
 *
 * How it differs from a readiness API:
 *   - it is edge-triggered: a signal says data arrived, once.  A
 *     connection that stops reading with input left (a full batch, the
 *     high-water mark, a lingering close) must be read again without
 *     waiting for a signal (conn_again), and so must a new one, whose
 *     first bytes may have come before O_ASYNC was set;
 *   - the signals are queued, one per event, against RLIMIT_SIGPENDING
 *     (per user).  When the queue is full the kernel sends a plain SIGIO
 *     instead, which says only that notifications were lost: the loop
 *     then empties the real-time queue and rescans every connection;
 *   - signals for a descriptor already closed (and perhaps reused) are
 *     still in the queue: the loop looks the descriptor up and tolerates
 *     a spurious EAGAIN.
 * Every signal is blocked and taken with sigwaitinfo(), never through a
 * handler: no async-signal-safety to worry about, no EINTR.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "net.h"
#include "server.h"

struct sigio {
	int		 rtsig;
	pid_t		 self;		/* F_SETOWN: signal this process */
	struct conn	**byfd;
	int		 cap;
	unsigned long	 overflows;
};

/* Deliver RTSIG, with the descriptor in si_fd, for every event on FD. */
static int
arm(int fd, int rtsig, pid_t self)
{
	if (fcntl(fd, F_SETOWN, self) < 0 ||
	    fcntl(fd, F_SETSIG, rtsig) < 0 ||
	    fcntl(fd, F_SETFL, O_NONBLOCK | O_ASYNC) < 0)
		return -errno;
	return 0;
}

static int
sg_add(struct conn_loop *lp, struct conn *c)
{
	struct sigio *sg = lp->model;
	struct conn **p;
	int cap, r;

	if (c->fd >= sg->cap) {
		cap = sg->cap ? sg->cap : 1024;
		while (cap <= c->fd)
			cap *= 2;
		p = realloc(sg->byfd, (size_t)cap * sizeof(*p));
		if (p == NULL)
			return -ENOMEM;
		memset(p + sg->cap, 0, (size_t)(cap - sg->cap) * sizeof(*p));
		sg->byfd = p;
		sg->cap = cap;
	}
	if ((r = arm(c->fd, sg->rtsig, sg->self)) < 0)
		return r;
	sg->byfd[c->fd] = c;
	/* Bytes that came before O_ASYNC was set raised no signal. */
	conn_again(lp, c);
	return 0;
}

static void
sg_remove(struct conn_loop *lp, struct conn *c)
{
	struct sigio *sg = lp->model;

	sg->byfd[c->fd] = NULL;
}

/* No update hook: the kernel signals every event, wanted or not. */
static const struct conn_ops sg_ops = {
	.add = sg_add,
	.remove = sg_remove,
};

static void
on_event(struct conn_loop *lp, struct conn *c, long band, int drain)
{
	if (band & (POLLOUT | POLLERR | POLLHUP))
		conn_writable(lp, c);
	/* A signal comes whatever our interest: a paused connection waits. */
	if ((band & (POLLIN | POLLERR | POLLHUP)) &&
	    (conn_interest(c) & CONN_WANT_READ)) {
		if (drain)
			conn_drain(lp, c);
		else
			conn_readable(lp, c);
	}
	conn_event_done(lp);
}

/*
 * Notifications were lost: throw away the queued ones (their news is
 * stale once everything is looked at) and look at everything.
 */
static void
rescan(struct conn_loop *lp, struct sigio *sg)
{
	struct timespec zero = { 0, 0 };
	sigset_t rt;
	int fd, n = 0;

	sigemptyset(&rt);
	sigaddset(&rt, sg->rtsig);
	while (sigtimedwait(&rt, NULL, &zero) > 0)
		n++;
	sg->overflows++;
	srv_debug(lp->srv, "real-time signal queue overflowed (SIGIO): "
	    "%d dropped, rescanning %d connections", n, lp->nconns);
	for (fd = 0; fd < sg->cap; fd++)
		if (sg->byfd[fd] != NULL)
			on_event(lp, sg->byfd[fd], POLLIN | POLLOUT, 1);
	conn_accept(lp);
}

/* One signal taken from the queue. */
static void
dispatch(struct conn_loop *lp, struct sigio *sg, const siginfo_t *si)
{
	int fd;

	if (si->si_signo == SIGIO) {
		rescan(lp, sg);
		return;
	}
	if (si->si_signo != sg->rtsig) {
		srv_debug(lp->srv, "signal %d: stopping", si->si_signo);
		conn_begin_stop(lp);
		return;
	}
	fd = si->si_fd;
	/* The loop sets lfd to -1 when it closes the listener. */
	if (fd == lp->lfd && fd >= 0)
		conn_accept(lp);
	else if (fd >= 0 && fd < sg->cap && sg->byfd[fd] != NULL)
		on_event(lp, sg->byfd[fd], si->si_band, 0);
	/* else: news of a descriptor closed since; nothing to do. */
}

static int
run(struct srv *s, int lfd, const sigset_t *set, int rtsig)
{
	struct sigio sg = { .rtsig = rtsig, .self = getpid() };
	struct conn_loop lp;
	siginfo_t si;
	int timeout, r;

	/* Edge-style: a signal per event, never re-reported. */
	if ((r = conn_loop_init(&lp, s, lfd, &sg_ops, &sg, 0, 1)) < 0 ||
	    (r = arm(lfd, rtsig, sg.self)) < 0) {
		srv_warn(s, "cannot set up the loop: %s", strerror(-r));
		return SRV_EX_OSERR;
	}
	srv_ready(s);
	for (;;) {
		timeout = conn_tick(&lp);
		if (conn_loop_done(&lp))
			break;
		if (lp.accept_again)
			conn_accept(&lp);
		conn_run_again(&lp);
		if (lp.again || (lp.accept_again && lp.accepting))
			timeout = 0;
		/*
		 * One signal per call: the next call returns at once while
		 * more are queued, and an extra call to find the queue empty
		 * would cost a system call per message.
		 */
		if (srv_wait_signal(set, &si, timeout) > 0)
			dispatch(&lp, &sg, &si);
	}
	if (sg.overflows)
		srv_debug(s, "%lu real-time signal queue overflows", sg.overflows);
	conn_loop_fini(&lp);
	free(sg.byfd);
	return SRV_EX_OK;
}

static const struct srv_model model = {
	.name = "echo-sigio",
	.summary = "Echo server: signal-driven IO (O_ASYNC, F_SETSIG real-time signals, sigwaitinfo), one thread.",
	.caps = SRV_CAP_BROADCAST,
};

int
main(int argc, char **argv)
{
	struct srv s;
	sigset_t set;
	int lfd, rtsig = SIGRTMIN;

	srv_init(&s, &model, argc, argv, NULL);
	srv_raise_nofile(&s);
	/* Blocked before the first socket is armed: none may be delivered. */
	srv_signals_ignore_pipe();
	sigemptyset(&set);
	sigaddset(&set, rtsig);
	sigaddset(&set, SIGIO);
	srv_sigset_stop(&set);
	sigprocmask(SIG_BLOCK, &set, NULL);
	lfd = srv_listen(&s, NET_NONBLOCK);
	return run(&s, lfd, &set, rtsig);
}

/*
 * echo-poll — IO multiplexing with poll(2): one thread, non-blocking
 * sockets, one array of struct pollfd describing every descriptor and
 * what we wait for on it.
 *
 * For one echoed message: poll, read, write.  Unlike select(2) there is no
 * FD_SETSIZE ceiling and the array says per descriptor what to wait for;
 * like select, every call copies the whole array into the kernel, which
 * then polls every socket in it and hangs the thread on every wait queue
 * (the documents' "bottleneck 1 and 2"): each call is O(connections),
 * even when one of them is ready.  With thousands of idle connections that
 * is the cost epoll(7) removes.
 *
 * The array is kept compact: a closed connection's slot is taken by the
 * last entry (swap-remove), so poll() never walks holes.  The loop walks
 * the array from the end, so an entry moved into a slot has been seen
 * already; its revents are cleared so it is not served twice.
 *
 * Interest follows the connection's state: POLLOUT only while output is
 * queued (or every idle connection would wake the loop at every call),
 * POLLIN not while output is past the high-water mark (backpressure) or
 * after EOF.  The listener's fd is set negative (poll ignores it) at the
 * -m limit.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "net.h"
#include "server.h"

#define P_LISTEN	0	/* pfd[0]: the listener */
#define P_SIGNAL	1	/* pfd[1]: the signalfd */
#define P_FIRST		2	/* connections from here */

struct pollset {
	struct pollfd	*pfd;
	struct conn	**conns;	/* conns[i] watches pfd[i] */
	int		 n, cap;
};

static short
events_of(const struct conn *c)
{
	unsigned want = conn_interest(c);

	return (short)(((want & CONN_WANT_READ) ? POLLIN : 0) |
	    ((want & CONN_WANT_WRITE) ? POLLOUT : 0));
}

static int
ps_add(struct conn_loop *lp, struct conn *c)
{
	struct pollset *ps = lp->model;
	struct pollfd *pfd;
	struct conn **conns;
	int cap;

	if (ps->n == ps->cap) {
		cap = ps->cap * 2;
		pfd = realloc(ps->pfd, (size_t)cap * sizeof(*pfd));
		if (pfd == NULL)
			return -ENOMEM;
		ps->pfd = pfd;
		conns = realloc(ps->conns, (size_t)cap * sizeof(*conns));
		if (conns == NULL)
			return -ENOMEM;
		ps->conns = conns;
		ps->cap = cap;
	}
	c->slot = ps->n++;
	ps->pfd[c->slot] = (struct pollfd){ .fd = c->fd, .events = POLLIN };
	ps->conns[c->slot] = c;
	return 0;
}

/* No system call: the array is handed to the kernel whole at each poll(). */
static void
ps_update(struct conn_loop *lp, struct conn *c)
{
	struct pollset *ps = lp->model;

	ps->pfd[c->slot].events = events_of(c);
}

static void
ps_remove(struct conn_loop *lp, struct conn *c)
{
	struct pollset *ps = lp->model;
	int last = --ps->n;

	if (c->slot != last) {
		ps->pfd[c->slot] = ps->pfd[last];
		ps->pfd[c->slot].revents = 0;	/* seen already: see above */
		ps->conns[c->slot] = ps->conns[last];
		ps->conns[c->slot]->slot = c->slot;
	}
	c->slot = -1;
}

static const struct conn_ops ps_ops = {
	.add = ps_add,
	.update = ps_update,
	.remove = ps_remove,
};

static void
serve_ready(struct conn_loop *lp, struct pollset *ps)
{
	struct conn *c;
	short re;
	int i;

	for (i = ps->n - 1; i >= P_FIRST; i--) {
		if (i >= ps->n || (re = ps->pfd[i].revents) == 0)
			continue;
		c = ps->conns[i];
		/*
		 * POLLERR/POLLHUP come whatever we asked for; the read or
		 * write then returns the error.  Output first: draining it
		 * may lift backpressure.
		 */
		if (re & (POLLOUT | POLLERR | POLLHUP))
			conn_writable(lp, c);
		if (re & (POLLIN | POLLERR | POLLHUP))
			conn_readable(lp, c);
		conn_event_done(lp);
	}
}

static int
run(struct srv *s, int lfd, int sfd)
{
	struct conn_loop lp;
	struct pollset ps = { .n = P_FIRST, .cap = 64 };
	int n = 0, timeout, r;

	ps.pfd = calloc((size_t)ps.cap, sizeof(*ps.pfd));
	ps.conns = calloc((size_t)ps.cap, sizeof(*ps.conns));
	if (ps.pfd == NULL || ps.conns == NULL)
		r = -ENOMEM;
	else
		r = conn_loop_init(&lp, s, lfd, &ps_ops, &ps, 0, 0);
	if (r < 0) {
		srv_warn(s, "cannot set up the loop: %s", strerror(-r));
		return SRV_EX_OSERR;
	}
	ps.pfd[P_SIGNAL] = (struct pollfd){ .fd = sfd, .events = POLLIN };
	for (;;) {
		timeout = conn_tick(&lp);
		if (conn_loop_done(&lp))
			break;
		ps.pfd[P_LISTEN] = (struct pollfd){
			.fd = lp.accepting ? lp.lfd : -1, .events = POLLIN };
		n = poll(ps.pfd, (nfds_t)ps.n, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			srv_warn(s, "poll: %s", strerror(errno));
			break;
		}
		if (n == 0)
			continue;
		serve_ready(&lp, &ps);
		if (ps.pfd[P_SIGNAL].revents)
			conn_signalfd(&lp, sfd);
		if (ps.pfd[P_LISTEN].revents && lp.accepting)
			conn_accept(&lp);
	}
	conn_loop_fini(&lp);
	free(ps.pfd);
	free(ps.conns);
	return n < 0 ? SRV_EX_OSERR : SRV_EX_OK;
}

static const struct srv_model model = {
	.name = "echo-poll",
	.summary = "Echo server: IO multiplexing with poll(2), one thread.",
	.caps = SRV_CAP_BROADCAST,
};

int
main(int argc, char **argv)
{
	struct srv s;
	int lfd, sfd;

	srv_init(&s, &model, argc, argv, NULL);
	lfd = conn_loop_listen(&s, &sfd);
	srv_ready(&s);
	return run(&s, lfd, sfd);
}

/*
 * echo-select — IO multiplexing with select(2): one thread, non-blocking
 * sockets, two bitmaps of descriptors (want to read, want to write) handed
 * to the kernel at every call (the documents' "select").
 *
 * For one echoed message: select, read, write.  Every call copies the
 * bitmaps in and out, the kernel polls every descriptor up to the highest
 * one, and the loop then walks them all again to find the ready ones:
 * O(highest descriptor) per call, however few are ready.  The bitmaps
 * are overwritten with the result, so they are rebuilt (copied from the
 * interest sets kept here) before every call.
 *
 * The ceiling: an fd_set is a fixed array of FD_SETSIZE (1024) bits.
 * FD_SET() on descriptor 1024 or above writes past its end — glibc's
 * _FORTIFY_SOURCE aborts, without it memory is silently corrupted.  A
 * connection accepted onto such a descriptor is refused here (closed at
 * once, with a log line); the listener, the signalfd and every other
 * connection go on being served.  Raising the descriptor limit does not
 * help select; poll(2) and epoll(7) have no such ceiling.
 *
 * Interest follows the connection's state: write interest only while
 * output is queued (or every idle connection makes select return at
 * once), read interest not while output is past the high-water mark
 * (backpressure) or after EOF.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include "conn.h"
#include "net.h"
#include "server.h"

struct selset {
	fd_set		 rwant, wwant;		/* interest, kept up to date */
	struct conn	*byfd[FD_SETSIZE];
	int		 maxfd;			/* highest connection fd */
};

static int
ss_add(struct conn_loop *lp, struct conn *c)
{
	struct selset *ss = lp->model;

	/* conn_accept() refused c->fd >= lp->fd_limit (FD_SETSIZE) already. */
	ss->byfd[c->fd] = c;
	FD_SET(c->fd, &ss->rwant);
	if (c->fd > ss->maxfd)
		ss->maxfd = c->fd;
	return 0;
}

static void
ss_update(struct conn_loop *lp, struct conn *c)
{
	struct selset *ss = lp->model;
	unsigned want = conn_interest(c);

	if (want & CONN_WANT_READ)
		FD_SET(c->fd, &ss->rwant);
	else
		FD_CLR(c->fd, &ss->rwant);
	if (want & CONN_WANT_WRITE)
		FD_SET(c->fd, &ss->wwant);
	else
		FD_CLR(c->fd, &ss->wwant);
}

static void
ss_remove(struct conn_loop *lp, struct conn *c)
{
	struct selset *ss = lp->model;

	FD_CLR(c->fd, &ss->rwant);
	FD_CLR(c->fd, &ss->wwant);
	ss->byfd[c->fd] = NULL;
	while (ss->maxfd >= 0 && ss->byfd[ss->maxfd] == NULL)
		ss->maxfd--;
}

static const struct conn_ops ss_ops = {
	.add = ss_add,
	.update = ss_update,
	.remove = ss_remove,
};

static struct timeval *
to_timeval(int ms, struct timeval *tv)
{
	if (ms < 0)
		return NULL;
	tv->tv_sec = ms / 1000;
	tv->tv_usec = (ms % 1000) * 1000;
	return tv;
}

static void
serve_ready(struct conn_loop *lp, struct selset *ss, fd_set *r, fd_set *w,
    int maxfd)
{
	struct conn *c;
	int fd;

	/*
	 * Descriptors closed during the walk have byfd NULL; no new ones
	 * are accepted before it ends, so a number cannot be reused.
	 */
	for (fd = 0; fd <= maxfd; fd++) {
		if ((c = ss->byfd[fd]) == NULL)
			continue;
		if (FD_ISSET(fd, w))
			conn_writable(lp, c);
		if (FD_ISSET(fd, r))
			conn_readable(lp, c);
		conn_event_done(lp);
	}
}

static int
run(struct srv *s, int lfd, int sfd)
{
	struct conn_loop lp;
	struct selset *ss = calloc(1, sizeof(*ss));
	struct timeval tv;
	fd_set r, w;
	int n = 0, timeout, top, err;

	if (ss == NULL)
		err = -ENOMEM;
	else
		err = conn_loop_init(&lp, s, lfd, &ss_ops, ss, FD_SETSIZE, 0);
	if (err < 0) {
		srv_warn(s, "cannot set up the loop: %s", strerror(-err));
		return SRV_EX_OSERR;
	}
	ss->maxfd = -1;
	for (;;) {
		timeout = conn_tick(&lp);
		if (conn_loop_done(&lp))
			break;
		r = ss->rwant;
		w = ss->wwant;
		FD_SET(sfd, &r);
		top = ss->maxfd > sfd ? ss->maxfd : sfd;
		if (lp.accepting) {
			FD_SET(lp.lfd, &r);
			if (lp.lfd > top)
				top = lp.lfd;
		}
		n = select(top + 1, &r, &w, NULL, to_timeval(timeout, &tv));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			srv_warn(s, "select: %s", strerror(errno));
			break;
		}
		if (n == 0)
			continue;
		serve_ready(&lp, ss, &r, &w, ss->maxfd);
		if (FD_ISSET(sfd, &r))
			conn_signalfd(&lp, sfd);
		if (lp.accepting && FD_ISSET(lp.lfd, &r))
			conn_accept(&lp);
	}
	conn_loop_fini(&lp);
	free(ss);
	return n < 0 ? SRV_EX_OSERR : SRV_EX_OK;
}

static const struct srv_model model = {
	.name = "echo-select",
	.summary = "Echo server: IO multiplexing with select(2), one thread, descriptors below FD_SETSIZE.",
	.caps = SRV_CAP_BROADCAST,
};

int
main(int argc, char **argv)
{
	struct srv s;
	int lfd, sfd;

	srv_init(&s, &model, argc, argv, NULL);
	lfd = conn_loop_listen(&s, &sfd);
	if (lfd >= FD_SETSIZE || sfd >= FD_SETSIZE) {
		srv_warn(&s, "descriptors %d and %d: past FD_SETSIZE (%d)", lfd,
		    sfd, FD_SETSIZE);
		return SRV_EX_OSERR;
	}
	srv_ready(&s);
	return run(&s, lfd, sfd);
}

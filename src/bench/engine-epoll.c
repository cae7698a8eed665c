/*
 * echo-bench: the epoll engine.  Every thread sets its connections up on
 * a level-triggered epoll set (connect, the hello); this engine then keeps
 * them there, one recv and one send per message, much what an epoll
 * server makes.  engine-uring.c takes running connections over instead.
 */
#include "config.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "bench.h"

int
bconn_interest(struct bthread *t, struct bench_conn *c, uint32_t ev, int op)
{
	struct epoll_event e = { .events = ev, .data.ptr = c };

	if (epoll_ctl(t->epfd, op, c->fd, &e) < 0)
		return -errno;
	c->pollout = (ev & EPOLLOUT) != 0;
	return 0;
}

/*
 * Write what is queued, straight from the pattern.  EPOLLOUT is asked for
 * only while bytes are left over: a level-triggered EPOLLOUT on a socket
 * with room would wake the loop for nothing on every pass.
 */
void
bconn_flush(struct bthread *t, struct bench_conn *c)
{
	size_t len, off;
	ssize_t n;

	while (c->tx < c->tx_goal) {
		off = (c->seed + c->tx) % (bench_wire.units *
		    bench_wire.unit_tx);
		len = c->tx_goal - c->tx;
		if (len > BENCH_WINDOW)
			len = BENCH_WINDOW;
		n = send(c->fd, bench_wire.tx + off, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				if (!c->pollout &&
				    bconn_interest(t, c, EPOLLIN | EPOLLOUT,
				    EPOLL_CTL_MOD) < 0)
					bconn_fail(t, c, errno);
				return;
			}
			bconn_fail(t, c, errno);
			return;
		}
		c->tx += n;
	}
	if (c->pollout && bconn_interest(t, c, EPOLLIN, EPOLL_CTL_MOD) < 0)
		bconn_fail(t, c, errno);
}

/*
 * Readable (epoll engine).  One read per event: with one message in
 * flight the whole echo usually comes in one piece, and if more is left
 * level-triggered epoll reports the socket again; reading on until EAGAIN
 * would cost a second system call per message for nothing.
 */
static void
bconn_read(struct bthread *t, struct bench_conn *c, int64_t now)
{
	size_t want;
	ssize_t n;

	want = BENCH_RBUF;
	if (c->rx_goal - c->rx < want && c->rx_goal > c->rx)
		want = c->rx_goal - c->rx;
	do
		n = recv(c->fd, t->rbuf, want, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		if (errno != EAGAIN)
			bconn_fail(t, c, errno);
		return;
	}
	if (n == 0) {
		bconn_fail(t, c, c->idle && c->state == BC_IDLE ? 0 : ECONNRESET);
		return;
	}
	bconn_input(t, c, t->rbuf, n, now);
}

void
bconn_event(struct bthread *t, struct bench_conn *c, uint32_t ev, int64_t now)
{
	if (c->state == BC_CONNECTING) {
		if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			bconn_connected(t, c);
		return;
	}
	if (c->state == BC_DEAD || c->state == BC_NEW || c->adopted)
		return;
	if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
		bconn_read(t, c, now);
	/* The hello may just have moved it to the ring, sends and all. */
	if (c->state != BC_DEAD && c->state != BC_NEW && !c->adopted &&
	    (ev & EPOLLOUT))
		bconn_flush(t, c);
}

static int
thread_wait(struct bthread *t, struct epoll_event *ev, int nev, int64_t ns)
{
	struct timespec ts = { ns / NS, ns % NS };
	static int no_pwait2;
	int n;

	/*
	 * epoll_wait counts in milliseconds; an open loop at 100k msg/s
	 * needs microseconds, which epoll_pwait2 (Linux 5.11) gives.
	 */
	if (!no_pwait2) {
		n = epoll_pwait2(t->epfd, ev, nev, &ts, NULL);
		if (n >= 0 || errno != ENOSYS)
			return n;
		no_pwait2 = 1;
	}
	return epoll_wait(t->epfd, ev, nev, (int)((ns + 999999) / 1000000));
}


/* Wait up to NS for events and handle them. */
int
epoll_engine_dispatch(struct bthread *t, int64_t ns)
{
	struct epoll_event ev[256];
	int64_t now;
	int i, n;

	n = thread_wait(t, ev, 256, ns);
	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	now = now_ns();
	for (i = 0; i < n; i++)
		bconn_event(t, ev[i].data.ptr, ev[i].events, now);
	return 0;
}

const struct engine_ops bench_engine_epoll = {
	.name = "epoll",
	.wait = epoll_engine_dispatch,
};

/*
 * echo-bench: the io_uring engine.
 *
 * The client must cost less per message than the cheapest server it
 * drives, or it measures itself.  With epoll it makes a recv and a send
 * per message, much what an epoll server makes; through io_uring a whole
 * batch of sends and receives, over every connection, costs one
 * io_uring_enter.  Set-up (connect, the one-byte hello) and idle
 * connections stay on epoll, whose descriptor the ring polls; a connection
 * moves to the ring once it runs, with one recv and at most one send in
 * flight (two sends in flight on one socket could be reordered).
 * Connections are not reused in these modes, so a completion that
 * arrives after its connection died finds it BC_DEAD and is dropped.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <liburing.h>

#include "bench.h"

#define UD_RECV		0x1
#define UD_SEND		0x2
#define UD_EPOLL	((void *)0x3)
#define UD_TAGS		0x3

struct uring_state {
	struct io_uring	 ring;
	uint8_t		*cbufs;		/* the running connections' buffers */
	size_t		 cbuf_size;
	int		 epoll_armed;	/* the epoll fd is polled by the ring */
};

static inline struct uring_state *
us(struct bthread *t)
{
	return t->engine_state;
}

static struct io_uring_sqe *
uring_sqe(struct bthread *t)
{
	struct io_uring_sqe *sqe;

	/* The SQ is full: hand the kernel what is queued, then go on. */
	while ((sqe = io_uring_get_sqe(&us(t)->ring)) == NULL)
		io_uring_submit(&us(t)->ring);
	return sqe;
}

static void
uring_recv(struct bthread *t, struct bench_conn *c)
{
	struct io_uring_sqe *sqe = uring_sqe(t);

	io_uring_prep_recv(sqe, c->fd, c->buf, us(t)->cbuf_size, 0);
	io_uring_sqe_set_data(sqe, (void *)((uintptr_t)c | UD_RECV));
}

static void
uring_send(struct bthread *t, struct bench_conn *c)
{
	struct io_uring_sqe *sqe;
	size_t len, off;

	if (c->sending || c->tx >= c->tx_goal)
		return;
	off = (c->seed + c->tx) % (bench_wire.units * bench_wire.unit_tx);
	len = c->tx_goal - c->tx;
	if (len > BENCH_WINDOW)
		len = BENCH_WINDOW;
	sqe = uring_sqe(t);
	io_uring_prep_send(sqe, c->fd, bench_wire.tx + off, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data(sqe, (void *)((uintptr_t)c | UD_SEND));
	c->sending = 1;
}

/* A connection that has said hello leaves epoll for the ring. */
static void
uring_adopt(struct bthread *t, struct bench_conn *c)
{
	if (c->idle)
		return;
	epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	c->pollout = 0;
	c->adopted = 1;
	c->buf = us(t)->cbufs + (size_t)c->idx * us(t)->cbuf_size;
	uring_recv(t, c);
}

static void
uring_complete(struct bthread *t, struct io_uring_cqe *cqe, int64_t now)
{
	struct epoll_event ev[256];
	uintptr_t ud = (uintptr_t)io_uring_cqe_get_data(cqe);
	struct bench_conn *c = (struct bench_conn *)(ud & ~(uintptr_t)UD_TAGS);
	int i, n, res = cqe->res;

	if ((void *)ud == UD_EPOLL) {
		/* Multishot: re-armed once the kernel says it has ended. */
		if (!(cqe->flags & IORING_CQE_F_MORE))
			us(t)->epoll_armed = 0;
		/*
		 * The poll fires on a wake-up, not while events stay ready:
		 * take them all now, or the rest wait for the next one.
		 */
		do {
			n = epoll_wait(t->epfd, ev, 256, 0);
			for (i = 0; i < n; i++)
				bconn_event(t, ev[i].data.ptr, ev[i].events,
				    now);
		} while (n == 256);
		return;
	}
	if ((ud & UD_TAGS) == UD_SEND) {
		c->sending = 0;
		if (c->state != BC_RUNNING)
			return;
		if (res < 0 && res != -EINTR && res != -EAGAIN) {
			bconn_fail(t, c, -res);
			return;
		}
		if (res > 0)
			c->tx += res;	/* short send: the rest goes next */
		uring_send(t, c);
		return;
	}
	if (c->state != BC_RUNNING)
		return;
	if (res == -EINTR || res == -EAGAIN || res == -ENOBUFS) {
		uring_recv(t, c);
		return;
	}
	if (res <= 0) {
		bconn_fail(t, c, res == 0 ? ECONNRESET : -res);
		return;
	}
	bconn_input(t, c, c->buf, res, now);
	if (c->state == BC_RUNNING)
		uring_recv(t, c);
}

/* Submit what is queued and wait up to NS for completions; handle them. */
static int
uring_wait(struct bthread *t, int64_t ns)
{
	struct __kernel_timespec ts = { ns / NS, ns % NS };
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	int64_t now;
	int r;

	if (!us(t)->epoll_armed) {
		sqe = uring_sqe(t);
		io_uring_prep_poll_multishot(sqe, t->epfd, POLLIN);
		io_uring_sqe_set_data(sqe, UD_EPOLL);
		us(t)->epoll_armed = 1;
	}
	r = io_uring_submit_and_wait_timeout(&us(t)->ring, &cqe, 1, &ts, NULL);
	if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY)
		return r;
	now = now_ns();
	io_uring_for_each_cqe(&us(t)->ring, head, cqe) {
		uring_complete(t, cqe, now);
		n++;
	}
	io_uring_cq_advance(&us(t)->ring, n);
	return 0;
}

/*
 * A ring for thread T: 0, or -errno (the thread falls back to epoll) when
 * io_uring is not there or not allowed.  Big enough a completion queue
 * that a recv and a send per connection can never overflow it.
 */
static int
uring_make(struct bthread *t)
{
	struct io_uring_params p;
	struct uring_state *u;
	unsigned cq = 2 * (unsigned)t->nactive + 64;
	int r;

	if ((u = calloc(1, sizeof(*u))) == NULL)
		return -ENOMEM;
	memset(&p, 0, sizeof(p));
	/* The thread is the ring's only user: completions run when it waits. */
	p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER |
	    IORING_SETUP_DEFER_TASKRUN;
	p.cq_entries = cq < 4096 ? 4096 : cq;
	if (io_uring_queue_init_params(1024, &u->ring, &p) < 0) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = cq < 4096 ? 4096 : cq;
		if ((r = io_uring_queue_init_params(1024, &u->ring, &p)) < 0) {
			free(u);
			return r;
		}
	}
	u->cbuf_size = bench_wire.msg_rx * opt.depth;
	if (u->cbuf_size < 512)
		u->cbuf_size = 512;
	if (u->cbuf_size > BENCH_RBUF)
		u->cbuf_size = BENCH_RBUF;
	u->cbufs = malloc((size_t)(t->nactive ? t->nactive : 1) * u->cbuf_size);
	if (u->cbufs == NULL)
		abort();
	t->engine_state = u;
	return 0;
}

static void
uring_free(struct bthread *t)
{
	struct uring_state *u = t->engine_state;

	if (!u)
		return;
	io_uring_queue_exit(&u->ring);	/* cancels what is still in flight */
	free(u->cbufs);
	free(u);
	t->engine_state = NULL;
}

/* Whether the kernel lets us make a ring (kernel.io_uring_disabled, seccomp). */
static int
uring_probe(void)
{
	struct io_uring ring;
	int r;

	if ((r = io_uring_queue_init(8, &ring, 0)) == 0)
		io_uring_queue_exit(&ring);
	return r;
}

static const struct engine_ops uring_engine = {
	.name = "io_uring",
	.probe = uring_probe,
	.make = uring_make,
	.adopt = uring_adopt,
	.send = uring_send,
	.wait = uring_wait,
	.free = uring_free,
};

const struct engine_ops *const bench_engine_uring = &uring_engine;

/*
 * baseline-libuv — the echo server a C programmer would write with libuv,
 * for the benchmark to measure the models against.  Not installed.
 *
 * The model: libuv's loop (epoll underneath) with a uv_tcp_t per
 * connection.  Each read lands in a buffer from the allocation callback and
 * is handed to uv_write(), which tries the write at once and queues what is
 * left; the buffer is freed when the write completes.  Backpressure the
 * usual way: past a high-water mark in the connection's write queue,
 * uv_read_stop(); when a write completion brings the queue back to empty,
 * uv_read_start() again.  End of file: uv_shutdown(), which waits for the
 * queued writes, then close.  The cost over a hand-written epoll loop: a
 * heap buffer and a write request per read, callbacks, and libuv's own
 * epoll_ctl traffic as reading starts and stops.
 *
 * Command line, readiness line and exit codes are the shared ones
 * (server.c), so the benchmark runner treats it like every model.  TCP
 * only (the listener is adopted with uv_tcp_open).
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "net.h"
#include "server.h"

static const struct srv_model luv_model = {
	.name = "baseline-libuv",
	.summary = "echo server on libuv streams (benchmark baseline)",
};

static struct srv luv_srv;
static int luv_nconns;

struct luv_conn {
	uv_tcp_t	tcp;		/* first: the handle points back here */
	uv_shutdown_t	shut;
	int		reading;
};

struct luv_write {
	uv_write_t	req;
	uv_buf_t	buf;
};

static void
luv_closed(uv_handle_t *h)
{
	free(h);
	luv_nconns--;
}

static void
luv_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	size_t len = luv_srv.bufsize;

	buf->base = malloc(len);
	buf->len = buf->base ? len : 0;
}

static void luv_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void
luv_written(uv_write_t *req, int status)
{
	struct luv_write *w = (struct luv_write *)req;
	uv_stream_t *s = req->handle;
	struct luv_conn *c = (struct luv_conn *)s;

	free(w->buf.base);
	free(w);
	if (status < 0 || uv_is_closing((uv_handle_t *)s))
		return;
	if (!c->reading && uv_stream_get_write_queue_size(s) == 0 &&
	    uv_read_start(s, luv_alloc, luv_read) == 0)
		c->reading = 1;
}

static void
luv_shut(uv_shutdown_t *req, int status)
{
	if (!uv_is_closing((uv_handle_t *)req->handle))
		uv_close((uv_handle_t *)req->handle, luv_closed);
}

static void
luv_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct luv_conn *c = (struct luv_conn *)s;
	struct luv_write *w;

	if (n <= 0) {
		free(buf->base);
		if (n == 0)		/* EAGAIN, nothing read */
			return;
		uv_read_stop(s);
		c->reading = 0;
		if (n == UV_EOF && uv_shutdown(&c->shut, s, luv_shut) == 0)
			return;		/* half-close: finish the echo first */
		uv_close((uv_handle_t *)s, luv_closed);
		return;
	}
	if ((w = malloc(sizeof(*w))) == NULL) {
		free(buf->base);
		uv_close((uv_handle_t *)s, luv_closed);
		return;
	}
	w->buf = uv_buf_init(buf->base, (unsigned)n);
	if (uv_write(&w->req, s, &w->buf, 1, luv_written) < 0) {
		free(buf->base);
		free(w);
		uv_close((uv_handle_t *)s, luv_closed);
		return;
	}
	if (uv_stream_get_write_queue_size(s) > luv_srv.highwater) {
		uv_read_stop(s);
		c->reading = 0;
	}
}

static void
luv_accept(uv_stream_t *lis, int status)
{
	struct luv_conn *c;

	if (status < 0) {
		srv_warn(&luv_srv, "accept: %s", uv_strerror(status));
		return;
	}
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return;
	uv_tcp_init(lis->loop, &c->tcp);
	luv_nconns++;
	if (uv_accept(lis, (uv_stream_t *)&c->tcp) < 0) {
		uv_close((uv_handle_t *)&c->tcp, luv_closed);
		return;
	}
	if (luv_srv.max_conns && luv_nconns > luv_srv.max_conns) {
		uv_close((uv_handle_t *)&c->tcp, luv_closed);
		return;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	if (uv_read_start((uv_stream_t *)&c->tcp, luv_alloc, luv_read) == 0)
		c->reading = 1;
	else
		uv_close((uv_handle_t *)&c->tcp, luv_closed);
}

static void
luv_signal(uv_signal_t *h, int sig)
{
	uv_stop(h->loop);
}

int
main(int argc, char **argv)
{
	uv_signal_t sigint, sigterm;
	uv_tcp_t lis;
	uv_loop_t *loop;
	int lfd, r;

	srv_init(&luv_srv, &luv_model, argc, argv, NULL);
	srv_signals_ignore_pipe();
	srv_raise_nofile(&luv_srv);
	if (luv_srv.addr.ss.ss_family == AF_UNIX)
		srv_usage_error(&luv_srv, "unix sockets are not supported here");
	lfd = srv_listen(&luv_srv, NET_NONBLOCK);
	loop = uv_default_loop();
	uv_tcp_init(loop, &lis);
	if ((r = uv_tcp_open(&lis, lfd)) < 0 ||
	    (r = uv_listen((uv_stream_t *)&lis, luv_srv.backlog,
	    luv_accept)) < 0) {
		srv_warn(&luv_srv, "listen: %s", uv_strerror(r));
		return SRV_EX_OSERR;
	}
	uv_signal_init(loop, &sigint);
	uv_signal_init(loop, &sigterm);
	uv_signal_start(&sigint, luv_signal, SIGINT);
	uv_signal_start(&sigterm, luv_signal, SIGTERM);
	srv_ready(&luv_srv);
	uv_run(loop, UV_RUN_DEFAULT);
	return SRV_EX_OK;
}

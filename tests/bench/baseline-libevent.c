/*
 * baseline-libevent — the echo server a C programmer would write with
 * libevent 2 bufferevents, for the benchmark to measure the models against.
 * Not installed.
 *
 * The model: libevent's event loop (epoll underneath) with a bufferevent
 * per connection.  Echo is one evbuffer_add_buffer(), which moves the input
 * chain to the output chain without copying.  Backpressure the usual way:
 * past a high-water mark of pending output the connection's reading is
 * disabled, and the write callback, called when the output has drained
 * (low watermark 0), enables it again.  The cost over a hand-written epoll
 * loop: evbuffer chains allocated per read, callbacks, and libevent's own
 * epoll_ctl bookkeeping as reading is enabled and disabled.
 *
 * Command line, readiness line and exit codes are the shared ones
 * (server.c), so the benchmark runner treats it like every model.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "net.h"
#include "server.h"

static const struct srv_model lev_model = {
	.name = "baseline-libevent",
	.summary = "echo server on libevent bufferevents (benchmark baseline)",
};

struct lev {
	struct srv		 srv;
	struct event_base	*base;
	int			 nconns;
};

static void
lev_close(struct lev *l, struct bufferevent *bev)
{
	bufferevent_free(bev);		/* BEV_OPT_CLOSE_ON_FREE: closes fd */
	l->nconns--;
}

static void
lev_read(struct bufferevent *bev, void *arg)
{
	struct evbuffer *out = bufferevent_get_output(bev);
	struct lev *l = arg;

	evbuffer_add_buffer(out, bufferevent_get_input(bev));
	if (evbuffer_get_length(out) > l->srv.highwater)
		bufferevent_disable(bev, EV_READ);
}

/* Output drained to the low watermark (0): read again. */
static void
lev_write(struct bufferevent *bev, void *arg)
{
	if (!(bufferevent_get_enabled(bev) & EV_READ))
		bufferevent_enable(bev, EV_READ);
}

/* A half-closed connection's output has drained: done. */
static void
lev_done_write(struct bufferevent *bev, void *arg)
{
	lev_close(arg, bev);
}

static void
lev_event(struct bufferevent *bev, short what, void *arg)
{
	struct lev *l = arg;

	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) &&
	    evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
		/* Half-close: echo what is queued, then close. */
		bufferevent_disable(bev, EV_READ);
		bufferevent_setcb(bev, NULL, lev_done_write, lev_event, l);
		return;
	}
	lev_close(l, bev);
}

static void
lev_accept(struct evconnlistener *lis, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct lev *l = arg;
	struct bufferevent *bev;

	if (l->srv.max_conns && l->nconns >= l->srv.max_conns) {
		close(fd);
		return;
	}
	net_set_nodelay(fd);
	bev = bufferevent_socket_new(l->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		close(fd);
		return;
	}
	l->nconns++;
	bufferevent_setcb(bev, lev_read, lev_write, lev_event, l);
	bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void
lev_resume(evutil_socket_t fd, short what, void *arg)
{
	evconnlistener_enable(arg);
}

static void
lev_accept_error(struct evconnlistener *lis, void *arg)
{
	struct lev *l = arg;
	int err = EVUTIL_SOCKET_ERROR();

	/*
	 * EMFILE: libevent reports it here and keeps the listener enabled,
	 * so the pending connection would be reported again at once.  Pause
	 * accepting for a moment instead of spinning.
	 */
	srv_warn(&l->srv, "accept: %s", evutil_socket_error_to_string(err));
	if (err == EMFILE || err == ENFILE) {
		struct timeval tv = { 0, 100000 };

		evconnlistener_disable(lis);
		event_base_once(l->base, -1, EV_TIMEOUT, lev_resume, lis, &tv);
	}
}

static void
lev_signal(evutil_socket_t sig, short what, void *arg)
{
	struct lev *l = arg;

	event_base_loopexit(l->base, NULL);
}

int
main(int argc, char **argv)
{
	struct event *sigint, *sigterm;
	struct evconnlistener *lis;
	struct lev l;
	int lfd;

	memset(&l, 0, sizeof(l));
	srv_init(&l.srv, &lev_model, argc, argv, NULL);
	srv_signals_ignore_pipe();
	srv_raise_nofile(&l.srv);
	lfd = srv_listen(&l.srv, NET_NONBLOCK);
	if ((l.base = event_base_new()) == NULL) {
		srv_warn(&l.srv, "event_base_new failed");
		return SRV_EX_OSERR;
	}
	lis = evconnlistener_new(l.base, lev_accept, &l,
	    LEV_OPT_CLOSE_ON_FREE, -1, lfd);
	if (lis == NULL) {
		srv_warn(&l.srv, "evconnlistener_new failed");
		return SRV_EX_OSERR;
	}
	evconnlistener_set_error_cb(lis, lev_accept_error);
	sigint = evsignal_new(l.base, SIGINT, lev_signal, &l);
	sigterm = evsignal_new(l.base, SIGTERM, lev_signal, &l);
	evsignal_add(sigint, NULL);
	evsignal_add(sigterm, NULL);
	srv_ready(&l.srv);
	event_base_dispatch(l.base);
	evconnlistener_free(lis);
	event_free(sigint);
	event_free(sigterm);
	event_base_free(l.base);
	return SRV_EX_OK;
}

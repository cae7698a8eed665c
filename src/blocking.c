/*
 * blocking — a connection served by a process or thread of its own: the
 * serve loop, listen and accept, and the stop signal that wakes a blocked
 * call.  See blocking.h.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "blocking.h"

#define EMFILE_WAIT_MS		1000

static int
blk_reply(struct svc_sink *sink, const void *buf, size_t len)
{
	struct reg_member *b = sink->conn;
	ssize_t n;

	reg_writing(b, 1);
	n = net_write_all(b->fd, buf, len);
	reg_writing(b, 0);
	if (n == (ssize_t)len)
		return 0;
	b->werr = n < 0 ? (int)-n : EPIPE;
	return -b->werr;
}

static void
set_timeouts(int fd, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = ms % 1000 * 1000 };

	/*
	 * A blocking read() or write() then fails with EAGAIN after MS
	 * without progress: the idle timeout of a model that has no loop
	 * to keep time in.
	 */
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/*
 * The service asked to close after its error reply.  close() with unread
 * input sends RST, which may destroy that reply in the client's receive
 * buffer: send FIN, and read and discard until the client closes too, for
 * at most SRV_LINGER_MS.
 */
static void
blk_linger(int fd, uint8_t *buf, size_t size)
{
	int64_t end = srv_now_ms() + SRV_LINGER_MS, left;

	if (shutdown(fd, SHUT_WR) < 0)
		return;
	while ((left = end - srv_now_ms()) > 0) {
		set_timeouts(fd, (int)left);
		if (net_read_some(fd, buf, size) <= 0)
			break;
	}
}

/*
 * Wait until the client sent something (> 0, read into BUF) or is gone
 * (0: EOF, error or idle; logged).  Without a registry, a blocking read.
 * With one, poll() on the socket and on the eventfd, and write what the
 * others queued in between.
 */
static ssize_t
blk_read(struct reg_member *b, uint8_t *buf, size_t size)
{
	const struct srv *s = b->srv;
	struct pollfd pfd[2] = {
		{ .fd = b->fd, .events = POLLIN },
		{ .fd = b->reg ? b->efd : -1, .events = POLLIN },
	};
	eventfd_t v;
	ssize_t n;
	int r;

	while (b->reg != NULL) {
		r = poll(pfd, 2, s->idle_timeout > 0 ? s->idle_timeout * 1000 : -1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0) {
			srv_debug(s, "%s idle for %d s: closing", b->peer,
			    s->idle_timeout);
			return 0;
		}
		if (r < 0)
			return 0;
		if (pfd[1].revents) {
			(void)eventfd_read(b->efd, &v);
			if (reg_flush(b) < 0)
				return 0;
		}
		if (pfd[0].revents)
			break;
	}
	n = net_read_some(b->fd, buf, size);
	if (n == -EAGAIN)
		srv_debug(s, "%s idle for %d s: closing", b->peer,
		    s->idle_timeout);
	else if (n < 0 && !net_is_reset((int)-n))
		srv_debug(s, "%s: read: %s", b->peer, strerror((int)-n));
	return n < 0 ? 0 : n;
}

void
blk_serve(const struct srv *s, int fd, const struct net_addr *peer,
    uint8_t *buf, struct registry *reg)
{
	char name[NET_ADDRSTRLEN];
	struct reg_member b = { .fd = fd, .srv = s, .efd = -1 };
	struct svc_sink sink = { .reply = blk_reply, .conn = &b };
	void *state = NULL;
	ssize_t n;
	int r = 0, opened;

	if (s->idle_timeout > 0)
		set_timeouts(fd, s->idle_timeout * 1000);
	sink.peer = b.peer = peer ? net_addr_str(peer, name, sizeof(name)) : "";
	if (s->svc->state_size > 0 &&
	    (state = calloc(1, s->svc->state_size)) == NULL) {
		srv_warn(s, "%s: out of memory: closing", sink.peer);
		return;
	}
	if (reg != NULL && (s->svc->flags & SVC_NEEDS_BROADCAST)) {
		if ((r = reg_join(&b, reg)) < 0) {
			srv_warn(s, "%s: eventfd: %s: closing", sink.peer,
			    strerror(-r));
			free(state);
			return;
		}
		sink.broadcast = reg_broadcast;
	}
	srv_debug(s, "open %s", sink.peer);
	opened = svc_open(s->svc, &s->svc_cfg, state, &sink) == 0;
	if (opened) {
		reg_writing(&b, 0);
		while ((n = blk_read(&b, buf, s->bufsize)) > 0)
			if ((r = svc_input(s->svc, &s->svc_cfg, state, buf,
			    (size_t)n, &sink)) < 0)
				break;
		if (r < 0 && b.werr == 0)
			blk_linger(fd, buf, s->bufsize);
	}
	/* Out of the room first: the goodbye goes to the others only. */
	if (b.efd >= 0)
		reg_leave(&b);
	if (opened)
		svc_close(s->svc, &s->svc_cfg, state, &sink);
	srv_debug(s, "close %s", sink.peer);
	free(state);
}

int
blk_listen(struct srv *s, int *reserve)
{
	int lfd;

	srv_raise_nofile(s);
	lfd = srv_listen(s, 0);
	if ((*reserve = net_reserve_open()) < 0) {
		srv_warn(s, "reserve descriptor: %s", strerror(-*reserve));
		exit(SRV_EX_OSERR);
	}
	blk_wake_signals();
	blk_wake_set(BLK_WAKE_LISTENER, lfd);
	return lfd;
}

void
blk_close(int lfd, int reserve)
{
	blk_wake_set(BLK_WAKE_LISTENER, -1);
	close(lfd);
	close(reserve);
}

/* ---- stop signals for blocking models -------------------------------------- */

/*
 * The descriptors the stop handler shuts down.  Process-wide state, as a
 * signal handler can reach nothing else.
 */
static volatile sig_atomic_t wake_fds[2] = { -1, -1 };

/*
 * SHUT_RD ends a connection's reads, not a write blocked on a client that
 * sends and never reads: that write waits for room in the client's
 * window, forever.  So a stop also arms an alarm for the grace period,
 * and the alarm shuts the connection down for writing too: the write
 * fails with EPIPE and the serve loop returns.
 */
static void
wake_conn(int how)
{
	int fd = wake_fds[BLK_WAKE_CONN];

	if (fd < 0)
		return;
	(void)shutdown(fd, how);
	if (how == SHUT_RD)
		(void)alarm((SRV_STOP_GRACE_MS + 999) / 1000);
}

static void
on_alarm(int sig)
{
	int saved = errno;

	(void)sig;
	if (srv_stop)
		wake_conn(SHUT_RDWR);
	errno = saved;
}

static void
on_wake(int sig)
{
	int saved = errno, fd;

	(void)sig;
	srv_stop = 1;
	if (wake_fds[BLK_WAKE_CONN] == BLK_WAKE_EXIT)
		_exit(SRV_EX_OK);
	wake_conn(SHUT_RD);
	fd = wake_fds[BLK_WAKE_LISTENER];
	if (fd >= 0)
		(void)shutdown(fd, SHUT_RD);
	errno = saved;
}

void
blk_wake_signals(void)
{
	struct sigaction sa;
	int sig;

	srv_signals_ignore_pipe();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_wake;
	sigemptyset(&sa.sa_mask);
	srv_sigset_stop(&sa.sa_mask);
	for (sig = 1; sig < NSIG; sig++)
		if (sigismember(&sa.sa_mask, sig) == 1)
			sigaction(sig, &sa, NULL);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
}

void
blk_wake_set(int slot, int fd)
{
	wake_fds[slot] = fd;
	/* A stop that landed before the descriptor was registered. */
	if (srv_stop && fd >= 0 && slot == BLK_WAKE_CONN)
		wake_conn(SHUT_RD);
	else if (srv_stop && fd >= 0)
		(void)shutdown(fd, SHUT_RD);
	else if (srv_stop && fd == BLK_WAKE_EXIT)
		_exit(SRV_EX_OK);
}

int
blk_accept_wait(const struct srv *s, int lfd, struct net_addr *peer,
    int *reserve, struct registry *reg)
{
	int fd, r;

	for (;;) {
		if (srv_stop)
			return -EINTR;
		fd = net_accept(lfd, peer, 0);
		if (fd >= 0)
			return fd;
		if (srv_stop)
			return -EINTR;	/* the stop handler shut the listener */
		switch (-fd) {
		case EMFILE:
		case ENFILE:
			/*
			 * The connection stays pending and accept() fails at
			 * once again: without waiting or shedding, a spin.
			 * When threads are serving, one of them closing frees
			 * a descriptor soon: wait for that a while, and shed
			 * the pending connection only if none does.
			 */
			if (reg && reg_wait_drop(reg, EMFILE_WAIT_MS))
				continue;
			r = net_accept_shed(lfd, reserve);
			if (r > 0)
				srv_log(s, "out of descriptors (%s): refused a "
				    "connection", strerror(-fd));
			else
				(void)poll(NULL, 0, 10);
			continue;
		case EINVAL:
		case EBADF:
		case ENOTSOCK:
		case EOPNOTSUPP:
			srv_warn(s, "accept: %s", strerror(-fd));
			return fd;
		default:
			/* ENOBUFS, ENOMEM, EPERM (a firewall): pass, later. */
			srv_warn(s, "accept: %s", strerror(-fd));
			(void)poll(NULL, 0, 10);
		}
	}
}

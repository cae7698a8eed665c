/*
 * net — the thin socket layer.  See net.h.
 *
 * Everything here is a thin, careful wrapper: the pitfalls it hides are
 * EINTR, short counts, descriptors leaking into exec'd children, and the
 * EMFILE busy loop on accept.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "net.h"

static int
parse_port(const char *s, int *port)
{
	char *end;
	long v;

	if (*s == '\0')
		return -EINVAL;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end != '\0' || v < 0 || v > 65535)
		return -EINVAL;
	*port = (int)v;
	return 0;
}

static int
parse_unix(const char *path, struct net_addr *out)
{
	struct sockaddr_un *sun = (struct sockaddr_un *)&out->ss;
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(sun->sun_path))
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	sun->sun_family = AF_UNIX;
	memcpy(sun->sun_path, path, n + 1);
	out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	return 0;
}

static int
parse_ip(const char *host, int port, struct net_addr *out)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;

	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		out->len = sizeof(*sin);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		out->len = sizeof(*sin6);
		return 0;
	}
	return -EINVAL;
}

int
net_parse_addr(const char *spec, int port, struct net_addr *out)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *p, *colon;
	size_t n;

	if (spec == NULL)
		return -EINVAL;
	if (strncmp(spec, "unix:", 5) == 0)
		return parse_unix(spec + 5, out);

	if (spec[0] == '[') {
		/* "[v6]" or "[v6]:port" */
		p = strchr(spec, ']');
		if (p == NULL)
			return -EINVAL;
		n = (size_t)(p - spec - 1);
		if (n == 0 || n >= sizeof(host))
			return -EINVAL;
		memcpy(host, spec + 1, n);
		host[n] = '\0';
		if (p[1] == ':') {
			if (parse_port(p + 2, &port) < 0)
				return -EINVAL;
		} else if (p[1] != '\0')
			return -EINVAL;
	} else {
		colon = strchr(spec, ':');
		if (colon != NULL && strchr(colon + 1, ':') != NULL) {
			/* Two colons: a bare IPv6 literal, no port. */
			n = strlen(spec);
			colon = NULL;
		} else
			n = colon ? (size_t)(colon - spec) : strlen(spec);
		if (n == 0 || n >= sizeof(host))
			return -EINVAL;
		memcpy(host, spec, n);
		host[n] = '\0';
		if (colon != NULL && parse_port(colon + 1, &port) < 0)
			return -EINVAL;
	}
	if (port < 0 || port > 65535)
		return -EINVAL;
	return parse_ip(host, port, out);
}

const char *
net_addr_str(const struct net_addr *a, char *buf, size_t size)
{
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&a->ss;
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a->ss;
	const struct sockaddr_un *sun = (const struct sockaddr_un *)&a->ss;
	char host[INET6_ADDRSTRLEN];

	switch (a->ss.ss_family) {
	case AF_INET:
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(buf, size, "%s:%u", host, ntohs(sin->sin_port));
		break;
	case AF_INET6:
		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(buf, size, "[%s]:%u", host, ntohs(sin6->sin6_port));
		break;
	case AF_UNIX:
		/* An unnamed peer (a client that never bound) has no path. */
		if (a->len <= offsetof(struct sockaddr_un, sun_path) ||
		    sun->sun_path[0] == '\0')
			snprintf(buf, size, "unix:");
		else
			snprintf(buf, size, "unix:%.*s",
			    (int)(a->len - offsetof(struct sockaddr_un, sun_path)),
			    sun->sun_path);
		break;
	default:
		snprintf(buf, size, "?");
	}
	return buf;
}

int
net_local_addr(int fd, struct net_addr *out)
{
	memset(out, 0, sizeof(*out));
	out->len = sizeof(out->ss);
	if (getsockname(fd, (struct sockaddr *)&out->ss, &out->len) < 0)
		return -errno;
	return 0;
}

int
net_peer_addr(int fd, struct net_addr *out)
{
	memset(out, 0, sizeof(*out));
	out->len = sizeof(out->ss);
	if (getpeername(fd, (struct sockaddr *)&out->ss, &out->len) < 0)
		return -errno;
	return 0;
}

int
net_listen(const struct net_addr *a, int backlog, int flags)
{
	int fd, one = 1, type = SOCK_STREAM | SOCK_CLOEXEC;

	if (flags & NET_NONBLOCK)
		type |= SOCK_NONBLOCK;
	fd = socket(a->ss.ss_family, type, 0);
	if (fd < 0)
		return -errno;
	if (a->ss.ss_family != AF_UNIX) {
		/*
		 * SO_REUSEADDR lets a restarted server bind while old
		 * connections sit in TIME_WAIT.  SO_REUSEPORT lets several
		 * sockets bind the same port; the kernel then spreads new
		 * connections over their separate accept queues by a hash
		 * of the 4-tuple — no shared queue, no thundering herd.
		 */
		if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
			goto fail;
		if ((flags & NET_REUSEPORT) &&
		    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
			goto fail;
	}
	if (a->ss.ss_family == AF_INET6) {
		/* "[::]" means IPv6 and IPv4-mapped: make that explicit. */
		int zero = 0;
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	}
	if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0)
		goto fail;
	if (listen(fd, backlog) < 0)
		goto fail;
	return fd;
fail:
	{
		int err = errno;
		close(fd);
		return -err;
	}
}

int
net_unix_reclaim(const struct net_addr *a)
{
	const char *path = ((const struct sockaddr_un *)&a->ss)->sun_path;
	struct stat before, now;
	int fd, r, err;

	if (a->ss.ss_family != AF_UNIX)
		return -EINVAL;
	if (lstat(path, &before) < 0)
		return -errno;
	if (!S_ISSOCK(before.st_mode))
		return -ENOTSOCK;
	/*
	 * A socket file outlives its server: only a connect() tells a live
	 * one from a dead one.  ECONNREFUSED means no socket is bound to
	 * that file any more.  Non-blocking, so a live server with a full
	 * backlog (EAGAIN) counts as live instead of stalling us.
	 */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (const struct sockaddr *)&a->ss, a->len);
	err = r < 0 ? errno : 0;
	close(fd);
	if (err != ECONNREFUSED)
		return err == ENOENT ? 0 : -EADDRINUSE;
	/* Remove that very file only, not one another server just made. */
	if (lstat(path, &now) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (now.st_dev != before.st_dev || now.st_ino != before.st_ino)
		return -EADDRINUSE;
	if (unlink(path) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

int
net_activated_fds(void)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
	char *end;
	long p, n;
	int i;

	if (pid == NULL || fds == NULL)
		return 0;
	p = strtol(pid, &end, 10);
	if (*end != '\0' || p != (long)getpid())
		return 0;
	n = strtol(fds, &end, 10);
	if (*end != '\0' || n <= 0 || n > 64)
		return 0;
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	/* systemd passes them without close-on-exec. */
	for (i = 0; i < n; i++)
		(void)fcntl(3 + i, F_SETFD, FD_CLOEXEC);
	return (int)n;
}

int
net_accept(int lfd, struct net_addr *peer, int flags)
{
	struct net_addr tmp;
	int fd, aflags = SOCK_CLOEXEC;

	if (peer == NULL)
		peer = &tmp;
	if (flags & NET_NONBLOCK)
		aflags |= SOCK_NONBLOCK;
	for (;;) {
		peer->len = sizeof(peer->ss);
		fd = accept4(lfd, (struct sockaddr *)&peer->ss, &peer->len, aflags);
		if (fd >= 0)
			return fd;
		/*
		 * ECONNABORTED: the client reset while queued; Linux may
		 * also pass up pending network errors (ENETDOWN, EPROTO,
		 * EHOSTUNREACH...) from the new socket.  Neither concerns
		 * the listener: take the next one.
		 */
		if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
			continue;
		return -errno;
	}
}

int
net_connect(const struct net_addr *a, int flags)
{
	struct pollfd pfd;
	socklen_t len = sizeof(int);
	int fd, err = 0, r;

	fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/*
	 * A connect() interrupted by a signal is not undone: it goes on in
	 * the background, and calling connect() again says EALREADY.  Wait
	 * for it to finish and read its outcome from SO_ERROR instead.
	 */
	if (connect(fd, (const struct sockaddr *)&a->ss, a->len) < 0) {
		err = errno;
		if (err == EINTR) {
			pfd.fd = fd;
			pfd.events = POLLOUT;
			while ((r = poll(&pfd, 1, -1)) < 0 && errno == EINTR)
				;
			if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err,
			    &len) < 0)
				err = errno;
		}
	}
	if (err == 0 && (flags & NET_NONBLOCK))
		err = -net_set_nonblock(fd, 1);
	if (err != 0) {
		close(fd);
		return -err;
	}
	return fd;
}

int
net_reserve_open(void)
{
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

int
net_accept_shed(int lfd, int *reserve)
{
	int fd, err;

	if (*reserve >= 0) {
		close(*reserve);
		*reserve = -1;
	}
	fd = net_accept(lfd, NULL, NET_NONBLOCK);
	err = fd;
	if (fd >= 0) {
		close(fd);
		err = 1;
	} else if (fd == -EAGAIN)
		err = 0;
	*reserve = net_reserve_open();
	return err;
}

int
net_set_nonblock(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0)
		return -errno;
	fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
	return fcntl(fd, F_SETFL, fl) < 0 ? -errno : 0;
}

int
net_set_nodelay(int fd)
{
	int one = 1;

	/*
	 * Nagle would hold back a small echo until the previous one is
	 * acknowledged; with delayed ACKs on the client that costs up to
	 * 40 ms per round trip.  An echo server answers at once.
	 */
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		return errno == EOPNOTSUPP || errno == ENOPROTOOPT ? 0 : -errno;
	return 0;
}

int
net_set_bufsizes(int fd, int sndbuf, int rcvbuf)
{
	if (sndbuf > 0 &&
	    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) < 0)
		return -errno;
	if (rcvbuf > 0 &&
	    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) < 0)
		return -errno;
	return 0;
}

int
net_set_linger0(int fd)
{
	struct linger l = { .l_onoff = 1, .l_linger = 0 };

	if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)) < 0)
		return -errno;
	return 0;
}

long long
net_raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -errno;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			return -errno;
	}
	return rl.rlim_cur > LLONG_MAX ? LLONG_MAX : (long long)rl.rlim_cur;
}

ssize_t
net_read_some(int fd, void *buf, size_t len)
{
	ssize_t n;

	do
		n = read(fd, buf, len);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

ssize_t
net_read_full(int fd, void *buf, size_t len)
{
	size_t done = 0;
	ssize_t n;

	while (done < len) {
		n = net_read_some(fd, (char *)buf + done, len - done);
		if (n < 0)
			return done ? (ssize_t)done : n;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

ssize_t
net_write_all(int fd, const void *buf, size_t len)
{
	size_t done = 0;
	ssize_t n;

	while (done < len) {
		/* send() with MSG_NOSIGNAL would also work, but not on pipes. */
		n = write(fd, (const char *)buf + done, len - done);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return done ? (ssize_t)done : -errno;
		}
		done += (size_t)n;
	}
	return (ssize_t)done;
}

int
net_is_reset(int err)
{
	return err == EPIPE || err == ECONNRESET || err == ENOTCONN ||
	    err == ETIMEDOUT;
}

/*
 * net — the thin socket layer every server shares.
 *
 * Addresses, listening sockets, accept, socket options and full reads and
 * writes.  Every function returns a descriptor or a count on success and
 * -errno on failure; none of them prints or exits: the caller knows what to
 * say to the user.
 */
#ifndef IOMODELS_NET_H
#define IOMODELS_NET_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>

/* A socket address of any family we serve: AF_INET, AF_INET6, AF_UNIX. */
struct net_addr {
	struct sockaddr_storage ss;
	socklen_t		len;
};

/* Long enough for "[ffff:...:ffff]:65535" and for "unix:" + sun_path. */
#define NET_ADDRSTRLEN	128

/* Flags for net_listen() and net_accept(). */
#define NET_NONBLOCK	0x1	/* O_NONBLOCK on the new descriptor */
#define NET_REUSEPORT	0x2	/* SO_REUSEPORT: one listener per worker */

/*
 * Parse "HOST", "HOST:PORT", "[V6]", "[V6]:PORT", a bare IPv6 literal, or
 * "unix:/path".  Host names are not resolved (a server binds literals).
 * When SPEC carries no port, PORT is used; PORT < 0 means "SPEC must carry
 * one".  Returns 0 or -EINVAL.
 */
int	net_parse_addr(const char *spec, int port, struct net_addr *out);

/* "127.0.0.1:7007", "[::1]:7007", "unix:/path". */
const char *net_addr_str(const struct net_addr *a, char *buf, size_t size);

/* Bound (local) and peer address of a socket. */
int	net_local_addr(int fd, struct net_addr *out);
int	net_peer_addr(int fd, struct net_addr *out);

/*
 * socket + SO_REUSEADDR (+ SO_REUSEPORT) + bind + listen, close-on-exec.
 * A stale unix socket file is not removed: that is the caller's decision
 * (net_unix_reclaim()).
 */
int	net_listen(const struct net_addr *a, int backlog, int flags);

/*
 * The unix socket file at A is in the way of a bind (EADDRINUSE): remove
 * it if it is stale, a socket file nobody accepts on any more (a server
 * that died without removing it).  Returns 0 when it was removed (bind
 * again), -EADDRINUSE when a server answers there (or is too busy to),
 * -ENOTSOCK when the path is not a socket (never removed), -errno else.
 */
int	net_unix_reclaim(const struct net_addr *a);

/*
 * Sockets handed over by systemd socket activation: LISTEN_PID must be our
 * pid and LISTEN_FDS the count, starting at descriptor 3.  Returns the count
 * (0 when not activated) and unsets the variables so children do not
 * inherit them.
 */
int	net_activated_fds(void);

/*
 * accept4() with close-on-exec (and O_NONBLOCK with NET_NONBLOCK).
 * Retries EINTR and ECONNABORTED; returns the descriptor or -errno
 * (-EAGAIN when nothing is pending on a non-blocking listener).
 */
int	net_accept(int lfd, struct net_addr *peer, int flags);

/*
 * A blocking connect() to A (a client's side), close-on-exec; the socket
 * is made non-blocking afterwards with NET_NONBLOCK.  Survives EINTR.
 * Returns the descriptor or -errno (-ECONNREFUSED, -ENOENT, ...).
 */
int	net_connect(const struct net_addr *a, int flags);

/*
 * EMFILE/ENFILE on accept: the pending connection stays in the backlog and
 * a level-triggered readiness API reports the listener readable again at
 * once, so a naive loop spins at 100% CPU.  The classic remedy: keep one
 * descriptor in reserve, and when the table is full give it up, accept the
 * pending connection, close it (the client sees an orderly close instead
 * of hanging in the backlog), and take the reserve again.
 *
 * net_reserve_open() returns the reserve descriptor (or -errno);
 * net_accept_shed() sheds one pending connection and returns 1 if it did,
 * 0 if nothing was pending, -errno on failure.  *reserve is updated.
 */
int	net_reserve_open(void);
int	net_accept_shed(int lfd, int *reserve);

int	net_set_nonblock(int fd, int on);
int	net_set_nodelay(int fd);
int	net_set_bufsizes(int fd, int sndbuf, int rcvbuf);	/* 0 = leave */
int	net_set_linger0(int fd);	/* close() then sends RST */

/*
 * Raise the soft RLIMIT_NOFILE to the hard limit: the soft default (1024
 * on most systems) is kept low for select()'s sake, and a server or a
 * load generator with thousands of sockets needs the hard one.  Returns
 * the limit now in force, or -errno.
 */
long long net_raise_nofile(void);

/*
 * read()/write() that survive EINTR.  net_read_some() returns what one read
 * gave (0 at EOF); net_read_full() loops until LEN bytes or EOF;
 * net_write_all() loops over short writes.  The looping two return -errno
 * only when nothing was transferred: after a partial transfer an error
 * (or EOF) shows as a count short of LEN, so callers compare with LEN.
 * On a non-blocking descriptor they return -EAGAIN like read(2).
 */
ssize_t	net_read_some(int fd, void *buf, size_t len);
ssize_t	net_read_full(int fd, void *buf, size_t len);
ssize_t	net_write_all(int fd, const void *buf, size_t len);

/*
 * The peer went away (reset, or a write after its close): an ordinary end
 * of a connection, not worth a log line.
 */
int	net_is_reset(int err);

#endif

/*
 * echo-iterative — blocking IO, one client at a time: accept a connection,
 * serve it until EOF, then accept the next (the documents' single-threaded
 * blocking server).
 *
 * For one echoed message: read (blocks until data), write (blocks until
 * the kernel took all of it).  Nothing could be cheaper per message, and
 * nothing scales worse: while one client is connected the process sits in
 * its read(), and every other client waits in the listen backlog, its
 * connect() completed by the kernel but not one byte answered, however
 * idle the client being served is.  -m means nothing here (the limit is
 * 1); -t is what stops an idle client from holding the server forever.
 *
 * Pitfall: a stop signal.  read() and accept() are restarted on EINTR by
 * the socket layer, and a signal that lands just before the call would be
 * missed anyway; so the handler shuts the listener and the connection down
 * (blk_wake_*), which wakes either call for certain.  A write blocked on
 * a client that sends and never reads is not woken by that: after the
 * grace period an alarm shuts the connection down entirely.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "blocking.h"
#include "net.h"
#include "server.h"

static const struct srv_model model = {
	.name = "echo-iterative",
	.summary = "Echo server: blocking IO, one client at a time (iterative).",
};

int
main(int argc, char **argv)
{
	struct net_addr peer;
	struct srv s;
	uint8_t *buf;
	int lfd, fd, reserve;

	srv_init(&s, &model, argc, argv, NULL);
	lfd = blk_listen(&s, &reserve);
	if ((buf = malloc(s.bufsize)) == NULL) {
		srv_warn(&s, "out of memory");
		return SRV_EX_OSERR;
	}
	srv_ready(&s);
	while ((fd = blk_accept_wait(&s, lfd, &peer, &reserve, NULL)) >= 0) {
		blk_wake_set(BLK_WAKE_CONN, fd);
		blk_serve(&s, fd, &peer, buf, NULL);
		blk_wake_set(BLK_WAKE_CONN, -1);
		close(fd);
	}
	blk_close(lfd, reserve);
	free(buf);
	return fd == -EINTR ? SRV_EX_OK : SRV_EX_OSERR;
}

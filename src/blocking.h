/*
 * blocking — one connection served by a blocking caller (a process or
 * thread of its own): what the blocking models (iterative, fork, thread,
 * prefork, threadpool) share below their own loop.
 *
 * A model hands an accepted descriptor to blk_serve(): read, feed the
 * service, write the reply with net_write_all(), until EOF.  Its stop
 * signal wakes the blocked call by shutting the descriptor down
 * (blk_wake_*), and threaded models keep the descriptors being served in
 * a registry (registry.h) so that the main thread can wake and wait for
 * them at stop.
 */
#ifndef IOMODELS_BLOCKING_H
#define IOMODELS_BLOCKING_H

#include <stdint.h>

#include "net.h"
#include "registry.h"
#include "server.h"
#include "service.h"

/*
 * Serve FD until the peer's EOF, an error, the idle timeout (-t, through
 * SO_RCVTIMEO/SO_SNDTIMEO) or a close the service asks for.  BUF is the
 * caller's read buffer of s->bufsize bytes.  The caller closes FD.
 *
 * REG (or NULL) is the registry FD was added to by a threaded model.  A
 * service that broadcasts (chat) reaches the other clients through it:
 * a line is queued to every other registered connection, under that
 * connection's lock, and its own thread writes it.  So the thread serving
 * a client waits in poll() for two things, its socket and an eventfd that
 * says "output was queued for you", instead of in read() alone.
 */
void	blk_serve(const struct srv *s, int fd, const struct net_addr *peer,
	    uint8_t *buf, struct registry *reg);

/*
 * The start and end of a blocking model's main thread.  After srv_init():
 * raise RLIMIT_NOFILE, listen (blocking), open the reserve descriptor for
 * EMFILE into *RESERVE, install the stop handler (blk_wake_signals) and
 * register the listener with it.  Exits 69/71 on failure like
 * srv_listen().  Returns the listener.  blk_close() unregisters
 * and closes both.
 */
int	blk_listen(struct srv *s, int *reserve);
void	blk_close(int lfd, int reserve);

/*
 * Stop signals for blocking models.  The net_ functions retry EINTR, and a
 * signal that lands between the check of a flag and the blocking call
 * would be lost anyway, so the handler wakes the blocked call itself: it
 * sets srv_stop and shuts down (SHUT_RD) the descriptors registered here.
 * A listener's accept() then fails with EINVAL; a connection's read()
 * returns 0, as at EOF, while its writes still go out, so the reply in
 * progress is finished.  A write blocked on a client that does not read
 * would hold the stop forever: the stop also arms alarm() for the grace
 * period, and SIGALRM then shuts the connection down for writing too (the
 * write fails with EPIPE).  SIGALRM is this layer's in blocking models.
 * BLK_WAKE_EXIT in the connection slot makes the
 * handler _exit(0) instead: a preforked child idle in accept() or in its
 * accept lock has nothing to finish (and must not shut down the listener
 * its siblings share).
 *
 * blk_wake_signals() installs the handler for SIGINT/SIGTERM/SIGHUP (no
 * SA_RESTART) and ignores SIGPIPE.  The slots are per process: only the
 * thread that takes the signal may use them, so threaded models block the
 * signals in every other thread.
 */
#define BLK_WAKE_LISTENER	0
#define BLK_WAKE_CONN		1
#define BLK_WAKE_EXIT		(-2)

void	blk_wake_signals(void);
void	blk_wake_set(int slot, int fd);	/* -1: nothing to wake */


/*
 * Block in accept() on the blocking listener LFD until a connection comes
 * or srv_stop is set (-EINTR).  On EMFILE/ENFILE, wait up to a second for
 * a thread of REG (if any) to close its connection, else shed the pending
 * one with the RESERVE descriptor (net_accept_shed()), instead of retrying
 * at once forever; other transient errors are logged and retried after a
 * pause.  Returns the descriptor, -EINTR at stop, or -errno (logged) when
 * the listener itself is unusable.
 */
int	blk_accept_wait(const struct srv *s, int lfd, struct net_addr *peer,
	    int *reserve, struct registry *reg);

#endif

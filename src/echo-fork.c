/*
 * echo-fork — blocking IO, a process per connection: the parent accepts
 * and forks; the child serves that one client until EOF and exits.
 *
 * For one echoed message the child makes two system calls, read and
 * write, like the iterative server; what each connection costs is a
 * fork() (page tables copied, pages shared copy-on-write, ~0.1 ms) and an
 * exit(), a process in the kernel's tables and, at the least, a read
 * buffer of private memory.  Clients no longer wait for each other, and a
 * crash costs one connection; but thousands of clients are thousands of
 * processes, and -m is what keeps a flood from exhausting RLIMIT_NPROC or
 * memory: at the limit the parent stops accepting and new clients wait in
 * the backlog until a child exits.
 *
 * Pitfalls handled here:
 *   - zombies: an exited child stays in the process table until its parent
 *     waits for it.  The SIGCHLD handler reaps every exited child (one
 *     SIGCHLD may stand for several exits: waitpid in a loop, WNOHANG);
 *   - descriptors: the child closes the listener and the parent closes the
 *     connection, or the parent runs out of descriptors and a client's
 *     close never reaches the peer while the other copy is open;
 *   - a child must not be reaped before the parent has noted its pid, nor
 *     take a stop signal before it knows which descriptor to wake:
 *     SIGCHLD and the stop signals are blocked across fork();
 *   - stop: the parent shuts the listener, forwards SIGTERM to every
 *     child (each finishes the message in hand and closes), waits a grace
 *     period, SIGKILLs the rest, and reaps them all (the stop of the
 *     worker supervisor, workers.c); a parent killed outright forwards
 *     nothing, so wrk_fork() has the kernel send each child SIGTERM when
 *     its parent dies (PR_SET_PDEATHSIG).
 *
 * Global state: the table of live children, shared with the SIGCHLD
 * handler (changed by the main program only with SIGCHLD blocked).
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blocking.h"
#include "net.h"
#include "server.h"
#include "workers.h"

static pid_t	*kids;		/* live (or exited, unreaped) children */
static volatile sig_atomic_t nkids;
static size_t	 kids_cap;

static void
kids_remove(pid_t pid)
{
	int i;

	for (i = 0; i < nkids; i++)
		if (kids[i] == pid) {
			kids[i] = kids[nkids - 1];
			nkids = nkids - 1;
			return;
		}
}

/*
 * Only this handler reaps, and it removes what it reaps: a pid in the
 * table is never recycled by the kernel, so kill() on it is safe.
 */
static void
on_child(int sig)
{
	int saved = errno, st;
	pid_t pid;

	(void)sig;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
		kids_remove(pid);
	errno = saved;
}

/* Called with SIGCHLD blocked. */
static int
kids_add(pid_t pid)
{
	pid_t *p;

	if ((size_t)nkids == kids_cap) {
		p = realloc(kids, (kids_cap ? kids_cap * 2 : 64) * sizeof(*p));
		if (p == NULL)
			return -ENOMEM;
		kids = p;
		kids_cap = kids_cap ? kids_cap * 2 : 64;
	}
	kids[nkids] = pid;
	nkids = nkids + 1;
	return 0;
}

static void
sigset_stop_child(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGCHLD);
	srv_sigset_stop(set);
}

static void
install_reaper(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_child;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
	sigaction(SIGCHLD, &sa, NULL);
}

/* The child: serve one client and exit, never returning to the loop. */
static void __attribute__((noreturn))
child(const struct srv *s, int lfd, int reserve, int fd,
    const struct net_addr *peer, uint8_t *buf, const sigset_t *mask)
{
	signal(SIGCHLD, SIG_DFL);
	close(lfd);
	close(reserve);
	blk_wake_set(BLK_WAKE_LISTENER, -1);
	blk_wake_set(BLK_WAKE_CONN, fd);
	sigprocmask(SIG_SETMASK, mask, NULL);
	blk_serve(s, fd, peer, buf, NULL);
	close(fd);
	_exit(SRV_EX_OK);
}

/* -m: wait, without spinning, until a child exits or a stop comes. */
static void
wait_below_max(const struct srv *s)
{
	sigset_t block, old;

	if (s->max_conns == 0)
		return;
	sigset_stop_child(&block);
	sigprocmask(SIG_BLOCK, &block, &old);
	/* sigsuspend unblocks and sleeps atomically: no lost SIGCHLD. */
	while (nkids >= s->max_conns && !srv_stop)
		sigsuspend(&old);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

static void
spawn(const struct srv *s, int lfd, int reserve, int fd,
    const struct net_addr *peer, uint8_t *buf)
{
	sigset_t block, old;
	pid_t pid;

	sigset_stop_child(&block);
	sigprocmask(SIG_BLOCK, &block, &old);
	pid = wrk_fork();
	if (pid == 0)
		child(s, lfd, reserve, fd, peer, buf, &old);
	if (pid < 0)
		srv_warn(s, "fork: %s: connection refused", strerror(errno));
	else if (kids_add(pid) < 0) {
		/* Untracked, it could not be stopped: end it now. */
		srv_warn(s, "out of memory: connection refused");
		kill(pid, SIGKILL);
	}
	sigprocmask(SIG_SETMASK, &old, NULL);
	close(fd);
	if (pid < 0)
		(void)poll(NULL, 0, 10);	/* EAGAIN: RLIMIT_NPROC; pass */
}

/*
 * SIGTERM to every child, a grace period to finish, then SIGKILL
 * (workers.c).  SIGCHLD stays blocked meanwhile: the reaper does not
 * reorder the table under wrk_stop_pids(), which reaps them itself.
 */
static void
stop_children(const struct srv *s)
{
	sigset_t block, old;

	sigemptyset(&block);
	sigaddset(&block, SIGCHLD);
	sigprocmask(SIG_BLOCK, &block, &old);
	(void)wrk_stop_pids(s, kids, nkids, SRV_STOP_GRACE_MS, "children");
	nkids = 0;
	sigprocmask(SIG_SETMASK, &old, NULL);
}

static const struct srv_model model = {
	.name = "echo-fork",
	.summary = "Echo server: blocking IO, a process per connection (fork).",
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
	install_reaper();
	srv_ready(&s);
	for (;;) {
		wait_below_max(&s);
		fd = blk_accept_wait(&s, lfd, &peer, &reserve, NULL);
		if (fd < 0)
			break;
		srv_debug(&s, "%d children", (int)nkids + 1);
		spawn(&s, lfd, reserve, fd, &peer, buf);
	}
	blk_close(lfd, reserve);
	stop_children(&s);
	free(buf);
	free(kids);
	return fd == -EINTR ? SRV_EX_OK : SRV_EX_OSERR;
}

/*
 * echo-prefork — blocking IO, N processes forked in advance, each blocking
 * in accept() on the shared listener and serving one client at a time
 * (Apache's prefork; the documents' process pool).
 *
 * For one echoed message a child makes two system calls, read and write;
 * a connection costs an accept() (and, with a lock, its acquisition) but
 * no fork: the processes are reused.  The cost: at most -w clients are
 * served at once (-m lowers that further); the next ones wait in the
 * listen backlog until a child is free, however idle the clients being
 * served are.  -t bounds how long an idle client may hold a child.
 *
 * --accept-lock reproduces the classic comparison (Stevens, UNP 30.6):
 *   none	every child calls accept() itself.  Historically all sleepers
 *		were woken per connection and all but one went back to sleep
 *		(the thundering herd); Linux has woken one exclusive waiter
 *		per connection since 2.6, so this is the cheapest.
 *   fcntl	an fcntl() record lock on a temporary file around accept():
 *		two more system calls per connection, and the kernel releases
 *		it when its holder dies.
 *   mutex	a process-shared pthread mutex in shared memory: no system
 *		call when uncontended.  Robust, or a child killed while
 *		holding it would block every other child forever.
 * With -v, the parent reports at exit how many connections each child
 * served: the distribution shows which child the kernel (or the lock)
 * favours.
 *
 * Pitfalls handled here:
 *   - a child that dies is reaped and replaced, with a back-off when it
 *     dies young (the supervisor, workers.c, shared with echo-epoll -w);
 *   - stop: the parent forwards SIGTERM; a child idle in accept() or in
 *     the lock exits at once (it must not shut down the listener its
 *     siblings share), a child serving a client finishes the message in
 *     hand; the parent SIGKILLs what is left after a grace period and
 *     reaps every child;
 *   - a parent killed outright cannot forward anything: the supervisor
 *     forks the children with wrk_fork(), which asks the kernel for a
 *     SIGTERM when their parent dies (PR_SET_PDEATHSIG).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "blocking.h"
#include "net.h"
#include "server.h"
#include "workers.h"

#define OPT_LOCK	256

enum lock_mode { LOCK_NONE, LOCK_FCNTL, LOCK_MUTEX };
static const char *const lock_names[] = { "none", "fcntl", "mutex" };

/* Shared by the parent and every child: MAP_SHARED, survives fork(). */
struct shared {
	pthread_mutex_t		mu;
	volatile unsigned long	served[];	/* by the child in each slot */
};

struct prefork {
	struct srv	*srv;
	enum lock_mode	 lock;
	int		 lockfd;	/* fcntl */
	struct shared	*sh;
	int		 n, lfd;
};

/* ---- the accept lock ----------------------------------------------------- */

static int
lock_fcntl(int fd, short type)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET };

	while (fcntl(fd, F_SETLKW, &fl) < 0)
		if (errno != EINTR)
			return -errno;
	return 0;
}

static void
accept_lock(struct prefork *pf)
{
	switch (pf->lock) {
	case LOCK_FCNTL:
		(void)lock_fcntl(pf->lockfd, F_WRLCK);
		break;
	case LOCK_MUTEX:
		/* The previous holder died holding it: its state is ours. */
		if (pthread_mutex_lock(&pf->sh->mu) == EOWNERDEAD)
			pthread_mutex_consistent(&pf->sh->mu);
		break;
	case LOCK_NONE:
		break;
	}
}

static void
accept_unlock(struct prefork *pf)
{
	if (pf->lock == LOCK_FCNTL)
		(void)lock_fcntl(pf->lockfd, F_UNLCK);
	else if (pf->lock == LOCK_MUTEX)
		pthread_mutex_unlock(&pf->sh->mu);
}

static int
lock_setup(struct prefork *pf)
{
	pthread_mutexattr_t ma;
	char path[] = "/tmp/echo-prefork.XXXXXX";

	if (pf->lock == LOCK_FCNTL) {
		/* An unnamed file: nothing to clean up, whatever happens. */
		pf->lockfd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		if (pf->lockfd < 0 && (pf->lockfd = mkostemp(path, O_CLOEXEC)) >= 0)
			unlink(path);
		return pf->lockfd < 0 ? -errno : 0;
	}
	if (pf->lock != LOCK_MUTEX)
		return 0;
	if (pthread_mutexattr_init(&ma) != 0 ||
	    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED) != 0 ||
	    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST) != 0 ||
	    pthread_mutex_init(&pf->sh->mu, &ma) != 0)
		return -EINVAL;
	pthread_mutexattr_destroy(&ma);
	return 0;
}

/* ---- a child ---------------------------------------------------------------- */

static void
child(struct wrk *w, int idx)
{
	struct prefork *pf = w->arg;
	const struct srv *s = pf->srv;
	struct net_addr peer;
	uint8_t *buf = malloc(s->bufsize);
	int fd, reserve = net_reserve_open();

	if (buf == NULL || reserve < 0) {
		srv_warn(s, "child %d: cannot start", idx);
		_exit(SRV_EX_OSERR);
	}
	pf->sh->served[idx] = 0;
	/* Idle, a stop exits at once: there is nothing to finish. */
	blk_wake_set(BLK_WAKE_LISTENER, -1);
	blk_wake_set(BLK_WAKE_CONN, BLK_WAKE_EXIT);
	sigprocmask(SIG_SETMASK, &w->mask, NULL);
	for (;;) {
		accept_lock(pf);
		fd = blk_accept_wait(s, pf->lfd, &peer, &reserve, NULL);
		accept_unlock(pf);
		if (fd < 0)
			break;
		pf->sh->served[idx]++;
		blk_wake_set(BLK_WAKE_CONN, fd);
		blk_serve(s, fd, &peer, buf, NULL);
		blk_wake_set(BLK_WAKE_CONN, BLK_WAKE_EXIT);
		close(fd);
	}
	_exit(fd == -EINTR ? SRV_EX_OK : SRV_EX_OSERR);
}

/* ---- the parent ---------------------------------------------------------------- */

static void
describe(struct wrk *w, int idx, char *buf, size_t size)
{
	const struct prefork *pf = w->arg;

	(void)snprintf(buf, size, " after %lu connections", pf->sh->served[idx]);
}

static void
report(const struct prefork *pf)
{
	unsigned long total = 0;
	int i;

	for (i = 0; i < pf->n; i++)
		total += pf->sh->served[i];
	for (i = 0; i < pf->n; i++)
		srv_debug(pf->srv, "child %d: %lu connections", i,
		    pf->sh->served[i]);
	srv_debug(pf->srv, "%lu connections in all, --accept-lock %s", total,
	    lock_names[pf->lock]);
}

static int
run(struct prefork *pf)
{
	int sig, rc = SRV_EX_OK;
	struct wrk w;

	if (wrk_init(&w, pf->srv, pf->n, child, pf) < 0)
		return SRV_EX_OSERR;
	w.what = "child";
	w.plural = "children";
	w.describe = describe;
	if (wrk_start(&w) < 0)
		rc = SRV_EX_OSERR;
	else {
		srv_ready(pf->srv);
		sig = wrk_run(&w);
		srv_debug(pf->srv, "signal %d: stopping", sig);
	}
	wrk_stop(&w);
	wrk_fini(&w);
	if (rc == SRV_EX_OK)
		report(pf);
	return rc;
}

/* ---- setup ---------------------------------------------------------------------- */

static const struct srv_option options[] = {
	{ "accept-lock", 1, OPT_LOCK, "MODE", "around accept(): none (default), "
	    "fcntl (record lock) or mutex (process-shared pthread mutex)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int
on_option(struct srv *s, int key, const char *arg)
{
	struct prefork *pf = s->model_data;
	int i;

	if (key != OPT_LOCK)
		return -1;
	for (i = 0; i < 3; i++)
		if (strcmp(arg, lock_names[i]) == 0) {
			pf->lock = (enum lock_mode)i;
			return 0;
		}
	srv_usage_error(s, "--accept-lock: '%s' is not none, fcntl or mutex", arg);
}

static const struct srv_model model = {
	.name = "echo-prefork",
	.summary = "Echo server: blocking IO, a pool of processes forked in advance, each in accept().",
	.caps = SRV_CAP_WORKERS,
	.default_workers = 4,
	.workers_help = "processes forked in advance, each serving one client at a time (default 4)",
	.options = options,
	.on_option = on_option,
};

int
main(int argc, char **argv)
{
	struct prefork pf = { .lock = LOCK_NONE, .lockfd = -1 };
	struct srv s;
	size_t size;
	int rc;

	srv_init(&s, &model, argc, argv, &pf);
	pf.srv = &s;
	pf.n = s.workers;
	if (s.max_conns && s.max_conns < pf.n)
		pf.n = s.max_conns;	/* one client per child */
	/*
	 * One listener shared by every child (the point of the model):
	 * SO_REUSEPORT would give each its own queue.  And log lines
	 * without a pid, as from one server.
	 */
	s.workers = 1;
	srv_raise_nofile(&s);
	pf.lfd = srv_listen(&s, 0);
	size = sizeof(struct shared) + (size_t)pf.n * sizeof(unsigned long);
	pf.sh = mmap(NULL, size, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (pf.sh == MAP_FAILED || lock_setup(&pf) < 0) {
		srv_warn(&s, "cannot start: %s", strerror(errno));
		return SRV_EX_OSERR;
	}
	blk_wake_signals();
	rc = run(&pf);
	close(pf.lfd);
	if (pf.lockfd >= 0)
		close(pf.lockfd);
	munmap(pf.sh, size);
	return rc;
}

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
 *   - a child that dies is reaped and replaced (a child that dies at once,
 *     repeatedly, is restarted at most once a second, not in a fork loop);
 *   - stop: the parent forwards SIGTERM; a child idle in accept() or in
 *     the lock exits at once (it must not shut down the listener its
 *     siblings share), a child serving a client finishes the message in
 *     hand; the parent SIGKILLs what is left after a grace period and
 *     reaps every child;
 *   - the parent blocks its signals and takes them with sigtimedwait():
 *     no handler, no EINTR, no lost SIGCHLD;
 *   - a parent killed outright cannot forward anything: the children
 *     are forked by srv_fork(), which asks the kernel for a SIGTERM when
 *     their parent dies (PR_SET_PDEATHSIG).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "blocking.h"
#include "net.h"
#include "server.h"

#define STOP_GRACE_MS	2000
#define RESTART_MS	1000	/* a child that died younger waits this long */
#define OPT_LOCK	256

enum lock_mode { LOCK_NONE, LOCK_FCNTL, LOCK_MUTEX };
static const char *const lock_names[] = { "none", "fcntl", "mutex" };

/* Shared by the parent and every child: MAP_SHARED, survives fork(). */
struct shared {
	pthread_mutex_t		mu;
	volatile unsigned long	served[];	/* by the child in each slot */
};

struct slot {
	pid_t		pid;		/* 0: not running */
	int64_t		started;	/* ms */
	int64_t		restart_at;	/* ms, when pid == 0 and not stopping */
};

struct prefork {
	struct srv	*srv;
	enum lock_mode	 lock;
	int		 lockfd;	/* fcntl */
	struct shared	*sh;
	struct slot	*slots;
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

static void __attribute__((noreturn))
child(struct prefork *pf, int idx, const sigset_t *mask)
{
	const struct srv *s = pf->srv;
	struct net_addr peer;
	uint8_t *buf = malloc(s->bufsize);
	int fd, reserve = net_reserve_open();

	if (buf == NULL || reserve < 0) {
		srv_warn(s, "child %d: cannot start", idx);
		_exit(SRV_EX_OSERR);
	}
	/* Idle, a stop exits at once: there is nothing to finish. */
	conn_wake_set(CONN_WAKE_LISTENER, -1);
	conn_wake_set(CONN_WAKE_CONN, CONN_WAKE_EXIT);
	sigprocmask(SIG_SETMASK, mask, NULL);
	for (;;) {
		accept_lock(pf);
		fd = conn_accept_wait(s, pf->lfd, &peer, &reserve, NULL);
		accept_unlock(pf);
		if (fd < 0)
			break;
		pf->sh->served[idx]++;
		conn_wake_set(CONN_WAKE_CONN, fd);
		conn_serve(s, fd, &peer, buf, NULL);
		conn_wake_set(CONN_WAKE_CONN, CONN_WAKE_EXIT);
		close(fd);
	}
	_exit(fd == -EINTR ? SRV_EX_OK : SRV_EX_OSERR);
}

/* ---- the parent ---------------------------------------------------------------- */

static int
spawn(struct prefork *pf, int idx, const sigset_t *mask)
{
	pid_t pid = srv_fork();

	if (pid == 0)
		child(pf, idx, mask);
	if (pid < 0) {
		srv_warn(pf->srv, "fork: %s", strerror(errno));
		pf->slots[idx].restart_at = srv_now_ms() + RESTART_MS;
		return -1;
	}
	pf->slots[idx].pid = pid;
	pf->slots[idx].started = srv_now_ms();
	pf->sh->served[idx] = 0;
	return 0;
}

static int
slot_of(const struct prefork *pf, pid_t pid)
{
	int i;

	for (i = 0; i < pf->n; i++)
		if (pf->slots[i].pid == pid)
			return i;
	return -1;
}

/* Reap every exited child; replace it unless stopping.  Returns how many. */
static int
reap(struct prefork *pf, int stopping, const sigset_t *mask)
{
	struct slot *sl;
	int st, i, n = 0;
	pid_t pid;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		if ((i = slot_of(pf, pid)) < 0)
			continue;
		n++;
		sl = &pf->slots[i];
		sl->pid = 0;
		if (stopping)
			continue;
		srv_warn(pf->srv, "child %d (pid %ld) died (%s %d) after %lu "
		    "connections: restarting", i, (long)pid,
		    WIFSIGNALED(st) ? "signal" : "status",
		    WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
		    pf->sh->served[i]);
		if (srv_now_ms() - sl->started < RESTART_MS)
			sl->restart_at = sl->started + RESTART_MS;
		else
			(void)spawn(pf, i, mask);
	}
	return n;
}

/* Restart the children whose delay is over; the ms until the next one. */
static int
restart_due(struct prefork *pf, const sigset_t *mask)
{
	int64_t now = srv_now_ms(), wait = -1;
	int i;

	for (i = 0; i < pf->n; i++) {
		struct slot *sl = &pf->slots[i];

		if (sl->pid != 0 || sl->restart_at == 0)
			continue;
		if (now >= sl->restart_at) {
			sl->restart_at = 0;
			(void)spawn(pf, i, mask);
		} else if (wait < 0 || sl->restart_at - now < wait)
			wait = sl->restart_at - now;
	}
	return (int)wait;
}

static void
signal_children(struct prefork *pf, int sig)
{
	int i;

	for (i = 0; i < pf->n; i++)
		if (pf->slots[i].pid > 0)
			(void)kill(pf->slots[i].pid, sig);
}

static int
live_children(const struct prefork *pf)
{
	int i, n = 0;

	for (i = 0; i < pf->n; i++)
		n += pf->slots[i].pid > 0;
	return n;
}

/* Wait for a signal in SET for up to MS (-1: forever); 0 on timeout. */
static int
wait_signal(const sigset_t *set, int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000,
	    .tv_nsec = (long)(ms % 1000) * 1000000L };
	int sig;

	do
		sig = ms < 0 ? sigwaitinfo(set, NULL) : sigtimedwait(set, NULL, &ts);
	while (sig < 0 && errno == EINTR);
	return sig < 0 ? 0 : sig;
}

static void
stop_children(struct prefork *pf, const sigset_t *set, const sigset_t *mask)
{
	int64_t deadline = srv_now_ms() + STOP_GRACE_MS, left;
	int killed = 0;

	signal_children(pf, SIGTERM);
	while (reap(pf, 1, mask), live_children(pf) > 0) {
		left = deadline - srv_now_ms();
		if (left <= 0 && !killed) {
			srv_warn(pf->srv, "%d children still busy after %d ms: "
			    "killed", live_children(pf), STOP_GRACE_MS);
			signal_children(pf, SIGKILL);
			killed = 1;
		}
		(void)wait_signal(set, left > 0 ? (int)left : 100);
	}
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
	sigset_t set, mask;
	int i, sig, wait;

	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, &mask);
	for (i = 0; i < pf->n; i++)
		if (spawn(pf, i, &mask) < 0) {
			stop_children(pf, &set, &mask);
			return SRV_EX_OSERR;
		}
	srv_ready(pf->srv);
	/* A stop that came before the signals were blocked ran the handler. */
	sig = srv_stop ? SIGTERM : 0;
	while (!srv_stop) {
		wait = restart_due(pf, &mask);
		sig = wait_signal(&set, wait);
		if (sig == SIGCHLD || sig == 0)
			reap(pf, 0, &mask);
		else if (sig > 0)
			break;
	}
	srv_debug(pf->srv, "signal %d: stopping", sig);
	stop_children(pf, &set, &mask);
	report(pf);
	return SRV_EX_OK;
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
	pf.slots = calloc((size_t)pf.n, sizeof(*pf.slots));
	if (pf.sh == MAP_FAILED || pf.slots == NULL || lock_setup(&pf) < 0) {
		srv_warn(&s, "cannot start: %s", strerror(errno));
		return SRV_EX_OSERR;
	}
	conn_wake_signals();
	rc = run(&pf);
	close(pf.lfd);
	if (pf.lockfd >= 0)
		close(pf.lockfd);
	munmap(pf.sh, size);
	free(pf.slots);
	return rc;
}

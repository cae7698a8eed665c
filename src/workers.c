/*
 * workers — fork N, reap, restart with back-off, stop.  See workers.h.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workers.h"

int
wrk_init(struct wrk *w, struct srv *s, int n, wrk_main_fn fn, void *arg)
{
	memset(w, 0, sizeof(*w));
	w->srv = s;
	w->n = n;
	w->what = "worker";
	w->plural = "workers";
	w->grace_ms = SRV_STOP_GRACE_MS;
	w->main = fn;
	w->arg = arg;
	w->slots = calloc((size_t)n, sizeof(*w->slots));
	if (w->slots == NULL)
		return -ENOMEM;
	sigemptyset(&w->set);
	sigaddset(&w->set, SIGCHLD);
	srv_sigset_stop(&w->set);
	srv_signals_ignore_pipe();
	sigprocmask(SIG_BLOCK, &w->set, &w->mask);
	return 0;
}

void
wrk_fini(struct wrk *w)
{
	free(w->slots);
	w->slots = NULL;
}

pid_t
wrk_fork(void)
{
	pid_t parent = getpid(), pid;

	pid = fork();
	if (pid != 0)
		return pid;
	/*
	 * A parent killed outright (SIGKILL, the OOM killer) forwards no
	 * stop: have the kernel send the child SIGTERM, its ordinary
	 * graceful stop, when the parent dies, rather than leave it behind
	 * holding the port.  The death signal follows the parent *thread*
	 * that forked: the supervisors fork from their one thread.  A
	 * parent that died before the prctl() sends nothing: the child has
	 * been reparented by then, so getppid() tells, and the child stops
	 * as if signalled.
	 */
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) == 0 && getppid() != parent)
		(void)kill(getpid(), SIGTERM);
	return 0;
}

static int
spawn(struct wrk *w, int idx)
{
	struct wrk_slot *sl = &w->slots[idx];
	pid_t pid = wrk_fork();
	int err;

	if (pid == 0) {
		w->main(w, idx);
		_exit(SRV_EX_SOFTWARE);		/* main must not return */
	}
	if (pid < 0) {
		err = errno;
		srv_warn(w->srv, "fork: %s", strerror(err));
		sl->restart_at = srv_now_ms() + WRK_HEALTHY_MS;
		return -err;
	}
	sl->pid = pid;
	sl->started = srv_now_ms();
	sl->restart_at = 0;
	return 0;
}

int
wrk_start(struct wrk *w)
{
	int i, r;

	for (i = 0; i < w->n; i++)
		if ((r = spawn(w, i)) < 0)
			return r;
	return 0;
}

static int
slot_of(const struct wrk *w, pid_t pid)
{
	int i;

	for (i = 0; i < w->n; i++)
		if (w->slots[i].pid == pid)
			return i;
	return -1;
}

/* The delay before worker IDX, dead at NOW, is forked again. */
static int64_t
backoff(struct wrk_slot *sl, int64_t now)
{
	int shift;

	if (now - sl->started >= WRK_HEALTHY_MS) {
		sl->quick = 0;
		return 0;
	}
	shift = sl->quick < 5 ? sl->quick : 5;
	sl->quick++;
	return (int64_t)WRK_HEALTHY_MS << shift;
}

/* Reap every exited worker and schedule its replacement. */
static void
reap(struct wrk *w)
{
	char note[128];
	struct wrk_slot *sl;
	int64_t now, delay;
	pid_t pid;
	int st, i;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		if ((i = slot_of(w, pid)) < 0)
			continue;
		sl = &w->slots[i];
		sl->pid = 0;
		now = srv_now_ms();
		delay = backoff(sl, now);
		note[0] = '\0';
		if (w->describe)
			w->describe(w, i, note, sizeof(note));
		if (delay == 0)
			srv_warn(w->srv, "%s %d (pid %ld) died (%s %d)%s: "
			    "restarting", w->what, i, (long)pid,
			    WIFSIGNALED(st) ? "signal" : "status",
			    WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), note);
		else
			srv_warn(w->srv, "%s %d (pid %ld) died (%s %d)%s, %lld "
			    "ms old: restarting in %lld ms", w->what, i,
			    (long)pid, WIFSIGNALED(st) ? "signal" : "status",
			    WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), note,
			    (long long)(now - sl->started), (long long)delay);
		sl->restart_at = now + delay;
	}
}

/* Fork the workers whose delay is over; the ms until the next one is. */
static int
restart_due(struct wrk *w)
{
	int64_t now = srv_now_ms(), wait = -1, t;
	struct wrk_slot *sl;
	int i;

	for (i = 0; i < w->n; i++) {
		sl = &w->slots[i];
		if (sl->pid == 0 && sl->restart_at != 0 && now >= sl->restart_at)
			(void)spawn(w, i);
	}
	/* A fork that failed just now set a new restart_at. */
	for (i = 0; i < w->n; i++) {
		sl = &w->slots[i];
		if (sl->pid != 0 || sl->restart_at == 0)
			continue;
		t = sl->restart_at > now ? sl->restart_at - now : 0;
		if (wait < 0 || t < wait)
			wait = t;
	}
	return (int)wait;
}

int
wrk_run(struct wrk *w)
{
	int sig;

	/* A stop that came before the signals were blocked ran the handler. */
	if (srv_stop)
		return SIGTERM;
	for (;;) {
		sig = srv_wait_signal(&w->set, NULL, restart_due(w));
		if (sig == SIGCHLD || sig == 0)
			reap(w);
		else
			return sig;
	}
}

void
wrk_stop(struct wrk *w)
{
	pid_t *pids = calloc((size_t)w->n, sizeof(*pids));
	int i;

	if (pids == NULL) {
		/* No table to wait on: do not leave them running. */
		for (i = 0; i < w->n; i++)
			if (w->slots[i].pid > 0)
				(void)kill(w->slots[i].pid, SIGKILL);
		while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
			;
		return;
	}
	for (i = 0; i < w->n; i++)
		pids[i] = w->slots[i].pid;
	(void)wrk_stop_pids(w->srv, pids, w->n, w->grace_ms, w->plural);
	for (i = 0; i < w->n; i++)
		w->slots[i].pid = 0;
	free(pids);
}

static int
live(const pid_t *pids, int n)
{
	int i, k = 0;

	for (i = 0; i < n; i++)
		k += pids[i] > 0;
	return k;
}

static void
signal_all(const pid_t *pids, int n, int sig)
{
	int i;

	for (i = 0; i < n; i++)
		if (pids[i] > 0)
			(void)kill(pids[i], sig);
}

int
wrk_stop_pids(const struct srv *s, pid_t *pids, int n, int grace_ms,
    const char *plural)
{
	int64_t deadline = srv_now_ms() + grace_ms, left;
	sigset_t chld, old;
	int i, st, killed = 0;
	pid_t pid;

	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, &old);
	signal_all(pids, n, SIGTERM);
	for (;;) {
		/* One SIGCHLD may stand for several exits: reap them all. */
		while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
			for (i = 0; i < n; i++)
				if (pids[i] == pid)
					pids[i] = 0;
		if (live(pids, n) == 0)
			break;
		left = deadline - srv_now_ms();
		if (left <= 0 && !killed) {
			killed = live(pids, n);
			srv_warn(s, "%d %s still busy after %d ms: killed",
			    killed, plural, grace_ms);
			signal_all(pids, n, SIGKILL);
		}
		(void)srv_wait_signal(&chld, NULL, left > 0 ? (int)left : 100);
	}
	sigprocmask(SIG_SETMASK, &old, NULL);
	return killed;
}

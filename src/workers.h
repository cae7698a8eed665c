/*
 * workers — one supervisor for the models that fork worker processes
 * (echo-epoll -w, echo-prefork): fork N, reap, restart with back-off,
 * forward the stop, a grace period, then SIGKILL; and children that die
 * with their parent (wrk_fork()).  echo-fork, whose
 * children come and go with their clients, shares the stop
 * (wrk_stop_pids()).
 *
 * The parent blocks SIGCHLD and the stop signals and takes them with
 * sigtimedwait(): no handler, no EINTR, no lost SIGCHLD.  A child starts
 * with those signals still blocked and the parent's former mask in
 * w->mask, so that it installs its own stop first and unblocks after.
 *
 * Back-off: a worker that dies younger than WRK_HEALTHY_MS is not
 * replaced at once but after a delay that doubles with each such death
 * in a row (1 s, 2 s, 4 s ... 32 s): a worker that dies at start-up, or
 * one that something kills as soon as it runs, costs a fork now and
 * then, not a fork loop.  A worker that lived longer is replaced at once.
 */
#ifndef IOMODELS_WORKERS_H
#define IOMODELS_WORKERS_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "server.h"

#define WRK_HEALTHY_MS		1000	/* lived this long: restarted at once */
#define WRK_BACKOFF_MAX_MS	32000

struct wrk;

/* The body of worker IDX, in the child: it must _exit(), never return. */
typedef void (*wrk_main_fn)(struct wrk *, int idx);

struct wrk_slot {
	pid_t		 pid;		/* 0: not running */
	int64_t		 started;	/* ms */
	int64_t		 restart_at;	/* ms; 0: no restart due */
	int		 quick;		/* deaths in a row younger than healthy */
};

struct wrk {
	struct srv	*srv;
	int		 n;
	const char	*what, *plural;	/* "worker", "workers": for the log */
	int		 grace_ms;	/* at stop, before SIGKILL */
	wrk_main_fn	 main;
	/* Optional: appended to the line that reports a death. */
	void		(*describe)(struct wrk *, int idx, char *buf, size_t size);
	void		*arg;		/* the model's */
	struct wrk_slot	*slots;
	sigset_t	 set;		/* SIGCHLD and the stop signals */
	sigset_t	 mask;		/* the mask before: the children's */
};

/*
 * Set up N slots (grace_ms defaults to SRV_STOP_GRACE_MS) and block SET.
 * Returns 0 or -ENOMEM.
 */
int	wrk_init(struct wrk *, struct srv *, int n, wrk_main_fn, void *arg);
void	wrk_fini(struct wrk *);

/* Fork every worker.  -errno (logged) when a fork fails. */
int	wrk_start(struct wrk *);

/*
 * Supervise until a stop signal comes (or came before: srv_stop): reap,
 * report and replace the workers that die.  Returns the signal.
 */
int	wrk_run(struct wrk *);

/* Forward SIGTERM, wait up to grace_ms, SIGKILL the rest, reap them all. */
void	wrk_stop(struct wrk *);

/*
 * fork() for a worker or a child: it is tied to this parent by
 * PR_SET_PDEATHSIG, so that a parent killed outright does not leave it
 * behind, orphaned, still holding the port: it gets SIGTERM, its
 * ordinary graceful stop.
 */
pid_t	wrk_fork(void);

/*
 * The same stop for any set of children: PIDS[0..N) (0: an empty entry,
 * and what is reaped becomes 0).  Blocks SIGCHLD while it runs: a
 * SIGCHLD handler of the caller's does not run meanwhile.  Returns how
 * many had to be killed.
 */
int	wrk_stop_pids(const struct srv *, pid_t *pids, int n, int grace_ms,
	    const char *plural);

#endif

/*
 * echo-threadpool — blocking IO, a fixed pool of threads: the main thread
 * accepts and hands each connection, through a bounded queue (a mutex and
 * a condition variable), to the next idle worker, which serves it until
 * EOF (the documents' "pool" answer to a process or thread per client).
 *
 * For one echoed message a worker makes two system calls, read and write;
 * a connection costs a queue push and pop and a wake-up, no clone().
 * Threads, stacks and buffers are bounded by -w whatever the load.  The
 * price: at most -w clients are served at once.  When every worker is
 * busy, new connections wait in the queue (accepted, but not one byte
 * answered); when the queue holds --queue of them, the next connection is
 * refused (closed at once) with a log line.  -m caps connections served
 * plus queued: at that limit the main thread stops accepting and clients
 * wait in the kernel's backlog instead.  An idle client holds a worker
 * as long as it stays connected: -t is what bounds that.
 *
 * Pitfalls handled here:
 *   - the condition variable is waited on in a loop around the predicate
 *     (spurious wake-ups, and another worker may have taken the job);
 *   - the stop signal must reach the main thread: workers are created
 *     with the signals blocked;
 *   - stop: queued connections are closed unserved, workers blocked in
 *     read() are woken by shutting their sockets down (reg_drain),
 *     idle workers by a broadcast; then every worker is joined;
 *   - chat: the workers' registry is the room, as in echo-thread; -w is
 *     the size of a pool in one process (SRV_CAP_POOL), so it neither
 *     splits the room nor asks for SO_REUSEPORT listeners.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blocking.h"
#include "net.h"
#include "server.h"

#define OPT_QUEUE	256

struct job {
	int		 fd;
	struct net_addr	 peer;
};

/* The queue between the accepting thread and the workers. */
struct pool {
	const struct srv *srv;
	pthread_mutex_t	 mu;
	pthread_cond_t	 work;		/* a job was queued, or stop */
	pthread_cond_t	 room;		/* a worker finished a connection */
	struct job	*ring;		/* room for queue + nworkers */
	size_t		 cap, head, len;
	size_t		 queue;		/* --queue */
	int		 nworkers;
	int		 busy;		/* workers serving a connection */
	int		 stopping;
	struct registry	 reg;		/* descriptors being served */
};

static int
pool_pop(struct pool *p, struct job *j)
{
	pthread_mutex_lock(&p->mu);
	while (p->len == 0 && !p->stopping)
		pthread_cond_wait(&p->work, &p->mu);
	if (p->len == 0) {
		pthread_mutex_unlock(&p->mu);
		return -1;
	}
	*j = p->ring[p->head];
	p->head = (p->head + 1) % p->cap;
	p->len--;
	p->busy++;
	pthread_mutex_unlock(&p->mu);
	return 0;
}

static void
pool_done(struct pool *p)
{
	pthread_mutex_lock(&p->mu);
	p->busy--;
	pthread_cond_signal(&p->room);
	pthread_mutex_unlock(&p->mu);
}

static void *
worker(void *arg)
{
	struct pool *p = arg;
	uint8_t *buf = malloc(p->srv->bufsize);
	struct job j;

	if (buf == NULL) {
		srv_warn(p->srv, "worker: out of memory");
		return NULL;
	}
	while (pool_pop(p, &j) == 0) {
		/* Refused once the stop has begun: then close unserved. */
		if (reg_add(&p->reg, j.fd) == 0) {
			blk_serve(p->srv, j.fd, &j.peer, buf, &p->reg);
			reg_del(&p->reg, j.fd);
		}
		close(j.fd);
		pool_done(p);
	}
	free(buf);
	return NULL;
}

/* Queue a connection, or refuse it when the queue is full. */
static void
pool_push(struct pool *p, int fd, const struct net_addr *peer)
{
	char buf[NET_ADDRSTRLEN];
	size_t queued;
	int busy, ok;

	/*
	 * Jobs that idle workers are about to take do not count against
	 * --queue: a burst that comes faster than the workers wake up is
	 * not refused while some of them have nothing to do.
	 */
	pthread_mutex_lock(&p->mu);
	queued = p->len;
	busy = p->busy;
	ok = queued < p->queue + (size_t)(p->nworkers - p->busy);
	if (ok) {
		p->ring[(p->head + p->len) % p->cap] =
		    (struct job){ .fd = fd, .peer = *peer };
		p->len++;
		pthread_cond_signal(&p->work);
	}
	pthread_mutex_unlock(&p->mu);
	if (ok)
		return;
	srv_log(p->srv, "%s: %d workers busy and %zu connections queued: "
	    "refused", net_addr_str(peer, buf, sizeof(buf)), busy, queued);
	close(fd);
}

/*
 * -m: wait while served + queued connections reach the limit.  A signal
 * handler cannot signal a condition variable: look at srv_stop every
 * 100 ms.
 */
static void
pool_wait_room(struct pool *p, int max)
{
	struct timespec ts;

	pthread_mutex_lock(&p->mu);
	while (p->busy + (int)p->len >= max && !srv_stop) {
		srv_deadline(&ts, 100);
		pthread_cond_timedwait(&p->room, &p->mu, &ts);
	}
	pthread_mutex_unlock(&p->mu);
}

static int
pool_init(struct pool *p, const struct srv *s, size_t queue, int nworkers)
{
	memset(p, 0, sizeof(*p));
	p->srv = s;
	p->queue = queue;
	p->nworkers = nworkers;
	p->cap = queue + (size_t)nworkers;
	p->ring = calloc(p->cap, sizeof(*p->ring));
	if (p->ring == NULL || reg_init(&p->reg) < 0 ||
	    pthread_mutex_init(&p->mu, NULL) != 0 ||
	    pthread_cond_init(&p->work, NULL) != 0 ||
	    srv_cond_init(&p->room) < 0)
		return -1;
	return 0;
}

/* Start the workers with the stop signals blocked: they stay with main. */
static int
pool_start(struct pool *p, pthread_t *tids, int n)
{
	sigset_t block, old;
	int i, err = 0;

	sigemptyset(&block);
	srv_sigset_stop(&block);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	for (i = 0; i < n; i++)
		if ((err = pthread_create(&tids[i], NULL, worker, p)) != 0)
			break;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err != 0)
		errno = err;
	return i;
}

static void
pool_stop(struct pool *p, pthread_t *tids, int n)
{
	int i;

	pthread_mutex_lock(&p->mu);
	p->stopping = 1;
	while (p->len > 0) {
		close(p->ring[p->head].fd);
		p->head = (p->head + 1) % p->cap;
		p->len--;
	}
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->mu);
	reg_drain(&p->reg, SRV_STOP_GRACE_MS);
	for (i = 0; i < n; i++)
		pthread_join(tids[i], NULL);
	reg_fini(&p->reg);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->work);
	pthread_cond_destroy(&p->room);
	free(p->ring);
}

static const struct srv_option options[] = {
	{ "queue", 1, OPT_QUEUE, "N", "connections that may wait for a worker; "
	    "past that they are refused (default 1024)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int
on_option(struct srv *s, int key, const char *arg)
{
	size_t *queue = s->model_data;

	if (key != OPT_QUEUE)
		return -1;
	*queue = (size_t)srv_parse_num(s, "--queue", arg, 1, 1000000, 0);
	return 0;
}

static const struct srv_model model = {
	.name = "echo-threadpool",
	.summary = "Echo server: blocking IO, a fixed pool of worker threads fed by a bounded queue.",
	.caps = SRV_CAP_WORKERS | SRV_CAP_POOL | SRV_CAP_BROADCAST,
	.default_workers = 16,
	.workers_help = "worker threads in the pool (default 16)",
	.options = options,
	.on_option = on_option,
};

int
main(int argc, char **argv)
{
	size_t queue = 1024;
	struct net_addr peer;
	struct pool p;
	struct srv s;
	pthread_t *tids;
	int lfd, fd, reserve, n, want;

	srv_init(&s, &model, argc, argv, &queue);
	want = s.workers;
	lfd = blk_listen(&s, &reserve);
	tids = calloc((size_t)want, sizeof(*tids));
	if (tids == NULL || pool_init(&p, &s, queue, want) < 0) {
		srv_warn(&s, "cannot start: %s", strerror(errno));
		return SRV_EX_OSERR;
	}
	if ((n = pool_start(&p, tids, want)) < want) {
		srv_warn(&s, "cannot start the workers: %s", strerror(errno));
		srv_stop = 1;
	} else
		srv_ready(&s);
	/*
	 * Leave only through blk_accept_wait(): it says -EINTR once a stop
	 * came, while a loop on srv_stop would also end with the descriptor
	 * of the last connection accepted, and take the stop for a failure.
	 */
	for (;;) {
		if (s.max_conns)
			pool_wait_room(&p, s.max_conns);
		fd = blk_accept_wait(&s, lfd, &peer, &reserve, &p.reg);
		if (fd < 0)
			break;
		pool_push(&p, fd, &peer);
	}
	blk_close(lfd, reserve);
	pool_stop(&p, tids, n);
	free(tids);
	return fd == -EINTR && n == want ? SRV_EX_OK : SRV_EX_OSERR;
}

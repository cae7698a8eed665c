/*
 * echo-thread — blocking IO, a thread per connection: the main thread
 * accepts and starts a detached thread that serves that client until EOF.
 *
 * For one echoed message the thread makes two system calls, read and
 * write.  A connection costs a clone() and a stack (here --stack, 128 KiB
 * by default instead of the 8 MiB RLIMIT_STACK default, so 10,000 threads
 * reserve 1.3 GB of address space, not 80 GB), a read buffer, and a
 * kernel task the scheduler switches to and from at every message: cheaper
 * than fork(), but with thousands of clients the context switches and
 * per-thread memory are the cost (the documents' "C10K" problem).
 *
 * At the -m limit the main thread stops accepting until a thread finishes:
 * new clients wait in the listen backlog (and past it, their SYNs are
 * retried), they are not refused.  When the system refuses a thread
 * (pthread_create: EAGAIN, out of tasks or memory), that one connection is
 * closed with a log line.
 *
 * Pitfalls handled here:
 *   - the stop signal must reach the main thread, blocked in accept():
 *     every other thread is created with the signals blocked;
 *   - stop: threads blocked in read() are woken by shutting their sockets
 *     down (reg_drain), not by signals they never see;
 *   - a detached thread cannot be joined: the registry of descriptors
 *     being served doubles as the count of live threads to wait for;
 *   - chat: a thread blocked in read() cannot also write what the other
 *     clients say.  The registry is the room: a broadcaster sends to each
 *     client without blocking, queues what does not fit, and wakes that
 *     client's thread through an eventfd; so a chat thread waits in
 *     poll() on its socket and its eventfd (blk_serve() in conn.c).
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blocking.h"
#include "net.h"
#include "server.h"

#define OPT_STACK	256
/*
 * The smallest --stack: what the deepest request a service accepts needs.
 * rpc's parser (jansson) recurses once per level of nesting, and 64
 * levels are accepted; rpc_input() also gathers its answers in 8 KiB on
 * the stack.  Measured with 64 nested arrays and objects: 36k is enough
 * and 34k overflows in the plain build, 40k and 38k with ASan+UBSan.
 * Below this, an accepted option would crash the server on a valid
 * request; so 64k, over half again the worst measured.
 */
#define STACK_MIN	(64 * 1024)

struct opts {
	size_t	stack;
};

struct job {
	const struct srv	*srv;
	struct registry		*reg;
	int			 fd;
	struct net_addr		 peer;
};

static void *
serve(void *arg)
{
	struct job *j = arg;
	struct registry *reg = j->reg;
	uint8_t *buf = malloc(j->srv->bufsize);
	int fd = j->fd;

	if (buf != NULL)
		blk_serve(j->srv, fd, &j->peer, buf, reg);
	else
		srv_warn(j->srv, "out of memory: connection closed");
	free(buf);
	free(j);
	/* Leave the registry before close(): the number may be reused. */
	reg_del(reg, fd);
	close(fd);
	return NULL;
}

static void
start(const struct srv *s, struct registry *reg, pthread_attr_t *attr,
    int fd, const struct net_addr *peer)
{
	sigset_t block, old;
	struct job *j;
	pthread_t t;
	int err;

	if (reg_add(reg, fd) < 0) {
		close(fd);
		return;
	}
	j = malloc(sizeof(*j));
	if (j == NULL) {
		err = ENOMEM;
		goto fail;
	}
	*j = (struct job){ .srv = s, .reg = reg, .fd = fd, .peer = *peer };
	/* The new thread inherits the mask: signals stay with main. */
	sigemptyset(&block);
	srv_sigset_stop(&block);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	err = pthread_create(&t, attr, serve, j);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err == 0)
		return;
	free(j);
fail:
	srv_warn(s, "cannot start a thread (%s): connection refused",
	    strerror(err));
	reg_del(reg, fd);
	close(fd);
}

static const struct srv_option options[] = {
	{ "stack", 1, OPT_STACK, "BYTES", "stack size of each thread (default 128k)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int
on_option(struct srv *s, int key, const char *arg)
{
	struct opts *o = s->model_data;

	if (key != OPT_STACK)
		return -1;
	o->stack = (size_t)srv_parse_num(s, "--stack", arg,
	    PTHREAD_STACK_MIN > STACK_MIN ? (long long)PTHREAD_STACK_MIN :
	    STACK_MIN, 64LL * 1024 * 1024, 1);
	return 0;
}

static const struct srv_model model = {
	.name = "echo-thread",
	.summary = "Echo server: blocking IO, a thread per connection.",
	.caps = SRV_CAP_BROADCAST,
	.options = options,
	.on_option = on_option,
};

int
main(int argc, char **argv)
{
	struct opts o = { .stack = 128 * 1024 };
	struct registry reg;
	struct net_addr peer;
	pthread_attr_t attr;
	struct srv s;
	int lfd, fd, reserve;

	srv_init(&s, &model, argc, argv, &o);
	lfd = blk_listen(&s, &reserve);
	if (reg_init(&reg) < 0 ||
	    pthread_attr_init(&attr) != 0 ||
	    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) != 0 ||
	    pthread_attr_setstacksize(&attr, o.stack) != 0) {
		srv_warn(&s, "cannot start: %s", strerror(errno));
		return SRV_EX_OSERR;
	}
	srv_ready(&s);
	for (;;) {
		if (s.max_conns)
			reg_wait_below(&reg, (size_t)s.max_conns);
		fd = blk_accept_wait(&s, lfd, &peer, &reserve, &reg);
		if (fd < 0)
			break;
		start(&s, &reg, &attr, fd, &peer);
	}
	blk_close(lfd, reserve);
	reg_drain(&reg, SRV_STOP_GRACE_MS);
	pthread_attr_destroy(&attr);
	reg_fini(&reg);
	return fd == -EINTR ? SRV_EX_OK : SRV_EX_OSERR;
}

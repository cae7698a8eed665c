/*
 * echo-nonblock — non-blocking IO without a readiness API: one thread
 * loops over accept() and over every connection's read() and write(),
 * whether or not anything is there (the documents' busy-wait server).
 *
 * For one echoed message: read, write — plus, on every pass, an accept()
 * and a read() on every connection that says EAGAIN, and a read() of the
 * signalfd.  Nothing ever sleeps in the kernel, so the process burns a
 * whole CPU even with no client at all, and each pass costs one system
 * call per connection: with N idle connections, a message waits behind N
 * useless calls.  Latency is low while one CPU is given over to it; it
 * gets worse as connections are added and when the scheduler hands that
 * CPU to anyone else.
 *
 * --sleep-us N trades latency for CPU: after a pass that found nothing to
 * do, sleep N microseconds.  An idle server then wakes 1e6/N times a
 * second instead of spinning, and a message that arrives during the sleep
 * waits up to N us.  The benchmark shows the trade-off.
 *
 * Correctness is the same as the readiness models' (conn.c): output that
 * did not fit is queued and retried on the next pass, reading stops past
 * the high-water mark, EOF waits for the output.  Connections live in a
 * compact array, walked from the end, closed ones swap-removed.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "net.h"
#include "server.h"

#define OPT_SLEEP	256

struct table {
	struct conn	**conns;
	int		 n, cap;
};

static int
tb_add(struct conn_loop *lp, struct conn *c)
{
	struct table *t = lp->model;
	struct conn **p;

	if (t->n == t->cap) {
		p = realloc(t->conns, (size_t)(t->cap ? t->cap * 2 : 64) * sizeof(*p));
		if (p == NULL)
			return -ENOMEM;
		t->conns = p;
		t->cap = t->cap ? t->cap * 2 : 64;
	}
	c->slot = t->n++;
	t->conns[c->slot] = c;
	return 0;
}

static void
tb_remove(struct conn_loop *lp, struct conn *c)
{
	struct table *t = lp->model;
	int last = --t->n;

	if (c->slot != last) {
		t->conns[c->slot] = t->conns[last];
		t->conns[c->slot]->slot = c->slot;
	}
	c->slot = -1;
}

/* No update hook: the loop asks every connection on every pass. */
static const struct conn_ops tb_ops = {
	.add = tb_add,
	.remove = tb_remove,
};

/* One pass: try every connection, whatever its state. */
static void
pass(struct conn_loop *lp, struct table *t)
{
	struct conn *c;
	unsigned want;
	int i;

	for (i = t->n - 1; i >= 0; i--) {
		if (i >= t->n)
			continue;
		c = t->conns[i];
		want = conn_interest(c);
		if (want & CONN_WANT_WRITE)
			conn_writable(lp, c);
		if (want & CONN_WANT_READ)
			conn_readable(lp, c);
		conn_event_done(lp);
	}
}

static int
run(struct srv *s, int lfd, int sfd, long sleep_us)
{
	struct timespec nap = { .tv_sec = sleep_us / 1000000,
	    .tv_nsec = sleep_us % 1000000 * 1000 };
	struct table t = { 0 };
	struct conn_loop lp;
	unsigned long before;
	int r;

	if ((r = conn_loop_init(&lp, s, lfd, &tb_ops, &t, 0, 0)) < 0) {
		srv_warn(s, "cannot set up the loop: %s", strerror(-r));
		return SRV_EX_OSERR;
	}
	for (;;) {
		/* Timeouts, linger, the stop deadline: polled like the rest. */
		(void)conn_tick(&lp);
		if (conn_loop_done(&lp))
			break;
		before = lp.progress;
		conn_signalfd(&lp, sfd);
		pass(&lp, &t);
		if (lp.accepting)
			conn_accept(&lp);
		if (sleep_us > 0 && lp.progress == before)
			(void)nanosleep(&nap, NULL);
	}
	conn_loop_fini(&lp);
	free(t.conns);
	return SRV_EX_OK;
}

static const struct srv_option options[] = {
	{ "sleep-us", 1, OPT_SLEEP, "N", "sleep N microseconds after a pass "
	    "that found nothing to do (default 0: spin)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int
on_option(struct srv *s, int key, const char *arg)
{
	long *sleep_us = s->model_data;

	if (key != OPT_SLEEP)
		return -1;
	*sleep_us = (long)srv_parse_num(s, "--sleep-us", arg, 0, 1000000, 0);
	return 0;
}

static const struct srv_model model = {
	.name = "echo-nonblock",
	.summary = "Echo server: non-blocking sockets polled in a busy loop, no readiness API.",
	.caps = SRV_CAP_BROADCAST,
	.options = options,
	.on_option = on_option,
};

int
main(int argc, char **argv)
{
	long sleep_us = 0;
	struct srv s;
	int lfd, sfd;

	srv_init(&s, &model, argc, argv, &sleep_us);
	lfd = conn_loop_listen(&s, &sfd);
	srv_ready(&s);
	return run(&s, lfd, sfd, sleep_us);
}

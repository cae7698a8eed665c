/*
 * echo-bench: a connection's life (connect, hello, messages, checks) and
 * the load thread's loop, whatever engine moves the bytes.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "bench.h"

static int bconn_start(struct bthread *t, struct bench_conn *c);

void
bconn_fail(struct bthread *t, struct bench_conn *c, int err)
{
	if (c->state == BC_DEAD)
		return;
	if (err) {
		t->errors++;
		t->last_err = err;
	}
	if (c->state == BC_CONNECTING || c->state == BC_HELLO) {
		t->connecting--;
		if (opt.mode != MODE_CHURN || c->idle)
			atomic_fetch_add(&bench_run.setup_done, 1);
	}
	if (c->idle && c->state == BC_IDLE)
		t->idle_lost++;
	t->inwin -= c->inwin;
	t->unfinished += c->inwin;
	c->inwin = 0;
	/*
	 * A recv in flight on an engine (io_uring) holds a reference to the socket, so
	 * close() alone would neither end it nor send our FIN: shut down
	 * first, and the recv completes (its completion finds BC_DEAD).
	 */
	if (c->fd >= 0 && c->adopted)
		shutdown(c->fd, SHUT_RDWR);
	if (c->fd >= 0)
		close(c->fd);	/* also leaves the epoll set */
	c->fd = -1;
	c->state = BC_DEAD;
	/* A churn slot goes on; not from here, lest a refused connect recurse. */
	if (opt.mode == MODE_CHURN && !c->idle)
		t->restart[t->nrestart++] = c->idx;
}

static int
in_window(int64_t ts)
{
	return ts >= bench_run.t_start && ts < bench_run.t_end;
}

/* Intended send time of message K of an open-loop connection. */
static int64_t
open_stamp(const struct bthread *t, const struct bench_conn *c, uint64_t k)
{
	double slot = (double)(k + c->kbase) * t->nactive + c->idx;

	return bench_run.t_go + (int64_t)(slot * 1e9 / t->rate);
}

static int64_t
msg_stamp(const struct bthread *t, const struct bench_conn *c, uint64_t k)
{
	if (opt.mode == MODE_OPEN)
		return open_stamp(t, c, k);
	if (opt.mode == MODE_CHURN)
		return c->t_conn;
	return c->stamp[k % opt.depth];
}

/* Queue one message stamped TS. */
static void
bconn_queue(struct bthread *t, struct bench_conn *c, int64_t ts)
{
	if (opt.mode == MODE_CLOSED)
		c->stamp[c->sent % opt.depth] = ts;
	c->sent++;
	c->tx_goal += bench_wire.msg_tx;
	c->rx_goal += bench_wire.msg_rx;
	if (atomic_load_explicit(&bench_run.go, memory_order_acquire) &&
	    in_window(ts)) {
		c->inwin++;
		t->inwin++;
	}
}

/* Echo of message C->done is complete at NOW. */
static void
bconn_message_done(struct bthread *t, struct bench_conn *c, int64_t now)
{
	int64_t ts = msg_stamp(t, c, c->done);
	int go = atomic_load_explicit(&bench_run.go, memory_order_acquire);

	c->done++;
	if (go && in_window(ts)) {
		hist_add(&t->hist, now > ts ? (uint64_t)(now - ts) : 0);
		t->msgs++;
		c->done_win++;
		c->inwin--;
		t->inwin--;
	}
	if (opt.mode == MODE_CHURN) {
		if (go && in_window(ts))
			t->cycles++;
		close(c->fd);
		c->fd = -1;
		c->state = BC_NEW;
		if (!t->draining && !atomic_load(&bench_run.stop))
			bconn_start(t, c);
		return;
	}
	if (opt.mode == MODE_CLOSED && !t->draining && !atomic_load(&bench_run.stop))
		bconn_queue(t, c, now);
}

/* Bytes are queued: get them moving, whichever engine carries them. */
static void
bconn_kick(struct bthread *t, struct bench_conn *c)
{
	if (c->adopted)
		t->engine->send(t, c);
	else if (!c->pollout)
		bconn_flush(t, c);
}

/* N bytes of echo arrived in BUF at NOW: check them, count messages. */
void
bconn_input(struct bthread *t, struct bench_conn *c, const uint8_t *buf, size_t n,
    int64_t now)
{
	size_t off, got;
	int i;

	if ((uint64_t)n > c->rx_goal - c->rx) {
		/* More than we ever asked for: the server invented bytes. */
		t->mismatches++;
		bconn_fail(t, c, 0);
		return;
	}
	off = (c->rseed + c->rx) % (bench_wire.units * bench_wire.unit_rx);
	if (!opt.proto->check(bench_wire.rx + off, buf, n)) {
		t->mismatches++;
		bconn_fail(t, c, 0);
		return;
	}
	c->rx += n;
	if (c->state == BC_HELLO) {
		t->connecting--;
		atomic_fetch_add(&bench_run.setup_done, 1);
		if (c->idle) {
			c->state = BC_IDLE;
			return;
		}
		c->state = BC_RUNNING;
		c->base = c->rx;
		if (t->engine->adopt)
			t->engine->adopt(t, c);
		/*
		 * Traffic starts when every connection is set up (GO): a
		 * server busy echoing would otherwise starve its own accept
		 * loop (a fork-per-connection parent gets 1/N of a CPU) and
		 * set-up would take ages.  Open loop: the schedule says when.
		 */
		if (opt.mode == MODE_CLOSED && atomic_load(&bench_run.go))
			for (i = 0; i < opt.depth; i++)
				bconn_queue(t, c, now);
	}
	for (got = c->rx - c->base; c->done < c->sent &&
	    got >= (c->done + 1) * bench_wire.msg_rx;) {
		bconn_message_done(t, c, now);
		if (c->state != BC_RUNNING)
			return;
	}
	if (c->tx_goal > c->tx)
		bconn_kick(t, c);
}

static int
bconn_socket(struct bthread *t, struct bench_conn *c)
{
	int fd, r;

	fd = socket(opt.addr.ss.ss_family,
	    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (opt.addr.ss.ss_family != AF_UNIX && (r = net_set_nodelay(fd)) < 0) {
		close(fd);
		return r;
	}
	c->fd = fd;
	c->tx = c->tx_goal = c->rx = c->rx_goal = c->base = 0;
	c->sent = c->done = 0;
	c->pollout = 0;
	if (connect(fd, (const struct sockaddr *)&opt.addr.ss, opt.addr.len) == 0)
		return 1;
	if (errno == EINPROGRESS)
		return 0;
	r = -errno;
	close(fd);
	c->fd = -1;
	return r;
}

/*
 * Start connecting C.  A unix socket whose backlog is full says EAGAIN
 * instead of queueing the connect: try again a little later.
 */
static int
bconn_start(struct bthread *t, struct bench_conn *c)
{
	int r;

	c->t_conn = now_ns();
	r = bconn_socket(t, c);
	if (r == -EAGAIN) {
		t->retry_at = c->t_conn + 1000000;
		return -EAGAIN;
	}
	if (r < 0) {
		t->connect_fail++;
		c->state = BC_CONNECTING;
		t->connecting++;
		bconn_fail(t, c, -r);
		return 0;
	}
	c->state = BC_CONNECTING;
	t->connecting++;
	if (bconn_interest(t, c, EPOLLOUT, EPOLL_CTL_ADD) < 0) {
		bconn_fail(t, c, errno);
		return 0;
	}
	if (r == 1)
		bconn_connected(t, c);
	return 0;
}

void
bconn_connected(struct bthread *t, struct bench_conn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		t->connect_fail++;
		bconn_fail(t, c, err);
		return;
	}
	if (opt.mode == MODE_CHURN && !c->idle) {
		t->connecting--;
		c->state = BC_RUNNING;
		bconn_queue(t, c, c->t_conn);
	} else {
		/*
		 * A connect completes in the kernel, before the server has
		 * accepted: echo one byte (rpc: one frame) first, so that
		 * when set-up is over the server really holds every
		 * connection (its process or thread exists, its descriptor
		 * is in its interest set).
		 */
		c->state = BC_HELLO;
		c->tx_goal = bench_wire.hello_tx;
		c->rx_goal = bench_wire.hello_rx;
	}
	if (bconn_interest(t, c, EPOLLIN, EPOLL_CTL_MOD) < 0) {
		bconn_fail(t, c, errno);
		return;
	}
	bconn_flush(t, c);
}

/* Launch connections, a window at a time, actives first. */
static void
thread_launch(struct bthread *t, int64_t now)
{
	int i, k, n, nidle, *batch;

	if (now < t->retry_at)
		return;
	if (t->nrestart && atomic_load(&bench_run.go)) {
		/* Churn slots that failed: again, but not in a tight loop. */
		batch = t->restart;
		t->restart = t->restart2;
		t->restart2 = batch;
		n = t->nrestart;
		t->nrestart = 0;
		t->retry_at = now + 1000000;
		for (i = 0; i < n; i++)
			bconn_start(t, &t->conns[batch[i]]);
	}
	nidle = t->nconns - t->nactive;
	while (t->next < t->nconns && t->connecting < BENCH_CONNECTING_MAX) {
		/*
		 * Churn sets up its idle connections first and starts the
		 * churning slots at GO; the other modes connect the active
		 * ones first, so a server that serves one client at a time
		 * gets an active one.
		 */
		k = t->next;
		if (opt.mode == MODE_CHURN) {
			if (k >= nidle && !atomic_load(&bench_run.go))
				return;
			k = k < nidle ? t->nactive + k : k - nidle;
		}
		if (bconn_start(t, &t->conns[k]) == -EAGAIN)
			return;
		t->next++;
	}
}

/* Closed loop, at GO: every connection set up so far starts sending. */
static void
thread_start(struct bthread *t, int64_t now)
{
	struct bench_conn *c;
	int i, k;

	if (opt.mode != MODE_CLOSED)
		return;
	for (i = 0; i < t->nactive; i++) {
		c = &t->conns[i];
		if (c->state != BC_RUNNING || c->sent)
			continue;
		for (k = 0; k < opt.depth; k++)
			bconn_queue(t, c, now);
		bconn_kick(t, c);
	}
}

/* Open loop: send every message whose time has come. */
static void
thread_schedule(struct bthread *t, int64_t now)
{
	uint64_t due;
	struct bench_conn *c;

	if (now < bench_run.t_go)
		return;
	due = (uint64_t)((double)(now - bench_run.t_go) * t->rate / 1e9) + 1;
	if (now >= bench_run.t_end) {
		uint64_t last = (uint64_t)ceil((double)(bench_run.t_end - bench_run.t_go) *
		    t->rate / 1e9);
		if (due > last)
			due = last;
	}
	for (; t->issued < due; t->issued++) {
		c = &t->conns[t->issued % t->nactive];
		if (c->state != BC_RUNNING)
			continue;	/* a dead connection's slots stay empty */
		if (c->sent == 0)
			c->kbase = t->issued / t->nactive;
		bconn_queue(t, c, open_stamp(t, c, c->sent));
		bconn_kick(t, c);
	}
}

/* How long the engine may wait for events. */
static int64_t
thread_timeout(struct bthread *t, int go, int64_t now)
{
	int64_t until = now + 20 * 1000000LL;	/* look at the flags */
	int64_t next;

	if (t->next < t->nconns && t->retry_at > now && t->retry_at < until)
		until = t->retry_at;
	if (go && opt.mode == MODE_OPEN && t->rate > 0 && now < bench_run.t_end) {
		next = bench_run.t_go + (int64_t)((double)t->issued * 1e9 / t->rate);
		if (next < until)
			until = next;
	}
	if (go && t->window == 0 && bench_run.t_start < until)
		until = bench_run.t_start;
	if (go && !t->draining && bench_run.t_end < until)
		until = bench_run.t_end;
	return until > now ? until - now : 0;
}

/* The end: what never came back is counted, at its lower bound. */
static void
thread_unfinished(struct bthread *t, int64_t now)
{
	struct bench_conn *c;
	uint64_t k;
	int64_t ts;
	int i;

	for (i = 0; i < t->nactive; i++) {
		c = &t->conns[i];
		if (c->state == BC_DEAD || !c->inwin)
			continue;
		for (k = c->done; k < c->sent; k++) {
			ts = msg_stamp(t, c, k);
			if (in_window(ts))
				hist_add(&t->hist, (uint64_t)(now - ts));
		}
		t->unfinished += c->inwin;
		c->inwin = 0;
	}
}

void *
thread_main(void *arg)
{
	struct bthread *t = arg;
	int64_t now, deadline = 0;
	int go, i, n;

	/*
	 * Made here, not by the main thread: io_uring's SINGLE_ISSUER binds
	 * a ring to the task that makes it.
	 */
	if (t->engine->make && (n = t->engine->make(t)) < 0) {
		fprintf(stderr, "%s: warning: thread %d: no %s (%s), using "
		    "epoll\n", BENCH_PROG, t->id, t->engine->name, strerror(-n));
		t->engine = &bench_engine_epoll;
	}
	t->used_ring = t->engine != &bench_engine_epoll;
	for (;;) {
		now = now_ns();
		go = atomic_load_explicit(&bench_run.go, memory_order_acquire);
		/*
		 * The thread's own CPU clock at the window's edges: a thread
		 * may be gone by the time the main thread looks.
		 */
		if (go && t->window == 0 && now >= bench_run.t_start) {
			t->cpu0 = thread_cpu_ns();
			t->window = 1;
		}
		if (go && t->window == 1 && now >= bench_run.t_end) {
			t->cpu1 = thread_cpu_ns();
			t->window = 2;
		}
		if (atomic_load(&bench_run.stop) && !t->draining) {
			t->draining = 1;
			deadline = now + BENCH_DRAIN_NS;
		}
		if (go && !t->draining && now >= bench_run.t_end) {
			t->draining = 1;
			deadline = bench_run.t_end + BENCH_DRAIN_NS;
		}
		if (t->draining && (t->inwin == 0 || now >= deadline))
			break;
		if (go && !t->started) {
			t->started = 1;
			thread_start(t, now);
		}
		if (!t->draining)
			thread_launch(t, now);
		if (go && opt.mode == MODE_OPEN)
			thread_schedule(t, now);
		if ((n = t->engine->wait(t, thread_timeout(t, go, now))) < 0) {
			fprintf(stderr, "%s: %s: %s\n", BENCH_PROG,
			    t->engine->name, strerror(-n));
			break;
		}
	}
	if (t->window == 1)		/* interrupted */
		t->cpu1 = thread_cpu_ns();
	thread_unfinished(t, now_ns());
	/*
	 * Keep the connections open until the main thread has read the
	 * server's figures: a thread-per-connection server loses its
	 * threads' CPU time, and every server its memory, when they close.
	 */
	while (!atomic_load(&bench_run.measured))
		usleep(1000);
	for (i = 0; i < t->nconns; i++)
		if (t->conns[i].fd >= 0)
			close(t->conns[i].fd);
	if (t->engine->free)
		t->engine->free(t);
	return NULL;
}


/*
 * echo-bench --fanout: the documents' chat room under load.  N clients join
 * a server speaking -s chat; the first talks, the others listen.  The
 * talker sends numbered lines, at most DEPTH ahead of what the first
 * listener has heard, and every listener checks every line it hears:
 * "[NAME] SEQ TEXT", SEQ one more than the last, TEXT what that SEQ must
 * carry.  What counts is lines delivered (to every listener) per second,
 * their latency from the talker's send, and, with --server-pid, the
 * server's CPU per delivered line: one read, N-1 writes (or queueings).
 *
 * Notices ("* NAME joined", the welcome) are skipped; the welcome is how a
 * listener knows the server holds it, as the hello byte of the echo modes.
 * One thread, plain epoll: the talker's lines are small and its socket
 * stays blocking for writes, which a chat server reads as they come.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "bench.h"

#define FAN_LINE_MAX	4096
#define FAN_RING	4096	/* send times kept, by SEQ modulo */

struct fan_conn {
	int		 fd;
	int		 welcomed;
	uint32_t	 next_seq;	/* listener: the line expected next */
	size_t		 len;		/* bytes of a partial line in buf */
	char		 buf[FAN_LINE_MAX];
};

struct fanout {
	struct bthread	*t;
	struct fan_conn	*c;
	int		 n, epfd;
	size_t		 text;		/* TEXT bytes of a line */
	uint32_t	 sent;		/* lines the talker sent */
	uint32_t	 heard;		/* lines the first listener heard */
	int64_t		 at[FAN_RING];	/* when line SEQ % FAN_RING left */
};

static const char fan_alnum[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/* The TEXT of line SEQ: printable, no blank, never a "/command". */
static void
fan_text(uint32_t seq, char *out, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		out[i] = fan_alnum[(seq * 7u + i) % 62];
}

static int
fan_connect(struct fan_conn *c)
{
	int fd = socket(opt.addr.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if (connect(fd, (const struct sockaddr *)&opt.addr.ss,
	    opt.addr.len) < 0) {
		int e = errno;

		close(fd);
		return -e;
	}
	c->fd = fd;
	return 0;
}

static void
fan_send(struct fanout *f, int64_t now)
{
	char line[FAN_LINE_MAX];
	int n;

	n = snprintf(line, sizeof(line), "%010u ", f->sent);
	fan_text(f->sent, line + n, f->text);
	line[n + f->text] = '\n';
	if (net_write_all(f->c[0].fd, line, n + f->text + 1) < 0) {
		f->t->errors++;
		f->t->last_err = errno;
		return;
	}
	f->at[f->sent % FAN_RING] = now;
	f->sent++;
}

/* One complete line LINE (no newline) heard by listener K. */
static void
fan_line(struct fanout *f, int k, const char *line, size_t len, int64_t now)
{
	struct fan_conn *c = &f->c[k];
	char want[FAN_LINE_MAX];
	const char *p;
	unsigned long seq;
	char *end;
	int64_t ts;

	if (len >= 2 && line[0] == '*' && line[1] == ' ') {
		if (!c->welcomed && len >= 9 && memcmp(line, "* welcome", 9) == 0) {
			c->welcomed = 1;
			atomic_fetch_add(&bench_run.setup_done, 1);
		}
		return;
	}
	if (k == 0) {
		/* The talker hears only notices: not a chat server (an echo). */
		f->t->mismatches++;
		return;
	}
	p = memchr(line, ']', len);
	if (line[0] != '[' || !p || (size_t)(p - line) + 2 > len || p[1] != ' ')
		goto bad;
	p += 2;
	seq = strtoul(p, &end, 10);
	if (end != p + 10 || *end != ' ' || seq != c->next_seq ||
	    (size_t)(line + len - (end + 1)) != f->text)
		goto bad;
	fan_text((uint32_t)seq, want, f->text);
	if (memcmp(end + 1, want, f->text) != 0)
		goto bad;
	c->next_seq++;
	ts = f->at[seq % FAN_RING];
	if (atomic_load_explicit(&bench_run.go, memory_order_acquire) &&
	    ts >= bench_run.t_start && ts < bench_run.t_end) {
		hist_add(&f->t->hist, now > ts ? (uint64_t)(now - ts) : 0);
		f->t->msgs++;
	}
	if (k == 1)
		f->heard = (uint32_t)seq + 1;
	return;
bad:
	f->t->mismatches++;
	c->next_seq++;		/* count each bad line once, go on */
}

static void
fan_read(struct fanout *f, int k, int64_t now)
{
	struct fan_conn *c = &f->c[k];
	char *nl, *p;
	ssize_t n;

	n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		f->t->errors++;
		f->t->last_err = n < 0 ? errno : ECONNRESET;
		epoll_ctl(f->epfd, EPOLL_CTL_DEL, c->fd, NULL);
		return;
	}
	c->len += n;
	for (p = c->buf; (nl = memchr(p, '\n', c->buf + c->len - p)); p = nl + 1)
		fan_line(f, k, p, nl - p, now);
	c->len -= p - c->buf;
	memmove(c->buf, p, c->len);
	if (c->len == sizeof(c->buf)) {		/* a line longer than any we send */
		f->t->mismatches++;
		c->len = 0;
	}
}

void *
fanout_main(void *arg)
{
	struct fanout *f;
	struct epoll_event ev[64];
	struct bthread *t = arg;
	int64_t now;
	int i, k, n, go, r;

	if ((f = calloc(1, sizeof(*f))) == NULL ||
	    (f->c = calloc(opt.conns, sizeof(*f->c))) == NULL)
		abort();
	f->t = t;
	f->n = opt.conns;
	f->text = opt.size > 12 ? opt.size - 12 : 1;
	if (f->text > FAN_LINE_MAX / 2)
		f->text = FAN_LINE_MAX / 2;
	if ((f->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
		abort();
	for (i = 0; i < f->n; i++) {
		struct epoll_event e = { .events = EPOLLIN, .data.u32 = i };

		f->c[i].fd = -1;
		if ((r = fan_connect(&f->c[i])) < 0) {
			t->connect_fail++;
			t->errors++;
			t->last_err = -r;
			atomic_fetch_add(&bench_run.setup_done, 1);
			continue;
		}
		epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->c[i].fd, &e);
	}
	for (;;) {
		now = now_ns();
		go = atomic_load_explicit(&bench_run.go, memory_order_acquire);
		if (go && t->window == 0 && now >= bench_run.t_start) {
			t->cpu0 = thread_cpu_ns();
			t->window = 1;
		}
		if (go && t->window == 1 && now >= bench_run.t_end) {
			t->cpu1 = thread_cpu_ns();
			t->window = 2;
		}
		if (atomic_load(&bench_run.stop) ||
		    (go && now >= bench_run.t_end + BENCH_DRAIN_NS / 10))
			break;
		/* The talker runs DEPTH lines ahead of the first listener. */
		if (go && now < bench_run.t_end && f->c[0].fd >= 0 &&
		    f->c[1].fd >= 0)
			while (f->sent < f->heard + (uint32_t)opt.depth)
				fan_send(f, now);
		n = epoll_wait(f->epfd, ev, 64, 5);
		now = now_ns();
		for (i = 0; i < n; i++) {
			k = (int)ev[i].data.u32;
			fan_read(f, k, now);
		}
	}
	if (t->window == 1)
		t->cpu1 = thread_cpu_ns();
	while (!atomic_load(&bench_run.measured))
		usleep(1000);
	for (i = 0; i < f->n; i++)
		if (f->c[i].fd >= 0)
			close(f->c[i].fd);
	close(f->epfd);
	free(f->c);
	free(f);
	return NULL;
}

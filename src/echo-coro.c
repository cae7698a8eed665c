/*
 * echo-coro — coroutines: every connection is served by plain blocking
 * code (read, feed the service, write the reply, until EOF), each on a
 * stack of its own, all in one thread.  A read or write that would block
 * (EAGAIN) parks the coroutine on an epoll readiness event and switches to
 * the scheduler, which runs whichever coroutines epoll says are ready: the
 * documents' gevent (004, section 5), "switch on IO, in one thread".
 *
 * Cost: per message, the syscalls of echo-epoll (read, write, and an
 * epoll_wait shared by a batch) plus two context switches in user space,
 * to the coroutine and back: a few nanoseconds each with the hand-written
 * switch (x86-64, aarch64: save the callee-saved registers, swap the stack
 * pointer), against a system call each with glibc's swapcontext(), which
 * saves and restores the signal mask with rt_sigprocmask (--switch
 * ucontext, to measure it; the default is the hand-written one where it
 * exists).  A connection costs a stack: --stack bytes of address space
 * (128 KiB by default), mmap'd with a guard page below it so an overflow
 * faults instead of writing over a neighbour, of which only the pages
 * touched are memory (a parked echo coroutine touches about two); plus
 * its struct and the service's state.  The read buffer is shared: only
 * one coroutine runs at a time, and a coroutine never parks while the
 * service holds a pointer into it (see below).
 *
 * Pitfalls handled here:
 *   - parking inside the service's reply() would leave the shared read
 *     buffer in use while another coroutine reads into it: reply() writes
 *     what the socket takes and queues the rest, and the coroutine parks
 *     on EPOLLOUT once the service returns, until its queue is empty.  It
 *     reads nothing meanwhile: a client that sends without reading paces
 *     itself (backpressure), bounded by one read's worth of output;
 *   - chat: one thread holds every connection, so a broadcast queues a
 *     copy to each other connection and wakes its coroutine if it is
 *     parked in read; a sender never writes to another client's socket.
 *     A recipient over --highwater that reads paces the senders (they
 *     park before their next read until it drains: congest()); one that
 *     makes no progress for SRV_STALL_MS does not read, and is dropped
 *     at --max-pending (the other models' policy);
 *   - epoll is edge-triggered (one epoll_ctl per connection, none per
 *     park): a coroutine parks only after its read or write said EAGAIN,
 *     and no readiness edge can fall between that call and the park,
 *     since only the scheduler calls epoll_wait;
 *   - a coroutine cannot free the stack it runs on: it marks itself dead
 *     and switches away for the last time, and the scheduler frees it
 *     (freed stacks are kept for reuse, up to STACK_CACHE);
 *   - AddressSanitizer must be told of every stack switch
 *     (__sanitizer_start/finish_switch_fiber), or it reports the
 *     coroutine stacks as overflows of the main one;
 *   - stop: the listener closes, coroutines parked in read are woken to
 *     end at once, those still writing get SRV_STOP_GRACE_MS.
 */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <ucontext.h>
#include <unistd.h>

#include "net.h"
#include "outq.h"
#include "server.h"
#include "service.h"

#if defined(__SANITIZE_ADDRESS__)
#define CORO_ASAN	1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CORO_ASAN	1
#endif
#endif
#ifdef CORO_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__) || defined(__aarch64__)
#define CORO_HAVE_ASM	1
#endif

#define ACCEPTS_PER_WAKE 64
#define MAX_EVENTS	256
#define STACK_CACHE	128	/* freed stacks kept for new connections */
#define SERVE_BURST	16	/* reads in a row before letting others run */
#define OPT_STACK	256
/*
 * The smallest --stack: the deepest request a service accepts (rpc: 64
 * levels, parsed recursively by jansson, with 8 KiB of answers gathered
 * on the stack) needs about 40k with ASan (echo-thread measured it); a
 * smaller stack would fault on its guard page on a valid request.
 */
#define STACK_MIN	(64 * 1024)
#define OPT_SWITCH	257
/* What a paced coroutine parks on: no epoll event, only a wake-up. */
#define WAIT_PACED	(1u << 20)

/* A coroutine's saved context: a stack pointer, or a ucontext. */
struct ctx {
	void		*sp;
	ucontext_t	*uc;
	void		*stack;		/* lowest usable byte (for ASan) */
	size_t		 size;
};

struct coro {
	struct ctx	 ctx;
	void		*map;		/* the mapping: guard page + stack */
	int		 fd;
	uint32_t	 wait;		/* EPOLLIN/EPOLLOUT parked on; 0: not */
	int		 wake_err;	/* why woken: 0, or -ETIMEDOUT, ... */
	unsigned	 ready : 1;	/* on the run queue */
	unsigned	 dead : 1;	/* finished: free its stack */
	unsigned	 dropped : 1;	/* chat: not reading, disconnected */
	unsigned	 opened : 1;	/* in the room: svc_open ran */
	unsigned	 closing : 1;	/* out of the room (svc_close ran) */
	unsigned	 congested : 1;	/* chat: over --highwater, pacing */
	unsigned	 stalled : 1;	/* congested, no progress for a while */
	struct outq	 out;		/* output not yet written */
	int64_t		 last;		/* last activity, for -t */
	int64_t		 prog;		/* congested: last write progress */
	struct coro	*prev, *next;	/* every connection, least recent first */
	struct coro	*run_next;
	struct svc_sink	 sink;
	char		 peer[NET_ADDRSTRLEN];
#ifdef CORO_ASAN
	void		*fake;		/* ASan's fake stack while away */
#endif
	uint64_t	 state[];	/* the service's */
};

struct opts {
	size_t	stack;
	int	ucontext;
};

/*
 * The scheduler.  One per process, and a coroutine must reach it from
 * its entry function, which takes no argument: the one global.
 */
static struct sched {
	struct srv	*srv;
	const struct opts *o;
	struct ctx	 main;
	struct coro	*cur;		/* running, or NULL in the scheduler */
	struct coro	*run_head, *run_tail;
	struct coro	*lru_head, *lru_tail;
	int		 nconns;
	int		 ncongest;	/* recipients pacing the senders */
	int		 ep, lfd, sfd, reserve;
	int		 accepting;	/* lfd is in the epoll set */
	int		 stopping;
	int64_t		 stop_deadline;
	uint8_t		*rbuf;		/* shared: see the top of the file */
	void		*stacks[STACK_CACHE];
	int		 nstacks;
	size_t		 page;
} S;

/* Tags of the two descriptors that are not connections. */
static char tag_listen, tag_signal;

static int	co_park(struct coro *, uint32_t events);
static int	co_yield(struct coro *);
static int	co_flush(struct coro *);
static int	sink_reply(struct svc_sink *, const void *, size_t);
static int	sink_broadcast(struct svc_sink *, const void *, size_t);
static void	sched_wake(struct coro *, int err);
static void	lru_touch(struct coro *);
static void	decongest(struct coro *, int stalled);
static void	switch_to(struct ctx *from, struct ctx *to, int dying);

/* ---- the serve loop, run by each coroutine --------------------------------- */

/*
 * The blocking models' loop, written as if read() and write() blocked:
 * flush what is queued, read, feed the service, until EOF.  co_park()
 * returns 0 when woken by readiness or by output queued for us (a chat
 * broadcast), < 0 when the scheduler wants us gone.
 */
static void
serve(struct coro *c)
{
	const struct srv *s = S.srv;
	ssize_t n;
	int r = 0, burst = 0;

	/* Heard nothing of the room before its own welcome. */
	c->opened = 1;
	if (svc_open(s->svc, &s->svc_cfg, c->state, &c->sink) < 0)
		goto out;
	for (;;) {
		if (co_flush(c) < 0)
			goto out;
		if (S.ncongest > 0 && (s->svc->flags & SVC_NEEDS_BROADCAST)) {
			/* Paced (see congest()); woken to flush, it comes back. */
			if (co_park(c, WAIT_PACED) < 0)
				goto out;
			continue;
		}
		n = read(c->fd, S.rbuf, s->bufsize);
		if (n > 0) {
			lru_touch(c);
			r = svc_input(s->svc, &s->svc_cfg, c->state, S.rbuf,
			    (size_t)n, &c->sink);
			if (r < 0) {
				(void)co_flush(c);	/* its last answer */
				goto out;
			}
			/* A client that never pauses must not keep the CPU. */
			if (++burst == SERVE_BURST) {
				burst = 0;
				if (co_yield(c) < 0)
					goto out;
			}
			continue;
		}
		if (n == 0)
			break;		/* EOF: everything sent was answered */
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN || co_park(c, EPOLLIN) < 0)
			goto out;
		burst = 0;
	}
out:
	c->closing = 1;
	decongest(c, 0);
	svc_close(s->svc, &s->svc_cfg, c->state, &c->sink);
	if (c->dropped)
		srv_log(s, "%s: %zu bytes of output pending, not reading: "
		    "disconnected", c->peer, c->out.pending);
}

/* Every coroutine starts here, on its own stack, and never returns. */
static void
coro_main(void)
{
	struct coro *c = S.cur;

#ifdef CORO_ASAN
	__sanitizer_finish_switch_fiber(NULL, (const void **)&S.main.stack,
	    &S.main.size);
#endif
	c->wait = 0;
	serve(c);
	c->dead = 1;
	switch_to(&c->ctx, &S.main, 1);
	abort();	/* the scheduler never resumes a dead coroutine */
}

/* ---- the scheduler ---------------------------------------------------------- */

static void	sched_accept(void);
static void	sched_stop(void);
static int	sched_timeout(void);
static void	sched_expire(void);
static void	coro_free(struct coro *);

/*
 * Run the coroutines that are ready now.  Those made ready meanwhile
 * (woken by a broadcast, or yielding) wait for the next round, after a
 * look at epoll: a coroutine that always has input must not starve the
 * others.
 */
static void
sched_run_ready(void)
{
	struct coro *c, *list = S.run_head;

	S.run_head = S.run_tail = NULL;
	while ((c = list) != NULL) {
		list = c->run_next;
		c->ready = 0;
		S.cur = c;
		switch_to(&S.main, &c->ctx, 0);
		S.cur = NULL;
		if (c->dead)
			coro_free(c);
	}
}

static int
run(void)
{
	struct epoll_event ev[MAX_EVENTS];
	struct signalfd_siginfo si;
	struct coro *c;
	int i, n;

	for (;;) {
		sched_run_ready();
		if (S.stopping && S.nconns == 0)
			return SRV_EX_OK;
		n = epoll_wait(S.ep, ev, MAX_EVENTS, sched_timeout());
		if (n < 0 && errno != EINTR) {
			srv_warn(S.srv, "epoll_wait: %s", strerror(errno));
			return SRV_EX_OSERR;
		}
		for (i = 0; i < n; i++) {
			if (ev[i].data.ptr == &tag_listen) {
				sched_accept();
				continue;
			}
			if (ev[i].data.ptr == &tag_signal) {
				while (read(S.sfd, &si, sizeof(si)) ==
				    (ssize_t)sizeof(si))
					srv_debug(S.srv, "signal %u: stopping",
					    si.ssi_signo);
				sched_stop();
				continue;
			}
			/* Readiness it waits for, or an error: it runs. */
			c = ev[i].data.ptr;
			if (ev[i].events & (c->wait | EPOLLERR | EPOLLHUP))
				if (c->wait)
					sched_wake(c, 0);
		}
		sched_expire();
	}
}

/* ---- parking and waking ---------------------------------------------------- */

/* Give the CPU back until EVENTS (EPOLLIN or EPOLLOUT) or a wake-up. */
static int
co_park(struct coro *c, uint32_t events)
{
	if (S.stopping && (events == EPOLLIN || events == WAIT_PACED))
		return -ESHUTDOWN;	/* idle at stop: end now */
	c->wait = events;
	c->wake_err = 0;
	switch_to(&c->ctx, &S.main, 0);
	c->wait = 0;
	return c->wake_err;
}

/* Back of the run queue: the others that are ready run first. */
static int
co_yield(struct coro *c)
{
	c->wait = EPOLLIN | EPOLLOUT;
	c->wake_err = 0;
	sched_wake(c, 0);
	switch_to(&c->ctx, &S.main, 0);
	c->wait = 0;
	return c->wake_err;
}

/* Put C on the run queue (once); ERR is what its co_park() returns. */
static void
sched_wake(struct coro *c, int err)
{
	if (err < 0 && c->wake_err == 0)
		c->wake_err = err;
	if (c->ready || c->wait == 0)
		return;
	c->ready = 1;
	c->run_next = NULL;
	if (S.run_tail)
		S.run_tail->run_next = c;
	else
		S.run_head = c;
	S.run_tail = c;
}

/* ---- output: write what the socket takes, queue the rest ------------------ */

/*
 * The service's reply: written at once when nothing is queued before it,
 * else queued (outq_send).  Never parks (the service may be reading the
 * shared buffer); serve() flushes after it.  A write error is left for
 * the next read or write to say.
 */
static int
sink_reply(struct svc_sink *sink, const void *buf, size_t len)
{
	struct coro *c = sink->conn;
	int r = outq_send(&c->out, c->fd, buf, len);

	return r == -ENOMEM ? r : 0;
}

/*
 * Pacing (SRV_STALL_MS in server.h): while a recipient is congested, a
 * coroutine whose input would be broadcast parks before its next read
 * (WAIT_PACED), until the recipient drains to half the mark, leaves, or
 * counts as stalled.  It parks between reads, never in the broadcast
 * itself (the service holds the shared buffer then), so a recipient's
 * queue passes the mark by at most one read's worth per sender.
 */
static void
congest(struct coro *c)
{
	if (c->congested || c->stalled ||
	    c->out.pending < S.srv->highwater)
		return;
	c->congested = 1;
	c->prog = srv_now_ms();
	S.ncongest++;
}

static void
decongest(struct coro *c, int stalled)
{
	struct coro *p;

	if (!c->congested)
		return;
	c->congested = 0;
	if (stalled) {
		c->stalled = 1;
		srv_debug(S.srv, "%s: no progress for %d ms with %zu bytes "
		    "queued: no longer pacing the others", c->peer,
		    SRV_STALL_MS, c->out.pending);
	}
	if (--S.ncongest > 0)
		return;
	for (p = S.lru_head; p; p = p->next)
		if (p->wait == WAIT_PACED)
			sched_wake(p, 0);
}

/*
 * Chat: a copy to every other connection of the room, never a write to
 * another client's socket from here (it may be slow), never a wait.
 */
static int
sink_broadcast(struct svc_sink *sink, const void *buf, size_t len)
{
	struct coro *self = sink->conn, *c;
	size_t cap = S.srv->svc_cfg.max_pending;

	for (c = S.lru_head; c; c = c->next) {
		if (c == self || !c->opened || c->closing || c->dropped)
			continue;
		if (c->out.pending + len > cap) {
			c->dropped = 1;
			sched_wake(c, -ECONNRESET);
			continue;
		}
		if (outq_push(&c->out, buf, len) < 0)
			return -ENOMEM;
		congest(c);
		if (c->wait == EPOLLIN || c->wait == WAIT_PACED)
			sched_wake(c, 0);	/* it flushes, then reads again */
	}
	return 0;
}

/* Write the queue out, parking while the socket is full. */
static int
co_flush(struct coro *c)
{
	size_t before;
	int r;

	while (c->out.pending > 0) {
		if (c->dropped)
			return -ECONNRESET;
		before = c->out.pending;
		if ((r = outq_write(&c->out, c->fd)) < 0)
			return r;
		if (c->out.pending != before) {
			lru_touch(c);
			c->prog = c->last;
			if (c->stalled) {
				/* It reads again: it paces the others again. */
				c->stalled = 0;
				congest(c);
			}
			if (c->out.pending <= S.srv->highwater / 2)
				decongest(c, 0);
		}
		if (c->out.pending > 0 && (r = co_park(c, EPOLLOUT)) < 0)
			return r;
	}
	return 0;
}

/* ---- coroutines: stacks, contexts, the switch ------------------------------ */

#if defined(CORO_HAVE_ASM)
/*
 * coro_switch(&from_sp, to_sp): push the callee-saved registers on the
 * current stack, store the stack pointer, load the other one, pop its
 * registers, return on its stack.  Everything else is caller-saved, so
 * the compiler has already saved what it needs around the call.  The
 * floating-point control words (MXCSR, FPCR) are callee-saved too, but
 * nothing here changes them, so they are not swapped.
 */
void coro_switch(void **from_sp, void *to_sp);
#if defined(__x86_64__)
__asm__(
	".text\n"
	".globl coro_switch\n"
	".hidden coro_switch\n"
	".type coro_switch, @function\n"
	"coro_switch:\n"
	"	.cfi_startproc\n"
	"	endbr64\n"
	"	pushq %rbp\n"
	"	pushq %rbx\n"
	"	pushq %r12\n"
	"	pushq %r13\n"
	"	pushq %r14\n"
	"	pushq %r15\n"
	"	movq %rsp, (%rdi)\n"
	"	movq %rsi, %rsp\n"
	"	popq %r15\n"
	"	popq %r14\n"
	"	popq %r13\n"
	"	popq %r12\n"
	"	popq %rbx\n"
	"	popq %rbp\n"
	"	ret\n"
	"	.cfi_endproc\n"
	".size coro_switch, .-coro_switch\n");
#define SWITCH_FRAME	(6 * 8)
#elif defined(__aarch64__)
__asm__(
	".text\n"
	".globl coro_switch\n"
	".hidden coro_switch\n"
	".type coro_switch, %function\n"
	"coro_switch:\n"
	"	sub sp, sp, #160\n"
	"	stp x19, x20, [sp, #0]\n"
	"	stp x21, x22, [sp, #16]\n"
	"	stp x23, x24, [sp, #32]\n"
	"	stp x25, x26, [sp, #48]\n"
	"	stp x27, x28, [sp, #64]\n"
	"	stp x29, x30, [sp, #80]\n"
	"	stp d8, d9, [sp, #96]\n"
	"	stp d10, d11, [sp, #112]\n"
	"	stp d12, d13, [sp, #128]\n"
	"	stp d14, d15, [sp, #144]\n"
	"	mov x2, sp\n"
	"	str x2, [x0]\n"
	"	mov sp, x1\n"
	"	ldp x19, x20, [sp, #0]\n"
	"	ldp x21, x22, [sp, #16]\n"
	"	ldp x23, x24, [sp, #32]\n"
	"	ldp x25, x26, [sp, #48]\n"
	"	ldp x27, x28, [sp, #64]\n"
	"	ldp x29, x30, [sp, #80]\n"
	"	ldp d8, d9, [sp, #96]\n"
	"	ldp d10, d11, [sp, #112]\n"
	"	ldp d12, d13, [sp, #128]\n"
	"	ldp d14, d15, [sp, #144]\n"
	"	add sp, sp, #160\n"
	"	ret\n"
	".size coro_switch, .-coro_switch\n");
#define SWITCH_FRAME	160
#endif
#endif

/*
 * DYING: the coroutine switching away will never run again (ASan then
 * frees its fake stack).
 */
static void
switch_to(struct ctx *from, struct ctx *to, int dying)
{
#ifdef CORO_ASAN
	static void *main_fake;
	struct coro *self = S.cur;	/* the one switching away, if any */
	void **save = from == &S.main ? &main_fake :
	    dying ? NULL : &self->fake;

	__sanitizer_start_switch_fiber(save, to->stack, to->size);
#endif
#if defined(CORO_HAVE_ASM)
	if (!S.o->ucontext)
		coro_switch(&from->sp, to->sp);
	else
#endif
		(void)swapcontext(from->uc, to->uc);
#ifdef CORO_ASAN
	__sanitizer_finish_switch_fiber(from == &S.main ? main_fake :
	    self->fake, NULL, NULL);
#endif
	(void)dying;
}

/* A stack of --stack bytes above a guard page: from the cache, or mmap. */
static void *
stack_get(void)
{
	size_t len = S.o->stack + S.page;
	void *m;

	if (S.nstacks > 0)
		return S.stacks[--S.nstacks];
	m = mmap(NULL, len, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
	if (m == MAP_FAILED)
		return NULL;
	/* The lowest page faults: a stack overflow crashes, never corrupts. */
	if (mprotect(m, S.page, PROT_NONE) < 0) {
		munmap(m, len);
		return NULL;
	}
	return m;
}

static void
stack_put(void *m)
{
	if (S.nstacks < STACK_CACHE)
		S.stacks[S.nstacks++] = m;
	else
		munmap(m, S.o->stack + S.page);
}

static int
ctx_init(struct coro *c)
{
	uint8_t *top;

	c->ctx.stack = (uint8_t *)c->map + S.page;
	c->ctx.size = S.o->stack;
	top = (uint8_t *)c->ctx.stack + c->ctx.size;
#if defined(CORO_HAVE_ASM)
	if (!S.o->ucontext) {
		void **sp = (void **)(void *)top;

#if defined(__x86_64__)
		/*
		 * What coro_switch pops: six registers, then the "return
		 * address", coro_main, entered with the stack as after a
		 * call (rsp + 8 16-byte aligned); a null return address
		 * above it ends backtraces.
		 */
		*--sp = NULL;
		*--sp = (void *)(uintptr_t)coro_main;
		sp -= 6;
		memset(sp, 0, SWITCH_FRAME);
#else
		/* x19..x30, d8..d15: x30, the link register, is coro_main. */
		sp -= SWITCH_FRAME / sizeof(void *);
		memset(sp, 0, SWITCH_FRAME);
		sp[11] = (void *)(uintptr_t)coro_main;
#endif
		c->ctx.sp = sp;
		return 0;
	}
#endif
	if (c->ctx.uc == NULL && (c->ctx.uc = malloc(sizeof(ucontext_t))) == NULL)
		return -ENOMEM;
	if (getcontext(c->ctx.uc) < 0)
		return -errno;
	c->ctx.uc->uc_stack.ss_sp = c->ctx.stack;
	c->ctx.uc->uc_stack.ss_size = c->ctx.size;
	c->ctx.uc->uc_link = NULL;
	makecontext(c->ctx.uc, coro_main, 0);
	return 0;
}

static struct coro *
coro_new(int fd, const struct net_addr *peer)
{
	const struct srv *s = S.srv;
	struct coro *c = calloc(1, sizeof(*c) + s->svc->state_size);
	struct epoll_event ev;

	if (c == NULL)
		return NULL;
	c->fd = fd;
	net_addr_str(peer, c->peer, sizeof(c->peer));
	c->sink = (struct svc_sink){ .reply = sink_reply,
	    .broadcast = sink_broadcast, .conn = c, .peer = c->peer };
	if ((c->map = stack_get()) == NULL || ctx_init(c) < 0)
		goto fail;
	/*
	 * Edge-triggered, both directions, once: parking costs no syscall.
	 * An edge that comes while the coroutine is not parked is not
	 * lost, since it parks only after an EAGAIN that came later.
	 */
	ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ev.data.ptr = c;
	if (epoll_ctl(S.ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		goto fail;
	c->last = srv_now_ms();
	c->prev = S.lru_tail;
	if (S.lru_tail)
		S.lru_tail->next = c;
	else
		S.lru_head = c;
	S.lru_tail = c;
	S.nconns++;
	return c;
fail:
	if (c->map)
		stack_put(c->map);
	free(c->ctx.uc);
	free(c);
	return NULL;
}

static void
coro_free(struct coro *c)
{
	srv_debug(S.srv, "close %s", c->peer);
	close(c->fd);		/* leaves the epoll set too */
	outq_clear(&c->out);
	if (c->prev)
		c->prev->next = c->next;
	else
		S.lru_head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		S.lru_tail = c->prev;
	S.nconns--;
	stack_put(c->map);
	free(c->ctx.uc);
	free(c);
	if (!S.accepting && !S.stopping && S.lfd >= 0 &&
	    (S.srv->max_conns == 0 || S.nconns < S.srv->max_conns)) {
		struct epoll_event ev = { .events = EPOLLIN,
		    .data.ptr = &tag_listen };

		if (epoll_ctl(S.ep, EPOLL_CTL_ADD, S.lfd, &ev) == 0)
			S.accepting = 1;
	}
}

/* ---- accepting, limits, timeouts, stop ------------------------------------- */

static void
listener_off(void)
{
	if (S.accepting)
		(void)epoll_ctl(S.ep, EPOLL_CTL_DEL, S.lfd, NULL);
	S.accepting = 0;
}

static void
sched_accept(void)
{
	const struct srv *s = S.srv;
	struct net_addr peer;
	struct coro *c;
	int fd, i;

	for (i = 0; i < ACCEPTS_PER_WAKE && S.accepting; i++) {
		if (s->max_conns && S.nconns >= s->max_conns) {
			/* New clients wait in the kernel's accept queue. */
			listener_off();
			return;
		}
		fd = net_accept(S.lfd, &peer, NET_NONBLOCK);
		if (fd == -EAGAIN)
			return;
		if (fd == -EMFILE || fd == -ENFILE) {
			/* Left pending, it would be reported forever. */
			if (net_accept_shed(S.lfd, &S.reserve) > 0)
				srv_log(s, "out of descriptors (%s): refused a "
				    "connection", strerror(-fd));
			return;
		}
		if (fd < 0) {
			srv_warn(s, "accept: %s", strerror(-fd));
			return;
		}
		if ((c = coro_new(fd, &peer)) == NULL) {
			srv_warn(s, "cannot start a coroutine: %s",
			    strerror(errno));
			close(fd);
			continue;
		}
		srv_debug(s, "open %s", c->peer);
		/* It runs at once: the welcome, then its first read. */
		c->wait = EPOLLIN;
		sched_wake(c, 0);
	}
}

static void
sched_stop(void)
{
	struct coro *c;

	if (S.stopping)
		return;
	S.stopping = 1;
	S.stop_deadline = srv_now_ms() + SRV_STOP_GRACE_MS;
	listener_off();
	close(S.lfd);
	S.lfd = -1;
	/* Idle ones end now; the ones writing get the grace period. */
	for (c = S.lru_head; c; c = c->next)
		if (c->wait == EPOLLIN || c->wait == WAIT_PACED)
			sched_wake(c, -ESHUTDOWN);
}

/* Milliseconds epoll_wait may sleep: until the next expiry, or forever. */
static int
sched_timeout(void)
{
	int64_t now, next = -1;
	struct coro *c;

	if (S.run_head)
		return 0;
	if (S.stopping)
		next = S.stop_deadline;
	if (S.srv->idle_timeout && S.lru_head) {
		int64_t t = S.lru_head->last + S.srv->idle_timeout * 1000LL;

		if (next < 0 || t < next)
			next = t;
	}
	for (c = S.ncongest > 0 ? S.lru_head : NULL; c; c = c->next)
		if (c->congested && (next < 0 || c->prog + SRV_STALL_MS < next))
			next = c->prog + SRV_STALL_MS;
	if (next < 0)
		return -1;
	now = srv_now_ms();
	return next <= now ? 0 : (int)(next - now);
}

static void
sched_expire(void)
{
	int64_t now = srv_now_ms();
	struct coro *c;

	if (S.stopping && now >= S.stop_deadline)
		for (c = S.lru_head; c; c = c->next)
			sched_wake(c, -ETIMEDOUT);
	for (c = S.ncongest > 0 ? S.lru_head : NULL; c; c = c->next)
		if (c->congested && now - c->prog >= SRV_STALL_MS)
			decongest(c, 1);
	if (S.srv->idle_timeout == 0)
		return;
	/* Least recently active first: stop at the first one still fresh. */
	for (c = S.lru_head; c; c = c->next) {
		if (now - c->last < S.srv->idle_timeout * 1000LL)
			break;
		sched_wake(c, -ETIMEDOUT);
	}
}

static void
lru_touch(struct coro *c)
{
	c->last = srv_now_ms();
	if (c == S.lru_tail)
		return;
	if (c->prev)
		c->prev->next = c->next;
	else
		S.lru_head = c->next;
	c->next->prev = c->prev;
	c->prev = S.lru_tail;
	c->next = NULL;
	S.lru_tail->next = c;
	S.lru_tail = c;
}

/* ---- the command line and main ---------------------------------------------- */

static const struct srv_option options[] = {
	{ "stack", 1, OPT_STACK, "BYTES", "stack of each coroutine, above a guard page (default 128k)" },
	{ "switch", 1, OPT_SWITCH, "HOW", "context switch: asm (default on x86-64 and aarch64) or ucontext" },
	{ NULL, 0, 0, NULL, NULL },
};

static int
on_option(struct srv *s, int key, const char *arg)
{
	struct opts *o = s->model_data;

	switch (key) {
	case OPT_STACK:
		o->stack = (size_t)srv_parse_num(s, "--stack", arg, STACK_MIN,
		    64LL * 1024 * 1024, 1);
		return 0;
	case OPT_SWITCH:
		if (strcmp(arg, "ucontext") == 0)
			o->ucontext = 1;
#if defined(CORO_HAVE_ASM)
		else if (strcmp(arg, "asm") == 0)
			o->ucontext = 0;
#endif
		else
			srv_usage_error(s, "--switch: '%s' is not one of: "
#if defined(CORO_HAVE_ASM)
			    "asm, "
#endif
			    "ucontext", arg);
		return 0;
	}
	return -1;
}

static const struct srv_model model = {
	.name = "echo-coro",
	.summary = "Echo server: coroutines, one per connection, switched on "
	    "EAGAIN by an epoll scheduler in one thread.",
	.caps = SRV_CAP_BROADCAST,
	.options = options,
	.on_option = on_option,
};

int
main(int argc, char **argv)
{
	struct opts o = { .stack = 128 * 1024 };
	struct epoll_event ev;
	struct srv s;
	int rc;

#if !defined(CORO_HAVE_ASM)
	o.ucontext = 1;
#endif
	srv_init(&s, &model, argc, argv, &o);
	S.srv = &s;
	S.o = &o;
	S.page = (size_t)sysconf(_SC_PAGESIZE);
	o.stack = (o.stack + S.page - 1) / S.page * S.page;
	srv_raise_nofile(&s);
	S.lfd = srv_listen(&s, NET_NONBLOCK);
	if ((S.sfd = srv_signals_block()) < 0) {
		srv_warn(&s, "signalfd: %s", strerror(-S.sfd));
		return SRV_EX_OSERR;
	}
	S.reserve = net_reserve_open();
	S.rbuf = malloc(s.bufsize);
	if ((S.main.uc = malloc(sizeof(ucontext_t))) == NULL || S.rbuf == NULL ||
	    (S.ep = epoll_create1(EPOLL_CLOEXEC)) < 0) {
		srv_warn(&s, "cannot start: %s", strerror(errno));
		return SRV_EX_OSERR;
	}
	ev = (struct epoll_event){ .events = EPOLLIN, .data.ptr = &tag_signal };
	if (epoll_ctl(S.ep, EPOLL_CTL_ADD, S.sfd, &ev) < 0) {
		srv_warn(&s, "epoll_ctl: %s", strerror(errno));
		return SRV_EX_OSERR;
	}
	ev = (struct epoll_event){ .events = EPOLLIN, .data.ptr = &tag_listen };
	if (epoll_ctl(S.ep, EPOLL_CTL_ADD, S.lfd, &ev) < 0) {
		srv_warn(&s, "epoll_ctl: %s", strerror(errno));
		return SRV_EX_OSERR;
	}
	S.accepting = 1;
	srv_debug(&s, "context switch: %s, stacks of %zu bytes",
	    o.ucontext ? "ucontext (swapcontext)" : "hand-written", o.stack);
	srv_ready(&s);
	rc = run();
	while (S.nstacks > 0)
		munmap(S.stacks[--S.nstacks], o.stack + S.page);
	if (S.lfd >= 0)
		close(S.lfd);
	if (S.reserve >= 0)
		close(S.reserve);
	close(S.ep);
	close(S.sfd);
	free(S.main.uc);
	free(S.rbuf);
	return rc;
}

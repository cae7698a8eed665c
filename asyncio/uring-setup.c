/*
 * uring-setup.c — echo-uring's set-up: its options, the ring made with
 * the newest flags the kernel accepts (stepping down the ladder on
 * EINVAL), the probes, the provided buffer ring, the statistics -v
 * prints, the worker threads, and main().
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "net.h"
#include "uring.h"

/* ---- options ------------------------------------------------------------- */

enum {
	OPT_NO_MULTISHOT = 3000, OPT_DIRECT, OPT_NO_DIRECT, OPT_NO_MS_ACCEPT, OPT_NO_MS_RECV, OPT_NO_BUFRING,
	OPT_NO_INPLACE, OPT_NO_DEFER, OPT_SQPOLL, OPT_SQPOLL_IDLE, OPT_RING,
	OPT_CQ, OPT_BUFFERS, OPT_MAX_HELD, OPT_BATCH,
	OPT_COPY_BELOW, OPT_NO_MSG_RING,
};

const struct srv_option uring_opts[] = {
	{ "no-multishot", 0, OPT_NO_MULTISHOT, NULL,
	  "single-shot accept and recv (both multishot rungs off)" },
	{ "direct", 0, OPT_DIRECT, NULL,
	  "direct descriptors: accept into the ring's files table" },
	{ "no-direct", 0, OPT_NO_DIRECT, NULL,
	  "plain descriptors (the default)" },
	{ "no-multishot-accept", 0, OPT_NO_MS_ACCEPT, NULL,
	  "one accept request per connection" },
	{ "no-multishot-recv", 0, OPT_NO_MS_RECV, NULL,
	  "one recv request per read (still from the buffer ring)" },
	{ "no-bufring", 0, OPT_NO_BUFRING, NULL,
	  "no provided buffer ring: recv into a buffer of each connection" },
	{ "no-send-in-place", 0, OPT_NO_INPLACE, NULL,
	  "copy received data out of the ring buffer instead of sending from it" },
	{ "no-defer-taskrun", 0, OPT_NO_DEFER, NULL,
	  "no IORING_SETUP_SINGLE_ISSUER|DEFER_TASKRUN" },
	{ "sqpoll", 0, OPT_SQPOLL, NULL,
	  "a kernel thread polls the submission queue (IORING_SETUP_SQPOLL)" },
	{ "sqpoll-idle", 1, OPT_SQPOLL_IDLE, "MS",
	  "--sqpoll: idle time before the thread sleeps (default 1000)" },
	{ "ring-entries", 1, OPT_RING, "N",
	  "submission queue entries per ring (default 512)" },
	{ "cq-entries", 1, OPT_CQ, "N",
	  "completion queue entries per ring (default 32 x ring-entries, at most 65536)" },
	{ "buffers", 1, OPT_BUFFERS, "N",
	  "provided buffers per ring, of -B bytes each (default 512)" },
	{ "copy-below", 1, OPT_COPY_BELOW, "BYTES",
	  "copy messages up to this size out of the ring (default 1k, 0 = never)" },
	{ "max-held", 1, OPT_MAX_HELD, "N",
	  "ring buffers one connection may keep queued (default buffers/16)" },
	{ "batch-usec", 1, OPT_BATCH, "USEC",
	  "wait up to this long for a batch of completions (default 500, 0 = off)" },
	{ "no-msg-ring", 0, OPT_NO_MSG_RING, NULL,
	  "as if the kernel had no IORING_OP_MSG_RING: -w 2 -s chat is refused" },
	{ NULL, 0, 0, NULL, NULL },
};

int
uring_option(struct srv *s, int key, const char *arg)
{
	struct ucfg *cfg = s->model_data;

	switch (key) {
	case OPT_NO_MULTISHOT:
		cfg->ms_accept = cfg->ms_recv = 0;
		break;
	case OPT_DIRECT:
		cfg->direct = 1;
		break;
	case OPT_NO_DIRECT:
		cfg->direct = 0;
		break;
	case OPT_NO_MSG_RING:
		cfg->no_msg_ring = 1;
		break;
	case OPT_NO_MS_ACCEPT:
		cfg->ms_accept = 0;
		break;
	case OPT_NO_MS_RECV:
		cfg->ms_recv = 0;
		break;
	case OPT_NO_BUFRING:
		cfg->bufring = 0;
		break;
	case OPT_NO_INPLACE:
		cfg->send_inplace = 0;
		break;
	case OPT_NO_DEFER:
		cfg->defer = 0;
		break;
	case OPT_SQPOLL:
		cfg->sqpoll = 1;
		break;
	case OPT_SQPOLL_IDLE:
		cfg->sqpoll_idle = (int)srv_parse_num(s, "--sqpoll-idle", arg,
		    1, 60000, 0);
		break;
	case OPT_RING:
		cfg->sq_entries = (unsigned)srv_parse_num(s, "--ring-entries",
		    arg, 1, 32768, 0);
		break;
	case OPT_CQ:
		cfg->cq_entries = (unsigned)srv_parse_num(s, "--cq-entries",
		    arg, 2, 65536, 0);
		break;
	case OPT_BUFFERS:
		cfg->nbufs = (unsigned)srv_parse_num(s, "--buffers", arg, 1,
		    32768, 0);
		break;
	case OPT_COPY_BELOW:
		cfg->copy_below = (unsigned)srv_parse_num(s, "--copy-below",
		    arg, 0, 1 << 20, 1);
		break;
	case OPT_MAX_HELD:
		cfg->max_held = (unsigned)srv_parse_num(s, "--max-held", arg,
		    1, 32768, 0);
		break;
	case OPT_BATCH:
		cfg->batch_us = (int)srv_parse_num(s, "--batch-usec", arg, 0,
		    1000000, 0);
		break;
	default:
		return -1;
	}
	return 0;
}

/* ---- the provided buffer ring -------------------------------------------- */

/*
 * liburing 2.3 has io_uring_register_buf_ring() but not the later
 * io_uring_setup_buf_ring(): map the ring ourselves.  The ring is an array
 * of {addr, len, bid} the kernel reads buffers from and we append returned
 * buffers to; its memory must be page aligned (the kernel pins it).  The
 * buffers themselves are one mapping, touched only where data lands.
 */
static int
ubuf_ring_init(struct worker *w)
{
	struct io_uring_buf_reg reg;
	unsigned entries = 1, i;
	int r;

	while (entries < w->nbufs)
		entries <<= 1;
	w->br_size = entries * sizeof(struct io_uring_buf);
	w->br = mmap(NULL, w->br_size, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (w->br == MAP_FAILED) {
		w->br = NULL;
		return -errno;
	}
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)(uintptr_t)w->br;
	reg.ring_entries = entries;
	reg.bgid = BGID;
	if ((r = io_uring_register_buf_ring(&w->ring, &reg, 0)) < 0)
		return r;
	io_uring_buf_ring_init(w->br);
	w->brmask = (unsigned)io_uring_buf_ring_mask(entries);
	w->bufs_size = (size_t)w->nbufs * w->bufsize;
	w->bufs = mmap(NULL, w->bufs_size, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	w->bseg = calloc(w->nbufs, sizeof(*w->bseg));
	w->bheld = calloc(w->nbufs, 1);
	if (w->bufs == MAP_FAILED || w->bseg == NULL || w->bheld == NULL) {
		if (w->bufs == MAP_FAILED)
			w->bufs = NULL;
		return -ENOMEM;
	}
	for (i = 0; i < w->nbufs; i++)
		io_uring_buf_ring_add(w->br, w->bufs + (size_t)i * w->bufsize,
		    (unsigned)w->bufsize, (unsigned short)i, (int)w->brmask,
		    (int)i);
	io_uring_buf_ring_advance(w->br, (int)w->nbufs);
	return 0;
}

/* ---- the ring ------------------------------------------------------------ */

static void
uw_unavailable(const struct srv *s, int err)
{
	FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "r");
	int disabled = 0;

	if (f) {
		if (fscanf(f, "%d", &disabled) != 1)
			disabled = 0;
		fclose(f);
	}
	if (disabled)
		srv_warn(s, "io_uring is not available: io_uring_setup: %s "
		    "(kernel.io_uring_disabled = %d)", strerror(err), disabled);
	else
		srv_warn(s, "io_uring is not available: io_uring_setup: %s "
		    "(seccomp, a container, or a kernel without io_uring)",
		    strerror(err));
}

/*
 * Create the ring, newest flags first, stepping down the ladder on EINVAL
 * (a kernel that does not know a flag refuses the whole set-up).
 */
static int
uw_ring_init(struct worker *w)
{
	const struct ucfg *cfg = w->cfg;
	struct io_uring_params p;
	int r;

	for (;;) {
		memset(&p, 0, sizeof(p));
		/*
		 * A CQ well larger than the SQ: multishot requests post many
		 * completions per submission.  CLAMP: sizes above the
		 * kernel's maximum are reduced rather than refused.
		 */
		p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
		p.cq_entries = cfg->cq_entries;
		/* Go on submitting the rest of a batch after a bad entry. */
		if (w->submit_all)
			p.flags |= IORING_SETUP_SUBMIT_ALL;
		if (w->sqpoll) {
			p.flags |= IORING_SETUP_SQPOLL;
			p.sq_thread_idle = (unsigned)cfg->sqpoll_idle;
		} else if (w->defer) {
			/*
			 * One thread submits (SINGLE_ISSUER), and completion
			 * work runs only when that thread asks for events
			 * (DEFER_TASKRUN), not by interrupting it: fewer
			 * context switches, bigger batches.
			 */
			p.flags |= IORING_SETUP_SINGLE_ISSUER |
			    IORING_SETUP_DEFER_TASKRUN;
		} else if (w->coop) {
			/* Completion work waits for our next kernel entry
			 * instead of an interrupt (IPI) of the thread. */
			p.flags |= IORING_SETUP_COOP_TASKRUN |
			    IORING_SETUP_TASKRUN_FLAG;
		}
		r = io_uring_queue_init_params(cfg->sq_entries, &w->ring, &p);
		if (r == 0)
			break;
		if (r == -EINVAL && w->defer) {
			srv_log(w->s, "DEFER_TASKRUN refused by the kernel: "
			    "falling back to COOP_TASKRUN");
			w->defer = 0;
		} else if (r == -EINVAL && w->coop)
			w->coop = 0;
		else if (r == -EINVAL && w->submit_all)
			w->submit_all = 0;
		else if ((r == -EINVAL || r == -EPERM) && w->sqpoll) {
			srv_log(w->s, "SQPOLL refused by the kernel (%s): "
			    "running without", strerror(-r));
			w->sqpoll = 0;
			w->defer = cfg->defer;
		} else
			return r;
	}
	w->ring_ok = 1;
	w->features = p.features;
	w->sq_entries = p.sq_entries;
	w->cq_entries = p.cq_entries;
	return 0;
}

static int
uw_probe_ops(struct worker *w)
{
	static const struct { int op; const char *name; } need[] = {
		{ IORING_OP_ACCEPT, "accept" }, { IORING_OP_RECV, "recv" },
		{ IORING_OP_SEND, "send" }, { IORING_OP_ASYNC_CANCEL, "cancel" },
		{ IORING_OP_CLOSE, "close" }, { IORING_OP_POLL_ADD, "poll" },
	};
	struct io_uring_probe *p = io_uring_get_probe_ring(&w->ring);
	size_t i;

	if (p == NULL)
		return 0;	/* < 5.6: the first request will tell */
	for (i = 0; i < sizeof(need) / sizeof(need[0]); i++)
		if (!io_uring_opcode_supported(p, need[i].op)) {
			srv_warn(w->s, "io_uring is too old here: no %s "
			    "operation (Linux 5.6 or later is needed)",
			    need[i].name);
			io_uring_free_probe(p);
			return -1;
		}
	io_uring_free_probe(p);
	return 0;
}

/*
 * Direct descriptors (5.19): accept into a sparse table of the ring's own
 * files and name the socket by its slot (IOSQE_FIXED_FILE), so that no
 * request looks it up in the process's descriptor table (an fget/fput, an
 * atomic on a shared counter, per request).  Not when something wants the
 * peer's address (chat and rpc name clients by it, -vv logs it): a slot
 * cannot be asked without a system call.  TCP_NODELAY is inherited from
 * the listener, where it is set once.
 */
static void
uw_files_init(struct worker *w)
{
	struct rlimit rl;
	int r;

	w->direct = w->cfg->direct && w->s->svc->state_size == 0 &&
	    w->s->verbose <= 1 && w->lfd >= 0;
	if (!w->direct)
		return;
	w->nfiles = 1U << 20;		/* the kernel's maximum */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < w->nfiles)
		w->nfiles = (unsigned)rl.rlim_cur;
	if ((r = io_uring_register_files_sparse(&w->ring, w->nfiles)) < 0) {
		srv_log(w->s, "a files table of %u refused by the kernel (%s): "
		    "plain descriptors", w->nfiles, strerror(-r));
		w->direct = 0;
		return;
	}
	(void)net_set_nodelay(w->lfd);
}

static int
uw_init(struct worker *w)
{
	const struct ucfg *cfg = w->cfg;
	int r;

	TAILQ_INIT(&w->live);
	TAILQ_INIT(&w->linger);
	TAILQ_INIT(&w->closing);
	TAILQ_INIT(&w->parked);
	TAILQ_INIT(&w->dirty);
	TAILQ_INIT(&w->bufwait);
	TAILQ_INIT(&w->paced);
	TAILQ_INIT(&w->congested);
	LIST_INIT(&w->holders);
	w->ms_accept = cfg->ms_accept;
	w->ms_recv = cfg->ms_recv;
	w->bufring = cfg->bufring;
	w->sqpoll = cfg->sqpoll;
	w->defer = cfg->defer && !cfg->sqpoll;
	w->coop = 1;
	w->submit_all = 1;
	w->bufsize = w->s->bufsize;
	w->nbufs = cfg->nbufs;
	w->max_held = cfg->max_held ? cfg->max_held :
	    (cfg->nbufs / 16 ? cfg->nbufs / 16 : 1);
	w->recv_target = 1;
	w->reserve = net_reserve_open();
	if ((r = uw_ring_init(w)) < 0) {
		if (r == -EPERM || r == -ENOSYS || r == -EACCES) {
			uw_unavailable(w->s, -r);
			return SRV_EX_UNAVAILABLE;
		}
		srv_warn(w->s, "io_uring_setup: %s", strerror(-r));
		return SRV_EX_OSERR;
	}
	if (uw_probe_ops(w) < 0)
		return SRV_EX_UNAVAILABLE;
	if (!(w->features & IORING_FEAT_NODROP))
		srv_log(w->s, "this kernel drops completions on CQ overflow "
		    "(no IORING_FEAT_NODROP): keep --cq-entries large");
	if (!(w->features & IORING_FEAT_FAST_POLL))
		srv_log(w->s, "no IORING_FEAT_FAST_POLL: socket requests "
		    "block kernel worker threads");
	/* Enter by ring index, not fd: saves a file lookup per enter. */
	w->reg_ring = io_uring_register_ring_fd(&w->ring) == 1;
	uw_files_init(w);
	if (w->bufring && (r = ubuf_ring_init(w)) < 0) {
		if (r != -EINVAL && r != -ENOMEM && r != -EOPNOTSUPP) {
			srv_warn(w->s, "buffer ring: %s", strerror(-r));
			return SRV_EX_OSERR;
		}
		srv_log(w->s, "provided buffer ring refused (%s): falling "
		    "back to a buffer per connection", strerror(-r));
		w->bufring = 0;
	}
	if (!w->bufring)
		w->ms_recv = 0;		/* multishot recv needs the ring */
	return SRV_EX_OK;
}

static void
uw_fini(struct worker *w)
{
	struct useg *s;
	struct uconn *c;

	uroom_leave(w);
	/* What is still open when we give up waiting (stop deadline). */
	while ((c = TAILQ_FIRST(&w->live)) != NULL)
		uc_close(w, c);
	if (w->ring_ok)
		io_uring_queue_exit(&w->ring);	/* cancels what is left */
	while ((c = TAILQ_FIRST(&w->closing)) != NULL) {
		while ((s = c->qhead) != NULL) {
			c->qhead = s->next;
			if (s->kind == SEG_HEAP)
				free(s);
		}
		while ((s = c->inq) != NULL) {
			c->inq = s->next;
			free(s);
		}
		free(c->rbuf);
		if (!(c->flags & (C_CLOSESENT | C_FIXED)))
			close(c->fd);
		uc_destroy(w, c);
	}
	if (w->bufs)
		munmap(w->bufs, w->bufs_size);
	if (w->br)
		munmap(w->br, w->br_size);
	free(w->bseg);
	free(w->bheld);
	while ((s = w->pool) != NULL) {
		w->pool = s->next;
		free(s);
	}
	if (w->lfd >= 0)
		close(w->lfd);
	if (w->reserve >= 0)
		close(w->reserve);
	if (w->id > 0 && w->wake_fd >= 0)
		close(w->wake_fd);
}

/* ---- what -v prints ------------------------------------------------------ */

static void
uw_print_rungs(const struct worker *w)
{
	const struct srv *s = w->s;
	char bufs[128] = "";

	if (w->bufring)
		snprintf(bufs, sizeof(bufs), " %u x %zu bytes, %u held at most, "
		    "copied up to %u bytes", w->nbufs, w->bufsize, w->max_held,
		    w->cfg->copy_below);
	srv_debug(s, "rungs: %cmultishot-accept %cdirect %cbufring "
	    "%cmultishot-recv %csend-in-place %cdefer-taskrun %csqpoll",
	    w->ms_accept ? '+' : '-', w->direct ? '+' : '-',
	    w->bufring ? '+' : '-',
	    w->ms_recv ? '+' : '-',
	    w->bufring && w->cfg->send_inplace ? '+' : '-',
	    w->defer ? '+' : '-', w->sqpoll ? '+' : '-');
	if (w->sh->room)
		srv_debug(s, "room: one for all %d rings, lines relayed through "
		    "mailboxes rung by IORING_OP_MSG_RING", w->sh->n);
	if (w->direct)
		srv_debug(s, "files table: %u direct descriptors", w->nfiles);
	else if (w->cfg->direct && w->s->svc->state_size > 0)
		srv_debug(s, "direct descriptors: not with -s %s (clients are "
		    "named by their address)", w->s->svc->name);
	srv_debug(s, "ring: %u sq, %u cq entries%s%s%s; buffers%s; "
	    "batch %d us; kernel features:%s%s%s", w->sq_entries,
	    w->cq_entries, w->coop && !w->defer && !w->sqpoll ?
	    ", coop-taskrun" : "", w->submit_all ? ", submit-all" : "",
	    w->reg_ring ? ", registered ring fd" : "",
	    w->bufring ? bufs : " per connection", w->cfg->batch_us,
	    w->features & IORING_FEAT_NODROP ? " nodrop" : "",
	    w->features & IORING_FEAT_FAST_POLL ? " fast-poll" : "",
	    w->features & IORING_FEAT_EXT_ARG ? " ext-arg" : "");
}

static void
uw_print_stats(const struct worker *w)
{
	const struct ustats *t = &w->st;

	srv_debug(w->s, "worker %d: %llu enters, %llu cqes, %llu accepts, "
	    "%llu recvs, %llu sends, %llu short-sends, %llu enobufs, "
	    "%llu sq-full, %llu cq-overflow, %llu rearms, %llu copies, "
	    "%llu evictions, %llu pauses, %llu paces, %llu stalls, "
	    "%llu held, %llu parked, %llu emfile, "
	    "%llu shed, %u buffers held, %llu buffer-errors, "
	    "%llu posted, %llu mail, %llu bell-failures", w->id,
	    t->enters, t->cqes, t->accepts, t->recvs, t->sends,
	    t->short_sends, t->enobufs, t->sq_full, t->cq_overflow, t->rearms,
	    t->copies, t->evictions, t->pauses, t->paces, t->stalls, t->held,
	    t->parked, t->emfile, t->shed, w->nheld, t->bufbugs, t->posted,
	    t->mail, t->bell_fails);
}

/* ---- threads, and main --------------------------------------------------- */

static void *
uw_thread(void *arg)
{
	struct worker *w = arg;
	struct shared *sh = w->sh;
	int r = uw_init(w);

	pthread_mutex_lock(&sh->mu);
	w->init_rc = r;
	sh->inited++;
	if (r == 0) {
		w->looping = 1;
		sh->looping++;
	}
	pthread_cond_broadcast(&sh->cv);
	/* Another ring may ring ours only once all are made. */
	while (!sh->go)
		pthread_cond_wait(&sh->cv, &sh->mu);
	pthread_mutex_unlock(&sh->mu);
	w->exit_code = r == 0 ? uw_run(w) : r;
	if (w->s->verbose > 0 && r == 0)
		uw_print_stats(w);
	uw_fini(w);
	return NULL;
}

int
main(int argc, char **argv)
{
	struct ucfg cfg = {
		.ms_accept = 1, .ms_recv = 1, .bufring = 1, .send_inplace = 1,
		.direct = 0,	/* no gain measured here: see echo-uring(1) */
		.defer = 1, .sqpoll_idle = 1000, .sq_entries = 512,
		.nbufs = 512, .batch_us = 500, .copy_below = 1024,
	};
	struct shared sh;
	struct srv s;
	int i, lfd, sfd, nthreads = 0, rc = SRV_EX_OK;

	srv_init(&s, &uring_model, argc, argv, &cfg);
	if (cfg.cq_entries == 0)
		cfg.cq_entries = cfg.sq_entries * 32 > 65536 ? 65536 :
		    cfg.sq_entries * 32;
	if (cfg.cq_entries < cfg.sq_entries)
		srv_usage_error(&s, "--cq-entries must be at least --ring-entries");
	if (cfg.bufring && (unsigned long long)cfg.nbufs * s.bufsize > (1ULL << 32))
		srv_usage_error(&s, "--buffers x -B: more than 4 GiB of buffers");
	memset(&sh, 0, sizeof(sh));
	if (s.workers > 1 && (s.svc->flags & SVC_NEEDS_BROADCAST)) {
		/*
		 * One room across the rings needs IORING_OP_MSG_RING (5.18).
		 * Without io_uring at all, the ring's set-up says so (69).
		 */
		if (cfg.no_msg_ring)
			srv_usage_error(&s, "-s %s with -w above 1: the workers' "
			    "rings cannot broadcast to each other without "
			    "IORING_OP_MSG_RING (Linux 5.18), and --no-msg-ring "
			    "is given", s.svc->name);
		/* A command line that is fine, on a kernel without it. */
		if (uroom_probe() == 0) {
			srv_warn(&s, "-s %s with -w above 1: the workers' rings "
			    "cannot broadcast to each other: this kernel has no "
			    "IORING_OP_MSG_RING (Linux 5.18); use -w 1",
			    s.svc->name);
			return SRV_EX_UNAVAILABLE;
		}
		sh.room = 1;
	}
	srv_raise_nofile(&s);
	lfd = srv_listen(&s, NET_NONBLOCK);
	/* Block the stop signals before any thread exists: all inherit it. */
	if ((sfd = srv_signals_block()) < 0) {
		srv_warn(&s, "signalfd: %s", strerror(-sfd));
		return SRV_EX_OSERR;
	}
	sh.n = s.workers;
	sh.w = calloc((size_t)s.workers, sizeof(*sh.w));
	if (sh.w == NULL)
		return SRV_EX_OSERR;
	pthread_mutex_init(&sh.mu, NULL);
	pthread_cond_init(&sh.cv, NULL);
	uroom_init(&sh);
	for (i = 0; i < s.workers; i++) {
		sh.w[i].lfd = sh.w[i].wake_fd = sh.w[i].reserve = -1;
		sh.w[i].id = i;
	}
	for (i = 0; i < s.workers && rc == SRV_EX_OK; i++) {
		struct worker *w = &sh.w[i];

		w->s = &s;
		w->cfg = &cfg;
		w->sh = &sh;
		w->id = i;
		w->lfd = i == 0 ? lfd : srv_listen_again(&s, lfd, NET_NONBLOCK);
		w->wake_fd = i == 0 ? sfd : eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (w->lfd < 0 || w->wake_fd < 0) {
			srv_warn(&s, "worker %d: %s", i, strerror(w->lfd < 0 ?
			    -w->lfd : errno));
			rc = SRV_EX_OSERR;
		}
	}
	/*
	 * Each ring is made by the thread that uses it: a SINGLE_ISSUER
	 * ring belongs to the task that created it.
	 */
	if (rc == SRV_EX_OK && (rc = uw_init(&sh.w[0])) == SRV_EX_OK) {
		sh.w[0].looping = 1;
		sh.looping++;
	}
	for (i = 1; i < s.workers && rc == SRV_EX_OK; i++) {
		if (pthread_create(&sh.w[i].thread, NULL, uw_thread,
		    &sh.w[i]) != 0) {
			srv_warn(&s, "pthread_create: %s", strerror(errno));
			rc = SRV_EX_OSERR;
			break;
		}
		nthreads++;
	}
	pthread_mutex_lock(&sh.mu);
	while (sh.inited < nthreads)
		pthread_cond_wait(&sh.cv, &sh.mu);
	sh.go = 1;
	pthread_cond_broadcast(&sh.cv);
	pthread_mutex_unlock(&sh.mu);
	for (i = 1; i <= nthreads; i++)
		if (sh.w[i].init_rc != 0 && rc == SRV_EX_OK)
			rc = sh.w[i].init_rc;
	if (rc == SRV_EX_OK) {
		uw_print_rungs(&sh.w[0]);
		srv_ready(&s);
		rc = uw_run(&sh.w[0]);
		if (s.verbose > 0)
			uw_print_stats(&sh.w[0]);
	}
	if (rc != SRV_EX_OK) {
		uint64_t one = 1;

		/* The others stop as at a signal. */
		for (i = 1; i <= nthreads; i++)
			(void)!write(sh.w[i].wake_fd, &one, sizeof(one));
	}
	uw_fini(&sh.w[0]);
	for (i = 1; i < s.workers; i++) {
		if (i <= nthreads) {
			pthread_join(sh.w[i].thread, NULL);
			if (sh.w[i].exit_code != 0 && rc == SRV_EX_OK)
				rc = sh.w[i].exit_code;
		} else
			uw_fini(&sh.w[i]);	/* never started */
	}
	uroom_fini(&sh);
	close(sfd);
	free(sh.w);
	return rc;
}

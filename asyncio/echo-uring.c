/*
 * echo-uring — the completion model ("true asynchronous IO") with
 * io_uring(7): the server says what it wants done, the kernel does it and
 * reports each result once it is complete.
 *
 * The model: two rings shared with the kernel.  We write requests
 * (submission queue entries: accept, recv, send, cancel, close) into the
 * SQ ring; the kernel performs them and writes one completion (CQE, with
 * the result a system call would have returned) into the CQ ring per
 * request, or several for a multishot one.  A readiness model asks "may I
 * read?" and then reads; here the reading itself is the request, so the
 * data is already in our memory when we hear of it.  One io_uring_enter()
 * both submits everything queued and waits for completions: for one echoed
 * message that is one system call, shared by every connection whose
 * requests went into the same batch (epoll: epoll_wait + read + write).
 *
 * The cost: requests own memory while they are in flight, and nothing may
 * be freed, reused or closed under them.  A pending recv needs a buffer
 * for data that has not arrived: 10,000 idle clients would pin 10,000
 * buffers, unless the kernel picks one from a shared pool (provided buffer
 * ring) only when data arrives.  And the kernel has to be new enough: each
 * improvement below is a kernel version, probed at run time.
 *
 * The ladder (each rung can be switched off, -v says which are in use):
 *   single-shot accept/recv/send, one request per operation
 *   -> multishot accept: one request, a CQE per connection   (5.19)
 *   -> provided buffer ring + multishot recv: one request per
 *      connection, buffers taken from a shared ring on arrival (6.0)
 *   -> send straight from the ring buffer the data arrived in, and give
 *      the buffer back only when that send has completed
 *   -> IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN: completions are
 *      produced only when we ask for them, in a batch          (6.1)
 *   -> --sqpoll: a kernel thread polls the SQ, submission costs no
 *      system call at all (a core spinning for us)
 *
 * The pitfalls, and where they are handled:
 *   - one send in flight per connection, the rest queued behind it:
 *     two sends in flight may complete (and transmit) in any order;
 *   - short sends: the rest is resubmitted (conn_on_send);
 *   - ENOBUFS: the buffer ring ran dry; the recv is re-armed when
 *     buffers come back, never given up on (buf_return, flush);
 *   - io_uring_get_sqe() returning NULL: the SQ is full; submit what is
 *     there and retry; arming is deferred to one place (flush) so a full
 *     SQ delays work instead of losing it;
 *   - CQ overflow: the kernel keeps completions it had no room for
 *     (IORING_FEAT_NODROP) and flags it; we flush them (ur_wait);
 *   - a multishot request ends (no IORING_CQE_F_MORE) on errors, ENOBUFS,
 *     or overflow: re-arm it;
 *   - a request still refers to the socket, the buffer and our
 *     connection: close only after every request has completed
 *     (per-connection reference count, cancel first);
 *   - buffer ids: give back exactly those the kernel handed us, once;
 *   - a peer that stops reading must not pin the shared buffer ring:
 *     past a few buffers per connection the data is copied out and the
 *     buffer returned; under shortage, queued buffers are copied out and
 *     stuck sends cancelled (evict);
 *   - a buffer sent from is out of the ring until the send's completion
 *     is reaped, a round later: small messages are copied instead, or a
 *     busy round drains the ring (conn_input);
 *   - io_uring's accept takes a descriptor slot before it looks at the
 *     backlog: at EMFILE it fails at once, forever; poll the listener and
 *     shed instead (on_accept, on_lpoll);
 *   - a multishot accept takes the whole backlog before a cancel lands:
 *     past -m, connections are parked, not refused (conn_new).
 *
 * -w N runs N threads, each with its own ring, buffer ring and
 * SO_REUSEPORT listener: nothing is shared between them.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/queue.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <liburing.h>

#include "net.h"
#include "server.h"
#include "service.h"

/*
 * Debian 12 ships liburing 2.3 headers; the kernel we run on may be far
 * newer.  What matters is the kernel: define what old headers lack, and
 * let the kernel refuse (EINVAL) what it does not know.
 */
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL		(1U << 7)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN	(1U << 8)
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG	(1U << 9)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER	(1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN	(1U << 13)
#endif
#ifndef IORING_RECVSEND_POLL_FIRST
#define IORING_RECVSEND_POLL_FIRST	(1U << 0)
#endif
#ifndef IORING_RECV_MULTISHOT
#define IORING_RECV_MULTISHOT		(1U << 1)
#endif
#ifndef IORING_CQE_F_SOCK_NONEMPTY
#define IORING_CQE_F_SOCK_NONEMPTY	(1U << 2)
#endif
#ifndef IORING_ASYNC_CANCEL_ALL
#define IORING_ASYNC_CANCEL_ALL		(1U << 0)
#endif
#ifndef IORING_FEAT_NODROP
#define IORING_FEAT_NODROP		(1U << 1)
#endif
#ifndef IORING_FEAT_FAST_POLL
#define IORING_FEAT_FAST_POLL		(1U << 5)
#endif
#ifndef IORING_FEAT_EXT_ARG
#define IORING_FEAT_EXT_ARG		(1U << 8)
#endif

#define BGID		0	/* our one buffer group */
#define LINGER_MS	2000	/* lingering close after a service error */
#define STOP_GRACE_MS	2000	/* at stop, time to flush queued output */
#define SMALL_SEG	256	/* pooled copies: a small message's worth */
#define POOL_MAX	256	/* free small segments kept per worker */
#define ACCEPT_PAUSE_MS	100	/* after an accept error we cannot shed */
#define FEED_SLICE	4096	/* input fed to a service at a time */
#define SEND_IOV	16	/* queued segments one send carries */
#define STALL_MS	1000	/* a recipient this long without progress
				   no longer paces the room */

/* ---- configuration (the model's own options) ------------------------------ */

struct ucfg {
	int		 ms_accept, ms_recv, bufring, send_inplace;
	int		 defer, sqpoll, sqpoll_idle;
	unsigned	 sq_entries, cq_entries, nbufs, max_held, copy_below;
	int		 batch_us;
};

enum {
	OPT_NO_MULTISHOT = 3000, OPT_NO_MS_ACCEPT, OPT_NO_MS_RECV, OPT_NO_BUFRING,
	OPT_NO_INPLACE, OPT_NO_DEFER, OPT_SQPOLL, OPT_SQPOLL_IDLE, OPT_RING,
	OPT_CQ, OPT_BUFFERS, OPT_MAX_HELD, OPT_BATCH,
	OPT_COPY_BELOW,
};

static const struct srv_option uring_opts[] = {
	{ "no-multishot", 0, OPT_NO_MULTISHOT, NULL,
	  "single-shot accept and recv (both multishot rungs off)" },
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
	{ NULL, 0, 0, NULL, NULL },
};

static int
uring_option(struct srv *s, int key, const char *arg)
{
	struct ucfg *cfg = s->model_data;

	switch (key) {
	case OPT_NO_MULTISHOT:
		cfg->ms_accept = cfg->ms_recv = 0;
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

/* ---- the state of one ring (a worker) and of its connections -------------- */

/*
 * Output waiting to be sent.  KIND says whose memory DATA is: a ring
 * buffer (the buffer id, >= 0: the kernel must get it back once the send
 * is done), the connection's own receive buffer (--no-bufring), or a
 * malloc'd copy.
 */
#define SEG_HEAP	(-1)
#define SEG_RBUF	(-2)

struct useg {
	struct useg	*next;
	uint8_t		*data;
	uint32_t	 off, len, cap;
	int32_t		 kind;
};

/* Connection flags. */
#define C_RECV		0x0001	/* recv armed (multishot: until a CQE without MORE) */
#define C_SEND		0x0002	/* the queue head is being sent */
#define C_EOF		0x0004	/* no more input: close once flushed */
#define C_PAUSED	0x0008	/* over the high-water mark: not receiving */
#define C_CLOSE		0x0010	/* the service asked to close: linger once flushed */
#define C_LINGER	0x0020	/* output done, discarding input until EOF */
#define C_CLOSING	0x0040	/* closed: waiting for its requests to end */
#define C_DIRTY		0x0080	/* on the dirty list: has requests to arm */
#define C_BUFWAIT	0x0100	/* recv ended in ENOBUFS: waiting for buffers */
#define C_EVICT		0x0200	/* its send is being cancelled to free a buffer */
#define C_RBUSY		0x0400	/* its receive buffer is queued for sending */
#define C_RCANCEL	0x0800	/* a cancel of its recv is in flight */
#define C_EMPTY		0x1000	/* the last recv drained the socket */
#define C_HOLDER	0x2000	/* holds ring buffers: on the holders list */
#define C_DOOMED	0x4000	/* to be closed after the current completion */
#define C_CLOSESENT	0x8000	/* the close request is armed */
#define C_PARKED	0x10000	/* accepted past -m: waits, no request armed */
#define C_PACED		0x20000	/* not taking input: a recipient is congested */
#define C_CONGEST	0x40000	/* above the high-water mark: paces senders */
#define C_STALLED	0x80000	/* congested, but no progress for STALL_MS */

/* What a connection wants armed at the next flush. */
#define W_RECV		0x01
#define W_SEND		0x02
#define W_CANCEL_RECV	0x04
#define W_CANCEL_SEND	0x08
#define W_CANCEL_ALL	0x10
#define W_CLOSE		0x20

struct worker;

/* A send of several segments: what the kernel reads while it is in flight. */
struct usend {
	struct msghdr	 msg;
	struct iovec	 iov[SEND_IOV];
};

struct conn {
	struct worker	*w;
	int		 fd;
	unsigned	 flags;
	unsigned	 want;
	unsigned	 refs;		/* requests in flight that name us */
	unsigned	 nheld;		/* ring buffers in our queue */
	unsigned	 send_gen;	/* loop iteration the send was armed in */
	size_t		 qbytes;	/* bytes queued for output */
	size_t		 send_len;	/* bytes in the send in flight */
	struct useg	*qhead, *qtail;
	struct useg	*send_last;	/* last segment in the send in flight */
	struct useg	*inq, *inq_tail; /* input held while not taking it */
	struct usend	*snd;		/* for sends of several segments */
	int64_t		 prog_ms;	/* congested: last output progress */
	struct useg	*rbuf;		/* --no-bufring: our receive buffer */
	int64_t		 last;		/* last activity (ms), for -t and linger */
	int64_t		 recv_ms;	/* the millisecond of its last receive */
	TAILQ_ENTRY(conn) lru;		/* live (oldest first) or linger */
	TAILQ_ENTRY(conn) dirty;
	TAILQ_ENTRY(conn) bufwait;
	TAILQ_ENTRY(conn) pace;		/* on the paced list */
	TAILQ_ENTRY(conn) cong;		/* on the congested list */
	LIST_ENTRY(conn) holder;
	struct conn	*doom_next;
	struct svc_sink	 sink;
	char		*peer;
	uint64_t	 state[];	/* the service's */
};

TAILQ_HEAD(conn_tq, conn);
LIST_HEAD(conn_l, conn);

struct ustats {
	unsigned long long enters, cqes, recvs, sends, short_sends, enobufs;
	unsigned long long sq_full, cq_overflow, rearms, copies, evictions;
	unsigned long long pauses, parked, shed, bufbugs, accepts, emfile;
	unsigned long long paces, stalls, held;
};

struct shared;

struct worker {
	struct srv		*s;
	const struct ucfg	*cfg;
	struct shared		*sh;
	int			 id;
	pthread_t		 thread;
	struct io_uring		 ring;
	int			 ring_ok;
	unsigned		 features, sq_entries, cq_entries;

	/* The rungs actually in use, after probing and fallbacks. */
	int			 ms_accept, ms_recv, bufring, defer, coop;
	int			 sqpoll, submit_all, reg_ring;

	int			 lfd, reserve, wake_fd;
	int			 accept_armed, accept_cancel, accept_ok;
	int			 emfile;	/* out of descriptors: poll, shed */
	uint64_t		 accept_ud;	/* what is armed: to cancel it */
	int			 wake_armed, recv_ok_seen;
	int64_t			 accept_resume;
	int			 stopping;
	int64_t			 stop_deadline;

	/* Provided buffer ring. */
	struct io_uring_buf_ring *br;
	size_t			 br_size, bufs_size;
	uint8_t			*bufs;
	struct useg		*bseg;		/* one per buffer id */
	uint8_t			*bheld;		/* buffer id is ours, not the kernel's */
	unsigned		 nbufs, brmask, br_pending, nheld, max_held;
	size_t			 bufsize;
	int			 starved;

	struct conn_tq		 live, linger, closing, parked, dirty, bufwait;
	struct conn_tq		 paced, congested;
	unsigned		 ncongest;	/* congested recipients */
	struct conn_l		 holders;
	struct conn		*doomed;
	struct useg		*pool;		/* free SMALL_SEG copies */
	unsigned		 npool;
	int			 nconns;	/* open */
	int			 nalloc;	/* allocated, closing ones too */

	int64_t			 now;
	unsigned		 gen;
	unsigned		 solo_sends;	/* sends armed with nothing behind */
	unsigned		 iter_recvs, recv_target;
	unsigned		 ms_senders;	/* connections heard this ms */
	unsigned		 senders;	/* ... in the last whole ms */
	int64_t			 senders_ms;
	struct ustats		 st;
	int			 init_rc, exit_code;
};

/* What the workers share: only the way to stop each other. */
struct shared {
	struct worker		*w;
	int			 n;
	pthread_mutex_t		 mu;
	pthread_cond_t		 cv;
	int			 inited;
};

/*
 * user_data: the object a completion is for, with the request type in
 * the low 3 bits (connections and workers are at least 8-byte aligned).
 * The kernel hands it back untouched; it is also the key to cancel by.
 */
enum { UD_IGNORE, UD_ACCEPT, UD_RECV, UD_SEND, UD_CANCEL, UD_CLOSE, UD_WAKE,
    UD_LPOLL };

static inline uint64_t
ud_make(void *p, int type)
{
	return (uint64_t)(uintptr_t)p | (uint64_t)type;
}

static inline void
ud_set(struct io_uring_sqe *sqe, void *p, int type)
{
	io_uring_sqe_set_data64(sqe, ud_make(p, type));
}

static void	conn_close(struct worker *, struct conn *);
static void	conn_check_free(struct worker *, struct conn *);

/* ---- submission ------------------------------------------------------------ */

/*
 * An SQE, or NULL.  The SQ ring has a fixed size: when it is full, hand
 * what is in it to the kernel (io_uring_submit consumes the entries at
 * once, except with SQPOLL, where we wait for the thread to make room).
 * A NULL after that means the kernel refused the batch (no memory):
 * the caller leaves its work for the next round.
 */
static struct io_uring_sqe *
ur_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);

	if (sqe != NULL)
		return sqe;
	w->st.sq_full++;
	w->st.enters++;
	(void)io_uring_submit(&w->ring);
	if (w->sqpoll)
		(void)io_uring_sqring_wait(&w->ring);
	return io_uring_get_sqe(&w->ring);
}

static void
want(struct worker *w, struct conn *c, unsigned what)
{
	c->want |= what;
	if (!(c->flags & C_DIRTY)) {
		c->flags |= C_DIRTY;
		TAILQ_INSERT_TAIL(&w->dirty, c, dirty);
	}
}

/* ---- the provided buffer ring ---------------------------------------------- */

/*
 * liburing 2.3 has io_uring_register_buf_ring() but not the later
 * io_uring_setup_buf_ring(): map the ring ourselves.  The ring is an array
 * of {addr, len, bid} the kernel reads buffers from and we append returned
 * buffers to; its memory must be page aligned (the kernel pins it).  The
 * buffers themselves are one mapping, touched only where data lands.
 */
static int
bufring_init(struct worker *w)
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

/* The kernel handed us buffer BID with a completion: it is ours now. */
static uint8_t *
buf_take(struct worker *w, unsigned bid)
{
	if (bid >= w->nbufs || w->bheld[bid]) {
		w->st.bufbugs++;
		return NULL;
	}
	w->bheld[bid] = 1;
	w->nheld++;
	return w->bufs + (size_t)bid * w->bufsize;
}

/*
 * Give buffer BID back: append it to the ring.  The kernel sees it once
 * the tail moves (flush publishes every return of a round at once).  A
 * buffer given back twice would be handed out twice, to two connections
 * at the same time: each id goes back exactly once, and only ids that
 * came to us in a completion.
 */
static void
buf_return(struct worker *w, unsigned bid)
{
	if (bid >= w->nbufs || !w->bheld[bid]) {
		w->st.bufbugs++;
		return;
	}
	w->bheld[bid] = 0;
	w->nheld--;
	io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * w->bufsize,
	    (unsigned)w->bufsize, (unsigned short)bid, (int)w->brmask,
	    (int)w->br_pending++);
}

static void
buf_publish(struct worker *w)
{
	if (w->br_pending == 0)
		return;
	/* A release store of the tail: the entries are written first. */
	io_uring_buf_ring_advance(w->br, (int)w->br_pending);
	w->br_pending = 0;
}

/* ---- output queue ---------------------------------------------------------- */

/*
 * A copy of up to LEN bytes.  Small ones come from a per-worker pool:
 * malloc and free of a page-sized block per message would, at the top of
 * the heap, make glibc grow and trim it with brk(2) over and over.
 */
static struct useg *
seg_heap(struct worker *w, size_t len)
{
	size_t cap = len < SMALL_SEG ? SMALL_SEG : len;
	struct useg *s;

	if (cap == SMALL_SEG && (s = w->pool) != NULL) {
		w->pool = s->next;
		w->npool--;
	} else if ((s = malloc(sizeof(*s) + cap)) == NULL)
		return NULL;
	s->next = NULL;
	s->data = (uint8_t *)(s + 1);
	s->off = s->len = 0;
	s->cap = (uint32_t)cap;
	s->kind = SEG_HEAP;
	return s;
}

static void
seg_free(struct worker *w, struct useg *s)
{
	if (s->cap == SMALL_SEG && w->npool < POOL_MAX) {
		s->next = w->pool;
		w->pool = s;
		w->npool++;
	} else
		free(s);
}

static void
seg_enqueue(struct conn *c, struct useg *s)
{
	s->next = NULL;
	if (c->qtail)
		c->qtail->next = s;
	else
		c->qhead = s;
	c->qtail = s;
	c->qbytes += s->len - s->off;
}

/* Queue a copy of BUF: what every service's reply does. */
static int
queue_copy(struct worker *w, struct conn *c, const uint8_t *buf, size_t len)
{
	struct useg *t = c->qtail, *s;
	size_t n;

	/* Top up the last copy, unless the kernel is sending from it. */
	if (t && t->kind == SEG_HEAP && !(t == c->send_last && (c->flags & C_SEND))) {
		n = t->cap - t->len;
		n = n < len ? n : len;
		memcpy(t->data + t->len, buf, n);
		t->len += (uint32_t)n;
		c->qbytes += n;
		buf += n;
		len -= n;
	}
	if (len == 0)
		return 0;
	if ((s = seg_heap(w, len)) == NULL)
		return -ENOMEM;
	memcpy(s->data, buf, len);
	s->len = (uint32_t)len;
	seg_enqueue(c, s);
	w->st.copies++;
	return 0;
}

/*
 * Hold input C may not take now (its output is over the high-water mark,
 * or a recipient of the room is): a multishot recv goes on delivering
 * until its cancel lands, and what it delivered must be neither fed to
 * the service (its output would grow past the mark) nor lost.  It is at
 * most what was in flight: one round of completions.  A copy, so that
 * the ring buffer goes back at once.
 */
static int
hold(struct worker *w, struct conn *c, const uint8_t *buf, size_t len)
{
	struct useg *t = c->inq_tail, *s;
	size_t n;

	if (t && (n = t->cap - t->len) > 0) {
		n = n < len ? n : len;
		memcpy(t->data + t->len, buf, n);
		t->len += (uint32_t)n;
		buf += n;
		len -= n;
	}
	if (len == 0)
		return 0;
	if ((s = seg_heap(w, len)) == NULL)
		return -ENOMEM;
	memcpy(s->data, buf, len);
	s->len = (uint32_t)len;
	if (t)
		t->next = s;
	else
		c->inq = s;
	c->inq_tail = s;
	w->st.held++;
	return 0;
}

static void
inq_free(struct worker *w, struct conn *c)
{
	struct useg *s;

	while ((s = c->inq) != NULL) {
		c->inq = s->next;
		seg_free(w, s);
	}
	c->inq_tail = NULL;
}

static void
seg_release(struct worker *w, struct conn *c, struct useg *s)
{
	if (s->kind >= 0) {
		buf_return(w, (unsigned)s->kind);
		if (--c->nheld == 0 && (c->flags & C_HOLDER)) {
			LIST_REMOVE(c, holder);
			c->flags &= ~C_HOLDER;
		}
	} else if (s->kind == SEG_RBUF) {
		c->flags &= ~C_RBUSY;
		want(w, c, W_RECV);
	} else
		seg_free(w, s);
}

/*
 * Replace the pinned segment at *PP (a ring buffer or our receive buffer)
 * by a copy of what is left of it, and release the original: a slow peer
 * then holds malloc'd memory (bounded by the high-water mark) instead of
 * buffers every connection needs.  Never for a segment being sent.
 */
static int
seg_unpin(struct worker *w, struct conn *c, struct useg **pp)
{
	struct useg *s = *pp, *h;
	size_t n = s->len - s->off;

	if ((h = seg_heap(w, n)) == NULL)
		return -ENOMEM;
	memcpy(h->data, s->data + s->off, n);
	h->len = (uint32_t)n;
	h->next = s->next;
	*pp = h;
	if (c->qtail == s)
		c->qtail = h;
	seg_release(w, c, s);
	w->st.copies++;
	return 0;
}

static void
queue_free(struct worker *w, struct conn *c)
{
	struct useg *s;

	while ((s = c->qhead) != NULL) {
		c->qhead = s->next;
		seg_release(w, c, s);
	}
	c->qtail = NULL;
	c->qbytes = 0;
	inq_free(w, c);
}

/* ---- connections ----------------------------------------------------------- */

static void
touch(struct worker *w, struct conn *c)
{
	c->last = w->now;
	if (!(c->flags & (C_LINGER | C_CLOSING)) && TAILQ_NEXT(c, lru) != NULL) {
		TAILQ_REMOVE(&w->live, c, lru);
		TAILQ_INSERT_TAIL(&w->live, c, lru);
	}
}

static int
recv_ok(const struct worker *w, const struct conn *c)
{
	if (c->flags & (C_RECV | C_CLOSING | C_EOF | C_PAUSED | C_PACED |
	    C_BUFWAIT | C_RBUSY | C_DOOMED) || c->inq != NULL)
		return 0;
	if ((c->flags & C_CLOSE) && !(c->flags & C_LINGER))
		return 0;
	return !w->stopping;
}

/* A connection failing while another is served (broadcast): later. */
static void
conn_doom(struct worker *w, struct conn *c)
{
	if (c->flags & (C_DOOMED | C_CLOSING))
		return;
	c->flags |= C_DOOMED;
	c->doom_next = w->doomed;
	w->doomed = c;
}

static void
run_doomed(struct worker *w)
{
	struct conn *c;

	while ((c = w->doomed) != NULL) {
		w->doomed = c->doom_next;
		c->flags &= ~C_DOOMED;
		conn_close(w, c);
	}
}

static void
check_highwater(struct worker *w, struct conn *c)
{
	if ((c->flags & C_PAUSED) || c->qbytes < w->s->highwater)
		return;
	/*
	 * Backpressure: stop receiving; the socket's receive buffer fills
	 * and TCP's window stops the peer.  A multishot recv would go on
	 * delivering: cancel it (what it delivers until then is held, see
	 * hold()).  A single-shot one is simply not re-armed.
	 */
	c->flags |= C_PAUSED;
	w->st.pauses++;
	if ((c->flags & C_RECV) && w->ms_recv)
		want(w, c, W_CANCEL_RECV);
}

/*
 * Pacing, for a service that broadcasts.  A recipient whose queue passes
 * the high-water mark is congested, and while one is, no connection's
 * input is fed to the service (each is paced: held, its recv stopped).
 * Without it one round of completions can hand the service megabytes
 * from a talker before a single send to a listener has completed, and a
 * listener that reads as fast as it can would pass --max-pending and be
 * dropped.  A recipient that makes no progress for STALL_MS (it does not
 * read at all) stops pacing the room: its queue grows again, and it is
 * dropped at --max-pending, as before.
 */
static void
congest(struct worker *w, struct conn *c)
{
	if ((c->flags & (C_CONGEST | C_STALLED | C_CLOSING)) ||
	    c->qbytes < w->s->highwater)
		return;
	c->flags |= C_CONGEST;
	c->prog_ms = w->now;
	TAILQ_INSERT_TAIL(&w->congested, c, cong);
	w->ncongest++;
}

static void
decongest(struct worker *w, struct conn *c, int stalled)
{
	if (!(c->flags & C_CONGEST))
		return;
	c->flags &= ~C_CONGEST;
	TAILQ_REMOVE(&w->congested, c, cong);
	w->ncongest--;
	if (stalled) {
		c->flags |= C_STALLED;
		w->st.stalls++;
		srv_debug(w->s, "%s: no progress for %d ms with %zu bytes "
		    "queued: no longer pacing the others",
		    c->peer ? c->peer : "client", STALL_MS, c->qbytes);
	}
}

static void
check_pace(struct worker *w, struct conn *c)
{
	if (w->ncongest == 0 || (c->flags & (C_PACED | C_CLOSING)) ||
	    !(w->s->svc->flags & SVC_NEEDS_BROADCAST))
		return;
	c->flags |= C_PACED;
	TAILQ_INSERT_TAIL(&w->paced, c, pace);
	w->st.paces++;
	if ((c->flags & C_RECV) && w->ms_recv)
		want(w, c, W_CANCEL_RECV);
}

static void
unpace(struct worker *w, struct conn *c)
{
	if (!(c->flags & C_PACED))
		return;
	c->flags &= ~C_PACED;
	TAILQ_REMOVE(&w->paced, c, pace);
}

/* May C's input be fed to the service now? */
static int
may_take(const struct conn *c)
{
	return !(c->flags & (C_PAUSED | C_PACED | C_CLOSING | C_DOOMED |
	    C_CLOSE | C_LINGER));
}

static int
sink_reply(struct svc_sink *sink, const void *buf, size_t len)
{
	struct conn *c = sink->conn;
	struct worker *w = sink->ctx;

	if (c->flags & (C_CLOSING | C_DOOMED | C_LINGER))
		return -EPIPE;
	if (queue_copy(w, c, buf, len) < 0) {
		srv_warn(w->s, "out of memory queueing output: closing");
		conn_doom(w, c);
		return -ENOMEM;
	}
	want(w, c, W_SEND);
	return 0;
}

/*
 * Broadcast to the other connections of this ring (a service that needs
 * it runs with one worker: see srv_init).  A recipient that let more than
 * max_pending pile up is not reading: it is dropped.
 */
static int
sink_broadcast(struct svc_sink *sink, const void *buf, size_t len)
{
	struct conn *self = sink->conn, *c;
	struct worker *w = sink->ctx;

	TAILQ_FOREACH(c, &w->live, lru) {
		if (c == self || (c->flags & (C_DOOMED | C_CLOSE | C_EOF)))
			continue;
		if (c->qbytes + len > w->s->svc_cfg.max_pending) {
			srv_log(w->s, "%s: %zu bytes of output pending, not "
			    "reading: disconnected", c->peer ? c->peer : "client",
			    c->qbytes);
			conn_doom(w, c);
			continue;
		}
		if (queue_copy(w, c, buf, len) < 0) {
			conn_doom(w, c);
			continue;
		}
		want(w, c, W_SEND);
		check_highwater(w, c);
		congest(w, c);
	}
	return 0;
}

static void
conn_start(struct worker *w, struct conn *c)
{
	const struct srv *s = w->s;

	c->last = w->now;
	TAILQ_INSERT_TAIL(&w->live, c, lru);
	w->nconns++;
	if (s->verbose > 1)
		srv_debug(s, "open %s", c->peer ? c->peer : "");
	if (svc_open(s->svc, &s->svc_cfg, c->state, &c->sink) < 0) {
		conn_close(w, c);
		return;
	}
	want(w, c, W_RECV);
}

static void
conn_new(struct worker *w, int fd)
{
	const struct srv *s = w->s;
	char buf[NET_ADDRSTRLEN];
	struct net_addr peer;
	struct conn *c;

	c = calloc(1, sizeof(*c) + s->svc->state_size);
	if (c == NULL) {
		srv_warn(s, "out of memory: connection refused");
		close(fd);
		return;
	}
	c->w = w;
	c->fd = fd;
	c->sink.reply = sink_reply;
	c->sink.broadcast = sink_broadcast;
	c->sink.conn = c;
	c->sink.ctx = w;
	if ((s->svc->state_size > 0 || s->verbose > 1) &&
	    net_peer_addr(fd, &peer) == 0) {
		c->peer = strdup(net_addr_str(&peer, buf, sizeof(buf)));
		c->sink.peer = c->peer;
	}
	w->nalloc++;
	w->st.accepts++;
	if (s->max_conns && w->nconns >= s->max_conns) {
		/*
		 * Past -m: a multishot accept takes every connection in the
		 * backlog before our cancel reaches it.  Park the extra ones
		 * (no request, no buffer): to the client it is the same as
		 * waiting in the backlog, and it is served when a slot frees.
		 */
		c->flags |= C_PARKED;
		TAILQ_INSERT_TAIL(&w->parked, c, lru);
		w->st.parked++;
		return;
	}
	conn_start(w, c);
}

/*
 * Close: the service hears of it now, but the socket stays open and the
 * memory allocated until every request naming them has completed.
 * close(2) under a pending request would not even stop it: the request
 * holds its own reference to the file, so a recv would wait on, and its
 * completion would name a freed connection.  Cancel first, then close.
 */
static void
conn_close(struct worker *w, struct conn *c)
{
	struct conn *p;

	if (c->flags & C_CLOSING)
		return;
	c->flags |= C_CLOSING;
	if (c->flags & C_PARKED) {
		TAILQ_REMOVE(&w->parked, c, lru);
		TAILQ_INSERT_TAIL(&w->closing, c, lru);
		conn_check_free(w, c);
		return;
	}
	svc_close(w->s->svc, &w->s->svc_cfg, c->state, &c->sink);
	decongest(w, c, 0);
	unpace(w, c);
	inq_free(w, c);
	if (c->flags & C_LINGER)
		TAILQ_REMOVE(&w->linger, c, lru);
	else
		TAILQ_REMOVE(&w->live, c, lru);
	TAILQ_INSERT_TAIL(&w->closing, c, lru);
	if (c->flags & C_BUFWAIT) {
		TAILQ_REMOVE(&w->bufwait, c, bufwait);
		c->flags &= ~C_BUFWAIT;
	}
	w->nconns--;
	if (w->s->verbose > 1)
		srv_debug(w->s, "close %s", c->peer ? c->peer : "");
	if (c->flags & (C_RECV | C_SEND))
		want(w, c, W_CANCEL_ALL);
	conn_check_free(w, c);
	if (!w->stopping && (p = TAILQ_FIRST(&w->parked)) != NULL) {
		/* A slot is free: serve the longest waiting. */
		TAILQ_REMOVE(&w->parked, p, lru);
		p->flags &= ~C_PARKED;
		conn_start(w, p);
	}
}

/* The last request has completed: give back buffers, close the socket. */
static void
conn_check_free(struct worker *w, struct conn *c)
{
	if (!(c->flags & C_CLOSING) || c->refs > 0 || (c->flags & C_CLOSESENT))
		return;
	queue_free(w, c);
	if (c->rbuf)
		seg_free(w, c->rbuf);
	c->rbuf = NULL;
	c->flags |= C_CLOSESENT;
	c->want = 0;
	want(w, c, W_CLOSE);
}

static void
conn_destroy(struct worker *w, struct conn *c)
{
	if (c->flags & C_DIRTY)
		TAILQ_REMOVE(&w->dirty, c, dirty);
	TAILQ_REMOVE(&w->closing, c, lru);
	w->emfile = 0;		/* a descriptor is free again: accept */
	free(c->snd);
	free(c->peer);
	free(c);
	w->nalloc--;
}

/*
 * Lingering close, after a service error: the reply is queued and sent;
 * closing now with unread input would make the kernel send a RST that may
 * destroy the reply before the peer reads it.  Shut down our side and
 * read (discarding) until the peer closes, for at most LINGER_MS.
 */
static void
conn_linger(struct worker *w, struct conn *c)
{
	if (shutdown(c->fd, SHUT_WR) < 0) {
		conn_close(w, c);
		return;
	}
	TAILQ_REMOVE(&w->live, c, lru);
	c->flags |= C_LINGER;
	c->last = w->now;
	TAILQ_INSERT_TAIL(&w->linger, c, lru);
	want(w, c, W_RECV);
}

/* The output queue has drained. */
static void
conn_drained(struct worker *w, struct conn *c)
{
	if (c->inq)
		return;			/* held input first: conn_feed() */
	if (c->flags & C_EOF)
		conn_close(w, c);	/* half-close done: all echoed */
	else if ((c->flags & C_CLOSE) && !(c->flags & C_LINGER))
		conn_linger(w, c);
}

/* The service answered an error (r < 0): flush, then close. */
static void
input_error(struct worker *w, struct conn *c, int r)
{
	inq_free(w, c);
	if (r == -ENOMEM) {
		srv_warn(w->s, "out of memory queueing output: closing");
		conn_close(w, c);
		return;
	}
	if (c->flags & C_CLOSING)
		return;
	c->flags |= C_CLOSE;
	if (c->flags & C_RECV)
		want(w, c, W_CANCEL_RECV);
}

/*
 * Feed BUF to the service, a slice at a time, while C may take it: a
 * service may answer far more than it reads (an rpc error to an empty
 * frame is 20 times its size), so the high-water mark is checked after
 * each slice, not after a whole buffer.  Returns the bytes consumed.
 */
static size_t
feed(struct worker *w, struct conn *c, const uint8_t *buf, size_t n)
{
	const struct srv *s = w->s;
	size_t done = 0, k;
	int r;

	while (done < n && may_take(c)) {
		k = n - done < FEED_SLICE ? n - done : FEED_SLICE;
		r = svc_input(s->svc, &s->svc_cfg, c->state, buf + done, k,
		    &c->sink);
		done += k;
		if (r < 0) {
			input_error(w, c, r);
			return n;
		}
		check_highwater(w, c);
		check_pace(w, c);
	}
	if (c->flags & (C_CLOSING | C_DOOMED | C_CLOSE | C_LINGER))
		return n;	/* the rest is of no use now */
	return done;
}

/*
 * The in-place rung: transform the buffer the kernel wrote into and send
 * that very buffer, no copy.  Past max_held buffers, copy instead: see
 * seg_unpin().  And copy small messages: a buffer sent from stays out of
 * the ring until the send's completion is reaped, a round later, so under
 * load twice the messages of a batch would be out of the ring; copying
 * 128 bytes costs less than that.  Returns 1 when the buffer BID is now
 * in our queue, 0 when the caller may give it back, < 0 on error.
 */
static int
input_inplace(struct worker *w, struct conn *c, uint8_t *buf, size_t n, int bid)
{
	struct useg *seg;

	w->s->svc->transform(buf, n);
	if (w->cfg->send_inplace && bid >= 0 && c->nheld < w->max_held &&
	    n > w->cfg->copy_below) {
		seg = &w->bseg[bid];
		seg->data = buf;
		seg->off = 0;
		seg->len = (uint32_t)n;
		seg->cap = (uint32_t)w->bufsize;
		seg->kind = bid;
		seg_enqueue(c, seg);
		if (c->nheld++ == 0) {
			LIST_INSERT_HEAD(&w->holders, c, holder);
			c->flags |= C_HOLDER;
		}
		return 1;
	}
	if (w->cfg->send_inplace && bid < 0) {
		c->rbuf->off = 0;
		c->rbuf->len = (uint32_t)n;
		c->rbuf->kind = SEG_RBUF;
		seg_enqueue(c, c->rbuf);
		c->flags |= C_RBUSY;
		return 0;
	}
	return queue_copy(w, c, buf, n);
}

/* Data arrived in BUF (a ring buffer BID >= 0, or our receive buffer). */
static void
conn_input(struct worker *w, struct conn *c, uint8_t *buf, size_t n, int bid)
{
	size_t done;
	int r = 0;

	if (c->flags & (C_CLOSE | C_DOOMED)) {
		/* Closing after a service error: input is of no use. */
	} else if (c->inq || !may_take(c)) {
		/* Arrived after we stopped taking input: keep it. */
		r = hold(w, c, buf, n);
	} else if (w->s->svc->flags & SVC_INPLACE) {
		if ((r = input_inplace(w, c, buf, n, bid)) > 0)
			bid = -1;
		check_highwater(w, c);
	} else if ((done = feed(w, c, buf, n)) < n)
		r = hold(w, c, buf + done, n - done);
	if (bid >= 0)
		buf_return(w, (unsigned)bid);
	if (r < 0) {
		input_error(w, c, r);
		return;
	}
	if (c->qhead && !(c->flags & C_CLOSING))
		want(w, c, W_SEND);
}

/*
 * C may take input again: feed what was held, as long as it may, then
 * receive again (or, after an EOF, close once all is answered).
 */
static void
conn_feed(struct worker *w, struct conn *c)
{
	const struct srv *s = w->s;
	struct useg *h;
	size_t n;

	while ((h = c->inq) != NULL && may_take(c)) {
		if (s->svc->flags & SVC_INPLACE) {
			/* The held copy becomes the output. */
			c->inq = h->next;
			s->svc->transform(h->data + h->off, h->len - h->off);
			seg_enqueue(c, h);
			check_highwater(w, c);
		} else {
			n = feed(w, c, h->data + h->off, h->len - h->off);
			if (c->inq != h)
				break;		/* closed: all freed */
			h->off += (uint32_t)n;
			if (h->off < h->len)
				break;
			c->inq = h->next;
			seg_free(w, h);
		}
		if (c->inq == NULL)
			c->inq_tail = NULL;
	}
	if (c->flags & C_CLOSING)
		return;
	if (c->qhead)
		want(w, c, W_SEND);
	if (c->inq)
		return;
	if ((c->flags & C_EOF) && !c->qhead && !(c->flags & C_SEND))
		conn_close(w, c);
	else
		want(w, c, W_RECV);
}

/* ---- completions ----------------------------------------------------------- */

static void
on_recv(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe)
{
	int res = cqe->res, more = cqe->flags & IORING_CQE_F_MORE;
	uint8_t *buf = NULL;
	int bid = -1;

	/*
	 * A CQE that carries a buffer hands it to us whatever its result
	 * (even 0 at EOF on some kernels): take it, and give it back.
	 */
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		bid = (int)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		if ((buf = buf_take(w, (unsigned)bid)) == NULL)
			bid = -1;
	}
	if (!more) {
		c->flags &= ~(C_RECV | C_RCANCEL);
		c->refs--;
	}
	if (cqe->flags & IORING_CQE_F_SOCK_NONEMPTY)
		c->flags &= ~C_EMPTY;
	else
		c->flags |= C_EMPTY;
	if (c->flags & C_CLOSING) {
		if (bid >= 0)
			buf_return(w, (unsigned)bid);
		conn_check_free(w, c);
		return;
	}
	if (res > 0) {
		w->recv_ok_seen = 1;
		w->st.recvs++;
		w->iter_recvs++;
		if (c->recv_ms != w->now) {
			c->recv_ms = w->now;
			w->ms_senders++;
		}
		touch(w, c);
		if (!w->bufring)
			buf = c->rbuf->data;
		if (c->flags & C_LINGER) {
			if (bid >= 0)
				buf_return(w, (unsigned)bid);
		} else if (buf == NULL) {
			srv_warn(w->s, "recv completed without a buffer: closing");
			conn_close(w, c);
			return;
		} else
			conn_input(w, c, buf, (size_t)res, bid);
		if (!more && !(c->flags & C_CLOSING)) {
			if (w->ms_recv)
				w->st.rearms++;	/* multishot ended: re-arm */
			want(w, c, W_RECV);
		}
		return;
	}
	if (bid >= 0)
		buf_return(w, (unsigned)bid);
	if (res == 0) {
		/* EOF: the peer may still read (half-close). */
		c->flags |= C_EOF;
		if ((c->flags & C_LINGER) ||
		    (!c->qhead && !c->inq && !(c->flags & C_SEND)))
			conn_close(w, c);
		return;
	}
	switch (-res) {
	case ENOBUFS:
		/*
		 * The ring is empty: every buffer is in use.  The multishot
		 * recv has ended; wait for buffers to come back (flush
		 * re-arms), and free the ones slow peers sit on (evict).
		 */
		w->st.enobufs++;
		if (!(c->flags & C_BUFWAIT)) {
			c->flags |= C_BUFWAIT;
			TAILQ_INSERT_TAIL(&w->bufwait, c, bufwait);
		}
		w->starved = 1;
		break;
	case ECANCELED:
		want(w, c, W_RECV);	/* paused, or re-armed if resumed */
		break;
	case EINVAL:
		if (w->ms_recv && !w->recv_ok_seen) {
			srv_log(w->s, "multishot recv refused by the kernel: "
			    "falling back to single-shot recv");
			w->ms_recv = 0;
			want(w, c, W_RECV);
			break;
		}
		/* FALLTHROUGH */
	default:
		if (res != -ECONNRESET && res != -EPIPE)
			srv_debug(w->s, "recv: %s", strerror(-res));
		conn_close(w, c);
	}
}

/* Replace every ring buffer or receive buffer in C's queue by a copy. */
static void
unpin_all(struct worker *w, struct conn *c)
{
	struct useg **pp;

	for (pp = &c->qhead; *pp; pp = &(*pp)->next)
		if ((*pp)->kind != SEG_HEAP)
			(void)seg_unpin(w, c, pp);
}

static void
on_send(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe)
{
	const struct srv *srv = w->s;
	struct useg *s;
	size_t left, n;
	int res = cqe->res;

	c->flags &= ~C_SEND;
	c->send_last = NULL;
	c->refs--;
	if (c->flags & C_CLOSING) {
		conn_check_free(w, c);
		return;
	}
	if (res < 0) {
		if (res == -ECANCELED && (c->flags & C_EVICT)) {
			/* Stuck behind a slow peer: copy it, free the buffers. */
			c->flags &= ~C_EVICT;
			unpin_all(w, c);
			want(w, c, W_SEND);
			return;
		}
		if (res != -ECONNRESET && res != -EPIPE)
			srv_debug(srv, "send: %s", strerror(-res));
		conn_close(w, c);
		return;
	}
	c->flags &= ~C_EVICT;
	w->st.sends++;
	touch(w, c);
	c->qbytes -= (size_t)res;
	if ((size_t)res < c->send_len)
		w->st.short_sends++;
	for (n = (size_t)res; n > 0; ) {
		s = c->qhead;
		left = s->len - s->off;
		if (n < left) {
			s->off += (uint32_t)n;
			break;
		}
		n -= left;
		c->qhead = s->next;
		if (c->qhead == NULL)
			c->qtail = NULL;
		seg_release(w, c, s);
	}
	if ((size_t)res < c->send_len) {
		/*
		 * Short send: the socket buffer is full, the peer reads
		 * slower than we send.  Resubmit the rest, from copies: the
		 * next send may wait long, and must not pin ring buffers.
		 */
		unpin_all(w, c);
	}
	if (res > 0) {
		c->prog_ms = w->now;
		if (c->flags & C_STALLED) {
			/* It reads again: it paces the room again. */
			c->flags &= ~C_STALLED;
			congest(w, c);
		}
	}
	if ((c->flags & C_CONGEST) && c->qbytes <= srv->highwater / 2)
		decongest(w, c, 0);
	if ((c->flags & C_PAUSED) && c->qbytes <= srv->highwater / 2) {
		/* Well below the mark, so a flood does not flip it often. */
		c->flags &= ~C_PAUSED;
		conn_feed(w, c);
		if (c->flags & C_CLOSING)
			return;
	}
	if (c->qhead)
		want(w, c, W_SEND);
	else
		conn_drained(w, c);
}

static void
on_accept(struct worker *w, const struct io_uring_cqe *cqe)
{
	const struct srv *s = w->s;
	int res = cqe->res;

	if (!(cqe->flags & IORING_CQE_F_MORE)) {
		w->accept_armed = 0;
		w->accept_cancel = 0;
	}
	if (res >= 0) {
		w->accept_ok = 1;
		if (w->stopping)
			close(res);
		else
			conn_new(w, res);
		return;
	}
	switch (-res) {
	case ECANCELED:
		break;
	case EINVAL:
		if (w->ms_accept && !w->accept_ok) {
			srv_log(s, "multishot accept refused by the kernel: "
			    "falling back to single-shot accept");
			w->ms_accept = 0;
			break;
		}
		/* FALLTHROUGH */
	case EMFILE:
	case ENFILE:
		/*
		 * Out of descriptors.  io_uring's accept takes a descriptor
		 * slot before it looks at the backlog, so it fails at once
		 * even with nobody waiting: re-arming it would spin.  Watch
		 * the listener instead until descriptors are free again
		 * (on_lpoll).
		 */
		if (!w->emfile)
			srv_log(s, "out of descriptors (%s): shedding new "
			    "connections until some close", strerror(-res));
		w->emfile = 1;
		w->st.emfile++;
		break;
	default:
		if (res != -ECONNABORTED && res != -EINTR)
			srv_warn(s, "accept: %s", strerror(-res));
		w->accept_resume = w->now + ACCEPT_PAUSE_MS;
	}
}

/*
 * The listener is readable while we are out of descriptors: try a real
 * accept (a thread or a close may have freed one), else shed the pending
 * connection with the reserve descriptor: the client sees an orderly close
 * instead of hanging in the backlog, and the poll, re-armed, fires again
 * only for the next one.
 */
static void
on_lpoll(struct worker *w, const struct io_uring_cqe *cqe)
{
	int fd, r;

	w->accept_armed = 0;
	w->accept_cancel = 0;
	if (cqe->res < 0 || w->stopping)
		return;
	fd = net_accept(w->lfd, NULL, 0);
	if (fd >= 0) {
		w->emfile = 0;
		conn_new(w, fd);
		return;
	}
	if (fd != -EMFILE && fd != -ENFILE)
		return;
	r = net_accept_shed(w->lfd, &w->reserve);
	if (r > 0)
		w->st.shed++;
	else if (r < 0)
		w->accept_resume = w->now + ACCEPT_PAUSE_MS;
}

static void begin_stop(struct worker *);

static void
on_wake(struct worker *w)
{
	struct signalfd_siginfo si;
	uint64_t one = 1;
	int i;

	w->wake_armed = 0;
	if (w->id == 0) {
		while (read(w->wake_fd, &si, sizeof(si)) == sizeof(si))
			srv_debug(w->s, "signal %u: stopping", si.ssi_signo);
		for (i = 1; i < w->sh->n; i++)
			if (w->sh->w[i].wake_fd >= 0)
				(void)!write(w->sh->w[i].wake_fd, &one, sizeof(one));
	}
	begin_stop(w);
}

static void
on_cqe(struct worker *w, const struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	void *p = (void *)(uintptr_t)(ud & ~(uint64_t)7);
	struct conn *c = p;

	if (ud == LIBURING_UDATA_TIMEOUT)
		return;		/* liburing's own, without EXT_ARG */
	switch ((int)(ud & 7)) {
	case UD_ACCEPT:
		on_accept(w, cqe);
		break;
	case UD_RECV:
		on_recv(w, c, cqe);
		break;
	case UD_SEND:
		on_send(w, c, cqe);
		break;
	case UD_CANCEL:
		/* -EALREADY: running in a worker thread, beyond cancel. */
		if (cqe->res == -EALREADY)
			(void)shutdown(c->fd, SHUT_RDWR);
		c->refs--;
		conn_check_free(w, c);
		break;
	case UD_CLOSE:
		conn_destroy(w, c);
		break;
	case UD_WAKE:
		on_wake(w);
		break;
	case UD_LPOLL:
		on_lpoll(w, cqe);
		break;
	default:
		break;
	}
}

/* ---- arming (all submissions go through here) ------------------------------ */

static void
arm_recv(struct worker *w, struct conn *c, struct io_uring_sqe *sqe)
{
	if (w->bufring) {
		/*
		 * No buffer named: the kernel picks one from group BGID only
		 * when data arrives.  Multishot: one request, a completion
		 * per arrival, until it ends (no F_MORE).
		 */
		if (w->ms_recv)
			io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
		else
			io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = BGID;
	} else
		io_uring_prep_recv(sqe, c->fd, c->rbuf->data,
		    w->bufsize, 0);
	/*
	 * The last recv said the socket was left empty (no SOCK_NONEMPTY):
	 * a recv attempted now would find nothing; skip straight to
	 * waiting (POLL_FIRST) instead of failing one attempt first.
	 */
	if (!w->ms_recv && (c->flags & C_EMPTY))
		sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
	ud_set(sqe, c, UD_RECV);
	c->refs++;
	c->flags |= C_RECV;
}

/*
 * One send carries all that is queued (up to SEND_IOV segments): what
 * piled up while the last send was in flight goes out in one request,
 * not one segment per round.  A single segment is a plain send.
 *
 * No MSG_WAITALL: the kernel would then retry a short send itself and
 * hold the buffers until the slowest peer took it all; a short count
 * returned to us lets unpin_all() free the ring buffers.
 */
static void
arm_send(struct worker *w, struct conn *c, struct io_uring_sqe *sqe)
{
	struct useg *s = c->qhead, *last = s;
	struct usend *u;
	int n;

	/* Out of memory for the iovecs: one segment will do. */
	if (s->next == NULL ||
	    (c->snd == NULL && (c->snd = malloc(sizeof(*c->snd))) == NULL)) {
		io_uring_prep_send(sqe, c->fd, s->data + s->off,
		    s->len - s->off, MSG_NOSIGNAL);
		c->send_len = s->len - s->off;
		if (s->next == NULL)
			w->solo_sends++;
	} else {
		u = c->snd;
		c->send_len = 0;
		for (n = 0; s && n < SEND_IOV; s = s->next, n++) {
			u->iov[n].iov_base = s->data + s->off;
			u->iov[n].iov_len = s->len - s->off;
			c->send_len += s->len - s->off;
			last = s;
		}
		memset(&u->msg, 0, sizeof(u->msg));
		u->msg.msg_iov = u->iov;
		u->msg.msg_iovlen = (size_t)n;
		io_uring_prep_sendmsg(sqe, c->fd, &u->msg, MSG_NOSIGNAL);
		if (s == NULL)
			w->solo_sends++;
	}
	ud_set(sqe, c, UD_SEND);
	c->refs++;
	c->flags |= C_SEND;
	c->send_gen = w->gen;
	c->send_last = last;
}

/* Arm what C wants; -1 when the SQ is out of entries (try next round). */
static int
conn_arm(struct worker *w, struct conn *c)
{
	struct io_uring_sqe *sqe;

	if (c->want & W_CLOSE) {
		if ((sqe = ur_sqe(w)) == NULL)
			return -1;
		io_uring_prep_close(sqe, c->fd);
		ud_set(sqe, c, UD_CLOSE);
		c->want = 0;
		return 0;
	}
	if (c->want & W_CANCEL_ALL) {
		if ((sqe = ur_sqe(w)) == NULL)
			return -1;
		/* Every request on this descriptor, in one entry. */
		io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
		ud_set(sqe, c, UD_CANCEL);
		c->refs++;
		c->want &= ~W_CANCEL_ALL;
	}
	if (c->flags & C_CLOSING) {
		c->want = 0;
		return 0;
	}
	if (c->want & W_CANCEL_RECV) {
		if ((c->flags & C_RECV) && !(c->flags & C_RCANCEL)) {
			if ((sqe = ur_sqe(w)) == NULL)
				return -1;
			io_uring_prep_cancel64(sqe, ud_make(c, UD_RECV), 0);
			ud_set(sqe, c, UD_CANCEL);
			c->refs++;
			c->flags |= C_RCANCEL;
		}
		c->want &= ~W_CANCEL_RECV;
	}
	if (c->want & W_CANCEL_SEND) {
		if (c->flags & C_SEND) {
			if ((sqe = ur_sqe(w)) == NULL)
				return -1;
			io_uring_prep_cancel64(sqe, ud_make(c, UD_SEND), 0);
			ud_set(sqe, c, UD_CANCEL);
			c->refs++;
		}
		c->want &= ~W_CANCEL_SEND;
	}
	if (c->want & W_SEND) {
		if (!(c->flags & C_SEND) && c->qhead) {
			if ((sqe = ur_sqe(w)) == NULL)
				return -1;
			arm_send(w, c, sqe);
		}
		c->want &= ~W_SEND;
	}
	if (c->want & W_RECV) {
		if (recv_ok(w, c)) {
			if (!w->bufring && c->rbuf == NULL &&
			    (c->rbuf = seg_heap(w, w->bufsize)) == NULL) {
				c->want = 0;
				conn_close(w, c);
				return 0;
			}
			if ((sqe = ur_sqe(w)) == NULL)
				return -1;
			arm_recv(w, c, sqe);
		}
		c->want &= ~W_RECV;
	}
	return 0;
}

/*
 * Buffers are short (a recv ended in ENOBUFS): take back those that sit
 * in the queues of connections that are not sending them right now (copy
 * the data out), and cancel sends that have been waiting on their peer
 * since an earlier round (the copy is made when the cancel completes).
 */
/* Is a ring buffer part of C's send in flight? */
static int
sending_rbuf(const struct conn *c)
{
	const struct useg *s;

	for (s = c->qhead; s; s = s->next) {
		if (s->kind >= 0)
			return 1;
		if (s == c->send_last)
			break;
	}
	return 0;
}

static void
evict(struct worker *w)
{
	struct conn *c, *next;
	struct useg **pp;

	for (c = LIST_FIRST(&w->holders); c; c = next) {
		next = LIST_NEXT(c, holder);
		if (c->flags & C_CLOSING)
			continue;
		pp = &c->qhead;
		if (c->flags & C_SEND) {
			if (c->send_gen != w->gen && !(c->flags & C_EVICT) &&
			    sending_rbuf(c)) {
				c->flags |= C_EVICT;
				w->st.evictions++;
				want(w, c, W_CANCEL_SEND);
			}
			pp = &c->send_last->next;
		}
		while (*pp) {
			if ((*pp)->kind >= 0 && seg_unpin(w, c, pp) == 0)
				w->st.evictions++;
			pp = &(*pp)->next;
		}
	}
}

static void
sync_accept(struct worker *w)
{
	const struct srv *s = w->s;
	struct io_uring_sqe *sqe;
	int on = !w->stopping && w->lfd >= 0 &&
	    (!s->max_conns || w->nconns < s->max_conns) &&
	    w->now >= w->accept_resume;

	if (on && !w->accept_armed) {
		if ((sqe = ur_sqe(w)) == NULL)
			return;
		if (w->emfile)
			io_uring_prep_poll_add(sqe, w->lfd, POLLIN);
		else if (w->ms_accept)
			io_uring_prep_multishot_accept(sqe, w->lfd, NULL, NULL,
			    SOCK_CLOEXEC);
		else
			io_uring_prep_accept(sqe, w->lfd, NULL, NULL,
			    SOCK_CLOEXEC);
		w->accept_ud = ud_make(w, w->emfile ? UD_LPOLL : UD_ACCEPT);
		io_uring_sqe_set_data64(sqe, w->accept_ud);
		w->accept_armed = 1;
	} else if (!on && w->accept_armed && !w->accept_cancel) {
		/*
		 * At the -m limit (or stopping): new clients wait in the
		 * kernel's backlog.  A multishot accept would go on taking
		 * them: cancel it.
		 */
		if ((sqe = ur_sqe(w)) == NULL)
			return;
		io_uring_prep_cancel64(sqe, w->accept_ud, 0);
		ud_set(sqe, NULL, UD_IGNORE);
		w->accept_cancel = 1;
	}
	/* The listener is closed only once no accept refers to it. */
	if (w->stopping && !w->accept_armed && w->lfd >= 0) {
		close(w->lfd);
		w->lfd = -1;
	}
}

/* Everything decided during the last batch of completions goes out here. */
static void
flush(struct worker *w)
{
	struct io_uring_sqe *sqe;
	struct conn *c;
	unsigned n;

	/* No recipient congested any more: the paced take input again. */
	while (w->ncongest == 0 && (c = TAILQ_FIRST(&w->paced)) != NULL) {
		unpace(w, c);
		conn_feed(w, c);
		run_doomed(w);
	}
	if (w->starved) {
		w->starved = 0;
		evict(w);
	}
	/*
	 * Buffers are free: as many connections waiting for one as there
	 * are free buffers try again, oldest first.  Re-arming them all
	 * would be a thundering herd: with 2 buffers and 300 waiters, 298
	 * fresh ENOBUFS per buffer returned.  A re-armed recv takes a
	 * buffer only once its data arrives, so some may leave theirs
	 * unused: next_deadline() then brings us back soon for the rest.
	 */
	for (n = w->nbufs - w->nheld; n > 0; n--) {
		if ((c = TAILQ_FIRST(&w->bufwait)) == NULL)
			break;
		TAILQ_REMOVE(&w->bufwait, c, bufwait);
		c->flags &= ~C_BUFWAIT;
		want(w, c, W_RECV);
	}
	sync_accept(w);
	if (!w->wake_armed && !w->stopping && (sqe = ur_sqe(w)) != NULL) {
		/*
		 * Poll, not read: a read of a non-blocking signalfd or
		 * eventfd through io_uring completes with -EAGAIN.
		 */
		io_uring_prep_poll_add(sqe, w->wake_fd, POLLIN);
		ud_set(sqe, w, UD_WAKE);
		w->wake_armed = 1;
	}
	while ((c = TAILQ_FIRST(&w->dirty)) != NULL) {
		if (conn_arm(w, c) < 0)
			break;
		if (c->want == 0) {
			TAILQ_REMOVE(&w->dirty, c, dirty);
			c->flags &= ~C_DIRTY;
		}
	}
	if (w->bufring)
		buf_publish(w);
}

/* ---- the loop -------------------------------------------------------------- */

static void
begin_stop(struct worker *w)
{
	struct conn *c, *next;

	if (w->stopping)
		return;
	w->stopping = 1;
	w->stop_deadline = w->now + STOP_GRACE_MS;
	for (c = TAILQ_FIRST(&w->live); c; c = next) {
		next = TAILQ_NEXT(c, lru);
		inq_free(w, c);		/* no more input is served */
		unpace(w, c);
		if (!c->qhead && !(c->flags & C_SEND))
			conn_close(w, c);
		else {
			c->flags |= C_EOF;	/* close once flushed */
			if (c->flags & C_RECV)
				want(w, c, W_CANCEL_RECV);
		}
	}
	while ((c = TAILQ_FIRST(&w->linger)) != NULL)
		conn_close(w, c);
	while ((c = TAILQ_FIRST(&w->parked)) != NULL)
		conn_close(w, c);
	run_doomed(w);
}

/* Close what has been idle or lingering too long, or outlived the stop. */
static void
expire(struct worker *w)
{
	int64_t idle = (int64_t)w->s->idle_timeout * 1000;
	struct conn *c, *next;

	if (idle > 0)
		while ((c = TAILQ_FIRST(&w->live)) && w->now - c->last >= idle) {
			srv_debug(w->s, "%s idle for %d s: closing",
			    c->peer ? c->peer : "connection",
			    w->s->idle_timeout);
			conn_close(w, c);
		}
	while ((c = TAILQ_FIRST(&w->linger)) && w->now - c->last >= LINGER_MS)
		conn_close(w, c);
	for (c = TAILQ_FIRST(&w->congested); c; c = next) {
		next = TAILQ_NEXT(c, cong);
		if (w->now - c->prog_ms >= STALL_MS)
			decongest(w, c, 1);
	}
	if (w->stopping && w->now >= w->stop_deadline)
		while ((c = TAILQ_FIRST(&w->live)) != NULL)
			conn_close(w, c);
	run_doomed(w);
}

/* Milliseconds until expire() has something to do, or -1. */
static int64_t
next_deadline(const struct worker *w)
{
	int64_t idle = (int64_t)w->s->idle_timeout * 1000, t = -1, d;
	struct conn *c;

#define EARLIER(x)	do { d = (x); if (d < 0) d = 0; \
		if (t < 0 || d < t) t = d; } while (0)
	if (idle > 0 && (c = TAILQ_FIRST(&w->live)) != NULL)
		EARLIER(c->last + idle - w->now);
	if ((c = TAILQ_FIRST(&w->linger)) != NULL)
		EARLIER(c->last + LINGER_MS - w->now);
	if (w->stopping)
		EARLIER(w->now < w->stop_deadline ?
		    w->stop_deadline - w->now : 100);
	if (w->accept_resume > w->now)
		EARLIER(w->accept_resume - w->now);
	if (!TAILQ_EMPTY(&w->bufwait) && w->nheld < w->nbufs)
		EARLIER(1);	/* buffers free, waiters left: see flush() */
	TAILQ_FOREACH(c, &w->congested, cong)
		EARLIER(c->prog_ms + STALL_MS - w->now);
#undef EARLIER
	return t;
}

/*
 * Submit everything and wait: one io_uring_enter() per round.
 *
 * How many completions to wait for decides how many rounds (and system
 * calls) a message costs.  Waiting for one wakes us for every completion
 * under load; so after sending, we also wait for those sends (they
 * usually complete during the submission itself) plus as many receives
 * as the last round brought, but at most --batch-usec: with
 * DEFER_TASKRUN the kernel does not even wake us before that many are
 * ready, and many connections share each enter.
 *
 * Not when a round brings one receive at most (one or two clients in a
 * closed loop): there is nothing to batch, and a wait with a timeout
 * (an hrtimer armed and cancelled, a wake-up checked against the count)
 * cost more than the enter it saves: measured at 2 connections, 15.6-
 * 18.9 us of server CPU per message against 12.7-13.1 without it.  Then
 * a round trip is two enters: one reaps the send, one sleeps for the
 * next receive.
 */
static int
ur_wait(struct worker *w)
{
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts;
	int64_t tmo_us = -1, ms;
	unsigned nr = 1, extra;
	int r;

	if (io_uring_cq_has_overflow(&w->ring))
		w->st.cq_overflow++;
	w->st.enters++;
	if (io_uring_cq_ready(&w->ring) > 0 ||
	    io_uring_cq_has_overflow(&w->ring)) {
		/*
		 * Overflowed completions wait in a kernel list until an
		 * enter with GETEVENTS moves them into the CQ ring.
		 */
		r = io_uring_submit_and_get_events(&w->ring);
		goto out;
	}
	if ((ms = next_deadline(w)) >= 0)
		tmo_us = ms * 1000;
	if (w->cfg->batch_us > 0 && w->recv_target > 1) {
		extra = w->solo_sends + w->recv_target - 1;
		if (extra > w->cq_entries / 2)
			extra = w->cq_entries / 2;
		if (extra > 0) {
			nr += extra;
			if (tmo_us < 0 || tmo_us > w->cfg->batch_us)
				tmo_us = w->cfg->batch_us;
		}
	}
	if (tmo_us < 0)
		r = io_uring_submit_and_wait(&w->ring, nr);
	else {
		ts.tv_sec = tmo_us / 1000000;
		ts.tv_nsec = (tmo_us % 1000000) * 1000;
		r = io_uring_submit_and_wait_timeout(&w->ring, &cqe, nr, &ts,
		    NULL);
	}
out:
	w->solo_sends = 0;
	if (r >= 0 || r == -ETIME || r == -EINTR || r == -EAGAIN ||
	    r == -EBUSY)
		return 0;
	return r;
}

static void
reap(struct worker *w)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0, cap;

	w->iter_recvs = 0;
	if (w->now != w->senders_ms) {
		w->senders = w->ms_senders;
		w->ms_senders = 0;
		w->senders_ms = w->now;
	}
	io_uring_for_each_cqe(&w->ring, head, cqe) {
		on_cqe(w, cqe);
		run_doomed(w);
		n++;
	}
	io_uring_cq_advance(&w->ring, n);
	w->st.cqes += n;
	/*
	 * Never wait for more than half of the connections that are
	 * sending: in a closed loop the last of them are stragglers, and
	 * waiting for all of them puts us to sleep every round.  Half of
	 * the open connections is the wrong half: 10 busy among 1,000 idle
	 * would ask for all 10 and sleep once per 10 messages (measured:
	 * half the throughput of echo-epoll, twice the CPU per message).
	 * So count the connections heard from in the last millisecond.
	 */
	cap = w->senders / 2;
	cap = cap < 1 ? 1 : cap > 64 ? 64 : cap;
	w->recv_target = w->iter_recvs < 1 ? 1 :
	    w->iter_recvs > cap ? cap : w->iter_recvs;
}

static int
worker_done(const struct worker *w)
{
	if (!w->stopping)
		return 0;
	if (w->nalloc == 0 && !w->accept_armed && w->lfd < 0)
		return 1;
	/* A request that will not end: the ring's exit cancels it. */
	return w->now >= w->stop_deadline + 2000;
}

static int
worker_run(struct worker *w)
{
	int r;

	for (;;) {
		w->gen++;
		w->now = srv_now_ms();
		expire(w);
		flush(w);
		if (worker_done(w))
			break;
		if ((r = ur_wait(w)) < 0) {
			srv_warn(w->s, "io_uring_enter: %s", strerror(-r));
			return SRV_EX_OSERR;
		}
		w->now = srv_now_ms();
		reap(w);
	}
	return SRV_EX_OK;
}

/* ---- set-up ---------------------------------------------------------------- */

static void
unavailable(const struct srv *s, int err)
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
ring_init(struct worker *w)
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
probe_ops(struct worker *w)
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

static int
worker_init(struct worker *w)
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
	if ((r = ring_init(w)) < 0) {
		if (r == -EPERM || r == -ENOSYS || r == -EACCES) {
			unavailable(w->s, -r);
			return SRV_EX_UNAVAILABLE;
		}
		srv_warn(w->s, "io_uring_setup: %s", strerror(-r));
		return SRV_EX_OSERR;
	}
	if (probe_ops(w) < 0)
		return SRV_EX_UNAVAILABLE;
	if (!(w->features & IORING_FEAT_NODROP))
		srv_log(w->s, "this kernel drops completions on CQ overflow "
		    "(no IORING_FEAT_NODROP): keep --cq-entries large");
	if (!(w->features & IORING_FEAT_FAST_POLL))
		srv_log(w->s, "no IORING_FEAT_FAST_POLL: socket requests "
		    "block kernel worker threads");
	/* Enter by ring index, not fd: saves a file lookup per enter. */
	w->reg_ring = io_uring_register_ring_fd(&w->ring) == 1;
	if (w->bufring && (r = bufring_init(w)) < 0) {
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
worker_fini(struct worker *w)
{
	struct useg *s;
	struct conn *c;

	/* What is still open when we give up waiting (stop deadline). */
	while ((c = TAILQ_FIRST(&w->live)) != NULL)
		conn_close(w, c);
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
		if (!(c->flags & C_CLOSESENT))
			close(c->fd);
		conn_destroy(w, c);
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

static void
print_rungs(const struct worker *w)
{
	const struct srv *s = w->s;
	char bufs[128] = "";

	if (w->bufring)
		snprintf(bufs, sizeof(bufs), " %u x %zu bytes, %u held at most, "
		    "copied up to %u bytes", w->nbufs, w->bufsize, w->max_held,
		    w->cfg->copy_below);
	srv_debug(s, "rungs: %cmultishot-accept %cbufring %cmultishot-recv "
	    "%csend-in-place %cdefer-taskrun %csqpoll",
	    w->ms_accept ? '+' : '-', w->bufring ? '+' : '-',
	    w->ms_recv ? '+' : '-',
	    w->bufring && w->cfg->send_inplace ? '+' : '-',
	    w->defer ? '+' : '-', w->sqpoll ? '+' : '-');
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
print_stats(const struct worker *w)
{
	const struct ustats *t = &w->st;

	srv_debug(w->s, "worker %d: %llu enters, %llu cqes, %llu accepts, "
	    "%llu recvs, %llu sends, %llu short-sends, %llu enobufs, "
	    "%llu sq-full, %llu cq-overflow, %llu rearms, %llu copies, "
	    "%llu evictions, %llu pauses, %llu paces, %llu stalls, "
	    "%llu held, %llu parked, %llu emfile, "
	    "%llu shed, %u buffers held, %llu buffer-errors", w->id,
	    t->enters, t->cqes, t->accepts, t->recvs, t->sends,
	    t->short_sends, t->enobufs, t->sq_full, t->cq_overflow, t->rearms,
	    t->copies, t->evictions, t->pauses, t->paces, t->stalls, t->held,
	    t->parked, t->emfile, t->shed, w->nheld, t->bufbugs);
}

static void *
worker_thread(void *arg)
{
	struct worker *w = arg;
	struct shared *sh = w->sh;
	int r = worker_init(w);

	pthread_mutex_lock(&sh->mu);
	w->init_rc = r;
	sh->inited++;
	pthread_cond_signal(&sh->cv);
	pthread_mutex_unlock(&sh->mu);
	w->exit_code = r == 0 ? worker_run(w) : r;
	if (w->s->verbose > 0 && r == 0)
		print_stats(w);
	worker_fini(w);
	return NULL;
}

static const struct srv_model model = {
	.name = "echo-uring",
	.summary = "Echo server: the completion model with io_uring(7), one ring per worker thread.",
	.caps = SRV_CAP_WORKERS | SRV_CAP_BROADCAST,
	.default_workers = 1,
	.workers_help = "worker threads, each with its own ring and SO_REUSEPORT listener (default 1)",
	.unavailable = "address or io_uring unavailable",
	.options = uring_opts,
	.on_option = uring_option,
};

int
main(int argc, char **argv)
{
	struct ucfg cfg = {
		.ms_accept = 1, .ms_recv = 1, .bufring = 1, .send_inplace = 1,
		.defer = 1, .sqpoll_idle = 1000, .sq_entries = 512,
		.nbufs = 512, .batch_us = 500, .copy_below = 1024,
	};
	struct shared sh;
	struct srv s;
	int i, lfd, sfd, nthreads = 0, rc = SRV_EX_OK;

	srv_init(&s, &model, argc, argv, &cfg);
	if (cfg.cq_entries == 0)
		cfg.cq_entries = cfg.sq_entries * 32 > 65536 ? 65536 :
		    cfg.sq_entries * 32;
	if (cfg.cq_entries < cfg.sq_entries)
		srv_usage_error(&s, "--cq-entries must be at least --ring-entries");
	if (cfg.bufring && (unsigned long long)cfg.nbufs * s.bufsize > (1ULL << 32))
		srv_usage_error(&s, "--buffers x -B: more than 4 GiB of buffers");
	srv_raise_nofile(&s);
	lfd = srv_listen(&s, NET_NONBLOCK);
	/* Block the stop signals before any thread exists: all inherit it. */
	if ((sfd = srv_signals_block()) < 0) {
		srv_warn(&s, "signalfd: %s", strerror(-sfd));
		return SRV_EX_OSERR;
	}
	memset(&sh, 0, sizeof(sh));
	sh.n = s.workers;
	sh.w = calloc((size_t)s.workers, sizeof(*sh.w));
	if (sh.w == NULL)
		return SRV_EX_OSERR;
	pthread_mutex_init(&sh.mu, NULL);
	pthread_cond_init(&sh.cv, NULL);
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
	if (rc == SRV_EX_OK)
		rc = worker_init(&sh.w[0]);
	for (i = 1; i < s.workers && rc == SRV_EX_OK; i++) {
		if (pthread_create(&sh.w[i].thread, NULL, worker_thread,
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
	pthread_mutex_unlock(&sh.mu);
	for (i = 1; i <= nthreads; i++)
		if (sh.w[i].init_rc != 0 && rc == SRV_EX_OK)
			rc = sh.w[i].init_rc;
	if (rc == SRV_EX_OK) {
		print_rungs(&sh.w[0]);
		srv_ready(&s);
		rc = worker_run(&sh.w[0]);
		if (s.verbose > 0)
			print_stats(&sh.w[0]);
	}
	if (rc != SRV_EX_OK) {
		uint64_t one = 1;

		/* The others stop as at a signal. */
		for (i = 1; i <= nthreads; i++)
			(void)!write(sh.w[i].wake_fd, &one, sizeof(one));
	}
	worker_fini(&sh.w[0]);
	for (i = 1; i < s.workers; i++) {
		if (i <= nthreads) {
			pthread_join(sh.w[i].thread, NULL);
			if (sh.w[i].exit_code != 0 && rc == SRV_EX_OK)
				rc = sh.w[i].exit_code;
		} else
			worker_fini(&sh.w[i]);	/* never started */
	}
	close(sfd);
	free(sh.w);
	return rc;
}

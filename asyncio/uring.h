/*
 * uring.h — what the three files of echo-uring share: the definitions
 * old liburing headers lack, the state of a ring (struct worker) and of a
 * connection on it (struct uconn), how a completion names its request
 * (user_data), and the functions each file offers the others.
 *
 *	echo-uring.c	the loop: submit and wait, dispatch completions,
 *			arm requests (uw_, on_, arm_)
 *	uring-conn.c	connections: lifecycle, output queues, held input,
 *			pacing, provided buffers and segments (uc_, useg_,
 *			ubuf_)
 *	uring-setup.c	options, the ring ladder and its probes, the buffer
 *			ring, statistics, main()
 *	uring-room.c	one chat room for every ring: mailboxes and
 *			IORING_OP_MSG_RING doorbells (uroom_)
 */
#ifndef IOMODELS_URING_H
#define IOMODELS_URING_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <liburing.h>

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
#ifndef IORING_ASYNC_CANCEL_FD_FIXED
#define IORING_ASYNC_CANCEL_FD_FIXED	(1U << 3)
#endif
#ifndef IOSQE_CQE_SKIP_SUCCESS
#define IOSQE_CQE_SKIP_SUCCESS		(1U << 6)
#endif
#ifndef IORING_FEAT_EXT_ARG
#define IORING_FEAT_EXT_ARG		(1U << 8)
#endif

#define BGID		0	/* our one buffer group */
#define SMALL_SEG	256	/* pooled copies: a small message's worth */
#define POOL_MAX	256	/* free small segments kept per worker */
#define ACCEPT_PAUSE_MS	100	/* after an accept error we cannot shed */
#define FEED_SLICE	4096	/* input fed to a service at a time */
#define SEND_IOV	16	/* queued segments one send carries */

struct ucfg {
	int		 ms_accept, ms_recv, bufring, send_inplace, direct;
	int		 no_msg_ring;
	int		 defer, sqpoll, sqpoll_idle;
	unsigned	 sq_entries, cq_entries, nbufs, max_held, copy_below;
	int		 batch_us;
};

/* ---- the state of one ring (a worker) and of its connections ------------- */

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
#define C_STALLED	0x80000	/* congested, but no progress for SRV_STALL_MS */
#define C_FIXED		0x100000 /* FD is a direct descriptor (a table slot) */

/* What a connection wants armed at the next flush. */
#define W_RECV		0x01
#define W_SEND		0x02
#define W_CANCEL_RECV	0x04
#define W_CANCEL_SEND	0x08
#define W_CANCEL_ALL	0x10
#define W_CLOSE		0x20
#define W_SHUT_WR	0x40	/* direct descriptors: shutdown through the ring */
#define W_SHUT_RDWR	0x80

struct worker;

/* A send of several segments: what the kernel reads while it is in flight. */
struct usend {
	struct msghdr	 msg;
	struct iovec	 iov[SEND_IOV];
};

struct uconn {
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
	TAILQ_ENTRY(uconn) lru;		/* live (oldest first) or linger */
	TAILQ_ENTRY(uconn) dirty;
	TAILQ_ENTRY(uconn) bufwait;
	TAILQ_ENTRY(uconn) pace;		/* on the paced list */
	TAILQ_ENTRY(uconn) cong;		/* on the congested list */
	LIST_ENTRY(uconn) holder;
	struct uconn	*doom_next;
	struct svc_sink	 sink;
	char		*peer;
	uint64_t	 state[];	/* the service's */
};

TAILQ_HEAD(uconn_tq, uconn);
LIST_HEAD(uconn_l, uconn);

struct ustats {
	unsigned long long enters, cqes, recvs, sends, short_sends, enobufs;
	unsigned long long sq_full, cq_overflow, rearms, copies, evictions;
	unsigned long long pauses, parked, shed, bufbugs, accepts, emfile;
	unsigned long long paces, stalls, held, posted, mail, bell_fails;
};

struct shared;
struct xmsg;

/* A worker's mailbox: lines other workers broadcast (uring-room.c). */
struct umbox {
	pthread_mutex_t		 mu;
	struct xmsg		*head, *tail;
	size_t			 bytes;
	int			 rung;		/* a doorbell is on its way */
	int			 full;		/* over --highwater: counted
						   in sh->congested */
};

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
	int			 direct;	/* accept into the files table */
	unsigned		 nfiles;	/* its size */
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

	struct uconn_tq		 live, linger, closing, parked, dirty, bufwait;
	struct uconn_tq		 paced, congested;
	unsigned		 ncongest;	/* congested recipients */
	struct uconn_l		 holders;
	struct uconn		*doomed;
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

	struct umbox		 mb;		/* the room across rings */
	int			 rering;	/* a doorbell failed: ring again */
	int			 looping;	/* counted in sh->looping */
	int			 left;		/* our loop is over */
};

/*
 * What the workers share: the way to stop each other and, for a service
 * that broadcasts with -w above 1, the room (uring-room.c).
 */
struct shared {
	struct worker		*w;
	int			 n;
	pthread_mutex_t		 mu;
	pthread_cond_t		 cv;
	int			 inited, go;
	int			 room;		/* broadcasts cross the rings */
	int			 looping;	/* workers still in their loop */
	atomic_uint		 congested;	/* recipients pacing the room */
};

/*
 * user_data: the object a completion is for, with the request type in
 * the low 3 bits (connections and workers are at least 8-byte aligned).
 * The kernel hands it back untouched; it is also the key to cancel by.
 */
enum { UD_IGNORE, UD_ACCEPT, UD_RECV, UD_SEND, UD_CANCEL, UD_CLOSE, UD_WAKE,
    UD_LPOLL };
/*
 * The room's two completions reuse the types, told apart by the object:
 * UD_WAKE on our mailbox (not on the worker) is a doorbell another ring
 * rang; UD_IGNORE on a mailbox is a doorbell we rang that failed (only
 * failures complete: IOSQE_CQE_SKIP_SUCCESS).
 */
#define UD_MAIL		UD_WAKE
#define UD_BELL		UD_IGNORE

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

/* ---- uring-conn.c: connections, queues, buffers -------------------------- */

void	uc_want(struct worker *w, struct uconn *c, unsigned what);
uint8_t *ubuf_take(struct worker *w, unsigned bid);
void	ubuf_return(struct worker *w, unsigned bid);
void	ubuf_publish(struct worker *w);
struct useg *useg_heap(struct worker *w, size_t len);
void	useg_free(struct worker *w, struct useg *s);
void	uc_inq_free(struct worker *w, struct uconn *c);
void	useg_release(struct worker *w, struct uconn *c, struct useg *s);
int	useg_unpin(struct worker *w, struct uconn *c, struct useg **pp);
void	uc_queue_free(struct worker *w, struct uconn *c);
void	uc_unpin_all(struct worker *w, struct uconn *c);
void	ubuf_evict(struct worker *w);
void	uc_touch(struct worker *w, struct uconn *c);
int	uc_recv_ok(const struct worker *w, const struct uconn *c);
void	uc_run_doomed(struct worker *w);
void	uc_check_highwater(struct worker *w, struct uconn *c);
void	uc_congest(struct worker *w, struct uconn *c);
void	uc_decongest(struct worker *w, struct uconn *c, int stalled);
void	uc_unpace(struct worker *w, struct uconn *c);
void	uc_new(struct worker *w, int fd, int fixed);
int	uc_shutdown(struct worker *w, struct uconn *c, int how);
void	uc_close(struct worker *w, struct uconn *c);
void	uc_check_free(struct worker *w, struct uconn *c);
void	uc_destroy(struct worker *w, struct uconn *c);
void	uc_drained(struct worker *w, struct uconn *c);
void	uc_input(struct worker *w, struct uconn *c, uint8_t *buf, size_t n,
	    int bid);
void	uc_feed(struct worker *w, struct uconn *c);
void	uc_deliver(struct worker *w, struct uconn *self, const void *buf,
	    size_t len);
void	uw_expire(struct worker *w);
int64_t	uw_next_deadline(const struct worker *w);

/* ---- echo-uring.c: the loop ---------------------------------------------- */

int	uw_run(struct worker *w);
struct io_uring_sqe *uw_sqe(struct worker *w);
void	uw_close_fd(struct worker *w, int fd, int fixed);

/* ---- uring-room.c: the room across rings ----------------------------------- */

int	uroom_probe(void);
void	uroom_init(struct shared *sh);
void	uroom_fini(struct shared *sh);
unsigned uroom_congested(const struct worker *w);
void	uroom_congest(struct worker *w, int delta);
void	uroom_post(struct worker *w, const void *buf, size_t len);
void	uroom_on_mail(struct worker *w);
void	uroom_bell_failed(struct worker *w, struct worker *t);
void	uroom_rering(struct worker *w);
void	uroom_leave(struct worker *w);

/* ---- uring-setup.c: set-up ----------------------------------------------- */

extern const struct srv_model uring_model;	/* in echo-uring.c */
extern const struct srv_option uring_opts[];
int	uring_option(struct srv *s, int key, const char *arg);

#endif

/*
 * uring-room.c — one chat room for every ring: with -w N, a broadcast
 * said on one worker reaches the clients of all the others.
 *
 * The workers are threads of one process, each with its own ring, so a
 * line can be handed over in memory; what one ring cannot do is wake
 * another that sleeps in io_uring_enter().  IORING_OP_MSG_RING (5.18)
 * does that: a request on our ring that posts a completion on theirs.
 *
 * Design: each worker has a mailbox (a locked FIFO of copies) and a
 * doorbell.  A broadcast appends a copy of the line to every other
 * worker's mailbox, and rings its doorbell (a MSG_RING whose completion
 * on the target carries no pointer, only "you have mail") when the
 * mailbox has not been rung since it was last emptied.  The target,
 * woken by that completion, takes the whole FIFO under the lock and
 * delivers each line to its connections as a local broadcast would
 * (uc_deliver: the same --max-pending and pacing policy).
 *
 * Why not pass the line's pointer in the MSG_RING completion itself:
 *   - one doorbell for many lines: while a mailbox is rung and not yet
 *     emptied, further lines are appended without another request, and
 *     the FIFO keeps each talker's lines in order however the kernel
 *     posts (inline under the target's completion lock, or as task work
 *     on a DEFER_TASKRUN target's thread);
 *   - lifetime: a completion that owns memory must be seen exactly once,
 *     but a target's CQ can overflow or its ring be torn down at stop
 *     with completions still unread.  A mailbox entry has one owner at a
 *     time: the sender until it is appended, the target's mailbox until
 *     it is taken, the target until it is delivered, freed exactly once;
 *     what is left at exit is freed by main() once every thread is gone
 *     (uroom_fini).  A lost doorbell loses no data: the next one, or the
 *     retry after a failed MSG_RING, takes the whole FIFO.
 *
 * Bounded memory: a mailbox holding more than --highwater counts as a
 * congested recipient, and the room's pacing (uc_congest) counts
 * congested recipients over all the workers (sh->congested): while one
 * is, no worker feeds its talkers' input to the service.  When the count
 * falls to zero, the worker that saw it rings every doorbell, so the
 * paced connections of the others take input again.
 *
 * Rings must outlive every MSG_RING that names them: a worker's ring is
 * torn down only once every worker has left its loop (uroom_leave), so
 * no doorbell is submitted to a descriptor that was closed and reused.
 */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "uring.h"

struct xmsg {
	struct xmsg	*next;
	size_t		 len;
	uint8_t		 data[];
};

/* Is IORING_OP_MSG_RING there?  1, 0, or -1 when io_uring is not. */
int
uroom_probe(void)
{
	struct io_uring_probe *p = io_uring_get_probe();
	int ok;

	if (p == NULL)
		return -1;
	ok = io_uring_opcode_supported(p, IORING_OP_MSG_RING);
	io_uring_free_probe(p);
	return ok != 0;
}

void
uroom_init(struct shared *sh)
{
	int i;

	atomic_init(&sh->congested, 0);
	for (i = 0; i < sh->n; i++)
		pthread_mutex_init(&sh->w[i].mb.mu, NULL);
}

/* main(), once no thread runs: what no worker took. */
void
uroom_fini(struct shared *sh)
{
	struct xmsg *m;
	int i;

	for (i = 0; i < sh->n; i++) {
		while ((m = sh->w[i].mb.head) != NULL) {
			sh->w[i].mb.head = m->next;
			free(m);
		}
		pthread_mutex_destroy(&sh->w[i].mb.mu);
	}
}

/* How many recipients, over all the rings, pace the room now. */
unsigned
uroom_congested(const struct worker *w)
{
	if (!w->sh->room)
		return w->ncongest;
	return atomic_load(&w->sh->congested);
}

/*
 * Ring T's doorbell: a MSG_RING on our ring that posts a completion
 * (user_data UD_MAIL) on T's.  Our own completion is skipped unless it
 * failed (IOSQE_CQE_SKIP_SUCCESS); a failure (T's CQ overflowing, or the
 * kernel out of memory) makes us ring again next round (on_bell_fail).
 * Not once our loop is over: T's ring may be gone.
 */
static void
uroom_ring(struct worker *w, struct worker *t)
{
	struct io_uring_sqe *sqe;
	int ring;

	pthread_mutex_lock(&t->mb.mu);
	ring = !t->mb.rung;
	t->mb.rung = 1;
	pthread_mutex_unlock(&t->mb.mu);
	if (!ring || w->left)
		return;
	if ((sqe = uw_sqe(w)) == NULL) {
		uroom_bell_failed(w, t);
		return;
	}
	io_uring_prep_msg_ring(sqe, t->ring.ring_fd, 0, ud_make(&t->mb,
	    UD_MAIL), 0);
	ud_set(sqe, &t->mb, UD_BELL);
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
}

/* A doorbell to T did not ring: ring it again at the next flush. */
void
uroom_bell_failed(struct worker *w, struct worker *t)
{
	pthread_mutex_lock(&t->mb.mu);
	t->mb.rung = 0;
	pthread_mutex_unlock(&t->mb.mu);
	w->rering = 1;
	w->st.bell_fails++;
}

/*
 * Ring every other worker's doorbell (one already on its way is not rung
 * twice): after a failure, or so that they look at their paced
 * connections again.  A doorbell too many only wakes a ring for nothing.
 */
static void
uroom_wake_all(struct worker *w)
{
	int i;

	for (i = 0; i < w->sh->n; i++)
		if (i != w->id)
			uroom_ring(w, &w->sh->w[i]);
}

void
uroom_rering(struct worker *w)
{
	w->rering = 0;
	uroom_wake_all(w);
}

/* A recipient was congested, or no longer is (DELTA +1 / -1). */
void
uroom_congest(struct worker *w, int delta)
{
	if (!w->sh->room)
		return;
	if (delta > 0)
		atomic_fetch_add(&w->sh->congested, 1);
	else if (atomic_fetch_sub(&w->sh->congested, 1) == 1)
		uroom_wake_all(w);
}

/* Say BUF to the clients of every other worker. */
void
uroom_post(struct worker *w, const void *buf, size_t len)
{
	struct worker *t;
	struct xmsg *m;
	int i, full;

	for (i = 0; i < w->sh->n; i++) {
		if (i == w->id)
			continue;
		t = &w->sh->w[i];
		if ((m = malloc(sizeof(*m) + len)) == NULL) {
			srv_warn(w->s, "out of memory: a line did not reach "
			    "worker %d", i);
			continue;
		}
		m->next = NULL;
		m->len = len;
		memcpy(m->data, buf, len);
		pthread_mutex_lock(&t->mb.mu);
		if (t->mb.tail)
			t->mb.tail->next = m;
		else
			t->mb.head = m;
		t->mb.tail = m;
		t->mb.bytes += len;
		full = !t->mb.full && t->mb.bytes >= w->s->highwater;
		/*
		 * Counted before the lock is let go: T may take its mail
		 * and uncount it as soon as we do.  Counted after, the
		 * count could dip below zero (unsigned: everyone paced)
		 * and come back to zero with nobody told to resume.
		 */
		if (full) {
			t->mb.full = 1;
			atomic_fetch_add(&w->sh->congested, 1);
		}
		pthread_mutex_unlock(&t->mb.mu);
		w->st.posted++;
		uroom_ring(w, t);
	}
}

/*
 * Our doorbell rang: take the whole mailbox, deliver it in order.  While
 * stopping, no input is served any more, and mail is dropped likewise.
 */
void
uroom_on_mail(struct worker *w)
{
	struct xmsg *m, *next;
	int was_full;

	pthread_mutex_lock(&w->mb.mu);
	m = w->mb.head;
	w->mb.head = w->mb.tail = NULL;
	w->mb.bytes = 0;
	w->mb.rung = 0;
	was_full = w->mb.full;
	w->mb.full = 0;
	pthread_mutex_unlock(&w->mb.mu);
	for (; m; m = next) {
		next = m->next;
		if (!w->stopping)
			uc_deliver(w, NULL, m->data, m->len);
		free(m);
		w->st.mail++;
	}
	uc_run_doomed(w);
	if (was_full)
		uroom_congest(w, -1);
}

/*
 * Our loop is over: wait until every worker's is, before the ring is torn
 * down (another may still ring our doorbell until then).
 */
void
uroom_leave(struct worker *w)
{
	struct shared *sh = w->sh;

	w->left = 1;
	if (!sh->room || !w->looping)
		return;
	pthread_mutex_lock(&sh->mu);
	sh->looping--;
	pthread_cond_broadcast(&sh->cv);
	while (sh->looping > 0)
		pthread_cond_wait(&sh->cv, &sh->mu);
	pthread_mutex_unlock(&sh->mu);
}

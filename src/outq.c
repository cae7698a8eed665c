/*
 * outq — output the kernel did not take yet.  See outq.h.
 */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "outq.h"

/*
 * Small messages queued one after another share a chunk: a chunk has room
 * for at least this much, and the tail is filled before a new one is made.
 */
#define OUTQ_MIN_CHUNK	4096
#define OUTQ_IOV	16	/* chunks per writev() */

struct outq_chunk {
	struct outq_chunk *next;
	size_t		 off, len, cap;
	uint8_t		 data[];
};

int
outq_push(struct outq *q, const void *buf, size_t len)
{
	struct outq_chunk *k = q->tail;
	const uint8_t *p = buf;
	size_t room = k ? k->cap - k->len : 0, cap;

	if (room > 0 && len > 0) {
		room = room < len ? room : len;
		memcpy(k->data + k->len, p, room);
		k->len += room;
		p += room;
		len -= room;
		q->pending += room;
	}
	if (len == 0)
		return 0;
	cap = len < OUTQ_MIN_CHUNK ? OUTQ_MIN_CHUNK : len;
	if ((k = malloc(sizeof(*k) + cap)) == NULL)
		return -ENOMEM;
	k->next = NULL;
	k->off = 0;
	k->len = len;
	k->cap = cap;
	memcpy(k->data, p, len);
	if (q->tail)
		q->tail->next = k;
	else
		q->head = k;
	q->tail = k;
	q->pending += len;
	return 0;
}

int
outq_send(struct outq *q, int fd, const void *buf, size_t len)
{
	ssize_t n = 0;

	if (q->pending == 0) {
		do
			n = write(fd, buf, len);
		while (n < 0 && errno == EINTR);
		if (n < 0) {
			if (errno != EAGAIN)
				return -errno;
			n = 0;
		}
		if ((size_t)n == len)
			return 0;
	}
	return outq_push(q, (const uint8_t *)buf + n, len - (size_t)n);
}

int
outq_write(struct outq *q, int fd)
{
	struct iovec iov[OUTQ_IOV];
	struct outq_chunk *k;
	ssize_t n;
	int i;

	while (q->head) {
		for (i = 0, k = q->head; k && i < OUTQ_IOV; k = k->next, i++) {
			iov[i].iov_base = k->data + k->off;
			iov[i].iov_len = k->len - k->off;
		}
		n = writev(fd, iov, i);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? 0 : -errno;
		}
		q->pending -= (size_t)n;
		while (n > 0) {
			k = q->head;
			if ((size_t)n < k->len - k->off) {
				/*
				 * A short write: the socket is full.  The
				 * kernel has marked it so (SOCK_NOSPACE), and
				 * says when it has room again, also to an
				 * edge-triggered watcher: no need to write
				 * again only to hear EAGAIN.
				 */
				k->off += (size_t)n;
				return 0;
			}
			n -= (ssize_t)(k->len - k->off);
			q->head = k->next;
			if (q->head == NULL)
				q->tail = NULL;
			free(k);
		}
	}
	return 0;
}

void
outq_clear(struct outq *q)
{
	struct outq_chunk *k, *next;

	for (k = q->head; k; k = next) {
		next = k->next;
		free(k);
	}
	q->head = q->tail = NULL;
	q->pending = 0;
}

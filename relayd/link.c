/*
 * link.c - the socketpair between the SMTP side and the delivery side:
 * messages (link.h: a fixed head and a text), one per SOCK_SEQPACKET
 * packet, read on the event loop. Messages go out once per loop turn,
 * many in one sendmmsg (a commit batch queues a message per record), and
 * come in many per recvmmsg: two system calls per batch, not two per
 * message. What cannot be sent at once (the other side is busy) waits in
 * memory, in order, and goes when the socket takes it: a message is never
 * dropped while the other side lives. When it dies what it sent before is
 * still read, then the callback hears NULL.
 */
#include <sys/socket.h>
#include <sys/uio.h>

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "link.h"
#include "log.h"
#include "util.h"

struct packet {
	size_t		 len;
	char		*data;
};

#define LINK_BATCH	16		/* packets per sendmmsg, recvmmsg */

struct link {
	int		 fd;
	struct event	*rev, *wev;
	link_cb		*cb;
	void		*arg;
	char		*rbuf;		/* LINK_BATCH messages, each with a
					   NUL after it */
	struct packet	*q;		/* waiting to be sent: q[head..] */
	size_t		 head, len, cap;
	int		 gone;		/* the other side closed */
};

#define LINK_PACKET_MAX	(sizeof(struct link_msg) + LINK_TEXT_MAX)

/* One message received (n bytes at buf, room for a NUL after). */
static void
link_deliver(struct link *l, char *buf, ssize_t n)
{
	struct link_msg	 m;

	if ((size_t)n < sizeof(m) || (memcpy(&m, buf, sizeof(m)),
	    (size_t)n != sizeof(m) + m.textlen)) {
		log_warnx("link: a message of %zd bytes that does not "
		    "parse: ignored", n);
		return;
	}
	m.qid[sizeof(m.qid) - 1] = m.seg[sizeof(m.seg) - 1] = '\0';
	m.code[sizeof(m.code) - 1] = '\0';
	buf[n] = '\0';
	l->cb(l->arg, &m, buf + sizeof(m));
}

static void
link_read(evutil_socket_t fd, short ev, void *arg)
{
	struct link	*l = arg;
	struct mmsghdr	 mm[LINK_BATCH];
	struct iovec	 iov[LINK_BATCH];
	int		 i, n;

	(void)ev;
	while (!l->gone) {
		memset(mm, 0, sizeof(mm));
		for (i = 0; i < LINK_BATCH; i++) {
			iov[i].iov_base = l->rbuf + i * (LINK_PACKET_MAX + 1);
			iov[i].iov_len = LINK_PACKET_MAX;
			mm[i].msg_hdr.msg_iov = &iov[i];
			mm[i].msg_hdr.msg_iovlen = 1;
		}
		n = recvmmsg(fd, mm, LINK_BATCH, MSG_DONTWAIT, NULL);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		/* An end of file reads as one message of no bytes. */
		for (i = 0; i < n && mm[i].msg_len > 0 && !l->gone; i++)
			link_deliver(l, iov[i].iov_base, mm[i].msg_len);
		if (n <= 0 || (i < n && mm[i].msg_len == 0)) {
			l->gone = 1;
			event_del(l->rev);
			event_del(l->wev);
			l->cb(l->arg, NULL, NULL);	/* may free l */
			return;
		}
		if (n < LINK_BATCH)
			return;		/* drained: no EAGAIN round trip */
	}
}

/* Sends what waits, a batch per system call; 0 when the queue is empty. */
static int
link_flush(struct link *l)
{
	struct mmsghdr	 mm[LINK_BATCH];
	struct iovec	 iov[LINK_BATCH];
	struct packet	*p;
	int		 i, k, n;

	while (l->len > 0) {
		k = l->len < LINK_BATCH ? (int)l->len : LINK_BATCH;
		memset(mm, 0, sizeof(mm));
		for (i = 0; i < k; i++) {
			p = &l->q[l->head + (size_t)i];
			iov[i].iov_base = p->data;
			iov[i].iov_len = p->len;
			mm[i].msg_hdr.msg_iov = &iov[i];
			mm[i].msg_hdr.msg_iovlen = 1;
		}
		n = sendmmsg(l->fd, mm, (unsigned)k, MSG_DONTWAIT |
		    MSG_NOSIGNAL);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return -1;
		if (n == -1) {
			l->gone = 1;	/* it rereads the spool at its start */
			n = k;
		}
		for (i = 0; i < n; i++) {
			free(l->q[l->head].data);
			l->head++;
			l->len--;
		}
	}
	l->head = 0;
	return 0;
}

/* Writable, or messages queued this loop turn (event_active). */
static void
link_write(evutil_socket_t fd, short ev, void *arg)
{
	struct link	*l = arg;

	(void)fd;
	(void)ev;
	if (l->gone || link_flush(l) == 0)
		event_del(l->wev);
	else
		event_add(l->wev, NULL);	/* when the socket takes more */
}

struct link *
link_new(struct event_base *base, int fd, link_cb *cb, void *arg)
{
	struct link	*l = xcalloc(1, sizeof(*l));
	int		 sz = (int)(4 * LINK_PACKET_MAX);

	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	/* Room for a few whole messages at least. */
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	l->fd = fd;
	l->cb = cb;
	l->arg = arg;
	l->rbuf = xmalloc(LINK_BATCH * (LINK_PACKET_MAX + 1));
	l->rev = event_new(base, fd, EV_READ | EV_PERSIST, link_read, l);
	l->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, link_write, l);
	event_add(l->rev, NULL);
	return l;
}

void
link_send(struct link *l, struct link_msg *m, const void *text, size_t len)
{
	struct packet	*p;

	if (l->gone)
		return;
	if (len > LINK_TEXT_MAX)
		len = LINK_TEXT_MAX;
	m->textlen = (uint32_t)len;
	if (l->head + l->len == l->cap) {
		if (l->head > 0) {
			memmove(l->q, l->q + l->head, l->len * sizeof(*l->q));
			l->head = 0;
		} else {
			l->cap = l->cap ? l->cap * 2 : 16;
			l->q = xrealloc(l->q, l->cap * sizeof(*l->q));
		}
	}
	p = &l->q[l->head + l->len++];
	p->len = sizeof(*m) + len;
	p->data = xmalloc(p->len);
	memcpy(p->data, m, sizeof(*m));
	if (len > 0)
		memcpy(p->data + sizeof(*m), text, len);
	/* The first of this turn: all go together once the turn's work is
	 * done (or when the socket takes them, if it is full). */
	if (l->len == 1)
		event_active(l->wev, EV_WRITE, 0);
}

void
link_drain(struct link *l)
{
	if (!l->gone)
		link_read(l->fd, EV_READ, l);
}

void
link_free(struct link *l)
{
	size_t	 i;

	if (l == NULL)
		return;
	if (!l->gone)
		link_flush(l);	/* what the socket takes now */
	for (i = 0; i < l->len; i++)
		free(l->q[l->head + i].data);
	event_free(l->rev);
	event_free(l->wev);
	close(l->fd);
	free(l->rbuf);
	free(l->q);
	free(l);
}

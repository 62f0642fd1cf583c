/*
 * link.c - the socketpair between the SMTP side and the delivery side:
 * messages (link.h: a fixed head and a text), one per SOCK_SEQPACKET
 * packet, read on the event loop. What cannot be sent at once (the other
 * side is busy) waits in memory, in order, and goes when the socket takes
 * it: a message is never dropped while the other side lives. When it
 * dies what it sent before is still read, then the callback hears NULL.
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

struct link {
	int		 fd;
	struct event	*rev, *wev;
	link_cb		*cb;
	void		*arg;
	char		*rbuf;		/* one message and a NUL */
	struct packet	*q;		/* waiting to be sent: q[head..] */
	size_t		 head, len, cap;
	int		 gone;		/* the other side closed */
};

#define LINK_PACKET_MAX	(sizeof(struct link_msg) + LINK_TEXT_MAX)

static void
link_read(evutil_socket_t fd, short ev, void *arg)
{
	struct link	*l = arg;
	struct link_msg	 m;
	ssize_t		 n;

	(void)ev;
	while (!l->gone) {
		n = recv(fd, l->rbuf, LINK_PACKET_MAX, MSG_DONTWAIT);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) {
			l->gone = 1;
			event_del(l->rev);
			event_del(l->wev);
			l->cb(l->arg, NULL, NULL);	/* may free l */
			return;
		}
		if ((size_t)n < sizeof(m) || (memcpy(&m, l->rbuf, sizeof(m)),
		    (size_t)n != sizeof(m) + m.textlen)) {
			log_warnx("link: a message of %zd bytes that does not "
			    "parse: ignored", n);
			continue;
		}
		m.qid[sizeof(m.qid) - 1] = m.seg[sizeof(m.seg) - 1] = '\0';
		m.code[sizeof(m.code) - 1] = '\0';
		l->rbuf[n] = '\0';
		l->cb(l->arg, &m, l->rbuf + sizeof(m));
	}
}

/* Sends what waits; 0 when the queue is empty. */
static int
link_flush(struct link *l)
{
	struct packet	*p;
	ssize_t		 n;

	while (l->len > 0) {
		p = &l->q[l->head];
		n = send(l->fd, p->data, p->len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return -1;
		if (n != (ssize_t)p->len)
			l->gone = 1;	/* it rereads the spool at its start */
		free(p->data);
		l->head++;
		l->len--;
	}
	l->head = 0;
	return 0;
}

static void
link_write(evutil_socket_t fd, short ev, void *arg)
{
	struct link	*l = arg;

	(void)fd;
	(void)ev;
	if (link_flush(l) == 0)
		event_del(l->wev);
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
	l->rbuf = xmalloc(LINK_PACKET_MAX + 1);
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
	if (l->len == 1 && link_flush(l) == 0)
		return;
	event_add(l->wev, NULL);
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

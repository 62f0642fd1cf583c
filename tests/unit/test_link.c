/*
 * Unit tests for link.c: the messages between the SMTP and the delivery
 * process arrive whole and in order, with their text, even when the
 * sender outpaces the receiver (they wait in memory, none is dropped),
 * and the receiver hears the end after what was sent before it.
 */
#include <sys/socket.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <event2/event.h>

#include "link.h"

#define N	2000

struct got {
	int	 n;		/* messages, in order */
	int	 bad;
	int	 eof;
	size_t	 textbytes;
};

static char	 big[LINK_TEXT_MAX];

static void
on_msg(void *arg, const struct link_msg *m, const char *text)
{
	struct got	*g = arg;
	char		 want[32];

	if (m == NULL) {
		g->eof++;
		return;
	}
	snprintf(want, sizeof(want), "%d", g->n);
	if (m->type != LINK_QUEUED || strcmp(m->qid, want) != 0 ||
	    m->off != (uint64_t)g->n || text[m->textlen] != '\0' ||
	    (m->textlen > 0 && memcmp(text, big, m->textlen) != 0))
		g->bad++;
	g->textbytes += m->textlen;
	g->n++;
}

static void
ignore(void *arg, const struct link_msg *m, const char *text)
{
	(void)arg;
	(void)m;
	(void)text;
}

static void
test_order_text_and_end(void **state)
{
	struct event_base	*base = event_base_new();
	struct link		*a, *b;
	struct link_msg		 m;
	struct got		 g;
	size_t			 sent = 0, len;
	int			 sv[2], i;

	(void)state;
	memset(&g, 0, sizeof(g));
	for (i = 0; i < (int)sizeof(big); i++)
		big[i] = (char)('a' + i % 26);
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
	a = link_new(base, sv[0], ignore, NULL);
	b = link_new(base, sv[1], on_msg, &g);
	/* Far more than the socket holds, before the loop reads any. */
	for (i = 0; i < N; i++) {
		memset(&m, 0, sizeof(m));
		m.type = LINK_QUEUED;
		snprintf(m.qid, sizeof(m.qid), "%d", i);
		m.off = (uint64_t)i;
		len = i % 7 == 0 ? sizeof(big) : (size_t)(i % 300);
		link_send(a, &m, big, len);
		sent += len;
	}
	for (i = 0; g.n < N && i < 500; i++) {	/* 5 s at most */
		event_base_loopexit(base, &(struct timeval){ 0, 10000 });
		event_base_dispatch(base);
	}
	assert_int_equal(g.n, N);		/* none dropped */
	assert_int_equal(g.bad, 0);
	assert_int_equal(g.textbytes, sent);
	/* The end comes after what was sent before it. */
	memset(&m, 0, sizeof(m));
	m.type = LINK_QUEUED;
	snprintf(m.qid, sizeof(m.qid), "%d", N);
	m.off = N;
	link_send(a, &m, NULL, 0);
	link_free(a);
	link_drain(b);
	assert_int_equal(g.n, N + 1);
	assert_int_equal(g.eof, 1);
	link_free(b);
	event_base_free(base);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_order_text_and_end),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

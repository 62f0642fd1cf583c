/*
 * link_deliver.c - the delivery side's end of the link to SMTP intake
 * (runs in the process that delivers: "relayd: deliver").
 *
 * QUEUED: the record is adopted from the spool (spool_adopt reads it
 * back and hands it to the worker pool's queued callback); CLOSED: the
 * segment may go once its records are done; the spool's EMPTIED news
 * goes back so that intake closes its open segment. HELLO from a new
 * SMTP process: what the one before left unannounced is adopted
 * (spool_catch_up) before GO lets the new one commit. WATCH / UNWATCH
 * are worker_watch / worker_unwatch; the answer goes back as ANSWER,
 * and at once (queued) when the message would not go now. HISTORY is an
 * accepted message's row (history lives here); FIGURES what status and
 * the metrics show of the SMTP side; UNLOCK is relayctl unlock's.
 */
#include <stdlib.h>
#include <string.h>

#include "history.h"
#include "link.h"
#include "link_deliver.h"
#include "log.h"
#include "smtp.h"
#include "spool.h"
#include "util.h"
#include "worker.h"

struct dwatch {
	struct handoff	*h;
	char		 qid[SPOOL_QID_LEN + 1];
	struct dwatch	*next;
};

struct handoff {
	struct event_base	*base;
	struct spool		*spool;
	struct worker_pool	*pool;
	struct history		*history;
	struct link		*link;
	int			 ever;		/* an SMTP process said HELLO */
	struct dwatch		*watches;
	struct smtp_figures	 fig;		/* its last FIGURES */
	int			 have_fig;
	void			(*first_cb)(void *);	/* at the first */
	void			*first_arg;
};

static void
send_answer(struct handoff *h, const char *qid, const struct worker_answer *a)
{
	struct link_msg	 m;

	if (h->link == NULL)
		return;
	memset(&m, 0, sizeof(m));
	m.type = LINK_ANSWER;
	strlcpy_r(m.qid, qid, sizeof(m.qid));
	m.outcome = (uint32_t)a->outcome;
	m.status = a->status;
	strlcpy_r(m.code, a->code != NULL ? a->code : "", sizeof(m.code));
	link_send(h->link, &m, a->message, a->message != NULL ?
	    strlen(a->message) : 0);
}

/* Out of the list, freed; whether it was there. */
static int
dwatch_drop(struct handoff *h, struct dwatch *w)
{
	struct dwatch	**wp;

	for (wp = &h->watches; *wp != NULL; wp = &(*wp)->next)
		if (*wp == w) {
			*wp = w->next;
			free(w);
			return 1;
		}
	return 0;
}

static void
watched(void *arg, const struct worker_answer *a)
{
	struct dwatch	*w = arg;
	struct handoff	*h = w->h;

	send_answer(h, w->qid, a);
	dwatch_drop(h, w);
}

static void
watch(struct handoff *h, const char *qid)
{
	struct worker_answer	 a;
	struct dwatch		*w = xcalloc(1, sizeof(*w));

	w->h = h;
	strlcpy_r(w->qid, qid, sizeof(w->qid));
	w->next = h->watches;
	h->watches = w;
	if (h->pool != NULL && worker_watch(h->pool, qid, watched, w) == 0)
		return;
	memset(&a, 0, sizeof(a));
	a.outcome = WORKER_QUEUED;	/* it would not go now */
	watched(w, &a);
}

static void
unwatch(struct handoff *h, const char *qid)
{
	struct dwatch	*w;

	for (w = h->watches; w != NULL; w = w->next)
		if (strcmp(w->qid, qid) == 0) {
			if (h->pool != NULL)
				worker_unwatch(h->pool, qid);
			dwatch_drop(h, w);
			return;
		}
}

static void
unwatch_all(struct handoff *h)
{
	while (h->watches != NULL)
		unwatch(h, h->watches->qid);
}

static void
hello_go(struct handoff *h)
{
	struct link_msg	 m;
	size_t		 n;

	if (h->ever && (n = spool_catch_up(h->spool)) > 0)
		log_warnx("spool: %zu message(s) the SMTP process committed "
		    "before it ended were not announced; queued now", n);
	h->ever = 1;
	memset(&m, 0, sizeof(m));
	m.type = LINK_GO;
	link_send(h->link, &m, NULL, 0);
}

/* The next line of text (cut there), "" at its end. */
static char *
next_line(char **text)
{
	char	*line = *text, *nl;

	if ((nl = strchr(line, '\n')) != NULL) {
		*nl = '\0';
		*text = nl + 1;
	} else
		*text = line + strlen(line);
	return line;
}

/* A row as intake_history wrote it. */
static void
history_row(struct handoff *h, const char *qid, const char *text)
{
	struct history_msg	 m;
	char			*copy, *p, **rcpts = NULL;
	size_t			 n = 0;

	if (h->history == NULL)
		return;
	p = copy = xstrdup(text);
	memset(&m, 0, sizeof(m));
	m.qid = qid;
	m.received_ms = strtoull(next_line(&p), NULL, 10);
	m.size = strtoull(next_line(&p), NULL, 10);
	m.client = next_line(&p);
	m.user = next_line(&p);
	m.sender = next_line(&p);
	m.message_id = next_line(&p);
	m.subject = next_line(&p);
	while (*p != '\0') {
		rcpts = xrealloc(rcpts, (n + 1) * sizeof(*rcpts));
		rcpts[n++] = next_line(&p);
	}
	if (*m.user == '\0')
		m.user = NULL;
	if (*m.message_id == '\0')
		m.message_id = NULL;
	if (*m.subject == '\0')
		m.subject = NULL;
	m.rcpts = (const char *const *)rcpts;
	m.nrcpts = n;
	history_queued(h->history, &m);
	free(rcpts);
	free(copy);
}

static void
on_msg(void *arg, const struct link_msg *m, const char *text)
{
	struct handoff	*h = arg;

	if (m == NULL) {
		/* Its segments are closed once a new one says HELLO. */
		link_free(h->link);
		h->link = NULL;
		unwatch_all(h);
		h->fig.nsessions = 0;
		return;
	}
	switch (m->type) {
	case LINK_QUEUED:
		spool_adopt(h->spool, m->qid, m->seg, m->off, m->len);
		break;
	case LINK_CLOSED:
		spool_segment_closed(h->spool, m->seg);
		break;
	case LINK_HELLO:
		hello_go(h);
		break;
	case LINK_WATCH:
		watch(h, m->qid);
		break;
	case LINK_UNWATCH:
		unwatch(h, m->qid);
		break;
	case LINK_HISTORY:
		history_row(h, m->qid, text);
		break;
	case LINK_FIGURES:
		if (m->textlen != sizeof(h->fig))
			break;
		memcpy(&h->fig, text, sizeof(h->fig));
		h->have_fig = 1;
		if (h->first_cb != NULL) {
			h->first_cb(h->first_arg);
			h->first_cb = NULL;
		}
		break;
	default:
		log_warnx("link: message %u from SMTP ignored",
		    (unsigned)m->type);
		break;
	}
}

static void
on_news(void *arg, const struct spool_news *n)
{
	struct handoff	*h = arg;
	struct link_msg	 m;

	if (h->link == NULL || n->type != SPOOL_NEWS_EMPTIED)
		return;
	memset(&m, 0, sizeof(m));
	m.type = LINK_EMPTIED;
	strlcpy_r(m.seg, n->seg, sizeof(m.seg));
	link_send(h->link, &m, NULL, 0);
}

struct handoff *
handoff_new(struct event_base *base, struct spool *spool,
    struct worker_pool *pool, struct history *history)
{
	struct handoff	*h = xcalloc(1, sizeof(*h));

	h->base = base;
	h->spool = spool;
	h->pool = pool;
	h->history = history;
	spool_set_news_cb(spool, on_news, h);
	return h;
}

void
handoff_connect(struct handoff *h, int fd, int hello)
{
	if (h->link != NULL)
		link_drain(h->link);	/* to its end: calls back NULL */
	if (h->link != NULL) {
		link_free(h->link);
		h->link = NULL;
		unwatch_all(h);
	}
	h->link = link_new(h->base, fd, on_msg, h);
	if (hello)
		hello_go(h);
}

void
handoff_when_figures(struct handoff *h, void (*cb)(void *), void *arg)
{
	if (h->have_fig)
		cb(arg);
	else {
		h->first_cb = cb;
		h->first_arg = arg;
	}
}

const struct smtp_figures *
handoff_figures(const struct handoff *h)
{
	return &h->fig;
}

int
handoff_unlock(struct handoff *h, const char *addr)
{
	struct link_msg	 m;
	uint32_t	 i;

	for (i = 0; i < h->fig.nlocked && i < SMTP_FIG_LOCKED; i++)
		if (strcmp(h->fig.locked[i].addr, addr) == 0)
			break;
	if (h->link == NULL || i == h->fig.nlocked || i == SMTP_FIG_LOCKED)
		return -1;
	/* Gone from what status shows now; FIGURES say so again soon. */
	memmove(&h->fig.locked[i], &h->fig.locked[i + 1],
	    (SMTP_FIG_LOCKED - i - 1) * sizeof(h->fig.locked[0]));
	h->fig.nlocked--;
	memset(&m, 0, sizeof(m));
	m.type = LINK_UNLOCK;
	link_send(h->link, &m, addr, strlen(addr));
	return 0;
}

void
handoff_free(struct handoff *h)
{
	if (h == NULL)
		return;
	unwatch_all(h);
	spool_set_news_cb(h->spool, NULL, NULL);
	link_free(h->link);
	free(h);
}

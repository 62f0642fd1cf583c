/*
 * link_smtp.c - the SMTP side's end of the link to delivery (runs in the
 * process that takes mail: "relayd: smtp").
 *
 * It tells delivery what the spool's intake committed and closed
 * (spool.c's news), and waits on its word at each new connection: the
 * spool is paused (commits wait, the open segment is closed), HELLO
 * goes, and commits start again at GO, when delivery has read queue/.
 * reply_after = graph: a session's wait for the first attempt is a
 * WATCH; the ANSWER comes back here and goes to the session. While no
 * delivery is connected nothing waits: sessions answer 250 queued, and
 * what is committed is found by the next delivery in queue/.
 *
 * History lives with delivery: each accepted message's row goes as
 * HISTORY. The figures relayctl status and the metrics show of this side
 * (struct smtp_figures) go as FIGURES at once when they change (a session
 * comes or goes, a counter moves: status answers what a client just did)
 * and every FIGURES_MS if different; relayctl unlock comes back as UNLOCK.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "auth.h"
#include "history.h"
#include "link.h"
#include "link_smtp.h"
#include "log.h"
#include "smtp.h"
#include "spool.h"
#include "util.h"
#include "worker.h"

#define FIGURES_MS	1000	/* besides each change: lockouts expire */
#define FIGURES_GAP_MS	1	/* changes: at most one FIGURES per */

struct watch {
	char		 qid[SPOOL_QID_LEN + 1];
	worker_watch_cb	*cb;
	void		*arg;
	struct watch	*next;
};

struct intake {
	struct event_base	*base;
	struct spool		*spool;
	struct link		*link;		/* NULL: no delivery */
	int			 ready;		/* GO since the connection */
	struct watch		*watches;
	struct smtp		*smtp;
	struct auth		**auth;		/* in force (reload sets it) */
	struct event		*tick;
	struct event		*soon;		/* a change, FIGURES_GAP_MS */
	uint64_t		 sent_ms;	/* now_ms() of the last */
	struct smtp_figures	 sent;		/* last FIGURES */
	int			 sent_ok;
};

/* Every wait ends: the message stays queued (250 queued as). */
static void
watches_end(struct intake *in)
{
	struct worker_answer	 a;
	struct watch		*w;

	memset(&a, 0, sizeof(a));
	a.outcome = WORKER_QUEUED;
	a.code = a.message = "";
	while ((w = in->watches) != NULL) {
		in->watches = w->next;
		w->cb(w->arg, &a);
		free(w);
	}
}

static void
answer(struct intake *in, const struct link_msg *m, const char *text)
{
	struct worker_answer	 a;
	struct watch		**wp, *w;

	for (wp = &in->watches; *wp != NULL; wp = &(*wp)->next)
		if (strcmp((*wp)->qid, m->qid) == 0)
			break;
	if ((w = *wp) == NULL)
		return;		/* unwatched meanwhile */
	*wp = w->next;
	memset(&a, 0, sizeof(a));
	a.outcome = (enum worker_outcome)m->outcome;
	a.status = (long)m->status;
	a.code = m->code;
	a.message = text;
	w->cb(w->arg, &a);
	free(w);
}

static void	figures_now(void *);

static void
unlock(struct intake *in, const char *addr)
{
	if (in->auth != NULL && *in->auth != NULL)
		auth_unlock(*in->auth, addr);	/* delivery logged it */
	figures_now(in);
}

static void
on_msg(void *arg, const struct link_msg *m, const char *text)
{
	struct intake	*in = arg;

	if (m == NULL) {
		log_warnx("link: the delivery process is gone; mail is still "
		    "taken and queued, delivered once it is back");
		link_free(in->link);
		in->link = NULL;
		in->ready = 0;
		watches_end(in);
		spool_intake_resume(in->spool);
		return;
	}
	switch (m->type) {
	case LINK_GO:
		in->ready = 1;
		in->sent_ok = 0;	/* the figures, for a new delivery */
		spool_intake_resume(in->spool);
		figures_now(in);
		break;
	case LINK_EMPTIED:
		spool_intake_retire(in->spool, m->seg);
		break;
	case LINK_ANSWER:
		answer(in, m, text);
		break;
	case LINK_UNLOCK:
		unlock(in, text);
		break;
	default:
		log_warnx("link: message %u from delivery ignored",
		    (unsigned)m->type);
		break;
	}
}

static void
send_msg(struct intake *in, enum link_type type, const char *qid,
    const char *seg, uint64_t off, uint64_t len)
{
	struct link_msg	 m;

	if (in->link == NULL)
		return;
	memset(&m, 0, sizeof(m));
	m.type = type;
	if (qid != NULL)
		strlcpy_r(m.qid, qid, sizeof(m.qid));
	if (seg != NULL)
		strlcpy_r(m.seg, seg, sizeof(m.seg));
	m.off = off;
	m.len = len;
	link_send(in->link, &m, NULL, 0);
}

static void
on_news(void *arg, const struct spool_news *n)
{
	struct intake	*in = arg;

	send_msg(in, n->type == SPOOL_NEWS_QUEUED ? LINK_QUEUED : LINK_CLOSED,
	    n->qid, n->seg, n->off, n->len);
}

static void
on_paused(void *arg)
{
	struct intake	*in = arg;

	send_msg(in, LINK_HELLO, NULL, NULL, 0, 0);
}

struct intake *
intake_new(struct event_base *base, struct spool *spool)
{
	struct intake	*in = xcalloc(1, sizeof(*in));

	in->base = base;
	in->spool = spool;
	spool_set_news_cb(spool, on_news, in);
	spool_intake_pause(spool, on_paused, in);	/* until a GO */
	return in;
}

void
intake_connect(struct intake *in, int fd)
{
	if (in->link != NULL) {
		link_free(in->link);
		watches_end(in);
	}
	in->link = link_new(in->base, fd, on_msg, in);
	in->ready = 0;
	in->sent_ok = 0;
	spool_intake_pause(in->spool, on_paused, in);
}

int
intake_watch(struct intake *in, const char *qid, worker_watch_cb *cb,
    void *arg)
{
	struct watch	*w;

	if (in == NULL || in->link == NULL || !in->ready)
		return -1;
	w = xcalloc(1, sizeof(*w));
	strlcpy_r(w->qid, qid, sizeof(w->qid));
	w->cb = cb;
	w->arg = arg;
	w->next = in->watches;
	in->watches = w;
	send_msg(in, LINK_WATCH, qid, NULL, 0, 0);
	return 0;
}

void
intake_unwatch(struct intake *in, const char *qid)
{
	struct watch	**wp, *w;

	if (in == NULL)
		return;
	for (wp = &in->watches; *wp != NULL; wp = &(*wp)->next)
		if (strcmp((*wp)->qid, qid) == 0) {
			w = *wp;
			*wp = w->next;
			free(w);
			send_msg(in, LINK_UNWATCH, qid, NULL, 0, 0);
			return;
		}
}

void
intake_free(struct intake *in)
{
	struct watch	*w;

	if (in == NULL)
		return;
	while ((w = in->watches) != NULL) {
		in->watches = w->next;
		free(w);
	}
	spool_set_news_cb(in->spool, NULL, NULL);
	if (in->smtp != NULL)
		smtp_set_changed_cb(in->smtp, NULL, NULL);
	if (in->tick != NULL)
		event_free(in->tick);
	if (in->soon != NULL)
		event_free(in->soon);
	link_free(in->link);
	free(in);
}

/* A field of a history row: a line of its own (NULL: empty). */
static void
put_line(FILE *f, const char *v)
{
	for (; v != NULL && *v != '\0'; v++)
		fputc(*v == '\n' || *v == '\r' ? ' ' : *v, f);
	fputc('\n', f);
}

void
intake_history(struct intake *in, const struct history_msg *h)
{
	struct link_msg	 m;
	FILE		*f;
	char		*text = NULL;
	size_t		 len = 0, i;

	if (in == NULL || in->link == NULL ||
	    (f = open_memstream(&text, &len)) == NULL)
		return;
	fprintf(f, "%llu\n%llu\n", (unsigned long long)h->received_ms,
	    (unsigned long long)h->size);
	put_line(f, h->client);
	put_line(f, h->user);
	put_line(f, h->sender);
	put_line(f, h->message_id);
	put_line(f, h->subject);
	for (i = 0; i < h->nrcpts; i++)
		put_line(f, h->rcpts[i]);
	fclose(f);
	memset(&m, 0, sizeof(m));
	m.type = LINK_HISTORY;
	strlcpy_r(m.qid, h->qid, sizeof(m.qid));
	link_send(in->link, &m, text, len);
	free(text);
}

static void
figures_tick(evutil_socket_t fd, short ev, void *arg)
{
	struct intake		*in = arg;
	struct smtp_figures	 f;
	struct link_msg		 m;

	(void)fd;
	(void)ev;
	if (in->link == NULL || !in->ready || in->smtp == NULL)
		return;
	smtp_figures(in->smtp, *in->auth, &f);
	if (in->sent_ok && memcmp(&f, &in->sent, sizeof(f)) == 0)
		return;
	in->sent = f;
	in->sent_ok = 1;
	in->sent_ms = now_ms();
	memset(&m, 0, sizeof(m));
	m.type = LINK_FIGURES;
	link_send(in->link, &m, &f, sizeof(f));
}

void
intake_figures(struct intake *in, struct smtp *smtp, struct auth **auth)
{
	struct timeval	 tv = ms_tv(FIGURES_MS);

	in->smtp = smtp;
	in->auth = auth;
	in->tick = event_new(in->base, -1, EV_PERSIST, figures_tick, in);
	event_add(in->tick, &tv);
	in->soon = evtimer_new(in->base, figures_tick, in);
	smtp_set_changed_cb(smtp, figures_now, in);
}

/* Soon (once per loop turn, however many changes). */
static void
figures_now(void *arg)
{
	struct intake	*in = arg;

	uint64_t	 since;
	struct timeval	 tv;

	/* Under load: one FIGURES per FIGURES_GAP_MS, not per change. */
	if (in->soon == NULL || evtimer_pending(in->soon, NULL))
		return;
	since = now_ms() - in->sent_ms;
	tv = ms_tv(since >= FIGURES_GAP_MS ? 0 : FIGURES_GAP_MS - since);
	evtimer_add(in->soon, &tv);
}

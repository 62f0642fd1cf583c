/*
 * worker.c - the delivery pool: queued messages to Graph sendMail.
 *
 * Design. The event loop owns the delivery queue: which messages wait,
 * which are in flight, when a deferred one may go again, and how many
 * requests each mailbox has open. [queue] workers threads each own one
 * CURL handle (and so their own kept-alive connections) and block in
 * libcurl; a blocking request per thread keeps each delivery a plain
 * sequence (read, map, token, POST, classify) that is easy to follow and
 * to stop. Jobs reach the threads through one mutex-guarded list; results
 * come back through a pipe the loop reads (memcached's pattern). Nothing
 * else is shared but the token (token.c).
 *
 * Per mailbox (the {id} of /users/{id}/sendMail) at most 4 requests are in
 * flight, Graph's MailboxConcurrency limit. Mailboxes take turns, so one
 * busy scanner cannot starve the others. The loop counts by what it knows
 * before reading a message (the envelope sender); the mailbox itself may
 * be known only after parsing (mailbox = from, a null sender), so every
 * request also holds one of the real mailbox's 4 slots, which a worker
 * waits for when messages of several envelope senders share a mailbox.
 *
 * Results (graph_classify's table): 202 marks the record delivered (log
 * "sent"); a permanent failure copies it to dead/ with Graph's answer (log
 * "failed", and with [queue] bounce = sender a report (report.c) to the
 * sender; [queue] notify gets a digest of them, report.c too); a 401 InvalidAuthenticationToken gets one fresh token and one
 * more try. A temporary failure defers the message: Retry-After exactly,
 * else retry_min doubling to retry_max with jitter; attempts, next attempt
 * and the last error go into its state line on disk, so a restart picks up
 * the schedule. A 429 (or a quota error) holds the whole mailbox, not just
 * the message; other mailboxes keep flowing. Runs of service failures
 * (503, 504, no answer) hold for a while, then one request probes: only
 * the failing mailbox while the failures are its own (one mailbox's
 * outage must not stop the others: it held a healthy mailbox's mail 23 s
 * before), every delivery once they span two mailboxes. Mailboxes are
 * paced to messages_per_minute (a token bucket). A message older than
 * lifetime goes to dead/ as "expired" at its next failure. A retry
 * after a 504 or a timeout may send a message twice: such attempts are
 * logged possible_duplicate=yes.
 *
 * relayctl: hold, release, retry and delete act on an id, all, or a
 * mailbox's or sender's messages. A hold beats a request that has not
 * gone out yet (the worker asks, under the lock, just before sending);
 * after that it cannot, and relayctl says so. pause stops dispatch()
 * (a file in the spool directory keeps it across restarts).
 */
#include <sys/queue.h>
#include <sys/stat.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "draft.h"
#include "graph.h"
#include "history.h"
#include "http.h"
#include "log.h"
#include "report.h"
#include "spool.h"
#include "token.h"
#include "util.h"
#include "worker.h"

#define MAILBOX_CONCURRENCY	4	/* Graph: per app and mailbox */
#define MBOX_HASH_SIZE		1024
#define STOP_GRACE_MS		10000	/* requests in flight at stop */
#define QUOTA_HOLD_MS		(3600 * 1000)	/* ErrorQuotaExceeded */
#define REASON_BODY_MAX		(16 * 1024)	/* Graph's answer in .reason */
#define SVC_THRESHOLD		3	/* failures in a row: Graph is down */
#define SVC_BACKOFF_MIN_MS	5000
#define SVC_BACKOFF_MAX_MS	(5 * 60 * 1000)
#define PAUSE_FILE		"paused"	/* in the spool directory */

enum hold_kind { HOLD_THROTTLED, HOLD_UNAVAILABLE };

struct mbox;

/* A queued message (loop thread only, except qid while in flight). */
struct qent {
	char			 qid[SPOOL_QID_LEN + 1];
	uint64_t		 size;
	unsigned		 attempts;
	uint64_t		 arrival_ms;	/* wall clock */
	char			*sender;	/* envelope, "" for null */
	int			 maybe_dup;	/* an attempt may have gone out */
	char			*stray;		/* a draft to delete: "mailbox id" */
	size_t			 nrcpts;
	char			*rcpts[WORKER_RCPTS_SHOWN];	/* for relayctl */
	int			 inflight;	/* a worker has it */
	int			 held;		/* relayctl hold: state H */
	int			 hold_asked;	/* held once back from a worker */
	struct job		*job;		/* while in flight */
	uint64_t		 next_wall;	/* deferred till then (ms) */
	uint64_t		 next_ms;	/* the same by now_ms() */
	char			 error[SPOOL_ERROR_MAX + 1];	/* the last */
	struct mbox		*mb;
	struct event		*timer;		/* while deferred */
	worker_watch_cb		*watch_cb;	/* a session waits: first try */
	void			*watch_arg;
	struct worker_pool	*pool;
	TAILQ_ENTRY(qent)	 link;		/* its mailbox's ready list */
	TAILQ_ENTRY(qent)	 all;
};
TAILQ_HEAD(qent_list, qent);

struct mbox {
	char			*key;		/* lower case */
	unsigned		 inflight;
	size_t			 refs;		/* qents pointing here */
	struct qent_list	 ready;
	int			 runnable;
	uint64_t		 hold_until;	/* now_ms(): throttled till then */
	enum hold_kind		 hold_kind;
	/* Its own service failures in a row, hold, then one probe. */
	unsigned		 svc_fails;
	uint64_t		 svc_backoff_ms;
	int			 svc_probing;
	double			 tokens;	/* pacing: messages it may send */
	uint64_t		 refill_ms;
	struct event		*timer;		/* when it may go again */
	struct worker_pool	*pool;
	TAILQ_ENTRY(mbox)	 rlink;
	struct mbox		*hnext;
};
TAILQ_HEAD(mbox_list, mbox);

/* One delivery attempt: the loop fills the top, the worker the rest. */
struct job {
	struct qent		*qe;
	char			 qid[SPOOL_QID_LEN + 1];
	const char		*key;		/* the loop's mailbox key */
	enum graph_result	 result;
	long			 status;
	long long		 retry_ms;	/* Retry-After, -1 if none */
	struct graph_error	 err;
	char			 request_id[64];
	int			 reached;	/* an HTTP exchange was tried */
	char			*body;		/* Graph's whole error answer */
	char			*mailbox;
	char			*message_id;	/* "<...>" or NULL */
	size_t			 nrcpts;
	size_t			 nattach;
	uint64_t		 ms;
	int			 draft;		/* it took the draft path */
	int			 started;	/* under lock: the request went */
	int			 cancel;	/* under lock: held before that */
	char			*stray;		/* in and out: see qent */
	struct job		*next;
};

/* Worker-side slots for mailboxes the loop could not know in advance. */
struct slot {
	char			*mailbox;
	unsigned		 n;
	struct slot		*next;
};

struct worker_pool {
	const struct config	*cfg;
	struct spool		*spool;
	struct token		*token;
	struct event_base	*base;
	struct graph_opts	 opts;

	/* Loop thread. */
	struct mbox		*hash[MBOX_HASH_SIZE];
	struct mbox_list	 runnable;
	struct qent_list	 all;
	size_t			 busy;
	size_t			 queued;
	uint64_t		 rng;

	/*
	 * Graph as a whole: failures in a row, hold, then one probe; the
	 * run's first mailbox, and whether another one failed in it too.
	 */
	unsigned		 svc_fails;
	char			*svc_first;
	int			 svc_spread;
	uint64_t		 svc_backoff_ms;
	uint64_t		 svc_until;	/* now_ms() */
	int			 svc_probing;
	struct event		*svc_timer;
	int			 stopping;
	int			 paused;	/* relayctl pause */
	char			*paused_by;
	uint64_t		 paused_at;	/* wall ms */
	struct event		*notify_ev;
	int			 notify[2];
	struct digest		*digest;	/* [queue] notify, or NULL */

	/* For the status socket. */
	uint64_t		 nsent, ndeferred, nfailed;
	struct history		*history;	/* NULL: none */
	struct worker_error	 errors[WORKER_ERRORS];
	size_t			 nerrors;	/* ever; the ring holds the last */

	/* Shared, under lock. */
	pthread_mutex_t		 lock;
	pthread_cond_t		 cond;
	pthread_cond_t		 slot_cond;
	struct job		*jobs;
	struct job		*done;
	struct slot		*slots;
	int			 quit;

	pthread_t		*threads;
	size_t			 nthreads;
};

static void	dispatch(struct worker_pool *);
static void	mbox_update(struct worker_pool *, struct mbox *);
static void	mbox_timer_cb(evutil_socket_t, short, void *);
static void	pause_load(struct worker_pool *);

static unsigned
hash_key(const char *s)
{
	unsigned	 h = 5381;

	for (; *s != '\0'; s++)
		h = h * 33 + (unsigned)tolower((unsigned char)*s);
	return h % MBOX_HASH_SIZE;
}

static struct mbox *
mbox_get(struct worker_pool *p, const char *mailbox)
{
	struct mbox	*mb;
	char		*key = xstrdup(mailbox), *c;
	unsigned	 h;

	for (c = key; *c != '\0'; c++)
		*c = (char)tolower((unsigned char)*c);
	h = hash_key(key);
	for (mb = p->hash[h]; mb != NULL; mb = mb->hnext)
		if (strcmp(mb->key, key) == 0) {
			free(key);
			return mb;
		}
	mb = xcalloc(1, sizeof(*mb));
	mb->key = key;
	mb->pool = p;
	mb->tokens = (double)p->cfg->messages_per_minute;
	mb->refill_ms = now_ms();
	TAILQ_INIT(&mb->ready);
	mb->hnext = p->hash[h];
	p->hash[h] = mb;
	return mb;
}

static uint64_t	pace_wait(const struct worker_pool *, struct mbox *,
		    uint64_t);

/* The mailbox is looked at again in ms milliseconds (mbox_timer_cb). */
static void
mbox_wake_in(struct worker_pool *p, struct mbox *mb, uint64_t ms)
{
	struct timeval	 tv = ms_tv(ms);

	if (mb->timer == NULL)
		mb->timer = evtimer_new(p->base, mbox_timer_cb, mb);
	evtimer_add(mb->timer, &tv);
}

/*
 * How long an idle mailbox must be remembered: while it is held, and until
 * its pacing bucket is full again. 0: it can go.
 */
static uint64_t
mbox_warm_for(const struct worker_pool *p, struct mbox *mb)
{
	uint64_t	 now = now_ms(), hold = 0, fill = 0;
	double		 mpm = (double)p->cfg->messages_per_minute;

	if (mb->hold_until > now)
		hold = mb->hold_until - now;
	if (mpm > 0) {
		pace_wait(p, mb, now);		/* refills */
		if (mb->tokens < mpm)
			fill = (uint64_t)((mpm - mb->tokens) * 60000.0 / mpm) +
			    1;
	}
	return hold > fill ? hold : fill;
}

static void
mbox_put(struct worker_pool *p, struct mbox *mb)
{
	struct mbox	**pp;
	uint64_t	 warm;

	if (mb->refs > 0 && --mb->refs > 0)
		return;
	if (!p->stopping && (warm = mbox_warm_for(p, mb)) > 0) {
		/* Its hold and pace outlive its queue: look again then. */
		mbox_wake_in(p, mb, warm);
		return;
	}
	for (pp = &p->hash[hash_key(mb->key)]; *pp != mb; pp = &(*pp)->hnext)
		;
	*pp = mb->hnext;
	if (mb->runnable)
		TAILQ_REMOVE(&p->runnable, mb, rlink);
	if (mb->timer != NULL)
		event_free(mb->timer);
	free(mb->key);
	free(mb);
}

static void
mbox_timer_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct mbox		*mb = arg;
	struct worker_pool	*p = mb->pool;

	(void)fd;
	(void)ev;
	if (mb->refs == 0) {
		mbox_put(p, mb);	/* idle: forget it, or look again */
		return;
	}
	mbox_update(p, mb);
	dispatch(p);
}

/*
 * Pacing: a bucket of messages_per_minute tokens, refilled continuously.
 * Returns how long until the mailbox may send again, 0 if now.
 */
static uint64_t
pace_wait(const struct worker_pool *p, struct mbox *mb, uint64_t now)
{
	double	 mpm = (double)p->cfg->messages_per_minute;

	if (mpm <= 0)
		return 0;
	mb->tokens += (double)(now - mb->refill_ms) * mpm / 60000.0;
	if (mb->tokens > mpm)
		mb->tokens = mpm;
	mb->refill_ms = now;
	if (mb->tokens >= 1.0)
		return 0;
	return (uint64_t)((1.0 - mb->tokens) * 60000.0 / mpm) + 1;
}

/*
 * Runnable: messages ready, a free slot (only one while its probe is
 * out), not held, not over its pace.
 */
static void
mbox_update(struct worker_pool *p, struct mbox *mb)
{
	uint64_t	 now = now_ms(), wait = 0;
	int		 want = !TAILQ_EMPTY(&mb->ready) &&
	    mb->inflight < (mb->svc_probing ? 1 : MAILBOX_CONCURRENCY);

	if (want && mb->hold_until > now)
		wait = mb->hold_until - now;
	else if (want)
		wait = pace_wait(p, mb, now);
	if (wait > 0) {
		want = 0;
		mbox_wake_in(p, mb, wait);
	}
	if (want && !mb->runnable)
		TAILQ_INSERT_TAIL(&p->runnable, mb, rlink);
	else if (!want && mb->runnable)
		TAILQ_REMOVE(&p->runnable, mb, rlink);
	mb->runnable = want;
}

/* The loop's idea of the sending mailbox before the message is read. */
static const char *
mailbox_key(const struct worker_pool *p, const char *mail_from)
{
	if (strcmp(p->cfg->mailbox, "envelope") != 0 &&
	    strcmp(p->cfg->mailbox, "from") != 0)
		return p->cfg->mailbox;
	return *mail_from != '\0' ? mail_from : "<>";
}

static void	watch_fire(struct qent *, enum worker_outcome,
		    const struct job *);

/* The first recipients, bare addresses ("addr PARAMS" on disk). */
static void
qent_keep_rcpts(struct qent *qe, const char *const *rcpts, size_t n)
{
	size_t	 i;

	for (i = 0; i < n && i < WORKER_RCPTS_SHOWN; i++)
		qe->rcpts[i] = xstrndup(rcpts[i], strcspn(rcpts[i], " "));
}

static void
qent_forget_rcpts(struct qent *qe)
{
	size_t	 i;

	for (i = 0; i < WORKER_RCPTS_SHOWN; i++)
		free(qe->rcpts[i]);
}

static void
qent_free(struct worker_pool *p, struct qent *qe)
{
	watch_fire(qe, WORKER_QUEUED, NULL);	/* relayctl delete */
	if (qe->timer != NULL)
		event_free(qe->timer);
	mbox_put(p, qe->mb);
	TAILQ_REMOVE(&p->all, qe, all);
	p->queued--;
	free(qe->sender);
	free(qe->stray);
	qent_forget_rcpts(qe);
	free(qe);
}

static void	retry_cb(evutil_socket_t, short, void *);

/*
 * libevent measures a timeout from a coarse clock it cached at the top of
 * the loop, so a timer can run a few ms before its time by now_ms(). A
 * callback that finds itself early arms its timer again for the rest and
 * returns 1: a Retry-After is never cut short.
 */
static int
too_early(struct event *ev, uint64_t at)
{
	uint64_t	 now = now_ms();
	struct timeval	 tv;

	if (now >= at)
		return 0;
	tv = ms_tv(at - now);
	evtimer_add(ev, &tv);
	return 1;
}

/* Deferred: the retry timer, and when it fires by the wall clock. */
static void
retry_at(struct worker_pool *p, struct qent *qe, uint64_t delay)
{
	struct timeval	 tv = ms_tv(delay);

	qe->next_wall = wall_us() / 1000 + delay;
	qe->next_ms = now_ms() + delay;
	qe->timer = evtimer_new(p->base, retry_cb, qe);
	evtimer_add(qe->timer, &tv);
}

/*
 * A message joins the queue: ready now, or (found at start with a retry
 * time on disk) when its next attempt is due.
 */
static void
enqueue(struct worker_pool *p, const char *qid, const char *mail_from,
    const char *const *rcpts, size_t nrcpts, uint64_t size,
    unsigned attempts, uint64_t arrival_ms, uint64_t next_ms,
    const char *error, int held)
{
	struct qent	*qe = xcalloc(1, sizeof(*qe));
	uint64_t	 now = wall_us() / 1000;

	strlcpy_r(qe->qid, qid, sizeof(qe->qid));
	qe->size = size;
	qe->nrcpts = nrcpts;
	qent_keep_rcpts(qe, rcpts, nrcpts);
	qe->attempts = attempts;
	qe->arrival_ms = arrival_ms;
	qe->sender = xstrdup(mail_from);
	qe->held = held;
	strlcpy_r(qe->error, error != NULL ? error : "", sizeof(qe->error));
	qe->pool = p;
	qe->mb = mbox_get(p, mailbox_key(p, mail_from));
	qe->mb->refs++;
	TAILQ_INSERT_TAIL(&p->all, qe, all);
	p->queued++;
	if (held)
		return;			/* until relayctl release */
	if (next_ms > now) {
		retry_at(p, qe, next_ms - now);
		return;
	}
	TAILQ_INSERT_TAIL(&qe->mb->ready, qe, link);
	if (qe->mb->hold_until > now_ms())
		spool_set_state(p->spool, qe->qid, SPOOL_QUEUED, 0, now +
		    (qe->mb->hold_until - now_ms()), "mailbox held");
	mbox_update(p, qe->mb);
}

static void
on_queued(void *arg, const char *qid, const char *mail_from,
    const char *const *rcpts, size_t nrcpts, uint64_t size)
{
	struct worker_pool	*p = arg;

	enqueue(p, qid, mail_from, rcpts, nrcpts, size, 0, wall_us() / 1000,
	    0, NULL, 0);
	dispatch(p);
}

/* Hands ready messages to idle workers, mailboxes taking turns. */
static void
dispatch(struct worker_pool *p)
{
	struct mbox	*mb;
	struct qent	*qe;
	struct job	*j, *list = NULL;

	if (p->paused || p->svc_until > now_ms())
		return;			/* paused, or Graph is down */
	while (!p->stopping && p->busy < p->nthreads &&
	    !(p->svc_probing && p->busy > 0) &&
	    (mb = TAILQ_FIRST(&p->runnable)) != NULL) {
		qe = TAILQ_FIRST(&mb->ready);
		TAILQ_REMOVE(&mb->ready, qe, link);
		mb->inflight++;
		if (p->cfg->messages_per_minute > 0)
			mb->tokens -= 1.0;
		TAILQ_REMOVE(&p->runnable, mb, rlink);
		mb->runnable = 0;
		mbox_update(p, mb);	/* to the back of the line */
		p->busy++;
		j = xcalloc(1, sizeof(*j));
		j->qe = qe;
		qe->job = j;
		qe->inflight = 1;
		j->stray = qe->stray;
		qe->stray = NULL;
		memcpy(j->qid, qe->qid, sizeof(j->qid));
		j->key = mb->key;
		j->next = list;
		list = j;
	}
	if (list == NULL)
		return;
	pthread_mutex_lock(&p->lock);
	while (list != NULL) {
		j = list;
		list = j->next;
		j->next = p->jobs;
		p->jobs = j;
	}
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

static void
retry_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct qent		*qe = arg;
	struct worker_pool	*p = qe->pool;

	(void)fd;
	(void)ev;
	if (too_early(qe->timer, qe->next_ms))
		return;
	event_free(qe->timer);
	qe->timer = NULL;
	qe->next_wall = 0;
	TAILQ_INSERT_TAIL(&qe->mb->ready, qe, link);
	mbox_update(p, qe->mb);
	dispatch(p);
}

/* retry_min doubling to retry_max, with "equal jitter": half fixed, half random. */
static uint64_t
backoff_ms(struct worker_pool *p, unsigned attempts)
{
	uint64_t	 ms = p->cfg->retry_min_ms;

	while (attempts-- > 1 && ms < p->cfg->retry_max_ms)
		ms *= 2;
	if (ms > p->cfg->retry_max_ms)
		ms = p->cfg->retry_max_ms;
	p->rng ^= p->rng << 13;
	p->rng ^= p->rng >> 7;
	p->rng ^= p->rng << 17;
	return ms / 2 + p->rng % (ms / 2 + 1);
}

static void
svc_timer_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct worker_pool	*p = arg;

	(void)fd;
	(void)ev;
	if (too_early(p->svc_timer, p->svc_until))
		return;
	p->svc_until = 0;
	p->svc_probing = 1;
	log_info("graph probing: one request to see whether Graph answers "
	    "again");
	dispatch(p);
}

/* Backoff of service holds: 5 s doubling to 5 min. */
static uint64_t
svc_backoff(uint64_t last)
{
	if (last == 0)
		return SVC_BACKOFF_MIN_MS;
	return last * 2 > SVC_BACKOFF_MAX_MS ? SVC_BACKOFF_MAX_MS : last * 2;
}

/* Graph as a whole fails: hold every delivery, then one request probes. */
static void
graph_hold(struct worker_pool *p, uint64_t now)
{
	struct timeval	 tv;

	if (p->svc_until > now)
		return;		/* answers of requests sent before the hold */
	p->svc_backoff_ms = svc_backoff(p->svc_backoff_ms);
	p->svc_until = now + p->svc_backoff_ms;
	p->svc_probing = 0;
	log_warnx("graph unavailable: %u failures in a row; all deliveries "
	    "wait %.1fs, then one request probes (the failures came from "
	    "several mailboxes)", p->svc_fails,
	    (double)p->svc_backoff_ms / 1000.0);
	if (p->svc_timer == NULL)
		p->svc_timer = evtimer_new(p->base, svc_timer_cb, p);
	tv = ms_tv(p->svc_backoff_ms);
	evtimer_add(p->svc_timer, &tv);
}

/*
 * One mailbox fails on its own: hold it alone, as Graph-wide holds do,
 * and let one of its requests probe when the hold ends.
 */
static void
mbox_svc_hold(struct worker_pool *p, struct mbox *mb, uint64_t now)
{
	if (mb->hold_until > now)
		return;		/* sent before the hold, or throttled */
	mb->svc_backoff_ms = svc_backoff(mb->svc_backoff_ms);
	mb->hold_until = now + mb->svc_backoff_ms;
	mb->hold_kind = HOLD_UNAVAILABLE;
	mb->svc_probing = 1;
	log_warnx("graph mailbox unavailable: mailbox=%s %u failures in a "
	    "row, only this mailbox's; its deliveries wait %.1fs, then one "
	    "request probes (other mailboxes go on)", mb->key, mb->svc_fails,
	    (double)mb->svc_backoff_ms / 1000.0);
	mbox_update(p, mb);
}

/* An answer other than a service failure: the mailbox and Graph are up. */
static void
service_ok(struct worker_pool *p, struct mbox *mb)
{
	if (mb->svc_fails >= SVC_THRESHOLD || mb->svc_probing) {
		log_info("graph mailbox answering again: mailbox=%s deliveries "
		    "resume", mb->key);
		if (mb->hold_kind == HOLD_UNAVAILABLE)
			mb->hold_until = 0;
	}
	mb->svc_fails = 0;
	mb->svc_backoff_ms = 0;
	mb->svc_probing = 0;
	if (p->svc_fails >= SVC_THRESHOLD || p->svc_probing)
		log_info("graph answering again: deliveries resume");
	p->svc_fails = 0;
	p->svc_backoff_ms = 0;
	p->svc_probing = 0;
	p->svc_until = 0;
	if (p->svc_timer != NULL)
		evtimer_del(p->svc_timer);
}

/*
 * Service failures (503, 504, no answer ...), SVC_THRESHOLD in a row: when
 * the run spans two mailboxes or more, Graph as a whole is failing and
 * every delivery waits; when they are one mailbox's own (others answer, or
 * nobody else tried), only that mailbox waits. Any other answer means
 * Graph and the mailbox are there.
 */
static void
service_result(struct worker_pool *p, struct mbox *mb, int failed)
{
	uint64_t	 now = now_ms();

	if (!failed) {
		service_ok(p, mb);
		return;
	}
	if (p->svc_fails == 0 || p->svc_first == NULL) {
		free(p->svc_first);
		p->svc_first = xstrdup(mb->key);
		p->svc_spread = 0;
	} else if (strcmp(p->svc_first, mb->key) != 0)
		p->svc_spread = 1;
	p->svc_fails++;
	mb->svc_fails++;
	if (p->svc_spread && p->svc_fails >= SVC_THRESHOLD)
		graph_hold(p, now);
	else if (mb->svc_fails >= SVC_THRESHOLD && p->svc_until <= now)
		mbox_svc_hold(p, mb, now);
}

/* The message's end in its history; j is NULL if Graph was not asked. */
static void
record(struct worker_pool *p, const struct qent *qe, const struct job *j,
    const char *status)
{
	if (p->history == NULL)
		return;
	history_known(p->history, qe->qid, qe->arrival_ms, qe->sender,
	    qe->size);
	if (j == NULL)
		history_outcome(p->history, qe->qid, status, qe->attempts, 0,
		    NULL, NULL, NULL);
	else
		history_outcome(p->history, qe->qid, status, qe->attempts,
		    j->status, j->result != GRAPH_SENT ? j->err.code : NULL,
		    j->request_id, j->mailbox);
}

/* To dead/, with Graph's whole answer (or why it expired) beside it. */
static void
dead_letter(struct worker_pool *p, struct qent *qe, const struct job *j,
    const char *why)
{
	char		*reason, *body = NULL, when[32];
	size_t		 i;
	uint64_t	 delay;

	/* The answer as one line: its own line breaks become spaces. */
	if (j->body != NULL) {
		body = xstrdup(j->body);
		for (i = 0; body[i] != '\0'; i++)
			if (body[i] == '\n' || body[i] == '\r')
				body[i] = ' ';
	}
	xasprintf(&reason, "reason: %s\ntime: %s\n"
	    "mailbox: %s\nstatus: %ld\ncode: %s\nmessage: %s\n"
	    "request-id: %s\nattempts: %u\n%s%s%s", why,
	    time_iso(wall_us() / 1000, when, sizeof(when)),
	    j->mailbox ? j->mailbox : "", j->status, j->err.code,
	    j->err.message, j->request_id, qe->attempts,
	    body != NULL ? "body: " : "", body != NULL ? body : "",
	    body != NULL ? "\n" : "");
	if (spool_dead(p->spool, qe->qid, reason) == 0) {
		record(p, qe, j, strcmp(why, "expired") == 0 ? "expired" :
		    "failed");
		if (p->cfg->bounce == BOUNCE_SENDER && qe->sender[0] != '\0')
			report_bounce(p->spool, qe->qid);
		digest_dead(p->digest);
	} else if (errno != ENOENT) {
		/* dead/ could not take it (a full disk?): it stays queued. */
		delay = backoff_ms(p, qe->attempts);
		log_warnx("%s not dead-lettered; it stays queued, next attempt "
		    "in %.3fs", qe->qid, (double)delay / 1000.0);
		free(reason);
		free(body);
		retry_at(p, qe, delay);
		return;
	}
	free(reason);
	free(body);
	qent_free(p, qe);
}

/*
 * The mailbox's waiting messages get the hold's end as their next attempt
 * on disk too, so that a restart during the hold keeps it.
 */
static void
hold_on_disk(struct worker_pool *p, struct mbox *mb, uint64_t until,
    const char *why)
{
	struct qent	*qe;

	TAILQ_FOREACH(qe, &mb->ready, link)
		spool_set_state(p->spool, qe->qid, SPOOL_QUEUED, qe->attempts,
		    until, why);
}

/* A temporary failure: when to try again, and what else must wait. */
static void
defer(struct worker_pool *p, struct qent *qe, struct job *j)
{
	struct mbox	*mb = qe->mb;
	unsigned	 flags = j->err.flags;
	uint64_t	 delay, now = wall_us() / 1000;
	int		 hold = (flags & (GRAPH_F_MAILBOX | GRAPH_F_QUOTA)) != 0;
	char		 last[sizeof(j->err.code) + sizeof(j->err.message) + 1];

	if (j->retry_ms >= 0)
		delay = (uint64_t)j->retry_ms;	/* Retry-After, exactly */
	else {
		delay = backoff_ms(p, qe->attempts);
		if ((flags & GRAPH_F_QUOTA) && delay < QUOTA_HOLD_MS)
			delay = QUOTA_HOLD_MS;
	}
	if (now - qe->arrival_ms >= p->cfg->lifetime_ms) {
		log_warnx("%s graph expired mailbox=%s attempts=%u age=%" PRIu64
		    "s code=%s message=\"%s\"", qe->qid,
		    j->mailbox ? j->mailbox : "-", qe->attempts,
		    (now - qe->arrival_ms) / 1000, j->err.code, j->err.message);
		dead_letter(p, qe, j, "expired");
		return;
	}
	snprintf(last, sizeof(last), "%s %s", j->err.code, j->err.message);
	spool_set_state(p->spool, qe->qid, SPOOL_QUEUED, qe->attempts,
	    now + delay, last);
	log_warnx("%s graph deferred mailbox=%s graph_status=%ld "
	    "code=%s message=\"%s\" attempts=%u retry_in=%.3fs%s%s",
	    qe->qid, j->mailbox ? j->mailbox : "-", j->status,
	    j->err.code, j->err.message, qe->attempts,
	    (double)delay / 1000.0, hold ? " mailbox_held=yes" : "",
	    qe->maybe_dup ? " possible_duplicate=yes" : "");
	/*
	 * Clocks here count whole milliseconds: one more keeps the retry
	 * from starting a fraction of a millisecond before Retry-After ends.
	 */
	delay++;
	if (hold) {
		/* The mailbox waits as a whole; this message goes first. */
		if (mb->hold_until < now_ms() + delay) {
			mb->hold_until = now_ms() + delay;
			mb->hold_kind = HOLD_THROTTLED;
		}
		TAILQ_INSERT_HEAD(&mb->ready, qe, link);
		hold_on_disk(p, mb, now + delay, last);
		return;
	}
	retry_at(p, qe, delay);
}

/* The status socket's recent errors, and the message's last one. */
static void
note_error(struct worker_pool *p, struct qent *qe, const struct job *j)
{
	struct worker_error	*we = &p->errors[p->nerrors++ % WORKER_ERRORS];

	memset(we, 0, sizeof(*we));
	we->time_ms = wall_us() / 1000;
	strlcpy_r(we->qid, qe->qid, sizeof(we->qid));
	strlcpy_r(we->mailbox, j->mailbox ? j->mailbox : "",
	    sizeof(we->mailbox));
	we->status = j->status;
	we->permanent = j->result == GRAPH_PERMFAIL;
	strlcpy_r(we->code, j->err.code, sizeof(we->code));
	strlcpy_r(we->message, j->err.message, sizeof(we->message));
	{
		char last[sizeof(j->err.code) + sizeof(j->err.message) + 1];

		snprintf(last, sizeof(last), "%s %s", j->err.code,
		    j->err.message);
		strlcpy_r(qe->error, last, sizeof(qe->error));
	}
}

/*
 * relayctl hold: out of every list until released (state H on disk).
 * back: it comes back from a worker, so it is in no list.
 */
static void
hold_now(struct worker_pool *p, struct qent *qe, int back)
{
	watch_fire(qe, WORKER_QUEUED, NULL);
	if (qe->timer != NULL) {
		event_free(qe->timer);
		qe->timer = NULL;
	} else if (!qe->held && !back) {
		TAILQ_REMOVE(&qe->mb->ready, qe, link);
		mbox_update(p, qe->mb);
	}
	qe->held = 1;
	qe->hold_asked = 0;
	qe->next_wall = 0;
	spool_set_state(p->spool, qe->qid, SPOOL_HELD, qe->attempts, 0,
	    qe->error);
	log_info("%s held by relayctl", qe->qid);
}

/*
 * A session waits for this message's first attempt: tell it, once. j is
 * NULL when no attempt was made (relayctl hold or delete).
 */
static void
watch_fire(struct qent *qe, enum worker_outcome outcome, const struct job *j)
{
	worker_watch_cb		*cb = qe->watch_cb;
	struct worker_answer	 a;

	if (cb == NULL)
		return;
	qe->watch_cb = NULL;
	memset(&a, 0, sizeof(a));
	a.outcome = outcome;
	a.status = j != NULL ? j->status : 0;
	a.code = j != NULL ? j->err.code : "";
	a.message = j != NULL ? j->err.message : "";
	cb(qe->watch_arg, &a);
}

/*
 * A refusal told to the waiting client as 5xx: the client owns the
 * message again, so relayd keeps no copy (no dead letter, no bounce).
 * Only what the message itself makes impossible counts (Graph's answer,
 * or a message relayd cannot map); a damaged spool record is relayd's own
 * fault and goes to dead/ as usual.
 */
static int
refuse_sync(struct worker_pool *p, struct qent *qe, struct job *j)
{
	if (qe->watch_cb == NULL || strcmp(j->err.code, "spool") == 0)
		return 0;
	log_warnx("%s graph refused mailbox=%s rcpts=%zu size=%" PRIu64
	    " message_id=%s graph_status=%ld code=%s message=\"%s\" "
	    "request_id=%s reply=5xx kept=no", qe->qid,
	    j->mailbox ? j->mailbox : "-", j->nrcpts, qe->size,
	    j->message_id ? j->message_id : "-", j->status, j->err.code,
	    j->err.message, j->request_id[0] ? j->request_id : "-");
	record(p, qe, j, "refused");
	p->nfailed++;
	spool_remove(p->spool, qe->qid);
	watch_fire(qe, WORKER_REFUSED, j);
	qent_free(p, qe);
	return 1;
}

/* Loop thread: what became of one attempt. */
static void
finish(struct worker_pool *p, struct job *j)
{
	struct qent	*qe = j->qe;

	qe->mb->inflight--;
	p->busy--;
	qe->inflight = 0;
	qe->job = NULL;
	qe->stray = j->stray;
	j->stray = NULL;
	if (j->cancel) {
		/* relayctl hold came before the request went: not an attempt. */
		if (qe->hold_asked)
			hold_now(p, qe, 1);
		else
			TAILQ_INSERT_HEAD(&qe->mb->ready, qe, link);
		return;
	}
	qe->attempts++;
	if (j->err.flags & GRAPH_F_DUPLICATE)
		qe->maybe_dup = 1;
	/* Only what Graph said (or did not) counts; a probe that never got
	 * there (mapping, spool, token) leaves the next message to probe. */
	if (j->reached)
		service_result(p, qe->mb, j->result == GRAPH_TEMPFAIL &&
		    (j->err.flags & GRAPH_F_SERVICE));
	if (j->result != GRAPH_SENT)
		note_error(p, qe, j);
	switch (j->result) {
	case GRAPH_SENT:
		p->nsent++;
		log_info("%s graph sent mailbox=%s rcpts=%zu size=%" PRIu64
		    " message_id=%s attachments=%zu graph_status=%ld "
		    "request_id=%s ms=%" PRIu64 "%s%s", qe->qid,
		    j->mailbox ? j->mailbox : "-", j->nrcpts, qe->size,
		    j->message_id ? j->message_id : "-", j->nattach, j->status,
		    j->request_id[0] ? j->request_id : "-", j->ms,
		    j->draft ? " path=draft" : "",
		    qe->maybe_dup ? " possible_duplicate=yes" : "");
		record(p, qe, j, "sent");
		spool_remove(p->spool, qe->qid);
		watch_fire(qe, WORKER_SENT, j);
		qent_free(p, qe);
		break;
	case GRAPH_PERMFAIL:
		if (refuse_sync(p, qe, j))
			break;
		log_warnx("%s graph failed mailbox=%s rcpts=%zu size=%" PRIu64
		    " message_id=%s graph_status=%ld code=%s message=\"%s\" "
		    "request_id=%s", qe->qid, j->mailbox ? j->mailbox : "-",
		    j->nrcpts, qe->size, j->message_id ? j->message_id : "-",
		    j->status, j->err.code, j->err.message,
		    j->request_id[0] ? j->request_id : "-");
		p->nfailed++;
		dead_letter(p, qe, j, "refused");
		break;
	case GRAPH_TEMPFAIL:
	case GRAPH_REAUTH:
		p->ndeferred++;
		watch_fire(qe, WORKER_QUEUED, j);
		if (qe->hold_asked) {
			/* relayctl hold came while a worker had it. */
			log_info("%s graph deferred code=%s message=\"%s\" "
			    "attempts=%u held=yes", qe->qid, j->err.code,
			    j->err.message, qe->attempts);
			hold_now(p, qe, 1);
			break;
		}
		defer(p, qe, j);
		break;
	}
}

static void
notify_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct worker_pool	*p = arg;
	struct job		*done, *j, *rev = NULL;
	struct mbox		*mb;
	char			 buf[256];

	while (read(fd, buf, sizeof(buf)) > 0)
		;
	pthread_mutex_lock(&p->lock);
	done = p->done;
	p->done = NULL;
	pthread_mutex_unlock(&p->lock);
	while (done != NULL) {		/* oldest first */
		j = done;
		done = j->next;
		j->next = rev;
		rev = j;
	}
	while ((j = rev) != NULL) {
		rev = j->next;
		mb = j->qe->mb;
		mb->refs++;		/* finish() may free the entry */
		finish(p, j);
		mbox_update(p, mb);
		mbox_put(p, mb);
		free(j->body);
		free(j->mailbox);
		free(j->message_id);
		free(j->stray);
		free(j);
	}
	dispatch(p);
}

/* ---- worker threads ---- */

static struct slot *
slot_take(struct worker_pool *p, const char *mailbox)
{
	struct slot	*s;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		for (s = p->slots; s != NULL; s = s->next)
			if (strcasecmp(s->mailbox, mailbox) == 0)
				break;
		if (s == NULL) {
			s = xcalloc(1, sizeof(*s));
			s->mailbox = xstrdup(mailbox);
			s->next = p->slots;
			p->slots = s;
		}
		if (s->n < MAILBOX_CONCURRENCY || p->quit)
			break;
		pthread_cond_wait(&p->slot_cond, &p->lock);
	}
	s->n++;
	pthread_mutex_unlock(&p->lock);
	return s;
}

static void
slot_give(struct worker_pool *p, struct slot *s)
{
	struct slot	**pp;

	pthread_mutex_lock(&p->lock);
	if (--s->n == 0) {
		for (pp = &p->slots; *pp != s; pp = &(*pp)->next)
			;
		*pp = s->next;
		free(s->mailbox);
		free(s);
	}
	pthread_cond_broadcast(&p->slot_cond);
	pthread_mutex_unlock(&p->lock);
}

static void
job_fail(struct job *j, enum graph_result r, const char *code,
    const char *fmt, ...) PRINTFLIKE(4, 5);

static void
job_fail(struct job *j, enum graph_result r, const char *code,
    const char *fmt, ...)
{
	va_list	 ap;

	j->result = r;
	strlcpy_r(j->err.code, code, sizeof(j->err.code));
	va_start(ap, fmt);
	vsnprintf(j->err.message, sizeof(j->err.message), fmt, ap);
	va_end(ap);
}

/*
 * The request is about to go: from now on a relayctl hold cannot stop it.
 * 0 if a hold came first.
 */
static int
job_go(struct worker_pool *p, struct job *j)
{
	int	 go;

	pthread_mutex_lock(&p->lock);
	if (!j->cancel)
		j->started = 1;
	go = j->started;
	pthread_mutex_unlock(&p->lock);
	return go;
}

/*
 * One request to Graph with the bearer token, and one fresh token after a
 * 401. Returns 0 with an answer, -1 without (r->error says why), -2 when
 * no token could be had (the job says why).
 */
static int
authed(struct worker_pool *p, CURL *c, struct job *j, const char *method,
    const char *url, const char *ctype, const char *body, size_t len,
    size_t keep, struct http_resp *r)
{
	char		*tok, *auth, ctbuf[96], err[512];
	const char	*headers[4];
	int		 attempt, rc = -1;

	memset(r, 0, sizeof(*r));
	snprintf(ctbuf, sizeof(ctbuf), "Content-Type: %s", ctype);
	for (attempt = 0; attempt < 2; attempt++) {
		if ((tok = token_get(p->token, c, err, sizeof(err))) == NULL) {
			/* Try again when the token service may be asked. */
			job_fail(j, GRAPH_TEMPFAIL, "token", "%s", err);
			j->retry_ms = token_retry_in(p->token);
			j->err.flags = 0;
			strlcpy_r(r->error, err, sizeof(r->error));
			return -2;
		}
		if (!job_go(p, j)) {
			explicit_bzero(tok, strlen(tok));
			free(tok);
			job_fail(j, GRAPH_TEMPFAIL, "held", "held by relayctl "
			    "before it was sent");
			strlcpy_r(r->error, "held", sizeof(r->error));
			return -2;
		}
		xasprintf(&auth, "Authorization: Bearer %s", tok);
		headers[0] = auth;
		headers[1] = ctbuf;
		headers[2] = "Accept: application/json";
		headers[3] = NULL;
		rc = http_request(c, method, url, headers, body, len, keep, r);
		explicit_bzero(auth, strlen(auth));
		free(auth);
		j->reached = 1;
		if (r->status == 401 && graph_classify(r->status, r->body,
		    r->len, &j->err) == GRAPH_REAUTH) {
			/* The next request (this one again, once) gets a
			 * fresh token. */
			token_invalidate(p->token, tok);
			if (attempt == 0)
				http_resp_clear(r);
		} else
			attempt = 2;
		explicit_bzero(tok, strlen(tok));
		free(tok);
	}
	return rc;
}

/* What an answer (or its absence) means for the job. */
static void
take_answer(struct job *j, struct http_resp *r)
{
	j->status = r->status;
	j->ms += r->ms;
	strlcpy_r(j->request_id, r->request_id, sizeof(j->request_id));
	j->result = graph_classify(r->status, r->body, r->len, &j->err);
	/* All of it went out and no answer came, or libcurl sent it again
	 * by itself on a new connection: Graph may have it. */
	if ((r->status == 0 && r->sent) || r->resent)
		j->err.flags |= GRAPH_F_DUPLICATE;
	if (r->status == 0)
		log_escape(j->err.message, sizeof(j->err.message), r->error,
		    strlen(r->error));
	j->retry_ms = graph_retry_after_ms(r->retry_after[0] ?
	    r->retry_after : NULL, (long long)(wall_us() / 1000));
	free(j->body);
	j->body = NULL;
	if (j->result == GRAPH_PERMFAIL && r->body != NULL)
		j->body = xstrndup(r->body, r->len < REASON_BODY_MAX ?
		    r->len : REASON_BODY_MAX);
}

static char *
user_url(struct worker_pool *p, const char *mailbox)
{
	char	*mb, *url;

	mb = http_escape(mailbox);
	xasprintf(&url, "%s/v1.0/users/%s", p->cfg->graph_url, mb);
	free(mb);
	return url;
}

/* POSTs the body to sendMail. */
static void
send_request(struct worker_pool *p, CURL *c, struct job *j,
    const struct graph_req *req)
{
	struct http_resp	 r;
	char			*url, *base;

	base = user_url(p, j->mailbox);
	xasprintf(&url, "%s/sendMail", base);
	free(base);
	if (authed(p, c, j, "POST", url, req->mime ? "text/plain" :
	    "application/json", req->body, req->len, HTTP_BODY_MAX, &r) != -2)
		take_answer(j, &r);
	http_resp_clear(&r);
	free(url);
}

struct draft_arg {
	struct worker_pool	*p;
	CURL			*c;
	struct job		*j;
	int			 no_token;
};

static int
draft_authed(void *arg, const char *method, const char *url,
    const char *ctype, const char *body, size_t len, size_t keep,
    struct http_resp *r)
{
	struct draft_arg	*a = arg;
	int			 rc;

	rc = authed(a->p, a->c, a->j, method, url, ctype, body, len, keep, r);
	if (rc == -2)
		a->no_token = 1;
	return rc == 0 ? 0 : -1;
}

/* A draft left by an earlier attempt goes first ("mailbox id"). */
static void
delete_stray(struct worker_pool *p, CURL *c, struct job *j)
{
	struct draft_arg	 a = { p, c, j, 0 };
	struct draft_io		 io;
	char			*sp;

	if (j->stray == NULL || (sp = strchr(j->stray, ' ')) == NULL)
		return;
	*sp = '\0';
	io.c = c;
	io.user_url = user_url(p, j->stray);
	io.call = draft_authed;
	io.arg = &a;
	if (draft_delete(&io, sp + 1) == 0) {
		log_info("%s draft deleted mailbox=%s (left by an earlier "
		    "attempt)", j->qid, j->stray);
		free(j->stray);
		j->stray = NULL;
	} else
		*sp = ' ';
	free((char *)io.user_url);
	j->reached = 0;
}

/* The draft path: the message is too large for one sendMail request. */
static void
send_draft(struct worker_pool *p, CURL *c, struct job *j,
    struct graph_draft *d)
{
	struct draft_arg	 a = { p, c, j, 0 };
	struct draft_io		 io;
	struct draft_out	 out;
	uint64_t		 t0 = now_ms();

	j->draft = 1;
	io.c = c;
	io.user_url = user_url(p, j->mailbox);
	io.call = draft_authed;
	io.arg = &a;
	if (draft_send(&io, d, &out) == 0 || out.maybe_sent) {
		j->result = GRAPH_SENT;
		j->status = 202;
	} else if (!a.no_token) {
		take_answer(j, &out.resp);
		/* Say which step, and what a 403 on the draft means. */
		if (out.no_permission)
			snprintf(j->err.message, sizeof(j->err.message),
			    "creating a draft needs the Mail.ReadWrite "
			    "application permission: messages over 4 MB take "
			    "the draft path (see README)");
		else {
			char msg[sizeof(out.step) + sizeof(j->err.message) +
			    4];

			snprintf(msg, sizeof(msg), "%s: %s", out.step,
			    j->err.message);
			strlcpy_r(j->err.message, msg, sizeof(j->err.message));
		}
	}
	if (out.stray != NULL) {
		free(j->stray);
		xasprintf(&j->stray, "%s %s", j->mailbox, out.stray);
		log_warnx("%s draft left mailbox=%s: it could not be deleted "
		    "now, the next attempt deletes it", j->qid, j->mailbox);
	}
	draft_out_clear(&out);
	free((char *)io.user_url);
	j->ms = now_ms() - t0;
}

/* The sending mailbox, by [graph] mailbox; NULL if there is none. */
static const char *
sending_mailbox(const struct worker_pool *p, const struct spool_entry *e,
    const char *from)
{
	const char	*mode = p->cfg->mailbox;

	if (strcmp(mode, "envelope") == 0)
		return *e->mail_from != '\0' ? e->mail_from : from;
	if (strcmp(mode, "from") == 0)
		return from != NULL ? from : (*e->mail_from != '\0' ?
		    e->mail_from : NULL);
	return mode;
}

/* One delivery attempt, start to end, on a worker thread. */
static void
deliver(struct worker_pool *p, CURL *c, struct job *j)
{
	struct spool_view	 v;
	struct spool_entry	*e = &v.e;
	struct graph_env	 env;
	struct graph_req	 req;
	struct graph_draft	 d;
	struct slot		*slot = NULL;
	const char		*why, *sender;
	char			**rcpts = NULL, err[256];
	size_t			 i;
	int			 large;

	memset(&req, 0, sizeof(req));
	memset(&d, 0, sizeof(d));
	j->retry_ms = -1;
	if (spool_map_msg(p->spool, j->qid, &v, &why) == -1) {
		if (errno == EBADMSG)
			job_fail(j, GRAPH_PERMFAIL, "spool", "damaged: %s",
			    why);
		else
			job_fail(j, GRAPH_TEMPFAIL, "spool", "cannot read: %s",
			    why);
		return;
	}
	/* For the log until the mapping names the real one. */
	j->mailbox = xstrdup(*e->mail_from != '\0' ? e->mail_from : "<>");
	j->nrcpts = e->nrcpts;
	rcpts = xcalloc(e->nrcpts, sizeof(*rcpts));
	for (i = 0; i < e->nrcpts; i++)
		rcpts[i] = xstrndup(e->rcpts[i], strcspn(e->rcpts[i], " "));
	env.mail_from = e->mail_from;
	env.rcpts = (const char *const *)rcpts;
	env.nrcpts = e->nrcpts;
	/*
	 * Over 4 MB as received, its JSON would be too: never build that in
	 * memory. Under it, map, and take the draft path if the JSON grew
	 * past the limit (base64 adds a third).
	 */
	large = e->size > GRAPH_REQ_MAX || v.msg_len < e->size;
	if (!large) {
		if (graph_map(v.msg, e->size, &env, &p->opts, &req, err,
		    sizeof(err)) == -1) {
			job_fail(j, GRAPH_PERMFAIL, "mapping", "%s", err);
			goto out;
		}
		if (req.len > GRAPH_REQ_MAX) {
			graph_req_free(&req);
			large = 1;
		}
	}
	if (large && graph_map_draft(v.fd, v.msg_off, e->size, &env,
	    &p->opts, &d, err, sizeof(err)) == -1) {
		job_fail(j, GRAPH_PERMFAIL, "mapping", "%s", err);
		goto out;
	}
	if (large && d.req.len > GRAPH_REQ_MAX) {
		job_fail(j, GRAPH_PERMFAIL, "mapping", "the message without "
		    "its attachments is %zu bytes, over Graph's 4 MB request "
		    "limit", d.req.len);
		goto out;
	}
	j->nrcpts = large ? d.req.nrcpts : req.nrcpts;
	j->nattach = large ? d.req.nattach : req.nattach;
	free(j->message_id);
	j->message_id = (large ? d.req.message_id : req.message_id) != NULL ?
	    xstrdup(large ? d.req.message_id : req.message_id) : NULL;
	if ((sender = sending_mailbox(p, e, large ? d.req.from : req.from)) ==
	    NULL) {
		job_fail(j, GRAPH_PERMFAIL, "mailbox", "no sending mailbox: "
		    "null sender and no From: address");
		goto out;
	}
	free(j->mailbox);
	j->mailbox = xstrdup(sender);
	slot = slot_take(p, sender);
	delete_stray(p, c, j);
	if (large)
		send_draft(p, c, j, &d);
	else
		send_request(p, c, j, &req);
	if (slot != NULL)
		slot_give(p, slot);
out:
	graph_req_free(&req);
	graph_draft_free(&d);
	if (rcpts != NULL)
		for (i = 0; i < e->nrcpts; i++)
			free(rcpts[i]);
	free(rcpts);
	spool_unmap_msg(&v);
}

static void *
worker_main(void *arg)
{
	struct worker_pool	*p = arg;
	struct job		*j;
	CURL			*c;

	c = http_handle_new(p->cfg);
	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (!p->quit && p->jobs == NULL)
			pthread_cond_wait(&p->cond, &p->lock);
		if ((j = p->jobs) == NULL)
			break;
		p->jobs = j->next;
		pthread_mutex_unlock(&p->lock);
		if (c == NULL)
			job_fail(j, GRAPH_TEMPFAIL, "curl", "no curl handle");
		else
			deliver(p, c, j);
		pthread_mutex_lock(&p->lock);
		j->next = p->done;
		p->done = j;
		if (write(p->notify[1], "", 1) == -1 && errno != EAGAIN)
			log_warn("worker: notify");
	}
	pthread_mutex_unlock(&p->lock);
	if (c != NULL)
		curl_easy_cleanup(c);
	return NULL;
}

/* ---- pool ---- */

struct worker_pool *
worker_new(struct event_base *base, const struct config *cfg,
    struct spool *spool, struct token *token, char *err, size_t errlen)
{
	struct worker_pool		*p;
	const struct spool_entry	*e;
	size_t				 i;

	p = xcalloc(1, sizeof(*p));
	p->cfg = cfg;
	p->spool = spool;
	p->token = token;
	p->base = base;
	p->opts.save_to_sent = cfg->save_to_sent_items;
	p->opts.max_depth = (unsigned)cfg->max_mime_depth;
	p->opts.mode = cfg->graph_mode;
	TAILQ_INIT(&p->runnable);
	TAILQ_INIT(&p->all);
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	pthread_cond_init(&p->slot_cond, NULL);
	if (pipe2(p->notify, O_NONBLOCK | O_CLOEXEC) == -1) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		free(p);
		return NULL;
	}
	p->notify_ev = event_new(base, p->notify[0], EV_READ | EV_PERSIST,
	    notify_cb, p);
	event_add(p->notify_ev, NULL);
	p->threads = xcalloc(cfg->workers, sizeof(*p->threads));
	for (i = 0; i < cfg->workers; i++) {
		if ((errno = pthread_create(&p->threads[i], NULL, worker_main,
		    p)) != 0) {
			snprintf(err, errlen, "worker thread: %s",
			    strerror(errno));
			worker_free(p);
			return NULL;
		}
		p->nthreads++;
	}
	p->rng = wall_us() | 1;
	pause_load(p);
	for (i = 0; (e = spool_entry_at(spool, i)) != NULL; i++)
		if (e->state == SPOOL_QUEUED || e->state == SPOOL_HELD)
			enqueue(p, e->qid, e->mail_from,
			    (const char *const *)e->rcpts, e->nrcpts, e->size,
			    e->attempts, e->arrival_us / 1000, e->next_ms,
			    e->error, e->state == SPOOL_HELD);
	spool_set_queued_cb(spool, on_queued, p);
	p->digest = digest_new(base, cfg, spool);
	dispatch(p);
	return p;
}

void
worker_free(struct worker_pool *p)
{
	struct qent	*qe;
	struct mbox	*mb;
	struct job	*j;
	size_t		 i;

	if (p == NULL)
		return;
	spool_set_queued_cb(p->spool, NULL, NULL);
	p->stopping = 1;
	/* The loop has ended: nobody is left to hear an answer. */
	TAILQ_FOREACH(qe, &p->all, all)
		qe->watch_cb = NULL;
	/* Let requests in flight finish for a while, then cut them. */
	http_abort_after(now_ms() + STOP_GRACE_MS);
	pthread_mutex_lock(&p->lock);
	p->quit = 1;
	/* Jobs not started go back unstarted: their messages stay queued. */
	while ((j = p->jobs) != NULL) {
		p->jobs = j->next;
		j->next = p->done;
		p->done = j;
		job_fail(j, GRAPH_TEMPFAIL, "stopping", "relayd is stopping");
	}
	pthread_cond_broadcast(&p->cond);
	pthread_cond_broadcast(&p->slot_cond);
	pthread_mutex_unlock(&p->lock);
	for (i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	/* Results that came in: a sent message must leave the queue. */
	while ((j = p->done) != NULL) {
		p->done = j->next;
		if (j->result == GRAPH_SENT)
			finish(p, j);
		free(j->body);
		free(j->mailbox);
		free(j->message_id);
		free(j->stray);
		free(j);
	}
	/* The rest stays on disk for the next start. */
	while ((qe = TAILQ_FIRST(&p->all)) != NULL) {
		TAILQ_REMOVE(&p->all, qe, all);
		if (qe->timer != NULL)
			event_free(qe->timer);
		free(qe->sender);
		free(qe->stray);
		qent_forget_rcpts(qe);
		free(qe);
	}
	for (i = 0; i < MBOX_HASH_SIZE; i++)
		while ((mb = p->hash[i]) != NULL) {
			p->hash[i] = mb->hnext;
			if (mb->timer != NULL)
				event_free(mb->timer);
			free(mb->key);
			free(mb);
		}
	if (p->svc_timer != NULL)
		event_free(p->svc_timer);
	digest_free(p->digest);
	free(p->svc_first);
	free(p->paused_by);
	if (p->notify_ev != NULL)
		event_free(p->notify_ev);
	close(p->notify[0]);
	close(p->notify[1]);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
	pthread_cond_destroy(&p->slot_cond);
	free(p->threads);
	free(p);
}

size_t
worker_queued(const struct worker_pool *p)
{
	return p->queued;
}

/* ---- the status socket's view and relayctl's actions (loop thread) ---- */

static const char *
qent_state(const struct worker_pool *p, const struct qent *qe)
{
	if (qe->inflight)
		return "in flight";
	if (qe->held)
		return "held";
	if (qe->timer != NULL)
		return "deferred";
	if (p->svc_until > now_ms())
		return "graph held";
	if (qe->mb->hold_until > now_ms())
		return "throttled";
	return "queued";
}

/*
 * The hold a waiting message waits on, with its end (wall ms, 0: until
 * relayctl resume); NULL if none, or if its own retry comes later.
 */
static const char *
qent_hold(const struct worker_pool *p, const struct qent *qe,
    uint64_t *until)
{
	uint64_t	 now = now_ms(), end;
	const char	*kind;

	*until = 0;
	if (qe->inflight || qe->held)
		return NULL;
	if (p->paused)
		return WORKER_HOLD_PAUSED;
	if (p->svc_until > now) {
		end = p->svc_until;
		kind = WORKER_HOLD_GRAPH;
	} else if (qe->mb->hold_until > now) {
		end = qe->mb->hold_until;
		kind = qe->mb->hold_kind == HOLD_THROTTLED ?
		    WORKER_HOLD_THROTTLED : WORKER_HOLD_UNAVAILABLE;
	} else
		return NULL;
	if (qe->timer != NULL && qe->next_ms >= end)
		return NULL;
	*until = wall_us() / 1000 + (end - now);
	return kind;
}

static void
qent_info(const struct worker_pool *p, const struct qent *qe,
    struct worker_msg *m)
{
	uint64_t	 now = now_ms();

	memset(m, 0, sizeof(*m));
	m->qid = qe->qid;
	m->size = qe->size;
	m->arrival_ms = qe->arrival_ms;
	m->sender = qe->sender;
	m->mailbox = qe->mb->key;
	m->nrcpts = qe->nrcpts;
	memcpy(m->rcpts, qe->rcpts, sizeof(m->rcpts));
	m->attempts = qe->attempts;
	m->state = qent_state(p, qe);
	m->error = qe->error;
	m->hold = qent_hold(p, qe, &m->hold_until);
	if (qe->timer != NULL)
		m->next_ms = qe->next_wall;
	else if (!qe->held && !qe->inflight && p->svc_until > now)
		m->next_ms = wall_us() / 1000 + (p->svc_until - now);
	else if (!qe->held && !qe->inflight && qe->mb->hold_until > now)
		m->next_ms = wall_us() / 1000 + (qe->mb->hold_until - now);
}

void
worker_counts(const struct worker_pool *p, struct worker_counts *c)
{
	const struct qent	*qe;
	const char		*st;

	memset(c, 0, sizeof(*c));
	TAILQ_FOREACH(qe, &p->all, all) {
		st = qent_state(p, qe);
		if (strcmp(st, "in flight") == 0)
			c->inflight++;
		else if (strcmp(st, "held") == 0)
			c->held++;
		else if (strcmp(st, "deferred") == 0)
			c->deferred++;
		else if (strcmp(st, "throttled") == 0)
			c->throttled++;
		else if (strcmp(st, "graph held") == 0)
			c->graph_held++;
		else
			c->queued++;
	}
	c->sent = p->nsent;
	c->deferred_total = p->ndeferred;
	c->failed = p->nfailed;
	c->graph_held_ms = p->svc_until > now_ms() ? p->svc_until -
	    now_ms() : 0;
	c->graph_fails = p->svc_fails;
}

uint64_t
worker_oldest(const struct worker_pool *p)
{
	const struct qent	*qe;
	uint64_t		 oldest = 0;

	TAILQ_FOREACH(qe, &p->all, all)
		if (oldest == 0 || qe->arrival_ms < oldest)
			oldest = qe->arrival_ms;
	return oldest;
}

void
worker_foreach(const struct worker_pool *p, worker_msg_cb *cb, void *arg)
{
	const struct qent	*qe;
	struct worker_msg	 m;

	TAILQ_FOREACH(qe, &p->all, all) {
		qent_info(p, qe, &m);
		cb(arg, &m);
	}
}

static struct qent *
qent_find(const struct worker_pool *p, const char *qid)
{
	struct qent	*qe;

	TAILQ_FOREACH(qe, &p->all, all)
		if (strcasecmp(qe->qid, qid) == 0)
			return qe;
	return NULL;
}

int
worker_filter_match(const struct worker_filter *f, const struct worker_msg *m)
{
	const char	*sender = f->sender;

	if (f->qid != NULL && strcmp(f->qid, "all") != 0)
		return strcasecmp(f->qid, m->qid) == 0;
	if (f->mailbox != NULL && strcasecmp(f->mailbox, m->mailbox) != 0)
		return 0;
	if (sender != NULL && strcmp(sender, "<>") == 0)
		sender = "";
	return sender == NULL || strcasecmp(sender, m->sender) == 0;
}

int
worker_find(const struct worker_pool *p, const char *qid,
    struct worker_msg *m)
{
	const struct qent	*qe = qent_find(p, qid);

	if (qe == NULL)
		return -1;
	qent_info(p, qe, m);
	return 0;
}

void
worker_throttled(const struct worker_pool *p, worker_throttle_cb *cb,
    void *arg)
{
	const struct mbox	*mb;
	uint64_t		 now = now_ms(), wall = wall_us() / 1000;
	size_t			 i;

	for (i = 0; i < MBOX_HASH_SIZE; i++)
		for (mb = p->hash[i]; mb != NULL; mb = mb->hnext)
			if (mb->hold_until > now &&
			    mb->hold_kind == HOLD_THROTTLED)
				cb(arg, mb->key, wall + (mb->hold_until - now));
}

size_t
worker_errors(const struct worker_pool *p, const struct worker_error **out)
{
	size_t	 n = p->nerrors < WORKER_ERRORS ? p->nerrors : WORKER_ERRORS;
	size_t	 i;

	/* Newest first. */
	for (i = 0; i < n; i++)
		out[i] = &p->errors[(p->nerrors - 1 - i) % WORKER_ERRORS];
	return n;
}

/* Ready now: out of its timer (a hold it waits on stays). */
static void
retry_now(struct worker_pool *p, struct qent *qe)
{
	if (qe->timer != NULL) {
		event_free(qe->timer);
		qe->timer = NULL;
		qe->next_wall = 0;
		TAILQ_INSERT_TAIL(&qe->mb->ready, qe, link);
	}
	spool_set_state(p->spool, qe->qid, SPOOL_QUEUED, qe->attempts, 0,
	    qe->error);
	mbox_update(p, qe->mb);
}

static struct mbox *
mbox_find(const struct worker_pool *p, const char *mailbox)
{
	struct mbox	*mb;

	for (mb = p->hash[hash_key(mailbox)]; mb != NULL; mb = mb->hnext)
		if (strcasecmp(mb->key, mailbox) == 0)
			return mb;
	return NULL;
}

static void
mbox_lift(struct worker_pool *p, struct mbox *mb, struct worker_tally *t)
{
	if (mb->hold_until <= now_ms())
		return;
	log_info("relayctl: retry lifts the hold of mailbox %s (%s)", mb->key,
	    mb->hold_kind == HOLD_THROTTLED ? "throttled by Graph" :
	    "unavailable at Graph");
	mb->hold_until = 0;
	mb->svc_probing = 0;
	mbox_update(p, mb);
	t->lifted++;
}

/* retry all lifts every hold but a pause; retry --mailbox, its mailbox's. */
static void
lift_holds(struct worker_pool *p, const struct worker_filter *f,
    struct worker_tally *t)
{
	struct mbox	*mb;
	size_t		 i;

	if (f->mailbox != NULL && (mb = mbox_find(p, f->mailbox)) != NULL)
		mbox_lift(p, mb, t);
	if (f->qid == NULL || strcmp(f->qid, "all") != 0)
		return;
	if (p->svc_until > now_ms())
		log_info("relayctl: retry lifts the Graph-wide hold");
	p->svc_until = 0;
	p->svc_probing = 0;
	for (i = 0; i < MBOX_HASH_SIZE; i++)
		for (mb = p->hash[i]; mb != NULL; mb = mb->hnext)
			mbox_lift(p, mb, t);
}

/* Why a message still waits after retry, and what lifts the hold. */
static void
hold_words(const struct qent *qe, const char *kind, uint64_t until,
    char *buf, size_t len)
{
	char	 end[TIME_ISO_LEN];

	time_iso(until, end, sizeof(end));
	if (strcmp(kind, WORKER_HOLD_PAUSED) == 0)
		snprintf(buf, len, "delivery is paused (relayctl pause); "
		    "relayctl resume starts it again");
	else if (strcmp(kind, WORKER_HOLD_GRAPH) == 0)
		snprintf(buf, len, "Graph unavailable for several mailboxes: "
		    "every delivery waits until %s; relayctl retry all lifts "
		    "the hold", end);
	else
		snprintf(buf, len, "mailbox %s %s until %s; relayctl retry "
		    "--mailbox %s lifts the hold", qe->mb->key,
		    strcmp(kind, WORKER_HOLD_THROTTLED) == 0 ?
		    "throttled by Graph" : "unavailable at Graph (its own "
		    "service errors)", end, qe->mb->key);
}

/* A hold for a message in flight wins if its request has not gone yet. */
static int
hold_cancels(struct worker_pool *p, struct qent *qe)
{
	int	 won;

	pthread_mutex_lock(&p->lock);
	if (!qe->job->started)
		qe->job->cancel = 1;
	won = qe->job->cancel;
	pthread_mutex_unlock(&p->lock);
	return won;
}

static void
act_hold(struct worker_pool *p, struct qent *qe, struct worker_tally *t)
{
	if (qe->held)
		t->skipped++;	/* as asked: not an error */
	else if (!qe->inflight) {
		hold_now(p, qe, 0);
		t->done++;
	} else if (hold_cancels(p, qe)) {
		qe->hold_asked = 1;
		log_info("%s held by relayctl before its request went", qe->qid);
		t->done++;
	} else {
		qe->hold_asked = 1;
		log_info("%s hold asked by relayctl while it is being sent: "
		    "held only if Graph does not take it", qe->qid);
		t->inflight++;
		snprintf(t->why, sizeof(t->why), "being sent now: it cannot "
		    "be held (if Graph does not take it, it is held then)");
	}
}

static void
act_release(struct worker_pool *p, struct qent *qe, struct worker_tally *t)
{
	if (qe->inflight && qe->hold_asked) {
		qe->hold_asked = 0;	/* the hold it would get on return */
		log_info("%s released by relayctl (it was in flight)", qe->qid);
		t->done++;
		return;
	}
	if (!qe->held) {
		t->skipped++;
		snprintf(t->why, sizeof(t->why), "not held");
		return;
	}
	qe->held = 0;
	spool_set_state(p->spool, qe->qid, SPOOL_QUEUED, qe->attempts, 0,
	    qe->error);
	TAILQ_INSERT_TAIL(&qe->mb->ready, qe, link);
	mbox_update(p, qe->mb);
	log_info("%s released by relayctl", qe->qid);
	t->done++;
}

static void
act_retry(struct worker_pool *p, struct qent *qe, struct worker_tally *t)
{
	const char	*kind;
	uint64_t	 until;

	if (qe->inflight) {
		t->inflight++;
		snprintf(t->why, sizeof(t->why), "being sent now");
	} else if (qe->held) {
		t->skipped++;
		snprintf(t->why, sizeof(t->why), "held: release it");
	} else {
		retry_now(p, qe);
		if ((kind = qent_hold(p, qe, &until)) != NULL) {
			t->waiting++;
			hold_words(qe, kind, until, t->why, sizeof(t->why));
		} else
			t->done++;
	}
}

static void
act_delete(struct worker_pool *p, struct qent *qe, struct worker_tally *t)
{
	int	 ready = !qe->held && qe->timer == NULL;

	if (qe->inflight) {
		t->inflight++;
		snprintf(t->why, sizeof(t->why), "being delivered now: wait "
		    "for its outcome, then delete it");
		return;
	}
	if (ready)
		TAILQ_REMOVE(&qe->mb->ready, qe, link);
	if (spool_remove(p->spool, qe->qid) == -1) {
		snprintf(t->why, sizeof(t->why), "the spool could not mark "
		    "it");
		if (ready)
			TAILQ_INSERT_HEAD(&qe->mb->ready, qe, link);
		t->skipped++;
		return;
	}
	log_info("%s deleted by relayctl size=%" PRIu64 " sender=<%s> "
	    "attempts=%u", qe->qid, qe->size, qe->sender, qe->attempts);
	record(p, qe, NULL, "deleted");
	mbox_update(p, qe->mb);
	qent_free(p, qe);
	t->done++;
}

int
worker_act(struct worker_pool *p, enum worker_verb verb,
    const struct worker_filter *f, struct worker_tally *t)
{
	static const char *const names[] = { "hold", "release", "retry",
	    "delete" };
	struct qent		*qe, *next;
	struct worker_msg	 m;
	int			 one = f->qid != NULL && strcmp(f->qid, "all") != 0;

	memset(t, 0, sizeof(*t));
	if (verb == WORKER_RETRY)
		lift_holds(p, f, t);
	for (qe = TAILQ_FIRST(&p->all); qe != NULL; qe = next) {
		next = TAILQ_NEXT(qe, all);
		qent_info(p, qe, &m);
		if (!worker_filter_match(f, &m))
			continue;
		t->matched++;
		if (verb == WORKER_HOLD)
			act_hold(p, qe, t);
		else if (verb == WORKER_RELEASE)
			act_release(p, qe, t);
		else if (verb == WORKER_RETRY)
			act_retry(p, qe, t);
		else
			act_delete(p, qe, t);
	}
	if (one && t->matched == 0)
		snprintf(t->why, sizeof(t->why), "no such message in the "
		    "queue");
	log_info("relayctl: %s %s%s: matched=%zu done=%zu in_flight=%zu "
	    "skipped=%zu waiting=%zu", names[verb], f->mailbox ? "--mailbox " :
	    f->sender ? "--sender " : "", f->mailbox ? f->mailbox : f->sender ?
	    f->sender : f->qid ? f->qid : "all", t->matched, t->done,
	    t->inflight, t->skipped, t->waiting);
	dispatch(p);
	return one && t->done == 0 && t->why[0] != '\0' ? -1 : 0;
}

size_t
worker_retry_token(struct worker_pool *p)
{
	struct qent	*qe;
	size_t		 n = 0;

	TAILQ_FOREACH(qe, &p->all, all)
		if (!qe->inflight && !qe->held && qe->timer != NULL &&
		    strncmp(qe->error, "token ", 6) == 0) {
			retry_now(p, qe);
			n++;
		}
	if (n > 0)
		dispatch(p);
	return n;
}

/* ---- relayctl pause: a file in the spool directory ---- */

static char *
pause_path(const struct worker_pool *p, const char *name)
{
	char	*path;

	xasprintf(&path, "%s/%s", p->cfg->spool_dir, name);
	return path;
}

static int
dir_sync(const char *dir)
{
	int	 fd, rc;

	if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

/* Written, synced, renamed into place, the directory synced. */
static int
pause_write(const struct worker_pool *p, const char *text)
{
	char	*tmp = pause_path(p, "." PAUSE_FILE ".tmp");
	char	*path = pause_path(p, PAUSE_FILE);
	size_t	 len = strlen(text);
	int	 fd, rc = -1;

	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	    0600)) != -1) {
		if (write(fd, text, len) == (ssize_t)len && fsync(fd) == 0)
			rc = 0;
		if (close(fd) == -1)
			rc = -1;
	}
	if (rc == 0 && (rename(tmp, path) == -1 ||
	    dir_sync(p->cfg->spool_dir) == -1))
		rc = -1;
	if (rc == -1)
		unlink(tmp);
	free(tmp);
	free(path);
	return rc;
}

/* At start: paused before the restart stays paused. */
static void
pause_load(struct worker_pool *p)
{
	char		*path = pause_path(p, PAUSE_FILE), line[256];
	FILE		*fp;
	struct stat	 sb;

	if ((fp = fopen(path, "re")) != NULL) {
		if (fgets(line, sizeof(line), fp) == NULL)
			line[0] = '\0';
		line[strcspn(line, "\n")] = '\0';
		p->paused = 1;
		p->paused_by = xstrdup(*line != '\0' ? line : "?");
		p->paused_at = fstat(fileno(fp), &sb) == 0 ?
		    (uint64_t)sb.st_mtime * 1000 : wall_us() / 1000;
		fclose(fp);
		log_warnx("delivery paused (by %s, before this start; %s): no "
		    "request goes to Graph until relayctl resume", p->paused_by,
		    path);
	}
	free(path);
}

int
worker_pause(struct worker_pool *p, int on, const char *who,
    const char **why)
{
	char	*path, *text;
	int	 rc = 0;

	if (on == p->paused)
		return 1;
	if (on) {
		xasprintf(&text, "%s\n", who);
		if ((rc = pause_write(p, text)) == -1)
			*why = "cannot write the file \"paused\" in the spool "
			    "directory (see relayd's log)";
		free(text);
	} else {
		path = pause_path(p, PAUSE_FILE);
		if ((unlink(path) == -1 && errno != ENOENT) ||
		    dir_sync(p->cfg->spool_dir) == -1) {
			rc = -1;
			*why = "cannot remove the file \"paused\" in the spool "
			    "directory (see relayd's log)";
		}
		free(path);
	}
	if (rc == -1) {
		log_warn("relayctl: %s by %s: %s/%s", on ? "pause" : "resume",
		    who, p->cfg->spool_dir, PAUSE_FILE);
		return -1;
	}
	p->paused = on;
	free(p->paused_by);
	p->paused_by = on ? xstrdup(who) : NULL;
	p->paused_at = on ? wall_us() / 1000 : 0;
	if (on)
		log_warnx("delivery paused by relayctl (%s): no new request "
		    "goes to Graph; requests in flight finish", who);
	else
		log_info("delivery resumed by relayctl (%s)", who);
	dispatch(p);
	return 0;
}

int
worker_paused(const struct worker_pool *p, const char **who, uint64_t *at)
{
	*who = p->paused_by;
	*at = p->paused_at;
	return p->paused;
}

/* ---- synchronous replies (loop thread) ---- */

int
worker_watch(struct worker_pool *p, const char *qid, worker_watch_cb *cb,
    void *arg)
{
	struct qent	*qe;

	/* A message just committed is at the end of the list. */
	TAILQ_FOREACH_REVERSE(qe, &p->all, qent_list, all)
		if (strcmp(qe->qid, qid) == 0)
			break;
	if (qe == NULL || qe->attempts > 0 || qe->held || qe->timer != NULL ||
	    p->stopping || p->paused || (!qe->inflight &&
	    (p->svc_until > now_ms() ||
	    qe->mb->hold_until > now_ms())))
		return -1;	/* it would not go now: no use waiting */
	qe->watch_cb = cb;
	qe->watch_arg = arg;
	/*
	 * Not handed to a worker yet (all busy, or its mailbox at its 4
	 * requests or paced): first of its mailbox's line. Pacing and the
	 * concurrency limits still hold; past reply_timeout the session
	 * answers 250 and the message goes when its turn comes.
	 */
	if (!qe->inflight && TAILQ_FIRST(&qe->mb->ready) != qe) {
		TAILQ_REMOVE(&qe->mb->ready, qe, link);
		TAILQ_INSERT_HEAD(&qe->mb->ready, qe, link);
	}
	return 0;
}

void
worker_unwatch(struct worker_pool *p, const char *qid)
{
	struct qent	*qe;

	TAILQ_FOREACH_REVERSE(qe, &p->all, qent_list, all)
		if (strcmp(qe->qid, qid) == 0) {
			qe->watch_cb = NULL;
			return;
		}
}

void
worker_set_history(struct worker_pool *p, struct history *h)
{
	p->history = h;
}

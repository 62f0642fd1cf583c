/*
 * worker.c - the delivery queue: the loop's side of delivery.
 *
 * Design. The event loop owns the delivery queue: which messages wait,
 * which are in flight, when a deferred one may go again, and how many
 * requests each mailbox has open. dispatch() hands ready messages to the
 * delivery threads (deliver.c) as struct job, and notify_cb() takes the
 * results back and decides what follows (finish()); nothing here runs on
 * a delivery thread, and no thread touches the queue. The arithmetic of
 * those decisions (backoff, pacing, the breaker) is schedule.c's, pure.
 *
 * Per mailbox (the {id} of /users/{id}/sendMail) at most 4 requests are in
 * flight, Graph's MailboxConcurrency limit. Mailboxes take turns, so one
 * busy scanner cannot starve the others. The mailbox was decided when the
 * message was committed and stored with its envelope (records without one,
 * older or generated here, get it decided the same way when they join the
 * queue: sending_mailbox), so the count here is the only one.
 *
 * Results (graph_classify's table): 202 marks the record delivered (log
 * "sent"); a permanent failure copies it to dead/ with Graph's answer (log
 * "failed", and with [queue] bounce = sender a report (report.c) to the
 * sender; [queue] notify gets a digest of them, report.c too). A
 * temporary failure defers the message: Retry-After exactly,
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
 * logged possible_duplicate=yes. So is the next attempt of a message that
 * was in flight when the delivery process ended (killed, or stopped
 * before Graph answered): its state line says so (INFLIGHT_NOTE) from
 * the moment it is handed to a delivery thread until its outcome is
 * written.
 *
 * With [cluster] (cluster.c), these limits are shared with the other
 * nodes through Redis: before a request goes, its message "asks" (it
 * counts as in flight meanwhile) and waits for the answer on the loop;
 * a slot is leased, or the mailbox waits as long as Redis says (full:
 * CLUSTER_RETRY_MS; paced, held: the time given). A 429's hold and the
 * Graph-wide hold are published there, and another node's hold reaches
 * this one at its next ask. Pacing is then Redis's alone. While Redis is
 * away, the local limits above apply with this node's share of each
 * (cluster_share), and every request still takes a lease, written to
 * Redis when it returns.
 *
 * relayctl: hold, release, retry and delete act on an id, all, or a
 * mailbox's or sender's messages. A hold beats a request that has not
 * gone out yet (deliver_cancel); after that it cannot, and relayctl says
 * so. pause stops dispatch() (a file in the spool directory keeps it
 * across restarts).
 */
#include <sys/queue.h>
#include <sys/stat.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "cluster.h"
#include "config.h"
#include "deliver.h"
#include "graph.h"
#include "history.h"
#include "http.h"
#include "log.h"
#include "policy.h"
#include "report.h"
#include "schedule.h"
#include "spool.h"
#include "util.h"
#include "worker.h"

#define MBOX_HASH_SIZE		1024
#define STOP_GRACE_MS		10000	/* requests in flight at stop */
#define HEAD_SCAN_MAX		(64 * 1024)	/* header read for a mailbox */
#define PAUSE_FILE		"paused"	/* in the spool directory */
#define CLUSTER_RETRY_MS	100	/* the nodes hold every slot: ask again */
#define RCPTS_RECHECK_MS	2000	/* budget spent alone: is Redis back? */

/* The state line of a message handed to a delivery thread. */
#define INFLIGHT_NOTE	"in flight when delivery stopped: it may have gone out"

struct mbox;

/* A queued message (loop thread only; a job carries a copy of its qid). */
struct qent {
	char			 qid[SPOOL_QID_LEN + 1];
	uint64_t		 size;
	unsigned		 attempts;
	uint64_t		 arrival_ms;	/* wall clock */
	char			*sender;	/* envelope, "" for null */
	char			*mailbox;	/* sending, "<>": none */
	int			 maybe_dup;	/* an attempt may have gone out */
	char			*stray;		/* a draft to delete: "mailbox id" */
	size_t			 nrcpts;
	char			*rcpts[WORKER_RCPTS_SHOWN];	/* for relayctl */
	int			 inflight;	/* a worker has it */
	int			 asking;	/* the cluster is asked (inflight) */
	uint64_t		 lease;		/* the cluster's, 0: none */
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
	struct breaker_mbox	 br;		/* its holds, by now_ms() */
	struct pace		 pace;		/* messages_per_minute */
	uint64_t		 cl_until;	/* the cluster said: wait (now_ms) */
	uint64_t		 rc_until;	/* Redis: recipients spent till */
	uint64_t		 rc_tat;	/* those spent alone: full then */
	int			 rc_warned;	/* "budget spent" logged */
	struct event		*timer;		/* when it may go again */
	struct worker_pool	*pool;
	TAILQ_ENTRY(mbox)	 rlink;
	struct mbox		*hnext;
};
TAILQ_HEAD(mbox_list, mbox);

struct worker_pool {
	const struct config	*cfg;
	struct spool		*spool;
	struct event_base	*base;
	struct deliverers	*threads;	/* deliver.c */
	size_t			 nthreads;

	/* Loop thread. */
	struct mbox		*hash[MBOX_HASH_SIZE];
	struct mbox_list	 runnable;
	struct qent_list	 all;
	size_t			 busy;
	size_t			 queued;
	uint64_t		 rng;

	struct breaker		 br;		/* Graph-wide, by now_ms() */
	struct event		*svc_timer;
	int			 stopping;
	int			 paused;	/* relayctl pause */
	char			*paused_by;
	uint64_t		 paused_at;	/* wall ms */
	struct event		*notify_ev;
	struct digest		*digest;	/* [queue] notify, or NULL */
	struct cluster		*cluster;	/* [cluster], or NULL: alone */

	/* For the status socket. */
	uint64_t		 nsent, ndeferred, nfailed;
	struct history		*history;	/* NULL: none */
	struct worker_error	 errors[WORKER_ERRORS];
	size_t			 nerrors;	/* ever; the ring holds the last */
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
	pace_init(&mb->pace, p->cfg->messages_per_minute, now_ms());
	TAILQ_INIT(&mb->ready);
	mb->hnext = p->hash[h];
	p->hash[h] = mb;
	return mb;
}

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
	uint64_t	 now = now_ms(), hold = 0, fill;

	if (mb->br.until > now)
		hold = mb->br.until - now;
	fill = pace_full_in(&mb->pace, p->cfg->messages_per_minute, now);
	if (hold < fill)
		hold = fill;
	/* Recipients spent alone: forgotten, its budget would be full. */
	if (mb->rc_tat > now && mb->rc_tat - now > hold)
		hold = mb->rc_tat - now;
	return hold;
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
 * Runnable: messages ready, a free slot (only one while its probe is
 * out), not held, not over its pace.
 */
/*
 * The limits this node applies itself: all of them alone or with Redis
 * up (which shares them), else its share of each.
 */
static unsigned
local_slots(const struct worker_pool *p, const struct mbox *mb,
    uint64_t *recheck)
{
	*recheck = 0;
	if (p->cluster == NULL)
		return MAILBOX_CONCURRENCY;
	return cluster_slots(p->cluster, mb->key, MAILBOX_CONCURRENCY,
	    recheck);
}

/* messages_per_minute paced here; 0 with Redis up (Redis paces). */
static uint64_t
local_mpm(const struct worker_pool *p)
{
	if (p->cluster == NULL)
		return p->cfg->messages_per_minute;
	if (cluster_up(p->cluster))
		return 0;
	return cluster_share(p->cfg->messages_per_minute,
	    cluster_nodes(p->cluster));
}

/*
 * Recipients a day counted here: this node's share while Redis is away;
 * none with Redis up (Redis counts) nor alone (as before [cluster]).
 */
static uint64_t
local_rcpts(const struct worker_pool *p)
{
	if (p->cluster == NULL || cluster_up(p->cluster))
		return 0;
	return cluster_share(CLUSTER_RCPTS_PER_DAY, cluster_nodes(p->cluster));
}

/*
 * How long the mailbox's next message waits for its recipients a day:
 * as Redis last said, or by this node's share while Redis is away. 0: it
 * may go; take: and they are counted.
 */
static uint64_t
rcpts_wait(const struct worker_pool *p, struct mbox *mb, uint64_t now,
    int take)
{
	const struct qent	*qe = TAILQ_FIRST(&mb->ready);
	uint64_t		 tat = mb->rc_tat, wait = 0, alone;

	if (mb->rc_until > now)
		wait = mb->rc_until - now;
	if (qe == NULL)
		return wait;
	alone = cluster_rcpts_wait(&tat, local_rcpts(p), qe->nrcpts, now);
	if (alone > wait)
		wait = alone;
	if (wait == 0 && take)
		mb->rc_tat = tat;
	return wait;
}

/* The mailbox's messages wait ms for recipients: said once a spell. */
static void
rcpts_spent(const struct worker_pool *p, struct mbox *mb, uint64_t ms)
{
	const struct qent	*qe;
	char			 at[TIME_ISO_LEN];
	size_t			 n = 0;
	uint64_t		 share = local_rcpts(p);

	if (mb->rc_warned)
		return;
	mb->rc_warned = 1;
	TAILQ_FOREACH(qe, &mb->ready, link)
		n++;
	time_iso(wall_us() / 1000 + ms, at, sizeof(at));
	if (share > 0 && mb->rc_until <= now_ms())
		log_warnx("mailbox=%s recipient budget spent: Redis is away, "
		    "so this node keeps to its share of Exchange's %d "
		    "recipients a day per mailbox (%" PRIu64 ", 1/%u); %zu "
		    "message(s) deferred, not failed: the next goes at %s",
		    mb->key, CLUSTER_RCPTS_PER_DAY, share,
		    cluster_nodes(p->cluster), n, at);
	else
		log_warnx("mailbox=%s recipient budget spent: Exchange's %d "
		    "recipients a day per mailbox, counted across the nodes "
		    "in Redis; %zu message(s) deferred, not failed: the next "
		    "goes at %s", mb->key, CLUSTER_RCPTS_PER_DAY, n, at);
}

static void
mbox_update(struct worker_pool *p, struct mbox *mb)
{
	uint64_t	 now = now_ms(), wait = 0, recheck;
	unsigned	 slots = local_slots(p, mb, &recheck);
	int		 want = !TAILQ_EMPTY(&mb->ready) &&
	    mb->inflight < breaker_mbox_slots(&mb->br, slots);

	/* Redis away: more of its slots may be this node's in a while. */
	if (!want && !TAILQ_EMPTY(&mb->ready) && recheck > 0)
		mbox_wake_in(p, mb, recheck);
	if (want && mb->br.until > now)
		wait = mb->br.until - now;
	else if (want && mb->cl_until > now)
		wait = mb->cl_until - now;
	else if (want)
		wait = pace_wait(&mb->pace, local_mpm(p), now);
	if (want && wait == 0 && (wait = rcpts_wait(p, mb, now, 0)) > 0) {
		rcpts_spent(p, mb, wait);
		/* Spent alone: Redis, back, may count otherwise. */
		if (mb->rc_until <= now && wait > RCPTS_RECHECK_MS)
			wait = RCPTS_RECHECK_MS;
	}
	if (TAILQ_EMPTY(&mb->ready))
		mb->rc_warned = 0;
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

/*
 * The sending mailbox: as stored with the envelope, or for a record
 * without one (from before it was stored; bounces and reports written
 * here) decided now as intake does, from the record's header block.
 */
static char *
sending_mailbox(const struct worker_pool *p, const char *qid,
    const char *mail_from, const char *stored)
{
	struct spool_view	 v;
	const char		*why;
	char			*mb;

	if (stored != NULL)
		return xstrdup(stored);
	if (!policy_mailbox_needs_from(p->cfg->mailbox, mail_from) ||
	    spool_map_msg(p->spool, qid, &v, &why) == -1)
		return policy_sending_mailbox(p->cfg->mailbox, mail_from,
		    NULL, 0, SPOOL_MAILBOX_MAX);
	mb = policy_sending_mailbox(p->cfg->mailbox, mail_from, v.msg,
	    v.msg_len < HEAD_SCAN_MAX ? v.msg_len : HEAD_SCAN_MAX,
	    SPOOL_MAILBOX_MAX);
	spool_unmap_msg(&v);
	return mb;
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
	free(qe->mailbox);
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
    const char *mailbox, const char *const *rcpts, size_t nrcpts,
    uint64_t size,
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
	qe->maybe_dup = strcmp(qe->error, INFLIGHT_NOTE) == 0;
	qe->pool = p;
	qe->mailbox = sending_mailbox(p, qid, mail_from, mailbox);
	qe->mb = mbox_get(p, qe->mailbox);
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
	if (qe->mb->br.until > now_ms())
		spool_set_state(p->spool, qe->qid, SPOOL_QUEUED, 0, now +
		    (qe->mb->br.until - now_ms()), "mailbox held");
	mbox_update(p, qe->mb);
}

static void
on_queued(void *arg, const struct spool_queued *q)
{
	struct worker_pool	*p = arg;

	enqueue(p, q->qid, q->mail_from, q->mailbox, q->rcpts, q->nrcpts,
	    q->size, 0, q->arrival_us / 1000, 0, NULL, 0);
	dispatch(p);
}

/* The message goes to a delivery thread (its slot is counted). */
static struct job *
start_job(struct worker_pool *p, struct qent *qe, struct job *list)
{
	struct job	*j = xcalloc(1, sizeof(*j));

	j->qe = qe;
	qe->job = j;
	qe->inflight = 1;
	spool_set_state(p->spool, qe->qid, SPOOL_QUEUED, qe->attempts, 0,
	    INFLIGHT_NOTE);
	j->stray = qe->stray;
	qe->stray = NULL;
	memcpy(j->qid, qe->qid, sizeof(j->qid));
	j->mailbox = xstrdup(qe->mailbox);
	j->next = list;
	return j;
}

static void	cluster_answer_cb(void *, enum cluster_answer, uint64_t);
static void	hold_now(struct worker_pool *, struct qent *, int);
static void	hold_on_disk(struct worker_pool *, struct mbox *, uint64_t,
		    const char *);

/* Hands ready messages to idle workers, mailboxes taking turns. */
static void
dispatch(struct worker_pool *p)
{
	struct mbox	*mb;
	struct qent	*qe;
	struct job	*list = NULL;
	uint64_t	 now = now_ms(), recheck;

	if (p->paused)
		return;
	/* Not while Graph is held, nor beside its probe. */
	while (!p->stopping && p->busy < p->nthreads &&
	    breaker_admits(&p->br, p->busy, now) &&
	    (mb = TAILQ_FIRST(&p->runnable)) != NULL) {
		if (mb->inflight >= breaker_mbox_slots(&mb->br,
		    local_slots(p, mb, &recheck))) {
			/* Redis went away since: its share is smaller. */
			mbox_update(p, mb);
			continue;
		}
		if (rcpts_wait(p, mb, now, 1) > 0) {
			/* Redis went away since: its budget is this node's. */
			mbox_update(p, mb);
			continue;
		}
		qe = TAILQ_FIRST(&mb->ready);
		TAILQ_REMOVE(&mb->ready, qe, link);
		mb->inflight++;
		pace_take(&mb->pace, local_mpm(p));
		TAILQ_REMOVE(&p->runnable, mb, rlink);
		mb->runnable = 0;
		p->busy++;
		if (p->cluster != NULL) {
			qe->lease = cluster_lease(p->cluster, mb->key);
			if (cluster_ask(p->cluster, qe->lease,
			    MAILBOX_CONCURRENCY, p->cfg->messages_per_minute,
			    qe->nrcpts, cluster_answer_cb, qe) == 0) {
				qe->asking = 1;
				mbox_update(p, mb);
				continue;
			}
			/* Redis is away: this node's share, lease kept. */
		}
		mbox_update(p, mb);	/* to the back of the line */
		list = start_job(p, qe, list);
	}
	deliver_submit(p->threads, list);
}

/* What the cluster said, or would say if asked while it is away. */
static void
cluster_answer_cb(void *arg, enum cluster_answer ans, uint64_t wait)
{
	struct qent		*qe = arg;
	struct worker_pool	*p = qe->pool;
	struct mbox		*mb = qe->mb;
	uint64_t		 now = now_ms();

	qe->asking = 0;
	if (ans == CLUSTER_GRANTED && !p->stopping && !qe->hold_asked) {
		deliver_submit(p->threads, start_job(p, qe, NULL));
		return;
	}
	cluster_release(p->cluster, qe->lease);
	qe->lease = 0;
	mb->inflight--;
	p->busy--;
	if (ans == CLUSTER_MBOX_HELD) {
		/* Another node's 429: this one holds the mailbox too. */
		breaker_throttle(&mb->br, now + wait);
		hold_on_disk(p, mb, wall_us() / 1000 + wait, "mailbox held "
		    "(another node's 429)");
	} else if (ans == CLUSTER_RCPTS)
		mb->rc_until = now + (wait > 0 ? wait : CLUSTER_RETRY_MS);
	else if (ans != CLUSTER_DOWN && ans != CLUSTER_GRANTED)
		mb->cl_until = now + (wait > 0 ? wait : CLUSTER_RETRY_MS);
	if (qe->hold_asked)
		hold_now(p, qe, 1);
	else
		TAILQ_INSERT_HEAD(&mb->ready, qe, link);
	mbox_update(p, mb);
	dispatch(p);
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

/* The jitter's next random number. */
static uint64_t
next_rand(struct worker_pool *p)
{
	p->rng = sched_rand(p->rng);
	return p->rng;
}

static void
svc_timer_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct worker_pool	*p = arg;

	(void)fd;
	(void)ev;
	if (too_early(p->svc_timer, p->br.until))
		return;
	breaker_probe(&p->br);
	log_info("graph probing: one request to see whether Graph answers "
	    "again");
	dispatch(p);
}

/*
 * What an answer that reached Graph says about Graph and the mailbox
 * (failed: a service failure: 503, 504, no answer ...); schedule.c's
 * breaker decides, this logs it and arms the timers.
 */
static void
service_result(struct worker_pool *p, struct mbox *mb, int failed)
{
	struct timeval	 tv;
	unsigned	 r;

	r = breaker_step(&p->br, &mb->br, mb->key, failed, now_ms());
	if (r & BREAKER_MBOX_BACK)
		log_info("graph mailbox answering again: mailbox=%s deliveries "
		    "resume", mb->key);
	if (r & BREAKER_GRAPH_BACK)
		log_info("graph answering again: deliveries resume");
	if (!failed && p->svc_timer != NULL)
		evtimer_del(p->svc_timer);
	if (r & BREAKER_GRAPH_HOLD) {
		log_warnx("graph unavailable: %u failures in a row; all "
		    "deliveries wait %.1fs, then one request probes (the "
		    "failures came from several mailboxes)", p->br.fails,
		    (double)p->br.backoff_ms / 1000.0);
		if (p->svc_timer == NULL)
			p->svc_timer = evtimer_new(p->base, svc_timer_cb, p);
		tv = ms_tv(p->br.backoff_ms);
		evtimer_add(p->svc_timer, &tv);
		cluster_hold(p->cluster, NULL, p->br.backoff_ms);
	}
	if (r & BREAKER_MBOX_HOLD) {
		log_warnx("graph mailbox unavailable: mailbox=%s %u failures "
		    "in a row, only this mailbox's; its deliveries wait %.1fs, "
		    "then one request probes (other mailboxes go on)", mb->key,
		    mb->br.fails, (double)mb->br.backoff_ms / 1000.0);
		mbox_update(p, mb);
	}
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
		delay = backoff_ms(p->cfg->retry_min_ms, p->cfg->retry_max_ms,
		    qe->attempts, next_rand(p));
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

	delay = retry_delay_ms(p->cfg->retry_min_ms, p->cfg->retry_max_ms,
	    qe->attempts, j->retry_ms, (flags & GRAPH_F_QUOTA) != 0,
	    j->retry_ms < 0 ? next_rand(p) : 0);
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
		breaker_throttle(&mb->br, now_ms() + delay);
		cluster_hold(p->cluster, mb->key, delay);
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
	cluster_release(p->cluster, qe->lease);
	qe->lease = 0;
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
	struct job		*j, *list;
	struct mbox		*mb;

	(void)fd;
	(void)ev;
	list = deliver_results(p->threads);	/* oldest first */
	while ((j = list) != NULL) {
		list = j->next;
		mb = j->qe->mb;
		mb->refs++;		/* finish() may free the entry */
		finish(p, j);
		mbox_update(p, mb);
		mbox_put(p, mb);
		job_free(j);
	}
	dispatch(p);
}

/* ---- pool ---- */

struct worker_pool *
worker_new(struct event_base *base, const struct config *cfg,
    struct spool *spool, struct token *token, struct cluster *cluster,
    char *err, size_t errlen)
{
	struct worker_pool		*p;
	const struct spool_entry	*e;
	size_t				 i;

	p = xcalloc(1, sizeof(*p));
	p->cfg = cfg;
	p->spool = spool;
	p->base = base;
	p->cluster = cluster;
	TAILQ_INIT(&p->runnable);
	TAILQ_INIT(&p->all);
	if ((p->threads = deliver_start(cfg, spool, token, cfg->workers, err,
	    errlen)) == NULL) {
		free(p);
		return NULL;
	}
	p->nthreads = cfg->workers;
	p->notify_ev = event_new(base, deliver_fd(p->threads),
	    EV_READ | EV_PERSIST, notify_cb, p);
	event_add(p->notify_ev, NULL);
	p->rng = wall_us() | 1;
	pause_load(p);
	for (i = 0; (e = spool_entry_at(spool, i)) != NULL; i++)
		if (e->state == SPOOL_QUEUED || e->state == SPOOL_HELD)
			enqueue(p, e->qid, e->mail_from, e->mailbox,
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
	struct job	*j, *list;
	size_t		 i;

	if (p == NULL)
		return;
	spool_set_queued_cb(p->spool, NULL, NULL);
	p->stopping = 1;
	cluster_cancel(p->cluster);	/* asks still out answer nobody */
	/* The loop has ended: nobody is left to hear an answer. */
	TAILQ_FOREACH(qe, &p->all, all)
		qe->watch_cb = NULL;
	/* Let requests in flight finish for a while, then cut them. */
	http_abort_after(now_ms() + STOP_GRACE_MS);
	deliver_stop(p->threads);
	/* Results that came in: a sent message must leave the queue. */
	list = deliver_results(p->threads);
	while ((j = list) != NULL) {
		list = j->next;
		if (j->result == GRAPH_SENT)
			finish(p, j);
		job_free(j);
	}
	/* The rest stays on disk for the next start. */
	while ((qe = TAILQ_FIRST(&p->all)) != NULL) {
		TAILQ_REMOVE(&p->all, qe, all);
		if (qe->timer != NULL)
			event_free(qe->timer);
		free(qe->sender);
		free(qe->mailbox);
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
	breaker_clear(&p->br);
	free(p->paused_by);
	if (p->notify_ev != NULL)
		event_free(p->notify_ev);
	deliver_free(p->threads);
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
	if (p->br.until > now_ms())
		return "graph held";
	if (qe->mb->br.until > now_ms())
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
	if (qe->inflight || qe->asking || qe->held)
		return NULL;
	if (p->paused)
		return WORKER_HOLD_PAUSED;
	if (p->br.until > now) {
		end = p->br.until;
		kind = WORKER_HOLD_GRAPH;
	} else if (qe->mb->br.until > now) {
		end = qe->mb->br.until;
		kind = qe->mb->br.kind == HOLD_THROTTLED ?
		    WORKER_HOLD_THROTTLED : WORKER_HOLD_UNAVAILABLE;
	} else if ((end = rcpts_wait(p, qe->mb, now, 0)) > 0) {
		end += now;
		kind = WORKER_HOLD_RCPTS;
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
	else if (!qe->held && !qe->inflight && p->br.until > now)
		m->next_ms = wall_us() / 1000 + (p->br.until - now);
	else if (!qe->held && !qe->inflight && qe->mb->br.until > now)
		m->next_ms = wall_us() / 1000 + (qe->mb->br.until - now);
	else if (m->hold != NULL)
		m->next_ms = m->hold_until;
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
	c->graph_held_ms = p->br.until > now_ms() ? p->br.until -
	    now_ms() : 0;
	c->graph_fails = p->br.fails;
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
			if (mb->br.until > now &&
			    mb->br.kind == HOLD_THROTTLED)
				cb(arg, mb->key, wall + (mb->br.until - now));
}

void
worker_rcpts_spent(const struct worker_pool *p, worker_throttle_cb *cb,
    void *arg)
{
	struct mbox	*mb;
	uint64_t	 now = now_ms(), wall = wall_us() / 1000, wait;
	size_t		 i;

	for (i = 0; i < MBOX_HASH_SIZE; i++)
		for (mb = p->hash[i]; mb != NULL; mb = mb->hnext)
			if (!TAILQ_EMPTY(&mb->ready) &&
			    (wait = rcpts_wait(p, mb, now, 0)) > 0)
				cb(arg, mb->key, wall + wait);
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
	if (mb->br.until <= now_ms())
		return;
	log_info("relayctl: retry lifts the hold of mailbox %s (%s)", mb->key,
	    mb->br.kind == HOLD_THROTTLED ? "throttled by Graph" :
	    "unavailable at Graph");
	breaker_mbox_lift(&mb->br);
	cluster_hold(p->cluster, mb->key, 0);
	mb->cl_until = 0;
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
	if (p->br.until > now_ms())
		log_info("relayctl: retry lifts the Graph-wide hold");
	breaker_lift(&p->br);
	cluster_hold(p->cluster, NULL, 0);
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
	else if (strcmp(kind, WORKER_HOLD_RCPTS) == 0)
		snprintf(buf, len, "mailbox %s has spent Exchange's %d "
		    "recipients a day: its next message goes at %s (Exchange "
		    "would refuse it sooner; retry does not lift this)",
		    qe->mb->key, CLUSTER_RCPTS_PER_DAY, end);
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
	return deliver_cancel(p->threads, qe->job);
}

static void
act_hold(struct worker_pool *p, struct qent *qe, struct worker_tally *t)
{
	if (qe->held)
		t->skipped++;	/* as asked: not an error */
	else if (qe->asking) {
		qe->hold_asked = 1;	/* cluster_answer_cb holds it */
		log_info("%s held by relayctl before its request went", qe->qid);
		t->done++;
	} else if (!qe->inflight) {
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
	if ((qe->inflight || qe->asking) && qe->hold_asked) {
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

	if (qe->inflight || qe->asking) {
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

	if (qe->inflight || qe->asking) {
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
	    (p->br.until > now_ms() ||
	    qe->mb->br.until > now_ms())))
		return -1;	/* it would not go now: no use waiting */
	qe->watch_cb = cb;
	qe->watch_arg = arg;
	/*
	 * Not handed to a worker yet (all busy, or its mailbox at its 4
	 * requests or paced): first of its mailbox's line. Pacing and the
	 * concurrency limits still hold; past reply_timeout the session
	 * answers 250 and the message goes when its turn comes.
	 */
	if (!qe->inflight && !qe->asking &&
	    TAILQ_FIRST(&qe->mb->ready) != qe) {
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

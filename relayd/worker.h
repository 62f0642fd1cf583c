/* worker.h - the delivery pool: queued messages to Graph sendMail. */
#ifndef RELAYD_WORKER_H
#define RELAYD_WORKER_H

#include <stddef.h>
#include <stdint.h>

struct cluster;
struct config;
struct event_base;
struct spool;
struct token;
struct worker_pool;

/*
 * Starts [queue] workers threads and queues every message the spool found
 * at open and every one committed later. Runs on the event loop's thread.
 * With a cluster (NULL: alone), each request asks it for a slot first;
 * the caller frees the cluster after the pool.
 */
struct worker_pool *worker_new(struct event_base *, const struct config *,
		    struct spool *, struct token *, struct cluster *, char *,
		    size_t);
/* Stops: requests in flight get a short grace, the rest stays queued. */
void		 worker_free(struct worker_pool *);
size_t		 worker_queued(const struct worker_pool *);
/* Where outcomes are recorded (NULL: nowhere); the caller keeps it. */
struct history;
void		 worker_set_history(struct worker_pool *, struct history *);

/* ---- for the status socket (event loop thread) ---- */

#define WORKER_ERRORS	16		/* recent errors kept */
#define WORKER_RCPTS_SHOWN 3		/* recipients `queue` names */

struct worker_counts {
	size_t		 queued;	/* ready for a worker */
	size_t		 inflight;
	size_t		 deferred;	/* waiting for a retry */
	size_t		 throttled;	/* its mailbox on hold (429) */
	size_t		 held;		/* relayctl hold */
	size_t		 graph_held;	/* ready, but Graph is on hold */
	uint64_t	 sent, deferred_total, failed;	/* since start */
	uint64_t	 graph_held_ms;	/* Graph-wide hold left, 0: none */
	unsigned	 graph_fails;	/* failures in a row behind it */
};

/* One queued message; the strings live as long as the entry. */
struct worker_msg {
	const char	*qid;
	uint64_t	 size;
	uint64_t	 arrival_ms;	/* wall clock */
	const char	*sender;	/* "" for the null sender */
	const char	*mailbox;	/* the queue's mailbox key */
	size_t		 nrcpts;
	const char	*rcpts[WORKER_RCPTS_SHOWN];	/* the first; NULL after */
	unsigned	 attempts;
	uint64_t	 next_ms;	/* wall clock, 0: as soon as it can */
	const char	*state;		/* queued, in flight, deferred, held,
					   throttled, graph held */
	const char	*error;		/* the last, "" if none */
	const char	*hold;		/* WORKER_HOLD_*, NULL: no hold */
	uint64_t	 hold_until;	/* its end (wall), 0: till resume */
};

/* The holds a queued message may wait on (worker_msg.hold). */
#define WORKER_HOLD_THROTTLED	"mailbox throttled"	/* 429, quota */
#define WORKER_HOLD_UNAVAILABLE	"mailbox unavailable"	/* its 503s */
#define WORKER_HOLD_GRAPH	"Graph-wide"	/* several mailboxes' 503s */
#define WORKER_HOLD_PAUSED	"paused"	/* relayctl pause */
/* [cluster]: Exchange's recipients a day per mailbox, or a node's share. */
#define WORKER_HOLD_RCPTS	"recipient budget spent (10,000 a day)"

/*
 * Which messages a relayctl action or `queue` covers: qid (one id, or
 * "all"), else every message of mailbox (the queue's mailbox key) or of
 * sender ("<>" the null sender); all NULL: every message.
 */
struct worker_filter {
	const char	*qid;
	const char	*mailbox;
	const char	*sender;
};

enum worker_verb { WORKER_HOLD, WORKER_RELEASE, WORKER_RETRY, WORKER_DELETE };

/* What an action did to the messages that matched. */
struct worker_tally {
	size_t		 matched;
	size_t		 done;		/* held, released, to go now, deleted */
	size_t		 inflight;	/* being sent now: left alone */
	size_t		 skipped;	/* already held, not held, held */
	size_t		 waiting;	/* retry: waiting on a hold still */
	size_t		 lifted;	/* retry: mailbox holds lifted */
	char		 why[256];	/* one id that was not done: why */
};

struct worker_error {
	uint64_t	 time_ms;	/* wall clock */
	char		 qid[17];
	char		 mailbox[256];
	long		 status;
	int		 permanent;
	char		 code[64];
	char		 message[256];
};

typedef void worker_msg_cb(void *, const struct worker_msg *);
typedef void worker_throttle_cb(void *, const char *, uint64_t);

void		 worker_counts(const struct worker_pool *,
		    struct worker_counts *);
void		 worker_foreach(const struct worker_pool *, worker_msg_cb *,
		    void *);
int		 worker_find(const struct worker_pool *, const char *,
		    struct worker_msg *);
/* When the oldest queued message arrived (wall ms), 0: none queued. */
uint64_t	 worker_oldest(const struct worker_pool *);
int		 worker_filter_match(const struct worker_filter *,
		    const struct worker_msg *);
/*
 * Mailboxes Graph throttles (429, quota), with when they resume (wall ms);
 * not those held for their own service failures (queue shows those).
 */
void		 worker_throttled(const struct worker_pool *,
		    worker_throttle_cb *, void *);
/*
 * [cluster]: mailboxes whose messages wait for recipients a day (spent
 * across the nodes, or this node's share while Redis is away), with when
 * the next one goes (wall ms).
 */
void		 worker_rcpts_spent(const struct worker_pool *,
		    worker_throttle_cb *, void *);
/* The recent errors, newest first, into out[WORKER_ERRORS]. */
size_t		 worker_errors(const struct worker_pool *,
		    const struct worker_error **);
/*
 * relayctl hold, release, retry and delete on the messages the filter
 * matches. retry lifts the holds it was asked to: all, every mailbox's
 * and the Graph-wide one; --mailbox, that mailbox's. A message in flight
 * is held if its request has not gone out yet (the hold wins), else it is
 * counted as being sent now and held only if Graph does not take it.
 * -1 with why in the tally when one id is unknown or was not done.
 */
int		 worker_act(struct worker_pool *, enum worker_verb,
		    const struct worker_filter *, struct worker_tally *);
/*
 * A new credential (reload): the messages waiting because no token could
 * be had are tried now. Returns how many.
 */
size_t		 worker_retry_token(struct worker_pool *);
/*
 * relayctl pause (on = 1) and resume: no new request goes to Graph while
 * paused; requests in flight finish. Kept as the file "paused" in the
 * spool directory, so a restart stays paused. who is logged and kept.
 * -1 with why if the file cannot be written or removed.
 */
int		 worker_pause(struct worker_pool *, int, const char *,
		    const char **);
/* Paused: 1 with who asked and when (wall ms); 0 if not. */
int		 worker_paused(const struct worker_pool *, const char **,
		    uint64_t *);

/* ---- synchronous replies ([smtp] reply_after = graph; loop thread) ---- */

enum worker_outcome {
	WORKER_SENT,		/* Graph took it (202) */
	WORKER_REFUSED,		/* permanent: the message left the queue */
	WORKER_QUEUED,		/* not sent yet: it stays queued, retried */
};

struct worker_answer {
	enum worker_outcome	 outcome;
	long			 status;	/* Graph's HTTP status, 0: none */
	const char		*code;		/* Graph's error code, or "" */
	const char		*message;
};

typedef void worker_watch_cb(void *, const struct worker_answer *);

/*
 * Calls cb once, with what became of the first attempt of qid, a message
 * just committed: sent; refused for good, in which case the message is
 * removed from the queue instead of going to dead/ (the client that is
 * told 5xx owns it again); or not sent yet (a temporary failure, relayctl
 * hold or delete). Returns -1 when the message cannot go now (Graph or
 * its mailbox on hold, relayd stopping, unknown qid): no call comes.
 */
int		 worker_watch(struct worker_pool *, const char *,
		    worker_watch_cb *, void *);
/* No call comes; the message goes on as any other (a refusal: dead/). */
void		 worker_unwatch(struct worker_pool *, const char *);

#endif

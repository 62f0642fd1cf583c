/* worker.h - the delivery pool: queued messages to Graph sendMail. */
#ifndef RELAYD_WORKER_H
#define RELAYD_WORKER_H

#include <stddef.h>
#include <stdint.h>

struct config;
struct event_base;
struct spool;
struct token;
struct worker_pool;

/*
 * Starts [queue] workers threads and queues every message the spool found
 * at open and every one committed later. Runs on the event loop's thread.
 */
struct worker_pool *worker_new(struct event_base *, const struct config *,
		    struct spool *, struct token *, char *, size_t);
/* Stops: requests in flight get a short grace, the rest stays queued. */
void		 worker_free(struct worker_pool *);
size_t		 worker_queued(const struct worker_pool *);

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
/* Mailboxes on hold after a 429, with when they resume (wall ms). */
void		 worker_throttled(const struct worker_pool *,
		    worker_throttle_cb *, void *);
/* The recent errors, newest first, into out[WORKER_ERRORS]. */
size_t		 worker_errors(const struct worker_pool *,
		    const struct worker_error **);
/*
 * relayctl's actions by queue id. retry ("all" for every message, which
 * also lifts mailbox and Graph-wide holds) returns how many go now;
 * the others 0. -1 with why for an unknown id or a state that forbids it.
 */
int		 worker_retry(struct worker_pool *, const char *,
		    const char **);
int		 worker_hold(struct worker_pool *, const char *, const char **);
/*
 * A new credential (reload): the messages waiting because no token could
 * be had are tried now. Returns how many.
 */
size_t		 worker_retry_token(struct worker_pool *);
int		 worker_release(struct worker_pool *, const char *,
		    const char **);
int		 worker_delete(struct worker_pool *, const char *,
		    const char **);

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

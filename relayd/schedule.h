/* schedule.h - the scheduler's arithmetic: backoff, pacing, the breaker. */
#ifndef RELAYD_SCHEDULE_H
#define RELAYD_SCHEDULE_H

#include <stdint.h>

/* ---- backoff: when a deferred message is tried again ---- */

#define QUOTA_HOLD_MS		(3600 * 1000)	/* ErrorQuotaExceeded */

/* The next of a xorshift sequence (never 0 from a seed that is not). */
uint64_t	 sched_rand(uint64_t);
/*
 * retry_min doubling per attempt to retry_max, with "equal jitter": half
 * fixed, half chosen by rnd.
 */
uint64_t	 backoff_ms(uint64_t, uint64_t, unsigned, uint64_t);
/*
 * The wait after a temporary failure: Retry-After (ms, -1: none) exactly;
 * else the backoff, at least an hour for a quota error.
 */
uint64_t	 retry_delay_ms(uint64_t, uint64_t, unsigned, long long, int,
		    uint64_t);

/* ---- pacing: messages_per_minute per mailbox, a token bucket ---- */

struct pace {
	double		 tokens;	/* messages it may send now */
	uint64_t	 refill_ms;	/* when they were counted */
};

/* Full at now. */
void		 pace_init(struct pace *, uint64_t, uint64_t);
/* Refilled to now; how long until one message may go, 0: now. */
uint64_t	 pace_wait(struct pace *, uint64_t, uint64_t);
/* One message went. */
void		 pace_take(struct pace *, uint64_t);
/* Refilled to now; how long until the bucket is full, 0: it is. */
uint64_t	 pace_full_in(struct pace *, uint64_t, uint64_t);

/* ---- the breaker: service failures hold a mailbox or all of Graph ---- */

#define BREAKER_THRESHOLD	3	/* failures in a row: a hold */
#define BREAKER_MIN_MS		5000	/* the first hold; it doubles */
#define BREAKER_MAX_MS		(5 * 60 * 1000)

enum hold_kind { HOLD_THROTTLED, HOLD_UNAVAILABLE };

/* One mailbox: held (429, quota, or its own failures), then one probe. */
struct breaker_mbox {
	uint64_t	 until;		/* held till then, by the caller's clock */
	enum hold_kind	 kind;
	unsigned	 fails;		/* its own service failures in a row */
	uint64_t	 backoff_ms;	/* its last service hold */
	int		 probing;	/* one request at a time */
};

/*
 * Graph as a whole: failures in a row, hold, then one probe; the run's
 * first mailbox, and whether another one failed in it too.
 */
struct breaker {
	unsigned	 fails;
	char		*first;		/* owned */
	int		 spread;
	uint64_t	 backoff_ms;
	uint64_t	 until;
	int		 probing;
};

/* What breaker_step did, for the loop to log and arm timers. */
#define BREAKER_MBOX_BACK	0x01	/* the mailbox answers again */
#define BREAKER_GRAPH_BACK	0x02	/* Graph answers again */
#define BREAKER_GRAPH_HOLD	0x04	/* every delivery waits: until */
#define BREAKER_MBOX_HOLD	0x08	/* the mailbox alone waits */

/* The next service hold after one of last ms (0: none yet). */
uint64_t	 breaker_backoff(uint64_t);
/*
 * One answer that reached Graph (failed: a service failure) for the
 * mailbox key at now; returns BREAKER_* bits.
 */
unsigned	 breaker_step(struct breaker *, struct breaker_mbox *,
		    const char *, int, uint64_t);
/* The Graph-wide hold ended: one request probes. */
void		 breaker_probe(struct breaker *);
/* Graph-wide: may a request go with busy ones in flight? */
int		 breaker_admits(const struct breaker *, uint64_t, uint64_t);
/* relayctl retry: the Graph-wide hold ends; so does a mailbox's. */
void		 breaker_lift(struct breaker *);
void		 breaker_mbox_lift(struct breaker_mbox *);
/* How many of its requests may be in flight (one while it probes). */
unsigned	 breaker_mbox_slots(const struct breaker_mbox *, unsigned);
/* Graph throttles the mailbox (429, quota) till until at the latest. */
void		 breaker_throttle(struct breaker_mbox *, uint64_t);
void		 breaker_clear(struct breaker *);

#endif

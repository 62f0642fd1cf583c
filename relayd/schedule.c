/*
 * schedule.c - the scheduler's arithmetic: backoff, pacing, the breaker.
 *
 * Design. Every decision of the delivery queue that is arithmetic on time
 * lives here as a pure function: the time is an argument (the caller's
 * clock, milliseconds), randomness is an argument, and the only state is
 * the struct the caller passes in. worker.c does the rest (timers, logs,
 * lists), so the tables of tests/unit/test_schedule.c pin these rules
 * down without a clock.
 *
 * Backoff: Retry-After exactly; else retry_min doubling per attempt to
 * retry_max, with "equal jitter" (half the step fixed, half random), and
 * an hour at least after a quota error. Pacing: a bucket of
 * messages_per_minute tokens per mailbox, refilled continuously; a
 * message takes one. The breaker: service failures (503, 504, no answer)
 * BREAKER_THRESHOLD in a row hold every delivery when the run spans two
 * mailboxes or more, else only the failing mailbox; a hold lasts 5 s,
 * doubling to 5 min, then one request probes; any other answer ends it.
 */
#include <stdlib.h>
#include <string.h>

#include "schedule.h"
#include "util.h"

/* ---- backoff ---- */

uint64_t
sched_rand(uint64_t x)
{
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return x;
}

uint64_t
backoff_ms(uint64_t min_ms, uint64_t max_ms, unsigned attempts,
    uint64_t rnd)
{
	uint64_t	 ms = min_ms;

	while (attempts-- > 1 && ms < max_ms)
		ms *= 2;
	if (ms > max_ms)
		ms = max_ms;
	return ms / 2 + rnd % (ms / 2 + 1);
}

uint64_t
retry_delay_ms(uint64_t min_ms, uint64_t max_ms, unsigned attempts,
    long long retry_after_ms, int quota, uint64_t rnd)
{
	uint64_t	 delay;

	if (retry_after_ms >= 0)
		return (uint64_t)retry_after_ms;
	delay = backoff_ms(min_ms, max_ms, attempts, rnd);
	if (quota && delay < QUOTA_HOLD_MS)
		delay = QUOTA_HOLD_MS;
	return delay;
}

/* ---- pacing ---- */

void
pace_init(struct pace *pc, uint64_t mpm, uint64_t now)
{
	pc->tokens = (double)mpm;
	pc->refill_ms = now;
}

uint64_t
pace_wait(struct pace *pc, uint64_t mpm, uint64_t now)
{
	double	 m = (double)mpm;

	if (mpm == 0)
		return 0;
	pc->tokens += (double)(now - pc->refill_ms) * m / 60000.0;
	if (pc->tokens > m)
		pc->tokens = m;
	pc->refill_ms = now;
	if (pc->tokens >= 1.0)
		return 0;
	return (uint64_t)((1.0 - pc->tokens) * 60000.0 / m) + 1;
}

void
pace_take(struct pace *pc, uint64_t mpm)
{
	if (mpm > 0)
		pc->tokens -= 1.0;
}

uint64_t
pace_full_in(struct pace *pc, uint64_t mpm, uint64_t now)
{
	double	 m = (double)mpm;

	if (mpm == 0)
		return 0;
	pace_wait(pc, mpm, now);		/* refills */
	if (pc->tokens >= m)
		return 0;
	return (uint64_t)((m - pc->tokens) * 60000.0 / m) + 1;
}

/* ---- the breaker ---- */

uint64_t
breaker_backoff(uint64_t last)
{
	if (last == 0)
		return BREAKER_MIN_MS;
	return last * 2 > BREAKER_MAX_MS ? BREAKER_MAX_MS : last * 2;
}

/* An answer other than a service failure: the mailbox and Graph are up. */
static unsigned
breaker_ok(struct breaker *g, struct breaker_mbox *m)
{
	unsigned	 r = 0;

	if (m->fails >= BREAKER_THRESHOLD || m->probing) {
		r |= BREAKER_MBOX_BACK;
		if (m->kind == HOLD_UNAVAILABLE)
			m->until = 0;
	}
	m->fails = 0;
	m->backoff_ms = 0;
	m->probing = 0;
	if (g->fails >= BREAKER_THRESHOLD || g->probing)
		r |= BREAKER_GRAPH_BACK;
	g->fails = 0;
	g->backoff_ms = 0;
	g->probing = 0;
	g->until = 0;
	return r;
}

/* Graph as a whole fails: hold every delivery, then one request probes. */
static unsigned
breaker_graph_hold(struct breaker *g, uint64_t now)
{
	if (g->until > now)
		return 0;	/* answers of requests sent before the hold */
	g->backoff_ms = breaker_backoff(g->backoff_ms);
	g->until = now + g->backoff_ms;
	g->probing = 0;
	return BREAKER_GRAPH_HOLD;
}

/*
 * One mailbox fails on its own: hold it alone, as Graph-wide holds do,
 * and let one of its requests probe when the hold ends.
 */
static unsigned
breaker_mbox_hold(struct breaker_mbox *m, uint64_t now)
{
	if (m->until > now)
		return 0;	/* sent before the hold, or throttled */
	m->backoff_ms = breaker_backoff(m->backoff_ms);
	m->until = now + m->backoff_ms;
	m->kind = HOLD_UNAVAILABLE;
	m->probing = 1;
	return BREAKER_MBOX_HOLD;
}

unsigned
breaker_step(struct breaker *g, struct breaker_mbox *m, const char *key,
    int failed, uint64_t now)
{
	if (!failed)
		return breaker_ok(g, m);
	if (g->fails == 0 || g->first == NULL) {
		free(g->first);
		g->first = xstrdup(key);
		g->spread = 0;
	} else if (strcmp(g->first, key) != 0)
		g->spread = 1;
	g->fails++;
	m->fails++;
	if (g->spread && g->fails >= BREAKER_THRESHOLD)
		return breaker_graph_hold(g, now);
	if (m->fails >= BREAKER_THRESHOLD && g->until <= now)
		return breaker_mbox_hold(m, now);
	return 0;
}

void
breaker_probe(struct breaker *g)
{
	g->until = 0;
	g->probing = 1;
}

int
breaker_admits(const struct breaker *g, uint64_t busy, uint64_t now)
{
	return g->until <= now && !(g->probing && busy > 0);
}

void
breaker_lift(struct breaker *g)
{
	g->until = 0;
	g->probing = 0;
}

void
breaker_mbox_lift(struct breaker_mbox *m)
{
	m->until = 0;
	m->probing = 0;
}

unsigned
breaker_mbox_slots(const struct breaker_mbox *m, unsigned max)
{
	return m->probing ? 1 : max;
}

void
breaker_throttle(struct breaker_mbox *m, uint64_t until)
{
	if (m->until < until) {
		m->until = until;
		m->kind = HOLD_THROTTLED;
	}
}

void
breaker_clear(struct breaker *g)
{
	free(g->first);
	g->first = NULL;
}

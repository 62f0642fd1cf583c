/*
 * stress.c - relayd's answer to a front door filled with idle or slow
 * connections (Postfix's stress-adaptive timeouts, nginx's and HAProxy's
 * "drop the idlest first"). Above STRESS_ON_PCT of max_connections the
 * SMTP side is under stress: command and greeting timeouts shrink to
 * [smtp] stress_timeout, and a client that finds every slot taken is let
 * in by closing the session that has been idle longest, oldest first,
 * among those not in a transaction. Below STRESS_OFF_PCT the stress ends.
 * This file only decides; smtp.c and smtp_session.c act.
 */
#include <stddef.h>
#include <stdint.h>

#include "stress.h"

/* At least one connection each, so that a tiny limit still switches. */
static uint64_t
pct(uint64_t limit, unsigned p)
{
	uint64_t	 n = limit * p / 100;

	return n == 0 ? 1 : n;
}

enum stress_change
stress_update(struct stress *st, uint64_t n, uint64_t now)
{
	if (!st->active && n >= pct(st->limit, STRESS_ON_PCT)) {
		__atomic_store_n(&st->active, 1, __ATOMIC_RELAXED);
		st->since_ms = now;
		st->entered++;
		st->evicted_before = st->evicted;
		return STRESS_ENTERED;
	}
	if (st->active && n < pct(st->limit, STRESS_OFF_PCT)) {
		__atomic_store_n(&st->active, 0, __ATOMIC_RELAXED);
		st->since_ms = now;
		return STRESS_LEFT;
	}
	return STRESS_SAME;
}

uint64_t
stress_timeout(const struct stress *st, uint64_t normal, uint64_t stressed)
{
	/* Any SMTP loop asks; loop 0 sets active (smtp_loops.c). */
	return __atomic_load_n(&st->active, __ATOMIC_RELAXED) &&
	    stressed < normal ? stressed : normal;
}

uint64_t
stress_conn_limit(uint64_t configured, uint64_t nofile, uint64_t *allowed)
{
	uint64_t	 fit;

	fit = nofile > STRESS_FD_RESERVE + 1 ? nofile - STRESS_FD_RESERVE : 1;
	*allowed = fit;
	if (configured == 0)
		return fit < STRESS_MAX_CONN ? fit : STRESS_MAX_CONN;
	return configured < fit ? configured : fit;
}

void
idle_touch(struct idle_list *l, struct idle_entry *e, uint64_t now)
{
	if (e->on)
		TAILQ_REMOVE(l, e, link);
	TAILQ_INSERT_TAIL(l, e, link);
	e->on = 1;
	e->since_ms = now;
}

void
idle_remove(struct idle_list *l, struct idle_entry *e)
{
	if (!e->on)
		return;
	TAILQ_REMOVE(l, e, link);
	e->on = 0;
}

struct idle_entry *
idle_oldest(struct idle_list *l)
{
	return TAILQ_FIRST(l);
}

/*
 * Unit tests for schedule.c: the scheduler's arithmetic as tables of
 * inputs and the outputs they must give. Backoff (retry_min doubling to
 * retry_max, the jitter's range, Retry-After, the quota hour), pacing
 * (the messages_per_minute bucket step by step) and the breaker (runs of
 * service failures over one mailbox or several, the hold, its probe, the
 * answer that ends it, relayctl retry). Failures print the row.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "schedule.h"
#include "table.h"

/* ---- backoff ---- */

/* The real sequence of random numbers spans the whole range, no more. */
static void
test_backoff_jitter_range(void **state)
{
	uint64_t	 rnd = 12345, ms, lo = UINT64_MAX, hi = 0;
	size_t		 i;

	(void)state;
	for (i = 0; i < 20000; i++) {
		rnd = sched_rand(rnd);
		assert_int_not_equal(rnd, 0);
		ms = backoff_ms(400, 1600, 2, rnd);
		if (ms < lo)
			lo = ms;
		if (ms > hi)
			hi = ms;
	}
	check_u64("jitter", 0, "lowest", lo, 400);
	check_u64("jitter", 0, "highest", hi, 800);
}

static void
test_retry_delay_table(void **state)
{
	static const struct {
		uint64_t	 min, max;
		unsigned	 attempts;
		long long	 retry_after;
		int		 quota;
		uint64_t	 rnd;
		uint64_t	 want;
	} t[] = {
		/* Retry-After exactly, whatever the attempt and jitter */
		{ 1000, 60000, 1, 1500, 0, 777, 1500 },
		{ 1000, 60000, 7, 2000, 0, 0, 2000 },
		{ 1000, 60000, 1, 0, 0, 999, 0 },
		{ 1000, 60000, 1, 3600000, 0, 0, 3600000 },
		/*
		 * None: the backoff. The first retry: half of retry_min
		 * fixed, half random.
		 */
		{ 1000, 60000, 1, -1, 0, 0, 500 },
		{ 1000, 60000, 1, -1, 0, 500, 1000 },
		{ 1000, 60000, 1, -1, 0, 501, 500 },		/* rnd mod 501 */
		{ 1000, 60000, 1, -1, 0, 250, 750 },
		{ 1000, 60000, 0, -1, 0, 0, 500 },		/* as the first */
		/* doubling per attempt */
		{ 1000, 60000, 2, -1, 0, 0, 1000 },
		{ 1000, 60000, 2, -1, 0, 1000, 2000 },
		{ 1000, 60000, 3, -1, 0, 0, 2000 },
		{ 1000, 60000, 3, -1, 0, 2000, 4000 },
		{ 1000, 60000, 6, -1, 0, 0, 16000 },
		/* to retry_max, not past it */
		{ 400, 1600, 3, -1, 0, 800, 1600 },
		{ 400, 1600, 4, -1, 0, 0, 800 },
		{ 400, 1600, 4, -1, 0, 800, 1600 },
		{ 400, 1600, 9, -1, 0, 800, 1600 },
		{ 1000, 5000, 4, -1, 0, 0, 2500 },		/* 8000 capped */
		{ 1000, 5000, 4, -1, 0, 2500, 5000 },
		{ 1000, 60000, 1000, -1, 0, 0, 30000 },	/* no overflow */
		{ 1000, 60000, 4000000000u, -1, 0, 30000, 60000 },
		{ 10000, 5000, 1, -1, 0, 0, 2500 },		/* min over max */
		/* retry_min 500ms, as test_delivery's 503s had */
		{ 500, 60000, 1, -1, 0, 0, 250 },
		{ 500, 60000, 1, -1, 0, 250, 500 },
		{ 500, 60000, 2, -1, 0, 0, 500 },
		{ 500, 60000, 2, -1, 0, 500, 1000 },
		/* odd steps: the random half rounds down */
		{ 3, 100, 1, -1, 0, 0, 1 },
		{ 3, 100, 1, -1, 0, 1, 2 },
		{ 3, 100, 1, -1, 0, 2, 1 },
		{ 0, 100, 1, -1, 0, 12345, 0 },
		/* a quota error without Retry-After: an hour at least */
		{ 1000, 60000, 1, -1, 1, 0, QUOTA_HOLD_MS },
		{ 1000, 60000, 9, -1, 1, 30000, QUOTA_HOLD_MS },
		{ 7200000, 7200000, 1, -1, 1, 3600000, 7200000 },
		{ 7200000, 7200000, 1, -1, 1, 0, QUOTA_HOLD_MS },
		/* with Retry-After, Retry-After */
		{ 1000, 60000, 1, 3000, 1, 0, 3000 },
	};
	size_t	 i;

	(void)state;
	for (i = 0; i < NELEM(t); i++)
		check_u64("retry_delay", i, "retry_delay_ms", retry_delay_ms(
		    t[i].min, t[i].max, t[i].attempts, t[i].retry_after,
		    t[i].quota, t[i].rnd), t[i].want);
}

/* ---- pacing ---- */

enum pace_op { P_END, P_INIT, P_TAKE, P_WAIT, P_FULL };

struct pace_step {
	enum pace_op	 op;
	unsigned	 n;		/* P_TAKE: how many */
	uint64_t	 now;
	uint64_t	 want;		/* P_WAIT, P_FULL: what it returns */
	double		 tokens;	/* after the step */
};

static void
pace_run(const char *name, uint64_t mpm, const struct pace_step *s)
{
	struct pace	 pc;
	uint64_t	 got;
	unsigned	 k;
	size_t		 i;

	memset(&pc, 0, sizeof(pc));
	for (i = 0; s[i].op != P_END; i++) {
		got = 0;
		switch (s[i].op) {
		case P_INIT:
			pace_init(&pc, mpm, s[i].now);
			break;
		case P_TAKE:
			for (k = 0; k < s[i].n; k++)
				pace_take(&pc, mpm);
			break;
		case P_WAIT:
			got = pace_wait(&pc, mpm, s[i].now);
			break;
		case P_FULL:
			got = pace_full_in(&pc, mpm, s[i].now);
			break;
		case P_END:
			break;
		}
		check_u64(name, i, "returned", got, s[i].want);
		if (pc.tokens < s[i].tokens - 1e-9 ||
		    pc.tokens > s[i].tokens + 1e-9) {
			print_error("%s row %zu: tokens %f, want %f\n", name, i,
			    pc.tokens, s[i].tokens);
			fail();
		}
	}
}

static void
test_pacing_table(void **state)
{
	/* 60 a minute: a burst of 60, then one a second. */
	static const struct pace_step burst[] = {
		{ P_INIT, 0, 1000, 0, 60 },
		{ P_WAIT, 0, 1000, 0, 60 },
		{ P_TAKE, 60, 0, 0, 0 },
		{ P_WAIT, 0, 1000, 1001, 0 },		/* the 61st waits 1 s */
		{ P_WAIT, 0, 1500, 501, 0.5 },		/* refilled half */
		{ P_WAIT, 0, 2000, 0, 1 },
		{ P_TAKE, 1, 0, 0, 0 },
		{ P_WAIT, 0, 2000, 1001, 0 },
		{ P_WAIT, 0, 2750, 251, 0.75 },
		{ P_WAIT, 0, 3000, 0, 1 },
		{ P_FULL, 0, 3000, 59001, 1 },		/* 59 tokens to come */
		{ P_FULL, 0, 61500, 501, 59.5 },
		{ P_FULL, 0, 62000, 0, 60 },		/* full: forgettable */
		{ P_WAIT, 0, 90000, 0, 60 },		/* and no fuller */
		{ P_END, 0, 0, 0, 0 },
	};
	/* 1 a minute: the bucket outlives an empty queue. */
	static const struct pace_step slow[] = {
		{ P_INIT, 0, 0, 0, 1 },
		{ P_TAKE, 1, 0, 0, 0 },
		{ P_WAIT, 0, 0, 60001, 0 },
		{ P_FULL, 0, 30000, 30001, 0.5 },
		{ P_WAIT, 0, 30000, 30001, 0.5 },
		{ P_WAIT, 0, 60000, 0, 1 },
		{ P_FULL, 0, 60000, 0, 1 },
		{ P_END, 0, 0, 0, 0 },
	};
	/* Never more than a minute's worth, however long it waits. */
	static const struct pace_step capped[] = {
		{ P_INIT, 0, 0, 0, 30 },
		{ P_TAKE, 10, 0, 0, 20 },
		{ P_WAIT, 0, 600000, 0, 30 },
		{ P_TAKE, 31, 0, 0, -1 },		/* a take past empty */
		{ P_WAIT, 0, 600000, 4001, -1 },	/* 2 tokens to come */
		{ P_END, 0, 0, 0, 0 },
	};
	/* 0: unpaced. */
	static const struct pace_step unpaced[] = {
		{ P_INIT, 0, 0, 0, 0 },
		{ P_TAKE, 100, 0, 0, 0 },
		{ P_WAIT, 0, 0, 0, 0 },
		{ P_FULL, 0, 0, 0, 0 },
		{ P_END, 0, 0, 0, 0 },
	};

	(void)state;
	pace_run("pace burst", 60, burst);
	pace_run("pace slow", 1, slow);
	pace_run("pace capped", 30, capped);
	pace_run("pace unpaced", 0, unpaced);
}

/* ---- the breaker ---- */

static void
test_breaker_backoff_table(void **state)
{
	static const struct {
		uint64_t	 last, want;
	} t[] = {
		{ 0, 5000 }, { 5000, 10000 }, { 10000, 20000 },
		{ 160000, 300000 }, { 300000, 300000 }, { 299999, 300000 },
	};
	size_t	 i;

	(void)state;
	for (i = 0; i < NELEM(t); i++)
		check_u64("breaker_backoff", i, "hold", breaker_backoff(
		    t[i].last), t[i].want);
}

enum br_op { B_END, B_FAIL, B_OK, B_PROBE, B_LIFT, B_LIFT_MBOX,
    B_THROTTLE };

/* One step on mailbox 'A' or 'B', and the state it must leave. */
struct br_step {
	enum br_op	 op;
	char		 mbox;
	uint64_t	 now;		/* B_THROTTLE: until */
	unsigned	 want;		/* BREAKER_* bits */
	uint64_t	 g_until;
	int		 g_probing;
	uint64_t	 m_until;	/* the step's mailbox */
	int		 m_probing;
	int		 admits;	/* breaker_admits(1 busy) at now */
};

static void
breaker_run(const char *name, const struct br_step *s)
{
	struct breaker		 g;
	struct breaker_mbox	 mb[2], *m;
	const char		*key;
	unsigned		 got;
	size_t			 i;

	memset(&g, 0, sizeof(g));
	memset(mb, 0, sizeof(mb));
	for (i = 0; s[i].op != B_END; i++) {
		m = &mb[s[i].mbox == 'B'];
		key = s[i].mbox == 'B' ? "b@contoso.test" : "a@contoso.test";
		got = 0;
		switch (s[i].op) {
		case B_FAIL:
		case B_OK:
			got = breaker_step(&g, m, key, s[i].op == B_FAIL,
			    s[i].now);
			break;
		case B_PROBE:
			breaker_probe(&g);
			break;
		case B_LIFT:
			breaker_lift(&g);
			break;
		case B_LIFT_MBOX:
			breaker_mbox_lift(m);
			break;
		case B_THROTTLE:
			breaker_throttle(m, s[i].now);
			break;
		case B_END:
			break;
		}
		check_u64(name, i, "bits", got, s[i].want);
		check_u64(name, i, "graph until", g.until, s[i].g_until);
		check_u64(name, i, "graph probing", g.probing, s[i].g_probing);
		check_u64(name, i, "mailbox until", m->until, s[i].m_until);
		check_u64(name, i, "mailbox probing", m->probing,
		    s[i].m_probing);
		check_u64(name, i, "admits", breaker_admits(&g, 1,
		    s[i].op == B_THROTTLE ? 0 : s[i].now), s[i].admits);
		check_u64(name, i, "mailbox slots", breaker_mbox_slots(m, 4),
		    m->probing ? 1 : 4);
	}
	breaker_clear(&g);
}

static void
test_breaker_table(void **state)
{
	/* Failures from two mailboxes: every delivery waits, then probes. */
	static const struct br_step graph_wide[] = {
		{ B_FAIL, 'A', 0, 0, 0, 0, 0, 0, 1 },
		{ B_FAIL, 'B', 10, 0, 0, 0, 0, 0, 1 },
		{ B_FAIL, 'A', 20, BREAKER_GRAPH_HOLD, 5020, 0, 0, 0, 0 },
		/* answers to requests sent before the hold change nothing */
		{ B_FAIL, 'B', 30, 0, 5020, 0, 0, 0, 0 },
		{ B_FAIL, 'A', 5019, 0, 5020, 0, 0, 0, 0 },
		/* the hold ends: one request alone, beside nothing else */
		{ B_PROBE, 'A', 5020, 0, 0, 1, 0, 0, 0 },
		/* it fails: the hold doubles */
		{ B_FAIL, 'A', 5100, BREAKER_GRAPH_HOLD, 15100, 0, 0, 0, 0 },
		{ B_PROBE, 'A', 15100, 0, 0, 1, 0, 0, 0 },
		{ B_FAIL, 'B', 15200, BREAKER_GRAPH_HOLD, 35200, 0, 0, 0, 0 },
		{ B_PROBE, 'B', 35200, 0, 0, 1, 0, 0, 0 },
		/* any other answer: Graph is back (and B, which failed 3
		 * times), the backoff starts over */
		{ B_OK, 'B', 35300, BREAKER_GRAPH_BACK | BREAKER_MBOX_BACK, 0,
		    0, 0, 0, 1 },
		{ B_FAIL, 'B', 35400, 0, 0, 0, 0, 0, 1 },
		{ B_FAIL, 'B', 35500, 0, 0, 0, 0, 0, 1 },
		{ B_FAIL, 'A', 35600, BREAKER_GRAPH_HOLD, 40600, 0, 0, 0, 0 },
		{ B_END, 0, 0, 0, 0, 0, 0, 0, 0 },
	};
	/* One mailbox's own failures hold it alone; others go on. */
	static const struct br_step one_mailbox[] = {
		{ B_FAIL, 'A', 0, 0, 0, 0, 0, 0, 1 },
		{ B_FAIL, 'A', 10, 0, 0, 0, 0, 0, 1 },
		{ B_FAIL, 'A', 20, BREAKER_MBOX_HOLD, 0, 0, 5020, 1, 1 },
		{ B_FAIL, 'A', 30, 0, 0, 0, 5020, 1, 1 },
		/* its probe fails: its hold doubles */
		{ B_FAIL, 'A', 5100, BREAKER_MBOX_HOLD, 0, 0, 15100, 1, 1 },
		/* an answer: it is back (and the run of failures ends) */
		{ B_OK, 'A', 15200, BREAKER_MBOX_BACK | BREAKER_GRAPH_BACK, 0,
		    0, 0, 0, 1 },
		/* another mailbox's answer does not end A's own run: A's
		 * failures while others answer are A's alone */
		{ B_FAIL, 'A', 15300, 0, 0, 0, 0, 0, 1 },
		{ B_FAIL, 'A', 15400, 0, 0, 0, 0, 0, 1 },
		{ B_OK, 'B', 15500, 0, 0, 0, 0, 0, 1 },
		{ B_FAIL, 'A', 15600, BREAKER_MBOX_HOLD, 0, 0, 20600, 1, 1 },
		{ B_END, 0, 0, 0, 0, 0, 0, 0, 0 },
	};
	/* A mailbox's run that another mailbox joins: Graph-wide. */
	static const struct br_step spreads[] = {
		{ B_FAIL, 'A', 0, 0, 0, 0, 0, 0, 1 },
		{ B_FAIL, 'A', 10, 0, 0, 0, 0, 0, 1 },
		{ B_FAIL, 'A', 20, BREAKER_MBOX_HOLD, 0, 0, 5020, 1, 1 },
		{ B_FAIL, 'B', 30, BREAKER_GRAPH_HOLD, 5030, 0, 0, 0, 0 },
		/* while Graph is held no mailbox hold starts */
		{ B_FAIL, 'B', 40, 0, 5030, 0, 0, 0, 0 },
		{ B_FAIL, 'B', 50, 0, 5030, 0, 0, 0, 0 },
		/* relayctl retry all */
		{ B_LIFT, 'A', 60, 0, 0, 0, 5020, 1, 1 },
		{ B_LIFT_MBOX, 'A', 60, 0, 0, 0, 0, 0, 1 },
		{ B_END, 0, 0, 0, 0, 0, 0, 0, 0 },
	};
	/* A throttled mailbox (429) keeps its hold and kind. */
	static const struct br_step throttled[] = {
		{ B_THROTTLE, 'A', 3000, 0, 0, 0, 3000, 0, 1 },
		{ B_THROTTLE, 'A', 2000, 0, 0, 0, 3000, 0, 1 },	/* shorter */
		{ B_FAIL, 'A', 10, 0, 0, 0, 3000, 0, 1 },
		{ B_FAIL, 'A', 20, 0, 0, 0, 3000, 0, 1 },
		{ B_FAIL, 'A', 30, 0, 0, 0, 3000, 0, 1 },	/* held */
		/* still Graph's hold: an answer does not lift it */
		{ B_OK, 'A', 40, BREAKER_MBOX_BACK | BREAKER_GRAPH_BACK, 0, 0,
		    3000, 0, 1 },
		{ B_THROTTLE, 'A', 9000, 0, 0, 0, 9000, 0, 1 },
		{ B_END, 0, 0, 0, 0, 0, 0, 0, 0 },
	};

	(void)state;
	breaker_run("breaker graph_wide", graph_wide);
	breaker_run("breaker one_mailbox", one_mailbox);
	breaker_run("breaker spreads", spreads);
	breaker_run("breaker throttled", throttled);
}

static void
test_breaker_admits_table(void **state)
{
	static const struct {
		uint64_t	 until;
		int		 probing;
		uint64_t	 busy, now;
		int		 want;
	} t[] = {
		{ 0, 0, 0, 100, 1 },
		{ 0, 0, 7, 100, 1 },
		{ 200, 0, 0, 100, 0 },		/* held */
		{ 200, 0, 0, 199, 0 },
		{ 200, 0, 0, 200, 1 },		/* its end */
		{ 0, 1, 0, 100, 1 },		/* the probe goes */
		{ 0, 1, 1, 100, 0 },		/* nothing beside it */
	};
	struct breaker	 g;
	size_t		 i;

	(void)state;
	memset(&g, 0, sizeof(g));
	for (i = 0; i < NELEM(t); i++) {
		g.until = t[i].until;
		g.probing = t[i].probing;
		check_u64("admits", i, "breaker_admits", breaker_admits(&g,
		    t[i].busy, t[i].now), t[i].want);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_backoff_jitter_range),
		cmocka_unit_test(test_retry_delay_table),
		cmocka_unit_test(test_pacing_table),
		cmocka_unit_test(test_breaker_backoff_table),
		cmocka_unit_test(test_breaker_table),
		cmocka_unit_test(test_breaker_admits_table),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

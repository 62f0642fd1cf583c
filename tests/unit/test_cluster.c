/*
 * Unit tests for cluster.c's pure part: a node's share of a limit while
 * Redis is away, the slots it may fill just after, the recipients a day
 * it may spend then, and counting the leases each node holds. Table-driven: "got X, want Y".
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "cluster.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

static void
test_share(void **state)
{
	static const struct {
		uint64_t	 limit;
		unsigned	 nodes;
		uint64_t	 want;
	} cases[] = {
		{ 4, 1, 4 },
		{ 4, 2, 2 },
		{ 4, 3, 1 },		/* 4 / 3, rounded down */
		{ 4, 5, 1 },		/* at least 1: delivery never stops */
		{ 4, 0, 4 },		/* no node seen yet: as if alone */
		{ 30, 3, 10 },		/* messages_per_minute */
		{ 0, 3, 0 },		/* 0: no pacing, still */
		{ 10000, 3, 3333 },	/* recipients a day */
	};
	size_t	 i;
	uint64_t got;

	(void)state;
	for (i = 0; i < NELEM(cases); i++) {
		got = cluster_share(cases[i].limit, cases[i].nodes);
		if (got != cases[i].want)
			fail_msg("share(%llu, %u): got %llu, want %llu",
			    (unsigned long long)cases[i].limit, cases[i].nodes,
			    (unsigned long long)got,
			    (unsigned long long)cases[i].want);
	}
}

static void
test_down_slots(void **state)
{
	static const struct {
		unsigned	 max, nodes, others;
		uint64_t	 since, drain;
		unsigned	 want;
	} cases[] = {
		/* Others held nothing: the share at once. */
		{ 4, 3, 0, 0, 1000, 1 },
		{ 4, 2, 0, 0, 1000, 2 },
		/* Others held 4: nothing until their requests may be over. */
		{ 4, 3, 4, 0, 1000, 0 },
		{ 4, 3, 4, 999, 1000, 0 },
		{ 4, 3, 4, 1000, 1000, 1 },
		/* Others held 3: 1 left, which is the share anyway. */
		{ 4, 2, 3, 10, 1000, 1 },
		/* More than max seen (a stale view): 0, not a wrap. */
		{ 4, 2, 7, 10, 1000, 0 },
		/* Alone: all of it once drained. */
		{ 4, 1, 2, 10, 1000, 2 },
		{ 4, 1, 2, 5000, 1000, 4 },
	};
	size_t		 i;
	unsigned	 got;

	(void)state;
	for (i = 0; i < NELEM(cases); i++) {
		got = cluster_down_slots(cases[i].max, cases[i].nodes,
		    cases[i].others, cases[i].since, cases[i].drain);
		if (got != cases[i].want)
			fail_msg("case %zu: got %u, want %u", i, got,
			    cases[i].want);
	}
}

#define DAY	((uint64_t)86400000)
#define T0	((uint64_t)5000000)	/* "now" in most rows */

static void
test_rcpts_wait(void **state)
{
	static const struct {
		uint64_t	 tat, limit;
		size_t		 n;
		uint64_t	 now, want, want_tat;
	} cases[] = {
		/* Full (never used): one recipient is a day / 10,000. */
		{ 0, 10000, 1, T0, 0, T0 + 8640 },
		/* A whole day's worth at once: the burst. */
		{ 0, 10000, 10000, T0, 0, T0 + DAY },
		/* A full bucket from the past counts from now. */
		{ T0 - 999, 10000, 1, T0, 0, T0 + 8640 },
		/* Spent: one more waits one recipient's time. */
		{ T0 + DAY, 10000, 1, T0, 8640, T0 + DAY },
		/* One left: one goes, two wait for the second. */
		{ T0 + DAY - 8640, 10000, 1, T0, 0, T0 + DAY },
		{ T0 + DAY - 8640, 10000, 2, T0, 8640, T0 + DAY - 8640 },
		/* A third of it (Redis away, 3 nodes): 500 cost 3.6 h. */
		{ 0, 3333, 500, T0, 0, T0 + 12961297 },
		{ T0 + DAY, 3333, 500, T0, 12961297, T0 + DAY },
		/* More than the budget (1/64 of it): alone once full... */
		{ 0, 156, 500, T0, 0, T0 + 276923077 },
		/* ...and not before, however long it takes to be. */
		{ T0 + 1000, 156, 500, T0, 1000, T0 + 1000 },
		{ T0 + 2 * DAY, 156, 1, T0, DAY + 553847, T0 + 2 * DAY },
		/* No budget (limit 0), no recipients: nothing counted. */
		{ T0 + DAY, 0, 500, T0, 0, T0 + DAY },
		{ T0 + DAY, 10000, 0, T0, 0, T0 + DAY },
	};
	size_t		 i;
	uint64_t	 tat, got;

	(void)state;
	for (i = 0; i < NELEM(cases); i++) {
		tat = cases[i].tat;
		got = cluster_rcpts_wait(&tat, cases[i].limit, cases[i].n,
		    cases[i].now);
		if (got != cases[i].want || tat != cases[i].want_tat)
			fail_msg("case %zu: got wait %llu tat %llu, want "
			    "%llu, %llu", i, (unsigned long long)got,
			    (unsigned long long)tat,
			    (unsigned long long)cases[i].want,
			    (unsigned long long)cases[i].want_tat);
	}
}

static void
test_count_holders(void **state)
{
	const char	*members[] = { "n1|7", "n0|1", "n1|8", "n1|9", "n0|2",
	    "n2|1" };
	char		 names[CLUSTER_NODES_MAX][CLUSTER_NODE_LEN];
	unsigned	 counts[CLUSTER_NODES_MAX];
	size_t		 n;

	(void)state;
	n = cluster_count_holders(members, NELEM(members), names, counts,
	    CLUSTER_NODES_MAX);
	assert_int_equal(n, 3);
	assert_string_equal(names[0], "n1");
	assert_int_equal(counts[0], 3);
	assert_string_equal(names[1], "n0");
	assert_int_equal(counts[1], 2);
	assert_string_equal(names[2], "n2");
	assert_int_equal(counts[2], 1);
	/* Room for two names: the third node is left out, not overrun. */
	n = cluster_count_holders(members, NELEM(members), names, counts, 2);
	assert_int_equal(n, 2);
	/* "n1" is not "n10". */
	{
		const char *m2[] = { "n10|1", "n1|2" };

		n = cluster_count_holders(m2, 2, names, counts,
		    CLUSTER_NODES_MAX);
		assert_int_equal(n, 2);
		assert_string_equal(names[0], "n10");
		assert_string_equal(names[1], "n1");
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_share),
		cmocka_unit_test(test_down_slots),
		cmocka_unit_test(test_rcpts_wait),
		cmocka_unit_test(test_count_holders),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

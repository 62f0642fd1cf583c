/*
 * Unit tests for stress.c: when stress begins and ends (with its gap),
 * which timeout is in force, what max_connections the descriptors allow,
 * the order in which idle sessions are evicted, and how many event loops
 * [smtp] loops means (smtp_loops.c). Failures print the
 * row, what came out and what should have.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "smtp_loops.h"
#include "stress.h"
#include "table.h"

/* One limit of 200, connections coming and going: on at 140, off below 100. */
static void
test_stress_hysteresis(void **state)
{
	static const struct {
		uint64_t	 n;
		int		 change;	/* enum stress_change */
		int		 active;
	} rows[] = {
		{ 1, STRESS_SAME, 0 },
		{ 139, STRESS_SAME, 0 },
		{ 140, STRESS_ENTERED, 1 },
		{ 141, STRESS_SAME, 1 },
		{ 200, STRESS_SAME, 1 },
		{ 139, STRESS_SAME, 1 },	/* in the gap: stays */
		{ 100, STRESS_SAME, 1 },
		{ 99, STRESS_LEFT, 0 },
		{ 120, STRESS_SAME, 0 },	/* in the gap: stays off */
		{ 98, STRESS_SAME, 0 },
		{ 140, STRESS_ENTERED, 1 },
		{ 0, STRESS_LEFT, 0 },
	};
	struct stress	 st;
	size_t		 i;

	(void)state;
	memset(&st, 0, sizeof(st));
	st.limit = 200;
	for (i = 0; i < NELEM(rows); i++) {
		check_u64("hysteresis", i, "change", stress_update(&st,
		    rows[i].n, 1000 + i), (uint64_t)rows[i].change);
		check_u64("hysteresis", i, "active", st.active,
		    rows[i].active);
		if (rows[i].change != STRESS_SAME)
			check_u64("hysteresis", i, "since", st.since_ms,
			    1000 + i);
	}
	check_u64("hysteresis", 0, "entered", st.entered, 2);
}

/* A limit of 1 (or 2) still switches: on at one connection, off at none. */
static void
test_stress_tiny_limit(void **state)
{
	struct stress	 st;

	(void)state;
	memset(&st, 0, sizeof(st));
	st.limit = 1;
	assert_int_equal(stress_update(&st, 1, 5), STRESS_ENTERED);
	assert_int_equal(stress_update(&st, 0, 6), STRESS_LEFT);
}

static void
test_stress_timeout(void **state)
{
	struct stress	 st;

	(void)state;
	memset(&st, 0, sizeof(st));
	assert_int_equal(stress_timeout(&st, 300000, 10000), 300000);
	st.active = 1;
	assert_int_equal(stress_timeout(&st, 300000, 10000), 10000);
	/* A stress timeout longer than the normal one never lengthens it. */
	assert_int_equal(stress_timeout(&st, 5000, 10000), 5000);
}

static void
test_conn_limit_table(void **state)
{
	static const struct {
		uint64_t	 configured, nofile, want, allowed;
	} rows[] = {
		{ 0, 1024, 1024 - STRESS_FD_RESERVE, 1024 - STRESS_FD_RESERVE },
		{ 0, 20000, 20000 - STRESS_FD_RESERVE,
		    20000 - STRESS_FD_RESERVE },
		{ 0, 1048576, STRESS_MAX_CONN, 1048576 - STRESS_FD_RESERVE },
		{ 200, 20000, 200, 20000 - STRESS_FD_RESERVE },
		{ 100000, 20000, 20000 - STRESS_FD_RESERVE,
		    20000 - STRESS_FD_RESERVE },	/* lowered */
		{ 0, 100, 1, 1 },			/* below the reserve */
		{ 5, 0, 1, 1 },
	};
	uint64_t	 allowed, got;
	size_t		 i;

	(void)state;
	for (i = 0; i < NELEM(rows); i++) {
		got = stress_conn_limit(rows[i].configured, rows[i].nofile,
		    &allowed);
		check_u64("conn_limit", i, "limit", got, rows[i].want);
		check_u64("conn_limit", i, "allowed", allowed,
		    rows[i].allowed);
	}
}

/*
 * Five sessions; commands, a transaction and a close reorder them; the
 * victims come out longest idle first and never one that is off the list.
 */
static void
test_idle_order(void **state)
{
	struct idle_list	 l = TAILQ_HEAD_INITIALIZER(l);
	struct idle_entry	 e[5], *v;
	static const size_t	 want[] = { 2, 0, 4 };
	size_t			 i;

	(void)state;
	memset(e, 0, sizeof(e));
	for (i = 0; i < 5; i++)
		idle_touch(&l, &e[i], 100 + i);		/* connect */
	idle_touch(&l, &e[1], 200);	/* a command: youngest now */
	idle_remove(&l, &e[3]);		/* MAIL: in a transaction */
	idle_remove(&l, &e[3]);		/* harmless twice */
	idle_touch(&l, &e[0], 201);
	idle_touch(&l, &e[4], 202);
	idle_touch(&l, &e[1], 203);
	/* Idle since: 2 @102, 0 @201, 4 @202, 1 @203; 3 is off. */
	for (i = 0; i < NELEM(want); i++) {
		v = idle_oldest(&l);
		assert_non_null(v);
		check_u64("idle", i, "victim", (uint64_t)(v - e), want[i]);
		idle_remove(&l, v);
	}
	idle_touch(&l, &e[3], 300);	/* the transaction ended */
	check_u64("idle", 3, "victim", (uint64_t)(idle_oldest(&l) - e), 1);
	idle_remove(&l, &e[1]);
	check_u64("idle", 4, "victim", (uint64_t)(idle_oldest(&l) - e), 3);
	idle_remove(&l, &e[3]);
	assert_null(idle_oldest(&l));
}

/* [smtp] loops on so many cores: 0 is one per core but one. */
static void
test_loops_table(void **state)
{
	static const struct {
		uint64_t	 configured;
		long		 ncpu;
		uint64_t	 want;
	} rows[] = {
		{ 0, 1, 1 }, { 0, 2, 1 }, { 0, 3, 2 }, { 0, 8, 7 },
		{ 0, 64, SMTP_LOOPS_AUTO_MAX },
		{ 0, -1, 1 },			/* sysconf failed */
		{ 2, 2, 2 }, { 3, 1, 3 },	/* as configured */
		{ 1000, 4, SMTP_LOOPS_MAX },
	};
	size_t		 i;

	(void)state;
	for (i = 0; i < NELEM(rows); i++)
		check_u64("loops", i, "loops", smtp_loops_want(
		    rows[i].configured, rows[i].ncpu), rows[i].want);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stress_hysteresis),
		cmocka_unit_test(test_stress_tiny_limit),
		cmocka_unit_test(test_stress_timeout),
		cmocka_unit_test(test_conn_limit_table),
		cmocka_unit_test(test_idle_order),
		cmocka_unit_test(test_loops_table),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

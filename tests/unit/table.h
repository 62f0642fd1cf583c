/*
 * table.h - for the table-driven unit programs (after cmocka.h): NELEM,
 * and check_u64, which fails with the table's name and row, and what
 * came out against what should have.
 */
#ifndef RELAYD_TEST_TABLE_H
#define RELAYD_TEST_TABLE_H

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

static inline void
check_u64(const char *table, size_t row, const char *what, uint64_t got,
    uint64_t want)
{
	if (got == want)
		return;
	print_error("%s row %zu: %s: got %llu, want %llu\n", table, row, what,
	    (unsigned long long)got, (unsigned long long)want);
	fail();
}

#endif

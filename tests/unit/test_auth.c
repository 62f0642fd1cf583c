/* Unit tests for auth.c: which mechanisms EHLO offers, failure counting. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "auth.h"

#define C	AUTH_SECRET_CRYPT
#define S	AUTH_SECRET_SCRAM
#define M	AUTH_SECRET_CRAM

/* why: the start of each why line, in order. */
static void
test_offer(void **state)
{
	static const struct {
		const char	*names[4];
		unsigned	 secrets[4];
		size_t		 n;
		unsigned	 supported;
		const char	*offered, *accepted;
		const char	*why[AUTH_WHY_MAX];
	} cases[] = {
		/* relayctl passwd for everyone: all but CRAM-MD5. */
		{ { "alice", "carol" }, { C | S, C | S }, 2, AUTH_MECH_ALL,
		  "PLAIN LOGIN SCRAM-SHA-256", "PLAIN LOGIN SCRAM-SHA-256",
		  { "CRAM-MD5 not offered: no user has a cram-md5 secret" } },
		/* One --cram-md5 user: CRAM-MD5 by name only (issue 15). */
		{ { "alice", "bob" }, { C | S, C | S | M }, 2, AUTH_MECH_ALL,
		  "PLAIN LOGIN SCRAM-SHA-256",
		  "PLAIN LOGIN SCRAM-SHA-256 CRAM-MD5",
		  { "CRAM-MD5 not offered: user alice has no cram-md5 secret "
		    "(still accepted when a client asks for it by name)" } },
		/* Everyone has cram-md5: offered. */
		{ { "bob", "dave" }, { C | S | M, M }, 2, AUTH_MECH_ALL,
		  "PLAIN LOGIN CRAM-MD5", "PLAIN LOGIN SCRAM-SHA-256 CRAM-MD5",
		  { "SCRAM-SHA-256 not offered: user dave has no scram-sha-256 "
		    "secret" } },
		/* crypt-only and cram-only: PLAIN and LOGIN check both. */
		{ { "alice", "bob", "carol" }, { C, M, C }, 3, AUTH_MECH_ALL,
		  "PLAIN LOGIN", "PLAIN LOGIN CRAM-MD5",
		  { "SCRAM-SHA-256 not offered: no user has a scram-sha-256 "
		    "secret",
		    "CRAM-MD5 not offered: users alice, carol have no "
		    "cram-md5 secret" } },
		/* A SCRAM-only user: PLAIN and LOGIN cannot check him. */
		{ { "alice", "sam" }, { C | S, S }, 2, AUTH_MECH_ALL,
		  "SCRAM-SHA-256", "PLAIN LOGIN SCRAM-SHA-256",
		  { "PLAIN and LOGIN not offered: user sam has no crypt or "
		    "cram-md5 secret",
		    "CRAM-MD5 not offered: no user" } },
		/* Nothing works for everyone: all that work for some. */
		{ { "alice", "sam" }, { C, S }, 2, AUTH_MECH_ALL,
		  "PLAIN LOGIN SCRAM-SHA-256", "PLAIN LOGIN SCRAM-SHA-256",
		  { "PLAIN and LOGIN not offered: user sam has",
		    "SCRAM-SHA-256 not offered: user alice has",
		    "CRAM-MD5 not offered: no user",
		    "no mechanism works for every user: offering PLAIN LOGIN "
		    "SCRAM-SHA-256" } },
		/* A libgsasl without SCRAM. */
		{ { "alice" }, { C | S }, 1, AUTH_MECH_PLAIN | AUTH_MECH_LOGIN |
		  AUTH_MECH_CRAM, "PLAIN LOGIN", "PLAIN LOGIN",
		  { "SCRAM-SHA-256 not offered: this libgsasl cannot do it",
		    "CRAM-MD5 not offered: no user" } },
	};
	struct auth_offer	 o;
	const char		*names[4];
	size_t			 i, j, k;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (j = 0; j < cases[i].n; j++)
			names[j] = cases[i].names[j];
		auth_offer(names, cases[i].secrets, cases[i].n,
		    cases[i].supported, &o);
		if (strcmp(o.offered, cases[i].offered) != 0)
			fail_msg("case %zu: offered \"%s\", want \"%s\"", i,
			    o.offered, cases[i].offered);
		if (strcmp(o.accepted, cases[i].accepted) != 0)
			fail_msg("case %zu: accepted \"%s\", want \"%s\"", i,
			    o.accepted, cases[i].accepted);
		for (k = 0; k < AUTH_WHY_MAX && cases[i].why[k] != NULL; k++)
			;
		if (o.nwhy != k)
			fail_msg("case %zu: %zu why lines, want %zu (first: "
			    "\"%s\")", i, o.nwhy, k, o.nwhy ? o.why[0] : "");
		for (j = 0; j < k; j++)
			if (strstr(o.why[j], cases[i].why[j]) == NULL)
				fail_msg("case %zu: why \"%s\", want \"%s\"", i,
				    o.why[j], cases[i].why[j]);
	}
}

/* Many users without a secret: a few named, the rest counted. */
static void
test_offer_many(void **state)
{
	static char		 bufs[100][16];
	const char		*names[100];
	unsigned		 secrets[100];
	struct auth_offer	 o;
	size_t			 i;

	for (i = 0; i < 100; i++) {
		snprintf(bufs[i], sizeof(bufs[i]), "printer%02zu", i);
		names[i] = bufs[i];
		secrets[i] = i == 0 ? (C | M) : C;
	}
	auth_offer(names, secrets, 100, AUTH_MECH_ALL, &o);
	assert_string_equal(o.offered, "PLAIN LOGIN");
	assert_int_equal(o.nwhy, 2);
	if (strstr(o.why[1], "CRAM-MD5 not offered: users printer01, "
	    "printer02") == NULL || strstr(o.why[1], " more have no cram-md5 "
	    "secret") == NULL)
		fail_msg("got \"%s\"", o.why[1]);
}

static void
test_tally(void **state)
{
	static const struct {
		const char	*user, *mech;
		int		 want;
	} steps[] = {
		/* smtplib's login(): each mechanism with one password */
		{ "alice", "CRAM-MD5", 1 },
		{ "alice", "PLAIN", 0 },
		{ "alice", "LOGIN", 0 },
		/* a mechanism again: a new guess */
		{ "alice", "PLAIN", 1 },
		{ "alice", "LOGIN", 0 },
		{ "alice", "LOGIN", 1 },
		/* another user counts; and back again counts */
		{ "bob", "SCRAM-SHA-256", 1 },
		{ "alice", "SCRAM-SHA-256", 1 },
		{ "alice", "PLAIN", 0 },
		/* no user named (a malformed PLAIN) is a user of its own */
		{ NULL, "PLAIN", 1 },
		{ NULL, "LOGIN", 0 },
		/* a name that is no mechanism always counts */
		{ NULL, "FOO", 1 },
		{ NULL, "FOO", 1 },
	};
	struct auth_tally	 t = { NULL, 0 };
	size_t			 i;
	int			 got;

	for (i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		got = auth_tally_count(&t, steps[i].user, steps[i].mech);
		if (got != steps[i].want)
			fail_msg("step %zu (%s %s): got %d, want %d", i,
			    steps[i].user ? steps[i].user : "-", steps[i].mech,
			    got, steps[i].want);
	}
	auth_tally_clear(&t);
	assert_null(t.user);
	/* after a clear, the first failure counts */
	assert_int_equal(auth_tally_count(&t, "alice", "PLAIN"), 1);
	auth_tally_clear(&t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_offer),
		cmocka_unit_test(test_offer_many),
		cmocka_unit_test(test_tally),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

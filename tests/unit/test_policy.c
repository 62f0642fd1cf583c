/* Unit tests for policy.c: sender patterns, rules, From: addresses. */
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "config.h"
#include "mime.h"
#include "policy.h"

static void
test_patterns(void **state)
{
	static const struct { const char *pat, *addr; int want; } cases[] = {
		{ "scanner@contoso.com", "scanner@contoso.com", 1 },
		{ "scanner@contoso.com", "SCANNER@Contoso.COM", 1 },
		{ "scanner@contoso.com", "ceo@contoso.com", 0 },
		{ "*@printers.contoso.com", "p1@printers.contoso.com", 1 },
		{ "*@printers.contoso.com", "p1@PRINTERS.contoso.com", 1 },
		{ "*@printers.contoso.com", "ceo@contoso.com", 0 },
		/* A look-alike domain is another domain. */
		{ "*@contoso.com", "x@evilcontoso.com", 0 },
		{ "*@contoso.com", "x@contoso.com.evil.test", 0 },
		{ "*", "anyone@anywhere.test", 1 },
		{ "*@contoso.com", "no-at-sign", 0 },
	};
	size_t	 i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (policy_pattern_match(cases[i].pat, cases[i].addr) !=
		    cases[i].want)
			fail_msg("case %zu: %s vs %s", i, cases[i].pat,
			    cases[i].addr);
}

static struct sockaddr_in
v4(const char *ip)
{
	struct sockaddr_in	 sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	inet_pton(AF_INET, ip, &sin.sin_addr);
	return sin;
}

static void
test_rules(void **state)
{
	char			 s1[] = "scanner@contoso.com";
	char			 s2[] = "*@printers.contoso.com";
	char			 user[] = "scanner1";
	char			*p1[] = { s1, s2 };
	char			*p2[] = { s2 };
	struct sender_rule	 rules[2];
	struct config		 cfg;
	struct sockaddr_in	 in_net = v4("10.20.30.5"), out = v4("192.0.2.9");
	const struct sockaddr	*a = (struct sockaddr *)&in_net;
	const struct sockaddr	*b = (struct sockaddr *)&out;

	memset(&cfg, 0, sizeof(cfg));
	memset(rules, 0, sizeof(rules));
	rules[0].user = user;
	rules[0].patterns = p1;
	rules[0].npatterns = 2;
	addr_parse_cidr("10.20.30.0/24", &rules[1].net);
	rules[1].patterns = p2;
	rules[1].npatterns = 1;
	cfg.senders = rules;
	cfg.nsenders = 2;

	/* No rule applies: anything goes. */
	assert_int_equal(policy_sender_ok(&cfg, NULL, b, "ceo@contoso.com"),
	    1);
	/* The user's rule. */
	assert_int_equal(policy_sender_ok(&cfg, "scanner1", b,
	    "scanner@contoso.com"), 1);
	assert_int_equal(policy_sender_ok(&cfg, "scanner1", b,
	    "ceo@contoso.com"), 0);
	/* The network's rule. */
	assert_int_equal(policy_sender_ok(&cfg, NULL, a,
	    "p7@printers.contoso.com"), 1);
	assert_int_equal(policy_sender_ok(&cfg, NULL, a, "ceo@contoso.com"),
	    0);
	/* Another user from elsewhere: no rule, free. */
	assert_int_equal(policy_sender_ok(&cfg, "erp", b, "ceo@contoso.com"),
	    1);
	/* Both apply: either allows. */
	assert_int_equal(policy_sender_ok(&cfg, "scanner1", a,
	    "scanner@contoso.com"), 1);
}

static void
test_rcpt_domains(void **state)
{
	char		 d1[] = "contoso.com", d2[] = "fabrikam.com";
	char		*doms[] = { d1, d2 };
	struct config	 cfg;

	memset(&cfg, 0, sizeof(cfg));
	assert_int_equal(policy_rcpt_ok(&cfg, "a@anything.test"), 1);
	cfg.rcpt_domains = doms;
	cfg.nrcpt_domains = 2;
	assert_int_equal(policy_rcpt_ok(&cfg, "a@Contoso.COM"), 1);
	assert_int_equal(policy_rcpt_ok(&cfg, "b@fabrikam.com"), 1);
	assert_int_equal(policy_rcpt_ok(&cfg, "c@sub.contoso.com"), 0);
	assert_int_equal(policy_rcpt_ok(&cfg, "d@gmail.test"), 0);
	assert_int_equal(policy_rcpt_ok(&cfg, "postmaster"), 0);
}

static void
test_from(void **state)
{
	static const struct { const char *head; const char *want; } cases[] = {
		{ "From: a@b.test\r\nTo: x@y.test\r\n\r\nFrom: body@no\r\n",
		  "a@b.test" },
		{ "Subject: s\r\nfrom: \"CEO, Big\" <ceo@contoso.test>\r\n\r\n",
		  "ceo@contoso.test" },
		{ "From: A <a@b.test>,\r\n\tB <b@c.test>\r\n\r\n",
		  "a@b.test b@c.test" },
		{ "From: =?utf-8?q?J=C3=B6rg?= <j@d.test>\r\n\r\n", "j@d.test" },
		{ "From: team: a@b.test, c@d.test;\r\n\r\n", "a@b.test c@d.test" },
		{ "To: x@y.test\r\n\r\n", "" },
		{ "X-From: spoof@e.test\r\nFrom: real@f.test\r\n\r\n",
		  "real@f.test" },
	};
	char	 got[256], **list;
	size_t	 i, j;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		list = policy_from_addresses(cases[i].head,
		    strlen(cases[i].head));
		got[0] = '\0';
		for (j = 0; list[j] != NULL; j++)
			snprintf(got + strlen(got), sizeof(got) - strlen(got),
			    "%s%s", j ? " " : "", list[j]);
		policy_free_list(list);
		if (strcmp(got, cases[i].want) != 0)
			fail_msg("case %zu: got \"%s\", want \"%s\"", i, got,
			    cases[i].want);
	}
}

/* [graph] mailbox, decided once at commit: a table of cases. */
static void
test_sending_mailbox(void **state)
{
	static const char from[] = "Subject: x\r\nFrom: \"Scan\" "
	    "<Scan@Example.com>, b@example.com\r\n\r\nFrom: body@x.y\r\n";
	static const char nofrom[] = "Subject: x\r\n\r\n";
	static const char nomailbox[] = "From: undisclosed\r\n\r\n";
	static const char grouped[] = "From: team: a@team.example;\r\n\r\n";
	static const struct {
		const char	*mode, *mail_from, *head, *want;
		int		 needs;
	} cases[] = {
		{ "fixed@example.com", "", from, "fixed@example.com", 0 },
		{ "fixed@example.com", "s@x.y", NULL, "fixed@example.com", 0 },
		{ "envelope", "s@x.y", from, "s@x.y", 0 },
		{ "envelope", "", from, "Scan@Example.com", 1 },
		{ "envelope", "", nofrom, "<>", 1 },
		{ "envelope", "", NULL, "<>", 1 },
		{ "envelope", "", nomailbox, "<>", 1 },
		{ "from", "s@x.y", from, "Scan@Example.com", 1 },
		{ "from", "s@x.y", nofrom, "s@x.y", 1 },
		{ "from", "s@x.y", nomailbox, "s@x.y", 1 },
		{ "from", "", grouped, "a@team.example", 1 },
		{ "from", "", nofrom, "<>", 1 },
	};
	char	*got, longfrom[600];
	size_t	 i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(policy_mailbox_needs_from(cases[i].mode,
		    cases[i].mail_from), cases[i].needs);
		got = policy_sending_mailbox(cases[i].mode,
		    cases[i].mail_from, cases[i].head, cases[i].head != NULL ?
		    strlen(cases[i].head) : 0, 320);
		if (strcmp(got, cases[i].want) != 0)
			fail_msg("case %zu: got \"%s\", want \"%s\"", i, got,
			    cases[i].want);
		free(got);
	}
	/* A From: address too long to store: the envelope sender instead. */
	snprintf(longfrom, sizeof(longfrom), "From: %0400d@example.com\r\n"
	    "\r\n", 0);
	got = policy_sending_mailbox("from", "s@x.y", longfrom,
	    strlen(longfrom), 320);
	assert_string_equal(got, "s@x.y");
	free(got);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_patterns),
		cmocka_unit_test(test_rules),
		cmocka_unit_test(test_rcpt_domains),
		cmocka_unit_test(test_from),
		cmocka_unit_test(test_sending_mailbox),
	};

	mime_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}

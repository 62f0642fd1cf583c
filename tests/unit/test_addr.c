/* Unit tests for addr.c: listen addresses and CIDR matching. */
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "addr.h"

static struct sockaddr_storage
sa_of(const char *ip)
{
	struct sockaddr_storage	 ss;

	memset(&ss, 0, sizeof(ss));
	if (strchr(ip, ':') != NULL) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		s6->sin6_family = AF_INET6;
		inet_pton(AF_INET6, ip, &s6->sin6_addr);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		s4->sin_family = AF_INET;
		inet_pton(AF_INET, ip, &s4->sin_addr);
	}
	return ss;
}

static void
test_hostport(void **state)
{
	static const struct { const char *in; int ok; } cases[] = {
		{ "127.0.0.1:25", 0 }, { "[::1]:2525", 0 }, { "*:25", 0 },
		{ "0.0.0.0:465", 0 }, { "[::]:25", 0 },
		{ "127.0.0.1", -1 }, { "127.0.0.1:0", -1 }, { ":25", -1 },
		{ "::1:25", -1 }, { "[::1]25", -1 }, { "host.example:25", -1 },
		{ "127.0.0.1:65536", -1 }, { "[]:25", -1 },
	};
	struct sockaddr_storage	 ss;
	socklen_t		 len;
	size_t			 i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (addr_parse_hostport(cases[i].in, &ss, &len) != cases[i].ok)
			fail_msg("\"%s\": want %d", cases[i].in, cases[i].ok);
}

static void
test_cidr_match(void **state)
{
	static const struct {
		const char	*net;
		const char	*ip;
		int		 match;
	} cases[] = {
		{ "10.0.0.0/8", "10.1.2.3", 1 },
		{ "10.0.0.0/8", "11.0.0.1", 0 },
		{ "192.0.2.7", "192.0.2.7", 1 },
		{ "192.0.2.7", "192.0.2.8", 0 },
		{ "192.0.2.0/25", "192.0.2.127", 1 },
		{ "192.0.2.0/25", "192.0.2.128", 0 },
		{ "0.0.0.0/0", "203.0.113.9", 1 },
		{ "2001:db8::/32", "2001:db8:1::5", 1 },
		{ "2001:db8::/32", "2001:db9::5", 0 },
		{ "::1/128", "::1", 1 },
		{ "127.0.0.0/8", "::ffff:127.0.0.1", 1 },	/* v4-mapped */
		{ "127.0.0.0/8", "::1", 0 },
		{ "::1/128", "127.0.0.1", 0 },
	};
	struct netmask		 nm;
	char			 buf[64];
	struct sockaddr_storage	 ss;
	size_t			 i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(addr_parse_cidr(cases[i].net, &nm), 0);
		ss = sa_of(cases[i].ip);
		if (addr_match(&nm, (struct sockaddr *)&ss) != cases[i].match)
			fail_msg("%s in %s: want %d", cases[i].ip,
			    cases[i].net, cases[i].match);
	}
	assert_int_equal(addr_parse_cidr("10.0.0.0/33", &nm), -1);
	assert_int_equal(addr_parse_cidr("2001:db8::/129", &nm), -1);
	assert_int_equal(addr_parse_cidr("10.0.0/8", &nm), -1);
	assert_int_equal(addr_parse_cidr("10.0.0.0/", &nm), -1);
	/* Host bits set: refused, with the network it means. */
	assert_int_equal(addr_parse_cidr("127.0.0.1/8", &nm), -2);
	addr_net_text(&nm, buf, sizeof(buf));
	assert_string_equal(buf, "127.0.0.0/8");
	assert_int_equal(addr_parse_cidr("2001:db8::1/64", &nm), -2);
	addr_net_text(&nm, buf, sizeof(buf));
	assert_string_equal(buf, "2001:db8::/64");
}

static void
test_ntop(void **state)
{
	struct sockaddr_storage	 ss = sa_of("::ffff:192.0.2.1");
	char			 buf[ADDR_STRLEN];

	(void)state;
	assert_string_equal(addr_ntop((struct sockaddr *)&ss, buf,
	    sizeof(buf)), "192.0.2.1");
	ss = sa_of("2001:db8::1");
	((struct sockaddr_in6 *)&ss)->sin6_port = htons(25);
	assert_string_equal(addr_ntop_port((struct sockaddr *)&ss, buf,
	    sizeof(buf)), "[2001:db8::1]:25");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hostport),
		cmocka_unit_test(test_cidr_match),
		cmocka_unit_test(test_ntop),
	};

	return cmocka_run_group_tests_name("addr", tests, NULL, NULL);
}

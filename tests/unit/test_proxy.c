/* Unit tests for proxy.c: PROXY protocol v1 and v2 headers. */
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "proxy.h"

static const char sig[] = "\r\n\r\n\0\r\nQUIT\n";

static void
test_v1(void **state)
{
	static const struct {
		const char	*in;
		int		 want;
		const char	*addr;	/* or NULL */
		size_t		 used;
	} cases[] = {
		{ "PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\nEHLO x\r\n", 1,
		  "192.0.2.7", 44 },
		{ "PROXY TCP6 2001:db8::7 2001:db8::1 4000 25\r\n", 1,
		  "2001:db8::7", 44 },
		{ "PROXY UNKNOWN\r\n", 1, NULL, 15 },
		{ "PROXY TCP4 192.0.2.7 198.51.100.1 56324", 0, NULL, 0 },
		{ "PRO", 0, NULL, 0 },
		{ "PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\n", -1, NULL, 0 },
		{ "PROXY TCP4 192.0.2.999 198.51.100.1 1 25\r\n", -1, NULL, 0 },
		{ "PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n", -1, NULL, 0 },
		{ "PROXY UDP4 192.0.2.7 198.51.100.1 1 25\r\n", -1, NULL, 0 },
		{ "PROXY TCP4 2001:db8::7 198.51.100.1 1 25\r\n", -1, NULL, 0 },
		{ "EHLO client.example\r\n", -1, NULL, 0 },
		{ "\x16\x03\x01\x02\x00", -1, NULL, 0 },
	};
	struct sockaddr_storage	 ss;
	const char		*why;
	char			 ip[64];
	size_t			 i, used;
	int			 r;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		used = 0;
		r = proxy_parse((const unsigned char *)cases[i].in,
		    strlen(cases[i].in), &ss, &used, &why);
		if (r != cases[i].want)
			fail_msg("case %zu: got %d, want %d", i, r,
			    cases[i].want);
		if (r != 1)
			continue;
		assert_int_equal(used, cases[i].used);
		if (cases[i].addr == NULL) {
			assert_int_equal(ss.ss_family, AF_UNSPEC);
			continue;
		}
		if (ss.ss_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->
			    sin_addr, ip, sizeof(ip));
		else
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->
			    sin6_addr, ip, sizeof(ip));
		assert_string_equal(ip, cases[i].addr);
	}
}

static size_t
v2(unsigned char *buf, unsigned char cmd, unsigned char fam,
    const void *body, size_t len)
{
	memcpy(buf, sig, 12);
	buf[12] = cmd;
	buf[13] = fam;
	buf[14] = (unsigned char)(len >> 8);
	buf[15] = (unsigned char)len;
	memcpy(buf + 16, body, len);
	return 16 + len;
}

static void
test_v2(void **state)
{
	unsigned char		 buf[512], body[64];
	struct sockaddr_storage	 ss;
	struct sockaddr_in	*sin = (struct sockaddr_in *)&ss;
	const char		*why;
	size_t			 n, used;

	memset(body, 0, sizeof(body));
	inet_pton(AF_INET, "192.0.2.7", body);
	inet_pton(AF_INET, "198.51.100.1", body + 4);
	body[8] = 0xdc;
	body[9] = 0x04;
	n = v2(buf, 0x21, 0x11, body, 12);
	assert_int_equal(proxy_parse(buf, n, &ss, &used, &why), 1);
	assert_int_equal(used, 28);
	assert_int_equal(ss.ss_family, AF_INET);
	assert_int_equal(ntohl(sin->sin_addr.s_addr), 0xc0000207);
	assert_int_equal(ntohs(sin->sin_port), 0xdc04);
	/* With TLVs after the addresses: all of it is consumed. */
	n = v2(buf, 0x21, 0x11, body, 40);
	assert_int_equal(proxy_parse(buf, n, &ss, &used, &why), 1);
	assert_int_equal(used, 56);
	/* Cut short: more is needed. */
	assert_int_equal(proxy_parse(buf, 20, &ss, &used, &why), 0);
	assert_int_equal(proxy_parse(buf, 8, &ss, &used, &why), 0);
	/* LOCAL (health checks): keep the peer's address. */
	n = v2(buf, 0x20, 0x00, body, 0);
	assert_int_equal(proxy_parse(buf, n, &ss, &used, &why), 1);
	assert_int_equal(ss.ss_family, AF_UNSPEC);
	/* IPv6. */
	memset(body, 0, sizeof(body));
	inet_pton(AF_INET6, "2001:db8::7", body);
	n = v2(buf, 0x21, 0x21, body, 36);
	assert_int_equal(proxy_parse(buf, n, &ss, &used, &why), 1);
	assert_int_equal(ss.ss_family, AF_INET6);
	/* Wrong version, unknown command, UDP, short address block. */
	n = v2(buf, 0x11, 0x11, body, 12);
	assert_int_equal(proxy_parse(buf, n, &ss, &used, &why), -1);
	n = v2(buf, 0x22, 0x11, body, 12);
	assert_int_equal(proxy_parse(buf, n, &ss, &used, &why), -1);
	n = v2(buf, 0x21, 0x12, body, 12);
	assert_int_equal(proxy_parse(buf, n, &ss, &used, &why), -1);
	n = v2(buf, 0x21, 0x11, body, 8);
	assert_int_equal(proxy_parse(buf, n, &ss, &used, &why), -1);
	/* Longer than relayd reads. */
	buf[14] = 0xff;
	buf[15] = 0xff;
	assert_int_equal(proxy_parse(buf, 16, &ss, &used, &why), -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_v1),
		cmocka_unit_test(test_v2),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

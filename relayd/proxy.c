/*
 * proxy.c - the PROXY protocol header, as HAProxy and cloud load balancers
 * send it before the client's first byte, so relayd can apply its policy
 * to the real client address. Version 1 is one text line
 * ("PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\r\n"); version 2 is a
 * binary block after a 12-byte signature. Only a listener marked proxy
 * reads it; on such a listener a connection without one is refused.
 */
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

static const unsigned char v2_sig[12] = {
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a
};

static int
parse_port(const char *s, uint16_t *port)
{
	char		*end;
	unsigned long	 v = strtoul(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v > 65535 || (s[0] == '0' && s[1]))
		return -1;
	*port = (uint16_t)v;
	return 0;
}

static int
parse_v1(const unsigned char *buf, size_t len, struct sockaddr_storage *ss,
    size_t *used, const char **why)
{
	char			 line[108], *f[6], *save = NULL, *p;
	const unsigned char	*crlf;
	size_t			 n, i;
	uint16_t		 sport, dport;

	crlf = memchr(buf, '\n', len < 107 ? len : 107);
	if (crlf == NULL) {
		if (len >= 107) {
			*why = "PROXY v1 line longer than 107 bytes";
			return -1;
		}
		return 0;
	}
	n = (size_t)(crlf - buf) + 1;
	if (n < 2 || buf[n - 2] != '\r') {
		*why = "PROXY v1 line does not end in CRLF";
		return -1;
	}
	memcpy(line, buf, n - 2);
	line[n - 2] = '\0';
	for (i = 0, p = strtok_r(line, " ", &save); p != NULL && i < 6;
	    p = strtok_r(NULL, " ", &save))
		f[i++] = p;
	if (i >= 2 && strcmp(f[0], "PROXY") == 0 &&
	    strcmp(f[1], "UNKNOWN") == 0) {
		ss->ss_family = AF_UNSPEC;
		*used = n;
		return 1;
	}
	if (i != 6 || p != NULL || strcmp(f[0], "PROXY") != 0 ||
	    parse_port(f[4], &sport) == -1 || parse_port(f[5], &dport) == -1) {
		*why = "malformed PROXY v1 line";
		return -1;
	}
	memset(ss, 0, sizeof(*ss));
	if (strcmp(f[1], "TCP4") == 0) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		struct in_addr dst;

		if (inet_pton(AF_INET, f[2], &sin->sin_addr) != 1 ||
		    inet_pton(AF_INET, f[3], &dst) != 1) {
			*why = "bad address in PROXY v1 line";
			return -1;
		}
		sin->sin_family = AF_INET;
		sin->sin_port = htons(sport);
	} else if (strcmp(f[1], "TCP6") == 0) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		struct in6_addr dst;

		if (inet_pton(AF_INET6, f[2], &sin6->sin6_addr) != 1 ||
		    inet_pton(AF_INET6, f[3], &dst) != 1) {
			*why = "bad address in PROXY v1 line";
			return -1;
		}
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(sport);
	} else {
		*why = "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN";
		return -1;
	}
	*used = n;
	return 1;
}

static int
parse_v2(const unsigned char *buf, size_t len, struct sockaddr_storage *ss,
    size_t *used, const char **why)
{
	size_t	 body;

	if (len < 16)
		return 0;
	if ((buf[12] & 0xf0) != 0x20) {
		*why = "PROXY v2 header with another version";
		return -1;
	}
	body = (size_t)buf[14] << 8 | buf[15];
	if (16 + body > PROXY_HEADER_MAX) {
		*why = "PROXY v2 header too long";
		return -1;
	}
	if (len < 16 + body)
		return 0;
	*used = 16 + body;
	memset(ss, 0, sizeof(*ss));
	if ((buf[12] & 0x0f) == 0x0) {		/* LOCAL: a health check */
		ss->ss_family = AF_UNSPEC;
		return 1;
	}
	if ((buf[12] & 0x0f) != 0x1) {
		*why = "PROXY v2 command is neither LOCAL nor PROXY";
		return -1;
	}
	switch (buf[13]) {
	case 0x11:	/* TCP over IPv4 */
		if (body < 12) {
			*why = "PROXY v2 IPv4 block too short";
			return -1;
		} else {
			struct sockaddr_in *sin = (struct sockaddr_in *)ss;

			sin->sin_family = AF_INET;
			memcpy(&sin->sin_addr, buf + 16, 4);
			memcpy(&sin->sin_port, buf + 24, 2);
		}
		return 1;
	case 0x21:	/* TCP over IPv6 */
		if (body < 36) {
			*why = "PROXY v2 IPv6 block too short";
			return -1;
		} else {
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

			sin6->sin6_family = AF_INET6;
			memcpy(&sin6->sin6_addr, buf + 16, 16);
			memcpy(&sin6->sin6_port, buf + 48, 2);
		}
		return 1;
	case 0x00:	/* UNSPEC */
		ss->ss_family = AF_UNSPEC;
		return 1;
	default:
		*why = "PROXY v2 address family is not TCP over IPv4/IPv6";
		return -1;
	}
}

int
proxy_parse(const unsigned char *buf, size_t len, struct sockaddr_storage *ss,
    size_t *used, const char **why)
{
	size_t	 n = len < sizeof(v2_sig) ? len : sizeof(v2_sig);

	if (memcmp(buf, v2_sig, n) == 0)
		return len < sizeof(v2_sig) ? 0 : parse_v2(buf, len, ss, used,
		    why);
	n = len < 6 ? len : 6;
	if (memcmp(buf, "PROXY ", n) != 0) {
		*why = "no PROXY protocol header";
		return -1;
	}
	return len < 6 ? 0 : parse_v1(buf, len, ss, used, why);
}

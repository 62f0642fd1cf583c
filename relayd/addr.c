/*
 * addr.c - parsing and matching of socket addresses and CIDR networks.
 * Pure functions, no I/O, no name resolution: listen addresses and networks
 * in the config are numeric so that start-up never waits on DNS.
 */
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "util.h"

int
addr_parse_hostport(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char		 host[INET6_ADDRSTRLEN + 2];
	const char	*colon, *port;
	uint64_t	 p;
	size_t		 hlen;

	memset(ss, 0, sizeof(*ss));
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (rb == NULL || rb[1] != ':')
			return -1;
		hlen = (size_t)(rb - s - 1);
		port = rb + 2;
		if (hlen == 0 || hlen >= sizeof(host))
			return -1;
		memcpy(host, s + 1, hlen);
		host[hlen] = '\0';
	} else {
		if ((colon = strrchr(s, ':')) == NULL || strchr(s, ':') != colon)
			return -1;
		hlen = (size_t)(colon - s);
		port = colon + 1;
		if (hlen == 0 || hlen >= sizeof(host))
			return -1;
		memcpy(host, s, hlen);
		host[hlen] = '\0';
	}
	if (parse_u64(port, 1, 65535, &p) == -1)
		return -1;
	if (strcmp(host, "*") == 0)
		strlcpy_r(host, "0.0.0.0", sizeof(host));
	if (s[0] == '[') {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
			return -1;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)p);
		*len = sizeof(*sin6);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
			return -1;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)p);
		*len = sizeof(*sin);
	}
	return 0;
}

int
addr_parse_cidr(const char *s, struct netmask *nm)
{
	char		 buf[INET6_ADDRSTRLEN + 8];
	char		*slash;
	uint64_t	 prefix;
	int		 max, hostbits = 0;
	size_t		 i;

	memset(nm, 0, sizeof(*nm));
	if (strlcpy_r(buf, s, sizeof(buf)) >= sizeof(buf))
		return -1;
	if ((slash = strchr(buf, '/')) != NULL)
		*slash++ = '\0';
	if (inet_pton(AF_INET, buf, nm->addr) == 1) {
		nm->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, buf, nm->addr) == 1) {
		nm->family = AF_INET6;
		max = 128;
	} else
		return -1;
	if (slash == NULL)
		prefix = (uint64_t)max;
	else if (parse_u64(slash, 0, (uint64_t)max, &prefix) == -1)
		return -1;
	nm->prefix = (int)prefix;
	/* Clear host bits: 10.1.2.3/8 is 10.0.0.0/8, but likely a slip. */
	for (i = 0; i < 16; i++) {
		int	 bits = nm->prefix - (int)i * 8;
		uint8_t	 was = nm->addr[i];

		if (bits <= 0)
			nm->addr[i] = 0;
		else if (bits < 8)
			nm->addr[i] &= (uint8_t)(0xff << (8 - bits));
		if (nm->addr[i] != was)
			hostbits = 1;
	}
	return hostbits ? -2 : 0;
}

void
addr_net_text(const struct netmask *nm, char *buf, size_t len)
{
	char	 a[INET6_ADDRSTRLEN];

	if (inet_ntop(nm->family, nm->addr, a, sizeof(a)) == NULL)
		a[0] = '\0';
	snprintf(buf, len, "%s/%d", a, nm->prefix);
}

/* Unwraps ::ffff:a.b.c.d so that IPv4 rules apply to dual-stack sockets. */
static int
addr_bytes(const struct sockaddr *sa, const uint8_t **bytes)
{
	static const uint8_t v4mapped[12] =
	    { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	if (sa->sa_family == AF_INET) {
		*bytes = (const uint8_t *)
		    &((const struct sockaddr_in *)(const void *)sa)->sin_addr;
		return AF_INET;
	}
	if (sa->sa_family == AF_INET6) {
		const uint8_t *b = ((const struct sockaddr_in6 *)
		    (const void *)sa)->sin6_addr.s6_addr;
		if (memcmp(b, v4mapped, sizeof(v4mapped)) == 0) {
			*bytes = b + 12;
			return AF_INET;
		}
		*bytes = b;
		return AF_INET6;
	}
	return -1;
}

int
addr_match(const struct netmask *nm, const struct sockaddr *sa)
{
	const uint8_t	*b = NULL;
	int		 bits = nm->prefix, i;

	if (addr_bytes(sa, &b) != nm->family)
		return 0;
	for (i = 0; bits >= 8; i++, bits -= 8)
		if (b[i] != nm->addr[i])
			return 0;
	if (bits > 0 && (b[i] & (uint8_t)(0xff << (8 - bits))) != nm->addr[i])
		return 0;
	return 1;
}

const char *
addr_ntop(const struct sockaddr *sa, char *buf, size_t len)
{
	const uint8_t	*b = NULL;
	int		 fam;

	if ((fam = addr_bytes(sa, &b)) == -1 ||
	    inet_ntop(fam, b, buf, (socklen_t)len) == NULL)
		strlcpy_r(buf, "unknown", len);
	return buf;
}

const char *
addr_ntop_port(const struct sockaddr *sa, char *buf, size_t len)
{
	char		 host[INET6_ADDRSTRLEN];
	unsigned	 port = 0;

	if (sa->sa_family == AF_INET)
		port = ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port);
	else if (sa->sa_family == AF_INET6)
		port = ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
	if (sa->sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)
		    (const void *)sa)->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, port);
	} else
		snprintf(buf, len, "%s:%u", addr_ntop(sa, host, sizeof(host)),
		    port);
	return buf;
}

void
addr_key(const struct sockaddr *sa, uint8_t key[17])
{
	const uint8_t	*b = NULL;
	int		 fam;

	memset(key, 0, 17);
	if ((fam = addr_bytes(sa, &b)) == -1)
		return;
	key[0] = (uint8_t)fam;
	memcpy(key + 1, b, fam == AF_INET ? 4 : 16);
}

/* addr.h - listen addresses and client networks (CIDR), IPv4 and IPv6. */
#ifndef RELAYD_ADDR_H
#define RELAYD_ADDR_H

#include <sys/socket.h>
#include <stdint.h>

#define ADDR_STRLEN	64	/* "[ffff:...:ffff]:65535" fits */

struct netmask {
	int	 family;	/* AF_INET or AF_INET6 */
	uint8_t	 addr[16];
	int	 prefix;
};

/* "127.0.0.1:2525", "[::1]:25", "*:25" (all IPv4), "[::]:25". */
int	addr_parse_hostport(const char *, struct sockaddr_storage *,
	    socklen_t *);
/*
 * "10.0.0.0/8", "2001:db8::/32", "192.0.2.7" (a host). 0, -1 if it is no
 * network, -2 if it has host bits set (10.1.2.3/8): nm is then the
 * network they were cleared from (10.0.0.0/8).
 */
int	addr_parse_cidr(const char *, struct netmask *);
/* "10.0.0.0/8": a network as text. */
void	addr_net_text(const struct netmask *, char *, size_t);
/* 1 if the address lies in the network; IPv4-mapped IPv6 counts as IPv4. */
int	addr_match(const struct netmask *, const struct sockaddr *);
/* "192.0.2.1" or "2001:db8::1" (no port) into buf. */
const char *addr_ntop(const struct sockaddr *, char *, size_t);
/* With port, bracketing IPv6: "[::1]:25". */
const char *addr_ntop_port(const struct sockaddr *, char *, size_t);
/* A key for per-client counting: the address bytes, family-tagged. */
void	addr_key(const struct sockaddr *, uint8_t[17]);

#endif

/* proxy.h - the PROXY protocol header (HAProxy, v1 text and v2 binary). */
#ifndef RELAYD_PROXY_H
#define RELAYD_PROXY_H

#include <sys/socket.h>
#include <stddef.h>

#define PROXY_HEADER_MAX	4096	/* v2 with TLVs; v1 is at most 107 */

/*
 * Parses a PROXY header at the start of buf. Returns 1 with the client's
 * address in ss (ss_family AF_UNSPEC for "UNKNOWN"/LOCAL: keep the peer's)
 * and the header's length in used; 0 if more bytes are needed; -1 with a
 * reason if it is not a valid header. Pure.
 */
int	proxy_parse(const unsigned char *, size_t, struct sockaddr_storage *,
	    size_t *, const char **);

#endif

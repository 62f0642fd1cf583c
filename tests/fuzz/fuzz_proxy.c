/*
 * fuzz_proxy.c - a PROXY protocol header (v1 text or v2 binary) through
 * proxy_parse(). The session calls it again as more bytes arrive, so a
 * header it accepts must get "need more" (0), never "invalid", from each
 * of its own prefixes, and the same answer again when given alone. Each
 * call gets a buffer of exactly its length, so ASan sees any read past it.
 */
#include <sys/socket.h>
#include <netinet/in.h>

#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "proxy.h"

static int
parse(const uint8_t *data, size_t size, struct sockaddr_storage *ss,
    size_t *used)
{
	unsigned char	*copy = malloc(size > 0 ? size : 1);
	const char	*why = NULL;
	int		 rc;

	if (copy == NULL)
		abort();
	memcpy(copy, data, size);
	*used = 0;
	rc = proxy_parse(copy, size, ss, used, &why);
	free(copy);
	FUZZ_CHECK(rc >= -1 && rc <= 1);
	if (rc == -1)
		FUZZ_CHECK(why != NULL);
	if (rc == 1) {
		FUZZ_CHECK(*used > 0 && *used <= size);
		FUZZ_CHECK(*used <= PROXY_HEADER_MAX);
		FUZZ_CHECK(ss->ss_family == AF_UNSPEC ||
		    ss->ss_family == AF_INET || ss->ss_family == AF_INET6);
	}
	return rc;
}

void
fuzz_proxy_init(void)
{
}

int
fuzz_proxy_one(const uint8_t *data, size_t size)
{
	struct sockaddr_storage	 ss, ss2;
	size_t			 used, used2, k;

	if (parse(data, size, &ss, &used) != 1)
		return 0;
	FUZZ_CHECK(parse(data, used, &ss2, &used2) == 1);
	FUZZ_CHECK(used2 == used && ss2.ss_family == ss.ss_family);
	for (k = 0; k < used; k += k < 128 ? 1 : 61)
		FUZZ_CHECK(parse(data, k, &ss2, &used2) == 0);
	FUZZ_CHECK(parse(data, used - 1, &ss2, &used2) == 0);
	return 0;
}

FUZZ_ENTRY(proxy)

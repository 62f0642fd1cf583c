/*
 * fuzz_token.c - answers from the outside: the token service's JSON
 * through token_parse_answer(), and Graph's through graph_classify() and
 * graph_retry_after_ms(). Byte 0 picks the HTTP status; the rest is the
 * body (also read as a Retry-After value). graph_classify() takes a length
 * and gets a buffer of exactly that, with no NUL after it.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "graph.h"
#include "token.h"

static const long statuses[] = {
	0, 200, 202, 400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 500,
	502, 503, 504, 507, 599, 302,
};
#define NSTATUS	(sizeof(statuses) / sizeof(statuses[0]))
#define NOW_MS	1795000000000LL		/* late 2026 */

void
fuzz_token_init(void)
{
}

int
fuzz_token_one(const uint8_t *data, size_t size)
{
	struct graph_error	 ge;
	enum graph_result	 r;
	char			*body, *exact, *access = NULL, err[512];
	long long		 life = 0, ms;
	long			 status;
	int			 rc;

	if (size < 1)
		return 0;
	status = statuses[data[0] % NSTATUS];
	data++;
	size--;

	body = fuzz_strdup(data, size);
	err[0] = '\0';
	/* status 0 (no answer) never reaches the parser. */
	rc = token_parse_answer(status == 0 ? 200 : status, body, &access,
	    &life, err, sizeof(err));
	if (rc == 0) {
		FUZZ_CHECK(access != NULL && access[0] != '\0');
		FUZZ_CHECK(life > 0);
		free(access);
	} else
		FUZZ_CHECK(rc == -1 && err[0] != '\0' &&
		    strlen(err) < sizeof(err));

	if ((exact = malloc(size > 0 ? size : 1)) == NULL)
		abort();
	memcpy(exact, data, size);
	memset(&ge, 0xa5, sizeof(ge));
	r = graph_classify(status, size > 0 ? exact : NULL, size, &ge);
	FUZZ_CHECK(r == GRAPH_SENT || r == GRAPH_TEMPFAIL ||
	    r == GRAPH_PERMFAIL || r == GRAPH_REAUTH);
	FUZZ_CHECK(memchr(ge.code, '\0', sizeof(ge.code)) != NULL);
	FUZZ_CHECK(memchr(ge.message, '\0', sizeof(ge.message)) != NULL);
	free(exact);

	ms = graph_retry_after_ms(body, NOW_MS);
	FUZZ_CHECK(ms >= -1);
	free(body);
	return 0;
}

FUZZ_ENTRY(token)

/*
 * token_cache.c - an access token kept until 80% of its life, shared by
 * threads: the token source (token.c, in the token process and relayctl)
 * and the delivery process's client (token_client.c) keep one each. One
 * refresh at a time: while it runs, the others keep using a token that
 * still has some life, or wait for it. After a failure nobody asks again until retry_at.
 * Tokens are wiped when dropped.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "token.h"
#include "util.h"

#define TOKEN_MIN_LIFE_MS	30000	/* don't hand out one about to expire */

void
token_cache_init(struct token_cache *c)
{
	memset(c, 0, sizeof(*c));
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
}

static void
wipe(char **s)
{
	if (*s != NULL) {
		explicit_bzero(*s, strlen(*s));
		free(*s);
		*s = NULL;
	}
}

void
token_cache_clear(struct token_cache *c)
{
	wipe(&c->access);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cond);
}

int
token_cache_wait(struct token_cache *c, char *err, size_t errlen)
{
	uint64_t	 now;

	for (;;) {
		now = now_ms();
		if (c->access != NULL && now < c->refresh_at)
			return 1;
		if (c->access != NULL && c->refreshing &&
		    now + TOKEN_MIN_LIFE_MS < c->expires_at)
			return 1;
		if (c->refreshing) {
			pthread_cond_wait(&c->cond, &c->lock);
			continue;
		}
		if (now < c->retry_at) {
			if (c->access != NULL &&
			    now + TOKEN_MIN_LIFE_MS < c->expires_at)
				return 1;
			snprintf(err, errlen, "%s", c->last_err);
			return -1;
		}
		c->refreshing = 1;
		return 0;
	}
}

void
token_cache_put(struct token_cache *c, char *fresh, long long life_ms,
    long long refresh_ms)
{
	uint64_t	 now = now_ms();

	c->refreshing = 0;
	pthread_cond_broadcast(&c->cond);
	if (fresh == NULL)
		return;
	wipe(&c->access);
	c->access = fresh;
	c->expires_at = now + (uint64_t)(life_ms > 0 ? life_ms : 0);
	c->refresh_at = now + (uint64_t)(refresh_ms > 0 ? refresh_ms : 0);
}

int
token_cache_invalidate(struct token_cache *c, const char *bad)
{
	int	 hit = 0;

	/*
	 * Only the first 401 for a token counts: with many requests in
	 * flight they all come back with it, and each must not start a
	 * fetch of its own. A backoff in force stays in force.
	 */
	pthread_mutex_lock(&c->lock);
	if (c->access != NULL && c->expires_at != 0 &&
	    strcmp(c->access, bad) == 0) {
		c->refresh_at = 0;
		c->expires_at = 0;
		hit = 1;
	}
	pthread_mutex_unlock(&c->lock);
	return hit;
}

/* Milliseconds from now to at (0 if past), under the lock. */
static long long
until(struct token_cache *c, const uint64_t *at, int need_token)
{
	long long	 ms = need_token ? -1 : 0;
	uint64_t	 now = now_ms();

	pthread_mutex_lock(&c->lock);
	if ((!need_token || c->access != NULL) && *at > now)
		ms = (long long)(*at - now);
	pthread_mutex_unlock(&c->lock);
	return ms;
}

long long
token_cache_retry_in(struct token_cache *c)
{
	return until(c, &c->retry_at, 0);
}

long long
token_cache_expires_in(struct token_cache *c)
{
	return until(c, &c->expires_at, 1);
}

long long
token_cache_refresh_in(struct token_cache *c)
{
	long long	 ms = until(c, &c->refresh_at, 1);

	return ms < 0 ? 0 : ms;
}

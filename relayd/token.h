/* token.h - the OAuth2 client-credentials token every worker shares. */
#ifndef RELAYD_TOKEN_H
#define RELAYD_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

struct config;
struct token;

/* Reads the client secret or certificate and key; NULL with err if not. */
struct token	*token_new(const struct config *, char *, size_t);
void		 token_free(struct token *);
/*
 * Returns a malloc'd access token good for a while, fetching a new one with
 * the caller's handle when the current one is past 80% of its life. One
 * refresh at a time: others wait for it or keep using a still-valid token.
 * NULL with err when none can be had now (the caller retries later).
 */
char		*token_get(struct token *, CURL *, char *, size_t);
/*
 * Reads the config's credential again (SIGHUP): 1 if it changed (the next
 * token request uses it, at once even after a refusal), 0 if not, -1 with
 * err if it can't be read (the one in use stays).
 */
int		 token_reload(struct token *, const struct config *, char *,
		    size_t);
/* Graph refused this token (401): the next token_get fetches a new one. */
void		 token_invalidate(struct token *, const char *);
/* Milliseconds until the next attempt after a failure (0: any time). */
long long	 token_retry_in(struct token *);
/* Milliseconds until the current token expires, -1 if there is none. */
long long	 token_expires_in(struct token *);

/* Token requests failing now (count 0: the last one worked), for status. */
struct token_failure {
	uint64_t	 since_ms;	/* wall clock of the first in a row */
	unsigned	 count;		/* failures in a row */
	uint64_t	 next_ms;	/* wall clock of the next try, 0: any */
	char		 error[512];	/* the last, with the admin's next step */
};
void		 token_failure(struct token *, struct token_failure *);

/* The scope asked for: {graph_url}/.default, malloc'd. */
char		*token_scope(const struct config *);
/*
 * The token service's answer (status, NUL-terminated body or NULL): 0 with
 * a malloc'd access token and its life in ms, or -1 with the reason (and
 * the admin's next step) in err. Pure; for tests and fuzzing.
 */
int		 token_parse_answer(long, const char *, char **, long long *,
		    char *, size_t);
/* The admin's hint for an AADSTS error code, or NULL. Pure. */
const char	*token_hint(long);

#endif

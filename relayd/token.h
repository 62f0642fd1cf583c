/*
 * token.h - access tokens for Graph requests.
 *
 * struct token is what the delivery threads use (token_client.c): in
 * relayd it asks the token process over a socketpair and caches the
 * answer; in relayctl it wraps a token source of its own. struct
 * token_src (token.c) holds the credential and fetches: only the token
 * process and relayctl have one.
 */
#ifndef RELAYD_TOKEN_H
#define RELAYD_TOKEN_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include <curl/curl.h>

struct config;
struct token;
struct token_src;

/* Token requests failing now (count 0: the last one worked), for status. */
struct token_failure {
	uint64_t	 since_ms;	/* wall clock of the first in a row */
	unsigned	 count;		/* failures in a row */
	uint64_t	 next_ms;	/* wall clock of the next try, 0: any */
	char		 error[512];	/* the last, with the admin's next step */
};

/* --- the cache both keep (token_cache.c) */

struct token_cache {
	pthread_mutex_t	 lock;
	pthread_cond_t	 cond;
	char		*access;
	uint64_t	 refresh_at;	/* CLOCK_MONOTONIC ms */
	uint64_t	 expires_at;
	uint64_t	 retry_at;	/* no new attempt before */
	int		 refreshing;	/* one fetch at a time */
	char		 last_err[512];	/* what stops attempts till retry_at */
};
void		 token_cache_init(struct token_cache *);
void		 token_cache_clear(struct token_cache *);
/*
 * With the lock held (may wait on it): 1, use c->access; 0, the caller
 * fetches (it unlocks, fetches, locks and calls token_cache_put); -1 with
 * err, no token now.
 */
int		 token_cache_wait(struct token_cache *, char *, size_t);
/* With the lock: the fetch is over; fresh (taken) if it worked. */
void		 token_cache_put(struct token_cache *, char *, long long,
		    long long);
/* A token Graph refused: 1 if it was the cached one (now stale). */
int		 token_cache_invalidate(struct token_cache *, const char *);
long long	 token_cache_retry_in(struct token_cache *);
long long	 token_cache_expires_in(struct token_cache *);	/* -1: none */
long long	 token_cache_refresh_in(struct token_cache *);

/* --- the client (token_client.c) */

/* In this process: reads the credential; NULL with err if not. */
struct token	*token_new(const struct config *, char *, size_t);
/* From the token process: connections come by token_connect. */
struct token	*token_remote(const struct config *);
/* A (new) connection to the token process; the old one is closed. */
void		 token_connect(struct token *, int);
/* The token process re-read a changed credential: failures forgotten. */
void		 token_changed(struct token *);
void		 token_free(struct token *);
/*
 * Returns a malloc'd access token good for a while, fetching a new one
 * (with the caller's handle in this process; the token process uses its
 * own) when the current one is past 80% of its life. One refresh at a
 * time: others wait for it or keep using a still-valid token. NULL with
 * err when none can be had now (the caller retries later).
 */
char		*token_get(struct token *, CURL *, char *, size_t);
/*
 * In this process: reads the config's credential again: 1 if it changed,
 * 0 if not, -1 with err if it can't be read (the one in use stays).
 */
int		 token_reload(struct token *, const struct config *, char *,
		    size_t);
/* Graph refused this token (401): the next token_get fetches a new one. */
void		 token_invalidate(struct token *, const char *);
/* Milliseconds until the next attempt after a failure (0: any time). */
long long	 token_retry_in(struct token *);
/* Milliseconds until the current token expires, -1 if there is none. */
long long	 token_expires_in(struct token *);
void		 token_failure(struct token *, struct token_failure *);

/* --- the source (token.c) */

struct token_src *token_src_new(const struct config *, char *, size_t);
void		 token_src_free(struct token_src *);
char		*token_src_get(struct token_src *, CURL *, char *, size_t);
int		 token_src_reload(struct token_src *, const struct config *,
		    char *, size_t);
void		 token_src_invalidate(struct token_src *, const char *);
long long	 token_src_retry_in(struct token_src *);
long long	 token_src_expires_in(struct token_src *);
/* Milliseconds until the token is due for a refresh (0: now). */
long long	 token_src_refresh_in(struct token_src *);
void		 token_src_failure(struct token_src *, struct token_failure *);

/* --- the token process (token_proc.c): runs until SIGTERM; exit code */
int		 token_proc(const char *, const struct config *, int);

/*
 * Between delivery and the token process (SOCK_SEQPACKET): a request, its
 * header and the token Graph refused (401) if any; the answer, its header
 * and the access token if there is one. Times are relative, in ms.
 */
#define TOKEN_WIRE_MAX	16384	/* longest access token carried */
struct token_req {
	uint32_t	 seq;
	uint32_t	 badlen;
};
struct token_rep {
	uint32_t	 seq;
	uint32_t	 len;		/* of the token that follows, 0: none */
	int64_t		 expires_ms;
	int64_t		 refresh_ms;
	int64_t		 retry_ms;
	uint64_t	 fail_since;	/* wall ms */
	uint32_t	 nfails;
	char		 error[512];
};

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

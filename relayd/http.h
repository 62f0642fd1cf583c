/* http.h - libcurl set up once for relayd: TLS, timeouts, one POST helper. */
#ifndef RELAYD_HTTP_H
#define RELAYD_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

struct config;

#define HTTP_BODY_MAX	(64 * 1024)	/* answer bytes kept */

struct http_resp {
	long		 status;		/* 0: no answer */
	char		*body;			/* NUL-terminated, may be NULL */
	size_t		 len;
	char		 request_id[64];
	char		 retry_after[64];
	char		 error[CURL_ERROR_SIZE];	/* why there was no answer */
	int		 sent;			/* no answer, but all sent */
	int		 requests;		/* request heads sent */
	int		 resent;		/* libcurl sent it again */
	size_t		 keep;			/* answer bytes kept */
	uint64_t	 ms;
};

/*
 * Once, before any thread: curl_global_init and the extra CA certificates
 * of [graph] ca_file, which are trusted besides the system's.
 */
int	 http_init(const struct config *, char *, size_t);
void	 http_cleanup(void);
/* A handle for one thread, with relayd's TLS, timeout and keep-alive setup. */
CURL	*http_handle_new(const struct config *);
/*
 * POSTs body to url with the given headers (NULL-terminated). Always fills
 * resp (free with http_resp_clear); returns 0 if an answer came, -1 if not.
 */
int	 http_post(CURL *, const char *, const char *const *, const char *,
	    size_t, struct http_resp *);
/*
 * Any method (GET, POST, PUT, DELETE), keeping up to keep bytes of the
 * answer; POST and PUT send body, the others none. Returns as http_post.
 */
int	 http_request(CURL *, const char *, const char *, const char *const *,
	    const char *, size_t, size_t, struct http_resp *);
void	 http_resp_clear(struct http_resp *);
/* Requests still running after this CLOCK_MONOTONIC ms are cut (stop). */
void	 http_abort_after(uint64_t);
/* 1 once that time has come. */
int	 http_stopping(void);
/* The URL without the password of a user:password@ part, malloc'd. */
char	*http_redact(const char *);
/* Percent-encodes a URL path segment into a malloc'd string. */
char	*http_escape(const char *);

#endif

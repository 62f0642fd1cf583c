/*
 * http.c - libcurl set up once for relayd.
 *
 * Every request verifies TLS (peer and host name) against the system's CAs
 * plus those of [graph] ca_file, which are added to each new TLS context
 * rather than replacing the bundle. Handles are per thread and keep their
 * connections alive between requests. Only the status, a bounded answer
 * body and two headers (request-id, Retry-After) are kept.
 *
 * [graph] proxy, when set, carries every request; when not, libcurl's own
 * environment variables (https_proxy, HTTPS_PROXY, no_proxy...) still
 * apply, as for any curl. Its password is never logged.
 */
#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "autoconf.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "util.h"

static STACK_OF(X509)	*extra_cas;
static _Atomic uint64_t	 abort_at;

int
http_init(const struct config *cfg, char *err, size_t errlen)
{
	X509	*x;
	FILE	*fp;

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(err, errlen, "curl_global_init failed");
		return -1;
	}
	if (cfg->ca_file == NULL)
		return 0;
	if ((fp = fopen(cfg->ca_file, "r")) == NULL) {
		snprintf(err, errlen, "ca_file %s: %s", cfg->ca_file,
		    strerror(errno));
		return -1;
	}
	extra_cas = sk_X509_new_null();
	while ((x = PEM_read_X509(fp, NULL, NULL, NULL)) != NULL)
		sk_X509_push(extra_cas, x);
	fclose(fp);
	if (sk_X509_num(extra_cas) == 0) {
		snprintf(err, errlen, "ca_file %s: no PEM certificate in it",
		    cfg->ca_file);
		return -1;
	}
	return 0;
}

void
http_cleanup(void)
{
	if (extra_cas != NULL)
		sk_X509_pop_free(extra_cas, X509_free);
	extra_cas = NULL;
	curl_global_cleanup();
}

void
http_abort_after(uint64_t ms)
{
	atomic_store(&abort_at, ms);
}

int
http_stopping(void)
{
	uint64_t	 at = atomic_load(&abort_at);

	return at != 0 && now_ms() >= at;
}

static CURLcode
add_cas(CURL *curl, void *sslctx, void *arg)
{
	X509_STORE	*st = SSL_CTX_get_cert_store((SSL_CTX *)sslctx);
	int		 i;

	for (i = 0; i < sk_X509_num(extra_cas); i++)
		X509_STORE_add_cert(st, sk_X509_value(extra_cas, i));
	ERR_clear_error();	/* "already in store" is fine */
	return CURLE_OK;
}

static int
progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut,
    curl_off_t un)
{
	uint64_t	 at = atomic_load(&abort_at);

	return at != 0 && now_ms() >= at;
}

CURL *
http_handle_new(const struct config *cfg)
{
	CURL	*c;

	if ((c = curl_easy_init()) == NULL)
		return NULL;
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
	    (long)cfg->connect_timeout_ms);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)cfg->timeout_ms);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "relayd/" PACKAGE_VERSION);
	curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, progress);
	curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	if (cfg->proxy != NULL)
		curl_easy_setopt(c, CURLOPT_PROXY, cfg->proxy);
	if (extra_cas != NULL)
		curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, add_cas);
	return c;
}

static size_t
on_body(char *data, size_t size, size_t n, void *arg)
{
	struct http_resp	*r = arg;
	size_t			 len = size * n, take;

	take = r->len + len > r->keep ? r->keep - r->len : len;
	if (take > 0) {
		r->body = xrealloc(r->body, r->len + take + 1);
		memcpy(r->body + r->len, data, take);
		r->len += take;
		r->body[r->len] = '\0';
	}
	return len;
}

/* Keeps one header's value, trimmed and bounded. */
static void
keep_header(const char *line, size_t len, const char *name, char *dst,
    size_t dstlen)
{
	size_t	 n = strlen(name);

	if (len <= n + 1 || strncasecmp(line, name, n) != 0 || line[n] != ':')
		return;
	line += n + 1;
	len -= n + 1;
	while (len > 0 && (*line == ' ' || *line == '\t')) {
		line++;
		len--;
	}
	while (len > 0 && isspace((unsigned char)line[len - 1]))
		len--;
	log_escape(dst, dstlen, line, len);
}

static size_t
on_header(char *data, size_t size, size_t n, void *arg)
{
	struct http_resp	*r = arg;
	size_t			 len = size * n;

	keep_header(data, len, "request-id", r->request_id,
	    sizeof(r->request_id));
	keep_header(data, len, "retry-after", r->retry_after,
	    sizeof(r->retry_after));
	return len;
}

/*
 * Counts request heads: libcurl sends a request again by itself when a
 * kept-alive connection dies before any answer byte, and Graph may have
 * taken the first one (there is no option to forbid that in curl 7.88).
 */
static int
on_debug(CURL *c, curl_infotype type, char *data, size_t len, void *arg)
{
	struct http_resp	*r = arg;

	(void)c;
	(void)data;
	(void)len;
	if (type == CURLINFO_HEADER_OUT)
		r->requests++;
	return 0;
}

int
http_post(CURL *c, const char *url, const char *const *headers,
    const char *body, size_t len, struct http_resp *r)
{
	return http_request(c, "POST", url, headers, body, len, HTTP_BODY_MAX,
	    r);
}

int
http_request(CURL *c, const char *method, const char *url,
    const char *const *headers, const char *body, size_t len, size_t keep,
    struct http_resp *r)
{
	struct curl_slist	*hl = NULL;
	CURLcode		 rc;
	uint64_t		 t0 = now_ms();
	size_t			 i;
	int			 has_body = strcmp(method, "POST") == 0 ||
	    strcmp(method, "PUT") == 0;

	memset(r, 0, sizeof(*r));
	r->keep = keep;
	for (i = 0; headers != NULL && headers[i] != NULL; i++)
		hl = curl_slist_append(hl, headers[i]);
	/* No "Expect: 100-continue" round trip before large bodies. */
	hl = curl_slist_append(hl, "Expect:");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
	if (has_body) {
		/* POSTFIELDS sends the body with any method name. */
		curl_easy_setopt(c, CURLOPT_POST, 1L);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body != NULL ? body :
		    "");
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE,
		    (curl_off_t)len);
	} else
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, strcmp(method, "POST") ==
	    0 || strcmp(method, "GET") == 0 ? NULL : method);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, r->error);
	curl_easy_setopt(c, CURLOPT_DEBUGFUNCTION, on_debug);
	curl_easy_setopt(c, CURLOPT_DEBUGDATA, r);
	curl_easy_setopt(c, CURLOPT_VERBOSE, 1L);	/* for on_debug only */
	rc = curl_easy_perform(c);
	curl_easy_setopt(c, CURLOPT_VERBOSE, 0L);
	r->resent = r->requests > 1;
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, NULL);
	curl_slist_free_all(hl);
	r->ms = now_ms() - t0;
	if (rc != CURLE_OK) {
		curl_off_t up = 0;
		long proxy_status = 0;

		/* curl's words for a proxy's refusal do not say what to do. */
		if (curl_easy_getinfo(c, CURLINFO_HTTP_CONNECTCODE,
		    &proxy_status) == CURLE_OK && proxy_status >= 300)
			snprintf(r->error, sizeof(r->error), "the proxy refused "
			    "the tunnel: HTTP %ld%s", proxy_status,
			    proxy_status == 407 ? " proxy authentication "
			    "required (check the user and password in [graph] "
			    "proxy)" : "");

		/* All of it went out: Graph may have acted on it. */
		if (curl_easy_getinfo(c, CURLINFO_SIZE_UPLOAD_T, &up) ==
		    CURLE_OK && up >= (curl_off_t)len && len > 0)
			r->sent = 1;
		if (r->error[0] == '\0')
			strlcpy_r(r->error, curl_easy_strerror(rc),
			    sizeof(r->error));
		r->status = 0;
		return -1;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
	return 0;
}

void
http_resp_clear(struct http_resp *r)
{
	free(r->body);
	r->body = NULL;
	r->len = 0;
}

char *
http_redact(const char *url)
{
	const char	*a = strstr(url, "://"), *at, *colon;
	char		*out;
	size_t		 n;

	a = a != NULL ? a + 3 : url;
	n = strcspn(a, "/?#");
	if ((at = memrchr(a, '@', n)) == NULL ||
	    (colon = memchr(a, ':', (size_t)(at - a))) == NULL)
		return xstrdup(url);
	xasprintf(&out, "%.*s%s", (int)(colon - url), url, at);
	return out;
}

char *
http_escape(const char *s)
{
	static const char	 hex[] = "0123456789ABCDEF";
	char			*out = xmalloc(strlen(s) * 3 + 1), *o = out;
	unsigned char		 c;

	for (; *s != '\0'; s++) {
		c = (unsigned char)*s;
		if (isalnum(c) || strchr("-._~@+", c) != NULL)
			*o++ = (char)c;
		else {
			*o++ = '%';
			*o++ = hex[c >> 4];
			*o++ = hex[c & 15];
		}
	}
	*o = '\0';
	return out;
}

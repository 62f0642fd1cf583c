/*
 * token.c - the token source: the OAuth2 client-credentials token, fetched
 * with the credential. Only the token process (token_proc.c) and relayctl
 * hold one; relayd's delivery threads ask the token process through
 * token_client.c.
 *
 * POST {login_url}/{tenant}/oauth2/v2.0/token with the app's id, its secret
 * or a client assertion signed with its certificate's key (a fresh one per
 * request, see jwt.c), and scope {graph_url}/.default. The token is
 * refreshed at 80% of its life by whichever caller needs it first; the
 * others keep using the old one meanwhile, or wait if there is none.
 * After a failure nobody asks
 * again for a while (5 s doubling to 5 min), so a wrong secret costs one
 * log line per attempt, not one per message. Messages stay queued.
 *
 * The secret or key is read at start and again on reload (SIGHUP), kept
 * in memory only here, and never logged; neither is any assertion or
 * token. A new one waits in pending until no fetch runs.
 */
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "config.h"
#include "http.h"
#include "jwt.h"
#include "log.h"
#include "token.h"
#include "util.h"

#define TOKEN_SECRET_MAX	4096
#define TOKEN_RETRY_MIN_MS	5000
#define TOKEN_RETRY_MAX_MS	(5 * 60 * 1000)
#define TOKEN_ASSERTION_TYPE \
	"urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
#define TOKEN_CLOCK_HINT \
	"the client assertion is outside its valid time range (clock skew? " \
	"check the system time)"

struct token_src {
	char		*url;
	char		*form_head;	/* everything but the secret or assertion */
	char		*secret;	/* URL-encoded; or */
	struct jwt_key	*key;		/* the certificate's, for assertions */
	char		*client_id;
	struct token_cache c;		/* its lock guards the rest */
	uint64_t	 backoff_ms;
	uint64_t	 fail_since;	/* wall ms of the first failure in a row */
	unsigned	 nfails;	/* failures in a row */
	int		 pending;	/* a reloaded credential waits */
	char		*pending_secret;
	struct jwt_key	*pending_key;
};

static const struct {
	long		 code;
	const char	*hint;
} aadsts_hints[] = {
	{ 7000215, "invalid client secret (check client_secret_file: it must "
	  "hold the secret's Value, not its ID)" },
	{ 7000222, "client secret expired (create a new one under the app "
	  "registration's Certificates & secrets, then update "
	  "client_secret_file)" },
	{ 700016, "application not found in the tenant (check client_id and "
	  "tenant, and that admin consent was given)" },
	{ 90002, "tenant not found (check tenant)" },
	{ 900023, "tenant is not a valid GUID or domain (check tenant)" },
	{ 70011, "invalid scope (check graph_url)" },
	{ 7000218, "no client secret or assertion was sent (check "
	  "client_secret_file or certificate_file)" },
	{ 700027, "the certificate is not registered on the app, or the key "
	  "does not match it (check certificate_file/private_key_file)" },
	{ 700024, TOKEN_CLOCK_HINT },
	{ 500133, TOKEN_CLOCK_HINT },
	{ 700023, "the client assertion's audience is not this token service "
	  "(check login_url and cloud)" },
	{ 7000112, "the application is disabled in the tenant" },
	{ 53003, "blocked by a Conditional Access policy" },
	{ 90055, "the tenant is throttled; retrying later" },
};

const char *
token_hint(long code)
{
	size_t	 i;

	for (i = 0; i < NELEM(aadsts_hints); i++)
		if (aadsts_hints[i].code == code)
			return aadsts_hints[i].hint;
	return NULL;
}

static char *
read_secret(const char *path, char *err, size_t errlen)
{
	char		 buf[TOKEN_SECRET_MAX + 1];
	struct stat	 st;
	ssize_t		 n;
	int		 fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1 ||
	    fstat(fd, &st) == -1) {
		snprintf(err, errlen, "client secret %s: %s", path,
		    strerror(errno));
		if (fd != -1)
			close(fd);
		return NULL;
	}
	if (check_private_mode("client_secret_file", path,
	    (unsigned)st.st_mode, err, errlen) == -1) {
		close(fd);
		return NULL;
	}
	n = read(fd, buf, TOKEN_SECRET_MAX);
	close(fd);
	if (n < 0) {
		snprintf(err, errlen, "client secret %s: %s", path,
		    strerror(errno));
		return NULL;
	}
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' ||
	    buf[n - 1] == ' ' || buf[n - 1] == '\t'))
		n--;
	buf[n] = '\0';
	if (n == 0) {
		snprintf(err, errlen, "client secret %s is empty", path);
		return NULL;
	}
	return xstrdup(buf);
}

char *
token_scope(const struct config *cfg)
{
	char	*s;

	xasprintf(&s, "%s/.default", cfg->graph_url);
	return s;
}

/* The credential the config names: a URL-encoded secret, or a key. */
static int
read_credential(const struct config *cfg, char **secret, struct jwt_key **key,
    char *err, size_t errlen)
{
	char	*raw, *s;

	*secret = NULL;
	*key = NULL;
	if (cfg->certificate_file != NULL)
		return (*key = jwt_key_load(cfg->certificate_file,
		    cfg->private_key_file, cfg->assertion_alg, err, errlen)) ==
		    NULL ? -1 : 0;
	if ((raw = read_secret(cfg->client_secret_file, err, errlen)) == NULL)
		return -1;
	s = curl_easy_escape(NULL, raw, 0);
	*secret = xstrdup(s);
	explicit_bzero(s, strlen(s));
	curl_free(s);
	explicit_bzero(raw, strlen(raw));
	free(raw);
	return 0;
}

static void
secret_free(char *s)
{
	if (s != NULL) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

struct token_src *
token_src_new(const struct config *cfg, char *err, size_t errlen)
{
	struct token_src	*t;
	struct jwt_key	*key;
	char		*secret, *id, *scope, *s, *tenant;

	if (read_credential(cfg, &secret, &key, err, errlen) == -1)
		return NULL;
	t = xcalloc(1, sizeof(*t));
	t->key = key;
	t->secret = secret;
	t->client_id = xstrdup(cfg->client_id);
	tenant = http_escape(cfg->tenant);
	xasprintf(&t->url, "%s/%s/oauth2/v2.0/token", cfg->login_url, tenant);
	free(tenant);
	s = token_scope(cfg);
	scope = curl_easy_escape(NULL, s, 0);
	free(s);
	id = curl_easy_escape(NULL, cfg->client_id, 0);
	xasprintf(&t->form_head, "grant_type=client_credentials&client_id=%s"
	    "&scope=%s&%s=", id, scope, key != NULL ? "client_assertion_type="
	    TOKEN_ASSERTION_TYPE "&client_assertion" : "client_secret");
	curl_free(id);
	curl_free(scope);
	token_cache_init(&t->c);
	return t;
}

void
token_src_free(struct token_src *t)
{
	if (t == NULL)
		return;
	secret_free(t->secret);
	secret_free(t->pending_secret);
	jwt_key_free(t->key);
	jwt_key_free(t->pending_key);
	free(t->client_id);
	token_cache_clear(&t->c);
	free(t->url);
	free(t->form_head);
	free(t);
}

/* The token service's answer as a log line with the admin's next step. */
static void
describe_error(long status, const char *body, char *out, size_t outlen)
{
	json_object	*root = NULL, *v, *codes;
	const char	*error = NULL, *desc = NULL, *hint;
	long		 code = 0;
	char		 first[200], esc[256];
	size_t		 n;

	if (body != NULL)
		root = json_tokener_parse(body);
	if (root != NULL) {
		if (json_object_object_get_ex(root, "error", &v))
			error = json_object_get_string(v);
		if (json_object_object_get_ex(root, "error_description", &v))
			desc = json_object_get_string(v);
		if (json_object_object_get_ex(root, "error_codes", &codes) &&
		    json_object_is_type(codes, json_type_array) &&
		    json_object_array_length(codes) > 0)
			code = json_object_get_int64(
			    json_object_array_get_idx(codes, 0));
	}
	if (code == 0 && desc != NULL && strncmp(desc, "AADSTS", 6) == 0)
		code = strtol(desc + 6, NULL, 10);
	if (code != 0 && (hint = token_hint(code)) != NULL)
		snprintf(out, outlen, "AADSTS%ld %s", code, hint);
	else if (desc != NULL) {
		/* The first line only: the rest is trace and correlation ids. */
		n = strcspn(desc, "\r\n");
		if (n >= sizeof(first))
			n = sizeof(first) - 1;
		memcpy(first, desc, n);
		first[n] = '\0';
		log_escape(esc, sizeof(esc), first, n);
		snprintf(out, outlen, "%s (HTTP %ld, %s)", esc, status,
		    error != NULL ? error : "error");
	} else
		snprintf(out, outlen, "HTTP %ld from the token service",
		    status);
	if (root != NULL)
		json_object_put(root);
}

/* One request to the token service. Called without the lock. */
static int
fetch(struct token_src *t, CURL *c, char **access, long long *life_ms,
    char *err, size_t errlen)
{
	static const char *const headers[] = {
	    "Content-Type: application/x-www-form-urlencoded",
	    "Accept: application/json", NULL };
	struct http_resp	 r;
	char			*form, *assertion = NULL;
	int			 rc = -1;

	/* The audience is the token URL as used: login_url applies. */
	if (t->key != NULL && (assertion = jwt_assertion(t->key, t->client_id,
	    t->url, time(NULL), err, errlen)) == NULL)
		return -1;
	xasprintf(&form, "%s%s", t->form_head, assertion != NULL ? assertion :
	    t->secret);
	if (assertion != NULL) {
		explicit_bzero(assertion, strlen(assertion));
		free(assertion);
	}
	http_post(c, t->url, headers, form, strlen(form), &r);
	explicit_bzero(form, strlen(form));
	free(form);
	if (r.status == 0)
		snprintf(err, errlen, "no answer from the token service (%s)",
		    r.error);
	else
		rc = token_parse_answer(r.status, r.body, access, life_ms, err,
		    errlen);
	http_resp_clear(&r);
	return rc;
}

#define TOKEN_LIFE_MAX_S	86400	/* expires_in taken at most */

int
token_parse_answer(long status, const char *body, char **access,
    long long *life_ms, char *err, size_t errlen)
{
	json_object	*root = NULL, *v;
	int		 rc = -1;

	if (status != 200) {
		describe_error(status, body, err, errlen);
		return -1;
	}
	if (body == NULL || (root = json_tokener_parse(body)) == NULL ||
	    !json_object_object_get_ex(root, "access_token", &v) ||
	    !json_object_is_type(v, json_type_string) ||
	    json_object_get_string_len(v) == 0) {
		snprintf(err, errlen, "token service answered 200 without an "
		    "access_token");
		goto out;
	}
	*access = xstrdup(json_object_get_string(v));
	*life_ms = 3599 * 1000LL;
	if (json_object_object_get_ex(root, "expires_in", &v)) {
		/* A number, or a string of one (older endpoints). */
		long long s = json_object_get_int64(v);

		/* Entra's tokens live an hour or so; a day at most is taken
		 * (and a huge value must not overflow the milliseconds). */
		if (s > TOKEN_LIFE_MAX_S)
			s = TOKEN_LIFE_MAX_S;
		if (s > 0)
			*life_ms = s * 1000;
	}
	rc = 0;
out:
	if (root != NULL)
		json_object_put(root);
	return rc;
}

char *
token_src_get(struct token_src *t, CURL *c, char *err, size_t errlen)
{
	char		*access, *fresh = NULL;
	long long	 life;
	int		 rc;

	pthread_mutex_lock(&t->c.lock);
	while ((rc = token_cache_wait(&t->c, err, errlen)) != 1) {
		if (rc == -1) {
			pthread_mutex_unlock(&t->c.lock);
			return NULL;
		}
		if (t->pending) {
			/* No fetch runs now: the reloaded credential in. */
			secret_free(t->secret);
			jwt_key_free(t->key);
			t->secret = t->pending_secret;
			t->key = t->pending_key;
			t->pending_secret = NULL;
			t->pending_key = NULL;
			t->pending = 0;
		}
		pthread_mutex_unlock(&t->c.lock);
		rc = fetch(t, c, &fresh, &life, err, errlen);
		pthread_mutex_lock(&t->c.lock);
		if (rc == -1) {
			token_cache_put(&t->c, NULL, 0, 0);
			t->backoff_ms = t->backoff_ms == 0 ? TOKEN_RETRY_MIN_MS :
			    t->backoff_ms * 2;
			if (t->backoff_ms > TOKEN_RETRY_MAX_MS)
				t->backoff_ms = TOKEN_RETRY_MAX_MS;
			t->c.retry_at = now_ms() + t->backoff_ms;
			snprintf(t->c.last_err, sizeof(t->c.last_err), "%s",
			    err);
			if (t->nfails++ == 0)
				t->fail_since = wall_us() / 1000;
			log_warnx("token: %s; next attempt in %llus", err,
			    (unsigned long long)t->backoff_ms / 1000);
			continue;
		}
		token_cache_put(&t->c, fresh, life, life * 8 / 10);
		t->backoff_ms = 0;
		t->c.retry_at = 0;
		t->nfails = 0;
		t->fail_since = 0;
		log_info("token: new access token expires_in=%llds",
		    life / 1000);
		break;
	}
	access = xstrdup(t->c.access);
	pthread_mutex_unlock(&t->c.lock);
	return access;
}

/* Is this credential the one in use (or waiting to be)? */
static int
same_credential(const struct token_src *t, const char *secret,
    const struct jwt_key *key)
{
	const char		*cur = t->pending ? t->pending_secret : t->secret;
	const struct jwt_key	*ck = t->pending ? t->pending_key : t->key;
	char			*a, *b;
	int			 same;

	if (secret != NULL || cur != NULL)
		return secret != NULL && cur != NULL && strcmp(secret, cur) == 0;
	if (key == NULL || ck == NULL)
		return key == ck;
	a = jwt_header(key);
	b = jwt_header(ck);
	same = strcmp(a, b) == 0;	/* the certificate's thumbprint */
	free(a);
	free(b);
	return same;
}

int
token_src_reload(struct token_src *t, const struct config *cfg, char *err,
    size_t errlen)
{
	struct jwt_key	*key;
	char		*secret;
	int		 changed;

	if ((cfg->certificate_file != NULL) != (t->key != NULL)) {
		snprintf(err, errlen, "a switch between client secret and "
		    "certificate takes effect at restart");
		return -1;
	}
	if (read_credential(cfg, &secret, &key, err, errlen) == -1)
		return -1;
	pthread_mutex_lock(&t->c.lock);
	if (!(changed = !same_credential(t, secret, key))) {
		secret_free(secret);
		jwt_key_free(key);
	} else {
		secret_free(t->pending_secret);
		jwt_key_free(t->pending_key);
		t->pending_secret = secret;
		t->pending_key = key;
		t->pending = 1;
		/* A refusal of the old one says nothing of the new one. */
		t->c.retry_at = 0;
		t->backoff_ms = 0;
		t->c.last_err[0] = '\0';
		t->nfails = 0;
		t->fail_since = 0;
	}
	pthread_mutex_unlock(&t->c.lock);
	return changed;
}

void
token_src_invalidate(struct token_src *t, const char *bad)
{
	token_cache_invalidate(&t->c, bad);
}

long long
token_src_retry_in(struct token_src *t)
{
	return token_cache_retry_in(&t->c);
}

long long
token_src_expires_in(struct token_src *t)
{
	return token_cache_expires_in(&t->c);
}

long long
token_src_refresh_in(struct token_src *t)
{
	return token_cache_refresh_in(&t->c);
}

void
token_src_failure(struct token_src *t, struct token_failure *f)
{
	uint64_t	 now = now_ms();

	memset(f, 0, sizeof(*f));
	pthread_mutex_lock(&t->c.lock);
	if (t->nfails > 0) {
		f->since_ms = t->fail_since;
		f->count = t->nfails;
		if (t->c.retry_at > now)
			f->next_ms = wall_us() / 1000 + (t->c.retry_at - now);
		snprintf(f->error, sizeof(f->error), "%s", t->c.last_err);
	}
	pthread_mutex_unlock(&t->c.lock);
}

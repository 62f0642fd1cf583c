/*
 * token_client.c - the access token as the delivery threads see it.
 *
 * In relayd the token comes from the token process (token_proc.c), the
 * only one that reads the credential: one request at a time over a
 * socketpair, the answer cached here until 80% of the token's life (the
 * token process says when), so most deliveries ask nothing. With it come
 * the failure state (for relayctl status) and when the token process
 * tries again; until then no request is sent. A 401 from Graph
 * (token_invalidate) sends the refused token with the next request, so
 * that the token process fetches a new one. An answer that does not come
 * within the token request's own timeouts and some more fails this
 * attempt: a stuck token process can't hang a delivery thread. When the
 * token process is restarted, the parent passes a new connection
 * (token_connect) and the next request uses it.
 *
 * relayctl (token_new) has the token source in its own process instead.
 */
#include <sys/socket.h>
#include <sys/uio.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "token.h"
#include "util.h"

#define TOKEN_CONNECT_WAIT_MS	5000	/* for the parent to pass a connection */
#define TOKEN_GONE_RETRY_MS	1000	/* the token process is restarting */

struct token {
	struct token_src	*local;		/* relayctl; or */
	struct token_cache	 c;		/* its lock guards the rest */
	int			 fd;		/* to the token process */
	int			 newfd;		/* passed, not yet in use */
	uint32_t		 seq;
	long long		 timeout_ms;	/* for an answer */
	char			*bad;		/* refused by Graph, to tell */
	struct token_failure	 fail;		/* next_ms unused: retry_at */
};

static struct token *
token_alloc(void)
{
	struct token	*t = xcalloc(1, sizeof(*t));

	t->fd = t->newfd = -1;
	token_cache_init(&t->c);
	return t;
}

struct token *
token_new(const struct config *cfg, char *err, size_t errlen)
{
	struct token_src	*src;
	struct token		*t;

	if ((src = token_src_new(cfg, err, errlen)) == NULL)
		return NULL;
	t = token_alloc();
	t->local = src;
	return t;
}

struct token *
token_remote(const struct config *cfg)
{
	struct token	*t = token_alloc();

	/* A fetch takes at most connect + transfer; the rest is slack. */
	t->timeout_ms = (long long)(cfg->connect_timeout_ms + cfg->timeout_ms) +
	    5000;
	return t;
}

void
token_connect(struct token *t, int fd)
{
	pthread_mutex_lock(&t->c.lock);
	if (t->newfd != -1)
		close(t->newfd);
	t->newfd = fd;
	pthread_cond_broadcast(&t->c.cond);
	pthread_mutex_unlock(&t->c.lock);
}

static void
wipe_free(char *s)
{
	if (s != NULL) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

void
token_free(struct token *t)
{
	if (t == NULL)
		return;
	token_src_free(t->local);
	if (t->fd != -1)
		close(t->fd);
	if (t->newfd != -1)
		close(t->newfd);
	wipe_free(t->bad);
	token_cache_clear(&t->c);
	free(t);
}

/* The connection to use, waiting a little for one; -1 if none. Locked. */
static int
connection(struct token *t)
{
	uint64_t	 until = now_ms() + TOKEN_CONNECT_WAIT_MS;
	struct timespec	 ts;

	while (t->newfd == -1 && t->fd == -1 && now_ms() < until) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&t->c.cond, &t->c.lock, &ts);
	}
	if (t->newfd != -1) {
		if (t->fd != -1)
			close(t->fd);
		t->fd = t->newfd;
		t->newfd = -1;
	}
	return t->fd;
}

/*
 * One request and its answer (an older, late answer is skipped). Called
 * without the lock, by one thread at a time (refreshing). 0, or -1 with
 * err when the token process did not answer.
 */
static int
ask(struct token *t, int fd, uint32_t seq, const char *bad,
    struct token_rep *rep, char **access, char *err, size_t errlen)
{
	struct token_req	 req;
	struct iovec		 iov[2];
	struct msghdr		 mh;
	struct pollfd		 pfd;
	uint64_t		 until = now_ms() + (uint64_t)t->timeout_ms, now;
	char			*buf;
	ssize_t			 n;
	int			 rc = -1, ready = 0;

	memset(&req, 0, sizeof(req));
	req.seq = seq;
	req.badlen = bad != NULL ? (uint32_t)strlen(bad) : 0;
	iov[0].iov_base = &req;
	iov[0].iov_len = sizeof(req);
	iov[1].iov_base = (void *)(uintptr_t)(bad != NULL ? bad : "");
	iov[1].iov_len = req.badlen;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = iov;
	mh.msg_iovlen = 2;
	if (sendmsg(fd, &mh, MSG_NOSIGNAL) == -1) {
		snprintf(err, errlen, "the token process is not reachable "
		    "(%s); it is being restarted", strerror(errno));
		return -1;
	}
	buf = xmalloc(sizeof(*rep) + TOKEN_WIRE_MAX + 1);
	for (;;) {
		now = now_ms();
		pfd.fd = fd;
		pfd.events = POLLIN;
		if (now >= until || (ready = poll(&pfd, 1, (int)(until -
		    now))) == 0) {
			snprintf(err, errlen, "the token process did not answer "
			    "within %llds", t->timeout_ms / 1000);
			break;
		}
		if (ready == -1)
			continue;	/* EINTR */
		n = recv(fd, buf, sizeof(*rep) + TOKEN_WIRE_MAX, MSG_DONTWAIT);
		if (n == -1 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0) {
			snprintf(err, errlen, "the token process went away; "
			    "it is being restarted");
			break;
		}
		if ((size_t)n < sizeof(*rep))
			continue;
		memcpy(rep, buf, sizeof(*rep));
		if (rep->seq != seq || rep->len > (size_t)n - sizeof(*rep))
			continue;	/* a late answer to an earlier request */
		rep->error[sizeof(rep->error) - 1] = '\0';
		rc = 0;
		*access = NULL;
		if (rep->len > 0)
			*access = xstrndup(buf + sizeof(*rep), rep->len);
		break;
	}
	/* It may hold a token: this one, or a late answer's. */
	explicit_bzero(buf, sizeof(*rep) + TOKEN_WIRE_MAX);
	free(buf);
	return rc;
}

/* The failure state an answer carries. Locked. */
static void
take(struct token *t, const struct token_rep *rep)
{
	t->c.retry_at = rep->retry_ms > 0 ? now_ms() + (uint64_t)rep->retry_ms :
	    0;
	t->fail.count = rep->nfails;
	t->fail.since_ms = rep->fail_since;
	snprintf(t->fail.error, sizeof(t->fail.error), "%s", rep->error);
	snprintf(t->c.last_err, sizeof(t->c.last_err), "%s", rep->error);
}

static char *
remote_get(struct token *t, char *err, size_t errlen)
{
	struct token_rep	 rep;
	char			*access, *fresh, *bad;
	uint32_t		 seq;
	int			 fd, rc;

	pthread_mutex_lock(&t->c.lock);
	while ((rc = token_cache_wait(&t->c, err, errlen)) != 1) {
		if (rc == -1) {
			pthread_mutex_unlock(&t->c.lock);
			return NULL;
		}
		fd = connection(t);
		bad = t->bad;
		t->bad = NULL;
		seq = ++t->seq;
		pthread_mutex_unlock(&t->c.lock);
		rc = fd == -1 ? (snprintf(err, errlen, "no connection to the "
		    "token process; it is being restarted"), -1) :
		    ask(t, fd, seq, bad, &rep, &fresh, err, errlen);
		wipe_free(bad);
		pthread_mutex_lock(&t->c.lock);
		if (rc == -1) {
			/* Soon again, on the connection the parent passes. */
			token_cache_put(&t->c, NULL, 0, 0);
			t->c.retry_at = now_ms() + TOKEN_GONE_RETRY_MS;
			snprintf(t->c.last_err, sizeof(t->c.last_err), "%s",
			    err);
			log_warnx("token: %s", err);
			continue;
		}
		take(t, &rep);
		token_cache_put(&t->c, fresh, rep.expires_ms, rep.refresh_ms);
		if (fresh != NULL)
			break;
		if (t->c.retry_at == 0)
			t->c.retry_at = now_ms() + TOKEN_GONE_RETRY_MS;
	}
	access = xstrdup(t->c.access);
	pthread_mutex_unlock(&t->c.lock);
	return access;
}

char *
token_get(struct token *t, CURL *c, char *err, size_t errlen)
{
	if (t->local != NULL)
		return token_src_get(t->local, c, err, errlen);
	return remote_get(t, err, errlen);
}

int
token_reload(struct token *t, const struct config *cfg, char *err,
    size_t errlen)
{
	if (t->local != NULL)
		return token_src_reload(t->local, cfg, err, errlen);
	snprintf(err, errlen, "the token process re-reads the credential");
	return -1;
}

void
token_changed(struct token *t)
{
	pthread_mutex_lock(&t->c.lock);
	/* A refusal of the old one says nothing of the new one. */
	t->c.retry_at = 0;
	t->c.last_err[0] = '\0';
	memset(&t->fail, 0, sizeof(t->fail));
	pthread_mutex_unlock(&t->c.lock);
}

void
token_invalidate(struct token *t, const char *bad)
{
	if (t->local != NULL)
		token_src_invalidate(t->local, bad);
	else if (token_cache_invalidate(&t->c, bad)) {
		/* Told with the next request: the token process's is stale. */
		pthread_mutex_lock(&t->c.lock);
		wipe_free(t->bad);
		t->bad = xstrdup(bad);
		pthread_mutex_unlock(&t->c.lock);
	}
}

long long
token_retry_in(struct token *t)
{
	return t->local != NULL ? token_src_retry_in(t->local) :
	    token_cache_retry_in(&t->c);
}

long long
token_expires_in(struct token *t)
{
	return t->local != NULL ? token_src_expires_in(t->local) :
	    token_cache_expires_in(&t->c);
}

void
token_failure(struct token *t, struct token_failure *f)
{
	uint64_t	 now = now_ms();

	if (t->local != NULL) {
		token_src_failure(t->local, f);
		return;
	}
	pthread_mutex_lock(&t->c.lock);
	*f = t->fail;
	f->next_ms = 0;
	if (f->count > 0 && t->c.retry_at > now)
		f->next_ms = wall_us() / 1000 + (t->c.retry_at - now);
	pthread_mutex_unlock(&t->c.lock);
}

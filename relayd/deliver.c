/*
 * deliver.c - what a delivery thread runs: one queued message to Graph.
 *
 * Design. The loop (worker.c) decides what goes and when; [queue] workers
 * threads here do the sending. Each owns one CURL handle (and so its own
 * kept-alive connections) and blocks in libcurl: a blocking request per
 * thread keeps each delivery a plain sequence (read the spool record,
 * map it, get a token, POST, classify the answer) that is easy to follow
 * and to stop. Data flows one way: the loop hands a struct job over
 * (deliver_submit), a thread fills in the result, and the loop takes it
 * back (deliver_results) through a pipe it watches (memcached's
 * pattern). A thread reads only the job, the configuration, the spool
 * (its own mapped copy of the record) and the token (token.c); it never
 * sees the loop's queue, and the loop reads no result before the job
 * came back.
 *
 * Shared under the lock: the job lists, each job's started/cancel pair (a
 * relayctl hold beats a request that has not gone out yet: the thread
 * asks just before sending). Graph's 4 requests per mailbox are counted
 * by the loop alone: the sending mailbox was decided when the message was
 * committed and came with the job.
 *
 * The answer (graph_classify's table) becomes the job's result; a 401
 * InvalidAuthenticationToken gets one fresh token and one more try. A
 * message over 4 MB takes the draft path (draft.c); a draft an attempt
 * could not delete is handed back and deleted by the next attempt.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "deliver.h"
#include "draft.h"
#include "graph.h"
#include "http.h"
#include "log.h"
#include "spool.h"
#include "token.h"
#include "util.h"

#define REASON_BODY_MAX		(16 * 1024)	/* Graph's answer in .reason */

struct deliverers {
	/* Read only, set before the threads start. */
	const struct config	*cfg;
	struct spool		*spool;
	struct token		*token;
	struct graph_opts	 opts;
	int			 notify[2];	/* a byte per result */

	/* Shared, under lock. */
	pthread_mutex_t		 lock;
	pthread_cond_t		 cond;
	struct job		*jobs;		/* to do */
	struct job		*done;		/* results, newest first */
	int			 quit;

	pthread_t		*threads;
	size_t			 nthreads;
};


static void
job_fail(struct job *j, enum graph_result r, const char *code,
    const char *fmt, ...) PRINTFLIKE(4, 5);

static void
job_fail(struct job *j, enum graph_result r, const char *code,
    const char *fmt, ...)
{
	va_list	 ap;

	j->result = r;
	strlcpy_r(j->err.code, code, sizeof(j->err.code));
	va_start(ap, fmt);
	vsnprintf(j->err.message, sizeof(j->err.message), fmt, ap);
	va_end(ap);
}

/*
 * The race between a relayctl hold and the request, decided under the
 * lock by who comes first: the thread (go = 1) marks the request started
 * unless it was cancelled; the loop (go = 0) cancels it unless it
 * started. 1 if the caller won.
 */
static int
job_race(struct deliverers *p, struct job *j, int go)
{
	int	 won;

	pthread_mutex_lock(&p->lock);
	if (go && !j->cancel)
		j->started = 1;
	else if (!go && !j->started)
		j->cancel = 1;
	won = go ? j->started : j->cancel;
	pthread_mutex_unlock(&p->lock);
	return won;
}

/*
 * One request to Graph with the bearer token, and one fresh token after a
 * 401. Returns 0 with an answer, -1 without (r->error says why), -2 when
 * no token could be had (the job says why).
 */
static int
authed(struct deliverers *p, CURL *c, struct job *j, const char *method,
    const char *url, const char *ctype, const char *body, size_t len,
    size_t keep, struct http_resp *r)
{
	char		*tok, *auth, ctbuf[96], err[512];
	const char	*headers[4];
	int		 attempt, rc = -1;

	memset(r, 0, sizeof(*r));
	snprintf(ctbuf, sizeof(ctbuf), "Content-Type: %s", ctype);
	for (attempt = 0; attempt < 2; attempt++) {
		if ((tok = token_get(p->token, c, err, sizeof(err))) == NULL) {
			/* Try again when the token service may be asked. */
			job_fail(j, GRAPH_TEMPFAIL, "token", "%s", err);
			j->retry_ms = token_retry_in(p->token);
			j->err.flags = 0;
			strlcpy_r(r->error, err, sizeof(r->error));
			return -2;
		}
		if (!job_race(p, j, 1)) {
			explicit_bzero(tok, strlen(tok));
			free(tok);
			job_fail(j, GRAPH_TEMPFAIL, "held", "held by relayctl "
			    "before it was sent");
			strlcpy_r(r->error, "held", sizeof(r->error));
			return -2;
		}
		xasprintf(&auth, "Authorization: Bearer %s", tok);
		headers[0] = auth;
		headers[1] = ctbuf;
		headers[2] = "Accept: application/json";
		headers[3] = NULL;
		rc = http_request(c, method, url, headers, body, len, keep, r);
		explicit_bzero(auth, strlen(auth));
		free(auth);
		j->reached = 1;
		if (r->status == 401 && graph_classify(r->status, r->body,
		    r->len, &j->err) == GRAPH_REAUTH) {
			/* The next request (this one again, once) gets a
			 * fresh token. */
			token_invalidate(p->token, tok);
			if (attempt == 0)
				http_resp_clear(r);
		} else
			attempt = 2;
		explicit_bzero(tok, strlen(tok));
		free(tok);
	}
	return rc;
}

/* What an answer (or its absence) means for the job. */
static void
take_answer(struct job *j, struct http_resp *r)
{
	j->status = r->status;
	j->ms += r->ms;
	strlcpy_r(j->request_id, r->request_id, sizeof(j->request_id));
	j->result = graph_classify(r->status, r->body, r->len, &j->err);
	/* All of it went out and no answer came, or libcurl sent it again
	 * by itself on a new connection: Graph may have it. */
	if ((r->status == 0 && r->sent) || r->resent)
		j->err.flags |= GRAPH_F_DUPLICATE;
	if (r->status == 0)
		log_escape(j->err.message, sizeof(j->err.message), r->error,
		    strlen(r->error));
	j->retry_ms = graph_retry_after_ms(r->retry_after[0] ?
	    r->retry_after : NULL, (long long)(wall_us() / 1000));
	free(j->body);
	j->body = NULL;
	if (j->result == GRAPH_PERMFAIL && r->body != NULL)
		j->body = xstrndup(r->body, r->len < REASON_BODY_MAX ?
		    r->len : REASON_BODY_MAX);
}

static char *
user_url(struct deliverers *p, const char *mailbox)
{
	char	*mb, *url;

	mb = http_escape(mailbox);
	xasprintf(&url, "%s/v1.0/users/%s", p->cfg->graph_url, mb);
	free(mb);
	return url;
}

/* POSTs the body to sendMail. */
static void
send_request(struct deliverers *p, CURL *c, struct job *j,
    const struct graph_req *req)
{
	struct http_resp	 r;
	char			*url, *base;

	base = user_url(p, j->mailbox);
	xasprintf(&url, "%s/sendMail", base);
	free(base);
	if (authed(p, c, j, "POST", url, req->mime ? "text/plain" :
	    "application/json", req->body, req->len, HTTP_BODY_MAX, &r) != -2)
		take_answer(j, &r);
	http_resp_clear(&r);
	free(url);
}

struct draft_arg {
	struct deliverers	*p;
	CURL			*c;
	struct job		*j;
	int			 no_token;
};

static int
draft_authed(void *arg, const char *method, const char *url,
    const char *ctype, const char *body, size_t len, size_t keep,
    struct http_resp *r)
{
	struct draft_arg	*a = arg;
	int			 rc;

	rc = authed(a->p, a->c, a->j, method, url, ctype, body, len, keep, r);
	if (rc == -2)
		a->no_token = 1;
	return rc == 0 ? 0 : -1;
}

/* A draft left by an earlier attempt goes first ("mailbox id"). */
static void
delete_stray(struct deliverers *p, CURL *c, struct job *j)
{
	struct draft_arg	 a = { p, c, j, 0 };
	struct draft_io		 io;
	char			*sp;

	if (j->stray == NULL || (sp = strchr(j->stray, ' ')) == NULL)
		return;
	*sp = '\0';
	io.c = c;
	io.user_url = user_url(p, j->stray);
	io.call = draft_authed;
	io.arg = &a;
	if (draft_delete(&io, sp + 1) == 0) {
		log_info("%s draft deleted mailbox=%s (left by an earlier "
		    "attempt)", j->qid, j->stray);
		free(j->stray);
		j->stray = NULL;
	} else
		*sp = ' ';
	free((char *)io.user_url);
	j->reached = 0;
}

/* The draft path: the message is too large for one sendMail request. */
static void
send_draft(struct deliverers *p, CURL *c, struct job *j,
    struct graph_draft *d)
{
	struct draft_arg	 a = { p, c, j, 0 };
	struct draft_io		 io;
	struct draft_out	 out;
	uint64_t		 t0 = now_ms();

	j->draft = 1;
	io.c = c;
	io.user_url = user_url(p, j->mailbox);
	io.call = draft_authed;
	io.arg = &a;
	if (draft_send(&io, d, &out) == 0 || out.maybe_sent) {
		j->result = GRAPH_SENT;
		j->status = 202;
	} else if (!a.no_token) {
		take_answer(j, &out.resp);
		/* Say which step, and what a 403 on the draft means. */
		if (out.no_permission)
			snprintf(j->err.message, sizeof(j->err.message),
			    "creating a draft needs the Mail.ReadWrite "
			    "application permission: messages over 4 MB take "
			    "the draft path (see README)");
		else {
			char msg[sizeof(out.step) + sizeof(j->err.message) +
			    4];

			snprintf(msg, sizeof(msg), "%s: %s", out.step,
			    j->err.message);
			strlcpy_r(j->err.message, msg, sizeof(j->err.message));
		}
	}
	if (out.stray != NULL) {
		free(j->stray);
		xasprintf(&j->stray, "%s %s", j->mailbox, out.stray);
		log_warnx("%s draft left mailbox=%s: it could not be deleted "
		    "now, the next attempt deletes it", j->qid, j->mailbox);
	}
	draft_out_clear(&out);
	free((char *)io.user_url);
	j->ms = now_ms() - t0;
}

/* One delivery attempt, start to end, on a worker thread. */
static void
deliver(struct deliverers *p, CURL *c, struct job *j)
{
	struct spool_view	 v;
	struct spool_entry	*e = &v.e;
	struct graph_env	 env;
	struct graph_req	 req;
	struct graph_draft	 d;
	const char		*why;
	char			**rcpts = NULL, err[256];
	size_t			 i;
	int			 large;

	memset(&req, 0, sizeof(req));
	memset(&d, 0, sizeof(d));
	j->retry_ms = -1;
	if (spool_map_msg(p->spool, j->qid, &v, &why) == -1) {
		if (errno == EBADMSG)
			job_fail(j, GRAPH_PERMFAIL, "spool", "damaged: %s",
			    why);
		else
			job_fail(j, GRAPH_TEMPFAIL, "spool", "cannot read: %s",
			    why);
		return;
	}
	if (strcmp(j->mailbox, "<>") == 0) {
		job_fail(j, GRAPH_PERMFAIL, "mailbox", "no sending mailbox: "
		    "null sender and no From: address");
		goto out;
	}
	j->nrcpts = e->nrcpts;
	rcpts = xcalloc(e->nrcpts, sizeof(*rcpts));
	for (i = 0; i < e->nrcpts; i++)
		rcpts[i] = xstrndup(e->rcpts[i], strcspn(e->rcpts[i], " "));
	env.mail_from = e->mail_from;
	env.rcpts = (const char *const *)rcpts;
	env.nrcpts = e->nrcpts;
	/*
	 * Over 4 MB as received, its JSON would be too: never build that in
	 * memory. Under it, map, and take the draft path if the JSON grew
	 * past the limit (base64 adds a third).
	 */
	large = e->size > GRAPH_REQ_MAX || v.msg_len < e->size;
	if (!large) {
		if (graph_map(v.msg, e->size, &env, &p->opts, &req, err,
		    sizeof(err)) == -1) {
			job_fail(j, GRAPH_PERMFAIL, "mapping", "%s", err);
			goto out;
		}
		if (req.len > GRAPH_REQ_MAX) {
			graph_req_free(&req);
			large = 1;
		}
	}
	if (large && graph_map_draft(v.fd, v.msg_off, e->size, &env,
	    &p->opts, &d, err, sizeof(err)) == -1) {
		job_fail(j, GRAPH_PERMFAIL, "mapping", "%s", err);
		goto out;
	}
	if (large && d.req.len > GRAPH_REQ_MAX) {
		job_fail(j, GRAPH_PERMFAIL, "mapping", "the message without "
		    "its attachments is %zu bytes, over Graph's 4 MB request "
		    "limit", d.req.len);
		goto out;
	}
	j->nrcpts = large ? d.req.nrcpts : req.nrcpts;
	j->nattach = large ? d.req.nattach : req.nattach;
	free(j->message_id);
	j->message_id = (large ? d.req.message_id : req.message_id) != NULL ?
	    xstrdup(large ? d.req.message_id : req.message_id) : NULL;
	delete_stray(p, c, j);
	if (large)
		send_draft(p, c, j, &d);
	else
		send_request(p, c, j, &req);
out:
	graph_req_free(&req);
	graph_draft_free(&d);
	if (rcpts != NULL)
		for (i = 0; i < e->nrcpts; i++)
			free(rcpts[i]);
	free(rcpts);
	spool_unmap_msg(&v);
}

static void *
deliver_main(void *arg)
{
	struct deliverers	*p = arg;
	struct job		*j;
	CURL			*c;

	c = http_handle_new(p->cfg);
	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (!p->quit && p->jobs == NULL)
			pthread_cond_wait(&p->cond, &p->lock);
		if ((j = p->jobs) == NULL)
			break;
		p->jobs = j->next;
		pthread_mutex_unlock(&p->lock);
		if (c == NULL)
			job_fail(j, GRAPH_TEMPFAIL, "curl", "no curl handle");
		else
			deliver(p, c, j);
		pthread_mutex_lock(&p->lock);
		j->next = p->done;
		p->done = j;
		if (write(p->notify[1], "", 1) == -1 && errno != EAGAIN)
			log_warn("worker: notify");
	}
	pthread_mutex_unlock(&p->lock);
	if (c != NULL)
		curl_easy_cleanup(c);
	return NULL;
}

/* ---- the loop's side ---- */

struct deliverers *
deliver_start(const struct config *cfg, struct spool *spool,
    struct token *token, size_t n, char *err, size_t errlen)
{
	struct deliverers	*p;
	size_t			 i;

	p = xcalloc(1, sizeof(*p));
	p->cfg = cfg;
	p->spool = spool;
	p->token = token;
	p->opts.save_to_sent = cfg->save_to_sent_items;
	p->opts.max_depth = (unsigned)cfg->max_mime_depth;
	p->opts.mode = cfg->graph_mode;
	if (pipe2(p->notify, O_NONBLOCK | O_CLOEXEC) == -1) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		free(p);
		return NULL;
	}
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	p->threads = xcalloc(n, sizeof(*p->threads));
	for (i = 0; i < n; i++) {
		if ((errno = pthread_create(&p->threads[i], NULL, deliver_main,
		    p)) != 0) {
			snprintf(err, errlen, "worker thread: %s",
			    strerror(errno));
			deliver_stop(p);
			deliver_free(p);
			return NULL;
		}
		p->nthreads++;
	}
	return p;
}

int
deliver_fd(const struct deliverers *p)
{
	return p->notify[0];
}

void
deliver_submit(struct deliverers *p, struct job *list)
{
	struct job	*j;

	if (list == NULL)
		return;
	pthread_mutex_lock(&p->lock);
	while (list != NULL) {
		j = list;
		list = j->next;
		j->next = p->jobs;
		p->jobs = j;
	}
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

struct job *
deliver_results(struct deliverers *p)
{
	struct job	*done, *j, *rev = NULL;
	char		 buf[256];

	while (read(p->notify[0], buf, sizeof(buf)) > 0)
		;
	pthread_mutex_lock(&p->lock);
	done = p->done;
	p->done = NULL;
	pthread_mutex_unlock(&p->lock);
	while (done != NULL) {		/* oldest first */
		j = done;
		done = j->next;
		j->next = rev;
		rev = j;
	}
	return rev;
}

int
deliver_cancel(struct deliverers *p, struct job *j)
{
	return job_race(p, j, 0);
}

void
deliver_stop(struct deliverers *p)
{
	struct job	*j;
	size_t		 i;

	pthread_mutex_lock(&p->lock);
	p->quit = 1;
	/* Jobs not started go back unstarted: their messages stay queued. */
	while ((j = p->jobs) != NULL) {
		p->jobs = j->next;
		j->next = p->done;
		p->done = j;
		job_fail(j, GRAPH_TEMPFAIL, "stopping", "relayd is stopping");
	}
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	for (i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	p->nthreads = 0;
}

void
deliver_free(struct deliverers *p)
{
	struct job	*j;

	if (p == NULL)
		return;
	while ((j = p->done) != NULL) {
		p->done = j->next;
		job_free(j);
	}
	close(p->notify[0]);
	close(p->notify[1]);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
	free(p->threads);
	free(p);
}

void
job_free(struct job *j)
{
	free(j->body);
	free(j->mailbox);
	free(j->message_id);
	free(j->stray);
	free(j);
}

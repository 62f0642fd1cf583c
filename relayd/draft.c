/*
 * draft.c - the draft path, for a message whose sendMail body would pass
 * Graph's 4 MB request limit (FACTS.md section 3):
 *
 *   POST /users/{id}/messages                       the message, 201 + id
 *   POST .../messages/{id}/attachments              each part under 3 MB
 *   POST .../attachments/createUploadSession        each larger part, 201
 *   PUT  {uploadUrl}  Content-Range, no token       200 ... 201 at the end
 *   POST .../messages/{id}/send                     202
 *
 * Parts are read from the spool file through their transfer decoding, one
 * chunk at a time: memory stays near one DRAFT_CHUNK whatever the size.
 * What a failed request means (give up, resume, a new session, ask again)
 * is graph_result.c's step column, by status alone for the uploadUrl.
 * A failed chunk is followed by a GET of the uploadUrl, which says where to
 * go on (nextExpectedRanges); an expired session is made again, unless the
 * draft's attachments show that the session closed on our last chunk and
 * only its answer was lost. A draft that is not found right after it was
 * made is asked again after a short pause (Exchange's store can lag its
 * own answer). Whatever fails, the
 * session and the draft are deleted before returning, so that retries do
 * not pile up drafts in the mailbox. Runs on a worker thread: the pauses
 * block only that thread.
 */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "draft.h"
#include "log.h"
#include "mime.h"
#include "util.h"

#define DRAFT_ANSWER_MAX	(8 * 1024 * 1024)	/* a draft echoes its body */
#define DRAFT_404_TRIES		5	/* 0.25 s doubling: 7.75 s in all */
#define DRAFT_CHUNK_TRIES	4	/* failures per part before giving up */
#define DRAFT_SESSIONS_MAX	3	/* sessions per part (expiry) */

struct run {
	const struct draft_io	*io;
	struct draft_out	*out;
	char			*id;		/* the draft's, escaped */
	char			*msg_url;	/* .../messages/{id} */
	char			*session;	/* the open uploadUrl */
};

static void
nap_ms(unsigned ms)
{
	struct timespec	 ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* The request's answer ends the run: keep it for the caller. */
static int
fail(struct run *run, struct http_resp *r, const char *fmt, ...)
    PRINTFLIKE(3, 4);

static int
fail(struct run *run, struct http_resp *r, const char *fmt, ...)
{
	va_list	 ap;

	http_resp_clear(&run->out->resp);
	run->out->resp = *r;
	memset(r, 0, sizeof(*r));
	va_start(ap, fmt);
	vsnprintf(run->out->step, sizeof(run->out->step), fmt, ap);
	va_end(ap);
	return -1;
}

static json_object *
parse(const struct http_resp *r)
{
	if (r->body == NULL || r->len == 0)
		return NULL;
	return json_tokener_parse(r->body);
}

static const char *
jget(json_object *o, const char *key)
{
	json_object	*v;

	if (o == NULL || !json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* Graph's "not in the store" (a draft not there yet, or gone). */
static int
is_not_found(const struct http_resp *r)
{
	struct graph_error	 ge;

	graph_classify(r->status, r->body, r->len, &ge);
	return graph_result_step(r->status, ge.code) == GRAPH_STEP_AGAIN;
}

/* A request on the draft, asked again while the draft is not found. */
static int
draft_call(struct run *run, const char *method, const char *url,
    const char *body, size_t len, struct http_resp *r)
{
	unsigned	 wait = 250;
	int		 i, rc = -1;

	for (i = 0; i < DRAFT_404_TRIES; i++) {
		if (i > 0) {
			http_resp_clear(r);
			nap_ms(wait);
			wait *= 2;
		}
		rc = run->io->call(run->io->arg, method, url,
		    "application/json", body, len, HTTP_BODY_MAX, r);
		if (!is_not_found(r) || http_stopping())
			break;
	}
	return rc;
}

/* The decoded size that nextExpectedRanges ("123-" or "123") names. */
static int64_t
next_expected(const struct http_resp *r)
{
	json_object	*root = parse(r), *arr, *v;
	const char	*s;
	char		*end;
	int64_t		 n = -1;

	if (root != NULL && json_object_object_get_ex(root,
	    "nextExpectedRanges", &arr) &&
	    json_object_is_type(arr, json_type_array) &&
	    json_object_array_length(arr) > 0 &&
	    (v = json_object_array_get_idx(arr, 0)) != NULL &&
	    (s = json_object_get_string(v)) != NULL) {
		errno = 0;
		n = (int64_t)strtoll(s, &end, 10);
		if (errno != 0 || end == s || (*end != '\0' && *end != '-') ||
		    n < 0)
			n = -1;
	}
	json_object_put(root);
	return n;
}

/* POSTs o (which it frees) to the draft's URL + path. */
static void
post_json(struct run *run, const char *path, json_object *o,
    struct http_resp *r)
{
	const char	*body;
	char		*url;
	size_t		 len;

	body = json_object_to_json_string_length(o,
	    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	xasprintf(&url, "%s%s", run->msg_url, path);
	draft_call(run, "POST", url, body, len, r);
	free(url);
	json_object_put(o);
}

/* What an attachment and an upload session's AttachmentItem share. */
static json_object *
part_json(const struct graph_part *gp, const char *kind, const char *type)
{
	json_object	*o = json_object_new_object();

	json_object_object_add(o, kind, json_object_new_string(type));
	json_object_object_add(o, "name", json_object_new_string(gp->name));
	json_object_object_add(o, "contentType",
	    json_object_new_string(gp->type));
	json_object_object_add(o, "isInline",
	    json_object_new_boolean(gp->is_inline));
	if (gp->is_inline && gp->content_id != NULL)
		json_object_object_add(o, "contentId",
		    json_object_new_string(gp->content_id));
	return o;
}

static void
session_cancel(struct run *run)
{
	struct http_resp	 r;

	if (run->session == NULL)
		return;
	/* The uploadUrl carries its own token: no Authorization header. */
	http_request(run->io->c, "DELETE", run->session, NULL, NULL, 0,
	    HTTP_BODY_MAX, &r);
	http_resp_clear(&r);
	free(run->session);
	run->session = NULL;
}

static int
session_open(struct run *run, const struct graph_part *gp, const char *name)
{
	json_object	*root, *item, *ans;
	struct http_resp r;
	const char	*url;

	item = part_json(gp, "attachmentType", "file");
	json_object_object_add(item, "size",
	    json_object_new_int64((int64_t)gp->size));
	root = json_object_new_object();
	json_object_object_add(root, "AttachmentItem", item);
	post_json(run, "/attachments/createUploadSession", root, &r);
	if (r.status != 201 || (ans = parse(&r)) == NULL)
		return fail(run, &r, "createUploadSession for %s", name);
	if ((url = jget(ans, "uploadUrl")) == NULL) {
		json_object_put(ans);
		return fail(run, &r, "createUploadSession for %s: no "
		    "uploadUrl in the answer", name);
	}
	run->session = xstrdup(url);
	json_object_put(ans);
	http_resp_clear(&r);
	return 0;
}

/*
 * The decoded bytes [pos, pos + n) into buf, which holds [*have_at,
 * *have_at + *have) already; rd is at *have_at + *have.
 */
static int
chunk_load(const struct graph_part *gp, struct graph_reader **rd, char *buf,
    uint64_t *have_at, size_t *have, uint64_t pos, size_t n)
{
	char		 skip[16384];
	uint64_t	 at = *have_at + *have;
	ssize_t		 got;
	size_t		 keep = 0;

	if (pos >= *have_at && pos < at) {
		keep = (size_t)(at - pos);	/* already read */
		if (keep > n)
			keep = n;
		memmove(buf, buf + (pos - *have_at), keep);
	} else if (pos < *have_at || *rd == NULL) {
		graph_part_close(*rd);	/* back to the start */
		*rd = graph_part_open(gp);
		at = 0;
	}
	while (keep == 0 && at < pos) {
		size_t want = pos - at < sizeof(skip) ? (size_t)(pos - at) :
		    sizeof(skip);

		if ((got = graph_part_read(*rd, skip, want)) <= 0)
			return -1;
		at += (uint64_t)got;
	}
	if (keep < n) {
		got = graph_part_read(*rd, buf + keep, n - keep);
		if (got != (ssize_t)(n - keep))
			return -1;
	}
	*have_at = pos;
	*have = n;
	return 0;
}

/*
 * How many of the draft's attachments are named name, or -1 if Graph does
 * not say. Names, not sizes: Graph's size of an attachment is not that of
 * its content.
 */
static int
attached(struct run *run, const char *name)
{
	struct http_resp	 r;
	json_object		*root, *arr;
	char			*url;
	size_t			 i;
	int			 n = -1;

	xasprintf(&url, "%s/attachments?$select=name", run->msg_url);
	run->io->call(run->io->arg, "GET", url, "application/json", NULL, 0,
	    HTTP_BODY_MAX, &r);
	free(url);
	root = r.status == 200 ? parse(&r) : NULL;
	if (root != NULL && json_object_object_get_ex(root, "value", &arr) &&
	    json_object_is_type(arr, json_type_array)) {
		n = 0;
		for (i = 0; i < json_object_array_length(arr); i++) {
			const char *s = jget(json_object_array_get_idx(arr, i),
			    "name");

			if (s != NULL && strcmp(s, name) == 0)
				n++;
		}
	}
	json_object_put(root);
	http_resp_clear(&r);
	return n;
}

/*
 * One part through an upload session, resumed where Graph says. prior:
 * how many parts of the same name the draft had before this one.
 */
static int
upload(struct run *run, const struct graph_part *gp, const char *name,
    int prior)
{
	struct graph_reader	*rd = NULL;
	struct http_resp	 r;
	char			*buf = xmalloc(DRAFT_CHUNK), range[96];
	const char		*hdrs[3];
	uint64_t		 pos = 0, have_at = 0;
	size_t			 have = 0, n;
	int64_t			 next;
	int			 fails = 0, sessions = 1, rc = -1;

	memset(&r, 0, sizeof(r));
	if (session_open(run, gp, name) == -1)
		goto out;
	for (;;) {
		n = gp->size - pos < DRAFT_CHUNK ? (size_t)(gp->size - pos) :
		    DRAFT_CHUNK;
		if (chunk_load(gp, &rd, buf, &have_at, &have, pos, n) == -1) {
			snprintf(r.error, sizeof(r.error), "cannot read the "
			    "part back from the spool");
			fail(run, &r, "upload of %s", name);
			goto out;
		}
		snprintf(range, sizeof(range), "Content-Range: bytes %" PRIu64
		    "-%" PRIu64 "/%" PRIu64, pos, pos + n - 1, gp->size);
		hdrs[0] = "Content-Type: application/octet-stream";
		hdrs[1] = range;
		hdrs[2] = NULL;
		http_request(run->io->c, "PUT", run->session, hdrs, buf, n,
		    HTTP_BODY_MAX, &r);
		if (r.status == 201) {
			rc = 0;
			break;
		}
		if (r.status == 200 && (next = next_expected(&r)) >= 0 &&
		    (uint64_t)next > pos && (uint64_t)next <= gp->size) {
			pos = (uint64_t)next;
			fails = 0;
			http_resp_clear(&r);
			continue;
		}
		if (++fails > DRAFT_CHUNK_TRIES || http_stopping() ||
		    graph_result_step(r.status, NULL) == GRAPH_STEP_FATAL) {
			fail(run, &r, "upload of %s at byte %" PRIu64 " of %"
			    PRIu64, name, pos, gp->size);
			goto out;
		}
		log_debug("draft: upload of %s at byte %" PRIu64 ": status "
		    "%ld, asking where to go on", name, pos, r.status);
		http_resp_clear(&r);
		nap_ms(250u << (fails - 1));	/* 0.25 s ... 2 s */
		/* Where does the session stand? (A PUT may have been taken.) */
		http_request(run->io->c, "GET", run->session, NULL, NULL, 0,
		    HTTP_BODY_MAX, &r);
		if (r.status == 200 && (next = next_expected(&r)) >= 0 &&
		    (uint64_t)next <= gp->size)
			pos = (uint64_t)next;
		else if (graph_result_step(r.status, NULL) ==
		    GRAPH_STEP_RESTART) {
			/*
			 * Expired, or closed by our last chunk whose 201 was
			 * lost: the draft's attachments tell which.
			 */
			free(run->session);
			run->session = NULL;
			http_resp_clear(&r);
			if (pos + n == gp->size &&
			    attached(run, gp->name) > prior) {
				log_info("draft: %s was taken whole, its last "
				    "answer lost", name);
				rc = 0;
				goto out;
			}
			/* Expired: a new session, from the start. */
			if (++sessions > DRAFT_SESSIONS_MAX) {
				snprintf(r.error, sizeof(r.error), "upload "
				    "session expired %d times",
				    DRAFT_SESSIONS_MAX);
				fail(run, &r, "upload of %s", name);
				goto out;
			}
			if (session_open(run, gp, name) == -1)
				goto out;
			pos = 0;
		}
		http_resp_clear(&r);
	}
	free(run->session);	/* done: the session is closed by Graph */
	run->session = NULL;
out:
	http_resp_clear(&r);
	graph_part_close(rd);
	free(buf);
	return rc;
}

/* One part under GRAPH_UPLOAD_MIN: a fileAttachment in one POST. */
static int
attach(struct run *run, const struct graph_part *gp, const char *name)
{
	struct graph_reader	*rd;
	struct http_resp	 r;
	json_object		*att;
	char			*raw, *b64;
	size_t			 len;
	ssize_t			 got;

	memset(&r, 0, sizeof(r));
	raw = xmalloc(gp->size + 1);
	rd = graph_part_open(gp);
	got = graph_part_read(rd, raw, gp->size);
	graph_part_close(rd);
	if (got != (ssize_t)gp->size) {
		free(raw);
		snprintf(r.error, sizeof(r.error), "cannot read the part "
		    "back from the spool");
		return fail(run, &r, "attachment %s", name);
	}
	b64 = xmalloc(MIME_B64_LEN(gp->size) + 1);
	len = mime_b64_encode((unsigned char *)raw, gp->size, b64);
	free(raw);
	att = part_json(gp, "@odata.type", "#microsoft.graph.fileAttachment");
	json_object_object_add(att, "contentBytes",
	    json_object_new_string_len(b64, (int)len));
	free(b64);
	post_json(run, "/attachments", att, &r);
	if (r.status != 201)
		return fail(run, &r, "attachment %s", name);
	http_resp_clear(&r);
	return 0;
}

int
draft_delete(const struct draft_io *io, const char *id)
{
	struct http_resp	 r;
	char			*url;
	int			 gone;

	xasprintf(&url, "%s/messages/%s", io->user_url, id);
	io->call(io->arg, "DELETE", url, "application/json", NULL, 0,
	    HTTP_BODY_MAX, &r);
	free(url);
	gone = r.status == 204 || r.status == 200 || r.status == 404;
	http_resp_clear(&r);
	return gone ? 0 : -1;
}

/* After a failure: no session, no draft left behind (if Graph lets us). */
static void
clean_up(struct run *run)
{
	session_cancel(run);
	if (run->id != NULL && draft_delete(run->io, run->id) == -1)
		run->out->stray = xstrdup(run->id);
}

int
draft_send(const struct draft_io *io, struct graph_draft *d,
    struct draft_out *out)
{
	struct run		 run;
	struct http_resp	 r;
	json_object		*ans;
	const char		*id;
	char			*url, name[96];
	size_t			 i;
	int			 rc = -1;

	memset(out, 0, sizeof(*out));
	memset(&run, 0, sizeof(run));
	run.io = io;
	run.out = out;
	xasprintf(&url, "%s/messages", io->user_url);
	io->call(io->arg, "POST", url, "application/json", d->req.body,
	    d->req.len, DRAFT_ANSWER_MAX, &r);
	free(url);
	ans = r.status == 201 ? parse(&r) : NULL;
	if ((id = jget(ans, "id")) == NULL) {
		json_object_put(ans);
		out->no_permission = r.status == 403;
		return fail(&run, &r, "creating the draft");
	}
	run.id = http_escape(id);
	json_object_put(ans);
	http_resp_clear(&r);
	xasprintf(&run.msg_url, "%s/messages/%s", io->user_url, run.id);
	for (i = 0; i < d->nparts; i++) {
		const struct graph_part *gp = &d->parts[i];
		size_t	 j;
		int	 prior = 0;

		for (j = 0; j < i; j++)
			prior += strcmp(d->parts[j].name, gp->name) == 0;
		log_escape(name, sizeof(name), gp->name, strlen(gp->name));
		if ((gp->size >= GRAPH_UPLOAD_MIN ?
		    upload(&run, gp, name, prior) :
		    attach(&run, gp, name)) == -1) {
			clean_up(&run);
			goto out;
		}
	}
	xasprintf(&url, "%s/send", run.msg_url);
	draft_call(&run, "POST", url, "", 0, &r);
	free(url);
	if (r.status == 202) {
		http_resp_clear(&r);
		rc = 0;
		goto out;
	}
	fail(&run, &r, "sending the draft");
	if (out->resp.status == 0) {
		/* No answer: if the draft is gone, it went out. */
		struct http_resp	 g;

		xasprintf(&url, "%s", run.msg_url);
		io->call(io->arg, "GET", url, "application/json", NULL, 0,
		    HTTP_BODY_MAX, &g);
		free(url);
		if (is_not_found(&g)) {
			http_resp_clear(&g);
			out->maybe_sent = 1;
			goto out;
		}
		http_resp_clear(&g);
	}
	clean_up(&run);
out:
	free(run.id);
	free(run.msg_url);
	free(run.session);
	return rc;
}

void
draft_out_clear(struct draft_out *out)
{
	http_resp_clear(&out->resp);
	free(out->stray);
	out->stray = NULL;
}

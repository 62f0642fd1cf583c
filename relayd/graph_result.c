/*
 * graph_result.c - what Graph's answers mean, in one table.
 *
 * Each row names an answer (HTTP status range, Graph's error code, words
 * in Graph's message) and says what it means for everyone who asks:
 *   - the class: what the queue does with the message (worker.c, through
 *     graph_classify's GRAPH_* result and GRAPH_F_* flags);
 *   - the SMTP reply a waiting client gets ([smtp] reply_after = graph,
 *     graph_refusal);
 *   - the admin's words, what it means and what to do (dead letters,
 *     bounces, relayctl show/dead/test: graph_explain);
 *   - what the draft path does when one of its requests fails (draft.c).
 * Rows come from ../shared/graph/FACTS.md sections 3 and 4. A lookup
 * takes, column by column, the first matching row that fills the column:
 * a row that leaves one empty (NULL, *_NONE) lets the rows below it
 * decide, which is how a code row (503 ErrorServerBusy holds the mailbox)
 * keeps its status's words (503: Graph is failing). So specific rows come
 * first, then status rows, then ranges; the last row matches anything.
 * 202 and 413 go before the code rows: they mean what they mean whatever
 * the body says. Pure: no I/O, no state; safe on any thread.
 */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "graph_result.h"
#include "log.h"
#include "util.h"

#define ANY		LONG_MIN, LONG_MAX
#define ONLY(s)		s, s
#define ERROR_BODY_MAX	(64 * 1024)	/* larger bodies are not read */

static const struct graph_result_row answers[] = {
	{ ONLY(202), NULL, NULL, GRAPH_C_SENT, 0, NULL, NULL, 0 },
	{ ONLY(413), NULL, NULL, GRAPH_C_PERMANENT, 0, "552 5.3.4",
	  "the message is larger than Graph takes: send a smaller one", 0 },
	/* The message or the request is wrong: the same request fails again. */
	{ ONLY(400), "ErrorMimeContentInvalidBase64String", NULL,
	  GRAPH_C_PERMANENT, 0, NULL, NULL, 0 },
	{ ONLY(400), "RequestBodyRead", NULL, GRAPH_C_PERMANENT, 0, NULL,
	  NULL, 0 },
	{ ONLY(400), "BadRequest", NULL, GRAPH_C_PERMANENT, 0, NULL, NULL, 0 },
	{ ONLY(400), "InvalidInternetMessageHeader", NULL, GRAPH_C_PERMANENT,
	  0, NULL, NULL, 0 },
	{ ONLY(400), "InvalidInternetMessageHeaderCollection", NULL,
	  GRAPH_C_PERMANENT, 0, NULL, NULL, 0 },
	{ ONLY(400), "ErrorInvalidRecipients", NULL, GRAPH_C_PERMANENT, 0,
	  "550 5.1.1", "Graph found no valid recipient: check the addresses",
	  0 },
	{ ONLY(400), "ErrorMessageSizeExceeded", NULL, GRAPH_C_PERMANENT, 0,
	  "552 5.3.4", "the message is larger than the mailbox may send: send "
	  "a smaller one, or raise the mailbox's MaxSendSize in Exchange", 0 },
	{ ONLY(400), "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize", NULL,
	  GRAPH_C_PERMANENT, 0, NULL, NULL, 0 },
	/* The token: a fresh one once; permissions are configuration. */
	{ ONLY(401), "InvalidAuthenticationToken", NULL, GRAPH_C_REAUTH, 0,
	  NULL, NULL, 0 },
	{ ONLY(401), "NoPermissionsInAccessToken", NULL, GRAPH_C_PERMANENT, 0,
	  NULL, NULL, 0 },
	/* FACTS.md 4: "Access to OData is disabled." (the policy) */
	{ ONLY(403), NULL, "Access to OData is disabled", GRAPH_C_NONE, 0,
	  NULL, "an application access policy (or RBAC for Applications "
	  "scope) keeps the app away from this mailbox: add the mailbox to the "
	  "policy's group, or send from one that is in it", 0 },
	{ ONLY(403), "ErrorAccessDenied", NULL, GRAPH_C_PERMANENT, 0, NULL,
	  "the app lacks the Mail.Send application permission, or admin "
	  "consent was not granted: in Entra ID, App registrations > API "
	  "permissions, add Microsoft Graph > Application > Mail.Send and "
	  "grant admin consent", 0 },
	{ ONLY(403), "ErrorSendAsDenied", NULL, GRAPH_C_PERMANENT, 0, NULL,
	  "the app may send from the mailbox, but not as this From: address: "
	  "send as the mailbox's own address, or give the mailbox Send As "
	  "rights on that address", 0 },
	{ ONLY(404), "MailboxNotEnabledForRESTAPI", NULL, GRAPH_C_PERMANENT, 0,
	  NULL, "the mailbox is not in Exchange Online (on-premises, or no "
	  "Exchange Online licence): license it, or send from another", 0 },
	{ ONLY(404), "ErrorInvalidUser", NULL, GRAPH_C_PERMANENT, 0, NULL,
	  "no such mailbox in the tenant: check the address (or [graph] "
	  "mailbox)", 0 },
	{ ONLY(404), "ResourceNotFound", NULL, GRAPH_C_PERMANENT, 0, NULL,
	  "no such user in the tenant: check the address (or [graph] "
	  "mailbox)", 0 },
	/* A draft just made may not be in Exchange's store yet. */
	{ ONLY(404), "ErrorItemNotFound", NULL, GRAPH_C_PERMANENT, 0, NULL,
	  NULL, GRAPH_STEP_AGAIN },
	/* Throttling is per app and mailbox. */
	{ ONLY(429), "TooManyRequests", NULL, GRAPH_C_HOLD_MAILBOX, 0, NULL,
	  NULL, 0 },
	{ ONLY(429), "ApplicationThrottled", NULL, GRAPH_C_HOLD_MAILBOX, 0,
	  NULL, NULL, 0 },
	{ ANY, "ErrorQuotaExceeded", NULL, GRAPH_C_HOLD_QUOTA, 0, NULL, NULL,
	  0 },
	{ ANY, "ErrorServerBusy", NULL, GRAPH_C_HOLD_MAILBOX, 0, NULL, NULL,
	  0 },
	{ ANY, "ErrorMailboxStoreUnavailable", NULL, GRAPH_C_HOLD_MAILBOX, 0,
	  NULL, NULL, 0 },
	{ ANY, "ErrorTimeoutExpired", NULL, GRAPH_C_HOLD_GRAPH, 1, NULL, NULL,
	  0 },
	/* A 504 may come after the send went through. */
	{ ONLY(504), NULL, NULL, GRAPH_C_HOLD_GRAPH, 1, NULL, NULL, 0 },
	/* Other codes by status. On an uploadUrl 401 and 404 are its end. */
	{ ONLY(401), NULL, NULL, GRAPH_C_REAUTH, 0, "550 5.7.1",
	  "Graph refused the token: is graph_url right for the tenant's "
	  "cloud ([graph] cloud)?", GRAPH_STEP_RESTART },
	{ ONLY(403), NULL, NULL, GRAPH_C_PERMANENT, 0, "550 5.7.1", NULL, 0 },
	{ ONLY(404), NULL, NULL, GRAPH_C_PERMANENT, 0, "550 5.1.7", NULL,
	  GRAPH_STEP_RESTART },
	{ ONLY(408), NULL, NULL, GRAPH_C_RETRY, 0, NULL, NULL,
	  GRAPH_STEP_RESUME },
	{ ONLY(416), NULL, NULL, GRAPH_C_PERMANENT, 0, NULL, NULL,
	  GRAPH_STEP_RESUME },
	{ ONLY(429), NULL, NULL, GRAPH_C_HOLD_MAILBOX, 0, NULL,
	  "Graph is throttling the app or the mailbox: try again in a minute",
	  GRAPH_STEP_RESUME },
	/* No answer (connection error, timeout): Graph may be failing. */
	{ ONLY(0), NULL, NULL, GRAPH_C_HOLD_GRAPH, 0, NULL, NULL,
	  GRAPH_STEP_RESUME },
	/* 500, 502, 503, 509 ...: Graph's own trouble. */
	{ 500, LONG_MAX, NULL, NULL, GRAPH_C_HOLD_GRAPH, 0, NULL,
	  "Graph itself is failing: try again later", GRAPH_STEP_RESUME },
	/* 400, 403, 404 ...: the same request would fail again. */
	{ 400, 499, NULL, NULL, GRAPH_C_PERMANENT, 0, NULL, NULL,
	  GRAPH_STEP_FATAL },
	{ ANY, NULL, NULL, GRAPH_C_PERMANENT, 0, "554 5.6.0", NULL,
	  GRAPH_STEP_RESUME },
};

const struct graph_result_row *
graph_result_rows(size_t *n)
{
	*n = NELEM(answers);
	return answers;
}

static int
matches(const struct graph_result_row *a, long status, const char *code,
    const char *message)
{
	if (status < a->lo || status > a->hi)
		return 0;
	if (a->code != NULL && (code == NULL || strcmp(a->code, code) != 0))
		return 0;
	if (a->in_message != NULL && (message == NULL ||
	    strcasestr(message, a->in_message) == NULL))
		return 0;
	return 1;
}

/* The first matching row after prev (NULL: from the top). */
static const struct graph_result_row *
next(const struct graph_result_row *prev, long status, const char *code,
    const char *message)
{
	const struct graph_result_row *a = prev == NULL ? answers : prev + 1;

	for (; a < answers + NELEM(answers); a++)
		if (matches(a, status, code, message))
			return a;
	return NULL;
}

const struct graph_result_row *
graph_result_find(long status, const char *code, const char *message)
{
	return next(NULL, status, code, message);
}

/* The last row matches anything and fills every column but words. */
enum graph_class
graph_result_class(long status, const char *code, unsigned *flags)
{
	const struct graph_result_row *a = NULL;

	while ((a = next(a, status, code, NULL))->cls == GRAPH_C_NONE)
		;
	*flags = a->maybe_sent ? GRAPH_F_DUPLICATE : 0;
	return a->cls;
}

enum graph_step
graph_result_step(long status, const char *code)
{
	const struct graph_result_row *a = NULL;

	while ((a = next(a, status, code, NULL))->step == GRAPH_STEP_NONE)
		;
	return a->step;
}

const char *
graph_explain(long status, const char *code, const char *message)
{
	const struct graph_result_row *a = NULL;

	while ((a = next(a, status, code, message)) != NULL)
		if (a->words != NULL)
			return a->words;
	return NULL;
}

static const char *
reply_code(long status, const char *code)
{
	const struct graph_result_row *a = NULL;

	while ((a = next(a, status, code, NULL))->reply == NULL)
		;
	return a->reply;
}

/* A class as the queue's result and flags. */
static enum graph_result
result_of(enum graph_class cls, unsigned *flags)
{
	switch (cls) {
	case GRAPH_C_SENT:
		return GRAPH_SENT;
	case GRAPH_C_REAUTH:
		return GRAPH_REAUTH;
	case GRAPH_C_HOLD_MAILBOX:
		*flags |= GRAPH_F_MAILBOX;
		return GRAPH_TEMPFAIL;
	case GRAPH_C_HOLD_QUOTA:
		*flags |= GRAPH_F_QUOTA;
		return GRAPH_TEMPFAIL;
	case GRAPH_C_HOLD_GRAPH:
		*flags |= GRAPH_F_SERVICE;
		return GRAPH_TEMPFAIL;
	case GRAPH_C_RETRY:
		return GRAPH_TEMPFAIL;
	case GRAPH_C_NONE:
	case GRAPH_C_PERMANENT:
		break;
	}
	return GRAPH_PERMFAIL;
}

/* Graph's error code and message from an error body, if it has them. */
static void
error_body(const char *body, size_t len, struct graph_error *ge)
{
	struct json_tokener	*tok;
	json_object		*root, *e, *v;

	if (body == NULL || len == 0 || len >= ERROR_BODY_MAX)
		return;
	tok = json_tokener_new();
	root = json_tokener_parse_ex(tok, body, (int)len);
	json_tokener_free(tok);
	if (root != NULL && json_object_object_get_ex(root, "error", &e) &&
	    json_object_is_type(e, json_type_object)) {
		if (json_object_object_get_ex(e, "code", &v) &&
		    json_object_is_type(v, json_type_string))
			log_escape(ge->code, sizeof(ge->code),
			    json_object_get_string(v),
			    (size_t)json_object_get_string_len(v));
		if (json_object_object_get_ex(e, "message", &v) &&
		    json_object_is_type(v, json_type_string))
			log_escape(ge->message, sizeof(ge->message),
			    json_object_get_string(v),
			    (size_t)json_object_get_string_len(v));
	}
	if (root != NULL)
		json_object_put(root);
}

enum graph_result
graph_classify(long status, const char *body, size_t len,
    struct graph_error *ge)
{
	ge->message[0] = '\0';
	if (status == 0)
		snprintf(ge->code, sizeof(ge->code), "no_answer");
	else
		snprintf(ge->code, sizeof(ge->code), "http_%ld", status);
	if (status != 0 && status != 202)
		error_body(body, len, ge);
	return result_of(graph_result_class(status, ge->code, &ge->flags),
	    &ge->flags);
}

long long
graph_retry_after_ms(const char *v, long long now_wall_ms)
{
	struct tm	 tm;
	char		*end;
	double		 d;
	time_t		 t;

	if (v == NULL)
		return -1;
	while (isspace((unsigned char)*v))
		v++;
	if (isdigit((unsigned char)*v)) {
		d = strtod(v, &end);
		while (isspace((unsigned char)*end))
			end++;
		if (*end != '\0' || d < 0 || d > 86400.0 * 7)
			return -1;
		return (long long)(d * 1000.0 + 0.5);
	}
	memset(&tm, 0, sizeof(tm));
	end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
	if (end == NULL)
		return -1;
	t = timegm(&tm);
	if ((long long)t * 1000 <= now_wall_ms)
		return 0;
	if ((long long)t * 1000 - now_wall_ms > 86400LL * 7 * 1000)
		return -1;
	return (long long)t * 1000 - now_wall_ms;
}

void
graph_refusal(long status, const char *code, const char *message, char *buf,
    size_t len)
{
	const char	*reply = reply_code(status, code), *words;
	size_t		 i;

	if ((words = graph_explain(status, code, message)) == NULL)
		words = *message != '\0' ? message : "no reason given";
	if (status == 0)	/* relayd's mapping: Graph never saw it */
		snprintf(buf, len, "%s Message cannot be sent through Graph: "
		    "%s: %s", reply, code, words);
	else
		snprintf(buf, len, "%s Graph refused the message: %s: %s",
		    reply, code, words);
	/* One line of printable ASCII: Graph's message may hold anything. */
	for (i = 0; buf[i] != '\0'; i++)
		if (buf[i] < 0x20 || buf[i] > 0x7e)
			buf[i] = '?';
}

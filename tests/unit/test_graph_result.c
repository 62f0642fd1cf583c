/*
 * Unit tests for graph_result.c: what Graph's answers mean. One case per
 * row of the table (and a check that no row goes without one), unknown
 * codes, which row wins, the admin's words, the SMTP replies, the draft
 * path's steps and Retry-After.
 */
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "graph_result.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define ERRBODY_MAX	512

/* What one answer should mean, through every lookup. */
struct want {
	long		 status;
	const char	*code;		/* NULL: no error body */
	const char	*message;
	enum graph_result result;
	unsigned	 flags;
	const char	*reply;		/* graph_refusal's first 9 bytes */
	const char	*words;		/* in graph_explain's; NULL: none */
	enum graph_step	 step;		/* by status and code */
};

static enum graph_result
classify(const struct want *w, struct graph_error *ge)
{
	char	 body[ERRBODY_MAX];

	if (w->code == NULL)
		return graph_classify(w->status, NULL, 0, ge);
	snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\","
	    "\"message\":\"%s\"}}", w->code, w->message);
	return graph_classify(w->status, body, strlen(body), ge);
}

/* Checks every lookup for one case; returns the row that decided. */
static const struct graph_result_row *
check(const struct want *w, size_t i)
{
	struct graph_error	 ge;
	enum graph_result	 r;
	const char		*words;
	char			 buf[480];

	r = classify(w, &ge);
	if (r != w->result || ge.flags != w->flags)
		fail_msg("case %zu (%ld %s): got result %d flags %#x, want "
		    "%d %#x", i, w->status, ge.code, r, ge.flags, w->result,
		    w->flags);
	words = graph_explain(w->status, ge.code, w->message);
	if (w->words == NULL ? words != NULL :
	    words == NULL || strstr(words, w->words) == NULL)
		fail_msg("case %zu (%ld %s): got words \"%s\", want \"%s\"", i,
		    w->status, ge.code, words ? words : "(none)",
		    w->words ? w->words : "(none)");
	graph_refusal(w->status, ge.code, w->message, buf, sizeof(buf));
	if (strncmp(buf, w->reply, strlen(w->reply)) != 0)
		fail_msg("case %zu (%ld %s): got reply \"%s\", want \"%s\"", i,
		    w->status, ge.code, buf, w->reply);
	if (graph_result_step(w->status, ge.code) != w->step)
		fail_msg("case %zu (%ld %s): got step %d, want %d", i,
		    w->status, ge.code, graph_result_step(w->status, ge.code),
		    w->step);
	return graph_result_find(w->status, ge.code, w->message);
}

#define T	GRAPH_TEMPFAIL
#define P	GRAPH_PERMFAIL
#define MB	GRAPH_F_MAILBOX
#define SV	GRAPH_F_SERVICE
#define DUP	GRAPH_F_DUPLICATE
#define FATAL	GRAPH_STEP_FATAL
#define RESUME	GRAPH_STEP_RESUME
#define RESTART	GRAPH_STEP_RESTART

/* One case per row, in the table's order. */
static const struct want rows[] = {
	{ 202, NULL, "", GRAPH_SENT, 0, "554 5.6.0", NULL, RESUME },
	{ 413, NULL, "", P, 0, "552 5.3.4", "larger than Graph takes", FATAL },
	{ 400, "ErrorMimeContentInvalidBase64String", "m", P, 0, "554 5.6.0",
	  NULL, FATAL },
	{ 400, "RequestBodyRead", "m", P, 0, "554 5.6.0", NULL, FATAL },
	{ 400, "BadRequest", "m", P, 0, "554 5.6.0", NULL, FATAL },
	{ 400, "InvalidInternetMessageHeader", "m", P, 0, "554 5.6.0", NULL,
	  FATAL },
	{ 400, "InvalidInternetMessageHeaderCollection", "m", P, 0,
	  "554 5.6.0", NULL, FATAL },
	{ 400, "ErrorInvalidRecipients", "m", P, 0, "550 5.1.1",
	  "no valid recipient", FATAL },
	{ 400, "ErrorMessageSizeExceeded", "m", P, 0, "552 5.3.4",
	  "MaxSendSize", FATAL },
	{ 400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize", "m", P, 0,
	  "554 5.6.0", NULL, FATAL },
	{ 401, "InvalidAuthenticationToken", "m", GRAPH_REAUTH, 0, "550 5.7.1",
	  "graph_url", RESTART },
	{ 401, "NoPermissionsInAccessToken", "m", P, 0, "550 5.7.1",
	  "graph_url", RESTART },
	{ 403, "ErrorAccessDenied", "Access to OData is disabled.", P, 0,
	  "550 5.7.1", "application access policy", FATAL },
	{ 403, "ErrorAccessDenied", "Access is denied.", P, 0, "550 5.7.1",
	  "Mail.Send", FATAL },
	{ 403, "ErrorSendAsDenied", "m", P, 0, "550 5.7.1", "Send As", FATAL },
	{ 404, "MailboxNotEnabledForRESTAPI", "m", P, 0, "550 5.1.7",
	  "license it", RESTART },
	{ 404, "ErrorInvalidUser", "", P, 0, "550 5.1.7", "no such mailbox",
	  RESTART },
	{ 404, "ResourceNotFound", "", P, 0, "550 5.1.7", "no such user",
	  RESTART },
	{ 404, "ErrorItemNotFound", "m", P, 0, "550 5.1.7", NULL,
	  GRAPH_STEP_AGAIN },
	{ 429, "TooManyRequests", "m", T, MB, "554 5.6.0", "throttling",
	  RESUME },
	{ 429, "ApplicationThrottled", "m", T, MB, "554 5.6.0", "throttling",
	  RESUME },
	{ 403, "ErrorQuotaExceeded", "m", T, GRAPH_F_QUOTA, "550 5.7.1", NULL,
	  FATAL },
	{ 503, "ErrorServerBusy", "m", T, MB, "554 5.6.0", "Graph itself",
	  RESUME },
	{ 500, "ErrorMailboxStoreUnavailable", "m", T, MB, "554 5.6.0",
	  "Graph itself", RESUME },
	{ 500, "ErrorTimeoutExpired", "m", T, SV | DUP, "554 5.6.0",
	  "Graph itself", RESUME },
	{ 504, NULL, "", T, SV | DUP, "554 5.6.0", "Graph itself", RESUME },
	{ 401, NULL, "", GRAPH_REAUTH, 0, "550 5.7.1", "graph_url", RESTART },
	{ 403, NULL, "", P, 0, "550 5.7.1", NULL, FATAL },
	{ 404, NULL, "", P, 0, "550 5.1.7", NULL, RESTART },
	{ 408, NULL, "", T, 0, "554 5.6.0", NULL, RESUME },
	{ 416, NULL, "", P, 0, "554 5.6.0", NULL, RESUME },
	{ 429, NULL, "", T, MB, "554 5.6.0", "throttling", RESUME },
	{ 0, NULL, "", T, SV, "554 5.6.0", NULL, RESUME },
	{ 503, NULL, "", T, SV, "554 5.6.0", "try again later", RESUME },
	{ 418, NULL, "", P, 0, "554 5.6.0", NULL, FATAL },
	{ 302, NULL, "", P, 0, "554 5.6.0", NULL, RESUME },
};

/* Every row answers as its case says, and no row goes without a case. */
static void
test_every_row(void **state)
{
	const struct graph_result_row	*table, *a;
	size_t				 n, i;
	unsigned char			 seen[128];

	(void)state;
	table = graph_result_rows(&n);
	assert_true(n <= sizeof(seen));
	memset(seen, 0, sizeof(seen));
	for (i = 0; i < NELEM(rows); i++) {
		a = check(&rows[i], i);
		assert_non_null(a);
		seen[a - table] = 1;
	}
	for (i = 0; i < n; i++)
		if (!seen[i])
			fail_msg("row %zu (%ld..%ld %s) has no case", i,
			    table[i].lo, table[i].hi,
			    table[i].code ? table[i].code : "any");
	/* Each row is found at its own key: none is hidden by another. */
	for (i = 0; i < n; i++) {
		a = graph_result_find(table[i].lo, table[i].code ?
		    table[i].code : "NoSuchCode", table[i].in_message);
		if (a != &table[i])
			fail_msg("row %zu is hidden by row %td", i,
			    a != NULL ? a - table : -1);
	}
}

/* A code the table does not know means what its status means. */
static void
test_unknown_codes(void **state)
{
	static const struct want cases[] = {
		{ 400, "SomethingNew", "m", P, 0, "554 5.6.0", NULL, FATAL },
		{ 401, "SomethingNew", "m", GRAPH_REAUTH, 0, "550 5.7.1",
		  "graph_url", RESTART },
		{ 404, "SomethingNew", "m", P, 0, "550 5.1.7", NULL, RESTART },
		{ 429, "SomethingNew", "m", T, MB, "554 5.6.0", "throttling",
		  RESUME },
		{ 503, "serviceNotAvailable", "m", T, SV, "554 5.6.0",
		  "Graph itself", RESUME },
		{ 599, "SomethingNew", "m", T, SV, "554 5.6.0", "Graph itself",
		  RESUME },
		{ 299, "SomethingNew", "m", P, 0, "554 5.6.0", NULL, RESUME },
		{ 1000, NULL, "", T, SV, "554 5.6.0", "Graph itself", RESUME },
		{ -1, NULL, "", P, 0, "554 5.6.0", NULL, RESUME },
	};
	struct graph_error	 ge;
	char			 buf[480];
	size_t			 i;

	(void)state;
	for (i = 0; i < NELEM(cases); i++)
		check(&cases[i], i);
	/* relayd's own codes (status 0): nothing to add, 554 5.6.0. */
	assert_null(graph_explain(0, "mapping", "not MIME"));
	graph_refusal(0, "spool", "damaged", buf, sizeof(buf));
	assert_string_equal(buf, "554 5.6.0 Message cannot be sent through "
	    "Graph: spool: damaged");
	/* A body that is not Graph's error: the status decides. */
	assert_int_equal(graph_classify(400, "<html/>", 7, &ge),
	    GRAPH_PERMFAIL);
	assert_string_equal(ge.code, "http_400");
}

/* A row for a code goes before the row for its status alone. */
static void
test_precedence(void **state)
{
	static const struct want cases[] = {
		/* The code decides the class, the status the rest. */
		{ 429, "ErrorQuotaExceeded", "m", T, GRAPH_F_QUOTA,
		  "554 5.6.0", "throttling", RESUME },
		{ 401, "ErrorServerBusy", "m", T, MB, "550 5.7.1", "graph_url",
		  RESTART },
		{ 502, "ErrorTimeoutExpired", "m", T, SV | DUP, "554 5.6.0",
		  "Graph itself", RESUME },
		/* The policy's 403 is told by its message, whatever the code;
		 * its class is the code's. */
		{ 403, "ErrorQuotaExceeded", "access to OData is disabled",
		  T, GRAPH_F_QUOTA, "550 5.7.1", "application access policy",
		  FATAL },
		/* 202 and 413 whatever the body says. */
		{ 202, "TooManyRequests", "m", GRAPH_SENT, 0, "554 5.6.0",
		  NULL, RESUME },
		{ 413, "ErrorQuotaExceeded", "m", P, 0, "552 5.3.4",
		  "larger than Graph takes", FATAL },
	};
	const struct graph_result_row	*table, *code_row, *status_row;
	size_t				 n, i;

	(void)state;
	for (i = 0; i < NELEM(cases); i++)
		check(&cases[i], i);
	/* A code row comes before its status's row. */
	table = graph_result_rows(&n);
	for (i = 0; i < n; i++) {
		if (table[i].code == NULL || table[i].lo != table[i].hi)
			continue;
		code_row = &table[i];
		status_row = graph_result_find(code_row->lo, "NoSuchCode",
		    NULL);
		assert_non_null(status_row);
		if (status_row < code_row)
			fail_msg("row %zu (%ld %s) comes after its status's "
			    "row %td", i, code_row->lo, code_row->code,
			    status_row - table);
	}
}

/* An action the admin can take, as the words name it. */
static const char *const actions[] = {
	"add ", "send ", "check ", "license ", "grant ", "raise ", "try ",
	"[graph] ",
};

/* Every row's words say what it means, then what to do. */
static void
test_advice(void **state)
{
	const struct graph_result_row	*table;
	const char			*todo;
	size_t				 n, i, k;
	int				 acts;

	(void)state;
	table = graph_result_rows(&n);
	for (i = 0; i < n; i++) {
		if (table[i].reply != NULL && (table[i].reply[0] != '5' ||
		    strlen(table[i].reply) != 9 ||
		    strncmp(table[i].reply + 3, " 5.", 3) != 0))
			fail_msg("row %zu: reply \"%s\" is not \"5xx 5.x.y\"",
			    i, table[i].reply);
		if (table[i].words == NULL)
			continue;
		if ((todo = strstr(table[i].words, ": ")) == NULL ||
		    todo == table[i].words || todo[2] == '\0')
			fail_msg("row %zu: \"%s\" is not \"meaning: what to "
			    "do\"", i, table[i].words);
		for (acts = 0, k = 0; k < NELEM(actions); k++)
			acts |= strstr(todo, actions[k]) != NULL;
		if (!acts)
			fail_msg("row %zu: \"%s\" names no action", i,
			    table[i].words);
	}
}

/* Refusals in an admin's words: by status, code and Graph's message. */
static void
test_explain(void **state)
{
	const char	*w;

	(void)state;
	w = graph_explain(403, "ErrorSendAsDenied", "m");
	assert_non_null(w);
	assert_non_null(strstr(w, "Send As"));
	/* The policy's 403 is told by its message, whatever the code. */
	w = graph_explain(403, "ErrorAccessDenied",
	    "Access to OData is disabled.");
	assert_non_null(strstr(w, "application access policy"));
	w = graph_explain(403, "ErrorAccessDenied", "Access is denied.");
	assert_non_null(strstr(w, "Mail.Send"));
	assert_non_null(strstr(graph_explain(404, "ErrorInvalidUser", ""),
	    "no such mailbox"));
	assert_non_null(strstr(graph_explain(400, "ErrorMessageSizeExceeded",
	    ""), "smaller"));
	assert_non_null(strstr(graph_explain(503, "http_503", ""),
	    "try again later"));
	/* Nothing to add: Graph's own words stand. */
	assert_null(graph_explain(400, "BadRequest", "m"));
}

/* A refusal as the one-line SMTP reply a waiting client gets. */
static void
test_refusal(void **state)
{
	static const struct {
		long		 status;
		const char	*code, *message, *want;
	} cases[] = {
		{ 403, "ErrorSendAsDenied", "m", "550 5.7.1 Graph refused the "
		  "message: ErrorSendAsDenied: the app may send from" },
		{ 403, "ErrorAccessDenied", "Access is denied.", "550 5.7.1 " },
		{ 401, "NoPermissionsInAccessToken", "m", "550 5.7.1 " },
		{ 404, "ErrorInvalidUser", "", "550 5.1.7 Graph refused the "
		  "message: ErrorInvalidUser: no such mailbox" },
		{ 400, "ErrorInvalidRecipients", "", "550 5.1.1 " },
		{ 400, "ErrorMessageSizeExceeded", "", "552 5.3.4 " },
		{ 413, "http_413", "", "552 5.3.4 " },
		/* Graph's own words when relayd has none; never raw bytes. */
		{ 400, "BadRequest", "Bad \x01 thing\r\n\xc3\xa9", "554 5.6.0 "
		  "Graph refused the message: BadRequest: Bad ? thing????" },
		{ 400, "BadRequest", "", "554 5.6.0 Graph refused the message: "
		  "BadRequest: no reason given" },
		{ 0, "mapping", "not MIME", "554 5.6.0 Message cannot be sent "
		  "through Graph: mapping: not MIME" },
	};
	char	 buf[480], big[1024];
	size_t	 i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		graph_refusal(cases[i].status, cases[i].code, cases[i].message,
		    buf, sizeof(buf));
		if (strncmp(buf, cases[i].want, strlen(cases[i].want)) != 0)
			fail_msg("case %zu: got \"%s\", want \"%s...\"", i,
			    buf, cases[i].want);
	}
	/* A long message is cut to the buffer: one line within 512. */
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	graph_refusal(400, "BadRequest", big, buf, sizeof(buf));
	assert_int_equal(strlen(buf), sizeof(buf) - 1);
}

/* One case per row of ../shared/graph/FACTS.md section 4, and the edges. */
#define ERR(c)	"{\"error\":{\"code\":\"" c "\",\"message\":\"m\"}}"
static void
test_classify(void **state)
{
	static const struct {
		long		 status;
		const char	*body;
		enum graph_result want;
		unsigned	 flags;
		const char	*code;
	} cases[] = {
		{ 202, "", GRAPH_SENT, 0, "http_202" },
		{ 400, ERR("ErrorMimeContentInvalidBase64String"),
		  GRAPH_PERMFAIL, 0, "ErrorMimeContentInvalidBase64String" },
		{ 400, ERR("RequestBodyRead"), GRAPH_PERMFAIL, 0,
		  "RequestBodyRead" },
		{ 400, ERR("BadRequest"), GRAPH_PERMFAIL, 0, "BadRequest" },
		{ 400, ERR("InvalidInternetMessageHeader"), GRAPH_PERMFAIL, 0,
		  "InvalidInternetMessageHeader" },
		{ 400, ERR("InvalidInternetMessageHeaderCollection"),
		  GRAPH_PERMFAIL, 0, "InvalidInternetMessageHeaderCollection" },
		{ 400, ERR("ErrorInvalidRecipients"), GRAPH_PERMFAIL, 0,
		  "ErrorInvalidRecipients" },
		{ 400, ERR("ErrorMessageSizeExceeded"), GRAPH_PERMFAIL, 0,
		  "ErrorMessageSizeExceeded" },
		{ 400, ERR("ErrorAttachmentSizeShouldNotBeLessThanMinimumSize"),
		  GRAPH_PERMFAIL, 0,
		  "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize" },
		{ 401, "{\"error\":{\"code\":\"InvalidAuthenticationToken\","
		  "\"message\":\"Access token has expired or is not yet "
		  "valid.\"}}", GRAPH_REAUTH, 0, "InvalidAuthenticationToken" },
		{ 401, ERR("NoPermissionsInAccessToken"), GRAPH_PERMFAIL, 0,
		  "NoPermissionsInAccessToken" },
		{ 403, ERR("ErrorAccessDenied"), GRAPH_PERMFAIL, 0,
		  "ErrorAccessDenied" },
		{ 403, "{\"error\":{\"code\":\"ErrorSendAsDenied\",\"message\":"
		  "\"The user account which was used to submit this request "
		  "does not have the right to send mail on behalf of the "
		  "specified sending account.\"}}", GRAPH_PERMFAIL, 0,
		  "ErrorSendAsDenied" },
		{ 404, ERR("MailboxNotEnabledForRESTAPI"), GRAPH_PERMFAIL, 0,
		  "MailboxNotEnabledForRESTAPI" },
		{ 404, ERR("ErrorInvalidUser"), GRAPH_PERMFAIL, 0,
		  "ErrorInvalidUser" },
		{ 404, ERR("ResourceNotFound"), GRAPH_PERMFAIL, 0,
		  "ResourceNotFound" },
		{ 413, "", GRAPH_PERMFAIL, 0, "http_413" },
		{ 429, "{\"error\":{\"code\":\"TooManyRequests\",\"message\":"
		  "\"Please retry again later.\"}}", GRAPH_TEMPFAIL,
		  GRAPH_F_MAILBOX, "TooManyRequests" },
		{ 429, ERR("ApplicationThrottled"), GRAPH_TEMPFAIL,
		  GRAPH_F_MAILBOX, "ApplicationThrottled" },
		{ 403, ERR("ErrorQuotaExceeded"), GRAPH_TEMPFAIL, GRAPH_F_QUOTA,
		  "ErrorQuotaExceeded" },
		{ 500, "{\"error\":\"x\"}", GRAPH_TEMPFAIL, GRAPH_F_SERVICE,
		  "http_500" },
		{ 503, "", GRAPH_TEMPFAIL, GRAPH_F_SERVICE, "http_503" },
		{ 503, ERR("serviceNotAvailable"), GRAPH_TEMPFAIL,
		  GRAPH_F_SERVICE, "serviceNotAvailable" },
		{ 504, "<html>gateway</html>", GRAPH_TEMPFAIL,
		  GRAPH_F_SERVICE | GRAPH_F_DUPLICATE, "http_504" },
		/* No answer at all; the worker adds DUPLICATE when the whole
		 * request had gone out. */
		{ 0, NULL, GRAPH_TEMPFAIL, GRAPH_F_SERVICE, "no_answer" },
		/* Edges: other codes and statuses by class. */
		{ 429, "", GRAPH_TEMPFAIL, GRAPH_F_MAILBOX, "http_429" },
		{ 401, "", GRAPH_REAUTH, 0, "http_401" },
		{ 408, "", GRAPH_TEMPFAIL, 0, "http_408" },
		{ 502, "", GRAPH_TEMPFAIL, GRAPH_F_SERVICE, "http_502" },
		{ 509, "", GRAPH_TEMPFAIL, GRAPH_F_SERVICE, "http_509" },
		{ 507, "", GRAPH_TEMPFAIL, GRAPH_F_SERVICE, "http_507" },
		{ 503, ERR("ErrorServerBusy"), GRAPH_TEMPFAIL, GRAPH_F_MAILBOX,
		  "ErrorServerBusy" },
		{ 500, ERR("ErrorTimeoutExpired"), GRAPH_TEMPFAIL,
		  GRAPH_F_SERVICE | GRAPH_F_DUPLICATE, "ErrorTimeoutExpired" },
		{ 400, "{not json", GRAPH_PERMFAIL, 0, "http_400" },
		{ 418, "", GRAPH_PERMFAIL, 0, "http_418" },
		/* A 202 body is never read as an error. */
		{ 202, ERR("TooManyRequests"), GRAPH_SENT, 0, "http_202" },
	};
	struct graph_error	 ge;
	size_t			 i;
	enum graph_result	 r;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		r = graph_classify(cases[i].status, cases[i].body,
		    cases[i].body ? strlen(cases[i].body) : 0, &ge);
		if (r != cases[i].want || ge.flags != cases[i].flags ||
		    strcmp(ge.code, cases[i].code) != 0)
			fail_msg("case %zu (%ld): got %d %#x %s, want %d %#x %s",
			    i, cases[i].status, r, ge.flags, ge.code,
			    cases[i].want, cases[i].flags, cases[i].code);
	}
}
#undef ERR

static void
test_retry_after(void **state)
{
	/* 2026-11-23 12:00:00.250 UTC, in milliseconds */
	const long long	 now = 1795435200250LL;

	assert_int_equal(graph_retry_after_ms("2.128", now), 2128);
	assert_int_equal(graph_retry_after_ms(" 10 ", now), 10000);
	assert_int_equal(graph_retry_after_ms("0", now), 0);
	assert_int_equal(graph_retry_after_ms("-1", now), -1);
	assert_int_equal(graph_retry_after_ms("soon", now), -1);
	assert_int_equal(graph_retry_after_ms(NULL, now), -1);
	assert_int_equal(graph_retry_after_ms("Mon, 23 Nov 2026 12:00:30 GMT",
	    now), 29750);
	assert_int_equal(graph_retry_after_ms("Mon, 23 Nov 2026 11:00:00 GMT",
	    now), 0);
	assert_int_equal(graph_retry_after_ms("0.5", now), 500);
	assert_int_equal(graph_retry_after_ms("120", now), 120000);
	assert_int_equal(graph_retry_after_ms("3.0001", now), 3000);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_row),
		cmocka_unit_test(test_unknown_codes),
		cmocka_unit_test(test_precedence),
		cmocka_unit_test(test_advice),
		cmocka_unit_test(test_classify),
		cmocka_unit_test(test_explain),
		cmocka_unit_test(test_refusal),
		cmocka_unit_test(test_retry_after),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

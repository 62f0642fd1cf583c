/*
 * Unit tests for dead.c: .reason files read back, the reason in words,
 * the header fields a report names, relayd's own Received: field, and
 * the text of the sender's report and of the operator's digest. Tables
 * print "got X, want Y".
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "dead.h"
#include "mime.h"

static const char refused_reason[] =
    "reason: refused\n"
    "time: 2026-12-06T10:00:00Z\n"
    "mailbox: scanner@contoso.test\n"
    "status: 403\n"
    "code: ErrorSendAsDenied\n"
    "message: The user account which was used to submit this request "
    "does not have the right to send mail on behalf of the specified "
    "sending account.\n"
    "request-id: 5e1b-77\n"
    "attempts: 1\n"
    "body: {\"error\": {\"code\": \"ErrorSendAsDenied\"}}\n";

static void
test_reason_parse(void **state)
{
	struct dead_reason	 r;

	(void)state;
	dead_reason_parse(refused_reason, &r);
	assert_string_equal(r.reason, "refused");
	assert_string_equal(r.time, "2026-12-06T10:00:00Z");
	assert_string_equal(r.mailbox, "scanner@contoso.test");
	assert_int_equal(r.status, 403);
	assert_string_equal(r.code, "ErrorSendAsDenied");
	assert_string_equal(r.request_id, "5e1b-77");
	assert_int_equal(r.attempts, 1);
	/* a value holding ": " stays whole */
	assert_string_equal(r.body, "{\"error\": {\"code\": "
	    "\"ErrorSendAsDenied\"}}");
	dead_reason_clear(&r);

	/* missing keys read as empty; no final newline; unknown keys */
	dead_reason_parse("reason: expired\nfuture: x\nattempts: 7", &r);
	assert_string_equal(r.reason, "expired");
	assert_string_equal(r.code, "");
	assert_string_equal(r.mailbox, "");
	assert_int_equal(r.status, 0);
	assert_int_equal(r.attempts, 7);
	dead_reason_clear(&r);
}

static const struct {
	const char	*reason;
	const char	*want_start;
	const char	*want_in;
} words[] = {
	{ refused_reason,
	  "Graph refused it: 403 ErrorSendAsDenied: The user account",
	  ". What to do: the app may send from the mailbox, but not as this "
	  "From: address" },
	{ "reason: expired\nstatus: 503\ncode: serviceNotAvailable\n"
	  "message: down\nattempts: 9\n",
	  "expired: Graph did not take it within [queue] lifetime (9 "
	  "attempt(s)); the last answer: 503 serviceNotAvailable: down",
	  "What to do: Graph itself is failing: try again later" },
	{ "reason: expired\nstatus: 0\ncode: curl\nmessage: timed out\n"
	  "attempts: 3\n",
	  "expired: Graph did not take it within [queue] lifetime (3 "
	  "attempt(s)); the last answer: curl: timed out",
	  "What to do: see why Graph kept failing" },
	{ "reason: refused\nstatus: 0\ncode: mime\nmessage: deeper than "
	  "max_mime_depth 3\n",
	  "refused by relayd before it reached Graph: mime: deeper than "
	  "max_mime_depth 3",
	  "What to do: read Graph's message" },
	{ "reason: refused\nstatus: 404\ncode: ErrorInvalidUser\nmessage: "
	  "The requested user 'x@y' is invalid.\n",
	  "Graph refused it: 404 ErrorInvalidUser: The requested user",
	  "is invalid. What to do: no such mailbox in the tenant" },
};

static void
test_reason_words(void **state)
{
	struct dead_reason	 r;
	char			*w;
	size_t			 i;

	(void)state;
	for (i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		dead_reason_parse(words[i].reason, &r);
		w = dead_reason_words(&r);
		if (strncmp(w, words[i].want_start,
		    strlen(words[i].want_start)) != 0 ||
		    strstr(w, words[i].want_in) == NULL)
			fail_msg("case %zu: got \"%s\", want \"%s...\" with "
			    "\"%s\"", i, w, words[i].want_start,
			    words[i].want_in);
		free(w);
		dead_reason_clear(&r);
	}
}

static void
test_head_read(void **state)
{
	static const char msg[] =
	    "Received: from x\r\n"
	    "Subject: =?utf-8?q?Rechnung_f=C3=BCr?=\r\n"
	    " =?utf-8?q?_M=C3=A4rz?=\r\n"
	    "message-id: <a@b>\r\n"
	    "Date: Sun, 06 Dec 2026 10:00:00 +0000\r\n"
	    "\r\n"
	    "Subject: not a header\r\n";
	struct dead_head	 h;

	(void)state;
	memset(&h, 0, sizeof(h));
	dead_head_read(msg, sizeof(msg) - 1, &h);
	assert_string_equal(h.subject, "Rechnung f\xc3\xbcr M\xc3\xa4rz");
	assert_string_equal(h.message_id, "<a@b>");
	assert_string_equal(h.date, "Sun, 06 Dec 2026 10:00:00 +0000");
	memset(&h, 0, sizeof(h));
	dead_head_read("From: a@b\r\n\r\nSubject: body\r\n", 27, &h);
	assert_string_equal(h.subject, "");
	assert_string_equal(h.message_id, "");
}

static const struct {
	const char	*msg;
	size_t		 want;
} received[] = {
	/* smtp_session.c's field, one recipient */
	{ "Received: from client.test ([127.0.0.1])\r\n"
	  "\tby relay.test (relayd) with ESMTP id 0123456789ABCDEF\r\n"
	  "\tfor <a@b.test>;\r\n"
	  "\tSun, 06 Dec 2026 10:00:00 +0000\r\n"
	  "From: a@b\r\n\r\nhi\r\n", 150 },
	/* somebody else's Received: is the client's */
	{ "Received: from x ([1.2.3.4])\r\n\tby mx (Postfix) with ESMTP\r\n"
	  "From: a@b\r\n\r\n", 0 },
	/* a report relayd wrote itself has none */
	{ "From: Mail Delivery System <a@b>\r\n\r\n", 0 },
	/* cut short: not a whole field */
	{ "Received: from x ([1.2.3.4])\r\n\tby h (relayd) with SMTP", 0 },
	{ "", 0 },
};

static void
test_received_len(void **state)
{
	size_t	 i, got;

	(void)state;
	for (i = 0; i < sizeof(received) / sizeof(received[0]); i++) {
		got = dead_received_len(received[i].msg,
		    strlen(received[i].msg));
		if (got != received[i].want)
			fail_msg("case %zu: got %zu, want %zu", i, got,
			    received[i].want);
	}
	/* what follows is the client's first field */
	got = dead_received_len(received[0].msg, strlen(received[0].msg));
	assert_memory_equal(received[0].msg + got, "From: a@b\r\n", 11);
}

static void
test_rcpt_addr(void **state)
{
	char	 a[] = "a@b.test NOTIFY=FAILURE ORCPT=rfc822;a@b.test";
	char	 b[] = "c@d.test";

	(void)state;
	dead_rcpt_addr(a);
	dead_rcpt_addr(b);
	assert_string_equal(a, "a@b.test");
	assert_string_equal(b, "c@d.test");
}

static void
item(struct dead_item *it, struct dead_head *h, struct dead_reason *r,
    const char *qid, const char *subject, const char *const *rcpts,
    size_t n)
{
	memset(h, 0, sizeof(*h));
	snprintf(h->subject, sizeof(h->subject), "%s", subject);
	snprintf(h->message_id, sizeof(h->message_id), "<%s@x>", qid);
	snprintf(h->date, sizeof(h->date), "Sun, 06 Dec 2026");
	it->qid = qid;
	it->sender = "scanner@contoso.test";
	it->rcpts = rcpts;
	it->nrcpts = n;
	it->head = h;
	it->why = r;
}

static void
test_bounce_text(void **state)
{
	static const char *const rcpts[] = { "a@b.test", "c@d.test" };
	struct dead_item	 it;
	struct dead_head	 h;
	struct dead_reason	 r;
	char			*t;

	(void)state;
	dead_reason_parse(refused_reason, &r);
	item(&it, &h, &r, "0123456789ABCDEF", "Scan", rcpts, 2);
	t = dead_bounce_text(&it, refused_reason);
	assert_non_null(strstr(t, "  Subject:    Scan\n"));
	assert_non_null(strstr(t, "  Recipients: a@b.test, c@d.test\n"));
	assert_non_null(strstr(t, "  Message-ID: <0123456789ABCDEF@x>\n"));
	assert_non_null(strstr(t, "  Date:       Sun, 06 Dec 2026\n"));
	assert_non_null(strstr(t, "Why: Graph refused it: 403 "));
	assert_non_null(strstr(t, "What you can do: "));
	/* Graph's raw answer comes last, for the administrator */
	assert_true(strstr(t, "What you can do: ") < strstr(t,
	    "-- For the administrator"));
	assert_string_equal(strstr(t, "-- For the administrator"),
	    "-- For the administrator: Graph's answer "
	    "(dead/0123456789ABCDEF.reason) --\n\n" "reason: refused\n"
	    "time: 2026-12-06T10:00:00Z\n" "mailbox: scanner@contoso.test\n"
	    "status: 403\n" "code: ErrorSendAsDenied\n"
	    "message: The user account which was used to submit this request "
	    "does not have the right to send mail on behalf of the specified "
	    "sending account.\n" "request-id: 5e1b-77\n" "attempts: 1\n"
	    "body: {\"error\": {\"code\": \"ErrorSendAsDenied\"}}\n");
	free(t);
	dead_reason_clear(&r);
}

static void
test_digest_text(void **state)
{
	static const char *const one[] = { "a@b.test" };
	struct dead_item	 it[2];
	struct dead_head	 h[2];
	struct dead_reason	 r[2];
	char			*t;

	(void)state;
	dead_reason_parse(refused_reason, &r[0]);
	dead_reason_parse("reason: expired\ntime: 2026-12-06T11:00:00Z\n"
	    "status: 503\ncode: serviceNotAvailable\nmessage: down\n"
	    "attempts: 4\n", &r[1]);
	item(&it[0], &h[0], &r[0], "00000000000000A1", "first", one, 1);
	item(&it[1], &h[1], &r[1], "00000000000000B2", "", one, 1);
	it[1].sender = "";
	t = dead_digest_text(it, 2);
	assert_true(strncmp(t, "2 message(s) could not be delivered", 35) ==
	    0);
	assert_non_null(strstr(t, "\n00000000000000A1  2026-12-06T10:00:00Z\n"
	    "  Sender:     <scanner@contoso.test>\n"
	    "  Subject:    first\n"
	    "  Recipients: a@b.test\n"
	    "  Message-ID: <00000000000000A1@x>\n"
	    "  Reason:     Graph refused it: 403 ErrorSendAsDenied"));
	assert_non_null(strstr(t, "\n00000000000000B2  2026-12-06T11:00:00Z\n"
	    "  Sender:     <>\n  Subject:    (none)\n"));
	assert_non_null(strstr(t, "  Reason:     expired: Graph did not take "
	    "it within [queue] lifetime (4 attempt(s))"));
	free(t);
	dead_reason_clear(&r[0]);
	dead_reason_clear(&r[1]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reason_parse),
		cmocka_unit_test(test_reason_words),
		cmocka_unit_test(test_head_read),
		cmocka_unit_test(test_received_len),
		cmocka_unit_test(test_rcpt_addr),
		cmocka_unit_test(test_bounce_text),
		cmocka_unit_test(test_digest_text),
	};

	mime_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * dead.c - dead letters in words.
 *
 * A dead letter is a record in <spool>/dead/ beside a .reason file of
 * "key: value" lines (worker.c writes it). This file reads such a file
 * back, says why in an admin's words (graph_explain's advice), picks the
 * header fields a report names, and writes the text of the report to the
 * sender ([queue] bounce = sender) and of the operator's digest ([queue]
 * notify). Pure functions: the spool (spool.c) and the queue (worker.c)
 * do the I/O, and tests/unit/test_dead.c drives them with tables.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dead.h"
#include "graph_result.h"
#include "mime.h"
#include "smtp_proto.h"
#include "util.h"

#define HEAD_SCAN_MAX	(256 * 1024)	/* header bytes searched */

void
dead_reason_parse(const char *text, struct dead_reason *r)
{
	char	*p, *nl, *colon, *val;

	memset(r, 0, sizeof(*r));
	r->buf = xstrdup(text);
	r->reason = r->time = r->mailbox = r->code = r->message = "";
	r->request_id = r->body = "";
	for (p = r->buf; *p != '\0'; p = nl + 1) {
		if ((nl = strchr(p, '\n')) == NULL)
			nl = p + strlen(p) - 1;
		else
			*nl = '\0';
		if ((colon = strstr(p, ": ")) == NULL)
			continue;
		*colon = '\0';
		val = colon + 2;
		if (strcmp(p, "reason") == 0)
			r->reason = val;
		else if (strcmp(p, "time") == 0)
			r->time = val;
		else if (strcmp(p, "mailbox") == 0)
			r->mailbox = val;
		else if (strcmp(p, "status") == 0)
			r->status = strtol(val, NULL, 10);
		else if (strcmp(p, "code") == 0)
			r->code = val;
		else if (strcmp(p, "message") == 0)
			r->message = val;
		else if (strcmp(p, "request-id") == 0)
			r->request_id = val;
		else if (strcmp(p, "attempts") == 0)
			r->attempts = (unsigned)strtoul(val, NULL, 10);
		else if (strcmp(p, "body") == 0)
			r->body = val;
	}
}

void
dead_reason_clear(struct dead_reason *r)
{
	free(r->buf);
	memset(r, 0, sizeof(*r));
}

/* "403 ErrorSendAsDenied: text", as much of it as is known. */
static void
answer_text(FILE *fp, const struct dead_reason *r)
{
	const char	*sep = "";

	if (r->status != 0) {
		fprintf(fp, "%ld", r->status);
		sep = " ";
	}
	if (*r->code != '\0') {
		fprintf(fp, "%s%s", sep, r->code);
		sep = " ";
	}
	if (*r->message != '\0')
		fprintf(fp, "%s%s", *sep != '\0' ? ": " : "", r->message);
}

char *
dead_reason_words(const struct dead_reason *r)
{
	char		*out = NULL;
	size_t		 len = 0;
	FILE		*fp = open_memstream(&out, &len);
	const char	*todo = graph_explain(r->status, r->code, r->message);
	int		 expired = strcmp(r->reason, "expired") == 0;

	if (fp == NULL)
		return xstrdup(r->reason);
	if (expired)
		fprintf(fp, "expired: Graph did not take it within [queue] "
		    "lifetime (%u attempt(s)); the last answer: ", r->attempts);
	else if (r->status == 0)
		fprintf(fp, "refused by relayd before it reached Graph: ");
	else
		fprintf(fp, "Graph refused it: ");
	answer_text(fp, r);
	/* Graph's message often ends a sentence of its own. */
	if (r->message[0] == '\0' ||
	    r->message[strlen(r->message) - 1] != '.')
		fputc('.', fp);
	if (todo != NULL)
		fprintf(fp, " What to do: %s", todo);
	else if (expired)
		fprintf(fp, " What to do: see why Graph kept failing "
		    "(relayctl status), then relayctl retry the message");
	else
		fprintf(fp, " What to do: read Graph's message, remove the "
		    "cause, then relayctl retry the message");
	fclose(fp);
	return out;
}

/* One header value into out, RFC 2047 words decoded when asked. */
static void
head_value(const char *h, size_t len, const char *name, char *out,
    size_t outlen, int decode)
{
	char	*dec;
	size_t	 n, dlen;

	n = smtp_header_value(h, len, name, out, outlen);
	if (!decode || n == 0 || strstr(out, "=?") == NULL)
		return;
	if ((dec = mime_decode_words(out, n, &dlen)) != NULL) {
		strlcpy_r(out, dec, outlen);
		free(dec);
	}
}

void
dead_head_read(const char *msg, size_t len, struct dead_head *h)
{
	if (len > HEAD_SCAN_MAX)
		len = HEAD_SCAN_MAX;
	head_value(msg, len, "Subject", h->subject, sizeof(h->subject), 1);
	head_value(msg, len, "Message-ID", h->message_id,
	    sizeof(h->message_id), 0);
	head_value(msg, len, "Date", h->date, sizeof(h->date), 0);
}

/*
 * smtp_session.c's tx_open writes "Received: from HELO ([ADDR])" folded
 * onto lines starting with a tab, with "by HOST (relayd) with" on the
 * second: that field, and only it, is ours.
 */
size_t
dead_received_len(const char *msg, size_t len)
{
	static const char	 start[] = "Received: from ";
	static const char	 ours[] = " (relayd) with ";
	const char		*p, *eol, *end = msg + len;
	int			 seen = 0;

	if (len < sizeof(start) - 1 ||
	    memcmp(msg, start, sizeof(start) - 1) != 0)
		return 0;
	for (p = msg; p < end; p = eol + 1) {
		if (p != msg && *p != ' ' && *p != '\t')
			break;			/* the next field */
		if ((eol = memchr(p, '\n', (size_t)(end - p))) == NULL)
			return 0;
		if (memmem(p, (size_t)(eol - p), ours, sizeof(ours) - 1) !=
		    NULL)
			seen = 1;
	}
	return seen ? (size_t)(p - msg) : 0;
}

void
dead_rcpt_addr(char *rcpt)
{
	rcpt[strcspn(rcpt, " ")] = '\0';
}

static void
item_lines(FILE *fp, const struct dead_item *it, const char *indent)
{
	size_t	 i;

	fprintf(fp, "%sSubject:    %s\n", indent, *it->head->subject ?
	    it->head->subject : "(none)");
	fprintf(fp, "%sRecipients:", indent);
	for (i = 0; i < it->nrcpts; i++)
		fprintf(fp, "%s%s", i ? ", " : " ", it->rcpts[i]);
	fprintf(fp, "\n%sMessage-ID: %s\n", indent, *it->head->message_id ?
	    it->head->message_id : "(none)");
}

char *
dead_bounce_text(const struct dead_item *it, const char *reason_file)
{
	char	*out = NULL, *words = dead_reason_words(it->why);
	size_t	 len = 0;
	FILE	*fp = open_memstream(&out, &len);
	int	 expired = strcmp(it->why->reason, "expired") == 0;

	if (fp == NULL) {
		free(words);
		return xstrdup("relayd could not deliver your message.\n");
	}
	fprintf(fp, "relayd could not deliver your message through Microsoft "
	    "Graph (%s)\nafter %u attempt(s):\n\n", expired ?
	    "it waited too long" : "Graph refused it", it->why->attempts);
	item_lines(fp, it, "  ");
	fprintf(fp, "  Date:       %s\n  Queue id:   %s\n\n",
	    *it->head->date ? it->head->date : "(none)", it->qid);
	fprintf(fp, "Why: %s\n\n", words);
	fprintf(fp, "What you can do: %s\n\n", expired ?
	    "send the message again later; if this keeps happening, tell "
	    "your administrator" : "if the advice above is yours to follow "
	    "(a wrong address, a message too large), fix it and send the "
	    "message again; otherwise forward this report to your "
	    "administrator, who keeps a copy of the message and can send it "
	    "again once the cause is removed");
	fprintf(fp, "-- For the administrator: Graph's answer "
	    "(dead/%s.reason) --\n\n%s", it->qid, reason_file);
	fclose(fp);
	free(words);
	return out;
}

char *
dead_digest_text(const struct dead_item *items, size_t n)
{
	char	*out = NULL, *words;
	size_t	 len = 0, i;
	FILE	*fp = open_memstream(&out, &len);

	if (fp == NULL)
		return xstrdup("relayd: new dead letters (relayctl dead)\n");
	fprintf(fp, "%zu message(s) could not be delivered through Microsoft "
	    "Graph since the last\ndigest and wait in relayd's dead/ "
	    "directory. `relayctl dead` lists them,\n`relayctl retry ID` "
	    "sends one again, `relayctl delete ID` drops it.\n", n);
	for (i = 0; i < n; i++) {
		words = dead_reason_words(items[i].why);
		fprintf(fp, "\n%s  %s\n  Sender:     <%s>\n", items[i].qid,
		    items[i].why->time, items[i].sender);
		item_lines(fp, &items[i], "  ");
		fprintf(fp, "  Reason:     %s\n", words);
		free(words);
	}
	fclose(fp);
	return out;
}

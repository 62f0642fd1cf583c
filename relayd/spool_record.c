/*
 * spool_record.c - the spool's on-disk record format, writer and parser.
 *
 * Everything that knows the bytes of a record is here; spool.c keeps the
 * files (segments, fsync, the commit thread, recovery) and asks this file
 * for the bytes. Pure: no file descriptors, no clock, no globals, so the
 * unit tests and the fuzz target (tests/fuzz/fuzz_spool_record.c) see
 * exactly what the daemon writes and reads.
 *
 * A record is a version line, a fixed-size state line, a fixed-size size
 * line, the envelope as "key: value" lines, a blank line, the message bytes
 * as received (CRLF, dot-unstuffed, with our Received: header), and a
 * fixed-size trailer repeating the size:
 *
 *   RELAYD-SPOOL 2\n                                              15 bytes
 *   state: Q attempts=00000 next=0000000000000 error=<padding>\n  200 bytes
 *   size: <20 digits>\n                                           27 bytes
 *   mailbox: <320 bytes, space-padded>\n                        330 bytes
 *   id: <qid>\n arrival: <s.us>\n client: ...\n listener: ...\n
 *   helo: ...\n user: ...\n mail-from: ...\n mail-params: ...\n
 *   rcpt: ...\n (one per recipient)
 *   [imported-from: <qid in the spool it came from>\n] \n        the head
 *   <size bytes of message>
 *   RELAYD-END <20 digits>\n                                      32 bytes
 *
 * The fixed sizes let spool.c rewrite parts in place (pwrite), each within
 * one sector: at commit the size digits (SPOOL_RECORD_SIZE_OFF; a message
 * spilled to its own file is written before its size is known) and the
 * sending mailbox (SPOOL_RECORD_MAILBOX_OFF: with [graph] mailbox = from
 * it is known only once the header has been read; decided once there, the
 * delivery side never guesses it); later the state line with the retry
 * state (spool_record_state, SPOOL_RECORD_STATE_OFF), and the one state
 * byte that marks a record delivered 'D' or dead 'X'
 * (SPOOL_RECORD_MARK_OFF). Q is queued, H held.
 *
 * There is no checksum: the framing is what catches damage. The size in
 * the size line must be repeated by the trailer right after that many
 * message bytes, so a record cut short, overwritten at its end or with a
 * changed size line is found; a byte changed inside the message or the
 * envelope's values is not. A state line that does not read back (a torn
 * in-place write) reads as queued with no retry state: the message may be
 * sent again, never lost. Unknown envelope keys are skipped, for newer
 * writers (so a relayd from before the mailbox line reads records with
 * one). A blank mailbox is one not decided (records written before the
 * line, requeued and generated ones): e->mailbox NULL. The
 * queue id must be 16 upper-case hex digits (it names files).
 *
 * Reading answers "whole", "incomplete" (the bytes end inside what could
 * be a record: every prefix of a good record gets this answer) or
 * "damaged", with a reason that goes into the admin's log.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spool_record.h"
#include "util.h"

#define MAGIC			"RELAYD-SPOOL "
#define MAGIC_LEN		(sizeof(MAGIC) - 1)
#define VERSION_LINE_LEN	15		/* "RELAYD-SPOOL 2\n" */
#define END_MAGIC		"RELAYD-END "
#define END_MAGIC_LEN		(sizeof(END_MAGIC) - 1)
#define STATE_TEXT_LEN		49		/* up to "error=" */
#define SIZE_LINE_OFF		(SPOOL_RECORD_STATE_OFF + SPOOL_STATE_LEN)
#define SIZE_LINE_LEN		27		/* "size: " 20 digits "\n" */
#define ENVELOPE_OFF		(SIZE_LINE_OFF + SIZE_LINE_LEN)

/* ---- writing ---- */

/* A buffer written up to its capacity, counting what would not fit. */
struct out {
	char	*buf;
	size_t	 cap;
	size_t	 len;
	int	 bad;		/* a value held a newline */
};

static void
put(struct out *o, const char *s, size_t n)
{
	size_t	 room = o->len < o->cap ? o->cap - o->len : 0;

	if (room > 0)
		memcpy(o->buf + o->len, s, n < room ? n : room);
	o->len += n;
}

/* Envelope values come from validated SMTP input; newlines cannot occur. */
static void
put_field(struct out *o, const char *key, const char *val)
{
	if (val == NULL)
		val = "";
	if (strchr(val, '\n') != NULL)
		o->bad = 1;
	put(o, key, strlen(key));
	put(o, ": ", 2);
	put(o, val, strlen(val));
	put(o, "\n", 1);
}

ssize_t
spool_record_head(char *buf, size_t len, const char *qid,
    const struct spool_env *env)
{
	struct out	 o = { buf, len, 0, 0 };
	char		 line[SPOOL_STATE_LEN], mailbox[SPOOL_MAILBOX_MAX];
	char		 digits[SPOOL_RECORD_SIZE_DIGITS];
	size_t		 i;

	snprintf(line, sizeof(line), "%s%d\n", MAGIC, SPOOL_VERSION);
	put(&o, line, VERSION_LINE_LEN);
	spool_record_state(line, SPOOL_QUEUED, 0, env->next_ms,
	    env->last_error);
	put(&o, line, SPOOL_STATE_LEN);
	put(&o, "size: ", 6);
	spool_record_size(digits, 0);
	put(&o, digits, sizeof(digits));
	put(&o, "\n", 1);
	put(&o, "mailbox: ", 9);
	if (spool_record_mailbox(mailbox, env->mailbox) == -1)
		o.bad = 1;
	put(&o, mailbox, sizeof(mailbox));
	put(&o, "\n", 1);
	put_field(&o, "id", qid);
	snprintf(line, sizeof(line), "%" PRIu64 ".%06" PRIu64,
	    env->arrival_us / 1000000, env->arrival_us % 1000000);
	put_field(&o, "arrival", line);
	put_field(&o, "client", env->client);
	put_field(&o, "listener", env->listener);
	put_field(&o, "helo", env->helo);
	put_field(&o, "user", env->user);
	put_field(&o, "mail-from", env->mail_from);
	put_field(&o, "mail-params", env->mail_params);
	for (i = 0; i < env->nrcpts; i++)
		put_field(&o, "rcpt", env->rcpts[i]);
	if (env->imported_from != NULL)
		put_field(&o, "imported-from", env->imported_from);
	put(&o, "\n", 1);
	return o.bad ? -1 : (ssize_t)o.len;
}

int
spool_record_mailbox(char *out, const char *mailbox)
{
	size_t	 n = mailbox != NULL ? strlen(mailbox) : 0;
	int	 rc = 0;

	if (n > SPOOL_MAILBOX_MAX || (n > 0 && memchr(mailbox, '\n', n))) {
		n = 0;
		rc = -1;
	}
	memcpy(out, mailbox != NULL ? mailbox : "", n);
	memset(out + n, ' ', SPOOL_MAILBOX_MAX - n);
	return rc;
}

void
spool_record_size(char *out, uint64_t size)
{
	char	 num[SPOOL_RECORD_SIZE_DIGITS + 1];

	snprintf(num, sizeof(num), "%020" PRIu64, size);
	memcpy(out, num, SPOOL_RECORD_SIZE_DIGITS);
}

void
spool_record_trailer(char *out, uint64_t size)
{
	memcpy(out, END_MAGIC, END_MAGIC_LEN);
	spool_record_size(out + END_MAGIC_LEN, size);
	out[SPOOL_TRAILER_LEN - 1] = '\n';
}

void
spool_record_state(char *line, char state, unsigned attempts,
    uint64_t next_ms, const char *error)
{
	char	 head[STATE_TEXT_LEN + 1];
	size_t	 i, n;

	if (attempts > 99999)
		attempts = 99999;
	if (next_ms > UINT64_C(9999999999999))
		next_ms = UINT64_C(9999999999999);
	snprintf(head, sizeof(head), "state: %c attempts=%05u next=%013"
	    PRIu64 " error=", state, attempts, next_ms);
	memcpy(line, head, STATE_TEXT_LEN);
	n = error != NULL ? strlen(error) : 0;
	for (i = 0; i < SPOOL_ERROR_MAX; i++) {
		unsigned char c = i < n ? (unsigned char)error[i] : ' ';
		line[STATE_TEXT_LEN + i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	line[SPOOL_STATE_LEN - 1] = '\n';
}

/* ---- reading ---- */

/* n decimal digits, all of them; -1 if not, or too big. */
static int
parse_digits(const char *s, size_t n, uint64_t *out)
{
	uint64_t	 v = 0;
	size_t		 i;

	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		if (v > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return 0;
}

/* The leading digits of [s, end) as a number (wrapping, as strtoull). */
static uint64_t
leading_number(const char **s, const char *end)
{
	uint64_t	 v = 0;

	for (; *s < end && **s >= '0' && **s <= '9'; (*s)++)
		v = v * 10 + (uint64_t)(**s - '0');
	return v;
}

/* Reads the state line; a damaged one (a torn in-place write) means "queued". */
static void
parse_state(const char *line, struct spool_entry *e)
{
	uint64_t	 attempts, next_ms;
	size_t		 n;

	e->state = SPOOL_QUEUED;
	e->attempts = 0;
	e->next_ms = 0;
	e->error[0] = '\0';
	if (memcmp(line, "state: ", 7) != 0 ||
	    memcmp(line + 8, " attempts=", 10) != 0 ||
	    memcmp(line + 23, " next=", 6) != 0 ||
	    memcmp(line + 42, " error=", 7) != 0 ||
	    line[SPOOL_STATE_LEN - 1] != '\n' ||
	    line[7] == '\0' || strchr("QHDX", line[7]) == NULL ||
	    parse_digits(line + 18, 5, &attempts) == -1 ||
	    parse_digits(line + 29, 13, &next_ms) == -1)
		return;
	e->state = line[7];
	e->attempts = (unsigned)attempts;
	e->next_ms = next_ms;
	for (n = 0; n < SPOOL_ERROR_MAX; n++) {
		unsigned char c = (unsigned char)line[STATE_TEXT_LEN + n];
		e->error[n] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	while (n > 0 && e->error[n - 1] == ' ')
		n--;
	e->error[n] = '\0';
}

int
spool_record_qid_valid(const char *s, size_t len)
{
	size_t	 i;

	if (len != SPOOL_QID_LEN)
		return 0;
	for (i = 0; i < len; i++)
		if (strchr("0123456789ABCDEF", s[i]) == NULL || s[i] == '\0')
			return 0;
	return 1;
}

/* One envelope line [p, nl) into e. Unknown keys are kept for newer readers. */
static void
parse_field(const char *p, const char *nl, struct spool_entry *e,
    int *have_id)
{
	const char	*nul;
	size_t		 len = (size_t)(nl - p);

	if (len >= 4 && memcmp(p, "id: ", 4) == 0 &&
	    spool_record_qid_valid(p + 4, len - 4)) {
		memcpy(e->qid, p + 4, SPOOL_QID_LEN);
		e->qid[SPOOL_QID_LEN] = '\0';
		*have_id = 1;
	} else if (len >= 9 && memcmp(p, "arrival: ", 9) == 0) {
		p += 9;
		e->arrival_us = leading_number(&p, nl) * 1000000;
		if (p < nl && *p == '.') {
			p++;
			e->arrival_us += leading_number(&p, nl);
		}
	} else if (len >= 11 && memcmp(p, "mail-from: ", 11) == 0) {
		free(e->mail_from);
		e->mail_from = xstrndup(p + 11, len - 11);
	} else if (len >= 9 && memcmp(p, "mailbox: ", 9) == 0) {
		/* Up to a NUL (none is written), less the padding. */
		if ((nul = memchr(p + 9, '\0', len - 9)) != NULL)
			len = (size_t)(nul - p);
		while (len > 9 && p[len - 1] == ' ')
			len--;
		free(e->mailbox);
		e->mailbox = len > 9 ? xstrndup(p + 9, len - 9) : NULL;
	} else if (len >= 6 && memcmp(p, "rcpt: ", 6) == 0) {
		e->rcpts = xrealloc(e->rcpts,
		    (e->nrcpts + 1) * sizeof(*e->rcpts));
		e->rcpts[e->nrcpts++] = xstrndup(p + 6, len - 6);
	}
}

/* The fixed lines before the envelope: 0, -1 or SPOOL_RECORD_INCOMPLETE. */
static int
parse_fixed(const char *rec, size_t have, uint64_t *size, const char **why)
{
	size_t	 n;

	n = have < MAGIC_LEN ? have : MAGIC_LEN;
	if (memcmp(rec, MAGIC, n) != 0) {
		*why = "not a relayd spool record";
		return -1;
	}
	n = have < VERSION_LINE_LEN ? have - n : 2;
	if (memcmp(rec + MAGIC_LEN, "2\n", n) != 0) {
		*why = "unsupported spool format version";
		return -1;
	}
	if (have < ENVELOPE_OFF) {
		*why = "record is cut short";
		return SPOOL_RECORD_INCOMPLETE;
	}
	if (rec[SIZE_LINE_OFF - 1] != '\n' ||
	    memcmp(rec + SIZE_LINE_OFF, "size: ", 6) != 0 ||
	    rec[ENVELOPE_OFF - 1] != '\n' ||
	    parse_digits(rec + SPOOL_RECORD_SIZE_OFF, SPOOL_RECORD_SIZE_DIGITS,
	    size) == -1) {
		*why = "bad state or size line";
		return -1;
	}
	return 0;
}

int
spool_record_parse_head(const char *rec, size_t have, uint64_t avail,
    struct spool_entry *e, const char **why)
{
	const char	*p, *end, *nl;
	uint64_t	 size;
	int		 have_id = 0, rc;

	memset(e, 0, sizeof(*e));
	if (have > avail)
		have = (size_t)avail;
	if (have < avail && have < SPOOL_HEAD_MAX) {
		*why = "record is cut short";	/* the file shrank */
		return -1;
	}
	if ((rc = parse_fixed(rec, have, &size, why)) != 0)
		return rc;
	parse_state(rec + SPOOL_RECORD_STATE_OFF, e);
	p = rec + ENVELOPE_OFF;
	end = rec + (have < SPOOL_HEAD_MAX ? have : SPOOL_HEAD_MAX);
	for (;;) {
		if (p >= end || (nl = memchr(p, '\n', (size_t)(end - p))) ==
		    NULL) {
			*why = "envelope is cut short";
			rc = (uint64_t)(end - rec) == avail &&
			    avail < SPOOL_HEAD_MAX ? SPOOL_RECORD_INCOMPLETE : -1;
			goto fail;
		}
		if (nl == p) {		/* blank line: envelope ends */
			p++;
			break;
		}
		parse_field(p, nl, e, &have_id);
		p = nl + 1;
	}
	e->body_offset = (uint64_t)(p - rec);
	if (!have_id || e->mail_from == NULL || e->nrcpts == 0) {
		*why = "envelope lacks id, mail-from or rcpt";
		rc = -1;
		goto fail;
	}
	if (size > avail || avail - size < e->body_offset + SPOOL_TRAILER_LEN) {
		*why = "end marker missing (record was cut short)";
		rc = SPOOL_RECORD_INCOMPLETE;
		goto fail;
	}
	e->size = size;
	e->reclen = e->body_offset + size + SPOOL_TRAILER_LEN;
	return 0;
fail:
	spool_entry_clear(e);
	return rc;
}

int
spool_record_check_trailer(const char *trailer, struct spool_entry *e,
    const char **why)
{
	uint64_t	 tsize;

	if (memcmp(trailer, END_MAGIC, END_MAGIC_LEN) != 0 ||
	    trailer[SPOOL_TRAILER_LEN - 1] != '\n') {
		*why = "end marker missing (record was cut short)";
		goto fail;
	}
	if (parse_digits(trailer + END_MAGIC_LEN, SPOOL_RECORD_SIZE_DIGITS,
	    &tsize) == -1 || tsize != e->size) {
		*why = "size in end marker does not match the record";
		goto fail;
	}
	return 0;
fail:
	spool_entry_clear(e);
	return -1;
}

int
spool_record_parse(const char *rec, size_t len, struct spool_entry *e,
    const char **why)
{
	int	 rc;

	if ((rc = spool_record_parse_head(rec, len, len, e, why)) != 0)
		return rc;
	return spool_record_check_trailer(rec + e->body_offset + e->size, e,
	    why);
}

size_t
spool_record_env(const char *rec, uint64_t body_offset, const char *key,
    char *out, size_t outlen)
{
	const char	*p = rec + ENVELOPE_OFF, *end = rec + body_offset, *nl;
	size_t		 klen = strlen(key), n;

	out[0] = '\0';
	for (; p < end && (nl = memchr(p, '\n', (size_t)(end - p))) != NULL;
	    p = nl + 1) {
		if ((size_t)(nl - p) < klen + 2 || memcmp(p, key, klen) != 0 ||
		    p[klen] != ':' || p[klen + 1] != ' ')
			continue;
		n = (size_t)(nl - p) - klen - 2;
		if (n >= outlen)
			n = outlen - 1;
		memcpy(out, p + klen + 2, n);
		out[n] = '\0';
		return n;
	}
	return 0;
}

void
spool_entry_clear(struct spool_entry *e)
{
	size_t	 i;

	free(e->mail_from);
	free(e->mailbox);
	for (i = 0; i < e->nrcpts; i++)
		free(e->rcpts[i]);
	free(e->rcpts);
	e->mail_from = e->mailbox = NULL;
	e->rcpts = NULL;
	e->nrcpts = 0;
}

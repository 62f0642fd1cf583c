/* dead.h - dead letters in words: .reason files, reports and digests. */
#ifndef RELAYD_DEAD_H
#define RELAYD_DEAD_H

#include <stddef.h>
#include <stdint.h>

#define DEAD_FIELD_MAX		512	/* a header value kept */

/* A dead/<qid>.reason file read back; the strings point into buf. */
struct dead_reason {
	char		*buf;
	const char	*reason;	/* "refused", "expired" */
	const char	*time;		/* ISO 8601 */
	const char	*mailbox;
	const char	*code;
	const char	*message;
	const char	*request_id;
	const char	*body;		/* Graph's answer, one line, or "" */
	long		 status;	/* HTTP; 0: no request was made */
	unsigned	 attempts;
};

/* What a report names of the original message. */
struct dead_head {
	char		 subject[DEAD_FIELD_MAX];	/* decoded, UTF-8 */
	char		 message_id[DEAD_FIELD_MAX];
	char		 date[DEAD_FIELD_MAX];
};

/* One dead letter in a digest or a report. */
struct dead_item {
	const char		*qid;
	const char		*sender;	/* "" for the null sender */
	const char *const	*rcpts;		/* addresses, no parameters */
	size_t			 nrcpts;
	const struct dead_head	*head;
	const struct dead_reason *why;
};

/*
 * Parses a .reason text ("key: value" lines). Missing keys read as "" (0);
 * unknown ones are skipped. Pure. dead_reason_clear frees it.
 */
void	 dead_reason_parse(const char *, struct dead_reason *);
void	 dead_reason_clear(struct dead_reason *);
/*
 * Why, in words, with what to do (graph_explain's advice): a malloc'd
 * line such as "Graph refused it: 403 ErrorSendAsDenied: ... What to do:
 * ...".
 */
char	*dead_reason_words(const struct dead_reason *);
/* Subject (RFC 2047 decoded), Message-ID and Date from a header block. */
void	 dead_head_read(const char *, size_t, struct dead_head *);
/*
 * The length of relayd's own Received: field at the start of a stored
 * message (0 if it does not start with one): the bytes the client sent
 * follow it.
 */
size_t	 dead_received_len(const char *, size_t);
/* "addr PARAMS" -> "addr", in place. */
void	 dead_rcpt_addr(char *);
/*
 * The body of a report to the sender (LF line ends): what was refused
 * (Subject, recipients, Message-ID, date), why in words and what the
 * sender can do, then Graph's raw answer for the administrator.
 */
char	*dead_bounce_text(const struct dead_item *, const char *);
/*
 * The body of a digest for the operator: one paragraph per dead letter
 * (id, time, sender, recipients, subject, reason in words). LF line ends.
 */
char	*dead_digest_text(const struct dead_item *, size_t);

#endif

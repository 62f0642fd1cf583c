/* graph_result.h - what Graph's answers mean: one table, pure lookups. */
#ifndef RELAYD_GRAPH_RESULT_H
#define RELAYD_GRAPH_RESULT_H

#include <stddef.h>

/* What became of one request. */
enum graph_result {
	GRAPH_SENT,		/* 202 */
	GRAPH_TEMPFAIL,		/* retry later */
	GRAPH_PERMFAIL,		/* dead letter */
	GRAPH_REAUTH,		/* token rejected: refresh once, retry once */
};

/* What a temporary failure says beyond "try again" (graph_error.flags). */
#define GRAPH_F_MAILBOX		0x01	/* throttled: hold the whole mailbox */
#define GRAPH_F_SERVICE		0x02	/* Graph itself failing: global backoff */
#define GRAPH_F_DUPLICATE	0x04	/* it may have been sent all the same */
#define GRAPH_F_QUOTA		0x08	/* sending quota: hold the mailbox long */

struct graph_error {
	char		 code[64];	/* Graph's error code, or "http_NNN" */
	char		 message[256];	/* UTF-8, may be empty */
	unsigned	 flags;		/* GRAPH_F_* */
};

/*
 * What the queue does with an answer. Every retry waits Retry-After when
 * the answer has one (worker.c), else the backoff.
 */
enum graph_class {
	GRAPH_C_NONE,		/* a row that leaves it to the rows below */
	GRAPH_C_SENT,
	GRAPH_C_RETRY,		/* this message later */
	GRAPH_C_HOLD_MAILBOX,	/* the whole mailbox later (throttled) */
	GRAPH_C_HOLD_QUOTA,	/* the whole mailbox, an hour at least */
	GRAPH_C_HOLD_GRAPH,	/* Graph failing: counts towards the breaker */
	GRAPH_C_REAUTH,		/* a fresh token, then once more */
	GRAPH_C_PERMANENT,	/* dead letter (or 5xx to a waiting client) */
};

/* What the draft path does when one of its requests fails. */
enum graph_step {
	GRAPH_STEP_NONE,	/* a row that leaves it to the rows below */
	GRAPH_STEP_FATAL,	/* the draft fails with this answer */
	GRAPH_STEP_RESUME,	/* ask the upload session where to go on */
	GRAPH_STEP_RESTART,	/* the upload session is gone: a new one */
	GRAPH_STEP_AGAIN,	/* the draft is not in the store yet: again */
};

/*
 * One row: an answer (status range, Graph's error code, words in Graph's
 * message) and what it means. NULL and *_NONE columns leave that column
 * to the next row that matches.
 */
struct graph_result_row {
	long		 lo, hi;	/* HTTP status, inclusive; 0: no answer */
	const char	*code;		/* NULL: any */
	const char	*in_message;	/* NULL: any (case ignored) */
	enum graph_class cls;
	int		 maybe_sent;	/* a retry may send it twice */
	const char	*reply;		/* SMTP reply code and enhanced code */
	const char	*words;		/* what it means: what to do */
	enum graph_step	 step;
};

/* The table itself, in lookup order (for tests). */
const struct graph_result_row *graph_result_rows(size_t *);
/*
 * The first row that matches status, code and message (code NULL matches
 * only rows for any code; message NULL only rows for any message), or
 * NULL. Pure, as the lookups below.
 */
const struct graph_result_row *graph_result_find(long, const char *,
		    const char *);
/* The class, and GRAPH_F_DUPLICATE in *flags when a retry may send twice. */
enum graph_class graph_result_class(long, const char *, unsigned *);
/*
 * What a failed draft-path request means: by status alone for the
 * uploadUrl (code NULL: Outlook's upload front end has codes of its own),
 * by status and code for Graph's.
 */
enum graph_step	 graph_result_step(long, const char *);

/*
 * Classifies a sendMail answer by its HTTP status and JSON error body (body
 * may be NULL) through the table. status 0 means no answer (connection
 * error, timeout).
 */
enum graph_result graph_classify(long, const char *, size_t,
		    struct graph_error *);
/*
 * Parses a Retry-After value (delay seconds, fractions allowed, or an
 * HTTP-date relative to the wall clock now, in milliseconds). Returns
 * milliseconds, or -1.
 */
long long	graph_retry_after_ms(const char *, long long);
/*
 * Graph's refusal (status, error code, message) in an admin's words, with
 * what to do; NULL if relayd has nothing to add to Graph's own message.
 */
const char	*graph_explain(long, const char *, const char *);
/*
 * The one-line SMTP reply (code, enhanced code, text; no CRLF) for a
 * permanent failure told to the client at once: status, Graph's code and
 * message as in graph_explain, into buf (len: at most 510 keeps it within
 * RFC 5321's 512 octets with CRLF). Printable ASCII only.
 */
void		 graph_refusal(long, const char *, const char *, char *,
		    size_t);

#endif

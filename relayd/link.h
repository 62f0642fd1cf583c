/*
 * link.h - what the SMTP side and the delivery side say to each other
 * over their socketpair (SOCK_SEQPACKET, one message per packet: a fixed
 * head, then textlen bytes of text). The picture and the order of things
 * are in relayd.c.
 */
#ifndef RELAYD_LINK_H
#define RELAYD_LINK_H

#include <stdint.h>

#include "spool_record.h"	/* SPOOL_QID_LEN */

enum link_type {
	LINK_HELLO = 1,	/* smtp -> deliver: paused, nothing of mine open */
	LINK_GO,	/* deliver -> smtp: queue/ is read; commit again */
	LINK_QUEUED,	/* smtp -> deliver: qid committed at seg, off, len */
	LINK_CLOSED,	/* smtp -> deliver: no more appends to seg */
	LINK_EMPTIED,	/* deliver -> smtp: open seg's records are all done */
	LINK_WATCH,	/* smtp -> deliver: tell me qid's first attempt */
	LINK_UNWATCH,	/* smtp -> deliver: no need any more */
	LINK_ANSWER,	/* deliver -> smtp: qid's outcome, status, code, text */
	LINK_HISTORY,	/* smtp -> deliver: qid's history row (text) */
	LINK_FIGURES,	/* smtp -> deliver: struct smtp_figures (text) */
	LINK_UNLOCK,	/* deliver -> smtp: relayctl unlock ADDRESS (text) */
};

#define LINK_CODE_MAX	64
#define LINK_TEXT_MAX	(64 * 1024)

struct link_msg {
	uint32_t	 type;
	uint32_t	 outcome;	/* ANSWER: enum worker_outcome */
	int64_t		 status;	/* ANSWER: Graph's HTTP status */
	uint64_t	 off, len;	/* QUEUED */
	char		 qid[SPOOL_QID_LEN + 1];
	char		 seg[SPOOL_QID_LEN + 1];
	char		 code[LINK_CODE_MAX];
	uint32_t	 textlen;	/* the text follows (NUL added) */
};

struct event_base;
struct link;

/*
 * A message from the other side with its text (m->textlen bytes and a
 * NUL), or NULL once it is gone (then the link may be freed; not before,
 * from inside the callback).
 */
typedef void link_cb(void *, const struct link_msg *, const char *);

/* Takes fd (made non-blocking). */
struct link	*link_new(struct event_base *, int, link_cb *, void *);
/*
 * m with text (len bytes, at most LINK_TEXT_MAX; m->textlen is set).
 * Queued in memory while the socket is full; nothing is dropped.
 */
void		 link_send(struct link *, struct link_msg *, const void *,
		    size_t);
/* Reads what the other side sent until now, to its end if it is gone. */
void		 link_drain(struct link *);
void		 link_free(struct link *);

#endif

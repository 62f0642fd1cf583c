/* link_smtp.h - the SMTP side's end of the link to delivery. */
#ifndef RELAYD_LINK_SMTP_H
#define RELAYD_LINK_SMTP_H

#include "worker.h"	/* worker_watch_cb, struct worker_answer */

struct event_base;
struct intake;
struct spool;

/* The spool is SPOOL_INTAKE's; its news goes to delivery. */
struct intake	*intake_new(struct event_base *, struct spool *);
/*
 * A (new) delivery process at the other end of fd: commits pause until
 * it has read the spool (GO). Waits for an earlier one end (250 queued).
 */
void		 intake_connect(struct intake *, int);
/*
 * reply_after = graph: cb hears the first attempt of qid (just
 * committed), once, unless intake_unwatch. -1: no delivery to ask now.
 */
int		 intake_watch(struct intake *, const char *, worker_watch_cb *,
		    void *);
void		 intake_unwatch(struct intake *, const char *);
/* An accepted message's history row, for delivery to write. */
struct history_msg;
void		 intake_history(struct intake *, const struct history_msg *);
/* The SMTP figures go to delivery when they change; auth may change. */
struct auth;
struct smtp;
void		 intake_figures(struct intake *, struct smtp *,
		    struct auth **);
void		 intake_free(struct intake *);

#endif

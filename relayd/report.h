/* report.h - the mail relayd writes itself about dead letters. */
#ifndef RELAYD_REPORT_H
#define RELAYD_REPORT_H

struct config;
struct digest;
struct event_base;
struct spool;

/*
 * Queues a report on the dead letter qid to its envelope sender (which
 * must not be the null sender): [queue] bounce = sender.
 */
void		 report_bounce(struct spool *, const char *);

/* [queue] notify: NULL when it is not set. Event loop thread. */
struct digest	*digest_new(struct event_base *, const struct config *,
		    struct spool *);
/* A message went to dead/: a digest goes out once the interval allows. */
void		 digest_dead(struct digest *);
void		 digest_free(struct digest *);

#endif

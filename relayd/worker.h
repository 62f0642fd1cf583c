/* worker.h - the delivery pool: queued messages to Graph sendMail. */
#ifndef RELAYD_WORKER_H
#define RELAYD_WORKER_H

#include <stddef.h>

struct config;
struct event_base;
struct spool;
struct token;
struct worker_pool;

/*
 * Starts [queue] workers threads and queues every message the spool found
 * at open and every one committed later. Runs on the event loop's thread.
 */
struct worker_pool *worker_new(struct event_base *, const struct config *,
		    struct spool *, struct token *, char *, size_t);
/* Stops: requests in flight get a short grace, the rest stays queued. */
void		 worker_free(struct worker_pool *);
size_t		 worker_queued(const struct worker_pool *);

#endif

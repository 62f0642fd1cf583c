/* deliver.h - the delivery threads: one queued message to Graph each. */
#ifndef RELAYD_DELIVER_H
#define RELAYD_DELIVER_H

#include <stddef.h>
#include <stdint.h>

#include "graph.h"
#include "spool.h"

struct config;
struct qent;
struct spool;
struct token;
struct deliverers;

#define MAILBOX_CONCURRENCY	4	/* Graph: per app and mailbox */

/*
 * One delivery attempt, the one thing the loop (worker.c) and a delivery
 * thread (deliver.c) share. Each field says who fills it:
 *   [dispatch]  the loop, before it hands the job over (dispatch());
 *   [thread]    the delivery thread, while it has the job;
 *   [finish]    the loop, after the job came back (deliver_results):
 *               it reads the thread's fields, and takes what it keeps;
 *   [lock]      the loop or the thread under the deliverers' lock: a
 *               relayctl hold racing the request (deliver_cancel).
 * Nothing else crosses: the thread never sees the loop's queue, and the
 * loop reads no [thread] field before the job came back.
 */
struct job {
	struct qent		*qe;		/* [dispatch] its queue entry,
						   for finish(): the thread
						   never follows it */
	char			 qid[SPOOL_QID_LEN + 1];	/* [dispatch] */
	char			*stray;		/* [dispatch] a draft an earlier
						   attempt left ("mailbox id");
						   [thread] what is left now;
						   [finish] back to the entry */
	enum graph_result	 result;	/* [thread] */
	long			 status;	/* [thread] Graph's HTTP status */
	long long		 retry_ms;	/* [thread] Retry-After, -1: none */
	struct graph_error	 err;		/* [thread] code, message, flags */
	char			 request_id[64];	/* [thread] */
	int			 reached;	/* [thread] an HTTP exchange was
						   tried */
	char			*body;		/* [thread] Graph's whole error
						   answer (permanent failures) */
	char			*mailbox;	/* [dispatch] the sending mailbox,
						   "<>": none */
	char			*message_id;	/* [thread] "<...>" or NULL */
	size_t			 nrcpts;	/* [thread] */
	size_t			 nattach;	/* [thread] */
	uint64_t		 ms;		/* [thread] time at Graph */
	int			 draft;		/* [thread] took the draft path */
	int			 started;	/* [lock] the request went */
	int			 cancel;	/* [lock] held before that */
	struct job		*next;		/* the list that holds it */
};

/*
 * Starts n threads, each with its own CURL handle, waiting for jobs.
 * NULL with err when they cannot be started.
 */
struct deliverers *deliver_start(const struct config *, struct spool *,
		    struct token *, size_t, char *, size_t);
/* Readable when results wait (the loop watches it). */
int		 deliver_fd(const struct deliverers *);
/* Hands a list of jobs to the threads. */
void		 deliver_submit(struct deliverers *, struct job *);
/* The jobs done since the last call, oldest first (the fd drained). */
struct job	*deliver_results(struct deliverers *);
/*
 * relayctl hold of a job being delivered: 1 if it won (its request had
 * not gone out: the thread gives it back unsent), 0 if too late.
 */
int		 deliver_cancel(struct deliverers *, struct job *);
/*
 * Stops: jobs not started come back as "stopping" results; the threads
 * finish what they have (the caller cuts requests short) and end.
 */
void		 deliver_stop(struct deliverers *);
void		 deliver_free(struct deliverers *);
void		 job_free(struct job *);

#endif

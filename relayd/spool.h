/* spool.h - the durable queue: write, group-commit, recover, index. */
#ifndef RELAYD_SPOOL_H
#define RELAYD_SPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "spool_record.h"	/* struct spool_env, spool_entry, states */

/* How commits and delivery progress reach the disk ([queue] sync_method). */
enum sync_method { SYNC_FDATASYNC, SYNC_SYNCFS };

struct event_base;
struct spool;
struct spool_msg;

/*
 * A message read for use (spool_map_msg), with pread: a read error is an
 * error (EIO), never a signal. Records up to SPOOL_VIEW_WHOLE bytes are
 * read whole; of bigger ones msg holds the first msg_len bytes (at least
 * 256 kB) and the rest is read from fd at msg_off.
 */
#define SPOOL_VIEW_WHOLE	(8 * 1024 * 1024)
struct spool_view {
	struct spool_entry	 e;
	const char		*msg;	/* msg_len of e.size bytes */
	size_t			 msg_len;
	char			*buf;
	int			 fd;	/* the segment, open for read() */
	uint64_t		 msg_off;	/* where msg starts in it */
};

/* err is 0 on success or an errno value. The message is owned by the spool. */
typedef void spool_done_cb(void *arg, int err, const char *qid);
/* A message committed to queue/, as the delivery side indexes it. */
struct spool_queued {
	const char		*qid;
	const char		*mail_from;	/* "" for null */
	const char		*mailbox;	/* as in spool_entry */
	const char *const	*rcpts;		/* as in spool_env */
	size_t			 nrcpts;
	uint64_t		 size;
	uint64_t		 arrival_us;	/* from its envelope */
};
/* A message has been committed to queue/ (called on the event loop). */
typedef void spool_queued_cb(void *arg, const struct spool_queued *);

/*
 * Who opens the spool (see "Two processes" in spool.c). SPOOL_ALONE does
 * everything; SPOOL_INTAKE only writes new records (and says where, with
 * spool_news); SPOOL_DELIVERY indexes, marks and removes, and writes only
 * records of its own (requeued dead letters, bounces). Queue ids of the
 * two never meet: intake's end in 000-7FF, delivery's in 800-FFF.
 */
enum spool_role { SPOOL_ALONE, SPOOL_INTAKE, SPOOL_DELIVERY };

/* What one side of a split spool tells the other (loop thread). */
enum spool_news_type {
	SPOOL_NEWS_QUEUED,	/* intake: qid committed at seg, off, len */
	SPOOL_NEWS_CLOSED,	/* intake: no more appends to seg */
	SPOOL_NEWS_EMPTIED,	/* delivery: every record of open seg done */
};
struct spool_news {
	enum spool_news_type	 type;
	const char		*qid;	/* QUEUED */
	const char		*seg;
	uint64_t		 off, len;
};
typedef void spool_news_cb(void *, const struct spool_news *);
typedef void spool_paused_cb(void *);

/*
 * Opens (creating if needed) the spool under dir, syncing the way the
 * second argument says (enum sync_method): removes leftovers of
 * interrupted writes, sets damaged segments aside and indexes every queued
 * message. base may be NULL for tools and tests that only read.
 */
struct spool	*spool_open(const char *, int, struct event_base *, char *,
		    size_t);
/* The same with a role (spool_open is SPOOL_ALONE). */
struct spool	*spool_open_role(const char *, int, enum spool_role,
		    struct event_base *, char *, size_t);
void		 spool_free(struct spool *);
/* Where news for the other side goes (intake, delivery). */
void		 spool_set_news_cb(struct spool *, spool_news_cb *, void *);

/*
 * Intake. pause: commits wait, the open segment is closed (its CLOSED
 * news goes first), then cb runs: nothing intake wrote is open until
 * resume. retire: close the open segment if it is still the one named
 * (delivery said it emptied).
 */
void		 spool_intake_pause(struct spool *, spool_paused_cb *, void *);
void		 spool_intake_resume(struct spool *);
void		 spool_intake_retire(struct spool *, const char *);

/*
 * Delivery. adopt: intake's QUEUED news; the record is read back from
 * its segment (checked as at start) and joins the index and the queued
 * callback. 0 adopted, 1 already queued or done, -1 unreadable (errno).
 * closed: intake's CLOSED news; the segment goes once its records are
 * done. catch_up: the intake process is gone, and no other writes yet:
 * records of its segments not announced are adopted, all of its
 * segments count as closed. Returns how many were adopted.
 */
int		 spool_adopt(struct spool *, const char *, const char *,
		    uint64_t, uint64_t);
void		 spool_segment_closed(struct spool *, const char *);
size_t		 spool_catch_up(struct spool *);
/* Messages queued now (any thread). */
size_t		 spool_count(struct spool *);
/* Segment files in queue/ now. */
size_t		 spool_segments(struct spool *);
/* The messages found at open, oldest first. */
const struct spool_entry *spool_entry_at(const struct spool *, size_t);
/* Messages in dead/ (a directory scan: for the status socket). */
size_t		 spool_dead_count(struct spool *);
void		 spool_set_queued_cb(struct spool *, spool_queued_cb *, void *);

/*
 * Reads a queued message (any thread). -1 with errno: EBADMSG if it is
 * damaged, EIO if it cannot be read.
 */
int		 spool_map_msg(struct spool *, const char *,
		    struct spool_view *, const char **);
void		 spool_unmap_msg(struct spool_view *);
/* Delivered: the message leaves the queue (loop thread). */
int		 spool_remove(struct spool *, const char *);
/* Refused for good: copied to dead/ with reason in dead/<qid>.reason. */
int		 spool_dead(struct spool *, const char *, const char *);
/*
 * Records the retry state in the message's state line; like the marks of
 * spool_remove and spool_dead it is durable within PROGRESS_SYNC_MS.
 */
int		 spool_set_state(struct spool *, const char *, char, unsigned,
		    uint64_t, const char *);

/*
 * Dead letters (dead/<qid> beside dead/<qid>.reason). A dead letter keeps
 * its queue id, which no queued message shares. Ids from outside are
 * checked (16 hex digits) before they name a file.
 */
/* Reads dead/<qid> as spool_map_msg; v->fd is open on it. */
int		 spool_dead_map(struct spool *, const char *,
		    struct spool_view *, const char **);
/* dead/<qid>.reason's text (malloc'd) and its time, NULL if none. */
char		*spool_dead_reason(struct spool *, const char *, uint64_t *);
/* The dead letters' ids, oldest first: a malloc'd array of strings. */
size_t		 spool_dead_ids(struct spool *, char ***);
/* Removes a dead letter and its reason; dead/ is synced. -1: none. */
int		 spool_dead_remove(struct spool *, const char *);
/*
 * Queues a dead letter again as a fresh message (new id in newqid,
 * arrival now, no attempts, the same envelope and bytes); once that is
 * durable the dead copy is removed and cb runs (loop thread). -1 with why.
 */
int		 spool_dead_requeue(struct spool *, const char *,
		    spool_done_cb *, void *, char *, const char **);
/*
 * Import from another relayd's spool (relayctl import; see spool.c).
 * segment: the source segment fd (open for writing; the job closes it)
 * is read, its queued records committed here, then marked delivered in
 * it and synced; cb runs once (loop thread, maybe before the return).
 * -1 with errno: nothing done, fd still the caller's. dead: a dead
 * letter's record and .reason (fd or -1) become dead/<qid> here; 0 done,
 * 1 it was already here, -1 with why.
 */
struct spool_import_result {
	size_t		 imported;	/* committed here now */
	size_t		 already;	/* committed here before */
	size_t		 failed;	/* could not be committed */
	size_t		 skipped;	/* damaged: stays there */
	size_t		 left;		/* still queued there after */
	int		 err;		/* of the last failure */
	char		 why[256];	/* the first damage */
};
typedef void spool_import_cb(void *, const struct spool_import_result *);
int		 spool_import_segment(struct spool *, int, const char *,
		    spool_import_cb *, void *);
int		 spool_import_dead(struct spool *, int, int, const char *,
		    const char **);
/* An envelope value ("client", "listener", ...) of a mapped record. */
size_t		 spool_view_env(const struct spool_view *, const char *,
		    char *, size_t);

/*
 * Starts a message with its envelope. Small messages stay in memory until
 * commit; bigger ones spill into a file of their own. Returns NULL with
 * errno set if that fails.
 */
struct spool_msg *spool_msg_new(struct spool *, const struct spool_env *);
const char	*spool_msg_qid(const struct spool_msg *);
/* Appends message bytes. After the first failure it returns -1 (errno). */
int		 spool_msg_write(struct spool_msg *, const void *, size_t);
int		 spool_msg_error(const struct spool_msg *);
/*
 * Makes the message durable together with every other commit in flight:
 * small messages share one new segment file, bigger ones are their own;
 * each file is written, fdatasync'ed and linked into queue/, and the
 * directory fsync'ed once. cb runs on the event loop once it is done (or
 * failed). The spool owns msg after.
 */
void		 spool_msg_commit(struct spool_msg *, spool_done_cb *, void *);
/* The sending mailbox, written with the commit ("<>": none; NULL or "":
 * not decided; at most SPOOL_MAILBOX_MAX bytes). */
void		 spool_msg_set_mailbox(struct spool_msg *, const char *);
/* Stops a pending commit from calling back (its session went away). */
void		 spool_msg_forget(struct spool_msg *);
/* Drops an unfinished message and its file. */
void		 spool_msg_abort(struct spool_msg *);

#endif

/* spool.h - the durable queue: write, group-commit, recover. */
#ifndef RELAYD_SPOOL_H
#define RELAYD_SPOOL_H

#include <stddef.h>
#include <stdint.h>

#define SPOOL_QID_LEN		16	/* hex characters */
#define SPOOL_VERSION		1
#define SPOOL_TRAILER_LEN	32	/* "RELAYD-END %020llu\n" */

struct event_base;
struct spool;
struct spool_msg;

/* Everything known about a message before its first byte. */
struct spool_env {
	uint64_t		 arrival_us;
	const char		*client;	/* numeric address */
	const char		*listener;	/* "127.0.0.1:25" */
	const char		*helo;
	const char		*user;		/* authenticated user or "" */
	const char		*mail_from;	/* without <>, "" for null */
	const char		*mail_params;	/* ESMTP parameters or "" */
	const char *const	*rcpts;		/* "addr" or "addr PARAMS" */
	size_t			 nrcpts;
};

/* A queued message as read back from disk. */
struct spool_entry {
	char		 qid[SPOOL_QID_LEN + 1];
	uint64_t	 arrival_us;
	uint64_t	 size;		/* message bytes */
	uint64_t	 body_offset;	/* where the message starts */
	char		*mail_from;
	char		**rcpts;	/* "addr" or "addr PARAMS" */
	size_t		 nrcpts;
};

/* err is 0 on success or an errno value. The message is owned by the spool. */
typedef void spool_done_cb(void *arg, int err, const char *qid);
/* A message has been committed to queue/ (called on the event loop). */
typedef void spool_queued_cb(void *arg, const char *qid,
    const char *mail_from, uint64_t size);

/*
 * Opens (creating if needed) the spool under dir, syncing the way the
 * second argument says (enum sync_method): removes leftovers of
 * interrupted writes, moves damaged files aside and indexes every queued
 * message. base may be NULL for tools and tests that only read.
 */
struct spool	*spool_open(const char *, int, struct event_base *, char *,
		    size_t);
void		 spool_free(struct spool *);
/* Messages in queue/ now. */
size_t		 spool_count(const struct spool *);
/* The messages found at open, oldest first. */
const struct spool_entry *spool_entry_at(const struct spool *, size_t);
void		 spool_set_queued_cb(struct spool *, spool_queued_cb *, void *);

/* Opens queue/<qid> for reading (any thread). -1 with errno. */
int		 spool_open_msg(struct spool *, const char *);
/* Reads a spool file's envelope and checks its framing; see spool_parse. */
int		 spool_read_entry(int, uint64_t, struct spool_entry *,
		    const char **);
void		 spool_entry_clear(struct spool_entry *);
/* Delivered: the message leaves the queue (loop thread). */
int		 spool_remove(struct spool *, const char *);
/* Refused for good: moved to dead/ with reason in dead/<qid>.reason. */
int		 spool_dead(struct spool *, const char *, const char *);

/*
 * Starts a message: a new file in tmp/ with the envelope written. Returns
 * NULL with errno set if the file cannot be created or written.
 */
struct spool_msg *spool_msg_new(struct spool *, const struct spool_env *);
const char	*spool_msg_qid(const struct spool_msg *);
/* Appends message bytes. After the first failure it returns -1 (errno). */
int		 spool_msg_write(struct spool_msg *, const void *, size_t);
int		 spool_msg_error(const struct spool_msg *);
/*
 * Makes the message durable: trailer, fdatasync, rename into queue/,
 * directory fsync, shared with every other commit in flight. cb runs on
 * the event loop once it is done (or failed). The spool owns msg after.
 */
void		 spool_msg_commit(struct spool_msg *, spool_done_cb *, void *);
/* Stops a pending commit from calling back (its session went away). */
void		 spool_msg_forget(struct spool_msg *);
/* Drops an unfinished message and its file. */
void		 spool_msg_abort(struct spool_msg *);

/*
 * Checks a spool file from its first bytes (at least the whole envelope), its
 * last SPOOL_TRAILER_LEN bytes and its size; fills the entry. 0 if whole, -1
 * with a reason. Pure: unit tests and the recovery scan share it.
 */
int		 spool_parse(const char *, size_t, const char *, uint64_t,
		    struct spool_entry *,
		    const char **);

#endif

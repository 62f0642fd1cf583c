/*
 * spool_record.h - the bytes of one spool record, written and read in one
 * place. Pure: buffers in, buffers and structs out; no files, no clock.
 * The layout is described at the top of spool_record.c.
 */
#ifndef RELAYD_SPOOL_RECORD_H
#define RELAYD_SPOOL_RECORD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SPOOL_QID_LEN		16	/* hex characters */
#define SPOOL_VERSION		2
#define SPOOL_STATE_LEN		200	/* the state line, with its newline */
#define SPOOL_TRAILER_LEN	32	/* "RELAYD-END %020llu\n" */
#define SPOOL_ERROR_MAX		150	/* last error kept in the state line */
#define SPOOL_HEAD_MAX		(512 * 1024)	/* 500 recipients fit */

/* Where things lie from the start of a record. */
#define SPOOL_RECORD_STATE_OFF	15	/* the state line */
#define SPOOL_RECORD_MARK_OFF	22	/* its state byte: 'D', 'X' go here */
#define SPOOL_RECORD_SIZE_OFF	(SPOOL_RECORD_STATE_OFF + SPOOL_STATE_LEN + 6)
#define SPOOL_RECORD_SIZE_DIGITS 20	/* at SIZE_OFF, filled in at commit */
/* The sending mailbox's field: the first envelope line, filled at commit. */
#define SPOOL_MAILBOX_MAX	320	/* 64 local part, @, 255 domain */
#define SPOOL_RECORD_MAILBOX_OFF (SPOOL_RECORD_SIZE_OFF + \
				 SPOOL_RECORD_SIZE_DIGITS + 1 + 9)

/* Record states (one byte in the record's state line). */
#define SPOOL_QUEUED		'Q'
#define SPOOL_HELD		'H'
#define SPOOL_DELIVERED		'D'
#define SPOOL_DEAD		'X'

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
	const char		*mailbox;	/* sending mailbox, NULL: later */
	/* Copied from another spool (relayctl import): its queue id there,
	 * the state line's next attempt (0: now) and last error (kept: it
	 * says whether it was in flight). NULL, 0: not. */
	const char		*imported_from;
	uint64_t		 next_ms;
	const char		*last_error;
};

/* A record as read back: its state line, envelope and framing. */
struct spool_entry {
	char		 qid[SPOOL_QID_LEN + 1];
	char		 state;		/* SPOOL_QUEUED, ... */
	unsigned	 attempts;
	uint64_t	 next_ms;	/* earliest next attempt, 0: now */
	char		 error[SPOOL_ERROR_MAX + 1];
	uint64_t	 arrival_us;
	uint64_t	 size;		/* message bytes */
	uint64_t	 body_offset;	/* where the message starts */
	uint64_t	 reclen;	/* the whole record */
	char		*mail_from;
	/* The sending mailbox decided at commit; "<>" if there is none (a
	 * null sender and no From:), NULL if not decided (records written
	 * before it was stored). */
	char		*mailbox;
	char		**rcpts;	/* "addr" or "addr PARAMS" */
	size_t		 nrcpts;
};

/* ---- writing ---- */

/*
 * The head of a new queued record (version, state Q, a size of zero to
 * be filled in with spool_record_size, the envelope, the blank line) for
 * queue id qid: written to buf if it fits in len bytes. Returns its
 * length (as snprintf does), -1 if a value holds a newline.
 */
ssize_t		 spool_record_head(char *, size_t, const char *,
		    const struct spool_env *);
/* The size's SPOOL_RECORD_SIZE_DIGITS digits (no NUL). */
void		 spool_record_size(char *, uint64_t);
/* The mailbox's SPOOL_MAILBOX_MAX bytes, space-padded (no NUL), for
 * SPOOL_RECORD_MAILBOX_OFF. -1 (and blank) if it is too long or holds a
 * newline. */
int		 spool_record_mailbox(char *, const char *);
/* The end marker: SPOOL_TRAILER_LEN bytes (no NUL). */
void		 spool_record_trailer(char *, uint64_t);
/* The state line: SPOOL_STATE_LEN bytes (no NUL); error may be NULL. */
void		 spool_record_state(char *, char, unsigned, uint64_t,
		    const char *);

/* ---- reading ---- */

/* spool_record_parse's answers besides 0 (whole) and -1 (damaged). */
#define SPOOL_RECORD_INCOMPLETE	1	/* the bytes end inside the record */

/*
 * Checks the record at the start of buf (len bytes, to the end of its
 * file) and fills e. 0 if whole; SPOOL_RECORD_INCOMPLETE if len ends
 * inside it (more bytes could make it whole); -1 if damaged. Both with
 * why. After 0, e holds malloc'd strings (spool_entry_clear); after a
 * failure it holds none.
 */
int		 spool_record_parse(const char *, size_t, struct spool_entry *,
		    const char **);
/*
 * The same in two steps, for records too big to read whole: the head
 * from the first have bytes of a record with avail bytes to the end of
 * its file (have is at least the smaller of avail and SPOOL_HEAD_MAX),
 * then its end marker, SPOOL_TRAILER_LEN bytes at e->body_offset +
 * e->size, where e is cleared on failure.
 */
int		 spool_record_parse_head(const char *, size_t, uint64_t,
		    struct spool_entry *, const char **);
int		 spool_record_check_trailer(const char *, struct spool_entry *,
		    const char **);
/*
 * An envelope value ("client", "listener", ...) of the record at rec whose
 * head is body_offset bytes long (parsed before), cut to fit outlen;
 * returns its length, 0 (and "") if the key is absent.
 */
size_t		 spool_record_env(const char *, uint64_t, const char *,
		    char *, size_t);
/* A queue id as relayd writes them: SPOOL_QID_LEN upper-case hex digits. */
int		 spool_record_qid_valid(const char *, size_t);
void		 spool_entry_clear(struct spool_entry *);

#endif

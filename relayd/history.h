/* history.h - every message's life in <spool dir>/history.db (SQLite). */
#ifndef RELAYD_HISTORY_H
#define RELAYD_HISTORY_H

#include <stddef.h>
#include <stdint.h>

struct history;
struct json_object;

/*
 * Opens (or creates, mode 0600) <spool_dir>/history.db and starts the
 * thread that writes it. retention_ms is [queue] history; 0 means off:
 * NULL, and every call below takes NULL and does nothing. A database
 * that cannot be used is moved aside and a fresh one started (logged);
 * NULL only if even that fails, and mail flows on either way.
 */
struct history	*history_new(const char *, uint64_t);
/* Writes what is still pending, stops the thread, closes. */
void		 history_free(struct history *);

/*
 * The calls below only copy their arguments into a list the thread
 * writes in batches: they never wait for the disk. Event loop thread.
 */

/* A message accepted (250): what the SMTP session knew of it. */
struct history_msg {
	const char		*qid;
	uint64_t		 received_ms;	/* wall clock */
	const char		*client;	/* address, or "relayd" */
	const char		*user;		/* AUTH user, or NULL */
	const char		*sender;	/* envelope, "" for <> */
	const char		*message_id;	/* "<...>" or NULL */
	const char		*subject;	/* UTF-8, or NULL */
	uint64_t		 size;		/* as spooled (see HISTORY_SIZE) */
	const char *const	*rcpts;
	size_t			 nrcpts;
};
void		 history_queued(struct history *, const struct history_msg *);

/*
 * The end of a message: status is sent, failed, expired, deleted or
 * refused. code, request_id and mailbox may be NULL; graph_status 0 when
 * Graph was not asked. The row is made if it is missing (a message
 * queued before a restart).
 */
void		 history_outcome(struct history *, const char *, const char *,
		    unsigned, long, const char *, const char *, const char *);
/*
 * What the queue knows of a message whose queued row may be missing
 * (queued before relayd started): kept only if there is no row yet.
 */
void		 history_known(struct history *, const char *, uint64_t,
		    const char *, uint64_t);
/* Rows in the database (cached; for a metric). */
uint64_t	 history_count(const struct history *);

/*
 * The status socket's `history` command: args is the JSON object relayctl
 * sent (see history_filter_json). Answers {"history": [...], "more":
 * bool, "limit": N}, or NULL with what is wrong in err.
 */
struct json_object *history_command(struct history *, const char *, char *,
		    size_t);

/* ---- pure parts, for relayctl and the unit tests ---- */

#define HISTORY_LIMIT_DEFAULT	1000
#define HISTORY_LIMIT_MAX	10000	/* 10,000 rows: 0.2 s of the loop */
#define HISTORY_ARG_MAX		320	/* bytes of one filter value */

struct history_filter {
	uint64_t	 since_ms;	/* a duration; 0: all */
	char		 sender[HISTORY_ARG_MAX];
	char		 rcpt[HISTORY_ARG_MAX];
	char		 client[HISTORY_ARG_MAX];
	char		 id[HISTORY_ARG_MAX];	/* queue id or Message-ID */
	char		 status[16];
	unsigned	 limit;		/* 0: HISTORY_LIMIT_DEFAULT */
	int		 json;		/* relayctl --json */
	/* history_filter_sql's: the id without and with <>. */
	char		 id_bare[HISTORY_ARG_MAX];
	char		 id_angled[HISTORY_ARG_MAX + 2];
};

/*
 * relayctl history's options (after the word history) into f: 0, or -1
 * with what is wrong in err.
 */
int		 history_filter_args(int, char **, struct history_filter *,
		    char *, size_t);
/* The filter as the one-line JSON text relayctl sends; malloc'd. */
char		*history_filter_json(const struct history_filter *);
/* And back: 0, or -1 with err. */
int		 history_filter_parse(const char *, struct history_filter *,
		    char *, size_t);
/*
 * The SELECT for f at wall-clock now_ms: its text into sql, its bound
 * values (all text, in order) into params; returns how many, -1 if sql
 * is too small. Asks for limit + 1 rows, so that "more" can be told.
 * The params point into f.
 */
#define HISTORY_PARAMS_MAX	8
int		 history_filter_sql(struct history_filter *, uint64_t,
		    char *, size_t, const char *[HISTORY_PARAMS_MAX]);
/* One row of an answer; 0 (-1 for size) where nothing is known. */
struct history_row {
	const char		*id;
	int64_t			 received_ms;
	const char		*client;
	const char		*user;
	const char		*sender;
	const char		*mailbox;
	const char *const	*rcpts;
	size_t			 nrcpts;
	const char		*message_id;
	const char		*subject;
	int64_t			 size;
	const char		*status;
	int64_t			 attempts;
	int64_t			 graph_status;
	const char		*graph_code;
	const char		*request_id;
	int64_t			 sent_ms;	/* the outcome's time */
};
/* The row as relayctl history --json prints it. */
struct json_object *history_row_json(const struct history_row *);
/* The schema relayd keeps (bench/history_fill builds with it). */
const char	*history_schema(void);

#endif

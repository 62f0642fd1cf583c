/*
 * history.c - message history: every message's life in an SQLite file.
 *
 * <spool dir>/history.db (mode 0600) has a row per message, keyed by the
 * queue id: made when relayd says 250 (queued), updated at its end (sent,
 * failed, expired, deleted, refused). Recipients have a table of their
 * own so that --rcpt finds them by index. [queue] history is how long
 * rows are kept; 0 turns all of this off (no file, no thread).
 *
 * Why SQLite: relayctl history filters a million rows by sender,
 * recipient, client, id or status, newest first, within 100 ms; that is
 * indexes, which a flat log cannot give and a server would be one more
 * thing to run. SQLite is one file in the spool, crash-safe in WAL mode,
 * in every distribution.
 *
 * Threads. The event loop never waits for the disk on the way in: the
 * hooks (history_queued, history_outcome, history_known) copy their
 * arguments into an event on a mutex-guarded list, and this file's
 * thread writes the list in one transaction per batch (every second, or
 * at 10,000 events), WAL with synchronous = NORMAL: a crash or power cut
 * may lose the last moments of history, never a message (the spool is
 * what keeps messages, and it does not wait for history). The thread
 * also deletes rows older than the retention, hourly. It costs about
 * 11 us of CPU a message (bench/intake: 7% of relayd's CPU), so it runs
 * at nice 10, below intake; past HISTORY_PENDING_MAX events waiting (a
 * stuck disk) new ones are dropped and counted in the log, so memory
 * stays bounded and intake never waits.
 *
 * Queries (relayctl history) run on the event loop with a read-only
 * connection of their own (WAL lets them read while the thread writes);
 * every filter has an index ordered by time, a query asks for at most
 * limit + 1 rows, and a progress handler stops one that runs past
 * HISTORY_QUERY_MS, so the loop is never held long (bench/history).
 *
 * A database that cannot be opened or read (corrupt, not a database) is
 * renamed history.db.broken-TIME with its -wal and -shm, said in the log
 * with what to do, and a fresh one begun. History never stops mail.
 */
#include <sys/resource.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <sqlite3.h>

#include "history.h"
#include "log.h"
#include "util.h"

/*
 * One commit rewrites every page it touched into the WAL, and the
 * indexes on sender, Message-ID and recipient are touched all over: at
 * 4,000 msg/s, commits every 250 ms wrote 3 times the WAL of commits
 * every second (bench/intake under strace). For the same reason the WAL
 * is copied back every 16 MB rather than SQLite's 4.
 */
#define HISTORY_BATCH_MS	1000	/* longest an event waits */
#define HISTORY_BATCH_EVENTS	10000	/* or this many wake the thread */
#define HISTORY_CHECKPOINT_PAGES "4000"	/* of 4 KiB */
#define HISTORY_PENDING_MAX	200000	/* then events are dropped */
#define HISTORY_NICE		10	/* intake first when CPUs are busy */
#define HISTORY_PRUNE_MS	(3600 * 1000)
#define HISTORY_QUERY_MS	1000	/* a query past this is stopped */
#define HISTORY_BUSY_MS		2000	/* waiting for the other connection */
#define HISTORY_ANALYZE_ROWS	"1000"	/* sampled per index */

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS messages (\n"
    "  id TEXT PRIMARY KEY,\n"
    "  received INTEGER,\n"
    "  client TEXT COLLATE NOCASE,\n"
    "  user TEXT,\n"
    "  sender TEXT COLLATE NOCASE,\n"
    "  mailbox TEXT,\n"
    "  message_id TEXT COLLATE NOCASE,\n"
    "  subject TEXT,\n"
    "  size INTEGER,\n"
    "  status TEXT COLLATE NOCASE,\n"
    "  attempts INTEGER NOT NULL DEFAULT 0,\n"
    "  graph_status INTEGER,\n"
    "  graph_code TEXT,\n"
    "  request_id TEXT,\n"
    "  sent INTEGER\n"
    ");\n"
    "CREATE TABLE IF NOT EXISTS recipients (\n"
    "  id TEXT NOT NULL,\n"
    "  rcpt TEXT NOT NULL COLLATE NOCASE,\n"
    "  received INTEGER\n"
    ");\n"
    "CREATE INDEX IF NOT EXISTS messages_received ON messages(received);\n"
    "CREATE INDEX IF NOT EXISTS messages_sender ON messages(sender, "
    "received);\n"
    "CREATE INDEX IF NOT EXISTS messages_client ON messages(client, "
    "received);\n"
    "CREATE INDEX IF NOT EXISTS messages_status ON messages(status, "
    "received);\n"
    "CREATE INDEX IF NOT EXISTS messages_message_id ON "
    "messages(message_id);\n"
    "CREATE INDEX IF NOT EXISTS recipients_rcpt ON recipients(rcpt, "
    "received);\n"
    "CREATE INDEX IF NOT EXISTS recipients_id ON recipients(id);\n";

static const char sql_queued[] =
    "INSERT INTO messages (id, received, client, user, sender, message_id, "
    "subject, size, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
    "'queued') ON CONFLICT(id) DO UPDATE SET received = excluded.received, "
    "client = excluded.client, user = excluded.user, sender = "
    "excluded.sender, message_id = excluded.message_id, subject = "
    "excluded.subject, size = excluded.size";
static const char sql_rcpt[] =
    "INSERT INTO recipients (id, rcpt, received) VALUES (?1, ?2, ?3)";
static const char sql_known[] =
    "INSERT INTO messages (id, received, sender, size, status) VALUES "
    "(?1, ?2, ?3, ?4, 'queued') ON CONFLICT(id) DO NOTHING";
static const char sql_outcome[] =
    "INSERT INTO messages (id, received, status, attempts, graph_status, "
    "graph_code, request_id, mailbox, sent) VALUES (?1, ?2, ?3, ?4, ?5, "
    "?6, ?7, ?8, ?2) ON CONFLICT(id) DO UPDATE SET status = "
    "excluded.status, attempts = excluded.attempts, graph_status = "
    "excluded.graph_status, graph_code = excluded.graph_code, request_id "
    "= excluded.request_id, mailbox = coalesce(excluded.mailbox, "
    "mailbox), sent = excluded.sent";

enum hev_kind { HEV_QUEUED, HEV_KNOWN, HEV_OUTCOME };

/* One event, copied: the loop's strings may be gone when it is written. */
struct hev {
	enum hev_kind	 kind;
	char		*qid;
	uint64_t	 time_ms;
	uint64_t	 size;
	char		*client, *user, *sender, *message_id, *subject;
	char		*status, *code, *request_id, *mailbox;
	char		**rcpts;
	size_t		 nrcpts;
	unsigned	 attempts;
	long		 graph_status;
	struct hev	*next;
};

enum { ST_QUEUED, ST_RCPT, ST_KNOWN, ST_OUTCOME, ST_N };

struct history {
	char		*path;
	uint64_t	 retention_ms;

	/* The thread's. */
	sqlite3		*db;
	sqlite3_stmt	*st[ST_N];
	uint64_t	 next_prune;
	sqlite3_int64	 max_rowid;	/* rows after it are new */

	/* The loop's. */
	sqlite3		*rdb;
	unsigned	 rgen;

	/* Shared, under lock (count and gen: atomics). */
	pthread_mutex_t	 lock;
	pthread_cond_t	 cond;
	struct hev	*head, **tail;
	size_t		 pending;
	uint64_t	 dropped;	/* since the thread last looked */
	int		 quit;
	uint64_t	 count;
	unsigned	 gen;		/* a fresh database was begun */
	pthread_t	 thread;
};

/* ---- events (event loop) ---- */

/* NULL for NULL or "": nothing known. */
static char *
dup_or_null(const char *s)
{
	return s != NULL && *s != '\0' ? xstrdup(s) : NULL;
}

static void
hev_free(struct hev *e)
{
	size_t	 i;

	for (i = 0; i < e->nrcpts; i++)
		free(e->rcpts[i]);
	free(e->rcpts);
	free(e->qid);
	free(e->client);
	free(e->user);
	free(e->sender);
	free(e->message_id);
	free(e->subject);
	free(e->status);
	free(e->code);
	free(e->request_id);
	free(e->mailbox);
	free(e);
}

/* Queues e for the thread; a thread that cannot keep up loses events. */
static void
hev_post(struct history *h, struct hev *e)
{
	pthread_mutex_lock(&h->lock);
	if (h->pending >= HISTORY_PENDING_MAX) {
		h->dropped++;
		pthread_mutex_unlock(&h->lock);
		hev_free(e);
		return;
	}
	*h->tail = e;
	h->tail = &e->next;
	if (++h->pending == HISTORY_BATCH_EVENTS)
		pthread_cond_signal(&h->cond);
	pthread_mutex_unlock(&h->lock);
}

static struct hev *
hev_new(enum hev_kind kind, const char *qid)
{
	struct hev	*e = xcalloc(1, sizeof(*e));

	e->kind = kind;
	e->qid = xstrdup(qid);
	return e;
}

void
history_queued(struct history *h, const struct history_msg *m)
{
	struct hev	*e;
	size_t		 i;

	if (h == NULL)
		return;
	e = hev_new(HEV_QUEUED, m->qid);
	e->time_ms = m->received_ms;
	e->size = m->size;
	e->client = dup_or_null(m->client);
	e->user = dup_or_null(m->user);
	e->sender = dup_or_null(m->sender);
	e->message_id = dup_or_null(m->message_id);
	e->subject = dup_or_null(m->subject);
	e->rcpts = xcalloc(m->nrcpts + 1, sizeof(char *));
	for (i = 0; i < m->nrcpts; i++)
		e->rcpts[i] = xstrdup(m->rcpts[i]);
	e->nrcpts = m->nrcpts;
	hev_post(h, e);
}

void
history_known(struct history *h, const char *qid, uint64_t received_ms,
    const char *sender, uint64_t size)
{
	struct hev	*e;

	if (h == NULL)
		return;
	e = hev_new(HEV_KNOWN, qid);
	e->time_ms = received_ms;
	e->sender = dup_or_null(sender);
	e->size = size;
	hev_post(h, e);
}

void
history_outcome(struct history *h, const char *qid, const char *status,
    unsigned attempts, long graph_status, const char *code,
    const char *request_id, const char *mailbox)
{
	struct hev	*e;

	if (h == NULL)
		return;
	e = hev_new(HEV_OUTCOME, qid);
	e->time_ms = wall_us() / 1000;
	e->status = xstrdup(status);
	e->attempts = attempts;
	e->graph_status = graph_status;
	e->code = dup_or_null(code);
	e->request_id = dup_or_null(request_id);
	e->mailbox = dup_or_null(mailbox);
	hev_post(h, e);
}

uint64_t
history_count(const struct history *h)
{
	if (h == NULL)
		return 0;
	return __atomic_load_n(&h->count, __ATOMIC_RELAXED);
}

/* ---- the database (history thread, and at start) ---- */

static void
bind_text(sqlite3_stmt *s, int i, const char *v)
{
	if (v != NULL)
		sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(s, i);
}

static int
step_reset(sqlite3_stmt *s)
{
	int	 rc = sqlite3_step(s);

	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static int
hev_write(struct history *h, const struct hev *e)
{
	sqlite3_stmt	*s;
	size_t		 i;
	int		 rc;

	switch (e->kind) {
	case HEV_QUEUED:
		s = h->st[ST_QUEUED];
		bind_text(s, 1, e->qid);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)e->time_ms);
		bind_text(s, 3, e->client);
		bind_text(s, 4, e->user);
		bind_text(s, 5, e->sender);
		bind_text(s, 6, e->message_id);
		bind_text(s, 7, e->subject);
		sqlite3_bind_int64(s, 8, (sqlite3_int64)e->size);
		if ((rc = step_reset(s)) != SQLITE_OK)
			return rc;
		s = h->st[ST_RCPT];
		for (i = 0; i < e->nrcpts; i++) {
			bind_text(s, 1, e->qid);
			bind_text(s, 2, e->rcpts[i]);
			sqlite3_bind_int64(s, 3, (sqlite3_int64)e->time_ms);
			if ((rc = step_reset(s)) != SQLITE_OK)
				return rc;
		}
		return SQLITE_OK;
	case HEV_KNOWN:
		s = h->st[ST_KNOWN];
		bind_text(s, 1, e->qid);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)e->time_ms);
		bind_text(s, 3, e->sender);
		sqlite3_bind_int64(s, 4, (sqlite3_int64)e->size);
		return step_reset(s);
	case HEV_OUTCOME:
		s = h->st[ST_OUTCOME];
		bind_text(s, 1, e->qid);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)e->time_ms);
		bind_text(s, 3, e->status);
		sqlite3_bind_int(s, 4, (int)e->attempts);
		if (e->graph_status > 0)
			sqlite3_bind_int64(s, 5, e->graph_status);
		bind_text(s, 6, e->code);
		bind_text(s, 7, e->request_id);
		bind_text(s, 8, e->mailbox);
		return step_reset(s);
	}
	return SQLITE_MISUSE;
}

static void
db_close(struct history *h)
{
	size_t	 i;

	for (i = 0; i < ST_N; i++) {
		sqlite3_finalize(h->st[i]);
		h->st[i] = NULL;
	}
	sqlite3_close_v2(h->db);
	h->db = NULL;
}

static int
count_rows(sqlite3 *db, uint64_t *out, sqlite3_int64 *max_rowid)
{
	sqlite3_stmt	*s;
	int		 rc;

	if ((rc = sqlite3_prepare_v2(db, "SELECT count(*), "
	    "coalesce(max(rowid), 0) FROM messages", -1, &s, NULL)) !=
	    SQLITE_OK)
		return rc;
	if ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		*out = (uint64_t)sqlite3_column_int64(s, 0);
		*max_rowid = sqlite3_column_int64(s, 1);
		rc = SQLITE_OK;
	}
	sqlite3_finalize(s);
	return rc;
}

/*
 * The planner's statistics, from a sample of each index: without them,
 * --sender X --status failed went through every failed message (60 ms
 * in a million) rather than X's few.
 */
static void
analyze(sqlite3 *db)
{
	if (sqlite3_exec(db, "PRAGMA analysis_limit = " HISTORY_ANALYZE_ROWS
	    "; ANALYZE", NULL, NULL, NULL) != SQLITE_OK)
		log_warnx("history: ANALYZE: %s", sqlite3_errmsg(db));
}

/* Opens h->path as the writer: WAL, the schema, the statements. */
static int
db_open(struct history *h, const char **why)
{
	static const char *const sqls[ST_N] = { sql_queued, sql_rcpt,
	    sql_known, sql_outcome };
	uint64_t	 n = 0;
	size_t		 i;
	int		 fd, rc;

	/* Made here first so that it (and its -wal, -shm) is 0600. */
	if ((fd = open(h->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) == -1) {
		*why = strerror(errno);
		return -1;
	}
	close(fd);
	rc = sqlite3_open_v2(h->path, &h->db, SQLITE_OPEN_READWRITE |
	    SQLITE_OPEN_NOMUTEX, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_busy_timeout(h->db, HISTORY_BUSY_MS);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(h->db, "PRAGMA journal_mode = WAL; "
		    "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = "
		    HISTORY_CHECKPOINT_PAGES, NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(h->db, schema, NULL, NULL, NULL);
	for (i = 0; i < ST_N && rc == SQLITE_OK; i++)
		rc = sqlite3_prepare_v3(h->db, sqls[i], -1,
		    SQLITE_PREPARE_PERSISTENT, &h->st[i], NULL);
	if (rc == SQLITE_OK)
		rc = count_rows(h->db, &n, &h->max_rowid);
	if (rc == SQLITE_OK)
		analyze(h->db);
	if (rc != SQLITE_OK) {
		*why = h->db != NULL ? sqlite3_errmsg(h->db) :
		    sqlite3_errstr(rc);
		return -1;
	}
	__atomic_store_n(&h->count, n, __ATOMIC_RELAXED);
	return 0;
}

/* Moves a database that cannot be used aside, with its -wal and -shm. */
static void
move_aside(struct history *h, const char *why)
{
	char		 stamp[32], *to, *from2, *to2;
	const char	*sfx[] = { "-wal", "-shm" };
	time_t		 now = time(NULL);
	struct tm	 tm;
	size_t		 i;

	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
	xasprintf(&to, "%s.broken-%s", h->path, stamp);
	if (rename(h->path, to) == -1 && errno != ENOENT)
		log_warnx("history: cannot rename %s: %s; remove it by hand",
		    h->path, strerror(errno));
	for (i = 0; i < NELEM(sfx); i++) {
		xasprintf(&from2, "%s%s", h->path, sfx[i]);
		xasprintf(&to2, "%s%s", to, sfx[i]);
		(void)rename(from2, to2);
		free(from2);
		free(to2);
	}
	log_warnx("history: %s cannot be used (%s): moved to %s and a new one "
	    "begun; mail is not affected. Look into the old one with sqlite3 "
	    "if you need its history, else delete it", h->path, why, to);
	free(to);
	__atomic_add_fetch(&h->gen, 1, __ATOMIC_RELAXED);
}

/* Opens the database, or a fresh one in place of one that is broken. */
static int
db_start(struct history *h)
{
	const char	*why = NULL;
	char		*saved;

	if (db_open(h, &why) == 0)
		return 0;
	saved = xstrdup(why);
	db_close(h);
	move_aside(h, saved);
	free(saved);
	if (db_open(h, &why) == 0)
		return 0;
	log_warnx("history: %s: %s; history is off until relayd restarts "
	    "(mail is not affected); check the spool directory's space and "
	    "permissions", h->path, why);
	db_close(h);
	return -1;
}

static int
is_broken(int rc)
{
	rc &= 0xff;
	return rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB;
}

static void
prune(struct history *h, uint64_t now)
{
	char		 sql[160];
	uint64_t	 cut = now > h->retention_ms ? now - h->retention_ms : 0;
	int		 rc, gone = 0;

	snprintf(sql, sizeof(sql), "DELETE FROM recipients WHERE id IN (SELECT "
	    "id FROM messages WHERE received < %" PRIu64 ")", cut);
	rc = sqlite3_exec(h->db, "BEGIN", NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(h->db, sql, NULL, NULL, NULL);
	snprintf(sql, sizeof(sql), "DELETE FROM messages WHERE received < "
	    "%" PRIu64, cut);
	if (rc == SQLITE_OK && (rc = sqlite3_exec(h->db, sql, NULL, NULL,
	    NULL)) == SQLITE_OK)
		gone = sqlite3_changes(h->db);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(h->db, "COMMIT", NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		log_warnx("history: removing old rows: %s",
		    sqlite3_errmsg(h->db));
		sqlite3_exec(h->db, "ROLLBACK", NULL, NULL, NULL);
		return;
	}
	if (gone > 0) {
		__atomic_sub_fetch(&h->count, (uint64_t)gone, __ATOMIC_RELAXED);
		log_info("history: %d message(s) older than [queue] history "
		    "removed", gone);
	}
}

/* Rows added since the last look: new rowids only grow. */
static void
count_new(struct history *h)
{
	sqlite3_stmt	*s;

	if (sqlite3_prepare_v2(h->db, "SELECT count(*), max(rowid) FROM "
	    "messages WHERE rowid > ?1", -1, &s, NULL) != SQLITE_OK)
		return;
	sqlite3_bind_int64(s, 1, h->max_rowid);
	if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_int64(s, 0) > 0) {
		__atomic_add_fetch(&h->count, (uint64_t)sqlite3_column_int64(s,
		    0), __ATOMIC_RELAXED);
		h->max_rowid = sqlite3_column_int64(s, 1);
	}
	sqlite3_finalize(s);
}

/* One transaction for the batch; a broken database is replaced. */
static void
batch_write(struct history *h, struct hev *list)
{
	struct hev	*e;
	const char	*why;
	int		 rc;

	if (h->db == NULL)
		return;
	rc = sqlite3_exec(h->db, "BEGIN", NULL, NULL, NULL);
	for (e = list; e != NULL && rc == SQLITE_OK; e = e->next)
		rc = hev_write(h, e);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(h->db, "COMMIT", NULL, NULL, NULL);
	if (rc == SQLITE_OK) {
		count_new(h);
		return;
	}
	log_warnx("history: writing %s: %s; these events are not recorded",
	    h->path, sqlite3_errmsg(h->db));
	sqlite3_exec(h->db, "ROLLBACK", NULL, NULL, NULL);
	if (is_broken(rc)) {
		db_close(h);
		move_aside(h, sqlite3_errstr(rc));
		if (db_open(h, &why) == -1)
			db_close(h);
	}
}

static void *
history_main(void *arg)
{
	struct history	*h = arg;
	struct hev	*list, *e;
	struct timespec	 ts;
	uint64_t	 dropped;
	int		 quit;

	/*
	 * Below the event loop and the workers: on a busy machine intake
	 * goes first, and history catches up when it is quieter.
	 */
	(void)setpriority(PRIO_PROCESS, (id_t)gettid(), HISTORY_NICE);
	for (;;) {
		pthread_mutex_lock(&h->lock);
		if (!h->quit && h->pending < HISTORY_BATCH_EVENTS) {
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += HISTORY_BATCH_MS / 1000;
			ts.tv_nsec += HISTORY_BATCH_MS % 1000 * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&h->cond, &h->lock, &ts);
		}
		list = h->head;
		h->head = NULL;
		h->tail = &h->head;
		h->pending = 0;
		dropped = h->dropped;
		h->dropped = 0;
		quit = h->quit;
		pthread_mutex_unlock(&h->lock);
		if (dropped > 0)
			log_warnx("history: %" PRIu64 " event(s) not recorded: "
			    "%s is not written as fast as mail comes (check its "
			    "disk); mail is not affected", dropped, h->path);
		if (list != NULL)
			batch_write(h, list);
		while ((e = list) != NULL) {
			list = e->next;
			hev_free(e);
		}
		if (h->db != NULL && now_ms() >= h->next_prune) {
			prune(h, wall_us() / 1000);
			analyze(h->db);
			h->next_prune = now_ms() + HISTORY_PRUNE_MS;
		}
		if (quit)
			break;
	}
	return NULL;
}

const char *
history_schema(void)
{
	return schema;
}

struct history *
history_new(const char *spool_dir, uint64_t retention_ms)
{
	struct history	*h;

	if (retention_ms == 0)
		return NULL;
	h = xcalloc(1, sizeof(*h));
	xasprintf(&h->path, "%s/history.db", spool_dir);
	h->retention_ms = retention_ms;
	h->tail = &h->head;
	pthread_mutex_init(&h->lock, NULL);
	pthread_cond_init(&h->cond, NULL);
	if (db_start(h) == -1) {
		pthread_mutex_destroy(&h->lock);
		pthread_cond_destroy(&h->cond);
		free(h->path);
		free(h);
		return NULL;
	}
	if (pthread_create(&h->thread, NULL, history_main, h) != 0) {
		log_warnx("history: cannot start its thread; history is off");
		db_close(h);
		free(h->path);
		free(h);
		return NULL;
	}
	pthread_setname_np(h->thread, "relayd-history");
	log_info("history: %s, %" PRIu64 " message(s), kept %" PRIu64 "d",
	    h->path, history_count(h), retention_ms / 86400000);
	return h;
}

void
history_free(struct history *h)
{
	if (h == NULL)
		return;
	pthread_mutex_lock(&h->lock);
	h->quit = 1;
	pthread_cond_signal(&h->cond);
	pthread_mutex_unlock(&h->lock);
	pthread_join(h->thread, NULL);
	db_close(h);
	sqlite3_close_v2(h->rdb);
	pthread_mutex_destroy(&h->lock);
	pthread_cond_destroy(&h->cond);
	free(h->path);
	free(h);
}

/* ---- queries (event loop) ---- */

static int
past_deadline(void *arg)
{
	return now_ms() > *(uint64_t *)arg;
}

static sqlite3 *
reader(struct history *h)
{
	unsigned	 gen = __atomic_load_n(&h->gen, __ATOMIC_RELAXED);

	if (h->rdb != NULL && gen == h->rgen)
		return h->rdb;
	sqlite3_close_v2(h->rdb);
	h->rdb = NULL;
	if (sqlite3_open_v2(h->path, &h->rdb, SQLITE_OPEN_READWRITE |
	    SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK ||
	    sqlite3_exec(h->rdb, "PRAGMA query_only = 1", NULL, NULL,
	    NULL) != SQLITE_OK) {
		sqlite3_close_v2(h->rdb);
		h->rdb = NULL;
		return NULL;
	}
	sqlite3_busy_timeout(h->rdb, 200);
	h->rgen = gen;
	return h->rdb;
}

static const char *
col_text(sqlite3_stmt *s, int i)
{
	return (const char *)sqlite3_column_text(s, i);
}

/* The row's recipients, then its JSON. */
static json_object *
row_out(sqlite3 *db, sqlite3_stmt *s, sqlite3_stmt *rs)
{
	struct history_row	 r;
	char			**rcpts = NULL;
	size_t			 n = 0, i;
	json_object		*o;

	memset(&r, 0, sizeof(r));
	r.id = col_text(s, 0);
	r.received_ms = sqlite3_column_int64(s, 1);
	r.client = col_text(s, 2);
	r.user = col_text(s, 3);
	r.sender = col_text(s, 4);
	r.mailbox = col_text(s, 5);
	r.message_id = col_text(s, 6);
	r.subject = col_text(s, 7);
	r.size = sqlite3_column_type(s, 8) == SQLITE_NULL ? -1 :
	    sqlite3_column_int64(s, 8);
	r.status = col_text(s, 9);
	r.attempts = sqlite3_column_int64(s, 10);
	r.graph_status = sqlite3_column_int64(s, 11);
	r.graph_code = col_text(s, 12);
	r.request_id = col_text(s, 13);
	r.sent_ms = sqlite3_column_int64(s, 14);
	sqlite3_bind_text(rs, 1, r.id, -1, SQLITE_TRANSIENT);
	while (sqlite3_step(rs) == SQLITE_ROW) {
		rcpts = xrealloc(rcpts, (n + 1) * sizeof(char *));
		rcpts[n++] = xstrdup(col_text(rs, 0));
	}
	sqlite3_reset(rs);
	r.rcpts = (const char *const *)rcpts;
	r.nrcpts = n;
	o = history_row_json(&r);
	for (i = 0; i < n; i++)
		free(rcpts[i]);
	free(rcpts);
	(void)db;
	return o;
}

static json_object *
query(struct history *h, struct history_filter *f, char *err, size_t errlen)
{
	const char	*params[HISTORY_PARAMS_MAX];
	char		 sql[2048];
	sqlite3		*db;
	sqlite3_stmt	*s = NULL, *rs = NULL;
	json_object	*o = NULL, *a;
	uint64_t	 deadline = now_ms() + HISTORY_QUERY_MS;
	unsigned	 limit = f->limit ? f->limit : HISTORY_LIMIT_DEFAULT, n = 0;
	int		 np, i, rc;

	if ((db = reader(h)) == NULL) {
		snprintf(err, errlen, "history: cannot open %s (see relayd's "
		    "log)", h->path);
		return NULL;
	}
	np = history_filter_sql(f, wall_us() / 1000, sql, sizeof(sql), params);
	if (np < 0) {
		snprintf(err, errlen, "history: filter too long");
		return NULL;
	}
	if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db, "SELECT rcpt FROM recipients WHERE id = ?1 "
	    "ORDER BY rowid", -1, &rs, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "history: %s", sqlite3_errmsg(db));
		goto out;
	}
	for (i = 0; i < np; i++)
		sqlite3_bind_text(s, i + 1, params[i], -1, SQLITE_STATIC);
	sqlite3_progress_handler(db, 1000, past_deadline, &deadline);
	a = json_object_new_array();
	while ((rc = sqlite3_step(s)) == SQLITE_ROW && n < limit) {
		json_object_array_add(a, row_out(db, s, rs));
		n++;
		if (now_ms() > deadline) {
			rc = SQLITE_INTERRUPT;
			break;
		}
	}
	sqlite3_progress_handler(db, 0, NULL, NULL);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		json_object_put(a);
		if (rc == SQLITE_INTERRUPT)
			snprintf(err, errlen, "history: the query took over %d "
			    "ms and was stopped; narrow it (--since, a filter "
			    "or --limit)", HISTORY_QUERY_MS);
		else
			snprintf(err, errlen, "history: %s",
			    sqlite3_errmsg(db));
		goto out;
	}
	o = json_object_new_object();
	json_object_object_add(o, "history", a);
	json_object_object_add(o, "more", json_object_new_boolean(rc ==
	    SQLITE_ROW));
	json_object_object_add(o, "limit", json_object_new_int64(limit));
out:
	sqlite3_finalize(s);
	sqlite3_finalize(rs);
	return o;
}

json_object *
history_command(struct history *h, const char *args, char *err,
    size_t errlen)
{
	struct history_filter	 f;
	char			 why[256];

	if (h == NULL) {
		snprintf(err, errlen, "history is off ([queue] history = 0, or "
		    "its database could not be opened: see relayd's log)");
		return NULL;
	}
	if (history_filter_parse(args, &f, why, sizeof(why)) == -1) {
		snprintf(err, errlen, "history: %s", why);
		return NULL;
	}
	return query(h, &f, err, errlen);
}

/* ---- pure parts ---- */

static const char *const statuses[] = { "queued", "sent", "failed",
    "expired", "deleted", "refused" };

static int
status_known(const char *s)
{
	size_t	 i;

	for (i = 0; i < NELEM(statuses); i++)
		if (strcmp(s, statuses[i]) == 0)
			return 1;
	return 0;
}

static int
set_value(char *dst, size_t len, const char *opt, const char *v, char *err,
    size_t errlen)
{
	if (v == NULL || *v == '\0') {
		snprintf(err, errlen, "%s needs a value", opt);
		return -1;
	}
	if (strlen(v) >= len) {
		snprintf(err, errlen, "%s: value too long", opt);
		return -1;
	}
	strlcpy_r(dst, v, len);
	return 0;
}

int
history_filter_args(int argc, char **argv, struct history_filter *f,
    char *err, size_t errlen)
{
	static const struct { const char *opt; size_t off; size_t len; } str[] = {
		{ "--sender", offsetof(struct history_filter, sender),
		    HISTORY_ARG_MAX },
		{ "--rcpt", offsetof(struct history_filter, rcpt),
		    HISTORY_ARG_MAX },
		{ "--client", offsetof(struct history_filter, client),
		    HISTORY_ARG_MAX },
		{ "--id", offsetof(struct history_filter, id), HISTORY_ARG_MAX },
		{ "--status", offsetof(struct history_filter, status), 16 },
	};
	uint64_t	 v;
	size_t		 k;
	int		 i;

	memset(f, 0, sizeof(*f));
	for (i = 0; i < argc; i++) {
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(argv[i], "--json") == 0) {
			f->json = 1;
			continue;
		}
		if (strcmp(argv[i], "--since") == 0) {
			if (val == NULL || parse_duration_ms(val, &v) == -1 ||
			    v == 0) {
				snprintf(err, errlen, "--since wants a duration "
				    "such as 90m, 12h or 7d");
				return -1;
			}
			f->since_ms = v;
			i++;
			continue;
		}
		if (strcmp(argv[i], "--limit") == 0) {
			if (val == NULL || parse_u64(val, 1,
			    HISTORY_LIMIT_MAX, &v) == -1) {
				snprintf(err, errlen, "--limit wants a number "
				    "from 1 to %d", HISTORY_LIMIT_MAX);
				return -1;
			}
			f->limit = (unsigned)v;
			i++;
			continue;
		}
		for (k = 0; k < NELEM(str); k++)
			if (strcmp(argv[i], str[k].opt) == 0)
				break;
		if (k == NELEM(str)) {
			snprintf(err, errlen, "unknown option %s", argv[i]);
			return -1;
		}
		if (set_value((char *)f + str[k].off, str[k].len, str[k].opt,
		    val, err, errlen) == -1)
			return -1;
		i++;
	}
	if (f->status[0] != '\0' && !status_known(f->status)) {
		snprintf(err, errlen, "--status is one of queued, sent, failed, "
		    "expired, deleted, refused");
		return -1;
	}
	return 0;
}

static void
jadd_str(json_object *o, const char *k, const char *v)
{
	if (v[0] != '\0')
		json_object_object_add(o, k, json_object_new_string(v));
}

char *
history_filter_json(const struct history_filter *f)
{
	json_object	*o = json_object_new_object();
	char		*out;

	if (f->since_ms > 0)
		json_object_object_add(o, "since_ms",
		    json_object_new_int64((int64_t)f->since_ms));
	jadd_str(o, "sender", f->sender);
	jadd_str(o, "rcpt", f->rcpt);
	jadd_str(o, "client", f->client);
	jadd_str(o, "id", f->id);
	jadd_str(o, "status", f->status);
	if (f->limit > 0)
		json_object_object_add(o, "limit",
		    json_object_new_int64(f->limit));
	out = xstrdup(json_object_to_json_string_ext(o,
	    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return out;
}

static int
get_str(json_object *o, const char *k, char *dst, size_t len, char *err,
    size_t errlen)
{
	json_object	*v;

	if (!json_object_object_get_ex(o, k, &v))
		return 0;
	if (!json_object_is_type(v, json_type_string) ||
	    (size_t)json_object_get_string_len(v) >= len) {
		snprintf(err, errlen, "%s: want a string shorter than %zu",
		    k, len);
		return -1;
	}
	strlcpy_r(dst, json_object_get_string(v), len);
	return 0;
}

int
history_filter_parse(const char *text, struct history_filter *f, char *err,
    size_t errlen)
{
	json_object	*o, *v;
	int64_t		 n;
	int		 rc = -1;

	memset(f, 0, sizeof(*f));
	while (*text == ' ')
		text++;
	if (*text == '\0')
		return 0;
	if ((o = json_tokener_parse(text)) == NULL ||
	    !json_object_is_type(o, json_type_object)) {
		snprintf(err, errlen, "the filter is not a JSON object");
		goto out;
	}
	if (get_str(o, "sender", f->sender, sizeof(f->sender), err,
	    errlen) == -1 || get_str(o, "rcpt", f->rcpt, sizeof(f->rcpt),
	    err, errlen) == -1 || get_str(o, "client", f->client,
	    sizeof(f->client), err, errlen) == -1 || get_str(o, "id", f->id,
	    sizeof(f->id), err, errlen) == -1 || get_str(o, "status",
	    f->status, sizeof(f->status), err, errlen) == -1)
		goto out;
	if (f->status[0] != '\0' && !status_known(f->status)) {
		snprintf(err, errlen, "unknown status %s", f->status);
		goto out;
	}
	if (json_object_object_get_ex(o, "since_ms", &v)) {
		if ((n = json_object_get_int64(v)) <= 0) {
			snprintf(err, errlen, "since_ms: want a positive "
			    "number");
			goto out;
		}
		f->since_ms = (uint64_t)n;
	}
	if (json_object_object_get_ex(o, "limit", &v)) {
		n = json_object_get_int64(v);
		if (n < 1 || n > HISTORY_LIMIT_MAX) {
			snprintf(err, errlen, "limit: from 1 to %d",
			    HISTORY_LIMIT_MAX);
			goto out;
		}
		f->limit = (unsigned)n;
	}
	rc = 0;
out:
	json_object_put(o);
	return rc;
}

/* The Message-ID as stored ("<...>") and the bare form, from --id. */
static void
id_forms(const char *id, char *bare, size_t blen, char *angled, size_t alen)
{
	size_t	 n;

	if (*id == '<')
		id++;
	strlcpy_r(bare, id, blen);
	n = strlen(bare);
	if (n > 0 && bare[n - 1] == '>')
		bare[n - 1] = '\0';
	snprintf(angled, alen, "<%s>", bare);
}

int
history_filter_sql(struct history_filter *f, uint64_t now_ms_wall,
    char *sql, size_t len, const char *params[HISTORY_PARAMS_MAX])
{
	const char	*t = f->rcpt[0] != '\0' ? "r" : "m";
	unsigned	 limit = f->limit ? f->limit : HISTORY_LIMIT_DEFAULT;
	size_t		 used;
	int		 np = 0, n;

	used = (size_t)snprintf(sql, len, "SELECT m.id, m.received, m.client, "
	    "m.user, m.sender, m.mailbox, m.message_id, m.subject, m.size, "
	    "m.status, m.attempts, m.graph_status, m.graph_code, "
	    "m.request_id, m.sent FROM %s WHERE 1",
	    f->rcpt[0] != '\0' ? "recipients r JOIN messages m ON m.id = r.id" :
	    "messages m");
#define ADD(...) do {							\
	if (used >= len)						\
		return -1;						\
	n = snprintf(sql + used, len - used, __VA_ARGS__);		\
	if (n < 0 || (size_t)n >= len - used)				\
		return -1;						\
	used += (size_t)n;						\
} while (0)
	if (used >= len)
		return -1;
	if (f->rcpt[0] != '\0') {
		ADD(" AND r.rcpt = ?");
		params[np++] = f->rcpt;
	}
	if (f->since_ms > 0)
		ADD(" AND %s.received >= %" PRIu64, t,
		    now_ms_wall > f->since_ms ? now_ms_wall - f->since_ms : 0);
	if (f->sender[0] != '\0') {
		ADD(" AND m.sender = ?");
		params[np++] = f->sender;
	}
	if (f->client[0] != '\0') {
		ADD(" AND m.client = ?");
		params[np++] = f->client;
	}
	if (f->status[0] != '\0') {
		ADD(" AND m.status = ?");
		params[np++] = f->status;
	}
	if (f->id[0] != '\0') {
		id_forms(f->id, f->id_bare, sizeof(f->id_bare), f->id_angled,
		    sizeof(f->id_angled));
		ADD(" AND (m.id = ? OR m.message_id = ?)");
		params[np++] = f->id_bare;
		params[np++] = f->id_angled;
	}
	ADD(" ORDER BY %s.received DESC LIMIT %u", t, limit + 1);
#undef ADD
	return np;
}

static void
jset_str(json_object *o, const char *k, const char *v)
{
	json_object_object_add(o, k, v != NULL ? json_object_new_string(v) :
	    NULL);
}

static void
jset_time(json_object *o, const char *k, int64_t ms)
{
	char	 buf[TIME_ISO_LEN];

	json_object_object_add(o, k, ms > 0 ? json_object_new_string(
	    time_iso((uint64_t)ms, buf, sizeof(buf))) : NULL);
}

json_object *
history_row_json(const struct history_row *r)
{
	json_object	*o = json_object_new_object(), *a;
	size_t		 i;

	jset_str(o, "id", r->id);
	jset_time(o, "received", r->received_ms);
	jset_str(o, "client", r->client);
	jset_str(o, "user", r->user);
	jset_str(o, "sender", r->sender);
	jset_str(o, "mailbox", r->mailbox);
	a = json_object_new_array();
	for (i = 0; i < r->nrcpts; i++)
		json_object_array_add(a, json_object_new_string(r->rcpts[i]));
	json_object_object_add(o, "recipients", a);
	jset_str(o, "message_id", r->message_id);
	jset_str(o, "subject", r->subject);
	json_object_object_add(o, "size", r->size >= 0 ?
	    json_object_new_int64(r->size) : NULL);
	jset_str(o, "status", r->status);
	json_object_object_add(o, "attempts",
	    json_object_new_int64(r->attempts));
	json_object_object_add(o, "graph_status", r->graph_status > 0 ?
	    json_object_new_int64(r->graph_status) : NULL);
	jset_str(o, "graph_code", r->graph_code);
	jset_str(o, "request_id", r->request_id);
	jset_time(o, "sent", r->sent_ms);
	return o;
}

/*
 * history_fill - fills a history.db with N made-up messages for
 * bench/history, through the schema relayd itself creates
 * (history_schema()), in one transaction.
 *
 *   bench/history_fill PATH N
 *
 * Rows spread over the last 29 days (relayd keeps 30 by default):
 * 1,000 senders, 200 clients, 5,000 recipients (1 to 3 a message), 2%
 * failed, 0.5% expired, 0.5% deleted,
 * 1% queued, the rest sent. Known needles for the queries:
 * sender0@contoso.test, rcpt0@fabrikam.test, client 10.0.0.1, the queue
 * id F000000000000001 and Message-ID <fill-1@bench.test>.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "history.h"
#include "util.h"

static uint64_t	 rng = 88172645463325252ULL;

static uint64_t
next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void
die(sqlite3 *db, const char *what)
{
	fprintf(stderr, "history_fill: %s: %s\n", what, sqlite3_errmsg(db));
	exit(1);
}

static const char *
pick_status(void)
{
	unsigned	 r = (unsigned)(next_rand() % 1000);

	if (r < 20)
		return "failed";
	if (r < 25)
		return "expired";
	if (r < 30)
		return "deleted";
	if (r < 40)
		return "queued";
	return "sent";
}

int
main(int argc, char **argv)
{
	sqlite3		*db;
	sqlite3_stmt	*m, *r;
	uint64_t	 n, i, now = wall_us() / 1000, span = 29ULL * 86400000;
	char		 id[32], sender[64], client[32], mid[64], rcpt[64];
	unsigned	 k, nr;
	const char	*st;

	if (argc != 3 || parse_u64(argv[2], 1, UINT64_C(100000000), &n) == -1) {
		fprintf(stderr, "usage: history_fill PATH N\n");
		return 2;
	}
	if (sqlite3_open(argv[1], &db) != SQLITE_OK)
		die(db, argv[1]);
	if (sqlite3_exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = "
	    "OFF; PRAGMA cache_size = -262144", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(db, history_schema(), NULL, NULL, NULL) != SQLITE_OK)
		die(db, "schema");
	if (sqlite3_prepare_v2(db, "INSERT INTO messages (id, received, "
	    "client, user, sender, mailbox, message_id, subject, size, status, "
	    "attempts, graph_status, graph_code, request_id, sent) VALUES (?1, "
	    "?2, ?3, NULL, ?4, ?4, ?5, ?6, ?7, ?8, 1, ?9, ?10, ?11, ?12)", -1,
	    &m, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db, "INSERT INTO recipients (id, rcpt, "
	    "received) VALUES (?1, ?2, ?3)", -1, &r, NULL) != SQLITE_OK)
		die(db, "prepare");
	sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
	for (i = 1; i <= n; i++) {
		/* Older rows first, as relayd writes them. */
		uint64_t t = now - span + span * i / n;

		snprintf(id, sizeof(id), "F%015" PRIX64, i);
		snprintf(sender, sizeof(sender), "sender%u@contoso.test",
		    i == 1 ? 0 : (unsigned)(next_rand() % 1000));
		snprintf(client, sizeof(client), "10.0.%u.%u",
		    (unsigned)(next_rand() % 4), i == 1 ? 1 :
		    (unsigned)(next_rand() % 50) + 1);
		snprintf(mid, sizeof(mid), "<fill-%" PRIu64 "@bench.test>", i);
		st = pick_status();
		sqlite3_bind_text(m, 1, id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(m, 2, (sqlite3_int64)t);
		sqlite3_bind_text(m, 3, client, -1, SQLITE_STATIC);
		sqlite3_bind_text(m, 4, sender, -1, SQLITE_STATIC);
		sqlite3_bind_text(m, 5, mid, -1, SQLITE_STATIC);
		sqlite3_bind_text(m, 6, "Monthly report", -1, SQLITE_STATIC);
		sqlite3_bind_int64(m, 7, 2000 + (sqlite3_int64)(next_rand() %
		    100000));
		sqlite3_bind_text(m, 8, st, -1, SQLITE_STATIC);
		if (strcmp(st, "queued") != 0 && strcmp(st, "deleted") != 0) {
			sqlite3_bind_int(m, 9, strcmp(st, "sent") == 0 ? 202 :
			    403);
			sqlite3_bind_text(m, 10, strcmp(st, "sent") == 0 ? NULL :
			    "ErrorSendAsDenied", -1, SQLITE_STATIC);
			sqlite3_bind_text(m, 11, "0f3e2d1c-aaaa-bbbb-cccc-"
			    "123456789abc", -1, SQLITE_STATIC);
			sqlite3_bind_int64(m, 12, (sqlite3_int64)t + 400);
		}
		if (sqlite3_step(m) != SQLITE_DONE)
			die(db, "insert");
		sqlite3_reset(m);
		sqlite3_clear_bindings(m);
		nr = 1 + (unsigned)(next_rand() % 3);
		for (k = 0; k < nr; k++) {
			snprintf(rcpt, sizeof(rcpt), "rcpt%u@fabrikam.test",
			    i == 1 && k == 0 ? 0 :
			    (unsigned)(next_rand() % 5000));
			sqlite3_bind_text(r, 1, id, -1, SQLITE_STATIC);
			sqlite3_bind_text(r, 2, rcpt, -1, SQLITE_STATIC);
			sqlite3_bind_int64(r, 3, (sqlite3_int64)t);
			if (sqlite3_step(r) != SQLITE_DONE)
				die(db, "insert recipient");
			sqlite3_reset(r);
		}
	}
	if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
		die(db, "commit");
	sqlite3_finalize(m);
	sqlite3_finalize(r);
	sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
	sqlite3_close(db);
	printf("%" PRIu64 " rows\n", n);
	return 0;
}

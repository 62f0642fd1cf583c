/*
 * Unit tests for history.c's pure parts: relayctl's options, the filter
 * as JSON and back, the SELECT each filter makes, a row as JSON; and
 * one database round trip (queued, outcome, query) in a temp directory.
 */
#include <sys/stat.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <json-c/json.h>

#include "history.h"
#include "util.h"

static int
args(struct history_filter *f, char *err, size_t errlen, ...)
{
	char	*argv[32];
	int	 argc = 0;
	va_list	 ap;

	va_start(ap, errlen);
	while ((argv[argc] = va_arg(ap, char *)) != NULL)
		argc++;
	va_end(ap);
	return history_filter_args(argc, argv, f, err, errlen);
}

static void
test_args(void **state)
{
	struct history_filter	 f;
	char			 err[256];

	assert_int_equal(args(&f, err, sizeof(err), "--json", "--since",
	    "90m", "--sender", "a@b.test", "--rcpt", "c@d.test", "--client",
	    "10.0.0.1", "--id", "<x@y>", "--status", "sent", "--limit", "5",
	    NULL), 0);
	assert_int_equal(f.json, 1);
	assert_int_equal(f.since_ms, 90 * 60 * 1000);
	assert_string_equal(f.sender, "a@b.test");
	assert_string_equal(f.rcpt, "c@d.test");
	assert_string_equal(f.client, "10.0.0.1");
	assert_string_equal(f.id, "<x@y>");
	assert_string_equal(f.status, "sent");
	assert_int_equal(f.limit, 5);
	/* The config's duration syntax: 7d, 12h, 30s. */
	assert_int_equal(args(&f, err, sizeof(err), "--since", "7d", NULL), 0);
	assert_int_equal(f.since_ms, 7ULL * 86400 * 1000);
	assert_int_equal(args(&f, err, sizeof(err), "--since", "soon", NULL),
	    -1);
	assert_non_null(strstr(err, "--since"));
	assert_int_equal(args(&f, err, sizeof(err), "--status", "lost", NULL),
	    -1);
	assert_non_null(strstr(err, "queued, sent, failed, expired, deleted, "
	    "refused"));
	assert_int_equal(args(&f, err, sizeof(err), "--sender", NULL), -1);
	assert_int_equal(args(&f, err, sizeof(err), "--bogus", "x", NULL), -1);
	assert_int_equal(args(&f, err, sizeof(err), "--limit", "0", NULL), -1);
}

static void
test_json_round_trip(void **state)
{
	struct history_filter	 f, g;
	char			 err[256], *text;

	assert_int_equal(args(&f, err, sizeof(err), "--since", "1h",
	    "--sender", "a@b.test", "--id", "Q1", "--status", "failed", NULL),
	    0);
	text = history_filter_json(&f);
	assert_string_equal(text, "{\"since_ms\":3600000,\"sender\":"
	    "\"a@b.test\",\"id\":\"Q1\",\"status\":\"failed\"}");
	assert_int_equal(history_filter_parse(text, &g, err, sizeof(err)), 0);
	free(text);
	assert_int_equal(g.since_ms, 3600000);
	assert_string_equal(g.sender, "a@b.test");
	assert_string_equal(g.id, "Q1");
	assert_string_equal(g.status, "failed");
	assert_string_equal(g.rcpt, "");
	assert_int_equal(history_filter_parse(" ", &g, err, sizeof(err)), 0);
	assert_int_equal(history_filter_parse("[1]", &g, err, sizeof(err)),
	    -1);
	assert_int_equal(history_filter_parse("{\"status\":\"lost\"}", &g, err,
	    sizeof(err)), -1);
	assert_int_equal(history_filter_parse("{\"limit\":0}", &g, err,
	    sizeof(err)), -1);
}

static void
test_sql(void **state)
{
	static const char cols[] = "SELECT m.id, m.received, m.client, "
	    "m.user, m.sender, m.mailbox, m.message_id, m.subject, m.size, "
	    "m.status, m.attempts, m.graph_status, m.graph_code, "
	    "m.request_id, m.sent FROM ";
	struct history_filter	 f;
	const char		*p[HISTORY_PARAMS_MAX];
	char			 sql[2048], want[2048];

	memset(&f, 0, sizeof(f));
	assert_int_equal(history_filter_sql(&f, 5000, sql, sizeof(sql), p), 0);
	snprintf(want, sizeof(want), "%smessages m WHERE 1 ORDER BY "
	    "m.received DESC LIMIT 1001", cols);
	assert_string_equal(sql, want);

	strcpy(f.sender, "a@b.test");
	strcpy(f.client, "10.0.0.1");
	strcpy(f.status, "sent");
	f.since_ms = 1000;
	f.limit = 10;
	assert_int_equal(history_filter_sql(&f, 5000, sql, sizeof(sql), p), 3);
	snprintf(want, sizeof(want), "%smessages m WHERE 1 AND m.received >= "
	    "4000 AND m.sender = ? AND m.client = ? AND m.status = ? ORDER BY "
	    "m.received DESC LIMIT 11", cols);
	assert_string_equal(sql, want);
	assert_string_equal(p[0], "a@b.test");
	assert_string_equal(p[1], "10.0.0.1");
	assert_string_equal(p[2], "sent");

	/* --rcpt: driven by the recipients' index, ordered by its time. */
	memset(&f, 0, sizeof(f));
	strcpy(f.rcpt, "c@d.test");
	f.since_ms = 1000;
	assert_int_equal(history_filter_sql(&f, 5000, sql, sizeof(sql), p), 1);
	snprintf(want, sizeof(want), "%srecipients r JOIN messages m ON m.id "
	    "= r.id WHERE 1 AND r.rcpt = ? AND r.received >= 4000 ORDER BY "
	    "r.received DESC LIMIT 1001", cols);
	assert_string_equal(sql, want);
	assert_string_equal(p[0], "c@d.test");

	/* --id: a queue id or a Message-ID, with or without <>. */
	memset(&f, 0, sizeof(f));
	strcpy(f.id, "<abc@x.test>");
	assert_int_equal(history_filter_sql(&f, 5000, sql, sizeof(sql), p), 2);
	assert_non_null(strstr(sql, " AND (m.id = ? OR m.message_id = ?)"));
	assert_string_equal(p[0], "abc@x.test");
	assert_string_equal(p[1], "<abc@x.test>");
	strcpy(f.id, "abc@x.test");
	assert_int_equal(history_filter_sql(&f, 5000, sql, sizeof(sql), p), 2);
	assert_string_equal(p[0], "abc@x.test");
	assert_string_equal(p[1], "<abc@x.test>");

	/* Too small a buffer is an error, not a cut statement. */
	assert_int_equal(history_filter_sql(&f, 5000, sql, 100, p), -1);
}

static void
test_row_json(void **state)
{
	static const char *const rcpts[] = { "c@d.test", "e@f.test" };
	struct history_row	 r;
	json_object		*o;
	const char		*got;

	memset(&r, 0, sizeof(r));
	r.id = "0123456789ABCDEF";
	r.received_ms = 1764000000000LL;
	r.client = "10.0.0.1";
	r.sender = "a@b.test";
	r.mailbox = "a@b.test";
	r.rcpts = rcpts;
	r.nrcpts = 2;
	r.message_id = "<m@x>";
	r.subject = "Grüße";
	r.size = 1234;
	r.status = "sent";
	r.attempts = 1;
	r.graph_status = 202;
	r.request_id = "rid";
	r.sent_ms = 1764000001000LL;
	o = history_row_json(&r);
	got = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
	    JSON_C_TO_STRING_NOSLASHESCAPE);
	assert_string_equal(got, "{\"id\":\"0123456789ABCDEF\","
	    "\"received\":\"2025-11-24T16:00:00Z\",\"client\":\"10.0.0.1\","
	    "\"user\":null,\"sender\":\"a@b.test\",\"mailbox\":\"a@b.test\","
	    "\"recipients\":[\"c@d.test\",\"e@f.test\"],\"message_id\":"
	    "\"<m@x>\",\"subject\":\"Grüße\",\"size\":1234,\"status\":"
	    "\"sent\",\"attempts\":1,\"graph_status\":202,\"graph_code\":null,"
	    "\"request_id\":\"rid\",\"sent\":\"2025-11-24T16:00:01Z\"}");
	json_object_put(o);
	/* Unknown size and no outcome yet: null, not 0. */
	r.size = -1;
	r.sent_ms = 0;
	r.graph_status = 0;
	o = history_row_json(&r);
	got = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	assert_non_null(strstr(got, "\"size\":null"));
	assert_non_null(strstr(got, "\"sent\":null"));
	assert_non_null(strstr(got, "\"graph_status\":null"));
	json_object_put(o);
}

/* Waits for the thread's batch, then asks as relayctl would. */
static json_object *
ask(struct history *h, const char *filter, size_t want)
{
	json_object	*o, *a;
	char		 err[256];
	int		 i;

	for (i = 0; i < 100; i++) {
		if ((o = history_command(h, filter, err, sizeof(err))) == NULL)
			fail_msg("%s: %s", filter, err);
		if (json_object_object_get_ex(o, "history", &a) &&
		    json_object_array_length(a) == want)
			return o;
		json_object_put(o);
		usleep(50 * 1000);
	}
	fail_msg("no %zu row(s) for %s", want, filter);
	return NULL;
}

static void
test_database(void **state)
{
	static const char *const rcpts[] = { "C@D.test" };
	char			 dir[] = "/tmp/test_history.XXXXXX", path[64];
	struct history		*h;
	struct history_msg	 m;
	struct stat		 sb;
	json_object		*o, *a, *x;
	char			 err[256];

	assert_non_null(mkdtemp(dir));
	assert_null(history_new(dir, 0));	/* off: no file */
	snprintf(path, sizeof(path), "%s/history.db", dir);
	assert_int_equal(stat(path, &sb), -1);
	assert_null(history_command(NULL, "", err, sizeof(err)));
	assert_non_null(strstr(err, "history is off"));

	h = history_new(dir, 86400000);
	assert_non_null(h);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	memset(&m, 0, sizeof(m));
	m.qid = "00000000000000A1";
	m.received_ms = wall_us() / 1000;
	m.client = "10.0.0.9";
	m.sender = "a@b.test";
	m.message_id = "<one@x.test>";
	m.subject = "hello";
	m.size = 42;
	m.rcpts = rcpts;
	m.nrcpts = 1;
	history_queued(h, &m);
	history_known(h, "00000000000000A1", 1, "other@b.test", 7);
	history_outcome(h, "00000000000000A1", "sent", 1, 202, NULL, "rid-1",
	    "a@b.test");
	/* An outcome with no queued row (queued before a restart). */
	history_known(h, "00000000000000B2", m.received_ms - 1000,
	    "old@b.test", 99);
	history_outcome(h, "00000000000000B2", "failed", 3, 403,
	    "ErrorSendAsDenied", "rid-2", "old@b.test");

	o = ask(h, "{\"rcpt\":\"c@d.TEST\"}", 1);
	json_object_object_get_ex(o, "history", &a);
	x = json_object_array_get_idx(a, 0);
	assert_string_equal(json_object_get_string(json_object_object_get(x,
	    "status")), "sent");
	/* known did not overwrite what the session said */
	assert_string_equal(json_object_get_string(json_object_object_get(x,
	    "sender")), "a@b.test");
	assert_int_equal(json_object_get_int(json_object_object_get(x,
	    "size")), 42);
	assert_string_equal(json_object_get_string(json_object_object_get(x,
	    "request_id")), "rid-1");
	json_object_put(o);

	o = ask(h, "{\"id\":\"one@x.test\"}", 1);
	json_object_put(o);
	o = ask(h, "{\"status\":\"failed\"}", 1);
	json_object_object_get_ex(o, "history", &a);
	x = json_object_array_get_idx(a, 0);
	assert_string_equal(json_object_get_string(json_object_object_get(x,
	    "sender")), "old@b.test");
	assert_int_equal(json_object_get_int(json_object_object_get(x,
	    "attempts")), 3);
	json_object_put(o);
	/* newest first; limit 1 says there is more */
	o = ask(h, "{\"limit\":1}", 1);
	json_object_object_get_ex(o, "history", &a);
	x = json_object_array_get_idx(a, 0);
	assert_string_equal(json_object_get_string(json_object_object_get(x,
	    "id")), "00000000000000A1");
	assert_true(json_object_get_boolean(json_object_object_get(o,
	    "more")));
	json_object_put(o);
	assert_int_equal(history_count(h), 2);
	history_free(h);

	/* Not a database: moved aside, a fresh one begun. */
	{
		FILE	*fp = fopen(path, "w");
		char	 cmd[256];

		fputs("this is not a database, it is just some text that is "
		    "long enough to be a header\n", fp);
		fclose(fp);
		snprintf(cmd, sizeof(cmd), "rm -f %s-wal %s-shm", path, path);
		assert_int_equal(system(cmd), 0);
		h = history_new(dir, 86400000);
		assert_non_null(h);
		assert_int_equal(history_count(h), 0);
		history_free(h);
		snprintf(cmd, sizeof(cmd), "ls %s | grep -q "
		    "'^history.db.broken-'", dir);
		assert_int_equal(system(cmd), 0);
		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		assert_int_equal(system(cmd), 0);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_args),
		cmocka_unit_test(test_json_round_trip),
		cmocka_unit_test(test_sql),
		cmocka_unit_test(test_row_json),
		cmocka_unit_test(test_database),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for spool.c: framing, commit, recovery. No event loop. */
#include <sys/stat.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "spool.h"

static char	 dir[256];
static int	 sync_method;	/* 0 fdatasync, 1 syncfs */

static int
setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/relayd-test-spool.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	return 0;
}

static int
teardown(void **state)
{
	char	 cmd[300];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static int
count_files(const char *sub)
{
	char		 path[300];
	DIR		*d;
	struct dirent	*de;
	int		 n = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	if ((d = opendir(path)) == NULL)
		return -1;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static char *
read_file(const char *path, size_t *len)
{
	FILE	*fp = fopen(path, "rb");
	char	*buf;

	if (fp == NULL)
		return NULL;
	buf = malloc(1 << 20);
	*len = fread(buf, 1, 1 << 20, fp);
	fclose(fp);
	return buf;
}

struct result {
	int	 called;
	int	 err;
	char	 qid[SPOOL_QID_LEN + 1];
};

static void
done_cb(void *arg, int err, const char *qid)
{
	struct result	*r = arg;

	r->called++;
	r->err = err;
	snprintf(r->qid, sizeof(r->qid), "%s", qid);
}

static const char *const rcpts[] = { "a@example.com", "b@example.com" };

static struct spool_msg *
new_msg(struct spool *sp)
{
	struct spool_env	 env;

	memset(&env, 0, sizeof(env));
	env.arrival_us = 1700000000123456ULL;
	env.client = "192.0.2.7";
	env.listener = "127.0.0.1:25";
	env.helo = "printer.example";
	env.user = "";
	env.mail_from = "scanner@example.com";
	env.mail_params = "SIZE=100";
	env.rcpts = rcpts;
	env.nrcpts = 2;
	return spool_msg_new(sp, &env);
}

static void
test_commit_and_recover(void **state)
{
	struct spool		*sp;
	struct spool_msg	*m;
	struct result		 r = { 0, 0, "" };
	const struct spool_entry *e;
	char			 err[256], path[400], *buf;
	const char		 body[] = "Subject: hi\r\n\r\nhello\r\n";
	size_t			 len = 0;

	(void)state;
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	assert_non_null(sp);
	assert_int_equal(spool_count(sp), 0);
	m = new_msg(sp);
	assert_non_null(m);
	assert_int_equal(spool_msg_write(m, body, sizeof(body) - 1), 0);
	spool_msg_commit(m, done_cb, &r);
	assert_int_equal(r.called, 1);
	assert_int_equal(r.err, 0);
	assert_int_equal(strlen(r.qid), SPOOL_QID_LEN);
	assert_int_equal(count_files("tmp"), 0);
	assert_int_equal(count_files("queue"), 1);
	assert_int_equal(spool_count(sp), 1);
	spool_free(sp);

	snprintf(path, sizeof(path), "%s/queue/%s", dir, r.qid);
	buf = read_file(path, &len);
	assert_non_null(buf);
	assert_memory_equal(buf, "RELAYD-SPOOL 1\nid: ", 19);
	assert_non_null(memmem(buf, len, "\nrcpt: b@example.com\n\n", 22));
	assert_non_null(memmem(buf, len, "\nmail-from: scanner@example.com\n",
	    32));
	assert_memory_equal(buf + len - SPOOL_TRAILER_LEN,
	    "RELAYD-END 00000000000000000022\n", SPOOL_TRAILER_LEN);
	free(buf);

	/* Found again, with its envelope. */
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	assert_non_null(sp);
	assert_int_equal(spool_count(sp), 1);
	e = spool_entry_at(sp, 0);
	assert_string_equal(e->qid, r.qid);
	assert_string_equal(e->mail_from, "scanner@example.com");
	assert_int_equal(e->nrcpts, 2);
	assert_int_equal(e->size, sizeof(body) - 1);
	assert_int_equal(e->arrival_us, 1700000000123456ULL);
	spool_free(sp);
}

static void
test_abort_and_leftovers(void **state)
{
	struct spool		*sp;
	struct spool_msg	*m;
	char			 err[256], path[400];
	int			 fd;

	(void)state;
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	assert_non_null(sp);
	m = new_msg(sp);
	spool_msg_write(m, "x", 1);
	spool_msg_abort(m);
	assert_int_equal(count_files("tmp"), 0);
	assert_int_equal(count_files("queue"), 0);

	/* A crash mid-write leaves tmp/ files: removed at the next start. */
	m = new_msg(sp);
	spool_msg_write(m, "partial", 7);
	snprintf(path, sizeof(path), "%s/tmp/0000000000000001", dir);
	fd = open(path, O_WRONLY | O_CREAT, 0600);	/* as after SIGKILL */
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "RELAYD-SPOOL 1\nid: 0", 21), 21);
	close(fd);
	spool_msg_abort(m);
	spool_free(sp);
	assert_int_equal(count_files("tmp"), 1);
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	assert_non_null(sp);
	assert_int_equal(count_files("tmp"), 0);
	assert_int_equal(spool_count(sp), 0);
	spool_free(sp);
}

static void
test_damaged_moved_aside(void **state)
{
	struct spool	*sp;
	char		 err[256], path[400];
	FILE		*fp;

	(void)state;
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	spool_free(sp);
	snprintf(path, sizeof(path), "%s/queue/0000000000000000", dir);
	fp = fopen(path, "w");
	fputs("RELAYD-SPOOL 1\nid: 0000000000000000\nmail-from: a@b\n"
	    "rcpt: c@d\n\nSubject: cut short", fp);
	fclose(fp);
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	assert_non_null(sp);
	assert_int_equal(spool_count(sp), 0);
	assert_int_equal(count_files("queue"), 0);
	assert_int_equal(count_files("corrupt"), 1);
	spool_free(sp);
}

static void
test_parse_framing(void **state)
{
	static const char head[] = "RELAYD-SPOOL 1\nid: 0123456789ABCDEF\n"
	    "arrival: 5.000001\nmail-from: \nrcpt: x@y\nfuture-key: ok\n\n";
	static const struct {
		const char	*head;
		const char	*trailer;
		uint64_t	 extra;		/* file size beyond header */
		int		 ok;
	} cases[] = {
		{ head, "RELAYD-END 00000000000000000010\n", 10 + 32, 0 },
		{ head, "RELAYD-END 00000000000000000011\n", 10 + 32, -1 },
		{ head, "RELAYD-END 0000000000000000001x\n", 10 + 32, -1 },
		{ head, "XXXXXX-END 00000000000000000010\n", 10 + 32, -1 },
		{ head, "RELAYD-END 00000000000000000000\n", 10, -1 },
		{ "RELAYD-SPOOL 2\nid: 0123456789ABCDEF\n\n",
		  "RELAYD-END 00000000000000000000\n", 32, -1 },
		{ "RELAYD-SPOOL 1\nid: 0123456789ABCDEF\nmail-from: \n",
		  "RELAYD-END 00000000000000000000\n", 32, -1 },
		{ "From nobody\n\n", "RELAYD-END 00000000000000000000\n", 32,
		  -1 },
	};
	struct spool_entry	 e;
	const char		*why;
	size_t			 i;
	int			 r;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t hl = strlen(cases[i].head);
		r = spool_parse(cases[i].head, hl, cases[i].trailer,
		    hl + cases[i].extra, &e, &why);
		if (r != cases[i].ok)
			fail_msg("case %zu: got %d, want %d (%s)", i, r,
			    cases[i].ok, r ? why : "ok");
		if (r == 0) {
			assert_string_equal(e.qid, "0123456789ABCDEF");
			assert_string_equal(e.mail_from, "");
			assert_int_equal(e.size, 10);
			assert_int_equal(e.nrcpts, 1);
			spool_entry_clear(&e);
		}
	}
}

static void
test_unique_ids(void **state)
{
	struct spool		*sp;
	struct spool_msg	*m[300];
	char			 err[256];
	int			 i, j;

	(void)state;
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	for (i = 0; i < 300; i++) {
		m[i] = new_msg(sp);
		assert_non_null(m[i]);
		for (j = 0; j < i; j++)
			assert_string_not_equal(spool_msg_qid(m[i]),
			    spool_msg_qid(m[j]));
	}
	for (i = 0; i < 300; i++)
		spool_msg_abort(m[i]);
	spool_free(sp);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_commit_and_recover, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_abort_and_leftovers, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_damaged_moved_aside, setup,
		    teardown),
		cmocka_unit_test(test_parse_framing),
		cmocka_unit_test_setup_teardown(test_unique_ids, setup,
		    teardown),
	};

	int	 failed;

	failed = cmocka_run_group_tests_name("spool", tests, NULL, NULL);
	sync_method = 1;
	failed += cmocka_run_group_tests_name("spool-syncfs", tests, NULL,
	    NULL);
	return failed;
}

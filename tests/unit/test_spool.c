/*
 * Unit tests for spool.c: commit, recovery, segments, dead letters. No
 * event loop. The record format itself: test_spool_record.c.
 */
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

#include <event2/event.h>

#include "spool.h"

static char	 dir[256];
static enum sync_method sync_method = SYNC_FDATASYNC;

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
	spool_msg_set_mailbox(m, "Shared@Example.com");
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
	assert_memory_equal(buf, "RELAYD-SPOOL 2\nstate: Q attempts=00000 "
	    "next=0000000000000 error=    ", 68);
	assert_memory_equal(buf + 15 + SPOOL_STATE_LEN,
	    "size: 00000000000000000022\nmailbox: Shared@Example.com   ", 57);
	assert_memory_equal(buf + SPOOL_RECORD_MAILBOX_OFF + SPOOL_MAILBOX_MAX,
	    "\nid: ", 5);
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
	assert_string_equal(e->mailbox, "Shared@Example.com");
	assert_int_equal(e->nrcpts, 2);
	assert_int_equal(e->size, sizeof(body) - 1);
	assert_int_equal(e->arrival_us, 1700000000123456ULL);
	spool_free(sp);
}

/* A message too big for memory is written before its mailbox is known. */
static void
test_mailbox_of_a_spilled_message(void **state)
{
	struct spool		*sp;
	struct spool_msg	*m;
	struct result		 r = { 0, 0, "" };
	const struct spool_entry *e;
	char			 err[256], *big;
	size_t			 len = 3 * 1024 * 1024;

	(void)state;
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	assert_non_null(sp);
	m = new_msg(sp);
	assert_non_null(m);
	big = malloc(len);
	assert_non_null(big);
	memset(big, 'x', len);
	assert_int_equal(spool_msg_write(m, big, len), 0);
	free(big);
	spool_msg_set_mailbox(m, "from-header@example.com");
	spool_msg_commit(m, done_cb, &r);
	assert_int_equal(r.err, 0);
	spool_free(sp);

	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	assert_non_null(sp);
	e = spool_entry_at(sp, 0);
	assert_non_null(e);
	assert_string_equal(e->mailbox, "from-header@example.com");
	assert_int_equal(spool_remove(sp, e->qid), 0);
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

/* A record as the daemon writes it, with the given state and body. */
static size_t
make_rec(char *out, const char *qid, char st, const char *body)
{
	char	 state[SPOOL_STATE_LEN];
	size_t	 blen = strlen(body);
	int	 n;

	spool_record_state(state, st, 3, 1234567890123ULL, "http_503 busy");
	n = sprintf(out, "RELAYD-SPOOL 2\n%.*ssize: %020zu\nid: %s\n"
	    "arrival: 5.000001\nmail-from: \nrcpt: x@y\nfuture-key: ok\n\n"
	    "%sRELAYD-END %020zu\n", SPOOL_STATE_LEN, state, blen, qid, body,
	    blen);
	return (size_t)n;
}

static void
write_file(const char *name, const char *data, size_t len)
{
	char	 path[400];
	FILE	*fp;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fp = fopen(path, "w");
	assert_non_null(fp);
	assert_int_equal(fwrite(data, 1, len, fp), len);
	fclose(fp);
}

static void
test_damaged_moved_aside(void **state)
{
	struct spool	*sp;
	char		 err[256], rec[4096];
	size_t		 n;

	(void)state;
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	spool_free(sp);
	/* Cut short: nothing whole in it, so it goes. */
	n = make_rec(rec, "0000000000000000", 'Q', "Subject: cut\r\n");
	write_file("queue/0000000000000000", rec, n - 20);
	/* A name that is not its first id. */
	n = make_rec(rec, "0000000000000001", 'Q', "x");
	write_file("queue/0000000000000002", rec, n);
	/* Two whole records, then garbage: the two stay queued. */
	n = make_rec(rec, "0000000000000003", 'Q', "one");
	n += make_rec(rec + n, "0000000000000004", 'Q', "two");
	memcpy(rec + n, "garbage", 7);
	write_file("queue/0000000000000003", rec, n + 7);
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	assert_non_null(sp);
	assert_int_equal(spool_count(sp), 2);
	assert_string_equal(spool_entry_at(sp, 0)->qid, "0000000000000003");
	assert_string_equal(spool_entry_at(sp, 1)->qid, "0000000000000004");
	assert_int_equal(count_files("queue"), 1);
	assert_int_equal(count_files("corrupt"), 3);
	spool_free(sp);
}

/* Records share segments: marks, the state line, removal, dead letters. */
static void
test_segments(void **state)
{
	struct spool		*sp;
	struct spool_view	 v;
	const char		*why;
	char			 err[256], rec[8192], path[400], *buf;
	size_t			 n, len = 0;

	(void)state;
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	spool_free(sp);
	n = make_rec(rec, "0000000000000010", 'Q', "first");
	n += make_rec(rec + n, "0000000000000011", 'D', "delivered");
	n += make_rec(rec + n, "0000000000000012", 'Q', "third");
	n += make_rec(rec + n, "0000000000000013", 'Q', "fourth");
	write_file("queue/0000000000000010", rec, n);
	n = make_rec(rec, "0000000000000020", 'D', "all done");
	write_file("queue/0000000000000020", rec, n);

	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	assert_non_null(sp);
	assert_int_equal(spool_count(sp), 3);
	assert_int_equal(spool_segments(sp), 1);
	assert_int_equal(count_files("queue"), 1);	/* the done one went */
	assert_int_equal(spool_map_msg(sp, "0000000000000012", &v, &why), 0);
	assert_int_equal(v.e.size, 5);
	assert_memory_equal(v.msg, "third", 5);
	spool_unmap_msg(&v);
	assert_int_equal(spool_map_msg(sp, "0000000000000011", &v, &why), -1);

	assert_int_equal(spool_set_state(sp, "0000000000000013", 'Q', 7,
	    42, "http_429\nthrottled"), 0);
	assert_int_equal(spool_remove(sp, "0000000000000010"), 0);
	assert_int_equal(spool_remove(sp, "0000000000000010"), -1);
	assert_int_equal(spool_dead(sp, "0000000000000012", "code: x\n"), 0);
	assert_int_equal(count_files("dead"), 2);
	snprintf(path, sizeof(path), "%s/dead/0000000000000012", dir);
	buf = read_file(path, &len);
	assert_non_null(buf);
	assert_memory_equal(buf, "RELAYD-SPOOL 2\nstate: X ", 24);
	assert_memory_equal(buf + len - 32 - 5, "third", 5);
	free(buf);
	assert_int_equal(spool_count(sp), 1);
	spool_free(sp);

	/* Found again: only the fourth, with its state. */
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	assert_int_equal(spool_count(sp), 1);
	assert_string_equal(spool_entry_at(sp, 0)->qid, "0000000000000013");
	assert_int_equal(spool_entry_at(sp, 0)->attempts, 7);
	assert_int_equal(spool_entry_at(sp, 0)->next_ms, 42);
	assert_string_equal(spool_entry_at(sp, 0)->error,
	    "http_429?throttled");
	assert_int_equal(spool_remove(sp, "0000000000000013"), 0);
	assert_int_equal(count_files("queue"), 0);	/* last one out */
	assert_int_equal(spool_segments(sp), 0);
	spool_free(sp);
}

/*
 * Dead letters: listed, read back with the reason, queued again as a
 * fresh message (same envelope and bytes, new id, no attempts) once which
 * is durable the dead copy goes; ids that are no queue id name no file.
 */
static void
test_dead_letters(void **state)
{
	struct spool		*sp;
	struct spool_msg	*m;
	struct spool_view	 v;
	struct result		 r;
	const char		*why;
	char			 err[256], qid[SPOOL_QID_LEN + 1];
	char			 newqid[SPOOL_QID_LEN + 1], val[64], **ids, *text;
	uint64_t		 mtime;
	size_t			 n;

	(void)state;
	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	assert_non_null(sp);
	assert_int_equal(spool_dead_ids(sp, &ids), 0);
	m = new_msg(sp);
	snprintf(qid, sizeof(qid), "%s", spool_msg_qid(m));
	assert_int_equal(spool_msg_write(m, "Subject: x\r\n\r\nbody\r\n",
	    21), 0);
	memset(&r, 0, sizeof(r));
	spool_msg_commit(m, done_cb, &r);
	assert_int_equal(r.err, 0);
	spool_set_state(sp, qid, 'Q', 3, 0, "last");
	assert_int_equal(spool_dead(sp, qid, "reason: refused\ncode: x\n"), 0);
	assert_int_equal(spool_count(sp), 0);

	assert_int_equal(spool_dead_ids(sp, &ids), 1);
	assert_string_equal(ids[0], qid);
	free(ids[0]);
	free(ids);
	assert_int_equal(spool_dead_map(sp, qid, &v, &why), 0);
	assert_int_equal(v.e.state, 'X');
	assert_int_equal(v.e.size, 21);
	assert_memory_equal(v.msg, "Subject: x\r\n\r\nbody\r\n", 21);
	spool_view_env(&v, "helo", val, sizeof(val));
	assert_string_equal(val, "printer.example");
	spool_unmap_msg(&v);
	text = spool_dead_reason(sp, qid, &mtime);
	assert_string_equal(text, "reason: refused\ncode: x\n");
	assert_true(mtime > 0);
	free(text);

	/* never a path */
	assert_int_equal(spool_dead_map(sp, "../queue/x", &v, &why), -1);
	assert_int_equal(spool_dead_map(sp, "all", &v, &why), -1);
	assert_int_equal(spool_dead_remove(sp, "../../etc/passwd"), -1);

	memset(&r, 0, sizeof(r));
	assert_int_equal(spool_dead_requeue(sp, qid, done_cb, &r, newqid,
	    &why), 0);
	assert_int_equal(r.called, 1);		/* no commit thread: at once */
	assert_int_equal(r.err, 0);
	assert_string_equal(r.qid, newqid);
	assert_string_not_equal(newqid, qid);
	assert_int_equal(count_files("dead"), 0);	/* both files went */
	assert_int_equal(spool_dead_remove(sp, qid), -1);
	assert_int_equal(spool_map_msg(sp, newqid, &v, &why), 0);
	assert_int_equal(v.e.state, 'Q');
	assert_int_equal(v.e.attempts, 0);
	assert_true(v.e.arrival_us > 1700000000123456ULL);
	assert_string_equal(v.e.mail_from, "scanner@example.com");
	assert_int_equal(v.e.nrcpts, 2);
	assert_string_equal(v.e.rcpts[1], "b@example.com");
	assert_memory_equal(v.msg, "Subject: x\r\n\r\nbody\r\n", 21);
	n = spool_view_env(&v, "client", val, sizeof(val));
	assert_string_equal(val, "192.0.2.7");
	assert_int_equal(n, 9);
	spool_view_env(&v, "mail-params", val, sizeof(val));
	assert_string_equal(val, "SIZE=100");
	spool_view_env(&v, "listener", val, sizeof(val));
	assert_string_equal(val, "127.0.0.1:25");
	spool_unmap_msg(&v);
	assert_int_equal(spool_dead_requeue(sp, qid, NULL, NULL, newqid, &why),
	    -1);
	spool_free(sp);
}

/* With the commit thread, messages committed together share a file. */
struct committed {
	int	 n;
	char	 qid[100][SPOOL_QID_LEN + 1];
};

static void
count_cb(void *arg, int err, const char *qid)
{
	struct committed	*c = arg;

	if (err == 0 && c->n < 100)
		snprintf(c->qid[c->n++], SPOOL_QID_LEN + 1, "%s", qid);
}

static void
commit_some(struct event_base *base, struct spool *sp, struct committed *c,
    int n)
{
	struct spool_msg	*m;
	int			 i, want = c->n + n;

	for (i = 0; i < n; i++) {
		m = new_msg(sp);
		spool_msg_write(m, "hello\r\n", 7);
		/* Known only now (From:), written with the commit. */
		spool_msg_set_mailbox(m, "shared@example.com");
		spool_msg_commit(m, count_cb, c);
	}
	while (c->n < want)
		event_base_loop(base, EVLOOP_ONCE);
}

static void
test_batches_share_segments(void **state)
{
	struct event_base	*base;
	struct spool		*sp;
	struct committed	 c = { 0, { "" } };
	char			 err[256];
	int			 i;

	(void)state;
	base = event_base_new();
	sp = spool_open(dir, sync_method, base, err, sizeof(err));
	assert_non_null(sp);
	commit_some(base, sp, &c, 50);
	assert_int_equal(spool_count(sp), 50);
	assert_int_equal(spool_segments(sp), 1);	/* appended to one */
	assert_int_equal(count_files("queue"), 1);
	spool_free(sp);

	/* After a restart, a new segment; the old one is closed. */
	sp = spool_open(dir, sync_method, base, err, sizeof(err));
	assert_int_equal(spool_count(sp), 50);
	commit_some(base, sp, &c, 50);
	assert_int_equal(count_files("queue"), 2);
	/* The closed segment goes with its last record... */
	for (i = 0; i < 50; i++)
		assert_int_equal(spool_remove(sp, c.qid[i]), 0);
	assert_int_equal(count_files("queue"), 1);
	/* ...and the open one is closed and removed by the commit thread. */
	for (i = 50; i < 100; i++)
		assert_int_equal(spool_remove(sp, c.qid[i]), 0);
	for (i = 0; i < 200 && count_files("queue") != 0; i++)
		usleep(10000);
	assert_int_equal(count_files("queue"), 0);
	assert_int_equal(spool_count(sp), 0);
	assert_int_equal(spool_segments(sp), 0);
	spool_free(sp);
	event_base_free(base);
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

/*
 * Two processes sharing the spool (intake writes, delivery indexes,
 * marks and removes), here two spools on one loop wired as relayd wires
 * them over a socketpair.
 */
struct pair {
	struct spool	*in, *dl;
	int		 drop;		/* intake's news is lost */
	int		 queued;	/* delivery's queued callback */
	int		 closed;	/* CLOSED news heard */
	int		 paused;
};

static void
pair_news(void *arg, const struct spool_news *n)
{
	struct pair	*p = arg;

	if (p->drop)
		return;
	switch (n->type) {
	case SPOOL_NEWS_QUEUED:
		assert_int_equal(spool_adopt(p->dl, n->qid, n->seg, n->off,
		    n->len), 0);
		/* Announced twice (a restarted side): once in the queue. */
		assert_int_equal(spool_adopt(p->dl, n->qid, n->seg, n->off,
		    n->len), 1);
		break;
	case SPOOL_NEWS_CLOSED:
		p->closed++;
		spool_segment_closed(p->dl, n->seg);
		break;
	case SPOOL_NEWS_EMPTIED:
		spool_intake_retire(p->in, n->seg);
		break;
	}
}

static void
pair_queued(void *arg, const struct spool_queued *q)
{
	struct pair	*p = arg;

	assert_string_equal(q->mail_from, "scanner@example.com");
	/* Decided by intake at commit, read back from disk. */
	assert_non_null(q->mailbox);
	assert_string_equal(q->mailbox, "shared@example.com");
	assert_int_equal(q->nrcpts, 2);
	assert_string_equal(q->rcpts[1], "b@example.com");
	assert_int_equal(q->size, 7);
	/* The envelope's arrival, not when delivery read it. */
	assert_int_equal(q->arrival_us, 1700000000123456ULL);
	p->queued++;
}

static void
pair_paused(void *arg)
{
	((struct pair *)arg)->paused++;
}

static void
wait_files(struct event_base *base, int want)
{
	int	 i;

	for (i = 0; i < 300 && count_files("queue") != want; i++)
		event_base_loopexit(base, &(struct timeval){ 0, 10000 }),
		    event_base_dispatch(base);
	assert_int_equal(count_files("queue"), want);
}

static void
test_two_processes(void **state)
{
	struct event_base	*base;
	struct committed	 c = { 0, { "" } };
	struct pair		 p;
	struct spool		*again;
	struct spool_msg	*m;
	char			 err[256];
	int			 i;

	(void)state;
	memset(&p, 0, sizeof(p));
	base = event_base_new();
	p.dl = spool_open_role(dir, sync_method, SPOOL_DELIVERY, base, err,
	    sizeof(err));
	assert_non_null(p.dl);
	p.in = spool_open_role(dir, sync_method, SPOOL_INTAKE, base, err,
	    sizeof(err));
	assert_non_null(p.in);
	/* One relayd's pair shares the spool; a second relayd's doesn't. */
	assert_null(spool_open_role(dir, sync_method, SPOOL_INTAKE, NULL, err,
	    sizeof(err)));
	assert_null(spool_open_role(dir, sync_method, SPOOL_DELIVERY, NULL,
	    err, sizeof(err)));
	assert_null(spool_open(dir, sync_method, NULL, err, sizeof(err)));
	spool_set_news_cb(p.in, pair_news, &p);
	spool_set_news_cb(p.dl, pair_news, &p);
	spool_set_queued_cb(p.dl, pair_queued, &p);

	/* Intake's records reach delivery's index, read back from disk. */
	commit_some(base, p.in, &c, 10);
	assert_int_equal(p.queued, 10);
	assert_int_equal(spool_count(p.dl), 10);
	assert_int_equal(spool_count(p.in), 0);
	assert_true(strtoul(c.qid[0] + 13, NULL, 16) < 0x800);
	/* Delivery empties intake's open segment: intake closes it, then
	 * delivery removes it. */
	for (i = 0; i < 10; i++)
		assert_int_equal(spool_remove(p.dl, c.qid[i]), 0);
	assert_int_equal(count_files("queue"), 1);
	wait_files(base, 0);
	assert_int_equal(p.closed, 1);
	assert_int_equal(spool_segments(p.dl), 0);

	/* Delivery's own records (a requeue, a bounce) have ids apart. */
	m = new_msg(p.dl);
	assert_true(strtoul(spool_msg_qid(m) + 13, NULL, 16) >= 0x800);
	spool_msg_abort(m);

	/* Pause: the open segment closes first; commits wait. */
	commit_some(base, p.in, &c, 2);
	spool_intake_pause(p.in, pair_paused, &p);
	while (p.paused == 0)
		event_base_loop(base, EVLOOP_ONCE);
	assert_int_equal(p.closed, 2);
	m = new_msg(p.in);
	spool_msg_write(m, "hello\r\n", 7);
	spool_msg_set_mailbox(m, "shared@example.com");
	spool_msg_commit(m, count_cb, &c);
	event_base_loopexit(base, &(struct timeval){ 0, 100000 });
	event_base_dispatch(base);
	assert_int_equal(c.n, 12);		/* still waiting */
	spool_intake_resume(p.in);
	while (c.n < 13)
		event_base_loop(base, EVLOOP_ONCE);
	assert_int_equal(spool_count(p.dl), 3);

	/* Intake dies with news lost: catch-up finds its records. */
	p.drop = 1;
	commit_some(base, p.in, &c, 4);
	spool_free(p.in);
	p.in = NULL;
	assert_int_equal(spool_count(p.dl), 3);
	assert_int_equal(spool_catch_up(p.dl), 4);
	assert_int_equal(spool_count(p.dl), 7);
	assert_int_equal(spool_catch_up(p.dl), 0);	/* each once */
	/* A new intake: fresh ids, and its lock free again. */
	again = spool_open_role(dir, sync_method, SPOOL_INTAKE, base, err,
	    sizeof(err));
	assert_non_null(again);
	p.in = again;
	p.drop = 0;
	/* All of the old intake's segments are closed: they go with their
	 * last record. */
	for (i = 10; i < 17; i++)
		assert_int_equal(spool_remove(p.dl, c.qid[i]), 0);
	wait_files(base, 0);
	assert_int_equal(spool_count(p.dl), 0);
	spool_free(p.in);
	spool_free(p.dl);

	/* A delivery restart: everything queued is found again. */
	p.dl = spool_open_role(dir, sync_method, SPOOL_DELIVERY, base, err,
	    sizeof(err));
	assert_int_equal(spool_count(p.dl), 0);
	spool_free(p.dl);
	event_base_free(base);
}

/*
 * relayctl import: a record taken from another spool joins delivery's
 * queue only once the source says delivered on its disk. Told at commit,
 * it could be sent before that mark, and a crash in between would have
 * the next import take and send it again.
 */
struct import_probe {
	char	 src[512];	/* the source segment's path */
	int	 told, unmarked, done, imported;
};

static void
import_queued(void *arg, const struct spool_queued *q)
{
	struct import_probe	*ip = arg;
	struct spool_entry	 e;
	const char		*why;
	char			*buf;
	size_t			 len = 0, off = 0;

	(void)q;
	ip->told++;
	buf = read_file(ip->src, &len);
	assert_non_null(buf);
	while (off < len && buf[off] != '\0' &&
	    spool_record_parse(buf + off, len - off, &e, &why) == 0) {
		if (e.state != SPOOL_DELIVERED)
			ip->unmarked++;
		off += e.reclen;
		spool_entry_clear(&e);
	}
	free(buf);
}

static void
import_result(void *arg, const struct spool_import_result *r)
{
	struct import_probe	*ip = arg;

	ip->done++;
	ip->imported = (int)r->imported;
}

static void
test_import_tells_delivery_after_the_mark(void **state)
{
	struct spool		*src, *sp;
	struct spool_msg	*m;
	struct result		 r = { 0, 0, "" };
	struct import_probe	 ip;
	DIR			*d;
	struct dirent		*de;
	char			 err[256], srcdir[64], cmd[300], q[128];
	const char		 body[] = "Subject: hi\r\n\r\nhello\r\n";
	int			 i, fd;

	(void)state;
	memset(&ip, 0, sizeof(ip));
	snprintf(srcdir, sizeof(srcdir), "/tmp/relayd-test-src.XXXXXX");
	assert_non_null(mkdtemp(srcdir));
	src = spool_open(srcdir, sync_method, NULL, err, sizeof(err));
	assert_non_null(src);
	for (i = 0; i < 3; i++) {
		m = new_msg(src);
		assert_non_null(m);
		assert_int_equal(spool_msg_write(m, body, sizeof(body) - 1), 0);
		spool_msg_commit(m, done_cb, &r);
		assert_int_equal(r.err, 0);
	}
	spool_free(src);
	/* The three share one segment: the source's only file in queue/. */
	snprintf(q, sizeof(q), "%s/queue", srcdir);
	assert_non_null(d = opendir(q));
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			snprintf(ip.src, sizeof(ip.src), "%s/%s", q, de->d_name);
	closedir(d);
	assert_true(ip.src[0] != '\0');

	sp = spool_open(dir, sync_method, NULL, err, sizeof(err));
	assert_non_null(sp);
	spool_set_queued_cb(sp, import_queued, &ip);
	assert_true((fd = open(ip.src, O_RDWR | O_CLOEXEC)) != -1);
	assert_int_equal(spool_import_segment(sp, fd, strrchr(ip.src, '/') + 1,
	    import_result, &ip), 0);
	assert_int_equal(ip.done, 1);
	assert_int_equal(ip.imported, 3);
	assert_int_equal(ip.told, 3);
	assert_int_equal(ip.unmarked, 0);	/* every time, all marked */
	assert_int_equal(spool_count(sp), 3);
	spool_free(sp);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", srcdir);
	assert_int_equal(system(cmd), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_mailbox_of_a_spilled_message,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_commit_and_recover, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_abort_and_leftovers, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_damaged_moved_aside, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_segments, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_batches_share_segments,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_dead_letters, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_unique_ids, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_two_processes, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(
		    test_import_tells_delivery_after_the_mark, setup, teardown),
	};

	int	 failed;

	failed = cmocka_run_group_tests_name("spool", tests, NULL, NULL);
	sync_method = SYNC_SYNCFS;
	failed += cmocka_run_group_tests_name("spool-syncfs", tests, NULL,
	    NULL);
	return failed;
}

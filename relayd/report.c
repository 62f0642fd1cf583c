/*
 * report.c - the mail relayd writes itself about dead letters.
 *
 * Two kinds, both queued like any message and sent through Graph, with
 * the null sender so that neither is ever reported on in turn:
 *
 *   the report to the sender ([queue] bounce = sender): From: the sender,
 *   so that Graph sends it from the sender's own mailbox (which works only
 *   when that is a mailbox of the tenant); it names the original Subject,
 *   recipients, Message-ID and date, says why and what the sender can do,
 *   with Graph's raw answer below for the administrator;
 *
 *   the operator's digest ([queue] notify = ADDRESS): new dead letters and
 *   expired messages since the last digest, at most one per
 *   notify_interval, sent from ADDRESS to itself. Which dead letters are
 *   new is decided by a scan of dead/ against the time of the last digest,
 *   kept in <spool_dir>/notify.last ("SINCE_MS SENT_MS"), so that a
 *   restart neither repeats a digest at once nor forgets letters that died
 *   while it was waiting. Digests are queued with listener "notify": a
 *   digest that dies itself is left out of the next one, so a refused
 *   operator mailbox cannot feed a loop.
 *
 * Runs on the event loop's thread (spool commits and timers).
 */
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "dead.h"
#include "log.h"
#include "report.h"
#include "spool.h"
#include "util.h"

#define DIGEST_GATHER_MS	2000	/* a burst of refusals: one digest */
#define DIGEST_STATE		"notify.last"
#define DIGEST_LISTENER		"notify"

struct digest {
	const struct config	*cfg;
	struct spool		*spool;
	struct event		*timer;
	int			 armed;
	uint64_t		 since_ms;	/* dead letters after this */
	uint64_t		 sent_ms;	/* the last digest, 0: none */
};

/* Appends text, its LF line ends as CRLF. */
static int
write_crlf_lines(struct spool_msg *m, const char *text)
{
	const char	*nl;

	while (*text != '\0') {
		nl = strchr(text, '\n');
		if (spool_msg_write(m, text, nl ? (size_t)(nl - text) :
		    strlen(text)) == -1 || spool_msg_write(m, "\r\n", 2) == -1)
			return -1;
		if (nl == NULL)
			break;
		text = nl + 1;
	}
	return 0;
}

/* Queues a plain-text message from and to addr; its queue id into qid. */
static int
queue_text(struct spool *sp, const char *listener, const char *addr,
    const char *from_name, const char *subject, const char *text, char *qid)
{
	struct spool_env	 env;
	struct spool_msg	*m;
	const char		*rcpts[1] = { addr };
	char			*head, date[64];
	time_t			 t = time(NULL);
	struct tm		 tm;
	int			 rc = 0;

	gmtime_r(&t, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	xasprintf(&head, "From: %s <%s>\r\nTo: <%s>\r\nDate: %s\r\n"
	    "Subject: %s\r\nAuto-Submitted: auto-replied\r\n"
	    "MIME-Version: 1.0\r\n"
	    "Content-Type: text/plain; charset=utf-8\r\n\r\n", from_name, addr,
	    addr, date, subject);
	memset(&env, 0, sizeof(env));
	env.arrival_us = wall_us();
	env.client = "127.0.0.1";
	env.listener = listener;
	env.helo = "relayd";
	env.user = "";
	env.mail_from = "";
	env.mail_params = "";
	env.rcpts = rcpts;
	env.nrcpts = 1;
	if ((m = spool_msg_new(sp, &env)) == NULL ||
	    spool_msg_write(m, head, strlen(head)) == -1 ||
	    write_crlf_lines(m, text) == -1) {
		spool_msg_abort(m);
		rc = -1;
	} else {
		strlcpy_r(qid, spool_msg_qid(m), SPOOL_QID_LEN + 1);
		spool_msg_commit(m, NULL, NULL);
	}
	free(head);
	return rc;
}

/* A dead letter read back for a report; report_item_clear frees it. */
struct item_buf {
	struct dead_item	 it;
	struct dead_head	 head;
	struct dead_reason	 why;
	struct spool_entry	 e;
	char			 listener[64];
	uint64_t		 mtime_ms;
	char			*reason_text;
};

static int
item_read(struct spool *sp, const char *qid, struct item_buf *b)
{
	struct spool_view	 v;
	const char		*why;
	size_t			 i;

	memset(b, 0, sizeof(*b));
	if (spool_dead_map(sp, qid, &v, &why) == -1)
		return -1;
	b->reason_text = spool_dead_reason(sp, qid, &b->mtime_ms);
	dead_reason_parse(b->reason_text ? b->reason_text : "", &b->why);
	dead_head_read(v.msg, v.msg_len, &b->head);
	spool_view_env(&v, "listener", b->listener, sizeof(b->listener));
	/* Keep the envelope; the mapping goes. */
	b->e = v.e;
	memset(&v.e, 0, sizeof(v.e));
	spool_unmap_msg(&v);
	for (i = 0; i < b->e.nrcpts; i++)
		dead_rcpt_addr(b->e.rcpts[i]);
	b->it.qid = b->e.qid;
	b->it.sender = b->e.mail_from;
	b->it.rcpts = (const char *const *)b->e.rcpts;
	b->it.nrcpts = b->e.nrcpts;
	b->it.head = &b->head;
	b->it.why = &b->why;
	return 0;
}

static void
item_clear(struct item_buf *b)
{
	spool_entry_clear(&b->e);
	dead_reason_clear(&b->why);
	free(b->reason_text);
}

void
report_bounce(struct spool *sp, const char *qid)
{
	struct item_buf	 b;
	char		*text, subject[64], rqid[SPOOL_QID_LEN + 1];

	if (item_read(sp, qid, &b) == -1) {
		log_warnx("%s bounce: cannot read the dead letter back", qid);
		return;
	}
	text = dead_bounce_text(&b.it, b.reason_text ? b.reason_text : "");
	snprintf(subject, sizeof(subject), "Undeliverable: message %s", qid);
	if (queue_text(sp, "bounce", b.e.mail_from, "Mail Delivery System",
	    subject, text, rqid) == -1)
		log_warn("%s bounce: cannot queue the report", qid);
	else
		log_info("%s bounce queued=%s to=<%s>", qid, rqid,
		    b.e.mail_from);
	free(text);
	item_clear(&b);
}

/* ---- the operator's digest ---- */

static void
digest_load(struct digest *dg)
{
	char		 path[4096], buf[64];
	unsigned long long since = 0, sent = 0;
	FILE		*fp;

	dg->since_ms = wall_us() / 1000;	/* none yet: from now on */
	dg->sent_ms = 0;
	snprintf(path, sizeof(path), "%s/%s", dg->cfg->spool_dir,
	    DIGEST_STATE);
	if ((fp = fopen(path, "re")) == NULL)
		return;
	if (fgets(buf, sizeof(buf), fp) != NULL &&
	    sscanf(buf, "%llu %llu", &since, &sent) == 2) {
		dg->since_ms = since;
		dg->sent_ms = sent;
	}
	fclose(fp);
}

/* Written aside, synced and renamed: a crash keeps the old or the new. */
static void
digest_save(struct digest *dg)
{
	char	 path[4096], tmp[4104], buf[64];
	int	 fd, n, ok = 0;

	snprintf(path, sizeof(path), "%s/%s", dg->cfg->spool_dir,
	    DIGEST_STATE);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	n = snprintf(buf, sizeof(buf), "%" PRIu64 " %" PRIu64 "\n",
	    dg->since_ms, dg->sent_ms);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	    0600)) != -1) {
		ok = write(fd, buf, (size_t)n) == n && fsync(fd) == 0;
		close(fd);
	}
	if (!ok || rename(tmp, path) == -1) {
		log_warn("notify: cannot write %s (a restart may send the "
		    "digest again)", path);
		unlink(tmp);
		return;
	}
	if ((fd = open(dg->cfg->spool_dir, O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) != -1) {
		fsync(fd);
		close(fd);
	}
}

static void
digest_arm(struct digest *dg, uint64_t gather)
{
	uint64_t	 now = wall_us() / 1000, at = now + gather;
	struct timeval	 tv;

	if (dg->armed)
		return;
	if (dg->sent_ms != 0 && dg->sent_ms + dg->cfg->notify_interval_ms >
	    at)
		at = dg->sent_ms + dg->cfg->notify_interval_ms;
	tv = ms_tv(at - now);
	evtimer_add(dg->timer, &tv);
	dg->armed = 1;
}

/* The dead letters since the last digest, but digests themselves. */
static size_t
digest_items(struct digest *dg, struct item_buf **out)
{
	struct item_buf	*items = NULL, b;
	char		**ids;
	size_t		 i, n, k = 0;

	n = spool_dead_ids(dg->spool, &ids);
	for (i = 0; i < n; i++) {
		if (item_read(dg->spool, ids[i], &b) == 0) {
			if (b.mtime_ms > dg->since_ms &&
			    strcmp(b.listener, DIGEST_LISTENER) != 0) {
				items = xrealloc(items, (k + 1) *
				    sizeof(*items));
				items[k++] = b;
			} else
				item_clear(&b);
		}
		free(ids[i]);
	}
	free(ids);
	*out = items;
	return k;
}

static void
digest_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct digest		*dg = arg;
	struct item_buf		*items;
	struct dead_item	*list;
	char			*text, subject[128], qid[SPOOL_QID_LEN + 1];
	size_t			 i, n;

	(void)fd;
	(void)ev;
	dg->armed = 0;
	if ((n = digest_items(dg, &items)) == 0)
		return;
	list = xcalloc(n, sizeof(*list));
	for (i = 0; i < n; i++) {
		list[i] = items[i].it;
		list[i].qid = items[i].e.qid;
		list[i].head = &items[i].head;
		list[i].why = &items[i].why;
	}
	text = dead_digest_text(list, n);
	snprintf(subject, sizeof(subject), "relayd: %zu new dead letter(s)",
	    n);
	if (queue_text(dg->spool, DIGEST_LISTENER, dg->cfg->notify, "relayd",
	    subject, text, qid) == -1)
		log_warn("notify: cannot queue the digest");
	else {
		log_info("notify: digest queued=%s to=<%s> dead=%zu", qid,
		    dg->cfg->notify, n);
		dg->since_ms = dg->sent_ms = wall_us() / 1000;
		digest_save(dg);
	}
	free(text);
	free(list);
	for (i = 0; i < n; i++)
		item_clear(&items[i]);
	free(items);
}

struct digest *
digest_new(struct event_base *base, const struct config *cfg,
    struct spool *sp)
{
	struct digest	*dg;

	if (cfg->notify == NULL)
		return NULL;
	dg = xcalloc(1, sizeof(*dg));
	dg->cfg = cfg;
	dg->spool = sp;
	dg->timer = evtimer_new(base, digest_cb, dg);
	digest_load(dg);
	/* Letters that died while relayd was down or waiting. */
	digest_arm(dg, DIGEST_GATHER_MS);
	return dg;
}

void
digest_dead(struct digest *dg)
{
	if (dg != NULL)
		digest_arm(dg, DIGEST_GATHER_MS);
}

void
digest_free(struct digest *dg)
{
	if (dg == NULL)
		return;
	event_free(dg->timer);
	free(dg);
}

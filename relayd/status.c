/*
 * status.c - the status socket relayctl talks to, and /metrics.
 *
 * A UNIX stream socket ([status] socket, mode 0660). Each peer is checked
 * with SO_PEERCRED when it connects: root, relayd's own user, and the
 * users and groups of [status] users / groups may talk; anyone else gets
 * one error line and is closed. The protocol is a line per command and a
 * line of JSON per answer:
 *
 *   status | queue [FILTER] | show ID | metrics | unlock ADDRESS |
 *   retry|delete|hold|release ID|all|FILTER | pause | resume | dead |
 *   export ID | history {FILTER-JSON} | import queue NAME |
 *   import dead QID 1|2
 *
 * where FILTER is --mailbox ADDRESS or --sender ADDRESS. pause and resume
 * are logged with the peer's uid.
 *
 * Errors are {"error": "..."}. Dead letters share the queue's ids: show,
 * retry, delete and export look in the queue, then in dead/. A retry of a
 * dead letter queues it afresh and answers once that copy is durable.
 * export answers with where the message lies in a spool file (offset and
 * length, relayd's own Received: field left out) and passes that file,
 * open for reading, with the answer (SCM_RIGHTS), so that relayctl copies
 * 40 MB without either side holding it in memory. import goes the other
 * way: relayctl passes a dead node's spool files to us (struct import).
 * Everything runs on the event loop, which owns the queue's state, so
 * answers are consistent snapshots. [status] metrics_listen serves the
 * same metrics as Prometheus text over HTTP.
 */
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <stdarg.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <json-c/json.h>

#include "auth.h"
#include "autoconf.h"
#include "cluster.h"
#include "config.h"
#include "config_check.h"
#include "dead.h"
#include "history.h"
#include "link_deliver.h"
#include "log.h"
#include "smtp.h"
#include "spool.h"
#include "status.h"
#include "token.h"
#include "util.h"
#include "worker.h"

#define STATUS_LINE_MAX		1024	/* bytes of one command */
#define STATUS_IDS_MAX		32	/* users or groups named */
#define STATUS_CLIENTS_MAX	64	/* connections at once */
#define STATUS_IDLE_SEC		60	/* a silent client is closed */

struct pending;

struct client {
	struct status		*st;
	uid_t			 uid;		/* the peer's */
	struct bufferevent	*bev;
	struct pending		*wait;	/* a dead letter's retry */
	struct import		*imp;	/* relayctl import: a file to take */
	TAILQ_ENTRY(client)	 link;
};

/*
 * relayctl import (issue 20): relayctl, which opened a dead node's file,
 * says "import queue NAME" or "import dead QID NFDS", gets {"ok":"send"}
 * and sends one byte per file with the file attached (SCM_RIGHTS). The
 * bufferevent would drop what is attached, so reading is switched to
 * recvmsg on the socket until the files are here (ev); the answer comes
 * once the records are durable here and marked there (spool.c).
 */
struct import {
	struct client		*c;	/* NULL once it went away */
	struct event		*ev;
	int			 dead;
	char			 name[SPOOL_QID_LEN + 1];
	int			 fds[2];
	int			 nfds, want;
};

/* A retry of a dead letter, answered once the new copy is durable. */
struct pending {
	struct client		*c;	/* NULL once it went away */
	char			 id[SPOOL_QID_LEN + 1];
};
TAILQ_HEAD(client_list, client);

struct status {
	struct status_env	 env;
	struct client_list	 clients;
	struct evconnlistener	*evl;
	char			*path;
	struct evhttp		*http;
	uid_t			 uids[STATUS_IDS_MAX];
	size_t			 nuids;
	gid_t			 gids[STATUS_IDS_MAX];
	size_t			 ngids;
	size_t			 nclients;
};

/* ---- who may talk ---- */

static int
parse_ids(struct status *st, const char *list, int groups, char *err,
    size_t errlen)
{
	char		*copy, *tok, *save = NULL;
	struct passwd	*pw;
	struct group	*gr;
	int		 rc = 0;

	if (list == NULL)
		return 0;
	copy = xstrdup(list);
	for (tok = strtok_r(copy, ", \t", &save); tok != NULL && rc == 0;
	    tok = strtok_r(NULL, ", \t", &save)) {
		if (groups && (gr = getgrnam(tok)) != NULL &&
		    st->ngids < STATUS_IDS_MAX)
			st->gids[st->ngids++] = gr->gr_gid;
		else if (!groups && (pw = getpwnam(tok)) != NULL &&
		    st->nuids < STATUS_IDS_MAX)
			st->uids[st->nuids++] = pw->pw_uid;
		else {
			snprintf(err, errlen, "[status] %s: no %s \"%s\" on "
			    "this system (or more than %d named)",
			    groups ? "groups" : "users", groups ? "group" :
			    "user", tok, STATUS_IDS_MAX);
			rc = -1;
		}
	}
	free(copy);
	return rc;
}

int
status_ids_check(const char *list, int groups, char *err, size_t errlen)
{
	struct status	*st = xcalloc(1, sizeof(*st));
	int		 rc;

	rc = parse_ids(st, list, groups, err, errlen);
	free(st);
	return rc;
}

static int
peer_allowed(const struct status *st, uid_t uid, gid_t gid)
{
	struct passwd	*pw;
	gid_t		 groups[256];
	int		 n = (int)NELEM(groups), i;
	size_t		 k;

	if (uid == 0 || uid == geteuid())
		return 1;
	for (k = 0; k < st->nuids; k++)
		if (st->uids[k] == uid)
			return 1;
	for (k = 0; k < st->ngids; k++)
		if (st->gids[k] == gid)
			return 1;
	if (st->ngids == 0 || (pw = getpwuid(uid)) == NULL ||
	    getgrouplist(pw->pw_name, pw->pw_gid, groups, &n) == -1)
		return 0;
	for (i = 0; i < n; i++)
		for (k = 0; k < st->ngids; k++)
			if (st->gids[k] == groups[i])
				return 1;
	return 0;
}

/* ---- answers ---- */

static json_object *
jerror(const char *fmt, ...) PRINTFLIKE(1, 2);

static json_object *
jerror(const char *fmt, ...)
{
	json_object	*o = json_object_new_object();
	va_list		 ap;
	char		 buf[512];

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	json_object_object_add(o, "error", json_object_new_string(buf));
	return o;
}

static void
add_str(json_object *o, const char *k, const char *v)
{
	json_object_object_add(o, k, v != NULL ? json_object_new_string(v) :
	    NULL);
}

static void
add_int(json_object *o, const char *k, int64_t v)
{
	json_object_object_add(o, k, json_object_new_int64(v));
}

/* ISO 8601 UTC for a wall-clock millisecond time; NULL for 0. */
static json_object *
jtime(uint64_t ms)
{
	char		 buf[TIME_ISO_LEN];

	if (ms == 0)
		return NULL;
	return json_object_new_string(time_iso(ms, buf, sizeof(buf)));
}

static json_object *
msg_json(const struct worker_msg *m)
{
	json_object	*o = json_object_new_object(), *a;
	uint64_t	 now = wall_us() / 1000;
	size_t		 i;

	add_str(o, "id", m->qid);
	add_str(o, "state", m->state);
	add_int(o, "age", (int64_t)(now > m->arrival_ms ? (now -
	    m->arrival_ms) / 1000 : 0));
	json_object_object_add(o, "arrived", jtime(m->arrival_ms));
	add_int(o, "size", (int64_t)m->size);
	add_str(o, "sender", m->sender);
	add_str(o, "mailbox", m->mailbox);
	add_int(o, "rcpts", (int64_t)m->nrcpts);
	a = json_object_new_array();
	for (i = 0; i < WORKER_RCPTS_SHOWN && m->rcpts[i] != NULL; i++)
		json_object_array_add(a, json_object_new_string(m->rcpts[i]));
	json_object_object_add(o, "recipients", a);
	add_int(o, "attempts", m->attempts);
	json_object_object_add(o, "next_attempt", jtime(m->next_ms));
	add_str(o, "last_error", m->error);
	add_str(o, "hold", m->hold);
	json_object_object_add(o, "hold_until", jtime(m->hold_until));
	return o;
}

struct queue_arg {
	json_object			*a;
	const struct worker_filter	*f;
};

static void
queue_add(void *arg, const struct worker_msg *m)
{
	struct queue_arg	*qa = arg;

	if (worker_filter_match(qa->f, m))
		json_object_array_add(qa->a, msg_json(m));
}

static void
throttled_add(void *arg, const char *mailbox, uint64_t until)
{
	json_object	*o = json_object_new_object();

	add_str(o, "mailbox", mailbox);
	json_object_object_add(o, "resume", jtime(until));
	json_object_array_add(arg, o);
}

#define CRED_WARN_S	(30 * 86400)

/*
 * The credentials whose expiry relayd knows, and a warning for each that
 * expires within 30 days or has expired.
 */
static void
add_credentials(const struct config *cfg, json_object *o)
{
	struct credential	 cr[CONFIG_CREDENTIALS];
	json_object		*a = json_object_new_array(), *w, *x;
	long long		 left;
	size_t			 i, n;
	char			 buf[256];

	w = json_object_new_array();
	n = config_credentials(cfg, cr);
	for (i = 0; i < n; i++) {
		left = (long long)cr[i].expires - (long long)time(NULL);
		x = json_object_new_object();
		add_str(x, "credential", cr[i].name);
		json_object_object_add(x, "expires",
		    jtime((uint64_t)cr[i].expires * 1000));
		add_int(x, "seconds", left);
		json_object_array_add(a, x);
		if (left >= CRED_WARN_S)
			continue;
		if (left <= 0)
			snprintf(buf, sizeof(buf), "%s has expired", cr[i].name);
		else
			snprintf(buf, sizeof(buf), "%s expires in %lld days",
			    cr[i].name, left / 86400);
		json_object_array_add(w, json_object_new_string(buf));
	}
	json_object_object_add(o, "credentials", a);
	json_object_object_add(o, "warnings", w);
}

/* What the SMTP process last said of itself (link_deliver.c). */
static const struct smtp_figures *
smtp_fig(const struct status *st)
{
	static const struct smtp_figures none;

	return st->env.handoff != NULL ? handoff_figures(st->env.handoff) :
	    &none;
}

/* Stress mode (stress.c): now, since when, and how often since start. */
static json_object *
stress_json(const struct smtp_figures *f)
{
	json_object	*o = json_object_new_object();

	json_object_object_add(o, "active",
	    json_object_new_boolean(f->stress_active != 0));
	json_object_object_add(o, "since", f->stress_active ?
	    jtime(f->stress_since) : NULL);
	add_int(o, "entered", (int64_t)f->stress_entered);
	add_int(o, "evicted", (int64_t)f->stress_evicted);
	return o;
}

static json_object *
lockouts_json(const struct smtp_figures *f)
{
	json_object	*a = json_object_new_array(), *o;
	uint32_t	 i;

	for (i = 0; i < f->nlocked && i < SMTP_FIG_LOCKED; i++) {
		o = json_object_new_object();
		add_str(o, "address", f->locked[i].addr);
		json_object_object_add(o, "until", jtime(f->locked[i].until));
		add_int(o, "failures", f->locked[i].failures);
		json_object_array_add(a, o);
	}
	return a;
}

static json_object *
cmd_unlock(struct status *st, const char *addr)
{
	json_object	*o;

	if (!smtp_fig(st)->auth_on)
		return jerror("AUTH is off (no [auth] users_file): nothing is "
		    "locked out");
	if (handoff_unlock(st->env.handoff, addr) == -1)
		return jerror("%s is not locked out", addr);
	log_info("auth: address %s unlocked by relayctl", addr);
	o = json_object_new_object();
	add_str(o, "ok", "unlock");
	add_str(o, "address", addr);
	return o;
}

/* Graph as a whole: held after failures in a row, or not. */
static json_object *
graph_json(const struct worker_counts *c)
{
	json_object	*o = json_object_new_object();

	add_str(o, "state", c->graph_held_ms > 0 ? "held" :
	    c->graph_fails > 0 ? "failing" : "ok");
	json_object_object_add(o, "held_until", c->graph_held_ms > 0 ?
	    jtime(wall_us() / 1000 + c->graph_held_ms) : NULL);
	add_int(o, "failures", c->graph_fails);
	return o;
}

/*
 * The token: valid, or failing since when and why (the last error carries
 * the admin's next step), or none yet.
 */
static json_object *
token_json(struct token *t)
{
	json_object		*o = json_object_new_object();
	struct token_failure	 f;
	long long		 exp = token_expires_in(t);

	token_failure(t, &f);
	add_str(o, "state", f.count > 0 ? "failing" : exp >= 0 ? "valid" :
	    "none yet");
	json_object_object_add(o, "expires", exp >= 0 ?
	    jtime(wall_us() / 1000 + (uint64_t)exp) : NULL);
	json_object_object_add(o, "failing_since", jtime(f.since_ms));
	add_int(o, "failures", f.count);
	add_str(o, "last_error", f.count > 0 ? f.error : NULL);
	json_object_object_add(o, "next_attempt", jtime(f.next_ms));
	return o;
}

/* delivery: on, off, paused (by whom, since when), held. */
static void
add_delivery(const struct status_env *e, const struct worker_counts *c,
    json_object *o)
{
	json_object	*x = NULL;
	const char	*who;
	char		*text = NULL, since[TIME_ISO_LEN];
	uint64_t	 at;

	if (e->pool != NULL && worker_paused(e->pool, &who, &at)) {
		time_iso(at, since, sizeof(since));
		xasprintf(&text, "paused by %s since %s: relayctl resume "
		    "starts it again", who, since);
		x = json_object_new_object();
		add_str(x, "by", who);
		json_object_object_add(x, "since", jtime(at));
	}
	add_str(o, "delivery", text != NULL ? text : e->pool == NULL ?
	    "off ([graph] not configured)" : c->graph_held_ms > 0 ?
	    "held: Graph unavailable" : "on");
	json_object_object_add(o, "paused", x);
	free(text);
}

static void
cluster_mbox_add(void *arg, const struct cluster_mbox *m)
{
	json_object	*x = json_object_new_object(), *slots;
	size_t		 i;

	add_str(x, "mailbox", m->mailbox);
	slots = json_object_new_object();
	for (i = 0; i < m->nholders; i++)
		add_int(slots, m->node[i], m->slots[i]);
	json_object_object_add(x, "slots", slots);
	json_object_array_add(arg, x);
}

/*
 * [cluster]: Redis reachable or not, this node, the nodes seen in the
 * last 10 s, and per busy mailbox the slots each node holds; null alone.
 */
static json_object *
cluster_json(struct cluster *cl)
{
	struct cluster_status	 cs;
	json_object		*o, *a;
	size_t			 i;

	if (cl == NULL)
		return NULL;
	cluster_status(cl, &cs);
	o = json_object_new_object();
	add_str(o, "redis", cs.redis);
	json_object_object_add(o, "reachable",
	    json_object_new_boolean(cs.up));
	json_object_object_add(o, "down_since", cs.up ? NULL :
	    jtime(cs.down_since));
	add_str(o, "error", cs.why);
	add_str(o, "node", cs.node);
	json_object_object_add(o, "node_name_clash",
	    json_object_new_boolean(cs.node_clash));
	a = json_object_new_array();
	for (i = 0; i < cs.nnodes; i++)
		json_object_array_add(a, json_object_new_string(cs.nodes[i]));
	json_object_object_add(o, "nodes", a);
	add_int(o, "slots_held", (int64_t)cs.leases);
	a = json_object_new_array();
	cluster_foreach_busy(cl, cluster_mbox_add, a);
	json_object_object_add(o, "mailboxes", a);
	return o;
}

static json_object *
cmd_status(struct status *st)
{
	const struct status_env	*e = &st->env;
	const struct worker_error *errs[WORKER_ERRORS];
	struct worker_counts	 c;
	json_object		*o = json_object_new_object(), *a, *q, *x;
	size_t			 i, n;
	long long		 exp;

	add_str(o, "version", PACKAGE_VERSION);
	/* relayd's: the parent, which signals go to (this is its child). */
	add_int(o, "pid", (int64_t)getppid());
	add_int(o, "uptime", (int64_t)((wall_us() / 1000 - e->started_ms) /
	    1000));
	a = json_object_new_array();
	for (i = 0; i < smtp_fig(st)->nlisteners; i++)
		json_object_array_add(a, json_object_new_string(
		    smtp_fig(st)->listeners[i]));
	json_object_object_add(o, "listeners", a);
	add_int(o, "connections", (int64_t)smtp_fig(st)->nsessions);
	add_int(o, "max_connections", (int64_t)smtp_fig(st)->max_connections);
	json_object_object_add(o, "stress", stress_json(smtp_fig(st)));
	q = json_object_new_object();
	memset(&c, 0, sizeof(c));
	if (e->pool != NULL)
		worker_counts(e->pool, &c);
	else
		c.queued = spool_count(e->spool);
	add_int(q, "queued", (int64_t)c.queued);
	add_int(q, "in_flight", (int64_t)c.inflight);
	add_int(q, "deferred", (int64_t)c.deferred);
	add_int(q, "throttled", (int64_t)c.throttled);
	add_int(q, "held", (int64_t)c.held);
	add_int(q, "graph_held", (int64_t)c.graph_held);
	add_int(q, "dead", (int64_t)spool_dead_count(e->spool));
	json_object_object_add(o, "queue", q);
	q = json_object_new_object();
	add_int(q, "sent", (int64_t)c.sent);
	add_int(q, "deferred", (int64_t)c.deferred_total);
	add_int(q, "failed", (int64_t)c.failed);
	json_object_object_add(o, "totals", q);
	add_delivery(e, &c, o);
	if (c.graph_held_ms > 0)
		json_object_object_add(o, "graph_resume", jtime(wall_us() /
		    1000 + c.graph_held_ms));
	exp = e->token != NULL ? token_expires_in(e->token) : -1;
	json_object_object_add(o, "token_expires", exp >= 0 ?
	    jtime(wall_us() / 1000 + (uint64_t)exp) : NULL);
	if (e->pool != NULL)
		json_object_object_add(o, "graph", graph_json(&c));
	if (e->token != NULL)
		json_object_object_add(o, "token", token_json(e->token));
	a = json_object_new_array();
	if (e->pool != NULL)
		worker_throttled(e->pool, throttled_add, a);
	json_object_object_add(o, "throttled_mailboxes", a);
	a = json_object_new_array();
	if (e->pool != NULL)
		worker_rcpts_spent(e->pool, throttled_add, a);
	json_object_object_add(o, "recipient_budget_spent", a);
	json_object_object_add(o, "lockouts", lockouts_json(smtp_fig(st)));
	a = json_object_new_array();
	n = e->pool != NULL ? worker_errors(e->pool, errs) : 0;
	for (i = 0; i < n; i++) {
		x = json_object_new_object();
		json_object_object_add(x, "time", jtime(errs[i]->time_ms));
		add_str(x, "id", errs[i]->qid);
		add_str(x, "mailbox", errs[i]->mailbox);
		add_int(x, "status", errs[i]->status);
		add_str(x, "code", errs[i]->code);
		add_str(x, "message", errs[i]->message);
		json_object_object_add(x, "permanent",
		    json_object_new_boolean(errs[i]->permanent));
		json_object_array_add(a, x);
	}
	json_object_object_add(o, "recent_errors", a);
	add_credentials(e->cfg, o);
	json_object_object_add(o, "cluster", cluster_json(e->cluster));
	return o;
}

/* A header field of the message, unfolded, for `show`. */
static json_object *
header_field(const char *msg, size_t len, const char *name)
{
	size_t		 n = strlen(name), i = 0, j;
	char		 buf[512];
	size_t		 k = 0;

	while (i < len && msg[i] != '\r' && msg[i] != '\n') {
		if (len - i > n && strncasecmp(msg + i, name, n) == 0 &&
		    msg[i + n] == ':') {
			for (j = i + n + 1; j < len && k < sizeof(buf) - 1; j++) {
				if (msg[j] == '\r' || msg[j] == '\n') {
					if (j + 2 < len && msg[j] == '\r' &&
					    (msg[j + 2] == ' ' ||
					    msg[j + 2] == '\t')) {
						j++;
						continue;
					}
					break;
				}
				buf[k++] = msg[j];
			}
			buf[k] = '\0';
			return json_object_new_string(str_trim(buf));
		}
		while (i < len && msg[i] != '\n')
			i++;
		i++;
	}
	return NULL;
}

/* ---- dead letters ---- */

/*
 * A dead letter as `dead` lists it; with full (`show`) also its size,
 * attempts, Graph's answer and header fields. NULL if there is none.
 */
static json_object *
dead_json(struct status *st, const char *id, int full)
{
	struct spool_view	 v;
	struct dead_reason	 r;
	struct dead_head	 h;
	json_object		*o, *a;
	const char		*why;
	char			*text, *words, *rcpt;
	uint64_t		 mtime;
	size_t			 i;

	if (spool_dead_map(st->env.spool, id, &v, &why) == -1)
		return NULL;
	text = spool_dead_reason(st->env.spool, id, &mtime);
	dead_reason_parse(text != NULL ? text : "", &r);
	memset(&h, 0, sizeof(h));
	dead_head_read(v.msg, v.msg_len, &h);
	o = json_object_new_object();
	add_str(o, "id", v.e.qid);
	add_str(o, "time", r.time);
	add_str(o, "sender", v.e.mail_from);
	add_str(o, "mailbox", r.mailbox);
	a = json_object_new_array();
	for (i = 0; i < v.e.nrcpts; i++) {
		rcpt = xstrdup(v.e.rcpts[i]);
		dead_rcpt_addr(rcpt);
		json_object_array_add(a, json_object_new_string(rcpt));
		free(rcpt);
	}
	json_object_object_add(o, "recipients", a);
	add_str(o, "subject", h.subject);
	add_str(o, "message_id", h.message_id);
	words = dead_reason_words(&r);
	add_str(o, "reason", words);
	free(words);
	if (full) {
		add_str(o, "state", "dead");
		json_object_object_add(o, "arrived", jtime(v.e.arrival_us /
		    1000));
		add_int(o, "size", (int64_t)v.e.size);
		add_int(o, "attempts", r.attempts);
		add_int(o, "graph_status", r.status);
		add_str(o, "code", r.code);
		add_str(o, "message", r.message);
		add_str(o, "request_id", r.request_id);
		add_str(o, "graph_answer", r.body);
		add_str(o, "date", h.date);
	}
	dead_reason_clear(&r);
	free(text);
	spool_unmap_msg(&v);
	return o;
}

static json_object *
cmd_dead(struct status *st)
{
	json_object	*o = json_object_new_object(), *a, *x;
	char		**ids;
	size_t		 i, n;

	a = json_object_new_array();
	n = spool_dead_ids(st->env.spool, &ids);
	for (i = 0; i < n; i++) {
		if ((x = dead_json(st, ids[i], 0)) != NULL)
			json_object_array_add(a, x);
		free(ids[i]);
	}
	free(ids);
	json_object_object_add(o, "dead", a);
	return o;
}

static json_object *
retried_json(const char *id, const char *newid)
{
	json_object	*o = json_object_new_object();

	add_str(o, "ok", "retry");
	add_str(o, "id", id);
	add_int(o, "retried", 1);
	add_str(o, "requeued", newid);
	return o;
}

static void
write_answer(struct client *c, json_object *o)
{
	const char	*text = json_object_to_json_string_ext(o,
	    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);

	bufferevent_write(c->bev, text, strlen(text));
	bufferevent_write(c->bev, "\n", 1);
	json_object_put(o);
}

static void
requeued(void *arg, int err, const char *qid)
{
	struct pending	*pd = arg;

	if (pd->c != NULL) {
		pd->c->wait = NULL;
		write_answer(pd->c, err == 0 ? retried_json(pd->id, qid) :
		    jerror("retry %s: cannot queue it again: %s", pd->id,
		    strerror(err)));
	}
	free(pd);
}

/* The fresh copy of a dead letter starts a row of its own in history. */
static void
history_requeued(struct status *st, const char *id, const char *newid)
{
	struct history_msg	 hm;
	struct spool_view	 v;
	struct dead_head	 h;
	const char		*why;
	char			**rcpts;
	size_t			 i;

	if (st->env.history == NULL ||
	    spool_dead_map(st->env.spool, id, &v, &why) == -1)
		return;
	memset(&h, 0, sizeof(h));
	dead_head_read(v.msg, v.msg_len, &h);
	rcpts = xcalloc(v.e.nrcpts + 1, sizeof(*rcpts));
	for (i = 0; i < v.e.nrcpts; i++) {
		rcpts[i] = xstrdup(v.e.rcpts[i]);
		dead_rcpt_addr(rcpts[i]);
	}
	memset(&hm, 0, sizeof(hm));
	hm.qid = newid;
	hm.received_ms = wall_us() / 1000;
	hm.client = "relayd";
	hm.sender = v.e.mail_from;
	hm.message_id = h.message_id[0] != '\0' ? h.message_id : NULL;
	hm.subject = st->env.cfg->log_subjects && h.subject[0] != '\0' ?
	    h.subject : NULL;
	hm.size = v.e.size;
	hm.rcpts = (const char *const *)rcpts;
	hm.nrcpts = v.e.nrcpts;
	history_queued(st->env.history, &hm);
	for (i = 0; i < v.e.nrcpts; i++)
		free(rcpts[i]);
	free(rcpts);
	spool_unmap_msg(&v);
}

/*
 * The dead letter goes back to the queue as a fresh message. With a
 * client the answer waits for the commit (NULL now); without (tests) it
 * is given at once.
 */
static json_object *
dead_retry(struct status *st, const char *id, struct client *c)
{
	struct pending	*pd = NULL;
	const char	*why;
	char		 newid[SPOOL_QID_LEN + 1];

	if (c != NULL && c->wait != NULL)
		return jerror("retry %s: one retry at a time", id);
	if (c != NULL) {
		pd = xcalloc(1, sizeof(*pd));
		pd->c = c;
		strlcpy_r(pd->id, id, sizeof(pd->id));
	}
	if (spool_dead_requeue(st->env.spool, id, pd != NULL ? requeued :
	    NULL, pd, newid, &why) == -1) {
		free(pd);
		return jerror("retry %s: %s", id, why);
	}
	history_requeued(st, id, newid);
	if (c == NULL)
		return retried_json(id, newid);
	c->wait = pd;
	return NULL;
}

/*
 * Where the message lies: offset and length in the file *fdp (a dup the
 * caller closes; fdp NULL: none), relayd's own Received: left out.
 */
static json_object *
cmd_export(struct status *st, const char *id, int *fdp)
{
	struct spool_view	 v;
	json_object		*o;
	const char		*why;
	size_t			 skip;

	if (spool_map_msg(st->env.spool, id, &v, &why) == -1 &&
	    spool_dead_map(st->env.spool, id, &v, &why) == -1)
		return jerror("no such message in the queue or in dead/: %s",
		    id);
	skip = dead_received_len(v.msg, v.msg_len);
	if (fdp != NULL && (*fdp = dup(v.fd)) == -1) {
		spool_unmap_msg(&v);
		return jerror("export %s: %s", id, strerror(errno));
	}
	o = json_object_new_object();
	add_str(o, "ok", "export");
	add_str(o, "id", id);
	add_int(o, "offset", (int64_t)(v.msg_off + skip));
	add_int(o, "length", (int64_t)(v.e.size - skip));
	add_int(o, "received_skipped", (int64_t)skip);
	spool_unmap_msg(&v);
	return o;
}

static json_object *
cmd_show(struct status *st, const char *id)
{
	struct worker_msg	 m;
	struct spool_view	 v;
	json_object		*o, *a;
	const char		*why;
	size_t			 i, hlen;
	static const char	*fields[] = { "From", "To", "Cc", "Subject",
	    "Date", "Message-ID" };

	if (st->env.pool == NULL || worker_find(st->env.pool, id, &m) == -1) {
		if ((o = dead_json(st, id, 1)) != NULL)
			return o;
		return jerror("no such message in the queue or in dead/: %s",
		    id);
	}
	o = msg_json(&m);
	if (spool_map_msg(st->env.spool, m.qid, &v, &why) == -1) {
		add_str(o, "spool_error", why);
		return o;
	}
	a = json_object_new_array();
	for (i = 0; i < v.e.nrcpts; i++)
		json_object_array_add(a, json_object_new_string(v.e.rcpts[i]));
	json_object_object_add(o, "recipients", a);
	a = json_object_new_object();
	hlen = v.msg_len < 256 * 1024 ? v.msg_len : 256 * 1024;
	for (i = 0; i < NELEM(fields); i++)
		json_object_object_add(a, fields[i], header_field(v.msg, hlen,
		    fields[i]));
	json_object_object_add(o, "headers", a);
	spool_unmap_msg(&v);
	return o;
}

/* Appends to buf (always terminated). */
static void
cat(char *buf, size_t len, const char *fmt, ...) PRINTFLIKE(3, 4);

static void
cat(char *buf, size_t len, const char *fmt, ...)
{
	size_t	 n = strlen(buf);
	va_list	 ap;

	va_start(ap, fmt);
	vsnprintf(buf + n, len - n, fmt, ap);
	va_end(ap);
}

/* "13 matched: held 12, 1 being sent now" and the like. */
static void
tally_words(enum worker_verb verb, const struct worker_tally *t, char *buf,
    size_t len)
{
	static const char *const done[] = { "held", "released", "",
	    "deleted" };
	static const char *const skipped[] = { "already held", "not held",
	    "held (release them first)", "not deleted (see relayd's log)" };

	if (verb == WORKER_RETRY)
		snprintf(buf, len, "%zu matched: %zu to be tried now",
		    t->matched, t->done);
	else
		snprintf(buf, len, "%zu matched: %s %zu", t->matched,
		    done[verb], t->done);
	if (t->skipped > 0)
		cat(buf, len, ", %zu %s", t->skipped, skipped[verb]);
	if (t->inflight > 0)
		cat(buf, len, ", %zu being sent now", t->inflight);
	if (t->waiting > 0)
		cat(buf, len, ", %zu waiting on a hold (%s)", t->waiting,
		    t->why);
	if (t->lifted > 0)
		cat(buf, len, "; %zu mailbox hold(s) lifted", t->lifted);
}

static const char *const verbs[] = { "hold", "release", "retry", "delete",
    NULL };

/*
 * ID, all, --mailbox ADDRESS or --sender ADDRESS into a filter. An empty
 * argument list is all only where allowed (queue). -1: not a filter.
 */
static int
parse_filter(char **arg, int n, int empty_ok, struct worker_filter *f)
{
	memset(f, 0, sizeof(*f));
	if (n == 0)
		return empty_ok ? 0 : -1;
	if (n == 2 && strcmp(arg[0], "--mailbox") == 0)
		f->mailbox = arg[1];
	else if (n == 2 && strcmp(arg[0], "--sender") == 0)
		f->sender = arg[1];
	else if (n == 1 && !empty_ok && arg[0][0] != '-')
		f->qid = arg[0];
	else
		return -1;
	return 0;
}

/* Not queued but dead: retry and delete work on dead/. NULL: not dead. */
static json_object *
dead_action(struct status *st, enum worker_verb verb, const char *id,
    struct client *c, int *handled)
{
	struct worker_msg	 m;
	struct spool_view	 v;
	struct dead_reason	 r;
	const char		*why = "";
	json_object		*o;
	char			*text;
	uint64_t		 mtime;

	*handled = 0;
	if ((verb != WORKER_RETRY && verb != WORKER_DELETE) ||
	    (st->env.pool != NULL && worker_find(st->env.pool, id, &m) == 0) ||
	    spool_dead_map(st->env.spool, id, &v, &why) == -1)
		return NULL;
	spool_unmap_msg(&v);
	*handled = 1;
	if (verb == WORKER_RETRY)
		return dead_retry(st, id, c);
	/* History keeps what Graph said of it, and its attempts. */
	text = spool_dead_reason(st->env.spool, id, &mtime);
	dead_reason_parse(text != NULL ? text : "", &r);
	if (spool_dead_remove(st->env.spool, id) == -1) {
		dead_reason_clear(&r);
		free(text);
		return jerror("delete %s: %s", id, strerror(errno));
	}
	log_info("%s dead letter deleted by relayctl", id);
	history_outcome(st->env.history, id, "deleted", r.attempts, r.status,
	    r.code, r.request_id, r.mailbox);
	dead_reason_clear(&r);
	free(text);
	o = json_object_new_object();
	add_str(o, "ok", "delete");
	add_str(o, "id", id);
	return o;
}

static json_object *
cmd_action(struct status *st, enum worker_verb verb,
    const struct worker_filter *f, struct client *c)
{
	struct worker_tally	 t;
	json_object		*o;
	char			 words[512];
	int			 one = f->qid != NULL && strcmp(f->qid, "all") != 0;
	int			 dead;

	if (one && ((o = dead_action(st, verb, f->qid, c, &dead)) != NULL ||
	    dead))
		return o;
	if (st->env.pool == NULL)
		return jerror("delivery is off ([graph] not configured)");
	if (worker_act(st->env.pool, verb, f, &t) == -1)
		return jerror("%s %s: %s", verbs[verb], f->qid, t.why);
	o = json_object_new_object();
	add_str(o, "ok", verbs[verb]);
	if (one)
		add_str(o, "id", f->qid);
	add_int(o, "matched", (int64_t)t.matched);
	add_int(o, "done", (int64_t)t.done);
	add_int(o, "in_flight", (int64_t)t.inflight);
	add_int(o, "skipped", (int64_t)t.skipped);
	add_int(o, "waiting", (int64_t)t.waiting);
	if (verb == WORKER_RETRY) {
		add_int(o, "retried", (int64_t)t.done);
		add_int(o, "lifted", (int64_t)t.lifted);
	}
	tally_words(verb, &t, words, sizeof(words));
	add_str(o, "summary", words);
	return o;
}

static json_object *
cmd_pause(struct status *st, int on, uid_t uid)
{
	struct passwd	*pw = getpwuid(uid);
	json_object	*o;
	const char	*why = "";
	char		 who[128];
	int		 rc;

	if (st->env.pool == NULL)
		return jerror("delivery is off ([graph] not configured)");
	if (pw != NULL)
		snprintf(who, sizeof(who), "uid %u (%s)", (unsigned)uid,
		    pw->pw_name);
	else
		snprintf(who, sizeof(who), "uid %u", (unsigned)uid);
	if ((rc = worker_pause(st->env.pool, on, who, &why)) == -1)
		return jerror("%s: %s", on ? "pause" : "resume", why);
	o = json_object_new_object();
	add_str(o, "ok", on ? "pause" : "resume");
	add_str(o, "summary", rc == 1 ? (on ? "delivery was paused already" :
	    "delivery was not paused") : on ? "delivery paused: no new "
	    "request goes to Graph (requests in flight finish); it stays "
	    "paused across restarts until relayctl resume" :
	    "delivery resumed");
	return o;
}

static json_object *
cmd_queue(struct status *st, const struct worker_filter *f)
{
	struct queue_arg	 qa;
	json_object		*o;

	if (st->env.pool == NULL)
		return jerror("delivery is off ([graph] not configured): %zu "
		    "message(s) wait in the spool", spool_count(st->env.spool));
	o = json_object_new_object();
	qa.a = json_object_new_array();
	qa.f = f;
	worker_foreach(st->env.pool, queue_add, &qa);
	json_object_object_add(o, "queue", qa.a);
	return o;
}

/* relayd_credential_expiry_seconds, a line per credential. */
static char *
credential_metrics(const struct config *cfg)
{
	struct credential	 cr[CONFIG_CREDENTIALS];
	char			*out = xstrdup(""), *more;
	size_t			 i, n = config_credentials(cfg, cr);

	for (i = 0; i < n; i++) {
		xasprintf(&more, "%srelayd_credential_expiry_seconds"
		    "{credential=\"%s\"} %lld\n", out, cr[i].name,
		    (long long)cr[i].expires - (long long)time(NULL));
		free(out);
		out = more;
	}
	return out;
}

/* What the SMTP side took and refused, and AUTH's failures. */
static char *
smtp_metrics(struct status *st)
{
	const struct smtp_figures *f = smtp_fig(st);
	const struct smtp_counts *sc = &f->counts;
	uint64_t		 nfail = f->auth_failures;
	uint64_t		 nlock = f->auth_lockouts;
	size_t			 nlocked = f->nlocked, i;
	char			*out, *more;

	xasprintf(&out,
	    "# HELP relayd_messages_received_total Messages accepted over "
	    "SMTP (250 queued).\n"
	    "# TYPE relayd_messages_received_total counter\n"
	    "relayd_messages_received_total %" PRIu64 "\n"
	    "# HELP relayd_smtp_refusals_total SMTP commands and messages "
	    "refused, by reason.\n"
	    "# TYPE relayd_smtp_refusals_total counter\n",
	    sc->received);
	for (i = 0; i < SMTP_REFUSED_MAX; i++) {
		xasprintf(&more, "%srelayd_smtp_refusals_total{reason=\"%s\"} "
		    "%" PRIu64 "\n", out, smtp_refusal_name(i), sc->refused[i]);
		free(out);
		out = more;
	}
	xasprintf(&more, "%s"
	    "# HELP relayd_auth_failures_total AUTH attempts with wrong "
	    "credentials.\n"
	    "# TYPE relayd_auth_failures_total counter\n"
	    "relayd_auth_failures_total %" PRIu64 "\n"
	    "# HELP relayd_auth_lockouts_total Client addresses locked out of "
	    "AUTH ([auth] max_failures).\n"
	    "# TYPE relayd_auth_lockouts_total counter\n"
	    "relayd_auth_lockouts_total %" PRIu64 "\n"
	    "# HELP relayd_auth_locked_addresses Client addresses locked out "
	    "now.\n"
	    "# TYPE relayd_auth_locked_addresses gauge\n"
	    "relayd_auth_locked_addresses %zu\n"
	    "# HELP relayd_smtp_max_connections max_connections in force "
	    "(from the descriptor limit unless set).\n"
	    "# TYPE relayd_smtp_max_connections gauge\n"
	    "relayd_smtp_max_connections %" PRIu64 "\n"
	    "# HELP relayd_smtp_stress 1 while relayd is under stress (open "
	    "connections from 70%% of max_connections until below 50%%).\n"
	    "# TYPE relayd_smtp_stress gauge\n"
	    "relayd_smtp_stress %u\n"
	    "# HELP relayd_smtp_stress_entered_total Times stress began.\n"
	    "# TYPE relayd_smtp_stress_entered_total counter\n"
	    "relayd_smtp_stress_entered_total %" PRIu64 "\n"
	    "# HELP relayd_smtp_evicted_total Idle sessions closed under "
	    "stress to let a new client in.\n"
	    "# TYPE relayd_smtp_evicted_total counter\n"
	    "relayd_smtp_evicted_total %" PRIu64 "\n", out, nfail, nlock,
	    nlocked, f->max_connections, (unsigned)f->stress_active,
	    f->stress_entered, f->stress_evicted);
	free(out);
	return more;
}

/* [cluster]: appended to text, which it frees. */
static char *
cluster_metrics(struct cluster *cl, char *text)
{
	struct cluster_status	 cs;
	char			*out;

	cluster_status(cl, &cs);
	xasprintf(&out, "%s"
	    "# HELP relayd_redis_up Whether [cluster]'s Redis answers (0: "
	    "this node goes on alone with its share of each limit).\n"
	    "# TYPE relayd_redis_up gauge\n"
	    "relayd_redis_up %d\n"
	    "# HELP relayd_cluster_nodes Nodes seen in the last 10 s.\n"
	    "# TYPE relayd_cluster_nodes gauge\n"
	    "relayd_cluster_nodes %zu\n"
	    "# HELP relayd_cluster_slots_held Graph request slots this node "
	    "holds now.\n"
	    "# TYPE relayd_cluster_slots_held gauge\n"
	    "relayd_cluster_slots_held %zu\n"
	    "# HELP relayd_cluster_asks_total Slots asked of Redis.\n"
	    "# TYPE relayd_cluster_asks_total counter\n"
	    "relayd_cluster_asks_total %" PRIu64 "\n"
	    "# HELP relayd_cluster_waits_total Asks told to wait (slots full, "
	    "paced, held).\n"
	    "# TYPE relayd_cluster_waits_total counter\n"
	    "relayd_cluster_waits_total %" PRIu64 "\n"
	    "# HELP relayd_redis_connects_total Connections made to Redis.\n"
	    "# TYPE relayd_redis_connects_total counter\n"
	    "relayd_redis_connects_total %" PRIu64 "\n",
	    text, cs.up, cs.nnodes, cs.leases, cs.asks, cs.denied,
	    cs.reconnects);
	free(text);
	return out;
}

char *
status_metrics(struct status *st)
{
	const struct status_env	*e = &st->env;
	struct worker_counts	 c;
	struct token_failure	 tf;
	char			*out, *creds, *smtp;
	size_t			 ntr = 0;
	long long		 exp;
	uint64_t		 oldest = 0, now = wall_us() / 1000;
	struct json_object	*a = json_object_new_array();

	memset(&c, 0, sizeof(c));
	memset(&tf, 0, sizeof(tf));
	if (e->pool != NULL) {
		worker_counts(e->pool, &c);
		worker_throttled(e->pool, throttled_add, a);
		ntr = json_object_array_length(a);
		oldest = worker_oldest(e->pool);
	} else
		c.queued = spool_count(e->spool);
	json_object_put(a);
	exp = e->token != NULL ? token_expires_in(e->token) : -1;
	if (e->token != NULL)
		token_failure(e->token, &tf);
	creds = credential_metrics(e->cfg);
	smtp = smtp_metrics(st);
	xasprintf(&out,
	    "# HELP relayd_info relayd's version.\n"
	    "# TYPE relayd_info gauge\n"
	    "relayd_info{version=\"%s\"} 1\n"
	    "# HELP relayd_uptime_seconds Seconds since relayd started.\n"
	    "# TYPE relayd_uptime_seconds gauge\n"
	    "relayd_uptime_seconds %" PRIu64 "\n"
	    "# HELP relayd_smtp_connections SMTP connections open now.\n"
	    "# TYPE relayd_smtp_connections gauge\n"
	    "relayd_smtp_connections %zu\n"
	    "# HELP relayd_queue_messages Messages in the queue by state.\n"
	    "# TYPE relayd_queue_messages gauge\n"
	    "relayd_queue_messages{state=\"queued\"} %zu\n"
	    "relayd_queue_messages{state=\"in_flight\"} %zu\n"
	    "relayd_queue_messages{state=\"deferred\"} %zu\n"
	    "relayd_queue_messages{state=\"throttled\"} %zu\n"
	    "relayd_queue_messages{state=\"held\"} %zu\n"
	    "relayd_queue_messages{state=\"graph_held\"} %zu\n"
	    "relayd_queue_messages{state=\"dead\"} %zu\n"
	    "# HELP relayd_queue_oldest_age_seconds Age of the oldest queued "
	    "message; 0: none.\n"
	    "# TYPE relayd_queue_oldest_age_seconds gauge\n"
	    "relayd_queue_oldest_age_seconds %.3f\n"
	    "# HELP relayd_messages_sent_total Messages Graph accepted.\n"
	    "# TYPE relayd_messages_sent_total counter\n"
	    "relayd_messages_sent_total %" PRIu64 "\n"
	    "# HELP relayd_delivery_deferrals_total Attempts that failed for "
	    "now.\n"
	    "# TYPE relayd_delivery_deferrals_total counter\n"
	    "relayd_delivery_deferrals_total %" PRIu64 "\n"
	    "# HELP relayd_messages_failed_total Messages refused for good "
	    "(dead letters).\n"
	    "# TYPE relayd_messages_failed_total counter\n"
	    "relayd_messages_failed_total %" PRIu64 "\n"
	    "# HELP relayd_throttled_mailboxes Mailboxes on hold after a "
	    "429.\n"
	    "# TYPE relayd_throttled_mailboxes gauge\n"
	    "relayd_throttled_mailboxes %zu\n"
	    "# HELP relayd_graph_hold_seconds Seconds left of a Graph-wide "
	    "hold (Graph unavailable).\n"
	    "# TYPE relayd_graph_hold_seconds gauge\n"
	    "relayd_graph_hold_seconds %.3f\n"
	    "# HELP relayd_graph_failures Graph service failures in a row "
	    "(0: the last request got an answer).\n"
	    "# TYPE relayd_graph_failures gauge\n"
	    "relayd_graph_failures %u\n"
	    "# HELP relayd_token_expiry_seconds Seconds until the access "
	    "token expires; -1: none.\n"
	    "# TYPE relayd_token_expiry_seconds gauge\n"
	    "relayd_token_expiry_seconds %.3f\n"
	    "# HELP relayd_token_failures Token requests failed in a row "
	    "(0: the last one worked).\n"
	    "# TYPE relayd_token_failures gauge\n"
	    "relayd_token_failures %u\n"
	    "# HELP relayd_history_entries Messages in the history database "
	    "([queue] history; 0: off).\n"
	    "# TYPE relayd_history_entries gauge\n"
	    "relayd_history_entries %" PRIu64 "\n"
	    "%s"
	    "# HELP relayd_credential_expiry_seconds Seconds until a "
	    "credential expires (negative: expired).\n"
	    "# TYPE relayd_credential_expiry_seconds gauge\n"
	    "%s",
	    PACKAGE_VERSION, (wall_us() / 1000 - e->started_ms) / 1000,
	    (size_t)smtp_fig(st)->nsessions, c.queued, c.inflight, c.deferred,
	    c.throttled, c.held, c.graph_held, spool_dead_count(e->spool),
	    oldest != 0 && now > oldest ? (double)(now - oldest) / 1000.0 :
	    0.0, c.sent, c.deferred_total, c.failed, ntr,
	    (double)c.graph_held_ms / 1000.0, c.graph_fails,
	    exp < 0 ? -1.0 : (double)exp / 1000.0, tf.count,
	    history_count(e->history), smtp, creds);
	free(smtp);
	free(creds);
	if (e->cluster != NULL)
		out = cluster_metrics(e->cluster, out);
	return out;
}

#define STATUS_ARGS_MAX	4	/* words of a command */

static json_object *
cmd_import(struct client *c, uid_t uid, char **arg, int n)
{
	struct import	*imp;
	json_object	*o;
	int		 dead = strcmp(arg[0], "dead") == 0;

	if (c == NULL || c->imp != NULL)
		return jerror("import: one file at a time, over the socket");
	if (uid != 0 && uid != geteuid())
		return jerror("permission denied: import is for root and "
		    "relayd's user");
	if ((!dead && (strcmp(arg[0], "queue") != 0 || n != 2)) ||
	    (dead && (n != 3 || (strcmp(arg[2], "1") != 0 &&
	    strcmp(arg[2], "2") != 0))) ||
	    !spool_record_qid_valid(arg[1], strlen(arg[1])))
		return jerror("import: queue NAME or dead QID 1|2");
	imp = xcalloc(1, sizeof(*imp));
	imp->c = c;
	imp->dead = dead;
	imp->want = dead ? atoi(arg[2]) : 1;
	imp->fds[0] = imp->fds[1] = -1;
	strlcpy_r(imp->name, arg[1], sizeof(imp->name));
	c->imp = imp;
	o = json_object_new_object();
	add_str(o, "ok", "send");
	return o;
}

static void
import_free(struct import *imp)
{
	int	 i;

	if (imp->c != NULL) {
		imp->c->imp = NULL;
		bufferevent_enable(imp->c->bev, EV_READ);
	}
	for (i = 0; i < imp->nfds; i++)
		if (imp->fds[i] != -1)
			close(imp->fds[i]);
	if (imp->ev != NULL)
		event_free(imp->ev);
	free(imp);
}

static void
import_answer(struct import *imp, json_object *o)
{
	if (imp->c != NULL)
		write_answer(imp->c, o);
	else
		json_object_put(o);
	import_free(imp);
}

static void
import_done(void *arg, const struct spool_import_result *r)
{
	struct import	*imp = arg;
	json_object	*o = json_object_new_object();

	add_str(o, "ok", "import");
	add_int(o, "imported", (int64_t)r->imported);
	add_int(o, "already", (int64_t)r->already);
	add_int(o, "failed", (int64_t)r->failed);
	add_int(o, "skipped", (int64_t)r->skipped);
	add_int(o, "left", (int64_t)r->left);
	if (r->why[0] != '\0')
		add_str(o, "why", r->why);
	if (r->err != 0)
		add_str(o, "failure", strerror(r->err));
	imp->fds[0] = -1;	/* the job closed it */
	import_answer(imp, o);
}

static void
import_files(struct status *st, struct import *imp)
{
	json_object	*o;
	const char	*why;
	int		 rc;

	if (!imp->dead) {
		if (spool_import_segment(st->env.spool, imp->fds[0], imp->name,
		    import_done, imp) == -1)
			import_answer(imp, jerror("import queue/%s: %s",
			    imp->name, strerror(errno)));
		return;
	}
	rc = spool_import_dead(st->env.spool, imp->fds[0], imp->fds[1],
	    imp->name, &why);
	if (rc == -1) {
		import_answer(imp, jerror("import dead/%s: %s", imp->name,
		    why));
		return;
	}
	o = json_object_new_object();
	add_str(o, "ok", "import");
	add_int(o, "dead", rc == 0);
	add_int(o, "already", rc == 1);
	import_answer(imp, o);
}

/* A file relayctl attached to one byte. */
static void
import_recv(evutil_socket_t sock, short what, void *arg)
{
	struct import	*imp = arg;
	struct client	*c = imp->c;
	char		 byte;
	int		 fd = -1;

	(void)what;
	if (fd_recvmsg(sock, &byte, 1, &fd) <= 0 || fd == -1) {
		if (fd != -1)
			close(fd);
		import_answer(imp, jerror("import: no file came"));
		return;
	}
	imp->fds[imp->nfds++] = fd;
	if (imp->nfds < imp->want)
		event_add(imp->ev, NULL);
	else
		import_files(c->st, imp);
}

/* After {"ok":"send"}: the next bytes carry files. */
static void
import_wait(struct client *c)
{
	bufferevent_disable(c->bev, EV_READ);
	c->imp->ev = event_new(bufferevent_get_base(c->bev),
	    bufferevent_getfd(c->bev), EV_READ, import_recv, c->imp);
	event_add(c->imp->ev, NULL);
}

/*
 * One command line from a peer with that uid: a malloc'd JSON text, or
 * NULL when the answer comes later (c's retry of a dead letter). With fdp,
 * export puts the file to pass there.
 */
static char *
command(struct status *st, const char *line, struct client *c, uid_t uid,
    int *fdp)
{
	struct worker_filter	 f;
	json_object		*o;
	char			*copy = xstrdup(line), *out, *text, *save = NULL;
	char			*arg[STATUS_ARGS_MAX + 1], err[512];
	int			 n = 0, v;

	for (arg[n] = strtok_r(copy, " \t", &save); arg[n] != NULL &&
	    n < STATUS_ARGS_MAX; arg[n] = strtok_r(NULL, " \t", &save))
		n++;
	for (v = 0; n > 0 && verbs[v] != NULL; v++)
		if (strcmp(arg[0], verbs[v]) == 0)
			break;
	if (n == 0)
		o = jerror("empty command");
	else if (strcmp(arg[0], "history") == 0) {
		/* Its argument is JSON: the line as it came, not its words. */
		if ((o = history_command(st->env.history, line +
		    strspn(line, " \t") + strlen("history"), err,
		    sizeof(err))) == NULL)
			o = jerror("%s", err);
	}
	else if (n == 1 && strcmp(arg[0], "status") == 0)
		o = cmd_status(st);
	else if (strcmp(arg[0], "queue") == 0 &&
	    parse_filter(arg + 1, n - 1, 1, &f) == 0)
		o = cmd_queue(st, &f);
	else if (n == 1 && strcmp(arg[0], "metrics") == 0) {
		text = status_metrics(st);
		o = json_object_new_object();
		add_str(o, "metrics", text);
		free(text);
	} else if (n == 2 && strcmp(arg[0], "show") == 0)
		o = cmd_show(st, arg[1]);
	else if (verbs[v] != NULL && parse_filter(arg + 1, n - 1, 0, &f) == 0)
		o = cmd_action(st, (enum worker_verb)v, &f, c);
	else if (n == 2 && strcmp(arg[0], "unlock") == 0)
		o = cmd_unlock(st, arg[1]);
	else if (n == 1 && (strcmp(arg[0], "pause") == 0 ||
	    strcmp(arg[0], "resume") == 0))
		o = cmd_pause(st, strcmp(arg[0], "pause") == 0, uid);
	else if (n == 1 && strcmp(arg[0], "dead") == 0)
		o = cmd_dead(st);
	else if (n == 2 && strcmp(arg[0], "export") == 0)
		o = cmd_export(st, arg[1], fdp);
	else if (n >= 3 && strcmp(arg[0], "import") == 0)
		o = cmd_import(c, uid, arg + 1, n - 1);
	else
		o = jerror("unknown command: try status, queue [FILTER], show "
		    "ID, retry|delete|hold|release ID|all|FILTER, pause, "
		    "resume, metrics, unlock ADDRESS, dead, export ID, import, "
		    "history "
		    "(FILTER: --mailbox ADDRESS or --sender ADDRESS)");
	free(copy);
	if (o == NULL)
		return NULL;
	out = xstrdup(json_object_to_json_string_ext(o,
	    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return out;
}

char *
status_command(struct status *st, const char *line)
{
	return command(st, line, NULL, geteuid(), NULL);
}

/* ---- the socket ---- */

static void
client_free(struct client *c)
{
	struct import	*imp;

	if (c->wait != NULL)
		c->wait->c = NULL;	/* the retry goes on unanswered */
	if (c->imp != NULL) {
		imp = c->imp;
		imp->c = NULL;		/* the import goes on unanswered */
		if (imp->nfds < imp->want)
			import_free(imp);	/* no files came */
	}
	c->st->nclients--;
	TAILQ_REMOVE(&c->st->clients, c, link);
	bufferevent_free(c->bev);
	free(c);
}

/*
 * The answer line with fd attached (SCM_RIGHTS) to its first byte, sent
 * straight on the socket when nothing else waits to go out before it.
 * -1: not sent (the caller writes the answer alone; relayctl then says no
 * file came).
 */
static int
send_with_fd(struct client *c, const char *ans, int fd)
{
	struct iovec	 iov[2];
	ssize_t		 n;
	size_t		 len = strlen(ans);

	if (evbuffer_get_length(bufferevent_get_output(c->bev)) != 0)
		return -1;
	iov[0].iov_base = (void *)(uintptr_t)ans;
	iov[0].iov_len = len;
	iov[1].iov_base = (void *)(uintptr_t)"\n";
	iov[1].iov_len = 1;
	if ((n = fd_sendmsg(bufferevent_getfd(c->bev), iov, 2, fd)) <= 0)
		return -1;
	/* The rest of a line the socket did not take at once. */
	if ((size_t)n < len)
		bufferevent_write(c->bev, ans + n, len - (size_t)n);
	if ((size_t)n < len + 1)
		bufferevent_write(c->bev, "\n", 1);
	return 0;
}

static void
client_read(struct bufferevent *bev, void *arg)
{
	static const char too_long[] = "{\"error\":\"command line too long\"}\n";
	struct client	*c = arg;
	struct evbuffer	*in = bufferevent_get_input(bev);
	char		*line, *ans;
	size_t		 n;
	int		 fd;

	while ((line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF)) != NULL) {
		fd = -1;
		if ((ans = command(c->st, line, c, c->uid, &fd)) != NULL &&
		    (fd == -1 || send_with_fd(c, ans, fd) == -1)) {
			bufferevent_write(bev, ans, strlen(ans));
			bufferevent_write(bev, "\n", 1);
		}
		if (fd != -1)
			close(fd);
		free(ans);
		free(line);
		if (c->imp != NULL && c->imp->ev == NULL) {
			import_wait(c);
			return;
		}
	}
	if (evbuffer_get_length(in) > STATUS_LINE_MAX) {
		bufferevent_write(bev, too_long, sizeof(too_long) - 1);
		bufferevent_disable(bev, EV_READ);
		bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
	}
}

static void
client_event(struct bufferevent *bev, short what, void *arg)
{
	struct client	*c = arg;

	(void)bev;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
		client_free(c);
}

static void
client_written(struct bufferevent *bev, void *arg)
{
	struct client	*c = arg;

	/* After a refusal or an overlong line: close once it is out. */
	if (!(bufferevent_get_enabled(bev) & EV_READ) && c->imp == NULL)
		client_free(c);
}

static void
on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
    int salen, void *arg)
{
	struct status	*st = arg;
	struct client	*c;
	struct ucred	 cred;
	socklen_t	 len = sizeof(cred);
	struct timeval	 idle = { STATUS_IDLE_SEC, 0 };
	const char	*refusal = NULL;
	char		 msg[256];

	(void)l;
	(void)sa;
	(void)salen;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1) {
		log_warn("status: SO_PEERCRED");
		close(fd);
		return;
	}
	if (!peer_allowed(st, cred.uid, cred.gid)) {
		log_warnx("status: refused uid=%u gid=%u pid=%d (not root, "
		    "relayd's user or in [status] users/groups)",
		    (unsigned)cred.uid, (unsigned)cred.gid, (int)cred.pid);
		snprintf(msg, sizeof(msg), "{\"error\":\"permission denied: "
		    "uid %u may not use relayd's status socket (see [status] "
		    "users and groups)\"}\n", (unsigned)cred.uid);
		refusal = msg;
	} else if (st->nclients >= STATUS_CLIENTS_MAX)
		refusal = "{\"error\":\"too many status connections\"}\n";
	c = xcalloc(1, sizeof(*c));
	c->st = st;
	c->uid = cred.uid;
	c->bev = bufferevent_socket_new(st->env.base, fd,
	    BEV_OPT_CLOSE_ON_FREE);
	st->nclients++;
	TAILQ_INSERT_TAIL(&st->clients, c, link);
	bufferevent_setcb(c->bev, client_read, client_written, client_event,
	    c);
	bufferevent_set_timeouts(c->bev, &idle, &idle);
	if (refusal != NULL) {
		bufferevent_write(c->bev, refusal, strlen(refusal));
		bufferevent_disable(c->bev, EV_READ);
		bufferevent_enable(c->bev, EV_WRITE);
		return;
	}
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* Another relayd answering on the path? Then it is not stale. */
static int
in_use(const char *path)
{
	struct sockaddr_un	 sun;
	int			 fd, used;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strlcpy_r(sun.sun_path, path, sizeof(sun.sun_path));
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return 0;
	used = connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0;
	close(fd);
	return used;
}

static int
socket_open(struct status *st, const char *path, char *err, size_t errlen)
{
	struct sockaddr_un	 sun;
	struct stat		 sb;
	int			 fd;
	mode_t			 old;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "[status] socket %s: path too long",
		    path);
		return -1;
	}
	strlcpy_r(sun.sun_path, path, sizeof(sun.sun_path));
	if (lstat(path, &sb) == 0) {
		if (!S_ISSOCK(sb.st_mode)) {
			snprintf(err, errlen, "[status] socket %s exists and "
			    "is not a socket", path);
			return -1;
		}
		if (in_use(path)) {
			snprintf(err, errlen, "[status] socket %s: another "
			    "relayd answers there", path);
			return -1;
		}
		unlink(path);
	}
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) == -1) {
		snprintf(err, errlen, "status socket: %s", strerror(errno));
		return -1;
	}
	old = umask(0117);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		umask(old);
		snprintf(err, errlen, "[status] socket %s: %s", path,
		    strerror(errno));
		close(fd);
		return -1;
	}
	umask(old);
	chmod(path, 0660);
	st->evl = evconnlistener_new(st->env.base, on_accept, st,
	    LEV_OPT_CLOSE_ON_FREE, 16, fd);
	if (st->evl == NULL) {
		snprintf(err, errlen, "[status] socket %s: cannot listen",
		    path);
		close(fd);
		unlink(path);
		return -1;
	}
	st->path = xstrdup(path);
	return 0;
}

static void
http_metrics(struct evhttp_request *req, void *arg)
{
	struct evbuffer	*b = evbuffer_new();
	char		*text;

	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		evhttp_send_error(req, 405, "Method Not Allowed");
		evbuffer_free(b);
		return;
	}
	text = status_metrics(arg);
	evbuffer_add(b, text, strlen(text));
	free(text);
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

static int
metrics_open(struct status *st, const char *addr, char *err, size_t errlen)
{
	char		*host = xstrdup(addr), *colon;
	char		*end;
	unsigned long	 port;
	int		 rc = -1;

	colon = strrchr(host, ':');
	if (colon == NULL || colon == host) {
		snprintf(err, errlen, "[status] metrics_listen %s: want "
		    "ADDR:PORT", addr);
		goto out;
	}
	*colon = '\0';
	port = strtoul(colon + 1, &end, 10);
	if (*end != '\0' || port == 0 || port > 65535) {
		snprintf(err, errlen, "[status] metrics_listen %s: bad port",
		    addr);
		goto out;
	}
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = '\0';
	}
	st->http = evhttp_new(st->env.base);
	evhttp_set_allowed_methods(st->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_cb(st->http, "/metrics", http_metrics, st);
	if (evhttp_bind_socket(st->http, host, (ev_uint16_t)port) != 0) {
		snprintf(err, errlen, "[status] metrics_listen %s: cannot "
		    "bind: %s", addr, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	free(host);
	return rc;
}

void
status_set_config(struct status *st, const struct config *cfg)
{
	st->env.cfg = cfg;
}

struct status *
status_new(const struct status_env *env, char *err, size_t errlen)
{
	struct status	*st = xcalloc(1, sizeof(*st));
	const char	*path = env->cfg->status_socket;
	char		 why[512];

	st->env = *env;
	TAILQ_INIT(&st->clients);
	if (parse_ids(st, env->cfg->status_users, 0, err, errlen) == -1 ||
	    parse_ids(st, env->cfg->status_groups, 1, err, errlen) == -1 ||
	    (env->cfg->status_metrics_listen != NULL &&
	    metrics_open(st, env->cfg->status_metrics_listen, err,
	    errlen) == -1)) {
		status_free(st);
		return NULL;
	}
	/* Mail goes on without it: say so and carry on. */
	if (path != NULL && *path != '\0' && strcmp(path, "none") != 0 &&
	    socket_open(st, path, why,
	    sizeof(why)) == -1)
		log_warnx("status: %s; relayctl cannot reach this relayd",
		    why);
	if (st->path != NULL)
		log_info("status: socket=%s", st->path);
	if (st->http != NULL)
		log_info("status: metrics at http://%s/metrics",
		    env->cfg->status_metrics_listen);
	return st;
}

void
status_free(struct status *st)
{
	if (st == NULL)
		return;
	while (!TAILQ_EMPTY(&st->clients))
		client_free(TAILQ_FIRST(&st->clients));
	if (st->evl != NULL)
		evconnlistener_free(st->evl);
	if (st->path != NULL)
		unlink(st->path);
	if (st->http != NULL)
		evhttp_free(st->http);
	free(st->path);
	free(st);
}

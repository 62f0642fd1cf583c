/*
 * deliver_main.c - the delivery process ("relayd: deliver"): owns the
 * queue. It reads the spool (spool.c SPOOL_DELIVERY: the index, the state
 * lines, the removal of segments, dead letters), runs the worker pool and
 * its delivery threads (MIME -> Graph), the token client (access tokens
 * from the token process, held only as long as needed), the status
 * socket and the history. It never holds the client secret or the
 * private key, and enters the sandbox's DELIVER role before its first
 * thread. See the picture in relayd.c.
 *
 * At its start it reads the spool only once the SMTP process has paused
 * its intake (HELLO on the link the parent passes): nothing in queue/ is
 * being appended to while it is read.
 */
#include <sys/socket.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include <event2/event.h>

#include "cluster.h"
#include "config.h"
#include "history.h"
#include "http.h"
#include "link.h"
#include "link_deliver.h"
#include "log.h"
#include "mime.h"
#include "proc.h"
#include "sandbox.h"
#include "spool.h"
#include "status.h"
#include "token.h"
#include "util.h"
#include "worker.h"

/*
 * A reload: of the config, the status socket's view and the log level;
 * from fd (the parent's CTL_RELOAD) or, -1, from the path (SIGHUP).
 */
struct dreload {
	const char	*path;
	struct config	*cfg;
	struct config	**old;
	size_t		 nold;
	struct status	*status;
};

static void
reload_from(struct dreload *r, int fd)
{
	struct config	*cfg;

	if ((cfg = config_reload_quiet(r->path, fd)) == NULL)
		return;
	log_set_level(cfg->log_level);
	r->old = xrealloc(r->old, (r->nold + 1) * sizeof(*r->old));
	r->old[r->nold++] = r->cfg;
	r->cfg = cfg;
	if (r->status != NULL)
		status_set_config(r->status, cfg);
}

static void
hup_cb(evutil_socket_t sig, short ev, void *arg)
{
	(void)sig;
	(void)ev;
	reload_from(arg, -1);
}

/*
 * The parent's messages: a connection to the token process, a new SMTP
 * process, relayd.conf to reload, or news that the token process re-read
 * a changed credential (SIGHUP): messages that waited for a token are
 * tried at once.
 */
struct deliver_ctl {
	struct event_base	*base;
	struct token		*token;
	struct worker_pool	*pool;
	struct handoff		*handoff;
	struct dreload		*reload;
};

static void
ctl_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct deliver_ctl	*dc = arg;
	struct ctl_msg		 m;
	size_t			 n;
	int			 passed, r;

	(void)ev;
	if ((r = ctl_recv(fd, &m, &passed)) == 0) {
		log_warnx("deliver: the parent is gone; stopping");
		event_base_loopbreak(dc->base);
		return;
	}
	if (r == -1)
		return;
	if (m.type == CTL_TOKEN_FD && passed != -1 && dc->token != NULL) {
		token_connect(dc->token, passed);
		passed = -1;
	} else if (m.type == CTL_LINK_FD && passed != -1) {
		handoff_connect(dc->handoff, passed, 0);
		passed = -1;
	} else if (m.type == CTL_RELOAD && passed != -1)
		reload_from(dc->reload, passed);
	else if (m.type == CTL_CRED_CHANGED && dc->token != NULL) {
		token_changed(dc->token);
		n = dc->pool != NULL ? worker_retry_token(dc->pool) : 0;
		log_info("reload: the next token request uses the new "
		    "credential; %zu message(s) waiting on a token tried now",
		    n);
	}
	if (passed != -1)
		close(passed);
}

/*
 * Before the spool is read: the parent's messages until the SMTP process
 * says HELLO on its link (a connection to the token process is taken on
 * the way). Returns the link, -1 if the parent is gone.
 */
static int
wait_hello(int ctl, struct token *token)
{
	struct pollfd	 pfd[2];
	struct ctl_msg	 m;
	sigset_t	 pending;
	struct link_msg	 lm;
	char		*buf = xmalloc(sizeof(lm) + LINK_TEXT_MAX);
	ssize_t		 n;
	int		 link = -1, passed, r;

	for (;;) {
		pfd[0].fd = ctl;
		pfd[1].fd = link;
		pfd[0].events = pfd[1].events = POLLIN;
		pfd[0].revents = pfd[1].revents = 0;
		/* Stopped before an SMTP process ever came (still blocked). */
		if (sigpending(&pending) == 0 &&
		    (sigismember(&pending, SIGTERM) == 1 ||
		    sigismember(&pending, SIGINT) == 1))
			break;
		if (poll(pfd, link == -1 ? 1 : 2, 200) == -1) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[0].revents != 0) {
			if ((r = ctl_recv(ctl, &m, &passed)) == 0)
				break;
			if (r == 1 && m.type == CTL_TOKEN_FD && passed != -1 &&
			    token != NULL) {
				token_connect(token, passed);
				passed = -1;
			} else if (r == 1 && m.type == CTL_LINK_FD &&
			    passed != -1) {
				if (link != -1)
					close(link);
				link = passed;
				passed = -1;
			}
			if (passed != -1)
				close(passed);
		}
		if (link == -1 || pfd[1].revents == 0)
			continue;
		n = recv(link, buf, sizeof(lm) + LINK_TEXT_MAX, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			close(link);	/* it died: the next one says HELLO */
			link = -1;
			continue;
		}
		memcpy(&lm, buf, n < (ssize_t)sizeof(lm) ? (size_t)n :
		    sizeof(lm));
		if ((size_t)n >= sizeof(lm) && lm.type == LINK_HELLO) {
			free(buf);
			return link;
		}
	}
	free(buf);
	if (link != -1)
		close(link);
	return -1;
}

/* SIGTERM, SIGINT: the SMTP process has drained; Graph requests in flight
 * get their grace (worker_free). */
static void
stop_cb(evutil_socket_t sig, short ev, void *arg)
{
	(void)ev;
	log_info("deliver: signal %d, stopping", (int)sig);
	event_base_loopbreak(arg);
}

/* Ready: the spool read, status listening, the SMTP side's figures in. */
static void
send_ready(void *arg)
{
	ctl_send(*(int *)arg, CTL_READY, 0, -1);
}

int
deliver_main(const char *path, struct config *cfg, int ctl,
    uint64_t heartbeat_ms)
{
	struct event_base	*base;
	struct worker_pool	*pool = NULL;
	struct token		*token = NULL;
	struct handoff		*handoff = NULL;
	struct proc_events	 pe;
	struct heartbeat	*hb = NULL;
	struct deliver_ctl	 dctl;
	struct dreload		 reload;
	struct spool		*spool = NULL;
	struct status		*status = NULL;
	struct status_env	 senv;
	struct history		*history = NULL;
	struct cluster		*cluster = NULL;
	char			 err[512], *summary;
	int			 rc = 0, http_ok = 0, link;
	size_t			 i;

	memset(&senv, 0, sizeof(senv));
	memset(&dctl, 0, sizeof(dctl));
	memset(&reload, 0, sizeof(reload));
	memset(&pe, 0, sizeof(pe));
	if ((base = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	if (cfg->graph_enabled) {
		if (http_init(cfg, err, sizeof(err)) == -1) {
			log_msg(LOG_LVL_ERR, "%s", err);
			rc = EX_CONFIG;
			goto out;
		}
		http_ok = 1;
		token = token_remote(cfg);
	}
	/*
	 * [cluster]: its password file is read here, before the sandbox,
	 * which grants it to no process; Redis is connected to meanwhile.
	 */
	if (cfg->graph_enabled && cfg->cluster_redis != NULL &&
	    (cluster = cluster_new(base, cfg, err, sizeof(err))) == NULL) {
		log_msg(LOG_LVL_ERR, "%s", err);
		rc = EX_CONFIG;
		goto out;
	}
	/* Before the first thread (spool_open's). */
	if (proc_sandbox(cfg, path, SANDBOX_DELIVER) == -1) {
		rc = EX_OSERR;
		goto out;
	}
	if ((link = wait_hello(ctl, token)) == -1)
		goto out;		/* the parent is gone */
	if ((spool = spool_open_role(cfg->spool_dir, cfg->sync_method,
	    SPOOL_DELIVERY, base, err, sizeof(err))) == NULL) {
		log_msg(LOG_LVL_ERR, "%s", err);
		close(link);
		rc = EX_CANTCREAT;
		goto out;
	}
	log_info("spool: %zu queued message(s) found dir=%s",
	    spool_count(spool), cfg->spool_dir);
	history = history_new(cfg->spool_dir, cfg->history_ms);
	mime_init();		/* delivery */
	if (cfg->graph_enabled) {
		if ((pool = worker_new(base, cfg, spool, token, cluster, err,
		    sizeof(err))) == NULL) {
			log_msg(LOG_LVL_ERR, "%s", err);
			close(link);
			rc = EX_OSERR;
			goto out;
		}
		worker_set_history(pool, history);
		summary = graph_summary(cfg);
		log_info("graph: delivering %s", summary);
		free(summary);
	} else
		log_warnx("graph: [graph] is not configured; messages are "
		    "queued and not delivered");
	handoff = handoff_new(base, spool, pool, history);
	handoff_connect(handoff, link, 1);	/* GO */
	dctl.base = base;
	dctl.token = token;
	dctl.pool = pool;
	dctl.handoff = handoff;
	dctl.reload = &reload;

	senv.base = base;
	senv.cfg = cfg;
	senv.handoff = handoff;
	senv.spool = spool;
	senv.pool = pool;
	senv.cluster = cluster;
	senv.token = token;
	senv.history = history;
	senv.started_ms = relayd_started_ms();	/* a restart is no uptime */
	if ((status = status_new(&senv, err, sizeof(err))) == NULL) {
		log_msg(LOG_LVL_ERR, "%s", err);
		rc = EX_CONFIG;
		goto out;
	}
	reload.path = path;
	reload.cfg = cfg;
	reload.status = status;
	proc_events_add(&pe, base, ctl, ctl_cb, &dctl, stop_cb, base, hup_cb,
	    &reload);

	handoff_when_figures(handoff, send_ready, &ctl);
	hb = heartbeat_start(base, spool, ctl, heartbeat_ms);
	event_base_dispatch(base);

out:
	heartbeat_free(hb);
	status_free(status);
	handoff_free(handoff);
	worker_free(pool);
	cluster_free(cluster);	/* after the pool: it releases leases */
	spool_free(spool);
	token_free(token);
	if (http_ok)
		http_cleanup();
	history_free(history);	/* after everything that records */
	for (i = 0; i < reload.nold; i++)
		if (reload.old[i] != cfg)
			config_free(reload.old[i]);
	if (reload.cfg != NULL && reload.cfg != cfg)
		config_free(reload.cfg);
	free(reload.old);
	proc_events_free(&pe);
	event_base_free(base);
	config_free(cfg);
	return rc;
}

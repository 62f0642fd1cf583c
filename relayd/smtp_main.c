/*
 * smtp_main.c - the SMTP process ("relayd: smtp"): takes mail. Its
 * listeners are the parent's (inherited), its sessions speak SMTP, TLS,
 * AUTH and PROXY, and what they accept it commits to the spool as intake
 * (spool.c SPOOL_INTAKE) and tells the delivery process over the link
 * (link_smtp.c). It never holds the Graph credential or an access token,
 * and enters the sandbox's SMTP role (no connect, no curl; Landlock: the
 * spool, its config, users file and certificates) before its first
 * thread. See the picture in relayd.c.
 *
 * Commits wait (the spool's intake is paused) until delivery has read the
 * spool (GO), at its first start and whenever a new delivery process is
 * connected.
 *
 * [smtp] loops (or RELAYD_SMTP_LOOPS, for the tests): the sessions are
 * spread over that many event loops (smtp_loops.c); this loop is loop 0.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include <event2/event.h>

#include "auth.h"
#include "config.h"
#include "config_check.h"
#include "link_smtp.h"
#include "log.h"
#include "mime.h"
#include "proc.h"
#include "sandbox.h"
#include "smtp.h"
#include "smtp_loops.h"
#include "spool.h"
#include "util.h"

/*
 * SIGHUP: the config file again. A file with errors is refused (each
 * error logged) and the one in force stays. Otherwise new SMTP sessions
 * take it: [smtp] limits and allow lists, [senders], [auth] users (the
 * users file is read again), certificates, [log] level; sessions open
 * keep the one they started with. What the delivery side, the spool and
 * the listeners read at start ([graph], [queue], [status], listen lines)
 * is logged as taking effect at restart (here: the delivery process takes
 * what it can of the rest). Old configs and users stay allocated until
 * exit: sessions may still point at them.
 */
struct reloader {
	const char	*path;
	struct config	*cfg;		/* in force */
	struct config	**old;
	size_t		 nold;
	struct auth	*auth;		/* in force */
	struct auth	**old_auth;
	size_t		 nold_auth;
	struct smtp	*smtp;
	int		 restart_needed;
	struct event	*expiry;	/* once a day: certificates */
};

/* Once a day: certificates that expire within 30 days, or have. */
static void
expiry_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct reloader	*r = arg;
	FILE		*mf;
	char		*text = NULL;
	size_t		 len = 0;

	(void)fd;
	(void)ev;
	if ((mf = open_memstream(&text, &len)) == NULL)
		return;
	config_warn_expiry(r->cfg, mf);
	fclose(mf);
	log_lines("warning: ", text);
	free(text);
}

static void
reload_diff(void *arg, const char *section, const char *key)
{
	struct reloader	*r = arg;

	if (strcmp(section, "smtp") == 0 && strcmp(key, "listen") != 0 &&
	    strcmp(key, "max_line_length") != 0 &&
	    strcmp(key, "loops") != 0 &&
	    strcmp(key, "drain_timeout") != 0)
		return;
	if (strcmp(section, "auth") == 0 || strcmp(section, "log") == 0 ||
	    strcmp(section, "sendmail") == 0)
		return;
	log_warnx("reload: [%s] %s changed: takes effect at restart",
	    section, key);
	r->restart_needed = 1;
}

/* The config again: from fd (the parent's CTL_RELOAD) or, -1, the path. */
static void
reload_from(struct reloader *r, int fd)
{
	struct config	*cfg;
	struct auth	*auth = NULL;
	char		 err[512];

	if ((cfg = config_reload(r->path, fd)) == NULL)
		return;
	if (cfg->users_file != NULL &&
	    (auth = auth_new(cfg, err, sizeof(err))) == NULL) {
		log_warnx("reload: %s", err);
		log_warnx("reload refused: the configuration in force stays");
		config_free(cfg);
		return;
	}
	r->restart_needed = 0;
	config_diff(r->cfg, cfg, reload_diff, r);
	if (smtp_reconfigure(r->smtp, cfg) == -1 && !r->restart_needed)
		log_warnx("reload: [smtp] listen options changed: take effect "
		    "at restart");
	if (auth != NULL && r->auth != NULL)
		auth_keep_failures(auth, r->auth);	/* and lockouts */
	r->old_auth = xrealloc(r->old_auth, (r->nold_auth + 1) *
	    sizeof(*r->old_auth));
	r->old_auth[r->nold_auth++] = r->auth;
	r->auth = auth;
	smtp_session_set_auth(auth);
	if (auth != NULL)
		log_info("auth: users_file=%s mechanisms=\"%s\"",
		    cfg->users_file, auth_mechanisms(auth));
	log_set_level(cfg->log_level);
	r->old = xrealloc(r->old, (r->nold + 1) * sizeof(*r->old));
	r->old[r->nold++] = r->cfg;
	r->cfg = cfg;
	log_info("reload: %s in force for new sessions", r->path);
}

static void
hup_cb(evutil_socket_t sig, short ev, void *arg)
{
	(void)sig;
	(void)ev;
	reload_from(arg, -1);
}

static void
reloader_free(struct reloader *r, struct config *first)
{
	size_t	 i;

	auth_free(r->auth);
	for (i = 0; i < r->nold_auth; i++)
		auth_free(r->old_auth[i]);
	free(r->old_auth);
	for (i = 0; i < r->nold; i++)
		if (r->old[i] != first)
			config_free(r->old[i]);
	if (r->cfg != first)
		config_free(r->cfg);
	free(r->old);
	if (r->expiry != NULL)
		event_free(r->expiry);
}

/*
 * SIGTERM, SIGINT: drain. New clients get 421, sessions finish the
 * transaction they are in (up to [smtp] drain_timeout), then the loop
 * ends (the parent then stops the delivery process, whose Graph requests
 * in flight get their grace). A second signal stops at once.
 */
struct stopper {
	struct event_base	*base;
	struct smtp		*smtp;
	struct event		*tick;
	uint64_t		 deadline;
	uint64_t		 timeout_ms;
};

static void
drain_tick(evutil_socket_t fd, short ev, void *arg)
{
	struct stopper	*st = arg;
	size_t		 n = smtp_nsessions(st->smtp);

	(void)fd;
	(void)ev;
	if (n > 0 && now_ms() < st->deadline)
		return;
	if (n > 0)
		log_warnx("relayd: drain_timeout: %zu session(s) still open "
		    "are closed (their unfinished messages were never "
		    "acknowledged)", n);
	event_base_loopbreak(st->base);
}

static void
stop_cb(evutil_socket_t sig, short ev, void *arg)
{
	struct stopper	*st = arg;
	struct timeval	 tv = { 0, 100000 };

	(void)ev;
	if (st->tick != NULL) {
		log_info("relayd: signal %d again, stopping now", (int)sig);
		event_base_loopbreak(st->base);
		return;
	}
	log_info("relayd: signal %d, stopping: new clients get 421, %zu "
	    "session(s) may finish (drain_timeout %.0fs)", (int)sig,
	    smtp_nsessions(st->smtp), (double)st->timeout_ms / 1000.0);
	smtp_drain(st->smtp);
	st->deadline = now_ms() + st->timeout_ms;
	st->tick = event_new(st->base, -1, EV_PERSIST, drain_tick, st);
	event_add(st->tick, &tv);
	drain_tick(-1, 0, st);
}

/* The parent's messages: a (new) delivery process to talk to. */
struct smtp_ctl {
	struct event_base	*base;
	struct intake		*intake;
	struct reloader		*reloader;
};

static void
ctl_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct smtp_ctl	*sc = arg;
	struct ctl_msg	 m;
	int		 passed, r;

	(void)ev;
	if ((r = ctl_recv(fd, &m, &passed)) == 0) {
		log_warnx("smtp: the parent is gone; stopping");
		event_base_loopbreak(sc->base);
		return;
	}
	if (r == -1)
		return;
	if (m.type == CTL_LINK_FD && passed != -1) {
		intake_connect(sc->intake, passed);
		passed = -1;
	} else if (m.type == CTL_RELOAD && passed != -1)
		reload_from(sc->reloader, passed);
	if (passed != -1)
		close(passed);
}

int
smtp_main(const char *path, struct config *cfg, const int *fds, int ctl,
    uint64_t heartbeat_ms)
{
	struct event_base	*base;
	struct proc_events	 pe;
	struct heartbeat	*hb = NULL;
	struct smtp_ctl		 sctl;
	struct stopper		 stopper;
	struct reloader		 reloader;
	struct spool		*spool = NULL;
	struct intake		*intake = NULL;
	struct smtp		*smtp = NULL;
	struct timeval		 day = { 86400, 0 };
	char			 err[512];
	long			 ncpu;
	int			 rc = 0;

	memset(&stopper, 0, sizeof(stopper));
	memset(&reloader, 0, sizeof(reloader));
	memset(&sctl, 0, sizeof(sctl));
	memset(&pe, 0, sizeof(pe));
	if ((base = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	ncpu = sysconf(_SC_NPROCESSORS_ONLN);	/* reads /sys: unsandboxed */
	/* Before the first thread (spool_open's). */
	if (proc_sandbox(cfg, path, SANDBOX_SMTP) == -1) {
		rc = EX_OSERR;
		goto out;
	}
	if (smtp_loops_start(base, cfg->loops, ncpu, err, sizeof(err)) == -1) {
		log_msg(LOG_LVL_ERR, "%s", err);
		rc = EX_OSERR;
		goto out;
	}
	if ((spool = spool_open_role(cfg->spool_dir, cfg->sync_method,
	    SPOOL_INTAKE, base, err, sizeof(err))) == NULL) {
		log_msg(LOG_LVL_ERR, "%s", err);
		rc = EX_CANTCREAT;
		goto out;
	}
	intake = intake_new(base, spool);	/* paused until GO */
	mime_init();		/* From: checks, Subject for history */
	if (cfg->users_file != NULL) {
		if ((reloader.auth = auth_new(cfg, err, sizeof(err))) == NULL) {
			log_msg(LOG_LVL_ERR, "%s", err);
			rc = EX_CONFIG;
			goto out;
		}
		log_info("auth: users_file=%s mechanisms=\"%s\"",
		    cfg->users_file, auth_mechanisms(reloader.auth));
	}
	smtp_session_init(cfg);
	smtp_session_set_auth(reloader.auth);
	smtp_session_set_intake(intake);
	smtp = smtp_new(base, cfg, spool);
	if (smtp_listen(smtp, fds, err, sizeof(err)) == -1) {
		log_msg(LOG_LVL_ERR, "%s", err);
		rc = EX_OSERR;
		goto out;
	}
	intake_figures(intake, smtp, &reloader.auth);
	sctl.base = base;
	sctl.intake = intake;
	sctl.reloader = &reloader;

	stopper.base = base;
	stopper.smtp = smtp;
	stopper.timeout_ms = cfg->drain_timeout_ms;
	reloader.path = path;
	reloader.cfg = cfg;
	reloader.smtp = smtp;
	proc_events_add(&pe, base, ctl, ctl_cb, &sctl, stop_cb, &stopper,
	    hup_cb, &reloader);
	reloader.expiry = event_new(base, -1, EV_PERSIST, expiry_cb, &reloader);
	event_add(reloader.expiry, &day);

	ctl_send(ctl, CTL_READY, 0, -1);
	hb = heartbeat_start(base, NULL, ctl, heartbeat_ms);
	heartbeat_watch(hb, smtp_loops_alive);
	event_base_dispatch(base);
	if (stopper.tick != NULL)
		event_free(stopper.tick);

out:
	/*
	 * Commits in flight finish (and their sessions hear of it) before
	 * the sessions go, and the sessions before the listeners' tables.
	 */
	heartbeat_free(hb);
	/*
	 * The other loops' sessions go first: they must not start messages
	 * in a spool being freed. Their commits in flight still finish; the
	 * results wait in their loops' queues (smtp_loops_free runs them).
	 */
	smtp_loops_stop(smtp_session_shutdown);
	smtp_session_set_intake(NULL);	/* sessions left wait for nothing */
	intake_free(intake);
	spool_free(spool);
	smtp_session_shutdown();
	smtp_loops_flush0();	/* what they told loop 0 */
	smtp_loops_free();
	smtp_free(smtp);
	reloader_free(&reloader, cfg);
	proc_events_free(&pe);
	event_base_free(base);
	config_free(cfg);
	return rc;
}

/*
 * relayd.c - main (flags, config check) and the relay process.
 *
 * The processes (privilege separation, step 1 of issue 18):
 *
 *   relayd: parent   supervisor: the config (checked, never a credential),
 *     |              the listening sockets, systemd (READY, WATCHDOG,
 *     |              STOPPING), SIGHUP and SIGTERM; forks and restarts
 *     |              the two below (parent.c). Single-threaded; holds no
 *     |              secret and no token.
 *     +-- relayd: token   the only process that reads client_secret_file,
 *     |                   private_key_file or the systemd credential;
 *     |                   fetches access tokens, hands out only those
 *     |                   (token_proc.c, token.c).
 *     +-- relayd: relay   everything else, as before the split: SMTP,
 *                         spool, delivery threads, status socket, history
 *                         (relay_main below). Holds access tokens, never
 *                         the credential. Step 2 splits it into
 *                         "relayd: smtp" (SMTP, TLS, AUTH, PROXY, spool
 *                         intake) and "relayd: deliver" (scheduler,
 *                         delivery threads, status, history).
 *
 * What crosses (each a socketpair, SOCK_SEQPACKET):
 *
 *   parent <-> token   control (proc.h): token -> READY, CRED_CHANGED
 *                      (after SIGHUP); parent -> TOKEN_FD, one end of a
 *                      new relay<->token pair (SCM_RIGHTS).
 *   parent <-> relay   control: relay -> READY (listening, spool
 *                      recovered), HEARTBEAT (the loop's, with the queue
 *                      depth: the parent's WATCHDOG=1); parent -> TOKEN_FD
 *                      (the other end), CRED_CHANGED.
 *   relay <-> token    token requests (token.h: struct token_req, the
 *                      token Graph refused if any) and answers (struct
 *                      token_rep: the access token, its life, the failure
 *                      state and the admin's next step).
 *
 * Whenever either child is (re)started the parent makes a new relay<->token
 * pair and passes one end to each. The listening sockets are the parent's
 * and inherited by each relay child: the port takes connections into its
 * backlog while a relay restarts. Children die with the parent
 * (PR_SET_PDEATHSIG); token and relay are not dumpable.
 *
 * The credential: the parent checks its files as `relayd -n` does, in a
 * child forked for the check that exits at once (config_check), so that
 * today's errors stop relayd at start (78) and refuse a reload; the parent
 * itself only sees the config with the credential unread
 * (config_read_credentials(0)). The token process reads it after fork.
 *
 * In the relay: the sandbox (sandbox.c: no_new_privs, Landlock, seccomp,
 * before the first thread), spool (recover what is queued), listeners,
 * then READY.
 * Everything runs on one libevent loop, besides the spool's commit
 * thread and the delivery threads.
 */
#include "autoconf.h"

#include <sys/prctl.h>
#include <sys/resource.h>

#include <errno.h>
#include <malloc.h>
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
#include "config_doc.h"
#include "history.h"
#include "http.h"
#include "jwt.h"
#include "mime.h"
#include "proc.h"
#include "proctitle.h"
#include "sandbox.h"
#include "token.h"
#include "worker.h"
#include "log.h"
#include "smtp.h"
#include "spool.h"
#include "status.h"
#include "util.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define RELAYD_CONF	SYSCONFDIR "/relayd/relayd.conf"
#define RELAYD_ARENAS	2	/* malloc arenas (M_ARENA_MAX) */

static void
usage(int rc)
{
	fprintf(rc == 0 ? stdout : stderr,
	    "usage: relayd [-n] [-d] [-c file]\n"
	    "  -c file  configuration (default " RELAYD_CONF ")\n"
	    "  -n       check the configuration and exit (0 ok, 78 errors)\n"
	    "  -d       debug logging; with -n, print the [graph] settings "
	    "in force\n"
	    "  -D       print every key with its default and exit\n"
	    "  -M       print relayd.conf(5) and exit\n"
	    "  -V       print the version and exit\n"
	    "  --help   print this and exit\n");
	exit(rc);
}

/*
 * SIGHUP: the config file again. A file with errors is refused (each
 * error logged) and the one in force stays. Otherwise new SMTP sessions
 * take it: [smtp] limits and allow lists, [senders], [auth] users (the
 * users file is read again), certificates, [log] level; sessions open
 * keep the one they started with. What the delivery side, the spool and
 * the listeners read at start ([graph], [queue], [status], listen lines)
 * is logged as taking effect at restart. Old configs and users stay
 * allocated until exit: sessions may still point at them.
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
	struct worker_pool *pool;
	struct status	*status;
	int		 restart_needed;
	struct event	*expiry;	/* once a day: certificates */
};

/* Each line of text (which it takes apart) as a warning. */
void
log_lines(const char *prefix, char *text)
{
	char	*line, *save = NULL;

	for (line = strtok_r(text, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save))
		log_warnx("%s%s", prefix, line);
}

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
	    strcmp(key, "drain_timeout") != 0)
		return;
	if (strcmp(section, "auth") == 0 || strcmp(section, "log") == 0 ||
	    strcmp(section, "sendmail") == 0)
		return;
	log_warnx("reload: [%s] %s changed: takes effect at restart",
	    section, key);
	r->restart_needed = 1;
}

/* The config again: from fd (the parent opened it) or, -1, from the path. */
static void
reload_from(struct reloader *r, int fd)
{
	struct config	*cfg;
	struct auth	*auth = NULL;
	FILE		*mf;
	char		*errs = NULL, err[512];
	size_t		 len = 0;

	if ((mf = open_memstream(&errs, &len)) == NULL) {
		log_warn("reload: open_memstream");
		return;
	}
	cfg = fd != -1 ? config_load_fd(r->path, fd, mf) :
	    config_load(r->path, mf);
	fclose(mf);
	/* The errors that refuse it, or its warnings. */
	log_lines("reload: ", errs);
	free(errs);
	if (cfg == NULL) {
		log_warnx("reload refused: %s has errors; the configuration "
		    "in force stays", r->path);
		return;
	}
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
	if (r->status != NULL)
		status_set_config(r->status, cfg);
	log_info("reload: %s in force for new sessions", r->path);
}

static void
hup_cb(evutil_socket_t sig, short ev, void *arg)
{
	(void)sig;
	(void)ev;
	reload_from(arg, -1);
}

/*
 * SIGTERM, SIGINT: drain. New clients get 421, sessions finish the
 * transaction they are in (up to [smtp] drain_timeout), then the loop
 * ends and Graph requests in flight get their grace (worker_free). A
 * second signal stops at once.
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

/*
 * The loop's heartbeat to the parent, with the queue depth: the parent
 * sends systemd WATCHDOG=1 (a stuck loop stops them) and STATUS=, at half
 * the watchdog interval or every 10 s.
 */
struct heartbeat {
	struct event	*ev;
	struct spool	*spool;
	int		 ctl;
};

static void
heartbeat_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct heartbeat	*hb = arg;

	(void)fd;
	(void)ev;
	ctl_send(hb->ctl, CTL_HEARTBEAT, spool_count(hb->spool), -1);
}

static void
heartbeat_start(struct event_base *base, struct heartbeat *hb,
    struct spool *spool, int ctl, uint64_t ms)
{
	struct timeval	 tv = ms_tv(ms);

	hb->spool = spool;
	hb->ctl = ctl;
	hb->ev = event_new(base, -1, EV_PERSIST, heartbeat_cb, hb);
	event_add(hb->ev, &tv);
	heartbeat_cb(-1, 0, hb);
}

/*
 * The parent's messages: a new connection to the token process, or news
 * that it re-read a changed credential (SIGHUP): messages that waited for
 * a token are tried at once.
 */
struct relay_ctl {
	struct event		*ev;
	struct event_base	*base;
	struct token		*token;
	struct worker_pool	*pool;
	struct reloader		*reloader;
};

static void
ctl_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct relay_ctl	*rc = arg;
	struct ctl_msg		 m;
	size_t			 n;
	int			 passed, r;

	(void)ev;
	if ((r = ctl_recv(fd, &m, &passed)) == 0) {
		log_warnx("relay: the parent is gone; stopping");
		event_base_loopbreak(rc->base);
		return;
	}
	if (r == -1)
		return;
	if (m.type == CTL_TOKEN_FD && passed != -1 && rc->token != NULL) {
		token_connect(rc->token, passed);
		passed = -1;
	} else if (m.type == CTL_RELOAD && passed != -1)
		reload_from(rc->reloader, passed);
	else if (m.type == CTL_CRED_CHANGED && rc->token != NULL) {
		token_changed(rc->token);
		n = rc->pool != NULL ? worker_retry_token(rc->pool) : 0;
		log_info("reload: the next token request uses the new "
		    "credential; %zu message(s) waiting on a token tried now",
		    n);
	}
	if (passed != -1)
		close(passed);
}

/* The [graph] settings in force (cloud defaults applied), for the log. */
static char *
graph_summary(const struct config *cfg)
{
	char	*s, *scope = token_scope(cfg), *proxy = NULL;

	if (cfg->proxy != NULL)
		proxy = http_redact(cfg->proxy);
	xasprintf(&s, "url=%s login_url=%s scope=%s cloud=%s credential=%s "
	    "tenant=%s client_id=%s mailbox=%s workers=%llu%s%s",
	    cfg->graph_url, cfg->login_url, scope, config_cloud_name(cfg),
	    cfg->certificate_file == NULL ? "secret" :
	    cfg->assertion_alg == JWT_PS256 ? "certificate/PS256" :
	    "certificate/RS256", cfg->tenant, cfg->client_id, cfg->mailbox,
	    (unsigned long long)cfg->workers, proxy != NULL ? " proxy=" : "",
	    proxy != NULL ? proxy : "");
	free(scope);
	free(proxy);
	return s;
}

/* Each connection needs a descriptor; take what the hard limit allows. */
static void
raise_nofile(void)
{
	struct rlimit	 rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/*
 * From here on: no_new_privs, seccomp and Landlock (sandbox.c), unless
 * [security] sandbox = no. The Graph credential files are out of reach
 * (the relay never reads them: the token process does).
 */
static int
enter_sandbox(const struct config *cfg, const char *path)
{
	struct sandbox_paths	 paths;
	char			 err[512];

	if (!cfg->sandbox) {
		log_warnx("sandbox: off ([security] sandbox = no): no seccomp "
		    "filter, no Landlock");
		return 0;
	}
	sandbox_paths_from_config(&paths, cfg, path);
	if (sandbox_enter(SANDBOX_RELAY, &paths, err, sizeof(err)) == -1) {
		log_msg(LOG_LVL_ERR, "%s (set [security] sandbox = no to run "
		    "without it)", err);
		return -1;
	}
	return 0;
}

static uint64_t	started_ms;	/* wall clock, set by main */

/* The relay process: today's daemon but for the credential. */
int
relay_main(const char *path, struct config *cfg, const int *fds, int ctl,
    uint64_t heartbeat_ms)
{
	struct event_base	*base;
	struct worker_pool	*pool = NULL;
	struct token		*token = NULL;
	struct auth		*auth = NULL;
	struct event		*ev_term = NULL, *ev_int = NULL, *ev_hup = NULL;
	struct heartbeat	 hb = { NULL, NULL, -1 };
	struct relay_ctl	 rctl;
	struct stopper		 stopper;
	struct reloader		 reloader;
	size_t			 i;
	struct spool		*spool = NULL;
	struct smtp		*smtp = NULL;
	struct status		*status = NULL;
	struct status_env	 senv;
	struct history		*history = NULL;
	sigset_t		 set;
	char			 err[512], *summary;
	int			 rc = 0, http_ok = 0;

	memset(&senv, 0, sizeof(senv));
	memset(&stopper, 0, sizeof(stopper));
	memset(&reloader, 0, sizeof(reloader));
	memset(&rctl, 0, sizeof(rctl));
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
	/* Before the first thread (spool_open's): Landlock binds threads
	 * started after it. */
	if (enter_sandbox(cfg, path) == -1) {
		rc = EX_OSERR;
		goto out;
	}
	if ((spool = spool_open(cfg->spool_dir, cfg->sync_method, base, err,
	    sizeof(err))) == NULL) {
		log_msg(LOG_LVL_ERR, "%s", err);
		rc = EX_CANTCREAT;
		goto out;
	}
	log_info("spool: %zu queued message(s) found dir=%s",
	    spool_count(spool), cfg->spool_dir);
	history = history_new(cfg->spool_dir, cfg->history_ms);

	mime_init();		/* GMime: delivery, and From: checks */
	if (cfg->graph_enabled) {
		if ((pool = worker_new(base, cfg, spool, token, err,
		    sizeof(err))) == NULL) {
			log_msg(LOG_LVL_ERR, "%s", err);
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
	rctl.base = base;
	rctl.token = token;
	rctl.pool = pool;
	rctl.reloader = &reloader;
	rctl.ev = event_new(base, ctl, EV_READ | EV_PERSIST, ctl_cb, &rctl);
	event_add(rctl.ev, NULL);

	if (cfg->users_file != NULL) {
		if ((auth = auth_new(cfg, err, sizeof(err))) == NULL) {
			log_msg(LOG_LVL_ERR, "%s", err);
			rc = EX_CONFIG;
			goto out;
		}
		log_info("auth: users_file=%s mechanisms=\"%s\"",
		    cfg->users_file, auth_mechanisms(auth));
	}
	reloader.auth = auth;
	smtp_session_init(cfg);
	smtp_session_set_auth(auth);
	smtp_session_set_pool(pool);
	smtp_session_set_history(history);
	smtp = smtp_new(base, cfg, spool);
	if (smtp_listen(smtp, fds, err, sizeof(err)) == -1) {
		log_msg(LOG_LVL_ERR, "%s", err);
		rc = EX_OSERR;
		goto out;
	}
	senv.base = base;
	senv.cfg = cfg;
	senv.smtp = smtp;
	senv.spool = spool;
	senv.pool = pool;
	senv.token = token;
	senv.auth = &reloader.auth;
	senv.history = history;
	/* The parent's start: a relay restart is no new uptime. */
	senv.started_ms = started_ms;
	if ((status = status_new(&senv, err, sizeof(err))) == NULL) {
		log_msg(LOG_LVL_ERR, "%s", err);
		rc = EX_CONFIG;
		goto out;
	}
	stopper.base = base;
	stopper.smtp = smtp;
	stopper.timeout_ms = cfg->drain_timeout_ms;
	ev_term = evsignal_new(base, SIGTERM, stop_cb, &stopper);
	ev_int = evsignal_new(base, SIGINT, stop_cb, &stopper);
	reloader.path = path;
	reloader.cfg = cfg;
	reloader.smtp = smtp;
	reloader.pool = pool;
	reloader.status = status;
	ev_hup = evsignal_new(base, SIGHUP, hup_cb, &reloader);
	evsignal_add(ev_term, NULL);
	evsignal_add(ev_int, NULL);
	evsignal_add(ev_hup, NULL);
	/* Blocked in the parent (its signalfd): here libevent's. */
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_UNBLOCK, &set, NULL);

	log_info("relayd started version=%s", PACKAGE_VERSION);
	ctl_send(ctl, CTL_READY, 0, -1);
	heartbeat_start(base, &hb, spool, ctl, heartbeat_ms);
	{
		struct timeval day = { 86400, 0 };

		reloader.expiry = event_new(base, -1, EV_PERSIST, expiry_cb,
		    &reloader);
		event_add(reloader.expiry, &day);
	}
	event_base_dispatch(base);
	if (hb.ev != NULL)
		event_free(hb.ev);
	if (stopper.tick != NULL)
		event_free(stopper.tick);

out:
	/*
	 * Commits in flight finish (and their sessions hear of it) before
	 * the sessions go, and the sessions before the listeners' tables.
	 */
	status_free(status);
	smtp_session_set_pool(NULL);	/* sessions left wait for nothing */
	worker_free(pool);
	spool_free(spool);
	token_free(token);
	if (http_ok)
		http_cleanup();
	smtp_session_shutdown();
	smtp_free(smtp);
	history_free(history);	/* after everything that records */
	auth_free(reloader.auth);
	for (i = 0; i < reloader.nold_auth; i++)
		auth_free(reloader.old_auth[i]);
	free(reloader.old_auth);
	for (i = 0; i < reloader.nold; i++)
		if (reloader.old[i] != cfg)
			config_free(reloader.old[i]);
	if (reloader.cfg != cfg)
		config_free(reloader.cfg);
	free(reloader.old);
	if (ev_term != NULL)
		event_free(ev_term);
	if (ev_int != NULL)
		event_free(ev_int);
	if (ev_hup != NULL)
		event_free(ev_hup);
	if (reloader.expiry != NULL)
		event_free(reloader.expiry);
	if (rctl.ev != NULL)
		event_free(rctl.ev);
	event_base_free(base);
	config_free(cfg);
	return rc;
}

/* The config, quietly: the check (config_check) printed what it found. */
static struct config *
config_quiet(const char *path)
{
	struct config	*cfg;
	FILE		*mf;
	char		*text = NULL;
	size_t		 len = 0;

	if ((mf = open_memstream(&text, &len)) == NULL)
		return NULL;
	cfg = config_load(path, mf);
	fclose(mf);
	if (cfg == NULL)
		fputs(text, stderr);	/* changed since the check */
	free(text);
	return cfg;
}

/* relayd -n: not the service, so the credential is read here. */
static int
check_only(const char *path, int debug)
{
	struct config	*cfg;
	char		*summary;

	if ((cfg = config_load(path, stderr)) == NULL)
		return EX_CONFIG;
	if (debug && cfg->graph_enabled) {
		summary = graph_summary(cfg);
		printf("graph: %s\n", summary);
		free(summary);
	}
	printf("%s: configuration OK\n", path);
	config_free(cfg);
	return 0;
}

int
main(int argc, char *argv[])
{
	const char	*arg = RELAYD_CONF;
	char		*path;
	struct config	*cfg;
	char		*text, err[512];
	int		 ch, check = 0, debug = 0, rc, *fds;
	size_t		 i;

	proctitle_init(argc, argv);
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "-h") == 0))
		usage(0);
	while ((ch = getopt(argc, argv, "c:dDMnV")) != -1) {
		switch (ch) {
		case 'c':
			arg = optarg;
			break;
		case 'd':
			debug = 1;
			break;
		case 'D':
			config_dump_defaults(stdout);
			return 0;
		case 'M':
			config_write_man(stdout);
			return 0;
		case 'n':
			check = 1;
			break;
		case 'V':
			printf("relayd %s\n", PACKAGE_VERSION);
			return 0;
		default:
			usage(EX_USAGE);
		}
	}
	if (optind != argc)
		usage(EX_USAGE);
	log_init("relayd", LOG_LVL_INFO);
	if (check)
		return check_only(arg, debug);
	started_ms = wall_us() / 1000;
	path = xstrdup(arg);	/* the title takes argv's memory */
	rc = config_check(path, &text);
	fputs(text, stderr);
	free(text);
	config_read_credentials(0);
	if (rc != 0 || (cfg = config_quiet(path)) == NULL) {
		free(path);
		return EX_CONFIG;
	}
	log_set_level(debug ? LOG_LVL_DEBUG : cfg->log_level);
	/*
	 * glibc gives each thread that allocates an arena of its own and
	 * keeps what was freed in it: with 32 workers, RSS crept up 35 MiB
	 * in bench/soak-all, flat with 2 arenas (bench/README.md).
	 */
	mallopt(M_ARENA_MAX, RELAYD_ARENAS);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	proctitle_set("relayd: parent");
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	if ((fds = smtp_open(cfg, err, sizeof(err))) == NULL) {
		log_msg(LOG_LVL_ERR, "%s", err);
		config_free(cfg);
		free(path);
		return EX_OSERR;
	}
	rc = parent_run(path, cfg, fds);
	for (i = 0; i < cfg->nlisten; i++)
		close(fds[i]);
	free(fds);
	config_free(cfg);
	free(path);
	if (rc == 0)
		log_info("relayd stopped");
	return rc;
}

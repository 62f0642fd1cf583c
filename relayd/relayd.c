/*
 * relayd.c - main: flags, config, start-up order, signals, shutdown.
 *
 * Start-up: config (exit 78 on any error), spool (recover what is queued),
 * listeners, then READY=1 to systemd. Everything after that runs on one
 * libevent loop; the spool's commit thread is the only other thread.
 */
#include "autoconf.h"

#include <sys/resource.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include <event2/event.h>
#include <systemd/sd-daemon.h>

#include "auth.h"
#include "config.h"
#include "http.h"
#include "jwt.h"
#include "mime.h"
#include "token.h"
#include "worker.h"
#include "log.h"
#include "smtp.h"
#include "spool.h"
#include "util.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define RELAYD_CONF	SYSCONFDIR "/relayd/relayd.conf"

static void
usage(void)
{
	fprintf(stderr, "usage: relayd [-n] [-d] [-c file]\n"
	    "  -c file  configuration (default " RELAYD_CONF ")\n"
	    "  -n       check the configuration and exit (0 ok, 78 errors)\n"
	    "  -d       debug logging; with -n, print the [graph] settings "
	    "in force\n"
	    "  -D       print every key with its default and exit\n"
	    "  -M       print relayd.conf(5) and exit\n"
	    "  -V       print the version and exit\n");
	exit(EX_USAGE);
}

/* SIGHUP: certificates renewed on disk are taken up; sessions go on. */
static void
hup_cb(evutil_socket_t sig, short ev, void *arg)
{
	smtp_reload_tls(arg);
}

static void
stop_cb(evutil_socket_t sig, short ev, void *arg)
{
	struct event_base	*base = arg;

	(void)ev;
	log_info("relayd: signal %d, stopping", (int)sig);
	event_base_loopbreak(base);
}

/*
 * systemd: WATCHDOG=1 from the event loop (a stuck loop stops them), and
 * STATUS= with the queue depth, at half the watchdog interval or every
 * 10 s. Nothing when not run by systemd.
 */
struct heartbeat {
	struct event	*ev;
	struct spool	*spool;
	int		 watchdog;
};

static void
heartbeat_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct heartbeat	*hb = arg;

	(void)fd;
	(void)ev;
	sd_notifyf(0, "%sSTATUS=%zu message(s) queued",
	    hb->watchdog ? "WATCHDOG=1\n" : "", spool_count(hb->spool));
}

static void
heartbeat_start(struct event_base *base, struct heartbeat *hb,
    struct spool *spool)
{
	struct timeval	 tv = { 10, 0 };
	uint64_t	 usec = 0;

	hb->spool = spool;
	if (getenv("NOTIFY_SOCKET") == NULL)
		return;
	if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
		hb->watchdog = 1;
		if (usec / 2 < 10000000) {
			tv.tv_sec = (time_t)(usec / 2 / 1000000);
			tv.tv_usec = (suseconds_t)(usec / 2 % 1000000);
		}
	}
	hb->ev = event_new(base, -1, EV_PERSIST, heartbeat_cb, hb);
	event_add(hb->ev, &tv);
	heartbeat_cb(-1, 0, hb);
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

int
main(int argc, char *argv[])
{
	const char		*path = RELAYD_CONF;
	struct config		*cfg;
	struct event_base	*base;
	struct worker_pool	*pool = NULL;
	struct token		*token = NULL;
	struct auth		*auth = NULL;
	struct event		*ev_term, *ev_int, *ev_hup;
	struct heartbeat	 hb = { NULL, NULL, 0 };
	struct spool		*spool;
	struct smtp		*smtp;
	char			 err[512], *summary;
	int			 ch, check = 0, debug = 0;

	while ((ch = getopt(argc, argv, "c:dDMnV")) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
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
			usage();
		}
	}
	if (optind != argc)
		usage();
	log_init("relayd", LOG_LVL_INFO);

	if ((cfg = config_load(path, stderr)) == NULL)
		return EX_CONFIG;
	if (check) {
		if (debug && cfg->graph_enabled) {
			summary = graph_summary(cfg);
			printf("graph: %s\n", summary);
			free(summary);
		}
		printf("%s: configuration OK\n", path);
		config_free(cfg);
		return 0;
	}
	log_set_level(debug ? LOG_LVL_DEBUG : cfg->log_level);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();

	if ((base = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	if ((spool = spool_open(cfg->spool_dir, cfg->sync_method, base, err,
	    sizeof(err))) == NULL) {
		log_msg(LOG_LVL_ERR, "%s", err);
		return EX_CANTCREAT;
	}
	log_info("spool: %zu queued message(s) found dir=%s",
	    spool_count(spool), cfg->spool_dir);

	mime_init();		/* GMime: delivery, and From: checks */
	if (cfg->graph_enabled) {
		if (http_init(cfg, err, sizeof(err)) == -1 ||
		    (token = token_new(cfg, err, sizeof(err))) == NULL) {
			log_msg(LOG_LVL_ERR, "%s", err);
			return EX_CONFIG;
		}
		if ((pool = worker_new(base, cfg, spool, token, err,
		    sizeof(err))) == NULL) {
			log_msg(LOG_LVL_ERR, "%s", err);
			return EX_OSERR;
		}
		summary = graph_summary(cfg);
		log_info("graph: delivering %s", summary);
		free(summary);
	} else
		log_warnx("graph: [graph] is not configured; messages are "
		    "queued and not delivered");

	if (cfg->users_file != NULL) {
		if ((auth = auth_new(cfg, err, sizeof(err))) == NULL) {
			log_msg(LOG_LVL_ERR, "%s", err);
			return EX_CONFIG;
		}
		log_info("auth: users_file=%s mechanisms=\"%s\"",
		    cfg->users_file, auth_mechanisms(auth));
	}
	smtp_session_init(cfg);
	smtp_session_set_auth(auth);
	smtp = smtp_new(base, cfg, spool);
	if (smtp_listen(smtp, err, sizeof(err)) == -1) {
		log_msg(LOG_LVL_ERR, "%s", err);
		return EX_OSERR;
	}
	ev_term = evsignal_new(base, SIGTERM, stop_cb, base);
	ev_int = evsignal_new(base, SIGINT, stop_cb, base);
	ev_hup = evsignal_new(base, SIGHUP, hup_cb, smtp);
	evsignal_add(ev_term, NULL);
	evsignal_add(ev_int, NULL);
	evsignal_add(ev_hup, NULL);

	log_info("relayd started version=%s", PACKAGE_VERSION);
	sd_notify(0, "READY=1");
	heartbeat_start(base, &hb, spool);
	event_base_dispatch(base);
	sd_notify(0, "STOPPING=1");
	if (hb.ev != NULL)
		event_free(hb.ev);

	/*
	 * Commits in flight finish (and their sessions hear of it) before
	 * the sessions go, and the sessions before the listeners' tables.
	 */
	worker_free(pool);
	spool_free(spool);
	token_free(token);
	if (cfg->graph_enabled)
		http_cleanup();
	smtp_session_shutdown();
	smtp_free(smtp);
	auth_free(auth);
	event_free(ev_term);
	event_free(ev_int);
	event_free(ev_hup);
	event_base_free(base);
	config_free(cfg);
	log_info("relayd stopped");
	return 0;
}

/*
 * relayd.c - main (flags, config check) and what the children share.
 *
 * The processes (privilege separation, issue 18):
 *
 *   relayd: parent     supervisor: the config (checked, never a
 *     |                credential), the listening sockets, systemd (READY,
 *     |                WATCHDOG, STOPPING), SIGHUP and SIGTERM; forks and
 *     |                restarts the three below (parent.c). Single-
 *     |                threaded; holds no secret and no token.
 *     +-- relayd: token    the only process that reads client_secret_file,
 *     |                    private_key_file or the systemd credential;
 *     |                    fetches access tokens, hands out only those
 *     |                    (token_proc.c, token.c).
 *     +-- relayd: deliver  the queue: reads the spool at its start, owns
 *     |                    its index, state lines and removals (spool.c
 *     |                    SPOOL_DELIVERY), the scheduler and delivery
 *     |                    threads (worker.c, deliver.c: MIME -> Graph),
 *     |                    dead letters and bounces, the status socket,
 *     |                    the history (deliver_main.c). Holds access
 *     |                    tokens while it uses them, never the credential.
 *     |                    Sandbox role DELIVER.
 *     +-- relayd: smtp     takes mail: the listeners (inherited), SMTP,
 *                          TLS, AUTH, PROXY; commits to the spool as intake
 *                          (SPOOL_INTAKE: appends its own segments, nothing
 *                          else) (smtp_main.c). Never a token nor the
 *                          credential. Sandbox role SMTP (connect refused).
 *
 * What crosses (each a socketpair, SOCK_SEQPACKET):
 *
 *   parent <-> each    control (proc.h): child -> READY, HEARTBEAT (its
 *                      loop's; deliver's with the queue depth): WATCHDOG=1
 *                      while both smtp and deliver beat; token ->
 *                      CRED_CHANGED (after SIGHUP), passed on to deliver;
 *                      parent -> TOKEN_FD (token, deliver), LINK_FD (smtp,
 *                      deliver): one end each of a new pair (SCM_RIGHTS).
 *   deliver <-> token  token requests (token.h: struct token_req, the
 *                      token Graph refused if any) and answers (struct
 *                      token_rep: the access token, its life, the failure
 *                      state and the admin's next step).
 *   smtp <-> deliver   the link (link.h; link_smtp.c, link_deliver.c):
 *                      smtp -> HELLO (its intake paused, nothing of its
 *                      own open), QUEUED (qid, segment, offset, length of
 *                      a durable record: deliver reads it back as at
 *                      start), CLOSED (a segment gets no more appends),
 *                      HISTORY (an accepted message's row), FIGURES (what
 *                      status and the metrics show of SMTP: sessions,
 *                      listeners, counters, AUTH failures and lockouts),
 *                      WATCH / UNWATCH (reply_after = graph);
 *                      deliver -> GO (the spool is read: commit), EMPTIED
 *                      (smtp's open segment has no queued record left),
 *                      ANSWER (the first attempt's outcome), UNLOCK
 *                      (relayctl unlock).
 *
 * Whenever a child is (re)started the parent makes new pairs for it
 * (token <-> deliver when either restarts; smtp <-> deliver when either
 * does). The listening sockets are the parent's and inherited by each
 * smtp child: the port takes connections into its backlog while it
 * restarts. Children die with the parent (PR_SET_PDEATHSIG); none is
 * dumpable.
 *
 * The spool between smtp and deliver (who owns what: spool.c). A new
 * deliver reads queue/ only after smtp's HELLO (smtp paused its commits
 * and closed its open segment); smtp commits again at GO. A new smtp
 * starts paused and says HELLO; deliver first adopts what the dead one
 * committed but never announced (spool_catch_up), then says GO. An
 * announcement lost or doubled loses nothing and queues nothing twice; a
 * message in flight when deliver dies is marked so in its state line and
 * sent again by the next one, logged possible_duplicate=yes (worker.c).
 *
 * SIGTERM: the parent stops smtp first (it drains: 421 to new clients,
 * sessions finish), then deliver (requests in flight get their grace),
 * then token. SIGHUP: each child takes its part of the new config.
 * "relayd started" and READY=1 come from the parent once smtp and deliver
 * are both ready.
 *
 * The credential: the parent checks its files as `relayd -n` does, in a
 * child forked for the check that exits at once (config_check), so that
 * today's errors stop relayd at start (78) and refuse a reload; the parent
 * itself only sees the config with the credential unread
 * (config_reads(0)). The token process reads it after fork.
 *
 * In each of smtp and deliver: the sandbox (sandbox.c: no_new_privs,
 * Landlock, seccomp, before the first thread), then its part of the
 * spool, then READY. Each runs one libevent loop, besides the spool's
 * commit thread (both), the delivery threads and the history writer
 * (deliver).
 */
#include "autoconf.h"

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>

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
#include "link_deliver.h"
#include "link_smtp.h"
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

/* Each line of text (which it takes apart) as a warning. */
void
log_lines(const char *prefix, char *text)
{
	char	*line, *save = NULL;

	for (line = strtok_r(text, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save))
		log_warnx("%s%s", prefix, line);
}

static int	sandboxed;	/* this child entered its sandbox */

/*
 * A reload in a child: the file again, its errors (or warnings) logged.
 * From the descriptor the parent opened where there is one: Landlock
 * grants relayd.conf by inode where a credential shares its directory,
 * and an editor that saves by rename makes a new inode.
 */
static struct config *
reload_load(const char *path, int fd, int quiet)
{
	struct config	*cfg;
	FILE		*mf;
	char		*errs = NULL;
	size_t		 len = 0;
	int		 denied;

	if ((mf = open_memstream(&errs, &len)) == NULL) {
		log_warn("reload: open_memstream");
		return NULL;
	}
	cfg = fd != -1 ? config_load_fd(path, fd, mf) : config_load(path, mf);
	fclose(mf);
	/* Quiet: warnings are the SMTP process's to log, refusals not. */
	if (!quiet || cfg == NULL)
		log_lines("reload: ", errs);
	denied = errs != NULL && strstr(errs, "Permission denied") != NULL;
	free(errs);
	if (cfg == NULL)
		log_warnx("reload refused%s: %s has errors; the configuration "
		    "in force stays", quiet ? " by the delivery process" : "",
		    path);
	/*
	 * The parent's check could read them: Landlock grants files by
	 * inode in a directory that also holds a credential, and a file
	 * replaced by rename is a new one.
	 */
	if (cfg == NULL && denied && sandboxed)
		log_warnx("reload: a file replaced by rename (cp, mv, an "
		    "editor) beside a credential is out of the sandbox's reach "
		    "until relayd restarts: systemctl restart relayd, or keep "
		    "the credential in a directory of its own (the systemd "
		    "credential is)");
	return cfg;
}

struct config *
config_reload(const char *path, int fd)
{
	return reload_load(path, fd, 0);
}

struct config *
config_reload_quiet(const char *path, int fd)
{
	return reload_load(path, fd, 1);
}

/*
 * A child's heartbeat to the parent (the SMTP process's, and the delivery
 * process's with the queue depth): the parent sends systemd WATCHDOG=1
 * (a stuck loop in either stops them) and STATUS=, at half the watchdog
 * interval or every 10 s.
 */
struct heartbeat {
	struct event	*ev;
	struct spool	*spool;
	int		 ctl;
	uint64_t	 ms;
	int		(*alive)(uint64_t);
};

static void
heartbeat_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct heartbeat	*hb = arg;

	(void)fd;
	(void)ev;
	/* A stuck thread of this loop's (the other SMTP loops) counts too. */
	if (hb->alive != NULL && !hb->alive(2 * hb->ms + 1000))
		return;
	ctl_send(hb->ctl, CTL_HEARTBEAT, hb->spool != NULL ?
	    spool_count(hb->spool) : 0, -1);
}

void
heartbeat_watch(struct heartbeat *hb, int (*alive)(uint64_t))
{
	hb->alive = alive;
}

struct heartbeat *
heartbeat_start(struct event_base *base, struct spool *spool, int ctl,
    uint64_t ms)
{
	struct heartbeat	*hb = xcalloc(1, sizeof(*hb));
	struct timeval		 tv = ms_tv(ms);

	hb->spool = spool;
	hb->ctl = ctl;
	hb->ms = ms;
	hb->ev = event_new(base, -1, EV_PERSIST, heartbeat_cb, hb);
	event_add(hb->ev, &tv);
	heartbeat_cb(-1, 0, hb);
	return hb;
}

void
heartbeat_free(struct heartbeat *hb)
{
	if (hb == NULL)
		return;
	event_free(hb->ev);
	free(hb);
}

void
proc_events_add(struct proc_events *pe, struct event_base *base, int ctl,
    event_callback_fn ctl_cb, void *ctl_arg, event_callback_fn stop_cb,
    void *stop_arg, event_callback_fn hup_cb, void *hup_arg)
{
	sigset_t	 set;
	size_t		 i;

	pe->ev[0] = event_new(base, ctl, EV_READ | EV_PERSIST, ctl_cb,
	    ctl_arg);
	pe->ev[1] = evsignal_new(base, SIGTERM, stop_cb, stop_arg);
	pe->ev[2] = evsignal_new(base, SIGINT, stop_cb, stop_arg);
	pe->ev[3] = evsignal_new(base, SIGHUP, hup_cb, hup_arg);
	for (i = 0; i < NELEM(pe->ev); i++)
		event_add(pe->ev[i], NULL);
	/* Blocked in the parent (its signalfd): here libevent's. */
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
}

void
proc_events_free(struct proc_events *pe)
{
	size_t	 i;

	for (i = 0; i < NELEM(pe->ev); i++)
		if (pe->ev[i] != NULL)
			event_free(pe->ev[i]);
}

/* The [graph] settings in force (cloud defaults applied), for the log. */
char *
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
 * From here on: no_new_privs, seccomp and Landlock (sandbox.c) in the
 * role given, unless [security] sandbox = no. The Graph credential files
 * are out of reach (only the token process reads them).
 */
int
proc_sandbox(const struct config *cfg, const char *path,
    enum sandbox_role role)
{
	struct sandbox_paths	 paths;
	char			 err[512];

	if (!cfg->sandbox) {
		log_warnx("sandbox: off ([security] sandbox = no): no seccomp "
		    "filter, no Landlock");
		return 0;
	}
	sandbox_paths_from_config(&paths, cfg, path, role);
	if (sandbox_enter(role, &paths, err, sizeof(err)) == -1) {
		log_msg(LOG_LVL_ERR, "%s (set [security] sandbox = no to run "
		    "without it)", err);
		return -1;
	}
	sandboxed = 1;
	return 0;
}

static uint64_t	started_ms;	/* wall clock, set by main */

uint64_t
relayd_started_ms(void)
{
	return started_ms;
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
	config_reads(0);
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

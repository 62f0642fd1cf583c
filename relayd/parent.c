/*
 * parent.c - the parent ("relayd: parent"): forks the token, deliver and
 * smtp children, passes them their connections (token <-> deliver, the
 * link smtp <-> deliver), restarts them when they die, and is what
 * systemd and the admin talk to (see the picture in relayd.c).
 *
 * It is single-threaded, runs no libevent, curl or OpenSSL, and never
 * holds a credential or a token, so forking again later hands nothing on.
 * Signals are blocked and read from a signalfd in one poll loop.
 *
 * A child that dies is logged (which, pid, signal or status) and started
 * again after 0.5 s; again within 10 s of its start, after twice as long,
 * up to 10 s. A child that dies before it was ever ready at start (the
 * token process can't read the credential: 78; the delivery process
 * can't open the spool...) stops relayd with its exit code: restarting
 * would not help. relayd is started (READY=1, "relayd started") once
 * smtp and deliver both are; WATCHDOG=1 goes while both beat.
 */
#include "autoconf.h"

#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "config.h"
#include "config_check.h"
#include "log.h"
#include "proc.h"
#include "token.h"
#include "util.h"

#define RESTART_MIN_MS		500
#define RESTART_MAX_MS		10000
#define RESTART_QUICK_MS	10000	/* died this soon: back off */
#define TOKEN_STOP_MS		2000	/* then SIGKILL: it holds nothing */
#define HEARTBEAT_MAX_MS	10000

struct child {
	const char	*name;		/* "token", "smtp", "deliver" */
	const char	*title;
	pid_t		 pid;		/* 0: not running */
	int		 ctl;		/* the parent's end, -1: none */
	int		 ready;		/* said CTL_READY since its start */
	int		 ever_ready;
	uint64_t	 beat;		/* its last heartbeat, now_ms() */
	uint64_t	 started;	/* now_ms() */
	uint64_t	 backoff;
	uint64_t	 restart_at;	/* 0: none due */
};

struct parent {
	const char	*path;
	struct config	*cfg;		/* as at start: the children get it */
	int		*fds;		/* listening sockets */
	int		 sfd;		/* signalfd */
	pid_t		 self;
	int		 reloaded;	/* a reload was taken since start */
	int		 stopping;
	uint64_t	 token_kill_at;	/* stopping: SIGKILL the token then */
	uint64_t	 queued;	/* the delivery process's last count */
	int		 watchdog;
	uint64_t	 heartbeat_ms;
	int		 rc;		/* when it ends */
	int		 done;
	int		 started;	/* READY=1 said */
	struct child	 token, smtp, deliver;
};

#define NCHILD	3
static struct child *
child_at(struct parent *pp, int i)
{
	return i == 0 ? &pp->token : i == 1 ? &pp->deliver : &pp->smtp;
}

static int
all_gone(const struct parent *pp)
{
	return pp->token.pid == 0 && pp->smtp.pid == 0 && pp->deliver.pid == 0;
}

int
config_check(const char *path, char **text)
{
	FILE	*f, *mf;
	char	 buf[4096];
	size_t	 len = 0;
	ssize_t	 n;
	pid_t	 pid, self = getpid();
	struct config	*cfg;
	int	 p[2], st;

	*text = NULL;
	if (pipe2(p, O_CLOEXEC) == -1 || (pid = fork()) == -1)
		fatal("config check: fork");
	if (pid == 0) {
		close(p[0]);
		prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
		if (getppid() != self)
			_exit(EX_CONFIG);
		prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
		config_reads(CONFIG_READ_ALL);
		if ((f = fdopen(p[1], "w")) == NULL)
			_exit(EX_OSERR);
		cfg = config_load(path, f);
		st = cfg == NULL ? EX_CONFIG : 0;
		config_free(cfg);
		fclose(f);
		_exit(st);
	}
	close(p[1]);
	if ((mf = open_memstream(text, &len)) == NULL)
		fatal("config check: open_memstream");
	while ((n = read(p[0], buf, sizeof(buf))) != 0)
		if (n > 0)
			fwrite(buf, 1, (size_t)n, mf);
		else if (errno != EINTR)
			break;
	fclose(mf);
	close(p[0]);
	while (waitpid(pid, &st, 0) == -1 && errno == EINTR)
		;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : EX_CONFIG;
}

static void
child_start(struct parent *pp, struct child *c)
{
	int	 sp[2], rc, i;
	pid_t	 pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) == -1 ||
	    (pid = fork()) == -1) {
		log_warn("%s process: not started", c->name);
		c->restart_at = now_ms() + RESTART_MAX_MS;
		return;
	}
	if (pid == 0) {
		close(sp[0]);
		close(pp->sfd);
		for (i = 0; i < NCHILD; i++)
			if (child_at(pp, i)->ctl != -1)
				close(child_at(pp, i)->ctl);
		proc_child(c->title, pp->self);
		/* The listeners are the SMTP process's alone. */
		for (i = 0; c != &pp->smtp && i < (int)pp->cfg->nlisten; i++)
			close(pp->fds[i]);
		/* What each reloads: the check ran with CONFIG_READ_ALL. */
		config_reads(c == &pp->smtp ? CONFIG_READ_SMTP : 0);
		if (c == &pp->token)
			rc = token_proc(pp->path, pp->cfg, sp[1]);
		else if (c == &pp->smtp)
			rc = smtp_main(pp->path, pp->cfg, pp->fds, sp[1],
			    pp->heartbeat_ms);
		else
			rc = deliver_main(pp->path, pp->cfg, sp[1],
			    pp->heartbeat_ms);
		exit(rc);
	}
	close(sp[1]);
	c->ctl = sp[0];
	c->pid = pid;
	c->ready = 0;
	c->started = now_ms();
	c->restart_at = 0;
	log_debug("%s process started pid=%d", c->name, (int)pid);
}

/* A new connection between two children, one end to each. */
static void
connect_pair(struct child *a, struct child *b, enum ctl_type type)
{
	int	 sp[2];

	if (a->pid == 0 || b->pid == 0 || a->ctl == -1 || b->ctl == -1)
		return;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) == -1) {
		log_warn("%s <-> %s connection", a->name, b->name);
		return;
	}
	if (ctl_send(a->ctl, type, 0, sp[0]) == -1 ||
	    ctl_send(b->ctl, type, 0, sp[1]) == -1)
		log_warn("%s <-> %s connection: not passed", a->name, b->name);
	close(sp[0]);
	close(sp[1]);
}

/* c was (re)started: its connections are new. */
static void
connect_children(struct parent *pp, struct child *c)
{
	if (c != &pp->smtp)
		connect_pair(&pp->token, &pp->deliver, CTL_TOKEN_FD);
	if (c != &pp->token)
		connect_pair(&pp->smtp, &pp->deliver, CTL_LINK_FD);
}

/* Stopping: the next child in line goes (smtp, deliver, then token). */
static void
stop_next(struct parent *pp, int sig)
{
	if (pp->smtp.pid != 0)
		kill(pp->smtp.pid, sig);
	else if (pp->deliver.pid != 0)
		kill(pp->deliver.pid, SIGTERM);
	else if (pp->token.pid != 0 && pp->token_kill_at == 0) {
		kill(pp->token.pid, SIGTERM);
		pp->token_kill_at = now_ms() + TOKEN_STOP_MS;
	}
	pp->done = all_gone(pp);
}

static void
child_died(struct parent *pp, struct child *c, pid_t pid, int st)
{
	uint64_t	 now = now_ms();
	int		 code = WIFEXITED(st) ? WEXITSTATUS(st) : EX_SOFTWARE;
	int		 i;

	c->pid = 0;
	c->ready = 0;
	if (c->ctl != -1) {
		close(c->ctl);
		c->ctl = -1;
	}
	if (pp->stopping) {
		if (c != &pp->token)
			stop_next(pp, SIGTERM);
		pp->done = all_gone(pp);
		return;
	}
	if (!c->ever_ready) {
		/* At start: the child said why; restarting won't help. */
		log_warnx("%s process pid=%d %s %d at start; relayd stops",
		    c->name, (int)pid, WIFSIGNALED(st) ? "killed by signal" :
		    "exited with status", WIFSIGNALED(st) ? WTERMSIG(st) :
		    code);
		pp->rc = code != 0 ? code : EX_SOFTWARE;
		pp->stopping = 1;
		for (i = 0; i < NCHILD; i++)
			if (child_at(pp, i)->pid != 0)
				kill(child_at(pp, i)->pid, SIGKILL);
		pp->done = all_gone(pp);
		return;
	}
	c->backoff = now - c->started >= RESTART_QUICK_MS || c->backoff == 0 ?
	    RESTART_MIN_MS : c->backoff * 2;
	if (c->backoff > RESTART_MAX_MS)
		c->backoff = RESTART_MAX_MS;
	c->restart_at = now + c->backoff;
	if (WIFSIGNALED(st))
		log_warnx("%s process pid=%d killed by signal %d (%s); "
		    "restarted in %.1fs", c->name, (int)pid, WTERMSIG(st),
		    strsignal(WTERMSIG(st)), (double)c->backoff / 1000.0);
	else
		log_warnx("%s process pid=%d exited with status %d; restarted "
		    "in %.1fs", c->name, (int)pid, code,
		    (double)c->backoff / 1000.0);
}

static void
reap(struct parent *pp)
{
	pid_t	 pid;
	int	 st, i;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
		for (i = 0; i < NCHILD; i++)
			if (pid == child_at(pp, i)->pid) {
				child_died(pp, child_at(pp, i), pid, st);
				break;
			}
}

/*
 * The token process re-reads the file (SIGHUP). The SMTP and delivery
 * processes take it from a descriptor opened here: their Landlock rules
 * grant relayd.conf by inode where a credential shares its directory,
 * and an editor that saves by rename makes a new inode. If the file
 * can't be opened here, a SIGHUP lets the child try (and say why).
 */
static void
reload_child(struct parent *pp, struct child *c)
{
	int	 fd = -1;

	if (c == &pp->token ||
	    (fd = open(pp->path, O_RDONLY | O_CLOEXEC)) == -1 ||
	    ctl_send(c->ctl, CTL_RELOAD, 0, fd) == -1)
		kill(c->pid, SIGHUP);
	if (fd != -1)
		close(fd);
}

/*
 * SIGHUP: the file checked as at start (credentials read in a child of
 * its own); with errors it is refused here, each logged. Otherwise the
 * children take it: the token process the credential, the SMTP process
 * its part (and it logs what waits for a restart), the delivery process
 * the log level and what status shows.
 */
static void
reload(struct parent *pp)
{
	char	*text;
	int	 i;

	if (config_check(pp->path, &text) != 0) {
		log_lines("reload: ", text);
		log_warnx("reload refused: %s has errors; the configuration "
		    "in force stays", pp->path);
		free(text);
		return;
	}
	free(text);
	pp->reloaded = 1;
	for (i = 0; i < NCHILD; i++)
		if (child_at(pp, i)->pid != 0)
			reload_child(pp, child_at(pp, i));
}

/*
 * SIGTERM, SIGINT: the SMTP process drains (a second signal: it stops
 * now); when it has gone the delivery process stops (Graph requests in
 * flight get their grace), then the token process.
 */
static void
stop(struct parent *pp, int sig)
{
	if (!pp->stopping)
		sd_notify(0, "STOPPING=1");
	pp->stopping = 1;
	pp->token.restart_at = pp->smtp.restart_at = 0;
	pp->deliver.restart_at = 0;
	stop_next(pp, sig);
}

static void
on_ready(struct parent *pp, struct child *c)
{
	int	 first = !c->ever_ready;

	c->ready = c->ever_ready = 1;
	c->beat = now_ms();
	if (!first && pp->reloaded)
		reload_child(pp, c);	/* the config in force, not the first */
	if (!pp->started && pp->smtp.ever_ready && pp->deliver.ever_ready) {
		pp->started = 1;
		log_info("relayd started version=%s", PACKAGE_VERSION);
		sd_notify(0, "READY=1");
	}
}

/*
 * A heartbeat: WATCHDOG=1 if the other loop beat lately too (a child
 * restarting counts as beating: the parent restarts it), STATUS= with
 * the delivery process's queue; sent on deliver's beats (smtp's while
 * there is no deliver), so once per interval.
 */
static void
on_beat(struct parent *pp, struct child *c, uint64_t queued)
{
	struct child	*o = c == &pp->smtp ? &pp->deliver : &pp->smtp;
	uint64_t	 now = now_ms();
	int		 alive;

	c->beat = now;
	if (c == &pp->deliver)
		pp->queued = queued;
	if (!pp->started)
		return;		/* READY=1 first */
	/* One per interval: deliver's, or smtp's while deliver restarts. */
	if (c == &pp->smtp && pp->deliver.pid != 0 && pp->deliver.ready)
		return;
	alive = o->pid == 0 || !o->ready ||
	    now - o->beat <= 2 * pp->heartbeat_ms + 1000;
	sd_notifyf(0, "%sSTATUS=%llu message(s) queued",
	    pp->watchdog && alive ? "WATCHDOG=1\n" : "",
	    (unsigned long long)pp->queued);
}

static void
child_msg(struct parent *pp, struct child *c)
{
	struct ctl_msg	 m;
	int		 fd, rc;

	if ((rc = ctl_recv(c->ctl, &m, &fd)) <= 0) {
		if (rc == -1 && errno == EINTR)
			return;
		/* It is dying: SIGCHLD follows. */
		close(c->ctl);
		c->ctl = -1;
		return;
	}
	if (fd != -1)
		close(fd);
	switch (m.type) {
	case CTL_READY:
		on_ready(pp, c);
		break;
	case CTL_HEARTBEAT:
		on_beat(pp, c, m.arg);
		break;
	case CTL_CRED_CHANGED:
		if (pp->deliver.ctl != -1)
			ctl_send(pp->deliver.ctl, CTL_CRED_CHANGED, 0, -1);
		break;
	default:
		break;
	}
}

/* The poll timeout: the next restart or SIGKILL due, or none (-1). */
static int
next_timeout(const struct parent *pp)
{
	uint64_t	 now = now_ms(), due = 0;
	const uint64_t	 at[] = { pp->token.restart_at, pp->smtp.restart_at,
	    pp->deliver.restart_at, pp->token.pid != 0 ? pp->token_kill_at :
	    0 };
	size_t		 i;

	for (i = 0; i < NELEM(at); i++)
		if (at[i] != 0 && (due == 0 || at[i] < due))
			due = at[i];
	if (due == 0)
		return -1;
	return due <= now ? 0 : (int)(due - now);
}

static void
timers(struct parent *pp)
{
	uint64_t	 now = now_ms();
	struct child	*c;
	int		 i;

	if (pp->stopping && pp->token.pid != 0 && pp->token_kill_at != 0 &&
	    now >= pp->token_kill_at) {
		kill(pp->token.pid, SIGKILL);
		pp->token_kill_at = 0;
	}
	for (i = 0; i < NCHILD; i++) {
		c = child_at(pp, i);
		if (c->restart_at == 0 || now < c->restart_at || pp->stopping)
			continue;
		child_start(pp, c);
		connect_children(pp, c);
	}
}

static void
loop(struct parent *pp)
{
	struct signalfd_siginfo	 si;
	struct pollfd		 pfd[1 + NCHILD];
	int			 i;

	while (!pp->done) {
		pfd[0].fd = pp->sfd;
		for (i = 0; i < NCHILD; i++)
			pfd[1 + i].fd = child_at(pp, i)->ctl;
		for (i = 0; i < 1 + NCHILD; i++) {
			pfd[i].events = POLLIN;
			pfd[i].revents = 0;
		}
		if (poll(pfd, 1 + NCHILD, next_timeout(pp)) == -1 &&
		    errno != EINTR)
			fatal("poll");
		for (i = 0; i < NCHILD; i++)
			if (pfd[1 + i].revents != 0 &&
			    child_at(pp, i)->ctl != -1)
				child_msg(pp, child_at(pp, i));
		if (pfd[0].revents & POLLIN &&
		    read(pp->sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
			if (si.ssi_signo == SIGCHLD)
				reap(pp);
			else if (si.ssi_signo == SIGHUP && !pp->stopping)
				reload(pp);
			else if (si.ssi_signo == SIGTERM ||
			    si.ssi_signo == SIGINT)
				stop(pp, (int)si.ssi_signo);
		}
		timers(pp);
	}
}

/* The token process at start, until it is ready or has said why not. */
static int
token_first(struct parent *pp)
{
	struct pollfd	 pfd;

	child_start(pp, &pp->token);
	if (pp->token.pid == 0)
		return EX_OSERR;
	while (!pp->token.ever_ready && !pp->done) {
		pfd.fd = pp->token.ctl;
		pfd.events = POLLIN;
		pfd.revents = 0;
		if (poll(&pfd, 1, 200) > 0 && pp->token.ctl != -1)
			child_msg(pp, &pp->token);
		reap(pp);
	}
	return pp->done ? pp->rc : 0;
}

int
parent_run(const char *path, struct config *cfg, int *fds)
{
	struct parent	 pp;
	sigset_t	 set;
	uint64_t	 usec = 0;
	int		 rc;

	memset(&pp, 0, sizeof(pp));
	pp.path = path;
	pp.cfg = cfg;
	pp.fds = fds;
	pp.self = getpid();
	pp.token.name = "token";
	pp.token.title = "relayd: token";
	pp.smtp.name = "smtp";
	pp.smtp.title = "relayd: smtp";
	pp.deliver.name = "deliver";
	pp.deliver.title = "relayd: deliver";
	pp.token.ctl = pp.smtp.ctl = pp.deliver.ctl = -1;
	pp.heartbeat_ms = HEARTBEAT_MAX_MS;
	if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
		pp.watchdog = 1;
		if (usec / 2000 < HEARTBEAT_MAX_MS)
			pp.heartbeat_ms = usec / 2000 > 0 ? usec / 2000 : 1;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if (sigprocmask(SIG_BLOCK, &set, NULL) == -1 ||
	    (pp.sfd = signalfd(-1, &set, SFD_CLOEXEC)) == -1)
		fatal("signalfd");
	if (cfg->graph_enabled && (rc = token_first(&pp)) != 0) {
		close(pp.sfd);
		return rc;
	}
	child_start(&pp, &pp.deliver);
	connect_children(&pp, &pp.deliver);
	child_start(&pp, &pp.smtp);
	connect_children(&pp, &pp.smtp);
	if (pp.deliver.pid == 0 || pp.smtp.pid == 0) {
		stop(&pp, SIGTERM);
		pp.rc = EX_OSERR;
	}
	loop(&pp);
	close(pp.sfd);
	return pp.rc;
}

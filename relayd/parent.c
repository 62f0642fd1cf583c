/*
 * parent.c - the parent ("relayd: parent"): forks the token and relay
 * children, passes them their connection, restarts them when they die,
 * and is what systemd and the admin talk to (see the picture in relayd.c).
 *
 * It is single-threaded, runs no libevent, curl or OpenSSL, and never
 * holds a credential or a token, so forking again later hands nothing on.
 * Signals are blocked and read from a signalfd in one poll loop.
 *
 * A child that dies is logged (which, pid, signal or status) and started
 * again after 0.5 s; again within 10 s of its start, after twice as long,
 * up to 10 s. A child that dies before it was ever ready at start (the
 * token process can't read the credential: 78; the relay can't open the
 * spool...) stops relayd with its exit code: restarting would not help.
 */
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
	const char	*name;		/* "token", "relay" */
	const char	*title;
	pid_t		 pid;		/* 0: not running */
	int		 ctl;		/* the parent's end, -1: none */
	int		 ready;		/* said CTL_READY since its start */
	int		 ever_ready;
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
	int		 watchdog;
	uint64_t	 heartbeat_ms;
	int		 rc;		/* when it ends */
	int		 done;
	struct child	 token, relay;
};

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
		config_read_credentials(1);
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
		if (pp->token.ctl != -1)
			close(pp->token.ctl);
		if (pp->relay.ctl != -1)
			close(pp->relay.ctl);
		proc_child(c->title, pp->self);
		if (c == &pp->token) {
			for (i = 0; i < (int)pp->cfg->nlisten; i++)
				close(pp->fds[i]);
			rc = token_proc(pp->path, pp->cfg, sp[1]);
		} else
			rc = relay_main(pp->path, pp->cfg, pp->fds, sp[1],
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

/* A new connection between the two, one end to each. */
static void
connect_children(struct parent *pp)
{
	int	 sp[2];

	if (pp->token.pid == 0 || pp->relay.pid == 0 || pp->token.ctl == -1 ||
	    pp->relay.ctl == -1)
		return;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) == -1) {
		log_warn("token connection");
		return;
	}
	if (ctl_send(pp->token.ctl, CTL_TOKEN_FD, 0, sp[0]) == -1 ||
	    ctl_send(pp->relay.ctl, CTL_TOKEN_FD, 0, sp[1]) == -1)
		log_warn("token connection: not passed");
	close(sp[0]);
	close(sp[1]);
}

static void
child_died(struct parent *pp, struct child *c, pid_t pid, int st)
{
	uint64_t	 now = now_ms();
	int		 code = WIFEXITED(st) ? WEXITSTATUS(st) : EX_SOFTWARE;

	c->pid = 0;
	c->ready = 0;
	if (c->ctl != -1) {
		close(c->ctl);
		c->ctl = -1;
	}
	if (pp->stopping) {
		if (c == &pp->relay && pp->token.pid != 0) {
			kill(pp->token.pid, SIGTERM);
			pp->token_kill_at = now + TOKEN_STOP_MS;
		}
		pp->done = pp->token.pid == 0 && pp->relay.pid == 0;
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
		if (pp->relay.pid != 0)
			kill(pp->relay.pid, SIGKILL);
		if (pp->token.pid != 0)
			kill(pp->token.pid, SIGKILL);
		pp->done = pp->token.pid == 0 && pp->relay.pid == 0;
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
	int	 st;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		if (pid == pp->token.pid)
			child_died(pp, &pp->token, pid, st);
		else if (pid == pp->relay.pid)
			child_died(pp, &pp->relay, pid, st);
	}
}

/*
 * The relay takes the config from a descriptor the parent opened: its
 * Landlock rules grant relayd.conf by inode where a credential shares its
 * directory, and an editor that saves by rename makes a new inode. If the
 * file can't be opened here, a SIGHUP lets the relay try (and say why).
 */
static void
reload_relay(struct parent *pp)
{
	int	 fd;

	if ((fd = open(pp->path, O_RDONLY | O_CLOEXEC)) == -1 ||
	    ctl_send(pp->relay.ctl, CTL_RELOAD, 0, fd) == -1)
		kill(pp->relay.pid, SIGHUP);
	if (fd != -1)
		close(fd);
}

/*
 * SIGHUP: the file checked as at start (credentials read in a child of
 * its own); with errors it is refused here, each logged. Otherwise both
 * children take it: the token process the credential, the relay the rest
 * (and it logs what waits for a restart).
 */
static void
reload(struct parent *pp)
{
	char	*text;

	if (config_check(pp->path, &text) != 0) {
		log_lines("reload: ", text);
		log_warnx("reload refused: %s has errors; the configuration "
		    "in force stays", pp->path);
		free(text);
		return;
	}
	free(text);
	pp->reloaded = 1;
	if (pp->token.pid != 0)
		kill(pp->token.pid, SIGHUP);
	if (pp->relay.pid != 0)
		reload_relay(pp);
}

/*
 * SIGTERM, SIGINT: the relay drains (a second signal: it stops now); when
 * it has gone, the token process goes.
 */
static void
stop(struct parent *pp, int sig)
{
	if (!pp->stopping)
		sd_notify(0, "STOPPING=1");
	pp->stopping = 1;
	pp->token.restart_at = pp->relay.restart_at = 0;
	if (pp->relay.pid != 0)
		kill(pp->relay.pid, sig);
	else if (pp->token.pid != 0) {
		kill(pp->token.pid, SIGTERM);
		pp->token_kill_at = now_ms() + TOKEN_STOP_MS;
	}
	pp->done = pp->token.pid == 0 && pp->relay.pid == 0;
}

static void
on_ready(struct parent *pp, struct child *c)
{
	int	 first = !c->ever_ready;

	c->ready = c->ever_ready = 1;
	if (!first && pp->reloaded) {
		/* the config in force, not the first */
		if (c == &pp->relay)
			reload_relay(pp);
		else
			kill(c->pid, SIGHUP);
	}
	if (first && c == &pp->relay)
		sd_notify(0, "READY=1");
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
		sd_notifyf(0, "%sSTATUS=%llu message(s) queued",
		    pp->watchdog ? "WATCHDOG=1\n" : "",
		    (unsigned long long)m.arg);
		break;
	case CTL_CRED_CHANGED:
		if (pp->relay.ctl != -1)
			ctl_send(pp->relay.ctl, CTL_CRED_CHANGED, 0, -1);
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
	const uint64_t	 at[] = { pp->token.restart_at, pp->relay.restart_at,
	    pp->token.pid != 0 ? pp->token_kill_at : 0 };
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
	for (i = 0; i < 2; i++) {
		c = i == 0 ? &pp->token : &pp->relay;
		if (c->restart_at == 0 || now < c->restart_at || pp->stopping)
			continue;
		child_start(pp, c);
		connect_children(pp);
	}
}

static void
loop(struct parent *pp)
{
	struct signalfd_siginfo	 si;
	struct pollfd		 pfd[3];

	while (!pp->done) {
		pfd[0].fd = pp->sfd;
		pfd[1].fd = pp->token.ctl;
		pfd[2].fd = pp->relay.ctl;
		pfd[0].events = pfd[1].events = pfd[2].events = POLLIN;
		pfd[0].revents = pfd[1].revents = pfd[2].revents = 0;
		if (poll(pfd, 3, next_timeout(pp)) == -1 && errno != EINTR)
			fatal("poll");
		if (pfd[1].revents != 0 && pp->token.ctl != -1)
			child_msg(pp, &pp->token);
		if (pfd[2].revents != 0 && pp->relay.ctl != -1)
			child_msg(pp, &pp->relay);
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
	pp.relay.name = "relay";
	pp.relay.title = "relayd: relay";
	pp.token.ctl = pp.relay.ctl = -1;
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
	child_start(&pp, &pp.relay);
	if (pp.relay.pid == 0)
		pp.rc = EX_OSERR;
	else {
		connect_children(&pp);
		loop(&pp);
	}
	close(pp.sfd);
	return pp.rc;
}

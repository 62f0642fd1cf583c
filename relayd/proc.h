/* proc.h - what the parent and its children say over their socketpairs. */
#ifndef RELAYD_PROC_H
#define RELAYD_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum ctl_type {
	CTL_READY = 1,		/* child -> parent: started */
	CTL_HEARTBEAT,		/* relay -> parent: loop alive; arg: queued */
	CTL_TOKEN_FD,		/* parent -> child: a connection (the fd) */
	CTL_CRED_CHANGED,	/* token -> parent -> relay: after SIGHUP */
	CTL_RELOAD,		/* parent -> relay: relayd.conf (the fd) */
};

struct ctl_msg {
	uint32_t	 type;
	uint64_t	 arg;
};

/* One message, with a descriptor if fd is not -1. -1 on error. */
int	ctl_send(int, enum ctl_type, uint64_t, int);
/* One message; *fd gets a passed descriptor (or -1). 0 at EOF, -1 on
 * error (errno), 1 otherwise. */
int	ctl_recv(int, struct ctl_msg *, int *);
/*
 * In a child just forked: its title, dies with the parent (SIGKILL), not
 * dumpable, no systemd notification of its own. Exits if the parent is
 * already gone.
 */
void	proc_child(const char *, pid_t);

struct config;
/*
 * The parent (parent.c): forks and watches the children until SIGTERM;
 * the exit code. cfg is as checked at start; fds the listening sockets.
 */
int	parent_run(const char *, struct config *, int *);
/* The relay child (relayd.c): today's daemon, tokens from the token
 * process; heartbeats every ms. The exit code. */
int	relay_main(const char *, struct config *, const int *, int, uint64_t);
/*
 * The config file checked as `relayd -n` checks it, credentials read, in
 * a child forked for it (so that this process never holds them): 0, or
 * EX_CONFIG; *text gets what the check wrote (malloc'd).
 */
int	config_check(const char *, char **);
/* Each line of text (which it takes apart) as a warning (relayd.c). */
void	log_lines(const char *, char *);

#endif

/* proc.h - what the parent and its children say over their socketpairs. */
#ifndef RELAYD_PROC_H
#define RELAYD_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sandbox.h"	/* enum sandbox_role */

enum ctl_type {
	CTL_READY = 1,		/* child -> parent: started */
	CTL_HEARTBEAT,		/* smtp, deliver -> parent: loop alive;
				 * arg: queued (deliver's) */
	CTL_TOKEN_FD,		/* parent -> token, deliver: their connection */
	CTL_CRED_CHANGED,	/* token -> parent -> deliver: after SIGHUP */
	CTL_LINK_FD,		/* parent -> smtp, deliver: their link */
	CTL_RELOAD,		/* parent -> smtp, deliver: relayd.conf (fd) */
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
/*
 * The children (each returns its exit code; heartbeats every ms): the
 * SMTP process (smtp_main.c) with the listening sockets, the delivery
 * process (deliver_main.c).
 */
int	smtp_main(const char *, struct config *, const int *, int, uint64_t);
int	deliver_main(const char *, struct config *, int, uint64_t);
/*
 * The config file checked as `relayd -n` checks it, credentials read, in
 * a child forked for it (so that this process never holds them): 0, or
 * EX_CONFIG; *text gets what the check wrote (malloc'd).
 */
int	config_check(const char *, char **);
/* Each line of text (which it takes apart) as a warning (relayd.c). */
void	log_lines(const char *, char *);

/* What both children use (relayd.c). */
struct event_base;
struct heartbeat;
struct spool;
/* The file again, from fd (CTL_RELOAD) or, -1, from the path (SIGHUP);
 * NULL if refused (logged). Quiet (the delivery process): its warnings
 * are left to the SMTP process's reload. */
struct config	*config_reload(const char *, int);
struct config	*config_reload_quiet(const char *, int);
/* CTL_HEARTBEAT every ms (with spool's count, if not NULL). */
struct heartbeat *heartbeat_start(struct event_base *, struct spool *, int,
		    uint64_t);
/*
 * No heartbeat while alive(max_age_ms) says 0: a thread beside the loop
 * (another SMTP loop) has not turned for that long.
 */
void		 heartbeat_watch(struct heartbeat *, int (*)(uint64_t));
void		 heartbeat_free(struct heartbeat *);
/*
 * A child's loop: the parent's socket (ctl_cb), SIGTERM and SIGINT
 * (stop_cb), SIGHUP (hup_cb); the signals the parent blocked are
 * libevent's from then on. pe zeroed before, freed after.
 */
struct proc_events {
	struct event	*ev[4];
};
void		 proc_events_add(struct proc_events *, struct event_base *,
		    int, void (*)(int, short, void *), void *,
		    void (*)(int, short, void *), void *,
		    void (*)(int, short, void *), void *);
void		 proc_events_free(struct proc_events *);
/* The sandbox in the role given (unless [security] sandbox = no). */
int		 proc_sandbox(const struct config *, const char *,
		    enum sandbox_role);
/* The [graph] settings in force, for the log (malloc'd). */
char		*graph_summary(const struct config *);
/* When the parent started (wall clock, ms). */
uint64_t	 relayd_started_ms(void);

#endif

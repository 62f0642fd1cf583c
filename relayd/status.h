/* status.h - the status socket (relayctl) and the optional /metrics. */
#ifndef RELAYD_STATUS_H
#define RELAYD_STATUS_H

#include <stddef.h>
#include <stdint.h>

struct auth;
struct config;
struct event_base;
struct history;
struct smtp;
struct spool;
struct status;
struct token;
struct worker_pool;

/* What the status socket reports on; pool, token and *auth may be NULL. */
struct status_env {
	struct event_base	*base;
	const struct config	*cfg;
	struct handoff		*handoff;	/* the SMTP side's figures */
	struct spool		*spool;
	struct worker_pool	*pool;
	struct token		*token;
	struct history		*history;	/* NULL: [queue] history = 0 */
	struct cluster		*cluster;	/* NULL: no [cluster] */
	uint64_t		 started_ms;	/* wall clock */
};

/*
 * Listens on [status] socket (mode 0660; peers checked with SO_PEERCRED)
 * and, if set, [status] metrics_listen. NULL with err if an address
 * cannot be bound or a user or group is unknown.
 */
struct status	*status_new(const struct status_env *, char *, size_t);
void		 status_free(struct status *);
/* The config in force after a reload (credential expiry dates). */
void		 status_set_config(struct status *, const struct config *);
/*
 * [status] users (groups = 0) or groups (1): -1 with the reason in err if
 * one of them does not exist here (status_new would refuse to start).
 */
int		 status_ids_check(const char *, int, char *, size_t);
/*
 * Answers one command line (without its newline) as relayctl would get
 * it: a malloc'd JSON text. Pure but for the state it reads; for tests.
 */
char		*status_command(struct status *, const char *);
/* The Prometheus text of `metrics`, malloc'd. */
char		*status_metrics(struct status *);

#endif

/*
 * stress.h - when the SMTP side is under stress, whom it closes to make
 * room, and how many connections its descriptors allow. Pure: no I/O, no
 * clock of its own (the caller passes the time), so tests/unit/test_stress.c
 * can drive it row by row.
 */
#ifndef RELAYD_STRESS_H
#define RELAYD_STRESS_H

#include <sys/queue.h>
#include <stdint.h>

/*
 * Open connections, in percent of max_connections, at which stress begins
 * and below which it ends again: the gap keeps a load that hovers around
 * one figure from switching timeouts back and forth.
 */
#define STRESS_ON_PCT		70
#define STRESS_OFF_PCT		50
/*
 * Descriptors the SMTP process keeps for itself (spool files and
 * directories, the links, the log, clients waiting for their PROXY
 * header, and clients accepted in the loop turn that evicts others)
 * and the default's ceiling.
 */
#define STRESS_FD_RESERVE	256
#define STRESS_MAX_CONN		50000

struct stress {
	uint64_t	 limit;		/* max_connections in force */
	int		 active;
	uint64_t	 since_ms;	/* wall clock of the last change */
	uint64_t	 entered;	/* times stress began */
	uint64_t	 evicted;	/* sessions closed to make room */
	uint64_t	 evicted_before;	/* evicted when stress began */
};

enum stress_change {
	STRESS_SAME,
	STRESS_ENTERED,
	STRESS_LEFT
};

/* The open-connection count changed to n (wall clock now, ms). */
enum stress_change stress_update(struct stress *, uint64_t n, uint64_t now);
/* The command timeout in force: the stress one while under stress. */
uint64_t	 stress_timeout(const struct stress *, uint64_t normal,
		    uint64_t stressed);

/*
 * max_connections from the configured value (0: as many as allowed) and
 * the descriptor limit (RLIMIT_NOFILE's soft limit): *allowed is what the
 * descriptors allow; the result is the value in force, never above it.
 */
uint64_t	 stress_conn_limit(uint64_t configured, uint64_t nofile,
		    uint64_t *allowed);

/*
 * The sessions that may be evicted, longest idle first: a session is on
 * the list while it is between transactions (no MAIL yet), and moves to
 * its end with each command it completes (a trickle of bytes that never
 * makes a command does not count). The entry lives in the session.
 */
struct idle_entry {
	TAILQ_ENTRY(idle_entry)	 link;
	uint64_t		 since_ms;	/* last command (or connect) */
	int			 on;
};
TAILQ_HEAD(idle_list, idle_entry);

/* e is idle from now: to the end of the list (added if it was not on). */
void		 idle_touch(struct idle_list *, struct idle_entry *,
		    uint64_t now);
/* e may not be evicted (a transaction, closing, freed); harmless if off. */
void		 idle_remove(struct idle_list *, struct idle_entry *);
/* The session to evict first (NULL: none may be). */
struct idle_entry *idle_oldest(struct idle_list *);

#endif

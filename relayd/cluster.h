/* cluster.h - [cluster]: Graph's limits shared with other relayds in Redis. */
#ifndef RELAYD_CLUSTER_H
#define RELAYD_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

struct config;
struct event_base;
struct cluster;

#define CLUSTER_RCPTS_PER_DAY	10000	/* Exchange: per mailbox, 24 h */
#define CLUSTER_NODES_MAX	64	/* nodes status names */
#define CLUSTER_NODE_LEN	65	/* a node's name, NUL included */

/* What became of cluster_ask. */
enum cluster_answer {
	CLUSTER_GRANTED,	/* a slot is leased: send */
	CLUSTER_FULL,		/* its 4 slots are out on the nodes */
	CLUSTER_PACED,		/* messages_per_minute: wait */
	CLUSTER_RCPTS,		/* 10,000 recipients a day: wait */
	CLUSTER_MBOX_HELD,	/* another node's 429 hold: wait */
	CLUSTER_GRAPH_HELD,	/* the Graph-wide hold: wait */
	CLUSTER_DOWN,		/* no answer from Redis: go on alone */
};

/* ---- pure: what a node may use of a limit alone ---- */

/*
 * A node's share of limit while Redis is away: the limit divided by the
 * nodes last seen alive (0 taken as 1), at least 1; a limit of 0 (no
 * limit, as messages_per_minute = 0) stays 0.
 */
uint64_t	 cluster_share(uint64_t, unsigned);
/*
 * The slots of a mailbox (of max) a node may use alone, since_down ms
 * after Redis went away: its share; but while the requests in flight
 * elsewhere when Redis went may still run (drain ms), no more than the
 * others left free then (others: the slots they held, as last seen), even
 * 0, so that the nodes' shares and what was already out never add up to
 * more than max.
 */
unsigned	 cluster_down_slots(unsigned, unsigned, unsigned, uint64_t,
		    uint64_t);
/*
 * How many of the leases (members "NODE|ID") each node holds: names[i]
 * gets counts[i], at most max names, in the order first seen; returns how
 * many names.
 */
size_t		 cluster_count_holders(const char *const *, size_t,
		    char (*)[CLUSTER_NODE_LEN], unsigned *, size_t);
/*
 * The recipients a day a node spends alone (Redis away), a GCRA as
 * Redis's: limit recipients (its share) over 24 hours, a burst of all of
 * them. *tat is when the budget is full again (ms by the caller's clock;
 * 0 or past: full). nrcpts at now: 0 if they may go, and *tat moves on;
 * else the ms until they may, *tat unchanged. A message of more
 * recipients than the whole budget goes alone once it is full (it would
 * never go otherwise). limit 0: no budget.
 */
uint64_t	 cluster_rcpts_wait(uint64_t *, uint64_t, size_t, uint64_t);

/* ---- the Redis side (event loop thread) ---- */

/*
 * NULL without [cluster]. Reads password_file (so it runs before the
 * sandbox: Landlock never grants it) and starts connecting; never blocks
 * on Redis. NULL with err on an unreadable password file.
 */
struct cluster	*cluster_new(struct event_base *, const struct config *,
		    char *, size_t);
void		 cluster_free(struct cluster *);
/* Redis answered lately: limits are shared. */
int		 cluster_up(const struct cluster *);
/* The nodes last seen alive (at least 1). */
unsigned	 cluster_nodes(const struct cluster *);
/*
 * The slots of mailbox (of max) this node may fill itself now: max with
 * Redis up (Redis counts), else cluster_down_slots's, taking the others
 * to have held all of them; *recheck: in how many ms that may grow (0: it
 * will not by waiting).
 */
unsigned	 cluster_slots(const struct cluster *, const char *, unsigned,
		    uint64_t *);

/*
 * A lease for a request to mailbox (lower case): kept, and renewed in
 * Redis every second until released, also while Redis is away (it is
 * written back when Redis returns). Returns its id.
 */
uint64_t	 cluster_lease(struct cluster *, const char *);
void		 cluster_release(struct cluster *, uint64_t);

typedef void cluster_ask_cb(void *, enum cluster_answer, uint64_t);
/*
 * Asks Redis whether lease's request may go: a free slot of its mailbox
 * (of max), the mailbox's pace (mpm a minute, 0: none) and its recipients
 * budget (nrcpts). cb gets the answer and, when it is to wait, how long
 * (ms; 0: not known, ask again soon). -1: Redis is away, no call comes;
 * the request goes on this node's share, and its lease is written to
 * Redis as soon as Redis answers (at once while this node rejoins).
 */
int		 cluster_ask(struct cluster *, uint64_t, unsigned, uint64_t,
		    size_t, cluster_ask_cb *, void *);
/* No callback of an ask still out will come (the caller is going). */
void		 cluster_cancel(struct cluster *);
/* Publishes a hold of mailbox (NULL: Graph-wide) for ms; 0 lifts it. */
void		 cluster_hold(struct cluster *, const char *, uint64_t);

/* ---- for relayctl status and the metrics ---- */

struct cluster_mbox {
	const char	*mailbox;
	size_t		 nholders;
	char		 node[CLUSTER_NODES_MAX][CLUSTER_NODE_LEN];
	unsigned	 slots[CLUSTER_NODES_MAX];
};

struct cluster_status {
	const char	*node;
	const char	*redis;		/* HOST:PORT/DB */
	int		 up;
	uint64_t	 down_since;	/* wall ms, 0: up */
	const char	*why;		/* why it is away, NULL: up or not known */
	uint64_t	 reconnects;	/* connections made since start */
	uint64_t	 asks, denied;	/* since start */
	size_t		 nnodes;
	const char	*nodes[CLUSTER_NODES_MAX];	/* seen recently */
	size_t		 leases;	/* this node's slots held now */
	int		 node_clash;	/* another relayd has this node name */
};

void		 cluster_status(const struct cluster *,
		    struct cluster_status *);
typedef void cluster_mbox_cb(void *, const struct cluster_mbox *);
/* The mailboxes with slots out, as Redis said within the last 10 s. */
void		 cluster_foreach_busy(const struct cluster *, cluster_mbox_cb *,
		    void *);

#endif

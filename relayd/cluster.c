/*
 * cluster.c - [cluster]: Graph's limits shared with other relayds in Redis.
 *
 * Design. Graph counts per app registration and mailbox, not per relay:
 * 4 requests in flight, Exchange's messages a minute and recipients a
 * day, and a 429 holds the mailbox for every client. Several relayd
 * instances sharing one Redis keep these together: the delivery loop asks
 * here before each request and releases after it. One concern only:
 * talking to Redis. Redis's own client, hiredis, runs asynchronously on
 * the delivery process's event base (the libevent adapter), so nothing
 * here ever blocks the loop, and the SMTP side never waits for it.
 * Message contents never go to Redis: only lease ids, counters, holds and
 * node names, under keys named by the app registration (tenant and
 * client_id) and the mailbox:
 *
 *   relayd:T/C:m:MAILBOX:slots   sorted set "NODE|ID" -> lease end (ms)
 *   relayd:T/C:m:MAILBOX:pace    GCRA "theoretical arrival time" (ms)
 *   relayd:T/C:m:MAILBOX:rcpts   the same for recipients a day
 *   relayd:T/C:m:MAILBOX:hold    a 429's hold (its TTL is the hold)
 *   relayd:T/C:hold              the Graph-wide hold
 *   relayd:T/C:nodes             sorted set NODE -> last seen (ms)
 *   relayd:T/C:node:NODE         per node, with a TTL: it is alive
 *
 * Each decision is one Lua script (atomic in Redis, on Redis's clock, so
 * the nodes' clocks need not agree): the ask drops expired leases, then
 * answers held, full, paced or out of recipients, or adds the lease. A
 * lease lives [graph] timeout + LEASE_EXTRA_MS and is renewed every
 * second while its request runs, so a node that dies (kill -9, power)
 * holds a slot until its lease ends at most. Pacing is GCRA (a token
 * bucket as one timestamp): messages_per_minute with a burst of as many,
 * and 10,000 recipients spread over 24 hours with a burst of a day's
 * worth. Scripts go as EVAL: a few hundred bytes each, which Redis
 * compiles once and caches; no NOSCRIPT dance after a Redis restart.
 *
 * A host name in redis = is looked up on the same loop (libevent's evdns,
 * made before the sandbox, so /etc/resolv.conf and /etc/hosts are read
 * while allowed) and hiredis is given the address: its own lookup,
 * getaddrinfo, would stop the loop as long as DNS takes, at every
 * reconnect. The addresses found are tried in turn; the name is what the
 * log and status show. An address in redis = is used as it is.
 *
 * Redis away (connection refused, closed, no answer for STALL_MS, or a
 * name that does not resolve in as long): one warning naming Redis; cluster_up() says no, and the
 * scheduler goes on with a share of each limit (cluster_share: the limit
 * divided by the nodes last seen alive, at least 1). Only not at once
 * for the slots: the other nodes may hold all 4 at that moment, so no new
 * request starts until theirs must be over (twice the longest request
 * lately, plus a beat; a lease at most; cluster_down_slots); a pause of
 * about a second, measured at 1 in 5 runs of test_cluster.py giving one
 * 429 without it. A node that starts is treated the same way. It reconnects every
 * RECONNECT_MS. Its first answer writes the leases in flight back (a
 * Redis that restarted has none), and the node stays on its share for
 * REJOIN_MS more, so that every other node, reconnecting within
 * RECONNECT_MS, has written its own back before anyone counts on the
 * shared set: back on shared limits within ~3 s of Redis returning.
 * Delivery never stops for Redis.
 */
#include <sys/queue.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <netinet/in.h>
#include <arpa/inet.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "addr.h"
#include "cluster.h"
#include "config.h"
#include "log.h"
#include "util.h"

#define BEAT_MS			1000	/* announce, renew, look */
#define RECONNECT_MS		1000	/* at least every 2 s, as promised */
#define STALL_MS		3000	/* no answer that long: Redis is away */
#define NODE_TTL_MS		5000	/* a node's key outlives 5 beats */
#define NODES_WINDOW_MS		10000	/* "seen recently" */
#define VIEW_KEEP_MS		10000	/* a busy mailbox shown that long */
#define LEASE_EXTRA_MS		10000	/* a lease outlives [graph] timeout */
#define REJOIN_MS		2000	/* answered that long: limits shared */
#define CLASH_MS		(3 * BEAT_MS)	/* node name taken: twice in */
#define PASSWORD_MAX		1024
#define DAY_MS			((uint64_t)24 * 3600 * 1000)

/* KEYS: slots pace rcpts hold graph-hold. ARGV: member max lease mpm
 * nrcpts rcpts-a-day. Returns {answer, wait ms, members...}. */
static const char ask_lua[] =
"local t = redis.call('TIME')\n"
"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"local max, lease = tonumber(ARGV[2]), tonumber(ARGV[3])\n"
"local mpm, n, rl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])\n"
"redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
"local function out(a, w)\n"
"  local r = {a, math.ceil(w)}\n"
"  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do\n"
"    r[#r + 1] = m end\n"
"  return r end\n"
"local h = redis.call('PTTL', KEYS[4])\n"
"if h > 0 then return out(4, h) end\n"
"h = redis.call('PTTL', KEYS[5])\n"
"if h > 0 then return out(5, h) end\n"
"if redis.call('ZCARD', KEYS[1]) >= max then return out(1, 0) end\n"
"local pnew, rnew\n"
"if mpm > 0 then\n"
"  local iv = 60000 / mpm\n"
"  local tat = tonumber(redis.call('GET', KEYS[2]) or now)\n"
"  if tat < now then tat = now end\n"
"  pnew = tat + iv\n"
"  if pnew - now > mpm * iv then return out(2, pnew - now - mpm * iv) end\n"
"end\n"
"if rl > 0 and n > 0 then\n"
"  local iv = 86400000 / rl\n"
"  local tat = tonumber(redis.call('GET', KEYS[3]) or now)\n"
"  if tat < now then tat = now end\n"
"  rnew = tat + n * iv\n"
"  if rnew - now > rl * iv then return out(3, rnew - now - rl * iv) end\n"
"end\n"
"if pnew then redis.call('SET', KEYS[2], string.format('%.3f', pnew),\n"
"  'PX', math.ceil(pnew - now) + 1000) end\n"
"if rnew then redis.call('SET', KEYS[3], string.format('%.3f', rnew),\n"
"  'PX', math.ceil(rnew - now) + 1000) end\n"
"redis.call('ZADD', KEYS[1], now + lease, ARGV[1])\n"
"redis.call('PEXPIRE', KEYS[1], lease * 2)\n"
"return out(0, 0)\n";

/* KEYS: slots. ARGV: member lease. A lease renewed, or written back. */
static const char renew_lua[] =
"local t = redis.call('TIME')\n"
"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])\n"
"redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)\n"
"return 1\n";

/* KEYS: slots. The members of unexpired leases. */
static const char view_lua[] =
"local t = redis.call('TIME')\n"
"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
"return redis.call('ZRANGE', KEYS[1], 0, -1)\n";

/*
 * KEYS: nodes node-key. ARGV: node ttl window instance. {"1" if the node
 * key held another instance's token (a second relayd with this node name,
 * or this one's previous life), then the nodes seen lately}.
 */
static const char beat_lua[] =
"local t = redis.call('TIME')\n"
"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"local old = redis.call('GET', KEYS[2])\n"
"redis.call('SET', KEYS[2], ARGV[4], 'PX', tonumber(ARGV[2]))\n"
"redis.call('ZADD', KEYS[1], now, ARGV[1])\n"
"redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))\n"
"redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 6)\n"
"local r = redis.call('ZRANGE', KEYS[1], 0, -1)\n"
"table.insert(r, 1, (old and old ~= ARGV[4]) and '1' or '0')\n"
"return r\n";

/* KEYS: hold. ARGV: ms. A hold set, made longer, or (0) lifted. */
static const char hold_lua[] =
"local ms = tonumber(ARGV[1])\n"
"if ms == 0 then return redis.call('DEL', KEYS[1]) end\n"
"if redis.call('PTTL', KEYS[1]) < ms then\n"
"  redis.call('SET', KEYS[1], '1', 'PX', ms) end\n"
"return 1\n";

struct lease {
	uint64_t		 id;
	uint64_t		 since;		/* now_ms() */
	char			*mailbox;
	LIST_ENTRY(lease)	 link;
};

/* A busy mailbox's leases as Redis last listed them (for status). */
struct view {
	char			*mailbox;
	char			**members;
	size_t			 nmembers;
	uint64_t		 when;		/* now_ms() */
	LIST_ENTRY(view)	 link;
};

/* An ask out at Redis; cb NULL once cancelled. */
struct ask {
	struct cluster		*c;
	uint64_t		 lease;
	cluster_ask_cb		*cb;
	void			*arg;
	LIST_ENTRY(ask)		 link;
};

struct cluster {
	struct event_base	*base;
	char			*host;
	unsigned		 port, db;
	char			*addr;		/* HOST:PORT/DB, for messages */
	char			*node;
	char			 instance[17];	/* this process, in leases */
	uint64_t		 clash_at;	/* now_ms(): another instance */
	int			 clash;		/* named as this node: said */
	char			*prefix;	/* relayd:TENANT/CLIENT_ID: */
	char			*password;	/* NULL: no AUTH */
	uint64_t		 lease_ms;

	struct evdns_base	*dns;		/* NULL: host is an address */
	struct evdns_getaddrinfo_request *lookup;	/* while resolving */
	int			 resolving;	/* a lookup is out */
	int			 given_up;	/* and cancelled: its answer due */
	uint64_t		 lookup_at;	/* now_ms() */
	unsigned		 tries;		/* which address is next */
	char			 why[256];	/* why Redis is away */

	redisAsyncContext	*ac;		/* NULL: not connected */
	int			 up;		/* answered since connecting */
	int			 broken;	/* going down: ask nothing */
	int			 freeing;
	int			 warned;	/* the "away" line was logged */
	uint64_t		 answered_at;	/* now_ms(), 0: no answer yet */
	uint64_t		 down_since;	/* wall ms */
	uint64_t		 down_at;	/* the same by now_ms() */
	uint64_t		 req_ms;	/* a long request lately (decays) */
	uint64_t		 last_reply;	/* now_ms() */
	size_t			 pending;	/* commands without an answer */
	uint64_t		 reconnects, asks, denied;
	struct event		*timer;		/* beat, or reconnect */

	uint64_t		 next_id;
	LIST_HEAD(, lease)	 leases;
	size_t			 nleases;
	LIST_HEAD(, view)	 views;
	LIST_HEAD(, ask)	 asks_out;
	char			*nodes[CLUSTER_NODES_MAX];
	size_t			 nnodes;
	unsigned		 nodes_alive;	/* last seen, for the share */
};

/*
 * A resolver with a lookup still out when the cluster is freed (the loop
 * has ended, at exit): evdns would answer it on the loop, so it cannot be
 * freed whole now, and it is kept here for the process's last moments,
 * where leak checkers see it still reachable (volatile: a store never
 * read back is not optimised away).
 */
static struct evdns_base *volatile dns_left;

static void	connect_now(struct cluster *);
static void	gone(struct cluster *, const char *);
static void	mark_down(struct cluster *);

/* ---- pure ---- */

uint64_t
cluster_share(uint64_t limit, unsigned nodes)
{
	uint64_t	 share;

	if (limit == 0)
		return 0;
	share = limit / (nodes > 0 ? nodes : 1);
	return share > 0 ? share : 1;
}

unsigned
cluster_down_slots(unsigned max, unsigned nodes, unsigned others,
    uint64_t since_down, uint64_t drain)
{
	unsigned	 share = (unsigned)cluster_share(max, nodes);
	unsigned	 left = others < max ? max - others : 0;

	if (since_down < drain && left < share)
		return left;
	return share;
}

size_t
cluster_count_holders(const char *const *members, size_t n,
    char (*names)[CLUSTER_NODE_LEN], unsigned *counts, size_t max)
{
	size_t	 i, j, k = 0, len;

	for (i = 0; i < n; i++) {
		len = strcspn(members[i], "|");
		if (len >= CLUSTER_NODE_LEN)
			len = CLUSTER_NODE_LEN - 1;
		for (j = 0; j < k; j++)
			if (strlen(names[j]) == len &&
			    strncmp(names[j], members[i], len) == 0)
				break;
		if (j == k) {
			if (k == max)
				continue;
			memcpy(names[k], members[i], len);
			names[k][len] = '\0';
			counts[k++] = 0;
		}
		counts[j]++;
	}
	return k;
}

uint64_t
cluster_rcpts_wait(uint64_t *tat, uint64_t limit, size_t nrcpts,
    uint64_t now)
{
	uint64_t	 from, cost, next, over;

	if (limit == 0 || nrcpts == 0)
		return 0;
	from = *tat > now ? *tat : now;
	/* Each recipient is a day / limit; rounded up, never under. */
	cost = ((uint64_t)nrcpts * DAY_MS + limit - 1) / limit;
	next = from + cost;
	if (next - now <= DAY_MS || from == now) {
		*tat = next;
		return 0;
	}
	/* Until enough has come back, or it is full (a message too big). */
	over = next - now - DAY_MS;
	return over < from - now ? over : from - now;
}

/* ---- commands ---- */

static char *
key(const struct cluster *c, const char *mailbox, const char *what)
{
	char	*k;

	if (mailbox != NULL)
		xasprintf(&k, "%sm:%s:%s", c->prefix, mailbox, what);
	else
		xasprintf(&k, "%s%s", c->prefix, what);
	return k;
}

/*
 * EVAL script with keys then args (nkeys of the n strings); cb gets the
 * reply (NULL: none came). -1 if it could not be sent.
 */
static int
eval(struct cluster *c, const char *script, size_t nkeys,
    const char *const *strs, size_t n, redisCallbackFn *cb, void *arg)
{
	const char	*argv[16];
	char		 nk[16];
	size_t		 i;

	if (c->ac == NULL || c->broken || n + 3 > NELEM(argv))
		return -1;
	snprintf(nk, sizeof(nk), "%zu", nkeys);
	argv[0] = "EVAL";
	argv[1] = script;
	argv[2] = nk;
	for (i = 0; i < n; i++)
		argv[3 + i] = strs[i];
	if (redisAsyncCommandArgv(c->ac, cb, arg, (int)(n + 3), argv,
	    NULL) != REDIS_OK)
		return -1;
	if (c->pending++ == 0)
		c->last_reply = now_ms();
	return 0;
}

/*
 * Every reply passes here first: counts it, and takes an error or a
 * missing reply as Redis going away. Returns the reply if it is usable.
 */
static redisReply *
answered(redisAsyncContext *ac, void *r)
{
	struct cluster	*c = ac->data;
	redisReply	*reply = r;

	if (c == NULL)
		return NULL;
	if (c->pending > 0)
		c->pending--;
	c->last_reply = now_ms();
	if (reply == NULL) {
		/* Before the disconnect callback, which says why. */
		c->broken = 1;
		mark_down(c);
		return NULL;
	}
	if (reply->type == REDIS_REPLY_ERROR) {
		/* NOAUTH, WRONGPASS, a script's error: alone until it works. */
		gone(c, reply->str);
		return NULL;
	}
	return reply;
}

static void
ignore_cb(redisAsyncContext *ac, void *r, void *arg)
{
	(void)arg;
	answered(ac, r);
}

/* ---- leases ---- */

static char *
member(const struct cluster *c, uint64_t id)
{
	char	*m;

	xasprintf(&m, "%s|%s.%" PRIu64, c->node, c->instance, id);
	return m;
}

static void
lease_send(struct cluster *c, const struct lease *l)
{
	char		*slots = key(c, l->mailbox, "slots");
	char		*m = member(c, l->id), ms[32];
	const char	*s[3];

	snprintf(ms, sizeof(ms), "%" PRIu64, c->lease_ms);
	s[0] = slots;
	s[1] = m;
	s[2] = ms;
	eval(c, renew_lua, 1, s, 3, ignore_cb, NULL);
	free(slots);
	free(m);
}

uint64_t
cluster_lease(struct cluster *c, const char *mailbox)
{
	struct lease	*l = xcalloc(1, sizeof(*l));

	l->id = ++c->next_id;
	l->since = now_ms();
	l->mailbox = xstrdup(mailbox);
	LIST_INSERT_HEAD(&c->leases, l, link);
	c->nleases++;
	return l->id;
}

void
cluster_release(struct cluster *c, uint64_t id)
{
	struct lease	*l;
	char		*slots, *m;
	const char	*argv[3];

	if (c == NULL || id == 0)
		return;
	LIST_FOREACH(l, &c->leases, link)
		if (l->id == id)
			break;
	if (l == NULL)
		return;
	/* How long requests take: the others' may run that long too. */
	c->req_ms = c->req_ms * 15 / 16;
	if (now_ms() - l->since > c->req_ms)
		c->req_ms = now_ms() - l->since;
	if (c->ac != NULL && !c->broken) {
		slots = key(c, l->mailbox, "slots");
		m = member(c, id);
		argv[0] = "ZREM";
		argv[1] = slots;
		argv[2] = m;
		if (redisAsyncCommandArgv(c->ac, ignore_cb, NULL, 3, argv,
		    NULL) == REDIS_OK && c->pending++ == 0)
			c->last_reply = now_ms();
		free(slots);
		free(m);
	}
	LIST_REMOVE(l, link);
	c->nleases--;
	free(l->mailbox);
	free(l);
}

/* ---- views of busy mailboxes ---- */

static struct view *
view_get(struct cluster *c, const char *mailbox)
{
	struct view	*v;

	LIST_FOREACH(v, &c->views, link)
		if (strcmp(v->mailbox, mailbox) == 0)
			return v;
	v = xcalloc(1, sizeof(*v));
	v->mailbox = xstrdup(mailbox);
	LIST_INSERT_HEAD(&c->views, v, link);
	return v;
}

static void
view_clear(struct view *v)
{
	size_t	 i;

	for (i = 0; i < v->nmembers; i++)
		free(v->members[i]);
	free(v->members);
	v->members = NULL;
	v->nmembers = 0;
}

static void
view_free(struct view *v)
{
	LIST_REMOVE(v, link);
	view_clear(v);
	free(v->mailbox);
	free(v);
}

/* Members from reply's elements from first on. */
static void
view_set(struct view *v, const redisReply *r, size_t first)
{
	size_t	 i;

	view_clear(v);
	v->when = now_ms();
	if (r->type != REDIS_REPLY_ARRAY || r->elements <= first)
		return;
	v->members = xcalloc(r->elements - first, sizeof(*v->members));
	for (i = first; i < r->elements; i++)
		if (r->element[i]->type == REDIS_REPLY_STRING)
			v->members[v->nmembers++] =
			    xstrdup(r->element[i]->str);
}

static void
view_cb(redisAsyncContext *ac, void *r, void *arg)
{
	struct cluster	*c = ac->data;
	redisReply	*reply = answered(ac, r);
	struct view	*v;
	char		*mailbox = arg;

	if (reply != NULL && c != NULL)
		LIST_FOREACH(v, &c->views, link)
			if (strcmp(v->mailbox, mailbox) == 0) {
				view_set(v, reply, 0);
				break;
			}
	free(mailbox);
}

/* Busy mailboxes looked at again; idle ones forgotten. */
static void
views_refresh(struct cluster *c)
{
	struct view	*v, *next;
	char		*slots, *mb;
	uint64_t	 now = now_ms();
	int		 mine;
	struct lease	*l;

	for (v = LIST_FIRST(&c->views); v != NULL; v = next) {
		next = LIST_NEXT(v, link);
		mine = 0;
		LIST_FOREACH(l, &c->leases, link)
			if (strcmp(l->mailbox, v->mailbox) == 0)
				mine = 1;
		if (!mine && (v->nmembers == 0 ||
		    now - v->when > VIEW_KEEP_MS)) {
			view_free(v);
			continue;
		}
		slots = key(c, v->mailbox, "slots");
		mb = xstrdup(v->mailbox);
		if (eval(c, view_lua, 1, (const char *const *)&slots, 1,
		    view_cb, mb) == -1)
			free(mb);
		free(slots);
	}
}

/* ---- asks ---- */

static void
ask_cb(redisAsyncContext *ac, void *r, void *arg)
{
	struct ask		*a = arg;
	struct cluster		*c = a->c;
	redisReply		*reply = answered(ac, r);
	enum cluster_answer	 ans = CLUSTER_DOWN;
	uint64_t		 wait = 0;
	struct lease		*l;

	LIST_REMOVE(a, link);
	if (reply != NULL && reply->type == REDIS_REPLY_ARRAY &&
	    reply->elements >= 2 &&
	    reply->element[0]->type == REDIS_REPLY_INTEGER &&
	    reply->element[1]->type == REDIS_REPLY_INTEGER &&
	    reply->element[0]->integer >= 0 &&
	    reply->element[0]->integer <= CLUSTER_GRAPH_HELD) {
		ans = (enum cluster_answer)reply->element[0]->integer;
		if (reply->element[1]->integer > 0)
			wait = (uint64_t)reply->element[1]->integer;
		LIST_FOREACH(l, &c->leases, link)
			if (l->id == a->lease) {
				view_set(view_get(c, l->mailbox), reply, 2);
				break;
			}
		if (ans != CLUSTER_GRANTED)
			c->denied++;
	}
	if (a->cb != NULL)
		a->cb(a->arg, ans, wait);
	free(a);
}

int
cluster_ask(struct cluster *c, uint64_t id, unsigned max, uint64_t mpm,
    size_t nrcpts, cluster_ask_cb *cb, void *arg)
{
	struct lease	*l;
	struct ask	*a;
	char		*k[5], *m, smax[16], slease[32], smpm[32], sn[32],
			 srl[16];
	const char	*s[11];
	size_t		 i;
	int		 rc;

	LIST_FOREACH(l, &c->leases, link)
		if (l->id == id)
			break;
	if (l == NULL)
		return -1;
	if (!cluster_up(c)) {
		/* Sent alone: counted in Redis now, if it answers already. */
		if (c->answered_at != 0 && c->ac != NULL && !c->broken)
			lease_send(c, l);
		return -1;
	}
	k[0] = key(c, l->mailbox, "slots");
	k[1] = key(c, l->mailbox, "pace");
	k[2] = key(c, l->mailbox, "rcpts");
	k[3] = key(c, l->mailbox, "hold");
	k[4] = key(c, NULL, "hold");
	m = member(c, id);
	snprintf(smax, sizeof(smax), "%u", max);
	snprintf(slease, sizeof(slease), "%" PRIu64, c->lease_ms);
	snprintf(smpm, sizeof(smpm), "%" PRIu64, mpm);
	snprintf(sn, sizeof(sn), "%zu", nrcpts);
	snprintf(srl, sizeof(srl), "%d", CLUSTER_RCPTS_PER_DAY);
	for (i = 0; i < 5; i++)
		s[i] = k[i];
	s[5] = m;
	s[6] = smax;
	s[7] = slease;
	s[8] = smpm;
	s[9] = sn;
	s[10] = srl;
	a = xcalloc(1, sizeof(*a));
	a->c = c;
	a->lease = id;
	a->cb = cb;
	a->arg = arg;
	if ((rc = eval(c, ask_lua, 5, s, 11, ask_cb, a)) == 0) {
		LIST_INSERT_HEAD(&c->asks_out, a, link);
		c->asks++;
	} else
		free(a);
	for (i = 0; i < 5; i++)
		free(k[i]);
	free(m);
	return rc;
}

void
cluster_cancel(struct cluster *c)
{
	struct ask	*a;

	if (c == NULL)
		return;
	LIST_FOREACH(a, &c->asks_out, link)
		a->cb = NULL;
}

void
cluster_hold(struct cluster *c, const char *mailbox, uint64_t ms)
{
	char		*k, sms[32];
	const char	*s[2];

	if (c == NULL || c->ac == NULL)
		return;
	k = key(c, mailbox, "hold");
	snprintf(sms, sizeof(sms), "%" PRIu64, ms);
	s[0] = k;
	s[1] = sms;
	eval(c, hold_lua, 1, s, 2, ignore_cb, NULL);
	free(k);
}

/* ---- the connection ---- */

/* 16 hex digits that tell this process from another of the same node. */
static void
instance_token(char out[17])
{
	uint64_t	 r = 0;

	if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
		r = wall_us() ^ ((uint64_t)getpid() << 40);
	snprintf(out, 17, "%016" PRIx64, r);
}

static void
nodes_set(struct cluster *c, const redisReply *r)
{
	size_t	 i;

	for (i = 0; i < c->nnodes; i++)
		free(c->nodes[i]);
	c->nnodes = 0;
	for (i = 1; i < r->elements && c->nnodes < CLUSTER_NODES_MAX; i++)
		if (r->element[i]->type == REDIS_REPLY_STRING)
			c->nodes[c->nnodes++] = xstrdup(r->element[i]->str);
	c->nodes_alive = c->nnodes > 0 ? (unsigned)c->nnodes : 1;
}

/*
 * Another relayd beats under this node name when the node key holds a
 * token not ours twice within CLASH_MS (once is this node's previous life
 * after a restart, its key not expired yet). Leases stay apart (each
 * carries the instance), but the nodes and the shares count the two as
 * one: said once, in the log and in status, until it stops.
 */
static void
node_clash(struct cluster *c, int other)
{
	uint64_t	 now = now_ms();

	if (other) {
		if (!c->clash && c->clash_at != 0 &&
		    now - c->clash_at < CLASH_MS) {
			c->clash = 1;
			log_warnx("cluster: another relayd uses the node name "
			    "\"%s\" with Redis %s: give each relayd a [cluster] "
			    "node of its own (the nodes seen and each one's "
			    "share of the limits count the two as one)",
			    c->node, c->addr);
		}
		c->clash_at = now;
	} else if (c->clash && now - c->clash_at > 2 * NODE_TTL_MS) {
		c->clash = 0;
		log_info("cluster: node name \"%s\" is this relayd's alone "
		    "again", c->node);
	}
}

/* The beat's answer: Redis is there; the first one after a gap says so. */
static void
beat_cb(redisAsyncContext *ac, void *r, void *arg)
{
	struct cluster	*c = ac->data;
	redisReply	*reply = answered(ac, r);
	struct lease	*l;

	(void)arg;
	if (reply == NULL || c == NULL || reply->type != REDIS_REPLY_ARRAY ||
	    reply->elements == 0)
		return;
	node_clash(c, reply->element[0]->type == REDIS_REPLY_STRING &&
	    strcmp(reply->element[0]->str, "1") == 0);
	nodes_set(c, reply);
	if (c->up)
		return;
	if (c->answered_at == 0) {
		/* Requests sent while alone count from now on. */
		c->answered_at = now_ms();
		LIST_FOREACH(l, &c->leases, link)
			lease_send(c, l);
		return;
	}
	if (now_ms() - c->answered_at < REJOIN_MS)
		return;
	c->up = 1;
	c->down_since = 0;
	if (c->warned)
		log_info("cluster: Redis at %s answers again: limits shared "
		    "with %zu node(s) again", c->addr, c->nnodes);
	else
		log_info("cluster: Redis at %s: node %s, limits shared with "
		    "%zu node(s)", c->addr, c->node, c->nnodes);
	c->warned = 0;
}

static void
beat(struct cluster *c)
{
	char		*nodes = key(c, NULL, "nodes"), *nk, sttl[16], swin[16];
	char		 name[300];
	const char	*s[6];
	struct lease	*l;

	snprintf(name, sizeof(name), "node:%s", c->node);
	nk = key(c, NULL, name);
	snprintf(sttl, sizeof(sttl), "%d", NODE_TTL_MS);
	snprintf(swin, sizeof(swin), "%d", NODES_WINDOW_MS);
	s[0] = nodes;
	s[1] = nk;
	s[2] = c->node;
	s[3] = sttl;
	s[4] = swin;
	s[5] = c->instance;
	eval(c, beat_lua, 2, s, 6, beat_cb, NULL);
	free(nodes);
	free(nk);
	if (c->answered_at == 0)
		return;
	LIST_FOREACH(l, &c->leases, link)
		lease_send(c, l);
	views_refresh(c);
}

static void
timer_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct cluster	*c = arg;
	struct timeval	 tv;
	redisAsyncContext *ac;

	(void)fd;
	(void)ev;
	if (c->ac == NULL)
		connect_now(c);
	else if (c->pending > 0 && now_ms() - c->last_reply > STALL_MS) {
		/* Connected, but Redis says nothing: it is away too. */
		gone(c, "no answer for 3s");
		ac = c->ac;
		c->broken = 1;
		redisAsyncFree(ac);	/* the replies still out: none */
		c->ac = NULL;
		c->broken = 0;
		c->pending = 0;
	} else if (!c->broken)
		beat(c);
	tv = ms_tv(c->ac == NULL ? RECONNECT_MS : BEAT_MS);
	evtimer_add(c->timer, &tv);
}

/* Not shared any more, from now (for the drain of cluster_slots). */
static void
mark_down(struct cluster *c)
{
	c->up = 0;
	c->answered_at = 0;
	if (c->down_since == 0) {
		c->down_since = wall_us() / 1000;
		c->down_at = now_ms();
	}
}

/* Redis is away: said once, until it answers again. */
static void
gone(struct cluster *c, const char *why)
{
	mark_down(c);
	strlcpy_r(c->why, why, sizeof(c->why));
	if (c->warned || c->freeing)
		return;
	c->warned = 1;
	log_warnx("cluster: Redis at %s unreachable (%s): node %s goes on "
	    "alone with its share of each limit (1/%u, %u node(s) last "
	    "seen); reconnecting every %ds", c->addr, why, c->node,
	    c->nodes_alive, c->nodes_alive, RECONNECT_MS / 1000);
}

static void
disconnect_cb(const redisAsyncContext *ac, int status)
{
	struct cluster	*c = ac->data;

	if (c == NULL)
		return;
	c->ac = NULL;
	c->broken = 0;
	c->pending = 0;
	if (!c->freeing)
		gone(c, status == REDIS_OK ? "closed" : ac->errstr);
}

static void
connect_cb(const redisAsyncContext *ac, int status)
{
	struct cluster	*c = ac->data;

	if (c == NULL || status == REDIS_OK)
		return;
	/* hiredis frees the context after this. */
	c->ac = NULL;
	c->broken = 0;
	c->pending = 0;
	gone(c, ac->errstr);
}

/* Connects to Redis at address (numeric: hiredis looks up nothing). */
static void
connect_to(struct cluster *c, const char *address)
{
	redisAsyncContext	*ac;
	const char		*argv[3];
	char			 db[16], *sp;
	int			 n;

	ac = redisAsyncConnect(address, (int)c->port);
	if (ac == NULL || ac->err) {
		gone(c, ac != NULL ? ac->errstr : "out of memory");
		if (ac != NULL)
			redisAsyncFree(ac);
		return;
	}
	ac->data = c;
	c->ac = ac;
	c->answered_at = 0;
	c->broken = 0;
	c->pending = 0;
	c->reconnects++;
	redisLibeventAttach(ac, c->base);
	redisAsyncSetConnectCallback(ac, connect_cb);
	redisAsyncSetDisconnectCallback(ac, disconnect_cb);
	if (c->password != NULL) {
		argv[0] = "AUTH";
		if ((sp = strchr(c->password, ' ')) != NULL) {
			*sp = '\0';	/* an ACL user and its password */
			argv[1] = c->password;
			argv[2] = sp + 1;
			n = 3;
		} else {
			argv[1] = c->password;
			n = 2;
		}
		redisAsyncCommandArgv(ac, ignore_cb, NULL, n, argv, NULL);
		if (sp != NULL)
			*sp = ' ';
		c->pending++;
	}
	if (c->db != 0) {
		snprintf(db, sizeof(db), "%u", c->db);
		argv[0] = "SELECT";
		argv[1] = db;
		redisAsyncCommandArgv(ac, ignore_cb, NULL, 2, argv, NULL);
		c->pending++;
	}
	c->last_reply = now_ms();
	beat(c);
}

/* The lookup's answer: the next of its addresses is connected to. */
static void
resolved_cb(int result, struct evutil_addrinfo *res, void *arg)
{
	struct cluster		*c = arg;
	struct evutil_addrinfo	*ai;
	char			 why[200], ip[ADDR_STRLEN];
	unsigned		 n = 0, pick;

	c->resolving = 0;
	c->given_up = 0;
	c->lookup = NULL;
	if (result == EVUTIL_EAI_CANCEL || c->freeing) {
		if (res != NULL)
			evutil_freeaddrinfo(res);
		return;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next)
		if (ai->ai_family == AF_INET || ai->ai_family == AF_INET6)
			n++;
	if (result != 0 || n == 0) {
		snprintf(why, sizeof(why), "cannot resolve %s: %s", c->host,
		    result != 0 ? evutil_gai_strerror(result) :
		    "no address");
		gone(c, why);
		if (res != NULL)
			evutil_freeaddrinfo(res);
		return;
	}
	pick = c->tries++ % n;
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
			continue;
		if (pick-- == 0)
			break;
	}
	addr_ntop(ai->ai_addr, ip, sizeof(ip));
	evutil_freeaddrinfo(res);
	connect_to(c, ip);
}

/*
 * Connects to Redis: at once to an address, else once the name is looked
 * up (a lookup still out after STALL_MS is given up: Redis is away).
 */
static void
connect_now(struct cluster *c)
{
	struct evutil_addrinfo		 hints;
	struct evdns_getaddrinfo_request *req;
	char				 why[200];

	if (c->dns == NULL) {
		connect_to(c, c->host);
		return;
	}
	if (c->resolving) {
		if (c->given_up || c->lookup == NULL ||
		    now_ms() - c->lookup_at < STALL_MS)
			return;
		/* resolved_cb hears of it on the loop: then a new one. */
		evdns_getaddrinfo_cancel(c->lookup);
		c->given_up = 1;
		snprintf(why, sizeof(why), "cannot resolve %s: no answer "
		    "from DNS in %ds", c->host, STALL_MS / 1000);
		gone(c, why);
		return;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	c->resolving = 1;
	c->lookup_at = now_ms();
	req = evdns_getaddrinfo(c->dns, c->host, NULL, &hints, resolved_cb,
	    c);
	if (c->resolving)
		c->lookup = req;	/* else it answered already */
}

/* 1: host is an IPv4 or IPv6 address, nothing to look up. */
static int
is_address(const char *host)
{
	struct in6_addr	 a;

	return inet_pton(AF_INET, host, &a) == 1 ||
	    inet_pton(AF_INET6, host, &a) == 1;
}

/* The password file's first line; NULL with err if it cannot be read. */
static char *
read_password(const char *path, char *err, size_t errlen)
{
	char	 buf[PASSWORD_MAX + 1];
	ssize_t	 n;
	int	 fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		snprintf(err, errlen, "cluster: password_file \"%s\": %s",
		    path, strerror(errno));
		return NULL;
	}
	n = read(fd, buf, PASSWORD_MAX);
	close(fd);
	if (n <= 0) {
		snprintf(err, errlen, "cluster: password_file \"%s\": %s",
		    path, n == 0 ? "empty" : strerror(errno));
		return NULL;
	}
	buf[n] = '\0';
	buf[strcspn(buf, "\r\n")] = '\0';
	while (n > 0 && isspace((unsigned char)buf[n - 1]))
		buf[--n] = '\0';
	return xstrdup(buf);
}

struct cluster *
cluster_new(struct event_base *base, const struct config *cfg, char *err,
    size_t errlen)
{
	struct cluster	*c;
	struct timeval	 tv = ms_tv(BEAT_MS);

	if (cfg->cluster_redis == NULL || cfg->cluster_host == NULL)
		return NULL;
	c = xcalloc(1, sizeof(*c));
	/* Before the sandbox: resolv.conf and hosts are read now. */
	if (!is_address(cfg->cluster_host) && (c->dns = evdns_base_new(base,
	    EVDNS_BASE_INITIALIZE_NAMESERVERS |
	    EVDNS_BASE_DISABLE_WHEN_INACTIVE)) == NULL) {
		snprintf(err, errlen, "cluster: cannot start a resolver for "
		    "%s (check /etc/resolv.conf, or give redis = an address)",
		    cfg->cluster_host);
		free(c);
		return NULL;
	}
	if (cfg->cluster_password_file != NULL &&
	    (c->password = read_password(cfg->cluster_password_file, err,
	    errlen)) == NULL) {
		if (c->dns != NULL)
			evdns_base_free(c->dns, 0);
		free(c);
		return NULL;
	}
	c->base = base;
	c->host = xstrdup(cfg->cluster_host);
	c->port = cfg->cluster_port;
	c->db = cfg->cluster_db;
	xasprintf(&c->addr, "%s:%u/%u", c->host, c->port, c->db);
	c->node = xstrdup(cfg->cluster_node);
	instance_token(c->instance);
	xasprintf(&c->prefix, "relayd:%s/%s:",
	    cfg->tenant != NULL ? cfg->tenant : "-",
	    cfg->client_id != NULL ? cfg->client_id : "-");
	c->lease_ms = cfg->timeout_ms + LEASE_EXTRA_MS;
	c->nodes_alive = 1;
	/*
	 * Not shared yet: as after Redis went away, the other nodes may
	 * hold every slot; the first answer says how many nodes there are.
	 */
	c->down_since = wall_us() / 1000;
	c->down_at = now_ms();
	LIST_INIT(&c->leases);
	LIST_INIT(&c->views);
	LIST_INIT(&c->asks_out);
	c->timer = evtimer_new(base, timer_cb, c);
	evtimer_add(c->timer, &tv);
	connect_now(c);
	return c;
}

void
cluster_free(struct cluster *c)
{
	struct lease	*l;
	struct view	*v;
	size_t		 i;

	if (c == NULL)
		return;
	cluster_cancel(c);
	c->freeing = 1;
	if (c->ac != NULL)
		redisAsyncFree(c->ac);	/* our leases end with their TTL */
	event_free(c->timer);
	if (c->resolving)
		dns_left = c->dns;	/* see dns_left */
	else if (c->dns != NULL)
		evdns_base_free(c->dns, 0);
	while ((l = LIST_FIRST(&c->leases)) != NULL) {
		LIST_REMOVE(l, link);
		free(l->mailbox);
		free(l);
	}
	while ((v = LIST_FIRST(&c->views)) != NULL)
		view_free(v);
	for (i = 0; i < c->nnodes; i++)
		free(c->nodes[i]);
	if (c->password != NULL)
		explicit_bzero(c->password, strlen(c->password));
	free(c->password);
	free(c->host);
	free(c->addr);
	free(c->node);
	free(c->prefix);
	free(c);
}

int
cluster_up(const struct cluster *c)
{
	return c != NULL && c->up && c->ac != NULL && !c->broken;
}

unsigned
cluster_nodes(const struct cluster *c)
{
	return c != NULL && c->nodes_alive > 0 ? c->nodes_alive : 1;
}

unsigned
cluster_slots(const struct cluster *c, const char *mailbox, unsigned max,
    uint64_t *recheck)
{
	uint64_t	 drain, since;

	(void)mailbox;
	*recheck = 0;
	if (cluster_up(c))
		return max;
	/* Twice the longest request lately, and never past a lease. */
	drain = 2 * c->req_ms + BEAT_MS;
	if (drain > c->lease_ms)
		drain = c->lease_ms;
	since = c->down_at != 0 ? now_ms() - c->down_at : drain;
	if (since < drain)
		*recheck = drain - since;
	/*
	 * What the others held when Redis went is not known for sure (a
	 * view is up to a beat old, and slots go in milliseconds): all of
	 * it, till their requests must be over.
	 */
	return cluster_down_slots(max, cluster_nodes(c), max, since, drain);
}

/* ---- status ---- */

void
cluster_status(const struct cluster *c, struct cluster_status *st)
{
	size_t	 i;

	memset(st, 0, sizeof(*st));
	st->node = c->node;
	st->redis = c->addr;
	st->up = cluster_up(c);
	st->down_since = st->up ? 0 : c->down_since;
	st->why = st->up || c->why[0] == '\0' ? NULL : c->why;
	st->reconnects = c->reconnects;
	st->asks = c->asks;
	st->denied = c->denied;
	st->leases = c->nleases;
	st->node_clash = c->clash;
	for (i = 0; i < c->nnodes; i++)
		st->nodes[st->nnodes++] = c->nodes[i];
}

void
cluster_foreach_busy(const struct cluster *c, cluster_mbox_cb *cb,
    void *arg)
{
	const struct view	*v;
	struct cluster_mbox	 m;

	LIST_FOREACH(v, &c->views, link) {
		if (v->nmembers == 0)
			continue;
		memset(&m, 0, sizeof(m));
		m.mailbox = v->mailbox;
		m.nholders = cluster_count_holders(
		    (const char *const *)v->members, v->nmembers, m.node,
		    m.slots, CLUSTER_NODES_MAX);
		cb(arg, &m);
	}
}

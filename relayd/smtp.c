/*
 * smtp.c - listening sockets, accept, and the connection limits that apply
 * before a session exists: in total and per client address. A client over a
 * limit gets a 421 and is closed at once; everyone else is unaffected.
 * Running out of descriptors pauses accepting for a second instead of
 * spinning.
 *
 * max_connections comes from the descriptor limit (stress.c) and is
 * worked out here, in the process that holds the connections, from the
 * limit it really has (the parent raised it to the hard limit before it
 * forked; a reload works it out again). Above STRESS_ON_PCT of it the
 * SMTP side is under stress: smtp_session.c shortens command timeouts,
 * and a client that finds every slot taken is let in by evicting the
 * session idle longest (smtp_session_evict) instead of being refused.
 *
 * libevent's listener accepts until the backlog is empty before anything
 * else runs: under a flood of connect-and-close, new sessions were made
 * (and greeted) faster than the EOFs of the closed ones were read, and
 * hundreds piled up (bench/README.md). So at most SMTP_ACCEPT_BATCH
 * clients are taken per listener and loop turn; then the listener waits
 * for the next turn, after the other events of this one (EOFs, frees).
 *
 * With several loops (smtp_loops.c, RELAYD_SMTP_LOOPS) everything here
 * stays on loop 0: accept, the limits, the client table, stress, PROXY,
 * drain and the counters. A client admitted is handed to a loop, and
 * what its session reports back (gone, counted) is posted to loop 0.
 * Eviction picks the session idle longest over all loops from what each
 * loop publishes (smtp_session_evict), and asks its loop to close it.
 */
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "addr.h"
#include "auth.h"
#include "config.h"
#include "log.h"
#include "proxy.h"
#include "smtp.h"
#include "smtp_loops.h"
#include "stress.h"
#include "tls.h"
#include "util.h"

#define CLIENT_BUCKETS	4096
#define SMTP_PROXY_TIMEOUT_SEC	10	/* for the PROXY header */
#define SMTP_ACCEPT_BATCH	32	/* clients per listener and loop turn */
/*
 * Connections the kernel completes before relayd accepts them (capped by
 * net.core.somaxconn). Under a churn of clients at max_connections the
 * queue fills with them, and a SYN that finds it full is dropped: the
 * real client then waits for its retransmission, a whole second.
 */
#define SMTP_BACKLOG		4096

struct client_count {
	uint8_t			 key[17];
	size_t			 n;
	struct client_count	*next;
};

struct smtp_listener {
	struct smtp		*smtp;
	struct evconnlistener	*evl;
	struct event		*resume;
	struct timeval		 turn;		/* loop turn of the batch */
	unsigned		 batch;		/* accepted in it */
	char			 name[ADDR_STRLEN];
	SSL_CTX			*tls;		/* NULL: no certificate */
	int			 implicit_tls;
	int			 auth_plaintext;
	const struct listen_cfg	*lc;
};

struct smtp {
	struct event_base	*base;
	const struct config	*cfg;
	struct spool		*spool;
	struct smtp_listener	*listeners;
	size_t			 nlisteners;
	struct proxied		*proxied;	/* waiting for a PROXY header */
	size_t			 nsessions;
	/*
	 * Stopping (SIGTERM): the one copy of this state. It belongs to the
	 * service, not to a session: accept() refuses new clients with it
	 * before any session exists, and the sessions ask smtp_draining()
	 * rather than keep a copy that could disagree.
	 */
	int			 draining;
	struct client_count	*clients[CLIENT_BUCKETS];
	struct smtp_counts	 counts;
	struct stress		 stress;	/* .limit: max_connections */
	void			(*changed)(void *);	/* figures changed */
	void			*changed_arg;
};

/* A session on another loop reports to loop 0 (smtp_loops.c). */
enum remote_what { REMOTE_GONE, REMOTE_RECEIVED, REMOTE_REFUSED,
    REMOTE_EVICTED };
struct remote {
	struct smtp		*sm;
	enum remote_what	 what;
	enum smtp_refusal	 refusal;
	struct sockaddr_storage	 ss;
};

static void	remote_cb(void *);

/* 1 if posted to loop 0 (the caller is on another loop), else 0. */
static int
post_remote(struct smtp *sm, enum remote_what what, enum smtp_refusal r,
    const struct sockaddr *sa)
{
	struct remote	*rm;

	if (smtp_loop_is0(smtp_loop_self()))
		return 0;
	rm = xcalloc(1, sizeof(*rm));
	rm->sm = sm;
	rm->what = what;
	rm->refusal = r;
	if (sa != NULL)
		memcpy(&rm->ss, sa, sa->sa_family == AF_INET6 ?
		    sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
	smtp_loop_call(smtp_loop_at(0), remote_cb, rm);
	return 1;
}

/* fn on every loop: now on this one (loop 0), posted to the others. */
static void
on_every_loop(void (*fn)(void *))
{
	size_t	 i;

	fn(NULL);
	for (i = 1; i < smtp_loops_count(); i++)
		smtp_loop_call(smtp_loop_at(i), fn, NULL);
}

static void
stress_each(void *arg)
{
	(void)arg;
	smtp_session_stress();
}

static void
drain_each(void *arg)
{
	(void)arg;
	smtp_session_drain();
}

/* What status shows of this side changed (smtp_figures). */
static void
figures_changed(struct smtp *sm)
{
	if (sm->changed != NULL)
		sm->changed(sm->changed_arg);
}

static unsigned
client_hash(const uint8_t key[17])
{
	unsigned	 h = 2166136261u;
	int		 i;

	for (i = 0; i < 17; i++)
		h = (h ^ key[i]) * 16777619u;
	return h % CLIENT_BUCKETS;
}

static struct client_count **
client_find(struct smtp *sm, const uint8_t key[17])
{
	struct client_count	**cp;

	for (cp = &sm->clients[client_hash(key)]; *cp != NULL;
	    cp = &(*cp)->next)
		if (memcmp((*cp)->key, key, 17) == 0)
			break;
	return cp;
}

/* Logs the entry into stress and the exit from it, once each. */
static void
stress_check(struct smtp *sm)
{
	struct stress	*st = &sm->stress;
	uint64_t	 since = st->since_ms, now = wall_us() / 1000;

	switch (stress_update(st, sm->nsessions, now)) {
	case STRESS_ENTERED:
		log_warnx("smtp stress: on connections=%zu max_connections="
		    "%llu (%d%%): command timeout %.0fs, the idlest sessions "
		    "make room for new clients", sm->nsessions,
		    (unsigned long long)st->limit, STRESS_ON_PCT,
		    (double)stress_timeout(st, sm->cfg->command_timeout_ms,
		    sm->cfg->stress_timeout_ms) / 1000.0);
		on_every_loop(stress_each);
		break;
	case STRESS_LEFT:
		log_info("smtp stress: off connections=%zu "
		    "max_connections=%llu after %.1fs evicted=%llu (since "
		    "start: entered=%llu evicted=%llu)", sm->nsessions,
		    (unsigned long long)st->limit,
		    (double)(now - since) / 1000.0,
		    (unsigned long long)(st->evicted - st->evicted_before),
		    (unsigned long long)st->entered,
		    (unsigned long long)st->evicted);
		break;
	case STRESS_SAME:
		break;
	}
}

void
smtp_session_gone(struct smtp *sm, const struct sockaddr *sa)
{
	struct client_count	**cp, *c;
	uint8_t			 key[17];

	if (post_remote(sm, REMOTE_GONE, 0, sa))
		return;
	addr_key(sa, key);
	cp = client_find(sm, key);
	if ((c = *cp) != NULL && --c->n == 0) {
		*cp = c->next;
		free(c);
	}
	sm->nsessions--;
	stress_check(sm);
	figures_changed(sm);
}

/* Best effort: the socket is new and its buffer empty. */
static void
refuse(int fd, const char *text)
{
	ssize_t	 n;

	n = write(fd, text, strlen(text));
	(void)n;
	close(fd);
}

/* The listener's networks= (none given: everyone may connect). */
static int
listener_allows(const struct smtp_listener *l, const struct sockaddr *sa)
{
	size_t	 i;

	if (l->lc->nnets == 0)
		return 1;
	for (i = 0; i < l->lc->nnets; i++)
		if (addr_match(&l->lc->nets[i], sa))
			return 1;
	return 0;
}

/* A client of a proxy listener until its PROXY header is read. */
struct proxied {
	struct smtp_listener	*l;
	int			 fd;
	struct sockaddr_storage	 peer;
	socklen_t		 peerlen;
	struct event		*ev;		/* edge-triggered: we peek */
	struct event		*timer;
	struct proxied		*next;
};

static void	accept_client(struct smtp_listener *, int,
		    const struct sockaddr *, socklen_t);

/* Off the pending list, its event gone (fd and pc stay with the caller). */
static void
proxied_forget(struct proxied *pc)
{
	struct proxied	**pp;

	for (pp = &pc->l->smtp->proxied; *pp != NULL; pp = &(*pp)->next)
		if (*pp == pc) {
			*pp = pc->next;
			break;
		}
	event_free(pc->ev);
	event_free(pc->timer);
}

static void
proxy_read_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct proxied		*pc = arg;
	struct sockaddr_storage	 ss;
	unsigned char		 buf[PROXY_HEADER_MAX];
	char			 ip[ADDR_STRLEN];
	const char		*why = "timeout waiting for the PROXY header";
	size_t			 used = 0;
	ssize_t			 n = 0;
	int			 r = -1;

	if (ev & EV_READ) {
		n = recv(fd, buf, sizeof(buf), MSG_PEEK);
		if (n <= 0)
			why = n == 0 ? "closed before the PROXY header" :
			    strerror(errno);
		else if ((r = proxy_parse(buf, (size_t)n, &ss, &used,
		    &why)) == 0 && n < (ssize_t)sizeof(buf))
			return;		/* more to come */
		else if (r == 0)
			why = "PROXY header too long";
	}
	addr_ntop((struct sockaddr *)&pc->peer, ip, sizeof(ip));
	if (r == 1 && recv(fd, buf, used, 0) != (ssize_t)used) {
		r = -1;
		why = "cannot read the PROXY header";
	}
	proxied_forget(pc);
	if (r != 1) {
		log_warnx("smtp refused peer=%s listener=%s reason=\"%s\"", ip,
		    pc->l->name, why);
		close(fd);
		free(pc);
		return;
	}
	if (ss.ss_family == AF_UNSPEC)		/* LOCAL/UNKNOWN: the peer */
		accept_client(pc->l, fd, (struct sockaddr *)&pc->peer,
		    pc->peerlen);
	else
		accept_client(pc->l, fd, (struct sockaddr *)&ss,
		    ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) :
		    sizeof(struct sockaddr_in));
	free(pc);
}

static void
proxy_timeout_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct proxied	*pc = arg;

	proxy_read_cb(pc->fd, EV_TIMEOUT, pc);
}

/* See the top: past SMTP_ACCEPT_BATCH, the rest waits for the next turn. */
static void
accept_batch(struct smtp_listener *l)
{
	struct timeval	 now, zero = { 0, 0 };

	/* The cached time is the loop turn's: the same within one turn. */
	event_base_gettimeofday_cached(l->smtp->base, &now);
	if (now.tv_sec != l->turn.tv_sec || now.tv_usec != l->turn.tv_usec) {
		l->turn = now;
		l->batch = 0;
	}
	if (++l->batch < SMTP_ACCEPT_BATCH)
		return;
	evconnlistener_disable(l->evl);
	evtimer_add(l->resume, &zero);
	l->batch = 0;
}

static void
accept_cb(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa,
    int salen, void *arg)
{
	struct smtp_listener	*l = arg;
	struct proxied		*pc;
	struct timeval		 tv = { SMTP_PROXY_TIMEOUT_SEC, 0 };

	(void)evl;
	accept_batch(l);
	if (!l->lc->proxy) {
		accept_client(l, fd, sa, (socklen_t)salen);
		return;
	}
	pc = xcalloc(1, sizeof(*pc));
	pc->l = l;
	pc->fd = fd;
	memcpy(&pc->peer, sa, (size_t)salen < sizeof(pc->peer) ?
	    (size_t)salen : sizeof(pc->peer));
	pc->peerlen = (socklen_t)salen;
	/*
	 * Edge-triggered: bytes peeked at but left unread must not wake us
	 * again until more arrive. The timeout is a timer of its own, so
	 * trickling bytes cannot keep pushing it back.
	 */
	pc->ev = event_new(l->smtp->base, fd, EV_READ | EV_PERSIST | EV_ET,
	    proxy_read_cb, pc);
	event_add(pc->ev, NULL);
	pc->timer = evtimer_new(l->smtp->base, proxy_timeout_cb, pc);
	evtimer_add(pc->timer, &tv);
	pc->next = l->smtp->proxied;
	l->smtp->proxied = pc;
}

/* A client handed to the loop its session lives on. */
struct handoff {
	struct smtp		*sm;
	struct smtp_listener	*l;
	const struct config	*cfg;
	int			 fd;
	struct sockaddr_storage	 ss;
	socklen_t		 salen;
	uint64_t		 seq;
};

static void
handoff_cb(void *arg)
{
	struct handoff	*h = arg;

	smtp_session_arrived();
	smtp_session_new(h->sm, h->l, h->cfg, h->fd,
	    (struct sockaddr *)&h->ss, h->salen, h->seq);
	free(h);
}

/*
 * Round robin over the loops; reply_after = graph stays on loop 0, where
 * the link to delivery (and so Graph's answer) is.
 */
static void
session_start(struct smtp_listener *l, int fd, const struct sockaddr *sa,
    socklen_t salen)
{
	struct smtp		*sm = l->smtp;
	struct smtp_loop	*lp = smtp_loop_at(0);
	struct handoff		*h;
	int			 ra = l->lc->reply_after == -1 ?
	    sm->cfg->reply_after : l->lc->reply_after;

	if (ra != REPLY_AFTER_GRAPH)
		lp = smtp_loop_next();
	if (smtp_loop_is0(lp)) {
		smtp_session_new(sm, l, sm->cfg, fd, sa, salen,
		    smtp_session_seq());
		return;
	}
	h = xcalloc(1, sizeof(*h));
	h->sm = sm;
	h->l = l;
	h->cfg = sm->cfg;
	h->fd = fd;
	memcpy(&h->ss, sa, salen < sizeof(h->ss) ? salen : sizeof(h->ss));
	h->salen = salen;
	h->seq = smtp_session_seq();
	smtp_session_handed(smtp_loop_index(lp), h->seq);
	smtp_loop_call(lp, handoff_cb, h);
}

/* A client, with its real address: limits, then a session. */
static void
accept_client(struct smtp_listener *l, int fd, const struct sockaddr *sa,
    socklen_t salen)
{
	struct smtp		 *sm = l->smtp;
	struct client_count	**cp, *c;
	uint8_t			  key[17];
	char			  ip[ADDR_STRLEN], buf[256];
	int			  one = 1;

	addr_ntop(sa, ip, sizeof(ip));
	if (!listener_allows(l, sa)) {
		log_warnx("smtp refused client=%s listener=%s reason=\"not in "
		    "this listener's networks\"", ip, l->name);
		snprintf(buf, sizeof(buf), "554 5.7.1 %s Access denied: your "
		    "address is not allowed here\r\n", sm->cfg->hostname);
		if (l->implicit_tls)
			close(fd);	/* it expects TLS, not text */
		else
			refuse(fd, buf);
		return;
	}
	if (sm->draining) {
		snprintf(buf, sizeof(buf), "421 4.3.2 %s Service shutting "
		    "down, try again later\r\n", sm->cfg->hostname);
		if (l->implicit_tls)
			close(fd);
		else
			refuse(fd, buf);
		return;
	}
	addr_key(sa, key);
	cp = client_find(sm, key);
	if (*cp != NULL && (*cp)->n >= sm->cfg->max_connections_per_client) {
		log_warnx("smtp refused client=%s listener=%s reason=\"too "
		    "many connections from this client "
		    "(max_connections_per_client=%llu)\"", ip, l->name,
		    (unsigned long long)sm->cfg->max_connections_per_client);
		snprintf(buf, sizeof(buf), "421 4.7.0 %s Too many connections "
		    "from your address, try again later\r\n",
		    sm->cfg->hostname);
		refuse(fd, buf);
		return;
	}
	/*
	 * Full: under stress the idlest session makes room (it goes on the
	 * next loop turn, so the count stays up until then and each client
	 * accepted meanwhile evicts one of its own).
	 */
	if (sm->nsessions >= sm->stress.limit && (!sm->stress.active ||
	    smtp_session_evict() == -1)) {
		log_warnx("smtp refused client=%s listener=%s reason=\"too "
		    "many connections (max_connections=%llu)\"", ip, l->name,
		    (unsigned long long)sm->stress.limit);
		snprintf(buf, sizeof(buf), "421 4.7.0 %s Too many connections, "
		    "try again later\r\n", sm->cfg->hostname);
		refuse(fd, buf);
		return;
	}
	if ((c = *cp) == NULL) {
		c = *cp = xcalloc(1, sizeof(*c));
		memcpy(c->key, key, 17);
	}
	c->n++;
	sm->nsessions++;
	stress_check(sm);
	figures_changed(sm);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	session_start(l, fd, sa, salen);
}

static void
resume_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct smtp_listener	*l = arg;

	(void)fd;
	(void)ev;
	evconnlistener_enable(l->evl);
}

static void
accept_error_cb(struct evconnlistener *evl, void *arg)
{
	struct smtp_listener	*l = arg;
	struct timeval		 tv = { 1, 0 };

	if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
	    errno == ENOMEM) {
		log_warn("smtp listener=%s accept paused for 1s", l->name);
		evconnlistener_disable(evl);
		evtimer_add(l->resume, &tv);
	} else if (errno != EAGAIN && errno != ECONNABORTED && errno != EINTR)
		log_warn("smtp listener=%s accept", l->name);
}

/*
 * max_connections in force for cfg: from the descriptors this process
 * has, said in the log at start, and again when a reload changes it.
 */
static void
smtp_set_limit(struct smtp *sm, const struct config *cfg)
{
	struct rlimit	 rl;
	uint64_t	 nofile = 1024, limit, allowed;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
		nofile = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX / 2 :
		    (uint64_t)rl.rlim_cur;
	limit = stress_conn_limit(cfg->max_connections, nofile, &allowed);
	if (cfg->max_connections > limit)
		log_warnx("smtp: max_connections=%llu is more than the "
		    "descriptors allow (RLIMIT_NOFILE %llu, %d kept for "
		    "relayd): %llu instead; raise the hard limit "
		    "(LimitNOFILE= in relayd.service) to allow more",
		    (unsigned long long)cfg->max_connections,
		    (unsigned long long)nofile, STRESS_FD_RESERVE,
		    (unsigned long long)allowed);
	if (sm->cfg == NULL || limit != sm->stress.limit)
		log_info("smtp: max_connections=%llu (descriptors %llu)%s",
		    (unsigned long long)limit, (unsigned long long)nofile,
		    cfg->max_connections == 0 ? " from the descriptor limit" :
		    "");
	sm->cfg = cfg;
	sm->stress.limit = limit;
	stress_check(sm);
}

/* The command timeout for a session now: shorter under stress. */
uint64_t
smtp_command_timeout(const struct smtp *sm, const struct config *cfg)
{
	return stress_timeout(&sm->stress, cfg->command_timeout_ms,
	    cfg->stress_timeout_ms);
}

void
smtp_count_evicted(struct smtp *sm)
{
	if (post_remote(sm, REMOTE_EVICTED, 0, NULL))
		return;
	sm->stress.evicted++;
	figures_changed(sm);
}

struct smtp *
smtp_new(struct event_base *base, const struct config *cfg,
    struct spool *spool)
{
	struct smtp	*sm;

	sm = xcalloc(1, sizeof(*sm));
	sm->base = base;
	sm->spool = spool;
	smtp_set_limit(sm, cfg);
	return sm;
}

/*
 * Socket activation (relayd.socket): a descriptor systemd passed that
 * listens on exactly this address, taken once; -1 if none.
 */
static int
passed_fd(const struct listen_cfg *lc, int *passed, int npassed)
{
	int	 i, fd;

	for (i = 0; i < npassed; i++) {
		fd = SD_LISTEN_FDS_START + i;
		if (!passed[i] && sd_is_socket_sockaddr(fd, SOCK_STREAM,
		    (const struct sockaddr *)&lc->ss, lc->sslen, 1) > 0) {
			passed[i] = 1;
			return fd;
		}
	}
	return -1;
}

/* One listening socket: systemd's for this address, or bound here. */
static int
open_one(const struct listen_cfg *lc, int *passed, int npassed, char *err,
    size_t len)
{
	int	 fd, one = 1, flags;

	if ((fd = passed_fd(lc, passed, npassed)) != -1) {
		flags = fcntl(fd, F_GETFL);
		fcntl(fd, F_SETFL, flags | O_NONBLOCK);
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		log_info("smtp listener=%s: socket from systemd", lc->text);
		return fd;
	}
	fd = socket(lc->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0);
	if (fd != -1) {
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (lc->ss.ss_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one,
			    sizeof(one));
		if (bind(fd, (const struct sockaddr *)&lc->ss, lc->sslen) !=
		    -1 && listen(fd, SMTP_BACKLOG) != -1)
			return fd;
	}
	snprintf(err, len, "listen %s: %s%s", lc->text, strerror(errno),
	    errno == EACCES ? " (ports below 1024 need "
	    "CAP_NET_BIND_SERVICE)" : errno == EADDRINUSE ? " (another "
	    "program has this port)" : errno == EADDRNOTAVAIL ? " (no such "
	    "local address)" : "");
	if (fd != -1)
		close(fd);
	return -1;
}

int *
smtp_open(const struct config *cfg, char *err, size_t len)
{
	size_t	 i;
	int	 npassed = sd_listen_fds(1), *passed, *fds, k;

	if (npassed < 0)
		npassed = 0;
	passed = xcalloc((size_t)npassed + 1, sizeof(*passed));
	fds = xcalloc(cfg->nlisten + 1, sizeof(*fds));
	for (i = 0; i < cfg->nlisten; i++)
		if ((fds[i] = open_one(&cfg->listen[i], passed, npassed, err,
		    len)) == -1) {
			while (i-- > 0)
				close(fds[i]);
			free(fds);
			fds = NULL;
			break;
		}
	for (k = 0; k < npassed; k++)
		if (!passed[k]) {
			if (fds != NULL)
				log_warnx("smtp: a socket from systemd matches "
				    "no listen line of relayd.conf; closed "
				    "(make relayd.socket's ListenStream= and "
				    "listen agree)");
			close(SD_LISTEN_FDS_START + k);
		}
	free(passed);
	return fds;
}

static int
listen_one(struct smtp *sm, const struct listen_cfg *lc, int fd, char *err,
    size_t len)
{
	struct smtp_listener	*l = &sm->listeners[sm->nlisteners];

	l->smtp = sm;
	strlcpy_r(l->name, lc->text, sizeof(l->name));
	l->implicit_tls = lc->tls;
	l->lc = lc;
	l->auth_plaintext = lc->auth_plaintext;
	if (lc->cert != NULL &&
	    (l->tls = tls_ctx_new(lc, err, len)) == NULL)
		return -1;
	if (l->tls != NULL && lc->tls_min < TLS_V1_2)
		log_warnx("smtp listener=%s tls_min=1.%d: TLS older than 1.2 is "
		    "accepted here (for old devices only)", lc->text,
		    lc->tls_min);
	/* Not closed on free: the parent's copy keeps the port open. */
	l->evl = evconnlistener_new(sm->base, accept_cb, l, 0, 0, fd);
	if (l->evl == NULL) {
		SSL_CTX_free(l->tls);
		l->tls = NULL;
		snprintf(err, len, "listen %s: %s", lc->text, strerror(errno));
		return -1;
	}
	evconnlistener_set_error_cb(l->evl, accept_error_cb);
	l->resume = evtimer_new(sm->base, resume_cb, l);
	sm->nlisteners++;
	log_info("smtp listening listener=%s%s", lc->text, lc->tls ?
	    " tls=implicit" : l->tls != NULL ? " tls=starttls" : "");
	return 0;
}

int
smtp_listen(struct smtp *sm, const int *fds, char *err, size_t len)
{
	size_t	 i;

	sm->listeners = xcalloc(sm->cfg->nlisten, sizeof(*sm->listeners));
	for (i = 0; i < sm->cfg->nlisten; i++)
		if (listen_one(sm, &sm->cfg->listen[i], fds[i], err, len) == -1)
			return -1;
	return 0;
}

void
smtp_free(struct smtp *sm)
{
	struct client_count	*c, *next;
	size_t			 i;

	if (sm == NULL)
		return;
	while (sm->proxied != NULL) {
		struct proxied *pc = sm->proxied;

		proxied_forget(pc);
		close(pc->fd);
		free(pc);
	}
	for (i = 0; i < sm->nlisteners; i++) {
		evconnlistener_free(sm->listeners[i].evl);
		event_free(sm->listeners[i].resume);
		SSL_CTX_free(sm->listeners[i].tls);
	}
	free(sm->listeners);
	for (i = 0; i < CLIENT_BUCKETS; i++)
		for (c = sm->clients[i]; c != NULL; c = next) {
			next = c->next;
			free(c);
		}
	free(sm);
}

/*
 * A reload (loop 0) swaps a listener's context while other loops make
 * sessions from it: both under tls_lock. An SSL holds its own reference,
 * so the old context is freed outside.
 */
static pthread_mutex_t tls_lock = PTHREAD_MUTEX_INITIALIZER;

SSL *
smtp_listener_ssl_new(const struct smtp_listener *l)
{
	SSL	*ssl = NULL;

	pthread_mutex_lock(&tls_lock);
	if (l->tls != NULL)
		ssl = SSL_new(l->tls);
	pthread_mutex_unlock(&tls_lock);
	return ssl;
}

void
smtp_reload_tls(struct smtp *sm)
{
	struct smtp_listener	*l;
	SSL_CTX			*ctx;
	char			 err[512];
	size_t			 i;

	for (i = 0; i < sm->nlisteners; i++) {
		l = &sm->listeners[i];
		if (l->tls == NULL)
			continue;
		/* Sessions hold their own reference to the old context. */
		if ((ctx = tls_ctx_new(l->lc, err, sizeof(err))) == NULL) {
			log_warnx("smtp listener=%s: certificate not reloaded, "
			    "the old one stays: %s", l->name, err);
			continue;
		}
		pthread_mutex_lock(&tls_lock);
		SSL_CTX_free(l->tls);
		l->tls = ctx;
		pthread_mutex_unlock(&tls_lock);
		log_info("smtp listener=%s: certificate reloaded cert=%s",
		    l->name, l->lc->cert);
	}
}

size_t
smtp_nsessions(const struct smtp *sm)
{
	return sm->nsessions;
}

static const char *const refusal_names[SMTP_REFUSED_MAX] = {
	[SMTP_REFUSED_RELAY] = "relay_denied",
	[SMTP_REFUSED_AUTH] = "auth_failed",
	[SMTP_REFUSED_SIZE] = "too_big",
	[SMTP_REFUSED_POLICY] = "policy",
	[SMTP_REFUSED_SMUGGLING] = "smuggling",
};

const char *
smtp_refusal_name(enum smtp_refusal r)
{
	return r < SMTP_REFUSED_MAX ? refusal_names[r] : "unknown";
}

void
smtp_count_received(struct smtp *sm)
{
	if (post_remote(sm, REMOTE_RECEIVED, 0, NULL))
		return;
	sm->counts.received++;
	figures_changed(sm);
}

void
smtp_count_refused(struct smtp *sm, enum smtp_refusal r)
{
	if (post_remote(sm, REMOTE_REFUSED, r, NULL))
		return;
	if (r < SMTP_REFUSED_MAX)
		sm->counts.refused[r]++;
	figures_changed(sm);
}

void
smtp_set_changed_cb(struct smtp *sm, void (*cb)(void *), void *arg)
{
	sm->changed = cb;
	sm->changed_arg = arg;
}

void
smtp_counts(const struct smtp *sm, struct smtp_counts *c)
{
	*c = sm->counts;
}

static void
figure_lockout(void *arg, const struct auth_lockout *lk)
{
	struct smtp_figures	*f = arg;

	if (f->nlocked < SMTP_FIG_LOCKED) {
		strlcpy_r(f->locked[f->nlocked].addr, lk->addr,
		    sizeof(f->locked[f->nlocked].addr));
		f->locked[f->nlocked].until = lk->until;
		f->locked[f->nlocked].failures = lk->failures;
	}
	f->nlocked++;
}

void
smtp_figures(const struct smtp *sm, struct auth *a, struct smtp_figures *f)
{
	size_t	 i;

	memset(f, 0, sizeof(*f));
	f->nsessions = sm->nsessions;
	f->counts = sm->counts;
	f->max_connections = sm->stress.limit;
	f->stress_active = (uint32_t)sm->stress.active;
	f->stress_since = sm->stress.since_ms;
	f->stress_entered = sm->stress.entered;
	f->stress_evicted = sm->stress.evicted;
	for (i = 0; i < sm->nlisteners && i < SMTP_FIG_LISTENERS; i++)
		strlcpy_r(f->listeners[i], sm->listeners[i].name,
		    sizeof(f->listeners[i]));
	f->nlisteners = (uint32_t)i;
	if (a == NULL)
		return;
	f->auth_on = 1;
	auth_counts(a, &f->auth_failures, &f->auth_lockouts);
	auth_lockouts(a, figure_lockout, f);
}

int
smtp_reconfigure(struct smtp *sm, const struct config *cfg)
{
	size_t	 i;
	int	 same = cfg->nlisten == sm->nlisteners;

	for (i = 0; same && i < sm->nlisteners; i++)
		same = strcmp(cfg->listen[i].text, sm->listeners[i].name) ==
		    0 && cfg->listen[i].tls == sm->listeners[i].implicit_tls &&
		    cfg->listen[i].proxy == sm->listeners[i].lc->proxy &&
		    cfg->listen[i].auth_plaintext ==
		    sm->listeners[i].auth_plaintext;
	smtp_set_limit(sm, cfg);
	for (i = 0; same && i < sm->nlisteners; i++)
		__atomic_store_n(&sm->listeners[i].lc, &cfg->listen[i],
		    __ATOMIC_RELEASE);
	smtp_reload_tls(sm);
	return same ? 0 : -1;
}

void
smtp_drain(struct smtp *sm)
{
	__atomic_store_n(&sm->draining, 1, __ATOMIC_RELAXED);
	on_every_loop(drain_each);
}

int
smtp_draining(const struct smtp *sm)
{
	return __atomic_load_n(&sm->draining, __ATOMIC_RELAXED);
}

size_t
smtp_nlisteners(const struct smtp *sm)
{
	return sm->nlisteners;
}

const struct smtp_listener *
smtp_listener_at(const struct smtp *sm, size_t i)
{
	return i < sm->nlisteners ? &sm->listeners[i] : NULL;
}

const struct config *
smtp_config(const struct smtp *sm)
{
	return sm->cfg;
}

struct spool *
smtp_spool(const struct smtp *sm)
{
	return sm->spool;
}

struct event_base *
smtp_base(const struct smtp *sm)
{
	return sm->base;
}

const char *
smtp_listener_name(const struct smtp_listener *l)
{
	return l->name;
}

SSL_CTX *
smtp_listener_tls(const struct smtp_listener *l)
{
	return l->tls;
}

int
smtp_listener_implicit_tls(const struct smtp_listener *l)
{
	return l->implicit_tls;
}

int
smtp_listener_auth_plaintext(const struct smtp_listener *l)
{
	return l->auth_plaintext;
}

/* From the listen line in force: a reload may change it. */
int
smtp_listener_require_auth(const struct smtp_listener *l)
{
	return __atomic_load_n(&l->lc, __ATOMIC_ACQUIRE)->require_auth;
}

int
smtp_listener_reply_after(const struct smtp_listener *l)
{
	return __atomic_load_n(&l->lc, __ATOMIC_ACQUIRE)->reply_after;
}

/* On loop 0: what a session of another loop reported (post_remote). */
static void
remote_cb(void *arg)
{
	struct remote	*rm = arg;

	switch (rm->what) {
	case REMOTE_GONE:
		smtp_session_gone(rm->sm, (struct sockaddr *)&rm->ss);
		break;
	case REMOTE_RECEIVED:
		smtp_count_received(rm->sm);
		break;
	case REMOTE_REFUSED:
		smtp_count_refused(rm->sm, rm->refusal);
		break;
	case REMOTE_EVICTED:
		smtp_count_evicted(rm->sm);
		break;
	}
	free(rm);
}

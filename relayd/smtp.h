/* smtp.h - SMTP listeners and accept; sessions live in smtp_session.c. */
#ifndef RELAYD_SMTP_H
#define RELAYD_SMTP_H

#include <sys/socket.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct event_base;
struct spool;
struct smtp;
struct smtp_listener;
struct smtp_session;

struct smtp	*smtp_new(struct event_base *, const struct config *,
		    struct spool *);
/* Binds every listen address; on failure says which and why in err. */
/*
 * In the parent, before the children: one listening socket per listen
 * line (systemd's, or bound here), malloc'd; NULL with err if not.
 */
int		*smtp_open(const struct config *, char *, size_t);
/* In the SMTP child: accepts on those sockets (inherited). */
int		 smtp_listen(struct smtp *, const int *, char *, size_t);
void		 smtp_free(struct smtp *);
/*
 * SIGHUP: new sessions take cfg (the caller keeps the old one alive for
 * the sessions that have it); listeners take their new networks and
 * certificates if the listen lines are the same, else -1 (a restart
 * applies them).
 */
int		 smtp_reconfigure(struct smtp *, const struct config *);
/* Loads every listener's certificate and key again (SIGHUP). */
void		 smtp_reload_tls(struct smtp *);
size_t		 smtp_nsessions(const struct smtp *);

/* Why a client was refused, for relayd_smtp_refused_total{reason}. */
enum smtp_refusal {
	SMTP_REFUSED_RELAY,	/* 554 to RCPT: not in allow_networks */
	SMTP_REFUSED_AUTH,	/* 535, or 454 to a locked-out address */
	SMTP_REFUSED_SIZE,	/* 552: past max_message_size */
	SMTP_REFUSED_POLICY,	/* [senders], recipient_domains, require_auth */
	SMTP_REFUSED_SMUGGLING,	/* bare CR or LF in the data (bare_lf) */
	SMTP_REFUSED_MAX
};

/* Counters since start (loop thread). */
struct smtp_counts {
	uint64_t	 received;	/* messages answered 250 queued */
	uint64_t	 refused[SMTP_REFUSED_MAX];
};
void		 smtp_counts(const struct smtp *, struct smtp_counts *);

/*
 * What relayctl status and the metrics show of the SMTP side, as the SMTP
 * process sends it to the delivery process (link.h LINK_FIGURES: these
 * bytes; both ends are the same binary). Listeners and lockouts past the
 * arrays' size are left out (and nlocked still counts them).
 */
#define SMTP_FIG_LISTENERS	32
#define SMTP_FIG_LOCKED		64
#define SMTP_FIG_NAME		64	/* ADDR_STRLEN */
struct smtp_figures {
	uint64_t	 nsessions;
	struct smtp_counts counts;
	uint64_t	 max_connections;	/* in force */
	uint32_t	 stress_active;
	uint64_t	 stress_since;		/* wall clock, ms; 0: never */
	uint64_t	 stress_entered;	/* times since start */
	uint64_t	 stress_evicted;	/* sessions, since start */
	uint32_t	 nlisteners;
	char		 listeners[SMTP_FIG_LISTENERS][SMTP_FIG_NAME];
	uint32_t	 auth_on;		/* [auth] users_file set */
	uint64_t	 auth_failures, auth_lockouts;
	uint32_t	 nlocked;
	struct {
		char	 addr[SMTP_FIG_NAME];
		uint64_t until;			/* wall clock, ms */
		uint32_t failures;
	}		 locked[SMTP_FIG_LOCKED];
};
struct auth;
/* f filled in from the SMTP side now (auth: the one in force, or NULL). */
void		 smtp_figures(const struct smtp *, struct auth *,
		    struct smtp_figures *);
/* cb runs when sessions come or go or a counter moves (loop thread). */
void		 smtp_set_changed_cb(struct smtp *, void (*)(void *), void *);
/* The reason's label: relay_denied, auth_failed, too_big, ... */
const char	*smtp_refusal_name(enum smtp_refusal);
/*
 * Stopping: new clients get 421, sessions between transactions are told
 * 421 and closed, the others once their transaction is done.
 */
void		 smtp_drain(struct smtp *);
/* Whether smtp_drain() was called: relayd is stopping. */
int		 smtp_draining(const struct smtp *);
size_t		 smtp_nlisteners(const struct smtp *);
const struct smtp_listener *smtp_listener_at(const struct smtp *, size_t);

/* For smtp_session.c. */
void		 smtp_count_received(struct smtp *);
void		 smtp_count_refused(struct smtp *, enum smtp_refusal);
const struct config *smtp_config(const struct smtp *);
struct spool	*smtp_spool(const struct smtp *);
struct event_base *smtp_base(const struct smtp *);
const char	*smtp_listener_name(const struct smtp_listener *);
/* The listener's TLS context (NULL: no certificate); is TLS implicit? */
struct ssl_ctx_st *smtp_listener_tls(const struct smtp_listener *);
int		 smtp_listener_implicit_tls(const struct smtp_listener *);
/* A new TLS session from the listener's context now (any loop). */
struct ssl_st	*smtp_listener_ssl_new(const struct smtp_listener *);
int		 smtp_listener_auth_plaintext(const struct smtp_listener *);
int		 smtp_listener_require_auth(const struct smtp_listener *);
/* The listen line's reply_after=, -1 if it has none. */
int		 smtp_listener_reply_after(const struct smtp_listener *);
void		 smtp_session_gone(struct smtp *, const struct sockaddr *);
/* The command timeout for a session of cfg now (stress.c shortens it). */
uint64_t	 smtp_command_timeout(const struct smtp *,
		    const struct config *);
void		 smtp_count_evicted(struct smtp *);

/* smtp_session.c */
/*
 * On the loop the session is to live on (smtp_loops.c); seq from
 * smtp_session_seq() when it was accepted: the order of the sessions
 * over all loops, for eviction.
 */
struct config;
void		 smtp_session_new(struct smtp *, struct smtp_listener *,
		    const struct config *, int, const struct sockaddr *,
		    socklen_t, uint64_t);
uint64_t	 smtp_session_seq(void);
/*
 * A session handed to another loop is counted there by loop 0 at once
 * (handed: the loop's index and its seq), and arrives there (arrived, on
 * that loop, before smtp_session_new): eviction sees it meanwhile.
 */
void		 smtp_session_handed(size_t, uint64_t);
void		 smtp_session_arrived(void);
/*
 * Scratch buffers sized from the config; call once at start (loop 0;
 * other loops make theirs at their first session).
 */
void		 smtp_session_init(const struct config *);
void		 smtp_session_shutdown(void);
/*
 * Under stress, a client found every connection taken: the session idle
 * longest that has not started a message is told 421 and goes (0), or
 * none may (-1).
 */
int		 smtp_session_evict(void);
/*
 * Stress began: every session's timeout is shortened now. This, drain,
 * evict and shutdown see the sessions of the calling thread's loop.
 */
void		 smtp_session_stress(void);
/* smtp_drain()'s part for the sessions already open. */
void		 smtp_session_drain(void);
/* AUTH for every session (NULL: none); the caller keeps it alive. */
struct auth;
void		 smtp_session_set_auth(struct auth *);
/*
 * The link to delivery (NULL: none): reply_after = graph (none: answers
 * after the spool), and history rows.
 */
struct intake;
void		 smtp_session_set_intake(struct intake *);

#endif

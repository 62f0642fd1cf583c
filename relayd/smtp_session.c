/*
 * smtp_session.c - one SMTP connection: an explicit state machine, a table of
 * commands, one reply function and one place that frees.
 *
 * The session owns its bufferevent and, from MAIL to the end of the data, a
 * transaction (struct smtp_tx) that owns the spool file being written. Input
 * is handled strictly in order: while a message is being committed to disk
 * the session acts on no further commands (they wait in the input buffer),
 * so pipelined commands are answered in order and a 250 is only ever sent
 * for a message that is durable.
 *
 * With reply_after = graph the reply to the message also waits (STATE_GRAPH,
 * commands still wait) for the worker pool's first attempt: 250 once Graph
 * took it, 5xx when Graph refused it for good (and relayd kept no copy),
 * 250 after a temporary failure or reply_timeout (it stays queued). It is
 * in queue/, fsynced, before the pool sees it, so a crash while the client
 * waits loses nothing: at worst the client, never answered, sends it again.
 *
 * Limits (config): line length, message size, recipients, errors, idle
 * timeouts. Under stress (smtp.c, stress.c) the command timeout shrinks
 * to stress_timeout, for every session at once when stress begins and
 * back at a session's next command when it ends; and the sessions between
 * transactions, kept on an idle list in the order of their last command,
 * are evicted from its head when a new client finds every slot taken.
 * DATA is decoded by smtp_proto.c's data_dec, which only ends on CRLF.CRLF;
 * bare CR/LF are refused or normalised, never a line end.
 *
 * Several loops (smtp_loops.c): a session lives on one loop, and this
 * file's lists and scratch buffers are per thread. A message committed
 * on another loop than loop 0 is called back on loop 0 (the spool's) and
 * its result posted to the session's loop (struct ticket); history rows
 * are posted to loop 0, where the link is. AUTH's failure table locks.
 */
#include <sys/ioctl.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "addr.h"
#include "auth.h"
#include "config.h"
#include "graph_result.h"
#include "history.h"
#include "log.h"
#include "mime.h"
#include "policy.h"
#include "smtp.h"
#include "smtp_loops.h"
#include "smtp_proto.h"
#include "spool.h"
#include "stress.h"
#include "tls.h"
#include "util.h"
#include "link_smtp.h"	/* and worker.h: struct worker_answer */

#define SMTP_READ_HIGHWAT	(256 * 1024)	/* bytes buffered per client */
#define SMTP_DATA_CHUNK		(64 * 1024)	/* decoded per pass */
#define SMTP_DATA_MIN_RATE	256	/* bytes/s past data_timeout */
#define SMTP_OUT_MAX		(64 * 1024)	/* unread replies before we wait */
#define SMTP_LOGTEXT_MAX	128
#define SMTP_LINGER_SEC		2	/* discard input after the last reply */
#define SMTP_HEAD_MAX		(64 * 1024)	/* header bytes kept for From: */

enum smtp_state {
	STATE_NEW,		/* connected, greeting not yet sent */
	STATE_GREETED,		/* waiting for HELO/EHLO */
	STATE_HELO,		/* ready for MAIL */
	STATE_RCPT,		/* in a transaction (MAIL given) */
	STATE_DATA,		/* reading DATA */
	STATE_BDAT,		/* reading a BDAT chunk */
	STATE_COMMIT,		/* waiting for the spool; commands wait */
	STATE_CLOSING,		/* flushing the last reply */
	STATE_AUTH,		/* reading a SASL response line */
	STATE_AUTH_WAIT,	/* a failed AUTH waits before its 535 */
	STATE_GRAPH,		/* waiting for Graph's answer; commands wait */
};

enum tx_error {
	TX_OK,
	TX_ERR_SIZE,		/* over max_message_size */
	TX_ERR_SPOOL,		/* write failed */
	TX_ERR_SEQ,		/* BDAT without MAIL/RCPT */
};

struct smtp_tx {
	char			 mail_from[SMTP_PATH_MAX + 1];
	char			*mail_params;
	char			**rcpts;
	size_t			 nrcpts;
	int			 smtputf8;
	int			 bdat;		/* BDAT used: DATA no more */
	uint64_t		 size;
	int			 error;
	int			 spool_errno;
	struct data_dec		 dec;
	struct spool_msg	*msg;
	int			 committing;	/* msg is the spool's now */
	struct ticket		*ticket;	/* committed from another loop */
	char			*head;		/* header block, for From: */
	size_t			 headlen;
	int			 head_done;	/* stop keeping */
	int			 head_ended;	/* the blank line was seen */
	uint64_t		 data_started;	/* now_ms() at the 354 */
	uint64_t		 arrival_ms;	/* wall clock, as spooled */
	uint64_t		 received_len;	/* our Received: line */
	uint64_t		 data_bytes;	/* read since, as sent */
};

/*
 * A commit from another loop than loop 0: the spool calls back on loop 0,
 * which posts the result to the session's loop; s is NULL once it went.
 */
struct history_copy;
struct ticket {
	struct smtp_session	*s;		/* its loop only */
	struct smtp		*smtp;
	struct smtp_loop	*loop;
	struct history_copy	*hist;		/* the row, for loop 0 */
	int			 err;
	char			 qid[SPOOL_QID_LEN + 1];
};

struct smtp_session {
	uint64_t		 id;
	struct smtp		*smtp;
	struct event_base	*base;		/* its loop's */
	uint64_t		 idle_seq;	/* order it went idle, all loops */
	const struct config	*cfg;
	struct smtp_listener	*listener;
	struct bufferevent	*bev;
	struct event		*timer;		/* greeting delay, deferred free */
	struct sockaddr_storage	 ss;
	char			 addr[ADDR_STRLEN];
	enum smtp_state		 state;
	int			 ehlo;
	int			 relay_ok;
	int			 require_auth;	/* [smtp] or the listener's */
	int			 reply_graph;	/* reply_after = graph */
	char			 wait_qid[SPOOL_QID_LEN + 1];	/* STATE_GRAPH */
	struct event		*reply_timer;	/* reply_timeout */
	uint64_t		 wait_until;	/* now_ms() */
	char			*helo;
	struct smtp_tx		*tx;
	uint64_t		 bdat_left;
	uint64_t		 bdat_chunk;
	int			 bdat_last;
	int			 discard_line;
	uint64_t		 line_started;	/* ms; 0: no partial line */
	unsigned		 nerrors;
	unsigned		 nmsgs;
	int			 freeing;
	int			 lingering;
	int			 evicted;	/* no linger: its slot is wanted */
	int			 out_blocked;	/* waiting for the client to read */
	int			 write_armed;	/* libevent is flushing for us */
	SSL			*ssl;		/* TLS is on (bev does it) */
	struct auth_xchg	*ax;		/* an AUTH exchange */
	char			*user;		/* authenticated as */
	struct event		*auth_timer;	/* the delay before a 535 */
	struct auth_tally	 tally;		/* failed AUTHs, for counting */
	int			 tls_switch;	/* STARTTLS: stop reading */
	int			 seen_input;
	uint64_t		 timeout_ms;	/* armed idle timeout */
	const char		*close_reason;
	struct idle_entry	 idle;		/* evictable: no transaction */
	LIST_ENTRY(smtp_session) entry;
};

#define SESSION_OF_IDLE(e) \
	((struct smtp_session *)(void *)((char *)(e) - \
	offsetof(struct smtp_session, idle)))

struct smtp_cmd_entry {
	enum smtp_cmd	 cmd;
	unsigned	 states;	/* bit per enum smtp_state */
	void		(*fn)(struct smtp_session *, const char *);
	const char	*wrong_state;	/* 503 text */
};

static void	smtp_reply(struct smtp_session *, const char *, ...)
		    PRINTFLIKE(2, 3);
static void	smtp_process(struct smtp_session *);
static void	smtp_close(struct smtp_session *, const char *);
static void	smtp_enter(struct smtp_session *, enum smtp_state);
static void	linger(struct smtp_session *);
static void	smtp_flush(struct smtp_session *);
static void	read_cb(struct bufferevent *, void *);
static void	write_cb(struct bufferevent *, void *);
static void	event_cb(struct bufferevent *, short, void *);
static void	session_free_later(struct smtp_session *);
static void	cmd_helo(struct smtp_session *, const char *);
static void	cmd_ehlo(struct smtp_session *, const char *);
static void	cmd_mail(struct smtp_session *, const char *);
static void	cmd_rcpt(struct smtp_session *, const char *);
static void	cmd_data(struct smtp_session *, const char *);
static void	cmd_bdat(struct smtp_session *, const char *);
static void	cmd_rset(struct smtp_session *, const char *);
static void	cmd_noop(struct smtp_session *, const char *);
static void	cmd_quit(struct smtp_session *, const char *);
static void	cmd_help(struct smtp_session *, const char *);
static void	cmd_vrfy(struct smtp_session *, const char *);
static void	cmd_notimpl(struct smtp_session *, const char *);
static void	cmd_starttls(struct smtp_session *, const char *);
static void	cmd_auth(struct smtp_session *, const char *);
static void	auth_line(struct smtp_session *, const char *);
static void	cmd_http(struct smtp_session *, const char *);

#define S(x)		(1u << (x))
#define S_CMD		(S(STATE_GREETED) | S(STATE_HELO) | S(STATE_RCPT))

static const struct smtp_cmd_entry smtp_cmds[] = {
	{ CMD_HELO, S_CMD, cmd_helo, NULL },
	{ CMD_EHLO, S_CMD, cmd_ehlo, NULL },
	{ CMD_MAIL, S(STATE_HELO), cmd_mail, NULL },
	{ CMD_RCPT, S(STATE_RCPT), cmd_rcpt, "send MAIL FROM first" },
	{ CMD_DATA, S(STATE_RCPT), cmd_data, "send MAIL FROM first" },
	{ CMD_BDAT, S_CMD, cmd_bdat, NULL },
	{ CMD_RSET, S_CMD, cmd_rset, NULL },
	{ CMD_NOOP, S_CMD, cmd_noop, NULL },
	{ CMD_QUIT, S_CMD, cmd_quit, NULL },
	{ CMD_HELP, S_CMD, cmd_help, NULL },
	{ CMD_VRFY, S_CMD, cmd_vrfy, NULL },
	{ CMD_EXPN, S_CMD, cmd_notimpl, NULL },
	{ CMD_STARTTLS, S_CMD, cmd_starttls, NULL },
	{ CMD_AUTH, S(STATE_HELO) | S(STATE_RCPT), cmd_auth, NULL },
	{ CMD_HTTP, S_CMD, cmd_http, NULL },
};

/*
 * Scratch per loop: each loop is single-threaded and never re-enters.
 * auth and intake are set on loop 0 (intake is only used there).
 */
static struct auth *auth;	/* NULL: no [auth] users_file */
static struct intake *intake;	/* NULL: nothing delivers */
static size_t	 line_max;
static uint64_t	 next_id;	/* atomic */
static __thread char	*line_buf;
static __thread char	*dec_buf;
static __thread LIST_HEAD(, smtp_session) sessions;
static __thread struct idle_list idle;
static __thread int	 loop_ready;

/*
 * What each loop shows loop 0 of its idle list, for smtp_session_evict:
 * when its oldest session went idle (idle_seq, the order over all loops;
 * milliseconds would tie; UINT64_MAX: none), how many, and how many
 * evictions loop 0 asked of it that it has not done yet (atomics).
 */
static uint64_t	 idle_seq;
static struct {
	uint64_t	 oldest;
	uint64_t	 n;
	uint64_t	 asked;
} idle_pub[SMTP_LOOPS_MAX];

static void
idle_publish(void)
{
	struct idle_entry	*e = TAILQ_FIRST(&idle);
	size_t			 i = smtp_loop_index(smtp_loop_self());

	if (smtp_loops_count() <= 1)
		return;
	__atomic_store_n(&idle_pub[i].oldest, e != NULL ?
	    SESSION_OF_IDLE(e)->idle_seq : UINT64_MAX, __ATOMIC_RELAXED);
}

/*
 * On loop 0: a session with place seq is on its way to another loop.
 * Counted there at once, so that an eviction while it travels sees it:
 * a burst of clients is handed out faster than the loops take them.
 */
void
smtp_session_handed(size_t loop, uint64_t seq)
{
	uint64_t	 cur;

	__atomic_add_fetch(&idle_pub[loop].n, 1, __ATOMIC_RELAXED);
	cur = __atomic_load_n(&idle_pub[loop].oldest, __ATOMIC_RELAXED);
	while (seq < cur && !__atomic_compare_exchange_n(&idle_pub[loop].oldest,
	    &cur, seq, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

/* On the session's loop, just before smtp_session_new counts it again. */
void
smtp_session_arrived(void)
{
	__atomic_sub_fetch(&idle_pub[smtp_loop_index(smtp_loop_self())].n, 1,
	    __ATOMIC_RELAXED);
}

uint64_t
smtp_session_seq(void)
{
	if (smtp_loops_count() <= 1)
		return 0;
	return __atomic_add_fetch(&idle_seq, 1, __ATOMIC_RELAXED);
}

/* seq: the session's place in the order (smtp_session_seq). */
static void
idle_in_seq(struct idle_entry *e, uint64_t now, uint64_t seq)
{
	size_t	 i = smtp_loop_index(smtp_loop_self());

	if (!e->on)
		__atomic_add_fetch(&idle_pub[i].n, 1, __ATOMIC_RELAXED);
	SESSION_OF_IDLE(e)->idle_seq = seq;
	idle_touch(&idle, e, now);
	idle_publish();
}

static void
idle_in(struct idle_entry *e, uint64_t now)
{
	idle_in_seq(e, now, smtp_session_seq());
}

static void
idle_out(struct idle_entry *e)
{
	size_t	 i = smtp_loop_index(smtp_loop_self());

	if (!e->on)
		return;
	__atomic_sub_fetch(&idle_pub[i].n, 1, __ATOMIC_RELAXED);
	idle_remove(&idle, e);
	idle_publish();
}

/* This loop's lists and buffers, at its first session. */
static void
loop_local(void)
{
	if (loop_ready)
		return;
	LIST_INIT(&sessions);
	TAILQ_INIT(&idle);
	__atomic_store_n(&idle_pub[smtp_loop_index(smtp_loop_self())].oldest,
	    UINT64_MAX, __ATOMIC_RELAXED);
	line_buf = xmalloc(line_max + 3);
	dec_buf = xmalloc(DATA_DEC_OUTMAX(SMTP_DATA_CHUNK));
	loop_ready = 1;
}

void
smtp_session_set_auth(struct auth *a)
{
	__atomic_store_n(&auth, a, __ATOMIC_RELEASE);
}

/* The users in force now: a reload (loop 0) may change them. */
static struct auth *
auth_now(void)
{
	return __atomic_load_n(&auth, __ATOMIC_ACQUIRE);
}

void
smtp_session_set_intake(struct intake *in)
{
	intake = in;
}

void
smtp_session_init(const struct config *cfg)
{
	line_max = cfg->max_line_length;
	next_id = wall_us() << 8;
	loop_local();
}

static void	session_free_cb(evutil_socket_t, short, void *);

/* At exit: every session still open goes, with its unfinished message. */
void
smtp_session_shutdown(void)
{
	struct smtp_session	*s;

	if (!loop_ready)
		return;
	while ((s = LIST_FIRST(&sessions)) != NULL) {
		if (s->close_reason == NULL)
			s->close_reason = "shutdown";
		if (s->freeing)
			event_del(s->timer);
		session_free_cb(-1, 0, s);
	}
	free(line_buf);
	free(dec_buf);
	line_buf = dec_buf = NULL;
	loop_ready = 0;
}

/* This loop's idlest session goes (0), if it has one (else -1). */
static int
evict_here(void)
{
	struct idle_entry	*e;
	struct smtp_session	*s;

	if (!loop_ready || (e = idle_oldest(&idle)) == NULL)
		return -1;
	s = SESSION_OF_IDLE(e);
	idle_out(e);
	smtp_count_evicted(s->smtp);
	smtp_reply(s, "421 4.7.0 %s Too many connections: closing the idlest "
	    "(idle %.0fs), try again later", s->cfg->hostname,
	    (double)(now_ms() - e->since_ms) / 1000.0);
	s->close_reason = "evicted: idle longest while under stress";
	/*
	 * Plain: the reply goes now and the slot at once (no linger: an
	 * idle client has sent nothing we left unread). TLS needs the
	 * bufferevent to write it: that session goes as soon as it is out
	 * (linger() sees evicted); one still in its handshake could never
	 * read it and goes at once.
	 */
	if (s->ssl != NULL && SSL_is_init_finished(s->ssl)) {
		s->evicted = 1;
		smtp_close(s, s->close_reason);
		return 0;
	}
	smtp_flush(s);
	session_free_later(s);
	return 0;
}

/* On another loop: what loop 0 asked of it (smtp_session_evict). */
static void
evict_cb(void *arg)
{
	(void)arg;
	__atomic_sub_fetch(&idle_pub[smtp_loop_index(smtp_loop_self())].asked,
	    1, __ATOMIC_RELAXED);
	evict_here();
}

/*
 * On loop 0: the session idle longest of all loops goes, as far as their
 * published oldest tell (a loop asked already counts that many fewer).
 * Another loop's is asked to go and counted gone: if it started a
 * message meanwhile, one client more than the limit is let in.
 */
int
smtp_session_evict(void)
{
	size_t		 i, best = SIZE_MAX, n = smtp_loops_count();
	uint64_t	 oldest = UINT64_MAX, o, left;

	if (n <= 1)
		return evict_here();
	for (i = 0; i < n; i++) {
		o = __atomic_load_n(&idle_pub[i].oldest, __ATOMIC_RELAXED);
		left = __atomic_load_n(&idle_pub[i].n, __ATOMIC_RELAXED) -
		    __atomic_load_n(&idle_pub[i].asked, __ATOMIC_RELAXED);
		if (i == 0 && loop_ready)
			o = idle_oldest(&idle) != NULL ?
			    SESSION_OF_IDLE(idle_oldest(&idle))->idle_seq :
			    UINT64_MAX;
		if (left > 0 && left < UINT64_MAX / 2 && o < oldest) {
			oldest = o;
			best = i;
		}
	}
	if (best == SIZE_MAX)
		return -1;
	if (best == 0)
		return evict_here();
	__atomic_add_fetch(&idle_pub[best].asked, 1, __ATOMIC_RELAXED);
	smtp_loop_call(smtp_loop_at(best), evict_cb, NULL);
	return 0;
}

/* Stopping: a session between transactions says so and goes. */
static void
bye(struct smtp_session *s)
{
	smtp_reply(s, "421 4.3.2 %s Service shutting down, try again later",
	    s->cfg->hostname);
	smtp_close(s, "shutdown");
}

static void	graph_wait_drain(struct smtp_session *);

void
smtp_session_drain(void)
{
	struct smtp_session	*s, *next;

	if (!loop_ready)
		return;
	for (s = LIST_FIRST(&sessions); s != NULL; s = next) {
		next = LIST_NEXT(s, entry);
		if (!s->freeing && s->bev != NULL &&
		    (s->state == STATE_GREETED || s->state == STATE_HELO)) {
			bye(s);
			smtp_flush(s);
		} else if (!s->freeing && s->state == STATE_GRAPH)
			graph_wait_drain(s);
	}
}

static const char *
state_name(enum smtp_state st)
{
	static const char *const names[] = { "NEW", "GREETED", "HELO",
	    "RCPT", "DATA", "BDAT", "COMMIT", "CLOSING", "AUTH", "AUTH_WAIT",
	    "GRAPH" };

	return (unsigned)st < NELEM(names) ? names[st] : "?";
}

/* Between transactions: the sessions stress may evict. */
static int
evictable(enum smtp_state st)
{
	return st == STATE_NEW || st == STATE_GREETED || st == STATE_HELO ||
	    st == STATE_AUTH || st == STATE_AUTH_WAIT;
}

/* The idle timeout for the session's state now (stress shortens it). */
static uint64_t
session_timeout(const struct smtp_session *s)
{
	uint64_t	 cmd = smtp_command_timeout(s->smtp, s->cfg);

	if (s->state == STATE_DATA || s->state == STATE_BDAT)
		return s->cfg->data_timeout_ms;
	if (s->state == STATE_NEW)
		return s->cfg->greeting_delay_ms + cmd;
	return cmd;
}

static void
arm_timeout(struct smtp_session *s)
{
	struct timeval	 tv;
	uint64_t	 ms;

	if (s->bev == NULL || s->freeing || s->state == STATE_CLOSING ||
	    s->state == STATE_COMMIT || s->state == STATE_GRAPH)
		return;
	ms = session_timeout(s);
	if (ms == s->timeout_ms)	/* re-arming costs system calls */
		return;
	s->timeout_ms = ms;
	tv = ms_tv(ms);
	bufferevent_set_timeouts(s->bev, &tv, &tv);
}

static void
smtp_enter(struct smtp_session *s, enum smtp_state st)
{
	log_debug("%016" PRIx64 " smtp state %s -> %s", s->id,
	    state_name(s->state), state_name(st));
	s->state = st;
	if (!evictable(st) || s->freeing)
		idle_out(&s->idle);
	else if (!s->idle.on)
		idle_in(&s->idle, now_ms());
	if (s->bev != NULL && st == STATE_GRAPH) {
		/* reply_timeout bounds the wait; the client is silent. */
		bufferevent_set_timeouts(s->bev, NULL, NULL);
		s->timeout_ms = 0;
		return;
	}
	arm_timeout(s);
}

/* Stress began: idle sessions get the short timeout from now on. */
void
smtp_session_stress(void)
{
	struct smtp_session	*s;

	if (!loop_ready)
		return;
	LIST_FOREACH(s, &sessions, entry)
		arm_timeout(s);
}

static void
smtp_reply(struct smtp_session *s, const char *fmt, ...)
{
	struct evbuffer	*out;
	va_list		 ap;
	char		 buf[512];

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (buf[0] == '4' || buf[0] == '5') {
		char esc[sizeof(buf) * 2];
		log_info("%016" PRIx64 " smtp reply client=%s state=%s "
		    "result=\"%s\"", s->id, s->addr, state_name(s->state),
		    log_escape(esc, sizeof(esc), buf, strlen(buf)));
	}
	if (s->bev == NULL)
		return;
	out = bufferevent_get_output(s->bev);
	evbuffer_add_printf(out, "%s\r\n", buf);
}

/*
 * Writes pending replies now. Most replies fit in the socket buffer at once,
 * so libevent's write event is only armed for a client that is slow to read;
 * arming and disarming it for every reply would cost two system calls each.
 */
static void
smtp_flush(struct smtp_session *s)
{
	struct evbuffer	*out;
	int		 n;

	if (s->bev == NULL || s->write_armed || s->freeing || s->ssl != NULL)
		return;		/* under TLS the bufferevent writes by itself */
	out = bufferevent_get_output(s->bev);
	if (evbuffer_get_length(out) == 0)
		return;
	/* The bufferevent keeps its output frozen; we drain it ourselves. */
	evbuffer_unfreeze(out, 1);
	n = evbuffer_write(out, bufferevent_getfd(s->bev));
	evbuffer_freeze(out, 1);
	if (n == -1 && errno != EAGAIN && errno != EINTR) {
		if (s->close_reason == NULL)
			s->close_reason = "connection error";
		session_free_later(s);
		return;
	}
	if (evbuffer_get_length(out) > 0) {
		s->write_armed = 1;
		bufferevent_enable(s->bev, EV_WRITE);
	}
}

/* A client error: reply, and close once there were too many. */
static void
smtp_error(struct smtp_session *s, const char *fmt, ...) PRINTFLIKE(2, 3);

static void
smtp_error(struct smtp_session *s, const char *fmt, ...)
{
	va_list	 ap;
	char	 buf[512];

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	smtp_reply(s, "%s", buf);
	if (++s->nerrors >= s->cfg->max_errors) {
		smtp_reply(s, "421 4.7.0 %s Too many errors, closing "
		    "connection", s->cfg->hostname);
		smtp_close(s, "too many errors");
	}
}

static void
tx_free(struct smtp_session *s)
{
	struct smtp_tx	*tx = s->tx;
	size_t		 i;

	if (tx == NULL)
		return;
	if (tx->committing && tx->ticket != NULL)
		tx->ticket->s = NULL;		/* it finishes; nobody hears */
	else if (tx->committing)
		spool_msg_forget(tx->msg);	/* it finishes; nobody hears */
	else if (tx->msg != NULL)
		spool_msg_abort(tx->msg);
	for (i = 0; i < tx->nrcpts; i++)
		free(tx->rcpts[i]);
	free(tx->rcpts);
	free(tx->mail_params);
	free(tx->head);
	free(tx);
	s->tx = NULL;
}

/*
 * The session goes (client closed, timeout, shutdown) before Graph
 * answered: the message follows the normal path, and a refusal makes a
 * dead letter as for any other. The client never got a 250 and may send
 * the message again: a possible duplicate, never a loss, since relayd
 * keeps the message whatever Graph says.
 */
static void
graph_unwait(struct smtp_session *s)
{
	if (s->wait_qid[0] == '\0')
		return;
	intake_unwatch(intake, s->wait_qid);
	s->wait_qid[0] = '\0';
	evtimer_del(s->reply_timer);
}

static void
session_free_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct smtp_session	*s = arg;

	(void)fd;
	(void)ev;
	log_info("%016" PRIx64 " smtp disconnect client=%s msgs=%u "
	    "reason=\"%s\"", s->id, s->addr, s->nmsgs,
	    s->close_reason ? s->close_reason : "unknown");
	LIST_REMOVE(s, entry);
	idle_out(&s->idle);
	tx_free(s);
	graph_unwait(s);
	if (s->reply_timer != NULL)
		event_free(s->reply_timer);
	auth_end(s->ax);
	if (s->auth_timer != NULL)
		event_free(s->auth_timer);
	auth_tally_clear(&s->tally);
	free(s->user);
	if (s->bev != NULL)
		bufferevent_free(s->bev);
	event_free(s->timer);
	smtp_session_gone(s->smtp, (struct sockaddr *)&s->ss);
	free(s->helo);
	free(s);
}

/* Frees on the next loop turn, when no callback can still be using s. */
static void
session_free_later(struct smtp_session *s)
{
	struct timeval	 tv = { 0, 0 };

	if (s->freeing)
		return;
	s->freeing = 1;
	idle_out(&s->idle);
	graph_unwait(s);
	if (s->auth_timer != NULL)
		evtimer_del(s->auth_timer);	/* no 535 for a session gone */
	if (s->bev != NULL) {
		bufferevent_disable(s->bev, EV_READ | EV_WRITE);
		bufferevent_setcb(s->bev, NULL, NULL, NULL, NULL);
	}
	event_del(s->timer);
	event_assign(s->timer, s->base, -1, 0, session_free_cb, s);
	event_add(s->timer, &tv);
}

/* Closes after what was written is flushed. */
static void
smtp_close(struct smtp_session *s, const char *reason)
{
	if (s->state == STATE_CLOSING)
		return;
	if (s->close_reason == NULL)
		s->close_reason = reason;
	event_del(s->timer);		/* a greeting still to come */
	smtp_enter(s, STATE_CLOSING);
	smtp_flush(s);
	if (s->freeing)
		return;
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
		linger(s);
	/* else: write_cb lingers once the output is drained */
}

/* ---- commands ---- */

static void
tx_reset(struct smtp_session *s)
{
	tx_free(s);
	if (s->state == STATE_RCPT)
		smtp_enter(s, STATE_HELO);
}

static void
do_helo(struct smtp_session *s, const char *arg, int ehlo)
{
	char	 esc[SMTP_LOGTEXT_MAX];

	if (*arg == '\0') {
		smtp_error(s, "501 5.5.4 Syntax: %s hostname",
		    ehlo ? "EHLO" : "HELO");
		return;
	}
	if (!smtp_valid_helo(arg)) {
		smtp_error(s, "501 5.5.4 Invalid %s name \"%s\"",
		    ehlo ? "EHLO" : "HELO",
		    log_escape(esc, sizeof(esc), arg, strlen(arg)));
		return;
	}
	tx_free(s);
	free(s->helo);
	s->helo = xstrdup(arg);
	s->ehlo = ehlo;
	smtp_enter(s, STATE_HELO);
}

static void
cmd_helo(struct smtp_session *s, const char *arg)
{
	do_helo(s, arg, 0);
	if (s->state == STATE_HELO)
		smtp_reply(s, "250 %s Hello %s [%s]", s->cfg->hostname,
		    s->helo, s->addr);
}

static void
cmd_ehlo(struct smtp_session *s, const char *arg)
{
	do_helo(s, arg, 1);
	if (s->state != STATE_HELO)
		return;
	smtp_reply(s, "250-%s Hello %s [%s]", s->cfg->hostname, s->helo,
	    s->addr);
	smtp_reply(s, "250-PIPELINING");
	if (s->ssl == NULL && smtp_listener_tls(s->listener) != NULL)
		smtp_reply(s, "250-STARTTLS");
	if (auth_now() != NULL && s->user == NULL && (s->ssl != NULL ||
	    smtp_listener_auth_plaintext(s->listener)))
		smtp_reply(s, "250-AUTH %s", auth_mechanisms(auth_now()));
	smtp_reply(s, "250-SIZE %" PRIu64, s->cfg->max_message_size);
	smtp_reply(s, "250-8BITMIME");
	smtp_reply(s, "250-SMTPUTF8");
	smtp_reply(s, "250-ENHANCEDSTATUSCODES");
	smtp_reply(s, "250 CHUNKING");
}

static void
cmd_mail(struct smtp_session *s, const char *arg)
{
	struct smtp_tx	*tx;
	const char	*params, *why, *p;
	char		 addr[SMTP_PATH_MAX + 1], key[32], val[64];
	int		 utf8, smtputf8 = 0;
	uint64_t	 size;

	if (s->tx != NULL) {
		smtp_error(s, "503 5.5.1 Nested MAIL command");
		return;
	}
	if (smtp_parse_path(arg, "FROM:", addr, sizeof(addr), &params, &utf8,
	    &why) == -1) {
		smtp_error(s, "501 5.1.7 Bad sender address: %s", why);
		return;
	}
	for (p = params; smtp_param_next(&p, key, sizeof(key), val,
	    sizeof(val)); ) {
		if (strcasecmp(key, "SIZE") == 0) {
			if (parse_u64(val, 0, UINT64_MAX, &size) == -1) {
				smtp_error(s, "501 5.5.4 Bad SIZE parameter");
				return;
			}
			if (size > s->cfg->max_message_size) {
				smtp_count_refused(s->smtp, SMTP_REFUSED_SIZE);
				smtp_error(s, "552 5.3.4 Message size exceeds "
				    "fixed maximum message size (%" PRIu64
				    " bytes)", s->cfg->max_message_size);
				return;
			}
		} else if (strcasecmp(key, "BODY") == 0) {
			if (strcasecmp(val, "7BIT") != 0 &&
			    strcasecmp(val, "8BITMIME") != 0) {
				smtp_error(s, "501 5.5.4 Unsupported BODY "
				    "type");
				return;
			}
		} else if (strcasecmp(key, "SMTPUTF8") == 0 && s->ehlo)
			smtputf8 = 1;
		else if (strcasecmp(key, "AUTH") == 0)
			;	/* RFC 4954: accepted, not trusted */
		else {
			smtp_error(s, "555 5.5.4 Unsupported MAIL parameter "
			    "%s", key[0] ? key : "(empty)");
			return;
		}
	}
	if (utf8 && !smtputf8) {
		smtp_error(s, "553 5.6.7 Non-ASCII sender address needs "
		    "SMTPUTF8");
		return;
	}
	if (s->require_auth && s->user == NULL) {
		smtp_count_refused(s->smtp, SMTP_REFUSED_POLICY);
		smtp_error(s, "530 5.7.0 Authentication required");
		return;
	}
	if (addr[0] != '\0' && !policy_sender_ok(s->cfg, s->user,
	    (struct sockaddr *)&s->ss, addr)) {
		char esc[SMTP_LOGTEXT_MAX];

		log_info("%016" PRIx64 " smtp refused sender=<%s> client=%s "
		    "user=%s reason=senders", s->id, log_escape(esc,
		    sizeof(esc), addr, strlen(addr)), s->addr,
		    s->user != NULL ? s->user : "-");
		smtp_count_refused(s->smtp, SMTP_REFUSED_POLICY);
		smtp_error(s, "550 5.7.1 <%s>: Sender address not allowed for "
		    "%s %s (see [senders])", addr, s->user != NULL ? "user" :
		    "client", s->user != NULL ? s->user : s->addr);
		return;
	}
	tx = s->tx = xcalloc(1, sizeof(*tx));
	memcpy(tx->mail_from, addr, sizeof(addr));
	tx->mail_params = xstrdup(params);
	tx->smtputf8 = smtputf8;
	smtp_enter(s, STATE_RCPT);
	smtp_reply(s, "250 2.1.0 Ok");
}

static void
cmd_rcpt(struct smtp_session *s, const char *arg)
{
	struct smtp_tx	*tx = s->tx;
	const char	*params, *why = NULL;
	char		 addr[SMTP_PATH_MAX + 1];
	size_t		 i;
	int		 utf8;

	if (tx->bdat) {
		smtp_error(s, "503 5.5.1 RCPT not allowed during BDAT");
		return;
	}
	if (tx->nrcpts >= s->cfg->max_recipients) {
		smtp_reply(s, "452 4.5.3 Too many recipients (at most %" PRIu64
		    " per message)", s->cfg->max_recipients);
		return;
	}
	/* addr is only written when the path parses. */
	if (smtp_parse_path(arg, "TO:", addr, sizeof(addr), &params, &utf8,
	    &why) == -1 || addr[0] == '\0') {
		smtp_error(s, "501 5.1.3 Bad recipient address: %s",
		    why == NULL ? "empty" : why);
		return;
	}
	if (*params != '\0') {
		smtp_error(s, "555 5.5.4 Unsupported RCPT parameter");
		return;
	}
	if (utf8 && !tx->smtputf8) {
		smtp_error(s, "553 5.6.7 Non-ASCII recipient address needs "
		    "SMTPUTF8");
		return;
	}
	if (!s->relay_ok) {
		smtp_count_refused(s->smtp, SMTP_REFUSED_RELAY);
		smtp_error(s, "554 5.7.1 <%s>: Relay access denied (client "
		    "%s is not in allow_networks)", addr, s->addr);
		return;
	}
	if (!policy_rcpt_ok(s->cfg, addr)) {
		smtp_count_refused(s->smtp, SMTP_REFUSED_POLICY);
		smtp_error(s, "550 5.7.1 <%s>: Recipient domain not accepted "
		    "here (recipient_domains)", addr);
		return;
	}
	for (i = 0; i < tx->nrcpts; i++)
		if (strcasecmp(tx->rcpts[i], addr) == 0) {
			smtp_reply(s, "250 2.1.5 Ok (duplicate)");
			return;
		}
	tx->rcpts = xrealloc(tx->rcpts, (tx->nrcpts + 1) * sizeof(char *));
	tx->rcpts[tx->nrcpts++] = xstrdup(addr);
	smtp_reply(s, "250 2.1.5 Ok");
}

/* RFC 3848's protocol name: ESMTP, +S with TLS, +A with AUTH. */
static const char *
received_with(const struct smtp_session *s, const struct smtp_tx *tx)
{
	static const char *const names[2][2][2] = {
	    { { "ESMTP", "ESMTPA" }, { "ESMTPS", "ESMTPSA" } },
	    { { "UTF8SMTP", "UTF8SMTPA" }, { "UTF8SMTPS", "UTF8SMTPSA" } } };

	if (!s->ehlo)
		return "SMTP";
	return names[tx->smtputf8 != 0][s->ssl != NULL][s->user != NULL];
}

/* Opens the spool file and writes our Received: header. */
static int
tx_open(struct smtp_session *s)
{
	struct smtp_tx		*tx = s->tx;
	struct spool_env	 env;
	char			 date[64], hdr[1024];
	time_t			 now = time(NULL);
	struct tm		 tm;
	int			 n;

	memset(&env, 0, sizeof(env));
	env.arrival_us = wall_us();
	tx->arrival_ms = env.arrival_us / 1000;
	env.client = s->addr;
	env.listener = smtp_listener_name(s->listener);
	env.helo = s->helo;
	env.user = s->user != NULL ? s->user : "";
	env.mail_from = tx->mail_from;
	env.mail_params = tx->mail_params;
	env.rcpts = (const char *const *)tx->rcpts;
	env.nrcpts = tx->nrcpts;
	if ((tx->msg = spool_msg_new(smtp_spool(s->smtp), &env)) == NULL) {
		log_warn("%016" PRIx64 " spool: cannot create message",
		    s->id);
		return -1;
	}
	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	n = snprintf(hdr, sizeof(hdr), "Received: from %s ([%s])\r\n"
	    "\tby %s (relayd) with %s id %s%s%s%s;\r\n\t%s\r\n",
	    s->helo, s->addr, s->cfg->hostname,
	    received_with(s, tx),
	    spool_msg_qid(tx->msg),
	    tx->nrcpts == 1 ? "\r\n\tfor <" : "",
	    tx->nrcpts == 1 ? tx->rcpts[0] : "",
	    tx->nrcpts == 1 ? ">" : "", date);
	/* Not counted in the message size, like Postfix's own header. */
	if (n < 0 || (size_t)n >= sizeof(hdr) ||
	    spool_msg_write(tx->msg, hdr, (size_t)n) == -1) {
		tx->spool_errno = errno;
		tx->error = TX_ERR_SPOOL;
	} else
		tx->received_len = (uint64_t)n;
	return 0;
}

static void
cmd_data(struct smtp_session *s, const char *arg)
{
	struct smtp_tx	*tx = s->tx;

	if (*arg != '\0') {
		smtp_error(s, "501 5.5.4 Syntax: DATA (no arguments)");
		return;
	}
	if (tx->bdat) {
		smtp_error(s, "503 5.5.1 DATA not allowed after BDAT");
		return;
	}
	if (tx->nrcpts == 0) {
		smtp_error(s, "554 5.5.1 No valid recipients");
		return;
	}
	if (tx_open(s) == -1) {
		smtp_reply(s, "452 4.3.1 Insufficient system storage, try "
		    "again later");
		return;
	}
	data_dec_init(&tx->dec, s->cfg->bare_lf == BARE_LF_NORMALIZE);
	tx->data_started = now_ms();
	tx->data_bytes = 0;
	smtp_enter(s, STATE_DATA);
	smtp_reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void
cmd_bdat(struct smtp_session *s, const char *arg)
{
	uint64_t	 size;
	int		 last;

	if (smtp_parse_bdat(arg, &size, &last) == -1) {
		/* The chunk size is unknown: the stream cannot be followed. */
		smtp_reply(s, "501 5.5.4 Syntax: BDAT size [LAST]; closing");
		smtp_close(s, "bad BDAT");
		return;
	}
	s->bdat_left = s->bdat_chunk = size;
	s->bdat_last = last;
	if (s->tx == NULL || s->tx->nrcpts == 0) {
		/* RFC 3030: the chunk is read, then refused. */
		if (s->tx == NULL)
			s->tx = xcalloc(1, sizeof(*s->tx));
		s->tx->error = TX_ERR_SEQ;
	} else if (!s->tx->bdat) {
		s->tx->bdat = 1;
		if (tx_open(s) == -1) {
			s->tx->error = TX_ERR_SPOOL;
			s->tx->spool_errno = errno;
		}
	}
	smtp_enter(s, STATE_BDAT);
}

static void
cmd_rset(struct smtp_session *s, const char *arg)
{
	(void)arg;
	tx_reset(s);
	smtp_reply(s, "250 2.0.0 Ok");
}

static void
cmd_noop(struct smtp_session *s, const char *arg)
{
	(void)arg;
	smtp_reply(s, "250 2.0.0 Ok");
}

static void
cmd_quit(struct smtp_session *s, const char *arg)
{
	(void)arg;
	smtp_reply(s, "221 2.0.0 Bye");
	smtp_close(s, "quit");
}

static void
cmd_help(struct smtp_session *s, const char *arg)
{
	(void)arg;
	smtp_reply(s, "214-2.0.0 relayd relays mail to Microsoft 365 "
	    "through Graph.");
	smtp_reply(s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT "
	    "RSET NOOP QUIT HELP VRFY");
}

static void
cmd_vrfy(struct smtp_session *s, const char *arg)
{
	(void)arg;
	smtp_reply(s, "252 2.5.0 Cannot VRFY user; send mail and it will "
	    "be delivered through Graph");
}

static void
cmd_notimpl(struct smtp_session *s, const char *arg)
{
	(void)arg;
	smtp_error(s, "502 5.5.1 Command not implemented");
}

static void	tls_start(struct smtp_session *);
static int	from_allowed(struct smtp_session *);
static void	tx_set_mailbox(struct smtp_session *);

/* ---- AUTH (RFC 4954) ---- */

/* The delay after a failure is over: now the 535. */
static void
auth_fail_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct smtp_session	*s = arg;

	smtp_enter(s, STATE_HELO);
	smtp_count_refused(s->smtp, SMTP_REFUSED_AUTH);
	smtp_error(s, "535 5.7.8 Authentication credentials invalid");
	if (s->freeing)
		return;
	smtp_process(s);
	smtp_flush(s);
}

/* A failed or refused AUTH, with why in words; never what the client sent. */
static void
auth_log_failed(struct smtp_session *s, const char *user, const char *mech,
    const char *why, int counted)
{
	char	 esc[SMTP_LOGTEXT_MAX], mesc[64];

	log_info("%016" PRIx64 " smtp auth failed client=%s user=%s mech=%s "
	    "reason=\"%s\" counted=%s", s->id, s->addr, user != NULL ?
	    log_escape(esc, sizeof(esc), user, strlen(user)) : "-",
	    log_escape(mesc, sizeof(mesc), mech, strlen(mech)), why,
	    counted ? "yes" : "no");
}

static void
auth_result(struct smtp_session *s, enum auth_result r, char *out)
{
	struct auth_lockout lk;
	struct timeval	 tv;
	uint64_t	 delay;
	char		 esc[SMTP_LOGTEXT_MAX], t[TIME_ISO_LEN];
	const char	*user;
	int		 count;

	switch (r) {
	case AUTH_CONTINUE:
		smtp_reply(s, "334 %s", out);
		smtp_enter(s, STATE_AUTH);
		break;
	case AUTH_OK:
		s->user = xstrdup(auth_user(s->ax));
		auth_succeeded(auth_now(), s->addr);
		log_info("%016" PRIx64 " smtp auth client=%s user=%s mech=%s",
		    s->id, s->addr, log_escape(esc, sizeof(esc), s->user,
		    strlen(s->user)), auth_mech(s->ax));
		s->relay_ok = 1;
		smtp_enter(s, STATE_HELO);
		smtp_reply(s, "235 2.7.0 Authentication successful");
		break;
	case AUTH_FAIL:
		user = auth_user(s->ax);
		count = auth_tally_count(&s->tally, user, auth_mech(s->ax));
		auth_log_failed(s, user, auth_mech(s->ax), auth_why(s->ax),
		    count);
		delay = auth_failed(auth_now(), s->addr, count, &lk);
		if (lk.until != 0)
			log_warnx("%016" PRIx64 " smtp auth address %s locked "
			    "out until %s after %u failures", s->id, lk.addr,
			    time_iso(lk.until, t, sizeof(t)), lk.failures);
		smtp_enter(s, STATE_AUTH_WAIT);
		if (s->auth_timer == NULL)
			s->auth_timer = evtimer_new(s->base,
			    auth_fail_cb, s);
		tv = ms_tv(delay);
		evtimer_add(s->auth_timer, &tv);
		break;
	case AUTH_SYNTAX:
		auth_log_failed(s, auth_user(s->ax), auth_mech(s->ax),
		    auth_why(s->ax), 0);
		smtp_enter(s, STATE_HELO);
		smtp_error(s, "501 5.5.2 Cannot decode the AUTH response "
		    "(base64)");
		break;
	}
	free(out);
	if (r != AUTH_CONTINUE) {
		auth_end(s->ax);
		s->ax = NULL;
	}
}

static void
cmd_auth(struct smtp_session *s, const char *arg)
{
	enum auth_result r;
	char		 mech[32], t[TIME_ISO_LEN], why[64];
	const char	*initial;
	char		*out;
	size_t		 n;
	uint64_t	 until;

	n = strcspn(arg, " ");
	strlcpy_r(mech, arg, n < sizeof(mech) ? n + 1 : sizeof(mech));
	if (auth_now() == NULL) {
		smtp_error(s, "502 5.5.1 AUTH not available here");
		return;
	}
	if (s->user != NULL) {
		smtp_error(s, "503 5.5.1 Already authenticated");
		return;
	}
	if (s->tx != NULL) {
		smtp_error(s, "503 5.5.1 AUTH not allowed during a mail "
		    "transaction");
		return;
	}
	if (s->ssl == NULL && !smtp_listener_auth_plaintext(s->listener)) {
		auth_log_failed(s, NULL, mech, "no TLS", 0);
		smtp_error(s, "538 5.7.11 Encryption required for requested "
		    "authentication mechanism");
		return;
	}
	if (auth_locked(auth_now(), s->addr, &until)) {
		snprintf(why, sizeof(why), "locked out until %s",
		    time_iso(until, t, sizeof(t)));
		auth_log_failed(s, NULL, mech, why, 0);
		smtp_count_refused(s->smtp, SMTP_REFUSED_AUTH);
		smtp_error(s, "454 4.7.0 Too many failed authentications from "
		    "your address; try again later");
		return;
	}
	if (n == 0 || n >= sizeof(mech)) {
		auth_log_failed(s, NULL, mech, "malformed command", 0);
		smtp_error(s, "501 5.5.4 Syntax: AUTH mechanism [response]");
		return;
	}
	initial = arg[n] == ' ' ? arg + n + 1 : NULL;
	if ((s->ax = auth_start(auth_now(), mech)) == NULL) {
		auth_log_failed(s, NULL, mech, "mechanism not offered", 0);
		smtp_error(s, "504 5.5.4 Unrecognized authentication type");
		return;
	}
	/* "=" is an empty initial response (RFC 4954 4). */
	if (initial != NULL && strcmp(initial, "=") == 0)
		initial = "";
	r = auth_step(s->ax, initial, &out);
	auth_result(s, r, out);
}

/* A line in answer to a 334. */
static void
auth_line(struct smtp_session *s, const char *line)
{
	enum auth_result r;
	char	*out;

	if (strcmp(line, "*") == 0) {
		auth_log_failed(s, auth_user(s->ax), auth_mech(s->ax),
		    "cancelled by the client", 0);
		auth_end(s->ax);
		s->ax = NULL;
		smtp_enter(s, STATE_HELO);
		smtp_error(s, "501 5.7.0 Authentication cancelled");
		return;
	}
	r = auth_step(s->ax, line, &out);
	auth_result(s, r, out);
}

/*
 * RFC 3207. Anything the client sent after STARTTLS in the clear is thrown
 * away (CVE-2011-0411): commands injected before the handshake must not be
 * run as if they came over TLS.
 */
static void
cmd_starttls(struct smtp_session *s, const char *arg)
{
	if (smtp_listener_tls(s->listener) == NULL) {
		smtp_error(s, "502 5.5.1 STARTTLS not available here (no "
		    "certificate)");
		return;
	}
	if (s->ssl != NULL) {
		smtp_error(s, "503 5.5.1 TLS already active");
		return;
	}
	if (*arg != '\0') {
		smtp_error(s, "501 5.5.4 Syntax: STARTTLS");
		return;
	}
	if (s->tx != NULL) {
		smtp_error(s, "503 5.5.1 STARTTLS within a transaction");
		return;
	}
	smtp_reply(s, "220 2.0.0 Ready to start TLS");
	s->tls_switch = 1;	/* smtp_process stops; read_cb starts TLS */
}

static void
cmd_http(struct smtp_session *s, const char *arg)
{
	(void)arg;
	smtp_reply(s, "554 5.7.0 This is an SMTP server, not HTTP; closing "
	    "connection");
	smtp_close(s, "HTTP request on SMTP port");
}

static void
smtp_command(struct smtp_session *s, char *line)
{
	const struct smtp_cmd_entry	*e;
	const char			*args;
	enum smtp_cmd			 cmd;
	char				 esc[SMTP_LOGTEXT_MAX];
	size_t				 i;

	cmd = smtp_cmd_parse(line, &args);
	log_debug("%016" PRIx64 " smtp command \"%s\"", s->id,
	    cmd == CMD_AUTH ? "AUTH ********" :
	    log_escape(esc, sizeof(esc), line, strlen(line)));
	for (i = 0; i < NELEM(smtp_cmds); i++)
		if (smtp_cmds[i].cmd == cmd)
			break;
	if (i == NELEM(smtp_cmds)) {
		smtp_error(s, "500 5.5.2 Command unrecognized: \"%s\"",
		    log_escape(esc, 40, line, strcspn(line, " ")));
		return;
	}
	e = &smtp_cmds[i];
	if ((e->states & S(s->state)) == 0) {
		if (s->state == STATE_GREETED)
			smtp_error(s, "503 5.5.1 Send HELO or EHLO first");
		else if (cmd == CMD_MAIL)
			smtp_error(s, "503 5.5.1 Nested MAIL command");
		else
			smtp_error(s, "503 5.5.1 Bad sequence of commands (%s)",
			    e->wrong_state ? e->wrong_state : "not now");
		return;
	}
	e->fn(s, args);
}

/* ---- message end ---- */

#define LOG_RCPTS_MAX	10	/* recipients named in the queued line */
#define SUBJECT_MAX	998	/* bytes of a Subject kept in history */

static uint64_t
tx_spooled_size(const struct smtp_tx *tx)
{
	return tx->size + tx->received_len;
}

/*
 * The accepted message's history row: envelope, Message-ID, Subject, for
 * the delivery process, which keeps the history ([queue] history).
 */
/* A history row, copied, for loop 0 (where the link is). */
struct history_copy {
	struct history_msg	 m;
	char			**rcpts;
	char			*qid, *client, *user, *sender, *mid, *subject;
};

static char *
dup_or_null(const char *p)
{
	return p != NULL ? xstrdup(p) : NULL;
}

static void
history_copy_free(struct history_copy *h)
{
	size_t			 i;

	if (h == NULL)
		return;
	for (i = 0; i < h->m.nrcpts; i++)
		free(h->rcpts[i]);
	free(h->rcpts);
	free(h->qid);
	free(h->client);
	free(h->user);
	free(h->sender);
	free(h->mid);
	free(h->subject);
	free(h);
}

/* On loop 0. */
static void
history_copy_send(struct history_copy *h)
{
	if (h != NULL && intake != NULL)
		intake_history(intake, &h->m);
	history_copy_free(h);
}

static struct history_copy *
history_copy(const struct history_msg *m)
{
	struct history_copy	*h;
	size_t			 i;

	h = xcalloc(1, sizeof(*h));
	h->m = *m;
	h->m.qid = h->qid = dup_or_null(m->qid);
	h->m.client = h->client = dup_or_null(m->client);
	h->m.user = h->user = dup_or_null(m->user);
	h->m.sender = h->sender = dup_or_null(m->sender);
	h->m.message_id = h->mid = dup_or_null(m->message_id);
	h->m.subject = h->subject = dup_or_null(m->subject);
	h->rcpts = xcalloc(m->nrcpts + 1, sizeof(*h->rcpts));
	for (i = 0; i < m->nrcpts; i++)
		h->rcpts[i] = xstrdup(m->rcpts[i]);
	h->m.rcpts = (const char *const *)h->rcpts;
	return h;
}

/*
 * The history row of the message just committed: to the link now (loop
 * 0), or, from another loop, copied into *out for loop 0 to send.
 */
static void
history_record(struct smtp_session *s, const char *qid,
    struct history_copy **out)
{
	struct smtp_tx		*tx = s->tx;
	struct history_msg	 m;
	char			 mid[256], subj[SUBJECT_MAX + 1], *dec = NULL;

	if (intake == NULL || s->cfg->history_ms == 0)
		return;
	memset(&m, 0, sizeof(m));
	m.qid = qid;
	m.received_ms = tx->arrival_ms;
	m.client = s->addr;
	m.user = s->user;
	m.sender = tx->mail_from;
	m.size = tx_spooled_size(tx);
	m.rcpts = (const char *const *)tx->rcpts;
	m.nrcpts = tx->nrcpts;
	if (tx->head != NULL && smtp_header_value(tx->head, tx->headlen,
	    "Message-ID", mid, sizeof(mid)) > 0)
		m.message_id = mid;
	if (s->cfg->log_subjects && tx->head != NULL &&
	    smtp_header_value(tx->head, tx->headlen, "Subject", subj,
	    sizeof(subj)) > 0) {
		m.subject = subj;
		/* Encoded words decoded; raw windows-1252 made UTF-8. */
		if ((strstr(subj, "=?") != NULL || !mime_utf8_valid(subj,
		    strlen(subj))) && (dec = mime_decode_words(subj,
		    strlen(subj), NULL)) != NULL)
			m.subject = dec;
	}
	if (out != NULL)
		*out = history_copy(&m);
	else
		intake_history(intake, &m);
	free(dec);
}

/*
 * "queued": the envelope, the Message-ID (as Exchange's message trace
 * shows it) and, unless [log] recipients = no, the first recipients.
 * size is the message as spooled (what sent and failed lines and history
 * say): the client's bytes after dot-unstuffing, with our Received: line.
 */
static void
log_queued(struct smtp_session *s, const char *qid)
{
	struct smtp_tx	*tx = s->tx;
	char		 mid[256], esc[SMTP_LOGTEXT_MAX], *rcpts = NULL;
	size_t		 i, n = 0, used = 0;

	if (!log_enabled(LOG_LVL_INFO))
		return;
	if (tx->head == NULL || smtp_header_value(tx->head, tx->headlen,
	    "Message-ID", mid, sizeof(mid)) == 0)
		strlcpy_r(mid, "-", sizeof(mid));
	log_escape(esc, sizeof(esc), mid, strlen(mid));
	if (s->cfg->log_recipients) {
		for (i = 0; i < tx->nrcpts && i < LOG_RCPTS_MAX; i++)
			n += strlen(tx->rcpts[i]) + 1;
		rcpts = xmalloc(n + 32);
		for (i = 0; i < tx->nrcpts && i < LOG_RCPTS_MAX; i++)
			used += (size_t)snprintf(rcpts + used, n + 32 - used,
			    "%s%s", i ? "," : "", tx->rcpts[i]);
		if (tx->nrcpts > LOG_RCPTS_MAX)
			snprintf(rcpts + used, n + 32 - used, ",+%zu more",
			    tx->nrcpts - LOG_RCPTS_MAX);
	}
	log_info("%s smtp queued session=%016" PRIx64 " client=%s "
	    "from=<%s> nrcpt=%zu size=%" PRIu64 " message_id=%s%s%s", qid,
	    s->id, s->addr, tx->mail_from, tx->nrcpts, tx_spooled_size(tx), esc,
	    rcpts != NULL ? " rcpts=" : "", rcpts != NULL ? rcpts : "");
	free(rcpts);
}

/* The message has its reply: on to the commands that wait. */
static void
msg_replied(struct smtp_session *s)
{
	smtp_enter(s, STATE_HELO);
	smtp_process(s);
	if (smtp_draining(s->smtp) && !s->freeing &&
	    s->state == STATE_HELO)
		bye(s);		/* its message is safe; no next one */
	smtp_flush(s);
}

/* Graph's answer to the first attempt (worker.c), once. */
static void
graph_answer(void *arg, const struct worker_answer *a)
{
	struct smtp_session	*s = arg;
	char			 qid[sizeof(s->wait_qid)], text[480];

	memcpy(qid, s->wait_qid, sizeof(qid));
	s->wait_qid[0] = '\0';
	evtimer_del(s->reply_timer);
	switch (a->outcome) {
	case WORKER_SENT:
		smtp_reply(s, "250 2.0.0 Ok: sent as %s", qid);
		break;
	case WORKER_REFUSED:
		graph_refusal(a->status, a->code, a->message, text,
		    sizeof(text));
		smtp_reply(s, "%s", text);
		break;
	case WORKER_QUEUED:
		smtp_reply(s, "250 2.0.0 Ok: queued as %s", qid);
		break;
	}
	msg_replied(s);
}

static void
reply_timeout_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct smtp_session	*s = arg;
	char			 qid[sizeof(s->wait_qid)];

	(void)fd;
	(void)ev;
	memcpy(qid, s->wait_qid, sizeof(qid));
	graph_unwait(s);
	log_info("%s smtp reply_timeout session=%016" PRIx64 " waited=%.1fs "
	    "reply=250 (no answer from Graph yet; the message stays queued)",
	    qid, s->id, (double)(now_ms() + s->cfg->reply_timeout_ms -
	    s->wait_until) / 1000.0);
	smtp_reply(s, "250 2.0.0 Ok: queued as %s", qid);
	msg_replied(s);
}

/*
 * reply_after = graph: the reply waits for Graph's answer to the first
 * attempt, or reply_timeout. 0 if it waits, -1 to answer now.
 */
static int
graph_wait(struct smtp_session *s, const char *qid)
{
	struct timeval	 tv;

	if (!s->reply_graph || intake == NULL || s->freeing ||
	    intake_watch(intake, qid, graph_answer, s) == -1)
		return -1;
	strlcpy_r(s->wait_qid, qid, sizeof(s->wait_qid));
	if (s->reply_timer == NULL)
		s->reply_timer = evtimer_new(s->base,
		    reply_timeout_cb, s);
	s->wait_until = now_ms() + s->cfg->reply_timeout_ms;
	tv = ms_tv(s->cfg->reply_timeout_ms);
	evtimer_add(s->reply_timer, &tv);
	smtp_enter(s, STATE_GRAPH);
	if (smtp_draining(s->smtp))
		graph_wait_drain(s);
	return 0;
}

/*
 * Stopping: the answer must come before drain_timeout ends the loop, or
 * the client gets 250 then (a second before, so that it is written).
 */
static void
graph_wait_drain(struct smtp_session *s)
{
	uint64_t	 margin, left, now = now_ms();
	struct timeval	 tv;

	margin = s->cfg->drain_timeout_ms / 2 < 1000 ?
	    s->cfg->drain_timeout_ms / 2 : 1000;
	left = s->cfg->drain_timeout_ms - margin;
	if (left == 0) {
		reply_timeout_cb(-1, 0, s);
		return;
	}
	if (now + left >= s->wait_until)
		return;
	s->wait_until = now + left;
	tv = ms_tv(left);
	evtimer_add(s->reply_timer, &tv);
}

/*
 * The spool could not make the message durable: a full disk is 452 4.3.1,
 * any other failure (EIO from write or fsync) 451. Never 250.
 */
static void
reply_spool_error(struct smtp_session *s, int err)
{
	if (err == ENOSPC || err == EDQUOT)
		smtp_reply(s, "452 4.3.1 Insufficient system storage, try "
		    "again later");
	else
		smtp_reply(s, "451 4.3.0 Local error in processing (the "
		    "message could not be stored safely), try again later");
}

/* told: loop 0 counted it and sent its history row (struct ticket). */
static void
commit_finish(struct smtp_session *s, int err, const char *qid, int told)
{
	struct smtp_tx		*tx = s->tx;

	tx->msg = NULL;		/* the spool frees it */
	tx->committing = 0;
	if (err != 0) {
		log_warnx("%016" PRIx64 " spool: commit failed: %s", s->id,
		    strerror(err));
		reply_spool_error(s, err);
	} else {
		log_queued(s, qid);
		if (!told) {
			smtp_count_received(s->smtp);
			history_record(s, qid, NULL);
		}
		s->nmsgs++;
		if (graph_wait(s, qid) == 0) {
			tx_free(s);
			return;		/* graph_answer or the timer replies */
		}
		smtp_reply(s, "250 2.0.0 Ok: queued as %s", qid);
	}
	tx_free(s);
	msg_replied(s);
}

static void
commit_done(void *arg, int err, const char *qid)
{
	commit_finish(arg, err, qid, 0);
}

/* On the session's loop: the commit's result (struct ticket). */
static void
ticket_done(void *arg)
{
	struct ticket		*t = arg;
	struct smtp_session	*s = t->s;

	if (s != NULL) {
		s->tx->ticket = NULL;
		commit_finish(s, t->err, t->qid, 1);
	}
	free(t);
}

/* On loop 0, from the spool. */
static void
ticket_route(void *arg, int err, const char *qid)
{
	struct ticket	*t = arg;

	t->err = err;
	strlcpy_r(t->qid, qid, sizeof(t->qid));
	/* What commit_finish does on loop 0, done here: one hop less. */
	if (err == 0) {
		smtp_count_received(t->smtp);
		history_copy_send(t->hist);
	} else
		history_copy_free(t->hist);
	t->hist = NULL;
	smtp_loop_call(t->loop, ticket_done, t);
}

static void
commit_start(struct smtp_session *s)
{
	struct smtp_loop	*lp = smtp_loop_self();
	struct ticket		*t;

	if (smtp_loop_is0(lp)) {
		spool_msg_commit(s->tx->msg, commit_done, s);
		return;
	}
	t = xcalloc(1, sizeof(*t));
	t->s = s;
	t->smtp = s->smtp;
	t->loop = lp;
	history_record(s, spool_msg_qid(s->tx->msg), &t->hist);
	s->tx->ticket = t;
	spool_msg_commit(s->tx->msg, ticket_route, t);
}

/* The data (or last chunk) is in: refuse it or make it durable. */
static void
tx_finish(struct smtp_session *s)
{
	struct smtp_tx	*tx = s->tx;

	if (tx->error == TX_OK && tx->dec.bare > 0 &&
	    s->cfg->bare_lf == BARE_LF_REJECT) {
		smtp_count_refused(s->smtp, SMTP_REFUSED_SMUGGLING);
		smtp_error(s, "550 5.6.0 Message refused: bare CR or LF in "
		    "message data (lines must end with CRLF; an admin may "
		    "set bare_lf = normalize)");
	} else if (tx->error == TX_ERR_SIZE) {
		smtp_count_refused(s->smtp, SMTP_REFUSED_SIZE);
		smtp_error(s, "552 5.3.4 Message size exceeds fixed maximum "
		    "message size (%" PRIu64 " bytes)",
		    s->cfg->max_message_size);
	} else if (tx->error == TX_ERR_SPOOL) {
		log_warnx("%016" PRIx64 " spool: write failed: %s", s->id,
		    strerror(tx->spool_errno));
		reply_spool_error(s, tx->spool_errno);
	} else if (tx->error == TX_ERR_SEQ) {
		smtp_error(s, "503 5.5.1 Bad sequence of commands (send MAIL "
		    "FROM and RCPT TO first)");
	} else if (!from_allowed(s)) {
		;	/* replied */
	} else {
		/*
		 * Input stays enabled: pipelined commands wait in the buffer
		 * (smtp_process does nothing in COMMIT), and toggling the read
		 * event for every message costs two system calls.
		 */
		smtp_enter(s, STATE_COMMIT);
		tx->committing = 1;
		tx_set_mailbox(s);
		commit_start(s);
		return;
	}
	tx_free(s);
	if (s->state != STATE_CLOSING)
		smtp_enter(s, s->helo != NULL ? STATE_HELO : STATE_GREETED);
}

/*
 * Keeps the header block (up to SMTP_HEAD_MAX) to check From: at the end
 * and to log the Message-ID.
 */
static void
head_capture(struct smtp_tx *tx, const char *data, size_t len)
{
	size_t	 take = len, i, from;

	if (tx->headlen + take > SMTP_HEAD_MAX)
		take = SMTP_HEAD_MAX - tx->headlen;
	tx->head = xrealloc(tx->head, tx->headlen + take + 1);
	memcpy(tx->head + tx->headlen, data, take);
	from = tx->headlen > 3 ? tx->headlen - 3 : 0;
	tx->headlen += take;
	tx->head[tx->headlen] = '\0';
	for (i = from; i + 4 <= tx->headlen && !tx->head_done; i++)
		if (memcmp(tx->head + i, "\r\n\r\n", 4) == 0)
			tx->head_done = tx->head_ended = 1;
	if (tx->headlen >= SMTP_HEAD_MAX)
		tx->head_done = 1;
}

/* Is every From: address one this session may use? Replies if not. */
static int
from_allowed(struct smtp_session *s)
{
	struct smtp_tx	*tx = s->tx;
	char		**from, esc[SMTP_LOGTEXT_MAX];
	size_t		 i;
	int		 ok = 1;

	if (s->cfg->nsenders == 0 || !policy_sender_restricted(s->cfg,
	    s->user, (struct sockaddr *)&s->ss))
		return 1;
	if (tx->head == NULL || !tx->head_ended) {
		/* A From: past what was kept must not slip through. */
		smtp_count_refused(s->smtp, SMTP_REFUSED_POLICY);
		smtp_error(s, "550 5.7.1 Header block too large to check From: "
		    "(more than %d bytes; see [senders])", SMTP_HEAD_MAX);
		return 0;
	}
	from = policy_from_addresses(tx->head, tx->headlen);
	for (i = 0; from[i] != NULL && ok; i++) {
		if (policy_sender_ok(s->cfg, s->user,
		    (struct sockaddr *)&s->ss, from[i]))
			continue;
		ok = 0;
		smtp_count_refused(s->smtp, SMTP_REFUSED_POLICY);
		log_info("%016" PRIx64 " smtp refused from=<%s> client=%s "
		    "user=%s reason=senders", s->id, log_escape(esc,
		    sizeof(esc), from[i], strlen(from[i])), s->addr,
		    s->user != NULL ? s->user : "-");
		smtp_error(s, "550 5.7.1 From: <%s> not allowed for %s %s "
		    "(see [senders])", esc, s->user != NULL ? "user" :
		    "client", s->user != NULL ? s->user : s->addr);
	}
	policy_free_list(from);
	return ok;
}

/*
 * The sending mailbox, decided here once ([graph] mailbox; From: from the
 * header block kept) and stored with the envelope: the delivery process
 * counts Graph's per-mailbox limits by it before it reads the message.
 */
static void
tx_set_mailbox(struct smtp_session *s)
{
	struct smtp_tx	*tx = s->tx;
	char		*mb;

	mb = policy_sending_mailbox(s->cfg->mailbox, tx->mail_from,
	    tx->head, tx->headlen, SPOOL_MAILBOX_MAX);
	spool_msg_set_mailbox(tx->msg, mb);
	free(mb);
}

static void
tx_append(struct smtp_session *s, const char *data, size_t len)
{
	struct smtp_tx	*tx = s->tx;

	if (tx->error != TX_OK)
		return;
	if (tx->size + len > s->cfg->max_message_size) {
		tx->error = TX_ERR_SIZE;
		return;
	}
	tx->size += len;
	if (!tx->head_done && (s->cfg->nsenders > 0 || s->cfg->history_ms > 0 ||
	    log_enabled(LOG_LVL_INFO) ||
	    policy_mailbox_needs_from(s->cfg->mailbox, tx->mail_from)))
		head_capture(tx, data, len);	/* From:, Message-ID: */
	if (spool_msg_write(tx->msg, data, len) == -1) {
		tx->spool_errno = errno;
		tx->error = TX_ERR_SPOOL;
	}
}

/*
 * data_timeout counts idle time, which a byte now and then resets: a
 * client trickling its message holds the connection for ever. Past
 * data_timeout, the message must average SMTP_DATA_MIN_RATE bytes a
 * second (256; a 9600 baud line sends 1200).
 */
static int
data_too_slow(struct smtp_session *s)
{
	struct smtp_tx	*tx = s->tx;
	uint64_t	 el = now_ms() - tx->data_started;

	if (el <= s->cfg->data_timeout_ms ||
	    tx->data_bytes * 1000 >= el * SMTP_DATA_MIN_RATE)
		return 0;
	smtp_reply(s, "421 4.4.2 %s Timeout exceeded (message data under %d "
	    "bytes a second), closing connection", s->cfg->hostname,
	    SMTP_DATA_MIN_RATE);
	smtp_close(s, "message data too slow");
	return 1;
}

/* Decodes what DATA input there is; returns 1 if it made progress. */
static int
feed_data(struct smtp_session *s, struct evbuffer *in)
{
	struct evbuffer_iovec	 v;
	size_t			 used, outlen, len;
	int			 end;

	if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
		return 0;
	len = v.iov_len < SMTP_DATA_CHUNK ? v.iov_len : SMTP_DATA_CHUNK;
	used = data_dec_run(&s->tx->dec, v.iov_base, len, dec_buf, &outlen,
	    &end);
	tx_append(s, dec_buf, outlen);
	evbuffer_drain(in, used);
	s->tx->data_bytes += used;
	if (end)
		tx_finish(s);
	else if (data_too_slow(s))
		return 0;
	return 1;
}

static int
feed_bdat(struct smtp_session *s, struct evbuffer *in)
{
	struct evbuffer_iovec	 v;
	size_t			 len;

	if (s->bdat_left > 0) {
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
			return 0;
		len = v.iov_len < s->bdat_left ? v.iov_len :
		    (size_t)s->bdat_left;
		tx_append(s, v.iov_base, len);
		evbuffer_drain(in, len);
		s->bdat_left -= len;
		if (s->bdat_left > 0)
			return 1;
	}
	if (s->bdat_last || s->tx->error != TX_OK) {
		tx_finish(s);
		return 1;
	}
	smtp_enter(s, STATE_RCPT);
	smtp_reply(s, "250 2.0.0 %" PRIu64 " bytes received, %" PRIu64
	    " in total", s->bdat_chunk, s->tx->size);
	return 1;
}

/* Reads one command line; returns 1 if one was handled. */
static int
feed_line(struct smtp_session *s, struct evbuffer *in)
{
	struct evbuffer_ptr	 eol;
	size_t			 eol_len, len;

	eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
	if (eol.pos == -1) {
		/*
		 * A command must be complete within command_timeout of its
		 * first byte: a client trickling a byte at a time is never
		 * idle, but must not hold a connection for ever.
		 */
		if (evbuffer_get_length(in) > 0) {
			uint64_t now = now_ms();

			if (s->line_started == 0)
				s->line_started = now;
			else if (now - s->line_started >
			    smtp_command_timeout(s->smtp, s->cfg)) {
				evbuffer_drain(in, evbuffer_get_length(in));
				smtp_reply(s, "421 4.4.2 %s Timeout exceeded "
				    "(command not completed in time), closing "
				    "connection", s->cfg->hostname);
				smtp_close(s, "command too slow");
				return 0;
			}
		}
		if (evbuffer_get_length(in) <= line_max)
			return 0;
		evbuffer_drain(in, evbuffer_get_length(in));
		if (!s->discard_line) {
			s->discard_line = 1;
			smtp_error(s, "500 5.5.2 Line too long (at most %zu "
			    "bytes)", line_max);
		}
		return 0;
	}
	len = (size_t)eol.pos;
	s->line_started = 0;
	if (s->discard_line || len > line_max) {
		evbuffer_drain(in, len + eol_len);
		if (!s->discard_line)
			smtp_error(s, "500 5.5.2 Line too long (at most %zu "
			    "bytes)", line_max);
		s->discard_line = 0;
		return 1;
	}
	evbuffer_remove(in, line_buf, len + eol_len);
	line_buf[len] = '\0';
	if (memchr(line_buf, '\0', len) != NULL) {
		smtp_error(s, "500 5.5.2 NUL byte in command");
		return 1;
	}
	if (smtp_draining(s->smtp) && (s->state == STATE_GREETED ||
	    s->state == STATE_HELO) && strncasecmp(line_buf, "QUIT", 4) != 0)
		bye(s);
	else if (s->state == STATE_AUTH)
		auth_line(s, line_buf);
	else
		smtp_command(s, line_buf);
	explicit_bzero(line_buf, len);	/* it may have held a password */
	/* A command: idle from now; the timeout in force since stress. */
	if (s->idle.on)
		idle_in(&s->idle, now_ms());
	arm_timeout(s);
	return 1;
}

static void
smtp_process(struct smtp_session *s)
{
	struct evbuffer	*in = bufferevent_get_input(s->bev);
	int		 progress = 1;

	while (progress && !s->freeing && !s->tls_switch) {
		/* A client that sends without reading waits for itself. */
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) >
		    SMTP_OUT_MAX && s->state != STATE_CLOSING)
			smtp_flush(s);
		if (s->freeing)
			return;
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) >
		    SMTP_OUT_MAX && s->state != STATE_CLOSING) {
			s->out_blocked = 1;
			bufferevent_disable(s->bev, EV_READ);
			return;
		}
		switch (s->state) {
		case STATE_DATA:
			progress = feed_data(s, in);
			break;
		case STATE_BDAT:
			progress = feed_bdat(s, in);
			break;
		case STATE_GREETED:
		case STATE_HELO:
		case STATE_RCPT:
		case STATE_AUTH:
			progress = feed_line(s, in);
			break;
		case STATE_NEW:
		case STATE_COMMIT:
		case STATE_GRAPH:
		case STATE_CLOSING:
		case STATE_AUTH_WAIT:
			progress = 0;
			break;
		}
	}
}

/* ---- I/O callbacks ---- */

static void
pregreet(struct smtp_session *s)
{
	smtp_reply(s, "554 5.5.1 %s Protocol error: client talked before "
	    "the greeting", s->cfg->hostname);
	smtp_close(s, "talked before greeting");
}

/*
 * A client that starts a TLS handshake on a plain port expects implicit TLS
 * (port 465): say so in the log and close; SMTP text would only confuse it.
 */
static int
tls_hello(struct smtp_session *s)
{
	struct evbuffer	*in = bufferevent_get_input(s->bev);
	unsigned char	 head[6];
	ssize_t		 n;

	n = evbuffer_copyout(in, head, sizeof(head));
	if (n <= 0 || !tls_is_client_hello(head, (size_t)n))
		return 0;
	log_warnx("%016" PRIx64 " smtp TLS handshake on a plain listener "
	    "client=%s listener=%s (the client wants implicit TLS: give it a "
	    "listener with the tls option, or make it use STARTTLS)", s->id,
	    s->addr, smtp_listener_name(s->listener));
	evbuffer_drain(in, evbuffer_get_length(in));
	if (s->close_reason == NULL)
		s->close_reason = "TLS handshake on a plain listener";
	session_free_later(s);
	return 1;
}

/* Input buffered per client: at least a whole command line, or none ends. */
static size_t
read_highwat(const struct config *cfg)
{
	return cfg->max_line_length + 3 > SMTP_READ_HIGHWAT ?
	    cfg->max_line_length + 3 : SMTP_READ_HIGHWAT;
}

/* Puts TLS under the session: at accept (implicit) or after STARTTLS. */
static int
tls_wrap(struct smtp_session *s, int fd)
{
	struct bufferevent	*bev;

	if ((s->ssl = smtp_listener_ssl_new(s->listener)) == NULL)
		return -1;
	if (fd != -1)
		bev = bufferevent_openssl_socket_new(s->base, fd,
		    s->ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	else
		bev = bufferevent_openssl_filter_new(s->base,
		    s->bev, s->ssl, BUFFEREVENT_SSL_ACCEPTING,
		    BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		SSL_free(s->ssl);
		s->ssl = NULL;
		return -1;
	}
	/* The bufferevent frees the SSL and, for a filter, the socket's. */
	s->bev = bev;
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	bufferevent_setcb(bev, read_cb, write_cb, event_cb, s);
	bufferevent_setwatermark(bev, EV_READ, 0, read_highwat(s->cfg));
	s->timeout_ms = 0;		/* a new bufferevent: arm its timeouts */
	smtp_enter(s, s->state);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	return 0;
}

static void
tls_start(struct smtp_session *s)
{
	struct evbuffer	*in = bufferevent_get_input(s->bev);
	size_t		 dropped = evbuffer_get_length(in);

	s->tls_switch = 0;
	/* The 220 must be out in the clear before the handshake. */
	smtp_flush(s);
	if (s->freeing)
		return;
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) > 0) {
		s->close_reason = "STARTTLS reply not written";
		session_free_later(s);
		return;
	}
	if (dropped > 0) {
		log_warnx("%016" PRIx64 " smtp STARTTLS: discarded %zu byte(s) "
		    "sent before the handshake client=%s", s->id, dropped,
		    s->addr);
		evbuffer_drain(in, dropped);
	}
	/* RFC 3207 4.2: forget everything learnt before TLS. */
	tx_free(s);
	free(s->helo);
	s->helo = NULL;
	s->ehlo = 0;
	free(s->user);
	s->user = NULL;
	s->write_armed = 0;
	smtp_enter(s, STATE_GREETED);
	if (tls_wrap(s, -1) == -1) {
		s->close_reason = "TLS setup failed";
		session_free_later(s);
	}
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
	struct smtp_session	*s = arg;

	(void)bev;
	if (s->state == STATE_NEW) {
		pregreet(s);
		return;
	}
	if (s->state == STATE_CLOSING) {
		struct evbuffer *in = bufferevent_get_input(s->bev);
		evbuffer_drain(in, evbuffer_get_length(in));
		return;
	}
	if (!s->seen_input && s->ssl == NULL && tls_hello(s))
		return;
	s->seen_input = 1;
	smtp_process(s);
	smtp_flush(s);
	if (s->tls_switch && !s->freeing)
		tls_start(s);
}

/*
 * The last reply is out. Closing a socket that still has unread input makes
 * the kernel send a reset, which can destroy that reply before the client
 * reads it; so shut down our side and discard input until the client closes
 * or SMTP_LINGER_SEC pass.
 */
static void
linger(struct smtp_session *s)
{
	struct timeval		 tv = { SMTP_LINGER_SEC, 0 };
	struct bufferevent	*under;

	if (s->lingering)
		return;
	s->lingering = 1;
	/*
	 * TLS ends with our close_notify, so that the client can tell the
	 * end from a cut connection (through the socket BIO at once, or into
	 * the socket bufferevent under STARTTLS).
	 */
	if (s->ssl != NULL && !(SSL_get_shutdown(s->ssl) & SSL_SENT_SHUTDOWN))
		SSL_shutdown(s->ssl);
	/*
	 * Under STARTTLS the last reply may still sit below us, in the socket
	 * bufferevent the TLS filter writes into: then no shutdown, just wait
	 * for the client to close.
	 */
	if (s->ssl == NULL || (under = bufferevent_get_underlying(s->bev)) ==
	    NULL || evbuffer_get_length(bufferevent_get_output(under)) == 0)
		shutdown(bufferevent_getfd(s->bev), SHUT_WR);
	/* Evicted: the 421 is out; the slot must not wait for the client. */
	if (s->evicted) {
		session_free_later(s);
		return;
	}
	evbuffer_drain(bufferevent_get_input(s->bev),
	    evbuffer_get_length(bufferevent_get_input(s->bev)));
	bufferevent_set_timeouts(s->bev, &tv, NULL);
	bufferevent_enable(s->bev, EV_READ);
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
	struct smtp_session	*s = arg;

	(void)bev;
	s->write_armed = 0;
	if (s->ssl == NULL)
		bufferevent_disable(s->bev, EV_WRITE);
	if (s->state == STATE_CLOSING)
		linger(s);
	else if (s->out_blocked) {
		s->out_blocked = 0;
		bufferevent_enable(s->bev, EV_READ);
		smtp_process(s);
		smtp_flush(s);
	}
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct smtp_session	*s = arg;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		char desc[160];

		tls_describe(s->ssl, desc, sizeof(desc));
		log_info("%016" PRIx64 " smtp tls client=%s %s", s->id,
		    s->addr, desc);
		return;
	}
	if ((what & BEV_EVENT_ERROR) && s->ssl != NULL &&
	    s->close_reason == NULL) {
		char why[200];
		unsigned long e = bufferevent_get_openssl_error(s->bev);

		if (e != 0) {
			ERR_error_string_n(e, why, sizeof(why));
			log_info("%016" PRIx64 " smtp tls failed client=%s "
			    "error=\"%s\"", s->id, s->addr, why);
			s->close_reason = "TLS error";
		}
	}
	if (what & BEV_EVENT_TIMEOUT) {
		if (s->state != STATE_CLOSING) {
			s->close_reason = "timeout";
			if (s->state == STATE_DATA && s->tx != NULL &&
			    data_dec_lf_end(&s->tx->dec))
				s->close_reason = "timeout: the client ended "
				    "DATA with a bare LF (\\n.\\n), which is no "
				    "end of data: RFC 5321 requires CRLF.CRLF "
				    "(\\r\\n.\\r\\n); fix the client";
			smtp_reply(s, "421 4.4.2 %s Timeout exceeded, closing "
			    "connection", s->cfg->hostname);
			smtp_close(s, "timeout");
			/* A client that does not read gets no more time. */
			if (what & BEV_EVENT_WRITING)
				session_free_later(s);
			return;
		}
	} else if (s->state == STATE_CLOSING)
		;	/* the client closed after our last reply */
	else if (what & BEV_EVENT_EOF)
		s->close_reason = s->state == STATE_DATA ||
		    s->state == STATE_BDAT ? "disconnected during data" :
		    "disconnected";
	else if (what & BEV_EVENT_ERROR)
		s->close_reason = "connection error";
	session_free_later(s);
}

static void
greeting_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct smtp_session	*s = arg;
	int			 pending = 0;

	(void)ev;
	/* Input already there is a client that did not wait for us. */
	if (s->ssl == NULL && ioctl(fd, FIONREAD, &pending) == 0 &&
	    pending > 0) {
		unsigned char	head[6];
		ssize_t		n = recv(fd, head, sizeof(head), MSG_PEEK);

		if (n > 0 && tls_is_client_hello(head, (size_t)n)) {
			bufferevent_read_buffer(s->bev,
			    bufferevent_get_input(s->bev));
			if (!tls_hello(s)) {
				s->close_reason = "TLS handshake on a plain "
				    "listener";
				session_free_later(s);
			}
			return;
		}
		pregreet(s);
		return;
	}
	smtp_enter(s, STATE_GREETED);
	smtp_reply(s, "220 %s ESMTP relayd", s->cfg->hostname);
	smtp_flush(s);
}

void
smtp_session_new(struct smtp *sm, struct smtp_listener *l,
    const struct config *cfg, int fd, const struct sockaddr *sa,
    socklen_t salen, uint64_t seq)
{
	struct smtp_session	*s;
	struct timeval		 tv;
	size_t			 i;

	loop_local();
	s = xcalloc(1, sizeof(*s));
	s->id = __atomic_add_fetch(&next_id, 1, __ATOMIC_RELAXED);
	s->smtp = sm;
	s->base = smtp_loop_base(smtp_loop_self());
	s->cfg = cfg;
	s->listener = l;
	memcpy(&s->ss, sa, salen < sizeof(s->ss) ? salen : sizeof(s->ss));
	addr_ntop(sa, s->addr, sizeof(s->addr));
	for (i = 0; i < cfg->nallow && !s->relay_ok; i++)
		s->relay_ok = addr_match(&cfg->allow[i], sa);
	s->require_auth = cfg->require_auth || smtp_listener_require_auth(l);
	s->reply_graph = (smtp_listener_reply_after(l) == -1 ?
	    cfg->reply_after : smtp_listener_reply_after(l)) ==
	    REPLY_AFTER_GRAPH;
	if (s->require_auth)
		s->relay_ok = 0;	/* AUTH grants it */
	s->state = STATE_NEW;
	LIST_INSERT_HEAD(&sessions, s, entry);
	idle_in_seq(&s->idle, now_ms(), seq);
	if (smtp_listener_implicit_tls(l)) {
		if (tls_wrap(s, fd) == -1) {
			close(fd);
			LIST_REMOVE(s, entry);
			idle_out(&s->idle);
			smtp_session_gone(sm, sa);
			free(s);
			return;
		}
		log_info("%016" PRIx64 " smtp connect client=%s listener=%s "
		    "relay=%s tls=implicit", s->id, s->addr,
		    smtp_listener_name(l), s->relay_ok ? "yes" : "no");
		s->timer = evtimer_new(s->base, greeting_cb, s);
		/* The greeting waits in the output for the handshake. */
		greeting_cb(fd, EV_TIMEOUT, s);
		return;
	}
	s->bev = bufferevent_socket_new(s->base, fd,
	    BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		close(fd);
		LIST_REMOVE(s, entry);
		idle_out(&s->idle);
		smtp_session_gone(sm, sa);
		free(s);
		return;
	}
	bufferevent_setcb(s->bev, read_cb, write_cb, event_cb, s);
	/* Replies are written eagerly; see smtp_flush. */
	bufferevent_disable(s->bev, EV_WRITE);
	bufferevent_setwatermark(s->bev, EV_READ, 0, read_highwat(cfg));
	bufferevent_enable(s->bev, EV_READ);
	log_info("%016" PRIx64 " smtp connect client=%s listener=%s relay=%s",
	    s->id, s->addr, smtp_listener_name(l), s->relay_ok ? "yes" : "no");
	s->timer = evtimer_new(s->base, greeting_cb, s);
	if (cfg->greeting_delay_ms == 0) {
		greeting_cb(fd, EV_TIMEOUT, s);
		return;
	}
	/* Until the greeting, any input is a protocol violation. */
	tv = ms_tv(cfg->greeting_delay_ms);
	evtimer_add(s->timer, &tv);
	arm_timeout(s);
}

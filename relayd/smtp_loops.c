/*
 * smtp_loops.c - SMTP sessions on several event loops. [smtp] loops sets
 * how many (0, the default: one per core but one, the core left to the
 * spool's commits, the delivery process and the kernel's network work);
 * RELAYD_SMTP_LOOPS overrides it for the tests. Loop 0 is the process's
 * own loop: it accepts
 * (limits, stress, PROXY, drain all stay there, single-threaded), and
 * hands each client's descriptor to a loop, round robin; the session then
 * lives on that loop alone. What a session changes of the shared state
 * (counters, the client table, history, the link) goes back to loop 0 as
 * a call posted here: each loop has a queue under a mutex and a pipe that
 * wakes it. One acceptor rather than SO_REUSEPORT: the parent holds the
 * listening sockets (and systemd passes one per address), and the
 * limits need one place that counts.
 */
#include <sys/prctl.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "smtp_loops.h"
#include "util.h"

struct loop_call {
	void		(*fn)(void *);
	void		*arg;
	struct loop_call *next;
};

struct smtp_loop {
	size_t			 idx;
	struct event_base	*base;
	pthread_t		 thread;
	pthread_mutex_t		 lock;
	struct loop_call	*head, **tail;
	int			 pipe[2];
	struct event		*ev;
	int			 stopped;	/* under lock: no more wakes */
	uint64_t		 turned;	/* atomic: ms, smtp_loops_alive */
	int			 stuck;		/* loop 0's: warned */
};

static struct smtp_loop	*loops;
static size_t		 nloops;
static size_t		 next_loop;	/* loop 0 only */
static __thread struct smtp_loop *self;

static void
loop_run_calls(struct smtp_loop *l)
{
	struct loop_call	*c, *next;

	pthread_mutex_lock(&l->lock);
	c = l->head;
	l->head = NULL;
	l->tail = &l->head;
	pthread_mutex_unlock(&l->lock);
	for (; c != NULL; c = next) {
		next = c->next;
		c->fn(c->arg);
		free(c);
	}
}

static void
loop_wake_cb(evutil_socket_t fd, short ev, void *arg)
{
	char	 buf[64];

	(void)ev;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	loop_run_calls(arg);
}

static void *
loop_thread(void *arg)
{
	struct smtp_loop	*l = arg;
	char			 name[16];

	self = l;
	/* Its own line in top -H and bench/intake's CPU account. */
	snprintf(name, sizeof(name), "smtp loop %zu", l->idx);
	prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
	event_base_loop(l->base, EVLOOP_NO_EXIT_ON_EMPTY);
	return NULL;
}

static int
loop_init(struct smtp_loop *l, size_t idx, struct event_base *base)
{
	l->idx = idx;
	l->base = base;
	pthread_mutex_init(&l->lock, NULL);
	l->tail = &l->head;
	if (pipe2(l->pipe, O_NONBLOCK | O_CLOEXEC) == -1)
		return -1;
	l->ev = event_new(base, l->pipe[0], EV_READ | EV_PERSIST,
	    loop_wake_cb, l);
	return event_add(l->ev, NULL);
}

size_t
smtp_loops_want(uint64_t configured, long ncpu)
{
	if (configured > 0)
		return configured > SMTP_LOOPS_MAX ? SMTP_LOOPS_MAX :
		    (size_t)configured;
	if (ncpu - 1 > SMTP_LOOPS_AUTO_MAX)
		return SMTP_LOOPS_AUTO_MAX;
	return ncpu > 2 ? (size_t)(ncpu - 1) : 1;
}

int
smtp_loops_start(struct event_base *base0, uint64_t configured, long ncpu,
    char *err, size_t len)
{
	const char	*env = getenv("RELAYD_SMTP_LOOPS");
	size_t		 i, n = smtp_loops_want(configured, ncpu);

	/* The tests run every SMTP test file on several loops with it. */
	if (env != NULL && *env != '\0') {
		n = (size_t)strtoul(env, NULL, 10);
		if (n < 1 || n > SMTP_LOOPS_MAX) {
			snprintf(err, len, "RELAYD_SMTP_LOOPS=%s: give 1 to %d",
			    env, SMTP_LOOPS_MAX);
			return -1;
		}
	}
	loops = xcalloc(n, sizeof(*loops));
	for (i = 0; i < n; i++) {
		struct event_base *b = i == 0 ? base0 : event_base_new();

		if (b == NULL || loop_init(&loops[i], i, b) == -1) {
			snprintf(err, len, "smtp loop %zu: %s", i,
			    strerror(errno));
			return -1;
		}
		nloops++;
	}
	self = &loops[0];
	for (i = 1; i < n; i++)
		if ((errno = pthread_create(&loops[i].thread, NULL,
		    loop_thread, &loops[i])) != 0) {
			snprintf(err, len, "smtp loop %zu: %s", i,
			    strerror(errno));
			nloops = i;
			return -1;
		}
	log_info("smtp: %zu event loop%s (%s%s, %ld cores)", n,
	    n == 1 ? "" : "s", env != NULL && *env != '\0' ?
	    "RELAYD_SMTP_LOOPS" : "[smtp] loops", configured == 0 ?
	    " auto: one per core but one" : "", ncpu);
	return 0;
}

struct loop_fin {
	struct smtp_loop	*l;
	void			(*fin)(void);
};

static void
loop_fin_cb(void *arg)
{
	struct loop_fin	*f = arg;

	if (f->fin != NULL)
		f->fin();
	event_base_loopbreak(f->l->base);
}

void
smtp_loops_stop(void (*fin)(void))
{
	struct loop_fin	*f;
	size_t		 i;

	for (i = 1; i < nloops; i++) {
		f = xcalloc(1, sizeof(*f));
		f->l = &loops[i];
		f->fin = fin;
		smtp_loop_call(&loops[i], loop_fin_cb, f);
		pthread_join(loops[i].thread, NULL);
		free(f);
		pthread_mutex_lock(&loops[i].lock);
		loops[i].stopped = 1;
		pthread_mutex_unlock(&loops[i].lock);
		loop_run_calls(&loops[i]);
	}
}

void
smtp_loops_flush0(void)
{
	if (nloops > 0)
		loop_run_calls(&loops[0]);
}

void
smtp_loops_free(void)
{
	size_t	 i;

	/* Results posted to loops already stopped (their sessions gone). */
	for (i = 0; i < nloops; i++) {
		loop_run_calls(&loops[i]);
		event_free(loops[i].ev);
		close(loops[i].pipe[0]);
		close(loops[i].pipe[1]);
		if (i > 0)
			event_base_free(loops[i].base);
	}
	free(loops);
	loops = NULL;
	nloops = 0;
}

size_t
smtp_loops_count(void)
{
	return nloops;
}

struct smtp_loop *
smtp_loop_at(size_t i)
{
	return i < nloops ? &loops[i] : NULL;
}

struct smtp_loop *
smtp_loop_next(void)
{
	if (nloops <= 1)
		return &loops[0];
	next_loop = (next_loop + 1) % nloops;
	return &loops[next_loop];
}

struct smtp_loop *
smtp_loop_self(void)
{
	return self != NULL ? self : &loops[0];
}

int
smtp_loop_is0(const struct smtp_loop *l)
{
	return l == NULL || l->idx == 0;
}

size_t
smtp_loop_index(const struct smtp_loop *l)
{
	return l != NULL ? l->idx : 0;
}

struct event_base *
smtp_loop_base(const struct smtp_loop *l)
{
	return l->base;
}

void
smtp_loop_call(struct smtp_loop *l, void (*fn)(void *), void *arg)
{
	struct loop_call	*c;
	int			 wake;

	c = xcalloc(1, sizeof(*c));
	c->fn = fn;
	c->arg = arg;
	pthread_mutex_lock(&l->lock);
	wake = l->head == NULL && !l->stopped;
	*l->tail = c;
	l->tail = &c->next;
	pthread_mutex_unlock(&l->lock);
	if (wake && write(l->pipe[1], "", 1) == -1 && errno != EAGAIN)
		log_warn("smtp loop %zu: wake", l->idx);
}

/* On the loop: it turns. */
static void
loop_turned(void *arg)
{
	struct smtp_loop	*l = arg;

	__atomic_store_n(&l->turned, now_ms(), __ATOMIC_RELAXED);
}

int
smtp_loops_alive(uint64_t max_age)
{
	uint64_t	 now = now_ms(), t;
	size_t		 i;
	int		 ok = 1;

	for (i = 1; i < nloops; i++) {
		t = __atomic_load_n(&loops[i].turned, __ATOMIC_RELAXED);
		if (t != 0 && now - t > max_age) {
			if (!loops[i].stuck)
				log_warnx("smtp loop %zu: stuck for %.1fs: no "
				    "heartbeat to the watchdog while it is",
				    i, (double)(now - t) / 1000);
			loops[i].stuck = 1;
			ok = 0;
		} else if (loops[i].stuck) {
			log_warnx("smtp loop %zu: turning again", i);
			loops[i].stuck = 0;
		}
		if (t == 0)
			__atomic_store_n(&loops[i].turned, now,
			    __ATOMIC_RELAXED);
		smtp_loop_call(&loops[i], loop_turned, &loops[i]);
	}
	return ok;
}

void
smtp_loops_each(void (*fn)(void *), void *arg)
{
	size_t	 i;

	for (i = 0; i < nloops; i++)
		smtp_loop_call(&loops[i], fn, arg);
}

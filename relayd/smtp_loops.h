/* smtp_loops.h - the SMTP process's event loops (RELAYD_SMTP_LOOPS). */
#ifndef RELAYD_SMTP_LOOPS_H
#define RELAYD_SMTP_LOOPS_H

#include <stddef.h>

#include <stdint.h>

#define SMTP_LOOPS_MAX		64
#define SMTP_LOOPS_AUTO_MAX	16

struct event_base;
struct smtp_loop;

/*
 * How many loops [smtp] loops = configured means on ncpu cores: 0 is one
 * per core but one, at least 1 and at most SMTP_LOOPS_AUTO_MAX.
 */
size_t		 smtp_loops_want(uint64_t, long);
/*
 * Loop 0 is base (the caller's, dispatched by the caller); the others
 * (smtp_loops_want, or RELAYD_SMTP_LOOPS, less one) get a thread and a
 * base each. 0, or -1 with err.
 */
int		 smtp_loops_start(struct event_base *, uint64_t, long, char *,
		    size_t);
/*
 * Stops and joins the other loops; fin runs on each first (its thread).
 * Calls posted to them later wait for smtp_loops_free, which runs them.
 */
void		 smtp_loops_stop(void (*)(void));
/* Runs loop 0's calls still queued (after its loop ended). */
void		 smtp_loops_flush0(void);
void		 smtp_loops_free(void);
size_t		 smtp_loops_count(void);
struct smtp_loop *smtp_loop_at(size_t);
/* The next loop for a new session, round robin over all of them. */
struct smtp_loop *smtp_loop_next(void);
/* The loop this thread runs (loop 0 outside any other loop's thread). */
struct smtp_loop *smtp_loop_self(void);
int		 smtp_loop_is0(const struct smtp_loop *);
size_t		 smtp_loop_index(const struct smtp_loop *);
struct event_base *smtp_loop_base(const struct smtp_loop *);
/* fn(arg) runs on loop l, soon, in the order posted (any thread). */
void		 smtp_loop_call(struct smtp_loop *, void (*)(void *), void *);
/*
 * On loop 0, at each heartbeat: 1 if every other loop answered a call
 * posted within max_age ms (and posts the next), else 0, with a warning
 * naming the loop once while it stays stuck.
 */
int		 smtp_loops_alive(uint64_t);
/* fn(arg) on every loop (posted; on loop 0 too). */
void		 smtp_loops_each(void (*)(void *), void *);

#endif

/* link_deliver.h - the delivery side's end of the link to SMTP intake. */
#ifndef RELAYD_LINK_DELIVER_H
#define RELAYD_LINK_DELIVER_H

struct event_base;
struct handoff;
struct spool;
struct worker_pool;

struct history;
struct smtp_figures;

/*
 * The spool is SPOOL_DELIVERY's, read already; pool and history may be
 * NULL.
 */
struct handoff	*handoff_new(struct event_base *, struct spool *,
		    struct worker_pool *, struct history *);
/*
 * An SMTP process at the other end of fd (hello: its HELLO was read
 * already, before the spool was). One before it is read to its end first
 * (it is dead: the parent connects a new one only then).
 */
void		 handoff_connect(struct handoff *, int, int);
/*
 * cb once the SMTP process has said what status shows of it (at once if
 * it has): relayd is ready when status can answer whole.
 */
void		 handoff_when_figures(struct handoff *, void (*)(void *),
		    void *);
/* What the SMTP process last said of itself (zero before it did). */
const struct smtp_figures *handoff_figures(const struct handoff *);
/* relayctl unlock: -1 if addr is not locked out (or no SMTP process). */
int		 handoff_unlock(struct handoff *, const char *);
void		 handoff_free(struct handoff *);

#endif

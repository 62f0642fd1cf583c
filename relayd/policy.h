/* policy.h - who may connect, relay, and send as whom. Pure functions. */
#ifndef RELAYD_POLICY_H
#define RELAYD_POLICY_H

#include <sys/socket.h>
#include <stddef.h>

#include "addr.h"

/* One [senders] line: a user or a network, and the addresses it may use. */
struct sender_rule {
	char		*user;		/* NULL: a network rule */
	struct netmask	 net;
	char		**patterns;	/* "a@b.c", "*@b.c", "*" */
	size_t		 npatterns;
};

struct config;

/* "a@b.c" (any case), "*@b.c" (any user of that domain), or "*". */
int	policy_pattern_match(const char *, const char *);
/*
 * May this session use this address (envelope sender or From:)? The
 * rules for its user and for the networks it comes from apply; with none
 * applying, any address may. Returns 1 or 0.
 */
int	policy_sender_ok(const struct config *, const char *,
	    const struct sockaddr *, const char *);
/* Does any [senders] line apply to this user / client address? */
int	policy_sender_restricted(const struct config *, const char *,
	    const struct sockaddr *);
/* Is the recipient's domain in [smtp] recipient_domains (or unset)? */
int	policy_rcpt_ok(const struct config *, const char *);
/*
 * The addresses of the From: header in a message's header block (up to the
 * first empty line). Returns a NULL-terminated malloc'd array (free with
 * policy_free_list), empty if there is no From:.
 */
char	**policy_from_addresses(const char *, size_t);
void	 policy_free_list(char **);
/*
 * The sending mailbox (the {id} of /users/{id}/sendMail) by [graph]
 * mailbox, mode: an address; "envelope": the envelope sender, else the
 * first From: mailbox; "from": the first From: mailbox, else the envelope
 * sender. A From: mailbox is local@domain of at most max bytes, from the
 * header block head (len bytes, which may be cut short). Returns a
 * malloc'd address, "<>" if there is none (a null sender and no From:).
 * Decided once, when a message is committed (stored with its envelope).
 */
char	*policy_sending_mailbox(const char *, const char *, const char *,
	    size_t, size_t);
/* Does policy_sending_mailbox need the header block for this sender? */
int	 policy_mailbox_needs_from(const char *, const char *);

#endif

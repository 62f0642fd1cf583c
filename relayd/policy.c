/*
 * policy.c - who may connect, relay, and send as whom.
 *
 * The decisions, kept pure so unit tests reach them without sockets:
 * sender patterns from [senders] (per authenticated user and per client
 * network: a scanner may send as scanner@contoso.com but not as the CEO),
 * the recipient-domain allow list, and the From: addresses of a message,
 * parsed with GMime. The session (smtp_session.c) asks and replies.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gmime/gmime.h>

#include "config.h"
#include "mime.h"
#include "policy.h"
#include "util.h"

int
policy_pattern_match(const char *pattern, const char *addr)
{
	const char	*at = strrchr(addr, '@');

	if (strcmp(pattern, "*") == 0)
		return 1;
	if (strncmp(pattern, "*@", 2) == 0)
		return at != NULL && strcasecmp(at + 1, pattern + 2) == 0;
	return strcasecmp(pattern, addr) == 0;
}

int
policy_sender_restricted(const struct config *cfg, const char *user,
    const struct sockaddr *sa)
{
	const struct sender_rule	*r;
	size_t				 i;

	for (i = 0; i < cfg->nsenders; i++) {
		r = &cfg->senders[i];
		if (r->user != NULL ? (user != NULL &&
		    strcmp(r->user, user) == 0) : addr_match(&r->net, sa))
			return 1;
	}
	return 0;
}

int
policy_sender_ok(const struct config *cfg, const char *user,
    const struct sockaddr *sa, const char *addr)
{
	const struct sender_rule	*r;
	size_t				 i, j;
	int				 applies = 0;

	for (i = 0; i < cfg->nsenders; i++) {
		r = &cfg->senders[i];
		if (r->user != NULL ? (user == NULL ||
		    strcmp(r->user, user) != 0) : !addr_match(&r->net, sa))
			continue;
		applies = 1;
		for (j = 0; j < r->npatterns; j++)
			if (policy_pattern_match(r->patterns[j], addr))
				return 1;
	}
	return !applies;
}

int
policy_rcpt_ok(const struct config *cfg, const char *addr)
{
	const char	*at = strrchr(addr, '@');
	size_t		 i;

	if (cfg->nrcpt_domains == 0)
		return 1;
	if (at == NULL)
		return 0;
	for (i = 0; i < cfg->nrcpt_domains; i++)
		if (strcasecmp(at + 1, cfg->rcpt_domains[i]) == 0)
			return 1;
	return 0;
}

static void
collect(InternetAddressList *list, char ***out, size_t *n, unsigned depth)
{
	InternetAddress	*ia;
	const char	*a;
	int		 i;

	if (list == NULL || depth > 4)
		return;
	for (i = 0; i < internet_address_list_length(list); i++) {
		ia = internet_address_list_get_address(list, i);
		if (INTERNET_ADDRESS_IS_GROUP(ia))
			collect(internet_address_group_get_members(
			    INTERNET_ADDRESS_GROUP(ia)), out, n, depth + 1);
		else if ((a = internet_address_mailbox_get_addr(
		    INTERNET_ADDRESS_MAILBOX(ia))) != NULL) {
			*out = xrealloc(*out, (*n + 2) * sizeof(**out));
			(*out)[(*n)++] = xstrdup(a);
			(*out)[*n] = NULL;
		}
	}
}

char **
policy_from_addresses(const char *head, size_t len)
{
	const char		*p = head, *end = head + len, *nl;
	char			*value = NULL, **out = xcalloc(1, sizeof(*out));
	size_t			 vlen = 0, n = 0;
	int			 in_from = 0;
	InternetAddressList	*list;

	/* Unfold every From: line (there should be one) into value. */
	while (p < end) {
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
			nl = end;
		if (nl == p || (nl == p + 1 && *p == '\r'))
			break;			/* the header block ends */
		if (*p == ' ' || *p == '\t') {
			if (!in_from)
				goto next;
		} else {
			/* "From:", or the obsolete "From :" (RFC 5322 4.5). */
			const char *q = p + 4;

			in_from = nl - p >= 5 && strncasecmp(p, "From", 4) == 0;
			while (in_from && q < nl && (*q == ' ' || *q == '\t'))
				q++;
			in_from = in_from && q < nl && *q == ':';
			if (!in_from)
				goto next;
			p = q + 1;
			if (vlen > 0) {
				value = xrealloc(value, vlen + 2);
				value[vlen++] = ',';
			}
		}
		{
			size_t l = (size_t)(nl - p);

			if (l > 0 && p[l - 1] == '\r')
				l--;
			value = xrealloc(value, vlen + l + 2);
			memcpy(value + vlen, p, l);
			vlen += l;
			value[vlen++] = ' ';
			value[vlen] = '\0';
		}
next:
		p = nl + 1;
	}
	if (value == NULL)
		return out;
	mime_init();
	if ((list = internet_address_list_parse(NULL, value)) != NULL) {
		collect(list, &out, &n, 0);
		g_object_unref(list);
	}
	free(value);
	return out;
}

int
policy_mailbox_needs_from(const char *mode, const char *mail_from)
{
	return strcmp(mode, "from") == 0 ||
	    (strcmp(mode, "envelope") == 0 && *mail_from == '\0');
}

/* The first From: address that is local@domain and fits; NULL if none. */
static char *
first_from(const char *head, size_t len, size_t max)
{
	char	**from = policy_from_addresses(head, len), *a = NULL, *at;
	size_t	 i;

	for (i = 0; from[i] != NULL && a == NULL; i++)
		if ((at = strrchr(from[i], '@')) != NULL && at > from[i] &&
		    at[1] != '\0' && strlen(from[i]) <= max)
			a = xstrdup(from[i]);
	policy_free_list(from);
	return a;
}

char *
policy_sending_mailbox(const char *mode, const char *mail_from,
    const char *head, size_t len, size_t max)
{
	char	*from = NULL;

	if (!policy_mailbox_needs_from(mode, mail_from))
		return xstrdup(strcmp(mode, "envelope") == 0 ? mail_from :
		    mode);
	if (head != NULL)
		from = first_from(head, len, max);
	if (from != NULL)
		return from;
	return xstrdup(*mail_from != '\0' ? mail_from : "<>");
}

void
policy_free_list(char **list)
{
	size_t	 i;

	for (i = 0; list != NULL && list[i] != NULL; i++)
		free(list[i]);
	free(list);
}

/*
 * fuzz_spool_record.c - a segment's bytes through spool_record_parse(),
 * record after record as recovery reads them (up to a NUL byte, the space
 * allocated ahead, or the first record that is not whole).
 *
 * Each record that parses is written again with the encoder (its head
 * from the envelope that was read, its state line, its message bytes, its
 * trailer). That record must parse to the same entry, and writing it once
 * more must give the same bytes: the writer and the parser agree. Each
 * prefix of it must be "incomplete", the answer recovery and the fuzzed
 * input get from a record cut short. Every parse gets a buffer of exactly
 * its length, so ASan sees any read past it.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "spool_record.h"

#define MAX_RECORDS	16
#define VALUE_MAX	1024

/* The envelope values read back, as the dead-letter requeue does. */
struct env_values {
	char	 client[VALUE_MAX], listener[VALUE_MAX], helo[VALUE_MAX];
	char	 user[VALUE_MAX], params[VALUE_MAX];
};

static int
parse(const char *data, size_t size, struct spool_entry *e)
{
	const char	*why = NULL;
	char		*copy = malloc(size > 0 ? size : 1);
	int		 rc;

	if (copy == NULL)
		abort();
	memcpy(copy, data, size);
	rc = spool_record_parse(copy, size, e, &why);
	FUZZ_CHECK(rc == 0 || rc == -1 || rc == SPOOL_RECORD_INCOMPLETE);
	if (rc != 0) {
		FUZZ_CHECK(why != NULL);
		FUZZ_CHECK(e->mail_from == NULL && e->rcpts == NULL);
	} else {
		FUZZ_CHECK(e->reclen == e->body_offset + e->size +
		    SPOOL_TRAILER_LEN && e->reclen <= size);
		FUZZ_CHECK(spool_record_qid_valid(e->qid, strlen(e->qid)));
		FUZZ_CHECK(e->mail_from != NULL && e->nrcpts > 0);
		FUZZ_CHECK(strchr("QHDX", e->state) != NULL);
	}
	free(copy);
	return rc;
}

/* A mailbox the writer can hold (one read may be longer); NULL: none. */
static const char *
fitting_mailbox(const struct spool_entry *e)
{
	return e->mailbox != NULL && strlen(e->mailbox) <= SPOOL_MAILBOX_MAX ?
	    e->mailbox : NULL;
}

/* The record e was read from (at rec), written again; malloc'd. */
static char *
encode(const char *rec, const struct spool_entry *e, size_t *lenp)
{
	struct spool_env	 env;
	struct env_values	 v;
	ssize_t			 hlen;
	char			*out;

	spool_record_env(rec, e->body_offset, "client", v.client,
	    sizeof(v.client));
	spool_record_env(rec, e->body_offset, "listener", v.listener,
	    sizeof(v.listener));
	spool_record_env(rec, e->body_offset, "helo", v.helo, sizeof(v.helo));
	spool_record_env(rec, e->body_offset, "user", v.user, sizeof(v.user));
	spool_record_env(rec, e->body_offset, "mail-params", v.params,
	    sizeof(v.params));
	memset(&env, 0, sizeof(env));
	env.arrival_us = e->arrival_us;
	env.client = v.client;
	env.listener = v.listener;
	env.helo = v.helo;
	env.user = v.user;
	env.mail_from = e->mail_from;
	env.mailbox = fitting_mailbox(e);
	env.mail_params = v.params;
	env.rcpts = (const char *const *)e->rcpts;
	env.nrcpts = e->nrcpts;
	/* Values were read up to a newline: the writer takes them all. */
	hlen = spool_record_head(NULL, 0, e->qid, &env);
	FUZZ_CHECK(hlen > 0);
	*lenp = (size_t)hlen + e->size + SPOOL_TRAILER_LEN;
	if ((out = malloc(*lenp)) == NULL)
		abort();
	FUZZ_CHECK(spool_record_head(out, (size_t)hlen, e->qid, &env) ==
	    hlen);
	spool_record_state(out + SPOOL_RECORD_STATE_OFF, e->state,
	    e->attempts, e->next_ms, e->error);
	spool_record_size(out + SPOOL_RECORD_SIZE_OFF, e->size);
	memcpy(out + hlen, rec + e->body_offset, e->size);
	spool_record_trailer(out + hlen + e->size, e->size);
	return out;
}

static void
same_entry(const struct spool_entry *a, const struct spool_entry *b,
    const char *arec, const char *brec)
{
	size_t	 i;

	FUZZ_CHECK(strcmp(a->qid, b->qid) == 0);
	FUZZ_CHECK(a->state == b->state && a->attempts == b->attempts);
	FUZZ_CHECK(a->next_ms == b->next_ms);
	FUZZ_CHECK(strcmp(a->error, b->error) == 0);
	FUZZ_CHECK(a->arrival_us == b->arrival_us && a->size == b->size);
	FUZZ_CHECK(strcmp(a->mail_from, b->mail_from) == 0);
	FUZZ_CHECK((fitting_mailbox(a) == NULL && b->mailbox == NULL) ||
	    (fitting_mailbox(a) != NULL && b->mailbox != NULL &&
	    strcmp(fitting_mailbox(a), b->mailbox) == 0));
	FUZZ_CHECK(a->nrcpts == b->nrcpts);
	for (i = 0; i < a->nrcpts; i++)
		FUZZ_CHECK(strcmp(a->rcpts[i], b->rcpts[i]) == 0);
	FUZZ_CHECK(memcmp(arec + a->body_offset, brec + b->body_offset,
	    a->size) == 0);
}

static void
round_trip(const char *rec, const struct spool_entry *e)
{
	struct spool_entry	 e2, e3;
	char			*again, *third;
	size_t			 n, n3, k;

	again = encode(rec, e, &n);
	FUZZ_CHECK(parse(again, n, &e2) == 0);
	FUZZ_CHECK(e2.reclen == n);
	same_entry(e, &e2, rec, again);
	third = encode(again, &e2, &n3);
	FUZZ_CHECK(n3 == n && memcmp(third, again, n) == 0);
	FUZZ_CHECK(parse(third, n3, &e3) == 0);
	spool_entry_clear(&e3);
	for (k = 0; k < n; k += k < 300 ? 1 : 61)
		FUZZ_CHECK(parse(again, k, &e3) == SPOOL_RECORD_INCOMPLETE);
	FUZZ_CHECK(parse(again, n - 1, &e3) == SPOOL_RECORD_INCOMPLETE);
	spool_entry_clear(&e2);
	free(third);
	free(again);
}

void
fuzz_spool_record_init(void)
{
}

int
fuzz_spool_record_one(const uint8_t *data, size_t size)
{
	const char		*seg = (const char *)data;
	struct spool_entry	 e;
	size_t			 off = 0;
	int			 i;

	for (i = 0; i < MAX_RECORDS && off < size && seg[off] != '\0'; i++) {
		if (parse(seg + off, size - off, &e) != 0)
			break;
		round_trip(seg + off, &e);
		off += e.reclen;
		spool_entry_clear(&e);
	}
	return 0;
}

FUZZ_ENTRY(spool_record)

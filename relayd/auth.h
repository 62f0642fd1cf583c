/* auth.h - SMTP AUTH: the users file, SASL exchanges, failure lockout. */
#ifndef RELAYD_AUTH_H
#define RELAYD_AUTH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct auth;
struct auth_xchg;
struct config;

#define AUTH_PROMPT_USER	"VXNlcm5hbWU6"	/* base64 "Username:" */
#define AUTH_PROMPT_PASS	"UGFzc3dvcmQ6"	/* base64 "Password:" */

enum auth_result {
	AUTH_CONTINUE,		/* send "334 <challenge>", read a line */
	AUTH_OK,
	AUTH_FAIL,		/* wrong credentials */
	AUTH_SYNTAX,		/* not base64, or malformed */
};

/*
 * Checks a users file: "USER crypt=HASH scram-sha-256=I:SALT:SK:SK
 * cram-md5=SECRET", one per line. Writes "PATH:LINE: why" for each problem
 * to errf and returns how many there were. Pure but for reading the file.
 */
int		 auth_users_check(const char *, FILE *);

/* What a users-file line holds. */
#define AUTH_SECRET_CRYPT	0x01
#define AUTH_SECRET_SCRAM	0x02
#define AUTH_SECRET_CRAM	0x04

/* Mechanisms. */
#define AUTH_MECH_PLAIN		0x01
#define AUTH_MECH_LOGIN		0x02
#define AUTH_MECH_SCRAM		0x04	/* SCRAM-SHA-256 */
#define AUTH_MECH_CRAM		0x08	/* CRAM-MD5 */
#define AUTH_MECH_ALL		0x0f

#define AUTH_WHY_MAX		4

/*
 * Which mechanisms EHLO offers. A client takes the strongest offered, so
 * one is offered only if every user can log in with it; one that works
 * for some users only is still accepted when a client asks for it by
 * name. If none works for every user, all that work for some are offered
 * (and why[] says so).
 */
struct auth_offer {
	char	 offered[64];		/* "PLAIN LOGIN SCRAM-SHA-256" */
	char	 accepted[64];
	char	 why[AUTH_WHY_MAX][256];	/* what was held back, and why */
	size_t	 nwhy;
	int	 for_some;		/* none works for all (a warning) */
};

/*
 * For n users (names, and AUTH_SECRET_* each) and the mechanisms libgsasl
 * supports (AUTH_MECH_*). Pure.
 */
void		 auth_offer(const char *const *, const unsigned *, size_t,
		    unsigned, struct auth_offer *);

/*
 * A session's failed AUTHs. A failure counts towards max_failures unless
 * the session already had one counted as the same user and has not yet
 * failed with this mechanism: a client trying its mechanisms in turn with
 * one password fails once, and a session guessing gets at most one guess
 * per mechanism uncounted. auth_tally_count says whether this one counts.
 */
struct auth_tally {
	char		*user;		/* of the failure last counted */
	unsigned	 mechs;		/* AUTH_MECH_* failed since */
};
int		 auth_tally_count(struct auth_tally *, const char *,
		    const char *);
void		 auth_tally_clear(struct auth_tally *);

/* Loads [auth] users_file; NULL with err. The caller frees with auth_free. */
struct auth	*auth_new(const struct config *, char *, size_t);
void		 auth_free(struct auth *);
/* Takes over from's failures and lockouts (a reload keeps them). */
void		 auth_keep_failures(struct auth *, struct auth *);
/* Failed AUTHs and lockouts since start (or since [auth] came in). */
void		 auth_counts(const struct auth *, uint64_t *, uint64_t *);
/* The mechanisms EHLO offers: "PLAIN LOGIN SCRAM-SHA-256". */
const char	*auth_mechanisms(const struct auth *);

/* An address locked out of AUTH. */
struct auth_lockout {
	const char	*addr;
	uint64_t	 until;		/* wall clock, ms */
	unsigned	 failures;
};

/*
 * Per client address. auth_locked: locked out now (until set)? A failure
 * that counts (see auth_tally) adds to the address's record; the delay
 * (ms) before the 535 is returned, and lk->until is set if this failure
 * locked the address out (else 0).
 */
int		 auth_locked(struct auth *, const char *, uint64_t *);
uint64_t	 auth_failed(struct auth *, const char *, int,
		    struct auth_lockout *);
void		 auth_succeeded(struct auth *, const char *);
/* Each address locked out now, to cb. */
void		 auth_lockouts(struct auth *,
		    void (*)(void *, const struct auth_lockout *), void *);
/* Lifts the lockout of an address: 0, or -1 if it was not locked out. */
int		 auth_unlock(struct auth *, const char *);

/* One exchange: start with the mechanism, step with each client line. */
struct auth_xchg *auth_start(struct auth *, const char *);
enum auth_result auth_step(struct auth_xchg *, const char *, char **);
/* The user (authentication id) named so far, or NULL. */
const char	*auth_user(const struct auth_xchg *);
const char	*auth_mech(const struct auth_xchg *);
/* Why the exchange failed, in words ("wrong password"); never a secret. */
const char	*auth_why(const struct auth_xchg *);
void		 auth_end(struct auth_xchg *);

/* For relayctl passwd: a users-file line for user and password. */
char		*auth_make_entry(const char *, const char *, int, char *,
		    size_t);

#endif

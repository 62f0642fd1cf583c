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

/* Loads [auth] users_file; NULL with err. The caller frees with auth_free. */
struct auth	*auth_new(const struct config *, char *, size_t);
void		 auth_free(struct auth *);
/* "PLAIN LOGIN SCRAM-SHA-256" (+ " CRAM-MD5" if a user has its secret). */
const char	*auth_mechanisms(const struct auth *);

/* Per client address: locked out now? A failure returns the delay (ms). */
int		 auth_locked(struct auth *, const char *);
uint64_t	 auth_failed(struct auth *, const char *);
void		 auth_succeeded(struct auth *, const char *);

/* One exchange: start with the mechanism, step with each client line. */
struct auth_xchg *auth_start(struct auth *, const char *);
enum auth_result auth_step(struct auth_xchg *, const char *, char **);
/* The user (authentication id) named so far, or NULL. */
const char	*auth_user(const struct auth_xchg *);
const char	*auth_mech(const struct auth_xchg *);
void		 auth_end(struct auth_xchg *);

/* For relayctl passwd: a users-file line for user and password. */
char		*auth_make_entry(const char *, const char *, int, char *,
		    size_t);

#endif

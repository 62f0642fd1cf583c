/* jwt.h - client assertions: JWTs signed with the app certificate's key. */
#ifndef RELAYD_JWT_H
#define RELAYD_JWT_H

#include <stddef.h>
#include <time.h>

enum jwt_alg { JWT_PS256, JWT_RS256 };	/* as [graph] assertion_alg */

#define JWT_LIFETIME_S	600	/* exp - nbf */

struct jwt_key;

/*
 * Loads a PEM certificate and its RSA private key (not encrypted) and checks
 * that they belong together. NULL with err if not.
 */
struct jwt_key	*jwt_key_load(const char *, const char *, enum jwt_alg, char *,
		    size_t);
void		 jwt_key_free(struct jwt_key *);
/* 1 if the certificate is past its notAfter (the date goes in when). */
int		 jwt_key_expired(const struct jwt_key *, char *, size_t);
/*
 * A fresh signed assertion for client id (iss, sub) and audience (the token
 * URL) at time now, with a random jti: malloc'd, NULL with err.
 */
char		*jwt_assertion(const struct jwt_key *, const char *,
		    const char *, time_t, char *, size_t);

/* The pieces, malloc'd (unit tests). */
char		*jwt_b64url(const void *, size_t);
char		*jwt_header(const struct jwt_key *);
char		*jwt_claims(const char *, const char *, const char *, time_t);

#endif

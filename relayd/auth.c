/*
 * auth.c - SMTP AUTH: the users file, SASL exchanges, failure lockout.
 *
 * Users file ([auth] users_file), one user per line, never a plaintext
 * password except where a mechanism cannot do without one:
 *
 *   scanner1 crypt=$y$j9T$... scram-sha-256=4096:SALT_B64:STOREDKEY:SERVERKEY
 *   legacy   crypt=$6$... cram-md5=SECRET
 *
 * crypt= (yescrypt or SHA-512 through libxcrypt) checks PLAIN and LOGIN;
 * scram-sha-256= holds RFC 5802 keys, not the password; cram-md5= is the
 * plaintext CRAM-MD5 needs, only for users given one. `relayctl passwd`
 * makes lines.
 *
 * PLAIN, CRAM-MD5 and SCRAM-SHA-256 run through libgsasl. LOGIN is done
 * here: devices (Xerox, Ricoh) expect the prompts to be exactly "Username:"
 * and "Password:", which libgsasl words differently.
 *
 * A verified password is remembered for a while as an HMAC under a key
 * made at start (not the password), so a printer that logs in for every
 * page does not cost a yescrypt each time. Failures are counted per client
 * address: each one waits longer before its 535, and max_failures within
 * the lockout time lock the address out of AUTH for that time.
 *
 * EHLO offers a mechanism only if every user in the file can log in with
 * it (auth_offer): clients take the strongest offered, and one CRAM-MD5
 * user must not make every other device fail with the right password.
 */
#include <sys/stat.h>

#include <crypt.h>
#include <pthread.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gsasl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "auth.h"
#include "config.h"
#include "log.h"
#include "util.h"

#define AUTH_LINE_MAX		4096
#define AUTH_CACHE_MS		(10 * 60 * 1000)
#define AUTH_DELAY_MAX_MS	8000
#define AUTH_SCRAM_ITER		4096
#define AUTH_ADDR_BUCKETS	256

struct user {
	char		*name;
	char		*crypt;		/* crypt(3) hash */
	char		*scram_iter;	/* decimal */
	char		*scram_salt;	/* base64 */
	char		*scram_stored;	/* base64 (the file has hex) */
	char		*scram_server;	/* base64 */
	char		*cram;		/* plaintext, CRAM-MD5 only */
	unsigned char	 cached[32];	/* HMAC of a verified password */
	uint64_t	 cached_until;
	int		 line;		/* in the users file */
};

struct failures {
	char		*addr;
	unsigned	 n;
	uint64_t	 first;		/* of this window, ms */
	uint64_t	 locked_until;
	struct failures	*next;
};

struct auth {
	struct user	*users;
	size_t		 nusers;
	Gsasl		*gsasl;
	struct auth_offer offer;
	unsigned char	 key[32];	/* for the cache's HMACs */
	char		 dummy[CRYPT_OUTPUT_SIZE];	/* for unknown users */
	unsigned	 max_failures;
	uint64_t	 lockout_ms;
	struct failures	*fail[AUTH_ADDR_BUCKETS];
	uint64_t	 nfailures, nlockouts;	/* since start, for metrics */
};

struct auth_xchg {
	struct auth	*auth;
	char		 mech[32];
	Gsasl_session	*gs;		/* NULL for LOGIN */
	int		 step;		/* LOGIN: 0 user, 1 password */
	int		 verified;	/* SCRAM: server-final sent, 235 next */
	char		*user;
	const char	*why;		/* of a failure, in words */
};

/* Mechanisms that need the same secrets go together. */
static const struct mech_group {
	const char	*names;		/* as EHLO lists them */
	const char	*label;		/* in the log */
	unsigned	 mechs;		/* AUTH_MECH_* */
	unsigned	 secrets;	/* any one of them will do */
	const char	*secret;	/* in words */
} mech_groups[] = {
	{ "PLAIN LOGIN", "PLAIN and LOGIN", AUTH_MECH_PLAIN | AUTH_MECH_LOGIN,
	  AUTH_SECRET_CRYPT | AUTH_SECRET_CRAM, "crypt or cram-md5" },
	{ "SCRAM-SHA-256", "SCRAM-SHA-256", AUTH_MECH_SCRAM,
	  AUTH_SECRET_SCRAM, "scram-sha-256" },
	{ "CRAM-MD5", "CRAM-MD5", AUTH_MECH_CRAM, AUTH_SECRET_CRAM,
	  "cram-md5" },
};

static const struct {
	const char	*name;
	unsigned	 mech;
} mech_names[] = {
	{ "PLAIN", AUTH_MECH_PLAIN },
	{ "LOGIN", AUTH_MECH_LOGIN },
	{ "SCRAM-SHA-256", AUTH_MECH_SCRAM },
	{ "CRAM-MD5", AUTH_MECH_CRAM },
};

#define WHY_UNKNOWN	"unknown user"
#define WHY_PASSWORD	"wrong password"
#define WHY_NO_SECRET	"no secret for this mechanism"
#define WHY_AUTHZID	"authorization identity is another user"
#define WHY_MALFORMED	"malformed exchange"

static void
user_clear(struct user *u)
{
	free(u->name);
	if (u->cram != NULL)
		explicit_bzero(u->cram, strlen(u->cram));
	free(u->crypt);
	free(u->scram_iter);
	free(u->scram_salt);
	free(u->scram_stored);
	free(u->scram_server);
	free(u->cram);
	memset(u, 0, sizeof(*u));
}

static int
is_hex(const char *s, size_t want)
{
	size_t	 n = strlen(s), i;

	for (i = 0; i < n; i++)
		if (!isxdigit((unsigned char)s[i]))
			return 0;
	return n == want;
}

static char *
hex_to_b64(const char *hex)
{
	char	 bin[32], *b64 = NULL, *out;
	size_t	 i, n;

	for (i = 0; i < sizeof(bin); i++) {
		unsigned v;

		sscanf(hex + 2 * i, "%2x", &v);
		bin[i] = (char)v;
	}
	if (gsasl_base64_to(bin, sizeof(bin), &b64, &n) != GSASL_OK)
		return xstrdup("");
	out = xstrdup(b64);
	gsasl_free(b64);
	return out;
}

/* "ITER:SALT:STOREDKEY:SERVERKEY" into u; NULL or why not. */
static const char *
parse_scram(struct user *u, const char *v)
{
	char	*copy = xstrdup(v), *f[4], *save = NULL, *p;
	int	 i;

	for (i = 0, p = strtok_r(copy, ":", &save); p != NULL && i < 4;
	    p = strtok_r(NULL, ":", &save))
		f[i++] = p;
	if (i != 4 || p != NULL) {
		free(copy);
		return "scram-sha-256 needs ITER:SALT:STOREDKEY:SERVERKEY";
	}
	if (strspn(f[0], "0123456789") != strlen(f[0]) || atoi(f[0]) < 4096) {
		free(copy);
		return "scram-sha-256 iterations must be a number >= 4096";
	}
	{
		char	*salt = NULL;
		size_t	 n = 0;

		if (gsasl_base64_from(f[1], strlen(f[1]), &salt, &n) !=
		    GSASL_OK || n == 0) {
			gsasl_free(salt);
			free(copy);
			return "scram-sha-256 salt must be base64";
		}
		gsasl_free(salt);
	}
	if (!is_hex(f[2], 64) || !is_hex(f[3], 64)) {
		free(copy);
		return "scram-sha-256 keys must be 64 hex digits each";
	}
	u->scram_iter = xstrdup(f[0]);
	u->scram_salt = xstrdup(f[1]);
	/* libgsasl 2.x takes the keys in base64, whatever its header says. */
	u->scram_stored = hex_to_b64(f[2]);
	u->scram_server = hex_to_b64(f[3]);
	free(copy);
	return NULL;
}

/* One line into u; NULL (ok, or nothing on it) or why it is wrong. */
static const char *
parse_line(char *line, struct user *u, int *empty)
{
	char		*tok, *save = NULL, *eq;
	const char	*why;

	memset(u, 0, sizeof(*u));
	*empty = 0;
	tok = strtok_r(line, " \t\r\n", &save);
	if (tok == NULL || *tok == '#') {
		*empty = 1;
		return NULL;
	}
	if (strchr(tok, '=') != NULL)
		return "a line starts with the user name";
	u->name = xstrdup(tok);
	while ((tok = strtok_r(NULL, " \t\r\n", &save)) != NULL) {
		if ((eq = strchr(tok, '=')) == NULL || eq[1] == '\0')
			return "expected field=value";
		*eq++ = '\0';
		if (strcmp(tok, "crypt") == 0 && u->crypt == NULL) {
			if (eq[0] != '$' || crypt_checksalt(eq) !=
			    CRYPT_SALT_OK)
				return "crypt= is not a crypt(3) hash this "
				    "system supports";
			u->crypt = xstrdup(eq);
		} else if (strcmp(tok, "scram-sha-256") == 0 &&
		    u->scram_iter == NULL) {
			if ((why = parse_scram(u, eq)) != NULL)
				return why;
		} else if (strcmp(tok, "cram-md5") == 0 && u->cram == NULL)
			u->cram = xstrdup(eq);
		else
			return "unknown or repeated field (crypt, "
			    "scram-sha-256, cram-md5)";
	}
	if (u->crypt == NULL && u->scram_iter == NULL && u->cram == NULL)
		return "no credentials (crypt=, scram-sha-256= or cram-md5=)";
	return NULL;
}

/* Reads the file; each problem to errf (may be NULL). Returns the count. */
static int
load_users(const char *path, FILE *errf, struct user **out, size_t *nout)
{
	struct user	 u, *users = NULL;
	struct stat	 st;
	const char	*why;
	char		 line[AUTH_LINE_MAX];
	size_t		 n = 0, i;
	int		 lineno = 0, errors = 0, empty;
	FILE		*fp;

	if ((fp = fopen(path, "r")) == NULL || fstat(fileno(fp), &st) == -1) {
		if (errf != NULL)
			fprintf(errf, "users_file \"%s\": %s\n", path,
			    strerror(errno));
		if (fp != NULL)
			fclose(fp);
		return 1;
	}
	if (check_private_mode("users_file", path, (unsigned)st.st_mode,
	    line, sizeof(line)) == -1) {
		if (errf != NULL)
			fprintf(errf, "%s\n", line);
		errors++;
	}
	while (fgets(line, sizeof(line), fp) != NULL) {
		lineno++;
		why = parse_line(line, &u, &empty);
		for (i = 0; why == NULL && !empty && i < n; i++)
			if (strcmp(users[i].name, u.name) == 0)
				break;
		if (why == NULL && !empty && i < n) {
			if (errf != NULL)
				fprintf(errf, "%s:%d: user \"%s\" is listed twice "
				    "(also on line %d); keep one line per user\n",
				    path, lineno, u.name, users[i].line);
			errors++;
			user_clear(&u);
			continue;
		}
		if (why != NULL) {
			if (errf != NULL)
				fprintf(errf, "%s:%d: %s; make a good line "
				    "with: relayctl passwd USER\n", path,
				    lineno, why);
			errors++;
			user_clear(&u);
			continue;
		}
		u.line = lineno;
		if (empty)
			continue;
		users = xrealloc(users, (n + 1) * sizeof(*users));
		users[n++] = u;
	}
	explicit_bzero(line, sizeof(line));
	fclose(fp);
	*out = users;
	*nout = n;
	return errors;
}

int
auth_users_check(const char *path, FILE *errf)
{
	struct user	*users = NULL;
	size_t		 n = 0, i;
	int		 errors;

	errors = load_users(path, errf, &users, &n);
	for (i = 0; i < n; i++)
		user_clear(&users[i]);
	free(users);
	return errors;
}

static void
add_word(char *buf, size_t len, const char *w)
{
	size_t	 n = strlen(buf);

	snprintf(buf + n, len - n, "%s%s", n > 0 ? " " : "", w);
}

static void	offer_why(struct auth_offer *, const char *, ...)
		    PRINTFLIKE(2, 3);

static void
offer_why(struct auth_offer *o, const char *fmt, ...)
{
	va_list	 ap;

	if (o->nwhy == AUTH_WHY_MAX)
		return;
	va_start(ap, fmt);
	vsnprintf(o->why[o->nwhy++], sizeof(o->why[0]), fmt, ap);
	va_end(ap);
}

/* "users alice, bob have" or "user alice has", naming a few at most. */
static void
who_lacks(const char *const *names, const unsigned *secrets, size_t n,
    unsigned want, char *buf, size_t len)
{
	size_t	 i, lack = 0, shown = 0;
	int	 off;

	for (i = 0; i < n; i++)
		lack += (secrets[i] & want) == 0;
	off = snprintf(buf, len, "user%s", lack == 1 ? "" : "s");
	for (i = 0; i < n; i++) {
		if ((secrets[i] & want) != 0)
			continue;
		if ((size_t)off + strlen(names[i]) + 32 > len)
			break;		/* room for " and N more have" */
		off += snprintf(buf + off, len - (size_t)off, "%s%s",
		    shown > 0 ? ", " : " ", names[i]);
		shown++;
	}
	if (shown < lack)
		off += snprintf(buf + off, len - (size_t)off, " and %zu more",
		    lack - shown);
	snprintf(buf + off, len - (size_t)off, " %s", lack == 1 ? "has" :
	    "have");
}

void
auth_offer(const char *const *names, const unsigned *secrets, size_t n,
    unsigned supported, struct auth_offer *o)
{
	const struct mech_group	*g;
	size_t			 i, k;
	int			 all, some;
	char			 who[160];

	memset(o, 0, sizeof(*o));
	for (k = 0; k < NELEM(mech_groups); k++) {
		g = &mech_groups[k];
		if ((supported & g->mechs) != g->mechs) {
			offer_why(o, "%s not offered: this libgsasl cannot "
			    "do it", g->label);
			continue;
		}
		for (i = 0, all = 1, some = 0; i < n; i++)
			if ((secrets[i] & g->secrets) != 0)
				some = 1;
			else
				all = 0;
		if (all || some)
			add_word(o->accepted, sizeof(o->accepted), g->names);
		if (all)
			add_word(o->offered, sizeof(o->offered), g->names);
		else if (!some)
			offer_why(o, "%s not offered: no user has a %s secret",
			    g->label, g->secret);
		else {
			who_lacks(names, secrets, n, g->secrets, who,
			    sizeof(who));
			offer_why(o, "%s not offered: %s no %s secret (still "
			    "accepted when a client asks for it by name)",
			    g->label, who, g->secret);
		}
	}
	if (o->offered[0] == '\0' && o->accepted[0] != '\0') {
		strlcpy_r(o->offered, o->accepted, sizeof(o->offered));
		o->for_some = 1;
		offer_why(o, "no mechanism works for every user: offering %s, "
		    "so some clients will fail; give every user a line from "
		    "relayctl passwd", o->offered);
	}
}

static unsigned
mech_bit(const char *mech)
{
	size_t	 i;

	for (i = 0; i < NELEM(mech_names); i++)
		if (strcmp(mech_names[i].name, mech) == 0)
			return mech_names[i].mech;
	return 0;
}

int
auth_tally_count(struct auth_tally *t, const char *user, const char *mech)
{
	unsigned	 bit = mech_bit(mech);

	if (user == NULL)
		user = "";
	if (t->user != NULL && strcmp(t->user, user) == 0 && bit != 0 &&
	    (t->mechs & bit) == 0) {
		t->mechs |= bit;
		return 0;
	}
	free(t->user);
	t->user = xstrdup(user);
	t->mechs = bit;
	return 1;
}

void
auth_tally_clear(struct auth_tally *t)
{
	free(t->user);
	t->user = NULL;
	t->mechs = 0;
}

static struct user *
find_user(struct auth *a, const char *name)
{
	size_t	 i;

	for (i = 0; name != NULL && i < a->nusers; i++)
		if (strcmp(a->users[i].name, name) == 0)
			return &a->users[i];
	return NULL;
}

static void
cache_digest(struct auth *a, const char *user, const char *pw,
    unsigned char *out)
{
	unsigned int	 len = 32;
	size_t		 ul = strlen(user) + 1, pl = strlen(pw);
	unsigned char	*buf = xmalloc(ul + pl);

	memcpy(buf, user, ul);
	memcpy(buf + ul, pw, pl);
	HMAC(EVP_sha256(), a->key, sizeof(a->key), buf, ul + pl, out, &len);
	explicit_bzero(buf, ul + pl);
	free(buf);
}

/* PLAIN and LOGIN: the password against crypt= (or cram-md5=); why not. */
static const char *
check_password(struct auth *a, const char *name, const char *pw)
{
	struct crypt_data	*cd;
	struct user		*u = find_user(a, name);
	unsigned char		 d[32];
	const char		*h;
	int			 ok = 0;

	if (u != NULL) {
		cache_digest(a, name, pw, d);
		if (now_ms() < u->cached_until &&
		    CRYPTO_memcmp(d, u->cached, sizeof(d)) == 0)
			return NULL;
	}
	if (u != NULL && u->crypt == NULL && u->cram != NULL)
		ok = strlen(u->cram) == strlen(pw) &&
		    CRYPTO_memcmp(u->cram, pw, strlen(pw)) == 0;
	else {
		cd = xcalloc(1, sizeof(*cd));
		/* Unknown users cost the same time as known ones. */
		h = u != NULL && u->crypt != NULL ? u->crypt : a->dummy;
		if (crypt_r(pw, h, cd) != NULL &&
		    strlen(cd->output) == strlen(h))
			ok = CRYPTO_memcmp(cd->output, h, strlen(h)) == 0 &&
			    u != NULL && u->crypt != NULL;
		explicit_bzero(cd, sizeof(*cd));
		free(cd);
	}
	if (ok) {
		memcpy(u->cached, d, sizeof(d));
		u->cached_until = now_ms() + AUTH_CACHE_MS;
		return NULL;
	}
	if (u == NULL)
		return WHY_UNKNOWN;
	return u->crypt == NULL && u->cram == NULL ? WHY_NO_SECRET :
	    WHY_PASSWORD;
}

static int
gsasl_cb(Gsasl *ctx, Gsasl_session *gs, Gsasl_property prop)
{
	struct auth_xchg	*x = gsasl_session_hook_get(gs);
	struct auth		*a = x->auth;
	const char		*authid, *authzid, *pw;
	struct user		*u;

	authid = gsasl_property_fast(gs, GSASL_AUTHID);
	u = find_user(a, authid);
	if (authid != NULL && x->user == NULL)
		x->user = xstrdup(authid);
	switch (prop) {
	case GSASL_VALIDATE_SIMPLE:
		authzid = gsasl_property_fast(gs, GSASL_AUTHZID);
		pw = gsasl_property_fast(gs, GSASL_PASSWORD);
		if (authid == NULL || pw == NULL)
			x->why = WHY_MALFORMED;
		else if (authzid != NULL && *authzid != '\0' &&
		    strcmp(authzid, authid) != 0)
			x->why = WHY_AUTHZID;
		else
			x->why = check_password(a, authid, pw);
		return x->why == NULL ? GSASL_OK : GSASL_AUTHENTICATION_ERROR;
	case GSASL_PASSWORD:
		/* Only CRAM-MD5 gets here: SCRAM has its keys below. */
		if (strcmp(x->mech, "CRAM-MD5") != 0)
			return GSASL_NO_CALLBACK;
		if (u == NULL || u->cram == NULL) {
			x->why = u == NULL ? WHY_UNKNOWN : WHY_NO_SECRET;
			return GSASL_NO_CALLBACK;
		}
		return gsasl_property_set(gs, GSASL_PASSWORD, u->cram);
	case GSASL_SCRAM_ITER:
	case GSASL_SCRAM_SALT:
	case GSASL_SCRAM_STOREDKEY:
	case GSASL_SCRAM_SERVERKEY:
		if (u == NULL || u->scram_iter == NULL) {
			x->why = u == NULL ? WHY_UNKNOWN : WHY_NO_SECRET;
			return GSASL_NO_CALLBACK;
		}
		return gsasl_property_set(gs, prop, prop == GSASL_SCRAM_ITER ?
		    u->scram_iter : prop == GSASL_SCRAM_SALT ? u->scram_salt :
		    prop == GSASL_SCRAM_STOREDKEY ? u->scram_stored :
		    u->scram_server);
	default:
		return GSASL_NO_CALLBACK;
	}
}

/* Which mechanisms to offer for these users; logs what it held back. */
static void
auth_choose(struct auth *a)
{
	const char	**names;
	unsigned	 *secrets, supported = 0;
	size_t		  i;

	names = xcalloc(a->nusers + 1, sizeof(*names));
	secrets = xcalloc(a->nusers + 1, sizeof(*secrets));
	for (i = 0; i < a->nusers; i++) {
		names[i] = a->users[i].name;
		secrets[i] = (a->users[i].crypt != NULL ? AUTH_SECRET_CRYPT :
		    0) | (a->users[i].scram_iter != NULL ? AUTH_SECRET_SCRAM :
		    0) | (a->users[i].cram != NULL ? AUTH_SECRET_CRAM : 0);
	}
	for (i = 0; i < NELEM(mech_names); i++)
		if (mech_names[i].mech == AUTH_MECH_LOGIN ||
		    gsasl_server_support_p(a->gsasl, mech_names[i].name))
			supported |= mech_names[i].mech;
	auth_offer(names, secrets, a->nusers, supported, &a->offer);
	for (i = 0; i < a->offer.nwhy; i++)
		log_msg(a->offer.for_some ? LOG_LVL_WARN : LOG_LVL_INFO,
		    "auth: %s", a->offer.why[i]);
	free(names);
	free(secrets);
}

struct auth *
auth_new(const struct config *cfg, char *err, size_t errlen)
{
	struct auth	*a;

	a = xcalloc(1, sizeof(*a));
	if (load_users(cfg->users_file, NULL, &a->users, &a->nusers) > 0) {
		snprintf(err, errlen, "users_file %s: not usable (relayd -n "
		    "says why)", cfg->users_file);
		auth_free(a);
		return NULL;
	}
	if (gsasl_init(&a->gsasl) != GSASL_OK) {
		snprintf(err, errlen, "libgsasl: cannot initialise");
		auth_free(a);
		return NULL;
	}
	gsasl_callback_set(a->gsasl, gsasl_cb);
	RAND_bytes(a->key, sizeof(a->key));
	{
		struct crypt_data	*cd = xcalloc(1, sizeof(*cd));
		char			 setting[CRYPT_GENSALT_OUTPUT_SIZE];

		if (crypt_gensalt_rn("$y$", 0, NULL, 0, setting,
		    sizeof(setting)) != NULL &&
		    crypt_r("relayd", setting, cd) != NULL)
			strlcpy_r(a->dummy, cd->output, sizeof(a->dummy));
		free(cd);
	}
	a->max_failures = (unsigned)cfg->auth_max_failures;
	a->lockout_ms = cfg->auth_lockout_ms;
	auth_choose(a);
	return a;
}

void
auth_free(struct auth *a)
{
	struct failures	*f, *next;
	size_t		 i;

	if (a == NULL)
		return;
	for (i = 0; i < a->nusers; i++)
		user_clear(&a->users[i]);
	free(a->users);
	for (i = 0; i < AUTH_ADDR_BUCKETS; i++)
		for (f = a->fail[i]; f != NULL; f = next) {
			next = f->next;
			free(f->addr);
			free(f);
		}
	if (a->gsasl != NULL)
		gsasl_done(a->gsasl);
	explicit_bzero(a->key, sizeof(a->key));
	free(a);
}

static void
auth_keep_failures_unl(struct auth *a, struct auth *from)
{
	memcpy(a->fail, from->fail, sizeof(a->fail));
	memset(from->fail, 0, sizeof(from->fail));
	a->nfailures = from->nfailures;
	a->nlockouts = from->nlockouts;
}

static void
auth_counts_unl(const struct auth *a, uint64_t *failures, uint64_t *lockouts)
{
	*failures = a->nfailures;
	*lockouts = a->nlockouts;
}

const char *
auth_mechanisms(const struct auth *a)
{
	return a->offer.offered;
}

static struct failures **
failures_slot(struct auth *a, const char *addr)
{
	struct failures	**pp;
	unsigned	  h = 5381;
	const char	 *c;

	for (c = addr; *c != '\0'; c++)
		h = h * 33 + (unsigned char)*c;
	for (pp = &a->fail[h % AUTH_ADDR_BUCKETS]; *pp != NULL;
	    pp = &(*pp)->next)
		if (strcmp((*pp)->addr, addr) == 0)
			break;
	return pp;
}

static void
failures_unlink(struct failures **pp)
{
	struct failures	*f = *pp;

	*pp = f->next;
	free(f->addr);
	free(f);
}

/* A monotonic time ahead as wall-clock ms. */
static uint64_t
wall_ms_of(uint64_t mono)
{
	uint64_t	 now = now_ms();

	return wall_us() / 1000 + (mono > now ? mono - now : 0);
}

static int
auth_locked_unl(struct auth *a, const char *addr, uint64_t *until)
{
	struct failures	**pp = failures_slot(a, addr), *f = *pp;

	*until = 0;
	if (f == NULL)
		return 0;
	if (f->locked_until != 0 && now_ms() >= f->locked_until) {
		failures_unlink(pp);	/* served its time: a fresh start */
		return 0;
	}
	if (f->locked_until != 0)
		*until = wall_ms_of(f->locked_until);
	return f->locked_until != 0;
}

static uint64_t
auth_failed_unl(struct auth *a, const char *addr, int count,
    struct auth_lockout *lk)
{
	struct failures	**pp = failures_slot(a, addr), *f = *pp;
	uint64_t	  now = now_ms(), delay;
	unsigned	  k;

	memset(lk, 0, sizeof(*lk));
	a->nfailures++;
	if (f != NULL && now - f->first >= a->lockout_ms) {
		f->n = 0;		/* an old window */
		f->first = now;
	}
	if (f == NULL) {
		f = xcalloc(1, sizeof(*f));
		f->addr = xstrdup(addr);
		f->first = now;
		*pp = f;
	}
	if (count)
		f->n++;
	if (count && f->n >= a->max_failures) {
		f->locked_until = now + a->lockout_ms;
		a->nlockouts++;
		lk->addr = f->addr;
		lk->until = wall_ms_of(f->locked_until);
		lk->failures = f->n;
	}
	k = f->n > 0 ? f->n - 1 : 0;
	delay = 1000ULL << (k < 4 ? k : 3);
	return delay < AUTH_DELAY_MAX_MS ? delay : AUTH_DELAY_MAX_MS;
}

static void
auth_lockouts_unl(struct auth *a, void (*cb)(void *, const struct auth_lockout *),
    void *arg)
{
	struct auth_lockout	  lk;
	struct failures		**pp;
	uint64_t		  now = now_ms();
	size_t			  i;

	for (i = 0; i < AUTH_ADDR_BUCKETS; i++)
		for (pp = &a->fail[i]; *pp != NULL; ) {
			if ((*pp)->locked_until == 0) {
				pp = &(*pp)->next;
				continue;
			}
			if (now >= (*pp)->locked_until) {
				failures_unlink(pp);
				continue;
			}
			lk.addr = (*pp)->addr;
			lk.until = wall_ms_of((*pp)->locked_until);
			lk.failures = (*pp)->n;
			cb(arg, &lk);
			pp = &(*pp)->next;
		}
}

static int
auth_unlock_unl(struct auth *a, const char *addr)
{
	uint64_t	 until;

	if (!auth_locked_unl(a, addr, &until))
		return -1;
	failures_unlink(failures_slot(a, addr));
	return 0;
}

static void
auth_succeeded_unl(struct auth *a, const char *addr)
{
	struct failures	**pp = failures_slot(a, addr), *f = *pp;

	if (f != NULL && f->locked_until == 0)
		failures_unlink(pp);
}

/* May a client ask for mech (one of the words of accepted)? */
static int
accepted(const struct auth *a, const char *mech)
{
	const char	*list = a->offer.accepted, *p = list;
	size_t		 n = strlen(mech);

	while ((p = strstr(p, mech)) != NULL) {
		if ((p == list || p[-1] == ' ') &&
		    (p[n] == '\0' || p[n] == ' '))
			return 1;
		p += n;
	}
	return 0;
}

struct auth_xchg *
auth_start(struct auth *a, const char *mech)
{
	struct auth_xchg	*x;
	char			 up[32];
	size_t			 i;

	for (i = 0; mech[i] != '\0' && i < sizeof(up) - 1; i++)
		up[i] = (char)toupper((unsigned char)mech[i]);
	up[i] = '\0';
	if (mech[i] != '\0' || !accepted(a, up))
		return NULL;
	x = xcalloc(1, sizeof(*x));
	x->auth = a;
	strlcpy_r(x->mech, up, sizeof(x->mech));
	if (strcmp(up, "LOGIN") == 0)
		return x;
	if (gsasl_server_start(a->gsasl, up, &x->gs) != GSASL_OK) {
		free(x);
		return NULL;
	}
	gsasl_session_hook_set(x->gs, x);
	return x;
}

/* Decoded, NUL-terminated (libgsasl's output is not); free with free(). */
static char *
b64_decode(const char *in, size_t *len)
{
	char	*raw = NULL, *out;

	if (gsasl_base64_from(in, strlen(in), &raw, len) != GSASL_OK)
		return NULL;
	out = xmalloc(*len + 1);
	memcpy(out, raw, *len);
	out[*len] = '\0';
	explicit_bzero(raw, *len);
	gsasl_free(raw);
	return out;
}

enum auth_result
auth_step(struct auth_xchg *x, const char *in, char **out)
{
	enum auth_result	 r;
	char			*dec, *o = NULL;
	size_t			 len;
	int			 rc;

	*out = NULL;
	if (x->gs == NULL) {		/* LOGIN */
		if (in == NULL) {
			*out = xstrdup(x->step == 0 ? AUTH_PROMPT_USER :
			    AUTH_PROMPT_PASS);
			return AUTH_CONTINUE;
		}
		x->why = WHY_MALFORMED;
		if ((dec = b64_decode(in, &len)) == NULL)
			return AUTH_SYNTAX;
		if (memchr(dec, '\0', len) != NULL) {
			free(dec);
			return AUTH_SYNTAX;
		}
		x->why = NULL;
		if (x->step++ == 0) {
			free(x->user);
			x->user = xstrdup(dec);
			free(dec);
			*out = xstrdup(AUTH_PROMPT_PASS);
			return AUTH_CONTINUE;
		}
		x->why = check_password(x->auth, x->user, dec);
		r = x->why == NULL ? AUTH_OK : AUTH_FAIL;
		explicit_bzero(dec, len);
		free(dec);
		return r;
	}
	if (x->verified) {	/* the client's empty line after our v= */
		if (in != NULL && *in == '\0')
			return AUTH_OK;
		x->why = WHY_MALFORMED;
		return AUTH_SYNTAX;
	}
	rc = gsasl_step64(x->gs, in != NULL ? in : "", &o);
	if (rc == GSASL_OK && o != NULL && *o != '\0') {
		/*
		 * SCRAM's server-final (v=...) proves the server knew the
		 * keys: RFC 4954 sends such data in a 334, then the 235.
		 */
		free(x->user);
		x->user = xstrdup(gsasl_property_fast(x->gs, GSASL_AUTHID));
		x->verified = 1;
		*out = xstrdup(o);
		gsasl_free(o);
		return AUTH_CONTINUE;
	}
	if (rc == GSASL_NEEDS_MORE) {
		*out = xstrdup(o != NULL ? o : "");
		gsasl_free(o);
		return AUTH_CONTINUE;
	}
	gsasl_free(o);
	log_debug("auth: %s step: %s", x->mech, gsasl_strerror(rc));
	if (rc == GSASL_OK) {
		free(x->user);
		x->user = gsasl_property_fast(x->gs, GSASL_AUTHID) != NULL ?
		    xstrdup(gsasl_property_fast(x->gs, GSASL_AUTHID)) : NULL;
		if (x->user == NULL)
			x->why = WHY_MALFORMED;
		return x->user != NULL ? AUTH_OK : AUTH_FAIL;
	}
	if (rc == GSASL_BASE64_ERROR || rc == GSASL_MECHANISM_PARSE_ERROR) {
		x->why = WHY_MALFORMED;
		return AUTH_SYNTAX;
	}
	if (x->why == NULL)
		x->why = rc == GSASL_AUTHENTICATION_ERROR ? WHY_PASSWORD :
		    WHY_MALFORMED;
	return AUTH_FAIL;
}

const char *
auth_user(const struct auth_xchg *x)
{
	return x->user;
}

const char *
auth_mech(const struct auth_xchg *x)
{
	return x->mech;
}

const char *
auth_why(const struct auth_xchg *x)
{
	return x->why != NULL ? x->why : WHY_MALFORMED;
}

void
auth_end(struct auth_xchg *x)
{
	if (x == NULL)
		return;
	if (x->gs != NULL)
		gsasl_finish(x->gs);
	free(x->user);
	free(x);
}

char *
auth_make_entry(const char *user, const char *pw, int cram, char *err,
    size_t errlen)
{
	char		 setting[CRYPT_GENSALT_OUTPUT_SIZE], salt[16];
	char		 salted[32], ckey[32], skey[32], stkey[32];
	char		*salt64 = NULL, *skhex = NULL, *sthex = NULL, *line;
	struct crypt_data *cd;
	size_t		 n;

	if (*user == '\0' || strpbrk(user, " \t\r\n=#") != NULL) {
		snprintf(err, errlen, "user name must be non-empty, without "
		    "blanks, '=' or '#'");
		return NULL;
	}
	if (cram && strpbrk(pw, " \t") != NULL) {
		snprintf(err, errlen, "a CRAM-MD5 password cannot contain "
		    "blanks (it is stored as it is in the users file)");
		return NULL;
	}
	if (crypt_gensalt_rn("$y$", 0, NULL, 0, setting, sizeof(setting)) ==
	    NULL) {
		snprintf(err, errlen, "crypt_gensalt: %s", strerror(errno));
		return NULL;
	}
	cd = xcalloc(1, sizeof(*cd));
	if (crypt_r(pw, setting, cd) == NULL || cd->output[0] != '$') {
		snprintf(err, errlen, "crypt: %s", strerror(errno));
		free(cd);
		return NULL;
	}
	RAND_bytes((unsigned char *)salt, sizeof(salt));
	if (gsasl_scram_secrets_from_password(GSASL_HASH_SHA256, pw,
	    AUTH_SCRAM_ITER, salt, sizeof(salt), salted, ckey, skey, stkey) !=
	    GSASL_OK || gsasl_base64_to(salt, sizeof(salt), &salt64, &n) !=
	    GSASL_OK || gsasl_hex_to(skey, sizeof(skey), &skhex, &n) !=
	    GSASL_OK || gsasl_hex_to(stkey, sizeof(stkey), &sthex, &n) !=
	    GSASL_OK) {
		snprintf(err, errlen, "SCRAM keys: libgsasl failed");
		free(cd);
		return NULL;
	}
	xasprintf(&line, "%s crypt=%s scram-sha-256=%d:%s:%s:%s%s%s", user,
	    cd->output, AUTH_SCRAM_ITER, salt64, sthex, skhex,
	    cram ? " cram-md5=" : "", cram ? pw : "");
	explicit_bzero(salted, sizeof(salted));
	explicit_bzero(ckey, sizeof(ckey));
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	gsasl_free(salt64);
	gsasl_free(skhex);
	gsasl_free(sthex);
	return line;
}

/*
 * The failure table is shared by the SMTP loops (smtp_loops.c): these
 * take fail_lock around the unlocked versions above.
 */
static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;

void
auth_keep_failures(struct auth *a, struct auth *from)
{
	pthread_mutex_lock(&fail_lock);
	auth_keep_failures_unl(a, from);
	pthread_mutex_unlock(&fail_lock);
}

void
auth_counts(const struct auth *a, uint64_t *failures, uint64_t *lockouts)
{
	pthread_mutex_lock(&fail_lock);
	auth_counts_unl(a, failures, lockouts);
	pthread_mutex_unlock(&fail_lock);
}

int
auth_locked(struct auth *a, const char *addr, uint64_t *until)
{
	int	 r;

	pthread_mutex_lock(&fail_lock);
	r = auth_locked_unl(a, addr, until);
	pthread_mutex_unlock(&fail_lock);
	return r;
}

uint64_t
auth_failed(struct auth *a, const char *addr, int count,
    struct auth_lockout *lk)
{
	uint64_t	 r;

	pthread_mutex_lock(&fail_lock);
	r = auth_failed_unl(a, addr, count, lk);
	pthread_mutex_unlock(&fail_lock);
	return r;
}

void
auth_lockouts(struct auth *a, void (*cb)(void *, const struct auth_lockout *),
    void *arg)
{
	pthread_mutex_lock(&fail_lock);
	auth_lockouts_unl(a, cb, arg);
	pthread_mutex_unlock(&fail_lock);
}

void
auth_succeeded(struct auth *a, const char *addr)
{
	pthread_mutex_lock(&fail_lock);
	auth_succeeded_unl(a, addr);
	pthread_mutex_unlock(&fail_lock);
}

int
auth_unlock(struct auth *a, const char *addr)
{
	int	 r;

	pthread_mutex_lock(&fail_lock);
	r = auth_unlock_unl(a, addr);
	pthread_mutex_unlock(&fail_lock);
	return r;
}

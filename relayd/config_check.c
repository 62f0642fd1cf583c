/*
 * config_check.c - relayd.conf checked once the whole file is read: the
 * rules that span keys, and what needs the file system or another module
 * (certificates and keys loaded as TLS and the token requests will load
 * them, secret files' modes, the users file, [status] users and groups).
 * config_load() and its siblings read with config.c and check here, so a
 * file relayd accepts is one it can run with.
 *
 * The checks run in one fixed order, also those that need no other module:
 * `relayd -n` prints its errors in that order, later checks rely on
 * earlier ones (check_tls() fills each listener's certificate, which
 * check_listen_auth() looks at) and the TLS contexts are built only when no
 * check before them failed.
 */
#include "autoconf.h"

#include <sys/stat.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "config_check.h"
#include "http.h"
#include "jwt.h"
#include "status.h"
#include "tls.h"
#include "util.h"

/*
 * Which files the checks read (config_reads): the credential (the client
 * secret, the private key) and the SMTP side's (TLS keys, users_file).
 * A file not read is only stat()ed: that it is there, regular and
 * private. relayd's parent and children read only what their job needs
 * (their Landlock rules keep the rest out); the parent's full check runs
 * in a throwaway child of its own.
 */
static unsigned	reads = CONFIG_READ_ALL;

void
config_reads(unsigned what)
{
	reads = what;
}

/*
 * A secret file must be a regular file that neither group nor others can
 * read: a leaked client secret lets anyone send mail as any mailbox. With
 * read, it must be readable here too.
 */
static void
check_secret_file(struct config_reader *p, int line, const char *what,
    const char *path, int read)
{
	struct stat	 st;
	char		 err[1024];

	if (p->client)
		return;
	if (stat(path, &st) == -1 || (read && access(path, R_OK) == -1)) {
		config_error(p, line, "%s \"%s\": %s", what, path,
		    strerror(errno));
		return;
	}
	if (!S_ISREG(st.st_mode))
		config_error(p, line, "%s \"%s\" is not a regular file", what,
		    path);
	else if (check_private_mode(what, path, (unsigned)st.st_mode, err,
	    sizeof(err)) == -1)
		config_error(p, line, "%s", err);
}

/* The client secret's file: private, and not empty (white space aside). */
static void
check_secret(struct config_reader *p, int line, const char *what,
    const char *path)
{
	char	 buf[512];
	ssize_t	 n, i;
	int	 fd, errors = p->errors;

	check_secret_file(p, line, what, path, reads & CONFIG_READ_CREDENTIALS);
	if (p->errors > errors || !(reads & CONFIG_READ_CREDENTIALS) ||
	    (fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return;
	n = read(fd, buf, sizeof(buf));
	close(fd);
	for (i = 0; i < n; i++)
		if (!isspace((unsigned char)buf[i]))
			break;
	explicit_bzero(buf, sizeof(buf));
	if (n >= 0 && i == n)
		config_error(p, line, "%s \"%s\" is empty; put the client "
		    "secret's Value (from Entra: Certificates & secrets) in it",
		    what, path);
}

/* Is a URL's host[:port] (up to / ? #) this machine, exactly? */
static int
loopback_host(const char *a, size_t n)
{
	struct in_addr	 in;
	char		 host[64];

	if (n >= 5 && strncmp(a, "[::1]", 5) == 0)
		return n == 5 || a[5] == ':';
	n = strcspn(a, ":/?#");
	if (n == 0 || n >= sizeof(host))
		return 0;
	memcpy(host, a, n);
	host[n] = '\0';
	if (strcasecmp(host, "localhost") == 0)
		return 1;
	return inet_pton(AF_INET, host, &in) == 1 &&
	    (ntohl(in.s_addr) >> 24) == 127;
}

/*
 * Token and Graph URLs: https, or plain http to this machine only (tests,
 * demos): the client secret and the tokens travel in them. No user@ part:
 * "http://127.0.0.1@host/" goes to host.
 */
static void
check_url(struct config_reader *p, const char *name, char *url)
{
	const char	*host;
	size_t		 n;
	int		 line = config_key_line(p, "graph", name);

	if (strncasecmp(url, "https://", 8) == 0)
		host = url + 8;
	else if (strncasecmp(url, "http://", 7) == 0)
		host = url + 7;
	else {
		config_error(p, line, "%s \"%s\" must start with https://",
		    name, url);
		return;
	}
	n = strcspn(host, "/?#");
	if (n == 0) {
		config_error(p, line, "%s \"%s\" has no host", name, url);
		return;
	}
	if (memchr(host, '@', n) != NULL) {
		config_error(p, line, "%s \"%s\": no user name or password in "
		    "the URL", name, url);
		return;
	}
	if (host == url + 7 && !loopback_host(host, n))
		config_error(p, line, "%s \"%s\": plain http is allowed only "
		    "to this host; use https://", name, url);
	n = strlen(url);
	while (n > 0 && url[n - 1] == '/')
		url[--n] = '\0';
	/* A common paste: relayd adds the version itself. */
	if (strcmp(name, "graph_url") == 0 && n > 5 &&
	    strcasecmp(url + n - 5, "/v1.0") == 0) {
		url[n - 5] = '\0';
		config_warning(p, line, "graph_url ends in /v1.0, which "
		    "relayd adds itself; taking graph_url = %s (write it so)",
		    url);
	}
}

/*
 * [graph] proxy: http:// or https://, and a port (curl would take 1080,
 * seldom what is meant). The password in it is never shown.
 */
static void
check_proxy(struct config_reader *p)
{
	const char	*u = p->cfg->proxy, *a, *at, *port;
	char		*shown;
	size_t		 n;
	int		 line = config_key_line(p, "graph", "proxy");

	if (u == NULL)
		return;
	shown = http_redact(u);
	if (strncasecmp(u, "http://", 7) == 0)
		a = u + 7;
	else if (strncasecmp(u, "https://", 8) == 0)
		a = u + 8;
	else {
		config_error(p, line, "proxy \"%s\" must start with http:// or "
		    "https://", shown);
		free(shown);
		return;
	}
	n = strcspn(a, "/?#");
	if ((at = memrchr(a, '@', n)) != NULL) {
		n -= (size_t)(at + 1 - a);
		a = at + 1;
	}
	port = memrchr(a, ':', n);
	if (port == NULL || memchr(port, ']', n - (size_t)(port - a)) ||
	    port == a || port + 1 == a + n ||
	    strspn(port + 1, "0123456789") != (size_t)(a + n - port - 1))
		config_error(p, line, "proxy \"%s\" must be http://HOST:PORT "
		    "(the port too)", shown);
	free(shown);
}

static void	check_readable(struct config_reader *, int, const char *,
		    const char *);

#define EXPIRY_WARN_DAYS	30

/*
 * Whether a certificate expires soon (1) or has expired (2), in words in
 * buf; 0 if neither (or it can't be read: that is reported elsewhere).
 */
static int	date_note(const char *, const char *, time_t, const char *,
		    char *, size_t);

static int
expiry_note(const char *what, const char *path, const char *todo,
    char *buf, size_t len)
{
	time_t	 when;

	if (tls_cert_expiry(path, &when) == -1)
		return 0;
	return date_note(what, path, when, todo, buf, len);
}

static const char secret_todo[] = "make a new secret in Entra "
    "(Certificates & secrets), write its Value to client_secret_file, set "
    "client_secret_expires and run systemctl reload relayd";

static const char tls_todo[] = "renew it and run systemctl reload relayd";
static const char cert_todo[] = "upload a new certificate to the app "
    "registration, point certificate_file at it and run systemctl reload "
    "relayd";

/* An expired certificate is an error; one about to expire a warning. */
static void
check_expiry(struct config_reader *p, int line, const char *what,
    const char *path, const char *todo)
{
	char	 buf[1024];

	switch (expiry_note(what, path, todo, buf, sizeof(buf))) {
	case 2:
		config_error(p, line, "%s", buf);
		break;
	case 1:
		config_warning(p, line, "%s", buf);
		break;
	}
}

void
config_warn_expiry(const struct config *cfg, FILE *fp)
{
	char	 buf[1024];
	size_t	 i;

	if (cfg->tls_cert != NULL &&
	    expiry_note("tls_cert", cfg->tls_cert, tls_todo, buf,
	    sizeof(buf)) != 0)
		fprintf(fp, "%s\n", buf);
	for (i = 0; i < cfg->nlisten; i++)
		if (cfg->listen[i].cert != NULL && (cfg->tls_cert == NULL ||
		    strcmp(cfg->listen[i].cert, cfg->tls_cert) != 0) &&
		    expiry_note("cert=", cfg->listen[i].cert, tls_todo, buf,
		    sizeof(buf)) != 0)
			fprintf(fp, "%s\n", buf);
	if (cfg->certificate_file != NULL &&
	    expiry_note("certificate_file", cfg->certificate_file, cert_todo,
	    buf, sizeof(buf)) != 0)
		fprintf(fp, "%s\n", buf);
	if (cfg->client_secret_expires != 0 &&
	    date_note("client_secret_expires: the client secret", NULL,
	    cfg->client_secret_expires, secret_todo, buf, sizeof(buf)) != 0)
		fprintf(fp, "%s\n", buf);
}

size_t
config_credentials(const struct config *cfg, struct credential *out)
{
	size_t	 n = 0, i;
	time_t	 t, tls = 0;

	if (cfg->client_secret_expires != 0 && cfg->certificate_file == NULL) {
		out[n].name = "client_secret";
		out[n++].expires = cfg->client_secret_expires;
	}
	if (cfg->certificate_file != NULL &&
	    tls_cert_expiry(cfg->certificate_file, &t) == 0) {
		out[n].name = "certificate";
		out[n++].expires = t;
	}
	/* The listener certificate that expires first. */
	for (i = 0; i < cfg->nlisten; i++)
		if (cfg->listen[i].cert != NULL &&
		    tls_cert_expiry(cfg->listen[i].cert, &t) == 0 &&
		    (tls == 0 || t < tls))
			tls = t;
	if (tls == 0 && cfg->tls_cert != NULL &&
	    tls_cert_expiry(cfg->tls_cert, &t) == 0)
		tls = t;
	if (tls != 0) {
		out[n].name = "tls_cert";
		out[n++].expires = tls;
	}
	return n;
}

/*
 * A certificate and its key (tls_cert/tls_key, or a listener's cert=/key=):
 * readable, the key private, both PEM, one pair, not expired. Each
 * problem names the line of the key responsible.
 */
static void
check_pair(struct config_reader *p, const char *cname, int cline,
    const char *cert, const char *kname, int kline, const char *key)
{
	char	 err[1024];
	int	 errors = p->errors;

	if (p->client)
		return;		/* relayd's files, not the client's */
	check_readable(p, cline, cname, cert);
	check_secret_file(p, kline, kname, key, reads & CONFIG_READ_SMTP);
	if (p->errors > errors)
		return;
	if (!(reads & CONFIG_READ_SMTP)) {
		check_expiry(p, cline, cname, cert, tls_todo);
		return;		/* the key is the SMTP process's to load */
	}
	switch (tls_check_pair(cert, key, err, sizeof(err))) {
	case TLS_PAIR_CERT:
		config_error(p, cline, "%s %s", cname, err);
		return;
	case TLS_PAIR_KEY:
		config_error(p, kline, "%s %s", kname, err);
		return;
	case TLS_PAIR_MISMATCH:
		config_error(p, kline, "%s: %s; set the key made with this "
		    "certificate", kname, err);
		return;
	}
	check_expiry(p, cline, cname, cert, tls_todo);
}

/*
 * Certificate credentials: certificate_file and its key, from
 * private_key_file or the systemd credential private_key. They are loaded
 * as the token requests will use them: a key of another certificate, or
 * one that is not RSA, fails here rather than at the first message.
 */
static void
check_certificate(struct config_reader *p, const char *creds)
{
	struct config	*cfg = p->cfg;
	struct jwt_key	*k;
	char		 err[1024];
	int		 line = config_key_line(p, "graph", "certificate_file");
	int		 errors = p->errors;

	if (cfg->client_secret_file != NULL)
		config_error(p,
		    config_key_line(p, "graph", "client_secret_file"),
		    "client_secret_file and certificate_file are two ways to "
		    "sign in; set only one");
	if (cfg->certificate_file == NULL) {
		config_error(p, config_key_line(p, "graph", "private_key_file"),
		    "private_key_file needs certificate_file (the certificate "
		    "uploaded to the app registration)");
		return;
	}
	check_readable(p, line, "certificate_file", cfg->certificate_file);
	if (cfg->private_key_file != NULL)
		check_secret_file(p,
		    config_key_line(p, "graph", "private_key_file"),
		    "private_key_file", cfg->private_key_file,
		    reads & CONFIG_READ_CREDENTIALS);
	else if (creds == NULL || *creds == '\0') {
		config_error(p, line, "certificate_file needs private_key_file "
		    "(or the systemd credential LoadCredential=private_key)");
		return;
	} else {
		xasprintf(&cfg->private_key_file, "%s/private_key", creds);
		check_secret_file(p, 0, "credential", cfg->private_key_file,
		    reads & CONFIG_READ_CREDENTIALS);
	}
	if (p->errors > errors)
		return;
	if ((reads & CONFIG_READ_CREDENTIALS) &&
	    (k = jwt_key_load(cfg->certificate_file,
	    cfg->private_key_file, cfg->assertion_alg, err, sizeof(err))) ==
	    NULL) {
		config_error(p, line, "%s", err);
		return;
	}
	if (reads & CONFIG_READ_CREDENTIALS)
		jwt_key_free(k);
	check_expiry(p, line, "certificate_file", cfg->certificate_file,
	    cert_todo);
}

/* Whether a date lies within 30 days (1) or past (2), in words in buf. */
static int
date_note(const char *what, const char *name, time_t when, const char *todo,
    char *buf, size_t len)
{
	time_t		 now = time(NULL);
	struct tm	 tm;
	char		 date[32];

	gmtime_r(&when, &tm);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", &tm);
	if (when <= now) {
		snprintf(buf, len, "%s%s%s%s expired on %s; %s", what,
		    name ? " \"" : "", name ? name : "", name ? "\"" : "",
		    date, todo);
		return 2;
	}
	if (when - now < EXPIRY_WARN_DAYS * 86400) {
		snprintf(buf, len, "%s%s%s%s expires on %s (in %lld days); %s",
		    what, name ? " \"" : "", name ? name : "", name ? "\"" : "",
		    date, (long long)((when - now) / 86400), todo);
		return 1;
	}
	return 0;
}

/*
 * [graph] client_secret_expires: a date; near or past it, a warning (the
 * secret may have been renewed without the date).
 */
static void
check_secret_expiry(struct config_reader *p)
{
	struct config	*cfg = p->cfg;
	struct tm	 tm;
	const char	*e;
	char		 buf[1024];
	int		 line = config_key_line(p, "graph",
	    "client_secret_expires");

	if (cfg->client_secret_expires_text == NULL)
		return;
	memset(&tm, 0, sizeof(tm));
	e = strptime(cfg->client_secret_expires_text, "%Y-%m-%d", &tm);
	if (e == NULL || *e != '\0') {
		config_error(p, line, "client_secret_expires \"%s\" is not a "
		    "date (YYYY-MM-DD, as Entra shows it)",
		    cfg->client_secret_expires_text);
		return;
	}
	cfg->client_secret_expires = timegm(&tm);
	if (date_note("client_secret_expires: the client secret", NULL,
	    cfg->client_secret_expires, secret_todo, buf, sizeof(buf)) != 0)
		config_warning(p, line, "%s", buf);
}

/* user@domain, as a Graph mailbox is named: no blanks, brackets, quotes. */
static int
mailbox_address(const char *a)
{
	const char	*at = strrchr(a, '@');

	return at != NULL && at > a && at[1] != '\0' &&
	    strpbrk(a, " \t/?#<>\"") == NULL;
}

/*
 * [graph]: delivery is on once any credential key is given, and then all of
 * them must be. Without them relayd only queues (a staged roll-out).
 */
static void
check_graph(struct config_reader *p)
{
	struct config	*cfg = p->cfg;
	const char	*creds;
	char		*path;

	check_url(p, "login_url", cfg->login_url);
	check_url(p, "graph_url", cfg->graph_url);
	check_proxy(p);
	if (strcmp(cfg->mailbox, "envelope") != 0 &&
	    strcmp(cfg->mailbox, "from") != 0 && !mailbox_address(cfg->mailbox))
		config_error(p, config_key_line(p, "graph", "mailbox"),
		    "mailbox \"%s\" must be envelope, from or a mailbox "
		    "address", cfg->mailbox);
	check_secret_expiry(p);
	creds = getenv("CREDENTIALS_DIRECTORY");
	if (cfg->tenant == NULL && cfg->client_id == NULL &&
	    cfg->client_secret_file == NULL && cfg->certificate_file == NULL &&
	    cfg->private_key_file == NULL)
		return;
	cfg->graph_enabled = 1;
	if (cfg->tenant == NULL)
		config_error(p, 0, "[graph] tenant is not set (the Directory "
		    "(tenant) ID of the app registration)");
	if (cfg->client_id == NULL)
		config_error(p, 0, "[graph] client_id is not set (the "
		    "Application (client) ID of the app registration)");
	if (p->client)
		return;		/* the credentials are relayd's to read */
	if (cfg->certificate_file != NULL || cfg->private_key_file != NULL) {
		check_certificate(p, creds);
		return;
	}
	if (cfg->client_secret_file != NULL) {
		check_secret(p,
		    config_key_line(p, "graph", "client_secret_file"),
		    "client_secret_file", cfg->client_secret_file);
		return;
	}
	if (creds == NULL || *creds == '\0') {
		config_error(p, 0, "[graph] client_secret_file is not set and "
		    "there is no systemd credential "
		    "(LoadCredential=client_secret); or sign in with "
		    "certificate_file and private_key_file");
		return;
	}
	xasprintf(&path, "%s/client_secret", creds);
	check_secret(p, 0, "credential", path);
	cfg->client_secret_file = path;
}

/* A PEM file relayd must be able to read. */
static void
check_readable(struct config_reader *p, int line, const char *what,
    const char *path)
{
	if (!p->client && access(path, R_OK) == -1)
		config_error(p, line, "%s \"%s\": %s", what, path,
		    strerror(errno));
}

/*
 * Each listener's certificate and key, from its listen line or [smtp]
 * tls_cert/tls_key: a tls listener must have them; a plain one offers
 * STARTTLS when it has them.
 */
static void
check_tls(struct config_reader *p)
{
	struct config		*cfg = p->cfg;
	struct listen_cfg	*lc;
	size_t			 i;

	if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL))
		config_error(p, config_key_line(p, "smtp", cfg->tls_cert ?
		    "tls_cert" : "tls_key"), "tls_cert and tls_key go "
		    "together");
	else if (cfg->tls_cert != NULL)
		check_pair(p, "tls_cert",
		    config_key_line(p, "smtp", "tls_cert"), cfg->tls_cert,
		    "tls_key", config_key_line(p, "smtp", "tls_key"),
		    cfg->tls_key);
	for (i = 0; i < cfg->nlisten; i++) {
		lc = &cfg->listen[i];
		if ((lc->cert == NULL) != (lc->key == NULL)) {
			config_error(p, lc->line, "listen %s: cert= and key= "
			    "go together", lc->text);
			continue;
		}
		if (lc->cert != NULL) {
			check_pair(p, "cert=", lc->line, lc->cert, "key=",
			    lc->line, lc->key);
		} else if (cfg->tls_cert != NULL && cfg->tls_key != NULL) {
			lc->cert = xstrdup(cfg->tls_cert);
			lc->key = xstrdup(cfg->tls_key);
		}
		if (lc->tls_min == -1)
			lc->tls_min = cfg->tls_min;
		/* Load them as the daemon will: a wrong pair fails here. */
		if (lc->cert != NULL && p->errors == 0 && !p->client &&
		    (reads & CONFIG_READ_SMTP)) {
			char	 err[512];
			SSL_CTX	*ctx = tls_ctx_new(lc, err, sizeof(err));

			if (ctx == NULL)
				config_error(p, lc->line, "%s", err);
			SSL_CTX_free(ctx);
		}
		if (lc->tls && lc->cert == NULL)
			config_error(p, lc->line, "listen %s tls: no "
			    "certificate (set tls_cert and tls_key in [smtp], "
			    "or cert= and key= on the listen line)", lc->text);
	}
}

/*
 * Never an open relay: allow_networks may not cover every address unless
 * relaying needs AUTH anyway, everywhere or on every listener.
 */
static void
check_open_relay(struct config_reader *p)
{
	struct config	*cfg = p->cfg;
	size_t		 i;

	if (cfg->require_auth)
		return;
	for (i = 0; i < cfg->nlisten && cfg->listen[i].require_auth; i++)
		;
	if (cfg->nlisten > 0 && i == cfg->nlisten)
		return;
	for (i = 0; i < cfg->nallow; i++)
		if (cfg->allow[i].prefix == 0) {
			config_error(p,
			    config_key_line(p, "smtp", "allow_networks"),
			    "allow_networks %s covers every address: anyone "
			    "who can reach relayd could send mail as your "
			    "tenant (an open relay); list your own networks, "
			    "or set require_auth = yes (or require_auth on "
			    "every listen line)",
			    cfg->allow[i].family == AF_INET ? "0.0.0.0/0" :
			    "::/0");
			return;
		}
}

/* A listener with require_auth must let someone AUTH. */
static void
check_listen_auth(struct config_reader *p)
{
	struct config		*cfg = p->cfg;
	struct listen_cfg	*lc;
	size_t			 i;

	for (i = 0; i < cfg->nlisten; i++) {
		lc = &cfg->listen[i];
		if (!lc->require_auth)
			continue;
		if (cfg->users_file == NULL)
			config_error(p, lc->line, "listen %s require_auth "
			    "needs [auth] users_file (nobody could send "
			    "there); set it, or drop require_auth", lc->text);
		else if (lc->cert == NULL && !lc->auth_plaintext)
			config_error(p, lc->line, "listen %s require_auth: "
			    "AUTH needs TLS and this listener has no "
			    "certificate (nobody could send there); set "
			    "tls_cert and tls_key, or auth_plaintext=yes",
			    lc->text);
	}
}

/* [status] users and groups must exist, or relayd would not start. */
static void
check_status_ids(struct config_reader *p)
{
	char	 err[512];

	if (status_ids_check(p->cfg->status_users, 0, err, sizeof(err)) == -1)
		config_error(p, config_key_line(p, "status", "users"), "%s",
		    err);
	if (status_ids_check(p->cfg->status_groups, 1, err, sizeof(err)) ==
	    -1)
		config_error(p, config_key_line(p, "status", "groups"), "%s",
		    err);
}

/*
 * [cluster] redis = redis://HOST:PORT[/DB]: HOST a name, an IPv4 address
 * or [IPv6]; PORT 1-65535 (6379 if left out); DB a number (0 if left
 * out). No user or password in the URL: password_file holds it, so that
 * it is not in a file every process reads.
 */
static int
redis_url(const char *url, char **host, unsigned *port, unsigned *db,
    char *err, size_t errlen)
{
	const char	*h, *e, *rest;
	char		*end;
	unsigned long	 n;

	if (strncmp(url, "redis://", 8) != 0) {
		snprintf(err, errlen, "does not start with redis://");
		return -1;
	}
	h = url + 8;
	if (strchr(h, '@') != NULL) {
		snprintf(err, errlen, "has a user or password in it; put the "
		    "password in password_file");
		return -1;
	}
	if (*h == '[') {
		if ((e = strchr(h, ']')) == NULL || e == h + 1) {
			snprintf(err, errlen, "has an IPv6 address without "
			    "its closing ]");
			return -1;
		}
		*host = xstrndup(h + 1, (size_t)(e - h - 1));
		rest = e + 1;
	} else {
		e = h + strcspn(h, ":/");
		for (rest = h; rest < e; rest++)
			if (!isalnum((unsigned char)*rest) && *rest != '.' &&
			    *rest != '-' && *rest != '_')
				break;
		if (e == h || rest != e) {
			snprintf(err, errlen, "has no host name or address");
			return -1;
		}
		*host = xstrndup(h, (size_t)(e - h));
	}
	*port = 6379;
	*db = 0;
	if (*rest == ':') {
		errno = 0;
		n = strtoul(rest + 1, &end, 10);
		if (!isdigit((unsigned char)rest[1]) || errno != 0 || n == 0 ||
		    n > 65535 || (*end != '\0' && *end != '/')) {
			snprintf(err, errlen, "has no port 1-65535 after the "
			    "host");
			goto bad;
		}
		*port = (unsigned)n;
		rest = end;
	}
	if (*rest == '/' && rest[1] != '\0') {
		errno = 0;
		n = strtoul(rest + 1, &end, 10);
		if (!isdigit((unsigned char)rest[1]) || errno != 0 ||
		    *end != '\0' || n > 1000000) {
			snprintf(err, errlen, "has no database number after "
			    "the /");
			goto bad;
		}
		*db = (unsigned)n;
	} else if (*rest != '\0' && strcmp(rest, "/") != 0) {
		snprintf(err, errlen, "has \"%s\" after the host", rest);
		goto bad;
	}
	return 0;
bad:
	free(*host);
	*host = NULL;
	return -1;
}

/* A node's name goes into Redis keys: a short word, no spaces. */
static int
node_name_ok(const char *s)
{
	size_t	 n = 0;

	for (; *s != '\0'; s++, n++)
		if (!isalnum((unsigned char)*s) && *s != '.' && *s != '-' &&
		    *s != '_')
			return 0;
	return n > 0 && n <= 64;
}

/* [cluster]: a Redis URL, a private password file, a node name. */
static void
check_cluster(struct config_reader *p)
{
	struct config	*cfg = p->cfg;
	char		 err[256];
	int		 line = config_key_line(p, "cluster", "redis");

	if (cfg->cluster_redis == NULL) {
		if (config_key_line(p, "cluster", "password_file") != 0 ||
		    config_key_line(p, "cluster", "node") != 0)
			config_error(p, config_key_line(p, "cluster",
			    config_key_line(p, "cluster", "node") != 0 ? "node" :
			    "password_file"), "[cluster] without redis: set "
			    "redis = redis://HOST:PORT[/DB], or remove the "
			    "section to run alone");
		return;
	}
	if (redis_url(cfg->cluster_redis, &cfg->cluster_host,
	    &cfg->cluster_port, &cfg->cluster_db, err, sizeof(err)) == -1)
		config_error(p, line, "redis \"%s\" %s; write "
		    "redis://HOST:PORT[/DB], e.g. redis://10.0.0.5:6379/0",
		    cfg->cluster_redis, err);
	if (cfg->cluster_password_file != NULL)
		check_secret_file(p, config_key_line(p, "cluster",
		    "password_file"), "password_file",
		    cfg->cluster_password_file,
		    reads & CONFIG_READ_CREDENTIALS);
	if (!node_name_ok(cfg->cluster_node))
		config_error(p, config_key_line(p, "cluster", "node"), "node "
		    "\"%s\" is not a node name: up to 64 letters, digits, "
		    "dots, dashes and underscores, unique among the nodes",
		    cfg->cluster_node);
}

/* Checks that span keys or need the file system. */
static void
check_config(struct config_reader *p)
{
	struct config	*cfg = p->cfg;
	const char	*c;

	for (c = cfg->hostname; *c != '\0'; c++)
		if (!isalnum((unsigned char)*c) && *c != '.' && *c != '-') {
			config_error(p, config_key_line(p, "smtp", "hostname"),
			    "hostname \"%s\" is not a DNS name", cfg->hostname);
			break;
		}
	if (cfg->spool_dir[0] != '/')
		config_error(p, 0, "spool_dir \"%s\" must be an absolute path",
		    cfg->spool_dir);
	check_graph(p);
	check_tls(p);
	check_open_relay(p);
	if (cfg->notify != NULL && !mailbox_address(cfg->notify))
		config_error(p, config_key_line(p, "queue", "notify"), "notify "
		    "\"%s\" is not a mailbox address; name the operator's "
		    "mailbox (user@domain) that gets the digest of dead "
		    "letters", cfg->notify);
	if (cfg->sendmail_sender != NULL &&
	    !mailbox_address(cfg->sendmail_sender))
		config_error(p, config_key_line(p, "sendmail", "sender"),
		    "sender \"%s\" is not a mailbox address; name the tenant's "
		    "mailbox local programs send as (user@domain)",
		    cfg->sendmail_sender);
	if (cfg->require_auth && cfg->users_file == NULL)
		config_error(p, config_key_line(p, "smtp", "require_auth"),
		    "require_auth needs [auth] users_file (nobody could "
		    "relay)");
	check_listen_auth(p);
	if (cfg->users_file != NULL && p->client)
		;	/* not the client's to read */
	else if (cfg->users_file != NULL && (reads & CONFIG_READ_SMTP ?
	    access(cfg->users_file, R_OK) : access(cfg->users_file, F_OK)) ==
	    -1)
		config_error(p, config_key_line(p, "auth", "users_file"),
		    "users_file \"%s\": %s; make it with: relayctl passwd USER",
		    cfg->users_file, strerror(errno));
	else if (cfg->users_file != NULL && (reads & CONFIG_READ_SMTP))
		p->errors += auth_users_check(cfg->users_file, p->errf);
	check_status_ids(p);
	check_cluster(p);
}

/* Reads, then checks; the config if neither found anything wrong. */
static struct config *
load(const char *name, const char *text, FILE *errf, int client)
{
	struct config_reader	 r;

	config_read(&r, name, text, errf, client);
	check_config(&r);
	return config_read_done(&r);
}

struct config *
config_load_string(const char *name, const char *text, FILE *errf)
{
	return load(name, text, errf, 0);
}

static struct config *
load_file(const char *path, FILE *errf, int client)
{
	struct config	*cfg;
	char		*text;

	if ((text = config_read_file(path, errf)) == NULL)
		return NULL;
	cfg = load(path, text, errf, client);
	free(text);
	return cfg;
}

struct config *
config_load(const char *path, FILE *errf)
{
	return load_file(path, errf, 0);
}

struct config *
config_load_fd(const char *path, int fd, FILE *errf)
{
	struct config	*cfg;
	FILE		*fp;
	char		*text;
	int		 copy;

	if ((copy = dup(fd)) == -1 || (fp = fdopen(copy, "r")) == NULL) {
		fprintf(errf, "%s: cannot read: %s\n", path, strerror(errno));
		if (copy != -1)
			close(copy);
		return NULL;
	}
	if ((text = config_read_stream(fp, path, errf)) == NULL)
		return NULL;
	cfg = load(path, text, errf, 0);
	free(text);
	return cfg;
}

struct config *
config_load_client(const char *path, FILE *errf)
{
	return load_file(path, errf, 1);
}

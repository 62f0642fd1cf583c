/*
 * config.c - the relayd.conf parser.
 *
 * INI syntax: "[section]", "key = value", "#" or ";" comments on their own
 * line. One table lists every key with its type, default, bounds and help;
 * parsing, range checks, `relayd -n` and the commented example config are all
 * driven by it, so they cannot drift apart. Every error is reported, each as
 * "FILE:LINE: message", rather than stopping at the first.
 *
 * A hand-written reader rather than inih: inih does not hand line numbers to
 * its callback in Debian's build, and precise "FILE:LINE:" errors for every
 * key are the point of this module.
 */
#include "autoconf.h"

#include <sys/stat.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <ctype.h>
#include <fcntl.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "http.h"
#include "jwt.h"
#include "log.h"
#include "status.h"
#include "tls.h"
#include "util.h"

#define CONFIG_LINE_MAX		4096
#define CONFIG_FILE_MAX		(1024 * 1024)

enum cfg_type {
	CFG_STR,	/* free text */
	CFG_NUM,	/* integer within [min, max] */
	CFG_SIZE,	/* bytes, with k/M/G suffixes */
	CFG_DURATION,	/* milliseconds; "30s", "5m", "250ms" */
	CFG_ENUM,	/* one of enums[], stored as its index */
	CFG_LISTEN,	/* ADDR:PORT, repeatable */
	CFG_NETS,	/* CIDR list, comma or space separated */
	CFG_BOOL,	/* yes/no, true/false, on/off; stored as int */
};

struct cfg_key {
	const char		*section;
	const char		*name;
	enum cfg_type		 type;
	const char		*def;	/* NULL: unset unless given */
	uint64_t		 min, max;
	size_t			 off;
	const char *const	*enums;
	const char		*help;
};

static const char *const bare_lf_names[] = { "reject", "normalize", NULL };
/* In the order of enum reply_after. */
static const char *const reply_after_names[] = { "spool", "graph", NULL };
static const char *const sync_names[] = { "fdatasync", "syncfs", NULL };
static const char *const bounce_names[] = { "no", "sender", NULL };
/* In the order of enum graph_mode. */
static const char *const mode_names[] = { "json", "mime", "auto", NULL };
static const char *const tls_names[] = { "1.0", "1.1", "1.2", "1.3", NULL };
static const char *const log_level_names[] =
    { "error", "warning", "info", "debug", NULL };
static const char *const alg_names[] = { "PS256", "RS256", NULL };
static const char *const cloud_names[] =
    { "global", "usgov", "usgov-dod", "china", NULL };

/* Each cloud's token service and Graph (FACTS.md 5, national clouds). */
static const struct {
	const char	*login_url;
	const char	*graph_url;
} clouds[] = {
	{ "https://login.microsoftonline.com", "https://graph.microsoft.com" },
	{ "https://login.microsoftonline.us", "https://graph.microsoft.us" },
	{ "https://login.microsoftonline.us", "https://dod-graph.microsoft.us" },
	{ "https://login.chinacloudapi.cn",
	  "https://microsoftgraph.chinacloudapi.cn" },
};

#define OFF(f)	offsetof(struct config, f)
#define KB	1024ULL
#define MB	(1024ULL * 1024)

static const struct cfg_key cfg_keys[] = {
	{ "smtp", "listen", CFG_LISTEN, "127.0.0.1:25", 0, 0, OFF(listen), NULL,
	  "Address and port to accept SMTP on; repeat the key for more. "
	  "IPv6 in brackets: [::1]:25. Options after the address: tls (the "
	  "handshake comes first, as on port 465), cert=PATH, key=PATH and "
	  "tls_min=VERSION for this listener only; networks=CIDR,CIDR to "
	  "accept connections from those networks only; auth_plaintext=yes "
	  "to allow AUTH without TLS; require_auth to answer 530 to MAIL "
	  "without AUTH on this listener, even from allow_networks (port 587 "
	  "beside a port 25 for the LAN's printers); reply_after=graph or "
	  "reply_after=spool to set [smtp] reply_after for this listener; "
	  "proxy to read a PROXY "
	  "protocol header "
	  "(v1 or v2, from HAProxy or a load balancer) first and use the "
	  "client address in it: bind such a listener where only the proxy "
	  "can connect. A plain listener with a certificate offers "
	  "STARTTLS." },
	{ "smtp", "hostname", CFG_STR, NULL, 0, 0, OFF(hostname), NULL,
	  "Name in the greeting and Received: header (default: the system "
	  "host name)." },
	{ "smtp", "max_message_size", CFG_SIZE, "35M", 1 * KB, 256 * MB,
	  OFF(max_message_size), NULL,
	  "Largest message accepted, in bytes (k, M suffixes); advertised with "
	  "SIZE. Exchange Online's default is 35M. Graph takes attachments up "
	  "to 150M each, which base64 makes 205M of message: 256M is the "
	  "most." },
	{ "smtp", "drain_timeout", CFG_DURATION, "30s", 0, 3600 * 1000,
	  OFF(drain_timeout_ms), NULL,
	  "On SIGTERM: how long sessions may take to finish their "
	  "transaction (new clients get 421) before relayd stops anyway." },
	{ "smtp", "max_recipients", CFG_NUM, "500", 1, 500,
	  OFF(max_recipients), NULL,
	  "Recipients per message; Graph accepts at most 500." },
	{ "smtp", "max_line_length", CFG_NUM, "2048", 512, 1 * MB,
	  OFF(max_line_length), NULL,
	  "Longest SMTP command line in bytes; longer lines get 500." },
	{ "smtp", "command_timeout", CFG_DURATION, "5m", 1000, 3600 * 1000,
	  OFF(command_timeout_ms), NULL,
	  "Idle time allowed while waiting for a command (RFC 5321: 5m)." },
	{ "smtp", "data_timeout", CFG_DURATION, "10m", 1000, 3600 * 1000,
	  OFF(data_timeout_ms), NULL,
	  "Idle time allowed while receiving message data; past it, the "
	  "data must also average 256 bytes a second (a trickle is cut "
	  "with 421)." },
	{ "smtp", "max_connections", CFG_NUM, "1000", 1, 1000000,
	  OFF(max_connections), NULL,
	  "Simultaneous SMTP connections in total." },
	{ "smtp", "max_connections_per_client", CFG_NUM, "100", 1, 1000000,
	  OFF(max_connections_per_client), NULL,
	  "Simultaneous SMTP connections from one client address." },
	{ "smtp", "max_errors", CFG_NUM, "10", 1, 1000, OFF(max_errors), NULL,
	  "Protocol errors allowed in one session before it is closed." },
	{ "smtp", "greeting_delay", CFG_DURATION, "0", 0, 60 * 1000,
	  OFF(greeting_delay_ms), NULL,
	  "Wait this long before the greeting; a client that talks first is "
	  "refused. Input already waiting at connect is refused even at 0." },
	{ "smtp", "bare_lf", CFG_ENUM, "reject", 0, 0, OFF(bare_lf),
	  bare_lf_names,
	  "A bare LF or CR in DATA: reject the message with 550, or "
	  "normalize it to CRLF (old devices). It never ends the data." },
	{ "smtp", "allow_networks", CFG_NETS, "127.0.0.0/8 ::1/128", 0, 0,
	  OFF(allow), NULL,
	  "Client networks (CIDR, comma or space separated) allowed to relay." },
	{ "smtp", "require_auth", CFG_BOOL, "no", 0, 0, OFF(require_auth), NULL,
	  "Relaying needs AUTH even from allow_networks (530 otherwise), on "
	  "every listener; require_auth on a listen line asks it of that "
	  "listener only." },
	{ "smtp", "reply_after", CFG_ENUM, "spool", 0, 0, OFF(reply_after),
	  reply_after_names,
	  "When the 250 to DATA (or the last BDAT) is sent: spool, once the "
	  "message is safe on disk; graph, once Graph took it (202). With "
	  "graph a message Graph refuses for good (403 ErrorSendAsDenied, "
	  "400, 404 ...) gets a 5xx naming Graph's error, and relayd keeps "
	  "no copy: the device still has it and can say so. A temporary "
	  "failure, or no answer within reply_timeout, gets 250 and the "
	  "message is retried as usual. It is on disk before Graph is "
	  "called either way." },
	{ "smtp", "reply_timeout", CFG_DURATION, "30s", 1000, 600 * 1000,
	  OFF(reply_timeout_ms), NULL,
	  "With reply_after = graph: the longest a client waits for Graph's "
	  "answer before it gets 250 (the message stays queued). Keep it "
	  "below the clients' own DATA timeout (RFC 5321: 10m)." },
	{ "smtp", "recipient_domains", CFG_STR, NULL, 0, 0,
	  OFF(recipient_domains), NULL,
	  "If set, the only recipient domains accepted (comma or space "
	  "separated); others get 550 5.7.1." },
	{ "smtp", "tls_cert", CFG_STR, NULL, 0, 0, OFF(tls_cert), NULL,
	  "PEM certificate (chain) for STARTTLS and tls listeners." },
	{ "smtp", "tls_key", CFG_STR, NULL, 0, 0, OFF(tls_key), NULL,
	  "PEM private key of tls_cert; must not be open to group or others." },
	{ "smtp", "tls_min", CFG_ENUM, "1.2", 0, 0, OFF(tls_min), tls_names,
	  "Oldest TLS version accepted: 1.0, 1.1, 1.2 or 1.3. 1.0 and 1.1 "
	  "only for old printers that know nothing newer (a warning is "
	  "logged at start)." },
	{ "queue", "spool_dir", CFG_STR, "/var/lib/relayd/spool", 0, 0,
	  OFF(spool_dir), NULL,
	  "Directory of the durable queue; must be on a local file system." },
	{ "queue", "sync_method", CFG_ENUM, "fdatasync", 0, 0,
	  OFF(sync_method), sync_names,
	  "How a batch of new messages is made durable before the 250: "
	  "fdatasync each file (works everywhere), or syncfs, one flush of "
	  "the whole file system per batch: faster when spool_dir is a file "
	  "system of its own, slower on one shared with busy writers. "
	  "syncfs is not proven against power loss: relayd's power-cut test "
	  "(a FUSE file system) cannot see a syncfs, so only fdatasync is "
	  "tested. On ext4 and xfs syncfs writes back every file and "
	  "directory and flushes the disk, but Linux reports its write "
	  "errors only since 5.8: on older kernels a failed write can still "
	  "get a 250. Use syncfs only on Linux 5.8 or later, on a local "
	  "ext4 or xfs." },
	{ "queue", "workers", CFG_NUM, "16", 1, 512, OFF(workers), NULL,
	  "Graph requests in flight at once, over all mailboxes. Graph itself "
	  "allows 4 per mailbox; relayd never sends more." },
	{ "queue", "retry_min", CFG_DURATION, "30s", 100, 3600 * 1000,
	  OFF(retry_min_ms), NULL,
	  "First wait after a temporary failure without Retry-After; it "
	  "doubles with each failure up to retry_max." },
	{ "queue", "retry_max", CFG_DURATION, "30m", 1000, 24 * 3600 * 1000,
	  OFF(retry_max_ms), NULL,
	  "Longest wait between two attempts." },
	{ "queue", "lifetime", CFG_DURATION, "5d", 1000,
	  UINT64_C(90) * 86400 * 1000, OFF(lifetime_ms), NULL,
	  "How long a message may wait for Graph; then it goes to dead/ with "
	  "reason expired." },
	{ "queue", "history", CFG_DURATION, "30d", 0,
	  UINT64_C(3650) * 86400 * 1000, OFF(history_ms), NULL,
	  "How long each message's history (relayctl history: when, from "
	  "whom, to whom, what became of it) is kept in history.db in "
	  "spool_dir; 0: no history is kept." },
	{ "queue", "messages_per_minute", CFG_NUM, "30", 0, 100000,
	  OFF(messages_per_minute), NULL,
	  "Messages sent per mailbox and minute (bursts up to this many at "
	  "once), as Exchange Online allows; a burst from one sender is "
	  "spread out instead of refused. 0: no pacing." },
	{ "queue", "bounce", CFG_ENUM, "no", 0, 0, OFF(bounce), bounce_names,
	  "no: refused messages stay in dead/ silently. sender: a short "
	  "report goes through Graph to the envelope sender, when that is a "
	  "mailbox of the tenant." },
	{ "queue", "notify", CFG_STR, NULL, 0, 0, OFF(notify), NULL,
	  "An operator's mailbox (user@domain) that gets a digest of new dead "
	  "letters and expired messages, sent through Graph from that "
	  "mailbox to itself, at most one per notify_interval. Unset: no "
	  "digest." },
	{ "queue", "notify_interval", CFG_DURATION, "1h", 1000,
	  UINT64_C(7) * 86400 * 1000, OFF(notify_interval_ms), NULL,
	  "Least time between two digests to notify." },
	{ "graph", "tenant", CFG_STR, NULL, 0, 0, OFF(tenant), NULL,
	  "Directory (tenant) ID or domain of the app registration." },
	{ "graph", "client_id", CFG_STR, NULL, 0, 0, OFF(client_id), NULL,
	  "Application (client) ID of the app registration." },
	{ "graph", "client_secret_file", CFG_STR, NULL, 0, 0,
	  OFF(client_secret_file), NULL,
	  "File holding the client secret (its Value); must not be open to "
	  "group or others. Unset: the systemd credential "
	  "$CREDENTIALS_DIRECTORY/client_secret (see relayd.service). Leave "
	  "it unset when signing in with a certificate. A new secret is taken "
	  "up on reload (SIGHUP)." },
	{ "graph", "client_secret_expires", CFG_STR, NULL, 0, 0,
	  OFF(client_secret_expires_text), NULL,
	  "The client secret's expiry date as Entra shows it beside the "
	  "secret, YYYY-MM-DD: relayd warns from 30 days before (log, "
	  "relayctl status, relayd_credential_expiry_seconds)." },
	{ "graph", "certificate_file", CFG_STR, NULL, 0, 0,
	  OFF(certificate_file), NULL,
	  "PEM certificate uploaded to the app registration (Certificates & "
	  "secrets): relayd signs in with a client assertion made with its "
	  "key instead of a client secret." },
	{ "graph", "private_key_file", CFG_STR, NULL, 0, 0,
	  OFF(private_key_file), NULL,
	  "PEM RSA private key of certificate_file, not encrypted; must not "
	  "be open to group or others. Unset: the systemd credential "
	  "$CREDENTIALS_DIRECTORY/private_key." },
	{ "graph", "assertion_alg", CFG_ENUM, "PS256", 0, 0,
	  OFF(assertion_alg), alg_names,
	  "Signature of the client assertion: PS256 (RSA-PSS, names the "
	  "certificate by its SHA-256 thumbprint) or RS256 (PKCS#1 v1.5 and "
	  "the SHA-1 thumbprint, the older form)." },
	{ "graph", "cloud", CFG_ENUM, "global", 0, 0, OFF(cloud), cloud_names,
	  "The tenant's cloud: global (also GCC), usgov (GCC High), "
	  "usgov-dod (DoD) or china (21Vianet); it gives login_url and "
	  "graph_url their defaults." },
	{ "graph", "login_url", CFG_STR, NULL, 0, 0, OFF(login_url), NULL,
	  "OAuth2 token service base URL (default: the cloud's, "
	  "https://login.microsoftonline.com for global)." },
	{ "graph", "graph_url", CFG_STR, NULL, 0, 0, OFF(graph_url), NULL,
	  "Microsoft Graph base URL (default: the cloud's, "
	  "https://graph.microsoft.com for global). The token's scope is "
	  "always graph_url/.default." },
	{ "graph", "proxy", CFG_STR, NULL, 0, 0, OFF(proxy), NULL,
	  "HTTP proxy for the token service and Graph: http://HOST:PORT, or "
	  "http://USER:PASSWORD@HOST:PORT for Basic authentication (https:// "
	  "for a TLS proxy). Unset: the environment's https_proxy, "
	  "HTTPS_PROXY and no_proxy apply, as in curl." },
	{ "graph", "ca_file", CFG_STR, NULL, 0, 0, OFF(ca_file), NULL,
	  "PEM file of CA certificates trusted besides the system's, for a "
	  "TLS-inspecting proxy or a test server." },
	{ "graph", "mailbox", CFG_STR, "envelope", 0, 0, OFF(mailbox), NULL,
	  "Whose mailbox sends each message (the {id} in /users/{id}/sendMail):"
	  " envelope (the MAIL FROM address), from (the From: header), or one "
	  "fixed ADDRESS for everything." },
	{ "graph", "save_to_sent_items", CFG_BOOL, "yes", 0, 0,
	  OFF(save_to_sent_items), NULL,
	  "Keep a copy of each message in the sending mailbox's Sent Items." },
	{ "graph", "mode", CFG_ENUM, "auto", 0, 0, OFF(graph_mode),
	  mode_names,
	  "How a message goes to Graph: json (mapped onto a Graph message), "
	  "mime (the message itself, base64, up to 4 MB; larger ones go as "
	  "json), or auto: mime for what json cannot carry faithfully "
	  "(S/MIME signed or encrypted, calendar invitations) when it fits, "
	  "json otherwise. The envelope decides the recipients either way." },
	{ "graph", "max_mime_depth", CFG_NUM, "32", 1, 1000,
	  OFF(max_mime_depth), NULL,
	  "Deepest nesting of multiparts and attached messages mapped; a "
	  "deeper message fails permanently (dead letter)." },
	{ "graph", "connect_timeout", CFG_DURATION, "10s", 1000, 300 * 1000,
	  OFF(connect_timeout_ms), NULL,
	  "Time allowed to connect to the token service or Graph." },
	{ "graph", "timeout", CFG_DURATION, "2m", 1000, 3600 * 1000,
	  OFF(timeout_ms), NULL,
	  "Time allowed for one whole request, upload included; a request "
	  "that takes longer is retried later." },
	{ "auth", "users_file", CFG_STR, NULL, 0, 0, OFF(users_file), NULL,
	  "Users allowed to AUTH (make lines with `relayctl passwd USER`); "
	  "must not be open to group or others. Unset: no AUTH. EHLO offers "
	  "a mechanism only if every user has a secret for it; the others "
	  "are accepted when a client names them." },
	{ "auth", "max_failures", CFG_NUM, "5", 1, 1000,
	  OFF(auth_max_failures), NULL,
	  "Failed AUTH attempts from one address before it is locked out "
	  "for lockout (relayctl unlock ADDRESS lifts it); each failure also "
	  "waits longer (1 s doubling to 8 s) before its 535. In one "
	  "session, failures as the same user count once until a mechanism "
	  "is tried again, so a client trying its mechanisms in turn with "
	  "one wrong password fails once." },
	{ "auth", "lockout", CFG_DURATION, "15m", 1000, 24 * 3600 * 1000,
	  OFF(auth_lockout_ms), NULL,
	  "How long an address that failed max_failures times may not AUTH, "
	  "and the window in which failures are counted." },
	{ "status", "socket", CFG_STR, "/run/relayd/status.sock", 0, 0,
	  OFF(status_socket), NULL,
	  "UNIX socket for relayctl, mode 0660; none: no socket. root and "
	  "relayd's own user may connect, and those named below." },
	{ "status", "users", CFG_STR, NULL, 0, 0, OFF(status_users), NULL,
	  "Other users who may use the status socket (comma-separated "
	  "names)." },
	{ "status", "groups", CFG_STR, NULL, 0, 0, OFF(status_groups), NULL,
	  "Groups whose members may use the status socket (comma-separated "
	  "names)." },
	{ "status", "metrics_listen", CFG_STR, NULL, 0, 0,
	  OFF(status_metrics_listen), NULL,
	  "ADDR:PORT to serve Prometheus metrics at /metrics over HTTP, e.g. "
	  "127.0.0.1:9464; unset: none (relayctl metrics still works)." },
	{ "sendmail", "sender", CFG_STR, NULL, 0, 0, OFF(sendmail_sender), NULL,
	  "The mailbox local programs' mail is sent as by relayd-sendmail(8) "
	  "(cron, smartd, PHP's mail()): the envelope sender, and the From: "
	  "address when From: is missing or names a local user (root, "
	  "www-data, user@this-host). Mail to a local user goes to it too. "
	  "relayd-sendmail -f ADDRESS overrides it; unset: USER@hostname, "
	  "which relayd's [senders] rules or Graph may refuse. relayd itself "
	  "only checks it." },
	{ "log", "level", CFG_ENUM, "info", 0, 0, OFF(log_level),
	  log_level_names, "error, warning, info or debug." },
	{ "log", "recipients", CFG_BOOL, "yes", 0, 0, OFF(log_recipients),
	  NULL, "Name the recipients in the queued line (no: only their "
	  "number, for sites that must not log them)." },
	{ "log", "subjects", CFG_BOOL, "yes", 0, 0, OFF(log_subjects),
	  NULL, "Keep each message's Subject in its history (relayctl "
	  "history); no: for sites that must not keep them." },
};

struct parser {
	const char	*file;
	FILE		*errf;
	int		 errors;
	int		 client;	/* config_load_client(): no files */
	struct config	*cfg;
	int		 seen[NELEM(cfg_keys)];	/* line of first setting */
};

static void	perr(struct parser *, int, const char *, ...) PRINTFLIKE(3, 4);

static void
perr(struct parser *p, int line, const char *fmt, ...)
{
	va_list	 ap;

	p->errors++;
	if (line > 0)
		fprintf(p->errf, "%s:%d: ", p->file, line);
	else
		fprintf(p->errf, "%s: ", p->file);
	va_start(ap, fmt);
	vfprintf(p->errf, fmt, ap);
	va_end(ap);
	fputc('\n', p->errf);
}

/* Levenshtein distance, to suggest "client_id" for "clinet_id". */
static size_t
edit_distance(const char *a, const char *b)
{
	size_t	 la = strlen(a), lb = strlen(b), i, j;
	size_t	 row[64], prev, tmp;

	if (lb >= NELEM(row) || la >= 64)
		return SIZE_MAX;
	for (j = 0; j <= lb; j++)
		row[j] = j;
	for (i = 1; i <= la; i++) {
		prev = row[0];
		row[0] = i;
		for (j = 1; j <= lb; j++) {
			tmp = row[j];
			row[j] = prev + (a[i - 1] != b[j - 1]);
			if (row[j - 1] + 1 < row[j])
				row[j] = row[j - 1] + 1;
			if (tmp + 1 < row[j])
				row[j] = tmp + 1;
			prev = tmp;
		}
	}
	return row[lb];
}

static const struct cfg_key *
suggest(const char *section, const char *name)
{
	const struct cfg_key	*best = NULL;
	size_t			 i, d, bestd = 3;

	for (i = 0; i < NELEM(cfg_keys); i++) {
		if (section != NULL && strcmp(cfg_keys[i].section, section))
			continue;
		d = edit_distance(name, cfg_keys[i].name);
		if (d < bestd) {
			bestd = d;
			best = &cfg_keys[i];
		}
	}
	return best;
}

/*
 * One network of a list; -1 with what is wrong in err. 127.0.0.1/8 is
 * refused, not taken as 127.0.0.0/8: it is more often a slip than meant.
 */
static int
parse_net(const char *tok, struct netmask *nm, char *err, size_t errlen)
{
	char	 net[64];

	switch (addr_parse_cidr(tok, nm)) {
	case 0:
		return 0;
	case -2:
		addr_net_text(nm, net, sizeof(net));
		snprintf(err, errlen, "\"%s\" has host bits set; did you "
		    "mean %s?", tok, net);
		return -1;
	default:
		snprintf(err, errlen, "\"%s\" is not a network (CIDR such as "
		    "192.0.2.0/24 or 2001:db8::/32)", tok);
		return -1;
	}
}

/* Replaces the network list; on error returns -1 with the reason. */
static int
set_nets(struct config *cfg, const char *value, char *bad, size_t badlen)
{
	char		*copy = xstrdup(value), *tok, *save = NULL;
	struct netmask	 nm, *list = NULL;
	size_t		 n = 0;

	for (tok = strtok_r(copy, ", \t", &save); tok != NULL;
	    tok = strtok_r(NULL, ", \t", &save)) {
		if (parse_net(tok, &nm, bad, badlen) == -1) {
			free(copy);
			free(list);
			return -1;
		}
		list = xrealloc(list, (n + 1) * sizeof(*list));
		list[n++] = nm;
	}
	free(copy);
	free(cfg->allow);
	cfg->allow = list;
	cfg->nallow = n;
	return 0;
}

/*
 * A listen option's value ("opt=value" in tok): its index in names, or -1
 * with the values allowed in err.
 */
static int
listen_choice(const char *listener, const char *tok,
    const char *const *names, char *err, size_t errlen)
{
	const char	*value = strchr(tok, '=') + 1;
	size_t		 used;
	int		 i;

	for (i = 0; names[i] != NULL; i++)
		if (strcmp(value, names[i]) == 0)
			return i;
	used = (size_t)snprintf(err, errlen, "listen %s: %.*s must be",
	    listener, (int)(value - tok - 1), tok);
	for (i = 0; names[i] != NULL && used < errlen; i++)
		used += (size_t)snprintf(err + used, errlen - used, "%s %s",
		    i == 0 ? "" : names[i + 1] == NULL ? " or" : ",", names[i]);
	if (used < errlen)
		snprintf(err + used, errlen - used, ", not \"%s\"", value);
	return -1;
}

/* "ADDR:PORT [tls] [cert=PATH] [key=PATH] [tls_min=V]" */
static int
set_listen(struct config *cfg, const char *value, char *err, size_t errlen)
{
	struct listen_cfg	 lc;
	char			*copy = xstrdup(value), *tok, *save = NULL;
	int			 rc = -1;

	memset(&lc, 0, sizeof(lc));
	lc.tls_min = -1;
	lc.reply_after = -1;
	tok = strtok_r(copy, " \t", &save);
	if (tok == NULL || addr_parse_hostport(tok, &lc.ss, &lc.sslen) == -1) {
		snprintf(err, errlen, "listen: \"%s\" is not ADDR:PORT "
		    "(numeric; IPv6 as [::1]:25)", tok ? tok : value);
		goto out;
	}
	strlcpy_r(lc.text, tok, sizeof(lc.text));
	while ((tok = strtok_r(NULL, " \t", &save)) != NULL) {
		if (strcmp(tok, "tls") == 0)
			lc.tls = 1;
		else if (strcmp(tok, "proxy") == 0)
			lc.proxy = 1;
		else if (strcmp(tok, "require_auth") == 0)
			lc.require_auth = 1;
		else if (strncmp(tok, "reply_after=", 12) == 0) {
			if ((lc.reply_after = listen_choice(lc.text, tok,
			    reply_after_names, err, errlen)) == -1)
				goto out;
		} else if (strncmp(tok, "cert=", 5) == 0 && tok[5] != '\0') {
			free(lc.cert);
			lc.cert = xstrdup(tok + 5);
		} else if (strncmp(tok, "key=", 4) == 0 && tok[4] != '\0') {
			free(lc.key);
			lc.key = xstrdup(tok + 4);
		} else if (strncmp(tok, "networks=", 9) == 0) {
			char		*nets = xstrdup(tok + 9), *n, *sv = NULL;
			struct netmask	 nm;

			for (n = strtok_r(nets, ",", &sv); n != NULL;
			    n = strtok_r(NULL, ",", &sv)) {
				char why[256];

				if (parse_net(n, &nm, why, sizeof(why)) == -1) {
					snprintf(err, errlen, "listen %s: "
					    "networks: %s", lc.text, why);
					free(nets);
					goto out;
				}
				lc.nets = xrealloc(lc.nets, (lc.nnets + 1) *
				    sizeof(*lc.nets));
				lc.nets[lc.nnets++] = nm;
			}
			free(nets);
		} else if (strcmp(tok, "auth_plaintext=yes") == 0)
			lc.auth_plaintext = 1;
		else if (strcmp(tok, "auth_plaintext=no") == 0)
			lc.auth_plaintext = 0;
		else if (strncmp(tok, "tls_min=", 8) == 0) {
			if ((lc.tls_min = listen_choice(lc.text, tok, tls_names,
			    err, errlen)) == -1)
				goto out;
		} else {
			snprintf(err, errlen, "listen %s: unknown option \"%s\" "
			    "(options: tls, proxy, cert=PATH, key=PATH, "
			    "tls_min=1.2, networks=CIDR,..., auth_plaintext=yes, "
			    "require_auth, reply_after=graph)", lc.text, tok);
			goto out;
		}
	}
	cfg->listen = xrealloc(cfg->listen,
	    (cfg->nlisten + 1) * sizeof(*cfg->listen));
	cfg->listen[cfg->nlisten++] = lc;
	memset(&lc, 0, sizeof(lc));
	rc = 0;
out:
	free(lc.cert);
	free(lc.key);
	free(lc.nets);
	free(copy);
	return rc;
}

/* Applies one value; on error writes why into err. */
static int
set_value(struct config *cfg, const struct cfg_key *k, const char *value,
    char *err, size_t errlen)
{
	void		*field = (char *)cfg + k->off;
	uint64_t	 v;
	size_t		 i;
	int		 r = 0;

	switch (k->type) {
	case CFG_STR:
		if (*value == '\0') {
			snprintf(err, errlen, "\"%s\" needs a value", k->name);
			return -1;
		}
		free(*(char **)field);
		*(char **)field = xstrdup(value);
		return 0;
	case CFG_NUM:
		r = parse_u64(value, 0, UINT64_MAX, &v);
		break;
	case CFG_SIZE:
		r = parse_size(value, &v);
		break;
	case CFG_DURATION:
		r = parse_duration_ms(value, &v);
		break;
	case CFG_ENUM:
		for (i = 0; k->enums[i] != NULL; i++)
			if (strcasecmp(value, k->enums[i]) == 0) {
				*(int *)field = (int)i;
				return 0;
			}
		snprintf(err, errlen, "\"%s\" must be one of", k->name);
		for (i = 0; k->enums[i] != NULL; i++) {
			size_t n = strlen(err);
			snprintf(err + n, errlen - n, "%s%s", i ? ", " : " ",
			    k->enums[i]);
		}
		{
			size_t n = strlen(err);
			snprintf(err + n, errlen - n, ", not \"%s\"", value);
		}
		return -1;
	case CFG_LISTEN:
		return set_listen(cfg, value, err, errlen);
	case CFG_BOOL:
		if (strcasecmp(value, "yes") == 0 ||
		    strcasecmp(value, "true") == 0 ||
		    strcasecmp(value, "on") == 0) {
			*(int *)field = 1;
			return 0;
		}
		if (strcasecmp(value, "no") == 0 ||
		    strcasecmp(value, "false") == 0 ||
		    strcasecmp(value, "off") == 0) {
			*(int *)field = 0;
			return 0;
		}
		snprintf(err, errlen, "\"%s\" must be yes or no, not \"%s\"",
		    k->name, value);
		return -1;
	case CFG_NETS: {
		char why[256];

		if (set_nets(cfg, value, why, sizeof(why)) == -1) {
			snprintf(err, errlen, "%s: %s", k->name, why);
			return -1;
		}
		return 0;
	}
	}
	if (r == -1) {
		static const char *const what[] = {
		    [CFG_NUM] = "a whole number",
		    [CFG_SIZE] = "a size such as 35M or 512k",
		    [CFG_DURATION] = "a duration such as 30s, 5m or 250ms" };
		snprintf(err, errlen, "\"%s\" must be %s, not \"%s\"",
		    k->name, what[k->type], value);
		return -1;
	}
	if (v < k->min || v > k->max) {
		snprintf(err, errlen, "\"%s\" = %s is out of range "
		    "(%llu to %llu%s)", k->name, value,
		    (unsigned long long)(k->type == CFG_DURATION ?
		    k->min / 1000 : k->min),
		    (unsigned long long)(k->type == CFG_DURATION ?
		    k->max / 1000 : k->max),
		    k->type == CFG_DURATION ? " seconds" :
		    k->type == CFG_SIZE ? " bytes" : "");
		return -1;
	}
	*(uint64_t *)field = v;
	return 0;
}

static void
free_listeners(struct config *cfg)
{
	size_t	 i;

	for (i = 0; i < cfg->nlisten; i++) {
		free(cfg->listen[i].cert);
		free(cfg->listen[i].key);
		free(cfg->listen[i].nets);
	}
	free(cfg->listen);
	cfg->listen = NULL;
	cfg->nlisten = 0;
}

static const struct cfg_key *
find_key(const char *section, const char *name)
{
	size_t	 i;

	for (i = 0; i < NELEM(cfg_keys); i++)
		if (strcmp(cfg_keys[i].section, section) == 0 &&
		    strcmp(cfg_keys[i].name, name) == 0)
			return &cfg_keys[i];
	return NULL;
}

static int
known_section(const char *s)
{
	size_t	 i;

	if (strcmp(s, "senders") == 0)
		return 1;
	for (i = 0; i < NELEM(cfg_keys); i++)
		if (strcmp(cfg_keys[i].section, s) == 0)
			return 1;
	return 0;
}

/* [senders] "USER = patterns" or "CIDR = patterns". */
static void
parse_sender(struct parser *p, const char *key, const char *val, int lineno)
{
	struct sender_rule	 r;
	char			*copy, *tok, *save = NULL;

	memset(&r, 0, sizeof(r));
	if (strchr(key, '.') != NULL || strchr(key, ':') != NULL) {
		char why[256];

		if (addr_parse_cidr(key, &r.net) == -1) {
			perr(p, lineno, "[senders] \"%s\" is neither a user "
			    "name nor a network (CIDR)", key);
			return;
		}
		if (parse_net(key, &r.net, why, sizeof(why)) == -1) {
			perr(p, lineno, "[senders] %s", why);
			return;
		}
	} else
		r.user = xstrdup(key);
	copy = xstrdup(val);
	for (tok = strtok_r(copy, ", \t", &save); tok != NULL;
	    tok = strtok_r(NULL, ", \t", &save)) {
		if (strcmp(tok, "*") != 0 && (strchr(tok, '@') == NULL ||
		    strchr(tok + 1, '*') != NULL || tok[0] == '@' ||
		    strrchr(tok, '@')[1] == '\0')) {
			perr(p, lineno, "[senders] %s: \"%s\" is not an "
			    "address, *@domain or *", key, tok);
			continue;
		}
		r.patterns = xrealloc(r.patterns, (r.npatterns + 1) *
		    sizeof(*r.patterns));
		r.patterns[r.npatterns++] = xstrdup(tok);
	}
	free(copy);
	if (r.npatterns == 0) {
		perr(p, lineno, "[senders] %s: no addresses", key);
		free(r.user);
		free(r.patterns);
		return;
	}
	p->cfg->senders = xrealloc(p->cfg->senders,
	    (p->cfg->nsenders + 1) * sizeof(*p->cfg->senders));
	p->cfg->senders[p->cfg->nsenders++] = r;
}

static void
parse_line(struct parser *p, char *line, int lineno, char *section,
    size_t seclen)
{
	const struct cfg_key	*k, *hint;
	char			*s = str_trim(line), *eq, *key, *val;
	char			 err[512];

	if (*s == '\0' || *s == '#' || *s == ';')
		return;
	if (*s == '[') {
		char *rb = strchr(s, ']');
		if (rb == NULL || rb[1] != '\0') {
			perr(p, lineno, "malformed section header \"%s\"", s);
			section[0] = '\0';
			return;
		}
		*rb = '\0';
		s = str_trim(s + 1);
		if (!known_section(s)) {
			perr(p, lineno, "unknown section [%s] (sections: smtp, "
			    "queue, graph, auth, senders, status, sendmail, "
			    "log)", s);
			section[0] = '\0';
			section[1] = '!';	/* keys below: no more noise */
			return;
		}
		strlcpy_r(section, s, seclen);
		return;
	}
	if ((eq = strchr(s, '=')) == NULL) {
		perr(p, lineno, "expected \"key = value\", got \"%s\"", s);
		return;
	}
	*eq = '\0';
	key = str_trim(s);
	val = str_trim(eq + 1);
	if (section[0] == '\0') {
		if (section[1] != '!')
			perr(p, lineno, "\"%s\" outside of any [section]",
			    key);
		return;
	}
	if (strcmp(section, "senders") == 0) {
		parse_sender(p, key, val, lineno);
		return;
	}
	if ((k = find_key(section, key)) == NULL) {
		if ((hint = suggest(section, key)) != NULL)
			perr(p, lineno, "unknown key \"%s\" in [%s] (did you "
			    "mean \"%s\"?)", key, section, hint->name);
		else if ((hint = suggest(NULL, key)) != NULL &&
		    strcmp(hint->name, key) == 0)
			perr(p, lineno, "unknown key \"%s\" in [%s] (it "
			    "belongs in [%s])", key, section, hint->section);
		else
			perr(p, lineno, "unknown key \"%s\" in [%s]", key,
			    section);
		return;
	}
	if (k->type != CFG_LISTEN && p->seen[k - cfg_keys] != 0) {
		perr(p, lineno, "\"%s\" is already set at line %d", key,
		    p->seen[k - cfg_keys]);
		return;
	}
	if (k->type == CFG_LISTEN && p->seen[k - cfg_keys] == 0)
		free_listeners(p->cfg);	/* the first replaces the default */
	if (p->seen[k - cfg_keys] == 0)
		p->seen[k - cfg_keys] = lineno;
	if (set_value(p->cfg, k, val, err, sizeof(err)) == -1)
		perr(p, lineno, "%s", err);
	else if (k->type == CFG_LISTEN)
		p->cfg->listen[p->cfg->nlisten - 1].line = lineno;
}

static void
set_defaults(struct config *cfg)
{
	char	 err[256], host[256];
	size_t	 i;

	for (i = 0; i < NELEM(cfg_keys); i++)
		if (cfg_keys[i].def != NULL &&
		    set_value(cfg, &cfg_keys[i], cfg_keys[i].def, err,
		    sizeof(err)) == -1)
			fatalx("config: bad default: %s", err);
	if (gethostname(host, sizeof(host)) == -1 || host[0] == '\0')
		strlcpy_r(host, "localhost", sizeof(host));
	host[sizeof(host) - 1] = '\0';
	cfg->hostname = xstrdup(host);
}

static int
key_line(const struct parser *p, const char *section, const char *name)
{
	const struct cfg_key	*k = find_key(section, name);

	return k != NULL ? p->seen[k - cfg_keys] : 0;
}

/*
 * A secret file must be a regular file that neither group nor others can
 * read: a leaked client secret lets anyone send mail as any mailbox.
 */
static void
check_secret_file(struct parser *p, int line, const char *what,
    const char *path)
{
	struct stat	 st;
	char		 err[1024];
	int		 fd;

	if (p->client)
		return;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1 ||
	    fstat(fd, &st) == -1) {
		perr(p, line, "%s \"%s\": %s", what, path, strerror(errno));
		if (fd != -1)
			close(fd);
		return;
	}
	close(fd);
	if (!S_ISREG(st.st_mode))
		perr(p, line, "%s \"%s\" is not a regular file", what, path);
	else if (check_private_mode(what, path, (unsigned)st.st_mode, err,
	    sizeof(err)) == -1)
		perr(p, line, "%s", err);
}

/* The client secret's file: private, and not empty (white space aside). */
static void
check_secret(struct parser *p, int line, const char *what, const char *path)
{
	char	 buf[512];
	ssize_t	 n, i;
	int	 fd, errors = p->errors;

	check_secret_file(p, line, what, path);
	if (p->errors > errors || (fd = open(path, O_RDONLY | O_CLOEXEC)) ==
	    -1)
		return;
	n = read(fd, buf, sizeof(buf));
	close(fd);
	for (i = 0; i < n; i++)
		if (!isspace((unsigned char)buf[i]))
			break;
	explicit_bzero(buf, sizeof(buf));
	if (n >= 0 && i == n)
		perr(p, line, "%s \"%s\" is empty; put the client secret's "
		    "Value (from Entra: Certificates & secrets) in it", what,
		    path);
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
check_url(struct parser *p, const char *name, char *url)
{
	const char	*host;
	size_t		 n;
	int		 line = key_line(p, "graph", name);

	if (strncasecmp(url, "https://", 8) == 0)
		host = url + 8;
	else if (strncasecmp(url, "http://", 7) == 0)
		host = url + 7;
	else {
		perr(p, line, "%s \"%s\" must start with https://", name, url);
		return;
	}
	n = strcspn(host, "/?#");
	if (n == 0) {
		perr(p, line, "%s \"%s\" has no host", name, url);
		return;
	}
	if (memchr(host, '@', n) != NULL) {
		perr(p, line, "%s \"%s\": no user name or password in the "
		    "URL", name, url);
		return;
	}
	if (host == url + 7 && !loopback_host(host, n))
		perr(p, line, "%s \"%s\": plain http is allowed only to this "
		    "host; use https://", name, url);
	n = strlen(url);
	while (n > 0 && url[n - 1] == '/')
		url[--n] = '\0';
	/* A common paste: relayd adds the version itself. */
	if (strcmp(name, "graph_url") == 0 && n > 5 &&
	    strcasecmp(url + n - 5, "/v1.0") == 0) {
		url[n - 5] = '\0';
		fprintf(p->errf, "%s:%d: warning: graph_url ends in /v1.0, "
		    "which relayd adds itself; taking graph_url = %s (write "
		    "it so)\n", p->file, line, url);
	}
}

/*
 * [graph] proxy: http:// or https://, and a port (curl would take 1080,
 * seldom what is meant). The password in it is never shown.
 */
static void
check_proxy(struct parser *p)
{
	const char	*u = p->cfg->proxy, *a, *at, *port;
	char		*shown;
	size_t		 n;
	int		 line = key_line(p, "graph", "proxy");

	if (u == NULL)
		return;
	shown = http_redact(u);
	if (strncasecmp(u, "http://", 7) == 0)
		a = u + 7;
	else if (strncasecmp(u, "https://", 8) == 0)
		a = u + 8;
	else {
		perr(p, line, "proxy \"%s\" must start with http:// or "
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
		perr(p, line, "proxy \"%s\" must be http://HOST:PORT (the port "
		    "too)", shown);
	free(shown);
}

static void	check_readable(struct parser *, int, const char *,
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
check_expiry(struct parser *p, int line, const char *what, const char *path,
    const char *todo)
{
	char	 buf[1024];

	switch (expiry_note(what, path, todo, buf, sizeof(buf))) {
	case 2:
		perr(p, line, "%s", buf);
		break;
	case 1:
		fprintf(p->errf, "%s:%d: warning: %s\n", p->file, line, buf);
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
check_pair(struct parser *p, const char *cname, int cline, const char *cert,
    const char *kname, int kline, const char *key)
{
	char	 err[1024];
	int	 errors = p->errors;

	if (p->client)
		return;		/* relayd's files, not the client's */
	check_readable(p, cline, cname, cert);
	check_secret_file(p, kline, kname, key);
	if (p->errors > errors)
		return;
	switch (tls_check_pair(cert, key, err, sizeof(err))) {
	case TLS_PAIR_CERT:
		perr(p, cline, "%s %s", cname, err);
		return;
	case TLS_PAIR_KEY:
		perr(p, kline, "%s %s", kname, err);
		return;
	case TLS_PAIR_MISMATCH:
		perr(p, kline, "%s: %s; set the key made with this certificate",
		    kname, err);
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
check_certificate(struct parser *p, const char *creds)
{
	struct config	*cfg = p->cfg;
	struct jwt_key	*k;
	char		 err[1024];
	int		 line = key_line(p, "graph", "certificate_file");
	int		 errors = p->errors;

	if (cfg->client_secret_file != NULL)
		perr(p, key_line(p, "graph", "client_secret_file"),
		    "client_secret_file and certificate_file are two ways to "
		    "sign in; set only one");
	if (cfg->certificate_file == NULL) {
		perr(p, key_line(p, "graph", "private_key_file"),
		    "private_key_file needs certificate_file (the certificate "
		    "uploaded to the app registration)");
		return;
	}
	check_readable(p, line, "certificate_file", cfg->certificate_file);
	if (cfg->private_key_file != NULL)
		check_secret_file(p, key_line(p, "graph", "private_key_file"),
		    "private_key_file", cfg->private_key_file);
	else if (creds == NULL || *creds == '\0') {
		perr(p, line, "certificate_file needs private_key_file (or the "
		    "systemd credential LoadCredential=private_key)");
		return;
	} else {
		xasprintf(&cfg->private_key_file, "%s/private_key", creds);
		check_secret_file(p, 0, "credential", cfg->private_key_file);
	}
	if (p->errors > errors)
		return;
	if ((k = jwt_key_load(cfg->certificate_file, cfg->private_key_file,
	    cfg->assertion_alg, err, sizeof(err))) == NULL) {
		perr(p, line, "%s", err);
		return;
	}
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
check_secret_expiry(struct parser *p)
{
	struct config	*cfg = p->cfg;
	struct tm	 tm;
	const char	*e;
	char		 buf[1024];
	int		 line = key_line(p, "graph", "client_secret_expires");

	if (cfg->client_secret_expires_text == NULL)
		return;
	memset(&tm, 0, sizeof(tm));
	e = strptime(cfg->client_secret_expires_text, "%Y-%m-%d", &tm);
	if (e == NULL || *e != '\0') {
		perr(p, line, "client_secret_expires \"%s\" is not a date "
		    "(YYYY-MM-DD, as Entra shows it)",
		    cfg->client_secret_expires_text);
		return;
	}
	cfg->client_secret_expires = timegm(&tm);
	if (date_note("client_secret_expires: the client secret", NULL,
	    cfg->client_secret_expires, secret_todo, buf, sizeof(buf)) != 0)
		fprintf(p->errf, "%s:%d: warning: %s\n", p->file, line, buf);
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
check_graph(struct parser *p)
{
	struct config	*cfg = p->cfg;
	const char	*creds;
	char		*path;

	if (cfg->login_url == NULL)
		cfg->login_url = xstrdup(clouds[cfg->cloud].login_url);
	if (cfg->graph_url == NULL)
		cfg->graph_url = xstrdup(clouds[cfg->cloud].graph_url);
	check_url(p, "login_url", cfg->login_url);
	check_url(p, "graph_url", cfg->graph_url);
	check_proxy(p);
	if (strcmp(cfg->mailbox, "envelope") != 0 &&
	    strcmp(cfg->mailbox, "from") != 0 && !mailbox_address(cfg->mailbox))
		perr(p, key_line(p, "graph", "mailbox"), "mailbox \"%s\" must "
		    "be envelope, from or a mailbox address", cfg->mailbox);
	check_secret_expiry(p);
	creds = getenv("CREDENTIALS_DIRECTORY");
	if (cfg->tenant == NULL && cfg->client_id == NULL &&
	    cfg->client_secret_file == NULL && cfg->certificate_file == NULL &&
	    cfg->private_key_file == NULL)
		return;
	cfg->graph_enabled = 1;
	if (cfg->tenant == NULL)
		perr(p, 0, "[graph] tenant is not set (the Directory (tenant) "
		    "ID of the app registration)");
	if (cfg->client_id == NULL)
		perr(p, 0, "[graph] client_id is not set (the Application "
		    "(client) ID of the app registration)");
	if (p->client)
		return;		/* the credentials are relayd's to read */
	if (cfg->certificate_file != NULL || cfg->private_key_file != NULL) {
		check_certificate(p, creds);
		return;
	}
	if (cfg->client_secret_file != NULL) {
		check_secret(p, key_line(p, "graph", "client_secret_file"),
		    "client_secret_file", cfg->client_secret_file);
		return;
	}
	if (creds == NULL || *creds == '\0') {
		perr(p, 0, "[graph] client_secret_file is not set and there is "
		    "no systemd credential (LoadCredential=client_secret); or "
		    "sign in with certificate_file and private_key_file");
		return;
	}
	xasprintf(&path, "%s/client_secret", creds);
	check_secret(p, 0, "credential", path);
	cfg->client_secret_file = path;
}

/* A PEM file relayd must be able to read. */
static void
check_readable(struct parser *p, int line, const char *what,
    const char *path)
{
	if (!p->client && access(path, R_OK) == -1)
		perr(p, line, "%s \"%s\": %s", what, path, strerror(errno));
}

/*
 * Each listener's certificate and key, from its listen line or [smtp]
 * tls_cert/tls_key: a tls listener must have them; a plain one offers
 * STARTTLS when it has them.
 */
static void
check_tls(struct parser *p)
{
	struct config		*cfg = p->cfg;
	struct listen_cfg	*lc;
	size_t			 i;

	if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL))
		perr(p, key_line(p, "smtp", cfg->tls_cert ? "tls_cert" :
		    "tls_key"), "tls_cert and tls_key go together");
	else if (cfg->tls_cert != NULL)
		check_pair(p, "tls_cert", key_line(p, "smtp", "tls_cert"),
		    cfg->tls_cert, "tls_key", key_line(p, "smtp", "tls_key"),
		    cfg->tls_key);
	for (i = 0; i < cfg->nlisten; i++) {
		lc = &cfg->listen[i];
		if ((lc->cert == NULL) != (lc->key == NULL)) {
			perr(p, lc->line, "listen %s: cert= and key= go "
			    "together", lc->text);
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
		if (lc->cert != NULL && p->errors == 0 && !p->client) {
			char	 err[512];
			SSL_CTX	*ctx = tls_ctx_new(lc, err, sizeof(err));

			if (ctx == NULL)
				perr(p, lc->line, "%s", err);
			SSL_CTX_free(ctx);
		}
		if (lc->tls && lc->cert == NULL)
			perr(p, lc->line, "listen %s tls: no certificate (set "
			    "tls_cert and tls_key in [smtp], or cert= and key= "
			    "on the listen line)", lc->text);
	}
}

/*
 * Never an open relay: allow_networks may not cover every address unless
 * relaying needs AUTH anyway, everywhere or on every listener.
 */
static void
check_open_relay(struct parser *p)
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
			perr(p, key_line(p, "smtp", "allow_networks"),
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
check_listen_auth(struct parser *p)
{
	struct config		*cfg = p->cfg;
	struct listen_cfg	*lc;
	size_t			 i;

	for (i = 0; i < cfg->nlisten; i++) {
		lc = &cfg->listen[i];
		if (!lc->require_auth)
			continue;
		if (cfg->users_file == NULL)
			perr(p, lc->line, "listen %s require_auth needs [auth] "
			    "users_file (nobody could send there); set it, or "
			    "drop require_auth", lc->text);
		else if (lc->cert == NULL && !lc->auth_plaintext)
			perr(p, lc->line, "listen %s require_auth: AUTH needs "
			    "TLS and this listener has no certificate (nobody "
			    "could send there); set tls_cert and tls_key, or "
			    "auth_plaintext=yes", lc->text);
	}
}

/* [status] users and groups must exist, or relayd would not start. */
static void
check_status_ids(struct parser *p)
{
	char	 err[512];

	if (status_ids_check(p->cfg->status_users, 0, err, sizeof(err)) == -1)
		perr(p, key_line(p, "status", "users"), "%s", err);
	if (status_ids_check(p->cfg->status_groups, 1, err, sizeof(err)) ==
	    -1)
		perr(p, key_line(p, "status", "groups"), "%s", err);
}

/* Checks that span keys or need the file system. */
static void
check_config(struct parser *p)
{
	struct config	*cfg = p->cfg;
	const char	*c;

	for (c = cfg->hostname; *c != '\0'; c++)
		if (!isalnum((unsigned char)*c) && *c != '.' && *c != '-') {
			perr(p, p->seen[1], "hostname \"%s\" is not a DNS name",
			    cfg->hostname);
			break;
		}
	if (cfg->spool_dir[0] != '/')
		perr(p, 0, "spool_dir \"%s\" must be an absolute path",
		    cfg->spool_dir);
	check_graph(p);
	check_tls(p);
	if (cfg->recipient_domains != NULL) {
		char *copy = xstrdup(cfg->recipient_domains), *t, *sv = NULL;

		for (t = strtok_r(copy, ", \t", &sv); t != NULL;
		    t = strtok_r(NULL, ", \t", &sv)) {
			cfg->rcpt_domains = xrealloc(cfg->rcpt_domains,
			    (cfg->nrcpt_domains + 1) *
			    sizeof(*cfg->rcpt_domains));
			cfg->rcpt_domains[cfg->nrcpt_domains++] = xstrdup(t);
		}
		free(copy);
	}
	check_open_relay(p);
	if (cfg->notify != NULL && !mailbox_address(cfg->notify))
		perr(p, key_line(p, "queue", "notify"), "notify \"%s\" is not "
		    "a mailbox address; name the operator's mailbox "
		    "(user@domain) that gets the digest of dead letters",
		    cfg->notify);
	if (cfg->sendmail_sender != NULL &&
	    !mailbox_address(cfg->sendmail_sender))
		perr(p, key_line(p, "sendmail", "sender"), "sender \"%s\" is "
		    "not a mailbox address; name the tenant's mailbox local "
		    "programs send as (user@domain)", cfg->sendmail_sender);
	if (cfg->require_auth && cfg->users_file == NULL)
		perr(p, key_line(p, "smtp", "require_auth"), "require_auth "
		    "needs [auth] users_file (nobody could relay)");
	check_listen_auth(p);
	if (cfg->users_file != NULL && p->client)
		;	/* not the client's to read */
	else if (cfg->users_file != NULL &&
	    access(cfg->users_file, R_OK) == -1)
		perr(p, key_line(p, "auth", "users_file"), "users_file \"%s\": "
		    "%s; make it with: relayctl passwd USER", cfg->users_file,
		    strerror(errno));
	else if (cfg->users_file != NULL)
		p->errors += auth_users_check(cfg->users_file, p->errf);
	check_status_ids(p);
}

static struct config *
parse(struct parser *p, char *text)
{
	char	 section[64] = "";
	char	*line, *next;
	int	 lineno = 0;

	for (line = text; line != NULL; line = next) {
		lineno++;
		if ((next = strchr(line, '\n')) != NULL)
			*next++ = '\0';
		if (strlen(line) > CONFIG_LINE_MAX) {
			perr(p, lineno, "line longer than %d bytes",
			    CONFIG_LINE_MAX);
			continue;
		}
		parse_line(p, line, lineno, section, sizeof(section));
	}
	check_config(p);
	if (p->errors > 0) {
		config_free(p->cfg);
		return NULL;
	}
	return p->cfg;
}

static struct config *
load_string(const char *name, const char *text, FILE *errf, int client)
{
	struct parser	 p;
	struct config	*cfg;
	char		*copy;

	memset(&p, 0, sizeof(p));
	p.file = name;
	p.errf = errf;
	p.client = client;
	p.cfg = xcalloc(1, sizeof(*p.cfg));
	set_defaults(p.cfg);
	copy = xstrdup(text);
	cfg = parse(&p, copy);
	free(copy);
	if (cfg != NULL)
		cfg->path = xstrdup(name);
	return cfg;
}

struct config *
config_load_string(const char *name, const char *text, FILE *errf)
{
	return load_string(name, text, errf, 0);
}

static struct config *
load_file(const char *path, FILE *errf, int client)
{
	struct config	*cfg;
	FILE		*fp;
	char		*buf;
	size_t		 n;

	if ((fp = fopen(path, "r")) == NULL) {
		fprintf(errf, "%s: cannot open: %s\n", path, strerror(errno));
		return NULL;
	}
	buf = xmalloc(CONFIG_FILE_MAX + 1);
	n = fread(buf, 1, CONFIG_FILE_MAX + 1, fp);
	if (ferror(fp) || n > CONFIG_FILE_MAX) {
		fprintf(errf, "%s: %s\n", path, ferror(fp) ?
		    strerror(errno) : "larger than 1 MiB");
		fclose(fp);
		free(buf);
		return NULL;
	}
	fclose(fp);
	buf[n] = '\0';
	if (memchr(buf, '\0', n) != NULL) {
		fprintf(errf, "%s: contains a NUL byte; not a text file\n",
		    path);
		free(buf);
		return NULL;
	}
	cfg = load_string(path, buf, errf, client);
	free(buf);
	return cfg;
}

struct config *
config_load(const char *path, FILE *errf)
{
	return load_file(path, errf, 0);
}

struct config *
config_load_client(const char *path, FILE *errf)
{
	return load_file(path, errf, 1);
}

void
config_free(struct config *cfg)
{
	size_t	 i;

	if (cfg == NULL)
		return;
	for (i = 0; i < NELEM(cfg_keys); i++)
		if (cfg_keys[i].type == CFG_STR)
			free(*(char **)((char *)cfg + cfg_keys[i].off));
	free_listeners(cfg);
	for (i = 0; i < cfg->nsenders; i++) {
		size_t j;

		for (j = 0; j < cfg->senders[i].npatterns; j++)
			free(cfg->senders[i].patterns[j]);
		free(cfg->senders[i].patterns);
		free(cfg->senders[i].user);
	}
	free(cfg->senders);
	for (i = 0; i < cfg->nrcpt_domains; i++)
		free(cfg->rcpt_domains[i]);
	free(cfg->rcpt_domains);
	free(cfg->allow);
	free(cfg->path);
	free(cfg);
}

static int
listen_same(const struct config *a, const struct config *b)
{
	size_t	 i;

	if (a->nlisten != b->nlisten)
		return 0;
	for (i = 0; i < a->nlisten; i++)
		if (strcmp(a->listen[i].text, b->listen[i].text) != 0 ||
		    a->listen[i].tls != b->listen[i].tls ||
		    a->listen[i].proxy != b->listen[i].proxy ||
		    a->listen[i].auth_plaintext != b->listen[i].auth_plaintext)
			return 0;
	return 1;
}

void
config_diff(const struct config *a, const struct config *b,
    config_diff_cb *cb, void *arg)
{
	const struct cfg_key	*k;
	const char		*pa, *pb;
	size_t			 i;
	int			 same;

	for (i = 0; i < NELEM(cfg_keys); i++) {
		k = &cfg_keys[i];
		pa = (const char *)a + k->off;
		pb = (const char *)b + k->off;
		switch (k->type) {
		case CFG_STR: {
			const char *sa = *(char *const *)pa;
			const char *sb = *(char *const *)pb;

			same = (sa == NULL && sb == NULL) || (sa != NULL &&
			    sb != NULL && strcmp(sa, sb) == 0);
			break;
		}
		case CFG_NUM:
		case CFG_SIZE:
		case CFG_DURATION:
			same = *(const uint64_t *)pa == *(const uint64_t *)pb;
			break;
		case CFG_ENUM:
		case CFG_BOOL:
			same = *(const int *)pa == *(const int *)pb;
			break;
		case CFG_LISTEN:
			same = listen_same(a, b);
			break;
		default:
			continue;	/* lists: taken as they come */
		}
		if (!same)
			cb(arg, k->section, k->name);
	}
}

const char *
config_cloud_name(const struct config *cfg)
{
	return cloud_names[cfg->cloud];
}

/* [senders] has no fixed keys, so no table rows: its help is here. */
static const char senders_help[] = "Who may send as whom: a user (after "
    "AUTH) or a client network, then the envelope senders and From: "
    "addresses it may use (a@b.c, *@b.c or *). The lines for a session's "
    "user and its networks apply; a session no line applies to may use any "
    "address. Refused: 550 5.7.1.";
static const struct {
	const char	*what;
	const char	*line;
} senders_examples[] = {
	{ "The user scanner1 (after AUTH) as itself or any printer:",
	  "scanner1 = scanner@contoso.com, *@printers.contoso.com" },
	{ "Every client of one network as a printer only:",
	  "10.20.30.0/24 = *@printers.contoso.com" },
};

/* "# " comment lines of at most 76 columns. */
static void
print_wrapped(FILE *fp, const char *text)
{
	const char	*p = text, *brk;
	size_t		 n;

	while (*p != '\0') {
		n = strlen(p);
		if (n > 74) {
			for (brk = p + 74; brk > p && *brk != ' '; brk--)
				;
			n = brk > p ? (size_t)(brk - p) : 74;
		}
		fprintf(fp, "# %.*s\n", (int)n, p);
		p += n;
		while (*p == ' ')
			p++;
	}
}

void
config_dump_defaults(FILE *fp)
{
	const char	*section = "";
	size_t		 i;

	for (i = 0; i < NELEM(cfg_keys); i++) {
		const struct cfg_key *k = &cfg_keys[i];
		if (strcmp(section, k->section) != 0) {
			fprintf(fp, "%s[%s]\n", i ? "\n" : "", k->section);
			section = k->section;
		}
		print_wrapped(fp, k->help);
		if (k->def != NULL)
			fprintf(fp, "#%s = %s\n", k->name, k->def);
		else
			fprintf(fp, "#%s =\n", k->name);
	}
	fprintf(fp, "\n[senders]\n");
	print_wrapped(fp, senders_help);
	for (i = 0; i < NELEM(senders_examples); i++)
		fprintf(fp, "# %s\n#%s\n", senders_examples[i].what,
		    senders_examples[i].line);
}

/*
 * relayd.conf(5) in man(7) roff, from the same table: `relayd -M` writes it
 * at build time, so the manual names exactly the keys, defaults and bounds
 * the parser applies.
 */

/* Prose: a backslash or a leading control character escaped; `x` in bold. */
static void
man_text(FILE *fp, const char *s)
{
	int	 code = 0;

	if (*s == '.' || *s == '\'')
		fputs("\\&", fp);
	for (; *s != '\0'; s++) {
		if (*s == '\\')
			fputs("\\e", fp);
		else if (*s == '`') {
			fputs(code ? "\\fR" : "\\fB", fp);
			code = !code;
		} else
			fputc(*s, fp);
	}
	if (code)
		fputs("\\fR", fp);
	fputc('\n', fp);
}

/*
 * A literal to be typed as shown: never hyphenated, and "-" is a minus, not
 * a hyphen.
 */
static void
man_lit(FILE *fp, const char *s)
{
	fputs("\\%", fp);
	for (; *s != '\0'; s++) {
		if (*s == '\\' || *s == '-')
			fputc('\\', fp);
		fputc(*s == '\\' ? 'e' : *s, fp);
	}
}

/* A bound in the form the parser reads: 256M, 1h, 100ms. */
static void
man_bound(char *buf, size_t len, enum cfg_type type, uint64_t v)
{
	static const struct { const char *sfx; uint64_t mul; } sizes[] = {
		{ "G", 1024 * MB }, { "M", MB }, { "k", KB },
	}, durations[] = {
		{ "d", 86400000 }, { "h", 3600000 }, { "m", 60000 },
		{ "s", 1000 }, { "ms", 1 },
	};
	size_t	 i;

	if (type == CFG_SIZE && v != 0)
		for (i = 0; i < NELEM(sizes); i++)
			if (v % sizes[i].mul == 0) {
				snprintf(buf, len, "%llu%s", (unsigned long long)
				    (v / sizes[i].mul), sizes[i].sfx);
				return;
			}
	if (type == CFG_DURATION && v != 0)
		for (i = 0; i < NELEM(durations); i++)
			if (v % durations[i].mul == 0) {
				snprintf(buf, len, "%llu%s", (unsigned long long)
				    (v / durations[i].mul), durations[i].sfx);
				return;
			}
	snprintf(buf, len, "%llu", (unsigned long long)v);
}

/* The tag line: "name = value-syntax". */
static void
man_key_tag(FILE *fp, const struct cfg_key *k)
{
	static const char *const syntax[] = {
		[CFG_STR] = "\\fIstring\\fR",
		[CFG_NUM] = "\\fInumber\\fR",
		[CFG_SIZE] = "\\fIsize\\fR",
		[CFG_DURATION] = "\\fIduration\\fR",
		[CFG_LISTEN] = "\\fIaddress\\fR:\\fIport\\fR "
		    "[\\fIoption\\fR ...]",
		[CFG_NETS] = "\\fInetwork\\fR[, \\fInetwork\\fR ...]",
		[CFG_BOOL] = "\\fByes\\fR | \\fBno\\fR",
	};
	size_t	 i;

	fprintf(fp, ".TP\n\\fB\\%%%s\\fR = ", k->name);
	if (k->type != CFG_ENUM) {
		fprintf(fp, "%s\n", syntax[k->type]);
		return;
	}
	for (i = 0; k->enums[i] != NULL; i++) {
		fputs(i ? " | \\fB" : "\\fB", fp);
		man_lit(fp, k->enums[i]);
		fputs("\\fR", fp);
	}
	fputc('\n', fp);
}

static void
man_key(FILE *fp, const struct cfg_key *k)
{
	char	 lo[32], hi[32];

	man_key_tag(fp, k);
	man_text(fp, k->help);
	if (k->def == NULL && k->type != CFG_NUM && k->type != CFG_SIZE &&
	    k->type != CFG_DURATION && k->type != CFG_LISTEN)
		return;
	fputs(".br\n", fp);
	if (k->def != NULL) {
		fputs("Default: \\fB", fp);
		man_lit(fp, k->def);
		fputs("\\fR.", fp);
	}
	if (k->type == CFG_NUM || k->type == CFG_SIZE ||
	    k->type == CFG_DURATION) {
		man_bound(lo, sizeof(lo), k->type, k->min);
		man_bound(hi, sizeof(hi), k->type, k->max);
		fprintf(fp, "%sRange: %s to %s.", k->def != NULL ? " " : "",
		    lo, hi);
	}
	if (k->type == CFG_LISTEN)
		fputs(" May be repeated; the first replaces the default.", fp);
	fputc('\n', fp);
}

static const char *const man_example[] = {
	"[smtp]",
	"listen = 0.0.0.0:25",
	"listen = 0.0.0.0:465 tls",
	"hostname = relay.contoso.com",
	"allow_networks = 10.20.0.0/16, 2001:db8:20::/48",
	"tls_cert = /etc/relayd/relay.contoso.com.pem",
	"tls_key = /etc/relayd/relay.contoso.com.key",
	"",
	"[graph]",
	"tenant = contoso.onmicrosoft.com",
	"client_id = 00000000-0000-0000-0000-000000000000",
	"client_secret_file = /etc/relayd/client_secret",
	"mailbox = envelope",
};

void
config_write_man(FILE *fp)
{
	const char	*section = "";
	size_t		 i;

	fprintf(fp, ".\\\" Generated by `relayd -M` from relayd/config.c; "
	    "edit the key table there.\n"
	    ".TH RELAYD.CONF 5 %s \"relayd %s\" \"File Formats Manual\"\n"
	    ".SH NAME\n"
	    "relayd.conf \\- relayd configuration file\n"
	    ".SH SYNOPSIS\n"
	    ".B %s/relayd/relayd.conf\n"
	    ".SH DESCRIPTION\n", RELEASE_DATE, PACKAGE_VERSION, SYSCONFDIR);
	fputs(".BR relayd (8)\n"
	    "reads its settings from this file at start, and again on\n"
	    "SIGHUP.\n"
	    ".B relayd \\-n\n"
	    "checks a file and reports every error as\n"
	    ".IR file : line :\n"
	    ".IR message ;\n"
	    "a file with any error is refused as a whole (exit status 78).\n"
	    ".B relayd \\-D\n"
	    "prints every key with its default and description as a\n"
	    "commented configuration file.\n"
	    ".SS Syntax\n"
	    "A line is a section header\n"
	    ".RI [ section ],\n"
	    "a setting\n"
	    ".IR key \" = \" value ,\n"
	    "a comment (its first character other than blanks is\n"
	    ".B #\n"
	    "or\n"
	    ".BR ; ),\n"
	    "or blank.\n"
	    "Blanks around keys and values are ignored.\n"
	    "A comment cannot follow a value on its line: the rest of the\n"
	    "line after\n"
	    ".B =\n"
	    "is the value, quotes and\n"
	    ".B #\n"
	    "included.\n"
	    "Every setting belongs to the section above it.\n"
	    "Section and key names are case-sensitive.\n"
	    "Unknown sections and keys are errors (with the likely key\n"
	    "suggested), and so is a key set twice, except\n"
	    ".BR listen .\n"
	    "A key left out has its default.\n"
	    "A line may be up to 4096 bytes long, the file up to 1 MiB.\n"
	    ".SS Values\n"
	    ".TP\n"
	    ".I size\n"
	    "A whole number of bytes, or followed by\n"
	    ".B k\n"
	    "(KiB),\n"
	    ".B M\n"
	    "(MiB) or\n"
	    ".B G\n"
	    "(GiB), in either case, optionally with a\n"
	    ".BR b :\n"
	    ".BR 35M ,\n"
	    ".BR 512kb .\n"
	    ".TP\n"
	    ".I duration\n"
	    "A whole number followed by\n"
	    ".BR ms ,\n"
	    ".BR s ,\n"
	    ".B m\n"
	    "or\n"
	    ".B min\n"
	    "(minutes),\n"
	    ".B h\n"
	    "or\n"
	    ".BR d ,\n"
	    "in either case; without a unit, seconds:\n"
	    ".BR 250ms ,\n"
	    ".BR 30s ,\n"
	    ".BR 5m .\n"
	    ".TP\n"
	    ".I number\n"
	    "A whole number in decimal.\n"
	    ".TP\n"
	    ".B yes \\fR|\\fP no\n"
	    ".BR yes ,\n"
	    ".B true\n"
	    "or\n"
	    ".BR on ;\n"
	    ".BR no ,\n"
	    ".B false\n"
	    "or\n"
	    ".BR off ,\n"
	    "in either case.\n"
	    ".TP\n"
	    ".I network\n"
	    "An IPv4 or IPv6 address with an optional prefix length:\n"
	    ".BR 10.20.0.0/16 ,\n"
	    ".BR 2001:db8::/32 ,\n"
	    ".B 192.0.2.7\n"
	    "(one host).\n"
	    "Lists are separated by commas or blanks.\n"
	    ".TP\n"
	    ".I string\n"
	    "The text as written, not empty.\n"
	    ".PP\n"
	    "Names in bold after\n"
	    ".B =\n"
	    "are the only values allowed, in either case.\n", fp);
	for (i = 0; i < NELEM(cfg_keys); i++) {
		if (strcmp(section, cfg_keys[i].section) != 0) {
			section = cfg_keys[i].section;
			fprintf(fp, ".SS [%s]\n", section);
		}
		man_key(fp, &cfg_keys[i]);
	}
	fputs(".SS [senders]\n", fp);
	man_text(fp, senders_help);
	fputs("Each line is\n"
	    ".IR user \" = \" pattern [,\n"
	    ".IR pattern \" ...]\"\n"
	    "or\n"
	    ".IR network \" = \" pattern [,\n"
	    ".IR pattern \" ...];\n"
	    "a key with a dot or colon in it is a network.\n", fp);
	for (i = 0; i < NELEM(senders_examples); i++) {
		fputs(".PP\n", fp);
		man_text(fp, senders_examples[i].what);
		fputs(".RS\n.nf\n", fp);
		man_lit(fp, senders_examples[i].line);
		fputs("\n.fi\n.RE\n", fp);
	}
	fputs(".SH EXAMPLES\n"
	    "Mail from the printers' network, over STARTTLS or implicit TLS,\n"
	    "sent by each message's envelope sender through Graph:\n"
	    ".PP\n.RS\n.nf\n", fp);
	for (i = 0; i < NELEM(man_example); i++) {
		man_lit(fp, man_example[i]);
		fputc('\n', fp);
	}
	fputs(".fi\n.RE\n", fp);
	fprintf(fp, ".SH FILES\n"
	    ".TP\n"
	    ".I %s/relayd/relayd.conf\n"
	    "The configuration file.\n"
	    ".TP\n"
	    ".I %s/relayd/relayd.conf.example\n"
	    "Every key with its default, commented out, as printed by\n"
	    ".BR \"relayd \\-D\" .\n"
	    ".SH SEE ALSO\n"
	    ".BR relayctl (8),\n"
	    ".BR relayd (8),\n"
	    ".BR relayd\\-sendmail (8)\n", SYSCONFDIR, SYSCONFDIR);
}

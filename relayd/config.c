/*
 * config.c - relayd.conf's key table and its reader.
 *
 * INI syntax: "[section]", "key = value", "#" or ";" comments on their own
 * line. One table lists every key with its type, default, bounds and help;
 * reading, range checks, reload's diff, the commented example config and
 * the man page (config_doc.c) are all driven by it, so they cannot drift
 * apart. Every error is reported, each as "FILE:LINE: message", rather than
 * stopping at the first.
 *
 * This file is the bottom of relayd's dependency graph: it reads text into
 * a struct config and knows nothing of TLS, tokens, AUTH or the status
 * socket (only util and log). What spans keys or needs another module is
 * checked afterwards, in config_check.c.
 *
 * A hand-written reader rather than inih: inih does not hand line numbers to
 * its callback in Debian's build, and precise "FILE:LINE:" errors for every
 * key are the point of this module.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "util.h"

#define CONFIG_LINE_MAX		4096
#define CONFIG_FILE_MAX		(1024 * 1024)

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

const struct cfg_key config_keys[] = {
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
	{ "smtp", "max_connections", CFG_NUM, "0", 0, 1000000,
	  OFF(max_connections), NULL,
	  "Simultaneous SMTP connections in total. 0: as many as the "
	  "descriptor limit allows (relayd raises RLIMIT_NOFILE to its hard "
	  "limit, LimitNOFILE= in relayd.service, and keeps 256 for itself), "
	  "at most 50000; a larger value than that is lowered, with a "
	  "warning. The figure in force is logged at start. From 70% of it "
	  "relayd is under stress (see stress_timeout): a new client that "
	  "finds every connection taken makes room by closing the session "
	  "idle longest that has not started a message (421 4.7.0)." },
	{ "smtp", "loops", CFG_NUM, "0", 0, 64, OFF(loops), NULL,
	  "Event loops (threads) that run the SMTP sessions. 0: one per "
	  "core but one, at most 16 (so 1 on a machine of 1 or 2 cores): the "
	  "core left over commits the spool and runs delivery. One loop "
	  "takes thousands of messages a second; more help where top -H "
	  "shows the \"smtp loop\" threads near 100% of a core with cores "
	  "to spare. Takes effect at restart." },
	{ "smtp", "stress_timeout", CFG_DURATION, "10s", 1000, 3600 * 1000,
	  OFF(stress_timeout_ms), NULL,
	  "Under stress (open connections at 70% of max_connections, until "
	  "they are below 50%): the command and greeting timeout, instead of "
	  "command_timeout if that is longer (Postfix uses 10s too)." },
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
	  " envelope (the MAIL FROM address; for a null sender the From: "
	  "header), from (the From: header; without one the MAIL FROM "
	  "address), or one fixed ADDRESS for everything. Decided when a "
	  "message is accepted and kept with it: a reload changes it for new "
	  "messages only." },
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
	{ "cluster", "redis", CFG_STR, NULL, 0, 0, OFF(cluster_redis), NULL,
	  "redis://HOST:PORT[/DB]: the Redis that several relayd instances "
	  "sending for one app registration share, so that together they "
	  "keep Graph's limits per mailbox as one relay would: 4 requests in "
	  "flight, [queue] messages_per_minute, 10,000 recipients a day, and "
	  "429 holds. Only counters and leases go there, never a message. "
	  "When Redis is unreachable each node goes on alone with its share "
	  "of each limit (the limit divided by the nodes last seen, at least "
	  "1) and says so in the log, relayctl status and the metrics. HOST "
	  "may be a name: it is looked up (/etc/hosts, then DNS) at each "
	  "reconnect without holding up delivery, and one that does not "
	  "resolve counts as Redis unreachable. Unset: relayd works alone." },
	{ "cluster", "password_file", CFG_STR, NULL, 0, 0,
	  OFF(cluster_password_file), NULL,
	  "File holding the Redis password (requirepass, or an ACL user's "
	  "\"USER PASSWORD\"); must not be open to group or others. Read "
	  "once at start by the delivery process; the SMTP process cannot "
	  "open it. Unset: no AUTH." },
	{ "cluster", "node", CFG_STR, NULL, 0, 0, OFF(cluster_node), NULL,
	  "This instance's name among the nodes (letters, digits, . _ -); "
	  "must be unique among them: two instances on one host need a name "
	  "each. Default: the host name." },
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
	{ "security", "sandbox", CFG_BOOL, "yes", 0, 0, OFF(sandbox), NULL,
	  "After start-up, relayd confines itself: no_new_privs, a seccomp "
	  "filter that allows only the system calls it needs (any other "
	  "stops it with \"relayd: seccomp: system call N ... not allowed\" "
	  "in the log), and Landlock rules (where the kernel has them) that "
	  "let it open only the spool, its configuration, certificates, the "
	  "users file and the system files libraries read; never the Graph "
	  "credential files. no: none of it, an escape hatch for a kernel or "
	  "C library that needs a system call relayd does not know (please "
	  "report it). The log at start says what is in force." },
};

const size_t config_nkeys = NELEM(config_keys);

static void	report(struct config_reader *, int, int, const char *, va_list)
		    PRINTFLIKE(4, 0);

/* "FILE:LINE: " ("FILE: " for the file as a whole), then the message. */
static void
report(struct config_reader *r, int line, int warning, const char *fmt,
    va_list ap)
{
	if (line > 0 || warning)
		fprintf(r->errf, "%s:%d: ", r->file, line);
	else
		fprintf(r->errf, "%s: ", r->file);
	if (warning)
		fputs("warning: ", r->errf);
	vfprintf(r->errf, fmt, ap);
	fputc('\n', r->errf);
}

void
config_error(struct config_reader *r, int line, const char *fmt, ...)
{
	va_list	 ap;

	r->errors++;
	va_start(ap, fmt);
	report(r, line, 0, fmt, ap);
	va_end(ap);
}

void
config_warning(struct config_reader *r, int line, const char *fmt, ...)
{
	va_list	 ap;

	va_start(ap, fmt);
	report(r, line, 1, fmt, ap);
	va_end(ap);
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

	for (i = 0; i < config_nkeys; i++) {
		if (section != NULL && strcmp(config_keys[i].section, section))
			continue;
		d = edit_distance(name, config_keys[i].name);
		if (d < bestd) {
			bestd = d;
			best = &config_keys[i];
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

	for (i = 0; i < config_nkeys; i++)
		if (strcmp(config_keys[i].section, section) == 0 &&
		    strcmp(config_keys[i].name, name) == 0)
			return &config_keys[i];
	return NULL;
}

static int
known_section(const char *s)
{
	size_t	 i;

	if (strcmp(s, "senders") == 0)
		return 1;
	for (i = 0; i < config_nkeys; i++)
		if (strcmp(config_keys[i].section, s) == 0)
			return 1;
	return 0;
}

/* [senders] "USER = patterns" or "CIDR = patterns". */
static void
parse_sender(struct config_reader *p, const char *key, const char *val,
    int lineno)
{
	struct sender_rule	 r;
	char			*copy, *tok, *save = NULL;

	memset(&r, 0, sizeof(r));
	if (strchr(key, '.') != NULL || strchr(key, ':') != NULL) {
		char why[256];

		if (addr_parse_cidr(key, &r.net) == -1) {
			config_error(p, lineno, "[senders] \"%s\" is neither a "
			    "user name nor a network (CIDR)", key);
			return;
		}
		if (parse_net(key, &r.net, why, sizeof(why)) == -1) {
			config_error(p, lineno, "[senders] %s", why);
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
			config_error(p, lineno, "[senders] %s: \"%s\" is not "
			    "an address, *@domain or *", key, tok);
			continue;
		}
		r.patterns = xrealloc(r.patterns, (r.npatterns + 1) *
		    sizeof(*r.patterns));
		r.patterns[r.npatterns++] = xstrdup(tok);
	}
	free(copy);
	if (r.npatterns == 0) {
		config_error(p, lineno, "[senders] %s: no addresses", key);
		free(r.user);
		free(r.patterns);
		return;
	}
	p->cfg->senders = xrealloc(p->cfg->senders,
	    (p->cfg->nsenders + 1) * sizeof(*p->cfg->senders));
	p->cfg->senders[p->cfg->nsenders++] = r;
}

static void
parse_line(struct config_reader *p, char *line, int lineno, char *section,
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
			config_error(p, lineno, "malformed section header "
			    "\"%s\"", s);
			section[0] = '\0';
			return;
		}
		*rb = '\0';
		s = str_trim(s + 1);
		if (!known_section(s)) {
			config_error(p, lineno, "unknown section [%s] "
			    "(sections: smtp, queue, graph, auth, senders, "
			    "status, sendmail, log)", s);
			section[0] = '\0';
			section[1] = '!';	/* keys below: no more noise */
			return;
		}
		strlcpy_r(section, s, seclen);
		return;
	}
	if ((eq = strchr(s, '=')) == NULL) {
		config_error(p, lineno, "expected \"key = value\", got \"%s\"",
		    s);
		return;
	}
	*eq = '\0';
	key = str_trim(s);
	val = str_trim(eq + 1);
	if (section[0] == '\0') {
		if (section[1] != '!')
			config_error(p, lineno, "\"%s\" outside of any "
			    "[section]", key);
		return;
	}
	if (strcmp(section, "senders") == 0) {
		parse_sender(p, key, val, lineno);
		return;
	}
	if ((k = find_key(section, key)) == NULL) {
		if ((hint = suggest(section, key)) != NULL)
			config_error(p, lineno, "unknown key \"%s\" in [%s] "
			    "(did you mean \"%s\"?)", key, section, hint->name);
		else if ((hint = suggest(NULL, key)) != NULL &&
		    strcmp(hint->name, key) == 0)
			config_error(p, lineno, "unknown key \"%s\" in [%s] "
			    "(it belongs in [%s])", key, section,
			    hint->section);
		else
			config_error(p, lineno, "unknown key \"%s\" in [%s]",
			    key, section);
		return;
	}
	if (k->type != CFG_LISTEN && p->seen[k - config_keys] != 0) {
		config_error(p, lineno, "\"%s\" is already set at line %d", key,
		    p->seen[k - config_keys]);
		return;
	}
	if (k->type == CFG_LISTEN && p->seen[k - config_keys] == 0)
		free_listeners(p->cfg);	/* the first replaces the default */
	if (p->seen[k - config_keys] == 0)
		p->seen[k - config_keys] = lineno;
	if (set_value(p->cfg, k, val, err, sizeof(err)) == -1)
		config_error(p, lineno, "%s", err);
	else if (k->type == CFG_LISTEN)
		p->cfg->listen[p->cfg->nlisten - 1].line = lineno;
}

static void
set_defaults(struct config *cfg)
{
	char	 err[256], host[256];
	size_t	 i;

	for (i = 0; i < config_nkeys; i++)
		if (config_keys[i].def != NULL &&
		    set_value(cfg, &config_keys[i], config_keys[i].def, err,
		    sizeof(err)) == -1)
			fatalx("config: bad default: %s", err);
	if (gethostname(host, sizeof(host)) == -1 || host[0] == '\0')
		strlcpy_r(host, "localhost", sizeof(host));
	host[sizeof(host) - 1] = '\0';
	cfg->hostname = xstrdup(host);
	cfg->cluster_node = xstrdup(host);	/* [cluster] node's default */
}

int
config_key_line(const struct config_reader *p, const char *section,
    const char *name)
{
	const struct cfg_key	*k = find_key(section, name);

	return k != NULL ? p->seen[k - config_keys] : 0;
}


/* Values derived from others once the file is read: no error can come of it. */
static void
derive(struct config *cfg)
{
	char	*copy, *t, *sv = NULL;

	if (cfg->login_url == NULL)
		cfg->login_url = xstrdup(clouds[cfg->cloud].login_url);
	if (cfg->graph_url == NULL)
		cfg->graph_url = xstrdup(clouds[cfg->cloud].graph_url);
	if (cfg->recipient_domains == NULL)
		return;
	copy = xstrdup(cfg->recipient_domains);
	for (t = strtok_r(copy, ", \t", &sv); t != NULL;
	    t = strtok_r(NULL, ", \t", &sv)) {
		cfg->rcpt_domains = xrealloc(cfg->rcpt_domains,
		    (cfg->nrcpt_domains + 1) * sizeof(*cfg->rcpt_domains));
		cfg->rcpt_domains[cfg->nrcpt_domains++] = xstrdup(t);
	}
	free(copy);
}

void
config_read(struct config_reader *p, const char *name, const char *text,
    FILE *errf, int client)
{
	char	 section[64] = "";
	char	*copy, *line, *next;
	int	 lineno = 0;

	memset(p, 0, sizeof(*p));
	p->file = name;
	p->errf = errf;
	p->client = client;
	p->seen = xcalloc(config_nkeys, sizeof(*p->seen));
	p->cfg = xcalloc(1, sizeof(*p->cfg));
	set_defaults(p->cfg);
	copy = xstrdup(text);
	for (line = copy; line != NULL; line = next) {
		lineno++;
		if ((next = strchr(line, '\n')) != NULL)
			*next++ = '\0';
		if (strlen(line) > CONFIG_LINE_MAX) {
			config_error(p, lineno, "line longer than %d bytes",
			    CONFIG_LINE_MAX);
			continue;
		}
		parse_line(p, line, lineno, section, sizeof(section));
	}
	free(copy);
	derive(p->cfg);
}

struct config *
config_read_done(struct config_reader *p)
{
	struct config	*cfg = p->cfg;

	free(p->seen);
	p->seen = NULL;
	p->cfg = NULL;
	if (p->errors > 0) {
		config_free(cfg);
		return NULL;
	}
	cfg->path = xstrdup(p->file);
	return cfg;
}

char *
config_read_file(const char *path, FILE *errf)
{
	FILE	*fp;

	if ((fp = fopen(path, "r")) == NULL) {
		fprintf(errf, "%s: cannot open: %s\n", path, strerror(errno));
		return NULL;
	}
	return config_read_stream(fp, path, errf);
}

char *
config_read_stream(FILE *fp, const char *path, FILE *errf)
{
	char	*buf;
	size_t	 n;

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
	return buf;
}

void
config_free(struct config *cfg)
{
	size_t	 i;

	if (cfg == NULL)
		return;
	for (i = 0; i < config_nkeys; i++)
		if (config_keys[i].type == CFG_STR)
			free(*(char **)((char *)cfg + config_keys[i].off));
	free_listeners(cfg);
	free(cfg->cluster_host);
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

	for (i = 0; i < config_nkeys; i++) {
		k = &config_keys[i];
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

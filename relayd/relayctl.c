/*
 * relayctl.c - relayd's control tool.
 *
 *   relayctl [-s SOCKET] [-c CONFIG] status|dead [--json]
 *   relayctl [-s SOCKET] [-c CONFIG] queue [FILTER] [--json]
 *   relayctl [-s SOCKET] [-c CONFIG] show [--json] ID
 *   relayctl [-s SOCKET] [-c CONFIG] retry|delete|hold|release ID|all|FILTER
 *   relayctl [-s SOCKET] [-c CONFIG] pause|resume
 *   relayctl [-s SOCKET] [-c CONFIG] export ID
 *   relayctl [-s SOCKET] [-c CONFIG] metrics
 *   relayctl [-s SOCKET] [-c CONFIG] import DIR
 *   relayctl [-s SOCKET] [-c CONFIG] unlock ADDRESS
 *   relayctl [-s SOCKET] [-c CONFIG] history [--json] [--since DURATION]
 *       [--sender A] [--rcpt A] [--client A] [--id ID] [--status S]
 *       [--limit N]
 *   relayctl [-c CONFIG] test [--to ADDRESS] [--from ADDRESS]
 *   relayctl passwd USER [--cram-md5]
 *
 * The first ones talk to relayd's status socket (-s, else [status] socket
 * of the config, else the default): a line out, a line of JSON back.
 * show, retry, delete and export also take a dead letter's id; `export`
 * gets an open spool file passed with the answer (SCM_RIGHTS) and copies
 * the message from it to standard output, as the client sent it.
 * `test` does what relayd would: fetches a token with the config's
 * credentials and, with --to, sends a short message through Graph; what
 * goes wrong is explained in an admin's words. `passwd` reads a password
 * (one line from standard input, or asked twice on a terminal) and prints
 * a line for [auth] users_file: a yescrypt hash for PLAIN and LOGIN and
 * SCRAM-SHA-256 keys, never the password itself, except with --cram-md5,
 * which needs it (and says so).
 *
 * FILTER is --mailbox ADDRESS or --sender ADDRESS ("<>": the null sender).
 *
 * Exit codes: 0 done; 1 the command failed (no such message; one message
 * that could not be held, retried or deleted now, with why: being sent,
 * its mailbox on hold; an address that is not locked out; the token or
 * Graph refused in `test`); 64 usage; 69 relayd not reachable; 77
 * permission denied; 78 configuration error (sysexits).
 */
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "auth.h"
#include "autoconf.h"
#include "config.h"
#include "config_check.h"
#include "graph_result.h"
#include "history.h"
#include "http.h"
#include "log.h"
#include "spool_source.h"
#include "token.h"
#include "util.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define RELAYD_CONF	SYSCONFDIR "/relayd/relayd.conf"
#define STATUS_SOCKET	"/run/relayd/status.sock"
#define ANSWER_MAX	(64 * 1024 * 1024)

static const char	*conf_path;
static int		 passed_fd = -1;	/* export: relayd's file */
static int		 conf_given;
static const char	*sock_path;

static void
usage_to(FILE *fp, int rc)
{
	fprintf(fp,
	    "usage: relayctl [-s socket] [-c config] status [--json]\n"
	    "       relayctl [-s socket] [-c config] queue [filter] [--json]\n"
	    "       relayctl [-s socket] [-c config] dead [--json]\n"
	    "       relayctl [-s socket] [-c config] show [--json] ID\n"
	    "       relayctl [-s socket] [-c config] retry|delete|hold|release "
	    "ID|all|filter\n"
	    "       relayctl [-s socket] [-c config] pause|resume\n"
	    "       relayctl [-s socket] [-c config] export ID\n"
	    "         filter: --mailbox ADDRESS | --sender ADDRESS\n"
	    "       relayctl [-s socket] [-c config] metrics\n"
	    "       relayctl [-s socket] [-c config] unlock ADDRESS\n"
	    "       relayctl [-s socket] [-c config] import DIR\n"
	    "       relayctl [-s socket] [-c config] history [--json] "
	    "[--since DURATION]\n"
	    "           [--sender ADDRESS] [--rcpt ADDRESS] [--client ADDRESS]"
	    "\n           [--id QUEUE-ID|MESSAGE-ID] [--status STATUS] "
	    "[--limit N]\n"
	    "       relayctl [-c config] test [--to ADDRESS] [--from ADDRESS]\n"
	    "       relayctl passwd USER [--cram-md5]\n"
	    "       relayctl -V | --help\n");
	exit(rc);
}

static void
usage(void)
{
	usage_to(stderr, EX_USAGE);
}

/* One line from stdin; on a terminal without echo. NULL at EOF. */
static char *
read_password(const char *prompt)
{
	struct termios	 old, quiet;
	char		*line = NULL;
	size_t		 cap = 0;
	ssize_t		 n;
	int		 tty = isatty(STDIN_FILENO);

	if (tty) {
		fprintf(stderr, "%s", prompt);
		tcgetattr(STDIN_FILENO, &old);
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
	}
	n = getline(&line, &cap, stdin);
	if (tty) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
		fputc('\n', stderr);
	}
	if (n <= 0) {
		free(line);
		return NULL;
	}
	line[strcspn(line, "\r\n")] = '\0';
	return line;
}

static int
cmd_passwd(int argc, char **argv)
{
	char		*pw, *again, *entry, err[256];
	const char	*user = NULL;
	int		 cram = 0, i;

	/* USER and --cram-md5 in either order. */
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--cram-md5") == 0)
			cram = 1;
		else if (argv[i][0] == '-' || user != NULL)
			usage();
		else
			user = argv[i];
	}
	if (user == NULL)
		usage();
	if ((pw = read_password("Password: ")) == NULL || *pw == '\0') {
		fprintf(stderr, "relayctl: no password given\n");
		return 1;
	}
	if (isatty(STDIN_FILENO)) {
		again = read_password("Again: ");
		if (again == NULL || strcmp(pw, again) != 0) {
			fprintf(stderr, "relayctl: the passwords differ\n");
			return 1;
		}
		free(again);
	}
	if ((entry = auth_make_entry(user, pw, cram, err, sizeof(err))) ==
	    NULL) {
		fprintf(stderr, "relayctl: %s\n", err);
		return 1;
	}
	printf("%s\n", entry);
	if (cram)
		fprintf(stderr, "relayctl: note: cram-md5= holds the password "
		    "itself (CRAM-MD5 needs it); keep the users file mode "
		    "600\n");
	explicit_bzero(pw, strlen(pw));
	free(pw);
	free(entry);
	return 0;
}

/* ---- the status socket ---- */

/* The socket: -s, else [status] socket of the config, else the default. */
static char *
socket_path(void)
{
	struct config	*cfg;
	char		*path;
	FILE		*devnull;

	if (sock_path != NULL)
		return xstrdup(sock_path);
	if (!conf_given && access(conf_path, R_OK) == -1)
		return xstrdup(STATUS_SOCKET);
	devnull = conf_given ? stderr : fopen("/dev/null", "w");
	cfg = config_load_client(conf_path, devnull != NULL ? devnull : stderr);
	if (devnull != NULL && devnull != stderr)
		fclose(devnull);
	if (cfg == NULL) {
		if (conf_given)
			exit(EX_CONFIG);
		fprintf(stderr, "relayctl: %s does not load (relayd -n says "
		    "why); trying %s (-s names another)\n", conf_path,
		    STATUS_SOCKET);
		return xstrdup(STATUS_SOCKET);
	}
	path = xstrdup(cfg->status_socket != NULL && *cfg->status_socket ?
	    cfg->status_socket : STATUS_SOCKET);
	config_free(cfg);
	return path;
}

/* Leaves with code, freeing what ask() holds (leak checkers look). */
static void
bail(int code, char *path, char *buf, json_object *ans)
    __attribute__((noreturn));

static void
bail(int code, char *path, char *buf, json_object *ans)
{
	free(path);
	free(buf);
	json_object_put(ans);
	exit(code);
}

/* Connects to the status socket; exits with why on failure. */
static int
status_connect(char *path)
{
	struct sockaddr_un	 sun;
	int			 fd, code;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "relayctl: socket path too long: %s\n", path);
		bail(EX_USAGE, path, NULL, NULL);
	}
	strlcpy_r(sun.sun_path, path, sizeof(sun.sun_path));
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
	    connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		code = errno == EACCES || errno == EPERM ? EX_NOPERM :
		    EX_UNAVAILABLE;
		fprintf(stderr, "relayctl: %s: %s (%s)\n", path,
		    strerror(errno), code == EX_NOPERM ? "root, relayd's "
		    "user and [status] users/groups may use it" : "is relayd "
		    "running? -s or [status] socket names another socket");
		if (fd != -1)
			close(fd);
		bail(code, path, NULL, NULL);
	}
	/* A refused peer finds the socket closed: read why all the same. */
	signal(SIGPIPE, SIG_IGN);
	return fd;
}

/* Sends one command and returns relayd's JSON answer; exits on failure. */
static json_object *
ask(const char *cmd)
{
	json_object		*ans, *e;
	char			*path = socket_path(), *buf = NULL;
	size_t			 len = 0, cap = 0;
	ssize_t			 n;
	int			 fd = status_connect(path);

	if ((write(fd, cmd, strlen(cmd)) != (ssize_t)strlen(cmd) ||
	    write(fd, "\n", 1) != 1) && errno != EPIPE) {
		fprintf(stderr, "relayctl: %s: %s\n", path, strerror(errno));
		close(fd);
		bail(EX_UNAVAILABLE, path, NULL, NULL);
	}
	for (;;) {
		if (len + 65536 > cap) {
			cap = cap * 2 + 65536;
			buf = xrealloc(buf, cap + 1);
		}
		n = fd_recvmsg(fd, buf + len, cap - len, &passed_fd);
		if (n <= 0)
			break;
		len += (size_t)n;
		if (memchr(buf + len - (size_t)n, '\n', (size_t)n) != NULL ||
		    len > ANSWER_MAX)
			break;
	}
	close(fd);
	if (buf == NULL || len == 0) {
		fprintf(stderr, "relayctl: %s: no answer from relayd\n", path);
		bail(EX_UNAVAILABLE, path, buf, NULL);
	}
	buf[len] = '\0';
	if ((ans = json_tokener_parse(buf)) == NULL) {
		fprintf(stderr, "relayctl: %s: an answer that is not JSON\n",
		    path);
		bail(EX_PROTOCOL, path, buf, NULL);
	}
	free(buf);
	free(path);
	if (json_object_object_get_ex(ans, "error", &e)) {
		fprintf(stderr, "relayctl: %s\n", json_object_get_string(e));
		bail(strncmp(json_object_get_string(e), "permission denied",
		    17) == 0 ? EX_NOPERM : 1, NULL, NULL, ans);
	}
	return ans;
}

static const char *
jstr(json_object *o, const char *k)
{
	json_object	*v;

	if (!json_object_object_get_ex(o, k, &v) || v == NULL)
		return NULL;
	return json_object_get_string(v);
}

static int64_t
jint(json_object *o, const char *k)
{
	json_object	*v;

	if (!json_object_object_get_ex(o, k, &v) || v == NULL)
		return 0;
	return json_object_get_int64(v);
}

static void
print_json(json_object *o)
{
	printf("%s\n", json_object_to_json_string_ext(o,
	    JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
}

/* 3h12m, 45s ... */
static const char *
span(int64_t s, char *buf, size_t len)
{
	if (s < 60)
		snprintf(buf, len, "%llds", (long long)s);
	else if (s < 3600)
		snprintf(buf, len, "%lldm", (long long)(s / 60));
	else if (s < 86400)
		snprintf(buf, len, "%lldh%02lldm", (long long)(s / 3600),
		    (long long)(s % 3600 / 60));
	else
		snprintf(buf, len, "%lldd%02lldh", (long long)(s / 86400),
		    (long long)(s % 86400 / 3600));
	return buf;
}

/* Delivery on or off, and Graph-wide: held after failures, or not. */
static void
print_delivery(json_object *o)
{
	json_object	*g;

	if (!json_object_object_get_ex(o, "graph", &g) || g == NULL) {
		printf("delivery: %s\n", jstr(o, "delivery"));
		return;
	}
	if (strcmp(jstr(g, "state"), "held") == 0)
		printf("graph: unavailable, all deliveries held until %s (%lld "
		    "failures in a row)\n", jstr(g, "held_until"),
		    (long long)jint(g, "failures"));
	else if (jint(g, "failures") > 0)
		printf("delivery: on; graph: %lld failure(s) in a row\n",
		    (long long)jint(g, "failures"));
	else
		printf("delivery: %s\n", jstr(o, "delivery"));
}

/* Valid until when, or failing since when and why (with what to do). */
static void
print_token(json_object *o)
{
	json_object	*t;

	if (!json_object_object_get_ex(o, "token", &t) || t == NULL) {
		printf("token: none (delivery is off)\n");
		return;
	}
	if (strcmp(jstr(t, "state"), "failing") != 0) {
		printf("token: %s%s\n", jstr(t, "expires") ? "expires " :
		    "none yet", jstr(t, "expires") ? jstr(t, "expires") : "");
		return;
	}
	if (jstr(t, "expires"))
		printf("token: expires %s; renewal ", jstr(t, "expires"));
	else
		printf("token: ");
	printf("failing since %s: %s (%lld failed attempt(s)", jstr(t,
	    "failing_since"), jstr(t, "last_error"), (long long)jint(t,
	    "failures"));
	if (jstr(t, "next_attempt"))
		printf(", next %s", jstr(t, "next_attempt"));
	printf(")\n");
}

/* [cluster]: Redis, the nodes, and who holds a busy mailbox's slots. */
static void
print_cluster(json_object *o)
{
	json_object	*c, *a, *x, *slots;
	size_t		 i, n;

	if (!json_object_object_get_ex(o, "cluster", &c) || c == NULL)
		return;
	if (json_object_get_boolean(json_object_object_get(c, "reachable")))
		printf("cluster: node %s, Redis %s reachable, limits shared\n",
		    jstr(c, "node"), jstr(c, "redis"));
	else
		printf("cluster: node %s, Redis %s UNREACHABLE since %s%s%s%s: "
		    "going on alone with a share of each limit\n",
		    jstr(c, "node"), jstr(c, "redis"),
		    jstr(c, "down_since") ? jstr(c, "down_since") : "start",
		    jstr(c, "error") ? " (" : "",
		    jstr(c, "error") ? jstr(c, "error") : "",
		    jstr(c, "error") ? ")" : "");
	if (json_object_get_boolean(json_object_object_get(c,
	    "node_name_clash")))
		printf("cluster: WARNING: another relayd uses the node name %s: "
		    "give each relayd a [cluster] node of its own\n",
		    jstr(c, "node"));
	json_object_object_get_ex(c, "nodes", &a);
	printf("nodes seen recently:");
	for (i = 0, n = a ? json_object_array_length(a) : 0; i < n; i++)
		printf("%s %s", i ? "," : "",
		    json_object_get_string(json_object_array_get_idx(a, i)));
	printf("%s\n", n == 0 ? " none" : "");
	json_object_object_get_ex(c, "mailboxes", &a);
	for (i = 0, n = a ? json_object_array_length(a) : 0; i < n; i++) {
		x = json_object_array_get_idx(a, i);
		printf("  %s slots:", jstr(x, "mailbox"));
		json_object_object_get_ex(x, "slots", &slots);
		json_object_object_foreach(slots, node, v)
			printf(" %s=%d", node, json_object_get_int(v));
		printf("\n");
	}
}

static int
cmd_status(int json)
{
	json_object	*o = ask("status"), *q, *a, *x;
	char		 up[32];
	size_t		 i, n;

	if (json) {
		print_json(o);
		json_object_put(o);
		return 0;
	}
	printf("relayd %s, pid %lld, up %s\n", jstr(o, "version"),
	    (long long)jint(o, "pid"), span(jint(o, "uptime"), up,
	    sizeof(up)));
	json_object_object_get_ex(o, "listeners", &a);
	printf("listeners:");
	for (i = 0, n = a ? json_object_array_length(a) : 0; i < n; i++)
		printf("%s %s", i ? "," : "",
		    json_object_get_string(json_object_array_get_idx(a, i)));
	printf("\nconnections: %lld of %lld", (long long)jint(o, "connections"),
	    (long long)jint(o, "max_connections"));
	if (json_object_object_get_ex(o, "stress", &q)) {
		if (json_object_object_get_ex(q, "active", &x) &&
		    json_object_get_boolean(x))
			printf(", under stress since %s", jstr(q, "since"));
		if (jint(q, "entered") > 0)
			printf(" (stress since start: %lld time(s), %lld idle "
			    "session(s) evicted)", (long long)jint(q,
			    "entered"), (long long)jint(q, "evicted"));
	}
	printf("\n");
	json_object_object_get_ex(o, "queue", &q);
	printf("queue: %lld queued, %lld in flight, %lld deferred, %lld "
	    "throttled, %lld held, %lld dead", (long long)jint(q, "queued"),
	    (long long)jint(q, "in_flight"), (long long)jint(q, "deferred"),
	    (long long)jint(q, "throttled"), (long long)jint(q, "held"),
	    (long long)jint(q, "dead"));
	if (jint(q, "graph_held") > 0)
		printf(", %lld waiting for Graph", (long long)jint(q,
		    "graph_held"));
	printf("\n");
	json_object_object_get_ex(o, "totals", &q);
	printf("since start: %lld sent, %lld deferred attempts, %lld "
	    "failed\n", (long long)jint(q, "sent"),
	    (long long)jint(q, "deferred"), (long long)jint(q, "failed"));
	print_delivery(o);
	print_token(o);
	print_cluster(o);
	json_object_object_get_ex(o, "throttled_mailboxes", &a);
	for (i = 0, n = a ? json_object_array_length(a) : 0; i < n; i++) {
		x = json_object_array_get_idx(a, i);
		printf("%s%s until %s\n", i == 0 ? "throttled: " :
		    "           ", jstr(x, "mailbox"), jstr(x, "resume"));
	}
	json_object_object_get_ex(o, "recipient_budget_spent", &a);
	for (i = 0, n = a ? json_object_array_length(a) : 0; i < n; i++) {
		x = json_object_array_get_idx(a, i);
		printf("recipient budget spent (Exchange: 10,000 a day per "
		    "mailbox): %s, its next message at %s\n",
		    jstr(x, "mailbox"), jstr(x, "resume"));
	}
	json_object_object_get_ex(o, "credentials", &a);
	for (i = 0, n = a ? json_object_array_length(a) : 0; i < n; i++) {
		x = json_object_array_get_idx(a, i);
		printf("credential %s: expires %s\n", jstr(x, "credential"),
		    jstr(x, "expires"));
	}
	json_object_object_get_ex(o, "warnings", &a);
	for (i = 0, n = a ? json_object_array_length(a) : 0; i < n; i++)
		printf("warning: %s\n", json_object_get_string(
		    json_object_array_get_idx(a, i)));
	json_object_object_get_ex(o, "lockouts", &a);
	for (i = 0, n = a ? json_object_array_length(a) : 0; i < n; i++) {
		x = json_object_array_get_idx(a, i);
		printf("%s%s until %s (%lld failures)\n", i == 0 ?
		    "locked out: " : "            ", jstr(x, "address"),
		    jstr(x, "until"), (long long)jint(x, "failures"));
	}
	json_object_object_get_ex(o, "recent_errors", &a);
	for (i = 0, n = a ? json_object_array_length(a) : 0; i < n; i++) {
		x = json_object_array_get_idx(a, i);
		if (i == 0)
			printf("recent errors (newest first):\n");
		printf("  %s %s %s %lld %s %s\n", jstr(x, "time"),
		    jstr(x, "id"), jstr(x, "mailbox"),
		    (long long)jint(x, "status"), jstr(x, "code"),
		    jstr(x, "message"));
	}
	json_object_put(o);
	return 0;
}

/* "a@x, b@y +3": the recipients the answer names, and how many more. */
static const char *
rcpt_list(json_object *x, char *buf, size_t len)
{
	json_object	*a;
	size_t		 i, n = 0, used = 0;
	int		 k;

	buf[0] = '\0';
	if (json_object_object_get_ex(x, "recipients", &a) && a != NULL)
		n = json_object_array_length(a);
	for (i = 0; i < n && used < len; i++) {
		k = snprintf(buf + used, len - used, "%s%s", i ? ", " : "",
		    json_object_get_string(json_object_array_get_idx(a, i)));
		used += k > 0 ? (size_t)k : 0;
	}
	if ((int64_t)n < jint(x, "rcpts") && used < len)
		snprintf(buf + used, len - used, "%s+%lld", n ? " " : "",
		    (long long)(jint(x, "rcpts") - (int64_t)n));
	return buf;
}

static int
cmd_queue(int json, const char *cmd)
{
	json_object	*o = ask(cmd), *a, *x;
	char		 age[32], rcpts[512];
	size_t		 i, n;
	uint64_t	 bytes = 0;

	json_object_object_get_ex(o, "queue", &a);
	n = a != NULL ? json_object_array_length(a) : 0;
	if (json) {
		print_json(o);
		json_object_put(o);
		return 0;
	}
	if (n == 0) {
		printf("The queue is empty.\n");
		json_object_put(o);
		return 0;
	}
	printf("%-16s %6s %10s %-9s %3s %-20s %s\n", "ID", "AGE", "SIZE",
	    "STATE", "TRY", "NEXT ATTEMPT", "SENDER -> RECIPIENTS (MAILBOX)");
	for (i = 0; i < n; i++) {
		x = json_object_array_get_idx(a, i);
		bytes += (uint64_t)jint(x, "size");
		printf("%-16s %6s %10lld %-9s %3lld %-20s <%s> -> %s (%s)\n",
		    jstr(x, "id"), span(jint(x, "age"), age, sizeof(age)),
		    (long long)jint(x, "size"), jstr(x, "state"),
		    (long long)jint(x, "attempts"), jstr(x, "next_attempt") ?
		    jstr(x, "next_attempt") : "-", jstr(x, "sender"),
		    rcpt_list(x, rcpts, sizeof(rcpts)), jstr(x, "mailbox"));
		if (jstr(x, "hold") != NULL)
			printf("%16s waits: %s%s%s\n", "", jstr(x, "hold"),
			    jstr(x, "hold_until") ? " until " : "",
			    jstr(x, "hold_until") ? jstr(x, "hold_until") : "");
		if (jstr(x, "last_error") && *jstr(x, "last_error"))
			printf("%16s last error: %s\n", "",
			    jstr(x, "last_error"));
	}
	printf("-- %zu message(s), %" PRIu64 " KiB\n", n,
	    (bytes + 1023) / 1024);
	json_object_put(o);
	return 0;
}

static int
cmd_simple(const char *verb, const char *id)
{
	char		 cmd[512];
	json_object	*o, *v;

	snprintf(cmd, sizeof(cmd), "%s %s", verb, id);
	o = ask(cmd);
	if (jstr(o, "summary") != NULL && !json_object_object_get_ex(o, "id",
	    NULL))
		printf("%s: %s\n", verb, jstr(o, "summary"));
	else if (strcmp(verb, "retry") == 0 && jstr(o, "requeued") != NULL)
		printf("%s: requeued as %s\n", jstr(o, "id"),
		    jstr(o, "requeued"));
	else if (strcmp(verb, "retry") == 0)
		printf("%lld message(s) to be tried now\n",
		    (long long)jint(o, "retried"));
	else if (strcmp(verb, "unlock") == 0)
		printf("%s: unlocked\n", jstr(o, "address"));
	else if (json_object_object_get_ex(o, "id", &v))
		printf("%s: %s\n", json_object_get_string(v),
		    strcmp(verb, "hold") == 0 ? "held" :
		    strcmp(verb, "release") == 0 ? "released" : "deleted");
	json_object_put(o);
	return 0;
}

static void
show_line(const char *label, const char *value)
{
	if (value != NULL && *value != '\0')
		printf("%-14s%s\n", label, value);
}

/* One message, readable; --json: relayd's answer as it is. */
static int
cmd_show(const char *id, int json)
{
	static const char *const fields[] = { "Subject", "Message-ID", "From",
	    "To", "Cc", "Date" };
	json_object	*o, *a, *h;
	char		 cmd[256], buf[512], age[32];
	size_t		 i, n;

	snprintf(cmd, sizeof(cmd), "show %s", id);
	o = ask(cmd);
	if (json) {
		print_json(o);
		json_object_put(o);
		return 0;
	}
	show_line("id:", jstr(o, "id"));
	show_line("state:", jstr(o, "state"));
	snprintf(buf, sizeof(buf), "<%s>", jstr(o, "sender"));
	show_line("sender:", buf);
	show_line("mailbox:", jstr(o, "mailbox"));
	json_object_object_get_ex(o, "recipients", &a);
	n = a != NULL ? json_object_array_length(a) : 0;
	for (i = 0; i < n; i++)
		show_line(i == 0 ? "recipients:" : "", json_object_get_string(
		    json_object_array_get_idx(a, i)));
	if ((int64_t)n < jint(o, "rcpts")) {
		snprintf(buf, sizeof(buf), "(%lld in all)",
		    (long long)jint(o, "rcpts"));
		show_line(n == 0 ? "recipients:" : "", buf);
	}
	snprintf(buf, sizeof(buf), "%lld bytes", (long long)jint(o, "size"));
	show_line("size:", buf);
	snprintf(buf, sizeof(buf), "%s (arrived %s)", span(jint(o, "age"),
	    age, sizeof(age)), jstr(o, "arrived"));
	show_line("age:", buf);
	snprintf(buf, sizeof(buf), "%lld", (long long)jint(o, "attempts"));
	show_line("attempts:", buf);
	show_line("next attempt:", jstr(o, "next_attempt") ?
	    jstr(o, "next_attempt") : "-");
	show_line("last error:", jstr(o, "last_error"));
	if (json_object_object_get_ex(o, "headers", &h) && h != NULL)
		for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
			snprintf(buf, sizeof(buf), "%s:", fields[i]);
			show_line(buf, jstr(h, fields[i]));
		}
	/* A dead letter: when and why, in words, and Graph's own answer. */
	show_line("Subject:", jstr(o, "subject"));
	show_line("Message-ID:", jstr(o, "message_id"));
	show_line("Date:", jstr(o, "date"));
	show_line("died:", jstr(o, "time"));
	show_line("reason:", jstr(o, "reason"));
	show_line("request id:", jstr(o, "request_id"));
	show_line("graph answer:", jstr(o, "graph_answer"));
	show_line("spool error:", jstr(o, "spool_error"));
	json_object_put(o);
	return 0;
}

/*
 * queue and the actions: ID or all (actions only), --mailbox ADDRESS or
 * --sender ADDRESS, and --json (queue only). Exits 64 on anything else.
 */
static int
cmd_filtered(const char *verb, int argc, char **argv)
{
	char	 what[320] = "";
	int	 queue = strcmp(verb, "queue") == 0, json = 0, i;

	for (i = 0; i < argc; i++) {
		if (queue && strcmp(argv[i], "--json") == 0 && !json)
			json = 1;
		else if ((strcmp(argv[i], "--mailbox") == 0 ||
		    strcmp(argv[i], "--sender") == 0) && i + 1 < argc &&
		    what[0] == '\0' && argv[i + 1][0] != '\0' &&
		    strlen(argv[i + 1]) < 256 &&
		    strpbrk(argv[i + 1], " \t\r\n") == NULL) {
			snprintf(what, sizeof(what), "%s %s", argv[i],
			    argv[i + 1]);
			i++;
		} else if (!queue && what[0] == '\0' && argv[i][0] != '-' &&
		    strlen(argv[i]) < 64 && strpbrk(argv[i], " \t") == NULL)
			strlcpy_r(what, argv[i], sizeof(what));
		else
			usage();
	}
	if (queue) {
		char cmd[sizeof(what) + 8];

		snprintf(cmd, sizeof(cmd), "queue%s%s", what[0] ? " " : "",
		    what);
		return cmd_queue(json, cmd);
	}
	if (what[0] == '\0')
		usage();
	return cmd_simple(verb, what);
}

static int
cmd_pause(const char *verb)
{
	json_object	*o = ask(verb);

	printf("%s\n", jstr(o, "summary"));
	json_object_put(o);
	return 0;
}

static int
cmd_dead(int json)
{
	json_object	*o = ask("dead"), *a, *x, *r;
	size_t		 i, j, n;

	json_object_object_get_ex(o, "dead", &a);
	n = a != NULL ? json_object_array_length(a) : 0;
	if (json) {
		print_json(o);
		json_object_put(o);
		return 0;
	}
	if (n == 0)
		printf("No dead letters.\n");
	for (i = 0; i < n; i++) {
		x = json_object_array_get_idx(a, i);
		printf("%s%s  %s  <%s> ->", i ? "\n" : "", jstr(x, "id"),
		    jstr(x, "time") ? jstr(x, "time") : "-", jstr(x, "sender"));
		json_object_object_get_ex(x, "recipients", &r);
		for (j = 0; r != NULL && j < json_object_array_length(r); j++)
			printf("%s%s", j ? ", " : " ", json_object_get_string(
			    json_object_array_get_idx(r, j)));
		printf("\n  mailbox:    %s\n  subject:    %s\n"
		    "  message-id: %s\n  reason:     %s\n",
		    jstr(x, "mailbox") && *jstr(x, "mailbox") ?
		    jstr(x, "mailbox") : "-", jstr(x, "subject"),
		    jstr(x, "message_id") && *jstr(x, "message_id") ?
		    jstr(x, "message_id") : "-", jstr(x, "reason"));
	}
	if (n > 0)
		printf("-- %zu dead letter(s): relayctl show|retry|export|"
		    "delete ID\n", n);
	json_object_put(o);
	return 0;
}

/* Copies the message's range of the passed file to standard output. */
static int
cmd_export(const char *id)
{
	char		 cmd[256], buf[64 * 1024];
	json_object	*o;
	int64_t		 off, left;
	ssize_t		 n;

	snprintf(cmd, sizeof(cmd), "export %s", id);
	o = ask(cmd);
	off = jint(o, "offset");
	left = jint(o, "length");
	json_object_put(o);
	if (passed_fd == -1) {
		fprintf(stderr, "relayctl: relayd passed no file for %s (try "
		    "again)\n", id);
		return 1;
	}
	while (left > 0) {
		n = pread(passed_fd, buf, left < (int64_t)sizeof(buf) ?
		    (size_t)left : sizeof(buf), (off_t)off);
		if (n <= 0) {
			fprintf(stderr, "relayctl: export %s: %s\n", id, n == 0 ?
			    "the spool file ends early" : strerror(errno));
			return 1;
		}
		if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n)
			break;
		off += n;
		left -= n;
	}
	close(passed_fd);
	if (fflush(stdout) == EOF || ferror(stdout)) {
		fprintf(stderr, "relayctl: export %s: standard output: %s\n",
		    id, strerror(errno));
		return 1;
	}
	return 0;
}

/*
 * A dead node's spool (issue 20): relayctl import DIR. DIR is checked
 * and locked here (spool_source.c: a relayd spool, no running relayd on
 * it); then each of its files goes to relayd over one status connection,
 * open, attached to a byte (SCM_RIGHTS; relayd's delivery process runs
 * under Landlock and could not open DIR's files itself): a segment of
 * queue/ ("import queue NAME"), whose queued records relayd commits as
 * its own, fsynced, before it marks them delivered in DIR and syncs that
 * (spool.c, "import"); a segment left with nothing queued is removed
 * here. A dead letter ("import dead QID N", its record and .reason)
 * becomes relayd's dead/QID, synced, before it is removed here. Each
 * answer comes once that is durable, so an import killed at any point
 * and run again moves what is left, and what relayd had already taken
 * is recognised (by the source id) instead of taken twice.
 */

/* One answer line on fd (a JSON object), NULL if none came. */
static json_object *
read_answer(int fd)
{
	char		 buf[4096];
	size_t		 len = 0;
	ssize_t		 n;

	while (len < sizeof(buf) - 1) {
		if ((n = read(fd, buf + len, 1)) <= 0)
			return NULL;
		if (buf[len++] == '\n')
			break;
	}
	buf[len] = '\0';
	return json_tokener_parse(buf);
}

/* Sends "import ..." and the files; relayd's answer or NULL. */
static json_object *
import_one(int sock, const char *cmd, const int *fds, int nfds, char *why,
    size_t whylen)
{
	json_object	*o;
	struct iovec	 iov;
	int		 i;

	snprintf(why, whylen, "relayd went away");
	if (write(sock, cmd, strlen(cmd)) != (ssize_t)strlen(cmd) ||
	    write(sock, "\n", 1) != 1 || (o = read_answer(sock)) == NULL)
		return NULL;
	if (jstr(o, "ok") == NULL || strcmp(jstr(o, "ok"), "send") != 0) {
		snprintf(why, whylen, "%s", jstr(o, "error") != NULL ?
		    jstr(o, "error") : "an unexpected answer");
		json_object_put(o);
		return NULL;
	}
	json_object_put(o);
	for (i = 0; i < nfds; i++) {
		iov.iov_base = (void *)(uintptr_t)"F";
		iov.iov_len = 1;
		if (fd_sendmsg(sock, &iov, 1, fds[i]) != 1)
			return NULL;
	}
	if ((o = read_answer(sock)) != NULL && jstr(o, "error") != NULL) {
		snprintf(why, whylen, "%s", jstr(o, "error"));
		json_object_put(o);
		return NULL;
	}
	return o;
}

struct import_tally {
	size_t	 queued, already, dead, failed, skipped;
	char	 why[1024];
};

static void
tally_why(struct import_tally *t, const char *what, const char *why)
{
	if (t->why[0] == '\0' && what == NULL)
		snprintf(t->why, sizeof(t->why), "%s", why);
	else if (t->why[0] == '\0')
		snprintf(t->why, sizeof(t->why), "%s: %s", what, why);
}

/* One file not taken (counted in *count), and why. */
static void
tally_fail(struct import_tally *t, size_t *count, const char *what,
    const char *why)
{
	(*count)++;
	tally_why(t, what, why);
}

static void
import_segment(int sock, struct spool_source *src, const char *name,
    struct import_tally *t)
{
	json_object	*o;
	char		 cmd[64], why[512];
	int		 fd;

	if ((fd = openat(src->queuefd, name, O_RDWR | O_CLOEXEC)) == -1) {
		tally_fail(t, &t->failed, name, strerror(errno));
		return;
	}
	snprintf(cmd, sizeof(cmd), "import queue %s", name);
	o = import_one(sock, cmd, &fd, 1, why, sizeof(why));
	close(fd);
	if (o == NULL) {
		tally_fail(t, &t->failed, name, why);
		return;
	}
	t->queued += (size_t)jint(o, "imported");
	t->already += (size_t)jint(o, "already");
	t->failed += (size_t)jint(o, "failed");
	t->skipped += (size_t)jint(o, "skipped");
	if (jstr(o, "why") != NULL)	/* names the file already */
		tally_why(t, NULL, jstr(o, "why"));
	if (jstr(o, "failure") != NULL)
		tally_why(t, name, jstr(o, "failure"));
	/* Nothing queued left in it: it goes (as relayd removes its own). */
	if (jint(o, "left") == 0 && jint(o, "skipped") == 0 &&
	    jstr(o, "failure") == NULL && unlinkat(src->queuefd, name, 0) == 0)
		fsync(src->queuefd);
	json_object_put(o);
}

static void
import_dead(int sock, struct spool_source *src, const char *qid,
    struct import_tally *t)
{
	json_object	*o;
	char		 cmd[64], reason[SPOOL_QID_LEN + 8], why[512];
	int		 fds[2], n = 1;

	snprintf(reason, sizeof(reason), "%s.reason", qid);
	if ((fds[0] = openat(src->deadfd, qid, O_RDONLY | O_CLOEXEC)) == -1) {
		tally_fail(t, &t->failed, qid, strerror(errno));
		return;
	}
	if ((fds[1] = openat(src->deadfd, reason, O_RDONLY | O_CLOEXEC)) !=
	    -1)
		n = 2;
	snprintf(cmd, sizeof(cmd), "import dead %s %d", qid, n);
	o = import_one(sock, cmd, fds, n, why, sizeof(why));
	close(fds[0]);
	if (n == 2)
		close(fds[1]);
	if (o == NULL) {
		tally_fail(t, &t->skipped, qid, why);
		return;
	}
	t->dead += (size_t)jint(o, "dead");
	t->already += (size_t)jint(o, "already");
	json_object_put(o);
	/* Durable in relayd's dead/: the copy here goes. */
	if (unlinkat(src->deadfd, qid, 0) == 0) {
		unlinkat(src->deadfd, reason, 0);
		fsync(src->deadfd);
	}
}

static int
cmd_import(const char *dir)
{
	struct spool_source	 src;
	struct import_tally	 t;
	json_object		*o;
	char			 err[1024], **names, *path;
	size_t			 n, i;
	int			 sock;

	o = ask("status");	/* exits with why if relayd is not running */
	json_object_put(o);
	if (spool_source_open(dir, &src, err, sizeof(err)) == -1) {
		fprintf(stderr, "relayctl: import: %s\n", err);
		return 1;
	}
	memset(&t, 0, sizeof(t));
	path = socket_path();
	sock = status_connect(path);
	free(path);
	n = spool_source_names(src.queuefd, &names);
	for (i = 0; i < n; i++) {
		import_segment(sock, &src, names[i], &t);
		free(names[i]);
	}
	free(names);
	n = src.deadfd == -1 ? 0 : spool_source_names(src.deadfd, &names);
	for (i = 0; i < n; i++) {
		import_dead(sock, &src, names[i], &t);
		free(names[i]);
	}
	if (n > 0)
		free(names);
	close(sock);
	spool_source_close(&src);
	printf("%s: %zu queued message(s) and %zu dead letter(s) imported",
	    dir, t.queued, t.dead);
	if (t.already > 0)
		printf(", %zu taken before (an import that was cut short)",
		    t.already);
	printf("\n");
	if (t.skipped + t.failed > 0) {
		printf("%s: %zu skipped (damaged: left in %s), %zu failed "
		    "(left in %s; run the import again); first: %s\n", dir,
		    t.skipped, dir, t.failed, dir, t.why);
		return t.failed > 0 ? 1 : 0;
	}
	return 0;
}

static int
cmd_metrics(void)
{
	json_object	*o = ask("metrics");

	fputs(jstr(o, "metrics"), stdout);
	json_object_put(o);
	return 0;
}

/* history: newest first, a line per message (or the JSON). */
static int
cmd_history(int argc, char **argv)
{
	struct history_filter	 f;
	json_object		*o, *a, *x, *r;
	char			 err[256], *cmd, *filter;
	const char		*subj;
	size_t			 i, j, n;

	if (history_filter_args(argc - 1, argv + 1, &f, err,
	    sizeof(err)) == -1) {
		fprintf(stderr, "relayctl history: %s\n", err);
		usage();
	}
	filter = history_filter_json(&f);
	xasprintf(&cmd, "history %s", filter);
	free(filter);
	o = ask(cmd);
	free(cmd);
	json_object_object_get_ex(o, "history", &a);
	n = a != NULL ? json_object_array_length(a) : 0;
	if (f.json) {
		printf("%s\n", json_object_to_json_string_ext(a,
		    JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
		json_object_put(o);
		return 0;
	}
	if (n == 0) {
		printf("No message in the history matches.\n");
		json_object_put(o);
		return 0;
	}
	printf("%-20s %-16s %-8s %3s %8s %s\n", "RECEIVED", "ID", "STATUS",
	    "TRY", "SIZE", "SENDER -> RECIPIENTS (MAILBOX) SUBJECT");
	for (i = 0; i < n; i++) {
		x = json_object_array_get_idx(a, i);
		printf("%-20s %-16s %-8s %3lld %8lld <%s> ->",
		    jstr(x, "received") ? jstr(x, "received") : "-",
		    jstr(x, "id"), jstr(x, "status"),
		    (long long)jint(x, "attempts"), (long long)jint(x, "size"),
		    jstr(x, "sender") ? jstr(x, "sender") : "?");
		json_object_object_get_ex(x, "recipients", &r);
		for (j = 0; r != NULL && j < json_object_array_length(r); j++)
			printf("%s%s", j ? ", " : " ", json_object_get_string(
			    json_object_array_get_idx(r, j)));
		if (jstr(x, "mailbox"))
			printf(" (%s)", jstr(x, "mailbox"));
		subj = jstr(x, "subject");
		printf("%s%s%s\n", subj ? " \"" : "", subj ? subj : "",
		    subj ? "\"" : "");
		/* A failure's why; --json has every request-id. */
		if (jstr(x, "graph_code") != NULL)
			printf("%37s graph %lld %s request-id %s\n", "",
			    (long long)jint(x, "graph_status"),
			    jstr(x, "graph_code") ? jstr(x, "graph_code") : "-",
			    jstr(x, "request_id") ? jstr(x, "request_id") : "-");
	}
	json_object_object_get_ex(o, "more", &x);
	if (json_object_get_boolean(x))
		printf("-- the newest %zu shown; more matched (narrow it with "
		    "--since or a filter, or raise --limit)\n", n);
	else
		printf("-- %zu message(s)\n", n);
	json_object_put(o);
	return 0;
}

/* ---- test: what relayd would do, said plainly ---- */

static int
cmd_test(int argc, char **argv)
{
	struct config		*cfg;
	struct token		*tok = NULL;
	struct graph_error	 ge;
	struct http_resp	 r;
	const char		*to = NULL, *from = NULL, *words;
	const char		*hdrs[4];
	char			 err[1024], *t = NULL, *auth, *url, *mb, *body;
	long long		 exp;
	CURL			*c = NULL;
	int			 i, rc = 1;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--to") == 0 && i + 1 < argc)
			to = argv[++i];
		else if (strcmp(argv[i], "--from") == 0 && i + 1 < argc)
			from = argv[++i];
		else
			usage();
	}
	if ((cfg = config_load(conf_path, stderr)) == NULL)
		return EX_CONFIG;
	if (!cfg->graph_enabled) {
		fprintf(stderr, "relayctl: %s has no [graph] section: there is "
		    "nothing to test\n", conf_path);
		config_free(cfg);
		return EX_CONFIG;
	}
	log_init("relayctl", LOG_LVL_ERR);
	if (http_init(cfg, err, sizeof(err)) == -1 ||
	    (tok = token_new(cfg, err, sizeof(err))) == NULL) {
		fprintf(stderr, "relayctl: %s\n", err);
		config_free(cfg);
		return EX_CONFIG;
	}
	c = http_handle_new(cfg);
	printf("token: asking %s/%s for %s ... ", cfg->login_url, cfg->tenant,
	    cfg->client_id);
	fflush(stdout);
	if ((t = token_get(tok, c, err, sizeof(err))) == NULL) {
		printf("refused\n  %s\n", err);
		goto out;
	}
	exp = token_expires_in(tok);
	printf("ok (valid for %llds)\n", exp / 1000);
	if (to == NULL) {
		printf("No --to: no message sent. relayctl test --to ADDRESS "
		    "sends one.\n");
		rc = 0;
		goto out;
	}
	if (from == NULL)
		from = strchr(cfg->mailbox, '@') != NULL ? cfg->mailbox : to;
	mb = http_escape(from);
	xasprintf(&url, "%s/v1.0/users/%s/sendMail", cfg->graph_url, mb);
	free(mb);
	xasprintf(&body, "{\"message\":{\"subject\":\"relayctl test\","
	    "\"body\":{\"contentType\":\"text\",\"content\":\"A test "
	    "message from relayctl test: the relay can send from %s.\"},"
	    "\"toRecipients\":[{\"emailAddress\":{\"address\":\"%s\"}}]},"
	    "\"saveToSentItems\":false}", from, to);
	xasprintf(&auth, "Authorization: Bearer %s", t);
	hdrs[0] = auth;
	hdrs[1] = "Content-Type: application/json";
	hdrs[2] = "Accept: application/json";
	hdrs[3] = NULL;
	printf("sendMail: from %s to %s ... ", from, to);
	fflush(stdout);
	http_post(c, url, hdrs, body, strlen(body), &r);
	explicit_bzero(auth, strlen(auth));
	free(auth);
	free(url);
	free(body);
	if (r.status == 202) {
		printf("accepted (202, request-id %s)\n", r.request_id[0] ?
		    r.request_id : "-");
		rc = 0;
	} else if (r.status == 0)
		printf("no answer: %s\n", r.error);
	else {
		graph_classify(r.status, r.body, r.len, &ge);
		printf("refused: HTTP %ld %s %s\n", r.status, ge.code,
		    ge.message);
		if ((words = graph_explain(r.status, ge.code, ge.message)) !=
		    NULL)
			printf("  what to do: %s\n", words);
	}
	http_resp_clear(&r);
out:
	if (t != NULL) {
		explicit_bzero(t, strlen(t));
		free(t);
	}
	if (c != NULL)
		curl_easy_cleanup(c);
	token_free(tok);
	http_cleanup();
	config_free(cfg);
	return rc;
}

int
main(int argc, char **argv)
{
	const char	*verb;
	int		 ch, json = 0;

	conf_path = RELAYD_CONF;
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "-h") == 0))
		usage_to(stdout, 0);
	while ((ch = getopt(argc, argv, "+c:s:V")) != -1) {
		switch (ch) {
		case 'c':
			conf_path = optarg;
			conf_given = 1;
			break;
		case 's':
			sock_path = optarg;
			break;
		case 'V':
			printf("relayctl %s\n", PACKAGE_VERSION);
			return 0;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1)
		usage();
	verb = argv[0];
	if (strcmp(verb, "passwd") == 0)
		return cmd_passwd(argc, argv);
	if (strcmp(verb, "test") == 0)
		return cmd_test(argc, argv);
	if (strcmp(verb, "history") == 0)
		return cmd_history(argc, argv);
	if (strcmp(verb, "show") == 0 && argc == 3 &&
	    (strcmp(argv[1], "--json") == 0 || strcmp(argv[2], "--json") == 0))
		return cmd_show(strcmp(argv[1], "--json") == 0 ? argv[2] :
		    argv[1], 1);
	if (strcmp(verb, "show") == 0 && argc == 2 && argv[1][0] != '-')
		return cmd_show(argv[1], 0);
	if (strcmp(verb, "queue") == 0 || strcmp(verb, "retry") == 0 ||
	    strcmp(verb, "delete") == 0 || strcmp(verb, "hold") == 0 ||
	    strcmp(verb, "release") == 0)
		return cmd_filtered(verb, argc - 1, argv + 1);
	if (argc == 2 && strcmp(argv[1], "--json") == 0)
		json = 1;
	else if (argc > 2 || (argc == 2 && (strcmp(verb, "status") == 0 ||
	    strcmp(verb, "metrics") == 0 || strcmp(verb, "dead") == 0)))
		usage();
	if (strcmp(verb, "status") == 0)
		return cmd_status(json);
	if (strcmp(verb, "dead") == 0)
		return cmd_dead(json);
	if (strcmp(verb, "export") == 0 && argc == 2 && !json)
		return cmd_export(argv[1]);
	if (strcmp(verb, "metrics") == 0 && argc == 1)
		return cmd_metrics();
	if (strcmp(verb, "import") == 0 && argc == 2 && !json)
		return cmd_import(argv[1]);
	if (argc == 1 && (strcmp(verb, "pause") == 0 ||
	    strcmp(verb, "resume") == 0))
		return cmd_pause(verb);
	if (argc == 2 && !json && strcmp(verb, "unlock") == 0)
		return cmd_simple(verb, argv[1]);
	usage();
	return EX_USAGE;
}

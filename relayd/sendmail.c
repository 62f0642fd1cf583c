/*
 * sendmail.c - relayd-sendmail, the sendmail(8) that local programs call.
 *
 *   relayd-sendmail [-it] [-C config] [-F name] [-f address] [address ...]
 *
 * cron, smartd, mdadm, unattended-upgrades and PHP's mail() pipe a message
 * into /usr/sbin/sendmail. This reads it from standard input, fixes up its
 * header and hands it to the running relayd over SMTP on the first plain
 * listener of the config that loopback can reach; relayd's policy applies
 * as to any client. Nothing is queued here: relayd is the queue.
 *
 * The body goes to a temporary file first, so that nothing is half sent
 * when the input breaks off, SIZE= is known, and a slow writer holds no
 * SMTP session open. Then one blocking transaction with timeouts. Exit 0
 * only after relayd's 250 to the end of DATA, which it gives once the
 * message is durable in its spool; otherwise a sysexits code and one line
 * on standard error (relayd-sendmail(8) has the table).
 *
 * root and www-data are no mailboxes of the tenant: the envelope sender is
 * -f ADDRESS (one with '@'), else [sendmail] sender, else USER@hostname.
 * A From:, To: or Cc: address of a local user (no '@', or @ this host) is
 * replaced by it, display name kept, and so is a local recipient: cron's
 * mail to root goes to the mailbox the machine sends as.
 */
#include <sys/random.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <gmime/gmime.h>

#include "autoconf.h"
#include "addr.h"
#include "config.h"
#include "config_check.h"
#include "util.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define RELAYD_CONF		SYSCONFDIR "/relayd/relayd.conf"
#define IO_TIMEOUT_SEC		60	/* connect, and each reply */
#define END_TIMEOUT_SEC		600	/* the reply to the end of DATA */
#define HEADER_MAX_BYTES	(1024 * 1024)
#define REPLY_LINE_MAX		1024

struct opts {
	const char	*conf;
	const char	*from;		/* -f */
	const char	*name;		/* -F */
	int		 dot;		/* a "." line ends the input */
	int		 extract;	/* -t */
	int		 verbose;
	char		**args;		/* recipients */
	int		 nargs;
};

struct msg {
	char		**hdrs;		/* "Name: value", folds kept as \n */
	size_t		 nhdrs;
	size_t		 hdrbytes;
	size_t		 lastlen;	/* of the last header, while read */
	FILE		*body;		/* lines ending in \n */
	uint64_t	 size;		/* of the whole message with CRLFs */
	uint64_t	 bodysize;
	int		 eightbit;
	char		**rcpts;
	size_t		 nrcpts;
};

struct conn {
	FILE		*r, *w;
	int		 verbose;
	int		 garbled;	/* not an SMTP reply */
	char		 text[REPLY_LINE_MAX];	/* last reply, or why none */
};

/*
 * Addresses without a domain are local users here: GMime's default takes
 * `root, "Doe, John" <j@x>` for one mailbox named "root, Doe, John".
 */
static GMimeParserOptions	*addr_options;

/* What each step of the transaction expects, and a 5xx's exit code. */
enum step { S_GREETING, S_EHLO, S_MAIL, S_RCPT, S_DATA, S_END };
static const struct {
	const char	*what;
	int		 want;
	int		 refused;
} steps[] = {
	[S_GREETING] =	{ "the connection", 220, EX_UNAVAILABLE },
	[S_EHLO] =	{ "EHLO", 250, EX_UNAVAILABLE },
	[S_MAIL] =	{ "the sender", 250, EX_DATAERR },
	[S_RCPT] =	{ "a recipient", 250, EX_NOUSER },
	[S_DATA] =	{ "DATA", 354, EX_DATAERR },
	[S_END] =	{ "the message", 250, EX_DATAERR },
};

static void	usage(FILE *, int) __attribute__((noreturn));
static void	bad_usage(const char *, ...) PRINTFLIKE(1, 2)
		    __attribute__((noreturn));

static void
usage(FILE *fp, int code)
{
	fprintf(fp, "usage: relayd-sendmail [-it] [-B type] [-C config] "
	    "[-F name] [-f address] [-o option] [address ...]\n"
	    "  -t          recipients from To:, Cc: and Bcc: too (Bcc: is "
	    "removed)\n"
	    "  -i, -oi     a line of a single \".\" does not end the message\n"
	    "  -f address  envelope sender (default: [sendmail] sender)\n"
	    "  -F name     display name of a From: this program adds\n"
	    "  -C config   relayd.conf to read (default " RELAYD_CONF ")\n"
	    "  -v          show the SMTP dialogue\n"
	    "Accepted and ignored: -bm, -B 7BIT|8BITMIME, -N dsn, -U, "
	    "-od*, -oe*, -om.\n"
	    "The message is read from standard input and handed to relayd; "
	    "exit 0 once it is in relayd's spool. See relayd-sendmail(8).\n");
	exit(code);
}

static void
bad_usage(const char *fmt, ...)
{
	va_list	 ap;

	fputs("relayd-sendmail: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs(" (relayd-sendmail --help)\n", stderr);
	exit(EX_USAGE);
}

static void
parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int	 ch;

	memset(o, 0, sizeof(*o));
	o->conf = RELAYD_CONF;
	o->dot = 1;
	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":B:b:C:F:f:iN:o:r:tUv",
	    longopts, NULL)) != -1) {
		switch (ch) {
		case 'B':
			if (strcasecmp(optarg, "7BIT") != 0 &&
			    strcasecmp(optarg, "8BITMIME") != 0)
				bad_usage("-B %s: 7BIT or 8BITMIME", optarg);
			break;
		case 'b':
			if (strcmp(optarg, "m") != 0)
				bad_usage("-b%s is not supported, only -bm "
				    "(relayd keeps the queue: relayctl queue)",
				    optarg);
			break;
		case 'C':
			o->conf = optarg;
			break;
		case 'F':
			o->name = optarg;
			break;
		case 'f':
		case 'r':
			o->from = optarg;
			break;
		case 'h':
			usage(stdout, 0);
		case 'i':
			o->dot = 0;
			break;
		case 'o':
			if (strcmp(optarg, "i") == 0)
				o->dot = 0;
			else if (optarg[0] != 'd' && optarg[0] != 'e' &&
			    strcmp(optarg, "m") != 0)
				bad_usage("-o%s is not supported", optarg);
			break;
		case 't':
			o->extract = 1;
			break;
		case 'v':
			o->verbose = 1;
			break;
		case 'N':
		case 'U':
			break;
		case ':':
			bad_usage("-%c needs an argument", optopt);
		default:
			if (optopt != 0)
				bad_usage("unsupported option -%c", optopt);
			bad_usage("unsupported option %s", argv[optind - 1]);
		}
	}
	o->args = argv + optind;
	o->nargs = argc - optind;
}

/*
 * relayd.conf as any user may read it. Its errors are relayd -n's; the
 * first is shown, the rest are a command away.
 */
static struct config *
load_config(const char *path)
{
	struct config	*cfg;
	char		*errs = NULL;
	size_t		 len = 0, n;
	FILE		*fp;
	int		 more;

	if ((fp = open_memstream(&errs, &len)) == NULL) {
		fprintf(stderr, "relayd-sendmail: %s\n", strerror(errno));
		exit(EX_OSERR);
	}
	cfg = config_load_client(path, fp);
	fclose(fp);
	if (cfg == NULL) {
		n = strcspn(errs, "\n");
		more = errs[n] != '\0' && errs[n + 1] != '\0';
		fprintf(stderr, "relayd-sendmail: %.*s%s%s%s\n", (int)n, errs,
		    more ? " (and more: relayd -n -c " : "", more ? path : "",
		    more ? " lists them)" : "");
		free(errs);
		exit(EX_CONFIG);
	}
	free(errs);
	return cfg;
}

/*
 * The first listener without tls or proxy on a loopback or wildcard
 * address, and the loopback address to reach it by.
 */
static const struct listen_cfg *
pick_listener(const struct config *cfg, struct sockaddr_storage *ss)
{
	const struct listen_cfg	*lc;
	struct sockaddr_in	*sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6	*sin6 = (struct sockaddr_in6 *)ss;
	size_t			 i, j;

	for (i = 0; i < cfg->nlisten; i++) {
		lc = &cfg->listen[i];
		if (lc->tls || lc->proxy)
			continue;
		memcpy(ss, &lc->ss, sizeof(*ss));
		if (ss->ss_family == AF_INET) {
			if (sin->sin_addr.s_addr == htonl(INADDR_ANY))
				sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
			else if ((ntohl(sin->sin_addr.s_addr) >> 24) != 127)
				continue;
		} else if (ss->ss_family == AF_INET6) {
			if (IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr))
				sin6->sin6_addr = in6addr_loopback;
			else if (!IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr))
				continue;
		} else
			continue;
		for (j = 0; j < lc->nnets; j++)
			if (addr_match(&lc->nets[j], (struct sockaddr *)ss))
				break;
		if (lc->nnets == 0 || j < lc->nnets)
			return lc;
	}
	return NULL;
}

/* An address without '@', or at this host: root, www-data@web1. */
static int
local_address(const struct config *cfg, const char *a)
{
	const char	*at = strrchr(a, '@');
	char		 host[256];

	if (at == NULL)
		return 1;
	at++;
	if (strcasecmp(at, "localhost") == 0 ||
	    strcasecmp(at, "localhost.localdomain") == 0 ||
	    strcasecmp(at, cfg->hostname) == 0)
		return 1;
	if (gethostname(host, sizeof(host)) == -1)
		return 0;
	host[sizeof(host) - 1] = '\0';
	return strcasecmp(at, host) == 0;
}

/* -f with '@', else [sendmail] sender, else USER@hostname. */
static char *
envelope_sender(const struct opts *o, const struct config *cfg)
{
	struct passwd	*pw;
	char		*s;
	size_t		 n;

	if (o->from != NULL && strchr(o->from, '@') != NULL) {
		n = strlen(o->from);
		if (n >= 2 && o->from[0] == '<' && o->from[n - 1] == '>')
			return xstrndup(o->from + 1, n - 2);
		return xstrdup(o->from);
	}
	if (cfg->sendmail_sender != NULL)
		return xstrdup(cfg->sendmail_sender);
	if ((pw = getpwuid(getuid())) != NULL)
		xasprintf(&s, "%s@%s", pw->pw_name, cfg->hostname);
	else
		xasprintf(&s, "%u@%s", (unsigned)getuid(), cfg->hostname);
	return s;
}

/* ---- the message ---- */

/*
 * One input line without its end: LF, CRLF or a lone CR (a progress bar's,
 * which relayd would refuse as a bare CR). 1: a line; 0: end; -1: error.
 */
static int
read_line(FILE *in, char **buf, size_t *cap, size_t *len)
{
	int	 c;

	*len = 0;
	for (;;) {
		if ((c = getc_unlocked(in)) == EOF)
			return ferror(in) ? -1 : *len > 0;
		if (c == '\n')
			return 1;
		if (c == '\r') {
			if ((c = getc_unlocked(in)) != '\n' && c != EOF)
				ungetc(c, in);
			return 1;
		}
		if (*len + 1 >= *cap) {
			*cap = *cap ? *cap * 2 : 256;
			*buf = xrealloc(*buf, *cap);
		}
		(*buf)[(*len)++] = (char)c;
		(*buf)[*len] = '\0';
	}
}

/* "Name:" (printable ASCII, blanks allowed before the colon). */
static int
header_field(const char *s, size_t len)
{
	size_t	 i;

	for (i = 0; i < len && s[i] > ' ' && s[i] < 127 && s[i] != ':'; i++)
		;
	if (i == 0)
		return 0;
	while (i < len && (s[i] == ' ' || s[i] == '\t'))
		i++;
	return i < len && s[i] == ':';
}

static int
header_is(const char *h, const char *name)
{
	size_t	 n = strlen(name);

	return strncasecmp(h, name, n) == 0 &&
	    (h[n] == ':' || h[n] == ' ' || h[n] == '\t');
}

static void
add_header(struct msg *m, char *h)
{
	m->hdrs = xrealloc(m->hdrs, (m->nhdrs + 1) * sizeof(*m->hdrs));
	m->hdrs[m->nhdrs++] = h;
}

static int
eightbit(const char *s, size_t len)
{
	size_t	 i;

	for (i = 0; i < len; i++)
		if ((unsigned char)s[i] >= 0x80)
			return 1;
	return 0;
}

static int
body_line(struct msg *m, const char *line, size_t len)
{
	m->eightbit = m->eightbit || eightbit(line, len);
	m->size += len + 2;
	m->bodysize += len + 2;
	if (fwrite(line, 1, len, m->body) != len || putc('\n', m->body) == EOF)
		return -1;
	return 0;
}

/*
 * Reads the message: the header into m->hdrs, the body into a temporary
 * file. Returns 0 or an exit code with why.
 */
static int
read_message(const struct opts *o, const struct config *cfg, struct msg *m,
    char *why, size_t whylen)
{
	char	*line = NULL, *h;
	size_t	 cap = 0, len;
	int	 r, header = 1, lines = 0, code = 0;

	if ((m->body = tmpfile()) == NULL) {
		snprintf(why, whylen, "temporary file: %s", strerror(errno));
		return EX_CANTCREAT;
	}
	while ((r = read_line(stdin, &line, &cap, &len)) == 1) {
		if (o->dot && len == 1 && line[0] == '.')
			break;
		if (lines++ == 0 && len > 5 && strncmp(line, "From ", 5) == 0)
			continue;	/* an mbox separator */
		if (m->size + len + 2 > cfg->max_message_size) {
			snprintf(why, whylen, "the message is larger than "
			    "relayd takes (max_message_size %llu bytes); not "
			    "sent", (unsigned long long)cfg->max_message_size);
			code = EX_DATAERR;
			break;
		}
		if (header && len == 0) {
			header = 0;
			continue;
		}
		if (header && (line[0] == ' ' || line[0] == '\t') &&
		    m->nhdrs > 0) {
			h = m->hdrs[m->nhdrs - 1] = xrealloc(m->hdrs[m->nhdrs -
			    1], m->lastlen + len + 2);
			h[m->lastlen++] = '\n';
			memcpy(h + m->lastlen, line, len);
			h[m->lastlen += len] = '\0';
		} else if (header && header_field(line, len)) {
			add_header(m, xstrndup(line, len));
			m->lastlen = len;
		} else {
			header = 0;
			if (body_line(m, line, len) == -1) {
				snprintf(why, whylen, "temporary file: %s",
				    strerror(errno));
				code = EX_IOERR;
				break;
			}
			continue;
		}
		m->size += len + 2;
		if ((m->hdrbytes += len + 2) > HEADER_MAX_BYTES) {
			snprintf(why, whylen, "the header is longer than %d "
			    "bytes; not sent", HEADER_MAX_BYTES);
			code = EX_DATAERR;
			break;
		}
	}
	free(line);
	if (code != 0)
		return code;
	if (r == -1) {
		snprintf(why, whylen, "cannot read standard input: %s",
		    strerror(errno));
		return EX_NOINPUT;
	}
	if (lines == 0) {
		snprintf(why, whylen, "no message on standard input");
		return EX_NOINPUT;
	}
	if (fflush(m->body) == EOF) {
		snprintf(why, whylen, "temporary file: %s", strerror(errno));
		return EX_IOERR;
	}
	return 0;
}

static InternetAddressList *
parse_addresses(const char *s)
{
	return internet_address_list_parse(addr_options, s);
}

/* The value of a header, unfolded. */
static char *
header_value(const char *h)
{
	char	*v = xstrdup(strchr(h, ':') + 1), *s, *d;

	for (s = d = v; *s != '\0'; s++)
		if (*s != '\n')
			*d++ = *s;
	*d = '\0';
	return v;
}

/*
 * "root (Cron Daemon)": GMime drops the comment of an address without a
 * domain, which is where cron puts its display name.
 */
static char *
comment_name(const char *v)
{
	const char	*open, *close;

	if ((close = strrchr(v, ')')) == NULL || close[strspn(close + 1,
	    " \t") + 1] != '\0' || (open = strrchr(v, '(')) == NULL ||
	    open > close)
		return NULL;
	return xstrndup(open + 1, (size_t)(close - open - 1));
}

static void
add_rcpt(struct msg *m, const char *a)
{
	size_t	 i;

	for (i = 0; i < m->nrcpts; i++)
		if (strcasecmp(m->rcpts[i], a) == 0)
			return;
	m->rcpts = xrealloc(m->rcpts, (m->nrcpts + 1) * sizeof(*m->rcpts));
	m->rcpts[m->nrcpts++] = xstrdup(a);
}

/* Every mailbox of a list, groups flattened; local ones as sender. */
static void
add_rcpts(struct msg *m, const struct config *cfg, const char *sender,
    InternetAddressList *l)
{
	InternetAddress	*ia;
	const char	*a;
	int		 i;

	for (i = 0; l != NULL && i < internet_address_list_length(l); i++) {
		ia = internet_address_list_get_address(l, i);
		if (INTERNET_ADDRESS_IS_GROUP(ia))
			add_rcpts(m, cfg, sender,
			    internet_address_group_get_members(
			    INTERNET_ADDRESS_GROUP(ia)));
		else if ((a = internet_address_mailbox_get_addr(
		    INTERNET_ADDRESS_MAILBOX(ia))) != NULL && *a != '\0')
			add_rcpt(m, local_address(cfg, a) ? sender : a);
	}
}

/*
 * An address header with each local mailbox replaced by sender, its
 * display name kept (else the comment's, else name); NULL if unchanged.
 */
static char *
rewrite_header(const char *h, InternetAddressList *l,
    const struct config *cfg, const char *sender, const char *name)
{
	InternetAddress	*ia;
	char		*text, *out, *v, *comment;
	const char	*a, *n;
	int		 i, changed = 0;

	for (i = 0; l != NULL && i < internet_address_list_length(l); i++) {
		ia = internet_address_list_get_address(l, i);
		if (!INTERNET_ADDRESS_IS_MAILBOX(ia) ||
		    (a = internet_address_mailbox_get_addr(
		    INTERNET_ADDRESS_MAILBOX(ia))) == NULL ||
		    !local_address(cfg, a))
			continue;
		internet_address_mailbox_set_addr(INTERNET_ADDRESS_MAILBOX(ia),
		    sender);
		n = internet_address_get_name(ia);
		if (n == NULL || *n == '\0') {
			v = header_value(h);
			comment = internet_address_list_length(l) == 1 ?
			    comment_name(v) : NULL;
			if (comment != NULL || name != NULL)
				internet_address_set_name(ia, comment != NULL ?
				    comment : name);
			free(comment);
			free(v);
		}
		changed = 1;
	}
	if (!changed)
		return NULL;
	text = internet_address_list_to_string(l, NULL, TRUE);
	xasprintf(&out, "%.*s: %s", (int)strcspn(h, ": \t"), h, text);
	g_free(text);
	return out;
}

/* RFC 5322 3.6.4: <time.random@host>. */
static char *
message_id(const struct config *cfg)
{
	uint64_t	 r;
	char		*s;

	if (getrandom(&r, sizeof(r), 0) != sizeof(r))
		r = wall_us() ^ ((uint64_t)getpid() << 32);
	xasprintf(&s, "Message-ID: <%llu.%016llx@%s>",
	    (unsigned long long)time(NULL), (unsigned long long)r,
	    cfg->hostname);
	return s;
}

/*
 * Takes the recipients from To:, Cc: and Bcc: with -t, drops Bcc:, gives
 * local addresses the sender's mailbox and adds From:, Date: and
 * Message-ID: when missing.
 */
static void
fix_header(struct msg *m, const struct opts *o, const struct config *cfg,
    const char *sender)
{
	InternetAddressList	*l;
	InternetAddress		*ia;
	char			*v, *text, *nh, date[64];
	size_t			 i, j;
	int			 from = 0, has_date = 0, has_id = 0, rcpt, bcc;
	struct tm		 tm;
	time_t			 now = time(NULL);

	for (i = j = 0; i < m->nhdrs; i++) {
		bcc = header_is(m->hdrs[i], "bcc");
		rcpt = bcc || header_is(m->hdrs[i], "to") ||
		    header_is(m->hdrs[i], "cc");
		has_date |= header_is(m->hdrs[i], "date");
		has_id |= header_is(m->hdrs[i], "message-id");
		if (rcpt || header_is(m->hdrs[i], "from")) {
			v = header_value(m->hdrs[i]);
			l = parse_addresses(v);
			free(v);
			if (rcpt && o->extract)
				add_rcpts(m, cfg, sender, l);
			nh = bcc ? NULL : rewrite_header(m->hdrs[i], l, cfg,
			    sender, rcpt ? NULL : o->name);
			from |= !rcpt;
			if (l != NULL)
				g_object_unref(l);
			if (bcc || nh != NULL) {
				free(m->hdrs[i]);
				if ((m->hdrs[i] = nh) == NULL)
					continue;
			}
		}
		m->hdrs[j++] = m->hdrs[i];
	}
	m->nhdrs = j;
	if (!from) {
		ia = internet_address_mailbox_new(o->name, sender);
		text = internet_address_to_string(ia, NULL, TRUE);
		xasprintf(&nh, "From: %s", text);
		g_free(text);
		g_object_unref(ia);
		add_header(m, nh);
	}
	if (!has_date && localtime_r(&now, &tm) != NULL &&
	    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm)) {
		xasprintf(&nh, "Date: %s", date);
		add_header(m, nh);
	}
	if (!has_id)
		add_header(m, message_id(cfg));
	/* SIZE=: the header as sent, folds as CRLF, and the body. */
	m->size = 2 + m->bodysize;
	for (i = 0; i < m->nhdrs; i++)
		for (v = m->hdrs[i]; v != NULL; v = strchr(v + 1, '\n'))
			m->size += strcspn(v + (*v == '\n'), "\n") + 2;
}

static void
msg_free(struct msg *m)
{
	size_t	 i;

	for (i = 0; i < m->nhdrs; i++)
		free(m->hdrs[i]);
	free(m->hdrs);
	for (i = 0; i < m->nrcpts; i++)
		free(m->rcpts[i]);
	free(m->rcpts);
	if (m->body != NULL)
		fclose(m->body);
}

/* ---- SMTP to relayd ---- */

static void
conn_close(struct conn *c)
{
	if (c->r != NULL)
		fclose(c->r);
	if (c->w != NULL)
		fclose(c->w);
	c->r = c->w = NULL;
}

/* Connects with timeouts on every read and write; -1 with why. */
static int
conn_open(struct conn *c, const struct sockaddr_storage *ss)
{
	struct timeval	 tv = { IO_TIMEOUT_SEC, 0 };
	int		 fd, fd2 = -1;

	/* On Linux SO_SNDTIMEO bounds connect() too. */
	if ((fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) ==
	    -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == -1 ||
	    connect(fd, (const struct sockaddr *)ss, ss->ss_family ==
	    AF_INET ? sizeof(struct sockaddr_in) :
	    sizeof(struct sockaddr_in6)) == -1 ||
	    (fd2 = dup(fd)) == -1 || (c->r = fdopen(fd, "r")) == NULL ||
	    (c->w = fdopen(fd2, "w")) == NULL) {
		snprintf(c->text, sizeof(c->text), "%s", errno ==
		    EINPROGRESS || errno == EAGAIN ? "no answer in time" :
		    strerror(errno));
		if (c->r != NULL)
			fclose(c->r);
		else if (fd != -1)
			close(fd);
		if (fd2 != -1)
			close(fd2);
		c->r = NULL;
		return -1;
	}
	return 0;
}

static void
set_timeout(struct conn *c, int sec)
{
	struct timeval	 tv = { sec, 0 };

	setsockopt(fileno(c->r), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* One reply, its last line kept; its code, or -1 with why in text. */
static int
conn_reply(struct conn *c)
{
	char	 line[REPLY_LINE_MAX];
	size_t	 n;
	int	 more;

	do {
		if (fgets(line, sizeof(line), c->r) == NULL) {
			snprintf(c->text, sizeof(c->text), "%s", ferror(c->r) ?
			    (errno == EAGAIN ? "no answer in time" :
			    strerror(errno)) : "relayd closed the connection");
			return -1;
		}
		n = strcspn(line, "\r\n");
		if (line[n] == '\0')	/* longer than we keep: skip the rest */
			while ((more = getc(c->r)) != EOF && more != '\n')
				;
		line[n] = '\0';
		if (c->verbose)
			fprintf(stderr, "<<< %s\n", line);
		if (n < 3 || strspn(line, "0123456789") < 3 ||
		    (line[3] != '\0' && line[3] != ' ' && line[3] != '-')) {
			c->garbled = 1;
			snprintf(c->text, sizeof(c->text), "not an SMTP reply: "
			    "\"%.60s\"", line);
			return -1;
		}
		/* relayd's text, but shown on a terminal: no controls. */
		for (n = 0; line[n] != '\0'; n++)
			if ((unsigned char)line[n] < ' ' || line[n] == 127)
				line[n] = '?';
		strlcpy_r(c->text, line, sizeof(c->text));
	} while (line[3] == '-');
	return (line[0] - '0') * 100 + (line[1] - '0') * 10 + line[2] - '0';
}

static int
conn_cmd(struct conn *c, const char *fmt, ...) PRINTFLIKE(2, 3);

static int
conn_cmd(struct conn *c, const char *fmt, ...)
{
	va_list	 ap;

	if (c->verbose) {
		fputs(">>> ", stderr);
		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
		fputc('\n', stderr);
	}
	va_start(ap, fmt);
	vfprintf(c->w, fmt, ap);
	va_end(ap);
	fputs("\r\n", c->w);
	if (fflush(c->w) == EOF) {
		snprintf(c->text, sizeof(c->text), "%s", strerror(errno));
		return -1;
	}
	return conn_reply(c);
}

/* A line of DATA, dot-stuffed. */
static void
put_line(struct conn *c, const char *s, size_t len)
{
	if (len > 0 && s[0] == '.')
		putc('.', c->w);
	fwrite(s, 1, len, c->w);
	fputs("\r\n", c->w);
}

/*
 * The header, a blank line, the body and the final dot; -1 with why. The
 * dot is not sent after an error: relayd drops what it got.
 */
static int
put_message(struct conn *c, struct msg *m)
{
	char	*line;
	size_t	 cap = 0, i, n;
	ssize_t	 len;

	for (i = 0; i < m->nhdrs; i++)
		for (line = m->hdrs[i]; ; line += n + 1) {
			n = strcspn(line, "\n");
			put_line(c, line, n);
			if (line[n] == '\0')
				break;
		}
	put_line(c, "", 0);
	line = NULL;
	rewind(m->body);
	while (!ferror(c->w) && (len = getline(&line, &cap, m->body)) > 0)
		put_line(c, line, (size_t)len - 1);
	free(line);
	if (ferror(m->body)) {
		snprintf(c->text, sizeof(c->text), "temporary file: %s",
		    strerror(errno));
		return -1;
	}
	if (!ferror(c->w))
		fputs(".\r\n", c->w);
	if (fflush(c->w) == EOF || ferror(c->w)) {
		snprintf(c->text, sizeof(c->text), "%s", strerror(errno));
		return -1;
	}
	return 0;
}

/* A reply's exit code: 0 if it is the one wanted. */
static int
reply_exit(const struct conn *c, enum step st, int code)
{
	if (code == steps[st].want || (st == S_RCPT && code == 251))
		return 0;
	if (c->garbled)
		return EX_PROTOCOL;
	if (code < 0 || code / 100 == 4)
		return EX_TEMPFAIL;
	if (code / 100 != 5)
		return EX_PROTOCOL;
	if (code == 530 || strncmp(c->text + 3, " 5.7.", 5) == 0)
		return EX_NOPERM;
	return steps[st].refused;
}

/* One SMTP transaction; 0 once relayd took the message, else exit code. */
static int
deliver(struct conn *c, const struct config *cfg, const char *where,
    const char *sender, struct msg *m, char *why, size_t whylen)
{
	enum step	 st = S_GREETING;
	const char	*rcpt = NULL;
	size_t		 i;
	int		 code, ex, utf8 = eightbit(sender, strlen(sender));

	for (i = 0; i < m->nrcpts; i++)
		utf8 = utf8 || eightbit(m->rcpts[i], strlen(m->rcpts[i]));
	if ((ex = reply_exit(c, st, code = conn_reply(c))) != 0)
		goto refused;
	st = S_EHLO;
	if ((ex = reply_exit(c, st, code = conn_cmd(c, "EHLO %s",
	    cfg->hostname))) != 0)
		goto refused;
	st = S_MAIL;
	if ((ex = reply_exit(c, st, code = conn_cmd(c, "MAIL FROM:<%s> "
	    "SIZE=%llu%s%s", sender, (unsigned long long)m->size,
	    m->eightbit ? " BODY=8BITMIME" : "", utf8 ? " SMTPUTF8" : ""))) !=
	    0)
		goto refused;
	st = S_RCPT;
	for (i = 0; i < m->nrcpts; i++) {
		rcpt = m->rcpts[i];
		if ((ex = reply_exit(c, st, code = conn_cmd(c, "RCPT TO:<%s>",
		    rcpt))) != 0)
			goto refused;
	}
	rcpt = NULL;
	st = S_DATA;
	if ((ex = reply_exit(c, st, code = conn_cmd(c, "DATA"))) != 0)
		goto refused;
	st = S_END;
	if (put_message(c, m) == -1) {
		snprintf(why, whylen, "sending the message to relayd at %s "
		    "failed (%s); not sent, try again later", where, c->text);
		return EX_TEMPFAIL;
	}
	set_timeout(c, END_TIMEOUT_SEC);
	if ((ex = reply_exit(c, st, code = conn_reply(c))) != 0) {
		if (code < 0)
			snprintf(why, whylen, "relayd at %s did not confirm the "
			    "message (%s); it may or may not be queued", where,
			    c->text);
		else
			snprintf(why, whylen, "relayd refused the message: %s",
			    c->text);
		return ex;
	}
	set_timeout(c, IO_TIMEOUT_SEC);
	(void)conn_cmd(c, "QUIT");
	return 0;

refused:
	if (code < 0)
		snprintf(why, whylen, "relayd at %s: %s at %s; not sent, try "
		    "again later", where, c->text, steps[st].what);
	else if (code == 530)
		snprintf(why, whylen, "relayd at %s requires AUTH (%s), which "
		    "relayd-sendmail does not do: let loopback relay without "
		    "it ([smtp] require_auth = no); not sent", where, c->text);
	else
		snprintf(why, whylen, "relayd refused %s%s%s%s: %s; not sent",
		    steps[st].what, rcpt ? " <" : "", rcpt ? rcpt : "",
		    rcpt ? ">" : "", c->text);
	if (code >= 0)
		(void)conn_cmd(c, "QUIT");
	return ex;
}

static int
run(const struct opts *o, const struct config *cfg, struct msg *m,
    char *why, size_t whylen)
{
	struct sockaddr_storage	 ss;
	InternetAddressList	*l;
	struct conn		 c;
	char			*sender, where[ADDR_STRLEN];
	int			 i, ex = 0;

	if (pick_listener(cfg, &ss) == NULL) {
		snprintf(why, whylen, "%s: no listener relayd-sendmail can "
		    "use (plain SMTP on a loopback or wildcard address); add "
		    "one such as listen = 127.0.0.1:25", cfg->path);
		return EX_CONFIG;
	}
	sender = envelope_sender(o, cfg);
	for (i = 0; i < o->nargs && ex == 0; i++) {
		if ((l = parse_addresses(o->args[i])) == NULL) {
			snprintf(why, whylen, "\"%s\" is not an address",
			    o->args[i]);
			ex = EX_USAGE;
			break;
		}
		add_rcpts(m, cfg, sender, l);
		g_object_unref(l);
	}
	if (ex == 0 && o->nargs == 0 && !o->extract) {
		snprintf(why, whylen, "no recipients: name them, or -t to "
		    "take them from To:, Cc: and Bcc:");
		ex = EX_USAGE;
	}
	if (ex == 0 && (ex = read_message(o, cfg, m, why, whylen)) == 0)
		fix_header(m, o, cfg, sender);
	if (ex == 0 && m->nrcpts == 0) {
		snprintf(why, whylen, "no recipients in To:, Cc: or Bcc:");
		ex = EX_DATAERR;
	}
	if (ex != 0) {
		free(sender);
		return ex;
	}
	addr_ntop_port((struct sockaddr *)&ss, where, sizeof(where));
	memset(&c, 0, sizeof(c));
	c.verbose = o->verbose;
	if (conn_open(&c, &ss) == -1) {
		snprintf(why, whylen, "cannot reach relayd at %s: %s; not "
		    "sent, try again later", where, c.text);
		ex = EX_TEMPFAIL;
	} else
		ex = deliver(&c, cfg, where, sender, m, why, whylen);
	conn_close(&c);
	free(sender);
	return ex;
}

int
main(int argc, char *argv[])
{
	struct opts	 o;
	struct config	*cfg;
	struct msg	 m;
	char		 why[2048];
	int		 ex, fd;

	parse_opts(argc, argv, &o);
	/*
	 * A closed standard input is no message; closed standard output or
	 * error would get the config file or the socket: /dev/null there.
	 */
	if (fcntl(STDIN_FILENO, F_GETFD) == -1) {
		fprintf(stderr, "relayd-sendmail: standard input is closed; "
		    "no message\n");
		return EX_NOINPUT;
	}
	while ((fd = open("/dev/null", O_RDWR)) != -1 && fd <= STDERR_FILENO)
		;
	if (fd > STDERR_FILENO)
		close(fd);
	signal(SIGPIPE, SIG_IGN);
	cfg = load_config(o.conf);
	g_mime_init();
	addr_options = g_mime_parser_options_new();
	g_mime_parser_options_set_allow_addresses_without_domain(addr_options,
	    TRUE);
	memset(&m, 0, sizeof(m));
	ex = run(&o, cfg, &m, why, sizeof(why));
	if (ex != 0)
		fprintf(stderr, "relayd-sendmail: %s\n", why);
	msg_free(&m);
	config_free(cfg);
	g_mime_parser_options_free(addr_options);
	g_mime_shutdown();
	return ex;
}

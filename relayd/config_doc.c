/*
 * config_doc.c - relayd.conf's documentation: `relayd -D` writes every key
 * with its default and help as a commented config (conf/relayd.conf), and
 * `relayd -M` writes relayd.conf(5). Both come from config.c's key table,
 * so the example and the manual name exactly the keys, defaults and bounds
 * the reader applies. Only writes to the FILE it is given.
 */
#include "autoconf.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "config_doc.h"
#include "util.h"

#define KB	1024ULL
#define MB	(1024ULL * 1024)

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

	for (i = 0; i < config_nkeys; i++) {
		const struct cfg_key *k = &config_keys[i];
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
	for (i = 0; i < config_nkeys; i++) {
		if (strcmp(section, config_keys[i].section) != 0) {
			section = config_keys[i].section;
			fprintf(fp, ".SS [%s]\n", section);
		}
		man_key(fp, &config_keys[i]);
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

/*
 * smtp_proto.c - SMTP syntax, with no I/O and no session state: what a
 * command line says, and how the bytes of DATA are decoded. The session
 * (smtp_session.c) decides what to do with it. Unit tests drive it
 * directly, and so does the fuzzer.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp_proto.h"
#include "util.h"

static const struct {
	const char	*verb;
	enum smtp_cmd	 cmd;
} verbs[] = {
	{ "HELO", CMD_HELO }, { "EHLO", CMD_EHLO }, { "MAIL", CMD_MAIL },
	{ "RCPT", CMD_RCPT }, { "DATA", CMD_DATA }, { "BDAT", CMD_BDAT },
	{ "RSET", CMD_RSET }, { "NOOP", CMD_NOOP }, { "QUIT", CMD_QUIT },
	{ "HELP", CMD_HELP }, { "VRFY", CMD_VRFY }, { "EXPN", CMD_EXPN },
	{ "STARTTLS", CMD_STARTTLS }, { "AUTH", CMD_AUTH },
	/* HTTP sent to an SMTP port: a browser, a proxy, or cross-protocol. */
	{ "GET", CMD_HTTP }, { "POST", CMD_HTTP }, { "HEAD", CMD_HTTP },
	{ "PUT", CMD_HTTP }, { "CONNECT", CMD_HTTP }, { "OPTIONS", CMD_HTTP },
	{ "DELETE", CMD_HTTP },
};

enum smtp_cmd
smtp_cmd_parse(const char *line, const char **args)
{
	size_t	 n, i;

	for (n = 0; line[n] != '\0' && line[n] != ' '; n++)
		;
	*args = line + n;
	if (**args == ' ')
		(*args)++;
	for (i = 0; i < NELEM(verbs); i++)
		if (strlen(verbs[i].verb) == n &&
		    strncasecmp(line, verbs[i].verb, n) == 0)
			return verbs[i].cmd;
	return CMD_UNKNOWN;
}

const char *
smtp_cmd_name(enum smtp_cmd cmd)
{
	size_t	 i;

	for (i = 0; i < NELEM(verbs); i++)
		if (verbs[i].cmd == cmd)
			return verbs[i].verb;
	return "UNKNOWN";
}

/* Length of a valid UTF-8 sequence at s (>= 2), or 0. */
static size_t
utf8_seq(const unsigned char *s)
{
	size_t	 n, i;
	unsigned c = s[0];

	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	for (i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f) ||
	    (c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] > 0x8f))
		return 0;	/* overlong, surrogate, beyond U+10FFFF */
	return n;
}

static int
domain_ok(const char *d, size_t len, int *utf8)
{
	size_t	 i, label = 0;

	if (len == 0 || len > SMTP_DOMAIN_MAX)
		return 0;
	if (d[0] == '[')	/* address literal; checked for shape only */
		return d[len - 1] == ']' && len > 2 &&
		    strspn(d + 1, "0123456789abcdefABCDEF.:IPv6") >= len - 2;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)d[i];
		if (c >= 0x80) {
			size_t n = utf8_seq((const unsigned char *)d + i);
			if (n == 0 || i + n > len)
				return 0;
			*utf8 = 1;
			i += n - 1;
			label += n;
		} else if (c == '.') {
			if (label == 0)
				return 0;
			label = 0;
		} else if (isalnum(c) || c == '-' || c == '_')
			label++;
		else
			return 0;
		if (label > 63)
			return 0;
	}
	return label > 0 || d[len - 1] == '.';
}

static int
local_ok(const char *l, size_t len, int *utf8)
{
	size_t	 i;

	if (len == 0 || len > 64 * 4)
		return 0;
	if (l[0] == '"') {		/* quoted-string */
		if (len < 2 || l[len - 1] != '"')
			return 0;
		for (i = 1; i < len - 1; i++) {
			unsigned char c = (unsigned char)l[i];
			if (c == '\\') {
				if (++i >= len - 1 || l[i] < 0x20 ||
				    (unsigned char)l[i] == 0x7f)
					return 0;
			} else if (c == '"' || c < 0x20 || c == 0x7f)
				return 0;
			else if (c >= 0x80) {
				size_t n = utf8_seq((const unsigned char *)l + i);
				if (n == 0)
					return 0;
				*utf8 = 1;
				i += n - 1;
			}
		}
		return 1;
	}
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)l[i];
		if (c >= 0x80) {
			size_t n = utf8_seq((const unsigned char *)l + i);
			if (n == 0 || i + n > len)
				return 0;
			*utf8 = 1;
			i += n - 1;
		} else if (c == '.') {
			if (i == 0 || i == len - 1 || l[i + 1] == '.')
				return 0;
		} else if (!isalnum(c) && strchr("!#$%&'*+-/=?^_`{|}~", c) == NULL)
			return 0;
	}
	return 1;
}

int
smtp_parse_path(const char *arg, const char *prefix, char *addr, size_t len,
    const char **params, int *utf8, const char **why)
{
	const char	*p, *end, *at;
	size_t		 n;

	*utf8 = 0;
	if (strncasecmp(arg, prefix, strlen(prefix)) != 0) {
		*why = "syntax: expected %s<address>";
		return -1;
	}
	p = arg + strlen(prefix);
	while (*p == ' ')		/* "MAIL FROM: <a@b>" is common */
		p++;
	if (*p == '<') {
		p++;
		/* Quoted local parts may hold '>'; find the real end. */
		for (end = p; *end != '\0' && *end != '>'; end++) {
			if (*end != '"')
				continue;
			for (end++; *end != '\0' && *end != '"'; end++)
				if (*end == '\\' && end[1] != '\0')
					end++;
			if (*end == '\0')	/* unclosed quote: no '>' */
				break;
		}
		if (*end != '>') {
			*why = "syntax: missing '>'";
			return -1;
		}
		*params = end + 1;
	} else {
		/* Some devices omit the brackets; accept a bare address. */
		end = p + strcspn(p, " ");
		*params = end;
	}
	while (**params == ' ')
		(*params)++;
	n = (size_t)(end - p);
	/* Strip an RFC 821 source route "@a,@b:". */
	if (n > 0 && *p == '@') {
		const char *colon = memchr(p, ':', n);
		if (colon == NULL) {
			*why = "syntax: bad source route";
			return -1;
		}
		n -= (size_t)(colon + 1 - p);
		p = colon + 1;
	}
	if (n >= len || n > SMTP_PATH_MAX) {
		*why = "address too long";
		return -1;
	}
	memcpy(addr, p, n);
	addr[n] = '\0';
	if (n == 0)
		return 0;
	if ((at = strrchr(addr, '@')) == NULL) {
		*why = "address lacks a domain";
		return -1;
	}
	if (!local_ok(addr, (size_t)(at - addr), utf8) ||
	    !domain_ok(at + 1, strlen(at + 1), utf8)) {
		*why = "address syntax";
		return -1;
	}
	return 0;
}

int
smtp_param_next(const char **pp, char *key, size_t keylen, char *val,
    size_t vallen)
{
	const char	*p = *pp, *e, *eq;
	size_t		 kn, vn;

	while (*p == ' ')
		p++;
	if (*p == '\0')
		return 0;
	e = p + strcspn(p, " ");
	eq = memchr(p, '=', (size_t)(e - p));
	kn = (size_t)((eq ? eq : e) - p);
	vn = eq ? (size_t)(e - eq - 1) : 0;
	if (kn >= keylen)
		kn = keylen - 1;
	if (vn >= vallen)
		vn = vallen - 1;
	memcpy(key, p, kn);
	key[kn] = '\0';
	if (eq != NULL)
		memcpy(val, eq + 1, vn);
	val[vn] = '\0';
	*pp = e;
	return 1;
}

int
smtp_parse_bdat(const char *arg, uint64_t *size, int *last)
{
	char	 num[24];
	size_t	 n = strspn(arg, "0123456789");

	if (n == 0 || n >= sizeof(num))
		return -1;
	memcpy(num, arg, n);
	num[n] = '\0';
	if (parse_u64(num, 0, UINT64_MAX, size) == -1)
		return -1;
	arg += n;
	while (*arg == ' ')
		arg++;
	*last = 0;
	if (strncasecmp(arg, "LAST", 4) == 0) {
		*last = 1;
		arg += 4;
		while (*arg == ' ')
			arg++;
	}
	return *arg == '\0' ? 0 : -1;
}

int
smtp_valid_helo(const char *s)
{
	int	 utf8 = 0;
	size_t	 len = strlen(s);

	if (len > 0 && s[0] == '[')
		return domain_ok(s, len, &utf8);
	/* Printers say things like "RNP002673" or "scanner_3": be lenient. */
	return len > 0 && len <= SMTP_DOMAIN_MAX &&
	    strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "0123456789.-_:[]") == len;
}

size_t
smtp_header_value(const char *h, size_t len, const char *name, char *out,
    size_t outlen)
{
	const char	*p = h, *end = h + len, *eol;
	size_t		 n = strlen(name), o = 0;
	int		 in = 0;

	if (outlen == 0)
		return 0;
	for (; p < end; p = eol + 1) {
		if ((eol = memchr(p, '\n', (size_t)(end - p))) == NULL)
			eol = end;
		if (p == eol || (*p == '\r' && p + 1 == eol))
			break;			/* the blank line */
		if (in && (*p == ' ' || *p == '\t')) {
			/* A continuation: one space for the fold. */
		} else if (in)
			break;
		else if ((size_t)(eol - p) > n && strncasecmp(p, name, n) ==
		    0 && p[n] == ':') {
			in = 1;
			p += n + 1;
		} else
			continue;
		for (; p < eol && *p != '\r'; p++) {
			if ((*p == ' ' || *p == '\t') &&
			    (o == 0 || out[o - 1] == ' '))
				continue;
			if (o + 1 < outlen)
				out[o++] = *p == '\t' ? ' ' : *p;
		}
		if (o > 0 && out[o - 1] != ' ' && o + 1 < outlen)
			out[o++] = ' ';
		if (eol == end)
			break;
	}
	while (o > 0 && out[o - 1] == ' ')
		o--;
	out[o] = '\0';
	return o;
}

void
data_dec_init(struct data_dec *d, int normalize)
{
	memset(d, 0, sizeof(*d));
	d->state = DEC_BOL;
	d->normalize = normalize;
}

/*
 * A bare CR or LF: counted, and written as CRLF when normalizing. Either way
 * the decoder stays inside the line, so that "\n.\n" and friends can never
 * look like the end of the data.
 */
static char *
bare(struct data_dec *d, char *o, char c)
{
	d->bare++;
	if (d->normalize) {
		*o++ = '\r';
		*o++ = '\n';
	} else
		*o++ = c;
	return o;
}

size_t
data_dec_run(struct data_dec *d, const char *in, size_t inlen, char *out,
    size_t *outlen, int *end)
{
	char	*o = out;
	size_t	 i = 0;

	*end = 0;
	while (i < inlen) {
		char c;

		/* Fast path: copy the rest of a line in one go. */
		if (d->state == DEC_TEXT) {
			size_t j = i;
			while (j < inlen && in[j] != '\r' && in[j] != '\n')
				j++;
			memcpy(o, in + i, j - i);
			o += j - i;
			if ((i = j) == inlen)
				break;
		}
		c = in[i++];
		switch (d->state) {
		case DEC_BOL:
			if (c == '.') {
				d->state = DEC_DOT;
				continue;
			}
			break;		/* handled as text below */
		case DEC_DOT:
			if (c == '\r') {
				d->state = DEC_DOTCR;
				continue;
			}
			if (c == '\n')		/* ".\n": not an end */
				*o++ = '.';
			/* ".x": the dot was stuffing; drop it. */
			break;
		case DEC_DOTCR:
			if (c == '\n') {
				*outlen = (size_t)(o - out);
				*end = 1;
				d->state = DEC_BOL;
				return i;
			}
			*o++ = '.';		/* ".\r" then more: bare CR */
			o = bare(d, o, '\r');
			d->state = DEC_TEXT;
			if (c == '\r') {
				d->state = DEC_CR;
				continue;
			}
			break;
		case DEC_CR:
			if (c == '\n') {
				*o++ = '\r';
				*o++ = '\n';
				d->state = DEC_BOL;
				continue;
			}
			o = bare(d, o, '\r');
			d->state = DEC_TEXT;
			if (c == '\r') {
				d->state = DEC_CR;
				continue;
			}
			break;
		case DEC_TEXT:
			break;
		}
		/* Ordinary text. */
		if (c == '\r')
			d->state = DEC_CR;
		else if (c == '\n') {
			o = bare(d, o, '\n');
			d->state = DEC_TEXT;
		} else {
			*o++ = c;
			d->state = DEC_TEXT;
		}
	}
	for (i = inlen > 3 ? inlen - 3 : 0; i < inlen; i++)
		d->tail = d->tail << 8 | (unsigned char)in[i];
	*outlen = (size_t)(o - out);
	return inlen;
}

int
data_dec_lf_end(const struct data_dec *d)
{
	return (d->tail & 0xffffff) == ((uint32_t)'\n' << 16 |
	    (uint32_t)'.' << 8 | '\n');
}

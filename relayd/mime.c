/*
 * mime.c - charsets, UTF-8 repair and base64 for the Graph mapping.
 *
 * Graph takes JSON, so every string relayd sends must be valid UTF-8 and
 * every attachment base64. Mail arrives in any charset, often mislabelled:
 * labels are read the way browsers read them (the WHATWG Encoding
 * Standard's aliases), conversion goes through iconv, and bytes that do not
 * decode become U+FFFD, one per maximal invalid subsequence, as Unicode
 * recommends. Nothing here keeps state; every function is thread-safe.
 */
#include <errno.h>
#include <iconv.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gmime/gmime.h>

#include "mime.h"
#include "util.h"

static pthread_once_t	 mime_once = PTHREAD_ONCE_INIT;

static void
mime_init_once(void)
{
	g_mime_init();
}

void
mime_init(void)
{
	pthread_once(&mime_once, mime_init_once);
}

/* A growable output buffer; never fails (x-allocators). */
struct obuf {
	char	*p;
	size_t	 len, cap;
};

static void
ob_reserve(struct obuf *b, size_t more)
{
	if (b->len + more + 1 <= b->cap)
		return;
	while (b->len + more + 1 > b->cap)
		b->cap = b->cap ? b->cap * 2 : 256;
	b->p = xrealloc(b->p, b->cap);
}

static void
ob_add(struct obuf *b, const void *s, size_t n)
{
	if (n == 0)
		return;
	ob_reserve(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void
ob_fffd(struct obuf *b)
{
	ob_add(b, "\xef\xbf\xbd", 3);
}

static char *
ob_finish(struct obuf *b, size_t *outlen)
{
	ob_reserve(b, 0);
	b->p[b->len] = '\0';
	if (outlen != NULL)
		*outlen = b->len;
	return b->p;
}

/*
 * Length of the valid UTF-8 sequence at s (1..4), or 0 with *bad set to how
 * many bytes form the maximal invalid subpart to replace.
 */
static size_t
utf8_seq(const unsigned char *s, size_t n, size_t *bad)
{
	unsigned char	 b = s[0], lo = 0x80, hi = 0xbf;
	size_t		 need, k;

	if (b < 0x80)
		return 1;
	if (b >= 0xc2 && b <= 0xdf)
		need = 1;
	else if (b >= 0xe0 && b <= 0xef) {
		need = 2;
		if (b == 0xe0)
			lo = 0xa0;
		else if (b == 0xed)
			hi = 0x9f;
	} else if (b >= 0xf0 && b <= 0xf4) {
		need = 3;
		if (b == 0xf0)
			lo = 0x90;
		else if (b == 0xf4)
			hi = 0x8f;
	} else {
		*bad = 1;
		return 0;
	}
	for (k = 0; k < need; k++) {
		if (k + 1 >= n || s[k + 1] < lo || s[k + 1] > hi) {
			*bad = k + 1;
			return 0;
		}
		lo = 0x80;
		hi = 0xbf;
	}
	return need + 1;
}

int
mime_utf8_valid(const char *str, size_t n)
{
	const unsigned char	*s = (const unsigned char *)str;
	size_t			 i = 0, l, bad;
	uint64_t		 w;

	while (i < n) {
		if (n - i >= 8) {
			memcpy(&w, s + i, 8);
			if ((w & 0x8080808080808080ULL) == 0) {
				i += 8;
				continue;
			}
		}
		if ((l = utf8_seq(s + i, n - i, &bad)) == 0)
			return 0;
		i += l;
	}
	return 1;
}

char *
mime_utf8_repair(const char *str, size_t n, size_t *outlen)
{
	const unsigned char	*s = (const unsigned char *)str;
	struct obuf		 b = { NULL, 0, 0 };
	size_t			 i = 0, start = 0, l, bad;

	ob_reserve(&b, n);
	while (i < n) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		if ((l = utf8_seq(s + i, n - i, &bad)) > 0) {
			i += l;
			continue;
		}
		ob_add(&b, s + start, i - start);
		ob_fffd(&b);
		i += bad;
		start = i;
	}
	ob_add(&b, s + start, i - start);
	return ob_finish(&b, outlen);
}

enum cs_kind { CS_AUTO, CS_UTF8, CS_ICONV };

struct cs_alias {
	const char	*label;
	enum cs_kind	 kind;
	const char	*iconv;
};

/* Labels whose common meaning differs from iconv's, after WHATWG. */
static const struct cs_alias cs_aliases[] = {
	{ "us-ascii", CS_AUTO, NULL }, { "ascii", CS_AUTO, NULL },
	{ "us_ascii", CS_AUTO, NULL }, { "ansi_x3.4-1968", CS_AUTO, NULL },
	{ "unknown-8bit", CS_AUTO, NULL }, { "x-unknown", CS_AUTO, NULL },
	{ "unknown", CS_AUTO, NULL }, { "default", CS_AUTO, NULL },
	{ "utf-8", CS_UTF8, NULL }, { "utf8", CS_UTF8, NULL },
	{ "unicode-1-1-utf-8", CS_UTF8, NULL }, { "x-unicode20utf8", CS_UTF8,
	  NULL },
	{ "iso-8859-1", CS_ICONV, "CP1252" }, { "iso8859-1", CS_ICONV,
	  "CP1252" },
	{ "iso_8859-1", CS_ICONV, "CP1252" }, { "latin1", CS_ICONV, "CP1252" },
	{ "l1", CS_ICONV, "CP1252" }, { "cp819", CS_ICONV, "CP1252" },
	{ "windows-1252", CS_ICONV, "CP1252" }, { "cp1252", CS_ICONV,
	  "CP1252" },
	{ "x-cp1252", CS_ICONV, "CP1252" },
	{ "iso-8859-9", CS_ICONV, "CP1254" }, { "latin5", CS_ICONV, "CP1254" },
	{ "tis-620", CS_ICONV, "CP874" }, { "iso-8859-11", CS_ICONV, "CP874" },
	{ "shift_jis", CS_ICONV, "CP932" }, { "shift-jis", CS_ICONV, "CP932" },
	{ "sjis", CS_ICONV, "CP932" }, { "x-sjis", CS_ICONV, "CP932" },
	{ "ms_kanji", CS_ICONV, "CP932" }, { "windows-31j", CS_ICONV,
	  "CP932" },
	{ "gb2312", CS_ICONV, "GB18030" }, { "gbk", CS_ICONV, "GB18030" },
	{ "x-gbk", CS_ICONV, "GB18030" }, { "euc-cn", CS_ICONV, "GB18030" },
	{ "cp936", CS_ICONV, "GB18030" },
	{ "ks_c_5601-1987", CS_ICONV, "CP949" }, { "euc-kr", CS_ICONV,
	  "CP949" },
};

/*
 * A byte iconv refuses that the WHATWG decoders map all the same: the five
 * bytes windows-1252 leaves unassigned are U+0081, U+008D, U+008F, U+0090
 * and U+009D; gb18030's 0x80 is the euro sign.
 */
static const char *
whatwg_byte(const char *name, unsigned char c)
{
	static const char	*c1[] = { "\xc2\x81", "\xc2\x8d", "\xc2\x8f",
	    "\xc2\x90", "\xc2\x9d" };
	static const unsigned char c1b[] = { 0x81, 0x8d, 0x8f, 0x90, 0x9d };
	size_t			 i;

	if (strcmp(name, "CP1252") == 0) {
		for (i = 0; i < NELEM(c1b); i++)
			if (c == c1b[i])
				return c1[i];
	} else if (strcmp(name, "GB18030") == 0 && c == 0x80)
		return "\xe2\x82\xac";
	return NULL;
}

static char *
iconv_to_utf8(iconv_t cd, const char *name, const char *in, size_t len,
    size_t *outlen)
{
	const char	*w;

	struct obuf	 b = { NULL, 0, 0 };
	char		*ip = (char *)(uintptr_t)in, *op;
	size_t		 il = len, ol, r;

	ob_reserve(&b, len * 2 + 16);
	while (il > 0) {
		op = b.p + b.len;
		ol = b.cap - b.len - 1;
		r = iconv(cd, &ip, &il, &op, &ol);
		b.len = (size_t)(op - b.p);
		if (r != (size_t)-1)
			break;
		if (errno == E2BIG) {
			ob_reserve(&b, il * 2 + 16);
			continue;
		}
		/* EILSEQ: one bad byte; EINVAL: a sequence cut at the end. */
		if (errno == EILSEQ &&
		    (w = whatwg_byte(name, (unsigned char)*ip)) != NULL)
			ob_add(&b, w, strlen(w));
		else
			ob_fffd(&b);
		if (errno == EINVAL)
			break;
		ip++;
		il--;
		iconv(cd, NULL, NULL, NULL, NULL);
	}
	/* Flush a stateful encoding's shift state. */
	ob_reserve(&b, 16);
	op = b.p + b.len;
	ol = b.cap - b.len - 1;
	iconv(cd, NULL, NULL, &op, &ol);
	b.len = (size_t)(op - b.p);
	return ob_finish(&b, outlen);
}

/* Windows-1252 for the bytes that are not UTF-8: the usual unlabelled text. */
static char *
auto_to_utf8(const char *in, size_t len, size_t *outlen)
{
	iconv_t		 cd;
	char		*out;

	if (mime_utf8_valid(in, len)) {
		out = xmalloc(len + 1);
		memcpy(out, in, len);
		out[len] = '\0';
		if (outlen != NULL)
			*outlen = len;
		return out;
	}
	if ((cd = iconv_open("UTF-8", "CP1252")) == (iconv_t)-1)
		return mime_utf8_repair(in, len, outlen);
	out = iconv_to_utf8(cd, "CP1252", in, len, outlen);
	iconv_close(cd);
	return out;
}

char *
mime_to_utf8(const char *charset, const char *in, size_t len, size_t *outlen)
{
	const char	*name = NULL;
	char		 label[64];
	iconv_t		 cd;
	char		*out;
	size_t		 i, n;

	if (charset == NULL)
		return auto_to_utf8(in, len, outlen);
	while (*charset == ' ' || *charset == '\t' || *charset == '"')
		charset++;
	n = strlen(charset);
	while (n > 0 && (charset[n - 1] == ' ' || charset[n - 1] == '"'))
		n--;
	if (n == 0 || n >= sizeof(label))
		return auto_to_utf8(in, len, outlen);
	memcpy(label, charset, n);
	label[n] = '\0';
	for (i = 0; i < NELEM(cs_aliases); i++) {
		if (strcasecmp(label, cs_aliases[i].label) != 0)
			continue;
		if (cs_aliases[i].kind == CS_AUTO)
			return auto_to_utf8(in, len, outlen);
		if (cs_aliases[i].kind == CS_UTF8)
			return mime_utf8_repair(in, len, outlen);
		name = cs_aliases[i].iconv;
		break;
	}
	if (name == NULL)
		name = g_mime_charset_iconv_name(label);
	if ((cd = iconv_open("UTF-8", name)) == (iconv_t)-1)
		return auto_to_utf8(in, len, outlen);
	out = iconv_to_utf8(cd, name, in, len, outlen);
	iconv_close(cd);
	return out;
}

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t
mime_b64_encode(const unsigned char *in, size_t n, char *out)
{
	char		*o = out;
	size_t		 i;
	uint32_t	 v;

	for (i = 0; i + 3 <= n; i += 3) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		o[0] = b64_alphabet[v >> 18];
		o[1] = b64_alphabet[(v >> 12) & 63];
		o[2] = b64_alphabet[(v >> 6) & 63];
		o[3] = b64_alphabet[v & 63];
		o += 4;
	}
	if (i < n) {
		v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		o[0] = b64_alphabet[v >> 18];
		o[1] = b64_alphabet[(v >> 12) & 63];
		o[2] = i + 1 < n ? b64_alphabet[(v >> 6) & 63] : '=';
		o[3] = '=';
		o += 4;
	}
	return (size_t)(o - out);
}

/* 0..63 for the alphabet, 64 for '=', 65 for white space, 66 otherwise. */
static unsigned char	 b64_class[256];
static pthread_once_t	 b64_once = PTHREAD_ONCE_INIT;

static void
b64_class_init(void)
{
	int	 i;

	memset(b64_class, 66, sizeof(b64_class));
	for (i = 0; i < 64; i++)
		b64_class[(unsigned char)b64_alphabet[i]] = (unsigned char)i;
	b64_class['='] = 64;
	b64_class[' '] = b64_class['\t'] = b64_class['\r'] =
	    b64_class['\n'] = 65;
}

long
mime_b64_canonical(const char *in, size_t len, char *out)
{
	const unsigned char	*s = (const unsigned char *)in, *end = s + len;
	const unsigned char	*eol;
	size_t			 o = 0, n, i, pad, neq = 0;
	unsigned char		 c, last;

	pthread_once(&b64_once, b64_class_init);
	/* Line by line: memcpy the run, then check it. */
	while (s < end) {
		eol = memchr(s, '\n', (size_t)(end - s));
		n = (eol != NULL ? (size_t)(eol - s) : (size_t)(end - s));
		if (n > 0 && s[n - 1] == '\r')
			n--;
		/* Usual case: the whole line is alphabet (no branch per byte). */
		for (c = 0, i = 0; i < n; i++)
			c |= b64_class[s[i]];
		if (c < 64) {
			memmove(out + o, s, n);
			o += n;
			s = eol != NULL ? eol + 1 : end;
			continue;
		}
		for (i = 0; i < n; i++) {
			c = b64_class[s[i]];
			if (c < 64)
				continue;
			if (c == 65)
				break;
			if (c == 64)
				break;
			return -1;
		}
		memmove(out + o, s, i);	/* out may be in */
		o += i;
		/* The rest of the line may only be '=' padding and blanks. */
		for (; i < n; i++) {
			c = b64_class[s[i]];
			if (c == 64) {
				out[o++] = '=';
				neq++;
			} else if (c != 65)
				return -1;
		}
		s = eol != NULL ? eol + 1 : end;
	}
	if (o % 4 != 0)
		return -1;
	if (o == 0)
		return 0;
	/* '=' only as the last one or two, and unused bits must be zero. */
	pad = out[o - 1] == '=' ? (out[o - 2] == '=' ? 2 : 1) : 0;
	if (neq != pad)
		return -1;
	if (pad == 0)
		return (long)o;
	last = b64_class[(unsigned char)out[o - pad - 1]];
	if (last >= 64 || (pad == 2 && (last & 15) != 0) ||
	    (pad == 1 && (last & 3) != 0))
		return -1;
	return (long)o;
}

void
mime_b64_dec_init(struct mime_b64dec *d)
{
	pthread_once(&b64_once, b64_class_init);
	memset(d, 0, sizeof(*d));
}

/* The bytes of a partial group of 2 or 3 characters (1 or 2 bytes). */
static size_t
b64_flush(struct mime_b64dec *d, unsigned char *o)
{
	size_t	 k = 0;

	if (d->n == 2) {
		o[k++] = (unsigned char)(d->v >> 4);
	} else if (d->n == 3) {
		o[k++] = (unsigned char)(d->v >> 10);
		o[k++] = (unsigned char)(d->v >> 2);
	}
	d->v = 0;
	d->n = 0;
	return k;
}

size_t
mime_b64_dec_step(struct mime_b64dec *d, const char *in, size_t len,
    unsigned char *out)
{
	const unsigned char	*s = (const unsigned char *)in;
	unsigned char		*o = out, c;
	size_t			 i;

	for (i = 0; i < len && !d->done; i++) {
		c = b64_class[s[i]];
		if (c < 64) {
			d->pad = 0;	/* a lone '=' inside a group: a slip */
			d->v = d->v << 6 | c;
			if (++d->n == 4) {
				o[0] = (unsigned char)(d->v >> 16);
				o[1] = (unsigned char)(d->v >> 8);
				o[2] = (unsigned char)d->v;
				o += 3;
				d->v = 0;
				d->n = 0;
			}
		} else if (c == 64 && (d->n == 3 || (d->n == 2 && d->pad))) {
			/* Padding that completes a group ends the data. */
			o += b64_flush(d, o);
			d->done = 1;
		} else if (c == 64 && d->n == 2)
			d->pad = 1;
	}
	return (size_t)(o - out);
}

size_t
mime_b64_dec_end(struct mime_b64dec *d, unsigned char *out)
{
	return d->done ? 0 : b64_flush(d, out);
}

size_t
mime_b64_decode(const char *in, size_t len, unsigned char *out)
{
	struct mime_b64dec	 d;
	size_t			 n;

	mime_b64_dec_init(&d);
	n = mime_b64_dec_step(&d, in, len, out);
	return n + mime_b64_dec_end(&d, out + n);
}

/* ---- RFC 2047 encoded words ---- */

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/*
 * An encoded word at s (before end): its charset (without an RFC 2231
 * language) in cs, its decoded bytes appended to b, and the length of the
 * word; 0 if s does not start one.
 */
static size_t
encoded_word(const char *s, const char *end, char *cs, size_t cslen,
    struct obuf *b)
{
	const char	*p, *q, *t, *e;
	size_t		 n;
	int		 hi, lo;

	if (end - s < 8 || s[0] != '=' || s[1] != '?')
		return 0;
	p = s + 2;
	if ((q = memchr(p, '?', (size_t)(end - p))) == NULL || q == p ||
	    q + 3 > end || q[2] != '?')
		return 0;
	for (t = p; t < q; t++)
		if (*t <= ' ' || *t == '=' || (unsigned char)*t >= 0x7f)
			return 0;
	if (strchr("BbQq", q[1]) == NULL)
		return 0;
	t = q + 3;
	for (e = t; e + 1 < end && !(e[0] == '?' && e[1] == '='); e++)
		if (*e == '\r' || *e == '\n')
			return 0;
	if (e + 1 >= end)
		return 0;
	n = (size_t)(q - p);
	if ((q = memchr(p, '*', n)) != NULL)
		n = (size_t)(q - p);
	if (n == 0 || n >= cslen)
		return 0;
	memcpy(cs, p, n);
	cs[n] = '\0';
	if (t[-2] == 'B' || t[-2] == 'b') {
		ob_reserve(b, (size_t)(e - t));
		b->len += mime_b64_decode(t, (size_t)(e - t),
		    (unsigned char *)b->p + b->len);
	} else {
		for (p = t; p < e; p++) {
			if (*p == '_')
				ob_add(b, " ", 1);
			else if (*p == '=' && e - p >= 3 &&
			    (hi = hexval(p[1])) >= 0 && (lo = hexval(p[2])) >= 0) {
				char	 c = (char)(hi << 4 | lo);

				ob_add(b, &c, 1);
				p += 2;
			} else
				ob_add(b, p, 1);
		}
	}
	return (size_t)(e + 2 - s);
}

/* Converts the pending bytes of encoded words (charset cs) onto out. */
static void
words_flush(struct obuf *out, struct obuf *pend, const char *cs)
{
	char	*u;
	size_t	 n;

	if (pend->len == 0)
		return;
	u = mime_to_utf8(cs, pend->p, pend->len, &n);
	ob_add(out, u, n);
	free(u);
	pend->len = 0;
}

/* Appends text outside encoded words: raw bytes, UTF-8 or windows-1252. */
static void
words_literal(struct obuf *out, const char *s, size_t n)
{
	char	*u;
	size_t	 k;

	if (n == 0)
		return;
	u = mime_to_utf8(NULL, s, n, &k);
	ob_add(out, u, k);
	free(u);
}

char *
mime_decode_words(const char *in, size_t len, size_t *outlen)
{
	struct obuf	 out = { NULL, 0, 0 }, pend = { NULL, 0, 0 };
	struct obuf	 word = { NULL, 0, 0 };
	const char	*s = in, *end = in + len, *lit = in, *p;
	char		 cs[64], pcs[64] = "";
	size_t		 w;
	int		 blank;

	while (s < end) {
		word.len = 0;
		if ((w = encoded_word(s, end, cs, sizeof(cs), &word)) == 0) {
			s++;
			continue;
		}
		/*
		 * Text between two words that is only white space goes; the
		 * bytes of adjacent words in one charset are converted
		 * together, so a character split across two words survives.
		 */
		for (blank = 1, p = lit; p < s && blank; p++)
			blank = *p == ' ' || *p == '\t' || *p == '\r' ||
			    *p == '\n';
		if (!blank || pend.len == 0 || strcasecmp(cs, pcs) != 0)
			words_flush(&out, &pend, pcs);
		if (!blank || pcs[0] == '\0')
			words_literal(&out, lit, (size_t)(s - lit));
		ob_add(&pend, word.p, word.len);
		memcpy(pcs, cs, sizeof(pcs));
		s += w;
		lit = s;
	}
	words_flush(&out, &pend, pcs);
	words_literal(&out, lit, (size_t)(end - lit));
	free(pend.p);
	free(word.p);
	return ob_finish(&out, outlen);
}

/* Where a run of encoded words at s ends (only white space between). */
static const char *
words_run(const char *s, const char *end)
{
	struct obuf	 scratch = { NULL, 0, 0 };
	const char	*p, *last = s;
	char		 cs[64];
	size_t		 w;

	for (p = s; p < end; ) {
		if ((w = encoded_word(p, end, cs, sizeof(cs), &scratch)) == 0)
			break;
		last = p += w;
		while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' ||
		    *p == '\n'))
			p++;
	}
	free(scratch.p);
	return last;
}

/* Decoded text escaped for a quoted string or a comment. */
static void
add_escaped(struct obuf *b, const char *s, size_t n, const char *special)
{
	size_t	 i;

	for (i = 0; i < n; i++) {
		if (s[i] == '\r' || s[i] == '\n' || s[i] == '\t') {
			ob_add(b, " ", 1);
			continue;
		}
		if (strchr(special, s[i]) != NULL && s[i] != '\0')
			ob_add(b, "\\", 1);
		ob_add(b, s + i, 1);
	}
}

char *
mime_decode_address_words(const char *in)
{
	struct obuf	 b = { NULL, 0, 0 };
	const char	*s = in, *end = in + strlen(in), *run;
	char		*text;
	size_t		 n;
	int		 quoted = 0, comment = 0, angle = 0;

	while (s < end) {
		if (!angle && *s == '=' && s[1] == '?' &&
		    (run = words_run(s, end)) > s) {
			text = mime_decode_words(s, (size_t)(run - s), &n);
			if (!quoted && !comment)
				ob_add(&b, "\"", 1);
			add_escaped(&b, text, n, comment ? "()\\" : "\"\\");
			if (!quoted && !comment)
				ob_add(&b, "\"", 1);
			free(text);
			s = run;
			continue;
		}
		if (*s == '\\' && (quoted || comment) && s + 1 < end) {
			ob_add(&b, s, 2);
			s += 2;
			continue;
		}
		if (quoted)
			quoted = *s != '"';
		else if (comment)
			comment += *s == '(' ? 1 : *s == ')' ? -1 : 0;
		else if (angle)
			angle = *s != '>';
		else if (*s == '"')
			quoted = 1;
		else if (*s == '(')
			comment = 1;
		else if (*s == '<')
			angle = 1;
		ob_add(&b, s++, 1);
	}
	return ob_finish(&b, NULL);
}

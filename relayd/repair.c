/*
 * repair.c - the edits a malformed message needs before GMime parses it.
 *
 * Devices write header blocks that GMime misreads, and lose text:
 *   - a UTF-8 byte-order mark before the first header hides that header;
 *   - a header block without its blank line: GMime drops the first body
 *     line, or reads a part's headers as the message's own;
 *   - a line inside a header block that is neither a field nor a
 *     continuation (a broken fold) ends GMime's header block there.
 * The rule (the message's headers and every MIME part's alike): such a
 * line is joined to the field above (one space put before it) when more
 * header fields follow it before a blank line or a boundary line; else the
 * body starts at it (a blank line put before it). A boundary line right
 * after header fields gets a blank line before it. Nothing is removed but
 * the byte-order mark.
 *
 * One pass over the lines, following the multipart structure far enough to
 * know which lines are boundaries; the message is read in place (memory)
 * or a window at a time (a spool file: pages are read, never mapped, and
 * never held). The common case, a well-formed message, makes no edit and
 * costs one scan.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <gmime/gmime.h>

#include "repair.h"
#include "util.h"

#define WINDOW		65536	/* bytes of a file read at once */
#define PEEK		1024	/* bytes of a line needed to classify it */
#define CT_MAX		8192	/* bytes of a Content-Type field kept */
#define MAX_DEPTH	64	/* multipart nesting followed */
/*
 * The longest boundary taken (RFC 2046 allows 70): GMime matches up to
 * about 4 KiB; a multipart with a longer one is read as text, not lost.
 */
#define BOUNDARY_MAX	4000

struct src {
	const char	*mem;		/* the message in memory, or NULL */
	int		 fd;
	uint64_t	 base;		/* the message's offset in fd */
	uint64_t	 len;
	char		*buf;		/* file window: [wstart, wstart+wlen) */
	uint64_t	 wstart;
	size_t		 wlen;
	int		 err;
};

struct line {
	uint64_t	 pos;		/* offset in the message */
	uint64_t	 len;		/* with its line end; 0 at the end */
	const char	*p;		/* its first bytes */
	size_t		 n;		/* how many of them p holds */
};

struct scan {
	struct src	*src;
	struct repair	*r;
	const char	*bounds[MAX_DEPTH];
	size_t		 blen[MAX_DEPTH];
	int		 nb;
};

static int
src_fill(struct src *s, uint64_t pos)
{
	size_t	 want = WINDOW;
	ssize_t	 n;

	if (pos + want > s->len)
		want = (size_t)(s->len - pos);
	s->wstart = pos;
	s->wlen = 0;
	while (s->wlen < want) {
		n = pread(s->fd, s->buf + s->wlen, want - s->wlen,
		    (off_t)(s->base + pos + s->wlen));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			s->err = 1;
			return -1;
		}
		s->wlen += (size_t)n;
	}
	return 0;
}

/* The line at pos: its length, and its first bytes. */
static int
src_line(struct src *s, uint64_t pos, struct line *l)
{
	const char	*nl;
	uint64_t	 at;

	l->pos = pos;
	l->len = 0;
	l->n = 0;
	l->p = "";
	if (pos >= s->len || s->err)
		return 0;
	if (s->mem != NULL) {
		l->p = s->mem + pos;
		nl = memchr(l->p, '\n', (size_t)(s->len - pos));
		l->len = nl != NULL ? (uint64_t)(nl - l->p) + 1 : s->len - pos;
		l->n = (size_t)l->len;
		return 1;
	}
	if (pos < s->wstart || pos + PEEK > s->wstart + s->wlen) {
		if (!(pos >= s->wstart && s->wstart + s->wlen == s->len &&
		    pos < s->len) && src_fill(s, pos) == -1)
			return 0;
	}
	l->p = s->buf + (pos - s->wstart);
	l->n = (size_t)(s->wstart + s->wlen - pos);
	if ((nl = memchr(l->p, '\n', l->n)) != NULL) {
		l->len = (uint64_t)(nl - l->p) + 1;
		l->n = (size_t)l->len;
		return 1;
	}
	/* A line longer than the window: find its end, keep its start. */
	if (l->n > PEEK)
		l->n = PEEK;
	for (at = s->wstart + s->wlen; at < s->len; ) {
		char	 tmp[4096];
		size_t	 want = sizeof(tmp);
		ssize_t	 n;

		if (at + want > s->len)
			want = (size_t)(s->len - at);
		if ((n = pread(s->fd, tmp, want, (off_t)(s->base + at))) <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			s->err = 1;
			return 0;
		}
		if ((nl = memchr(tmp, '\n', (size_t)n)) != NULL) {
			l->len = at + (uint64_t)(nl - tmp) + 1 - pos;
			return 1;
		}
		at += (uint64_t)n;
	}
	l->len = s->len - pos;
	return 1;
}

static void
edit(struct repair *r, uint64_t off, unsigned del, const char *ins)
{
	if (r->n == r->cap) {
		r->cap = r->cap ? r->cap * 2 : 8;
		r->e = xrealloc(r->e, r->cap * sizeof(*r->e));
	}
	r->e[r->n].off = off;
	r->e[r->n].del = del;
	r->e[r->n].ins = ins;
	r->n++;
}

static int
is_blank(const struct line *l)
{
	return (l->n == 1 && l->p[0] == '\n') ||
	    (l->n == 2 && l->p[0] == '\r' && l->p[1] == '\n');
}

static int
is_field(const struct line *l)
{
	size_t	 i;

	for (i = 0; i < l->n; i++) {
		unsigned char c = (unsigned char)l->p[i];

		if (c == ':')
			break;
		if (c < 33 || c > 126)
			break;
	}
	if (i == 0)
		return 0;
	while (i < l->n && (l->p[i] == ' ' || l->p[i] == '\t'))
		i++;
	return i < l->n && l->p[i] == ':';
}

/* "--" boundary ["--"], then only white space. 2 if it closes. */
static int
boundary_is(const struct line *l, const char *b, size_t n)
{
	size_t	 i;
	int	 close = 0;

	if (l->n < n + 2 || l->p[0] != '-' || l->p[1] != '-' ||
	    memcmp(l->p + 2, b, n) != 0)
		return 0;
	i = n + 2;
	if (i + 1 < l->n && l->p[i] == '-' && l->p[i + 1] == '-') {
		close = 1;
		i += 2;
	}
	for (; i < l->n; i++)
		if (l->p[i] != ' ' && l->p[i] != '\t' && l->p[i] != '\r' &&
		    l->p[i] != '\n')
			return 0;
	return close ? 2 : 1;
}

/*
 * The first line at or after pos (a line start) that begins with "--",
 * the only lines that can be boundaries: in memory at memchr's speed (a
 * base64 part has no '-' at all), from a file line by line.
 */
static uint64_t
dash_line(struct src *s, uint64_t pos)
{
	const char	*q;
	struct line	 l;

	if (s->mem == NULL) {
		while (src_line(s, pos, &l) && !(l.n >= 2 && l.p[0] == '-' &&
		    l.p[1] == '-'))
			pos += l.len;
		return pos;
	}
	for (; pos < s->len; pos = (uint64_t)(q + 1 - s->mem)) {
		/* A '-' that starts a line and has another after it. */
		if ((q = memchr(s->mem + pos, '-', (size_t)(s->len - pos))) ==
		    NULL)
			break;
		if ((q == s->mem || q[-1] == '\n') &&
		    (uint64_t)(q + 1 - s->mem) < s->len && q[1] == '-')
			return (uint64_t)(q - s->mem);
	}
	return s->len;
}

/* Is the line a boundary of an enclosing multipart? */
static int
outer_boundary(const struct scan *sc, const struct line *l)
{
	int	 i;

	if (l->n < 3 || l->p[0] != '-' || l->p[1] != '-')
		return 0;
	for (i = 0; i < sc->nb; i++)
		if (boundary_is(l, sc->bounds[i], sc->blen[i]))
			return 1;
	return 0;
}

/* What an entity's Content-Type says of its body. */
struct ctinfo {
	int	 multipart;
	int	 message;
	char	*boundary;
};

static const char tspecials[] = "()<>@,;:\\\"/[]?=";

static int
is_token(int c)
{
	return c > ' ' && c < 0x7f && strchr(tspecials, c) == NULL;
}

/* Past type "/" subtype (RFC 2045 tokens) and white space; NULL if none. */
static const char *
type_end(const char *s)
{
	int	 part, k;

	for (part = 0; part < 2; part++) {
		while (isspace((unsigned char)*s))
			s++;
		for (k = 0; is_token((unsigned char)*s); s++)
			k++;
		if (k == 0)
			return NULL;
		if (part == 0) {
			while (isspace((unsigned char)*s))
				s++;
			if (*s++ != '/')
				return NULL;
		}
	}
	return s;
}

int
repair_type_ok(const char *s)
{
	if ((s = type_end(s)) == NULL)
		return 0;
	while (isspace((unsigned char)*s))
		s++;
	return *s == '\0' || *s == ';' || *s == '(';
}

/*
 * "multipart/mixed boundary=x": a parameter without the ';' before it.
 * The offset in s where the ';' belongs, or -1.
 */
static long
missing_semicolon(const char *s)
{
	const char	*e = type_end(s), *p;

	if (e == NULL || !isspace((unsigned char)*e))
		return -1;
	for (p = e; isspace((unsigned char)*p); p++)
		;
	if (!is_token((unsigned char)*p))
		return -1;
	while (is_token((unsigned char)*p))
		p++;
	while (isspace((unsigned char)*p))
		p++;
	return *p == '=' ? (long)(e - s) : -1;
}

static void
ct_read(const char *text, struct ctinfo *ci)
{
	GMimeParserOptions	*po = g_mime_parser_options_new();
	GMimeContentType	*ct;
	const char		*b;

	ci->multipart = ci->message = 0;
	free(ci->boundary);
	ci->boundary = NULL;
	g_mime_parser_options_set_parameter_compliance_mode(po,
	    GMIME_RFC_COMPLIANCE_LOOSE);
	ct = g_mime_content_type_parse(po, text);
	g_mime_parser_options_free(po);
	if (ct == NULL)
		return;
	if (g_mime_content_type_is_type(ct, "multipart", "*")) {
		ci->multipart = 1;
		/* Empty is a boundary ("--" lines); past BOUNDARY_MAX, none. */
		if ((b = g_mime_content_type_get_parameter(ct, "boundary")) !=
		    NULL && strlen(b) <= BOUNDARY_MAX)
			ci->boundary = xstrdup(b);
	} else if (g_mime_content_type_is_type(ct, "message", "rfc822"))
		ci->message = 1;
	g_object_unref(ct);
}

/* The first Content-Type field of a header block, as it is read. */
#define CT_LINES	16
struct ctfield {
	char		*text;		/* "Content-Type: ...", unfolded */
	size_t		 len;
	int		 nlines;
	size_t		 tstart[CT_LINES];	/* where each line's text is */
	uint64_t	 fpos[CT_LINES];	/* ... and where it is in the file */
	uint64_t	 at;		/* the field's first byte */
};

static void
ct_add(struct ctfield *f, uint64_t at, const char *p, size_t n)
{
	if (f->text == NULL)
		f->text = xmalloc(CT_MAX + 2);	/* a ";" may go in */
	if (f->len > 0 && f->len < CT_MAX)
		f->text[f->len++] = ' ';
	if (f->nlines < CT_LINES) {
		f->tstart[f->nlines] = f->len;
		f->fpos[f->nlines++] = at;
	}
	if (n > CT_MAX - f->len)
		n = CT_MAX - f->len;
	memcpy(f->text + f->len, p, n);
	f->len += n;
	while (f->len > 0 && (f->text[f->len - 1] == '\r' ||
	    f->text[f->len - 1] == '\n'))
		f->len--;
	f->text[f->len] = '\0';
}

/*
 * The header block is over: its Content-Type decides. One that can't be
 * read, or a multipart without a boundary, is no Content-Type (RFC 2045
 * section 5.2: text/plain): it is renamed Content-Type-Ignored, which
 * graph.c still reads for a file name. A parameter without its ';' gets
 * one.
 */
static void
ct_decide(struct scan *sc, struct ctfield *f, struct ctinfo *ci)
{
	const char	*v;
	long		 k;
	int		 i;

	if (f->text == NULL || (v = strchr(f->text, ':')) == NULL)
		return;
	v++;
	if (!repair_type_ok(v) && (k = missing_semicolon(v)) >= 0) {
		k += v - f->text;
		for (i = f->nlines - 1; i > 0 && f->tstart[i] > (size_t)k; i--)
			;
		edit(sc->r, f->fpos[i] + ((size_t)k - f->tstart[i]), 0, ";");
		memmove(f->text + k + 1, f->text + k, f->len - (size_t)k + 1);
		f->text[k] = ';';
		f->len++;
		ct_read(v, ci);
	}
	if (!repair_type_ok(v) || (ci->multipart && ci->boundary == NULL)) {
		edit(sc->r, f->at + 12, 0, "-Ignored");
		ci->multipart = ci->message = 0;
		free(ci->boundary);
		ci->boundary = NULL;
	}
}

/*
 * Do more fields follow the line at pos before a blank line or a boundary?
 * The answer holds up to the field found (*upto), so a block of broken
 * lines is looked through once.
 */
static int
fields_follow(struct scan *sc, uint64_t pos, const char *own, size_t ownlen,
    uint64_t *upto)
{
	struct line	 l;

	if (pos < *upto)
		return 1;
	while (src_line(sc->src, pos, &l)) {
		if (is_blank(&l) || outer_boundary(sc, &l) ||
		    (own != NULL && boundary_is(&l, own, ownlen)))
			return 0;
		if (is_field(&l)) {
			*upto = pos;
			return 1;
		}
		pos += l.len;
	}
	return 0;
}

static int
is_ct_field(const char *p, size_t n)
{
	return n > 13 && strncasecmp(p, "content-type", 12) == 0 &&
	    (p[12] == ':' || p[12] == ' ' || p[12] == '\t');
}

/*
 * The header block at pos: repairs it and reads its Content-Type (the
 * first one: later ones are renamed Content-Type-Ignored, as most readers
 * take the first). Returns where the body starts (after the blank line,
 * or at the line the body starts with).
 */
static uint64_t
headers(struct scan *sc, uint64_t pos, int top, struct ctinfo *ci)
{
	struct line	 l;
	struct ctfield	 f;
	size_t		 blen = 0;
	uint64_t	 upto = 0, at;
	int		 have = 0, in_ct = 0;
	const char	*p;
	size_t		 n;

	memset(&f, 0, sizeof(f));
	while (src_line(sc->src, pos, &l)) {
		if (is_blank(&l)) {
			pos += l.len;
			break;
		}
		if (outer_boundary(sc, &l) || (ci->boundary != NULL &&
		    boundary_is(&l, ci->boundary, blen))) {
			/* Headers straight into a boundary: the body is empty. */
			edit(sc->r, pos, 0, "\r\n");
			break;
		}
		p = l.p;
		n = l.n;
		at = pos;	/* where an insertion goes */
		if (top && n >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0) {
			edit(sc->r, pos, 3, NULL);
			l.p += 3;
			l.n -= 3;
			p += 3;
			n -= 3;
			at += 3;
			if (n == 0)
				break;
		}
		if (is_field(&l)) {
			have = 1;
			in_ct = 0;
			if (is_ct_field(p, n) && f.text == NULL) {
				in_ct = 1;
				f.at = at;
			} else if (is_ct_field(p, n))
				edit(sc->r, at + 12, 0, "-Ignored");
		} else if (p[0] == ' ' || p[0] == '\t') {
			/* A continuation. */
		} else if (!have) {
			/*
			 * No field yet: an mbox "From " line, or the message
			 * has no header at all.
			 */
			if (!fields_follow(sc, pos + l.len, ci->boundary, blen,
			    &upto)) {
				edit(sc->r, at, 0, "\r\n");
				break;
			}
			in_ct = 0;
		} else if (fields_follow(sc, pos + l.len, ci->boundary, blen,
		    &upto)) {
			edit(sc->r, at, 0, " ");
		} else {
			edit(sc->r, at, 0, "\r\n");
			break;
		}
		if (in_ct) {
			ct_add(&f, at, p, n);
			if ((p = strchr(f.text, ':')) != NULL) {
				ct_read(p + 1, ci);
				blen = ci->boundary != NULL ?
				    strlen(ci->boundary) : 0;
			}
		}
		pos += l.len;
	}
	ct_decide(sc, &f, ci);
	free(f.text);
	return pos;
}

/*
 * An entity (headers and body) at pos; returns where it ends: at the line
 * of an enclosing boundary, or at the end of the message.
 */
static uint64_t
entity(struct scan *sc, uint64_t pos, int top)
{
	struct ctinfo	 ci = { 0, 0, NULL };
	struct line	 l;
	size_t		 blen;
	int		 k, closed = 0;

	pos = headers(sc, pos, top, &ci);
	if (ci.message && sc->nb < MAX_DEPTH) {
		free(ci.boundary);
		return entity(sc, pos, 0);
	}
	if (!ci.multipart || ci.boundary == NULL || sc->nb == MAX_DEPTH) {
		free(ci.boundary);
		/* A body: only a line of an enclosing boundary ends it. */
		while (src_line(sc->src, pos = dash_line(sc->src, pos), &l) &&
		    !outer_boundary(sc, &l))
			pos += l.len;
		return pos;
	}
	blen = strlen(ci.boundary);
	sc->bounds[sc->nb] = ci.boundary;
	sc->blen[sc->nb] = blen;
	sc->nb++;
	while (src_line(sc->src, pos, &l)) {
		if (!closed && (k = boundary_is(&l, ci.boundary, blen)) != 0) {
			pos += l.len;
			if (k == 2)
				closed = 1;
			else
				pos = entity(sc, pos, 0);
			continue;
		}
		sc->nb--;
		k = outer_boundary(sc, &l);
		sc->nb++;
		if (k)
			break;
		pos += l.len;
	}
	sc->nb--;
	free(ci.boundary);
	return pos;
}

/* In order of offset (a Content-Type's edit is made when its block ends). */
static void
sort_edits(struct repair *r)
{
	struct repair_edit	 e;
	size_t			 i, j;

	for (i = 1; i < r->n; i++) {
		e = r->e[i];
		for (j = i; j > 0 && r->e[j - 1].off > e.off; j--)
			r->e[j] = r->e[j - 1];
		r->e[j] = e;
	}
}

static int
scan(struct src *s, struct repair *r)
{
	struct scan	 sc;

	memset(r, 0, sizeof(*r));
	memset(&sc, 0, sizeof(sc));
	sc.src = s;
	sc.r = r;
	entity(&sc, 0, 1);
	sort_edits(r);
	if (s->err) {
		repair_free(r);
		return -1;
	}
	return 0;
}

int
repair_scan_mem(const char *p, size_t len, struct repair *r)
{
	struct src	 s;

	memset(&s, 0, sizeof(s));
	s.mem = p;
	s.len = len;
	return scan(&s, r);
}

int
repair_scan_fd(int fd, uint64_t off, uint64_t len, struct repair *r)
{
	struct src	 s;
	int		 rc;

	memset(&s, 0, sizeof(s));
	s.fd = fd;
	s.base = off;
	s.len = len;
	s.buf = xmalloc(WINDOW);
	rc = scan(&s, r);
	free(s.buf);
	return rc;
}

char *
repair_apply(const char *p, size_t len, const struct repair *r,
    size_t *outlen)
{
	size_t	 i, n = len, at = 0, o = 0, k;
	char	*out;

	for (i = 0; i < r->n; i++)
		n += r->e[i].ins != NULL ? strlen(r->e[i].ins) : 0;
	out = xmalloc(n + 1);
	for (i = 0; i < r->n; i++) {
		k = (size_t)r->e[i].off - at;
		memcpy(out + o, p + at, k);
		o += k;
		at += k + r->e[i].del;
		if (r->e[i].ins != NULL) {
			memcpy(out + o, r->e[i].ins, strlen(r->e[i].ins));
			o += strlen(r->e[i].ins);
		}
	}
	memcpy(out + o, p + at, len - at);
	o += len - at;
	out[o] = '\0';
	*outlen = o;
	return out;
}

void
repair_free(struct repair *r)
{
	free(r->e);
	memset(r, 0, sizeof(*r));
}

/*
 * graph.c - a message and its SMTP envelope as a Graph sendMail request, and
 * what Graph's answers mean. Pure functions: no I/O, no globals but GMime's.
 *
 * Mapping (RFC 5322/MIME -> microsoft.graph.message):
 *   - The envelope decides who receives the message. An envelope recipient
 *     found in To goes to toRecipients, in Cc to ccRecipients, anywhere else
 *     to bccRecipients; header addresses that are not envelope recipients
 *     get nothing. Matching ignores case.
 *   - The body is the first text/html part that is not an attachment, else
 *     the first such text/plain part, converted to UTF-8. The other
 *     alternatives of that body are dropped; every other leaf part is a
 *     fileAttachment with its exact decoded bytes; message/rfc822 parts are
 *     .eml attachments. Parts the HTML refers to as cid: are inline.
 *   - Graph accepts only X- custom headers, at most 5 (400
 *     InvalidInternetMessageHeader / ...Collection otherwise).
 *   - A display name holding '@' is dropped: Graph has refused such From
 *     names with ErrorSendAsDenied.
 * Base64 attachments already in canonical form are copied, not decoded and
 * encoded again: a scanner's 40 MB PDF costs one pass.
 *
 * What Graph answers to such a request means is graph_result.c's table.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gmime/gmime.h>
#include <json-c/json.h>

#include "graph.h"
#include "log.h"
#include "mime.h"
#include "repair.h"
#include "util.h"

#define GRAPH_MAX_X_HEADERS	5	/* InvalidInternetMessageHeaderCollection */
#define GRAPH_NAME_MAX		255	/* bytes of an attachment name */

/* A multipart container met on the walk; parents are indices. */
struct node {
	int		 parent;
	int		 alternative;
};

struct leaf {
	GMimeObject	*obj;
	int		 parent;
	int		 index;		/* among its parent's parts */
	int		 related;	/* its parent is multipart/related */
	char		*type;		/* media type, lowercase (leaf_type) */
	int		 badtype;	/* its Content-Type could not be read */
};

struct walk {
	struct node	*nodes;
	size_t		 nnodes;
	struct leaf	*leaves;
	size_t		 nleaves;
	unsigned	 max_depth;
	int		 too_deep;
};

static char	*leaf_type(GMimeObject *, int *);

static void
walk_tree(struct walk *w, GMimeObject *obj, int parent, int index,
    int related, unsigned depth)
{
	GMimeMultipart	*mp;
	GMimeContentType *ct;
	struct leaf	*l;
	int		 idx, i, n, rel;

	if (obj == NULL)
		return;
	if (!GMIME_IS_MULTIPART(obj)) {
		w->leaves = xrealloc(w->leaves,
		    (w->nleaves + 1) * sizeof(*w->leaves));
		l = &w->leaves[w->nleaves++];
		l->obj = obj;
		l->parent = parent;
		l->index = index;
		l->related = related;
		l->type = leaf_type(obj, &l->badtype);
		return;
	}
	if (depth + 1 > w->max_depth) {
		w->too_deep = 1;
		return;
	}
	ct = g_mime_object_get_content_type(obj);
	w->nodes = xrealloc(w->nodes, (w->nnodes + 1) * sizeof(*w->nodes));
	idx = (int)w->nnodes++;
	w->nodes[idx].parent = parent;
	w->nodes[idx].alternative = ct != NULL &&
	    g_mime_content_type_is_type(ct, "multipart", "alternative");
	rel = ct != NULL && g_mime_content_type_is_type(ct, "multipart",
	    "related");
	mp = GMIME_MULTIPART(obj);
	n = g_mime_multipart_get_count(mp);
	for (i = 0; i < n && !w->too_deep; i++)
		walk_tree(w, g_mime_multipart_get_part(mp, i), idx, i, rel,
		    depth + 1);
}

static const char *
raw_header(GMimeObject *obj, const char *name)
{
	GMimeHeader	*hdr;

	hdr = g_mime_header_list_get_header(g_mime_object_get_header_list(obj),
	    name);
	return hdr != NULL ? g_mime_header_get_raw_value(hdr) : NULL;
}

/*
 * A plain (not RFC 2231) parameter as written: quoted, or up to ';' or
 * white space. Only \" and \\ are taken as escapes in a quoted value:
 * Windows clients send filename="C:\Scans\doc.pdf", and RFC 2045's
 * unquoting would make that "C:Scansdoc.pdf". Sets *ext if the header also
 * has the parameter in RFC 2231 form (param*=, param*0=...).
 */
static char *
raw_param(GMimeObject *obj, const char *hname, const char *param, int *ext)
{
	const char	*h, *p, *q;
	size_t		 n = strlen(param);
	char		*out = NULL, *o;

	*ext = 0;
	if ((h = raw_header(obj, hname)) == NULL &&
	    (strcmp(hname, "Content-Type") != 0 ||
	    (h = raw_header(obj, REPAIR_IGNORED_CT)) == NULL))
		return NULL;
	for (p = h; (p = strcasestr(p, param)) != NULL; p += n) {
		if (p > h && p[-1] != ';' && !isspace((unsigned char)p[-1]))
			continue;
		for (q = p + n; isspace((unsigned char)*q); q++)
			;
		if (*q == '*') {
			*ext = 1;
			continue;
		}
		if (*q++ != '=' || out != NULL)
			continue;
		while (isspace((unsigned char)*q))
			q++;
		out = o = xmalloc(strlen(q) + 1);
		if (*q == '"') {
			for (q++; *q != '\0' && *q != '"'; q++) {
				if (*q == '\\' && (q[1] == '"' || q[1] == '\\'))
					q++;
				*o++ = *q;
			}
		} else {
			for (; *q != '\0' && *q != ';' &&
			    !isspace((unsigned char)*q); q++)
				*o++ = *q;
		}
		*o = '\0';
	}
	return out;
}

/*
 * A file name parameter, decoded: RFC 2231 by GMime; RFC 2047 words by
 * relayd's own decoder (GMime 3.2.13 drops the words after a padded base64
 * word, and with them the file's extension).
 */
static char *
name_param(GMimeObject *obj, const char *hname, const char *param)
{
	const char	*g;
	char		*raw, *s;
	size_t		 n;
	int		 ext;

	if (strcmp(hname, "Content-Disposition") == 0)
		g = g_mime_object_get_content_disposition_parameter(obj,
		    param);
	else
		g = g_mime_object_get_content_type_parameter(obj, param);
	raw = raw_param(obj, hname, param, &ext);
	if (raw == NULL || (ext && g != NULL && *g != '\0')) {
		free(raw);
		return g != NULL && *g != '\0' ? xstrdup(g) : NULL;
	}
	s = mime_decode_words(raw, strlen(raw), &n);
	free(raw);
	if (*s == '\0') {
		free(s);
		return NULL;
	}
	return s;
}

static char *
part_filename(GMimeObject *obj)
{
	char	*s;

	if ((s = name_param(obj, "Content-Disposition", "filename")) == NULL)
		s = name_param(obj, "Content-Type", "name");
	return s;
}

static int
has_filename(GMimeObject *obj)
{
	char	*s = part_filename(obj);

	free(s);
	return s != NULL;
}

static int
disposition_attachment(GMimeObject *obj)
{
	GMimeContentDisposition	*cd;
	const char		*d;

	cd = g_mime_object_get_content_disposition(obj);
	return cd != NULL &&
	    (d = g_mime_content_disposition_get_disposition(cd)) != NULL &&
	    strcasecmp(d, "attachment") == 0;
}

/*
 * A leaf's media type, lowercase. A Content-Type that can't be read
 * (renamed by repair.c) is text/plain (RFC 2045 section 5.2), or
 * application/octet-stream when the part names a file (*bad is set
 * either way).
 */
static char *
leaf_type(GMimeObject *obj, int *bad)
{
	GMimeContentType	*ct;
	const char		*t, *st;
	char			*type;
	size_t			 i;

	*bad = 0;
	if (GMIME_IS_MESSAGE_PART(obj))
		return xstrdup("message/rfc822");
	if (raw_header(obj, "Content-Type") == NULL &&
	    raw_header(obj, REPAIR_IGNORED_CT) != NULL) {
		*bad = 1;
		return xstrdup(has_filename(obj) ? "application/octet-stream" :
		    "text/plain");
	}
	ct = g_mime_object_get_content_type(obj);
	if (ct == NULL || (t = g_mime_content_type_get_media_type(ct)) ==
	    NULL || (st = g_mime_content_type_get_media_subtype(ct)) == NULL ||
	    *t == '\0' || *st == '\0')
		return xstrdup("application/octet-stream");
	xasprintf(&type, "%s/%s", t, st);
	for (i = 0; type[i] != '\0'; i++)
		type[i] = (char)tolower((unsigned char)type[i]);
	return type;
}

/*
 * May the leaf be the body (text/plain or text/html)? The rule of RFC 8621
 * section 4.1.4: not "Content-Disposition: attachment", and either the
 * first part of its multipart or, outside multipart/related, a part
 * without a file name. A first text part with a file name is the body.
 */
static int
is_text(const struct leaf *l, const char *type)
{
	if (!GMIME_IS_PART(l->obj) || strcmp(l->type, type) != 0 ||
	    disposition_attachment(l->obj))
		return 0;
	return l->index == 0 || (!l->related && !has_filename(l->obj));
}

/* Does the leaf sit in another branch of multipart/alternative alt? */
static int
other_alternative(const struct walk *w, size_t li, int alt, int branch)
{
	int	 n = w->leaves[li].parent;

	if (n == alt)
		return 1;
	for (; n >= 0; n = w->nodes[n].parent)
		if (w->nodes[n].parent == alt)
			return n != branch;
	return 0;
}

static int	 stream_view(GMimeStream *, const char **, size_t *);
static ssize_t	 stream_fill(GMimeStream *, char *, size_t);

/*
 * Base64 content decoded by relayd's own decoder, which keeps the last
 * bytes of unpadded base64 (GMime's drops them: a PDF two bytes short).
 */
static char *
b64_bytes(GMimeStream *src, size_t *len)
{
	struct mime_b64dec	 dec;
	const char		*view;
	char			*out, buf[16384];
	size_t			 n, cap;
	ssize_t			 r;

	mime_b64_dec_init(&dec);
	if (stream_view(src, &view, &n) == 0) {
		out = xmalloc(MIME_B64_DEC_MAX(n) + 1);
		*len = mime_b64_dec_step(&dec, view, n, (unsigned char *)out);
	} else {
		g_mime_stream_reset(src);
		cap = 65536;
		out = xmalloc(cap);
		*len = 0;
		while ((r = stream_fill(src, buf, sizeof(buf))) > 0) {
			while (*len + MIME_B64_DEC_MAX((size_t)r) + 1 > cap)
				out = xrealloc(out, cap *= 2);
			*len += mime_b64_dec_step(&dec, buf, (size_t)r,
			    (unsigned char *)out + *len);
		}
	}
	*len += mime_b64_dec_end(&dec, (unsigned char *)out + *len);
	out[*len] = '\0';
	return out;
}

/* Transfer-decoded bytes of a part (NUL-terminated for convenience). */
static char *
part_bytes(GMimePart *part, size_t *len)
{
	GMimeDataWrapper	*dw = g_mime_part_get_content(part);
	GMimeStream		*mem, *src;
	GByteArray		*a;
	char			*out;

	*len = 0;
	if (dw == NULL)
		return xstrdup("");
	if (g_mime_data_wrapper_get_encoding(dw) ==
	    GMIME_CONTENT_ENCODING_BASE64 &&
	    (src = g_mime_data_wrapper_get_stream(dw)) != NULL)
		return b64_bytes(src, len);
	mem = g_mime_stream_mem_new();
	g_mime_data_wrapper_write_to_stream(dw, mem);
	a = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
	out = xmalloc(a->len + 1);
	if (a->len > 0)
		memcpy(out, a->data, a->len);
	out[a->len] = '\0';
	*len = a->len;
	g_object_unref(mem);
	return out;
}

/*
 * Writes a base64 string as it is: its alphabet needs no JSON escaping, and
 * json-c's escaper, byte by byte, was a third of the time for a large scan.
 */
struct b64text {
	char	*p;
	size_t	 n;
};

static int
b64_to_json(json_object *jso, struct printbuf *pb, int level, int flags)
{
	struct b64text	*t = json_object_get_userdata(jso);

	printbuf_memappend(pb, "\"", 1);
	printbuf_memappend(pb, t->p, (int)t->n);
	printbuf_memappend(pb, "\"", 1);
	return 0;
}

static void
b64_free(json_object *jso, void *arg)
{
	struct b64text	*t = arg;

	free(t->p);
	free(t);
}

/*
 * A string object whose text is the base64 buffer p (taken over, not
 * copied: it may be tens of megabytes). Only serialization reads it.
 */
static json_object *
b64_string(char *p, size_t n)
{
	json_object	*js = json_object_new_string("");
	struct b64text	*t = xmalloc(sizeof(*t));

	t->p = p;
	t->n = n;
	json_object_set_serializer(js, b64_to_json, t, b64_free);
	return js;
}

/*
 * The bytes under a substream of the message, without copying them: the
 * parser's streams are views of the caller's buffer.
 */
static int
stream_view(GMimeStream *s, const char **p, size_t *len)
{
	GByteArray	*a;
	gint64		 end;

	if (!GMIME_IS_STREAM_MEM(s) ||
	    (a = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(s))) ==
	    NULL)
		return -1;
	end = s->bound_end == -1 ? (gint64)a->len : s->bound_end;
	if (s->bound_start < 0 || end < s->bound_start ||
	    end > (gint64)a->len)
		return -1;
	*p = (const char *)a->data + s->bound_start;
	*len = (size_t)(end - s->bound_start);
	return 0;
}

/*
 * contentBytes of a part: canonical base64 as it stands, else decoded and
 * encoded again. Returns a json string object.
 */
static json_object *
part_content_bytes(GMimeObject *obj)
{
	GMimeDataWrapper	*dw;
	GMimeStream		*src, *mem;
	GMimeFormatOptions	*fo;
	GByteArray		*a;
	const char		*view;
	char			*raw, *b64;
	size_t			 n;
	long			 l;

	if (GMIME_IS_MESSAGE_PART(obj)) {
		GMimeMessage *inner =
		    g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj));

		mem = g_mime_stream_mem_new();
		if (inner != NULL) {
			fo = g_mime_format_options_new();
			g_mime_format_options_set_newline_format(fo,
			    GMIME_NEWLINE_FORMAT_DOS);
			g_mime_object_write_to_stream(GMIME_OBJECT(inner), fo,
			    mem);
			g_mime_format_options_free(fo);
		}
		a = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
		b64 = xmalloc(MIME_B64_LEN(a->len) + 1);
		n = mime_b64_encode(a->data, a->len, b64);
		g_object_unref(mem);
		return b64_string(b64, n);
	}
	dw = g_mime_part_get_content(GMIME_PART(obj));
	if (dw != NULL && g_mime_data_wrapper_get_encoding(dw) ==
	    GMIME_CONTENT_ENCODING_BASE64 &&
	    (src = g_mime_data_wrapper_get_stream(dw)) != NULL &&
	    stream_view(src, &view, &n) == 0) {
		raw = xmalloc(n + 1);
		if ((l = mime_b64_canonical(view, n, raw)) >= 0)
			return b64_string(raw, (size_t)l);
		free(raw);
	}
	raw = part_bytes(GMIME_PART(obj), &n);
	b64 = xmalloc(MIME_B64_LEN(n) + 1);
	n = mime_b64_encode((unsigned char *)raw, n, b64);
	free(raw);
	return b64_string(b64, n);
}

/* A string object holding valid UTF-8, whatever came in. */
static json_object *
jstr(const char *s)
{
	json_object	*js;
	char		*fixed;
	size_t		 n = strlen(s);

	if (mime_utf8_valid(s, n))
		return json_object_new_string_len(s, (int)n);
	fixed = mime_utf8_repair(s, n, &n);
	js = json_object_new_string_len(fixed, (int)n);
	free(fixed);
	return js;
}

static const struct {
	const char	*type;
	const char	*ext;
} name_exts[] = {
	{ "application/pdf", "pdf" }, { "image/png", "png" },
	{ "image/jpeg", "jpg" }, { "image/gif", "gif" },
	{ "image/tiff", "tif" }, { "text/plain", "txt" },
	{ "text/html", "html" }, { "text/csv", "csv" },
	{ "text/calendar", "ics" }, { "message/rfc822", "eml" },
	{ "application/zip", "zip" },
};

/*
 * The attachment's name: decoded by GMime (RFC 2231, RFC 2047), without any
 * path or control characters; generated when there is none.
 */
static char *
attachment_name(GMimeObject *obj, const char *type, size_t index)
{
	char		*given = part_filename(obj);
	const char	*base, *s;
	const char	*ext = "bin";
	char		*out, *fixed;
	size_t		 i, n;

	out = NULL;
	if (given != NULL) {
		base = given;
		for (s = given; *s != '\0'; s++)
			if (*s == '/' || *s == '\\')
				base = s + 1;
		fixed = mime_utf8_repair(base, strlen(base), &n);
		out = xmalloc(n + 5);
		for (i = 0, s = fixed; *s != '\0'; s++)
			if ((unsigned char)*s >= 0x20 && *s != 0x7f)
				out[i++] = *s;
		out[i] = '\0';
		free(fixed);
		fixed = xstrdup(str_trim(out));
		free(out);
		out = fixed;
		if (*out == '\0') {
			free(out);
			out = NULL;
		}
	}
	free(given);
	if (out != NULL) {
		n = strlen(out);
		if (GMIME_IS_MESSAGE_PART(obj) &&
		    (n < 4 || strcasecmp(out + n - 4, ".eml") != 0)) {
			out = xrealloc(out, n + 5);
			memcpy(out + n, ".eml", 5);
		}
		return out;
	}
	for (i = 0; i < NELEM(name_exts); i++)
		if (strcmp(type, name_exts[i].type) == 0)
			ext = name_exts[i].ext;
	xasprintf(&out, "attachment-%zu.%s", index, ext);
	return out;
}

/* Does the HTML refer to cid:ID (followed by a delimiter)? */
static int
html_refers(const char *html, const char *id)
{
	const char	*p = html;
	size_t		 n = strlen(id);
	char		 c;

	if (n == 0)
		return 0;
	while ((p = strstr(p, "cid:")) != NULL) {
		p += 4;
		if (strncmp(p, id, n) != 0)
			continue;
		c = p[n];
		if (c == '\0' || c == '"' || c == '\'' || c == '>' ||
		    c == ')' || isspace((unsigned char)c))
			return 1;
	}
	return 0;
}

static json_object *
recipient(const char *address, const char *name)
{
	json_object	*r = json_object_new_object(), *ea;

	ea = json_object_new_object();
	json_object_object_add(ea, "address", jstr(address));
	if (name != NULL && *name != '\0' && strchr(name, '@') == NULL)
		json_object_object_add(ea, "name", jstr(name));
	json_object_object_add(r, "emailAddress", ea);
	return r;
}

/* local@domain: Graph refuses anything less ("me", "undisclosed"). */
static int
is_mailbox(const char *a)
{
	const char	*at;

	return a != NULL && (at = strrchr(a, '@')) != NULL && at > a &&
	    at[1] != '\0';
}

static GMimeParserOptions *parser_options(void);

/*
 * Every address in the header fields called name, display names decoded
 * by relayd (mime_decode_address_words), then parsed by GMime. A new list.
 */
static InternetAddressList *
addresses(GMimeMessage *m, const char *name)
{
	GMimeHeaderList		*hl;
	GMimeHeader		*h;
	GMimeParserOptions	*po = parser_options();
	InternetAddressList	*all = internet_address_list_new(), *l;
	const char		*raw;
	char			*fixed;
	int			 i, n;

	hl = g_mime_object_get_header_list(GMIME_OBJECT(m));
	n = g_mime_header_list_get_count(hl);
	for (i = 0; i < n; i++) {
		h = g_mime_header_list_get_header_at(hl, i);
		if (g_ascii_strcasecmp(g_mime_header_get_name(h), name) != 0 ||
		    (raw = g_mime_header_get_raw_value(h)) == NULL)
			continue;
		fixed = mime_decode_address_words(raw);
		if ((l = internet_address_list_parse(po, fixed)) != NULL) {
			internet_address_list_append(all, l);
			g_object_unref(l);
		}
		free(fixed);
	}
	g_mime_parser_options_free(po);
	return all;
}

/* The mailboxes of an address list, groups flattened, in order. */
static void
flatten(InternetAddressList *list, GPtrArray *out, unsigned depth)
{
	InternetAddress	*ia;
	int		 i, n;

	if (list == NULL || depth > 4)
		return;
	n = internet_address_list_length(list);
	for (i = 0; i < n; i++) {
		ia = internet_address_list_get_address(list, i);
		if (INTERNET_ADDRESS_IS_GROUP(ia))
			flatten(internet_address_group_get_members(
			    INTERNET_ADDRESS_GROUP(ia)), out, depth + 1);
		else if (INTERNET_ADDRESS_IS_MAILBOX(ia) && is_mailbox(
		    internet_address_mailbox_get_addr(
		    INTERNET_ADDRESS_MAILBOX(ia))))
			g_ptr_array_add(out, ia);
	}
}

static InternetAddress *
find_mailbox(GPtrArray *list, const char *address)
{
	InternetAddress	*ia;
	guint		 i;

	for (i = 0; i < list->len; i++) {
		ia = g_ptr_array_index(list, i);
		if (strcasecmp(internet_address_mailbox_get_addr(
		    INTERNET_ADDRESS_MAILBOX(ia)), address) == 0)
			return ia;
	}
	return NULL;
}

static void
add_array(json_object *msg, const char *key, json_object *arr)
{
	if (json_object_array_length(arr) > 0)
		json_object_object_add(msg, key, arr);
	else
		json_object_put(arr);
}

static void
map_recipients(GMimeMessage *m, const struct graph_env *env,
    json_object *msg, size_t *count)
{
	GPtrArray	*to = g_ptr_array_new(), *cc = g_ptr_array_new();
	InternetAddressList *lto = addresses(m, "To"), *lcc = addresses(m, "Cc");
	json_object	*jto, *jcc, *jbcc;
	InternetAddress	*ia;
	size_t		 i, j;
	int		 dup;

	flatten(lto, to, 0);
	flatten(lcc, cc, 0);
	jto = json_object_new_array();
	jcc = json_object_new_array();
	jbcc = json_object_new_array();
	*count = 0;
	for (i = 0; i < env->nrcpts; i++) {
		for (dup = 0, j = 0; j < i && !dup; j++)
			dup = strcasecmp(env->rcpts[i], env->rcpts[j]) == 0;
		if (dup)
			continue;
		(*count)++;
		if ((ia = find_mailbox(to, env->rcpts[i])) != NULL)
			json_object_array_add(jto, recipient(env->rcpts[i],
			    internet_address_get_name(ia)));
		else if ((ia = find_mailbox(cc, env->rcpts[i])) != NULL)
			json_object_array_add(jcc, recipient(env->rcpts[i],
			    internet_address_get_name(ia)));
		else
			json_object_array_add(jbcc, recipient(env->rcpts[i],
			    NULL));
	}
	add_array(msg, "toRecipients", jto);
	add_array(msg, "ccRecipients", jcc);
	add_array(msg, "bccRecipients", jbcc);
	g_ptr_array_free(to, TRUE);
	g_ptr_array_free(cc, TRUE);
	g_object_unref(lto);
	g_object_unref(lcc);
}

static const char *
header(GMimeMessage *m, const char *name)
{
	return g_mime_object_get_header(GMIME_OBJECT(m), name);
}

static const char *
importance(GMimeMessage *m)
{
	const char	*v;

	if ((v = header(m, "Importance")) != NULL) {
		while (isspace((unsigned char)*v))
			v++;
		if (strncasecmp(v, "high", 4) == 0)
			return "high";
		if (strncasecmp(v, "normal", 6) == 0)
			return "normal";
		if (strncasecmp(v, "low", 3) == 0)
			return "low";
	}
	if ((v = header(m, "X-Priority")) != NULL) {
		while (isspace((unsigned char)*v))
			v++;
		if (*v == '1' || *v == '2')
			return "high";
		if (*v == '3')
			return "normal";
		if (*v == '4' || *v == '5')
			return "low";
	}
	if ((v = header(m, "Priority")) != NULL) {
		while (isspace((unsigned char)*v))
			v++;
		if (strncasecmp(v, "urgent", 6) == 0)
			return "high";
		if (strncasecmp(v, "normal", 6) == 0)
			return "normal";
		if (strncasecmp(v, "non-urgent", 10) == 0)
			return "low";
	}
	return NULL;
}

static int
x_header_name_ok(const char *name)
{
	const unsigned char	*p = (const unsigned char *)name;

	if ((p[0] != 'x' && p[0] != 'X') || p[1] != '-' || p[2] == '\0')
		return 0;
	for (p += 2; *p != '\0'; p++)
		if (*p < 0x21 || *p > 0x7e || *p == ':')
			return 0;
	return 1;
}

/* Unfolds and trims a raw header value into a new string. */
static char *
unfold(const char *raw)
{
	char		*out = xmalloc(strlen(raw) + 1), *o = out;
	const char	*s;

	for (s = raw; *s != '\0'; s++)
		if (*s != '\r' && *s != '\n')
			*o++ = *s;
	*o = '\0';
	o = xstrdup(str_trim(out));
	free(out);
	return o;
}

static void
map_x_headers(GMimeMessage *m, json_object *msg)
{
	GMimeHeaderList	*hl = g_mime_object_get_header_list(GMIME_OBJECT(m));
	GMimeHeader	*h;
	json_object	*arr = json_object_new_array(), *jh;
	const char	*raw;
	char		*v;
	int		 i, n;

	n = g_mime_header_list_get_count(hl);
	for (i = 0; i < n; i++) {
		if (json_object_array_length(arr) == GRAPH_MAX_X_HEADERS)
			break;
		h = g_mime_header_list_get_header_at(hl, i);
		if (!x_header_name_ok(g_mime_header_get_name(h)))
			continue;
		raw = g_mime_header_get_raw_value(h);
		v = unfold(raw != NULL ? raw : "");
		jh = json_object_new_object();
		json_object_object_add(jh, "name",
		    jstr(g_mime_header_get_name(h)));
		json_object_object_add(jh, "value", jstr(v));
		json_object_array_add(arr, jh);
		free(v);
	}
	add_array(msg, "internetMessageHeaders", arr);
}

static void
map_headers(GMimeMessage *m, json_object *msg, struct graph_req *req)
{
	GPtrArray	*list = g_ptr_array_new();
	InternetAddressList *from = addresses(m, "From");
	InternetAddressList *reply = addresses(m, "Reply-To");
	InternetAddress	*ia;
	json_object	*arr;
	const char	*s;
	char		*subject, *dec;
	size_t		 n;
	guint		 i;

	/* Decoded by relayd: GMime 3.2.13 loses words after a padded one. */
	s = raw_header(GMIME_OBJECT(m), "Subject");
	dec = mime_decode_words(s != NULL ? s : "", s != NULL ? strlen(s) : 0,
	    &n);
	subject = unfold(dec);
	free(dec);
	json_object_object_add(msg, "subject", jstr(subject));
	free(subject);

	flatten(from, list, 0);
	if (list->len > 0) {
		ia = g_ptr_array_index(list, 0);
		s = internet_address_mailbox_get_addr(
		    INTERNET_ADDRESS_MAILBOX(ia));
		json_object_object_add(msg, "from", recipient(s,
		    internet_address_get_name(ia)));
		req->from = xstrdup(s);
	}
	g_ptr_array_set_size(list, 0);
	flatten(reply, list, 0);
	arr = json_object_new_array();
	for (i = 0; i < list->len; i++) {
		ia = g_ptr_array_index(list, i);
		json_object_array_add(arr, recipient(
		    internet_address_mailbox_get_addr(
		    INTERNET_ADDRESS_MAILBOX(ia)),
		    internet_address_get_name(ia)));
	}
	add_array(msg, "replyTo", arr);
	g_ptr_array_free(list, TRUE);
	g_object_unref(from);
	g_object_unref(reply);

	if ((s = importance(m)) != NULL)
		json_object_object_add(msg, "importance",
		    json_object_new_string(s));
	if (header(m, "Disposition-Notification-To") != NULL)
		json_object_object_add(msg, "isReadReceiptRequested",
		    json_object_new_boolean(1));
	if (header(m, "Return-Receipt-To") != NULL)
		json_object_object_add(msg, "isDeliveryReceiptRequested",
		    json_object_new_boolean(1));
	if (req->message_id != NULL)
		json_object_object_add(msg, "internetMessageId",
		    jstr(req->message_id));
	map_x_headers(m, msg);
}

/* "<id>" of the Message-ID: field (for the log and internetMessageId). */
static char *
message_id(GMimeMessage *m)
{
	const char	*s = g_mime_message_get_message_id(m);
	char		*id;

	if (s == NULL || *s == '\0')
		return NULL;
	xasprintf(&id, "<%s>", s);
	return id;
}

static char *
body_text(const struct leaf *l, size_t *len)
{
	char	*raw, *text;
	size_t	 n;

	raw = part_bytes(GMIME_PART(l->obj), &n);
	text = mime_to_utf8(l->badtype ? NULL :
	    g_mime_object_get_content_type_parameter(l->obj, "charset"), raw,
	    n, len);
	free(raw);
	return text;
}

static uint64_t	 part_size(GMimeObject *);

static void
map_parts(GMimeMessage *m, struct walk *w, json_object *msg,
    struct graph_req *req, struct graph_draft *d)
{
	json_object		*body, *arr, *att;
	const char		*id;
	char			*html = NULL, *text, *type, *name;
	size_t			 i, n, chosen = SIZE_MAX;
	int			 alt = -1, branch = -1, p;

	walk_tree(w, g_mime_message_get_mime_part(m), -1, 0, 0, 0);
	for (i = 0; i < w->nleaves && chosen == SIZE_MAX; i++)
		if (is_text(&w->leaves[i], "text/html"))
			chosen = i;
	for (i = 0; i < w->nleaves && chosen == SIZE_MAX; i++)
		if (is_text(&w->leaves[i], "text/plain"))
			chosen = i;

	body = json_object_new_object();
	if (chosen != SIZE_MAX) {
		text = body_text(&w->leaves[chosen], &n);
		if (strcmp(w->leaves[chosen].type, "text/html") == 0) {
			json_object_object_add(body, "contentType",
			    json_object_new_string("html"));
			html = text;
		} else
			json_object_object_add(body, "contentType",
			    json_object_new_string("text"));
		json_object_object_add(body, "content",
		    json_object_new_string_len(text, (int)n));
		if (html == NULL)
			free(text);
		/* Its nearest multipart/alternative, and the branch it is in. */
		for (p = w->leaves[chosen].parent; p >= 0;
		    p = w->nodes[p].parent) {
			if (w->nodes[p].alternative) {
				alt = p;
				break;
			}
			branch = p;
		}
		if (alt >= 0 && w->leaves[chosen].parent == alt)
			branch = -1;
	} else {
		json_object_object_add(body, "contentType",
		    json_object_new_string("text"));
		json_object_object_add(body, "content",
		    json_object_new_string(""));
	}
	json_object_object_add(msg, "body", body);

	arr = json_object_new_array();
	for (i = 0; i < w->nleaves; i++) {
		GMimeObject *obj = w->leaves[i].obj;

		if (i == chosen ||
		    (alt >= 0 && other_alternative(w, i, alt, branch)))
			continue;
		att = json_object_new_object();
		json_object_object_add(att, "@odata.type",
		    json_object_new_string("#microsoft.graph.fileAttachment"));
		type = xstrdup(w->leaves[i].type);
		name = attachment_name(obj, type,
		    json_object_array_length(arr) + (d ? d->nparts : 0) + 1);
		id = g_mime_object_get_content_id(obj);
		if (d != NULL) {
			/* On its own, after the draft: nothing decoded yet. */
			struct graph_part *gp;

			json_object_put(att);
			d->parts = xrealloc(d->parts, (d->nparts + 1) *
			    sizeof(*d->parts));
			gp = &d->parts[d->nparts++];
			memset(gp, 0, sizeof(*gp));
			gp->name = mime_utf8_repair(name, strlen(name), &n);
			gp->type = mime_utf8_repair(type, strlen(type), &n);
			if (html != NULL && id != NULL && html_refers(html, id)) {
				gp->is_inline = 1;
				gp->content_id = mime_utf8_repair(id,
				    strlen(id), &n);
			}
			gp->obj = obj;
			gp->size = part_size(obj);
			free(name);
			free(type);
			continue;
		}
		json_object_object_add(att, "name", jstr(name));
		json_object_object_add(att, "contentType", jstr(type));
		json_object_object_add(att, "contentBytes",
		    part_content_bytes(obj));
		if (html != NULL && id != NULL && html_refers(html, id)) {
			json_object_object_add(att, "isInline",
			    json_object_new_boolean(1));
			json_object_object_add(att, "contentId", jstr(id));
		} else
			json_object_object_add(att, "isInline",
			    json_object_new_boolean(0));
		json_object_array_add(arr, att);
		free(name);
		free(type);
	}
	req->nattach = json_object_array_length(arr) + (d ? d->nparts : 0);
	add_array(msg, "attachments", arr);
	free(html);
}

/* ---- the MIME form ---- */

/* req->from: the first From: mailbox, which may name the sending mailbox. */
static void
flatten_from(GMimeMessage *m, struct graph_req *req)
{
	GPtrArray		*from = g_ptr_array_new();
	InternetAddressList	*l = addresses(m, "From");

	flatten(l, from, 0);
	if (from->len > 0)
		req->from = xstrdup(internet_address_mailbox_get_addr(
		    INTERNET_ADDRESS_MAILBOX(g_ptr_array_index(from, 0))));
	g_ptr_array_free(from, TRUE);
	g_object_unref(l);
}

/*
 * What the JSON form cannot carry: signatures, encryption, invitations,
 * and the threading headers (needs_mime).
 */
static void
needs_mime_cb(GMimeObject *parent, GMimeObject *part, gpointer arg)
{
	GMimeContentType	*ct = g_mime_object_get_content_type(part);
	int			*want = arg;

	(void)parent;
	if (ct == NULL)
		return;
	if (g_mime_content_type_is_type(ct, "multipart", "signed") ||
	    g_mime_content_type_is_type(ct, "multipart", "encrypted") ||
	    g_mime_content_type_is_type(ct, "application", "pkcs7-mime") ||
	    g_mime_content_type_is_type(ct, "application", "x-pkcs7-mime") ||
	    g_mime_content_type_is_type(ct, "text", "calendar"))
		*want = 1;
}

static int
needs_mime(GMimeMessage *m)
{
	GMimeObject	*top = g_mime_message_get_mime_part(m);
	int		 want = 0;

	/* Threading: Graph's JSON takes no In-Reply-To or References. */
	if (header(m, "In-Reply-To") != NULL || header(m, "References") != NULL)
		return 1;
	if (top != NULL)
		needs_mime_cb(NULL, top, &want);
	g_mime_message_foreach(m, needs_mime_cb, &want);
	return want;
}

/* "Name: value" for a list of addresses, folded, CRLF at the end. */
static void
add_address_header(GString *out, const char *name, InternetAddressList *list,
    GMimeFormatOptions *fo)
{
	GString	*h;

	if (internet_address_list_length(list) == 0)
		return;
	/* Its own string: the encoder folds by the length of what it has. */
	h = g_string_new(name);
	g_string_append(h, ": ");
	internet_address_list_encode(list, fo, h);
	if (h->len < 2 || h->str[h->len - 1] != '\n')
		g_string_append(h, "\r\n");
	g_string_append_len(out, h->str, (gssize)h->len);
	g_string_free(h, TRUE);
}

static void
add_mailbox(InternetAddressList *list, const char *addr, InternetAddress *like)
{
	InternetAddress	*ia = internet_address_mailbox_new(
	    like != NULL ? internet_address_get_name(like) : NULL, addr);

	internet_address_list_add(list, ia);
	g_object_unref(ia);
}

/* The recipient headers as the envelope says, and From: its first mailbox. */
static size_t
mime_addresses(GMimeMessage *m, const struct graph_env *env,
    GMimeFormatOptions *fo, GString *out)
{
	GPtrArray		*to = g_ptr_array_new(), *cc = g_ptr_array_new();
	GPtrArray		*from = g_ptr_array_new();
	InternetAddressList	*nfrom, *nto, *ncc, *nbcc;
	InternetAddressList	*lto = addresses(m, "To");
	InternetAddressList	*lcc = addresses(m, "Cc");
	InternetAddressList	*lfrom = addresses(m, "From");
	InternetAddress		*ia;
	size_t			 i, j, n = 0;
	int			 dup;

	flatten(lto, to, 0);
	flatten(lcc, cc, 0);
	flatten(lfrom, from, 0);
	nfrom = internet_address_list_new();
	nto = internet_address_list_new();
	ncc = internet_address_list_new();
	nbcc = internet_address_list_new();
	if (from->len > 0) {
		ia = g_ptr_array_index(from, 0);
		add_mailbox(nfrom, internet_address_mailbox_get_addr(
		    INTERNET_ADDRESS_MAILBOX(ia)), ia);
	}
	for (i = 0; i < env->nrcpts; i++) {
		for (dup = 0, j = 0; j < i && !dup; j++)
			dup = strcasecmp(env->rcpts[i], env->rcpts[j]) == 0;
		if (dup)
			continue;
		n++;
		if ((ia = find_mailbox(to, env->rcpts[i])) != NULL)
			add_mailbox(nto, env->rcpts[i], ia);
		else if ((ia = find_mailbox(cc, env->rcpts[i])) != NULL)
			add_mailbox(ncc, env->rcpts[i], ia);
		else
			add_mailbox(nbcc, env->rcpts[i], NULL);
	}
	add_address_header(out, "From", nfrom, fo);
	add_address_header(out, "To", nto, fo);
	add_address_header(out, "Cc", ncc, fo);
	add_address_header(out, "Bcc", nbcc, fo);
	g_object_unref(nfrom);
	g_object_unref(nto);
	g_object_unref(ncc);
	g_object_unref(nbcc);
	g_ptr_array_free(to, TRUE);
	g_ptr_array_free(cc, TRUE);
	g_ptr_array_free(from, TRUE);
	g_object_unref(lto);
	g_object_unref(lcc);
	g_object_unref(lfrom);
	return n;
}

static int
is_address_field(const char *p, size_t n)
{
	static const char *const names[] = { "From", "To", "Cc", "Bcc" };
	size_t			 i, k;

	for (i = 0; i < NELEM(names); i++) {
		k = strlen(names[i]);
		if (n > k && strncasecmp(p, names[i], k) == 0 &&
		    (p[k] == ':' || p[k] == ' ' || p[k] == '\t'))
			return 1;
	}
	return 0;
}

/*
 * The message for the MIME form: its header fields byte for byte except
 * From/To/Cc/Bcc, which are written anew where the first of them stood
 * (envelope recipients only, the others as Bcc), and the body untouched,
 * so S/MIME signatures still verify. Then base64, unwrapped.
 */
static int
map_mime(const char *data, size_t len, GMimeMessage *m,
    const struct graph_env *env, struct graph_req *req, char *err,
    size_t errlen)
{
	GMimeFormatOptions	*fo = g_mime_format_options_new();
	GString			*out = g_string_sized_new(len + 1024);
	const char		*p = data, *end = data + len, *f, *nl;
	size_t			 n = 0;
	int			 placed = 0;

	g_mime_format_options_set_newline_format(fo, GMIME_NEWLINE_FORMAT_DOS);
	while (p < end && !(*p == '\r' && p + 1 < end && p[1] == '\n') &&
	    *p != '\n') {
		/* One field: its line and the folded lines after it. */
		f = p;
		do {
			nl = memchr(p, '\n', (size_t)(end - p));
			p = nl != NULL ? nl + 1 : end;
		} while (p < end && (*p == ' ' || *p == '\t'));
		if (!is_address_field(f, (size_t)(p - f))) {
			g_string_append_len(out, f, (gssize)(p - f));
			continue;
		}
		if (!placed) {
			n = mime_addresses(m, env, fo, out);
			placed = 1;
		}
	}
	if (!placed)
		n = mime_addresses(m, env, fo, out);
	g_string_append_len(out, p, (gssize)(end - p));	/* blank line, body */
	g_mime_format_options_free(fo);
	if (n == 0) {
		g_string_free(out, TRUE);
		snprintf(err, errlen, "no recipients");
		return -1;
	}
	req->nrcpts = n;
	req->buf = xmalloc(4 * ((out->len + 2) / 3) + 1);
	req->len = mime_b64_encode((const unsigned char *)out->str, out->len,
	    req->buf);
	req->buf[req->len] = '\0';
	req->body = req->buf;
	req->mime = 1;
	g_string_free(out, TRUE);
	return 0;
}

/*
 * The message object msg (in req->root) from a parsed message; req->body
 * is then the JSON text of req->root. With d, attachments are listed in d
 * instead. Returns 0, or -1 with the reason in err.
 */
static int
map_message(GMimeMessage *m, const struct graph_env *env,
    const struct graph_opts *opts, json_object *msg, struct graph_req *req,
    struct graph_draft *d, char *err, size_t errlen)
{
	struct walk	 w;
	size_t		 i;
	int		 rc = -1;

	memset(&w, 0, sizeof(w));
	w.max_depth = opts->max_depth;
	req->message_id = message_id(m);
	map_headers(m, msg, req);
	map_recipients(m, env, msg, &req->nrcpts);
	map_parts(m, &w, msg, req, d);
	if (w.too_deep)
		snprintf(err, errlen, "MIME parts nested deeper than %u "
		    "levels (max_mime_depth)", opts->max_depth);
	else if (req->nrcpts == 0)
		snprintf(err, errlen, "no recipients");
	else {
		req->body = json_object_to_json_string_length(req->root,
		    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
		    &req->len);
		rc = 0;
	}
	free(w.nodes);
	for (i = 0; i < w.nleaves; i++)
		free(w.leaves[i].type);
	free(w.leaves);
	return rc;
}

/* Lenient, as mail from old devices needs. */
static GMimeParserOptions *
parser_options(void)
{
	static const char	*fallback[] = { "UTF-8", "windows-1252", NULL };
	GMimeParserOptions	*po = g_mime_parser_options_new();

	g_mime_parser_options_set_fallback_charsets(po, fallback);
	g_mime_parser_options_set_rfc2047_compliance_mode(po,
	    GMIME_RFC_COMPLIANCE_LOOSE);
	g_mime_parser_options_set_parameter_compliance_mode(po,
	    GMIME_RFC_COMPLIANCE_LOOSE);
	g_mime_parser_options_set_address_compliance_mode(po,
	    GMIME_RFC_COMPLIANCE_LOOSE);
	return po;
}

int
graph_map(const char *data, size_t len, const struct graph_env *env,
    const struct graph_opts *opts, struct graph_req *req, char *err,
    size_t errlen)
{
	GMimeParserOptions	*po;
	GMimeParser		*parser;
	GMimeStream		*stream;
	GMimeMessage		*m;
	GByteArray		*arr;
	struct repair		 rp;
	char			*copy = NULL, *fixed = NULL;
	json_object		*msg;
	int			 rc = -1;

	memset(req, 0, sizeof(*req));
	if (len > G_MAXUINT) {
		snprintf(err, errlen, "message too large to map");
		return -1;
	}
	/* Broken header blocks and a byte-order mark: see repair.c. */
	if (repair_scan_mem(data, len, &rp) == 0 && rp.n > 0) {
		fixed = repair_apply(data, len, &rp, &len);
		data = fixed;
	}
	repair_free(&rp);
	/* Parse in place: the array borrows data and must not free it. */
	arr = g_byte_array_new_take((guint8 *)(uintptr_t)data, len);
	stream = g_mime_stream_mem_new_with_byte_array(arr);
	g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(stream), FALSE);
	parser = g_mime_parser_new_with_stream(stream);
	g_mime_parser_set_persist_stream(parser, TRUE);
	po = parser_options();
	m = g_mime_parser_construct_message(parser, po);
	if (m == NULL) {
		/* No header at all: the whole text is the body. */
		g_object_unref(parser);
		g_object_unref(stream);
		g_byte_array_free(arr, FALSE);
		copy = xmalloc(len + 2);
		memcpy(copy, "\r\n", 2);
		memcpy(copy + 2, data, len);
		arr = g_byte_array_new_take((guint8 *)copy, len + 2);
		stream = g_mime_stream_mem_new_with_byte_array(arr);
		g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(stream), FALSE);
		parser = g_mime_parser_new_with_stream(stream);
		g_mime_parser_set_persist_stream(parser, TRUE);
		m = g_mime_parser_construct_message(parser, po);
	}
	if (m == NULL) {
		snprintf(err, errlen, "not a message (no header found)");
		goto out;
	}
	if (opts->mode == GRAPH_MODE_MIME ||
	    (opts->mode == GRAPH_MODE_AUTO && needs_mime(m))) {
		if (map_mime(data, len, m, env, req, err, errlen) == -1)
			goto out;
		if (req->len <= GRAPH_MIME_MAX) {
			flatten_from(m, req);
			req->message_id = message_id(m);
			rc = 0;
			goto out;
		}
		/* Too big for the MIME form: JSON (and its large path). */
		graph_req_free(req);
	}
	req->root = json_object_new_object();
	msg = json_object_new_object();
	json_object_object_add(req->root, "message", msg);
	json_object_object_add(req->root, "saveToSentItems",
	    json_object_new_boolean(opts->save_to_sent != 0));
	if (map_message(m, env, opts, msg, req, NULL, err, errlen) == 0)
		rc = 0;
out:
	if (rc == -1)
		graph_req_free(req);
	if (m != NULL)
		g_object_unref(m);
	g_object_unref(parser);
	g_mime_parser_options_free(po);
	g_object_unref(stream);
	g_byte_array_free(arr, FALSE);
	free(copy);
	free(fixed);
	return rc;
}

/* ---- the draft path: parts read from the spool file as needed ---- */

/*
 * A part's bytes as a stream, from the start: decoded, except base64, for
 * which *b64 is set and the stream is the encoded text.
 */
static GMimeStream *
part_stream(GMimeObject *obj, int *b64)
{
	GMimeDataWrapper	*dw;
	GMimeStream		*src, *f;
	GMimeFilter		*dec;
	GMimeFormatOptions	*fo;
	GMimeMessage		*inner;
	GMimeContentEncoding	 enc;

	*b64 = 0;
	if (GMIME_IS_MESSAGE_PART(obj)) {
		/* Serialized (in memory), as the JSON form does. */
		f = g_mime_stream_mem_new();
		inner = g_mime_message_part_get_message(
		    GMIME_MESSAGE_PART(obj));
		if (inner != NULL) {
			fo = g_mime_format_options_new();
			g_mime_format_options_set_newline_format(fo,
			    GMIME_NEWLINE_FORMAT_DOS);
			g_mime_object_write_to_stream(GMIME_OBJECT(inner), fo,
			    f);
			g_mime_format_options_free(fo);
		}
		g_mime_stream_reset(f);
		return f;
	}
	if ((dw = g_mime_part_get_content(GMIME_PART(obj))) == NULL ||
	    (src = g_mime_data_wrapper_get_stream(dw)) == NULL)
		return g_mime_stream_mem_new();
	g_mime_stream_reset(src);
	enc = g_mime_data_wrapper_get_encoding(dw);
	if (enc == GMIME_CONTENT_ENCODING_BASE64) {
		/* Decoded by the reader (relayd's lenient decoder). */
		*b64 = 1;
		return g_object_ref(src);
	}
	f = g_mime_stream_filter_new(src);
	if (enc == GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE ||
	    enc == GMIME_CONTENT_ENCODING_UUENCODE) {
		dec = g_mime_filter_basic_new(enc, FALSE);
		g_mime_stream_filter_add(GMIME_STREAM_FILTER(f), dec);
		g_object_unref(dec);
	}
	return f;
}

/* Fills buf unless the stream ends first: the byte count, or -1. */
static ssize_t
stream_fill(GMimeStream *s, char *buf, size_t len)
{
	size_t	 got = 0;
	ssize_t	 n;
	int	 idle = 0;

	while (got < len && !g_mime_stream_eos(s)) {
		if ((n = g_mime_stream_read(s, buf + got, len - got)) < 0) {
			if (g_mime_stream_eos(s))
				break;
			return -1;
		}
		if (n == 0 && ++idle > 64)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

#define READ_CHUNK	16384

struct graph_reader {
	GMimeStream		*s;
	int			 b64;
	struct mime_b64dec	 dec;
	int			 eof;
	size_t			 olen, opos;
	char			 in[READ_CHUNK];
	unsigned char		 out[MIME_B64_DEC_MAX(READ_CHUNK)];
};

static struct graph_reader *
reader_open(GMimeObject *obj)
{
	struct graph_reader	*r = xcalloc(1, sizeof(*r));

	r->s = part_stream(obj, &r->b64);
	mime_b64_dec_init(&r->dec);
	return r;
}

/* Full buffers of decoded bytes until the end: the byte count, or -1. */
static ssize_t
reader_read(struct graph_reader *r, char *buf, size_t len)
{
	size_t	 got = 0, k;
	ssize_t	 n;

	if (!r->b64)
		return stream_fill(r->s, buf, len);
	while (got < len) {
		if (r->opos < r->olen) {
			k = r->olen - r->opos;
			if (k > len - got)
				k = len - got;
			memcpy(buf + got, r->out + r->opos, k);
			r->opos += k;
			got += k;
			continue;
		}
		if (r->eof)
			break;
		r->opos = 0;
		if ((n = stream_fill(r->s, r->in, sizeof(r->in))) < 0)
			return -1;
		if (n == 0) {
			r->olen = mime_b64_dec_end(&r->dec, r->out);
			r->eof = 1;
		} else
			r->olen = mime_b64_dec_step(&r->dec, r->in, (size_t)n,
			    r->out);
	}
	return (ssize_t)got;
}

/* Decoded bytes, counted in one pass over the spool file. */
static uint64_t
part_size(GMimeObject *obj)
{
	struct graph_reader	*r = reader_open(obj);
	char			 buf[READ_CHUNK];
	uint64_t		 total = 0;
	ssize_t			 n;

	while ((n = reader_read(r, buf, sizeof(buf))) > 0)
		total += (uint64_t)n;
	graph_part_close(r);
	return total;
}

struct graph_reader *
graph_part_open(const struct graph_part *gp)
{
	return reader_open(gp->obj);
}

ssize_t
graph_part_read(struct graph_reader *r, char *buf, size_t len)
{
	return reader_read(r, buf, len);
}

void
graph_part_close(struct graph_reader *r)
{
	if (r == NULL)
		return;
	g_object_unref(r->s);
	free(r);
}

/* The file's bytes with the edits made: pieces of it and the insertions. */
static GMimeStream *
repaired_stream(GMimeStream *fs, uint64_t off, uint64_t len,
    const struct repair *r)
{
	GMimeStream	*cat = g_mime_stream_cat_new(), *sub;
	uint64_t	 at = 0;
	size_t		 i;

	for (i = 0; i <= r->n; i++) {
		uint64_t end = i < r->n ? r->e[i].off : len;

		if (end > at) {
			sub = g_mime_stream_substream(fs, (gint64)(off + at),
			    (gint64)(off + end));
			g_mime_stream_cat_add_source(GMIME_STREAM_CAT(cat), sub);
			g_object_unref(sub);
		}
		if (i == r->n)
			break;
		at = end + r->e[i].del;
		if (r->e[i].ins != NULL) {
			sub = g_mime_stream_mem_new_with_buffer(r->e[i].ins,
			    strlen(r->e[i].ins));
			g_mime_stream_cat_add_source(GMIME_STREAM_CAT(cat), sub);
			g_object_unref(sub);
		}
	}
	return cat;
}

int
graph_map_draft(int fd, uint64_t off, uint64_t len,
    const struct graph_env *env, const struct graph_opts *opts,
    struct graph_draft *d, char *err, size_t errlen)
{
	GMimeParserOptions	*po;
	GMimeParser		*parser;
	GMimeStream		*stream;
	GMimeMessage		*m;
	struct graph_req	*req = &d->req;
	struct repair		 rp;
	int			 rc = -1;

	memset(d, 0, sizeof(*d));
	/* read() through the page cache: mapped pages would count as ours. */
	stream = g_mime_stream_fs_new_with_bounds(fd, (gint64)off,
	    (gint64)(off + len));
	g_mime_stream_fs_set_owner(GMIME_STREAM_FS(stream), FALSE);
	if (repair_scan_fd(fd, off, len, &rp) == 0 && rp.n > 0) {
		GMimeStream *cat = repaired_stream(stream, off, len, &rp);

		g_object_unref(stream);
		stream = cat;
	}
	repair_free(&rp);
	parser = g_mime_parser_new_with_stream(stream);
	g_mime_parser_set_persist_stream(parser, TRUE);
	po = parser_options();
	if ((m = g_mime_parser_construct_message(parser, po)) == NULL) {
		snprintf(err, errlen, "not a message (no header found)");
		goto out;
	}
	req->root = json_object_new_object();
	if (map_message(m, env, opts, req->root, req, d, err, errlen) == -1)
		goto out;
	d->msg = m;
	d->stream = stream;
	m = NULL;
	stream = NULL;
	rc = 0;
out:
	if (rc == -1)
		graph_draft_free(d);
	if (m != NULL)
		g_object_unref(m);
	g_object_unref(parser);
	g_mime_parser_options_free(po);
	if (stream != NULL)
		g_object_unref(stream);
	return rc;
}

void
graph_draft_free(struct graph_draft *d)
{
	size_t	 i;

	if (d == NULL)
		return;
	for (i = 0; i < d->nparts; i++) {
		free(d->parts[i].name);
		free(d->parts[i].type);
		free(d->parts[i].content_id);
	}
	free(d->parts);
	graph_req_free(&d->req);
	if (d->msg != NULL)
		g_object_unref(d->msg);
	if (d->stream != NULL)
		g_object_unref(d->stream);
	memset(d, 0, sizeof(*d));
}

void
graph_req_free(struct graph_req *req)
{
	if (req == NULL)
		return;
	if (req->root != NULL)
		json_object_put(req->root);
	free(req->buf);
	free(req->from);
	free(req->message_id);
	memset(req, 0, sizeof(*req));
}


/*
 * Unit tests for graph.c: the golden .eml -> .json pairs under
 * tests/data/map, the MIME form and the draft path's mapping (what
 * Graph's answers mean is test_graph_result.c's).
 *
 * Also a tool: `test_graph FILE.eml [FILE.env]` prints the request body
 * relayd would send (the corpus test and reviewers use it).
 */
#include <sys/stat.h>

#include <dirent.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <json-c/json.h>

#include "graph.h"
#include "mime.h"

#define MAX_RCPTS	64

struct envfile {
	char		*mail_from;
	char		*rcpts[MAX_RCPTS];
	size_t		 nrcpts;
	int		 save;
};

static char *
slurp(const char *path, size_t *len)
{
	FILE		*fp;
	char		*buf;
	struct stat	 st;

	if ((fp = fopen(path, "rb")) == NULL)
		return NULL;
	if (fstat(fileno(fp), &st) == -1) {
		fclose(fp);
		return NULL;
	}
	buf = malloc((size_t)st.st_size + 1);
	*len = fread(buf, 1, (size_t)st.st_size, fp);
	buf[*len] = '\0';
	fclose(fp);
	return buf;
}

/* "mail-from: a", "rcpt: b", "save-to-sent-items: false". */
static void
read_env(const char *path, struct envfile *e)
{
	char	 line[1024], *v;
	FILE	*fp;

	memset(e, 0, sizeof(*e));
	e->save = 1;
	if ((fp = fopen(path, "r")) == NULL) {
		e->mail_from = strdup("sender@example.com");
		e->rcpts[e->nrcpts++] = strdup("rcpt@example.com");
		return;
	}
	while (fgets(line, sizeof(line), fp) != NULL) {
		line[strcspn(line, "\r\n")] = '\0';
		if ((v = strchr(line, ':')) == NULL)
			continue;
		*v++ = '\0';
		while (*v == ' ')
			v++;
		if (strcmp(line, "mail-from") == 0)
			e->mail_from = strdup(v);
		else if (strcmp(line, "rcpt") == 0 && e->nrcpts < MAX_RCPTS)
			e->rcpts[e->nrcpts++] = strdup(v);
		else if (strcmp(line, "save-to-sent-items") == 0)
			e->save = strcmp(v, "false") != 0;
	}
	fclose(fp);
	if (e->mail_from == NULL)
		e->mail_from = strdup("");
}

static void
free_env(struct envfile *e)
{
	size_t	 i;

	free(e->mail_from);
	for (i = 0; i < e->nrcpts; i++)
		free(e->rcpts[i]);
}

/* A case's message and envelope, and the options the golden cases use. */
struct mcase {
	char			*data;
	size_t			 len;
	struct envfile		 e;
	struct graph_env	 ge;
	struct graph_opts	 go;
};

static int
load_case(struct mcase *c, const char *eml, const char *env, char *err,
    size_t errlen)
{
	if ((c->data = slurp(eml, &c->len)) == NULL) {
		snprintf(err, errlen, "cannot read %s", eml);
		return -1;
	}
	read_env(env, &c->e);
	c->ge.mail_from = c->e.mail_from;
	c->ge.rcpts = (const char *const *)c->e.rcpts;
	c->ge.nrcpts = c->e.nrcpts;
	c->go.save_to_sent = c->e.save;
	c->go.max_depth = 32;
	c->go.mode = GRAPH_MODE_JSON;
	return 0;
}

static void
free_case(struct mcase *c)
{
	free_env(&c->e);
	free(c->data);
}

/* Maps one file; returns the JSON text (malloc'd) or NULL with err. */
static char *
map_file(const char *eml, const char *env, char *err, size_t errlen)
{
	struct mcase		 c;
	struct graph_req	 req;
	char			*out = NULL;

	if (load_case(&c, eml, env, err, errlen) == -1)
		return NULL;
	if (graph_map(c.data, c.len, &c.ge, &c.go, &req, err, errlen) == 0) {
		out = strndup(req.body, req.len);
		graph_req_free(&req);
	}
	free_case(&c);
	return out;
}

/*
 * Maps one file through the draft path (parts read back from the file)
 * and puts the request together as the JSON path would make it, so the
 * golden cases check both paths.
 */
static char *
map_file_draft(const char *eml, const char *env, char *err, size_t errlen)
{
	struct mcase		 c;
	struct graph_draft	 d;
	struct graph_reader	*r;
	json_object		*root, *msg, *arr, *att;
	char			 tmpl[] = "/tmp/test_graph.XXXXXX", *out = NULL;
	char			*bytes, *b64;
	size_t			 i, n, cap;
	ssize_t			 k;
	int			 fd;

	if (load_case(&c, eml, env, err, errlen) == -1)
		return NULL;
	fd = mkstemp(tmpl);
	assert_true(fd != -1);
	unlink(tmpl);
	/* Behind other bytes, as in a spool segment. */
	assert_int_equal(write(fd, "XXXX", 4), 4);
	assert_int_equal(write(fd, c.data, c.len), (ssize_t)c.len);
	if (graph_map_draft(fd, 4, c.len, &c.ge, &c.go, &d, err, errlen) ==
	    0) {
		msg = json_tokener_parse(d.req.body);
		arr = json_object_new_array();
		for (i = 0; i < d.nparts; i++) {
			cap = d.parts[i].size + 16;
			bytes = malloc(cap);
			r = graph_part_open(&d.parts[i]);
			for (n = 0; (k = graph_part_read(r, bytes + n,
			    cap - n)) > 0; n += (size_t)k)
				;
			graph_part_close(r);
			assert_int_equal(n, d.parts[i].size);
			b64 = malloc(MIME_B64_LEN(n) + 1);
			b64[mime_b64_encode((unsigned char *)bytes, n, b64)] =
			    '\0';
			att = json_object_new_object();
			json_object_object_add(att, "@odata.type",
			    json_object_new_string(
			    "#microsoft.graph.fileAttachment"));
			json_object_object_add(att, "name",
			    json_object_new_string(d.parts[i].name));
			json_object_object_add(att, "contentType",
			    json_object_new_string(d.parts[i].type));
			json_object_object_add(att, "contentBytes",
			    json_object_new_string(b64));
			json_object_object_add(att, "isInline",
			    json_object_new_boolean(d.parts[i].is_inline));
			if (d.parts[i].is_inline)
				json_object_object_add(att, "contentId",
				    json_object_new_string(
				    d.parts[i].content_id));
			json_object_array_add(arr, att);
			free(bytes);
			free(b64);
		}
		if (d.nparts > 0)
			json_object_object_add(msg, "attachments", arr);
		else
			json_object_put(arr);
		root = json_object_new_object();
		json_object_object_add(root, "message", msg);
		json_object_object_add(root, "saveToSentItems",
		    json_object_new_boolean(c.e.save));
		out = strdup(json_object_to_json_string_ext(root,
		    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
		json_object_put(root);
		graph_draft_free(&d);
	}
	close(fd);
	free_case(&c);
	return out;
}

static int
has_suffix(const char *s, const char *suf)
{
	size_t	 n = strlen(s), m = strlen(suf);

	return n > m && strcmp(s + n - m, suf) == 0;
}

static void
golden(char *(*map)(const char *, const char *, char *, size_t))
{
	const char	*dir = RELAYD_SRCDIR "/tests/data/map";
	struct dirent	*de;
	DIR		*d;
	char		 eml[1024], env[1024], js[1024], err[256];
	char		*got;
	json_object	*jgot, *jwant;
	int		 n = 0, bad = 0;

	assert_non_null(d = opendir(dir));
	while ((de = readdir(d)) != NULL) {
		if (!has_suffix(de->d_name, ".eml"))
			continue;
		n++;
		snprintf(eml, sizeof(eml), "%s/%s", dir, de->d_name);
		snprintf(env, sizeof(env), "%.*s.env",
		    (int)(strlen(eml) - 4), eml);
		snprintf(js, sizeof(js), "%.*s.json",
		    (int)(strlen(eml) - 4), eml);
		if ((got = map(eml, env, err, sizeof(err))) == NULL) {
			printf("FAIL %s: %s\n", de->d_name, err);
			bad++;
			continue;
		}
		jgot = json_tokener_parse(got);
		jwant = json_object_from_file(js);
		if (jwant == NULL) {
			printf("FAIL %s: cannot read %s\n", de->d_name, js);
			bad++;
		} else if (!json_object_equal(jgot, jwant)) {
			printf("FAIL %s\n  got:  %.4000s\n  want: %.4000s\n",
			    de->d_name, got, json_object_to_json_string_ext(
			    jwant, JSON_C_TO_STRING_PLAIN |
			    JSON_C_TO_STRING_NOSLASHESCAPE));
			bad++;
		}
		json_object_put(jgot);
		json_object_put(jwant);
		free(got);
	}
	closedir(d);
	printf("golden%s: %d cases, %d failed\n", map == map_file ? "" :
	    " (draft path)", n, bad);
	assert_true(n >= 40);
	assert_int_equal(bad, 0);
}

static void
test_golden(void **state)
{
	(void)state;
	golden(map_file);
}

static void
test_golden_draft(void **state)
{
	(void)state;
	golden(map_file_draft);
}

/* The MIME form: recipients by the envelope, every other byte kept. */
static const char signed_msg[] =
    "Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    "From: \"Scan Er\" <scan@corp.example>, other@corp.example\r\n"
    "To: Alice <alice@example.com>, Bob <bob@example.com>\r\n"
    "Subject: signed\r\n"
    "Cc: carol@example.com\r\n"
    "Bcc: secret@example.com\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";"
    "\r\n\tmicalg=sha-256; boundary=\"b1\"\r\n"
    "\r\n"
    "--b1\r\nContent-Type: text/plain\r\n\r\nHello.  \r\n--b1\r\n"
    "Content-Type: application/pkcs7-signature\r\n\r\nSIGNATURE\r\n"
    "--b1--\r\n";

/* base64 (no line breaks) to a NUL-terminated malloc'd string. */
static char *
b64_decode(const char *in, size_t len)
{
	static const char	 al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "abcdefghijklmnopqrstuvwxyz0123456789+/";
	char			*out = malloc(len / 4 * 3 + 1), *o = out;
	unsigned		 acc = 0, bits = 0;
	const char		*c;
	size_t			 i;

	for (i = 0; i < len && in[i] != '='; i++) {
		c = strchr(al, in[i]);
		assert_non_null(c);
		acc = acc << 6 | (unsigned)(c - al);
		if ((bits += 6) >= 8) {
			bits -= 8;
			*o++ = (char)(acc >> bits & 0xff);
		}
	}
	*o = '\0';
	return out;
}

static char *
map_as(const char *msg, int mode, struct graph_req *req)
{
	static const char *rcpts[] = { "alice@example.com",
	    "CAROL@example.com", "dave@example.com" };
	struct graph_env	 env = { "scan@corp.example", rcpts, 3 };
	struct graph_opts	 go = { 1, 32, mode };
	char			 err[256];

	assert_int_equal(graph_map(msg, strlen(msg), &env, &go, req, err,
	    sizeof(err)), 0);
	if (!req->mime)
		return NULL;
	return b64_decode(req->body, req->len);
}

static void
test_mime_form(void **state)
{
	struct graph_req	 req;
	char			*out, *body;

	(void)state;
	out = map_as(signed_msg, GRAPH_MODE_AUTO, &req);
	assert_non_null(out);
	assert_int_equal(req.nrcpts, 3);
	assert_string_equal(req.from, "scan@corp.example");
	/* Other fields stay where they were, byte for byte. */
	assert_memory_equal(out, "Received: from x by y;", 22);
	assert_non_null(strstr(out, "\r\nSubject: signed\r\nMIME-Version: 1.0"
	    "\r\nContent-Type: multipart/signed; protocol=\"application/"
	    "pkcs7-signature\";\r\n\tmicalg=sha-256; boundary=\"b1\"\r\n"));
	/* From: its first mailbox; To/Cc: envelope recipients only; the
	 * rest of the envelope in Bcc:; the old Bcc: gone. */
	assert_non_null(strstr(out, "\r\nFrom: Scan Er <scan@corp.example>"
	    "\r\nTo: Alice <alice@example.com>\r\nCc: CAROL@example.com\r\n"
	    "Bcc: dave@example.com\r\nSubject:"));
	assert_null(strstr(out, "bob@"));
	assert_null(strstr(out, "secret@"));
	assert_null(strstr(out, "other@"));
	/* The body exactly. */
	body = strstr(out, "\r\n\r\n");
	assert_non_null(body);
	assert_string_equal(body, strstr(signed_msg, "\r\n\r\n"));
	free(out);
	graph_req_free(&req);

	/* auto: a plain message goes as JSON; mime: as MIME anyway. */
	assert_null(map_as("From: a@b.example\r\nTo: alice@example.com\r\n"
	    "Subject: plain\r\n\r\nhi\r\n", GRAPH_MODE_AUTO, &req));
	assert_int_equal(req.mime, 0);
	graph_req_free(&req);
	out = map_as("Subject: plain\r\n\r\nhi\r\n", GRAPH_MODE_MIME, &req);
	assert_non_null(out);
	/* no address field at all: they go at the end of the header */
	assert_string_equal(out, "Subject: plain\r\nBcc: alice@example.com, "
	    "CAROL@example.com, dave@example.com\r\n\r\nhi\r\n");
	free(out);
	graph_req_free(&req);
	/* json: never MIME. */
	assert_null(map_as(signed_msg, GRAPH_MODE_JSON, &req));
	graph_req_free(&req);
}

static void
test_mime_form_too_big_goes_json(void **state)
{
	struct graph_req	 req;
	size_t			 n = GRAPH_MIME_MAX;
	char			*big = malloc(n + 200);

	(void)state;
	strcpy(big, "Content-Type: text/calendar; method=REQUEST\r\n\r\n");
	memset(big + strlen(big), 'x', n);	/* 4 MB raw: 5.3 MB in base64 */
	big[strlen("Content-Type: text/calendar; method=REQUEST\r\n\r\n") + n] =
	    '\0';
	assert_null(map_as(big, GRAPH_MODE_AUTO, &req));
	assert_int_equal(req.mime, 0);
	assert_non_null(req.root);
	graph_req_free(&req);
	free(big);
}

/*
 * The draft path's mapping from a file: the message JSON without its
 * attachments, each part listed with its decoded size, and read back
 * exactly (base64, quoted-printable and 8bit), in one go and in pieces.
 */
static void
test_draft_map(void **state)
{
	static const char msg[] = "Junk before the record\n"
	    "From: Scan <scan@corp.example>\r\nTo: alice@example.com\r\n"
	    "Subject: big\r\nMIME-Version: 1.0\r\n"
	    "Content-Type: multipart/related; boundary=\"b\"\r\n\r\n"
	    "--b\r\nContent-Type: text/html\r\n\r\n"
	    "<img src=\"cid:logo@x\">\r\n"
	    "--b\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\n"
	    "Content-Transfer-Encoding: base64\r\n\r\n"
	    "aGVsbG8g\r\nd29ybGQ=\r\n"
	    "--b\r\nContent-Type: text/plain; name=\"a.txt\"\r\n"
	    "Content-Disposition: attachment; filename=\"a.txt\"\r\n"
	    "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
	    "caf=C3=A9 =\r\nok\r\n"
	    "--b\r\nContent-Type: application/octet-stream\r\n\r\n"
	    "raw bytes\r\n--b--\r\nafter the record";
	const char		*rcpts[] = { "alice@example.com" };
	struct graph_env	 env = { "scan@corp.example", rcpts, 1 };
	struct graph_opts	 opts = { 1, 30, GRAPH_MODE_AUTO };
	struct graph_draft	 d;
	struct graph_reader	*r;
	char			 tmpl[] = "/tmp/test_graph.XXXXXX", buf[64], err[256];
	size_t			 off = strlen("Junk before the record\n");
	size_t			 len = strlen(msg) - off -
	    strlen("after the record");
	int			 fd;

	(void)state;
	fd = mkstemp(tmpl);
	assert_true(fd != -1);
	unlink(tmpl);
	assert_int_equal(write(fd, msg, strlen(msg)), (ssize_t)strlen(msg));
	assert_int_equal(graph_map_draft(fd, off, len, &env, &opts, &d, err,
	    sizeof(err)), 0);
	/* The message alone: no attachments, no wrapper. */
	assert_null(strstr(d.req.body, "attachments"));
	assert_null(strstr(d.req.body, "saveToSentItems"));
	assert_non_null(strstr(d.req.body, "\"subject\":\"big\""));
	assert_string_equal(d.req.from, "scan@corp.example");
	assert_int_equal(d.req.nrcpts, 1);
	assert_int_equal(d.req.nattach, 3);
	assert_int_equal(d.nparts, 3);
	assert_int_equal(d.parts[0].size, 11);
	assert_int_equal(d.parts[0].is_inline, 1);
	assert_string_equal(d.parts[0].content_id, "logo@x");
	assert_string_equal(d.parts[0].type, "image/png");
	assert_int_equal(d.parts[1].size, 8);
	assert_string_equal(d.parts[1].name, "a.txt");
	assert_int_equal(d.parts[1].is_inline, 0);
	assert_int_equal(d.parts[2].size, 9);
	/* Read back: whole, then again in small pieces. */
	r = graph_part_open(&d.parts[0]);
	assert_int_equal(graph_part_read(r, buf, sizeof(buf)), 11);
	assert_memory_equal(buf, "hello world", 11);
	graph_part_close(r);
	r = graph_part_open(&d.parts[1]);
	assert_int_equal(graph_part_read(r, buf, 4), 4);
	assert_int_equal(graph_part_read(r, buf + 4, 60), 4);
	assert_memory_equal(buf, "caf\xc3\xa9 ok", 8);
	assert_int_equal(graph_part_read(r, buf, 8), 0);
	graph_part_close(r);
	r = graph_part_open(&d.parts[2]);
	assert_int_equal(graph_part_read(r, buf, sizeof(buf)), 9);
	assert_memory_equal(buf, "raw bytes", 9);
	graph_part_close(r);
	graph_draft_free(&d);
	graph_draft_free(&d);		/* harmless twice */
	close(fd);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_golden),
		cmocka_unit_test(test_mime_form),
		cmocka_unit_test(test_mime_form_too_big_goes_json),
		cmocka_unit_test(test_draft_map),
		cmocka_unit_test(test_golden_draft),
	};
	char	 err[256], *out;

	mime_init();
	if (argc > 1) {
		out = map_file(argv[1], argc > 2 ? argv[2] : "/nonexistent",
		    err, sizeof(err));
		if (out == NULL) {
			fprintf(stderr, "%s: %s\n", argv[1], err);
			return 1;
		}
		printf("%s\n", out);
		free(out);
		return 0;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}

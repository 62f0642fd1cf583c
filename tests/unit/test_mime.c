/*
 * Unit tests for mime.c (charsets, UTF-8 repair, base64, RFC 2047 words)
 * and repair.c (broken header blocks).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "mime.h"
#include "repair.h"

static void
test_repair(void **state)
{
	static const struct { const char *in, *want; } cases[] = {
		{ "plain", "plain" },
		{ "caf\xc3\xa9", "caf\xc3\xa9" },
		{ "a\xff" "b", "a\xef\xbf\xbd" "b" },
		/* A cut 3-byte sequence is one maximal subpart: one U+FFFD. */
		{ "\xe2\x82" "x", "\xef\xbf\xbd" "x" },
		/* Overlong and surrogate: each byte replaced. */
		{ "\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd" },
		{ "\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" },
		{ "\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
		  "\xef\xbf\xbd" },
		{ "\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80" },
		{ "end\xf0\x9f\x98", "end\xef\xbf\xbd" },
	};
	size_t	 i, n;
	char	*out;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		out = mime_utf8_repair(cases[i].in, strlen(cases[i].in), &n);
		if (strcmp(out, cases[i].want) != 0)
			fail_msg("case %zu: got %s, want %s", i, out,
			    cases[i].want);
		assert_int_equal(n, strlen(out));
		assert_int_equal(mime_utf8_valid(out, n), 1);
		assert_int_equal(mime_utf8_valid(cases[i].in,
		    strlen(cases[i].in)), strcmp(cases[i].in,
		    cases[i].want) == 0);
		free(out);
	}
}

static void
test_charsets(void **state)
{
	static const struct { const char *cs, *in, *want; } cases[] = {
		{ NULL, "ascii", "ascii" },
		{ NULL, "caf\xc3\xa9", "caf\xc3\xa9" },	/* valid UTF-8 */
		{ NULL, "caf\xe9", "caf\xc3\xa9" },		/* else 1252 */
		{ "us-ascii", "\x93q\x94", "\xe2\x80\x9cq\xe2\x80\x9d" },
		{ "ISO-8859-1", "\x80 caf\xe9", "\xe2\x82\xac caf\xc3\xa9" },
		{ "windows-1252", "\x80", "\xe2\x82\xac" },
		{ "\"utf-8\"", "ok\xff", "ok\xef\xbf\xbd" },
		{ "iso-8859-15", "\xa4", "\xe2\x82\xac" },
		{ "koi8-r", "\xf0\xd2\xc9\xd7\xc5\xd4",
		  "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82" },
		{ "Shift_JIS", "\x93\xfa\x96\x7b", "\xe6\x97\xa5\xe6\x9c\xac" },
		{ "iso-2022-jp", "\x1b$BF|K\\\x1b(B",
		  "\xe6\x97\xa5\xe6\x9c\xac" },
		{ "x-no-such-charset", "caf\xe9", "caf\xc3\xa9" },
		/* Invalid in Shift_JIS: replaced, the rest kept. */
		{ "shift_jis", "a\xff" "b", "a\xef\xbf\xbd" "b" },
		/* Cut at the end of the text. */
		{ "shift_jis", "a\x93", "a\xef\xbf\xbd" },
		/* WHATWG: 1252's unassigned bytes, gb18030's euro. */
		{ "windows-1252", "a\x81\x9d", "a\xc2\x81\xc2\x9d" },
		{ NULL, "\xe9\x90", "\xc3\xa9\xc2\x90" },
		{ "gbk", "\x80", "\xe2\x82\xac" },
		{ "gb2312", "\xc4\xe3\x80", "\xe4\xbd\xa0\xe2\x82\xac" },
	};
	size_t	 i, n;
	char	*out;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		out = mime_to_utf8(cases[i].cs, cases[i].in,
		    strlen(cases[i].in), &n);
		if (strcmp(out, cases[i].want) != 0)
			fail_msg("case %zu (%s): got \"%s\", want \"%s\"", i,
			    cases[i].cs ? cases[i].cs : "none", out,
			    cases[i].want);
		free(out);
	}
}

static void
test_b64(void **state)
{
	static const struct { const char *in; long want; const char *out; }
	    canon[] = {
		{ "", 0, "" },
		{ "TWFu", 4, "TWFu" },
		{ "TW\r\nFu\r\n", 4, "TWFu" },
		{ "TWE=\r\n", 4, "TWE=" },
		{ "TQ==", 4, "TQ==" },
		{ "TR==", -1, NULL },		/* unused bits set */
		{ "TWF=", -1, NULL },
		{ "TQ=", -1, NULL },		/* not a multiple of 4 */
		{ "TQ==TWFu", -1, NULL },	/* padding in the middle */
		{ "TQ==\r\nTWFu\r\n", -1, NULL },
		{ "TW*u", -1, NULL },
		{ "T W F u", -1, NULL },	/* blanks inside a line: re-encode */
	};
	static const struct { const char *in, *out; } enc[] = {
		{ "", "" }, { "M", "TQ==" }, { "Ma", "TWE=" }, { "Man", "TWFu" },
		{ "\xff\xfe\xfd\x00", "//79AA==" },
	};
	char	 buf[64];
	size_t	 i, n;
	long	 l;

	for (i = 0; i < sizeof(canon) / sizeof(canon[0]); i++) {
		l = mime_b64_canonical(canon[i].in, strlen(canon[i].in), buf);
		if (l != canon[i].want)
			fail_msg("canon %zu: got %ld, want %ld", i, l,
			    canon[i].want);
		if (l >= 0) {
			buf[l] = '\0';
			assert_string_equal(buf, canon[i].out);
		}
	}
	for (i = 0; i < sizeof(enc) / sizeof(enc[0]); i++) {
		n = strlen(enc[i].in) + (i == 4);
		n = mime_b64_encode((const unsigned char *)enc[i].in, n, buf);
		buf[n] = '\0';
		assert_string_equal(buf, enc[i].out);
	}
}

/* Lenient base64: unpadded tails, stray characters, fed in pieces. */
static void
test_b64_decode(void **state)
{
	static const struct { const char *in, *out; } cases[] = {
		{ "TWFu", "Man" },
		{ "TWE=", "Ma" }, { "TQ==", "M" },
		{ "TWE", "Ma" },		/* 4n+3 without its '=' */
		{ "TQ", "M" },			/* 4n+2 without its '==' */
		{ "TWFuT", "Man" },		/* 4n+1: the stray one goes */
		{ "TW\r\nFu\r\nTQ\r\n", "ManM" },
		{ "TQ==TWE=", "M" },		/* padding ends the data */
		{ "TWE=\r\n ignored", "Ma" },
		{ "TW=Fu", "Man" },		/* a lone '=' in a group */
		{ "TQ=", "M" },
		{ "T*W!F u", "Man" },		/* outside the alphabet */
		{ "", "" },
	};
	struct mime_b64dec	 d;
	unsigned char		 out[64];
	size_t			 i, j, n, len;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		len = strlen(cases[i].in);
		n = mime_b64_decode(cases[i].in, len, out);
		if (n != strlen(cases[i].out) ||
		    memcmp(out, cases[i].out, n) != 0)
			fail_msg("decode %zu: got %zu bytes", i, n);
		/* One character at a time gives the same. */
		mime_b64_dec_init(&d);
		for (n = 0, j = 0; j < len; j++)
			n += mime_b64_dec_step(&d, cases[i].in + j, 1, out + n);
		n += mime_b64_dec_end(&d, out + n);
		assert_int_equal(n, strlen(cases[i].out));
		assert_memory_equal(out, cases[i].out, n);
	}
}

static void
test_words(void **state)
{
	static const struct { const char *in, *want; } cases[] = {
		{ "plain text", "plain text" },
		/* GMime 3.2.13 stops after a padded base64 word. */
		{ "=?UTF-8?B?SGVsbG8gdw==?= =?UTF-8?B?b3JsZA==?=",
		  "Hello world" },
		{ "=?UTF-8?B?w6k=?= =?UTF-8?B?YS5wZGY=?=", "\xc3\xa9" "a.pdf" },
		{ "=?UTF-8?B?w6k=?==?UTF-8?B?YS5wZGY=?=", "\xc3\xa9" "a.pdf" },
		/* White space between words goes, folds too; text stays. */
		{ "=?utf-8?q?a?=\r\n =?utf-8?q?b?= c =?utf-8?q?d?=", "ab c d" },
		{ "Re: =?iso-8859-1?q?caf=E9_ok?=", "Re: caf\xc3\xa9 ok" },
		/* A character split across two words survives. */
		{ "=?UTF-8?Q?=C3?= =?UTF-8?Q?=A9?=", "\xc3\xa9" },
		{ "=?UTF-8?B?0J/R?= =?UTF-8?B?gA==?=", "\xd0\x9f\xd1\x80" },
		/* Unpadded base64, a language, lower case. */
		{ "=?utf-8*en?b?w6k?=", "\xc3\xa9" },
		/* Labels as browsers read them. */
		{ "=?iso-8859-1?Q?=80?=", "\xe2\x82\xac" },
		{ "=?us-ascii?Q?caf=C3=A9?=", "caf\xc3\xa9" },
		/* Not words: left as they are. */
		{ "=?utf-8?x?abc?=", "=?utf-8?x?abc?=" },
		{ "=?utf-8?q?abc", "=?utf-8?q?abc" },
		{ "a =? b ?= c", "a =? b ?= c" },
		/* Raw 8-bit outside words: UTF-8, else windows-1252. */
		{ "caf\xe9", "caf\xc3\xa9" },
	};
	char	*out;
	size_t	 i, n;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		out = mime_decode_words(cases[i].in, strlen(cases[i].in), &n);
		if (strcmp(out, cases[i].want) != 0)
			fail_msg("words %zu: got \"%s\", want \"%s\"", i, out,
			    cases[i].want);
		assert_int_equal(n, strlen(out));
		free(out);
	}
}

static void
test_address_words(void **state)
{
	static const struct { const char *in, *want; } cases[] = {
		{ "a@b.c", "a@b.c" },
		{ "=?UTF-8?B?w6k=?= =?UTF-8?B?w6k=?= <a@b.c>",
		  "\"\xc3\xa9\xc3\xa9\" <a@b.c>" },
		{ "John =?UTF-8?Q?D=C3=B6e?= <a@b.c>, x@y.z",
		  "John \"D\xc3\xb6" "e\" <a@b.c>, x@y.z" },
		/* Specials in the decoded text stay inside the quotes. */
		{ "=?UTF-8?Q?Doe=2C_John_=22JD=22?= <a@b.c>",
		  "\"Doe, John \\\"JD\\\"\" <a@b.c>" },
		/* Inside a quoted string, a comment, and <> (left). */
		{ "\"=?UTF-8?Q?=C3=A9?=\" <a@b.c>", "\"\xc3\xa9\" <a@b.c>" },
		{ "a@b.c (=?UTF-8?Q?x=29?=)", "a@b.c (x\\))" },
		{ "<=?UTF-8?Q?x?=@b.c>", "<=?UTF-8?Q?x?=@b.c>" },
	};
	char	*out;
	size_t	 i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		out = mime_decode_address_words(cases[i].in);
		if (strcmp(out, cases[i].want) != 0)
			fail_msg("address %zu: got \"%s\", want \"%s\"", i,
			    out, cases[i].want);
		free(out);
	}
}

/* repair.c: the edits, and the message they make. */
static void
test_header_repair(void **state)
{
	static const struct { const char *in, *want; } cases[] = {
		/* Well formed: no edit. */
		{ "A: 1\r\n\r\nbody\r\n", NULL },
		{ "A: 1\r\n b\r\n\r\nbody\r\n", NULL },
		/* A byte-order mark before the first header, or after ours. */
		{ "\xef\xbb\xbf" "From: a\r\n\r\nb\r\n", "From: a\r\n\r\nb\r\n" },
		{ "Received: x\r\n\xef\xbb\xbf" "From: a\r\n\r\nb\r\n",
		  "Received: x\r\nFrom: a\r\n\r\nb\r\n" },
		/* No blank line: the body starts at the first other line. */
		{ "A: 1\r\nHello there\r\nB: 2 is body\r\n",
		  "A: 1\r\n Hello there\r\nB: 2 is body\r\n" },
		{ "A: 1\r\nHello there\r\nmore\r\n",
		  "A: 1\r\n\r\nHello there\r\nmore\r\n" },
		/* A broken fold, more fields after it. */
		{ "Subject: a\r\nb c\r\nTo: x\r\n\r\nbody",
		  "Subject: a\r\n b c\r\nTo: x\r\n\r\nbody" },
		/* No header at all. */
		{ "just text\r\n", "\r\njust text\r\n" },
		/* Headers straight into the first boundary. */
		{ "Content-Type: multipart/mixed; boundary=b\r\n--b\r\n"
		  "Content-Type: text/plain\r\n\r\nx\r\n--b--\r\n",
		  "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
		  "Content-Type: text/plain\r\n\r\nx\r\n--b--\r\n" },
		/* A part without its blank line; a part ending in a boundary. */
		{ "Content-Type: multipart/mixed;\r\n boundary=\"b\"\r\n\r\n"
		  "--b\r\nContent-Type: text/plain\r\nhi\r\n"
		  "--b\r\nContent-Type: text/plain\r\n--b--\r\n",
		  "Content-Type: multipart/mixed;\r\n boundary=\"b\"\r\n\r\n"
		  "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
		  "--b\r\nContent-Type: text/plain\r\n\r\n--b--\r\n" },
		/* Boundary-like lines in a body are not boundaries. */
		{ "Content-Type: text/plain\r\n\r\n--b\r\nx y\r\n", NULL },
		/* A Content-Type that can't be read is none (text/plain). */
		{ "Content-Type: text\r\n\r\nx\r\n",
		  "Content-Type-Ignored: text\r\n\r\nx\r\n" },
		{ "Content-Type: multipart/mixed\r\n  Content-Type: x/y\r\n"
		  "\r\nx\r\n", "Content-Type-Ignored: multipart/mixed\r\n"
		  "  Content-Type: x/y\r\n\r\nx\r\n" },
		/* A multipart without a boundary: text too. */
		{ "Content-Type: multipart/mixed\r\n\r\nx\r\n",
		  "Content-Type-Ignored: multipart/mixed\r\n\r\nx\r\n" },
		/* An empty boundary is one ("--" lines). */
		{ "Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n"
		  "Content-Type: text/plain\r\n\r\nx\r\n----\r\n", NULL },
		/* The first Content-Type counts, as most readers have it. */
		{ "Content-Type: text/html\r\nContent-Type: text/plain\r\n\r\nx",
		  "Content-Type: text/html\r\nContent-Type-Ignored: text/plain"
		  "\r\n\r\nx" },
		/* A parameter without its ';' gets one, folded or not. */
		{ "Content-Type: multipart/mixed\r\n\tboundary=\"b\"\r\n\r\n"
		  "--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n",
		  "Content-Type: multipart/mixed;\r\n\tboundary=\"b\"\r\n\r\n"
		  "--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n" },
		{ "Content-Type: text/plain charset=utf-8\r\n\r\nx",
		  "Content-Type: text/plain; charset=utf-8\r\n\r\nx" },
	};
	struct repair	 r;
	char		*out;
	size_t		 i, n;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(repair_scan_mem(cases[i].in,
		    strlen(cases[i].in), &r), 0);
		if (cases[i].want == NULL) {
			if (r.n != 0)
				fail_msg("repair %zu: %zu edits, want none", i,
				    r.n);
			repair_free(&r);
			continue;
		}
		out = repair_apply(cases[i].in, strlen(cases[i].in), &r, &n);
		if (strcmp(out, cases[i].want) != 0)
			fail_msg("repair %zu: got \"%s\"", i, out);
		free(out);
		repair_free(&r);
	}
}

/* The file reader (a window at a time) finds what the memory one does. */
static size_t
same_edits(const char *msg, size_t len)
{
	struct repair	 a, b;
	char		 tmpl[] = "/tmp/test_mime.XXXXXX";
	size_t		 i;
	int		 fd;

	assert_true((fd = mkstemp(tmpl)) != -1);
	unlink(tmpl);
	assert_int_equal(write(fd, "junk", 4), 4);
	assert_int_equal(write(fd, msg, len), (ssize_t)len);
	assert_int_equal(write(fd, "\r\n\r\njunk", 8), 8);
	assert_int_equal(repair_scan_mem(msg, len, &a), 0);
	assert_int_equal(repair_scan_fd(fd, 4, len, &b), 0);
	assert_int_equal(a.n, b.n);
	for (i = 0; i < a.n; i++) {
		assert_int_equal(a.e[i].off, b.e[i].off);
		assert_int_equal(a.e[i].del, b.e[i].del);
		assert_ptr_equal(a.e[i].ins, b.e[i].ins);
	}
	repair_free(&a);
	repair_free(&b);
	close(fd);
	return i;
}

static void
test_header_repair_fd(void **state)
{
	static const char head[] = "From: a@b.c\r\n"
	    "Content-Type: multipart/mixed; boundary=b\r\n--b\r\n"
	    "Content-Type: application/pdf\r\n\r\n";
	static const char tail[] = "\r\n--b\r\nContent-Type: text/plain\r\n"
	    "Hello\r\n--b--\r\n";
	size_t	 sizes[] = { 10, 65536 - 200, 65536, 150000, 300001 };
	size_t	 i, j, n, line;
	char	*msg;

	(void)state;
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		/* A part of sizes[i] bytes, in lines of 76 or in one line. */
		for (line = 0; line < 2; line++) {
			n = strlen(head) + sizes[i] + strlen(tail);
			msg = malloc(n + 1);
			memcpy(msg, head, strlen(head));
			for (j = 0; j < sizes[i]; j++)
				msg[strlen(head) + j] = line || j % 78 < 76 ?
				    'A' : j % 78 == 76 ? '\r' : '\n';
			memcpy(msg + strlen(head) + sizes[i], tail,
			    strlen(tail) + 1);
			/* Before the first boundary, and before "Hello". */
			assert_int_equal(same_edits(msg, n), 2);
			free(msg);
		}
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_repair),
		cmocka_unit_test(test_charsets),
		cmocka_unit_test(test_b64),
		cmocka_unit_test(test_b64_decode),
		cmocka_unit_test(test_words),
		cmocka_unit_test(test_address_words),
		cmocka_unit_test(test_header_repair),
		cmocka_unit_test(test_header_repair_fd),
	};

	mime_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for mime.c: charsets, UTF-8 repair, base64. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mime.h"

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

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_repair),
		cmocka_unit_test(test_charsets),
		cmocka_unit_test(test_b64),
	};

	mime_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}

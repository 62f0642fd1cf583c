/* Unit tests for smtp_proto.c: command and path syntax, the DATA decoder. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "smtp_proto.h"

static void
test_cmd_parse(void **state)
{
	static const struct {
		const char	*line;
		enum smtp_cmd	 cmd;
		const char	*args;
	} cases[] = {
		{ "EHLO client.example", CMD_EHLO, "client.example" },
		{ "ehlo x", CMD_EHLO, "x" },
		{ "HeLo x", CMD_HELO, "x" },
		{ "MAIL FROM:<a@b>", CMD_MAIL, "FROM:<a@b>" },
		{ "rcpt to:<a@b>", CMD_RCPT, "to:<a@b>" },
		{ "DATA", CMD_DATA, "" },
		{ "BDAT 10 LAST", CMD_BDAT, "10 LAST" },
		{ "QUIT", CMD_QUIT, "" },
		{ "GET / HTTP/1.1", CMD_HTTP, "/ HTTP/1.1" },
		{ "POST /x HTTP/1.0", CMD_HTTP, "/x HTTP/1.0" },
		{ "MAILFROM:<a@b>", CMD_UNKNOWN, "" },
		{ "", CMD_UNKNOWN, "" },
		{ "XYZZY", CMD_UNKNOWN, "" },
	};
	const char	*args;
	size_t		 i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enum smtp_cmd got = smtp_cmd_parse(cases[i].line, &args);
		if (got != cases[i].cmd)
			fail_msg("\"%s\": got cmd %d, want %d", cases[i].line,
			    got, cases[i].cmd);
		if (got != CMD_UNKNOWN && strcmp(args, cases[i].args) != 0)
			fail_msg("\"%s\": got args \"%s\", want \"%s\"",
			    cases[i].line, args, cases[i].args);
	}
}

static void
test_parse_path(void **state)
{
	static const struct {
		const char	*arg;
		int		 ok;
		const char	*addr;
		const char	*params;
		int		 utf8;
	} cases[] = {
		{ "FROM:<a@b.example>", 0, "a@b.example", "", 0 },
		{ "from:<a@b.example> SIZE=100 BODY=8BITMIME", 0, "a@b.example",
		  "SIZE=100 BODY=8BITMIME", 0 },
		{ "FROM: <a@b.example>", 0, "a@b.example", "", 0 },
		{ "FROM:<>", 0, "", "", 0 },
		{ "FROM:scanner@corp.example", 0, "scanner@corp.example", "", 0 },
		{ "FROM:<@relay.example:a@b.example>", 0, "a@b.example", "", 0 },
		{ "FROM:<\"john smith\"@b.example>", 0, "\"john smith\"@b.example",
		  "", 0 },
		{ "FROM:<\"a>b\"@b.example>", 0, "\"a>b\"@b.example", "", 0 },
		{ "FROM:<j\xc3\xb6rg@b\xc3\xbc.example>", 0,
		  "j\xc3\xb6rg@b\xc3\xbc.example", "", 1 },
		{ "FROM:<a@[192.0.2.1]>", 0, "a@[192.0.2.1]", "", 0 },
		{ "FROM:<a@b.example", -1, NULL, NULL, 0 },
		{ "TO:<a@b.example>", -1, NULL, NULL, 0 },
		{ "FROM:<ab.example>", -1, NULL, NULL, 0 },
		{ "FROM:<a..b@b.example>", -1, NULL, NULL, 0 },
		{ "FROM:<a@b..example>", -1, NULL, NULL, 0 },
		{ "FROM:<a b@b.example>", -1, NULL, NULL, 0 },
		{ "FROM:<\xff@b.example>", -1, NULL, NULL, 0 },	/* not UTF-8 */
		{ "FROM:<\xc0\xaf@b.example>", -1, NULL, NULL, 0 }, /* overlong */
		{ "FROM:<a@b.example\r>", -1, NULL, NULL, 0 },
	};
	char		 addr[SMTP_PATH_MAX + 1];
	const char	*params, *why;
	size_t		 i;
	int		 utf8, r;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		r = smtp_parse_path(cases[i].arg, "FROM:", addr, sizeof(addr),
		    &params, &utf8, &why);
		if (r != cases[i].ok)
			fail_msg("\"%s\": got %d, want %d", cases[i].arg, r,
			    cases[i].ok);
		if (r != 0)
			continue;
		if (strcmp(addr, cases[i].addr) != 0)
			fail_msg("\"%s\": got addr \"%s\", want \"%s\"",
			    cases[i].arg, addr, cases[i].addr);
		if (strcmp(params, cases[i].params) != 0)
			fail_msg("\"%s\": got params \"%s\", want \"%s\"",
			    cases[i].arg, params, cases[i].params);
		if (utf8 != cases[i].utf8)
			fail_msg("\"%s\": got utf8 %d", cases[i].arg, utf8);
	}
}

static void
test_path_too_long(void **state)
{
	char		 arg[600], addr[SMTP_PATH_MAX + 1];
	const char	*params, *why;
	int		 utf8;

	(void)state;
	memset(arg, 'a', sizeof(arg));
	memcpy(arg, "FROM:<", 6);
	memcpy(arg + 500, "@b.example>", 12);
	assert_int_equal(smtp_parse_path(arg, "FROM:", addr, sizeof(addr),
	    &params, &utf8, &why), -1);
}

static void
test_params(void **state)
{
	const char	*p = "SIZE=100  BODY=8BITMIME SMTPUTF8";
	char		 k[16], v[16];

	(void)state;
	assert_int_equal(smtp_param_next(&p, k, sizeof(k), v, sizeof(v)), 1);
	assert_string_equal(k, "SIZE");
	assert_string_equal(v, "100");
	assert_int_equal(smtp_param_next(&p, k, sizeof(k), v, sizeof(v)), 1);
	assert_string_equal(k, "BODY");
	assert_string_equal(v, "8BITMIME");
	assert_int_equal(smtp_param_next(&p, k, sizeof(k), v, sizeof(v)), 1);
	assert_string_equal(k, "SMTPUTF8");
	assert_string_equal(v, "");
	assert_int_equal(smtp_param_next(&p, k, sizeof(k), v, sizeof(v)), 0);
}

static void
test_bdat(void **state)
{
	uint64_t	 n;
	int		 last;

	(void)state;
	assert_int_equal(smtp_parse_bdat("100", &n, &last), 0);
	assert_true(n == 100 && last == 0);
	assert_int_equal(smtp_parse_bdat("0 LAST", &n, &last), 0);
	assert_true(n == 0 && last == 1);
	assert_int_equal(smtp_parse_bdat("7 last", &n, &last), 0);
	assert_true(last == 1);
	assert_int_equal(smtp_parse_bdat("", &n, &last), -1);
	assert_int_equal(smtp_parse_bdat("-1", &n, &last), -1);
	assert_int_equal(smtp_parse_bdat("10 LASTX", &n, &last), -1);
	assert_int_equal(smtp_parse_bdat("99999999999999999999999", &n, &last),
	    -1);
}

/*
 * Runs the decoder over in, split into pieces of at most step bytes, as
 * smtp_session.c does. Each call must take every byte it is given unless it
 * ends the data, and never more: the session drains what a call took, so a
 * byte held back without an end would be offered again forever, and one
 * taken past the end is the next command's.
 */
static size_t
decode(const char *in, size_t len, int normalize, size_t step, char *out,
    size_t *consumed, int *end, uint64_t *bare)
{
	struct data_dec	 d;
	size_t		 off = 0, total = 0, n, used, outlen;
	char		 tmp[2 * 4096 + 8];

	data_dec_init(&d, normalize);
	*end = 0;
	while (off < len && !*end) {
		n = len - off < step ? len - off : step;
		used = data_dec_run(&d, in + off, n, tmp, &outlen, end);
		if (used > n || (used < n && !*end))
			fail_msg("at byte %zu: took %zu of %zu bytes, end %d",
			    off, used, n, *end);
		memcpy(out + total, tmp, outlen);
		total += outlen;
		off += used;
	}
	*consumed = off;
	*bare = d.bare;
	return total;
}

static void
test_data_basic(void **state)
{
	static const struct {
		const char	*in;
		int		 normalize;
		const char	*out;
		size_t		 left;	/* after the end: the next command's */
		uint64_t	 bare;
		int		 end;
	} cases[] = {
		{ ".\r\n", 0, "", 0, 0, 1 },
		{ "a\r\n.\r\n", 0, "a\r\n", 0, 0, 1 },
		{ "a\r\n.\r\nMAIL", 0, "a\r\n", 4, 0, 1 },
		{ "..x\r\n.\r\n", 0, ".x\r\n", 0, 0, 1 },
		{ "..x\r\n.\r\nQUIT\r\n", 0, ".x\r\n", 6, 0, 1 },
		{ "a\r\n..\r\n.\r\n", 0, "a\r\n.\r\n", 0, 0, 1 },
		{ ".\r\n.\r\n", 0, "", 3, 0, 1 },
		{ "a\r\n.\r\n\r\n", 0, "a\r\n", 2, 0, 1 },
		{ "a\nb\r\n.\r\nRSET\r\n", 1, "a\r\nb\r\n", 6, 1, 1 },
		{ "a\r\n.\r\n.", 0, "a\r\n", 1, 0, 1 },
		{ "a\r\n.x\r\n", 0, "a\r\nx\r\n", 0, 0, 0 },
		{ "a\nb\r\n", 0, "a\nb\r\n", 0, 1, 0 },
		{ "a\nb\r\n", 1, "a\r\nb\r\n", 0, 1, 0 },
		{ "a\rb\r\n", 1, "a\r\nb\r\n", 0, 1, 0 },
		{ "a\r\r\n", 1, "a\r\n\r\n", 0, 1, 0 },
		{ "a\r\n.\n", 1, "a\r\n.\r\n", 0, 1, 0 },
		{ "a\r\n.\r.\r\n", 1, "a\r\n.\r\n.\r\n", 0, 1, 0 },
		{ "a\r\n.", 0, "a\r\n", 0, 0, 0 },
		{ "\0x\r\n", 0, "\0x\r\n", 0, 0, 0 },
	};
	char		 out[256];
	size_t		 i, step, n, consumed, inlen, want_len;
	uint64_t	 bare;
	int		 end;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		/* Only the NUL case needs an explicit length. */
		inlen = cases[i].in[0] == '\0' ? 4 : strlen(cases[i].in);
		want_len = cases[i].out[0] == '\0' && cases[i].in[0] == '\0' ?
		    4 : strlen(cases[i].out);
		for (step = 1; step <= inlen; step++) {
			n = decode(cases[i].in, inlen, cases[i].normalize, step,
			    out, &consumed, &end, &bare);
			if (n != want_len || memcmp(out, cases[i].out, n) != 0)
				fail_msg("case %zu step %zu: output differs "
				    "(got %zu bytes, want %zu)", i, step, n,
				    want_len);
			if (end != cases[i].end)
				fail_msg("case %zu step %zu: got end %d", i,
				    step, end);
			if (consumed != inlen - cases[i].left)
				fail_msg("case %zu step %zu: consumed %zu, "
				    "want %zu", i, step, consumed,
				    inlen - cases[i].left);
			if (bare != cases[i].bare)
				fail_msg("case %zu step %zu: bare %llu", i,
				    step, (unsigned long long)bare);
		}
	}
}

/*
 * The SMTP smuggling family: none of these may end the data. After each,
 * the real CRLF.CRLF must be the end, with the smuggled commands inside.
 */
static void
test_data_smuggling(void **state)
{
	static const struct {
		const char	*seq;
		size_t		 len;
		int		 has_bare;
	} seqs[] = {
		{ "\n.\n", 3, 1 }, { "\r.\r", 3, 1 }, { "\r.\n", 3, 1 },
		{ "\n.\r", 3, 1 }, { "\n.\r\n", 4, 1 }, { "\r\n.\n", 4, 1 },
		{ "\r.\r\n", 4, 1 }, { "\r\n.\r", 4, 1 },
		{ "\r\n.\r\r\n", 6, 1 }, { "\r\r\n.\r\r\n", 7, 1 },
		{ "\r\n\0.\r\n", 6, 0 }, { "\r\n.\0\r\n", 6, 0 },
	};
	static const char smuggled[] = "MAIL FROM:<evil@x.test>\r\n"
	    "RCPT TO:<victim@y.test>\r\nDATA\r\nsmuggled\r\n";
	char		 in[512], out[1024];
	size_t		 i, len, step, n, consumed;
	uint64_t	 bare;
	int		 end, normalize;

	(void)state;
	for (i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
		len = 0;
		memcpy(in, "Subject: x\r\n\r\nbody", 18);
		len = 18;
		memcpy(in + len, seqs[i].seq, seqs[i].len);
		len += seqs[i].len;
		memcpy(in + len, smuggled, sizeof(smuggled) - 1);
		len += sizeof(smuggled) - 1;
		memcpy(in + len, "\r\n.\r\nQUIT\r\n", 11);
		len += 11;
		for (normalize = 0; normalize <= 1; normalize++)
			for (step = 1; step <= len; step += 3) {
				n = decode(in, len, normalize, step, out,
				    &consumed, &end, &bare);
				if (!end || consumed != len - 6)
					fail_msg("seq %zu: ended at %zu of %zu "
					    "(end=%d)", i, consumed, len, end);
				if (memmem(out, n, "smuggled", 8) == NULL)
					fail_msg("seq %zu: smuggled text not "
					    "in the body", i);
				if ((bare > 0) != seqs[i].has_bare)
					fail_msg("seq %zu: bare=%llu", i,
					    (unsigned long long)bare);
				if (normalize && memchr(out, '\n', n) != NULL) {
					/* every LF must follow a CR */
					size_t k;
					for (k = 0; k < n; k++)
						if (out[k] == '\n' && (k == 0 ||
						    out[k - 1] != '\r'))
							fail_msg("seq %zu: bare "
							    "LF survived", i);
				}
			}
	}
}

static void
test_helo(void **state)
{
	(void)state;
	assert_true(smtp_valid_helo("mail.example.com"));
	assert_true(smtp_valid_helo("RNP002673"));
	assert_true(smtp_valid_helo("[192.0.2.1]"));
	assert_false(smtp_valid_helo(""));
	assert_false(smtp_valid_helo("bad host"));
	assert_false(smtp_valid_helo("x\x01y"));
}

static void
test_header_value(void **state)
{
	static const struct { const char *head, *name, *want; } cases[] = {
		{ "Subject: x\r\nMessage-ID: <a@b>\r\n\r\n", "Message-ID",
		  "<a@b>" },
		{ "message-id:<a@b>\r\n", "Message-ID", "<a@b>" },
		/* Folded, tabs, trailing blanks. */
		{ "Message-ID:\r\n\t<a@b>  \r\nX: y\r\n", "Message-ID",
		  "<a@b>" },
		{ "Subject: one\r\n two\r\n", "Subject", "one two" },
		/* The first one; none past the blank line; no prefix match. */
		{ "Message-ID: <1>\r\nMessage-ID: <2>\r\n", "Message-ID",
		  "<1>" },
		{ "A: b\r\n\r\nMessage-ID: <x>\r\n", "Message-ID", "" },
		{ "Message-IDs: <x>\r\nX-Message-ID: <y>\r\n", "Message-ID",
		  "" },
		{ "Message-ID: <no-line-end>", "Message-ID", "<no-line-end>" },
		{ "", "Message-ID", "" },
	};
	char	 out[64], small[4];
	size_t	 i, n;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		n = smtp_header_value(cases[i].head, strlen(cases[i].head),
		    cases[i].name, out, sizeof(out));
		if (strcmp(out, cases[i].want) != 0 ||
		    n != strlen(cases[i].want))
			fail_msg("case %zu: got \"%s\"", i, out);
	}
	/* Cut to the buffer, NUL-terminated. */
	n = smtp_header_value("Message-ID: <abcdef>\r\n", 22, "Message-ID",
	    small, sizeof(small));
	assert_int_equal(n, 3);
	assert_string_equal(small, "<ab");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cmd_parse),
		cmocka_unit_test(test_parse_path),
		cmocka_unit_test(test_path_too_long),
		cmocka_unit_test(test_params),
		cmocka_unit_test(test_bdat),
		cmocka_unit_test(test_data_basic),
		cmocka_unit_test(test_data_smuggling),
		cmocka_unit_test(test_helo),
		cmocka_unit_test(test_header_value),
	};

	return cmocka_run_group_tests_name("smtp_proto", tests, NULL, NULL);
}

/*
 * fuzz_smtp_proto.c - one SMTP command line through smtp_proto.c's parsers:
 * the verb, MAIL/RCPT paths and their parameters, BDAT's size, HELO's
 * name. Buffers are heap-allocated at the sizes smtp_session.c uses, so
 * ASan sees any write past them; a second, small address buffer checks the
 * length test.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "smtp_proto.h"

static void
path(const char *args, const char *prefix, size_t len)
{
	char		*addr = malloc(len);
	const char	*params = NULL, *why = NULL, *p;
	char		*key = malloc(32), *val = malloc(64);
	int		 utf8 = -1, n;

	if (addr == NULL || key == NULL || val == NULL)
		abort();
	if (smtp_parse_path(args, prefix, addr, len, &params, &utf8,
	    &why) == -1) {
		FUZZ_CHECK(why != NULL);
		goto out;
	}
	FUZZ_CHECK(strlen(addr) < len && strlen(addr) <= SMTP_PATH_MAX);
	FUZZ_CHECK(utf8 == 0 || utf8 == 1);
	FUZZ_CHECK(params >= args && params <= args + strlen(args));
	/* Each parameter moves on; the loop ends within the line. */
	for (p = params, n = 0; smtp_param_next(&p, key, 32, val, 64); n++) {
		FUZZ_CHECK(strlen(key) < 32 && strlen(val) < 64);
		FUZZ_CHECK(p > params && p <= args + strlen(args));
		FUZZ_CHECK(n <= (int)strlen(params));
	}
out:
	free(addr);
	free(key);
	free(val);
}

void
fuzz_smtp_proto_init(void)
{
}

int
fuzz_smtp_proto_one(const uint8_t *data, size_t size)
{
	char		*line = fuzz_strdup(data, size);
	const char	*args = NULL;
	enum smtp_cmd	 cmd;
	uint64_t	 n;
	int		 last;

	cmd = smtp_cmd_parse(line, &args);
	FUZZ_CHECK(cmd >= CMD_HELO && cmd <= CMD_UNKNOWN);
	FUZZ_CHECK(args >= line && args <= line + strlen(line));
	FUZZ_CHECK(smtp_cmd_name(cmd) != NULL);
	/* Every parser on every line, not only the verb's own. */
	path(args, "FROM:", SMTP_PATH_MAX + 1);
	path(args, "TO:", SMTP_PATH_MAX + 1);
	path(args, cmd == CMD_RCPT ? "TO:" : "FROM:", 8);
	if (smtp_parse_bdat(args, &n, &last) == 0)
		FUZZ_CHECK(last == 0 || last == 1);
	(void)smtp_valid_helo(args);
	free(line);
	return 0;
}

FUZZ_ENTRY(smtp_proto)

/*
 * Unit tests for config.c alone: the reader, without the checks of
 * config_check.c. This program links config.c with addr.c, util.c and
 * log.c only (Makefile.am), not librelayd.a: config.c is the bottom of
 * relayd's dependency graph, and a call from it into TLS, tokens, AUTH or
 * any other module fails this build.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <unistd.h>

#include "config.h"

/* Reads text; returns the reader's config (or NULL) and what it wrote. */
static struct config *
read_text(const char *text, char *out, size_t len, int *errors)
{
	struct config_reader	 r;
	FILE			*fp = fmemopen(out, len, "w");

	assert_non_null(fp);
	memset(out, 0, len);
	config_read(&r, "relayd.conf", text, fp, 0);
	*errors = r.errors;
	fclose(fp);
	return config_read_done(&r);
}

/*
 * What the reader decides, and what it leaves to the checks: an open
 * relay, a missing credential or an unreadable users file are reported by
 * config_check.c, not here.
 */
static void
test_read_only(void **state)
{
	struct config	*cfg;
	char		 out[1024];
	int		 errors;

	(void)state;
	cfg = read_text("[smtp]\nallow_networks = 0.0.0.0/0\n"
	    "recipient_domains = a.test, b.test c.test\n"
	    "[graph]\ntenant = t\ncloud = china\n"
	    "[auth]\nusers_file = /nonexistent/users\n", out, sizeof(out),
	    &errors);
	if (cfg == NULL)
		fail_msg("refused: %s", out);
	assert_int_equal(errors, 0);
	assert_string_equal(out, "");
	assert_string_equal(cfg->path, "relayd.conf");
	assert_int_equal(cfg->nallow, 1);
	assert_int_equal(cfg->allow[0].prefix, 0);
	/* Derived once the file is read. */
	assert_int_equal(cfg->nrcpt_domains, 3);
	assert_string_equal(cfg->rcpt_domains[2], "c.test");
	assert_string_equal(cfg->login_url, "https://login.chinacloudapi.cn");
	assert_string_equal(cfg->graph_url,
	    "https://microsoftgraph.chinacloudapi.cn");
	assert_string_equal(config_cloud_name(cfg), "china");
	assert_int_equal(cfg->graph_enabled, 0);	/* the checks' to set */
	config_free(cfg);
}

static void
test_read_errors(void **state)
{
	char	 out[2048];
	int	 errors;

	(void)state;
	assert_null(read_text("[smtp]\nmax_errors = 5\nmax_errors = 6\n"
	    "workers = 2\n[queue]\nworkers = x\n", out, sizeof(out),
	    &errors));
	assert_int_equal(errors, 3);
	assert_string_equal(out,
	    "relayd.conf:3: \"max_errors\" is already set at line 2\n"
	    "relayd.conf:4: unknown key \"workers\" in [smtp] (it belongs in "
	    "[queue])\n"
	    "relayd.conf:6: \"workers\" must be a whole number, not \"x\"\n");
}

/* Errors count and say FILE:LINE; warnings say so and do not count. */
static void
test_reader_reports(void **state)
{
	struct config_reader	 r;
	struct config		*cfg;
	char			 out[512];
	FILE			*fp = fmemopen(out, sizeof(out), "w");

	(void)state;
	assert_non_null(fp);
	memset(out, 0, sizeof(out));
	config_read(&r, "x.conf", "\n[graph]\n\ntenant = t\n", fp, 0);
	assert_int_equal(config_key_line(&r, "graph", "tenant"), 4);
	assert_int_equal(config_key_line(&r, "graph", "client_id"), 0);
	assert_int_equal(config_key_line(&r, "graph", "nosuchkey"), 0);
	config_warning(&r, 4, "careful with %s", "t");
	config_warning(&r, 0, "no line");
	assert_int_equal(r.errors, 0);
	config_error(&r, 4, "bad %d", 1);
	config_error(&r, 0, "bad as a whole");
	assert_int_equal(r.errors, 2);
	fclose(fp);
	assert_string_equal(out, "x.conf:4: warning: careful with t\n"
	    "x.conf:0: warning: no line\n"
	    "x.conf:4: bad 1\n"
	    "x.conf: bad as a whole\n");
	assert_null(config_read_done(&r));
	assert_null(r.cfg);

	fp = fmemopen(out, sizeof(out), "w");
	config_read(&r, "x.conf", "", fp, 0);
	config_warning(&r, 1, "only a warning");
	cfg = config_read_done(&r);
	fclose(fp);
	assert_non_null(cfg);
	config_free(cfg);
}

/* config_read_file() must refuse path, saying want. */
static void
refused(const char *path, const char *want)
{
	char	 out[512];
	FILE	*ef = fmemopen(out, sizeof(out), "w");

	assert_non_null(ef);
	memset(out, 0, sizeof(out));
	assert_null(config_read_file(path, ef));
	fclose(ef);
	if (strstr(out, want) == NULL)
		fail_msg("got \"%s\", want \"%s\"", out, want);
}

static void
test_read_file(void **state)
{
	char	 path[] = "/tmp/relayd-cfg-XXXXXX", *text;
	FILE	*fp;
	int	 fd;

	(void)state;
	assert_true((fd = mkstemp(path)) != -1);
	assert_int_equal(write(fd, "[smtp]\n", 7), 7);
	close(fd);
	assert_non_null(text = config_read_file(path, stderr));
	assert_string_equal(text, "[smtp]\n");
	free(text);

	assert_non_null(fp = fopen(path, "a"));
	fputc('\0', fp);
	fclose(fp);
	refused(path, "contains a NUL byte; not a text file");

	assert_non_null(fp = fopen(path, "w"));
	assert_int_equal(fseek(fp, 1024 * 1024, SEEK_SET), 0);
	fputc('\n', fp);	/* one byte over */
	fclose(fp);
	refused(path, "larger than 1 MiB");

	unlink(path);
	refused(path, "cannot open: No such file");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_read_only),
		cmocka_unit_test(test_read_errors),
		cmocka_unit_test(test_reader_reports),
		cmocka_unit_test(test_read_file),
	};

	return cmocka_run_group_tests_name("config_read", tests, NULL, NULL);
}

/*
 * Unit tests for config.c, config_check.c and config_doc.c: defaults,
 * ranges, FILE:LINE errors, relayd -D.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "config_check.h"
#include "config_doc.h"

/* Parses text; returns the config (or NULL) and the error text. */
static struct config *
load(const char *text, char *errs, size_t len)
{
	FILE		*fp = fmemopen(errs, len, "w");
	struct config	*cfg;

	memset(errs, 0, len);
	cfg = config_load_string("relayd.conf", text, fp);
	fclose(fp);
	return cfg;
}

static void
test_defaults(void **state)
{
	struct config	*cfg;
	char		 errs[1024];

	(void)state;
	cfg = load("", errs, sizeof(errs));
	assert_non_null(cfg);
	assert_int_equal(cfg->max_message_size, 35 * 1024 * 1024);
	assert_int_equal(cfg->max_recipients, 500);
	assert_int_equal(cfg->command_timeout_ms, 300000);
	assert_int_equal(cfg->bare_lf, BARE_LF_REJECT);
	assert_int_equal(cfg->nlisten, 1);
	assert_string_equal(cfg->listen[0].text, "127.0.0.1:25");
	assert_int_equal(cfg->nallow, 2);
	assert_string_equal(cfg->graph_url, "https://graph.microsoft.com");
	config_free(cfg);
}

static void
test_values(void **state)
{
	struct config	*cfg;
	char		 errs[1024];

	(void)state;
	cfg = load("# comment\n[smtp]\nlisten = 127.0.0.1:2525\n"
	    "listen = [::1]:2525\n  hostname = relay.example  \n"
	    "max_message_size = 150M\ncommand_timeout = 30s\n"
	    "data_timeout = 90s\nbare_lf = NORMALIZE\n"
	    "allow_networks = 10.0.0.0/8, 2001:db8::/32 192.0.2.1\n"
	    "[queue]\nspool_dir = /var/tmp/q\nworkers = 64\n"
	    "[graph]\nmailbox = from\nsave_to_sent_items = No\n"
	    "graph_url = https://graph.microsoft.us/\n"
	    "[sendmail]\nsender = server1@contoso.com\n",
	    errs, sizeof(errs));
	if (cfg == NULL)
		fail_msg("unexpected errors: %s", errs);
	assert_int_equal(cfg->nlisten, 2);
	assert_string_equal(cfg->hostname, "relay.example");
	assert_int_equal(cfg->max_message_size, 150 * 1024 * 1024);
	assert_int_equal(cfg->command_timeout_ms, 30000);
	assert_int_equal(cfg->data_timeout_ms, 90000);
	assert_int_equal(cfg->bare_lf, BARE_LF_NORMALIZE);
	assert_int_equal(cfg->nallow, 3);
	assert_string_equal(cfg->spool_dir, "/var/tmp/q");
	assert_int_equal(cfg->workers, 64);
	assert_string_equal(cfg->mailbox, "from");
	assert_int_equal(cfg->save_to_sent_items, 0);
	assert_string_equal(cfg->graph_url, "https://graph.microsoft.us");
	assert_int_equal(cfg->graph_enabled, 0);
	assert_string_equal(cfg->sendmail_sender, "server1@contoso.com");
	config_free(cfg);
}

/* Replaces the first "%s" in tmpl with arg. */
static void
subst(char *out, size_t outlen, const char *tmpl, const char *arg)
{
	const char	*p = strstr(tmpl, "%s");

	if (p == NULL)
		snprintf(out, outlen, "%s", tmpl);
	else
		snprintf(out, outlen, "%.*s%s%s", (int)(p - tmpl), tmpl, arg,
		    p + 2);
}

/* [graph]: all credentials or none; the secret file's mode is checked. */
static void
test_graph_keys(void **state)
{
	static const struct {
		const char	*text;	/* %s: the secret file */
		const char	*want;	/* NULL: accepted */
	} cases[] = {
		{ "[graph]\ntenant = t\nclient_id = c\nclient_secret_file = %s\n",
		  NULL },
		{ "[graph]\ntenant = t\nclient_secret_file = %s\n",
		  "relayd.conf: [graph] client_id is not set" },
		{ "[graph]\nclient_id = c\nclient_secret_file = %s\n",
		  "relayd.conf: [graph] tenant is not set" },
		{ "[graph]\ntenant = t\nclient_id = c\n",
		  "[graph] client_secret_file is not set and there is no "
		  "systemd credential" },
		{ "[graph]\ntenant = t\nclient_id = c\n"
		  "client_secret_file = %s.missing\n",
		  "No such file or directory" },
		{ "[graph]\nmailbox = nobody\n", "relayd.conf:2: mailbox "
		  "\"nobody\" must be envelope, from or a mailbox address" },
		{ "[graph]\ngraph_url = http://graph.example\n", "relayd.conf:2: "
		  "graph_url \"http://graph.example\": plain http is allowed "
		  "only to this host; use https://" },
		{ "[graph]\nlogin_url = ftp://x\n", "login_url \"ftp://x\" must "
		  "start with https://" },
		{ "[graph]\nsave_to_sent_items = maybe\n", "\"save_to_sent_items"
		  "\" must be yes or no, not \"maybe\"" },
	};
	char		 dir[] = "/tmp/relayd-cfg-XXXXXX", path[64], cred[64];
	char		 text[256];
	char		 errs[1024];
	struct config	*cfg;
	FILE		*fp;
	size_t		 i;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/secret", dir);
	assert_non_null(fp = fopen(path, "w"));
	fputs("s3cret\n", fp);
	fclose(fp);
	unsetenv("CREDENTIALS_DIRECTORY");
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(chmod(path, 0600), 0);
		subst(text, sizeof(text), cases[i].text, path);
		cfg = load(text, errs, sizeof(errs));
		if (cases[i].want == NULL && cfg == NULL)
			fail_msg("case %zu: refused: %s", i, errs);
		if (cases[i].want != NULL && (cfg != NULL ||
		    strstr(errs, cases[i].want) == NULL))
			fail_msg("case %zu: got \"%s\", want \"%s\"", i, errs,
			    cases[i].want);
		if (cfg != NULL)
			assert_int_equal(cfg->graph_enabled, 1);
		config_free(cfg);
	}

	/* Readable by the group: refused with the fix. */
	assert_int_equal(chmod(path, 0640), 0);
	snprintf(text, sizeof(text), "[graph]\ntenant = t\nclient_id = c\n"
	    "client_secret_file = %s\n", path);
	assert_null(load(text, errs, sizeof(errs)));
	assert_non_null(strstr(errs, "relayd.conf:4: client_secret_file"));
	assert_non_null(strstr(errs, "is open to group or others (mode 0640); "
	    "run: chmod 600"));

	/* The systemd credential stands in for client_secret_file. */
	assert_int_equal(chmod(path, 0400), 0);
	snprintf(cred, sizeof(cred), "%s/client_secret", dir);
	assert_int_equal(rename(path, cred), 0);
	setenv("CREDENTIALS_DIRECTORY", dir, 1);
	cfg = load("[graph]\ntenant = t\nclient_id = c\n", errs, sizeof(errs));
	if (cfg == NULL)
		fail_msg("credential refused: %s", errs);
	assert_string_equal(cfg->client_secret_file, cred);
	config_free(cfg);
	unsetenv("CREDENTIALS_DIRECTORY");
	unlink(cred);
	rmdir(dir);
}

static void
test_errors(void **state)
{
	static const struct {
		const char	*text;
		const char	*want;
	} cases[] = {
		{ "[graph]\nclinet_id = x\n",
		  "relayd.conf:2: unknown key \"clinet_id\" in [graph] (did you "
		  "mean \"client_id\"?)\n" },
		{ "[smtp]\nspool_dir = /x\n",
		  "relayd.conf:2: unknown key \"spool_dir\" in [smtp] (it "
		  "belongs in [queue])\n" },
		{ "\n\n[smpt]\nx = 1\n", "relayd.conf:3: unknown section [smpt]" },
		{ "[smtp]\nmax_recipients = 501\n",
		  "relayd.conf:2: \"max_recipients\" = 501 is out of range "
		  "(1 to 500)\n" },
		{ "[smtp]\nmax_recipients = 5x\n",
		  "relayd.conf:2: \"max_recipients\" must be a whole number" },
		{ "[smtp]\nmax_message_size = 1T\n",
		  "relayd.conf:2: \"max_message_size\" must be a size" },
		{ "[smtp]\nlisten = localhost:25\n",
		  "relayd.conf:2: listen: \"localhost:25\" is not ADDR:PORT" },
		{ "[smtp]\nlisten = 127.0.0.1:70000\n", "relayd.conf:2: listen" },
		{ "[smtp]\nbare_lf = yes\n", "relayd.conf:2: \"bare_lf\" must be "
		  "one of reject, normalize, not \"yes\"" },
		{ "[smtp]\nallow_networks = 10.0.0.0/33\n",
		  "relayd.conf:2: allow_networks: \"10.0.0.0/33\" is not a "
		  "network" },
		{ "[smtp]\nhostname = a\nhostname = b\n",
		  "relayd.conf:3: \"hostname\" is already set at line 2" },
		{ "tenant = x\n", "relayd.conf:1: \"tenant\" outside of any "
		  "[section]" },
		{ "[graph]\ntenant\n", "relayd.conf:2: expected \"key = value\"" },
		{ "[graph]\ntenant =\n", "relayd.conf:2: \"tenant\" needs a "
		  "value" },
		{ "[queue]\nspool_dir = relative\n", "spool_dir \"relative\" "
		  "must be an absolute path" },
		{ "[smtp]\ncommand_timeout = 0s\n", "\"command_timeout\" = 0s is "
		  "out of range (1 to 3600 seconds)" },
		{ "[sendmail]\nsender = root\n", "relayd.conf:2: sender \"root\" "
		  "is not a mailbox address; name the tenant's mailbox" },
		{ "[sendmail]\n\nsender = @contoso.com\n", "relayd.conf:3: "
		  "sender \"@contoso.com\" is not a mailbox address" },
		{ "[sendmail]\nsender = Cron <cron@contoso.com>\n",
		  "relayd.conf:2: sender \"Cron <cron@contoso.com>\" is not" },
		{ "[sendmail]\nsendr = a@b.c\n", "relayd.conf:2: unknown key "
		  "\"sendr\" in [sendmail] (did you mean \"sender\"?)" },
	};
	struct config	*cfg;
	char		 errs[1024];
	size_t		 i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cfg = load(cases[i].text, errs, sizeof(errs));
		if (cfg != NULL)
			fail_msg("case %zu: accepted", i);
		if (strstr(errs, cases[i].want) == NULL)
			fail_msg("case %zu: got \"%s\", want \"%s\"", i, errs,
			    cases[i].want);
	}
}

/*
 * config_load_client() reads what relayd -n would accept without opening
 * relayd's files: cron's relayd-sendmail runs without the credentials.
 */
static void
test_client_load(void **state)
{
	char		 path[] = "/tmp/relayd-cfg-XXXXXX", errs[1024];
	FILE		*fp, *ef;
	struct config	*cfg;
	int		 fd;

	(void)state;
	unsetenv("CREDENTIALS_DIRECTORY");
	assert_true((fd = mkstemp(path)) != -1);
	assert_non_null(fp = fdopen(fd, "w"));
	fputs("[smtp]\nlisten = 127.0.0.1:2525\n"
	    "tls_cert = /nonexistent/cert.pem\ntls_key = /nonexistent/key\n"
	    "[graph]\ntenant = t\nclient_id = c\n"
	    "[auth]\nusers_file = /nonexistent/users\n"
	    "[sendmail]\nsender = server1@contoso.com\n", fp);
	fclose(fp);

	memset(errs, 0, sizeof(errs));
	assert_non_null(ef = fmemopen(errs, sizeof(errs), "w"));
	assert_null(config_load(path, ef));
	fclose(ef);
	assert_non_null(strstr(errs, "/nonexistent/"));

	memset(errs, 0, sizeof(errs));
	assert_non_null(ef = fmemopen(errs, sizeof(errs), "w"));
	cfg = config_load_client(path, ef);
	fclose(ef);
	if (cfg == NULL)
		fail_msg("config_load_client refused: %s", errs);
	assert_string_equal(cfg->listen[0].text, "127.0.0.1:2525");
	assert_string_equal(cfg->sendmail_sender, "server1@contoso.com");
	config_free(cfg);

	/* Syntax is checked as ever. */
	assert_non_null(fp = fopen(path, "a"));
	fputs("sender = x\n", fp);
	fclose(fp);
	memset(errs, 0, sizeof(errs));
	assert_non_null(ef = fmemopen(errs, sizeof(errs), "w"));
	assert_null(config_load_client(path, ef));
	fclose(ef);
	assert_non_null(strstr(errs, ":12: \"sender\" is already set at "
	    "line 11"));
	unlink(path);
}

static void
test_all_errors_reported(void **state)
{
	char	 errs[2048];

	(void)state;
	assert_null(load("[smtp]\nfoo = 1\nbar = 2\n[queue]\nbaz = 3\n", errs,
	    sizeof(errs)));
	assert_non_null(strstr(errs, "relayd.conf:2:"));
	assert_non_null(strstr(errs, "relayd.conf:3:"));
	assert_non_null(strstr(errs, "relayd.conf:5:"));
}

static void
no_diff(void *arg, const char *section, const char *name)
{
	fail_msg("%s: [%s] %s parses back to another value than its default",
	    (const char *)arg, section, name);
}

/*
 * relayd -D is conf/relayd.conf: every key with a default must be there as
 * "#key = default" in its section, and the file with those lines
 * uncommented must load without a word and give the defaults back, key by
 * key. Keys without a default stay commented ("#key ="), as an admin
 * would leave them.
 */
static void
test_dump_parses(void **state)
{
	struct config		*cfg, *defaults;
	const struct cfg_key	*k;
	char			*text = NULL, errs[1024], *p, *sec, *want;
	char			*end, *hit, what[] = "relayd -D";
	size_t			 len = 0, i, n = 0;
	FILE			*fp = open_memstream(&text, &len);

	(void)state;
	fputc('\n', fp);	/* every line, the first too, after a newline */
	config_dump_defaults(fp);
	fclose(fp);
	for (i = 0; i < config_nkeys; i++) {
		k = &config_keys[i];
		if (asprintf(&sec, "\n[%s]\n", k->section) == -1 ||
		    asprintf(&want, "\n#%s =%s%s\n", k->name, k->def ? " " : "",
		    k->def ? k->def : "") == -1)
			fail();
		p = strstr(text, sec);
		end = p != NULL ? strstr(p + 1, "\n[") : NULL;
		hit = p != NULL ? strstr(p, want) : NULL;
		if (hit == NULL || (end != NULL && hit > end))
			fail_msg("[%s] %s: no \"%.*s\" in its section",
			    k->section, k->name, (int)strlen(want) - 2, want + 1);
		free(sec);
		free(want);
	}
	/* Uncomment every "#key = value" line. */
	for (p = text; (p = strstr(p, "\n#")) != NULL; p++)
		if (p[2] != ' ' && strstr(p + 2, " = ") != NULL &&
		    strstr(p + 2, " = ") < strchr(p + 2, '\n')) {
			p[1] = ' ';
			n++;
		}
	for (i = 0; i < config_nkeys; i++)
		n -= config_keys[i].def != NULL;
	assert_int_equal(n, 2);		/* and the two [senders] examples */
	cfg = load(text, errs, sizeof(errs));
	if (cfg == NULL || errs[0] != '\0')
		fail_msg("the uncommented relayd -D: %s", errs);
	defaults = load("", errs, sizeof(errs));
	assert_non_null(defaults);
	config_diff(defaults, cfg, no_diff, what);
	assert_int_equal(cfg->nallow, defaults->nallow);
	assert_memory_equal(cfg->allow, defaults->allow,
	    cfg->nallow * sizeof(*cfg->allow));
	assert_int_equal(cfg->nsenders, 2);
	config_free(defaults);
	config_free(cfg);
	free(text);
}

/* [cluster]: the Redis URL, table-driven; the node; the password file. */
static void
test_cluster(void **state)
{
	static const struct {
		const char	*url;
		const char	*host;		/* NULL: refused */
		unsigned	 port, db;
		const char	*why;
	} cases[] = {
		{ "redis://127.0.0.1:6379", "127.0.0.1", 6379, 0, NULL },
		{ "redis://10.0.0.5:6380/2", "10.0.0.5", 6380, 2, NULL },
		{ "redis://redis.example.com", "redis.example.com", 6379, 0,
		  NULL },
		{ "redis://[::1]:7000/15", "::1", 7000, 15, NULL },
		{ "redis://h:6379/", "h", 6379, 0, NULL },
		{ "http://h:6379", NULL, 0, 0, "does not start with redis://" },
		{ "redis://:6379", NULL, 0, 0, "has no host" },
		{ "redis://h:0", NULL, 0, 0, "has no port" },
		{ "redis://h:65536", NULL, 0, 0, "has no port" },
		{ "redis://h:x", NULL, 0, 0, "has no port" },
		{ "redis://h:6379/db", NULL, 0, 0, "has no database number" },
		{ "redis://u:pw@h:6379", NULL, 0, 0, "put the password in "
		  "password_file" },
		{ "redis://[::1", NULL, 0, 0, "closing ]" },
		{ "redis://h?x", NULL, 0, 0, "has no host" },
	};
	char		 text[256], errs[1024], dir[] = "/tmp/relayd-cl-XXXXXX";
	char		 path[64];
	struct config	*cfg;
	FILE		*fp;
	size_t		 i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text), "[cluster]\nredis = %s\n",
		    cases[i].url);
		cfg = load(text, errs, sizeof(errs));
		if (cases[i].host == NULL) {
			if (cfg != NULL || strstr(errs, cases[i].why) == NULL ||
			    strstr(errs, "relayd.conf:2: redis") == NULL)
				fail_msg("%s: got \"%s\", want \"%s\"",
				    cases[i].url, errs, cases[i].why);
			continue;
		}
		if (cfg == NULL)
			fail_msg("%s: refused: %s", cases[i].url, errs);
		assert_string_equal(cfg->cluster_host, cases[i].host);
		assert_int_equal(cfg->cluster_port, cases[i].port);
		assert_int_equal(cfg->cluster_db, cases[i].db);
		assert_non_null(cfg->cluster_node);	/* the host name */
		config_free(cfg);
	}
	/* Without [cluster]: alone, as before. */
	cfg = load("", errs, sizeof(errs));
	assert_non_null(cfg);
	assert_null(cfg->cluster_redis);
	config_free(cfg);
	assert_null(load("[cluster]\nnode = n1\n", errs, sizeof(errs)));
	assert_non_null(strstr(errs, "relayd.conf:2: [cluster] without redis"));
	assert_null(load("[cluster]\nredis = redis://h\nnode = a:b\n", errs,
	    sizeof(errs)));
	assert_non_null(strstr(errs, "relayd.conf:3: node \"a:b\""));
	cfg = load("[cluster]\nredis = redis://h\nnode = relay-2.a_b\n", errs,
	    sizeof(errs));
	assert_non_null(cfg);
	assert_string_equal(cfg->cluster_node, "relay-2.a_b");
	config_free(cfg);

	/* The password file: private, as the other secrets. */
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/redis.pw", dir);
	assert_non_null(fp = fopen(path, "w"));
	fputs("pw\n", fp);
	fclose(fp);
	snprintf(text, sizeof(text), "[cluster]\nredis = redis://h\n"
	    "password_file = %s\n", path);
	assert_int_equal(chmod(path, 0644), 0);
	assert_null(load(text, errs, sizeof(errs)));
	assert_non_null(strstr(errs, "relayd.conf:3: password_file"));
	assert_non_null(strstr(errs, "open to group or others"));
	assert_int_equal(chmod(path, 0600), 0);
	cfg = load(text, errs, sizeof(errs));
	if (cfg == NULL)
		fail_msg("private password file refused: %s", errs);
	config_free(cfg);
	unlink(path);
	rmdir(dir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_cluster),
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_graph_keys),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_client_load),
		cmocka_unit_test(test_all_errors_reported),
		cmocka_unit_test(test_dump_parses),
	};

	return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}

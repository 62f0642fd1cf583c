/*
 * fuzz_config.c - relayd.conf text through config_load_string(), then
 * config_diff() against the defaults (what SIGHUP's reload does). Errors go
 * to /dev/null. The parser may open files the text names, only to read.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "config_check.h"
#include "fuzz.h"

static FILE		*devnull;
static struct config	*defaults;

void
fuzz_config_init(void)
{
	if ((devnull = fopen("/dev/null", "w")) == NULL ||
	    (defaults = config_load_string("defaults", "", devnull)) == NULL)
		abort();
}

static void
diff_cb(void *arg, const char *section, const char *name)
{
	FUZZ_CHECK(section != NULL && name != NULL);
	(*(int *)arg)++;
}

int
fuzz_config_one(const uint8_t *data, size_t size)
{
	struct config	*cfg;
	char		*text;
	int		 n = 0;

	/* A NUL ends the text, as it would for the file. */
	if (memchr(data, '\0', size) != NULL)
		return 0;
	text = fuzz_strdup(data, size);
	if ((cfg = config_load_string("fuzz.conf", text, devnull)) != NULL) {
		config_diff(defaults, cfg, diff_cb, &n);
		n = 0;
		config_diff(cfg, cfg, diff_cb, &n);
		FUZZ_CHECK(n == 0);
		FUZZ_CHECK(config_cloud_name(cfg) != NULL);
		config_free(cfg);
	}
	free(text);
	return 0;
}

FUZZ_ENTRY(config)

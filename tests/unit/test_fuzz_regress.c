/*
 * Replays every committed fuzz input through its target, without libFuzzer:
 * tests/fuzz/regress/TARGET (what the fuzzers found, each since fixed) and
 * tests/fuzz/corpus/TARGET (the seeds). A target aborts on a finding, so a
 * regression fails this program; under --enable-sanitizers ASan and UBSan
 * check the same inputs.
 */
#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "fuzz.h"

struct target {
	const char	*name;
	void		(*init)(void);
	int		(*one)(const uint8_t *, size_t);
};

static const struct target targets[] = {
	{ "smtp_proto", fuzz_smtp_proto_init, fuzz_smtp_proto_one },
	{ "data", fuzz_data_init, fuzz_data_one },
	{ "graph_map", fuzz_graph_map_init, fuzz_graph_map_one },
	{ "config", fuzz_config_init, fuzz_config_one },
	{ "proxy", fuzz_proxy_init, fuzz_proxy_one },
	{ "token", fuzz_token_init, fuzz_token_one },
	{ "spool_record", fuzz_spool_record_init, fuzz_spool_record_one },
};

/* Runs each file of dir through the target; returns how many. */
static int
replay(const struct target *t, const char *dir)
{
	DIR		*d;
	struct dirent	*de;
	struct stat	 st;
	char		 path[4096];
	uint8_t		*buf;
	ssize_t		 n;
	int		 fd, count = 0;

	if ((d = opendir(dir)) == NULL) {
		assert_int_equal(errno, ENOENT);
		return 0;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		assert_true(fd != -1);
		assert_int_equal(fstat(fd, &st), 0);
		buf = malloc(st.st_size > 0 ? (size_t)st.st_size : 1);
		assert_non_null(buf);
		n = read(fd, buf, (size_t)st.st_size);
		assert_int_equal(n, st.st_size);
		close(fd);
		t->one(buf, (size_t)n);
		free(buf);
		count++;
	}
	closedir(d);
	return count;
}

static void
test_target(void **state)
{
	const struct target	*t = *state;
	char			 dir[4096];
	int			 n;

	snprintf(dir, sizeof(dir), "%s/tests/fuzz/corpus/%s", RELAYD_SRCDIR,
	    t->name);
	n = replay(t, dir);
	/* Every target has seeds. */
	assert_true(n > 0);
	snprintf(dir, sizeof(dir), "%s/tests/fuzz/regress/%s", RELAYD_SRCDIR,
	    t->name);
	n += replay(t, dir);
	printf("%s: %d inputs\n", t->name, n);
}

int
main(void)
{
	struct CMUnitTest	 tests[sizeof(targets) / sizeof(targets[0])];
	size_t			 i;

	for (i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		targets[i].init();
		memset(&tests[i], 0, sizeof(tests[i]));
		tests[i].name = targets[i].name;
		tests[i].test_func = test_target;
		tests[i].initial_state = (void *)&targets[i];
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}

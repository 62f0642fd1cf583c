/*
 * proctitle.c - the process title: "relayd: token" in ps and /proc.
 *
 * /proc/PID/cmdline is the memory between the first argument and the end
 * of the last environment string, as the kernel laid it out at exec. The
 * environment strings follow the arguments there, so proctitle_init copies
 * them to the heap (environ then points at the copies) and the whole area
 * is free for a title. /proc/PID/comm (top, pgrep) is set with
 * PR_SET_NAME, which keeps 15 bytes.
 */
#include <sys/prctl.h>

#include <stdlib.h>
#include <string.h>

#include "proctitle.h"
#include "util.h"

extern char	**environ;

static char	*area;		/* argv[0], the start of the area */
static size_t	 arealen;
/*
 * The copies, kept here too: unsetenv() (sd_listen_fds takes LISTEN_FDS
 * and its kin out) drops them from environ, and setenv() may put environ
 * on an array of its own; LeakSanitizer and valgrind would call them
 * leaked. They live as long as the process.
 */
static char	**volatile moved;	/* volatile: written, never read */
static char	**volatile environ0;	/* the copied array itself */

void
proctitle_init(int argc, char **argv)
{
	char	*end, **env;
	size_t	 n, i;
	int	 k;

	if (argc < 1 || argv[0] == NULL)
		return;
	end = argv[0] + strlen(argv[0]);
	/* The area is contiguous as long as each string follows the last. */
	for (k = 1; k < argc && argv[k] == end + 1; k++)
		end = argv[k] + strlen(argv[k]);
	for (n = 0; environ[n] != NULL; n++)
		;
	env = xcalloc(n + 1, sizeof(*env));
	for (i = 0; i < n; i++) {
		if (environ[i] == end + 1)
			end = environ[i] + strlen(environ[i]);
		env[i] = xstrdup(environ[i]);
	}
	environ = environ0 = env;
	moved = xcalloc(n + 1, sizeof(*moved));
	memcpy((char **)moved, env, n * sizeof(*moved));
	area = argv[0];
	arealen = (size_t)(end - area);
}

void
proctitle_set(const char *title)
{
	size_t	 n;

	prctl(PR_SET_NAME, (unsigned long)title, 0, 0, 0);
	if (area == NULL || arealen == 0)
		return;
	n = strlen(title);
	if (n > arealen)
		n = arealen;
	memcpy(area, title, n);
	/* The kernel stops at the first NUL when the last byte changed. */
	memset(area + n, '\0', arealen - n + 1);
}

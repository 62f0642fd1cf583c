/*
 * relayctl.c - relayd's control tool.
 *
 *   relayctl passwd USER [--cram-md5]
 *
 * reads a password (one line from standard input, or asked twice on a
 * terminal) and prints a line for [auth] users_file: a yescrypt hash for
 * PLAIN and LOGIN and SCRAM-SHA-256 keys, never the password itself, except
 * with --cram-md5, which needs it (and says so).
 *
 * Exit codes: 0 done, 1 failure, 64 usage (sysexits EX_USAGE).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <termios.h>
#include <unistd.h>

#include "auth.h"
#include "autoconf.h"

static void
usage(void)
{
	fprintf(stderr, "usage: relayctl passwd USER [--cram-md5]\n"
	    "       relayctl -V\n");
	exit(EX_USAGE);
}

/* One line from stdin; on a terminal without echo. NULL at EOF. */
static char *
read_password(const char *prompt)
{
	struct termios	 old, quiet;
	char		*line = NULL;
	size_t		 cap = 0;
	ssize_t		 n;
	int		 tty = isatty(STDIN_FILENO);

	if (tty) {
		fprintf(stderr, "%s", prompt);
		tcgetattr(STDIN_FILENO, &old);
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
	}
	n = getline(&line, &cap, stdin);
	if (tty) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
		fputc('\n', stderr);
	}
	if (n <= 0) {
		free(line);
		return NULL;
	}
	line[strcspn(line, "\r\n")] = '\0';
	return line;
}

static int
cmd_passwd(int argc, char **argv)
{
	char		*pw, *again, *entry, err[256];
	const char	*user = NULL;
	int		 cram = 0, i;

	/* USER and --cram-md5 in either order. */
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--cram-md5") == 0)
			cram = 1;
		else if (argv[i][0] == '-' || user != NULL)
			usage();
		else
			user = argv[i];
	}
	if (user == NULL)
		usage();
	if ((pw = read_password("Password: ")) == NULL || *pw == '\0') {
		fprintf(stderr, "relayctl: no password given\n");
		return 1;
	}
	if (isatty(STDIN_FILENO)) {
		again = read_password("Again: ");
		if (again == NULL || strcmp(pw, again) != 0) {
			fprintf(stderr, "relayctl: the passwords differ\n");
			return 1;
		}
		free(again);
	}
	if ((entry = auth_make_entry(user, pw, cram, err, sizeof(err))) ==
	    NULL) {
		fprintf(stderr, "relayctl: %s\n", err);
		return 1;
	}
	printf("%s\n", entry);
	if (cram)
		fprintf(stderr, "relayctl: note: cram-md5= holds the password "
		    "itself (CRAM-MD5 needs it); keep the users file mode "
		    "600\n");
	explicit_bzero(pw, strlen(pw));
	free(pw);
	free(entry);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	if (strcmp(argv[1], "-V") == 0) {
		printf("relayctl %s\n", PACKAGE_VERSION);
		return 0;
	}
	if (strcmp(argv[1], "passwd") == 0)
		return cmd_passwd(argc - 1, argv + 1);
	usage();
	return EX_USAGE;
}

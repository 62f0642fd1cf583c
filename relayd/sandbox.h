/* sandbox.h - the confinement a relayd process enters: seccomp, Landlock. */
#ifndef RELAYD_SANDBOX_H
#define RELAYD_SANDBOX_H

#include <stddef.h>

struct config;

enum sandbox_role {
	SANDBOX_SMTP,		/* SMTP, TLS, AUTH, PROXY, spool intake */
	SANDBOX_DELIVER		/* MIME -> Graph over libcurl, status, history */
};

#define SANDBOX_MAX_PATHS	32

/*
 * What Landlock lets the process open. Every path may be NULL. The
 * credential paths are never granted, and a directory that holds one is
 * granted file by file instead (a file replaced by rename then cannot be
 * re-read: keep credentials in a directory of their own).
 */
struct sandbox_paths {
	const char	*spool_dir;		/* read, write, create, rename */
	const char	*status_socket;		/* bind and unlink in its dir */
	const char	*read[SANDBOX_MAX_PATHS];	/* config, certs, users */
	size_t		 nread;
	const char	*secret[SANDBOX_MAX_PATHS];	/* never readable */
	size_t		 nsecret;
};

/*
 * The paths a role needs from cfg (read from conf_path): both read the
 * config and the public certificates; smtp its TLS keys and users_file
 * (deliver never), deliver binds the status socket. The Graph credential
 * is neither's.
 */
void	sandbox_paths_from_config(struct sandbox_paths *,
	    const struct config *, const char *, enum sandbox_role);

/*
 * no_new_privs, then Landlock (where the kernel has it), then the
 * seccomp filter, for every thread of the process (Landlock: this thread
 * and the threads it starts later, so call it before the first thread).
 * Logs what is in force. Returns -1 with err set if it cannot.
 */
int	sandbox_enter(enum sandbox_role, const struct sandbox_paths *,
	    char *, size_t);

#endif

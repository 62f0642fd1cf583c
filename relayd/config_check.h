/* config_check.h - relayd.conf loaded: read, then checked. */
#ifndef RELAYD_CONFIG_CHECK_H
#define RELAYD_CONFIG_CHECK_H

#include <stdio.h>
#include <time.h>

struct config;

/*
 * Reads and checks a config file. Every problem is written to errf as
 * "FILE:LINE: message"; returns NULL if there was any. The caller frees the
 * result with config_free().
 */
struct config	*config_load(const char *, FILE *);
/*
 * Same, from the file open at fd (the relay process: its parent opens
 * relayd.conf for it, which the relay's Landlock rules may not let it open
 * once the file was replaced by a rename); path names it in messages.
 */
struct config	*config_load_fd(const char *, int, FILE *);
/*
 * Same, for programs any user may run (relayd-sendmail): every check but
 * those that open files (credentials, certificates, users_file) or need
 * relayd's environment (the systemd credentials).
 */
struct config	*config_load_client(const char *, FILE *);
/*
 * Which files config_load reads (by default all); the others it only
 * checks are there and private. Set once per process: relayd's parent,
 * deliver and token read neither, smtp its own, the throwaway check all.
 */
#define CONFIG_READ_CREDENTIALS	0x1	/* client secret, private key */
#define CONFIG_READ_SMTP	0x2	/* TLS keys, users_file */
#define CONFIG_READ_ALL		(CONFIG_READ_CREDENTIALS | CONFIG_READ_SMTP)
void		 config_reads(unsigned);
/* Same, from a string (unit tests); name is used in messages. */
struct config	*config_load_string(const char *, const char *, FILE *);

/*
 * Certificates that expire within 30 days, or have expired, one line each
 * (relayd logs them once a day).
 */
void		 config_warn_expiry(const struct config *, FILE *);

/* A credential whose expiry relayd knows: client_secret, certificate, tls_cert. */
struct credential {
	const char	*name;
	time_t		 expires;
};
#define CONFIG_CREDENTIALS	3
/* Fills out (CONFIG_CREDENTIALS of them at most); returns how many. */
size_t		 config_credentials(const struct config *, struct credential *);

#endif

/* config.h - relayd.conf: one table of keys drives parsing, checks and docs. */
#ifndef RELAYD_CONFIG_H
#define RELAYD_CONFIG_H

#include <sys/socket.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "addr.h"
#include "policy.h"

enum bare_lf_policy { BARE_LF_REJECT, BARE_LF_NORMALIZE };
enum sync_method { SYNC_FDATASYNC, SYNC_SYNCFS };
enum bounce { BOUNCE_NO, BOUNCE_SENDER };
enum reply_after { REPLY_AFTER_SPOOL, REPLY_AFTER_GRAPH };

enum tls_version { TLS_V1_0, TLS_V1_1, TLS_V1_2, TLS_V1_3 };

struct listen_cfg {
	struct sockaddr_storage	 ss;
	socklen_t		 sslen;
	char			 text[ADDR_STRLEN];
	int			 line;		/* in the config file */
	int			 tls;		/* implicit TLS (465) */
	char			*cert;		/* NULL: [smtp] tls_cert */
	char			*key;
	int			 tls_min;	/* -1: [smtp] tls_min */
	int			 auth_plaintext; /* AUTH without TLS */
	int			 require_auth;	/* 530 to MAIL without AUTH */
	int			 reply_after;	/* -1: [smtp] reply_after */
	int			 proxy;		/* PROXY header first */
	struct netmask		*nets;		/* who may connect; none: all */
	size_t			 nnets;
};

struct config {
	char			*path;

	/* [smtp] */
	struct listen_cfg	*listen;
	size_t			 nlisten;
	char			*hostname;
	uint64_t		 max_message_size;
	uint64_t		 max_recipients;
	uint64_t		 max_line_length;
	uint64_t		 command_timeout_ms;
	uint64_t		 data_timeout_ms;
	uint64_t		 max_connections;
	uint64_t		 max_connections_per_client;
	uint64_t		 max_errors;
	uint64_t		 greeting_delay_ms;
	int			 bare_lf;
	struct netmask		*allow;
	size_t			 nallow;
	int			 require_auth;
	int			 reply_after;	/* enum reply_after */
	uint64_t		 reply_timeout_ms;
	char			*recipient_domains;	/* as written */
	char			**rcpt_domains;
	size_t			 nrcpt_domains;
	char			*tls_cert;
	char			*tls_key;
	int			 tls_min;	/* enum tls_version */

	/* [queue] */
	char			*spool_dir;
	int			 sync_method;
	uint64_t		 workers;
	uint64_t		 retry_min_ms;
	uint64_t		 retry_max_ms;
	uint64_t		 lifetime_ms;
	uint64_t		 history_ms;	/* 0: no history */
	uint64_t		 messages_per_minute;
	int			 bounce;	/* enum bounce */
	char			*notify;	/* digest to, or NULL */
	uint64_t		 notify_interval_ms;

	/* [graph] */
	char			*tenant;
	char			*client_id;
	char			*client_secret_file;
	char			*client_secret_expires_text;
	time_t			 client_secret_expires;	/* 0: not given */
	char			*certificate_file;	/* or these two */
	char			*private_key_file;
	int			 assertion_alg;	/* enum jwt_alg */
	int			 cloud;		/* see config_cloud_name() */
	char			*login_url;	/* the cloud's unless set */
	char			*graph_url;
	char			*proxy;		/* may hold a password */
	char			*ca_file;
	char			*mailbox;	/* "envelope", "from" or ADDRESS */
	int			 save_to_sent_items;
	int			 graph_mode;	/* enum graph_mode */
	uint64_t		 max_mime_depth;
	uint64_t		 connect_timeout_ms;
	uint64_t		 timeout_ms;
	int			 graph_enabled;	/* tenant etc. given */

	/* [senders] */
	struct sender_rule	*senders;
	size_t			 nsenders;

	/* [auth] */
	char			*users_file;
	uint64_t		 auth_max_failures;
	uint64_t		 auth_lockout_ms;

	uint64_t		 drain_timeout_ms;	/* [smtp] */

	/* [status] */
	char			*status_socket;
	char			*status_users;
	char			*status_groups;
	char			*status_metrics_listen;

	/* [sendmail] (relayd-sendmail's; relayd only checks it) */
	char			*sendmail_sender;

	/* [log] */
	int			 log_level;
	int			 log_recipients;	/* in the queued line */
	int			 log_subjects;		/* in history */
};

/*
 * Reads and checks a config file. Every problem is written to errf as
 * "FILE:LINE: message"; returns NULL if there was any. The caller frees the
 * result with config_free().
 */
struct config	*config_load(const char *, FILE *);
/*
 * Same, for programs any user may run (relayd-sendmail): every check but
 * those that open files (credentials, certificates, users_file) or need
 * relayd's environment (the systemd credentials).
 */
struct config	*config_load_client(const char *, FILE *);
/* Same, from a string (unit tests); name is used in messages. */
struct config	*config_load_string(const char *, const char *, FILE *);
void		 config_free(struct config *);
/* [graph] cloud as written in relayd.conf: "global", "usgov", ... */
const char	*config_cloud_name(const struct config *);
/* Calls back with the section and name of each key whose value differs. */
typedef void config_diff_cb(void *, const char *, const char *);
void		 config_diff(const struct config *, const struct config *,
		    config_diff_cb *, void *);
/* Writes every key with its default and help text, as conf/relayd.conf. */
void		 config_dump_defaults(FILE *);
/* Writes relayd.conf(5) in man(7) roff, from the same table. */
void		 config_write_man(FILE *);

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

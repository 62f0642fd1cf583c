/* config.h - relayd.conf: the key table and the reader. */
#ifndef RELAYD_CONFIG_H
#define RELAYD_CONFIG_H

#include <sys/socket.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "addr.h"
#include "policy.h"
#include "util.h"

enum bare_lf_policy { BARE_LF_REJECT, BARE_LF_NORMALIZE };
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
	uint64_t		 max_connections;	/* 0: auto (stress.c) */
	uint64_t		 loops;		/* 0: auto (smtp_loops.c) */
	uint64_t		 stress_timeout_ms;
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

	/* [cluster] */
	char			*cluster_redis;		/* as written, or NULL */
	char			*cluster_password_file;
	char			*cluster_node;		/* default: host name */
	char			*cluster_host;		/* from cluster_redis */
	unsigned		 cluster_port;
	unsigned		 cluster_db;
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

	/* [security] */
	int			 sandbox;	/* sandbox.c: seccomp, Landlock */
};

/*
 * The rest of relayd reads a file with config_load() (config_check.h), which
 * reads it here and then checks it. The reader below is for config_check.c,
 * and its key table for config_doc.c (`relayd -D` and `-M`).
 */
void		 config_free(struct config *);
/* [graph] cloud as written in relayd.conf: "global", "usgov", ... */
const char	*config_cloud_name(const struct config *);
/* Calls back with the section and name of each key whose value differs. */
typedef void config_diff_cb(void *, const char *, const char *);
void		 config_diff(const struct config *, const struct config *,
		    config_diff_cb *, void *);

enum cfg_type {
	CFG_STR,	/* free text */
	CFG_NUM,	/* integer within [min, max] */
	CFG_SIZE,	/* bytes, with k/M/G suffixes */
	CFG_DURATION,	/* milliseconds; "30s", "5m", "250ms" */
	CFG_ENUM,	/* one of enums[], stored as its index */
	CFG_LISTEN,	/* ADDR:PORT, repeatable */
	CFG_NETS,	/* CIDR list, comma or space separated */
	CFG_BOOL,	/* yes/no, true/false, on/off; stored as int */
};

/* One key of relayd.conf: one row of the table that drives everything. */
struct cfg_key {
	const char		*section;
	const char		*name;
	enum cfg_type		 type;
	const char		*def;	/* NULL: unset unless given */
	uint64_t		 min, max;
	size_t			 off;
	const char *const	*enums;
	const char		*help;
};

extern const struct cfg_key	config_keys[];
extern const size_t		config_nkeys;

/* One file being read, then checked. */
struct config_reader {
	const char	*file;		/* its name in messages */
	FILE		*errf;
	int		 errors;
	int		 client;	/* config_load_client(): no files */
	struct config	*cfg;
	int		*seen;		/* per key: line of first setting */
};

/*
 * The whole text of the file at path, NUL-terminated (the caller frees
 * it); NULL, with why written to errf, if it cannot be read, is over
 * 1 MiB or holds a NUL.
 */
char		*config_read_file(const char *, FILE *);
/* Same, from a stream already open (which it closes); path for messages. */
char		*config_read_stream(FILE *, const char *, FILE *);
/*
 * Reads text (named name in messages) into r->cfg over the defaults.
 * Every syntax, key and value error is written to errf as
 * "FILE:LINE: message" and counted in r->errors; the checks that span keys
 * are config_check.c's.
 */
void		 config_read(struct config_reader *, const char *, const char *,
		    FILE *, int);
/* Ends r: its config if there was no error (the caller frees it), or NULL. */
struct config	*config_read_done(struct config_reader *);
/* An error about line (0: the file as a whole), counted in r->errors. */
void		 config_error(struct config_reader *, int, const char *, ...)
		    PRINTFLIKE(3, 4);
/* "FILE:LINE: warning: ...", not counted. */
void		 config_warning(struct config_reader *, int, const char *, ...)
		    PRINTFLIKE(3, 4);
/* The line section's key name was set on, or 0. */
int		 config_key_line(const struct config_reader *, const char *,
		    const char *);

#endif

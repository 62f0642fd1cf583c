/* graph.h - a message and its envelope as a Graph sendMail request. */
#ifndef RELAYD_GRAPH_H
#define RELAYD_GRAPH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* What Graph answers to the requests made from these. */
#include "graph_result.h"

struct json_object;

/* The SMTP envelope: authoritative for who receives the message. */
struct graph_env {
	const char		*mail_from;	/* "" for the null sender */
	const char *const	*rcpts;		/* bare addresses */
	size_t			 nrcpts;
};

/* [graph] mode: the JSON form, the MIME form, or MIME where JSON loses. */
enum graph_mode { GRAPH_MODE_JSON, GRAPH_MODE_MIME, GRAPH_MODE_AUTO };

/* Graph's limit for the MIME form: the base64 body, 4 MB. */
#define GRAPH_MIME_MAX		(4 * 1024 * 1024)

struct graph_opts {
	int		 save_to_sent;
	unsigned	 max_depth;	/* multipart nesting */
	int		 mode;		/* enum graph_mode */
};

/* A request body ready to POST. */
struct graph_req {
	struct json_object	*root;
	const char		*body;	/* JSON text (owned by root) or base64 */
	size_t			 len;
	int			 mime;	/* body is the MIME form (text/plain) */
	char			*buf;	/* the MIME form's body */
	char			*from;	/* From: address, NULL if none */
	char			*message_id;	/* "<...>", NULL if none */
	size_t			 nrcpts;
	size_t			 nattach;
};

/*
 * Maps a message (CRLF, as received) and its envelope onto the body of
 * POST /users/{id}/sendMail: Graph JSON, or (opts->mode) the MIME form,
 * the message itself in base64 with its recipient headers set from the
 * envelope. auto takes the MIME form for what JSON cannot carry (S/MIME
 * signed or encrypted, calendar invitations) when it fits in
 * GRAPH_MIME_MAX, and so does mime; otherwise JSON. Pure: no I/O,
 * thread-safe once mime_init() ran. Returns 0, or -1 with the reason in err for a message that can never be
 * sent (the caller treats it as a permanent failure). The caller frees req
 * with graph_req_free().
 */
int	graph_map(const char *, size_t, const struct graph_env *,
	    const struct graph_opts *, struct graph_req *, char *, size_t);
void	graph_req_free(struct graph_req *);

/* Graph's limit for one request body; beyond it, the draft path. */
#define GRAPH_REQ_MAX		(4 * 1024 * 1024)
/* An attachment this size or more goes through an upload session. */
#define GRAPH_UPLOAD_MIN	(3 * 1024 * 1024)

/* An attachment that goes to the draft on its own, after it. */
struct graph_part {
	char		*name;		/* UTF-8 */
	char		*type;
	char		*content_id;	/* when inline */
	int		 is_inline;
	uint64_t	 size;		/* decoded bytes */
	void		*obj;		/* the GMime part, owned by the draft */
};

/* A message too large for one request: the draft and its attachments. */
struct graph_draft {
	struct graph_req	 req;	/* body: the message for POST .../messages */
	struct graph_part	*parts;
	size_t			 nparts;
	void			*msg;	/* GMimeMessage */
	void			*stream;
};

/*
 * Maps the message at off (len bytes) in the file fd for the draft path:
 * the message JSON without attachments, each of which is listed in parts
 * with its decoded size. Parts are read from the file again when sent,
 * never held whole; fd must stay open until graph_draft_free(). Returns 0,
 * or -1 with the reason in err (permanent, as for graph_map).
 */
int	graph_map_draft(int, uint64_t, uint64_t, const struct graph_env *,
	    const struct graph_opts *, struct graph_draft *, char *, size_t);
void	graph_draft_free(struct graph_draft *);

/* Reads a part's decoded bytes from its start: full buffers until the end. */
struct graph_reader;
struct graph_reader *graph_part_open(const struct graph_part *);
ssize_t	graph_part_read(struct graph_reader *, char *, size_t);
void	graph_part_close(struct graph_reader *);

#endif

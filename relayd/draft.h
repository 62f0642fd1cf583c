/* draft.h - the draft path: a message too large for one sendMail request. */
#ifndef RELAYD_DRAFT_H
#define RELAYD_DRAFT_H

#include <stddef.h>

#include <curl/curl.h>

#include "graph.h"
#include "http.h"

/*
 * An authorized Graph request (bearer token, one fresh token after a 401).
 * Fills r as http_request does; returns 0 with an answer, -1 without.
 */
typedef int draft_call_fn(void *, const char *, const char *, const char *,
    const char *, size_t, size_t, struct http_resp *);

struct draft_io {
	CURL		*c;		/* for the uploadUrl, which takes no token */
	const char	*user_url;	/* {graph_url}/v1.0/users/{mailbox} */
	draft_call_fn	*call;
	void		*arg;
};

/* How it ended, when it did not end sent. */
struct draft_out {
	struct http_resp resp;		/* the answer that ended it (owned) */
	char		 step[160];	/* what was being done, for the log */
	int		 no_permission;	/* 403 on creating the draft */
	int		 maybe_sent;	/* send got no answer, the draft is gone */
	char		*stray;		/* a draft id that could not be deleted */
};

/*
 * Creates the draft, adds each part (POST under GRAPH_UPLOAD_MIN, else an
 * upload session in ordered PUTs of DRAFT_CHUNK bytes at most, resumed
 * after a failed one), and sends it. A draft that answers 404 for a moment
 * is asked again. On failure the upload session and the draft are deleted
 * before it returns. Returns 0 if sent, -1 with out filled; the caller
 * frees out with draft_out_clear().
 */
int	draft_send(const struct draft_io *, struct graph_draft *,
	    struct draft_out *);
/* Deletes a draft left by an earlier attempt; 0 if it is gone. */
int	draft_delete(const struct draft_io *, const char *);
void	draft_out_clear(struct draft_out *);

/* 12 x 320 KiB: under Graph's 4 MB per request, in OneDrive's units. */
#define DRAFT_CHUNK		(12 * 320 * 1024)

#endif

/*
 * fuzz_graph_map.c - a message through graph_map() (MIME to Graph JSON, or
 * the MIME form) and through the draft path, graph_map_draft(), whose
 * attachments are read back in small pieces. Byte 0 picks the mode (json,
 * mime, auto), whether to save to Sent Items and the MIME depth limit; the
 * rest is the message. The draft path reads a file: an anonymous memfd,
 * made once, holds the message after a line of junk, as a spool file does.
 */
#include <sys/mman.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "fuzz.h"
#include "graph.h"
#include "mime.h"

static int		 memfd = -1;
static const char	 junk[] = "spool record header\n";
static const char *const rcpts[] = { "alice@example.com", "bob@example.org" };

void
fuzz_graph_map_init(void)
{
	mime_init();
	if ((memfd = memfd_create("fuzz_graph_map", MFD_CLOEXEC)) == -1)
		abort();
}

static void
check_req(const struct graph_req *req)
{
	struct json_object	*root;

	FUZZ_CHECK(req->body != NULL);
	FUZZ_CHECK(strlen(req->body) == req->len);
	if (!req->mime) {
		/* What we POST must be JSON. */
		root = json_tokener_parse(req->body);
		FUZZ_CHECK(root != NULL);
		json_object_put(root);
	}
}

static void
draft(const uint8_t *data, size_t size, const struct graph_env *env,
    const struct graph_opts *opts)
{
	struct graph_draft	 d;
	struct graph_reader	*r;
	char			 err[256], buf[1000];
	uint64_t		 total;
	ssize_t			 n;
	size_t			 i;

	if (ftruncate(memfd, 0) == -1 ||
	    pwrite(memfd, junk, sizeof(junk) - 1, 0) !=
	    (ssize_t)(sizeof(junk) - 1) ||
	    pwrite(memfd, data, size, sizeof(junk) - 1) != (ssize_t)size ||
	    pwrite(memfd, "trailer", 7, (off_t)(sizeof(junk) - 1 + size)) != 7)
		abort();
	err[0] = '\0';
	if (graph_map_draft(memfd, sizeof(junk) - 1, size, env, opts, &d, err,
	    sizeof(err)) == -1) {
		FUZZ_CHECK(err[0] != '\0');
		return;
	}
	check_req(&d.req);
	for (i = 0; i < d.nparts; i++) {
		FUZZ_CHECK(d.parts[i].name != NULL && d.parts[i].type != NULL);
		if ((r = graph_part_open(&d.parts[i])) == NULL)
			continue;
		/* Odd sizes, so pieces straddle every boundary. */
		total = 0;
		while ((n = graph_part_read(r, buf, 1 + (i + total) % 997)) > 0)
			total += (uint64_t)n;
		FUZZ_CHECK(n == 0);
		FUZZ_CHECK(total == d.parts[i].size);
		graph_part_close(r);
	}
	graph_draft_free(&d);
}

int
fuzz_graph_map_one(const uint8_t *data, size_t size)
{
	struct graph_env	 env = { "sender@example.com", rcpts, 2 };
	struct graph_opts	 opts;
	struct graph_req	 req;
	char			 err[256];

	if (size < 1)
		return 0;
	opts.mode = data[0] % 3;
	opts.save_to_sent = (data[0] >> 2) & 1;
	opts.max_depth = 1 + ((data[0] >> 3) & 31);
	data++;
	size--;

	memset(&req, 0, sizeof(req));
	err[0] = '\0';
	if (graph_map((const char *)data, size, &env, &opts, &req, err,
	    sizeof(err)) == 0)
		check_req(&req);
	else
		FUZZ_CHECK(err[0] != '\0');
	graph_req_free(&req);

	/* The null sender and one recipient, through the draft path. */
	env.mail_from = "";
	env.nrcpts = 1;
	draft(data, size, &env, &opts);
	return 0;
}

FUZZ_ENTRY(graph_map)

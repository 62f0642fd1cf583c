/*
 * graph_bench - MIME -> Graph JSON conversion speed on one core.
 *
 * Usage: graph_bench FILE.eml [RUNS]. Maps the message RUNS times (default
 * 15) with one envelope recipient and prints the median, best and worst
 * throughput in MB/s of message bytes, and the size of the request body.
 * bench/deliver runs it; it is built with relayd (make) so the numbers are
 * those of the real mapping code.
 */
#include <sys/stat.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "graph.h"
#include "mime.h"

static double
now_s(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
cmp_double(const void *a, const void *b)
{
	double	 x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
	const char		*rcpts[] = { "alice@example.com" };
	struct graph_env	 env = { "scan@corp.example", rcpts, 1 };
	struct graph_opts	 opts = { 1, 32, GRAPH_MODE_JSON };
	struct graph_req	 req;
	struct stat		 st;
	char			 err[256], *data;
	double			*t, t0;
	size_t			 len, body = 0;
	int			 runs = 15, i;
	FILE			*fp;

	if (argc < 2) {
		fprintf(stderr, "usage: graph_bench FILE.eml [RUNS]\n");
		return 2;
	}
	if (argc > 2)
		runs = atoi(argv[2]);
	if (runs < 1)
		runs = 1;
	if ((fp = fopen(argv[1], "rb")) == NULL || fstat(fileno(fp), &st)) {
		perror(argv[1]);
		return 1;
	}
	data = malloc((size_t)st.st_size);
	len = fread(data, 1, (size_t)st.st_size, fp);
	fclose(fp);
	mime_init();
	t = calloc((size_t)runs, sizeof(*t));
	for (i = 0; i < runs; i++) {
		t0 = now_s();
		if (graph_map(data, len, &env, &opts, &req, err,
		    sizeof(err)) == -1) {
			fprintf(stderr, "%s: %s\n", argv[1], err);
			return 1;
		}
		t[i] = now_s() - t0;
		body = req.len;
		graph_req_free(&req);
	}
	qsort(t, (size_t)runs, sizeof(*t), cmp_double);
	printf("message_bytes=%zu request_bytes=%zu runs=%d "
	    "median_MBps=%.0f best_MBps=%.0f worst_MBps=%.0f median_ms=%.1f\n",
	    len, body, runs, (double)len / 1e6 / t[runs / 2],
	    (double)len / 1e6 / t[0], (double)len / 1e6 / t[runs - 1],
	    t[runs / 2] * 1000);
	free(t);
	free(data);
	return 0;
}

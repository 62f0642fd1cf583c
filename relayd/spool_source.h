/* spool_source.h - another relayd's spool, for relayctl import. */
#ifndef RELAYD_SPOOL_SOURCE_H
#define RELAYD_SPOOL_SOURCE_H

#include <stddef.h>

#include "spool_record.h"

struct spool_source {
	int	 dirfd, queuefd, deadfd, tmpfd;	/* deadfd, tmpfd: -1 if none */
};

/*
 * Opens DIR as a relayd spool and takes its locks (held until close):
 * -1 with an admin's words in err if it is not a spool or a running
 * relayd holds it (with its pid when /proc/locks tells).
 */
int	 spool_source_open(const char *, struct spool_source *, char *,
	    size_t);
void	 spool_source_close(struct spool_source *);
/* The queue ids naming files in a directory (queue/, dead/), sorted. */
size_t	 spool_source_names(int, char ***);

#endif

/*
 * spool_source.c - another relayd's spool, as `relayctl import DIR` finds
 * it (issue 20, "A dead node's queue"): a failed node's disk mounted on a
 * survivor.
 *
 * This file is the source side only: it opens DIR, checks that it is a
 * relayd spool (queue/ in it), takes the locks a running relayd holds on
 * it (flock of DIR, delivery's, and of DIR/tmp, intake's; see spool_lock
 * in spool.c) so that a spool still in use is refused and no relayd can
 * start on it while the import runs, and lists its files: the segments
 * of queue/ and the dead letters (dead/QID beside dead/QID.reason).
 *
 * Why the source is read by relayctl and not by relayd's delivery
 * process: delivery runs under Landlock (sandbox.c), which allows it
 * spool_dir and little else, and Landlock checks an openat() by where
 * the file lies, whatever directory descriptor it starts from, so a
 * descriptor of DIR passed over the status socket would not let it open
 * DIR's files (tried: openat on a directory descriptor opened before
 * landlock_restrict_self is refused EACCES; read on a file descriptor
 * opened before is not). relayctl runs as root outside the sandbox; it opens the
 * files and holds the locks. The transfer itself (each record committed
 * into this relayd's spool by its delivery process, fsynced, before it is
 * marked delivered in DIR) is described at cmd_import in relayctl.c and
 * spool.c's "import" part.
 */
#include <sys/file.h>
#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "spool_source.h"
#include "util.h"

/* The pid /proc/locks gives for a lock on the file fd, 0 if none found. */
static long
lock_holder(int fd)
{
	struct stat	 sb;
	FILE		*fp;
	char		 line[256];
	unsigned	 maj, min;
	unsigned long	 ino;
	long		 pid, found = 0;

	if (fstat(fd, &sb) == -1 || (fp = fopen("/proc/locks", "r")) == NULL)
		return 0;
	while (found == 0 && fgets(line, sizeof(line), fp) != NULL) {
		if (sscanf(line, "%*s FLOCK %*s %*s %ld %x:%x:%lu", &pid, &maj,
		    &min, &ino) == 4 && ino == (unsigned long)sb.st_ino)
			found = pid;
	}
	fclose(fp);
	return found;
}

static int
take_lock(int fd, const char *dir, char *err, size_t errlen)
{
	long	 pid;

	if (flock(fd, LOCK_EX | LOCK_NB) == 0)
		return 0;
	if (errno != EWOULDBLOCK) {
		snprintf(err, errlen, "%s: cannot lock it: %s", dir,
		    strerror(errno));
		return -1;
	}
	pid = lock_holder(fd);
	if (pid > 0)
		snprintf(err, errlen, "%s is locked by a running relayd (pid "
		    "%ld): only the spool of a relayd that is stopped or dead "
		    "can be imported; stop it first", dir, pid);
	else
		snprintf(err, errlen, "%s is locked by a running relayd: only "
		    "the spool of a relayd that is stopped or dead can be "
		    "imported; stop it first", dir);
	return -1;
}

int
spool_source_open(const char *dir, struct spool_source *src, char *err,
    size_t errlen)
{
	memset(src, 0, sizeof(*src));
	src->dirfd = src->queuefd = src->deadfd = src->tmpfd = -1;
	if ((src->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) ==
	    -1) {
		snprintf(err, errlen, "%s: %s", dir, strerror(errno));
		return -1;
	}
	if ((src->queuefd = openat(src->dirfd, "queue", O_RDONLY |
	    O_DIRECTORY | O_CLOEXEC)) == -1) {
		snprintf(err, errlen, "%s is not a relayd spool (it has no "
		    "queue/ directory): name the spool_dir of the dead node",
		    dir);
		spool_source_close(src);
		return -1;
	}
	src->tmpfd = openat(src->dirfd, "tmp", O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC);
	src->deadfd = openat(src->dirfd, "dead", O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC);
	if (take_lock(src->dirfd, dir, err, errlen) == -1 ||
	    (src->tmpfd != -1 && take_lock(src->tmpfd, dir, err, errlen) ==
	    -1)) {
		spool_source_close(src);
		return -1;
	}
	return 0;
}

void
spool_source_close(struct spool_source *src)
{
	int	*fds[] = { &src->dirfd, &src->queuefd, &src->deadfd,
		    &src->tmpfd };
	size_t	 i;

	for (i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		if (*fds[i] != -1)
			close(*fds[i]);
		*fds[i] = -1;
	}
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

size_t
spool_source_names(int dirfd, char ***out)
{
	DIR		*d;
	struct dirent	*de;
	char		**v = NULL;
	size_t		  n = 0;
	int		  fd;

	*out = NULL;
	if ((fd = dup(dirfd)) == -1 || (d = fdopendir(fd)) == NULL) {
		if (fd != -1)
			close(fd);
		return 0;
	}
	while ((de = readdir(d)) != NULL)
		if (spool_record_qid_valid(de->d_name, strlen(de->d_name))) {
			v = xrealloc(v, (n + 1) * sizeof(*v));
			v[n++] = xstrdup(de->d_name);
		}
	closedir(d);
	if (n > 0)
		qsort(v, n, sizeof(*v), name_cmp);
	*out = v;
	return n;
}

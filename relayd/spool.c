/*
 * spool.c - the durable queue.
 *
 * Layout under spool_dir:
 *   tmp/      messages being received; anything here at start is a leftover
 *             of an interrupted write and is removed.
 *   queue/    whole messages, one file each, named by queue id.
 *   corrupt/  files found in queue/ that fail the framing check.
 *   dead/     messages Graph refused for good, each beside a .reason file.
 *
 * A spool file is an envelope of "key: value" lines after a version line,
 * a blank line, the message bytes as received (CRLF, dot-unstuffed, with our
 * Received: header), and a fixed-size trailer holding the message size:
 *
 *   RELAYD-SPOOL 1\n id: ...\n ... rcpt: ...\n \n <message> RELAYD-END <size>\n
 *
 * A file only gets its name in queue/ after it was written whole and
 * fdatasync'ed, and the directory is fsync'ed before anyone is told. Where
 * the kernel allows, files are created anonymous (O_TMPFILE) and linked into
 * queue/, so an interrupted write leaves nothing behind; otherwise they are
 * written in tmp/ and renamed. Small messages stay in memory until commit, so
 * the event loop does no file-system work for them.
 *
 * Commits are grouped: a single thread takes every commit pending, creates
 * and writes the files, starts write-back on all of them, waits for each,
 * links them and fsyncs the directory once. The event loop hears back
 * through a pipe. Nothing else crosses threads.
 */
#include <sys/stat.h>
#include <sys/types.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "log.h"
#include "spool.h"
#include "util.h"

#define SPOOL_MAGIC		"RELAYD-SPOOL "
#define SPOOL_END_MAGIC		"RELAYD-END "
#define SPOOL_BUF_SIZE		(64 * 1024)	/* held in memory, then spilled */
#define SPOOL_HEAD_MAX		(512 * 1024)	/* 500 recipients fit */
#define SPOOL_SYNC_HELPERS	3	/* threads that fdatasync with the committer */


struct spool_msg {
	struct spool		*spool;
	char			 qid[SPOOL_QID_LEN + 1];
	int			 fd;		/* -1 until created */
	int			 named;		/* fd is tmp/<qid> (LINK_RENAME) */
	int			 linked;	/* now in queue/ */
	int			 err;		/* sticky errno */
	uint64_t		 size;		/* message bytes so far */
	char			*mail_from;
	char			*buf;
	size_t			 buflen;
	spool_done_cb		*cb;
	void			*cbarg;
	struct spool_msg	*next;
};

/* How a written file gets its name in queue/ (probed at open). */
enum link_mode {
	LINK_EMPTY_PATH,	/* O_TMPFILE, linkat(fd, "", AT_EMPTY_PATH) */
	LINK_PROC,		/* O_TMPFILE, linkat("/proc/self/fd/N") */
	LINK_RENAME,		/* tmp/<qid>, then rename: no O_TMPFILE here */
};

struct spool {
	char			*dir;
	enum link_mode		 link_mode;
	int			 sync_method;
	int			 dirfd;		/* spool_dir */
	int			 queuefd;	/* queue/ */
	int			 tmpfd;		/* tmp/ */
	uint64_t		 last_us;
	unsigned		 seq;

	struct spool_entry	*entries;	/* found at open */
	size_t			 nentries;
	size_t			 count;		/* now in queue/ */
	spool_queued_cb		*queued_cb;
	void			*queued_arg;

	/* Commit thread. pending: loop -> thread; done: thread -> loop. */
	pthread_t		 thread;
	int			 running;
	int			 stopping;
	pthread_mutex_t		 lock;
	pthread_cond_t		 cond;
	struct spool_msg	*pending;
	struct spool_msg	*done;
	int			 notify[2];
	struct event		*notify_ev;
	uint64_t		 ncommits;	/* commit thread only */
	uint64_t		 nbatches;

	/*
	 * fdatasync helpers. Concurrent fdatasyncs let the block layer merge
	 * their cache flushes: measured here, a batch of 16 took 3.0 ms one
	 * after another and 1.4 ms from four threads.
	 */
	pthread_t		 helpers[SPOOL_SYNC_HELPERS];
	int			 nhelpers;
	pthread_cond_t		 sync_work;
	pthread_cond_t		 sync_done;
	struct spool_msg	**sync_items;
	size_t			 sync_n, sync_next, sync_finished;
	unsigned		 sync_gen;
};

static void	 spool_new_qid(struct spool *, char *);

static int
open_subdir(int dirfd, const char *name)
{
	if (mkdirat(dirfd, name, 0700) == -1 && errno != EEXIST)
		return -1;
	return openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/*
 * Queue ids: 13 hex digits of microseconds since the epoch and 3 of a
 * sequence, so they sort by arrival; the clock starts past the newest id
 * found in queue/ at start, and linking refuses an existing name anyway.
 */
static void
spool_new_qid(struct spool *sp, char *qid)
{
	uint64_t	 us = wall_us();

	if (us <= sp->last_us) {
		if (++sp->seq > 0xfff) {
			sp->seq = 0;
			sp->last_us++;
		}
		us = sp->last_us;
	} else {
		sp->last_us = us;
		sp->seq = 0;
	}
	snprintf(qid, SPOOL_QID_LEN + 1, "%013" PRIX64 "%03X",
	    us & (uint64_t)0xfffffffffffff, sp->seq);
}

int
spool_parse(const char *head, size_t headlen, const char *trailer,
    uint64_t filesize, struct spool_entry *e, const char **why)
{
	const char	*p = head, *end = head + headlen, *nl;
	char		 num[24];
	uint64_t	 size;
	int		 have_id = 0;

	memset(e, 0, sizeof(*e));
	if (headlen < sizeof(SPOOL_MAGIC) ||
	    memcmp(head, SPOOL_MAGIC, sizeof(SPOOL_MAGIC) - 1) != 0) {
		*why = "not a relayd spool file";
		return -1;
	}
	if (strncmp(head + sizeof(SPOOL_MAGIC) - 1, "1\n", 2) != 0) {
		*why = "unsupported spool format version";
		return -1;
	}
	p += sizeof(SPOOL_MAGIC) + 1;
	for (;;) {
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL) {
			*why = "envelope is cut short";
			goto fail;
		}
		if (nl == p) {		/* blank line: envelope ends */
			p++;
			break;
		}
		if (strncmp(p, "id: ", 4) == 0 &&
		    nl - p - 4 == SPOOL_QID_LEN) {
			memcpy(e->qid, p + 4, SPOOL_QID_LEN);
			have_id = 1;
		} else if (strncmp(p, "arrival: ", 9) == 0) {
			char *dot;
			e->arrival_us = strtoull(p + 9, &dot, 10) * 1000000;
			if (*dot == '.')
				e->arrival_us += strtoull(dot + 1, NULL, 10);
		} else if (strncmp(p, "mail-from: ", 11) == 0) {
			free(e->mail_from);
			e->mail_from = xstrndup(p + 11, (size_t)(nl - p - 11));
		} else if (strncmp(p, "rcpt: ", 6) == 0) {
			e->rcpts = xrealloc(e->rcpts,
			    (e->nrcpts + 1) * sizeof(*e->rcpts));
			e->rcpts[e->nrcpts++] = xstrndup(p + 6,
			    (size_t)(nl - p - 6));
		}
		/* Unknown keys are kept for newer readers. */
		p = nl + 1;
	}
	e->body_offset = (uint64_t)(p - head);
	if (!have_id || e->mail_from == NULL || e->nrcpts == 0) {
		*why = "envelope lacks id, mail-from or rcpt";
		goto fail;
	}
	if (filesize < e->body_offset + SPOOL_TRAILER_LEN ||
	    memcmp(trailer, SPOOL_END_MAGIC, sizeof(SPOOL_END_MAGIC) - 1) != 0 ||
	    trailer[SPOOL_TRAILER_LEN - 1] != '\n') {
		*why = "end marker missing (file was cut short)";
		goto fail;
	}
	memcpy(num, trailer + sizeof(SPOOL_END_MAGIC) - 1, 20);
	num[20] = '\0';
	if (parse_u64(num, 0, UINT64_MAX, &size) == -1 ||
	    size != filesize - e->body_offset - SPOOL_TRAILER_LEN) {
		*why = "size in end marker does not match the file";
		goto fail;
	}
	e->size = size;
	return 0;
fail:
	spool_entry_clear(e);
	return -1;
}

void
spool_entry_clear(struct spool_entry *e)
{
	size_t	 i;

	free(e->mail_from);
	for (i = 0; i < e->nrcpts; i++)
		free(e->rcpts[i]);
	free(e->rcpts);
	e->mail_from = NULL;
	e->rcpts = NULL;
	e->nrcpts = 0;
}

/* Reads and checks queue/<name>; 0 and a filled entry if whole. */
static int
spool_check_file(struct spool *sp, const char *name, struct spool_entry *e,
    const char **why)
{
	struct stat	 st;
	int		 fd, r;

	if ((fd = openat(sp->queuefd, name, O_RDONLY | O_CLOEXEC)) == -1) {
		*why = strerror(errno);
		return -1;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		*why = "not a regular file";
		close(fd);
		return -1;
	}
	r = spool_read_entry(fd, (uint64_t)st.st_size, e, why);
	if (r == 0 && strcmp(e->qid, name) != 0) {
		*why = "queue id does not match the file name";
		spool_entry_clear(e);
		r = -1;
	}
	close(fd);
	return r;
}

int
spool_read_entry(int fd, uint64_t filesize, struct spool_entry *e,
    const char **why)
{
	char		*head, trailer[SPOOL_TRAILER_LEN];
	ssize_t		 n;
	int		 r = -1;

	head = xmalloc(SPOOL_HEAD_MAX);
	n = pread(fd, head, SPOOL_HEAD_MAX, 0);
	if (n < 0)
		*why = strerror(errno);
	else if (filesize < SPOOL_TRAILER_LEN ||
	    pread(fd, trailer, sizeof(trailer), (off_t)(filesize -
	    SPOOL_TRAILER_LEN)) != SPOOL_TRAILER_LEN)
		*why = "end marker missing (file was cut short)";
	else if (spool_parse(head, (size_t)n, trailer, filesize, e, why) == 0)
		r = 0;
	free(head);
	return r;
}

static int
entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct spool_entry *)a)->qid,
	    ((const struct spool_entry *)b)->qid);
}

/* Empties tmp/ and indexes queue/. */
static int
spool_recover(struct spool *sp)
{
	struct spool_entry	 e;
	struct dirent		*de;
	const char		*why;
	DIR			*d;
	size_t			 i;
	int			 fd, cfd, removed = 0, corrupt = 0;

	if ((fd = dup(sp->tmpfd)) == -1 || (d = fdopendir(fd)) == NULL)
		return -1;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (unlinkat(sp->tmpfd, de->d_name, 0) == 0)
			removed++;
		else
			log_warn("spool: cannot remove tmp/%s", de->d_name);
	}
	closedir(d);
	if (removed > 0) {
		fsync(sp->tmpfd);
		log_info("spool: removed %d unfinished message(s) from tmp/",
		    removed);
	}

	if ((fd = dup(sp->queuefd)) == -1 || (d = fdopendir(fd)) == NULL)
		return -1;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (spool_check_file(sp, de->d_name, &e, &why) == 0) {
			sp->entries = xrealloc(sp->entries,
			    (sp->nentries + 1) * sizeof(*sp->entries));
			sp->entries[sp->nentries++] = e;
			continue;
		}
		corrupt++;
		log_warnx("spool: queue/%s is damaged (%s); moved to corrupt/",
		    de->d_name, why);
		if ((cfd = open_subdir(sp->dirfd, "corrupt")) == -1 ||
		    renameat(sp->queuefd, de->d_name, cfd, de->d_name) == -1)
			log_warn("spool: cannot move queue/%s aside",
			    de->d_name);
		if (cfd != -1)
			close(cfd);
	}
	closedir(d);
	if (corrupt > 0)
		fsync(sp->queuefd);
	for (i = 0; i < sp->nentries; i++) {
		char hex[14];
		memcpy(hex, sp->entries[i].qid, 13);
		hex[13] = '\0';
		if (strtoull(hex, NULL, 16) > sp->last_us)
			sp->last_us = strtoull(hex, NULL, 16);
	}
	if (sp->nentries > 1)
		qsort(sp->entries, sp->nentries, sizeof(*sp->entries),
		    entry_cmp);
	sp->count = sp->nentries;
	return 0;
}

/* A message is in queue/: count it and tell delivery (loop thread). */
static void
spool_add_entry(struct spool *sp, const struct spool_msg *m)
{
	sp->count++;
	if (sp->queued_cb != NULL)
		sp->queued_cb(sp->queued_arg, m->qid, m->mail_from, m->size);
}

/* ---- files ---- */

/* Creates the message's file: anonymous where possible, else tmp/<qid>. */
static int
msg_create(struct spool_msg *m)
{
	struct spool	*sp = m->spool;

	if (sp->link_mode == LINK_RENAME) {
		m->fd = openat(sp->tmpfd, m->qid,
		    O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		m->named = m->fd != -1;
	} else
		m->fd = openat(sp->queuefd, ".", O_TMPFILE | O_WRONLY |
		    O_CLOEXEC, 0600);
	if (m->fd == -1) {
		m->err = errno;
		return -1;
	}
	return 0;
}

/* Gives the written, synced file its name in queue/. */
static int
msg_link(struct spool_msg *m)
{
	struct spool	*sp = m->spool;
	char		 path[64];

	switch (sp->link_mode) {
	case LINK_EMPTY_PATH:
		return linkat(m->fd, "", sp->queuefd, m->qid, AT_EMPTY_PATH);
	case LINK_PROC:
		snprintf(path, sizeof(path), "/proc/self/fd/%d", m->fd);
		return linkat(AT_FDCWD, path, sp->queuefd, m->qid,
		    AT_SYMLINK_FOLLOW);
	case LINK_RENAME:
		if (renameat(sp->tmpfd, m->qid, sp->queuefd, m->qid) == -1)
			return -1;
		m->named = 0;
		return 0;
	}
	errno = EINVAL;
	return -1;
}

/*
 * Linking an O_TMPFILE needs CAP_DAC_READ_SEARCH for AT_EMPTY_PATH, or a
 * mounted /proc; find out once which works here.
 */
static void
spool_probe(struct spool *sp)
{
	static const char	 name[] = ".relayd-probe";
	char			 path[64];
	int			 fd;

	sp->link_mode = LINK_RENAME;
	unlinkat(sp->queuefd, name, 0);
	fd = openat(sp->queuefd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
	if (fd == -1)
		return;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (linkat(fd, "", sp->queuefd, name, AT_EMPTY_PATH) == 0)
		sp->link_mode = LINK_EMPTY_PATH;
	else if (linkat(AT_FDCWD, path, sp->queuefd, name,
	    AT_SYMLINK_FOLLOW) == 0)
		sp->link_mode = LINK_PROC;
	unlinkat(sp->queuefd, name, 0);
	close(fd);
}

static int	msg_flush(struct spool_msg *);

/* ---- the commit thread ---- */

/* Takes files off the shared list and syncs them; called with sp->lock. */
static void
sync_some(struct spool *sp)
{
	struct spool_msg	*m;

	while (sp->sync_next < sp->sync_n) {
		m = sp->sync_items[sp->sync_next++];
		pthread_mutex_unlock(&sp->lock);
		if (fdatasync(m->fd) == -1)
			m->err = errno;
		pthread_mutex_lock(&sp->lock);
		if (++sp->sync_finished == sp->sync_n)
			pthread_cond_signal(&sp->sync_done);
	}
}

static void *
sync_helper(void *arg)
{
	struct spool	*sp = arg;
	unsigned	 seen = 0;

	pthread_mutex_lock(&sp->lock);
	for (;;) {
		while (sp->sync_gen == seen && !sp->stopping)
			pthread_cond_wait(&sp->sync_work, &sp->lock);
		if (sp->stopping)
			break;
		seen = sp->sync_gen;
		sync_some(sp);
	}
	pthread_mutex_unlock(&sp->lock);
	return NULL;
}

/* fdatasyncs every healthy file of the batch, helpers joining in. */
static void
sync_all(struct spool *sp, struct spool_msg *batch)
{
	struct spool_msg	*m, **items;
	size_t			 n = 0;

	for (m = batch; m != NULL; m = m->next)
		if (m->err == 0)
			n++;
	if (n == 0)
		return;
	items = xcalloc(n, sizeof(*items));
	n = 0;
	for (m = batch; m != NULL; m = m->next)
		if (m->err == 0) {
			/* Start write-back everywhere so the waits overlap. */
			sync_file_range(m->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
			items[n++] = m;
		}
	pthread_mutex_lock(&sp->lock);
	sp->sync_items = items;
	sp->sync_n = n;
	sp->sync_next = sp->sync_finished = 0;
	sp->sync_gen++;
	if (n > 1 && sp->nhelpers > 0)
		pthread_cond_broadcast(&sp->sync_work);
	sync_some(sp);
	while (sp->sync_finished < sp->sync_n)
		pthread_cond_wait(&sp->sync_done, &sp->lock);
	sp->sync_items = NULL;
	sp->sync_n = sp->sync_next = sp->sync_finished = 0;
	pthread_mutex_unlock(&sp->lock);
	free(items);
}

static void
commit_batch(struct spool *sp, struct spool_msg *batch)
{
	struct spool_msg	*m;
	int			 dir_err = 0, linked = 0;

	/* Small messages get their files only now, off the event loop. */
	for (m = batch; m != NULL; m = m->next)
		if (m->err == 0 && (m->fd != -1 || msg_create(m) == 0))
			msg_flush(m);
	if (sp->sync_method == SYNC_SYNCFS && batch->next != NULL) {
		/* One flush for the batch; a failure fails every message. */
		int e = syncfs(sp->queuefd) == -1 ? errno : 0;
		for (m = batch; m != NULL; m = m->next)
			if (m->err == 0)
				m->err = e;
	} else
		sync_all(sp, batch);
	for (m = batch; m != NULL; m = m->next) {
		if (m->err == 0 && msg_link(m) == -1)
			m->err = errno;
		if (m->fd != -1 && close(m->fd) == -1 && m->err == 0)
			m->err = errno;
		m->fd = -1;
		if (m->named) {
			unlinkat(sp->tmpfd, m->qid, 0);
			m->named = 0;
		}
		if (m->err == 0) {
			m->linked = 1;
			linked++;
		} else if (m->linked)
			unlinkat(sp->queuefd, m->qid, 0);
	}
	if (linked > 0 && fsync(sp->queuefd) == -1)
		dir_err = errno;
	if (dir_err == 0)
		return;
	/* The names may not survive a crash: refuse them all. */
	for (m = batch; m != NULL; m = m->next)
		if (m->err == 0) {
			m->err = dir_err;
			unlinkat(sp->queuefd, m->qid, 0);
		}
}

static void *
commit_thread(void *arg)
{
	struct spool		*sp = arg;
	struct spool_msg	*batch, *m, *rev, *next;
	int			 wake;

	pthread_mutex_lock(&sp->lock);
	for (;;) {
		while (sp->pending == NULL && !sp->stopping)
			pthread_cond_wait(&sp->cond, &sp->lock);
		if (sp->pending == NULL && sp->stopping)
			break;
		batch = sp->pending;
		sp->pending = NULL;
		pthread_mutex_unlock(&sp->lock);

		/* pending is LIFO; commit in arrival order. */
		for (rev = NULL, m = batch; m != NULL; m = next) {
			next = m->next;
			m->next = rev;
			rev = m;
		}
		commit_batch(sp, rev);

		pthread_mutex_lock(&sp->lock);
		sp->nbatches++;
		for (m = rev; m != NULL; m = m->next)
			sp->ncommits++;
		wake = sp->done == NULL;
		for (m = rev; m != NULL; m = next) {
			next = m->next;
			m->next = sp->done;
			sp->done = m;
		}
		if (wake && write(sp->notify[1], "", 1) == -1 &&
		    errno != EAGAIN)
			log_warn("spool: notify");
	}
	pthread_mutex_unlock(&sp->lock);
	return NULL;
}

static void
msg_free(struct spool_msg *m)
{
	if (m->fd != -1)
		close(m->fd);
	if (m->named)
		unlinkat(m->spool->tmpfd, m->qid, 0);
	free(m->mail_from);
	free(m->buf);
	free(m);
}

/* Event loop side: hand results back to the sessions. */
static void
spool_notify_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct spool		*sp = arg;
	struct spool_msg	*done, *m, *rev, *next;
	char			 buf[64];

	(void)ev;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	pthread_mutex_lock(&sp->lock);
	done = sp->done;
	sp->done = NULL;
	pthread_mutex_unlock(&sp->lock);
	for (rev = NULL, m = done; m != NULL; m = next) {
		next = m->next;
		m->next = rev;
		rev = m;
	}
	for (m = rev; m != NULL; m = next) {
		next = m->next;
		if (m->err == 0)
			spool_add_entry(sp, m);
		if (m->cb != NULL)
			m->cb(m->cbarg, m->err, m->qid);
		msg_free(m);
	}
}

struct spool *
spool_open(const char *dir, int sync_method, struct event_base *base,
    char *err, size_t errlen)
{
	struct spool	*sp;

	sp = xcalloc(1, sizeof(*sp));
	sp->dir = xstrdup(dir);
	sp->sync_method = sync_method;
	sp->dirfd = sp->queuefd = sp->tmpfd = -1;
	sp->notify[0] = sp->notify[1] = -1;
	if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "spool_dir %s: cannot create: %s", dir,
		    strerror(errno));
		goto fail;
	}
	if ((sp->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1 ||
	    (sp->queuefd = open_subdir(sp->dirfd, "queue")) == -1 ||
	    (sp->tmpfd = open_subdir(sp->dirfd, "tmp")) == -1) {
		snprintf(err, errlen, "spool_dir %s: %s (check that it exists "
		    "and belongs to the user relayd runs as)", dir,
		    strerror(errno));
		goto fail;
	}
	spool_probe(sp);
	if (spool_recover(sp) == -1) {
		snprintf(err, errlen, "spool_dir %s: cannot read: %s", dir,
		    strerror(errno));
		goto fail;
	}
	fsync(sp->dirfd);
	pthread_mutex_init(&sp->lock, NULL);
	pthread_cond_init(&sp->cond, NULL);
	pthread_cond_init(&sp->sync_work, NULL);
	pthread_cond_init(&sp->sync_done, NULL);
	if (base == NULL)
		return sp;
	if (pipe2(sp->notify, O_NONBLOCK | O_CLOEXEC) == -1) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		goto fail;
	}
	sp->notify_ev = event_new(base, sp->notify[0], EV_READ | EV_PERSIST,
	    spool_notify_cb, sp);
	event_add(sp->notify_ev, NULL);
	/*
	 * One commit thread: a second one splits the batches and, measured
	 * on ext4, costs more flushes than it overlaps.
	 */
	if ((errno = pthread_create(&sp->thread, NULL, commit_thread, sp))) {
		snprintf(err, errlen, "commit thread: %s", strerror(errno));
		goto fail;
	}
	sp->running = 1;
	if (sp->sync_method == SYNC_FDATASYNC)
		for (; sp->nhelpers < SPOOL_SYNC_HELPERS; sp->nhelpers++)
			if (pthread_create(&sp->helpers[sp->nhelpers], NULL,
			    sync_helper, sp) != 0)
				break;	/* fewer helpers: slower, still right */
	return sp;
fail:
	spool_free(sp);
	return NULL;
}

void
spool_free(struct spool *sp)
{
	size_t	 i;

	if (sp == NULL)
		return;
	if (sp->running) {
		pthread_mutex_lock(&sp->lock);
		sp->stopping = 1;
		pthread_cond_signal(&sp->cond);
		pthread_cond_broadcast(&sp->sync_work);
		pthread_mutex_unlock(&sp->lock);
		pthread_join(sp->thread, NULL);
		for (i = 0; i < (size_t)sp->nhelpers; i++)
			pthread_join(sp->helpers[i], NULL);
		log_info("spool: %" PRIu64 " message(s) committed in %" PRIu64
		    " flush(es)", sp->ncommits, sp->nbatches);
		/* Commits that finished are durable; their callbacks run. */
		spool_notify_cb(sp->notify[0], EV_READ, sp);
	}
	if (sp->notify_ev != NULL)
		event_free(sp->notify_ev);
	if (sp->notify[0] != -1) {
		close(sp->notify[0]);
		close(sp->notify[1]);
	}
	for (i = 0; i < sp->nentries; i++)
		spool_entry_clear(&sp->entries[i]);
	free(sp->entries);
	if (sp->tmpfd != -1)
		close(sp->tmpfd);
	if (sp->queuefd != -1)
		close(sp->queuefd);
	if (sp->dirfd != -1)
		close(sp->dirfd);
	free(sp->dir);
	free(sp);
}

size_t
spool_count(const struct spool *sp)
{
	return sp->count;
}

const struct spool_entry *
spool_entry_at(const struct spool *sp, size_t i)
{
	return i < sp->nentries ? &sp->entries[i] : NULL;
}

void
spool_set_queued_cb(struct spool *sp, spool_queued_cb *cb, void *arg)
{
	sp->queued_cb = cb;
	sp->queued_arg = arg;
}

int
spool_open_msg(struct spool *sp, const char *qid)
{
	return openat(sp->queuefd, qid, O_RDONLY | O_CLOEXEC);
}

int
spool_remove(struct spool *sp, const char *qid)
{
	if (unlinkat(sp->queuefd, qid, 0) == -1) {
		log_warn("%s spool: cannot remove queue/%s", qid, qid);
		return -1;
	}
	if (sp->count > 0)
		sp->count--;
	return 0;
}

int
spool_dead(struct spool *sp, const char *qid, const char *reason)
{
	char	 name[SPOOL_QID_LEN + 16];
	size_t	 len = strlen(reason);
	int	 dfd, fd, r = -1;

	if ((dfd = open_subdir(sp->dirfd, "dead")) == -1) {
		log_warn("%s spool: cannot open dead/", qid);
		return -1;
	}
	snprintf(name, sizeof(name), "%s.reason", qid);
	if ((fd = openat(dfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	    0600)) == -1 || write(fd, reason, len) != (ssize_t)len)
		log_warn("%s spool: cannot write dead/%s", qid, name);
	if (fd != -1)
		close(fd);
	if (renameat(sp->queuefd, qid, dfd, qid) == -1)
		log_warn("%s spool: cannot move queue/%s to dead/", qid, qid);
	else {
		fsync(dfd);
		if (sp->count > 0)
			sp->count--;
		r = 0;
	}
	close(dfd);
	return r;
}

/* Writes all of data to the message's file; the first error sticks. */
static int
msg_write_all(struct spool_msg *m, const char *data, size_t len)
{
	ssize_t	 n;

	while (m->err == 0 && len > 0) {
		n = write(m->fd, data, len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			m->err = n == 0 ? EIO : errno;
		else {
			data += n;
			len -= (size_t)n;
		}
	}
	if (m->err != 0) {
		errno = m->err;
		return -1;
	}
	return 0;
}

static int
msg_flush(struct spool_msg *m)
{
	size_t	 len = m->buflen;

	m->buflen = 0;
	return msg_write_all(m, m->buf, len);
}

static int
msg_append(struct spool_msg *m, const void *data, size_t len)
{
	if (m->err != 0) {
		errno = m->err;
		return -1;
	}
	if (m->buflen + len > SPOOL_BUF_SIZE) {
		/* Too big for memory: the file is made now, on the loop. */
		if (m->fd == -1 && msg_create(m) == -1) {
			errno = m->err;
			return -1;
		}
		if (msg_flush(m) == -1)
			return -1;
	}
	if (len >= SPOOL_BUF_SIZE)
		return msg_write_all(m, data, len);
	memcpy(m->buf + m->buflen, data, len);
	m->buflen += len;
	return 0;
}

/* Envelope values come from validated SMTP input; newlines cannot occur. */
static int
msg_header(struct spool_msg *m, const char *key, const char *val)
{
	if (strchr(val, '\n') != NULL) {
		m->err = EINVAL;
		return -1;
	}
	if (msg_append(m, key, strlen(key)) == -1 ||
	    msg_append(m, ": ", 2) == -1 ||
	    msg_append(m, val, strlen(val)) == -1 ||
	    msg_append(m, "\n", 1) == -1)
		return -1;
	return 0;
}

struct spool_msg *
spool_msg_new(struct spool *sp, const struct spool_env *env)
{
	struct spool_msg	*m;
	char			 line[64];
	size_t			 i;

	m = xcalloc(1, sizeof(*m));
	m->spool = sp;
	m->fd = -1;
	spool_new_qid(sp, m->qid);
	m->buf = xmalloc(SPOOL_BUF_SIZE);
	m->mail_from = xstrdup(env->mail_from);
	snprintf(line, sizeof(line), "%s%d\n", SPOOL_MAGIC, SPOOL_VERSION);
	msg_append(m, line, strlen(line));
	msg_header(m, "id", m->qid);
	snprintf(line, sizeof(line), "%" PRIu64 ".%06" PRIu64,
	    env->arrival_us / 1000000, env->arrival_us % 1000000);
	msg_header(m, "arrival", line);
	msg_header(m, "client", env->client);
	msg_header(m, "listener", env->listener);
	msg_header(m, "helo", env->helo);
	msg_header(m, "user", env->user);
	msg_header(m, "mail-from", env->mail_from);
	msg_header(m, "mail-params", env->mail_params);
	for (i = 0; i < env->nrcpts; i++)
		msg_header(m, "rcpt", env->rcpts[i]);
	msg_append(m, "\n", 1);
	if (m->err != 0) {
		int saved = m->err;
		spool_msg_abort(m);
		errno = saved;
		return NULL;
	}
	return m;
}

const char *
spool_msg_qid(const struct spool_msg *m)
{
	return m->qid;
}

int
spool_msg_write(struct spool_msg *m, const void *data, size_t len)
{
	if (msg_append(m, data, len) == -1)
		return -1;
	m->size += len;
	return 0;
}

int
spool_msg_error(const struct spool_msg *m)
{
	return m->err;
}

void
spool_msg_commit(struct spool_msg *m, spool_done_cb *cb, void *arg)
{
	struct spool	*sp = m->spool;
	char		 trailer[SPOOL_TRAILER_LEN + 1];

	snprintf(trailer, sizeof(trailer), "%s%020" PRIu64 "\n",
	    SPOOL_END_MAGIC, m->size);
	msg_append(m, trailer, SPOOL_TRAILER_LEN);
	m->cb = cb;
	m->cbarg = arg;
	if (m->err != 0 || !sp->running) {
		/* A failed write, or no commit thread (tools): finish here. */
		m->next = NULL;
		if (m->err == 0)
			commit_batch(sp, m);
		if (m->err == 0)
			spool_add_entry(sp, m);
		if (cb != NULL)
			cb(arg, m->err, m->qid);
		msg_free(m);
		return;
	}
	pthread_mutex_lock(&sp->lock);
	m->next = sp->pending;
	sp->pending = m;
	pthread_cond_signal(&sp->cond);
	pthread_mutex_unlock(&sp->lock);
}

void
spool_msg_forget(struct spool_msg *m)
{
	/* Only the loop thread reads cb, in spool_notify_cb. */
	m->cb = NULL;
	m->cbarg = NULL;
}

void
spool_msg_abort(struct spool_msg *m)
{
	if (m != NULL)
		msg_free(m);
}

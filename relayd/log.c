/*
 * log.c - event log to stderr.
 *
 * One line per event. Under systemd stderr goes to the journal, which adds
 * its own time stamp, so lines carry a "<N>" syslog priority prefix there
 * and a time stamp otherwise. errno is preserved across calls.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static const char	*log_tag = "relayd";
static int		 log_level = LOG_LVL_INFO;
static int		 log_journal;

void
log_init(const char *tag, int level)
{
	log_tag = tag;
	log_level = level;
	/* systemd sets JOURNAL_STREAM when stderr is connected to journald. */
	log_journal = getenv("JOURNAL_STREAM") != NULL;
}

int
log_enabled(int level)
{
	return level <= __atomic_load_n(&log_level, __ATOMIC_RELAXED);
}

/* Read by several threads (the SMTP loops): atomic. */
void
log_set_level(int level)
{
	__atomic_store_n(&log_level, level, __ATOMIC_RELAXED);
}

static void
vlog(int level, const char *fmt, va_list ap, const char *suffix)
{
	static const int	 prio[] = { 3, 4, 6, 7 };
	char			 buf[2048], ts[32];
	int			 saved = errno;
	struct timespec		 t;
	struct tm		 tm;

	if (level > __atomic_load_n(&log_level, __ATOMIC_RELAXED))
		return;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	if (log_journal)
		fprintf(stderr, "<%d>%s%s%s\n", prio[level], buf,
		    suffix ? ": " : "", suffix ? suffix : "");
	else {
		clock_gettime(CLOCK_REALTIME, &t);
		gmtime_r(&t.tv_sec, &tm);
		strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
		fprintf(stderr, "%s.%03ldZ %s: %s%s%s\n", ts,
		    t.tv_nsec / 1000000, log_tag, buf,
		    suffix ? ": " : "", suffix ? suffix : "");
	}
	errno = saved;
}

void
log_msg(int level, const char *fmt, ...)
{
	va_list	 ap;

	va_start(ap, fmt);
	vlog(level, fmt, ap, NULL);
	va_end(ap);
}

void
log_warn(const char *fmt, ...)
{
	va_list	 ap;
	char	 err[256];

	strlcpy_r(err, strerror(errno), sizeof(err));
	va_start(ap, fmt);
	vlog(LOG_LVL_WARN, fmt, ap, err);
	va_end(ap);
}

void
fatal(const char *fmt, ...)
{
	va_list	 ap;
	char	 err[256];

	strlcpy_r(err, strerror(errno), sizeof(err));
	va_start(ap, fmt);
	vlog(LOG_LVL_ERR, fmt, ap, err);
	va_end(ap);
	abort();
}

void
fatalx(const char *fmt, ...)
{
	va_list	 ap;

	va_start(ap, fmt);
	vlog(LOG_LVL_ERR, fmt, ap, NULL);
	va_end(ap);
	abort();
}

char *
log_escape(char *dst, size_t dstlen, const char *src, size_t srclen)
{
	static const char	 hex[] = "0123456789abcdef";
	size_t			 i, o = 0;

	if (dstlen == 0)
		return dst;
	for (i = 0; i < srclen; i++) {
		unsigned char c = (unsigned char)src[i];
		size_t need = (c >= 0x20 && c < 0x7f && c != '"' &&
		    c != '\\') ? 1 : 4;
		if (o + need + 4 > dstlen) {
			if (o + 4 <= dstlen) {
				memcpy(dst + o, "...", 3);
				o += 3;
			}
			break;
		}
		if (need == 1)
			dst[o++] = (char)c;
		else {
			dst[o++] = '\\';
			dst[o++] = 'x';
			dst[o++] = hex[c >> 4];
			dst[o++] = hex[c & 15];
		}
	}
	dst[o] = '\0';
	return dst;
}

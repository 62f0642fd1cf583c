/*
 * util.c - allocation and small string/number helpers shared by every module,
 * and passing a file descriptor over a UNIX socket (relayctl export).
 *
 * The x-allocators abort on exhaustion: relayd cannot do anything useful
 * without memory, and every size that comes from a client is bounded before
 * it reaches them.
 */
#include <sys/socket.h>

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

void *
xmalloc(size_t n)
{
	void	*p;

	if (n == 0)
		n = 1;
	if ((p = malloc(n)) == NULL)
		fatal("malloc %zu", n);
	return p;
}

void *
xcalloc(size_t nmemb, size_t size)
{
	void	*p;

	if (nmemb == 0 || size == 0)
		nmemb = size = 1;
	if ((p = calloc(nmemb, size)) == NULL)
		fatal("calloc %zu*%zu", nmemb, size);
	return p;
}

void *
xrealloc(void *p, size_t n)
{
	if (n == 0)
		n = 1;
	if ((p = realloc(p, n)) == NULL)
		fatal("realloc %zu", n);
	return p;
}

char *
xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

char *
xstrndup(const char *s, size_t n)
{
	char	*p;

	p = xmalloc(n + 1);
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

int
xasprintf(char **out, const char *fmt, ...)
{
	va_list	 ap;
	int	 n;

	va_start(ap, fmt);
	n = vasprintf(out, fmt, ap);
	va_end(ap);
	if (n < 0)
		fatal("vasprintf");
	return n;
}

/* Copies at most size-1 bytes and always terminates; returns strlen(src). */
size_t
strlcpy_r(char *dst, const char *src, size_t size)
{
	size_t	 len = strlen(src);

	if (size > 0) {
		size_t n = len < size - 1 ? len : size - 1;
		memcpy(dst, src, n);
		dst[n] = '\0';
	}
	return len;
}

/* 1 if s starts with prefix, ignoring ASCII case. */
int
strcasecmp_prefix(const char *s, const char *prefix)
{
	return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

char *
str_trim(char *s)
{
	char	*e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' ||
	    e[-1] == '\n'))
		*--e = '\0';
	return s;
}

int
parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	unsigned long long	 v;
	char			*end;

	if (!isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* Splits "123abc" into 123 and "abc"; the suffix is matched by the caller. */
static int
split_number(const char *s, uint64_t *num, const char **suffix)
{
	unsigned long long	 v;
	char			*end;

	if (!isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		return -1;
	while (*end == ' ')
		end++;
	*num = v;
	*suffix = end;
	return 0;
}

static int
scale(uint64_t v, uint64_t mul, uint64_t *out)
{
	if (mul != 0 && v > UINT64_MAX / mul)
		return -1;
	*out = v * mul;
	return 0;
}

int
parse_size(const char *s, uint64_t *out)
{
	static const struct { const char *sfx; uint64_t mul; } units[] = {
		{ "", 1 }, { "b", 1 }, { "k", 1024 }, { "kb", 1024 },
		{ "m", 1024 * 1024 }, { "mb", 1024 * 1024 },
		{ "g", 1024ULL * 1024 * 1024 }, { "gb", 1024ULL * 1024 * 1024 },
	};
	const char	*sfx;
	uint64_t	 v;
	size_t		 i;

	if (split_number(s, &v, &sfx) == -1)
		return -1;
	for (i = 0; i < NELEM(units); i++)
		if (strcasecmp(sfx, units[i].sfx) == 0)
			return scale(v, units[i].mul, out);
	return -1;
}

int
parse_duration_ms(const char *s, uint64_t *out)
{
	static const struct { const char *sfx; uint64_t mul; } units[] = {
		{ "", 1000 }, { "s", 1000 }, { "ms", 1 }, { "m", 60000 },
		{ "min", 60000 }, { "h", 3600000 }, { "d", 86400000 },
	};
	const char	*sfx;
	uint64_t	 v;
	size_t		 i;

	if (split_number(s, &v, &sfx) == -1)
		return -1;
	for (i = 0; i < NELEM(units); i++)
		if (strcasecmp(sfx, units[i].sfx) == 0)
			return scale(v, units[i].mul, out);
	return -1;
}

int
check_private_mode(const char *what, const char *path, unsigned mode,
    char *err, size_t errlen)
{
	if ((mode & 077) == 0)
		return 0;
	snprintf(err, errlen, "%s \"%s\" is open to group or others (mode "
	    "%04o); run: chmod 600 %s", what, path, mode & 07777, path);
	return -1;
}

uint64_t
now_ms(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct timeval
ms_tv(uint64_t ms)
{
	struct timeval	 tv;

	tv.tv_sec = (time_t)(ms / 1000);
	tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
	return tv;
}

uint64_t
wall_us(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

const char *
time_iso(uint64_t ms, char *buf, size_t len)
{
	time_t		 t = (time_t)(ms / 1000);
	struct tm	 tm;

	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
	return buf;
}

/* ---- file descriptors passed over a UNIX socket (SCM_RIGHTS) ---- */

union fd_cmsg {
	struct cmsghdr	 hdr;
	char		 buf[CMSG_SPACE(sizeof(int))];
};

ssize_t
fd_sendmsg(int sock, struct iovec *iov, size_t iovcnt, int fd)
{
	struct msghdr	 mh;
	struct cmsghdr	*cm;
	union fd_cmsg	 cbuf;

	memset(&mh, 0, sizeof(mh));
	memset(&cbuf, 0, sizeof(cbuf));
	mh.msg_iov = iov;
	mh.msg_iovlen = iovcnt;
	mh.msg_control = cbuf.buf;
	mh.msg_controllen = sizeof(cbuf.buf);
	cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(sock, &mh, MSG_NOSIGNAL);
}

ssize_t
fd_recvmsg(int sock, void *buf, size_t len, int *fdp)
{
	struct msghdr	 mh;
	struct iovec	 iov;
	struct cmsghdr	*cm;
	union fd_cmsg	 cbuf;
	ssize_t		 n;

	memset(&mh, 0, sizeof(mh));
	iov.iov_base = buf;
	iov.iov_len = len;
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cbuf.buf;
	mh.msg_controllen = sizeof(cbuf.buf);
	if ((n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC)) <= 0)
		return n;
	for (cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET &&
		    cm->cmsg_type == SCM_RIGHTS &&
		    cm->cmsg_len == CMSG_LEN(sizeof(int))) {
			if (*fdp != -1)
				close(*fdp);
			memcpy(fdp, CMSG_DATA(cm), sizeof(int));
		}
	return n;
}

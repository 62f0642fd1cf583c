/* util.h - allocators that never return NULL, bounded string helpers. */
#ifndef RELAYD_UTIL_H
#define RELAYD_UTIL_H

#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <stddef.h>
#include <stdint.h>

#define PRINTFLIKE(f, a) __attribute__((__format__(__printf__, f, a)))
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

void	*xmalloc(size_t);
void	*xcalloc(size_t, size_t);
void	*xrealloc(void *, size_t);
char	*xstrdup(const char *);
char	*xstrndup(const char *, size_t);
int	 xasprintf(char **, const char *, ...) PRINTFLIKE(2, 3);

size_t	 strlcpy_r(char *, const char *, size_t);
int	 strcasecmp_prefix(const char *, const char *);
char	*str_trim(char *);

/* Strict number parsers: 0 on success, -1 on syntax or range error. */
int	 parse_u64(const char *, uint64_t, uint64_t, uint64_t *);
int	 parse_size(const char *, uint64_t *);		/* 35M, 512k, 1048576 */
int	 parse_duration_ms(const char *, uint64_t *);	/* 300s, 5m, 250ms, 1h */

/*
 * A secret's file mode: -1 with "WHAT "PATH" is open to group or others
 * (mode 0644); run: chmod 600 PATH" in err if group or others have any
 * access to it.
 */
int	 check_private_mode(const char *, const char *, unsigned, char *,
	    size_t);

uint64_t now_ms(void);		/* CLOCK_MONOTONIC */
struct timeval ms_tv(uint64_t);	/* milliseconds as a libevent timeout */
uint64_t wall_us(void);		/* CLOCK_REALTIME */
#define TIME_ISO_LEN	32
/* Wall-clock ms as ISO 8601 UTC, "2026-11-24T10:15:00Z", into buf. */
const char *time_iso(uint64_t, char *, size_t);

/*
 * sendmsg with fd riding along (SCM_RIGHTS, on the first byte), and
 * recvmsg keeping such a file in *fdp (closing one it held; close-on-exec).
 */
ssize_t	 fd_sendmsg(int, struct iovec *, size_t, int);
ssize_t	 fd_recvmsg(int, void *, size_t, int *);

#endif

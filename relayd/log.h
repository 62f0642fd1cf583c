/* log.h - one line per event to stderr, "key=value" fields, journald-friendly. */
#ifndef RELAYD_LOG_H
#define RELAYD_LOG_H

#include <stddef.h>
#include "util.h"

enum log_level { LOG_LVL_ERR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

void	log_init(const char *, int);
void	log_set_level(int);
/* Would a line of this level be written? (Skip costly fields if not.) */
int	log_enabled(int);
void	log_msg(int, const char *, ...) PRINTFLIKE(2, 3);
#define log_info(...)	log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_warnx(...)	log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_debug(...)	log_msg(LOG_LVL_DEBUG, __VA_ARGS__)
void	log_warn(const char *, ...) PRINTFLIKE(1, 2);	/* appends strerror */
__attribute__((noreturn)) void fatal(const char *, ...) PRINTFLIKE(1, 2);
__attribute__((noreturn)) void fatalx(const char *, ...) PRINTFLIKE(1, 2);

/*
 * Escapes untrusted bytes for a log line: printable ASCII other than '"' and
 * '\\' is kept, everything else becomes \xNN; the output is cut at dstlen-1
 * with "..." when it does not fit. Returns dst.
 */
char	*log_escape(char *, size_t, const char *, size_t);

#endif

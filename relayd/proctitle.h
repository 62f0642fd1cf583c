/* proctitle.h - the process title ps and /proc show. */
#ifndef RELAYD_PROCTITLE_H
#define RELAYD_PROCTITLE_H

/* Once, first thing in main: makes room (moves environ aside). */
void	proctitle_init(int, char **);
/* The title: /proc/PID/cmdline (ps) and /proc/PID/comm (top). */
void	proctitle_set(const char *);

#endif

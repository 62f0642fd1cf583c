/*
 * proc.c - the control socketpairs between the parent and its children
 * (SOCK_SEQPACKET: one message per send, EOF when the other end dies),
 * and what every child does first.
 */
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proc.h"
#include "proctitle.h"
#include "util.h"

int
ctl_send(int sock, enum ctl_type type, uint64_t arg, int fd)
{
	struct ctl_msg	 m;
	struct iovec	 iov;
	ssize_t		 n;

	memset(&m, 0, sizeof(m));
	m.type = type;
	m.arg = arg;
	iov.iov_base = &m;
	iov.iov_len = sizeof(m);
	if (fd != -1)
		n = fd_sendmsg(sock, &iov, 1, fd);
	else
		n = send(sock, &m, sizeof(m), MSG_NOSIGNAL);
	return n == (ssize_t)sizeof(m) ? 0 : -1;
}

int
ctl_recv(int sock, struct ctl_msg *m, int *fd)
{
	ssize_t	 n;

	*fd = -1;
	do
		n = fd_recvmsg(sock, m, sizeof(*m), fd);
	while (n == -1 && errno == EINTR);
	if (n == 0)
		return 0;
	if (n != (ssize_t)sizeof(*m)) {
		if (n >= 0)
			errno = EPROTO;
		return -1;
	}
	return 1;
}

void
proc_child(const char *title, pid_t parent)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
	/* The parent may have died before the line above. */
	if (getppid() != parent)
		_exit(1);
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	proctitle_set(title);
	unsetenv("NOTIFY_SOCKET");	/* NotifyAccess=main: the parent's */
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
}

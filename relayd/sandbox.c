/*
 * sandbox.c - the confinement a relayd process enters once it has what
 * only start-up may hold: no_new_privs, Landlock, then a seccomp filter.
 *
 * Landlock (raw system calls, ABI 1 to 7) lets the process open only the
 * spool (read, write, create, rename), the files of its configuration
 * (relayd.conf, the users file, TLS certificates and keys, ca_file, the
 * Graph certificate_file, which is public: status shows its expiry) and
 * the system files its libraries read (CA bundle, DNS and NSS, gconv and
 * locales, time zones, /proc/self, /dev/null and /dev/urandom). The client
 * secret, the private key, [cluster] password_file and
 * $CREDENTIALS_DIRECTORY are never granted;
 * where a configuration file shares a directory with one, that file alone
 * is granted (its inode: a file replaced by rename cannot be re-read on
 * SIGHUP), else its whole directory. Landlock binds the calling thread
 * and the threads it starts afterwards, so this runs before the first
 * thread.
 * A kernel without Landlock is logged once and the rest goes on.
 *
 * seccomp (libseccomp: it knows each architecture's numbers and writes
 * the BPF program) allows a list of calls per role, each commented with
 * who needs it, for every thread (TSYNC). Anything else traps: the SIGSYS
 * handler writes "relayd: seccomp: system call N (name) not allowed" to
 * stderr (the log) with write(2) alone and exits 70, so a filter that is
 * too tight is a crash with a clear line, not a silent kill. The names
 * come from a table made before the filter is loaded, since libseccomp's
 * resolver is not async-signal-safe.
 *
 * ASan's runtime makes calls of its own (LeakSanitizer at exit): they are
 * allowed in sanitizer builds only (sanitizer_calls). valgrind does not
 * know seccomp(2) or Landlock's calls and answers ENOSYS without asking
 * the kernel: under valgrind only no_new_privs is set, and the log says
 * so.
 */
#include "autoconf.h"

#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <linux/landlock.h>
#include <seccomp.h>
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define HAVE_VALGRIND_H	1
#endif
#endif

#include "config.h"
#include "log.h"
#include "sandbox.h"
#include "util.h"

#ifndef NELEM
#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#endif

/* Landlock's rights by ABI; <linux/landlock.h> here may predate some. */
#define LL_FS_EXECUTE		(1ULL << 0)
#define LL_FS_WRITE_FILE	(1ULL << 1)
#define LL_FS_READ_FILE		(1ULL << 2)
#define LL_FS_READ_DIR		(1ULL << 3)
#define LL_FS_REMOVE_DIR	(1ULL << 4)
#define LL_FS_REMOVE_FILE	(1ULL << 5)
#define LL_FS_MAKE_DIR		(1ULL << 7)
#define LL_FS_MAKE_REG		(1ULL << 8)
#define LL_FS_MAKE_SOCK		(1ULL << 9)
#define LL_FS_REFER		(1ULL << 13)	/* ABI 2 */
#define LL_FS_TRUNCATE		(1ULL << 14)	/* ABI 3 */
#define LL_FS_IOCTL_DEV		(1ULL << 15)	/* ABI 5 */
#define LL_SCOPE_SIGNAL		(1ULL << 1)	/* ABI 6 */
#define LL_FS_ABI1		((1ULL << 13) - 1)
#define LL_FILE_RIGHTS		(LL_FS_EXECUTE | LL_FS_WRITE_FILE | \
	LL_FS_READ_FILE | LL_FS_TRUNCATE | LL_FS_IOCTL_DEV)
#define LL_READ			(LL_FS_READ_FILE | LL_FS_READ_DIR)
#define LL_SPOOL		(LL_READ | LL_FS_WRITE_FILE | \
	LL_FS_REMOVE_DIR | LL_FS_REMOVE_FILE | LL_FS_MAKE_DIR | \
	LL_FS_MAKE_REG | LL_FS_REFER | LL_FS_TRUNCATE)

struct ll_ruleset_attr {		/* the kernel's, up to ABI 6 */
	uint64_t	fs;
	uint64_t	net;
	uint64_t	scoped;
};

/*
 * System files the libraries read. A missing one is skipped; a
 * directory of them is granted whole (read only).
 */
static const char *const system_read[] = {
	"/etc/ssl/certs",		/* OpenSSL, libcurl: CA bundle */
	"/etc/ssl/openssl.cnf",		/* OpenSSL's configuration */
	"/usr/share/ca-certificates",	/* where /etc/ssl/certs points */
	"/etc/resolv.conf",		/* glibc's resolver (libcurl) */
	"/etc/hosts",
	"/etc/host.conf",
	"/etc/nsswitch.conf",
	"/etc/gai.conf",		/* getaddrinfo's address order */
	"/etc/services",
	"/etc/passwd",			/* status: users = NAME; NSS */
	"/etc/group",			/* status: groups = NAME */
	"/etc/ld.so.cache",		/* dlopen: NSS modules */
	"/etc/localtime",		/* log time stamps, Date: */
	"/usr/share/zoneinfo",
	"/usr/lib",			/* gconv modules (GMime's iconv), */
	"/usr/lib64",			/* NSS modules, locale archive */
	"/usr/share/locale",
	"/usr/share/i18n",
	"/sys/devices/system/cpu",	/* sysconf(_SC_NPROCESSORS_ONLN) */
};

/* Devices opened for reading and writing (file rules). */
static const char *const system_rw[] = {
	"/dev/null",
	"/dev/urandom",			/* OpenSSL's and SQLite's seeding */
	"/dev/random",
};

/* System calls by role: each line says who needs it. */
static const char *const common_calls[] = {
	/* everybody: memory, I/O on open descriptors, time */
	"read", "write", "readv", "writev", "pread64", "pwrite64",
	"preadv", "pwritev", "lseek", "close", "close_range", "dup",
	"dup2", "dup3", "fcntl",
	"brk", "mmap", "munmap", "mremap", "mprotect", "madvise",
	"clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep",
	"gettimeofday", "time",
	"getpid", "gettid", "getppid", "getuid", "geteuid", "getgid",
	"getegid", "getresuid", "getresgid", "getgroups", "uname",
	"getrandom",			/* OpenSSL, glib, SQLite */
	"getrlimit", "prlimit64", "getrusage", "sysinfo",
	"exit", "exit_group", "restart_syscall",
	/* signals: libevent's evsig, abort() */
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
	/* threads: spool commit and sync helpers, history writer,
	 * delivery workers, libcurl's resolver threads */
	"clone", "clone3", "futex", "set_robust_list", "get_robust_list",
	"rseq", "set_tid_address", "sched_yield", "sched_getaffinity",
	"membarrier",
	"setpriority",		/* the history writer lowers its own */
	/* the event loop (libevent: epoll; poll by libcurl, OpenSSL) */
	"epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
	"epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select",
	"pselect6", "eventfd2", "pipe", "pipe2",
	/* files: the spool (write, sync, rename into queue/), SQLite's
	 * history.db and its WAL, config and certificates on SIGHUP,
	 * gconv modules, /proc/self/status for RSS */
	"open", "openat", "stat", "fstat", "lstat", "newfstatat", "statx",
	"fstatfs", "statfs", "access", "faccessat", "faccessat2",
	"readlink", "readlinkat", "getdents64", "getcwd",
	"fsync", "fdatasync", "syncfs", "sync_file_range", "fadvise64",
	"ftruncate", "fallocate", "rename", "renameat", "renameat2",
	"link", "linkat", "unlink", "unlinkat", "mkdir", "mkdirat",
	"fchmod", "chmod", "fchmodat", "flock", "umask",
	"fchown",		/* SQLite as root: -wal, -shm get the db's owner */
	"copy_file_range",	/* spool.c copy_range: a message copied out */
	/* sockets already open: SMTP clients, status clients, Graph */
	"accept", "accept4", "recvfrom", "recvmsg", "recvmmsg", "sendto",
	"sendmsg", "sendmmsg", "shutdown", "getsockopt", "setsockopt",
	/* (sendmmsg, recvmmsg: the smtp-deliver link's batches too) */
	"getsockname", "getpeername",
	/* libevent's signal socketpair; sd_notify's datagram socket */
	"socketpair",
};

/* Added for the delivery side: libcurl's connections and DNS. */
static const char *const deliver_calls[] = {
	"connect",
	"bind",			/* glibc getaddrinfo: its netlink socket; */
	"listen",		/* the status socket, metrics_listen */
	"rt_sigpending",	/* deliver_main: stopped while it waits */
};

/*
 * Refused with an error, not trapped, in the SMTP role: it has no use
 * for them (its listeners are inherited, it calls nobody), and an error
 * is what a probe (or a compromised session) sees instead of a crash.
 */
static const char *const smtp_refused[] = {
	"connect", "bind", "listen",
};

/*
 * ASan's runtime, in sanitizer builds only (LeakSanitizer stops the
 * threads with ptrace at exit).
 */
static const char *const sanitizer_calls[] = {
	"getdents",		/* LSan lists /proc/self/task with the old call */
	"prctl",		/* LSan: PR_SET_PTRACER for its tracer */
	"ptrace", "wait4",	/* LSan's tracer stops the threads */
};

/* ioctl: only these requests (isatty() for stdio, libevent, OpenSSL). */
static const unsigned long ioctls[] = {
	FIONREAD, FIONBIO, FIOCLEX, FIONCLEX, TCGETS, TIOCGWINSZ,
};

/* socket(): these families (the status socket, sd_notify, Graph, DNS). */
static const int families[] = {
	AF_UNIX, AF_INET, AF_INET6, AF_NETLINK,
};

/* For the SIGSYS handler: names by number, made before the filter. */
#define SYSCALL_NAMES	512
static char	*syscall_names[SYSCALL_NAMES];

static int
running_on_valgrind(void)
{
#if defined(HAVE_VALGRIND_H)
	return RUNNING_ON_VALGRIND != 0;
#else
	return 0;
#endif
}

/* Decimal, async-signal-safe. */
static size_t
fmt_num(char *buf, long n)
{
	char	 tmp[24];
	size_t	 i = 0, len = 0;

	if (n < 0) {
		buf[len++] = '-';
		n = -n;
	}
	do {
		tmp[i++] = (char)('0' + n % 10);
		n /= 10;
	} while (n > 0 && i < sizeof(tmp));
	while (i > 0)
		buf[len++] = tmp[--i];
	return len;
}

static size_t
append(char *buf, size_t len, size_t size, const char *s)
{
	while (*s != '\0' && len < size)
		buf[len++] = *s++;
	return len;
}

static void
sigsys_handler(int sig, siginfo_t *si, void *uc)
{
	char	 line[256];
	size_t	 len = 0;
	long	 nr = si->si_syscall;
	ssize_t	 w;

	(void)sig;
	(void)uc;
	len = append(line, len, sizeof(line), "relayd: seccomp: system call ");
	len += fmt_num(line + len, nr);
	if (nr >= 0 && nr < SYSCALL_NAMES && syscall_names[nr] != NULL) {
		len = append(line, len, sizeof(line), " (");
		len = append(line, len, sizeof(line), syscall_names[nr]);
		len = append(line, len, sizeof(line), ")");
	}
	len = append(line, len, sizeof(line), " not allowed; please report "
	    "this (relayd stops; [security] sandbox = no lets it run "
	    "meanwhile)\n");
	w = write(STDERR_FILENO, line, len);
	(void)w;
	_exit(70);		/* EX_SOFTWARE */
}

static void
names_make(void)
{
	int	 i;

	for (i = 0; i < SYSCALL_NAMES; i++)
		if (syscall_names[i] == NULL)
			syscall_names[i] = seccomp_syscall_resolve_num_arch(
			    SCMP_ARCH_NATIVE, i);
}

static int
allow_list(scmp_filter_ctx ctx, const char *const *names, size_t n,
    char *err, size_t errlen)
{
	size_t	 i;
	int	 nr, rc;

	for (i = 0; i < n; i++) {
		/* A call this architecture does not have: nothing to allow. */
		if ((nr = seccomp_syscall_resolve_name(names[i])) ==
		    __NR_SCMP_ERROR)
			continue;
		if ((rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0)) < 0 &&
		    rc != -EEXIST) {
			snprintf(err, errlen, "seccomp: %s: %s", names[i],
			    strerror(-rc));
			return -1;
		}
	}
	return 0;
}

/* Calls that fail with EACCES instead of trapping. */
static int
refuse_list(scmp_filter_ctx ctx, const char *const *names, size_t n,
    char *err, size_t errlen)
{
	size_t	 i;
	int	 rc;

	for (i = 0; i < n; i++)
		if ((rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES),
		    seccomp_syscall_resolve_name(names[i]), 0)) < 0) {
			snprintf(err, errlen, "seccomp: %s: %s", names[i],
			    strerror(-rc));
			return -1;
		}
	return 0;
}

/* The calls that are allowed with some arguments only. */
static int
allow_args(scmp_filter_ctx ctx, char *err, size_t errlen)
{
	size_t	 i;
	int	 rc = 0;

	for (i = 0; i < NELEM(ioctls) && rc == 0; i++)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
		    SCMP_A1(SCMP_CMP_EQ, ioctls[i]));
	for (i = 0; i < NELEM(families) && rc == 0; i++)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
		    SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)families[i]));
	/* pthread_setname_np, glibc's and OpenSSL's queries. */
	if (rc == 0)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
		    SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME));
	if (rc == 0)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
		    SCMP_A0(SCMP_CMP_EQ, PR_GET_NAME));
	/* raise() and abort(): to this process only. */
	if (rc == 0)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 1,
		    SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)getpid()));
	if (rc < 0 && rc != -EEXIST) {
		snprintf(err, errlen, "seccomp: argument rules: %s",
		    strerror(-rc));
		return -1;
	}
	return 0;
}

static int
seccomp_enter(enum sandbox_role role, int sanitizers, char *err,
    size_t errlen)
{
	scmp_filter_ctx		 ctx;
	struct sigaction	 sa;
	int			 rc = -1, lrc;

	names_make();
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = sigsys_handler;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSYS, &sa, NULL) == -1) {
		snprintf(err, errlen, "seccomp: sigaction: %s",
		    strerror(errno));
		return -1;
	}
	if ((ctx = seccomp_init(SCMP_ACT_TRAP)) == NULL) {
		snprintf(err, errlen, "seccomp: cannot make a filter");
		return -1;
	}
	if ((lrc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1)) < 0) {
		snprintf(err, errlen, "seccomp: TSYNC: %s", strerror(-lrc));
		goto out;
	}
	if (allow_list(ctx, common_calls, NELEM(common_calls), err,
	    errlen) == -1 || allow_args(ctx, err, errlen) == -1)
		goto out;
	if (role != SANDBOX_SMTP && allow_list(ctx, deliver_calls,
	    NELEM(deliver_calls), err, errlen) == -1)
		goto out;
	if (role == SANDBOX_SMTP && refuse_list(ctx, smtp_refused,
	    NELEM(smtp_refused), err, errlen) == -1)
		goto out;
	if (sanitizers && allow_list(ctx, sanitizer_calls,
	    NELEM(sanitizer_calls), err, errlen) == -1)
		goto out;
	if ((lrc = seccomp_load(ctx)) < 0) {
		snprintf(err, errlen, "seccomp: cannot load the filter: %s",
		    strerror(-lrc));
		goto out;
	}
	rc = 0;
out:
	seccomp_release(ctx);
	return rc;
}

static int
ll_create(const struct ll_ruleset_attr *attr, size_t size, uint32_t flags)
{
	return (int)syscall(__NR_landlock_create_ruleset, attr, size, flags);
}

static const char *
secret_beneath(const struct sandbox_paths *p, const char *dir)
{
	size_t	 i, n = strlen(dir);

	for (i = 0; i < p->nsecret; i++)
		if (strncmp(p->secret[i], dir, n) == 0 &&
		    (p->secret[i][n] == '/' || p->secret[i][n] == '\0' ||
		    strcmp(dir, "/") == 0))
			return p->secret[i];
	return NULL;
}

/* One rule: path (a file gets its file rights only). 0 if missing. */
static int
ll_add(int ruleset, const char *path, uint64_t rights, uint64_t handled,
    char *err, size_t errlen)
{
	struct landlock_path_beneath_attr	 pb;
	struct stat				 sb;
	int					 fd;

	if ((fd = open(path, O_PATH | O_CLOEXEC)) == -1)
		return 0;
	if (fstat(fd, &sb) == 0 && !S_ISDIR(sb.st_mode))
		rights &= LL_FILE_RIGHTS;
	memset(&pb, 0, sizeof(pb));
	pb.allowed_access = rights & handled;
	pb.parent_fd = fd;
	if (pb.allowed_access != 0 && syscall(__NR_landlock_add_rule,
	    ruleset, LANDLOCK_RULE_PATH_BENEATH, &pb, 0) == -1) {
		snprintf(err, errlen, "landlock: %s: %s", path,
		    strerror(errno));
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/*
 * A configuration file: its directory unless a credential is beneath
 * it, then the file alone.
 */
static int
ll_add_conf(int ruleset, const struct sandbox_paths *p, const char *path,
    uint64_t handled, char *err, size_t errlen)
{
	char	 real[PATH_MAX], *slash;

	if (realpath(path, real) == NULL)
		return ll_add(ruleset, path, LL_READ, handled, err, errlen);
	if ((slash = strrchr(real, '/')) != NULL) {
		*slash = '\0';
		if (secret_beneath(p, *real == '\0' ? "/" : real) == NULL)
			return ll_add(ruleset, *real == '\0' ? "/" : real,
			    LL_READ, handled, err, errlen);
		*slash = '/';
	}
	return ll_add(ruleset, real, LL_FS_READ_FILE, handled, err, errlen);
}

/* The spool directory must exist to be granted; one level, as spool.c. */
static void
spool_dir_make(const char *dir)
{
	char	*parent, *slash;
	int	 fd;

	if (mkdir(dir, 0700) == -1)
		return;
	parent = xstrdup(dir);
	if ((slash = strrchr(parent, '/')) != NULL && slash[1] != '\0')
		slash[slash == parent] = '\0';
	if ((fd = open(slash != NULL ? parent : ".", O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) != -1) {
		fsync(fd);
		close(fd);
	}
	free(parent);
}

static int
ll_rules(int ruleset, const struct sandbox_paths *p, uint64_t handled,
    char *err, size_t errlen)
{
	char		 dir[PATH_MAX], *slash;
	const char	*s;
	size_t		 i;
	int		 rc = 0;

	for (i = 0; i < NELEM(system_read) && rc == 0; i++) {
		if ((s = secret_beneath(p, system_read[i])) != NULL)
			log_warnx("sandbox: %s is beneath %s, which relayd "
			    "reads: Landlock cannot keep it out; move it",
			    s, system_read[i]);
		rc = ll_add(ruleset, system_read[i], LL_READ, handled, err,
		    errlen);
	}
	for (i = 0; i < NELEM(system_rw) && rc == 0; i++)
		rc = ll_add(ruleset, system_rw[i], LL_FS_READ_FILE |
		    LL_FS_WRITE_FILE, handled, err, errlen);
	/* /proc/self is this process's: status (RSS), task/N/comm. */
	snprintf(dir, sizeof(dir), "/proc/%ld", (long)getpid());
	if (rc == 0)
		rc = ll_add(ruleset, dir, LL_READ | LL_FS_WRITE_FILE, handled,
		    err, errlen);
	if (rc == 0 && p->spool_dir != NULL) {
		spool_dir_make(p->spool_dir);
		rc = ll_add(ruleset, p->spool_dir, LL_SPOOL, handled, err,
		    errlen);
	}
	if (rc == 0 && p->status_socket != NULL &&
	    strlen(p->status_socket) < sizeof(dir)) {
		strlcpy_r(dir, p->status_socket, sizeof(dir));
		if ((slash = strrchr(dir, '/')) != NULL)
			slash[slash == dir] = '\0';
		rc = ll_add(ruleset, slash != NULL ? dir : ".",
		    LL_FS_MAKE_SOCK | LL_FS_REMOVE_FILE, handled, err, errlen);
	}
	for (i = 0; i < p->nread && rc == 0; i++)
		rc = ll_add_conf(ruleset, p, p->read[i], handled, err, errlen);
	return rc;
}

/* 0 in force (abi set), 1 the kernel has none (why set), -1 error. */
static int
landlock_enter(const struct sandbox_paths *p, int *abi, const char **why,
    char *err, size_t errlen)
{
	struct ll_ruleset_attr	 attr;
	size_t			 size = sizeof(attr.fs);
	int			 ruleset, rc;

	if ((*abi = ll_create(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)) < 0) {
		*why = errno == ENOSYS ? "not in this kernel" :
		    errno == EOPNOTSUPP ? "disabled at boot (lsm=)" :
		    "not available";
		return 1;
	}
	memset(&attr, 0, sizeof(attr));
	attr.fs = LL_FS_ABI1;
	if (*abi >= 2)
		attr.fs |= LL_FS_REFER;
	if (*abi >= 3)
		attr.fs |= LL_FS_TRUNCATE;
	if (*abi >= 5)
		attr.fs |= LL_FS_IOCTL_DEV;
	if (*abi >= 6) {
		attr.scoped = LL_SCOPE_SIGNAL;	/* no signals out */
		size = sizeof(attr);
	}
	if ((ruleset = ll_create(&attr, size, 0)) == -1) {
		snprintf(err, errlen, "landlock: create_ruleset: %s",
		    strerror(errno));
		return -1;
	}
	rc = ll_rules(ruleset, p, attr.fs, err, errlen);
	if (rc == 0 && syscall(__NR_landlock_restrict_self, ruleset, 0) == -1) {
		snprintf(err, errlen, "landlock: restrict_self: %s",
		    strerror(errno));
		rc = -1;
	}
	close(ruleset);
	return rc;
}

/* Threads now running: Landlock does not reach them. */
static long
threads_now(void)
{
	FILE	*fp;
	char	 line[128];
	long	 n = -1;

	if ((fp = fopen("/proc/self/status", "re")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), fp) != NULL)
		if (strncmp(line, "Threads:", 8) == 0)
			n = strtol(line + 8, NULL, 10);
	fclose(fp);
	return n;
}

static const char *
role_name(enum sandbox_role role)
{
	return role == SANDBOX_SMTP ? "smtp" : "deliver";
}

int
sandbox_enter(enum sandbox_role role, const struct sandbox_paths *p,
    char *err, size_t errlen)
{
	const char	*why = NULL;
	long		 threads = threads_now();
	int		 abi = 0, lrc, sanitizers = 0;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	sanitizers = 1;
#endif
	if (threads > 1)
		log_warnx("sandbox: %ld threads already run: Landlock binds "
		    "only this one and those it starts", threads);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) {
		snprintf(err, errlen, "sandbox: no_new_privs: %s",
		    strerror(errno));
		return -1;
	}
	if (running_on_valgrind()) {
		log_info("sandbox: no_new_privs only: valgrind runs this "
		    "process and does not pass seccomp(2) or Landlock's calls "
		    "on (3.19 answers ENOSYS)");
		return 0;
	}
	if ((lrc = landlock_enter(p, &abi, &why, err, errlen)) == -1 ||
	    seccomp_enter(role, sanitizers, err, errlen) == -1)
		return -1;
	if (lrc == 0)
		log_info("sandbox: seccomp on (%s%s), landlock ABI %d on",
		    role_name(role), sanitizers ? ", sanitizer calls too" :
		    "", abi);
	else
		log_info("sandbox: seccomp on (%s%s), landlock off: %s",
		    role_name(role), sanitizers ? ", sanitizer calls too" :
		    "", why);
	return 0;
}

static void
add_path(const char **list, size_t *n, const char *path)
{
	if (path != NULL && *path != '\0' && *n < SANDBOX_MAX_PATHS)
		list[(*n)++] = path;
}

/* A file no role but its owner's may read, by its realpath(). */
static void
add_secret(struct sandbox_paths *p, const char *path)
{
	static char	 real[SANDBOX_MAX_PATHS][PATH_MAX];

	if (path == NULL || *path == '\0' || p->nsecret >= SANDBOX_MAX_PATHS)
		return;
	if (realpath(path, real[p->nsecret]) == NULL)
		strlcpy_r(real[p->nsecret], path, sizeof(real[0]));
	add_path(p->secret, &p->nsecret, real[p->nsecret]);
}

void
sandbox_paths_from_config(struct sandbox_paths *p, const struct config *cfg,
    const char *conf_path, enum sandbox_role role)
{
	size_t		 i;
	int		 smtp = role == SANDBOX_SMTP;

	memset(p, 0, sizeof(*p));
	p->spool_dir = cfg->spool_dir;
	if (!smtp && cfg->status_socket != NULL &&
	    strcmp(cfg->status_socket, "none") != 0)
		p->status_socket = cfg->status_socket;
	add_path(p->read, &p->nread, conf_path);
	/* Public: TLS, and relayctl status shows when they expire. */
	add_path(p->read, &p->nread, cfg->tls_cert);
	add_path(p->read, &p->nread, cfg->ca_file);
	add_path(p->read, &p->nread, cfg->certificate_file);
	for (i = 0; i < cfg->nlisten; i++)
		add_path(p->read, &p->nread, cfg->listen[i].cert);
	/* The SMTP side's secrets: its own to read, deliver's never. */
	if (smtp) {
		add_path(p->read, &p->nread, cfg->users_file);
		add_path(p->read, &p->nread, cfg->tls_key);
		for (i = 0; i < cfg->nlisten; i++)
			add_path(p->read, &p->nread, cfg->listen[i].key);
	} else {
		add_secret(p, cfg->users_file);
		add_secret(p, cfg->tls_key);
		for (i = 0; i < cfg->nlisten; i++)
			add_secret(p, cfg->listen[i].key);
	}
	/* The Graph credential: the token process's alone. */
	add_secret(p, cfg->client_secret_file);
	add_secret(p, cfg->private_key_file);
	add_secret(p, getenv("CREDENTIALS_DIRECTORY"));
	/* The deliver process reads it before it enters; nobody after. */
	add_secret(p, cfg->cluster_password_file);
}

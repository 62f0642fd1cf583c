/*
 * token_proc.c - the token process ("relayd: token").
 *
 * The only process that reads client_secret_file, private_key_file or the
 * systemd credential, and the only one that holds what comes of them (the
 * secret, the key, each signed assertion). It fetches access tokens with
 * token.c and hands out those only, one answer per request (struct
 * token_req / token_rep in token.h) on each connection the parent passes
 * (CTL_TOKEN_FD: one per relay child started). A fetch blocks this loop:
 * requests wait, and the client's timeout bounds the wait.
 *
 * SIGHUP: the config file again and the credential it names (the parent
 * checked the file first); a changed credential is told to the parent
 * (CTL_CRED_CHANGED), which tells the delivery child so that messages that
 * waited for a token are tried at once. SIGTERM, SIGINT, or the parent's
 * end of the control socket closing: exit.
 */
#include <sys/signalfd.h>
#include <sys/socket.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include "config.h"
#include "config_check.h"
#include "http.h"
#include "log.h"
#include "proc.h"
#include "token.h"
#include "util.h"

#define TOKEN_CLIENTS	4	/* connections kept; a new one ends the oldest */

struct token_proc {
	const char		*path;
	struct token_src	*src;
	CURL			*curl;
	int			 ctl;
	int			 clients[TOKEN_CLIENTS];
};

/* The config's credential again; today's reload log lines. */
static void
reload(struct token_proc *tp)
{
	struct config	*cfg;
	FILE		*mf;
	char		*errs = NULL, err[512];
	size_t		 len = 0;
	int		 rc;

	if ((mf = open_memstream(&errs, &len)) == NULL)
		return;
	cfg = config_load(tp->path, mf);	/* the parent logged its errors */
	fclose(mf);
	free(errs);
	if (cfg == NULL) {
		log_warnx("reload: credential not re-read: %s has errors; the "
		    "one in use stays", tp->path);
		return;
	}
	if ((rc = token_src_reload(tp->src, cfg, err, sizeof(err))) == -1)
		log_warnx("reload: credential not re-read: %s; the one in "
		    "use stays", err);
	else if (cfg->certificate_file != NULL)
		log_info("reload: credentials re-read: certificate_file=%s "
		    "private_key_file=%s (%s)", cfg->certificate_file,
		    cfg->private_key_file, rc == 1 ? "changed" : "unchanged");
	else
		log_info("reload: credentials re-read: client_secret_file=%s "
		    "(%s)", cfg->client_secret_file, rc == 1 ? "changed" :
		    "unchanged");
	if (rc == 1)
		ctl_send(tp->ctl, CTL_CRED_CHANGED, 0, -1);
	config_free(cfg);
}

/* One request on connection i: the token (or why not) as the answer. */
static void
serve(struct token_proc *tp, int i)
{
	struct token_req	 req;
	struct token_rep	 rep;
	struct token_failure	 f;
	struct iovec		 iov[2];
	struct msghdr		 mh;
	char			 buf[sizeof(req) + TOKEN_WIRE_MAX + 1];
	char			*access = NULL, *bad;
	ssize_t			 n;

	n = recv(tp->clients[i], buf, sizeof(buf) - 1, 0);
	if (n == -1 && errno == EINTR)
		return;
	if (n < (ssize_t)sizeof(req)) {
		close(tp->clients[i]);	/* the delivery child went away */
		tp->clients[i] = -1;
		return;
	}
	memcpy(&req, buf, sizeof(req));
	memset(&rep, 0, sizeof(rep));
	rep.seq = req.seq;
	if (req.badlen > 0 && req.badlen <= (size_t)n - sizeof(req)) {
		bad = buf + sizeof(req);
		bad[req.badlen] = '\0';
		token_src_invalidate(tp->src, bad);
	}
	explicit_bzero(buf, sizeof(buf));
	access = token_src_get(tp->src, tp->curl, rep.error,
	    sizeof(rep.error));
	if (access != NULL && strlen(access) <= TOKEN_WIRE_MAX)
		rep.len = (uint32_t)strlen(access);
	rep.expires_ms = token_src_expires_in(tp->src);
	rep.refresh_ms = token_src_refresh_in(tp->src);
	rep.retry_ms = token_src_retry_in(tp->src);
	token_src_failure(tp->src, &f);
	rep.nfails = f.count;
	rep.fail_since = f.since_ms;
	if (access != NULL && rep.len == 0)
		snprintf(rep.error, sizeof(rep.error), "the access token is "
		    "longer than %d bytes", TOKEN_WIRE_MAX);
	else if (f.count > 0 && access == NULL)
		snprintf(rep.error, sizeof(rep.error), "%s", f.error);
	iov[0].iov_base = &rep;
	iov[0].iov_len = sizeof(rep);
	iov[1].iov_base = access != NULL ? access : (void *)(uintptr_t)"";
	iov[1].iov_len = rep.len;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = iov;
	mh.msg_iovlen = 2;
	if (sendmsg(tp->clients[i], &mh, MSG_NOSIGNAL) == -1) {
		close(tp->clients[i]);
		tp->clients[i] = -1;
	}
	if (access != NULL) {
		explicit_bzero(access, strlen(access));
		free(access);
	}
}

static void
add_client(struct token_proc *tp, int fd)
{
	int	 i;

	for (i = 0; i < TOKEN_CLIENTS; i++)
		if (tp->clients[i] == -1) {
			tp->clients[i] = fd;
			return;
		}
	close(tp->clients[0]);
	memmove(tp->clients, tp->clients + 1, (TOKEN_CLIENTS - 1) *
	    sizeof(int));
	tp->clients[TOKEN_CLIENTS - 1] = fd;
}

/* A message from the parent: 0 to go on, -1 to stop (it is gone). */
static int
parent_msg(struct token_proc *tp)
{
	struct ctl_msg	 m;
	int		 fd;

	if (ctl_recv(tp->ctl, &m, &fd) <= 0)
		return errno == EINTR ? 0 : -1;
	if (m.type == CTL_TOKEN_FD && fd != -1)
		add_client(tp, fd);
	else if (fd != -1)
		close(fd);
	return 0;
}

static void
loop(struct token_proc *tp, int sfd)
{
	struct pollfd			 pfd[2 + TOKEN_CLIENTS];
	struct signalfd_siginfo		 si;
	int				 i, n;

	for (;;) {
		pfd[0].fd = sfd;
		pfd[1].fd = tp->ctl;
		for (i = 0; i < TOKEN_CLIENTS; i++)
			pfd[2 + i].fd = tp->clients[i];
		for (i = 0; i < 2 + TOKEN_CLIENTS; i++) {
			pfd[i].events = POLLIN;
			pfd[i].revents = 0;
		}
		if ((n = poll(pfd, 2 + TOKEN_CLIENTS, -1)) == -1) {
			if (errno == EINTR)
				continue;
			log_warn("token: poll");
			return;
		}
		if (pfd[0].revents & POLLIN &&
		    read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
			if (si.ssi_signo == SIGHUP)
				reload(tp);
			else
				return;
		}
		if (pfd[1].revents != 0 && parent_msg(tp) == -1)
			return;
		for (i = 0; i < TOKEN_CLIENTS; i++)
			if (tp->clients[i] != -1 && pfd[2 + i].revents != 0)
				serve(tp, i);
	}
}

int
token_proc(const char *path, const struct config *cfg, int ctl)
{
	struct token_proc	 tp;
	sigset_t		 set;
	char			 err[512];
	int			 i, sfd;

	memset(&tp, 0, sizeof(tp));
	tp.path = path;
	tp.ctl = ctl;
	for (i = 0; i < TOKEN_CLIENTS; i++)
		tp.clients[i] = -1;
	if (http_init(cfg, err, sizeof(err)) == -1 ||
	    (tp.src = token_src_new(cfg, err, sizeof(err))) == NULL) {
		log_msg(LOG_LVL_ERR, "%s", err);
		return EX_CONFIG;
	}
	tp.curl = http_handle_new(cfg);
	/* Blocked by the parent before the fork: they wait for the loop. */
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if ((sfd = signalfd(-1, &set, SFD_CLOEXEC)) == -1)
		fatal("token: signalfd");
	ctl_send(ctl, CTL_READY, 0, -1);
	loop(&tp, sfd);
	close(sfd);
	for (i = 0; i < TOKEN_CLIENTS; i++)
		if (tp.clients[i] != -1)
			close(tp.clients[i]);
	curl_easy_cleanup(tp.curl);
	token_src_free(tp.src);
	http_cleanup();
	return 0;
}

/* smtp_proto.h - SMTP syntax: commands, paths, parameters, DATA decoding. Pure. */
#ifndef RELAYD_SMTP_PROTO_H
#define RELAYD_SMTP_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define SMTP_PATH_MAX		256	/* RFC 5321 4.5.3.1.3 */
#define SMTP_DOMAIN_MAX		255

enum smtp_cmd {
	CMD_HELO, CMD_EHLO, CMD_MAIL, CMD_RCPT, CMD_DATA, CMD_BDAT, CMD_RSET,
	CMD_NOOP, CMD_QUIT, CMD_HELP, CMD_VRFY, CMD_EXPN, CMD_STARTTLS,
	CMD_AUTH, CMD_HTTP, CMD_UNKNOWN
};

/* Finds the verb (any case) and points args past it and one space. */
enum smtp_cmd	 smtp_cmd_parse(const char *, const char **);
const char	*smtp_cmd_name(enum smtp_cmd);

/*
 * "FROM:<a@b> SIZE=10" with prefix "FROM:". Copies the address (without
 * brackets; empty for <>) into addr and points params at what follows.
 * Returns 0, or -1 with a short reason. *utf8 is set if the address has
 * non-ASCII (valid UTF-8 only) characters.
 */
int	 smtp_parse_path(const char *, const char *, char *, size_t,
	    const char **, int *, const char **);

/* Iterates "KEY=VALUE KEY2" parameters. Returns 1 while there is one. */
int	 smtp_param_next(const char **, char *, size_t, char *, size_t);

/* "123 LAST" for BDAT. */
int	 smtp_parse_bdat(const char *, uint64_t *, int *);

/*
 * The first header field called name in a header block (len bytes, up to
 * its blank line), unfolded and trimmed, into out: its length, or 0 if
 * there is none. Pure.
 */
size_t	 smtp_header_value(const char *, size_t, const char *, char *,
	    size_t);

/* 1 if s is a name fit for HELO/EHLO (domain or address literal). */
int	 smtp_valid_helo(const char *);

/*
 * DATA stream decoder. Only CRLF "." CRLF ends the data; a bare CR or LF
 * never does. Lines beginning with "." lose it (dot-unstuffing). With
 * normalize set, bare CR and LF become CRLF; otherwise they are passed
 * through and counted in bare, so the caller can refuse the message.
 */
enum { DEC_BOL, DEC_DOT, DEC_DOTCR, DEC_TEXT, DEC_CR };

struct data_dec {
	int		 state;
	int		 normalize;
	uint64_t	 bare;		/* bare CR or LF seen */
	uint32_t	 tail;		/* the last bytes in, newest lowest */
};

void	 data_dec_init(struct data_dec *, int);
/*
 * 1 if the last bytes in were "\n.\n": a client that ends its data with
 * bare LFs, which is no end of data (RFC 5321 wants CRLF.CRLF).
 */
int	 data_dec_lf_end(const struct data_dec *);
/*
 * The most one data_dec_run() call writes for n bytes: each byte makes at
 * most two (a bare LF normalized to CRLF), and a "." CR held over from the
 * call before makes "." CRLF on top.
 */
#define DATA_DEC_OUTMAX(n)	(2 * (n) + 2)
/*
 * Decodes up to inlen bytes into out, which must hold
 * DATA_DEC_OUTMAX(inlen) bytes. Returns the bytes consumed; *outlen gets
 * the bytes produced; *end is set when the end-of-data line was consumed
 * (it is not part of the output).
 */
size_t	 data_dec_run(struct data_dec *, const char *, size_t, char *,
	    size_t *, int *);

#endif

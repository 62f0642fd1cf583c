/* repair.h - the edits a malformed message needs before it is parsed. */
#ifndef RELAYD_REPAIR_H
#define RELAYD_REPAIR_H

#include <stddef.h>
#include <stdint.h>

/* At off: del bytes go, then ins (a static string, or NULL) comes. */
struct repair_edit {
	uint64_t	 off;
	unsigned	 del;
	const char	*ins;
};

/* In increasing order of off; none for a well-formed message. */
struct repair {
	struct repair_edit	*e;
	size_t			 n, cap;
};

/*
 * Finds the edits for a message (CRLF, as received): a byte-order mark
 * before the first header goes; a line in a header block that is neither
 * a field nor a continuation is joined to the field above when more fields
 * follow before a blank or boundary line, else the body starts there (a
 * blank line before it); a boundary line right after a header block gets
 * a blank line before it; a Content-Type that can't be read is renamed
 * (see repair_type_ok), one missing the ';' before a parameter gets it. In memory, or len bytes at off in fd (read with
 * pread, a window at a time). Returns 0, or -1 on a read error.
 */
int	 repair_scan_mem(const char *, size_t, struct repair *);
int	 repair_scan_fd(int, uint64_t, uint64_t, struct repair *);
/*
 * 1 if a Content-Type value reads as type "/" subtype (RFC 2045 tokens),
 * then parameters or nothing. The repair renames a block's first
 * Content-Type that does not (or a multipart one without a boundary) to
 * Content-Type-Ignored (a Content- field stays with its MIME part), and
 * later ones too: the first one counts.
 */
int	 repair_type_ok(const char *);
#define REPAIR_IGNORED_CT	"Content-Type-Ignored"
/* The message with the edits made: a new buffer, NUL-terminated. */
char	*repair_apply(const char *, size_t, const struct repair *, size_t *);
void	 repair_free(struct repair *);

#endif

/* mime.h - charsets, UTF-8 repair and base64 for the Graph mapping. */
#ifndef RELAYD_MIME_H
#define RELAYD_MIME_H

#include <stddef.h>

/* Once per process, before any thread uses GMime (g_mime_init). */
void	 mime_init(void);

/*
 * Converts text in the named charset to UTF-8. A missing, ASCII or unknown
 * label means UTF-8 if the bytes are valid UTF-8, else windows-1252. Bytes
 * that are invalid in the charset become U+FFFD; nothing is dropped. Labels
 * are read the way browsers read them (ISO-8859-1 as windows-1252,
 * Shift_JIS as CP932). Returns a NUL-terminated malloc'd string.
 */
char	*mime_to_utf8(const char *, const char *, size_t, size_t *);

/* 1 if the bytes are valid UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int	 mime_utf8_valid(const char *, size_t);
/* Copies, replacing each maximal invalid subsequence with U+FFFD. */
char	*mime_utf8_repair(const char *, size_t, size_t *);

/* Standard base64 with padding, no line breaks. out holds 4*((n+2)/3). */
size_t	 mime_b64_encode(const unsigned char *, size_t, char *);
#define MIME_B64_LEN(n)	(4 * (((n) + 2) / 3))
/*
 * Removes line breaks and white space from base64 text into out (which
 * holds len bytes, and may be in itself). Returns the length if the result is canonical base64
 * (the exact encoding of its decoded bytes, so it can be passed on as is),
 * or -1 if it is not and must be decoded and encoded again.
 */
long	 mime_b64_canonical(const char *, size_t, char *);

#endif

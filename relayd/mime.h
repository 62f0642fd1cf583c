/* mime.h - charsets, UTF-8 repair and base64 for the Graph mapping. */
#ifndef RELAYD_MIME_H
#define RELAYD_MIME_H

#include <stddef.h>
#include <stdint.h>

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

/*
 * A base64 decoder fed in pieces, lenient as mail readers are: characters
 * outside the alphabet are skipped, a last group of 2 or 3 characters
 * without its padding still gives its bytes, a single stray character is
 * ignored, a lone '=' inside a group is a slip, and padding that
 * completes a group ends the data (RFC 2045 section 6.8: text after it is
 * not decoded). step writes at most 3 * (n / 4 + 2) bytes, end at most 2.
 */
struct mime_b64dec {
	uint32_t	 v;
	unsigned	 n;
	int		 pad;		/* one '=' after two characters */
	int		 done;		/* padding ended the data */
};
void	 mime_b64_dec_init(struct mime_b64dec *);
size_t	 mime_b64_dec_step(struct mime_b64dec *, const char *, size_t,
	    unsigned char *);
size_t	 mime_b64_dec_end(struct mime_b64dec *, unsigned char *);
#define MIME_B64_DEC_MAX(n)	(3 * ((n) / 4 + 2))
/* All at once: out holds MIME_B64_DEC_MAX(n). Returns the byte count. */
size_t	 mime_b64_decode(const char *, size_t, unsigned char *);

/*
 * Decodes the RFC 2047 encoded words in unstructured text (a Subject, a
 * file name) to UTF-8, in full: white space between two words goes, the
 * bytes of adjacent words in one charset are converted together, a base64
 * word may lack its padding, and words need not stand apart from other
 * text. Text outside words is taken as UTF-8, else windows-1252. Does not
 * depend on GMime's decoder (3.2.13 drops the words after a padded one).
 */
char	*mime_decode_words(const char *, size_t, size_t *);
/*
 * An address header's value with each run of encoded words replaced by
 * its decoded text as a quoted string (escaped inside a quoted string or
 * a comment; left alone inside <>), ready for an address parser.
 */
char	*mime_decode_address_words(const char *);

#endif

/* tls.h - OpenSSL server contexts for the SMTP listeners. */
#ifndef RELAYD_TLS_H
#define RELAYD_TLS_H

#include <stddef.h>
#include <time.h>

#include <openssl/ssl.h>

struct listen_cfg;

/*
 * A server context for one listener: its certificate chain and key, the
 * oldest protocol it accepts, OpenSSL's current cipher defaults, session
 * resumption (cache and tickets). NULL with the reason in err.
 */
SSL_CTX	*tls_ctx_new(const struct listen_cfg *, char *, size_t);
/*
 * What is wrong with a certificate file and its key, in words (OpenSSL's
 * text only as detail at the end): which of the two, or that they are of
 * two pairs. TLS_PAIR_OK, or the problem with the reason in err.
 */
enum { TLS_PAIR_OK, TLS_PAIR_CERT, TLS_PAIR_KEY, TLS_PAIR_MISMATCH };
int	 tls_check_pair(const char *, const char *, char *, size_t);
/* When the (first) certificate in a PEM file expires: 0, or -1. */
int	 tls_cert_expiry(const char *, time_t *);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384" for the log. */
void	 tls_describe(const SSL *, char *, size_t);
/* The last OpenSSL error as text ("" if none); clears the queue. */
void	 tls_error(char *, size_t);
/* Do these first bytes of a connection start a TLS handshake? Pure. */
int	 tls_is_client_hello(const unsigned char *, size_t);

#endif

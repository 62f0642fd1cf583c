/*
 * tls.c - OpenSSL server contexts for the SMTP listeners.
 *
 * One SSL_CTX per listener, made at start: certificate chain and key (and a
 * check that they match), the listener's oldest protocol (tls_min; TLS 1.0
 * and 1.1 need OpenSSL's security level 0, which only such a listener gets),
 * OpenSSL's default ciphers and groups, a server session cache and tickets
 * for resumption. No client certificates are asked for.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "config.h"
#include "tls.h"
#include "util.h"

void
tls_error(char *buf, size_t len)
{
	unsigned long	 e = ERR_get_error();

	if (e == 0)
		snprintf(buf, len, "unknown error");
	else
		ERR_error_string_n(e, buf, len);
	ERR_clear_error();
}

SSL_CTX *
tls_ctx_new(const struct listen_cfg *lc, char *err, size_t errlen)
{
	static const int	 versions[] = { TLS1_VERSION, TLS1_1_VERSION,
	    TLS1_2_VERSION, TLS1_3_VERSION };
	static const unsigned char sid_ctx[] = "relayd-smtp";
	SSL_CTX			*ctx;
	char			 why[256];

	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
		tls_error(why, sizeof(why));
		snprintf(err, errlen, "listen %s: TLS: %s", lc->text, why);
		return NULL;
	}
	if (lc->tls_min < TLS_V1_2)
		SSL_CTX_set_security_level(ctx, 0);
	SSL_CTX_set_min_proto_version(ctx, versions[lc->tls_min]);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	if (SSL_CTX_use_certificate_chain_file(ctx, lc->cert) != 1) {
		tls_error(why, sizeof(why));
		snprintf(err, errlen, "listen %s: certificate %s: %s",
		    lc->text, lc->cert, why);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, lc->key, SSL_FILETYPE_PEM) != 1) {
		tls_error(why, sizeof(why));
		snprintf(err, errlen, "listen %s: key %s: %s", lc->text,
		    lc->key, why);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(err, errlen, "listen %s: key %s does not belong to "
		    "certificate %s", lc->text, lc->key, lc->cert);
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

/* Never asks for a pass phrase: an encrypted key just fails to load. */
static int
no_passphrase(char *buf, int size, int rw, void *u)
{
	(void)buf;
	(void)size;
	(void)rw;
	(void)u;
	return -1;
}

static X509 *
read_cert(const char *path)
{
	BIO	*b;
	X509	*x = NULL;

	if ((b = BIO_new_file(path, "r")) != NULL) {
		x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL);
		BIO_free(b);
	}
	return x;
}

int
tls_check_pair(const char *cert, const char *key, char *err, size_t errlen)
{
	X509		*x;
	EVP_PKEY	*k = NULL;
	BIO		*b;
	char		 why[256];
	int		 rc = TLS_PAIR_OK;

	if ((x = read_cert(cert)) == NULL) {
		tls_error(why, sizeof(why));
		snprintf(err, errlen, "\"%s\" holds no PEM certificate "
		    "(-----BEGIN CERTIFICATE-----); (OpenSSL: %s)", cert, why);
		return TLS_PAIR_CERT;
	}
	if ((b = BIO_new_file(key, "r")) != NULL) {
		k = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL);
		BIO_free(b);
	}
	if (k == NULL) {
		tls_error(why, sizeof(why));
		snprintf(err, errlen, "\"%s\" holds no PEM private key, or "
		    "one protected by a pass phrase (relayd needs it "
		    "unencrypted); (OpenSSL: %s)", key, why);
		rc = TLS_PAIR_KEY;
	} else if (X509_check_private_key(x, k) != 1) {
		tls_error(why, sizeof(why));
		snprintf(err, errlen, "the key \"%s\" does not belong to the "
		    "certificate \"%s\" (they are of two different pairs); "
		    "(OpenSSL: %s)", key, cert, why);
		rc = TLS_PAIR_MISMATCH;
	}
	EVP_PKEY_free(k);
	X509_free(x);
	return rc;
}

int
tls_cert_expiry(const char *path, time_t *when)
{
	X509		*x;
	struct tm	 tm;
	int		 rc = -1;

	if ((x = read_cert(path)) == NULL) {
		ERR_clear_error();
		return -1;
	}
	if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1) {
		*when = timegm(&tm);
		rc = 0;
	}
	X509_free(x);
	return rc;
}

void
tls_describe(const SSL *ssl, char *buf, size_t len)
{
	snprintf(buf, len, "version=%s cipher=%s resumed=%s",
	    SSL_get_version(ssl), SSL_get_cipher_name(ssl),
	    SSL_session_reused((SSL *)(uintptr_t)ssl) ? "yes" : "no");
}

int
tls_is_client_hello(const unsigned char *p, size_t n)
{
	/* Record type handshake (22), version 3.x, then ClientHello (1). */
	return n >= 3 && p[0] == 0x16 && p[1] == 0x03 && p[2] <= 0x04 &&
	    (n < 6 || p[5] == 0x01);
}

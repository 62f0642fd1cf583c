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

#include <openssl/err.h>
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

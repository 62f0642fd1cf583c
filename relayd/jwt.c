/*
 * jwt.c - client assertions: the JWT (RFC 7523) that proves to Entra that
 * relayd holds the private key of a certificate registered on the app.
 *
 * The header names the certificate by its thumbprint: x5t#S256 (SHA-256 of
 * the DER) with PS256, x5t (SHA-1) with RS256. PS256 is RSASSA-PSS with
 * SHA-256, MGF1 SHA-256 and a salt as long as the digest (RFC 7518 3.5);
 * OpenSSL 3.0 signs with the longest salt that fits unless told, which a
 * strict verifier refuses, so the salt length is set here. RSA keys only:
 * both algorithms are RSA.
 *
 * The key stays in this module's memory; neither it nor an assertion is
 * ever logged.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "jwt.h"
#include "util.h"

struct jwt_key {
	X509		*cert;
	EVP_PKEY	*pkey;
	enum jwt_alg	 alg;
	char		*thumb;		/* base64url x5t#S256 or x5t */
};

/* Never prompt for a passphrase: an encrypted key just fails to load. */
static int
no_passphrase(char *buf, int size, int rw, void *arg)
{
	return -1;
}

/* The first certificate, or the private key, of a PEM file; NULL with err. */
static void *
read_pem(const char *path, int key, char *err, size_t errlen)
{
	const char	*what = key ? "private_key_file" : "certificate_file";
	void		*obj;
	FILE		*fp;

	if ((fp = fopen(path, "r")) == NULL) {
		snprintf(err, errlen, "%s \"%s\": %s", what, path,
		    strerror(errno));
		return NULL;
	}
	obj = key ? (void *)PEM_read_PrivateKey(fp, NULL, no_passphrase, NULL) :
	    (void *)PEM_read_X509(fp, NULL, no_passphrase, NULL);
	fclose(fp);
	if (obj == NULL)
		snprintf(err, errlen, "%s \"%s\": no PEM %s in it", what, path,
		    key ? "private key (an encrypted key is not supported)" :
		    "certificate");
	return obj;
}

struct jwt_key *
jwt_key_load(const char *cert, const char *key, enum jwt_alg alg, char *err,
    size_t errlen)
{
	struct jwt_key	*k = xcalloc(1, sizeof(*k));
	unsigned char	 md[EVP_MAX_MD_SIZE];
	unsigned int	 mdlen;

	k->alg = alg;
	if ((k->cert = read_pem(cert, 0, err, errlen)) == NULL ||
	    (k->pkey = read_pem(key, 1, err, errlen)) == NULL)
		goto fail;
	if (EVP_PKEY_base_id(k->pkey) != EVP_PKEY_RSA) {
		snprintf(err, errlen, "private_key_file \"%s\": not an RSA key "
		    "(PS256 and RS256 need RSA)", key);
		goto fail;
	}
	if (X509_check_private_key(k->cert, k->pkey) != 1) {
		snprintf(err, errlen, "private_key_file \"%s\" does not belong "
		    "to certificate_file \"%s\"", key, cert);
		goto fail;
	}
	if (X509_digest(k->cert, alg == JWT_PS256 ? EVP_sha256() : EVP_sha1(),
	    md, &mdlen) != 1) {
		snprintf(err, errlen, "certificate_file \"%s\": cannot take "
		    "its thumbprint", cert);
		goto fail;
	}
	k->thumb = jwt_b64url(md, mdlen);
	return k;
fail:
	ERR_clear_error();
	jwt_key_free(k);
	return NULL;
}

void
jwt_key_free(struct jwt_key *k)
{
	if (k == NULL)
		return;
	X509_free(k->cert);
	EVP_PKEY_free(k->pkey);
	free(k->thumb);
	free(k);
}

int
jwt_key_expired(const struct jwt_key *k, char *when, size_t whenlen)
{
	const ASN1_TIME	*na = X509_get0_notAfter(k->cert);
	BIO		*b;
	int		 n;

	if (X509_cmp_current_time(na) >= 0)
		return 0;
	when[0] = '\0';
	if ((b = BIO_new(BIO_s_mem())) != NULL) {
		if (ASN1_TIME_print(b, na) == 1 &&
		    (n = BIO_read(b, when, (int)whenlen - 1)) > 0)
			when[n] = '\0';
		BIO_free(b);
	}
	return 1;
}

char *
jwt_b64url(const void *data, size_t len)
{
	char	*out = xmalloc(4 * ((len + 2) / 3) + 1), *p;
	int	 n;

	n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	while (n > 0 && out[n - 1] == '=')
		n--;
	out[n] = '\0';
	for (p = out; *p != '\0'; p++)
		if (*p == '+')
			*p = '-';
		else if (*p == '/')
			*p = '_';
	return out;
}

/* A json-c object as compact text, malloc'd; takes the object. */
static char *
json_text(json_object *o)
{
	char	*s = xstrdup(json_object_to_json_string_ext(o,
	    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));

	json_object_put(o);
	return s;
}

char *
jwt_header(const struct jwt_key *k)
{
	json_object	*h = json_object_new_object();

	json_object_object_add(h, "alg", json_object_new_string(
	    k->alg == JWT_PS256 ? "PS256" : "RS256"));
	json_object_object_add(h, "typ", json_object_new_string("JWT"));
	json_object_object_add(h, k->alg == JWT_PS256 ? "x5t#S256" : "x5t",
	    json_object_new_string(k->thumb));
	return json_text(h);
}

char *
jwt_claims(const char *client_id, const char *aud, const char *jti,
    time_t now)
{
	json_object	*c = json_object_new_object();

	json_object_object_add(c, "aud", json_object_new_string(aud));
	json_object_object_add(c, "iss", json_object_new_string(client_id));
	json_object_object_add(c, "sub", json_object_new_string(client_id));
	json_object_object_add(c, "jti", json_object_new_string(jti));
	json_object_object_add(c, "nbf", json_object_new_int64(now));
	json_object_object_add(c, "iat", json_object_new_int64(now));
	json_object_object_add(c, "exp",
	    json_object_new_int64(now + JWT_LIFETIME_S));
	return json_text(c);
}

/* A random (version 4) GUID. */
static int
new_guid(char out[37])
{
	unsigned char	 b[16];

	if (RAND_bytes(b, sizeof(b)) != 1)
		return -1;
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
	    "%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5],
	    b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
	return 0;
}

/* The signature of in, malloc'd; NULL on failure. */
static unsigned char *
sign(const struct jwt_key *k, const char *in, size_t *siglen)
{
	EVP_MD_CTX	*md;
	EVP_PKEY_CTX	*pc;
	unsigned char	*sig = NULL;
	size_t		 n = strlen(in);

	if ((md = EVP_MD_CTX_new()) == NULL)
		return NULL;
	if (EVP_DigestSignInit(md, &pc, EVP_sha256(), NULL, k->pkey) != 1)
		goto out;
	if (k->alg == JWT_PS256 &&
	    (EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) != 1 ||
	    EVP_PKEY_CTX_set_rsa_mgf1_md(pc, EVP_sha256()) != 1 ||
	    EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST) != 1))
		goto out;
	if (EVP_DigestSign(md, NULL, siglen, (const unsigned char *)in, n) !=
	    1)
		goto out;
	sig = xmalloc(*siglen);
	if (EVP_DigestSign(md, sig, siglen, (const unsigned char *)in, n) !=
	    1) {
		free(sig);
		sig = NULL;
	}
out:
	EVP_MD_CTX_free(md);
	ERR_clear_error();
	return sig;
}

char *
jwt_assertion(const struct jwt_key *k, const char *client_id,
    const char *aud, time_t now, char *err, size_t errlen)
{
	char		 jti[37], *header, *claims, *h64, *c64, *input, *s64;
	char		*out = NULL;
	unsigned char	*sig;
	size_t		 siglen;

	if (new_guid(jti) == -1) {
		snprintf(err, errlen, "client assertion: no random bytes for "
		    "its jti");
		return NULL;
	}
	header = jwt_header(k);
	claims = jwt_claims(client_id, aud, jti, now);
	h64 = jwt_b64url(header, strlen(header));
	c64 = jwt_b64url(claims, strlen(claims));
	xasprintf(&input, "%s.%s", h64, c64);
	if ((sig = sign(k, input, &siglen)) == NULL)
		snprintf(err, errlen, "client assertion: signing failed");
	else {
		s64 = jwt_b64url(sig, siglen);
		xasprintf(&out, "%s.%s", input, s64);
		free(s64);
		free(sig);
	}
	free(header);
	free(claims);
	free(h64);
	free(c64);
	free(input);
	return out;
}

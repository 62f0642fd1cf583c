/*
 * Unit tests for jwt.c: base64url, the header and claims JSON, assertions
 * whose signatures OpenSSL verifies with the certificate (PSS with a
 * 32-byte salt for PS256, PKCS#1 v1.5 for RS256), and the key checks.
 * Keys and certificates are made here, in a temporary directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "jwt.h"

#define AUD	"https://login.example.test/contoso/oauth2/v2.0/token"

static char	 dir[] = "/tmp/test_jwt.XXXXXX";
static char	 cert_pem[256], key_pem[256], other_key_pem[256];
static char	 ec_key_pem[256], old_cert_pem[256];
static X509	*cert;

static void
write_key(const char *path, EVP_PKEY *k)
{
	FILE	*fp = fopen(path, "w");

	assert_non_null(fp);
	assert_int_equal(PEM_write_PrivateKey(fp, k, NULL, NULL, 0, NULL,
	    NULL), 1);
	fclose(fp);
}

/* A self-signed certificate valid from now+from to now+to seconds. */
static X509 *
write_cert(const char *path, EVP_PKEY *k, long from, long to)
{
	X509		*x = X509_new();
	X509_NAME	*n = X509_get_subject_name(x);
	FILE		*fp;

	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), from);
	X509_gmtime_adj(X509_getm_notAfter(x), to);
	X509_set_pubkey(x, k);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
	    (const unsigned char *)"relayd test", -1, -1, 0);
	X509_set_issuer_name(x, n);
	assert_true(X509_sign(x, k, EVP_sha256()) > 0);
	assert_non_null(fp = fopen(path, "w"));
	assert_int_equal(PEM_write_X509(fp, x), 1);
	fclose(fp);
	return x;
}

static int
setup(void **state)
{
	EVP_PKEY	*k, *other, *ec;

	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(cert_pem, sizeof(cert_pem), "%s/cert.pem", dir);
	snprintf(key_pem, sizeof(key_pem), "%s/key.pem", dir);
	snprintf(other_key_pem, sizeof(other_key_pem), "%s/other.pem", dir);
	snprintf(ec_key_pem, sizeof(ec_key_pem), "%s/ec.pem", dir);
	snprintf(old_cert_pem, sizeof(old_cert_pem), "%s/old.pem", dir);
	k = EVP_RSA_gen(2048);
	other = EVP_RSA_gen(2048);
	ec = EVP_EC_gen("P-256");
	write_key(key_pem, k);
	write_key(other_key_pem, other);
	write_key(ec_key_pem, ec);
	cert = write_cert(cert_pem, k, -3600, 86400);
	X509_free(write_cert(old_cert_pem, k, -3 * 86400, -86400));
	EVP_PKEY_free(k);
	EVP_PKEY_free(other);
	EVP_PKEY_free(ec);
	return 0;
}

static int
teardown(void **state)
{
	const char	*files[] = { cert_pem, key_pem, other_key_pem,
			    ec_key_pem, old_cert_pem };
	size_t		 i;

	for (i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		unlink(files[i]);
	rmdir(dir);
	X509_free(cert);
	return 0;
}

/* base64url text back to bytes (n: their count). */
static unsigned char *
b64url_decode(const char *s, size_t len, size_t *n)
{
	char		*std = calloc(1, len + 4);
	unsigned char	*out = calloc(1, len + 4);
	size_t		 i, pad = (4 - len % 4) % 4;
	int		 got;

	for (i = 0; i < len; i++)
		std[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
	memset(std + len, '=', pad);
	got = EVP_DecodeBlock(out, (unsigned char *)std, (int)(len + pad));
	assert_true(got >= 0);
	*n = (size_t)got - pad;
	free(std);
	return out;
}

static char *
thumbprint(const EVP_MD *md)
{
	unsigned char	 d[EVP_MAX_MD_SIZE];
	unsigned int	 n;

	assert_int_equal(X509_digest(cert, md, d, &n), 1);
	return jwt_b64url(d, n);
}

static void
test_b64url(void **state)
{
	static const struct {
		const char	*in;
		size_t		 len;
		const char	*want;
	} cases[] = {
		{ "", 0, "" },
		{ "f", 1, "Zg" },
		{ "fo", 2, "Zm8" },
		{ "foo", 3, "Zm9v" },
		{ "foob", 4, "Zm9vYg" },
		{ "\xfb\xff", 2, "-_8" },		/* "+/8=" in base64 */
		{ "\x00\x00\x3e", 3, "AAA-" },
		{ "\xff\xff\xff", 3, "____" },
	};
	size_t	 i;
	char	*got;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		got = jwt_b64url(cases[i].in, cases[i].len);
		if (strcmp(got, cases[i].want) != 0)
			fail_msg("case %zu: got \"%s\", want \"%s\"", i, got,
			    cases[i].want);
		free(got);
	}
}

static void
test_claims(void **state)
{
	char	*got;

	got = jwt_claims("00000000-0000-0000-0000-0000000000c1", AUD,
	    "7e57c0de-0000-4000-8000-000000000001", 1700000000);
	assert_string_equal(got, "{\"aud\":\"" AUD "\","
	    "\"iss\":\"00000000-0000-0000-0000-0000000000c1\","
	    "\"sub\":\"00000000-0000-0000-0000-0000000000c1\","
	    "\"jti\":\"7e57c0de-0000-4000-8000-000000000001\","
	    "\"nbf\":1700000000,\"iat\":1700000000,\"exp\":1700000600}");
	free(got);
	/* Text from the config is escaped, not pasted. */
	got = jwt_claims("a\"b\\c", AUD, "j", 0);
	assert_non_null(strstr(got, "\"iss\":\"a\\\"b\\\\c\""));
	free(got);
}

static void
test_header(void **state)
{
	struct jwt_key	*k;
	char		 err[256], want[256], *got, *t;

	k = jwt_key_load(cert_pem, key_pem, JWT_PS256, err, sizeof(err));
	assert_non_null(k);
	t = thumbprint(EVP_sha256());
	snprintf(want, sizeof(want), "{\"alg\":\"PS256\",\"typ\":\"JWT\","
	    "\"x5t#S256\":\"%s\"}", t);
	assert_int_equal(strlen(t), 43);
	got = jwt_header(k);
	assert_string_equal(got, want);
	free(got);
	free(t);
	jwt_key_free(k);

	k = jwt_key_load(cert_pem, key_pem, JWT_RS256, err, sizeof(err));
	assert_non_null(k);
	t = thumbprint(EVP_sha1());
	assert_int_equal(strlen(t), 27);
	snprintf(want, sizeof(want), "{\"alg\":\"RS256\",\"typ\":\"JWT\","
	    "\"x5t\":\"%s\"}", t);
	got = jwt_header(k);
	assert_string_equal(got, want);
	free(got);
	free(t);
	jwt_key_free(k);
}

/* 1 if sig over input verifies with the certificate's key. */
static int
verifies(enum jwt_alg alg, const char *input, size_t inlen,
    const unsigned char *sig, size_t siglen)
{
	EVP_MD_CTX	*md = EVP_MD_CTX_new();
	EVP_PKEY_CTX	*pc;
	int		 ok;

	assert_int_equal(EVP_DigestVerifyInit(md, &pc, EVP_sha256(), NULL,
	    X509_get0_pubkey(cert)), 1);
	if (alg == JWT_PS256) {
		assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pc,
		    RSA_PKCS1_PSS_PADDING), 1);
		assert_int_equal(EVP_PKEY_CTX_set_rsa_mgf1_md(pc,
		    EVP_sha256()), 1);
		/* What Entra and RFC 7518 expect, not OpenSSL's "auto". */
		assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, 32), 1);
	}
	ok = EVP_DigestVerify(md, sig, siglen, (const unsigned char *)input,
	    inlen);
	EVP_MD_CTX_free(md);
	return ok == 1;
}

static void
check_assertion(enum jwt_alg alg)
{
	struct jwt_key	*k;
	char		 err[256], *a, *b, *dot1, *dot2, *want, *got, *h;
	char		 jti[64];
	unsigned char	*sig;
	size_t		 n, siglen;
	const char	*j;

	k = jwt_key_load(cert_pem, key_pem, alg, err, sizeof(err));
	assert_non_null(k);
	a = jwt_assertion(k, "client-1", AUD, 1700000000, err, sizeof(err));
	b = jwt_assertion(k, "client-1", AUD, 1700000000, err, sizeof(err));
	assert_non_null(a);
	assert_non_null(b);
	assert_null(strpbrk(a, "+/= "));
	assert_non_null(dot1 = strchr(a, '.'));
	assert_non_null(dot2 = strchr(dot1 + 1, '.'));
	assert_null(strchr(dot2 + 1, '.'));

	h = jwt_header(k);
	got = (char *)b64url_decode(a, (size_t)(dot1 - a), &n);
	assert_string_equal(got, h);
	free(got);
	free(h);

	/* Claims: as jwt_claims() makes them, with a random v4 GUID jti. */
	got = (char *)b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &n);
	assert_non_null(j = strstr(got, "\"jti\":\""));
	j += 7;
	assert_int_equal(strcspn(j, "\""), 36);
	memcpy(jti, j, 36);
	jti[36] = '\0';
	assert_int_equal(jti[8], '-');
	assert_int_equal(jti[14], '4');
	assert_non_null(strchr("89ab", jti[19]));
	want = jwt_claims("client-1", AUD, jti, 1700000000);
	assert_string_equal(got, want);
	free(want);
	free(got);
	assert_memory_not_equal(a, b, strlen(a) < strlen(b) ? strlen(a) :
	    strlen(b));

	sig = b64url_decode(dot2 + 1, strlen(dot2 + 1), &siglen);
	assert_int_equal(siglen, 256);
	assert_true(verifies(alg, a, (size_t)(dot2 - a), sig, siglen));
	/* Not with the other padding, nor over other bytes. */
	assert_false(verifies(alg == JWT_PS256 ? JWT_RS256 : JWT_PS256, a,
	    (size_t)(dot2 - a), sig, siglen));
	assert_false(verifies(alg, a, (size_t)(dot2 - a) - 1, sig, siglen));
	free(sig);
	free(a);
	free(b);
	jwt_key_free(k);
}

static void
test_assertion_ps256(void **state)
{
	check_assertion(JWT_PS256);
}

static void
test_assertion_rs256(void **state)
{
	check_assertion(JWT_RS256);
}

static void
test_key_errors(void **state)
{
	struct jwt_key	*k;
	char		 err[1024], want[1024], when[64];

	k = jwt_key_load(cert_pem, other_key_pem, JWT_PS256, err,
	    sizeof(err));
	assert_null(k);
	snprintf(want, sizeof(want), "private_key_file \"%s\" does not "
	    "belong to certificate_file \"%s\"", other_key_pem, cert_pem);
	assert_string_equal(err, want);

	assert_null(jwt_key_load(cert_pem, ec_key_pem, JWT_PS256, err,
	    sizeof(err)));
	assert_non_null(strstr(err, "not an RSA key"));

	assert_null(jwt_key_load("/nonexistent/cert.pem", key_pem, JWT_PS256,
	    err, sizeof(err)));
	assert_string_equal(err, "certificate_file \"/nonexistent/cert.pem\": "
	    "No such file or directory");

	/* A key where the certificate should be, and the other way round. */
	assert_null(jwt_key_load(key_pem, key_pem, JWT_PS256, err,
	    sizeof(err)));
	assert_non_null(strstr(err, "no PEM certificate"));
	assert_null(jwt_key_load(cert_pem, cert_pem, JWT_PS256, err,
	    sizeof(err)));
	assert_non_null(strstr(err, "no PEM private key"));

	k = jwt_key_load(cert_pem, key_pem, JWT_PS256, err, sizeof(err));
	assert_non_null(k);
	assert_int_equal(jwt_key_expired(k, when, sizeof(when)), 0);
	jwt_key_free(k);
	k = jwt_key_load(old_cert_pem, key_pem, JWT_PS256, err, sizeof(err));
	assert_non_null(k);
	assert_int_equal(jwt_key_expired(k, when, sizeof(when)), 1);
	assert_non_null(strstr(when, "GMT"));
	jwt_key_free(k);
	jwt_key_free(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_b64url),
		cmocka_unit_test(test_claims),
		cmocka_unit_test(test_header),
		cmocka_unit_test(test_assertion_ps256),
		cmocka_unit_test(test_assertion_rs256),
		cmocka_unit_test(test_key_errors),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}

/* tls.c - certificate files for the server's TLS (see tls.h). OpenSSL's
 * only user in net/; libwebsockets (built with OpenSSL on Debian) does the
 * protocol itself.
 *
 * Thread: whoever calls (the network thread). Owns nothing between calls.
 */
#include "tls.h"
#include "err.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* The newest OpenSSL error as text ("" when none). */
static const char *ssl_why(char *buf, size_t cap)
{
    unsigned long e = ERR_peek_last_error();
    buf[0] = '\0';
    if (e)
        ERR_error_string_n(e, buf, cap);
    ERR_clear_error();
    return buf;
}

/* The leaf certificate and its chain from one PEM file. */
static int read_chain(const char *path, X509 **leaf, STACK_OF(X509) **chain, char *err,
                      size_t errlen)
{
    char why[256];
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read the certificate %s: %s", path, strerror(errno));
        return IC_ERR_IO;
    }
    *leaf = PEM_read_X509(f, NULL, NULL, NULL);
    *chain = sk_X509_new_null();
    X509 *x;
    while (*leaf && *chain && (x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
        if (!sk_X509_push(*chain, x)) {
            X509_free(x);
            break;
        }
    }
    fclose(f);
    ERR_clear_error(); /* the end of the file reads as an error */
    if (!*leaf || !*chain) {
        snprintf(err, errlen, "%s holds no PEM certificate%s%s", path, ssl_why(why, sizeof why)[0]
                 ? ": " : "", why);
        X509_free(*leaf);
        sk_X509_pop_free(*chain, X509_free);
        *leaf = NULL;
        *chain = NULL;
        return IC_ERR_INVAL;
    }
    return 0;
}

static int read_key(const char *path, EVP_PKEY **key, char *err, size_t errlen)
{
    char why[256];
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read the key %s: %s", path, strerror(errno));
        return IC_ERR_IO;
    }
    *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!*key) {
        snprintf(err, errlen, "%s holds no PEM private key (or it is encrypted)%s%s", path,
                 ssl_why(why, sizeof why)[0] ? ": " : "", why);
        return IC_ERR_INVAL;
    }
    return 0;
}

/* "CN=example, expires Jan  1 00:00:00 2027 GMT" */
static void describe(X509 *leaf, char *info, size_t cap)
{
    char subject[256] = "?", expires[64] = "?";
    X509_NAME_oneline(X509_get_subject_name(leaf), subject, sizeof subject);
    BIO *b = BIO_new(BIO_s_mem());
    if (b && ASN1_TIME_print(b, X509_get0_notAfter(leaf))) {
        int n = BIO_read(b, expires, (int)sizeof expires - 1);
        expires[n > 0 ? n : 0] = '\0';
    }
    BIO_free(b);
    snprintf(info, cap, "%s, expires %s", subject, expires);
}

/* Puts the pair into ctx. Returns 0 or IC_ERR_INVAL. */
static int install(SSL_CTX *ctx, X509 *leaf, STACK_OF(X509) *chain, EVP_PKEY *key)
{
    if (SSL_CTX_use_certificate(ctx, leaf) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
        SSL_CTX_clear_chain_certs(ctx) != 1)
        return IC_ERR_INVAL;
    for (int i = 0; i < sk_X509_num(chain); i++)
        if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i)) != 1)
            return IC_ERR_INVAL;
    return SSL_CTX_check_private_key(ctx) == 1 ? 0 : IC_ERR_INVAL;
}

int ic_tls_load(void *ssl_ctx, const char *cert_path, const char *key_path, char *info,
                size_t infolen, char *err, size_t errlen)
{
    X509 *leaf = NULL;
    STACK_OF(X509) *chain = NULL;
    EVP_PKEY *key = NULL;
    char why[256];
    int rc = read_chain(cert_path, &leaf, &chain, err, errlen);
    if (rc == 0)
        rc = read_key(key_path, &key, err, errlen);
    if (rc == 0 && X509_check_private_key(leaf, key) != 1) {
        snprintf(err, errlen, "the key %s does not belong to the certificate %s", key_path,
                 cert_path);
        rc = IC_ERR_INVAL;
    }
    /* Tried on a scratch context first: a pair the live one would refuse
     * halfway (after the certificate, before the key) never reaches it. */
    SSL_CTX *scratch = rc == 0 ? SSL_CTX_new(TLS_server_method()) : NULL;
    if (rc == 0 && (!scratch || install(scratch, leaf, chain, key) < 0)) {
        snprintf(err, errlen, "OpenSSL refuses the certificate %s: %s", cert_path,
                 ssl_why(why, sizeof why));
        rc = IC_ERR_INVAL;
    }
    SSL_CTX_free(scratch);
    if (rc == 0 && ssl_ctx && install(ssl_ctx, leaf, chain, key) < 0) {
        snprintf(err, errlen, "OpenSSL refuses the certificate %s: %s", cert_path,
                 ssl_why(why, sizeof why));
        rc = IC_ERR_INVAL;
    }
    if (rc == 0 && info)
        describe(leaf, info, infolen);
    X509_free(leaf);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return rc;
}

void ic_tls_close_notify(void *ssl)
{
    if (ssl) {
        SSL_shutdown(ssl);
        ERR_clear_error();
    }
}

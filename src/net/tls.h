/* tls.h - the OpenSSL half of the server's TLS (--tls-cert, --tls-key):
 * checking a certificate and key before they are used, and putting a
 * renewed pair into the live SSL_CTX (SIGHUP). The handshakes and the
 * encrypted reads and writes are libwebsockets' (server.c adopts each raw
 * socket with LWS_ADOPT_ALLOW_SSL); this module only handles the files.
 *
 * Thread: the network thread (ic_server_reload_tls), or before the loop
 * starts. Owns nothing between calls.
 */
#ifndef IC_TLS_H
#define IC_TLS_H

#include <stddef.h>

/* Reads the PEM certificate chain at cert_path (the server's certificate
 * first, then its intermediates) and the PEM private key at key_path, and
 * checks that they belong together. With ssl_ctx (an OpenSSL SSL_CTX *,
 * lws's vhost context) the pair then replaces the context's own: new
 * handshakes use it, connections already up keep theirs. The files are
 * read once, so a renewal half-written on disk is refused, not half used.
 * Returns 0, with the certificate's subject and expiry in info (may be
 * NULL), or IC_ERR_IO / IC_ERR_INVAL with a one-line reason in err, and
 * then the context is unchanged. */
int ic_tls_load(void *ssl_ctx, const char *cert_path, const char *key_path, char *info,
                size_t infolen, char *err, size_t errlen);

/* Sends TLS close_notify on ssl (an OpenSSL SSL *; NULL does nothing)
 * before the socket's write side is shut. */
void ic_tls_close_notify(void *ssl);

#endif

/* Mutual TLS for bus links (common/cluster/bus_link.c): wolfSSL over memory buffers, as for
 * client connections (edge/tls.c), so libuv keeps the socket. TLS 1.3 only; each side
 * presents a certificate and verifies the other's against the configured CA file.
 * A context belongs to one link or listener; a session to one connection (one thread). */
#ifndef XMPP_BUS_LINK_TLS_H
#define XMPP_BUS_LINK_TLS_H

#include <stddef.h>

#include "common/buf.h"

typedef struct link_tls_ctx link_tls_ctx_t;
typedef struct link_tls link_tls_t;

/* Loads the certificate chain, key and CA (PEM). NULL and *err (caller frees) on failure. */
link_tls_ctx_t *link_tls_ctx_new(int server, const char *cert, const char *key, const char *ca, char **err);
/* Drops the caller's reference; each session holds one too, so the context lives until
 * the last of them ends. */
void link_tls_ctx_free(link_tls_ctx_t *t);

/* Frees wolfSSL's per-thread ECC cache: at the end of every thread that ran handshakes. */
void link_tls_thread_cleanup(void);

/* A session; ciphertext it produces is appended to *out (the caller writes it out). */
link_tls_t *link_tls_new(link_tls_ctx_t *t, buf_t *out);
void link_tls_free(link_tls_t *s);
/* Ciphertext from the socket. */
void link_tls_feed(link_tls_t *s, const void *data, size_t len);
/* Advances the handshake: 1 done, 0 needs more bytes, XMPP_ERR failed (*why set). */
int link_tls_handshake(link_tls_t *s, const char **why);
/* Decrypted bytes into buf: > 0 bytes, 0 none for now, XMPP_ERR on error or close. */
int link_tls_read(link_tls_t *s, void *buf, size_t cap);
/* Encrypts len bytes (appended to out). 0 or XMPP_ERR. */
int link_tls_write(link_tls_t *s, const void *data, size_t len);

#endif

/* wolfSSL over memory buffers: the one glue between wolfSSL's I/O callbacks and a
 * connection whose socket libuv owns (client connections, edge/tls.c; bus links,
 * common/cluster/bus_link_tls.c; the bench's clients, bench/client.c).
 *
 * The owner feeds the ciphertext it read (tls_mem_feed) and runs wolfSSL; wolfSSL takes
 * it through the receive callback, and WANT_READ when it is all taken (no blocking, no
 * EOF: the owner sees the close itself). What wolfSSL writes (handshake, records, alerts,
 * close_notify) is appended to the owner's out buffer, which the owner writes to the
 * socket. One session, one thread, like the connection it belongs to. */
#ifndef XMPP_TLS_MEM_H
#define XMPP_TLS_MEM_H

#include <stddef.h>

#include "common/buf.h"

struct WOLFSSL;
struct WOLFSSL_CTX;

typedef struct tls_mem {
  buf_t in;      /* ciphertext fed and not yet taken by wolfSSL: in.data[in_off..in.len) */
  size_t in_off;
  buf_t *out;    /* the owner's: what wolfSSL writes is appended */
} tls_mem_t;

/* Makes every session of ctx do its I/O through a tls_mem_t (tls_mem_attach). */
void tls_mem_use(struct WOLFSSL_CTX *ctx);
/* Starts m (empty input, output to *out) as the I/O of ssl, a session of a context that
 * tls_mem_use was called on. m must outlive ssl's I/O (keep it where the session is). */
void tls_mem_attach(tls_mem_t *m, struct WOLFSSL *ssl, buf_t *out);
/* Appends ciphertext read from the socket (dropping what wolfSSL took before). */
void tls_mem_feed(tls_mem_t *m, const void *data, size_t len);
/* Drops what wolfSSL took; when nothing is left, gives the buffer back if it grew past
 * keep bytes (0: always; an idle connection should cost no input buffer). */
void tls_mem_trim(tls_mem_t *m, size_t keep);
void tls_mem_free(tls_mem_t *m);

#endif

/* wolfSSL over memory buffers (see tls_mem.h). */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "common/tls_mem.h"

#include <string.h>

static int mem_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx) {
  tls_mem_t *m = ctx;
  size_t avail = m->in.len - m->in_off;
  if (avail == 0) return WOLFSSL_CBIO_ERR_WANT_READ;
  size_t n = avail < (size_t)sz ? avail : (size_t)sz;
  memcpy(buf, m->in.data + m->in_off, n);
  m->in_off += n;
  if (m->in_off == m->in.len) m->in.len = m->in_off = 0; /* all taken: nothing to move later */
  return (int)n;
}

static int mem_send(WOLFSSL *ssl, char *buf, int sz, void *ctx) {
  tls_mem_t *m = ctx;
  buf_append(m->out, buf, (size_t)sz);
  return sz;
}

void tls_mem_use(WOLFSSL_CTX *ctx) {
  wolfSSL_CTX_SetIORecv(ctx, mem_recv);
  wolfSSL_CTX_SetIOSend(ctx, mem_send);
}

void tls_mem_attach(tls_mem_t *m, WOLFSSL *ssl, buf_t *out) {
  m->in.len = m->in_off = 0; /* m is zeroed or freed: any buffer it has is kept */
  m->out = out;
  wolfSSL_SetIOReadCtx(ssl, m);
  wolfSSL_SetIOWriteCtx(ssl, m);
}

void tls_mem_feed(tls_mem_t *m, const void *data, size_t len) {
  tls_mem_trim(m, SIZE_MAX);
  buf_append(&m->in, data, len);
}

void tls_mem_trim(tls_mem_t *m, size_t keep) {
  if (m->in_off) { /* at most a partial record is left */
    buf_consume(&m->in, m->in_off);
    m->in_off = 0;
  }
  if (!m->in.len && m->in.cap > keep) buf_free(&m->in);
}

void tls_mem_free(tls_mem_t *m) {
  buf_free(&m->in);
  m->in_off = 0;
}

/* wolfSSL over memory buffers (see tls.h). */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/ecc.h>

#include "edge/tls.h"

#include <pthread.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"

/* TLS 1.3 suites, then TLS 1.2 ECDHE + AEAD only. */
static const char *CIPHERS =
    "TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/* The current context. A reload swaps in a new one under the lock; wolfSSL counts the
 * sessions using a context, so the old one lives until its last session ends. */
struct tls_ctx {
  pthread_mutex_t mu;
  WOLFSSL_CTX *ctx;
};

struct tls_conn {
  WOLFSSL *ssl;
  buf_t in;       /* ciphertext not yet taken by wolfSSL */
  size_t in_off;
  buf_t *out;
  int ready;
  int stopped;
};

static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx) {
  tls_conn_t *c = ctx;
  size_t avail = c->in.len - c->in_off;
  if (avail == 0) return WOLFSSL_CBIO_ERR_WANT_READ;
  size_t n = avail < (size_t)sz ? avail : (size_t)sz;
  memcpy(buf, c->in.data + c->in_off, n);
  c->in_off += n;
  return (int)n;
}

static int io_send(WOLFSSL *ssl, char *buf, int sz, void *ctx) {
  tls_conn_t *c = ctx;
  buf_append(c->out, buf, (size_t)sz);
  return sz;
}

static char *errdup(const char *what, const char *file) {
  char m[512];
  snprintf(m, sizeof m, "%s %s", what, file);
  return xstrdup(m);
}

static WOLFSSL_CTX *build(const char *cert_file, const char *key_file, char **err) {
  WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
  if (!ctx) {
    if (err) *err = xstrdup("wolfSSL_CTX_new failed");
    return NULL;
  }
  if (wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_set_cipher_list(ctx, CIPHERS) != WOLFSSL_SUCCESS) {
    if (err) *err = xstrdup("cannot restrict TLS versions/ciphers");
    wolfSSL_CTX_free(ctx);
    return NULL;
  }
  if (wolfSSL_CTX_use_certificate_chain_file(ctx, cert_file) != WOLFSSL_SUCCESS) {
    if (err) *err = errdup("cannot load certificate chain", cert_file);
    wolfSSL_CTX_free(ctx);
    return NULL;
  }
  if (wolfSSL_CTX_use_PrivateKey_file(ctx, key_file, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS) {
    if (err) *err = errdup("cannot load private key (or it does not match the certificate)", key_file);
    wolfSSL_CTX_free(ctx);
    return NULL;
  }
  wolfSSL_CTX_SetIORecv(ctx, io_recv);
  wolfSSL_CTX_SetIOSend(ctx, io_send);
  return ctx;
}

tls_ctx_t *tls_ctx_new(const char *cert_file, const char *key_file, char **err) {
  static int inited;
  if (!inited) {
    wolfSSL_Init();
    inited = 1;
  }
  WOLFSSL_CTX *ctx = build(cert_file, key_file, err);
  if (!ctx) return NULL;
  tls_ctx_t *t = xcalloc(1, sizeof *t);
  pthread_mutex_init(&t->mu, NULL);
  t->ctx = ctx;
  return t;
}

int tls_ctx_reload(tls_ctx_t *t, const char *cert_file, const char *key_file, char **err) {
  WOLFSSL_CTX *ctx = build(cert_file, key_file, err);
  if (!ctx) return XMPP_ERR;
  pthread_mutex_lock(&t->mu);
  WOLFSSL_CTX *old = t->ctx;
  t->ctx = ctx;
  pthread_mutex_unlock(&t->mu);
  wolfSSL_CTX_free(old); /* drops our reference; sessions still on it keep theirs */
  return 0;
}

void tls_ctx_free(tls_ctx_t *t) {
  if (!t) return;
  wolfSSL_CTX_free(t->ctx);
  pthread_mutex_destroy(&t->mu);
  xfree(t);
  wolfSSL_Cleanup();
}

void tls_thread_cleanup(void) { wc_ecc_fp_free(); }

tls_conn_t *tls_conn_new(tls_ctx_t *t, buf_t *out) {
  tls_conn_t *c = xcalloc(1, sizeof *c);
  pthread_mutex_lock(&t->mu);
  c->ssl = wolfSSL_new(t->ctx);
  pthread_mutex_unlock(&t->mu);
  if (!c->ssl) {
    xfree(c);
    return NULL;
  }
  buf_init(&c->in);
  c->out = out;
  wolfSSL_SetIOReadCtx(c->ssl, c);
  wolfSSL_SetIOWriteCtx(c->ssl, c);
  return c;
}

void tls_conn_free(tls_conn_t *c) {
  if (!c) return;
  wolfSSL_free(c->ssl);
  buf_free(&c->in);
  xfree(c);
}

void tls_conn_stop(tls_conn_t *c) { c->stopped = 1; }

int tls_conn_ready(const tls_conn_t *c) { return c->ready; }

int tls_conn_feed(tls_conn_t *c, const char *data, size_t len, tls_plain_cb cb, tls_ready_cb ready,
                  void *ud) {
  buf_append(&c->in, data, len);
  int rc = 0;
  if (!c->ready) {
    int r = wolfSSL_accept(c->ssl);
    if (r == WOLFSSL_SUCCESS) {
      c->ready = 1;
      ready(ud);
    } else {
      int e = wolfSSL_get_error(c->ssl, r);
      if (e != WOLFSSL_ERROR_WANT_READ && e != WOLFSSL_ERROR_WANT_WRITE) {
        char msg[WOLFSSL_MAX_ERROR_SZ];
        log_debug("TLS handshake failed: %s", wolfSSL_ERR_error_string((unsigned long)e, msg));
        rc = XMPP_ERR;
      }
    }
  }
  while (rc == 0 && c->ready && !c->stopped) {
    char plain[16384];
    int n = wolfSSL_read(c->ssl, plain, sizeof plain);
    if (n > 0) {
      cb(ud, plain, (size_t)n);
      continue;
    }
    int e = wolfSSL_get_error(c->ssl, n);
    if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE) break;
    rc = XMPP_ERR; /* close_notify or a fatal alert */
  }
  /* drop what wolfSSL consumed */
  buf_consume(&c->in, c->in_off);
  c->in_off = 0;
  return rc;
}

int tls_conn_write(tls_conn_t *c, const char *data, size_t len) {
  while (len) {
    int chunk = len > 16384 ? 16384 : (int)len;
    int n = wolfSSL_write(c->ssl, data, chunk);
    if (n <= 0) return XMPP_ERR;
    data += n;
    len -= (size_t)n;
  }
  return 0;
}

void tls_conn_shutdown(tls_conn_t *c) {
  if (c->ready) wolfSSL_shutdown(c->ssl);
}

const char *tls_conn_version(const tls_conn_t *c) { return wolfSSL_get_version(c->ssl); }
const char *tls_conn_cipher(const tls_conn_t *c) { return wolfSSL_get_cipher(c->ssl); }

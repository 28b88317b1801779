/* Mutual TLS for bus links (see bus_link_tls.h). */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/ecc.h>

#include "common/cluster/bus_link_tls.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/tls_mem.h"

struct link_tls_ctx {
  WOLFSSL_CTX *ctx;
  int server;
  int refs; /* the owner's and each session's (all on one loop thread) */
};

struct link_tls {
  link_tls_ctx_t *ctx;
  WOLFSSL *ssl;
  int server, done;
  tls_mem_t io;   /* ciphertext in, and the owner's buffer for what it produces */
  char why[128];
};

static link_tls_ctx_t *fail(WOLFSSL_CTX *ctx, char **err, const char *what, const char *file) {
  if (err) {
    char m[512];
    snprintf(m, sizeof m, "%s%s%s", what, file ? " " : "", file ? file : "");
    *err = xstrdup(m);
  }
  if (ctx) wolfSSL_CTX_free(ctx);
  wolfSSL_Cleanup();
  return NULL;
}

link_tls_ctx_t *link_tls_ctx_new(int server, const char *cert, const char *key, const char *ca, char **err) {
  wolfSSL_Init(); /* reference-counted by wolfSSL; balanced in link_tls_ctx_free */
  WOLFSSL_CTX *ctx = wolfSSL_CTX_new(server ? wolfTLSv1_3_server_method() : wolfTLSv1_3_client_method());
  if (!ctx) return fail(NULL, err, "wolfSSL_CTX_new failed", NULL);
  if (!cert || !key || !ca) return fail(ctx, err, "link TLS needs a certificate, a key and a CA file", NULL);
  if (wolfSSL_CTX_use_certificate_chain_file(ctx, cert) != WOLFSSL_SUCCESS)
    return fail(ctx, err, "cannot load certificate chain", cert);
  if (wolfSSL_CTX_use_PrivateKey_file(ctx, key, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS)
    return fail(ctx, err, "cannot load private key (or it does not match the certificate)", key);
  if (wolfSSL_CTX_load_verify_locations(ctx, ca, NULL) != WOLFSSL_SUCCESS)
    return fail(ctx, err, "cannot load CA file", ca);
  /* ChaCha20-Poly1305 first: Debian's wolfSSL has no AES-NI code, and in software it is
   * about three times faster than AES-GCM (bus-link-bench: docs/cluster.md). */
  if (wolfSSL_CTX_set_cipher_list(ctx, "TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:"
                                       "TLS13-AES256-GCM-SHA384") != WOLFSSL_SUCCESS)
    return fail(ctx, err, "cannot set the TLS 1.3 cipher suites", NULL);
  wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  tls_mem_use(ctx);
  link_tls_ctx_t *t = xcalloc(1, sizeof *t);
  t->ctx = ctx;
  t->server = server;
  t->refs = 1;
  return t;
}

void link_tls_ctx_free(link_tls_ctx_t *t) {
  if (!t || --t->refs > 0) return;
  wolfSSL_CTX_free(t->ctx);
  xfree(t);
  wolfSSL_Cleanup();
}

void link_tls_thread_cleanup(void) { wc_ecc_fp_free(); }

link_tls_t *link_tls_new(link_tls_ctx_t *t, buf_t *out) {
  link_tls_t *s = xcalloc(1, sizeof *s);
  s->ssl = wolfSSL_new(t->ctx);
  if (!s->ssl) {
    xfree(s);
    return NULL;
  }
  s->ctx = t;
  t->refs++;
  s->server = t->server;
  tls_mem_attach(&s->io, s->ssl, out);
  return s;
}

void link_tls_free(link_tls_t *s) {
  if (!s) return;
  wolfSSL_free(s->ssl);
  tls_mem_free(&s->io);
  link_tls_ctx_free(s->ctx);
  xfree(s);
}

void link_tls_feed(link_tls_t *s, const void *data, size_t len) { tls_mem_feed(&s->io, data, len); }

int link_tls_handshake(link_tls_t *s, const char **why) {
  if (s->done) return 1;
  int r = s->server ? wolfSSL_accept(s->ssl) : wolfSSL_connect(s->ssl);
  if (r == WOLFSSL_SUCCESS) {
    s->done = 1;
    return 1;
  }
  int e = wolfSSL_get_error(s->ssl, r);
  if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE) return 0;
  char m[80];
  wolfSSL_ERR_error_string_n((unsigned long)e, m, sizeof m);
  snprintf(s->why, sizeof s->why, "TLS handshake failed: %s (%d)", m, e);
  if (why) *why = s->why;
  return XMPP_ERR;
}

int link_tls_read(link_tls_t *s, void *buf, size_t cap) {
  int n = wolfSSL_read(s->ssl, buf, cap > 0x40000000 ? 0x40000000 : (int)cap);
  if (n > 0) return n;
  int e = wolfSSL_get_error(s->ssl, n);
  if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE) return 0;
  return XMPP_ERR;
}

int link_tls_write(link_tls_t *s, const void *data, size_t len) {
  const uint8_t *p = data;
  while (len) {
    int chunk = len > 0x100000 ? 0x100000 : (int)len;
    int n = wolfSSL_write(s->ssl, p, chunk);
    if (n <= 0) return XMPP_ERR;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

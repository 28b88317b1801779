/* wolfSSL over memory buffers (common/tls_mem.h): a TLS 1.3 server and client, each
 * through a tls_mem_t, with no socket. Ciphertext goes one byte at a time one way (each
 * byte a WANT_READ until a record is whole), whole flights the other way; application
 * data both ways; the input buffer's trimming; close_notify. */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "common/buf.h"
#include "common/tls_mem.h"
#include "tests/unit/support/certs.h"

static char dir[64], cert[128], key[128];

static void make_cert(void) {
  certs_make(dir, sizeof dir, "tls-mem",
             "openssl ecparam -name prime256v1 -genkey -noout -out k.pem;"
             " openssl req -x509 -new -key k.pem -subj /CN=localhost -days 2 -out c.pem");
  snprintf(cert, sizeof cert, "%s/c.pem", dir);
  snprintf(key, sizeof key, "%s/k.pem", dir);
}

typedef struct end {
  WOLFSSL_CTX *ctx;
  WOLFSSL *ssl;
  tls_mem_t io;
  buf_t out;
  int server, done;
} end_t;

static void end_init(end_t *e, int server) {
  memset(e, 0, sizeof *e);
  e->server = server;
  e->ctx = wolfSSL_CTX_new(server ? wolfTLSv1_3_server_method() : wolfTLSv1_3_client_method());
  cr_assert_not_null(e->ctx);
  if (server) {
    cr_assert_eq(wolfSSL_CTX_use_certificate_file(e->ctx, cert, WOLFSSL_FILETYPE_PEM), WOLFSSL_SUCCESS);
    cr_assert_eq(wolfSSL_CTX_use_PrivateKey_file(e->ctx, key, WOLFSSL_FILETYPE_PEM), WOLFSSL_SUCCESS);
  } else {
    wolfSSL_CTX_set_verify(e->ctx, WOLFSSL_VERIFY_NONE, NULL);
  }
  tls_mem_use(e->ctx);
  e->ssl = wolfSSL_new(e->ctx);
  cr_assert_not_null(e->ssl);
  buf_init(&e->out);
  tls_mem_attach(&e->io, e->ssl, &e->out);
}

static void end_free(end_t *e) {
  wolfSSL_free(e->ssl);
  wolfSSL_CTX_free(e->ctx);
  tls_mem_free(&e->io);
  buf_free(&e->out);
}

/* Advances the handshake: 1 done, 0 wants more input (never an error here). */
static int step(end_t *e) {
  if (e->done) return 1;
  int r = e->server ? wolfSSL_accept(e->ssl) : wolfSSL_connect(e->ssl);
  if (r == WOLFSSL_SUCCESS) return e->done = 1;
  cr_assert_eq(wolfSSL_get_error(e->ssl, r), WOLFSSL_ERROR_WANT_READ);
  return 0;
}

/* Moves what from wrote to to's input: byte by byte (stepping to at each) or at once. */
static void carry(end_t *from, end_t *to, int bytewise) {
  buf_t b = from->out;
  buf_init(&from->out);
  for (size_t i = 0; i < b.len; i += bytewise ? 1 : b.len) {
    tls_mem_feed(&to->io, b.data + i, bytewise ? 1 : b.len);
    if (bytewise && i + 1 < b.len) step(to); /* a partial record: WANT_READ, nothing lost */
  }
  buf_free(&b);
}

Test(tls_mem, handshake_data_trim_and_close_notify) {
  wolfSSL_Init();
  make_cert();
  end_t s, c;
  end_init(&s, 1);
  end_init(&c, 0);
  cr_assert_eq(step(&c), 0);
  cr_assert_gt(c.out.len, 0, "ClientHello written to the owner's buffer");
  for (int round = 0; round < 10 && !(s.done && c.done); round++) {
    carry(&c, &s, 1);
    step(&s);
    carry(&s, &c, 0);
    step(&c);
  }
  cr_assert(s.done && c.done, "handshake over memory buffers");
  carry(&c, &s, 1); /* the client's Finished, if it came last */
  step(&s);

  /* data both ways; the reader sees WANT_READ once it has taken everything */
  static const char hello[] = "<stream:stream to='localhost'>";
  cr_assert_eq(wolfSSL_write(c.ssl, hello, sizeof hello), (int)sizeof hello);
  carry(&c, &s, 1);
  char got[256];
  int n = wolfSSL_read(s.ssl, got, sizeof got);
  cr_assert_eq(n, (int)sizeof hello);
  cr_assert_str_eq(got, hello);
  cr_assert_eq(wolfSSL_read(s.ssl, got, sizeof got), -1);
  cr_assert_eq(wolfSSL_get_error(s.ssl, -1), WOLFSSL_ERROR_WANT_READ);
  cr_assert_eq(s.io.in.len, 0, "all taken: nothing left to move");

  /* half a record: WANT_READ, and a trim in between loses nothing (wolfSSL keeps what
   * it took); an empty buffer goes back at keep 0 only */
  cr_assert_eq(wolfSSL_write(s.ssl, "pong", 4), 4);
  size_t half = s.out.len / 2;
  tls_mem_feed(&c.io, s.out.data, half);
  cr_assert_eq(wolfSSL_read(c.ssl, got, sizeof got), -1);
  cr_assert_eq(wolfSSL_get_error(c.ssl, -1), WOLFSSL_ERROR_WANT_READ);
  tls_mem_trim(&c.io, 0);
  tls_mem_feed(&c.io, s.out.data + half, s.out.len - half);
  s.out.len = 0;
  cr_assert_eq(wolfSSL_read(c.ssl, got, sizeof got), 4);
  cr_assert_eq(memcmp(got, "pong", 4), 0);
  tls_mem_trim(&c.io, 4096);
  cr_assert_gt(c.io.in.cap, 0, "a small buffer is kept for the next read");
  tls_mem_trim(&c.io, 0);
  cr_assert_eq(c.io.in.cap, 0, "given back");

  /* close_notify goes out through the same buffer and ends the peer's reads */
  wolfSSL_shutdown(s.ssl);
  cr_assert_gt(s.out.len, 0);
  carry(&s, &c, 0);
  cr_assert_leq(wolfSSL_read(c.ssl, got, sizeof got), 0);
  cr_assert_eq(wolfSSL_get_error(c.ssl, 0), WOLFSSL_ERROR_ZERO_RETURN);

  end_free(&s);
  end_free(&c);
  certs_remove(dir);
  wolfSSL_Cleanup();
}

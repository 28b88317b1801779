/* A TLS 1.3 client on OpenSSL's libssl, driven through framed pipes by
 * tests/integration/test_tls_rekey.py: an implementation independent of the edge's
 * record layer (edge/tls.c), able to send KeyUpdate (RFC 8446 §4.6.3), which Python's
 * ssl module cannot.
 *
 *   tls_rekey_client PORT [TLS13_CIPHERSUITES]
 *
 * Every message either way is: 1 byte kind, 4 bytes big-endian length, payload.
 * Commands (stdin):
 *   'W' data   one SSL_write of the payload (records of up to 2^14 bytes)
 *   'k' / 'K'  KeyUpdate, update_not_requested / update_requested, sent at once
 *   'F' n      n KeyUpdates (update_requested) in a row (n: 4 bytes big-endian)
 *   'X' recs   records sealed by hand under the client's first application traffic key,
 *              sequences 0, 1, ...: only before any 'W'/'k'. The payload is a list of
 *              (1 byte content type, 2 bytes big-endian length, body)
 * Events (stdout):
 *   'R' cipher the handshake is done
 *   'D' data   application data from the server
 *   'U' req    a KeyUpdate from the server (request_update byte)
 *   'A' lv ds  an alert from the server (level, description)
 *   'C' why    the connection ended (then the program exits 0)
 * Errors of the program itself go to stderr with exit status 2. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>

static void die(const char *what) {
  fprintf(stderr, "tls_rekey_client: %s\n", what);
  ERR_print_errors_fp(stderr);
  exit(2);
}

static void emit(char kind, const void *p, uint32_t len) {
  unsigned char h[5] = {(unsigned char)kind, (unsigned char)(len >> 24), (unsigned char)(len >> 16),
                        (unsigned char)(len >> 8), (unsigned char)len};
  if (fwrite(h, 1, 5, stdout) != 5 || (len && fwrite(p, 1, len, stdout) != len)) exit(2);
  fflush(stdout);
}

/* the client's first application traffic secret, from the key log */
static unsigned char csecret[48];
static size_t csecret_len;

static int hexval(char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

static void keylog_cb(const SSL *ssl, const char *line) {
  const char *tag = "CLIENT_TRAFFIC_SECRET_0 ";
  if (strncmp(line, tag, strlen(tag)) != 0) return;
  const char *sp = strchr(line + strlen(tag), ' '); /* after the client random */
  if (!sp) return;
  size_t n = strlen(sp + 1) / 2;
  if (n > sizeof csecret) return;
  for (size_t i = 0; i < n; i++) csecret[i] = (unsigned char)(hexval(sp[1 + 2 * i]) << 4 | hexval(sp[2 + 2 * i]));
  csecret_len = n;
}

static void msg_cb(int write_p, int version, int content_type, const void *buf, size_t len, SSL *ssl, void *arg) {
  const unsigned char *b = buf;
  if (write_p) return;
  if (content_type == SSL3_RT_HANDSHAKE && len == 5 && b[0] == 24) emit('U', b + 4, 1);
  if (content_type == SSL3_RT_ALERT && len == 2) emit('A', b, 2);
}

static int fd;

static void closed(const char *why) {
  emit('C', why, (uint32_t)strlen(why));
  exit(0);
}

/* HKDF-Expand-Label (RFC 8446 §7.1) for outputs no longer than the hash: one HMAC block */
static void expand_label(const EVP_MD *md, const unsigned char *secret, size_t slen, const char *label,
                         unsigned char *out, size_t olen) {
  unsigned char info[64], t[EVP_MAX_MD_SIZE];
  size_t ll = 6 + strlen(label), n = 0;
  info[n++] = (unsigned char)(olen >> 8);
  info[n++] = (unsigned char)olen;
  info[n++] = (unsigned char)ll;
  memcpy(info + n, "tls13 ", 6);
  memcpy(info + n + 6, label, ll - 6);
  n += ll;
  info[n++] = 0; /* empty context */
  info[n++] = 1; /* block counter */
  unsigned int tl = 0;
  if (!HMAC(md, secret, (int)slen, info, n, t, &tl) || tl < olen) die("HMAC");
  memcpy(out, t, olen);
}

/* Seals body as a record of the given type and sequence and writes it under the TLS layer. */
static void inject(SSL *ssl, unsigned char type, uint64_t seq, const unsigned char *body, size_t blen) {
  const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
  const char *name = SSL_CIPHER_get_name(c);
  int chacha = strstr(name, "CHACHA") != NULL, aes256 = strstr(name, "AES_256") != NULL;
  const EVP_MD *md = aes256 ? EVP_sha384() : EVP_sha256();
  const EVP_CIPHER *ciph = chacha ? EVP_chacha20_poly1305() : aes256 ? EVP_aes_256_gcm() : EVP_aes_128_gcm();
  size_t klen = (size_t)EVP_CIPHER_key_length(ciph);
  if (!csecret_len || blen > 1024) die("no traffic secret or body too long");
  unsigned char key[32], iv[12], rec[5 + 1024 + 1 + 16];
  expand_label(md, csecret, csecret_len, "key", key, klen);
  expand_label(md, csecret, csecret_len, "iv", iv, 12);
  for (int i = 0; i < 8; i++) iv[11 - i] ^= (unsigned char)(seq >> (8 * i)); /* RFC 8446 §5.3 */
  size_t clen = blen + 1 + 16;
  rec[0] = 23, rec[1] = 3, rec[2] = 3, rec[3] = (unsigned char)(clen >> 8), rec[4] = (unsigned char)clen;
  unsigned char inner[1024 + 1];
  memcpy(inner, body, blen);
  inner[blen] = type;
  EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
  int ol = 0, fl = 0;
  if (!x || !EVP_EncryptInit_ex(x, ciph, NULL, NULL, NULL) ||
      !EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL) || !EVP_EncryptInit_ex(x, NULL, NULL, key, iv) ||
      !EVP_EncryptUpdate(x, NULL, &ol, rec, 5) || !EVP_EncryptUpdate(x, rec + 5, &ol, inner, (int)blen + 1) ||
      !EVP_EncryptFinal_ex(x, rec + 5 + ol, &fl) ||
      !EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, rec + 5 + blen + 1))
    die("AEAD");
  EVP_CIPHER_CTX_free(x);
  size_t off = 0, total = 5 + clen;
  while (off < total) {
    ssize_t w = write(fd, rec + off, total - off);
    if (w < 0 && errno == EAGAIN) {
      struct pollfd p = {fd, POLLOUT, 0};
      poll(&p, 1, -1);
      continue;
    }
    if (w < 0) closed("error"); /* the server closed on an earlier record */
    off += (size_t)w;
  }
}


/* Waits until the socket is ready for what OpenSSL asked; 0, or -1 on a dead connection. */
static int wait_io(SSL *ssl, int r) {
  int e = SSL_get_error(ssl, r);
  if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) return -1;
  struct pollfd p = {fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, 0};
  poll(&p, 1, 1000);
  return 0;
}

/* Reads what the server sent, without blocking. */
static void drain(SSL *ssl) {
  static char buf[65536];
  for (;;) {
    int n = SSL_read(ssl, buf, sizeof buf);
    if (n > 0) {
      emit('D', buf, (uint32_t)n);
      continue;
    }
    int e = SSL_get_error(ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
    closed(e == SSL_ERROR_ZERO_RETURN ? "close_notify" : "error");
  }
}

static void flush_handshake(SSL *ssl) {
  int r;
  while ((r = SSL_do_handshake(ssl)) != 1)
    if (wait_io(ssl, r) != 0) closed("error");
}

static void read_full(unsigned char *p, size_t n) {
  while (n) {
    ssize_t r = read(0, p, n);
    if (r <= 0) exit(0); /* the test is done with us */
    p += r;
    n -= (size_t)r;
  }
}

int main(int argc, char **argv) {
  if (argc < 2) die("usage: tls_rekey_client PORT [TLS13_CIPHERSUITES]");
  signal(SIGPIPE, SIG_IGN); /* a write to a closed connection is an error, not our end */
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION)) die("SSL_CTX_new");
  if (argc > 2 && !SSL_CTX_set_ciphersuites(ctx, argv[2])) die("ciphersuites");
  SSL_CTX_set_keylog_callback(ctx, keylog_cb);
  fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) die("connect");
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  SSL *ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  SSL_set_tlsext_host_name(ssl, "localhost");
  SSL_set_msg_callback(ssl, msg_cb);
  int r;
  while ((r = SSL_connect(ssl)) != 1)
    if (wait_io(ssl, r) != 0) die("handshake");
  const char *cn = SSL_get_cipher_name(ssl);
  emit('R', cn, (uint32_t)strlen(cn));
  for (;;) {
    struct pollfd p[2] = {{0, POLLIN, 0}, {fd, POLLIN, 0}};
    if (!SSL_pending(ssl) && poll(p, 2, -1) < 0 && errno != EINTR) die("poll");
    if (SSL_pending(ssl) || (p[1].revents & (POLLIN | POLLHUP | POLLERR))) drain(ssl);
    if (!(p[0].revents & (POLLIN | POLLHUP))) continue;
    unsigned char h[5];
    read_full(h, 5);
    uint32_t len = (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
    unsigned char *data = malloc(len ? len : 1);
    if (!data) die("malloc");
    read_full(data, len);
    switch (h[0]) {
      case 'W': {
        size_t off = 0;
        while (off < len) {
          int n = SSL_write(ssl, data + off, (int)(len - off));
          if (n > 0) off += (size_t)n;
          else if (wait_io(ssl, n) != 0) closed("error");
          else drain(ssl);
        }
        break;
      }
      case 'k':
      case 'K':
        if (!SSL_key_update(ssl, h[0] == 'K' ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED))
          die("SSL_key_update");
        flush_handshake(ssl);
        break;
      case 'F': {
        uint32_t n = len == 4 ? (uint32_t)data[0] << 24 | (uint32_t)data[1] << 16 | (uint32_t)data[2] << 8 | data[3] : 0;
        for (uint32_t i = 0; i < n; i++) {
          if (!SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED)) die("SSL_key_update");
          flush_handshake(ssl);
        }
        break;
      }
      case 'X': {
        uint64_t seq = 0;
        for (size_t off = 0; off + 3 <= len;) {
          size_t blen = (size_t)data[off + 1] << 8 | data[off + 2];
          if (off + 3 + blen > len) die("bad X payload");
          inject(ssl, data[off], seq++, data + off + 3, blen);
          off += 3 + blen;
        }
        break;
      }
      default:
        die("unknown command");
    }
    free(data);
  }
}

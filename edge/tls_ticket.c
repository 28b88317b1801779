/* Session ticket keys and sealing (see tls_ticket.h). */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/chacha20_poly1305.h>

#include "edge/tls_ticket.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"

#define KEY_LEN CHACHA20_POLY1305_AEAD_KEYSIZE /* 32 */
#define NONCE_LEN CHACHA20_POLY1305_AEAD_IV_SIZE /* 12 */
#define TAG_LEN CHACHA20_POLY1305_AEAD_AUTHTAG_SIZE /* 16 */
/* Edges of a cluster stamp tickets with their own clocks: one a little ahead issues
 * tickets that look this much younger than now elsewhere. Beyond it, refused. */
#define CLOCK_SKEW 60
/* Largest key file read (two key lines and comments). */
#define FILE_MAX 4096

typedef struct tk_key {
  uint8_t name[TLS_TICKET_NAME];
  uint8_t key[KEY_LEN];
  int64_t born; /* generated keys: when it began to seal */
  int set;
} tk_key_t;

struct tls_tickets {
  pthread_mutex_t mu;
  char *file; /* NULL: generated keys, rotated every lifetime */
  int lifetime;
  tk_key_t cur, prev;
};

static int fill_random(void *p, size_t n) {
  uint8_t *b = p;
  while (n) {
    ssize_t r = getrandom(b, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return XMPP_ERR;
    }
    b += r;
    n -= (size_t)r;
  }
  return 0;
}

static int generate(tk_key_t *k, int64_t now) {
  if (fill_random(k->name, sizeof k->name) != 0 || fill_random(k->key, sizeof k->key) != 0) return XMPP_ERR;
  k->born = now;
  k->set = 1;
  return 0;
}

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* The key file: one or two lines of 96 hex digits (a 16-byte name, then a 32-byte
 * key), the current key first; blank lines and lines starting with '#' are skipped. */
static int load_file(const char *path, tk_key_t out[2], char **err) {
  FILE *f = fopen(path, "r");
  if (!f) {
    if (err) *err = xstrfmt("tls.ticket_key_file: cannot read %s: %s", path, strerror(errno));
    return XMPP_EIO;
  }
  char text[FILE_MAX + 1];
  size_t n = fread(text, 1, sizeof text, f);
  int rd_err = ferror(f);
  fclose(f);
  if (rd_err || n > FILE_MAX) {
    if (err) *err = xstrfmt("tls.ticket_key_file: %s: %s", path, rd_err ? "read error" : "larger than 4 KiB");
    return XMPP_EINVAL;
  }
  text[n] = '\0';
  memset(out, 0, 2 * sizeof *out);
  int nkeys = 0, line = 0;
  if (memchr(text, '\0', n)) {
    if (err) *err = xstrfmt("tls.ticket_key_file: %s: holds a NUL byte", path);
    goto bad;
  }
  for (char *p = text, *next; *p; p = next) {
    char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) : strlen(p);
    next = nl ? nl + 1 : p + len;
    line++;
    while (len && (p[len - 1] == '\r' || p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
    while (len && (*p == ' ' || *p == '\t')) p++, len--;
    if (len == 0 || *p == '#') continue;
    if (nkeys == 2) {
      if (err) *err = xstrfmt("tls.ticket_key_file: %s:%d: more than two keys (current and previous)", path, line);
      goto bad;
    }
    if (len != TLS_TICKET_KEY_HEX) {
      if (err)
        *err = xstrfmt("tls.ticket_key_file: %s:%d: a key is %d hex digits (openssl rand -hex 48), not %zu", path,
                       line, TLS_TICKET_KEY_HEX, len);
      goto bad;
    }
    uint8_t raw[TLS_TICKET_KEY_HEX / 2];
    for (size_t i = 0; i < sizeof raw; i++) {
      int hi = hexval((unsigned char)p[2 * i]), lo = hexval((unsigned char)p[2 * i + 1]);
      if (hi < 0 || lo < 0) {
        if (err) *err = xstrfmt("tls.ticket_key_file: %s:%d: not a hex digit", path, line);
        explicit_bzero(raw, sizeof raw);
        goto bad;
      }
      raw[i] = (uint8_t)(hi << 4 | lo);
    }
    memcpy(out[nkeys].name, raw, TLS_TICKET_NAME);
    memcpy(out[nkeys].key, raw + TLS_TICKET_NAME, KEY_LEN);
    out[nkeys].set = 1;
    explicit_bzero(raw, sizeof raw);
    nkeys++;
  }
  explicit_bzero(text, sizeof text);
  if (nkeys == 0) {
    if (err) *err = xstrfmt("tls.ticket_key_file: %s holds no key", path);
    return XMPP_EINVAL;
  }
  if (nkeys == 2 && memcmp(out[0].name, out[1].name, TLS_TICKET_NAME) == 0) {
    if (err) *err = xstrfmt("tls.ticket_key_file: %s: the two keys have the same name (first 16 bytes)", path);
    explicit_bzero(out, 2 * sizeof *out);
    return XMPP_EINVAL;
  }
  return 0;
bad:
  explicit_bzero(text, sizeof text);
  explicit_bzero(out, 2 * sizeof *out);
  return XMPP_EINVAL;
}

tls_tickets_t *tls_tickets_new_at(const char *key_file, int lifetime, int64_t now, char **err) {
  tls_tickets_t *k = xcalloc(1, sizeof *k);
  pthread_mutex_init(&k->mu, NULL);
  k->lifetime = lifetime < 1 ? 1 : lifetime;
  if (key_file && *key_file) {
    tk_key_t keys[2];
    if (load_file(key_file, keys, err) != 0) {
      tls_tickets_free(k);
      return NULL;
    }
    k->file = xstrdup(key_file);
    k->cur = keys[0];
    k->prev = keys[1];
    explicit_bzero(keys, sizeof keys);
  } else if (generate(&k->cur, now) != 0) {
    if (err) *err = xstrdup("cannot draw a random session ticket key");
    tls_tickets_free(k);
    return NULL;
  }
  return k;
}

tls_tickets_t *tls_tickets_new(const char *key_file, int lifetime, char **err) {
  return tls_tickets_new_at(key_file, lifetime, (int64_t)time(NULL), err);
}

void tls_tickets_free(tls_tickets_t *k) {
  if (!k) return;
  pthread_mutex_destroy(&k->mu);
  xfree(k->file);
  explicit_bzero(k, sizeof *k);
  xfree(k);
}

int tls_tickets_lifetime(const tls_tickets_t *k) { return k->lifetime; }

int tls_tickets_reload(tls_tickets_t *k, char **err) {
  if (!k->file) return 0;
  tk_key_t keys[2];
  int rc = load_file(k->file, keys, err);
  if (rc != 0) return rc;
  pthread_mutex_lock(&k->mu);
  k->cur = keys[0];
  k->prev = keys[1];
  pthread_mutex_unlock(&k->mu);
  explicit_bzero(keys, sizeof keys);
  return 0;
}

/* Generated keys turn over every lifetime: the current key becomes the previous one
 * and a new one is drawn, so a ticket stays openable for at least its lifetime (it was
 * sealed under a key at most one lifetime old, which is kept one lifetime more). After
 * a silence of two lifetimes both go. Under k->mu; 1 when it rotated. */
static int rotate_due(tls_tickets_t *k, int64_t now) {
  if (k->file || now - k->cur.born < k->lifetime) return 0;
  if (now - k->cur.born < 2 * (int64_t)k->lifetime) k->prev = k->cur;
  else explicit_bzero(&k->prev, sizeof k->prev);
  if (generate(&k->cur, now) != 0) explicit_bzero(&k->cur, sizeof k->cur); /* no key: no tickets */
  return 1;
}

#define STAMP TLS_TICKET_STAMP

static void aad_of(uint8_t aad[TLS_TICKET_NAME + TLS_TICKET_IV + 2], const uint8_t *name, const uint8_t *iv,
                   size_t len) {
  memcpy(aad, name, TLS_TICKET_NAME);
  memcpy(aad + TLS_TICKET_NAME, iv, TLS_TICKET_IV);
  aad[TLS_TICKET_NAME + TLS_TICKET_IV] = (uint8_t)(len >> 8);
  aad[TLS_TICKET_NAME + TLS_TICKET_IV + 1] = (uint8_t)len;
}

int tls_tickets_seal(tls_tickets_t *k, int64_t now, uint8_t name[TLS_TICKET_NAME], uint8_t iv[TLS_TICKET_IV],
                     uint8_t mac[TLS_TICKET_MAC], uint8_t *data, size_t len) {
  if (len != TLS_TICKET_PLAIN) {
    log_error("TLS: wolfSSL's session ticket is %zu bytes, not %d: this build issues no tickets", len,
              TLS_TICKET_PLAIN);
    return TLS_TICKET_FATAL;
  }
  pthread_mutex_lock(&k->mu);
  int rotated = rotate_due(k, now);
  tk_key_t key = k->cur;
  pthread_mutex_unlock(&k->mu);
  if (rotated) log_info("TLS: session ticket key rotated (generated keys turn over every %d s)", k->lifetime);
  if (!key.set || fill_random(iv, TLS_TICKET_IV) != 0) {
    explicit_bzero(&key, sizeof key);
    return TLS_TICKET_FATAL;
  }
  memcpy(name, key.name, TLS_TICKET_NAME);
  /* sealed: wolfSSL's bytes, then the issue time; the ciphertext of the time goes to
   * mac[16..24] (ChaCha20 is a stream cipher: the split changes nothing) */
  uint8_t buf[TLS_TICKET_PLAIN + STAMP];
  memcpy(buf, data, len);
  for (int i = 0; i < STAMP; i++) buf[len + i] = (uint8_t)((uint64_t)now >> (56 - 8 * i));
  uint8_t aad[TLS_TICKET_NAME + TLS_TICKET_IV + 2];
  aad_of(aad, name, iv, len);
  memset(mac, 0, TLS_TICKET_MAC);
  int rc = wc_ChaCha20Poly1305_Encrypt(key.key, iv, aad, sizeof aad, buf, (word32)sizeof buf, buf, mac);
  explicit_bzero(&key, sizeof key);
  memcpy(data, buf, len);
  memcpy(mac + TAG_LEN, buf + len, STAMP);
  explicit_bzero(buf, sizeof buf);
  return rc == 0 ? TLS_TICKET_OK : TLS_TICKET_FATAL;
}

int tls_tickets_open(tls_tickets_t *k, int64_t now, const uint8_t name[TLS_TICKET_NAME],
                     const uint8_t iv[TLS_TICKET_IV], const uint8_t mac[TLS_TICKET_MAC], uint8_t *data, size_t len) {
  /* First, before mac or data is touched: Debian's wolfSSL 5.5.4 passes the length
   * field of the ticket (client bytes) unchecked against the ticket's size, with mac at
   * data + len; it does check that the ticket holds at least TLS_TICKET_PLAIN + 66
   * bytes, so with len at that value every byte read here is inside it (a ticket with
   * another length field made the edge read past it: test_tls_resume, ASan). */
  if (len != TLS_TICKET_PLAIN) return TLS_TICKET_REJECT;
  for (int i = TAG_LEN + STAMP; i < TLS_TICKET_MAC; i++)
    if (mac[i]) return TLS_TICKET_REJECT;
  pthread_mutex_lock(&k->mu);
  int rotated = rotate_due(k, now);
  tk_key_t key = {0};
  int which = TLS_TICKET_REJECT;
  if (k->cur.set && memcmp(k->cur.name, name, TLS_TICKET_NAME) == 0) key = k->cur, which = TLS_TICKET_OK;
  else if (k->prev.set && memcmp(k->prev.name, name, TLS_TICKET_NAME) == 0) key = k->prev, which = TLS_TICKET_CREATE;
  pthread_mutex_unlock(&k->mu);
  if (rotated) log_info("TLS: session ticket key rotated (generated keys turn over every %d s)", k->lifetime);
  if (which == TLS_TICKET_REJECT) return TLS_TICKET_REJECT;
  uint8_t buf[TLS_TICKET_PLAIN + STAMP];
  memcpy(buf, data, len);
  memcpy(buf + len, mac + TAG_LEN, STAMP);
  uint8_t aad[TLS_TICKET_NAME + TLS_TICKET_IV + 2];
  aad_of(aad, name, iv, len);
  int rc = wc_ChaCha20Poly1305_Decrypt(key.key, iv, aad, sizeof aad, buf, (word32)sizeof buf, mac, buf);
  explicit_bzero(&key, sizeof key);
  int64_t issued = 0;
  for (int i = 0; i < STAMP; i++) issued = (int64_t)((uint64_t)issued << 8 | buf[len + i]);
  /* expired (RFC 8446 §4.6.1: not used past its lifetime), or stamped ahead of every
   * plausible clock: a full handshake */
  if (rc != 0 || issued > now + CLOCK_SKEW || now - issued > k->lifetime) {
    explicit_bzero(buf, sizeof buf);
    return TLS_TICKET_REJECT;
  }
  memcpy(data, buf, len);
  explicit_bzero(buf, sizeof buf);
  return which;
}

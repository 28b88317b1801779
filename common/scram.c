/* SCRAM-SHA-1 / SCRAM-SHA-256 server (RFC 5802, RFC 7677), SASL PLAIN parsing (RFC 4616)
 * and strict base64 (RFC 4648), on wolfCrypt. See common/scram.h. */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hmac.h>
#include <wolfssl/wolfcrypt/pwdbased.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/wolfcrypt/sha.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include "common/scram.h"

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/scram_testing.h"
#include "common/text.h"

#define SCRAM_MAX_MSG 4096          /* longest client-first / client-final message accepted */
#define SCRAM_MAX_USERNAME 1023     /* decoded username, bytes */
#define SCRAM_MAX_AUTHZID 3071      /* decoded authzid (a JID), bytes */
#define SCRAM_NONCE_RAND 24         /* random bytes of the server nonce part */
#define SCRAM_FAKE_ITERATIONS 4096  /* iteration count shown for unknown users */
#define PLAIN_MAX_PART 1023         /* authcid / passwd, bytes */
#define PLAIN_MAX_AUTHZID 3071      /* authzid (a JID), bytes */

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                            */

/* A zeroing the compiler cannot drop: every store goes through a volatile pointer. */
static void secure_zero(void *p, size_t n) {
  volatile unsigned char *v = p;
  while (n--) *v++ = 0;
}

static int wc_type(scram_hash_t h) { return h == SCRAM_SHA256 ? WC_SHA256 : WC_SHA; }

static bool hash_ok(scram_hash_t h) { return h == SCRAM_SHA1 || h == SCRAM_SHA256; }

size_t scram_hash_len(scram_hash_t h) {
  return h == SCRAM_SHA256 ? WC_SHA256_DIGEST_SIZE : WC_SHA_DIGEST_SIZE;
}

/* out = HMAC-H(key, m1 || m2). Returns 0 or XMPP_ERR. */
static int hmac2(scram_hash_t h, const unsigned char *key, size_t klen, const void *m1,
                 size_t l1, const void *m2, size_t l2, unsigned char *out) {
  if (klen > UINT32_MAX || l1 > UINT32_MAX || l2 > UINT32_MAX) return XMPP_ERR;
  Hmac mac;
  int rc = XMPP_ERR;
  if (wc_HmacInit(&mac, NULL, INVALID_DEVID) != 0) return XMPP_ERR;
  if (wc_HmacSetKey(&mac, wc_type(h), key, (word32)klen) != 0) goto out;
  if (l1 && wc_HmacUpdate(&mac, m1, (word32)l1) != 0) goto out;
  if (l2 && wc_HmacUpdate(&mac, m2, (word32)l2) != 0) goto out;
  if (wc_HmacFinal(&mac, out) != 0) goto out;
  rc = 0;
out:
  wc_HmacFree(&mac);
  secure_zero(&mac, sizeof mac); /* holds the padded key */
  return rc;
}

static int hmac(scram_hash_t h, const unsigned char *key, size_t klen, const void *m, size_t l,
                unsigned char *out) {
  return hmac2(h, key, klen, m, l, NULL, 0, out);
}

static int hash(scram_hash_t h, const unsigned char *in, size_t len, unsigned char *out) {
  if (len > UINT32_MAX) return XMPP_ERR;
  int rc = h == SCRAM_SHA256 ? wc_Sha256Hash(in, (word32)len, out)
                             : wc_ShaHash(in, (word32)len, out);
  return rc == 0 ? 0 : XMPP_ERR;
}

static int rand_bytes(unsigned char *buf, size_t n) {
  WC_RNG rng;
  if (n > UINT32_MAX || wc_InitRng(&rng) != 0) return XMPP_ERR;
  int rc = wc_RNG_GenerateBlock(&rng, buf, (word32)n);
  wc_FreeRng(&rng);
  return rc == 0 ? 0 : XMPP_ERR;
}

/* ---------------------------------------------------------------------------------------- */
/* Names                                                                                    */

const char *sasl_cond_name(sasl_cond_t c) {
  switch (c) {
  case SASL_OK: return "success";
  case SASL_ABORTED: return "aborted";
  case SASL_ACCOUNT_DISABLED: return "account-disabled";
  case SASL_CREDENTIALS_EXPIRED: return "credentials-expired";
  case SASL_ENCRYPTION_REQUIRED: return "encryption-required";
  case SASL_INCORRECT_ENCODING: return "incorrect-encoding";
  case SASL_INVALID_AUTHZID: return "invalid-authzid";
  case SASL_INVALID_MECHANISM: return "invalid-mechanism";
  case SASL_MALFORMED_REQUEST: return "malformed-request";
  case SASL_MECHANISM_TOO_WEAK: return "mechanism-too-weak";
  case SASL_NOT_AUTHORIZED: return "not-authorized";
  case SASL_TEMPORARY_AUTH_FAILURE: return "temporary-auth-failure";
  }
  return "not-authorized";
}

const char *scram_mech_name(scram_hash_t h) {
  switch (h) {
  case SCRAM_SHA1: return "SCRAM-SHA-1";
  case SCRAM_SHA256: return "SCRAM-SHA-256";
  }
  return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Base64 (RFC 4648 §4, padded, no whitespace, canonical)                                   */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *b64_encode(const unsigned char *in, size_t len) {
  if (len > (SIZE_MAX - 1) / 4 * 3 - 3) return NULL;
  size_t olen = (len + 2) / 3 * 4;
  char *out = xmalloc(olen + 1);
  char *o = out;
  size_t i = 0;
  for (; i + 3 <= len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    *o++ = B64[v >> 18 & 63];
    *o++ = B64[v >> 12 & 63];
    *o++ = B64[v >> 6 & 63];
    *o++ = B64[v & 63];
  }
  if (len - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    *o++ = B64[v >> 18 & 63];
    *o++ = B64[v >> 12 & 63];
    *o++ = '=';
    *o++ = '=';
  } else if (len - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    *o++ = B64[v >> 18 & 63];
    *o++ = B64[v >> 12 & 63];
    *o++ = B64[v >> 6 & 63];
    *o++ = '=';
  }
  *o = '\0';
  return out;
}

static int b64_val(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* Rejects: length not a multiple of 4, characters outside the alphabet (including
 * whitespace and NUL), '=' anywhere but the last one or two positions, and non-zero pad
 * bits (non-canonical encodings). */
int b64_decode(const char *in, size_t len, unsigned char **out, size_t *outlen) {
  if (out) *out = NULL;
  if (outlen) *outlen = 0;
  if (!out || !outlen || (!in && len)) return XMPP_EINVAL;
  if (len % 4) return XMPP_EINVAL;
  const unsigned char *s = (const unsigned char *)in;
  size_t pad = 0;
  if (len && s[len - 1] == '=') pad = (len >= 2 && s[len - 2] == '=') ? 2 : 1;
  size_t n = len / 4 * 3 - pad;
  unsigned char *buf = xmalloc(n + 1);
  size_t o = 0;
  for (size_t i = 0; i < len; i += 4) {
    bool last = i + 4 == len;
    size_t data = (last ? 4 - pad : 4);
    uint32_t v = 0;
    for (size_t k = 0; k < 4; k++) {
      int d = 0;
      if (k < data) {
        d = b64_val(s[i + k]);
        if (d < 0) goto bad;
      }
      v = v << 6 | (uint32_t)d;
    }
    buf[o++] = (unsigned char)(v >> 16);
    if (data >= 3) buf[o++] = (unsigned char)(v >> 8);
    if (data == 4) buf[o++] = (unsigned char)v;
    if (data == 3 && (v & 0xFF)) goto bad;     /* non-zero pad bits */
    if (data == 2 && (v & 0xFFFF)) goto bad;
  }
  buf[o] = 0;
  *out = buf;
  *outlen = o;
  return 0;
bad:
  secure_zero(buf, n + 1);
  xfree(buf);
  return XMPP_EINVAL;
}

/* ---------------------------------------------------------------------------------------- */
/* Credentials                                                                              */

int scram_cred_derive(scram_hash_t h, const char *password, size_t pwlen,
                      const unsigned char *salt, size_t salt_len, uint32_t iterations,
                      scram_cred_t *out) {
  if (!out) return XMPP_ERR;
  memset(out, 0, sizeof *out);
  if (!hash_ok(h) || (!password && pwlen) || !salt || salt_len == 0 ||
      salt_len > SCRAM_MAX_SALT || iterations == 0 || iterations > INT_MAX || pwlen > INT_MAX)
    return XMPP_ERR;
  size_t hl = scram_hash_len(h);
  unsigned char salted[SCRAM_MAX_KEY], ckey[SCRAM_MAX_KEY];
  static const unsigned char empty[1] = {0};
  int rc = XMPP_ERR;
  if (wc_PBKDF2(salted, password ? (const byte *)password : empty, (int)pwlen, salt,
                (int)salt_len, (int)iterations, (int)hl, wc_type(h)) != 0)
    goto out;
  if (hmac(h, salted, hl, "Client Key", 10, ckey) != 0) goto out;
  if (hash(h, ckey, hl, out->stored_key) != 0) goto out;
  if (hmac(h, salted, hl, "Server Key", 10, out->server_key) != 0) goto out;
  memcpy(out->salt, salt, salt_len);
  out->salt_len = salt_len;
  out->iterations = iterations;
  rc = 0;
out:
  secure_zero(salted, sizeof salted);
  secure_zero(ckey, sizeof ckey);
  if (rc != 0) secure_zero(out, sizeof *out);
  return rc;
}

int scram_cred_make(scram_hash_t h, const char *password, size_t pwlen, uint32_t iterations,
                    scram_cred_t *out) {
  unsigned char salt[SCRAM_SALT_LEN];
  if (!out) return XMPP_ERR;
  if (rand_bytes(salt, sizeof salt) != 0) {
    memset(out, 0, sizeof *out);
    return XMPP_ERR;
  }
  return scram_cred_derive(h, password, pwlen, salt, sizeof salt, iterations, out);
}

int scram_cred_check_password(scram_hash_t h, const scram_cred_t *cred, const char *password,
                              size_t pwlen) {
  if (!cred || !hash_ok(h)) return XMPP_EDENIED;
  scram_cred_t d;
  int rc = XMPP_EDENIED;
  if (scram_cred_derive(h, password, pwlen, cred->salt, cred->salt_len, cred->iterations, &d) ==
          0 &&
      text_ct_equal(d.stored_key, cred->stored_key, scram_hash_len(h)))
    rc = 0;
  secure_zero(&d, sizeof d);
  return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* PLAIN                                                                                    */

sasl_cond_t sasl_plain_parse(const unsigned char *msg, size_t len, char **authzid, char **authcid,
                             char **passwd) {
  if (authzid) *authzid = NULL;
  if (authcid) *authcid = NULL;
  if (passwd) *passwd = NULL;
  if (!msg || !authzid || !authcid || !passwd) return SASL_MALFORMED_REQUEST;
  if (len > PLAIN_MAX_AUTHZID + 2 * PLAIN_MAX_PART + 2) return SASL_MALFORMED_REQUEST;
  const unsigned char *n1 = memchr(msg, 0, len);
  if (!n1) return SASL_MALFORMED_REQUEST;
  const unsigned char *n2 = memchr(n1 + 1, 0, len - (size_t)(n1 + 1 - msg));
  if (!n2) return SASL_MALFORMED_REQUEST;
  if (memchr(n2 + 1, 0, len - (size_t)(n2 + 1 - msg))) return SASL_MALFORMED_REQUEST;
  size_t zlen = (size_t)(n1 - msg);
  size_t clen = (size_t)(n2 - (n1 + 1));
  size_t plen = len - (size_t)(n2 + 1 - msg);
  if (zlen > PLAIN_MAX_AUTHZID || clen == 0 || clen > PLAIN_MAX_PART || plen == 0 ||
      plen > PLAIN_MAX_PART)
    return SASL_MALFORMED_REQUEST;
  if (!text_utf8_valid(msg, zlen) || !text_utf8_valid(n1 + 1, clen) || !text_utf8_valid(n2 + 1, plen))
    return SASL_MALFORMED_REQUEST;
  *authzid = zlen ? xstrndup((const char *)msg, zlen) : NULL;
  *authcid = xstrndup((const char *)n1 + 1, clen);
  *passwd = xstrndup((const char *)n2 + 1, plen);
  return SASL_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* SCRAM server                                                                             */

enum { ST_NEW, ST_GOT_CLIENT_FIRST, ST_SENT_SERVER_FIRST, ST_DONE, ST_FAILED };

struct scram_server {
  scram_hash_t h;
  int state;
  bool fake; /* unknown user: the exchange must fail */
  char *gs2_header;
  size_t gs2_len;
  char *cf_bare; /* client-first-message-bare */
  size_t cf_bare_len;
  char *username;
  char *authzid;
  char *cnonce;
  char *nonce; /* client nonce + server nonce */
  size_t nonce_len;
  char *server_first;
  size_t server_first_len;
  char *test_snonce;
  scram_cred_t cred;
  /* channel binding (RFC 5802 §6, RFC 9266 tls-exporter): scram_server_channel_binding */
  bool plus, offered;
  unsigned char cb[SCRAM_MAX_CB];
  size_t cb_len;
};

void scram_server_channel_binding(scram_server_t *s, bool plus, const unsigned char *cb, size_t len) {
  if (!s || len > SCRAM_MAX_CB) return;
  s->offered = len > 0;
  s->plus = plus;
  if (len) memcpy(s->cb, cb, len);
  s->cb_len = len;
}

scram_server_t *scram_server_new(scram_hash_t h) {
  if (!hash_ok(h)) return NULL;
  scram_server_t *s = xcalloc(1, sizeof *s);
  s->h = h;
  s->state = ST_NEW;
  return s;
}

static void free_str(char **p) {
  if (*p) {
    secure_zero(*p, strlen(*p));
    xfree(*p);
    *p = NULL;
  }
}

void scram_server_free(scram_server_t *s) {
  if (!s) return;
  free_str(&s->gs2_header);
  free_str(&s->cf_bare);
  free_str(&s->username);
  free_str(&s->authzid);
  free_str(&s->cnonce);
  free_str(&s->nonce);
  free_str(&s->server_first);
  free_str(&s->test_snonce);
  secure_zero(s, sizeof *s);
  xfree(s);
}

const char *scram_server_authzid(const scram_server_t *s) { return s ? s->authzid : NULL; }

static bool printable_nonce_char(unsigned char c) { return c >= 0x21 && c <= 0x7E && c != ','; }

static bool is_alpha(unsigned char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

/* Decodes a saslname (RFC 5802 §7) spanning [p, end) up to the next ',' or end. Non-empty;
 * '=' only as "=2C" or "=3D". On success returns a new string and advances *pp to the ','
 * or end. */
static char *parse_saslname(const char **pp, const char *end, size_t max) {
  const char *p = *pp;
  const char *stop = memchr(p, ',', (size_t)(end - p));
  if (!stop) stop = end;
  if (stop == p) return NULL;
  char *out = xmalloc((size_t)(stop - p) + 1);
  size_t o = 0;
  while (p < stop) {
    if (*p == '=') {
      if (stop - p < 3) goto bad;
      if (p[1] == '2' && p[2] == 'C') out[o++] = ',';
      else if (p[1] == '3' && p[2] == 'D') out[o++] = '=';
      else goto bad;
      p += 3;
    } else {
      out[o++] = *p++;
    }
  }
  if (o > max) goto bad;
  out[o] = '\0';
  *pp = stop;
  return out;
bad:
  xfree(out);
  return NULL;
}

/* Skips one attr-val extension "ALPHA=value" (value: 1+ chars other than ',') at *pp.
 * Rejects the mandatory-extension attribute 'm'. */
static bool skip_extension(const char **pp, const char *end) {
  const char *p = *pp;
  if (end - p < 3 || !is_alpha((unsigned char)p[0]) || p[1] != '=' || p[0] == 'm') return false;
  p += 2;
  const char *stop = memchr(p, ',', (size_t)(end - p));
  if (!stop) stop = end;
  if (stop == p) return false;
  *pp = stop;
  return true;
}

static bool message_ok(const char *msg, size_t len) {
  return msg && len > 0 && len <= SCRAM_MAX_MSG && !memchr(msg, 0, len) &&
         text_utf8_valid((const unsigned char *)msg, len);
}

static sasl_cond_t fail(scram_server_t *s, sasl_cond_t c) {
  s->state = ST_FAILED;
  return c;
}

sasl_cond_t scram_server_client_first(scram_server_t *s, const char *msg, size_t len,
                                      const char **username) {
  if (username) *username = NULL;
  if (!s) return SASL_MALFORMED_REQUEST;
  if (s->state != ST_NEW) return fail(s, SASL_MALFORMED_REQUEST);
  if (!message_ok(msg, len)) return fail(s, SASL_MALFORMED_REQUEST);
  const char *p = msg, *end = msg + len;

  /* gs2-header = gs2-cbind-flag "," [ authzid ] ","; the flag: "p=" cb-name (only
   * tls-exporter, only for a -PLUS mechanism), "n" or "y" (only for one without) */
  static const char exporter[] = "p=tls-exporter";
  if (*p == 'p') {
    if (!s->plus || (size_t)(end - p) < sizeof exporter - 1 || memcmp(p, exporter, sizeof exporter - 1) != 0)
      return fail(s, SASL_MALFORMED_REQUEST);
    p += sizeof exporter - 1;
  } else if (*p == 'n' || *p == 'y') {
    if (s->plus) return fail(s, SASL_MALFORMED_REQUEST); /* -PLUS without binding */
    /* §6: "y" says the client could bind but thinks the server cannot; it could, and
     * said so (-PLUS offered): a downgrade */
    if (*p == 'y' && s->offered) return fail(s, SASL_NOT_AUTHORIZED);
    p++;
  } else {
    return fail(s, SASL_MALFORMED_REQUEST);
  }
  if (p >= end || *p != ',') return fail(s, SASL_MALFORMED_REQUEST);
  p++;
  if (end - p >= 2 && p[0] == 'a' && p[1] == '=') {
    p += 2;
    s->authzid = parse_saslname(&p, end, SCRAM_MAX_AUTHZID);
    if (!s->authzid) return fail(s, SASL_MALFORMED_REQUEST);
  }
  if (p >= end || *p != ',') return fail(s, SASL_MALFORMED_REQUEST);
  p++;
  s->gs2_len = (size_t)(p - msg);
  s->gs2_header = xstrndup(msg, s->gs2_len);

  /* client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions] */
  const char *bare = p;
  if (end - p < 2 || p[0] != 'n' || p[1] != '=') return fail(s, SASL_MALFORMED_REQUEST);
  p += 2;
  s->username = parse_saslname(&p, end, SCRAM_MAX_USERNAME);
  if (!s->username) return fail(s, SASL_MALFORMED_REQUEST);
  if (p >= end || *p != ',') return fail(s, SASL_MALFORMED_REQUEST);
  p++;
  if (end - p < 2 || p[0] != 'r' || p[1] != '=') return fail(s, SASL_MALFORMED_REQUEST);
  p += 2;
  const char *nonce = p;
  while (p < end && *p != ',') {
    if (!printable_nonce_char((unsigned char)*p)) return fail(s, SASL_MALFORMED_REQUEST);
    p++;
  }
  if (p == nonce) return fail(s, SASL_MALFORMED_REQUEST);
  s->cnonce = xstrndup(nonce, (size_t)(p - nonce));
  while (p < end) { /* optional extensions, ignored unless mandatory */
    p++;          /* the ',' */
    if (!skip_extension(&p, end)) return fail(s, SASL_MALFORMED_REQUEST);
  }
  s->cf_bare_len = (size_t)(end - bare);
  s->cf_bare = xstrndup(bare, s->cf_bare_len);
  s->state = ST_GOT_CLIENT_FIRST;
  if (username) *username = s->username;
  return SASL_OK;
}

/* Per-process secret for the fake salts of unknown users. */
static pthread_once_t fake_once = PTHREAD_ONCE_INIT;
static unsigned char fake_secret[32];
static bool fake_secret_ok;

static void fake_secret_init(void) { fake_secret_ok = rand_bytes(fake_secret, sizeof fake_secret) == 0; }

/* Fake but stable credentials for an unknown username: salt = first SCRAM_SALT_LEN bytes of
 * HMAC-SHA-256(secret, "salt" NUL mech NUL username); keys likewise, so nothing about them
 * reveals that the account does not exist. */
static int fake_cred(scram_hash_t h, const char *username, scram_cred_t *c) {
  pthread_once(&fake_once, fake_secret_init);
  if (!fake_secret_ok) return XMPP_ERR;
  char label[64];
  unsigned char mac[WC_SHA256_DIGEST_SIZE];
  memset(c, 0, sizeof *c);
  static const char *const what[] = {"salt", "stored", "server"};
  for (int k = 0; k < 3; k++) {
    int n = snprintf(label, sizeof label, "%s%c%s%c", what[k], 0, scram_mech_name(h), 0);
    if (n < 0 || (size_t)n >= sizeof label) return XMPP_ERR;
    if (hmac2(SCRAM_SHA256, fake_secret, sizeof fake_secret, label, (size_t)n, username,
              strlen(username), mac) != 0)
      return XMPP_ERR;
    if (k == 0) memcpy(c->salt, mac, SCRAM_SALT_LEN);
    else memcpy(k == 1 ? c->stored_key : c->server_key, mac, sizeof mac);
  }
  c->salt_len = SCRAM_SALT_LEN;
  c->iterations = SCRAM_FAKE_ITERATIONS;
  secure_zero(mac, sizeof mac);
  return 0;
}

static bool valid_snonce(const char *n) {
  if (!n || !*n) return false;
  for (; *n; n++)
    if (!printable_nonce_char((unsigned char)*n)) return false;
  return true;
}

int scram_server_set_nonce_for_test(scram_server_t *s, const char *server_nonce_suffix) {
  if (!s || !valid_snonce(server_nonce_suffix) || s->state > ST_GOT_CLIENT_FIRST)
    return XMPP_EINVAL;
  free_str(&s->test_snonce);
  s->test_snonce = xstrdup(server_nonce_suffix);
  return 0;
}

sasl_cond_t scram_server_first(scram_server_t *s, const scram_cred_t *cred, char **out,
                               size_t *outlen) {
  if (out) *out = NULL;
  if (outlen) *outlen = 0;
  if (!s) return SASL_MALFORMED_REQUEST;
  if (s->state != ST_GOT_CLIENT_FIRST || !out) return fail(s, SASL_MALFORMED_REQUEST);

  if (cred) {
    if (cred->salt_len == 0 || cred->salt_len > SCRAM_MAX_SALT || cred->iterations == 0)
      return fail(s, SASL_TEMPORARY_AUTH_FAILURE);
    s->cred = *cred;
    s->fake = false;
  } else {
    if (fake_cred(s->h, s->username, &s->cred) != 0) return fail(s, SASL_TEMPORARY_AUTH_FAILURE);
    s->fake = true;
  }

  char *snonce;
  if (s->test_snonce) {
    snonce = xstrdup(s->test_snonce);
  } else {
    unsigned char rnd[SCRAM_NONCE_RAND];
    if (rand_bytes(rnd, sizeof rnd) != 0) return fail(s, SASL_TEMPORARY_AUTH_FAILURE);
    snonce = b64_encode(rnd, sizeof rnd); /* alphabet A-Za-z0-9+/= : printable, no ',' */
  }
  size_t cl = strlen(s->cnonce), sl = strlen(snonce);
  s->nonce_len = cl + sl;
  s->nonce = xmalloc(s->nonce_len + 1);
  memcpy(s->nonce, s->cnonce, cl);
  memcpy(s->nonce + cl, snonce, sl + 1);
  xfree(snonce);

  char *salt = b64_encode(s->cred.salt, s->cred.salt_len);
  size_t n = 2 + s->nonce_len + 3 + strlen(salt) + 3 + 10 + 1;
  char *msg = xmalloc(n);
  int w = snprintf(msg, n, "r=%s,s=%s,i=%lu", s->nonce, salt, (unsigned long)s->cred.iterations);
  xfree(salt);
  if (w < 0 || (size_t)w >= n) {
    xfree(msg);
    return fail(s, SASL_TEMPORARY_AUTH_FAILURE);
  }
  s->server_first = msg;
  s->server_first_len = (size_t)w;
  *out = xstrndup(msg, (size_t)w);
  if (outlen) *outlen = (size_t)w;
  s->state = ST_SENT_SERVER_FIRST;
  return SASL_OK;
}

sasl_cond_t scram_server_client_final(scram_server_t *s, const char *msg, size_t len, char **out,
                                      size_t *outlen) {
  if (out) *out = NULL;
  if (outlen) *outlen = 0;
  if (!s) return SASL_MALFORMED_REQUEST;
  if (s->state != ST_SENT_SERVER_FIRST || !out) return fail(s, SASL_MALFORMED_REQUEST);
  if (!message_ok(msg, len)) return fail(s, SASL_MALFORMED_REQUEST);

  sasl_cond_t rc = SASL_MALFORMED_REQUEST;
  unsigned char *cbind = NULL, *proof = NULL;
  size_t cbind_len = 0, proof_len = 0;
  char *authmsg = NULL;
  size_t am_len = 0;
  unsigned char sig[SCRAM_MAX_KEY], ckey[SCRAM_MAX_KEY], skey[SCRAM_MAX_KEY];
  const char *p = msg, *end = msg + len;

  /* channel-binding = "c=" base64 */
  if (end - p < 2 || p[0] != 'c' || p[1] != '=') goto out;
  p += 2;
  const char *v = p;
  p = memchr(p, ',', (size_t)(end - p));
  if (!p) goto out;
  if (b64_decode(v, (size_t)(p - v), &cbind, &cbind_len) != 0) {
    rc = SASL_INCORRECT_ENCODING;
    goto out;
  }
  p++;
  /* nonce = "r=" c-nonce s-nonce */
  if (end - p < 2 || p[0] != 'r' || p[1] != '=') goto out;
  p += 2;
  const char *nonce = p;
  while (p < end && *p != ',') {
    if (!printable_nonce_char((unsigned char)*p)) goto out;
    p++;
  }
  size_t nonce_len = (size_t)(p - nonce);
  if (nonce_len == 0 || p >= end) goto out; /* the proof is mandatory */
  /* ["," extensions] "," proof; the proof is last */
  const char *without_proof_end;
  for (;;) {
    without_proof_end = p; /* at the ',' */
    p++;
    if (end - p >= 2 && p[0] == 'p' && p[1] == '=') break;
    if (end - p >= 2 && (p[0] == 'c' || p[0] == 'r') && p[1] == '=') goto out;
    if (!skip_extension(&p, end)) goto out;
    if (p >= end) goto out; /* no proof */
  }
  p += 2;
  if (memchr(p, ',', (size_t)(end - p))) goto out; /* p= must be the last attribute */
  if (b64_decode(p, (size_t)(end - p), &proof, &proof_len) != 0) {
    rc = SASL_INCORRECT_ENCODING;
    goto out;
  }

  size_t hl = scram_hash_len(s->h);
  if (proof_len != hl) goto out;
  rc = SASL_NOT_AUTHORIZED;
  /* c= is the gs2 header, then the channel's binding data when bound (RFC 5802 §7) */
  size_t cb_len = s->plus ? s->cb_len : 0;
  if (cbind_len != s->gs2_len + cb_len || memcmp(cbind, s->gs2_header, s->gs2_len) != 0 ||
      (cb_len && !text_ct_equal(cbind + s->gs2_len, s->cb, cb_len)))
    goto out;
  if (nonce_len != s->nonce_len || memcmp(nonce, s->nonce, nonce_len) != 0) goto out;

  /* AuthMessage = client-first-message-bare "," server-first-message ","
   *               client-final-message-without-proof */
  size_t wp_len = (size_t)(without_proof_end - msg);
  am_len = s->cf_bare_len + 1 + s->server_first_len + 1 + wp_len;
  authmsg = xmalloc(am_len + 1);
  char *a = authmsg;
  memcpy(a, s->cf_bare, s->cf_bare_len), a += s->cf_bare_len;
  *a++ = ',';
  memcpy(a, s->server_first, s->server_first_len), a += s->server_first_len;
  *a++ = ',';
  memcpy(a, msg, wp_len), a += wp_len;
  *a = '\0';

  rc = SASL_TEMPORARY_AUTH_FAILURE;
  if (hmac(s->h, s->cred.stored_key, hl, authmsg, am_len, sig) != 0) goto out;
  for (size_t i = 0; i < hl; i++) ckey[i] = proof[i] ^ sig[i];
  if (hash(s->h, ckey, hl, skey) != 0) goto out;
  bool match = text_ct_equal(skey, s->cred.stored_key, hl);
  if (!match || s->fake) {
    rc = SASL_NOT_AUTHORIZED;
    goto out;
  }
  if (hmac(s->h, s->cred.server_key, hl, authmsg, am_len, sig) != 0) goto out;
  char *v64 = b64_encode(sig, hl);
  size_t vl = strlen(v64);
  char *res = xmalloc(vl + 3);
  res[0] = 'v', res[1] = '=';
  memcpy(res + 2, v64, vl + 1);
  xfree(v64);
  *out = res;
  if (outlen) *outlen = vl + 2;
  rc = SASL_OK;

out:
  secure_zero(sig, sizeof sig);
  secure_zero(ckey, sizeof ckey);
  secure_zero(skey, sizeof skey);
  if (proof) {
    secure_zero(proof, proof_len);
    xfree(proof);
  }
  xfree(cbind);
  if (authmsg) {
    secure_zero(authmsg, am_len);
    xfree(authmsg);
  }
  s->state = rc == SASL_OK ? ST_DONE : ST_FAILED;
  if (rc == SASL_OK) secure_zero(&s->cred, sizeof s->cred);
  return rc;
}

/* NULL when acceptable, else why not: non-empty, at most SCRAM_PASSWORD_MAX bytes, valid UTF-8
 * without control characters (C0, DEL, C1; NUL included). */
const char *scram_password_problem(const char *p, size_t len) {
  if (len == 0) return "the password is empty";
  if (len > SCRAM_PASSWORD_MAX) return "the password is longer than 1023 bytes";
  const unsigned char *s = (const unsigned char *)p;
  for (size_t i = 0; i < len;) {
    uint32_t cp;
    size_t n;
    unsigned char b = s[i];
    if (b < 0x80) {
      cp = b;
      n = 1;
    } else if (b >= 0xc2 && b <= 0xdf) {
      cp = b & 0x1f;
      n = 2;
    } else if (b >= 0xe0 && b <= 0xef) {
      cp = b & 0x0f;
      n = 3;
    } else if (b >= 0xf0 && b <= 0xf4) {
      cp = b & 0x07;
      n = 4;
    } else {
      return "the password is not valid UTF-8";
    }
    if (i + n > len) return "the password is not valid UTF-8";
    for (size_t k = 1; k < n; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return "the password is not valid UTF-8";
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return "the password is not valid UTF-8";
    if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
      return "the password contains control characters";
    i += n;
  }
  return NULL;
}

/* ---- HT-SHA-256 (XEP-0484 FAST; draft-schmaus-kitten-sasl-ht) ----------------------------
 * Tokens are HT_TOKEN_BYTES random bytes in base64: longer than SHA-256's 64-byte block,
 * so HMAC hashes them first (RFC 2104 §2): HMAC(token, m) = HMAC(SHA-256(token), m).
 * The server keeps SHA-256(token) only, never the token (what it stores is still a
 * verifier that can answer for the token: it must be kept like SCRAM's keys). */

int ht_token_make(char **token, unsigned char key[HT_KEY_LEN]) {
  unsigned char raw[HT_TOKEN_BYTES];
  if (rand_bytes(raw, sizeof raw) != 0) return XMPP_ERR;
  *token = b64_encode(raw, sizeof raw);
  secure_zero(raw, sizeof raw);
  return ht_token_key(*token, key);
}

int ht_token_key(const char *token, unsigned char key[HT_KEY_LEN]) {
  return hash(SCRAM_SHA256, (const unsigned char *)token, strlen(token), key);
}

sasl_cond_t ht_parse(const unsigned char *msg, size_t len, char **authcid, unsigned char proof[HT_KEY_LEN]) {
  *authcid = NULL;
  const unsigned char *nul = memchr(msg, 0, len);
  if (!nul || nul == msg || (size_t)(msg + len - (nul + 1)) != HT_KEY_LEN) return SASL_MALFORMED_REQUEST;
  if (!text_utf8_valid(msg, (size_t)(nul - msg))) return SASL_MALFORMED_REQUEST;
  memcpy(proof, nul + 1, HT_KEY_LEN);
  *authcid = xstrndup((const char *)msg, (size_t)(nul - msg));
  return SASL_OK;
}

int ht_hmac(const unsigned char key[HT_KEY_LEN], int initiator, const unsigned char *cb, size_t cblen,
            unsigned char out[HT_KEY_LEN]) {
  const char *who = initiator ? "Initiator" : "Responder";
  return hmac2(SCRAM_SHA256, key, HT_KEY_LEN, who, strlen(who), cb, cblen, out);
}

int ht_check(const unsigned char key[HT_KEY_LEN], const unsigned char *cb, size_t cblen,
             const unsigned char proof[HT_KEY_LEN]) {
  unsigned char want[HT_KEY_LEN];
  if (ht_hmac(key, 1, cb, cblen, want) != 0) return XMPP_ERR;
  int ok = text_ct_equal(want, proof, HT_KEY_LEN);
  secure_zero(want, sizeof want);
  return ok ? 0 : XMPP_EDENIED;
}

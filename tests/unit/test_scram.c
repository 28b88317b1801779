/* Unit tests of common/scram.c: SCRAM-SHA-1/-256 server (RFC 5802 / RFC 7677 vectors),
 * SASL PLAIN parsing, base64, credential derivation. */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hmac.h>
#include <wolfssl/wolfcrypt/pwdbased.h>
#include <wolfssl/wolfcrypt/sha.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/scram.h"
#include "common/scram_testing.h"

/* ---------------------------------------------------------------------------------------- */
/* Helpers: an independent SCRAM client built directly on wolfCrypt.                        */

static const char *RFC_SALT_5802 = "QSXCR+Q6sek8bf92";
static const char *RFC_SALT_7677 = "W22ZaJ0SNY7soEsUEjb6gQ==";

static int wtype(scram_hash_t h) { return h == SCRAM_SHA256 ? WC_SHA256 : WC_SHA; }

static void t_hmac(scram_hash_t h, const unsigned char *key, size_t klen, const void *m,
                   size_t mlen, unsigned char *out) {
  Hmac mac;
  cr_assert_eq(wc_HmacInit(&mac, NULL, INVALID_DEVID), 0);
  cr_assert_eq(wc_HmacSetKey(&mac, wtype(h), key, (word32)klen), 0);
  cr_assert_eq(wc_HmacUpdate(&mac, m, (word32)mlen), 0);
  cr_assert_eq(wc_HmacFinal(&mac, out), 0);
  wc_HmacFree(&mac);
}

static void t_hash(scram_hash_t h, const unsigned char *in, size_t len, unsigned char *out) {
  if (h == SCRAM_SHA256) cr_assert_eq(wc_Sha256Hash(in, (word32)len, out), 0);
  else cr_assert_eq(wc_ShaHash(in, (word32)len, out), 0);
}

static unsigned char *dec(const char *b64, size_t *n) {
  unsigned char *out = NULL;
  cr_assert_eq(b64_decode(b64, strlen(b64), &out, n), 0, "decoding %s", b64);
  return out;
}

typedef struct {
  char nonce[512];
  char salt[128];
  unsigned iter;
} server_first_t;

static void parse_server_first(const char *sf, server_first_t *o) {
  int n = 0;
  cr_assert_eq(sscanf(sf, "r=%511[^,],s=%127[^,],i=%u%n", o->nonce, o->salt, &o->iter, &n), 3,
               "server-first: %s", sf);
  cr_assert_eq((size_t)n, strlen(sf));
}

/* Builds the client-final message for password, returns it (malloc'd) and the server
 * signature the client expects (base64, malloc'd). */
static char *client_final(scram_hash_t h, const char *password, const char *cf_bare,
                          const char *server_first, const char *cbind_b64, char **expect_v) {
  server_first_t sf;
  parse_server_first(server_first, &sf);
  size_t salt_len;
  unsigned char *salt = dec(sf.salt, &salt_len);
  size_t hl = scram_hash_len(h);
  unsigned char salted[32], ckey[32], stored[32], sig[32], proof[32], skey[32], ssig[32];
  cr_assert_eq(wc_PBKDF2(salted, (const byte *)password, (int)strlen(password), salt,
                         (int)salt_len, (int)sf.iter, (int)hl, wtype(h)),
               0);
  free(salt);
  t_hmac(h, salted, hl, "Client Key", 10, ckey);
  t_hash(h, ckey, hl, stored);
  t_hmac(h, salted, hl, "Server Key", 10, skey);

  char without_proof[1024];
  snprintf(without_proof, sizeof without_proof, "c=%s,r=%s", cbind_b64, sf.nonce);
  char am[4096];
  int amlen = snprintf(am, sizeof am, "%s,%s,%s", cf_bare, server_first, without_proof);
  t_hmac(h, stored, hl, am, (size_t)amlen, sig);
  for (size_t i = 0; i < hl; i++) proof[i] = ckey[i] ^ sig[i];
  t_hmac(h, skey, hl, am, (size_t)amlen, ssig);

  char *p64 = b64_encode(proof, hl);
  char *out = malloc(strlen(without_proof) + strlen(p64) + 4);
  sprintf(out, "%s,p=%s", without_proof, p64);
  free(p64);
  if (expect_v) *expect_v = b64_encode(ssig, hl);
  return out;
}

static scram_cred_t rfc_cred(scram_hash_t h, const char *salt_b64, const char *password) {
  size_t sl;
  unsigned char *salt = dec(salt_b64, &sl);
  scram_cred_t c;
  cr_assert_eq(scram_cred_derive(h, password, strlen(password), salt, sl, 4096, &c), 0);
  free(salt);
  return c;
}

/* Runs client-first + server-first; returns the server with server-first in *sf. */
static scram_server_t *start(scram_hash_t h, const char *cf, const scram_cred_t *cred,
                             char **sf) {
  scram_server_t *s = scram_server_new(h);
  cr_assert_not_null(s);
  const char *user = NULL;
  cr_assert_eq(scram_server_client_first(s, cf, strlen(cf), &user), SASL_OK, "cf: %s", cf);
  cr_assert_not_null(user);
  size_t n = 0;
  cr_assert_eq(scram_server_first(s, cred, sf, &n), SASL_OK);
  cr_assert_eq(n, strlen(*sf));
  return s;
}

static sasl_cond_t first_only(scram_hash_t h, const char *cf, size_t len) {
  scram_server_t *s = scram_server_new(h);
  const char *user = (const char *)1;
  sasl_cond_t c = scram_server_client_first(s, cf, len, &user);
  if (c != SASL_OK) cr_assert_null(user);
  scram_server_free(s);
  return c;
}

static sasl_cond_t first_str(const char *cf) { return first_only(SCRAM_SHA256, cf, strlen(cf)); }

/* Full exchange with a given client-final (possibly tampered). */
static sasl_cond_t final_with(scram_hash_t h, const scram_cred_t *cred, const char *cf,
                              const char *(*tamper)(const char *sf, const char *good, char *buf,
                                                    size_t bufsz)) {
  char *sf = NULL;
  scram_server_t *s = start(h, cf, cred, &sf);
  const char *bare = strstr(cf, "n=");
  char *good = client_final(h, "pencil", bare, sf, "biws", NULL);
  char buf[2048];
  const char *msg = tamper(sf, good, buf, sizeof buf);
  char *out = (char *)1;
  size_t outlen = 99;
  sasl_cond_t c = scram_server_client_final(s, msg, strlen(msg), &out, &outlen);
  if (c != SASL_OK) {
    cr_assert_null(out);
    cr_assert_eq(outlen, 0);
  }
  free(out);
  free(good);
  free(sf);
  scram_server_free(s);
  return c;
}

/* ---------------------------------------------------------------------------------------- */
/* RFC test vectors                                                                         */

static void rfc_vector(scram_hash_t h, const char *salt_b64, const char *cnonce,
                       const char *snonce, const char *proof, const char *v) {
  scram_cred_t cred = rfc_cred(h, salt_b64, "pencil");
  scram_server_t *s = scram_server_new(h);
  char cf[128];
  snprintf(cf, sizeof cf, "n,,n=user,r=%s", cnonce);
  const char *user = NULL;
  cr_assert_eq(scram_server_client_first(s, cf, strlen(cf), &user), SASL_OK);
  cr_assert_str_eq(user, "user");
  cr_assert_null(scram_server_authzid(s));
  cr_assert_eq(scram_server_set_nonce_for_test(s, snonce), 0);
  char *sf = NULL;
  size_t sflen = 0;
  cr_assert_eq(scram_server_first(s, &cred, &sf, &sflen), SASL_OK);
  char expect_sf[256];
  snprintf(expect_sf, sizeof expect_sf, "r=%s%s,s=%s,i=4096", cnonce, snonce, salt_b64);
  cr_assert_str_eq(sf, expect_sf);
  cr_assert_eq(sflen, strlen(expect_sf));

  char cfin[256];
  snprintf(cfin, sizeof cfin, "c=biws,r=%s%s,p=%s", cnonce, snonce, proof);
  /* the independent client computes the same proof */
  char *mine = client_final(h, "pencil", cf + 3, sf, "biws", NULL);
  cr_assert_str_eq(mine, cfin);
  free(mine);

  char *out = NULL;
  size_t outlen = 0;
  cr_assert_eq(scram_server_client_final(s, cfin, strlen(cfin), &out, &outlen), SASL_OK);
  char expect_v[128];
  snprintf(expect_v, sizeof expect_v, "v=%s", v);
  cr_assert_str_eq(out, expect_v);
  cr_assert_eq(outlen, strlen(expect_v));
  free(out);
  free(sf);
  scram_server_free(s);
}

Test(scram, rfc5802_example_sha1) {
  rfc_vector(SCRAM_SHA1, RFC_SALT_5802, "fyko+d2lbbFgONRv9qkxdawL", "3rfcNHYJY1ZVvWVs7j",
             "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=", "rmF9pqV8S7suAoZWja4dJRkFsKQ=");
}

Test(scram, rfc7677_example_sha256) {
  rfc_vector(SCRAM_SHA256, RFC_SALT_7677, "rOprNGfwEbeRWgbNEkqO",
             "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
             "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

/* ---------------------------------------------------------------------------------------- */
/* Full exchanges with random server nonces                                                 */

static void full_exchange(scram_hash_t h, const scram_cred_t *cred, const char *password,
                          sasl_cond_t expect) {
  const char *cf = "n,,n=user,r=clientNONCE123";
  char *sf = NULL;
  scram_server_t *s = start(h, cf, cred, &sf);
  server_first_t p;
  parse_server_first(sf, &p);
  cr_assert(strncmp(p.nonce, "clientNONCE123", 14) == 0);
  cr_assert_geq(strlen(p.nonce), 14 + 32, "server nonce part has >= 24 random bytes");
  cr_assert_null(strchr(p.nonce, ','));
  char *v = NULL;
  char *fin = client_final(h, password, cf + 3, sf, "biws", &v);
  char *out = NULL;
  size_t outlen = 0;
  cr_assert_eq(scram_server_client_final(s, fin, strlen(fin), &out, &outlen), expect);
  if (expect == SASL_OK) {
    cr_assert_eq(strncmp(out, "v=", 2), 0);
    cr_assert_str_eq(out + 2, v);
    cr_assert_eq(outlen, strlen(out));
  } else {
    cr_assert_null(out);
  }
  /* The exchange is over either way. */
  char *again = NULL;
  cr_assert_eq(scram_server_client_final(s, fin, strlen(fin), &again, NULL),
               SASL_MALFORMED_REQUEST);
  cr_assert_null(again);
  free(out);
  free(v);
  free(fin);
  free(sf);
  scram_server_free(s);
}

Test(scram, full_exchange_rfc_salt_sha1) {
  scram_cred_t c = rfc_cred(SCRAM_SHA1, RFC_SALT_5802, "pencil");
  full_exchange(SCRAM_SHA1, &c, "pencil", SASL_OK);
}

Test(scram, full_exchange_rfc_salt_sha256) {
  scram_cred_t c = rfc_cred(SCRAM_SHA256, RFC_SALT_7677, "pencil");
  full_exchange(SCRAM_SHA256, &c, "pencil", SASL_OK);
}

Test(scram, full_exchange_cred_make) {
  for (int h = SCRAM_SHA1; h <= SCRAM_SHA256; h++) {
    scram_cred_t c;
    cr_assert_eq(scram_cred_make((scram_hash_t)h, "pencil", 6, 4096, &c), 0);
    cr_assert_eq(c.salt_len, SCRAM_SALT_LEN);
    cr_assert_eq(c.iterations, 4096);
    full_exchange((scram_hash_t)h, &c, "pencil", SASL_OK);
    full_exchange((scram_hash_t)h, &c, "pencil2", SASL_NOT_AUTHORIZED);
  }
}

Test(scram, random_nonces_differ) {
  scram_cred_t c = rfc_cred(SCRAM_SHA256, RFC_SALT_7677, "pencil");
  char *a = NULL, *b = NULL;
  scram_server_t *s1 = start(SCRAM_SHA256, "n,,n=user,r=x", &c, &a);
  scram_server_t *s2 = start(SCRAM_SHA256, "n,,n=user,r=x", &c, &b);
  cr_assert_str_neq(a, b);
  free(a);
  free(b);
  scram_server_free(s1);
  scram_server_free(s2);
}

Test(scram, wrong_password) {
  scram_cred_t c = rfc_cred(SCRAM_SHA1, RFC_SALT_5802, "pencil");
  full_exchange(SCRAM_SHA1, &c, "Pencil", SASL_NOT_AUTHORIZED);
  scram_cred_t d = rfc_cred(SCRAM_SHA256, RFC_SALT_7677, "pencil");
  full_exchange(SCRAM_SHA256, &d, "", SASL_NOT_AUTHORIZED);
}

Test(scram, unknown_user_not_authorized) {
  full_exchange(SCRAM_SHA1, NULL, "pencil", SASL_NOT_AUTHORIZED);
  full_exchange(SCRAM_SHA256, NULL, "pencil", SASL_NOT_AUTHORIZED);
}

Test(scram, unknown_user_fake_salt_is_stable) {
  char *a = NULL, *b = NULL, *c = NULL, *d = NULL;
  scram_server_t *s1 = start(SCRAM_SHA256, "n,,n=ghost,r=abc", NULL, &a);
  scram_server_t *s2 = start(SCRAM_SHA256, "n,,n=ghost,r=def", NULL, &b);
  scram_server_t *s3 = start(SCRAM_SHA256, "n,,n=ghost2,r=abc", NULL, &c);
  scram_server_t *s4 = start(SCRAM_SHA1, "n,,n=ghost,r=abc", NULL, &d);
  server_first_t p1, p2, p3, p4;
  parse_server_first(a, &p1);
  parse_server_first(b, &p2);
  parse_server_first(c, &p3);
  parse_server_first(d, &p4);
  cr_assert_str_eq(p1.salt, p2.salt, "same user, same fake salt");
  cr_assert_str_neq(p1.salt, p3.salt, "other user, other salt");
  cr_assert_str_neq(p1.salt, p4.salt, "other mechanism, other salt");
  cr_assert_eq(p1.iter, 4096);
  cr_assert_eq(p4.iter, 4096);
  size_t sl;
  unsigned char *salt = dec(p1.salt, &sl);
  cr_assert_eq(sl, SCRAM_SALT_LEN, "looks like a real salt");
  free(salt);
  free(a), free(b), free(c), free(d);
  scram_server_free(s1);
  scram_server_free(s2);
  scram_server_free(s3);
  scram_server_free(s4);
}

/* ---------------------------------------------------------------------------------------- */
/* Tampering with client-final                                                              */

static const char *t_none(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf, (void)buf, (void)n;
  return good;
}

static const char *t_cbind_y(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  snprintf(buf, n, "c=eSws%s", good + strlen("c=biws")); /* "y,," instead of "n,," */
  return buf;
}

static const char *t_cbind_data(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  snprintf(buf, n, "c=biwsAAAA%s", good + strlen("c=biws")); /* "n,," + cbind bytes */
  return buf;
}

static const char *t_nonce(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  snprintf(buf, n, "%s", good);
  char *p = strstr(buf, ",p=");
  p[-1] = p[-1] == 'A' ? 'B' : 'A'; /* last nonce char */
  return buf;
}

static const char *t_nonce_short(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  const char *p = strstr(good, ",p=");
  snprintf(buf, n, "%.*s%s", (int)(p - good - 1), good, p); /* drop the last nonce char */
  return buf;
}

static const char *t_proof(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  snprintf(buf, n, "%s", good);
  char *p = strstr(buf, ",p=") + 3;
  p[0] = p[0] == 'A' ? 'B' : 'A';
  return buf;
}

static const char *t_proof_short(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  const char *p = strstr(good, ",p=");
  snprintf(buf, n, "%.*s,p=AAAA", (int)(p - good), good);
  return buf;
}

static const char *t_bad_b64_proof(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  snprintf(buf, n, "%s", good);
  char *p = strstr(buf, ",p=") + 3;
  p[1] = '*';
  return buf;
}

static const char *t_bad_b64_cbind(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  snprintf(buf, n, "c=biw%s", good + strlen("c=biws"));
  return buf;
}

static const char *t_extension(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  /* an extension changes AuthMessage, so the proof (computed without it) fails... */
  const char *p = strstr(good, ",p=");
  snprintf(buf, n, "%.*s,x=ext%s", (int)(p - good), good, p);
  return buf;
}

static const char *t_mandatory_ext(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  const char *p = strstr(good, ",p=");
  snprintf(buf, n, "%.*s,m=ext%s", (int)(p - good), good, p);
  return buf;
}

static const char *t_proof_not_last(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  snprintf(buf, n, "%s,x=y", good);
  return buf;
}

static const char *t_no_proof(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  const char *p = strstr(good, ",p=");
  snprintf(buf, n, "%.*s", (int)(p - good), good);
  return buf;
}

static const char *t_order(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  /* r= before c= */
  const char *r = strstr(good, ",r=") + 1;
  const char *p = strstr(good, ",p=");
  snprintf(buf, n, "%.*s,c=biws%s", (int)(p - r), r, p);
  return buf;
}

static const char *t_dup_nonce(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf;
  const char *r = strstr(good, ",r=");
  const char *p = strstr(good, ",p=");
  snprintf(buf, n, "%.*s%.*s%s", (int)(p - good), good, (int)(p - r), r, p);
  return buf;
}

static const char *t_garbage(const char *sf, const char *good, char *buf, size_t n) {
  (void)sf, (void)good;
  snprintf(buf, n, "hello world");
  return buf;
}

Test(scram, tampering) {
  scram_cred_t c = rfc_cred(SCRAM_SHA256, RFC_SALT_7677, "pencil");
  const char *cf = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_none), SASL_OK);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_cbind_y), SASL_NOT_AUTHORIZED);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_cbind_data), SASL_NOT_AUTHORIZED);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_nonce), SASL_NOT_AUTHORIZED);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_nonce_short), SASL_NOT_AUTHORIZED);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_proof), SASL_NOT_AUTHORIZED);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_proof_short), SASL_MALFORMED_REQUEST);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_bad_b64_proof), SASL_INCORRECT_ENCODING);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_bad_b64_cbind), SASL_INCORRECT_ENCODING);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_extension), SASL_NOT_AUTHORIZED);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_mandatory_ext), SASL_MALFORMED_REQUEST);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_proof_not_last), SASL_MALFORMED_REQUEST);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_no_proof), SASL_MALFORMED_REQUEST);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_order), SASL_MALFORMED_REQUEST);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_dup_nonce), SASL_MALFORMED_REQUEST);
  cr_assert_eq(final_with(SCRAM_SHA256, &c, cf, t_garbage), SASL_MALFORMED_REQUEST);
}

Test(scram, extension_in_client_final_is_accepted_when_signed) {
  /* The client includes the extension in what it signs: accepted. */
  scram_cred_t c = rfc_cred(SCRAM_SHA1, RFC_SALT_5802, "pencil");
  const char *cf = "n,,n=user,r=abc";
  char *sf = NULL;
  scram_server_t *s = start(SCRAM_SHA1, cf, &c, &sf);
  server_first_t p;
  parse_server_first(sf, &p);
  /* AuthMessage covers the extension: compute the proof here. */
  size_t sl;
  unsigned char *salt = dec(p.salt, &sl);
  unsigned char salted[20], ckey[20], stored[20], sig[20], proof[20];
  cr_assert_eq(wc_PBKDF2(salted, (const byte *)"pencil", 6, salt, (int)sl, 4096, 20, WC_SHA), 0);
  free(salt);
  t_hmac(SCRAM_SHA1, salted, 20, "Client Key", 10, ckey);
  t_hash(SCRAM_SHA1, ckey, 20, stored);
  char wp[700], am[2048];
  snprintf(wp, sizeof wp, "c=biws,r=%s,x=ext", p.nonce);
  int n = snprintf(am, sizeof am, "%s,%s,%s", cf + 3, sf, wp);
  t_hmac(SCRAM_SHA1, stored, 20, am, (size_t)n, sig);
  for (int i = 0; i < 20; i++) proof[i] = ckey[i] ^ sig[i];
  char *p64 = b64_encode(proof, 20);
  char msg[800];
  snprintf(msg, sizeof msg, "%s,p=%s", wp, p64);
  free(p64);
  char *out = NULL;
  cr_assert_eq(scram_server_client_final(s, msg, strlen(msg), &out, NULL), SASL_OK);
  cr_assert_not_null(out);
  free(out);
  free(sf);
  scram_server_free(s);
}

Test(scram, gs2_y_flag_accepted) {
  scram_cred_t c = rfc_cred(SCRAM_SHA256, RFC_SALT_7677, "pencil");
  const char *cf = "y,,n=user,r=abcdef";
  char *sf = NULL;
  scram_server_t *s = start(SCRAM_SHA256, cf, &c, &sf);
  char *fin = client_final(SCRAM_SHA256, "pencil", cf + 3, sf, "eSws", NULL);
  char *out = NULL;
  cr_assert_eq(scram_server_client_final(s, fin, strlen(fin), &out, NULL), SASL_OK);
  free(out);
  free(fin);
  free(sf);
  scram_server_free(s);

  /* with 'y' in client-first, c=biws ("n,,") does not match */
  s = start(SCRAM_SHA256, cf, &c, &sf);
  fin = client_final(SCRAM_SHA256, "pencil", cf + 3, sf, "biws", NULL);
  cr_assert_eq(scram_server_client_final(s, fin, strlen(fin), &out, NULL), SASL_NOT_AUTHORIZED);
  free(fin);
  free(sf);
  scram_server_free(s);
}

Test(scram, authzid_exchange) {
  scram_cred_t c = rfc_cred(SCRAM_SHA256, RFC_SALT_7677, "pencil");
  const char *cf = "n,a=admin=2Cx=3Dy@example.com,n=user,r=abcdef";
  char *sf = NULL;
  scram_server_t *s = start(SCRAM_SHA256, cf, &c, &sf);
  cr_assert_str_eq(scram_server_authzid(s), "admin,x=y@example.com");
  const char *hdr = "n,a=admin=2Cx=3Dy@example.com,";
  char *gs2 = b64_encode((const unsigned char *)hdr, strlen(hdr));
  char *fin = client_final(SCRAM_SHA256, "pencil", strstr(cf, ",n=") + 1, sf, gs2, NULL);
  char *out = NULL;
  cr_assert_eq(scram_server_client_final(s, fin, strlen(fin), &out, NULL), SASL_OK);
  free(out);
  free(fin);
  free(gs2);
  free(sf);
  scram_server_free(s);
}

/* ---------------------------------------------------------------------------------------- */
/* client-first parsing                                                                     */

Test(scram, saslname_decoding) {
  scram_server_t *s = scram_server_new(SCRAM_SHA1);
  const char *cf = "n,,n=a=2Cb=3Dc,r=nonce";
  const char *user = NULL;
  cr_assert_eq(scram_server_client_first(s, cf, strlen(cf), &user), SASL_OK);
  cr_assert_str_eq(user, "a,b=c");
  scram_server_free(s);

  cr_assert_eq(first_str("n,,n==3D=3D=2C,r=x"), SASL_OK);
  cr_assert_eq(first_str("n,,n=a=2cb,r=x"), SASL_MALFORMED_REQUEST, "lowercase escape");
  cr_assert_eq(first_str("n,,n=a=41b,r=x"), SASL_MALFORMED_REQUEST, "other escape");
  cr_assert_eq(first_str("n,,n=a=,r=x"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("n,,n=a=2,r=x"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("n,,n=a=b,r=x"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("n,,n=,r=x"), SASL_MALFORMED_REQUEST, "empty username");
  cr_assert_eq(first_str("n,a=,n=u,r=x"), SASL_MALFORMED_REQUEST, "empty authzid");
  cr_assert_eq(first_str("n,a=x=2,n=u,r=x"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("n,,n=\xc3\xa9l\xc3\xa8ve,r=x"), SASL_OK, "UTF-8 username");
  cr_assert_eq(first_str("n,,n=\xc3(,r=x"), SASL_MALFORMED_REQUEST, "bad UTF-8");
  cr_assert_eq(first_str("n,,n=\xed\xa0\x80,r=x"), SASL_MALFORMED_REQUEST, "surrogate");
  cr_assert_eq(first_str("n,,n=\xc0\xaf,r=x"), SASL_MALFORMED_REQUEST, "overlong");
}

Test(scram, gs2_header) {
  cr_assert_eq(first_str("n,,n=u,r=x"), SASL_OK);
  cr_assert_eq(first_str("y,,n=u,r=x"), SASL_OK);
  cr_assert_eq(first_str("p=tls-unique,,n=u,r=x"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("p=tls-exporter,,n=u,r=x"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("x,,n=u,r=x"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("N,,n=u,r=x"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("n,n=u,r=x"), SASL_MALFORMED_REQUEST, "missing authzid slot");
  cr_assert_eq(first_str("nn,,n=u,r=x"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("n,b=z,n=u,r=x"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("n,,"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("n"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str(""), SASL_MALFORMED_REQUEST);

  scram_server_t *s = scram_server_new(SCRAM_SHA256);
  const char *cf = "n,a=juliet@example.com,n=u,r=x";
  cr_assert_eq(scram_server_client_first(s, cf, strlen(cf), NULL), SASL_OK);
  cr_assert_str_eq(scram_server_authzid(s), "juliet@example.com");
  scram_server_free(s);
}

Test(scram, client_first_bare) {
  cr_assert_eq(first_str("n,,m=ext,n=u,r=x"), SASL_MALFORMED_REQUEST, "mandatory extension");
  cr_assert_eq(first_str("n,,n=u,r=x,m=ext"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("n,,n=u,r=x,x=ext"), SASL_OK, "optional extension");
  cr_assert_eq(first_str("n,,n=u,r=x,x=a=b,y=c"), SASL_OK);
  cr_assert_eq(first_str("n,,n=u,r=x,"), SASL_MALFORMED_REQUEST, "trailing comma");
  cr_assert_eq(first_str("n,,n=u,r=x,x="), SASL_MALFORMED_REQUEST, "empty extension value");
  cr_assert_eq(first_str("n,,n=u,r=x,1=a"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("n,,n=u,r=x,xy=a"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("n,,r=x,n=u"), SASL_MALFORMED_REQUEST, "order");
  cr_assert_eq(first_str("n,,n=u"), SASL_MALFORMED_REQUEST, "no nonce");
  cr_assert_eq(first_str("n,,n=u,"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("n,,n=u,r="), SASL_MALFORMED_REQUEST, "empty nonce");
  cr_assert_eq(first_str("n,,n=u,r=a b"), SASL_MALFORMED_REQUEST, "space in nonce");
  cr_assert_eq(first_str("n,,n=u,r=a\x7f"), SASL_MALFORMED_REQUEST, "DEL in nonce");
  cr_assert_eq(first_str("n,,n=u,r=\xc3\xa9"), SASL_MALFORMED_REQUEST, "non-ASCII nonce");
  cr_assert_eq(first_str("n,,n=u,r=!~\"#$%&'()*+-./:;<=>?@[\\]^_`{|}"), SASL_OK);
  cr_assert_eq(first_str("n,,u,r=x"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_str("garbage"), SASL_MALFORMED_REQUEST);
  cr_assert_eq(first_only(SCRAM_SHA256, "n,,n=u\0v,r=x", 12), SASL_MALFORMED_REQUEST, "NUL");
  cr_assert_eq(first_only(SCRAM_SHA256, "n,,n=u,r=x\0", 11), SASL_MALFORMED_REQUEST, "NUL");
}

Test(scram, lengths) {
  char *m = malloc(5000);
  /* username of 1023 bytes ok, 1024 refused; escapes count decoded */
  strcpy(m, "n,,n=");
  memset(m + 5, 'u', 1023);
  strcpy(m + 5 + 1023, ",r=x");
  cr_assert_eq(first_str(m), SASL_OK);
  strcpy(m, "n,,n=");
  memset(m + 5, 'u', 1024);
  strcpy(m + 5 + 1024, ",r=x");
  cr_assert_eq(first_str(m), SASL_MALFORMED_REQUEST);
  strcpy(m, "n,,n=");
  for (int i = 0; i < 1023; i++) memcpy(m + 5 + 3 * i, "=2C", 3);
  strcpy(m + 5 + 3 * 1023, ",r=x");
  cr_assert_eq(first_str(m), SASL_OK);
  /* whole message over 4 KiB refused */
  strcpy(m, "n,,n=u,r=");
  memset(m + 9, 'x', 4096 - 9);
  m[4096] = '\0';
  cr_assert_eq(first_str(m), SASL_OK);
  memset(m + 9, 'x', 4097 - 9);
  m[4097] = '\0';
  cr_assert_eq(first_str(m), SASL_MALFORMED_REQUEST);
  free(m);
}

Test(scram, out_of_sequence) {
  scram_cred_t c = rfc_cred(SCRAM_SHA1, RFC_SALT_5802, "pencil");
  char *out = (char *)1;
  size_t n = 5;

  scram_server_t *s = scram_server_new(SCRAM_SHA1);
  cr_assert_eq(scram_server_first(s, &c, &out, &n), SASL_MALFORMED_REQUEST);
  cr_assert_null(out);
  cr_assert_eq(n, 0);
  scram_server_free(s);

  s = scram_server_new(SCRAM_SHA1);
  cr_assert_eq(scram_server_client_final(s, "c=biws,r=x,p=AAAA", 17, &out, &n),
               SASL_MALFORMED_REQUEST);
  scram_server_free(s);

  s = scram_server_new(SCRAM_SHA1);
  cr_assert_eq(scram_server_client_first(s, "n,,n=u,r=x", 10, NULL), SASL_OK);
  cr_assert_eq(scram_server_client_first(s, "n,,n=u,r=x", 10, NULL), SASL_MALFORMED_REQUEST);
  scram_server_free(s);

  s = scram_server_new(SCRAM_SHA1);
  cr_assert_eq(scram_server_client_first(s, "n,,n=u,r=x", 10, NULL), SASL_OK);
  cr_assert_eq(scram_server_client_final(s, "c=biws,r=x,p=AAAA", 17, &out, &n),
               SASL_MALFORMED_REQUEST);
  cr_assert_eq(scram_server_first(s, &c, &out, &n), SASL_MALFORMED_REQUEST, "failed stays");
  scram_server_free(s);

  s = scram_server_new(SCRAM_SHA1);
  cr_assert_eq(scram_server_client_first(s, "n,,n=u,r=x", 10, NULL), SASL_OK);
  cr_assert_eq(scram_server_first(s, &c, &out, &n), SASL_OK);
  free(out);
  cr_assert_eq(scram_server_first(s, &c, &out, &n), SASL_MALFORMED_REQUEST);
  cr_assert_null(out);
  scram_server_free(s);

  /* a failed client-first ends the exchange */
  s = scram_server_new(SCRAM_SHA1);
  cr_assert_eq(scram_server_client_first(s, "x", 1, NULL), SASL_MALFORMED_REQUEST);
  cr_assert_eq(scram_server_client_first(s, "n,,n=u,r=x", 10, NULL), SASL_MALFORMED_REQUEST);
  scram_server_free(s);

  scram_server_free(NULL);
  cr_assert_null(scram_server_authzid(NULL));
}

Test(scram, set_nonce_for_test_validation) {
  scram_server_t *s = scram_server_new(SCRAM_SHA1);
  cr_assert_eq(scram_server_set_nonce_for_test(s, "a,b"), XMPP_EINVAL);
  cr_assert_eq(scram_server_set_nonce_for_test(s, ""), XMPP_EINVAL);
  cr_assert_eq(scram_server_set_nonce_for_test(s, "a b"), XMPP_EINVAL);
  cr_assert_eq(scram_server_set_nonce_for_test(s, "abc"), 0);
  cr_assert_eq(scram_server_set_nonce_for_test(s, "def"), 0);
  scram_server_free(s);
}

Test(scram, invalid_stored_cred) {
  scram_cred_t c = rfc_cred(SCRAM_SHA1, RFC_SALT_5802, "pencil");
  c.salt_len = 0;
  scram_server_t *s = scram_server_new(SCRAM_SHA1);
  cr_assert_eq(scram_server_client_first(s, "n,,n=u,r=x", 10, NULL), SASL_OK);
  char *out = NULL;
  cr_assert_eq(scram_server_first(s, &c, &out, NULL), SASL_TEMPORARY_AUTH_FAILURE);
  cr_assert_null(out);
  scram_server_free(s);
  cr_assert_null(scram_server_new((scram_hash_t)7));
}

/* ---------------------------------------------------------------------------------------- */
/* Credentials                                                                              */

Test(cred, derive_known_values) {
  /* RFC 5802: SaltedPassword → StoredKey; cross-checked with the independent client */
  scram_cred_t c = rfc_cred(SCRAM_SHA1, RFC_SALT_5802, "pencil");
  cr_assert_eq(c.iterations, 4096);
  cr_assert_eq(c.salt_len, 12);
  unsigned char salted[20], ckey[20], stored[20], skey[20];
  size_t sl;
  unsigned char *salt = dec(RFC_SALT_5802, &sl);
  cr_assert_eq(wc_PBKDF2(salted, (const byte *)"pencil", 6, salt, (int)sl, 4096, 20, WC_SHA), 0);
  free(salt);
  t_hmac(SCRAM_SHA1, salted, 20, "Client Key", 10, ckey);
  t_hash(SCRAM_SHA1, ckey, 20, stored);
  t_hmac(SCRAM_SHA1, salted, 20, "Server Key", 10, skey);
  cr_assert_eq(memcmp(c.stored_key, stored, 20), 0);
  cr_assert_eq(memcmp(c.server_key, skey, 20), 0);
}

Test(cred, derive_rejects_bad_params) {
  scram_cred_t c;
  unsigned char salt[65] = {1};
  cr_assert_eq(scram_cred_derive(SCRAM_SHA1, "pw", 2, salt, 16, 0, &c), XMPP_ERR);
  cr_assert_eq(scram_cred_derive(SCRAM_SHA1, "pw", 2, salt, 0, 4096, &c), XMPP_ERR);
  cr_assert_eq(scram_cred_derive(SCRAM_SHA1, "pw", 2, salt, 65, 4096, &c), XMPP_ERR);
  cr_assert_eq(scram_cred_derive((scram_hash_t)9, "pw", 2, salt, 16, 4096, &c), XMPP_ERR);
  cr_assert_eq(scram_cred_derive(SCRAM_SHA1, "pw", 2, salt, 64, 1, &c), 0);
  cr_assert_eq(scram_cred_derive(SCRAM_SHA256, "", 0, salt, 16, 1, &c), 0, "empty password");
}

Test(cred, check_password) {
  for (int h = SCRAM_SHA1; h <= SCRAM_SHA256; h++) {
    scram_cred_t c;
    cr_assert_eq(scram_cred_make((scram_hash_t)h, "s3cr\xc3\xa9t", 7, 1024, &c), 0);
    cr_assert_eq(scram_cred_check_password((scram_hash_t)h, &c, "s3cr\xc3\xa9t", 7), 0);
    cr_assert_eq(scram_cred_check_password((scram_hash_t)h, &c, "s3cr\xc3\xa9T", 7), XMPP_EDENIED);
    cr_assert_eq(scram_cred_check_password((scram_hash_t)h, &c, "s3cr\xc3\xa9", 6), XMPP_EDENIED);
    cr_assert_eq(scram_cred_check_password((scram_hash_t)h, &c, "", 0), XMPP_EDENIED);
    cr_assert_eq(scram_cred_check_password((scram_hash_t)h, NULL, "x", 1), XMPP_EDENIED);
  }
  scram_cred_t r = rfc_cred(SCRAM_SHA256, RFC_SALT_7677, "pencil");
  cr_assert_eq(scram_cred_check_password(SCRAM_SHA256, &r, "pencil", 6), 0);
  cr_assert_eq(scram_cred_check_password(SCRAM_SHA256, &r, "pencil!", 7), XMPP_EDENIED);
  cr_assert_eq(scram_cred_check_password(SCRAM_SHA1, &r, "pencil", 6), XMPP_EDENIED,
               "other hash");
}

Test(cred, make_uses_random_salt) {
  scram_cred_t a, b;
  cr_assert_eq(scram_cred_make(SCRAM_SHA256, "pw", 2, 1, &a), 0);
  cr_assert_eq(scram_cred_make(SCRAM_SHA256, "pw", 2, 1, &b), 0);
  cr_assert_neq(memcmp(a.salt, b.salt, SCRAM_SALT_LEN), 0);
  cr_assert_neq(memcmp(a.stored_key, b.stored_key, 32), 0);
}

/* ---------------------------------------------------------------------------------------- */
/* PLAIN                                                                                    */

static sasl_cond_t plain(const char *m, size_t n, char **z, char **c, char **p) {
  return sasl_plain_parse((const unsigned char *)m, n, z, c, p);
}

Test(plain, valid) {
  char *z, *c, *p;
  cr_assert_eq(plain("\0tim\0tanstaaftanstaaf", 21, &z, &c, &p), SASL_OK);
  cr_assert_null(z);
  cr_assert_str_eq(c, "tim");
  cr_assert_str_eq(p, "tanstaaftanstaaf");
  free(c), free(p);

  cr_assert_eq(plain("Ursel\0Kurt\0xipj3plmq", 20, &z, &c, &p), SASL_OK);
  cr_assert_str_eq(z, "Ursel");
  cr_assert_str_eq(c, "Kurt");
  cr_assert_str_eq(p, "xipj3plmq");
  free(z), free(c), free(p);

  cr_assert_eq(plain("\0\xc3\xa9\0p w", 7, &z, &c, &p), SASL_OK);
  cr_assert_str_eq(c, "\xc3\xa9");
  cr_assert_str_eq(p, "p w");
  free(c), free(p);
}

Test(plain, invalid) {
  char *z = (char *)1, *c = (char *)1, *p = (char *)1;
  cr_assert_eq(plain("", 0, &z, &c, &p), SASL_MALFORMED_REQUEST);
  cr_assert_null(z);
  cr_assert_null(c);
  cr_assert_null(p);
  cr_assert_eq(plain("timpw", 5, &z, &c, &p), SASL_MALFORMED_REQUEST, "no NUL");
  cr_assert_eq(plain("\0timpw", 6, &z, &c, &p), SASL_MALFORMED_REQUEST, "one NUL");
  cr_assert_eq(plain("\0tim\0pw\0", 8, &z, &c, &p), SASL_MALFORMED_REQUEST, "three NULs");
  cr_assert_eq(plain("\0\0tim\0pw", 8, &z, &c, &p), SASL_MALFORMED_REQUEST);
  cr_assert_eq(plain("\0\0pw", 4, &z, &c, &p), SASL_MALFORMED_REQUEST, "empty authcid");
  cr_assert_eq(plain("\0tim\0", 5, &z, &c, &p), SASL_MALFORMED_REQUEST, "empty passwd");
  cr_assert_eq(plain("\0\0", 2, &z, &c, &p), SASL_MALFORMED_REQUEST);
  cr_assert_eq(plain("\0t\xff\0pw", 6, &z, &c, &p), SASL_MALFORMED_REQUEST, "bad UTF-8");
  cr_assert_eq(sasl_plain_parse(NULL, 0, &z, &c, &p), SASL_MALFORMED_REQUEST);
  cr_assert_null(z);
  cr_assert_null(c);
  cr_assert_null(p);
}

Test(plain, lengths) {
  char *m = malloc(3000);
  char *z, *c, *p;
  m[0] = 0;
  memset(m + 1, 'a', 1023);
  m[1024] = 0;
  memset(m + 1025, 'b', 1023);
  cr_assert_eq(plain(m, 2048, &z, &c, &p), SASL_OK);
  cr_assert_eq(strlen(c), 1023);
  cr_assert_eq(strlen(p), 1023);
  free(c), free(p);
  memset(m + 1025, 'b', 1024);
  cr_assert_eq(plain(m, 2049, &z, &c, &p), SASL_MALFORMED_REQUEST, "passwd too long");
  m[0] = 0;
  memset(m + 1, 'a', 1024);
  m[1025] = 0;
  m[1026] = 'b';
  cr_assert_eq(plain(m, 1027, &z, &c, &p), SASL_MALFORMED_REQUEST, "authcid too long");
  free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Base64                                                                                   */

Test(base64, rfc4648_vectors) {
  static const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
  static const char *out[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
  for (size_t i = 0; i < 7; i++) {
    char *e = b64_encode((const unsigned char *)in[i], strlen(in[i]));
    cr_assert_str_eq(e, out[i]);
    free(e);
    unsigned char *d = NULL;
    size_t n = 99;
    cr_assert_eq(b64_decode(out[i], strlen(out[i]), &d, &n), 0);
    cr_assert_eq(n, strlen(in[i]));
    cr_assert_eq(memcmp(d, in[i], n), 0);
    free(d);
  }
}

Test(base64, binary_round_trip) {
  unsigned char buf[300];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(i * 151 + 7);
  for (size_t len = 0; len <= sizeof buf; len++) {
    char *e = b64_encode(buf, len);
    cr_assert_eq(strlen(e), (len + 2) / 3 * 4);
    unsigned char *d = NULL;
    size_t n = 0;
    cr_assert_eq(b64_decode(e, strlen(e), &d, &n), 0);
    cr_assert_eq(n, len);
    cr_assert_eq(memcmp(d, buf, len), 0);
    free(d);
    free(e);
  }
  char *e = b64_encode((const unsigned char *)"\xfb\xff\xbf", 3);
  cr_assert_str_eq(e, "+/+/");
  free(e);
}

Test(base64, rejects) {
  static const char *bad[] = {
      "Zg=",     "Zg",       "Z",        "Z===",      "====",     "Zh==",     "Zm9=",
      "Zm9v\n",  "Zm 9v",    "Zm9v====", "=Zm9",      "Zm=v",     "Zm8=Zm8=", "Zm9-",
      "Zm9_",    " Zm9v",    "Zm9v ",    "Zg==\r\n",  "Zm9vYg=a", "Zm\xc3\xa9",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    unsigned char *d = (unsigned char *)1;
    size_t n = 7;
    cr_assert_eq(b64_decode(bad[i], strlen(bad[i]), &d, &n), XMPP_EINVAL, "accepted '%s'",
                 bad[i]);
    cr_assert_null(d);
    cr_assert_eq(n, 0);
  }
  unsigned char *d = NULL;
  size_t n;
  cr_assert_eq(b64_decode("Zm\0v", 4, &d, &n), XMPP_EINVAL, "NUL");
  cr_assert_eq(b64_decode("Zm9vYmFy", 7, &d, &n), XMPP_EINVAL, "length honoured");
  cr_assert_eq(b64_decode("Zm9vYmFy", 4, &d, &n), 0, "prefix by length");
  cr_assert_eq(n, 3);
  free(d);
}

/* ---------------------------------------------------------------------------------------- */
/* Names                                                                                    */

Test(names, conditions_and_mechs) {
  cr_assert_str_eq(sasl_cond_name(SASL_ABORTED), "aborted");
  cr_assert_str_eq(sasl_cond_name(SASL_ACCOUNT_DISABLED), "account-disabled");
  cr_assert_str_eq(sasl_cond_name(SASL_CREDENTIALS_EXPIRED), "credentials-expired");
  cr_assert_str_eq(sasl_cond_name(SASL_ENCRYPTION_REQUIRED), "encryption-required");
  cr_assert_str_eq(sasl_cond_name(SASL_INCORRECT_ENCODING), "incorrect-encoding");
  cr_assert_str_eq(sasl_cond_name(SASL_INVALID_AUTHZID), "invalid-authzid");
  cr_assert_str_eq(sasl_cond_name(SASL_INVALID_MECHANISM), "invalid-mechanism");
  cr_assert_str_eq(sasl_cond_name(SASL_MALFORMED_REQUEST), "malformed-request");
  cr_assert_str_eq(sasl_cond_name(SASL_MECHANISM_TOO_WEAK), "mechanism-too-weak");
  cr_assert_str_eq(sasl_cond_name(SASL_NOT_AUTHORIZED), "not-authorized");
  cr_assert_str_eq(sasl_cond_name(SASL_TEMPORARY_AUTH_FAILURE), "temporary-auth-failure");
  cr_assert_str_eq(scram_mech_name(SCRAM_SHA1), "SCRAM-SHA-1");
  cr_assert_str_eq(scram_mech_name(SCRAM_SHA256), "SCRAM-SHA-256");
  cr_assert_eq(scram_hash_len(SCRAM_SHA1), 20);
  cr_assert_eq(scram_hash_len(SCRAM_SHA256), 32);
}

/* ---------------------------------------------------------------------------------------- */
/* HT-SHA-256 (XEP-0484 FAST)                                                              */

/* HMAC keyed with the token itself, as a client computes it. */
static void hmac_with_token(const char *token, const char *msg, unsigned char out[32]) {
  Hmac mac;
  cr_assert_eq(wc_HmacInit(&mac, NULL, INVALID_DEVID), 0);
  cr_assert_eq(wc_HmacSetKey(&mac, WC_SHA256, (const byte *)token, (word32)strlen(token)), 0);
  cr_assert_eq(wc_HmacUpdate(&mac, (const byte *)msg, (word32)strlen(msg)), 0);
  cr_assert_eq(wc_HmacFinal(&mac, out), 0);
  wc_HmacFree(&mac);
}

/* The server keeps SHA-256(token) only; with tokens longer than the 64-byte block, HMAC
 * under that hash is HMAC under the token (RFC 2104 §2): the client's proofs verify. */
Test(ht, stored_hash_verifies_the_token_proofs) {
  for (int i = 0; i < 20; i++) {
    char *tok = NULL;
    unsigned char key[HT_KEY_LEN], again[HT_KEY_LEN], want[32], got[32];
    cr_assert_eq(ht_token_make(&tok, key), 0);
    cr_assert_gt(strlen(tok), 64, "longer than the block, or the hash is not the key");
    cr_assert_eq(ht_token_key(tok, again), 0);
    cr_assert_eq(memcmp(key, again, sizeof key), 0);
    hmac_with_token(tok, "Initiator", want);
    cr_assert_eq(ht_check(key, NULL, 0, want), 0);
    want[i % 32] ^= 1;
    cr_assert_eq(ht_check(key, NULL, 0, want), XMPP_EDENIED, "one bit off");
    hmac_with_token(tok, "Responder", want);
    cr_assert_eq(ht_hmac(key, 0, NULL, 0, got), 0);
    cr_assert_eq(memcmp(want, got, 32), 0);
    xfree(tok);
  }
}

Test(ht, parse) {
  unsigned char msg[64], proof[HT_KEY_LEN];
  char *user = NULL;
  memcpy(msg, "alice", 5);
  msg[5] = 0;
  memset(msg + 6, 0xab, 32);
  cr_assert_eq(ht_parse(msg, 38, &user, proof), SASL_OK);
  cr_assert_str_eq(user, "alice");
  cr_assert_eq(proof[31], 0xab);
  xfree(user);
  cr_assert_eq(ht_parse(msg, 37, &user, proof), SASL_MALFORMED_REQUEST, "a proof one byte short");
  cr_assert_null(user);
  cr_assert_eq(ht_parse(msg, 39, &user, proof), SASL_MALFORMED_REQUEST, "one byte long");
  cr_assert_eq(ht_parse(msg + 5, 33, &user, proof), SASL_MALFORMED_REQUEST, "no authcid");
  cr_assert_eq(ht_parse(msg, 5, &user, proof), SASL_MALFORMED_REQUEST, "no NUL");
}

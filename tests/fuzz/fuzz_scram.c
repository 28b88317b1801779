/* libFuzzer target: SCRAM-SHA-1 / SCRAM-SHA-256 server message parsing (RFC 5802, RFC 7677)
 * in common/scram.c, against a fixed stored credential: the RFC test-vector account
 * (password "pencil", the RFCs' salts, 4096 iterations) and the RFCs' server nonces, so
 * the RFC exchanges replay exactly.
 *
 * Input: byte 0: bit 0 = hash (0 SHA-1, 1 SHA-256); bit 1 = the account is unknown (fake
 * credentials); bit 2 = the target computes and appends the correct proof itself (the rest
 * of client-final is without-proof, so the success path is reached). The rest is
 * client-first NUL client-final (both are refused if they hold a NUL anyway).
 *
 * Invariants:
 *  - server-first is exactly "r=" c-nonce s-nonce ",s=" base64(salt) ",i=" iterations;
 *  - soundness: SASL_OK only for a known account and a proof that verifies, recomputed
 *    here from RFC 5802 §3 (ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage),
 *    H(ClientKey) == StoredKey), and the returned "v=" is HMAC(ServerKey, AuthMessage);
 *  - completeness: a client-final "c=" base64(gs2-header) ",r=" nonce ",p=" correct-proof
 *    for a known account is accepted. */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hmac.h>
#include <wolfssl/wolfcrypt/pwdbased.h>
#include <wolfssl/wolfcrypt/sha.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/scram.h"
#include "common/scram_testing.h"

static const char *const SALT_B64[2] = {"QSXCR+Q6sek8bf92", "W22ZaJ0SNY7soEsUEjb6gQ=="};
static const char *const SNONCE[2] = {"3rfcNHYJY1ZVvWVs7j", "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"};
static scram_cred_t cred[2];
static unsigned char client_key[2][SCRAM_MAX_KEY];

static void die(const char *what) {
  fprintf(stderr, "INVARIANT: %s\n", what);
  abort();
}

static int wct(int h) { return h ? WC_SHA256 : WC_SHA; }

static void hmac(int h, const unsigned char *key, size_t klen, const void *m, size_t mlen,
                 unsigned char *out) {
  Hmac mac;
  if (wc_HmacInit(&mac, NULL, INVALID_DEVID) || wc_HmacSetKey(&mac, wct(h), key, (word32)klen) ||
      wc_HmacUpdate(&mac, m, (word32)mlen) || wc_HmacFinal(&mac, out))
    die("hmac");
  wc_HmacFree(&mac);
}

static void hash(int h, const unsigned char *in, size_t len, unsigned char *out) {
  if (h ? wc_Sha256Hash(in, (word32)len, out) : wc_ShaHash(in, (word32)len, out)) die("hash");
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  for (int h = 0; h < 2; h++) {
    unsigned char *salt;
    size_t slen;
    if (b64_decode(SALT_B64[h], strlen(SALT_B64[h]), &salt, &slen)) die("salt");
    if (scram_cred_derive((scram_hash_t)h, "pencil", 6, salt, slen, 4096, &cred[h])) die("derive");
    unsigned char salted[SCRAM_MAX_KEY];
    size_t hl = scram_hash_len((scram_hash_t)h);
    if (wc_PBKDF2(salted, (const byte *)"pencil", 6, salt, (int)slen, 4096, (int)hl, wct(h)))
      die("pbkdf2");
    hmac(h, salted, hl, "Client Key", 10, client_key[h]);
    xfree(salt);
  }
  return 0;
}

/* AuthMessage for this exchange; cf is the whole client-first message. */
static void auth_message(const char *cf, size_t cflen, const char *sf, const char *final_wp,
                         size_t wplen, buf_t *am) {
  const char *c1 = memchr(cf, ',', cflen);
  const char *c2 = c1 ? memchr(c1 + 1, ',', cflen - (size_t)(c1 + 1 - cf)) : NULL;
  if (!c2) die("accepted client-first without a gs2 header");
  buf_append(am, c2 + 1, cflen - (size_t)(c2 + 1 - cf));
  buf_putc(am, ',');
  buf_puts(am, sf);
  buf_putc(am, ',');
  buf_append(am, final_wp, wplen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int h = data[0] & 1, unknown = data[0] & 2, autoproof = data[0] & 4;
  size_t hl = scram_hash_len((scram_hash_t)h);
  const char *in = (const char *)data + 1;
  size_t len = size - 1;
  const char *nul = memchr(in, 0, len);
  size_t cflen = nul ? (size_t)(nul - in) : len;
  const char *cfin = nul ? nul + 1 : NULL;
  size_t cfinlen = nul ? len - cflen - 1 : 0;

  scram_server_t *s = scram_server_new((scram_hash_t)h);
  if (scram_server_set_nonce_for_test(s, SNONCE[h])) die("set nonce");
  const char *user = NULL;
  sasl_cond_t rc = scram_server_client_first(s, in, cflen, &user);
  if (rc != SASL_OK) {
    if (user) die("username set on failure");
    scram_server_free(s);
    return 0;
  }
  if (!user || !*user) die("empty username accepted");

  char *sf = NULL;
  size_t sflen = 0;
  if (scram_server_first(s, unknown ? NULL : &cred[h], &sf, &sflen) != SASL_OK) die("server-first");
  /* r=<cnonce><snonce>,s=<salt>,i=4096 ; the c-nonce is what follows ",r=" in client-first */
  {
    const char *r = strstr(sf, ",s=");
    if (strncmp(sf, "r=", 2) || !r || strlen(sf) != sflen) die("server-first shape");
    size_t nl = (size_t)(r - sf - 2), sl = strlen(SNONCE[h]);
    if (nl <= sl || strncmp(sf + 2 + nl - sl, SNONCE[h], sl)) die("server-first nonce");
    if (!unknown) {
      char tail[128];
      snprintf(tail, sizeof tail, ",s=%s,i=4096", SALT_B64[h]);
      if (strcmp(r, tail)) die("server-first salt/iterations");
    }
  }
  if (!cfin) {
    xfree(sf);
    scram_server_free(s);
    return 0;
  }

  /* the client-final message to send */
  buf_t fin;
  buf_init(&fin);
  buf_append(&fin, cfin, cfinlen);
  unsigned char sig[SCRAM_MAX_KEY];
  buf_t am;
  buf_init(&am);
  if (autoproof && !memchr(cfin, 0, cfinlen)) {
    auth_message(in, cflen, sf, cfin, cfinlen, &am);
    hmac(h, cred[h].stored_key, hl, am.data, am.len, sig);
    unsigned char proof[SCRAM_MAX_KEY];
    for (size_t i = 0; i < hl; i++) proof[i] = client_key[h][i] ^ sig[i];
    char *p64 = b64_encode(proof, hl);
    buf_puts(&fin, ",p=");
    buf_puts(&fin, p64);
    xfree(p64);
  }

  char *v = NULL;
  size_t vlen = 0;
  rc = scram_server_client_final(s, (const char *)fin.data, fin.len, &v, &vlen);

  /* completeness: the canonical final message with the right proof must pass */
  if (autoproof && !unknown) {
    const char *c1 = memchr(in, ',', cflen);
    const char *c2 = memchr(c1 + 1, ',', cflen - (size_t)(c1 + 1 - in));
    char *gs2 = b64_encode((const unsigned char *)in, (size_t)(c2 + 1 - in));
    const char *r = strstr(sf, ",s=");
    buf_t want;
    buf_init(&want);
    buf_printf(&want, "c=%s,r=%.*s", gs2, (int)(r - sf - 2), sf + 2);
    if (want.len == cfinlen && !memcmp(want.data, cfin, cfinlen) && rc != SASL_OK) {
      fprintf(stderr, "condition %s\n", sasl_cond_name(rc));
      die("correct client-final refused");
    }
    buf_free(&want);
    xfree(gs2);
  }

  if (rc == SASL_OK) {
    if (unknown) die("unknown account authenticated");
    /* soundness: recompute the proof check from the message itself */
    const char *m = (const char *)fin.data;
    const char *pp = NULL;
    for (size_t i = fin.len; i-- > 2;)
      if (m[i - 2] == ',' && m[i - 1] == 'p' && m[i] == '=') {
        pp = m + i - 2;
        break;
      }
    if (!pp) die("accepted without a proof");
    buf_t am2;
    buf_init(&am2);
    auth_message(in, cflen, sf, m, (size_t)(pp - m), &am2);
    unsigned char *proof;
    size_t plen;
    if (b64_decode(pp + 3, fin.len - (size_t)(pp + 3 - m), &proof, &plen) || plen != hl)
      die("accepted a proof that is not base64 of the hash length");
    unsigned char ck[SCRAM_MAX_KEY], sk[SCRAM_MAX_KEY];
    hmac(h, cred[h].stored_key, hl, am2.data, am2.len, sig);
    for (size_t i = 0; i < hl; i++) ck[i] = proof[i] ^ sig[i];
    hash(h, ck, hl, sk);
    if (memcmp(sk, cred[h].stored_key, hl)) die("accepted a wrong proof");
    hmac(h, cred[h].server_key, hl, am2.data, am2.len, sig);
    char *v64 = b64_encode(sig, hl);
    if (!v || vlen != strlen(v) || strncmp(v, "v=", 2) || strcmp(v + 2, v64))
      die("server signature wrong");
    xfree(v64);
    xfree(proof);
    buf_free(&am2);
  } else if (v) {
    die("server-final set on failure");
  }
  xfree(v);
  buf_free(&am);
  buf_free(&fin);
  xfree(sf);
  scram_server_free(s);
  return 0;
}

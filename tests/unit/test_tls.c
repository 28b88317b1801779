/* Unit tests of edge/tls.c's TLS 1.3 key schedule steps (the offloaded record layer's
 * KeyUpdate, RFC 8446 §4.6.3, §7.2, §7.3): keys and IVs against RFC 8448 §3, the next
 * secret ("traffic upd") against values computed with Python's hashlib/hmac (RFC 8448
 * has no KeyUpdate trace). That OpenSSL agrees on a live connection is
 * tests/integration/test_tls_rekey.py. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "edge/tls_testing.h"

static size_t unhex(const char *h, uint8_t *out) {
  size_t n = strlen(h) / 2;
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    cr_assert_eq(sscanf(h + 2 * i, "%2x", &v), 1);
    out[i] = (uint8_t)v;
  }
  return n;
}

static void expect_hex(const uint8_t *got, size_t n, const char *want) {
  uint8_t w[64];
  cr_assert_eq(unhex(want, w), n);
  cr_assert_arr_eq(got, w, n, "want %s", want);
}

/* RFC 8448 §3 (simple 1-RTT handshake, TLS_AES_128_GCM_SHA256): application traffic
 * secrets and the keys derived from them */
#define RFC8448_S_AP "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643"
#define RFC8448_C_AP "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5"

Test(tls_key_schedule, rfc8448_application_keys) {
  uint8_t sec[48], key[32], iv[12];
  unhex(RFC8448_S_AP, sec);
  cr_assert_eq(tls_traffic_keys(sec, 32, key, 16, iv), 0);
  expect_hex(key, 16, "9f02283b6c9c07efc26bb9f2ac92e356");
  expect_hex(iv, 12, "cf782b88dd83549aadf1e984");
  unhex(RFC8448_C_AP, sec);
  cr_assert_eq(tls_traffic_keys(sec, 32, key, 16, iv), 0);
  expect_hex(key, 16, "17422dda596ed5d9acd890e3c63f5051");
  expect_hex(iv, 12, "5b78923dee08579033e523d9");
}

Test(tls_key_schedule, traffic_update_sha256_twice) {
  uint8_t sec[48], key[32], iv[12];
  unhex(RFC8448_S_AP, sec);
  cr_assert_eq(tls_traffic_next(sec, 32), 0);
  expect_hex(sec, 32, "51921b8aa3001976eb401d0a4319a8516416a6c56001a357e5d162031e84f916");
  cr_assert_eq(tls_traffic_next(sec, 32), 0);
  expect_hex(sec, 32, "6418ddd5d277cde37bfaae96363a805a95abfaa55ccd80713848de187fb082f6");
  cr_assert_eq(tls_traffic_keys(sec, 32, key, 16, iv), 0);
  expect_hex(key, 16, "65b9c2b0f1a857bc47aac35f79d007c8");
  expect_hex(iv, 12, "3945073c176791288c5d8ce5");
}

Test(tls_key_schedule, traffic_update_sha384) {
  uint8_t sec[48], key[32], iv[12];
  for (int i = 0; i < 48; i++) sec[i] = (uint8_t)i;
  cr_assert_eq(tls_traffic_next(sec, 48), 0);
  expect_hex(sec, 48,
             "401331b63e9d59f202e8f041042d9516f4cd7fa2e2ee14631d3b49fc340d7af3"
             "7fc2c0c9f252d8036f81ec5b85cbe5db");
  cr_assert_eq(tls_traffic_keys(sec, 48, key, 32, iv), 0);
  expect_hex(key, 32, "eb354f3b48924ed78de34dd8aa6a6a0a51d857ddad1454d5cfa7b69f60712911");
  expect_hex(iv, 12, "8478ffbe4f2e5450789775b3");
}

Test(tls_key_schedule, bad_lengths_refused) {
  uint8_t sec[48] = {0}, key[32], iv[12];
  cr_assert_eq(tls_traffic_next(sec, 20), XMPP_EINVAL);
  cr_assert_eq(tls_traffic_keys(sec, 32, key, 24, iv), XMPP_EINVAL);
  cr_assert_eq(tls_traffic_keys(sec, 64, key, 16, iv), XMPP_EINVAL);
}

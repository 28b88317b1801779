/* libFuzzer target: SASL PLAIN message parsing (RFC 4616) and the strict base64 decoder
 * (RFC 4648) that every SASL payload goes through first (RFC 6120 §6.4.2).
 *
 * Input: byte 0 bit 0 = 0: the rest is the decoded PLAIN message; = 1: the rest is the
 * base64 text of a <auth/> element, decoded first.
 * Invariants:
 *  - b64_decode accepts only canonical base64: b64_encode(decode(x)) == x;
 *  - sasl_plain_parse accepts exactly [authzid] NUL authcid NUL passwd with non-empty,
 *    NUL-free UTF-8 authcid and passwd (RFC 4616 §2): joining the parts gives the input;
 *  - on failure every out-pointer is NULL. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/scram.h"

static void die(const char *what) {
  fprintf(stderr, "INVARIANT: %s\n", what);
  abort();
}

static void check_plain(const unsigned char *msg, size_t len) {
  char *z = (char *)1, *c = (char *)1, *p = (char *)1;
  sasl_cond_t rc = sasl_plain_parse(msg, len, &z, &c, &p);
  if (rc != SASL_OK) {
    if (z || c || p) die("out-pointers set on failure");
    if (rc != SASL_MALFORMED_REQUEST) die("unexpected condition");
    return;
  }
  if (!c || !p || !*c || !*p) die("empty authcid or passwd accepted");
  if (z && !*z) die("empty authzid returned instead of NULL");
  size_t zl = z ? strlen(z) : 0, cl = strlen(c), pl = strlen(p);
  if (zl + 1 + cl + 1 + pl != len) die("parts do not add up to the message");
  if ((zl && memcmp(msg, z, zl)) || msg[zl] || memcmp(msg + zl + 1, c, cl) || msg[zl + 1 + cl] ||
      memcmp(msg + zl + 2 + cl, p, pl))
    die("parts differ from the message");
  xfree(z);
  xfree(c);
  xfree(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int b64 = data[0] & 1;
  data++, size--;
  if (!b64) {
    check_plain(data, size);
    return 0;
  }
  unsigned char *dec = (unsigned char *)1;
  size_t dlen = 1;
  if (b64_decode((const char *)data, size, &dec, &dlen) != 0) {
    if (dec || dlen) die("b64_decode out set on failure");
    return 0;
  }
  char *enc = b64_encode(dec, dlen);
  if (!enc || strlen(enc) != size || memcmp(enc, data, size) != 0)
    die("base64 accepted a non-canonical encoding");
  xfree(enc);
  check_plain(dec, dlen);
  xfree(dec);
  return 0;
}

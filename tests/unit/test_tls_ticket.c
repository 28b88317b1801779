/* Unit tests of edge/tls_ticket.c: session tickets sealed and opened with a clock the
 * test holds (expiry, rotation of generated keys), every byte of a ticket tampered
 * with, and the key file's format. That clients resume through it is
 * tests/integration/test_tls_resume.py. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "edge/tls_ticket.h"

#define LEN TLS_TICKET_PLAIN
#define CAP LEN

typedef struct ticket {
  uint8_t name[TLS_TICKET_NAME], iv[TLS_TICKET_IV], mac[TLS_TICKET_MAC];
  uint8_t data[CAP];
  size_t len;
} ticket_t;

static const uint8_t plain[LEN] = "the resumption secret and the session's parameters, as wolfSSL builds them";

static ticket_t seal(tls_tickets_t *k, int64_t now) {
  ticket_t t;
  memset(&t, 0, sizeof t);
  memcpy(t.data, plain, LEN);
  t.len = LEN;
  cr_assert_eq(tls_tickets_seal(k, now, t.name, t.iv, t.mac, t.data, LEN), TLS_TICKET_OK);
  cr_assert(memcmp(t.data, plain, LEN) != 0, "sealed bytes differ from the plaintext");
  return t;
}

/* opens a copy; on success the plaintext must come back */
static int open_at(tls_tickets_t *k, const ticket_t *t, int64_t now) {
  ticket_t c = *t;
  int rc = tls_tickets_open(k, now, c.name, c.iv, c.mac, c.data, c.len);
  if (rc == TLS_TICKET_OK || rc == TLS_TICKET_CREATE) cr_assert_arr_eq(c.data, plain, LEN);
  return rc;
}

static char *key_file(const char *text) {
  char *path = xstrdup("/tmp/test_tls_ticket.XXXXXX");
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

static void rewrite(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert(f);
  fputs(text, f);
  fclose(f);
}

#define K1 "00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define K2 "ffeeddccbbaa99887766554433221100f0f1f2f3f4f5f6f7f8f9fafbfcfdfefff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"
#define K3 "0123456789abcdef0123456789abcdef202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"

Test(tls_ticket, seal_open_round_trip) {
  tls_tickets_t *k = tls_tickets_new_at(NULL, 3600, 1000, NULL);
  cr_assert(k);
  ticket_t t = seal(k, 1000);
  cr_assert_eq(open_at(k, &t, 1000), TLS_TICKET_OK);
  cr_assert_eq(open_at(k, &t, 1000 + 3599), TLS_TICKET_OK);
  /* the generated key turned over: the previous one still opens (wolfSSL is told to
   * issue a ticket under the new one) */
  cr_assert_eq(open_at(k, &t, 1000 + 3600), TLS_TICKET_CREATE, "valid for its whole lifetime");
  /* two tickets of the same session never share a nonce or bytes */
  ticket_t u = seal(k, 1000);
  cr_assert(memcmp(t.iv, u.iv, sizeof t.iv) != 0);
  cr_assert(memcmp(t.data, u.data, t.len) != 0);
  tls_tickets_free(k);
}

Test(tls_ticket, every_tampered_byte_is_refused) {
  tls_tickets_t *k = tls_tickets_new_at(NULL, 3600, 0, NULL);
  ticket_t t = seal(k, 10);
  for (size_t i = 0; i < sizeof t.name; i++) {
    ticket_t c = t;
    c.name[i] ^= 0x01;
    cr_assert_eq(open_at(k, &c, 10), TLS_TICKET_REJECT, "name byte %zu", i);
  }
  for (size_t i = 0; i < sizeof t.iv; i++) {
    ticket_t c = t;
    c.iv[i] ^= 0x80;
    cr_assert_eq(open_at(k, &c, 10), TLS_TICKET_REJECT, "iv byte %zu", i);
  }
  for (size_t i = 0; i < sizeof t.mac; i++) {
    ticket_t c = t;
    c.mac[i] ^= 0x01;
    cr_assert_eq(open_at(k, &c, 10), TLS_TICKET_REJECT, "mac byte %zu", i);
  }
  for (size_t i = 0; i < t.len; i++) {
    ticket_t c = t;
    c.data[i] ^= 0x01;
    cr_assert_eq(open_at(k, &c, 10), TLS_TICKET_REJECT, "sealed byte %zu", i);
  }
  /* any other length is refused before a byte is read (wolfSSL passes the client's) */
  ticket_t c = t;
  c.len--;
  cr_assert_eq(open_at(k, &c, 10), TLS_TICKET_REJECT);
  c.len = 0;
  cr_assert_eq(open_at(k, &c, 10), TLS_TICKET_REJECT);
  /* (a 1-byte heap block: the sanitizer build would see any read) */
  uint8_t *small = xcalloc(1, 1);
  cr_assert_eq(tls_tickets_open(k, 10, t.name, t.iv, (const uint8_t *)small, small, LEN + 1), TLS_TICKET_REJECT);
  cr_assert_eq(tls_tickets_open(k, 10, t.name, t.iv, (const uint8_t *)small, small, 65535), TLS_TICKET_REJECT);
  xfree(small);
  /* and sealing refuses another size of wolfSSL's ticket */
  cr_assert_eq(tls_tickets_seal(k, 10, c.name, c.iv, c.mac, c.data, LEN - 1), TLS_TICKET_FATAL);
  cr_assert_eq(open_at(k, &t, 10), TLS_TICKET_OK, "the original still opens");
  tls_tickets_free(k);
}

Test(tls_ticket, random_bytes_are_refused) {
  tls_tickets_t *k = tls_tickets_new_at(NULL, 3600, 0, NULL);
  ticket_t t = seal(k, 0);
  srand(7);
  for (int round = 0; round < 2000; round++) {
    ticket_t c = t;
    uint8_t *all[] = {c.iv, c.mac, c.data};
    size_t lens[] = {sizeof c.iv, sizeof c.mac, c.len};
    for (int part = 0; part < 3; part++)
      for (size_t i = 0; i < lens[part]; i++) all[part][i] = (uint8_t)rand();
    c.len = rand() % 4 ? LEN : (size_t)(rand() % CAP);
    cr_assert_eq(open_at(k, &c, 0), TLS_TICKET_REJECT);
  }
  tls_tickets_free(k);
}

Test(tls_ticket, expired_and_future_tickets_are_refused) {
  char *path = key_file(K1 "\n");
  tls_tickets_t *k = tls_tickets_new_at(path, 100, 0, NULL);
  cr_assert(k);
  ticket_t t = seal(k, 50);
  cr_assert_eq(open_at(k, &t, 150), TLS_TICKET_OK, "at its lifetime");
  cr_assert_eq(open_at(k, &t, 151), TLS_TICKET_REJECT, "one second past it");
  /* a ticket stamped by a clock far ahead (another edge's, or forged with the key) */
  cr_assert_eq(open_at(k, &t, 50 - 60), TLS_TICKET_OK, "within the clock skew allowed");
  cr_assert_eq(open_at(k, &t, 50 - 61), TLS_TICKET_REJECT);
  tls_tickets_free(k);
  unlink(path);
  xfree(path);
}

Test(tls_ticket, generated_keys_rotate_every_lifetime) {
  tls_tickets_t *k = tls_tickets_new_at(NULL, 100, 0, NULL);
  ticket_t a = seal(k, 99);              /* under the first key, just before it turns over */
  ticket_t b = seal(k, 100);             /* rotated: the second key */
  cr_assert(memcmp(a.name, b.name, sizeof a.name) != 0, "a new key after one lifetime");
  cr_assert_eq(open_at(k, &a, 100), TLS_TICKET_CREATE, "the previous key still opens");
  cr_assert_eq(open_at(k, &a, 199), TLS_TICKET_CREATE, "for the ticket's whole lifetime");
  cr_assert_eq(open_at(k, &b, 199), TLS_TICKET_OK);
  ticket_t c = seal(k, 200);             /* second rotation: the first key is gone */
  cr_assert(memcmp(c.name, b.name, sizeof c.name) != 0);
  ticket_t a2 = a;
  cr_assert_eq(open_at(k, &a2, 200), TLS_TICKET_REJECT);
  cr_assert_eq(open_at(k, &b, 200), TLS_TICKET_CREATE);
  /* a silence of two lifetimes drops both */
  ticket_t d = seal(k, 250);
  cr_assert_eq(open_at(k, &d, 450), TLS_TICKET_REJECT);
  tls_tickets_free(k);
}

Test(tls_ticket, key_file_rotation_current_and_previous) {
  char *path = key_file("# ticket keys\n" K1 "\n");
  char *err = NULL;
  tls_tickets_t *k = tls_tickets_new_at(path, 3600, 0, &err);
  cr_assert(k, "%s", err ? err : "");
  ticket_t t1 = seal(k, 10);
  cr_assert_eq(open_at(k, &t1, 10), TLS_TICKET_OK);
  /* file keys never turn over by themselves */
  ticket_t late = seal(k, 3000);
  cr_assert_eq(memcmp(late.name, t1.name, sizeof t1.name), 0);
  rewrite(path, K2 "\r\n" K1 "\r\n");
  cr_assert_eq(tls_tickets_reload(k, &err), 0);
  cr_assert_eq(open_at(k, &t1, 20), TLS_TICKET_CREATE, "previous key opens");
  ticket_t t2 = seal(k, 20);
  cr_assert_eq(open_at(k, &t2, 20), TLS_TICKET_OK);
  rewrite(path, K3 "\n" K2 "\n");
  cr_assert_eq(tls_tickets_reload(k, &err), 0);
  cr_assert_eq(open_at(k, &t1, 30), TLS_TICKET_REJECT, "two rotations on");
  cr_assert_eq(open_at(k, &t2, 30), TLS_TICKET_CREATE);
  /* a bad file keeps the keys */
  rewrite(path, "nonsense\n");
  cr_assert_neq(tls_tickets_reload(k, &err), 0);
  cr_assert(err && strstr(err, ":1:"), "%s", err ? err : "");
  xfree(err);
  err = NULL;
  cr_assert_eq(open_at(k, &t2, 30), TLS_TICKET_CREATE);
  tls_tickets_free(k);
  unlink(path);
  xfree(path);
}

static void bad_file(const char *text, const char *want) {
  char *path = key_file(text);
  char *err = NULL;
  tls_tickets_t *k = tls_tickets_new(path, 3600, &err);
  cr_assert_null(k, "accepted: %s", text);
  cr_assert(err && strstr(err, want), "error '%s', want '%s'", err ? err : "", want);
  xfree(err);
  unlink(path);
  xfree(path);
}

Test(tls_ticket, key_file_format) {
  bad_file("", "holds no key");
  bad_file("# only a comment\n\n", "holds no key");
  bad_file(K1 "\n" K2 "\n" K3 "\n", ":3: more than two keys");
  bad_file(K1 "0\n", "96 hex digits");
  bad_file("00" K1 "\n", "96 hex digits");
  char hex[] = K1 "\n";
  hex[40] = 'g';
  bad_file(hex, ":1: not a hex digit");
  bad_file(K1 "\n" K1 "\n", "same name");
  bad_file("\t" K1 "x\n", "96 hex digits");
  {
    /* a NUL byte would hide what follows it */
    char *path = key_file(K1 "\n");
    FILE *f = fopen(path, "a");
    fwrite("\0" K2 "\n", 1, 98, f);
    fclose(f);
    char *e = NULL;
    cr_assert_null(tls_tickets_new(path, 3600, &e));
    cr_assert(e && strstr(e, "NUL"), "%s", e ? e : "");
    xfree(e);
    unlink(path);
    xfree(path);
  }
  char *err = NULL;
  tls_tickets_t *k = tls_tickets_new("/nonexistent/ticket.keys", 3600, &err);
  cr_assert_null(k);
  cr_assert(err && strstr(err, "cannot read"));
  xfree(err);
  /* blanks around a key, comments, no final newline: accepted */
  char *path = key_file("  # current\n  " K1 "  \n\n# previous\n" K2);
  k = tls_tickets_new(path, 3600, &err);
  cr_assert(k, "%s", err ? err : "");
  tls_tickets_free(k);
  unlink(path);
  xfree(path);
}

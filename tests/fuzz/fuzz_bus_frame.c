/* libFuzzer target: bus frame decoder (common/bus_frame.c) and the compact stanza
 * encoding inside it (xnode_decode/xnode_encode, common/stanza.c).
 *
 * Input: byte 0 bit 0 = 0: the rest is a byte stream from the bus, decoded frame after
 * frame as a reader would (XMPP_AGAIN = wait for more); = 1: the rest describes a frame
 * (fields taken from the bytes) that is encoded, then decoded.
 *
 * Invariants:
 *  - decode never reads outside its input, and consumes 8 + body bytes;
 *  - decode(encode(f)) == f for every frame f, and for every decoded frame
 *    encode(decode(bytes)) decodes to the same frame (varints may be non-minimal on the
 *    wire, so bytes are compared only after one round);
 *  - xnode_serialize_encoded (the edge's delivery path) accepts exactly what xnode_decode
 *    accepts and writes the same XML as xnode_serialize of the decoded tree;
 *  - when the payload is a valid stanza (xnode_decode), encoding the tree gives bytes
 *    that decode to a tree that encodes to the same bytes (canonical fixpoint), and
 *    decoding a prefix of a frame never succeeds with more bytes than given. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"
#include "common/buf.h"
#include "common/bus_frame.h"
#include "common/err.h"
#include "common/stanza.h"

#define MAX_DEPTH 64

static void die(const char *what) {
  fprintf(stderr, "INVARIANT: %s\n", what);
  abort();
}

static int bytes_eq(const void *a, size_t al, const void *b, size_t bl) {
  return al == bl && (al == 0 || memcmp(a, b, al) == 0);
}

static void frame_eq(const bus_frame_t *a, const bus_frame_t *b) {
  if (a->kind != b->kind || a->flags != b->flags || a->arg != b->arg) die("header fields differ");
  if (memcmp(&a->src, &b->src, sizeof a->src) || memcmp(&a->dst, &b->dst, sizeof a->dst))
    die("addresses differ");
  if (!bytes_eq(a->from, a->from_len, b->from, b->from_len)) die("from differs");
  if (!bytes_eq(a->to, a->to_len, b->to, b->to_len)) die("to differs");
  if (!bytes_eq(a->payload, a->payload_len, b->payload, b->payload_len)) die("payload differs");
}

static void check_payload(const uint8_t *p, size_t len) {
  arena_t a;
  arena_init(&a);
  xnode_t *n;
  buf_t direct;
  buf_init(&direct);
  int direct_ok = xnode_serialize_encoded(p, len, NS_CLIENT, NULL, MAX_DEPTH, &direct) == 0;
  if (xnode_decode(&a, p, len, MAX_DEPTH, &n) == 0) {
    buf_t e1, e2;
    buf_init(&e1);
    buf_init(&e2);
    xnode_encode(n, &e1);
    xnode_t *m;
    if (xnode_decode(&a, e1.data, e1.len, MAX_DEPTH, &m) != 0) die("encoded stanza does not decode");
    xnode_encode(m, &e2);
    if (!bytes_eq(e1.data, e1.len, e2.data, e2.len)) die("stanza encoding not a fixpoint");
    /* the serialiser must cope with any decoded tree */
    buf_t x;
    buf_init(&x);
    xnode_serialize(n, NS_CLIENT, &x);
    /* the edge's delivery path writes straight from the encoding: the same XML */
    if (!direct_ok || !bytes_eq(x.data, x.len, direct.data, direct.len))
      die("serialize_encoded differs from decode + serialize");
    buf_free(&x);
    buf_free(&e1);
    buf_free(&e2);
  } else if (direct_ok) {
    die("serialize_encoded accepted what xnode_decode refuses");
  }
  buf_free(&direct);
  arena_free(&a);
}

static void roundtrip(const bus_frame_t *f) {
  buf_t b;
  buf_init(&b);
  bus_frame_encode(f, &b);
  bus_frame_t g;
  size_t used = 0;
  if (bus_frame_decode(b.data, b.len, &g, &used) != 0) die("encoded frame does not decode");
  if (used != b.len) die("decode consumed a different length");
  frame_eq(f, &g);
  /* every strict prefix is incomplete (or already refused), never a frame */
  for (size_t cut = 0; cut < b.len; cut += 1 + cut / 4) {
    bus_frame_t t;
    size_t u;
    int rc = bus_frame_decode(b.data, cut, &t, &u);
    if (rc == 0) die("prefix decoded as a frame");
  }
  buf_free(&b);
}

static void decode_stream(const uint8_t *p, size_t len) {
  while (len) {
    bus_frame_t f;
    size_t used = 0;
    int rc = bus_frame_decode(p, len, &f, &used);
    if (rc == XMPP_AGAIN || rc == XMPP_EINVAL) return;
    if (rc != 0) die("unexpected return code");
    if (used < BUS_HEADER_LEN || used > len) die("used out of range");
    if (f.kind == 0 || f.kind > BUS_KIND_MAX) die("kind out of range");
    if (f.payload_len && (f.payload < p || f.payload + f.payload_len > p + used))
      die("payload outside the frame");
    roundtrip(&f);
    check_payload(f.payload, f.payload_len);
    p += used;
    len -= used;
  }
}

/* Takes n bytes from the input (zero-filled past its end). */
static void take(const uint8_t **p, size_t *len, void *out, size_t n) {
  size_t k = *len < n ? *len : n;
  memset(out, 0, n);
  memcpy(out, *p, k);
  *p += k;
  *len -= k;
}

static void build_and_check(const uint8_t *p, size_t len) {
  bus_frame_t f;
  memset(&f, 0, sizeof f);
  uint8_t kind, lens[2];
  take(&p, &len, &kind, 1);
  f.kind = (uint8_t)(kind % BUS_KIND_MAX + 1);
  take(&p, &len, &f.flags, sizeof f.flags);
  take(&p, &len, &f.src.node, 2);
  take(&p, &len, &f.src.thread, 2);
  take(&p, &len, &f.src.conn, 8);
  take(&p, &len, &f.dst.node, 2);
  take(&p, &len, &f.dst.thread, 2);
  take(&p, &len, &f.dst.conn, 8);
  take(&p, &len, &f.arg, 8);
  take(&p, &len, lens, 2);
  f.from = (const char *)p;
  f.from_len = lens[0] < len ? lens[0] : len;
  p += f.from_len, len -= f.from_len;
  f.to = (const char *)p;
  f.to_len = lens[1] < len ? lens[1] : len;
  p += f.to_len, len -= f.to_len;
  f.payload = p;
  f.payload_len = len;
  roundtrip(&f);
  check_payload(f.payload, f.payload_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  if (data[0] & 1) build_and_check(data + 1, size - 1);
  else decode_stream(data + 1, size - 1);
  return 0;
}

/* Bus frames (common/bus_frame.h) and the in-process bus queue (common/bus_queue.h):
 * encode/decode round trips, truncation, hostile lengths, back-to-back frames, bus
 * messages, and a multi-producer queue on a real libuv loop. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/bus_frame.h"
#include "common/bus_queue.h"
#include "common/dedup.h"
#include "common/err.h"

/* ---- helpers ---------------------------------------------------------------------- */

static bus_frame_t sample(uint8_t kind, int64_t arg) {
  static const uint8_t payload[] = {'E', 1, 'm', 0, 0, 0, 0xff, 0x00, 0x80};
  bus_frame_t f = {0};
  f.kind = kind;
  f.flags = BUS_F_DIRECTED | BUS_F_SERVER;
  f.src = (bus_addr_t){0xffff, 3, 0x0123456789abcdefULL};
  f.dst = (bus_addr_t){7, 0xfffe, UINT64_MAX};
  f.from = "alice@example.net/phone";
  f.from_len = strlen(f.from);
  f.to = "bob@example.net";
  f.to_len = strlen(f.to);
  f.arg = arg;
  f.payload = payload;
  f.payload_len = sizeof payload;
  return f;
}

static void assert_frame_eq(const bus_frame_t *a, const bus_frame_t *b) {
  cr_assert_eq(a->kind, b->kind);
  cr_assert_eq(a->flags, b->flags, "flags %x != %x", a->flags, b->flags);
  cr_assert_eq(a->src.node, b->src.node);
  cr_assert_eq(a->src.thread, b->src.thread);
  cr_assert_eq(a->src.conn, b->src.conn);
  cr_assert_eq(a->dst.node, b->dst.node);
  cr_assert_eq(a->dst.thread, b->dst.thread);
  cr_assert_eq(a->dst.conn, b->dst.conn);
  cr_assert_eq(a->from_len, b->from_len);
  if (a->from_len) cr_assert_eq(memcmp(a->from, b->from, a->from_len), 0);
  cr_assert_eq(a->to_len, b->to_len);
  if (a->to_len) cr_assert_eq(memcmp(a->to, b->to, a->to_len), 0);
  cr_assert_eq(a->arg, b->arg, "arg %lld != %lld", (long long)a->arg, (long long)b->arg);
  cr_assert_eq(a->payload_len, b->payload_len);
  if (a->payload_len) cr_assert_eq(memcmp(a->payload, b->payload, a->payload_len), 0);
  cr_assert_eq(a->flags & BUS_F_ORIGIN ? a->origin : 0, b->origin);
}

/* Encodes f, checks the header, decodes it back and compares. */
static void roundtrip(const bus_frame_t *f) {
  buf_t b;
  buf_init(&b);
  bus_frame_encode(f, &b);
  cr_assert_geq(b.len, (size_t)BUS_HEADER_LEN + 24);
  cr_assert_eq(b.data[0], BUS_VERSION);
  cr_assert_eq(b.data[1], f->kind);
  uint32_t body = (uint32_t)b.data[4] | (uint32_t)b.data[5] << 8 | (uint32_t)b.data[6] << 16 |
                  (uint32_t)b.data[7] << 24;
  cr_assert_eq((size_t)body + BUS_HEADER_LEN, b.len);
  bus_frame_t d;
  size_t used = 0;
  cr_assert_eq(bus_frame_decode(b.data, b.len, &d, &used), 0);
  cr_assert_eq(used, b.len);
  assert_frame_eq(f, &d);
  /* zero copy: decoded fields point into the input */
  if (d.from_len) cr_assert(d.from >= (const char *)b.data && d.from < (const char *)b.data + b.len);
  if (d.payload_len) cr_assert(d.payload >= b.data && d.payload + d.payload_len == b.data + b.len);
  buf_free(&b);
}

static const int64_t ARGS[] = {0,          1,          -1,         63,        64,        -64,
                               -65,        127,        128,        300,       -300,      1LL << 31,
                               -(1LL << 31), 1LL << 40, -(1LL << 40), INT32_MAX, INT32_MIN,
                               INT64_MAX,  INT64_MIN,  INT64_MAX - 1, INT64_MIN + 1};

/* ---- round trips ------------------------------------------------------------------ */

Test(bus_frame, roundtrip_every_kind_all_fields) {
  for (uint8_t k = 1; k <= BUS_KIND_MAX; k++)
    for (size_t i = 0; i < sizeof ARGS / sizeof ARGS[0]; i++) {
      bus_frame_t f = sample(k, ARGS[i]);
      roundtrip(&f);
    }
}

Test(bus_frame, roundtrip_flags) {
  static const uint16_t flags[] = {0, BUS_F_DIRECTED, BUS_F_SERVER, BUS_F_DIRECTED | BUS_F_SERVER,
                                   0x00ff, 0xff00, 0x8000, 0xffff};
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
    bus_frame_t f = sample(BUS_ROUTE, 5);
    f.flags = flags[i];
    roundtrip(&f);
  }
}

/* BUS_F_ORIGIN: the origin id travels (8 bytes after arg), and only with the flag; a
 * body cut inside it is refused. */
Test(bus_frame, origin_id_roundtrip_and_truncation) {
  bus_frame_t f = sample(BUS_DELIVER, -3);
  f.flags |= BUS_F_ORIGIN;
  f.origin = 0xfedcba9876543210ULL;
  roundtrip(&f);
  buf_t with, without;
  buf_init(&with);
  buf_init(&without);
  bus_frame_encode(&f, &with);
  f.flags &= (uint16_t)~BUS_F_ORIGIN;
  bus_frame_encode(&f, &without);
  cr_assert_eq(with.len, without.len + 8);
  /* a frame with the flag whose body ends inside the id: the payload gone, then 7 of 8 */
  bus_frame_t g = sample(BUS_DELIVER, 0);
  g.flags |= BUS_F_ORIGIN;
  g.payload_len = 0;
  buf_t b;
  buf_init(&b);
  bus_frame_encode(&g, &b);
  b.len -= 1;
  b.data[4] -= 1; /* body length one less: the id is cut */
  bus_frame_t d;
  size_t used;
  cr_assert_eq(bus_frame_decode(b.data, b.len, &d, &used), XMPP_EINVAL);
  buf_free(&b);
  buf_free(&with);
  buf_free(&without);
}

Test(bus_frame, origin_derive_differs_per_k_and_origin) {
  cr_assert_neq(bus_origin_derive(1, 1), bus_origin_derive(1, 2));
  cr_assert_neq(bus_origin_derive(1, 1), bus_origin_derive(2, 1));
  cr_assert_eq(bus_origin_derive(77, 3), bus_origin_derive(77, 3));
  cr_assert_neq(bus_origin_derive(bus_origin_derive(5, 1), 1), bus_origin_derive(5, 1));
}

/* The receiver's window (common/dedup.h): a repeat within the last cap ids is seen, the
 * oldest is forgotten first, and lookups stay right across many evictions (backward-shift
 * deletion keeps every run of the index intact). */
Test(dedup, window_of_the_last_cap_ids) {
  dedup_t *d = dedup_new(4);
  for (uint64_t i = 1; i <= 4; i++) cr_assert_eq(dedup_check(d, i), 0);
  for (uint64_t i = 1; i <= 4; i++) cr_assert_eq(dedup_check(d, i), 1, "id %llu", (unsigned long long)i);
  cr_assert_eq(dedup_check(d, 5), 0); /* 1 forgotten */
  cr_assert_eq(dedup_count(d), 4);
  cr_assert_eq(dedup_check(d, 2), 1);
  cr_assert_eq(dedup_check(d, 1), 0); /* new again; 2 forgotten */
  cr_assert_eq(dedup_check(d, 2), 0);
  cr_assert_eq(dedup_check(d, 0), 0);
  cr_assert_eq(dedup_check(d, 0), 0);
  dedup_free(d);
}

Test(dedup, colliding_ids_across_many_evictions) {
  /* ids that share their low bits collide in the index: long runs, shifted on eviction */
  dedup_t *d = dedup_new(100);
  for (uint64_t i = 1; i <= 100000; i++) {
    uint64_t id = (i % 7 == 0) ? i << 20 : bus_mix64(i);
    cr_assert_eq(dedup_check(d, id), 0, "fresh id %llu seen", (unsigned long long)i);
    if (i > 100) {
      uint64_t j = i - 99; /* still in the window */
      uint64_t jid = (j % 7 == 0) ? j << 20 : bus_mix64(j);
      cr_assert_eq(dedup_check(d, jid), 1, "id %llu of the window not seen", (unsigned long long)j);
    }
  }
  cr_assert_eq(dedup_count(d), 100);
  dedup_free(d);
}

/* The header accessors read what the decoder reads, and the two in-place edits (kind,
 * added flags, both bytes of them) give the frame that encoding the edited fields gives. */
Test(bus_frame, header_accessors_and_in_place_edits) {
  bus_frame_t f = sample(BUS_DELIVER, -9);
  buf_t b;
  buf_init(&b);
  bus_frame_encode(&f, &b);
  cr_assert_eq(bus_hdr_version(b.data), BUS_VERSION);
  cr_assert_eq(bus_hdr_kind(b.data), BUS_DELIVER);
  cr_assert_eq(bus_hdr_flags(b.data), BUS_F_DIRECTED | BUS_F_SERVER);
  cr_assert_eq((size_t)bus_hdr_body_len(b.data) + BUS_HEADER_LEN, b.len);
  bus_hdr_set_kind(b.data, BUS_BOUNCE);
  bus_hdr_add_flags(b.data, BUS_F_FORWARDED | 0x4000);
  f.kind = BUS_BOUNCE;
  f.flags |= BUS_F_FORWARDED | 0x4000;
  buf_t want;
  buf_init(&want);
  bus_frame_encode(&f, &want);
  cr_assert_eq(b.len, want.len);
  cr_assert_eq(memcmp(b.data, want.data, b.len), 0);
  bus_frame_t d;
  size_t used;
  cr_assert_eq(bus_frame_decode(b.data, b.len, &d, &used), 0);
  assert_frame_eq(&f, &d);
  for (unsigned k = 0; k <= 0xff; k++) cr_assert_eq(bus_kind_valid(k), k >= 1 && k <= BUS_KIND_MAX, "kind %u", k);
  buf_free(&want);
  buf_free(&b);
}

Test(bus_frame, roundtrip_empty_fields) {
  for (uint8_t k = 1; k <= BUS_KIND_MAX; k++) {
    bus_frame_t f = {0};
    f.kind = k;
    f.from = ""; /* empty, not NULL */
    f.to = "";
    roundtrip(&f);
    bus_frame_t g = {0}; /* NULL pointers with zero lengths */
    g.kind = k;
    roundtrip(&g);
    /* each of the three variable fields empty on its own */
    bus_frame_t h = sample(k, -7);
    h.from_len = 0;
    roundtrip(&h);
    h = sample(k, -7);
    h.to_len = 0;
    roundtrip(&h);
    h = sample(k, -7);
    h.payload_len = 0;
    roundtrip(&h);
  }
  /* the smallest possible frame: header, two addresses, three one-byte varints */
  bus_frame_t f = {0};
  f.kind = BUS_SESSION_CLOSE;
  buf_t b;
  buf_init(&b);
  bus_frame_encode(&f, &b);
  cr_assert_eq(b.len, (size_t)BUS_HEADER_LEN + 24 + 3);
  buf_free(&b);
}

Test(bus_frame, roundtrip_long_fields) {
  /* lengths needing multi-byte varints, and a large payload */
  size_t jl = 3000, pl = 1u << 20;
  char *jid = xmalloc(jl);
  memset(jid, 'j', jl);
  uint8_t *payload = xmalloc(pl);
  for (size_t i = 0; i < pl; i++) payload[i] = (uint8_t)(i * 31 + 7);
  bus_frame_t f = sample(BUS_DELIVER, INT64_MIN);
  f.from = jid;
  f.from_len = jl;
  f.to = jid;
  f.to_len = 200; /* 2-byte varint */
  f.payload = payload;
  f.payload_len = pl;
  roundtrip(&f);
  xfree(jid);
  xfree(payload);
}

Test(bus_frame, encode_appends) {
  /* encode appends after existing content; the length field is relative to the frame */
  buf_t b;
  buf_init(&b);
  buf_puts(&b, "prefix");
  bus_frame_t f = sample(BUS_KICK, BUS_KICK_CONFLICT);
  bus_frame_encode(&f, &b);
  cr_assert_eq(memcmp(b.data, "prefix", 6), 0);
  bus_frame_t d;
  size_t used;
  cr_assert_eq(bus_frame_decode(b.data + 6, b.len - 6, &d, &used), 0);
  cr_assert_eq(used, b.len - 6);
  assert_frame_eq(&f, &d);
  buf_free(&b);
}

/* ---- truncation and garbage ------------------------------------------------------- */

Test(bus_frame, truncated_at_every_byte_is_again) {
  for (uint8_t k = 1; k <= BUS_KIND_MAX; k++) {
    bus_frame_t f = sample(k, -123456789);
    buf_t b;
    buf_init(&b);
    bus_frame_encode(&f, &b);
    /* copy each prefix into an exact-size allocation so ASan sees any over-read */
    for (size_t n = 0; n < b.len; n++) {
      uint8_t *p = xmalloc(n ? n : 1);
      memcpy(p, b.data, n);
      bus_frame_t d;
      size_t used = 12345;
      int rc = bus_frame_decode(p, n, &d, &used);
      cr_assert_eq(rc, XMPP_AGAIN, "kind %u prefix %zu of %zu: rc %d", k, n, b.len, rc);
      cr_assert_eq(used, 12345u, "used written on AGAIN");
      xfree(p);
    }
    buf_free(&b);
  }
}

static int decode_bytes(const uint8_t *src, size_t n) {
  uint8_t *p = xmalloc(n ? n : 1);
  memcpy(p, src, n);
  bus_frame_t d;
  size_t used;
  int rc = bus_frame_decode(p, n, &d, &used);
  xfree(p);
  return rc;
}

static void put_le32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

Test(bus_frame, bad_version) {
  bus_frame_t f = sample(BUS_C2S, 1);
  buf_t b;
  buf_init(&b);
  bus_frame_encode(&f, &b);
  static const uint8_t versions[] = {0, 2, 0x7f, 0xff};
  for (size_t i = 0; i < sizeof versions; i++) {
    b.data[0] = versions[i];
    cr_assert_eq(decode_bytes(b.data, b.len), XMPP_EINVAL, "version %u", versions[i]);
    /* refused as soon as the first byte is there */
    for (size_t n = 1; n < BUS_HEADER_LEN; n++)
      cr_assert_eq(decode_bytes(b.data, n), XMPP_EINVAL, "version %u, %zu bytes", versions[i], n);
  }
  buf_free(&b);
}

Test(bus_frame, bad_kind) {
  bus_frame_t f = sample(BUS_C2S, 1);
  buf_t b;
  buf_init(&b);
  bus_frame_encode(&f, &b);
  static const uint8_t kinds[] = {0, BUS_KIND_MAX + 1, 0x40, 0x80, 0xff};
  for (size_t i = 0; i < sizeof kinds; i++) {
    b.data[1] = kinds[i];
    cr_assert_eq(decode_bytes(b.data, b.len), XMPP_EINVAL, "kind %u", kinds[i]);
    for (size_t n = 2; n < BUS_HEADER_LEN; n++)
      cr_assert_eq(decode_bytes(b.data, n), XMPP_EINVAL, "kind %u, %zu bytes", kinds[i], n);
  }
  buf_free(&b);
}

Test(bus_frame, body_length_over_max) {
  uint8_t h[BUS_HEADER_LEN] = {BUS_VERSION, BUS_ROUTE, 0, 0};
  /* refused from the header alone: no waiting for 64 MiB that will never be accepted */
  put_le32(h + 4, BUS_MAX_BODY + 1);
  cr_assert_eq(decode_bytes(h, sizeof h), XMPP_EINVAL);
  put_le32(h + 4, UINT32_MAX);
  cr_assert_eq(decode_bytes(h, sizeof h), XMPP_EINVAL);
  put_le32(h + 4, 0x80000000u);
  cr_assert_eq(decode_bytes(h, sizeof h), XMPP_EINVAL);
  /* exactly the maximum is legal and just incomplete */
  put_le32(h + 4, BUS_MAX_BODY);
  cr_assert_eq(decode_bytes(h, sizeof h), XMPP_AGAIN);
}

Test(bus_frame, body_too_short_for_fixed_fields) {
  /* a complete frame whose body cannot hold the two addresses and three varints */
  for (uint32_t body = 0; body < 27; body++) {
    uint8_t p[BUS_HEADER_LEN + 27];
    memset(p, 0, sizeof p);
    p[0] = BUS_VERSION;
    p[1] = BUS_DELIVER;
    put_le32(p + 4, body);
    cr_assert_eq(decode_bytes(p, BUS_HEADER_LEN + body), XMPP_EINVAL, "body %u", body);
  }
  /* 27 zero bytes: two zero addresses, empty from, empty to, arg 0: valid */
  uint8_t p[BUS_HEADER_LEN + 27] = {BUS_VERSION, BUS_DELIVER};
  put_le32(p + 4, 27);
  bus_frame_t d;
  size_t used;
  cr_assert_eq(bus_frame_decode(p, sizeof p, &d, &used), 0);
  cr_assert_eq(used, sizeof p);
  cr_assert_eq(d.from_len, 0);
  cr_assert_eq(d.to_len, 0);
  cr_assert_eq(d.arg, 0);
  cr_assert_eq(d.payload_len, 0);
}

/* Builds a frame body by hand: addresses, then the raw bytes given. */
static size_t handmade(uint8_t *out, const uint8_t *rest, size_t rest_len) {
  memset(out, 0, BUS_HEADER_LEN + 24);
  out[0] = BUS_VERSION;
  out[1] = BUS_C2S;
  memcpy(out + BUS_HEADER_LEN + 24, rest, rest_len);
  put_le32(out + 4, (uint32_t)(24 + rest_len));
  return BUS_HEADER_LEN + 24 + rest_len;
}

Test(bus_frame, inner_lengths_past_body) {
  uint8_t p[256];
  size_t n;
  /* from length 5, only 3 bytes follow */
  static const uint8_t a[] = {5, 'a', 'b', 'c'};
  n = handmade(p, a, sizeof a);
  cr_assert_eq(decode_bytes(p, n), XMPP_EINVAL);
  /* from fine, to length runs past the body */
  static const uint8_t b[] = {1, 'a', 9, 'b'};
  n = handmade(p, b, sizeof b);
  cr_assert_eq(decode_bytes(p, n), XMPP_EINVAL);
  /* a huge from length (varint 2^63) */
  static const uint8_t c[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0, 0};
  n = handmade(p, c, sizeof c);
  cr_assert_eq(decode_bytes(p, n), XMPP_EINVAL);
  /* from length exactly SIZE_MAX-ish: all ones */
  static const uint8_t c2[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0};
  n = handmade(p, c2, sizeof c2);
  cr_assert_eq(decode_bytes(p, n), XMPP_EINVAL);
  /* a varint that never ends inside the body */
  static const uint8_t d[] = {0, 0, 0x80, 0x80, 0x80};
  n = handmade(p, d, sizeof d);
  cr_assert_eq(decode_bytes(p, n), XMPP_EINVAL);
  /* an over-long varint (more than 64 bits of continuation) */
  static const uint8_t e[] = {0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
  n = handmade(p, e, sizeof e);
  cr_assert_eq(decode_bytes(p, n), XMPP_EINVAL);
  /* missing arg varint entirely */
  static const uint8_t f[] = {0, 0};
  n = handmade(p, f, sizeof f);
  cr_assert_eq(decode_bytes(p, n), XMPP_EINVAL);
  /* and the well-formed version of the same shape decodes */
  static const uint8_t g[] = {1, 'a', 1, 'b', 3, 'P', 'Q'};
  n = handmade(p, g, sizeof g);
  bus_frame_t fr;
  size_t used;
  cr_assert_eq(bus_frame_decode(p, n, &fr, &used), 0);
  cr_assert_eq(fr.from_len, 1);
  cr_assert_eq(fr.from[0], 'a');
  cr_assert_eq(fr.to[0], 'b');
  cr_assert_eq(fr.arg, -2); /* zigzag 3 */
  cr_assert_eq(fr.payload_len, 2);
}

Test(bus_frame, inner_length_never_reads_into_next_frame) {
  /* the body says 24+4 bytes, the from length says 10: the bytes after the body (which
   * belong to the next frame) must not be taken as part of this one */
  uint8_t p[BUS_HEADER_LEN + 24 + 4 + 32];
  static const uint8_t r[] = {10, 'a', 'b', 'c'};
  size_t n = handmade(p, r, sizeof r);
  memset(p + n, 'z', sizeof p - n);
  bus_frame_t d;
  size_t used = 0;
  cr_assert_eq(bus_frame_decode(p, sizeof p, &d, &used), XMPP_EINVAL);
  /* same for the to length */
  static const uint8_t r2[] = {0, 8, 'x', 'y'};
  n = handmade(p, r2, sizeof r2);
  memset(p + n, 'z', sizeof p - n);
  cr_assert_eq(bus_frame_decode(p, sizeof p, &d, &used), XMPP_EINVAL);
}

Test(bus_frame, random_garbage_never_crashes) {
  /* deterministic pseudo-random bodies behind a valid header: decode must return one
   * of the three codes and, on success, stay inside the input */
  uint64_t s = 0x9e3779b97f4a7c15ULL;
  for (int iter = 0; iter < 20000; iter++) {
    uint8_t p[BUS_HEADER_LEN + 64];
    size_t body = (size_t)(iter % 64);
    p[0] = BUS_VERSION;
    p[1] = (uint8_t)(1 + iter % BUS_KIND_MAX);
    p[2] = p[3] = 0;
    put_le32(p + 4, (uint32_t)body);
    for (size_t i = 0; i < body; i++) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      p[BUS_HEADER_LEN + i] = (uint8_t)s;
    }
    uint8_t *q = xmalloc(BUS_HEADER_LEN + body);
    memcpy(q, p, BUS_HEADER_LEN + body);
    bus_frame_t d;
    size_t used;
    int rc = bus_frame_decode(q, BUS_HEADER_LEN + body, &d, &used);
    cr_assert(rc == 0 || rc == XMPP_EINVAL, "rc %d", rc);
    if (rc == 0) {
      cr_assert_eq(used, BUS_HEADER_LEN + body);
      cr_assert(d.from + d.from_len <= (const char *)q + used);
      cr_assert(d.to + d.to_len <= (const char *)q + used);
      cr_assert(d.payload + d.payload_len == q + used);
    }
    xfree(q);
  }
}

/* ---- streams of frames ------------------------------------------------------------ */

Test(bus_frame, back_to_back) {
  bus_frame_t f1 = sample(BUS_C2S, 42), f2 = sample(BUS_BOUNCE, -42), f3 = {0};
  f2.from = "x@y";
  f2.from_len = 3;
  f2.payload_len = 0;
  f3.kind = BUS_SESSION_OPEN;
  buf_t b;
  buf_init(&b);
  bus_frame_encode(&f1, &b);
  size_t l1 = b.len;
  bus_frame_encode(&f2, &b);
  size_t l2 = b.len - l1;
  bus_frame_encode(&f3, &b);
  size_t l3 = b.len - l1 - l2;

  bus_frame_t d;
  size_t used, off = 0;
  cr_assert_eq(bus_frame_decode(b.data + off, b.len - off, &d, &used), 0);
  cr_assert_eq(used, l1);
  assert_frame_eq(&f1, &d);
  off += used;
  cr_assert_eq(bus_frame_decode(b.data + off, b.len - off, &d, &used), 0);
  cr_assert_eq(used, l2);
  assert_frame_eq(&f2, &d);
  off += used;
  /* the third one arriving piecewise */
  for (size_t n = 0; n < l3; n++) cr_assert_eq(bus_frame_decode(b.data + off, n, &d, &used), XMPP_AGAIN);
  cr_assert_eq(bus_frame_decode(b.data + off, b.len - off, &d, &used), 0);
  cr_assert_eq(used, l3);
  assert_frame_eq(&f3, &d);
  off += used;
  cr_assert_eq(off, b.len);
  cr_assert_eq(bus_frame_decode(b.data + off, 0, &d, &used), XMPP_AGAIN);
  buf_free(&b);
}

/* ---- bus messages ----------------------------------------------------------------- */

Test(bus_msg, new_and_frame_roundtrip) {
  for (uint8_t k = 1; k <= BUS_KIND_MAX; k++)
    for (size_t i = 0; i < sizeof ARGS / sizeof ARGS[0]; i++) {
      bus_frame_t f = sample(k, ARGS[i]);
      bus_msg_t *m = bus_msg_new(&f);
      cr_assert_not_null(m);
      cr_assert_null(m->next);
      buf_t b;
      buf_init(&b);
      bus_frame_encode(&f, &b);
      cr_assert_eq(m->len, b.len);
      cr_assert_eq(memcmp(m->data, b.data, b.len), 0);
      buf_free(&b);
      bus_frame_t d;
      cr_assert_eq(bus_msg_frame(m, &d), 0);
      assert_frame_eq(&f, &d);
      cr_assert(d.payload >= m->data && d.payload + d.payload_len == m->data + m->len);
      bus_msg_free(m);
    }
}

Test(bus_msg, empty_and_large) {
  bus_frame_t f = {0};
  f.kind = BUS_SESSION_CLOSE;
  bus_msg_t *m = bus_msg_new(&f);
  bus_frame_t d;
  cr_assert_eq(bus_msg_frame(m, &d), 0);
  assert_frame_eq(&f, &d);
  bus_msg_free(m);

  size_t pl = 300 * 1024;
  uint8_t *payload = xmalloc(pl);
  for (size_t i = 0; i < pl; i++) payload[i] = (uint8_t)(i ^ (i >> 8));
  f = sample(BUS_DELIVER, 99);
  f.payload = payload;
  f.payload_len = pl;
  m = bus_msg_new(&f);
  cr_assert_eq(bus_msg_frame(m, &d), 0);
  assert_frame_eq(&f, &d);
  bus_msg_free(m);
  xfree(payload);
}

/* ---- the queue on a real loop ----------------------------------------------------- */

#define PRODUCERS 4
#define PER_PRODUCER 10000

typedef struct {
  bus_queue_t q;
  uv_loop_t *loop;
  int64_t next[PRODUCERS]; /* next expected sequence number from each producer */
  long received;
  long batches;
  int order_errors;
  int decode_errors;
} consumer_t;

typedef struct {
  consumer_t *c;
  int id;
} producer_t;

static void consume(void *ud, bus_msg_t *batch) {
  consumer_t *c = ud;
  c->batches++;
  while (batch) {
    bus_msg_t *m = batch;
    batch = m->next;
    bus_frame_t f;
    if (bus_msg_frame(m, &f) != 0 || f.src.thread >= PRODUCERS || f.to_len != 5) {
      c->decode_errors++;
    } else {
      int p = f.src.thread;
      if (f.arg != c->next[p] || f.src.conn != (uint64_t)f.arg * 3) c->order_errors++;
      c->next[p] = f.arg + 1;
    }
    c->received++;
    bus_msg_free(m);
  }
  if (c->received >= (long)PRODUCERS * PER_PRODUCER) uv_stop(c->loop);
}

static void produce(void *arg) {
  producer_t *p = arg;
  for (int i = 0; i < PER_PRODUCER; i++) {
    bus_frame_t f = {0};
    f.kind = BUS_ROUTE;
    f.src.thread = (uint16_t)p->id;
    f.src.conn = (uint64_t)i * 3;
    f.to = "queue";
    f.to_len = 5;
    f.arg = i;
    bus_queue_push(&p->c->q, bus_msg_new(&f));
  }
}

static void count_handles(uv_handle_t *h, void *arg) { (*(int *)arg)++; }

Test(bus_queue, four_producers_fifo_per_producer, .timeout = 60) {
  uv_loop_t loop;
  cr_assert_eq(uv_loop_init(&loop), 0);
  consumer_t *c = xcalloc(1, sizeof *c);
  c->loop = &loop;
  cr_assert_eq(bus_queue_init(&c->q, &loop, consume, c), 0);
  producer_t ps[PRODUCERS];
  uv_thread_t th[PRODUCERS];
  for (int i = 0; i < PRODUCERS; i++) {
    ps[i] = (producer_t){c, i};
    cr_assert_eq(uv_thread_create(&th[i], produce, &ps[i]), 0);
  }
  /* runs until the callback has seen every message (uv_stop) */
  uv_run(&loop, UV_RUN_DEFAULT);
  for (int i = 0; i < PRODUCERS; i++) uv_thread_join(&th[i]);
  /* anything still queued (nothing expected) is handed over by a final drain */
  bus_queue_drain(&c->q);
  cr_assert_eq(c->decode_errors, 0);
  cr_assert_eq(c->order_errors, 0, "%d messages out of order", c->order_errors);
  cr_assert_eq(c->received, (long)PRODUCERS * PER_PRODUCER, "received %ld", c->received);
  for (int i = 0; i < PRODUCERS; i++) cr_assert_eq(c->next[i], PER_PRODUCER, "producer %d", i);
  cr_assert_geq(c->batches, 1);
  cr_assert_leq(c->batches, (long)PRODUCERS * PER_PRODUCER);

  bus_queue_close(&c->q);
  cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  int handles = 0;
  uv_walk(&loop, count_handles, &handles);
  cr_assert_eq(handles, 0, "%d handles left", handles);
  cr_assert_eq(uv_loop_close(&loop), 0);
  xfree(c);
}

static void must_not_run(void *ud, bus_msg_t *batch) {
  (*(int *)ud)++;
  while (batch) {
    bus_msg_t *n = batch->next;
    bus_msg_free(batch);
    batch = n;
  }
}

Test(bus_queue, close_frees_what_is_queued) {
  /* messages pushed but never consumed are freed by close (ASan's leak check) */
  uv_loop_t loop;
  cr_assert_eq(uv_loop_init(&loop), 0);
  bus_queue_t q;
  int calls = 0;
  cr_assert_eq(bus_queue_init(&q, &loop, must_not_run, &calls), 0);
  for (int i = 0; i < 100; i++) {
    bus_frame_t f = sample(BUS_DELIVER, i);
    bus_queue_push(&q, bus_msg_new(&f));
  }
  bus_queue_close(&q);
  cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  cr_assert_eq(calls, 0);
  cr_assert_eq(uv_loop_close(&loop), 0);
}

typedef struct {
  int calls;
  long n;
  int64_t last;
  int ordered;
} drain_rec_t;

static void drain_cb(void *ud, bus_msg_t *batch) {
  drain_rec_t *r = ud;
  r->calls++;
  while (batch) {
    bus_msg_t *m = batch;
    batch = m->next;
    bus_frame_t f;
    cr_assert_eq(bus_msg_frame(m, &f), 0);
    if (f.arg != r->last + 1) r->ordered = 0;
    r->last = f.arg;
    r->n++;
    bus_msg_free(m);
  }
}

Test(bus_queue, drain_is_one_fifo_batch) {
  uv_loop_t loop;
  cr_assert_eq(uv_loop_init(&loop), 0);
  bus_queue_t q;
  drain_rec_t r = {0, 0, -1, 1};
  cr_assert_eq(bus_queue_init(&q, &loop, drain_cb, &r), 0);
  bus_queue_drain(&q); /* empty: no callback */
  cr_assert_eq(r.calls, 0);
  for (int i = 0; i < 1000; i++) {
    bus_frame_t f = sample(BUS_ROUTE, i);
    bus_queue_push(&q, bus_msg_new(&f));
  }
  bus_queue_drain(&q);
  cr_assert_eq(r.calls, 1);
  cr_assert_eq(r.n, 1000);
  cr_assert(r.ordered);
  /* the pending async wake-up finds the queue empty */
  uv_run(&loop, UV_RUN_NOWAIT);
  cr_assert_eq(r.calls, 1);
  bus_queue_close(&q);
  cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  cr_assert_eq(uv_loop_close(&loop), 0);
}

static void count_and_free(void *ud, bus_msg_t *batch) {
  while (batch) {
    bus_msg_t *n = batch->next;
    bus_msg_free(batch);
    (*(long *)ud)++;
    batch = n;
  }
}

Test(bus_queue, pending_counts_and_push_after_close) {
  uv_loop_t loop;
  cr_assert_eq(uv_loop_init(&loop), 0);
  bus_queue_t q;
  long got = 0;
  cr_assert_eq(bus_queue_init(&q, &loop, count_and_free, &got), 0);
  cr_assert_eq(bus_queue_pending(&q), 0);
  for (int i = 0; i < 10; i++) {
    bus_frame_t f = sample(BUS_ROUTE, i);
    bus_queue_push(&q, bus_msg_new(&f));
  }
  cr_assert_eq(bus_queue_pending(&q), 10);
  bus_queue_drain(&q);
  cr_assert_eq(got, 10);
  cr_assert_eq(bus_queue_pending(&q), 0);
  /* queued but never handled, then closed: freed, and no longer pending */
  for (int i = 0; i < 3; i++) {
    bus_frame_t f = sample(BUS_ROUTE, i);
    bus_queue_push(&q, bus_msg_new(&f));
  }
  cr_assert_eq(bus_queue_pending(&q), 3);
  bus_queue_close(&q);
  cr_assert_eq(bus_queue_pending(&q), 0);
  /* a push after close is freed at once (ASan's leak check), never delivered */
  bus_frame_t f = sample(BUS_DELIVER, 1);
  bus_queue_push(&q, bus_msg_new(&f));
  cr_assert_eq(bus_queue_pending(&q), 0);
  cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  cr_assert_eq(got, 10);
  cr_assert_eq(uv_loop_close(&loop), 0);
}

/* ---- the bound: bytes counted, watermarks, the congested counter ------------------ */

typedef struct {
  bus_queue_t *q;
  uint64_t bytes_seen;   /* bus_queue_bytes inside the callback */
  uint64_t batch_bytes;  /* what the batch's messages cost */
  int over_seen;
  int refill;            /* messages to push from inside the callback (the next batch) */
} bound_rec_t;

static void bound_cb(void *ud, bus_msg_t *batch) {
  bound_rec_t *r = ud;
  r->bytes_seen = bus_queue_bytes(r->q);
  r->over_seen = bus_queue_over(r->q);
  r->batch_bytes = 0;
  while (batch) {
    bus_msg_t *m = batch;
    batch = m->next;
    r->batch_bytes += bus_msg_size(m);
    bus_msg_free(m);
  }
  for (; r->refill > 0; r->refill--) {
    bus_frame_t f = sample(BUS_ROUTE, r->refill);
    bus_queue_push(r->q, bus_msg_new(&f));
  }
}

static size_t sample_size(void) {
  bus_frame_t f = sample(BUS_ROUTE, 1);
  bus_msg_t *m = bus_msg_new(&f);
  size_t n = bus_msg_size(m);
  bus_msg_free(m);
  return n;
}

Test(bus_queue, bytes_count_until_the_batch_is_handled) {
  uv_loop_t loop;
  cr_assert_eq(uv_loop_init(&loop), 0);
  bus_queue_t q;
  bound_rec_t r = {&q, 0, 0, 0, 0};
  cr_assert_eq(bus_queue_init(&q, &loop, bound_cb, &r), 0); /* unbounded: counted all the same */
  size_t one = sample_size();
  cr_assert_gt(one, sizeof(bus_msg_t));
  for (int i = 0; i < 10; i++) {
    bus_frame_t f = sample(BUS_ROUTE, i);
    bus_queue_push(&q, bus_msg_new(&f));
    cr_assert_eq(bus_queue_bytes(&q), (i + 1) * one);
  }
  cr_assert_eq(bus_queue_over(&q), 0);
  bus_queue_drain(&q);
  /* the batch still counted while it was being handled, and exactly what it cost */
  cr_assert_eq(r.bytes_seen, 10 * one);
  cr_assert_eq(r.batch_bytes, 10 * one);
  cr_assert_eq(bus_queue_bytes(&q), 0);
  bus_queue_close(&q);
  cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  cr_assert_eq(uv_loop_close(&loop), 0);
}

Test(bus_queue, watermarks_count_in_congested_once_with_hysteresis) {
  uv_loop_t loop;
  cr_assert_eq(uv_loop_init(&loop), 0);
  bus_queue_t q;
  bound_rec_t r = {&q, 0, 0, 0, 0};
  _Atomic int congested = 5; /* shared with others: only this queue's 1 comes and goes */
  size_t one = sample_size();
  cr_assert_eq(bus_queue_init(&q, &loop, bound_cb, &r), 0);
  bus_queue_bound(&q, 10 * one, 4 * one, &congested, "router7");
  for (int i = 0; i < 9; i++) {
    bus_frame_t f = sample(BUS_ROUTE, i);
    bus_queue_push(&q, bus_msg_new(&f));
  }
  cr_assert_eq(bus_queue_over(&q), 0, "under the high watermark");
  cr_assert_eq(atomic_load(&congested), 5);
  for (int i = 9; i < 20; i++) { /* reaches it at the 10th, stays over after */
    bus_frame_t f = sample(BUS_ROUTE, i);
    bus_queue_push(&q, bus_msg_new(&f));
    cr_assert_eq(bus_queue_over(&q), 1, "at %d", i);
    cr_assert_eq(atomic_load(&congested), 6, "counted once");
  }
  /* the consumer pushes 6 (between the watermarks) while handling the 20: after the
   * batch the queue holds 6, still over (hysteresis) */
  r.refill = 6;
  bus_queue_drain(&q);
  cr_assert_eq(r.over_seen, 1);
  cr_assert_eq(bus_queue_bytes(&q), 6 * one);
  cr_assert_eq(bus_queue_over(&q), 1, "over until down to the low watermark");
  cr_assert_eq(atomic_load(&congested), 6);
  bus_queue_drain(&q);
  cr_assert_eq(bus_queue_bytes(&q), 0);
  cr_assert_eq(bus_queue_over(&q), 0);
  cr_assert_eq(atomic_load(&congested), 5, "given back once");
  /* over again, then closed with the messages unhandled: close gives the 1 back */
  for (int i = 0; i < 12; i++) {
    bus_frame_t f = sample(BUS_DELIVER, i);
    bus_queue_push(&q, bus_msg_new(&f));
  }
  cr_assert_eq(atomic_load(&congested), 6);
  bus_queue_close(&q);
  cr_assert_eq(bus_queue_bytes(&q), 0);
  cr_assert_eq(atomic_load(&congested), 5);
  /* a push after close is not counted */
  bus_frame_t f = sample(BUS_DELIVER, 1);
  bus_queue_push(&q, bus_msg_new(&f));
  cr_assert_eq(bus_queue_bytes(&q), 0);
  cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  cr_assert_eq(uv_loop_close(&loop), 0);
}

/* Four producers against a bound of a few messages: the over flag flips constantly from
 * both sides. Whatever the interleaving, once everything is handled the queue holds no
 * byte and no congestion (an increment lost or doubled would show here). */
typedef struct {
  bus_queue_t q;
  uv_loop_t *loop;
  _Atomic int congested;
  long received;
  int max_congested;
} bound_consumer_t;

static void bound_consume(void *ud, bus_msg_t *batch) {
  bound_consumer_t *c = ud;
  int now = atomic_load(&c->congested);
  if (now > c->max_congested) c->max_congested = now;
  while (batch) {
    bus_msg_t *m = batch;
    batch = m->next;
    c->received++;
    bus_msg_free(m);
  }
  if (c->received >= (long)PRODUCERS * PER_PRODUCER) uv_stop(c->loop);
}

static void bound_produce(void *arg) {
  bound_consumer_t *c = arg;
  for (int i = 0; i < PER_PRODUCER; i++) {
    bus_frame_t f = sample(BUS_ROUTE, i);
    bus_queue_push(&c->q, bus_msg_new(&f));
  }
}

Test(bus_queue, four_producers_bound_settles_at_zero, .timeout = 60) {
  uv_loop_t loop;
  cr_assert_eq(uv_loop_init(&loop), 0);
  bound_consumer_t *c = xcalloc(1, sizeof *c);
  c->loop = &loop;
  atomic_init(&c->congested, 0);
  size_t one = sample_size();
  cr_assert_eq(bus_queue_init(&c->q, &loop, bound_consume, c), 0);
  bus_queue_bound(&c->q, 8 * one, 2 * one, &c->congested, "test");
  uv_thread_t th[PRODUCERS];
  for (int i = 0; i < PRODUCERS; i++) cr_assert_eq(uv_thread_create(&th[i], bound_produce, c), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  for (int i = 0; i < PRODUCERS; i++) uv_thread_join(&th[i]);
  bus_queue_drain(&c->q);
  cr_assert_eq(c->received, (long)PRODUCERS * PER_PRODUCER);
  cr_assert_eq(bus_queue_bytes(&c->q), 0);
  cr_assert_eq(bus_queue_over(&c->q), 0);
  cr_assert_eq(atomic_load(&c->congested), 0);
  cr_assert_leq(c->max_congested, 1, "one queue counts at most once");
  bus_queue_close(&c->q);
  cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  cr_assert_eq(uv_loop_close(&loop), 0);
  xfree(c);
}

/* bus_queue_inline: the push that finds an idle consumer runs the callback itself, on the
 * producer's thread; a push made while the callback runs (here, by the callback: a
 * worker routing to its own shard) is not run nested but by the same drainer right
 * after, in order; nothing needs the consumer's loop. */
typedef struct inline_rec {
  bus_queue_t *q;
  int depth, max_depth, calls, refill;
  long n;
  int64_t last;
  int ordered;
} inline_rec_t;

static void inline_cb(void *ud, bus_msg_t *batch) {
  inline_rec_t *r = ud;
  r->depth++;
  if (r->depth > r->max_depth) r->max_depth = r->depth;
  r->calls++;
  while (batch) {
    bus_msg_t *m = batch;
    batch = m->next;
    bus_frame_t f;
    cr_assert_eq(bus_msg_frame(m, &f), 0);
    if (f.arg != r->last + 1) r->ordered = 0;
    r->last = f.arg;
    r->n++;
    bus_msg_free(m);
    if (r->refill > 0) {
      r->refill--;
      bus_frame_t g = sample(BUS_ROUTE, 0);
      g.arg = r->last + 1;
      bus_queue_push(r->q, bus_msg_new(&g)); /* flag held: left to this drainer */
    }
  }
  r->depth--;
}

Test(bus_queue, inline_push_runs_the_callback_on_the_producer_once_at_a_time) {
  uv_loop_t loop;
  cr_assert_eq(uv_loop_init(&loop), 0);
  bus_queue_t q;
  inline_rec_t r = {&q, 0, 0, 0, 0, 0, -1, 1};
  cr_assert_eq(bus_queue_init(&q, &loop, inline_cb, &r), 0);
  bus_queue_inline(&q, 1);
  bus_frame_t f = sample(BUS_ROUTE, 0);
  f.arg = 0;
  bus_queue_push(&q, bus_msg_new(&f));
  cr_assert_eq(r.n, 1, "handled by the push itself, no loop run");
  cr_assert_eq(bus_queue_pending(&q), 0);
  r.refill = 2; /* each handled message pushes the next while the flag is held */
  f.arg = 1;
  bus_queue_push(&q, bus_msg_new(&f));
  cr_assert_eq(r.n, 4, "the pushes made meanwhile handled before the push returned");
  cr_assert_eq(r.max_depth, 1, "never nested");
  cr_assert(r.ordered);
  cr_assert_eq(bus_queue_pending(&q), 0);
  cr_assert_eq(bus_queue_bytes(&q), 0);
  bus_queue_close(&q);
  cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  cr_assert_eq(uv_loop_close(&loop), 0);
}

Test(bus_queue, push_without_inline_waits_for_the_loop) {
  uv_loop_t loop;
  cr_assert_eq(uv_loop_init(&loop), 0);
  bus_queue_t q;
  inline_rec_t r = {&q, 0, 0, 0, 0, 0, -1, 1};
  cr_assert_eq(bus_queue_init(&q, &loop, inline_cb, &r), 0);
  bus_frame_t f = sample(BUS_ROUTE, 0);
  f.arg = 0;
  bus_queue_push(&q, bus_msg_new(&f));
  cr_assert_eq(r.n, 0, "not on the producer");
  uv_run(&loop, UV_RUN_NOWAIT);
  cr_assert_eq(r.n, 1);
  /* the consumer's own thread: no wake-up; its loop drains before it waits */
  bus_queue_own(&q);
  f.arg = 1;
  bus_queue_push(&q, bus_msg_new(&f));
  cr_assert_eq(r.n, 1);
  uv_run(&loop, UV_RUN_NOWAIT);
  cr_assert_eq(r.n, 2, "drained by the loop's prepare phase");
  cr_assert(r.ordered);
  bus_queue_close(&q);
  cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  cr_assert_eq(uv_loop_close(&loop), 0);
}

/* Many producers on other threads, all inline, with a consumer loop too: every message
 * handled once, FIFO per producer, never two drainers at a time. */
#define INL_PRODUCERS 4
#define INL_PER 20000
typedef struct inl_mt {
  bus_queue_t q;
  _Atomic int inside;
  int overlap;
  long n;
  int64_t last[INL_PRODUCERS];
  int ordered;
} inl_mt_t;

static void inl_mt_cb(void *ud, bus_msg_t *batch) {
  inl_mt_t *c = ud;
  if (atomic_fetch_add(&c->inside, 1)) c->overlap = 1;
  while (batch) {
    bus_msg_t *m = batch;
    batch = m->next;
    bus_frame_t f;
    cr_assert_eq(bus_msg_frame(m, &f), 0);
    int p = f.src.thread;
    if (f.arg != c->last[p] + 1) c->ordered = 0;
    c->last[p] = f.arg;
    c->n++;
    bus_msg_free(m);
  }
  atomic_fetch_sub(&c->inside, 1);
}

typedef struct inl_prod {
  inl_mt_t *c;
  int idx;
} inl_prod_t;

static void inl_produce(void *arg) {
  inl_prod_t *p = arg;
  for (int i = 0; i < INL_PER; i++) {
    bus_frame_t f = sample(BUS_ROUTE, i);
    f.src.thread = (uint16_t)p->idx;
    f.arg = i;
    bus_queue_push(&p->c->q, bus_msg_new(&f));
  }
}

Test(bus_queue, inline_from_many_threads_keeps_order_and_one_drainer, .timeout = 60) {
  uv_loop_t loop;
  cr_assert_eq(uv_loop_init(&loop), 0);
  inl_mt_t *c = calloc(1, sizeof *c);
  c->ordered = 1;
  for (int i = 0; i < INL_PRODUCERS; i++) c->last[i] = -1;
  cr_assert_eq(bus_queue_init(&c->q, &loop, inl_mt_cb, c), 0);
  bus_queue_inline(&c->q, 1);
  uv_thread_t th[INL_PRODUCERS];
  inl_prod_t ps[INL_PRODUCERS];
  for (int i = 0; i < INL_PRODUCERS; i++) {
    ps[i] = (inl_prod_t){c, i};
    cr_assert_eq(uv_thread_create(&th[i], inl_produce, &ps[i]), 0);
  }
  for (int i = 0; i < INL_PRODUCERS; i++) uv_thread_join(&th[i]);
  /* what a drainer left after its rounds went to the loop (async) */
  while (bus_queue_pending(&c->q)) uv_run(&loop, UV_RUN_NOWAIT);
  cr_assert_eq(c->n, (long)INL_PRODUCERS * INL_PER);
  cr_assert(c->ordered, "FIFO per producer");
  cr_assert_not(c->overlap, "one drainer at a time");
  cr_assert_eq(bus_queue_bytes(&c->q), 0);
  bus_queue_close(&c->q);
  cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  cr_assert_eq(uv_loop_close(&loop), 0);
  free(c);
}

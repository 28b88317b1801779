#include "common/bus_frame.h"

#include <string.h>

#include "common/err.h"

static void put16(buf_t *b, uint16_t v) {
  uint8_t t[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
  buf_append(b, t, 2);
}
static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(buf_t *b, uint64_t v) {
  uint8_t t[8];
  for (int i = 0; i < 8; i++) t[i] = (uint8_t)(v >> (8 * i));
  buf_append(b, t, 8);
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint64_t get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

static void put_addr(buf_t *b, const bus_addr_t *a) {
  put16(b, a->node);
  put16(b, a->thread);
  put64(b, a->conn);
}

void bus_frame_encode(const bus_frame_t *f, buf_t *out) {
  size_t start = out->len;
  uint8_t hdr[BUS_HEADER_LEN] = {BUS_VERSION, f->kind, (uint8_t)f->flags, (uint8_t)(f->flags >> 8)};
  buf_append(out, hdr, sizeof hdr);
  put_addr(out, &f->src);
  put_addr(out, &f->dst);
  buf_put_varint(out, f->from_len);
  buf_append(out, f->from, f->from_len);
  buf_put_varint(out, f->to_len);
  buf_append(out, f->to, f->to_len);
  buf_put_varint(out, ((uint64_t)f->arg << 1) ^ (uint64_t)(f->arg >> 63));
  if (f->flags & BUS_F_ORIGIN) put64(out, f->origin);
  buf_append(out, f->payload, f->payload_len);
  put32(out->data + start + 4, (uint32_t)(out->len - start - BUS_HEADER_LEN));
}

static int get_addr(const uint8_t **p, const uint8_t *end, bus_addr_t *a) {
  if (end - *p < 12) return XMPP_EINVAL;
  a->node = get16(*p);
  a->thread = get16(*p + 2);
  a->conn = get64(*p + 4);
  *p += 12;
  return 0;
}

static int get_bytes(const uint8_t **p, const uint8_t *end, const char **s, size_t *len) {
  uint64_t l;
  if (buf_get_varint(p, end, &l) || l > (uint64_t)(end - *p)) return XMPP_EINVAL;
  *s = (const char *)*p;
  *len = (size_t)l;
  *p += l;
  return 0;
}

int bus_frame_decode(const uint8_t *p, size_t len, bus_frame_t *f, size_t *used) {
  if (len < BUS_HEADER_LEN) {
    /* reject garbage early, even before a whole header arrived */
    if (len >= 1 && bus_hdr_version(p) != BUS_VERSION) return XMPP_EINVAL;
    if (len >= 2 && !bus_kind_valid(bus_hdr_kind(p))) return XMPP_EINVAL;
    return XMPP_AGAIN;
  }
  if (bus_hdr_version(p) != BUS_VERSION || !bus_kind_valid(bus_hdr_kind(p))) return XMPP_EINVAL;
  uint32_t body = bus_hdr_body_len(p);
  if (body > BUS_MAX_BODY) return XMPP_EINVAL;
  if (len - BUS_HEADER_LEN < body) return XMPP_AGAIN;
  memset(f, 0, sizeof *f);
  f->kind = bus_hdr_kind(p);
  f->flags = bus_hdr_flags(p);
  const uint8_t *q = p + BUS_HEADER_LEN, *end = q + body;
  uint64_t zz;
  if (get_addr(&q, end, &f->src) || get_addr(&q, end, &f->dst) ||
      get_bytes(&q, end, &f->from, &f->from_len) || get_bytes(&q, end, &f->to, &f->to_len) ||
      buf_get_varint(&q, end, &zz))
    return XMPP_EINVAL;
  f->arg = (int64_t)(zz >> 1) ^ -(int64_t)(zz & 1);
  if (f->flags & BUS_F_ORIGIN) {
    if (end - q < 8) return XMPP_EINVAL;
    f->origin = get64(q);
    q += 8;
  }
  f->payload = q;
  f->payload_len = (size_t)(end - q);
  *used = BUS_HEADER_LEN + body;
  return 0;
}

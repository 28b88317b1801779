/* Log-linear histogram (see hdr.h). */
#include "bench/hdr.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

void hdr_init(hdr_t *h) {
  memset(h, 0, sizeof *h);
  h->min = UINT64_MAX;
}

size_t hdr_index(uint64_t v) {
  if (v < HDR_SUB) return (size_t)v;
  int msb = 63 - __builtin_clzll(v);
  if (msb >= HDR_MAX_BITS) return HDR_BUCKETS - 1;
  int shift = msb - (HDR_SUB_BITS - 1);
  return (size_t)(shift + 1) * HDR_HALF + (size_t)(v >> shift) - HDR_HALF;
}

uint64_t hdr_bucket_low(size_t i) {
  if (i < HDR_SUB) return i;
  size_t shift = i / HDR_HALF - 1;
  return ((uint64_t)(i % HDR_HALF) + HDR_HALF) << shift;
}

uint64_t hdr_bucket_high(size_t i) {
  if (i < HDR_SUB) return i;
  if (i == HDR_BUCKETS - 1) return UINT64_MAX;
  size_t shift = i / HDR_HALF - 1;
  return hdr_bucket_low(i) + ((uint64_t)1 << shift) - 1;
}

void hdr_record_n(hdr_t *h, uint64_t v, uint64_t n) {
  if (!n) return;
  h->counts[hdr_index(v)] += n;
  h->total += n;
  h->sum += v * n;
  if (v > h->max) h->max = v;
  if (v < h->min) h->min = v;
}

void hdr_record(hdr_t *h, uint64_t v) { hdr_record_n(h, v, 1); }

void hdr_merge(hdr_t *dst, const hdr_t *src) {
  if (!src->total) return;
  for (size_t i = 0; i < HDR_BUCKETS; i++) dst->counts[i] += src->counts[i];
  dst->total += src->total;
  dst->sum += src->sum;
  if (src->max > dst->max) dst->max = src->max;
  if (src->min < dst->min) dst->min = src->min;
}

void hdr_diff(hdr_t *dst, const hdr_t *a, const hdr_t *b) {
  hdr_init(dst);
  size_t lo = HDR_BUCKETS, hi = 0;
  for (size_t i = 0; i < HDR_BUCKETS; i++) {
    uint64_t c = a->counts[i] >= b->counts[i] ? a->counts[i] - b->counts[i] : 0;
    dst->counts[i] = c;
    dst->total += c;
    if (c) {
      if (i < lo) lo = i;
      hi = i;
    }
  }
  dst->sum = a->sum >= b->sum ? a->sum - b->sum : 0;
  if (dst->total) {
    dst->min = hdr_bucket_low(lo);
    dst->max = hdr_bucket_high(hi);
    if (dst->max > a->max) dst->max = a->max;
    if (dst->min < a->min) dst->min = a->min;
  }
}

uint64_t hdr_percentile(const hdr_t *h, double p) {
  if (!h->total) return 0;
  if (p <= 0) return h->min;
  if (p >= 100) return h->max;
  uint64_t rank = (uint64_t)((p / 100.0) * (double)h->total + 0.999999);
  if (rank < 1) rank = 1;
  uint64_t seen = 0;
  for (size_t i = 0; i < HDR_BUCKETS; i++) {
    seen += h->counts[i];
    if (seen >= rank) {
      uint64_t v = hdr_bucket_high(i);
      return v > h->max ? h->max : v;
    }
  }
  return h->max;
}

double hdr_mean(const hdr_t *h) { return h->total ? (double)h->sum / (double)h->total : 0.0; }

void hdr_encode(const hdr_t *h, buf_t *out) {
  buf_printf(out, "%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64, h->total, h->max,
             h->total ? h->min : 0, h->sum);
  for (size_t i = 0; i < HDR_BUCKETS; i++)
    if (h->counts[i]) buf_printf(out, " %zu:%" PRIu64, i, h->counts[i]);
}

int hdr_decode_add(hdr_t *h, const char *s) {
  char *end;
  uint64_t hd[4];
  for (int k = 0; k < 4; k++) {
    hd[k] = strtoull(s, &end, 10);
    if (end == s) return -1;
    s = end;
  }
  uint64_t total = 0;
  while (*s == ' ') {
    s++;
    unsigned long long i = strtoull(s, &end, 10);
    if (end == s || *end != ':' || i >= HDR_BUCKETS) return -1;
    s = end + 1;
    unsigned long long c = strtoull(s, &end, 10);
    if (end == s) return -1;
    s = end;
    h->counts[i] += c;
    total += c;
  }
  if (*s && *s != '\n') return -1;
  if (total != hd[0]) return -1;
  h->total += hd[0];
  h->sum += hd[3];
  if (hd[0]) {
    if (hd[1] > h->max) h->max = hd[1];
    if (hd[2] < h->min) h->min = hd[2];
  }
  return 0;
}

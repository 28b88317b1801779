/* bench/hdr.c: log-linear histogram used by xmpp-bench for latencies. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "bench/hdr.h"
#include "common/alloc.h"
#include "common/buf.h"

static hdr_t *new_hdr(void) {
  hdr_t *h = malloc(sizeof *h);
  hdr_init(h);
  return h;
}

Test(hdr, small_values_exact) {
  for (uint64_t v = 0; v < HDR_SUB; v++) {
    cr_assert_eq(hdr_bucket_low(hdr_index(v)), v);
    cr_assert_eq(hdr_bucket_high(hdr_index(v)), v);
  }
}

Test(hdr, buckets_contiguous_and_bounded_error) {
  /* every value lies in [low, high] of its bucket; buckets tile the range without gaps */
  for (size_t i = 1; i < HDR_BUCKETS - 1; i++)
    cr_assert_eq(hdr_bucket_low(i), hdr_bucket_high(i - 1) + 1, "gap before bucket %zu", i);
  uint64_t vals[] = {128, 129, 255, 256, 1000, 12345, 999999, 1ull << 30, (1ull << 40) + 12345};
  for (size_t k = 0; k < sizeof vals / sizeof vals[0]; k++) {
    size_t i = hdr_index(vals[k]);
    cr_assert(hdr_bucket_low(i) <= vals[k] && vals[k] <= hdr_bucket_high(i), "value %llu",
              (unsigned long long)vals[k]);
    double err = (double)(hdr_bucket_high(i) - hdr_bucket_low(i)) / (double)vals[k];
    cr_assert(err <= 1.0 / HDR_HALF, "relative bucket width %f", err);
  }
  cr_assert_eq(hdr_index(UINT64_MAX), HDR_BUCKETS - 1);
}

Test(hdr, percentiles_uniform) {
  hdr_t *h = new_hdr();
  for (uint64_t v = 1; v <= 100000; v++) hdr_record(h, v);
  cr_assert_eq(h->total, 100000);
  cr_assert_eq(h->max, 100000);
  cr_assert_eq(h->min, 1);
  double p[] = {50, 90, 99, 99.9};
  for (int k = 0; k < 4; k++) {
    double want = p[k] * 1000;
    double got = (double)hdr_percentile(h, p[k]);
    cr_assert(got >= want && got <= want * 1.02, "p%g: %f vs %f", p[k], got, want);
  }
  cr_assert_eq(hdr_percentile(h, 100), 100000);
  cr_assert_eq(hdr_percentile(h, 0), 1);
  cr_assert_float_eq(hdr_mean(h), 50000.5, 1e-6);
  free(h);
}

Test(hdr, empty) {
  hdr_t *h = new_hdr();
  cr_assert_eq(hdr_percentile(h, 50), 0);
  cr_assert_eq(hdr_percentile(h, 99), 0);
  cr_assert_float_eq(hdr_mean(h), 0, 1e-9);
  free(h);
}

Test(hdr, merge_equals_single) {
  hdr_t *a = new_hdr(), *b = new_hdr(), *all = new_hdr();
  for (uint64_t v = 0; v < 50000; v++) {
    uint64_t x = (v * 2654435761u) % 1000003;
    hdr_record(v & 1 ? a : b, x);
    hdr_record(all, x);
  }
  hdr_merge(a, b);
  cr_assert_eq(a->total, all->total);
  cr_assert_eq(a->max, all->max);
  cr_assert_eq(a->min, all->min);
  cr_assert_eq(a->sum, all->sum);
  cr_assert_eq(memcmp(a->counts, all->counts, sizeof a->counts), 0);
  free(a);
  free(b);
  free(all);
}

Test(hdr, encode_decode_roundtrip_and_merge) {
  hdr_t *a = new_hdr(), *b = new_hdr(), *c = new_hdr();
  for (uint64_t v = 0; v < 1000; v++) hdr_record(a, v * v);
  hdr_record_n(a, 7, 5);
  buf_t enc;
  buf_init(&enc);
  hdr_encode(a, &enc);
  buf_putc(&enc, 0);
  cr_assert_eq(hdr_decode_add(b, (const char *)enc.data), 0);
  cr_assert_eq(memcmp(a->counts, b->counts, sizeof a->counts), 0);
  cr_assert_eq(a->total, b->total);
  cr_assert_eq(a->max, b->max);
  cr_assert_eq(a->min, b->min);
  cr_assert_eq(a->sum, b->sum);
  /* decoding twice adds (the coordinator merges processes this way) */
  cr_assert_eq(hdr_decode_add(b, (const char *)enc.data), 0);
  cr_assert_eq(b->total, 2 * a->total);
  cr_assert_eq(hdr_percentile(b, 50), hdr_percentile(a, 50));
  /* malformed */
  cr_assert_neq(hdr_decode_add(c, "3 1 1 3 0:2"), 0); /* counts do not add up */
  cr_assert_neq(hdr_decode_add(c, "1 1 1 1 999999:1"), 0);
  cr_assert_neq(hdr_decode_add(c, "x"), 0);
  buf_free(&enc);
  free(a);
  free(b);
  free(c);
}

Test(hdr, diff_gives_interval) {
  hdr_t *before = new_hdr(), *after = new_hdr(), *iv = new_hdr();
  for (uint64_t v = 0; v < 1000; v++) hdr_record(before, 10);
  *after = *before;
  for (uint64_t v = 0; v < 1000; v++) hdr_record(after, 5000);
  hdr_diff(iv, after, before);
  cr_assert_eq(iv->total, 1000);
  uint64_t p50 = hdr_percentile(iv, 50);
  cr_assert(p50 >= 5000 && p50 <= 5000 * 1.02, "interval p50 %llu", (unsigned long long)p50);
  free(before);
  free(after);
  free(iv);
}

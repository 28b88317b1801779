/* Log-linear latency histogram in the manner of HdrHistogram: values (unsigned integers,
 * the bench records microseconds) below 2^HDR_SUB_BITS are exact; above, each power of two
 * is split into 2^(HDR_SUB_BITS-1) equal buckets, so any value is reported within
 * 1/2^(HDR_SUB_BITS-1) (~1.6 %) of its true value. Fixed size, no allocation after init,
 * recording is a few instructions. Histograms with the same layout merge by adding counts
 * (across threads; across processes through hdr_encode / hdr_decode_add). */
#ifndef XMPP_BENCH_HDR_H
#define XMPP_BENCH_HDR_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define HDR_SUB_BITS 7
#define HDR_SUB (1u << HDR_SUB_BITS)    /* 128 exact values */
#define HDR_HALF (HDR_SUB >> 1)          /* 64 buckets per power of two above */
#define HDR_MAX_BITS 44                  /* values up to 2^44 (~200 days in us) */
#define HDR_BUCKETS ((HDR_MAX_BITS - HDR_SUB_BITS + 2) * HDR_HALF)

typedef struct hdr {
  uint64_t counts[HDR_BUCKETS];
  uint64_t total;
  uint64_t max;
  uint64_t min;
  uint64_t sum;
} hdr_t;

void hdr_init(hdr_t *h);
/* Bucket index of a value (values beyond the range go to the last bucket). */
size_t hdr_index(uint64_t v);
/* Lowest and highest value that fall into bucket i. */
uint64_t hdr_bucket_low(size_t i);
uint64_t hdr_bucket_high(size_t i);
void hdr_record(hdr_t *h, uint64_t v);
void hdr_record_n(hdr_t *h, uint64_t v, uint64_t n);
/* dst += src. */
void hdr_merge(hdr_t *dst, const hdr_t *src);
/* dst = a - b, for b an earlier snapshot of the same cumulative histogram (an interval). */
void hdr_diff(hdr_t *dst, const hdr_t *a, const hdr_t *b);
/* Value at percentile p (0..100): the highest value of the bucket holding the rank,
 * capped at the recorded max. 0 when empty. */
uint64_t hdr_percentile(const hdr_t *h, double p);
double hdr_mean(const hdr_t *h);
/* Sparse text form "total max min sum idx:count idx:count ..." (no newline). */
void hdr_encode(const hdr_t *h, buf_t *out);
/* Adds an encoded histogram to h. 0, or -1 on malformed input. */
int hdr_decode_add(hdr_t *h, const char *s);

#endif

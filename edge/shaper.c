/* Token buckets and pause pressure for one connection (see shaper.h). */
#include "edge/shaper.h"

#include <math.h>

static int64_t cap(int64_t rate, const shaper_conf_t *k) { return rate * k->burst_s * 1000; }

void shaper_init(shaper_t *s, const shaper_conf_t *k, uint64_t now_ms) {
  s->bytes = cap(k->rate_bytes, k);
  s->stanzas = cap(k->rate_stanzas, k);
  s->at_ms = s->pressure_at_ms = now_ms;
  s->pressure = 0;
}

static void refill_one(int64_t *credit, int64_t rate, const shaper_conf_t *k, uint64_t dt) {
  if (!rate) return;
  int64_t c = *credit + rate * (int64_t)dt; /* rate/s * ms = milli-units */
  int64_t m = cap(rate, k);
  *credit = c > m ? m : c;
}

void shaper_refill(shaper_t *s, const shaper_conf_t *k, uint64_t now_ms) {
  if (now_ms <= s->at_ms) return;
  uint64_t dt = now_ms - s->at_ms;
  if (dt > 3600000) dt = 3600000;
  refill_one(&s->bytes, k->rate_bytes, k, dt);
  refill_one(&s->stanzas, k->rate_stanzas, k, dt);
  s->at_ms = now_ms;
}

void shaper_charge(shaper_t *s, const shaper_conf_t *k, int64_t bytes, int64_t stanzas) {
  if (k->rate_bytes) s->bytes -= bytes * 1000;
  if (k->rate_stanzas) s->stanzas -= stanzas * 1000;
}

int shaper_over(const shaper_t *s) { return s->bytes < 0 || s->stanzas < 0; }

float shaper_pressure(shaper_t *s, const shaper_conf_t *k, int paused, uint64_t now_ms) {
  if (now_ms > s->pressure_at_ms) {
    double dt = (double)(now_ms - s->pressure_at_ms);
    double keep = exp(-dt / ((double)k->grace_s * 1000.0));
    s->pressure = (float)(s->pressure * keep + (paused ? 1.0 - keep : 0.0));
    s->pressure_at_ms = now_ms;
  }
  return s->pressure;
}

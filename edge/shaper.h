/* Per-connection input shaping: two token buckets (bytes/s and stanzas/s) and a measure
 * of how persistently the client stays above them.
 *
 * Credit refills at the configured rate up to rate * burst seconds. A charge may drive
 * the credit negative; then the connection stops reading until the credit is back to
 * zero, which slows the sender through TCP flow control. 'pressure' is the fraction of
 * recent time the connection spent paused, an exponential moving average with time
 * constant rate_grace: a client at 10x its rate is paused ~90% of the time and crosses
 * SHAPER_KICK in about 0.8 * rate_grace seconds; a client at 2x hovers near 0.5 and is
 * only slowed. Pure functions of time, so they are unit-tested without a loop. */
#ifndef XMPP_EDGE_SHAPER_H
#define XMPP_EDGE_SHAPER_H

#include <stdint.h>

#define SHAPER_KICK 0.6f

typedef struct shaper_conf {
  int64_t rate_bytes;   /* per second; 0 = unshaped */
  int64_t rate_stanzas; /* per second; 0 = unshaped */
  int64_t burst_s;
  int64_t grace_s;
} shaper_conf_t;

typedef struct shaper {
  int64_t bytes;   /* credit in milli-bytes */
  int64_t stanzas; /* credit in milli-stanzas */
  uint64_t at_ms;  /* when the credits were last refilled */
  float pressure;  /* EWMA of the paused fraction, 0..1 */
  uint64_t pressure_at_ms;
} shaper_t;

void shaper_init(shaper_t *s, const shaper_conf_t *k, uint64_t now_ms);
void shaper_refill(shaper_t *s, const shaper_conf_t *k, uint64_t now_ms);
void shaper_charge(shaper_t *s, const shaper_conf_t *k, int64_t bytes, int64_t stanzas);
/* 1 when some credit is negative: reading must pause. */
int shaper_over(const shaper_t *s);
/* Advances the pressure average to now; 'paused' says what the connection was doing
 * since the last update. Returns the new pressure. */
float shaper_pressure(shaper_t *s, const shaper_conf_t *k, int paused, uint64_t now_ms);

#endif

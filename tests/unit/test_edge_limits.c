/* The edge's limit primitives: the shaper's buckets and pressure, and the guard's
 * per-address and per-account counters. Pure functions of time: no loop, no sockets. */
#include <criterion/criterion.h>

#include "common/err.h"
#include "common/hash.h"
#include "edge/guard.h"
#include "edge/shaper.h"

static const shaper_conf_t K = {1000, 10, 2, 10}; /* 1000 B/s, 10 stanzas/s, 2 s burst, 10 s grace */

Test(shaper, starts_with_a_full_burst) {
  shaper_t s;
  shaper_init(&s, &K, 0);
  shaper_charge(&s, &K, 2000, 20);
  cr_assert_not(shaper_over(&s));
  shaper_charge(&s, &K, 0, 1);
  cr_assert(shaper_over(&s));
}

Test(shaper, refills_at_the_rate_and_caps_at_the_burst) {
  shaper_t s;
  shaper_init(&s, &K, 0);
  shaper_charge(&s, &K, 0, 25); /* 5 over */
  cr_assert(shaper_over(&s));
  shaper_refill(&s, &K, 400); /* +4 */
  cr_assert(shaper_over(&s));
  shaper_refill(&s, &K, 500); /* +1: back to zero */
  cr_assert_not(shaper_over(&s));
  shaper_refill(&s, &K, 1000000);
  shaper_charge(&s, &K, 0, 20);
  cr_assert_not(shaper_over(&s), "credit is capped at rate * burst, not more");
  shaper_charge(&s, &K, 0, 1);
  cr_assert(shaper_over(&s));
}

Test(shaper, bytes_and_stanzas_are_separate) {
  shaper_t s;
  shaper_init(&s, &K, 0);
  shaper_charge(&s, &K, 2001, 0);
  cr_assert(shaper_over(&s));
}

Test(shaper, zero_rate_is_unshaped) {
  shaper_conf_t k = {0, 0, 2, 10};
  shaper_t s;
  shaper_init(&s, &k, 0);
  shaper_charge(&s, &k, 1 << 30, 1 << 20);
  cr_assert_not(shaper_over(&s));
}

Test(shaper, pressure_crosses_kick_only_when_persistent) {
  shaper_t s;
  shaper_init(&s, &K, 0);
  /* paused 90% of the time (a client at 10x): kicked within about grace seconds */
  uint64_t t = 0;
  float p = 0;
  while (p < SHAPER_KICK && t < 60000) {
    p = shaper_pressure(&s, &K, 0, t += 100);
    p = shaper_pressure(&s, &K, 1, t += 900);
  }
  cr_assert(t <= 12000, "kicked after %llu ms", (unsigned long long)t);
  /* paused half the time (2x): slowed, never kicked */
  shaper_init(&s, &K, 0);
  t = 0;
  for (int i = 0; i < 600; i++) {
    shaper_pressure(&s, &K, 0, t += 500);
    p = shaper_pressure(&s, &K, 1, t += 500);
    cr_assert(p < SHAPER_KICK, "p=%f at %llu", p, (unsigned long long)t);
  }
  /* a short burst, then quiet: pressure decays */
  p = shaper_pressure(&s, &K, 0, t += 30000);
  cr_assert(p < 0.1f);
}

static const uint8_t IP1[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1};
static const uint8_t IP2[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2};

Test(guard, caps_connections_per_address) {
  hash_init();
  guard_conf_t k = {3, 5, 10, 5};
  guard_t *g = guard_new(&k);
  for (int i = 0; i < 3; i++) cr_assert_eq(guard_conn_open(g, IP1), 0);
  cr_assert_eq(guard_conn_open(g, IP1), XMPP_ELIMIT);
  cr_assert_eq(guard_conn_open(g, IP2), 0);
  guard_conn_close(g, IP1);
  cr_assert_eq(guard_conn_open(g, IP1), 0);
  for (int i = 0; i < 3; i++) guard_conn_close(g, IP1);
  guard_conn_close(g, IP2);
  cr_assert_eq(guard_size(g), 0, "entries with nothing to remember are freed");
  guard_free(g);
}

Test(guard, zero_cap_means_unlimited) {
  hash_init();
  guard_conf_t k = {0, 5, 10, 5};
  guard_t *g = guard_new(&k);
  for (int i = 0; i < 10000; i++) cr_assert_eq(guard_conn_open(g, IP1), 0);
  guard_free(g);
}

Test(guard, auth_failures_per_address_slide_out_of_the_minute) {
  hash_init();
  guard_conf_t k = {0, 3, 100, 5};
  guard_t *g = guard_new(&k);
  uint64_t t = 600000; /* start of a minute */
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(guard_auth_allowed(g, IP1, "a@x", t), 0);
    guard_auth_failed(g, IP1, "a@x", t);
  }
  cr_assert_eq(guard_auth_allowed(g, IP1, "b@x", t + 1000), XMPP_ELIMIT);
  cr_assert_eq(guard_auth_allowed(g, IP2, "b@x", t + 1000), 0, "other addresses are not affected");
  /* next minute, 30 s in: the old failures count half (1.5 < 3) */
  cr_assert_eq(guard_auth_allowed(g, IP1, "b@x", t + 90000), 0);
  /* two minutes later they are gone, and prune forgets the entries */
  cr_assert_eq(guard_auth_allowed(g, IP1, "b@x", t + 180000), 0);
  guard_prune(g, t + 180000);
  cr_assert_eq(guard_size(g), 0);
  guard_free(g);
}

Test(guard, auth_failures_per_account_across_addresses) {
  hash_init();
  guard_conf_t k = {0, 100, 2, 5};
  guard_t *g = guard_new(&k);
  uint64_t t = 60000;
  guard_auth_failed(g, IP1, "victim@x", t);
  guard_auth_failed(g, IP2, "victim@x", t);
  cr_assert_eq(guard_auth_allowed(g, IP1, "victim@x", t), XMPP_ELIMIT);
  cr_assert_eq(guard_auth_allowed(g, IP1, "other@x", t), 0);
  cr_assert_eq(guard_auth_allowed(g, IP1, NULL, t), 0);
  guard_free(g);
}

/* Found in review: IPv6 was keyed per /128, so one host walking its /64 escaped the caps. */
Test(guard, ipv6_counts_per_64) {
  hash_init();
  guard_conf_t k = {2, 5, 10, 5};
  guard_t *g = guard_new(&k);
  uint8_t a[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1};
  uint8_t b[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0xde, 0xad, 0, 0, 0, 0, 0, 2};
  uint8_t other64[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1};
  cr_assert_eq(guard_conn_open(g, a), 0);
  cr_assert_eq(guard_conn_open(g, b), 0);
  cr_assert_eq(guard_conn_open(g, a), XMPP_ELIMIT, "same /64");
  cr_assert_eq(guard_conn_open(g, other64), 0);
  /* IPv4 stays per address */
  cr_assert_eq(guard_conn_open(g, IP1), 0);
  cr_assert_eq(guard_conn_open(g, IP2), 0);
  guard_free(g);
}

/* XEP-0077 registrations: N attempts per address in a sliding hour, the N+1st refused
 * and not counted; other addresses unaffected; the hour slides out and prune forgets. */
Test(guard, registrations_per_address_per_hour) {
  hash_init();
  guard_conf_t k = {0, 5, 10, 3};
  guard_t *g = guard_new(&k);
  uint64_t t = 7200000; /* start of an hour */
  for (int i = 0; i < 3; i++) cr_assert_eq(guard_register_take(g, IP1, t + i), 0, "attempt %d", i + 1);
  cr_assert_eq(guard_register_take(g, IP1, t + 10), XMPP_ELIMIT, "the 4th attempt in the hour");
  cr_assert_eq(guard_register_take(g, IP1, t + 59 * 60000), XMPP_ELIMIT, "still within the hour");
  cr_assert_eq(guard_register_take(g, IP2, t + 10), 0, "other addresses are not affected");
  /* next hour, half way: the old attempts count half (1.5 < 3) */
  cr_assert_eq(guard_register_take(g, IP1, t + 90 * 60000), 0);
  /* failed authentications do not spend the registration budget, nor the reverse */
  cr_assert_eq(guard_auth_allowed(g, IP1, NULL, t + 90 * 60000), 0);
  guard_prune(g, t + 3 * 3600000);
  cr_assert_eq(guard_size(g), 0, "two hours later both entries are forgotten");
  guard_free(g);
}

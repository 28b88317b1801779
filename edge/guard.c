/* Per-address and per-account admission limits (see guard.h).
 *
 * Failure counts use two fixed one-minute buckets, the current and the previous, and
 * estimate the sliding minute as cur + prev * (unelapsed part of the current minute);
 * registration attempts the same with one-hour buckets:
 * constant memory per key, no timers, and the estimate never undercounts by more than
 * the rounding of one bucket. */
#include "edge/guard.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/strmap.h"

typedef struct window {
  uint64_t bucket; /* index of the current bucket (now_ms / period) */
  uint32_t cur, prev;
} window_t;

#define MINUTE_MS 60000ull
#define HOUR_MS 3600000ull

typedef struct entry {
  int conns;
  window_t fail; /* failed authentications, one-minute buckets */
  window_t reg;  /* registration attempts (addresses only), one-hour buckets */
} entry_t;

struct guard {
  guard_conf_t k;
  pthread_mutex_t mu;
  strmap_t *map;
};

guard_t *guard_new(const guard_conf_t *k) {
  guard_t *g = xcalloc(1, sizeof *g);
  g->k = *k;
  pthread_mutex_init(&g->mu, NULL);
  g->map = strmap_new();
  return g;
}

static void free_entry(void *e) { xfree(e); }

void guard_free(guard_t *g) {
  if (!g) return;
  strmap_free(g->map, free_entry);
  pthread_mutex_destroy(&g->mu);
  xfree(g);
}

/* IPv4 addresses count one by one; IPv6 ones by /64, the smallest block a site gets, so
 * one host cannot escape the limits by walking its own /64 (and cannot fill the table
 * with it). */
static void ip_key(const uint8_t ip[16], char out[34]) {
  static const char hex[] = "0123456789abcdef";
  static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  int n = memcmp(ip, v4mapped, 12) == 0 ? 16 : 8;
  out[0] = 'i';
  for (int i = 0; i < 16; i++) {
    uint8_t b = i < n ? ip[i] : 0;
    out[1 + 2 * i] = hex[b >> 4];
    out[2 + 2 * i] = hex[b & 15];
  }
  out[33] = '\0';
}

static entry_t *get(guard_t *g, const char *key, int create) {
  entry_t *e = strmap_get(g->map, key);
  if (!e && create) {
    e = xcalloc(1, sizeof *e);
    strmap_put(g->map, key, e);
  }
  return e;
}

static void roll(window_t *w, uint64_t now_ms, uint64_t period) {
  uint64_t m = now_ms / period;
  if (m == w->bucket) return;
  w->prev = m == w->bucket + 1 ? w->cur : 0;
  w->cur = 0;
  w->bucket = m;
}

static double recent(window_t *w, uint64_t now_ms, uint64_t period) {
  if (!w) return 0;
  roll(w, now_ms, period);
  double frac = (double)(now_ms % period) / (double)period;
  return w->cur + w->prev * (1.0 - frac);
}

static int idle(const entry_t *e) {
  return !e->conns && !e->fail.cur && !e->fail.prev && !e->reg.cur && !e->reg.prev;
}

int guard_conn_open(guard_t *g, const uint8_t ip[16]) {
  char key[34];
  ip_key(ip, key);
  int rc = 0;
  pthread_mutex_lock(&g->mu);
  entry_t *e = get(g, key, 1);
  if (g->k.max_conns_per_ip && e->conns >= g->k.max_conns_per_ip) rc = XMPP_ELIMIT;
  else e->conns++;
  pthread_mutex_unlock(&g->mu);
  return rc;
}

void guard_conn_close(guard_t *g, const uint8_t ip[16]) {
  char key[34];
  ip_key(ip, key);
  pthread_mutex_lock(&g->mu);
  entry_t *e = get(g, key, 0);
  if (e) {
    if (e->conns > 0) e->conns--;
    /* failures keep the entry alive until guard_prune forgets them */
    if (idle(e)) xfree(strmap_del(g->map, key));
  }
  pthread_mutex_unlock(&g->mu);
}

static char *acct_key(const char *account) {
  size_t n = strlen(account) + 3;
  char *k = xmalloc(n);
  snprintf(k, n, "a:%s", account);
  return k;
}

int guard_auth_allowed(guard_t *g, const uint8_t ip[16], const char *account, uint64_t now_ms) {
  char key[34];
  ip_key(ip, key);
  char *ak = account ? acct_key(account) : NULL;
  pthread_mutex_lock(&g->mu);
  int rc = 0;
  entry_t *e = get(g, key, 0), *a = ak ? get(g, ak, 0) : NULL;
  if (e && recent(&e->fail, now_ms, MINUTE_MS) >= g->k.auth_fail_ip) rc = XMPP_ELIMIT;
  if (a && recent(&a->fail, now_ms, MINUTE_MS) >= g->k.auth_fail_account) rc = XMPP_ELIMIT;
  pthread_mutex_unlock(&g->mu);
  xfree(ak);
  return rc;
}

void guard_auth_failed(guard_t *g, const uint8_t ip[16], const char *account, uint64_t now_ms) {
  char key[34];
  ip_key(ip, key);
  char *ak = account ? acct_key(account) : NULL;
  pthread_mutex_lock(&g->mu);
  entry_t *e = get(g, key, 1);
  roll(&e->fail, now_ms, MINUTE_MS);
  e->fail.cur++;
  if (ak) {
    e = get(g, ak, 1);
    roll(&e->fail, now_ms, MINUTE_MS);
    e->fail.cur++;
  }
  pthread_mutex_unlock(&g->mu);
  xfree(ak);
}

int guard_register_take(guard_t *g, const uint8_t ip[16], uint64_t now_ms) {
  char key[34];
  ip_key(ip, key);
  int rc = 0;
  pthread_mutex_lock(&g->mu);
  entry_t *e = get(g, key, 1);
  if (recent(&e->reg, now_ms, HOUR_MS) >= g->k.reg_per_ip_hour) rc = XMPP_ELIMIT;
  else e->reg.cur++;
  if (idle(e)) xfree(strmap_del(g->map, key)); /* refused with nothing counted */
  pthread_mutex_unlock(&g->mu);
  return rc;
}

typedef struct prune_ctx {
  uint64_t now;
  char **dead;
  size_t n, cap;
} prune_ctx_t;

static void collect(const char *key, void *v, void *ud) {
  prune_ctx_t *p = ud;
  entry_t *e = v;
  roll(&e->fail, p->now, MINUTE_MS);
  roll(&e->reg, p->now, HOUR_MS);
  if (!idle(e)) return;
  if (p->n == p->cap) {
    p->cap = p->cap ? p->cap * 2 : 64;
    p->dead = xrealloc(p->dead, p->cap * sizeof *p->dead);
  }
  p->dead[p->n++] = xstrdup(key);
}

void guard_prune(guard_t *g, uint64_t now_ms) {
  prune_ctx_t p = {now_ms, NULL, 0, 0};
  pthread_mutex_lock(&g->mu);
  strmap_each(g->map, collect, &p);
  for (size_t i = 0; i < p.n; i++) {
    xfree(strmap_del(g->map, p.dead[i]));
    xfree(p.dead[i]);
  }
  pthread_mutex_unlock(&g->mu);
  xfree(p.dead);
}

unsigned guard_size(guard_t *g) {
  pthread_mutex_lock(&g->mu);
  unsigned n = (unsigned)strmap_count(g->map);
  pthread_mutex_unlock(&g->mu);
  return n;
}

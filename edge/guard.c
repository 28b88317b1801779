/* Per-address and per-account admission limits (see guard.h).
 *
 * Failure counts use two fixed one-minute buckets, the current and the previous, and
 * estimate the sliding minute as cur + prev * (unelapsed part of the current minute):
 * constant memory per key, no timers, and the estimate never undercounts by more than
 * the rounding of one bucket. */
#include "edge/guard.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/strmap.h"

typedef struct entry {
  int conns;
  uint64_t minute; /* index of the current bucket (now_ms / 60000) */
  uint32_t cur, prev;
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

static void roll(entry_t *e, uint64_t now_ms) {
  uint64_t m = now_ms / 60000;
  if (m == e->minute) return;
  e->prev = m == e->minute + 1 ? e->cur : 0;
  e->cur = 0;
  e->minute = m;
}

static double recent(entry_t *e, uint64_t now_ms) {
  if (!e) return 0;
  roll(e, now_ms);
  double frac = (double)(now_ms % 60000) / 60000.0;
  return e->cur + e->prev * (1.0 - frac);
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
    if (!e->conns && !e->cur && !e->prev) xfree(strmap_del(g->map, key));
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
  if (recent(get(g, key, 0), now_ms) >= g->k.auth_fail_ip) rc = XMPP_ELIMIT;
  if (ak && recent(get(g, ak, 0), now_ms) >= g->k.auth_fail_account) rc = XMPP_ELIMIT;
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
  roll(e, now_ms);
  e->cur++;
  if (ak) {
    e = get(g, ak, 1);
    roll(e, now_ms);
    e->cur++;
  }
  pthread_mutex_unlock(&g->mu);
  xfree(ak);
}

typedef struct prune_ctx {
  uint64_t now;
  char **dead;
  size_t n, cap;
} prune_ctx_t;

static void collect(const char *key, void *v, void *ud) {
  prune_ctx_t *p = ud;
  entry_t *e = v;
  roll(e, p->now);
  if (e->conns || e->cur || e->prev) return;
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

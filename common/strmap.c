#include "common/strmap.h"

#include <string.h>

#include "common/alloc.h"
#include "common/hash.h"

typedef struct entry {
  struct entry *next;
  uint64_t h;
  void *value;
  char key[];
} entry_t;

struct strmap {
  entry_t **b;
  size_t nb;
  size_t n;
};

strmap_t *strmap_new(void) {
  strmap_t *m = xcalloc(1, sizeof *m);
  m->nb = 16;
  m->b = xcalloc(m->nb, sizeof *m->b);
  return m;
}

void strmap_free(strmap_t *m, void (*free_cb)(void *)) {
  if (!m) return;
  for (size_t i = 0; i < m->nb; i++) {
    entry_t *e = m->b[i];
    while (e) {
      entry_t *nx = e->next;
      if (free_cb) free_cb(e->value);
      xfree(e);
      e = nx;
    }
  }
  xfree(m->b);
  xfree(m);
}

static entry_t **slot(const strmap_t *m, const char *key, uint64_t h) {
  entry_t **pp = &m->b[h & (m->nb - 1)];
  while (*pp && !((*pp)->h == h && strcmp((*pp)->key, key) == 0)) pp = &(*pp)->next;
  return pp;
}

void *strmap_get(const strmap_t *m, const char *key) {
  uint64_t h = hash_keyed(key, strlen(key));
  entry_t *e = *slot(m, key, h);
  return e ? e->value : NULL;
}

static void grow(strmap_t *m) {
  size_t nb = m->nb * 2;
  entry_t **b = xcalloc(nb, sizeof *b);
  for (size_t i = 0; i < m->nb; i++) {
    entry_t *e = m->b[i];
    while (e) {
      entry_t *nx = e->next;
      e->next = b[e->h & (nb - 1)];
      b[e->h & (nb - 1)] = e;
      e = nx;
    }
  }
  xfree(m->b);
  m->b = b;
  m->nb = nb;
}

void *strmap_put(strmap_t *m, const char *key, void *value) {
  size_t kl = strlen(key);
  uint64_t h = hash_keyed(key, kl);
  entry_t **pp = slot(m, key, h);
  if (*pp) {
    void *old = (*pp)->value;
    (*pp)->value = value;
    return old;
  }
  entry_t *e = xmalloc(sizeof *e + kl + 1);
  e->next = NULL;
  e->h = h;
  e->value = value;
  memcpy(e->key, key, kl + 1);
  *pp = e;
  if (++m->n > m->nb) grow(m);
  return NULL;
}

void *strmap_del(strmap_t *m, const char *key) {
  uint64_t h = hash_keyed(key, strlen(key));
  entry_t **pp = slot(m, key, h);
  entry_t *e = *pp;
  if (!e) return NULL;
  *pp = e->next;
  void *v = e->value;
  xfree(e);
  m->n--;
  return v;
}

size_t strmap_count(const strmap_t *m) { return m->n; }

void strmap_each(const strmap_t *m, void (*cb)(const char *, void *, void *), void *ud) {
  for (size_t i = 0; i < m->nb; i++)
    for (entry_t *e = m->b[i]; e; e = e->next) cb(e->key, e->value, ud);
}

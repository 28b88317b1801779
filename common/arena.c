#include "common/arena.h"

#include <string.h>

#include "common/alloc.h"

#define ARENA_CHUNK 4096

struct arena_chunk {
  arena_chunk_t *next;
  size_t size, used;
  _Alignas(16) unsigned char data[];
};

void arena_init(arena_t *a) { a->head = NULL, a->used_total = 0; }

void *arena_alloc(arena_t *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  arena_chunk_t *c = a->head;
  if (!c || c->size - c->used < n) {
    size_t sz = n > ARENA_CHUNK - sizeof *c ? n : ARENA_CHUNK - sizeof *c;
    c = xmalloc(sizeof *c + sz);
    c->size = sz;
    c->used = 0;
    c->next = a->head;
    a->head = c;
  }
  void *p = c->data + c->used;
  c->used += n;
  a->used_total += n;
  return p;
}

char *arena_strndup(arena_t *a, const char *s, size_t n) {
  char *p = arena_alloc(a, n + 1);
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

char *arena_strdup(arena_t *a, const char *s) { return arena_strndup(a, s, strlen(s)); }

void arena_reset(arena_t *a) {
  arena_chunk_t *c = a->head;
  if (!c) return;
  /* keep the last (oldest) chunk: it is the standard size */
  while (c->next) {
    arena_chunk_t *nx = c->next;
    xfree(c);
    c = nx;
  }
  c->used = 0;
  a->head = c;
  a->used_total = 0;
}

void arena_free(arena_t *a) {
  arena_chunk_t *c = a->head;
  while (c) {
    arena_chunk_t *nx = c->next;
    xfree(c);
    c = nx;
  }
  arena_init(a);
}

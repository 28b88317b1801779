/* Bounded set of recent ids: dedup.h. */
#include "common/dedup.h"

#include "common/alloc.h"

struct dedup {
  uint64_t *ring;  /* ids in arrival order, ring[head] the oldest once full */
  size_t cap, n, head;
  uint32_t *index; /* slot -> ring position + 1 (0: empty); nslots a power of two >= 2 cap */
  size_t mask;
};

dedup_t *dedup_new(size_t cap) {
  if (cap < 1) cap = 1;
  dedup_t *d = xcalloc(1, sizeof *d);
  d->cap = cap;
  d->ring = xcalloc(cap, sizeof *d->ring);
  size_t slots = 2;
  while (slots < 2 * cap) slots *= 2;
  d->index = xcalloc(slots, sizeof *d->index);
  d->mask = slots - 1;
  return d;
}

void dedup_free(dedup_t *d) {
  if (!d) return;
  xfree(d->ring);
  xfree(d->index);
  xfree(d);
}

size_t dedup_count(const dedup_t *d) { return d->n; }

static size_t find(const dedup_t *d, uint64_t id) { /* its slot, or the empty slot ending its run */
  size_t i = (size_t)id & d->mask;
  while (d->index[i] && d->ring[d->index[i] - 1] != id) i = (i + 1) & d->mask;
  return i;
}

static void forget(dedup_t *d, uint64_t id) {
  size_t i = find(d, id);
  if (!d->index[i]) return;
  d->index[i] = 0;
  /* backward shift: entries of the run after i that may move into the hole do */
  for (size_t j = (i + 1) & d->mask; d->index[j]; j = (j + 1) & d->mask) {
    size_t home = (size_t)d->ring[d->index[j] - 1] & d->mask;
    /* j's entry may fill hole i unless its home lies cyclically in (i, j] */
    if (((j - home) & d->mask) >= ((j - i) & d->mask)) {
      d->index[i] = d->index[j];
      d->index[j] = 0;
      i = j;
    }
  }
}

int dedup_check(dedup_t *d, uint64_t id) {
  if (!id) return 0;
  size_t i = find(d, id);
  if (d->index[i]) return 1;
  size_t pos;
  if (d->n == d->cap) { /* full: the oldest makes room */
    pos = d->head;
    forget(d, d->ring[pos]);
    d->head = (d->head + 1) % d->cap;
    i = find(d, id); /* the shift may have moved the run */
  } else {
    pos = (d->head + d->n) % d->cap;
    d->n++;
  }
  d->ring[pos] = id;
  d->index[i] = (uint32_t)(pos + 1);
  return 0;
}

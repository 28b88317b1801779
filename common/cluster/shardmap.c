#include "common/cluster/shardmap.h"

#include "common/bus.h"

static uint64_t mix(uint64_t x) { /* splitmix64 finaliser */
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void shardmap_compute(uint32_t nshards, const shardmap_router_t *r, int n, uint32_t *owner) {
  for (uint32_t s = 0; s < nshards; s++) {
    int best = -1;
    uint64_t best_w = 0;
    for (int i = 0; i < n; i++) {
      uint64_t w = mix((uint64_t)r[i].node << 32 | s);
      /* ties (never seen in practice) go to the lower node id, so order does not matter */
      if (best < 0 || w > best_w || (w == best_w && r[i].node < r[best].node)) {
        best = i;
        best_w = w;
      }
    }
    owner[s] = best < 0 ? 0 : BUS_OWNER(r[best].node, s % (r[best].workers ? r[best].workers : 1));
  }
}

uint64_t shardmap_hash(uint32_t nshards, const uint32_t *owner) {
  uint64_t h = mix(nshards);
  for (uint32_t s = 0; s < nshards; s++) h = mix(h ^ owner[s]);
  return h ? h : 1;
}

/* The cluster's shard map: deterministic, balanced, and minimal movement on join/leave. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common/bus.h"
#include "common/cluster/shardmap.h"

#define S 4096

static int count_node(const uint32_t *o, uint16_t node) {
  int n = 0;
  for (int s = 0; s < S; s++) n += BUS_OWNER_NODE(o[s]) == node;
  return n;
}

Test(shardmap, no_routers_no_owner) {
  uint32_t o[S];
  shardmap_compute(S, NULL, 0, o);
  for (int s = 0; s < S; s++) cr_assert_eq(o[s], 0);
}

Test(shardmap, same_set_any_order_same_map) {
  shardmap_router_t a[] = {{1, 2}, {2, 4}, {7, 1}}, b[] = {{7, 1}, {1, 2}, {2, 4}};
  static uint32_t oa[S], ob[S];
  shardmap_compute(S, a, 3, oa);
  shardmap_compute(S, b, 3, ob);
  cr_assert(memcmp(oa, ob, sizeof oa) == 0);
  for (int s = 0; s < S; s++) {
    uint16_t n = BUS_OWNER_NODE(oa[s]), w = BUS_OWNER_WORKER(oa[s]);
    cr_assert(n == 1 || n == 2 || n == 7);
    cr_assert_eq(w, s % (n == 1 ? 2 : n == 2 ? 4 : 1));
  }
}

Test(shardmap, balanced) {
  shardmap_router_t r[4] = {{1, 1}, {2, 1}, {3, 1}, {4, 1}};
  static uint32_t o[S];
  shardmap_compute(S, r, 4, o);
  for (int i = 0; i < 4; i++) {
    int n = count_node(o, r[i].node);
    cr_assert(n > S / 4 * 8 / 10 && n < S / 4 * 12 / 10, "node %d has %d shards", r[i].node, n);
  }
}

Test(shardmap, join_moves_only_to_the_newcomer_and_leave_only_its_own) {
  shardmap_router_t two[] = {{1, 2}, {2, 2}}, three[] = {{1, 2}, {2, 2}, {3, 2}};
  static uint32_t o2[S], o3[S];
  shardmap_compute(S, two, 2, o2);
  shardmap_compute(S, three, 3, o3);
  int moved = 0;
  for (int s = 0; s < S; s++)
    if (o2[s] != o3[s]) {
      cr_assert_eq(BUS_OWNER_NODE(o3[s]), 3, "shard %d moved between old routers", s);
      moved++;
    }
  cr_assert(moved > S / 3 * 8 / 10 && moved < S / 3 * 12 / 10, "%d shards moved", moved);
  /* node 3 leaves again: exactly its shards move back */
  static uint32_t back[S];
  shardmap_compute(S, two, 2, back);
  cr_assert(memcmp(back, o2, sizeof o2) == 0);
}

/* The shard map of a cluster: which router node and worker own each of the S virtual
 * shards, computed the same way by every node from the set of live routers alone.
 *
 * Rendezvous (highest-random-weight) hashing: shard s goes to the live router n with the
 * largest weight mix(s, n). Every node that sees the same live set computes the same
 * map with no coordination; a router joining takes about 1/(R+1) of the shards, each
 * from whoever had it, and a router leaving moves only its own shards, spread evenly
 * over the survivors. Within a node, shard s goes to worker s mod (its worker count),
 * as in a single process. */
#ifndef XMPP_SHARDMAP_H
#define XMPP_SHARDMAP_H

#include <stdint.h>

typedef struct shardmap_router {
  uint16_t node;
  uint16_t workers;
} shardmap_router_t;

/* owner[0..nshards): BUS_OWNER(node, worker) of each shard; 0 for every shard when
 * n == 0. Order of r does not matter. */
void shardmap_compute(uint32_t nshards, const shardmap_router_t *r, int n, uint32_t *owner);

/* A 64-bit digest of a map (owner[0..nshards)): nodes that computed the same map get the
 * same value (the map handshake, docs/cluster.md "Shard moves without detours"). */
uint64_t shardmap_hash(uint32_t nshards, const uint32_t *owner);

#endif

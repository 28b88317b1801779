/* The bus as the rest of the code sees it: where a frame goes.
 *
 * In one process frames move through bus_queue_t's; the shard of a bare JID is
 * hash_shard(bare) mod S, and shard s is served by worker s mod M. In a cluster
 * (cluster.node_id set) the shard map says which node and worker own each shard, and
 * frames for other nodes go to the bus's remote transport (bus_remote_ops_t), which the
 * cluster installs when it starts (common/cluster/cluster.c: its thread puts them on TCP
 * bus links); the callers below do not change. The bus knows the transport by this
 * interface alone, so the cluster is built on the bus and never the other way round. */
#ifndef XMPP_BUS_H
#define XMPP_BUS_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/bus_queue.h"
#include "common/hash.h"

/* Length of the bare part of a normalised JID (up to the first '/'). */
static inline size_t bus_bare_len(const char *jid, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (jid[i] == '/') return i;
  return len;
}

/* How frames leave this node: one interface, one implementation today (the cluster's),
 * in the spirit of Redis's connection.h. Both calls are made from any thread. */
typedef struct bus_remote_ops {
  /* Takes m (ownership included), a frame for another node, and sends it on: it never
   * comes back to the caller, whatever becomes of it. */
  void (*send)(void *ctx, bus_msg_t *m);
  /* Frames taken by send and not yet handed to a link (a snapshot, for bus_quiesce). */
  uint64_t (*pending)(void *ctx);
} bus_remote_ops_t;

typedef struct bus {
  uint32_t nshards;
  int nworkers;          /* router workers in this process (0 on an edge node) */
  int nedges;            /* edge I/O threads in this process (0 on a router node) */
  bus_queue_t *worker_q; /* [nworkers], each owned by its router worker */
  bus_queue_t *edge_q;   /* [nedges], each owned by its edge I/O thread */
  /* Cluster (common/cluster/cluster.c); all zero in a single process. */
  uint16_t node;         /* this node's id, stamped in every bus_addr_t it hands out */
  const bus_remote_ops_t *remote; /* NULL: no other nodes (bus_set_remote) */
  void *remote_ctx;
  /* [nshards]: shard -> (node << 16 | worker), written by the cluster thread when the
   * shard map changes, read by everyone (relaxed: a frame sent with a stale owner is
   * forwarded by the node that gets it). 0 = no live router yet. */
  _Atomic uint32_t *owner;
  /* queues over their high watermark: links to other nodes (cluster thread) and the
   * in-process queues (bus_queue_bound); while > 0 edge threads stop reading from bound
   * clients (flow control: docs/architecture.md, docs/cluster.md) */
  _Atomic int congested;
  /* bound of each in-process queue (limits.bus_queue_bytes): over queue_high bytes it
   * counts in congested until it is down to queue_low; 0 = unbounded */
  uint64_t queue_high, queue_low;
} bus_t;

#define BUS_OWNER(node, worker) ((uint32_t)(node) << 16 | (uint32_t)(worker))
#define BUS_OWNER_NODE(o) ((uint16_t)((o) >> 16))
#define BUS_OWNER_WORKER(o) ((uint16_t)((o) & 0xffff))

static inline uint32_t bus_shard_of(const bus_t *b, const char *bare, size_t len) {
  return hash_shard(bare, len, b->nshards);
}
static inline int bus_congested(bus_t *b) {
  return atomic_load_explicit(&b->congested, memory_order_relaxed) > 0;
}
/* bus_queue_init, then bus_queue_bound with the bus's watermarks and congested
 * counter; name says whose queue it is in the log. The consumer's thread, at set-up. */
int bus_queue_attach(bus_t *b, bus_queue_t *q, uv_loop_t *loop, bus_queue_cb cb, void *ud, const char *name);
/* Installs (ops and ctx) or removes (NULL, NULL) the remote transport. Before or after
 * the threads that send run (main thread, at start-up and after they stopped). */
void bus_set_remote(bus_t *b, const bus_remote_ops_t *ops, void *ctx);
/* 1 when this node is part of a cluster (a remote transport is installed). */
static inline int bus_clustered(const bus_t *b) { return b->remote != NULL; }
/* Hands a frame for another node to the remote transport. Any thread. */
static inline void bus_remote(bus_t *b, bus_msg_t *m) { b->remote->send(b->remote_ctx, m); }

/* Sends m to the router worker owning shard: in this process when this node owns it,
 * else over the cluster. */
static inline void bus_to_shard(bus_t *b, uint32_t shard, bus_msg_t *m) {
  if (!b->owner) {
    bus_queue_push(&b->worker_q[shard % (uint32_t)b->nworkers], m);
    return;
  }
  uint32_t o = atomic_load_explicit(&b->owner[shard], memory_order_relaxed);
  if (BUS_OWNER_NODE(o) == b->node && b->nworkers)
    bus_queue_push(&b->worker_q[BUS_OWNER_WORKER(o) % (uint32_t)b->nworkers], m);
  else
    bus_remote(b, m);
}
static inline void bus_to_router(bus_t *b, const char *bare, size_t len, bus_msg_t *m) {
  bus_to_shard(b, bus_shard_of(b, bare, len), m);
}
static inline void bus_to_edge(bus_t *b, const bus_addr_t *dst, bus_msg_t *m) {
  if (dst->node == b->node && dst->thread < b->nedges) bus_queue_push(&b->edge_q[dst->thread], m);
  else if (bus_clustered(b) && dst->node != b->node) bus_remote(b, m);
  else bus_msg_free(m);
}
/* Frames for a router: their shard is the sender's for what a client did, the
 * recipient's for what is routed to an account. */
static inline int bus_router_kind(uint8_t k) {
  return k == BUS_C2S || k == BUS_ROUTE || k == BUS_SESSION_OPEN || k == BUS_SESSION_CLOSE || k == BUS_BOUNCE ||
         k == BUS_OFFLINE_ACK || k == BUS_RESUME_ASK || k == BUS_SM_PARK || k == BUS_SM_ACK;
}
static inline uint32_t bus_frame_shard(const bus_t *b, const bus_frame_t *f) {
  int by_from = f->kind == BUS_C2S || f->kind == BUS_SESSION_OPEN || f->kind == BUS_SESSION_CLOSE ||
                f->kind == BUS_OFFLINE_ACK || f->kind == BUS_RESUME_ASK || f->kind == BUS_SM_ACK;
  const char *j = by_from ? f->from : f->to;
  size_t n = by_from ? f->from_len : f->to_len;
  return bus_shard_of(b, j, bus_bare_len(j, n));
}
/* XEP-0198 resumption ids begin with this tag of the session's full JID (8 hex digits,
 * edge/sm.c): a router finds, among the sessions of the account that asks, the one a
 * resumption id from another edge node names (the id itself is only known to the edge
 * holding the session). Stable across processes, as shards are. */
static inline uint32_t bus_resume_tag(const char *full, size_t len) {
  return hash_shard(full, len, UINT32_MAX);
}
static inline int bus_addr_eq(const bus_addr_t *a, const bus_addr_t *b) {
  return a->node == b->node && a->thread == b->thread && a->conn == b->conn;
}
/* A metrics source (common/metrics.h; ud: the bus): every local queue's depth in frames and
 * bytes, the frames its thread handled, whether it is over its bound, and the congestion
 * counter. Reads atomics only (the metrics thread). */
struct metrics_out;
void bus_metrics(struct metrics_out *o, void *ud);
/* Waits until every queue is empty and stays so for a moment, at most timeout_ms.
 * Returns 0 when quiet, XMPP_AGAIN on timeout. Main thread, during shutdown. */
int bus_quiesce(bus_t *b, int timeout_ms);

#endif

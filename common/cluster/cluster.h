/* The cluster thread of a node: everything that crosses node boundaries.
 *
 * - Bus links: one outgoing link (bus_link_connect) to every live peer node this node
 *   sends to, and one listener accepting the peers' links; frames from local threads
 *   for other nodes arrive on a queue (the bus's remote transport, which cluster_start
 *   installs: bus_set_remote) and go to the right link.
 * - Redis (common/credis.c): this node's registration with a heartbeat, and the live set
 *   of nodes, from which the shard map is computed (common/cluster/shardmap.c) and published in
 *   bus->owner; every router also writes it to Redis for operators, under one global
 *   epoch (a compare-and-set: docs/cluster.md "Shard map epoch").
 * - Failures: a peer missing from the live set is dead. An edge: local workers end its
 *   sessions (BUS_NODE_DOWN). A router: its shards move; local edge threads announce
 *   their sessions again to the new owners (BUS_MAP). Frames that cannot be sent
 *   (link down past cluster.max_wait_ms, queue full) are re-routed when their shard
 *   moved, otherwise turned into a stanza error to the sender, or a BOUNCE to offline
 *   storage for a message to a connection that is gone.
 * docs/cluster.md has the whole design. */
#ifndef XMPP_CLUSTER_H
#define XMPP_CLUSTER_H

#include <stdint.h>

#include "common/bus.h"
#include "common/config.h"

typedef struct cluster cluster_t;

/* A cluster node, before anything else of the process serves: opens the bus listener
 * and claims the node id's lease in Redis (BLOCKING: waits for Redis, and for the lease
 * of a dead previous holder to run out; docs/cluster.md "Node ids are leases"). bus:
 * its nworkers and nshards (registered). NULL (logged) on failure, with *held = 1 when a
 * live node holds the id (the process should exit with status 2). Main thread. */
cluster_t *cluster_new(const xmpp_config_t *cfg, const bus_t *bus, int role, int *held);
/* A node from cluster_new that will not start after all (another part of the process
 * could not): gives the node id back and frees it. NULL-safe. Main thread. */
void cluster_discard(cluster_t *c);
/* Sets up the bus for the node (bus->node, bus->owner, its remote transport) and starts Redis
 * (registry heartbeats: the lease's refresh) and the thread. Call after the local queues
 * exist (router_create, edge_create) and before they run. -1 (logged) on failure. */
int cluster_start(cluster_t *c, bus_t *bus);
/* A router node about to stop: tells every node (BUS_LEAVING), leaves the registry and
 * its own shard map now, so its sessions are handed over and the others stop sending to
 * it; keep the node running, forwarding, until cluster_leave_done (xmppd bounds the wait
 * at node_ttl_ms + 2 x heartbeat_ms). docs/cluster.md "A router's graceful stop". Any
 * thread. */
void cluster_leave(cluster_t *c);
/* 1 once every node linked to this one answered its BUS_LEAVING (BUS_LEFT): none sends it
 * anything more, and what they had sent is passed on. Any thread. */
int cluster_leave_done(const cluster_t *c);
/* 1 when this node refused to join (its server.shards differs from the live nodes'), or
 * lost its node id's lease to another process: it has asked the process to stop, which
 * should then exit with status 2. */
int cluster_refused(const cluster_t *c);
/* Client-visible effects of cluster events (faults, shard moves), each kind counted and
 * logged at WARN at most once a second with its count (docs/cluster.md, "Logs"): a
 * message for a connection that cannot be reached sent back to its shard (another
 * resource, or offline storage), a stanza answered <recipient-unavailable/> because no
 * router could be reached, a frame dropped (not answerable), a stanza from a session its
 * router does not know answered <recipient-unavailable/>, a stanza held during a shard
 * move handled without its session because the hold ended before every edge confirmed
 * the map (timeout, or the bytes bound: a message then goes to offline storage). Any thread; detail: a printf
 * format for the event's own line. */
typedef enum {
  CLUSTER_EV_BOUNCED,
  CLUSTER_EV_UNREACHABLE,
  CLUSTER_EV_DROPPED,
  CLUSTER_EV_UNKNOWN_SESSION,
  CLUSTER_EV_HOLD_ENDED,
  CLUSTER_EV_COUNT
} cluster_event_t;
void cluster_event(cluster_event_t ev, const char *detail_fmt, ...) __attribute__((format(printf, 2, 3)));
/* n events of one kind at once (e.g. what a hold that ran out handled): one line at most */
void cluster_event_n(cluster_event_t ev, unsigned long long n, const char *detail_fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* How many of that kind since start (tests, benches). */
unsigned long long cluster_event_total(cluster_event_t ev);
/* Removes this node from the registry, flushes links (final ACKs), ends the thread. */
void cluster_stop(cluster_t *c);
void cluster_free(cluster_t *c);

#endif

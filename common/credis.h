/* The cluster's view of Redis: node registry (heartbeats with a TTL), session directory,
 * shard map, through hiredis' ASYNCHRONOUS API on a libuv loop (never blocks the loop).
 *
 * Threads. One credis_t belongs to one loop thread: every call, and every callback, happens
 * on that thread. Several threads each own their own credis_t (router workers, the cluster
 * thread); nothing is shared, nothing is locked.
 *
 * Redis. One server, a Redis Cluster (cluster:SEEDS: one connection per primary, the slot
 * layer of common/redis_slots.h follows MOVED / ASK / TRYAGAIN / CLUSTERDOWN and the
 * failover of a primary) or the primary Sentinel names (sentinel:SENTINELS/NAME; the
 * sentinels are asked before each connection, on the loop like everything else: a
 * sentinel that does not answer within 1 s passes the turn to the next, and a round
 * starts from the one that answered last). A connection with commands in flight and no
 * reply for 3 s is dropped as lost (a hung primary keeps its TCP connection open and
 * never errs): its commands are sent again by the slot layer, the map refreshed.
 *
 * Connection. credis_new connects at once and reconnects by itself forever, with a capped
 * exponential back-off (100 ms .. 2 s). On a Redis Cluster, "up" means every primary
 * serving a slot is connected: the loss of any one is an outage (on_state(0), then
 * on_state(1) once its replica serves). While Redis is unreachable, writes are dropped and
 * counted (credis_stats_t.dropped): the caller re-syncs what matters on on_state(1). Reads
 * issued while unreachable fail (ok = 0) on a later loop turn, never inside the call.
 * Everything issued during one loop turn goes out in one write(2) (hiredis buffers, the
 * write happens on the socket's write-ready event; credis_stats_t.writes counts them).
 *
 * Callbacks never run re-entrantly (inside a credis_* call) and never after credis_close.
 * A callback may call any credis_* function, credis_close included.
 *
 * Key layout: see the comment at the top of credis.c and docs/cluster.md "Redis key layout".
 * Hostnames in the address are resolved synchronously by hiredis: use numeric addresses.
 * The process must ignore SIGPIPE (hiredis 0.14 writes with write(2)); xmppd does. */
#ifndef XMPP_CREDIS_H
#define XMPP_CREDIS_H

#include <stdint.h>
#include <uv.h>

typedef struct credis credis_t;

typedef struct credis_node { /* one node of the cluster, as registered */
  uint16_t id;               /* 1..65535 */
  uint8_t role;              /* 1 edge, 2 router, 3 all (edge+router) */
  uint16_t workers;          /* router workers (0 for an edge) */
  uint64_t incarnation;      /* random per process start */
  char host[64];             /* bus address other nodes dial (numeric IP, no spaces) */
  int bus_port;
  uint32_t shards;           /* its server.shards: every node must have the same (0: not
                                registered, a node of an older version) */
} credis_node_t;

typedef struct credis_cbs {
  /* Connection to Redis came up (1: connected, authenticated, db selected) or went down (0).
   * Down is reported only after an up. Logged by credis too ("redis HOST:PORT unreachable:
   * <reason>; retrying", "redis HOST:PORT back"). May be NULL. */
  void (*on_state)(void *ud, int up);
  /* After each successful registry poll: the live nodes (keys not expired), sorted by id.
   * The array lives until the callback returns. Never called while Redis is unreachable
   * (the caller keeps its last view). May be NULL. */
  void (*on_nodes)(void *ud, const credis_node_t *nodes, int n);
  /* The node's lease on its id is lost: a heartbeat's compare-and-set found it held by
   * another incarnation (holder: what that node registered; host "?" when unreadable).
   * Heartbeats have stopped; the node must stop serving rather than fight for the id
   * (docs/cluster.md, "Node ids are leases"). May be NULL. */
  void (*on_lost)(void *ud, const credis_node_t *holder);
} credis_cbs_t;

/* addr: the syntax of storage.redis (common/redis_addr.h: HOST:PORT | [IPV6]:PORT | HOST |
 * unix:/PATH | cluster:HOST:PORT,... | sentinel:HOST:PORT,.../NAME, then db=N password=SECRET). cluster: the cluster name, used in key names
 * (non-empty, at most 64 characters, no '{', '}' or white space). cbs is copied; ud is passed
 * to the callbacks. NULL (logged) on a bad address or cluster name. */
credis_t *credis_new(uv_loop_t *loop, const char *addr, const char *cluster, const credis_cbs_t *cbs,
                     void *ud);

/* Node ids are leases: the node key <C>:{nodes}:n:<id> is held by one incarnation at a
 * time (its random incarnation is the token), taken with SET NX PX at start, refreshed by
 * a compare-and-set at every heartbeat, released on a clean stop.
 *
 * Claims self->id before the node serves anything: BLOCKING (main thread, at start).
 * Waits while Redis is unreachable (logged once, retried with back-off) and while the id
 * is held by an incarnation that does not refresh it (a dead node: its lease runs out
 * within its TTL). Returns 0 when the lease is ours (the key holds self, TTL ttl_ms);
 * XMPP_EEXIST when a live node holds it (its lease was refreshed while we watched, or it
 * has no expiry): *holder is what that node registered; XMPP_EINVAL / XMPP_EIO with *err
 * (caller frees) for a bad address or an error reply. */
int credis_claim(const char *addr, const char *cluster, const credis_node_t *self, uint32_t ttl_ms,
                 credis_node_t *holder, char **err);
/* Gives a claimed id back (compare-and-delete, blocking, best effort: one attempt) when
 * the process will not serve after all (e.g. its client port is taken). */
void credis_unclaim(const char *addr, const char *cluster, const credis_node_t *self);

/* Registry: from now on, every heartbeat_ms, refresh the node's lease (the key, TTL
 * ttl_ms, only while it holds this node's incarnation: else on_lost), SADD its id to the
 * node set, and poll the live set (then on_nodes). The first heartbeat and poll go out at
 * once when connected, else as soon as the connection is up. Calling it again replaces
 * the node and the timings. */
void credis_register(credis_t *r, const credis_node_t *self, uint32_t heartbeat_ms, uint32_t ttl_ms);
/* Stops the heartbeats and removes this node's key and id now (clean shutdown), only
 * while the lease is still this incarnation's (a compare-and-delete), best effort:
 * nothing is sent while unreachable (the key then expires by its TTL). */
void credis_deregister(credis_t *r);
/* A registry poll now (then on_nodes), besides the heartbeat's: when the caller's view
 * may be stale (a bus link from an incarnation it does not know yet). Nothing when one
 * is in flight, Redis is unreachable or the node is not registered. */
void credis_poll(credis_t *r);

/* Session directory, written at bind / presence change / unbind. Fire-and-forget. */
typedef struct credis_session {
  uint16_t node, thread;
  uint64_t conn;
  int priority;
  int available;
} credis_session_t;
void credis_dir_set(credis_t *r, const char *bare, const char *resource, const credis_session_t *s);
void credis_dir_del(credis_t *r, const char *bare, const char *resource);
/* Reads the session directory of one bare JID (tools, tests). cb gets the resources and
 * their sessions (arrays valid until cb returns; n = 0 when none), or ok = 0 when Redis
 * could not answer. Always called exactly once, from the loop (never inside this call),
 * unless credis_close comes first. */
typedef void (*credis_dir_cb)(void *ud, int ok, const char **resources, const credis_session_t *s,
                              int n);
void credis_dir_get(credis_t *r, const char *bare, credis_dir_cb cb, void *ud);

/* Shard map under one global, monotonic epoch (docs/cluster.md, "Shard map epoch"): owner
 * per shard (node id << 16 | worker). base: the epoch this writer last saw stored (0:
 * none yet). A compare-and-set in Redis: the map is stored at max(stored, base) + 1 unless
 * the same map is stored already, or another map is stored at an epoch newer than base
 * (refused: the writer has not seen it, and reads the registry again before it writes).
 * cb (may be NULL) gets result CREDIS_MAP_STORED, _SAME or _REFUSED with the epoch Redis
 * holds now, or CREDIS_MAP_FAILED (Redis unreachable or an error; epoch 0); same calling
 * rules as credis_dir_get. */
enum { CREDIS_MAP_FAILED = -2, CREDIS_MAP_REFUSED = -1, CREDIS_MAP_SAME = 0, CREDIS_MAP_STORED = 1 };
typedef void (*credis_publish_cb)(void *ud, int result, uint64_t epoch);
void credis_shardmap_publish(credis_t *r, uint64_t base, const uint32_t *owner, uint32_t nshards,
                             credis_publish_cb cb, void *ud);
/* Reads the shard map (tools, tests): ok = 1 with n = 0 when none is stored; ok = 0 on
 * failure. Same calling rules as credis_dir_get. */
typedef void (*credis_shardmap_cb)(void *ud, int ok, uint64_t epoch, const uint32_t *owner,
                                   uint32_t n);
void credis_shardmap_get(credis_t *r, credis_shardmap_cb cb, void *ud);

/* Reads the live nodes once, as a registry poll does, without registering (tools):
 * sorted by id; ok = 0 when Redis could not answer. Same calling rules as
 * credis_dir_get. */
typedef void (*credis_nodes_cb)(void *ud, int ok, const credis_node_t *nodes, int n);
void credis_nodes_get(credis_t *r, credis_nodes_cb cb, void *ud);

/* Counters for benchmarks. commands: sent to hiredis (handshake, heartbeats and polls
 * included); replies: replies received (errors included); errors: error replies plus
 * commands whose connection died before the reply; dropped: commands not sent because
 * Redis was unreachable; reconnects: times the connection came back after an outage;
 * writes: write(2) calls that sent buffered commands (one per loop turn with output,
 * unless the socket buffer filled). */
typedef struct credis_stats {
  uint64_t commands, replies, errors, dropped, reconnects, writes;
} credis_stats_t;
void credis_get_stats(const credis_t *r, credis_stats_t *st);
int credis_is_up(const credis_t *r);

/* Closes. No callback runs afterwards. When connected, what is already buffered (a
 * credis_deregister, directory writes) still goes out: an async disconnect that waits for
 * their replies, at most 1 s; else the connection is dropped at once. The memory is freed
 * once that is over and libuv has closed the handles, so the loop must run on (uv_run until
 * it has nothing left). NULL-safe. Callable from a callback. */
void credis_close(credis_t *r);

#endif

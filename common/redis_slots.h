/* Where a Redis key lives, and what to do with a reply that says it lives elsewhere: the
 * slot layer of xmppd's Redis clients (the store, common/store/store_redis.c, and the
 * cluster client, common/credis.c), kept in this one place.
 *
 * hiredis (0.14 on Debian 12) knows nothing of Redis Cluster: a client must hash each key
 * to its slot, know which node serves the slot, and follow the cluster's redirections.
 * This module is that knowledge WITHOUT any I/O (the clients do the I/O, synchronous or
 * asynchronous):
 *  - slots: CRC16 (XMODEM) of the key's hash tag modulo 16384 (Redis Cluster
 *    specification, "Keys distribution model" and "Hash tags");
 *  - the slot map: which node (host, port) serves each slot, built from a CLUSTER SLOTS
 *    reply and corrected one slot at a time by MOVED;
 *  - the retry policy: what a reply or a connection failure asks for (MOVED: update the
 *    map and go to the named node; ASK: ASKING then the named node once, no map update;
 *    TRYAGAIN / CLUSTERDOWN / a lost connection: a bounded back-off, then give up;
 *    READONLY: the node is no longer a primary (Sentinel failover); NOSCRIPT: load the
 *    scripts on that node and send again once);
 *  - Sentinel: the reply of SENTINEL get-master-addr-by-name;
 *  - scripts: their SHA1, computed here rather than asked of each node, so the same
 *    EVALSHA is valid on every node that has loaded the text.
 *
 * Pure functions on the caller's data: any thread, nothing shared. */
#ifndef XMPP_REDIS_SLOTS_H
#define XMPP_REDIS_SLOTS_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#define RSLOTS_COUNT 16384
#define RSLOTS_HOST_MAX 256
#define RSLOTS_MAX_NODES 1024     /* nodes one map may name (a CLUSTER SLOTS reply naming more is refused) */
#define RSLOTS_MAX_REDIRECTS 5    /* MOVED / ASK followed per command */
#define RSLOTS_MAX_WAITS 12       /* TRYAGAIN / CLUSTERDOWN / lost connections waited out per command */
#define RSLOTS_WAIT_FIRST_MS 50   /* back-off: 50 ms doubling up to 500 ms: about 4.8 s in all, */
#define RSLOTS_WAIT_MAX_MS 500    /* long enough for a replica's promotion (cluster-node-timeout 1 s) */

/* CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0. */
uint16_t rslots_crc16(const char *buf, size_t len);
/* The slot of a key: CRC16 of its hash tag (the part between the first '{' and the first
 * '}' after it, when that part is not empty), else of the whole key, modulo 16384. */
int rslots_key_slot(const char *key, size_t len);
/* The index in argv of the command's first key (argv[0] is the command's name): argv[3]
 * for EVAL / EVALSHA with at least one key, none (-1) for commands without keys (PING,
 * SCRIPT, CLUSTER, ASKING, AUTH, SELECT, EVAL with 0 keys...), else argv[1]. */
int rslots_cmd_key(int argc, const char *const *argv, const size_t *lens);

/* ---- the slot map ------------------------------------------------------------------- */

typedef struct rslots_node {
  char host[RSLOTS_HOST_MAX];
  int port;
} rslots_node_t;

typedef struct rslots_map {
  rslots_node_t *nodes;            /* the primaries named so far (grows; indexes are stable) */
  int nnodes, cap;
  int16_t owner[RSLOTS_COUNT];     /* node index serving the slot, -1 unknown */
} rslots_map_t;

/* An empty map (every slot unknown). */
void rslots_map_init(rslots_map_t *m);
void rslots_map_free(rslots_map_t *m);
/* The index of node host:port, added when new; -1 when the map holds RSLOTS_MAX_NODES. */
int rslots_map_node(rslots_map_t *m, const char *host, int port);
/* The node index serving slot, or -1 when unknown. */
static inline int rslots_map_owner(const rslots_map_t *m, int slot) {
  return slot >= 0 && slot < RSLOTS_COUNT ? m->owner[slot] : -1;
}
/* Rebuilds the owners from a CLUSTER SLOTS reply (Redis 3+: [[start, end, [host, port,
 * id...], replicas...]...]); asked_host is the node that answered, for entries whose host
 * is empty ("the node you asked", Redis 7). Node indexes already known are kept. 0, or -1
 * with *err (caller frees) on a reply that is not one (the map is then unchanged). Slots
 * the reply does not cover become unknown. */
int rslots_map_load(rslots_map_t *m, const redisReply *rep, const char *asked_host, char **err);
/* How many slots have an owner. */
int rslots_map_covered(const rslots_map_t *m);

/* ---- replies and the retry policy --------------------------------------------------- */

typedef enum {
  RSLOTS_DONE,     /* the reply is the command's (a value, or an error to report) */
  RSLOTS_MOVED,    /* the slot has moved for good: set the map (to->slot -> to), send there */
  RSLOTS_ASK,      /* the slot is migrating: send ASKING then the command to `to`, once; no map update */
  RSLOTS_WAIT,     /* TRYAGAIN / CLUSTERDOWN / connection lost: wait *wait_ms, refresh, send again */
  RSLOTS_PRIMARY,  /* READONLY: the node was demoted: find the primary again, send again */
  RSLOTS_NOSCRIPT, /* the node has not got the script: load the scripts there, send again */
  RSLOTS_GIVE_UP,  /* retries exhausted: report the reply (or the connection failure) */
} rslots_action_t;

typedef struct rslots_redirect {
  int slot;
  char host[RSLOTS_HOST_MAX];
  int port;
} rslots_redirect_t;

/* One command's retry budget: zero it before the first attempt. */
typedef struct rslots_try {
  int redirects, waits, primaries, noscripts;
} rslots_try_t;

/* Parses "MOVED <slot> <host>:<port>" / "ASK ..." (an IPv6 host is "[a::b]:port" or bare
 * "a::b:port": the port follows the last ':'). 0, or -1 when the text is not one. */
int rslots_parse_redirect(const char *s, size_t len, rslots_redirect_t *to);
/* What to do with rep (NULL: the connection failed before its reply, or at connect). For
 * RSLOTS_MOVED / RSLOTS_ASK *to is filled; for RSLOTS_WAIT *wait_ms. Counts the attempt in
 * *t: past the budget the answer is RSLOTS_GIVE_UP. */
rslots_action_t rslots_next(rslots_try_t *t, const redisReply *rep, rslots_redirect_t *to,
                            unsigned *wait_ms);

/* ---- Sentinel ----------------------------------------------------------------------- */

/* The reply to SENTINEL get-master-addr-by-name NAME ([host, port]) into host/port: 0, or
 * -1 (nil: the sentinel does not know the name; or not such a reply). */
int rslots_sentinel_addr(const redisReply *rep, char host[RSLOTS_HOST_MAX], int *port);

/* ---- scripts ------------------------------------------------------------------------ */

/* The SHA1 of a script's text, as Redis names it (40 hex digits and a NUL). */
void rslots_script_sha(const char *text, char out[41]);

#endif

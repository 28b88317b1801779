/* credis: the cluster's view of Redis through hiredis' asynchronous API on a libuv loop
 * (credis.h). One credis_t per loop thread; no locks.
 *
 * Key layout. Every key carries a Redis Cluster hash tag, so one Redis or a Redis Cluster
 * holds it unchanged (docs/cluster.md, "Redis key layout"). <C> is the cluster name.
 *   <C>:{nodes}:n:<id>    string  "role workers incarnation host port shards", SET PX ttl at every
 *                                 heartbeat: the key lives while the node does.
 *   <C>:{nodes}:all       set     node ids ever registered (SADD at every heartbeat). The poll
 *                                 is one EVALSHA of POLL_LUA: GET of each
 *                                 member's key, SREM of members whose key has expired, the
 *                                 live "id role workers incarnation host port shards" returned. The
 *                                 script builds the node keys' names itself; they share the
 *                                 {nodes} tag, hence the slot of KEYS[1].
 *   <C>:{nodes}:shardmap  string  "EPOCH NSHARDS\n" then NSHARDS big-endian uint32 owners
 *                                 (node id << 16 | worker). Written by SC_SHARDMAP, a
 *                                 compare-and-set on one global epoch: a writer that has
 *                                 not seen the stored epoch is refused.
 *   <C>:s:{<bare JID>}    hash    resource -> "node thread conn priority available".
 *                                 Single-key commands only (HSET/HDEL/HGETALL), so a '{' or
 *                                 '}' inside a JID (legal in a localpart) changes nothing.
 * So the registry and the shard map share one slot (the {nodes} tag: the scripts that
 * use several of them are legal on a Redis Cluster), and the session directory spreads
 * over every slot by bare JID.
 *
 * Addresses (common/redis_addr.h): one server, a Redis Cluster (cluster:SEEDS), or the
 * primary that Sentinel names (sentinel:SENTINELS/NAME).
 *
 * Connections (conn_t). One server or Sentinel: one connection (node 0). A Redis
 * Cluster: one connection per node the slot map names (seeds first), opened when needed;
 * the map comes from CLUSTER SLOTS on the first connection up, and again whenever it may
 * be stale (a MOVED, a lost connection, TRYAGAIN/CLUSTERDOWN). States of a connection: no
 * context (waiting for the next retry tick), connecting (context, not up), up (connected;
 * AUTH, SELECT, ROLE, the scripts loaded (common/redis_scripts.h, the loader shared with
 * the store), PING answered). ROLE: behind Sentinel the node must call itself a primary
 * (else it is dropped and the sentinels asked again); everywhere it tells how many
 * replicas follow the node (for the shard map's WAIT).
 *
 * Up (on_state). One server / Sentinel: the connection is up. Cluster: the map is known
 * and every primary serving a slot has its connection up. Commands are sent only when up,
 * else dropped and counted (reads fail on the next loop turn): the callers re-sync what
 * matters on on_state(1), which also follows a failover (writes a primary acknowledged
 * but did not pass to its replica are written again). While down, a retry tick (back-off
 * 100 ms doubling to 2 s, reset when up) reconnects, refreshes the map or asks the
 * sentinels again, and times out connects and handshakes. A connection that stops
 * answering (commands in flight, no reply for REPLY_TIMEOUT_MS: a primary stopped or
 * starved of CPU keeps its TCP connection open and never errs) is dropped as lost by the
 * watch timer, which also times out a sentinel's query. One log line per outage
 * ("unreachable: reason; retrying") and one when it ends ("back").
 *
 * The slot layer (common/redis_slots.h, shared with the store). Each command (call_t)
 * goes to the node serving the slot of its first key and keeps its arguments until the
 * answer, so it can be sent again: MOVED (map corrected, sent to the named node), ASK
 * (ASKING then the command on the named node, once), TRYAGAIN / CLUSTERDOWN / a lost
 * connection on a Cluster or with Sentinel (sent again after the back-off, map refreshed),
 * READONLY (the node was demoted: dropped, sentinels asked, sent again), NOSCRIPT (the
 * scripts loaded on that connection, sent again), each within the layer's bounds. Every
 * command credis sends may be sent twice: HSET/HDEL/SADD, the lease refresh (sets the same
 * value), the release, the map's compare-and-set (meets its own map: SAME).
 *
 * hiredis 0.14.1 notes.
 *  - The libuv adapter's poll callback ignores a non-zero status, and libuv reports POLLERR
 *    (a refused connect, a reset) as UV_EBADF with the poll stopped: the error would never
 *    reach hiredis. So after redisLibuvAttach the four event hooks are replaced by ours,
 *    identical but for the poll callback, which on an error lets hiredis read/write what it
 *    was waiting for and so see the socket error (as hiredis 1.x does). The same callback
 *    counts writes.
 *  - A context is freed by hiredis after a failed connect (onConnect(ERR)) and after
 *    onDisconnect returns; redisAsyncFree may be called from a reply callback (deferred by
 *    hiredis) but not from onConnect/onDisconnect. We free contexts only from timer
 *    callbacks or from credis_close, and user callbacks run either from reply callbacks
 *    (hiredis defers a free or disconnect asked there) or after conn->ac was cleared.
 *  - Pending reply callbacks get a NULL reply when the connection dies or is freed.
 * Our callbacks look at r->closing first: after credis_close nothing reaches the user. */
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/sds.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/credis.h"
#include "common/err.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/redis_addr.h"
#include "common/redis_scripts.h"
#include "common/redis_slots.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define CONNECT_TIMEOUT_MS 2000 /* connect + AUTH/SELECT/PING */
#define CLOSE_DRAIN_MS 1000  /* credis_close: how long buffered commands may take to go out */
#define CLUSTER_MAX 64
#define SENTINEL_TIMEOUT_MS 1000 /* one sentinel's connect + answer (asked asynchronously) */
#define WAIT_REPLICA_MS_S "1000" /* WAIT 1 after a stored shard map */
#define MAX_CONNS 64            /* nodes of a Redis Cluster one credis_t connects to */
/* A connection with commands in flight and no reply for this long is dropped (its calls
 * sent again by the slot layer, the map refreshed): a primary that hangs (stopped, CPU-
 * starved, DEBUG SLEEP) keeps its TCP connection open and never errs, so without this
 * its calls waited forever and a fail-over to its replica was never followed. Longer
 * than any command credis sends takes (the shard map's WAIT: 1 s). */
#define REPLY_TIMEOUT_MS 3000
#define WATCH_MS 500            /* how often the connections' replies are checked */

/* ---- scripts ------------------------------------------------------------------------- */

enum { SC_POLL, SC_SHARDMAP, SC_LEASE, SC_RELEASE, SC_COUNT };

/* The incarnation is the third field of a node key's value ("role workers incarnation
 * host port shards"): the token of the node id's lease. */
#define LUA_HOLDER "string.match(v, '^%S+ %S+ (%S+)')"

static const char *const script_text[SC_COUNT] = {
    /* KEYS: node set. ARGV: node key prefix -> {"id value", ...} of the live nodes */
    [SC_POLL] = "redis.replicate_commands() "
                "local out = {} "
                "for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do "
                "  local v = redis.call('GET', ARGV[1] .. id) "
                "  if v then out[#out + 1] = id .. ' ' .. v "
                "  else redis.call('SREM', KEYS[1], id) end "
                "end return out",
    /* The shard map under one global, monotonic epoch (a compare-and-set: docs/cluster.md,
     * "Shard map epoch"). KEYS: shard map. ARGV: base (the epoch the writer last saw
     * stored), shard count, owners (4 bytes each) -> {result, epoch}: 1 stored at epoch
     * (max(stored, base) + 1); 0 the same map is stored already at epoch (nothing
     * written); -1 refused: another map is stored at epoch, newer than base (the writer
     * has not seen it: it reads the registry again before it writes). */
    [SC_SHARDMAP] = "local cur = redis.call('GET', KEYS[1]) "
                    "local base = tonumber(ARGV[1]) "
                    "local e = 0 "
                    "if cur then "
                    "  local nl = string.find(cur, '\\n', 1, true) "
                    "  e = tonumber(string.match(cur, '^(%d+) ')) or 0 "
                    "  if nl and string.sub(cur, nl + 1) == ARGV[3] and "
                    "     string.sub(cur, 1, nl - 1) == e .. ' ' .. ARGV[2] then return {0, e} end "
                    "  if e > base then return {-1, e} end "
                    "end "
                    "if base > e then e = base end "
                    "e = e + 1 "
                    "redis.call('SET', KEYS[1], string.format('%d %s\\n', e, ARGV[2]) .. ARGV[3]) "
                    "return {1, e}",
    /* The heartbeat's refresh of the node id's lease, a compare-and-set on the token.
     * KEYS: node key. ARGV: value, ttl ms, incarnation -> 1 (ours, refreshed; taken again
     * if it had expired), or the value of the node that holds it now. */
    [SC_LEASE] = "local v = redis.call('GET', KEYS[1]) "
                 "if v and " LUA_HOLDER " ~= ARGV[3] then return v end "
                 "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1",
    /* Clean stop: the lease and the id go, only while the lease is still ours.
     * KEYS: node key, node set. ARGV: incarnation, id -> 1 released, 0 not ours. */
    [SC_RELEASE] = "local v = redis.call('GET', KEYS[1]) "
                   "if v and " LUA_HOLDER " == ARGV[1] then "
                   "  redis.call('DEL', KEYS[1]) redis.call('SREM', KEYS[2], ARGV[2]) return 1 "
                   "end return 0",
};

/* ---- handle -------------------------------------------------------------------------- */

typedef struct call call_t;
typedef struct conn conn_t;
/* What to do with a reply (NULL: no reply, the connection failed or was never up). */
typedef void (*call_done_fn)(credis_t *r, call_t *c, redisReply *rep);

/* One command, kept until its answer so that the slot layer can send it again. Owned by
 * hiredis' callback list while in flight, by a connection's pending list while that
 * connects, by the later list while it waits out a back-off, by the deferred list while
 * waiting to fail on the next loop turn. */
struct call {
  credis_t *r;
  call_done_fn done;
  call_t *next;       /* pending / later / deferred list */
  int argc;           /* the whole command ("EVALSHA", sha, numkeys, keys..., args...) */
  char **argv;
  size_t *lens;
  int slot;           /* of the first key, -1 none */
  int ask;            /* ASK: the node to send to once, with ASKING first; else -1 */
  rslots_try_t t;
  conn_t *conn;       /* where it was last sent */
  uint64_t sent_ns;   /* uv_hrtime when it was sent: its round trip (metrics) */
  uint64_t due;       /* later list: when to send again (uv_now) */
  uint64_t epoch;     /* WAIT after a stored shard map: the epoch */
  /* the caller's */
  credis_dir_cb dir_cb;
  credis_shardmap_cb map_cb;
  credis_publish_cb pub_cb;
  credis_nodes_cb nodes_cb;
  void *ud;
};

struct conn {
  credis_t *r;
  int node;              /* index in r->map.nodes (0 with one server or Sentinel) */
  char name[300];        /* "127.0.0.1:6379", "[::1]:6379", "unix:/path": for log lines */
  redisAsyncContext *ac; /* NULL while waiting for the retry tick */
  int up;
  int hs_failed;         /* a handshake reply was an error on this connection */
  int first_write;       /* the handshake was queued inside redisAsyncHandleWrite */
  int replicas;          /* replicas following it (ROLE) */
  uint64_t started;      /* uv_now at connect: the handshake's deadline */
  int inflight;          /* calls and CLUSTER SLOTS sent on ac, not answered yet */
  uint64_t progress;     /* uv_now of the last reply, or of the send that made inflight 1 */
  call_t *pending, *pending_tail; /* waiting for this connection to come up */
};

struct credis {
  uv_loop_t *loop;
  redis_addr_t addr;
  char name[300];        /* the address as configured (no password), for log lines */
  char *cluster;
  credis_cbs_t cbs;
  void *ud;

  conn_t *conns[MAX_CONNS];
  int nconns;
  rslots_map_t map;      /* Cluster: the slot map (seeds first); else node 0 */
  int map_known;         /* Cluster: a CLUSTER SLOTS reply was loaded */
  int map_stale;         /* Cluster: refresh before trusting it (MOVED, lost node...) */
  int slots_inflight;
  int up;
  int ever_up;
  int outage_logged;     /* "unreachable" logged for the current outage */
  int closing;
  int draining;          /* credis_close: graceful disconnects not over yet */
  uint32_t backoff_ms;
  uv_timer_t retry_timer;
  uv_timer_t hb_timer;
  uv_timer_t defer_timer;
  uv_timer_t later_timer;
  uv_timer_t watch_timer; /* REPLY_TIMEOUT_MS: connections that stopped answering */
  /* Sentinel: the query for the primary, asynchronous like the rest (a sentinel that
   * does not answer costs SENTINEL_TIMEOUT_MS of waiting, never of a blocked loop) */
  conn_t *sent;           /* its connection (ac NULL: none in flight) */
  int sidx;               /* the sentinel asked now (index in addr.seed_*): a round starts
                             from the one that answered last */
  int stried;             /* sentinels asked in this round */
  int named;              /* node 0 is what a sentinel named since the last connect */
  char *swhy;             /* why the last sentinel failed (the outage line) */
  int open_handles;
  int retry_closed;

  /* registry */
  int registered;
  credis_node_t self;
  uint32_t hb_ms, ttl_ms;
  int poll_inflight;
  char *k_all, *k_prefix, *k_self, *k_map;

  rscripts_t scripts;
  call_t *deferred, *deferred_tail;
  call_t *later;
  credis_stats_t st;
};

static void start_connect(conn_t *cn);
static void heartbeat(credis_t *r);
static int parse_node(const char *s, size_t len, credis_node_t *nd);
static int cluster_ok(const char *c);
static void retry_cb(uv_timer_t *t);
static void finish_close(credis_t *r);
static void dispatch(call_t *c);
static void update_up(credis_t *r);
static void schedule_retry(credis_t *r);

#define CLUSTERED(r) ((r)->addr.mode == REDIS_MODE_CLUSTER)
#define SINGLE(r) ((r)->addr.mode == REDIS_MODE_SINGLE)

/* ---- small helpers -------------------------------------------------------------------- */

static int is_error(const redisReply *rep, const char *prefix) {
  return rep && rep->type == REDIS_REPLY_ERROR && rep->str &&
         (!prefix || strncmp(rep->str, prefix, strlen(prefix)) == 0);
}

/* Counts a reply (or its absence). */
static void count_reply(credis_t *r, const redisReply *rep) {
  if (rep) r->st.replies++;
  if (!rep || rep->type == REDIS_REPLY_ERROR) {
    r->st.errors++;
    metrics_redis_error(METRICS_REDIS_CLUSTER, !rep);
  }
}

static void call_free(call_t *c) {
  if (!c) return;
  for (int i = 0; i < c->argc; i++) xfree(c->argv[i]);
  xfree(c->argv);
  xfree(c->lens);
  xfree(c);
}

static void free_list(call_t *c) {
  while (c) {
    call_t *next = c->next;
    call_free(c);
    c = next;
  }
}

static void host_name(char *out, size_t cap, const char *host, int port) {
  if (strchr(host, ':')) snprintf(out, cap, "[%s]:%d", host, port);
  else snprintf(out, cap, "%s:%d", host, port);
}

/* The connection of map node i (created, not connected, when new). */
static conn_t *conn_of(credis_t *r, int i) {
  if (i < 0 || i >= MAX_CONNS) return NULL;
  while (r->nconns <= i) {
    conn_t *cn = xcalloc(1, sizeof *cn);
    cn->r = r;
    cn->node = r->nconns;
    r->conns[r->nconns++] = cn;
  }
  conn_t *cn = r->conns[i];
  if (r->addr.unix_path) snprintf(cn->name, sizeof cn->name, "unix:%s", r->addr.unix_path);
  else if (i < r->map.nnodes) host_name(cn->name, sizeof cn->name, r->map.nodes[i].host, r->map.nodes[i].port);
  return cn;
}

/* Whether the map has node i serve a slot (Cluster). */
static int serves(const credis_t *r, int i) {
  for (int s = 0; s < RSLOTS_COUNT; s++)
    if (r->map.owner[s] == i) return 1;
  return 0;
}

/* The nodes this credis must keep connected: one server / Sentinel: node 0; Cluster:
 * every primary serving a slot, or the seeds while no map is known. */
static int wanted(const credis_t *r, int i) {
  if (!CLUSTERED(r)) return i == 0;
  if (!r->map_known) return i < r->addr.nseeds;
  return serves(r, i);
}

/* ---- event hooks (see "hiredis 0.14.1 notes") ----------------------------------------- */

static void ev_poll_cb(uv_poll_t *h, int status, int events) {
  redisLibuvEvents *p = h->data;
  /* An error (POLLERR): libuv has stopped the poll; let hiredis do what it was waiting
   * for, so that it meets the socket error and reports it. */
  int ev = status ? p->events : events;
  conn_t *cn = p->context ? p->context->data : NULL;
  if (p->context && (ev & UV_READABLE)) redisAsyncHandleRead(p->context);
  if (p->context && (ev & UV_WRITABLE)) {
    redisAsyncContext *ac = p->context;
    if ((ac->c.flags & REDIS_CONNECTED) && sdslen(ac->c.obuf) > 0) cn->r->st.writes++;
    redisAsyncHandleWrite(ac); /* may free ac */
    if (cn->first_write) {     /* the connect completed in there and the handshake went out */
      cn->first_write = 0;
      cn->r->st.writes++;
    }
  }
}

static void ev_update(redisLibuvEvents *p) {
  if (p->events) uv_poll_start(&p->handle, p->events, ev_poll_cb);
  else uv_poll_stop(&p->handle);
}

static void ev_add_read(void *d) {
  redisLibuvEvents *p = d;
  p->events |= UV_READABLE;
  ev_update(p);
}

static void ev_del_read(void *d) {
  redisLibuvEvents *p = d;
  p->events &= ~UV_READABLE;
  ev_update(p);
}

static void ev_add_write(void *d) {
  redisLibuvEvents *p = d;
  p->events |= UV_WRITABLE;
  ev_update(p);
}

static void ev_del_write(void *d) {
  redisLibuvEvents *p = d;
  p->events &= ~UV_WRITABLE;
  ev_update(p);
}

/* Our event hooks on an attached context (see "hiredis 0.14.1 notes"). */
static void ev_attach(redisAsyncContext *ac) {
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
}

/* ---- connections ------------------------------------------------------------------------ */

static void schedule_retry(credis_t *r) {
  if (r->closing || uv_is_active((uv_handle_t *)&r->retry_timer)) return;
  uint32_t d = r->backoff_ms;
  r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
  uv_timer_start(&r->retry_timer, retry_cb, d, 0);
}

/* A connection attempt failed or a connection was lost. */
static void report_down(conn_t *cn, const char *reason) {
  credis_t *r = cn->r;
  if (!r->outage_logged) {
    log_warn("redis %s unreachable: %s; retrying", cn->name[0] ? cn->name : r->name, reason);
    r->outage_logged = 1;
  } else {
    log_debug("redis %s: still unreachable: %s", cn->name[0] ? cn->name : r->name, reason);
  }
}

/* Calls waiting for cn to come up fail: sent again later on a Cluster or with Sentinel
 * (within the slot layer's bounds), else answered with no reply. */
static void call_failed(call_t *c);
static void fail_pending(conn_t *cn) {
  call_t *c = cn->pending;
  cn->pending = cn->pending_tail = NULL;
  while (c) {
    call_t *next = c->next;
    c->next = NULL;
    call_failed(c);
    c = next;
  }
}

/* The connection is gone (lost, refused, timed out, demoted). */
static void conn_lost(conn_t *cn) {
  credis_t *r = cn->r;
  cn->up = 0;
  cn->hs_failed = 0;
  if (CLUSTERED(r)) r->map_stale = 1;
  if (r->closing) return;
  fail_pending(cn);
  update_up(r);
  schedule_retry(r);
}

/* Forgets cn's context and frees it (from a timer callback: no hiredis frame above us).
 * Pending calls get a NULL reply; onDisconnect is ignored (cn->ac no longer matches). */
static void drop_context(conn_t *cn) {
  redisAsyncContext *ac = cn->ac;
  cn->ac = NULL;
  cn->up = 0;
  cn->inflight = 0;
  if (ac) redisAsyncFree(ac);
}

/* Sentinel: asks the sentinels in turn (from the one that answered last) for the primary, into map node 0, then
 * connects it (its handshake checks with ROLE that it calls itself a primary). One
 * query at a time, on the loop: connect, SENTINEL get-master-addr-by-name, disconnect;
 * a sentinel that refuses, errs, does not know the name or does not answer within
 * SENTINEL_TIMEOUT_MS (watch_cb) passes the turn to the next; after the last one the
 * outage is reported and the retry tick starts over. */
static void sentinel_ask(credis_t *r);
static void ev_attach(redisAsyncContext *ac);

static void sentinel_next(credis_t *r, char *why) {
  xfree(r->swhy);
  r->swhy = why;
  r->sidx = (r->sidx + 1) % r->addr.nseeds;
  if (++r->stried < r->addr.nseeds) {
    sentinel_ask(r);
    return;
  }
  r->stried = 0;
  report_down(conn_of(r, 0), r->swhy ? r->swhy : "no sentinel");
  schedule_retry(r);
}

/* Ends the query in flight (its callbacks then see ac != r->sent->ac). From a reply
 * callback hiredis defers the disconnect; elsewhere (timer, close) the context is freed. */
static void sentinel_drop(credis_t *r, int in_callback) {
  redisAsyncContext *ac = r->sent->ac;
  r->sent->ac = NULL;
  if (!ac) return;
  if (in_callback) redisAsyncDisconnect(ac);
  else redisAsyncFree(ac);
}

static void sentinel_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  credis_t *r = privdata;
  if (r->closing || ac != r->sent->ac) return;
  redisReply *rep = reply;
  count_reply(r, rep);
  char host[RSLOTS_HOST_MAX];
  int port;
  int ok = rep && rslots_sentinel_addr(rep, host, &port) == 0;
  const char *sh = r->addr.seed_host[r->sidx];
  int sp = r->addr.seed_port[r->sidx];
  char *why = ok ? NULL
                 : rep && rep->type == REDIS_REPLY_ERROR && rep->str
                     ? xstrfmt("sentinel %s:%d: %s", sh, sp, rep->str)
                     : xstrfmt("sentinel %s:%d does not know '%s'", sh, sp, r->addr.master);
  sentinel_drop(r, 1);
  if (!ok) {
    sentinel_next(r, why);
    return;
  }
  if (r->map.nnodes == 0) rslots_map_node(&r->map, host, port);
  rslots_node_t *n = &r->map.nodes[0];
  if (n->port != port || strcmp(n->host, host) != 0) {
    log_info("redis %s: the primary is now %s:%d", r->name, host, port);
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = port;
  }
  r->stried = 0; /* sidx stays: the next round starts here */
  r->named = 1;
  conn_t *cn = conn_of(r, 0); /* its name */
  if (!cn->ac) start_connect(cn);
}

static void sentinel_on_connect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  credis_t *r = ((conn_t *)ac->data)->r;
  if (r->closing || ac != r->sent->ac) return;
  if (status != REDIS_OK) { /* hiredis frees the context when this returns */
    r->sent->ac = NULL;
    sentinel_next(r, xstrfmt("sentinel %s:%d: %s", r->addr.seed_host[r->sidx], r->addr.seed_port[r->sidx],
                             ac->errstr ? ac->errstr : "connect failed"));
    return;
  }
  const char *av[] = {"SENTINEL", "get-master-addr-by-name", r->addr.master};
  size_t al[] = {8, 23, strlen(r->addr.master)};
  if (redisAsyncCommandArgv(ac, sentinel_reply, r, 3, av, al) == REDIS_OK) r->st.commands++;
}

static void sentinel_on_disconnect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  credis_t *r = ((conn_t *)ac->data)->r;
  (void)status;
  if (r->closing || ac != r->sent->ac) return; /* ours: a query that ended */
  r->sent->ac = NULL;                          /* hiredis frees it when this returns */
  sentinel_next(r, xstrfmt("sentinel %s:%d: connection lost", r->addr.seed_host[r->sidx],
                           r->addr.seed_port[r->sidx]));
}

static void sentinel_ask(credis_t *r) {
  if (r->closing || r->sent->ac) return;
  const char *h = r->addr.seed_host[r->sidx];
  int p = r->addr.seed_port[r->sidx];
  redisAsyncContext *ac = redisAsyncConnect(h, p);
  if (!ac || ac->err) {
    char *why = xstrfmt("sentinel %s:%d: %s", h, p, ac && ac->errstr ? ac->errstr : "cannot allocate a context");
    if (ac) redisAsyncFree(ac);
    sentinel_next(r, why);
    return;
  }
  ac->data = r->sent;
  if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
    ac->ev.cleanup = NULL;
    redisAsyncFree(ac);
    sentinel_next(r, xstrfmt("sentinel %s:%d: cannot attach to the loop", h, p));
    return;
  }
  ev_attach(ac);
  redisAsyncSetConnectCallback(ac, sentinel_on_connect);
  redisAsyncSetDisconnectCallback(ac, sentinel_on_disconnect);
  r->sent->ac = ac;
  r->sent->first_write = 0;
  r->sent->started = uv_now(r->loop);
}

/* A command that REPLY_TIMEOUT_MS watches went out on cn / its reply came on ac. */
static void sent_on(conn_t *cn) {
  if (cn->inflight++ == 0) cn->progress = uv_now(cn->r->loop);
}

static void replied_on(redisAsyncContext *ac) {
  conn_t *cn = ac ? ac->data : NULL;
  if (!cn || cn->ac != ac) return; /* a dropped context's calls failing */
  if (cn->inflight > 0) cn->inflight--;
  cn->progress = uv_now(cn->r->loop);
}

/* Cluster: CLUSTER SLOTS on an up connection (none in flight): one with nothing waiting
 * if there is one, else the one that answered last (not a primary that hangs). */
static void slots_cb(redisAsyncContext *ac, void *reply, void *privdata);
static void refresh_map(credis_t *r) {
  if (!CLUSTERED(r) || r->slots_inflight || r->closing) return;
  conn_t *best = NULL;
  for (int i = 0; i < r->nconns; i++) {
    conn_t *cn = r->conns[i];
    if (!cn->up || !cn->ac) continue;
    if (!best || (best->inflight && (!cn->inflight || cn->progress > best->progress))) best = cn;
  }
  if (!best) return;
  const char *av[] = {"CLUSTER", "SLOTS"};
  size_t al[] = {7, 5};
  if (redisAsyncCommandArgv(best->ac, slots_cb, best, 2, av, al) == REDIS_OK) {
    r->st.commands++;
    r->slots_inflight = 1;
    sent_on(best);
  }
}

/* Every WATCH_MS: a connection with commands waiting and no reply for REPLY_TIMEOUT_MS is
 * dropped as lost (its calls are sent again, the map refreshed: the slot layer). */
static void watch_cb(uv_timer_t *t) {
  credis_t *r = t->data;
  if (r->closing) return;
  uint64_t now = uv_now(r->loop);
  if (r->sent && r->sent->ac && now - r->sent->started >= SENTINEL_TIMEOUT_MS) {
    sentinel_drop(r, 0);
    sentinel_next(r, xstrfmt("sentinel %s:%d: no answer within %d ms", r->addr.seed_host[r->sidx],
                             r->addr.seed_port[r->sidx], SENTINEL_TIMEOUT_MS));
    if (r->closing) return;
  }
  for (int i = 0; i < r->nconns; i++) {
    conn_t *cn = r->conns[i];
    if (!cn->ac || !cn->up || !cn->inflight || now - cn->progress < REPLY_TIMEOUT_MS) continue;
    char why[128];
    snprintf(why, sizeof why, "no reply for %d ms (%d commands waiting)", REPLY_TIMEOUT_MS, cn->inflight);
    report_down(cn, why);
    drop_context(cn);
    conn_lost(cn);
    if (r->closing) return;
  }
}

static void slots_cb(redisAsyncContext *ac, void *reply, void *privdata) {
  conn_t *cn = privdata;
  credis_t *r = cn->r;
  redisReply *rep = reply;
  if (r->closing) return;
  replied_on(ac);
  r->slots_inflight = 0;
  count_reply(r, rep);
  if (!rep) return; /* the connection died: its loss is handled there */
  char *err = NULL;
  if (rslots_map_load(&r->map, rep, r->map.nodes[cn->node].host, &err) != 0 || rslots_map_covered(&r->map) == 0) {
    log_warn("redis %s: %s", r->name, err ? err : "CLUSTER SLOTS: no slot served");
    xfree(err);
    schedule_retry(r);
    return;
  }
  r->map_known = 1;
  r->map_stale = 0;
  /* connect the primaries we do not know yet */
  for (int i = 0; i < r->map.nnodes && i < MAX_CONNS; i++) {
    conn_t *n = conn_of(r, i);
    if (!n->ac && wanted(r, i)) start_connect(n);
  }
  update_up(r);
  if (!r->up) schedule_retry(r);
}

static void retry_cb(uv_timer_t *t) {
  credis_t *r = t->data;
  if (r->closing) return;
  uint64_t now = uv_now(r->loop);
  for (int i = 0; i < (CLUSTERED(r) ? r->map.nnodes : 1) && i < MAX_CONNS; i++) {
    conn_t *cn = conn_of(r, i);
    if (cn->ac && !cn->up && now - cn->started >= CONNECT_TIMEOUT_MS) { /* connect or handshake took too long */
      report_down(cn, cn->ac->c.flags & REDIS_CONNECTED ? "no answer to the handshake" : "connect timed out");
      drop_context(cn);
      conn_lost(cn);
      if (r->closing) return;
    }
    if (!cn->ac && wanted(r, i)) start_connect(cn);
  }
  if (CLUSTERED(r) && (r->map_stale || !r->map_known)) refresh_map(r);
  if (!r->up) schedule_retry(r);
}

/* The overall state: see "Up" at the top. Reports a change. */
static void update_up(credis_t *r) {
  if (r->closing) return;
  int up;
  if (!CLUSTERED(r)) {
    up = r->nconns > 0 && r->conns[0]->up;
  } else {
    up = r->map_known && r->map.nnodes > 0;
    for (int i = 0; up && i < r->map.nnodes; i++)
      if (serves(r, i) && (i >= r->nconns || !r->conns[i]->up)) up = 0;
  }
  if (up == r->up) return;
  r->up = up;
  if (!up) {
    r->poll_inflight = 0;
    if (r->cbs.on_state) r->cbs.on_state(r->ud, 0);
    schedule_retry(r);
    return;
  }
  r->backoff_ms = BACKOFF_MIN_MS;
  uv_timer_stop(&r->retry_timer);
  if (r->outage_logged) log_info("redis %s back", r->name);
  else log_info("redis %s connected", r->name);
  r->outage_logged = 0;
  if (r->ever_up) r->st.reconnects++;
  r->ever_up = 1;
  if (r->cbs.on_state) r->cbs.on_state(r->ud, 1);
  if (r->closing || !r->up) return;
  if (r->registered) heartbeat(r);
}

static void send_now(conn_t *cn, call_t *c);

static void conn_ready(conn_t *cn) {
  credis_t *r = cn->r;
  cn->up = 1;
  cn->hs_failed = 0;
  call_t *c = cn->pending;
  cn->pending = cn->pending_tail = NULL;
  while (c) {
    call_t *next = c->next;
    c->next = NULL;
    send_now(cn, c);
    c = next;
  }
  if (CLUSTERED(r) && (!r->map_known || r->map_stale)) refresh_map(r);
  update_up(r);
}

enum { HS_PLAIN, HS_ROLE, HS_SCRIPT, HS_LAST };
static const int hs_tags[] = {HS_PLAIN, HS_ROLE, HS_SCRIPT, HS_LAST};

/* Replies to AUTH, SELECT, ROLE, SCRIPT LOAD, PING; privdata: the tag. */
static void hs_cb(redisAsyncContext *ac, void *reply, void *privdata) {
  conn_t *cn = ac->data;
  credis_t *r = cn->r;
  redisReply *rep = reply;
  int tag = *(const int *)privdata;
  if (r->closing || ac != cn->ac) return;
  count_reply(r, rep);
  if (!rep) return; /* the connection died: onDisconnect follows */
  const char *bad = NULL;
  if (rep->type == REDIS_REPLY_ERROR) bad = rep->str ? rep->str : "error";
  else if (tag == HS_SCRIPT && !rscripts_reply_ok(&r->scripts, rep)) bad = "SCRIPT LOAD: unexpected SHA";
  else if (tag == HS_ROLE) {
    int primary = rep->type == REDIS_REPLY_ARRAY && rep->elements >= 3 && rep->element[0]->type == REDIS_REPLY_STRING &&
                  strcmp(rep->element[0]->str, "master") == 0;
    if (primary && rep->element[2]->type == REDIS_REPLY_ARRAY) cn->replicas = (int)rep->element[2]->elements;
    if (!primary && r->addr.mode == REDIS_MODE_SENTINEL) bad = "the node the sentinels named is not a primary (yet)";
  }
  if (bad) {
    if (!cn->hs_failed) {
      char why[300];
      snprintf(why, sizeof why, "handshake: %s", bad);
      report_down(cn, why);
      cn->hs_failed = 1;
      redisAsyncDisconnect(ac); /* deferred by hiredis until the callbacks are done */
    }
    return;
  }
  if (tag == HS_LAST && !cn->hs_failed) conn_ready(cn);
}

static void hs_send(conn_t *cn, int tag, int argc, const char **argv, const size_t *lens) {
  if (redisAsyncCommandArgv(cn->ac, hs_cb, (void *)&hs_tags[tag], argc, argv, lens) == REDIS_OK) cn->r->st.commands++;
}

static void on_connect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  conn_t *cn = ac->data;
  credis_t *r = cn->r;
  if (r->closing || ac != cn->ac) return;
  if (status != REDIS_OK) {
    /* hiredis frees the context when this returns */
    cn->ac = NULL;
    report_down(cn, ac->errstr ? ac->errstr : "connect failed");
    conn_lost(cn);
    return;
  }
  /* First commands on the connection: AUTH, SELECT, ROLE, the scripts, then PING whose
   * answer means up. */
  if (r->addr.password) {
    const char *av[] = {"AUTH", r->addr.password};
    size_t al[] = {4, strlen(r->addr.password)};
    hs_send(cn, HS_PLAIN, 2, av, al);
  }
  if (r->addr.db) {
    char d[16];
    snprintf(d, sizeof d, "%d", r->addr.db);
    const char *av[] = {"SELECT", d};
    size_t al[] = {6, strlen(d)};
    hs_send(cn, HS_PLAIN, 2, av, al);
  }
  if (!SINGLE(r)) {
    const char *av[] = {"ROLE"};
    size_t al[] = {4};
    hs_send(cn, HS_ROLE, 1, av, al);
  }
  /* The scripts are cached at once so that EVALSHA does not meet NOSCRIPT (a SCRIPT
   * FLUSH or a promoted replica still can: the slot layer loads them again). */
  r->st.commands += (uint64_t)rscripts_load_async(&r->scripts, ac, hs_cb, (void *)&hs_tags[HS_SCRIPT]);
  const char *av[] = {"PING"};
  size_t al[] = {4};
  hs_send(cn, HS_LAST, 1, av, al);
  cn->first_write = 1;
}

static void on_disconnect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  conn_t *cn = ac->data;
  credis_t *r = cn->r;
  if (ac != cn->ac) return; /* our own redisAsyncFree */
  /* hiredis frees the context when this returns */
  cn->ac = NULL;
  cn->inflight = 0;
  if (r->closing) { /* credis_close's graceful disconnect is over */
    if (--r->draining == 0) finish_close(r);
    return;
  }
  if (!cn->hs_failed)
    report_down(cn, status == REDIS_OK ? "connection closed"
                                       : (ac->errstr && *ac->errstr ? ac->errstr : "connection lost"));
  conn_lost(cn);
}

static void start_connect(conn_t *cn) {
  credis_t *r = cn->r;
  if (r->addr.mode == REDIS_MODE_SENTINEL) {
    /* the sentinels are asked again before each connection: the answer connects */
    if (!r->named) {
      sentinel_ask(r);
      return;
    }
    r->named = 0;
  }
  redisAsyncContext *ac;
  if (r->addr.unix_path) ac = redisAsyncConnectUnix(r->addr.unix_path);
  else if (SINGLE(r)) ac = redisAsyncConnect(r->addr.host, r->addr.port);
  else ac = redisAsyncConnect(r->map.nodes[cn->node].host, r->map.nodes[cn->node].port);
  if (!ac || ac->err) {
    report_down(cn, ac && ac->errstr ? ac->errstr : "cannot allocate a context");
    if (ac) redisAsyncFree(ac); /* no event library attached yet */
    schedule_retry(r);
    return;
  }
  ac->data = cn;
  if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
    ac->ev.cleanup = NULL; /* the adapter's data is not set: nothing to clean */
    redisAsyncFree(ac);
    report_down(cn, "cannot attach to the loop");
    schedule_retry(r);
    return;
  }
  ev_attach(ac);
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  cn->ac = ac;
  cn->up = 0;
  cn->hs_failed = 0;
  cn->replicas = 0;
  cn->inflight = 0;
  cn->started = uv_now(r->loop);
  /* the tick times the connect and the handshake out */
  if (!uv_is_active((uv_handle_t *)&r->retry_timer)) uv_timer_start(&r->retry_timer, retry_cb, CONNECT_TIMEOUT_MS, 0);
}

/* ---- the slot layer over the async API --------------------------------------------- */

static void call_cb(redisAsyncContext *ac, void *reply, void *privdata);

static void later_cb(uv_timer_t *t) {
  credis_t *r = t->data;
  uint64_t now = uv_now(r->loop), next = 0;
  call_t *due = NULL, **pp = &r->later;
  while (*pp) {
    call_t *c = *pp;
    if (c->due <= now) {
      *pp = c->next;
      c->next = due;
      due = c;
    } else {
      if (!next || c->due < next) next = c->due;
      pp = &c->next;
    }
  }
  if (next) uv_timer_start(&r->later_timer, later_cb, next - now, 0);
  if (CLUSTERED(r) && due) refresh_map(r);
  while (due) {
    call_t *c = due;
    due = c->next;
    c->next = NULL;
    dispatch(c);
  }
}

/* Sends c again after ms. */
static void later(call_t *c, unsigned ms) {
  credis_t *r = c->r;
  c->due = uv_now(r->loop) + ms;
  c->next = r->later;
  r->later = c;
  uint64_t due = uv_timer_get_due_in(&r->later_timer);
  if (!uv_is_active((uv_handle_t *)&r->later_timer) || due > ms)
    uv_timer_start(&r->later_timer, later_cb, ms, 0);
}

/* No reply for c (its connection failed before or after sending it). */
static void call_failed(call_t *c) {
  credis_t *r = c->r;
  if (r->closing) {
    call_free(c);
    return;
  }
  rslots_redirect_t to;
  unsigned ms = 0;
  if (!SINGLE(r) && rslots_next(&c->t, NULL, &to, &ms) == RSLOTS_WAIT) {
    later(c, ms);
    return;
  }
  c->done(r, c, NULL);
  call_free(c);
}

static void asking_cb(redisAsyncContext *ac, void *reply, void *privdata) {
  credis_t *r = privdata;
  if (!r->closing) count_reply(r, reply);
}

/* Writes c on cn (up): ASKING first when c follows an ASK. */
static void send_now(conn_t *cn, call_t *c) {
  credis_t *r = cn->r;
  if (c->ask >= 0) {
    const char *av[] = {"ASKING"};
    size_t al[] = {6};
    if (redisAsyncCommandArgv(cn->ac, asking_cb, r, 1, av, al) == REDIS_OK) r->st.commands++;
    c->ask = -1;
  }
  c->conn = cn;
  c->sent_ns = uv_hrtime();
  if (redisAsyncCommandArgv(cn->ac, call_cb, c, c->argc, (const char **)c->argv, c->lens) != REDIS_OK) {
    call_failed(c);
    return;
  }
  r->st.commands++;
  sent_on(cn);
}

/* Sends c to the node serving its slot (see "The slot layer" at the top). */
static void dispatch(call_t *c) {
  credis_t *r = c->r;
  if (r->closing) {
    call_free(c);
    return;
  }
  int node = 0;
  if (CLUSTERED(r)) {
    node = c->ask >= 0 ? c->ask : c->slot >= 0 ? rslots_map_owner(&r->map, c->slot) : -1;
    if (node < 0 && c->slot < 0) /* no key: any primary */
      for (int i = 0; i < r->nconns && node < 0; i++)
        if (r->conns[i]->up && serves(r, i)) node = i;
    if (node < 0) {
      r->map_stale = 1;
      call_failed(c);
      return;
    }
  }
  conn_t *cn = conn_of(r, node);
  if (!cn) {
    call_failed(c);
    return;
  }
  if (cn->up && cn->ac) {
    send_now(cn, c);
    return;
  }
  /* a node we have not connected yet (a MOVED to a new primary) */
  c->next = NULL;
  if (cn->pending_tail) cn->pending_tail->next = c;
  else cn->pending = c;
  cn->pending_tail = c;
  if (!cn->ac) start_connect(cn);
}

static void call_cb(redisAsyncContext *ac, void *reply, void *privdata) {
  call_t *c = privdata;
  credis_t *r = c->r;
  redisReply *rep = reply;
  if (r->closing) {
    call_free(c);
    return;
  }
  replied_on(ac);
  count_reply(r, rep);
  if (!rep) {
    call_failed(c);
    return;
  }
  if (c->sent_ns) metrics_redis_rtt(METRICS_REDIS_CLUSTER, (uv_hrtime() - c->sent_ns) / 1000);
  rslots_redirect_t to;
  unsigned ms = 0;
  conn_t *cn = ac->data;
  switch (rslots_next(&c->t, rep, &to, &ms)) {
  case RSLOTS_DONE:
    break;
  case RSLOTS_GIVE_UP:
    log_warn("redis %s: gave up after retries: %s", r->name, rep->str ? rep->str : "error");
    break;
  case RSLOTS_MOVED: {
    int n = rslots_map_node(&r->map, to.host, to.port);
    if (n < 0 || n >= MAX_CONNS) break;
    r->map.owner[to.slot] = (int16_t)n;
    r->map_stale = 1; /* a moved slot seldom moves alone (resharding, failover) */
    refresh_map(r);
    dispatch(c);
    return;
  }
  case RSLOTS_ASK: {
    int n = rslots_map_node(&r->map, to.host, to.port);
    if (n < 0 || n >= MAX_CONNS) break;
    c->ask = n;
    dispatch(c);
    return;
  }
  case RSLOTS_WAIT:
    if (CLUSTERED(r)) r->map_stale = 1;
    later(c, ms);
    return;
  case RSLOTS_PRIMARY: /* READONLY: a demoted primary (Sentinel failover) */
    if (cn && cn->ac == ac) redisAsyncDisconnect(ac); /* deferred: on_disconnect asks again */
    later(c, RSLOTS_WAIT_FIRST_MS);
    return;
  case RSLOTS_NOSCRIPT:
    /* the node lost its scripts (SCRIPT FLUSH, a promoted replica): load them there,
     * ahead of the command sent again */
    if (cn && cn->ac == ac && cn->up) {
      r->st.commands += (uint64_t)rscripts_load_async(&r->scripts, ac, asking_cb, r);
      send_now(cn, c);
      return;
    }
    later(c, RSLOTS_WAIT_FIRST_MS);
    return;
  }
  c->done(r, c, rep);
  call_free(c);
}

/* A new call: the command argv (argc <= 8) copied; a script's is "EVALSHA sha" then
 * argv. */
static call_t *call_new(credis_t *r, call_done_fn done, int script, int argc, const char **argv,
                        const size_t *lens) {
  call_t *c = xcalloc(1, sizeof *c);
  c->r = r;
  c->done = done;
  c->ask = -1;
  int pre = script >= 0 ? 2 : 0;
  c->argc = argc + pre;
  c->argv = xcalloc((size_t)c->argc, sizeof *c->argv);
  c->lens = xcalloc((size_t)c->argc, sizeof *c->lens);
  if (pre) {
    c->argv[0] = xstrdup("EVALSHA");
    c->lens[0] = 7;
    c->argv[1] = xstrdup(r->scripts.sha[script]);
    c->lens[1] = 40;
  }
  for (int i = 0; i < argc; i++) {
    c->argv[pre + i] = xmalloc(lens[i] + 1);
    memcpy(c->argv[pre + i], argv[i], lens[i]);
    c->argv[pre + i][lens[i]] = '\0';
    c->lens[pre + i] = lens[i];
  }
  int k = rslots_cmd_key(c->argc, (const char *const *)c->argv, c->lens);
  c->slot = k < 0 ? -1 : rslots_key_slot(c->argv[k], c->lens[k]);
  return c;
}

/* Sends c when up: 0, or -1 when not sent (counted as dropped; c is the caller's). */
static int send_call(credis_t *r, call_t *c) {
  if (r->closing || !r->up) {
    r->st.dropped++;
    return -1;
  }
  dispatch(c);
  return 0;
}

/* Reply of a fire-and-forget command. */
static void ff_done(credis_t *r, call_t *c, redisReply *rep) {
  if (is_error(rep, NULL)) log_warn("redis %s: %s", r->name, rep->str);
}

/* A fire-and-forget command (HSET, HDEL, SADD). */
static void send_ff(credis_t *r, int argc, const char **argv, const size_t *lens) {
  if (r->closing || !r->up) {
    r->st.dropped++;
    return;
  }
  dispatch(call_new(r, ff_done, -1, argc, argv, lens));
}

static void defer_cb(uv_timer_t *t) {
  credis_t *r = t->data;
  call_t *c = r->deferred;
  r->deferred = r->deferred_tail = NULL;
  while (c) {
    call_t *next = c->next;
    if (!r->closing) c->done(r, c, NULL);
    call_free(c);
    c = next;
  }
}

/* A read that cannot be sent fails on the next loop turn, never inside the call. */
static void defer_fail(credis_t *r, call_t *c) {
  c->next = NULL;
  if (r->deferred_tail) r->deferred_tail->next = c;
  else r->deferred = c;
  r->deferred_tail = c;
  uv_timer_start(&r->defer_timer, defer_cb, 0, 0);
}

/* ---- registry ------------------------------------------------------------------------ */

static int cmp_node(const void *a, const void *b) {
  const credis_node_t *x = a, *y = b;
  return (int)x->id - (int)y->id;
}

/* The live nodes from a poll's reply, sorted by id (caller frees), or NULL (logged). */
static credis_node_t *parse_nodes(credis_t *r, const redisReply *rep, int *count) {
  if (!rep) return NULL;
  if (rep->type != REDIS_REPLY_ARRAY) {
    log_warn("redis %s: registry poll: %s", r->name,
             rep->type == REDIS_REPLY_ERROR && rep->str ? rep->str : "unexpected reply");
    return NULL;
  }
  credis_node_t *nodes = xcalloc(rep->elements ? rep->elements : 1, sizeof *nodes);
  int n = 0;
  for (size_t i = 0; i < rep->elements; i++) {
    redisReply *e = rep->element[i];
    if (e->type != REDIS_REPLY_STRING) continue;
    if (parse_node(e->str, e->len, &nodes[n]) != 0) {
      log_debug("redis %s: registry: skipping malformed entry '%.*s'", r->name, (int)e->len, e->str);
      continue;
    }
    n++;
  }
  qsort(nodes, (size_t)n, sizeof *nodes, cmp_node);
  *count = n;
  return nodes;
}

static void poll_done(credis_t *r, call_t *c, redisReply *rep) {
  r->poll_inflight = 0;
  int n = 0;
  credis_node_t *nodes = parse_nodes(r, rep, &n);
  if (!nodes) return;
  if (r->cbs.on_nodes) r->cbs.on_nodes(r->ud, nodes, n);
  xfree(nodes);
}

static void nodes_get_done(credis_t *r, call_t *c, redisReply *rep) {
  int n = 0;
  credis_node_t *nodes = parse_nodes(r, rep, &n);
  c->nodes_cb(c->ud, nodes != NULL, nodes, n);
  xfree(nodes);
}

void credis_nodes_get(credis_t *r, credis_nodes_cb cb, void *ud) {
  if (!r || r->closing) return;
  const char *pv[] = {"1", r->k_all, r->k_prefix};
  size_t pl[] = {1, strlen(r->k_all), strlen(r->k_prefix)};
  call_t *c = call_new(r, nodes_get_done, SC_POLL, 3, pv, pl);
  c->nodes_cb = cb;
  c->ud = ud;
  if (send_call(r, c) != 0) defer_fail(r, c);
}

/* The value of a node's key: "role workers incarnation host port shards" (white space in
 * the host would break the fields: replaced). */
static void node_value(const credis_node_t *n, char *out, size_t cap) {
  char host[sizeof n->host];
  snprintf(host, sizeof host, "%s", n->host[0] ? n->host : "-");
  for (char *p = host; *p; p++)
    if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') *p = '_';
  snprintf(out, cap, "%u %u %" PRIu64 " %s %d %u", n->role, n->workers, n->incarnation, host, n->bus_port, n->shards);
}

/* One "id role workers incarnation host port shards" entry (a poll's) into *nd; 0 or -1. */
static int parse_node(const char *s, size_t len, credis_node_t *nd) {
  unsigned id, role, workers, shards;
  uint64_t inc;
  int port, used = 0;
  char host[64];
  /* an entry without the shard count is a node of an older version (a rolling upgrade):
   * taken as it is, its count unknown (0) and not compared */
  int nf = sscanf(s, "%u %u %u %" SCNu64 " %63s %d%n %u%n", &id, &role, &workers, &inc, host, &port, &used,
                  &shards, &used);
  if (nf == 6) shards = 0;
  if (nf < 6 || (size_t)used != len || id < 1 || id > 65535 || role > 255 || workers > 65535 || port < 0 ||
      port > 65535 || (nf == 7 && shards < 1))
    return -1;
  nd->id = (uint16_t)id;
  nd->role = (uint8_t)role;
  nd->workers = (uint16_t)workers;
  nd->incarnation = inc;
  snprintf(nd->host, sizeof nd->host, "%s", host);
  nd->bus_port = port;
  nd->shards = shards;
  return 0;
}

/* The lease refresh's answer: another node holds this node's id now. This node has lost
 * it: no more heartbeats (it must not fight for it), and the owner is told. */
static void lease_done(credis_t *r, call_t *c, redisReply *rep) {
  if (!rep || rep->type == REDIS_REPLY_INTEGER) return; /* refreshed, or no answer (Redis down) */
  if (rep->type != REDIS_REPLY_STRING) {
    if (is_error(rep, NULL)) log_warn("redis %s: lease: %s", r->name, rep->str);
    return;
  }
  if (!r->registered) return;
  credis_node_t holder = {0};
  char *entry = xstrfmt("%u %.*s", r->self.id, (int)rep->len, rep->str);
  if (parse_node(entry, strlen(entry), &holder) != 0) {
    holder.id = r->self.id;
    snprintf(holder.host, sizeof holder.host, "?");
  }
  xfree(entry);
  r->registered = 0;
  uv_timer_stop(&r->hb_timer);
  if (r->cbs.on_lost) r->cbs.on_lost(r->ud, &holder);
}

/* Lease refresh (compare-and-set), SADD, poll: one write. */
static void heartbeat(credis_t *r) {
  if (!r->up || !r->registered) return;
  char val[160], px[16], id[8], inc[24];
  node_value(&r->self, val, sizeof val);
  snprintf(px, sizeof px, "%u", r->ttl_ms);
  snprintf(id, sizeof id, "%u", r->self.id);
  snprintf(inc, sizeof inc, "%" PRIu64, r->self.incarnation);
  const char *lv[] = {"1", r->k_self, val, px, inc};
  size_t ll[] = {1, strlen(r->k_self), strlen(val), strlen(px), strlen(inc)};
  call_t *lc = call_new(r, lease_done, SC_LEASE, 5, lv, ll);
  if (send_call(r, lc) != 0) call_free(lc);
  const char *av[] = {"SADD", r->k_all, id};
  size_t al[] = {4, strlen(r->k_all), strlen(id)};
  send_ff(r, 3, av, al);
  credis_poll(r);
}

void credis_poll(credis_t *r) {
  if (!r || r->closing || !r->up || !r->registered) return;
  if (r->poll_inflight) return; /* a slow Redis: one poll at a time */
  const char *pv[] = {"1", r->k_all, r->k_prefix};
  size_t pl[] = {1, strlen(r->k_all), strlen(r->k_prefix)};
  call_t *c = call_new(r, poll_done, SC_POLL, 3, pv, pl);
  if (send_call(r, c) != 0) {
    call_free(c);
    return;
  }
  r->poll_inflight = 1;
}

static void hb_cb(uv_timer_t *t) { heartbeat(t->data); }

void credis_register(credis_t *r, const credis_node_t *self, uint32_t heartbeat_ms, uint32_t ttl_ms) {
  if (!r || r->closing) return;
  r->self = *self;
  r->self.host[sizeof r->self.host - 1] = '\0';
  for (char *p = r->self.host; *p; p++)
    if (*p == ' ' || *p == '\t' || *p == '\n') *p = '_'; /* the value is space-separated */
  if (!r->self.host[0]) snprintf(r->self.host, sizeof r->self.host, "-");
  r->hb_ms = heartbeat_ms ? heartbeat_ms : 1;
  r->ttl_ms = ttl_ms ? ttl_ms : 1;
  xfree(r->k_self);
  r->k_self = xstrfmt("%s:{nodes}:n:%u", r->cluster, self->id);
  r->registered = 1;
  uv_timer_start(&r->hb_timer, hb_cb, r->hb_ms, r->hb_ms);
  heartbeat(r);
}

static void release_done(credis_t *r, call_t *c, redisReply *rep) {
  if (rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 0)
    log_info("redis %s: node id %s was not ours any more: left to its holder", r->name, c->argv[6]);
  else if (is_error(rep, NULL))
    log_warn("redis %s: release: %s", r->name, rep->str);
}

void credis_deregister(credis_t *r) {
  if (!r || r->closing || !r->registered) return;
  r->registered = 0;
  uv_timer_stop(&r->hb_timer);
  if (!r->up) return;
  char id[8], inc[24];
  snprintf(id, sizeof id, "%u", r->self.id);
  snprintf(inc, sizeof inc, "%" PRIu64, r->self.incarnation);
  const char *dv[] = {"2", r->k_self, r->k_all, inc, id};
  size_t dl[] = {1, strlen(r->k_self), strlen(r->k_all), strlen(inc), strlen(id)};
  call_t *c = call_new(r, release_done, SC_RELEASE, 5, dv, dl);
  if (send_call(r, c) != 0) call_free(c);
}

/* ---- session directory --------------------------------------------------------------- */

static char *dir_key(credis_t *r, const char *bare) { return xstrfmt("%s:s:{%s}", r->cluster, bare); }

void credis_dir_set(credis_t *r, const char *bare, const char *resource, const credis_session_t *s) {
  if (!r || r->closing) return;
  char *key = dir_key(r, bare), val[96];
  snprintf(val, sizeof val, "%u %u %" PRIu64 " %d %d", s->node, s->thread, s->conn, s->priority,
           s->available ? 1 : 0);
  const char *av[] = {"HSET", key, resource, val};
  size_t al[] = {4, strlen(key), strlen(resource), strlen(val)};
  send_ff(r, 4, av, al);
  xfree(key);
}

void credis_dir_del(credis_t *r, const char *bare, const char *resource) {
  if (!r || r->closing) return;
  char *key = dir_key(r, bare);
  const char *av[] = {"HDEL", key, resource};
  size_t al[] = {4, strlen(key), strlen(resource)};
  send_ff(r, 3, av, al);
  xfree(key);
}

static void dir_done(credis_t *r, call_t *c, redisReply *rep) {
  if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements % 2) {
    if (rep) log_warn("redis %s: HGETALL: %s", r->name, is_error(rep, NULL) ? rep->str : "bad reply");
    c->dir_cb(c->ud, 0, NULL, NULL, 0);
    return;
  }
  size_t m = rep->elements / 2;
  const char **res = xcalloc(m ? m : 1, sizeof *res);
  credis_session_t *ss = xcalloc(m ? m : 1, sizeof *ss);
  int n = 0;
  for (size_t i = 0; i < m; i++) {
    redisReply *f = rep->element[2 * i], *v = rep->element[2 * i + 1];
    if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
    unsigned node, thread;
    int used = 0;
    credis_session_t *s = &ss[n];
    if (sscanf(v->str, "%u %u %" SCNu64 " %d %d%n", &node, &thread, &s->conn, &s->priority,
               &s->available, &used) != 5 ||
        (size_t)used != v->len || node > 65535 || thread > 65535)
      continue;
    s->node = (uint16_t)node;
    s->thread = (uint16_t)thread;
    res[n++] = f->str;
  }
  c->dir_cb(c->ud, 1, res, ss, n);
  xfree(res);
  xfree(ss);
}

void credis_dir_get(credis_t *r, const char *bare, credis_dir_cb cb, void *ud) {
  if (!r || r->closing) return;
  char *key = dir_key(r, bare);
  const char *av[] = {"HGETALL", key};
  size_t al[] = {7, strlen(key)};
  call_t *c = call_new(r, dir_done, -1, 2, av, al);
  c->dir_cb = cb;
  c->ud = ud;
  if (send_call(r, c) != 0) defer_fail(r, c);
  xfree(key);
}

/* ---- shard map ----------------------------------------------------------------------- */

/* The answer to the WAIT after a stored map: a replica has it (stored), or not (failed:
 * the writer tries again, and meets the same map (SAME) or its loss). */
static void map_wait_done(credis_t *r, call_t *c, redisReply *rep) {
  int ok = rep && rep->type == REDIS_REPLY_INTEGER && rep->integer >= 1;
  if (!ok)
    log_warn("redis %s: shard map epoch %" PRIu64 " stored but not yet on a replica: reported as not stored",
             r->name, c->epoch);
  if (c->pub_cb) c->pub_cb(c->ud, ok ? CREDIS_MAP_STORED : CREDIS_MAP_FAILED, ok ? c->epoch : 0);
}

static void map_put_done(credis_t *r, call_t *c, redisReply *rep) {
  long long res = -2, epoch = 0;
  if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 && rep->element[0]->type == REDIS_REPLY_INTEGER &&
      rep->element[1]->type == REDIS_REPLY_INTEGER && rep->element[1]->integer >= 0) {
    res = rep->element[0]->integer;
    epoch = rep->element[1]->integer;
  } else if (is_error(rep, NULL)) {
    log_warn("redis %s: shard map: %s", r->name, rep->str);
  } else if (rep) {
    log_warn("redis %s: shard map: unexpected reply to the epoch's compare-and-set", r->name);
  }
  /* On a Redis Cluster or behind Sentinel a primary may fail before the new map reached
   * its replica, which then takes over with the older map: the epoch would go back, and
   * another writer could store a different map under the same epoch. So a stored map is
   * reported only once a replica has it (WAIT 1); a primary without replicas cannot do
   * better than its own copy. */
  conn_t *cn = c->conn;
  if (res == CREDIS_MAP_STORED && r->addr.mode != REDIS_MODE_SINGLE && cn && cn->replicas > 0) {
    const char *av[] = {"WAIT", "1", WAIT_REPLICA_MS_S};
    size_t al[] = {4, 1, strlen(WAIT_REPLICA_MS_S)};
    call_t *w = call_new(r, map_wait_done, -1, 3, av, al);
    w->slot = c->slot; /* the primary that stored it */
    w->pub_cb = c->pub_cb;
    w->ud = c->ud;
    w->epoch = (uint64_t)epoch;
    dispatch(w);
    return;
  }
  if (c->pub_cb) c->pub_cb(c->ud, (int)res, (uint64_t)epoch);
}

void credis_shardmap_publish(credis_t *r, uint64_t base, const uint32_t *owner, uint32_t nshards,
                             credis_publish_cb cb, void *ud) {
  if (!r || r->closing) return;
  char ep[24], ns[16];
  snprintf(ep, sizeof ep, "%" PRIu64, base);
  snprintf(ns, sizeof ns, "%u", nshards);
  size_t vl = 4 * (size_t)nshards;
  char *val = xmalloc(vl + 1);
  unsigned char *p = (unsigned char *)val;
  for (uint32_t i = 0; i < nshards; i++, p += 4) {
    p[0] = (unsigned char)(owner[i] >> 24);
    p[1] = (unsigned char)(owner[i] >> 16);
    p[2] = (unsigned char)(owner[i] >> 8);
    p[3] = (unsigned char)owner[i];
  }
  const char *av[] = {"1", r->k_map, ep, ns, val};
  size_t al[] = {1, strlen(r->k_map), strlen(ep), strlen(ns), vl};
  call_t *c = call_new(r, map_put_done, SC_SHARDMAP, 5, av, al);
  c->pub_cb = cb;
  c->ud = ud;
  if (send_call(r, c) != 0) defer_fail(r, c);
  xfree(val);
}

static void map_get_done(credis_t *r, call_t *c, redisReply *rep) {
  if (rep && rep->type == REDIS_REPLY_NIL) {
    c->map_cb(c->ud, 1, 0, NULL, 0);
    return;
  }
  uint64_t epoch;
  unsigned n;
  int used = 0;
  if (!rep || rep->type != REDIS_REPLY_STRING ||
      sscanf(rep->str, "%" SCNu64 " %u\n%n", &epoch, &n, &used) != 2 || used <= 0 ||
      rep->str[used - 1] != '\n' || (size_t)used + 4 * (size_t)n != rep->len) {
    if (rep) log_warn("redis %s: shard map: unreadable value", r->name);
    c->map_cb(c->ud, 0, 0, NULL, 0);
    return;
  }
  uint32_t *own = xcalloc(n ? n : 1, sizeof *own);
  const unsigned char *p = (const unsigned char *)rep->str + used;
  for (unsigned i = 0; i < n; i++, p += 4)
    own[i] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
  c->map_cb(c->ud, 1, epoch, own, n);
  xfree(own);
}

void credis_shardmap_get(credis_t *r, credis_shardmap_cb cb, void *ud) {
  if (!r || r->closing) return;
  const char *av[] = {"GET", r->k_map};
  size_t al[] = {3, strlen(r->k_map)};
  call_t *c = call_new(r, map_get_done, -1, 2, av, al);
  c->map_cb = cb;
  c->ud = ud;
  if (send_call(r, c) != 0) defer_fail(r, c);
}

/* ---- claiming a node id at start (blocking) ------------------------------------------ */

/* The claim runs the asynchronous client (the same slot layer, Sentinel and script
 * loader) on a private loop of its own, until each answer is in. */
typedef struct sync_ctx {
  uv_loop_t loop;
  credis_t *r;
  int up, got;
  redisReply *rep; /* the last answer (owned here), NULL: none */
} sync_ctx_t;

static void sync_state(void *ud, int up) { ((sync_ctx_t *)ud)->up = up; }

static redisReply *dup_reply(const redisReply *rep) {
  if (!rep) return NULL;
  redisReply *d = xcalloc(1, sizeof *d);
  d->type = rep->type;
  d->integer = rep->integer;
  if (rep->str) {
    d->str = xmalloc(rep->len + 1);
    memcpy(d->str, rep->str, rep->len);
    d->str[rep->len] = '\0';
    d->len = rep->len;
  }
  return d; /* arrays are not needed by the claim */
}

static void dup_free(redisReply *d) {
  if (!d) return;
  xfree(d->str);
  xfree(d);
}

static void sync_done(credis_t *r, call_t *c, redisReply *rep) {
  sync_ctx_t *s = c->ud;
  dup_free(s->rep);
  s->rep = dup_reply(rep);
  s->got = 1;
}

static void sync_wake(uv_timer_t *t) { (void)t; }

/* Runs the private loop until *flag (the timer keeps UV_RUN_ONCE returning). */
static void sync_run(sync_ctx_t *s, int *flag) {
  uv_timer_t wake;
  uv_timer_init(&s->loop, &wake);
  uv_timer_start(&wake, sync_wake, 20, 20);
  while (!*flag) uv_run(&s->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&wake, NULL);
  uv_run(&s->loop, UV_RUN_NOWAIT);
}

/* One command (script >= 0: EVALSHA of it), once up: its answer in s->rep (NULL: the
 * connection failed). */
static redisReply *sync_cmd(sync_ctx_t *s, int script, int argc, const char **argv, const size_t *lens) {
  sync_run(s, &s->up);
  call_t *c = call_new(s->r, sync_done, script, argc, argv, lens);
  c->ud = s;
  s->got = 0;
  if (send_call(s->r, c) != 0) {
    call_free(c);
    dup_free(s->rep);
    s->rep = NULL;
    return NULL;
  }
  sync_run(s, &s->got);
  return s->rep;
}

static int sync_open(sync_ctx_t *s, const char *addr, const char *cluster, char **err);

static void sync_close(sync_ctx_t *s) {
  credis_close(s->r);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  uv_loop_close(&s->loop);
  dup_free(s->rep);
}

int credis_claim(const char *addr, const char *cluster, const credis_node_t *self, uint32_t ttl_ms,
                 credis_node_t *holder, char **err) {
  *err = NULL;
  memset(holder, 0, sizeof *holder);
  sync_ctx_t s;
  int rc = sync_open(&s, addr, cluster, err);
  if (rc != 0) return rc;
  char *key = xstrfmt("%s:{nodes}:n:%u", cluster, self->id), val[160], px[16];
  node_value(self, val, sizeof val);
  snprintf(px, sizeof px, "%u", ttl_ms ? ttl_ms : 1);
  rc = 1;
  char *seen = NULL;  /* the holder's value when first seen */
  long long last_pttl = 0;
  while (rc > 0) {
    const char *sv[] = {"SET", key, val, "NX", "PX", px};
    size_t sl[] = {3, strlen(key), strlen(val), 2, 2, strlen(px)};
    redisReply *rep = sync_cmd(&s, -1, 6, sv, sl);
    if (!rep) continue; /* lost the connection: again once up */
    if (rep->type == REDIS_REPLY_ERROR) {
      *err = xstrfmt("redis %s: %s", s.r->name, rep->str);
      rc = XMPP_EIO;
      break;
    }
    if (rep->type == REDIS_REPLY_STATUS) {
      rc = 0;
      break;
    }
    /* Held: by a live node, which refreshes it every heartbeat (its remaining time goes
     * up), or by a dead one, whose lease runs out within its TTL. */
    const char *gv[] = {"GET", key};
    size_t gl[] = {3, strlen(key)};
    rep = sync_cmd(&s, -1, 2, gv, gl);
    if (!rep) continue;
    char *g = rep->type == REDIS_REPLY_STRING ? xstrdup(rep->str) : NULL;
    const char *tv[] = {"PTTL", key};
    size_t tl[] = {4, strlen(key)};
    rep = sync_cmd(&s, -1, 2, tv, tl);
    long long pttl = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -2;
    if (g && pttl != -2) {
      char *entry = xstrfmt("%u %s", self->id, g);
      if (parse_node(entry, strlen(entry), holder) != 0) {
        holder->id = self->id;
        snprintf(holder->host, sizeof holder->host, "?");
      }
      xfree(entry);
      if (pttl == -1) {
        rc = XMPP_EEXIST; /* no expiry: set by hand? never ours to take */
      } else if (!seen) {
        seen = xstrdup(g);
        log_warn("cluster: node id %u is held by incarnation %" PRIu64 " at %s:%d (lease expires in %lld ms): "
                 "waiting to see whether that node is alive",
                 self->id, holder->incarnation, holder->host, holder->bus_port, pttl);
      } else if (strcmp(seen, g) != 0 || pttl > last_pttl) {
        rc = XMPP_EEXIST; /* refreshed (or taken by yet another one): alive */
      }
      last_pttl = pttl;
    }
    xfree(g);
    if (rc > 0) uv_sleep((unsigned)(pttl > 0 && pttl < 20 ? pttl : 20));
  }
  sync_close(&s);
  xfree(seen);
  xfree(key);
  return rc;
}

void credis_unclaim(const char *addr, const char *cluster, const credis_node_t *self) {
  sync_ctx_t s;
  char *why = NULL;
  if (sync_open(&s, addr, cluster, &why) != 0) {
    xfree(why);
    return;
  }
  char *key = xstrfmt("%s:{nodes}:n:%u", cluster, self->id), *all = xstrfmt("%s:{nodes}:all", cluster);
  char inc[24], id[8];
  snprintf(inc, sizeof inc, "%" PRIu64, self->incarnation);
  snprintf(id, sizeof id, "%u", self->id);
  const char *dv[] = {"2", key, all, inc, id};
  size_t dl[] = {1, strlen(key), strlen(all), strlen(inc), strlen(id)};
  /* best effort: one attempt once connected (the claim just succeeded) */
  sync_cmd(&s, SC_RELEASE, 5, dv, dl);
  sync_close(&s);
  xfree(key);
  xfree(all);
}

/* ---- life ---------------------------------------------------------------------------- */

static int cluster_ok(const char *c) {
  size_t n = c ? strlen(c) : 0;
  if (n == 0 || n > CLUSTER_MAX) return 0;
  for (; *c; c++)
    if (*c == '{' || *c == '}' || *c == ' ' || *c == '\t' || *c == '\n' || *c == '\r') return 0;
  return 1;
}

/* A credis_t, not connected yet; NULL with *err. */
static credis_t *make(uv_loop_t *loop, const char *addr, const char *cluster, const credis_cbs_t *cbs, void *ud,
                      char **err) {
  if (!cluster_ok(cluster)) {
    *err = xstrfmt("redis: bad cluster name '%s' (1..%d characters, no braces or spaces)", cluster ? cluster : "",
                   CLUSTER_MAX);
    return NULL;
  }
  credis_t *r = xcalloc(1, sizeof *r);
  if (redis_addr_parse(&r->addr, addr, err) != 0) {
    xfree(r);
    return NULL;
  }
  snprintf(r->name, sizeof r->name, "%s", r->addr.shown);
  if (SINGLE(r)) { /* as before: HOST:PORT without the db */
    if (r->addr.unix_path) snprintf(r->name, sizeof r->name, "unix:%s", r->addr.unix_path);
    else host_name(r->name, sizeof r->name, r->addr.host, r->addr.port);
  }
  rslots_map_init(&r->map);
  if (CLUSTERED(r))
    for (int i = 0; i < r->addr.nseeds && i < MAX_CONNS; i++)
      rslots_map_node(&r->map, r->addr.seed_host[i], r->addr.seed_port[i]);
  else if (SINGLE(r) && r->addr.host)
    rslots_map_node(&r->map, r->addr.host, r->addr.port);
  r->loop = loop;
  r->cluster = xstrdup(cluster);
  if (cbs) r->cbs = *cbs;
  r->ud = ud;
  r->backoff_ms = BACKOFF_MIN_MS;
  if (r->addr.mode == REDIS_MODE_SENTINEL) {
    r->sent = xcalloc(1, sizeof *r->sent);
    r->sent->r = r;
    r->sent->node = -1;
  }
  r->k_all = xstrfmt("%s:{nodes}:all", cluster);
  r->k_prefix = xstrfmt("%s:{nodes}:n:", cluster);
  r->k_map = xstrfmt("%s:{nodes}:shardmap", cluster);
  _Static_assert(SC_COUNT <= RSCRIPTS_MAX, "scripts");
  rscripts_init(&r->scripts, script_text, SC_COUNT);
  uv_timer_init(loop, &r->retry_timer);
  uv_timer_init(loop, &r->hb_timer);
  uv_timer_init(loop, &r->defer_timer);
  uv_timer_init(loop, &r->later_timer);
  uv_timer_init(loop, &r->watch_timer);
  r->retry_timer.data = r->hb_timer.data = r->defer_timer.data = r->later_timer.data = r->watch_timer.data = r;
  r->open_handles = 5;
  uv_timer_start(&r->watch_timer, watch_cb, WATCH_MS, WATCH_MS);
  uv_unref((uv_handle_t *)&r->watch_timer); /* a watch alone does not keep a loop running */
  int first = CLUSTERED(r) ? r->map.nnodes : 1;
  for (int i = 0; i < first; i++) conn_of(r, i);
  for (int i = 0; i < first; i++) start_connect(r->conns[i]);
  return r;
}

credis_t *credis_new(uv_loop_t *loop, const char *addr, const char *cluster, const credis_cbs_t *cbs,
                     void *ud) {
  char *err = NULL;
  credis_t *r = make(loop, addr, cluster, cbs, ud, &err);
  if (!r) {
    log_error("%s", err);
    xfree(err);
  }
  return r;
}

static int sync_open(sync_ctx_t *s, const char *addr, const char *cluster, char **err) {
  memset(s, 0, sizeof *s);
  uv_loop_init(&s->loop);
  static const credis_cbs_t cbs = {sync_state, NULL, NULL};
  s->r = make(&s->loop, addr, cluster, &cbs, s, err);
  if (!s->r) {
    uv_loop_close(&s->loop);
    return XMPP_EINVAL;
  }
  return 0;
}

static void handle_closed(uv_handle_t *h) {
  credis_t *r = h->data;
  if (--r->open_handles > 0) return;
  for (int i = 0; i < r->nconns; i++) {
    free_list(r->conns[i]->pending);
    xfree(r->conns[i]);
  }
  xfree(r->sent);
  xfree(r->swhy);
  rslots_map_free(&r->map);
  redis_addr_free(&r->addr);
  xfree(r->cluster);
  xfree(r->k_all);
  xfree(r->k_prefix);
  xfree(r->k_self);
  xfree(r->k_map);
  xfree(r);
}

static void finish_close(credis_t *r) {
  if (r->retry_closed) return;
  r->retry_closed = 1;
  uv_close((uv_handle_t *)&r->retry_timer, handle_closed);
}

/* The graceful disconnect took too long: drop what is left. */
static void drain_timeout_cb(uv_timer_t *t) {
  credis_t *r = t->data;
  for (int i = 0; i < r->nconns; i++) drop_context(r->conns[i]);
  finish_close(r);
}

void credis_close(credis_t *r) {
  if (!r || r->closing) return;
  r->closing = 1;
  r->up = 0;
  free_list(r->deferred);
  r->deferred = r->deferred_tail = NULL;
  free_list(r->later);
  r->later = NULL;
  uv_close((uv_handle_t *)&r->hb_timer, handle_closed);
  uv_close((uv_handle_t *)&r->defer_timer, handle_closed);
  uv_close((uv_handle_t *)&r->later_timer, handle_closed);
  uv_close((uv_handle_t *)&r->watch_timer, handle_closed);
  uv_timer_stop(&r->retry_timer);
  if (r->sent) sentinel_drop(r, 0); /* a query in flight: nothing to send */
  /* Graceful where connected: what is buffered (a deregistration, directory writes)
   * still goes out; hiredis closes once the replies are in, then on_disconnect counts
   * the drain down. From a reply callback hiredis defers this until the callback
   * returns. r lives until then: its last handle closes in finish_close. */
  r->draining = 1; /* held while the loop below runs */
  for (int i = 0; i < r->nconns; i++) {
    conn_t *cn = r->conns[i];
    free_list(cn->pending);
    cn->pending = cn->pending_tail = NULL;
    redisAsyncContext *ac = cn->ac;
    if (ac && (ac->c.flags & REDIS_CONNECTED)) {
      r->draining++;
      redisAsyncDisconnect(ac); /* may call on_disconnect at once */
    } else if (ac) {
      cn->ac = NULL;
      redisAsyncFree(ac); /* still connecting: nothing to send */
    }
  }
  if (--r->draining == 0) {
    finish_close(r);
    return;
  }
  uv_timer_start(&r->retry_timer, drain_timeout_cb, CLOSE_DRAIN_MS, 0);
}

void credis_get_stats(const credis_t *r, credis_stats_t *st) { *st = r->st; }

int credis_is_up(const credis_t *r) { return r && r->up; }

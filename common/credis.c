/* credis: the cluster's view of Redis through hiredis' asynchronous API on a libuv loop
 * (credis.h). One credis_t per loop thread; no locks.
 *
 * Key layout. Every key carries a Redis Cluster hash tag, so one Redis or a Redis Cluster
 * holds it unchanged (docs/cluster.md, "Redis key layout"). <C> is the cluster name.
 *   <C>:{nodes}:n:<id>    string  "role workers incarnation host port shards", SET PX ttl at every
 *                                 heartbeat: the key lives while the node does.
 *   <C>:{nodes}:all       set     node ids ever registered (SADD at every heartbeat). The poll
 *                                 is one EVALSHA (EVAL on NOSCRIPT) of POLL_LUA: GET of each
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
 *
 * Connection. States: no context (waiting on the retry timer), connecting (context, not
 * up), up (connected; AUTH, SELECT, SCRIPT LOAD of both scripts, PING answered). Commands are sent only when up, else
 * dropped and counted. The retry timer doubles as the connect/handshake timeout. Back-off
 * 100 ms doubling to 2 s, reset when up. One log line per outage ("unreachable: reason;
 * retrying") and one when it ends ("back").
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
 *    (hiredis defers a free or disconnect asked there) or after r->ac was cleared.
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
#include "common/redis_slots.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define CONNECT_TIMEOUT_MS 2000 /* connect + AUTH/SELECT/PING */
#define CLOSE_DRAIN_MS 1000  /* credis_close: how long buffered commands may take to go out */
#define CLUSTER_MAX 64

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
/* What to do with a reply (NULL: no reply, the connection failed or was never up). */
typedef void (*call_done_fn)(credis_t *r, call_t *c, redisReply *rep);

/* One command whose reply matters (scripts, reads). Owned by hiredis' callback list while
 * in flight, by the deferred list while waiting to fail on the next loop turn. */
struct call {
  credis_t *r;
  call_done_fn done;
  call_t *next;       /* deferred list */
  int script;         /* SC_*, or -1 */
  int argc;           /* the script's arguments after "EVALSHA sha": kept for the EVAL retry */
  char **argv;
  size_t *lens;
  int retried;        /* EVAL already sent after NOSCRIPT */
  uint64_t sent_ns;   /* uv_hrtime when it was sent: its round trip (metrics) */
  /* the caller's */
  credis_dir_cb dir_cb;
  credis_shardmap_cb map_cb;
  credis_publish_cb pub_cb;
  credis_nodes_cb nodes_cb;
  void *ud;
};

struct credis {
  uv_loop_t *loop;
  redis_addr_t addr;
  char name[300];        /* "127.0.0.1:6379", "[::1]:6379", "unix:/path": for log lines */
  char *cluster;
  credis_cbs_t cbs;
  void *ud;

  redisAsyncContext *ac; /* NULL while waiting to reconnect */
  int up;
  int ever_up;
  int outage_logged;     /* "unreachable" logged for the current outage */
  int closing;
  int hs_failed;         /* a handshake reply was an error on this connection */
  int first_write;       /* the handshake was queued inside redisAsyncHandleWrite */
  uint32_t backoff_ms;
  uv_timer_t retry_timer;
  uv_timer_t hb_timer;
  uv_timer_t defer_timer;
  int open_handles;
  int retry_closed;

  /* registry */
  int registered;
  credis_node_t self;
  uint32_t hb_ms, ttl_ms;
  int poll_inflight;
  char *k_all, *k_prefix, *k_self, *k_map;

  char sha[SC_COUNT][41];
  call_t *deferred, *deferred_tail;
  credis_stats_t st;
};

static void start_connect(credis_t *r);
static void heartbeat(credis_t *r);
static int parse_node(const char *s, size_t len, credis_node_t *nd);
static int cluster_ok(const char *c);
static void retry_cb(uv_timer_t *t);
static void finish_close(credis_t *r);

/* ---- small helpers -------------------------------------------------------------------- */

/* The address of ONE Redis: the cluster directory does not follow a Redis Cluster's
 * redirections nor Sentinel yet (the store does: docs/storage-redis.md). */
static int single_addr(redis_addr_t *a, const char *addr, char **err) {
  if (redis_addr_parse(a, addr, err) != 0) return -1;
  if (a->mode != REDIS_MODE_SINGLE) {
    *err = xstrfmt("cluster.redis '%s': the cluster directory needs one Redis server (HOST:PORT or "
                   "unix:/PATH); cluster: and sentinel: are for storage.redis only",
                   a->shown);
    redis_addr_free(a);
    return -1;
  }
  return 0;
}

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

/* ---- event hooks (see "hiredis 0.14.1 notes") ----------------------------------------- */

static void ev_poll_cb(uv_poll_t *h, int status, int events) {
  redisLibuvEvents *p = h->data;
  /* An error (POLLERR): libuv has stopped the poll; let hiredis do what it was waiting
   * for, so that it meets the socket error and reports it. */
  int ev = status ? p->events : events;
  credis_t *r = p->context ? p->context->data : NULL;
  if (p->context && (ev & UV_READABLE)) redisAsyncHandleRead(p->context);
  if (p->context && (ev & UV_WRITABLE)) {
    redisAsyncContext *ac = p->context;
    if ((ac->c.flags & REDIS_CONNECTED) && sdslen(ac->c.obuf) > 0) r->st.writes++;
    redisAsyncHandleWrite(ac); /* may free ac */
    if (r->first_write) {      /* the connect completed in there and the handshake went out */
      r->first_write = 0;
      r->st.writes++;
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

/* ---- connection ------------------------------------------------------------------------ */

static void schedule_retry(credis_t *r) {
  if (r->closing) return;
  uint32_t d = r->backoff_ms;
  r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
  uv_timer_start(&r->retry_timer, retry_cb, d, 0);
}

/* A connection attempt failed or the connection was lost. */
static void report_down(credis_t *r, const char *reason) {
  if (!r->outage_logged) {
    log_warn("redis %s unreachable: %s; retrying", r->name, reason);
    r->outage_logged = 1;
  } else {
    log_debug("redis %s: still unreachable: %s", r->name, reason);
  }
}

/* Forgets the current context and frees it (from a timer callback: no hiredis frame above
 * us). Pending calls get a NULL reply; onDisconnect is ignored (r->ac no longer matches). */
static void drop_context(credis_t *r) {
  redisAsyncContext *ac = r->ac;
  r->ac = NULL;
  int was_up = r->up;
  r->up = 0;
  if (ac) redisAsyncFree(ac);
  if (was_up && !r->closing && r->cbs.on_state) r->cbs.on_state(r->ud, 0);
}

static void retry_cb(uv_timer_t *t) {
  credis_t *r = t->data;
  if (r->closing) return;
  if (r->ac) { /* connect or handshake took too long */
    report_down(r, r->ac->c.flags & REDIS_CONNECTED ? "no answer to the handshake"
                                                      : "connect timed out");
    drop_context(r);
    if (r->closing) return;
    schedule_retry(r);
    return;
  }
  start_connect(r);
}

static void mark_up(credis_t *r) {
  r->up = 1;
  r->hs_failed = 0;
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

/* Replies to AUTH, SELECT, SCRIPT LOAD, PING; privdata: 1 on the last (PING). */
static void hs_cb(redisAsyncContext *ac, void *reply, void *privdata) {
  credis_t *r = ac->data;
  redisReply *rep = reply;
  if (r->closing || ac != r->ac) return;
  count_reply(r, rep);
  if (!rep) return; /* the connection died: onDisconnect follows */
  if (rep->type == REDIS_REPLY_ERROR) {
    if (!r->hs_failed) {
      char why[300];
      snprintf(why, sizeof why, "handshake: %s", rep->str ? rep->str : "error");
      report_down(r, why);
      r->hs_failed = 1;
      redisAsyncDisconnect(ac); /* deferred by hiredis until the callbacks are done */
    }
    return;
  }
  if (privdata && !r->hs_failed) mark_up(r);
}

static void on_connect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  credis_t *r = ac->data;
  if (r->closing || ac != r->ac) return;
  if (status != REDIS_OK) {
    /* hiredis frees the context when this returns */
    r->ac = NULL;
    uv_timer_stop(&r->retry_timer);
    report_down(r, ac->errstr ? ac->errstr : "connect failed");
    schedule_retry(r);
    return;
  }
  /* First commands on the connection: AUTH, SELECT, then PING whose answer means up. */
  if (r->addr.password) {
    const char *av[] = {"AUTH", r->addr.password};
    size_t al[] = {4, strlen(r->addr.password)};
    if (redisAsyncCommandArgv(ac, hs_cb, NULL, 2, av, al) == REDIS_OK) r->st.commands++;
  }
  if (r->addr.db) {
    char d[16];
    snprintf(d, sizeof d, "%d", r->addr.db);
    const char *av[] = {"SELECT", d};
    size_t al[] = {6, strlen(d)};
    if (redisAsyncCommandArgv(ac, hs_cb, NULL, 2, av, al) == REDIS_OK) r->st.commands++;
  }
  /* The scripts are cached at once so that EVALSHA does not meet NOSCRIPT: its EVAL retry
   * would reach Redis after the commands issued behind it (a SCRIPT FLUSH still can). */
  for (int i = 0; i < SC_COUNT; i++) {
    const char *sv[] = {"SCRIPT", "LOAD", script_text[i]};
    size_t sl[] = {6, 4, strlen(script_text[i])};
    if (redisAsyncCommandArgv(ac, hs_cb, NULL, 3, sv, sl) == REDIS_OK) r->st.commands++;
  }
  const char *av[] = {"PING"};
  size_t al[] = {4};
  if (redisAsyncCommandArgv(ac, hs_cb, (void *)1, 1, av, al) == REDIS_OK) r->st.commands++;
  r->first_write = 1;
}

static void on_disconnect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  credis_t *r = ac->data;
  if (ac != r->ac) return; /* our own redisAsyncFree */
  /* hiredis frees the context when this returns */
  if (r->closing) { /* credis_close's graceful disconnect is over */
    r->ac = NULL;
    finish_close(r);
    return;
  }
  r->ac = NULL;
  int was_up = r->up;
  r->up = 0;
  r->poll_inflight = 0;
  uv_timer_stop(&r->retry_timer);
  if (!r->hs_failed)
    report_down(r, status == REDIS_OK ? "connection closed"
                                      : (ac->errstr && *ac->errstr ? ac->errstr : "connection lost"));
  r->hs_failed = 0;
  if (was_up && r->cbs.on_state) r->cbs.on_state(r->ud, 0);
  if (r->closing) return;
  schedule_retry(r);
}

static void start_connect(credis_t *r) {
  redisAsyncContext *ac = r->addr.unix_path ? redisAsyncConnectUnix(r->addr.unix_path)
                                            : redisAsyncConnect(r->addr.host, r->addr.port);
  if (!ac || ac->err) {
    report_down(r, ac && ac->errstr ? ac->errstr : "cannot allocate a context");
    if (ac) redisAsyncFree(ac); /* no event library attached yet */
    schedule_retry(r);
    return;
  }
  ac->data = r;
  if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
    ac->ev.cleanup = NULL; /* the adapter's data is not set: nothing to clean */
    redisAsyncFree(ac);
    report_down(r, "cannot attach to the loop");
    schedule_retry(r);
    return;
  }
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  r->ac = ac;
  r->hs_failed = 0;
  uv_timer_start(&r->retry_timer, retry_cb, CONNECT_TIMEOUT_MS, 0);
}

/* ---- sending ------------------------------------------------------------------------- */

/* Sends one command when up. 0, or -1 when not sent (counted as dropped). */
static int send_argv(credis_t *r, redisCallbackFn *fn, void *priv, int argc, const char **argv,
                     const size_t *lens) {
  if (r->closing) return -1;
  if (!r->up || !r->ac || redisAsyncCommandArgv(r->ac, fn, priv, argc, argv, lens) != REDIS_OK) {
    r->st.dropped++;
    return -1;
  }
  r->st.commands++;
  return 0;
}

/* Reply of a fire-and-forget command. */
static void ff_cb(redisAsyncContext *ac, void *reply, void *privdata) {
  credis_t *r = privdata;
  if (r->closing) return;
  redisReply *rep = reply;
  count_reply(r, rep);
  if (is_error(rep, NULL)) log_warn("redis %s: %s", r->name, rep->str);
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

static void call_cb(redisAsyncContext *ac, void *reply, void *privdata);

/* EVALSHA (or EVAL) of c's script with c's arguments. */
static int send_script(credis_t *r, call_t *c, int by_body) {
  int n = c->argc + 2;
  const char *av[8];
  size_t al[8];
  av[0] = by_body ? "EVAL" : "EVALSHA";
  al[0] = strlen(av[0]);
  av[1] = by_body ? script_text[c->script] : r->sha[c->script];
  al[1] = strlen(av[1]);
  for (int i = 0; i < c->argc; i++) {
    av[2 + i] = c->argv[i];
    al[2 + i] = c->lens[i];
  }
  c->sent_ns = uv_hrtime();
  return send_argv(r, call_cb, c, n, av, al);
}

static void call_cb(redisAsyncContext *ac, void *reply, void *privdata) {
  call_t *c = privdata;
  credis_t *r = c->r;
  redisReply *rep = reply;
  if (r->closing) {
    call_free(c);
    return;
  }
  count_reply(r, rep);
  if (rep && c->sent_ns) metrics_redis_rtt(METRICS_REDIS_CLUSTER, (uv_hrtime() - c->sent_ns) / 1000);
  if (c->script >= 0 && !c->retried && is_error(rep, "NOSCRIPT")) {
    /* Redis restarted or SCRIPT FLUSH: send the body, which also caches it again */
    c->retried = 1;
    if (send_script(r, c, 1) == 0) return;
    rep = NULL;
  }
  c->done(r, c, rep);
  call_free(c);
}

/* A new call for a script: argv (argc <= 6) copied. */
static call_t *call_new(credis_t *r, call_done_fn done, int script, int argc, const char **argv,
                        const size_t *lens) {
  call_t *c = xcalloc(1, sizeof *c);
  c->r = r;
  c->done = done;
  c->script = script;
  c->argc = argc;
  if (argc) {
    c->argv = xcalloc((size_t)argc, sizeof *c->argv);
    c->lens = xcalloc((size_t)argc, sizeof *c->lens);
    for (int i = 0; i < argc; i++) {
      c->argv[i] = xmalloc(lens[i] + 1);
      memcpy(c->argv[i], argv[i], lens[i]);
      c->argv[i][lens[i]] = '\0';
      c->lens[i] = lens[i];
    }
  }
  return c;
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
  if (send_script(r, c, 0) != 0) defer_fail(r, c);
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
  if (send_script(r, lc, 0) != 0) call_free(lc);
  const char *av[] = {"SADD", r->k_all, id};
  size_t al[] = {4, strlen(r->k_all), strlen(id)};
  send_argv(r, ff_cb, r, 3, av, al);
  credis_poll(r);
}

void credis_poll(credis_t *r) {
  if (!r || r->closing || !r->up || !r->registered) return;
  if (r->poll_inflight) return; /* a slow Redis: one poll at a time */
  const char *pv[] = {"1", r->k_all, r->k_prefix};
  size_t pl[] = {1, strlen(r->k_all), strlen(r->k_prefix)};
  call_t *c = call_new(r, poll_done, SC_POLL, 3, pv, pl);
  if (send_script(r, c, 0) != 0) {
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
    log_info("redis %s: node id %s was not ours any more: left to its holder", r->name, c->argv[4]);
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
  if (send_script(r, c, 0) != 0) call_free(c);
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
  send_argv(r, ff_cb, r, 4, av, al);
  xfree(key);
}

void credis_dir_del(credis_t *r, const char *bare, const char *resource) {
  if (!r || r->closing) return;
  char *key = dir_key(r, bare);
  const char *av[] = {"HDEL", key, resource};
  size_t al[] = {4, strlen(key), strlen(resource)};
  send_argv(r, ff_cb, r, 3, av, al);
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
  call_t *c = call_new(r, dir_done, -1, 0, NULL, NULL);
  c->dir_cb = cb;
  c->ud = ud;
  char *key = dir_key(r, bare);
  const char *av[] = {"HGETALL", key};
  size_t al[] = {7, strlen(key)};
  c->sent_ns = uv_hrtime();
  if (send_argv(r, call_cb, c, 2, av, al) != 0) defer_fail(r, c);
  xfree(key);
}

/* ---- shard map ----------------------------------------------------------------------- */

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
  if (send_script(r, c, 0) != 0) defer_fail(r, c);
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
  call_t *c = call_new(r, map_get_done, -1, 0, NULL, NULL);
  c->map_cb = cb;
  c->ud = ud;
  const char *av[] = {"GET", r->k_map};
  size_t al[] = {3, strlen(r->k_map)};
  c->sent_ns = uv_hrtime();
  if (send_argv(r, call_cb, c, 2, av, al) != 0) defer_fail(r, c);
}

/* ---- claiming a node id at start (blocking) ------------------------------------------ */

/* A blocking connection (AUTH, SELECT done), or NULL with *why set (caller frees). */
static redisContext *sync_connect(const redis_addr_t *a, char **why) {
  struct timeval tv = {2, 0};
  redisContext *c = a->unix_path ? redisConnectUnixWithTimeout(a->unix_path, tv)
                                 : redisConnectWithTimeout(a->host, a->port, tv);
  if (!c || c->err) {
    *why = xstrdup(c && c->errstr[0] ? c->errstr : "cannot connect");
    if (c) redisFree(c);
    return NULL;
  }
  redisSetTimeout(c, tv);
  redisReply *rep = NULL;
  if (a->password) rep = redisCommand(c, "AUTH %s", a->password);
  if (rep && rep->type == REDIS_REPLY_ERROR) *why = xstrfmt("AUTH: %s", rep->str);
  if (rep) freeReplyObject(rep);
  rep = NULL;
  if (!*why && a->db) rep = redisCommand(c, "SELECT %d", a->db);
  if (rep && rep->type == REDIS_REPLY_ERROR) *why = xstrfmt("SELECT: %s", rep->str);
  if (rep) freeReplyObject(rep);
  if (!*why && c->err) *why = xstrdup(c->errstr);
  if (*why) {
    redisFree(c);
    return NULL;
  }
  return c;
}

int credis_claim(const char *addr, const char *cluster, const credis_node_t *self, uint32_t ttl_ms,
                 credis_node_t *holder, char **err) {
  *err = NULL;
  memset(holder, 0, sizeof *holder);
  if (!cluster_ok(cluster)) {
    *err = xstrfmt("bad cluster name '%s'", cluster ? cluster : "");
    return XMPP_EINVAL;
  }
  redis_addr_t a;
  if (single_addr(&a, addr, err) != 0) return XMPP_EINVAL;
  char *key = xstrfmt("%s:{nodes}:n:%u", cluster, self->id), val[160], px[16];
  node_value(self, val, sizeof val);
  snprintf(px, sizeof px, "%u", ttl_ms ? ttl_ms : 1);
  redisContext *c = NULL;
  uint32_t backoff = BACKOFF_MIN_MS;
  int outage_logged = 0, rc = 1;
  char *seen = NULL;  /* the holder's value when first seen */
  long long last_pttl = 0;
  while (rc > 0) {
    char *why = NULL;
    if (!c && !(c = sync_connect(&a, &why))) {
      if (!outage_logged) log_warn("redis %s unreachable: %s; retrying (claiming node id %u)", a.shown, why, self->id);
      outage_logged = 1;
      xfree(why);
      uv_sleep(backoff);
      backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
      continue;
    }
    if (outage_logged) log_info("redis %s back", a.shown);
    outage_logged = 0;
    backoff = BACKOFF_MIN_MS;
    redisReply *rep = redisCommand(c, "SET %s %s NX PX %s", key, val, px);
    if (!rep || c->err) { /* lost the connection: again */
      if (rep) freeReplyObject(rep);
      redisFree(c);
      c = NULL;
      continue;
    }
    int taken = rep->type == REDIS_REPLY_STATUS;
    if (rep->type == REDIS_REPLY_ERROR) {
      *err = xstrfmt("redis %s: %s", a.shown, rep->str);
      rc = XMPP_EIO;
    }
    freeReplyObject(rep);
    if (taken) rc = 0;
    if (rc <= 0) break;
    /* Held: by a live node, which refreshes it every heartbeat (its remaining time goes
     * up), or by a dead one, whose lease runs out within its TTL. */
    redisAppendCommand(c, "GET %s", key);
    redisAppendCommand(c, "PTTL %s", key);
    redisReply *g = NULL, *t = NULL;
    if (redisGetReply(c, (void **)&g) != REDIS_OK || redisGetReply(c, (void **)&t) != REDIS_OK) {
      if (g) freeReplyObject(g);
      redisFree(c);
      c = NULL;
      continue;
    }
    long long pttl = t->type == REDIS_REPLY_INTEGER ? t->integer : -2;
    if (g->type == REDIS_REPLY_STRING && pttl != -2) {
      char *entry = xstrfmt("%u %s", self->id, g->str);
      if (parse_node(entry, strlen(entry), holder) != 0) {
        holder->id = self->id;
        snprintf(holder->host, sizeof holder->host, "?");
      }
      xfree(entry);
      if (pttl == -1) {
        rc = XMPP_EEXIST; /* no expiry: set by hand? never ours to take */
      } else if (!seen) {
        seen = xstrdup(g->str);
        log_warn("cluster: node id %u is held by incarnation %" PRIu64 " at %s:%d (lease expires in %lld ms): "
                 "waiting to see whether that node is alive",
                 self->id, holder->incarnation, holder->host, holder->bus_port, pttl);
      } else if (strcmp(seen, g->str) != 0 || pttl > last_pttl) {
        rc = XMPP_EEXIST; /* refreshed (or taken by yet another one): alive */
      }
      last_pttl = pttl;
    }
    freeReplyObject(g);
    freeReplyObject(t);
    if (rc > 0) uv_sleep((unsigned)(pttl > 0 && pttl < 20 ? pttl : 20));
  }
  if (c) redisFree(c);
  xfree(seen);
  xfree(key);
  redis_addr_free(&a);
  return rc;
}

void credis_unclaim(const char *addr, const char *cluster, const credis_node_t *self) {
  redis_addr_t a;
  char *why = NULL;
  if (!cluster_ok(cluster) || single_addr(&a, addr, &why) != 0) {
    xfree(why);
    return;
  }
  redisContext *c = sync_connect(&a, &why);
  if (c) {
    char *key = xstrfmt("%s:{nodes}:n:%u", cluster, self->id), *all = xstrfmt("%s:{nodes}:all", cluster);
    char inc[24], id[8];
    snprintf(inc, sizeof inc, "%" PRIu64, self->incarnation);
    snprintf(id, sizeof id, "%u", self->id);
    redisReply *rep = redisCommand(c, "EVAL %s 2 %s %s %s %s", script_text[SC_RELEASE], key, all, inc, id);
    if (rep) freeReplyObject(rep);
    redisFree(c);
    xfree(key);
    xfree(all);
  }
  xfree(why);
  redis_addr_free(&a);
}

/* ---- life ---------------------------------------------------------------------------- */

static int cluster_ok(const char *c) {
  size_t n = c ? strlen(c) : 0;
  if (n == 0 || n > CLUSTER_MAX) return 0;
  for (; *c; c++)
    if (*c == '{' || *c == '}' || *c == ' ' || *c == '\t' || *c == '\n' || *c == '\r') return 0;
  return 1;
}

credis_t *credis_new(uv_loop_t *loop, const char *addr, const char *cluster, const credis_cbs_t *cbs,
                     void *ud) {
  if (!cluster_ok(cluster)) {
    log_error("redis: bad cluster name '%s' (1..%d characters, no braces or spaces)",
              cluster ? cluster : "", CLUSTER_MAX);
    return NULL;
  }
  credis_t *r = xcalloc(1, sizeof *r);
  char *err = NULL;
  if (single_addr(&r->addr, addr, &err) != 0) {
    log_error("%s", err);
    xfree(err);
    xfree(r);
    return NULL;
  }
  if (r->addr.unix_path) snprintf(r->name, sizeof r->name, "unix:%s", r->addr.unix_path);
  else if (strchr(r->addr.host, ':')) snprintf(r->name, sizeof r->name, "[%s]:%d", r->addr.host, r->addr.port);
  else snprintf(r->name, sizeof r->name, "%s:%d", r->addr.host, r->addr.port);
  r->loop = loop;
  r->cluster = xstrdup(cluster);
  if (cbs) r->cbs = *cbs;
  r->ud = ud;
  r->backoff_ms = BACKOFF_MIN_MS;
  r->k_all = xstrfmt("%s:{nodes}:all", cluster);
  r->k_prefix = xstrfmt("%s:{nodes}:n:", cluster);
  r->k_map = xstrfmt("%s:{nodes}:shardmap", cluster);
  for (int i = 0; i < SC_COUNT; i++) rslots_script_sha(script_text[i], r->sha[i]); /* the store's too */
  uv_timer_init(loop, &r->retry_timer);
  uv_timer_init(loop, &r->hb_timer);
  uv_timer_init(loop, &r->defer_timer);
  r->retry_timer.data = r->hb_timer.data = r->defer_timer.data = r;
  r->open_handles = 3;
  start_connect(r);
  return r;
}

static void handle_closed(uv_handle_t *h) {
  credis_t *r = h->data;
  if (--r->open_handles > 0) return;
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
  redisAsyncContext *ac = r->ac;
  r->ac = NULL;
  if (ac) redisAsyncFree(ac);
  finish_close(r);
}

void credis_close(credis_t *r) {
  if (!r || r->closing) return;
  r->closing = 1;
  r->up = 0;
  call_t *c = r->deferred;
  r->deferred = r->deferred_tail = NULL;
  while (c) {
    call_t *next = c->next;
    call_free(c);
    c = next;
  }
  uv_close((uv_handle_t *)&r->hb_timer, handle_closed);
  uv_close((uv_handle_t *)&r->defer_timer, handle_closed);
  uv_timer_stop(&r->retry_timer);
  redisAsyncContext *ac = r->ac;
  if (ac && (ac->c.flags & REDIS_CONNECTED)) {
    /* Graceful: what is buffered (a deregistration, directory writes) still goes out;
     * hiredis closes once the replies are in, then on_disconnect calls finish_close.
     * From a reply callback hiredis defers this until the callback returns. r lives
     * until then: its last handle closes in finish_close. */
    uv_timer_start(&r->retry_timer, drain_timeout_cb, CLOSE_DRAIN_MS, 0);
    redisAsyncDisconnect(ac); /* may call on_disconnect at once */
    return;
  }
  r->ac = NULL;
  if (ac) redisAsyncFree(ac); /* still connecting: nothing to send */
  finish_close(r);
}

void credis_get_stats(const credis_t *r, credis_stats_t *st) { *st = r->st; }

int credis_is_up(const credis_t *r) { return r && r->up; }

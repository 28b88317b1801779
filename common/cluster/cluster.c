/* The cluster thread: links to other nodes, the node registry, the shard map, failover.
 * Design and guarantees: docs/cluster.md; interface: cluster.h. Everything below runs on
 * the cluster thread's loop except the bus transport's two calls (remote_send and
 * remote_pending). */
#include "common/cluster/cluster.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/cluster/bus_link.h"
#include "common/credis.h"
#include "common/err.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/cluster/shardmap.h"
#include "common/stanza.h"

#define TICK_MS 200
#define MAX_PENDING 200000 /* frames waiting for a shard owner or a node to appear */

typedef struct peer {
  credis_node_t info;
  bus_link_t *out; /* our link to it: NULL when this node never sends to it */
  int blocked;     /* out is over its high watermark (counted in bus->congested) */
  int restart_done; /* its restart was handled when its link came back (on_up) */
  uint64_t done_hash; /* an edge: the map it last confirmed to this router (BUS_MAP_DONE) */
  /* a router's graceful stop (docs/cluster.md "A router's graceful stop") */
  int leaving;     /* it announced BUS_LEAVING (this incarnation): out of the map */
  int echo_wait;   /* this router answered its BUS_LEAVING and waits for its echo */
  int left_ok;     /* this node is leaving, and the peer answered BUS_LEFT */
} peer_t;

/* An edge node whose sessions this router ended because it left the registry: if the
 * same incarnation joins again (it was stalled past its lease, or cut off from Redis),
 * its clients may still be connected, and it is asked to announce them again. */
typedef struct ended {
  uint16_t id;
  uint64_t incarnation;
} ended_t;
#define MAX_ENDED 1024 /* remembered edges that left (the oldest forgotten first) */

typedef struct pend {
  bus_msg_t *m;
  uint64_t since;
} pend_t;

struct cluster {
  const xmpp_config_t *cfg;
  bus_t *bus;
  int role;
  credis_node_t self;
  uv_loop_t loop;
  uv_thread_t thread;
  bus_queue_t in;      /* frames from local threads for other nodes */
  uv_async_t stop;
  uv_async_t leave;    /* cluster_leave: hand the shards over before stopping */
  uv_timer_t tick;
  credis_t *redis;
  bus_listener_t *listener;
  bus_link_config_t lcfg;
  peer_t *peers;       /* live peers (not self), sorted by id */
  int npeers;
  uint32_t *map;       /* the shard map as this thread computed it last */
  uint32_t *prev;      /* the one before (NULL until the map first changed) */
  uint64_t epoch;       /* this node's count of map changes (its log lines) */
  uint64_t map_epoch;   /* the global epoch of the map in Redis, as last seen */
  int map_synced;       /* Redis holds this node's map (a router's: docs/cluster.md "Shard map epoch") */
  int map_inflight;     /* a publish is on its way */
  uint64_t redis_up_ms; /* when Redis last came back (0: never up) */
  pend_t *pend;
  size_t npend, cap_pend;
  arena_t arena;
  int stopping;
  int leaving;         /* deregistered: this node's own router no longer counts */
  int polled;          /* the registry was read once */
  int refused;         /* it found nodes with another server.shards at its first read: stops */
  uint64_t *mismatch;  /* incarnations of nodes already reported for another server.shards */
  size_t nmismatch;
  ended_t *ended;      /* edges whose sessions this router ended as they left (ended_t) */
  size_t nended;
  uint64_t failed, rerouted;
  int redis_up;          /* the cluster's Redis connection is up (on_redis_state) */
  metrics_block_t *metrics; /* the links' and registry's metrics, published by tick_cb */
  buf_t mtext[2];        /* ... rendered here first (text, OpenMetrics) */
  /* the map handshake (docs/cluster.md "Shard moves without detours") */
  uint64_t map_gen;     /* BUS_MAPs pushed to the local threads */
  uint64_t map_hash;    /* shardmap_hash of map */
  uint64_t *edge_gen;   /* [nedges]: the BUS_MAP generation each edge thread has handled */
  uint64_t done_gen;    /* the generation this node's edges last confirmed to the routers */
  uint64_t self_done;   /* role all: the map this node's own edges confirmed (its done_hash) */
  uint64_t settled_gen; /* router: the generation last announced settled to the workers */
  int left_all;         /* leaving: every peer answered BUS_LEFT (atomic; cluster_leave_done) */
  struct {
    bus_link_t *out;      /* the link to a router that left (BUS_LEAVING) and then the registry: */
    uint64_t until;       /* closed once its queue (BUS_LEFT last) is acknowledged, or then */
    credis_node_t info;
    int echo_wait;        /* its echo of our BUS_LEFT is not back yet (check_settled) */
  } *draining;
  size_t ndraining;
};

static const bus_link_cbs_t link_cbs;
static void check_settled(cluster_t *c);
static void on_leaving(cluster_t *c, peer_t *p, uint64_t incarnation);
static void on_left(cluster_t *c, peer_t *p, uint16_t from, int64_t arg);
static void check_left(cluster_t *c);

/* ---- what clients notice of cluster events: counted, one line a second per kind ---- */

static log_tally_t tallies[CLUSTER_EV_COUNT] = {
    [CLUSTER_EV_BOUNCED] = LOG_TALLY(LOG_WARN, "cluster", "messages for connections that could not be reached sent back "
                                               "to their shard (another resource or offline storage)"),
    [CLUSTER_EV_UNREACHABLE] = LOG_TALLY(LOG_WARN, "cluster", "stanzas answered <recipient-unavailable/>: no router "
                                                   "reachable for them"),
    [CLUSTER_EV_DROPPED] = LOG_TALLY(LOG_WARN, "cluster", "frames dropped that could not be delivered nor answered"),
    [CLUSTER_EV_UNKNOWN_SESSION] = LOG_TALLY(LOG_WARN, "cluster", "stanzas from sessions their router does not know "
                                                       "(a shard move, an edge that missed its lease) answered "
                                                       "<recipient-unavailable/>"),
    [CLUSTER_EV_HOLD_ENDED] = LOG_TALLY(LOG_WARN, "cluster", "stanzas held during a shard move handled before their "
                                                  "session was announced (the hold ran out: cluster.hold_ms or "
                                                  "cluster.hold_bytes; messages stored offline)"),
};

void cluster_event(cluster_event_t ev, const char *detail_fmt, ...) {
  char detail[256];
  va_list ap;
  va_start(ap, detail_fmt);
  vsnprintf(detail, sizeof detail, detail_fmt, ap);
  va_end(ap);
  log_tally(&tallies[ev], "%s", detail);
}

void cluster_event_n(cluster_event_t ev, unsigned long long n, const char *detail_fmt, ...) {
  char detail[256];
  va_list ap;
  va_start(ap, detail_fmt);
  vsnprintf(detail, sizeof detail, detail_fmt, ap);
  va_end(ap);
  log_tally_n(&tallies[ev], n, "%s", detail);
}

unsigned long long cluster_event_total(cluster_event_t ev) { return log_tally_total(&tallies[ev]); }

/* A metrics source: the tallies above (atomics; the metrics thread). */
static void tally_metrics(metrics_out_t *o, void *ud) {
  static const char *const names[] = {"bounced", "unreachable", "dropped", "unknown_session", "hold_ended"};
  _Static_assert(sizeof names / sizeof *names == CLUSTER_EV_COUNT, "a label for every cluster event");
  metrics_family(o, "xmppd_cluster_events_total", "counter",
                 "Client-visible effects of cluster events (docs/cluster.md \"Logs\"): messages bounced to their "
                 "shard, stanzas answered <recipient-unavailable/> (no router; unknown session), frames dropped");
  for (int i = 0; i < CLUSTER_EV_COUNT; i++) {
    char labels[48];
    snprintf(labels, sizeof labels, "event=\"%s\"", names[i]);
    metrics_sample_u64(o, "xmppd_cluster_events_total", labels, cluster_event_total((cluster_event_t)i));
  }
}

/* ---- where a frame goes ---- */

static peer_t *find_peer(cluster_t *c, uint16_t id) {
  int lo = 0, hi = c->npeers - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (c->peers[mid].info.id == id) return &c->peers[mid];
    if (c->peers[mid].info.id < id) lo = mid + 1;
    else hi = mid - 1;
  }
  return NULL;
}

static void fail_frame(cluster_t *c, bus_msg_t *m, const char *why);
static void push_local_ctl(cluster_t *c, uint8_t kind, int64_t arg, int workers, int edges);
static void dispatch(cluster_t *c, bus_msg_t *m);
static void set_blocked(cluster_t *c, peer_t *p, int blocked);

static void pend_frame(cluster_t *c, bus_msg_t *m, uint64_t since) {
  if (c->npend >= MAX_PENDING || c->stopping) {
    fail_frame(c, m, "no route and the waiting list is full");
    return;
  }
  if (c->npend == c->cap_pend) {
    c->cap_pend = c->cap_pend ? c->cap_pend * 2 : 256;
    c->pend = xrealloc(c->pend, c->cap_pend * sizeof *c->pend);
  }
  c->pend[c->npend++] = (pend_t){m, since ? since : uv_now(&c->loop)};
}

/* Sends m where it belongs now: a local queue, or the link of the node that owns it.
 * A frame for a shard with no live owner yet, or for a node not (yet) in the registry,
 * waits, at most max_wait_ms counted from since (0: now). */
static void dispatch_since(cluster_t *c, bus_msg_t *m, uint64_t since) {
  bus_t *b = c->bus;
  bus_frame_t f;
  m->next = NULL;
  if (bus_msg_frame(m, &f) != 0) {
    bus_msg_free(m);
    return;
  }
  uint16_t node;
  if (bus_router_kind(f.kind)) {
    uint32_t shard = bus_frame_shard(b, &f);
    uint32_t o = c->map[shard];
    if (!o) {
      pend_frame(c, m, since);
      return;
    }
    node = BUS_OWNER_NODE(o);
    uint32_t was = c->prev ? c->prev[shard] : 0;
    if (node != b->node && BUS_OWNER_NODE(was) == b->node && b->nworkers && !(f.flags & BUS_F_FORWARDED) &&
        !c->leaving) {
      /* the shard was ours until the last change: through its old worker, which hands
       * its sessions over first (BUS_MAP is ahead in its queue), then passes this on
       * (not when leaving: the workers stop soon after) */
      o = was;
      node = b->node;
    }
    if (node == b->node) {
      if (b->nworkers) bus_queue_push(&b->worker_q[BUS_OWNER_WORKER(o) % (uint32_t)b->nworkers], m);
      else fail_frame(c, m, "shard owned by this node, which has no router");
      return;
    }
  } else {
    node = f.dst.node;
    if (node == b->node) {
      if (f.dst.thread < b->nedges) bus_queue_push(&b->edge_q[f.dst.thread], m);
      else bus_msg_free(m);
      return;
    }
  }
  peer_t *p = find_peer(c, node);
  if (p && p->out) bus_link_send(p->out, m); /* on failure on_overflow has it */
  else pend_frame(c, m, since); /* the map is about to change, or the node to appear */
}

static void dispatch(cluster_t *c, bus_msg_t *m) { dispatch_since(c, m, 0); }

/* A frame re-routed after a map change (handed back by a link, or waiting for an owner)
 * that a local edge thread sent for one of its sessions goes back through that thread:
 * the thread has the BUS_MAP of the change ahead of it in its queue, so the session's
 * re-announcement reaches the new owner first (else the stanza arrives for a session
 * the owner does not know yet, and is dropped as stale). 1 when taken. */
static int back_to_edge(cluster_t *c, bus_msg_t *m) {
  bus_t *b = c->bus;
  bus_frame_t f;
  if (bus_msg_frame(m, &f) != 0) return 0;
  if (f.kind != BUS_C2S && f.kind != BUS_SESSION_OPEN && f.kind != BUS_SESSION_CLOSE) return 0;
  if (f.src.node != b->node || f.src.thread >= b->nedges || !c->map[bus_frame_shard(b, &f)]) return 0;
  m->next = NULL;
  bus_queue_push(&b->edge_q[f.src.thread], m);
  return 1;
}

/* A frame that cannot be delivered (RFC 6120 §8.3.3.11 <recipient-unavailable/>: the
 * failure is temporary, a retry may work). Never an error for an error. */
static void fail_frame(cluster_t *c, bus_msg_t *m, const char *why) {
  bus_frame_t f;
  if (bus_msg_frame(m, &f) != 0) {
    bus_msg_free(m);
    return;
  }
  c->failed++;
  xnode_t *st = NULL;
  if (f.payload_len) xnode_decode(&c->arena, f.payload, f.payload_len, 256, &st);
  const char *type = st ? xnode_attr(st, "type") : NULL;
  int is_msg = st && !strcmp(st->name, "message");
  int answerable = st && !(type && !strcmp(type, "error")) &&
                   (is_msg || (!strcmp(st->name, "iq") && type && (!strcmp(type, "get") || !strcmp(type, "set"))));
  if (f.kind == BUS_DELIVER && is_msg && !c->stopping) {
    /* its connection is unreachable: back to the recipient's shard, which picks another
     * resource or offline storage (as for a connection that closed) */
    bus_hdr_set_kind(m->data, BUS_BOUNCE);
    cluster_event(CLUSTER_EV_BOUNCED, "%.*s to node %u (%s)", (int)f.to_len, f.to, f.dst.node, why);
    dispatch(c, m);
    arena_reset(&c->arena);
    return;
  }
  if ((f.kind == BUS_C2S || f.kind == BUS_ROUTE) && answerable) {
    xnode_t *e = stanza_error_reply(&c->arena, st, "wait", "recipient-unavailable");
    buf_t p;
    buf_init(&p);
    xnode_encode(e, &p);
    bus_frame_t r = {0};
    r.flags = BUS_F_SERVER;
    r.from = f.to_len ? f.to : c->cfg->domain;
    r.from_len = f.to_len ? f.to_len : strlen(c->cfg->domain);
    r.to = f.from;
    r.to_len = f.from_len;
    r.payload = p.data;
    r.payload_len = p.len;
    if (f.kind == BUS_C2S) {
      /* the sender's own shard is unreachable: straight to its connection */
      r.kind = BUS_DELIVER;
      r.dst = f.src;
    } else {
      r.kind = BUS_ROUTE;
    }
    bus_msg_t *em = bus_msg_new(&r);
    buf_free(&p);
    cluster_event(CLUSTER_EV_UNREACHABLE, "%s from %.*s to %.*s (%s)", st->name, (int)f.from_len, f.from,
                  (int)f.to_len, f.to, why);
    bus_msg_free(m);
    arena_reset(&c->arena);
    dispatch(c, em);
    return;
  }
  cluster_event(CLUSTER_EV_DROPPED, "kind %u %s from %.*s (%s)", f.kind, st ? st->name : "-", (int)f.from_len,
                f.from, why);
  bus_msg_free(m);
  arena_reset(&c->arena);
}

/* ---- links ---- */

static void on_frames(bus_link_t *l, void *ud, bus_msg_t *batch) {
  cluster_t *c = ud;
  while (batch) {
    bus_msg_t *m = batch;
    batch = m->next;
    if (m->len >= BUS_HEADER_LEN && bus_hdr_kind(m->data) == BUS_SESSIONS_ENDED) {
      /* a router ended this node's sessions while it was away: every edge thread
       * announces those of its sessions that router owns again (edge/route.c) */
      if (c->bus->nedges) {
        log_warn("cluster: router node %u had ended this node's sessions (it was missing from the registry "
                 "longer than cluster.node_ttl_ms: stalled, or cut off from Redis): announcing them again",
                 bus_link_peer(l));
        push_local_ctl(c, BUS_SESSIONS_ENDED, bus_link_peer(l), 0, 1);
      }
      bus_msg_free(m);
      continue;
    }
    if (m->len >= BUS_HEADER_LEN && (bus_hdr_kind(m->data) == BUS_LEAVING || bus_hdr_kind(m->data) == BUS_LEFT)) {
      bus_frame_t f;
      peer_t *p = find_peer(c, bus_link_peer(l));
      if (bus_msg_frame(m, &f) == 0) {
        if (f.kind == BUS_LEAVING) on_leaving(c, p, f.src.conn);
        else on_left(c, p, bus_link_peer(l), f.arg);
      }
      bus_msg_free(m);
      continue;
    }
    if (m->len >= BUS_HEADER_LEN && bus_hdr_kind(m->data) == BUS_MAP_DONE) {
      /* an edge node announced its sessions for the map arg (to this incarnation) */
      bus_frame_t f;
      peer_t *p = find_peer(c, bus_link_peer(l));
      if (p && bus_msg_frame(m, &f) == 0 && f.dst.conn == c->self.incarnation) {
        p->done_hash = (uint64_t)f.arg;
        check_settled(c);
      }
      bus_msg_free(m);
      continue;
    }
    dispatch(c, m);
  }
}

static void on_overflow(bus_link_t *l, void *ud, bus_msg_t *m) {
  cluster_t *c = ud;
  bus_frame_t f;
  m->next = NULL;
  if (m->len >= BUS_HEADER_LEN && (bus_hdr_kind(m->data) == BUS_MAP_DONE || bus_hdr_kind(m->data) == BUS_LEAVING ||
                                   bus_hdr_kind(m->data) == BUS_LEFT)) {
    bus_msg_free(m); /* for a node that went away: nothing waits for it */
    return;
  }
  peer_t *p = c->stopping ? NULL : find_peer(c, bus_link_peer(l));
  if (p && p->out && p->out != l) { /* its link was replaced (the node moved): that one */
    dispatch(c, m);
    return;
  }
  if (bus_msg_frame(m, &f) == 0 && bus_router_kind(f.kind) && !c->stopping) {
    uint32_t o = c->map[bus_frame_shard(c->bus, &f)];
    if (o && BUS_OWNER_NODE(o) != bus_link_peer(l)) { /* its shard moved meanwhile */
      c->rerouted++;
      if (!back_to_edge(c, m)) dispatch(c, m);
      return;
    }
  }
  fail_frame(c, m, "bus link down");
}

static void on_up(bus_link_t *l, void *ud, uint16_t node, uint8_t role) {
  cluster_t *c = ud;
  peer_t *known = find_peer(c, node);
  /* only the link the peer dialled (it carries the peer's frames); ours to it comes up
   * in its own time, maybe after new sessions arrived on the other one */
  int theirs = !(known && known->out == l);
  if (theirs && (role & ROLE_EDGE) && bus_link_peer_restarted(l) && !c->stopping) {
    /* An edge restarted: its old sessions end now, before any frame of the new process
     * (they follow on this link), not at the next registry poll, which would also end
     * the sessions its new clients opened meanwhile. */
    log_warn("cluster: node %u restarted (bus link from a new incarnation)", node);
    push_local_ctl(c, BUS_NODE_DOWN, node, 1, 0);
    if (known) known->restart_done = 1;
  }
  log_info("cluster: bus link to node %u (%s) up", node,
           role == BUS_ROLE_EDGE ? "edge" : role == BUS_ROLE_ROUTER ? "router" : "edge+router");
}

static void on_down(bus_link_t *l, void *ud, const char *why) {
  log_info("cluster: bus link to node %u down: %s", bus_link_peer(l), why);
}

static void set_blocked(cluster_t *c, peer_t *p, int blocked) {
  if (p->blocked == blocked) return;
  p->blocked = blocked;
  atomic_fetch_add_explicit(&c->bus->congested, blocked ? 1 : -1, memory_order_relaxed);
  log_info("cluster: bus link to node %u %s", p->info.id,
           blocked ? "over its high watermark: edges stop reading clients" : "drained: edges read again");
}

/* Flow control: a link whose queue passes its high watermark pauses the inputs that
 * feed it, here the edges' reading from clients (docs/cluster.md, "Bounds"). */
static void on_writable(bus_link_t *l, void *ud, int writable) {
  cluster_t *c = ud;
  for (int i = 0; i < c->npeers; i++)
    if (c->peers[i].out == l) set_blocked(c, &c->peers[i], !writable);
}

/* Node ids are leases (docs/cluster.md): a HELLO is accepted from the incarnation that
 * holds the id in this node's last view of the registry, never from another process
 * claiming the same id, whose link would replace the live node's and end its sessions
 * as a "restart". A view can be stale (the peer just took over its id after the old
 * holder's lease ran out, or just joined): the registry is read again at once, and the
 * peer's next attempt (back-off from 100 ms) meets the fresh view. */
static const char *check_peer(void *ud, uint16_t node, uint8_t role, uint64_t node_inc) {
  cluster_t *c = ud;
  static __thread char why[160];
  if (!node_inc) return NULL; /* an older version sends none: not checked (rolling upgrade) */
  peer_t *p = find_peer(c, node);
  if (p && p->info.incarnation == node_inc) return NULL;
  for (size_t i = 0; i < c->ndraining; i++) /* a router that left: its BUS_LEFT goes out */
    if (c->draining[i].info.id == node && c->draining[i].info.incarnation == node_inc) return NULL;
  credis_poll(c->redis);
  if (p)
    snprintf(why, sizeof why, "incarnation %llx does not hold node id %u (incarnation %llx at %s:%d does)",
             (unsigned long long)node_inc, node, (unsigned long long)p->info.incarnation, p->info.host,
             p->info.bus_port);
  else
    snprintf(why, sizeof why, "~incarnation %llx: node id %u is not in the registry (yet)",
             (unsigned long long)node_inc, node);
  return why;
}

static const bus_link_cbs_t link_cbs = {on_up, on_down, on_frames, on_overflow, on_writable, check_peer};

/* ---- membership and the shard map ---- */

static void push_local_ctl(cluster_t *c, uint8_t kind, int64_t arg, int workers, int edges) {
  bus_frame_t f = {0};
  f.kind = kind;
  f.arg = arg;
  if (workers)
    for (int i = 0; i < c->bus->nworkers; i++) bus_queue_push(&c->bus->worker_q[i], bus_msg_new(&f));
  if (edges)
    for (int i = 0; i < c->bus->nedges; i++) bus_queue_push(&c->bus->edge_q[i], bus_msg_new(&f));
}

static int needs_link(const cluster_t *c, const credis_node_t *n) {
  /* edges send to routers; routers send to everyone; edges never talk to each other */
  return (c->role & ROLE_ROUTER) || (n->role & ROLE_ROUTER);
}

static void peer_gone(cluster_t *c, peer_t *p, const char *why) {
  /* a graceful stop (BUS_LEAVING came first) is a normal event: not a warning */
  if (p->leaving) log_info("cluster: node %u (%s:%d) %s", p->info.id, p->info.host, p->info.bus_port, why);
  else log_warn("cluster: node %u (%s:%d) %s", p->info.id, p->info.host, p->info.bus_port, why);
  if (p->info.role & ROLE_EDGE) push_local_ctl(c, BUS_NODE_DOWN, p->info.id, 1, 0);
}

/* The edge p left the registry and this router's workers end its sessions (peer_gone):
 * remembered, in case the same process comes back (ended_take). */
static void ended_add(cluster_t *c, const peer_t *p) {
  if (!(p->info.role & ROLE_EDGE) || !c->bus->nworkers) return;
  if (c->nended == MAX_ENDED) memmove(c->ended, c->ended + 1, --c->nended * sizeof *c->ended);
  if (!c->ended) c->ended = xcalloc(MAX_ENDED, sizeof *c->ended);
  c->ended[c->nended++] = (ended_t){p->info.id, p->info.incarnation};
}

/* Node x joined: 1 when it is an edge whose sessions this router ended as it left, the
 * same incarnation (it was stalled or cut off, not restarted: its clients may still be
 * connected). Forgotten either way: a new incarnation has none of the old sessions. */
static int ended_take(cluster_t *c, const credis_node_t *x) {
  for (size_t i = 0; i < c->nended; i++)
    if (c->ended[i].id == x->id) {
      int same = c->ended[i].incarnation == x->incarnation;
      memmove(c->ended + i, c->ended + i + 1, (c->nended - i - 1) * sizeof *c->ended);
      c->nended--;
      return same;
    }
  return 0;
}

static void recompute_map(cluster_t *c, const credis_node_t *nodes, int n, int restarted_router) {
  shardmap_router_t *r = xcalloc((size_t)n + 1, sizeof *r);
  int nr = 0;
  for (int i = 0; i < n; i++)
    if (nodes[i].role & ROLE_ROUTER) r[nr++] = (shardmap_router_t){nodes[i].id, nodes[i].workers};
  uint32_t *next = xcalloc(c->bus->nshards, sizeof *next);
  shardmap_compute(c->bus->nshards, r, nr, next);
  int changed = memcmp(next, c->map, c->bus->nshards * sizeof *next) != 0;
  if (changed) {
    uint32_t moved = 0;
    for (uint32_t s = 0; s < c->bus->nshards; s++) {
      moved += next[s] != c->map[s];
      atomic_store_explicit(&c->bus->owner[s], next[s], memory_order_relaxed);
    }
    if (!c->prev) c->prev = xcalloc(c->bus->nshards, sizeof *c->prev);
    memcpy(c->prev, c->map, c->bus->nshards * sizeof *next);
    memcpy(c->map, next, c->bus->nshards * sizeof *next);
    c->epoch++;
    c->map_synced = 0;
    c->map_hash = shardmap_hash(c->bus->nshards, c->map);
    log_info("cluster: shard map change %llu of this node: %d routers, %u of %u shards moved",
             (unsigned long long)c->epoch, nr, moved, c->bus->nshards);
  }
  if (changed || restarted_router) {
    bus_frame_t f = {0};
    f.kind = BUS_MAP;
    f.arg = restarted_router;
    f.src.conn = ++c->map_gen; /* echoed by each edge thread once handled (BUS_MAP_DONE) */
    for (int i = 0; i < c->bus->nworkers; i++) bus_queue_push(&c->bus->worker_q[i], bus_msg_new(&f));
    for (int i = 0; i < c->bus->nedges; i++) bus_queue_push(&c->bus->edge_q[i], bus_msg_new(&f));
  }
  if (!nr) c->map_synced = 1; /* no router: nothing to publish (xmppctl sees the owners dead) */
  xfree(next);
  xfree(r);
}

/* The shard map in Redis, for operators and tools, under one global, monotonic epoch
 * (docs/cluster.md, "Shard map epoch"): every router whose map is not the one stored
 * writes it with a compare-and-set on the epoch it last saw there. Refused (another map at
 * a newer epoch: this node had not seen it), it adopts that epoch and tries again after
 * its next registry read, so the last view of the live routers wins and a restarted
 * router, whose first attempt knows no epoch, is never left behind a stale one. */
static void map_published(void *ud, int result, uint64_t epoch) {
  cluster_t *c = ud;
  c->map_inflight = 0;
  if (result == CREDIS_MAP_FAILED) return; /* Redis down: again after it is back */
  if (epoch > c->map_epoch) c->map_epoch = epoch;
  if (result == CREDIS_MAP_REFUSED) {
    log_info("cluster: shard map epoch %llu in Redis is newer than this node's view: written again after the next "
             "registry read if still different",
             (unsigned long long)epoch);
    return;
  }
  if (result == CREDIS_MAP_STORED)
    log_info("cluster: shard map epoch %llu published (change %llu of this node)", (unsigned long long)epoch,
             (unsigned long long)c->epoch);
  c->map_synced = 1;
}

static void publish_map(cluster_t *c) {
  if (!(c->role & ROLE_ROUTER) || c->map_synced || c->map_inflight || c->stopping || c->refused || !c->polled)
    return;
  c->map_inflight = 1;
  credis_shardmap_publish(c->redis, c->map_epoch, c->map, c->bus->nshards, map_published, c);
}

/* Every node must have the same server.shards: with another count, a node maps JIDs to
 * other shards and disagrees with the rest on every owner (frames would go round in
 * circles). A node that finds such nodes at its first registry read refuses to join
 * (it stops, exit status 2: it is the one that was just (re)configured); nodes already
 * running leave such a node out of everything, saying so once per incarnation. */
static void on_live_nodes(cluster_t *c, const credis_node_t *nodes, int n);

static int shards_differ(cluster_t *c, const credis_node_t *x) {
  if (x->shards == c->bus->nshards || x->shards == 0) return 0; /* 0: an older node, count unknown */
  for (size_t i = 0; i < c->nmismatch; i++)
    if (c->mismatch[i] == x->incarnation) return 1;
  c->mismatch = xrealloc(c->mismatch, (c->nmismatch + 1) * sizeof *c->mismatch);
  c->mismatch[c->nmismatch++] = x->incarnation;
  log_error("cluster: node %u (%s:%d) has server.shards = %u, this node %u: every node must have the same; %s",
            x->id, x->host, x->bus_port, x->shards, c->bus->nshards,
            c->polled ? "it is left out" : "this node refuses to join and stops");
  return 1;
}

static void on_nodes(void *ud, const credis_node_t *all, int nall) {
  cluster_t *c = ud;
  if (c->stopping || c->refused) return;
  credis_node_t *nodes = xcalloc((size_t)nall + 1, sizeof *nodes);
  int n = 0, differ = 0;
  for (int i = 0; i < nall; i++) {
    if (all[i].id != c->bus->node && shards_differ(c, &all[i])) differ = 1;
    else nodes[n++] = all[i];
  }
  if (differ && !c->polled) {
    c->refused = 1;
    xfree(nodes);
    credis_deregister(c->redis);
    uv_kill(uv_os_getpid(), SIGTERM); /* the main thread's orderly shutdown */
    return;
  }
  c->polled = 1;
  on_live_nodes(c, nodes, n);
  xfree(nodes);
}

/* Frames that were waiting for an owner, after a map change. */
static void redispatch_pending(cluster_t *c) {
  size_t np = c->npend;
  pend_t *pv = c->pend;
  c->pend = NULL;
  c->npend = c->cap_pend = 0;
  for (size_t i = 0; i < np; i++)
    if (!back_to_edge(c, pv[i].m)) dispatch_since(c, pv[i].m, pv[i].since);
  xfree(pv);
}

/* ---- a router's graceful stop (docs/cluster.md "A router's graceful stop") ----
 *
 * The leaving router sends BUS_LEAVING on each of its links before anything it passes
 * on, so each node takes it out of its map when that frame arrives (not at its next
 * registry poll, up to a heartbeat later, while the others send it frames it must pass
 * on, and a router whose map still names it sends them back: frames went round in
 * circles until that poll, or were failed when the router stopped first). Each node
 * answers BUS_LEFT on its own link to the leaving router, behind what it sent there
 * before; a router also waits, before its hold may settle, for the leaving router's echo
 * of that BUS_LEFT, behind what it passed back of those frames. The leaving router stops
 * once every node answered (bounded by xmppd). */

/* The map now, from the peers this node knows (no registry read): after BUS_LEAVING. */
static void remap_now(cluster_t *c) {
  credis_node_t *live = xcalloc((size_t)c->npeers + 1, sizeof *live);
  int n = 0;
  for (int i = 0; i < c->npeers; i++)
    if (!c->peers[i].leaving) live[n++] = c->peers[i].info;
  if (!c->leaving) live[n++] = c->self;
  recompute_map(c, live, n, 0);
  xfree(live);
  redispatch_pending(c);
  check_settled(c);
  publish_map(c);
}

static void send_left(cluster_t *c, peer_t *p, int64_t arg) {
  if (!p->out) return;
  bus_frame_t f = {0};
  f.kind = BUS_LEFT;
  f.arg = arg;
  f.src.node = c->bus->node;
  f.dst.node = p->info.id;
  bus_link_send(p->out, bus_msg_new(&f));
}

static void on_leaving(cluster_t *c, peer_t *p, uint64_t incarnation) {
  if (!p || p->leaving || p->info.incarnation != incarnation || c->stopping || c->refused) return;
  log_info("cluster: router node %u leaves (graceful stop): its shards move now", p->info.id);
  p->leaving = 1;
  p->echo_wait = (c->role & ROLE_ROUTER) && c->bus->nworkers && p->out;
  remap_now(c);
  send_left(c, p, 0); /* behind what this node sent it before */
}

/* Done leaving: every peer answered, and what this node passed on is written and
 * acknowledged (a frame still queued when the node stops could only be failed). */
static void check_left(cluster_t *c) {
  if (!c->leaving || c->stopping) return;
  for (int i = 0; i < c->npeers; i++) {
    if (!c->peers[i].out) continue;
    if (!c->peers[i].left_ok) return;
    bus_link_stats_t st;
    bus_link_get_stats(c->peers[i].out, &st);
    if (st.queued_frames) return;
  }
  if (!__atomic_load_n(&c->left_all, __ATOMIC_RELAXED))
    log_info("cluster: every node took this node out of its shard map");
  __atomic_store_n(&c->left_all, 1, __ATOMIC_RELAXED);
}

static void on_left(cluster_t *c, peer_t *p, uint16_t from, int64_t arg) {
  if (!p) {
    /* a router that left the registry since: its echo still counts for the hold */
    for (size_t i = 0; i < c->ndraining; i++)
      if (arg == 1 && c->draining[i].info.id == from && c->draining[i].echo_wait) {
        c->draining[i].echo_wait = 0;
        check_settled(c);
      }
    return;
  }
  if (arg == 0 && c->leaving && !c->stopping) {
    /* what that node sent here before is passed on; the echo goes behind it */
    p->left_ok = 1;
    if (p->info.role & ROLE_ROUTER) send_left(c, p, 1);
    check_left(c);
  } else if (arg == 1 && p->echo_wait) {
    p->echo_wait = 0;
    check_settled(c);
  }
}

static void on_live_nodes(cluster_t *c, const credis_node_t *nodes, int n) {
  /* Just after Redis came back (maybe empty: restarted without persistence), nodes are
   * still re-registering: for one TTL a node missing from the list is not yet dead. */
  int grace = uv_now(&c->loop) - c->redis_up_ms < (uint64_t)c->cfg->node_ttl_ms;
  peer_t *next = xcalloc((size_t)n + (size_t)c->npeers + 1, sizeof *next);
  int nn = 0, restarted = 0;
  credis_node_t *live = xcalloc((size_t)n + (size_t)c->npeers + 2, sizeof *live);
  int nlive = 0;
  int self_seen = 0;
  for (int i = 0; i < n; i++) {
    const credis_node_t *x = &nodes[i];
    if (x->id == c->bus->node) {
      self_seen = 1;
      if (!c->leaving) live[nlive++] = c->self; /* our own view of ourselves */
      continue;
    }
    peer_t *old = find_peer(c, x->id);
    /* a router that said it leaves (BUS_LEAVING) is out of the map even if this read
     * raced its deregistration */
    if (!(old && old->leaving && old->info.incarnation == x->incarnation)) live[nlive++] = *x;
    if (old && old->info.incarnation != x->incarnation) {
      /* restarted: whatever it held is gone (its sessions, or its shards' state). The
       * sessions of an edge (or edge+router) were ended already if its link came back
       * first (on_up): ending them again would end those its new process opened since.
       * A router half's shards are re-announced through `restarted` below. */
      if (old->restart_done)
        log_info("cluster: node %u restarted (new incarnation in the registry)", old->info.id);
      else peer_gone(c, old, "restarted");
      old->restart_done = 0;
      if (x->role & ROLE_ROUTER) restarted = x->id;
      old->info.incarnation = x->incarnation;
      /* the link it dialled, if still up, is the old incarnation's: it goes (and its
       * process, if alive, is refused from now on: check_peer) */
      bus_link_t *in = c->listener ? bus_listener_link(c->listener, x->id) : NULL;
      if (in && bus_link_is_up(in) && bus_link_peer_node_inc(in) && bus_link_peer_node_inc(in) != x->incarnation)
        bus_link_reset(in);
    }
    if (old && (strcmp(old->info.host, x->host) != 0 || old->info.bus_port != x->bus_port)) {
      /* it came back at another address (e.g. bus_port = 0): a new link there first, so
       * that what the old one hands back on closing goes out on the new one */
      log_info("cluster: node %u now at %s:%d (was %s:%d)", x->id, x->host, x->bus_port, old->info.host,
               old->info.bus_port);
      bus_link_t *stale = old->out;
      set_blocked(c, old, 0);
      old->info = *x;
      old->out = needs_link(c, x) ? bus_link_connect(&c->loop, x->host, x->bus_port, c->bus->node,
                                                     (uint8_t)c->role, &c->lcfg, &link_cbs, c)
                                  : NULL;
      if (stale) bus_link_close(stale);
    }
    if (old) {
      next[nn++] = *old;
      old->info.id = 0; /* taken */
      continue;
    }
    peer_t p = {.info = *x};
    log_info("cluster: node %u joined (%s, %s:%d)", x->id,
             x->role == ROLE_EDGE ? "edge" : x->role == ROLE_ROUTER ? "router" : "edge+router", x->host, x->bus_port);
    if (needs_link(c, x)) {
      p.out = bus_link_connect(&c->loop, x->host, x->bus_port, c->bus->node, (uint8_t)c->role, &c->lcfg, &link_cbs, c);
      if (!p.out) log_error("cluster: cannot link to node %u at %s:%d", x->id, x->host, x->bus_port);
    }
    if (ended_take(c, x) && p.out) {
      /* Our workers ended its sessions when it left (NODE_DOWN, ahead in their queues
       * of anything it sends from now on): it announces those it still holds again */
      log_warn("cluster: node %u is back (same incarnation) after this router ended its sessions: asking it to "
               "announce them again",
               x->id);
      bus_frame_t e = {0};
      e.kind = BUS_SESSIONS_ENDED;
      e.src.node = c->bus->node;
      e.dst.node = x->id;
      bus_link_send(p.out, bus_msg_new(&e)); /* waits for the link to come up */
    }
    next[nn++] = p;
  }
  if (!self_seen && !c->leaving) live[nlive++] = c->self; /* our registration is on its way */
  /* peers that left */
  peer_t *gone = NULL;
  int ngone = 0;
  for (int i = 0; i < c->npeers; i++) {
    peer_t *p = &c->peers[i];
    if (!p->info.id) continue;
    if (grace) { /* kept for now */
      next[nn++] = *p;
      if (!p->leaving) live[nlive++] = p->info;
      continue;
    }
    if (!gone) gone = xcalloc((size_t)c->npeers, sizeof *gone);
    gone[ngone++] = *p;
  }
  /* sorted by id for find_peer */
  for (int i = 1; i < nn; i++)
    for (int j = i; j > 0 && next[j - 1].info.id > next[j].info.id; j--) {
      peer_t t = next[j];
      next[j] = next[j - 1];
      next[j - 1] = t;
    }
  xfree(c->peers);
  c->peers = next;
  c->npeers = nn;
  /* the new map first, so that frames handed back by the links of dead routers go to
   * the new owners */
  recompute_map(c, live, nlive, restarted);
  for (int i = 0; i < ngone; i++) {
    set_blocked(c, &gone[i], 0);
    peer_gone(c, &gone[i], gone[i].leaving ? "left the registry (its graceful stop)"
                                           : "left the registry (stopped, or missed its heartbeats)");
    ended_add(c, &gone[i]);
    if (gone[i].out && gone[i].leaving) {
      /* its BUS_LEFT (and what was sent before it) still goes out: the leaving router
       * waits for it, and passes the rest on */
      c->draining = xrealloc(c->draining, (c->ndraining + 1) * sizeof *c->draining);
      c->draining[c->ndraining].out = gone[i].out;
      c->draining[c->ndraining].info = gone[i].info;
      c->draining[c->ndraining].echo_wait = gone[i].echo_wait;
      c->draining[c->ndraining++].until = uv_now(&c->loop) + (uint64_t)c->cfg->link_max_wait_ms;
    } else if (gone[i].out) {
      bus_link_close(gone[i].out);
    }
  }
  xfree(gone);
  xfree(live);
  redispatch_pending(c);
  /* after the frames handed back by the links of routers that left: announcements of
   * sessions among them are in the workers' queues ahead of a BUS_MAP_SETTLED */
  check_settled(c);
  publish_map(c);
}

/* Our lease on the node id is gone: another incarnation holds it (docs/cluster.md, "Node
 * ids are leases"). Fighting for it would make the others see "restarts" back and forth
 * and end sessions each time: this node stops serving (exit status 2). */
static void on_lost(void *ud, const credis_node_t *holder) {
  cluster_t *c = ud;
  if (c->stopping || c->refused) return;
  log_error("cluster: node id %u is now held by another process (incarnation %llx at %s:%d): this node lost its "
            "lease and stops serving",
            c->bus->node, (unsigned long long)holder->incarnation, holder->host, holder->bus_port);
  c->refused = 1;
  uv_kill(uv_os_getpid(), SIGTERM); /* the main thread's orderly shutdown */
}

static void on_redis_state(void *ud, int up) {
  cluster_t *c = ud;
  c->redis_up = up;
  if (up) c->redis_up_ms = uv_now(&c->loop);
  if (up) c->map_synced = 0; /* a restarted Redis may have lost the map */
}

/* ---- the map handshake (docs/cluster.md "Shard moves without detours") ----
 *
 * After a shard move, a router's worker holds the stanzas for its gained shards whose
 * session it does not know yet (router/failover.c) until every live edge node says it
 * announced its sessions for the new map: each edge thread, once it handled a BUS_MAP
 * (its announcements are queued ahead), sends its cluster thread a BUS_MAP_DONE with that
 * BUS_MAP's generation; once all of them have, the cluster thread sends each router one
 * BUS_MAP_DONE with the map's hash, on the links its announcements took (after them). A
 * router whose live edges have all confirmed its own map tells its workers
 * (BUS_MAP_SETTLED). Maps are compared by hash, as each node counts its own changes. */

/* Router: every live edge node (this one too, for role all) confirmed the current map. */
static void check_settled(cluster_t *c) {
  if (!(c->role & ROLE_ROUTER) || !c->bus->nworkers || c->settled_gen == c->map_gen || c->stopping) return;
  for (int i = 0; i < c->npeers; i++) {
    if ((c->peers[i].info.role & ROLE_EDGE) && !c->peers[i].leaving && c->peers[i].done_hash != c->map_hash) return;
    if (c->peers[i].echo_wait) return; /* what it sent a leaving router is not all back yet */
  }
  for (size_t i = 0; i < c->ndraining; i++)
    if (c->draining[i].echo_wait) return;
  if ((c->role & ROLE_EDGE) && c->self_done != c->map_hash) return;
  c->settled_gen = c->map_gen;
  log_debug("cluster: every live edge confirmed shard map change %llu", (unsigned long long)c->epoch);
  push_local_ctl(c, BUS_MAP_SETTLED, (int64_t)c->map_gen, 1, 0);
}

/* An edge thread handled the BUS_MAP of generation arg. */
static void edge_thread_done(cluster_t *c, bus_msg_t *m) {
  bus_frame_t f;
  int ok = bus_msg_frame(m, &f) == 0 && f.src.node == c->bus->node && f.src.thread < c->bus->nedges;
  bus_msg_free(m);
  if (!ok || c->stopping) return;
  if (!c->edge_gen) c->edge_gen = xcalloc((size_t)c->bus->nedges, sizeof *c->edge_gen);
  c->edge_gen[f.src.thread] = (uint64_t)f.arg;
  if (c->done_gen == c->map_gen) return;
  for (int i = 0; i < c->bus->nedges; i++)
    if (c->edge_gen[i] != c->map_gen) return;
  c->done_gen = c->map_gen;
  for (int i = 0; i < c->npeers; i++) {
    peer_t *p = &c->peers[i];
    if (!(p->info.role & ROLE_ROUTER) || !p->out) continue;
    bus_frame_t d = {0};
    d.kind = BUS_MAP_DONE;
    d.arg = (int64_t)c->map_hash;
    d.src.node = c->bus->node;
    d.dst.node = p->info.id;
    d.dst.conn = p->info.incarnation;
    bus_link_send(p->out, bus_msg_new(&d)); /* after the announcements on this link */
  }
  if (c->role & ROLE_ROUTER) {
    c->self_done = c->map_hash;
    check_settled(c);
  }
}

/* ---- thread ---- */

/* A batch of this node's outbound frames: each link writes its share at the end, in one
 * system call where the kernel takes it all (not its first frame at once and the rest
 * when that write completes). */
static void in_cb(void *ud, bus_msg_t *batch) {
  cluster_t *c = ud;
  int npeers = c->npeers;
  for (int i = 0; i < npeers; i++)
    if (c->peers[i].out) bus_link_cork(c->peers[i].out);
  while (batch) {
    bus_msg_t *m = batch;
    batch = m->next;
    if (m->len >= BUS_HEADER_LEN && bus_hdr_kind(m->data) == BUS_MAP_DONE) {
      edge_thread_done(c, m); /* takes m */
      continue;
    }
    dispatch(c, m);
  }
  for (int i = 0; i < c->npeers; i++)
    if (c->peers[i].out) bus_link_uncork(c->peers[i].out);
}

/* The links (one per peer and direction) and the registry as metrics, published for the
 * metrics thread (which must not touch the links: they are this thread's). */
static void render_metrics(cluster_t *c, metrics_out_t *op) {
  metrics_out_t o = *op;
  static const struct {
    const char *name, *type, *help;
  } fams[] = {
      {"xmppd_bus_link_up", "gauge", "1 while the bus link to/from a peer node has a connection with the handshake done"},
      {"xmppd_bus_link_queued_frames", "gauge", "Frames on a bus link waiting to be sent or acknowledged"},
      {"xmppd_bus_link_queued_bytes", "gauge", "Bytes of those frames"},
      {"xmppd_bus_link_frames_sent_total", "counter", "Data frames written on a bus link (re-sends counted again)"},
      {"xmppd_bus_link_frames_received_total", "counter", "Data frames received on a bus link"},
      {"xmppd_bus_link_overflowed_total", "counter",
       "Frames a bus link gave back (queue full, or down past cluster.max_wait_ms)"},
      {"xmppd_bus_link_downs_total", "counter", "Connections of a bus link lost"},
  };
  static const char *const roles[] = {"?", "edge", "router", "all"};
  for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
    metrics_family(&o, fams[f].name, fams[f].type, fams[f].help);
    for (int i = 0; i < c->npeers; i++) {
      peer_t *p = &c->peers[i];
      for (int dir = 0; dir < 2; dir++) {
        bus_link_t *l = dir ? (c->listener ? bus_listener_link(c->listener, p->info.id) : NULL) : p->out;
        if (!l) continue;
        bus_link_stats_t st;
        bus_link_get_stats(l, &st);
        char labels[96];
        snprintf(labels, sizeof labels, "peer=\"%u\",peer_role=\"%s\",direction=\"%s\"", p->info.id,
                 roles[p->info.role & 3], dir ? "in" : "out");
        uint64_t v = f == 0   ? (uint64_t)bus_link_is_up(l)
                     : f == 1 ? st.queued_frames
                     : f == 2 ? st.queued_bytes
                     : f == 3 ? st.frames_sent
                     : f == 4 ? st.frames_received
                     : f == 5 ? st.frames_overflowed
                              : st.downs;
        metrics_sample_u64(&o, fams[f].name, labels, v);
      }
    }
  }
  metrics_family(&o, "xmppd_cluster_peers", "gauge", "Live nodes in the registry other than this one");
  metrics_sample(&o, "xmppd_cluster_peers", NULL, c->npeers);
  metrics_family(&o, "xmppd_cluster_redis_up", "gauge", "1 while the connection to cluster.redis is up");
  metrics_sample(&o, "xmppd_cluster_redis_up", NULL, c->redis_up);
  metrics_family(&o, "xmppd_cluster_pending_frames", "gauge",
                 "Frames waiting for a shard owner or a node to appear (at most cluster.max_wait_ms)");
  metrics_sample(&o, "xmppd_cluster_pending_frames", NULL, (double)c->npend);
}

static void publish_metrics(cluster_t *c) {
  for (int om = 0; om < 2; om++) {
    c->mtext[om].len = 0;
    metrics_out_t o = {&c->mtext[om], om};
    render_metrics(c, &o);
  }
  metrics_block_set(c->metrics, &c->mtext[0], &c->mtext[1]);
}

static void tick_cb(uv_timer_t *t) {
  cluster_t *c = t->data;
  uint64_t now = uv_now(&c->loop);
  if (c->metrics) publish_metrics(c);
  for (int i = 0; i < CLUSTER_EV_COUNT; i++) log_tally_flush(&tallies[i]); /* what was counted since a line */
  if (c->leaving && !c->left_all) check_left(c); /* the links' queues acknowledged since */
  for (size_t i = 0; i < c->ndraining;) {
    bus_link_stats_t st;
    bus_link_get_stats(c->draining[i].out, &st);
    if ((st.queued_frames || c->draining[i].echo_wait) && now < c->draining[i].until) {
      i++;
      continue;
    }
    int echo = c->draining[i].echo_wait;
    bus_link_close(c->draining[i].out);
    c->draining[i] = c->draining[--c->ndraining];
    if (echo) check_settled(c); /* it never echoed (it died): waited for no longer */
  }
  /* taken whole first: failing a frame may queue its error reply on the list */
  pend_t *pv = c->pend;
  size_t np = c->npend;
  c->pend = NULL;
  c->npend = c->cap_pend = 0;
  for (size_t i = 0; i < np; i++) {
    if (now - pv[i].since >= (uint64_t)c->cfg->link_max_wait_ms) fail_frame(c, pv[i].m, "no route within cluster.max_wait_ms");
    else pend_frame(c, pv[i].m, pv[i].since);
  }
  xfree(pv);
}

static void noop_close(uv_handle_t *h) {}

/* A router leaving on purpose: out of the registry at once, and out of its own shard
 * map, so its workers hand every session over to the new owners (BUS_MAP) and whatever
 * still arrives for those shards is forwarded; the other nodes follow at their next
 * poll, and the edges re-announce. Nothing is lost and nobody has to time out. */
static void leave_cb(uv_async_t *a) {
  cluster_t *c = a->data;
  if (c->leaving || c->stopping) return;
  if (c->refused) return; /* it never joined (or lost its id): it has nothing to hand over */
  c->leaving = 1;
  /* first on every link, ahead of anything this node passes on from now */
  for (int i = 0; i < c->npeers; i++) {
    peer_t *p = &c->peers[i];
    if (!p->out) continue;
    bus_frame_t f = {0};
    f.kind = BUS_LEAVING;
    f.src.node = c->bus->node;
    f.src.conn = c->self.incarnation;
    f.dst.node = p->info.id;
    bus_link_send(p->out, bus_msg_new(&f));
  }
  credis_deregister(c->redis);
  credis_node_t *live = xcalloc((size_t)c->npeers + 1, sizeof *live);
  for (int i = 0; i < c->npeers; i++) live[i] = c->peers[i].info;
  recompute_map(c, live, c->npeers, 0);
  xfree(live);
  check_settled(c);
  log_info("cluster: node %u leaving: shards handed over", c->bus->node);
  check_left(c); /* no peer: done */
}

static void stop_cb(uv_async_t *a) {
  cluster_t *c = a->data;
  c->stopping = 1;
  bus_queue_drain(&c->in);
  credis_deregister(c->redis);
  for (int i = 0; i < c->npeers; i++)
    if (c->peers[i].out) bus_link_close(c->peers[i].out); /* final ACKs */
  for (size_t i = 0; i < c->ndraining; i++) bus_link_close(c->draining[i].out);
  c->ndraining = 0;
  for (size_t i = 0; i < c->npend; i++) bus_msg_free(c->pend[i].m);
  c->npend = 0;
  if (c->listener) bus_listener_close(c->listener);
  credis_close(c->redis);
  bus_queue_close(&c->in);
  uv_close((uv_handle_t *)&c->tick, noop_close);
  uv_close((uv_handle_t *)&c->stop, noop_close);
  uv_close((uv_handle_t *)&c->leave, noop_close);
}

static void thread_main(void *arg) {
  cluster_t *c = arg;
  log_set_thread("cluster");
  metrics_thread_init();
  uv_run(&c->loop, UV_RUN_DEFAULT);
  bus_link_thread_cleanup();
}

/* The bus's remote transport (bus.h): frames from any thread for other nodes. */
static void remote_send(void *ctx, bus_msg_t *m) {
  cluster_t *c = ctx;
  bus_queue_push(&c->in, m);
}

static uint64_t remote_pending(void *ctx) {
  cluster_t *c = ctx;
  /* npend belongs to the cluster thread: a relaxed read is a snapshot, as bus_queue_pending is */
  return bus_queue_pending(&c->in) + __atomic_load_n(&c->npend, __ATOMIC_RELAXED);
}

static const bus_remote_ops_t remote_ops = {remote_send, remote_pending};

static void discard(cluster_t *c) {
  if (c->listener) bus_listener_close(c->listener);
  uv_run(&c->loop, UV_RUN_DEFAULT); /* the listener's handles close */
  uv_loop_close(&c->loop);
  arena_free(&c->arena);
  xfree(c);
}

void cluster_discard(cluster_t *c) {
  if (!c) return;
  credis_unclaim(c->cfg->cluster_redis, c->cfg->cluster_name, &c->self);
  discard(c);
}

cluster_t *cluster_new(const xmpp_config_t *cfg, const bus_t *bus, int role, int *held) {
  *held = 0;
  cluster_t *c = xcalloc(1, sizeof *c);
  c->cfg = cfg;
  c->role = role;
  arena_init(&c->arena);
  uv_loop_init(&c->loop);
  uv_random(NULL, NULL, &c->self.incarnation, sizeof c->self.incarnation, 0, NULL);
  c->self.incarnation |= 1; /* never 0: "none" in a HELLO */
  bus_link_config_default(&c->lcfg);
  c->lcfg.node_inc = c->self.incarnation;
  c->lcfg.heartbeat_ms = (uint32_t)cfg->heartbeat_ms;
  c->lcfg.max_wait_ms = (uint32_t)cfg->link_max_wait_ms;
  if (cfg->bus_tls_cert[0]) {
    c->lcfg.tls_cert = cfg->bus_tls_cert;
    c->lcfg.tls_key = cfg->bus_tls_key;
    c->lcfg.tls_ca = cfg->bus_tls_ca;
  }
  uint16_t node = (uint16_t)cfg->cluster_node;
  /* listening now (for the port it registers); links are accepted once the thread runs */
  c->listener = bus_listener_new(&c->loop, cfg->bus_addr, cfg->bus_port, node, (uint8_t)role, &c->lcfg,
                                 &link_cbs, c);
  if (!c->listener) {
    log_error("cluster: cannot accept bus links on %s:%d", cfg->bus_addr, cfg->bus_port);
    discard(c);
    return NULL;
  }
  c->self.id = node;
  c->self.role = (uint8_t)role;
  c->self.workers = (uint16_t)bus->nworkers;
  c->self.shards = bus->nshards;
  snprintf(c->self.host, sizeof c->self.host, "%s", cfg->bus_advertise[0] ? cfg->bus_advertise : cfg->bus_addr);
  c->self.bus_port = bus_listener_port(c->listener);
  /* the node id is a lease: ours before this node accepts a client or a link */
  credis_node_t holder;
  char *err = NULL;
  int rc = credis_claim(cfg->cluster_redis, cfg->cluster_name, &c->self, (uint32_t)cfg->node_ttl_ms, &holder, &err);
  if (rc == XMPP_EEXIST) {
    log_error("cluster: node id %u is held by a live node (%s:%d, incarnation %llx): node ids are unique in a "
              "cluster; this node refuses to start",
              node, holder.host, holder.bus_port, (unsigned long long)holder.incarnation);
    *held = 1;
    discard(c);
    return NULL;
  }
  if (rc != 0) {
    log_error("cluster: cannot claim node id %u: %s", node, err ? err : "?");
    xfree(err);
    discard(c);
    return NULL;
  }
  log_info("cluster: node id %u claimed (incarnation %llx)", node, (unsigned long long)c->self.incarnation);
  return c;
}

int cluster_start(cluster_t *c, bus_t *bus) {
  const xmpp_config_t *cfg = c->cfg;
  c->bus = bus;
  bus->node = c->self.id;
  bus->owner = xcalloc(bus->nshards, sizeof *bus->owner);
  c->map = xcalloc(bus->nshards, sizeof *c->map);
  bus_set_remote(bus, &remote_ops, c);
  bus_queue_attach(bus, &c->in, &c->loop, in_cb, c, "cluster");
  uv_async_init(&c->loop, &c->stop, stop_cb);
  c->stop.data = c;
  uv_async_init(&c->loop, &c->leave, leave_cb);
  c->leave.data = c;
  uv_timer_init(&c->loop, &c->tick);
  c->tick.data = c;
  uv_timer_start(&c->tick, tick_cb, TICK_MS, TICK_MS);
  buf_init(&c->mtext[0]);
  buf_init(&c->mtext[1]);
  c->metrics = metrics_block_new();
  metrics_source_add(tally_metrics, NULL);
  static const credis_cbs_t rcbs = {on_redis_state, on_nodes, on_lost};
  c->redis = credis_new(&c->loop, cfg->cluster_redis, cfg->cluster_name, &rcbs, c);
  if (!c->redis) {
    log_error("cluster: bad cluster.redis address '%s'", cfg->cluster_redis);
    return -1;
  }
  credis_register(c->redis, &c->self, (uint32_t)cfg->heartbeat_ms, (uint32_t)cfg->node_ttl_ms);
  if (uv_thread_create(&c->thread, thread_main, c) != 0) {
    log_error("cluster: cannot start its thread");
    return -1;
  }
  log_info("cluster: node %u (%s) in cluster '%s', bus links on %s:%d, Redis %s", bus->node, cfg->cluster_role,
           cfg->cluster_name, c->self.host, c->self.bus_port, cfg->cluster_redis);
  return 0;
}

void cluster_leave(cluster_t *c) { uv_async_send(&c->leave); }

int cluster_leave_done(const cluster_t *c) { return __atomic_load_n(&c->left_all, __ATOMIC_RELAXED); }

int cluster_refused(const cluster_t *c) { return c && c->refused; }

void cluster_stop(cluster_t *c) {
  uv_async_send(&c->stop);
  uv_thread_join(&c->thread);
}

void cluster_free(cluster_t *c) {
  if (!c) return;
  if (c->metrics) metrics_source_remove(tally_metrics, NULL);
  metrics_block_free(c->metrics);
  buf_free(&c->mtext[0]);
  buf_free(&c->mtext[1]);
  uv_loop_close(&c->loop);
  xfree(c->peers);
  xfree(c->pend);
  xfree(c->map);
  xfree(c->prev);
  xfree(c->mismatch);
  xfree(c->ended);
  xfree(c->edge_gen);
  xfree(c->draining);
  arena_free(&c->arena);
  xfree(c->bus->owner);
  c->bus->owner = NULL;
  bus_set_remote(c->bus, NULL, NULL);
  xfree(c);
}

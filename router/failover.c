/* A worker's part in failover (docs/cluster.md, "Failures"): rebuilding sessions that
 * edges re-announce after their shard moved here, dropping users of shards that moved
 * away, and ending the sessions of an edge node that died. */
#include "router/module.h"

#include <string.h>

#include "common/alloc.h"
#include "common/log.h"

int worker_owns(const worker_t *w, const bus_frame_t *f) {
  const bus_t *b = w->bus;
  if (!b->owner) return 1;
  if (!w->owner_view) return 0; /* no map handled yet: on to whoever owns it */
  uint32_t o = w->owner_view[bus_frame_shard(b, f)];
  return BUS_OWNER_NODE(o) == b->node && BUS_OWNER_WORKER(o) % (uint32_t)b->nworkers == (uint32_t)w->index;
}

static void kick(worker_t *w, const bus_addr_t *at, int64_t why) {
  bus_frame_t k = {0};
  k.kind = BUS_KICK;
  k.dst = *at;
  k.arg = why;
  bus_to_edge(w->bus, at, bus_msg_new(&k));
}

/* The edge of a session this router ended (its node left the registry: stalled past its
 * lease, or cut off from Redis) is back with the same incarnation and announces it again
 * (BUS_SESSIONS_ENDED, edge/route.c). Contacts saw the session go unavailable and
 * messages for it went to another resource or offline storage, so it comes back as a new
 * session (HOOK_SESSION_OPEN) followed by its last broadcast presence, handled as its
 * initial presence (RFC 6121 §4.2: broadcast to contacts, probes, then the offline
 * messages, XEP-0160). What the router kept of the session and did not get back (directed
 * presence, carbons enabled, roster interest) is lost, as for a shard move. */
static void session_revive(worker_t *w, const bus_frame_t *f, user_t *u, session_t *s, const char *full,
                           xnode_t *presence) {
  if (s && bus_addr_eq(&s->at, &f->src)) return; /* this worker never ended it (its shard moved here) */
  if (s) {
    /* the resource was bound again since, elsewhere: that newer session stays, the
     * connection that came back is told (RFC 6120 §7.7.2.2, <conflict/>) */
    kick(w, &f->src, BUS_KICK_CONFLICT);
    log_info("session %s at node %u not revived: bound again since", full, f->src.node);
    return;
  }
  if (session_count(u) >= w->cfg->max_resources) {
    kick(w, &f->src, BUS_KICK_SHUTDOWN); /* its client reconnects, and is refused or not */
    log_info("session %s at node %u not revived: %d resources already", full, f->src.node, session_count(u));
    return;
  }
  s = session_add(u, full, &f->src);
  dir_session(w, s);
  mod_event_t e = {.w = w, .u = u, .s = s, .from = s->full};
  modules_hook(HOOK_SESSION_OPEN, &e);
  if (presence && !strcmp(presence->name, "presence") && !xnode_attr(presence, "type")) {
    mod_event_t p = {.w = w, .u = u, .s = s, .from = s->full, .to = "", .st = presence};
    modules_hook(HOOK_PRESENCE_OUT, &p); /* mod_presence, last: the initial presence */
    dir_session(w, s);
  }
  log_debug("session %s revived at node %u", full, f->src.node);
}

void session_reannounce(worker_t *w, const bus_frame_t *f, const xnode_t *presence) {
  char *full = arena_strndup(&w->arena, f->from, f->from_len);
  user_t *u = user_get(w, w_bare(w, full));
  session_t *s = user_session(u, full);
  if (f->arg == BUS_REANNOUNCE_REVIVE) {
    session_revive(w, f, u, s, full, (xnode_t *)presence);
    return;
  }
  if (s && f->arg == BUS_REANNOUNCE_HANDOVER && bus_addr_eq(&s->at, &f->src))
    return; /* the edge's own announcement (or what followed it) is newer */
  if (s && !bus_addr_eq(&s->at, &f->src)) {
    /* an older connection of the same resource: the announced one is current */
    session_remove(w, u, s);
    s = NULL;
  }
  if (!s) s = session_add(u, full, &f->src);
  u->exists = 1;
  mod_event_t e = {.w = w, .u = u, .s = s, .from = s->full, .st = (xnode_t *)presence};
  modules_hook(HOOK_SESSION_RESTORE, &e); /* mod_presence sets its presence back */
  dir_session(w, s);
  log_debug("session %s re-announced by node %u", full, f->src.node);
}

typedef struct {
  worker_t *w;
  user_t **list;
  size_t n, cap;
} collect_t;

static void collect_cb(const char *bare, void *v, void *ud) {
  collect_t *x = ud;
  if (x->n == x->cap) {
    x->cap = x->cap ? 2 * x->cap : 64;
    x->list = xrealloc(x->list, x->cap * sizeof *x->list);
  }
  x->list[x->n++] = v;
}

/* Every user with sessions (a snapshot: the callers change the map). */
static collect_t online(worker_t *w) {
  collect_t x = {w, NULL, 0, 0};
  strmap_each(w->users, collect_cb, &x);
  return x;
}

void worker_map_changed(worker_t *w) {
  const bus_t *b = w->bus;
  if (!w->owner_view) w->owner_view = xcalloc(b->nshards, sizeof *w->owner_view);
  for (uint32_t s = 0; s < b->nshards; s++)
    w->owner_view[s] = atomic_load_explicit(&b->owner[s], memory_order_relaxed);
  collect_t x = online(w);
  size_t dropped = 0;
  for (size_t i = 0; i < x.n; i++) {
    user_t *u = x.list[i];
    bus_frame_t f = {0};
    f.kind = BUS_ROUTE;
    f.to = u->bare;
    f.to_len = strlen(u->bare);
    if (worker_owns(w, &f)) continue;
    /* No unavailable presence and no directory change: the sessions live on at the new
     * owner. The edges announce them there too, but a frame this worker forwards there
     * (sent before the edge saw the new map) could overtake the edge's announcement:
     * handing each session over first, on the path those frames take, keeps it ahead. */
    while (u->sessions) {
      session_t *s = u->sessions;
      u->sessions = s->next;
      bus_frame_t h = {0};
      h.kind = BUS_SESSION_OPEN;
      h.flags = BUS_F_REANNOUNCE;
      h.arg = BUS_REANNOUNCE_HANDOVER;
      h.src = s->at;
      h.from = s->full;
      h.from_len = strlen(s->full);
      if (s->available) {
        h.payload = s->presence;
        h.payload_len = s->presence_len;
      }
      bus_to_router(w->bus, u->bare, strlen(u->bare), bus_msg_new(&h));
      session_free(s);
      dropped++;
    }
    /* on the touched list: released after this frame, with the modules' state of it (an
     * offline delivery in progress stops: the rest stays stored) */
    user_get(w, u->bare);
  }
  xfree(x.list);
  if (dropped) log_info("router %d: %zu sessions handed over to other routers", w->index, dropped);
}

void worker_node_down(worker_t *w, uint16_t node) {
  collect_t x = online(w);
  size_t ended = 0;
  for (size_t i = 0; i < x.n; i++) {
    user_t *u = x.list[i];
    session_t *s = u->sessions;
    while (s) {
      session_t *next = s->next;
      if (s->at.node == node) {
        session_park_release(w, s); /* XEP-0198 §5: what it kept detached, back to the account */
        session_finish(w, u, s);    /* contacts see it go unavailable */
        ended++;
      }
      s = next;
    }
    user_get(w, u->bare);
  }
  xfree(x.list);
  if (ended) log_info("router %d: node %u is down: %zu sessions ended", w->index, node, ended);
}

/* A worker's part in failover (docs/cluster.md, "Failures"): rebuilding sessions that
 * edges re-announce after their shard moved here, dropping users of shards that moved
 * away, and ending the sessions of an edge node that died. */
#include "router/module.h"

#include <string.h>

#include "common/alloc.h"
#include "common/cluster/cluster.h"
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
  if (s && bus_addr_eq(&s->at, &f->src)) {
    /* this worker never ended it (its shard moved here), or kept it for resumption */
    if (s->orphan_since) sm_orphan_revived(w, s);
    return;
  }
  if (s) {
    /* the resource was bound again since, elsewhere: that newer session stays, the
     * connection that came back is told (RFC 6120 §7.7.2.2, <conflict/>) */
    kick(w, &f->src, BUS_KICK_CONFLICT);
    log_info("session %s at node %u not revived: bound again since", full, f->src.node);
    return;
  }
  if (session_count(u) >= w_max_resources(w, u->bare)) {
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

static void hold_begin(worker_t *w, uint64_t gen);

void worker_map_changed(worker_t *w, uint64_t gen) {
  const bus_t *b = w->bus;
  int first = !w->owner_view;
  if (first) w->owner_view = xcalloc(b->nshards, sizeof *w->owner_view);
  if (!w->gained) w->gained = xcalloc(b->nshards, 1);
  if (!w->holding) memset(w->gained, 0, b->nshards);
  size_t gained = 0;
  for (uint32_t s = 0; s < b->nshards; s++) {
    uint32_t was = w->owner_view[s];
    w->owner_view[s] = atomic_load_explicit(&b->owner[s], memory_order_relaxed);
    int mine = BUS_OWNER_NODE(w->owner_view[s]) == b->node &&
               BUS_OWNER_WORKER(w->owner_view[s]) % (uint32_t)b->nworkers == (uint32_t)w->index;
    int mine_before = !first && BUS_OWNER_NODE(was) == b->node &&
                      BUS_OWNER_WORKER(was) % (uint32_t)b->nworkers == (uint32_t)w->index;
    if (mine && !mine_before) {
      w->gained[s] = 1;
      gained++;
    } else if (!mine) {
      w->gained[s] = 0;
    }
  }
  if (gained) hold_begin(w, gen);
  if (w->held_frames) w->hold_after = 1; /* what it holds for shards no longer its own goes on */
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
    /* an orphan (its edge died, sm_orphan.c) has no edge to announce it to the new
     * owner: it ends here, its copies to the account (which the new owner handles) */
    for (session_t *s = u->sessions, *nx; s; s = nx) {
      nx = s->next;
      if (!s->orphan_since) continue;
      session_park_release(w, s, 1);
      session_finish(w, u, s);
    }
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
  size_t ended = 0, kept = 0;
  for (size_t i = 0; i < x.n; i++) {
    user_t *u = x.list[i];
    session_t *s = u->sessions;
    while (s) {
      session_t *next = s->next;
      if (s->at.node == node && !s->orphan_since && sm_orphan_keep(w, u, s)) {
        kept++; /* XEP-0198 §5: resumable on another edge for a while (sm_orphan.c) */
      } else if (s->at.node == node) {
        session_park_release(w, s, 1); /* XEP-0198: what its client had not acknowledged, back to the account */
        session_finish(w, u, s);    /* contacts see it go unavailable */
        ended++;
      }
      s = next;
    }
    user_get(w, u->bare);
  }
  xfree(x.list);
  if (ended || kept)
    log_info("router %d: node %u is down: %zu sessions ended, %zu kept for resumption", w->index, node, ended, kept);
}

/* ---- a shard move's hold (docs/cluster.md "Shard moves without detours") ----
 *
 * After a move, the sessions of a gained shard reach this worker as their edges announce
 * them, each edge when it has adopted the new map (one edge can be a heartbeat behind
 * the others). A stanza for such a shard whose session is not known yet (a message to a
 * user whose edge has not announced it: it would go to offline storage; a stanza of a
 * sender not announced yet: answered <recipient-unavailable/>) is held instead, per bare
 * JID in arrival order, until that JID's session opens (its stanzas are handled right
 * after, before anything newer), or every live edge confirmed the map (BUS_MAP_SETTLED:
 * what is still held is for users who are not online, handled as without the hold), or
 * cluster.hold_ms ran out, or cluster.hold_bytes would be passed (both: handled as
 * without the hold, each counted as a detour). Frames of one sender to one recipient
 * keep their order: once a JID has held stanzas, every later one for it is held too. */

typedef struct held {
  bus_msg_t *head, **tail;
} held_t;

#define HELD_ENTRY 64 /* bytes counted for a JID's entry, besides its frames */

static void hold_timer_cb(uv_timer_t *t) {
  worker_t *w = t->data;
  mod_event_t be = {.w = w};
  modules_hook(HOOK_BATCH_BEGIN, &be);
  hold_end(w, "cluster.hold_ms ran out before every live edge confirmed the map", 1);
  modules_hook(HOOK_BATCH_END, &be);
  worker_idle(w);
}

void hold_init(worker_t *w) {
  uv_timer_init(&w->loop, &w->hold_timer);
  w->hold_timer.data = w;
}

static void close_noop(uv_handle_t *h) { (void)h; }

void hold_close(worker_t *w) { uv_close((uv_handle_t *)&w->hold_timer, close_noop); }

static void held_free(void *p) {
  held_t *h = p;
  while (h->head) {
    bus_msg_t *m = h->head;
    h->head = m->next;
    bus_msg_free(m);
  }
  xfree(h);
}

void hold_free(worker_t *w) {
  strmap_free(w->held, held_free);
  w->held = NULL;
  xfree(w->gained);
  w->gained = NULL;
}

static void hold_begin(worker_t *w, uint64_t gen) {
  if (w->cfg->hold_ms <= 0) return;
  if (!w->holding) {
    w->hold_since = uv_now(&w->loop);
    memset(w->hold_stats, 0, sizeof w->hold_stats);
  }
  w->holding = 1;
  w->hold_gen = gen;
  uv_timer_start(&w->hold_timer, hold_timer_cb, (uint64_t)w->cfg->hold_ms, 0);
}

/* The frames held for bare, taken out of the hold (NULL when none). */
static bus_msg_t *held_take(worker_t *w, const char *bare) {
  held_t *h = w->held ? strmap_del(w->held, bare) : NULL;
  if (!h) return NULL;
  bus_msg_t *list = h->head;
  for (bus_msg_t *m = list; m; m = m->next) {
    w->held_bytes -= m->len + sizeof *m;
    w->held_frames--;
  }
  w->held_bytes -= HELD_ENTRY;
  xfree(h);
  return list;
}

static void replay(worker_t *w, bus_msg_t *list, int stat) {
  while (list) {
    bus_msg_t *m = list;
    list = m->next;
    w->hold_stats[stat]++;
    worker_take(w, m, 0);
  }
}

int hold_frame(worker_t *w, bus_msg_t *m, const bus_frame_t *f) {
  if (f->kind != BUS_C2S && f->kind != BUS_ROUTE && f->kind != BUS_BOUNCE) return 0;
  if (!w->gained[bus_frame_shard(w->bus, f)]) return 0;
  int c2s = f->kind == BUS_C2S;
  const char *jid = c2s ? f->from : f->to;
  size_t len = c2s ? f->from_len : f->to_len;
  char *bare = arena_strndup(&w->arena, jid, bus_bare_len(jid, len));
  held_t *h = w->held ? strmap_get(w->held, bare) : NULL;
  if (!h) {
    /* nothing held for it: held only when the session it needs is not known */
    user_t *u = strmap_get(w->users, bare);
    if (u && u->sessions) {
      if (f->kind == BUS_BOUNCE || len == strlen(bare)) return 0; /* to the account: another resource */
      if (user_session(u, arena_strndup(&w->arena, jid, len))) return 0;
    }
  }
  size_t cost = m->len + sizeof *m + (h ? 0 : HELD_ENTRY);
  if (w->held_bytes + cost > (size_t)w->cfg->hold_bytes) {
    hold_end(w, "cluster.hold_bytes reached", 1);
    return 0;
  }
  if (!h) {
    if (!w->held) w->held = strmap_new();
    h = xcalloc(1, sizeof *h);
    h->tail = &h->head;
    strmap_put(w->held, bare, h);
  }
  m->next = NULL;
  *h->tail = m;
  h->tail = &m->next;
  w->held_bytes += cost;
  w->held_frames++;
  w->hold_stats[0]++;
  return 1;
}

typedef struct {
  char **v;
  size_t n, cap;
} names_t;

static void name_cb(const char *bare, void *v, void *ud) {
  names_t *x = ud;
  (void)v;
  if (x->n == x->cap) {
    x->cap = x->cap ? 2 * x->cap : 16;
    x->v = xrealloc(x->v, x->cap * sizeof *x->v);
  }
  x->v[x->n++] = xstrdup(bare);
}

/* Every bare JID with held frames (a snapshot: replaying changes the map). */
static names_t held_names(worker_t *w) {
  names_t x = {0};
  if (w->held) strmap_each(w->held, name_cb, &x);
  return x;
}

static void names_free(names_t *x) {
  for (size_t i = 0; i < x->n; i++) xfree(x->v[i]);
  xfree(x->v);
}

void hold_end(worker_t *w, const char *why, int ran_out) {
  if (!w->holding && !w->held_frames) return;
  int was = w->holding;
  w->holding = 0;
  uv_timer_stop(&w->hold_timer);
  names_t x = held_names(w);
  size_t frames = w->held_frames;
  /* counted as detours all at once: one rate-limited line, not one per stanza */
  if (ran_out && frames)
    cluster_event_n(CLUSTER_EV_HOLD_ENDED, frames, "%zu for %zu bare JIDs, e.g. %s (router %d: %s)", frames, x.n,
                    x.n ? x.v[0] : "-", w->index, why);
  for (size_t i = 0; i < x.n; i++) replay(w, held_take(w, x.v[i]), 2);
  names_free(&x);
  if (was)
    log_info("router %d: shard move hold ended after %llu ms (%s): %llu stanzas held, %llu handed to their session "
             "once announced, %zu handled without one",
             w->index, (unsigned long long)(uv_now(&w->loop) - w->hold_since), why,
             (unsigned long long)w->hold_stats[0], (unsigned long long)w->hold_stats[1], frames);
}

void hold_after_frame(worker_t *w) {
  char *opened = w->hold_opened;
  int after = w->hold_after;
  w->hold_opened = NULL;
  w->hold_after = 0;
  if (opened) {
    replay(w, held_take(w, opened), 1); /* its session is known now: before anything newer */
    xfree(opened);
  }
  if (after == 2) {
    hold_end(w, "every live edge confirmed the map", 0);
  } else if (after == 1) {
    /* a new map: what is held for shards this worker did not gain (it lost them, or
     * the hold ended) goes on, forwarded or handled */
    names_t x = held_names(w);
    for (size_t i = 0; i < x.n; i++)
      if (!w->holding || !w->gained[bus_shard_of(w->bus, x.v[i], strlen(x.v[i]))]) replay(w, held_take(w, x.v[i]), 2);
    names_free(&x);
  }
}

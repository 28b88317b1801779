/* Router worker: one thread, one loop, the users of its shards, and frame dispatch.
 *
 * Frames arrive in batches from the worker's bus queue. Each frame is handled to the end
 * before the next (single-threaded per shard: no locks on session state). Users are
 * created on first reference and dropped again after the frame when they have no
 * session, so memory follows the online population, not the account count.
 *
 * The core knows the three stanza kinds (RFC 6120 §8) and where they go, no feature:
 * what a stanza means is the modules' (router/module.h), reached through the hook
 * points and the IQ handlers. Presence is handled by mod_presence, messages for a local
 * account by mod_message (RFC 6121 §8.5); an IQ goes to the session it is addressed to
 * or to the module that handles its namespace. */
#include "router/module.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/cluster/cluster.h"
#include "common/dedup.h"
#include "common/domains.h"
#include "common/log.h"
#include "common/metrics.h"

static void user_free(void *p) {
  user_t *u = p;
  while (u->sessions) {
    session_t *s = u->sessions;
    u->sessions = s->next;
    session_free(s);
  }
  modules_user_free(u);
  xfree(u->bare);
  xfree(u);
}

user_t *user_get(worker_t *w, const char *bare) {
  user_t *u = strmap_get(w->users, bare);
  if (!u) {
    u = xcalloc(1, sizeof *u);
    u->bare = xstrdup(bare);
    u->exists = -1;
    strmap_put(w->users, bare, u);
  }
  if (!u->touched) {
    u->touched = 1;
    u->next_touched = w->touched;
    w->touched = u;
  }
  return u;
}

int user_exists(worker_t *w, user_t *u) {
  if (u->sessions) return 1;
  if (u->exists < 0) {
    int rc = store_account_exists(w->store, u->bare);
    if (rc < 0) return 0;
    u->exists = rc;
  }
  return u->exists;
}

session_t *user_session(user_t *u, const char *full) {
  for (session_t *s = u->sessions; s; s = s->next)
    if (!strcmp(s->full, full)) return s;
  return NULL;
}

/* End of a frame: users with no session are dropped (their state is in the store). */
static void release_touched(worker_t *w) {
  while (w->touched) {
    user_t *u = w->touched;
    w->touched = u->next_touched;
    u->touched = 0;
    u->next_touched = NULL;
    if (!u->sessions) {
      strmap_del(w->users, u->bare);
      user_free(u);
    }
  }
}

int w_is_local(const worker_t *w, const char *jid) {
  /* normalised JID: [local@]domain[/resource]; an '@' after the first '/' is resource */
  size_t bl = bus_bare_len(jid, strlen(jid));
  const char *at = memchr(jid, '@', bl);
  const char *dom = at ? at + 1 : jid;
  size_t dl = bl - (size_t)(dom - jid);
  (void)w;
  return domain_find(dom, dl) != NULL;
}

int w_is_server(const worker_t *w, const char *jid) {
  (void)w;
  return !strchr(jid, '@') && !strchr(jid, '/') && domain_find(jid, strlen(jid)) != NULL;
}

int w_max_resources(const worker_t *w, const char *bare) {
  const domain_t *d = domain_of_jid(bare);
  return d && d->max_resources ? d->max_resources : w->cfg->max_resources;
}

char *w_domain_of(worker_t *w, const char *jid) {
  if (!jid || !*jid) return arena_strdup(&w->arena, domain_default());
  size_t bl = bus_bare_len(jid, strlen(jid));
  const char *at = memchr(jid, '@', bl);
  const char *dom = at ? at + 1 : jid;
  return arena_strndup(&w->arena, dom, bl - (size_t)(dom - jid));
}

char *w_bare(worker_t *w, const char *jid) {
  return arena_strndup(&w->arena, jid, bus_bare_len(jid, strlen(jid)));
}

/* s: the session a DELIVER is for (NULL: none, or not a session's own delivery). */
static void send_frame_to(worker_t *w, uint8_t kind, const bus_addr_t *dst, const char *from, const char *to,
                          const xnode_t *st, uint16_t flags, int64_t arg, session_t *s) {
  bus_frame_t f = {0};
  if (st == w->frame_tree && w->frame_payload) {
    f.payload = w->frame_payload; /* forwarded unchanged: no re-encoding */
    f.payload_len = w->frame_payload_len;
  } else {
    w->scratch.len = 0;
    xnode_encode(st, &w->scratch);
    f.payload = w->scratch.data;
    f.payload_len = w->scratch.len;
  }
  f.kind = kind;
  f.flags = flags;
  f.arg = arg;
  if (w->in_origin) { /* offspring of a frame with an origin id: docs/cluster.md "Exactly once" */
    f.flags |= BUS_F_ORIGIN;
    f.origin = bus_origin_derive(w->in_origin, ++w->out_k);
  }
  if (dst) f.dst = *dst;
  f.src.thread = (uint16_t)w->index;
  f.from = from ? from : "";
  f.from_len = strlen(f.from);
  f.to = to ? to : "";
  f.to_len = strlen(f.to);
  /* XEP-0198, cluster: an orphan's (its edge died: sm_orphan.c) messages are kept for it */
  if (s && s->orphan_since && kind == BUS_DELIVER && sm_orphan_deliver(w, s, &f, st)) return;
  if (s && s->park) session_park_copy(w, s, &f, st); /* XEP-0198, cluster: until acknowledged */
  bus_msg_t *m = bus_msg_new(&f);
  if (kind == BUS_DELIVER) bus_to_edge(w->bus, dst, m);
  else bus_to_router(w->bus, f.to, bus_bare_len(f.to, f.to_len), m);
}

static void send_frame_arg(worker_t *w, uint8_t kind, const bus_addr_t *dst, const char *from, const char *to,
                           const xnode_t *st, uint16_t flags, int64_t arg) {
  send_frame_to(w, kind, dst, from, to, st, flags, arg, NULL);
}

static void send_frame(worker_t *w, uint8_t kind, const bus_addr_t *dst, const char *from, const char *to,
                       const xnode_t *st, uint16_t flags) {
  send_frame_arg(w, kind, dst, from, to, st, flags, 0);
}

void w_encode_stored(const char *from, const char *to, const xnode_t *st, buf_t *out) {
  buf_t p;
  buf_init(&p);
  xnode_encode(st, &p);
  bus_frame_t f = {0};
  f.kind = BUS_ROUTE;
  f.from = from;
  f.from_len = strlen(from);
  f.to = to;
  f.to_len = strlen(to);
  f.payload = p.data;
  f.payload_len = p.len;
  bus_frame_encode(&f, out);
  buf_free(&p);
}

void w_deliver_arg(worker_t *w, const session_t *s, const char *from, const xnode_t *st, uint16_t flags, int64_t arg) {
  send_frame_to(w, BUS_DELIVER, &s->at, from, s->full, st, flags, arg, (session_t *)s);
}

void w_deliver(worker_t *w, const session_t *s, const char *from, const char *to, const xnode_t *st) {
  send_frame_to(w, BUS_DELIVER, &s->at, from, to ? to : s->full, st, 0, 0, (session_t *)s);
}

void w_route(worker_t *w, const char *from, const char *to, const xnode_t *st, uint16_t flags) {
  send_frame(w, BUS_ROUTE, NULL, from, to, st, flags);
}

void w_error(worker_t *w, const char *from, const char *to, const xnode_t *st, const char *type,
             const char *cond) {
  if (!from || !*from) return;
  xnode_t *e = stanza_error_reply(&w->arena, st, type, cond);
  if (e) w_route(w, to && *to ? to : w_domain_of(w, from), from, e, BUS_F_SERVER);
}

/* A stanza a bound client sent (processed at the sender's shard). */
static void handle_c2s(worker_t *w, const bus_frame_t *f, xnode_t *st) {
  char *from = arena_strndup(&w->arena, f->from, f->from_len);
  char *to = arena_strndup(&w->arena, f->to, f->to_len);
  user_t *u = user_get(w, w_bare(w, from));
  session_t *s = user_session(u, from);
  if (!s || !bus_addr_eq(&s->at, &f->src)) {
    /* stale: the session ended or was replaced. In a cluster it can also be a session
     * whose shard just moved here and whose announcement is still on its way (it raced
     * a map change), or one this router ended (its edge missed its lease): the sender is
     * told to try again, never left with a silent loss. The same for the three kinds
     * (RFC 6120 §8.3.3.11); not for an error, nor an IQ result (§8.2.3: never answered) */
    const char *type = xnode_attr(st, "type");
    int result = !strcmp(st->name, "iq") && type && !strcmp(type, "result");
    if (!s && bus_clustered(w->bus) && !result) {
      xnode_t *e = stanza_error_reply(&w->arena, st, "wait", "recipient-unavailable");
      if (e) send_frame(w, BUS_DELIVER, &f->src, *to ? to : w_domain_of(w, from), from, e, BUS_F_SERVER);
      if (e) cluster_event(CLUSTER_EV_UNKNOWN_SESSION, "%s from %s (edge node %u)", st->name, from, f->src.node);
    }
    return;
  }
  if (f->flags & BUS_F_SM_IN) s->sm_in = (uint32_t)f->arg; /* XEP-0198: handled, for sm_orphan.c */
  mod_event_t e = {.w = w, .u = u, .s = s, .from = from, .to = to, .st = st};
  if (!strcmp(st->name, "presence")) {
    int avail = s->available, prio = s->priority;
    modules_hook(HOOK_PRESENCE_OUT, &e); /* mod_presence, last, handles it */
    if (s->available != avail || s->priority != prio) dir_session(w, s);
    return;
  }
  if (!strcmp(st->name, "iq")) {
    if (!*to || !strcmp(to, u->bare)) { /* to the account itself (RFC 6120 §10.3.3) */
      modules_iq(w, MOD_AT_ACCOUNT, u, s, from, to, st);
      return;
    }
    if (w_is_server(w, to)) {
      modules_iq(w, MOD_AT_SERVER, NULL, s, from, to, st);
      return;
    }
    if (modules_hook(HOOK_IQ_OUT, &e) == MOD_STOP) return;
  }
  if (!strcmp(st->name, "message")) {
    if (!*to) e.to = to = u->bare; /* RFC 6120 §10.3.1 */
    if (modules_hook(HOOK_MESSAGE_OUT, &e) == MOD_STOP) return;
  }
  if (w_is_server(w, to)) {
    if (!strcmp(st->name, "message")) w_error(w, from, to, st, "cancel", "service-unavailable");
    return;
  }
  if (!w_is_local(w, to)) {
    /* no server-to-server yet */
    w_error(w, from, to, st, "cancel", "remote-server-not-found");
    return;
  }
  w_route(w, from, to, st, 0);
}

/* An IQ for a local account: to the full JID's session if it is online, else answered
 * by the server on the account's behalf (RFC 6121 §8.5.2.1.3 bare, §8.5.3.2.2 full: no
 * module takes those, so <service-unavailable/>) by the module that handles its
 * namespace there (router/module.h). */
static void route_iq_inbound(worker_t *w, user_t *u, const char *from, const char *to, xnode_t *st) {
  int full = strchr(to, '/') != NULL;
  if (full) {
    session_t *s = user_session(u, to);
    if (s) {
      w_deliver(w, s, from, to, st);
      return;
    }
  }
  if (!user_exists(w, u)) { /* §8.5.1: no such account; an error or result is dropped */
    const char *type = xnode_attr(st, "type");
    if (type && (!strcmp(type, "get") || !strcmp(type, "set"))) w_error(w, from, to, st, "cancel", "service-unavailable");
    return;
  }
  modules_iq(w, full ? MOD_AT_FULL : MOD_AT_ACCOUNT, u, NULL, from, to, st);
}

/* A stanza for a local entity (processed at its shard): the hooks of its kind, the last
 * of which (mod_message, mod_presence) handles messages and presence; IQs are routed
 * here. */
static void handle_route(worker_t *w, const bus_frame_t *f, xnode_t *st, const bus_addr_t *skip) {
  int msg = !strcmp(st->name, "message"), pres = !msg && !strcmp(st->name, "presence");
  int iq = !msg && !pres && !strcmp(st->name, "iq");
  if (!msg && !pres && !iq) return;
  char *from = arena_strndup(&w->arena, f->from, f->from_len);
  char *to = arena_strndup(&w->arena, f->to, f->to_len);
  user_t *u = user_get(w, w_bare(w, to));
  mod_event_t e = {.w = w, .u = u, .from = from, .to = to, .st = st, .skip = skip, .flags = f->flags};
  if (modules_hook(msg ? HOOK_MESSAGE_IN : pres ? HOOK_PRESENCE_IN : HOOK_IQ_IN, &e) == MOD_STOP) return;
  if (iq) route_iq_inbound(w, u, from, to, st);
}

/* A BOUNCE whose full JID is bound at another connection now: the session moved there
 * (XEP-0198 §5 resumption: what was on its way to the old connection) and gets it, as
 * a message to that full JID would (RFC 6121 §8.5.3.1). */
static int bounce_moved(worker_t *w, const bus_frame_t *f) {
  if (!memchr(f->to, '/', f->to_len)) return 0;
  char *full = arena_strndup(&w->arena, f->to, f->to_len);
  user_t *u = user_get(w, w_bare(w, full));
  session_t *s = user_session(u, full);
  return s && !bus_addr_eq(&s->at, &f->dst);
}

static void handle_frame(worker_t *w, const bus_frame_t *f) {
  xnode_t *st = NULL;
  /* a resumption's payload is an id or a session's state, an acknowledgement's its
   * counts, not a stanza (bus_frame.h) */
  int opaque = f->kind == BUS_RESUME_ASK || f->kind == BUS_SM_ACK ||
               (f->kind == BUS_SESSION_OPEN && (f->flags & BUS_F_RESUME));
  if (f->payload_len && !opaque && xnode_decode(&w->arena, f->payload, f->payload_len, 256, &st) != 0) {
    log_warn("router: undecodable stanza in frame kind %d dropped", f->kind);
    return;
  }
  w->frame_tree = st;
  w->frame_payload = f->payload;
  w->frame_payload_len = f->payload_len;
  w->in_origin = f->origin;
  w->out_k = 0;
  switch (f->kind) {
  case BUS_SESSION_OPEN: session_open(w, f); break;
  case BUS_SESSION_CLOSE: session_close(w, f); break;
  case BUS_C2S:
    if (st) handle_c2s(w, f, st);
    break;
  case BUS_ROUTE:
    if (st) handle_route(w, f, st, NULL);
    break;
  case BUS_BOUNCE:
    /* the session it was for is gone: route again to the bare JID, skipping that
     * connection, so another resource or offline storage takes it; a message that came
     * from offline storage is still there (mod_offline.c) */
    if (st && !(f->flags & BUS_F_OFFLINE) && session_park_bounced(w, f)) {
      bus_frame_t b = *f;
      if (!bounce_moved(w, f)) b.to_len = bus_bare_len(f->to, f->to_len);
      handle_route(w, &b, st, &f->dst);
    }
    break;
  case BUS_RESUME_ASK: session_resume_ask(w, f); break;
  case BUS_MAP: worker_map_changed(w, f->src.conn); break;
  case BUS_MAP_SETTLED:
    if (w->holding && (uint64_t)f->arg >= w->hold_gen) w->hold_after = 2;
    break;
  case BUS_SM_PARK: session_park(w, f); break;
  case BUS_SM_ACK: session_sm_ack(w, f); break;
  case BUS_NODE_DOWN: worker_node_down(w, (uint16_t)f->arg); break;
  default: {
    mod_event_t e = {.w = w, .frame = f};
    if (modules_hook(HOOK_FRAME, &e) != MOD_STOP) log_warn("router: unexpected frame kind %d", f->kind);
  }
  }
}

/* A frame this worker handled already (docs/cluster.md "Exactly once"): re-sent after a
 * node's death whose acknowledgement had not come back, e.g. a client's stanza that the
 * dead router had routed here and that its edge sends again to this router, the new
 * owner of the sender's shard. Handling it twice would store or deliver it twice. */
static int handled_already(worker_t *w, uint64_t origin) {
  if (!w->seen) w->seen = dedup_new((size_t)w->cfg->dedup_window);
  if (!dedup_check(w->seen, origin)) return 0;
  if (w->dups++ % 1000 == 0)
    log_info("router: a frame re-sent after a node's death was handled here already: dropped (%llu so far)",
             (unsigned long long)w->dups);
  return 1;
}

void worker_take(worker_t *w, bus_msg_t *m, int fresh) {
  bus_frame_t f;
  m->next = NULL;
  if (bus_msg_frame(m, &f) != 0) {
    bus_msg_free(m);
    return;
  }
  if (bus_router_kind(f.kind) && !worker_owns(w, &f)) {
    /* its shard moved while it was on its way: on to the new owner */
    bus_hdr_add_flags(m->data, BUS_F_FORWARDED);
    bus_to_shard(w->bus, bus_frame_shard(w->bus, &f), m);
    return;
  }
  if (fresh && f.origin && (f.kind == BUS_C2S || f.kind == BUS_ROUTE || f.kind == BUS_BOUNCE) &&
      handled_already(w, f.origin)) {
    bus_msg_free(m);
    return;
  }
  if (w->holding && hold_frame(w, m, &f)) {
    arena_reset(&w->arena);
    return;
  }
  if (w->held_frames && f.kind == BUS_SESSION_OPEN)
    w->hold_opened = xstrndup(f.from, bus_bare_len(f.from, f.from_len));
  handle_frame(w, &f);
  w->in_origin = 0;
  w->frame_tree = NULL; /* its bytes go with m */
  w->frame_payload = NULL;
  bus_msg_free(m);
  release_touched(w);
  arena_reset(&w->arena);
  if (w->hold_after || w->hold_opened) hold_after_frame(w);
}

void worker_idle(worker_t *w) {
  release_touched(w);
  arena_reset(&w->arena);
}

static void queue_cb(void *ud, bus_msg_t *batch) {
  worker_t *w = ud;
  mod_event_t be = {.w = w, .batch = batch}; /* mod_presence reads ahead for it */
  modules_hook(HOOK_BATCH_BEGIN, &be);
  be.batch = NULL;
  while (batch) {
    bus_msg_t *m = batch;
    batch = m->next;
    worker_take(w, m, 1);
  }
  modules_hook(HOOK_BATCH_END, &be);
  release_touched(w);
  arena_reset(&w->arena);
}

static void close_noop(uv_handle_t *h) {}

static void stop_cb(uv_async_t *a) {
  worker_t *w = a->data;
  uv_close((uv_handle_t *)&w->stop, close_noop);
  bus_queue_drain(&w->bus->worker_q[w->index]); /* nothing accepted is left behind */
  hold_end(w, "the router stops", 0);             /* nor held */
  hold_close(w);
  sm_orphan_close(w);
  bus_queue_close(&w->bus->worker_q[w->index]);
  dir_close(w);
}

static void thread_main(void *arg) {
  worker_t *w = arg;
  char name[16];
  snprintf(name, sizeof name, "router%d", w->index);
  log_set_thread(name);
  metrics_thread_init();
  bus_queue_own(&w->bus->worker_q[w->index]);
  uv_run(&w->loop, UV_RUN_DEFAULT);
}

router_t *router_create(const xmpp_config_t *cfg, bus_t *bus) {
  router_t *r = xcalloc(1, sizeof *r);
  r->cfg = cfg;
  r->bus = bus;
  r->nworkers = bus->nworkers;
  r->workers = xcalloc((size_t)r->nworkers, sizeof *r->workers);
  modules_router_init(r);
  for (int i = 0; i < r->nworkers; i++) {
    worker_t *w = &r->workers[i];
    w->router = r;
    w->index = i;
    w->cfg = cfg;
    w->bus = bus;
    w->users = strmap_new();
    arena_init(&w->arena);
    uv_loop_init(&w->loop);
    char *err = NULL;
    w->store = store_open(cfg->store_backend, config_store_target(cfg), &err);
    if (!w->store) {
      log_error("storage: %s", err ? err : "cannot open");
      xfree(err);
      return NULL;
    }
    uv_async_init(&w->loop, &w->stop, stop_cb);
    w->stop.data = w;
    hold_init(w);
    sm_orphan_init(w);
    char qname[24];
    snprintf(qname, sizeof qname, "router%d", i);
    bus_queue_attach(bus, &bus->worker_q[i], &w->loop, queue_cb, w, qname);
    /* outside a cluster a worker's frames touch nothing bound to its loop (the session
     * directory, on Redis through w->loop, exists only in a cluster: dir_open). Not on
     * the Redis store either: its reads are network round trips, which would hold the
     * edge thread that ran them, and a worker's own thread batches them (a log-in storm's
     * rosters and offline queues read ahead per batch of frames) */
    bus_queue_inline(&bus->worker_q[i], cfg->inline_routing && !cfg->cluster_node &&
                                            strcmp(cfg->store_backend, "redis") != 0);
    dir_open(w);
    modules_worker_init(w);
  }
  return r;
}

int router_start(router_t *r) {
  for (int i = 0; i < r->nworkers; i++)
    if (uv_thread_create(&r->workers[i].thread, thread_main, &r->workers[i]) != 0) return -1;
  return 0;
}

void router_stop(router_t *r) {
  for (int i = 0; i < r->nworkers; i++) uv_async_send(&r->workers[i].stop);
  for (int i = 0; i < r->nworkers; i++) uv_thread_join(&r->workers[i].thread);
}

void router_free(router_t *r) {
  if (!r) return;
  for (int i = 0; i < r->nworkers; i++) {
    worker_t *w = &r->workers[i];
    uv_loop_close(&w->loop);
    strmap_free(w->users, user_free);
    modules_worker_free(w);
    xfree(w->owner_view);
    hold_free(w);
    dedup_free(w->seen);
    arena_free(&w->arena);
    buf_free(&w->scratch);
    store_close(w->store);
  }
  modules_router_free(r); /* after the workers' worker_free: what they handed over is written */
  xfree(r->workers);
  xfree(r);
}

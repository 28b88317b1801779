/* Presence (RFC 6121 §4): the module that handles every presence stanza, at the end of
 * HOOK_PRESENCE_OUT and HOOK_PRESENCE_IN, and the presence of sessions that end
 * (HOOK_SESSION_GONE) or come back after failover (HOOK_SESSION_RESTORE).
 *
 * Outbound, at the sender's shard:
 *   broadcast (no 'to'): recorded on the session; sent to every contact whose
 *     subscription is 'from' or 'both', and to the user's own available resources
 *     (§4.2.2, §4.4.2). The first available presence of a session is its initial
 *     presence: probes go to contacts with 'to'/'both' (§4.3), the other resources'
 *     presence is shown to it, then HOOK_PRESENCE_INITIAL (mod_roster delivers pending
 *     subscription requests, mod_offline the offline messages: XEP-0160).
 *   unavailable: also to every JID that got directed presence (§4.6.3).
 *   directed ('to' set): routed as is and remembered (§4.6), at most limits.max_directed
 *     JIDs per session (directed_remember). To another domain (no server-to-server yet):
 *     <remote-server-not-found/>, subscription stanzas too (RFC 6120 §10.4.3).
 *   subscription types: HOOK_SUBSCRIPTION_OUT (mod_roster.c), and _IN inbound.
 * Inbound, at the recipient's shard: broadcast presence is delivered only when the
 * recipient subscribed ('to'/'both'); directed presence always; probes are answered
 * when the prober is subscribed to us ('from'/'both').
 * At a batch's begin, the log-ins and initial presences in it are listed for the storage
 * reads they will need (HOOK_BATCH_AHEAD). */
#include "router/module.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"

static int sub_has_from(roster_sub_t s) { return s == SUB_FROM || s == SUB_BOTH; }
static int sub_has_to(roster_sub_t s) { return s == SUB_TO || s == SUB_BOTH; }

/* A subscription stanza (RFC 6121 §3), handled by the roster's module. */
static int is_subscription(const char *type) {
  return type && (!strcmp(type, "subscribe") || !strcmp(type, "subscribed") || !strcmp(type, "unsubscribe") ||
                  !strcmp(type, "unsubscribed"));
}

extern const module_t mod_presence;

/* The JIDs a session sent directed presence to live in the module's session slot. */
strmap_t *presence_directed(const session_t *s) { return mod_session_get(s, &mod_presence); }

static void set_directed(session_t *s, strmap_t *jids) {
  if (jids || s->mod) *mod_session_state(s, &mod_presence) = jids;
}

static void directed_free(void *p) { strmap_free(p, NULL); }

static xnode_t *stored_presence(worker_t *w, const session_t *s) {
  xnode_t *p = NULL;
  if (s->presence && xnode_decode(&w->arena, s->presence, s->presence_len, 256, &p) == 0) return p;
  return xnode_new(&w->arena, "presence", NS_CLIENT);
}

typedef struct {
  worker_t *w;
  user_t *u;
  session_t *s; /* NULL for probes (sent from the bare JID) */
  const char *from;
  const xnode_t *st;
  int want_to; /* select contacts by 'to' (probes) rather than 'from' (broadcast) */
  strmap_t *fanned; /* directed: the roster st also went to by fan_cb, or NULL */
} fan_t;

/* Whether a module keeps x's presence from 'to' (HOOK_PRESENCE_BROADCAST). */
static int held_back(fan_t *x, const char *to) {
  mod_event_t e = {.w = x->w, .u = x->u, .s = x->s, .from = x->from, .to = to, .st = (xnode_t *)x->st};
  return modules_hook(HOOK_PRESENCE_BROADCAST, &e) == MOD_STOP;
}

static void fan_cb(const char *contact, void *v, void *ud) {
  fan_t *x = ud;
  ritem_t *it = v;
  if (x->want_to ? !sub_has_to(it->sub) : !sub_has_from(it->sub)) return;
  if (held_back(x, contact)) return;
  w_route(x->w, x->from, contact, x->st, 0);
}

/* The unavailable presence to a JID that got directed presence (§4.6.3), unless the
 * same stanza already went to its bare JID's 'from'/'both' contact by the broadcast: the
 * contact would get it twice (the broadcast reaches all its available resources). */
static void directed_cb(const char *jid, void *v, void *ud) {
  fan_t *x = ud;
  if (held_back(x, jid)) return;
  if (x->fanned) {
    const char *slash = strchr(jid, '/');
    char *bare = slash ? arena_strndup(&x->w->arena, jid, (size_t)(slash - jid)) : (char *)jid;
    ritem_t *it = strmap_get(x->fanned, bare);
    if (it && sub_has_from(it->sub)) return;
  }
  w_route(x->w, x->from, jid, x->st, BUS_F_DIRECTED);
}

/* Sends st from s to its contacts and to the user's own available resources. */
static void broadcast(worker_t *w, user_t *u, session_t *s, const xnode_t *st, int include_directed) {
  fan_t x = {w, u, s, s->full, st, 0, NULL};
  strmap_t *r = user_roster(w, u);
  strmap_each(r, fan_cb, &x);
  x.fanned = r;
  strmap_t *jids = presence_directed(s);
  if (include_directed && jids) {
    strmap_each(jids, directed_cb, &x);
    strmap_free(jids, NULL);
    set_directed(s, NULL);
  }
  for (session_t *o = u->sessions; o; o = o->next)
    if (o->available || o == s) w_deliver(w, o, s->full, o->full, st);
}

static void presence_session_gone(worker_t *w, user_t *u, session_t *s) {
  strmap_t *jids = presence_directed(s);
  if (!s->available && !jids) return;
  int was = s->available;
  s->available = 0;
  xnode_t *p = xnode_new(&w->arena, "presence", NS_CLIENT);
  xnode_set_attr(&w->arena, p, "type", "unavailable");
  strmap_t *fanned = NULL;
  if (was) {
    fan_t x = {w, u, s, s->full, p, 0, NULL};
    strmap_each(fanned = user_roster(w, u), fan_cb, &x);
    for (session_t *o = u->sessions; o; o = o->next)
      if (o != s && o->available) w_deliver(w, o, s->full, o->full, p);
  }
  if (jids) {
    fan_t x = {w, u, s, s->full, p, 0, fanned};
    strmap_each(jids, directed_cb, &x);
  }
}

/* Remembers that s sent directed available presence to 'to' (a JID of this domain), so
 * that its unavailable presence goes there too (§4.6.3). Only accounts (a JID with a
 * local part) are remembered: the domain itself has no session to tell. At most
 * limits.max_directed JIDs per session: a new one beyond is refused (-1) rather than
 * sent and forgotten, which would leave the recipient seeing us online for ever (the
 * §4.6.3 unavailable could not follow). A JID already remembered is always fine. */
static int directed_remember(worker_t *w, session_t *s, const char *to) {
  const char *slash = strchr(to, '/');
  const char *at = strchr(to, '@');
  if (!at || (slash && at > slash)) return 0;
  strmap_t *jids = presence_directed(s);
  if (!jids) set_directed(s, jids = strmap_new());
  if (strmap_get(jids, to)) return 0;
  if (strmap_count(jids) >= (size_t)w->cfg->max_directed) return -1;
  strmap_put(jids, to, (void *)1);
  return 0;
}

void presence_send_current(worker_t *w, user_t *u, const char *to) {
  for (session_t *s = u->sessions; s; s = s->next)
    if (s->available) w_route(w, s->full, to, stored_presence(w, s), 0);
}

static int parse_priority(worker_t *w, const xnode_t *st) {
  xnode_t *p = xnode_child(st, "priority", NULL);
  if (!p) return 0;
  long v = strtol(xnode_text(&w->arena, p), NULL, 10);
  return v < -128 ? -128 : v > 127 ? 127 : (int)v; /* RFC 6121 §4.7.2.3 */
}

static void presence_restore(worker_t *w, session_t *s, const xnode_t *st) {
  const char *type = st ? xnode_attr(st, "type") : NULL;
  xfree(s->presence);
  s->presence = NULL;
  s->presence_len = 0;
  s->available = st && !type;
  if (!s->available) return;
  s->priority = parse_priority(w, st);
  buf_t b;
  buf_init(&b);
  xnode_encode(st, &b);
  s->presence = buf_steal(&b, &s->presence_len);
}

static void presence_outbound(worker_t *w, user_t *u, session_t *s, const char *to, xnode_t *st) {
  const char *type = xnode_attr(st, "type");
  if (to && !w_is_local(w, to)) {
    /* another domain (a MUC service, a remote contact): no server-to-server yet, so the
     * sender is told (RFC 6120 §10.4.3) instead of waiting for ever; nothing is routed,
     * remembered or changed in the roster (an error is never answered) */
    w_error(w, s->full, to, st, "cancel", "remote-server-not-found");
    return;
  }
  if (is_subscription(type)) {
    mod_event_t e = {.w = w, .u = u, .s = s, .from = s->full, .to = to, .st = st};
    if (to) modules_hook(HOOK_SUBSCRIPTION_OUT, &e); /* mod_roster */
    return;
  }
  if (type && strcmp(type, "unavailable") && strcmp(type, "error")) return; /* probe etc. */
  if (to) {
    /* directed presence (§4.6) */
    if (!type && directed_remember(w, s, to) != 0) {
      w_error(w, s->full, to, st, "wait", "resource-constraint");
      return;
    }
    strmap_t *jids = presence_directed(s);
    if (type && !strcmp(type, "unavailable") && jids) strmap_del(jids, to);
    w_route(w, s->full, to, st, BUS_F_DIRECTED);
    return;
  }
  if (type && !strcmp(type, "error")) return;
  if (!type) {
    int initial = !s->available;
    s->available = 1;
    s->priority = parse_priority(w, st);
    buf_t b;
    buf_init(&b);
    xnode_encode(st, &b);
    xfree(s->presence);
    s->presence = buf_steal(&b, &s->presence_len);
    if (initial) {
      xnode_t *probe = xnode_new(&w->arena, "presence", NS_CLIENT);
      xnode_set_attr(&w->arena, probe, "type", "probe");
      fan_t x = {w, u, NULL, u->bare, probe, 1, NULL};
      strmap_each(user_roster(w, u), fan_cb, &x);
      for (session_t *o = u->sessions; o; o = o->next)
        if (o != s && o->available) w_deliver(w, s, o->full, s->full, stored_presence(w, o));
    }
    broadcast(w, u, s, st, 0);
    if (initial) {
      mod_event_t e = {.w = w, .u = u, .s = s, .from = s->full, .st = st};
      modules_hook(HOOK_PRESENCE_INITIAL, &e); /* pending subscriptions, offline messages */
    }
    return;
  }
  /* unavailable */
  if (!s->available && !presence_directed(s)) return;
  s->available = 0;
  xfree(s->presence);
  s->presence = NULL;
  s->presence_len = 0;
  broadcast(w, u, s, st, 1);
}

static void presence_inbound(worker_t *w, user_t *u, const char *from, const char *to, xnode_t *st,
                             uint16_t flags) {
  const char *type = xnode_attr(st, "type");
  if (is_subscription(type)) {
    mod_event_t e = {.w = w, .u = u, .from = from, .to = to, .st = st, .flags = flags};
    modules_hook(HOOK_SUBSCRIPTION_IN, &e); /* mod_roster */
    return;
  }
  if (!u->sessions) return; /* nobody online to tell (probes get no answer: RFC 6121 §4.3.2 allows it) */
  char *from_bare = w_bare(w, from);
  if (type && !strcmp(type, "probe")) {
    ritem_t *it = strmap_get(user_roster(w, u), from_bare);
    if (it && sub_has_from(it->sub)) presence_send_current(w, u, from_bare);
    return;
  }
  if (type && strcmp(type, "unavailable") && strcmp(type, "error")) return;
  if (!(flags & BUS_F_DIRECTED) && !(type && !strcmp(type, "error"))) {
    ritem_t *it = strmap_get(user_roster(w, u), from_bare);
    if (!it || !sub_has_to(it->sub)) return; /* not subscribed: not for us (§4.4.3) */
  }
  if (strchr(to, '/')) {
    session_t *s = user_session(u, to);
    if (s) w_deliver(w, s, from, to, st);
    return;
  }
  for (session_t *s = u->sessions; s; s = s->next)
    if (s->available) w_deliver(w, s, from, s->full, st);
}

typedef struct names {
  const char **v;
  size_t n, cap;
  strmap_t *seen; /* created with the first name */
} names_t;

static void names_add(names_t *l, const char *bare) {
  if (!l->seen) l->seen = strmap_new();
  if (strmap_get(l->seen, bare)) return;
  strmap_put(l->seen, bare, (void *)bare);
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 64;
    l->v = xrealloc(l->v, l->cap * sizeof *l->v);
  }
  l->v[l->n++] = bare;
}

static void names_free(names_t *l) {
  strmap_free(l->seen, NULL);
  xfree(l->v);
}

/* An available broadcast presence (no 'to', no 'type'): judged from the frame's head,
 * without decoding it. Every other C2S frame (messages, IQs: the hot path) is passed
 * over at this cheap test. */
static int broadcast_available(const bus_frame_t *f) {
  if (f->kind != BUS_C2S || f->to_len) return 0;
  xnode_head_t h;
  return xnode_encoded_head(f->payload, f->payload_len, "type", &h) == 0 && !h.attr && h.name_len == 8 &&
         !memcmp(h.name, "presence", 8);
}

/* HOOK_BATCH_BEGIN: the storage reads a batch of frames is about to make, listed for
 * HOOK_BATCH_AHEAD so that they are made together first (a log-in storm then costs a
 * storage round trip per batch, not per user):
 *  - the rosters of users binding a session, or whose first presence arrives with their
 *    roster not loaded yet (mod_roster reads them; the session keeps its roster);
 *  - the users whose initial presence is in the batch (mod_offline reads their queue
 *    lengths: an empty queue, most log-ins, is then not read at all).
 * Only for two users or more: a lone frame reads what it needs as before. Messages and
 * IQs cost a frame-head decode here and nothing else. */
static int batch_begin(mod_event_t *e) {
  worker_t *w = e->w;
  if (!e->batch || !e->batch->next) return MOD_OK;
  names_t rosters = {0}, queues = {0};
  for (bus_msg_t *m = e->batch; m; m = m->next) {
    bus_frame_t f;
    if (bus_msg_frame(m, &f) != 0) continue;
    int open = f.kind == BUS_SESSION_OPEN;
    if ((!open && !broadcast_available(&f)) || !worker_owns(w, &f)) continue;
    char *bare = arena_strndup(&w->arena, f.from, bus_bare_len(f.from, f.from_len));
    if (!*bare) continue;
    user_t *u = strmap_get(w->users, bare);
    if (!u) {
      if (open) names_add(&rosters, bare);
      continue;
    }
    if (!roster_loaded(u)) names_add(&rosters, bare);
    if (open) continue;
    for (session_t *s = u->sessions; s; s = s->next) /* its initial presence (RFC 6121 §4.2) */
      if (strlen(s->full) == f.from_len && !memcmp(s->full, f.from, f.from_len)) {
        if (!s->available) names_add(&queues, bare);
        break;
      }
  }
  if (rosters.n >= 2 || queues.n >= 2) {
    mod_event_t a = {.w = w, .names = {rosters.v, queues.v}, .nnames = {rosters.n >= 2 ? rosters.n : 0,
                                                                        queues.n >= 2 ? queues.n : 0}};
    modules_hook(HOOK_BATCH_AHEAD, &a);
  }
  names_free(&rosters);
  names_free(&queues);
  return MOD_OK;
}

static int presence_out(mod_event_t *e) {
  presence_outbound(e->w, e->u, e->s, *e->to ? e->to : NULL, e->st);
  return MOD_STOP;
}

static int presence_in(mod_event_t *e) {
  presence_inbound(e->w, e->u, e->from, e->to, e->st, e->flags);
  return MOD_STOP;
}

static int session_gone(mod_event_t *e) {
  presence_session_gone(e->w, e->u, e->s);
  return MOD_OK;
}

static int session_restore(mod_event_t *e) {
  presence_restore(e->w, e->s, e->st);
  return MOD_OK;
}

const module_t mod_presence = {
    .name = "presence",
    .hooks = {[HOOK_PRESENCE_OUT] = presence_out,
              [HOOK_PRESENCE_IN] = presence_in,
              [HOOK_SESSION_GONE] = session_gone,
              [HOOK_SESSION_RESTORE] = session_restore,
              [HOOK_BATCH_BEGIN] = batch_begin},
    .session_free = directed_free,
};

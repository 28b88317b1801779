/* Sessions: a bound resource and where it is connected.
 *
 * RFC 6120 §7.7.2.2: a second bind of the same full JID replaces the first; the old
 * connection is told <conflict/> (BUS_KICK) and its presence ends as if it had gone
 * unavailable. A close from an edge is honoured only when it names the connection the
 * session is on now, so a late close of a replaced connection changes nothing. */
#include "router/module.h"

#include <string.h>

#include "common/alloc.h"
#include "common/log.h"

static void unlink_session(user_t *u, session_t *s) {
  for (session_t **pp = &u->sessions; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      return;
    }
}

/* ---- XEP-0198 §5 in a cluster: what a detached session keeps, copied at the router ----
 * A session detached on edge node A keeps its unacknowledged messages and those that
 * arrive meanwhile in A's memory. So that A's death (kill -9, a crash) loses none of them,
 * A sends the router a copy of each (BUS_SM_PARK) and then BUS_PARK_ON; from then on the
 * router keeps a copy of every message it delivers to the session itself (BUS_F_PARKED
 * on the DELIVER tells A it need not send one). When the session ends (closed, timed out,
 * replaced: A or the new edge sends back what it held) the copies go; when it is resumed
 * they stay until the resuming edge has written <resumed/> (BUS_PARK_OFF), so the death
 * of that edge mid-resume loses nothing either. When the node holding the session dies,
 * the copies go back to the account (worker_node_down): another resource or offline
 * storage. Bounded like the edge's own queue (limits.sm_max_unacked messages,
 * limits.max_pending_out bytes): the edge ends a detached session past them. */
typedef struct sm_park {
  bus_msg_t *head, **tail; /* BOUNCE frames, oldest first */
  size_t n, bytes;
  int full; /* past the bounds: copies no more (logged once) */
} sm_park_t;

static void park_free(sm_park_t *p) {
  if (!p) return;
  while (p->head) {
    bus_msg_t *m = p->head;
    p->head = m->next;
    bus_msg_free(m);
  }
  xfree(p);
}

static sm_park_t *park_get(session_t *s) {
  if (!s->park) {
    s->park = xcalloc(1, sizeof *s->park);
    s->park->tail = &s->park->head;
  }
  return s->park;
}

/* Keeps f (a DELIVER or a kept message) as the BOUNCE that would send it back. */
static void park_add(session_t *s, const bus_frame_t *f, const xmpp_config_t *cfg) {
  sm_park_t *p = park_get(s);
  if (p->full) return;
  if (p->n >= (size_t)cfg->sm_max_unacked || p->bytes + f->payload_len > (size_t)cfg->max_pending_out) {
    /* the edge ends the session before this (its count includes ours) */
    log_warn("session %s: more kept for its resumption than limits.sm_max_unacked / max_pending_out: no more "
             "copies at the router",
             s->full);
    p->full = 1;
    return;
  }
  bus_frame_t b = *f;
  b.kind = BUS_BOUNCE;
  b.flags &= (uint16_t)~BUS_F_PARKED;
  b.dst = s->at; /* the connection a bounce skips */
  bus_msg_t *m = bus_msg_new(&b);
  m->next = NULL;
  *p->tail = m;
  p->tail = &m->next;
  p->n++;
  p->bytes += f->payload_len;
}

static void park_drop_first(sm_park_t *p, int64_t n) {
  while (p->head && n-- > 0) {
    bus_msg_t *m = p->head;
    p->head = m->next;
    bus_frame_t f;
    if (bus_msg_frame(m, &f) == 0) p->bytes -= f.payload_len;
    p->n--;
    bus_msg_free(m);
  }
  if (!p->head) p->tail = &p->head;
}

void session_park_copy(session_t *s, bus_frame_t *f, const xnode_t *st, const xmpp_config_t *cfg) {
  const char *type = xnode_attr(st, "type");
  if (f->kind != BUS_DELIVER || (f->flags & BUS_F_OFFLINE) || strcmp(st->name, "message") ||
      (type && !strcmp(type, "error")))
    return;
  park_add(s, f, cfg);
  if (!s->park->full) f->flags |= BUS_F_PARKED;
}

static session_t *park_session(worker_t *w, const bus_frame_t *f) {
  if (!memchr(f->to, '/', f->to_len)) return NULL;
  char *full = arena_strndup(&w->arena, f->to, f->to_len);
  return user_session(user_get(w, w_bare(w, full)), full);
}

void session_park(worker_t *w, const bus_frame_t *f) {
  session_t *s = park_session(w, f);
  if (!s || !bus_addr_eq(&s->at, &f->src)) return; /* ended, replaced or moved since */
  if (f->payload_len) {
    park_add(s, f, w->cfg);
  } else if (f->arg == BUS_PARK_ON) {
    park_get(s);
    log_debug("session %s detached: %zu messages kept at the router", s->full, s->park->n);
  } else if (f->arg == BUS_PARK_OFF) {
    park_free(s->park);
    s->park = NULL;
  } else if (f->arg > 0 && s->park) {
    park_drop_first(s->park, f->arg);
  }
}

int session_park_bounced(worker_t *w, const bus_frame_t *f) {
  session_t *s = park_session(w, f);
  if (!s) return !(f->flags & BUS_F_PARKED);
  sm_park_t *p = s->park;
  if (!p) return 1;
  for (bus_msg_t **pp = &p->head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
    bus_frame_t c;
    if (bus_msg_frame(*pp, &c) != 0 || c.payload_len != f->payload_len ||
        memcmp(c.payload, f->payload, f->payload_len))
      continue;
    bus_msg_t *m = *pp;
    *pp = m->next;
    if (p->tail == &m->next) p->tail = prev ? &prev->next : &p->head;
    p->n--;
    p->bytes -= c.payload_len;
    bus_msg_free(m);
    break;
  }
  return 1;
}

void session_park_release(worker_t *w, session_t *s) {
  sm_park_t *p = s->park;
  if (!p) return;
  s->park = NULL;
  size_t n = p->n;
  while (p->head) {
    bus_msg_t *m = p->head;
    p->head = m->next;
    m->next = NULL;
    bus_frame_t f;
    if (bus_msg_frame(m, &f) == 0) bus_to_router(w->bus, f.to, bus_bare_len(f.to, f.to_len), m);
    else bus_msg_free(m);
  }
  xfree(p);
  if (n) log_info("session %s: its node is down: %zu messages kept for its resumption go back to the account",
                  s->full, n);
}

void session_free(session_t *s) {
  park_free(s->park);
  modules_session_free(s);
  xfree(s->full);
  xfree(s->presence);
  xfree(s);
}

session_t *session_add(user_t *u, const char *full, const bus_addr_t *at) {
  session_t *s = xcalloc(1, sizeof *s);
  s->full = xstrdup(full);
  s->resource = strchr(s->full, '/') + 1;
  s->at = *at;
  s->next = u->sessions;
  u->sessions = s;
  u->exists = 1;
  return s;
}

int session_count(const user_t *u) {
  int n = 0;
  for (const session_t *s = u->sessions; s; s = s->next) n++;
  return n;
}

static void ack(worker_t *w, const bus_frame_t *f, int64_t result) {
  bus_frame_t a = {0};
  a.kind = BUS_SESSION_ACK;
  if (f->flags & BUS_F_RESUME) {
    /* a resumption's answer: with the detached state when it comes from another node */
    a.flags = BUS_F_RESUME;
    a.payload = f->payload;
    a.payload_len = f->payload_len;
  }
  a.dst = f->src;
  a.arg = result;
  a.to = f->from;
  a.to_len = f->from_len;
  bus_to_edge(w->bus, &f->src, bus_msg_new(&a));
}

void session_remove(worker_t *w, user_t *u, session_t *s) {
  mod_event_t e = {.w = w, .u = u, .s = s, .from = s->full};
  modules_hook(HOOK_SESSION_CLOSE, &e);
  dir_session_gone(w, s);
  unlink_session(u, s);
  session_free(s);
}

void session_finish(worker_t *w, user_t *u, session_t *s) {
  mod_event_t e = {.w = w, .u = u, .s = s, .from = s->full};
  modules_hook(HOOK_SESSION_GONE, &e); /* mod_presence: its unavailable (RFC 6121 §4.6) */
  session_remove(w, u, s);
}

/* XEP-0198 §5: a detached session taken over by a new connection. It stays the same
 * session (presence, directed presence, offline window, module state): only where it is
 * connected changes. Refused when the session is not at the old address any more (it was
 * replaced by a new bind, or ended): the edge then fails the resumption. */
static void session_resume(worker_t *w, const bus_frame_t *f) {
  char *full = arena_strndup(&w->arena, f->from, f->from_len);
  user_t *u = user_get(w, w_bare(w, full));
  session_t *s = user_session(u, full);
  if (!s || !bus_addr_eq(&s->at, &f->dst)) {
    ack(w, f, BUS_ACK_GONE);
    return;
  }
  s->at = f->src;
  dir_session(w, s);
  ack(w, f, BUS_ACK_OPEN);
  log_debug("session %s resumed at edge %u conn %llx", full, f->src.thread, (unsigned long long)f->src.conn);
}

void session_open(worker_t *w, const bus_frame_t *f) {
  if (f->flags & BUS_F_RESUME) {
    session_resume(w, f);
    return;
  }
  if (f->flags & BUS_F_REANNOUNCE) {
    session_reannounce(w, f, w->frame_tree);
    return;
  }
  char *full = arena_strndup(&w->arena, f->from, f->from_len);
  user_t *u = user_get(w, w_bare(w, full));
  session_t *old = user_session(u, full);
  if (old && bus_addr_eq(&old->at, &f->src)) {
    /* the same connection again: its shard moved and the edge re-announced it before
     * this (re-routed) bind arrived */
    ack(w, f, BUS_ACK_OPEN);
    return;
  }
  if (!old) {
    int n = session_count(u);
    if (n >= w_max_resources(w, u->bare)) {
      log_info("bind of %s refused: %d resources already", full, n);
      ack(w, f, BUS_ACK_TOO_MANY_RESOURCES);
      return;
    }
  }
  if (old) {
    bus_frame_t k = {0};
    k.kind = BUS_KICK;
    k.dst = old->at;
    k.arg = BUS_KICK_CONFLICT;
    bus_to_edge(w->bus, &old->at, bus_msg_new(&k));
    session_finish(w, u, old);
    log_info("session %s replaced (conflict)", full);
  }
  session_t *s = session_add(u, full, &f->src);
  dir_session(w, s);
  mod_event_t e = {.w = w, .u = u, .s = s, .from = s->full};
  modules_hook(HOOK_SESSION_OPEN, &e);
  ack(w, f, BUS_ACK_OPEN);
  log_debug("session %s open at edge %u conn %llx", full, f->src.thread, (unsigned long long)f->src.conn);
}

void session_close(worker_t *w, const bus_frame_t *f) {
  char *full = arena_strndup(&w->arena, f->from, f->from_len);
  user_t *u = user_get(w, w_bare(w, full));
  session_t *s = user_session(u, full);
  if (!s || !bus_addr_eq(&s->at, &f->src)) return;
  session_finish(w, u, s);
  log_debug("session %s closed", full);
}

/* XEP-0198 §5 across edge nodes (docs/cluster.md): a client authenticated as f->from
 * asks at f->src to resume with an id its edge node does not hold. Only the sessions of
 * that account are looked at (an id works only for the account that got it); the id's
 * tag names one of them (bus_resume_tag), and the edge thread holding it, which checks
 * the whole id, hands it over (BUS_RESUME, answered with SESSION_OPEN|BUS_F_RESUME). */
void session_resume_ask(worker_t *w, const bus_frame_t *f) {
  uint32_t want = 0;
  int ok = f->payload_len >= 8;
  for (size_t i = 0; ok && i < 8; i++) {
    uint8_t ch = f->payload[i];
    int v = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
    ok = v >= 0;
    want = want << 4 | (uint32_t)(v & 15);
  }
  char *bare = arena_strndup(&w->arena, f->from, f->from_len);
  user_t *u = ok && !memchr(bare, '/', f->from_len) ? user_get(w, bare) : NULL;
  for (session_t *s = u ? u->sessions : NULL; s; s = s->next) {
    if (bus_resume_tag(s->full, strlen(s->full)) != want || bus_addr_eq(&s->at, &f->src)) continue;
    bus_frame_t r = *f;
    r.kind = BUS_RESUME;
    r.flags = 0;
    r.dst = s->at;
    bus_to_edge(w->bus, &s->at, bus_msg_new(&r));
    log_info("resume of %s asked at node %u: forwarded to node %u", bare, f->src.node, s->at.node);
    return;
  }
  log_debug("resume asked by %s at node %u: no such session", bare, f->src.node);
  bus_frame_t r = *f;
  r.flags = BUS_F_RESUME;
  r.payload = NULL;
  r.payload_len = 0;
  ack(w, &r, BUS_ACK_GONE);
}

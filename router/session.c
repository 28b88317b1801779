/* Sessions: a bound resource and where it is connected.
 *
 * RFC 6120 §7.7.2.2: a second bind of the same full JID replaces the first; the old
 * connection is told <conflict/> (BUS_KICK) and its presence ends as if it had gone
 * unavailable. A close from an edge is honoured only when it names the connection the
 * session is on now, so a late close of a replaced connection changes nothing. */
#include "router/module.h"

#include <stddef.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/metrics.h"
#include "router/sm_park.h"

static void unlink_session(user_t *u, session_t *s) {
  for (session_t **pp = &u->sessions; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      return;
    }
}

/* ---- XEP-0198 in a cluster: copies at the router of what a session's client has not
 * acknowledged (docs/cluster.md "Stream resumption across nodes", "Exactly once") ----
 * Only the client's h tells what it really received, and it reaches the edge holding
 * the connection, whose death (kill -9, a crash) takes along the messages it kept and
 * the knowledge of which ones the client had. So the router of the session's account
 * keeps a copy of every message it delivers to a session with stream management on, and
 * numbers it (the DELIVER carries BUS_F_PARKED and the number in arg); the edge forwards
 * the client's acknowledgements by number (BUS_SM_ACK: the first one, at <enable/>,
 * starts the copying), and the acknowledged copies go. When the edge node dies
 * (worker_node_down) the router sends back to the account (another resource, or offline
 * storage) only the copies still unacknowledged, and a bounce of the same DELIVER by the
 * link that could not deliver it is dropped: exactly once for what the client
 * acknowledged (a resumable one is kept for a resumption elsewhere first: sm_orphan.c).
 * A session detached for resumption is covered the same way; its edge also
 * sends copies of what it keeps that the router has none of (BUS_SM_PARK, unnumbered:
 * messages delivered before the router knew of stream management, or all it keeps to a
 * router that takes the shard over, which keep their numbers). Copies go when the
 * session ends normally (the edge sends back what it held) and, when it is resumed, the
 * unnumbered ones once the resuming edge has written <resumed/> (BUS_PARK_OFF; the
 * numbered ones stay until the client acknowledges them there). Bounded like the edge's
 * own queue (limits.sm_max_unacked messages, limits.max_pending_out bytes). */
void copy_free(sm_park_t *p, copy_t *c) {
  bus_frame_t f;
  p->hint = NULL;
  if (bus_msg_frame(c->m, &f) == 0) p->bytes -= f.payload_len;
  p->n--;
  bus_msg_free(c->m);
  xfree(c);
}

static void park_free(sm_park_t *p) {
  if (!p) return;
  for (copy_t **l = &p->plain; l; l = l == &p->plain ? &p->num : NULL)
    while (*l) {
      copy_t *c = *l;
      *l = c->next;
      bus_msg_free(c->m);
      xfree(c);
    }
  xfree(p);
}

static sm_park_t *park_get(session_t *s) {
  if (!s->park) {
    s->park = xcalloc(1, sizeof *s->park);
    s->park->num_tail = &s->park->num;
    s->park->plain_tail = &s->park->plain;
  }
  return s->park;
}

/* Keeps f (a DELIVER or a kept message) as the BOUNCE that would send it back, as copy
 * number n (0: unnumbered). 0 when past the bounds. */
int park_add(session_t *s, const bus_frame_t *f, uint64_t n, const xmpp_config_t *cfg) {
  sm_park_t *p = park_get(s);
  if (p->full) return 0;
  if (p->n >= (size_t)cfg->sm_max_unacked || p->bytes + f->payload_len > (size_t)cfg->max_pending_out) {
    /* the edge ends the session before this (its count includes ours) */
    log_warn("session %s: more unacknowledged messages kept for it than limits.sm_max_unacked / max_pending_out: "
             "no more copies at the router",
             s->full);
    p->full = 1;
    return 0;
  }
  copy_t **at = p->plain_tail;
  if (n) {
    if (n <= p->acked) return 1; /* acknowledged already */
    /* in order of number: usually the last; a copy the edge re-sends to a new router
     * may come after ones this router numbered meanwhile, in order among themselves, so
     * the walk starts at the last one inserted (hint) */
    copy_t *last = p->num ? (copy_t *)(void *)p->num_tail : NULL; /* next is copy_t's first member */
    if (!last || last->n < n) {
      at = p->num_tail;
    } else {
      copy_t *prev = p->hint && p->hint->n < n ? p->hint : NULL;
      for (copy_t *c = prev ? prev->next : p->num; c && c->n < n; c = c->next) prev = c;
      at = prev ? &prev->next : &p->num;
      if (*at && (*at)->n == n) return 1; /* has it already */
    }
  }
  bus_frame_t b = *f;
  b.kind = BUS_BOUNCE;
  b.flags &= (uint16_t)~BUS_F_PARKED;
  b.arg = 0;
  b.dst = s->at; /* the connection a bounce skips */
  /* to the account, never to the full JID: sent back when s is replaced by a new bind
   * of it (session_open), the full JID is the new session's, which may not have sent its
   * presence nor enabled stream management yet (bounce_moved would take it for s resumed
   * there): a client that gets messages between <bind/> and <enabled/> may drop them
   * unacknowledged, and nothing keeps a copy (RFC 6121 §8.5.2.1: a bare JID's messages go
   * to available resources, else to offline storage) */
  b.to_len = bus_bare_len(f->to, f->to_len);
  copy_t *c = xcalloc(1, sizeof *c);
  c->n = n;
  c->m = bus_msg_new(&b);
  c->m->next = NULL;
  c->next = *at;
  *at = c;
  if (!c->next) {
    if (n) p->num_tail = &c->next;
    else p->plain_tail = &c->next;
  }
  if (n) p->hint = c;
  p->n++;
  p->bytes += f->payload_len;
  return 1;
}

void park_fix_tails(sm_park_t *p) {
  p->num_tail = &p->num;
  while (*p->num_tail) p->num_tail = &(*p->num_tail)->next;
  if (!p->plain) p->plain_tail = &p->plain;
}

/* The first k unnumbered copies go (the h of a <resume/> acknowledged them). */
void park_drop_plain(sm_park_t *p, int64_t k) {
  while (p->plain && k-- > 0) {
    copy_t *c = p->plain;
    p->plain = c->next;
    copy_free(p, c);
  }
  if (!p->plain) p->plain_tail = &p->plain;
}

/* The client acknowledged every copy numbered up to n. */
static void park_acked(worker_t *w, sm_park_t *p, uint64_t n) {
  if (n <= p->acked) return;
  p->acked = n;
  uint64_t k = 0;
  while (p->num && p->num->n <= n) {
    copy_t *c = p->num;
    p->num = c->next;
    copy_free(p, c);
    k++;
  }
  if (!p->num) p->num_tail = &p->num;
  if (k) metrics_add(M_SM_COPIES_ACKED, (int64_t)k);
  (void)w;
}

void session_park_copy(worker_t *w, session_t *s, bus_frame_t *f, const xnode_t *st) {
  const char *type = xnode_attr(st, "type");
  if (f->kind != BUS_DELIVER || (f->flags & BUS_F_OFFLINE) || strcmp(st->name, "message") ||
      (type && !strcmp(type, "error")))
    return;
  /* numbers are the worker's, so that one never names copies of two sessions (a session
   * replaced by a new bind of its full JID: a bounce for the old one finds none) */
  uint64_t n = w->copy_no + 1;
  if (!park_add(s, f, n, w->cfg)) return;
  w->copy_no = n;
  f->flags |= BUS_F_PARKED;
  f->arg = (int64_t)n;
}

static session_t *park_session(worker_t *w, const bus_frame_t *f, const char *jid, size_t len) {
  if (!memchr(jid, '/', len)) return NULL;
  char *full = arena_strndup(&w->arena, jid, len);
  (void)f;
  return user_session(user_get(w, w_bare(w, full)), full);
}

void session_park(worker_t *w, const bus_frame_t *f) {
  session_t *s = park_session(w, f, f->to, f->to_len);
  if (!s || !bus_addr_eq(&s->at, &f->src)) return; /* ended, replaced or moved since */
  if (f->payload_len) {
    /* numbered: a copy this session's router (maybe another, before a shard move) made */
    int numbered = (f->flags & BUS_F_PARKED) && !(f->flags & BUS_F_OFFLINE) && f->arg > 0;
    park_add(s, f, numbered ? (uint64_t)f->arg : 0, w->cfg);
    if (numbered && (uint64_t)f->arg > w->copy_no) w->copy_no = (uint64_t)f->arg; /* numbers go on above */
  } else if (f->arg == BUS_PARK_ON) {
    park_get(s);
    log_debug("session %s detached: %zu messages kept at the router", s->full, s->park->n);
  } else if (f->arg == BUS_PARK_OFF) {
    /* resumed, <resumed/> written: the numbered copies stay until the client
     * acknowledges them on its new connection */
    if (s->park) {
      park_drop_plain(s->park, INT64_MAX);
      park_fix_tails(s->park);
    }
  } else if (f->arg > 0 && s->park) {
    park_drop_plain(s->park, f->arg);
  }
}

void session_sm_ack(worker_t *w, const bus_frame_t *f) {
  session_t *s = park_session(w, f, f->from, f->from_len);
  if (!s || !bus_addr_eq(&s->at, &f->src)) return; /* ended, replaced or moved since */
  sm_park_t *p = park_get(s);
  if (f->dst.conn > w->copy_no) w->copy_no = f->dst.conn; /* numbers go on above the edge's */
  if (f->arg > 0) {
    if ((uint64_t)f->arg > w->copy_no) w->copy_no = (uint64_t)f->arg;
    park_acked(w, p, (uint64_t)f->arg);
  }
  sm_orphan_note(w, s, f); /* the counts and the id, for a resumption after the edge's death */
  if (p->has_unsent && !s->orphan_since) sm_orphan_unsent(w, s); /* its edge lives: what a link gave back */
}

int session_park_bounced(worker_t *w, const bus_frame_t *f) {
  session_t *s = park_session(w, f, f->to, f->to_len);
  int link = (f->flags & BUS_F_PARKED) != 0; /* a link gave it up: the copy stands for it */
  if (!s) return !link; /* ended: its copies went back then (a link's), or freed (the edge's) */
  sm_park_t *p = s->park;
  int here = bus_addr_eq(&s->at, &f->dst); /* else replaced, or resumed elsewhere */
  if (!(f->flags & BUS_F_OFFLINE) && f->arg > 0) {
    /* numbered: its copy takes the bounce's place. None: acknowledged, or sent back
     * when the session it was for was replaced (session_park_release) */
    uint64_t n = (uint64_t)f->arg;
    copy_t *prev = NULL, *c = p ? p->num : NULL;
    while (c && c->n < n) {
      prev = c;
      c = c->next;
    }
    if (c && c->n == n) {
      /* a link's: the copy stands for it, when a resumption from this router sent it
       * again, or may (the session resumable, its edge maybe dead: sm_orphan.c; if not
       * resumed, the copy goes back to the account when the session ends) */
      if (link && c->resent) return 0; /* in the resumption's state already */
      if (link && here && s->sm_rid) {
        c->unsent = 1; /* sent at the resumption, or when the edge shows it lives (sm_orphan_unsent) */
        p->has_unsent = 1;
        return 0;
      }
      if (prev) prev->next = c->next;
      else p->num = c->next;
      if (p->num_tail == &c->next) p->num_tail = prev ? &prev->next : &p->num;
      copy_free(p, c);
      return 1;
    }
    if (!here) return 0;
    return !(link && p && n <= p->acked);
  }
  if (!p) return 1;
  for (copy_t **pp = &p->plain, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
    bus_frame_t c;
    if (bus_msg_frame((*pp)->m, &c) != 0 || c.payload_len != f->payload_len ||
        memcmp(c.payload, f->payload, f->payload_len))
      continue;
    copy_t *x = *pp;
    *pp = x->next;
    if (p->plain_tail == &x->next) p->plain_tail = prev ? &prev->next : &p->plain;
    copy_free(p, x);
    break;
  }
  return 1;
}

void session_park_release(worker_t *w, session_t *s, int plain) {
  sm_park_t *p = s->park;
  if (!p) return;
  s->park = NULL;
  size_t n = 0;
  if (!plain) park_drop_plain(p, INT64_MAX);
  /* the unnumbered first: they are the older (delivered before the router copied) */
  for (copy_t **l = &p->plain; l; l = l == &p->plain ? &p->num : NULL)
    while (*l) {
      copy_t *c = *l;
      *l = c->next;
      bus_msg_t *m = c->m;
      xfree(c);
      bus_frame_t f;
      if (bus_msg_frame(m, &f) == 0) {
        bus_to_router(w->bus, f.to, bus_bare_len(f.to, f.to_len), m);
        n++;
      } else {
        bus_msg_free(m);
      }
    }
  xfree(p);
  if (n) log_info("session %s: %s: %zu messages its client had not acknowledged go back to the account", s->full,
                  plain ? "its node is down" : "replaced", n);
}

void session_free(session_t *s) {
  park_free(s->park);
  sm_orphan_free(s);
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
  sm_orphan_moved(s);
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
    /* XEP-0198: what its client did not acknowledge goes to the account's bare JID (an
     * available resource, else offline storage: not this new bind before its presence), whether its edge lives (its own
     * bounces of them are dropped: session_park_bounced) or died unnoticed yet (its link's
     * bounces too). Unnumbered copies: its edge bounces what it kept, as on one node */
    /* an orphan (its edge died: router/sm_orphan.c) has no edge to bounce its
     * unnumbered copies: they go from here */
    session_park_release(w, old, old->orphan_since != 0);
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
  if (s->orphan_since) sm_orphan_closed(w, s);
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
    if (s->orphan_since) {
      sm_orphan_resume(w, u, s, f); /* its edge died: the router answers from what it kept */
      return;
    }
    sm_orphan_asked(w, s, f); /* if that edge turns out dead, the answer comes from here */
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

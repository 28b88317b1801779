/* XEP-0198 §5 in a cluster: resumption after the death of the session's edge node
 * (docs/cluster.md "Stream resumption across nodes").
 *
 * While its edge lives, a detached session is resumed from the edge's own state
 * (edge/sm.c). When the edge dies (kill -9, a crash: BUS_NODE_DOWN) that state is gone,
 * but the router of the account has what a resumption needs, told by the edge as it went
 * (BUS_SM_ACK, bus_frame.h):
 *  - the resumption id (at <enable/>), so the id of a <resume/> can be checked whole;
 *  - outbound: a copy of every message not acknowledged (router/session.c), and for each
 *    copy the edge wrote, the client's count at which it was written. The h of the
 *    <resume/> counts every stanza the dead edge wrote (messages, presence, IQ); a copy
 *    written at a count <= h was received and goes; every other copy (not written, or
 *    written but not told here before the death) is sent again after <resumed/>. So no
 *    message is lost, and none the client's h covers comes twice, except one whose
 *    edge died in the same loop turn that wrote it (its BUS_SM_ACK lost with the node);
 *  - inbound: the client's count with each of its stanzas (BUS_F_SM_IN on C2S, and in
 *    BUS_SM_ACK). Its stanzas travel to this router (the sender's shard), in order on
 *    one link, so the last count seen is exactly how many reached the router, which
 *    handled them: <resumed h/> says that; a stanza the edge had counted but not passed
 *    on (lost with it) is sent again by the client, never lost. The count can only be
 *    low by stanzas the edge answered itself after the client's last routed one (an
 *    error for a malformed stanza): sent again, answered again.
 * So on NODE_DOWN a session with stream management, a resumption id and copies here is
 * not ended but kept as an orphan: still available to contacts (as a detached session
 * is), its messages kept as copies, for limits.sm_resume_timeout. A <resume/> at any
 * edge (BUS_RESUME_ASK) gets the session's state from here, in the format an edge sends
 * a detached session in (edge/sm.c state_encode), every copy in it as never written. A
 * resumption forwarded to the edge before its death was known is answered at NODE_DOWN.
 * Not resumed in time, or replaced by a new bind: it ends as before, its copies to the
 * account's bare JID (another resource, or offline storage). Bounded: the copies by the
 * session's limits (past them a message for it goes the way of a dead connection's:
 * bounced to the bare JID), one pending resumption per session. */
#include <inttypes.h>
#include <string.h>

#include "common/sm_state.h"
#include "common/alloc.h"
#include "common/log.h"
#include "router/sm_park.h"

#define RID_LEN 40

struct orphan {
  char *full;
  uint64_t since;
};

void sm_orphan_note(worker_t *w, session_t *s, const bus_frame_t *f) {
  (void)w;
  if (f->payload_len < 8) return;
  const uint8_t *p = f->payload;
  uint32_t in = sm_state_u32(p), n = sm_state_u32(p + 4);
  size_t pairs = (size_t)n * 12;
  if (pairs > f->payload_len - 8) return; /* malformed: nothing taken */
  s->sm_in = in;
  copy_t *c = s->park ? s->park->num : NULL;
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t *q = p + 8 + (size_t)i * 12;
    uint64_t copy = (uint64_t)sm_state_u32(q) | (uint64_t)sm_state_u32(q + 4) << 32;
    while (c && c->n < copy) c = c->next; /* both in order of number */
    if (c && c->n == copy) {
      c->seq = sm_state_u32(q + 8);
      c->wrote = 1;
    }
  }
  size_t rest = f->payload_len - 8 - pairs;
  if (rest == RID_LEN) {
    xfree(s->sm_rid);
    s->sm_rid = xstrndup((const char *)p + 8 + pairs, RID_LEN);
  }
}

void sm_orphan_asked(worker_t *w, session_t *s, const bus_frame_t *f) {
  s->resume_wait_at = uv_now(&w->loop);
  bus_msg_free(s->resume_wait);
  s->resume_wait = bus_msg_new(f);
  s->resume_wait->next = NULL;
}

void sm_orphan_moved(session_t *s) {
  bus_msg_free(s->resume_wait);
  s->resume_wait = NULL;
  s->orphan_since = 0;
}

void sm_orphan_free(session_t *s) {
  bus_msg_free(s->resume_wait);
  xfree(s->sm_rid);
}

static void sweep_cb(uv_timer_t *t);

int sm_orphan_keep(worker_t *w, user_t *u, session_t *s) {
  if (!s->park || !s->sm_rid || w->cfg->sm_resume_timeout <= 0) return 0;
  uint64_t now = uv_now(&w->loop);
  s->orphan_since = now ? now : 1;
  if (w->norphans == w->caporphans) {
    w->caporphans = w->caporphans ? w->caporphans * 2 : 16;
    w->orphans = xrealloc(w->orphans, w->caporphans * sizeof *w->orphans);
  }
  w->orphans[w->norphans++] = (struct orphan){xstrdup(s->full), s->orphan_since};
  if (!w->orphan_timer_on) {
    w->orphan_timer_on = 1;
    uv_timer_start(&w->orphan_timer, sweep_cb, 1000, 1000);
  }
  log_info("session %s: its edge node %u is down: kept %d s for resumption (%zu messages)", s->full, s->at.node,
           w->cfg->sm_resume_timeout, s->park->n);
  bus_msg_t *m = s->resume_wait;
  s->resume_wait = NULL;
  bus_frame_t f;
  /* asked since the edge's death could have been noticed (older: answered otherwise) */
  int recent = now - s->resume_wait_at <= (uint64_t)w->cfg->node_ttl_ms * 2 + 1000;
  if (m && recent && bus_msg_frame(m, &f) == 0 && f.src.node != s->at.node) sm_orphan_resume(w, u, s, &f);
  bus_msg_free(m);
  return 1;
}

int sm_orphan_deliver(worker_t *w, session_t *s, const bus_frame_t *f, const xnode_t *st) {
  const char *type = xnode_attr(st, "type");
  if (!strcmp(st->name, "iq") && type && (!strcmp(type, "get") || !strcmp(type, "set"))) {
    /* RFC 6120 §8.3.3.11: its client is away for now, a retry may work */
    w_error(w, f->from, s->full, st, "wait", "recipient-unavailable");
    return 1;
  }
  if (strcmp(st->name, "message") || (type && !strcmp(type, "error"))) return 1; /* no one to give it to */
  if (f->flags & BUS_F_OFFLINE) return 0; /* the store keeps it (its bounce is dropped) */
  uint64_t n = w->copy_no + 1;
  /* past the bounds: on to the dead node, whose link bounces it to the bare JID (the
   * other resources, or offline storage), skipping this session */
  if (!park_add(s, f, n, w->cfg)) return 0;
  w->copy_no = n;
  if (s->park->hint && s->park->hint->n == n) {
    s->park->hint->unsent = 1;
    s->park->has_unsent = 1;
  }
  return 1;
}

void sm_orphan_closed(worker_t *w, session_t *s) {
  sm_park_t *p = s->park;
  size_t n = 0;
  for (copy_t *c = p ? p->num : NULL, *prev = NULL, *next; c; c = next) {
    next = c->next;
    if (!c->unsent) {
      prev = c;
      continue;
    }
    if (prev) prev->next = next;
    else p->num = next;
    bus_frame_t f;
    if (bus_msg_frame(c->m, &f) != 0) {
      copy_free(p, c);
      continue;
    }
    p->bytes -= f.payload_len;
    p->n--;
    p->hint = NULL;
    bus_to_router(w->bus, f.to, bus_bare_len(f.to, f.to_len), c->m); /* the BOUNCE, to the account */
    xfree(c);
    n++;
  }
  if (p) park_fix_tails(p);
  if (n) log_info("session %s ended by its edge, back from a stall: %zu messages it never had go to the account", s->full, n);
}

size_t sm_orphan_unsent(worker_t *w, session_t *s) {
  size_t n = 0;
  sm_park_t *p = s->park;
  if (!p) return 0;
  p->has_unsent = 0;
  for (copy_t *c = p->num; c; c = c->next) {
    if (!c->unsent) continue;
    bus_frame_t f;
    if (bus_msg_frame(c->m, &f) != 0) continue;
    f.kind = BUS_DELIVER;
    f.to = s->full;
    f.to_len = strlen(s->full);
    f.dst = s->at;
    f.flags |= BUS_F_PARKED;
    f.arg = (int64_t)c->n;
    bus_to_edge(w->bus, &s->at, bus_msg_new(&f));
    c->unsent = 0;
    n++;
  }
  return n;
}

void sm_orphan_revived(worker_t *w, session_t *s) {
  s->orphan_since = 0;
  size_t n = sm_orphan_unsent(w, s);
  log_info("session %s: its edge node %u is back with it: no longer kept for resumption (%zu messages delivered now)",
           s->full, s->at.node, n);
}

static void answer(worker_t *w, const bus_frame_t *ask, const char *to, int64_t result, const buf_t *state) {
  bus_frame_t a = {0};
  a.kind = BUS_SESSION_ACK;
  a.flags = BUS_F_RESUME;
  a.dst = ask->src;
  a.arg = result;
  a.to = to;
  a.to_len = strlen(to);
  if (state) {
    a.payload = state->data;
    a.payload_len = state->len;
  }
  bus_to_edge(w->bus, &ask->src, bus_msg_new(&a));
}

/* One copy as an item of the state: a DELIVER to the session's new address, never
 * written (fresh: the edge sends it after <resumed/>), numbered as the router keeps it. */
static void put_item(buf_t *out, const session_t *s, const copy_t *c, const bus_addr_t *to) {
  bus_frame_t f;
  if (bus_msg_frame(c->m, &f) != 0) return;
  f.kind = BUS_DELIVER;
  f.to = s->full;
  f.to_len = strlen(s->full);
  f.dst = *to;
  f.flags &= (uint16_t)~BUS_F_PARKED;
  f.arg = 0;
  if (c->n) {
    f.flags |= BUS_F_PARKED;
    f.arg = (int64_t)c->n;
  }
  buf_t e;
  buf_init(&e);
  bus_frame_encode(&f, &e);
  uint8_t fresh = 1;
  buf_append(out, &fresh, 1);
  sm_state_put_u32(out, 0); /* seq: none, fresh */
  sm_state_put_u32(out, 0); /* not from offline storage */
  sm_state_put_u32(out, 0);
  sm_state_put_str(out, e.data, e.len);
  buf_free(&e);
}

void sm_orphan_resume(worker_t *w, user_t *u, session_t *s, const bus_frame_t *f) {
  (void)u;
  if (f->payload_len != RID_LEN || !s->sm_rid || memcmp(f->payload, s->sm_rid, RID_LEN)) {
    log_info("resume of %s at node %u: not this session's id", s->full, f->src.node);
    answer(w, f, arena_strndup(&w->arena, f->from, f->from_len), BUS_ACK_GONE, NULL);
    return;
  }
  uint32_t h = (uint32_t)f->arg;
  sm_park_t *p = s->park;
  /* what the client's h covers was received: those copies go (XEP-0198 §5) */
  size_t received = 0, again = 0;
  for (copy_t *c = p->num, *prev = NULL, *next; c; c = next) {
    next = c->next;
    if (c->wrote && (int32_t)(h - c->seq) >= 0) {
      if (prev) prev->next = next;
      else p->num = next;
      copy_free(p, c);
      received++;
      continue;
    }
    c->wrote = 0; /* the new connection writes it at a new count */
    c->resent = 1; /* a link's late bounce of it is not delivered again (session_park_bounced) */
    c->unsent = 0;
    p->has_unsent = 0;
    prev = c;
  }
  park_fix_tails(p);
  buf_t st;
  buf_init(&st);
  uint8_t v = SM_STATE_VERSION;
  buf_append(&st, &v, 1);
  sm_state_put_u32(&st, s->sm_in);
  sm_state_put_u32(&st, h); /* sent: what the client counted (nothing to check it against) */
  sm_state_put_u32(&st, h);
  sm_state_put_u32(&st, h);
  sm_state_put_str(&st, s->sm_rid, RID_LEN);
  sm_state_put_str(&st, s->full, strlen(s->full));
  sm_state_put_str(&st, s->presence, s->available ? s->presence_len : 0);
  for (copy_t *c = p->plain; c; c = c->next) again++;
  for (copy_t *c = p->num; c; c = c->next) again++;
  sm_state_put_u32(&st, (uint32_t)again);
  /* the unnumbered first: the older (what a detached session had kept, edge/sm.c) */
  for (copy_t *c = p->plain; c; c = c->next) put_item(&st, s, c, &f->src);
  for (copy_t *c = p->num; c; c = c->next) put_item(&st, s, c, &f->src);
  s->at = f->src;
  s->orphan_since = 0;
  dir_session(w, s);
  answer(w, f, s->full, BUS_ACK_OPEN, &st);
  buf_free(&st);
  log_info("session %s resumed at node %u after its edge's death: h=%" PRIu32 ", in=%" PRIu32
           ", %zu received, %zu sent again",
           s->full, f->src.node, h, s->sm_in, received, again);
}

static void sweep_cb(uv_timer_t *t) {
  worker_t *w = t->data;
  uint64_t now = uv_now(&w->loop), ttl = (uint64_t)w->cfg->sm_resume_timeout * 1000;
  size_t k = 0;
  mod_event_t be = {.w = w};
  modules_hook(HOOK_BATCH_BEGIN, &be);
  for (; k < w->norphans && now - w->orphans[k].since >= ttl; k++) {
    struct orphan *o = &w->orphans[k];
    user_t *u = user_get(w, w_bare(w, o->full));
    session_t *s = user_session(u, o->full);
    if (s && s->orphan_since == o->since) {
      log_info("session %s: not resumed in %d s after its edge's death: ended", s->full,
               w->cfg->sm_resume_timeout);
      session_park_release(w, s, 1); /* to the account: another resource, or offline storage */
      session_finish(w, u, s);
    }
    xfree(o->full);
  }
  memmove(w->orphans, w->orphans + k, (w->norphans - k) * sizeof *w->orphans);
  w->norphans -= k;
  if (!w->norphans) {
    uv_timer_stop(&w->orphan_timer);
    w->orphan_timer_on = 0;
  }
  modules_hook(HOOK_BATCH_END, &be);
  worker_idle(w);
}

void sm_orphan_init(worker_t *w) {
  uv_timer_init(&w->loop, &w->orphan_timer);
  w->orphan_timer.data = w;
}

static void close_noop(uv_handle_t *h) { (void)h; }

void sm_orphan_close(worker_t *w) {
  uv_close((uv_handle_t *)&w->orphan_timer, close_noop);
  for (size_t i = 0; i < w->norphans; i++) xfree(w->orphans[i].full);
  xfree(w->orphans);
  w->orphans = NULL;
  w->norphans = w->caporphans = 0;
}

/* Frames between this edge thread and the routers.
 *
 * Outbound: a bound client's stanza gets 'from' stamped with the session's full JID
 * (RFC 6120 §8.1.2.1: a client's own 'from' is checked, never trusted), 'to' normalised
 * (RFC 7622), and goes as a BUS_C2S frame to the shard of the sender; to and from travel
 * in the frame header, not in the encoded stanza, so routers re-address stanzas for free.
 * Inbound: BUS_DELIVER frames are written to their connection; a message whose
 * connection has gone is bounced back to the recipient's shard (BUS_BOUNCE), which then
 * picks another resource or offline storage, so it is not lost. */
#include "edge/edge_internal.h"

#include <string.h>

#include "common/alloc.h"
#include "common/dedup.h"
#include "common/log.h"
#include "common/metrics.h"

bus_addr_t edge_addr(const conn_t *c) {
  bus_addr_t a = {c->th->bus->node, (uint16_t)c->th->index, c->id};
  return a;
}
#define here edge_addr

void edge_stanza_error(conn_t *c, xnode_t *s, const char *type, const char *cond) {
  const char *stype = xnode_attr(s, "type");
  if (stype && !strcmp(stype, "error")) return; /* never answer an error with an error */
  buf_t b;
  buf_init(&b);
  buf_printf(&b, "<%s type='error'", s->name);
  const char *id = xnode_attr(s, "id"), *to = xnode_attr(s, "to");
  if (id) {
    buf_puts(&b, " id='");
    xml_escape(&b, id, strlen(id), 1);
    buf_putc(&b, '\'');
  }
  if (to) {
    buf_puts(&b, " from='");
    xml_escape(&b, to, strlen(to), 1);
    buf_putc(&b, '\'');
  }
  buf_printf(&b, "><error type='%s'><%s xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></%s>", type,
             cond, s->name);
  conn_send(c, (const char *)b.data, b.len);
  buf_free(&b);
  sm_stanza_out(c, NULL);
}

/* Most stanzas a client may send while its bind is pending (RFC 6120 §7.1 says it should
 * wait; pipelining clients get this much slack). */
#define MAX_HELD 64

static void ensure_announced(conn_t *c);

/* Everything a session sends goes to its own shard (c->shard, set at bind). */
static void send_frame(conn_t *c, bus_frame_t *f) {
  if (conn_has_session(c)) ensure_announced(c); /* the new owner must know the session first */
  if (f->kind == BUS_C2S && c->th->bus->owner) {
    /* cluster: a fresh origin id, inherited by everything the routers make of it, so a
     * copy re-sent after a router's death is recognised (docs/cluster.md "Exactly once") */
    f->flags |= BUS_F_ORIGIN;
    f->origin = bus_mix64(++c->th->next_origin);
    if (!f->origin) f->origin = 1;
  }
  if (c->state == CONN_ST_BINDING && f->kind == BUS_C2S) {
    if (c->nheld >= MAX_HELD) {
      conn_stream_error(c, "policy-violation", "too many stanzas before the bind result");
      return;
    }
    bus_msg_t *m = bus_msg_new(f);
    m->next = NULL;
    if (!c->held) c->held_tail = &c->held;
    *c->held_tail = m;
    c->held_tail = &m->next;
    c->nheld++;
    return;
  }
  bus_to_shard(c->th->bus, c->shard, bus_msg_new(f));
}

void edge_release_held(conn_t *c) {
  while (c->held) {
    bus_msg_t *m = c->held;
    c->held = m->next;
    bus_msg_free(m);
  }
  c->nheld = 0;
  xfree(c->bind_id);
  c->bind_id = NULL;
}

/* Cluster: the session's broadcast presence, kept so the session can be announced
 * again, with it, to a router that takes over its shard. */
static void remember_presence(conn_t *c, const char *type, buf_t *encoded) {
  if (type && strcmp(type, "unavailable")) return; /* probes, errors, subscriptions */
  xfree(c->presence);
  c->presence = NULL;
  c->presence_len = 0;
  if (!type) {
    c->presence = xmalloc(encoded->len);
    memcpy(c->presence, encoded->data, encoded->len);
    c->presence_len = encoded->len;
  }
}

static uint32_t owner_of(const conn_t *c) {
  bus_t *b = c->th->bus;
  return b->owner ? atomic_load_explicit(&b->owner[c->shard], memory_order_relaxed) : 0;
}

void edge_route_stanza(conn_t *c, xnode_t *s) {
  const char *from = xnode_attr(s, "from");
  if (from) {
    jid_t fj;
    int ok = jid_parse(from, strlen(from), &fj) == 0 &&
             (!strcmp(fj.full, c->jid.full) || !strcmp(fj.full, c->jid.bare));
    jid_free(&fj);
    if (!ok) {
      conn_stream_error(c, "invalid-from", "'from' does not match the authenticated session");
      return;
    }
  }
  const char *type = xnode_attr(s, "type");
  if (!strcmp(s->name, "iq")) {
    /* RFC 6120 §8.2.3: id and one of the four types are required */
    int ok = type && (!strcmp(type, "get") || !strcmp(type, "set") || !strcmp(type, "result") ||
                      !strcmp(type, "error")) && xnode_attr(s, "id");
    if (ok && (!strcmp(type, "get") || !strcmp(type, "set"))) ok = xnode_count_elems(s) == 1;
    if (!ok) {
      edge_stanza_error(c, s, "modify", "bad-request");
      return;
    }
  }
  jid_t tj = {0};
  const char *to = xnode_attr(s, "to");
  if (to && jid_parse(to, strlen(to), &tj) != 0) {
    edge_stanza_error(c, s, "modify", "jid-malformed");
    return;
  }
  /* addresses travel in the frame header; the tree is ours until the callback returns,
   * so strip them in place (removing attributes allocates nothing) */
  xnode_set_attr(NULL, s, "to", NULL);
  xnode_set_attr(NULL, s, "from", NULL);
  buf_t p;
  buf_init(&p);
  xnode_encode(s, &p);
  bus_frame_t f = {0};
  f.kind = BUS_C2S;
  f.src = here(c);
  f.from = c->jid.full;
  f.from_len = strlen(c->jid.full);
  f.to = tj.full ? tj.full : "";
  f.to_len = strlen(f.to);
  f.payload = p.data;
  f.payload_len = p.len;
  if (c->sm && bus_clustered(c->th->bus)) {
    /* XEP-0198: the client's count with this stanza, for the h of a resumption that the
     * router answers after this node's death (router/sm_orphan.c) */
    f.flags |= BUS_F_SM_IN;
    f.arg = (int64_t)c->sm_in;
  }
  send_frame(c, &f);
  if (bus_clustered(c->th->bus) && !tj.full && !strcmp(s->name, "presence")) remember_presence(c, type, &p);
  buf_free(&p);
  jid_free(&tj);
}

void edge_session_open(conn_t *c) {
  bus_frame_t f = {0};
  f.kind = BUS_SESSION_OPEN;
  f.src = here(c);
  f.from = c->jid.full;
  f.from_len = strlen(c->jid.full);
  c->shard = bus_shard_of(c->th->bus, c->jid.bare, strlen(c->jid.bare));
  c->announced = owner_of(c);
  send_frame(c, &f);
}

static void announce_again(conn_t *c, uint32_t o, int64_t why) {
  c->announced = o;
  if (c->state == CONN_ST_BINDING) c->announced_binding = 1; /* the bind may yet be refused: negotiate_bind_done */
  bus_frame_t f = {0};
  f.kind = BUS_SESSION_OPEN;
  f.flags = BUS_F_REANNOUNCE;
  f.arg = why; /* BUS_REANNOUNCE_* */
  f.src = here(c);
  f.from = c->jid.full;
  f.from_len = strlen(c->jid.full);
  f.payload = c->presence;
  f.payload_len = c->presence_len;
  bus_to_shard(c->th->bus, c->shard, bus_msg_new(&f));
}

/* A bound session whose shard changed owner since it was last announced is announced to
 * the new owner before anything else of it goes there: the owners are published (atomics)
 * before this thread handles the BUS_MAP that follows, and a stanza sent in between must
 * not reach the new owner ahead of its session (it would be dropped as stale). */
static void ensure_announced(conn_t *c) {
  uint32_t o = owner_of(c);
  if (o && o != c->announced) announce_again(c, o, BUS_REANNOUNCE_EDGE);
}

/* BUS_MAP: each bound session whose shard changed owner, or whose owner restarted
 * (restarted_node), is announced to the owner again with its presence. The frame goes
 * the way of the session's next stanzas, so the new owner has it first. */
static void reannounce(edge_thread_t *th, uint16_t restarted_node) {
  size_t n = 0;
  for (conn_t *c = th->all; c; c = c->next) {
    if (!conn_has_session(c)) continue; /* a CLOSING one has none */
    uint32_t o = owner_of(c);
    if (!o || (o == c->announced && BUS_OWNER_NODE(o) != restarted_node)) continue;
    announce_again(c, o, BUS_REANNOUNCE_EDGE);
    sm_new_router(c, 0); /* XEP-0198: it has no copies of what the session keeps */
    n++;
  }
  for (conn_t *c = th->detached; c; c = c->next) { /* XEP-0198 §5: still bound */
    uint32_t o = owner_of(c);
    if (!o || (o == c->announced && BUS_OWNER_NODE(o) != restarted_node)) continue;
    announce_again(c, o, BUS_REANNOUNCE_EDGE);
    sm_new_router(c, 0); /* the new router has no copies of what it keeps */
    n++;
  }
  if (n) log_info("edge %d: %zu sessions announced to their new routers", th->index, n);
}

/* After a BUS_MAP's announcements, this thread tells its cluster thread (behind them on
 * the way out), which tells the routers once every edge thread of the node has: the map
 * handshake, docs/cluster.md "Shard moves without detours". */
static void map_done(edge_thread_t *th, uint64_t gen) {
  if (!bus_clustered(th->bus)) return;
  bus_frame_t f = {0};
  f.kind = BUS_MAP_DONE;
  f.src.node = th->bus->node;
  f.src.thread = (uint16_t)th->index;
  f.arg = (int64_t)gen;
  bus_remote(th->bus, bus_msg_new(&f));
}

/* BUS_SESSIONS_ENDED: router node `router` ended this node's sessions while the node was
 * missing from the registry (stalled past its lease, or cut off from Redis), and sees it
 * back. Each bound session that router owns is announced to it again, with its last
 * broadcast presence, as one that was ended (BUS_REANNOUNCE_REVIVE): the router takes it
 * as a new session and its initial presence (contacts saw it go; what was stored offline
 * meanwhile comes to it), so its client goes on without reconnecting. The announcement
 * goes the way of the session's stanzas and reaches the worker after the NODE_DOWN that
 * ended it. A bind still waiting for its answer is not announced (the router answers
 * its SESSION_OPEN; an answer lost with the router's link to the stalled node leaves
 * that client waiting for its bind result: docs/cluster.md, "Failures"). */
static void revive(edge_thread_t *th, uint16_t router) {
  size_t n = 0;
  for (conn_t *c = th->all; c; c = c->next) {
    if (c->state != CONN_ST_BOUND) continue;
    uint32_t o = owner_of(c);
    if (!o || BUS_OWNER_NODE(o) != router) continue;
    announce_again(c, o, BUS_REANNOUNCE_REVIVE);
    sm_new_router(c, 1); /* XEP-0198: it sent its copies back when it ended the session */
    n++;
  }
  /* XEP-0198 §5: a detached session the router ended had its kept messages copied there
   * (BUS_SM_PARK), which the router sent back to the account when it ended it (another
   * resource or offline storage): it ends here too, without sending them again */
  for (conn_t *c = th->detached, *nx; c; c = nx) {
    nx = c->next;
    uint32_t o = owner_of(c);
    if (o && BUS_OWNER_NODE(o) == router) sm_detached_released(c);
  }
  if (n) log_info("edge %d: %zu sessions announced again to router %u, which had ended them", th->index, n, router);
}

/* A frame of this thread's that the cluster thread re-routes (its router died or left,
 * or it waited for a router): it comes back here, behind the BUS_MAP of that change, so
 * that the session's re-announcement goes out first. A re-announcement itself is
 * dropped: BUS_MAP already sent a current one. */
static void resend(edge_thread_t *th, bus_msg_t *m, const bus_frame_t *f) {
  if (f->flags & BUS_F_REANNOUNCE) {
    bus_msg_free(m);
    return;
  }
  conn_t *c = conn_lookup(th, f->src.conn);
  if (c && conn_has_session(c)) ensure_announced(c);
  m->next = NULL;
  bus_to_shard(th->bus, bus_frame_shard(th->bus, f), m);
}

void edge_offline_ack(conn_t *c, int64_t id) {
  if (!conn_has_session(c)) return;
  ensure_announced(c);
  bus_frame_t f = {0};
  f.kind = BUS_OFFLINE_ACK;
  f.src = here(c);
  f.from = c->jid.full;
  f.from_len = strlen(c->jid.full);
  f.arg = id;
  bus_to_shard(c->th->bus, c->shard, bus_msg_new(&f));
}

void edge_sm_ack(conn_t *c, bus_frame_t *f) {
  if (!conn_has_session(c)) return;
  if (c->state != CONN_ST_DETACHED) ensure_announced(c);
  bus_to_shard(c->th->bus, c->shard, bus_msg_new(f));
  metrics_inc(M_SM_ACK_FRAMES);
}

void edge_offline_written(conn_t *c) {
  if (!c->off_id || c->out_done < c->off_mark) return;
  edge_offline_ack(c, c->off_id);
  c->off_id = 0;
}

void edge_session_close(conn_t *c) {
  bus_frame_t f = {0};
  f.kind = BUS_SESSION_CLOSE;
  f.src = here(c);
  f.from = c->jid.full;
  f.from_len = strlen(c->jid.full);
  send_frame(c, &f);
}

void edge_deliver_now(conn_t *c, const bus_frame_t *f) {
  edge_thread_t *th = c->th;
  /* the common case: straight from the frame's encoding to XML, no tree */
  if (c->carbons_iq && negotiate_swallow(c, f)) return; /* Bind2's carbons IQ, answered */
  xnode_addr_t addr = {f->from, f->from_len, f->to, f->to_len};
  th->scratch.len = 0;
  if (xnode_serialize_encoded(f->payload, f->payload_len, NS_CLIENT, &addr, 256, &th->scratch) != 0) {
    log_warn("edge: undecodable stanza in DELIVER frame dropped");
    return;
  }
  conn_send(c, (const char *)th->scratch.data, th->scratch.len);
  metrics_inc((metric_id_t)(M_STANZAS_OUT + metrics_kind_xml((const char *)th->scratch.data, th->scratch.len)));
  if ((f->flags & BUS_F_OFFLINE) && !c->sm) {
    /* confirmed once written (edge_offline_written); with XEP-0198, once acknowledged */
    c->off_id = f->arg;
    c->off_mark = c->out_handed + c->out.len;
  }
  if (c->sm) {
    /* XEP-0198: a message (not an error) is kept until the client acknowledges it */
    xnode_head_t h;
    int keep = xnode_encoded_head(f->payload, f->payload_len, "type", &h) == 0 && h.name_len == 7 &&
               !memcmp(h.name, "message", 7) && !(h.attr_len == 5 && !memcmp(h.attr, "error", 5));
    sm_stanza_out(c, keep ? f : NULL);
  }
}

/* A delivery written to this connection already (docs/cluster.md "Exactly once"): the
 * router that made it died before the frame it came from was acknowledged, and the new
 * owner made it again from the re-sent frame (same origin id, same order). */
static int written_already(edge_thread_t *th, const bus_frame_t *f) {
  if (!f->origin) return 0;
  if (!th->seen) th->seen = dedup_new((size_t)th->cfg->dedup_window);
  if (!dedup_check(th->seen, bus_mix64(f->origin ^ bus_mix64(f->dst.conn)))) return 0;
  if (th->dups++ % 1000 == 0)
    log_info("edge: a delivery re-sent after a router's death was written already: dropped (%llu so far)",
             (unsigned long long)th->dups);
  return 1;
}

static void deliver(edge_thread_t *th, const bus_frame_t *f, arena_t *a) {
  if (written_already(th, f)) return;
  conn_t *c = conn_lookup(th, f->dst.conn);
  if (c) sm_copy_seen(c, f);
  switch (c ? c->state : CONN_ST_CLOSING) {
  case CONN_ST_DETACHED: sm_detached_deliver(c, f); return; /* XEP-0198 §5: kept for the resumption */
  case CONN_ST_RESUMING:
  case CONN_ST_RESUME_REMOTE:
  case CONN_ST_RESUME_MOVING: sm_resuming_deliver(c, f); return;
  case CONN_ST_BINDING:
  case CONN_ST_BOUND:
    if (!csi_hold(c, f, a)) edge_deliver_now(c, f);
    return;
  default: break;
  }
  xnode_t *s;
  if (xnode_decode(a, f->payload, f->payload_len, 256, &s) != 0) {
    log_warn("edge: undecodable stanza in DELIVER frame dropped");
    return;
  }
  /* the connection has gone: a message goes back to its shard (another resource or
   * offline storage), never lost */
  const char *type = xnode_attr(s, "type");
  if (!strcmp(s->name, "message") && !(type && !strcmp(type, "error"))) {
    bus_frame_t b = *f;
    b.kind = BUS_BOUNCE;
    b.flags &= (uint16_t)~BUS_F_PARKED; /* from an edge: it takes the router's copy's place */
    bus_to_router(th->bus, f->to, bus_bare_len(f->to, f->to_len), bus_msg_new(&b));
  }
}

void edge_bus_cb(void *ud, bus_msg_t *batch) {
  edge_thread_t *th = ud;
  arena_t a;
  arena_init(&a);
  while (batch) {
    bus_msg_t *m = batch;
    batch = m->next;
    bus_frame_t f;
    if (bus_msg_frame(m, &f) == 0) {
      if (f.kind == BUS_DELIVER) {
        deliver(th, &f, &a);
      } else if (f.kind == BUS_SESSION_ACK) {
        conn_t *c = conn_lookup(th, f.dst.conn);
        if (f.flags & BUS_F_RESUME) sm_resume_ack(th, &f); /* XEP-0198 §5, maybe from another node */
        else if (c && (c->state == CONN_ST_RESUMING || c->state == CONN_ST_RESUME_MOVING)) sm_resume_done(c, f.arg);
        else if (c && c->state == CONN_ST_BINDING) negotiate_bind_done(c, f.arg);
      } else if (f.kind == BUS_RESUME) {
        sm_resume_request(th, &f);
      } else if (f.kind == BUS_RESUME_STATE) {
        sm_resume_state(th, &f);
      } else if (f.kind == BUS_MAP) {
        reannounce(th, (uint16_t)f.arg);
        map_done(th, f.src.conn);
      } else if (f.kind == BUS_ADMIN) {
        edge_admin_run(th, (edge_admin_t *)(uintptr_t)f.arg); /* the control socket's (admin.c) */
      } else if (f.kind == BUS_SESSIONS_ENDED) {
        revive(th, (uint16_t)f.arg);
      } else if (f.kind == BUS_C2S || f.kind == BUS_SESSION_OPEN || f.kind == BUS_SESSION_CLOSE) {
        resend(th, m, &f); /* takes m */
        arena_reset(&a);
        continue;
      } else if (f.kind == BUS_KICK) {
        conn_t *c = conn_lookup(th, f.dst.conn);
        if (c && c->state == CONN_ST_DETACHED) {
          sm_detached_kick(c, f.arg);
        } else if (c) {
          /* the router already replaced it: c holds no session any more */
          if (f.arg == BUS_KICK_CONFLICT && conn_has_session(c)) conn_set_state(c, CONN_ST_AUTHED);
          conn_stream_error(c, f.arg == BUS_KICK_CONFLICT ? "conflict" : "system-shutdown",
                            f.arg == BUS_KICK_CONFLICT ? "replaced by a new session with the same resource" : NULL);
        }
      }
    }
    bus_msg_free(m);
    arena_reset(&a);
  }
  arena_free(&a);
  edge_flush(th);
}

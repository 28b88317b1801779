/* XEP-0198 stream management, version 3 (urn:xmpp:sm:3): acknowledgements and stream
 * resumption (§5).
 *
 * After <enable/> (only once bound: §3) both sides count the stanzas they handle:
 *  - inbound: every stanza the client sent since enabling (its <r/> gets <a h='N'/>);
 *  - outbound: every stanza written to the client since enabling. Messages among them are
 *    kept (a copy of their DELIVER frame) until the client acknowledges them; we ask
 *    with <r/> once SM_REQUEST_EVERY stanzas are unacknowledged.
 * When the connection ends (closed, lost, a slow reader cut off, shutdown, replaced), the
 * messages it never acknowledged go back to the router as BOUNCE frames: another resource
 * of the user or offline storage gets them (XEP-0198 §4 leaves them to the server; we
 * deliver them at least once, so a client that read one but did not ack it yet may see it
 * twice; messages from offline storage among them are dropped by the router, which
 * still has them stored: router/mod_offline.c). A client that leaves more than limits.sm_max_unacked stanzas, or more than
 * limits.max_pending_out bytes of messages, unacknowledged is disconnected
 * (<policy-violation/>): what a connection keeps is bounded like its unread output.
 * Counters are 32-bit and wrap (§4: h is an unsigned 32-bit integer, mod 2^32).
 *
 * Resumption (<enable resume='true'/>, limits.sm_resume_timeout > 0): the session gets a
 * resumption id, a tag of its full JID then 128 random bits, registered edge-wide (edge->rids: id -> edge thread and
 * connection id). When its connection drops (EOF, reset, a TLS or write error, the idle
 * timeout; not a clean </stream:stream>, not a stream error we sent) the session is
 * DETACHED: a conn_t without a socket (CONN_ST_DETACHED) takes the connection's slot, its
 * counters, its queue of unacknowledged messages, its address at the router (which is not
 * told: it still routes there). What arrives for it is queued ("fresh": never written),
 * bounded by the same limits; past them, or after the timeout, or when a new bind of the
 * same resource replaces it, the session ends as a closed one does (sm_bounce: messages
 * to another resource or offline storage; presence unavailable).
 * A new connection authenticated as the SAME account (its bare JID is compared) sends
 * <resume previd h/>: the detached state is taken from the thread holding it (a BUS_RESUME
 * frame to that edge thread, answered by BUS_RESUME_STATE carrying the state itself: one
 * process), the router moves the session to the new address (SESSION_OPEN|BUS_F_RESUME;
 * refused when the session was replaced meanwhile), then the client gets <resumed/>, the
 * messages it did not acknowledge and what was queued are written once, and the session
 * goes on under its full JID: no bind, no presence change seen by contacts. The id stays
 * the session's (it moves with it), so the client can resume again with it. Unknown,
 * expired, another account's: <failed><item-not-found/></failed> and the client binds.
 * A resume for a session whose old connection is still open (its loss not yet seen)
 * drops that connection first. An id this edge node does not hold (cluster): the account's
 * router is asked (BUS_RESUME_ASK); it forwards the request (BUS_RESUME) to the edge
 * holding the session among the account's, found by the id's tag, which hands it over
 * with its state serialised in the move (state_encode); the router passes the state on
 * with its answer (SESSION_ACK|BUS_F_RESUME: sm_resume_ack). docs/cluster.md, "Stream
 * resumption across nodes". When the resuming connection is lost before <resumed/>, the
 * session ends (sm_bounce), less what the h of its <resume/> acknowledged. In a cluster
 * the account's router also keeps a copy of each message the client has not acknowledged:
 * it numbers a copy of what it delivers (BUS_F_PARKED, arg), this edge forwards the
 * client's acknowledgements (BUS_SM_ACK: sm_ack_send), and a detached session's edge
 * copies what the router has none of (BUS_SM_PARK: sm_park_all, park_item;
 * router/session.c). So the death of this process, or of the edge a session is being
 * resumed on, loses none of them and repeats none the client acknowledged: the router
 * sends back to the account what is not acknowledged when it sees that node dead, or,
 * for a resumable session, keeps it, with the id (told with the first BUS_SM_ACK), the
 * client's count with each stanza (BUS_F_SM_IN on C2S) and the count at which each copy
 * was written here (listed in the BUS_SM_ACK of the loop turn: wrote_copy), so that a
 * <resume/> on another edge node succeeds after this one's death (router/sm_orphan.c).
 * XEP-0352 §5.2: the CSI state is not restored; what CSI held when the connection dropped
 * is queued, and the resumed stream starts active. */
#include "edge/edge_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/sm_state.h"
#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/strmap.h"

#define SM_REQUEST_EVERY 5
#define SM_RID_LEN 40

struct sm_item {
  struct sm_item *next;
  int fresh;     /* queued while detached: never written, not counted in sm_out */
  uint32_t seq;  /* its number among the stanzas sent since enable (1 = first) */
  int64_t off_id; /* store id of a message from offline storage (BUS_F_OFFLINE), else 0 */
  uint64_t copy;  /* cluster: the number of the router's copy of it (BUS_F_PARKED), else 0 */
  bus_msg_t *m;  /* its DELIVER frame */
};

int sm_offered(const conn_t *c) { return c->th->cfg->sm_max_unacked > 0; }

/* The number of the router's copy of a DELIVER (0: it keeps none). */
static uint64_t copy_no(const bus_frame_t *f) {
  return (f->flags & BUS_F_PARKED) && !(f->flags & BUS_F_OFFLINE) && f->arg > 0 ? (uint64_t)f->arg : 0;
}

/* ---- cluster: the client's acknowledgements, forwarded (docs/cluster.md "Exactly once") ----
 * The router of the account keeps a copy of each message it delivers to a session with
 * stream management on, numbered (router/session.c), until the client acknowledges it:
 * after the death of this process it sends back only what was not acknowledged. The
 * acknowledgements of one connection read in one loop turn go in one BUS_SM_ACK, sent
 * from edge_flush (the acked numbers only grow: the last says all). */
struct sm_wrote {
  uint64_t copy;
  uint32_t seq;
};


void sm_ack_send(conn_t *c) {
  c->sm_ack_due = 0;
  uint32_t nw = c->sm_nwrote;
  c->sm_nwrote = 0;
  if (!bus_clustered(c->th->bus) || !c->sm || !c->jid.full) return;
  bus_frame_t f = {0};
  f.kind = BUS_SM_ACK;
  f.src = edge_addr(c);
  f.from = c->jid.full;
  f.from_len = strlen(c->jid.full);
  f.arg = (int64_t)c->sm_copy_acked;
  f.dst.conn = c->sm_copy_seen;
  /* bus_frame.h BUS_SM_ACK: the client's stanzas counted (every C2S frame for them went
   * before this one, on the same path), the copies written since the last one and the
   * client's count at each, the resumption id once */
  buf_t p;
  buf_init(&p);
  sm_state_put_u32(&p, c->sm_in);
  sm_state_put_u32(&p, nw);
  for (uint32_t i = 0; i < nw; i++) {
    sm_state_put_u32(&p, (uint32_t)c->sm_wrote[i].copy);
    sm_state_put_u32(&p, (uint32_t)(c->sm_wrote[i].copy >> 32));
    sm_state_put_u32(&p, c->sm_wrote[i].seq);
  }
  if (c->sm_rid && !c->sm_rid_told) {
    buf_append(&p, c->sm_rid, SM_RID_LEN);
    c->sm_rid_told = 1;
  }
  f.payload = p.data;
  f.payload_len = p.len;
  edge_sm_ack(c, &f);
  buf_free(&p);
}

/* A numbered copy written to the client as its stanza number seq: told to the router
 * with this loop turn's BUS_SM_ACK. Bounded by the session's own limit (past it the
 * session is cut off anyway); a copy not told is one the router re-sends after this
 * node's death (never one it drops unproven). */
static void wrote_copy(conn_t *c, uint64_t copy, uint32_t seq) {
  if (!bus_clustered(c->th->bus) || !c->sm_rid) return; /* resumable sessions only */
  if (c->sm_nwrote == c->sm_capwrote) {
    uint32_t cap = c->sm_capwrote ? c->sm_capwrote * 2 : 8;
    if (cap > (uint32_t)c->th->cfg->sm_max_unacked + 1) cap = (uint32_t)c->th->cfg->sm_max_unacked + 1;
    if (cap <= c->sm_nwrote) return;
    c->sm_wrote = xrealloc(c->sm_wrote, cap * sizeof *c->sm_wrote);
    c->sm_capwrote = cap;
  }
  c->sm_wrote[c->sm_nwrote++] = (struct sm_wrote){copy, seq};
  c->sm_ack_due = 1;
  conn_mark_dirty(c);
}

static void send_a(conn_t *c) {
  char b[96];
  snprintf(b, sizeof b, "<a xmlns='urn:xmpp:sm:3' h='%" PRIu32 "'/>", c->sm_in);
  conn_send_str(c, b);
}

static void failed(conn_t *c, const char *cond) {
  char b[192];
  snprintf(b, sizeof b,
           "<failed xmlns='urn:xmpp:sm:3'><%s xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>", cond);
  conn_send_str(c, b);
}

/* Drops what the client acknowledged: every kept message numbered up to h. */
static void request_ack(conn_t *c) {
  if (c->sm_r_pending) return;
  c->sm_r_pending = 1;
  conn_send_str(c, "<r xmlns='urn:xmpp:sm:3'/>");
}

/* Drops what the client acknowledged: every kept message numbered up to h. Offline
 * messages among them are confirmed to the router (the next window follows). */
static void acked(conn_t *c, uint32_t h) {
  int64_t off = 0;
  while (c->sm_q && !c->sm_q->fresh && (int32_t)(h - c->sm_q->seq) >= 0) {
    sm_item_t *it = c->sm_q;
    c->sm_q = it->next;
    if (it->copy > c->sm_copy_acked) {
      c->sm_copy_acked = it->copy; /* the router is told at the end of the loop turn */
      c->sm_ack_due = 1;
      conn_mark_dirty(c);
    }
    c->sm_bytes -= it->m->len;
    if (it->off_id) {
      off = it->off_id;
      c->sm_off--;
    }
    bus_msg_free(it->m);
    xfree(it);
  }
  if (!c->sm_q) c->sm_q_tail = &c->sm_q;
  c->sm_acked = h;
  c->sm_r_pending = 0;
  if (off) edge_offline_ack(c, off);
}

static void sm_resume(conn_t *c, xnode_t *e);
static void rid_new(conn_t *c);

void sm_element(conn_t *c, xnode_t *e) {
  if (!strcmp(e->name, "resume")) {
    sm_resume(c, e);
    return;
  }
  if (!strcmp(e->name, "enable")) {
    const char *r = xnode_attr(e, "resume");
    sm_enable(c, r && (!strcmp(r, "true") || !strcmp(r, "1")), NULL);
    return;
  }
  if (!c->sm) {
    /* <r/> or <a/> before <enable/>: §4 calls for an unexpected-request stream error */
    conn_stream_error(c, "unsupported-stanza-type", "stream management is not enabled");
    return;
  }
  if (!strcmp(e->name, "r")) {
    send_a(c);
    return;
  }
  if (!strcmp(e->name, "a")) {
    const char *hs = xnode_attr(e, "h");
    char *end = NULL;
    unsigned long long h = hs ? strtoull(hs, &end, 10) : 0;
    if (!hs || !*hs || *end || h > UINT32_MAX) {
      conn_stream_error(c, "invalid-xml", "bad h in <a/>");
      return;
    }
    /* §4: acknowledging more than was sent is an error ("handled-count-too-high") */
    if ((uint32_t)((uint32_t)h - c->sm_acked) > (uint32_t)(c->sm_out - c->sm_acked)) {
      conn_stream_error(c, "undefined-condition", "handled-count-too-high");
      return;
    }
    c->sm_r_pending = 0;
    acked(c, (uint32_t)h);
    /* offline messages still unacknowledged hold back the next window: ask again (an
     * answer to this <r/> covers everything sent before it) */
    if (c->sm_off) request_ack(c);
    return;
  }
  conn_stream_error(c, "unsupported-stanza-type", NULL);
}

void sm_enable(conn_t *c, int resume, buf_t *out) {
  char b[192];
  if (!sm_offered(c) || c->sm || c->state != CONN_ST_BOUND) { /* §3: after resource binding */
    snprintf(b, sizeof b,
             "<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>");
  } else {
    c->sm = 1;
    c->sm_q_tail = &c->sm_q;
    int timeout = c->th->cfg->sm_resume_timeout;
    if (resume && timeout > 0) rid_new(c);
    sm_ack_send(c); /* cluster: the router keeps copies from now on, and the id */
    if (resume && timeout > 0) {
      /* §5: max is the longest the server keeps the session, in seconds */
      snprintf(b, sizeof b, "<enabled xmlns='urn:xmpp:sm:3' id='%s' resume='true' max='%d'/>", c->sm_rid, timeout);
    } else {
      snprintf(b, sizeof b, "<enabled xmlns='urn:xmpp:sm:3'/>");
    }
  }
  if (out) buf_puts(out, b);
  else conn_send_str(c, b);
}

void sm_stanza_in(conn_t *c) {
  if (c->sm) c->sm_in++;
}

void sm_stanza_out(conn_t *c, const bus_frame_t *deliver) {
  if (!c->sm || conn_closing(c)) return;
  c->sm_out++;
  if (deliver) {
    sm_item_t *it = xcalloc(1, sizeof *it);
    it->seq = c->sm_out;
    it->off_id = (deliver->flags & BUS_F_OFFLINE) ? deliver->arg : 0;
    it->copy = copy_no(deliver);
    it->m = bus_msg_new(deliver);
    if (it->copy) wrote_copy(c, it->copy, it->seq);
    if (it->off_id) c->sm_off++;
    *c->sm_q_tail = it;
    c->sm_q_tail = &it->next;
    c->sm_bytes += it->m->len;
  }
  uint32_t unacked = c->sm_out - c->sm_acked;
  if (unacked > (uint32_t)c->th->cfg->sm_max_unacked || c->sm_bytes > (size_t)c->th->cfg->max_pending_out) {
    log_info("conn %llx: %" PRIu32 " stanzas unacknowledged (XEP-0198): disconnected", (unsigned long long)c->id,
             unacked);
    metrics_inc(M_LIMIT_SM_UNACKED);
    conn_stream_error(c, "policy-violation", "too many unacknowledged stanzas");
    return;
  }
  if (unacked >= SM_REQUEST_EVERY || c->sm_off) request_ack(c);
}

/* A message that is not an error (what is kept until acknowledged, and bounced). */
static int is_message(const bus_frame_t *f) {
  xnode_head_t h;
  return xnode_encoded_head(f->payload, f->payload_len, "type", &h) == 0 && h.name_len == 7 &&
         !memcmp(h.name, "message", 7) && !(h.attr_len == 5 && !memcmp(h.attr, "error", 5));
}

/* ---- cluster: copies at the router of what a detached session keeps (BUS_SM_PARK;
 * router/session.c: if this node dies, the router sends them back to the account) ---- */

/* A kept message g's router has no copy of (it is not from offline storage, which keeps
 * its own, and it did not come with BUS_F_PARKED, unless `all`: a new router). */
static void park_item_to(conn_t *g, const bus_frame_t *d, int all) {
  if (!bus_clustered(g->th->bus) || (d->flags & BUS_F_OFFLINE) || (!all && (d->flags & BUS_F_PARKED)) ||
      !is_message(d))
    return;
  bus_frame_t f = *d;
  f.kind = BUS_SM_PARK;
  f.src = edge_addr(g);
  f.to = g->jid.full;
  f.to_len = strlen(g->jid.full);
  bus_to_router(g->th->bus, f.to, bus_bare_len(f.to, f.to_len), bus_msg_new(&f));
}

static void park_item(conn_t *g, const bus_frame_t *d) { park_item_to(g, d, 0); }

/* An empty BUS_SM_PARK for the session g (at its address): arg BUS_PARK_ON, _OFF, or
 * how many of the first kept the client acknowledged. */
static void park_mark(conn_t *g, int64_t arg) {
  if (!bus_clustered(g->th->bus)) return;
  bus_frame_t f = {0};
  f.kind = BUS_SM_PARK;
  f.src = edge_addr(g);
  f.to = g->jid.full;
  f.to_len = strlen(g->jid.full);
  f.arg = arg;
  bus_to_router(g->th->bus, f.to, bus_bare_len(f.to, f.to_len), bus_msg_new(&f));
}

void sm_bounce(conn_t *c) {
  size_t n = 0;
  /* a resumption that ends here (its connection lost, the state come too late): the h
   * of the client's <resume/> acknowledged what it handled, which does not go back */
  if (c->resume_h_set) acked(c, c->resume_h);
  while (c->sm_q) {
    sm_item_t *it = c->sm_q;
    c->sm_q = it->next;
    bus_frame_t f;
    /* what was queued for a detached session may be any stanza: only messages go back */
    if (bus_msg_frame(it->m, &f) == 0 && (!it->fresh || is_message(&f))) {
      f.kind = BUS_BOUNCE; /* to the bare JID, skipping this connection (f.dst) */
      f.flags &= (uint16_t)~BUS_F_PARKED; /* from an edge: it takes the router's copy's place */
      bus_to_router(c->th->bus, f.to, bus_bare_len(f.to, f.to_len), bus_msg_new(&f));
      n++;
    }
    bus_msg_free(it->m);
    xfree(it);
  }
  c->sm_q_tail = &c->sm_q;
  c->sm_bytes = 0;
  c->sm_off = 0;
  c->sm_fresh = 0;
  if (n) log_debug("conn %llx: %zu unacknowledged messages handed back (XEP-0198)", (unsigned long long)c->id, n);
}

/* ---- resumption (§5) ---- */

typedef struct rid_loc {
  uint16_t thread;
  uint64_t conn;
} rid_loc_t;

static void rid_set(conn_t *c) {
  edge_t *e = c->th->edge;
  rid_loc_t *loc = xmalloc(sizeof *loc);
  loc->thread = (uint16_t)c->th->index;
  loc->conn = c->id;
  uv_mutex_lock(&e->rid_lock);
  rid_loc_t *old = strmap_put(e->rids, c->sm_rid, loc);
  uv_mutex_unlock(&e->rid_lock);
  xfree(old);
}

/* An id: the tag of the session's full JID (bus_resume_tag: how a router of the cluster
 * finds the session among the account's), then 128 random bits (an id must not be
 * guessable), in hex: SM_RID_LEN characters. */
static void rid_new(conn_t *c) {
  uint8_t r[16];
  if (uv_random(NULL, NULL, r, sizeof r, 0, NULL) != 0) abort();
  c->sm_rid = xmalloc(SM_RID_LEN + 1);
  snprintf(c->sm_rid, 9, "%08" PRIx32, bus_resume_tag(c->jid.full, strlen(c->jid.full)));
  for (size_t i = 0; i < sizeof r; i++) snprintf(c->sm_rid + 8 + 2 * i, 3, "%02x", r[i]);
  rid_set(c);
}

static int rid_find(edge_t *e, const char *id, rid_loc_t *out) {
  uv_mutex_lock(&e->rid_lock);
  rid_loc_t *loc = strmap_get(e->rids, id);
  if (loc) *out = *loc;
  uv_mutex_unlock(&e->rid_lock);
  return loc != NULL;
}

void sm_release(conn_t *c) {
  xfree(c->sm_wrote);
  c->sm_wrote = NULL;
  c->sm_nwrote = c->sm_capwrote = 0;
  if (!c->sm_rid) return;
  edge_t *e = c->th->edge;
  uv_mutex_lock(&e->rid_lock);
  rid_loc_t *loc = strmap_get(e->rids, c->sm_rid);
  if (loc && loc->thread == c->th->index && loc->conn == c->id) xfree(strmap_del(e->rids, c->sm_rid));
  uv_mutex_unlock(&e->rid_lock);
  xfree(c->sm_rid);
  c->sm_rid = NULL;
}

static void queue_fresh(conn_t *g, bus_msg_t *m) {
  bus_frame_t f;
  if (bus_msg_frame(m, &f) != 0) {
    bus_msg_free(m);
    return;
  }
  sm_item_t *it = xcalloc(1, sizeof *it);
  it->fresh = 1;
  it->off_id = (f.flags & BUS_F_OFFLINE) ? f.arg : 0;
  it->copy = copy_no(&f);
  it->m = m;
  if (it->off_id) g->sm_off++;
  *g->sm_q_tail = it;
  g->sm_q_tail = &it->next;
  g->sm_bytes += m->len;
  g->sm_fresh++;
}

static void detached_free(conn_t *g) {
  conn_count_state(g, -1);
  while (g->sm_q) {
    sm_item_t *it = g->sm_q;
    g->sm_q = it->next;
    bus_msg_free(it->m);
    xfree(it);
  }
  sm_release(g);
  jid_free(&g->jid);
  xfree(g->presence);
  xfree(g);
}

/* Takes g off its thread's list and table (its thread only). */
static void detached_unlink(conn_t *g) {
  edge_thread_t *th = g->th;
  if (g->prev) g->prev->next = g->next;
  else th->detached = g->next;
  if (g->next) g->next->prev = g->prev;
  else th->detached_tail = g->prev;
  g->prev = g->next = NULL;
  th->ndetached--;
  conn_table_del(th, g);
}

/* The detached session ends as a closed one does (its session ends, when it still has
 * one: DETACHED, not CLOSING). Any thread, once unlinked: what it uses of g->th (its
 * bus, its index for the old address) does not change. */
static void detached_end(conn_t *g) {
  conn_session_end(g);
  detached_free(g);
}

int sm_detach(conn_t *c) {
  edge_thread_t *th = c->th;
  if (!c->sm || !c->sm_rid || c->state != CONN_ST_BOUND || th->stopping || th->cfg->sm_resume_timeout <= 0)
    return 0;
  if (c->sm_ack_due) sm_ack_send(c); /* what its client acknowledged last */
  conn_t *g = xcalloc(1, sizeof *g);
  g->th = th;
  g->id = c->id;
  g->state = CONN_ST_DETACHED; /* born so: it never was a connection */
  conn_count_state(g, 1);      /* until detached_free */
  g->handle_closed = 1; /* no socket: nothing is ever written to it */
  g->jid = c->jid;
  memset(&c->jid, 0, sizeof c->jid);
  g->shard = c->shard;
  g->announced = c->announced;
  g->presence = c->presence;
  g->presence_len = c->presence_len;
  c->presence = NULL;
  c->presence_len = 0;
  g->sm = 1;
  g->sm_in = c->sm_in;
  g->sm_out = c->sm_out;
  g->sm_acked = c->sm_acked;
  g->sm_copy_acked = c->sm_copy_acked;
  g->sm_copy_seen = c->sm_copy_seen;
  g->sm_q = c->sm_q;
  g->sm_q_tail = c->sm_q ? c->sm_q_tail : &g->sm_q;
  g->sm_bytes = c->sm_bytes;
  g->sm_off = c->sm_off;
  g->sm_rid = c->sm_rid;
  c->sm_rid = NULL;
  c->sm_q = NULL;
  c->sm_q_tail = &c->sm_q;
  c->sm_bytes = c->sm_off = 0;
  c->sm = 0; /* c keeps no session: conn_end closes it without one */
  /* XEP-0352 §5.2: the resumed stream starts active; what CSI held goes with the rest */
  bus_msg_t *m;
  while ((m = csi_take(c))) queue_fresh(g, m);
  c->csi_inactive = 0;
  g->detached_ms = edge_now_ms();
  th->slots[(uint32_t)c->id] = g; /* frames for the session find it by the same id */
  g->prev = th->detached_tail;
  if (th->detached_tail) th->detached_tail->next = g;
  else th->detached = g;
  th->detached_tail = g;
  th->ndetached++;
  log_info("conn %llx: %s detached for resumption (%" PRIu32 " unacknowledged)", (unsigned long long)g->id,
           g->jid.full, g->sm_out - g->sm_acked);
  /* cluster: the router has copies of the numbered ones; of the others it gets one */
  sm_park_all(g, 0);
  return 1;
}

void sm_park_all(conn_t *g, int all) {
  for (sm_item_t *it = g->sm_q; it; it = it->next) {
    bus_frame_t f;
    if (bus_msg_frame(it->m, &f) == 0) park_item_to(g, &f, all);
  }
  park_mark(g, BUS_PARK_ON);
}

void sm_new_router(conn_t *c, int revived) {
  if (!c->sm || !bus_clustered(c->th->bus)) return;
  c->sm_rid_told = 0; /* a new router: it gets the id too */
  sm_ack_send(c); /* first: where the numbers are; the copies keep theirs */
  if (revived) return;
  if (c->state == CONN_ST_DETACHED) {
    sm_park_all(c, 1);
    return;
  }
  for (sm_item_t *it = c->sm_q; it; it = it->next) {
    bus_frame_t f;
    if (bus_msg_frame(it->m, &f) == 0) park_item_to(c, &f, 1);
  }
}

void sm_detached_released(conn_t *g) {
  log_info("conn %llx: detached %s had been ended by its router, which sent back what it kept: ended",
           (unsigned long long)g->id, g->jid.full);
  detached_unlink(g);
  conn_set_state(g, CONN_ST_CLOSING); /* no SESSION_CLOSE: the router ended it */
  detached_free(g);                   /* and no bounce: the router's copies went instead */
}

void sm_detached_deliver(conn_t *g, const bus_frame_t *f) {
  queue_fresh(g, bus_msg_new(f));
  park_item(g, f); /* sent before the router had BUS_PARK_ON: it has no copy */
  const xmpp_config_t *cfg = g->th->cfg;
  if ((g->sm_out - g->sm_acked) + g->sm_fresh > (uint32_t)cfg->sm_max_unacked ||
      g->sm_bytes > (size_t)cfg->max_pending_out) {
    log_info("conn %llx: detached %s over its stream management limits: session ended", (unsigned long long)g->id,
             g->jid.full);
    detached_unlink(g);
    detached_end(g);
  }
}

void sm_detached_kick(conn_t *g, int64_t why) {
  detached_unlink(g);
  if (why == BUS_KICK_CONFLICT) conn_set_state(g, CONN_ST_CLOSING); /* replaced: the router ended it already */
  detached_end(g);
}

void sm_sweep(edge_thread_t *th, uint64_t now, int all) {
  uint64_t ttl = (uint64_t)th->cfg->sm_resume_timeout * 1000;
  for (conn_t *g = th->detached, *nx; g; g = nx) {
    nx = g->next;
    if (!all && now - g->detached_ms < ttl) continue;
    log_info("conn %llx: detached %s not resumed in time: session ended", (unsigned long long)g->id, g->jid.full);
    detached_unlink(g);
    detached_end(g);
  }
}

/* The answer to a <resume/>: sent, or, inline in a SASL2 <authenticate/>, carried in its
 * <success/> (a failure then goes before the Bind2 asked with it, if any: XEP-0198
 * "SASL2 inline", XEP-0386 §2.5). */
static void resume_answer(conn_t *c, const char *xml, int ok) {
  if (!c->sasl2) conn_send_str(c, xml);
  else if (!ok && c->sasl2->bind) negotiate_bind2(c, xml);
  else sasl2_complete(c, xml);
}

static void resume_failed(conn_t *c) {
  c->resume_h_set = 0;
  /* §5: the client binds a new session instead */
  resume_answer(c, "<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                   "</failed>", 0);
}

/* The detached session conn id on th, when rid is its id and bare its account, handed to
 * the connection at to (h: the client's count): the router is told to move it there
 * (SESSION_OPEN|BUS_F_RESUME) before anything else of this thread for it (a message that
 * arrives here after this is bounced, behind the move, and reaches the new address).
 * Returns it unlinked, owned by the caller; NULL when refused. A session whose connection
 * is still open (its loss not yet seen) is detached first. */
static int state_encode(const conn_t *g, buf_t *out);

static conn_t *hand_over(edge_thread_t *th, uint64_t id, const char *rid, const char *bare, const bus_addr_t *to,
                         uint32_t h) {
  conn_t *x = conn_lookup(th, id);
  if (!x || !x->sm_rid || strcmp(x->sm_rid, rid) || !x->jid.bare || strcmp(x->jid.bare, bare)) return NULL;
  if (x->state == CONN_ST_RESUMING || x->state == CONN_ST_RESUME_MOVING || x->state == CONN_ST_RESUME_REMOTE)
    return NULL; /* another resumption of it is under way */
  if (x->state != CONN_ST_DETACHED) {
    log_info("conn %llx: %s resumed elsewhere: this connection is dropped", (unsigned long long)x->id, x->jid.full);
    conn_lost(x);
    x = conn_lookup(th, id);
    if (!x || x->state != CONN_ST_DETACHED) return NULL;
  }
  detached_unlink(x);
  if ((uint32_t)(h - x->sm_acked) > (uint32_t)(x->sm_out - x->sm_acked)) {
    /* §4: acknowledging more than was sent: the session cannot go on */
    log_info("conn %llx: resume of %s with h=%" PRIu32 " beyond the %" PRIu32 " sent: session ended",
             (unsigned long long)x->id, x->jid.full, h, x->sm_out);
    detached_end(x);
    return NULL;
  }
  x->resume_h_set = 1; /* the client's h goes with the state (sm_bounce, if it ends unadopted) */
  x->resume_h = h;
  /* the router's first copies are the kept messages the h acknowledged (messages only,
   * and not from offline storage: the router keeps copies of nothing else, park_item_to);
   * they go, before the move */
  int64_t k = 0;
  for (sm_item_t *it = x->sm_q; it && !it->fresh && (int32_t)(h - it->seq) >= 0; it = it->next) {
    bus_frame_t d;
    if (it->copy > x->sm_copy_acked) x->sm_copy_acked = it->copy; /* numbered: BUS_SM_ACK */
    else if (!it->copy && !it->off_id && bus_msg_frame(it->m, &d) == 0 && is_message(&d)) k++;
  }
  if (k) park_mark(x, k);
  if (bus_clustered(th->bus)) sm_ack_send(x);
  bus_frame_t f = {0};
  f.kind = BUS_SESSION_OPEN;
  f.flags = BUS_F_RESUME;
  f.src = *to;
  f.dst = edge_addr(x);
  f.from = x->jid.full;
  f.from_len = strlen(x->jid.full);
  buf_t st;
  buf_init(&st);
  if (to->node != th->bus->node) {
    /* another edge node: the state goes with the move, the router passes it on */
    if (state_encode(x, &st) != 0) {
      log_info("conn %llx: detached %s too large to move to node %u: session ended", (unsigned long long)x->id,
               x->jid.full, to->node);
      buf_free(&st);
      detached_end(x);
      return NULL;
    }
    f.payload = st.data;
    f.payload_len = st.len;
  }
  bus_to_shard(th->bus, x->shard, bus_msg_new(&f));
  buf_free(&st);
  return x;
}

static void resume_finish(conn_t *c);

/* c (RESUMING) takes over detached session g, which the router is moving to c
 * (RESUME_MOVING: what c does from now on goes to the router behind that move). */
static void adopt(conn_t *c, conn_t *g) {
  c->jid = g->jid;
  memset(&g->jid, 0, sizeof g->jid);
  c->shard = g->shard;
  c->announced = g->announced;
  xfree(c->presence);
  c->presence = g->presence;
  c->presence_len = g->presence_len;
  g->presence = NULL;
  c->sm = 1;
  c->sm_in = g->sm_in;
  c->sm_out = g->sm_out;
  c->sm_acked = g->sm_acked;
  if (g->sm_copy_acked > c->sm_copy_acked) c->sm_copy_acked = g->sm_copy_acked;
  if (g->sm_copy_seen > c->sm_copy_seen) c->sm_copy_seen = g->sm_copy_seen;
  /* what the router sent here since the move (c's own queue) goes after g's */
  if (g->sm_q) {
    *g->sm_q_tail = c->sm_q;
    if (c->sm_q) g->sm_q_tail = c->sm_q_tail;
    c->sm_q = g->sm_q;
    c->sm_q_tail = g->sm_q_tail;
    g->sm_q = NULL;
  }
  log_debug("conn %llx: takes over %s: %" PRIu32 " unacknowledged, %zu queued since (+%zu here)",
            (unsigned long long)c->id, c->jid.full, g->sm_out - g->sm_acked, g->sm_fresh, c->sm_fresh);
  c->sm_bytes += g->sm_bytes;
  c->sm_off += g->sm_off;
  c->sm_fresh += g->sm_fresh;
  c->sm_rid = g->sm_rid;
  g->sm_rid = NULL; /* the id moves with the session */
  c->sm_rid_told = 0; /* the router is told it with the next BUS_SM_ACK */
  detached_free(g);
  rid_set(c);
  conn_set_state(c, CONN_ST_RESUME_MOVING);
  if (c->resume_ack >= 0) resume_finish(c);
}

static void resume_start(conn_t *c, const char *id, uint32_t h);

static void sm_resume(conn_t *c, xnode_t *e) {
  edge_thread_t *th = c->th;
  if (!sm_offered(c) || th->cfg->sm_resume_timeout <= 0 || c->state != CONN_ST_AUTHED || c->sm) {
    failed(c, "unexpected-request");
    return;
  }
  const char *id = xnode_attr(e, "previd"), *hs = xnode_attr(e, "h");
  char *end = NULL;
  unsigned long long h = hs ? strtoull(hs, &end, 10) : 0;
  if (!id || !hs || !*hs || *end || h > UINT32_MAX) {
    failed(c, "bad-request");
    return;
  }
  resume_start(c, id, (uint32_t)h);
}

void sm_resume_inline(conn_t *c, const char *previd, uint32_t h) {
  if (!sm_offered(c) || c->th->cfg->sm_resume_timeout <= 0 || c->state != CONN_ST_AUTHED || c->sm) {
    resume_answer(c, "<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                     "</failed>", 0);
    return;
  }
  resume_start(c, previd, h);
}

static void resume_start(conn_t *c, const char *id, uint32_t h) {
  edge_thread_t *th = c->th;
  rid_loc_t loc;
  int here = strlen(id) == SM_RID_LEN && rid_find(th->edge, id, &loc) && loc.thread < th->edge->nthreads;
  if (strlen(id) != SM_RID_LEN || (!here && !bus_clustered(th->bus))) {
    resume_failed(c);
    return;
  }
  c->resume_h = (uint32_t)h;
  c->resume_h_set = 1;
  c->resume_ack = -1;
  c->sm_q_tail = &c->sm_q;
  conn_set_state(c, CONN_ST_RESUMING);
  bus_addr_t me = edge_addr(c);
  if (!here) {
    /* not here: maybe on another edge node; the account's router knows where (it
     * answers with SESSION_ACK|BUS_F_RESUME: sm_resume_ack) */
    conn_set_state(c, CONN_ST_RESUME_REMOTE);
    bus_frame_t f = {0};
    f.kind = BUS_RESUME_ASK;
    f.src = me;
    f.from = c->auth_bare;
    f.from_len = strlen(c->auth_bare);
    f.arg = c->resume_h;
    f.payload = (const uint8_t *)id;
    f.payload_len = SM_RID_LEN;
    bus_to_router(th->bus, c->auth_bare, f.from_len, bus_msg_new(&f));
    return;
  }
  if (loc.thread == th->index) {
    conn_t *g = hand_over(th, loc.conn, id, c->auth_bare, &me, c->resume_h);
    if (g) {
      adopt(c, g);
    } else {
      conn_set_state(c, CONN_ST_AUTHED);
      resume_failed(c);
    }
    return;
  }
  /* the session is on another edge thread: it hands the state over */
  bus_frame_t f = {0};
  f.kind = BUS_RESUME;
  f.src = me;
  f.dst.node = th->bus->node;
  f.dst.thread = loc.thread;
  f.dst.conn = loc.conn;
  f.from = c->auth_bare;
  f.from_len = strlen(c->auth_bare);
  f.arg = c->resume_h;
  f.payload = (const uint8_t *)id;
  f.payload_len = strlen(id);
  bus_to_edge(th->bus, &f.dst, bus_msg_new(&f));
}

void sm_resume_request(edge_thread_t *th, const bus_frame_t *f) {
  char *rid = xstrndup((const char *)f->payload, f->payload_len);
  char *bare = xstrndup(f->from, f->from_len);
  conn_t *g = hand_over(th, f->dst.conn, rid, bare, &f->src, (uint32_t)f->arg);
  xfree(rid);
  xfree(bare);
  if (f->src.node != th->bus->node) {
    /* cluster: asked through the router, for a client on another edge node */
    if (g) {
      log_info("edge %d: detached %s handed over to node %u edge %u", th->index, g->jid.full, f->src.node,
               f->src.thread);
      detached_free(g); /* its state went with the move */
      return;
    }
    /* refused: a move the router cannot match (no session has a bare JID for name)
     * answers the client's edge with BUS_ACK_GONE */
    bus_frame_t r = {0};
    r.kind = BUS_SESSION_OPEN;
    r.flags = BUS_F_RESUME;
    r.src = f->src;
    r.dst = f->dst;
    r.from = f->from;
    r.from_len = f->from_len;
    bus_to_router(th->bus, f->from, bus_bare_len(f->from, f->from_len), bus_msg_new(&r));
    return;
  }
  if (g) log_info("edge %d: detached %s handed over to edge %u", th->index, g->jid.full, f->src.thread);
  bus_frame_t r = {0};
  r.kind = BUS_RESUME_STATE;
  r.dst = f->src;
  r.arg = (int64_t)(intptr_t)g; /* one process: the state itself, owned by the receiver */
  bus_to_edge(th->bus, &r.dst, bus_msg_new(&r));
}

void sm_resume_state(edge_thread_t *th, const bus_frame_t *f) {
  conn_t *g = (conn_t *)(intptr_t)f->arg;
  conn_t *c = conn_lookup(th, f->dst.conn);
  if (!c || c->state != CONN_ST_RESUMING) {
    if (g) {
      /* the client went away meanwhile: the session ends where the router moved it */
      sm_release(g);
      g->th = th;
      g->id = f->dst.conn;
      detached_end(g);
    }
    return;
  }
  if (g) {
    adopt(c, g);
  } else {
    conn_set_state(c, CONN_ST_AUTHED);
    resume_failed(c);
  }
}

/* ---- a detached session's state between edge nodes (cluster) ----
 * Little-endian: u8 version (2) | u32 sm_in, sm_out, sm_acked, resume h | str id | str full JID |
 * str presence (encoded, may be empty) | u32 n | n times: u8 fresh, u32 seq, i64 store
 * id, str DELIVER frame. str = u32 length + bytes. Decoding checks every length and each
 * frame. What it carries is bounded by the session's limits (sm_max_unacked,
 * max_pending_out); past SM_STATE_MAX it cannot go (the session ends instead, as at its
 * timeout: hand_over). */
/* the largest state moved: under the largest frame body a bus link takes (16 MiB,
 * common/cluster/bus_link.c), with room for the frame's addresses */
#define SM_STATE_MAX ((16u << 20) - 4096)

static int state_encode(const conn_t *g, buf_t *out) {
  size_t n = 0, total = g->sm_bytes + g->presence_len + 256;
  for (sm_item_t *it = g->sm_q; it; it = it->next) n++;
  if (total + n * 32 > SM_STATE_MAX) return XMPP_EINVAL;
  uint8_t v = SM_STATE_VERSION;
  buf_append(out, &v, 1);
  sm_state_put_u32(out, g->sm_in);
  sm_state_put_u32(out, g->sm_out);
  sm_state_put_u32(out, g->sm_acked);
  /* the h of the <resume/> (hand_over): if the resuming client goes before the state
   * reaches it, what h acknowledged must not come back (sm_bounce) */
  sm_state_put_u32(out, g->resume_h_set ? g->resume_h : g->sm_acked);
  sm_state_put_str(out, g->sm_rid, strlen(g->sm_rid));
  sm_state_put_str(out, g->jid.full, strlen(g->jid.full));
  sm_state_put_str(out, g->presence, g->presence_len);
  sm_state_put_u32(out, (uint32_t)n);
  for (sm_item_t *it = g->sm_q; it; it = it->next) {
    uint8_t fr = (uint8_t)it->fresh;
    buf_append(out, &fr, 1);
    sm_state_put_u32(out, it->seq);
    sm_state_put_u32(out, (uint32_t)(uint64_t)it->off_id);
    sm_state_put_u32(out, (uint32_t)((uint64_t)it->off_id >> 32));
    sm_state_put_str(out, it->m->data, it->m->len);
  }
  return 0;
}

typedef struct rd {
  const uint8_t *p;
  size_t left;
  int bad;
} rd_t;

static uint32_t get_u32(rd_t *r) {
  if (r->left < 4) {
    r->bad = 1;
    return 0;
  }
  uint32_t v = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 | (uint32_t)r->p[3] << 24;
  r->p += 4;
  r->left -= 4;
  return v;
}

static const uint8_t *get_str(rd_t *r, size_t *n) {
  *n = get_u32(r);
  if (r->bad || *n > r->left) {
    r->bad = 1;
    *n = 0;
    return NULL;
  }
  const uint8_t *p = r->p;
  r->p += *n;
  r->left -= *n;
  return p;
}

/* The detached session a SESSION_ACK from another node carries, as a detached conn_t of
 * th under the id of the connection it was moved to (not linked anywhere); NULL when the
 * payload is not a valid state of the session f->to names. */
static conn_t *state_decode(edge_thread_t *th, const bus_frame_t *f) {
  rd_t r = {f->payload, f->payload_len, 0};
  if (!r.left || r.p[0] != SM_STATE_VERSION) return NULL;
  r.p++;
  r.left--;
  conn_t *g = xcalloc(1, sizeof *g);
  g->th = th;
  g->id = f->dst.conn;
  g->state = CONN_ST_DETACHED; /* born so, as in sm_detach */
  conn_count_state(g, 1);
  g->handle_closed = 1;
  g->sm = 1;
  g->sm_q_tail = &g->sm_q;
  g->sm_in = get_u32(&r);
  g->sm_out = get_u32(&r);
  g->sm_acked = get_u32(&r);
  g->resume_h = get_u32(&r);
  g->resume_h_set = 1;
  size_t n;
  const uint8_t *p = get_str(&r, &n);
  if (p && n == SM_RID_LEN) g->sm_rid = xstrndup((const char *)p, n);
  p = get_str(&r, &n);
  int ok = !r.bad && g->sm_rid && p && n == f->to_len && !memcmp(p, f->to, n) &&
           jid_parse((const char *)p, n, &g->jid) == 0 && g->jid.resource;
  p = get_str(&r, &n);
  if (ok && n) {
    g->presence = xmalloc(n);
    memcpy(g->presence, p, n);
    g->presence_len = n;
  }
  uint32_t count = get_u32(&r);
  for (uint32_t i = 0; ok && !r.bad && i < count; i++) {
    if (r.left < 1) {
      r.bad = 1;
      break;
    }
    int fresh = r.p[0] != 0;
    r.p++;
    r.left--;
    uint32_t seq = get_u32(&r);
    uint64_t lo = get_u32(&r), hi = get_u32(&r);
    const uint8_t *fp = get_str(&r, &n);
    bus_frame_t df;
    size_t used;
    if (r.bad || !fp || bus_frame_decode(fp, n, &df, &used) != 0 || used != n || df.kind != BUS_DELIVER) {
      r.bad = 1;
      break;
    }
    sm_item_t *it = xcalloc(1, sizeof *it);
    it->fresh = fresh;
    it->seq = seq;
    it->off_id = (int64_t)(lo | hi << 32);
    it->copy = copy_no(&df);
    if (it->copy > g->sm_copy_seen) g->sm_copy_seen = it->copy;
    it->m = bus_msg_new(&df);
    *g->sm_q_tail = it;
    g->sm_q_tail = &it->next;
    g->sm_bytes += it->m->len;
    if (it->off_id) g->sm_off++;
    if (fresh) g->sm_fresh++;
  }
  if (!ok || r.bad || r.left) {
    xfree(g->sm_rid); /* not registered anywhere */
    g->sm_rid = NULL;
    detached_free(g);
    return NULL;
  }
  bus_t *b = th->bus;
  g->shard = bus_shard_of(b, g->jid.bare, strlen(g->jid.bare));
  g->announced = b->owner ? atomic_load_explicit(&b->owner[g->shard], memory_order_relaxed) : 0;
  return g;
}

/* c, waiting for a session from another edge node, gets <failed/> and may bind instead */
static void remote_failed(conn_t *c) {
  conn_set_state(c, CONN_ST_AUTHED);
  resume_failed(c);
}

void sm_resume_ack(edge_thread_t *th, const bus_frame_t *f) {
  conn_t *c = conn_lookup(th, f->dst.conn);
  int remote = c && c->state == CONN_ST_RESUME_REMOTE;
  if (!f->payload_len) {
    /* the answer to a move on this node (sm_resume_done), or a refusal from the cluster */
    if (remote) {
      log_info("conn %llx: resume refused by the cluster (no such session of %s)", (unsigned long long)c->id,
               c->auth_bare);
      remote_failed(c);
    } else if (c && (c->state == CONN_ST_RESUMING || c->state == CONN_ST_RESUME_MOVING)) {
      sm_resume_done(c, f->arg);
    }
    return;
  }
  /* from another edge node: the detached session itself, moved to c (f->arg: BUS_ACK_OPEN)
   * or not (the router had replaced it meanwhile: it ends as a closed one does) */
  conn_t *g = state_decode(th, f);
  if (!g) {
    log_warn("edge %d: undecodable session state for %.*s dropped", th->index, (int)f->to_len, f->to);
    if (remote) remote_failed(c);
    return;
  }
  /* the session is the account's that asked (the router and the old edge checked it too) */
  if (!remote || strcmp(g->jid.bare, c->auth_bare)) {
    log_info("edge %d: session %s moved to a connection that has gone: ended", th->index, g->jid.full);
    if (f->arg != BUS_ACK_OPEN) conn_set_state(g, CONN_ST_CLOSING); /* not moved: not ours to end at the router */
    detached_end(g);
    if (remote) remote_failed(c);
    return;
  }
  log_info("conn %llx: takes over %s from another edge node", (unsigned long long)c->id, g->jid.full);
  c->resume_ack = f->arg;
  adopt(c, g);
}

void sm_resume_done(conn_t *c, int64_t result) {
  c->resume_ack = result;
  if (c->state == CONN_ST_RESUME_MOVING) resume_finish(c);
}

void sm_resuming_deliver(conn_t *c, const bus_frame_t *f) {
  /* the router moved the session here before <resumed/> went out: kept for after it */
  queue_fresh(c, bus_msg_new(f));
  const xmpp_config_t *cfg = c->th->cfg;
  if (c->sm_fresh > (size_t)cfg->sm_max_unacked || c->sm_bytes > (size_t)cfg->max_pending_out) {
    metrics_inc(M_LIMIT_SM_UNACKED);
    conn_stream_error(c, "policy-violation", "too many unacknowledged stanzas");
  }
}

static void resume_finish(conn_t *c) {
  if (c->resume_ack != BUS_ACK_OPEN) {
    /* replaced by a new bind, or ended, before the router could move it: not ours */
    log_info("conn %llx: resume of %s refused by the router", (unsigned long long)c->id, c->jid.full);
    acked(c, c->resume_h); /* what the client handled does not go back */
    conn_set_state(c, CONN_ST_AUTHED); /* the client binds instead */
    sm_bounce(c);
    c->sm = 0;
    c->sm_in = c->sm_out = c->sm_acked = 0;
    sm_release(c);
    jid_free(&c->jid);
    xfree(c->presence);
    c->presence = NULL;
    c->presence_len = 0;
    resume_failed(c);
    return;
  }
  conn_set_state(c, CONN_ST_BOUND);
  uint32_t h = c->resume_h;
  acked(c, h);
  park_mark(c, BUS_PARK_OFF); /* the copies at the router go: <resumed/> is written next */
  c->resume_h_set = 0; /* from here the client's own acks count */
  char b[192];
  snprintf(b, sizeof b, "<resumed xmlns='urn:xmpp:sm:3' previd='%s' h='%" PRIu32 "'/>", c->sm_rid, c->sm_in);
  resume_answer(c, b, 1);
  /* §5: what the client did not acknowledge is sent again, then what was queued since
   * the connection dropped, in order; the client counts them from its h */
  sm_item_t *q = c->sm_q;
  c->sm_q = NULL;
  c->sm_q_tail = &c->sm_q;
  c->sm_bytes = c->sm_off = c->sm_fresh = 0;
  c->sm_out = c->sm_acked = h;
  size_t n = 0;
  while (q) {
    sm_item_t *it = q;
    q = it->next;
    bus_frame_t f;
    if (bus_msg_frame(it->m, &f) == 0) {
      if (!conn_closing(c)) {
        edge_deliver_now(c, &f);
        n++;
      } else if (is_message(&f)) {
        f.kind = BUS_BOUNCE; /* cut off meanwhile: back to the router, as at a close */
        f.flags &= (uint16_t)~BUS_F_PARKED;
        bus_to_router(c->th->bus, f.to, bus_bare_len(f.to, f.to_len), bus_msg_new(&f));
      }
    }
    bus_msg_free(it->m);
    xfree(it);
  }
  log_info("conn %llx: %s resumed (h=%" PRIu32 ", %zu stanzas sent again)", (unsigned long long)c->id, c->jid.full,
           h, n);
}

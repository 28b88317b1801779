/* XEP-0198 stream management, version 3 (urn:xmpp:sm:3): acknowledgements, no
 * resumption.
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
 * still has them stored: offline.c). A client that leaves more than limits.sm_max_unacked stanzas, or more than
 * limits.max_pending_out bytes of messages, unacknowledged is disconnected
 * (<policy-violation/>): what a connection keeps is bounded like its unread output.
 * Counters are 32-bit and wrap (§4: h is an unsigned 32-bit integer, mod 2^32). */
#include "edge/edge_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"

#define SM_REQUEST_EVERY 5

struct sm_item {
  struct sm_item *next;
  uint32_t seq;  /* its number among the stanzas sent since enable (1 = first) */
  int64_t off_id; /* store id of a message from offline storage (BUS_F_OFFLINE), else 0 */
  bus_msg_t *m;  /* its DELIVER frame */
};

int sm_offered(const conn_t *c) { return c->th->cfg->sm_max_unacked > 0; }

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
  while (c->sm_q && (int32_t)(h - c->sm_q->seq) >= 0) {
    sm_item_t *it = c->sm_q;
    c->sm_q = it->next;
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
  if (off) edge_offline_ack(c, off);
}

void sm_element(conn_t *c, xnode_t *e) {
  if (!strcmp(e->name, "enable")) {
    if (!sm_offered(c) || c->sm) {
      failed(c, "unexpected-request");
      return;
    }
    if (!c->bound || c->binding) { /* §3: after resource binding */
      failed(c, "unexpected-request");
      return;
    }
    c->sm = 1;
    c->sm_q_tail = &c->sm_q;
    /* no resumption offered: no id, no resume='true' */
    conn_send_str(c, "<enabled xmlns='urn:xmpp:sm:3'/>");
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

void sm_stanza_in(conn_t *c) {
  if (c->sm) c->sm_in++;
}

void sm_stanza_out(conn_t *c, const bus_frame_t *deliver) {
  if (!c->sm || c->closing) return;
  c->sm_out++;
  if (deliver) {
    sm_item_t *it = xmalloc(sizeof *it);
    it->next = NULL;
    it->seq = c->sm_out;
    it->off_id = (deliver->flags & BUS_F_OFFLINE) ? deliver->arg : 0;
    it->m = bus_msg_new(deliver);
    if (it->off_id) c->sm_off++;
    *c->sm_q_tail = it;
    c->sm_q_tail = &it->next;
    c->sm_bytes += it->m->len;
  }
  uint32_t unacked = c->sm_out - c->sm_acked;
  if (unacked > (uint32_t)c->th->cfg->sm_max_unacked || c->sm_bytes > (size_t)c->th->cfg->max_pending_out) {
    log_info("conn %llx: %" PRIu32 " stanzas unacknowledged (XEP-0198): disconnected", (unsigned long long)c->id,
             unacked);
    conn_stream_error(c, "policy-violation", "too many unacknowledged stanzas");
    return;
  }
  if (unacked >= SM_REQUEST_EVERY || c->sm_off) request_ack(c);
}

void sm_bounce(conn_t *c) {
  size_t n = 0;
  while (c->sm_q) {
    sm_item_t *it = c->sm_q;
    c->sm_q = it->next;
    bus_frame_t f;
    if (bus_msg_frame(it->m, &f) == 0) {
      f.kind = BUS_BOUNCE; /* to the bare JID, skipping this connection (f.dst) */
      bus_to_router(c->th->bus, f.to, bus_bare_len(f.to, f.to_len), bus_msg_new(&f));
      n++;
    }
    bus_msg_free(it->m);
    xfree(it);
  }
  c->sm_q_tail = &c->sm_q;
  c->sm_bytes = 0;
  c->sm_off = 0;
  if (n) log_debug("conn %llx: %zu unacknowledged messages handed back (XEP-0198)", (unsigned long long)c->id, n);
}

/* XEP-0352 client state indication: a client that says <inactive/> (a phone whose screen
 * is off) is not woken for what can wait. While it is inactive the edge holds, instead of
 * writing:
 *  - presence broadcasts (available/unavailable; not subscription requests or errors):
 *    only the latest from each sender is kept, an older one is dropped;
 *  - chat states (XEP-0085) without a body.
 * Anything else (a message with a body, an IQ, an error, a subscription request) is
 * urgent: what is held is written first, in order, then it. <active/> writes what is
 * held. What is held is bounded (CSI_MAX_HELD stanzas, a quarter of
 * limits.max_pending_out bytes): past either, it is written out. It is dropped when the
 * connection ends (presence and chat states are not stored anyway: the router sends a
 * new session the current presence).
 *
 * This lives at the edge, not in a router module, because it is about one connection's
 * output: the held frames are the DELIVER frames of that connection. */
#include "edge/edge_internal.h"

#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/strmap.h"

#define NS_CHATSTATES "http://jabber.org/protocol/chatstates"
#define CSI_MAX_HELD 256

struct csi_held {
  struct csi_held *prev, *next;
  bus_msg_t *m;
  char *key; /* presence: its sender (the key in c->csi_presence), else NULL */
};

int csi_element(conn_t *c, xnode_t *e) {
  if (strcmp(e->ns, NS_CSI)) return 0;
  if (!strcmp(e->name, "inactive")) {
    c->csi_inactive = 1;
  } else if (!strcmp(e->name, "active")) {
    c->csi_inactive = 0;
    csi_flush(c);
  } else {
    conn_stream_error(c, "unsupported-stanza-type", NULL);
  }
  return 1;
}

static void unlink_held(conn_t *c, csi_held_t *h) {
  if (h->prev) h->prev->next = h->next;
  else c->csi_head = h->next;
  if (h->next) h->next->prev = h->prev;
  else c->csi_tail = h->prev;
  c->csi_n--;
  c->csi_bytes -= h->m->len;
}

static void free_held(csi_held_t *h) {
  bus_msg_free(h->m);
  xfree(h->key);
  xfree(h);
}

void csi_flush(conn_t *c) {
  size_t n = c->csi_n;
  while (c->csi_head) {
    csi_held_t *h = c->csi_head;
    unlink_held(c, h);
    if (h->key) strmap_del(c->csi_presence, h->key);
    bus_frame_t f;
    if (!conn_closing(c) && bus_msg_frame(h->m, &f) == 0) edge_deliver_now(c, &f);
    free_held(h);
  }
  if (n) log_debug("conn %llx: %zu held stanzas written (XEP-0352)", (unsigned long long)c->id, n);
}

void csi_free(conn_t *c) {
  while (c->csi_head) {
    csi_held_t *h = c->csi_head;
    unlink_held(c, h);
    free_held(h);
  }
  strmap_free(c->csi_presence, NULL);
  c->csi_presence = NULL;
}

bus_msg_t *csi_take(conn_t *c) {
  csi_held_t *h = c->csi_head;
  if (!h) {
    strmap_free(c->csi_presence, NULL);
    c->csi_presence = NULL;
    return NULL;
  }
  unlink_held(c, h);
  if (h->key) strmap_del(c->csi_presence, h->key);
  bus_msg_t *m = h->m;
  h->m = NULL;
  xfree(h->key);
  xfree(h);
  return m;
}

/* What may wait: a broadcast presence (the key is its sender), or a chat state alone. */
static int can_wait(const xnode_t *s, const bus_frame_t *f, char **key) {
  const char *type = xnode_attr(s, "type");
  *key = NULL;
  if (!strcmp(s->name, "presence")) {
    if (type && strcmp(type, "unavailable")) return 0; /* subscriptions, probes, errors */
    *key = xstrndup(f->from, f->from_len);
    return 1;
  }
  if (strcmp(s->name, "message") || (type && !strcmp(type, "error"))) return 0;
  int chatstate = 0;
  for (const xnode_t *ch = s->children; ch; ch = ch->next) {
    if (!ch->name) continue; /* text */
    if (strcmp(ch->ns, NS_CHATSTATES)) return 0; /* a body, or anything else */
    chatstate = 1;
  }
  return chatstate;
}

int csi_hold(conn_t *c, const bus_frame_t *f, arena_t *a) {
  if (!c->csi_inactive) return 0;
  xnode_t *s;
  char *key;
  if (xnode_decode(a, f->payload, f->payload_len, 256, &s) != 0 || !can_wait(s, f, &key)) {
    csi_flush(c); /* urgent: what was held goes first */
    return 0;
  }
  if (key) {
    if (!c->csi_presence) c->csi_presence = strmap_new();
    csi_held_t *old = strmap_get(c->csi_presence, key);
    if (old) { /* superseded */
      unlink_held(c, old);
      strmap_del(c->csi_presence, key);
      free_held(old);
    }
  }
  csi_held_t *h = xcalloc(1, sizeof *h);
  h->m = bus_msg_new(f);
  h->key = key;
  h->prev = c->csi_tail;
  if (c->csi_tail) c->csi_tail->next = h;
  else c->csi_head = h;
  c->csi_tail = h;
  c->csi_n++;
  c->csi_bytes += h->m->len;
  if (key) strmap_put(c->csi_presence, key, h);
  if (c->csi_n > CSI_MAX_HELD || c->csi_bytes > (size_t)c->th->cfg->max_pending_out / 4) csi_flush(c);
  return 1;
}

/* Offline messages (XEP-0160).
 *
 * A message for an account with no available resource of non-negative priority is
 * stored as an encoded bus frame (addresses + compact stanza), so delivering it needs
 * no XML parsing. It is delivered, oldest first and stamped with a XEP-0203 <delay/>,
 * when a resource of the account sends initial presence with non-negative priority, and
 * removed from the store only after it was handed to the edge. Beyond limits.offline_max
 * the sender gets <service-unavailable/> (XEP-0160 §5): nothing is dropped silently. */
#include "router/router_internal.h"

#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/log.h"

int offline_store(worker_t *w, const char *from, const char *to, const xnode_t *st) {
  buf_t p, fr;
  buf_init(&p);
  buf_init(&fr);
  xnode_encode(st, &p);
  bus_frame_t f = {0};
  f.kind = BUS_ROUTE;
  f.from = from;
  f.from_len = strlen(from);
  f.to = to;
  f.to_len = strlen(to);
  f.payload = p.data;
  f.payload_len = p.len;
  bus_frame_encode(&f, &fr);
  int rc = store_offline_push(w->store, to, (const char *)fr.data, fr.len, (unsigned)w->cfg->offline_max);
  buf_free(&p);
  buf_free(&fr);
  if (rc == XMPP_ELIMIT) log_info("offline queue of %s is full", to);
  else if (rc != 0) log_error("offline queue of %s: write failed", to);
  return rc;
}

typedef struct {
  worker_t *w;
  session_t *s;
} deliver_ctx_t;

static void deliver_cb(const char *data, size_t len, int64_t stamp, void *ud) {
  deliver_ctx_t *x = ud;
  worker_t *w = x->w;
  bus_frame_t f;
  size_t used;
  xnode_t *st;
  if (bus_frame_decode((const uint8_t *)data, len, &f, &used) != 0 ||
      xnode_decode(&w->arena, f.payload, f.payload_len, 256, &st) != 0) {
    log_error("offline message undecodable, skipped");
    return;
  }
  char ts[32];
  time_t t = (time_t)stamp;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  xnode_t *d = xnode_add(&w->arena, st, "delay", NS_DELAY);
  xnode_set_attr(&w->arena, d, "from", w->cfg->domain);
  xnode_set_attr(&w->arena, d, "stamp", ts);
  xnode_add_text(&w->arena, d, "Offline Storage", 15);
  char *from = arena_strndup(&w->arena, f.from, f.from_len);
  w_deliver(w, x->s, from, x->s->full, st);
}

void offline_deliver(worker_t *w, user_t *u, session_t *s) {
  deliver_ctx_t x = {w, s};
  if (store_offline_pop_all(w->store, u->bare, deliver_cb, &x) != 0)
    log_error("offline queue of %s: read failed", u->bare);
}

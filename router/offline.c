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

#include "common/alloc.h"
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
  if (w->offline_empty) strmap_del(w->offline_empty, to); /* not empty any more */
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

/* The batch read these users' queue lengths (one round trip): those found empty need
 * no read at their initial presence. Only this worker writes a user's queue, and its
 * pushes clear the mark (offline_store); the marks last one batch. */
void offline_prefetch(worker_t *w, const char *const *bares, size_t n) {
  int *counts = xcalloc(n, sizeof *counts);
  if (store_offline_count_many(w->store, bares, n, counts) == 0) {
    if (!w->offline_empty) w->offline_empty = strmap_new();
    size_t empty = 0;
    for (size_t i = 0; i < n; i++)
      if (counts[i] == 0) {
        strmap_put(w->offline_empty, bares[i], (void *)1);
        empty++;
      }
    log_debug("router %d: %zu offline queues read ahead in one batch, %zu empty", w->index, n, empty);
  }
  xfree(counts);
}

void offline_prefetch_end(worker_t *w) {
  strmap_free(w->offline_empty, NULL);
  w->offline_empty = NULL;
}

void offline_deliver(worker_t *w, user_t *u, session_t *s) {
  if (w->offline_empty && strmap_del(w->offline_empty, u->bare)) return; /* read this batch: empty */
  deliver_ctx_t x = {w, s};
  if (store_offline_pop_all(w->store, u->bare, deliver_cb, &x) != 0)
    log_error("offline queue of %s: read failed", u->bare);
}

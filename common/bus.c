#include "common/bus.h"

#include <time.h>

#include "common/err.h"

int bus_queue_attach(bus_t *b, bus_queue_t *q, uv_loop_t *loop, bus_queue_cb cb, void *ud, const char *name) {
  int rc = bus_queue_init(q, loop, cb, ud);
  bus_queue_bound(q, b->queue_high, b->queue_low, &b->congested, name);
  return rc;
}

void bus_set_remote(bus_t *b, const bus_remote_ops_t *ops, void *ctx) {
  b->remote = ops;
  b->remote_ctx = ops ? ctx : NULL;
}

static uint64_t pending(bus_t *b) {
  uint64_t n = 0;
  for (int i = 0; i < b->nworkers; i++) n += bus_queue_pending(&b->worker_q[i]);
  for (int i = 0; i < b->nedges; i++) n += bus_queue_pending(&b->edge_q[i]);
  if (b->remote) n += b->remote->pending(b->remote_ctx);
  return n;
}

int bus_quiesce(bus_t *b, int timeout_ms) {
  struct timespec d = {0, 5 * 1000 * 1000};
  int quiet = 0;
  for (int waited = 0; waited < timeout_ms; waited += 5) {
    /* a handled frame may have produced new ones: require a few quiet polls in a row */
    quiet = pending(b) == 0 ? quiet + 1 : 0;
    if (quiet >= 4) return 0;
    nanosleep(&d, NULL);
  }
  return XMPP_AGAIN;
}

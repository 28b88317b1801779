#include "common/bus.h"

#include <stdio.h>
#include <time.h>

#include "common/err.h"
#include "common/metrics.h"

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

/* One family's samples for every local queue (labels: the queue's name, "router0"). */
static void queue_samples(metrics_out_t *o, bus_t *b, const char *name, int what) {
  for (int side = 0; side < 2; side++) {
    int n = side ? b->nedges : b->nworkers;
    bus_queue_t *qs = side ? b->edge_q : b->worker_q;
    for (int i = 0; i < n; i++) {
      bus_queue_t *q = &qs[i];
      char labels[48];
      snprintf(labels, sizeof labels, "queue=\"%s\"", q->name);
      uint64_t v = what == 0   ? bus_queue_pending(q)
                   : what == 1 ? bus_queue_bytes(q)
                   : what == 2 ? atomic_load_explicit(&q->done, memory_order_relaxed)
                               : (uint64_t)bus_queue_over(q);
      metrics_sample_u64(o, name, labels, v);
    }
  }
}

void bus_metrics(metrics_out_t *o, void *ud) {
  bus_t *b = ud;
  static const struct {
    const char *name, *type, *help;
  } fams[] = {
      {"xmppd_bus_queue_frames", "gauge", "Frames waiting in an in-process bus queue (a router worker's, an edge thread's)"},
      {"xmppd_bus_queue_bytes", "gauge", "Bytes of the frames waiting in an in-process bus queue"},
      {"xmppd_bus_frames_handled_total", "counter",
       "Frames a queue's thread took off it: a router worker's load, an edge thread's deliveries"},
      {"xmppd_bus_queue_over", "gauge", "1 while a queue is over limits.bus_queue_bytes (until down to a quarter)"},
  };
  for (int f = 0; f < 4; f++) {
    metrics_family(o, fams[f].name, fams[f].type, fams[f].help);
    queue_samples(o, b, fams[f].name, f);
  }
  metrics_family(o, "xmppd_bus_congested", "gauge",
                 "Queues and bus links over their high watermark; while above 0 the edges stop reading bound clients");
  metrics_sample(o, "xmppd_bus_congested", NULL, atomic_load_explicit(&b->congested, memory_order_relaxed));
}

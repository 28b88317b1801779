#include "common/bus_queue.h"

#include <stdio.h>
#include <sched.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"

bus_msg_t *bus_msg_new(const bus_frame_t *f) {
  buf_t b;
  buf_init(&b);
  buf_reserve(&b, sizeof(bus_msg_t) + 64 + f->from_len + f->to_len + f->payload_len);
  b.len = sizeof(bus_msg_t); /* room for the message header, frame bytes follow */
  bus_frame_encode(f, &b);
  size_t total;
  bus_msg_t *m = (bus_msg_t *)buf_steal(&b, &total);
  m->next = NULL;
  m->len = total - sizeof(bus_msg_t);
  return m;
}

int bus_msg_frame(const bus_msg_t *m, bus_frame_t *f) {
  size_t used;
  return bus_frame_decode(m->data, m->len, f, &used);
}

void bus_msg_free(bus_msg_t *m) { xfree(m); }

/* Batches one drainer takes before it leaves the rest to the consumer's thread. */
#define BUS_QUEUE_ROUNDS 4

/* The queue this thread consumes (bus_queue_own): its pushes there need no wake-up. */
static __thread bus_queue_t *t_own;

static void run_queue(bus_queue_t *q, int rounds);
static void async_cb(uv_async_t *h) { run_queue(h->data, BUS_QUEUE_ROUNDS); }
static void prep_cb(uv_prepare_t *h) {
  bus_queue_t *q = h->data;
  if (atomic_load_explicit(&q->head, memory_order_relaxed)) run_queue(q, BUS_QUEUE_ROUNDS);
}

static void say(bus_queue_t *q, int over) {
  if (over) {
    uint64_t now = uv_hrtime(), last = atomic_load(&q->log_ns);
    if (last && now - last < 1000000000u) return; /* a queue hovering at its bound */
    atomic_store(&q->log_ns, now);
    atomic_store(&q->said_over, 1);
    log_info("bus: queue of %s over its high watermark (%llu bytes): edges stop reading clients", q->name,
             (unsigned long long)q->high);
  } else if (atomic_exchange(&q->said_over, 0)) {
    log_info("bus: queue of %s drained: edges read again", q->name);
  }
}

/* Makes the over flag match the bytes (with hysteresis). Called by whoever changed them;
 * the loop re-reads after its own flip, so a flip from a stale reading is undone by the
 * same thread, and the last thread to change the bytes leaves the flag right. */
static void water(bus_queue_t *q) {
  if (!q->high) return;
  for (;;) {
    int over = atomic_load(&q->over);
    uint64_t b = atomic_load(&q->bytes);
    int want = over ? b > q->low : b >= q->high;
    if (want == over) return;
    if (atomic_compare_exchange_strong(&q->over, &over, want)) {
      atomic_fetch_add(q->congested, want ? 1 : -1);
      say(q, want);
    }
  }
}

static void handled(bus_queue_t *q, uint64_t n, uint64_t bytes) {
  atomic_fetch_sub(&q->bytes, bytes);
  atomic_fetch_add_explicit(&q->done, n, memory_order_release);
  water(q);
}

/* One batch: the whole stack, in push order. The caller holds the run flag. */
static void drain_batch(bus_queue_t *q) {
  bus_msg_t *lifo = atomic_exchange_explicit(&q->head, NULL, memory_order_acquire);
  bus_msg_t *fifo = NULL;
  uint64_t n = 0, bytes = 0;
  while (lifo) {
    n++;
    bytes += bus_msg_size(lifo);
    bus_msg_t *nx = lifo->next;
    lifo->next = fifo;
    fifo = lifo;
    lifo = nx;
  }
  if (fifo) q->cb(q->ud, fifo); /* the messages are the callback's now: sizes taken above */
  handled(q, n, bytes);
}

/* Runs the callback on what is queued, at most rounds batches, as the only drainer.
 * Gives up at once when another thread drains: that one looks at the queue again after
 * letting go (the exchange and the store below are sequentially consistent, as the
 * push's compare-and-swap: a push either happens before the drainer's last look or
 * finds the flag free). */
static void run_queue(bus_queue_t *q, int rounds) {
  for (;;) {
    if (atomic_exchange(&q->run, 1)) return;
    int n = 0;
    while (n < rounds && !atomic_load(&q->closed) && atomic_load(&q->head)) {
      drain_batch(q);
      n++;
    }
    atomic_store(&q->run, 0);
    if (!atomic_load(&q->head) || atomic_load(&q->closed)) return;
    if (n >= rounds) { /* the rest on the consumer's thread, after its other work */
      uv_async_send(&q->async);
      return;
    }
  }
}

void bus_queue_drain(bus_queue_t *q) {
  while (atomic_exchange(&q->run, 1)) sched_yield();
  if (!atomic_load(&q->closed)) drain_batch(q);
  atomic_store(&q->run, 0);
  /* pushed during the batch by a producer that found the flag taken: later, on the loop */
  if (atomic_load(&q->head) && !atomic_load(&q->closed)) uv_async_send(&q->async);
}

void bus_queue_inline(bus_queue_t *q, int on) { q->inline_ok = on; }

void bus_queue_own(bus_queue_t *q) { t_own = q; }

int bus_queue_init(bus_queue_t *q, uv_loop_t *loop, bus_queue_cb cb, void *ud) {
  atomic_init(&q->head, NULL);
  atomic_init(&q->pushed, 0);
  atomic_init(&q->done, 0);
  atomic_init(&q->closed, 0);
  atomic_init(&q->bytes, 0);
  atomic_init(&q->over, 0);
  atomic_init(&q->log_ns, 0);
  atomic_init(&q->said_over, 0);
  q->high = q->low = 0;
  q->congested = NULL;
  snprintf(q->name, sizeof q->name, "?");
  q->cb = cb;
  q->ud = ud;
  atomic_init(&q->run, 0);
  q->inline_ok = 0;
  q->async.data = q;
  q->prep.data = q;
  int rc = uv_async_init(loop, &q->async, async_cb);
  if (rc == 0) rc = uv_prepare_init(loop, &q->prep);
  if (rc == 0) rc = uv_prepare_start(&q->prep, prep_cb);
  if (rc == 0) uv_unref((uv_handle_t *)&q->prep); /* never what keeps a loop running */
  return rc;
}

void bus_queue_bound(bus_queue_t *q, uint64_t high, uint64_t low, _Atomic int *congested, const char *name) {
  q->high = congested ? high : 0;
  q->low = low < high ? low : high;
  q->congested = congested;
  snprintf(q->name, sizeof q->name, "%s", name ? name : "?");
}

void bus_queue_push(bus_queue_t *q, bus_msg_t *m) {
  if (atomic_load_explicit(&q->closed, memory_order_acquire)) {
    bus_msg_free(m);
    return;
  }
  atomic_fetch_add_explicit(&q->pushed, 1, memory_order_relaxed);
  /* counted before it can be taken: the consumer's subtraction never comes first */
  atomic_fetch_add(&q->bytes, bus_msg_size(m));
  water(q);
  bus_msg_t *old = atomic_load_explicit(&q->head, memory_order_relaxed);
  do {
    m->next = old;
  } while (!atomic_compare_exchange_weak_explicit(&q->head, &old, m, memory_order_release,
                                                  memory_order_relaxed));
  if (old) return; /* whoever pushed the first one arranged its drain */
  if (q->inline_ok) run_queue(q, BUS_QUEUE_ROUNDS); /* here, unless someone drains now */
  else if (t_own != q) uv_async_send(&q->async);       /* its own thread: prep_cb takes it */
}

uint64_t bus_queue_bytes(bus_queue_t *q) { return atomic_load(&q->bytes); }

int bus_queue_over(bus_queue_t *q) { return atomic_load(&q->over); }

uint64_t bus_queue_pending(bus_queue_t *q) {
  uint64_t done = atomic_load_explicit(&q->done, memory_order_acquire);
  return atomic_load_explicit(&q->pushed, memory_order_acquire) - done;
}

void bus_queue_close(bus_queue_t *q) {
  while (atomic_exchange(&q->run, 1)) sched_yield(); /* no drainer on another thread; kept */
  atomic_store_explicit(&q->closed, 1, memory_order_release);
  bus_msg_t *m = atomic_exchange(&q->head, NULL);
  uint64_t n = 0, bytes = 0;
  while (m) {
    bus_msg_t *nx = m->next;
    bytes += bus_msg_size(m);
    bus_msg_free(m);
    m = nx;
    n++;
  }
  handled(q, n, bytes); /* a closed queue holds nothing back */
  uv_close((uv_handle_t *)&q->async, NULL);
  uv_close((uv_handle_t *)&q->prep, NULL);
  if (t_own == q) t_own = NULL;
}

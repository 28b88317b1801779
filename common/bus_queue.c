#include "common/bus_queue.h"

#include <string.h>

#include "common/alloc.h"

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

static void async_cb(uv_async_t *h) { bus_queue_drain(h->data); }

void bus_queue_drain(bus_queue_t *q) {
  bus_msg_t *lifo = atomic_exchange_explicit(&q->head, NULL, memory_order_acquire);
  bus_msg_t *fifo = NULL;
  uint64_t n = 0;
  while (lifo) {
    n++;
    bus_msg_t *nx = lifo->next;
    lifo->next = fifo;
    fifo = lifo;
    lifo = nx;
  }
  if (fifo) q->cb(q->ud, fifo);
  atomic_fetch_add_explicit(&q->done, n, memory_order_release);
}

int bus_queue_init(bus_queue_t *q, uv_loop_t *loop, bus_queue_cb cb, void *ud) {
  atomic_init(&q->head, NULL);
  atomic_init(&q->pushed, 0);
  atomic_init(&q->done, 0);
  atomic_init(&q->closed, 0);
  q->cb = cb;
  q->ud = ud;
  q->async.data = q;
  return uv_async_init(loop, &q->async, async_cb);
}

void bus_queue_push(bus_queue_t *q, bus_msg_t *m) {
  if (atomic_load_explicit(&q->closed, memory_order_acquire)) {
    bus_msg_free(m);
    return;
  }
  atomic_fetch_add_explicit(&q->pushed, 1, memory_order_relaxed);
  bus_msg_t *old = atomic_load_explicit(&q->head, memory_order_relaxed);
  do {
    m->next = old;
  } while (!atomic_compare_exchange_weak_explicit(&q->head, &old, m, memory_order_release,
                                                  memory_order_relaxed));
  if (!old) uv_async_send(&q->async);
}

uint64_t bus_queue_pending(bus_queue_t *q) {
  uint64_t done = atomic_load_explicit(&q->done, memory_order_acquire);
  return atomic_load_explicit(&q->pushed, memory_order_acquire) - done;
}

void bus_queue_close(bus_queue_t *q) {
  atomic_store_explicit(&q->closed, 1, memory_order_release);
  bus_msg_t *m = atomic_exchange(&q->head, NULL);
  uint64_t n = 0;
  while (m) {
    bus_msg_t *nx = m->next;
    bus_msg_free(m);
    m = nx;
    n++;
  }
  atomic_fetch_add_explicit(&q->done, n, memory_order_release);
  uv_close((uv_handle_t *)&q->async, NULL);
}

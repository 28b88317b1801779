/* In-process bus transport: one lock-free multi-producer queue per consumer thread
 * (each edge I/O thread and each router worker owns one), with batched wake-ups.
 *
 * Producers push with an atomic compare-and-swap onto a stack; the push that finds the
 * queue empty sends the consumer's uv_async_t, so a burst costs one wake-up. The
 * consumer takes the whole stack with one exchange and reverses it: order is FIFO per
 * producer. Messages are single allocations holding one encoded bus frame. */
#ifndef XMPP_BUS_QUEUE_H
#define XMPP_BUS_QUEUE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/bus_frame.h"

typedef struct bus_msg {
  struct bus_msg *next;
  size_t len;
  uint8_t data[];
} bus_msg_t;

/* Encodes f into a new message (caller owns it until pushed). */
bus_msg_t *bus_msg_new(const bus_frame_t *f);
/* Decodes a message made by bus_msg_new (cannot fail for those; returns 0). */
int bus_msg_frame(const bus_msg_t *m, bus_frame_t *f);
void bus_msg_free(bus_msg_t *m);

typedef void (*bus_queue_cb)(void *ud, bus_msg_t *batch); /* batch: FIFO list via ->next;
                                                           the callback owns it */
typedef struct bus_queue {
  _Atomic(bus_msg_t *) head;
  _Atomic uint64_t pushed;  /* messages ever pushed (producers) */
  _Atomic uint64_t done;    /* messages handed to the callback (consumer) */
  _Atomic int closed;
  uv_async_t async;
  bus_queue_cb cb;
  void *ud;
} bus_queue_t;

/* Called on the consumer's loop thread before that loop runs. */
int bus_queue_init(bus_queue_t *q, uv_loop_t *loop, bus_queue_cb cb, void *ud);
/* Any thread. Takes ownership of m. After bus_queue_close the message is freed. */
void bus_queue_push(bus_queue_t *q, bus_msg_t *m);
/* Messages pushed and not yet handled (any thread; a snapshot). */
uint64_t bus_queue_pending(bus_queue_t *q);
/* Consumer thread: runs the callback on whatever is queued now. */
void bus_queue_drain(bus_queue_t *q);
/* Consumer thread: closes the async handle; frees anything still queued. */
void bus_queue_close(bus_queue_t *q);

#endif

/* In-process bus transport: one lock-free multi-producer queue per consumer thread
 * (each edge I/O thread and each router worker owns one), with batched wake-ups.
 *
 * Producers push with an atomic compare-and-swap onto a stack; the push that finds the
 * queue empty arranges for it to be drained, so a burst costs one hand-off. Whoever
 * drains takes the whole stack with one exchange and reverses it: order is FIFO per
 * producer. Messages are single allocations holding one encoded bus frame.
 *
 * Who drains (docs/architecture.md, "Run to completion"): one thread at a time runs the
 * callback, the one that holds the queue's run flag (taken with one atomic exchange,
 * never waited for). The push that finds the queue empty
 *   - on a queue marked bus_queue_inline (router workers in one process): takes the run
 *     flag and runs the callback itself, on the producer's thread, when nobody runs it;
 *     when somebody does, it does nothing more: whoever holds the flag looks at the
 *     queue again after letting go of it, so nothing pushed meanwhile is left behind;
 *   - from the consumer's own thread (bus_queue_own): does nothing more: the consumer's
 *     loop drains its queue before it next waits for events (a uv_prepare handle);
 *   - otherwise: wakes the consumer's thread with its uv_async_t.
 * A drainer takes at most BUS_QUEUE_ROUNDS batches, then leaves the rest to the
 * consumer's own thread (its async), so a producer is never kept from its own work for
 * long and the consumer's loop gets to its timers.
 *
 * Bound (bus_queue_bound): the bytes of the messages pushed and not yet handled are
 * counted (producers add before the push, the consumer subtracts once the callback has
 * handled the batch, so a batch being worked on still counts). When they reach the high
 * watermark the queue is "over" and adds 1 to a shared counter (bus_t.congested, which
 * the edges read to stop reading their clients); when they fall to the low watermark it
 * takes the 1 back. A push is never refused: what a producer could not hold back (a
 * session's close, a bounce, a delivery) still goes in; the bound is applied where new
 * client input is admitted. The over flag is flipped by compare-and-swap and re-checked
 * after every flip, so whichever thread changes the bytes last leaves the flag matching
 * them (no increment is lost or doubled, no queue stays over when drained). */
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
/* What a queued message costs: its allocation (header and frame bytes). */
static inline size_t bus_msg_size(const bus_msg_t *m) { return sizeof *m + m->len; }

typedef void (*bus_queue_cb)(void *ud, bus_msg_t *batch); /* batch: FIFO list via ->next;
                                                           the callback owns it */
typedef struct bus_queue {
  _Atomic(bus_msg_t *) head;
  _Atomic uint64_t pushed;  /* messages ever pushed (producers) */
  _Atomic uint64_t done;    /* messages handed to the callback (consumer) */
  _Atomic int closed;
  _Atomic uint64_t bytes;   /* bus_msg_size of the messages pushed and not yet handled */
  _Atomic int over;         /* bytes reached high and have not fallen to low since */
  uint64_t high, low;       /* watermarks; high 0 = unbounded (counted only) */
  _Atomic int *congested;   /* += 1 while over */
  _Atomic uint64_t log_ns;  /* when an "over" was last logged (uv_hrtime) */
  _Atomic int said_over;    /* ... and its "drained" is still to be logged */
  char name[16];            /* the consumer, for the log */
  _Atomic int run;          /* 1 while a thread runs the callback (see above) */
  int inline_ok;            /* producers may run the callback (bus_queue_inline) */
  uv_async_t async;
  uv_prepare_t prep;        /* drains what the consumer's thread pushed to itself */
  bus_queue_cb cb;
  void *ud;
} bus_queue_t;

/* Called on the consumer's loop thread before that loop runs. */
int bus_queue_init(bus_queue_t *q, uv_loop_t *loop, bus_queue_cb cb, void *ud);
/* Before any push (consumer's thread, at set-up): bounds the queue in bytes, see above.
 * low is clamped to high; name (copied, truncated to 15) says whose queue it is in the
 * log lines that report the crossings (at most one a second per queue). */
void bus_queue_bound(bus_queue_t *q, uint64_t high, uint64_t low, _Atomic int *congested, const char *name);
/* Before any push (set-up): lets producers run the callback on their own thread when the
 * consumer is not running it (see above). Only for a consumer whose callback touches
 * nothing bound to its loop's thread (router workers outside a cluster). */
void bus_queue_inline(bus_queue_t *q, int on);
/* The consumer's thread, when it starts: its pushes to q need no wake-up. */
void bus_queue_own(bus_queue_t *q);
/* Any thread. Takes ownership of m. After bus_queue_close the message is freed. */
void bus_queue_push(bus_queue_t *q, bus_msg_t *m);
/* Messages pushed and not yet handled (any thread; a snapshot). */
uint64_t bus_queue_pending(bus_queue_t *q);
/* Bytes pushed and not yet handled (any thread; a snapshot). */
uint64_t bus_queue_bytes(bus_queue_t *q);
/* 1 while the queue is over its high watermark (any thread; a snapshot). */
int bus_queue_over(bus_queue_t *q);
/* Consumer thread: runs the callback once on whatever is queued now (waiting while
 * another thread runs it); what comes in meanwhile is left to the loop. */
void bus_queue_drain(bus_queue_t *q);
/* Consumer thread: closes the async handle; frees anything still queued. */
void bus_queue_close(bus_queue_t *q);

#endif

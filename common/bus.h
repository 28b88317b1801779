/* The bus as the rest of the code sees it: where a frame goes.
 *
 * In one process (xmppd --role all) frames move through bus_queue_t's; the shard of a
 * bare JID is hash_shard(bare) mod S, and shard s is served by worker s mod M.
 * The cluster will put TCP links behind these same three calls. */
#ifndef XMPP_BUS_H
#define XMPP_BUS_H

#include <stdint.h>

#include "common/bus_queue.h"
#include "common/hash.h"

typedef struct bus {
  uint32_t nshards;
  int nworkers;
  int nedges;
  bus_queue_t *worker_q; /* [nworkers], each owned by its router worker */
  bus_queue_t *edge_q;   /* [nedges], each owned by its edge I/O thread */
} bus_t;

static inline int bus_worker_of(const bus_t *b, const char *bare, size_t len) {
  return (int)(hash_shard(bare, len, b->nshards) % (uint32_t)b->nworkers);
}
static inline void bus_to_router(bus_t *b, const char *bare, size_t len, bus_msg_t *m) {
  bus_queue_push(&b->worker_q[bus_worker_of(b, bare, len)], m);
}
static inline void bus_to_edge(bus_t *b, uint16_t thread, bus_msg_t *m) {
  if (thread < b->nedges) bus_queue_push(&b->edge_q[thread], m);
  else bus_msg_free(m);
}
/* Waits until every queue is empty and stays so for a moment, at most timeout_ms.
 * Returns 0 when quiet, XMPP_AGAIN on timeout. Main thread, during shutdown. */
int bus_quiesce(bus_t *b, int timeout_ms);

/* Length of the bare part of a normalised JID (up to the first '/'). */
static inline size_t bus_bare_len(const char *jid, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (jid[i] == '/') return i;
  return len;
}

#endif

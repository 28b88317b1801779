/* A bounded set of recently seen 64-bit ids, forgetting the oldest first: what a
 * receiver uses to drop a frame re-sent after a node's death when it has handled it
 * already (origin ids, common/bus_frame.h BUS_F_ORIGIN; docs/cluster.md "Exactly once").
 *
 * Fixed memory from dedup_new: a ring of the last cap ids in arrival order and an
 * open-addressing index over it (linear probing, deletion by backward shift), 16 bytes
 * an id. Each call is O(1) expected; ids are expected well mixed (they are outputs of
 * bus_mix64, chosen by the server, never by a client). Not thread-safe: one owner. */
#ifndef XMPP_DEDUP_H
#define XMPP_DEDUP_H

#include <stddef.h>
#include <stdint.h>

typedef struct dedup dedup_t;

/* A set remembering the last cap ids (cap >= 1). Owned by the caller: dedup_free. */
dedup_t *dedup_new(size_t cap);
void dedup_free(dedup_t *d);
/* 1 when id is among the last cap ids given (a repeat: nothing changes); else 0, and id
 * is remembered (the oldest is forgotten when the set is full). id 0 is never seen. */
int dedup_check(dedup_t *d, uint64_t id);
/* Ids remembered now (at most cap). */
size_t dedup_count(const dedup_t *d);

#endif

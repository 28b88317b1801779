/* XEP-0198 in a cluster: what the router of an account keeps of a session's messages
 * until its client acknowledges them (router/session.c), and what it keeps to resume the
 * session itself after its edge's death (router/sm_orphan.c). Internal to those two. */
#ifndef ROUTER_SM_PARK_H
#define ROUTER_SM_PARK_H

#include <stddef.h>

#include "router/module.h"

typedef struct copy {
  struct copy *next;
  uint64_t n;   /* its number (0: unnumbered, from the edge) */
  bus_msg_t *m; /* the BOUNCE that sends it back */
  uint32_t seq; /* wrote: the client's count at which its edge wrote it (BUS_SM_ACK) */
  int wrote;
  int resent;   /* sent again in a resumption from the router (sm_orphan.c) */
  int unsent;   /* kept for an orphan, or its link's bounce kept: its edge never had it */
} copy_t;
_Static_assert(offsetof(copy_t, next) == 0, "a list's tail pointer is its last copy");

typedef struct sm_park {
  copy_t *num, **num_tail;     /* numbered, by number */
  copy_t *plain, **plain_tail; /* unnumbered, in the edge's order */
  size_t n, bytes;
  uint64_t acked; /* the client acknowledged every copy numbered up to it */
  copy_t *hint;   /* the numbered copy inserted last (NULL once any copy is freed) */
  int full;       /* past the bounds: copies no more (logged once) */
  int has_unsent; /* some copy is marked unsent (sm_orphan.c) */
} sm_park_t;

void copy_free(sm_park_t *p, copy_t *c);
void park_fix_tails(sm_park_t *p);
/* The first k unnumbered copies go. */
void park_drop_plain(sm_park_t *p, int64_t k);
/* Keeps f as copy number n (0: unnumbered); 0 when past the bounds. */
int park_add(session_t *s, const bus_frame_t *f, uint64_t n, const xmpp_config_t *cfg);

#endif

/* The router: M worker threads, each owning the shards s with s mod M == its index, and
 * all state of the bare JIDs in them (sessions, presence, rosters, offline delivery).
 * Shared-nothing: a user's state is touched by its worker's thread only; workers talk
 * to edges and to each other with bus frames. */
#ifndef XMPP_ROUTER_H
#define XMPP_ROUTER_H

#include "common/bus.h"
#include "common/config.h"

typedef struct router router_t;

/* Creates worker loops and registers their queues in bus->worker_q (bus->nworkers
 * entries). Main thread. NULL on failure (logged). */
router_t *router_create(const xmpp_config_t *cfg, bus_t *bus);
int router_start(router_t *r);
/* Drains every worker's queue, then ends the loops and joins the threads. */
void router_stop(router_t *r);
void router_free(router_t *r);
/* The index of the router module called name, for [domain NAME] disable
 * (domains_module_fn, common/domains.h): -1 unknown, -2 one that cannot be switched off. */
int modules_index(const char *name);
/* The name of router module i, NULL past the last. */
const char *modules_name(int i);

#endif

/* The edge: client connections. N I/O threads, each with its own libuv loop and its own
 * SO_REUSEPORT listening sockets; a connection lives on one thread for life. The edge
 * terminates TLS and SASL, runs RFC 6120 negotiation, stamps 'from' and forwards each
 * stanza as a bus frame to the shard of the sender; it writes what routers deliver. */
#ifndef XMPP_EDGE_H
#define XMPP_EDGE_H

#include <uv.h>

#include "common/bus.h"
#include "common/config.h"

typedef struct edge edge_t;

/* Creates the threads' loops, listening sockets and TLS context; registers each thread's
 * bus queue in bus->edge_q (which must have bus->nedges entries). Threads do not run
 * yet. Returns NULL with a logged reason on failure, and *in_use = 1 (may be NULL) when
 * the reason is that another process (another xmppd, or any program) already listens on
 * a configured address: one process per address (edge.c, "One process per address").
 * Main thread. */
edge_t *edge_create(const xmpp_config_t *cfg, bus_t *bus, int *in_use);
int edge_start(edge_t *e);
/* Phase one of stopping (returns at once): stop accepting, send <system-shutdown/> to
 * every stream and end the sessions (routers get SESSION_CLOSE frames). */
void edge_stop(edge_t *e);
/* Phase two: close what remains, end the loops, join the threads. */
void edge_join(edge_t *e);
void edge_free(edge_t *e);
/* SIGHUP: loads tls.certificate and tls.key again; new connections use the new pair,
 * established sessions are untouched. On error the old pair stays (logged). */
int edge_reload_tls(edge_t *e);

#endif

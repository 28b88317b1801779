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
/* SIGHUP: loads tls.certificate and tls.key again, and the certificate of each domain of
 * the current table (common/domains.h: publish the new table first); new connections use
 * the new pairs, established sessions are untouched. On error the old pairs stay (logged). */
struct domains;
int edge_reload_tls(edge_t *e, const struct domains *d);

/* Admin requests (edge/admin.c), for the control socket (common/control.h): each edge
 * thread does its part on its own connections (a BUS_ADMIN frame on its bus queue, so
 * no thread touches another's), the thread that finishes last calls done. */
typedef enum {
  EDGE_ADMIN_SESSIONS,  /* list every session (with a JID: its, as KICK matches): JSON objects */
  EDGE_ADMIN_COUNT,     /* count them */
  EDGE_ADMIN_KICK,      /* end those of a JID (bare: all; full: that one) with <policy-violation/> */
  EDGE_ADMIN_BROADCAST, /* a headline message from the domain to each, routed as any message */
  EDGE_ADMIN_DOMAIN_GONE, /* end every stream of the domain jid with <host-gone/> (RFC 6120
                           §4.9.3.5): it was removed from the configuration */
  EDGE_ADMIN_DRAIN,     /* stop accepting; send every connection away (edge_drain_begin), at a rate */
} edge_admin_op_t;
typedef struct edge_admin edge_admin_t;
/* jid: normalised (kick; sessions: NULL for all); text: the stream error's text (kick, NULL: a default) or the
 * message body (broadcast), checked by the caller (control_text_ok). Main thread. */
edge_admin_t *edge_admin_new(edge_t *e, edge_admin_op_t op, const char *jid, const char *text);
/* Sends r to every edge thread; done(r, ud) is called once, on the edge thread that
 * finishes last (any thread: it must only hand r over, e.g. control_post). */
void edge_admin_post(edge_admin_t *r, void (*done)(edge_admin_t *r, void *ud), void *ud);
/* After done: the sessions listed, kicked or sent to (their count), and for SESSIONS
 * the JSON objects, for KICK the full JIDs as JSON strings, comma-separated (NUL-terminated). */
size_t edge_admin_count(const edge_admin_t *r);
const char *edge_admin_json(edge_admin_t *r);
void edge_admin_free(edge_admin_t *r);
/* COUNT: how many of the sessions counted are detached (XEP-0198 §5). */
size_t edge_admin_detached(const edge_admin_t *r);
/* DRAIN: connections sent away per second, the whole edge (>= 1); before the post. */
void edge_admin_set_rate(edge_admin_t *r, int rate);

/* A planned drain (docs/operations.md "Draining an edge"): marks the edge draining, with
 * target (HOST:PORT, checked by the caller) named in each connection's
 * <see-other-host/>, or NULL: <system-shutdown/>. 0, or -1 when a drain began already.
 * Then post an EDGE_ADMIN_DRAIN request. Main thread. */
int edge_drain_begin(edge_t *e, const char *target);
/* 1 once a drain began (*target: its target or NULL); *conns: client connections still
 * open, any state (may be NULL). Any thread. */
int edge_draining(edge_t *e, const char **target, long *conns);

#endif

/* xmppd's control commands (status, sessions, kick, broadcast, adduser, deluser, passwd,
 * cluster) over common/control.h, served on the control socket and, with admin.listen,
 * the HTTP admin API (common/control_http.h); the edge's admin requests (edge/admin.c)
 * do the sessions' work on the I/O threads. docs/operations.md, "The control socket" and
 * "The HTTP admin API". Main thread only. */
#ifndef XMPPD_ADMIN_H
#define XMPPD_ADMIN_H

#include <uv.h>

#include "common/bus.h"
#include "common/config.h"
#include "edge/edge.h"

typedef struct xmppd_admin xmppd_admin_t;

/* Opens the configured control socket before anything serves (neither it nor
 * admin.listen configured: 0 and *out = NULL; admin.listen alone: a dispatcher without
 * a socket). 0; 2 when another process serves that path (logged: the caller exits 2);
 * 1 on another error (logged). */
int xmppd_admin_open(const xmpp_config_t *cfg, xmppd_admin_t **out);
/* Serves it on loop, and starts the HTTP admin API when configured (-1, logged, when it
 * cannot listen); edge may be NULL (a router process: no sessions here). */
int xmppd_admin_start(xmppd_admin_t *a, uv_loop_t *loop, edge_t *edge, const bus_t *bus);
/* When the loop has stopped for shutdown: no more requests. */
void xmppd_admin_stop(xmppd_admin_t *a);
/* After the edge threads have been joined, before the loop's last run (frees). NULL-safe. */
void xmppd_admin_close(xmppd_admin_t *a);

/* Reads the configuration again for its domains and certificates (what SIGHUP does,
 * cmd/xmppd.c): 0 with *summary ("N domains; added: ...; removed: ..."), or XMPP_EINVAL
 * with *summary saying why nothing changed. Caller frees *summary. Main thread. */
int xmppd_reload(edge_t *edge, char **summary);

#endif

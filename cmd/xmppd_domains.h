/* Runtime domains (docs/operations.md "Virtual hosting"): domains added and removed
 * through the admin interface (xmppctl domain add|remove|show, POST /admin/domain-add...),
 * kept in the store (store_domain_*) beside the configuration's [domain NAME] sections.
 *
 * The list in force is always the store's: every change is written to the store first,
 * then the list is read back and the domain table (common/domains.h) rebuilt from the
 * configuration and that list, and published as a reload publishes it (certificates
 * first, removed domains' streams end with <host-gone/>). With the Redis back-end each
 * process polls the store's domain version every XDOM_POLL_MS, so a domain added on one
 * node of a cluster is served by every other within that delay plus one store round trip.
 * Main thread only (the store work runs on libuv's thread pool). */
#ifndef XMPPD_DOMAINS_H
#define XMPPD_DOMAINS_H

#include <uv.h>

#include "common/config.h"
#include "common/control.h"
#include "common/domains.h"
#include "edge/edge.h"

#define XDOM_POLL_MS 1000

/* At start-up, before the edge exists: the stored runtime domains are read and the table
 * of cfg and them published (a stored domain that no longer builds, e.g. its certificate
 * gone, is left out, logged). cfg stays the process's until xdom_set_config. 0, or -1
 * with *err when the store cannot be read (SQLite; with Redis the poll retries). */
int xdom_load(const xmpp_config_t *cfg, int edge_role, char **err);
/* The table of c's domains and the runtime ones (domains_build_ex). */
domains_t *xdom_build(const xmpp_config_t *c, int check_certs, char **err);
/* Publishes nd (owned from here): the edge's certificates first (a failure keeps the old
 * table: XMPP_EINVAL), then the table; removed domains' streams end with <host-gone/>.
 * *summary: "N domains; added: ...; removed: ..." (caller frees). */
int xdom_apply(edge_t *edge, domains_t *nd, char **summary);
/* A reload's configuration (owned from here) is the one templates come from. */
void xdom_set_config(xmpp_config_t *c);
/* Serves the commands (edge NULL on a router) and, with the Redis back-end, polls. */
void xdom_start(uv_loop_t *loop, edge_t *edge);
/* No more polls (shutdown). */
void xdom_stop(void);
/* Jobs of the commands or of the poll still on the thread pool. */
int xdom_busy(void);
/* After the last loop run: frees the list and the owned configuration. */
void xdom_free(void);

/* The commands (cmd/xmppd_admin.c's table); ud is ignored. */
void xdom_cmd_add(void *ud, control_req_t *r, int argc, char **argv);
void xdom_cmd_remove(void *ud, control_req_t *r, int argc, char **argv);
void xdom_cmd_show(void *ud, control_req_t *r, int argc, char **argv);
/* One domain's JSON members (without braces) for `domains` and `domain show`. */
void xdom_json(buf_t *b, const domain_t *d, int is_default);

#endif

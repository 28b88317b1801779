/* XEP-0199 ping, answered by the server for itself and for an account's bare JID (§4.3:
 * the server answers on behalf of the account; clients use it as a keepalive). */
#include "router/module.h"

static void pong(mod_iq_ctx_t *c) { mod_iq_result(c, NULL); }

static const mod_iq_t iqs[] = {
    {NS_PING, "ping", MOD_GET, MOD_AT_SERVER | MOD_AT_ACCOUNT, MOD_ANYONE, pong},
    {0},
};
static const char *const features[] = {NS_PING, NULL};

const module_t mod_ping = {
    .name = "ping",
    .server_features = features,
    .account_features = features,
    .iqs = iqs,
};

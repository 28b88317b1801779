/* XEP-0092 software version of the server. */
#include "router/module.h"

#include <string.h>

#include "common/version.h"

static void version(mod_iq_ctx_t *c) {
  arena_t *a = &c->w->arena;
  xnode_t *q = xnode_new(a, "query", NS_VERSION);
  xnode_add_text(a, xnode_add(a, q, "name", NS_VERSION), "xmppd", 5);
  xnode_add_text(a, xnode_add(a, q, "version", NS_VERSION), XMPPD_VERSION, strlen(XMPPD_VERSION));
  mod_iq_result(c, q);
}

static const mod_iq_t iqs[] = {
    {NS_VERSION, "query", MOD_GET, MOD_AT_SERVER, MOD_ANYONE, version},
    {0},
};
static const char *const features[] = {NS_VERSION, NULL};

const module_t mod_version = {
    .name = "version",
    .server_features = features,
    .iqs = iqs,
};

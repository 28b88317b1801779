/* XEP-0030 service discovery: disco#info and disco#items of the server and of an
 * account's bare JID, built from every module's table (router/module.h). An account's
 * info (identity account/registered, XEP-0030 registry) is given to the account itself
 * and to contacts subscribed to its presence, as Prosody and ejabberd do; clients read it
 * to find what the account's server offers on it (PEP, MAM). */
#include "router/module.h"

static void info(mod_iq_ctx_t *c, int account) {
  arena_t *a = &c->w->arena;
  xnode_t *q = xnode_new(a, "query", NS_DISCO_INFO);
  if (account) {
    xnode_t *id = xnode_add(a, q, "identity", NS_DISCO_INFO);
    xnode_set_attr(a, id, "category", "account");
    xnode_set_attr(a, id, "type", "registered");
  }
  /* the modules switched off on the domain asked about are not listed ([domain] disable) */
  uint64_t off = modules_disabled_for(c->to && *c->to ? c->to : c->from);
  for (size_t i = 0; i < nmodules; i++) {
    const module_t *m = modules[i];
    if (off & (1ULL << i)) continue;
    for (const mod_identity_t *d = account ? NULL : m->server_identities; d && d->category; d++) {
      xnode_t *id = xnode_add(a, q, "identity", NS_DISCO_INFO);
      xnode_set_attr(a, id, "category", d->category);
      xnode_set_attr(a, id, "type", d->type);
      if (d->name) xnode_set_attr(a, id, "name", d->name);
    }
  }
  for (size_t i = 0; i < nmodules; i++) {
    if (off & (1ULL << i)) continue;
    const char *const *f = account ? modules[i]->account_features : modules[i]->server_features;
    for (; f && *f; f++) xnode_set_attr(a, xnode_add(a, q, "feature", NS_DISCO_INFO), "var", *f);
  }
  mod_iq_result(c, q);
}

static void server_info(mod_iq_ctx_t *c) {
  if (xnode_attr(c->payload, "node")) {
    mod_iq_error(c, "cancel", "item-not-found"); /* no nodes here (XEP-0030 §3.1) */
    return;
  }
  info(c, 0);
}

static void account_info(mod_iq_ctx_t *c) {
  if (xnode_attr(c->payload, "node")) {
    mod_iq_error(c, "cancel", "item-not-found");
    return;
  }
  info(c, 1);
}

static void items(mod_iq_ctx_t *c) {
  mod_iq_result(c, xnode_new(&c->w->arena, "query", NS_DISCO_ITEMS));
}

static const mod_iq_t iqs[] = {
    {NS_DISCO_INFO, "query", MOD_GET, MOD_AT_SERVER, MOD_ANYONE, server_info},
    {NS_DISCO_INFO, "query", MOD_GET, MOD_AT_ACCOUNT, MOD_CONTACT, account_info},
    {NS_DISCO_ITEMS, "query", MOD_GET, MOD_AT_SERVER, MOD_ANYONE, items},
    {NS_DISCO_ITEMS, "query", MOD_GET, MOD_AT_ACCOUNT, MOD_CONTACT, items},
    {0},
};
static const mod_identity_t ids[] = {{"server", "im", "xmppd"}, {0}};
static const char *const features[] = {NS_DISCO_INFO, NS_DISCO_ITEMS, NULL};

const module_t mod_disco = {
    .name = "disco",
    .server_identities = ids,
    .server_features = features,
    .account_features = features,
    .iqs = iqs,
};

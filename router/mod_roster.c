/* RFC 6121 §2 roster management: the roster IQ of an account's own session (roster.c
 * holds the roster and the subscription state machine). */
#include "router/module.h"

static void roster(mod_iq_ctx_t *c) {
  if (!c->s) {
    mod_iq_error(c, "cancel", "service-unavailable");
    return;
  }
  roster_iq(c->w, c->u, c->s, c->iq);
}

static const mod_iq_t iqs[] = {
    {NS_ROSTER, "query", MOD_GET | MOD_SET, MOD_AT_ACCOUNT, MOD_SELF, roster},
    {0},
};
static const char *const features[] = {NS_ROSTER, NULL};

const module_t mod_roster = {
    .name = "roster",
    .server_features = features,
    .iqs = iqs,
};

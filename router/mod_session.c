/* RFC 3921 §3 session establishment: a no-op kept for old clients (RFC 6121 drops it;
 * the stream feature says <optional/>). */
#include "router/module.h"

static void session(mod_iq_ctx_t *c) { mod_iq_result(c, NULL); }

static const mod_iq_t iqs[] = {
    {NS_SESSION, "session", MOD_SET, MOD_AT_SERVER | MOD_AT_ACCOUNT, MOD_SELF, session},
    {0},
};

const module_t mod_session = {
    .name = "session",
    .iqs = iqs,
};

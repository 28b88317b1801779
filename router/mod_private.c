/* XEP-0049 private XML storage: an account stores elements on its server and reads them
 * back; nobody else can (§3: "MUST NOT allow any entity other than an authorized
 * resource of the user"). Each element is one document (store_doc_*, kind "private")
 * keyed by its name and namespace ("NAME NS": a name holds no space), so bookmarks
 * (<storage xmlns='storage:bookmarks'/>) and roster notes
 * (<storage xmlns='storage:rosternotes'/>) are separate.
 *  - another account's storage: <service-unavailable/> (§2.3: it or <forbidden/>; it is
 *    what an account that does not exist gets, so nothing is learnt);
 *  - no child element in <query/>: <not-acceptable/> (§2.3);
 *  - a get naming more than one element ("a client MUST NOT query for more than one
 *    namespace"): <bad-request/>;
 *  - a child in no namespace, or in jabber:iq:private (a child written without its own
 *    xmlns), jabber:client or jabber:server: <not-acceptable/> (§2.3 lets a server
 *    refuse reserved namespaces; these would be stored stanza content or query parts);
 *  - a set storing more than limits.max_private_elements elements, or one whose XML is
 *    over limits.max_doc_bytes: <not-acceptable/>, nothing stored; over the account's
 *    budget (limits.max_account_doc_bytes): <not-allowed/>. Every element of a set is
 *    checked before any is written; the writes of a set of several are not one
 *    transaction (a budget reached half-way keeps the first ones; the error says so).
 * A get of an element never stored gets it back empty, as sent (the common practice). */
#include "router/module.h"

#include <string.h>

#include "common/err.h"

#define NS_PRIVATE "jabber:iq:private"
#define KIND "private"

static int reserved(const char *ns) {
  return !*ns || !strcmp(ns, NS_PRIVATE) || !strcmp(ns, NS_CLIENT) || !strcmp(ns, "jabber:server");
}

static char *key_of(worker_t *w, const xnode_t *el) {
  size_t ln = strlen(el->name), ls = strlen(el->ns);
  char *k = arena_alloc(&w->arena, ln + 1 + ls + 1);
  memcpy(k, el->name, ln);
  k[ln] = ' ';
  memcpy(k + ln + 1, el->ns, ls + 1);
  return k;
}

static void get(mod_iq_ctx_t *c) {
  worker_t *w = c->w;
  size_t n = xnode_count_elems(c->payload);
  if (n != 1) {
    mod_iq_error(c, "modify", n ? "bad-request" : "not-acceptable");
    return;
  }
  xnode_t *want = xnode_first_elem(c->payload);
  if (reserved(want->ns)) {
    mod_iq_error(c, "modify", "not-acceptable");
    return;
  }
  int rc;
  xnode_t *el = mod_doc_get(w, c->u->bare, KIND, key_of(w, want), &rc);
  if (rc == XMPP_ENOENT) el = xnode_new(&w->arena, want->name, want->ns);
  else if (rc) {
    mod_iq_error(c, "wait", "internal-server-error");
    return;
  }
  xnode_t *q = xnode_new(&w->arena, "query", NS_PRIVATE);
  xnode_append(q, el);
  mod_iq_result(c, q);
}

static void set(mod_iq_ctx_t *c) {
  worker_t *w = c->w;
  size_t n = xnode_count_elems(c->payload);
  if (!n || n > (size_t)w->cfg->max_private_elements) {
    mod_iq_error(c, "modify", "not-acceptable");
    return;
  }
  for (xnode_t *el = xnode_first_elem(c->payload); el; el = xnode_next_elem(el))
    if (reserved(el->ns) || mod_xml_len(el) > (size_t)w->cfg->max_doc_bytes) {
      mod_iq_error(c, "modify", "not-acceptable");
      return;
    }
  for (xnode_t *el = xnode_first_elem(c->payload); el; el = xnode_next_elem(el)) {
    int rc = mod_doc_put(w, c->u->bare, KIND, key_of(w, el), el);
    if (rc) {
      mod_iq_store_error(c, rc);
      return;
    }
  }
  mod_iq_result(c, NULL);
}

static const mod_iq_t iqs[] = {
    {NS_PRIVATE, "query", MOD_GET, MOD_AT_ACCOUNT, MOD_SELF, get},
    {NS_PRIVATE, "query", MOD_SET, MOD_AT_ACCOUNT, MOD_SELF, set},
    {0},
};
static const char *const features[] = {NS_PRIVATE, NULL};

const module_t mod_private = {
    .name = "private",
    .server_features = features,
    .iqs = iqs,
};

/* IQs addressed to the server itself: service discovery (XEP-0030), ping (XEP-0199),
 * software version (XEP-0092). Anything else asked of the server gets
 * <service-unavailable/> (RFC 6120 §8.4); results and errors are absorbed. */
#include "router/router_internal.h"

#include <string.h>

#include "common/version.h"

static const char *FEATURES[] = {
    NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING, NS_VERSION, NS_ROSTER, NS_OFFLINE, NS_DELAY, NULL,
};

void server_iq(worker_t *w, session_t *s, xnode_t *iq) {
  arena_t *a = &w->arena;
  const char *type = xnode_attr(iq, "type");
  if (strcmp(type, "get") && strcmp(type, "set")) return;
  xnode_t *q = xnode_first_elem(iq);
  xnode_t *res = xnode_new(a, "iq", NS_CLIENT);
  xnode_set_attr(a, res, "type", "result");
  xnode_set_attr(a, res, "id", xnode_attr(iq, "id"));
  int get = !strcmp(type, "get");
  if (get && !strcmp(q->name, "query") && !strcmp(q->ns, NS_DISCO_INFO) && !xnode_attr(q, "node")) {
    xnode_t *r = xnode_add(a, res, "query", NS_DISCO_INFO);
    xnode_t *id = xnode_add(a, r, "identity", NS_DISCO_INFO);
    xnode_set_attr(a, id, "category", "server");
    xnode_set_attr(a, id, "type", "im");
    xnode_set_attr(a, id, "name", "xmppd");
    for (int i = 0; FEATURES[i]; i++) xnode_set_attr(a, xnode_add(a, r, "feature", NS_DISCO_INFO), "var", FEATURES[i]);
  } else if (get && !strcmp(q->name, "query") && !strcmp(q->ns, NS_DISCO_ITEMS)) {
    xnode_add(a, res, "query", NS_DISCO_ITEMS);
  } else if (get && !strcmp(q->name, "ping") && !strcmp(q->ns, NS_PING)) {
    /* empty result */
  } else if (get && !strcmp(q->name, "query") && !strcmp(q->ns, NS_VERSION)) {
    xnode_t *r = xnode_add(a, res, "query", NS_VERSION);
    xnode_add_text(a, xnode_add(a, r, "name", NS_VERSION), "xmppd", 5);
    xnode_add_text(a, xnode_add(a, r, "version", NS_VERSION), XMPPD_VERSION, strlen(XMPPD_VERSION));
  } else if (!get && !strcmp(q->name, "session") && !strcmp(q->ns, NS_SESSION)) {
    /* RFC 3921 session: a no-op */
  } else {
    w_error(w, s->full, w->cfg->domain, iq, "cancel", "service-unavailable");
    return;
  }
  w_deliver(w, s, w->cfg->domain, s->full, res);
}

/* Inbound routing of messages and IQs to a local account (RFC 6121 §8.5).
 *
 * message to a bare JID (or to a full JID whose resource is not online, which is then
 * treated as bare, §8.5.3.2.1):
 *   normal, chat -> the available resources of highest non-negative priority (all of
 *                   them on a tie), else offline storage (XEP-0160), else an error;
 *   headline     -> every available resource of non-negative priority, else dropped;
 *   groupchat    -> <service-unavailable/> (no MUC here);
 *   error        -> dropped when it cannot be delivered.
 * message to an online full JID -> that resource.
 * Then HOOK_MESSAGE_DELIVERED tells the modules which sessions got it (XEP-0280 copies
 * it to the others), unless the sender got an error instead.
 * No such account -> <service-unavailable/> (§8.5.1), hiding whether it exists.
 * IQ to a full JID -> that resource if online, else <service-unavailable/>; IQ to a bare
 * JID is answered by the server on the account's behalf, by the module that handles its
 * namespace there (router/module.h: disco, ping, ...), else <service-unavailable/>. */
#include "router/module.h"

#include <string.h>

#include "common/err.h"

static int same_addr(const bus_addr_t *a, const bus_addr_t *b) {
  return b && bus_addr_eq(a, b);
}

/* The delivery rules have run and the sender gets no error: the modules see which
 * sessions got the message (XEP-0280 copies it to the others). */
static void delivered(worker_t *w, user_t *u, const char *from, const char *to, xnode_t *st,
                      session_t *const *got, size_t ngot, const bus_addr_t *skip) {
  mod_event_t e = {.w = w, .u = u, .from = from, .to = to, .st = st, .skip = skip, .got = got, .ngot = ngot};
  modules_hook(HOOK_MESSAGE_DELIVERED, &e);
}

void route_message_inbound(worker_t *w, const char *from, const char *to, xnode_t *st, const bus_addr_t *skip) {
  user_t *u = user_get(w, w_bare(w, to));
  const char *type = xnode_attr(st, "type");
  if (!type) type = "normal";
  int is_error = !strcmp(type, "error");
  if (!user_exists(w, u)) {
    w_error(w, from, to, st, "cancel", "service-unavailable");
    return;
  }
  if (strchr(to, '/')) {
    session_t *s = user_session(u, to);
    if (s && !same_addr(&s->at, skip)) {
      w_deliver(w, s, from, to, st);
      delivered(w, u, from, to, st, &s, 1, skip);
      return;
    }
    if (!strcmp(type, "groupchat")) {
      w_error(w, from, to, st, "cancel", "service-unavailable");
      return;
    }
    if (!strcmp(type, "headline") || is_error) {
      delivered(w, u, from, to, st, NULL, 0, skip);
      return;
    }
  }
  if (!strcmp(type, "groupchat")) {
    w_error(w, from, to, st, "cancel", "service-unavailable");
    return;
  }
  int best = -1;
  size_t n = 0;
  for (session_t *s = u->sessions; s; s = s->next, n++)
    if (s->available && s->priority >= 0 && !same_addr(&s->at, skip) && s->priority > best) best = s->priority;
  if (best >= 0) {
    session_t **got = arena_alloc(&w->arena, n * sizeof *got); /* n <= limits.max_resources */
    size_t ngot = 0;
    for (session_t *s = u->sessions; s; s = s->next) {
      if (!s->available || s->priority < 0 || same_addr(&s->at, skip)) continue;
      if (!strcmp(type, "headline") || s->priority == best) {
        w_deliver(w, s, from, s->full, st);
        got[ngot++] = s;
      }
    }
    delivered(w, u, from, to, st, got, ngot, skip);
    return;
  }
  if (!(!strcmp(type, "headline") || is_error) && offline_store(w, from, u->bare, st) != 0) {
    w_error(w, from, to, st, "cancel", "service-unavailable");
    return;
  }
  delivered(w, u, from, to, st, NULL, 0, skip);
}

void route_iq_inbound(worker_t *w, const char *from, const char *to, xnode_t *st) {
  user_t *u = user_get(w, w_bare(w, to));
  int full = strchr(to, '/') != NULL;
  if (full) {
    session_t *s = user_session(u, to);
    if (s) {
      w_deliver(w, s, from, to, st);
      return;
    }
  }
  if (!user_exists(w, u)) { /* §8.5.1: no such account; an error or result is dropped */
    const char *type = xnode_attr(st, "type");
    if (type && (!strcmp(type, "get") || !strcmp(type, "set"))) w_error(w, from, to, st, "cancel", "service-unavailable");
    return;
  }
  /* answered by the server on the account's behalf (§8.5.2.1.3 bare; §8.5.3.2.2 full:
   * no module takes those, so <service-unavailable/>) */
  modules_iq(w, full ? MOD_AT_FULL : MOD_AT_ACCOUNT, u, NULL, from, to, st);
}

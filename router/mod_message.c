/* Messages to a local account (RFC 6121 §8.5): the module at the end of
 * HOOK_MESSAGE_IN, which delivers every message the modules before it let through.
 *
 * message to a bare JID (or to a full JID whose resource is not online, which is then
 * treated as bare, §8.5.3.2.1):
 *   normal, chat -> the available resources of highest non-negative priority (all of
 *                   them on a tie), else offline storage (HOOK_MESSAGE_OFFLINE:
 *                   mod_offline, XEP-0160), else an error;
 *   headline     -> every available resource of non-negative priority, else dropped;
 *   groupchat    -> <service-unavailable/> (no MUC here);
 *   error        -> dropped when it cannot be delivered.
 * message to an online full JID -> that resource.
 * Then HOOK_MESSAGE_DELIVERED tells the modules which sessions got it (XEP-0280 copies
 * it to the others), unless the sender got an error instead.
 * No such account -> <service-unavailable/> (§8.5.1), hiding whether it exists.
 * The hot path: the type is read once, nothing is allocated but the list of sessions
 * that got it (in the frame arena). */
#include "router/module.h"

#include <string.h>

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

/* No resource takes it: a module may store it (mod_offline); 1 when one did. */
static int stored(worker_t *w, user_t *u, const char *from, xnode_t *st) {
  mod_event_t e = {.w = w, .u = u, .from = from, .to = u->bare, .st = st};
  return modules_hook(HOOK_MESSAGE_OFFLINE, &e) == MOD_STOP;
}

static void route_message_inbound(worker_t *w, user_t *u, const char *from, const char *to, xnode_t *st,
                                  const bus_addr_t *skip) {
  const char *type = xnode_attr(st, "type");
  if (!type) type = "normal";
  int is_error = !strcmp(type, "error"), headline = -1; /* read when needed */
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
    headline = !strcmp(type, "headline");
    if (headline || is_error) {
      delivered(w, u, from, to, st, NULL, 0, skip);
      return;
    }
  }
  if (!strcmp(type, "groupchat")) {
    w_error(w, from, to, st, "cancel", "service-unavailable");
    return;
  }
  if (headline < 0) headline = !strcmp(type, "headline");
  int best = -1;
  size_t n = 0;
  for (session_t *s = u->sessions; s; s = s->next, n++)
    if (s->available && s->priority >= 0 && !same_addr(&s->at, skip) && s->priority > best) best = s->priority;
  if (best >= 0) {
    session_t **got = arena_alloc(&w->arena, n * sizeof *got); /* n <= limits.max_resources */
    size_t ngot = 0;
    for (session_t *s = u->sessions; s; s = s->next) {
      if (!s->available || s->priority < 0 || same_addr(&s->at, skip)) continue;
      if (headline || s->priority == best) {
        w_deliver(w, s, from, s->full, st);
        got[ngot++] = s;
      }
    }
    delivered(w, u, from, to, st, got, ngot, skip);
    return;
  }
  if (!(headline || is_error) && !stored(w, u, from, st)) {
    w_error(w, from, to, st, "cancel", "service-unavailable");
    return;
  }
  delivered(w, u, from, to, st, NULL, 0, skip);
}

static int message_in(mod_event_t *e) {
  route_message_inbound(e->w, e->u, e->from, e->to, e->st, e->skip);
  return MOD_STOP;
}

const module_t mod_message = {
    .name = "message",
    .hooks = {[HOOK_MESSAGE_IN] = message_in},
};

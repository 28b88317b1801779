/* XEP-0280 Message Carbons (1.0.1), with the XEP-0334 <no-copy/> hint.
 *
 * A session turns carbons on or off with an IQ set <enable/> or <disable/> (§4, §5),
 * sent with no 'to', to its own bare JID or to the server; the answer is a result, also
 * when it was already on or off (§10.1). The state is the session's (mod_session_state)
 * and ends with it.
 *
 * Copies, to the account's carbons-enabled sessions only, each wrapped as XEP-0297
 * forwards: <message from='BARE' to='FULL' type='T'><sent|received xmlns='urn:xmpp:carbons:2'>
 * <forwarded xmlns='urn:xmpp:forward:0'><message from=... to=...>...</message></forwarded>
 * </sent|received></message> (§7 received, §8 sent):
 *  - sent (HOOK_MESSAGE_OUT, the sender's shard): to every other session of the
 *    sender; not to the sending one, which has it;
 *  - received (HOOK_MESSAGE_DELIVERED, the recipient's shard): to every session the
 *    RFC 6121 §8.5 rules did not deliver it to: a message to the bare JID written to the
 *    resources of highest priority copies to the others; one to a full JID copies to the
 *    others; one stored offline copies to the sessions that are bound but not available
 *    or of negative priority.
 * Both copies are local: an account's sessions all live on its shard's worker, in a
 * cluster too (router/worker.c), so a copy is one DELIVER to an edge, never a hop.
 *
 * Eligible messages (§6): type chat; type normal with a <body/>; any other type but
 * groupchat and error carrying chat states (XEP-0085), receipts (XEP-0184) or markers
 * (XEP-0333). Never copied: errors (§6 allows copying the errors of eligible messages but
 * only with tracking, which we do not do), groupchat (§6, MUC), a message carrying
 * <private xmlns='urn:xmpp:carbons:2'/> (§9: copied neither by the sender's server nor by
 * the recipient's, which removes the element before delivery) or <no-copy
 * xmlns='urn:xmpp:hints'/> (XEP-0334 §4.2), and a copy itself (anything with a <sent/> or
 * <received/> of this namespace: no loops).
 *
 * Choices the XEP leaves open:
 *  - A message to the sender's own account makes no sent copies: the received copies
 *    reach the other sessions once, and not the sending one.
 *  - Messages delivered later from offline storage are not copied: when one was stored,
 *    no resource of non-negative priority was available, and the carbons-enabled
 *    sessions online then got their received copy at that moment.
 *  - A bounced message (its connection had gone) routed again makes no new copies: the
 *    first pass made them. A bounced copy is dropped: the other sessions have the
 *    message or their own copy, and a copy is never stored offline. */
#include "router/module.h"

#include <string.h>

#include "common/alloc.h"

#define NS_CARBONS "urn:xmpp:carbons:2"
#define NS_FORWARD "urn:xmpp:forward:0"
#define NS_HINTS "urn:xmpp:hints"
#define NS_CHATSTATES "http://jabber.org/protocol/chatstates"
#define NS_RECEIPTS "urn:xmpp:receipts"
#define NS_MARKERS "urn:xmpp:chat-markers:0"

extern const module_t mod_carbons;

static const char on_mark; /* a session's slot points here while its carbons are on */

static int enabled(const session_t *s) { return mod_session_get(s, &mod_carbons) != NULL; }

/* Per worker: the message of the frame being handled whose <private/> was removed at
 * HOOK_MESSAGE_IN, so that HOOK_MESSAGE_DELIVERED (which follows in the same frame,
 * router/worker.c handle_route) still makes no copy of it. */
typedef struct carbons_worker {
  const xnode_t *private_st;
} carbons_worker_t;

static void *worker_init(worker_t *w) {
  (void)w;
  return xcalloc(1, sizeof(carbons_worker_t));
}

static void worker_free(worker_t *w, void *state) {
  (void)w;
  xfree(state);
}

static int is_copy(const xnode_t *c) {
  return !strcmp(c->ns, NS_CARBONS) && (!strcmp(c->name, "sent") || !strcmp(c->name, "received"));
}

/* §6, §9: one pass over the message's children (bounded by limits.max_stanza_bytes). */
static int eligible(const xnode_t *st) {
  const char *type = xnode_attr(st, "type");
  if (!type) type = "normal";
  if (!strcmp(type, "groupchat") || !strcmp(type, "error")) return 0;
  int normal = !strcmp(type, "normal");
  int im = !strcmp(type, "chat");
  for (const xnode_t *c = xnode_first_elem(st); c; c = xnode_next_elem(c)) {
    if (!strcmp(c->ns, NS_CARBONS) && !strcmp(c->name, "private")) return 0;
    if (!strcmp(c->ns, NS_HINTS) && !strcmp(c->name, "no-copy")) return 0;
    if (is_copy(c)) return 0;
    if (normal && !strcmp(c->name, "body") && !strcmp(c->ns, NS_CLIENT)) im = 1;
    else if (!strcmp(c->ns, NS_CHATSTATES) || !strcmp(c->ns, NS_RECEIPTS) || !strcmp(c->ns, NS_MARKERS)) im = 1;
  }
  return im;
}

/* The copy: <message type=T><DIR><forwarded><message from to ...>children</message>. The
 * inner message shares st's attribute strings and children (the frame's arena holds
 * them until the copies are encoded); only its attribute array is new. */
static xnode_t *wrap(worker_t *w, const char *dir, const xnode_t *st, const char *from, const char *to) {
  arena_t *a = &w->arena;
  xnode_t *m = xnode_new(a, "message", NS_CLIENT);
  const char *type = xnode_attr(st, "type");
  if (type) xnode_set_attr(a, m, "type", type); /* §7, §8: the same type */
  xnode_t *fw = xnode_add(a, xnode_add(a, m, dir, NS_CARBONS), "forwarded", NS_FORWARD);
  xnode_t *in = xnode_new(a, "message", st->ns);
  const char **at = arena_alloc(a, 2 * ((size_t)st->nattrs + 2) * sizeof *at);
  uint32_t n = 0;
  for (uint32_t i = 0; i < st->nattrs; i++) {
    const char *k = st->attrs[2 * i];
    if (!strcmp(k, "from") || !strcmp(k, "to")) continue; /* the frame's addresses are the true ones */
    at[2 * n] = k;
    at[2 * n + 1] = st->attrs[2 * i + 1];
    n++;
  }
  at[2 * n] = "from";
  at[2 * n + 1] = from;
  n++;
  if (to && *to) {
    at[2 * n] = "to";
    at[2 * n + 1] = to;
    n++;
  }
  in->attrs = at;
  in->nattrs = in->attr_cap = n;
  in->children = st->children;
  in->last = st->last;
  xnode_append(fw, in);
  return m;
}

static void send_copies(worker_t *w, user_t *u, const xnode_t *copy, const session_t *except,
                        session_t *const *got, size_t ngot) {
  size_t j = 0;
  for (session_t *s = u->sessions; s; s = s->next) {
    if (j < ngot && got[j] == s) { /* got lists sessions in u->sessions order */
      j++;
      continue;
    }
    if (s != except && enabled(s)) w_deliver(w, s, u->bare, s->full, copy);
  }
}

/* Is there a session that would take a copy? Checked first: it costs no look at the
 * message, so an account without carbons pays one walk of its sessions. */
static int anyone(user_t *u, const session_t *except, session_t *const *got, size_t ngot) {
  size_t j = 0;
  for (session_t *s = u->sessions; s; s = s->next) {
    if (j < ngot && got[j] == s) {
      j++;
      continue;
    }
    if (s != except && enabled(s)) return 1;
  }
  return 0;
}

static int message_out(mod_event_t *e) {
  if (!anyone(e->u, e->s, NULL, 0) || !strcmp(w_bare(e->w, e->to), e->u->bare) || !eligible(e->st)) return MOD_OK;
  send_copies(e->w, e->u, wrap(e->w, "sent", e->st, e->from, e->to), e->s, NULL, 0);
  return MOD_OK;
}

static int message_delivered(mod_event_t *e) {
  carbons_worker_t *cw = mod_worker_state(e->w, &mod_carbons);
  int is_private = cw->private_st == e->st;
  cw->private_st = NULL;
  /* private; or a bounce routed again: the first pass made the copies */
  if (is_private || e->skip) return MOD_OK;
  /* a message to one's own account: the sending session has it */
  const session_t *sender = strcmp(w_bare(e->w, e->from), e->u->bare) ? NULL : user_session(e->u, e->from);
  if (!anyone(e->u, sender, e->got, e->ngot) || !eligible(e->st)) return MOD_OK;
  send_copies(e->w, e->u, wrap(e->w, "received", e->st, e->from, e->to), sender, e->got, e->ngot);
  return MOD_OK;
}

/* Takes <private xmlns='urn:xmpp:carbons:2'/> out of st (§9: the recipient's server
 * removes it); 1 when there was one. */
static int strip_private(worker_t *w, xnode_t *st) {
  int found = 0;
  xnode_t *prev = NULL;
  for (xnode_t *c = st->children; c; c = c->next) {
    if (c->name && !strcmp(c->name, "private") && !strcmp(c->ns, NS_CARBONS)) {
      if (prev) prev->next = c->next;
      else st->children = c->next;
      if (st->last == c) st->last = prev;
      found = 1;
      continue; /* prev stays */
    }
    prev = c;
  }
  if (found) w->frame_tree = NULL; /* changed: encoded again when passed on */
  return found;
}

/* At the recipient's shard, before the delivery rules:
 *  - a copy that came back (its connection had gone) is dropped, never routed to another
 *    session as a new message or stored offline;
 *  - a private message loses its <private/>, and is remembered as not to be copied. */
static int message_in(mod_event_t *e) {
  carbons_worker_t *cw = mod_worker_state(e->w, &mod_carbons);
  cw->private_st = NULL;
  if (e->skip && !strcmp(e->from, e->u->bare)) {
    for (const xnode_t *c = xnode_first_elem(e->st); c; c = xnode_next_elem(c))
      if (is_copy(c)) return MOD_STOP;
  }
  if (strip_private(e->w, e->st)) cw->private_st = e->st;
  return MOD_OK;
}

static void toggle(mod_iq_ctx_t *c) {
  const char *type = xnode_attr(c->iq, "type");
  int on = !strcmp(c->payload->name, "enable");
  if (!on && strcmp(c->payload->name, "disable")) {
    mod_iq_error(c, "modify", "bad-request");
    return;
  }
  if (strcmp(type, "set") || xnode_first_elem(c->payload)) { /* §11: both are empty, and set */
    mod_iq_error(c, "modify", "bad-request");
    return;
  }
  if (!c->s) { /* §4.1, §5.1: only a session of this server, for itself */
    mod_iq_error(c, "cancel", "not-allowed");
    return;
  }
  if (on) *mod_session_state(c->s, &mod_carbons) = (void *)&on_mark;
  else if (enabled(c->s)) *mod_session_state(c->s, &mod_carbons) = NULL;
  mod_iq_result(c, NULL);
}

static const mod_iq_t iqs[] = {
    {NS_CARBONS, NULL, MOD_GET | MOD_SET, MOD_AT_SERVER | MOD_AT_ACCOUNT, MOD_SELF, toggle},
    {0},
};
static const char *const features[] = {NS_CARBONS, NULL};

const module_t mod_carbons = {
    .name = "carbons",
    .server_features = features,
    .account_features = features,
    .iqs = iqs,
    .worker_init = worker_init,
    .worker_free = worker_free,
    .hooks =
        {
            [HOOK_MESSAGE_OUT] = message_out,
            [HOOK_MESSAGE_IN] = message_in,
            [HOOK_MESSAGE_DELIVERED] = message_delivered,
        },
};

/* XEP-0191 Blocking Command: an account's list of blocked JIDs, and what it stops.
 *
 * The list is the account's own (not a privacy list, not the roster): in the store one
 * row per JID (store_block_*), and while the account has a session, in its user_t slot
 * (mod_user_state), read once on first need after log-in: a hash set of the normalised
 * JIDs, the bytes a blocklist get returns, and how many are domains. Bounded: at most
 * limits.max_blocklist JIDs, and half of limits.max_pending_out bytes so that a get never
 * disconnects its owner. A block that would pass either gets <not-acceptable/> and adds
 * nothing: XEP-0191 names no condition for it; RFC 6120 §8.3.3.12 fits ("does not meet
 * criteria defined by the recipient or server"), and the request succeeds once modified
 * (fewer JIDs, or some unblocked), which waiting would not change (<resource-constraint/>
 * says wait). Over max_blocklist items in one request are refused before any JID is
 * parsed.
 *
 * Matching (XEP-0191 §4 "JID Matching", as XEP-0016 §2.1): an address is blocked when the
 * list holds its full JID, its bare JID, its domain/resource, its domain, or a parent of
 * its domain ("the domain itself matches, as does any user@domain, domain/resource, or
 * address containing a subdomain"). Those forms of the address are looked up in the
 * set: at most four hash look-ups, plus one per label of the domain when the list holds
 * a domain, whatever the list's size. An account without a session has no list in
 * memory: one store call asks for all the forms at once (store_block_match), so a
 * message to an offline user costs one indexed read, never a list load. A store that
 * cannot answer counts as blocked (the stanza is refused, never let through).
 *
 * What is stopped (§3.3), on the user's own shard both ways:
 *  - inbound from a blocked JID (HOOK_MESSAGE_IN, _PRESENCE_IN, _IQ_IN): presence of any
 *    kind (subscriptions and probes included) dropped without a word; a message, or an
 *    IQ get/set, answered <service-unavailable/> so the user looks offline; IQ results
 *    and errors dropped. A message to an offline user is thus never stored.
 *  - outbound to a blocked JID (HOOK_MESSAGE_OUT, _PRESENCE_OUT with a 'to', _IQ_OUT):
 *    not routed; <not-acceptable/> with <blocked xmlns='urn:xmpp:blocking:errors'/>,
 *    written straight to the sending session (routed, it would come from the blocked JID
 *    and be stopped as inbound). Errors and IQ results are dropped.
 *  - the user's presence broadcasts, probes and unavailable-to-directed skip blocked JIDs
 *    (HOOK_PRESENCE_BROADCAST). A block sends unavailable to the newly blocked JIDs that
 *    could see the user (subscription 'from'/'both' with an available resource, or
 *    directed presence); an unblock sends the current presence to the contacts it frees
 *    (§3.3, §3.4).
 * The account's own JIDs are never blocked. Blocks and unblocks are pushed to every
 * resource that asked for the list (§3.3-§3.5). */
#include "router/module.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/jid.h"
#include "common/log.h"

#define NS_BLOCKING "urn:xmpp:blocking"
#define NS_BLOCKING_ERRORS "urn:xmpp:blocking:errors"

extern const module_t mod_blocking;

typedef struct blist {
  strmap_t *jids;  /* normalised JID -> (void *)1 */
  size_t bytes;    /* of their <item jid='...'/> in a blocklist get */
  size_t ndomains; /* JIDs that are a domain (they match its subdomains too) */
} blist_t;

static int is_domain(const char *jid) { return !strchr(jid, '@') && !strchr(jid, '/'); }

static size_t item_bytes(const char *jid) {
  return sizeof "<item jid=''/>" - 1 + xml_escape_len(jid, strlen(jid), 1);
}

static void blist_add(blist_t *b, const char *jid) {
  if (strmap_put(b->jids, jid, (void *)1)) return;
  b->bytes += item_bytes(jid);
  b->ndomains += is_domain(jid);
}

static void blist_del(blist_t *b, const char *jid) {
  if (!strmap_del(b->jids, jid)) return;
  b->bytes -= item_bytes(jid);
  b->ndomains -= is_domain(jid);
}

static void blist_free(void *p) {
  blist_t *b = p;
  if (!b) return;
  strmap_free(b->jids, NULL);
  xfree(b);
}

static blist_t *blist_new(void) {
  blist_t *b = xcalloc(1, sizeof *b);
  b->jids = strmap_new();
  return b;
}

static void load_cb(const char *jid, void *ud) { blist_add(ud, jid); }

/* u's list in memory: read on first need while u has a session, kept with u. NULL when
 * u has no session (ask the store) or the store could not be read (tried again next
 * time). */
static blist_t *list_of(worker_t *w, user_t *u) {
  if (!u->sessions) return NULL;
  void **slot = mod_user_state(u, &mod_blocking);
  if (*slot) return *slot;
  blist_t *b = blist_new();
  int rc = store_block_load(w->store, u->bare, load_cb, b);
  if (rc != 0) {
    log_warn("blocking: cannot read the blocklist of %s (%d)", u->bare, rc);
    blist_free(b);
    return NULL;
  }
  *slot = b;
  return b;
}

/* The forms of a normalised JID an item may match, in the frame arena: the JID, its bare
 * JID, domain/resource and domain, and with parents every parent domain. Returns how
 * many are in *out. */
static size_t forms(arena_t *a, const char *jid, int parents, const char ***out) {
  size_t len = strlen(jid), bl = bus_bare_len(jid, len);
  const char *at = memchr(jid, '@', bl);
  const char *dom = at ? at + 1 : jid;
  size_t dl = bl - (size_t)(dom - jid), cap = 4;
  if (parents)
    for (size_t i = 0; i < dl; i++) cap += dom[i] == '.';
  const char **v = arena_alloc(a, cap * sizeof *v);
  size_t n = 0;
  v[n++] = jid;
  if (bl < len) v[n++] = arena_strndup(a, jid, bl); /* bare */
  if (at && bl < len) {                              /* domain/resource */
    char *dr = arena_alloc(a, dl + (len - bl) + 1);
    memcpy(dr, dom, dl);
    memcpy(dr + dl, jid + bl, len - bl + 1); /* "/resource" and the NUL */
    v[n++] = dr;
  }
  if (at) v[n++] = arena_strndup(a, dom, dl); /* domain */
  if (parents)
    for (size_t i = 0; i + 1 < dl; i++)
      if (dom[i] == '.') v[n++] = arena_strndup(a, dom + i + 1, dl - i - 1);
  *out = v;
  return n;
}

static int in_set(const strmap_t *set, const char *const *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (strmap_get(set, v[i])) return 1;
  return 0;
}

/* Whether set (of normalised JIDs, domains among them) matches jid. */
static int set_matches(worker_t *w, const strmap_t *set, int domains, const char *jid) {
  if (!strmap_count(set)) return 0;
  const char **v;
  size_t n = forms(&w->arena, jid, domains, &v);
  return in_set(set, v, n);
}

/* Whether u blocks jid (a normalised JID). */
static int is_blocked(worker_t *w, user_t *u, const char *jid) {
  if (!jid || !*jid) return 0;
  blist_t *b = list_of(w, u);
  if (b && !strmap_count(b->jids)) return 0;
  size_t bl = bus_bare_len(jid, strlen(jid));
  if (bl == strlen(u->bare) && !memcmp(jid, u->bare, bl)) return 0; /* its own */
  if (b) return set_matches(w, b->jids, b->ndomains > 0, jid);
  const char **v;
  size_t n = forms(&w->arena, jid, 1, &v);
  int rc = store_block_match(w->store, u->bare, v, n);
  if (rc < 0) {
    log_warn("blocking: cannot ask %s's blocklist about %s (%d): taken as blocked", u->bare, jid, rc);
    return 1;
  }
  return rc;
}

/* ---- the stanzas stopped ------------------------------------------------------------ */

static int type_is(const xnode_t *st, const char *t) {
  const char *type = xnode_attr(st, "type");
  return type && !strcmp(type, t);
}

/* Outbound to a blocked JID (§3.3): <not-acceptable/><blocked/>, from the blocked JID,
 * to the sending session itself. */
static int refuse_out(mod_event_t *e) {
  if (type_is(e->st, "error") || (!strcmp(e->st->name, "iq") && type_is(e->st, "result"))) return MOD_STOP;
  arena_t *a = &e->w->arena;
  xnode_t *err = stanza_error_reply(a, e->st, "cancel", "not-acceptable");
  if (!err || !e->s) return MOD_STOP;
  xnode_add(a, err->last, "blocked", NS_BLOCKING_ERRORS); /* last: the <error/> just added */
  w_deliver(e->w, e->s, e->to, e->s->full, err);
  return MOD_STOP;
}

/* The list is read when a session opens (the bind already needed the store), so that
 * the session's traffic never waits on it later: a storage outage after log-in does not
 * stop the chat of users who are online. */
static int session_open_cb(mod_event_t *e) {
  list_of(e->w, e->u);
  return MOD_OK;
}

static int out_cb(mod_event_t *e) {
  return e->to && *e->to && is_blocked(e->w, e->u, e->to) ? refuse_out(e) : MOD_OK;
}

/* Inbound from a blocked JID (§3.3): presence dropped without a word; a message or an IQ
 * get/set gets <service-unavailable/>; the rest is dropped. */
static int in_cb(mod_event_t *e) {
  if (!is_blocked(e->w, e->u, e->from)) return MOD_OK;
  int answer = !strcmp(e->st->name, "message") ||
               (!strcmp(e->st->name, "iq") && (type_is(e->st, "get") || type_is(e->st, "set")));
  if (answer) w_error(e->w, e->from, e->to, e->st, "cancel", "service-unavailable");
  return MOD_STOP;
}

/* To an account without a session, what is dropped unread anyway is not worth a store
 * read: a message error or headline (mod_message.c), an IQ result or error, presence
 * other than subscription stanzas (mod_presence.c). */
static int offline_in_cb(mod_event_t *e) {
  if (!e->u->sessions) {
    const xnode_t *st = e->st;
    int pres = !strcmp(st->name, "presence"), msg = !strcmp(st->name, "message");
    int dropped = pres ? !(type_is(st, "subscribe") || type_is(st, "subscribed") || type_is(st, "unsubscribe") ||
                           type_is(st, "unsubscribed"))
                  : msg ? type_is(st, "error") || type_is(st, "headline")
                        : !(type_is(st, "get") || type_is(st, "set"));
    if (dropped) return MOD_OK;
  }
  return in_cb(e);
}

static int broadcast_cb(mod_event_t *e) { return is_blocked(e->w, e->u, e->to) ? MOD_STOP : MOD_OK; }

/* ---- the list: get, block, unblock --------------------------------------------------- */

static void item_node(arena_t *a, xnode_t *parent, const char *jid) {
  xnode_set_attr(a, xnode_add(a, parent, "item", NS_BLOCKING), "jid", jid);
}

typedef struct {
  arena_t *a;
  xnode_t *parent;
} items_cb_t;

static void list_item_cb(const char *jid, void *v, void *ud) {
  (void)v;
  items_cb_t *x = ud;
  item_node(x->a, x->parent, jid);
}

/* Pushes <NAME xmlns='urn:xmpp:blocking'> with the n JIDs to every resource that asked
 * for the list (§3.3, §3.4, §3.5). */
static void push(worker_t *w, user_t *u, const char *name, const char *const *jids, size_t n) {
  arena_t *a = &w->arena;
  xnode_t *iq = xnode_new(a, "iq", NS_CLIENT);
  char id[40];
  snprintf(id, sizeof id, "block%d-%llu", w->index, (unsigned long long)++w->push_seq);
  xnode_set_attr(a, iq, "type", "set");
  xnode_set_attr(a, iq, "id", id);
  xnode_t *q = xnode_add(a, iq, name, NS_BLOCKING);
  for (size_t i = 0; i < n; i++) item_node(a, q, jids[i]);
  for (session_t *s = u->sessions; s; s = s->next)
    if (*mod_session_state(s, &mod_blocking)) w_deliver(w, s, NULL, s->full, iq);
}

static void get_list(mod_iq_ctx_t *c) {
  blist_t *b = c->s ? list_of(c->w, c->u) : NULL;
  if (!b) {
    mod_iq_error(c, c->s ? "wait" : "cancel", c->s ? "internal-server-error" : "service-unavailable");
    return;
  }
  *mod_session_state(c->s, &mod_blocking) = (void *)1; /* an interested resource */
  items_cb_t x = {&c->w->arena, xnode_new(&c->w->arena, "blocklist", NS_BLOCKING)};
  strmap_each(b->jids, list_item_cb, &x);
  mod_iq_result(c, x.parent);
}

/* The JIDs of a <block/> or <unblock/>, normalised, each once. */
typedef struct {
  const char **v; /* in the frame arena */
  size_t n;
  strmap_t *set;  /* the same JIDs */
} items_t;

static void items_free(items_t *it) { strmap_free(it->set, NULL); }

/* Reads p's <item jid=''/> children. NULL, or the error condition to answer: more than
 * limits.max_blocklist items <not-acceptable/> (counted first: no JID of such a request is
 * parsed), an item without a jid <bad-request/>, one that is not a JID <jid-malformed/>
 * (RFC 6120 §8.3.3.8). Other children are ignored. */
static const char *parse_items(worker_t *w, const xnode_t *p, items_t *it) {
  size_t count = 0, max = (size_t)w->cfg->max_blocklist;
  it->set = strmap_new();
  for (xnode_t *c = xnode_first_elem(p); c; c = xnode_next_elem(c))
    if (!strcmp(c->name, "item") && !strcmp(c->ns, NS_BLOCKING) && ++count > max) return "not-acceptable";
  it->v = arena_alloc(&w->arena, (count ? count : 1) * sizeof *it->v);
  for (xnode_t *c = xnode_first_elem(p); c; c = xnode_next_elem(c)) {
    if (strcmp(c->name, "item") || strcmp(c->ns, NS_BLOCKING)) continue;
    const char *s = xnode_attr(c, "jid");
    if (!s) return "bad-request";
    jid_t j;
    if (jid_parse(s, strlen(s), &j) != 0) return "jid-malformed";
    if (!strmap_get(it->set, j.full)) {
      strmap_put(it->set, j.full, (void *)1);
      it->v[it->n++] = arena_strdup(&w->arena, j.full);
    }
    jid_free(&j);
  }
  return NULL;
}

/* Refuses c's block or unblock without echoing its items (RFC 6120 §8.3.1 allows either):
 * the answer to a request of max_stanza_bytes stays a few bytes. */
static void refuse(mod_iq_ctx_t *c, const char *type, const char *cond) {
  c->payload->children = c->payload->last = NULL;
  c->w->frame_tree = NULL; /* the decoded tree changed (router/module.h) */
  mod_iq_error(c, type, cond);
}

/* The account's resources that can be written to about the list (nothing to do for an
 * IQ that did not come from one of its sessions: answered like an unknown request). */
static blist_t *setup(mod_iq_ctx_t *c, items_t *it) {
  if (!c->s) {
    mod_iq_error(c, "cancel", "service-unavailable");
    return NULL;
  }
  blist_t *b = list_of(c->w, c->u);
  if (!b) {
    mod_iq_error(c, "wait", "internal-server-error");
    return NULL;
  }
  const char *cond = parse_items(c->w, c->payload, it);
  if (cond) {
    refuse(c, "modify", cond);
    return NULL;
  }
  return b;
}

typedef struct {
  worker_t *w;
  user_t *u;
  const strmap_t *set;
  int domains;
  const char **hit; /* roster contacts matched, in the frame arena */
  size_t n;
} seen_t;

/* Roster contacts who see u's presence (subscription 'from'/'both') that set matches. */
static void seen_cb(const char *contact, void *v, void *ud) {
  seen_t *x = ud;
  ritem_t *it = v;
  if (it->sub != SUB_FROM && it->sub != SUB_BOTH) return;
  if (set_matches(x->w, x->set, x->domains, contact)) x->hit[x->n++] = contact;
}

static void contacts_matched(seen_t *x) {
  strmap_t *r = user_roster(x->w, x->u);
  x->hit = arena_alloc(&x->w->arena, (strmap_count(r) + 1) * sizeof *x->hit);
  strmap_each(r, seen_cb, x);
}

typedef struct {
  worker_t *w;
  user_t *u;
  session_t *s;
  const strmap_t *set;
  const xnode_t *p;
} directed_t;

static void directed_cb(const char *jid, void *v, void *ud) {
  (void)v;
  directed_t *x = ud;
  if (!set_matches(x->w, x->set, 1, jid)) return;
  if (x->s->available && mod_is_contact(x->w, x->u, jid)) return; /* told as a contact */
  w_route(x->w, x->s->full, jid, x->p, BUS_F_DIRECTED);
}

/* §3.3: the newly blocked JIDs (set) that could see u's presence get unavailable, from
 * each resource they could see. */
static void tell_unavailable(worker_t *w, user_t *u, const strmap_t *set) {
  if (!strmap_count(set)) return;
  xnode_t *p = xnode_new(&w->arena, "presence", NS_CLIENT);
  xnode_set_attr(&w->arena, p, "type", "unavailable");
  seen_t x = {w, u, set, 1, NULL, 0};
  contacts_matched(&x);
  for (session_t *s = u->sessions; s; s = s->next) {
    if (s->available)
      for (size_t i = 0; i < x.n; i++) w_route(w, s->full, x.hit[i], p, 0);
    strmap_t *jids = presence_directed(s);
    if (jids) {
      directed_t d = {w, u, s, set, p};
      strmap_each(jids, directed_cb, &d);
    }
  }
}

static void block(mod_iq_ctx_t *c) {
  worker_t *w = c->w;
  items_t it = {0};
  blist_t *b = setup(c, &it);
  if (!b) goto out;
  if (it.n == 0) { /* §3.3: at least one item */
    refuse(c, "modify", "bad-request");
    goto out;
  }
  size_t fresh = 0, bytes = 0;
  const char **v = arena_alloc(&w->arena, it.n * sizeof *v);
  for (size_t i = 0; i < it.n; i++) {
    if (strmap_get(b->jids, it.v[i])) {
      strmap_del(it.set, it.v[i]); /* it.set: the new ones only */
      continue;
    }
    v[fresh++] = it.v[i];
    bytes += item_bytes(it.v[i]);
  }
  size_t max = (size_t)w->cfg->max_blocklist, max_bytes = (size_t)w->cfg->max_pending_out / 2;
  if (strmap_count(b->jids) + fresh > max || b->bytes + bytes > max_bytes) {
    refuse(c, "modify", "not-acceptable");
    goto out;
  }
  int rc = fresh ? store_block_add(w->store, c->u->bare, v, fresh, (unsigned)max) : 0;
  if (rc) {
    log_warn("blocking: block by %s not stored (%d)", c->u->bare, rc);
    refuse(c, rc == XMPP_ELIMIT ? "modify" : "wait", rc == XMPP_ELIMIT ? "not-acceptable" : "internal-server-error");
    goto out;
  }
  for (size_t i = 0; i < fresh; i++) blist_add(b, v[i]);
  mod_iq_result(c, NULL);
  push(w, c->u, "block", it.v, it.n);
  tell_unavailable(w, c->u, it.set);
out:
  items_free(&it);
}

static void unblock(mod_iq_ctx_t *c) {
  worker_t *w = c->w;
  user_t *u = c->u;
  items_t it = {0};
  blist_t *b = setup(c, &it);
  if (!b) goto out;
  /* the JIDs really removed: all of them for an empty <unblock/> (§3.5) */
  strmap_t *gone = it.set;
  const char **v = arena_alloc(&w->arena, (it.n ? it.n : 1) * sizeof *v);
  size_t n = 0;
  if (it.n == 0) {
    gone = b->jids;
  } else {
    for (size_t i = 0; i < it.n; i++)
      if (strmap_get(b->jids, it.v[i])) v[n++] = it.v[i];
      else strmap_del(it.set, it.v[i]);
  }
  /* contacts they kept from u's presence (§3.4: told again once nothing blocks them) */
  seen_t x = {w, u, gone, 1, NULL, 0};
  contacts_matched(&x);
  int rc = it.n == 0 ? store_block_remove(w->store, u->bare, NULL, 0)
                     : n ? store_block_remove(w->store, u->bare, v, n) : 0;
  if (rc) {
    log_warn("blocking: unblock by %s not stored (%d)", u->bare, rc);
    refuse(c, "wait", "internal-server-error");
    goto out;
  }
  if (it.n == 0) {
    strmap_free(b->jids, NULL);
    b->jids = strmap_new();
    b->bytes = b->ndomains = 0;
  }
  for (size_t i = 0; i < n; i++) blist_del(b, v[i]);
  mod_iq_result(c, NULL);
  push(w, u, "unblock", it.v, it.n);
  for (size_t i = 0; i < x.n; i++)
    if (!set_matches(w, b->jids, b->ndomains > 0, x.hit[i])) presence_send_current(w, u, x.hit[i]);
out:
  items_free(&it);
}

static const mod_iq_t iqs[] = {
    {NS_BLOCKING, "blocklist", MOD_GET, MOD_AT_ACCOUNT, MOD_SELF, get_list},
    {NS_BLOCKING, "block", MOD_SET, MOD_AT_ACCOUNT, MOD_SELF, block},
    {NS_BLOCKING, "unblock", MOD_SET, MOD_AT_ACCOUNT, MOD_SELF, unblock},
    {0},
};
static const char *const features[] = {NS_BLOCKING, NULL};

const module_t mod_blocking = {
    .name = "blocking",
    .server_features = features,
    .account_features = features,
    .iqs = iqs,
    .hooks =
        {
            [HOOK_MESSAGE_OUT] = out_cb,
            [HOOK_PRESENCE_OUT] = out_cb, /* a broadcast has no 'to': per contact below */
            [HOOK_IQ_OUT] = out_cb,
            [HOOK_MESSAGE_IN] = offline_in_cb,
            [HOOK_PRESENCE_IN] = offline_in_cb,
            [HOOK_IQ_IN] = offline_in_cb,
            [HOOK_PRESENCE_BROADCAST] = broadcast_cb,
            [HOOK_SESSION_OPEN] = session_open_cb,
        },
    .user_free = blist_free,
};

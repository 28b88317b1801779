/* Rosters (RFC 6121 §2) and the subscription state machine (§3): the roster IQ of an
 * account's own session, the subscription stanzas mod_presence hands over
 * (HOOK_SUBSCRIPTION_OUT, HOOK_SUBSCRIPTION_IN), pending requests re-sent at initial
 * presence (HOOK_PRESENCE_INITIAL), and rosters read ahead for a batch's log-ins
 * (HOOK_BATCH_AHEAD; a bound session keeps its roster: HOOK_SESSION_OPEN).
 *
 * A user's roster is loaded from the store on first use and written through on every
 * change. Subscription states are none/to/from/both plus the two pending flags:
 * ask_out (we asked the contact: "none + pending out") and pending_in (the contact asked
 * us: "+ pending in"). An inbound request from someone not in the roster is kept as a
 * hidden item (sub none, pending_in, no name, no groups) which roster gets do not show
 * (§3.1.3: the contact is not added to the roster until approved).
 * Every change is pushed to the user's interested resources (§2.1.6).
 *
 * Roster versioning (§2.6): the store raises the account's roster version on every item
 * written or removed (hidden items too: a version may change with nothing shown changed,
 * which only costs the client a full roster). A get with ver='N' equal to the version
 * gets an empty result; any other ver (or '') gets the whole roster with the version
 * (§2.6.3 allows it instead of the changes since N); pushes carry the version they lead to.
 * Pre-approval (§3.4): 'subscribed' to a contact that has not asked and is not subscribed
 * sets the item's approved flag (created with subscription none when absent) and is not
 * routed; the contact's next 'subscribe' is then approved at once on the user's behalf;
 * 'unsubscribed' cancels it (not routed either: the contact never knew).
 *
 * What a client controls is capped (docs/security.md, "Client-controlled quantities"):
 * items per roster (limits.max_roster_items), <group/> elements per item, the bytes of a
 * name and of a group (§2.3.3: <not-acceptable/>), and the bytes of the roster a roster
 * get returns (limits.max_roster_bytes, in force at most half of max_pending_out: a
 * roster get can never disconnect its owner). Items are counted as item_cost says, kept
 * up to date in user_t.roster_bytes; only the owner's own stanzas can make the shown
 * roster grow (a contact's can only create hidden items, which a get does not show, or
 * shrink it), and those are checked against the cap.
 *
 * A subscription stanza to a user whose roster is not loaded (offline) reads and writes
 * only the item it concerns (store_roster_get, and store_roster_count for a new one), not
 * the roster: its cost does not grow with the roster. Each account's subscription
 * stanzas go through a token bucket (limits.subscription_rate). */
#include "router/module.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/jid.h"
#include "common/log.h"

void ritem_free(void *p) {
  ritem_t *it = p;
  if (!it) return;
  xfree(it->jid);
  xfree(it->name);
  for (size_t i = 0; i < it->ngroups; i++) xfree(it->groups[i]);
  xfree(it->groups);
  xfree(it);
}

extern const module_t mod_roster;

/* What the module keeps of an account in memory (its mod_user_state slot). */
typedef struct {
  strmap_t *roster;    /* contact bare -> ritem_t; NULL until loaded */
  size_t roster_bytes; /* what a roster get of roster returns, as item_cost counts it */
  strmap_t *some;      /* items read one by one while roster is NULL (a subscription
                          stanza to an offline user reads only its item) */
  double sub_tokens;   /* subscription stanzas the account may send now (limits.subscription_rate) */
  uint64_t sub_at;     /* loop time (ms) sub_tokens was last brought up to date; 0: never */
} ruser_t;

/* Per worker: bare -> roster read ahead for the batch being handled (roster_prefetch). */
typedef struct {
  strmap_t *prefetched;
} rworker_t;

static ruser_t *RU(user_t *u) {
  void **slot = mod_user_state(u, &mod_roster);
  if (!*slot) *slot = xcalloc(1, sizeof(ruser_t));
  return *slot;
}

static rworker_t *RW(worker_t *w) { return mod_worker_state(w, &mod_roster); }

/* s asked for the roster: an "interested resource" (RFC 6121 §2.1.6), marked in the
 * module's session slot. */
static int interested(const session_t *s) { return mod_session_get(s, &mod_roster) != NULL; }

static void ruser_free(void *state) {
  ruser_t *r = state;
  strmap_free(r->roster, ritem_free);
  strmap_free(r->some, ritem_free);
  xfree(r);
}

int roster_loaded(const user_t *u) {
  const ruser_t *r = mod_user_get(u, &mod_roster);
  return r && r->roster;
}

static int hidden(const ritem_t *it) {
  return it->sub == SUB_NONE && !it->ask_out && it->pending_in && !it->name && !it->ngroups;
}

/* Bytes of s once escaped in an attribute, every character that may need it counted as
 * the longest escape (&quot; &apos;: 6), so the count is never below what is written. */
static size_t esc_len(const char *s) {
  size_t n = 0;
  for (; *s; s++) n += strchr("&<>'\"\t\n\r", *s) ? 6 : 1; /* *s != 0: strchr finds no NUL */
  return n;
}

/* What one item costs in a roster get: <item jid='' subscription='both'
 * ask='subscribe' approved='true'></item> (72 bytes, the longest subscription value, the
 * ask and the approved attributes always counted, so subscription changes never change
 * the cost), the name
 * attribute ( name='': 8) and <group></group> (15) per group, plus the escaped text. */
static size_t item_cost(const char *jid, const char *name, char *const *groups, size_t ngroups) {
  size_t n = 72 + esc_len(jid);
  if (name) n += 8 + esc_len(name);
  for (size_t i = 0; i < ngroups; i++) n += 15 + esc_len(groups[i]);
  return n;
}

static size_t shown_cost(const ritem_t *it) {
  return hidden(it) ? 0 : item_cost(it->jid, it->name, it->groups, it->ngroups);
}

/* Whether changing it (NULL: a new item) into one that costs after would take the shown
 * roster past the cap in force (config_roster_bytes). The roster is loaded. */
static int over_bytes(worker_t *w, user_t *u, const ritem_t *it, size_t after) {
  size_t now = RU(u)->roster_bytes - (it ? it->counted : 0);
  return now + after > (size_t)config_roster_bytes(w->cfg);
}

static void count_cb(const char *k, void *v, void *ud) {
  (void)k;
  ritem_t *it = v;
  ruser_t *r = ud;
  it->counted = shown_cost(it);
  r->roster_bytes += it->counted;
}

/* u's roster is m from now on: its bytes are counted once, the items read one by one
 * before are dropped (every change to them is in the store, so in m too). */
static void attach(user_t *u, strmap_t *m) {
  ruser_t *r = RU(u);
  r->roster = m;
  r->roster_bytes = 0;
  strmap_each(m, count_cb, r);
  strmap_free(r->some, ritem_free);
  r->some = NULL;
}

/* Unavailable presence from each of u's available resources to contact. Sent BEFORE a
 * cancellation's subscription stanza (the contact's server still has the subscription
 * and delivers it; after, it would drop it: RFC 6121 §3.2.2), or flagged directed when
 * the contact's side has already ended the subscription (§3.3.3). */
static void send_unavailable(worker_t *w, user_t *u, const char *contact, uint16_t flags) {
  if (!w_is_local(w, contact)) return;
  xnode_t *p = xnode_new(&w->arena, "presence", NS_CLIENT);
  xnode_set_attr(&w->arena, p, "type", "unavailable");
  for (session_t *o = u->sessions; o; o = o->next)
    if (o->available) w_route(w, o->full, contact, p, flags);
}

static ritem_t *item_from_store(const store_roster_item_t *si) {
  ritem_t *it = xcalloc(1, sizeof *it);
  it->jid = xstrdup(si->jid);
  it->name = si->name ? xstrdup(si->name) : NULL;
  it->sub = si->sub;
  it->ask_out = si->ask_out;
  it->pending_in = si->pending_in;
  it->approved = si->approved;
  it->ngroups = si->ngroups;
  it->groups = si->ngroups ? xcalloc(si->ngroups, sizeof(char *)) : NULL;
  for (size_t i = 0; i < si->ngroups; i++) it->groups[i] = xstrdup(si->groups[i]);
  return it;
}

static void load_cb(const store_roster_item_t *si, void *ud) {
  strmap_t *m = ud;
  ritem_t *it = item_from_store(si);
  ritem_free(strmap_put(m, it->jid, it));
}

/* A session was bound for u: it keeps the roster read ahead for it, if any (the roster
 * get and the initial presence that follow arrive in later batches). */
static void roster_adopt(worker_t *w, user_t *u) {
  rworker_t *rw = RW(w);
  if (!rw->prefetched || roster_loaded(u)) return;
  strmap_t *m = strmap_del(rw->prefetched, u->bare);
  if (m) attach(u, m);
}

strmap_t *user_roster(worker_t *w, user_t *u) {
  roster_adopt(w, u);
  ruser_t *r = RU(u);
  if (!r->roster) {
    strmap_t *m = strmap_new();
    if (store_roster_load(w->store, u->bare, load_cb, m) != 0) log_error("roster of %s could not be loaded", u->bare);
    attach(u, m);
  }
  return r->roster;
}

static void one_cb(const store_roster_item_t *si, void *ud) {
  ritem_t **out = ud;
  *out = item_from_store(si);
}

/* u's item for contact, NULL when there is none: from the roster when it is loaded (or
 * read ahead), else read alone from the store and kept in its 'some'. 0, or XMPP_EIO when
 * the store could not say (the caller then changes nothing: a write would replace an
 * item it has not seen). */
static int find_item(worker_t *w, user_t *u, const char *contact, ritem_t **out) {
  roster_adopt(w, u);
  ruser_t *r = RU(u);
  if (r->roster) {
    *out = strmap_get(r->roster, contact);
    return 0;
  }
  if (!r->some) r->some = strmap_new();
  *out = strmap_get(r->some, contact);
  if (*out) return 0;
  int rc = store_roster_get(w->store, u->bare, contact, one_cb, out);
  if (rc == XMPP_ENOENT) return 0;
  if (rc != 0) {
    log_error("roster item %s of %s could not be read", contact, u->bare);
    return XMPP_EIO;
  }
  strmap_put(r->some, contact, *out);
  return 0;
}

roster_sub_t roster_sub(worker_t *w, user_t *u, const char *contact) {
  ritem_t *it = NULL;
  if (find_item(w, u, contact, &it) != 0 || !it) return SUB_NONE;
  return it->sub;
}

int roster_has(worker_t *w, user_t *u, const char *contact) {
  ritem_t *it = NULL;
  if (find_item(w, u, contact, &it) != 0) return 0;
  return it && !hidden(it);
}

/* The map items of u are kept in now: the roster, or the items read one by one. */
static strmap_t *items(user_t *u) {
  ruser_t *r = RU(u);
  if (r->roster) return r->roster;
  if (!r->some) r->some = strmap_new();
  return r->some;
}

static void free_roster(void *p) { strmap_free(p, ritem_free); }

static void prefetch_item(size_t i, const store_roster_item_t *si, void *ud) {
  strmap_t **maps = ud;
  load_cb(si, maps[i]);
}

/* Rosters a batch of frames is about to need, read in one go: n users, one round trip
 * to Redis instead of n (a log-in storm: every new session needs its roster for the
 * roster get and the initial presence that follow). A roster that could not be read is
 * left out: user_roster then reads it alone (and says so if it fails again). */
static void roster_prefetch(worker_t *w, const char *const *bares, size_t n) {
  if (!n) return;
  strmap_t **maps = xcalloc(n, sizeof *maps);
  int *rcs = xcalloc(n, sizeof *rcs);
  for (size_t i = 0; i < n; i++) maps[i] = strmap_new();
  if (store_roster_load_many(w->store, bares, n, prefetch_item, maps, rcs) != 0)
    for (size_t i = 0; i < n; i++) rcs[i] = XMPP_EIO;
  rworker_t *rw = RW(w);
  if (!rw->prefetched) rw->prefetched = strmap_new();
  log_debug("router %d: %zu rosters read ahead in one batch", w->index, n);
  for (size_t i = 0; i < n; i++) {
    if (rcs[i] == 0) free_roster(strmap_put(rw->prefetched, bares[i], maps[i]));
    else free_roster(maps[i]);
  }
  xfree(rcs);
  xfree(maps);
}

/* End of the batch: rosters it did not use are dropped (they would go stale; a bound
 * session keeps its roster from the bind on: roster_adopt). */
static void roster_prefetch_end(worker_t *w) {
  rworker_t *rw = RW(w);
  if (!rw->prefetched) return;
  strmap_free(rw->prefetched, free_roster);
  rw->prefetched = NULL;
}

static void save(worker_t *w, user_t *u, ritem_t *it) {
  store_roster_item_t si = {it->jid, it->name, it->sub, it->ask_out, it->pending_in,
                            (const char *const *)it->groups, it->ngroups, it->approved};
  if (store_roster_put(w->store, u->bare, &si) != 0) log_error("roster of %s: write failed", u->bare);
  ruser_t *r = RU(u);
  if (r->roster) {
    r->roster_bytes -= it->counted;
    it->counted = shown_cost(it);
    r->roster_bytes += it->counted;
  }
}

static void drop(worker_t *w, user_t *u, const char *contact) {
  ritem_t *it = strmap_del(items(u), contact);
  ruser_t *r = RU(u);
  if (it && r->roster) r->roster_bytes -= it->counted;
  ritem_free(it);
  store_roster_delete(w->store, u->bare, contact);
}

/* limits.max_roster_items: a roster never grows past it (XEP-0205 §3: bound what one
 * account can make the server store). Full rosters refuse new items; existing ones change.
 * A roster not loaded is counted by the store (Redis HLEN; SQLite a trigger-kept count); a
 * count that fails is taken as full (the stanza is refused, nothing is written). */
static int roster_full(worker_t *w, user_t *u) {
  roster_adopt(w, u);
  ruser_t *r = RU(u);
  if (!r->roster) {
    int n = store_roster_count(w->store, u->bare);
    return n < 0 || n >= w->cfg->max_roster_items;
  }
  return strmap_count(r->roster) >= (size_t)w->cfg->max_roster_items;
}

/* limits.subscription_rate: a token bucket per account (rate_burst seconds of it at
 * once). Every subscription stanza costs the contact's shard a store read and write. */
static int subscription_allowed(worker_t *w, user_t *u) {
  int rate = w->cfg->subscription_rate;
  if (rate <= 0) return 1;
  double cap = (double)rate * w->cfg->rate_burst;
  uint64_t now = uv_hrtime() / 1000000; /* not the loop's time: may run on another thread (inline_routing) */
  ruser_t *r = RU(u);
  if (!r->sub_at) r->sub_tokens = cap;
  else r->sub_tokens += (double)(now - r->sub_at) * rate / 1000.0;
  if (r->sub_tokens > cap) r->sub_tokens = cap;
  r->sub_at = now ? now : 1;
  if (r->sub_tokens < 1) return 0;
  r->sub_tokens -= 1;
  return 1;
}

static const char *sub_name(roster_sub_t s) {
  static const char *n[] = {"none", "to", "from", "both"};
  return n[s & 3];
}

static xnode_t *item_node(worker_t *w, xnode_t *parent, const ritem_t *it, int removed) {
  arena_t *a = &w->arena;
  xnode_t *n = xnode_add(a, parent, "item", NS_ROSTER);
  xnode_set_attr(a, n, "jid", it->jid);
  if (removed) {
    xnode_set_attr(a, n, "subscription", "remove");
    return n;
  }
  if (it->name) xnode_set_attr(a, n, "name", it->name);
  xnode_set_attr(a, n, "subscription", sub_name(it->sub));
  if (it->ask_out) xnode_set_attr(a, n, "ask", "subscribe");
  if (it->approved) xnode_set_attr(a, n, "approved", "true"); /* §2.1.2.1 */
  for (size_t i = 0; i < it->ngroups; i++) {
    xnode_t *g = xnode_add(a, n, "group", NS_ROSTER);
    xnode_add_text(a, g, it->groups[i], strlen(it->groups[i]));
  }
  return n;
}

/* u's roster version (§2.6) as the ver attribute gives it, in the arena; NULL when the
 * store could not say (the roster then goes without one: the client keeps no version). */
static const char *roster_ver(worker_t *w, user_t *u) {
  int64_t v = 0;
  if (store_roster_ver(w->store, u->bare, &v) != 0) {
    log_error("roster version of %s could not be read", u->bare);
    return NULL;
  }
  char b[24];
  snprintf(b, sizeof b, "%lld", (long long)v);
  return arena_strdup(&w->arena, b);
}

/* Roster push (§2.1.6) to every interested resource, with the version it leads to
 * (§2.6.3; read only when someone is interested). */
static void push(worker_t *w, user_t *u, const ritem_t *it, int removed) {
  arena_t *a = &w->arena;
  mod_event_t e = {.w = w, .u = u, .to = it->jid};
  modules_hook(HOOK_ROSTER_CHANGE, &e);
  session_t *s = u->sessions;
  while (s && !interested(s)) s = s->next;
  if (!s) return;
  xnode_t *iq = xnode_new(a, "iq", NS_CLIENT);
  char id[32];
  snprintf(id, sizeof id, "push%d-%llu", w->index, (unsigned long long)++w->push_seq);
  xnode_set_attr(a, iq, "type", "set");
  xnode_set_attr(a, iq, "id", id);
  xnode_t *q = xnode_add(a, iq, "query", NS_ROSTER);
  const char *ver = roster_ver(w, u);
  if (ver) xnode_set_attr(a, q, "ver", ver);
  item_node(w, q, it, removed);
  for (; s; s = s->next)
    if (interested(s)) w_deliver(w, s, NULL, s->full, iq);
}

static void reply(worker_t *w, session_t *s, const xnode_t *req, xnode_t *payload) {
  arena_t *a = &w->arena;
  xnode_t *iq = xnode_new(a, "iq", NS_CLIENT);
  xnode_set_attr(a, iq, "type", "result");
  xnode_set_attr(a, iq, "id", xnode_attr(req, "id"));
  if (payload) xnode_append(iq, payload);
  w_deliver(w, s, NULL, s->full, iq);
}

static void reply_error(worker_t *w, user_t *u, session_t *s, xnode_t *req, const char *type, const char *cond) {
  w_error(w, s->full, u->bare, req, type, cond);
}

typedef struct {
  worker_t *w;
  xnode_t *q;
} get_ctx_t;

static void get_cb(const char *k, void *v, void *ud) {
  get_ctx_t *x = ud;
  if (!hidden(v)) item_node(x->w, x->q, v, 0);
}

static void send_sub(worker_t *w, user_t *u, const char *contact, const char *type) {
  xnode_t *p = xnode_new(&w->arena, "presence", NS_CLIENT);
  xnode_set_attr(&w->arena, p, "type", type);
  if (w_is_local(w, contact)) w_route(w, u->bare, contact, p, 0);
}

static void roster_set(worker_t *w, user_t *u, session_t *s, xnode_t *iq, xnode_t *q) {
  xnode_t *item = xnode_first_elem(q);
  if (!item || xnode_next_elem(item) || strcmp(item->name, "item") || strcmp(item->ns, NS_ROSTER)) {
    reply_error(w, u, s, iq, "modify", "bad-request"); /* §2.3.3: exactly one item */
    return;
  }
  const char *jid = xnode_attr(item, "jid");
  jid_t j;
  if (!jid || jid_parse(jid, strlen(jid), &j) != 0) {
    reply_error(w, u, s, iq, "modify", "bad-request");
    return;
  }
  char *contact = arena_strdup(&w->arena, j.full);
  jid_free(&j);
  const char *subattr = xnode_attr(item, "subscription");
  strmap_t *r = user_roster(w, u);
  ritem_t *it = strmap_get(r, contact);
  if (subattr && !strcmp(subattr, "remove")) {
    if (!it) {
      reply_error(w, u, s, iq, "cancel", "item-not-found");
      return;
    }
    /* §2.5.2: removing cancels the subscriptions both ways; the contact no longer sees
     * us: it is told we are gone first, while it is still subscribed (§3.2.2) */
    if (it->sub == SUB_FROM || it->sub == SUB_BOTH) send_unavailable(w, u, contact, 0);
    if (it->sub == SUB_TO || it->sub == SUB_BOTH || it->ask_out) send_sub(w, u, contact, "unsubscribe");
    if (it->sub == SUB_FROM || it->sub == SUB_BOTH || it->pending_in) send_sub(w, u, contact, "unsubscribed");
    ritem_t gone = *it;
    gone.jid = arena_strdup(&w->arena, it->jid);
    drop(w, u, contact);
    push(w, u, &gone, 1);
    reply(w, s, iq, NULL);
    return;
  }
  if (!strcmp(contact, u->bare)) {
    reply_error(w, u, s, iq, "cancel", "not-allowed");
    return;
  }
  /* §2.3.3: a name or a group longer than the server's limit, an empty group, or more
   * groups than it keeps: <not-acceptable/>. The count is checked first, before any text
   * is compared: the work below is linear in what the cap lets through. */
  const xmpp_config_t *cfg = w->cfg;
  const char *name = xnode_attr(item, "name");
  size_t ng = 0;
  for (xnode_t *g = xnode_first_elem(item); g; g = xnode_next_elem(g))
    if (!strcmp(g->name, "group")) ng++;
  if (ng > (size_t)cfg->max_roster_groups || (name && strlen(name) > (size_t)cfg->max_roster_name)) {
    reply_error(w, u, s, iq, "modify", "not-acceptable");
    return;
  }
  /* groups: non-empty, unique (§2.1.2.4); duplicates are dropped, found by a keyed hash
   * (SipHash: colliding names cannot be chosen) */
  char **groups = ng ? xcalloc(ng, sizeof(char *)) : NULL;
  strmap_t *seen = ng > 1 ? strmap_new() : NULL;
  size_t k = 0;
  int bad = 0;
  for (xnode_t *g = xnode_first_elem(item); g && !bad; g = xnode_next_elem(g)) {
    if (strcmp(g->name, "group")) continue;
    char *t = xnode_text(&w->arena, g);
    if (!*t || strlen(t) > (size_t)cfg->max_roster_group_name) {
      bad = 1;
    } else if (!seen || !strmap_get(seen, t)) {
      if (seen) strmap_put(seen, t, t);
      groups[k++] = xstrdup(t);
    }
  }
  strmap_free(seen, NULL);
  if (!bad && name && !*name) name = NULL;
  int full = 0;
  if (!bad) {
    /* the item as it would be: is the shown roster still within its byte cap? */
    ritem_t next = {contact, (char *)name, it ? it->sub : SUB_NONE, it ? it->ask_out : 0,
                    it ? it->pending_in : 0, groups, k, 0, 0};
    full = (!it && roster_full(w, u)) || over_bytes(w, u, it, shown_cost(&next));
  }
  if (bad || full) {
    for (size_t i = 0; i < k; i++) xfree(groups[i]);
    xfree(groups);
    if (bad) reply_error(w, u, s, iq, "modify", "not-acceptable");
    else reply_error(w, u, s, iq, "cancel", "not-allowed"); /* the roster is full */
    return;
  }
  if (!it) {
    it = xcalloc(1, sizeof *it);
    it->jid = xstrdup(contact);
    strmap_put(r, contact, it);
  }
  xfree(it->name);
  it->name = name ? xstrdup(name) : NULL;
  for (size_t i = 0; i < it->ngroups; i++) xfree(it->groups[i]);
  xfree(it->groups);
  it->groups = groups;
  it->ngroups = k;
  save(w, u, it);
  push(w, u, it, 0);
  reply(w, s, iq, NULL);
}

static void roster_iq(worker_t *w, user_t *u, session_t *s, xnode_t *iq) {
  const char *type = xnode_attr(iq, "type");
  xnode_t *q = xnode_child(iq, "query", NS_ROSTER);
  if (!strcmp(type, "get")) {
    *mod_session_state(s, &mod_roster) = (void *)1; /* an interested resource */
    /* §2.6.2: a client that gives ver knows versioning; ver equal to ours: nothing
     * changed, an empty result (§2.6.3) */
    const char *cver = q ? xnode_attr(q, "ver") : NULL;
    const char *ver = cver ? roster_ver(w, u) : NULL;
    if (ver && !strcmp(ver, cver)) {
      reply(w, s, iq, NULL);
      return;
    }
    xnode_t *res = xnode_new(&w->arena, "query", NS_ROSTER);
    if (ver) xnode_set_attr(&w->arena, res, "ver", ver);
    get_ctx_t x = {w, res};
    strmap_each(user_roster(w, u), get_cb, &x);
    reply(w, s, iq, res);
  } else if (!strcmp(type, "set")) {
    roster_set(w, u, s, iq, q);
  }
}

/* u's item for contact, created when absent, in the map u's items are kept in now (the
 * caller has looked it up: find_item or user_roster). */
static ritem_t *ensure_item(user_t *u, const char *contact) {
  strmap_t *r = items(u);
  ritem_t *it = strmap_get(r, contact);
  if (!it) {
    it = xcalloc(1, sizeof *it);
    it->jid = xstrdup(contact);
    strmap_put(r, contact, it);
  }
  return it;
}

/* The user (u) sends a subscription stanza to 'to' (§3.1.2, §3.1.5, §3.2.2, §3.3.2). */
static void subscription_outbound(worker_t *w, user_t *u, session_t *s, const char *to, xnode_t *st) {
  const char *type = xnode_attr(st, "type");
  char *contact = w_bare(w, to);
  if (!strcmp(contact, u->bare)) return;
  if (!subscription_allowed(w, u)) {
    w_error(w, s->full, to, st, "wait", "policy-violation"); /* RFC 6120 §8.3.3.12 */
    return;
  }
  strmap_t *r = user_roster(w, u);
  ritem_t *it = strmap_get(r, contact);
  int cancelled_from = 0; /* "unsubscribed" ended the contact's subscription to us */
  if (!strcmp(type, "subscribe")) {
    /* a new item, or a hidden one, is shown from now on (ask='subscribe') */
    int shows = !it || hidden(it);
    size_t after = it ? item_cost(it->jid, it->name, it->groups, it->ngroups) : item_cost(contact, NULL, NULL, 0);
    if ((!it && roster_full(w, u)) || (shows && over_bytes(w, u, it, after))) {
      w_error(w, s->full, to, st, "cancel", "not-allowed");
      return;
    }
    it = ensure_item(u, contact);
    if (it->sub != SUB_TO && it->sub != SUB_BOTH && !it->ask_out) {
      it->ask_out = 1;
      save(w, u, it);
      push(w, u, it, 0);
    }
  } else if (!strcmp(type, "subscribed")) {
    if (!it || !it->pending_in) {
      /* §3.4.1: the contact has not asked. Already subscribed (From, Both) or already
       * pre-approved: nothing changes. Else the pre-approval is noted, not routed. */
      if (it && (it->sub == SUB_FROM || it->sub == SUB_BOTH || it->approved)) return;
      if (!it && (roster_full(w, u) || over_bytes(w, u, NULL, item_cost(contact, NULL, NULL, 0)))) {
        w_error(w, s->full, to, st, "cancel", "not-allowed");
        return;
      }
      it = ensure_item(u, contact);
      it->approved = 1;
      save(w, u, it);
      push(w, u, it, 0);
      return;
    }
    if (hidden(it) && over_bytes(w, u, it, item_cost(it->jid, it->name, it->groups, it->ngroups))) {
      w_error(w, s->full, to, st, "cancel", "not-allowed"); /* approved, it would be shown */
      return;
    }
    it->pending_in = 0;
    it->approved = 0;
    it->sub = it->sub == SUB_TO ? SUB_BOTH : it->sub == SUB_NONE ? SUB_FROM : it->sub;
    save(w, u, it);
    push(w, u, it, 0);
  } else if (!strcmp(type, "unsubscribe")) {
    /* Appendix A.2.2: no subscription and none asked for: no state change, no push */
    if (it && (it->ask_out || it->sub == SUB_TO || it->sub == SUB_BOTH)) {
      it->ask_out = 0;
      it->sub = it->sub == SUB_BOTH ? SUB_FROM : it->sub == SUB_TO ? SUB_NONE : it->sub;
      save(w, u, it);
      push(w, u, it, 0);
    }
  } else if (!strcmp(type, "unsubscribed")) {
    int had_from = it && (it->sub == SUB_FROM || it->sub == SUB_BOTH);
    if (!it || (!had_from && !it->pending_in)) {
      /* Appendix A.2.4: None, None + Pending Out, To: no state change, not routed. A
       * pre-approval is cancelled (§3.4), locally: the contact never knew of it. */
      if (it && it->approved) {
        it->approved = 0;
        save(w, u, it);
        push(w, u, it, 0);
      }
      return;
    }
    cancelled_from = had_from;
    it->approved = 0;
    it->pending_in = 0;
    it->sub = it->sub == SUB_BOTH ? SUB_TO : it->sub == SUB_FROM ? SUB_NONE : it->sub;
    if (it->sub == SUB_NONE && !it->ask_out && !it->name && !it->ngroups && !had_from) {
      drop(w, u, contact); /* a declined request from a stranger leaves nothing */
    } else {
      save(w, u, it);
      push(w, u, it, 0);
    }
  }
  if (!w_is_local(w, contact)) return;
  /* §3.2.2: the contact sees us go before its subscription ends (after, its server
   * would drop the unavailable, and it would see us online for ever) */
  if (cancelled_from) send_unavailable(w, u, contact, 0);
  /* subscription stanzas carry the bare JID (§3.1.2) */
  xnode_t *p = xnode_copy(&w->arena, st);
  w_route(w, u->bare, contact, p, 0);
  if (!strcmp(type, "subscribed")) presence_send_current(w, u, contact); /* §3.1.5 */
}

static void deliver_available(worker_t *w, user_t *u, const char *from, xnode_t *st) {
  for (session_t *s = u->sessions; s; s = s->next)
    if (s->available) w_deliver(w, s, from, u->bare, st);
}

/* 'from' sends a subscription stanza to local user 'to' (§3.1.3, §3.1.6, §3.2.3, §3.3.3). */
static void subscription_inbound(worker_t *w, user_t *u, const char *from, const char *to, xnode_t *st) {
  const char *type = xnode_attr(st, "type");
  char *contact = w_bare(w, from);
  if (!user_exists(w, u)) return; /* §3.1.3: no account, silently ignored */
  ritem_t *it;
  if (find_item(w, u, contact, &it) != 0) return; /* the store failed: nothing changes */
  if (!strcmp(type, "subscribe")) {
    if (it && (it->sub == SUB_FROM || it->sub == SUB_BOTH)) {
      /* already approved: auto-reply on the user's behalf */
      xnode_t *p = xnode_new(&w->arena, "presence", NS_CLIENT);
      xnode_set_attr(&w->arena, p, "type", "subscribed");
      w_route(w, u->bare, contact, p, 0);
      presence_send_current(w, u, contact);
      return;
    }
    if (it && it->approved) {
      /* §3.4.2: pre-approved: approved at once, the user's clients are not asked */
      it->approved = 0;
      it->pending_in = 0;
      it->sub = it->sub == SUB_TO ? SUB_BOTH : SUB_FROM;
      save(w, u, it);
      push(w, u, it, 0);
      xnode_t *p = xnode_new(&w->arena, "presence", NS_CLIENT);
      xnode_set_attr(&w->arena, p, "type", "subscribed");
      w_route(w, u->bare, contact, p, 0);
      presence_send_current(w, u, contact);
      return;
    }
    if (!it && roster_full(w, u)) {
      w_error(w, from, to, st, "wait", "resource-constraint"); /* the contact's roster is full */
      return;
    }
    it = ensure_item(u, contact);
    if (!it->pending_in) {
      it->pending_in = 1;
      save(w, u, it);
    }
    deliver_available(w, u, contact, st);
  } else if (!strcmp(type, "subscribed")) {
    if (!it || !it->ask_out) return;
    it->ask_out = 0;
    it->sub = it->sub == SUB_FROM ? SUB_BOTH : it->sub == SUB_NONE ? SUB_TO : it->sub;
    save(w, u, it);
    push(w, u, it, 0);
    deliver_available(w, u, contact, st);
  } else if (!strcmp(type, "unsubscribe")) {
    if (!it) return;
    int changed = it->pending_in || it->sub == SUB_FROM || it->sub == SUB_BOTH;
    if (!changed) return;
    int had_from = it->sub == SUB_FROM || it->sub == SUB_BOTH;
    int was_hidden = hidden(it);
    it->pending_in = 0;
    it->sub = it->sub == SUB_BOTH ? SUB_TO : it->sub == SUB_FROM ? SUB_NONE : it->sub;
    if (was_hidden) {
      drop(w, u, contact);
    } else {
      save(w, u, it);
      push(w, u, it, 0);
    }
    deliver_available(w, u, contact, st);
    /* §3.3.3: the contact stops seeing u. Its server has already ended the subscription,
     * so the unavailable goes as directed presence (else it would be dropped there). */
    if (had_from) send_unavailable(w, u, contact, BUS_F_DIRECTED);
  } else if (!strcmp(type, "unsubscribed")) {
    if (!it || !(it->ask_out || it->sub == SUB_TO || it->sub == SUB_BOTH)) return;
    it->ask_out = 0;
    it->sub = it->sub == SUB_BOTH ? SUB_FROM : it->sub == SUB_TO ? SUB_NONE : it->sub;
    save(w, u, it);
    push(w, u, it, 0);
    deliver_available(w, u, contact, st);
  }
}

typedef struct {
  worker_t *w;
  session_t *s;
} pend_ctx_t;

static void pending_cb(const char *contact, void *v, void *ud) {
  pend_ctx_t *x = ud;
  ritem_t *it = v;
  if (!it->pending_in) return;
  xnode_t *p = xnode_new(&x->w->arena, "presence", NS_CLIENT);
  xnode_set_attr(&x->w->arena, p, "type", "subscribe");
  w_deliver(x->w, x->s, contact, NULL, p);
}

/* Re-sends pending inbound subscription requests to a newly available session. */
static void roster_deliver_pending(worker_t *w, user_t *u, session_t *s) {
  pend_ctx_t x = {w, s};
  strmap_each(user_roster(w, u), pending_cb, &x);
}

int mod_is_contact(worker_t *w, user_t *u, const char *from) {
  char *bare = w_bare(w, from);
  if (!strcmp(bare, u->bare)) return 1;
  roster_sub_t sub = roster_sub(w, u, bare); /* one item, not the roster of an offline user */
  return sub == SUB_FROM || sub == SUB_BOTH;
}

static void roster(mod_iq_ctx_t *c) {
  if (!c->s) {
    mod_iq_error(c, "cancel", "service-unavailable");
    return;
  }
  roster_iq(c->w, c->u, c->s, c->iq);
}

static int subscription_out(mod_event_t *e) {
  subscription_outbound(e->w, e->u, e->s, e->to, e->st);
  return MOD_STOP;
}

static int subscription_in(mod_event_t *e) {
  subscription_inbound(e->w, e->u, e->from, e->to, e->st);
  return MOD_STOP;
}

static int presence_initial(mod_event_t *e) {
  roster_deliver_pending(e->w, e->u, e->s);
  return MOD_OK;
}

static int on_session_open(mod_event_t *e) { /* also a re-announced one */
  roster_adopt(e->w, e->u);
  return MOD_OK;
}

static int batch_ahead(mod_event_t *e) {
  if (e->nnames[0]) roster_prefetch(e->w, e->names[0], e->nnames[0]);
  return MOD_OK;
}

static int batch_end(mod_event_t *e) {
  roster_prefetch_end(e->w);
  return MOD_OK;
}

static void *worker_init(worker_t *w) {
  (void)w;
  return xcalloc(1, sizeof(rworker_t));
}

static void worker_free(worker_t *w, void *state) {
  rworker_t *rw = state;
  if (rw) strmap_free(rw->prefetched, free_roster);
  xfree(rw);
  (void)w;
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
    .hooks = {[HOOK_SUBSCRIPTION_OUT] = subscription_out,
              [HOOK_SUBSCRIPTION_IN] = subscription_in,
              [HOOK_PRESENCE_INITIAL] = presence_initial,
              [HOOK_SESSION_OPEN] = on_session_open,
              [HOOK_SESSION_RESTORE] = on_session_open,
              [HOOK_BATCH_AHEAD] = batch_ahead,
              [HOOK_BATCH_END] = batch_end},
    .worker_init = worker_init,
    .worker_free = worker_free,
    .user_free = ruser_free,
};

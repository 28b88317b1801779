/* The module table (router/module.h) and the core's calls into it.
 *
 * Adding a module: its file router/mod_NAME.c defining `const module_t mod_NAME`, and
 * one line in the table below. Order matters only for hooks (they run in table order). */
#include "router/module.h"

#include <string.h>

#include "common/alloc.h"
#include "common/domains.h"
#include "common/err.h"
#include "common/log.h"

extern const module_t mod_disco, mod_ping, mod_version, mod_session, mod_roster, mod_offline, mod_blocking;
extern const module_t mod_vcard, mod_private, mod_last, mod_time, mod_mam, mod_carbons;
extern const module_t mod_presence, mod_message;

/* mod_blocking's hooks stop stanzas to and from blocked JIDs (XEP-0191): it must come
 * before any module whose hooks copy, store or answer them. */
const module_t *const modules[] = {
    &mod_disco, &mod_ping, &mod_version, &mod_session, &mod_roster, &mod_offline, &mod_blocking,
    &mod_vcard, &mod_private, &mod_last, &mod_time, &mod_mam,
    &mod_carbons, /* its hooks copy what the others let through */
    /* last: they handle presence and messages for good (MOD_STOP) */
    &mod_presence, &mod_message,
};
#define NMODULES (sizeof modules / sizeof modules[0])
const size_t nmodules = NMODULES;

/* Each point's hooks in table order, listed once (hooks_list): modules_hook runs only
 * the modules that hook the point. The table is const, so the lists never change. */
static mod_hook_fn hook_fns[HOOK_COUNT][NMODULES + 1];
static uint8_t hook_mod[HOOK_COUNT][NMODULES + 1]; /* the module of each */
static uv_once_t hooks_once = UV_ONCE_INIT;

static void hooks_list(void) {
  for (int h = 0; h < HOOK_COUNT; h++) {
    size_t n = 0;
    for (size_t i = 0; i < NMODULES; i++)
      if (modules[i]->hooks[h]) {
        hook_mod[h][n] = (uint8_t)i;
        hook_fns[h][n++] = modules[i]->hooks[h];
      }
    hook_fns[h][n] = NULL;
  }
}

/* Modules the server cannot do without: the stream's own (session), presence, messages,
 * the roster they rest on, and disco (which lists the others). */
static int essential(const module_t *m) {
  return m == &mod_disco || m == &mod_session || m == &mod_roster || m == &mod_presence || m == &mod_message;
}

int modules_index(const char *name) {
  for (size_t i = 0; i < NMODULES; i++)
    if (!strcmp(modules[i]->name, name)) return essential(modules[i]) ? -2 : (int)i;
  return -1;
}

const char *modules_name(int i) { return i >= 0 && (size_t)i < NMODULES ? modules[i]->name : NULL; }

uint64_t modules_disabled_for(const char *jid) {
  if (!jid || !domains_any_disabled()) return 0;
  const domain_t *d = domain_of_jid(jid);
  return d ? d->disabled : 0;
}

static size_t index_of(const module_t *m) {
  for (size_t i = 0; i < nmodules; i++)
    if (modules[i] == m) return i;
  log_error("module %s is not in the table", m->name);
  abort();
}

void modules_worker_init(worker_t *w) {
  uv_once(&hooks_once, hooks_list);
  w->mod_state = xcalloc(nmodules, sizeof *w->mod_state);
  for (size_t i = 0; i < nmodules; i++)
    if (modules[i]->worker_init) w->mod_state[i] = modules[i]->worker_init(w);
}

void modules_worker_free(worker_t *w) {
  if (!w->mod_state) return;
  for (size_t i = 0; i < nmodules; i++)
    if (modules[i]->worker_free) modules[i]->worker_free(w, w->mod_state[i]);
  xfree(w->mod_state);
  w->mod_state = NULL;
}

void *mod_worker_state(worker_t *w, const module_t *m) { return w->mod_state[index_of(m)]; }

void modules_router_init(router_t *r) {
  r->mod_state = xcalloc(nmodules, sizeof *r->mod_state);
  for (size_t i = 0; i < nmodules; i++)
    if (modules[i]->router_init) r->mod_state[i] = modules[i]->router_init(r);
}

void modules_router_free(router_t *r) {
  if (!r->mod_state) return;
  for (size_t i = 0; i < nmodules; i++)
    if (modules[i]->router_free) modules[i]->router_free(r, r->mod_state[i]);
  xfree(r->mod_state);
  r->mod_state = NULL;
}

void *mod_router_state(router_t *r, const module_t *m) { return r->mod_state[index_of(m)]; }

void **mod_session_state(session_t *s, const module_t *m) {
  if (!s->mod) s->mod = xcalloc(nmodules, sizeof *s->mod);
  return &s->mod[index_of(m)];
}

void *mod_session_get(const session_t *s, const module_t *m) {
  return s->mod ? s->mod[index_of(m)] : NULL;
}

void modules_session_free(session_t *s) {
  if (!s->mod) return;
  for (size_t i = 0; i < nmodules; i++)
    if (s->mod[i] && modules[i]->session_free) modules[i]->session_free(s->mod[i]);
  xfree(s->mod);
  s->mod = NULL;
}

void **mod_user_state(user_t *u, const module_t *m) {
  if (!u->mod) u->mod = xcalloc(nmodules, sizeof *u->mod);
  return &u->mod[index_of(m)];
}

void *mod_user_get(const user_t *u, const module_t *m) {
  return u->mod ? u->mod[index_of(m)] : NULL;
}

void modules_user_free(user_t *u) {
  if (!u->mod) return;
  for (size_t i = 0; i < nmodules; i++)
    if (u->mod[i] && modules[i]->user_free) modules[i]->user_free(u->mod[i]);
  xfree(u->mod);
  u->mod = NULL;
}

/* A hook runs for the domain of the account the event is about (Prosody's per-host
 * hooks): a module switched off there ([domain] disable) is skipped. */
int modules_hook(mod_hook_t h, mod_event_t *e) {
  uint64_t off = e->u ? modules_disabled_for(e->u->bare) : 0;
  for (size_t k = 0; hook_fns[h][k]; k++) {
    if (off & (1ULL << hook_mod[h][k])) continue;
    if (hook_fns[h][k](e) == MOD_STOP) return MOD_STOP;
  }
  return MOD_OK;
}

/* The reply's 'from': what the request was sent to; nothing when it had no 'to' (the
 * account's own, RFC 6120 §10.3.3). */
static const char *reply_from(const mod_iq_ctx_t *c) { return c->to && *c->to ? c->to : NULL; }

static void send_reply(mod_iq_ctx_t *c, xnode_t *res) {
  if (c->s) w_deliver(c->w, c->s, reply_from(c), c->s->full, res);
  else w_route(c->w, reply_from(c) ? reply_from(c) : w_domain_of(c->w, c->from), c->from, res, BUS_F_SERVER);
}

void mod_iq_result(mod_iq_ctx_t *c, xnode_t *payload) {
  arena_t *a = &c->w->arena;
  xnode_t *res = xnode_new(a, "iq", NS_CLIENT);
  xnode_set_attr(a, res, "type", "result");
  xnode_set_attr(a, res, "id", xnode_attr(c->iq, "id"));
  if (payload) xnode_append(res, payload);
  send_reply(c, res);
}

void mod_iq_error(mod_iq_ctx_t *c, const char *type, const char *cond) {
  xnode_t *e = stanza_error_reply(&c->w->arena, c->iq, type, cond);
  if (e) send_reply(c, e);
}

void modules_iq(worker_t *w, unsigned at, user_t *u, session_t *s, const char *from, const char *to, xnode_t *iq) {
  const char *type = xnode_attr(iq, "type");
  unsigned t = !type ? 0 : !strcmp(type, "get") ? MOD_GET : !strcmp(type, "set") ? MOD_SET : 0;
  if (!t) return; /* a result or an error for the server or an account: absorbed */
  mod_iq_ctx_t c = {w, u, s, from, to, iq, xnode_first_elem(iq), 0};
  c.self = u && !strcmp(w_bare(w, from), u->bare);
  if (!c.payload) {
    mod_iq_error(&c, "modify", "bad-request"); /* RFC 6120 §8.2.3: exactly one child */
    return;
  }
  /* the domain addressed (the account's, or the server's) decides which modules answer */
  uint64_t off = modules_disabled_for(to && *to ? to : from);
  for (size_t i = 0; i < nmodules; i++) {
    if (off & (1ULL << i)) continue;
    for (const mod_iq_t *h = modules[i]->iqs; h && h->ns; h++) {
      if (!(h->at & at) || !(h->types & t) || strcmp(h->ns, c.payload->ns) ||
          (h->name && strcmp(h->name, c.payload->name)))
        continue;
      /* not for this sender: answered as if nothing were there (no information given) */
      if (u && ((h->who == MOD_SELF && !c.self) || (h->who == MOD_CONTACT && !c.self && !mod_is_contact(w, u, from))))
        break;
      h->handle(&c);
      return;
    }
  }
  mod_iq_error(&c, "cancel", "service-unavailable");
}

size_t mod_xml_len(const xnode_t *el) {
  buf_t b;
  buf_init(&b);
  xnode_serialize(el, "", &b);
  size_t n = b.len;
  buf_free(&b);
  return n;
}

int mod_doc_put(worker_t *w, const char *bare, const char *kind, const char *key, const xnode_t *el) {
  buf_t b;
  buf_init(&b);
  xnode_encode(el, &b);
  int rc = store_doc_put(w->store, bare, kind, key, b.data, b.len, (size_t)w->cfg->max_account_doc_bytes);
  buf_free(&b);
  if (rc && rc != XMPP_ELIMIT) log_error("document %s/%s of %s could not be stored: %s", kind, key, bare, xmpp_strerror(rc));
  return rc;
}

xnode_t *mod_doc_get(worker_t *w, const char *bare, const char *kind, const char *key, int *rc) {
  char *data = NULL;
  size_t len = 0;
  xnode_t *el = NULL;
  *rc = store_doc_get(w->store, bare, kind, key, &data, &len);
  if (*rc == 0 && xnode_decode(&w->arena, (const uint8_t *)data, len, 256, &el) != 0) {
    log_error("document %s/%s of %s does not decode", kind, key, bare);
    *rc = XMPP_EIO;
    el = NULL;
  } else if (*rc && *rc != XMPP_ENOENT) {
    log_error("document %s/%s of %s could not be read: %s", kind, key, bare, xmpp_strerror(*rc));
  }
  xfree(data);
  return el;
}

void mod_iq_store_error(mod_iq_ctx_t *c, int rc) {
  if (rc == XMPP_ELIMIT) mod_iq_error(c, "cancel", "not-allowed");
  else mod_iq_error(c, "wait", "internal-server-error");
}

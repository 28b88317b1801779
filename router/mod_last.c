/* XEP-0012 last activity.
 *  - to the server: its uptime in seconds (§5), from when this worker started;
 *  - to an account's bare JID, answered by the server (§3): 0 while the account has an
 *    available resource; else the seconds since it last went offline, with the status of
 *    its last unavailable presence as text; <item-not-found/> when it never did (nothing
 *    recorded). Only the account itself and entities subscribed to its presence may ask
 *    (§3, §8: "MUST return a Forbidden error"); others get <forbidden/>;
 *  - to a full JID: the resource answers (routed by the core), or, offline,
 *    <service-unavailable/> (RFC 6121 §8.5.3.2.2; no module takes it).
 * What is recorded (a document, kind "last": "UNIX-SECONDS\nSTATUS") is written when the
 * account's last available resource goes: at its broadcast unavailable presence (with
 * its <status/>, cut to fit limits.max_doc_bytes), or when a session ends with no other
 * resource available, unless its unavailable presence was recorded already. */
#include "router/module.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"

#define NS_LAST "jabber:iq:last"
#define KIND "last"

extern const module_t mod_last;

/* The session's slot: set when its unavailable presence was recorded. */
typedef struct last_sess {
  int recorded;
} last_sess_t;

static void *worker_init(worker_t *w) {
  uint64_t *start = xmalloc(sizeof *start);
  *start = uv_hrtime();
  return start;
}

static void worker_free(worker_t *w, void *state) { xfree(state); }

static xnode_t *answer(worker_t *w, int64_t seconds, const char *status, size_t len) {
  char n[24];
  snprintf(n, sizeof n, "%" PRId64, seconds < 0 ? 0 : seconds);
  xnode_t *q = xnode_new(&w->arena, "query", NS_LAST);
  xnode_set_attr(&w->arena, q, "seconds", n);
  if (len) xnode_add_text(&w->arena, q, status, len);
  return q;
}

static void uptime(mod_iq_ctx_t *c) {
  const uint64_t *start = mod_worker_state(c->w, &mod_last);
  mod_iq_result(c, answer(c->w, (int64_t)((uv_hrtime() - *start) / 1000000000u), NULL, 0));
}

static int others_available(const user_t *u, const session_t *s) {
  for (const session_t *o = u->sessions; o; o = o->next)
    if (o != s && o->available) return 1;
  return 0;
}

static void account(mod_iq_ctx_t *c) {
  worker_t *w = c->w;
  if (!c->self && !mod_is_contact(w, c->u, c->from)) {
    mod_iq_error(c, "auth", "forbidden"); /* §3, §8 */
    return;
  }
  if (others_available(c->u, NULL)) {
    mod_iq_result(c, answer(w, 0, NULL, 0));
    return;
  }
  char *data = NULL;
  size_t len = 0;
  int rc = store_doc_get(w->store, c->u->bare, KIND, "", &data, &len);
  if (rc == XMPP_ENOENT) {
    mod_iq_error(c, "cancel", "item-not-found");
    return;
  }
  if (rc) {
    mod_iq_error(c, "wait", "internal-server-error");
    return;
  }
  char *nl = memchr(data, '\n', len);
  int64_t at = strtoll(data, NULL, 10);
  size_t off = nl ? (size_t)(nl - data) + 1 : len;
  mod_iq_result(c, answer(w, (int64_t)time(NULL) - at, data + off, len - off));
  xfree(data);
}

/* Length of at most max bytes of s, not cutting a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len, size_t max) {
  if (len <= max) return len;
  while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
  return max;
}

static void record(worker_t *w, user_t *u, const char *status) {
  char head[24];
  int hl = snprintf(head, sizeof head, "%lld\n", (long long)time(NULL));
  size_t sl = status ? strlen(status) : 0;
  size_t room = (size_t)w->cfg->max_doc_bytes - (size_t)hl;
  sl = utf8_cut(status, sl, room);
  char *doc = xmalloc((size_t)hl + sl + 1);
  memcpy(doc, head, (size_t)hl);
  if (sl) memcpy(doc + hl, status, sl);
  int rc = store_doc_put(w->store, u->bare, KIND, "", doc, (size_t)hl + sl, (size_t)w->cfg->max_account_doc_bytes);
  if (rc == XMPP_ELIMIT && sl) /* the budget is spent: the time at least */
    rc = store_doc_put(w->store, u->bare, KIND, "", doc, (size_t)hl, (size_t)w->cfg->max_account_doc_bytes);
  if (rc && rc != XMPP_ENOENT) {
    /* a stale time would be a lie: none rather */
    store_doc_delete(w->store, u->bare, KIND, "");
    log_warn("last activity of %s not recorded: %s", u->bare, xmpp_strerror(rc));
  }
  xfree(doc);
}

/* HOOK_PRESENCE_OUT: a broadcast unavailable presence of the last available resource is
 * recorded; an available one makes the session's end count again. */
static int presence_out(mod_event_t *e) {
  if (e->to && *e->to) return MOD_OK;
  const char *type = xnode_attr(e->st, "type");
  if (!type) {
    if (e->s->mod) { /* (a session no module keeps state for costs nothing here) */
      last_sess_t *ls = *mod_session_state(e->s, &mod_last);
      if (ls) ls->recorded = 0;
    }
    return MOD_OK;
  }
  if (strcmp(type, "unavailable") || !e->s->available || others_available(e->u, e->s)) return MOD_OK;
  void **slot = mod_session_state(e->s, &mod_last);
  xnode_t *st = xnode_child(e->st, "status", NULL);
  record(e->w, e->u, st ? xnode_text(&e->w->arena, st) : NULL);
  if (!*slot) *slot = xcalloc(1, sizeof(last_sess_t));
  ((last_sess_t *)*slot)->recorded = 1;
  return MOD_OK;
}

/* HOOK_SESSION_CLOSE: a session ending with no other resource available is a log-out. */
static int session_end(mod_event_t *e) {
  last_sess_t *ls = e->s->mod ? *mod_session_state(e->s, &mod_last) : NULL;
  if ((ls && ls->recorded) || others_available(e->u, e->s)) return MOD_OK;
  record(e->w, e->u, NULL);
  return MOD_OK;
}

static void sess_free(void *p) { xfree(p); }

static const mod_iq_t iqs[] = {
    {NS_LAST, "query", MOD_GET, MOD_AT_SERVER, MOD_ANYONE, uptime},
    {NS_LAST, "query", MOD_GET, MOD_AT_ACCOUNT, MOD_ANYONE, account},
    {0},
};
static const char *const features[] = {NS_LAST, NULL};

const module_t mod_last = {
    .name = "last",
    .server_features = features,
    .account_features = features,
    .iqs = iqs,
    .hooks = {[HOOK_PRESENCE_OUT] = presence_out, [HOOK_SESSION_CLOSE] = session_end},
    .worker_init = worker_init,
    .worker_free = worker_free,
    .session_free = sess_free,
};

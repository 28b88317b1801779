/* Storage front: argument checks and dispatch to a back-end (store_impl.h).
 *
 * The public functions check what every back-end would otherwise check again (NULL or
 * empty JIDs, credential sizes, subscription values) and return XMPP_EINVAL for it, so a
 * back-end only deals with storage. They also keep callbacks from re-entering their own
 * handle: while store_roster_load / store_offline_peek / store_account_list run a
 * callback, the back-end is in the middle of a statement (and pop_all of a transaction),
 * so any other call on the same handle returns XMPP_EINVAL, and store_close() from a
 * callback is deferred until the iterating call returns (the handle is not freed under
 * the caller's feet). Other handles, even on the same database, may be used freely. */
#include "common/store/store.h"

#include "common/pidlock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"
#include "common/store/store_impl.h"

struct store {
  const store_backend_t *ops;
  void *be;
  int in_cb;         /* inside an iterating call: callbacks may be running */
  int close_pending; /* store_close() was called from a callback */
};

static const store_backend_t *const backends[] = {
    &store_sqlite_backend,
    &store_redis_backend,
};

static char *err_dup(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  char *m = xmalloc(la + lb + 1);
  memcpy(m, a, la);
  memcpy(m + la, b, lb + 1);
  return m;
}

store_t *store_open(const char *backend, const char *path, char **err) {
  if (err) *err = NULL;
  if (!backend || !path || !*path) {
    if (err) *err = xstrdup("store_open: backend and path are required");
    return NULL;
  }
  const store_backend_t *ops = NULL;
  for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++)
    if (strcmp(backends[i]->name, backend) == 0) ops = backends[i];
  if (!ops) {
    if (err) *err = err_dup("unknown storage back-end: ", backend);
    return NULL;
  }
  char *e = NULL;
  void *be = ops->open(path, &e);
  if (!be) {
    if (err)
      *err = e ? e : xstrdup("cannot open store");
    else
      xfree(e);
    return NULL;
  }
  store_t *s = xcalloc(1, sizeof *s);
  s->ops = ops;
  s->be = be;
  return s;
}

static void really_close(store_t *s) {
  s->ops->close(s->be);
  xfree(s);
}

void store_close(store_t *s) {
  if (!s) return;
  if (s->in_cb) {
    s->close_pending = 1;
    return;
  }
  really_close(s);
}

/* Common entry check: a usable handle, not re-entered from one of its callbacks. */
static int enter(store_t *s, const char *fn) {
  if (!s) return XMPP_EINVAL;
  if (s->in_cb) {
    log_error("store: %s called from a store callback on the same handle", fn);
    return XMPP_EINVAL;
  }
  return 0;
}

static int bad_str(const char *p) { return !p || !*p; }

static int bad_strs(const char *const *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (bad_str(v[i])) return 1;
  return 0;
}

static int cred_ok(const scram_cred_t *c) {
  return c->salt_len >= 1 && c->salt_len <= SCRAM_MAX_SALT && c->iterations > 0;
}

static int account_ok(const store_account_t *a) {
  return a && cred_ok(&a->sha1) && cred_ok(&a->sha256);
}

int store_account_get(store_t *s, const char *bare, store_account_t *out) {
  int rc = enter(s, "store_account_get");
  if (rc) return rc;
  if (bad_str(bare) || !out) return XMPP_EINVAL;
  return s->ops->account_get(s->be, bare, out);
}

int store_account_get_many(store_t *s, const char *const *bares, size_t n, store_account_t *out, int *rcs) {
  int rc = enter(s, "store_account_get_many");
  if (rc) return rc;
  if (n && (!bares || !out || !rcs)) return XMPP_EINVAL;
  if (bad_strs(bares, n)) return XMPP_EINVAL;
  if (n == 0) return 0;
  if (s->ops->account_get_many) return s->ops->account_get_many(s->be, bares, n, out, rcs);
  for (size_t i = 0; i < n; i++) rcs[i] = s->ops->account_get(s->be, bares[i], &out[i]);
  return 0;
}

int store_account_exists(store_t *s, const char *bare) {
  int rc = enter(s, "store_account_exists");
  if (rc) return rc;
  if (bad_str(bare)) return XMPP_EINVAL;
  return s->ops->account_exists(s->be, bare);
}

int store_account_create(store_t *s, const char *bare, const store_account_t *a) {
  int rc = enter(s, "store_account_create");
  if (rc) return rc;
  if (bad_str(bare) || !account_ok(a)) return XMPP_EINVAL;
  return s->ops->account_create(s->be, bare, a);
}

int store_account_update(store_t *s, const char *bare, const store_account_t *a) {
  int rc = enter(s, "store_account_update");
  if (rc) return rc;
  if (bad_str(bare) || !account_ok(a)) return XMPP_EINVAL;
  return s->ops->account_update(s->be, bare, a);
}

int store_account_delete(store_t *s, const char *bare) {
  int rc = enter(s, "store_account_delete");
  if (rc) return rc;
  if (bad_str(bare)) return XMPP_EINVAL;
  return s->ops->account_delete(s->be, bare);
}

int store_batch_begin(store_t *s) {
  int rc = enter(s, "store_batch_begin");
  if (rc) return rc;
  return s->ops->batch_begin(s->be);
}

int store_batch_end(store_t *s, int commit) {
  int rc = enter(s, "store_batch_end");
  if (rc) return rc;
  return s->ops->batch_end(s->be, commit);
}

/* Runs an iterating back-end call with the re-entrancy guard up, then honours a
 * store_close() requested by a callback. */
#define ITERATE(s, call)                                                                    \
  do {                                                                                      \
    (s)->in_cb = 1;                                                                         \
    int rc_ = (call);                                                                       \
    (s)->in_cb = 0;                                                                         \
    if ((s)->close_pending) really_close(s);                                                \
    return rc_;                                                                             \
  } while (0)

int store_account_list(store_t *s, store_account_cb cb, void *ud) {
  int rc = enter(s, "store_account_list");
  if (rc) return rc;
  if (!cb) return XMPP_EINVAL;
  ITERATE(s, s->ops->account_list(s->be, cb, ud));
}

int store_roster_load(store_t *s, const char *bare, store_roster_cb cb, void *ud) {
  int rc = enter(s, "store_roster_load");
  if (rc) return rc;
  if (bad_str(bare) || !cb) return XMPP_EINVAL;
  ITERATE(s, s->ops->roster_load(s->be, bare, cb, ud));
}

void store_roster_many_item(const store_roster_item_t *it, void *ud) {
  roster_many_t *m = ud;
  m->cb(m->i, it, m->ud);
}

static int roster_load_each(store_t *s, const char *const *bares, size_t n, store_roster_many_cb cb, void *ud,
                            int *rcs) {
  for (size_t i = 0; i < n; i++) {
    roster_many_t m = {cb, i, ud};
    rcs[i] = s->ops->roster_load(s->be, bares[i], store_roster_many_item, &m);
  }
  return 0;
}

int store_roster_load_many(store_t *s, const char *const *bares, size_t n, store_roster_many_cb cb, void *ud,
                           int *rcs) {
  int rc = enter(s, "store_roster_load_many");
  if (rc) return rc;
  if (!cb || (n && (!bares || !rcs))) return XMPP_EINVAL;
  if (bad_strs(bares, n)) return XMPP_EINVAL;
  if (n == 0) return 0;
  if (s->ops->roster_load_many) ITERATE(s, s->ops->roster_load_many(s->be, bares, n, cb, ud, rcs));
  ITERATE(s, roster_load_each(s, bares, n, cb, ud, rcs));
}

int store_roster_get(store_t *s, const char *bare, const char *contact, store_roster_cb cb, void *ud) {
  int rc = enter(s, "store_roster_get");
  if (rc) return rc;
  if (bad_str(bare) || bad_str(contact) || !cb) return XMPP_EINVAL;
  ITERATE(s, s->ops->roster_get(s->be, bare, contact, cb, ud));
}

int store_roster_count(store_t *s, const char *bare) {
  int rc = enter(s, "store_roster_count");
  if (rc) return rc;
  if (bad_str(bare)) return XMPP_EINVAL;
  return s->ops->roster_count(s->be, bare);
}

int store_roster_put(store_t *s, const char *bare, const store_roster_item_t *item) {
  int rc = enter(s, "store_roster_put");
  if (rc) return rc;
  if (bad_str(bare) || !item || bad_str(item->jid)) return XMPP_EINVAL;
  if (item->sub < SUB_NONE || item->sub > SUB_BOTH) return XMPP_EINVAL;
  if (item->ngroups && !item->groups) return XMPP_EINVAL;
  for (size_t i = 0; i < item->ngroups; i++)
    if (!item->groups[i]) return XMPP_EINVAL;
  store_roster_item_t norm = *item;
  norm.ask_out = item->ask_out != 0;
  norm.pending_in = item->pending_in != 0;
  norm.approved = item->approved != 0;
  return s->ops->roster_put(s->be, bare, &norm);
}

int store_roster_delete(store_t *s, const char *bare, const char *contact) {
  int rc = enter(s, "store_roster_delete");
  if (rc) return rc;
  if (bad_str(bare) || bad_str(contact)) return XMPP_EINVAL;
  return s->ops->roster_delete(s->be, bare, contact);
}

int store_offline_push(store_t *s, const char *bare, const char *xml, size_t len, unsigned max, size_t max_bytes) {
  int rc = enter(s, "store_offline_push");
  if (rc) return rc;
  if (bad_str(bare) || (!xml && len)) return XMPP_EINVAL;
  return s->ops->offline_push(s->be, bare, xml ? xml : "", len, max, max_bytes);
}

int store_offline_peek(store_t *s, const char *bare, int64_t after, unsigned max_count, size_t max_bytes,
                       store_offline_cb cb, void *ud) {
  int rc = enter(s, "store_offline_peek");
  if (rc) return rc;
  if (bad_str(bare) || !cb || !max_count || after < 0) return XMPP_EINVAL;
  ITERATE(s, s->ops->offline_peek(s->be, bare, after, max_count, max_bytes, cb, ud));
}

int store_offline_remove(store_t *s, const char *bare, int64_t upto) {
  int rc = enter(s, "store_offline_remove");
  if (rc) return rc;
  if (bad_str(bare) || upto < 0) return XMPP_EINVAL;
  return s->ops->offline_remove(s->be, bare, upto);
}

int store_offline_count(store_t *s, const char *bare) {
  int rc = enter(s, "store_offline_count");
  if (rc) return rc;
  if (bad_str(bare)) return XMPP_EINVAL;
  return s->ops->offline_count(s->be, bare);
}

int store_offline_count_many(store_t *s, const char *const *bares, size_t n, int *counts) {
  int rc = enter(s, "store_offline_count_many");
  if (rc) return rc;
  if (n && (!bares || !counts)) return XMPP_EINVAL;
  if (bad_strs(bares, n)) return XMPP_EINVAL;
  if (n == 0) return 0;
  if (s->ops->offline_count_many) return s->ops->offline_count_many(s->be, bares, n, counts);
  for (size_t i = 0; i < n; i++) counts[i] = s->ops->offline_count(s->be, bares[i]);
  return 0;
}

int store_doc_get(store_t *s, const char *bare, const char *kind, const char *key, char **data, size_t *len) {
  if (data) *data = NULL;
  if (len) *len = 0;
  int rc = enter(s, "store_doc_get");
  if (rc) return rc;
  if (bad_str(bare) || bad_str(kind) || !key || !data || !len) return XMPP_EINVAL;
  return s->ops->doc_get(s->be, bare, kind, key, data, len);
}

int store_doc_put(store_t *s, const char *bare, const char *kind, const char *key, const void *data, size_t len,
                  size_t max_total) {
  int rc = enter(s, "store_doc_put");
  if (rc) return rc;
  if (bad_str(bare) || bad_str(kind) || !key || (!data && len)) return XMPP_EINVAL;
  return s->ops->doc_put(s->be, bare, kind, key, data ? data : "", len, max_total);
}

int store_doc_delete(store_t *s, const char *bare, const char *kind, const char *key) {
  int rc = enter(s, "store_doc_delete");
  if (rc) return rc;
  if (bad_str(bare) || bad_str(kind) || !key) return XMPP_EINVAL;
  return s->ops->doc_delete(s->be, bare, kind, key);
}

int64_t store_doc_bytes(store_t *s, const char *bare) {
  int rc = enter(s, "store_doc_bytes");
  if (rc) return rc;
  if (bad_str(bare)) return XMPP_EINVAL;
  return s->ops->doc_bytes(s->be, bare);
}

/* ---- XEP-0313 archive ---------------------------------------------------------------- */

int store_mam_append(store_t *s, const store_mam_msg_t *msgs, size_t n, const store_mam_limits_t *lim) {
  int rc = enter(s, "store_mam_append");
  if (rc) return rc;
  if (n && !msgs) return XMPP_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (bad_str(msgs[i].owner) || bad_str(msgs[i].with) || msgs[i].id <= 0 || (!msgs[i].data && msgs[i].len) ||
        (msgs[i].with_full && !*msgs[i].with_full))
      return XMPP_EINVAL;
  if (n == 0) return 0;
  store_mam_limits_t none = {0, 0, 0};
  return s->ops->mam_append(s->be, msgs, n, lim ? lim : &none);
}

int store_mam_query(store_t *s, const char *bare, const store_mam_query_t *q, store_mam_cb cb, void *ud,
                    int *more) {
  int rc = enter(s, "store_mam_query");
  if (rc) return rc;
  if (bad_str(bare) || !q || !cb || !more || (q->with && !*q->with) || (q->nids && !q->ids)) return XMPP_EINVAL;
  *more = 0;
  if (q->max == 0 && !q->nids) return 0;
  ITERATE(s, s->ops->mam_query(s->be, bare, q, cb, ud, more));
}

int store_mam_has(store_t *s, const char *bare, int64_t id) {
  int rc = enter(s, "store_mam_has");
  if (rc) return rc;
  if (bad_str(bare)) return XMPP_EINVAL;
  if (id <= 0) return 0;
  return s->ops->mam_has(s->be, bare, id);
}

int store_mam_count(store_t *s, const char *bare) {
  int rc = enter(s, "store_mam_count");
  if (rc) return rc;
  if (bad_str(bare)) return XMPP_EINVAL;
  return s->ops->mam_count(s->be, bare);
}

int store_mam_prefs_get(store_t *s, const char *bare, int *dflt, store_mam_jid_cb cb, void *ud) {
  int rc = enter(s, "store_mam_prefs_get");
  if (rc) return rc;
  if (bad_str(bare) || !dflt || !cb) return XMPP_EINVAL;
  ITERATE(s, s->ops->mam_prefs_get(s->be, bare, dflt, cb, ud));
}

int store_mam_prefs_set(store_t *s, const char *bare, int dflt, const char *const *always, size_t nalways,
                        const char *const *never, size_t nnever) {
  int rc = enter(s, "store_mam_prefs_set");
  if (rc) return rc;
  if (bad_str(bare) || dflt < STORE_MAM_ALWAYS || dflt > STORE_MAM_NEVER || (nalways && !always) ||
      (nnever && !never) || bad_strs(always, nalways) || bad_strs(never, nnever))
    return XMPP_EINVAL;
  return s->ops->mam_prefs_set(s->be, bare, dflt, always, nalways, never, nnever);
}

/* ---- the server's claim on a store (store.h) ---- */

struct store_claim {
  int fd;
};

int store_claim(const char *backend, const char *path, store_claim_t **out, char **err) {
  *out = NULL;
  if (err) *err = NULL;
  if (!backend || strcmp(backend, "sqlite") != 0 || !path || !*path || strcmp(path, ":memory:") == 0 ||
      strncmp(path, "file:", 5) == 0)
    return 0;
  char *lp = xstrfmt("%s.lock", path);
  char holder[32];
  int e;
  int fd = pidlock_take(lp, 0644, holder, &e);
  if (fd < 0) {
    if (err)
      *err = fd == PIDLOCK_HELD
                 ? xstrfmt("storage %s is in use by another xmppd (pid %s, lock file %s): one server process per "
                           "store; stop it first (xmppctl may use the store meanwhile)",
                           path, holder, lp)
                 : xstrfmt("cannot lock %s: %s", lp, strerror(e));
    xfree(lp);
    return fd == PIDLOCK_HELD ? XMPP_EDENIED : XMPP_EIO;
  }
  xfree(lp);
  store_claim_t *c = xcalloc(1, sizeof *c);
  c->fd = fd;
  *out = c;
  return 0;
}

void store_claim_release(store_claim_t *c) {
  if (!c) return;
  close(c->fd); /* releases the flock */
  xfree(c);
}

/* ---- XEP-0191 blocklists -------------------------------------------------------------- */

int store_block_load(store_t *s, const char *bare, store_block_cb cb, void *ud) {
  int rc = enter(s, "store_block_load");
  if (rc) return rc;
  if (bad_str(bare) || !cb) return XMPP_EINVAL;
  ITERATE(s, s->ops->block_load(s->be, bare, cb, ud));
}

int store_block_add(store_t *s, const char *bare, const char *const *jids, size_t n, unsigned max) {
  int rc = enter(s, "store_block_add");
  if (rc) return rc;
  if (bad_str(bare) || (n && !jids) || bad_strs(jids, n)) return XMPP_EINVAL;
  if (n == 0) return 0;
  return s->ops->block_add(s->be, bare, jids, n, max);
}

int store_block_remove(store_t *s, const char *bare, const char *const *jids, size_t n) {
  int rc = enter(s, "store_block_remove");
  if (rc) return rc;
  if (bad_str(bare) || (n && !jids) || bad_strs(jids, n)) return XMPP_EINVAL;
  return s->ops->block_remove(s->be, bare, jids, n);
}

int store_block_match(store_t *s, const char *bare, const char *const *jids, size_t n) {
  int rc = enter(s, "store_block_match");
  if (rc) return rc;
  if (bad_str(bare) || (n && !jids) || bad_strs(jids, n)) return XMPP_EINVAL;
  if (n == 0) return 0;
  return s->ops->block_match(s->be, bare, jids, n);
}

int store_roster_ver(store_t *s, const char *bare, int64_t *ver) {
  int rc = enter(s, "store_roster_ver");
  if (rc) return rc;
  if (bad_str(bare) || !ver) return XMPP_EINVAL;
  *ver = 0;
  return s->ops->roster_ver(s->be, bare, ver);
}

int store_set_cache(store_t *s, size_t bytes) {
  int rc = enter(s, "store_set_cache");
  if (rc) return rc;
  return s->ops->set_cache ? s->ops->set_cache(s->be, bytes) : 0;
}

/* ---- XEP-0484 FAST tokens -------------------------------------------------------------- */

int store_fast_get(store_t *s, const char *bare, const char *ua, store_fast_t *out) {
  int rc = enter(s, "store_fast_get");
  if (rc) return rc;
  if (bad_str(bare) || bad_str(ua) || !out) return XMPP_EINVAL;
  memset(out, 0, sizeof *out);
  return s->ops->fast_get(s->be, bare, ua, out);
}

int store_fast_put(store_t *s, const char *bare, const char *ua, const store_fast_t *t, unsigned max) {
  int rc = enter(s, "store_fast_put");
  if (rc) return rc;
  if (bad_str(bare) || bad_str(ua) || !t) return XMPP_EINVAL;
  return s->ops->fast_put(s->be, bare, ua, t, max);
}

int store_fast_count(store_t *s, const char *bare, const char *ua, const unsigned char *hash, int64_t count) {
  int rc = enter(s, "store_fast_count");
  if (rc) return rc;
  if (bad_str(bare) || bad_str(ua) || count < 0) return XMPP_EINVAL;
  return s->ops->fast_count(s->be, bare, ua, hash, count);
}

int store_fast_delete(store_t *s, const char *bare, const char *ua) {
  int rc = enter(s, "store_fast_delete");
  if (rc) return rc;
  if (bad_str(bare) || (ua && !*ua)) return XMPP_EINVAL;
  return s->ops->fast_delete(s->be, bare, ua);
}

/* ---- runtime domains ------------------------------------------------------------------ */

int store_domain_add(store_t *s, const store_domain_t *d) {
  int rc = enter(s, "store_domain_add");
  if (rc) return rc;
  if (!d || bad_str(d->name) || !d->tmpl || !d->cert || !d->key) return XMPP_EINVAL;
  return s->ops->domain_add(s->be, d);
}

int store_domain_remove(store_t *s, const char *name) {
  int rc = enter(s, "store_domain_remove");
  if (rc) return rc;
  if (bad_str(name)) return XMPP_EINVAL;
  return s->ops->domain_remove(s->be, name);
}

int store_domain_list(store_t *s, store_domain_cb cb, void *ud) {
  int rc = enter(s, "store_domain_list");
  if (rc) return rc;
  if (!cb) return XMPP_EINVAL;
  ITERATE(s, s->ops->domain_list(s->be, cb, ud));
}

int store_domain_version(store_t *s, int64_t *ver) {
  int rc = enter(s, "store_domain_version");
  if (rc) return rc;
  if (!ver) return XMPP_EINVAL;
  return s->ops->domain_version(s->be, ver);
}

int64_t store_domain_accounts(store_t *s, const char *domain) {
  int rc = enter(s, "store_domain_accounts");
  if (rc) return rc;
  if (bad_str(domain)) return XMPP_EINVAL;
  return s->ops->domain_accounts(s->be, domain);
}

int store_account_create_max(store_t *s, const char *bare, const store_account_t *a, unsigned max) {
  int rc = enter(s, "store_account_create_max");
  if (rc) return rc;
  if (bad_str(bare) || !account_ok(a) || !strchr(bare, '@')) return XMPP_EINVAL;
  if (!max) return s->ops->account_create(s->be, bare, a);
  return s->ops->account_create_max(s->be, bare, a, max);
}

/* Private contract between store.c (the public entry points) and the storage back-ends.
 * Not part of the public interface: include only from common/store/.
 *
 * store.c validates arguments, guards against re-entrant calls from callbacks, then
 * dispatches through a store_backend_t. A back-end gets an opaque handle of its own
 * (what its open returned) and may assume:
 *   - every string argument is non-NULL and NUL-terminated, bare JIDs non-empty;
 *   - store_account_t credentials have 1 <= salt_len <= SCRAM_MAX_SALT and iterations > 0;
 *   - roster items have sub in SUB_NONE..SUB_BOTH, ask_out/pending_in/approved in {0,1},
 *     groups non-NULL strings (groups may be NULL when ngroups == 0);
 *   - no call arrives while one of its callbacks runs on the same handle.
 * It returns the codes of common/err.h, exactly as documented in store.h.
 * Adding a back-end: one new file defining a store_backend_t, one line in store.c's
 * table (store_sqlite.c, store_redis.c). */
#ifndef XMPP_STORE_IMPL_H
#define XMPP_STORE_IMPL_H

#include "common/store/store.h"

typedef struct store_backend {
  const char *name; /* as given to store_open(), e.g. "sqlite" */
  /* path: what store_open() was given (SQLite: the file; Redis: the address).
   * Returns the back-end handle, or NULL with a message in *err (caller frees; err non-NULL). */
  void *(*open)(const char *path, char **err);
  void (*close)(void *be);

  int (*account_get)(void *be, const char *bare, store_account_t *out);
  /* Optional (NULL: store.c calls account_get n times). rcs[i] per account. */
  int (*account_get_many)(void *be, const char *const *bares, size_t n, store_account_t *out, int *rcs);
  int (*account_exists)(void *be, const char *bare);
  int (*account_create)(void *be, const char *bare, const store_account_t *a);
  int (*account_update)(void *be, const char *bare, const store_account_t *a);
  int (*account_delete)(void *be, const char *bare);
  int (*account_list)(void *be, store_account_cb cb, void *ud);
  /* One transaction around many calls (store_batch_begin / store_batch_end). */
  int (*batch_begin)(void *be);
  int (*batch_end)(void *be, int commit);

  int (*roster_load)(void *be, const char *bare, store_roster_cb cb, void *ud);
  /* Optional (NULL: store.c calls roster_load n times). */
  int (*roster_load_many)(void *be, const char *const *bares, size_t n, store_roster_many_cb cb, void *ud,
                          int *rcs);
  /* One item: cb once and 0, or XMPP_ENOENT. */
  int (*roster_get)(void *be, const char *bare, const char *contact, store_roster_cb cb, void *ud);
  int (*roster_count)(void *be, const char *bare);
  int (*roster_put)(void *be, const char *bare, const store_roster_item_t *item);
  int (*roster_delete)(void *be, const char *bare, const char *contact);

  int (*offline_push)(void *be, const char *bare, const char *xml, size_t len, unsigned max, size_t max_bytes);
  int (*offline_peek)(void *be, const char *bare, int64_t after, unsigned max_count, size_t max_bytes,
                      store_offline_cb cb, void *ud);
  int (*offline_remove)(void *be, const char *bare, int64_t upto);
  int (*offline_count)(void *be, const char *bare);
  /* Optional (NULL: store.c calls offline_count n times). */
  int (*offline_count_many)(void *be, const char *const *bares, size_t n, int *counts);
  /* Small per-account documents (store_doc_*): kind non-empty, key possibly empty. */
  int (*doc_get)(void *be, const char *bare, const char *kind, const char *key, char **data, size_t *len);
  int (*doc_put)(void *be, const char *bare, const char *kind, const char *key, const void *data, size_t len,
                 size_t max_total);
  int (*doc_delete)(void *be, const char *bare, const char *kind, const char *key);
  int64_t (*doc_bytes)(void *be, const char *bare);
  /* XEP-0313 archive (store.h) */
  int (*mam_append)(void *be, const store_mam_msg_t *msgs, size_t n, const store_mam_limits_t *lim);
  int (*mam_query)(void *be, const char *bare, const store_mam_query_t *q, store_mam_cb cb, void *ud, int *more);
  int (*mam_has)(void *be, const char *bare, int64_t id);
  int (*mam_count)(void *be, const char *bare);
  int (*mam_prefs_get)(void *be, const char *bare, int *dflt, store_mam_jid_cb cb, void *ud);
  int (*mam_prefs_set)(void *be, const char *bare, int dflt, const char *const *always, size_t nalways,
                       const char *const *never, size_t nnever);

  /* XEP-0191 blocklists; n >= 1 for add and match (store.c answers n == 0). */
  int (*block_load)(void *be, const char *bare, store_block_cb cb, void *ud);
  int (*block_add)(void *be, const char *bare, const char *const *jids, size_t n, unsigned max);
  int (*block_remove)(void *be, const char *bare, const char *const *jids, size_t n);
  int (*block_match)(void *be, const char *bare, const char *const *jids, size_t n);
  /* Roster versioning (store_roster_ver) */
  int (*roster_ver)(void *be, const char *bare, int64_t *ver);
  /* Optional (NULL: nothing to tune): store_set_cache. */
  int (*set_cache)(void *be, size_t bytes);
  /* XEP-0484 FAST tokens (store_fast_*); ua non-NULL except for fast_delete (all). */
  int (*fast_get)(void *be, const char *bare, const char *ua, store_fast_t *out);
  int (*fast_put)(void *be, const char *bare, const char *ua, const store_fast_t *t, unsigned max);
  int (*fast_count)(void *be, const char *bare, const char *ua, const unsigned char *hash, int64_t count);
  int (*fast_delete)(void *be, const char *bare, const char *ua);
  /* runtime domains and per-domain account counts (store.h) */
  int (*domain_add)(void *be, const store_domain_t *d);
  int (*domain_remove)(void *be, const char *name);
  int (*domain_list)(void *be, store_domain_cb cb, void *ud);
  int (*domain_version)(void *be, int64_t *ver);
  int64_t (*domain_accounts)(void *be, const char *domain);
  int (*account_create_max)(void *be, const char *bare, const store_account_t *a, unsigned max);
} store_backend_t;

/* Adapts a store_roster_cb to a store_roster_many_cb for user i (ud: a roster_many_t). */
typedef struct roster_many {
  store_roster_many_cb cb;
  size_t i;
  void *ud;
} roster_many_t;
void store_roster_many_item(const store_roster_item_t *it, void *ud);

extern const store_backend_t store_sqlite_backend;
extern const store_backend_t store_redis_backend;

#endif

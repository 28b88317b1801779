/* The session directory in Redis (docs/cluster.md, "Redis key layout"): where each
 * bound resource is connected, its priority and availability. Written by the worker
 * that owns the account's shard, at bind, presence change and unbind, through this
 * worker's own asynchronous Redis connection: writes made while handling a batch of
 * frames leave in one pipelined write, and nothing waits for a reply. The worker's
 * memory is the authority for routing (no Redis on a message's path); the directory is
 * for operators and tools, and is re-written whole when Redis comes back. */
#include "router/router_internal.h"

#include <string.h>

#include "common/credis.h"
#include "common/log.h"

/* The bare JID of s into out (JIDs are at most 3071 bytes, RFC 7622 §3.1). */
static int bare_of(const session_t *s, char *out, size_t cap) {
  size_t n = (size_t)(s->resource - 1 - s->full);
  if (n >= cap) return -1;
  memcpy(out, s->full, n);
  out[n] = '\0';
  return 0;
}

static void put(worker_t *w, const session_t *s) {
  char bare[3072];
  if (bare_of(s, bare, sizeof bare) != 0) return;
  credis_session_t e = {s->at.node, s->at.thread, s->at.conn, s->priority, s->available};
  credis_dir_set(w->dir, bare, s->resource, &e);
}

static void resync_cb(const char *bare, void *v, void *ud) {
  worker_t *w = ud;
  for (session_t *s = ((user_t *)v)->sessions; s; s = s->next) put(w, s);
}

static void on_state(void *ud, int up) {
  worker_t *w = ud;
  if (!up) return;
  /* Redis came back, perhaps empty: write everything this worker knows again */
  strmap_each(w->users, resync_cb, w);
}

void dir_open(worker_t *w) {
  if (!w->cfg->cluster_node) return;
  static const credis_cbs_t cbs = {on_state, NULL, NULL};
  w->dir = credis_new(&w->loop, w->cfg->cluster_redis, w->cfg->cluster_name, &cbs, w);
}

void dir_session(worker_t *w, const session_t *s) {
  if (w->dir) put(w, s);
}

void dir_session_gone(worker_t *w, const session_t *s) {
  char bare[3072];
  if (!w->dir || bare_of(s, bare, sizeof bare) != 0) return;
  credis_dir_del(w->dir, bare, s->resource);
}

void dir_close(worker_t *w) {
  if (w->dir) credis_close(w->dir);
  w->dir = NULL;
}

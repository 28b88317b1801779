/* The ONE script loader of xmppd's Redis clients: the store (common/store/store_redis.c,
 * hiredis' synchronous API) and the cluster directory (common/credis.c, the asynchronous
 * API) each have a table of Lua scripts; both name a script by the SHA1 of its text
 * (computed here, not asked of Redis, so one EVALSHA is valid on every node that loaded
 * it) and load the whole table on every new connection and again after a NOSCRIPT (a
 * restarted or promoted node, SCRIPT FLUSH), with the same SCRIPT LOAD pipeline and the
 * same check that Redis names each text as we do.
 *
 * A set is a caller's static table of texts plus its SHAs; no locks, any thread. */
#ifndef XMPP_REDIS_SCRIPTS_H
#define XMPP_REDIS_SCRIPTS_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#define RSCRIPTS_MAX 32

typedef struct rscripts {
  const char *const *text; /* the caller's table (static) */
  int n;                   /* at most RSCRIPTS_MAX */
  char sha[RSCRIPTS_MAX][41];
} rscripts_t;

/* Fills s with the table's texts and their SHAs. */
void rscripts_init(rscripts_t *s, const char *const *text, int n);
/* Synchronous: SCRIPT LOAD of every text in one pipeline on c, every reply read and
 * checked against the SHA. 0, or -1 with *err (caller frees; prefixed with who). */
int rscripts_load_sync(const rscripts_t *s, redisContext *c, const char *who, char **err);
/* Asynchronous: appends SCRIPT LOAD of every text to ac (they leave with the next write,
 * ahead of what is appended after them); fn gets each reply with priv (check it with
 * rscripts_reply_ok). Returns the number of commands appended. */
int rscripts_load_async(const rscripts_t *s, redisAsyncContext *ac, redisCallbackFn *fn, void *priv);
/* Whether rep is the SCRIPT LOAD answer naming one of the set's SHAs. */
int rscripts_reply_ok(const rscripts_t *s, const redisReply *rep);

#endif

/* The one script loader of xmppd's Redis clients (redis_scripts.h). */
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/redis_scripts.h"
#include "common/redis_slots.h"

void rscripts_init(rscripts_t *s, const char *const *text, int n) {
  memset(s, 0, sizeof *s);
  s->text = text;
  s->n = n > RSCRIPTS_MAX ? RSCRIPTS_MAX : n;
  for (int i = 0; i < s->n; i++) rslots_script_sha(text[i], s->sha[i]);
}

int rscripts_reply_ok(const rscripts_t *s, const redisReply *rep) {
  if (!rep || rep->type != REDIS_REPLY_STRING || rep->len != 40) return 0;
  for (int i = 0; i < s->n; i++)
    if (memcmp(rep->str, s->sha[i], 40) == 0) return 1;
  return 0;
}

int rscripts_load_sync(const rscripts_t *s, redisContext *c, const char *who, char **err) {
  for (int i = 0; i < s->n; i++) {
    const char *av[] = {"SCRIPT", "LOAD", s->text[i]};
    size_t al[] = {6, 4, strlen(s->text[i])};
    redisAppendCommandArgv(c, 3, av, al);
  }
  int rc = 0;
  for (int i = 0; i < s->n; i++) {
    redisReply *rep = NULL;
    if (redisGetReply(c, (void **)&rep) != REDIS_OK || !rep) {
      if (!rc) *err = xstrfmt("redis %s: SCRIPT LOAD: %s", who, c->errstr);
      return -1;
    }
    if (!rc && (rep->type != REDIS_REPLY_STRING || rep->len != 40 || memcmp(rep->str, s->sha[i], 40) != 0)) {
      *err = xstrfmt("redis %s: SCRIPT LOAD: %s", who, rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected SHA");
      rc = -1;
    }
    freeReplyObject(rep);
  }
  return rc;
}

int rscripts_load_async(const rscripts_t *s, redisAsyncContext *ac, redisCallbackFn *fn, void *priv) {
  int sent = 0;
  for (int i = 0; i < s->n; i++) {
    const char *av[] = {"SCRIPT", "LOAD", s->text[i]};
    size_t al[] = {6, 4, strlen(s->text[i])};
    if (redisAsyncCommandArgv(ac, fn, priv, 3, av, al) == REDIS_OK) sent++;
  }
  return sent;
}

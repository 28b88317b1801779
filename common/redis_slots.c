/* The slot layer of xmppd's Redis clients (redis_slots.h): pure functions, no I/O.
 * References: Redis Cluster specification ("Keys distribution model", "Hash tags",
 * "Redirection and resharding": MOVED, ASK, ASKING), the CLUSTER SLOTS reply, and the
 * Sentinel clients guidelines ("Redis service discovery via Sentinel"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hash.h>

#include "common/alloc.h"
#include "common/redis_slots.h"

/* ---- slots -------------------------------------------------------------------------- */

uint16_t rslots_crc16(const char *buf, size_t len) {
  uint16_t crc = 0;
  for (size_t i = 0; i < len; i++) {
    crc ^= (uint16_t)((unsigned char)buf[i] << 8);
    for (int b = 0; b < 8; b++) crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
  }
  return crc;
}

int rslots_key_slot(const char *key, size_t len) {
  const char *open = memchr(key, '{', len);
  if (open) {
    size_t from = (size_t)(open - key) + 1;
    const char *close = memchr(open + 1, '}', len - from);
    if (close && close > open + 1) return rslots_crc16(open + 1, (size_t)(close - open - 1)) & (RSLOTS_COUNT - 1);
  }
  return rslots_crc16(key, len) & (RSLOTS_COUNT - 1);
}

static int name_is(const char *s, size_t len, const char *name) {
  return strlen(name) == len && strncasecmp(s, name, len) == 0;
}

int rslots_cmd_key(int argc, const char *const *argv, const size_t *lens) {
  if (argc < 2) return -1;
  static const char *const keyless[] = {"PING", "SCRIPT", "CLUSTER", "ASKING", "AUTH", "SELECT",
                                        "INFO", "ROLE", "SENTINEL", "READONLY", "READWRITE", NULL};
  for (int i = 0; keyless[i]; i++)
    if (name_is(argv[0], lens[0], keyless[i])) return -1;
  if (name_is(argv[0], lens[0], "EVALSHA") || name_is(argv[0], lens[0], "EVAL")) {
    if (argc < 4 || lens[2] == 0 || (lens[2] == 1 && argv[2][0] == '0')) return -1;
    return 3;
  }
  return 1;
}

/* ---- the slot map ------------------------------------------------------------------- */

void rslots_map_init(rslots_map_t *m) {
  memset(m, 0, sizeof *m);
  for (int i = 0; i < RSLOTS_COUNT; i++) m->owner[i] = -1;
}

void rslots_map_free(rslots_map_t *m) {
  xfree(m->nodes);
  rslots_map_init(m);
}

int rslots_map_node(rslots_map_t *m, const char *host, int port) {
  for (int i = 0; i < m->nnodes; i++)
    if (m->nodes[i].port == port && strcmp(m->nodes[i].host, host) == 0) return i;
  if (m->nnodes >= RSLOTS_MAX_NODES) return -1;
  if (m->nnodes == m->cap) {
    m->cap = m->cap ? m->cap * 2 : 8;
    m->nodes = xrealloc(m->nodes, (size_t)m->cap * sizeof *m->nodes);
  }
  rslots_node_t *n = &m->nodes[m->nnodes];
  snprintf(n->host, sizeof n->host, "%s", host);
  n->port = port;
  return m->nnodes++;
}

static int int_of(const redisReply *r, long long *v) {
  if (r->type != REDIS_REPLY_INTEGER) return -1;
  *v = r->integer;
  return 0;
}

int rslots_map_load(rslots_map_t *m, const redisReply *rep, const char *asked_host, char **err) {
  if (!rep || rep->type != REDIS_REPLY_ARRAY) {
    *err = xstrfmt("CLUSTER SLOTS: %s", rep && rep->type == REDIS_REPLY_ERROR && rep->str ? rep->str
                                                                                          : "not an array");
    return -1;
  }
  /* Checked whole before anything changes. */
  for (size_t i = 0; i < rep->elements; i++) {
    const redisReply *e = rep->element[i];
    long long lo, hi, port;
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || int_of(e->element[0], &lo) ||
        int_of(e->element[1], &hi) || lo < 0 || hi < lo || hi >= RSLOTS_COUNT) {
      *err = xstrfmt("CLUSTER SLOTS: entry %zu is not [start, end, node...]", i);
      return -1;
    }
    const redisReply *n = e->element[2];
    if (n->type != REDIS_REPLY_ARRAY || n->elements < 2 || n->element[0]->type != REDIS_REPLY_STRING ||
        int_of(n->element[1], &port) || port < 1 || port > 65535 || n->element[0]->len >= RSLOTS_HOST_MAX) {
      *err = xstrfmt("CLUSTER SLOTS: entry %zu has no primary [host, port]", i);
      return -1;
    }
  }
  int16_t owner[RSLOTS_COUNT];
  for (int s = 0; s < RSLOTS_COUNT; s++) owner[s] = -1;
  for (size_t i = 0; i < rep->elements; i++) {
    const redisReply *e = rep->element[i], *n = e->element[2];
    const char *host = n->element[0]->str;
    /* Redis 7: "" (or "?": unknown endpoint) means the node that answered. */
    if (!host[0] || strcmp(host, "?") == 0) host = asked_host ? asked_host : "127.0.0.1";
    int idx = rslots_map_node(m, host, (int)n->element[1]->integer);
    if (idx < 0) {
      *err = xstrfmt("CLUSTER SLOTS: more than %d primaries", RSLOTS_MAX_NODES);
      return -1;
    }
    for (long long s = e->element[0]->integer; s <= e->element[1]->integer; s++) owner[s] = (int16_t)idx;
  }
  memcpy(m->owner, owner, sizeof owner);
  return 0;
}

int rslots_map_covered(const rslots_map_t *m) {
  int n = 0;
  for (int s = 0; s < RSLOTS_COUNT; s++) n += m->owner[s] >= 0;
  return n;
}

/* ---- replies and the retry policy --------------------------------------------------- */

int rslots_parse_redirect(const char *s, size_t len, rslots_redirect_t *to) {
  char buf[RSLOTS_HOST_MAX + 32];
  if (len >= sizeof buf) return -1;
  memcpy(buf, s, len);
  buf[len] = '\0';
  char *p;
  if (strncmp(buf, "MOVED ", 6) == 0) p = buf + 6;
  else if (strncmp(buf, "ASK ", 4) == 0) p = buf + 4;
  else return -1;
  char *end;
  long slot = strtol(p, &end, 10);
  if (end == p || *end != ' ' || slot < 0 || slot >= RSLOTS_COUNT) return -1;
  char *addr = end + 1;
  char *colon = strrchr(addr, ':');
  if (!colon || colon == addr) return -1;
  long port = strtol(colon + 1, &end, 10);
  if (!colon[1] || *end || port < 1 || port > 65535) return -1;
  *colon = '\0';
  if (addr[0] == '[') { /* [v6]:port */
    size_t l = strlen(addr);
    if (l < 3 || addr[l - 1] != ']') return -1;
    addr[l - 1] = '\0';
    addr++;
  }
  to->slot = (int)slot;
  to->port = (int)port;
  snprintf(to->host, sizeof to->host, "%s", addr);
  return 0;
}

static int err_is(const redisReply *rep, const char *prefix) {
  size_t l = strlen(prefix);
  return rep->len >= l && strncmp(rep->str, prefix, l) == 0 && (rep->len == l || rep->str[l] == ' ');
}

static unsigned backoff(int n) {
  unsigned ms = RSLOTS_WAIT_FIRST_MS;
  for (int i = 0; i < n && ms < RSLOTS_WAIT_MAX_MS; i++) ms *= 2;
  return ms > RSLOTS_WAIT_MAX_MS ? RSLOTS_WAIT_MAX_MS : ms;
}

rslots_action_t rslots_next(rslots_try_t *t, const redisReply *rep, rslots_redirect_t *to,
                            unsigned *wait_ms) {
  if (rep && (rep->type != REDIS_REPLY_ERROR || !rep->str)) return RSLOTS_DONE;
  if (rep && (err_is(rep, "MOVED") || err_is(rep, "ASK"))) {
    if (rslots_parse_redirect(rep->str, rep->len, to) != 0) return RSLOTS_DONE; /* reported as is */
    if (t->redirects++ >= RSLOTS_MAX_REDIRECTS) return RSLOTS_GIVE_UP;
    return rep->str[0] == 'M' ? RSLOTS_MOVED : RSLOTS_ASK;
  }
  if (rep && err_is(rep, "NOSCRIPT")) return t->noscripts++ ? RSLOTS_GIVE_UP : RSLOTS_NOSCRIPT;
  if (rep && err_is(rep, "READONLY")) {
    /* a write reached a replica: it was refused, so sending it again is safe */
    if (t->primaries++ >= RSLOTS_MAX_WAITS) return RSLOTS_GIVE_UP;
    if (t->primaries > 1) {
      *wait_ms = backoff(t->primaries - 2);
      return RSLOTS_WAIT;
    }
    return RSLOTS_PRIMARY;
  }
  if (!rep || err_is(rep, "TRYAGAIN") || err_is(rep, "CLUSTERDOWN") || err_is(rep, "MASTERDOWN") ||
      err_is(rep, "LOADING")) {
    if (t->waits >= RSLOTS_MAX_WAITS) return RSLOTS_GIVE_UP;
    *wait_ms = backoff(t->waits++);
    return RSLOTS_WAIT;
  }
  return RSLOTS_DONE;
}

/* ---- Sentinel ----------------------------------------------------------------------- */

int rslots_sentinel_addr(const redisReply *rep, char host[RSLOTS_HOST_MAX], int *port) {
  if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
      rep->element[0]->type != REDIS_REPLY_STRING || rep->element[1]->type != REDIS_REPLY_STRING ||
      rep->element[0]->len == 0 || rep->element[0]->len >= RSLOTS_HOST_MAX)
    return -1;
  char *end;
  long p = strtol(rep->element[1]->str, &end, 10);
  if (!rep->element[1]->len || *end || p < 1 || p > 65535) return -1;
  memcpy(host, rep->element[0]->str, rep->element[0]->len);
  host[rep->element[0]->len] = '\0';
  *port = (int)p;
  return 0;
}

/* ---- scripts ------------------------------------------------------------------------ */

void rslots_script_sha(const char *text, char out[41]) {
  unsigned char h[20];
  wc_ShaHash((const unsigned char *)text, (unsigned)strlen(text), h);
  for (int i = 0; i < 20; i++) snprintf(out + 2 * i, 3, "%02x", h[i]);
}

/* XEP-0313 Message Archive Management (urn:xmpp:mam:2) for one-to-one messages, with
 * XEP-0359 stanza ids.
 *
 * Archiving. Each account has its own archive, written at its own shard: the sender's
 * copy at HOOK_MESSAGE_OUT (the sender's shard), the recipient's at HOOK_MESSAGE_IN (the
 * recipient's shard, before the delivery rules, so once per message whatever the number
 * of resources it then reaches, and also when it goes to offline storage). In a cluster
 * the two are different shards, each writing its own account's archive. What is kept
 * (XEP-0313 §5.1.1, as Prosody and ejabberd do): messages of type chat or normal with a
 * <body/> (or an OMEMO payload, or a XEP-0334 <store/> hint), never errors, headlines or
 * groupchat, never with a <no-store/> or <no-permanent-store/> hint; and only what the
 * owner's preferences (§5) allow. A message to oneself is archived once (inbound).
 *
 * Ids. An archive id is the router's clock in microseconds, made monotonic per worker
 * (the store keeps it monotonic per account), written in base 62: the recipient's copy
 * gets <stanza-id xmlns='urn:xmpp:sid:0' by='ACCOUNT' id='ID'/> (XEP-0359 §4) before it
 * is delivered or stored offline, so a client that reads the archive after taking its
 * offline messages can tell them apart by id. A <stanza-id/> a client put in with by=
 * a JID of this domain (forged: only this server says what its archives hold) is
 * removed, on the way out and on the way in (XEP-0359 §5). origin-id is kept.
 * Writes (docs/architecture.md, "Archive writes"). A worker collects the archive rows of
 * a batch of frames and hands them, at its end, to the router's one archive writer: a
 * thread of this module with its own store handle, which commits what it was handed in
 * groups (one transaction, or one Redis pipeline, per group), each at most
 * server.mam_commit_ms after its first row was handed over. Why: a commit per batch of
 * frames from each worker was most of the archive's CPU (bench/mam.sh, perf: SQLite's WAL
 * frame writes, checkpoints, and each connection reading again the pages the other
 * worker's commit had made stale; the workers waiting on each other's write lock), and
 * a group of a second writes each account's hot pages once for many messages. The writer's
 * queue is bounded (MAM_QUEUE_BYTES): a worker that finds it full waits for the commit
 * in progress (back-pressure, nothing dropped). A query first waits until everything
 * handed over before it is committed, so a client never misses
 * in its archive a message it was sent. On a clean stop the workers hand over what they
 * hold and the writer commits it all before the router is freed. What a crash of the
 * process can lose is the archive rows of the last mam_commit_ms (plus the commit in
 * progress), never a message (delivery and offline storage do not wait for the archive).
 * A commit that fails with XMPP_AGAIN (the store unavailable) keeps its rows for retry
 * (mam_retry_t), written again in order before anything newer, within mam_retry_bytes.
 * mam_commit_ms = 0: no writer, each worker commits its own rows at the end of each batch.
 *
 * Queries (§4): a data form with FORM_TYPE, with, start, end, before-id, after-id and ids
 * (#extended), paged with XEP-0059 (max, after, before: an empty <before/> is the last
 * page). Results go to the querying resource as <message><result queryid id><forwarded>
 * <delay stamp/><message/></forwarded></result></message>, in chronological order, then
 * the IQ result with <fin complete='true'?> and the page's first and last ids. A page is
 * at most limits.mam_max_page (a larger <max/> gets that many); an unknown field, a
 * malformed value or RSM element gets <bad-request/>, an id not in the archive
 * <item-not-found/> (XEP-0059 §2.5), <index/> and <flip-page/> <feature-not-implemented/>.
 *
 * Retention: limits.mam_max_messages per account and limits.mam_max_age_days, pruned by
 * the store as messages are appended (store.h: amortised, never a scan of the archive),
 * and what is older than the age limit is never returned. */
#include "router/module.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/jid.h"
#include "common/log.h"
#include "common/metrics.h"

#define NS_MAM "urn:xmpp:mam:2"
#define NS_MAM_EXT "urn:xmpp:mam:2#extended"
#define NS_SID "urn:xmpp:sid:0"
#define NS_RSM "http://jabber.org/protocol/rsm"
#define NS_FORWARD "urn:xmpp:forward:0"
#define NS_DATA "jabber:x:data"
#define NS_HINTS "urn:xmpp:hints"

#define MAM_DEFAULT_PAGE 50
#define MAM_FLUSH_AT 256        /* pending writes that are handed over before the batch ends */
#define MAM_QUEUE_BYTES (16u << 20) /* the writer's queue: beyond, workers wait (back-pressure) */
#define MAM_GROUP_MAX 8192      /* rows the writer commits in one group at most */
#define MAM_WRITER_CACHE (32u << 20) /* the writer's store page cache (store_set_cache) */
#define MAM_RETRY_MIN_MS 100    /* back-off between attempts on a store that failed: from */
#define MAM_RETRY_MAX_MS 2000   /* ... doubling to */
#define MAM_RETRY_STOP_MS 5000  /* a stopping writer tries this long, then drops what it kept */
#define MAM_DROP_LOG_NS (10 * 1000000000ull) /* one "dropped" log line at most this often */
#define MAM_PREFS_CACHE 4096    /* accounts whose preferences a worker remembers */
#define PREF_ALWAYS ((void *)1)
#define PREF_NEVER ((void *)2)

extern const module_t mod_mam;

typedef struct prefs {
  int dflt;       /* STORE_MAM_* */
  strmap_t *jids; /* JID -> PREF_ALWAYS / PREF_NEVER; NULL when none */
} prefs_t;

/* Rows whose commit failed with XMPP_AGAIN (the store unreachable or busy: store.h),
 * kept in order and committed again, with back-off, before anything newer: by the writer,
 * or, without one, by the worker that made them. At most server.mam_retry_bytes are kept
 * (row_bytes); what comes beyond is dropped, counted (xmppd_mam_rows_dropped_total) and
 * logged at most once per 10 s. */
typedef struct mam_retry {
  store_mam_msg_t *rows; /* strings owned */
  size_t n, cap, bytes;
  uint64_t next_at;  /* uv_hrtime() of the next attempt */
  unsigned delay_ms; /* the next back-off */
  unsigned attempts; /* failed attempts since the store last took rows */
  uint64_t dropped, dropped_logged, drop_log_at;
} mam_retry_t;

/* The router's archive writer (one per router, shared by its workers): rows handed over
 * under mu, committed by its thread in groups. */
typedef struct mam_writer {
  uv_mutex_t mu;
  uv_cond_t wake; /* rows or a sync or stop for the thread */
  uv_cond_t done; /* a group was committed */
  uv_thread_t thread;
  store_t *store; /* the thread's own handle */
  const xmpp_config_t *cfg;
  store_mam_msg_t *q; /* handed over, not yet taken by the thread; strings owned */
  size_t n, cap, bytes;
  uint64_t first_at;    /* uv_hrtime() when the oldest of q was handed over */
  uint64_t handed;      /* rows handed over since the start */
  uint64_t committed;   /* rows whose group's commit has returned (or that it kept for retry) */
  int sync, stop;
  mam_retry_t retry;    /* the thread's own */
  size_t kept;          /* retry.n, as of the thread's last commit or attempt */
  uint64_t tries;       /* commits or attempts the thread has made */
} mam_writer_t;

typedef struct mam_w {
  mam_writer_t *writer; /* NULL: this worker commits its own rows */
  int64_t last_id;
  store_mam_msg_t *pend; /* strings owned */
  size_t npend, cap;
  mam_retry_t retry; /* without a writer */
  strmap_t *prefs; /* bare -> prefs_t, at most MAM_PREFS_CACHE */
  size_t nprefs;
} mam_w_t;

static mam_w_t *state(worker_t *w) { return mod_worker_state(w, &mod_mam); }

/* ---- ids ---------------------------------------------------------------------------- */

static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static void id_str(int64_t id, char out[16]) {
  char tmp[16];
  int n = 0;
  uint64_t v = (uint64_t)id;
  do {
    tmp[n++] = b62[v % 62];
    v /= 62;
  } while (v);
  for (int i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
  out[n] = '\0';
}

/* The archive id written s, or 0 when s is not one. */
static int64_t id_parse(const char *s) {
  if (!s || !*s || *s == '0' || strlen(s) > 11) return 0;
  uint64_t v = 0;
  for (; *s; s++) {
    const char *p = strchr(b62, *s);
    if (!p || !*s) return 0;
    uint64_t d = (uint64_t)(p - b62);
    if (v > (UINT64_MAX - d) / 62) return 0;
    v = v * 62 + d;
  }
  return v > (uint64_t)INT64_MAX ? 0 : (int64_t)v;
}

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t next_id(mam_w_t *m) {
  int64_t t = now_us();
  m->last_id = t > m->last_id ? t : m->last_id + 1;
  return m->last_id;
}

/* XEP-0082 date-time: CCYY-MM-DDThh:mm:ss[.sss](Z|(+|-)hh:mm) -> microseconds; -1 bad. */
static int64_t parse_stamp(const char *s) {
  int y, mo, d, h, mi, sec, n = 0;
  if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19) return -1;
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60 || y < 1970) return -1;
  const char *p = s + n;
  int64_t frac = 0;
  if (*p == '.') {
    int digits = 0;
    for (p++; *p >= '0' && *p <= '9'; p++, digits++)
      if (digits < 6) frac = frac * 10 + (*p - '0');
    if (!digits) return -1;
    for (; digits < 6; digits++) frac *= 10;
  }
  int64_t off = 0;
  if (*p == 'Z') {
    p++;
  } else if (*p == '+' || *p == '-') {
    int oh, om, k = 0;
    if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &k) != 2 || k != 5 || oh > 23 || om > 59) return -1;
    off = (int64_t)(oh * 60 + om) * 60 * (*p == '+' ? 1 : -1);
    p += 6;
  } else {
    return -1;
  }
  if (*p) return -1;
  struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi, .tm_sec = sec};
  time_t t = timegm(&tm);
  if (t == (time_t)-1) return -1;
  return ((int64_t)t - off) * 1000000 + frac;
}

static void fmt_stamp(int64_t us, char out[40]) {
  time_t t = (time_t)(us / 1000000);
  struct tm tm;
  gmtime_r(&t, &tm);
  size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, 40 - n, ".%03dZ", (int)(us % 1000000 / 1000));
}

/* ---- what is archived --------------------------------------------------------------- */

static int archivable(const xnode_t *st) {
  const char *type = xnode_attr(st, "type");
  if (type && strcmp(type, "chat") && strcmp(type, "normal")) return 0; /* error, headline, groupchat */
  if (xnode_child(st, "no-store", NS_HINTS) || xnode_child(st, "no-permanent-store", NS_HINTS)) return 0;
  return xnode_child(st, "body", NS_CLIENT) || xnode_child(st, "store", NS_HINTS) ||
         xnode_child(st, "encrypted", "eu.siacs.conversations.axolotl") ||
         xnode_child(st, "encrypted", "urn:xmpp:omemo:2");
}

/* Removes the <stanza-id/>s a client put in whose 'by' is a JID of this domain (only
 * this server may say what its archives hold: XEP-0359 §5, XEP-0313 §5.1.1); 1 when
 * there was one. 'by' is normalised first (by='ALICE@Domain' is alice's too). */
static int strip_forged(worker_t *w, xnode_t *st) {
  int changed = 0;
  for (xnode_t *c = xnode_first_elem(st), *next; c; c = next) {
    next = xnode_next_elem(c);
    if (strcmp(c->name, "stanza-id") || strcmp(c->ns, NS_SID)) continue;
    const char *b = xnode_attr(c, "by");
    jid_t j;
    int ours = 1; /* no 'by', or one that is no JID: not a claim anyone can check, gone */
    if (b && jid_parse(b, strlen(b), &j) == 0) {
      ours = w_is_local(w, j.bare);
      jid_free(&j);
    }
    if (ours) {
      xnode_remove(c);
      changed = 1;
    }
  }
  return changed;
}

static void prefs_free(void *p) {
  prefs_t *x = p;
  if (x->jids) strmap_free(x->jids, NULL);
  xfree(x);
}

static void jid_cb(const char *jid, int always, void *ud) {
  prefs_t *p = ud;
  if (!p->jids) p->jids = strmap_new();
  strmap_put(p->jids, jid, always ? PREF_ALWAYS : PREF_NEVER);
}

/* u's preferences: from the worker's cache, else the store (none: always). NULL when
 * the store could not say (the message is then archived). */
static prefs_t *prefs_of(worker_t *w, mam_w_t *m, const char *bare) {
  prefs_t *p = strmap_get(m->prefs, bare);
  if (p) return p;
  p = xcalloc(1, sizeof *p);
  int rc = store_mam_prefs_get(w->store, bare, &p->dflt, jid_cb, p);
  if (rc == XMPP_ENOENT) {
    p->dflt = STORE_MAM_ALWAYS;
    if (p->jids) strmap_free(p->jids, NULL);
    p->jids = NULL;
  } else if (rc != 0) {
    log_error("archive preferences of %s could not be read", bare);
    prefs_free(p);
    return NULL;
  }
  if (m->nprefs >= MAM_PREFS_CACHE) { /* forget them all: they are read again as needed */
    strmap_free(m->prefs, prefs_free);
    m->prefs = strmap_new();
    m->nprefs = 0;
  }
  strmap_put(m->prefs, bare, p);
  m->nprefs++;
  return p;
}

/* Whether u's preferences archive a message with 'with' (a full or bare JID). */
static int wants(worker_t *w, mam_w_t *m, user_t *u, const char *with) {
  prefs_t *p = prefs_of(w, m, u->bare);
  if (!p) return 1;
  const char *bare = w_bare(w, with);
  void *v = p->jids ? strmap_get(p->jids, with) : NULL;
  if (!v && p->jids) v = strmap_get(p->jids, bare);
  if (v == PREF_NEVER) return 0;
  if (v == PREF_ALWAYS) return 1;
  if (p->dflt == STORE_MAM_ALWAYS) return 1;
  if (p->dflt == STORE_MAM_NEVER) return 0;
  return roster_has(w, u, bare);
}

static void rows_free(store_mam_msg_t *rows, size_t n) {
  for (size_t i = 0; i < n; i++) {
    store_mam_msg_t *x = &rows[i];
    xfree((char *)x->owner);
    xfree((char *)x->with);
    xfree((char *)x->with_full);
    xfree((char *)x->data);
  }
}

static size_t row_bytes(const store_mam_msg_t *x) {
  return sizeof *x + strlen(x->owner) + strlen(x->with) + (x->with_full ? strlen(x->with_full) : 0) + x->len;
}

/* Writes n rows in one transaction (one pipeline): store_mam_append's code. */
static int commit_rows(store_t *st, const xmpp_config_t *cfg, store_mam_msg_t *rows, size_t n, int replay) {
  store_mam_limits_t lim = {(unsigned)cfg->mam_max_messages, 0, replay};
  if (cfg->mam_max_age_days) lim.min_id = now_us() - (int64_t)cfg->mam_max_age_days * 86400 * 1000000;
  return store_mam_append(st, rows, n, &lim);
}

/* Frees n rows that will never be stored, counted and logged (rate-limited). */
static void retry_drop(mam_retry_t *rt, const xmpp_config_t *cfg, store_mam_msg_t *rows, size_t n) {
  rows_free(rows, n);
  rt->dropped += n;
  metrics_add(M_MAM_DROPPED, (int64_t)n);
  uint64_t now = uv_hrtime();
  if (rt->drop_log_at && now < rt->drop_log_at + MAM_DROP_LOG_NS) return;
  rt->drop_log_at = now;
  log_error("archive: %llu messages dropped (%llu since the start): the store has been unavailable, "
            "and the rows kept for retry reached server.mam_retry_bytes (%d)",
            (unsigned long long)(rt->dropped - rt->dropped_logged), (unsigned long long)rt->dropped,
            cfg->mam_retry_bytes);
  rt->dropped_logged = rt->dropped;
}

/* Keeps n rows (taking their strings) behind those already kept, within the budget. */
static void retry_keep(mam_retry_t *rt, const xmpp_config_t *cfg, store_mam_msg_t *rows, size_t n) {
  size_t k = 0;
  for (; k < n; k++) {
    size_t b = row_bytes(&rows[k]);
    if (rt->bytes + b > (size_t)cfg->mam_retry_bytes) break;
    if (rt->n == rt->cap) {
      rt->cap = rt->cap ? rt->cap * 2 : 256;
      rt->rows = xrealloc(rt->rows, rt->cap * sizeof *rt->rows);
    }
    rt->rows[rt->n++] = rows[k];
    rt->bytes += b;
  }
  if (k < n) retry_drop(rt, cfg, rows + k, n - k);
}

/* Commits the kept rows, oldest first, in groups of MAM_GROUP_MAX, if their time has come
 * (now: at once). After XMPP_AGAIN the next attempt is a back-off later; another error
 * is permanent: the group is dropped, logged. */
static void retry_run(mam_retry_t *rt, store_t *st, const xmpp_config_t *cfg, int now) {
  if (!rt->n || (!now && uv_hrtime() < rt->next_at)) return;
  size_t done = 0;
  while (done < rt->n) {
    size_t k = rt->n - done < MAM_GROUP_MAX ? rt->n - done : MAM_GROUP_MAX;
    int rc = commit_rows(st, cfg, rt->rows + done, k, 1);
    if (rc == XMPP_AGAIN) {
      rt->attempts++;
      rt->next_at = uv_hrtime() + (uint64_t)rt->delay_ms * 1000000;
      rt->delay_ms = rt->delay_ms * 2 < MAM_RETRY_MAX_MS ? rt->delay_ms * 2 : MAM_RETRY_MAX_MS;
      break;
    }
    if (rc) log_error("archive: %zu messages could not be stored: %s", k, xmpp_strerror(rc));
    else if (rt->attempts) {
      log_info("archive: the store is back: %zu kept messages stored after %u attempts", k, rt->attempts + 1);
      rt->attempts = 0;
    }
    for (size_t i = done; i < done + k; i++) rt->bytes -= row_bytes(&rt->rows[i]);
    rows_free(rt->rows + done, k);
    done += k;
    rt->delay_ms = MAM_RETRY_MIN_MS;
  }
  if (done) memmove(rt->rows, rt->rows + done, (rt->n - done) * sizeof *rt->rows);
  rt->n -= done;
  if (!rt->n) rt->bytes = 0;
}

/* Commits n rows (taking their strings), after those kept for retry (in order: while any
 * are kept, these are kept behind them); on XMPP_AGAIN keeps them for retry. The kept
 * ones are tried first when their back-off is over, or now (a query waits, or these would
 * not fit in the budget: rows are dropped only after an attempt has failed). */
static void commit_or_keep(mam_retry_t *rt, store_t *st, const xmpp_config_t *cfg, store_mam_msg_t *rows, size_t n,
                           int now) {
  if (rt->n) {
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += row_bytes(&rows[i]);
    retry_run(rt, st, cfg, now || rt->bytes + bytes > (size_t)cfg->mam_retry_bytes);
    if (rt->n) {
      retry_keep(rt, cfg, rows, n);
      return;
    }
  }
  int rc = commit_rows(st, cfg, rows, n, 0);
  if (rc == XMPP_AGAIN) {
    log_warn("archive: the store is unavailable: %zu messages kept, tried again from %d ms", n, MAM_RETRY_MIN_MS);
    rt->attempts = 1;
    rt->delay_ms = MAM_RETRY_MIN_MS * 2;
    rt->next_at = uv_hrtime() + (uint64_t)MAM_RETRY_MIN_MS * 1000000;
    retry_keep(rt, cfg, rows, n);
    return;
  }
  if (rc) log_error("archive: %zu messages could not be stored: %s", n, xmpp_strerror(rc));
  rows_free(rows, n);
}

/* At the end: tries the kept rows until deadline (uv_hrtime), then drops what is left. */
static void retry_finish(mam_retry_t *rt, store_t *st, const xmpp_config_t *cfg, uint64_t deadline) {
  while (rt->n && uv_hrtime() < deadline) {
    uint64_t now = uv_hrtime();
    if (now < rt->next_at) uv_sleep((unsigned)((rt->next_at - now) / 1000000 + 1));
    retry_run(rt, st, cfg, 0);
  }
  if (rt->n) {
    rt->drop_log_at = 0;
    retry_drop(rt, cfg, rt->rows, rt->n);
  }
  rt->n = rt->bytes = 0;
  xfree(rt->rows);
  rt->rows = NULL;
}

/* Hands the worker's pending rows to the writer (or, without one, commits them, after
 * the rows it kept for retry: those are tried at the end of its batches of frames once
 * their back-off is over, and now when query). */
static void flush(worker_t *w, mam_w_t *m, int query) {
  mam_writer_t *wr = m->writer;
  if (!wr) {
    if (m->npend) commit_or_keep(&m->retry, w->store, w->cfg, m->pend, m->npend, query);
    else retry_run(&m->retry, w->store, w->cfg, query);
    m->npend = 0;
    return;
  }
  if (!m->npend) return;
  size_t bytes = 0;
  for (size_t i = 0; i < m->npend; i++) bytes += row_bytes(&m->pend[i]);
  uv_mutex_lock(&wr->mu);
  while (wr->n && wr->bytes + bytes > MAM_QUEUE_BYTES) { /* full: wait for the thread to take it */
    wr->sync = 1;
    uv_cond_signal(&wr->wake);
    uv_cond_wait(&wr->done, &wr->mu);
  }
  size_t was = wr->n;
  if (wr->n + m->npend > wr->cap) {
    while (wr->n + m->npend > wr->cap) wr->cap = wr->cap ? wr->cap * 2 : 256;
    wr->q = xrealloc(wr->q, wr->cap * sizeof *wr->q);
  }
  if (!was) wr->first_at = uv_hrtime();
  memcpy(wr->q + wr->n, m->pend, m->npend * sizeof *m->pend);
  wr->n += m->npend;
  wr->bytes += bytes;
  wr->handed += m->npend;
  if (!was || wr->n >= MAM_GROUP_MAX || wr->bytes >= MAM_QUEUE_BYTES / 2) uv_cond_signal(&wr->wake);
  uv_mutex_unlock(&wr->mu);
  m->npend = 0;
}

/* Returns once every row handed over before the call is committed (a query must find
 * them). Blocks the worker for at most the commit in progress and one more. */
static void writer_sync(mam_writer_t *wr) {
  if (!wr) return;
  uv_mutex_lock(&wr->mu);
  uint64_t upto = wr->handed;
  if (wr->kept) { /* rows kept for retry: one more attempt, now */
    uint64_t g = wr->tries;
    wr->sync = 1;
    uv_cond_signal(&wr->wake);
    while (wr->tries == g) uv_cond_wait(&wr->done, &wr->mu);
  }
  while (wr->committed < upto) {
    if (wr->n) { /* not taken yet: now, not at the window's end */
      wr->sync = 1;
      uv_cond_signal(&wr->wake);
    }
    uv_cond_wait(&wr->done, &wr->mu);
  }
  uv_mutex_unlock(&wr->mu);
}

static void writer_main(void *arg) {
  mam_writer_t *wr = arg;
  log_set_thread("archive");
  metrics_thread_init();
  const uint64_t window = (uint64_t)wr->cfg->mam_commit_ms * 1000000;
  store_mam_msg_t *rows = NULL;
  size_t cap = 0;
  uv_mutex_lock(&wr->mu);
  mam_retry_t *rt = &wr->retry;
  for (;;) {
    while (!wr->n && !wr->stop) {
      if (!rt->n) {
        uv_cond_wait(&wr->wake, &wr->mu);
        continue;
      }
      uint64_t now = uv_hrtime();
      if (now >= rt->next_at || wr->sync) { /* kept rows due (or a query waits), nothing new */
        int synced = wr->sync;
        wr->sync = 0;
        uv_mutex_unlock(&wr->mu);
        retry_run(rt, wr->store, wr->cfg, synced);
        uv_mutex_lock(&wr->mu);
        wr->kept = rt->n;
        wr->tries++;
        uv_cond_broadcast(&wr->done);
        continue;
      }
      uv_cond_timedwait(&wr->wake, &wr->mu, rt->next_at - now);
    }
    if (!wr->n) break; /* stopped, and everything committed (or kept: retry_finish) */
    /* the group: until its window ends, unless a query waits, the queue is full, or stop */
    for (;;) {
      uint64_t now = uv_hrtime();
      if (wr->sync || wr->stop || wr->n >= MAM_GROUP_MAX || wr->bytes >= MAM_QUEUE_BYTES / 2 ||
          now >= wr->first_at + window)
        break;
      uv_cond_timedwait(&wr->wake, &wr->mu, wr->first_at + window - now);
    }
    int early = !wr->sync && !wr->stop && (wr->n >= MAM_GROUP_MAX || wr->bytes >= MAM_QUEUE_BYTES / 2);
    size_t early_bytes = wr->bytes;
    int synced = wr->sync; /* a query waits: kept rows are tried now, whatever their back-off */
    wr->sync = 0;
    size_t n = wr->n;
    if (n > cap) {
      cap = n;
      rows = xrealloc(rows, cap * sizeof *rows);
    }
    memcpy(rows, wr->q, n * sizeof *rows);
    wr->n = 0;
    wr->bytes = 0;
    uv_mutex_unlock(&wr->mu);
    /* logged outside the lock: a blocked log pipe must not stop the workers' hand-overs */
    if (early)
      log_info("archive writer: %zu rows (%zu bytes) queued before the window's end: committed now", n,
                early_bytes);
    commit_or_keep(rt, wr->store, wr->cfg, rows, n, synced);
    uv_mutex_lock(&wr->mu);
    wr->committed += n; /* or kept: a query does not wait for the store to come back */
    wr->kept = rt->n;
    wr->tries++;
    uv_cond_broadcast(&wr->done);
  }
  uv_mutex_unlock(&wr->mu);
  retry_finish(rt, wr->store, wr->cfg, uv_hrtime() + (uint64_t)MAM_RETRY_STOP_MS * 1000000);
  xfree(rows);
}

static void *writer_start(router_t *r) {
  const xmpp_config_t *cfg = r->cfg;
  if (!cfg->mam_enabled || !cfg->mam_commit_ms) return NULL;
  char *err = NULL;
  store_t *st = store_open(cfg->store_backend, config_store_target(cfg), &err);
  if (!st) { /* the workers then commit their own rows */
    log_error("archive writer: storage: %s", err ? err : "cannot open");
    xfree(err);
    return NULL;
  }
  if (store_set_cache(st, MAM_WRITER_CACHE) != 0) log_warn("archive writer: its page cache stays the default");
  mam_writer_t *wr = xcalloc(1, sizeof *wr);
  wr->store = st;
  wr->cfg = cfg;
  if (uv_mutex_init(&wr->mu) || uv_cond_init(&wr->wake) || uv_cond_init(&wr->done) ||
      uv_thread_create(&wr->thread, writer_main, wr)) {
    log_error("archive writer: cannot start its thread");
    abort();
  }
  return wr;
}

/* After every worker's worker_free: commits what they handed over, then ends. */
static void writer_stop(router_t *r, void *p) {
  mam_writer_t *wr = p;
  (void)r;
  if (!wr) return;
  uv_mutex_lock(&wr->mu);
  wr->stop = 1;
  uv_cond_signal(&wr->wake);
  uv_mutex_unlock(&wr->mu);
  uv_thread_join(&wr->thread);
  store_close(wr->store);
  xfree(wr->q);
  uv_cond_destroy(&wr->done);
  uv_cond_destroy(&wr->wake);
  uv_mutex_destroy(&wr->mu);
  xfree(wr);
}

/* Queues st (from -> to) for owner's archive under id. */
static void archive(worker_t *w, mam_w_t *m, const char *owner, int64_t id, const char *with, const char *from,
                    const char *to, const xnode_t *st) {
  if (m->npend == m->cap) {
    m->cap = m->cap ? m->cap * 2 : 64;
    m->pend = xrealloc(m->pend, m->cap * sizeof *m->pend);
  }
  buf_t fr;
  buf_init(&fr);
  w_encode_stored(from, to, st, &fr);
  size_t len;
  uint8_t *data = buf_steal(&fr, &len);
  m->pend[m->npend++] = (store_mam_msg_t){
      .owner = xstrdup(owner),
      .id = id,
      .with = xstrdup(w_bare(w, with)),
      .with_full = strchr(with, '/') ? xstrdup(with) : NULL,
      .data = (const char *)data,
      .len = len,
  };
  if (m->npend >= MAM_FLUSH_AT) flush(w, m, 0);
}

/* ---- hooks -------------------------------------------------------------------------- */

/* The sender's copy, at the sender's shard. */
static int on_message_out(mod_event_t *e) {
  worker_t *w = e->w;
  mam_w_t *m = state(w);
  if (!w->cfg->mam_enabled) return MOD_OK;
  if (strip_forged(w, e->st)) w->frame_tree = NULL;
  if (!archivable(e->st) || w_is_server(w, e->to) || !w_is_local(w, e->to)) return MOD_OK;
  if (!strcmp(w_bare(w, e->to), e->u->bare)) return MOD_OK; /* to oneself: archived once, inbound */
  if (!wants(w, m, e->u, e->to)) return MOD_OK;
  archive(w, m, e->u->bare, next_id(m), e->to, e->from, e->to, e->st);
  return MOD_OK;
}

/* The recipient's copy, at the recipient's shard, once per message: stamped with its
 * stanza-id before it goes to the resources or to offline storage. */
static int on_message_in(mod_event_t *e) {
  worker_t *w = e->w;
  if (e->skip || !w->cfg->mam_enabled) return MOD_OK; /* a bounce: archived (and stamped) when it came in */
  mam_w_t *m = state(w);
  user_t *u = e->u;
  if (strip_forged(w, e->st)) w->frame_tree = NULL;
  if (!archivable(e->st) || !user_exists(w, u) || !wants(w, m, u, e->from)) return MOD_OK;
  int64_t id = next_id(m);
  archive(w, m, u->bare, id, e->from, e->from, e->to, e->st);
  char ids[16];
  id_str(id, ids);
  xnode_t *sid = xnode_add(&w->arena, e->st, "stanza-id", NS_SID);
  xnode_set_attr(&w->arena, sid, "by", u->bare);
  xnode_set_attr(&w->arena, sid, "id", ids);
  w->frame_tree = NULL; /* changed: encoded again */
  return MOD_OK;
}

static int on_batch_end(mod_event_t *e) {
  flush(e->w, state(e->w), 0);
  return MOD_OK;
}

/* ---- queries (§4) ------------------------------------------------------------------- */

typedef struct {
  mod_iq_ctx_t *c;
  const char *queryid;
  char first[16], last[16];
  int n;
} results_t;

static void result_cb(int64_t id, const char *with, const char *data, size_t len, void *ud) {
  results_t *r = ud;
  worker_t *w = r->c->w;
  arena_t *a = &w->arena;
  bus_frame_t f;
  size_t used;
  xnode_t *st;
  if (bus_frame_decode((const uint8_t *)data, len, &f, &used) != 0 ||
      xnode_decode(a, f.payload, f.payload_len, 256, &st) != 0) {
    log_error("archive of %s: message %lld undecodable, skipped", r->c->u->bare, (long long)id);
    return;
  }
  char ids[16], stamp[40];
  id_str(id, ids);
  fmt_stamp(id, stamp);
  xnode_set_attr(a, st, "from", arena_strndup(a, f.from, f.from_len));
  xnode_set_attr(a, st, "to", arena_strndup(a, f.to, f.to_len));
  xnode_t *sid = xnode_add(a, st, "stanza-id", NS_SID);
  xnode_set_attr(a, sid, "by", r->c->u->bare);
  xnode_set_attr(a, sid, "id", ids);
  xnode_t *msg = xnode_new(a, "message", NS_CLIENT);
  xnode_set_attr(a, msg, "id", ids);
  xnode_t *res = xnode_add(a, msg, "result", NS_MAM);
  if (r->queryid) xnode_set_attr(a, res, "queryid", r->queryid);
  xnode_set_attr(a, res, "id", ids);
  xnode_t *fw = xnode_add(a, res, "forwarded", NS_FORWARD);
  xnode_set_attr(a, xnode_add(a, fw, "delay", NS_DELAY), "stamp", stamp);
  xnode_append(fw, st);
  if (r->c->s) w_deliver(w, r->c->s, r->c->u->bare, r->c->s->full, msg);
  if (!r->n) memcpy(r->first, ids, sizeof ids);
  memcpy(r->last, ids, sizeof ids);
  r->n++;
  (void)with;
}

/* The one value of a form field (NULL: none, or more than one). */
static const char *field_value(arena_t *a, const xnode_t *field) {
  const xnode_t *v = NULL;
  for (xnode_t *c = xnode_first_elem(field); c; c = xnode_next_elem(c)) {
    if (strcmp(c->name, "value")) continue;
    if (v) return NULL;
    v = c;
  }
  return v ? xnode_text(a, v) : NULL;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* A bound given as an id: the id, or 0 (answered) when it is malformed or not in the
 * archive (XEP-0059 §2.5: item-not-found). */
static int64_t known_id(mod_iq_ctx_t *c, const char *s) {
  int64_t id = id_parse(s);
  int rc = id ? store_mam_has(c->w->store, c->u->bare, id) : 0;
  if (rc < 0) mod_iq_error(c, "wait", "internal-server-error");
  else if (rc == 0) mod_iq_error(c, "cancel", "item-not-found");
  return rc == 1 ? id : 0;
}

static void query(mod_iq_ctx_t *c) {
  worker_t *w = c->w;
  arena_t *a = &w->arena;
  flush(w, state(w), 1);
  writer_sync(state(w)->writer);
  const xmpp_config_t *cfg = w->cfg;
  unsigned cap = (unsigned)cfg->mam_max_page;
  store_mam_query_t q = {.before = INT64_MAX, .max = cap < MAM_DEFAULT_PAGE ? cap : MAM_DEFAULT_PAGE};
  int64_t *ids = NULL;
  size_t nids = 0;
  int ids_given = 0;
  const xnode_t *x = xnode_child(c->payload, "x", NS_DATA);
  for (xnode_t *fld = x ? xnode_first_elem(x) : NULL; fld; fld = xnode_next_elem(fld)) {
    if (strcmp(fld->name, "field")) continue;
    const char *var = xnode_attr(fld, "var");
    if (!var) goto bad;
    if (!strcmp(var, "ids")) { /* #extended: several values */
      ids_given = 1;
      size_t k = 0;
      for (xnode_t *v = xnode_first_elem(fld); v; v = xnode_next_elem(v)) k += !strcmp(v->name, "value");
      if (k > cap) goto bad;
      ids = arena_alloc(a, (k ? k : 1) * sizeof *ids);
      for (xnode_t *v = xnode_first_elem(fld); v; v = xnode_next_elem(v)) {
        if (strcmp(v->name, "value")) continue;
        int64_t id = id_parse(xnode_text(a, v));
        if (id) ids[nids++] = id; /* a malformed id is one that is not there */
      }
      continue;
    }
    const char *val = field_value(a, fld);
    if (!strcmp(var, "FORM_TYPE")) {
      if (!val || strcmp(val, NS_MAM)) goto bad;
    } else if (!strcmp(var, "with")) {
      jid_t j;
      if (!val || jid_parse(val, strlen(val), &j) != 0) goto bad;
      q.with = arena_strndup(a, j.full, strlen(j.full));
      jid_free(&j);
    } else if (!strcmp(var, "start") || !strcmp(var, "end")) {
      int64_t t = val ? parse_stamp(val) : -1;
      if (t < 0) goto bad;
      if (var[0] == 's') q.after = max64(q.after, t - 1);
      else q.before = min64(q.before, t + 1);
    } else if (!strcmp(var, "after-id") || !strcmp(var, "before-id")) {
      if (!val) goto bad;
      int64_t id = known_id(c, val);
      if (!id) return;
      if (var[0] == 'a') q.after = max64(q.after, id);
      else q.before = min64(q.before, id);
    } else {
      goto bad; /* a field this archive does not know */
    }
  }
  if (xnode_child(c->payload, "flip-page", NS_MAM)) {
    mod_iq_error(c, "cancel", "feature-not-implemented");
    return;
  }
  const xnode_t *set = xnode_child(c->payload, "set", NS_RSM);
  for (xnode_t *e = set ? xnode_first_elem(set) : NULL; e; e = xnode_next_elem(e)) {
    char *t = xnode_text(a, e);
    if (!strcmp(e->name, "max")) {
      size_t n = strlen(t);
      if (!n || n > 9 || strspn(t, "0123456789") != n) goto bad;
      unsigned long v = strtoul(t, NULL, 10);
      q.max = v > cap ? cap : (unsigned)v;
    } else if (!strcmp(e->name, "after")) {
      int64_t id = known_id(c, t);
      if (!id) return;
      q.after = max64(q.after, id);
    } else if (!strcmp(e->name, "before")) {
      q.last = 1; /* empty: the last page */
      if (*t) {
        int64_t id = known_id(c, t);
        if (!id) return;
        q.before = min64(q.before, id);
      }
    } else if (!strcmp(e->name, "index")) {
      mod_iq_error(c, "cancel", "feature-not-implemented");
      return;
    } else {
      goto bad;
    }
  }
  if (cfg->mam_max_age_days) q.after = max64(q.after, now_us() - (int64_t)cfg->mam_max_age_days * 86400 * 1000000 - 1);
  if (ids_given) {
    q.ids = ids;
    q.nids = nids;
  }
  results_t r = {.c = c, .queryid = xnode_attr(c->payload, "queryid")};
  int more = 0, rc = 0;
  if (!ids_given || nids) rc = store_mam_query(w->store, c->u->bare, &q, result_cb, &r, &more);
  if (rc < 0) {
    mod_iq_error(c, "wait", "internal-server-error");
    return;
  }
  xnode_t *fin = xnode_new(a, "fin", NS_MAM);
  if (!more) xnode_set_attr(a, fin, "complete", "true");
  xnode_t *rs = xnode_add(a, fin, "set", NS_RSM);
  if (r.n) {
    xnode_t *f = xnode_add(a, rs, "first", NS_RSM);
    xnode_add_text(a, f, r.first, strlen(r.first));
    xnode_t *l = xnode_add(a, rs, "last", NS_RSM);
    xnode_add_text(a, l, r.last, strlen(r.last));
  } else {
    xnode_add_text(a, xnode_add(a, rs, "count", NS_RSM), "0", 1);
  }
  mod_iq_result(c, fin);
  return;
bad:
  mod_iq_error(c, "modify", "bad-request");
}

/* §4.1.5: the fields a query may use. */
static void query_form(mod_iq_ctx_t *c) {
  arena_t *a = &c->w->arena;
  xnode_t *q = xnode_new(a, "query", NS_MAM);
  xnode_t *x = xnode_add(a, q, "x", NS_DATA);
  xnode_set_attr(a, x, "type", "form");
  static const char *const fields[][2] = {{"FORM_TYPE", "hidden"}, {"with", "jid-single"},
                                          {"start", "text-single"}, {"end", "text-single"},
                                          {"before-id", "text-single"}, {"after-id", "text-single"},
                                          {"ids", "text-multi"}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    xnode_t *f = xnode_add(a, x, "field", NS_DATA);
    xnode_set_attr(a, f, "var", fields[i][0]);
    xnode_set_attr(a, f, "type", fields[i][1]);
    if (!i) xnode_add_text(a, xnode_add(a, f, "value", NS_DATA), NS_MAM, strlen(NS_MAM));
  }
  mod_iq_result(c, q);
}

/* ---- preferences (§5) --------------------------------------------------------------- */

static const char *const dflt_names[] = {"always", "roster", "never"};

typedef struct {
  arena_t *a;
  xnode_t *always, *never;
} prefs_out_t;

static void prefs_out_cb(const char *jid, int always, void *ud) {
  prefs_out_t *o = ud;
  xnode_t *j = xnode_add(o->a, always ? o->always : o->never, "jid", NS_MAM);
  xnode_add_text(o->a, j, jid, strlen(jid));
}

static void prefs_answer(mod_iq_ctx_t *c) {
  arena_t *a = &c->w->arena;
  xnode_t *p = xnode_new(a, "prefs", NS_MAM);
  prefs_out_t o = {a, xnode_add(a, p, "always", NS_MAM), xnode_add(a, p, "never", NS_MAM)};
  int dflt = STORE_MAM_ALWAYS;
  int rc = store_mam_prefs_get(c->w->store, c->u->bare, &dflt, prefs_out_cb, &o);
  if (rc && rc != XMPP_ENOENT) {
    mod_iq_error(c, "wait", "internal-server-error");
    return;
  }
  xnode_set_attr(a, p, "default", dflt_names[rc ? STORE_MAM_ALWAYS : dflt]);
  mod_iq_result(c, p);
}

/* The normalised JIDs of one list; -1 on a malformed one. */
static int prefs_list(arena_t *a, const xnode_t *l, const char **out, size_t *n, size_t max) {
  for (xnode_t *j = l ? xnode_first_elem(l) : NULL; j; j = xnode_next_elem(j)) {
    if (strcmp(j->name, "jid")) continue;
    if (*n >= max) return -2;
    char *t = xnode_text(a, j);
    jid_t jj;
    if (jid_parse(t, strlen(t), &jj) != 0) return -1;
    out[(*n)++] = arena_strndup(a, jj.full, strlen(jj.full));
    jid_free(&jj);
  }
  return 0;
}

static void prefs(mod_iq_ctx_t *c) {
  worker_t *w = c->w;
  if (strcmp(xnode_attr(c->iq, "type"), "set")) {
    prefs_answer(c);
    return;
  }
  arena_t *a = &w->arena;
  const char *d = xnode_attr(c->payload, "default");
  int dflt = -1;
  for (int i = 0; d && i < 3; i++)
    if (!strcmp(d, dflt_names[i])) dflt = i;
  if (dflt < 0) {
    mod_iq_error(c, "modify", "bad-request");
    return;
  }
  size_t max = (size_t)w->cfg->mam_max_prefs, na = 0, nn = 0;
  const char **al = arena_alloc(a, (max + 1) * sizeof *al), **nl = arena_alloc(a, (max + 1) * sizeof *nl);
  int rc = prefs_list(a, xnode_child(c->payload, "always", NS_MAM), al, &na, max);
  if (!rc) rc = prefs_list(a, xnode_child(c->payload, "never", NS_MAM), nl, &nn, max - na);
  if (rc) {
    mod_iq_error(c, "modify", rc == -2 ? "not-acceptable" : "jid-malformed");
    return;
  }
  mam_w_t *m = state(w);
  prefs_t *old = strmap_del(m->prefs, c->u->bare); /* read again at the next message */
  if (old) {
    prefs_free(old);
    m->nprefs--;
  }
  if (store_mam_prefs_set(w->store, c->u->bare, dflt, al, na, nl, nn) != 0) {
    mod_iq_error(c, "wait", "internal-server-error");
    return;
  }
  prefs_answer(c);
}

/* ---- module ------------------------------------------------------------------------- */

static void *worker_init(worker_t *w) {
  mam_w_t *m = xcalloc(1, sizeof *m);
  m->prefs = strmap_new();
  m->writer = mod_router_state(w->router, &mod_mam);
  return m;
}

static void worker_free(worker_t *w, void *p) {
  mam_w_t *m = p;
  flush(w, m, 0);
  retry_finish(&m->retry, w->store, w->cfg, uv_hrtime() + (m->retry.n ? MAM_RETRY_STOP_MS : 0) * 1000000ull);
  xfree(m->pend);
  strmap_free(m->prefs, prefs_free);
  xfree(m);
}

static const mod_iq_t iqs[] = {
    {NS_MAM, "query", MOD_SET, MOD_AT_ACCOUNT, MOD_SELF, query},
    {NS_MAM, "query", MOD_GET, MOD_AT_ACCOUNT, MOD_SELF, query_form},
    {NS_MAM, "prefs", MOD_GET | MOD_SET, MOD_AT_ACCOUNT, MOD_SELF, prefs},
    {0},
};
static const char *const account_features[] = {NS_MAM, NS_MAM_EXT, NS_SID, NULL};

const module_t mod_mam = {
    .name = "mam",
    .account_features = account_features,
    .iqs = iqs,
    .hooks = {[HOOK_MESSAGE_OUT] = on_message_out, [HOOK_MESSAGE_IN] = on_message_in, [HOOK_BATCH_END] = on_batch_end},
    .worker_init = worker_init,
    .worker_free = worker_free,
    .router_init = writer_start,
    .router_free = writer_stop,
};

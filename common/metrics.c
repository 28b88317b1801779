/* Metrics: per-thread counters summed at scrape time, and the exposition formats.
 * Design: common/metrics.h; the list of metrics: docs/operations.md "Metrics". */
#include "common/metrics.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/scram.h"

#define MAX_SLOTS 1024

_Static_assert(SASL_TEMPORARY_AUTH_FAILURE < METRICS_SASL_CONDS, "a SASL condition has no metrics slot");

_Thread_local uint64_t *metrics_tls;
uint64_t metrics_shared[M__COUNT];
static _Atomic(uint64_t *) slots[MAX_SLOTS];
static atomic_int nslots;

void metrics_thread_init(void) {
  if (metrics_tls) return;
  int i = atomic_fetch_add(&nslots, 1);
  if (i >= MAX_SLOTS) return; /* counts in the shared array */
  /* a slot of its own cache lines: no false sharing with another thread's */
  uint64_t *s = NULL;
  size_t bytes = (sizeof(uint64_t) * M__COUNT + 63) & ~(size_t)63;
  if (posix_memalign((void **)&s, 64, bytes) != 0) abort();
  memset(s, 0, bytes);
  atomic_store_explicit(&slots[i], s, memory_order_release);
  metrics_tls = s;
}

uint64_t metrics_value(metric_id_t id) {
  uint64_t v = __atomic_load_n(&metrics_shared[id], __ATOMIC_RELAXED);
  int n = atomic_load_explicit(&nslots, memory_order_acquire);
  if (n > MAX_SLOTS) n = MAX_SLOTS;
  for (int i = 0; i < n; i++) {
    uint64_t *s = atomic_load_explicit(&slots[i], memory_order_acquire);
    if (s) v += __atomic_load_n(&s[id], __ATOMIC_RELAXED);
  }
  return v;
}

/* Upper bounds of the Redis round-trip buckets, microseconds. */
static const uint32_t redis_bounds_us[METRICS_REDIS_BUCKETS] = {100,   250,   500,    1000,   2500,   5000,   10000,
                                                                 25000, 50000, 100000, 250000, 500000, 1000000, 2500000};

void metrics_redis_rtt(metrics_redis_t client, uint64_t us) {
  int base = M_REDIS_HIST + (int)client * METRICS_HIST_STRIDE;
  int b = 0;
  while (b < METRICS_REDIS_BUCKETS && us > redis_bounds_us[b]) b++;
  metrics_inc((metric_id_t)(base + b));
  metrics_add((metric_id_t)(base + METRICS_REDIS_BUCKETS + 1), (int64_t)us);
  metrics_inc((metric_id_t)(base + METRICS_REDIS_BUCKETS + 2));
}

/* ---- exposition ---------------------------------------------------------------------- */

void metrics_escape_label(buf_t *b, const char *s) {
  for (; *s; s++) {
    if (*s == '\\') buf_puts(b, "\\\\");
    else if (*s == '"') buf_puts(b, "\\\"");
    else if (*s == '\n') buf_puts(b, "\\n");
    else buf_putc(b, *s);
  }
}

void metrics_family(metrics_out_t *o, const char *name, const char *type, const char *help) {
  size_t n = strlen(name);
  /* OpenMetrics names the counter family without its samples' _total suffix */
  if (o->openmetrics && !strcmp(type, "counter") && n > 6 && !strcmp(name + n - 6, "_total")) n -= 6;
  buf_printf(o->b, "# HELP %.*s ", (int)n, name);
  for (const char *h = help; *h; h++) {
    if (*h == '\\') buf_puts(o->b, "\\\\");
    else if (*h == '\n') buf_puts(o->b, "\\n");
    else if (*h == '"' && o->openmetrics) buf_puts(o->b, "\\\"");
    else buf_putc(o->b, *h);
  }
  buf_printf(o->b, "\n# TYPE %.*s %s\n", (int)n, name, type);
}

static void sample_head(metrics_out_t *o, const char *name, const char *labels) {
  buf_puts(o->b, name);
  if (labels && *labels) buf_printf(o->b, "{%s}", labels);
  buf_putc(o->b, ' ');
}

void metrics_sample_u64(metrics_out_t *o, const char *name, const char *labels, uint64_t v) {
  sample_head(o, name, labels);
  buf_printf(o->b, "%llu\n", (unsigned long long)v);
}

void metrics_sample(metrics_out_t *o, const char *name, const char *labels, double v) {
  sample_head(o, name, labels);
  if (isnan(v)) buf_puts(o->b, "NaN\n");
  else if (isinf(v)) buf_puts(o->b, v > 0 ? "+Inf\n" : "-Inf\n");
  else if (v == (double)(long long)v && fabs(v) < 9e15) buf_printf(o->b, "%lld\n", (long long)v);
  else buf_printf(o->b, "%.17g\n", v);
}

/* ---- the counters' families ---------------------------------------------------------- */

typedef enum { F_COUNTER, F_GAUGE, F_HIST } ftype_t;

typedef struct family {
  const char *name;
  ftype_t type;
  const char *help;
  int first;           /* metric_id_t of the first label value (histogram: its block) */
  int n;               /* label values */
  const char *label;   /* label name, NULL when n is 1 */
  const char *const *values;
  int stride;          /* ids between label values (1; histograms METRICS_HIST_STRIDE) */
} family_t;

static const char *const states[] = {"negotiating", "bound", "detached", "closing"};
static const char *const kinds[] = {"message", "presence", "iq", "other"};
static const char *const handshakes[] = {"full", "resumed"};
static const char *const limits[] = {"rate",          "conns_per_ip", "open_files",  "auth_throttled", "sasl_failures",
                                     "registration",  "stanza",       "slow_reader", "sm_unacked",
                                     "domain_sessions", "domain_accounts"};
static const char *const clients[] = {"store", "cluster"};
static const char *const redis_errors[] = {"store", "reply", "store", "io", "cluster", "reply", "cluster", "io"};

static const family_t families[] = {
    {"xmppd_connections_accepted_total", F_COUNTER, "Client connections accepted", M_CONNECTIONS, 1, NULL, NULL, 1},
    {"xmppd_sessions", F_GAUGE,
     "Client connections by state: negotiating (TLS, SASL, bind or resumption under way), bound (a session), "
     "detached (a XEP-0198 session waiting for its client to resume it), closing",
     M_SESS_NEGOTIATING, 4, "state", states, 1},
    {"xmppd_logins_total", F_COUNTER, "Successful SASL authentications", M_LOGINS, 1, NULL, NULL, 1},
    {"xmppd_login_failures_total", F_COUNTER, "SASL failures by RFC 6120 6.5 condition", 0, 0, "reason", NULL, 1},
    {"xmppd_stanzas_in_total", F_COUNTER, "Stanzas received from clients by kind", M_STANZAS_IN, 4, "kind", kinds, 1},
    {"xmppd_stanzas_out_total", F_COUNTER, "Stanzas written to clients by kind", M_STANZAS_OUT, 4, "kind", kinds, 1},
    {"xmppd_tls_handshakes_total", F_COUNTER, "TLS handshakes completed with clients: full, or resumed from a session ticket",
     M_TLS_FULL, 2, "type", handshakes, 1},
    {"xmppd_tls_handshake_failures_total", F_COUNTER, "TLS handshakes with clients that failed", M_TLS_FAILED, 1, NULL,
     NULL, 1},
    {"xmppd_shaper_pauses_total", F_COUNTER,
     "Times a client's reading was paused: above limits.rate_bytes or rate_stanzas, or the bus congested",
     M_SHAPER_PAUSES, 1, NULL, NULL, 1},
    {"xmppd_limit_hits_total", F_COUNTER, "Clients refused or disconnected by a limit", M_LIMIT_RATE, 11, "limit", limits,
     1},
    {"xmppd_sm_ack_frames_total", F_COUNTER,
     "Cluster: frames an edge sent to carry its clients' XEP-0198 acknowledgements to their routers (BUS_SM_ACK)",
     M_SM_ACK_FRAMES, 1, NULL, NULL, 1},
    {"xmppd_sm_copies_acked_total", F_COUNTER,
     "Cluster: copies of messages a router kept for XEP-0198 sessions and dropped once the client acknowledged them",
     M_SM_COPIES_ACKED, 1, NULL, NULL, 1},
    {"xmppd_mam_rows_dropped_total", F_COUNTER,
     "Archive rows dropped, unwritten: the store was unavailable and the rows kept for retry reached "
     "server.mam_retry_bytes",
     M_MAM_DROPPED, 1, NULL, NULL, 1},
    {"xmppd_redis_rtt_seconds", F_HIST, "Redis round trips (a command, or a pipeline), by client", M_REDIS_HIST, 2,
     "client", clients, METRICS_HIST_STRIDE},
    {"xmppd_redis_errors_total", F_COUNTER, "Redis errors by client: an error reply, or a connection failure (io)",
     M_REDIS_ERRORS, 4, NULL, redis_errors, 1},
};
#define NFAMILIES (sizeof families / sizeof families[0])

static void render_hist(metrics_out_t *o, const family_t *f) {
  size_t nl = strlen(f->name);
  char name[128];
  for (int i = 0; i < f->n; i++) {
    int base = f->first + i * f->stride;
    char labels[160];
    uint64_t cum = 0;
    for (int b = 0; b <= METRICS_REDIS_BUCKETS; b++) {
      cum += metrics_value((metric_id_t)(base + b));
      char le[32];
      if (b < METRICS_REDIS_BUCKETS) snprintf(le, sizeof le, "%g", redis_bounds_us[b] / 1e6);
      else snprintf(le, sizeof le, "+Inf");
      snprintf(labels, sizeof labels, "%s=\"%s\",le=\"%s\"", f->label, f->values[i], le);
      snprintf(name, sizeof name, "%.*s_bucket", (int)nl, f->name);
      metrics_sample_u64(o, name, labels, cum);
    }
    snprintf(labels, sizeof labels, "%s=\"%s\"", f->label, f->values[i]);
    snprintf(name, sizeof name, "%.*s_sum", (int)nl, f->name);
    metrics_sample(o, name, labels, (double)metrics_value((metric_id_t)(base + METRICS_REDIS_BUCKETS + 1)) / 1e6);
    snprintf(name, sizeof name, "%.*s_count", (int)nl, f->name);
    /* the count is the +Inf bucket's (both read in this scrape: they agree) */
    metrics_sample_u64(o, name, labels, cum);
  }
}

static void render_family(metrics_out_t *o, const family_t *f) {
  static const char *const tn[] = {"counter", "gauge", "histogram"};
  metrics_family(o, f->name, tn[f->type], f->help);
  if (f->type == F_HIST) {
    render_hist(o, f);
    return;
  }
  if (f->first == 0 && f->n == 0) { /* the SASL conditions, named by common/scram.c */
    for (int c = 1; c < METRICS_SASL_CONDS; c++) {
      const char *nm = sasl_cond_name((sasl_cond_t)c);
      if (!nm || !strcmp(nm, "?")) continue;
      char labels[96];
      snprintf(labels, sizeof labels, "reason=\"%s\"", nm);
      metrics_sample_u64(o, f->name, labels, metrics_value((metric_id_t)(M_LOGIN_FAIL + c)));
    }
    return;
  }
  for (int i = 0; i < f->n; i++) {
    uint64_t v = metrics_value((metric_id_t)(f->first + i * f->stride));
    char labels[160] = "";
    if (f->label) snprintf(labels, sizeof labels, "%s=\"%s\"", f->label, f->values[i]);
    else if (f->values) /* pairs: client, kind */
      snprintf(labels, sizeof labels, "client=\"%s\",kind=\"%s\"", f->values[2 * i], f->values[2 * i + 1]);
    if (f->type == F_GAUGE) metrics_sample(o, f->name, labels, (double)(int64_t)v);
    else metrics_sample_u64(o, f->name, labels, v);
  }
}

/* ---- sources ------------------------------------------------------------------------- */

typedef struct source {
  metrics_source_cb cb;
  void *ud;
  struct source *next;
} source_t;

static uv_once_t once = UV_ONCE_INIT;
static uv_mutex_t src_lock; /* the list; held through a scrape's sources */
static source_t *sources, **sources_tail = &sources;

static void init_once(void) {
  if (uv_mutex_init(&src_lock) != 0) abort();
}

void metrics_source_add(metrics_source_cb cb, void *ud) {
  uv_once(&once, init_once);
  source_t *s = xcalloc(1, sizeof *s);
  s->cb = cb;
  s->ud = ud;
  uv_mutex_lock(&src_lock);
  *sources_tail = s;
  sources_tail = &s->next;
  uv_mutex_unlock(&src_lock);
}

void metrics_source_remove(metrics_source_cb cb, void *ud) {
  uv_once(&once, init_once);
  uv_mutex_lock(&src_lock);
  for (source_t **pp = &sources; *pp; pp = &(*pp)->next) {
    source_t *s = *pp;
    if (s->cb == cb && s->ud == ud) {
      *pp = s->next;
      if (sources_tail == &s->next) sources_tail = pp;
      xfree(s);
      break;
    }
  }
  uv_mutex_unlock(&src_lock);
}

struct metrics_block {
  uv_mutex_t lock; /* the text: held for a copy (publisher) or an append (scrape) */
  buf_t text[2];   /* Prometheus text, OpenMetrics */
};

static void block_cb(metrics_out_t *o, void *ud) {
  metrics_block_t *blk = ud;
  uv_mutex_lock(&blk->lock);
  buf_t *t = &blk->text[o->openmetrics ? 1 : 0];
  buf_append(o->b, t->data, t->len);
  uv_mutex_unlock(&blk->lock);
}

metrics_block_t *metrics_block_new(void) {
  metrics_block_t *blk = xcalloc(1, sizeof *blk);
  if (uv_mutex_init(&blk->lock) != 0) abort();
  buf_init(&blk->text[0]);
  buf_init(&blk->text[1]);
  metrics_source_add(block_cb, blk);
  return blk;
}

void metrics_block_set(metrics_block_t *blk, const buf_t *text, const buf_t *openmetrics) {
  uv_mutex_lock(&blk->lock);
  for (int i = 0; i < 2; i++) {
    const buf_t *from = i ? openmetrics : text;
    blk->text[i].len = 0;
    buf_append(&blk->text[i], from->data, from->len);
  }
  uv_mutex_unlock(&blk->lock);
}

void metrics_block_free(metrics_block_t *blk) {
  if (!blk) return;
  metrics_source_remove(block_cb, blk);
  uv_mutex_destroy(&blk->lock);
  buf_free(&blk->text[0]);
  buf_free(&blk->text[1]);
  xfree(blk);
}

void metrics_render(metrics_out_t *o) {
  for (size_t i = 0; i < NFAMILIES; i++) render_family(o, &families[i]);
  uv_once(&once, init_once);
  uv_mutex_lock(&src_lock);
  for (source_t *s = sources; s; s = s->next) s->cb(o, s->ud);
  uv_mutex_unlock(&src_lock);
  if (o->openmetrics) buf_puts(o->b, "# EOF\n");
}

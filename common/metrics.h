/* Metrics: counters and gauges every thread updates without locks, exported in the
 * Prometheus text format (and OpenMetrics 1.0 when the scraper asks for it) on an HTTP
 * endpoint (metrics.listen; docs/operations.md "Metrics" lists every metric).
 *
 * Counting. Each thread that counts on a hot path (edge I/O threads, router workers, the
 * cluster thread, main) takes a slot of its own with metrics_thread_init: an array of
 * uint64 indexed by metric_id_t that only that thread writes, with a relaxed load and a
 * relaxed store (a plain add on x86: no lock prefix, no shared cache line). Any other
 * thread (libuv's thread pool, a test) adds to one shared array with a relaxed atomic
 * add. A gauge is counted the same way, as signed deltas (+1 when a connection enters a
 * state, -1 when it leaves it, possibly on another thread): only the sum means anything.
 * Slots are never given back, so counters never go backwards.
 *
 * Scraping. metrics_render sums every slot with relaxed loads on the HTTP thread: it never
 * waits for a counting thread and no counting thread ever waits for it. What a counter
 * cannot say (a queue's depth, a link's state) comes from sources: a callback run at each
 * scrape that reads only atomics (metrics_source_add), or a block of text a thread
 * publishes now and then from its own loop (metrics_block_t: a mutex held for a copy). */
#ifndef XMPP_METRICS_H
#define XMPP_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/buf.h"

/* Histogram buckets of the Redis round-trip time, upper bounds in microseconds; one more
 * bucket (+Inf) follows. */
#define METRICS_REDIS_BUCKETS 14
#define METRICS_HIST_STRIDE (METRICS_REDIS_BUCKETS + 3) /* buckets, +Inf, sum (us), count */

typedef enum {
  /* edge: connections and sessions (edge/conn.c, edge/sm.c) */
  M_CONNECTIONS,       /* accepted */
  M_SESS_NEGOTIATING,  /* gauges: connections by coarse state */
  M_SESS_BOUND,
  M_SESS_DETACHED,
  M_SESS_CLOSING,
  /* edge: SASL (edge/sasl.c) */
  M_LOGINS,
  M_LOGIN_FAIL,        /* + sasl_cond_t (1 .. METRICS_SASL_CONDS - 1) */
#define METRICS_SASL_CONDS 12
  M_STANZAS_IN = M_LOGIN_FAIL + METRICS_SASL_CONDS, /* + metrics_kind_t */
  M_STANZAS_OUT = M_STANZAS_IN + 4,                 /* + metrics_kind_t */
  /* edge: TLS (edge/tls.c) */
  M_TLS_FULL = M_STANZAS_OUT + 4,
  M_TLS_RESUMED,
  M_TLS_FAILED,
  /* edge: shaping and limits (edge/conn.c, edge/guard.c, edge/sasl.c, ...) */
  M_SHAPER_PAUSES,
  M_LIMIT_RATE,           /* above its rate past limits.rate_grace: <policy-violation/> */
  M_LIMIT_CONNS_PER_IP,   /* limits.max_conns_per_ip */
  M_LIMIT_OPEN_FILES,     /* the open-file budget */
  M_LIMIT_AUTH_THROTTLED, /* limits.auth_fail_ip / auth_fail_account */
  M_LIMIT_SASL_FAILURES,  /* limits.sasl_max_failures */
  M_LIMIT_REGISTRATION,   /* registration.per_ip_per_hour */
  M_LIMIT_STANZA,         /* the XML reader's caps (limits.max_stanza_bytes, max_depth, max_attrs) */
  M_LIMIT_SLOW_READER,    /* limits.max_pending_out */
  M_LIMIT_SM_UNACKED,     /* limits.sm_max_unacked */
  M_LIMIT_DOMAIN_SESSIONS, /* [domain] max_sessions */
  M_LIMIT_DOMAIN_ACCOUNTS, /* [domain] max_accounts */
  /* cluster, XEP-0198 acknowledgements forwarded to the router (edge/sm.c, router/session.c) */
  M_SM_ACK_FRAMES,        /* edge: BUS_SM_ACK frames sent */
  M_SM_COPIES_ACKED,      /* router: copies of messages dropped, acknowledged by the client */
  M_MAM_DROPPED,          /* archive rows dropped: the store unavailable beyond server.mam_retry_bytes */
  /* Redis round trips: one histogram per client (metrics_redis_t) */
  M_REDIS_HIST,
  M_REDIS_ERRORS = M_REDIS_HIST + 2 * METRICS_HIST_STRIDE, /* + 2 * client + (0 reply, 1 I/O) */
  M__COUNT = M_REDIS_ERRORS + 4
} metric_id_t;

typedef enum { METRICS_MESSAGE, METRICS_PRESENCE, METRICS_IQ, METRICS_OTHER } metrics_kind_t;
typedef enum { METRICS_REDIS_STORE, METRICS_REDIS_CLUSTER } metrics_redis_t;

/* This thread's slot (NULL: the shared one). Set by metrics_thread_init. */
extern _Thread_local uint64_t *metrics_tls;
extern uint64_t metrics_shared[M__COUNT];

/* Gives the calling thread a slot of its own (idempotent). Call it at the start of a
 * thread that counts often. Past 1024 threads, the thread counts in the shared array. */
void metrics_thread_init(void);

/* Adds v (a gauge: possibly negative) to id. Any thread; never blocks. */
static inline void metrics_add(metric_id_t id, int64_t v) {
  uint64_t *s = metrics_tls;
  if (__builtin_expect(s != NULL, 1))
    __atomic_store_n(&s[id], __atomic_load_n(&s[id], __ATOMIC_RELAXED) + (uint64_t)v, __ATOMIC_RELAXED);
  else
    __atomic_fetch_add(&metrics_shared[id], (uint64_t)v, __ATOMIC_RELAXED);
}
static inline void metrics_inc(metric_id_t id) { metrics_add(id, 1); }

/* The kind of a stanza by its element name (message, presence, iq; anything else: other). */
static inline metrics_kind_t metrics_kind(const char *name) {
  if (!name) return METRICS_OTHER;
  if (!strcmp(name, "message")) return METRICS_MESSAGE;
  if (!strcmp(name, "presence")) return METRICS_PRESENCE;
  if (!strcmp(name, "iq")) return METRICS_IQ;
  return METRICS_OTHER;
}

/* The same from a serialised stanza's first bytes ("<message ...", "<iq>"). */
static inline metrics_kind_t metrics_kind_xml(const char *x, size_t n) {
  if (n > 8 && !memcmp(x, "<message", 8) && (x[8] == ' ' || x[8] == '>' || x[8] == '/')) return METRICS_MESSAGE;
  if (n > 9 && !memcmp(x, "<presence", 9) && (x[9] == ' ' || x[9] == '>' || x[9] == '/')) return METRICS_PRESENCE;
  if (n > 3 && !memcmp(x, "<iq", 3) && (x[3] == ' ' || x[3] == '>' || x[3] == '/')) return METRICS_IQ;
  return METRICS_OTHER;
}

/* One Redis round trip of client took us microseconds. */
void metrics_redis_rtt(metrics_redis_t client, uint64_t us);
/* A Redis error: io 0 for an error reply, 1 for a connection or protocol failure. */
static inline void metrics_redis_error(metrics_redis_t client, int io) {
  metrics_inc((metric_id_t)(M_REDIS_ERRORS + 2 * (int)client + (io ? 1 : 0)));
}

/* The sum of id over every slot (a snapshot; any thread). */
uint64_t metrics_value(metric_id_t id);

/* ---- exposition ---------------------------------------------------------------------- */

/* Where a scrape writes: the text and its format (OpenMetrics: counter families are
 * named without _total in # TYPE / # HELP, and the text ends with "# EOF"). */
typedef struct metrics_out {
  buf_t *b;
  int openmetrics;
} metrics_out_t;

/* "# HELP" and "# TYPE" of a family; type: counter, gauge or histogram. name: for a
 * counter, ending in _total. */
void metrics_family(metrics_out_t *o, const char *name, const char *type, const char *help);
/* One sample: name{labels} value. labels: NULL, or "k=\"v\",..." already escaped. */
void metrics_sample(metrics_out_t *o, const char *name, const char *labels, double v);
void metrics_sample_u64(metrics_out_t *o, const char *name, const char *labels, uint64_t v);
/* Appends a label value escaped for the exposition formats (\\, \", \n). */
void metrics_escape_label(buf_t *b, const char *s);

/* A callback run at every scrape, on the HTTP thread: it must read only what other
 * threads publish atomically (never take a lock a counting thread holds long). */
typedef void (*metrics_source_cb)(metrics_out_t *o, void *ud);
/* Registers / removes a source (any thread; a removal waits for a scrape running it). */
void metrics_source_add(metrics_source_cb cb, void *ud);
void metrics_source_remove(metrics_source_cb cb, void *ud);

/* Text a thread publishes from its own loop (whole families), copied into each scrape. */
typedef struct metrics_block metrics_block_t;
/* A new block, registered as a source. Main thread (or the owner's, before it publishes). */
metrics_block_t *metrics_block_new(void);
/* Replaces the block's text with text's bytes, the same families rendered in both formats
 * (the owner's thread; the buffers stay the caller's). */
void metrics_block_set(metrics_block_t *blk, const buf_t *text, const buf_t *openmetrics);
/* Unregisters and frees it. NULL-safe. */
void metrics_block_free(metrics_block_t *blk);

/* Every metric: the counters above, then the sources, in order of registration. */
void metrics_render(metrics_out_t *o);

/* ---- the HTTP endpoint (common/metrics_http.c, libmicrohttpd) ------------------------- */

/* Parses metrics.listen, "HOST:PORT" or "[IPV6]:PORT" with a numeric address, into ss
 * (a struct sockaddr_storage). 0, or -1 with *err (caller frees). *loopback: 1 when the
 * address is 127.0.0.0/8 or ::1. */
int metrics_parse_listen(const char *s, void *ss, int *loopback, char **err);

typedef struct metrics_http metrics_http_t;
/* Starts the endpoint on its own thread (libmicrohttpd's). token: "" for none, else the
 * bearer token every request must present. NULL (with *err) when it cannot listen.
 * Main thread. */
metrics_http_t *metrics_http_start(const char *listen, const char *token, const char *tls_cert, const char *tls_key,
                                   char **err);
/* Stops it (waits for a scrape in progress). NULL-safe. Main thread. */
void metrics_http_stop(metrics_http_t *h);

#endif

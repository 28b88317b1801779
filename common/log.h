/* Levelled logging to stderr. Thread-safe (one fprintf per line).
 * Each thread may name itself once (log_set_thread) so lines say who wrote them. */
#ifndef XMPP_LOG_H
#define XMPP_LOG_H

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_NONE } log_level_t;

void log_set_level(log_level_t lvl);
log_level_t log_get_level(void);
/* Parses "debug", "info", "warn", "error", "none"; returns -1 when unknown. */
int log_level_parse(const char *s);
void log_set_thread(const char *name);
/* server.log_format: text (the default) or one JSON object per line,
 * {"ts":"2024-01-02T03:04:05.678Z","level":"info","thread":"edge0","msg":"..."}, the
 * message escaped as a JSON string. Set once at start-up, before other threads log. */
typedef enum { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON } log_format_t;
void log_set_format(log_format_t f);
void log_write(log_level_t lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* An event that can come in floods (a fault's client-visible effects): counted, and
 * logged at most once a second per tally, with the count, whichever thread counts it
 * (one level for one event, docs/cluster.md "Logs"). Static storage, zero-initialised
 * but for level, prefix and what: LOG_TALLY(LOG_WARN, "cluster", "messages ..."): lines
 * "cluster: N messages ... in the last S s (T since start); last: <detail>". Thread-safe. */
typedef struct log_tally {
  log_level_t level;
  const char *who;                 /* the line's prefix: "cluster" */
  const char *what;                /* plural noun phrase: "N <what> in the last S s" */
  unsigned long long n;            /* counted, not logged yet (atomic) */
  unsigned long long total;        /* since start (atomic) */
  unsigned long long logged_ms;    /* monotonic ms of the last line (atomic; 0: none) */
} log_tally_t;
#define LOG_TALLY(lvl, who, what) {(lvl), (who), (what), 0, 0, 0}
/* Counts one event; logs a line when none was logged for this tally in the last second,
 * ending with this event's detail ("; last: <detail>"). */
void log_tally(log_tally_t *t, const char *detail_fmt, ...) __attribute__((format(printf, 2, 3)));
/* The same for n events at once (n > 0): one detail for all of them. */
void log_tally_n(log_tally_t *t, unsigned long long n, const char *detail_fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Logs what was counted and not logged yet, once the second since the last line is over
 * (call it periodically, e.g. from a timer). */
void log_tally_flush(log_tally_t *t);
unsigned long long log_tally_total(const log_tally_t *t);

#define log_debug(...) do { if (log_get_level() <= LOG_DEBUG) log_write(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif

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
void log_write(log_level_t lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (log_get_level() <= LOG_DEBUG) log_write(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif

#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/text.h"

static log_level_t g_level = LOG_INFO;
static __thread char t_name[16] = "main";

void log_set_level(log_level_t lvl) { g_level = lvl; }
log_level_t log_get_level(void) { return g_level; }

int log_level_parse(const char *s) {
  static const char *names[] = {"debug", "info", "warn", "error", "none"};
  for (int i = 0; i < 5; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return -1;
}

void log_set_thread(const char *name) { snprintf(t_name, sizeof t_name, "%s", name); }

static log_format_t g_format = LOG_FORMAT_TEXT;
void log_set_format(log_format_t f) { g_format = f; }

/* The JSON line for msg[0..len): escaped into out (at most cap bytes, the newline
 * included); a message cut short stays valid JSON. Returns its length. */
static size_t json_line(char *out, size_t cap, const char *ts, log_level_t lvl, const char *msg, size_t len) {
  static const char *names[] = {"debug", "info", "warn", "error", ""};
  int n = snprintf(out, cap, "{\"ts\":\"%s\",\"level\":\"%s\",\"thread\":\"%s\",\"msg\":\"", ts, names[lvl], t_name);
  if (n < 0 || (size_t)n >= cap) return 0;
  size_t o = (size_t)n;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)msg[i];
    char esc[7];
    size_t el = text_json_escape_byte(ch, esc);
    if (o + el + 3 > cap) break; /* room for "}\n */
    memcpy(out + o, esc, el);
    o += el;
  }
  memcpy(out + o, "\"}\n", 3);
  return o + 3;
}

void log_write(log_level_t lvl, const char *fmt, ...) {
  static const char *tags[] = {"DEBUG", "INFO", "WARN", "ERROR", ""};
  if (lvl < g_level) return;
  char line[1024];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  if (g_format == LOG_FORMAT_JSON) {
    char when[96], msg[1024], out[2048];
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (m < 0) return;
    size_t len = (size_t)m < sizeof msg ? (size_t)m : sizeof msg - 1;
    size_t k = json_line(out, sizeof out, when, lvl, msg, len);
    if (k) fwrite(out, 1, k, stderr);
    return;
  }
  int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s [%s] ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                   tm.tm_sec, ts.tv_nsec / 1000000, tags[lvl], t_name);
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < sizeof line) n += vsnprintf(line + n, sizeof line - n, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof line - 1) n = sizeof line - 2;
  line[n++] = '\n';
  fwrite(line, 1, n, stderr);
}

/* ---- tallies ---- */

static unsigned long long mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (unsigned long long)ts.tv_sec * 1000u + (unsigned long long)ts.tv_nsec / 1000000u + 1; /* never 0 */
}

/* One line for what was counted since the last, if the second is over and this thread
 * wins the window (compare-and-swap on logged_ms). */
static void tally_emit(log_tally_t *t, const char *detail) {
  unsigned long long now = mono_ms();
  unsigned long long last = __atomic_load_n(&t->logged_ms, __ATOMIC_RELAXED);
  if (last && now - last < 1000) return;
  if (!__atomic_compare_exchange_n(&t->logged_ms, &last, now, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return;
  unsigned long long n = __atomic_exchange_n(&t->n, 0, __ATOMIC_RELAXED);
  if (!n) return;
  unsigned long long total = __atomic_load_n(&t->total, __ATOMIC_RELAXED);
  if (!last)
    log_write(t->level, "%s: %llu %s (the first since start)%s%s", t->who, n, t->what, detail ? "; last: " : "",
              detail ? detail : "");
  else
    log_write(t->level, "%s: %llu %s in the last %.1f s (%llu since start)%s%s", t->who, n, t->what,
              (double)(now - last) / 1000.0, total, detail ? "; last: " : "", detail ? detail : "");
}

void log_tally(log_tally_t *t, const char *detail_fmt, ...) {
  __atomic_add_fetch(&t->n, 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&t->total, 1, __ATOMIC_RELAXED);
  if (t->level < g_level) return;
  unsigned long long last = __atomic_load_n(&t->logged_ms, __ATOMIC_RELAXED);
  if (last && mono_ms() - last < 1000) return;
  char detail[320];
  va_list ap;
  va_start(ap, detail_fmt);
  vsnprintf(detail, sizeof detail, detail_fmt, ap);
  va_end(ap);
  tally_emit(t, detail);
}

void log_tally_flush(log_tally_t *t) {
  if (t->level >= g_level && __atomic_load_n(&t->n, __ATOMIC_RELAXED)) tally_emit(t, NULL);
}

unsigned long long log_tally_total(const log_tally_t *t) { return __atomic_load_n(&t->total, __ATOMIC_RELAXED); }

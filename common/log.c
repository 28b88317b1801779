#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

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

void log_write(log_level_t lvl, const char *fmt, ...) {
  static const char *tags[] = {"DEBUG", "INFO", "WARN", "ERROR", ""};
  if (lvl < g_level) return;
  char line[1024];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
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

#include "common/alloc.h"
#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(size_t n, const char *file, int line) {
  fprintf(stderr, "FATAL: out of memory allocating %zu bytes at %s:%d\n", n, file, line);
  abort();
}

void *xmpp_malloc_(size_t n, const char *file, int line) {
  void *p = malloc(n ? n : 1);
  if (!p) oom(n, file, line);
  return p;
}

void *xmpp_calloc_(size_t n, size_t size, const char *file, int line) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) oom(n * size, file, line);
  return p;
}

void *xmpp_realloc_(void *p, size_t n, const char *file, int line) {
  void *q = realloc(p, n ? n : 1);
  if (!q) oom(n, file, line);
  return q;
}

char *xmpp_strndup_(const char *s, size_t n, const char *file, int line) {
  char *p = xmpp_malloc_(n + 1, file, line);
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

char *xmpp_strdup_(const char *s, const char *file, int line) {
  return xmpp_strndup_(s, strlen(s), file, line);
}

char *xstrfmt(const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return xstrdup(buf);
}

const char *xmpp_strerror(int code) {
  switch (code) {
  case XMPP_OK: return "ok";
  case XMPP_ERR: return "error";
  case XMPP_AGAIN: return "again";
  case XMPP_EINVAL: return "invalid input";
  case XMPP_ENOENT: return "not found";
  case XMPP_EEXIST: return "already exists";
  case XMPP_ELIMIT: return "limit reached";
  case XMPP_EIO: return "I/O error";
  case XMPP_EDENIED: return "denied";
  }
  return "unknown error";
}

/* The one allocator entry point.
 *
 * Binaries link jemalloc, which replaces malloc/free process-wide, so these wrappers
 * and every library we use (libuv, libxml2, wolfSSL, SQLite) allocate from jemalloc.
 * Under the sanitizers the build links libc malloc instead (XMPP_SANITIZE).
 * Allocation failure is never silent: the x* wrappers abort with file and line. */
#ifndef XMPP_ALLOC_H
#define XMPP_ALLOC_H

#include <stddef.h>

void *xmpp_malloc_(size_t n, const char *file, int line);
void *xmpp_calloc_(size_t n, size_t size, const char *file, int line);
void *xmpp_realloc_(void *p, size_t n, const char *file, int line);
char *xmpp_strdup_(const char *s, const char *file, int line);
char *xmpp_strndup_(const char *s, size_t n, const char *file, int line);

#define xmalloc(n) xmpp_malloc_((n), __FILE__, __LINE__)
#define xcalloc(n, s) xmpp_calloc_((n), (s), __FILE__, __LINE__)
#define xrealloc(p, n) xmpp_realloc_((p), (n), __FILE__, __LINE__)
#define xstrdup(s) xmpp_strdup_((s), __FILE__, __LINE__)
#define xstrndup(s, n) xmpp_strndup_((s), (n), __FILE__, __LINE__)
#define xfree(p) free(p)

/* printf into a new string (at most 1023 characters: meant for messages). */
char *xstrfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#include <stdlib.h>

#endif

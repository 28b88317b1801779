/* The metrics endpoint: libmicrohttpd (Debian's libmicrohttpd12) on its own thread.
 *
 * Why libmicrohttpd's internal polling thread (MHD_USE_EPOLL_INTERNAL_THREAD) and not a
 * libuv loop: the endpoint then shares nothing with the I/O threads or router workers, not
 * even a loop turn; a scrape (summing every thread's counters with relaxed loads,
 * rendering a few KiB) or a slow or hostile HTTP client costs that thread alone. Driving
 * MHD from a uv loop would mean exporting its descriptors into uv_poll handles and its
 * timeouts into a timer for no gain. epoll, not select: the process has far more than
 * FD_SETSIZE descriptors, so an accepted socket's number may be over 1024.
 *
 * Bounds: at most METRICS_HTTP_CONNS connections (more wait in the listen backlog until
 * one goes), METRICS_HTTP_TIMEOUT_S of inactivity per connection, a request line and
 * headers in METRICS_HTTP_MEMORY bytes (MHD answers 414 or 431 beyond), any request body
 * refused. Only GET (and HEAD) of /metrics is served: 405 for other methods, 404 for other
 * paths, 401 without the bearer token when metrics.token is set. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

#include "common/http_tls.h"
#include "common/alloc.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/text.h"

#define METRICS_HTTP_CONNS 16
#define METRICS_HTTP_TIMEOUT_S 10
#define METRICS_HTTP_MEMORY (16 * 1024)

struct metrics_http {
  struct MHD_Daemon *d;
  http_tls_t tls;
  char *token;
};

int metrics_parse_listen(const char *s, void *ss_, int *loopback, char **err) {
  struct sockaddr_storage *ss = ss_;
  memset(ss, 0, sizeof *ss);
  char host[64];
  const char *colon, *h = s;
  size_t hl;
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (!close || close[1] != ':') goto bad;
    h = s + 1;
    hl = (size_t)(close - h);
    colon = close + 1;
  } else {
    colon = strrchr(s, ':');
    if (!colon || strchr(s, ':') != colon) goto bad;
    hl = (size_t)(colon - s);
  }
  if (hl == 0 || hl >= sizeof host) goto bad;
  memcpy(host, h, hl);
  host[hl] = '\0';
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (!colon[1] || *end || port < 1 || port > 65535) goto bad;
  struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
  if (uv_ip4_addr(host, (int)port, a4) == 0 && s[0] != '[') {
    if (loopback) *loopback = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
    return 0;
  }
  if (uv_ip6_addr(host, (int)port, a6) == 0) {
    if (loopback) *loopback = IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
    return 0;
  }
bad:
  if (err) *err = xstrfmt("metrics.listen: '%s' is not a numeric HOST:PORT or [IPV6]:PORT", s);
  return -1;
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *text, const char *ctype,
                             int may_free) {
  struct MHD_Response *r =
      MHD_create_response_from_buffer(strlen(text), (void *)text, may_free ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
  if (!r) return MHD_NO;
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
  if (status == MHD_HTTP_UNAUTHORIZED) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"xmppd\"");
  if (status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
  enum MHD_Result rc = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return rc;
}

/* Constant time in the presented token's bytes (the length may show). */
static int token_ok(const char *want, const char *auth) {
  static const char pfx[] = "Bearer ";
  if (!auth || strncmp(auth, pfx, sizeof pfx - 1) != 0) return 0;
  auth += sizeof pfx - 1;
  size_t n = strlen(want);
  if (strlen(auth) != n) return 0;
  return text_ct_equal((const unsigned char *)want, (const unsigned char *)auth, n);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **state) {
  metrics_http_t *h = cls;
  static const char text[] = "text/plain; charset=utf-8";
  int head = !strcmp(method, MHD_HTTP_METHOD_HEAD);
  if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && !head)
    return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET /metrics\n", text, 0);
  /* a GET has no body: one announced is refused before it is read */
  const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
  if (*upload_size || (cl && strcmp(cl, "0") != 0) ||
      MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
    return reply(conn, MHD_HTTP_BAD_REQUEST, "no body\n", text, 0);
  if (strcmp(url, "/metrics") != 0) return reply(conn, MHD_HTTP_NOT_FOUND, "not found: try /metrics\n", text, 0);
  if (h->token[0] &&
      !token_ok(h->token, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION)))
    return reply(conn, MHD_HTTP_UNAUTHORIZED, "a bearer token is required\n", text, 0);
  /* OpenMetrics when the scraper asks for it (Prometheus does first), else text 0.0.4 */
  const char *accept = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
  buf_t b;
  buf_init(&b);
  metrics_out_t o = {&b, accept && strstr(accept, "application/openmetrics-text") != NULL};
  metrics_render(&o);
  buf_putc(&b, '\0');
  size_t len;
  char *body = (char *)buf_steal(&b, &len);
  return reply(conn, MHD_HTTP_OK, body,
               o.openmetrics ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                             : "text/plain; version=0.0.4; charset=utf-8",
               1);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
  char line[256];
  vsnprintf(line, sizeof line, fmt, ap);
  size_t n = strlen(line);
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
  log_debug("metrics http: %s", line);
}

metrics_http_t *metrics_http_start(const char *listen, const char *token, const char *tls_cert, const char *tls_key,
                                   char **err) {
  struct sockaddr_storage ss;
  int loopback;
  if (metrics_parse_listen(listen, &ss, &loopback, err) != 0) return NULL;
  metrics_http_t *h = xcalloc(1, sizeof *h);
  if (http_tls_load(&h->tls, "metrics", tls_cert, tls_key, err) != 0) {
    xfree(h);
    return NULL;
  }
  h->token = xstrdup(token ? token : "");
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | http_tls_flags(&h->tls);
  if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_ARRAY, h->tls.opts, MHD_OPTION_SOCK_ADDR,
                          (struct sockaddr *)&ss,
                          MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_HTTP_CONNS, MHD_OPTION_CONNECTION_TIMEOUT,
                          (unsigned)METRICS_HTTP_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                          (size_t)METRICS_HTTP_MEMORY, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
  if (!h->d) {
    if (err)
      *err = xstrfmt("metrics.listen: cannot listen on %s%s", listen,
                     h->tls.cert ? ", or metrics.tls_cert and metrics.tls_key are not a certificate and its key" : "");
    http_tls_free(&h->tls);
    xfree(h->token);
    xfree(h);
    return NULL;
  }
  log_info("metrics: %s://%s/metrics%s", h->tls.cert ? "https" : "http", listen,
           h->token[0] ? " (bearer token required)" : "");
  return h;
}

void metrics_http_stop(metrics_http_t *h) {
  if (!h) return;
  MHD_stop_daemon(h->d);
  http_tls_free(&h->tls);
  xfree(h->token);
  xfree(h);
}

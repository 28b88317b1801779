/* The HTTP admin API: see control_http.h.
 *
 * libmicrohttpd (as the metrics endpoint, common/metrics_http.c), here with a thread per
 * connection: a request waits on its own thread for the control loop's answer (a key
 * derivation for adduser takes a while), which keeps the loop free and the code
 * straight; the threads are bounded by the connection cap.
 *
 * Bounds: at most max_clients connections are served at once: the next ones (counted
 * from their accept) get 503 and are closed, and past twice that many libmicrohttpd
 * stops accepting (they wait in the listen backlog); CONTROL_HTTP_TIMEOUT_S of
 * inactivity per connection; request line and headers in CONTROL_HTTP_MEMORY bytes (MHD
 * answers 414/431 beyond); a body of at most max_body bytes (a larger Content-Length is
 * answered 413 before the body is read, a chunked body at the byte that passes it);
 * CONTROL_HTTP_WAIT_S for the command's answer (504). The token is checked before
 * anything else of the request is looked at: without it no body is read. */
#include "common/control_http.h"
#include "common/http_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/text.h"

#define CONTROL_HTTP_TIMEOUT_S 10
#define CONTROL_HTTP_MEMORY (16 * 1024)
#define CONTROL_HTTP_WAIT_S 30
#define CONTROL_HTTP_FIELDS 7

typedef struct waiter waiter_t;

struct control_http {
  http_tls_t tls;
  struct MHD_Daemon *d;
  control_t *ctl;
  char *token;
  size_t token_len;
  control_http_limits_t lim;
  atomic_uint conns; /* connections accepted and not closed */
  pthread_mutex_t lock;
  int stopping;
  waiter_t *waiters; /* requests waiting for an answer (woken at stop) */
};

/* A request handed to the control loop: shared by its connection's thread and the
 * loop's answer (done_cb); the last of the two frees it. */
struct waiter {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int refs;
  int answered, ok, stop;
  char *json;
  size_t len;
  waiter_t *prev, *next; /* h->waiters, under h->lock */
};

/* Per request (the access handler's *state). */
typedef struct request {
  const control_cmd_t *cmd;
  buf_t body;
  int too_large;
  char origin[80];
} request_t;

/* ---- the JSON body ------------------------------------------------------------------- */

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

static int hex4(const char *p, const char *end, unsigned *out) {
  if (end - p < 4) return -1;
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

static void put_utf8(buf_t *b, unsigned cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) u[0] = (char)cp, n = 1;
  else if (cp < 0x800) u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f)), n = 2;
  else if (cp < 0x10000)
    u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[2] = (char)(0x80 | (cp & 0x3f)), n = 3;
  else
    u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3f)), u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)),
    u[3] = (char)(0x80 | (cp & 0x3f)), n = 4;
  buf_append(b, u, n);
}

/* A JSON string at *pp (RFC 8259 §7) decoded into out (NUL-terminated); *pp past it. */
static int json_string(const char **pp, const char *end, buf_t *out) {
  const char *p = *pp;
  if (p >= end || *p != '"') return -1;
  p++;
  out->len = 0;
  while (p < end && *p != '"') {
    unsigned char c = (unsigned char)*p;
    if (c < 0x20) return -1; /* raw control characters are not allowed in a JSON string */
    if (c != '\\') {
      const char *q = p;
      while (q < end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
      buf_append(out, p, (size_t)(q - p));
      p = q;
      continue;
    }
    if (++p >= end) return -1;
    char e = *p++;
    unsigned cp;
    switch (e) {
    case '"': case '\\': case '/': buf_putc(out, e); break;
    case 'b': buf_putc(out, '\b'); break;
    case 'f': buf_putc(out, '\f'); break;
    case 'n': buf_putc(out, '\n'); break;
    case 'r': buf_putc(out, '\r'); break;
    case 't': buf_putc(out, '\t'); break;
    case 'u':
      if (hex4(p, end, &cp) != 0) return -1;
      p += 4;
      if (cp >= 0xdc00 && cp <= 0xdfff) return -1; /* a lone low surrogate */
      if (cp >= 0xd800 && cp <= 0xdbff) {          /* a pair, or nothing */
        unsigned lo;
        if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, end, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff)
          return -1;
        p += 6;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
      }
      put_utf8(out, cp);
      break;
    default: return -1;
    }
  }
  if (p >= end) return -1;
  *pp = p + 1;
  buf_putc(out, '\0');
  out->len--;
  return 0;
}

/* The index of name in the comma-separated params, or -1. */
static int param_index(const char *params, const char *name) {
  size_t nl = strlen(name);
  int i = 0;
  for (const char *p = params; p && *p; i++) {
    const char *comma = strchr(p, ',');
    size_t l = comma ? (size_t)(comma - p) : strlen(p);
    if (l == nl && !memcmp(p, name, nl)) return i;
    if (!comma) break;
    p = comma + 1;
  }
  return -1;
}

int control_http_parse_body(const char *body, size_t len, const char *params, char *fields[7], int *argc,
                            const char **why) {
  for (int i = 0; i < CONTROL_HTTP_FIELDS; i++) fields[i] = NULL;
  *argc = 0;
  const char *p = body, *end = body + len;
  buf_t key, val;
  buf_init(&key);
  buf_init(&val);
  *why = "the body is not a JSON object of strings";
  p = skip_ws(p, end);
  if (p == end) goto done; /* no body: no fields */
  if (*p++ != '{') goto bad;
  p = skip_ws(p, end);
  if (p < end && *p == '}') {
    p++;
    goto tail;
  }
  for (;;) {
    p = skip_ws(p, end);
    if (json_string(&p, end, &key) != 0) goto bad;
    p = skip_ws(p, end);
    if (p >= end || *p++ != ':') goto bad;
    p = skip_ws(p, end);
    if (json_string(&p, end, &val) != 0) goto bad;
    int i = memchr(key.data, '\0', key.len) ? -1 : param_index(params, (const char *)key.data);
    if (i < 0 || i >= CONTROL_HTTP_FIELDS) {
      *why = "a member the command does not take";
      goto bad;
    }
    if (fields[i]) {
      *why = "a member given twice";
      goto bad;
    }
    fields[i] = xstrndup((const char *)val.data, val.len);
    if (memchr(val.data, '\0', val.len)) { /* \u0000: what follows would be lost */
      *why = "a string holds a NUL character";
      goto bad;
    }
    if (i + 1 > *argc) *argc = i + 1;
    p = skip_ws(p, end);
    if (p < end && *p == ',') {
      p++;
      continue;
    }
    if (p < end && *p == '}') {
      p++;
      break;
    }
    goto bad;
  }
tail:
  p = skip_ws(p, end);
  if (p != end) goto bad;
done:
  for (int i = 0; i < *argc; i++)
    if (!fields[i]) fields[i] = xstrdup("");
  buf_free(&key);
  buf_free(&val);
  *why = NULL;
  return 0;
bad:
  for (int i = 0; i < CONTROL_HTTP_FIELDS; i++) {
    xfree(fields[i]);
    fields[i] = NULL;
  }
  *argc = 0;
  buf_free(&key);
  buf_free(&val);
  return -1;
}

/* ---- answers ------------------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *json, size_t len, int close) {
  struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)json, MHD_RESPMEM_MUST_COPY);
  if (!r) return MHD_NO;
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  if (status == MHD_HTTP_UNAUTHORIZED) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"xmppd admin\"");
  if (status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, POST");
  if (close) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
  enum MHD_Result rc = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return rc;
}

static enum MHD_Result reply_error(struct MHD_Connection *conn, unsigned status, const char *msg, int close) {
  buf_t b;
  buf_init(&b);
  buf_puts(&b, "{\"ok\":false,\"error\":");
  text_json_str(&b, msg, strlen(msg));
  buf_puts(&b, "}\n");
  enum MHD_Result rc = reply(conn, status, (const char *)b.data, b.len, close);
  buf_free(&b);
  return rc;
}

/* ---- waiting for the control loop ---------------------------------------------------- */

static void waiter_release(waiter_t *w) {
  pthread_mutex_lock(&w->lock);
  int last = --w->refs == 0;
  pthread_mutex_unlock(&w->lock);
  if (!last) return;
  pthread_mutex_destroy(&w->lock);
  pthread_cond_destroy(&w->cond);
  xfree(w->json);
  xfree(w);
}

/* On the control loop: the answer. */
static void done_cb(void *ud, int ok, const char *json, size_t len) {
  waiter_t *w = ud;
  pthread_mutex_lock(&w->lock);
  w->answered = 1;
  w->ok = ok;
  if (json) {
    w->json = xstrndup(json, len);
    w->len = len;
  }
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
  waiter_release(w);
}

static enum MHD_Result run_command(control_http_t *h, struct MHD_Connection *conn, request_t *rq, int argc,
                                   char **fields) {
  waiter_t *w = xcalloc(1, sizeof *w);
  pthread_mutex_init(&w->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w->cond, &ca);
  pthread_condattr_destroy(&ca);
  w->refs = 2;
  pthread_mutex_lock(&h->lock);
  if (h->stopping) {
    pthread_mutex_unlock(&h->lock);
    w->refs = 1;
    waiter_release(w);
    return reply_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "the server is stopping", 1);
  }
  w->next = h->waiters;
  if (h->waiters) h->waiters->prev = w;
  h->waiters = w;
  pthread_mutex_unlock(&h->lock);
  control_submit(h->ctl, rq->origin, rq->cmd->name, argc, (const char *const *)fields, done_cb, w);
  struct timespec dl;
  clock_gettime(CLOCK_MONOTONIC, &dl);
  dl.tv_sec += CONTROL_HTTP_WAIT_S;
  pthread_mutex_lock(&w->lock);
  int rc = 0;
  while (!w->answered && !w->stop && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&w->cond, &w->lock, &dl);
  int answered = w->answered, ok = w->ok;
  char *json = w->json;
  size_t len = w->len;
  w->json = NULL;
  pthread_mutex_unlock(&w->lock);
  pthread_mutex_lock(&h->lock);
  if (w->prev) w->prev->next = w->next;
  else h->waiters = w->next;
  if (w->next) w->next->prev = w->prev;
  pthread_mutex_unlock(&h->lock);
  waiter_release(w);
  enum MHD_Result r;
  if (answered && json) r = reply(conn, ok ? MHD_HTTP_OK : MHD_HTTP_BAD_REQUEST, json, len, 0);
  else if (answered) r = reply_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "the server is stopping", 1);
  else if (rc == ETIMEDOUT) r = reply_error(conn, MHD_HTTP_GATEWAY_TIMEOUT, "no answer in time: the command may still complete", 1);
  else r = reply_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "the server is stopping", 1);
  xfree(json);
  return r;
}

/* ---- requests ------------------------------------------------------------------------ */

/* Constant time in the presented token's bytes (its length may show). */
static int token_ok(const control_http_t *h, const char *auth) {
  static const char pfx[] = "Bearer ";
  if (!auth || strncmp(auth, pfx, sizeof pfx - 1) != 0) return 0;
  auth += sizeof pfx - 1;
  if (strlen(auth) != h->token_len) return 0;
  return text_ct_equal((const unsigned char *)h->token, (const unsigned char *)auth, h->token_len);
}

static void peer_origin(struct MHD_Connection *conn, char *out, size_t cap) {
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  char ip[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (ci && ci->client_addr) {
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET) {
      const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
      inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
      port = ntohs(a->sin_port);
    } else if (sa->sa_family == AF_INET6) {
      const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
      inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
      port = ntohs(a->sin6_port);
    }
  }
  snprintf(out, cap, strchr(ip, ':') ? "via=http peer=[%s]:%u" : "via=http peer=%s:%u", ip, port);
}

typedef struct query_check {
  const char *params;
  int unknown;
} query_check_t;

static enum MHD_Result query_key(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
  query_check_t *q = cls;
  if (param_index(q->params, key) < 0) q->unknown++;
  return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **state) {
  control_http_t *h = cls;
  request_t *rq = *state;
  if (!rq) { /* the headers are in */
    const union MHD_ConnectionInfo *sc = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (sc && sc->socket_context) /* over admin.max_clients (notify_cb) */
      return reply_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "too many admin connections (admin.max_clients): try again", 1);
    char origin[80];
    peer_origin(conn, origin, sizeof origin);
    if (!token_ok(h, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION))) {
      const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
      char *detail = xstrfmt("%s (%s %.64s)", auth ? "wrong bearer token" : "no bearer token",
                             !strcmp(method, "GET") ? "GET" : !strcmp(method, "POST") ? "POST" : "other method",
                             control_text_ok(url, strlen(url)) ? url : "(unprintable path)");
      control_audit_refused(origin, "-", "denied", detail);
      xfree(detail);
      return reply_error(conn, MHD_HTTP_UNAUTHORIZED, "a valid bearer token is required (admin.token)", 1);
    }
    static const char pfx[] = "/admin/";
    const control_cmd_t *cmd = strncmp(url, pfx, sizeof pfx - 1) ? NULL : control_command(h->ctl, url + sizeof pfx - 1);
    if (!cmd) return reply_error(conn, MHD_HTTP_NOT_FOUND, "no such command: POST /admin/COMMAND (docs/operations.md)", 1);
    int get = !strcmp(method, MHD_HTTP_METHOD_GET);
    if (!get && strcmp(method, MHD_HTTP_METHOD_POST) != 0)
      return reply_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "GET (read-only commands) or POST", 1);
    if (get && !cmd->readonly)
      return reply_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "this command changes something: POST it", 1);
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    if (get && ((cl && strcmp(cl, "0") != 0) || te))
      return reply_error(conn, MHD_HTTP_BAD_REQUEST, "a GET has no body", 1);
    if (cl) {
      char *end;
      errno = 0;
      unsigned long long n = strtoull(cl, &end, 10);
      if (errno || *end || n > h->lim.max_body)
        return reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "the body is larger than admin.max_body", 1);
    }
    rq = xcalloc(1, sizeof *rq);
    rq->cmd = cmd;
    buf_init(&rq->body);
    memcpy(rq->origin, origin, sizeof origin);
    *state = rq;
    return MHD_YES;
  }
  if (*upload_size) { /* a piece of the body */
    if (!rq->too_large && rq->body.len + *upload_size <= h->lim.max_body) buf_append(&rq->body, upload, *upload_size);
    else rq->too_large = 1;
    *upload_size = 0;
    return MHD_YES;
  }
  if (rq->too_large) return reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "the body is larger than admin.max_body", 1);
  char *fields[CONTROL_HTTP_FIELDS] = {0};
  int argc = 0;
  if (!strcmp(method, MHD_HTTP_METHOD_GET)) {
    query_check_t q = {rq->cmd->params, 0};
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, query_key, &q);
    if (q.unknown) return reply_error(conn, MHD_HTTP_BAD_REQUEST, "a query parameter the command does not take", 0);
    for (int i = 0; i < CONTROL_HTTP_FIELDS; i++) {
      /* the i-th param's name */
      const char *p = rq->cmd->params;
      for (int k = 0; p && *p && k < i; k++) p = strchr(p, ',') ? strchr(p, ',') + 1 : "";
      if (!p || !*p) break;
      char name[32];
      snprintf(name, sizeof name, "%.*s", (int)strcspn(p, ","), p);
      const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
      if (v) {
        for (int k = argc; k < i; k++) fields[k] = xstrdup("");
        fields[i] = xstrdup(v);
        argc = i + 1;
      }
    }
  } else {
    const char *why;
    if (control_http_parse_body((const char *)rq->body.data, rq->body.len, rq->cmd->params, fields, &argc, &why) != 0)
      return reply_error(conn, MHD_HTTP_BAD_REQUEST, why, 0);
  }
  enum MHD_Result r = run_command(h, conn, rq, argc, fields);
  for (int i = 0; i < CONTROL_HTTP_FIELDS; i++)
    if (fields[i]) {
      explicit_bzero(fields[i], strlen(fields[i])); /* a password */
      xfree(fields[i]);
    }
  return r;
}

static void completed_cb(void *cls, struct MHD_Connection *conn, void **state, enum MHD_RequestTerminationCode toe) {
  request_t *rq = *state;
  if (!rq) return;
  if (rq->body.data) explicit_bzero(rq->body.data, rq->body.len);
  buf_free(&rq->body);
  xfree(rq);
  *state = NULL;
}

/* Counts connections from their accept: those past max_clients are marked, and answered 503. */
static void notify_cb(void *cls, struct MHD_Connection *conn, void **socket_context,
                      enum MHD_ConnectionNotificationCode toe) {
  control_http_t *h = cls;
  if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
    unsigned n = atomic_fetch_add(&h->conns, 1) + 1;
    *socket_context = n > h->lim.max_clients ? (void *)h : NULL;
  } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
    atomic_fetch_sub(&h->conns, 1);
  }
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
  char line[256];
  vsnprintf(line, sizeof line, fmt, ap);
  size_t n = strlen(line);
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
  log_debug("admin http: %s", line);
}

control_http_t *control_http_start(control_t *c, const char *listen, const char *token,
                                   const control_http_limits_t *lim, char **err) {
  struct sockaddr_storage ss;
  char *perr = NULL;
  if (metrics_parse_listen(listen, &ss, NULL, &perr) != 0 || !token || !*token) {
    xfree(perr);
    if (err) *err = xstrfmt("admin.listen: '%s' is not a numeric HOST:PORT (or no admin.token)", listen);
    return NULL;
  }
  control_http_t *h = xcalloc(1, sizeof *h);
  if (http_tls_load(&h->tls, "admin", lim->tls_cert, lim->tls_key, err) != 0) {
    xfree(h);
    return NULL;
  }
  h->ctl = c;
  h->token = xstrdup(token);
  h->token_len = strlen(token);
  h->lim = *lim;
  atomic_init(&h->conns, 0);
  pthread_mutex_init(&h->lock, NULL);
  /* a thread per connection, and poll(2) in the listening thread (select's FD_SETSIZE
   * is below this process's descriptor numbers) */
  unsigned flags =
      MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | http_tls_flags(&h->tls);
  if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_ARRAY, h->tls.opts, MHD_OPTION_SOCK_ADDR,
                          (struct sockaddr *)&ss,
                          MHD_OPTION_CONNECTION_LIMIT, 2 * lim->max_clients, MHD_OPTION_CONNECTION_TIMEOUT,
                          (unsigned)CONTROL_HTTP_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                          (size_t)CONTROL_HTTP_MEMORY, MHD_OPTION_NOTIFY_COMPLETED, completed_cb, h,
                          MHD_OPTION_NOTIFY_CONNECTION, notify_cb, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                          MHD_OPTION_END);
  if (!h->d) {
    if (err)
      *err = xstrfmt("admin.listen: cannot listen on %s%s", listen,
                     h->tls.cert ? ", or admin.tls_cert and admin.tls_key are not a certificate and its key" : "");
    http_tls_free(&h->tls);
    pthread_mutex_destroy(&h->lock);
    xfree(h->token);
    xfree(h);
    return NULL;
  }
  log_info("admin API: %s://%s/admin/ (bearer token required; %u connections, bodies up to %zu bytes)",
           h->tls.cert ? "https" : "http", listen, lim->max_clients, lim->max_body);
  int loopback = 0;
  metrics_parse_listen(listen, &ss, &loopback, NULL);
  if (!loopback && !h->tls.cert)
    log_warn("admin API on %s, not a loopback address, in plain HTTP: the bearer token crosses the network in "
             "clear (set admin.tls_cert and admin.tls_key)",
             listen);
  return h;
}

void control_http_stop(control_http_t *h) {
  if (!h) return;
  pthread_mutex_lock(&h->lock);
  h->stopping = 1;
  for (waiter_t *w = h->waiters; w; w = w->next) {
    pthread_mutex_lock(&w->lock);
    w->stop = 1;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
  }
  pthread_mutex_unlock(&h->lock);
  MHD_stop_daemon(h->d);
  http_tls_free(&h->tls);
  pthread_mutex_destroy(&h->lock);
  explicit_bzero(h->token, h->token_len);
  xfree(h->token);
  xfree(h);
}

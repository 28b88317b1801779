/* The local control socket: see control.h.
 *
 * Bounds (a local peer is trusted no more than the file mode makes it): at most
 * max_clients connections at once (more are answered an error and closed at once), one
 * request line of at most max_request bytes (longer: an error, closed), which must come
 * within CONTROL_TIMEOUT_MS of the connect (else closed), one request per connection.
 * The answer is written, our side shut down, and the connection closed at the client's
 * EOF (input after the request is dropped); a client that does not read or close holds
 * its slot until the timeout. A connection refused as it comes (another uid, too many)
 * holds no slot: it gets its answer, our side is shut, and it is closed at its
 * client's EOF or after CONTROL_REFUSED_MS, whichever comes first. (Closing at once
 * made a client that writes its request after connecting fail on EPIPE before reading
 * the answer waiting for it, and input left unread at close could reset the
 * connection.) At most max_clients refused ones linger so; past that, one is closed
 * as soon as its answer is written, what it sent drained first. Requests are logged as
 * one greppable audit line each:
 *
 *   audit: uid=UID pid=PID command=NAME args=["...",...] result=ok|error|denied[ detail="..."]
 *
 * (the peer's credentials from SO_PEERCRED; command "-" for a request refused before it
 * named a known command; args and detail as JSON strings, a secret field as "***").
 * Requests of the HTTP admin API (control_submit) say "via=http peer=ADDR" instead of
 * the uid and pid. */
#include "common/control.h" /* struct ucred: _GNU_SOURCE comes from CMakeLists.txt */

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/pidlock.h"
#include "common/listener.h"
#include "common/log.h"
#include "common/text.h"

#define CONTROL_TIMEOUT_MS 10000
#define CONTROL_REFUSED_MS 1000

typedef struct control_client control_client_t;

struct control_req {
  control_t *ctl;
  control_client_t *client; /* NULL once the client has gone */
  control_done_cb done;     /* a submitted request's sink (client NULL); NULL once called */
  void *done_ud;
  char *origin;             /* the audit line's "uid=U pid=P" or "via=http peer=A" */
  char *name;
  unsigned secret;          /* the command's secret fields */
  int argc;
  char *argv[8]; /* CONTROL_MAX_FIELDS - 1 */
  int answered;
  control_req_t *next; /* ctl->reqs: every request not answered yet */
  control_req_t *prev;
};

struct control_client {
  uv_pipe_t pipe;
  uv_timer_t timer;
  control_t *ctl;
  control_client_t *prev, *next;
  control_req_t *req;
  buf_t in;
  char origin[48]; /* "uid=U pid=P" */
  int done;    /* the request was read (or refused): input ignored */
  int refused; /* refused as it came: counted in nrefused, not nclients */
  int abrupt;  /* refused past the lingering ones' bound: closed once the answer is written */
  int closing;
  int handles; /* open handles (pipe, timer): freed when 0 */
  uv_write_t wr;
  uv_shutdown_t shut;
  buf_t out;
};

typedef struct submission submission_t;

typedef struct post {
  struct post *next;
  control_req_t *r;
  void (*fn)(control_req_t *r, void *arg);
  void *arg;
  submission_t *sub; /* control_submit's (fn NULL) */
} post_t;

struct submission {
  char *origin;
  int argc; /* with the name */
  char *argv[8];
  control_done_cb done;
  void *ud;
};

struct control {
  char *path;
  int lock_fd;
  int fd; /* the listening socket until control_start hands it to the listener */
  int max_clients;
  size_t max_request;
  uv_loop_t *loop;
  listener_t listener; /* common/listener.c: calm at the open-file limit */
  uv_async_t async;
  uv_mutex_t post_lock;
  post_t *posts, **posts_tail;
  int started, stopped, handles;
  const control_cmd_t *cmds;
  size_t ncmds;
  void *ud;
  control_client_t *clients;
  int nclients; /* served (holding a slot) */
  int nrefused; /* refused and lingering (CONTROL_REFUSED_MS) */
  control_req_t *reqs;
};

/* ---- text ------------------------------------------------------------------------------ */

/* UTF-8 as common/text.c checks it, and no byte a control character or DEL; U+FFFE
 * and U+FFFF (EF BF BE, EF BF BF) are not XML characters either. */
int control_text_ok(const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *)s;
  if (!text_utf8_valid(p, len)) return 0;
  for (size_t i = 0; i < len; i++) {
    if (p[i] < 0x20 || p[i] == 0x7f) return 0;
    if (p[i] == 0xef && i + 2 < len && p[i + 1] == 0xbf && (p[i + 2] == 0xbe || p[i + 2] == 0xbf)) return 0;
  }
  return 1;
}

/* ---- claim and bind ------------------------------------------------------------------- */

control_t *control_open(const char *path, int max_clients, size_t max_request, int *in_use, char **err) {
  *in_use = 0;
  *err = NULL;
  if (!path) { /* a dispatcher for control_submit alone */
    control_t *c = xcalloc(1, sizeof *c);
    c->lock_fd = c->fd = -1;
    uv_mutex_init(&c->post_lock);
    c->posts_tail = &c->posts;
    return c;
  }
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sun.sun_path) {
    *err = xstrfmt("control socket %s: longer than %zu bytes", path, sizeof sun.sun_path - 1);
    return NULL;
  }
  memcpy(sun.sun_path, path, strlen(path) + 1);
  /* one process per control socket: the lock says who serves it (the kernel releases it
   * with the process, however it ends), so a socket file left by a dead one is replaced
   * and a live one's never is */
  char *lp = xstrfmt("%s.lock", path);
  char holder[32];
  int le;
  int lfd = pidlock_take(lp, 0600, holder, &le);
  if (lfd < 0) {
    if (lfd == PIDLOCK_HELD) {
      *in_use = 1;
      *err = xstrfmt("control socket %s is served by another xmppd (pid %s, lock file %s): one process per "
                     "control socket; stop it first, or give this one another server.control_socket",
                     path, holder, lp);
    } else {
      *err = xstrfmt("control socket: cannot lock %s: %s", lp, strerror(le));
    }
    xfree(lp);
    return NULL;
  }
  xfree(lp);
  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      *err = xstrfmt("control socket %s: a file that is not a socket is in the way (not removed)", path);
      close(lfd);
      return NULL;
    }
    unlink(path); /* a dead server's: we hold the lock */
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = xstrfmt("control socket: %s", strerror(errno));
    close(lfd);
    return NULL;
  }
  /* created 0600 (no window with a wider mode: the umask applies to bind), the process's
   * own; no other thread creates files this early */
  mode_t old = umask(0177);
  int rc = bind(fd, (struct sockaddr *)&sun, sizeof sun);
  int e = errno;
  umask(old);
  if (rc != 0 || chmod(path, 0600) != 0 || listen(fd, 64) != 0) {
    if (rc == 0) e = errno;
    *err = xstrfmt("control socket %s: %s", path, strerror(e));
    if (rc == 0) unlink(path);
    close(fd);
    close(lfd);
    return NULL;
  }
  control_t *c = xcalloc(1, sizeof *c);
  c->path = xstrdup(path);
  c->lock_fd = lfd;
  c->fd = fd;
  c->max_clients = max_clients;
  c->max_request = max_request;
  uv_mutex_init(&c->post_lock);
  c->posts_tail = &c->posts;
  return c;
}

/* ---- requests and answers ------------------------------------------------------------ */

static void audit_line(const char *origin, const char *name, int argc, char *const *argv, unsigned secret,
                       const char *result, const char *detail) {
  buf_t b;
  buf_init(&b);
  buf_putc(&b, '[');
  for (int i = 0; i < argc; i++) {
    if (i) buf_putc(&b, ',');
    if (secret & (1u << i)) buf_puts(&b, "\"***\"");
    else text_json_str(&b, argv[i], strlen(argv[i]));
  }
  buf_puts(&b, "]");
  buf_putc(&b, '\0');
  buf_t d;
  buf_init(&d);
  if (detail) {
    buf_puts(&d, " detail=");
    text_json_str(&d, detail, strlen(detail));
  }
  buf_putc(&d, '\0');
  log_info("audit: %s command=%s args=%s result=%s%s", origin, name, (const char *)b.data, result,
           (const char *)d.data);
  buf_free(&b);
  buf_free(&d);
}

void control_audit_refused(const char *origin, const char *name, const char *result, const char *detail) {
  audit_line(origin, name, 0, NULL, 0, result, detail);
}

static void error_line(buf_t *b, const char *msg) {
  buf_puts(b, "{\"ok\":false,\"error\":");
  text_json_str(b, msg, strlen(msg));
  buf_puts(b, "}\n");
}

static void client_close(control_client_t *cl);

static void shutdown_cb(uv_shutdown_t *s, int status) {}

/* Written: our side is shut (the client reads the answer, then EOF); the connection
 * closes at the client's EOF or the timeout. Closing at once, with input the client
 * sent past a refused request still unread, made the kernel reset the connection, and
 * the client could lose the answer (seen under ASan in test_bad_requests). */
static void write_cb(uv_write_t *w, int status) {
  control_client_t *cl = w->data;
  if (cl->abrupt && status == 0) {
    /* refused as it came: what it sent is drained (bounded), then closed at once; the
     * answer is in the client's queue already */
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&cl->pipe, &fd) == 0) {
      char sink[4096];
      for (int i = 0; i < 256 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++) {
      }
    }
    client_close(cl);
    return;
  }
  if (status < 0 || uv_shutdown(&cl->shut, (uv_stream_t *)&cl->pipe, shutdown_cb) != 0) client_close(cl);
}

/* Queues line (with its newline); the rest of the input is read and dropped. */
static void client_answer(control_client_t *cl, const char *line, size_t len) {
  if (cl->closing) return;
  cl->done = 1;
  buf_append(&cl->out, line, len);
  uv_buf_t b = uv_buf_init((char *)cl->out.data, (unsigned)cl->out.len);
  cl->wr.data = cl;
  if (uv_write(&cl->wr, (uv_stream_t *)&cl->pipe, &b, 1, write_cb) != 0) client_close(cl);
}

static void req_free(control_req_t *r) {
  control_t *c = r->ctl;
  if (r->prev) r->prev->next = r->next;
  else if (c->reqs == r) c->reqs = r->next;
  if (r->next) r->next->prev = r->prev;
  if (r->done) r->done(r->done_ud, 0, NULL, 0); /* never answered: the server stopped */
  xfree(r->origin);
  xfree(r->name);
  for (int i = 0; i < r->argc; i++) xfree(r->argv[i]);
  xfree(r);
}

static void answer(control_req_t *r, int ok, const char *fields, const char *msg) {
  if (r->answered) {
    log_error("control: command %s answered twice", r->name);
    return;
  }
  r->answered = 1;
  audit_line(r->origin, r->name, r->argc, r->argv, r->secret, ok ? "ok" : "error", msg);
  if (r->client || r->done) {
    buf_t b;
    buf_init(&b);
    if (ok) {
      buf_puts(&b, "{\"ok\":true");
      if (fields && *fields) {
        buf_putc(&b, ',');
        buf_puts(&b, fields);
      }
      buf_puts(&b, "}\n");
    } else {
      error_line(&b, msg);
    }
    if (r->client) {
      r->client->req = NULL;
      client_answer(r->client, (const char *)b.data, b.len);
    } else {
      control_done_cb done = r->done;
      r->done = NULL;
      done(r->done_ud, ok, (const char *)b.data, b.len);
    }
    buf_free(&b);
  }
  req_free(r);
}

void control_reply(control_req_t *r, const char *fields, const char *detail) { answer(r, 1, fields, detail); }
void control_fail(control_req_t *r, const char *msg) { answer(r, 0, NULL, msg); }

/* An answer to a request that never became one (refused before dispatch), to a socket
 * client cl or a submission's sink done. */
static void refuse_to(control_client_t *cl, control_done_cb done, void *ud, const char *origin, const char *result,
                      const char *msg) {
  control_audit_refused(origin, "-", result, msg);
  buf_t b;
  buf_init(&b);
  error_line(&b, msg);
  if (cl) client_answer(cl, (const char *)b.data, b.len);
  else done(ud, 0, (const char *)b.data, b.len);
  buf_free(&b);
}

static void refuse(control_client_t *cl, const char *name, const char *result, const char *msg) {
  refuse_to(cl, NULL, NULL, cl->origin, result, msg);
}

#define CONTROL_MAX_FIELDS 8

const control_cmd_t *control_command(const control_t *c, const char *name) {
  for (size_t i = 0; i < c->ncmds; i++)
    if (!strcmp(c->cmds[i].name, name)) return &c->cmds[i];
  return NULL;
}

/* argv[0] the command's name, argv[1..argc) its fields (argc <= CONTROL_MAX_FIELDS): checked, then
 * run with the answer going to the client cl or to done. */
static void run_fields(control_t *c, const char *origin, int argc, char **argv, control_client_t *cl,
                       control_done_cb done, void *ud) {
  for (int i = 0; i < argc; i++)
    if (!control_text_ok(argv[i], strlen(argv[i]))) {
      refuse_to(cl, done, ud, origin, "error", "the request is not UTF-8 text without control characters");
      return;
    }
  const control_cmd_t *cmd = control_command(c, argv[0]);
  if (!cmd) {
    buf_t names;
    buf_init(&names);
    for (size_t i = 0; i < c->ncmds; i++) buf_printf(&names, "%s%s", i ? ", " : "", c->cmds[i].name);
    buf_putc(&names, '\0');
    char *msg = xstrfmt("unknown command '%.64s' (commands: %s)", argv[0], (const char *)names.data);
    refuse_to(cl, done, ud, origin, "error", msg);
    xfree(msg);
    buf_free(&names);
    return;
  }
  control_req_t *r = xcalloc(1, sizeof *r);
  r->ctl = c;
  r->client = cl;
  r->done = cl ? NULL : done;
  r->done_ud = ud;
  r->origin = xstrdup(origin);
  r->name = xstrdup(cmd->name);
  r->secret = cmd->secret;
  r->argc = argc - 1;
  for (int i = 1; i < argc; i++) r->argv[i - 1] = xstrdup(argv[i]);
  r->next = c->reqs;
  if (c->reqs) c->reqs->prev = r;
  c->reqs = r;
  if (cl) cl->req = r;
  cmd->run(c->ud, r, r->argc, r->argv);
}

static void dispatch(control_client_t *cl, char *line, size_t len) {
  cl->done = 1; /* the timer runs on: an answer slower than the timeout goes nowhere */
  if (len && line[len - 1] == '\r') line[--len] = '\0';
  /* fields are separated by tabs, which no JID (RFC 7622: PRECIS excludes controls) and
   * no text field may hold: a resource may contain blanks */
  char *argv[CONTROL_MAX_FIELDS];
  int argc = 0;
  for (char *p = line;;) {
    char *tab = strchr(p, '\t');
    if (argc == CONTROL_MAX_FIELDS) {
      refuse(cl, "-", "error", "too many fields in the request");
      return;
    }
    argv[argc++] = p;
    if (!tab) break;
    *tab = '\0';
    p = tab + 1;
  }
  run_fields(cl->ctl, cl->origin, argc, argv, cl, NULL, NULL);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  control_client_t *cl = h->data;
  if (cl->done) cl->in.len = 0; /* answered: what comes now is read into the same room and dropped */
  size_t room = cl->ctl->max_request + 1 - cl->in.len; /* one more: "too long" is seen */
  buf_reserve(&cl->in, room);
  *b = uv_buf_init((char *)cl->in.data + cl->in.len, (unsigned)room);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  control_client_t *cl = s->data;
  if (n < 0) {
    /* gone: a request in flight is answered into the void */
    if (cl->req) cl->req->client = NULL, cl->req = NULL;
    client_close(cl);
    return;
  }
  if (cl->done || n == 0) return;
  size_t from = cl->in.len;
  cl->in.len += (size_t)n;
  char *nl = memchr(cl->in.data + from, '\n', cl->in.len - from);
  if (!nl && cl->in.len <= cl->ctl->max_request) return;
  size_t len = nl ? (size_t)(nl - (char *)cl->in.data) : cl->in.len;
  if (!nl || len + 1 > cl->ctl->max_request) {
    char *msg = xstrfmt("request longer than %zu bytes (server.control_max_request)", cl->ctl->max_request);
    refuse(cl, "-", "error", msg);
    xfree(msg);
    return;
  }
  cl->in.data[len] = '\0';
  dispatch(cl, (char *)cl->in.data, len);
}

static void timeout_cb(uv_timer_t *t) {
  control_client_t *cl = t->data;
  if (cl->req) cl->req->client = NULL, cl->req = NULL; /* an answer still owed: the client did not wait */
  if (!cl->done) log_info("control: a client sent no request within %d ms: closed", CONTROL_TIMEOUT_MS);
  client_close(cl);
}

static void client_closed_cb(uv_handle_t *h) {
  control_client_t *cl = h->data;
  if (--cl->handles > 0) return;
  buf_free(&cl->in);
  buf_free(&cl->out);
  xfree(cl);
}

static void client_close(control_client_t *cl) {
  if (cl->closing) return;
  cl->closing = 1;
  if (cl->req) cl->req->client = NULL, cl->req = NULL;
  control_t *c = cl->ctl;
  if (cl->prev) cl->prev->next = cl->next;
  else c->clients = cl->next;
  if (cl->next) cl->next->prev = cl->prev;
  if (cl->refused) c->nrefused--;
  else c->nclients--;
  uv_close((uv_handle_t *)&cl->pipe, client_closed_cb);
  uv_close((uv_handle_t *)&cl->timer, client_closed_cb);
}

/* A connection refused as it comes: out of the slots, lingering briefly (above). */
static void refuse_now(control_client_t *cl, const char *result, const char *msg) {
  control_t *c = cl->ctl;
  cl->refused = 1;
  c->nclients--;
  c->nrefused++;
  cl->abrupt = c->nrefused > c->max_clients;
  uv_timer_start(&cl->timer, timeout_cb, CONTROL_REFUSED_MS, 0);
  refuse(cl, "-", result, msg);
}

static void on_full(listener_t *l, int err, unsigned shed, int paused) {
  (void)l;
  (void)paused;
  log_warn("control: accept: %s (%u waiting connections closed)", strerror(err), shed);
}

static void on_connection(listener_t *l, int fd) {
  control_t *c = l->data;
  control_client_t *cl = xcalloc(1, sizeof *cl);
  cl->ctl = c;
  buf_init(&cl->in);
  buf_init(&cl->out);
  uv_pipe_init(c->loop, &cl->pipe, 0);
  uv_timer_init(c->loop, &cl->timer);
  cl->pipe.data = cl->timer.data = cl;
  cl->handles = 2;
  cl->next = c->clients;
  if (c->clients) c->clients->prev = cl;
  c->clients = cl;
  c->nclients++;
  if (uv_pipe_open(&cl->pipe, fd) != 0) {
    close(fd);
    client_close(cl);
    return;
  }
  struct ucred uc = {0};
  socklen_t ul = sizeof uc;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) != 0) {
    log_warn("control: no peer credentials: connection closed");
    client_close(cl);
    return;
  }
  snprintf(cl->origin, sizeof cl->origin, "uid=%u pid=%d", (unsigned)uc.uid, (int)uc.pid);
  uv_timer_start(&cl->timer, timeout_cb, CONTROL_TIMEOUT_MS, 0);
  /* reading from the start, also when refused below: the connection closes at the
   * client's EOF, after it has read the answer */
  uv_read_start((uv_stream_t *)&cl->pipe, alloc_cb, read_cb);
  /* the file mode keeps others out; this holds even if someone widened it */
  if (uc.uid != 0 && uc.uid != geteuid()) {
    char *msg = xstrfmt("uid %u may not use this control socket: only the server's user (uid %u) and root",
                        (unsigned)uc.uid, (unsigned)geteuid());
    refuse_now(cl, "denied", msg);
    xfree(msg);
    return;
  }
  if (c->nclients > c->max_clients) {
    char *msg = xstrfmt("too many control connections (server.control_max_clients = %d): try again", c->max_clients);
    refuse_now(cl, "error", msg);
    xfree(msg);
    return;
  }
}

/* ---- cross-thread posts -------------------------------------------------------------- */

static void push_post(control_t *c, post_t *p);

void control_post(control_req_t *r, void (*fn)(control_req_t *r, void *arg), void *arg) {
  control_t *c = r->ctl;
  post_t *p = xcalloc(1, sizeof *p);
  p->r = r;
  p->fn = fn;
  p->arg = arg;
  push_post(c, p);
}

static void run_submission(control_t *c, submission_t *s) {
  if (c->stopped) {
    buf_t b;
    buf_init(&b);
    error_line(&b, "the server is stopping");
    s->done(s->ud, 0, (const char *)b.data, b.len);
    buf_free(&b);
  } else if (s->argc > CONTROL_MAX_FIELDS) {
    refuse_to(NULL, s->done, s->ud, s->origin, "error", "too many fields in the request");
  } else {
    run_fields(c, s->origin, s->argc, s->argv, NULL, s->done, s->ud);
  }
  xfree(s->origin);
  for (int i = 0; i < s->argc && i < CONTROL_MAX_FIELDS; i++) xfree(s->argv[i]);
  xfree(s);
}

static void push_post(control_t *c, post_t *p) {
  uv_mutex_lock(&c->post_lock);
  *c->posts_tail = p;
  c->posts_tail = &p->next;
  uv_mutex_unlock(&c->post_lock);
  uv_async_send(&c->async);
}

void control_submit(control_t *c, const char *origin, const char *name, int argc, const char *const *argv,
                    control_done_cb done, void *ud) {
  submission_t *s = xcalloc(1, sizeof *s);
  s->origin = xstrdup(origin);
  s->done = done;
  s->ud = ud;
  s->argc = argc + 1; /* more than CONTROL_MAX_FIELDS: refused on the loop */
  s->argv[0] = xstrdup(name);
  for (int i = 0; i < argc && i + 1 < CONTROL_MAX_FIELDS; i++) s->argv[i + 1] = xstrdup(argv[i]);
  post_t *p = xcalloc(1, sizeof *p);
  p->sub = s;
  push_post(c, p);
}

static void run_posts(control_t *c) {
  uv_mutex_lock(&c->post_lock);
  post_t *p = c->posts;
  c->posts = NULL;
  c->posts_tail = &c->posts;
  uv_mutex_unlock(&c->post_lock);
  while (p) {
    post_t *nx = p->next;
    if (p->sub) run_submission(c, p->sub);
    else p->fn(p->r, p->arg);
    xfree(p);
    p = nx;
  }
}

static void async_cb(uv_async_t *a) { run_posts(a->data); }

/* ---- life -------------------------------------------------------------------------------- */

int control_start(control_t *c, uv_loop_t *loop, const control_cmd_t *cmds, size_t n, void *ud) {
  c->loop = loop;
  c->cmds = cmds;
  c->ncmds = n;
  c->ud = ud;
  uv_async_init(loop, &c->async, async_cb);
  c->async.data = c;
  uv_unref((uv_handle_t *)&c->async);
  c->started = 1;
  c->handles = 1;
  if (!c->path) return 0; /* control_submit alone */
  c->handles = 2;
  int rc = listener_open(&c->listener, loop, c->fd, on_connection, on_full, c);
  if (rc == 0) c->fd = -1;
  if (rc != 0) {
    log_error("control socket %s: %s", c->path, uv_strerror(rc));
    return -1;
  }
  log_info("control socket %s (mode 0600)", c->path);
  return 0;
}

static void ctl_closed_cb(uv_handle_t *h);
static void ctl_listener_closed(listener_t *l);

void control_stop(control_t *c) {
  if (!c || !c->started || c->stopped) return;
  c->stopped = 1;
  if (c->path) listener_close(&c->listener, ctl_listener_closed);
  while (c->clients) client_close(c->clients);
}

static void release(control_t *c) {
  /* requests never answered (their work was dropped at shutdown): freed unanswered */
  while (c->reqs) req_free(c->reqs);
  if (c->fd >= 0) close(c->fd);
  if (c->path) {
    unlink(c->path);
    close(c->lock_fd); /* releases the flock; the lock file stays, as the store's */
  }
  uv_mutex_destroy(&c->post_lock);
  xfree(c->path);
  xfree(c);
}

static void ctl_closed_cb(uv_handle_t *h) {
  control_t *c = h->data;
  if (--c->handles == 0) release(c);
}

static void ctl_listener_closed(listener_t *l) {
  control_t *c = l->data;
  if (--c->handles == 0) release(c);
}

void control_close(control_t *c) {
  if (!c) return;
  if (!c->started) {
    release(c);
    return;
  }
  control_stop(c);
  run_posts(c); /* their answers go nowhere: the clients are closed */
  uv_close((uv_handle_t *)&c->async, ctl_closed_cb);
}

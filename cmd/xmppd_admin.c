/* xmppd's control commands: see xmppd_admin.h. Each answer is one JSON object
 * (docs/operations.md lists the fields). The same table serves the control socket and
 * the HTTP admin API (common/control_http.c): one implementation of each command.
 *
 * adduser, deluser and passwd run on libuv's thread pool, with a store handle of their
 * own opened for the job (a store_t belongs to one thread), as the server's other
 * threads use the store: a running SQLite server and these commands share its WAL and
 * busy timeout instead of an outside xmppctl taking the database lock. */
#include "cmd/xmppd_admin.h"
#include "cmd/xmppd_domains.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/control.h"
#include "common/control_http.h"
#include "common/domains.h"
#include "common/err.h"
#include "common/scram.h"
#include "common/store/store.h"
#include "common/jid.h"
#include "common/log.h"
#include "common/version.h"
#include "router/router.h"

struct xmppd_admin {
  control_t *ctl;
  control_http_t *http; /* admin.listen: NULL when off */
  uv_loop_t *loop;
  int jobs; /* user commands on the thread pool */
  const xmpp_config_t *cfg;
  edge_t *edge;
  const bus_t *bus;
  uint64_t started_mono_ms;
  time_t started;
};

static uint64_t mono_ms(void) { return uv_hrtime() / 1000000; }

static const char *role_name(int role) {
  return role == ROLE_EDGE ? "edge" : role == ROLE_ROUTER ? "router" : "all";
}

/* ---- status ------------------------------------------------------------------------- */

static void status_answer(xmppd_admin_t *a, control_req_t *r, long sessions, long detached) {
  buf_t b;
  buf_init(&b);
  char when[32];
  struct tm tm;
  gmtime_r(&a->started, &tm);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  buf_printf(&b, "\"version\":\"%s\",\"pid\":%ld,\"started\":\"%s\",\"uptime_s\":%llu,\"domain\":", XMPPD_VERSION,
             (long)getpid(), when, (unsigned long long)((mono_ms() - a->started_mono_ms) / 1000));
  text_json_str(&b, a->cfg->domain, strlen(a->cfg->domain));
  buf_printf(&b, ",\"role\":\"%s\",\"node_id\":%d,\"io_threads\":%d,\"router_workers\":%d,\"shards\":%u,\"sessions\":%ld",
             role_name(config_role(a->cfg)), a->cfg->cluster_node, a->bus->nedges, a->bus->nworkers,
             a->bus->nshards, sessions);
  const char *target = NULL;
  long conns = 0;
  if (a->edge && edge_draining(a->edge, &target, &conns)) {
    /* done: no connection open and no detached session left to be resumed elsewhere */
    buf_printf(&b, ",\"drain\":{\"state\":\"%s\",\"connections\":%ld,\"detached\":%ld,\"target\":",
               conns == 0 && detached == 0 ? "done" : "draining", conns, detached);
    if (target) text_json_str(&b, target, strlen(target));
    else buf_puts(&b, "null");
    buf_putc(&b, '}');
  }
  buf_putc(&b, '\0');
  char detail[32];
  snprintf(detail, sizeof detail, "%ld sessions", sessions);
  control_reply(r, (const char *)b.data, detail);
  buf_free(&b);
}

/* ---- the edge's requests: done on an edge thread, answered on the loop -------------- */

typedef struct pending {
  xmppd_admin_t *a;
  control_req_t *r;
  edge_admin_op_t op;
  char *target; /* kick: the JID asked; drain: HOST:PORT */
  int rate;     /* drain */
  edge_admin_t *er;
} pending_t;

static void answered(control_req_t *r, void *arg);

/* On the edge thread that finished last: hand it to the loop. */
static void edge_done(edge_admin_t *er, void *ud) {
  pending_t *p = ud;
  control_post(p->r, answered, p);
}

static void answered(control_req_t *r, void *arg) {
  pending_t *p = arg;
  edge_admin_t *er = p->er;
  size_t n = edge_admin_count(er);
  buf_t b;
  buf_init(&b);
  char detail[64];
  switch (p->op) {
  case EDGE_ADMIN_COUNT:
    status_answer(p->a, r, (long)n, (long)edge_admin_detached(er));
    break;
  case EDGE_ADMIN_SESSIONS:
    if (p->target && !n) {
      char *msg = xstrfmt("no session of %s on this server", p->target);
      control_fail(r, msg);
      xfree(msg);
      break;
    }
    buf_printf(&b, "\"count\":%zu,\"sessions\":[%s]", n, edge_admin_json(er));
    snprintf(detail, sizeof detail, "%zu sessions", n);
    control_reply(r, (const char *)b.data, detail);
    break;
  case EDGE_ADMIN_KICK:
    if (!n) {
      char *msg = xstrfmt("no session of %s on this server", p->target);
      control_fail(r, msg);
      xfree(msg);
      break;
    }
    buf_printf(&b, "\"count\":%zu,\"kicked\":[%s]", n, edge_admin_json(er));
    snprintf(detail, sizeof detail, "%zu sessions ended", n);
    control_reply(r, (const char *)b.data, detail);
    break;
  case EDGE_ADMIN_DRAIN:
    buf_printf(&b, "\"count\":%zu,\"rate\":%d,\"target\":", n, p->rate);
    if (p->target) text_json_str(&b, p->target, strlen(p->target));
    else buf_puts(&b, "null");
    buf_putc(&b, '\0');
    snprintf(detail, sizeof detail, "draining %zu connections", n);
    control_reply(r, (const char *)b.data, detail);
    break;
  case EDGE_ADMIN_BROADCAST:
    buf_printf(&b, "\"count\":%zu", n);
    snprintf(detail, sizeof detail, "sent to %zu sessions", n);
    control_reply(r, (const char *)b.data, detail);
    break;
  case EDGE_ADMIN_DOMAIN_GONE: break; /* from SIGHUP (cmd/xmppd.c), never a request */
  }
  buf_free(&b);
  edge_admin_free(er);
  xfree(p->target);
  xfree(p);
}

static void edge_request(xmppd_admin_t *a, control_req_t *r, edge_admin_op_t op, const char *jid, const char *text) {
  pending_t *p = xcalloc(1, sizeof *p);
  p->a = a;
  p->r = r;
  p->op = op;
  p->target = jid ? xstrdup(jid) : NULL;
  p->er = edge_admin_new(a->edge, op, jid, text);
  edge_admin_post(p->er, edge_done, p);
}

/* A user's JID, normalised into j (a name without '@' gets the domain); full: a
 * resource is allowed. 0, or -1 after failing r. */
static int user_jid(xmppd_admin_t *a, control_req_t *r, const char *cmd, const char *in, int full, jid_t *j) {
  memset(j, 0, sizeof *j);
  char *s = strchr(in, '@') ? xstrdup(in) : NULL;
  if (!s) { /* user or user/resource */
    size_t ul = strcspn(in, "/");
    s = xstrfmt("%.*s@%s%s", (int)ul, in, a->cfg->domain, in + ul);
  }
  int rc = *in ? jid_parse(s, strlen(s), j) : -1;
  xfree(s);
  if (rc != 0 || !j->local || (!full && j->resource)) {
    jid_free(j);
    char *msg = xstrfmt("%s: '%s' is not a user's %s", cmd, in,
                        full ? "JID (user@domain or user@domain/resource)" : "bare JID (user@domain)");
    control_fail(r, msg);
    xfree(msg);
    return -1;
  }
  return 0;
}

/* ---- commands ----------------------------------------------------------------------- */

static void cmd_status(void *ud, control_req_t *r, int argc, char **argv) {
  xmppd_admin_t *a = ud;
  if (argc) {
    control_fail(r, "usage: status");
    return;
  }
  if (!a->edge) status_answer(a, r, 0, 0);
  else edge_request(a, r, EDGE_ADMIN_COUNT, NULL, NULL);
}

static void cmd_sessions(void *ud, control_req_t *r, int argc, char **argv) {
  xmppd_admin_t *a = ud;
  if (argc > 1) {
    control_fail(r, "usage: sessions [JID]");
    return;
  }
  jid_t j;
  if (argc && user_jid(a, r, "sessions", argv[0], 1, &j) != 0) return;
  if (!a->edge) {
    if (argc) {
      jid_free(&j);
      control_fail(r, "sessions: no client connections in this process (a router): ask the edge nodes");
      return;
    }
    control_reply(r, "\"count\":0,\"sessions\":[]", "no edge here");
    return;
  }
  edge_request(a, r, EDGE_ADMIN_SESSIONS, argc ? j.full : NULL, NULL);
  if (argc) jid_free(&j);
}

static void cmd_kick(void *ud, control_req_t *r, int argc, char **argv) {
  xmppd_admin_t *a = ud;
  if (argc < 1 || argc > 2 || !*argv[0]) {
    control_fail(r, "usage: kick JID [TEXT]");
    return;
  }
  jid_t j;
  if (user_jid(a, r, "kick", argv[0], 1, &j) != 0) return;
  if (!a->edge) {
    jid_free(&j);
    control_fail(r, "kick: no client connections in this process (a router): ask the edge nodes");
    return;
  }
  edge_request(a, r, EDGE_ADMIN_KICK, j.full, argc > 1 ? argv[1] : NULL);
  jid_free(&j);
}

/* RFC 6120 §4.9.3.19: see-other-host holds a domain name or an IP address (IPv6 in
 * brackets), optionally ':' and a port. A DNS name's letters, digits, '-' and '.', at
 * most 253; a port 1-65535. */
static int host_port_ok(const char *s) {
  const char *h = s, *end;
  size_t hl;
  if (*s == '[') {
    end = strchr(s, ']');
    if (!end || end == s + 1) return 0;
    for (const char *p = s + 1; p < end; p++)
      if (!strchr("0123456789abcdefABCDEF:.", *p)) return 0;
    end++;
  } else {
    end = s + strcspn(s, ":");
    if (end == s) return 0;
    for (const char *p = h; p < end; p++)
      if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
            *p == '.'))
        return 0;
  }
  hl = (size_t)(end - s);
  if (hl > 253 + 2) return 0;
  if (!*end) return 1;
  if (*end != ':' || !end[1] || strlen(end + 1) > 5) return 0;
  long port = 0;
  for (const char *p = end + 1; *p; p++) {
    if (*p < '0' || *p > '9') return 0;
    port = port * 10 + (*p - '0');
  }
  return port >= 1 && port <= 65535;
}

#define DRAIN_MAX_RATE 100000

static void cmd_drain(void *ud, control_req_t *r, int argc, char **argv) {
  xmppd_admin_t *a = ud;
  char *endp = NULL;
  long rate = argc >= 1 ? strtol(argv[0], &endp, 10) : 0;
  if (argc < 1 || argc > 2 || !*argv[0] || *endp || rate < 1 || rate > DRAIN_MAX_RATE) {
    control_fail(r, "usage: drain RATE [HOST:PORT] (RATE: connections sent away per second, 1-100000)");
    return;
  }
  const char *target = argc > 1 && *argv[1] ? argv[1] : NULL;
  if (target && !host_port_ok(target)) {
    control_fail(r, "drain: the target must be HOST or HOST:PORT (an IPv6 address in brackets)");
    return;
  }
  if (!a->edge) {
    control_fail(r, "drain: no client connections in this process (a router): ask the edge nodes");
    return;
  }
  if (edge_drain_begin(a->edge, target) != 0) {
    control_fail(r, "drain: already draining (see status)");
    return;
  }
  pending_t *p = xcalloc(1, sizeof *p);
  p->a = a;
  p->r = r;
  p->op = EDGE_ADMIN_DRAIN;
  p->target = target ? xstrdup(target) : NULL;
  p->rate = (int)rate;
  p->er = edge_admin_new(a->edge, EDGE_ADMIN_DRAIN, NULL, NULL);
  edge_admin_set_rate(p->er, (int)rate);
  edge_admin_post(p->er, edge_done, p);
}

static void cmd_broadcast(void *ud, control_req_t *r, int argc, char **argv) {
  xmppd_admin_t *a = ud;
  if (argc != 1 || !*argv[0]) {
    control_fail(r, "usage: broadcast TEXT");
    return;
  }
  if (!a->edge) {
    control_fail(r, "broadcast: no client connections in this process (a router): ask the edge nodes");
    return;
  }
  edge_request(a, r, EDGE_ADMIN_BROADCAST, NULL, argv[0]);
}

/* domains: the current table (common/domains.h), configuration and runtime ones. */
static void cmd_domains(void *ud, control_req_t *r, int argc, char **argv) {
  (void)ud;
  if (argc) {
    control_fail(r, "usage: domains");
    return;
  }
  const domains_t *t = domains_current();
  buf_t b;
  buf_init(&b);
  buf_printf(&b, "\"count\":%zu,\"domains\":[", domains_count(t));
  for (size_t i = 0; i < domains_count(t); i++) {
    buf_puts(&b, i ? ",{" : "{");
    xdom_json(&b, domains_at(t, i), i == 0);
    buf_putc(&b, '}');
  }
  buf_puts(&b, "]");
  buf_putc(&b, '\0');
  char detail[32];
  snprintf(detail, sizeof detail, "%zu domains", domains_count(t));
  control_reply(r, (const char *)b.data, detail);
  buf_free(&b);
}

/* reload: as SIGHUP, with the outcome in the answer. */
static void cmd_reload(void *ud, control_req_t *r, int argc, char **argv) {
  xmppd_admin_t *a = ud;
  if (argc) {
    control_fail(r, "usage: reload");
    return;
  }
  char *summary = NULL;
  if (xmppd_reload(a->edge, &summary) != 0) {
    control_fail(r, summary ? summary : "reload refused");
  } else {
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "\"result\":");
    text_json_str(&b, summary, strlen(summary));
    buf_putc(&b, '\0');
    control_reply(r, (const char *)b.data, summary);
    buf_free(&b);
  }
  xfree(summary);
}

/* ---- accounts: on the thread pool -------------------------------------------------- */

typedef enum { USER_ADD, USER_DEL, USER_PASSWD } user_op_t;

typedef struct user_job {
  uv_work_t work;
  xmppd_admin_t *a;
  control_req_t *r;
  user_op_t op;
  char *bare;
  char *password;
  size_t pwlen;
  int rc;      /* 0 or an XMPP_* code */
  char *error; /* the store's message when it cannot be opened */
} user_job_t;

static void user_work(uv_work_t *w) {
  user_job_t *j = w->data;
  const xmpp_config_t *cfg = j->a->cfg;
  store_account_t acct;
  if (j->op != USER_DEL) {
    uint32_t iter = cfg->scram_iterations > 0 ? (uint32_t)cfg->scram_iterations : 4096;
    if (scram_cred_make(SCRAM_SHA1, j->password, j->pwlen, iter, &acct.sha1) != 0 ||
        scram_cred_make(SCRAM_SHA256, j->password, j->pwlen, iter, &acct.sha256) != 0) {
      j->rc = XMPP_ERR;
      explicit_bzero(&acct, sizeof acct);
      return;
    }
  }
  store_t *st = store_open(cfg->store_backend, config_store_target(cfg), &j->error);
  if (!st) {
    j->rc = XMPP_EIO;
    explicit_bzero(&acct, sizeof acct);
    return;
  }
  switch (j->op) {
  case USER_ADD: j->rc = store_account_create(st, j->bare, &acct); break;
  case USER_DEL: j->rc = store_account_delete(st, j->bare); break;
  case USER_PASSWD:
    j->rc = store_account_update(st, j->bare, &acct);
    if (!j->rc) { /* XEP-0484: the FAST tokens of the old password go, as xmppctl passwd does */
      int n = store_fast_delete(st, j->bare, NULL);
      if (n < 0) j->rc = n;
    }
    break;
  }
  store_close(st);
  explicit_bzero(&acct, sizeof acct);
}

static void user_done(uv_work_t *w, int status) {
  user_job_t *j = w->data;
  static const char *const verbs[] = {"created", "deleted", "password changed"};
  if (status == 0 && j->rc == 0) {
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "\"jid\":");
    text_json_str(&b, j->bare, strlen(j->bare));
    buf_putc(&b, '\0');
    control_reply(j->r, (const char *)b.data, verbs[j->op]);
    buf_free(&b);
  } else {
    char *msg = j->rc == XMPP_EEXIST   ? xstrfmt("user %s already exists", j->bare)
                : j->rc == XMPP_ENOENT ? xstrfmt("no such user %s", j->bare)
                : j->error             ? xstrfmt("storage: %s", j->error)
                                       : xstrfmt("%s: %s", j->bare, status ? uv_strerror(status) : xmpp_strerror(j->rc));
    control_fail(j->r, msg);
    xfree(msg);
  }
  j->a->jobs--;
  if (j->password) {
    explicit_bzero(j->password, j->pwlen);
    xfree(j->password);
  }
  xfree(j->error);
  xfree(j->bare);
  xfree(j);
}

static void user_command(xmppd_admin_t *a, control_req_t *r, user_op_t op, const char *name, int argc, char **argv) {
  int want = op == USER_DEL ? 1 : 2;
  if (argc != want) {
    control_fail(r, op == USER_DEL ? "usage: deluser JID" : op == USER_ADD ? "usage: adduser JID PASSWORD"
                                                                           : "usage: passwd JID PASSWORD");
    return;
  }
  jid_t jid;
  if (user_jid(a, r, name, argv[0], 0, &jid) != 0) return;
  const char *why = want == 2 ? scram_password_problem(argv[1], strlen(argv[1])) : NULL;
  if (why) {
    jid_free(&jid);
    char *msg = xstrfmt("%s: %s", name, why);
    control_fail(r, msg);
    xfree(msg);
    return;
  }
  user_job_t *j = xcalloc(1, sizeof *j);
  j->a = a;
  j->r = r;
  j->op = op;
  j->bare = xstrdup(jid.bare);
  jid_free(&jid);
  if (want == 2) {
    j->pwlen = strlen(argv[1]);
    j->password = xstrndup(argv[1], j->pwlen);
  }
  j->work.data = j;
  a->jobs++;
  int rc = uv_queue_work(a->loop, &j->work, user_work, user_done);
  if (rc != 0) user_done(&j->work, rc);
}

static void cmd_adduser(void *ud, control_req_t *r, int argc, char **argv) {
  user_command(ud, r, USER_ADD, "adduser", argc, argv);
}
static void cmd_deluser(void *ud, control_req_t *r, int argc, char **argv) {
  user_command(ud, r, USER_DEL, "deluser", argc, argv);
}
static void cmd_passwd(void *ud, control_req_t *r, int argc, char **argv) {
  user_command(ud, r, USER_PASSWD, "passwd", argc, argv);
}

/* ---- cluster ------------------------------------------------------------------------- */

/* What this process knows of the cluster: its node, and the shard map it routes by
 * (bus->owner, as the cluster thread last published it), as shards per owner node. */
static void cmd_cluster(void *ud, control_req_t *r, int argc, char **argv) {
  xmppd_admin_t *a = ud;
  if (argc) {
    control_fail(r, "usage: cluster");
    return;
  }
  const bus_t *bus = a->bus;
  buf_t b;
  buf_init(&b);
  buf_printf(&b, "\"clustered\":%s,\"node_id\":%u,\"role\":\"%s\",\"cluster\":",
             bus_clustered(bus) ? "true" : "false", (unsigned)bus->node, role_name(config_role(a->cfg)));
  if (a->cfg->cluster_node) text_json_str(&b, a->cfg->cluster_name, strlen(a->cfg->cluster_name));
  else buf_puts(&b, "null");
  buf_printf(&b, ",\"shards\":%u,\"owners\":[", bus->nshards);
  uint32_t unowned = 0;
  if (!bus->owner) { /* one process: every shard is this one's */
    if (bus->nworkers) buf_printf(&b, "{\"node\":%u,\"shards\":%u,\"self\":true}", (unsigned)bus->node, bus->nshards);
    else unowned = bus->nshards;
  } else {
    uint32_t *per = xcalloc(65536, sizeof *per); /* node ids are 16 bits: one pass */
    for (uint32_t s = 0; s < bus->nshards; s++) {
      uint32_t o = atomic_load_explicit(&bus->owner[s], memory_order_relaxed);
      if (!o) unowned++;
      else per[BUS_OWNER_NODE(o)]++;
    }
    int first = 1;
    for (uint32_t id = 0; id < 65536; id++) {
      if (!per[id]) continue;
      buf_printf(&b, "%s{\"node\":%u,\"shards\":%u,\"self\":%s}", first ? "" : ",", id, per[id],
                 id == bus->node ? "true" : "false");
      first = 0;
    }
    xfree(per);
  }
  buf_printf(&b, "],\"unowned\":%u", unowned);
  buf_putc(&b, '\0');
  control_reply(r, (const char *)b.data, NULL);
  buf_free(&b);
}

/* fields: the HTTP API's JSON keys (control.h); secret bit 1: the password */
static const control_cmd_t commands[] = {
    {"status", cmd_status, NULL, 0, 1},
    {"sessions", cmd_sessions, "jid", 0, 1},
    {"kick", cmd_kick, "jid,text", 0, 0},
    {"broadcast", cmd_broadcast, "text", 0, 0},
    {"drain", cmd_drain, "rate,target", 0, 0},
    {"adduser", cmd_adduser, "jid,password", 1u << 1, 0},
    {"deluser", cmd_deluser, "jid", 0, 0},
    {"passwd", cmd_passwd, "jid,password", 1u << 1, 0},
    {"cluster", cmd_cluster, NULL, 0, 1},
    {"domains", cmd_domains, NULL, 0, 1},
    {"domain-add", xdom_cmd_add, "name,template,certificate,key", 0, 0},
    {"domain-remove", xdom_cmd_remove, "name,purge", 0, 0},
    {"domain-show", xdom_cmd_show, "name", 0, 1},
    {"reload", cmd_reload, NULL, 0, 0},
};

/* ---- life --------------------------------------------------------------------------- */

int xmppd_admin_open(const xmpp_config_t *cfg, xmppd_admin_t **out) {
  *out = NULL;
  char *path = config_control_socket(cfg);
  if (!path && !cfg->admin_listen[0]) return 0;
  int in_use = 0;
  char *err = NULL;
  control_t *ctl = control_open(path, cfg->control_max_clients, (size_t)cfg->control_max_request, &in_use, &err);
  xfree(path);
  if (!ctl) {
    log_error("%s", err ? err : "control socket: cannot open");
    xfree(err);
    return in_use ? 2 : 1;
  }
  xmppd_admin_t *a = xcalloc(1, sizeof *a);
  a->ctl = ctl;
  a->cfg = cfg;
  *out = a;
  return 0;
}

int xmppd_admin_start(xmppd_admin_t *a, uv_loop_t *loop, edge_t *edge, const bus_t *bus) {
  if (!a) return 0;
  a->edge = edge;
  a->bus = bus;
  a->started = time(NULL);
  a->started_mono_ms = mono_ms();
  a->loop = loop;
  if (control_start(a->ctl, loop, commands, sizeof commands / sizeof commands[0], a) != 0) return -1;
  if (a->cfg->admin_listen[0]) {
    char *err = NULL;
    control_http_limits_t lim = {(unsigned)a->cfg->admin_max_clients, (size_t)a->cfg->admin_max_body,
                                 a->cfg->admin_tls_cert, a->cfg->admin_tls_key};
    a->http = control_http_start(a->ctl, a->cfg->admin_listen, a->cfg->admin_token, &lim, &err);
    if (!a->http) {
      log_error("%s", err ? err : "admin.listen: cannot start");
      xfree(err);
      return -1;
    }
  }
  return 0;
}

void xmppd_admin_stop(xmppd_admin_t *a) {
  if (!a) return;
  control_http_stop(a->http); /* its waiting requests are answered 503 first */
  a->http = NULL;
  control_stop(a->ctl);
}

void xmppd_admin_close(xmppd_admin_t *a) {
  if (!a) return;
  control_http_stop(a->http); /* a start-up that stopped early */
  /* the user commands' jobs end (a store call, a key derivation) before their
   * requests go */
  while ((a->jobs > 0 || xdom_busy()) && a->loop) uv_run(a->loop, UV_RUN_ONCE);
  control_close(a->ctl);
  xfree(a);
}

/* xmppd's control socket commands: see xmppd_admin.h. Each answer is one JSON object
 * (docs/operations.md lists the fields). */
#include "cmd/xmppd_admin.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/control.h"
#include "common/domains.h"
#include "common/err.h"
#include "common/jid.h"
#include "common/log.h"
#include "common/version.h"
#include "router/router.h"

struct xmppd_admin {
  control_t *ctl;
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

static void status_answer(xmppd_admin_t *a, control_req_t *r, long sessions) {
  buf_t b;
  buf_init(&b);
  char when[32];
  struct tm tm;
  gmtime_r(&a->started, &tm);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  buf_printf(&b, "\"version\":\"%s\",\"pid\":%ld,\"started\":\"%s\",\"uptime_s\":%llu,\"domain\":", XMPPD_VERSION,
             (long)getpid(), when, (unsigned long long)((mono_ms() - a->started_mono_ms) / 1000));
  control_json_str(&b, a->cfg->domain, strlen(a->cfg->domain));
  buf_printf(&b, ",\"role\":\"%s\",\"node_id\":%d,\"io_threads\":%d,\"router_workers\":%d,\"shards\":%u,\"sessions\":%ld",
             role_name(config_role(a->cfg)), a->cfg->cluster_node, a->bus->nedges, a->bus->nworkers,
             a->bus->nshards, sessions);
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
  char *target; /* kick: the JID asked */
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
    status_answer(p->a, r, (long)n);
    break;
  case EDGE_ADMIN_SESSIONS:
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

/* ---- commands ----------------------------------------------------------------------- */

static void cmd_status(void *ud, control_req_t *r, int argc, char **argv) {
  xmppd_admin_t *a = ud;
  if (argc) {
    control_fail(r, "usage: status");
    return;
  }
  if (!a->edge) status_answer(a, r, 0);
  else edge_request(a, r, EDGE_ADMIN_COUNT, NULL, NULL);
}

static void cmd_sessions(void *ud, control_req_t *r, int argc, char **argv) {
  xmppd_admin_t *a = ud;
  if (argc) {
    control_fail(r, "usage: sessions");
    return;
  }
  if (!a->edge) control_reply(r, "\"count\":0,\"sessions\":[]", "no edge here");
  else edge_request(a, r, EDGE_ADMIN_SESSIONS, NULL, NULL);
}

static void cmd_kick(void *ud, control_req_t *r, int argc, char **argv) {
  xmppd_admin_t *a = ud;
  if (argc < 1 || argc > 2 || !*argv[0]) {
    control_fail(r, "usage: kick JID [TEXT]");
    return;
  }
  jid_t j;
  memset(&j, 0, sizeof j);
  if (jid_parse(argv[0], strlen(argv[0]), &j) != 0 || !j.local) {
    jid_free(&j);
    char *msg = xstrfmt("kick: '%s' is not a user's JID (user@domain or user@domain/resource)", argv[0]);
    control_fail(r, msg);
    xfree(msg);
    return;
  }
  if (!a->edge) {
    jid_free(&j);
    control_fail(r, "kick: no client connections in this process (a router): ask the edge nodes");
    return;
  }
  edge_request(a, r, EDGE_ADMIN_KICK, j.full, argc > 1 ? argv[1] : NULL);
  jid_free(&j);
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

/* domains: the current table (common/domains.h). */
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
    const domain_t *d = domains_at(t, i);
    buf_puts(&b, i ? ",{\"name\":" : "{\"name\":");
    control_json_str(&b, d->name, strlen(d->name));
    buf_printf(&b, ",\"default\":%s,\"certificate\":", i ? "false" : "true");
    control_json_str(&b, d->cert, strlen(d->cert));
    buf_puts(&b, ",\"disabled\":[");
    int n = 0;
    for (int m = 0; modules_name(m); m++)
      if (d->disabled & (1ULL << m)) {
        if (n++) buf_putc(&b, ',');
        control_json_str(&b, modules_name(m), strlen(modules_name(m)));
      }
    buf_printf(&b, "],\"max_resources\":%d}", d->max_resources);
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
    control_json_str(&b, summary, strlen(summary));
    buf_putc(&b, '\0');
    control_reply(r, (const char *)b.data, summary);
    buf_free(&b);
  }
  xfree(summary);
}

static const control_cmd_t commands[] = {
    {"domains", cmd_domains},
    {"reload", cmd_reload},
    {"status", cmd_status},
    {"sessions", cmd_sessions},
    {"kick", cmd_kick},
    {"broadcast", cmd_broadcast},
};

/* ---- life --------------------------------------------------------------------------- */

int xmppd_admin_open(const xmpp_config_t *cfg, xmppd_admin_t **out) {
  *out = NULL;
  char *path = config_control_socket(cfg);
  if (!path) return 0;
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
  return control_start(a->ctl, loop, commands, sizeof commands / sizeof commands[0], a);
}

void xmppd_admin_stop(xmppd_admin_t *a) {
  if (a) control_stop(a->ctl);
}

void xmppd_admin_close(xmppd_admin_t *a) {
  if (!a) return;
  control_close(a->ctl);
  xfree(a);
}

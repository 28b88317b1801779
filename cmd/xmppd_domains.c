/* Runtime domains: see xmppd_domains.h. */
#include "cmd/xmppd_domains.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/jid.h"
#include "common/log.h"
#include "common/store/store.h"
#include "router/router.h"

typedef struct rt {
  char *name, *tmpl, *cert, *key;
  int64_t created;
} rt_t;

typedef struct rtlist {
  rt_t *v;
  size_t n, cap;
} rtlist_t;

static struct {
  const xmpp_config_t *cfg; /* templates and tls.certificate: the last configuration loaded */
  xmpp_config_t *owned;     /* that configuration when a reload loaded it */
  char *backend, *target;   /* the store (start-up configuration) */
  rtlist_t list;            /* the store's runtime domains, as last read */
  uv_loop_t *loop;
  edge_t *edge;
  int check_certs;
  int jobs;
  uv_timer_t poll, reclaim;
  int poll_on, polling, reclaim_on;
  int64_t ver;              /* the store's domain version last applied; -1: unknown */
  store_t *poll_store;      /* the poll's handle (one poll job at a time) */
} X = {.ver = -1};

static void rt_clear(rtlist_t *l) {
  for (size_t i = 0; i < l->n; i++) {
    xfree(l->v[i].name);
    xfree(l->v[i].tmpl);
    xfree(l->v[i].cert);
    xfree(l->v[i].key);
  }
  xfree(l->v);
  memset(l, 0, sizeof *l);
}

static void rt_push(rtlist_t *l, const store_domain_t *d) {
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 8;
    l->v = xrealloc(l->v, l->cap * sizeof *l->v);
  }
  rt_t *e = &l->v[l->n++];
  e->name = xstrdup(d->name);
  e->tmpl = xstrdup(d->tmpl);
  e->cert = xstrdup(d->cert);
  e->key = xstrdup(d->key);
  e->created = d->created;
}

static void rt_list_cb(const store_domain_t *d, void *ud) { rt_push(ud, d); }

static const rt_t *rt_find(const rtlist_t *l, const char *name) {
  for (size_t i = 0; i < l->n; i++)
    if (!strcmp(l->v[i].name, name)) return &l->v[i];
  return NULL;
}

/* specs of l, plus extra (NULL: none); caller frees the array */
static domain_spec_t *rt_specs(const rtlist_t *l, const domain_spec_t *extra, size_t *n) {
  domain_spec_t *s = xcalloc(l->n + 1, sizeof *s);
  for (size_t i = 0; i < l->n; i++) s[i] = (domain_spec_t){l->v[i].name, l->v[i].tmpl, l->v[i].cert, l->v[i].key};
  *n = l->n;
  if (extra) s[(*n)++] = *extra;
  return s;
}

domains_t *xdom_build(const xmpp_config_t *c, int check_certs, char **err) {
  size_t n;
  domain_spec_t *s = rt_specs(&X.list, NULL, &n);
  domains_t *t = domains_build_ex(c, s, n, modules_index, check_certs, err);
  if (!t && n) {
    /* the configuration's own domains decide; a stored domain that no longer builds (its
     * certificate gone or changed) is left out, logged */
    char *why = NULL;
    domains_t *base = domains_build(c, modules_index, check_certs, &why);
    if (!base) {
      xfree(why);
    } else {
      domains_free(base);
      xfree(*err);
      *err = NULL;
      size_t kept = 0;
      for (size_t i = 0; i < n; i++) {
        domains_t *one = domains_build_ex(c, &s[i], 1, modules_index, check_certs, &why);
        if (one) s[kept++] = s[i];
        else log_error("runtime domain %s left out: %s", s[i].name, why ? why : "?");
        domains_free(one);
        xfree(why);
        why = NULL;
      }
      t = domains_build_ex(c, s, kept, modules_index, check_certs, err);
    }
  }
  xfree(s);
  return t;
}

static void domain_gone_cb(edge_admin_t *r, void *ud) {
  log_info("domain %s removed: %zu streams ended with <host-gone/>", (const char *)ud, edge_admin_count(r));
  xfree(ud);
  edge_admin_free(r);
}

int xdom_apply(edge_t *edge, domains_t *nd, char **summary) {
  /* the new domains' certificates first: a name is served once its context is there */
  if (edge && edge_reload_tls(edge, nd) != 0) {
    log_error("domains unchanged: a certificate did not load");
    *summary = xstrdup("a certificate did not load (see the log), domains unchanged");
    domains_free(nd);
    edge_reload_tls(edge, domains_current());
    return XMPP_EINVAL;
  }
  const domains_t *old = domains_current();
  domains_publish(nd);
  buf_t added, removed;
  buf_init(&added);
  buf_init(&removed);
  for (size_t i = 0; i < domains_count(nd); i++) {
    const domain_t *d = domains_at(nd, i);
    if (domains_lookup(old, d->name, strlen(d->name))) continue;
    log_info("domain %s added", d->name);
    buf_printf(&added, " %s", d->name);
  }
  for (size_t i = 0; i < domains_count(old); i++) {
    const domain_t *d = domains_at(old, i);
    if (domains_lookup(nd, d->name, strlen(d->name))) continue;
    log_info("domain %s removed: ending its streams", d->name);
    buf_printf(&removed, " %s", d->name);
    if (edge)
      edge_admin_post(edge_admin_new(edge, EDGE_ADMIN_DOMAIN_GONE, d->name, NULL), domain_gone_cb, xstrdup(d->name));
  }
  *summary = xstrfmt("%zu domains; added:%.*s; removed:%.*s", domains_count(nd), (int)added.len,
                     added.len ? (const char *)added.data : "", (int)removed.len,
                     removed.len ? (const char *)removed.data : "");
  buf_free(&added);
  buf_free(&removed);
  return 0;
}

void xdom_set_config(xmpp_config_t *c) {
  if (X.owned) {
    config_free(X.owned);
    xfree(X.owned);
  }
  X.owned = c;
  X.cfg = c;
}

int xdom_load(const xmpp_config_t *cfg, int edge_role, char **err) {
  X.cfg = cfg;
  X.check_certs = edge_role;
  X.backend = xstrdup(cfg->store_backend);
  X.target = xstrdup(config_store_target(cfg));
  store_t *st = store_open(X.backend, X.target, err);
  if (!st) return -1;
  rtlist_t l = {0};
  int64_t ver = 0;
  int rc = store_domain_version(st, &ver);
  if (!rc) rc = store_domain_list(st, rt_list_cb, &l);
  store_close(st);
  if (rc) {
    rt_clear(&l);
    *err = xstrfmt("reading the runtime domains: %s", xmpp_strerror(rc));
    return -1;
  }
  X.list = l;
  X.ver = ver;
  if (!l.n) return 0;
  domains_t *t = xdom_build(cfg, edge_role, err);
  if (!t) return -1;
  domains_publish(t); /* before the edge: its TLS contexts are made from this table */
  log_info("%zu runtime domains from the store", l.n);
  return 0;
}

/* l (read at store version ver) becomes the list in force, unless a list read at a later
 * version already is (jobs finish in any order): 1 when taken, 0 when older. */
static int take_list(rtlist_t *l, int64_t ver) {
  if (X.ver >= 0 && ver < X.ver) return 0;
  rt_clear(&X.list);
  X.list = *l;
  memset(l, 0, sizeof *l);
  X.ver = ver;
  return 1;
}

/* The table again from the configuration and the list, published. 0 or -1 (logged). */
static int rebuild(char **summary) {
  char *err = NULL;
  domains_t *nd = xdom_build(X.cfg, X.check_certs, &err);
  if (!nd) {
    log_error("runtime domains: the table does not build: %s", err ? err : "?");
    *summary = xstrfmt("the domain table does not build: %s", err ? err : "?");
    xfree(err);
    return -1;
  }
  return xdom_apply(X.edge, nd, summary) == 0 ? 0 : -1;
}

/* ---- JSON -------------------------------------------------------------------------------- */

void xdom_json(buf_t *b, const domain_t *d, int is_default) {
  buf_puts(b, "\"name\":");
  text_json_str(b, d->name, strlen(d->name));
  buf_printf(b, ",\"default\":%s,\"source\":\"%s\",\"template\":", is_default ? "true" : "false",
             d->runtime ? "runtime" : "configuration");
  if (d->runtime) text_json_str(b, d->tmpl, strlen(d->tmpl));
  else buf_puts(b, "null");
  buf_puts(b, ",\"certificate\":");
  text_json_str(b, d->cert, strlen(d->cert));
  buf_printf(b, ",\"own_certificate\":%s,\"disabled\":[", d->own_cert ? "true" : "false");
  int n = 0;
  for (int m = 0; modules_name(m); m++)
    if (d->disabled & (1ULL << m)) {
      if (n++) buf_putc(b, ',');
      text_json_str(b, modules_name(m), strlen(modules_name(m)));
    }
  buf_printf(b,
             "],\"max_resources\":%d,\"max_sessions\":%d,\"max_accounts\":%d,\"rate_bytes\":%d,\"rate_stanzas\":%d,"
             "\"sessions\":%ld",
             d->max_resources, d->max_sessions, d->max_accounts, d->rate_bytes, d->rate_stanzas,
             d->sessions ? atomic_load(d->sessions) : 0L);
}

/* ---- commands: checked here, stored on the thread pool, applied back here ---------------- */

typedef enum { JOB_ADD, JOB_REMOVE, JOB_SHOW } job_op_t;

typedef struct job {
  uv_work_t work;
  control_req_t *r;
  job_op_t op;
  char *name, *tmpl, *cert, *key;
  int purge;
  int rc;
  int64_t accounts; /* show: the domain's accounts in the store; remove: accounts purged */
  char *error;      /* the store's message when it cannot be opened */
  rtlist_t list;    /* add, remove: the store's list afterwards */
  int64_t ver;      /* the store's domain version read just before that list */
  int listed;
  char *sni_note;   /* add without a certificate: what SNI does */
} job_t;

typedef struct names {
  char **v;
  size_t n, cap;
  const char *suffix; /* "@domain" */
} names_t;

static void purge_cb(const char *bare, void *ud) {
  names_t *l = ud;
  size_t bl = strlen(bare), sl = strlen(l->suffix);
  if (bl <= sl || strcmp(bare + bl - sl, l->suffix) != 0) return;
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 64;
    l->v = xrealloc(l->v, l->cap * sizeof *l->v);
  }
  l->v[l->n++] = xstrdup(bare);
}

static void job_work(uv_work_t *w) {
  job_t *j = w->data;
  store_t *st = store_open(X.backend, X.target, &j->error);
  if (!st) {
    j->rc = XMPP_EIO;
    return;
  }
  switch (j->op) {
  case JOB_ADD: {
    store_domain_t d = {j->name, j->tmpl, j->cert, j->key, 0};
    j->rc = store_domain_add(st, &d);
    break;
  }
  case JOB_REMOVE: {
    j->rc = store_domain_remove(st, j->name);
    if (j->rc == XMPP_ENOENT) j->rc = 0; /* gone already (another node): the list decides */
    if (!j->rc && j->purge) {
      char *suffix = xstrfmt("@%s", j->name);
      names_t l = {NULL, 0, 0, suffix};
      j->rc = store_account_list(st, purge_cb, &l);
      for (size_t i = 0; i < l.n; i++) {
        int rc = j->rc ? 0 : store_account_delete(st, l.v[i]);
        if (!rc) j->accounts++;
        else if (rc != XMPP_ENOENT && !j->rc) j->rc = rc;
        xfree(l.v[i]);
      }
      xfree(l.v);
      xfree(suffix);
    }
    break;
  }
  case JOB_SHOW: {
    int64_t n = store_domain_accounts(st, j->name);
    if (n < 0) j->rc = (int)n;
    else j->accounts = n;
    break;
  }
  }
  if (j->op != JOB_SHOW && (!j->rc || j->op == JOB_REMOVE)) {
    /* the version first: the list read after it holds every change up to it */
    int lrc = store_domain_version(st, &j->ver);
    if (!lrc) lrc = store_domain_list(st, rt_list_cb, &j->list);
    j->listed = lrc == 0;
    if (!j->rc && lrc) j->rc = lrc;
  }
  store_close(st);
}

static void job_free(job_t *j) {
  xfree(j->name);
  xfree(j->tmpl);
  xfree(j->cert);
  xfree(j->key);
  xfree(j->error);
  xfree(j->sni_note);
  rt_clear(&j->list);
  xfree(j);
}

static void job_done(uv_work_t *w, int status) {
  job_t *j = w->data;
  X.jobs--;
  if (status || j->rc) {
    char *msg = j->rc == XMPP_EEXIST ? xstrfmt("domain %s is already stored (added on another node?)", j->name)
                : j->error           ? xstrfmt("storage: %s", j->error)
                : status             ? xstrfmt("%s: %s", j->name, uv_strerror(status))
                                     : xstrfmt("%s: storage: %s", j->name, xmpp_strerror(j->rc));
    control_fail(j->r, msg);
    xfree(msg);
    if (j->listed && take_list(&j->list, j->ver)) { /* what was done is in force (a purge that failed half-way) */
      char *summary = NULL;
      rebuild(&summary);
      xfree(summary);
    }
    job_free(j);
    return;
  }
  buf_t b;
  buf_init(&b);
  if (j->op == JOB_SHOW) {
    const domain_t *d = domain_find(j->name, strlen(j->name));
    if (!d) {
      control_fail(j->r, "the domain was removed meanwhile");
      buf_free(&b);
      job_free(j);
      return;
    }
    xdom_json(&b, d, d == domains_at(domains_current(), 0));
    buf_printf(&b, ",\"accounts\":%lld", (long long)j->accounts);
    buf_putc(&b, '\0');
    control_reply(j->r, (const char *)b.data, NULL);
  } else {
    char *summary = NULL;
    int rc = take_list(&j->list, j->ver) ? rebuild(&summary) : 0;
    if (!summary) summary = xstrdup("applied already (a later change is in force)");
    if (rc != 0) {
      control_fail(j->r, summary);
    } else {
      buf_puts(&b, "\"name\":");
      text_json_str(&b, j->name, strlen(j->name));
      if (j->op == JOB_REMOVE) buf_printf(&b, ",\"purged\":%lld", (long long)j->accounts);
      if (j->sni_note) {
        buf_puts(&b, ",\"note\":");
        text_json_str(&b, j->sni_note, strlen(j->sni_note));
      }
      buf_puts(&b, ",\"result\":");
      text_json_str(&b, summary, strlen(summary));
      buf_putc(&b, '\0');
      control_reply(j->r, (const char *)b.data, j->op == JOB_ADD ? "domain added" : "domain removed");
    }
    xfree(summary);
  }
  buf_free(&b);
  job_free(j);
}

static void job_queue(job_t *j) {
  j->work.data = j;
  X.jobs++;
  int rc = uv_queue_work(X.loop, &j->work, job_work, job_done);
  if (rc != 0) job_done(&j->work, rc);
}

static void failf(control_req_t *r, char *msg) {
  control_fail(r, msg);
  xfree(msg);
}

/* domain-add NAME [TEMPLATE] [CERTIFICATE KEY] */
void xdom_cmd_add(void *ud, control_req_t *r, int argc, char **argv) {
  (void)ud;
  if (argc < 1 || argc > 4 || !*argv[0]) {
    control_fail(r, "usage: domain-add NAME [TEMPLATE] [CERTIFICATE KEY]");
    return;
  }
  const char *tmpl = argc > 1 ? argv[1] : "", *cert = argc > 2 ? argv[2] : "", *key = argc > 3 ? argv[3] : "";
  char *name = NULL, *err = NULL;
  if (domain_spec_check(X.cfg, argv[0], tmpl, cert, key, &name, &err) != 0) {
    failf(r, xstrfmt("domain add: %s", err));
    xfree(err);
    return;
  }
  const domain_t *d = domain_find(name, strlen(name));
  if (d || rt_find(&X.list, name)) {
    failf(r, xstrfmt("domain add: %s is already served (%s)", name,
                     !d || d->runtime ? "a runtime domain" : "by the configuration file"));
    xfree(name);
    return;
  }
  if (X.list.n >= XMPP_MAX_RUNTIME_DOMAINS) {
    failf(r, xstrfmt("domain add: %d runtime domains already (the cap)", XMPP_MAX_RUNTIME_DOMAINS));
    xfree(name);
    return;
  }
  if (*cert && (access(cert, R_OK) != 0 || access(key, R_OK) != 0)) {
    failf(r, xstrfmt("domain add: cannot read %s or %s", cert, key));
    xfree(name);
    return;
  }
  /* RFC 6125 §6.4: the certificate must name the domain, else clients refuse it */
  if (*cert && !domain_cert_names(cert, name, &err)) {
    failf(r, xstrfmt("domain add: %s", err));
    xfree(err);
    xfree(name);
    return;
  }
  /* everything the table checks (modules, certificate loads), before anything is stored */
  size_t n;
  domain_spec_t extra = {name, tmpl, cert, key};
  domain_spec_t *s = rt_specs(&X.list, &extra, &n);
  domains_t *t = domains_build_ex(X.cfg, s, n, modules_index, X.check_certs, &err);
  xfree(s);
  if (!t) {
    failf(r, xstrfmt("domain add: %s", err ? err : "refused"));
    xfree(err);
    xfree(name);
    return;
  }
  domains_free(t);
  job_t *j = xcalloc(1, sizeof *j);
  j->r = r;
  j->op = JOB_ADD;
  j->name = name;
  j->tmpl = xstrdup(tmpl);
  j->cert = xstrdup(cert);
  j->key = xstrdup(key);
  if (!*cert && X.cfg->tls_cert[0] && !domain_cert_names(X.cfg->tls_cert, name, &err)) {
    xfree(err);
    j->sni_note = xstrfmt("no certificate of its own: clients naming %s in SNI get tls.certificate, which does "
                          "not name it (clients that verify the certificate refuse it)",
                          name);
  }
  job_queue(j);
}

/* domain-remove NAME [PURGE] */
void xdom_cmd_remove(void *ud, control_req_t *r, int argc, char **argv) {
  (void)ud;
  if (argc < 1 || argc > 2 || !*argv[0]) {
    control_fail(r, "usage: domain-remove NAME [purge]");
    return;
  }
  const char *p = argc > 1 ? argv[1] : "";
  int purge = !strcmp(p, "purge") || !strcmp(p, "true") || !strcmp(p, "1") || !strcmp(p, "yes");
  if (!purge && *p && strcmp(p, "false") && strcmp(p, "0") && strcmp(p, "no")) {
    control_fail(r, "domain remove: purge is true or false");
    return;
  }
  char *name = NULL;
  if (strlen(argv[0]) > XMPP_MAX_DOMAIN_NAME || jid_prep_domain(argv[0], strlen(argv[0]), &name) != 0) {
    xfree(name);
    failf(r, xstrfmt("domain remove: '%s' is not a valid domain name", argv[0]));
    return;
  }
  const domain_t *d = domain_find(name, strlen(name));
  if (d && !d->runtime) {
    failf(r, xstrfmt("domain remove: %s is configured in the configuration file%s: remove it there and run "
                     "`xmppctl reload`",
                     name, d == domains_at(domains_current(), 0) ? " (server.domain)" : " ([domain] section)"));
    xfree(name);
    return;
  }
  if (!d && !rt_find(&X.list, name)) {
    failf(r, xstrfmt("domain remove: no runtime domain %s", name));
    xfree(name);
    return;
  }
  job_t *j = xcalloc(1, sizeof *j);
  j->r = r;
  j->op = JOB_REMOVE;
  j->name = name;
  j->purge = purge;
  job_queue(j);
}

/* domain-show NAME */
void xdom_cmd_show(void *ud, control_req_t *r, int argc, char **argv) {
  (void)ud;
  if (argc != 1 || !*argv[0]) {
    control_fail(r, "usage: domain-show NAME");
    return;
  }
  char *name = NULL;
  if (strlen(argv[0]) > XMPP_MAX_DOMAIN_NAME || jid_prep_domain(argv[0], strlen(argv[0]), &name) != 0 ||
      !domain_find(name, strlen(name))) {
    failf(r, xstrfmt("domain show: no domain %s here", argv[0]));
    xfree(name);
    return;
  }
  job_t *j = xcalloc(1, sizeof *j);
  j->r = r;
  j->op = JOB_SHOW;
  j->name = name;
  job_queue(j);
}

/* ---- the poll (Redis: other nodes' changes) ---------------------------------------------- */

typedef struct poll_job {
  uv_work_t work;
  int64_t seen; /* X.ver when it was queued (X is the main thread's) */
  int64_t ver;
  int changed, rc;
  rtlist_t list;
} poll_job_t;

static void poll_work(uv_work_t *w) {
  poll_job_t *p = w->data;
  if (!X.poll_store) {
    char *err = NULL;
    X.poll_store = store_open(X.backend, X.target, &err);
    xfree(err);
    if (!X.poll_store) {
      p->rc = XMPP_EIO;
      return;
    }
  }
  p->rc = store_domain_version(X.poll_store, &p->ver);
  if (p->rc || p->ver == p->seen) return;
  p->changed = 1;
  p->rc = store_domain_list(X.poll_store, rt_list_cb, &p->list);
}

static void poll_done(uv_work_t *w, int status) {
  poll_job_t *p = w->data;
  X.polling = 0;
  X.jobs--;
  if (!status && !p->rc && p->changed && X.poll_on && take_list(&p->list, p->ver)) {
    char *summary = NULL;
    if (rebuild(&summary) == 0)
      log_info("runtime domains changed in the store (version %lld): %s", (long long)p->ver, summary);
    xfree(summary);
  }
  rt_clear(&p->list);
  xfree(p);
}

static void poll_cb(uv_timer_t *t) {
  (void)t;
  if (X.polling || !X.poll_on) return;
  poll_job_t *p = xcalloc(1, sizeof *p);
  p->work.data = p;
  p->seen = X.ver;
  X.polling = 1;
  X.jobs++;
  if (uv_queue_work(X.loop, &p->work, poll_work, poll_done) != 0) {
    X.polling = 0;
    X.jobs--;
    xfree(p);
  }
}

static void reclaim_cb(uv_timer_t *t) {
  (void)t;
  domains_reclaim(); /* tables replaced by a burst of changes, once no look-up can hold them */
}

void xdom_start(uv_loop_t *loop, edge_t *edge) {
  X.loop = loop;
  X.edge = edge;
  uv_timer_init(loop, &X.reclaim);
  uv_timer_start(&X.reclaim, reclaim_cb, 10000, 10000);
  X.reclaim_on = 1;
  if (!X.backend || strcmp(X.backend, "redis") != 0) return; /* SQLite: this process is the only writer */
  uv_timer_init(loop, &X.poll);
  uv_timer_start(&X.poll, poll_cb, XDOM_POLL_MS, XDOM_POLL_MS);
  X.poll_on = 1;
}

void xdom_stop(void) {
  if (X.reclaim_on) {
    X.reclaim_on = 0;
    uv_timer_stop(&X.reclaim);
    uv_close((uv_handle_t *)&X.reclaim, NULL);
  }
  if (!X.poll_on) return;
  X.poll_on = 0;
  uv_timer_stop(&X.poll);
  uv_close((uv_handle_t *)&X.poll, NULL);
}

int xdom_busy(void) { return X.jobs > 0; }

void xdom_free(void) {
  if (X.poll_store) store_close(X.poll_store);
  X.poll_store = NULL;
  rt_clear(&X.list);
  if (X.owned) {
    config_free(X.owned);
    xfree(X.owned);
  }
  X.owned = NULL;
  xfree(X.backend);
  xfree(X.target);
  X.backend = X.target = NULL;
}

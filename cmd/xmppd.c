/* xmppd: the single-process server (edge threads + router workers + embedded storage).
 *
 *   xmppd [-c FILE] [--set section.key=value]... [--check-config] [--print-config]
 *         [--print-reference]
 *
 * Start-up order: config, storage check, router workers, edge threads (listening).
 * SIGINT/SIGTERM: edges stop accepting and send <system-shutdown/>, sessions end,
 * routers drain their queues (bounced messages reach offline storage), then all stop.
 * --role edge|router (cluster.role) runs one half; with cluster.node_id set the process
 * joins a cluster through Redis (common/cluster/cluster.c, docs/cluster.md).
 * SIGHUP: the configuration file is read again for its domains ([domain NAME] sections:
 * added, removed, certificates; docs/operations.md "Virtual hosting"), and the TLS
 * certificates and session ticket keys are loaded again (sessions are not dropped, but
 * those of a removed domain, which end with <host-gone/>). */
#include <getopt.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>
#ifndef XMPP_SANITIZE
#include <jemalloc/jemalloc.h>
#endif

#include "cmd/xmppd_admin.h"
#include "cmd/xmppd_domains.h"
#include "common/alloc.h"
#include "common/buf.h"
#include "common/bus.h"
#include "common/cluster/cluster.h"
#include "common/config.h"
#include "common/domains.h"
#include "common/err.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/store/store.h"
#include "common/version.h"
#include "common/xml_stream.h"
#include "edge/edge.h"
#include "router/router.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: xmppd [-c FILE] [--role all|edge|router] [--set section.key=value]...\n"
          "             [--check-config] [--print-config] [--print-reference] [--version]\n"
          "      --role ROLE       same as --set cluster.role=ROLE (docs/cluster.md)\n"
          "  -c, --config FILE     configuration file (INI); defaults apply without one\n"
          "  -s, --set K=V         override one option, e.g. --set c2s.port=5333\n"
          "      --check-config    validate the configuration and exit (0 = valid)\n"
          "      --print-config    print the effective configuration and exit\n"
          "      --print-reference print every option with its default (Markdown)\n");
}

static uv_signal_t sigint_h, sigterm_h, sighup_h;
static void on_signal(uv_signal_t *h, int sig) {
  log_info("signal %d: shutting down", sig);
  uv_signal_stop(&sigint_h);
  uv_signal_stop(&sigterm_h);
  uv_signal_stop(&sighup_h);
  uv_stop(h->loop);
}

/* What the configuration was made of, to read it again on SIGHUP. */
static struct {
  const char *path;
  char **sets; /* "section.key=value", as given */
  int nsets;
  const char *role;
  const xmpp_config_t *running; /* what the process runs on */
} conf_src;

/* Defaults < file < environment < --set < --role, then validated. 0 or 2 (message
 * printed to stderr with prefix). */
static int load_config(xmpp_config_t *cfg, char **err) {
  int bad = config_load(cfg, conf_src.path, err) != 0 || config_apply_env(cfg, err) != 0;
  for (int i = 0; !bad && i < conf_src.nsets; i++) {
    char *eq = strchr(conf_src.sets[i], '=');
    if (!eq) {
      *err = xstrfmt("--set %s: expected section.key=value", conf_src.sets[i]);
      bad = 1;
      break;
    }
    char *key = xstrndup(conf_src.sets[i], (size_t)(eq - conf_src.sets[i]));
    bad = config_set(cfg, key, eq + 1, err) != 0;
    xfree(key);
  }
  if (!bad && conf_src.role) bad = config_set(cfg, "cluster.role", conf_src.role, err) != 0;
  if (!bad && config_validate(cfg, err) != 0) bad = 1;
  return bad ? 2 : 0;
}

/* SIGHUP and `xmppctl reload`: the domains again (the configuration's and the runtime
 * ones, cmd/xmppd_domains.h), then the certificates. A configuration that does not load,
 * or a domain whose certificate does not name it, changes nothing (logged). */
int xmppd_reload(edge_t *edge, char **summary) {
  const xmpp_config_t *cur = conf_src.running;
  if (!cur) {
    *summary = xstrdup("still starting: try again");
    return XMPP_EINVAL;
  }
  xmpp_config_t *nc = xcalloc(1, sizeof *nc);
  char *err = NULL;
  domains_t *nd = NULL;
  if (load_config(nc, &err) == 0) {
    if (strcmp(nc->domain, cur->domain) != 0)
      err = xstrfmt("server.domain changed (%s to %s): it changes only with a restart", cur->domain, nc->domain);
    else
      nd = xdom_build(nc, edge != NULL, &err);
  }
  if (!nd) {
    config_free(nc);
    xfree(nc);
    log_error("reload: the configuration is refused, domains unchanged: %s", err ? err : "?");
    *summary = xstrfmt("the configuration is refused, domains unchanged: %s", err ? err : "?");
    xfree(err);
    if (edge) edge_reload_tls(edge, domains_current());
    return XMPP_EINVAL;
  }
  if (xdom_apply(edge, nd, summary) != 0) {
    config_free(nc);
    xfree(nc);
    return XMPP_EINVAL;
  }
  xdom_set_config(nc); /* the templates of runtime domains come from it from now on */
  log_info("reload: %s", *summary);
  return 0;
}

static void on_sighup(uv_signal_t *h, int sig) {
  char *summary = NULL;
  xmppd_reload(h->data, &summary);
  xfree(summary);
}

static void settle_cb(uv_timer_t *t) { uv_stop(t->loop); }

/* A leaving router: until every node answered its BUS_LEAVING, or the bound ran out. */
typedef struct {
  cluster_t *cluster;
  uint64_t until;
} leave_wait_t;

static void leave_wait_cb(uv_timer_t *t) {
  leave_wait_t *lw = t->data;
  if (cluster_leave_done(lw->cluster) || uv_now(t->loop) >= lw->until) uv_stop(t->loop);
}

#ifndef XMPP_SANITIZE
/* jemalloc options (the MALLOC_CONF environment variable still overrides them): purge
 * freed pages from background threads, within about two seconds. jemalloc's decay
 * otherwise advances only when the process allocates, so an idle server kept the pages
 * of its log-in burst (TLS handshakes) resident: 9.4 KiB per idle session at 10,000
 * sessions with the defaults, 3.6 KiB with these (docs/memory.md). */
const char *malloc_conf = "background_thread:true,dirty_decay_ms:2000,muzzy_decay_ms:0";
#endif

/* The process's memory: RSS, and jemalloc's own figures when it is the allocator (0
 * under the sanitizers). Any thread (mallctl is thread-safe). */
typedef struct memstats {
  long rss_kib;
  size_t allocated, active, resident, mapped, metadata;
} memstats_t;

static void memstats_read(memstats_t *m) {
  memset(m, 0, sizeof *m);
  m->rss_kib = -1;
  FILE *f = fopen("/proc/self/status", "r");
  if (f) {
    char line[256];
    while (fgets(line, sizeof line, f))
      if (strncmp(line, "VmRSS:", 6) == 0) m->rss_kib = strtol(line + 6, NULL, 10);
    fclose(f);
  }
#ifndef XMPP_SANITIZE
  uint64_t epoch = 1;
  size_t sz = sizeof epoch;
  mallctl("epoch", &epoch, &sz, &epoch, sz); /* refreshes the stats.* figures */
  sz = sizeof(size_t);
  mallctl("stats.allocated", &m->allocated, &sz, NULL, 0);
  mallctl("stats.active", &m->active, &sz, NULL, 0);
  mallctl("stats.resident", &m->resident, &sz, NULL, 0);
  mallctl("stats.mapped", &m->mapped, &sz, NULL, 0);
  mallctl("stats.metadata", &m->metadata, &sz, NULL, 0);
#endif
}

/* SIGUSR1: one log line with the process's memory, for measuring per-session costs
 * (bench/idle_rss.py, docs/memory.md). */
static uv_signal_t sigusr1_h;
static void on_memstats(uv_signal_t *h, int sig) {
  memstats_t m;
  memstats_read(&m);
#ifndef XMPP_SANITIZE
  log_info("memory: RSS %ld KiB; jemalloc allocated %zu KiB, active %zu KiB, resident %zu KiB, "
           "mapped %zu KiB, metadata %zu KiB",
           m.rss_kib, m.allocated >> 10, m.active >> 10, m.resident >> 10, m.mapped >> 10, m.metadata >> 10);
#else
  log_info("memory: RSS %ld KiB", m.rss_kib);
#endif
}

/* The same figures at every scrape (the metrics thread), and what the process is. */
static void memstats_metrics(metrics_out_t *o, void *ud) {
  memstats_t m;
  memstats_read(&m);
  metrics_family(o, "xmppd_process_resident_bytes", "gauge", "Resident set size of the process");
  metrics_sample(o, "xmppd_process_resident_bytes", NULL, m.rss_kib < 0 ? 0 : (double)m.rss_kib * 1024);
#ifndef XMPP_SANITIZE
  static const struct {
    const char *name, *help;
    size_t off;
  } js[] = {
      {"xmppd_jemalloc_allocated_bytes", "jemalloc stats.allocated: bytes allocated by the application",
       offsetof(memstats_t, allocated)},
      {"xmppd_jemalloc_active_bytes", "jemalloc stats.active: bytes in active pages", offsetof(memstats_t, active)},
      {"xmppd_jemalloc_resident_bytes", "jemalloc stats.resident: bytes in physically resident data pages",
       offsetof(memstats_t, resident)},
      {"xmppd_jemalloc_mapped_bytes", "jemalloc stats.mapped: bytes in active extents mapped by the allocator",
       offsetof(memstats_t, mapped)},
      {"xmppd_jemalloc_metadata_bytes", "jemalloc stats.metadata: bytes of allocator metadata",
       offsetof(memstats_t, metadata)},
  };
  for (size_t i = 0; i < sizeof js / sizeof js[0]; i++) {
    metrics_family(o, js[i].name, "gauge", js[i].help);
    metrics_sample_u64(o, js[i].name, NULL, *(const size_t *)((const char *)&m + js[i].off));
  }
#endif
  const int *role = ud;
  metrics_family(o, "xmppd_build_info", "gauge", "Always 1: the version and cluster role of this process");
  char labels[96];
  snprintf(labels, sizeof labels, "version=\"%s\",role=\"%s\"", XMPPD_VERSION,
           *role == ROLE_ALL ? "all" : *role == ROLE_EDGE ? "edge" : "router");
  metrics_sample(o, "xmppd_build_info", labels, 1);
}

/* Start-up refused because a resource belongs to another process (a client port, the
 * node id): everything given back, exit status 2 (leaks would make LeakSanitizer turn
 * it into 1 in the sanitizer build). */
static metrics_http_t *metrics; /* the endpoint (metrics.listen), NULL when off */

static int refuse(cluster_t *cluster, bus_t *bus, xmpp_config_t *cfg, store_claim_t *claim) {
  metrics_http_stop(metrics);
  metrics = NULL;
  cluster_discard(cluster);
  xfree(bus->edge_q);
  xfree(bus->worker_q);
  config_free(cfg);
  store_claim_release(claim);
  return 2;
}

int main(int argc, char **argv) {
  const char *conf_path = NULL;
  int check = 0, print = 0;
  char **sets = xcalloc((size_t)argc + 1, sizeof(char *));
  int nsets = 0;
  static const struct option longopts[] = {
      {"config", required_argument, 0, 'c'}, {"set", required_argument, 0, 's'},
      {"check-config", no_argument, 0, 'k'}, {"print-config", no_argument, 0, 'p'},
      {"print-reference", no_argument, 0, 'r'}, {"version", no_argument, 0, 'V'},
      {"help", no_argument, 0, 'h'},         {"role", required_argument, 0, 'R'}, {0, 0, 0, 0}};
  const char *role_arg = NULL;
  int ch;
  while ((ch = getopt_long(argc, argv, "c:s:h", longopts, NULL)) != -1) {
    switch (ch) {
    case 'c': conf_path = optarg; break;
    case 's': sets[nsets++] = optarg; break;
    case 'R': role_arg = optarg; break;
    case 'k': check = 1; break;
    case 'p': print = 1; break;
    /* sets is freed first: under LeakSanitizer a leak ends the process before stdout is
     * flushed, and the output was lost */
    case 'r': xfree(sets); config_print_reference(stdout); return 0;
    case 'V': xfree(sets); printf("xmppd %s\n", XMPPD_VERSION); return 0;
    case 'h': xfree(sets); usage(stdout); return 0;
    default: xfree(sets); usage(stderr); return 2;
    }
  }
  xmpp_config_t cfg;
  char *err = NULL;
  conf_src.path = conf_path;
  conf_src.sets = sets; /* kept for SIGHUP (argv strings) */
  conf_src.nsets = nsets;
  conf_src.role = role_arg;
  int bad = load_config(&cfg, &err) != 0;
  /* the domain table: names, modules, and each [domain]'s certificate naming it */
  domains_t *domains = bad ? NULL : domains_build(&cfg, modules_index, (config_role(&cfg) & ROLE_EDGE) != 0, &err);
  if (bad || !domains) {
    if (err) fprintf(stderr, "xmppd: configuration error: %s\n", err);
    xfree(err);
    xfree(sets);
    config_free(&cfg);
    return 2;
  }
  domains_publish(domains);
  if (print || check) {
    if (print) config_print(stdout, &cfg);
    else printf("configuration OK\n");
    config_free(&cfg);
    domains_shutdown();
    xfree(sets);
    return 0;
  }
  log_set_level((log_level_t)log_level_parse(cfg.log_level));
  metrics_thread_init();
  log_set_format(strcmp(cfg.log_format, "json") == 0 ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT);
  hash_init();
  xml_stream_global_init();
  signal(SIGPIPE, SIG_IGN);

  /* one server per store: before anything else touches it (docs/operations.md) */
  store_claim_t *claim = NULL;
  int crc = store_claim(cfg.store_backend, config_store_target(&cfg), &claim, &err);
  if (crc != 0) {
    log_error("%s", err ? err : "cannot claim the store");
    xfree(err);
    config_free(&cfg);
    return crc == XMPP_EDENIED ? 2 : 1;
  }
  /* one server per control socket, too (docs/operations.md "The control socket") */
  xmppd_admin_t *admin = NULL;
  if ((crc = xmppd_admin_open(&cfg, &admin)) != 0) {
    config_free(&cfg);
    store_claim_release(claim);
    return crc;
  }
  store_t *probe = store_open(cfg.store_backend, config_store_target(&cfg), &err);
  if (!probe) {
    log_error("storage (%s): %s", cfg.store_backend, err ? err : "cannot open");
    return 1;
  }
  store_close(probe);
  /* the runtime domains (xmppctl domain add) before anything serves */
  if (xdom_load(&cfg, (config_role(&cfg) & ROLE_EDGE) != 0, &err) != 0) {
    if (strcmp(cfg.store_backend, "redis") != 0) {
      log_error("%s", err ? err : "runtime domains: cannot read them");
      return 1;
    }
    log_warn("%s: the poll tries again", err ? err : "runtime domains: cannot read them");
    xfree(err);
    err = NULL;
  }

  int cores = (int)uv_available_parallelism();
  int role = config_role(&cfg);
  bus_t bus = {0};
  bus.nshards = (uint32_t)cfg.shards;
  bus.nedges = (role & ROLE_EDGE) ? (cfg.io_threads ? cfg.io_threads : cores) : 0;
  bus.nworkers = (role & ROLE_ROUTER) ? (cfg.router_workers ? cfg.router_workers : cores) : 0;
  bus.edge_q = xcalloc((size_t)bus.nedges + 1, sizeof *bus.edge_q);
  bus.worker_q = xcalloc((size_t)bus.nworkers + 1, sizeof *bus.worker_q);
  bus.queue_high = (uint64_t)cfg.bus_queue_bytes;
  bus.queue_low = bus.queue_high / 4;

  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);

  router_t *router = NULL;
  edge_t *edge = NULL;
  cluster_t *cluster = NULL;
  /* A cluster node claims its node id before it serves anything (docs/cluster.md); then
   * the client ports, which another process may hold (docs/operations.md). */
  int held = 0, in_use = 0;
  if (cfg.cluster_node && !(cluster = cluster_new(&cfg, &bus, role, &held)))
    return held ? (xmppd_admin_close(admin), refuse(NULL, &bus, &cfg, claim)) : 1;
  /* The metrics endpoint, before the client listeners: once a client can connect, it
   * can be scraped (docs/operations.md "Metrics"). */
  metrics_source_add(memstats_metrics, &role);
  if (cfg.metrics_listen[0] && !(metrics = metrics_http_start(cfg.metrics_listen, cfg.metrics_token, cfg.metrics_tls_cert,
                                                                 cfg.metrics_tls_key, &err))) {
    log_error("%s", err ? err : "metrics: cannot start");
    return 1;
  }
  /* From the moment clients can connect, SIGTERM is an orderly stop (handled once the
   * loop runs), not the default action: a stop during start-up loses nothing either.
   * (Not before cluster_new: SIGTERM ends its wait for Redis or for a dead node's lease.) */
  uv_loop_t *loop = uv_default_loop();
  uv_signal_init(loop, &sigint_h);
  uv_signal_init(loop, &sigterm_h);
  uv_signal_start(&sigint_h, on_signal, SIGINT);
  uv_signal_start(&sigterm_h, on_signal, SIGTERM);
  /* SIGHUP too, from the moment clients can connect (its default action ends the
   * process); its callback runs once the loop runs, with the edge known by then */
  uv_signal_init(loop, &sighup_h);
  uv_signal_start(&sighup_h, on_sighup, SIGHUP);
  if ((role & ROLE_EDGE) && !(edge = edge_create(&cfg, &bus, &in_use)))
    return in_use ? (xmppd_admin_close(admin), refuse(cluster, &bus, &cfg, claim)) : 1;
  if ((role & ROLE_ROUTER) && !(router = router_create(&cfg, &bus))) return 1;
  /* a cluster node: links, registry and shard map, before any thread sends a frame */
  if (cluster && cluster_start(cluster, &bus) != 0) return 1;
  if ((router && router_start(router) != 0) || (edge && edge_start(edge) != 0)) {
    log_error("cannot start threads");
    return 1;
  }
  metrics_source_add(bus_metrics, &bus); /* the queues exist: the threads attached them */
  if (edge)
    log_info("xmppd %s serving %s: STARTTLS port %d, direct TLS port %d, %d I/O threads, %d router workers, "
             "%u shards, open-file limit %llu",
             XMPPD_VERSION, cfg.domain, cfg.c2s_port, cfg.c2s_tls_port, bus.nedges, bus.nworkers, bus.nshards,
             (unsigned long long)rl.rlim_cur);
  else
    log_info("xmppd %s router for %s: %d router workers, %u shards, open-file limit %llu", XMPPD_VERSION,
             cfg.domain, bus.nworkers, bus.nshards, (unsigned long long)rl.rlim_cur);

  if (xmppd_admin_start(admin, loop, edge, &bus) != 0) return 1;
  xdom_start(loop, edge);
  sighup_h.data = edge; /* NULL on a router: only the domains to reload */
  conf_src.running = &cfg;
  uv_signal_init(loop, &sigusr1_h);
  uv_signal_start(&sigusr1_h, on_memstats, SIGUSR1);
  uv_run(loop, UV_RUN_DEFAULT);

  /* Shutdown, in an order that loses nothing accepted:
   * 1. edges stop accepting, send <system-shutdown/>, end sessions (SESSION_CLOSE);
   * 2. while edges still run, routers handle the closes; a message already on its way to
   *    a closed connection comes back as BOUNCE and goes to offline storage;
   * 3. edges end; 4. routers finish what remains, then end. */
  xmppd_admin_stop(admin); /* no admin request from here on */
  xdom_stop();
  if (edge) edge_stop(edge);
  uv_timer_t settle;
  uv_timer_init(loop, &settle);
  uv_timer_start(&settle, settle_cb, 200, 0); /* let clients read their stream error */
  uv_run(loop, UV_RUN_DEFAULT);
  if (bus_quiesce(&bus, 5000) != 0) log_warn("shutdown: bus still busy after 5 s");
  if (edge) edge_join(edge);
  xmppd_admin_close(admin); /* no edge thread answers any more */
  while (xdom_busy()) uv_run(loop, UV_RUN_ONCE); /* a poll still on the thread pool */
  if (bus_quiesce(&bus, 5000) != 0) log_warn("shutdown: routers still busy after 5 s");
  if (cluster && router && !cluster_refused(cluster)) {
    /* hand the shards over and keep forwarding until every node has taken this one out
     * of its map and what it had sent here is passed on (docs/cluster.md "A router's
     * graceful stop"; not a node that refused to join or lost its id: it has nothing to
     * hand over). Bounded: a node that never answers has polled the registry by then. */
    cluster_leave(cluster);
    leave_wait_t lw = {cluster, uv_now(loop) + (uint64_t)cfg.node_ttl_ms + 2 * (uint64_t)cfg.heartbeat_ms};
    settle.data = &lw;
    uv_update_time(loop);
    uv_timer_start(&settle, leave_wait_cb, 20, 20);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_timer_stop(&settle);
    log_info("shutdown: %s", cluster_leave_done(cluster) ? "every node took this router out of its shard map"
                                                         : "not every node answered its leaving: stopping anyway");
    if (bus_quiesce(&bus, 5000) != 0) log_warn("shutdown: bus still busy after 5 s");
  }
  if (router) router_stop(router);
  metrics_http_stop(metrics); /* before what it reads goes */
  metrics_source_remove(bus_metrics, &bus);
  metrics_source_remove(memstats_metrics, &role);
  /* last: what the routers sent to other nodes is written and acknowledged */
  if (cluster) cluster_stop(cluster);
  uv_close((uv_handle_t *)&settle, NULL);
  uv_close((uv_handle_t *)&sigint_h, NULL);
  uv_close((uv_handle_t *)&sigterm_h, NULL);
  uv_close((uv_handle_t *)&sighup_h, NULL);
  uv_close((uv_handle_t *)&sigusr1_h, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  if (edge) edge_free(edge);
  router_free(router);
  int refused = cluster_refused(cluster);
  cluster_free(cluster);
  xfree(bus.edge_q);
  xfree(bus.worker_q);
  config_free(&cfg);
  store_claim_release(claim);
  xdom_free();
  domains_shutdown();
  xfree(sets);
  log_info("stopped");
  return refused ? 2 : 0;
}

/* Edge threads and listeners.
 *
 * Each I/O thread owns a libuv loop and its own listening sockets on the same ports,
 * opened with SO_REUSEPORT, so the kernel spreads new connections over the threads with
 * no shared accept lock. A once-a-second sweep timer per thread enforces the auth and
 * idle timeouts and sends whitespace keepalives. */
#include "edge/edge_internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/dedup.h"
#include "common/alloc.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/strmap.h"

static void xfree_cb(void *p) { xfree(p); }

static void on_accept(listener_t *l, int fd) {
  edge_thread_t *th = l->data;
  conn_accept(th, fd, l == &th->listeners[1]);
}

/* At the open-file limit (common/listener.c sheds the waiting connections, or rests). Said
 * at most every 10 s per thread; every connection closed unread is counted. */
static void on_full(listener_t *l, int err, unsigned shed, int paused) {
  edge_thread_t *th = l->data;
  metrics_add(M_LIMIT_OPEN_FILES, shed);
  uint64_t now = edge_now_ms();
  if (now - th->last_accept_warn_ms >= 10000) {
    th->last_accept_warn_ms = now;
    log_warn("accept: %s (open connections on this thread: %llu); new connections are being closed%s",
             strerror(err), (unsigned long long)th->nconns, paused ? ", accepting rests 100 ms at a time" : "");
  }
}

/* One process per address. Every edge thread binds its own socket with SO_REUSEPORT,
 * and Linux lets ANY process of the same user join such a group: a second xmppd started
 * by mistake on the same ports used to start happily and take half of the clients. So
 * before binding, each address is probed once with a socket that has SO_REUSEADDR but
 * not SO_REUSEPORT: its bind fails (EADDRINUSE) while anything listens there (our
 * sockets or another program's), and succeeds past mere TIME_WAIT connections of a
 * previous run (SO_REUSEADDR), so a restart is not refused. The probe is closed before
 * our own binds; the window between the two is closed by a host-wide lock held from the
 * first probe to the last listen(): an abstract Unix socket name (Linux; one per network
 * namespace, like the ports themselves; released by the kernel if the process dies). */
#define LISTEN_LOCK_NAME "xmppd-listen-lock"
#define LISTEN_LOCK_WAIT_MS 3000

static int listen_lock(void) {
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  memcpy(sun.sun_path + 1, LISTEN_LOCK_NAME, sizeof LISTEN_LOCK_NAME - 1); /* sun_path[0] = 0: abstract */
  socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + sizeof LISTEN_LOCK_NAME - 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  for (int waited = 0; bind(fd, (struct sockaddr *)&sun, sl) != 0; waited += 5) {
    if (errno != EADDRINUSE || waited >= LISTEN_LOCK_WAIT_MS) { /* not fatal: the probe still works */
      log_warn("listeners: no start-up lock (%s): starting without it", strerror(errno));
      close(fd);
      return -1;
    }
    uv_sleep(5); /* another xmppd is between its probe and its listen(): microseconds */
  }
  return fd;
}

static int parse_addr(const char *addr, int port, struct sockaddr_storage *ss, socklen_t *sl) {
  memset(ss, 0, sizeof *ss);
  if (uv_ip4_addr(addr, port, (struct sockaddr_in *)ss) == 0) *sl = sizeof(struct sockaddr_in);
  else if (uv_ip6_addr(addr, port, (struct sockaddr_in6 *)ss) == 0) *sl = sizeof(struct sockaddr_in6);
  else {
    log_error("bad listen address %s", addr);
    return -1;
  }
  return 0;
}

/* 0: free; EDGE_IN_USE: another process listens there (logged); -1: other error (logged). */
#define EDGE_IN_USE 1
static int probe_listener(const char *addr, int port) {
  struct sockaddr_storage ss;
  socklen_t sl;
  if (parse_addr(addr, port, &ss, &sl) != 0) return -1;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    log_error("socket: %s", strerror(errno));
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int rc = bind(fd, (struct sockaddr *)&ss, sl), e = errno;
  close(fd);
  if (rc == 0) return 0;
  if (e != EADDRINUSE) {
    log_error("cannot listen on %s:%d: %s", addr, port, strerror(e));
    return -1;
  }
  /* Who? A socket with SO_REUSEPORT binds beside a listener only if that one has
   * SO_REUSEPORT too and the same user: another xmppd, most likely. */
  int joinable = 0;
  fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    joinable = bind(fd, (struct sockaddr *)&ss, sl) == 0;
    close(fd);
  }
  if (joinable)
    log_error("cannot listen on %s:%d: another xmppd (a process of this user with SO_REUSEPORT) already "
              "listens there; one process per address: stop it first, or choose other ports",
              addr, port);
  else
    log_error("cannot listen on %s:%d: address already in use by another program", addr, port);
  return EDGE_IN_USE;
}

/* A bound, listening SO_REUSEPORT socket for addr:port: its fd, or -1 (logged). */
static int listen_fd(const char *addr, int port) {
  struct sockaddr_storage ss;
  socklen_t sl;
  if (parse_addr(addr, port, &ss, &sl) != 0) return -1;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    log_error("socket: %s", strerror(errno));
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 1024) != 0) {
    log_error("cannot listen on %s:%d: %s", addr, port, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

/* Before anything else of the edge exists: probes every configured address, then opens
 * every thread's sockets (fds[thread * 2 + 0: STARTTLS port, 1: direct TLS], -1 where
 * none), under the start-up lock. 0, EDGE_IN_USE or -1 (logged; nothing left open). */
static int open_listeners(const xmpp_config_t *cfg, int nthreads, int *fds) {
  int ports[2] = {cfg->c2s_port, cfg->c2s_tls_port};
  for (int i = 0; i < 2 * nthreads; i++) fds[i] = -1;
  int lock = listen_lock(), rc = 0;
  for (int p = 0; p < 2 && rc == 0; p++)
    if (ports[p] && (p == 0 || ports[p] != ports[0])) rc = probe_listener(cfg->c2s_addr, ports[p]);
  for (int i = 0; i < 2 * nthreads && rc == 0; i++)
    if (ports[i % 2] && (fds[i] = listen_fd(cfg->c2s_addr, ports[i % 2])) < 0) rc = -1;
  if (lock >= 0) close(lock);
  if (rc != 0)
    for (int i = 0; i < 2 * nthreads; i++)
      if (fds[i] >= 0) close(fds[i]);
  return rc;
}

static void close_cb_noop(uv_handle_t *h) {}


/* Bound on the last phase of stopping: a client that does not read (its receive window
 * full, our write pending) must not hold the thread, and the shutdown, forever. */
#define QUIT_GRACE_MS 2000

static void quit_sweep_cb(uv_timer_t *t) {
  edge_thread_t *th = t->data;
  if (th->all && edge_now_ms() - th->quit_ms < QUIT_GRACE_MS) return;
  int n = 0;
  for (conn_t *c = th->all, *nx; c; c = nx) {
    nx = c->next;
    conn_abort(c);
    n++;
  }
  if (n) log_warn("shutdown: %d connection(s) not reading their last bytes closed after %d ms", n, QUIT_GRACE_MS);
  uv_close((uv_handle_t *)t, close_cb_noop);
}

static void quit(edge_thread_t *th) {
  /* second phase of stopping: whatever is still open is closed now (a connection whose
   * last write is pending closes when it completes, or at QUIT_GRACE_MS), then the
   * loop ends */
  for (conn_t *c = th->all, *nx; c; c = nx) {
    nx = c->next;
    c->out.len = 0; /* what the socket has not taken yet is dropped */
    conn_close(c);
  }
  sasl_thread_close(th);
  edge_flush(th);
  th->quit_ms = edge_now_ms();
  uv_timer_start(&th->sweep, quit_sweep_cb, 100, 100);
  uv_close((uv_handle_t *)&th->throttle, close_cb_noop);
  uv_close((uv_handle_t *)&th->drain_timer, close_cb_noop);
  uv_close((uv_handle_t *)&th->stop_async, close_cb_noop);
  bus_queue_close(&th->bus->edge_q[th->index]);
}

static void stop_cb(uv_async_t *a) {
  edge_thread_t *th = a->data;
  int phase = atomic_load(&th->phase);
  if (!th->stopping) {
    th->stopping = 1;
    uv_timer_stop(&th->drain_timer); /* a drain under way: the rest get <system-shutdown/> */
    for (int i = 0; i < 2; i++) listener_close(&th->listeners[i], NULL);
    for (conn_t *c = th->all, *nx; c; c = nx) {
      nx = c->next;
      conn_stream_error(c, "system-shutdown", NULL);
    }
    sm_sweep(th, 0, 1); /* detached sessions end: their messages go to offline storage */
    edge_flush(th);
  }
  if (phase >= 2) quit(th);
}

static void thread_main(void *arg) {
  edge_thread_t *th = arg;
  char name[16];
  snprintf(name, sizeof name, "edge%d", th->index);
  log_set_thread(name);
  metrics_thread_init();
  bus_queue_own(&th->bus->edge_q[th->index]);
  uv_run(&th->loop, UV_RUN_DEFAULT);
  tls_thread_cleanup();
}

edge_t *edge_create(const xmpp_config_t *cfg, bus_t *bus, int *in_use) {
  if (in_use) *in_use = 0;
  int *fds = xcalloc(2 * (size_t)bus->nedges + 2, sizeof *fds);
  int rc = open_listeners(cfg, bus->nedges, fds);
  if (rc != 0) {
    if (in_use) *in_use = rc == EDGE_IN_USE;
    xfree(fds);
    return NULL;
  }
  edge_t *e = xcalloc(1, sizeof *e);
  e->cfg = cfg;
  e->bus = bus;
  e->nthreads = bus->nedges;
  if (cfg->tls_cert[0]) {
    char *err = NULL;
    if (tls_set_ciphers(cfg->tls_ciphers, &err) == 0 &&
        tls_set_tickets(cfg->tls_ticket_key_file, cfg->tls_ticket_lifetime, &err) == 0)
      e->tls = tls_ctx_new(cfg->tls_cert, cfg->tls_key, &err);
    if (e->tls && tls_ctx_set_domains(e->tls, domains_current(), &err) != 0) {
      tls_ctx_free(e->tls);
      e->tls = NULL;
    }
    tls_set_offload(cfg->tls_offload);
    tls_set_rekey_records((uint64_t)cfg->tls_rekey_records);
    if (!e->tls) {
      log_error("TLS: %s", err);
      xfree(err);
      xfree(e);
      for (int i = 0; i < 2 * bus->nedges; i++)
        if (fds[i] >= 0) close(fds[i]);
      xfree(fds);
      return NULL;
    }
  }
  uv_mutex_init(&e->rid_lock);
  e->rids = strmap_new();
  guard_conf_t gk = {cfg->max_conns_per_ip, cfg->auth_fail_ip, cfg->auth_fail_account, cfg->reg_per_ip_per_hour};
  e->guard = guard_new(&gk);
  e->threads = xcalloc((size_t)e->nthreads, sizeof *e->threads);
  for (int i = 0; i < e->nthreads; i++) {
    edge_thread_t *th = &e->threads[i];
    th->edge = e;
    th->index = i;
    th->cfg = cfg;
    th->bus = bus;
    /* connection ids start at a random generation: after an edge node restarts, its new
     * connections never carry the id of a session a router still remembers */
    uv_random(NULL, NULL, &th->generation, sizeof th->generation, 0, NULL);
    th->generation &= 0x7fffffff;
    uv_random(NULL, NULL, &th->next_origin, sizeof th->next_origin, 0, NULL);
    th->tls = e->tls;
    uv_loop_init(&th->loop);
    th->loop.data = th;
    char *err = NULL;
    th->store = store_open(cfg->store_backend, config_store_target(cfg), &err);
    if (!th->store) {
      log_error("storage: %s", err ? err : "cannot open");
      xfree(err);
      return NULL;
    }
    for (int p = 0; p < 2; p++) { /* listeners[1]: direct TLS */
      if (fds[2 * i + p] < 0) continue;
      if (listener_open(&th->listeners[p], &th->loop, fds[2 * i + p], on_accept, on_full, th) != 0) {
        log_error("cannot listen on %s:%d", cfg->c2s_addr, p ? cfg->c2s_tls_port : cfg->c2s_port);
        return NULL;
      }
      fds[2 * i + p] = -1;
    }
    conn_thread_init(th);
    sasl_thread_init(th);
    uv_timer_init(&th->loop, &th->sweep);
    uv_timer_init(&th->loop, &th->drain_timer);
    th->drain_timer.data = th;
    th->sweep.data = th;
    uv_async_init(&th->loop, &th->stop_async, stop_cb);
    th->stop_async.data = th;
    char qname[24];
    snprintf(qname, sizeof qname, "edge%d", i);
    bus_queue_attach(bus, &bus->edge_q[i], &th->loop, edge_bus_cb, th, qname);
  }
  xfree(fds);
  return e;
}

static long open_fds(void) {
  long n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return 64;
  while (readdir(d)) n++;
  closedir(d);
  return n;
}

/* Connections we can hold: the open-file limit less what is open now (listeners, loops,
 * storage) and a reserve for storage files, logs and the refusals themselves. */
#define FD_RESERVE 32

int edge_start(edge_t *e) {
  struct rlimit rl;
  long limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? (long)rl.rlim_cur : 1L << 20;
  e->max_conns = limit - open_fds() - FD_RESERVE;
  if (e->max_conns < 1) e->max_conns = 1;
  log_info("open-file limit %ld: up to %ld client connections", limit, e->max_conns);
  for (int i = 0; i < e->nthreads; i++) {
    edge_thread_t *th = &e->threads[i];
    uv_timer_start(&th->sweep, conn_sweep_cb, 1000, 1000);
    if (uv_thread_create(&th->thread, thread_main, th) != 0) return -1;
  }
  return 0;
}

/* Phase one: stop accepting and tell every client. Phase two (after the caller let the
 * routers settle): close the rest and end the loops. */
void edge_stop(edge_t *e) {
  for (int i = 0; i < e->nthreads; i++) {
    atomic_store(&e->threads[i].phase, 1);
    uv_async_send(&e->threads[i].stop_async);
  }
}

void edge_join(edge_t *e) {
  for (int i = 0; i < e->nthreads; i++) {
    atomic_store(&e->threads[i].phase, 2);
    uv_async_send(&e->threads[i].stop_async);
  }
  for (int i = 0; i < e->nthreads; i++) uv_thread_join(&e->threads[i].thread);
}

int edge_reload_tls(edge_t *e, const domains_t *d) {
  if (!e->tls) return 0;
  char *err = NULL;
  int rc = 0;
  /* the ticket keys first: the file is one rotation step (the new current key, then
   * the one it replaces), independent of the certificate */
  if (e->cfg->tls_ticket_key_file[0]) {
    if (tls_reload_tickets(&err) != 0) {
      log_error("TLS session ticket keys not reloaded, keeping the current ones: %s", err ? err : "?");
      xfree(err);
      err = NULL;
      rc = -1;
    } else {
      log_info("TLS session ticket keys reloaded from %s", e->cfg->tls_ticket_key_file);
    }
  }
  if (tls_ctx_reload(e->tls, e->cfg->tls_cert, e->cfg->tls_key, &err) != 0) {
    log_error("TLS reload failed, keeping the current certificate: %s", err ? err : "?");
    xfree(err);
    return -1;
  }
  log_info("TLS certificate reloaded from %s; new connections use it", e->cfg->tls_cert);
  if (tls_ctx_set_domains(e->tls, d, &err) != 0) {
    log_error("TLS reload of the domains' certificates failed, keeping the current ones: %s", err ? err : "?");
    xfree(err);
    return -1;
  }
  return rc;
}

void edge_free(edge_t *e) {
  if (!e) return;
  for (int i = 0; i < e->nthreads; i++) {
    edge_thread_t *th = &e->threads[i];
    uv_loop_close(&th->loop);
    store_close(th->store);
    strmap_free(th->dom_shk, free);
    xfree(th->slots);
    xfree(th->free_slots);
    buf_free(&th->scratch);
    dedup_free(th->seen);
  }
  tls_ctx_free(e->tls);
  guard_free(e->guard);
  strmap_free(e->rids, xfree_cb);
  uv_mutex_destroy(&e->rid_lock);
  xfree(e->drain_target);
  xfree(e->threads);
  xfree(e);
}

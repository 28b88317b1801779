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
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/strmap.h"

static void xfree_cb(void *p) { xfree(p); }

static void on_connection(uv_stream_t *server, int status) {
  edge_thread_t *th = server->loop->data;
  if (status < 0) {
    /* At the open-file limit libuv accepts and closes the pending connection itself
     * (its reserve-descriptor trick), so the loop neither spins nor stalls; accepting
     * resumes as soon as descriptors free up. Say so at most every 10 s per thread. */
    uint64_t now = edge_now_ms();
    if (now - th->last_accept_warn_ms >= 10000) {
      th->last_accept_warn_ms = now;
      log_warn("accept: %s (open connections on this thread: %llu); new connections are being closed",
               uv_strerror(status), (unsigned long long)th->nconns);
    }
    return;
  }
  conn_accept(th, server, server->data != NULL);
}

static int open_listener(edge_thread_t *th, uv_tcp_t *t, const char *addr, int port, int direct_tls) {
  struct sockaddr_storage ss;
  int rc = uv_ip4_addr(addr, port, (struct sockaddr_in *)&ss);
  if (rc != 0) rc = uv_ip6_addr(addr, port, (struct sockaddr_in6 *)&ss);
  if (rc != 0) {
    log_error("bad listen address %s", addr);
    return -1;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    log_error("socket: %s", strerror(errno));
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  socklen_t sl = ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
  if (bind(fd, (struct sockaddr *)&ss, sl) != 0) {
    log_error("cannot listen on %s:%d: %s", addr, port, strerror(errno));
    close(fd);
    return -1;
  }
  uv_tcp_init(&th->loop, t);
  t->data = direct_tls ? (void *)1 : NULL;
  if (uv_tcp_open(t, fd) != 0 || uv_listen((uv_stream_t *)t, 1024, on_connection) != 0) {
    log_error("cannot listen on %s:%d", addr, port);
    return -1;
  }
  return 0;
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
    c->out.len = 0;
    c->closing = 0;
    conn_close(c);
  }
  sasl_thread_close(th);
  edge_flush(th);
  th->quit_ms = edge_now_ms();
  uv_timer_start(&th->sweep, quit_sweep_cb, 100, 100);
  uv_close((uv_handle_t *)&th->throttle, close_cb_noop);
  uv_close((uv_handle_t *)&th->stop_async, close_cb_noop);
  bus_queue_close(&th->bus->edge_q[th->index]);
}

static void stop_cb(uv_async_t *a) {
  edge_thread_t *th = a->data;
  int phase = atomic_load(&th->phase);
  if (!th->stopping) {
    th->stopping = 1;
    for (int i = 0; i < th->nlisteners; i++) uv_close((uv_handle_t *)&th->listeners[i], close_cb_noop);
    th->nlisteners = 0;
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
  uv_run(&th->loop, UV_RUN_DEFAULT);
  tls_thread_cleanup();
}

edge_t *edge_create(const xmpp_config_t *cfg, bus_t *bus) {
  edge_t *e = xcalloc(1, sizeof *e);
  e->cfg = cfg;
  e->bus = bus;
  e->nthreads = bus->nedges;
  if (cfg->tls_cert[0]) {
    char *err = NULL;
    if (tls_set_ciphers(cfg->tls_ciphers, &err) == 0 &&
        tls_set_tickets(cfg->tls_ticket_key_file, cfg->tls_ticket_lifetime, &err) == 0)
      e->tls = tls_ctx_new(cfg->tls_cert, cfg->tls_key, &err);
    tls_set_offload(cfg->tls_offload);
    tls_set_rekey_records((uint64_t)cfg->tls_rekey_records);
    if (!e->tls) {
      log_error("TLS: %s", err);
      xfree(err);
      xfree(e);
      return NULL;
    }
  }
  uv_mutex_init(&e->rid_lock);
  e->rids = strmap_new();
  guard_conf_t gk = {cfg->max_conns_per_ip, cfg->auth_fail_ip, cfg->auth_fail_account};
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
    if (cfg->c2s_port && open_listener(th, &th->listeners[th->nlisteners++], cfg->c2s_addr, cfg->c2s_port, 0))
      return NULL;
    if (cfg->c2s_tls_port &&
        open_listener(th, &th->listeners[th->nlisteners++], cfg->c2s_addr, cfg->c2s_tls_port, 1))
      return NULL;
    conn_thread_init(th);
    sasl_thread_init(th);
    uv_timer_init(&th->loop, &th->sweep);
    th->sweep.data = th;
    uv_async_init(&th->loop, &th->stop_async, stop_cb);
    th->stop_async.data = th;
    char qname[24];
    snprintf(qname, sizeof qname, "edge%d", i);
    bus_queue_attach(bus, &bus->edge_q[i], &th->loop, edge_bus_cb, th, qname);
  }
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

int edge_reload_tls(edge_t *e) {
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
  return rc;
}

void edge_free(edge_t *e) {
  if (!e) return;
  for (int i = 0; i < e->nthreads; i++) {
    edge_thread_t *th = &e->threads[i];
    uv_loop_close(&th->loop);
    store_close(th->store);
    xfree(th->slots);
    xfree(th->free_slots);
    buf_free(&th->scratch);
  }
  tls_ctx_free(e->tls);
  guard_free(e->guard);
  strmap_free(e->rids, xfree_cb);
  uv_mutex_destroy(&e->rid_lock);
  xfree(e->threads);
  xfree(e);
}

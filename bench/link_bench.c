/* bus-link-bench: throughput of one TCP bus link on loopback (common/cluster/bus_link.h).
 *
 *   bus-link-bench [frames (1000000)] [payload bytes (200)] [TLS directory]
 *
 * With a TLS directory (holding node.pem, node.key and ca.pem) both ends use mutual TLS.
 *
 * A server thread (its own loop, a bus_listener_t) counts and frees what arrives; the
 * main thread (its own loop) sends `frames` DELIVER-like frames under flow control
 * (sending while bus_link_writable, resuming on on_writable). Prints frames/s and MB/s
 * from the first send to the last frame received. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/cluster/bus_link.h"
#include "common/log.h"

static uint64_t g_frames;
static size_t g_payload;
static _Atomic int g_port;
static _Atomic int g_done;
static uint64_t g_received, g_bytes, g_t_end;
static bus_listener_t *g_ls;
static bus_link_config_t g_cfg;
static char g_cert[512], g_key[512], g_ca[512];

static void srv_frames(bus_link_t *l, void *ud, bus_msg_t *b) {
  while (b) {
    bus_msg_t *m = b;
    b = m->next;
    g_received++;
    g_bytes += m->len;
    bus_msg_free(m);
  }
  if (g_received >= g_frames && g_ls) {
    g_t_end = uv_hrtime();
    bus_listener_close(g_ls);
    g_ls = NULL;
    atomic_store(&g_done, 1);
  }
}
static void free_overflow(bus_link_t *l, void *ud, bus_msg_t *m) { bus_msg_free(m); }

static void server_main(void *arg) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  bus_link_cbs_t cbs = {NULL, NULL, srv_frames, free_overflow, NULL, NULL};
  g_ls = bus_listener_new(&loop, "127.0.0.1", 0, 1, BUS_ROLE_ROUTER, &g_cfg, &cbs, NULL);
  if (!g_ls) exit(1);
  atomic_store(&g_port, bus_listener_port(g_ls));
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  bus_link_thread_cleanup();
}

static uint64_t g_sent, g_t_start, g_overflowed;
static uint8_t *g_pl;
static uv_timer_t g_check;
static bus_link_t *g_link;

static void produce(bus_link_t *l) {
  while (g_sent < g_frames && bus_link_writable(l)) {
    bus_frame_t f = {0};
    f.kind = BUS_DELIVER;
    f.dst = (bus_addr_t){2, 0, g_sent};
    f.from = "alice@example.net/phone";
    f.from_len = 23;
    f.to = "bob@example.net/laptop";
    f.to_len = 22;
    f.payload = g_pl;
    f.payload_len = g_payload;
    bus_link_send(l, bus_msg_new(&f));
    g_sent++;
  }
}
static void cli_up(bus_link_t *l, void *ud, uint16_t peer, uint8_t role) {
  if (!g_t_start) g_t_start = uv_hrtime();
  produce(l);
}
static void cli_writable(bus_link_t *l, void *ud, int w) {
  if (w) produce(l);
}
static void cli_frames(bus_link_t *l, void *ud, bus_msg_t *b) {
  while (b) {
    bus_msg_t *m = b;
    b = m->next;
    bus_msg_free(m);
  }
}
static void cli_overflow(bus_link_t *l, void *ud, bus_msg_t *m) {
  g_overflowed++;
  bus_msg_free(m);
}
static void check(uv_timer_t *t) {
  if (!atomic_load(&g_done)) return;
  bus_link_close(g_link);
  uv_close((uv_handle_t *)t, NULL);
}

int main(int argc, char **argv) {
  g_frames = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;
  g_payload = argc > 2 ? strtoull(argv[2], NULL, 10) : 200;
  log_set_level(LOG_WARN);
  bus_link_config_default(&g_cfg);
  if (argc > 3) {
    snprintf(g_cert, sizeof g_cert, "%s/node.pem", argv[3]);
    snprintf(g_key, sizeof g_key, "%s/node.key", argv[3]);
    snprintf(g_ca, sizeof g_ca, "%s/ca.pem", argv[3]);
    g_cfg.tls_cert = g_cert;
    g_cfg.tls_key = g_key;
    g_cfg.tls_ca = g_ca;
  }
  g_pl = xmalloc(g_payload + 1);
  for (size_t i = 0; i < g_payload; i++) g_pl[i] = (uint8_t)i;
  uv_thread_t th;
  uv_thread_create(&th, server_main, NULL);
  while (!atomic_load(&g_port)) uv_sleep(1);
  uv_loop_t loop;
  uv_loop_init(&loop);
  bus_link_cbs_t cbs = {cli_up, NULL, cli_frames, cli_overflow, cli_writable, NULL};
  g_link = bus_link_connect(&loop, "127.0.0.1", atomic_load(&g_port), 2, BUS_ROLE_EDGE, &g_cfg, &cbs, NULL);
  if (!g_link) return 1;
  uv_timer_init(&loop, &g_check);
  uv_timer_start(&g_check, check, 10, 10);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_thread_join(&th);
  uv_loop_close(&loop);
  bus_link_thread_cleanup();
  double s = (double)(g_t_end - g_t_start) / 1e9;
  printf("%s%llu frames of %zu bytes on the wire (payload %zu) in %.3f s: %.0f frames/s, %.1f MB/s; "
         "overflowed %llu\n",
         argc > 3 ? "TLS: " : "", (unsigned long long)g_received, g_received ? (size_t)(g_bytes / g_received) : 0, g_payload, s,
         (double)g_received / s, (double)g_bytes / s / 1e6, (unsigned long long)g_overflowed);
  xfree(g_pl);
  return g_received == g_frames && g_overflowed == 0 ? 0 : 1;
}

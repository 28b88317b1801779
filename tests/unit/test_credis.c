/* credis (common/credis.c) against a real redis-server of the test's own
 * (tests/unit/support/redis_server.c): registry heartbeats, TTL expiry, deregistration,
 * the session directory, the shard map, pipelining (one write per loop turn), a Redis
 * SIGKILLed and restarted on the same port, closing in every state, bad addresses.
 * Every wait is on a condition with a generous deadline; every test ends by running the
 * loop dry and closing it (no handle left behind). */
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/credis.h"
#include "common/err.h"
#include "common/log.h"
#include "tests/unit/support/redis_server.h"

#define CLUSTER "tc"
#define DEADLINE_MS 10000

static char g_dir[64];
static test_redis_t g_redis;
static redisContext *g_raw; /* the test's own connection */
static char g_addr[64];
static uv_loop_t g_loop;
static uv_timer_t g_wake; /* keeps UV_RUN_ONCE returning while a test waits */

static void setup(void) {
  signal(SIGPIPE, SIG_IGN);
  log_set_level(getenv("TEST_LOG") ? LOG_DEBUG : LOG_NONE); /* TEST_LOG=1: credis' lines */
  snprintf(g_dir, sizeof g_dir, "/tmp/test_credis.XXXXXX");
  cr_assert_not_null(mkdtemp(g_dir));
  test_redis_init(&g_redis, g_dir);
  g_raw = test_redis_start(&g_redis, 0);
  snprintf(g_addr, sizeof g_addr, "127.0.0.1:%d", g_redis.port);
  cr_assert_eq(uv_loop_init(&g_loop), 0);
  uv_timer_init(&g_loop, &g_wake);
}

static void teardown(void) {
  if (g_raw) redisFree(g_raw);
  g_raw = NULL;
  test_redis_stop(&g_redis);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0) rmdir(g_dir);
}

TestSuite(credis, .init = setup, .fini = teardown, .timeout = 60);

static void wake_cb(uv_timer_t *t) { (void)t; }

/* Runs the loop until cond holds; fails the test after ms. */
#define WAIT_FOR(cond, ms)                                                                     \
  do {                                                                                         \
    uint64_t dl_ = uv_hrtime() + (uint64_t)(ms) * 1000000u;                                    \
    uv_timer_start(&g_wake, wake_cb, 5, 5);                                                    \
    while (!(cond) && uv_hrtime() < dl_) uv_run(&g_loop, UV_RUN_ONCE);                         \
    uv_timer_stop(&g_wake);                                                                    \
    cr_assert(cond, "timed out after %d ms waiting for: %s", (int)(ms), #cond);                \
  } while (0)

/* Runs the loop for ms (for "nothing happens" checks only). */
static void run_for(int ms) {
  uint64_t dl = uv_hrtime() + (uint64_t)ms * 1000000u;
  uv_timer_start(&g_wake, wake_cb, 5, 5);
  while (uv_hrtime() < dl) uv_run(&g_loop, UV_RUN_ONCE);
  uv_timer_stop(&g_wake);
}

/* Runs the loop dry and closes it: fails when a handle is left. */
static void finish_loop(void) {
  uv_close((uv_handle_t *)&g_wake, NULL);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  cr_assert_eq(uv_loop_close(&g_loop), 0, "a handle is still open");
}

/* ---- observers ------------------------------------------------------------------------- */

typedef struct obs {
  int ups, downs, last_state;
  int polls;
  credis_node_t nodes[16];
  int n;
  credis_t *close_on_nodes; /* credis_close from inside on_nodes */
  int lost;
  credis_node_t holder;     /* on_lost's */
} obs_t;

static void on_state(void *ud, int up) {
  obs_t *o = ud;
  if (up) o->ups++;
  else o->downs++;
  o->last_state = up;
}

static void on_nodes(void *ud, const credis_node_t *nodes, int n) {
  obs_t *o = ud;
  o->polls++;
  o->n = n < 16 ? n : 16;
  memcpy(o->nodes, nodes, (size_t)o->n * sizeof *nodes);
  if (o->close_on_nodes) {
    credis_t *r = o->close_on_nodes;
    o->close_on_nodes = NULL;
    credis_close(r);
  }
}

static void on_lost(void *ud, const credis_node_t *holder) {
  obs_t *o = ud;
  o->lost++;
  o->holder = *holder;
}

static const credis_cbs_t g_cbs = {on_state, on_nodes, on_lost};

static credis_t *open_r(obs_t *o) {
  credis_t *r = credis_new(&g_loop, g_addr, CLUSTER, &g_cbs, o);
  cr_assert_not_null(r);
  return r;
}

static credis_node_t node(uint16_t id) {
  credis_node_t n = {.id = id, .role = 3, .workers = 4, .incarnation = 1000u + id, .bus_port = 7000 + id,
                     .shards = 64};
  snprintf(n.host, sizeof n.host, "10.0.0.%u", id);
  return n;
}

static int has_node(const obs_t *o, uint16_t id) {
  for (int i = 0; i < o->n; i++)
    if (o->nodes[i].id == id) return 1;
  return 0;
}

#define rint_cmd(...) test_redis_int(g_raw, __VA_ARGS__)

/* A number from INFO section: "name:N" or "name:calls=N". -1 when absent. */
static long long info_num(const char *section, const char *name) {
  redisReply *r = redisCommand(g_raw, "INFO %s", section);
  cr_assert(r && r->type == REDIS_REPLY_STRING);
  long long v = -1;
  char pat[96];
  snprintf(pat, sizeof pat, "\n%s:", name);
  const char *p = strstr(r->str, pat);
  if (p) {
    p += strlen(pat);
    if (strncmp(p, "calls=", 6) == 0) p += 6;
    v = strtoll(p, NULL, 10);
  }
  freeReplyObject(r);
  return v;
}

/* ---- registry -------------------------------------------------------------------------- */

Test(credis, register_poll_sees_self_and_peer) {
  obs_t o1 = {0}, o2 = {0};
  credis_t *r1 = open_r(&o1), *r2 = open_r(&o2);
  credis_node_t n1 = node(1), n2 = node(2);
  n2.role = 1;
  n2.workers = 0;
  credis_register(r1, &n1, 50, 2000);
  credis_register(r2, &n2, 50, 2000);
  WAIT_FOR(o1.n == 2 && o2.n == 2, DEADLINE_MS);
  cr_assert_eq(o1.ups, 1);
  cr_assert_eq(o1.downs, 0);
  cr_assert(credis_is_up(r1));
  /* sorted by id, fields as registered */
  cr_assert_eq(o1.nodes[0].id, 1);
  cr_assert_eq(o1.nodes[1].id, 2);
  cr_assert_eq(o1.nodes[1].role, 1);
  cr_assert_eq(o1.nodes[1].workers, 0);
  cr_assert_eq(o1.nodes[1].incarnation, 1002);
  cr_assert_str_eq(o1.nodes[1].host, "10.0.0.2");
  cr_assert_eq(o1.nodes[1].bus_port, 7002);
  cr_assert_eq(o1.nodes[1].shards, 64);
  cr_assert_eq(o2.nodes[0].role, 3);
  cr_assert_eq(o2.nodes[0].workers, 4);
  /* key layout */
  redisReply *v = redisCommand(g_raw, "GET " CLUSTER ":{nodes}:n:1");
  cr_assert_str_eq(v->str, "3 4 1001 10.0.0.1 7001 64");
  freeReplyObject(v);
  long long pttl = rint_cmd("PTTL " CLUSTER ":{nodes}:n:1");
  cr_assert(pttl > 0 && pttl <= 2000, "pttl %lld", pttl);
  cr_assert_eq(rint_cmd("SCARD " CLUSTER ":{nodes}:all"), 2);
  credis_close(r1);
  credis_close(r2);
  finish_loop();
}

/* A node of an older version registers without its shard count: it is still seen (a
 * rolling upgrade must not split the cluster), with shards 0; malformed entries are not. */
Test(credis, registry_entries_old_format_and_malformed) {
  obs_t o1 = {0};
  credis_t *r1 = open_r(&o1);
  freeReplyObject(redisCommand(g_raw, "SET " CLUSTER ":{nodes}:n:9 %s PX 60000", "2 4 77 10.0.0.9 7009"));
  freeReplyObject(redisCommand(g_raw, "SET " CLUSTER ":{nodes}:n:8 %s PX 60000", "2 4 77 10.0.0.8 7008 x"));
  freeReplyObject(redisCommand(g_raw, "SET " CLUSTER ":{nodes}:n:7 %s PX 60000", "2 4 77 10.0.0.7 7007 0"));
  freeReplyObject(redisCommand(g_raw, "SADD " CLUSTER ":{nodes}:all 9 8 7"));
  credis_node_t n1 = node(1);
  credis_register(r1, &n1, 50, 2000);
  WAIT_FOR(o1.n == 2, DEADLINE_MS);
  cr_assert(has_node(&o1, 1) && has_node(&o1, 9));
  cr_assert_eq(o1.nodes[1].id, 9);
  cr_assert_eq(o1.nodes[1].shards, 0);
  cr_assert_eq(o1.nodes[1].bus_port, 7009);
  cr_assert_eq(o1.nodes[0].shards, 64);
  credis_close(r1);
  finish_loop();
}

static void got_nodes(void *ud, int ok, const credis_node_t *nodes, int n) {
  obs_t *o = ud;
  o->polls++;
  o->last_state = ok;
  o->n = n < 16 ? n : 16;
  memcpy(o->nodes, nodes, (size_t)o->n * sizeof *nodes);
}

Test(credis, nodes_get_reads_without_registering) {
  obs_t o1 = {0}, tool = {0};
  credis_t *r1 = open_r(&o1), *rt = open_r(&tool);
  credis_node_t n1 = node(1);
  credis_register(r1, &n1, 50, 2000);
  WAIT_FOR(o1.n == 1 && tool.ups == 1, DEADLINE_MS);
  obs_t got = {0};
  credis_nodes_get(rt, got_nodes, &got);
  cr_assert_eq(got.polls, 0, "never inside the call");
  WAIT_FOR(got.polls == 1, DEADLINE_MS);
  cr_assert_eq(got.last_state, 1);
  cr_assert_eq(got.n, 1);
  cr_assert_eq(got.nodes[0].id, 1);
  cr_assert_str_eq(got.nodes[0].host, "10.0.0.1");
  cr_assert_eq(tool.polls, 0, "the reader registered nothing and polls nothing");
  cr_assert_eq(rint_cmd("SCARD " CLUSTER ":{nodes}:all"), 1);
  credis_close(r1);
  credis_close(rt);
  finish_loop();
}

Test(credis, silent_node_disappears_after_ttl) {
  obs_t o1 = {0}, o2 = {0};
  credis_t *r1 = open_r(&o1), *r2 = open_r(&o2);
  credis_node_t n1 = node(1), n2 = node(2);
  credis_register(r1, &n1, 50, 400);
  credis_register(r2, &n2, 50, 400);
  WAIT_FOR(o1.n == 2, DEADLINE_MS);
  credis_close(r2); /* heartbeats stop, no deregistration: the key lives out its TTL */
  int polls = o1.polls;
  WAIT_FOR(o1.n == 1 && has_node(&o1, 1), DEADLINE_MS);
  cr_assert_gt(o1.polls, polls);
  /* the poll script removed the dead id from the set */
  WAIT_FOR(rint_cmd("SISMEMBER " CLUSTER ":{nodes}:all 2") == 0, DEADLINE_MS);
  cr_assert_eq(rint_cmd("SISMEMBER " CLUSTER ":{nodes}:all 1"), 1);
  credis_close(r1);
  finish_loop();
}

Test(credis, deregister_removes_at_once) {
  obs_t o1 = {0}, o2 = {0};
  credis_t *r1 = open_r(&o1), *r2 = open_r(&o2);
  credis_node_t n1 = node(1), n2 = node(2);
  credis_register(r1, &n1, 50, 60000);
  credis_register(r2, &n2, 50, 60000);
  WAIT_FOR(o1.n == 2, DEADLINE_MS);
  credis_deregister(r2);
  credis_close(r2); /* in the same loop turn: the DEL still goes out */
  WAIT_FOR(o1.n == 1, DEADLINE_MS); /* long before the 60 s TTL */
  cr_assert_eq(rint_cmd("EXISTS " CLUSTER ":{nodes}:n:2"), 0);
  credis_close(r1);
  finish_loop();
}

Test(credis, close_from_on_nodes) {
  obs_t o = {0};
  credis_t *r = open_r(&o);
  o.close_on_nodes = r;
  credis_node_t n1 = node(1);
  credis_register(r, &n1, 20, 1000);
  WAIT_FOR(o.polls == 1, DEADLINE_MS);
  run_for(100);
  cr_assert_eq(o.polls, 1, "no callback after credis_close");
  cr_assert_eq(o.downs, 0);
  finish_loop();
}

/* ---- node ids are leases ---------------------------------------------------------------- */

/* credis_claim blocks: run on a thread of its own while this one runs the loop (a holder
 * registered on g_loop keeps refreshing its lease meanwhile). */
typedef struct claim_job {
  credis_node_t self, holder;
  uint32_t ttl_ms;
  int rc;
  char *err;
  uint64_t ms;
  _Atomic int done;
} claim_job_t;

static void claim_thread(void *arg) {
  claim_job_t *j = arg;
  uint64_t t0 = uv_hrtime();
  j->rc = credis_claim(g_addr, CLUSTER, &j->self, j->ttl_ms, &j->holder, &j->err);
  j->ms = (uv_hrtime() - t0) / 1000000u;
  j->done = 1;
}

static void claim(claim_job_t *j) {
  uv_thread_t t;
  cr_assert_eq(uv_thread_create(&t, claim_thread, j), 0);
  WAIT_FOR(j->done, DEADLINE_MS);
  uv_thread_join(&t);
}

Test(credis, claim_free_id_and_id_of_a_live_node) {
  obs_t o1 = {0};
  credis_t *r1 = open_r(&o1);
  credis_node_t n1 = node(1);
  credis_register(r1, &n1, 50, 1000);
  WAIT_FOR(o1.polls >= 1, DEADLINE_MS);
  /* another process with id 1: refused, naming the holder, within a few heartbeats
   * (not after the TTL: the holder is seen refreshing its lease) */
  claim_job_t j = {.self = node(1), .ttl_ms = 1000};
  j.self.incarnation = 4242;
  j.self.bus_port = 7777;
  claim(&j);
  cr_assert_eq(j.rc, XMPP_EEXIST, "rc %d %s", j.rc, j.err ? j.err : "");
  cr_assert_eq(j.holder.incarnation, 1001);
  cr_assert_str_eq(j.holder.host, "10.0.0.1");
  cr_assert_eq(j.holder.bus_port, 7001);
  cr_assert_lt(j.ms, 600, "refused after %" PRIu64 " ms", j.ms);
  redisReply *v = redisCommand(g_raw, "GET " CLUSTER ":{nodes}:n:1");
  cr_assert_str_eq(v->str, "3 4 1001 10.0.0.1 7001 64", "the holder's lease is untouched");
  freeReplyObject(v);
  cr_assert_eq(o1.lost, 0);
  /* a free id: taken at once with the node's value and TTL */
  claim_job_t k = {.self = node(5), .ttl_ms = 1500};
  claim(&k);
  cr_assert_eq(k.rc, 0);
  cr_assert_lt(k.ms, 500);
  v = redisCommand(g_raw, "GET " CLUSTER ":{nodes}:n:5");
  cr_assert_str_eq(v->str, "3 4 1005 10.0.0.5 7005 64");
  freeReplyObject(v);
  long long pttl = rint_cmd("PTTL " CLUSTER ":{nodes}:n:5");
  cr_assert(pttl > 0 && pttl <= 1500, "pttl %lld", pttl);
  credis_close(r1);
  finish_loop();
}

Test(credis, claim_waits_out_a_dead_holders_lease) {
  /* a node killed a moment ago: its key lives out its TTL, nobody refreshes it */
  freeReplyObject(redisCommand(g_raw, "SET " CLUSTER ":{nodes}:n:3 %s PX 400", "1 0 77 10.0.0.9 7009 64"));
  claim_job_t j = {.self = node(3), .ttl_ms = 2000};
  claim(&j);
  cr_assert_eq(j.rc, 0, "rc %d %s", j.rc, j.err ? j.err : "");
  cr_assert_geq(j.ms, 250, "taken after %" PRIu64 " ms: before the old lease ran out", j.ms);
  redisReply *v = redisCommand(g_raw, "GET " CLUSTER ":{nodes}:n:3");
  cr_assert_str_eq(v->str, "3 4 1003 10.0.0.3 7003 64");
  freeReplyObject(v);
  /* a key without expiry is never taken */
  freeReplyObject(redisCommand(g_raw, "SET " CLUSTER ":{nodes}:n:4 %s", "1 0 78 10.0.0.8 7008 64"));
  claim_job_t k = {.self = node(4), .ttl_ms = 2000};
  claim(&k);
  cr_assert_eq(k.rc, XMPP_EEXIST);
  cr_assert_eq(k.holder.incarnation, 78);
  finish_loop();
}

Test(credis, lease_lost_stops_heartbeats_and_release_keeps_the_holders) {
  obs_t o1 = {0};
  credis_t *r1 = open_r(&o1);
  credis_node_t n1 = node(1);
  credis_register(r1, &n1, 30, 5000);
  WAIT_FOR(o1.polls >= 1, DEADLINE_MS);
  /* another incarnation took the id (ours ran out, say, while we were cut off) */
  freeReplyObject(redisCommand(g_raw, "SET " CLUSTER ":{nodes}:n:1 %s PX 60000", "1 0 999 10.9.9.9 7999 64"));
  WAIT_FOR(o1.lost == 1, DEADLINE_MS);
  cr_assert_eq(o1.holder.id, 1);
  cr_assert_eq(o1.holder.incarnation, 999);
  cr_assert_str_eq(o1.holder.host, "10.9.9.9");
  cr_assert_eq(o1.holder.bus_port, 7999);
  int polls = o1.polls;
  run_for(200); /* no fight: no more heartbeats */
  cr_assert_eq(o1.lost, 1);
  cr_assert_leq(o1.polls, polls + 1);
  redisReply *v = redisCommand(g_raw, "GET " CLUSTER ":{nodes}:n:1");
  cr_assert_str_eq(v->str, "1 0 999 10.9.9.9 7999 64");
  freeReplyObject(v);
  credis_close(r1);
  finish_loop();
}

Test(credis, release_only_while_the_lease_is_ours) {
  obs_t o1 = {0};
  credis_t *r1 = open_r(&o1);
  credis_node_t n1 = node(1);
  credis_register(r1, &n1, 60000, 60000); /* one heartbeat now, the next in a minute */
  WAIT_FOR(o1.polls >= 1, DEADLINE_MS);
  freeReplyObject(redisCommand(g_raw, "SET " CLUSTER ":{nodes}:n:1 %s PX 60000", "1 0 999 10.9.9.9 7999 64"));
  /* a clean stop of the loser (it has not heard yet) must not delete the holder's lease or id */
  credis_deregister(r1);
  credis_close(r1);
  finish_loop();
  cr_assert_eq(rint_cmd("EXISTS " CLUSTER ":{nodes}:n:1"), 1);
  cr_assert_eq(rint_cmd("SISMEMBER " CLUSTER ":{nodes}:all 1"), 1);
}

/* ---- session directory ----------------------------------------------------------------- */

typedef struct dir_res {
  int calls, ok, n;
  char res[8][64];
  credis_session_t s[8];
} dir_res_t;

static void dir_cb(void *ud, int ok, const char **resources, const credis_session_t *s, int n) {
  dir_res_t *d = ud;
  d->calls++;
  d->ok = ok;
  d->n = n;
  for (int i = 0; i < n && i < 8; i++) {
    snprintf(d->res[i], sizeof d->res[i], "%s", resources[i]);
    d->s[i] = s[i];
  }
}

static const credis_session_t *find_res(const dir_res_t *d, const char *res) {
  for (int i = 0; i < d->n; i++)
    if (strcmp(d->res[i], res) == 0) return &d->s[i];
  return NULL;
}

Test(credis, directory_round_trip) {
  obs_t o = {0};
  credis_t *r = open_r(&o);
  WAIT_FOR(o.ups == 1, DEADLINE_MS);
  credis_session_t a = {.node = 1, .thread = 2, .conn = 0x123456789abcULL, .priority = -5, .available = 1};
  credis_session_t b = {.node = 3, .thread = 0, .conn = 7, .priority = 10, .available = 0};
  credis_dir_set(r, "alice@x", "phone", &a);
  credis_dir_set(r, "alice@x", "laptop", &b);
  dir_res_t d = {0};
  credis_dir_get(r, "alice@x", dir_cb, &d);
  cr_assert_eq(d.calls, 0, "never inside the call");
  WAIT_FOR(d.calls == 1, DEADLINE_MS);
  cr_assert(d.ok);
  cr_assert_eq(d.n, 2);
  const credis_session_t *p = find_res(&d, "phone");
  cr_assert_not_null(p);
  cr_assert(p->node == 1 && p->thread == 2 && p->conn == 0x123456789abcULL && p->priority == -5 &&
            p->available == 1);
  p = find_res(&d, "laptop");
  cr_assert_not_null(p);
  cr_assert(p->node == 3 && p->thread == 0 && p->conn == 7 && p->priority == 10 && p->available == 0);
  /* key layout: <cluster>:s:{<bare>} hash, resource -> "node thread conn priority available" */
  redisReply *v = redisCommand(g_raw, "HGET " CLUSTER ":s:{alice@x} laptop");
  cr_assert_str_eq(v->str, "3 0 7 10 0");
  freeReplyObject(v);
  credis_dir_del(r, "alice@x", "phone");
  memset(&d, 0, sizeof d);
  credis_dir_get(r, "alice@x", dir_cb, &d);
  WAIT_FOR(d.calls == 1, DEADLINE_MS);
  cr_assert(d.ok);
  cr_assert_eq(d.n, 1);
  cr_assert_str_eq(d.res[0], "laptop");
  /* an unknown JID: no resources */
  memset(&d, 0, sizeof d);
  credis_dir_get(r, "nobody@x", dir_cb, &d);
  WAIT_FOR(d.calls == 1, DEADLINE_MS);
  cr_assert(d.ok);
  cr_assert_eq(d.n, 0);
  credis_stats_t st;
  credis_get_stats(r, &st);
  cr_assert_eq(st.errors, 0);
  cr_assert_eq(st.dropped, 0);
  credis_close(r);
  finish_loop();
}

/* 10,000 directory writes in one loop turn: all buffered, sent in few writes, all
 * answered; then 100 in one turn: exactly ONE write(2), read by Redis in one go. */
Test(credis, pipelining) {
  obs_t o = {0};
  credis_t *r = open_r(&o);
  WAIT_FOR(o.ups == 1, DEADLINE_MS);
  credis_stats_t s0, s1;
  credis_get_stats(r, &s0);
  long long hset0 = info_num("commandstats", "cmdstat_hset");
  if (hset0 < 0) hset0 = 0;
  uint64_t t0 = uv_hrtime();
  char bare[64], res[16];
  for (int i = 0; i < 10000; i++) {
    snprintf(bare, sizeof bare, "user%d@x", i % 2500);
    snprintf(res, sizeof res, "r%d", i / 2500);
    credis_session_t s = {.node = 1, .thread = (uint16_t)(i % 8), .conn = (uint64_t)i, .priority = 0, .available = 1};
    credis_dir_set(r, bare, res, &s);
  }
  credis_get_stats(r, &s1);
  cr_assert_eq(s1.commands - s0.commands, 10000);
  cr_assert_eq(s1.writes, s0.writes, "nothing written inside the loop turn");
  WAIT_FOR((credis_get_stats(r, &s1), s1.replies - s0.replies == 10000), DEADLINE_MS);
  double ms = (double)(uv_hrtime() - t0) / 1e6;
  cr_assert_eq(s1.errors, 0);
  cr_assert_lt(s1.writes - s0.writes, 64, "%" PRIu64 " writes for 10000 commands", s1.writes - s0.writes);
  cr_assert_lt(ms, 5000.0, "10000 pipelined HSETs took %.0f ms", ms);
  cr_assert_eq(info_num("commandstats", "cmdstat_hset") - hset0, 10000);
  cr_assert_eq(rint_cmd("HLEN " CLUSTER ":s:{user7@x}"), 4);

  /* 100 commands in one turn: one write */
  long long reads0 = info_num("stats", "total_reads_processed");
  credis_get_stats(r, &s0);
  for (int i = 0; i < 100; i++) {
    credis_session_t s = {.node = 2, .conn = (uint64_t)i, .available = 1};
    credis_dir_set(r, "bob@x", "res", &s);
  }
  WAIT_FOR((credis_get_stats(r, &s1), s1.replies - s0.replies == 100), DEADLINE_MS);
  cr_assert_eq(s1.writes - s0.writes, 1, "%" PRIu64 " writes for 100 commands", s1.writes - s0.writes);
  long long reads1 = info_num("stats", "total_reads_processed");
  if (reads0 >= 0) /* Redis >= 6: its own count of read events (INFO's own included) */
    cr_assert_leq(reads1 - reads0, 3, "%lld reads by Redis", reads1 - reads0);
  credis_close(r);
  finish_loop();
}

/* ---- shard map ------------------------------------------------------------------------- */

typedef struct map_res {
  int calls, ok;
  uint64_t epoch;
  uint32_t n, own[64];
} map_res_t;

static void map_cb(void *ud, int ok, uint64_t epoch, const uint32_t *owner, uint32_t n) {
  map_res_t *m = ud;
  m->calls++;
  m->ok = ok;
  m->epoch = epoch;
  m->n = n;
  for (uint32_t i = 0; i < n && i < 64; i++) m->own[i] = owner[i];
}

static map_res_t get_map(credis_t *r) {
  map_res_t m = {0};
  credis_shardmap_get(r, map_cb, &m);
  WAIT_FOR(m.calls == 1, DEADLINE_MS);
  return m;
}

typedef struct pub_res {
  int calls, result;
  uint64_t epoch;
} pub_res_t;

static void pub_cb(void *ud, int result, uint64_t epoch) {
  pub_res_t *p = ud;
  p->calls++;
  p->result = result;
  p->epoch = epoch;
}

/* Publishes and waits for the compare-and-set's answer. */
static pub_res_t publish(credis_t *r, uint64_t base, const uint32_t *own, uint32_t n) {
  pub_res_t p = {0};
  credis_shardmap_publish(r, base, own, n, pub_cb, &p);
  cr_assert_eq(p.calls, 0, "called back inside the call");
  WAIT_FOR(p.calls == 1, DEADLINE_MS);
  return p;
}

/* One global epoch, a compare-and-set in Redis (docs/cluster.md, "Shard map epoch").
 * Before, each node counted its own epochs and Redis refused anything older than the
 * stored one: a router restarted (counting from 1 again) could not write the map until
 * it had seen as many changes as the stored epoch, so the map in Redis kept showing a
 * dead router holding its shards. */
Test(credis, shardmap_publish_and_epochs) {
  obs_t o = {0};
  credis_t *r = open_r(&o);
  WAIT_FOR(o.ups == 1, DEADLINE_MS);
  map_res_t m = get_map(r);
  cr_assert(m.ok);
  cr_assert_eq(m.n, 0, "no map yet");
  uint32_t own[64];
  for (int i = 0; i < 64; i++) own[i] = (uint32_t)(1 + i % 3) << 16 | (uint32_t)(i % 4);
  own[5] = 0xffffffffu;
  pub_res_t p = publish(r, 0, own, 64);
  cr_assert_eq(p.result, CREDIS_MAP_STORED);
  cr_assert_eq(p.epoch, 1);
  m = get_map(r);
  cr_assert(m.ok);
  cr_assert_eq(m.epoch, 1);
  cr_assert_eq(m.n, 64);
  cr_assert_eq(memcmp(m.own, own, sizeof own), 0);
  /* the same map again, by another router that has seen nothing yet: nothing written */
  p = publish(r, 0, own, 64);
  cr_assert_eq(p.result, CREDIS_MAP_SAME);
  cr_assert_eq(p.epoch, 1);
  /* another map from a writer that has not seen epoch 1: refused, told the epoch */
  uint32_t other[2] = {1, 2};
  p = publish(r, 0, other, 2);
  cr_assert_eq(p.result, CREDIS_MAP_REFUSED);
  cr_assert_eq(p.epoch, 1);
  m = get_map(r);
  cr_assert_eq(m.epoch, 1);
  cr_assert_eq(m.n, 64);
  /* having seen it (a restarted router's second attempt), it writes epoch 2 */
  p = publish(r, 1, other, 2);
  cr_assert_eq(p.result, CREDIS_MAP_STORED);
  cr_assert_eq(p.epoch, 2);
  m = get_map(r);
  cr_assert_eq(m.epoch, 2);
  cr_assert_eq(m.n, 2);
  cr_assert_eq(m.own[1], 2);
  /* a writer that saw epoch 1 only is refused now */
  p = publish(r, 1, own, 64);
  cr_assert_eq(p.result, CREDIS_MAP_REFUSED);
  cr_assert_eq(p.epoch, 2);
  /* the same owners under another shard count are another map */
  p = publish(r, 2, other, 1);
  cr_assert_eq(p.result, CREDIS_MAP_STORED);
  cr_assert_eq(p.epoch, 3);
  /* Redis lost the key (restarted without persistence): the epoch does not go back
   * below what the writer had seen */
  cr_assert_eq(rint_cmd("DEL " CLUSTER ":{nodes}:shardmap"), 1);
  p = publish(r, 3, own, 64);
  cr_assert_eq(p.result, CREDIS_MAP_STORED);
  cr_assert_eq(p.epoch, 4);
  /* the script cache flushed (as after a Redis restart): EVALSHA -> NOSCRIPT -> EVAL */
  freeReplyObject(redisCommand(g_raw, "SCRIPT FLUSH"));
  p = publish(r, 4, other, 2);
  cr_assert_eq(p.result, CREDIS_MAP_STORED);
  cr_assert_eq(p.epoch, 5);
  m = get_map(r);
  cr_assert_eq(m.epoch, 5);
  cr_assert_eq(m.n, 2);
  cr_assert_eq(rint_cmd("EXISTS " CLUSTER ":{nodes}:shardmap"), 1);
  credis_close(r);
  finish_loop();
}

/* Two writers, each refused once, converge on one map with one epoch per change. */
Test(credis, shardmap_two_writers_converge) {
  obs_t o1 = {0}, o2 = {0};
  credis_t *r1 = open_r(&o1), *r2 = open_r(&o2);
  WAIT_FOR(o1.ups == 1 && o2.ups == 1, DEADLINE_MS);
  uint32_t a[4] = {1u << 16, 1u << 16, 2u << 16, 2u << 16}, b[4] = {1u << 16, 3u << 16, 2u << 16, 3u << 16};
  pub_res_t p1 = publish(r1, 0, a, 4);
  cr_assert_eq(p1.result, CREDIS_MAP_STORED);
  /* r2 saw the same view: nothing to write, it learns the epoch */
  pub_res_t p2 = publish(r2, 0, a, 4);
  cr_assert_eq(p2.result, CREDIS_MAP_SAME);
  cr_assert_eq(p2.epoch, p1.epoch);
  /* a third router joins: both see it; the first writes, the second finds it done */
  p1 = publish(r1, p1.epoch, b, 4);
  cr_assert_eq(p1.result, CREDIS_MAP_STORED);
  cr_assert_eq(p1.epoch, 2);
  p2 = publish(r2, p2.epoch, b, 4);
  cr_assert_eq(p2.result, CREDIS_MAP_SAME);
  cr_assert_eq(p2.epoch, 2);
  credis_close(r1);
  credis_close(r2);
  finish_loop();
}

/* Redis unreachable: the publish fails (called back once, on a later loop turn). */
Test(credis, shardmap_publish_while_redis_down) {
  obs_t o = {0};
  credis_t *r = open_r(&o);
  WAIT_FOR(o.ups == 1, DEADLINE_MS);
  redisFree(g_raw);
  g_raw = NULL;
  test_redis_kill(&g_redis);
  WAIT_FOR(o.downs == 1, DEADLINE_MS);
  uint32_t own[2] = {1u << 16, 2u << 16};
  pub_res_t p = publish(r, 0, own, 2);
  cr_assert_eq(p.result, CREDIS_MAP_FAILED);
  cr_assert_eq(p.epoch, 0);
  credis_close(r);
  finish_loop();
}

/* ---- outages --------------------------------------------------------------------------- */

Test(credis, redis_killed_and_restarted) {
  obs_t o = {0};
  credis_t *r = open_r(&o);
  credis_node_t n1 = node(1);
  credis_register(r, &n1, 50, 5000);
  WAIT_FOR(o.polls >= 1 && o.n == 1, DEADLINE_MS);
  redisFree(g_raw);
  g_raw = NULL;
  test_redis_kill(&g_redis);
  WAIT_FOR(o.downs == 1, DEADLINE_MS);
  cr_assert_eq(o.last_state, 0);
  cr_assert(!credis_is_up(r));
  /* while down: writes dropped and counted, reads fail on a later turn, no poll */
  credis_stats_t s0, s1;
  credis_get_stats(r, &s0);
  credis_session_t s = {.node = 1, .conn = 1, .available = 1};
  credis_dir_set(r, "alice@x", "phone", &s);
  credis_dir_del(r, "alice@x", "phone");
  credis_get_stats(r, &s1);
  cr_assert_eq(s1.dropped - s0.dropped, 2);
  dir_res_t d = {0};
  credis_dir_get(r, "alice@x", dir_cb, &d);
  cr_assert_eq(d.calls, 0);
  WAIT_FOR(d.calls == 1, DEADLINE_MS);
  cr_assert_eq(d.ok, 0);
  int polls = o.polls;
  run_for(300); /* several reconnect attempts against a closed port */
  cr_assert_eq(o.polls, polls, "no on_nodes while down");
  cr_assert_eq(o.ups, 1);
  /* same port, empty Redis (nothing was saved) */
  g_raw = test_redis_start(&g_redis, 0);
  WAIT_FOR(o.ups == 2, DEADLINE_MS);
  WAIT_FOR(o.polls > polls && o.n == 1 && has_node(&o, 1), DEADLINE_MS);
  cr_assert_eq(rint_cmd("EXISTS " CLUSTER ":{nodes}:n:1"), 1, "re-registered after the restart");
  credis_get_stats(r, &s1);
  cr_assert_eq(s1.reconnects, 1);
  cr_assert_eq(o.downs, 1);
  /* and the directory works again */
  credis_dir_set(r, "alice@x", "phone", &s);
  memset(&d, 0, sizeof d);
  credis_dir_get(r, "alice@x", dir_cb, &d);
  WAIT_FOR(d.calls == 1, DEADLINE_MS);
  cr_assert(d.ok);
  cr_assert_eq(d.n, 1);
  credis_close(r);
  finish_loop();
}

Test(credis, close_while_disconnected) {
  /* nothing listens on this port */
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", test_free_port());
  obs_t o = {0};
  credis_t *r = credis_new(&g_loop, addr, CLUSTER, &g_cbs, &o);
  cr_assert_not_null(r);
  credis_node_t n1 = node(1);
  credis_register(r, &n1, 20, 100);
  dir_res_t d = {0};
  credis_dir_get(r, "alice@x", dir_cb, &d);
  run_for(400);
  cr_assert_eq(o.ups, 0);
  cr_assert_eq(o.downs, 0, "down is reported only after an up");
  cr_assert_eq(d.calls, 1);
  cr_assert_eq(d.ok, 0);
  credis_dir_get(r, "alice@x", dir_cb, &d); /* pending failure discarded by close */
  credis_close(r);
  run_for(50);
  cr_assert_eq(d.calls, 1, "no callback after credis_close");
  finish_loop();
}

Test(credis, close_while_connecting_and_at_once) {
  obs_t o = {0};
  /* closed in the same turn as created: the connect is in flight */
  credis_t *r = open_r(&o);
  credis_close(r);
  /* closed after a few turns, up or not */
  credis_t *r2 = open_r(&o);
  uv_run(&g_loop, UV_RUN_NOWAIT);
  credis_close(r2);
  /* unix socket that does not exist */
  char addr[128];
  snprintf(addr, sizeof addr, "unix:%s/none.sock", g_dir);
  credis_t *r3 = credis_new(&g_loop, addr, CLUSTER, &g_cbs, &o);
  cr_assert_not_null(r3);
  run_for(150);
  credis_close(r3);
  finish_loop();
  cr_assert_eq(o.downs, 0);
}

Test(credis, password_and_db) {
  freeReplyObject(redisCommand(g_raw, "CONFIG SET requirepass s3cret"));
  freeReplyObject(redisCommand(g_raw, "AUTH s3cret"));
  char addr[128];
  obs_t bad = {0};
  snprintf(addr, sizeof addr, "127.0.0.1:%d password=wrong", g_redis.port);
  credis_t *rb = credis_new(&g_loop, addr, CLUSTER, &g_cbs, &bad);
  cr_assert_not_null(rb);
  obs_t o = {0};
  snprintf(addr, sizeof addr, "127.0.0.1:%d db=3\tpassword=s3cret", g_redis.port);
  credis_t *r = credis_new(&g_loop, addr, CLUSTER, &g_cbs, &o);
  WAIT_FOR(o.ups == 1, DEADLINE_MS);
  credis_session_t s = {.node = 9, .conn = 1, .available = 1};
  credis_dir_set(r, "alice@x", "phone", &s);
  dir_res_t d = {0};
  credis_dir_get(r, "alice@x", dir_cb, &d);
  WAIT_FOR(d.calls == 1, DEADLINE_MS);
  cr_assert_eq(d.n, 1);
  freeReplyObject(redisCommand(g_raw, "SELECT 3"));
  cr_assert_eq(rint_cmd("HEXISTS " CLUSTER ":s:{alice@x} phone"), 1);
  freeReplyObject(redisCommand(g_raw, "SELECT 0"));
  cr_assert_eq(rint_cmd("EXISTS " CLUSTER ":s:{alice@x}"), 0);
  run_for(300);
  cr_assert_eq(bad.ups, 0, "a wrong password is never up");
  cr_assert(!credis_is_up(rb));
  credis_close(rb);
  credis_close(r);
  finish_loop();
}

Test(credis, bad_address_or_cluster) {
  const char *bad[] = {"", "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:x", ":6379", "unix:",
                       "[::1", "127.0.0.1:6379 db=-1", "127.0.0.1:6379 nonsense=1"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    cr_assert_null(credis_new(&g_loop, bad[i], CLUSTER, &g_cbs, NULL), "%s", bad[i]);
  const char *badc[] = {"", "a{b", "a}b", "a b", NULL};
  for (size_t i = 0; i < sizeof badc / sizeof badc[0]; i++)
    cr_assert_null(credis_new(&g_loop, g_addr, badc[i], &g_cbs, NULL), "cluster %zu", i);
  finish_loop();
}

/* A connection up, then the Redis stopped (SIGSTOP: the connection stays open, nothing
 * errs) with a directory write sent after it. The test sends SIGCONT. */
static credis_t *up_then_frozen(obs_t *o) {
  credis_t *r = open_r(o);
  WAIT_FOR(o->ups == 1, DEADLINE_MS);
  cr_assert_eq(kill(g_redis.pid, SIGSTOP), 0);
  credis_session_t s = {.node = 1, .conn = 1, .available = 1};
  credis_dir_set(r, "alice@x", "phone", &s);
  return r;
}

/* A Redis that accepts but never answers (SIGSTOP): the handshake times out and is retried;
 * credis_close's graceful drain gives up after its bound. */
Test(credis, frozen_redis) {
  obs_t o = {0};
  credis_t *r = up_then_frozen(&o); /* a directory write in it, never answered */
  run_for(50);
  uint64_t t0 = uv_hrtime();
  credis_close(r);
  obs_t o2 = {0};
  credis_t *r2 = open_r(&o2); /* connects (the kernel accepts), no answer to the handshake */
  run_for(2500);
  cr_assert_eq(o2.ups, 0);
  cr_assert_eq(kill(g_redis.pid, SIGCONT), 0);
  WAIT_FOR(o2.ups == 1, DEADLINE_MS);
  credis_close(r2);
  finish_loop();
  double ms = (double)(uv_hrtime() - t0) / 1e6;
  cr_assert_lt(ms, 8000.0, "closing took %.0f ms", ms);
  cr_assert_eq(o.downs, 0, "no callback after close");
}

/* A Redis that stops answering while commands are in flight (SIGSTOP: the connection
 * stays open, nothing errs): credis declares it lost after its reply timeout (3 s), so
 * that a Cluster's map is refreshed and a fail-over followed; before, the commands waited
 * for ever and nothing was reported. Back when it answers again. */
Test(credis, silent_redis_is_lost_after_the_reply_timeout) {
  obs_t o = {0};
  credis_t *r = up_then_frozen(&o); /* a directory write in flight, never answered */
  uint64_t t0 = uv_hrtime();
  WAIT_FOR(o.downs == 1, DEADLINE_MS);
  double ms = (double)(uv_hrtime() - t0) / 1e6;
  cr_assert_geq(ms, 2500.0, "lost after %.0f ms: too early for a 3 s reply timeout", ms);
  cr_assert_eq(kill(g_redis.pid, SIGCONT), 0);
  WAIT_FOR(o.ups == 2, DEADLINE_MS);
  credis_close(r);
  finish_loop();
}

/* The loop's longest stall while it runs for ms: a 10 ms timer's largest gap, and the sum
 * of the gaps beyond 50 ms. */
typedef struct gaps {
  uint64_t last, max, over;
} gaps_t;

static void gap_cb(uv_timer_t *t) {
  gaps_t *g = t->data;
  uint64_t now = uv_hrtime();
  if (g->last) {
    uint64_t d = now - g->last;
    if (d > g->max) g->max = d;
    if (d > 50000000u) g->over += d - 10000000u;
  }
  g->last = now;
}

/* A sentinel that accepts connections and never answers (a hung process: the kernel
 * completes the handshake). credis asks it on the loop, asynchronously: the loop never
 * stalls on it (before, each connection attempt blocked the loop for the synchronous
 * query's timeouts), the query times out and is asked again later. */
Test(credis, unanswering_sentinel_never_blocks_the_loop) {
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_geq(ls, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  cr_assert_eq(bind(ls, (struct sockaddr *)&a, sizeof a), 0);
  cr_assert_eq(listen(ls, 64), 0);
  cr_assert_eq(getsockname(ls, (struct sockaddr *)&a, &al), 0);
  char addr[96];
  snprintf(addr, sizeof addr, "sentinel:127.0.0.1:%d/mymaster", ntohs(a.sin_port));
  obs_t o = {0};
  credis_t *r = credis_new(&g_loop, addr, CLUSTER, &g_cbs, &o);
  cr_assert_not_null(r);
  gaps_t g = {0};
  uv_timer_t t;
  uv_timer_init(&g_loop, &t);
  t.data = &g;
  uv_timer_start(&t, gap_cb, 10, 10);
  run_for(4000);
  uv_timer_stop(&t);
  uv_close((uv_handle_t *)&t, NULL);
  /* how many times it was asked: the connections queued on the listener */
  fcntl(ls, F_SETFL, O_NONBLOCK);
  int asked = 0, fd;
  while ((fd = accept(ls, NULL, NULL)) >= 0) {
    asked++;
    close(fd);
  }
  close(ls);
  cr_assert_eq(o.ups, 0);
  cr_assert_geq(asked, 2, "the sentinel was asked %d times (timed out, asked again)", asked);
  cr_assert_lt(g.max, 200000000u, "the loop stalled %.0f ms", (double)g.max / 1e6);
  cr_assert_lt(g.over, 300000000u, "the loop stalled %.0f ms in all", (double)g.over / 1e6);
  credis_close(r);
  finish_loop();
}

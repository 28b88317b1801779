/* xmpp-bench internals shared by main.c (CLI, coordinator, child processes, output) and
 * client.c (worker threads: connections, TLS, SASL, scenario traffic). See docs/bench.md. */
#ifndef XMPP_BENCH_H
#define XMPP_BENCH_H

#include <pthread.h>
#include <stdint.h>
#include <uv.h>

#include "bench/hdr.h"

typedef enum { SC_LOGIN, SC_IDLE, SC_CHAT, SC_PRESENCE, SC_STORM } scenario_t;
typedef enum { TLS_NONE, TLS_STARTTLS, TLS_DIRECT } tls_mode_t;
typedef enum { MECH_PLAIN, MECH_SCRAM1, MECH_SCRAM256 } mech_t;

typedef struct bench_opts {
  scenario_t sc;
  const char *scname;
  const char *host;
  int port;
  int ports[64]; /* --port P1,P2,...: several servers (cluster edges) */
  int nports;
  const char *domain;
  tls_mode_t tls;
  mech_t mech;
  int users;
  const char *user_fmt;
  int first;
  const char *password;
  double arrival;
  int concurrency;
  double duration;
  int pairs;
  double rate;
  int window;
  int size;
  int idle_extra;
  int roster;
  int threads;
  int procs;
  const char *src;
  int server_pid;
  int server_pids[64]; /* --server-pid P1,P2,...: figures are summed */
  int nserver_pids;
  const char *json;
  const char *plot;
  const char *label;
  int quiet;
  int allow_errors; /* --allow-errors: errors and losses are reported, the exit status stays 0 */
  const char *resource; /* --resource (default "bench") */
  int priority;         /* --priority; INT_MIN: none */
  int carbons;          /* --carbons: XEP-0280 <enable/> after bind */
  int sm;               /* --sm: XEP-0198 <enable resume='true'/> after bind; storm: <resume/> */
  int tickets;          /* --tickets: storm reconnects resume the TLS session (RFC 8446 §2.2) */
  int fast;             /* --fast: log in with SASL2 (XEP-0388) + Bind2 (XEP-0386), asking for a
                           FAST token (XEP-0484); storm reconnects use the token, XEP-0198
                           resumption inline (with --sm) */
  /* derived */
  uint32_t src_lo, src_hi; /* host byte order */
  int total;               /* connections over all processes */
  int active;              /* connections that send (chat: 2P; presence: users) */
  double login_timeout_s;
} bench_opts_t;

/* Phases, set by a child's main thread (commands from the coordinator). */
enum { PH_LOGIN = 0, PH_RUN = 1, PH_STOP = 2, PH_QUIT = 3 };

#define MAX_FAIL_REASONS 48

typedef struct fail_count {
  char reason[64];
  uint64_t count;
} fail_count_t;

typedef struct conn conn_t;

typedef struct worker {
  int id;
  const bench_opts_t *o;
  uv_loop_t loop;
  uv_thread_t tid;
  uv_async_t async;
  uv_timer_t tick;
  uv_timer_t quit_timer;
  conn_t *conns;
  size_t nconns;
  size_t next_launch;
  int inprog, max_inprog;
  double arrival_rate; /* per thread, 0 = unbounded */
  uint64_t t_start;
  int phase;           /* last phase acted on */
  uint64_t go_ns;
  double send_rate;    /* per thread, open loop */
  uint64_t sched;      /* messages scheduled so far (open loop) */
  size_t rr;
  uint64_t msg_id;
  conn_t *dirty;
  int open_handles;
  /* statistics: counters written by this thread only, read with atomics by the child's
   * main thread; histograms and failures under mu */
  uint64_t st_connected, st_online, st_logins_ok, st_login_failed, st_dropped, st_sent,
      st_delivered, st_errors, st_last_online_ns;
  /* storm: reconnects whose TLS session was resumed, and whose XEP-0198 session was */
  uint64_t st_tls_resumed, st_sm_resumed;
  pthread_mutex_t mu;
  hdr_t lat;
  hdr_t login;
  fail_count_t fails[MAX_FAIL_REASONS];
  int nfails;
  /* SCRAM SaltedPassword cache (populate uses one salt per run) */
  struct {
    int used, hash;
    uint32_t iter;
    unsigned char salt[64];
    size_t salt_len;
    unsigned char salted[32];
  } scache[4];
  char rbuf[65536];
  char pbuf[16384];
} worker_t;

extern volatile int g_phase;
extern volatile uint64_t g_go_ns;

int client_global_init(const bench_opts_t *o, char **err);
void client_global_cleanup(void);
/* Prepares worker w with the global connection numbers gs[0..n). */
void worker_setup(worker_t *w, const bench_opts_t *o, int id, const int *gs, size_t n);
int worker_start(worker_t *w);
void worker_notify(worker_t *w);
void worker_join(worker_t *w);
void worker_free(worker_t *w);

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define BUMP(x) __atomic_store_n(&(x), (x) + 1, __ATOMIC_RELAXED)

#endif

/* xmpp-bench: load harness for XMPP servers (see docs/bench.md).
 *
 * Process model: the process started by the user is the coordinator; it forks --procs
 * children (each holding at most ~9,000 connections, under a 20,000 open-file limit) and
 * runs none itself. Each child runs --threads libuv worker threads (bench/client.c).
 * Children report cumulative counters, failure reasons and histograms (sparse text,
 * bench/hdr.h) on a pipe five times a second; the coordinator merges them, prints progress
 * once a second, drives the phases through a command pipe per child (GO, STOP, QUIT),
 * samples the server's /proc entry, and writes the summary, JSON and plot. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "bench/bench.h"
#include "common/alloc.h"
#include "common/buf.h"

static const char usage_text[] =
    "usage: xmpp-bench SCENARIO [options]     SCENARIO = login | idle | chat | presence | storm\n"
    "  --host 127.0.0.1  --port 5222  --domain localhost\n"
    "  --port P1,P2,...   several servers (cluster edges): pair k = user(2k), user(2k+1) has its\n"
    "                     first user on port (k mod n), its second on the same port when\n"
    "                     (k / n) is even, on the next one when odd: balanced, half the pairs\n"
    "                     cross servers\n"
    "  --tls none|starttls|direct        (default starttls)\n"
    "  --mech PLAIN|SCRAM-SHA-1|SCRAM-SHA-256   (default PLAIN)\n"
    "  --users N          accounts/connections (login, idle, presence); accounts are\n"
    "                     printf(--user-fmt, i) for i in [--first, --first+N)\n"
    "  --user-fmt user%d  --first 1  --password secret\n"
    "  --arrival R        new connections per second (0 = as fast as --concurrency allows)\n"
    "  --concurrency C    max simultaneous in-progress log-ins (default 200)\n"
    "  --duration S       measurement time in seconds (chat/presence/idle hold; default 10)\n"
    "  --pairs P          chat: P pairs, user(2i) <-> user(2i+1) both directions (default 10)\n"
    "  --rate R           chat: total offered messages/s, open loop; 0 = closed loop\n"
    "                     presence: total presence changes/s (default users/10)\n"
    "  --window W         chat closed loop: messages in flight per sender (default 1)\n"
    "  --size B           message body bytes (default 64)\n"
    "  --idle-extra N     chat/presence: also hold N idle sessions (users after the active ones)\n"
    "  --roster K         presence: contacts per user (groups of K+1 consecutive users)\n"
    "  --threads T        event-loop threads per process (default 2)\n"
    "  --procs P          processes (default: each holds <= 9,000 connections)\n"
    "  --src A-B          source address range, e.g. 127.0.0.1-127.0.0.254 (the default)\n"
    "  --server-pid PID[,PID...]  read server RSS and CPU from /proc/PID (summed)\n"
    "  --json FILE  --plot FILE.png  --label NAME  --quiet\n"
    "  --resource R       resource to bind (default bench)\n"
    "  --priority P       priority in the initial presence (default: none, i.e. 0)\n"
    "  --carbons          enable XEP-0280 carbons on every connection (copies received are\n"
    "                     not counted as deliveries)\n"
    "  --sm               enable XEP-0198 stream management with resumption after bind\n"
    "                     (storm: the reconnects resume their sessions with <resume/>)\n"
    "  --tickets          storm: the reconnects resume their TLS sessions (TLS 1.3 tickets)\n"
    "  --fast             log in with SASL2 + Bind2 (PLAIN), asking for a FAST token (XEP-0484);\n"
    "                     storm: the reconnects authenticate with the token (HT-SHA-256-NONE)\n"
    "                     and, with --sm, resume inline in <authenticate/>\n"
    "storm: --users N log in; then every session drops at once (TCP reset) and reconnects at\n"
    "  once; figures: time until all are back, reconnect latency, server CPU per reconnect;\n"
    "  --duration S is the time allowed for all to come back (default 10)\n"
    "  --allow-errors     exit 0 even when log-ins failed, connections dropped, or messages\n"
    "                     bounced, were lost, repeated or unexpected (they are still reported)\n"
    "exit status: 0 when every log-in succeeded, no connection dropped, and (chat, presence)\n"
    "every message sent was delivered exactly once to its recipient with no error; 1 otherwise\n"
    "(unless --allow-errors); 2 for a usage error\n";

/* ---- options -------------------------------------------------------------------------- */

static int ports_ok(const bench_opts_t *o) {
  for (int i = 0; i < o->nports; i++)
    if (o->ports[i] <= 0 || o->ports[i] > 65535) return 0;
  return 1;
}

static int parse_src(bench_opts_t *o, const char *s) {
  char a[64], b[64];
  const char *dash = strchr(s, '-');
  if (dash) {
    snprintf(a, sizeof a, "%.*s", (int)(dash - s), s);
    snprintf(b, sizeof b, "%s", dash + 1);
  } else {
    snprintf(a, sizeof a, "%s", s);
    snprintf(b, sizeof b, "%s", s);
  }
  struct in_addr x, y;
  if (inet_pton(AF_INET, a, &x) != 1 || inet_pton(AF_INET, b, &y) != 1) return -1;
  o->src_lo = ntohl(x.s_addr);
  o->src_hi = ntohl(y.s_addr);
  return o->src_hi >= o->src_lo ? 0 : -1;
}

static int fmt_ok(const char *f) {
  int n = 0;
  for (const char *p = f; *p; p++) {
    if (*p != '%') continue;
    if (p[1] == '%') {
      p++;
      continue;
    }
    const char *q = p + 1;
    while (*q >= '0' && *q <= '9') q++;
    if (*q != 'd' && *q != 'u' && *q != 'i') return 0;
    n++;
    p = q;
  }
  return n == 1;
}

static int parse_opts(int argc, char **argv, bench_opts_t *o) {
  enum {
    O_HOST = 256, O_PORT, O_DOMAIN, O_TLS, O_MECH, O_USERS, O_USERFMT, O_FIRST, O_PASSWORD,
    O_ARRIVAL, O_CONC, O_DURATION, O_PAIRS, O_RATE, O_WINDOW, O_SIZE, O_IDLEX, O_ROSTER,
    O_THREADS, O_PROCS, O_SRC, O_SPID, O_JSON, O_PLOT, O_LABEL, O_QUIET, O_ALLOWERR, O_RESOURCE, O_PRIORITY,
    O_CARBONS, O_SM, O_TICKETS, O_FAST
  };
  static const struct option lo[] = {
      {"host", 1, 0, O_HOST}, {"port", 1, 0, O_PORT}, {"domain", 1, 0, O_DOMAIN},
      {"tls", 1, 0, O_TLS}, {"mech", 1, 0, O_MECH}, {"users", 1, 0, O_USERS},
      {"user-fmt", 1, 0, O_USERFMT}, {"first", 1, 0, O_FIRST}, {"password", 1, 0, O_PASSWORD},
      {"arrival", 1, 0, O_ARRIVAL}, {"concurrency", 1, 0, O_CONC}, {"duration", 1, 0, O_DURATION},
      {"pairs", 1, 0, O_PAIRS}, {"rate", 1, 0, O_RATE}, {"window", 1, 0, O_WINDOW},
      {"size", 1, 0, O_SIZE}, {"idle-extra", 1, 0, O_IDLEX}, {"roster", 1, 0, O_ROSTER},
      {"threads", 1, 0, O_THREADS}, {"procs", 1, 0, O_PROCS}, {"src", 1, 0, O_SRC},
      {"server-pid", 1, 0, O_SPID}, {"json", 1, 0, O_JSON}, {"plot", 1, 0, O_PLOT},
      {"label", 1, 0, O_LABEL}, {"quiet", 0, 0, O_QUIET}, {"resource", 1, 0, O_RESOURCE},
      {"priority", 1, 0, O_PRIORITY}, {"carbons", 0, 0, O_CARBONS}, {"sm", 0, 0, O_SM},
      {"tickets", 0, 0, O_TICKETS}, {"fast", 0, 0, O_FAST},
      {"allow-errors", 0, 0, O_ALLOWERR}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
  memset(o, 0, sizeof *o);
  o->host = "127.0.0.1";
  o->port = 5222;
  o->domain = "localhost";
  o->tls = TLS_STARTTLS;
  o->mech = MECH_PLAIN;
  o->users = 100;
  o->user_fmt = "user%d";
  o->first = 1;
  o->password = "secret";
  o->concurrency = 200;
  o->duration = 10;
  o->pairs = 10;
  o->window = 1;
  o->size = 64;
  o->roster = 10;
  o->threads = 2;
  o->src = "127.0.0.1-127.0.0.254";
  o->label = "";
  o->resource = "bench";
  o->priority = INT_MIN;
  o->login_timeout_s = 30;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (opt) {
    case O_HOST: o->host = optarg; break;
    case O_PORT: {
      o->nports = 0;
      for (char *q = optarg; *q && o->nports < 64;) {
        o->ports[o->nports++] = (int)strtol(q, &q, 10);
        if (*q == ',') q++;
        else break;
      }
      o->port = o->nports ? o->ports[0] : 0;
      break;
    }
    case O_DOMAIN: o->domain = optarg; break;
    case O_TLS:
      if (!strcmp(optarg, "none")) o->tls = TLS_NONE;
      else if (!strcmp(optarg, "starttls")) o->tls = TLS_STARTTLS;
      else if (!strcmp(optarg, "direct")) o->tls = TLS_DIRECT;
      else { fprintf(stderr, "xmpp-bench: --tls none|starttls|direct\n"); return -1; }
      break;
    case O_MECH:
      if (!strcmp(optarg, "PLAIN")) o->mech = MECH_PLAIN;
      else if (!strcmp(optarg, "SCRAM-SHA-1")) o->mech = MECH_SCRAM1;
      else if (!strcmp(optarg, "SCRAM-SHA-256")) o->mech = MECH_SCRAM256;
      else { fprintf(stderr, "xmpp-bench: --mech PLAIN|SCRAM-SHA-1|SCRAM-SHA-256\n"); return -1; }
      break;
    case O_USERS: o->users = atoi(optarg); break;
    case O_USERFMT: o->user_fmt = optarg; break;
    case O_FIRST: o->first = atoi(optarg); break;
    case O_PASSWORD: o->password = optarg; break;
    case O_ARRIVAL: o->arrival = atof(optarg); break;
    case O_CONC: o->concurrency = atoi(optarg); break;
    case O_DURATION: o->duration = atof(optarg); break;
    case O_PAIRS: o->pairs = atoi(optarg); break;
    case O_RATE: o->rate = atof(optarg); break;
    case O_WINDOW: o->window = atoi(optarg); break;
    case O_SIZE: o->size = atoi(optarg); break;
    case O_IDLEX: o->idle_extra = atoi(optarg); break;
    case O_ROSTER: o->roster = atoi(optarg); break;
    case O_THREADS: o->threads = atoi(optarg); break;
    case O_PROCS: o->procs = atoi(optarg); break;
    case O_SRC: o->src = optarg; break;
    case O_SPID: {
      o->nserver_pids = 0;
      for (char *q = optarg; *q && o->nserver_pids < 64;) {
        o->server_pids[o->nserver_pids++] = (int)strtol(q, &q, 10);
        if (*q == ',') q++;
        else break;
      }
      o->server_pid = o->nserver_pids ? o->server_pids[0] : 0;
      break;
    }
    case O_JSON: o->json = optarg; break;
    case O_PLOT: o->plot = optarg; break;
    case O_LABEL: o->label = optarg; break;
    case O_QUIET: o->quiet = 1; break;
    case O_ALLOWERR: o->allow_errors = 1; break;
    case O_RESOURCE: o->resource = optarg; break;
    case O_PRIORITY: o->priority = atoi(optarg); break;
    case O_CARBONS: o->carbons = 1; break;
    case O_SM: o->sm = 1; break;
    case O_TICKETS: o->tickets = 1; break;
    case O_FAST: o->fast = 1; break;
    case 'h': fputs(usage_text, stdout); exit(0);
    default: fputs(usage_text, stderr); return -1;
    }
  }
  if (optind >= argc) {
    fprintf(stderr, "xmpp-bench: no scenario given\n%s", usage_text);
    return -1;
  }
  o->scname = argv[optind];
  if (!strcmp(o->scname, "login")) o->sc = SC_LOGIN;
  else if (!strcmp(o->scname, "idle")) o->sc = SC_IDLE;
  else if (!strcmp(o->scname, "chat")) o->sc = SC_CHAT;
  else if (!strcmp(o->scname, "presence")) o->sc = SC_PRESENCE;
  else if (!strcmp(o->scname, "storm")) o->sc = SC_STORM;
  else {
    fprintf(stderr, "xmpp-bench: unknown scenario '%s'\n", o->scname);
    return -1;
  }
  if (optind + 1 < argc) {
    fprintf(stderr, "xmpp-bench: unexpected argument '%s'\n", argv[optind + 1]);
    return -1;
  }
  if (!fmt_ok(o->user_fmt)) {
    fprintf(stderr, "xmpp-bench: --user-fmt needs exactly one %%d\n");
    return -1;
  }
  if (parse_src(o, o->src) != 0) {
    fprintf(stderr, "xmpp-bench: bad --src range '%s'\n", o->src);
    return -1;
  }
  if (o->users < 1 || o->pairs < 1 || o->threads < 1 || o->threads > 64 || o->concurrency < 1 ||
      o->window < 1 || o->size < 0 || o->size > 65536 || o->idle_extra < 0 || o->roster < 1 ||
      o->duration < 0 || o->procs < 0 || o->port <= 0 || o->port > 65535 || !ports_ok(o)) {
    fprintf(stderr, "xmpp-bench: option out of range\n");
    return -1;
  }
  switch (o->sc) {
  case SC_LOGIN:
  case SC_IDLE:
  case SC_STORM: o->total = o->users; o->active = 0; break;
  case SC_CHAT: o->total = 2 * o->pairs + o->idle_extra; o->active = 2 * o->pairs; break;
  case SC_PRESENCE: o->total = o->users + o->idle_extra; o->active = o->users; break;
  }
  if (o->fast && o->tls == TLS_NONE) {
    fprintf(stderr, "xmpp-bench: --fast needs --tls starttls or direct (SASL2 is offered under TLS only)\n");
    return -1;
  }
  if (o->tickets && o->tls == TLS_NONE) {
    fprintf(stderr, "xmpp-bench: --tickets needs --tls starttls or direct\n");
    return -1;
  }
  if (!o->procs) o->procs = (o->total + 8999) / 9000;
  if (o->procs < 1) o->procs = 1;
  return 0;
}

/* ---- time and /proc ------------------------------------------------------------------- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long proc_rss_kib(int pid) {
  if (pid <= 0) return -1;
  char p[64], line[256];
  snprintf(p, sizeof p, "/proc/%d/status", pid);
  FILE *f = fopen(p, "r");
  if (!f) return -1;
  long v = -1;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "VmRSS:", 6)) v = strtol(line + 6, NULL, 10);
  fclose(f);
  return v;
}

static double proc_cpu_s(int pid) {
  if (pid <= 0) return -1;
  char p[64], buf[1024];
  snprintf(p, sizeof p, "/proc/%d/stat", pid);
  FILE *f = fopen(p, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *s = strrchr(buf, ')');
  if (!s) return -1;
  unsigned long long ut = 0, st = 0;
  /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15) */
  if (sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) return -1;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* --server-pid P1,P2,...: summed over the processes (each must be readable) */
static long srv_rss_kib(const bench_opts_t *o) {
  if (o->nserver_pids <= 1) return o->server_pid > 0 ? proc_rss_kib(o->server_pid) : -1;
  long sum = 0;
  for (int i = 0; i < o->nserver_pids; i++) {
    long v = proc_rss_kib(o->server_pids[i]);
    if (v < 0) return -1;
    sum += v;
  }
  return sum;
}
static double srv_cpu_s(const bench_opts_t *o) {
  if (o->nserver_pids <= 1) return o->server_pid > 0 ? proc_cpu_s(o->server_pid) : -1;
  double sum = 0;
  for (int i = 0; i < o->nserver_pids; i++) {
    double v = proc_cpu_s(o->server_pids[i]);
    if (v < 0) return -1;
    sum += v;
  }
  return sum;
}

/* What the server spent during the measurement window (chat, presence): CPU, context
 * switches summed over its threads (/proc/PID/task/T/status: the process's own status
 * line counts only the main thread) and read-like + write-like system calls
 * (/proc/PID/io syscr, syscw: every thread, dead ones included). epoll_wait is in
 * neither count. */
typedef struct srv_use {
  double cpu;
  uint64_t vcs, ivcs, syscr, syscw;
  int ok;
} srv_use_t;

static int proc_use(int pid, srv_use_t *u) {
  char p[64], line[256];
  double c = proc_cpu_s(pid);
  if (c < 0) return -1;
  u->cpu += c;
  snprintf(p, sizeof p, "/proc/%d/task", pid);
  DIR *d = opendir(p);
  if (!d) return -1;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    snprintf(p, sizeof p, "/proc/%d/task/%.20s/status", pid, e->d_name);
    FILE *f = fopen(p, "r");
    if (!f) continue; /* a thread that just ended */
    while (fgets(line, sizeof line, f)) {
      if (!strncmp(line, "voluntary_ctxt_switches:", 24)) u->vcs += strtoull(line + 24, NULL, 10);
      else if (!strncmp(line, "nonvoluntary_ctxt_switches:", 27)) u->ivcs += strtoull(line + 27, NULL, 10);
    }
    fclose(f);
  }
  closedir(d);
  snprintf(p, sizeof p, "/proc/%d/io", pid);
  FILE *f = fopen(p, "r");
  if (f) {
    while (fgets(line, sizeof line, f)) {
      if (!strncmp(line, "syscr:", 6)) u->syscr += strtoull(line + 6, NULL, 10);
      else if (!strncmp(line, "syscw:", 6)) u->syscw += strtoull(line + 6, NULL, 10);
    }
    fclose(f);
  }
  return 0;
}

static srv_use_t srv_use(const bench_opts_t *o) {
  srv_use_t u = {0};
  u.ok = 1;
  if (o->nserver_pids <= 1) {
    if (o->server_pid <= 0 || proc_use(o->server_pid, &u) != 0) u.ok = 0;
    return u;
  }
  for (int i = 0; i < o->nserver_pids; i++)
    if (proc_use(o->server_pids[i], &u) != 0) u.ok = 0;
  return u;
}

/* ---- child ---------------------------------------------------------------------------- */

typedef struct snap {
  uint64_t online, connected, logins_ok, login_failed, dropped, sent, delivered, errors, last_online_ns;
  long fdlimit;
  uint64_t tls_resumed, sm_resumed; /* storm */
  hdr_t lat, login;
  fail_count_t fails[MAX_FAIL_REASONS];
  int nfails;
} snap_t;

static void write_all(int fd, const void *p, size_t n) {
  const char *s = p;
  while (n) {
    ssize_t k = write(fd, s, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      return;
    }
    s += k;
    n -= (size_t)k;
  }
}

static void child_report(int fd, worker_t *ws, int nw, long fdlimit, snap_t *tmp) {
  memset(tmp, 0, offsetof(snap_t, lat));
  hdr_init(&tmp->lat);
  hdr_init(&tmp->login);
  tmp->nfails = 0;
  for (int i = 0; i < nw; i++) {
    worker_t *w = &ws[i];
    tmp->online += LOAD(w->st_online);
    tmp->connected += LOAD(w->st_connected);
    tmp->logins_ok += LOAD(w->st_logins_ok);
    tmp->login_failed += LOAD(w->st_login_failed);
    tmp->dropped += LOAD(w->st_dropped);
    tmp->sent += LOAD(w->st_sent);
    tmp->delivered += LOAD(w->st_delivered);
    tmp->errors += LOAD(w->st_errors);
    tmp->tls_resumed += LOAD(w->st_tls_resumed);
    tmp->sm_resumed += LOAD(w->st_sm_resumed);
    uint64_t lo = LOAD(w->st_last_online_ns);
    if (lo > tmp->last_online_ns) tmp->last_online_ns = lo;
    pthread_mutex_lock(&w->mu);
    hdr_merge(&tmp->lat, &w->lat);
    hdr_merge(&tmp->login, &w->login);
    for (int k = 0; k < w->nfails; k++) {
      int j;
      for (j = 0; j < tmp->nfails; j++)
        if (!strcmp(tmp->fails[j].reason, w->fails[k].reason)) break;
      if (j == tmp->nfails && tmp->nfails < MAX_FAIL_REASONS) tmp->fails[tmp->nfails++] = w->fails[k];
      else if (j < tmp->nfails) tmp->fails[j].count += w->fails[k].count;
    }
    pthread_mutex_unlock(&w->mu);
  }
  buf_t b;
  buf_init(&b);
  buf_printf(&b, "S %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
                 " %" PRIu64 " %" PRIu64 " %ld %" PRIu64 " %" PRIu64 "\n",
             tmp->online, tmp->connected, tmp->logins_ok, tmp->login_failed, tmp->dropped, tmp->sent,
             tmp->delivered, tmp->errors, tmp->last_online_ns, fdlimit, tmp->tls_resumed, tmp->sm_resumed);
  for (int j = 0; j < tmp->nfails; j++)
    buf_printf(&b, "F %s %" PRIu64 "\n", tmp->fails[j].reason, tmp->fails[j].count);
  buf_puts(&b, "HL ");
  hdr_encode(&tmp->lat, &b);
  buf_puts(&b, "\nHG ");
  hdr_encode(&tmp->login, &b);
  buf_puts(&b, "\nE\n");
  write_all(fd, b.data, b.len);
  buf_free(&b);
}

static int child_main(bench_opts_t *o, int proc, int ctl, int rep) {
  signal(SIGINT, SIG_IGN); /* the coordinator handles Ctrl-C and tells us to quit */
  struct rlimit rl;
  long fdlimit = -1;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) fdlimit = (long)rl.rlim_cur;
  }
  int nw = o->threads;
  int **lists = xcalloc((size_t)nw, sizeof *lists);
  size_t *counts = xcalloc((size_t)nw, sizeof *counts);
  for (int pass = 0; pass < 2; pass++) {
    for (int g = 0; g < o->total; g++) {
      int u = g / 2;
      if (u % o->procs != proc) continue;
      int t = (u / o->procs) % nw;
      if (pass) lists[t][counts[t]++] = g;
      else counts[t]++;
    }
    if (!pass)
      for (int t = 0; t < nw; t++) {
        lists[t] = xcalloc(counts[t] + 1, sizeof **lists);
        counts[t] = 0;
      }
  }
  char *err = NULL;
  if (client_global_init(o, &err) != 0) {
    fprintf(stderr, "xmpp-bench: %s\n", err);
    return 1;
  }
  worker_t *ws = xcalloc((size_t)nw, sizeof *ws);
  for (int t = 0; t < nw; t++) {
    worker_setup(&ws[t], o, t, lists[t], counts[t]);
    if (worker_start(&ws[t]) != 0) {
      fprintf(stderr, "xmpp-bench: cannot start a worker thread\n");
      return 1;
    }
  }
  snap_t *tmp = xmalloc(sizeof *tmp);
  char cbuf[256];
  size_t clen = 0;
  int quit = 0;
  while (!quit) {
    struct pollfd pf = {.fd = ctl, .events = POLLIN};
    int r = poll(&pf, 1, 200);
    if (r > 0) {
      ssize_t k = read(ctl, cbuf + clen, sizeof cbuf - 1 - clen);
      if (k <= 0) {
        quit = 1; /* coordinator gone */
      } else {
        clen += (size_t)k;
        cbuf[clen] = 0;
        char *nl;
        while ((nl = strchr(cbuf, '\n'))) {
          *nl = 0;
          int ph = -1;
          if (!strcmp(cbuf, "GO")) {
            g_go_ns = uv_hrtime();
            ph = PH_RUN;
          } else if (!strcmp(cbuf, "STOP")) {
            ph = PH_STOP;
          } else if (!strcmp(cbuf, "QUIT")) {
            ph = PH_QUIT;
            quit = 1;
          }
          if (ph > g_phase) {
            __atomic_store_n(&g_phase, ph, __ATOMIC_SEQ_CST);
            for (int t = 0; t < nw; t++) worker_notify(&ws[t]);
          }
          size_t used = (size_t)(nl - cbuf) + 1;
          memmove(cbuf, nl + 1, clen - used + 1);
          clen -= used;
        }
      }
    }
    child_report(rep, ws, nw, fdlimit, tmp);
  }
  if (g_phase < PH_QUIT) {
    __atomic_store_n(&g_phase, PH_QUIT, __ATOMIC_SEQ_CST);
    for (int t = 0; t < nw; t++) worker_notify(&ws[t]);
  }
  for (int t = 0; t < nw; t++) worker_join(&ws[t]);
  child_report(rep, ws, nw, fdlimit, tmp);
  write_all(rep, "X\n", 2);
  for (int t = 0; t < nw; t++) {
    worker_free(&ws[t]);
    xfree(lists[t]);
  }
  xfree(ws);
  xfree(lists);
  xfree(counts);
  xfree(tmp);
  client_global_cleanup();
  return 0;
}

/* ---- coordinator ---------------------------------------------------------------------- */

typedef struct child {
  pid_t pid;
  int ctl, rep;
  buf_t lb;
  snap_t cur, stage;
  int have, done;
} child_t;

static volatile sig_atomic_t g_interrupted;
static void on_sigint(int s) { g_interrupted = 1; }

static void child_line(child_t *c, char *line) {
  snap_t *s = &c->stage;
  if (line[0] == 'S' && line[1] == ' ') {
    memset(s, 0, offsetof(snap_t, lat));
    hdr_init(&s->lat);
    hdr_init(&s->login);
    s->nfails = 0;
    sscanf(line + 2, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
                     " %" SCNu64 " %" SCNu64 " %ld %" SCNu64 " %" SCNu64,
           &s->online, &s->connected, &s->logins_ok, &s->login_failed, &s->dropped, &s->sent,
           &s->delivered, &s->errors, &s->last_online_ns, &s->fdlimit, &s->tls_resumed, &s->sm_resumed);
  } else if (line[0] == 'F' && line[1] == ' ' && s->nfails < MAX_FAIL_REASONS) {
    char *sp = strrchr(line, ' ');
    if (sp && sp > line + 1) {
      *sp = 0;
      snprintf(s->fails[s->nfails].reason, sizeof s->fails[0].reason, "%s", line + 2);
      s->fails[s->nfails++].count = strtoull(sp + 1, NULL, 10);
    }
  } else if (line[0] == 'H' && line[1] == 'L') {
    hdr_decode_add(&s->lat, line + 3);
  } else if (line[0] == 'H' && line[1] == 'G') {
    hdr_decode_add(&s->login, line + 3);
  } else if (line[0] == 'E') {
    c->cur = *s;
    c->have = 1;
  } else if (line[0] == 'X') {
    c->done = 1;
  }
}

static void child_read(child_t *c) {
  char tmp[65536];
  ssize_t k = read(c->rep, tmp, sizeof tmp);
  if (k <= 0) {
    c->done = 1;
    return;
  }
  buf_append(&c->lb, tmp, (size_t)k);
  size_t start = 0;
  for (size_t i = 0; i < c->lb.len; i++) {
    if (c->lb.data[i] == '\n') {
      c->lb.data[i] = 0;
      child_line(c, (char *)c->lb.data + start);
      start = i + 1;
    }
  }
  buf_consume(&c->lb, start);
}

static void aggregate(child_t *cs, int n, snap_t *a) {
  memset(a, 0, offsetof(snap_t, lat));
  hdr_init(&a->lat);
  hdr_init(&a->login);
  a->nfails = 0;
  a->fdlimit = -1;
  for (int i = 0; i < n; i++) {
    snap_t *s = &cs[i].cur;
    if (!cs[i].have) continue;
    a->online += s->online;
    a->connected += s->connected;
    a->logins_ok += s->logins_ok;
    a->login_failed += s->login_failed;
    a->dropped += s->dropped;
    a->sent += s->sent;
    a->delivered += s->delivered;
    a->errors += s->errors;
    a->tls_resumed += s->tls_resumed;
    a->sm_resumed += s->sm_resumed;
    if (s->last_online_ns > a->last_online_ns) a->last_online_ns = s->last_online_ns;
    if (a->fdlimit < 0 || s->fdlimit < a->fdlimit) a->fdlimit = s->fdlimit;
    hdr_merge(&a->lat, &s->lat);
    hdr_merge(&a->login, &s->login);
    for (int k = 0; k < s->nfails; k++) {
      int j;
      for (j = 0; j < a->nfails; j++)
        if (!strcmp(a->fails[j].reason, s->fails[k].reason)) break;
      if (j == a->nfails && a->nfails < MAX_FAIL_REASONS) a->fails[a->nfails++] = s->fails[k];
      else if (j < a->nfails) a->fails[j].count += s->fails[k].count;
    }
  }
}

static void send_all(child_t *cs, int n, const char *cmd) {
  for (int i = 0; i < n; i++)
    if (!cs[i].done) write_all(cs[i].ctl, cmd, strlen(cmd));
}

typedef struct tl_point {
  double t, delivered_per_s, logins_per_s, p50, p99;
  uint64_t online;
} tl_point_t;

typedef struct results {
  double t_login_done, time_to_all;
  double srv_cpu0, srv_cpu_login, srv_cpu_end;
  long rss_before, rss_after, rss_max;
  double idle_cpu_pct;
  double go_t, stop_t;
  uint64_t delivered_at_stop, sent_at_stop;
  srv_use_t use_go, use_stop; /* the server's use at GO and at STOP (the run window) */
  double bench_cpu;
  long bench_rss_max; /* sum over the children, sampled once a second */
  /* storm: sessions dropped at GO, log-in failures before it, server CPU at GO and when
   * all were back (or the time ran out), seconds from GO to the last one back */
  uint64_t storm_n, failed_at_go;
  double srv_cpu_go, srv_cpu_storm, storm_back_s;
} results_t;

static double ms(uint64_t us) { return (double)us / 1000.0; }

/* Per delivery during the run window: the server's CPU (us), context switches (voluntary,
 * involuntary) and read + write system calls. 0 when not measured. */
typedef struct per_msg {
  double cpu_us, vcs, ivcs, sys;
  int ok;
} per_msg_t;

static per_msg_t run_per_msg(const results_t *r) {
  per_msg_t p = {0};
  const srv_use_t *a = &r->use_go, *b = &r->use_stop;
  if (!a->ok || !b->ok || !r->delivered_at_stop) return p;
  double n = (double)r->delivered_at_stop;
  p.cpu_us = (b->cpu - a->cpu) * 1e6 / n;
  p.vcs = (double)(b->vcs - a->vcs) / n;
  p.ivcs = (double)(b->ivcs - a->ivcs) / n;
  p.sys = (double)(b->syscr + b->syscw - a->syscr - a->syscw) / n;
  p.ok = 1;
  return p;
}

/* Deliveries a clean run has: chat one per message sent, presence one per contact per
 * change (every contact is online), none in the other scenarios. */
static uint64_t expected_deliveries(const bench_opts_t *o, const snap_t *a) {
  return o->sc == SC_CHAT ? a->sent : o->sc == SC_PRESENCE ? a->sent * (uint64_t)o->roster : 0;
}

/* storm: sessions dropped that were not back (a failed reconnect is also a failed log-in) */
static uint64_t storm_missing(const results_t *r, const snap_t *a) {
  return r->storm_n > a->delivered ? r->storm_n - a->delivered : 0;
}

/* Messages never delivered (or, presence, deliveries beyond one per contact). */
static uint64_t lost_deliveries(const bench_opts_t *o, const snap_t *a) {
  if (o->sc == SC_STORM) return 0; /* its "deliveries" are reconnects: storm_missing */
  uint64_t e = expected_deliveries(o, a);
  return e > a->delivered ? e - a->delivered : a->delivered - e;
}

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
    else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
    else fputc(*s, f);
  }
  fputc('"', f);
}

static const char *tls_name(tls_mode_t t) {
  return t == TLS_NONE ? "none" : t == TLS_DIRECT ? "direct" : "starttls";
}
static const char *mech_name(mech_t m) {
  return m == MECH_SCRAM1 ? "SCRAM-SHA-1" : m == MECH_SCRAM256 ? "SCRAM-SHA-256" : "PLAIN";
}

static void json_lat(FILE *f, const char *key, const hdr_t *h) {
  fprintf(f, "\"%s\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f,\"mean\":%.3f,\"count\":%" PRIu64 "}",
          key, ms(hdr_percentile(h, 50)), ms(hdr_percentile(h, 90)), ms(hdr_percentile(h, 99)),
          ms(hdr_percentile(h, 99.9)), ms(h->max), hdr_mean(h) / 1000.0, h->total);
}

static int write_json(const bench_opts_t *o, const snap_t *a, const results_t *r, const tl_point_t *tl,
                      size_t ntl) {
  FILE *f = fopen(o->json, "w");
  if (!f) {
    fprintf(stderr, "xmpp-bench: cannot write %s: %s\n", o->json, strerror(errno));
    return -1;
  }
  fprintf(f, "{\"scenario\":");
  json_str(f, o->scname);
  fprintf(f, ",\"label\":");
  json_str(f, o->label);
  fprintf(f, ",\"params\":{\"host\":");
  json_str(f, o->host);
  fprintf(f, ",\"port\":%d,\"domain\":", o->port);
  json_str(f, o->domain);
  fprintf(f, ",\"tls\":\"%s\",\"mech\":\"%s\",\"users\":%d,\"user_fmt\":", tls_name(o->tls), mech_name(o->mech),
          o->users);
  json_str(f, o->user_fmt);
  fprintf(f, ",\"first\":%d,\"arrival\":%g,\"concurrency\":%d,\"duration\":%g,\"pairs\":%d,\"rate\":%g,"
             "\"window\":%d,\"size\":%d,\"idle_extra\":%d,\"roster\":%d,\"threads\":%d,\"procs\":%d,\"src\":",
          o->first, o->arrival, o->concurrency, o->duration, o->pairs, o->rate, o->window, o->size,
          o->idle_extra, o->roster, o->threads, o->procs);
  json_str(f, o->src);
  fprintf(f, ",\"server_pid\":%d,\"connections\":%d},\"results\":{", o->server_pid, o->total);
  /* log-in figures apply to every scenario (everything starts by logging in) */
  fprintf(f, "\"logins_ok\":%" PRIu64 ",\"logins_failed\":%" PRIu64 ",\"dropped\":%" PRIu64 ",\"failures\":{",
          a->logins_ok, a->login_failed, a->dropped);
  for (int i = 0; i < a->nfails; i++) {
    if (i) fputc(',', f);
    json_str(f, a->fails[i].reason);
    fprintf(f, ":%" PRIu64, a->fails[i].count);
  }
  fprintf(f, "},\"logins_per_s\":%.2f,\"time_to_all_s\":%.3f,", r->time_to_all > 0 ? a->logins_ok / r->time_to_all : 0,
          r->time_to_all);
  if (o->server_pid > 0 && r->srv_cpu0 >= 0 && a->logins_ok)
    fprintf(f, "\"server_cpu_ms_per_login\":%.3f,", (r->srv_cpu_login - r->srv_cpu0) * 1000.0 / (double)a->logins_ok);
  json_lat(f, "login_latency_ms", &a->login);
  if (o->sc == SC_IDLE) {
    fprintf(f, ",\"sessions\":%" PRIu64, a->logins_ok);
    if (o->server_pid > 0)
      fprintf(f, ",\"server_rss_kib_before\":%ld,\"server_rss_kib_after\":%ld,\"rss_kib_per_session\":%.2f,"
                 "\"server_cpu_pct_idle\":%.3f",
              r->rss_before, r->rss_after,
              a->logins_ok ? (double)(r->rss_after - r->rss_before) / (double)a->logins_ok : 0.0,
              r->idle_cpu_pct);
  }
  if (o->sc == SC_CHAT || o->sc == SC_PRESENCE) {
    double win = r->stop_t - r->go_t;
    double dps = win > 0 ? (double)r->delivered_at_stop / win : 0;
    fprintf(f, ",\"sessions\":%" PRIu64 ",\"mode\":\"%s\",\"offered_rate\":%g,\"sent\":%" PRIu64 ",\"delivered\":%" PRIu64
               ",\"errors\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"delivered_per_s\":%.2f,\"measured_s\":%.3f,",
            a->logins_ok, o->sc == SC_PRESENCE || o->rate > 0 ? "open" : "closed",
            o->sc == SC_PRESENCE ? (o->rate > 0 ? o->rate : o->users / 10.0) : o->rate, a->sent, a->delivered,
            a->errors, lost_deliveries(o, a), dps, win);
    if (o->sc == SC_PRESENCE)
      fprintf(f, "\"presence_sent_per_s\":%.2f,\"presence_delivered_per_s\":%.2f,\"expected_deliveries\":%" PRIu64 ",",
              win > 0 ? (double)r->sent_at_stop / win : 0, dps, a->sent * (uint64_t)o->roster);
    json_lat(f, "latency_ms", &a->lat);
    per_msg_t pm = run_per_msg(r);
    if (pm.ok)
      fprintf(f, ",\"run_server_cpu_us_per_msg\":%.3f,\"run_server_cs_per_msg\":%.3f,\"run_server_vcs_per_msg\":%.3f,"
                 "\"run_server_ivcs_per_msg\":%.3f,\"run_server_rw_syscalls_per_msg\":%.3f",
              pm.cpu_us, pm.vcs + pm.ivcs, pm.vcs, pm.ivcs, pm.sys);
  }
  if (o->sc == SC_STORM) {
    fprintf(f, ",\"storm\":{\"fast\":%s,\"sm\":%s,\"tickets\":%s,\"dropped\":%" PRIu64 ",\"back\":%" PRIu64
               ",\"missing\":%" PRIu64 ",\"tls_resumed\":%" PRIu64 ",\"sm_resumed\":%" PRIu64
               ",\"time_to_all_back_s\":%.3f,",
            o->fast ? "true" : "false", o->sm ? "true" : "false", o->tickets ? "true" : "false", r->storm_n, a->delivered,
            storm_missing(r, a), a->tls_resumed, a->sm_resumed, r->storm_back_s);
    if (o->server_pid > 0 && r->srv_cpu_go >= 0 && a->delivered)
      fprintf(f, "\"server_cpu_ms_per_reconnect\":%.4f,",
              (r->srv_cpu_storm - r->srv_cpu_go) * 1000.0 / (double)a->delivered);
    json_lat(f, "reconnect_latency_ms", &a->lat);
    fputc('}', f);
  }
  fprintf(f, "},\"server\":{\"pid\":%d,\"cpu_s\":%.3f,\"rss_kib_max\":%ld}", o->server_pid,
          o->server_pid > 0 && r->srv_cpu0 >= 0 ? r->srv_cpu_end - r->srv_cpu0 : 0.0, r->rss_max);
  fprintf(f, ",\"bench\":{\"cpu_s\":%.3f,\"procs\":%d,\"threads\":%d,\"fd_limit\":%ld,\"rss_kib_max\":%ld}",
          r->bench_cpu, o->procs, o->threads, a->fdlimit, r->bench_rss_max);
  fprintf(f, ",\"timeline\":[");
  for (size_t i = 0; i < ntl; i++)
    fprintf(f, "%s{\"t\":%.1f,\"delivered_per_s\":%.1f,\"logins_per_s\":%.1f,\"p50\":%.3f,\"p99\":%.3f,\"online\":%" PRIu64 "}",
            i ? "," : "", tl[i].t, tl[i].delivered_per_s, tl[i].logins_per_s, tl[i].p50, tl[i].p99, tl[i].online);
  fprintf(f, "]}\n");
  return fclose(f) == 0 ? 0 : -1;
}

static int write_plot(const bench_opts_t *o, const tl_point_t *tl, size_t ntl) {
  char data[] = "/tmp/xmpp-bench-plot.XXXXXX";
  int fd = mkstemp(data);
  if (fd < 0) return -1;
  FILE *d = fdopen(fd, "w");
  for (size_t i = 0; i < ntl; i++)
    fprintf(d, "%.1f %.1f %.1f %.3f %.3f %" PRIu64 "\n", tl[i].t, tl[i].delivered_per_s, tl[i].logins_per_s,
            tl[i].p50, tl[i].p99, tl[i].online);
  fclose(d);
  FILE *g = popen("gnuplot", "w");
  if (!g) {
    unlink(data);
    return -1;
  }
  int lat_is_login = o->sc == SC_LOGIN || o->sc == SC_IDLE;
  fprintf(g, "set terminal png size 1000,600\nset output '%s'\n", o->plot);
  fprintf(g, "set title 'xmpp-bench %s %s'\nset xlabel 'time (s)'\nset grid\nset key outside bottom center horizontal\n",
          o->scname, o->label);
  fprintf(g, "set ylabel '%s'\nset y2label '%s latency (ms)'\nset y2tics\nset ytics nomirror\nset yrange [0:*]\nset y2range [0:*]\n",
          lat_is_login ? "log-ins/s, sessions online" : "delivered/s", lat_is_login ? "log-in" : "delivery");
  if (lat_is_login)
    fprintf(g, "plot '%s' u 1:3 w l lw 2 t 'log-ins/s' axes x1y1, '' u 1:6 w l lw 2 t 'online' axes x1y1, "
               "'' u 1:4 w l t 'p50' axes x1y2, '' u 1:5 w l t 'p99' axes x1y2\n", data);
  else
    fprintf(g, "plot '%s' u 1:2 w l lw 2 t 'delivered/s' axes x1y1, '' u 1:4 w l t 'p50' axes x1y2, "
               "'' u 1:5 w l t 'p99' axes x1y2\n", data);
  int rc = pclose(g);
  unlink(data);
  return rc == 0 ? 0 : -1;
}

static int coordinator(bench_opts_t *o) {
  int n = o->procs;
  child_t *cs = xcalloc((size_t)n, sizeof *cs);
  results_t r;
  memset(&r, 0, sizeof r);
  r.srv_cpu0 = srv_cpu_s(o);
  r.rss_before = srv_rss_kib(o);
  r.rss_max = r.rss_before;
  double t0 = now_s();
  fflush(stdout);
  fflush(stderr);
  for (int i = 0; i < n; i++) {
    int c2[2], r2[2];
    if (pipe(c2) != 0 || pipe(r2) != 0) {
      perror("xmpp-bench: pipe");
      return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
      perror("xmpp-bench: fork");
      return 1;
    }
    if (pid == 0) {
      for (int j = 0; j < i; j++) {
        close(cs[j].ctl);
        close(cs[j].rep);
      }
      close(c2[1]);
      close(r2[0]);
      exit(child_main(o, i, c2[0], r2[1]));
    }
    close(c2[0]);
    close(r2[1]);
    cs[i].pid = pid;
    cs[i].ctl = c2[1];
    cs[i].rep = r2[0];
    buf_init(&cs[i].lb);
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGINT, on_sigint);
  enum { P_LOGIN, P_SETTLE, P_HOLD, P_RUN, P_DRAIN, P_QUIT } ph = P_LOGIN;
  double phase_t = t0, next_tick = t0 + 1, quit_t = 0;
  snap_t *a = xmalloc(sizeof *a), *prev = xmalloc(sizeof *prev);
  aggregate(cs, n, prev);
  hdr_t *iv = xmalloc(sizeof *iv);
  tl_point_t *tl = NULL;
  size_t ntl = 0, captl = 0;
  double prev_t = t0;
  int setup_failed = 0;
  for (;;) {
    struct pollfd pf[n];
    int np = 0;
    for (int i = 0; i < n; i++)
      if (!cs[i].done) pf[np++] = (struct pollfd){.fd = cs[i].rep, .events = POLLIN};
    if (!np) break;
    poll(pf, (nfds_t)np, 100);
    for (int i = 0, k = 0; i < n; i++) {
      if (cs[i].done) continue;
      if (pf[k].revents) child_read(&cs[i]);
      k++;
    }
    double t = now_s();
    aggregate(cs, n, a);
    if (g_interrupted && ph != P_QUIT) {
      if (ph == P_RUN) {
        r.stop_t = t;
        r.delivered_at_stop = a->delivered;
        r.sent_at_stop = a->sent;
      }
      send_all(cs, n, "QUIT\n");
      ph = P_QUIT;
      quit_t = t;
    }
    if (ph != P_QUIT) {
      for (int i = 0; i < n; i++)
        if (cs[i].done) { /* a child died early: no way to finish the run */
          fprintf(stderr, "xmpp-bench: child process %d exited early\n", (int)cs[i].pid);
          setup_failed = 1;
          send_all(cs, n, "QUIT\n");
          ph = P_QUIT;
          quit_t = t;
          break;
        }
    }
    int all_in = a->logins_ok + a->login_failed >= (uint64_t)o->total;
    switch (ph) {
    case P_LOGIN:
      if (all_in) {
        r.t_login_done = t;
        r.time_to_all = a->last_online_ns ? (double)a->last_online_ns / 1e9 - t0 : t - t0;
        if (a->login_failed) r.time_to_all = t - t0 > r.time_to_all ? r.time_to_all : t - t0;
        r.srv_cpu_login = srv_cpu_s(o);
        if (!a->logins_ok) setup_failed = 1;
        if (o->sc == SC_LOGIN || !a->logins_ok) {
          send_all(cs, n, "QUIT\n");
          ph = P_QUIT;
          quit_t = t;
        } else {
          ph = P_SETTLE;
          phase_t = t;
        }
      }
      break;
    case P_SETTLE:
      if (t - phase_t >= (o->sc == SC_IDLE ? 2.0 : o->sc == SC_CHAT ? 0.5 : 1.0)) {
        if (o->sc == SC_IDLE) {
          r.idle_cpu_pct = srv_cpu_s(o);
          ph = P_HOLD;
        } else {
          if (o->sc == SC_STORM) {
            r.storm_n = a->online;
            r.failed_at_go = a->login_failed;
            r.srv_cpu_go = srv_cpu_s(o);
          }
          r.use_go = srv_use(o);
          send_all(cs, n, "GO\n");
          r.go_t = t;
          ph = P_RUN;
        }
        phase_t = t;
      }
      break;
    case P_HOLD:
      if (t - phase_t >= o->duration) {
        /* RSS at the end of the hold: the steady state of idle sessions, after whatever
         * a server frees once its sessions go quiet (and the allocator returns) */
        r.rss_after = srv_rss_kib(o);
        double c1 = srv_cpu_s(o);
        r.idle_cpu_pct = t > phase_t ? (c1 - r.idle_cpu_pct) / (t - phase_t) * 100.0 : 0;
        send_all(cs, n, "QUIT\n");
        ph = P_QUIT;
        quit_t = t;
      }
      break;
    case P_RUN:
      if (o->sc == SC_STORM) {
        /* every dropped session back (or its reconnect failed), or the time is up */
        if ((a->delivered + (a->login_failed - r.failed_at_go) >= r.storm_n && a->sent >= r.storm_n) ||
            t - phase_t >= o->duration) {
          r.srv_cpu_storm = srv_cpu_s(o);
          r.stop_t = t;
          r.storm_back_s = a->last_online_ns && !storm_missing(&r, a) ? (double)a->last_online_ns / 1e9 - r.go_t
                                                                       : t - r.go_t;
          send_all(cs, n, "QUIT\n");
          ph = P_QUIT;
          quit_t = t;
        }
        break;
      }
      if (t - phase_t >= o->duration) {
        send_all(cs, n, "STOP\n");
        r.use_stop = srv_use(o);
        r.stop_t = t;
        r.delivered_at_stop = a->delivered;
        r.sent_at_stop = a->sent;
        ph = P_DRAIN;
        phase_t = t;
      }
      break;
    case P_DRAIN: {
      /* every message answered: delivered, or bounced back as an error */
      if ((a->delivered + a->errors >= expected_deliveries(o, a) && t - phase_t > 0.3) || t - phase_t >= 5.0) {
        send_all(cs, n, "QUIT\n");
        ph = P_QUIT;
        quit_t = t;
      }
      break;
    }
    case P_QUIT:
      if (t - quit_t > 15) {
        for (int i = 0; i < n; i++)
          if (!cs[i].done) kill(cs[i].pid, SIGKILL);
      }
      break;
    }
    if (t >= next_tick) {
      next_tick += 1;
      long rss = srv_rss_kib(o);
      if (rss > r.rss_max) r.rss_max = rss;
      long brss = 0;
      for (int i = 0; i < n; i++)
        if (!cs[i].done) brss += proc_rss_kib(cs[i].pid) > 0 ? proc_rss_kib(cs[i].pid) : 0;
      if (brss > r.bench_rss_max) r.bench_rss_max = brss;
      double dt = t - prev_t;
      hdr_diff(iv, o->sc == SC_CHAT || o->sc == SC_PRESENCE ? &a->lat : &a->login,
               o->sc == SC_CHAT || o->sc == SC_PRESENCE ? &prev->lat : &prev->login);
      tl_point_t p = {.t = t - t0,
                      .delivered_per_s = dt > 0 ? (double)(a->delivered - prev->delivered) / dt : 0,
                      .logins_per_s = dt > 0 ? (double)(a->logins_ok - prev->logins_ok) / dt : 0,
                      .p50 = ms(hdr_percentile(iv, 50)),
                      .p99 = ms(hdr_percentile(iv, 99)),
                      .online = a->online};
      if (ntl == captl) {
        captl = captl ? 2 * captl : 64;
        tl = xrealloc(tl, captl * sizeof *tl);
      }
      tl[ntl++] = p;
      if (!o->quiet) {
        const hdr_t *h = o->sc == SC_CHAT || o->sc == SC_PRESENCE ? &a->lat : &a->login;
        fprintf(stderr,
                "[%5.1fs] connected %" PRIu64 " online %" PRIu64 " failed %" PRIu64 " | log-ins/s %.0f"
                " | msgs/s %.0f sent %" PRIu64 " delivered %" PRIu64 " | p99 %.2f ms (so far %.2f ms)\n",
                p.t, a->connected, a->online, a->login_failed + a->dropped, p.logins_per_s, p.delivered_per_s,
                a->sent, a->delivered, p.p99, ms(hdr_percentile(h, 99)));
      }
      snap_t *sw = prev;
      prev = a;
      a = sw;
      prev_t = t;
    }
  }
  for (int i = 0; i < n; i++) {
    int st;
    waitpid(cs[i].pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) setup_failed = 1;
    close(cs[i].ctl);
    close(cs[i].rep);
    buf_free(&cs[i].lb);
  }
  aggregate(cs, n, a);
  r.srv_cpu_end = srv_cpu_s(o);
  if (!r.t_login_done) {
    r.srv_cpu_login = r.srv_cpu_end;
    r.time_to_all = now_s() - t0;
  }
  struct rusage ru_self, ru_kids;
  getrusage(RUSAGE_SELF, &ru_self);
  getrusage(RUSAGE_CHILDREN, &ru_kids);
  r.bench_cpu = (double)ru_self.ru_utime.tv_sec + (double)ru_self.ru_utime.tv_usec / 1e6 +
                (double)ru_self.ru_stime.tv_sec + (double)ru_self.ru_stime.tv_usec / 1e6 +
                (double)ru_kids.ru_utime.tv_sec + (double)ru_kids.ru_utime.tv_usec / 1e6 +
                (double)ru_kids.ru_stime.tv_sec + (double)ru_kids.ru_stime.tv_usec / 1e6;
  double wall = now_s() - t0;

  /* human summary */
  printf("xmpp-bench %s%s%s: %d connection(s), tls %s, %s, %d proc(s) x %d thread(s), fd limit %ld\n",
         o->scname, *o->label ? " " : "", o->label, o->total, tls_name(o->tls), mech_name(o->mech), o->procs,
         o->threads, a->fdlimit);
  printf("  log-ins: %" PRIu64 " ok, %" PRIu64 " failed, all in %.2f s (%.1f/s); log-in latency p50 %.1f p99 %.1f max %.1f ms\n",
         a->logins_ok, a->login_failed, r.time_to_all, r.time_to_all > 0 ? a->logins_ok / r.time_to_all : 0,
         ms(hdr_percentile(&a->login, 50)), ms(hdr_percentile(&a->login, 99)), ms(a->login.max));
  for (int i = 0; i < a->nfails; i++) printf("  failure %-32s %" PRIu64 "\n", a->fails[i].reason, a->fails[i].count);
  if (o->server_pid > 0 && a->logins_ok)
    printf("  server CPU per log-in: %.3f ms\n", (r.srv_cpu_login - r.srv_cpu0) * 1000.0 / (double)a->logins_ok);
  if (o->sc == SC_IDLE && o->server_pid > 0)
    printf("  sessions %" PRIu64 ": server RSS %ld -> %ld KiB, %.2f KiB/session; server CPU while idle %.2f %%\n",
           a->logins_ok, r.rss_before, r.rss_after,
           a->logins_ok ? (double)(r.rss_after - r.rss_before) / (double)a->logins_ok : 0.0, r.idle_cpu_pct);
  if (o->sc == SC_CHAT || o->sc == SC_PRESENCE) {
    double win = r.stop_t - r.go_t;
    printf("  %s loop%s: sent %" PRIu64 ", delivered %" PRIu64 " (%.0f/s over %.2f s)\n",
           o->sc == SC_PRESENCE || o->rate > 0 ? "open" : "closed",
           o->sc == SC_CHAT && o->rate <= 0 ? "" : " (latency from intended send time)", a->sent, a->delivered,
           win > 0 ? r.delivered_at_stop / win : 0, win);
    printf("  latency ms: p50 %.3f p90 %.3f p99 %.3f p99.9 %.3f max %.3f\n", ms(hdr_percentile(&a->lat, 50)),
           ms(hdr_percentile(&a->lat, 90)), ms(hdr_percentile(&a->lat, 99)), ms(hdr_percentile(&a->lat, 99.9)),
           ms(a->lat.max));
    per_msg_t pm = run_per_msg(&r);
    if (pm.ok)
      printf("  server per delivery during the run: CPU %.1f us, context switches %.2f (%.2f voluntary, %.2f not),"
             " read+write syscalls %.2f\n", pm.cpu_us, pm.vcs + pm.ivcs, pm.vcs, pm.ivcs, pm.sys);
  }
  if (o->sc == SC_STORM) {
    printf("  storm (%s, %s, %s): %" PRIu64 " session(s) dropped at once, %" PRIu64 " back in %.2f s"
           ", %" PRIu64 " missing; TLS resumed %" PRIu64 ", XEP-0198 resumed %" PRIu64 "\n",
           o->tickets ? "TLS tickets" : "full TLS handshakes", o->fast ? "SASL2 FAST" : mech_name(o->mech),
           o->sm ? "XEP-0198 resumption" : "new sessions",
           r.storm_n, a->delivered, r.storm_back_s, storm_missing(&r, a), a->tls_resumed, a->sm_resumed);
    printf("  reconnect latency ms: p50 %.1f p90 %.1f p99 %.1f max %.1f\n", ms(hdr_percentile(&a->lat, 50)),
           ms(hdr_percentile(&a->lat, 90)), ms(hdr_percentile(&a->lat, 99)), ms(a->lat.max));
    if (o->server_pid > 0 && a->delivered)
      printf("  server CPU per reconnect: %.3f ms\n", (r.srv_cpu_storm - r.srv_cpu_go) * 1000.0 / (double)a->delivered);
  }
  /* A run that lost or bounced anything, or could not keep its connections, is not a
   * measurement of the server doing its job: it fails (exit 1) unless --allow-errors. */
  uint64_t lost = lost_deliveries(o, a);
  if (o->sc == SC_STORM) lost = storm_missing(&r, a);
  int bad = a->login_failed || a->dropped || a->errors || lost;
  if (bad)
    printf("  ERRORS: %" PRIu64 " log-in(s) failed, %" PRIu64 " connection(s) dropped, %" PRIu64
           " stanza error(s), %" PRIu64 " delivery(ies) missing or extra%s\n",
           a->login_failed, a->dropped, a->errors, lost, o->allow_errors ? " (allowed by --allow-errors)" : "");
  if (bad && !o->allow_errors) setup_failed = 1;
  if (o->server_pid > 0)
    printf("  server: CPU %.2f s over the run, RSS max %ld KiB\n", r.srv_cpu_end - r.srv_cpu0, r.rss_max);
  printf("  bench: CPU %.2f s over %.1f s wall (%.0f %% of one core; %d worker thread(s)), RSS max %ld KiB\n",
         r.bench_cpu, wall, wall > 0 ? r.bench_cpu / wall * 100 : 0, o->procs * o->threads, r.bench_rss_max);
  if (o->json && write_json(o, a, &r, tl, ntl) != 0) setup_failed = 1;
  if (o->plot && write_plot(o, tl, ntl) != 0) fprintf(stderr, "xmpp-bench: gnuplot failed (is gnuplot-nox installed?)\n");
  xfree(tl);
  xfree(a);
  xfree(prev);
  xfree(iv);
  xfree(cs);
  return setup_failed ? 1 : 0;
}

int main(int argc, char **argv) {
  bench_opts_t o;
  if (parse_opts(argc, argv, &o) != 0) return 2;
  setvbuf(stdout, NULL, _IOLBF, 0);
  return coordinator(&o);
}

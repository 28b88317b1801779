/* mam-bench: the XEP-0313 archive's store calls at size (docs/bench.md, "Archive").
 *
 *   mam-bench sqlite FILE | redis HOST:PORT  [--messages N] [--queries Q] [--contacts C]
 *   mam-bench sqlite FILE | redis HOST:PORT  --writer [--pairs P] [--messages N] [--group G]
 *
 * --writer: what router/mod_mam.c's archive writer does in bench/mam.sh's chat run, at
 * the store only: P pairs of accounts chatting, each message archived twice (sender's
 * and recipient's copy, the same bytes), committed in groups of G rows (default 4,000:
 * a second of 2,000 messages/s), with the writer's page cache and the default limits;
 * the first half of the N messages fills the archive, the second half is timed. Prints
 * this thread's CPU per archived row (checkpoints included: SQLite runs them in the
 * committing connection).
 *
 * Fills one account's archive with N messages (default 100,000; C contacts, default 20;
 * each a stored frame of ~230 bytes like router/mod_mam.c writes) through
 * store_mam_append in batches of 256 (what a worker's batch does), then times Q queries
 * (default 2,000) of a page of 50 at random positions: forward after a random id,
 * backward before a random id (RSM <before/>), and the same filtered by one contact.
 * Prints p50/p99/max per kind, the append rate, and what the store grew by per message
 * (SQLite: the file after a checkpoint; Redis: used_memory). */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/scram.h"
#include "common/store/store.h"

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

/* this thread's CPU time: what a call costs here, whatever else the machine runs */
static double cpu_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void cb(int64_t id, const char *with, const char *data, size_t len, void *ud) {
  (void)id, (void)with, (void)data, (void)len;
  ++*(int *)ud;
}

static long long redis_used(const char *addr) {
  char host[128];
  int port = 6379;
  if (sscanf(addr, "%127[^:]:%d", host, &port) < 1) return -1;
  redisContext *c = redisConnect(host, port);
  if (!c || c->err) return -1;
  redisReply *r = redisCommand(c, "INFO memory");
  long long v = -1;
  const char *p = r && r->str ? strstr(r->str, "used_memory:") : NULL;
  if (p) v = atoll(p + 12);
  if (r) freeReplyObject(r);
  redisFree(c);
  return v;
}

static long long file_bytes(const char *path) {
  struct stat st;
  char wal[512];
  long long n = stat(path, &st) == 0 ? st.st_size : 0;
  snprintf(wal, sizeof wal, "%s-wal", path);
  if (stat(wal, &st) == 0) n += st.st_size;
  return n;
}

/* --writer (see the top). */
static int writer_mode(const char *backend, const char *target, int argc, char **argv) {
  int pairs = 100, n = 200000, group = 4000;
  for (int i = 3; i + 1 < argc; i++) {
    if (!strcmp(argv[i], "--pairs")) pairs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--messages")) n = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--group")) group = atoi(argv[++i]);
  }
  if (pairs < 1 || n < 2 || group < 2) {
    fprintf(stderr, "mam-bench: --pairs, --messages and --group must be positive\n");
    return 2;
  }
  char *err = NULL;
  store_t *s = store_open(backend, target, &err);
  if (!s) {
    fprintf(stderr, "mam-bench: %s\n", err ? err : "cannot open");
    return 1;
  }
  store_set_cache(s, 32u << 20);
  int na = 2 * pairs;
  char (*bare)[48] = xcalloc((size_t)na, sizeof *bare);
  char (*full)[64] = xcalloc((size_t)na, sizeof *full);
  store_account_t acct = {0};
  scram_cred_t *cs[2] = {&acct.sha1, &acct.sha256};
  for (int h = 0; h < 2; h++) {
    cs[h]->salt_len = 16;
    cs[h]->iterations = 4096;
  }
  for (int i = 0; i < na; i++) {
    snprintf(bare[i], sizeof bare[i], "user%d@localhost", i);
    snprintf(full[i], sizeof full[i], "user%d@localhost/bench", i);
    store_account_delete(s, bare[i]);
    if (store_account_create(s, bare[i], &acct) != 0) {
      fprintf(stderr, "mam-bench: cannot create %s\n", bare[i]);
      return 1;
    }
  }
  /* the two copies of a message are the same bytes (a stored frame of 230), messages differ */
  char(*data)[230] = xcalloc((size_t)group / 2 + 2, sizeof *data);
  for (size_t i = 0; i < sizeof data[0]; i++) data[0][i] = (char)('a' + i % 26);
  store_mam_msg_t *rows = xcalloc((size_t)group, sizeof *rows);
  store_mam_limits_t lim = {100000, 0, 0};
  int64_t id = (int64_t)time(NULL) * 1000000 - (int64_t)n * 500;
  double c0 = 0, t0 = 0;
  int timed = 0;
  for (int m = 0; m < n;) {
    if (!timed && m >= n / 2) {
      timed = 1;
      c0 = cpu_s();
      t0 = now_s();
    }
    int k = 0;
    for (; k + 1 < group && m < n; m++) {
      int a = rand() % na, b = a ^ 1; /* a pair: 2i and 2i+1 */
      char *d = data[k / 2 + 1]; /* each message its own bytes (data[0]: the pattern) */
      memcpy(d, data[0], sizeof data[0]);
      snprintf(d, sizeof data[0], "%d:%d:", m, a);
      rows[k++] = (store_mam_msg_t){bare[a], ++id, bare[b], full[b], d, sizeof data[0]};
      rows[k++] = (store_mam_msg_t){bare[b], ++id, bare[a], full[a], d, sizeof data[0]};
    }
    if (store_mam_append(s, rows, (size_t)k, &lim) != 0) {
      fprintf(stderr, "mam-bench: append failed\n");
      return 1;
    }
  }
  double cpu = cpu_s() - c0, wall = now_s() - t0;
  printf("%s writer: %d pairs, groups of %d rows: %.1f us of CPU per archived row (%.2f s CPU, %.2f s wall for "
         "%d rows)\n",
         backend, pairs, group, cpu * 1e6 / (n - n / 2) / 2, cpu, wall, 2 * (n - n / 2));
  for (int i = 0; i < na; i++) store_account_delete(s, bare[i]);
  store_close(s);
  xfree(rows);
  xfree(data);
  xfree(bare);
  xfree(full);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: mam-bench sqlite FILE | redis HOST:PORT [--messages N] [--queries Q] [--contacts C]\n");
    return 2;
  }
  const char *backend = argv[1], *target = argv[2];
  log_set_level(LOG_ERROR);
  for (int i = 3; i < argc; i++)
    if (!strcmp(argv[i], "--writer")) return writer_mode(backend, target, argc, argv);
  int n = 100000, nq = 2000, nc = 20;
  for (int i = 3; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--messages")) n = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--queries")) nq = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--contacts")) nc = atoi(argv[i + 1]);
  }
  log_set_level(LOG_ERROR);
  char *err = NULL;
  store_t *s = store_open(backend, target, &err);
  if (!s) {
    fprintf(stderr, "mam-bench: %s\n", err ? err : "cannot open");
    return 1;
  }
  int redis = !strcmp(backend, "redis");
  const char *owner = "bench-owner@localhost";
  store_account_t acct = {0};
  scram_cred_t *cs[2] = {&acct.sha1, &acct.sha256};
  for (int h = 0; h < 2; h++) {
    cs[h]->salt_len = 16;
    cs[h]->iterations = 4096;
  }
  store_account_delete(s, owner);
  if (store_account_create(s, owner, &acct) != 0) {
    fprintf(stderr, "mam-bench: cannot create %s\n", owner);
    return 1;
  }
  long long before = redis ? redis_used(target) : file_bytes(target);
  char (*with)[48] = xcalloc((size_t)nc, sizeof *with);
  char (*full)[64] = xcalloc((size_t)nc, sizeof *full);
  for (int i = 0; i < nc; i++) {
    snprintf(with[i], sizeof with[i], "contact%d@localhost", i);
    snprintf(full[i], sizeof full[i], "contact%d@localhost/phone", i);
  }
  /* a stored message is a frame of ~230 bytes: addresses, a body of 100, an origin-id; each
   * its own (the SQLite store keeps one copy of the same bytes appended in one call) */
  char data[256][230];
  for (size_t i = 0; i < sizeof data[0]; i++) data[0][i] = (char)('a' + i % 26);
  for (int k = 1; k < 256; k++) memcpy(data[k], data[0], sizeof data[0]);
  int64_t *ids = xmalloc((size_t)n * sizeof *ids);
  int64_t base = (int64_t)time(NULL) * 1000000 - (int64_t)n * 1000;
  store_mam_msg_t batch[256];
  store_mam_limits_t lim = {0, 0, 0};
  double t0 = now_s(), c0 = cpu_s();
  for (int i = 0; i < n;) {
    int k = 0;
    for (; k < 256 && i < n; k++, i++) {
      ids[i] = base + (int64_t)i * 1000 + rand() % 1000;
      int c = rand() % nc;
      snprintf(data[k], 16, "%d:", i);
      batch[k] = (store_mam_msg_t){owner, ids[i], with[c], i % 2 ? full[c] : NULL, data[k], sizeof data[k]};
    }
    if (store_mam_append(s, batch, (size_t)k, &lim) != 0) {
      fprintf(stderr, "mam-bench: append failed\n");
      return 1;
    }
  }
  double fill = now_s() - t0, fill_cpu = cpu_s() - c0;
  if (!redis) { /* the WAL folded into the file, so its size is the archive's */
    store_close(s);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "sqlite3 '%s' 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null", target);
    if (system(cmd) != 0) fprintf(stderr, "mam-bench: checkpoint failed\n");
    s = store_open(backend, target, &err);
  }
  long long after = redis ? redis_used(target) : file_bytes(target);
  printf("%s: %d messages appended in %.2f s (%.0f/s, batches of 256; %.1f us of this process's CPU each); "
         "count %d; %.0f bytes per message (%d bytes of message)\n",
         backend, n, fill, n / fill, fill_cpu * 1e6 / n, store_mam_count(s, owner), (double)(after - before) / n,
         (int)sizeof data[0]);
  const char *kinds[] = {"forward page after a random id", "backward page before a random id (RSM <before/>)",
                         "forward, with one contact", "backward, with one contact", "last page (<before/>)"};
  double *lat = xmalloc((size_t)nq * sizeof *lat), *cpu = xmalloc((size_t)nq * sizeof *cpu);
  for (int kind = 0; kind < 5; kind++) {
    for (int q = 0; q < nq; q++) {
      int64_t at = ids[rand() % n];
      store_mam_query_t qq = {.before = INT64_MAX, .max = 50};
      if (kind == 0 || kind == 2) qq.after = at;
      if (kind == 1 || kind == 3) {
        qq.before = at;
        qq.last = 1;
      }
      if (kind == 4) qq.last = 1;
      if (kind == 2 || kind == 3) qq.with = with[rand() % nc];
      int got = 0, more;
      double a = now_s(), ac = cpu_s();
      int rc = store_mam_query(s, owner, &qq, cb, &got, &more);
      lat[q] = (now_s() - a) * 1e6;
      cpu[q] = (cpu_s() - ac) * 1e6;
      if (rc < 0) {
        fprintf(stderr, "mam-bench: query failed\n");
        return 1;
      }
    }
    qsort(lat, (size_t)nq, sizeof *lat, cmp_d);
    qsort(cpu, (size_t)nq, sizeof *cpu, cmp_d);
    printf("  %-50s wall p50 %6.0f p99 %6.0f max %6.0f us; CPU here p50 %5.0f p99 %5.0f us\n", kinds[kind],
           lat[nq / 2], lat[nq * 99 / 100], lat[nq - 1], cpu[nq / 2], cpu[nq * 99 / 100]);
  }
  store_account_delete(s, owner);
  store_close(s);
  xfree(lat);
  xfree(cpu);
  xfree(ids);
  xfree(with);
  xfree(full);
  return 0;
}

/* See redis_server.h. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/support/redis_server.h"

/* A loopback port free to listen on, below the kernel's ephemeral range: a port from
 * bind(0) is ephemeral, and an outgoing connection made before the server binds may be
 * given it (EADDRINUSE). Ports below the range are never used for outgoing connections. */
int test_free_port(void) {
  static unsigned seed;
  if (!seed) seed = (unsigned)getpid() ^ (unsigned)time(NULL);
  int low = 32768;
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
  if (f) {
    if (fscanf(f, "%d", &low) != 1) low = 32768;
    fclose(f);
  }
  for (int tries = 0; tries < 2000; tries++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (low > 12000) a.sin_port = htons((uint16_t)(10000 + rand_r(&seed) % (unsigned)(low - 10000)));
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    socklen_t l = sizeof a;
    if (ok) ok = getsockname(fd, (struct sockaddr *)&a, &l) == 0;
    close(fd);
    if (ok) return ntohs(a.sin_port);
  }
  cr_assert_fail("no free loopback port");
  return 0;
}

/* REDIS_SERVER, else redis-server on PATH. 0 when found. */
static int find_redis(test_redis_t *t) {
  const char *env = getenv("REDIS_SERVER");
  if (env && *env) {
    snprintf(t->bin, sizeof t->bin, "%s", env);
    return access(t->bin, X_OK);
  }
  const char *path = getenv("PATH");
  char dirs[2048];
  snprintf(dirs, sizeof dirs, "%s:/usr/bin:/usr/sbin:/usr/local/bin", path ? path : "");
  char *save = NULL;
  for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
    snprintf(t->bin, sizeof t->bin, "%s/redis-server", d);
    if (access(t->bin, X_OK) == 0) return 0;
  }
  return -1;
}

void test_redis_init(test_redis_t *t, const char *dir) {
  memset(t, 0, sizeof *t);
  snprintf(t->dir, sizeof t->dir, "%s", dir);
  if (find_redis(t) != 0)
    cr_assert_fail("redis-server is not installed (Debian: apt-get install redis-server, or "
                   "deploy/install-deps.sh): the Redis tests cannot run");
  t->port = test_free_port();
}

/* 1 when the server answering on c is the process pid (not another one that took the
 * port between test_free_port and our server's bind: then ours cannot bind it). */
static int is_ours(redisContext *c, pid_t pid) {
  redisReply *r = redisCommand(c, "INFO server");
  const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "process_id:") : NULL;
  int ours = p && atol(p + strlen("process_id:")) == (long)pid;
  if (r) freeReplyObject(r);
  return ours;
}

redisContext *test_redis_start(test_redis_t *t, int aof) {
  fflush(NULL);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed test */
    char log[192], port[16];
    snprintf(log, sizeof log, "%s/redis.log", t->dir);
    snprintf(port, sizeof port, "%d", t->port);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execl(t->bin, t->bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly",
          aof ? "yes" : "no", "--appendfsync", "always", "--dir", t->dir, "--daemonize", "no",
          (char *)NULL);
    _exit(127);
  }
  t->pid = pid;
  for (int i = 0; i < 1000; i++) {
    int st;
    pid_t gone = waitpid(pid, &st, WNOHANG);
    if (gone == pid && !t->started && t->port_tries++ < 5) {
      /* another process took the port before ours bound it (a first start only: a
       * restart must keep the port its clients know): another port */
      t->pid = 0;
      t->port = test_free_port();
      return test_redis_start(t, aof);
    }
    cr_assert_eq(gone, 0, "redis-server exited at start (see %s/redis.log)", t->dir);
    redisContext *c = redisConnect("127.0.0.1", t->port);
    if (c && !c->err) {
      redisReply *r = redisCommand(c, "PING");
      int ok = r && r->type == REDIS_REPLY_STATUS;
      if (r) freeReplyObject(r);
      if (ok && !is_ours(c, pid)) {
        /* a server of someone else's answers on the port: ours will exit (EADDRINUSE) */
        redisFree(c);
        usleep(10000);
        continue;
      }
      if (ok) {
        t->started = 1;
        return c;
      }
    }
    if (c) redisFree(c);
    usleep(10000);
  }
  cr_assert_fail("redis-server did not answer on port %d", t->port);
  return NULL;
}

static void stop_with(test_redis_t *t, int sig) {
  if (t->pid > 0) {
    kill(t->pid, sig);
    waitpid(t->pid, NULL, 0);
  }
  t->pid = 0;
}

void test_redis_stop(test_redis_t *t) { stop_with(t, SIGTERM); }
void test_redis_kill(test_redis_t *t) { stop_with(t, SIGKILL); }

long long test_redis_int(redisContext *c, const char *fmt, ...) {
  cr_assert_not_null(c);
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  cr_assert_not_null(r, "redis: %s", c->errstr);
  long long v = 0;
  if (r->type == REDIS_REPLY_INTEGER) v = r->integer;
  else if (r->type == REDIS_REPLY_STRING) v = strtoll(r->str, NULL, 10);
  else cr_assert_fail("redis %s: unexpected reply type %d", fmt, r->type);
  freeReplyObject(r);
  return v;
}

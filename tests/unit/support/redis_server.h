/* A redis-server of the test's own, for the unit tests that need a real Redis
 * (test_store.c, test_credis.c): fork/exec on a free loopback port, --save '' (AOF only
 * when asked), in a directory the test gives, never the system service.
 * A missing redis-server FAILS the test with a message saying so: it never passes
 * silently. REDIS_SERVER=/path/to/redis-server picks another binary.
 * Criterion asserts inside: call from the test's process (setup, test body, teardown). */
#ifndef TESTS_REDIS_SERVER_H
#define TESTS_REDIS_SERVER_H

#include <hiredis/hiredis.h>
#include <sys/types.h>

typedef struct test_redis {
  pid_t pid;      /* 0 when not running */
  int port;
  int started;    /* it answered once: a restart keeps its port */
  int port_tries; /* ports given up at a first start (taken by another process) */
  char dir[128];  /* working directory: redis.log, AOF files */
  char bin[512];
} test_redis_t;

/* A loopback TCP port free at the moment of the call. */
int test_free_port(void);
/* Finds the binary (fails the test when there is none), picks a free port. */
void test_redis_init(test_redis_t *t, const char *dir);
/* Starts redis-server on t->port (AOF with appendfsync always when aof) and waits until it
 * answers PING. Returns that connection (caller frees with redisFree). */
redisContext *test_redis_start(test_redis_t *t, int aof);
/* An integer reply (or a string holding one) to a printf-style command on c; any other
 * reply fails the test. */
long long test_redis_int(redisContext *c, const char *fmt, ...);
/* SIGTERM and wait (a clean shutdown). No-op when not running. */
void test_redis_stop(test_redis_t *t);
/* SIGKILL and wait (a crash: connections reset, nothing saved). */
void test_redis_kill(test_redis_t *t);

#endif

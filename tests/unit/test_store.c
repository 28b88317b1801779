/* Store interface against both back-ends: accounts, rosters (groups with odd names),
 * offline queues (order, limit, at-least-once pop), cascades on delete, several handles
 * (and threads) on one store, persistence across reopen.
 *
 * Every STORE_TEST runs twice: in suite store_sqlite (a database file in a temp dir) and
 * in suite store_redis (a redis-server this test starts itself: fork/exec on a free
 * loopback port, --save '' --appendonly no, in the test's temp dir; never the system
 * service). A missing redis-server FAILS the redis suite with a message saying so: it
 * never passes silently. REDIS_SERVER=/path/to/redis-server picks another binary.
 * Tests that look at one back-end's own format use Test(store_sqlite|store_redis, ...). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"
#include "common/scram.h"
#include "common/store/store.h"
#include "tests/unit/support/redis_server.h"

static char g_dir[64];
static char g_db[128];
static const char *g_backend = "sqlite"; /* the back-end under test */
static char g_target[128];               /* what store_open gets: the file or the address */
#define IS_REDIS (strcmp(g_backend, "redis") == 0)

static void mk_dir(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/test_store.XXXXXX");
  cr_assert_not_null(mkdtemp(g_dir));
  snprintf(g_db, sizeof g_db, "%s/x.db", g_dir);
  log_set_level(LOG_NONE);
}

static void rm_dir(void) {
  static const char *sfx[] = {"", "-wal", "-shm", "-journal"};
  char p[160];
  for (size_t i = 0; i < 4; i++) {
    snprintf(p, sizeof p, "%s%s", g_db, sfx[i]);
    unlink(p);
  }
  char cmd[200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir); /* redis.log, AOF files */
  if (system(cmd) != 0) rmdir(g_dir);
}

static void setup_sqlite(void) {
  mk_dir();
  g_backend = "sqlite";
  snprintf(g_target, sizeof g_target, "%s", g_db);
}

/* ---- a redis-server of the test's own -------------------------------------------------- */

static test_redis_t g_redis; /* tests/unit/support/redis_server.c */
static int g_redis_port;
static redisContext *g_raw; /* the tests' own connection, for looking at keys */

static int free_port(void) { return test_free_port(); }

/* Starts redis-server on g_redis_port (AOF on when aof, with appendfsync always) and
 * waits until it answers PING. */
static void redis_start(int aof) { g_raw = test_redis_start(&g_redis, aof); }

static void redis_stop(void) {
  if (g_raw) redisFree(g_raw);
  g_raw = NULL;
  test_redis_stop(&g_redis);
}

static void setup_redis(void) {
  mk_dir();
  g_backend = "redis";
  test_redis_init(&g_redis, g_dir);
  redis_start(0); /* may move to another port if its first one was taken meanwhile */
  g_redis_port = g_redis.port;
  snprintf(g_target, sizeof g_target, "127.0.0.1:%d", g_redis_port);
}

static void teardown_sqlite(void) { rm_dir(); }

static void teardown_redis(void) {
  redis_stop();
  rm_dir();
}

TestSuite(store_sqlite, .init = setup_sqlite, .fini = teardown_sqlite);
TestSuite(store_redis, .init = setup_redis, .fini = teardown_redis);

/* One body, two tests: the same case against each back-end. */
#define STORE_TEST(name, ...)                                                               \
  static void name##_body(void);                                                            \
  Test(store_sqlite, name, ##__VA_ARGS__) { name##_body(); }                                \
  Test(store_redis, name, ##__VA_ARGS__) { name##_body(); }                                 \
  static void name##_body(void)

static store_t *open_db(void) {
  char *err = NULL;
  store_t *s = store_open(g_backend, g_target, &err);
  cr_assert_not_null(s, "store_open(%s, %s): %s", g_backend, g_target, err ? err : "?");
  cr_assert_null(err);
  return s;
}

/* A raw Redis command on the tests' own connection. */
static redisReply *rcmd(const char *fmt, ...) {
  cr_assert_not_null(g_raw);
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(g_raw, fmt, ap);
  va_end(ap);
  cr_assert_not_null(r, "redis: %s", g_raw->errstr);
  cr_assert_neq(r->type, REDIS_REPLY_ERROR, "redis %s: %s", fmt, r->str);
  return r;
}

#define rint_cmd(...) test_redis_int(g_raw, __VA_ARGS__)

/* First column of the first row of sql, read on a separate raw connection. */
static long long raw_int(const char *sql) {
  sqlite3 *db = NULL;
  cr_assert_eq(sqlite3_open_v2(g_db, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
  sqlite3_stmt *st = NULL;
  cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
  cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
  long long v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

static void raw_exec(const char *sql) {
  sqlite3 *db = NULL;
  cr_assert_eq(sqlite3_open_v2(g_db, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
  cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
  sqlite3_close(db);
}

/* What the back-end stored, read around it: the SQLite file or the Redis keys. */
static long long raw_acct_len(const char *jid, const char *field) {
  if (IS_REDIS) return rint_cmd("HSTRLEN {u:%s}:a %s", jid, field);
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT length(%s) FROM accounts WHERE jid = '%s'", field, jid);
  return raw_int(sql);
}

static long long raw_acct_int(const char *jid, const char *field) {
  if (IS_REDIS) return rint_cmd("HGET {u:%s}:a %s", jid, field);
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT %s FROM accounts WHERE jid = '%s'", field, jid);
  return raw_int(sql);
}

static void raw_corrupt_account(const char *jid) {
  if (IS_REDIS) {
    freeReplyObject(rcmd("HSET {u:%s}:a sha256_stored %b", jid, "\x01\x02", (size_t)2));
    return;
  }
  char sql[256];
  snprintf(sql, sizeof sql, "UPDATE accounts SET sha256_stored = x'0102' WHERE jid = '%s'", jid);
  raw_exec(sql);
}

static long long raw_roster_count(const char *owner) {
  if (IS_REDIS) return rint_cmd("HLEN {u:%s}:r", owner);
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM roster WHERE owner = '%s'", owner);
  return raw_int(sql);
}

static long long raw_offline_count(const char *owner) {
  if (IS_REDIS) return rint_cmd("LLEN {u:%s}:o", owner);
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM offline WHERE owner = '%s'", owner);
  return raw_int(sql);
}

static long long raw_account_count(void) {
  if (IS_REDIS) return rint_cmd("ZCARD accounts");
  return raw_int("SELECT count(*) FROM accounts");
}

/* Marks the store as written by a newer version of the program. */
static void raw_set_newer_layout(void) {
  if (IS_REDIS) freeReplyObject(rcmd("SET xmppd:layout 99"));
  else raw_exec("PRAGMA user_version = 99");
}

#define SQLITE_ONLY(stmt)                                                                   \
  do {                                                                                      \
    if (!IS_REDIS) stmt;                                                                    \
  } while (0)

/* A recognisable credential pair: every byte derived from seed, keys filled to 32 bytes so
 * that the store must cut SHA-1 keys to 20. */
static void mk_cred(scram_cred_t *c, unsigned seed, size_t salt_len, uint32_t iter) {
  memset(c, 0, sizeof *c);
  for (size_t i = 0; i < salt_len; i++) c->salt[i] = (unsigned char)(seed * 7 + i);
  c->salt_len = salt_len;
  c->iterations = iter;
  for (size_t i = 0; i < SCRAM_MAX_KEY; i++) {
    c->stored_key[i] = (unsigned char)(seed * 13 + i + 1);
    c->server_key[i] = (unsigned char)(seed * 17 + i + 2);
  }
}

static store_account_t mk_acct(unsigned seed) {
  store_account_t a;
  mk_cred(&a.sha1, seed, SCRAM_SALT_LEN, 4096);
  mk_cred(&a.sha256, seed + 100, SCRAM_SALT_LEN, 8192);
  return a;
}

/* What a round trip must give back: hash-length keys, the rest zero. */
static void expect_cred(const scram_cred_t *got, const scram_cred_t *want, scram_hash_t h) {
  size_t hl = scram_hash_len(h);
  cr_assert_eq(got->salt_len, want->salt_len);
  cr_assert_eq(memcmp(got->salt, want->salt, want->salt_len), 0);
  cr_assert_eq(got->iterations, want->iterations);
  cr_assert_eq(memcmp(got->stored_key, want->stored_key, hl), 0);
  cr_assert_eq(memcmp(got->server_key, want->server_key, hl), 0);
  for (size_t i = hl; i < SCRAM_MAX_KEY; i++) {
    cr_assert_eq(got->stored_key[i], 0);
    cr_assert_eq(got->server_key[i], 0);
  }
  for (size_t i = want->salt_len; i < SCRAM_MAX_SALT; i++) cr_assert_eq(got->salt[i], 0);
}

static void expect_acct(const store_account_t *got, const store_account_t *want) {
  expect_cred(&got->sha1, &want->sha1, SCRAM_SHA1);
  expect_cred(&got->sha256, &want->sha256, SCRAM_SHA256);
}

static void add_user(store_t *s, const char *jid, unsigned seed) {
  store_account_t a = mk_acct(seed);
  cr_assert_eq(store_account_create(s, jid, &a), 0);
}

/* n users "u<i>@domain" for the batch reads: names[i] and bares[i] = names[i]; with s,
 * each gets an account (seed i) unless skip(i). */
static void mk_users(store_t *s, char (*names)[32], const char **bares, int n, const char *domain,
                     int (*skip)(int i)) {
  for (int i = 0; i < n; i++) {
    snprintf(names[i], sizeof names[i], "u%d@%s", i, domain);
    bares[i] = names[i];
    if (s && !(skip && skip(i))) add_user(s, names[i], (unsigned)i);
  }
}

static int every_third(int i) { return i % 3 == 1; }

/* ---- open ----------------------------------------------------------------------------- */

Test(store_sqlite, open_creates_schema_wal) {
  store_t *s = open_db();
  cr_assert_eq(raw_int("PRAGMA user_version"), 10);
  cr_assert_eq(raw_int("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
                       "('accounts', 'roster', 'roster_groups', 'offline')"),
               4);
  cr_assert_eq(raw_int("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND "
                       "tbl_name = 'offline' AND name = 'offline_owner'"),
               1);
  cr_assert_eq(raw_int("SELECT journal_mode = 'wal' FROM pragma_journal_mode"), 1);
  store_close(s);
  /* Opening again keeps (and does not re-create) the schema. */
  s = open_db();
  cr_assert_eq(raw_int("PRAGMA user_version"), 10);
  store_close(s);
}

/* One server per store (docs/operations.md): the claim is a flock on PATH.lock, per open
 * file description, so a second claim conflicts even inside one process; it never
 * keeps anyone from opening the database itself (xmppctl). */
Test(store_sqlite, claim_is_exclusive_and_released) {
  store_claim_t *a = NULL, *b = NULL;
  char *err = NULL;
  cr_assert_eq(store_claim("sqlite", g_db, &a, &err), 0);
  cr_assert_not_null(a);
  cr_assert_eq(store_claim("sqlite", g_db, &b, &err), XMPP_EDENIED);
  cr_assert_null(b);
  char pid[48];
  snprintf(pid, sizeof pid, "in use by another xmppd (pid %ld,", (long)getpid());
  cr_assert_not_null(strstr(err, pid), "%s", err);
  cr_assert_not_null(strstr(err, ".db.lock"), "%s", err);
  xfree(err);
  err = NULL;
  store_t *s = open_db(); /* the data stays usable */
  store_close(s);
  store_claim_release(a);
  cr_assert_eq(store_claim("sqlite", g_db, &b, &err), 0);
  store_claim_release(b);
  /* no claim where there is no file of ours */
  cr_assert_eq(store_claim("redis", "127.0.0.1:1", &a, &err), 0);
  cr_assert_null(a);
  cr_assert_eq(store_claim("sqlite", ":memory:", &a, &err), 0);
  cr_assert_null(a);
  char bad[200];
  snprintf(bad, sizeof bad, "%s/no/such/dir/x.db", g_dir);
  cr_assert_eq(store_claim("sqlite", bad, &a, &err), XMPP_EIO);
  cr_assert_not_null(err);
  xfree(err);
}

Test(store_sqlite, open_errors) {
  char *err = NULL;
  cr_assert_null(store_open("mongodb", g_db, &err));
  cr_assert_not_null(err);
  cr_assert_not_null(strstr(err, "mongodb"));
  xfree(err);

  err = NULL;
  char bad[200];
  snprintf(bad, sizeof bad, "%s/no/such/dir/x.db", g_dir);
  cr_assert_null(store_open("sqlite", bad, &err));
  cr_assert_not_null(err);
  xfree(err);

  cr_assert_null(store_open("sqlite", bad, NULL)); /* err is optional */
  cr_assert_null(store_open(NULL, g_db, NULL));
  cr_assert_null(store_open("sqlite", "", NULL));
  store_close(NULL);
}

STORE_TEST(open_refuses_newer_schema) {
  store_close(open_db());
  raw_set_newer_layout();
  char *err = NULL;
  cr_assert_null(store_open(g_backend, g_target, &err));
  cr_assert_not_null(err);
  cr_assert_not_null(strstr(err, "newer"), "%s", err);
  xfree(err);
}

/* ---- accounts ------------------------------------------------------------------------- */

STORE_TEST(account_crud) {
  store_t *s = open_db();
  const char *j = "alice@example.net";
  store_account_t a = mk_acct(1), b = mk_acct(2), got;

  cr_assert_eq(store_account_exists(s, j), 0);
  cr_assert_eq(store_account_get(s, j, &got), XMPP_ENOENT);
  cr_assert_eq(store_account_update(s, j, &a), XMPP_ENOENT);
  cr_assert_eq(store_account_delete(s, j), XMPP_ENOENT);

  cr_assert_eq(store_account_create(s, j, &a), 0);
  cr_assert_eq(store_account_exists(s, j), 1);
  cr_assert_eq(store_account_create(s, j, &b), XMPP_EEXIST);
  cr_assert_eq(store_account_get(s, j, &got), 0);
  expect_acct(&got, &a); /* the failed create changed nothing */

  cr_assert_eq(store_account_update(s, j, &b), 0);
  cr_assert_eq(store_account_get(s, j, &got), 0);
  expect_acct(&got, &b);
  cr_assert_eq(store_account_exists(s, "bob@example.net"), 0);

  cr_assert_eq(store_account_delete(s, j), 0);
  cr_assert_eq(store_account_exists(s, j), 0);
  cr_assert_eq(store_account_get(s, j, &got), XMPP_ENOENT);
  cr_assert_eq(store_account_delete(s, j), XMPP_ENOENT);
  cr_assert_eq(store_account_create(s, j, &b), 0); /* the name is free again */
  store_close(s);
}

STORE_TEST(account_get_many) {
  store_t *s = open_db();
  enum { N = 300 };
  static char names[N][32];
  const char *bares[N];
  static store_account_t got[N];
  int rcs[N];
  mk_users(s, names, bares, N, "example.net", every_third); /* every third one is missing */
  raw_corrupt_account(names[5]);
  for (int i = 0; i < N; i++) rcs[i] = 12345;
  cr_assert_eq(store_account_get_many(s, bares, N, got, rcs), 0);
  for (int i = 0; i < N; i++) {
    if (i == 5) {
      cr_assert_eq(rcs[i], XMPP_EIO, "corrupt account %d", i);
      continue;
    }
    cr_assert_eq(rcs[i], i % 3 == 1 ? XMPP_ENOENT : 0, "account %d: %d", i, rcs[i]);
    if (rcs[i] == 0) {
      store_account_t want = mk_acct((unsigned)i);
      expect_acct(&got[i], &want);
    }
  }
  /* the same answers one by one */
  for (int i = 0; i < N; i += 37) {
    store_account_t one;
    cr_assert_eq(store_account_get(s, bares[i], &one), rcs[i]);
  }
  cr_assert_eq(store_account_get_many(s, bares, 0, NULL, NULL), 0);
  const char *bad[] = {"a@x", ""};
  cr_assert_eq(store_account_get_many(s, bad, 2, got, rcs), XMPP_EINVAL);
  store_close(s);
}

STORE_TEST(account_stores_only_needed_bytes) {
  store_t *s = open_db();
  store_account_t a, got;
  mk_cred(&a.sha1, 3, 1, 1);
  mk_cred(&a.sha256, 4, SCRAM_MAX_SALT, UINT32_MAX);
  cr_assert_eq(store_account_create(s, "a@x", &a), 0);
  cr_assert_eq(store_account_get(s, "a@x", &got), 0);
  expect_acct(&got, &a);
  cr_assert_eq(raw_acct_len("a@x", "sha1_stored"), 20);
  cr_assert_eq(raw_acct_len("a@x", "sha1_server"), 20);
  cr_assert_eq(raw_acct_len("a@x", "sha256_stored"), 32);
  cr_assert_eq(raw_acct_len("a@x", "sha256_server"), 32);
  cr_assert_eq(raw_acct_len("a@x", "sha1_salt"), 1);
  cr_assert_eq(raw_acct_len("a@x", "sha256_salt"), SCRAM_MAX_SALT);
  cr_assert_eq(raw_acct_int("a@x", "sha256_iter"), UINT32_MAX);
  cr_assert_gt(raw_acct_int("a@x", "created"), time(NULL) - 60);

  /* Out-of-range credentials are refused before storage. */
  store_account_t bad = mk_acct(5);
  bad.sha1.salt_len = 0;
  cr_assert_eq(store_account_create(s, "b@x", &bad), XMPP_EINVAL);
  bad = mk_acct(5);
  bad.sha256.salt_len = SCRAM_MAX_SALT + 1;
  cr_assert_eq(store_account_create(s, "b@x", &bad), XMPP_EINVAL);
  bad = mk_acct(5);
  bad.sha1.iterations = 0;
  cr_assert_eq(store_account_update(s, "a@x", &bad), XMPP_EINVAL);
  cr_assert_eq(store_account_exists(s, "b@x"), 0);
  store_close(s);
}

STORE_TEST(account_corrupt_row_is_eio) {
  store_t *s = open_db();
  add_user(s, "a@x", 1);
  raw_corrupt_account("a@x");
  store_account_t got;
  cr_assert_eq(store_account_get(s, "a@x", &got), XMPP_EIO);
  store_close(s);
}

typedef struct {
  char names[8][32];
  int n;
} list_t;

static void list_cb(const char *bare, void *ud) {
  list_t *l = ud;
  cr_assert_lt(l->n, 8);
  snprintf(l->names[l->n++], sizeof l->names[0], "%s", bare);
}

STORE_TEST(account_list_sorted) {
  store_t *s = open_db();
  list_t l = {0};
  cr_assert_eq(store_account_list(s, list_cb, &l), 0);
  cr_assert_eq(l.n, 0);
  add_user(s, "carol@x", 1);
  add_user(s, "alice@x", 2);
  add_user(s, "bob@x", 3);
  cr_assert_eq(store_account_list(s, list_cb, &l), 0);
  cr_assert_eq(l.n, 3);
  cr_assert_str_eq(l.names[0], "alice@x");
  cr_assert_str_eq(l.names[1], "bob@x");
  cr_assert_str_eq(l.names[2], "carol@x");
  store_close(s);
}

STORE_TEST(invalid_arguments) {
  store_t *s = open_db();
  store_account_t a = mk_acct(1), got;
  cr_assert_eq(store_account_create(NULL, "a@x", &a), XMPP_EINVAL);
  cr_assert_eq(store_account_create(s, NULL, &a), XMPP_EINVAL);
  cr_assert_eq(store_account_create(s, "", &a), XMPP_EINVAL);
  cr_assert_eq(store_account_create(s, "a@x", NULL), XMPP_EINVAL);
  cr_assert_eq(store_account_get(s, "a@x", NULL), XMPP_EINVAL);
  cr_assert_eq(store_account_get(s, "", &got), XMPP_EINVAL);
  cr_assert_eq(store_account_exists(s, NULL), XMPP_EINVAL);
  cr_assert_eq(store_account_list(s, NULL, NULL), XMPP_EINVAL);
  cr_assert_eq(store_roster_load(s, "a@x", NULL, NULL), XMPP_EINVAL);
  cr_assert_eq(store_roster_delete(s, "a@x", ""), XMPP_EINVAL);
  cr_assert_eq(store_offline_push(s, "a@x", NULL, 3, 0, 0), XMPP_EINVAL);
  cr_assert_eq(store_offline_peek(s, "a@x", 0, 1, 0, NULL, NULL), XMPP_EINVAL);
  cr_assert_eq(store_offline_peek(s, "", 0, 1, 0, NULL, NULL), XMPP_EINVAL);
  cr_assert_eq(store_offline_remove(s, "", 1), XMPP_EINVAL);
  cr_assert_eq(store_offline_count(s, ""), XMPP_EINVAL);

  add_user(s, "a@x", 1);
  store_roster_item_t it = {.jid = "b@x", .sub = (roster_sub_t)4};
  cr_assert_eq(store_roster_put(s, "a@x", &it), XMPP_EINVAL);
  it.sub = SUB_BOTH;
  it.jid = NULL;
  cr_assert_eq(store_roster_put(s, "a@x", &it), XMPP_EINVAL);
  it.jid = "b@x";
  it.ngroups = 1; /* groups NULL */
  cr_assert_eq(store_roster_put(s, "a@x", &it), XMPP_EINVAL);
  const char *g[] = {"ok", NULL};
  it.groups = g;
  it.ngroups = 2;
  cr_assert_eq(store_roster_put(s, "a@x", &it), XMPP_EINVAL);
  cr_assert_eq(store_roster_put(s, "a@x", NULL), XMPP_EINVAL);
  store_close(s);
}

/* ---- roster --------------------------------------------------------------------------- */

#define MAXG 8
typedef struct {
  char jid[64];
  char name[64];
  int has_name;
  roster_sub_t sub;
  int ask_out, pending_in, approved;
  char groups[MAXG][64];
  size_t ngroups;
} ritem_t;

typedef struct {
  ritem_t it[8];
  int n;
} roster_t;

static void roster_cb(const store_roster_item_t *item, void *ud) {
  roster_t *r = ud;
  cr_assert_lt(r->n, 8);
  ritem_t *x = &r->it[r->n++];
  snprintf(x->jid, sizeof x->jid, "%s", item->jid);
  x->has_name = item->name != NULL;
  snprintf(x->name, sizeof x->name, "%s", item->name ? item->name : "");
  x->sub = item->sub;
  x->ask_out = item->ask_out;
  x->pending_in = item->pending_in;
  x->approved = item->approved;
  cr_assert_leq(item->ngroups, MAXG);
  x->ngroups = item->ngroups;
  for (size_t i = 0; i < item->ngroups; i++)
    snprintf(x->groups[i], sizeof x->groups[i], "%s", item->groups[i]);
}

static roster_t load(store_t *s, const char *owner) {
  roster_t r;
  memset(&r, 0, sizeof r);
  cr_assert_eq(store_roster_load(s, owner, roster_cb, &r), 0);
  return r;
}

STORE_TEST(roster_put_load) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "zed@x", 2);
  roster_t r = load(s, "alice@x");
  cr_assert_eq(r.n, 0);

  const char *g1[] = {"Friends", "Work"};
  store_roster_item_t bob = {.jid = "bob@y", .name = "Bob", .sub = SUB_BOTH,
                             .groups = g1, .ngroups = 2};
  store_roster_item_t carol = {.jid = "carol@z", .name = NULL, .sub = SUB_NONE,
                               .ask_out = 1, .pending_in = 7 /* any non-zero */};
  store_roster_item_t dave = {.jid = "dave@y", .name = "", .sub = SUB_FROM};
  cr_assert_eq(store_roster_put(s, "alice@x", &dave), 0);
  cr_assert_eq(store_roster_put(s, "alice@x", &carol), 0);
  cr_assert_eq(store_roster_put(s, "alice@x", &bob), 0);
  store_roster_item_t other = {.jid = "bob@y", .sub = SUB_TO};
  cr_assert_eq(store_roster_put(s, "zed@x", &other), 0);

  r = load(s, "alice@x");
  cr_assert_eq(r.n, 3);
  /* sorted by contact */
  cr_assert_str_eq(r.it[0].jid, "bob@y");
  cr_assert(r.it[0].has_name);
  cr_assert_str_eq(r.it[0].name, "Bob");
  cr_assert_eq(r.it[0].sub, SUB_BOTH);
  cr_assert_eq(r.it[0].ask_out, 0);
  cr_assert_eq(r.it[0].pending_in, 0);
  cr_assert_eq(r.it[0].ngroups, 2);
  cr_assert_str_eq(r.it[0].groups[0], "Friends");
  cr_assert_str_eq(r.it[0].groups[1], "Work");

  cr_assert_str_eq(r.it[1].jid, "carol@z");
  cr_assert_not(r.it[1].has_name);
  cr_assert_eq(r.it[1].sub, SUB_NONE);
  cr_assert_eq(r.it[1].ask_out, 1);
  cr_assert_eq(r.it[1].pending_in, 1);
  cr_assert_eq(r.it[1].ngroups, 0);

  cr_assert_str_eq(r.it[2].jid, "dave@y");
  cr_assert(r.it[2].has_name); /* empty name is kept distinct from no name */
  cr_assert_str_eq(r.it[2].name, "");
  cr_assert_eq(r.it[2].sub, SUB_FROM);

  r = load(s, "zed@x");
  cr_assert_eq(r.n, 1);
  cr_assert_eq(r.it[0].sub, SUB_TO);
  r = load(s, "nobody@x");
  cr_assert_eq(r.n, 0);
  store_close(s);
}

typedef struct {
  roster_t r[40];
} rosters_t;

static void roster_many_cb(size_t i, const store_roster_item_t *item, void *ud) {
  rosters_t *m = ud;
  cr_assert_lt(i, 40);
  roster_cb(item, &m->r[i]);
}

STORE_TEST(roster_load_many) {
  store_t *s = open_db();
  enum { N = 40 };
  static char names[N][32];
  const char *bares[N];
  int rcs[N];
  mk_users(s, names, bares, N, "x", NULL);
  for (int i = 0; i < N; i++) {
    /* user i has i % 5 contacts, put in reverse order */
    for (int k = i % 5; k > 0; k--) {
      char c[32];
      snprintf(c, sizeof c, "c%d@y", k);
      const char *g[] = {"G"};
      store_roster_item_t it = {.jid = c, .name = "N", .sub = (roster_sub_t)(k % 4), .groups = g,
                                .ngroups = (size_t)(k % 2)};
      cr_assert_eq(store_roster_put(s, names[i], &it), 0);
    }
  }
  bares[7] = "nobody@x"; /* no account: an empty roster, like store_roster_load */
  static rosters_t m;
  memset(&m, 0, sizeof m);
  for (int i = 0; i < N; i++) rcs[i] = 12345;
  cr_assert_eq(store_roster_load_many(s, bares, N, roster_many_cb, &m, rcs), 0);
  for (int i = 0; i < N; i++) {
    cr_assert_eq(rcs[i], 0, "user %d", i);
    roster_t one = load(s, bares[i]);
    cr_assert_eq(m.r[i].n, one.n, "user %d: %d items, one by one %d", i, m.r[i].n, one.n);
    cr_assert_eq(memcmp(&m.r[i], &one, sizeof one), 0, "user %d differs", i);
    if (i != 7) cr_assert_eq(one.n, i % 5);
  }
  cr_assert_str_eq(m.r[4].it[0].jid, "c1@y"); /* sorted by contact */
  cr_assert_eq(store_roster_load_many(s, bares, 0, roster_many_cb, &m, NULL), 0);
  const char *bad[] = {"a@x", ""};
  cr_assert_eq(store_roster_load_many(s, bad, 2, roster_many_cb, &m, rcs), XMPP_EINVAL);
  store_close(s);
}

/* store_roster_get: one item, the same fields a load gives; XMPP_ENOENT for a contact not
 * in the roster and for a user without an account. store_roster_count: the item count. */
STORE_TEST(roster_get_one_and_count) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "zed@x", 2);
  cr_assert_eq(store_roster_count(s, "alice@x"), 0);
  cr_assert_eq(store_roster_count(s, "nobody@x"), 0);
  const char *g[] = {"Friends", "a,b", "quote \" '"};
  store_roster_item_t bob = {.jid = "bob@y", .name = "Bob", .sub = SUB_BOTH, .groups = g, .ngroups = 3};
  store_roster_item_t carol = {.jid = "carol@z", .sub = SUB_NONE, .ask_out = 1, .pending_in = 1};
  store_roster_item_t dave = {.jid = "dave@y", .name = "", .sub = SUB_FROM};
  cr_assert_eq(store_roster_put(s, "alice@x", &bob), 0);
  cr_assert_eq(store_roster_put(s, "alice@x", &carol), 0);
  cr_assert_eq(store_roster_put(s, "alice@x", &dave), 0);
  store_roster_item_t zb = {.jid = "bob@y", .sub = SUB_TO};
  cr_assert_eq(store_roster_put(s, "zed@x", &zb), 0);
  cr_assert_eq(store_roster_count(s, "alice@x"), 3);
  cr_assert_eq(store_roster_count(s, "zed@x"), 1);

  roster_t all = load(s, "alice@x");
  cr_assert_eq(all.n, 3);
  for (int i = 0; i < all.n; i++) {
    roster_t one;
    memset(&one, 0, sizeof one);
    cr_assert_eq(store_roster_get(s, "alice@x", all.it[i].jid, roster_cb, &one), 0, "%s", all.it[i].jid);
    cr_assert_eq(one.n, 1, "exactly one callback");
    cr_assert_eq(memcmp(&one.it[0], &all.it[i], sizeof one.it[0]), 0, "%s differs from the load", all.it[i].jid);
  }
  roster_t one;
  memset(&one, 0, sizeof one);
  cr_assert_eq(store_roster_get(s, "zed@x", "bob@y", roster_cb, &one), 0);
  cr_assert_eq(one.it[0].sub, SUB_TO); /* zed's item, not alice's */
  cr_assert_not(one.it[0].has_name);
  cr_assert_eq(one.it[0].ngroups, 0);
  memset(&one, 0, sizeof one);
  cr_assert_eq(store_roster_get(s, "alice@x", "erin@y", roster_cb, &one), XMPP_ENOENT);
  cr_assert_eq(store_roster_get(s, "nobody@x", "bob@y", roster_cb, &one), XMPP_ENOENT);
  cr_assert_eq(one.n, 0, "no callback without an item");

  /* a put replaces the item read back; a delete makes it absent */
  const char *g2[] = {"Work"};
  bob.name = NULL;
  bob.groups = g2;
  bob.ngroups = 1;
  bob.sub = SUB_FROM;
  cr_assert_eq(store_roster_put(s, "alice@x", &bob), 0);
  cr_assert_eq(store_roster_get(s, "alice@x", "bob@y", roster_cb, &one), 0);
  cr_assert_not(one.it[0].has_name);
  cr_assert_eq(one.it[0].sub, SUB_FROM);
  cr_assert_eq(one.it[0].ngroups, 1);
  cr_assert_str_eq(one.it[0].groups[0], "Work");
  cr_assert_eq(store_roster_delete(s, "alice@x", "bob@y"), 0);
  cr_assert_eq(store_roster_get(s, "alice@x", "bob@y", roster_cb, &one), XMPP_ENOENT);
  cr_assert_eq(store_roster_count(s, "alice@x"), 2);

  cr_assert_eq(store_roster_get(s, "", "bob@y", roster_cb, &one), XMPP_EINVAL);
  cr_assert_eq(store_roster_get(s, "alice@x", "", roster_cb, &one), XMPP_EINVAL);
  cr_assert_eq(store_roster_get(s, "alice@x", "bob@y", NULL, NULL), XMPP_EINVAL);
  cr_assert_eq(store_roster_count(s, NULL), XMPP_EINVAL);
  store_close(s);
}

/* The single-item read costs the same with 2,000 items as with one: Redis answers it with
 * one HGET (no HGETALL), SQLite with a fixed number of statement steps. */
STORE_TEST(roster_get_one_is_not_a_load) {
  store_t *s = open_db();
  add_user(s, "big@x", 1);
  cr_assert_eq(store_batch_begin(s), 0);
  for (int i = 0; i < 2000; i++) {
    char c[32];
    snprintf(c, sizeof c, "c%04d@y", i);
    const char *g[] = {"G"};
    store_roster_item_t it = {.jid = c, .sub = SUB_BOTH, .groups = g, .ngroups = 1};
    cr_assert_eq(store_roster_put(s, "big@x", &it), 0);
  }
  cr_assert_eq(store_batch_end(s, 1), 0);
  cr_assert_eq(store_roster_count(s, "big@x"), 2000);
  if (IS_REDIS) {
    freeReplyObject(rcmd("CONFIG RESETSTAT"));
    roster_t one;
    memset(&one, 0, sizeof one);
    cr_assert_eq(store_roster_get(s, "big@x", "c1234@y", roster_cb, &one), 0);
    cr_assert_str_eq(one.it[0].jid, "c1234@y");
    redisReply *r = rcmd("INFO commandstats");
    cr_assert(strstr(r->str, "cmdstat_hget:calls=1,"), "%s", r->str);
    cr_assert_null(strstr(r->str, "cmdstat_hgetall"), "%s", r->str);
    freeReplyObject(r);
  } else {
    /* a read and a count of the 2,000-item roster cost about what they cost for a
     * one-item roster (a count over the rows took 185 us, a load 2,001 statements) */
    add_user(s, "small@x", 2);
    store_roster_item_t it = {.jid = "c1999@y", .sub = SUB_BOTH};
    cr_assert_eq(store_roster_put(s, "small@x", &it), 0);
    double per[2];
    const char *who[2] = {"small@x", "big@x"};
    for (int k = 0; k < 2; k++) {
      struct timespec t0, t1;
      clock_gettime(CLOCK_MONOTONIC, &t0);
      for (int i = 0; i < 500; i++) {
        roster_t one;
        memset(&one, 0, sizeof one);
        cr_assert_eq(store_roster_get(s, who[k], "c1999@y", roster_cb, &one), 0);
        cr_assert_eq(store_roster_count(s, who[k]), k ? 2000 : 1);
      }
      clock_gettime(CLOCK_MONOTONIC, &t1);
      per[k] = ((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9) / 500;
    }
    cr_assert_lt(per[1], 2.5 * per[0] + 5e-6, "read + count: %.1f us with 2,000 items, %.1f us with one",
                 per[1] * 1e6, per[0] * 1e6);
  }
  store_close(s);
}

/* A version-1 file (no roster_items) is upgraded on open: the counts are taken from the
 * rows, and the triggers keep them from then on, whoever writes the rows. */
Test(store_sqlite, schema_v1_upgraded_with_roster_counts) {
  sqlite3 *db = NULL;
  cr_assert_eq(sqlite3_open(g_db, &db), SQLITE_OK); /* creates the file */
  sqlite3_close(db);
  raw_exec("CREATE TABLE accounts (jid TEXT NOT NULL PRIMARY KEY, sha1_salt BLOB NOT NULL, "
           "sha1_iter INTEGER NOT NULL, sha1_stored BLOB NOT NULL, sha1_server BLOB NOT NULL, "
           "sha256_salt BLOB NOT NULL, sha256_iter INTEGER NOT NULL, sha256_stored BLOB NOT NULL, "
           "sha256_server BLOB NOT NULL, created INTEGER NOT NULL);"
           "CREATE TABLE roster (owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE, "
           "contact TEXT NOT NULL, name TEXT, sub INTEGER NOT NULL DEFAULT 0 CHECK (sub BETWEEN 0 AND 3), "
           "ask_out INTEGER NOT NULL DEFAULT 0, pending_in INTEGER NOT NULL DEFAULT 0, "
           "PRIMARY KEY (owner, contact));"
           "INSERT INTO accounts VALUES ('a@x', x'01', 4096, x'02', x'03', x'04', 4096, x'05', x'06', 0);"
           "INSERT INTO accounts VALUES ('b@x', x'01', 4096, x'02', x'03', x'04', 4096, x'05', x'06', 0);"
           "INSERT INTO roster (owner, contact) VALUES ('a@x', 'c1@y'), ('a@x', 'c2@y'), ('a@x', 'c3@y');"
           "PRAGMA user_version = 1;");
  store_t *s = open_db();
  cr_assert_eq(raw_int("PRAGMA user_version"), 10);
  cr_assert_eq(store_roster_count(s, "a@x"), 3);
  cr_assert_eq(store_roster_count(s, "b@x"), 0);
  store_roster_item_t it = {.jid = "c4@y", .sub = SUB_TO};
  cr_assert_eq(store_roster_put(s, "a@x", &it), 0);
  cr_assert_eq(store_roster_put(s, "a@x", &it), 0); /* a replace is not a new item */
  cr_assert_eq(store_roster_delete(s, "a@x", "c1@y"), 0);
  cr_assert_eq(store_roster_count(s, "a@x"), 3);
  raw_exec("INSERT INTO roster (owner, contact) VALUES ('b@x', 'c9@y')"); /* another writer */
  cr_assert_eq(store_roster_count(s, "b@x"), 1);
  /* version 3: the archive, on accounts that existed before */
  store_mam_msg_t m = {"b@x", 10, "c1@y", NULL, "x", 1};
  cr_assert_eq(store_mam_append(s, &m, 1, NULL), 0);
  cr_assert_eq(store_mam_count(s, "b@x"), 1);
  cr_assert_eq(store_account_delete(s, "a@x"), 0);
  cr_assert_eq(store_roster_count(s, "a@x"), 0);
  store_close(s);
}

STORE_TEST(roster_odd_group_names) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  const char *g[] = {
      "a,b",                        /* comma: must not split into "a" and "b" */
      "a",
      "b",
      "quote \" and ' apostrophe",
      "line1\nline2\r\n",
      "tab\tback\\slash;semi|pipe%",
      "\xc3\xa9t\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80", /* été 日本 😀 */
      "",
  };
  store_roster_item_t it = {.jid = "bob@y", .name = "O'Brien, \"B\"\n", .sub = SUB_TO,
                            .groups = g, .ngroups = 8};
  cr_assert_eq(store_roster_put(s, "alice@x", &it), 0);
  roster_t r = load(s, "alice@x");
  cr_assert_eq(r.n, 1);
  cr_assert_str_eq(r.it[0].name, "O'Brien, \"B\"\n");
  cr_assert_eq(r.it[0].ngroups, 8);
  for (size_t i = 0; i < 8; i++) cr_assert_str_eq(r.it[0].groups[i], g[i], "group %zu", i);
  SQLITE_ONLY(cr_assert_eq(raw_int("SELECT count(*) FROM roster_groups"), 8));
  store_close(s);
}

STORE_TEST(roster_replace) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  const char *g1[] = {"A", "B", "C"};
  store_roster_item_t it = {.jid = "bob@y", .name = "Bob", .sub = SUB_NONE, .ask_out = 1,
                            .groups = g1, .ngroups = 3};
  cr_assert_eq(store_roster_put(s, "alice@x", &it), 0);
  const char *g2[] = {"C"};
  store_roster_item_t it2 = {.jid = "bob@y", .name = NULL, .sub = SUB_BOTH, .pending_in = 1,
                             .groups = g2, .ngroups = 1};
  cr_assert_eq(store_roster_put(s, "alice@x", &it2), 0);
  roster_t r = load(s, "alice@x");
  cr_assert_eq(r.n, 1);
  cr_assert_not(r.it[0].has_name);
  cr_assert_eq(r.it[0].sub, SUB_BOTH);
  cr_assert_eq(r.it[0].ask_out, 0);
  cr_assert_eq(r.it[0].pending_in, 1);
  cr_assert_eq(r.it[0].ngroups, 1);
  cr_assert_str_eq(r.it[0].groups[0], "C");

  /* and back to no groups at all */
  store_roster_item_t it3 = {.jid = "bob@y", .sub = SUB_TO};
  cr_assert_eq(store_roster_put(s, "alice@x", &it3), 0);
  r = load(s, "alice@x");
  cr_assert_eq(r.n, 1);
  cr_assert_eq(r.it[0].ngroups, 0);
  SQLITE_ONLY(cr_assert_eq(raw_int("SELECT count(*) FROM roster_groups"), 0));
  cr_assert_eq(raw_roster_count("alice@x"), 1);
  store_close(s);
}

STORE_TEST(roster_delete) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  const char *g[] = {"G1", "G2"};
  store_roster_item_t b = {.jid = "bob@y", .groups = g, .ngroups = 2};
  store_roster_item_t c = {.jid = "carol@y", .groups = g, .ngroups = 1};
  cr_assert_eq(store_roster_put(s, "alice@x", &b), 0);
  cr_assert_eq(store_roster_put(s, "alice@x", &c), 0);
  cr_assert_eq(store_roster_delete(s, "alice@x", "bob@y"), 0);
  cr_assert_eq(store_roster_delete(s, "alice@x", "bob@y"), XMPP_ENOENT);
  cr_assert_eq(store_roster_delete(s, "nobody@x", "bob@y"), XMPP_ENOENT);
  roster_t r = load(s, "alice@x");
  cr_assert_eq(r.n, 1);
  cr_assert_str_eq(r.it[0].jid, "carol@y");
  cr_assert_eq(r.it[0].ngroups, 1);
  SQLITE_ONLY(cr_assert_eq(raw_int("SELECT count(*) FROM roster_groups"), 1));
  store_close(s);
}

STORE_TEST(roster_needs_account) {
  store_t *s = open_db();
  store_roster_item_t it = {.jid = "bob@y", .sub = SUB_BOTH};
  cr_assert_eq(store_roster_put(s, "ghost@x", &it), XMPP_ENOENT);
  cr_assert_eq(raw_roster_count("ghost@x"), 0);
  store_close(s);
}

/* ---- offline -------------------------------------------------------------------------- */

typedef struct {
  char msgs[16][64];
  size_t lens[16];
  int64_t stamps[16];
  int64_t ids[16];
  int n;
  store_t *self;  /* for the re-entrancy checks */
  store_t *other; /* a second handle on the same file */
  int reentrant_rc, other_count, close_self;
} popped_t;

static void pop_cb(int64_t id, const char *xml, size_t len, int64_t stamp, void *ud) {
  popped_t *p = ud;
  cr_assert_lt(p->n, 16);
  if (p->n) cr_assert_gt(id, p->ids[p->n - 1], "ids ascend");
  p->ids[p->n] = id;
  cr_assert_eq(xml[len], '\0', "xml is NUL-terminated");
  cr_assert_lt(len, sizeof p->msgs[0]);
  memcpy(p->msgs[p->n], xml, len);
  p->lens[p->n] = len;
  p->stamps[p->n] = stamp;
  p->n++;
  if (p->self) p->reentrant_rc = store_offline_count(p->self, "alice@x");
  if (p->other) p->other_count = store_offline_count(p->other, "alice@x");
  if (p->close_self) store_close(p->self);
}

static void push(store_t *s, const char *who, const char *xml, unsigned max, int want) {
  cr_assert_eq(store_offline_push(s, who, xml, strlen(xml), max, 0), want, "push %s", xml);
}

/* The whole queue, as delivery takes it: read (nothing removed), then removed up to the
 * last id read. 0 or the error. */
static int pop_all(store_t *s, const char *bare, store_offline_cb cb, popped_t *p) {
  int n0 = p ? p->n : 0;
  int n = store_offline_peek(s, bare, 0, 16, 0, cb, p);
  if (n < 0) return n;
  if (p) cr_assert_eq(p->n - n0, n, "peek counts what it gave");
  if (n == 0) return 0;
  return store_offline_remove(s, bare, p->ids[p->n - 1]);
}

STORE_TEST(offline_count_many) {
  store_t *s = open_db();
  enum { N = 30 };
  static char names[N][32];
  const char *bares[N];
  int counts[N];
  mk_users(s, names, bares, N, "x", NULL);
  for (int i = 0; i < N; i++)
    for (int k = 0; k < i % 4; k++) push(s, names[i], "<m/>", 0, 0);
  bares[5] = "nobody@x";
  cr_assert_eq(store_offline_count_many(s, bares, N, counts), 0);
  for (int i = 0; i < N; i++) cr_assert_eq(counts[i], i == 5 ? 0 : i % 4, "user %d: %d", i, counts[i]);
  cr_assert_eq(store_offline_count_many(s, bares, 0, NULL), 0);
  const char *bad[] = {"a@x", ""};
  cr_assert_eq(store_offline_count_many(s, bad, 2, counts), XMPP_EINVAL);
  store_close(s);
}

STORE_TEST(offline_order_and_pop) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  cr_assert_eq(store_offline_count(s, "alice@x"), 0);
  time_t t0 = time(NULL);
  char m[32];
  for (int i = 0; i < 5; i++) {
    snprintf(m, sizeof m, "<message id='%d'/>", i);
    push(s, "alice@x", m, 0, 0);
  }
  push(s, "bob@x", "<message id='b'/>", 0, 0);
  cr_assert_eq(store_offline_count(s, "alice@x"), 5);
  cr_assert_eq(store_offline_count(s, "bob@x"), 1);
  cr_assert_eq(store_offline_count(s, "nobody@x"), 0);

  popped_t p = {0};
  cr_assert_eq(pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 5);
  for (int i = 0; i < 5; i++) {
    snprintf(m, sizeof m, "<message id='%d'/>", i);
    cr_assert_str_eq(p.msgs[i], m);
    cr_assert_eq(p.lens[i], strlen(m));
    cr_assert_geq(p.stamps[i], (int64_t)t0);
    cr_assert_leq(p.stamps[i], (int64_t)time(NULL));
  }
  cr_assert_eq(store_offline_count(s, "alice@x"), 0);
  cr_assert_eq(store_offline_count(s, "bob@x"), 1);

  memset(&p, 0, sizeof p);
  cr_assert_eq(pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 0);

  /* After a pop, new messages queue again, still in order. */
  push(s, "alice@x", "<x/>", 0, 0);
  push(s, "alice@x", "<y/>", 0, 0);
  cr_assert_eq(pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 2);
  cr_assert_str_eq(p.msgs[0], "<x/>");
  cr_assert_str_eq(p.msgs[1], "<y/>");
  store_close(s);
}

STORE_TEST(offline_binary_exact) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  const char raw[] = {'<', 'a', '>', '\0', '\xff', '<', '/', 'a', '>'};
  cr_assert_eq(store_offline_push(s, "alice@x", raw, sizeof raw, 0, 0), 0);
  cr_assert_eq(store_offline_push(s, "alice@x", "", 0, 0, 0), 0);
  popped_t p = {0};
  cr_assert_eq(pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 2);
  cr_assert_eq(p.lens[0], sizeof raw);
  cr_assert_eq(memcmp(p.msgs[0], raw, sizeof raw), 0);
  cr_assert_eq(p.lens[1], 0);
  store_close(s);
}

STORE_TEST(offline_limit) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  push(s, "alice@x", "<1/>", 3, 0);
  push(s, "alice@x", "<2/>", 3, 0);
  push(s, "alice@x", "<3/>", 3, 0);
  push(s, "alice@x", "<4/>", 3, XMPP_ELIMIT);
  push(s, "alice@x", "<5/>", 1, XMPP_ELIMIT); /* already above a smaller limit */
  cr_assert_eq(store_offline_count(s, "alice@x"), 3);
  push(s, "bob@x", "<b/>", 3, 0); /* the limit is per user */
  push(s, "alice@x", "<6/>", 4, 0);
  push(s, "alice@x", "<7/>", 0, 0); /* 0: unlimited */
  cr_assert_eq(store_offline_count(s, "alice@x"), 5);

  popped_t p = {0};
  cr_assert_eq(pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 5);
  cr_assert_str_eq(p.msgs[0], "<1/>");
  cr_assert_str_eq(p.msgs[3], "<6/>");
  cr_assert_str_eq(p.msgs[4], "<7/>");
  push(s, "alice@x", "<8/>", 1, 0); /* room again */
  push(s, "alice@x", "<9/>", 1, XMPP_ELIMIT);
  store_close(s);
}

/* Delivery reads windows: by count, by bytes (the first always), after an id; nothing is
 * removed until store_offline_remove, which takes exactly the ids up to its argument. */
STORE_TEST(offline_peek_windows_and_remove) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  char m[64];
  for (int i = 0; i < 10; i++) {
    snprintf(m, sizeof m, "<m%d>%s</m%d>", i, i == 5 ? "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" : "", i);
    push(s, "alice@x", m, 0, 0);
  }
  popped_t p = {0};
  cr_assert_eq(store_offline_peek(s, "alice@x", 0, 3, 0, pop_cb, &p), 3); /* by count */
  cr_assert_str_eq(p.msgs[0], "<m0></m0>");
  cr_assert_str_eq(p.msgs[2], "<m2></m2>");
  cr_assert_eq(store_offline_count(s, "alice@x"), 10, "peek removes nothing");
  memset(&p, 0, sizeof p);
  /* 9 bytes each: a window of 20 bytes ends with the message that reaches it */
  cr_assert_eq(store_offline_peek(s, "alice@x", 0, 16, 20, pop_cb, &p), 3);
  memset(&p, 0, sizeof p);
  cr_assert_eq(store_offline_peek(s, "alice@x", 0, 16, 18, pop_cb, &p), 2);
  memset(&p, 0, sizeof p);
  cr_assert_eq(store_offline_peek(s, "alice@x", 0, 16, 1, pop_cb, &p), 1, "the first is always given");
  int64_t first = p.ids[0];
  memset(&p, 0, sizeof p);
  cr_assert_eq(store_offline_peek(s, "alice@x", 0, 16, 0, pop_cb, &p), 10);
  int64_t ids[10];
  memcpy(ids, p.ids, sizeof ids);
  cr_assert_eq(ids[0], first);
  /* after an id */
  memset(&p, 0, sizeof p);
  cr_assert_eq(store_offline_peek(s, "alice@x", ids[4], 2, 0, pop_cb, &p), 2);
  cr_assert_eq(p.ids[0], ids[5]);
  cr_assert_eq(p.lens[0], strlen("<m5></m5>") + 32);
  /* a message larger than the window is still given, alone */
  memset(&p, 0, sizeof p);
  cr_assert_eq(store_offline_peek(s, "alice@x", ids[4], 16, 10, pop_cb, &p), 1);
  /* remove up to an id, exactly */
  cr_assert_eq(store_offline_remove(s, "alice@x", ids[3]), 0);
  cr_assert_eq(store_offline_count(s, "alice@x"), 6);
  memset(&p, 0, sizeof p);
  cr_assert_eq(store_offline_peek(s, "alice@x", 0, 16, 0, pop_cb, &p), 6);
  cr_assert_eq(p.ids[0], ids[4]);
  cr_assert_eq(store_offline_remove(s, "alice@x", ids[3]), 0, "again: nothing more removed");
  cr_assert_eq(store_offline_count(s, "alice@x"), 6);
  cr_assert_eq(store_offline_remove(s, "alice@x", ids[9]), 0);
  cr_assert_eq(store_offline_count(s, "alice@x"), 0);
  memset(&p, 0, sizeof p);
  cr_assert_eq(store_offline_peek(s, "alice@x", 0, 16, 0, pop_cb, &p), 0);
  /* ids are never reused */
  push(s, "alice@x", "<n/>", 0, 0);
  cr_assert_eq(store_offline_peek(s, "alice@x", 0, 16, 0, pop_cb, &p), 1);
  cr_assert_gt(p.ids[0], ids[9]);
  store_close(s);
}

/* The byte limit: a push that would take the queue past it is refused; removing makes
 * room again (the count of bytes follows the removals). */
STORE_TEST(offline_byte_limit) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  const char *ten = "0123456789";
  for (int i = 0; i < 3; i++) cr_assert_eq(store_offline_push(s, "alice@x", ten, 10, 0, 30), 0);
  cr_assert_eq(store_offline_push(s, "alice@x", "x", 1, 0, 30), XMPP_ELIMIT, "31 > 30");
  cr_assert_eq(store_offline_push(s, "alice@x", ten, 10, 0, 40), 0, "40 <= 40");
  cr_assert_eq(store_offline_push(s, "alice@x", "x", 1, 0, 40), XMPP_ELIMIT);
  cr_assert_eq(store_offline_push(s, "bob@x", ten, 10, 0, 10), 0, "per user");
  cr_assert_eq(store_offline_push(s, "alice@x", "x", 1, 5, 0), 0, "0: no byte limit");
  popped_t p = {0};
  cr_assert_eq(store_offline_peek(s, "alice@x", 0, 2, 0, pop_cb, &p), 2);
  cr_assert_eq(store_offline_remove(s, "alice@x", p.ids[1]), 0);
  /* 10 + 10 + 1 left */
  cr_assert_eq(store_offline_push(s, "alice@x", ten, 10, 0, 31), 0);
  cr_assert_eq(store_offline_push(s, "alice@x", "x", 1, 0, 31), XMPP_ELIMIT);
  store_close(s);
}

STORE_TEST(offline_needs_account) {
  store_t *s = open_db();
  push(s, "ghost@x", "<m/>", 0, XMPP_ENOENT);
  push(s, "ghost@x", "<m/>", 10, XMPP_ENOENT);
  cr_assert_eq(raw_offline_count("ghost@x"), 0);
  store_close(s);
}

STORE_TEST(pop_deletes_after_callbacks) {
  store_t *s = open_db(), *s2 = open_db();
  add_user(s, "alice@x", 1);
  push(s, "alice@x", "<1/>", 0, 0);
  push(s, "alice@x", "<2/>", 0, 0);
  popped_t p = {.self = s, .other = s2, .other_count = -1};
  cr_assert_eq(pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 2);
  /* Inside the callback the same handle refuses to be re-entered... */
  cr_assert_eq(p.reentrant_rc, XMPP_EINVAL);
  /* ...and another connection still sees the messages: nothing deleted yet. */
  cr_assert_eq(p.other_count, 2);
  cr_assert_eq(store_offline_count(s2, "alice@x"), 0);
  cr_assert_eq(store_offline_count(s, "alice@x"), 0); /* handle usable again */
  store_close(s2);
  store_close(s);
}

STORE_TEST(close_from_callback_is_deferred) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  push(s, "alice@x", "<1/>", 0, 0);
  push(s, "alice@x", "<2/>", 0, 0);
  popped_t p = {.self = s, .close_self = 1};
  /* The handle is closed when pop_all returns (ASan would flag a use after free). */
  cr_assert_eq(store_offline_peek(s, "alice@x", 0, 16, 0, pop_cb, &p), 2);
  cr_assert_eq(p.n, 2);
  s = open_db();
  cr_assert_eq(store_offline_count(s, "alice@x"), 2, "a peek removes nothing");
  store_close(s);
}

/* A process that dies inside the pop callbacks must not lose the queue. */
static void die_cb(int64_t id, const char *xml, size_t len, int64_t stamp, void *ud) { _exit(42); }

STORE_TEST(crash_during_pop_keeps_messages) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  push(s, "alice@x", "<1/>", 0, 0);
  push(s, "alice@x", "<2/>", 0, 0);
  store_close(s);
  fflush(NULL);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    char *err = NULL;
    store_t *c = store_open(g_backend, g_target, &err);
    if (!c) _exit(1);
    store_offline_peek(c, "alice@x", 0, 16, 0, die_cb, NULL);
    _exit(2);
  }
  int st = 0;
  cr_assert_eq(waitpid(pid, &st, 0), pid);
  cr_assert(WIFEXITED(st));
  cr_assert_eq(WEXITSTATUS(st), 42);
  s = open_db();
  cr_assert_eq(store_offline_count(s, "alice@x"), 2);
  popped_t p = {0};
  cr_assert_eq(pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 2);
  cr_assert_str_eq(p.msgs[0], "<1/>");
  store_close(s);
}

/* ---- cascades, several handles, persistence ------------------------------------------- */

STORE_TEST(delete_cascades) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  const char *g[] = {"G"};
  store_roster_item_t it = {.jid = "carol@y", .sub = SUB_BOTH, .groups = g, .ngroups = 1};
  cr_assert_eq(store_roster_put(s, "alice@x", &it), 0);
  cr_assert_eq(store_roster_put(s, "bob@x", &it), 0);
  push(s, "alice@x", "<a/>", 0, 0);
  push(s, "bob@x", "<b/>", 0, 0);

  cr_assert_eq(store_account_delete(s, "alice@x"), 0);
  cr_assert_eq(raw_roster_count("alice@x"), 0);
  SQLITE_ONLY(cr_assert_eq(raw_int("SELECT count(*) FROM roster_groups WHERE owner = 'alice@x'"), 0));
  cr_assert_eq(raw_offline_count("alice@x"), 0);
  if (IS_REDIS) /* nothing of alice's is left in Redis */
    cr_assert_eq(rint_cmd("EXISTS {u:alice@x}:a {u:alice@x}:r {u:alice@x}:o"), 0);
  /* bob untouched */
  cr_assert_eq(raw_roster_count("bob@x"), 1);
  SQLITE_ONLY(cr_assert_eq(raw_int("SELECT count(*) FROM roster_groups WHERE owner = 'bob@x'"), 1));
  cr_assert_eq(store_offline_count(s, "bob@x"), 1);

  /* A new account with the same name starts empty. */
  add_user(s, "alice@x", 3);
  cr_assert_eq(load(s, "alice@x").n, 0);
  cr_assert_eq(store_offline_count(s, "alice@x"), 0);
  store_close(s);
}

STORE_TEST(two_handles_see_each_other) {
  store_t *a = open_db(), *b = open_db();
  add_user(a, "alice@x", 1);
  cr_assert_eq(store_account_exists(b, "alice@x"), 1);
  store_account_t got, want = mk_acct(9);
  cr_assert_eq(store_account_update(b, "alice@x", &want), 0);
  cr_assert_eq(store_account_get(a, "alice@x", &got), 0);
  expect_acct(&got, &want);
  store_account_t dup = mk_acct(4);
  cr_assert_eq(store_account_create(b, "alice@x", &dup), XMPP_EEXIST);

  const char *g[] = {"Team"};
  store_roster_item_t it = {.jid = "bob@y", .name = "B", .sub = SUB_TO, .groups = g,
                            .ngroups = 1};
  cr_assert_eq(store_roster_put(b, "alice@x", &it), 0);
  roster_t r = load(a, "alice@x");
  cr_assert_eq(r.n, 1);
  cr_assert_str_eq(r.it[0].groups[0], "Team");

  push(a, "alice@x", "<1/>", 0, 0);
  push(b, "alice@x", "<2/>", 2, 0);
  push(a, "alice@x", "<3/>", 2, XMPP_ELIMIT); /* the limit counts the other's push */
  cr_assert_eq(store_offline_count(b, "alice@x"), 2);
  popped_t p = {0};
  cr_assert_eq(pop_all(b, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 2);
  cr_assert_str_eq(p.msgs[0], "<1/>");
  cr_assert_str_eq(p.msgs[1], "<2/>");
  cr_assert_eq(store_offline_count(a, "alice@x"), 0);

  cr_assert_eq(store_account_delete(a, "alice@x"), 0);
  cr_assert_eq(store_account_exists(b, "alice@x"), 0);
  cr_assert_eq(load(b, "alice@x").n, 0);
  store_close(a);
  store_close(b);
}

/* Real threads, each with its own handle, racing against one per-user limit. */
#define NTHREADS 4
#define PER_THREAD 50
#define LIMIT 120

typedef struct {
  int ok, limited, other;
} race_t;

static void *racer(void *arg) {
  race_t *r = arg;
  store_t *s = store_open(g_backend, g_target, NULL);
  if (!s) {
    r->other = -1;
    return NULL;
  }
  for (int i = 0; i < PER_THREAD; i++) {
    int rc = store_offline_push(s, "alice@x", "<m/>", 4, LIMIT, 0);
    if (rc == 0)
      r->ok++;
    else if (rc == XMPP_ELIMIT)
      r->limited++;
    else
      r->other++;
  }
  store_close(s);
  return NULL;
}

STORE_TEST(threads_respect_limit, .timeout = 60) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  pthread_t th[NTHREADS];
  race_t res[NTHREADS];
  memset(res, 0, sizeof res);
  for (int i = 0; i < NTHREADS; i++) cr_assert_eq(pthread_create(&th[i], NULL, racer, &res[i]), 0);
  int ok = 0, limited = 0;
  for (int i = 0; i < NTHREADS; i++) {
    cr_assert_eq(pthread_join(th[i], NULL), 0);
    cr_assert_eq(res[i].other, 0, "thread %d got unexpected errors", i);
    ok += res[i].ok;
    limited += res[i].limited;
  }
  cr_assert_eq(ok, LIMIT);
  cr_assert_eq(limited, NTHREADS * PER_THREAD - LIMIT);
  cr_assert_eq(store_offline_count(s, "alice@x"), LIMIT);
  store_close(s);
}

STORE_TEST(reopen_persists) {
  store_t *s = open_db();
  store_account_t a = mk_acct(7);
  cr_assert_eq(store_account_create(s, "alice@x", &a), 0);
  const char *g[] = {"x,y", "\xe2\x9c\x93"};
  store_roster_item_t it = {.jid = "bob@y", .name = "Bob", .sub = SUB_FROM, .ask_out = 1,
                            .groups = g, .ngroups = 2};
  cr_assert_eq(store_roster_put(s, "alice@x", &it), 0);
  push(s, "alice@x", "<persist/>", 0, 0);
  store_close(s);

  s = open_db();
  store_account_t got;
  cr_assert_eq(store_account_get(s, "alice@x", &got), 0);
  expect_acct(&got, &a);
  roster_t r = load(s, "alice@x");
  cr_assert_eq(r.n, 1);
  cr_assert_str_eq(r.it[0].name, "Bob");
  cr_assert_eq(r.it[0].sub, SUB_FROM);
  cr_assert_eq(r.it[0].ask_out, 1);
  cr_assert_eq(r.it[0].ngroups, 2);
  cr_assert_str_eq(r.it[0].groups[0], "x,y");
  cr_assert_str_eq(r.it[0].groups[1], "\xe2\x9c\x93");
  popped_t p = {0};
  cr_assert_eq(pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 1);
  cr_assert_str_eq(p.msgs[0], "<persist/>");
  store_close(s);
}

/* Server start-up: every thread opens its own handle on a file that does not exist yet. */
#define NOPENERS 8
static pthread_barrier_t g_bar;

typedef struct {
  int idx, rc;
} opener_t;

static void *opener(void *arg) {
  opener_t *o = arg;
  pthread_barrier_wait(&g_bar);
  store_t *s = store_open(g_backend, g_target, NULL);
  if (!s) {
    o->rc = -100;
    return NULL;
  }
  char jid[32];
  snprintf(jid, sizeof jid, "u%d@x", o->idx);
  store_account_t a = mk_acct((unsigned)o->idx);
  o->rc = store_account_create(s, jid, &a);
  store_close(s);
  return NULL;
}

STORE_TEST(threads_open_new_file_concurrently, .timeout = 60) {
  pthread_t th[NOPENERS];
  opener_t o[NOPENERS];
  cr_assert_eq(pthread_barrier_init(&g_bar, NULL, NOPENERS), 0);
  for (int i = 0; i < NOPENERS; i++) {
    o[i].idx = i;
    o[i].rc = -99;
    cr_assert_eq(pthread_create(&th[i], NULL, opener, &o[i]), 0);
  }
  for (int i = 0; i < NOPENERS; i++) cr_assert_eq(pthread_join(th[i], NULL), 0);
  pthread_barrier_destroy(&g_bar);
  for (int i = 0; i < NOPENERS; i++) cr_assert_eq(o[i].rc, 0, "thread %d: %d", i, o[i].rc);
  store_t *s = open_db();
  list_t l = {0};
  cr_assert_eq(store_account_list(s, list_cb, &l), 0);
  cr_assert_eq(l.n, NOPENERS);
  SQLITE_ONLY(cr_assert_eq(raw_int("PRAGMA user_version"), 10));
  store_close(s);
}

/* store_batch_begin/end (xmppctl populate): many writes in one transaction, including the
 * calls that otherwise open their own (roster put); rollback drops them all. */
STORE_TEST(batch_commit_and_rollback) {
  store_t *s = open_db();
  store_account_t a = mk_acct(7);
  cr_assert_eq(store_batch_begin(s), 0);
  cr_assert_neq(store_batch_begin(s), 0, "batches do not nest");
  char jid[64], other[64];
  for (int i = 0; i < 100; i++) {
    snprintf(jid, sizeof jid, "b%d@localhost", i);
    cr_assert_eq(store_account_create(s, jid, &a), 0);
  }
  for (int i = 0; i < 100; i++) {
    snprintf(jid, sizeof jid, "b%d@localhost", i);
    snprintf(other, sizeof other, "b%d@localhost", i ^ 1);
    store_roster_item_t it = {.jid = other, .sub = SUB_BOTH};
    cr_assert_eq(store_roster_put(s, jid, &it), 0);
  }
  cr_assert_eq(store_account_create(s, "b5@localhost", &a), XMPP_EEXIST);
  cr_assert_eq(store_batch_end(s, 1), 0);
  cr_assert_eq(raw_account_count(), 100);
  SQLITE_ONLY(cr_assert_eq(raw_int("SELECT count(*) FROM roster WHERE sub = 3"), 100));
  long long items = 0;
  for (int i = 0; i < 100; i++) {
    snprintf(jid, sizeof jid, "b%d@localhost", i);
    items += raw_roster_count(jid);
  }
  cr_assert_eq(items, 100);
  cr_assert_eq(load(s, "b7@localhost").it[0].sub, SUB_BOTH);

  cr_assert_eq(store_batch_begin(s), 0);
  cr_assert_eq(store_account_create(s, "gone@localhost", &a), 0);
  store_roster_item_t it = {.jid = "b1@localhost", .sub = SUB_TO};
  cr_assert_eq(store_roster_put(s, "gone@localhost", &it), 0);
  cr_assert_eq(store_batch_end(s, 0), 0);
  cr_assert_eq(store_account_exists(s, "gone@localhost"), 0);
  cr_assert_eq(raw_roster_count("gone@localhost"), 0);
  cr_assert_eq(raw_account_count(), 100);
  cr_assert_neq(store_batch_end(s, 1), 0, "no batch open");
  /* normal calls work again after a batch */
  cr_assert_eq(store_account_create(s, "after@localhost", &a), 0);
  cr_assert_eq(store_account_exists(s, "after@localhost"), 1);
  store_close(s);
}

/* ---- Redis only: addresses, key layout, the account index, outages ---------------------- */

Test(store_redis, open_errors) {
  char *err = NULL;
  char t[160];
  /* Nothing listens there (the port was free a moment ago). */
  snprintf(t, sizeof t, "127.0.0.1:%d", free_port());
  cr_assert_null(store_open("redis", t, &err));
  cr_assert_not_null(err);
  cr_assert_not_null(strstr(err, "refused"), "%s", err);
  xfree(err);
  const char *bad[] = {"127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:x", ":6379", "unix:",
                       "[::1", "127.0.0.1:6379 db=-1", "127.0.0.1:6379 nonsense=1"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err = NULL;
    cr_assert_null(store_open("redis", bad[i], &err), "%s", bad[i]);
    cr_assert_not_null(err, "%s", bad[i]);
    xfree(err);
  }
  /* A password never appears in a message. */
  err = NULL;
  snprintf(t, sizeof t, "127.0.0.1:%d password=hunter2", free_port());
  cr_assert_null(store_open("redis", t, &err));
  cr_assert_null(strstr(err, "hunter2"), "%s", err);
  xfree(err);
  err = NULL;
  snprintf(t, sizeof t, "unix:%s/no.sock", g_dir);
  cr_assert_null(store_open("redis", t, &err));
  xfree(err);
}

Test(store_redis, password_and_db) {
  freeReplyObject(rcmd("CONFIG SET requirepass s3cret"));
  char t[160], *err = NULL;
  snprintf(t, sizeof t, "127.0.0.1:%d", g_redis_port);
  cr_assert_null(store_open("redis", t, &err), "no password: refused");
  cr_assert_not_null(err);
  xfree(err);
  snprintf(t, sizeof t, "127.0.0.1:%d  db=3\tpassword=s3cret", g_redis_port);
  store_t *s = store_open("redis", t, &err);
  cr_assert_not_null(s, "%s", err ? err : "?");
  add_user(s, "alice@x", 1);
  cr_assert_eq(store_account_exists(s, "alice@x"), 1);
  store_close(s);
  freeReplyObject(rcmd("SELECT 3"));
  cr_assert_eq(rint_cmd("EXISTS {u:alice@x}:a"), 1);
  freeReplyObject(rcmd("SELECT 0"));
  cr_assert_eq(rint_cmd("EXISTS {u:alice@x}:a"), 0);
}

static void type_is(const char *key, const char *type) {
  redisReply *r = rcmd("TYPE %s", key);
  cr_assert_str_eq(r->str, type, "%s", key);
  freeReplyObject(r);
}

/* Every key of one user shares the hash tag {u:JID}: one Cluster slot, so the scripts'
 * multi-key operations are legal on a Redis Cluster. */
Test(store_redis, key_layout) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  store_roster_item_t it = {.jid = "bob@y", .sub = SUB_BOTH};
  cr_assert_eq(store_roster_put(s, "alice@x", &it), 0);
  push(s, "alice@x", "<m/>", 0, 0);
  redisReply *k = rcmd("KEYS *");
  cr_assert_eq(k->elements, 7, "account, roster, offline, index, layout, domain set, its backfill mark");
  freeReplyObject(k);
  type_is("{d:x}:n", "set");
  type_is("{u:alice@x}:a", "hash");
  type_is("{u:alice@x}:r", "hash");
  type_is("{u:alice@x}:o", "list");
  type_is("accounts", "zset");
  cr_assert_eq(rint_cmd("GET xmppd:layout"), 1);
  cr_assert_eq(rint_cmd("ZSCORE accounts alice@x"), 0);
  cr_assert_eq(rint_cmd("HEXISTS {u:alice@x}:r bob@y"), 1);
  /* credentials only: no field that could hold a password */
  redisReply *f = rcmd("HKEYS {u:alice@x}:a");
  for (size_t i = 0; i < f->elements; i++)
    cr_assert(strncmp(f->element[i]->str, "sha1_", 5) == 0 ||
                  strncmp(f->element[i]->str, "sha256_", 7) == 0 ||
                  strcmp(f->element[i]->str, "created") == 0 ||
                  strcmp(f->element[i]->str, "offline_seq") == 0 ||
                  strcmp(f->element[i]->str, "offline_bytes") == 0 ||
                  strcmp(f->element[i]->str, "roster_ver") == 0,
              "field %s", f->element[i]->str);
  freeReplyObject(f);
  store_close(s);
}

typedef struct {
  char *prev;
  int n;
} seen_t;

static void count_cb(const char *bare, void *ud) {
  seen_t *st = ud;
  if (st->prev)
    cr_assert_lt(strcmp(st->prev, bare), 0, "sorted, no duplicates: %s %s", st->prev, bare);
  cr_assert(strstr(bare, "gone") == NULL && strstr(bare, "ghost") == NULL, "%s", bare);
  xfree(st->prev);
  st->prev = xstrdup(bare);
  st->n++;
}

/* The index is paged (ZRANGEBYLEX, no KEYS) and may hold members whose account is gone
 * (a crash between the two steps of a delete): list skips them. */
Test(store_redis, list_pages_and_skips_stale_index) {
  store_t *s = open_db();
  store_account_t a = mk_acct(1);
  cr_assert_eq(store_batch_begin(s), 0);
  char jid[32];
  for (int i = 0; i < 1100; i++) {
    snprintf(jid, sizeof jid, "u%04d@x", i);
    cr_assert_eq(store_account_create(s, jid, &a), 0);
  }
  cr_assert_eq(store_batch_end(s, 1), 0);
  freeReplyObject(rcmd("ZADD accounts 0 ghost@x 0 u0512-gone@x"));
  seen_t st = {NULL, 0};
  cr_assert_eq(store_account_list(s, count_cb, &st), 0);
  cr_assert_eq(st.n, 1100);
  cr_assert_str_eq(st.prev, "u1099@x");
  xfree(st.prev);
  store_close(s);
}

/* Inside a batch, failures only Redis can see are reported by store_batch_end. */
Test(store_redis, batch_reports_at_flush) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  push(s, "alice@x", "<1/>", 0, 0);
  cr_assert_eq(store_batch_begin(s), 0);
  cr_assert_eq(store_account_create(s, "alice@x", &(store_account_t){0}), XMPP_EINVAL);
  store_account_t a = mk_acct(2);
  cr_assert_eq(store_account_create(s, "alice@x", &a), XMPP_EEXIST); /* asked of Redis */
  cr_assert_eq(store_account_update(s, "nobody@x", &a), XMPP_ENOENT);
  cr_assert_eq(store_account_delete(s, "nobody@x"), XMPP_ENOENT);
  cr_assert_eq(store_offline_push(s, "alice@x", "<2/>", 4, 1, 0), 0); /* queued */
  cr_assert_eq(store_account_create(s, "bob@x", &a), 0);
  cr_assert_eq(store_batch_end(s, 1), XMPP_ELIMIT);
  cr_assert_eq(store_offline_count(s, "alice@x"), 1, "the limit held");
  cr_assert_eq(store_account_exists(s, "bob@x"), 1, "the rest of the batch was applied");
  cr_assert_eq(store_batch_begin(s), 0);
  cr_assert_eq(store_account_delete(s, "bob@x"), 0);
  cr_assert_eq(store_account_exists(s, "bob@x"), 0, "the batch's own delete is seen");
  cr_assert_eq(store_account_create(s, "bob@x", &a), 0);
  cr_assert_eq(store_account_create(s, "bob@x", &a), XMPP_EEXIST);
  cr_assert_eq(store_batch_end(s, 1), 0);
  cr_assert_eq(store_account_exists(s, "bob@x"), 1);
  store_close(s);
}

/* Redis goes away and comes back (with its AOF): calls fail with XMPP_EIO meanwhile,
 * then the same handle reconnects by itself and finds the data. */
/* Redis's count of read events on client connections (INFO stats). */
static long long redis_reads(void) {
  redisReply *r = rcmd("INFO stats");
  const char *p = strstr(r->str, "total_reads_processed:");
  cr_assert_not_null(p, "INFO stats has no total_reads_processed");
  long long n = atoll(p + strlen("total_reads_processed:"));
  freeReplyObject(r);
  return n;
}

/* The point of get_many: a batch of log-ins is one round trip, not one per account.
 * Redis counts the reads it did: 300 accounts one by one take >= 300 of them. */
Test(store_redis, account_get_many_is_one_round_trip) {
  store_t *s = open_db();
  enum { N = 300 };
  static char names[N][32];
  const char *bares[N];
  static store_account_t got[N];
  int rcs[N];
  mk_users(s, names, bares, N, "example.net", NULL);
  long long before = redis_reads();
  cr_assert_eq(store_account_get_many(s, bares, N, got, rcs), 0);
  long long during = redis_reads() - before - 1; /* less our own INFO */
  for (int i = 0; i < N; i++) cr_assert_eq(rcs[i], 0);
  cr_assert_lt(during, 20, "%lld reads for %d accounts", during, N);
  before = redis_reads();
  for (int i = 0; i < N; i++) cr_assert_eq(store_account_get(s, bares[i], &got[i]), 0);
  cr_assert_geq(redis_reads() - before - 1, N); /* the baseline the batch saves */
  /* rosters too */
  static rosters_t m;
  memset(&m, 0, sizeof m);
  before = redis_reads();
  cr_assert_eq(store_roster_load_many(s, bares, 40, roster_many_cb, &m, rcs), 0);
  cr_assert_lt(redis_reads() - before - 1, 5);
  /* and offline queue lengths */
  before = redis_reads();
  cr_assert_eq(store_offline_count_many(s, bares, N, rcs), 0);
  cr_assert_lt(redis_reads() - before - 1, 10);
  for (int i = 0; i < N; i++) cr_assert_eq(rcs[i], 0);
  /* after a restart the batch reconnects by itself */
  redis_stop();
  redis_start(0);
  for (int i = 0; i < N; i++) rcs[i] = 0;
  cr_assert_eq(store_account_get_many(s, bares, 3, got, rcs), 0);
  cr_assert_eq(rcs[0], XMPP_ENOENT); /* a new, empty Redis (no AOF): absent, not an error */
  store_close(s);
}

Test(store_redis, outage_then_reconnect_with_aof, .timeout = 60) {
  redis_stop();
  redis_start(1); /* appendonly yes, appendfsync always */
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  push(s, "alice@x", "<kept/>", 0, 0);
  redis_stop();
  store_account_t got;
  cr_assert_eq(store_account_get(s, "alice@x", &got), XMPP_EIO);
  cr_assert_eq(store_account_exists(s, "alice@x"), XMPP_EIO);
  push(s, "alice@x", "<lost/>", 0, XMPP_EIO);
  cr_assert_eq(store_offline_count(s, "alice@x"), XMPP_EIO);
  redis_start(1); /* same port, same directory: the AOF is replayed */
  cr_assert_eq(store_account_get(s, "alice@x", &got), 0);
  store_account_t want = mk_acct(1);
  expect_acct(&got, &want);
  popped_t p = {0};
  cr_assert_eq(pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 1);
  cr_assert_str_eq(p.msgs[0], "<kept/>");
  /* A restart while the handle is idle: its dead connection is noticed before a write
   * is sent on it, so even the first write after the restart succeeds. */
  redis_stop();
  redis_start(1);
  push(s, "alice@x", "<after/>", 0, 0);
  cr_assert_eq(store_offline_count(s, "alice@x"), 1);
  store_close(s);
}

/* ---- documents (store_doc_*: vCards, private XML, last activity) ------------------------ */

/* What a document costs its account (store.h). */
static int64_t doc_cost(const char *kind, const char *key, size_t len) {
  return (int64_t)(strlen(kind) + 1 + strlen(key) + len);
}

static void expect_doc(store_t *s, const char *bare, const char *kind, const char *key, const void *want,
                       size_t want_len) {
  char *got = NULL;
  size_t n = 0;
  cr_assert_eq(store_doc_get(s, bare, kind, key, &got, &n), 0, "%s %s/%s", bare, kind, key);
  cr_assert_eq(n, want_len);
  cr_assert_eq(memcmp(got, want, n), 0);
  cr_assert_eq(got[n], '\0');
  xfree(got);
}

static int doc_absent(store_t *s, const char *bare, const char *kind, const char *key) {
  char *got = (char *)1;
  size_t n = 9;
  int rc = store_doc_get(s, bare, kind, key, &got, &n);
  cr_assert(got == NULL && n == 0, "nothing given back on %d", rc);
  return rc == XMPP_ENOENT;
}

STORE_TEST(doc_put_get_replace_delete) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  static const char bin[] = "a\0b\xff\n<c/>";
  cr_assert(doc_absent(s, "alice@x", "vcard", ""));
  cr_assert_eq(store_doc_put(s, "alice@x", "vcard", "", bin, sizeof bin, 0), 0);
  expect_doc(s, "alice@x", "vcard", "", bin, sizeof bin);
  /* kinds and keys are separate documents; a key may be any text, empty included */
  cr_assert_eq(store_doc_put(s, "alice@x", "private", "storage storage:bookmarks", "B", 1, 0), 0);
  cr_assert_eq(store_doc_put(s, "alice@x", "private", "storage storage:rosternotes", "N", 1, 0), 0);
  cr_assert_eq(store_doc_put(s, "alice@x", "vcardx", "", "X", 1, 0), 0);
  expect_doc(s, "alice@x", "private", "storage storage:bookmarks", "B", 1);
  expect_doc(s, "alice@x", "private", "storage storage:rosternotes", "N", 1);
  expect_doc(s, "alice@x", "vcard", "", bin, sizeof bin);
  /* "vcard" + key "x" is not "vcardx" + key "" (the field is KIND\0KEY) */
  cr_assert(doc_absent(s, "alice@x", "vcard", "x"));
  /* another account sees none of them */
  cr_assert(doc_absent(s, "bob@x", "vcard", ""));
  cr_assert(doc_absent(s, "bob@x", "private", "storage storage:bookmarks"));
  /* replace: shorter, empty */
  cr_assert_eq(store_doc_put(s, "alice@x", "vcard", "", "v2", 2, 0), 0);
  expect_doc(s, "alice@x", "vcard", "", "v2", 2);
  cr_assert_eq(store_doc_put(s, "alice@x", "vcard", "", NULL, 0, 0), 0);
  expect_doc(s, "alice@x", "vcard", "", "", 0);
  cr_assert_eq(store_doc_bytes(s, "alice@x"),
               doc_cost("vcard", "", 0) + doc_cost("private", "storage storage:bookmarks", 1) +
                   doc_cost("private", "storage storage:rosternotes", 1) + doc_cost("vcardx", "", 1));
  /* delete */
  cr_assert_eq(store_doc_delete(s, "alice@x", "vcard", ""), 0);
  cr_assert(doc_absent(s, "alice@x", "vcard", ""));
  cr_assert_eq(store_doc_delete(s, "alice@x", "vcard", ""), XMPP_ENOENT);
  cr_assert_eq(store_doc_delete(s, "bob@x", "private", "storage storage:bookmarks"), XMPP_ENOENT);
  expect_doc(s, "alice@x", "private", "storage storage:bookmarks", "B", 1);
  cr_assert_eq(store_doc_bytes(s, "alice@x"),
               doc_cost("private", "storage storage:bookmarks", 1) +
                   doc_cost("private", "storage storage:rosternotes", 1) + doc_cost("vcardx", "", 1));
  cr_assert_eq(store_doc_bytes(s, "bob@x"), 0);
  /* no account: nothing stored */
  cr_assert_eq(store_doc_put(s, "nobody@x", "vcard", "", "v", 1, 0), XMPP_ENOENT);
  cr_assert_eq(store_doc_put(s, "nobody@x", "vcard", "", "v", 1, 100), XMPP_ENOENT);
  cr_assert(doc_absent(s, "nobody@x", "vcard", ""));
  cr_assert_eq(store_doc_bytes(s, "nobody@x"), 0);
  /* arguments */
  char *d = NULL;
  size_t n = 0;
  cr_assert_eq(store_doc_get(s, "alice@x", "", "", &d, &n), XMPP_EINVAL);
  cr_assert_eq(store_doc_get(s, "alice@x", "vcard", NULL, &d, &n), XMPP_EINVAL);
  cr_assert_eq(store_doc_get(s, "alice@x", "vcard", "", NULL, &n), XMPP_EINVAL);
  cr_assert_eq(store_doc_put(s, "", "vcard", "", "v", 1, 0), XMPP_EINVAL);
  cr_assert_eq(store_doc_put(s, "alice@x", NULL, "", "v", 1, 0), XMPP_EINVAL);
  cr_assert_eq(store_doc_put(s, "alice@x", "vcard", "", NULL, 1, 0), XMPP_EINVAL);
  cr_assert_eq(store_doc_delete(s, "alice@x", "", ""), XMPP_EINVAL);
  cr_assert_eq(store_doc_bytes(s, ""), XMPP_EINVAL);
  store_close(s);
}

/* The account's budget: a put that brings it to exactly N bytes is stored, one byte more
 * is refused and leaves everything as it was; the document replaced does not count. */
STORE_TEST(doc_budget_n_and_n_plus_1) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  const size_t N = 1000;
  char big[1000];
  memset(big, 'a', sizeof big);
  size_t first = 400;
  cr_assert_eq(store_doc_put(s, "alice@x", "k", "one", big, first, N), 0);
  int64_t used = doc_cost("k", "one", first);
  size_t room = N - (size_t)used - (size_t)doc_cost("k", "two", 0); /* data bytes that still fit */
  cr_assert_eq(store_doc_put(s, "alice@x", "k", "two", big, room + 1, N), XMPP_ELIMIT);
  cr_assert(doc_absent(s, "alice@x", "k", "two"));
  cr_assert_eq(store_doc_bytes(s, "alice@x"), used);
  cr_assert_eq(store_doc_put(s, "alice@x", "k", "two", big, room, N), 0);
  cr_assert_eq(store_doc_bytes(s, "alice@x"), (int64_t)N);
  /* full: a new byte anywhere is refused, the old value stays */
  cr_assert_eq(store_doc_put(s, "alice@x", "k", "one", big, first + 1, N), XMPP_ELIMIT);
  expect_doc(s, "alice@x", "k", "one", big, first);
  cr_assert_eq(store_doc_put(s, "alice@x", "k", "three", NULL, 0, N), XMPP_ELIMIT);
  /* replacing a document by one of the same size or smaller always fits */
  cr_assert_eq(store_doc_put(s, "alice@x", "k", "one", "b", 1, N), 0);
  cr_assert_eq(store_doc_bytes(s, "alice@x"), (int64_t)N - (int64_t)first + 1);
  cr_assert_eq(store_doc_put(s, "alice@x", "k", "one", big, first, N), 0);
  cr_assert_eq(store_doc_bytes(s, "alice@x"), (int64_t)N);
  /* a delete frees its bytes */
  cr_assert_eq(store_doc_delete(s, "alice@x", "k", "two"), 0);
  cr_assert_eq(store_doc_bytes(s, "alice@x"), used);
  /* without a limit, anything goes */
  cr_assert_eq(store_doc_put(s, "alice@x", "k", "two", big, sizeof big, 0), 0);
  cr_assert_eq(store_doc_bytes(s, "alice@x"), used + doc_cost("k", "two", sizeof big));
  store_close(s);
}

/* Several handles writing documents of one account at once never spend more than the
 * budget: the check and the write are one transaction / one script. */
#define DOC_THREADS 4
#define DOC_PER_THREAD 40
#define DOC_LIMIT 2000 /* 25 documents of 80 bytes */

static void *doc_racer(void *arg) {
  race_t *r = arg;
  int id = r->ok; /* thread number in, count out */
  r->ok = 0;
  store_t *s = store_open(g_backend, g_target, NULL);
  if (!s) {
    r->other = -1;
    return NULL;
  }
  char data[80 - 7], key[8];
  memset(data, 'x', sizeof data);
  for (int i = 0; i < DOC_PER_THREAD; i++) {
    snprintf(key, sizeof key, "%d-%03d", id, i); /* 5 bytes: "k" 1 key 5 data 73 = 80 */
    int rc = store_doc_put(s, "alice@x", "k", key, data, sizeof data, DOC_LIMIT);
    if (rc == 0)
      r->ok++;
    else if (rc == XMPP_ELIMIT)
      r->limited++;
    else
      r->other++;
  }
  store_close(s);
  return NULL;
}

STORE_TEST(doc_budget_holds_across_handles, .timeout = 60) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  pthread_t th[DOC_THREADS];
  race_t res[DOC_THREADS];
  memset(res, 0, sizeof res);
  for (int i = 0; i < DOC_THREADS; i++) {
    res[i].ok = i;
    cr_assert_eq(pthread_create(&th[i], NULL, doc_racer, &res[i]), 0);
  }
  int ok = 0;
  for (int i = 0; i < DOC_THREADS; i++) {
    cr_assert_eq(pthread_join(th[i], NULL), 0);
    cr_assert_eq(res[i].other, 0, "thread %d got unexpected errors", i);
    ok += res[i].ok;
  }
  cr_assert_eq(ok, DOC_LIMIT / 80);
  cr_assert_eq(store_doc_bytes(s, "alice@x"), DOC_LIMIT);
  store_close(s);
}

STORE_TEST(doc_delete_account_cascades) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  cr_assert_eq(store_doc_put(s, "alice@x", "vcard", "", "A", 1, 0), 0);
  cr_assert_eq(store_doc_put(s, "alice@x", "private", "p q", "P", 1, 0), 0);
  cr_assert_eq(store_doc_put(s, "bob@x", "vcard", "", "B", 1, 0), 0);
  cr_assert_eq(store_account_delete(s, "alice@x"), 0);
  cr_assert(doc_absent(s, "alice@x", "vcard", ""));
  cr_assert(doc_absent(s, "alice@x", "private", "p q"));
  if (IS_REDIS)
    cr_assert_eq(rint_cmd("EXISTS {u:alice@x}:a {u:alice@x}:r {u:alice@x}:o {u:alice@x}:d"), 0);
  else
    cr_assert_eq(raw_int("SELECT count(*) FROM docs WHERE owner = 'alice@x'"), 0);
  expect_doc(s, "bob@x", "vcard", "", "B", 1);
  /* a new account of the same name starts with nothing */
  add_user(s, "alice@x", 3);
  cr_assert(doc_absent(s, "alice@x", "vcard", ""));
  cr_assert_eq(store_doc_bytes(s, "alice@x"), 0);
  store_close(s);
}

/* Redis: documents are one hash under the user's hash tag, field KIND\0KEY. */
Test(store_redis, doc_key_layout) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  cr_assert_eq(store_doc_put(s, "alice@x", "private", "q ns", "<q/>", 4, 0), 0);
  type_is("{u:alice@x}:d", "hash");
  cr_assert_eq(rint_cmd("HSTRLEN {u:alice@x}:d %b", "private\0q ns", (size_t)12), 4);
  cr_assert_eq(rint_cmd("HGET {u:alice@x}:a doc_bytes"), 12 + 4);
  store_close(s);
}

/* SQLite: a version-2 file gets the documents table on open, every account a budget of 0
 * used; the triggers keep doc_bytes whoever writes the rows. */
Test(store_sqlite, schema_v2_upgraded_with_docs) {
  store_close(open_db());
  raw_exec("DROP TRIGGER docs_ins; DROP TRIGGER docs_del; DROP TRIGGER docs_upd; DROP TABLE docs;"
           "ALTER TABLE accounts DROP COLUMN doc_bytes; DROP TABLE mam; DROP TABLE mam_msg; DROP TABLE mam_prefs;"
           "DROP TABLE mam_prefs_jids; ALTER TABLE accounts DROP COLUMN mam_count;"
           "DROP TRIGGER block_items_ins; DROP TRIGGER block_items_del; DROP TABLE blocklist;"
           "ALTER TABLE accounts DROP COLUMN block_items;"
           "DROP TRIGGER roster_ver_ins; DROP TRIGGER roster_ver_upd; DROP TRIGGER roster_ver_del;"
           "ALTER TABLE roster DROP COLUMN approved; ALTER TABLE accounts DROP COLUMN roster_ver;"
           "PRAGMA user_version = 2;");
  raw_exec("INSERT INTO accounts (jid, sha1_salt, sha1_iter, sha1_stored, sha1_server, sha256_salt, "
           "sha256_iter, sha256_stored, sha256_server, created) "
           "VALUES ('a@x', x'01', 4096, x'02', x'03', x'04', 4096, x'05', x'06', 0)");
  store_t *s = open_db();
  cr_assert_eq(raw_int("PRAGMA user_version"), 10);
  cr_assert_eq(store_doc_bytes(s, "a@x"), 0);
  cr_assert_eq(store_doc_put(s, "a@x", "vcard", "", "abc", 3, 0), 0);
  raw_exec("INSERT INTO docs (owner, kind, key, data) VALUES ('a@x', 'k', '\xc3\xa9', x'0102')"); /* another writer */
  cr_assert_eq(store_doc_bytes(s, "a@x"), doc_cost("vcard", "", 3) + doc_cost("k", "\xc3\xa9", 2));
  raw_exec("UPDATE docs SET data = x'01' WHERE kind = 'k'");
  cr_assert_eq(store_doc_bytes(s, "a@x"), doc_cost("vcard", "", 3) + doc_cost("k", "\xc3\xa9", 1));
  store_close(s);
}

/* ---- XEP-0313 archive ---------------------------------------------------------------- */

typedef struct {
  int n;
  int64_t ids[64];
  char with[64][32];
  char data[64][32];
} mam_got_t;

static void mam_cb(int64_t id, const char *with, const char *data, size_t len, void *ud) {
  mam_got_t *g = ud;
  cr_assert_lt(g->n, 64);
  if (g->n) cr_assert_gt(id, g->ids[g->n - 1], "ascending");
  cr_assert_eq(data[len], '\0');
  g->ids[g->n] = id;
  snprintf(g->with[g->n], sizeof g->with[0], "%s", with);
  snprintf(g->data[g->n], sizeof g->data[0], "%.*s", (int)len, data);
  g->n++;
}

static int mam_q(store_t *s, const char *bare, store_mam_query_t q, mam_got_t *g, int *more) {
  memset(g, 0, sizeof *g);
  return store_mam_query(s, bare, &q, mam_cb, g, more);
}

static void mam_put(store_t *s, const char *owner, int64_t id, const char *with, const char *full,
                    const store_mam_limits_t *lim) {
  char d[32];
  snprintf(d, sizeof d, "m%lld", (long long)id);
  store_mam_msg_t m = {owner, id, with, full, d, strlen(d)};
  cr_assert_eq(store_mam_append(s, &m, 1, lim), 0);
}

#define NOB INT64_MAX

STORE_TEST(mam_append_query_paging) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  /* ten messages, with bob (even, from resource b1) and carol (odd, bare) */
  store_mam_msg_t ms[10];
  char d[10][8];
  for (int i = 0; i < 10; i++) {
    snprintf(d[i], sizeof d[i], "m%d", i);
    ms[i] = (store_mam_msg_t){"alice@x", 1000 * (i + 1), i % 2 ? "carol@x" : "bob@x", i % 2 ? NULL : "bob@x/b1",
                              d[i], strlen(d[i])};
  }
  cr_assert_eq(store_mam_append(s, ms, 10, NULL), 0, "ten in one call");
  mam_put(s, "bob@x", 500, "alice@x", NULL, NULL); /* another archive */
  cr_assert_eq(store_mam_count(s, "alice@x"), 10);
  cr_assert_eq(store_mam_count(s, "bob@x"), 1);
  cr_assert_eq(store_mam_count(s, "nobody@x"), 0);

  mam_got_t g;
  int more;
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.before = NOB, .max = 3}, &g, &more), 3);
  cr_assert_eq(g.ids[0], 1000);
  cr_assert_eq(g.ids[2], 3000);
  cr_assert_str_eq(g.data[0], "m0");
  cr_assert_str_eq(g.with[1], "carol@x");
  cr_assert_eq(more, 1);
  /* next page: after the last id */
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.after = 3000, .before = NOB, .max = 3}, &g, &more), 3);
  cr_assert_eq(g.ids[0], 4000);
  cr_assert_eq(more, 1);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.after = 7000, .before = NOB, .max = 3}, &g, &more), 3);
  cr_assert_eq(g.ids[2], 10000);
  cr_assert_eq(more, 0, "the last page is complete");
  /* the last page (RSM <before/>), given oldest first */
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.before = NOB, .max = 3, .last = 1}, &g, &more), 3);
  cr_assert_eq(g.ids[0], 8000);
  cr_assert_eq(g.ids[2], 10000);
  cr_assert_eq(more, 1);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.before = 8000, .max = 3, .last = 1}, &g, &more), 3);
  cr_assert_eq(g.ids[0], 5000);
  cr_assert_eq(more, 1);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.before = 3000, .max = 3, .last = 1}, &g, &more), 2);
  cr_assert_eq(g.ids[0], 1000);
  cr_assert_eq(more, 0);
  /* with: bare matches every resource, full only that one */
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "bob@x", .before = NOB, .max = 50}, &g, &more), 5);
  cr_assert_eq(g.ids[4], 9000);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "bob@x", .before = NOB, .max = 2, .last = 1}, &g, &more),
               2);
  cr_assert_eq(g.ids[0], 7000);
  cr_assert_eq(more, 1);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "bob@x", .after = 3000, .before = 9000, .max = 50}, &g,
                     &more),
               2);
  cr_assert_eq(g.ids[0], 5000);
  cr_assert_eq(g.ids[1], 7000);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "bob@x/b1", .before = NOB, .max = 50}, &g, &more), 5);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "bob@x/b2", .before = NOB, .max = 50}, &g, &more), 0);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "carol@x", .before = NOB, .max = 50}, &g, &more), 5);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "carol@x/r", .before = NOB, .max = 50}, &g, &more), 0);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "dave@x", .before = NOB, .max = 50}, &g, &more), 0);
  /* ids (mam:2#extended): those found, ascending, each once */
  int64_t ids[] = {9000, 2000, 123, 2000};
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.ids = ids, .nids = 4}, &g, &more), 2);
  cr_assert_eq(g.ids[0], 2000);
  cr_assert_eq(g.ids[1], 9000);
  cr_assert_eq(mam_q(s, "bob@x", (store_mam_query_t){.ids = ids, .nids = 4}, &g, &more), 0);
  /* has */
  cr_assert_eq(store_mam_has(s, "alice@x", 4000), 1);
  cr_assert_eq(store_mam_has(s, "alice@x", 4001), 0);
  cr_assert_eq(store_mam_has(s, "bob@x", 4000), 0);
  /* an id not above the last one is stored under last + 1 */
  mam_put(s, "alice@x", 20, "bob@x", NULL, NULL);
  cr_assert_eq(store_mam_has(s, "alice@x", 10001), 1);
  cr_assert_eq(store_mam_has(s, "alice@x", 20), 0);
  /* no account: nothing stored, not an error */
  mam_put(s, "nobody@x", 5, "bob@x", NULL, NULL);
  cr_assert_eq(store_mam_count(s, "nobody@x"), 0);
  /* arguments */
  store_mam_msg_t bad = {"alice@x", 0, "bob@x", NULL, "x", 1};
  cr_assert_eq(store_mam_append(s, &bad, 1, NULL), XMPP_EINVAL);
  bad.id = 1;
  bad.with = "";
  cr_assert_eq(store_mam_append(s, &bad, 1, NULL), XMPP_EINVAL);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "", .before = NOB, .max = 5}, &g, &more), XMPP_EINVAL);
  /* deleting the account deletes its archive */
  cr_assert_eq(store_account_delete(s, "alice@x"), 0);
  add_user(s, "alice@x", 1);
  cr_assert_eq(store_mam_count(s, "alice@x"), 0);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "bob@x", .before = NOB, .max = 5}, &g, &more), 0);
  store_close(s);
}

static const char mam_raw[] = {'<', 'a', '>', '\0', '\xff', '<', '/', 'a', '>'};

static void mam_raw_cb(int64_t id, const char *with, const char *data, size_t len, void *ud) {
  cr_assert_eq(len, sizeof mam_raw);
  cr_assert_eq(memcmp(data, mam_raw, len), 0);
  cr_assert_str_eq(with, "bob@x");
  ++*(int *)ud;
}

STORE_TEST(mam_binary_data_exact) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  store_mam_msg_t m = {"alice@x", 77, "bob@x", NULL, mam_raw, sizeof mam_raw};
  cr_assert_eq(store_mam_append(s, &m, 1, NULL), 0);
  int n = 0, more;
  store_mam_query_t q = {.before = NOB, .max = 5};
  cr_assert_eq(store_mam_query(s, "alice@x", &q, mam_raw_cb, &n, &more), 1);
  cr_assert_eq(n, 1);
  int64_t id = 77;
  q = (store_mam_query_t){.ids = &id, .nids = 1};
  cr_assert_eq(store_mam_query(s, "alice@x", &q, mam_raw_cb, &n, &more), 1);
  store_close(s);
}

STORE_TEST(mam_retention) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  store_mam_limits_t lim = {.max_messages = 16};
  for (int i = 1; i <= 40; i++) mam_put(s, "alice@x", i * 10, i % 2 ? "bob@x" : "carol@x", "bob@x/r", &lim);
  int n = store_mam_count(s, "alice@x");
  cr_assert_leq(n, 17, "at most max + max/16: %d", n);
  cr_assert_geq(n, 16);
  mam_got_t g;
  int more;
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.before = NOB, .max = 64}, &g, &more), n);
  cr_assert_eq(g.ids[n - 1], 400, "the newest kept");
  cr_assert_eq(g.ids[0], 400 - 10 * (n - 1), "the oldest went");
  /* the index went with them */
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "bob@x", .before = NOB, .max = 64}, &g, &more),
               (n + 1) / 2);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "bob@x/r", .before = NOB, .max = 64}, &g, &more), n);
  cr_assert_geq(g.ids[0], 400 - 10 * (n - 1));
  /* by age: what is below min_id goes at the next append */
  store_mam_limits_t age = {.min_id = 350};
  mam_put(s, "alice@x", 500, "bob@x", NULL, &age);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.before = NOB, .max = 64}, &g, &more), 7);
  cr_assert_eq(g.ids[0], 350);
  cr_assert_eq(store_mam_count(s, "alice@x"), 7);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "bob@x/r", .before = NOB, .max = 64}, &g, &more), 6);
  if (IS_REDIS) {
    long long zc = rint_cmd("ZCARD {u:alice@x}:mw");
    cr_assert_eq(zc, 7 + 6, "index members: %lld", zc);
  }
  store_close(s);
}

/* One append call mixing archives (what the router's archive writer hands over: both
 * copies of each message, accounts interleaved): each account gets its own in the order
 * given, an id not above the account's last one becomes last + 1 (also within the call),
 * an owner without an account is skipped, and each account's count and retention are
 * those of its own messages. */
STORE_TEST(mam_append_mixed_owners) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  mam_put(s, "bob@x", 5000, "alice@x", NULL, NULL);
  store_mam_msg_t ms[] = {
      {"alice@x", 100, "bob@x", "bob@x/r", "a1", 2},  {"bob@x", 101, "alice@x", NULL, "b1", 2},
      {"ghost@x", 102, "bob@x", NULL, "g1", 2},       {"alice@x", 90, "bob@x", NULL, "a2", 2},
      {"bob@x", 103, "alice@x", "alice@x/p", "b2", 2}, {"alice@x", 104, "carol@x", NULL, "a3", 2},
      {"bob@x", 6000, "carol@x", NULL, "b3", 2},
  };
  store_mam_limits_t lim = {.max_messages = 2};
  cr_assert_eq(store_mam_append(s, ms, sizeof ms / sizeof ms[0], &lim), 0, "the ghost is not an error");
  mam_got_t g;
  int more;
  /* alice: 100, 101 (90 came after 100), 104; over 2 + 2/16: down to the newest 2 */
  cr_assert_eq(store_mam_count(s, "alice@x"), 2);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.before = NOB, .max = 10}, &g, &more), 2);
  cr_assert_eq(g.ids[0], 101);
  cr_assert_str_eq(g.data[0], "a2");
  cr_assert_eq(g.ids[1], 104);
  cr_assert_str_eq(g.data[1], "a3");
  /* bob: 5000 before, then 5001 and 5002 (the clock went back), then 6000: the newest 2 */
  cr_assert_eq(store_mam_count(s, "bob@x"), 2);
  cr_assert_eq(mam_q(s, "bob@x", (store_mam_query_t){.before = NOB, .max = 10}, &g, &more), 2);
  cr_assert_eq(g.ids[0], 5002);
  cr_assert_str_eq(g.data[0], "b2");
  cr_assert_eq(g.ids[1], 6000);
  cr_assert_eq(mam_q(s, "bob@x", (store_mam_query_t){.with = "alice@x/p", .before = NOB, .max = 10}, &g, &more), 1);
  cr_assert_eq(g.ids[0], 5002);
  cr_assert_eq(store_mam_count(s, "ghost@x"), 0);
  store_close(s);
}

/* An archive append that meets Redis down is XMPP_AGAIN (store.h: the caller keeps the rows
 * and gives them again); given again with lim->replay, a row already stored (its reply
 * lost) is not stored twice, even one stored under a later id (its id was not above the
 * account's last); without replay the same row is a new message. */
Test(store_redis, mam_append_again_after_outage, .timeout = 60) {
  redis_stop();
  redis_start(1);
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  char d[6][4];
  store_mam_msg_t ms[6];
  for (int i = 0; i < 6; i++) {
    snprintf(d[i], sizeof d[i], "a%d", i + 1);
    ms[i] = (store_mam_msg_t){"alice@x", 1000 * (i + 1), "bob@x", NULL, d[i], strlen(d[i])};
  }
  store_mam_limits_t plain = {0, 0, 0}, replay = {0, 0, 1};
  cr_assert_eq(store_mam_append(s, ms, 3, &plain), 0);
  redis_stop();
  cr_assert_eq(store_mam_append(s, ms + 3, 2, &plain), XMPP_AGAIN);
  redis_start(1);
  cr_assert_eq(store_mam_append(s, ms + 2, 3, &replay), 0, "a3 stored before, a4 and a5 not");
  cr_assert_eq(store_mam_count(s, "alice@x"), 5);
  cr_assert_eq(store_mam_append(s, ms, 5, &replay), 0, "all five again");
  cr_assert_eq(store_mam_count(s, "alice@x"), 5);
  mam_got_t g;
  int more;
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.before = NOB, .max = 10}, &g, &more), 5);
  for (int i = 0; i < 5; i++) {
    cr_assert_eq(g.ids[i], 1000 * (i + 1));
    cr_assert_str_eq(g.data[i], d[i]);
  }
  /* stored under a later id: 4500 is not above 5000 */
  store_mam_msg_t late = {"alice@x", 4500, "bob@x", NULL, "late", 4};
  cr_assert_eq(store_mam_append(s, &late, 1, &plain), 0);
  cr_assert_eq(store_mam_append(s, &late, 1, &replay), 0);
  cr_assert_eq(store_mam_count(s, "alice@x"), 6);
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.before = NOB, .max = 10}, &g, &more), 6);
  cr_assert_eq(g.ids[5], 5001);
  cr_assert_str_eq(g.data[5], "late");
  /* the same contact with other bytes, or without replay: a message of its own */
  cr_assert_eq(store_mam_append(s, ms + 5, 1, &replay), 0);
  cr_assert_eq(store_mam_append(s, ms + 4, 1, &plain), 0);
  cr_assert_eq(store_mam_count(s, "alice@x"), 8);
  store_close(s);
}

/* The archive as versions 4 to 6 had it (the stanza bytes in each account's row): what
 * the tests that go back to an older version put in place of version 8's. */
#define MAM_V6_SQL                                                                                        \
  "DROP TABLE mam; DROP TABLE mam_msg;"                                                                    \
  "CREATE TABLE mam (owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE, id INTEGER NOT NULL," \
  " with_bare TEXT NOT NULL, with_full TEXT, data BLOB NOT NULL, PRIMARY KEY (owner, id)) WITHOUT ROWID;"    \
  "CREATE INDEX mam_with ON mam (owner, with_bare, id);"                                                   \
  "CREATE INDEX mam_with_full ON mam (owner, with_full, id) WHERE with_full IS NOT NULL;"

/* Both copies of a message (the same bytes, the sender's and the recipient's archive) in
 * one append call: each archive has its own row and gives the bytes back whatever the
 * other did (its account deleted, its copy pruned); the bytes go with the last row that
 * holds them (SQLite: one mam_msg row per message shared by both, refs kept by the
 * trigger whatever deletes the rows: retention, an account delete, the cascade). */
STORE_TEST(mam_shared_copies) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  add_user(s, "carol@x", 3);
  store_mam_msg_t ms[] = {
      {"alice@x", 100, "bob@x", "bob@x/r", "hi", 2},   {"bob@x", 100, "alice@x", "alice@x/p", "hi", 2},
      {"ghost@x", 101, "alice@x", NULL, "yo", 2},      {"alice@x", 101, "ghost@x", NULL, "yo", 2},
      {"carol@x", 102, "bob@x", NULL, "cb", 2},        {"bob@x", 102, "carol@x", NULL, "cb", 2},
      {"carol@x", 103, "bob@x", NULL, "hi", 2}, /* the same bytes as another message */
  };
  cr_assert_eq(store_mam_append(s, ms, sizeof ms / sizeof ms[0], NULL), 0);
  SQLITE_ONLY(cr_assert_eq(raw_int("SELECT count(*) FROM mam_msg"), 3, "one stored copy per distinct bytes"));
  SQLITE_ONLY(cr_assert_eq(raw_int("SELECT sum(refs) FROM mam_msg"), 6, "the ghost's copy counts for none"));
  mam_got_t g;
  int more;
  cr_assert_eq(mam_q(s, "bob@x", (store_mam_query_t){.before = NOB, .max = 10}, &g, &more), 2);
  cr_assert_str_eq(g.data[0], "hi");
  cr_assert_str_eq(g.with[0], "alice@x");
  cr_assert_str_eq(g.data[1], "cb");
  cr_assert_eq(store_account_delete(s, "alice@x"), 0);
  cr_assert_eq(mam_q(s, "bob@x", (store_mam_query_t){.with = "alice@x/p", .before = NOB, .max = 10}, &g, &more), 1);
  cr_assert_str_eq(g.data[0], "hi", "bob's copy outlives alice's account");
  SQLITE_ONLY(cr_assert_eq(raw_int("SELECT count(*) FROM mam_msg"), 2, "alice's 'yo' went with her"));
  /* bob's 'hi' pruned by age: carol's 'hi' (same bytes) stays */
  store_mam_msg_t late = {"bob@x", 200, "carol@x", NULL, "zz", 2};
  store_mam_limits_t age = {.min_id = 101};
  cr_assert_eq(store_mam_append(s, &late, 1, &age), 0);
  cr_assert_eq(mam_q(s, "bob@x", (store_mam_query_t){.before = NOB, .max = 10}, &g, &more), 2);
  cr_assert_eq(g.ids[0], 102);
  cr_assert_eq(mam_q(s, "carol@x", (store_mam_query_t){.before = NOB, .max = 10}, &g, &more), 2);
  cr_assert_str_eq(g.data[1], "hi");
  /* by count: carol's oldest ('cb', still bob's too) */
  store_mam_msg_t c2 = {"carol@x", 300, "bob@x", NULL, "c2", 2};
  store_mam_limits_t one = {.max_messages = 1};
  cr_assert_eq(store_mam_append(s, &c2, 1, &one), 0);
  cr_assert_eq(mam_q(s, "carol@x", (store_mam_query_t){.before = NOB, .max = 10}, &g, &more), 1);
  cr_assert_str_eq(g.data[0], "c2");
  cr_assert_eq(mam_q(s, "bob@x", (store_mam_query_t){.before = NOB, .max = 10}, &g, &more), 2);
  cr_assert_str_eq(g.data[0], "cb");
  cr_assert_str_eq(g.data[1], "zz");
  cr_assert_eq(store_account_delete(s, "bob@x"), 0);
  cr_assert_eq(store_account_delete(s, "carol@x"), 0);
  SQLITE_ONLY(cr_assert_eq(raw_int("SELECT count(*) FROM mam_msg"), 0, "nothing left that no archive holds"));
  store_close(s);
}

/* A version 6 file (each row its own bytes) is upgraded on open: every message kept, one
 * stored copy each, and the rows then go with their bytes. */
Test(store_sqlite, schema_v6_upgraded_mam_shared) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  store_close(s);
  raw_exec(MAM_V6_SQL "INSERT INTO mam VALUES ('alice@x', 10, 'bob@x', 'bob@x/r', x'6131'),"
                      " ('alice@x', 20, 'bob@x', NULL, x'6132'), ('bob@x', 15, 'alice@x', NULL, x'6231');"
                      "UPDATE accounts SET mam_count = 2 WHERE jid = 'alice@x';"
                      "UPDATE accounts SET mam_count = 1 WHERE jid = 'bob@x'; PRAGMA user_version = 6;");
  s = open_db();
  cr_assert_eq(raw_int("PRAGMA user_version"), 10);
  cr_assert_eq(raw_int("SELECT count(*) FROM mam_msg WHERE refs = 1"), 3);
  mam_got_t g;
  int more;
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.before = NOB, .max = 10}, &g, &more), 2);
  cr_assert_str_eq(g.data[0], "a1");
  cr_assert_str_eq(g.data[1], "a2");
  cr_assert_eq(mam_q(s, "alice@x", (store_mam_query_t){.with = "bob@x/r", .before = NOB, .max = 10}, &g, &more), 1);
  cr_assert_eq(g.ids[0], 10);
  cr_assert_eq(mam_q(s, "bob@x", (store_mam_query_t){.with = "alice@x", .before = NOB, .max = 10}, &g, &more), 1);
  cr_assert_str_eq(g.data[0], "b1");
  mam_put(s, "bob@x", 30, "alice@x", NULL, NULL);
  cr_assert_eq(store_mam_count(s, "bob@x"), 2);
  cr_assert_eq(store_account_delete(s, "alice@x"), 0);
  cr_assert_eq(raw_int("SELECT count(*) FROM mam_msg"), 2);
  store_close(s);
}

typedef struct {
  int n;
  char jid[8][32];
  int always[8];
} prefs_got_t;

static void prefs_cb(const char *jid, int always, void *ud) {
  prefs_got_t *p = ud;
  cr_assert_lt(p->n, 8);
  snprintf(p->jid[p->n], sizeof p->jid[0], "%s", jid);
  p->always[p->n++] = always;
}

STORE_TEST(mam_prefs) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  int d = -1;
  prefs_got_t p = {0};
  cr_assert_eq(store_mam_prefs_get(s, "alice@x", &d, prefs_cb, &p), XMPP_ENOENT);
  const char *always[] = {"zed@x", "bob@x"};
  const char *never[] = {"carol@x", "bob@x"};
  cr_assert_eq(store_mam_prefs_set(s, "alice@x", STORE_MAM_ROSTER, always, 2, never, 2), 0);
  cr_assert_eq(store_mam_prefs_get(s, "alice@x", &d, prefs_cb, &p), 0);
  cr_assert_eq(d, STORE_MAM_ROSTER);
  cr_assert_eq(p.n, 3);
  cr_assert_str_eq(p.jid[0], "bob@x");
  cr_assert_eq(p.always[0], 0, "never wins");
  cr_assert_str_eq(p.jid[1], "carol@x");
  cr_assert_str_eq(p.jid[2], "zed@x");
  cr_assert_eq(p.always[2], 1);
  /* replaced as a whole */
  cr_assert_eq(store_mam_prefs_set(s, "alice@x", STORE_MAM_NEVER, NULL, 0, NULL, 0), 0);
  memset(&p, 0, sizeof p);
  cr_assert_eq(store_mam_prefs_get(s, "alice@x", &d, prefs_cb, &p), 0);
  cr_assert_eq(d, STORE_MAM_NEVER);
  cr_assert_eq(p.n, 0);
  cr_assert_eq(store_mam_prefs_set(s, "nobody@x", STORE_MAM_NEVER, NULL, 0, NULL, 0), XMPP_ENOENT);
  cr_assert_eq(store_mam_prefs_set(s, "alice@x", 3, NULL, 0, NULL, 0), XMPP_EINVAL);
  cr_assert_eq(store_account_delete(s, "alice@x"), 0);
  add_user(s, "alice@x", 1);
  cr_assert_eq(store_mam_prefs_get(s, "alice@x", &d, prefs_cb, &p), XMPP_ENOENT);
  store_close(s);
}

/* ---- XEP-0191 blocklists ----------------------------------------------------------- */

#define MAXB 256
typedef struct {
  char *v[MAXB];
  int n;
} blist_t;

static void block_cb(const char *jid, void *ud) {
  blist_t *b = ud;
  cr_assert_lt(b->n, MAXB);
  b->v[b->n++] = xstrdup(jid);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* bare's blocklist, sorted, as one string "a b c" (for comparisons). */
static char *blocked(store_t *s, const char *bare) {
  blist_t b = {.n = 0};
  cr_assert_eq(store_block_load(s, bare, block_cb, &b), 0);
  qsort(b.v, (size_t)b.n, sizeof b.v[0], cmp_str);
  static char out[8192];
  out[0] = 0;
  for (int i = 0; i < b.n; i++) {
    if (i) strcat(out, " ");
    strcat(out, b.v[i]);
    xfree(b.v[i]);
  }
  return out;
}

static long long raw_block_rows(const char *owner) {
  if (IS_REDIS) return rint_cmd("SCARD {u:%s}:b", owner);
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM blocklist WHERE owner = '%s'", owner);
  return raw_int(sql);
}

STORE_TEST(block_add_load_remove) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  cr_assert_str_eq(blocked(s, "alice@x"), "");
  const char *j[] = {"romeo@m", "iago@s/phone", "evil.example", "evil.example/bot"};
  cr_assert_eq(store_block_add(s, "alice@x", j, 4, 0), 0);
  cr_assert_str_eq(blocked(s, "alice@x"), "evil.example evil.example/bot iago@s/phone romeo@m");
  cr_assert_eq(raw_block_rows("alice@x"), 4, "one row per JID");
  /* again, with a duplicate inside the call: each JID is there once */
  const char *again[] = {"romeo@m", "romeo@m", "new@n"};
  cr_assert_eq(store_block_add(s, "alice@x", again, 3, 0), 0);
  cr_assert_eq(raw_block_rows("alice@x"), 5);
  cr_assert_str_eq(blocked(s, "bob@x"), "", "another user's list is apart");
  const char *rm[] = {"romeo@m", "not-there@z"};
  cr_assert_eq(store_block_remove(s, "alice@x", rm, 2), 0);
  cr_assert_str_eq(blocked(s, "alice@x"), "evil.example evil.example/bot iago@s/phone new@n");
  cr_assert_eq(store_block_remove(s, "alice@x", NULL, 0), 0, "n == 0: all");
  cr_assert_str_eq(blocked(s, "alice@x"), "");
  cr_assert_eq(raw_block_rows("alice@x"), 0);
  cr_assert_eq(store_block_remove(s, "alice@x", NULL, 0), 0, "emptying an empty list");
  store_close(s);
}

/* At most max JIDs: the call that would pass it adds nothing (N fits, N+1 does not). */
STORE_TEST(block_limit) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  const char *a[] = {"a@x", "b@x"};
  cr_assert_eq(store_block_add(s, "alice@x", a, 2, 3), 0);
  const char *b[] = {"c@x", "d@x"};
  cr_assert_eq(store_block_add(s, "alice@x", b, 2, 3), XMPP_ELIMIT);
  cr_assert_str_eq(blocked(s, "alice@x"), "a@x b@x", "nothing of the refused call");
  const char *c[] = {"a@x", "c@x", "c@x"}; /* one new: 3, the cap */
  cr_assert_eq(store_block_add(s, "alice@x", c, 3, 3), 0);
  cr_assert_eq(store_block_add(s, "alice@x", a, 2, 3), 0, "JIDs already there add nothing");
  const char *d[] = {"d@x"};
  cr_assert_eq(store_block_add(s, "alice@x", d, 1, 3), XMPP_ELIMIT);
  cr_assert_eq(store_block_add(s, "alice@x", d, 1, 0), 0, "0: no limit");
  cr_assert_eq(raw_block_rows("alice@x"), 4);
  /* removals count: two out, then two in again up to the cap of 4 */
  cr_assert_eq(store_block_remove(s, "alice@x", a, 2), 0);
  const char *e[] = {"e@x", "f@x", "g@x"};
  cr_assert_eq(store_block_add(s, "alice@x", e, 3, 4), XMPP_ELIMIT);
  cr_assert_eq(store_block_add(s, "alice@x", e, 2, 4), 0);
  cr_assert_eq(store_block_remove(s, "alice@x", NULL, 0), 0);
  cr_assert_eq(store_block_add(s, "alice@x", e, 3, 3), 0, "emptied: counted from 0 again");
  store_close(s);
}

STORE_TEST(block_needs_account) {
  store_t *s = open_db();
  const char *a[] = {"a@x"};
  cr_assert_eq(store_block_add(s, "nobody@x", a, 1, 10), XMPP_ENOENT);
  cr_assert_eq(raw_block_rows("nobody@x"), 0);
  cr_assert_eq(store_block_match(s, "nobody@x", a, 1), 0);
  cr_assert_eq(store_block_add(s, "", a, 1, 10), XMPP_EINVAL);
  const char *bad[] = {"a@x", ""};
  add_user(s, "alice@x", 1);
  cr_assert_eq(store_block_add(s, "alice@x", bad, 2, 10), XMPP_EINVAL);
  cr_assert_eq(store_block_match(s, "alice@x", bad, 2), XMPP_EINVAL);
  cr_assert_eq(store_block_add(s, "alice@x", NULL, 0, 10), 0);
  cr_assert_eq(store_block_match(s, "alice@x", NULL, 0), 0);
  store_close(s);
}

/* "Is one of these JIDs blocked": the forms a stanza's address matches (full, bare,
 * domain/resource, domain) asked at once. */
STORE_TEST(block_match) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  const char *j[] = {"romeo@m", "evil.example"};
  cr_assert_eq(store_block_add(s, "alice@x", j, 2, 0), 0);
  const char *romeo[] = {"romeo@m/phone", "romeo@m", "m/phone", "m"};
  cr_assert_eq(store_block_match(s, "alice@x", romeo, 4), 1);
  cr_assert_eq(store_block_match(s, "bob@x", romeo, 4), 0, "bob blocks nobody");
  const char *friar[] = {"friar@m/cell", "friar@m", "m/cell", "m"};
  cr_assert_eq(store_block_match(s, "alice@x", friar, 4), 0);
  const char *evil[] = {"x@evil.example", "evil.example"};
  cr_assert_eq(store_block_match(s, "alice@x", evil, 2), 1);
  store_close(s);
}

/* Many JIDs in one call: Redis passes them as script arguments (past the fixed array). */
STORE_TEST(block_many_in_one_call) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  enum { N = 200 };
  static char names[N][32];
  const char *v[N];
  for (int i = 0; i < N; i++) {
    snprintf(names[i], sizeof names[i], "u%03d@y", i);
    v[i] = names[i];
  }
  cr_assert_eq(store_block_add(s, "alice@x", v, N, N - 1), XMPP_ELIMIT);
  cr_assert_eq(raw_block_rows("alice@x"), 0);
  cr_assert_eq(store_block_add(s, "alice@x", v, N, N), 0);
  cr_assert_eq(raw_block_rows("alice@x"), N);
  cr_assert_eq(store_block_match(s, "alice@x", v + 150, 50), 1);
  cr_assert_eq(store_block_remove(s, "alice@x", v, N - 1), 0);
  cr_assert_eq(raw_block_rows("alice@x"), 1);
  cr_assert_str_eq(blocked(s, "alice@x"), "u199@y");
  store_close(s);
}

STORE_TEST(block_deleted_with_account) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  const char *j[] = {"romeo@m"};
  cr_assert_eq(store_block_add(s, "alice@x", j, 1, 0), 0);
  cr_assert_eq(store_block_add(s, "bob@x", j, 1, 0), 0);
  cr_assert_eq(store_account_delete(s, "alice@x"), 0);
  cr_assert_eq(raw_block_rows("alice@x"), 0);
  if (IS_REDIS) cr_assert_eq(rint_cmd("EXISTS {u:alice@x}:b"), 0);
  cr_assert_eq(raw_block_rows("bob@x"), 1);
  add_user(s, "alice@x", 3);
  cr_assert_str_eq(blocked(s, "alice@x"), "", "a new account with the same name starts empty");
  store_close(s);
}

/* A version 4 file (before blocklists) gets the table; its data stays. */
Test(store_sqlite, schema_v4_upgraded_with_blocklist) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  store_close(s);
  raw_exec("DROP TRIGGER block_items_ins; DROP TRIGGER block_items_del; DROP TABLE blocklist;"
           "ALTER TABLE accounts DROP COLUMN block_items;"
           "DROP TRIGGER roster_ver_ins; DROP TRIGGER roster_ver_upd; DROP TRIGGER roster_ver_del;"
           "ALTER TABLE roster DROP COLUMN approved; ALTER TABLE accounts DROP COLUMN roster_ver;"
           MAM_V6_SQL "PRAGMA user_version = 4;");
  s = open_db();
  cr_assert_eq(raw_int("PRAGMA user_version"), 10);
  cr_assert_eq(store_account_exists(s, "alice@x"), 1);
  const char *j[] = {"romeo@m"};
  cr_assert_eq(store_block_add(s, "alice@x", j, 1, 0), 0);
  cr_assert_str_eq(blocked(s, "alice@x"), "romeo@m");
  store_close(s);
}

Test(store_redis, block_key_is_a_set) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  const char *j[] = {"romeo@m", "evil.example"};
  cr_assert_eq(store_block_add(s, "alice@x", j, 2, 0), 0);
  type_is("{u:alice@x}:b", "set");
  cr_assert_eq(rint_cmd("SISMEMBER {u:alice@x}:b romeo@m"), 1);
  store_close(s);
}

/* ---- roster versioning and pre-approval (RFC 6121 §2.6, §3.4) ---------------------------- */

static int64_t ver_of(store_t *s, const char *bare) {
  int64_t v = -1;
  cr_assert_eq(store_roster_ver(s, bare, &v), 0);
  return v;
}

STORE_TEST(roster_ver_raised_by_every_change) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  cr_assert_eq(ver_of(s, "alice@x"), 0);
  cr_assert_eq(ver_of(s, "nobody@x"), 0); /* no account: 0, not an error */
  const char *g[] = {"G"};
  store_roster_item_t it = {.jid = "carol@y", .sub = SUB_NONE, .groups = g, .ngroups = 1};
  cr_assert_eq(store_roster_put(s, "alice@x", &it), 0); /* a new item */
  int64_t v1 = ver_of(s, "alice@x");
  cr_assert_gt(v1, 0);
  it.sub = SUB_TO; /* a replace */
  cr_assert_eq(store_roster_put(s, "alice@x", &it), 0);
  int64_t v2 = ver_of(s, "alice@x");
  cr_assert_gt(v2, v1);
  it.ngroups = 0; /* only the groups change */
  cr_assert_eq(store_roster_put(s, "alice@x", &it), 0);
  int64_t v3 = ver_of(s, "alice@x");
  cr_assert_gt(v3, v2);
  cr_assert_eq(ver_of(s, "bob@x"), 0); /* another account's version is its own */
  cr_assert_eq(store_roster_delete(s, "alice@x", "carol@y"), 0);
  int64_t v4 = ver_of(s, "alice@x");
  cr_assert_gt(v4, v3);
  cr_assert_eq(store_roster_delete(s, "alice@x", "carol@y"), XMPP_ENOENT); /* nothing removed */
  cr_assert_eq(ver_of(s, "alice@x"), v4);
  cr_assert_eq(store_roster_put(s, "nobody@x", &it), XMPP_ENOENT);
  cr_assert_eq(ver_of(s, "nobody@x"), 0);
  cr_assert_eq(store_roster_delete(s, "nobody@x", "carol@y"), XMPP_ENOENT);
  cr_assert_eq(ver_of(s, "nobody@x"), 0);
  if (IS_REDIS) cr_assert_eq(rint_cmd("EXISTS {u:nobody@x}:a"), 0); /* no account hash made */
  cr_assert_eq(store_roster_ver(s, "", &v1), XMPP_EINVAL);
  cr_assert_eq(store_roster_ver(s, "alice@x", NULL), XMPP_EINVAL);
  store_close(s);
  s = open_db(); /* durable */
  cr_assert_eq(ver_of(s, "alice@x"), v4);
  store_close(s);
}

STORE_TEST(roster_approved_flag) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  const char *g[] = {"G"};
  store_roster_item_t a = {.jid = "bob@y", .name = "B", .sub = SUB_TO, .groups = g, .ngroups = 1,
                           .approved = 5 /* any non-zero */};
  store_roster_item_t b = {.jid = "carol@y", .sub = SUB_NONE, .ask_out = 1};
  cr_assert_eq(store_roster_put(s, "alice@x", &a), 0);
  cr_assert_eq(store_roster_put(s, "alice@x", &b), 0);
  roster_t r = load(s, "alice@x");
  cr_assert_eq(r.n, 2);
  cr_assert_eq(r.it[0].approved, 1);
  cr_assert_eq(r.it[0].sub, SUB_TO);
  cr_assert_str_eq(r.it[0].name, "B");
  cr_assert_eq(r.it[0].ngroups, 1);
  cr_assert_eq(r.it[1].approved, 0);
  cr_assert_eq(r.it[1].ask_out, 1);
  roster_t one;
  memset(&one, 0, sizeof one);
  cr_assert_eq(store_roster_get(s, "alice@x", "bob@y", roster_cb, &one), 0);
  cr_assert_eq(one.n, 1);
  cr_assert_eq(one.it[0].approved, 1);
  a.approved = 0; /* cleared */
  cr_assert_eq(store_roster_put(s, "alice@x", &a), 0);
  memset(&one, 0, sizeof one);
  cr_assert_eq(store_roster_get(s, "alice@x", "bob@y", roster_cb, &one), 0);
  cr_assert_eq(one.it[0].approved, 0);
  store_close(s);
}

Test(store_sqlite, schema_v5_upgraded_with_roster_ver_and_approved) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  store_roster_item_t it = {.jid = "bob@y", .sub = SUB_TO};
  cr_assert_eq(store_roster_put(s, "alice@x", &it), 0);
  store_close(s);
  /* back to what version 5 had: no approved column, no roster_ver, no triggers */
  raw_exec("DROP TRIGGER roster_ver_ins; DROP TRIGGER roster_ver_upd; DROP TRIGGER roster_ver_del;"
           "ALTER TABLE roster DROP COLUMN approved; ALTER TABLE accounts DROP COLUMN roster_ver;"
           MAM_V6_SQL "PRAGMA user_version = 5;");
  s = open_db();
  cr_assert_eq(raw_int("PRAGMA user_version"), 10);
  roster_t r = load(s, "alice@x");
  cr_assert_eq(r.n, 1);
  cr_assert_eq(r.it[0].approved, 0);
  cr_assert_eq(ver_of(s, "alice@x"), 0);
  it.approved = 1;
  cr_assert_eq(store_roster_put(s, "alice@x", &it), 0);
  cr_assert_eq(ver_of(s, "alice@x"), 1);
  r = load(s, "alice@x");
  cr_assert_eq(r.it[0].approved, 1);
  store_close(s);
}

/* store_set_cache (the archive writer's handle): accepted by both back-ends, and the
 * handle keeps working. */
STORE_TEST(set_cache) {
  store_t *s = open_db();
  cr_assert_eq(store_set_cache(s, 32u << 20), 0);
  cr_assert_eq(store_set_cache(NULL, 1), XMPP_EINVAL);
  add_user(s, "alice@x", 1);
  mam_put(s, "alice@x", 1000, "bob@x", NULL, NULL);
  cr_assert_eq(store_mam_count(s, "alice@x"), 1);
  store_close(s);
}

/* ---- XEP-0484 FAST tokens ---- */

static store_fast_t fast_tok(unsigned char c, int64_t exp) {
  store_fast_t t;
  memset(&t, 0, sizeof t);
  memset(t.cur, c, sizeof t.cur);
  memset(t.prev, c + 1, sizeof t.prev);
  t.cur_expiry = exp;
  t.prev_expiry = exp - 1;
  return t;
}

STORE_TEST(fast_put_get_count_delete) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  add_user(s, "bob@x", 2);
  store_fast_t t = fast_tok(7, 1000), got;
  cr_assert_eq(store_fast_get(s, "alice@x", "ua1", &got), XMPP_ENOENT);
  cr_assert_eq(store_fast_put(s, "nobody@x", "ua1", &t, 0), XMPP_ENOENT, "no account");
  cr_assert_eq(store_fast_put(s, "alice@x", "ua1", &t, 0), 0);
  cr_assert_eq(store_fast_get(s, "alice@x", "ua1", &got), 0);
  cr_assert_eq(memcmp(got.cur, t.cur, 32), 0);
  cr_assert_eq(memcmp(got.prev, t.prev, 32), 0);
  cr_assert_eq(got.cur_expiry, 1000);
  cr_assert_eq(got.prev_expiry, 999);
  cr_assert_eq(got.count, -1);
  cr_assert_eq(store_fast_get(s, "bob@x", "ua1", &got), XMPP_ENOENT, "another account's is apart");
  /* replay protection: strictly increasing, per token (matched by its hash) */
  unsigned char cur7[32], prev8[32], new9[32], other[32];
  memset(cur7, 7, 32);
  memset(prev8, 8, 32);
  memset(new9, 9, 32);
  memset(other, 6, 32);
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", cur7, 0), 0);
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", cur7, 0), XMPP_EDENIED, "count = last");
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", cur7, 5), 0);
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", cur7, 4), XMPP_EDENIED);
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", cur7, 6), 0, "count = last + 1");
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", prev8, 2), 0, "the previous token counts apart");
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", prev8, 2), XMPP_EDENIED);
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", other, 100), XMPP_ENOENT, "a token not held");
  cr_assert_eq(store_fast_count(s, "alice@x", "ua2", cur7, 1), XMPP_ENOENT);
  cr_assert_eq(store_fast_get(s, "alice@x", "ua1", &got), 0);
  cr_assert_eq(got.count, 6);
  cr_assert_eq(got.prev_count, 2);
  /* a new token starts at -1; the one it replaces keeps its count in the previous slot */
  t = fast_tok(9, 2000);
  memcpy(t.prev, cur7, 32);
  t.cur_mech = STORE_FAST_EXPR;
  t.prev_mech = STORE_FAST_ENDP;
  cr_assert_eq(store_fast_put(s, "alice@x", "ua1", &t, 0), 0);
  cr_assert_eq(store_fast_get(s, "alice@x", "ua1", &got), 0);
  cr_assert_eq(got.count, -1);
  cr_assert_eq(got.prev_count, 6, "the old token's count is not reset by the reissue");
  cr_assert_eq(got.cur_mech, STORE_FAST_EXPR);
  cr_assert_eq(got.prev_mech, STORE_FAST_ENDP);
  cr_assert_eq(got.cur[0], 9);
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", cur7, 6), XMPP_EDENIED, "old token after reissue: count = last");
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", cur7, 7), 0);
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", new9, 1), 0);
  /* the previous one dropped: the current one keeps its count */
  memset(t.prev, 0, 32);
  t.prev_expiry = 0;
  cr_assert_eq(store_fast_put(s, "alice@x", "ua1", &t, 0), 0);
  cr_assert_eq(store_fast_get(s, "alice@x", "ua1", &got), 0);
  cr_assert_eq(got.count, 1);
  cr_assert_eq(got.prev_count, -1);
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", cur7, 8), XMPP_ENOENT, "gone");
  cr_assert_eq(store_fast_put(s, "alice@x", "ua2", &t, 0), 0);
  cr_assert_eq(store_fast_delete(s, "alice@x", "ua2"), 1);
  cr_assert_eq(store_fast_delete(s, "alice@x", "ua2"), 0);
  cr_assert_eq(store_fast_put(s, "alice@x", "ua2", &t, 0), 0);
  cr_assert_eq(store_fast_put(s, "alice@x", "ua3", &t, 0), 0);
  cr_assert_eq(store_fast_delete(s, "alice@x", NULL), 3, "all of the account's");
  cr_assert_eq(store_fast_get(s, "alice@x", "ua1", &got), XMPP_ENOENT);
  /* they go with the account */
  cr_assert_eq(store_fast_put(s, "bob@x", "ua1", &t, 0), 0);
  cr_assert_eq(store_account_delete(s, "bob@x"), 0);
  add_user(s, "bob@x", 2);
  cr_assert_eq(store_fast_get(s, "bob@x", "ua1", &got), XMPP_ENOENT);
  store_close(s);
}

/* Version 8 kept one count per user agent and no mechanism: upgraded, the count is the
 * current token's, the replaced one has none (-1), both are -NONE tokens. */
Test(store_sqlite, schema_v8_upgraded_fast_counts) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  store_fast_t t = fast_tok(7, 1000), got;
  cr_assert_eq(store_fast_put(s, "alice@x", "ua1", &t, 0), 0);
  store_close(s);
  raw_exec("ALTER TABLE fast DROP COLUMN prev_count; ALTER TABLE fast DROP COLUMN cur_mech;"
           "ALTER TABLE fast DROP COLUMN prev_mech; UPDATE fast SET count = 4; PRAGMA user_version = 8;");
  s = open_db();
  cr_assert_eq(raw_int("PRAGMA user_version"), 10);
  cr_assert_eq(store_fast_get(s, "alice@x", "ua1", &got), 0);
  cr_assert_eq(got.count, 4);
  cr_assert_eq(got.prev_count, -1);
  cr_assert_eq(got.cur_mech, STORE_FAST_NONE);
  cr_assert_eq(got.prev_mech, STORE_FAST_NONE);
  unsigned char cur7[32];
  memset(cur7, 7, 32);
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", cur7, 4), XMPP_EDENIED);
  cr_assert_eq(store_fast_count(s, "alice@x", "ua1", cur7, 5), 0);
  store_close(s);
}

/* At most max user agents: the put of the (max+1)th evicts the token expiring first. */
STORE_TEST(fast_limit) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  store_fast_t a = fast_tok(1, 300), b = fast_tok(2, 100), c = fast_tok(3, 200), got;
  cr_assert_eq(store_fast_put(s, "alice@x", "a", &a, 2), 0);
  cr_assert_eq(store_fast_put(s, "alice@x", "b", &b, 2), 0);
  cr_assert_eq(store_fast_get(s, "alice@x", "a", &got), 0, "N fits");
  cr_assert_eq(store_fast_get(s, "alice@x", "b", &got), 0);
  cr_assert_eq(store_fast_put(s, "alice@x", "b", &c, 2), 0, "replacing adds none");
  cr_assert_eq(store_fast_get(s, "alice@x", "a", &got), 0);
  cr_assert_eq(store_fast_put(s, "alice@x", "c", &b, 2), 0);
  cr_assert_eq(store_fast_get(s, "alice@x", "b", &got), XMPP_ENOENT, "N+1: the one expiring first (b, 200) went");
  cr_assert_eq(store_fast_get(s, "alice@x", "a", &got), 0);
  cr_assert_eq(store_fast_get(s, "alice@x", "c", &got), 0, "the new one stays, though it expires first");
  store_close(s);
}

/* ---- runtime domains and accounts per domain (schema 10) ------------------------------ */

typedef struct {
  char names[8][64], tmpls[8][64], certs[8][64];
  int n;
} doms_t;

static void dom_cb(const store_domain_t *d, void *ud) {
  doms_t *l = ud;
  cr_assert_lt(l->n, 8);
  snprintf(l->names[l->n], 64, "%s", d->name);
  snprintf(l->tmpls[l->n], 64, "%s", d->tmpl);
  snprintf(l->certs[l->n], 64, "%s|%s", d->cert, d->key);
  cr_assert_gt(d->created, 0);
  l->n++;
}

STORE_TEST(runtime_domains_add_list_remove_version) {
  store_t *s = open_db();
  int64_t v0 = -1, v;
  cr_assert_eq(store_domain_version(s, &v0), 0);
  store_domain_t a = {"a.test", "tmpl.test", "/c.pem", "/k.pem", 0}, b = {"b.test", "", "", "", 0};
  cr_assert_eq(store_domain_add(s, &a), 0);
  cr_assert_eq(store_domain_add(s, &b), 0);
  cr_assert_eq(store_domain_add(s, &a), XMPP_EEXIST);
  cr_assert_eq(store_domain_version(s, &v), 0);
  cr_assert_eq(v, v0 + 2, "each add raises it, a refused one does not");
  doms_t l = {0};
  cr_assert_eq(store_domain_list(s, dom_cb, &l), 0);
  cr_assert_eq(l.n, 2);
  int ia = strcmp(l.names[0], "a.test") == 0 ? 0 : 1;
  cr_assert_str_eq(l.names[ia], "a.test");
  cr_assert_str_eq(l.tmpls[ia], "tmpl.test");
  cr_assert_str_eq(l.certs[ia], "/c.pem|/k.pem");
  cr_assert_str_eq(l.certs[1 - ia], "|");
  cr_assert_eq(store_domain_remove(s, "a.test"), 0);
  cr_assert_eq(store_domain_remove(s, "a.test"), XMPP_ENOENT);
  cr_assert_eq(store_domain_version(s, &v), 0);
  cr_assert_eq(v, v0 + 3);
  memset(&l, 0, sizeof l);
  cr_assert_eq(store_domain_list(s, dom_cb, &l), 0);
  cr_assert_eq(l.n, 1);
  cr_assert_str_eq(l.names[0], "b.test");
  /* kept across handles (a restart) */
  store_close(s);
  s = open_db();
  memset(&l, 0, sizeof l);
  cr_assert_eq(store_domain_list(s, dom_cb, &l), 0);
  cr_assert_eq(l.n, 1);
  store_close(s);
}

STORE_TEST(accounts_per_domain_and_the_cap) {
  store_t *s = open_db();
  cr_assert_eq(store_domain_accounts(s, "d.test"), 0);
  add_user(s, "a@d.test", 1);
  add_user(s, "b@d.test", 2);
  add_user(s, "a@e.test", 3);
  cr_assert_eq(store_domain_accounts(s, "d.test"), 2);
  cr_assert_eq(store_domain_accounts(s, "e.test"), 1);
  store_account_t acct = mk_acct(9);
  /* at N = 3: one more passes, then N + 1 is refused */
  cr_assert_eq(store_account_create_max(s, "c@d.test", &acct, 3), 0);
  cr_assert_eq(store_account_create_max(s, "x@d.test", &acct, 3), XMPP_ELIMIT);
  cr_assert_eq(store_account_exists(s, "x@d.test"), 0);
  cr_assert_eq(store_domain_accounts(s, "d.test"), 3, "the refused one is not counted");
  cr_assert_eq(store_account_create_max(s, "a@d.test", &acct, 9), XMPP_EEXIST);
  cr_assert_eq(store_domain_accounts(s, "d.test"), 3);
  cr_assert_eq(store_account_create_max(s, "y@e.test", &acct, 3), 0, "another domain's budget");
  cr_assert_eq(store_account_create_max(s, "z@d.test", &acct, 0), 0, "0: no cap");
  cr_assert_eq(store_account_delete(s, "a@d.test"), 0);
  cr_assert_eq(store_account_delete(s, "z@d.test"), 0);
  cr_assert_eq(store_domain_accounts(s, "d.test"), 2);
  cr_assert_eq(store_account_create_max(s, "x@d.test", &acct, 3), 0, "a place again");
  store_close(s);
}

/* Schema 9 to 10: the existing accounts are counted per domain. */
Test(store_sqlite, schema_v9_upgraded_with_domain_counts) {
  store_t *s = open_db();
  add_user(s, "a@d.test", 1);
  add_user(s, "b@d.test", 2);
  store_close(s);
  raw_exec("DROP TRIGGER accounts_domain_ins; DROP TRIGGER accounts_domain_del; DROP TABLE domain_accounts;"
           "DROP TABLE runtime_domains; DROP TABLE domains_ver; PRAGMA user_version = 9;");
  s = open_db();
  cr_assert_eq(raw_int("PRAGMA user_version"), 10);
  cr_assert_eq(store_domain_accounts(s, "d.test"), 2);
  add_user(s, "c@d.test", 3);
  cr_assert_eq(store_domain_accounts(s, "d.test"), 3);
  store_close(s);
}

/* The Redis counterpart: accounts from before the per-domain sets (a layout without
 * {d:DOMAIN}:n nor the xmppd:domain_sets mark) are counted at the next open, from the
 * account index (dsets_backfill), live accounts only. */
Test(store_redis, domain_sets_filled_from_the_account_index) {
  store_t *s = open_db();
  add_user(s, "a@d.test", 1);
  add_user(s, "b@d.test", 2);
  add_user(s, "c@e.test", 3);
  store_close(s);
  freeReplyObject(rcmd("DEL {d:d.test}:n {d:e.test}:n xmppd:domain_sets"));
  freeReplyObject(rcmd("ZADD accounts 0 gone@d.test")); /* in the index, no account */
  s = open_db();
  cr_assert_eq(store_domain_accounts(s, "d.test"), 2);
  cr_assert_eq(store_domain_accounts(s, "e.test"), 1);
  cr_assert_eq(rint_cmd("EXISTS xmppd:domain_sets"), 1, "done once");
  store_close(s);
}

/* Store interface against the SQLite back-end: accounts, rosters (groups with odd names),
 * offline queues (order, limit, at-least-once pop), cascades on delete, several handles
 * (and threads) on one file, persistence across reopen. Each test gets its own temp dir. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sqlite3.h>
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

static char g_dir[64];
static char g_db[128];

static void setup(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/test_store.XXXXXX");
  cr_assert_not_null(mkdtemp(g_dir));
  snprintf(g_db, sizeof g_db, "%s/x.db", g_dir);
  log_set_level(LOG_NONE);
}

static void teardown(void) {
  static const char *sfx[] = {"", "-wal", "-shm", "-journal"};
  char p[160];
  for (size_t i = 0; i < 4; i++) {
    snprintf(p, sizeof p, "%s%s", g_db, sfx[i]);
    unlink(p);
  }
  rmdir(g_dir);
}

TestSuite(store, .init = setup, .fini = teardown);

static store_t *open_db(void) {
  char *err = NULL;
  store_t *s = store_open("sqlite", g_db, &err);
  cr_assert_not_null(s, "store_open: %s", err ? err : "?");
  cr_assert_null(err);
  return s;
}

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

/* ---- open ----------------------------------------------------------------------------- */

Test(store, open_creates_schema_wal) {
  store_t *s = open_db();
  cr_assert_eq(raw_int("PRAGMA user_version"), 1);
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
  cr_assert_eq(raw_int("PRAGMA user_version"), 1);
  store_close(s);
}

Test(store, open_errors) {
  char *err = NULL;
  cr_assert_null(store_open("redis-not-yet", g_db, &err));
  cr_assert_not_null(err);
  cr_assert_not_null(strstr(err, "redis-not-yet"));
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

Test(store, open_refuses_newer_schema) {
  store_close(open_db());
  raw_exec("PRAGMA user_version = 99");
  char *err = NULL;
  cr_assert_null(store_open("sqlite", g_db, &err));
  cr_assert_not_null(err);
  cr_assert_not_null(strstr(err, "newer"), "%s", err);
  xfree(err);
}

/* ---- accounts ------------------------------------------------------------------------- */

Test(store, account_crud) {
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

Test(store, account_stores_only_needed_bytes) {
  store_t *s = open_db();
  store_account_t a, got;
  mk_cred(&a.sha1, 3, 1, 1);
  mk_cred(&a.sha256, 4, SCRAM_MAX_SALT, UINT32_MAX);
  cr_assert_eq(store_account_create(s, "a@x", &a), 0);
  cr_assert_eq(store_account_get(s, "a@x", &got), 0);
  expect_acct(&got, &a);
  cr_assert_eq(raw_int("SELECT length(sha1_stored) FROM accounts"), 20);
  cr_assert_eq(raw_int("SELECT length(sha1_server) FROM accounts"), 20);
  cr_assert_eq(raw_int("SELECT length(sha256_stored) FROM accounts"), 32);
  cr_assert_eq(raw_int("SELECT length(sha256_server) FROM accounts"), 32);
  cr_assert_eq(raw_int("SELECT length(sha1_salt) FROM accounts"), 1);
  cr_assert_eq(raw_int("SELECT length(sha256_salt) FROM accounts"), SCRAM_MAX_SALT);
  cr_assert_eq(raw_int("SELECT sha256_iter FROM accounts"), UINT32_MAX);
  cr_assert_gt(raw_int("SELECT created FROM accounts"), time(NULL) - 60);

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

Test(store, account_corrupt_row_is_eio) {
  store_t *s = open_db();
  add_user(s, "a@x", 1);
  raw_exec("UPDATE accounts SET sha256_stored = x'0102'");
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

Test(store, account_list_sorted) {
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

Test(store, invalid_arguments) {
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
  cr_assert_eq(store_offline_push(s, "a@x", NULL, 3, 0), XMPP_EINVAL);
  cr_assert_eq(store_offline_pop_all(s, "a@x", NULL, NULL), XMPP_EINVAL);
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
  int ask_out, pending_in;
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

Test(store, roster_put_load) {
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

Test(store, roster_odd_group_names) {
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
  cr_assert_eq(raw_int("SELECT count(*) FROM roster_groups"), 8);
  store_close(s);
}

Test(store, roster_replace) {
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
  cr_assert_eq(raw_int("SELECT count(*) FROM roster_groups"), 0);
  cr_assert_eq(raw_int("SELECT count(*) FROM roster"), 1);
  store_close(s);
}

Test(store, roster_delete) {
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
  cr_assert_eq(raw_int("SELECT count(*) FROM roster_groups"), 1);
  store_close(s);
}

Test(store, roster_needs_account) {
  store_t *s = open_db();
  store_roster_item_t it = {.jid = "bob@y", .sub = SUB_BOTH};
  cr_assert_eq(store_roster_put(s, "ghost@x", &it), XMPP_ENOENT);
  cr_assert_eq(raw_int("SELECT count(*) FROM roster"), 0);
  store_close(s);
}

/* ---- offline -------------------------------------------------------------------------- */

typedef struct {
  char msgs[16][64];
  size_t lens[16];
  int64_t stamps[16];
  int n;
  store_t *self;  /* for the re-entrancy checks */
  store_t *other; /* a second handle on the same file */
  int reentrant_rc, other_count, close_self;
} popped_t;

static void pop_cb(const char *xml, size_t len, int64_t stamp, void *ud) {
  popped_t *p = ud;
  cr_assert_lt(p->n, 16);
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
  cr_assert_eq(store_offline_push(s, who, xml, strlen(xml), max), want, "push %s", xml);
}

Test(store, offline_order_and_pop) {
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
  cr_assert_eq(store_offline_pop_all(s, "alice@x", pop_cb, &p), 0);
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
  cr_assert_eq(store_offline_pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 0);

  /* After a pop, new messages queue again, still in order. */
  push(s, "alice@x", "<x/>", 0, 0);
  push(s, "alice@x", "<y/>", 0, 0);
  cr_assert_eq(store_offline_pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 2);
  cr_assert_str_eq(p.msgs[0], "<x/>");
  cr_assert_str_eq(p.msgs[1], "<y/>");
  store_close(s);
}

Test(store, offline_binary_exact) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  const char raw[] = {'<', 'a', '>', '\0', '\xff', '<', '/', 'a', '>'};
  cr_assert_eq(store_offline_push(s, "alice@x", raw, sizeof raw, 0), 0);
  cr_assert_eq(store_offline_push(s, "alice@x", "", 0, 0), 0);
  popped_t p = {0};
  cr_assert_eq(store_offline_pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 2);
  cr_assert_eq(p.lens[0], sizeof raw);
  cr_assert_eq(memcmp(p.msgs[0], raw, sizeof raw), 0);
  cr_assert_eq(p.lens[1], 0);
  store_close(s);
}

Test(store, offline_limit) {
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
  cr_assert_eq(store_offline_pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 5);
  cr_assert_str_eq(p.msgs[0], "<1/>");
  cr_assert_str_eq(p.msgs[3], "<6/>");
  cr_assert_str_eq(p.msgs[4], "<7/>");
  push(s, "alice@x", "<8/>", 1, 0); /* room again */
  push(s, "alice@x", "<9/>", 1, XMPP_ELIMIT);
  store_close(s);
}

Test(store, offline_needs_account) {
  store_t *s = open_db();
  push(s, "ghost@x", "<m/>", 0, XMPP_ENOENT);
  push(s, "ghost@x", "<m/>", 10, XMPP_ENOENT);
  cr_assert_eq(raw_int("SELECT count(*) FROM offline"), 0);
  store_close(s);
}

Test(store, pop_deletes_after_callbacks) {
  store_t *s = open_db(), *s2 = open_db();
  add_user(s, "alice@x", 1);
  push(s, "alice@x", "<1/>", 0, 0);
  push(s, "alice@x", "<2/>", 0, 0);
  popped_t p = {.self = s, .other = s2, .other_count = -1};
  cr_assert_eq(store_offline_pop_all(s, "alice@x", pop_cb, &p), 0);
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

Test(store, close_from_callback_is_deferred) {
  store_t *s = open_db();
  add_user(s, "alice@x", 1);
  push(s, "alice@x", "<1/>", 0, 0);
  push(s, "alice@x", "<2/>", 0, 0);
  popped_t p = {.self = s, .close_self = 1};
  /* The handle is closed when pop_all returns (ASan would flag a use after free). */
  cr_assert_eq(store_offline_pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 2);
  s = open_db();
  cr_assert_eq(store_offline_count(s, "alice@x"), 0);
  store_close(s);
}

/* A process that dies inside the pop callbacks must not lose the queue. */
static void die_cb(const char *xml, size_t len, int64_t stamp, void *ud) { _exit(42); }

Test(store, crash_during_pop_keeps_messages) {
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
    store_t *c = store_open("sqlite", g_db, &err);
    if (!c) _exit(1);
    store_offline_pop_all(c, "alice@x", die_cb, NULL);
    _exit(2);
  }
  int st = 0;
  cr_assert_eq(waitpid(pid, &st, 0), pid);
  cr_assert(WIFEXITED(st));
  cr_assert_eq(WEXITSTATUS(st), 42);
  s = open_db();
  cr_assert_eq(store_offline_count(s, "alice@x"), 2);
  popped_t p = {0};
  cr_assert_eq(store_offline_pop_all(s, "alice@x", pop_cb, &p), 0);
  cr_assert_eq(p.n, 2);
  cr_assert_str_eq(p.msgs[0], "<1/>");
  store_close(s);
}

/* ---- cascades, several handles, persistence ------------------------------------------- */

Test(store, delete_cascades) {
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
  cr_assert_eq(raw_int("SELECT count(*) FROM roster WHERE owner = 'alice@x'"), 0);
  cr_assert_eq(raw_int("SELECT count(*) FROM roster_groups WHERE owner = 'alice@x'"), 0);
  cr_assert_eq(raw_int("SELECT count(*) FROM offline WHERE owner = 'alice@x'"), 0);
  /* bob untouched */
  cr_assert_eq(raw_int("SELECT count(*) FROM roster WHERE owner = 'bob@x'"), 1);
  cr_assert_eq(raw_int("SELECT count(*) FROM roster_groups WHERE owner = 'bob@x'"), 1);
  cr_assert_eq(store_offline_count(s, "bob@x"), 1);

  /* A new account with the same name starts empty. */
  add_user(s, "alice@x", 3);
  cr_assert_eq(load(s, "alice@x").n, 0);
  cr_assert_eq(store_offline_count(s, "alice@x"), 0);
  store_close(s);
}

Test(store, two_handles_see_each_other) {
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
  cr_assert_eq(store_offline_pop_all(b, "alice@x", pop_cb, &p), 0);
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
  store_t *s = store_open("sqlite", g_db, NULL);
  if (!s) {
    r->other = -1;
    return NULL;
  }
  for (int i = 0; i < PER_THREAD; i++) {
    int rc = store_offline_push(s, "alice@x", "<m/>", 4, LIMIT);
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

Test(store, threads_respect_limit, .timeout = 60) {
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

Test(store, reopen_persists) {
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
  cr_assert_eq(store_offline_pop_all(s, "alice@x", pop_cb, &p), 0);
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
  store_t *s = store_open("sqlite", g_db, NULL);
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

Test(store, threads_open_new_file_concurrently, .timeout = 60) {
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
  cr_assert_eq(raw_int("PRAGMA user_version"), 1);
  store_close(s);
}

/* store_batch_begin/end (xmppctl populate): many writes in one transaction, including the
 * calls that otherwise open their own (roster put); rollback drops them all. */
Test(store, batch_commit_and_rollback) {
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
  cr_assert_eq(raw_int("SELECT count(*) FROM accounts"), 100);
  cr_assert_eq(raw_int("SELECT count(*) FROM roster WHERE sub = 3"), 100);

  cr_assert_eq(store_batch_begin(s), 0);
  cr_assert_eq(store_account_create(s, "gone@localhost", &a), 0);
  store_roster_item_t it = {.jid = "b1@localhost", .sub = SUB_TO};
  cr_assert_eq(store_roster_put(s, "gone@localhost", &it), 0);
  cr_assert_eq(store_batch_end(s, 0), 0);
  cr_assert_eq(store_account_exists(s, "gone@localhost"), 0);
  cr_assert_eq(raw_int("SELECT count(*) FROM roster"), 100);
  cr_assert_neq(store_batch_end(s, 1), 0, "no batch open");
  /* normal calls work again after a batch */
  cr_assert_eq(store_account_create(s, "after@localhost", &a), 0);
  cr_assert_eq(store_account_exists(s, "after@localhost"), 1);
  store_close(s);
}

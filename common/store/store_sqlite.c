/* SQLite back-end of the store: one database file, WAL journal, one connection per handle.
 *
 * Concurrency. Every thread opens its own handle (connection) on the same file. WAL lets
 * readers run beside one writer; a busy_timeout makes a connection wait for another's
 * write lock instead of failing at once. Every read-modify-write (offline push with a
 * limit, pop_all, roster put, account delete) runs in BEGIN IMMEDIATE: the write lock is
 * taken up front, so two connections never both read and then fail to upgrade, and the
 * count a limit is checked against is the count the insert lands on. A lock still busy
 * after the timeout is reported as XMPP_AGAIN; other SQLite failures as XMPP_EIO.
 *
 * Schema (version in PRAGMA user_version, created or upgraded on open, inside one
 * transaction so that concurrent opens of a new file are harmless):
 *   accounts(jid PK, sha1_salt, sha1_iter, sha1_stored, sha1_server, sha256_*, created)
 *     SCRAM credentials only, never a password; only salt_len bytes of salt and the
 *     hash length of each key (20 for SHA-1, 32 for SHA-256) are stored.
 *   roster(owner, contact, name, sub, ask_out, pending_in, PK(owner, contact))
 *   roster_groups(owner, contact, pos, grp, PK(owner, contact, pos)): one row per group,
 *     so a group name may hold any character (commas, quotes, newlines...) unescaped;
 *     pos keeps the order the groups were given in.
 *   accounts.roster_items (version 2): the number of the account's roster rows, kept by
 *     triggers on roster (store_roster_count reads it: no count over the rows).
 *   offline(id AUTOINCREMENT, owner, stamp unix seconds, xml BLOB), index (owner, id):
 *     AUTOINCREMENT ids never go back, so id order is arrival order.
 *   blocklist(owner, jid, PK(owner, jid)) (version 3): XEP-0191, one row per blocked JID,
 *     so one block writes one row and "is X blocked" is a primary-key look-up;
 *     accounts.block_items counts them, kept by triggers like roster_items.
 * roster.owner and offline.owner reference accounts(jid) ON DELETE CASCADE (foreign_keys
 * is on): rows for an account that does not exist are refused with XMPP_ENOENT, and
 * account delete also removes them explicitly, in the same transaction.
 *
 * Offline delivery is at-least-once: pop_all runs the callbacks, then deletes exactly the
 * rows it returned (id <= last id seen) and commits. A crash or failure before the commit
 * leaves the messages queued; none is deleted that was not handed to the callback.
 *
 * Statements are prepared once per handle (SQLITE_PREPARE_PERSISTENT), on first use, and
 * reset after each use. Every sqlite3_* result is checked and failures are logged. */
#include <inttypes.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"
#include "common/scram.h"
#include "common/store/store_impl.h"

#define SQ_SCHEMA_VERSION 3
#define SQ_BUSY_TIMEOUT_MS 5000

enum {
  Q_BEGIN,
  Q_BEGIN_IMMEDIATE,
  Q_COMMIT,
  Q_ROLLBACK,
  Q_ACC_GET,
  Q_ACC_EXISTS,
  Q_ACC_INSERT,
  Q_ACC_UPDATE,
  Q_ACC_DELETE,
  Q_ACC_LIST,
  Q_ACC_DEL_GROUPS,
  Q_ACC_DEL_ROSTER,
  Q_ACC_DEL_OFFLINE,
  Q_ROSTER_SELECT,
  Q_ROSTER_GROUPS,
  Q_ROSTER_UPSERT,
  Q_ROSTER_CLEAR_GROUPS,
  Q_ROSTER_ADD_GROUP,
  Q_ROSTER_DELETE,
  Q_ROSTER_SELECT_ONE,
  Q_ROSTER_COUNT,
  Q_OFF_COUNT,
  Q_OFF_INSERT,
  Q_OFF_SELECT,
  Q_OFF_DELETE_UPTO,
  /* XEP-0191 blocklist (version 3) */
  Q_BLOCK_SELECT,
  Q_BLOCK_INSERT,
  Q_BLOCK_DELETE,
  Q_BLOCK_CLEAR,
  Q_BLOCK_COUNT,
  Q_BLOCK_ONE,
  Q_COUNT
};

static const char *const sql_text[Q_COUNT] = {
    [Q_BEGIN] = "BEGIN",
    [Q_BEGIN_IMMEDIATE] = "BEGIN IMMEDIATE",
    [Q_COMMIT] = "COMMIT",
    [Q_ROLLBACK] = "ROLLBACK",
    [Q_ACC_GET] = "SELECT sha1_salt, sha1_iter, sha1_stored, sha1_server, "
                  "sha256_salt, sha256_iter, sha256_stored, sha256_server "
                  "FROM accounts WHERE jid = ?1",
    [Q_ACC_EXISTS] = "SELECT 1 FROM accounts WHERE jid = ?1",
    [Q_ACC_INSERT] = "INSERT INTO accounts (jid, sha1_salt, sha1_iter, sha1_stored, sha1_server, "
                     "sha256_salt, sha256_iter, sha256_stored, sha256_server, created) "
                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    [Q_ACC_UPDATE] = "UPDATE accounts SET sha1_salt = ?2, sha1_iter = ?3, sha1_stored = ?4, "
                     "sha1_server = ?5, sha256_salt = ?6, sha256_iter = ?7, sha256_stored = ?8, "
                     "sha256_server = ?9 WHERE jid = ?1",
    [Q_ACC_DELETE] = "DELETE FROM accounts WHERE jid = ?1",
    [Q_ACC_LIST] = "SELECT jid FROM accounts ORDER BY jid",
    [Q_ACC_DEL_GROUPS] = "DELETE FROM roster_groups WHERE owner = ?1",
    [Q_ACC_DEL_ROSTER] = "DELETE FROM roster WHERE owner = ?1",
    [Q_ACC_DEL_OFFLINE] = "DELETE FROM offline WHERE owner = ?1",
    [Q_ROSTER_SELECT] = "SELECT contact, name, sub, ask_out, pending_in FROM roster "
                        "WHERE owner = ?1 ORDER BY contact",
    [Q_ROSTER_GROUPS] = "SELECT grp FROM roster_groups WHERE owner = ?1 AND contact = ?2 "
                        "ORDER BY pos",
    [Q_ROSTER_UPSERT] = "INSERT INTO roster (owner, contact, name, sub, ask_out, pending_in) "
                        "VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
                        "ON CONFLICT (owner, contact) DO UPDATE SET name = excluded.name, "
                        "sub = excluded.sub, ask_out = excluded.ask_out, "
                        "pending_in = excluded.pending_in",
    [Q_ROSTER_CLEAR_GROUPS] = "DELETE FROM roster_groups WHERE owner = ?1 AND contact = ?2",
    [Q_ROSTER_ADD_GROUP] = "INSERT INTO roster_groups (owner, contact, pos, grp) "
                           "VALUES (?1, ?2, ?3, ?4)",
    [Q_ROSTER_DELETE] = "DELETE FROM roster WHERE owner = ?1 AND contact = ?2",
    [Q_ROSTER_SELECT_ONE] = "SELECT name, sub, ask_out, pending_in FROM roster "
                            "WHERE owner = ?1 AND contact = ?2",
    [Q_ROSTER_COUNT] = "SELECT roster_items FROM accounts WHERE jid = ?1",
    [Q_OFF_COUNT] = "SELECT count(*), total(length(xml)) FROM offline WHERE owner = ?1",
    [Q_OFF_INSERT] = "INSERT INTO offline (owner, stamp, xml) VALUES (?1, ?2, ?3)",
    [Q_OFF_SELECT] = "SELECT id, stamp, xml FROM offline WHERE owner = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    [Q_OFF_DELETE_UPTO] = "DELETE FROM offline WHERE owner = ?1 AND id <= ?2",
    [Q_BLOCK_SELECT] = "SELECT jid FROM blocklist WHERE owner = ?1",
    [Q_BLOCK_INSERT] = "INSERT OR IGNORE INTO blocklist (owner, jid) VALUES (?1, ?2)",
    [Q_BLOCK_DELETE] = "DELETE FROM blocklist WHERE owner = ?1 AND jid = ?2",
    [Q_BLOCK_CLEAR] = "DELETE FROM blocklist WHERE owner = ?1",
    [Q_BLOCK_COUNT] = "SELECT block_items FROM accounts WHERE jid = ?1",
    [Q_BLOCK_ONE] = "SELECT 1 FROM blocklist WHERE owner = ?1 AND jid = ?2",
};

/* Version 3: XEP-0191 blocklists, one row per blocked JID (WITHOUT ROWID: the primary
 * key is the table, so a user's rows are one contiguous range), and their number per
 * account kept by triggers (the cap is checked on one row, not on a count of the list:
 * INSERT OR IGNORE fires the insert trigger only for a row really added). */
static const char schema_v3[] =
    "CREATE TABLE IF NOT EXISTS blocklist ("
    "  owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,"
    "  jid TEXT NOT NULL,"
    "  PRIMARY KEY (owner, jid)) WITHOUT ROWID;"
    "ALTER TABLE accounts ADD COLUMN block_items INTEGER NOT NULL DEFAULT 0;"
    "CREATE TRIGGER IF NOT EXISTS block_items_ins AFTER INSERT ON blocklist BEGIN "
    "  UPDATE accounts SET block_items = block_items + 1 WHERE jid = NEW.owner; END;"
    "CREATE TRIGGER IF NOT EXISTS block_items_del AFTER DELETE ON blocklist BEGIN "
    "  UPDATE accounts SET block_items = block_items - 1 WHERE jid = OLD.owner; END;";

/* Version 2: each account keeps the number of its roster items, kept right by triggers
 * (whatever writes the rows, the cascade of an account delete included), so that
 * store_roster_count reads one row instead of counting a roster's rows (185 us for 2,000
 * items: what a subscription stanza to an offline user would have cost per item). */
static const char schema_v2[] =
    "ALTER TABLE accounts ADD COLUMN roster_items INTEGER NOT NULL DEFAULT 0;"
    "UPDATE accounts SET roster_items = (SELECT count(*) FROM roster WHERE owner = accounts.jid);"
    "CREATE TRIGGER IF NOT EXISTS roster_items_ins AFTER INSERT ON roster BEGIN "
    "  UPDATE accounts SET roster_items = roster_items + 1 WHERE jid = NEW.owner; END;"
    "CREATE TRIGGER IF NOT EXISTS roster_items_del AFTER DELETE ON roster BEGIN "
    "  UPDATE accounts SET roster_items = roster_items - 1 WHERE jid = OLD.owner; END;";

static const char schema_v1[] =
    "CREATE TABLE IF NOT EXISTS accounts ("
    "  jid TEXT NOT NULL PRIMARY KEY,"
    "  sha1_salt BLOB NOT NULL, sha1_iter INTEGER NOT NULL,"
    "  sha1_stored BLOB NOT NULL, sha1_server BLOB NOT NULL,"
    "  sha256_salt BLOB NOT NULL, sha256_iter INTEGER NOT NULL,"
    "  sha256_stored BLOB NOT NULL, sha256_server BLOB NOT NULL,"
    "  created INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS roster ("
    "  owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,"
    "  contact TEXT NOT NULL,"
    "  name TEXT,"
    "  sub INTEGER NOT NULL DEFAULT 0 CHECK (sub BETWEEN 0 AND 3),"
    "  ask_out INTEGER NOT NULL DEFAULT 0,"
    "  pending_in INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (owner, contact));"
    "CREATE TABLE IF NOT EXISTS roster_groups ("
    "  owner TEXT NOT NULL,"
    "  contact TEXT NOT NULL,"
    "  pos INTEGER NOT NULL,"
    "  grp TEXT NOT NULL,"
    "  PRIMARY KEY (owner, contact, pos),"
    "  FOREIGN KEY (owner, contact) REFERENCES roster (owner, contact) ON DELETE CASCADE);"
    "CREATE TABLE IF NOT EXISTS offline ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,"
    "  stamp INTEGER NOT NULL,"
    "  xml BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS offline_owner ON offline (owner, id);";

typedef struct sq {
  sqlite3 *db;
  char *path;
  sqlite3_stmt *st[Q_COUNT];
  int batch; /* inside store_batch_begin: the per-call transactions are folded into it */
} sq_t;

/* ---- helpers ------------------------------------------------------------------------ */

static int map_rc(int rc) {
  switch (rc & 0xff) {
  case SQLITE_BUSY:
  case SQLITE_LOCKED: return XMPP_AGAIN;
  default: return XMPP_EIO;
  }
}

/* Logs a failure of what (with SQLite's message, read before any reset) and maps it. */
static int fail(sq_t *q, const char *what, int rc) {
  log_error("store(sqlite) %s: %s: %s (%d)", q->path, what, sqlite3_errmsg(q->db), rc);
  return map_rc(rc);
}

/* The cached statement id, prepared on first use. NULL (logged) on failure. */
static sqlite3_stmt *stmt(sq_t *q, int id) {
  if (q->st[id]) return q->st[id];
  int rc = sqlite3_prepare_v3(q->db, sql_text[id], -1, SQLITE_PREPARE_PERSISTENT, &q->st[id],
                              NULL);
  if (rc != SQLITE_OK) {
    fail(q, "prepare", rc);
    sqlite3_finalize(q->st[id]);
    q->st[id] = NULL;
  }
  return q->st[id];
}

/* Resets a statement after use so it holds no lock and no pointer to caller memory.
 * The result of the last step was already checked, so reset's copy of it is ignored. */
static void done(sqlite3_stmt *st) {
  if (!st) return;
  (void)sqlite3_reset(st);
  (void)sqlite3_clear_bindings(st);
}

static int bind_rc(sq_t *q, int rc) {
  if (rc == SQLITE_OK) return 0;
  return fail(q, "bind", rc);
}

static int bind_text(sq_t *q, sqlite3_stmt *st, int i, const char *s) {
  return bind_rc(q, s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i));
}

static int bind_blob(sq_t *q, sqlite3_stmt *st, int i, const void *p, size_t n) {
  /* A non-NULL pointer makes a zero-length blob (not NULL) when n == 0. */
  return bind_rc(q, sqlite3_bind_blob64(st, i, p ? p : "", (sqlite3_uint64)n, SQLITE_STATIC));
}

static int bind_int64(sq_t *q, sqlite3_stmt *st, int i, int64_t v) {
  return bind_rc(q, sqlite3_bind_int64(st, i, v));
}

/* Runs one of the no-result statements (BEGIN, COMMIT...). */
static int exec_q(sq_t *q, int id) {
  sqlite3_stmt *st = stmt(q, id);
  if (!st) return XMPP_EIO;
  int rc = sqlite3_step(st);
  int ret = rc == SQLITE_DONE ? 0 : fail(q, sql_text[id], rc);
  done(st);
  return ret;
}

static int tx_begin(sq_t *q, int immediate) {
  if (q->batch) return 0;
  return exec_q(q, immediate ? Q_BEGIN_IMMEDIATE : Q_BEGIN);
}

static int tx_commit(sq_t *q) {
  if (q->batch) return 0;
  int rc = exec_q(q, Q_COMMIT);
  /* A failed COMMIT may leave the transaction open: make sure it is gone. */
  if (rc && !sqlite3_get_autocommit(q->db)) (void)exec_q(q, Q_ROLLBACK);
  return rc;
}

static void tx_rollback(sq_t *q) {
  if (q->batch) return; /* the batch's owner rolls the whole batch back */
  if (!sqlite3_get_autocommit(q->db)) (void)exec_q(q, Q_ROLLBACK);
}

/* Binds ?1 = bare and steps a statement expected to finish without rows. */
static int run_owner(sq_t *q, int id, const char *bare) {
  sqlite3_stmt *st = stmt(q, id);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) ret = fail(q, sql_text[id], rc);
  }
  done(st);
  return ret;
}

/* ---- open / close ------------------------------------------------------------------- */


/* Runs a one-shot statement (a PRAGMA) and returns its first column as text into buf
 * (empty when it has no row). */
static int pragma(sqlite3 *db, const char *sql, char *buf, size_t bufsz) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
  if (rc != SQLITE_OK) return rc;
  if (buf) buf[0] = '\0';
  while ((rc = sqlite3_step(st)) == SQLITE_ROW)
    if (buf && !buf[0]) {
      const unsigned char *t = sqlite3_column_text(st, 0);
      snprintf(buf, bufsz, "%s", t ? (const char *)t : "");
    }
  sqlite3_finalize(st);
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void sq_close(void *be) {
  sq_t *q = be;
  if (!q) return;
  for (int i = 0; i < Q_COUNT; i++) sqlite3_finalize(q->st[i]);
  if (q->db) {
    int rc = sqlite3_close(q->db);
    if (rc != SQLITE_OK)
      log_error("store(sqlite) %s: close: %s (%d)", q->path, sqlite3_errmsg(q->db), rc);
  }
  xfree(q->path);
  xfree(q);
}

/* Creates or upgrades the schema inside one IMMEDIATE transaction. */
static int sq_schema(sq_t *q, char **err) {
  char v[32];
  int rc = sqlite3_exec(q->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
  if (rc != SQLITE_OK) goto sqlfail;
  if ((rc = pragma(q->db, "PRAGMA user_version", v, sizeof v)) != SQLITE_OK) goto sqlfail;
  long ver = strtol(v, NULL, 10);
  if (ver > SQ_SCHEMA_VERSION) {
    *err = xstrfmt("%s: database schema version %ld is newer than this program's (%d)", q->path,
               ver, SQ_SCHEMA_VERSION);
    sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
    return XMPP_EIO;
  }
  /* Version 0 is a new (or pre-versioning) file; CREATE ... IF NOT EXISTS is idempotent.
   * Later versions add their migration steps here, each one guarded by ver < N. */
  if ((rc = sqlite3_exec(q->db, schema_v1, NULL, NULL, NULL)) != SQLITE_OK) goto sqlfail;
  if (ver < 2 && (rc = sqlite3_exec(q->db, schema_v2, NULL, NULL, NULL)) != SQLITE_OK) goto sqlfail;
  if (ver < 3 && (rc = sqlite3_exec(q->db, schema_v3, NULL, NULL, NULL)) != SQLITE_OK) goto sqlfail;
  if (ver < SQ_SCHEMA_VERSION) {
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", SQ_SCHEMA_VERSION);
    if ((rc = sqlite3_exec(q->db, sql, NULL, NULL, NULL)) != SQLITE_OK) goto sqlfail;
  }
  if ((rc = sqlite3_exec(q->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) goto sqlfail;
  return 0;
sqlfail:
  *err = xstrfmt("%s: schema: %s", q->path, sqlite3_errmsg(q->db));
  if (!sqlite3_get_autocommit(q->db)) sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
  return map_rc(rc);
}

static void *sq_open(const char *path, char **err) {
  sq_t *q = xcalloc(1, sizeof *q);
  q->path = xstrdup(path);
  char buf[64];
  /* NOMUTEX: a handle belongs to one thread (store.h), so SQLite's per-connection mutex
   * is not needed. */
  int rc = sqlite3_open_v2(path, &q->db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    *err = xstrfmt("cannot open database %s: %s", path,
               q->db ? sqlite3_errmsg(q->db) : sqlite3_errstr(rc));
    goto fail;
  }
  const char *step = "extended_result_codes";
  if ((rc = sqlite3_extended_result_codes(q->db, 1)) != SQLITE_OK) goto sqlfail;
  step = "busy_timeout";
  if ((rc = sqlite3_busy_timeout(q->db, SQ_BUSY_TIMEOUT_MS)) != SQLITE_OK) goto sqlfail;
  /* foreign_keys is per connection and a no-op inside a transaction: set it first, then
   * read it back (a build without foreign key support silently ignores it). */
  step = "PRAGMA foreign_keys";
  if ((rc = pragma(q->db, "PRAGMA foreign_keys = ON", NULL, 0)) != SQLITE_OK) goto sqlfail;
  if ((rc = pragma(q->db, "PRAGMA foreign_keys", buf, sizeof buf)) != SQLITE_OK) goto sqlfail;
  if (strcmp(buf, "1") != 0) {
    *err = xstrfmt("%s: SQLite foreign key support is not available", path);
    goto fail;
  }
  step = "PRAGMA journal_mode";
  if ((rc = pragma(q->db, "PRAGMA journal_mode = WAL", buf, sizeof buf)) != SQLITE_OK)
    goto sqlfail;
  if (strcmp(buf, "wal") != 0 && strcmp(buf, "memory") != 0)
    log_warn("store(sqlite) %s: WAL journal not available (journal_mode=%s)", path, buf);
  step = "PRAGMA synchronous";
  if ((rc = pragma(q->db, "PRAGMA synchronous = NORMAL", NULL, 0)) != SQLITE_OK) goto sqlfail;
  if (sq_schema(q, err) != 0) goto fail;
  return q;
sqlfail:
  *err = xstrfmt("%s: %s failed: %s", path, step, sqlite3_errmsg(q->db));
fail:
  sq_close(q);
  return NULL;
}

/* ---- batches ------------------------------------------------------------------------ */

static int sq_batch_begin(void *be) {
  sq_t *q = be;
  if (q->batch) return XMPP_EINVAL;
  int rc = exec_q(q, Q_BEGIN_IMMEDIATE);
  if (!rc) q->batch = 1;
  return rc;
}

static int sq_batch_end(void *be, int commit) {
  sq_t *q = be;
  if (!q->batch) return XMPP_EINVAL;
  q->batch = 0;
  if (commit) return tx_commit(q);
  tx_rollback(q);
  return 0;
}

/* ---- accounts ----------------------------------------------------------------------- */

static int bind_cred(sq_t *q, sqlite3_stmt *st, int first, scram_hash_t h, const scram_cred_t *c) {
  size_t hl = scram_hash_len(h);
  int rc = bind_blob(q, st, first, c->salt, c->salt_len);
  if (!rc) rc = bind_int64(q, st, first + 1, c->iterations);
  if (!rc) rc = bind_blob(q, st, first + 2, c->stored_key, hl);
  if (!rc) rc = bind_blob(q, st, first + 3, c->server_key, hl);
  return rc;
}

static int bind_account(sq_t *q, sqlite3_stmt *st, const char *bare, const store_account_t *a) {
  int rc = bind_text(q, st, 1, bare);
  if (!rc) rc = bind_cred(q, st, 2, SCRAM_SHA1, &a->sha1);
  if (!rc) rc = bind_cred(q, st, 6, SCRAM_SHA256, &a->sha256);
  return rc;
}

/* Reads one credential from columns first..first+3; XMPP_EIO when the row is corrupt. */
static int read_cred(sq_t *q, sqlite3_stmt *st, int first, scram_hash_t h, scram_cred_t *c) {
  size_t hl = scram_hash_len(h);
  const void *salt = sqlite3_column_blob(st, first);
  size_t salt_len = (size_t)sqlite3_column_bytes(st, first);
  int64_t iter = sqlite3_column_int64(st, first + 1);
  const void *stored = sqlite3_column_blob(st, first + 2);
  size_t stored_len = (size_t)sqlite3_column_bytes(st, first + 2);
  const void *server = sqlite3_column_blob(st, first + 3);
  size_t server_len = (size_t)sqlite3_column_bytes(st, first + 3);
  if (!salt || salt_len == 0 || salt_len > SCRAM_MAX_SALT || iter <= 0 || iter > UINT32_MAX ||
      !stored || stored_len != hl || !server || server_len != hl) {
    log_error("store(sqlite) %s: corrupt %s credentials", q->path, scram_mech_name(h));
    return XMPP_EIO;
  }
  memcpy(c->salt, salt, salt_len);
  c->salt_len = salt_len;
  c->iterations = (uint32_t)iter;
  memcpy(c->stored_key, stored, hl);
  memcpy(c->server_key, server, hl);
  return 0;
}

static int sq_account_get(void *be, const char *bare, store_account_t *out) {
  sq_t *q = be;
  memset(out, 0, sizeof *out);
  sqlite3_stmt *st = stmt(q, Q_ACC_GET);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      ret = read_cred(q, st, 0, SCRAM_SHA1, &out->sha1);
      if (!ret) ret = read_cred(q, st, 4, SCRAM_SHA256, &out->sha256);
      if (ret) memset(out, 0, sizeof *out);
    } else if (rc == SQLITE_DONE) {
      ret = XMPP_ENOENT;
    } else {
      ret = fail(q, "account get", rc);
    }
  }
  done(st);
  return ret;
}

static int sq_account_exists(void *be, const char *bare) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_ACC_EXISTS);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) {
    int rc = sqlite3_step(st);
    ret = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : fail(q, "account exists", rc);
  }
  done(st);
  return ret;
}

static int sq_account_create(void *be, const char *bare, const store_account_t *a) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_ACC_INSERT);
  if (!st) return XMPP_EIO;
  int ret = bind_account(q, st, bare, a);
  if (!ret) ret = bind_int64(q, st, 10, (int64_t)time(NULL));
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE)
      ret = XMPP_EEXIST;
    else if (rc != SQLITE_DONE)
      ret = fail(q, "account create", rc);
  }
  done(st);
  return ret;
}

static int sq_account_update(void *be, const char *bare, const store_account_t *a) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_ACC_UPDATE);
  if (!st) return XMPP_EIO;
  int ret = bind_account(q, st, bare, a);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
      ret = fail(q, "account update", rc);
    else if (sqlite3_changes64(q->db) == 0)
      ret = XMPP_ENOENT;
  }
  done(st);
  return ret;
}

static int sq_account_delete(void *be, const char *bare) {
  sq_t *q = be;
  int ret = tx_begin(q, 1);
  if (ret) return ret;
  /* Children first (the foreign keys would cascade too; explicit is cheaper to reason
   * about and does not depend on the pragma). */
  if (!ret) ret = run_owner(q, Q_ACC_DEL_GROUPS, bare);
  if (!ret) ret = run_owner(q, Q_ACC_DEL_ROSTER, bare);
  if (!ret) ret = run_owner(q, Q_ACC_DEL_OFFLINE, bare);
  if (!ret) ret = run_owner(q, Q_BLOCK_CLEAR, bare);
  if (!ret) {
    ret = run_owner(q, Q_ACC_DELETE, bare);
    if (!ret && sqlite3_changes64(q->db) == 0) ret = XMPP_ENOENT;
  }
  if (ret) {
    tx_rollback(q);
    return ret;
  }
  return tx_commit(q);
}

static int sq_account_list(void *be, store_account_cb cb, void *ud) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_ACC_LIST);
  if (!st) return XMPP_EIO;
  int rc, ret = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const unsigned char *jid = sqlite3_column_text(st, 0);
    if (jid) cb((const char *)jid, ud);
  }
  if (rc != SQLITE_DONE) ret = fail(q, "account list", rc);
  done(st);
  return ret;
}

/* ---- roster ------------------------------------------------------------------------- */

/* Groups of one contact, copied out of the statement (its text is valid only until the
 * next step). */
typedef struct {
  char **v;
  size_t n, cap;
} groups_t;

static void groups_clear(groups_t *g) {
  for (size_t i = 0; i < g->n; i++) xfree(g->v[i]);
  g->n = 0;
}

static int load_groups(sq_t *q, const char *bare, const char *contact, groups_t *g) {
  groups_clear(g);
  sqlite3_stmt *st = stmt(q, Q_ROSTER_GROUPS);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_text(q, st, 2, contact);
  if (!ret) {
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      const unsigned char *t = sqlite3_column_text(st, 0);
      if (!t) continue;
      if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 8;
        g->v = xrealloc(g->v, g->cap * sizeof *g->v);
      }
      g->v[g->n++] = xstrndup((const char *)t, (size_t)sqlite3_column_bytes(st, 0));
    }
    if (rc != SQLITE_DONE) ret = fail(q, "roster groups", rc);
  }
  done(st);
  return ret;
}

static int sq_roster_load(void *be, const char *bare, store_roster_cb cb, void *ud) {
  sq_t *q = be;
  /* One read transaction: items and their groups come from the same snapshot. */
  int ret = tx_begin(q, 0);
  if (ret) return ret;
  groups_t g = {0};
  sqlite3_stmt *st = stmt(q, Q_ROSTER_SELECT);
  if (!st) ret = XMPP_EIO;
  if (!ret) ret = bind_text(q, st, 1, bare);
  if (!ret) {
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      const char *contact = (const char *)sqlite3_column_text(st, 0);
      if (!contact) continue;
      if ((ret = load_groups(q, bare, contact, &g)) != 0) break;
      store_roster_item_t it = {
          .jid = contact,
          .name = (const char *)sqlite3_column_text(st, 1),
          .sub = (roster_sub_t)(sqlite3_column_int(st, 2) & 3),
          .ask_out = sqlite3_column_int(st, 3) != 0,
          .pending_in = sqlite3_column_int(st, 4) != 0,
          .groups = (const char *const *)g.v,
          .ngroups = g.n,
      };
      cb(&it, ud);
    }
    if (!ret && rc != SQLITE_DONE) ret = fail(q, "roster load", rc);
  }
  done(st);
  groups_clear(&g);
  xfree(g.v);
  if (ret) {
    tx_rollback(q);
    return ret;
  }
  return tx_commit(q);
}

/* One item by primary key, its groups by theirs: the same cost for any roster size. The
 * callback runs once the statements are reset and the read transaction has ended (the
 * name and groups are copies). */
static int sq_roster_get(void *be, const char *bare, const char *contact, store_roster_cb cb, void *ud) {
  sq_t *q = be;
  int ret = tx_begin(q, 0);
  if (ret) return ret;
  groups_t g = {0};
  char *name = NULL;
  int has_name = 0, flags = 0;
  sqlite3_stmt *st = stmt(q, Q_ROSTER_SELECT_ONE);
  if (!st) ret = XMPP_EIO;
  if (!ret) ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_text(q, st, 2, contact);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      const unsigned char *n = sqlite3_column_text(st, 0);
      if (n) {
        has_name = 1;
        name = xstrndup((const char *)n, (size_t)sqlite3_column_bytes(st, 0));
      }
      flags = (sqlite3_column_int(st, 1) & 3) | (sqlite3_column_int(st, 2) ? 4 : 0) |
              (sqlite3_column_int(st, 3) ? 8 : 0);
    } else if (rc == SQLITE_DONE) {
      ret = XMPP_ENOENT;
    } else {
      ret = fail(q, "roster get", rc);
    }
  }
  done(st);
  if (!ret) ret = load_groups(q, bare, contact, &g);
  if (ret) tx_rollback(q);
  else ret = tx_commit(q);
  if (!ret) {
    store_roster_item_t it = {
        .jid = contact,
        .name = has_name ? name : NULL,
        .sub = (roster_sub_t)(flags & 3),
        .ask_out = (flags & 4) != 0,
        .pending_in = (flags & 8) != 0,
        .groups = (const char *const *)g.v,
        .ngroups = g.n,
    };
    cb(&it, ud);
  }
  xfree(name);
  groups_clear(&g);
  xfree(g.v);
  return ret;
}

static int sq_roster_count(void *be, const char *bare) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_ROSTER_COUNT);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      sqlite3_int64 n = sqlite3_column_int64(st, 0);
      ret = n > INT_MAX ? INT_MAX : n < 0 ? 0 : (int)n;
    } else if (rc == SQLITE_DONE) {
      ret = 0; /* no account: no roster */
    } else {
      ret = fail(q, "roster count", rc);
    }
  }
  done(st);
  return ret;
}

static int sq_roster_put(void *be, const char *bare, const store_roster_item_t *item) {
  sq_t *q = be;
  int ret = tx_begin(q, 1);
  if (ret) return ret;
  sqlite3_stmt *st = stmt(q, Q_ROSTER_UPSERT);
  if (!st) ret = XMPP_EIO;
  if (!ret) ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_text(q, st, 2, item->jid);
  if (!ret) ret = bind_text(q, st, 3, item->name);
  if (!ret) ret = bind_int64(q, st, 4, item->sub);
  if (!ret) ret = bind_int64(q, st, 5, item->ask_out);
  if (!ret) ret = bind_int64(q, st, 6, item->pending_in);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
      ret = XMPP_ENOENT; /* no such account */
    else if (rc != SQLITE_DONE)
      ret = fail(q, "roster put", rc);
  }
  done(st);
  if (!ret) {
    st = stmt(q, Q_ROSTER_CLEAR_GROUPS);
    if (!st) ret = XMPP_EIO;
    if (!ret) ret = bind_text(q, st, 1, bare);
    if (!ret) ret = bind_text(q, st, 2, item->jid);
    if (!ret) {
      int rc = sqlite3_step(st);
      if (rc != SQLITE_DONE) ret = fail(q, "roster clear groups", rc);
    }
    done(st);
  }
  for (size_t i = 0; !ret && i < item->ngroups; i++) {
    st = stmt(q, Q_ROSTER_ADD_GROUP);
    if (!st) ret = XMPP_EIO;
    if (!ret) ret = bind_text(q, st, 1, bare);
    if (!ret) ret = bind_text(q, st, 2, item->jid);
    if (!ret) ret = bind_int64(q, st, 3, (int64_t)i);
    if (!ret) ret = bind_text(q, st, 4, item->groups[i]);
    if (!ret) {
      int rc = sqlite3_step(st);
      if (rc != SQLITE_DONE) ret = fail(q, "roster add group", rc);
    }
    done(st);
  }
  if (ret) {
    tx_rollback(q);
    return ret;
  }
  return tx_commit(q);
}

static int sq_roster_delete(void *be, const char *bare, const char *contact) {
  sq_t *q = be;
  int ret = tx_begin(q, 1);
  if (ret) return ret;
  int ids[2] = {Q_ROSTER_CLEAR_GROUPS, Q_ROSTER_DELETE};
  for (int k = 0; k < 2 && !ret; k++) {
    sqlite3_stmt *st = stmt(q, ids[k]);
    if (!st) ret = XMPP_EIO;
    if (!ret) ret = bind_text(q, st, 1, bare);
    if (!ret) ret = bind_text(q, st, 2, contact);
    if (!ret) {
      int rc = sqlite3_step(st);
      if (rc != SQLITE_DONE)
        ret = fail(q, "roster delete", rc);
      else if (ids[k] == Q_ROSTER_DELETE && sqlite3_changes64(q->db) == 0)
        ret = XMPP_ENOENT;
    }
    done(st);
  }
  if (ret) {
    tx_rollback(q);
    return ret;
  }
  return tx_commit(q);
}

/* ---- offline ------------------------------------------------------------------------ */

/* Messages queued for bare and their bytes (bytes may be NULL). */
static int count_owner(sq_t *q, const char *bare, int64_t *n, int64_t *bytes) {
  sqlite3_stmt *st = stmt(q, Q_OFF_COUNT);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      *n = sqlite3_column_int64(st, 0);
      if (bytes) *bytes = (int64_t)sqlite3_column_double(st, 1);
    } else {
      ret = fail(q, "offline count", rc);
    }
  }
  done(st);
  return ret;
}

static int sq_offline_push(void *be, const char *bare, const char *xml, size_t len, unsigned max, size_t max_bytes) {
  sq_t *q = be;
  /* With a limit, count and insert under the write lock so no other connection can
   * slip a message in between. */
  int limited = max || max_bytes;
  int ret = limited ? tx_begin(q, 1) : 0;
  if (ret) return ret;
  if (limited) {
    int64_t n = 0, bytes = 0;
    ret = count_owner(q, bare, &n, &bytes);
    if (!ret && max && n >= (int64_t)max) ret = XMPP_ELIMIT;
    if (!ret && max_bytes && (uint64_t)bytes + len > max_bytes) ret = XMPP_ELIMIT;
  }
  if (!ret) {
    sqlite3_stmt *st = stmt(q, Q_OFF_INSERT);
    if (!st) ret = XMPP_EIO;
    if (!ret) ret = bind_text(q, st, 1, bare);
    if (!ret) ret = bind_int64(q, st, 2, (int64_t)time(NULL));
    if (!ret) ret = bind_blob(q, st, 3, xml, len);
    if (!ret) {
      int rc = sqlite3_step(st);
      if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        ret = XMPP_ENOENT; /* no such account */
      else if (rc != SQLITE_DONE)
        ret = fail(q, "offline push", rc);
    }
    done(st);
  }
  if (!limited) return ret;
  if (ret) {
    tx_rollback(q);
    return ret;
  }
  return tx_commit(q);
}

static int sq_offline_peek(void *be, const char *bare, int64_t after, unsigned max_count, size_t max_bytes,
                           store_offline_cb cb, void *ud) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_OFF_SELECT);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_int64(q, st, 2, after);
  if (!ret) ret = bind_int64(q, st, 3, (int64_t)max_count);
  int given = 0;
  size_t bytes = 0;
  if (!ret) {
    int rc = SQLITE_DONE;
    while (!(max_bytes && bytes >= max_bytes) && (rc = sqlite3_step(st)) == SQLITE_ROW) {
      int64_t id = sqlite3_column_int64(st, 0);
      int64_t stamp = sqlite3_column_int64(st, 1);
      /* column_text on a blob gives the same bytes plus a NUL terminator; then bytes. */
      const char *xml = (const char *)sqlite3_column_text(st, 2);
      size_t len = (size_t)sqlite3_column_bytes(st, 2);
      cb(id, xml ? xml : "", xml ? len : 0, stamp, ud);
      bytes += len;
      given++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) ret = fail(q, "offline peek", rc);
  }
  done(st);
  return ret ? ret : given;
}

static int sq_offline_remove(void *be, const char *bare, int64_t upto) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_OFF_DELETE_UPTO);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_int64(q, st, 2, upto);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) ret = fail(q, "offline delete", rc);
  }
  done(st);
  return ret;
}

static int sq_offline_count(void *be, const char *bare) {
  int64_t n = 0;
  int ret = count_owner(be, bare, &n, NULL);
  if (ret) return ret;
  return n > INT_MAX ? INT_MAX : (int)n;
}

/* ---- XEP-0191 blocklist -------------------------------------------------------------- */

static int sq_block_load(void *be, const char *bare, store_block_cb cb, void *ud) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_BLOCK_SELECT);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) {
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      const unsigned char *jid = sqlite3_column_text(st, 0);
      if (jid) cb((const char *)jid, ud);
    }
    if (rc != SQLITE_DONE) ret = fail(q, "blocklist load", rc);
  }
  done(st);
  return ret;
}

/* Binds ?1 = bare, ?2 = jid and steps statement id (no rows expected). */
static int run_owner_jid(sq_t *q, int id, const char *bare, const char *jid) {
  sqlite3_stmt *st = stmt(q, id);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_text(q, st, 2, jid);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) ret = XMPP_ENOENT; /* no such account */
    else if (rc != SQLITE_DONE) ret = fail(q, sql_text[id], rc);
  }
  done(st);
  return ret;
}

/* Inserts under the write lock, then reads the count the triggers kept: more than max
 * rolls everything back. */
static int sq_block_add(void *be, const char *bare, const char *const *jids, size_t n, unsigned max) {
  sq_t *q = be;
  int ret = tx_begin(q, 1);
  if (ret) return ret;
  for (size_t i = 0; !ret && i < n; i++) ret = run_owner_jid(q, Q_BLOCK_INSERT, bare, jids[i]);
  if (!ret && max) {
    sqlite3_stmt *st = stmt(q, Q_BLOCK_COUNT);
    if (!st) ret = XMPP_EIO;
    if (!ret) ret = bind_text(q, st, 1, bare);
    if (!ret) {
      int rc = sqlite3_step(st);
      if (rc == SQLITE_DONE) ret = XMPP_ENOENT; /* no account (no row was inserted either) */
      else if (rc != SQLITE_ROW) ret = fail(q, "blocklist count", rc);
      else if (sqlite3_column_int64(st, 0) > (sqlite3_int64)max) ret = XMPP_ELIMIT;
    }
    done(st);
  }
  if (ret) {
    tx_rollback(q);
    return ret;
  }
  return tx_commit(q);
}

static int sq_block_remove(void *be, const char *bare, const char *const *jids, size_t n) {
  sq_t *q = be;
  if (n == 0) return run_owner(q, Q_BLOCK_CLEAR, bare);
  int ret = tx_begin(q, 1);
  if (ret) return ret;
  for (size_t i = 0; !ret && i < n; i++) ret = run_owner_jid(q, Q_BLOCK_DELETE, bare, jids[i]);
  if (ret) {
    tx_rollback(q);
    return ret;
  }
  return tx_commit(q);
}

static int sq_block_match(void *be, const char *bare, const char *const *jids, size_t n) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_BLOCK_ONE);
  if (!st) return XMPP_EIO;
  int ret = 0;
  for (size_t i = 0; !ret && i < n; i++) {
    ret = bind_text(q, st, 1, bare);
    if (!ret) ret = bind_text(q, st, 2, jids[i]);
    if (!ret) {
      int rc = sqlite3_step(st);
      if (rc == SQLITE_ROW) ret = 1;
      else if (rc != SQLITE_DONE) ret = fail(q, "blocklist match", rc);
    }
    done(st);
  }
  return ret;
}

const store_backend_t store_sqlite_backend = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .account_get = sq_account_get,
    .account_exists = sq_account_exists,
    .account_create = sq_account_create,
    .account_update = sq_account_update,
    .account_delete = sq_account_delete,
    .account_list = sq_account_list,
    .batch_begin = sq_batch_begin,
    .batch_end = sq_batch_end,
    .roster_load = sq_roster_load,
    .roster_get = sq_roster_get,
    .roster_count = sq_roster_count,
    .roster_put = sq_roster_put,
    .roster_delete = sq_roster_delete,
    .offline_push = sq_offline_push,
    .offline_peek = sq_offline_peek,
    .offline_remove = sq_offline_remove,
    .offline_count = sq_offline_count,
    .block_load = sq_block_load,
    .block_add = sq_block_add,
    .block_remove = sq_block_remove,
    .block_match = sq_block_match,
};

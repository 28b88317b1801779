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
 *   docs(owner, kind, key, data BLOB, PK(owner, kind, key)) (version 3): small
 *     per-account documents; accounts.doc_bytes, kept by triggers, is what they cost.
 *   mam(owner, id, with_bare, with_full, data) WITHOUT ROWID, PK (owner, id), indexes
 *     (owner, with_bare, id) and (owner, with_full, id); mam_prefs(owner, dflt),
 *     mam_prefs_jids(owner, jid, always); accounts.mam_count (version 4: the XEP-0313
 *     archive, store.h).
 *   mam_msg(id INTEGER PRIMARY KEY, refs, data BLOB) (version 8): each archived message's
 *     bytes once, shared by the archives holding it (the rows of one append call with the
 *     same bytes: a message's sender's and recipient's copies); mam.data became mam.msg,
 *     its id; a trigger on mam drops a message with its last row.
 *   blocklist(owner, jid, PK(owner, jid)) (version 5): XEP-0191, one row per blocked JID,
 *     so one block writes one row and "is X blocked" is a primary-key look-up;
 *     accounts.block_items counts them, kept by triggers like roster_items.
 *   fast(owner, ua, cur, prev, cur_expiry, prev_expiry, count) (version 7): XEP-0484
 *     FAST tokens, SHA-256 of each, never the token (store_fast_*); (version 9)
 *     prev_count, cur_mech, prev_mech: the replay counter and the HT mechanism of each
 *     of the two tokens (count is the current one's).
 *   runtime_domains(name PK, tmpl, cert, key, created), domains_ver(id 0, v) (version 10):
 *     the domains added through the admin interface (store_domain_*), and a number every
 *     add and remove raises (triggers); domain_accounts(domain PK, n): the accounts of
 *     each domain, kept by triggers on accounts (store_domain_accounts, the registration
 *     cap of [domain] max_accounts); the migration counts the existing accounts.
 *   roster.approved, accounts.roster_ver (version 6): RFC 6121 §3.4 pre-approval, and the
 *     §2.6 roster version, raised by triggers on every insert, update and delete of the
 *     account's roster rows.
 * roster.owner, offline.owner, docs.owner, mam.owner and blocklist.owner reference accounts(jid) ON DELETE CASCADE (foreign_keys
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

#define SQ_SCHEMA_VERSION 10
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
  /* documents (schema 3) */
  Q_ACC_DEL_DOCS,
  Q_DOC_GET,
  Q_DOC_ACCOUNT,
  Q_DOC_COST,
  Q_DOC_UPSERT,
  Q_DOC_DELETE,
  /* XEP-0313 archive (schema 4) */
  Q_ACC_DEL_MAM,
  Q_ACC_DEL_MAM_PREFS,
  Q_ACC_DEL_MAM_JIDS,
  Q_MAM_INSERT,
  Q_MAM_COUNT_ADD,
  Q_MAM_PRUNE_AGE,
  Q_MAM_PRUNE_OLDEST,
  Q_MAM_FWD,
  Q_MAM_FWD_BARE,
  Q_MAM_FWD_FULL,
  Q_MAM_BACK,
  Q_MAM_BACK_BARE,
  Q_MAM_BACK_FULL,
  Q_MAM_ONE,
  Q_MAM_COUNT,
  Q_MAM_PREFS_GET,
  Q_MAM_PREFS_JIDS,
  Q_MAM_PREFS_PUT,
  Q_MAM_PREFS_CLEAR,
  Q_MAM_PREFS_ADD,
  /* XEP-0191 blocklist (version 5) */
  Q_BLOCK_SELECT,
  Q_BLOCK_INSERT,
  Q_BLOCK_DELETE,
  Q_BLOCK_CLEAR,
  Q_BLOCK_COUNT,
  Q_BLOCK_ONE,
  Q_ROSTER_VER,
  /* XEP-0313 archive appends by account (schema 4) */
  Q_MAM_LAST,
  /* XEP-0484 FAST tokens (schema 7) */
  Q_FAST_GET,
  Q_FAST_UPSERT,
  Q_FAST_N,
  Q_FAST_EVICT,
  Q_FAST_COUNT,
  Q_FAST_DEL_ONE,
  Q_FAST_DEL_ALL,
  /* XEP-0313 stored messages shared by archives (schema 8) */
  Q_MAM_MSG_INSERT,
  Q_COUNT
};

/* What a document costs its account (store.h): the bytes of kind, 1, key and data (kind
 * and key are text: length() would count characters). */
#define DOC_COST(row) \
  "(length(CAST(" row "kind AS BLOB)) + 1 + length(CAST(" row "key AS BLOB)) + length(" row "data))"

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
    [Q_ROSTER_SELECT] = "SELECT contact, name, sub, ask_out, pending_in, approved FROM roster "
                        "WHERE owner = ?1 ORDER BY contact",
    [Q_ROSTER_GROUPS] = "SELECT grp FROM roster_groups WHERE owner = ?1 AND contact = ?2 "
                        "ORDER BY pos",
    [Q_ROSTER_UPSERT] = "INSERT INTO roster (owner, contact, name, sub, ask_out, pending_in, approved) "
                        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) "
                        "ON CONFLICT (owner, contact) DO UPDATE SET name = excluded.name, "
                        "sub = excluded.sub, ask_out = excluded.ask_out, "
                        "pending_in = excluded.pending_in, approved = excluded.approved",
    [Q_ROSTER_CLEAR_GROUPS] = "DELETE FROM roster_groups WHERE owner = ?1 AND contact = ?2",
    [Q_ROSTER_ADD_GROUP] = "INSERT INTO roster_groups (owner, contact, pos, grp) "
                           "VALUES (?1, ?2, ?3, ?4)",
    [Q_ROSTER_DELETE] = "DELETE FROM roster WHERE owner = ?1 AND contact = ?2",
    [Q_ROSTER_SELECT_ONE] = "SELECT name, sub, ask_out, pending_in, approved FROM roster "
                            "WHERE owner = ?1 AND contact = ?2",
    [Q_ROSTER_COUNT] = "SELECT roster_items FROM accounts WHERE jid = ?1",
    [Q_OFF_COUNT] = "SELECT count(*), total(length(xml)) FROM offline WHERE owner = ?1",
    [Q_OFF_INSERT] = "INSERT INTO offline (owner, stamp, xml) VALUES (?1, ?2, ?3)",
    [Q_OFF_SELECT] = "SELECT id, stamp, xml FROM offline WHERE owner = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    [Q_OFF_DELETE_UPTO] = "DELETE FROM offline WHERE owner = ?1 AND id <= ?2",
    [Q_ACC_DEL_DOCS] = "DELETE FROM docs WHERE owner = ?1",
    [Q_DOC_GET] = "SELECT data FROM docs WHERE owner = ?1 AND kind = ?2 AND key = ?3",
    [Q_DOC_ACCOUNT] = "SELECT doc_bytes FROM accounts WHERE jid = ?1",
    [Q_DOC_COST] = "SELECT " DOC_COST("") " FROM docs WHERE owner = ?1 AND kind = ?2 AND key = ?3",
    [Q_DOC_UPSERT] = "INSERT INTO docs (owner, kind, key, data) VALUES (?1, ?2, ?3, ?4) "
                     "ON CONFLICT (owner, kind, key) DO UPDATE SET data = excluded.data",
    [Q_DOC_DELETE] = "DELETE FROM docs WHERE owner = ?1 AND kind = ?2 AND key = ?3",
    [Q_ACC_DEL_MAM] = "DELETE FROM mam WHERE owner = ?1",
    [Q_ACC_DEL_MAM_PREFS] = "DELETE FROM mam_prefs WHERE owner = ?1",
    [Q_ACC_DEL_MAM_JIDS] = "DELETE FROM mam_prefs_jids WHERE owner = ?1",
    /* an id not above the account's last one becomes last + 1 (store.h) */
    [Q_MAM_INSERT] = "INSERT INTO mam (owner, id, with_bare, with_full, msg) VALUES (?1, ?2, ?3, ?4, ?5)",
    [Q_MAM_COUNT_ADD] = "UPDATE accounts SET mam_count = ?2 WHERE jid = ?1",
    [Q_MAM_PRUNE_AGE] = "DELETE FROM mam WHERE owner = ?1 AND id IN "
                        "(SELECT id FROM mam WHERE owner = ?1 AND id < ?2 ORDER BY id LIMIT ?3)",
    [Q_MAM_PRUNE_OLDEST] = "DELETE FROM mam WHERE owner = ?1 AND id IN "
                           "(SELECT id FROM mam WHERE owner = ?1 ORDER BY id LIMIT ?2)",
    /* CROSS JOIN: the archive's range (owner, id) or index (owner, with_*, id) leads, each
     * row's stored message a rowid look-up */
#define MAM_SEL "SELECT m.id, m.with_bare, d.data FROM mam m CROSS JOIN mam_msg d ON d.id = m.msg WHERE m.owner = ?1"
    [Q_MAM_FWD] = MAM_SEL " AND m.id > ?2 AND m.id < ?3 ORDER BY m.id LIMIT ?4",
    [Q_MAM_FWD_BARE] = MAM_SEL " AND m.with_bare = ?5 AND m.id > ?2 AND m.id < ?3 ORDER BY m.id LIMIT ?4",
    [Q_MAM_FWD_FULL] = MAM_SEL " AND m.with_full = ?5 AND m.id > ?2 AND m.id < ?3 ORDER BY m.id LIMIT ?4",
    [Q_MAM_BACK] = MAM_SEL " AND m.id > ?2 AND m.id < ?3 ORDER BY m.id DESC LIMIT ?4",
    [Q_MAM_BACK_BARE] = MAM_SEL " AND m.with_bare = ?5 AND m.id > ?2 AND m.id < ?3 ORDER BY m.id DESC LIMIT ?4",
    [Q_MAM_BACK_FULL] = MAM_SEL " AND m.with_full = ?5 AND m.id > ?2 AND m.id < ?3 ORDER BY m.id DESC LIMIT ?4",
    [Q_MAM_ONE] = MAM_SEL " AND m.id = ?2",
#undef MAM_SEL
    [Q_MAM_COUNT] = "SELECT mam_count FROM accounts WHERE jid = ?1",
    [Q_MAM_PREFS_GET] = "SELECT dflt FROM mam_prefs WHERE owner = ?1",
    [Q_MAM_PREFS_JIDS] = "SELECT jid, always FROM mam_prefs_jids WHERE owner = ?1 ORDER BY jid",
    [Q_MAM_PREFS_PUT] = "INSERT INTO mam_prefs (owner, dflt) VALUES (?1, ?2) "
                        "ON CONFLICT (owner) DO UPDATE SET dflt = excluded.dflt",
    [Q_MAM_PREFS_CLEAR] = "DELETE FROM mam_prefs_jids WHERE owner = ?1",
    [Q_MAM_PREFS_ADD] = "INSERT OR REPLACE INTO mam_prefs_jids (owner, jid, always) VALUES (?1, ?2, ?3)",
    [Q_BLOCK_SELECT] = "SELECT jid FROM blocklist WHERE owner = ?1",
    [Q_BLOCK_INSERT] = "INSERT OR IGNORE INTO blocklist (owner, jid) VALUES (?1, ?2)",
    [Q_BLOCK_DELETE] = "DELETE FROM blocklist WHERE owner = ?1 AND jid = ?2",
    [Q_BLOCK_CLEAR] = "DELETE FROM blocklist WHERE owner = ?1",
    [Q_BLOCK_COUNT] = "SELECT block_items FROM accounts WHERE jid = ?1",
    [Q_BLOCK_ONE] = "SELECT 1 FROM blocklist WHERE owner = ?1 AND jid = ?2",
    [Q_MAM_LAST] = "SELECT max(id) FROM mam WHERE owner = ?1",
    [Q_ROSTER_VER] = "SELECT roster_ver FROM accounts WHERE jid = ?1",
    [Q_FAST_GET] = "SELECT cur, prev, cur_expiry, prev_expiry, count, prev_count, cur_mech, prev_mech "
                   "FROM fast WHERE owner = ?1 AND ua = ?2",
    /* each token's count goes with its hash: a token kept (moved to prev, or still
     * current) keeps its count, a new one starts at -1 (all read from the row before) */
    [Q_FAST_UPSERT] = "INSERT INTO fast (owner, ua, cur, prev, cur_expiry, prev_expiry, count, prev_count, "
                      "cur_mech, prev_mech) VALUES (?1, ?2, ?3, ?4, ?5, ?6, -1, -1, ?7, ?8) "
                      "ON CONFLICT (owner, ua) DO UPDATE SET "
                      "count = CASE WHEN fast.cur = ?3 THEN fast.count WHEN fast.prev = ?3 THEN fast.prev_count "
                      "ELSE -1 END, "
                      "prev_count = CASE WHEN fast.cur = ?4 THEN fast.count WHEN fast.prev = ?4 THEN fast.prev_count "
                      "ELSE -1 END, "
                      "cur = ?3, prev = ?4, cur_expiry = ?5, prev_expiry = ?6, cur_mech = ?7, prev_mech = ?8",
    [Q_FAST_N] = "SELECT count(*) FROM fast WHERE owner = ?1",
    [Q_FAST_EVICT] = "DELETE FROM fast WHERE owner = ?1 AND ua = (SELECT ua FROM fast WHERE owner = ?1 AND "
                     "ua <> ?2 ORDER BY cur_expiry, ua LIMIT 1)",
    /* the count of the token whose hash is ?3, only upward */
    [Q_FAST_COUNT] = "UPDATE fast SET count = CASE WHEN cur = ?3 THEN ?4 ELSE count END, "
                     "prev_count = CASE WHEN cur = ?3 THEN prev_count ELSE ?4 END "
                     "WHERE owner = ?1 AND ua = ?2 AND ((cur = ?3 AND count < ?4) OR "
                     "(prev = ?3 AND cur <> ?3 AND prev_count < ?4))",
    [Q_FAST_DEL_ONE] = "DELETE FROM fast WHERE owner = ?1 AND ua = ?2",
    [Q_FAST_DEL_ALL] = "DELETE FROM fast WHERE owner = ?1",
    [Q_MAM_MSG_INSERT] = "INSERT INTO mam_msg (refs, data) VALUES (?1, ?2)",
};

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

/* Version 3: small per-account documents (vCards, private XML, last activity), and what
 * they cost each account kept by triggers (accounts.doc_bytes), so that a put checks the
 * account's budget by reading one row, not by summing its documents. */
static const char schema_v3[] =
    "CREATE TABLE IF NOT EXISTS docs ("
    "  owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,"
    "  kind TEXT NOT NULL,"
    "  key TEXT NOT NULL,"
    "  data BLOB NOT NULL,"
    "  PRIMARY KEY (owner, kind, key));"
    "ALTER TABLE accounts ADD COLUMN doc_bytes INTEGER NOT NULL DEFAULT 0;"
    "CREATE TRIGGER IF NOT EXISTS docs_ins AFTER INSERT ON docs BEGIN "
    "  UPDATE accounts SET doc_bytes = doc_bytes + " DOC_COST("NEW.") " WHERE jid = NEW.owner; END;"
    "CREATE TRIGGER IF NOT EXISTS docs_del AFTER DELETE ON docs BEGIN "
    "  UPDATE accounts SET doc_bytes = doc_bytes - " DOC_COST("OLD.") " WHERE jid = OLD.owner; END;"
    "CREATE TRIGGER IF NOT EXISTS docs_upd AFTER UPDATE ON docs BEGIN "
    "  UPDATE accounts SET doc_bytes = doc_bytes - " DOC_COST("OLD.") " WHERE jid = OLD.owner;"
    "  UPDATE accounts SET doc_bytes = doc_bytes + " DOC_COST("NEW.") " WHERE jid = NEW.owner; END;";

/* Version 4: the XEP-0313 archive. mam is clustered by (owner, id) (WITHOUT ROWID: a
 * page of one account's archive is a few adjacent B-tree pages), with an index per
 * contact (bare, and full for the messages that had one) for the 'with' filter; ids are
 * the router's (microseconds, monotonic per account). accounts.mam_count is kept by the
 * appends and the pruning (in C: one update per account per append call, which takes an
 * account's messages together, sq_mam_append), so retention by count reads no index. */
static const char schema_v4[] =
    "ALTER TABLE accounts ADD COLUMN mam_count INTEGER NOT NULL DEFAULT 0;"
    "CREATE TABLE IF NOT EXISTS mam ("
    "  owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,"
    "  id INTEGER NOT NULL,"
    "  with_bare TEXT NOT NULL,"
    "  with_full TEXT,"
    "  data BLOB NOT NULL,"
    "  PRIMARY KEY (owner, id)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS mam_with ON mam (owner, with_bare, id);"
    "CREATE INDEX IF NOT EXISTS mam_with_full ON mam (owner, with_full, id) WHERE with_full IS NOT NULL;"
    "CREATE TABLE IF NOT EXISTS mam_prefs ("
    "  owner TEXT NOT NULL PRIMARY KEY REFERENCES accounts (jid) ON DELETE CASCADE,"
    "  dflt INTEGER NOT NULL CHECK (dflt BETWEEN 0 AND 2));"
    "CREATE TABLE IF NOT EXISTS mam_prefs_jids ("
    "  owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,"
    "  jid TEXT NOT NULL,"
    "  always INTEGER NOT NULL,"
    "  PRIMARY KEY (owner, jid)) WITHOUT ROWID;";

/* Version 5: XEP-0191 blocklists, one row per blocked JID (WITHOUT ROWID: the primary
 * key is the table, so a user's rows are one contiguous range), and their number per
 * account kept by triggers (the cap is checked on one row, not on a count of the list:
 * INSERT OR IGNORE fires the insert trigger only for a row really added). */
static const char schema_v5[] =
    "CREATE TABLE IF NOT EXISTS blocklist ("
    "  owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,"
    "  jid TEXT NOT NULL,"
    "  PRIMARY KEY (owner, jid)) WITHOUT ROWID;"
    "ALTER TABLE accounts ADD COLUMN block_items INTEGER NOT NULL DEFAULT 0;"
    "CREATE TRIGGER IF NOT EXISTS block_items_ins AFTER INSERT ON blocklist BEGIN "
    "  UPDATE accounts SET block_items = block_items + 1 WHERE jid = NEW.owner; END;"
    "CREATE TRIGGER IF NOT EXISTS block_items_del AFTER DELETE ON blocklist BEGIN "
    "  UPDATE accounts SET block_items = block_items - 1 WHERE jid = OLD.owner; END;";

/* Version 6: RFC 6121 §3.4 pre-approval (roster.approved) and §2.6 roster versioning
 * (accounts.roster_ver, raised by triggers whatever writes the rows: a put, which is an
 * insert or an update, or a delete). */
static const char schema_v6[] =
    "ALTER TABLE roster ADD COLUMN approved INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE accounts ADD COLUMN roster_ver INTEGER NOT NULL DEFAULT 0;"
    "CREATE TRIGGER IF NOT EXISTS roster_ver_ins AFTER INSERT ON roster BEGIN "
    "  UPDATE accounts SET roster_ver = roster_ver + 1 WHERE jid = NEW.owner; END;"
    "CREATE TRIGGER IF NOT EXISTS roster_ver_upd AFTER UPDATE ON roster BEGIN "
    "  UPDATE accounts SET roster_ver = roster_ver + 1 WHERE jid = NEW.owner; END;"
    "CREATE TRIGGER IF NOT EXISTS roster_ver_del AFTER DELETE ON roster BEGIN "
    "  UPDATE accounts SET roster_ver = roster_ver + 1 WHERE jid = OLD.owner; END;";

/* Version 7: XEP-0484 FAST tokens, one row per account and user agent, hashed
 * (store.h); at most limits.fast_tokens rows per account, so the eviction's scan of an
 * account's rows is bounded. */
static const char schema_v7[] =
    "CREATE TABLE IF NOT EXISTS fast ("
    "  owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,"
    "  ua TEXT NOT NULL,"
    "  cur BLOB NOT NULL, prev BLOB NOT NULL,"
    "  cur_expiry INTEGER NOT NULL, prev_expiry INTEGER NOT NULL,"
    "  count INTEGER NOT NULL DEFAULT -1,"
    "  PRIMARY KEY (owner, ua)) WITHOUT ROWID;";
/* Version 9: a replay counter per token (count stays the current token's; a new token
 * no longer resets the one it replaces), and the HT mechanism each token is bound to
 * (XEP-0484 §3.2; 0 -NONE, the only one before, 1 -ENDP, 2 -EXPR). */
static const char schema_v9[] =
    "ALTER TABLE fast ADD COLUMN prev_count INTEGER NOT NULL DEFAULT -1;"
    "ALTER TABLE fast ADD COLUMN cur_mech INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE fast ADD COLUMN prev_mech INTEGER NOT NULL DEFAULT 0;";
/* Version 10: runtime domains and the accounts per domain (see the top of the file). */
static const char schema_v10[] =
    "CREATE TABLE IF NOT EXISTS runtime_domains ("
    "  name TEXT NOT NULL PRIMARY KEY, tmpl TEXT NOT NULL, cert TEXT NOT NULL, key TEXT NOT NULL,"
    "  created INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS domains_ver (id INTEGER PRIMARY KEY CHECK (id = 0), v INTEGER NOT NULL);"
    "INSERT OR IGNORE INTO domains_ver (id, v) VALUES (0, 0);"
    "CREATE TRIGGER IF NOT EXISTS runtime_domains_ins AFTER INSERT ON runtime_domains BEGIN "
    "  UPDATE domains_ver SET v = v + 1 WHERE id = 0; END;"
    "CREATE TRIGGER IF NOT EXISTS runtime_domains_del AFTER DELETE ON runtime_domains BEGIN "
    "  UPDATE domains_ver SET v = v + 1 WHERE id = 0; END;"
    "CREATE TABLE IF NOT EXISTS domain_accounts (domain TEXT NOT NULL PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;"
    "DELETE FROM domain_accounts;"
    "INSERT INTO domain_accounts (domain, n) "
    "  SELECT substr(jid, instr(jid, '@') + 1), count(*) FROM accounts WHERE instr(jid, '@') > 0 GROUP BY 1;"
    "CREATE TRIGGER IF NOT EXISTS accounts_domain_ins AFTER INSERT ON accounts BEGIN "
    "  INSERT INTO domain_accounts (domain, n) VALUES (substr(NEW.jid, instr(NEW.jid, '@') + 1), 1) "
    "  ON CONFLICT (domain) DO UPDATE SET n = n + 1; END;"
    "CREATE TRIGGER IF NOT EXISTS accounts_domain_del AFTER DELETE ON accounts BEGIN "
    "  UPDATE domain_accounts SET n = n - 1 WHERE domain = substr(OLD.jid, instr(OLD.jid, '@') + 1); END;";
/* Version 8: each archived message's bytes stored once, shared by the archives that hold
 * it (the sender's and the recipient's copies of a message between two local accounts
 * are the same bytes). mam_msg(id INTEGER PRIMARY KEY, refs, data) is append-ordered (its
 * rowid is max + 1: an append writes the B-tree's last pages, full, whatever the owners);
 * mam rows keep (owner, id, with_bare, with_full) and the mam_msg id, no bytes. refs is
 * the number of mam rows that point at the message; the trigger drops the message when
 * its last row goes, whatever deletes the rows (retention, an account's deletion or its
 * ON DELETE CASCADE). Existing rows are copied, one message each (refs 1). Self-contained
 * (one function) so that it can be renumbered. */
static int sq_migrate_mam_shared(sqlite3 *db) {
  static const char sql[] =
      "CREATE TABLE IF NOT EXISTS mam_msg ("
      "  id INTEGER PRIMARY KEY,"
      "  refs INTEGER NOT NULL,"
      "  data BLOB NOT NULL);"
      "DROP INDEX IF EXISTS mam_with;"
      "DROP INDEX IF EXISTS mam_with_full;"
      "ALTER TABLE mam RENAME TO mam_old;"
      "CREATE TABLE mam ("
      "  owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,"
      "  id INTEGER NOT NULL,"
      "  with_bare TEXT NOT NULL,"
      "  with_full TEXT,"
      "  msg INTEGER NOT NULL,"
      "  PRIMARY KEY (owner, id)) WITHOUT ROWID;"
      "INSERT INTO mam_msg (id, refs, data) SELECT row_number() OVER (ORDER BY owner, id), 1, data FROM mam_old;"
      "INSERT INTO mam (owner, id, with_bare, with_full, msg) "
      "  SELECT owner, id, with_bare, with_full, row_number() OVER (ORDER BY owner, id) FROM mam_old;"
      "DROP TABLE mam_old;"
      "CREATE INDEX IF NOT EXISTS mam_with ON mam (owner, with_bare, id);"
      "CREATE INDEX IF NOT EXISTS mam_with_full ON mam (owner, with_full, id) WHERE with_full IS NOT NULL;"
      "CREATE TRIGGER IF NOT EXISTS mam_unref AFTER DELETE ON mam BEGIN "
      "  DELETE FROM mam_msg WHERE id = OLD.msg AND refs <= 1;"
      "  UPDATE mam_msg SET refs = refs - 1 WHERE id = OLD.msg; END;";
  return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

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
  if (ver < 4 && (rc = sqlite3_exec(q->db, schema_v4, NULL, NULL, NULL)) != SQLITE_OK) goto sqlfail;
  if (ver < 5 && (rc = sqlite3_exec(q->db, schema_v5, NULL, NULL, NULL)) != SQLITE_OK) goto sqlfail;
  if (ver < 6 && (rc = sqlite3_exec(q->db, schema_v6, NULL, NULL, NULL)) != SQLITE_OK) goto sqlfail;
  if (ver < 7 && (rc = sqlite3_exec(q->db, schema_v7, NULL, NULL, NULL)) != SQLITE_OK) goto sqlfail;
  if (ver < 8 && (rc = sq_migrate_mam_shared(q->db)) != SQLITE_OK) goto sqlfail;
  if (ver < 9) { /* ALTER is not idempotent: only where the columns are missing */
    char has[32];
    if ((rc = pragma(q->db, "SELECT count(*) FROM pragma_table_info('fast') WHERE name = 'prev_count'", has,
                     sizeof has)) != SQLITE_OK)
      goto sqlfail;
    if (strcmp(has, "0") == 0 && (rc = sqlite3_exec(q->db, schema_v9, NULL, NULL, NULL)) != SQLITE_OK) goto sqlfail;
  }
  if (ver < 10 && (rc = sqlite3_exec(q->db, schema_v10, NULL, NULL, NULL)) != SQLITE_OK) goto sqlfail;
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
  if (!ret) ret = run_owner(q, Q_ACC_DEL_DOCS, bare);
  if (!ret) ret = run_owner(q, Q_ACC_DEL_MAM, bare);
  if (!ret) ret = run_owner(q, Q_ACC_DEL_MAM_JIDS, bare);
  if (!ret) ret = run_owner(q, Q_ACC_DEL_MAM_PREFS, bare);
  if (!ret) ret = run_owner(q, Q_BLOCK_CLEAR, bare);
  if (!ret) ret = run_owner(q, Q_FAST_DEL_ALL, bare);
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
          .approved = sqlite3_column_int(st, 5) != 0,
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
              (sqlite3_column_int(st, 3) ? 8 : 0) | (sqlite3_column_int(st, 4) ? 16 : 0);
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
        .approved = (flags & 16) != 0,
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
  if (!ret) ret = bind_int64(q, st, 7, item->approved);
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

/* ---- documents ---------------------------------------------------------------------- */

/* Binds ?1 owner, ?2 kind, ?3 key. */
static int bind_doc(sq_t *q, sqlite3_stmt *st, const char *bare, const char *kind, const char *key) {
  int ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_text(q, st, 2, kind);
  if (!ret) ret = bind_text(q, st, 3, key);
  return ret;
}

static int sq_doc_get(void *be, const char *bare, const char *kind, const char *key, char **data, size_t *len) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_DOC_GET);
  if (!st) return XMPP_EIO;
  int ret = bind_doc(q, st, bare, kind, key);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      const void *b = sqlite3_column_blob(st, 0);
      size_t n = (size_t)sqlite3_column_bytes(st, 0);
      char *out = xmalloc(n + 1);
      if (n) memcpy(out, b, n);
      out[n] = '\0';
      *data = out;
      *len = n;
    } else if (rc == SQLITE_DONE) {
      ret = XMPP_ENOENT;
    } else {
      ret = fail(q, "doc get", rc);
    }
  }
  done(st);
  return ret;
}

/* One int64 column of one row: 0 and *v, XMPP_ENOENT when no row, or XMPP_EIO. */
static int doc_int(sq_t *q, int id, const char *bare, const char *kind, const char *key, int64_t *v) {
  sqlite3_stmt *st = stmt(q, id);
  if (!st) return XMPP_EIO;
  int ret = kind ? bind_doc(q, st, bare, kind, key) : bind_text(q, st, 1, bare);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *v = sqlite3_column_int64(st, 0);
    else if (rc == SQLITE_DONE) ret = XMPP_ENOENT;
    else ret = fail(q, sql_text[id], rc);
  }
  done(st);
  return ret;
}

static int sq_doc_put(void *be, const char *bare, const char *kind, const char *key, const void *data, size_t len,
                      size_t max_total) {
  sq_t *q = be;
  /* the budget is checked and the row written under the write lock: no other connection
   * can spend the same bytes in between */
  int ret = tx_begin(q, 1);
  if (ret) return ret;
  int64_t total = 0, old = 0;
  ret = doc_int(q, Q_DOC_ACCOUNT, bare, NULL, NULL, &total); /* XMPP_ENOENT: no account */
  if (!ret) {
    ret = doc_int(q, Q_DOC_COST, bare, kind, key, &old);
    if (ret == XMPP_ENOENT) ret = 0, old = 0;
  }
  if (!ret && max_total) {
    uint64_t cost = (uint64_t)strlen(kind) + 1 + strlen(key) + len;
    if (total - old < 0 || (uint64_t)(total - old) + cost > max_total) ret = XMPP_ELIMIT;
  }
  if (!ret) {
    sqlite3_stmt *st = stmt(q, Q_DOC_UPSERT);
    if (!st) ret = XMPP_EIO;
    if (!ret) ret = bind_doc(q, st, bare, kind, key);
    if (!ret) ret = bind_blob(q, st, 4, data, len);
    if (!ret) {
      int rc = sqlite3_step(st);
      if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) ret = XMPP_ENOENT;
      else if (rc != SQLITE_DONE) ret = fail(q, "doc put", rc);
    }
    done(st);
  }
  if (ret) {
    tx_rollback(q);
    return ret;
  }
  return tx_commit(q);
}

static int sq_doc_delete(void *be, const char *bare, const char *kind, const char *key) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_DOC_DELETE);
  if (!st) return XMPP_EIO;
  int ret = bind_doc(q, st, bare, kind, key);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) ret = fail(q, "doc delete", rc);
    else if (sqlite3_changes64(q->db) == 0) ret = XMPP_ENOENT;
  }
  done(st);
  return ret;
}

static int64_t sq_doc_bytes(void *be, const char *bare) {
  int64_t v = 0;
  int ret = doc_int(be, Q_DOC_ACCOUNT, bare, NULL, NULL, &v);
  if (ret == XMPP_ENOENT) return 0;
  return ret ? ret : v;
}

/* ---- XEP-0313 archive ------------------------------------------------------------------ */

/* Steps a statement with no rows expected; 0 or the mapped error (ENOENT on a foreign key). */
static int step_done(sq_t *q, sqlite3_stmt *st, const char *what) {
  int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) return 0;
  if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) return XMPP_ENOENT;
  return fail(q, what, rc);
}

/* One integer of a one-row statement bound to ?1 = owner: 0 and *v, XMPP_ENOENT when no
 * row (or a NULL), or the mapped error. */
static int owner_int(sq_t *q, int id, const char *owner, int64_t *v) {
  sqlite3_stmt *st = stmt(q, id);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, owner);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) *v = sqlite3_column_int64(st, 0);
    else if (rc == SQLITE_ROW || rc == SQLITE_DONE) ret = XMPP_ENOENT;
    else ret = fail(q, sql_text[id], rc);
  }
  done(st);
  return ret;
}

/* Writes owner's mam_count. */
static int mam_count_set(sq_t *q, const char *owner, int64_t count) {
  sqlite3_stmt *st = stmt(q, Q_MAM_COUNT_ADD);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, owner);
  if (!ret) ret = bind_int64(q, st, 2, count);
  if (!ret) ret = step_done(q, st, "mam count");
  done(st);
  return ret;
}

/* Runs a prune statement (?1 owner, ?2 and ?3 args); *removed gets what it deleted. */
static int mam_prune(sq_t *q, int id, const char *owner, int64_t arg, int64_t arg3, int64_t *removed) {
  sqlite3_stmt *st = stmt(q, id);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, owner);
  if (!ret) ret = bind_int64(q, st, 2, arg);
  if (!ret && id == Q_MAM_PRUNE_AGE) ret = bind_int64(q, st, 3, arg3);
  if (!ret) ret = step_done(q, st, "mam prune");
  done(st);
  *removed = ret ? 0 : sqlite3_changes64(q->db);
  return ret;
}

/* Appends msgs[ix[0..k)] (one owner's, in the order given; the account exists, its count
 * and last id read) pointing at their stored messages (msg[i] for msgs[i]) and applies
 * the retention: the count is written once for the k (the per-message statements are the
 * inserts only). */
static int mam_append_owner(sq_t *q, const store_mam_msg_t *msgs, const size_t *ix, size_t k, const int64_t *msg,
                            int64_t count, int64_t last, const store_mam_limits_t *lim) {
  const char *owner = msgs[ix[0]].owner;
  sqlite3_stmt *st = stmt(q, Q_MAM_INSERT);
  int ret = st ? 0 : XMPP_EIO;
  for (size_t i = 0; i < k && !ret; i++) {
    const store_mam_msg_t *m = &msgs[ix[i]];
    last = m->id > last ? m->id : last + 1; /* store.h: a clock that went back */
    ret = bind_text(q, st, 1, owner);
    if (!ret) ret = bind_int64(q, st, 2, last);
    if (!ret) ret = bind_text(q, st, 3, m->with);
    if (!ret) ret = bind_text(q, st, 4, m->with_full);
    if (!ret) ret = bind_int64(q, st, 5, msg[ix[i]]);
    if (!ret) ret = step_done(q, st, "mam insert");
    done(st);
  }
  if (ret) return ret;
  count += (int64_t)k;
  int64_t removed = 0;
  /* amortised: up to 256 expired ones per message appended (one index seek when none),
   * and the oldest once the count is max/16 over max, down to max */
  if (lim->min_id > 0) {
    ret = mam_prune(q, Q_MAM_PRUNE_AGE, owner, lim->min_id, 256 * (int64_t)k, &removed);
    count -= removed;
  }
  if (!ret && lim->max_messages && count > (int64_t)lim->max_messages + lim->max_messages / 16) {
    ret = mam_prune(q, Q_MAM_PRUNE_OLDEST, owner, count - (int64_t)lim->max_messages, 0, &removed);
    count -= removed;
  }
  if (!ret) ret = mam_count_set(q, owner, count);
  return ret;
}

/* msgs[i] by owner, then by position (each owner's messages keep their order). */
typedef struct {
  const char *owner;
  size_t i;
} mam_ix_t;

static int mam_ix_cmp(const void *a, const void *b) {
  const mam_ix_t *x = a, *y = b;
  int c = strcmp(x->owner, y->owner);
  return c ? c : (x->i > y->i) - (x->i < y->i);
}

static uint64_t mam_hash(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
  return h ^ n;
}

/* same[i]: the first of msgs[0..i] with the same bytes as msgs[i] (i when none): the rows
 * of one call that share a stored message. One hash table, each look-up at most
 * MAM_SAME_PROBES slots (a message's bytes are the client's: colliding ones must not make
 * it quadratic; one not found there is stored on its own, which is only less sharing). */
#define MAM_SAME_PROBES 8
static void mam_same(const store_mam_msg_t *msgs, size_t n, size_t *same) {
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  size_t *slot = xcalloc(cap, sizeof *slot); /* index + 1, 0: empty */
  uint64_t *hv = xmalloc(n * sizeof *hv);
  for (size_t i = 0; i < n; i++) {
    hv[i] = mam_hash(msgs[i].data, msgs[i].len);
    size_t h = (size_t)hv[i] & (cap - 1), p = 0;
    same[i] = i;
    for (; slot[h] && p < MAM_SAME_PROBES; h = (h + 1) & (cap - 1), p++) {
      const store_mam_msg_t *o = &msgs[slot[h] - 1];
      if (hv[slot[h] - 1] == hv[i] && o->len == msgs[i].len && !memcmp(o->data, msgs[i].data, o->len)) {
        same[i] = slot[h] - 1;
        break;
      }
    }
    if (same[i] == i && !slot[h]) slot[h] = i + 1;
  }
  xfree(hv);
  xfree(slot);
}

/* One call's rows: the accounts' counts and last ids read (an owner without an account is
 * left out), then each distinct message stored once (mam_msg, in the order given: the
 * table's end) with the number of rows that point at it, then each account's rows. */
static int sq_mam_append(void *be, const store_mam_msg_t *msgs, size_t n, const store_mam_limits_t *lim) {
  sq_t *q = be;
  if (!n) return 0;
  mam_ix_t *by = xmalloc(n * sizeof *by);
  size_t *ix = xmalloc(n * sizeof *ix), *same = xmalloc(n * sizeof *same);
  int64_t *msg = xcalloc(n, sizeof *msg), *refs = xcalloc(n, sizeof *refs);
  int64_t(*acc)[2] = xmalloc(n * sizeof *acc); /* per owner run: count, last (count < 0: none) */
  for (size_t i = 0; i < n; i++) by[i] = (mam_ix_t){msgs[i].owner, i};
  qsort(by, n, sizeof *by, mam_ix_cmp);
  for (size_t i = 0; i < n; i++) ix[i] = by[i].i;
  xfree(by);
  mam_same(msgs, n, same);
  int ret = tx_begin(q, 1);
  for (size_t i = 0, j; i < n && !ret; i = j) {
    for (j = i + 1; j < n && !strcmp(msgs[ix[j]].owner, msgs[ix[i]].owner); j++) {}
    int64_t count = 0, last = 0;
    ret = owner_int(q, Q_MAM_COUNT, msgs[ix[i]].owner, &count);
    if (!ret) {
      ret = owner_int(q, Q_MAM_LAST, msgs[ix[i]].owner, &last);
      if (ret == XMPP_ENOENT) ret = 0, last = 0; /* an empty archive */
    } else if (ret == XMPP_ENOENT) {
      ret = 0, count = -1; /* no such account: nothing to archive (store.h) */
    }
    acc[i][0] = count, acc[i][1] = last;
    if (count >= 0)
      for (size_t t = i; t < j; t++) refs[same[ix[t]]]++;
  }
  sqlite3_stmt *st = ret ? NULL : stmt(q, Q_MAM_MSG_INSERT);
  if (!ret && !st) ret = XMPP_EIO;
  for (size_t i = 0; i < n && !ret; i++) {
    if (!refs[i]) continue; /* shares an earlier one's, or no account holds it */
    ret = bind_int64(q, st, 1, refs[i]);
    if (!ret) ret = bind_blob(q, st, 2, msgs[i].data, msgs[i].len);
    if (!ret) ret = step_done(q, st, "mam message insert");
    done(st);
    msg[i] = sqlite3_last_insert_rowid(q->db);
  }
  for (size_t i = 0; i < n && !ret; i++) msg[i] = msg[same[i]];
  for (size_t i = 0, j; i < n && !ret; i = j) {
    for (j = i + 1; j < n && !strcmp(msgs[ix[j]].owner, msgs[ix[i]].owner); j++) {}
    if (acc[i][0] >= 0) ret = mam_append_owner(q, msgs, ix + i, j - i, msg, acc[i][0], acc[i][1], lim);
  }
  xfree(ix), xfree(same), xfree(msg), xfree(refs), xfree(acc);
  if (ret) {
    tx_rollback(q);
    return ret;
  }
  return tx_commit(q);
}

typedef struct {
  int64_t id;
  char *with;
  char *data;
  size_t len;
} mam_row_t;

static int mam_row_cmp(const void *a, const void *b) {
  int64_t x = ((const mam_row_t *)a)->id, y = ((const mam_row_t *)b)->id;
  return x < y ? -1 : x > y;
}

static int i64_cmp(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

/* Copies the current row (id, with, data) of st into r. */
static void mam_row_take(sqlite3_stmt *st, mam_row_t *r) {
  r->id = sqlite3_column_int64(st, 0);
  const unsigned char *w = sqlite3_column_text(st, 1);
  r->with = xstrdup(w ? (const char *)w : "");
  const void *d = sqlite3_column_blob(st, 2);
  r->len = (size_t)sqlite3_column_bytes(st, 2);
  r->data = xmalloc(r->len + 1);
  if (r->len) memcpy(r->data, d, r->len);
  r->data[r->len] = '\0';
}

static int sq_mam_query(void *be, const char *bare, const store_mam_query_t *qq, store_mam_cb cb, void *ud,
                        int *more) {
  sq_t *q = be;
  size_t cap = qq->nids ? qq->nids : (size_t)qq->max + 1, n = 0;
  mam_row_t *rows = xcalloc(cap ? cap : 1, sizeof *rows);
  int ret = 0;
  if (qq->nids) {
    int64_t *ids = xmalloc(qq->nids * sizeof *ids);
    memcpy(ids, qq->ids, qq->nids * sizeof *ids);
    qsort(ids, qq->nids, sizeof *ids, i64_cmp);
    sqlite3_stmt *st = stmt(q, Q_MAM_ONE);
    if (!st) ret = XMPP_EIO;
    for (size_t i = 0; i < qq->nids && !ret; i++) {
      if (i && ids[i] == ids[i - 1]) continue;
      ret = bind_text(q, st, 1, bare);
      if (!ret) ret = bind_int64(q, st, 2, ids[i]);
      if (!ret) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) mam_row_take(st, &rows[n++]);
        else if (rc != SQLITE_DONE) ret = fail(q, "mam get", rc);
      }
      done(st);
    }
    xfree(ids);
  } else {
    int full = qq->with && strchr(qq->with, '/') != NULL;
    int id = qq->last ? (!qq->with ? Q_MAM_BACK : full ? Q_MAM_BACK_FULL : Q_MAM_BACK_BARE)
                      : (!qq->with ? Q_MAM_FWD : full ? Q_MAM_FWD_FULL : Q_MAM_FWD_BARE);
    sqlite3_stmt *st = stmt(q, id);
    if (!st) ret = XMPP_EIO;
    if (!ret) ret = bind_text(q, st, 1, bare);
    if (!ret) ret = bind_int64(q, st, 2, qq->after);
    if (!ret) ret = bind_int64(q, st, 3, qq->before);
    if (!ret) ret = bind_int64(q, st, 4, (int64_t)qq->max + 1);
    if (!ret && qq->with) ret = bind_text(q, st, 5, qq->with);
    if (!ret) {
      int rc;
      while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == qq->max) {
          *more = 1; /* the one past the page */
          continue;
        }
        mam_row_take(st, &rows[n++]);
      }
      if (rc != SQLITE_DONE) ret = fail(q, "mam query", rc);
    }
    done(st);
    if (qq->last) qsort(rows, n, sizeof *rows, mam_row_cmp);
  }
  for (size_t i = 0; i < n; i++) {
    if (!ret) cb(rows[i].id, rows[i].with, rows[i].data, rows[i].len, ud);
    xfree(rows[i].with);
    xfree(rows[i].data);
  }
  xfree(rows);
  return ret ? ret : (int)n;
}

static int sq_mam_has(void *be, const char *bare, int64_t id) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_MAM_ONE);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_int64(q, st, 2, id);
  if (!ret) {
    int rc = sqlite3_step(st);
    ret = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : fail(q, "mam has", rc);
  }
  done(st);
  return ret;
}

static int sq_mam_count(void *be, const char *bare) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_MAM_COUNT);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      int64_t n = sqlite3_column_int64(st, 0);
      ret = n > INT_MAX ? INT_MAX : n < 0 ? 0 : (int)n;
    } else if (rc == SQLITE_DONE) {
      ret = 0;
    } else {
      ret = fail(q, "mam count", rc);
    }
  }
  done(st);
  return ret;
}

static int sq_mam_prefs_get(void *be, const char *bare, int *dflt, store_mam_jid_cb cb, void *ud) {
  sq_t *q = be;
  int ret = tx_begin(q, 0);
  if (ret) return ret;
  sqlite3_stmt *st = stmt(q, Q_MAM_PREFS_GET);
  if (!st) ret = XMPP_EIO;
  if (!ret) ret = bind_text(q, st, 1, bare);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *dflt = sqlite3_column_int(st, 0);
    else if (rc == SQLITE_DONE) ret = XMPP_ENOENT;
    else ret = fail(q, "mam prefs", rc);
  }
  done(st);
  if (!ret) {
    st = stmt(q, Q_MAM_PREFS_JIDS);
    if (!st) ret = XMPP_EIO;
    if (!ret) ret = bind_text(q, st, 1, bare);
    if (!ret) {
      int rc;
      while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *j = sqlite3_column_text(st, 0);
        if (j) cb((const char *)j, sqlite3_column_int(st, 1) != 0, ud);
      }
      if (rc != SQLITE_DONE) ret = fail(q, "mam prefs jids", rc);
    }
    done(st);
  }
  if (ret) {
    tx_rollback(q);
    return ret;
  }
  return tx_commit(q);
}

static int prefs_add(sq_t *q, const char *bare, const char *jid, int always) {
  sqlite3_stmt *st = stmt(q, Q_MAM_PREFS_ADD);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_text(q, st, 2, jid);
  if (!ret) ret = bind_int64(q, st, 3, always);
  if (!ret) ret = step_done(q, st, "mam prefs add");
  done(st);
  return ret;
}

static int sq_mam_prefs_set(void *be, const char *bare, int dflt, const char *const *always, size_t nalways,
                            const char *const *never, size_t nnever) {
  sq_t *q = be;
  int ret = tx_begin(q, 1);
  if (ret) return ret;
  sqlite3_stmt *st = stmt(q, Q_MAM_PREFS_PUT);
  if (!st) ret = XMPP_EIO;
  if (!ret) ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_int64(q, st, 2, dflt);
  if (!ret) ret = step_done(q, st, "mam prefs put");
  done(st);
  if (!ret) ret = run_owner(q, Q_MAM_PREFS_CLEAR, bare);
  /* a JID in both lists: 'never' wins (the second write replaces the first) */
  for (size_t i = 0; i < nalways && !ret; i++) ret = prefs_add(q, bare, always[i], 1);
  for (size_t i = 0; i < nnever && !ret; i++) ret = prefs_add(q, bare, never[i], 0);
  if (ret) {
    tx_rollback(q);
    return ret;
  }
  return tx_commit(q);
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

/* ---- roster versioning (RFC 6121 §2.6) ----------------------------------------------- */

static int sq_roster_ver(void *be, const char *bare, int64_t *ver) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_ROSTER_VER);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *ver = sqlite3_column_int64(st, 0);
    else if (rc != SQLITE_DONE) ret = fail(q, "roster ver", rc); /* DONE: no account, 0 */
  }
  done(st);
  return ret;
}

static int sq_set_cache(void *be, size_t bytes) {
  sq_t *q = be;
  char sql[64];
  snprintf(sql, sizeof sql, "PRAGMA cache_size = -%zu", bytes / 1024 ? bytes / 1024 : 1);
  int rc = pragma(q->db, sql, NULL, 0);
  return rc == SQLITE_OK ? 0 : fail(q, "cache_size", rc);
}

/* ---- XEP-0484 FAST tokens ------------------------------------------------------------- */

static int sq_fast_get(void *be, const char *bare, const char *ua, store_fast_t *out) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_FAST_GET);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_text(q, st, 2, ua);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      if (sqlite3_column_bytes(st, 0) != STORE_FAST_HASH || sqlite3_column_bytes(st, 1) != STORE_FAST_HASH) {
        ret = XMPP_EIO;
      } else {
        memcpy(out->cur, sqlite3_column_blob(st, 0), STORE_FAST_HASH);
        memcpy(out->prev, sqlite3_column_blob(st, 1), STORE_FAST_HASH);
        out->cur_expiry = sqlite3_column_int64(st, 2);
        out->prev_expiry = sqlite3_column_int64(st, 3);
        out->count = sqlite3_column_int64(st, 4);
        out->prev_count = sqlite3_column_int64(st, 5);
        out->cur_mech = sqlite3_column_int(st, 6);
        out->prev_mech = sqlite3_column_int(st, 7);
      }
    } else if (rc == SQLITE_DONE) {
      ret = XMPP_ENOENT;
    } else {
      ret = fail(q, "fast get", rc);
    }
  }
  done(st);
  return ret;
}

static int sq_fast_put(void *be, const char *bare, const char *ua, const store_fast_t *t, unsigned max) {
  sq_t *q = be;
  int ret = tx_begin(q, 1);
  if (ret) return ret;
  sqlite3_stmt *st = stmt(q, Q_FAST_UPSERT);
  if (!st) ret = XMPP_EIO;
  if (!ret) ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_text(q, st, 2, ua);
  if (!ret) ret = bind_blob(q, st, 3, t->cur, STORE_FAST_HASH);
  if (!ret) ret = bind_blob(q, st, 4, t->prev, STORE_FAST_HASH);
  if (!ret) ret = bind_int64(q, st, 5, t->cur_expiry);
  if (!ret) ret = bind_int64(q, st, 6, t->prev_expiry);
  if (!ret) ret = bind_int64(q, st, 7, t->cur_mech);
  if (!ret) ret = bind_int64(q, st, 8, t->prev_mech);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) ret = XMPP_ENOENT;
    else if (rc != SQLITE_DONE) ret = fail(q, "fast put", rc);
  }
  done(st);
  /* beyond max user agents: the others' tokens that expire first go, one per extra row
   * (one put adds at most one row, so this loops once unless max was lowered) */
  while (!ret && max) {
    int64_t n = 0;
    ret = doc_int(q, Q_FAST_N, bare, NULL, NULL, &n);
    if (ret || n <= (int64_t)max) break;
    st = stmt(q, Q_FAST_EVICT);
    if (!st) ret = XMPP_EIO;
    if (!ret) ret = bind_text(q, st, 1, bare);
    if (!ret) ret = bind_text(q, st, 2, ua);
    if (!ret) {
      int rc = sqlite3_step(st);
      if (rc != SQLITE_DONE) ret = fail(q, "fast evict", rc);
      else if (sqlite3_changes64(q->db) == 0) ret = XMPP_EIO; /* cannot happen: n > max >= 1 */
    }
    done(st);
  }
  if (ret) {
    tx_rollback(q);
    return ret;
  }
  return tx_commit(q);
}

static int sq_fast_count(void *be, const char *bare, const char *ua, const unsigned char *hash, int64_t count) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, Q_FAST_COUNT);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret) ret = bind_text(q, st, 2, ua);
  if (!ret) ret = bind_blob(q, st, 3, hash, STORE_FAST_HASH);
  if (!ret) ret = bind_int64(q, st, 4, count);
  int changed = 0;
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) ret = fail(q, "fast count", rc);
    else changed = sqlite3_changes64(q->db) > 0;
  }
  done(st);
  if (ret || changed) return ret;
  /* one statement: the check and the write are atomic; unchanged means a stale count,
   * or no such token at all */
  store_fast_t t;
  ret = sq_fast_get(be, bare, ua, &t);
  if (ret) return ret;
  int held = memcmp(t.cur, hash, STORE_FAST_HASH) == 0 || memcmp(t.prev, hash, STORE_FAST_HASH) == 0;
  memset(&t, 0, sizeof t);
  return held ? XMPP_EDENIED : XMPP_ENOENT;
}

static int sq_fast_delete(void *be, const char *bare, const char *ua) {
  sq_t *q = be;
  sqlite3_stmt *st = stmt(q, ua ? Q_FAST_DEL_ONE : Q_FAST_DEL_ALL);
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, bare);
  if (!ret && ua) ret = bind_text(q, st, 2, ua);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) ret = fail(q, "fast delete", rc);
    else ret = (int)sqlite3_changes64(q->db);
  }
  done(st);
  return ret;
}

/* ---- runtime domains (schema 10) ------------------------------------------------------ */

/* A statement used rarely (admin actions): prepared for the call, finalised after. */
static sqlite3_stmt *prep_once(sq_t *q, const char *sql) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(q->db, sql, -1, &st, NULL);
  if (rc != SQLITE_OK) {
    fail(q, "prepare", rc);
    sqlite3_finalize(st);
    return NULL;
  }
  return st;
}

static int sq_domain_add(void *be, const store_domain_t *d) {
  sq_t *q = be;
  sqlite3_stmt *st = prep_once(q, "INSERT INTO runtime_domains (name, tmpl, cert, key, created) VALUES (?1, ?2, ?3, ?4, ?5)");
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, d->name);
  if (!ret) ret = bind_text(q, st, 2, d->tmpl);
  if (!ret) ret = bind_text(q, st, 3, d->cert);
  if (!ret) ret = bind_text(q, st, 4, d->key);
  if (!ret) ret = bind_int64(q, st, 5, (int64_t)time(NULL));
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE) ret = XMPP_EEXIST;
    else if (rc != SQLITE_DONE) ret = fail(q, "domain add", rc);
  }
  sqlite3_finalize(st);
  return ret;
}

static int sq_domain_remove(void *be, const char *name) {
  sq_t *q = be;
  sqlite3_stmt *st = prep_once(q, "DELETE FROM runtime_domains WHERE name = ?1");
  if (!st) return XMPP_EIO;
  int ret = bind_text(q, st, 1, name);
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) ret = fail(q, "domain remove", rc);
    else if (sqlite3_changes64(q->db) == 0) ret = XMPP_ENOENT;
  }
  sqlite3_finalize(st);
  return ret;
}

static int sq_domain_list(void *be, store_domain_cb cb, void *ud) {
  sq_t *q = be;
  sqlite3_stmt *st = prep_once(q, "SELECT name, tmpl, cert, key, created FROM runtime_domains ORDER BY name");
  if (!st) return XMPP_EIO;
  int rc, ret = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    store_domain_t d = {(const char *)sqlite3_column_text(st, 0), (const char *)sqlite3_column_text(st, 1),
                        (const char *)sqlite3_column_text(st, 2), (const char *)sqlite3_column_text(st, 3),
                        sqlite3_column_int64(st, 4)};
    if (d.name && d.tmpl && d.cert && d.key) cb(&d, ud);
  }
  if (rc != SQLITE_DONE) ret = fail(q, "domain list", rc);
  sqlite3_finalize(st);
  return ret;
}

/* One integer of a one-row statement with ?1 = arg (NULL: none); 0 when no row. */
static int sq_one_int(sq_t *q, const char *sql, const char *arg, int64_t *v) {
  sqlite3_stmt *st = prep_once(q, sql);
  if (!st) return XMPP_EIO;
  int ret = arg ? bind_text(q, st, 1, arg) : 0;
  *v = 0;
  if (!ret) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *v = sqlite3_column_int64(st, 0);
    else if (rc != SQLITE_DONE) ret = fail(q, sql, rc);
  }
  sqlite3_finalize(st);
  return ret;
}

static int sq_domain_version(void *be, int64_t *ver) {
  return sq_one_int(be, "SELECT v FROM domains_ver WHERE id = 0", NULL, ver);
}

static int64_t sq_domain_accounts(void *be, const char *domain) {
  int64_t n;
  int rc = sq_one_int(be, "SELECT n FROM domain_accounts WHERE domain = ?1", domain, &n);
  return rc ? rc : n;
}

static int sq_account_create_max(void *be, const char *bare, const store_account_t *a, unsigned max) {
  sq_t *q = be;
  int ret = tx_begin(q, 1); /* the count and the insert under one write lock */
  if (ret) return ret;
  int64_t n = sq_domain_accounts(q, strchr(bare, '@') + 1);
  if (n < 0) ret = (int)n;
  else if (n >= (int64_t)max) ret = XMPP_ELIMIT;
  else ret = sq_account_create(q, bare, a);
  if (ret) tx_rollback(q);
  else ret = tx_commit(q);
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
    .doc_get = sq_doc_get,
    .doc_put = sq_doc_put,
    .doc_delete = sq_doc_delete,
    .doc_bytes = sq_doc_bytes,
    .mam_append = sq_mam_append,
    .mam_query = sq_mam_query,
    .mam_has = sq_mam_has,
    .mam_count = sq_mam_count,
    .mam_prefs_get = sq_mam_prefs_get,
    .mam_prefs_set = sq_mam_prefs_set,
    .block_load = sq_block_load,
    .block_add = sq_block_add,
    .block_remove = sq_block_remove,
    .block_match = sq_block_match,
    .roster_ver = sq_roster_ver,
    .set_cache = sq_set_cache,
    .fast_get = sq_fast_get,
    .fast_put = sq_fast_put,
    .fast_count = sq_fast_count,
    .fast_delete = sq_fast_delete,
    .domain_add = sq_domain_add,
    .domain_remove = sq_domain_remove,
    .domain_list = sq_domain_list,
    .domain_version = sq_domain_version,
    .domain_accounts = sq_domain_accounts,
    .account_create_max = sq_account_create_max,
};

/* Durable user data behind one interface: accounts (SCRAM credentials only, never the
 * password), rosters with subscription states, offline message queues (XEP-0160).
 *
 * Back-ends: "sqlite" (embedded, one file, WAL: a single node) and "redis" (a cluster
 * needs nothing but Redis; docs/storage-redis.md).
 * A store_t is a handle for ONE thread: every thread that touches storage opens its own
 * (an SQLite connection or a Redis connection is not shared across threads). Calls are
 * synchronous. XMPP_EIO is a storage failure callers treat as temporary (Redis down:
 * the next call reconnects).
 * Accounts are keyed by normalised bare JID ("alice@example.net"). */
#ifndef XMPP_STORE_H
#define XMPP_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "common/scram.h"

typedef struct store store_t;

typedef struct store_account {
  scram_cred_t sha1;
  scram_cred_t sha256;
} store_account_t;

/* RFC 6121 §2.1.2.5 subscription states. */
typedef enum { SUB_NONE = 0, SUB_TO = 1, SUB_FROM = 2, SUB_BOTH = 3 } roster_sub_t;

typedef struct store_roster_item {
  const char *jid;     /* contact bare JID, normalised */
  const char *name;    /* may be NULL */
  roster_sub_t sub;
  int ask_out;         /* we sent subscribe, no answer yet (ask='subscribe') */
  int pending_in;      /* contact asked to subscribe, user has not answered */
  const char *const *groups;
  size_t ngroups;
  int approved;        /* the user pre-approved the contact's subscription (RFC 6121 §3.4) */
} store_roster_item_t;

typedef void (*store_roster_cb)(const store_roster_item_t *item, void *ud);
/* An offline message: id orders a user's queue (ascending, never reused). */
typedef void (*store_offline_cb)(int64_t id, const char *xml, size_t len, int64_t stamp_unix, void *ud);
typedef void (*store_account_cb)(const char *bare_jid, void *ud);

/* Opens (creating if needed) a store. backend "sqlite": path is the database file;
 * backend "redis": path is the server's address, "HOST:PORT", "[IPV6]:PORT" or
 * "unix:/PATH", optionally followed by " db=N" and " password=SECRET" (the value of
 * storage.redis; config_store_target() picks the right one for a configuration).
 * On failure returns NULL and, when err is non-NULL, a message in *err (caller frees). */
store_t *store_open(const char *backend, const char *path, char **err);
void store_close(store_t *s);

/* The server's claim on a store, held for the process's life: one xmppd per SQLite file.
 * SQLite: an exclusive flock(2) on the sidecar file PATH.lock (created if needed, left in
 * place; it holds the holder's pid), never on the database itself, whose POSIX locks are
 * SQLite's. It does not keep anyone from USING the store: xmppctl opens the database
 * while the server runs, without the claim. The kernel releases it when the process
 * ends, however it ends (kill -9 included). Redis ("redis"), ":memory:" and "file:" URIs:
 * no claim (a cluster's node ids are leases in Redis instead: docs/cluster.md); 0 with
 * *out = NULL. Returns 0; XMPP_EDENIED with *err naming the holder's pid when another
 * process holds it; XMPP_EIO with *err when the lock file cannot be opened. Main thread. */
typedef struct store_claim store_claim_t;
int store_claim(const char *backend, const char *path, store_claim_t **out, char **err);
void store_claim_release(store_claim_t *c); /* NULL-safe */

int store_account_get(store_t *s, const char *bare, store_account_t *out); /* XMPP_ENOENT */
/* Reads n accounts at once: rcs[i] is store_account_get's result for bares[i] (0,
 * XMPP_ENOENT, XMPP_EIO...) and out[i] its account. Redis: ONE pipelined round trip for
 * all of them (a log-in storm costs a round trip per batch, not per user); SQLite: n
 * look-ups. Returns 0, or the error of the arguments. */
int store_account_get_many(store_t *s, const char *const *bares, size_t n, store_account_t *out, int *rcs);
int store_account_exists(store_t *s, const char *bare);                     /* 1, 0, or <0 */
int store_account_create(store_t *s, const char *bare, const store_account_t *a); /* XMPP_EEXIST */
int store_account_update(store_t *s, const char *bare, const store_account_t *a); /* XMPP_ENOENT */
/* Deletes the account with its roster and offline queue. XMPP_ENOENT when absent. */
int store_account_delete(store_t *s, const char *bare);
int store_account_list(store_t *s, store_account_cb cb, void *ud);

/* Bulk loading (xmppctl populate): between store_batch_begin and store_batch_end, the
 * handle's writes go into ONE transaction (SQLite: one BEGIN IMMEDIATE ... COMMIT instead
 * of one per call; Redis: one pipeline sent at the end), which is what makes creating
 * 50,000 accounts take seconds. A failed call inside a batch leaves the batch to be ended
 * with commit == 0 (rollback: nothing written). Batches do not nest.
 * store_batch_end(s, 1) returns the commit's result. Redis: the batch is not atomic and
 * its reads do not see its own queued writes (store_redis.c says what it does). */
int store_batch_begin(store_t *s);
int store_batch_end(store_t *s, int commit);

int store_roster_load(store_t *s, const char *bare, store_roster_cb cb, void *ud);
/* Loads n users' rosters at once: cb(i, item, ud) for each item of bares[i] (a user's
 * items together, in contact order) and rcs[i] = what store_roster_load would return
 * for it (on XMPP_EIO, none of its items were given). Redis: ONE pipelined round trip
 * for all of them; SQLite: n look-ups. Returns 0, or the error of the arguments. */
typedef void (*store_roster_many_cb)(size_t i, const store_roster_item_t *item, void *ud);
int store_roster_load_many(store_t *s, const char *const *bares, size_t n, store_roster_many_cb cb, void *ud,
                           int *rcs);
/* Reads ONE item: cb(item) once and 0, or XMPP_ENOENT when the user has no item for
 * contact (or no account), or XMPP_EIO. Costs the same whatever the roster's size (SQLite:
 * two indexed look-ups; Redis: one HGET): what a stanza to an offline user needs. */
int store_roster_get(store_t *s, const char *bare, const char *contact, store_roster_cb cb, void *ud);
/* Number of items in the user's roster (0 when no account), or a negative XMPP_* code.
 * Redis: HLEN, O(1); SQLite: a count over the owner's index range, no item is read. */
int store_roster_count(store_t *s, const char *bare);
/* Inserts or replaces the whole item (groups included). */
int store_roster_put(store_t *s, const char *bare, const store_roster_item_t *item);
int store_roster_delete(store_t *s, const char *bare, const char *contact); /* XMPP_ENOENT */

/* Appends a message (serialised XML) to the user's offline queue; XMPP_ELIMIT when the
 * queue already holds max messages, or when it would then hold more than max_bytes bytes
 * of messages (0: no limit of that kind). */
int store_offline_push(store_t *s, const char *bare, const char *xml, size_t len, unsigned max, size_t max_bytes);
/* Calls cb for queued messages with id > after, oldest first, and removes nothing: at
 * most max_count of them, and none after the one that makes their bytes reach max_bytes
 * (the first is always given, however large). Returns how many were given, or an error.
 * Delivery reads a window with this and removes it (store_offline_remove) only once the
 * client has taken it: a connection lost meanwhile loses nothing. */
int store_offline_peek(store_t *s, const char *bare, int64_t after, unsigned max_count, size_t max_bytes,
                       store_offline_cb cb, void *ud);
/* Removes the queued messages with id <= upto. */
int store_offline_remove(store_t *s, const char *bare, int64_t upto);
int store_offline_count(store_t *s, const char *bare);
/* Queue lengths of n users at once: counts[i] = what store_offline_count gives for
 * bares[i] (or an error). Redis: ONE pipelined round trip; SQLite: n look-ups. Lets a
 * batch of log-ins skip the read of every empty queue. Returns 0, or the error of the
 * arguments. */
int store_offline_count_many(store_t *s, const char *const *bares, size_t n, int *counts);

/* Small per-account documents (vCard, private XML storage, last activity: router/mod_*.c):
 * opaque bytes under (kind, key), e.g. ("vcard", ""), ("private", "NS NAME"). kind is
 * non-empty, key may be empty. They go with the account (store_account_delete). Each
 * document costs strlen(kind) + 1 + strlen(key) + len bytes of its account's budget: a
 * trigger-kept column in SQLite, a field of the account hash in Redis, so no call reads
 * more than the one document it names, whatever the account holds. */
/* 0 and a new buffer in *data (caller xfree()s; a NUL follows the len bytes) and *len;
 * XMPP_ENOENT when there is no such document (or no account); XMPP_EIO. */
int store_doc_get(store_t *s, const char *bare, const char *kind, const char *key, char **data, size_t *len);
/* Inserts or replaces a document: 0; XMPP_ENOENT when the account does not exist;
 * XMPP_ELIMIT when the account's documents would then cost more than max_total bytes (0:
 * no limit; the document replaced no longer counts), and nothing is written. The check
 * and the write are one transaction (SQLite) or one script (Redis). */
int store_doc_put(store_t *s, const char *bare, const char *kind, const char *key, const void *data, size_t len,
                  size_t max_total);
/* Removes a document: 0, or XMPP_ENOENT when there was none. */
int store_doc_delete(store_t *s, const char *bare, const char *kind, const char *key);
/* What the account's documents cost, as store_doc_put counts (0 when none or no account),
 * or a negative XMPP_* code. */
int64_t store_doc_bytes(store_t *s, const char *bare);
/* ---- XEP-0313 message archive (MAM) ------------------------------------------------ */
/* Each account's archive is an ordered list of messages keyed by an id the caller
 * chooses: > 0, ascending per account (the router uses microseconds since the epoch,
 * made monotonic per worker, so the id is also the archive time). An append whose id is
 * not above the account's last one is stored under last + 1 (a clock that went back).
 * 'with' is the other party's bare JID, 'with_full' its full JID when it had one (or
 * NULL); data the stored message (opaque bytes). SQLite stores the same bytes appended in
 * one call once, shared by the archives that hold them (a message's sender's and
 * recipient's copies), until the last of those rows goes; Redis keeps a copy each. */
typedef struct store_mam_msg {
  const char *owner;     /* the account whose archive it goes to */
  int64_t id;
  const char *with;
  const char *with_full; /* may be NULL */
  const char *data;
  size_t len;
} store_mam_msg_t;

/* Retention applied while appending (amortised: a few index steps per message): an
 * archive holds at most max_messages + max_messages / 16 messages (0: no limit; the
 * oldest go), and messages with id < min_id are removed (0: none). */
typedef struct store_mam_limits {
  unsigned max_messages;
  int64_t min_id;
  int replay; /* the rows were given before to a call that failed with XMPP_AGAIN: a row
               * that call did store (Redis: a write whose reply was lost) is not stored
               * again (SQLite: nothing to do, the failed transaction stored nothing) */
} store_mam_limits_t;

/* Appends n messages (to any accounts) in ONE transaction (SQLite) or one pipeline
 * (Redis). XMPP_ENOENT for a message whose owner has no account is not an error of
 * the others: the call returns 0 when every message with an account was stored.
 * XMPP_AGAIN: the store could not be reached or was busy (Redis down, loading, busy or
 * timed out; SQLite busy or locked): the same rows may be given again,
 * with lim->replay set. Any other error is permanent for these rows. */
int store_mam_append(store_t *s, const store_mam_msg_t *msgs, size_t n, const store_mam_limits_t *lim);

/* A query of one archive: messages with after < id < before (0 / INT64_MAX: no bound),
 * with the given 'with' (NULL: any; a bare JID matches messages with that contact
 * whatever the resource, a full JID only that resource: XEP-0313 §4.1.1), or, when
 * nids > 0, only the messages with those ids (the other bounds ignored). At most max are
 * given: the oldest of the range, or with last the newest (RSM <before/>). */
typedef struct store_mam_query {
  const char *with;
  int64_t after, before;
  unsigned max;
  int last;
  const int64_t *ids;
  size_t nids;
} store_mam_query_t;
typedef void (*store_mam_cb)(int64_t id, const char *with, const char *data, size_t len, void *ud);
/* Calls cb for each message found, in ascending id order; *more = 1 when further
 * messages of the range lie beyond the page in the direction read (after the last one
 * given, or with last before the first one). Returns how many were given, or an error.
 * Costs O(log n + max) whatever the archive's size (an index range). */
int store_mam_query(store_t *s, const char *bare, const store_mam_query_t *q, store_mam_cb cb, void *ud,
                    int *more);
/* 1 when the archive holds a message with that id, 0 when not, or an error. */
int store_mam_has(store_t *s, const char *bare, int64_t id);
/* Number of messages in the archive (SQLite: an index count; Redis: XLEN). */
int store_mam_count(store_t *s, const char *bare);

/* Preferences (XEP-0313 §5): the default (STORE_MAM_ALWAYS, _ROSTER, _NEVER) and the
 * JIDs always / never archived. get: XMPP_ENOENT when the account never set any (the
 * server's default applies); cb(jid, always, ud) for each JID. set replaces them all. */
enum { STORE_MAM_ALWAYS = 0, STORE_MAM_ROSTER = 1, STORE_MAM_NEVER = 2 };
typedef void (*store_mam_jid_cb)(const char *jid, int always, void *ud);
int store_mam_prefs_get(store_t *s, const char *bare, int *dflt, store_mam_jid_cb cb, void *ud);
int store_mam_prefs_set(store_t *s, const char *bare, int dflt, const char *const *always, size_t nalways,
                        const char *const *never, size_t nnever);
/* XEP-0191 blocklists (router/mod_blocking.c): the JIDs a user blocks, normalised (a full
 * JID, a bare JID, domain/resource or a domain), one row (SQLite) or one set member
 * (Redis) each: blocking one JID writes one row, never the whole list. */
typedef void (*store_block_cb)(const char *jid, void *ud);
/* Calls cb for each JID of bare's blocklist, in no particular order. 0, or an error. */
int store_block_load(store_t *s, const char *bare, store_block_cb cb, void *ud);
/* Adds the n JIDs to bare's blocklist (one already there stays, once). XMPP_ELIMIT when
 * the list would then hold more than max JIDs (0: no limit), XMPP_ENOENT when there is
 * no such account: then nothing is added. One transaction (SQLite), one script (Redis). */
int store_block_add(store_t *s, const char *bare, const char *const *jids, size_t n, unsigned max);
/* Removes the n JIDs from bare's blocklist (absent ones are no error); n == 0 empties
 * it. */
int store_block_remove(store_t *s, const char *bare, const char *const *jids, size_t n);
/* 1 when one of the n JIDs is in bare's blocklist, 0 when none is (or there is no
 * account), or an error. Costs the same whatever the list's size (SQLite: n primary-key
 * look-ups; Redis: one script of n SISMEMBER): what a stanza to an offline user needs. */
int store_block_match(store_t *s, const char *bare, const char *const *jids, size_t n);

/* Roster versioning (RFC 6121 §2.6): every store_roster_put and every store_roster_delete
 * that removed an item raises the account's roster version by one, in the same
 * transaction (SQLite: triggers on roster; Redis: the roster_ver field of the account
 * hash, in the scripts). *ver: the version now (0 for an account whose roster never
 * changed, or no account). 0 or XMPP_EIO. */
int store_roster_ver(store_t *s, const char *bare, int64_t *ver);

/* Page cache of this handle (SQLite: PRAGMA cache_size, in KiB; the default is 2 MiB):
 * for a handle that writes much, e.g. the archive writer (router/mod_mam.c), whose
 * working set (each account's newest pages of the archive and its indexes) the default
 * cache does not hold, so each commit read them again. Redis: nothing. 0 or an error. */
int store_set_cache(store_t *s, size_t bytes);

/* ---- XEP-0484 FAST tokens ------------------------------------------------------------
 * Per account and user agent (XEP-0388 <user-agent id/>, a UUID): the current token and
 * the one it replaced (still accepted until the current one is used: XEP-0484 §3.3), as
 * SHA-256 of the token, never the token; their expiry (unix seconds); the last <fast
 * count/> accepted (replay protection, §3.4). They go with the account
 * (store_account_delete). */
#define STORE_FAST_HASH 32
typedef struct store_fast {
  unsigned char cur[STORE_FAST_HASH], prev[STORE_FAST_HASH];
  int64_t cur_expiry, prev_expiry; /* prev_expiry 0: no previous token */
  int64_t count, prev_count;       /* the last count accepted with each; -1: none yet */
  int cur_mech, prev_mech;         /* the HT mechanism each is bound to (STORE_FAST_*) */
} store_fast_t;
#define STORE_FAST_NONE 0 /* HT-SHA-256-NONE */
#define STORE_FAST_ENDP 1 /* HT-SHA-256-ENDP */
#define STORE_FAST_EXPR 2 /* HT-SHA-256-EXPR */
/* 0 and *out; XMPP_ENOENT when bare has no token for ua. */
int store_fast_get(store_t *s, const char *bare, const char *ua, store_fast_t *out);
/* Inserts or replaces bare's tokens for ua. The counts are not taken from t: each token
 * keeps the count it had in either slot (matched by hash), a new one starts at -1.
 * When the account then holds more than max user agents' tokens (0: no limit), the one
 * that expires first among the others goes. One transaction / one script. 0,
 * XMPP_ENOENT (no account), XMPP_EIO. */
int store_fast_put(store_t *s, const char *bare, const char *ua, const store_fast_t *t, unsigned max);
/* Replay protection, per token: 0 when count is above the last one accepted for the
 * token of (bare, ua) whose hash is hash, now stored; XMPP_EDENIED when not (nothing
 * changes); XMPP_ENOENT when no such token. Atomic: of two log-ins with the same count,
 * one gets XMPP_EDENIED. */
int store_fast_count(store_t *s, const char *bare, const char *ua, const unsigned char *hash, int64_t count);
/* Removes bare's token for ua, or (ua NULL) every token of bare (a password change,
 * xmppctl fast-revoke): how many user agents' tokens went (>= 0), or an error. */
int store_fast_delete(store_t *s, const char *bare, const char *ua);

/* ---- runtime domains (xmppctl domain add, docs/operations.md "Virtual hosting") --------
 * Domains added through the admin interface, served beside the configuration's, kept in
 * the store so that they survive a restart and, on Redis, every node of a cluster serves
 * them. Each names its template (a [domain NAME] section of the configuration, or "" for
 * the defaults) and its certificate and key files ("" = the server's default). */
typedef struct store_domain {
  const char *name; /* normalised */
  const char *tmpl, *cert, *key;
  int64_t created;  /* unix seconds (given by list; ignored by add) */
} store_domain_t;
typedef void (*store_domain_cb)(const store_domain_t *d, void *ud);
/* 0, or XMPP_EEXIST when a domain of that name is stored. Raises the version. */
int store_domain_add(store_t *s, const store_domain_t *d);
/* 0, or XMPP_ENOENT. Raises the version. */
int store_domain_remove(store_t *s, const char *name);
/* Calls cb for each stored domain. 0 or an error. */
int store_domain_list(store_t *s, store_domain_cb cb, void *ud);
/* A number that changes with every add and remove (0 when none ever happened): what a
 * cluster's nodes poll to notice another node's change (one GET on Redis). */
int store_domain_version(store_t *s, int64_t *ver);
/* Accounts whose bare JID is in domain (SQLite: a row kept by triggers; Redis: a set per
 * domain kept by create and delete), or a negative XMPP_* code. */
int64_t store_domain_accounts(store_t *s, const char *domain);
/* store_account_create, refused with XMPP_ELIMIT when the account's domain already holds
 * max accounts (0: no limit). SQLite: the count and the insert are one transaction;
 * Redis: the account joins its domain's set first and leaves it again when the set is
 * then over max, so that two concurrent creates never both pass. */
int store_account_create_max(store_t *s, const char *bare, const store_account_t *a, unsigned max);

#endif

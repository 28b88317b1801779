/* Redis back-end of the store: accounts, rosters and offline queues in Redis, so that a
 * cluster needs nothing but Redis (docs/storage-redis.md: key layout, persistence).
 *
 * Client. hiredis' SYNCHRONOUS API: a store_t is one thread's handle and its calls block
 * like SQLite's do (one round trip each on loopback or a LAN: tens of microseconds).
 * hiredis' async libuv adapter belongs to the session directory (presence of sessions,
 * shard map), which must never block a loop; durable data keeps the same synchronous
 * contract as the SQLite back-end so that callers do not change with the back-end.
 *
 * Address ("storage.redis", passed to store_open as its path; parsed by common/redis_addr.c):
 *   HOST:PORT | [IPV6]:PORT | HOST (port 6379) | unix:/PATH | cluster:HOST:PORT,... |
 *   sentinel:HOST:PORT,.../MASTERNAME
 * optionally followed by space-separated db=N and password=SECRET.
 *
 * Nodes. One server: node 0. Sentinel: node 0 is the primary the sentinels name, asked
 * again after a lost connection or READONLY. Redis Cluster: a connection per primary
 * (opened when first needed), the slot map from CLUSTER SLOTS; each command goes to the
 * node serving its first key's slot, pipelines are split per node (pipe_run), and the
 * replies MOVED, ASK, TRYAGAIN, CLUSTERDOWN, READONLY, NOSCRIPT are handled as
 * common/redis_slots.h says (run_one), with its bounds.
 *
 * Keys. Everything of one user carries the Redis Cluster hash tag {u:JID}, so the
 * account, the roster and the offline queue of a user sit in ONE slot and every
 * multi-key script below is legal on a Redis Cluster too:
 *   {u:JID}:a  hash   sha1_salt sha1_iter sha1_stored sha1_server sha256_* created
 *                     offline_seq (last offline id), offline_bytes (bytes queued). SCRAM credentials only, never a
 *                     password; keys cut to the hash length (20 / 32 bytes).
 *   {u:JID}:r  hash   contact JID -> roster item (binary, see encode_item); the account
 *                     hash's roster_ver is the RFC 6121 §2.6 roster version, raised by
 *                     the roster put and delete scripts
 *   {u:JID}:o  list   offline messages, oldest first: "ID STAMP BYTES"
 *   {u:JID}:b  set    XEP-0191 blocked JIDs (normalised), one member each
 *   {u:JID}:d  hash   "KIND\0KEY" -> document bytes (store_doc_*); the account hash's
 *                     doc_bytes is what they cost (field and value bytes)
 *   {u:JID}:m  stream XEP-0313 archive: stream id ms-(us % 1000) of the archive id,
 *                     fields w (with, bare), f (with, full or empty), d (the message)
 *   {u:JID}:mw zset   its per-contact index, score 0: "b\0BARE\0HEX16", "f\0FULL\0HEX16"
 *   {u:JID}:mp hash   archiving preferences: default, a:JID, n:JID
 *   {u:JID}:f  hash   XEP-0484 FAST tokens per user agent: t:UA (SHA-256 of the current
 *                     and of the previous token, 64 bytes), e:UA, p:UA (their expiry, unix
 *                     seconds), c:UA, d:UA (the last count accepted with each), m:UA
 *                     (their HT mechanisms, two digits; absent: "00", -NONE); never a token
 *                     (and mam_last in the account hash: the last archive id)
 * Two keys outside any user's slot:
 *   accounts      sorted set, score 0, member = bare JID: the account index for
 *                 store_account_list (ZRANGEBYLEX pages, sorted, no KEYS/SCAN). In a
 *                 Cluster it has its own slot, so it cannot be updated in the same
 *                 script as the user's keys: it is kept a SUPERSET of the accounts
 *                 (ZADD before create, ZREM after delete) and list skips members whose
 *                 account hash is gone.
 *   xmppd:layout  layout version (1); a newer one is refused on open.
 * Runtime domains (store_domain_*, docs/operations.md "Virtual hosting"), one slot:
 *   {domains}:h   hash   name -> "TEMPLATE\nCERT\nKEY\nCREATED"
 *   {domains}:v   string a counter raised by every add and remove (one script with the
 *                 hash): what each node polls (store_domain_version)
 * Accounts per domain ([domain] max_accounts), a slot per domain:
 *   {d:DOMAIN}:n  set    the domain's bare JIDs; like the index, a superset (SADD before
 *                 create, SREM after delete); filled from the index once, on the first
 *                 open that finds xmppd:domain_sets unset
 *
 * Atomicity. Every read-modify-write is one Lua script on one user's slot: create
 * (exists check + HSET), update, delete (all four keys), roster put (account check +
 * HSET), document put (account check + budget check + HSET + doc_bytes), offline push (account check + limit check + id + RPUSH: XMPP_ELIMIT beyond the
 * limit, never a silent drop; offline_bytes in the account hash counts the queue's
 * bytes for the byte limit). Offline delivery is at-least-once like the SQLite back-end:
 * peek reads a window from the head and removes nothing; once the client has taken it,
 * a script removes from the head exactly the entries whose id is <= the last one taken
 * (and their bytes from offline_bytes); a crash in between leaves them queued, a message
 * pushed meanwhile stays.
 *
 * Batches (xmppctl populate) are a pipeline: writes are formatted and queued locally,
 * sent in chunks by store_batch_end(s, 1) with every reply checked (the first failure is
 * returned), or dropped unsent by store_batch_end(s, 0). Inside a batch, whether an
 * account exists is known from the batch's own creates and deletes, else asked of Redis,
 * so account create/update/delete and roster put still return XMPP_EEXIST / XMPP_ENOENT
 * at once. Other reads go to Redis and do not see the queued writes; a roster delete of
 * an absent item or an offline push beyond the limit inside a batch is reported by
 * store_batch_end. The batch is not one transaction (a Cluster could not run it as one):
 * a failure while flushing leaves what was applied before it.
 *
 * Errors. A lost connection (Redis restarted, network) is dropped and re-established on
 * the next call (on a Cluster or with Sentinel, waited out with run_one's bounded back-off,
 * to follow a failover); read-only commands are retried once on a fresh connection, writes are
 * not (they may have been applied). Failures return XMPP_EIO, which callers treat as
 * temporary (SASL answers <temporary-auth-failure/>). A connection failure is logged
 * once, and the reconnection. On a Cluster or with Sentinel a node silent for
 * RD_FAILOVER_TIMEOUT_MS (a primary that hangs: stopped, starved of CPU) counts as
 * failed, for every handle of the process (g_fail): it is not used again for
 * RD_REDIAL_NS (commands wait out the back-off while the map is refreshed, until its
 * replica serves), and is asked for the slot map last for RD_FAILED_NS. */
#include <ctype.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/redis_addr.h"
#include "common/redis_scripts.h"
#include "common/redis_slots.h"
#include "common/scram.h"
#include "common/store/store_impl.h"
#include "common/strmap.h"

#define RD_LAYOUT_VERSION 1
#define RD_LAYOUT_KEY "xmppd:layout"
#define RD_INDEX_KEY "accounts"
#define RD_CONNECT_TIMEOUT_MS 2000
#define RD_COMMAND_TIMEOUT_MS 5000
/* On a Cluster or with Sentinel a node that does not answer for this long is taken as
 * lost (its replica may have taken over: the map is refreshed, reads sent again) rather
 * than waited for: a hung primary (stopped, CPU-starved) keeps its connections open. */
#define RD_FAILOVER_TIMEOUT_MS 3000
/* A node that failed (no answer, no connection) is asked for the slot map after the
 * others for this long: a refresh does not wait on the node that made it necessary. */
#define RD_FAILED_NS (10ull * 1000000000ull)
/* One sentinel's connect and answer: a sentinel that does not answer costs this much of
 * the calling thread, once (the next query starts from the sentinel that answered). */
#define RD_SENTINEL_TIMEOUT_MS 500
/* A node that failed this recently is not dialled again (a hung one would cost a whole
 * RD_FAILOVER_TIMEOUT_MS more): the command waits out the slot layer's back-off, the map
 * refreshed meanwhile, until its replica serves the slot or this has passed. */
#define RD_REDIAL_NS (2000ull * 1000000ull)
#define RD_LIST_PAGE 512
#define RD_FLUSH_CHUNK 1024
#define RD_ITEM_VERSION 1

/* ---- scripts ------------------------------------------------------------------------ */

enum { S_CREATE, S_UPDATE, S_DELETE, S_ROSTER_PUT, S_OFF_PUSH, S_OFF_TRIM, S_DOC_PUT, S_DOC_DEL,
       S_MAM_APPEND, S_MAM_QUERY, S_MAM_PREFS_SET, S_BLOCK_ADD, S_BLOCK_MATCH, S_ROSTER_DEL,
       S_FAST_PUT, S_FAST_COUNT, S_FAST_DEL, S_DOM_ADD, S_DOM_DEL,
       S_COUNT };

static const char *const script_text[S_COUNT] = {
    /* KEYS: runtime domains hash, their version. ARGV: name, value -> 1 added, 0 exists */
    [S_DOM_ADD] = "if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end "
                  "redis.call('INCR', KEYS[2]) return 1",
    /* KEYS: the same. ARGV: name -> 1 removed, 0 absent */
    [S_DOM_DEL] = "if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end "
                  "redis.call('INCR', KEYS[2]) return 1",
    /* KEYS: account. ARGV: field value ... -> 1 created, 0 exists */
    [S_CREATE] = "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end "
                 "redis.call('HSET', KEYS[1], unpack(ARGV)) return 1",
    /* KEYS: account. ARGV: field value ... -> 1 updated, 0 absent */
    [S_UPDATE] = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
                 "redis.call('HSET', KEYS[1], unpack(ARGV)) return 1",
    /* KEYS: account, then the user's other keys (roster, offline, documents,
     * blocklist) -> 1 deleted, 0 absent */
    [S_DELETE] = "local n = redis.call('DEL', KEYS[1]) "
                 "for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end return n",
    /* KEYS: account, roster. ARGV: contact, item -> 1 stored, 0 no account */
    [S_ROSTER_PUT] = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
                     "redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) "
                     "redis.call('HINCRBY', KEYS[1], 'roster_ver', 1) return 1",
    /* KEYS: account, offline. ARGV: max (0 = none), stamp, bytes, max bytes (0 = none)
     * -> queue length, -1 no account, -2 limit reached. The account's offline_bytes
     * counts the queue's message bytes. */
    [S_OFF_PUSH] = "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end "
                   "local max = tonumber(ARGV[1]) "
                   "if max > 0 and redis.call('LLEN', KEYS[2]) >= max then return -2 end "
                   "local mb = tonumber(ARGV[4]) "
                   "if mb > 0 and (tonumber(redis.call('HGET', KEYS[1], 'offline_bytes')) or 0) + #ARGV[3] > mb "
                   "then return -2 end "
                   "local id = redis.call('HINCRBY', KEYS[1], 'offline_seq', 1) "
                   "redis.call('HINCRBY', KEYS[1], 'offline_bytes', #ARGV[3]) "
                   "return redis.call('RPUSH', KEYS[2], id .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])",
    /* KEYS: offline, account. ARGV: last id taken -> entries removed from the head */
    [S_OFF_TRIM] = "local last = tonumber(ARGV[1]) local n = 0 local freed = 0 "
                   "while true do "
                   "  local h = redis.call('LINDEX', KEYS[1], 0) "
                   "  if not h then break end "
                   "  local id = tonumber(string.match(h, '^(%d+) ')) "
                   "  if id ~= nil and id > last then break end "
                   "  local head = string.match(h, '^%d+ %-?%d+ ') "
                   "  freed = freed + #h - (head and #head or 0) "
                   "  redis.call('LPOP', KEYS[1]) n = n + 1 "
                   "end "
                   "if freed > 0 and redis.call('EXISTS', KEYS[2]) == 1 then "
                   "  if redis.call('HINCRBY', KEYS[2], 'offline_bytes', -freed) < 0 then "
                   "    redis.call('HSET', KEYS[2], 'offline_bytes', 0) end "
                   "end return n",
    /* KEYS: account, documents. ARGV: field ("KIND\0KEY"), data, max bytes (0 = none)
     * -> 1 stored, -1 no account, -2 over the budget. The account's doc_bytes is what its
     * documents cost: field bytes + data bytes each. */
    [S_DOC_PUT] = "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end "
                  "local old = 0 "
                  "if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then "
                  "  old = #ARGV[1] + redis.call('HSTRLEN', KEYS[2], ARGV[1]) end "
                  "local new = #ARGV[1] + #ARGV[2] "
                  "local mt = tonumber(ARGV[3]) "
                  "local cur = tonumber(redis.call('HGET', KEYS[1], 'doc_bytes')) or 0 "
                  "if mt > 0 and cur - old + new > mt then return -2 end "
                  "redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) "
                  "redis.call('HINCRBY', KEYS[1], 'doc_bytes', new - old) return 1",
    /* KEYS: account, documents. ARGV: field -> 1 removed, 0 absent */
    [S_DOC_DEL] = "local len = redis.call('HSTRLEN', KEYS[2], ARGV[1]) "
                  "if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end "
                  "if redis.call('EXISTS', KEYS[1]) == 1 then "
                  "  redis.call('HINCRBY', KEYS[1], 'doc_bytes', -(#ARGV[1] + len)) end return 1",
    /* XEP-0313 archive. KEYS: account, stream, index. ARGV: id (microseconds), with,
     * with_full ('' none), data, max messages (0 none), min id (0 none) -> the id used,
     * -1 no account. An id not above the last one (account field mam_last) becomes
     * last + 1; the stream id is ms-(us % 1000). The index holds "b\0BARE\0HEX16" and
     * "f\0FULL\0HEX16" (score 0: ZRANGEBYLEX gives one contact's ids in order).
     * Retention: up to 256 entries older than min id, and the oldest once the stream is
     * max/16 over max, are removed with their index members (XTRIM MINID).
     * ARGV[7] '1' (a replay: an earlier attempt may have stored it, its reply lost): an
     * entry at or after the id (64 at most) with the same contact and data is this message
     * already stored, whose id is returned, and nothing is added. */
    [S_MAM_APPEND] =
        "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end "
        "local id = tonumber(ARGV[1]) "
        "local last = tonumber(redis.call('HGET', KEYS[1], 'mam_last')) or 0 "
        "local function sid(x) return string.format('%d-%d', (x - x % 1000) / 1000, x % 1000) end "
        "if id <= last and ARGV[7] == '1' then "
        "  for _, e in ipairs(redis.call('XRANGE', KEYS[2], sid(id), '+', 'COUNT', 64)) do "
        "    local f = e[2] local w, d = nil, nil "
        "    for i = 1, #f, 2 do if f[i] == 'w' then w = f[i + 1] elseif f[i] == 'd' then d = f[i + 1] end end "
        "    if w == ARGV[2] and d == ARGV[4] then "
        "      local ms, sq = string.match(e[1], '^(%d+)-(%d+)$') "
        "      return tonumber(ms) * 1000 + tonumber(sq) "
        "    end "
        "  end "
        "end "
        "if id <= last then id = last + 1 end "
        "local function hex(x) return string.format('%016x', x) end "
        "redis.call('HSET', KEYS[1], 'mam_last', string.format('%d', id)) "
        "redis.call('XADD', KEYS[2], sid(id), 'w', ARGV[2], 'f', ARGV[3], 'd', ARGV[4]) "
        "redis.call('ZADD', KEYS[3], 0, 'b\\0' .. ARGV[2] .. '\\0' .. hex(id)) "
        "if ARGV[3] ~= '' then redis.call('ZADD', KEYS[3], 0, 'f\\0' .. ARGV[3] .. '\\0' .. hex(id)) end "
        "local function drop(es) "
        "  local top = nil "
        "  for _, e in ipairs(es) do "
        "    local ms, sq = string.match(e[1], '^(%d+)-(%d+)$') "
        "    local x = tonumber(ms) * 1000 + tonumber(sq) "
        "    local f = e[2] local w, fu = '', '' "
        "    for i = 1, #f, 2 do if f[i] == 'w' then w = f[i + 1] elseif f[i] == 'f' then fu = f[i + 1] end end "
        "    redis.call('ZREM', KEYS[3], 'b\\0' .. w .. '\\0' .. hex(x)) "
        "    if fu ~= '' then redis.call('ZREM', KEYS[3], 'f\\0' .. fu .. '\\0' .. hex(x)) end "
        "    top = x "
        "  end "
        "  if top then redis.call('XTRIM', KEYS[2], 'MINID', sid(top + 1)) end "
        "end "
        "local minid = tonumber(ARGV[6]) "
        "if minid > 0 then drop(redis.call('XRANGE', KEYS[2], '-', '(' .. sid(minid), 'COUNT', 256)) end "
        "local max = tonumber(ARGV[5]) "
        "if max > 0 then "
        "  local n = redis.call('XLEN', KEYS[2]) "
        "  if n > max + math.floor(max / 16) then drop(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', n - max)) end "
        "end "
        "return string.format('%d', id)",
    /* KEYS: stream, index. ARGV: index prefix ('' = no 'with'), low stream id, high
     * stream id, low hex, high hex (inclusive), count, last ('1': newest first)
     * -> entries [id, [field, value...]] in the order read */
    [S_MAM_QUERY] =
        "local n = tonumber(ARGV[6]) "
        "if ARGV[1] == '' then "
        "  if ARGV[7] == '1' then return redis.call('XREVRANGE', KEYS[1], ARGV[3], ARGV[2], 'COUNT', n) end "
        "  return redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[3], 'COUNT', n) "
        "end "
        "local lo, hi = '[' .. ARGV[1] .. ARGV[4], '[' .. ARGV[1] .. ARGV[5] "
        "local ms "
        "if ARGV[7] == '1' then ms = redis.call('ZREVRANGEBYLEX', KEYS[2], hi, lo, 'LIMIT', 0, n) "
        "else ms = redis.call('ZRANGEBYLEX', KEYS[2], lo, hi, 'LIMIT', 0, n) end "
        "local res = {} "
        "for _, m in ipairs(ms) do "
        "  local x = tonumber(string.sub(m, -16), 16) "
        "  local s = string.format('%d-%d', (x - x % 1000) / 1000, x % 1000) "
        "  local e = redis.call('XRANGE', KEYS[1], s, s) "
        "  if e[1] then res[#res + 1] = e[1] end "
        "end "
        "return res",
    /* KEYS: account, prefs. ARGV: default, "a:JID\0n:JID\0..." -> 1, 0 no account */
    [S_MAM_PREFS_SET] =
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
        "redis.call('DEL', KEYS[2]) "
        "redis.call('HSET', KEYS[2], 'default', ARGV[1]) "
        "for j in string.gmatch(ARGV[2], '[^%z]+') do "
        "  local other = (string.sub(j, 1, 1) == 'a' and 'n' or 'a') .. string.sub(j, 2) "
        "  if string.sub(j, 1, 1) == 'n' then redis.call('HDEL', KEYS[2], other) end "
        "  if string.sub(j, 1, 1) == 'n' or redis.call('HEXISTS', KEYS[2], other) == 0 then "
        "    redis.call('HSET', KEYS[2], j, '') end "
        "end return 1",
    /* KEYS: account, blocklist. ARGV: max (0 = none), JID... -> JIDs added, -1 no
     * account, -2 the list would hold more than max (nothing added). Members are added
     * one by one (no unpack: a long list would overflow Lua's stack); the ones this call
     * added are taken out again when the count is over. */
    [S_BLOCK_ADD] = "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end "
                    "local max = tonumber(ARGV[1]) local added = {} "
                    "for i = 2, #ARGV do "
                    "  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then added[#added + 1] = ARGV[i] end "
                    "end "
                    "if max > 0 and redis.call('SCARD', KEYS[2]) > max then "
                    "  for _, j in ipairs(added) do redis.call('SREM', KEYS[2], j) end return -2 "
                    "end return #added",
    /* KEYS: blocklist. ARGV: JID... -> 1 when one of them is a member, else 0 */
    [S_BLOCK_MATCH] = "for i = 1, #ARGV do "
                      "  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then return 1 end "
                      "end return 0",
    /* KEYS: account, roster. ARGV: contact -> 1 deleted (the roster version raised), 0 absent */
    [S_ROSTER_DEL] = "local n = redis.call('HDEL', KEYS[2], ARGV[1]) "
                     "if n == 1 and redis.call('EXISTS', KEYS[1]) == 1 then "
                     "  redis.call('HINCRBY', KEYS[1], 'roster_ver', 1) end return n",
    /* XEP-0484 FAST tokens: {u:JID}:f fields t:UA (SHA-256 of the current token, then of
     * the previous one), e:UA and p:UA (their expiry), c:UA and d:UA (the last count
     * accepted with each), m:UA (their mechanisms). Each count goes with its token's hash:
     * a token kept (still current, or now the previous one) keeps it, a new one starts at
     * -1. KEYS: account, fast. ARGV: ua, hashes, expiry, previous expiry, max, mechanisms
     * -> 1, -1 no account. Beyond max user agents (counted by their e: fields), the others'
     * tokens that expire first go. */
    [S_FAST_PUT] = "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end "
                   "local u = ARGV[1] "
                   "local o = redis.call('HMGET', KEYS[2], 't:'..u, 'c:'..u, 'd:'..u) "
                   "local function cnt(h) "
                   "  if not o[1] then return '-1' end "
                   "  if string.sub(o[1], 1, 32) == h then return o[2] or '-1' end "
                   "  if string.sub(o[1], 33, 64) == h then return o[3] or '-1' end "
                   "  return '-1' end "
                   "local cc, pc = cnt(string.sub(ARGV[2], 1, 32)), cnt(string.sub(ARGV[2], 33, 64)) "
                   "redis.call('HSET', KEYS[2], 't:'..u, ARGV[2], 'e:'..u, ARGV[3], 'p:'..u, ARGV[4], 'c:'..u, cc, "
                   "           'd:'..u, pc, 'm:'..u, ARGV[6]) "
                   "local max = tonumber(ARGV[5]) "
                   "if max > 0 then "
                   "  while true do "
                   "    local all = redis.call('HGETALL', KEYS[2]) "
                   "    local n, best, bexp = 0, nil, nil "
                   "    for i = 1, #all, 2 do "
                   "      local f = all[i] "
                   "      if string.sub(f, 1, 2) == 'e:' then "
                   "        n = n + 1 "
                   "        local e = tonumber(all[i + 1]) "
                   "        if string.sub(f, 3) ~= u and (best == nil or e < bexp or (e == bexp and string.sub(f, 3) < best)) then "
                   "          best, bexp = string.sub(f, 3), e end end end "
                   "    if n <= max or best == nil then break end "
                   "    redis.call('HDEL', KEYS[2], 't:'..best, 'e:'..best, 'p:'..best, 'c:'..best, 'd:'..best, 'm:'..best) "
                   "  end end "
                   "return 1",
    /* KEYS: fast. ARGV: ua, hash, count -> 1 stored, 0 not above the last one accepted
     * with that token, -1 no such token */
    [S_FAST_COUNT] = "local t = redis.call('HGET', KEYS[1], 't:'..ARGV[1]) "
                     "if not t then return -1 end "
                     "local f "
                     "if string.sub(t, 1, 32) == ARGV[2] then f = 'c:'..ARGV[1] "
                     "elseif string.sub(t, 33, 64) == ARGV[2] then f = 'd:'..ARGV[1] "
                     "else return -1 end "
                     "local c = redis.call('HGET', KEYS[1], f) or '-1' "
                     "if tonumber(ARGV[3]) <= tonumber(c) then return 0 end "
                     "redis.call('HSET', KEYS[1], f, ARGV[3]) "
                     "return 1",
    /* KEYS: fast. ARGV: [ua] -> how many user agents' tokens went */
    [S_FAST_DEL] = "if #ARGV == 0 then "
                   "  local n = 0 "
                   "  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do "
                   "    if string.sub(f, 1, 2) == 'e:' then n = n + 1 end end "
                   "  redis.call('DEL', KEYS[1]) return n end "
                   "local u = ARGV[1] "
                   "return redis.call('HDEL', KEYS[1], 't:'..u, 'e:'..u, 'p:'..u, 'c:'..u, 'd:'..u, 'm:'..u) > 0 and 1 or 0",
};

/* ---- handle ------------------------------------------------------------------------- */

/* How a queued batch command's reply is judged when the batch is flushed. */
typedef enum {
  R_ANY,       /* any non-error reply */
  R_ONE,       /* integer 1, else XMPP_ENOENT (update, roster put) */
  R_CREATE,    /* integer 1, else XMPP_EEXIST */
  R_ROSTER_DEL,/* integer 1, else XMPP_ENOENT */
  R_PUSH,      /* integer >= 0, -1 XMPP_ENOENT, -2 XMPP_ELIMIT */
} rkind_t;

/* Formatted commands to send in one pipeline, each with the slot of its first key
 * (-1: none). */
typedef struct pipe {
  buf_t q;
  size_t *len;
  int *slot;
  size_t n, cap;
} pipe_t;

typedef struct rd {
  char *target;      /* as configured, for messages (without the password) */
  redis_addr_t addr; /* mode, server / seeds / sentinels, db, password */
  /* The nodes: a Redis Cluster's primaries as its slot map names them (map.nodes; a
   * connection each in conns, same index, opened when first needed); with one server or
   * Sentinel, node 0 is the server (the primary Sentinel named), for every slot. */
  rslots_map_t map;
  redisContext **conns;
  uint64_t *failed;  /* per node: uv_hrtime of its last failure, 0 none (cluster_refresh) */
  int sidx;          /* Sentinel: the sentinel that answered last (asked first) */
  int nconns;
  int stale;    /* cluster: refresh the slot map before routing; sentinel: ask for the primary */
  int down;     /* the last connection attempt failed (logged once) */
  rscripts_t scripts; /* texts and SHAs (the loader shared with common/credis.c) */
  pipe_t p;     /* the pipelined reads of one call */
  /* batch */
  int batch;
  pipe_t bq;         /* queued writes */
  rkind_t *qkind;    /* how each is judged */
  size_t qkcap;
  strmap_t *bstate;  /* bare JID -> B_CREATED / B_DELETED during the batch */
} rd_t;

#define B_CREATED ((void *)1)
#define B_DELETED ((void *)2)
#define CLUSTERED(r) ((r)->addr.mode == REDIS_MODE_CLUSTER)
#define SINGLE(r) ((r)->addr.mode == REDIS_MODE_SINGLE)

/* ---- pipelines ---------------------------------------------------------------------- */

static void pipe_clear(pipe_t *p) {
  p->q.len = 0;
  p->n = 0;
}

static void pipe_free(pipe_t *p) {
  buf_free(&p->q);
  buf_init(&p->q);
  xfree(p->len);
  xfree(p->slot);
  p->len = NULL;
  p->slot = NULL;
  p->n = p->cap = 0;
}

/* Formats and appends one command (its slot: rslots_cmd_key's key). */
static void pipe_add(pipe_t *p, int argc, const char **argv, const size_t *lens) {
  char *cmd = NULL;
  int n = redisFormatCommandArgv(&cmd, argc, argv, lens);
  if (n < 0 || !cmd) {
    log_error("store(redis): cannot format a command (out of memory)");
    abort();
  }
  if (p->n == p->cap) {
    p->cap = p->cap ? p->cap * 2 : 64;
    p->len = xrealloc(p->len, p->cap * sizeof *p->len);
    p->slot = xrealloc(p->slot, p->cap * sizeof *p->slot);
  }
  int k = rslots_cmd_key(argc, argv, lens);
  buf_append(&p->q, cmd, (size_t)n);
  p->len[p->n] = (size_t)n;
  p->slot[p->n] = k < 0 ? -1 : rslots_key_slot(argv[k], lens[k]);
  p->n++;
  redisFreeCommand(cmd);
}

/* ---- nodes and connections ---------------------------------------------------------- */

static void drop_node(rd_t *r, int node) {
  if (node >= 0 && node < r->nconns && r->conns[node]) {
    redisFree(r->conns[node]);
    r->conns[node] = NULL;
  }
}

static void drop_all(rd_t *r) {
  for (int i = 0; i < r->nconns; i++) drop_node(r, i);
}

/* The connection or its absence changed what we know: a cluster refreshes its slot map, a
 * Sentinel set-up asks for the primary again, before the next command. */
static void topology_lost(rd_t *r) {
  if (!SINGLE(r)) r->stale = 1;
}

/* Counts a reply in the metrics (xmppd_redis_errors_total{client="store"}); *t0: when the
 * round trip began (uv_hrtime), or 0 when it is already counted (the later replies of a
 * pipeline arrive with the first: one round trip). */
static void count_reply(const redisReply *rep, uint64_t *t0) {
  if (!rep) {
    metrics_redis_error(METRICS_REDIS_STORE, 1);
    return;
  }
  if (*t0) metrics_redis_rtt(METRICS_REDIS_STORE, (uv_hrtime() - *t0) / 1000);
  *t0 = 0;
  if (rep->type == REDIS_REPLY_ERROR) metrics_redis_error(METRICS_REDIS_STORE, 0);
}

/* redisGetReply, counted. */
static int get_reply(redisContext *c, redisReply **rep, uint64_t *t0) {
  int rc = redisGetReply(c, (void **)rep);
  count_reply(rc == REDIS_OK ? *rep : NULL, t0);
  return rc;
}

static redisReply *raw_cmd(redisContext *c, int argc, const char **argv, const size_t *lens) {
  uint64_t t0 = uv_hrtime();
  redisReply *rep = redisCommandArgv(c, argc, argv, lens);
  count_reply(rep, &t0);
  return rep;
}

/* A connection to host:port (or the unix socket) with the timeouts set. NULL with *err. */
static redisContext *dial_within(rd_t *r, const char *host, int port, const char *unix_path, int connect_ms,
                                 int tmo, char **err) {
  struct timeval ct = {connect_ms / 1000, (connect_ms % 1000) * 1000};
  struct timeval tt = {tmo / 1000, (tmo % 1000) * 1000};
  redisContext *c = unix_path ? redisConnectUnixWithTimeout(unix_path, ct) : redisConnectWithTimeout(host, port, ct);
  if (!c) {
    *err = xstrfmt("redis %s: cannot allocate a connection", r->target);
    return NULL;
  }
  if (c->err) {
    *err = unix_path ? xstrfmt("redis %s: %s", r->target, c->errstr)
                     : xstrfmt("redis %s (%s:%d): %s", r->target, host, port, c->errstr);
    redisFree(c);
    return NULL;
  }
  if (redisSetTimeout(c, tt) != REDIS_OK) {
    *err = xstrfmt("redis %s: cannot set the timeout", r->target);
    redisFree(c);
    return NULL;
  }
  return c;
}

static redisContext *dial(rd_t *r, const char *host, int port, const char *unix_path, char **err) {
  return dial_within(r, host, port, unix_path, RD_CONNECT_TIMEOUT_MS,
                     SINGLE(r) ? RD_COMMAND_TIMEOUT_MS : RD_FAILOVER_TIMEOUT_MS, err);
}

/* The scripts on one connection (the shared loader, common/redis_scripts.h: on every new
 * connection, and again after a NOSCRIPT). 0 or -1 with *err. */
static int load_scripts(rd_t *r, redisContext *c, char **err) {
  return rscripts_load_sync(&r->scripts, c, r->target, err);
}

/* AUTH, SELECT, the scripts. 0 or -1 with *err. */
static int handshake(rd_t *r, redisContext *c, char **err) {
  redisReply *rep;
  if (r->addr.password) {
    const char *av[] = {"AUTH", r->addr.password};
    size_t al[] = {4, strlen(r->addr.password)};
    rep = raw_cmd(c, 2, av, al);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
      *err = xstrfmt("redis %s: AUTH: %s", r->target, rep ? rep->str : c->errstr);
      if (rep) freeReplyObject(rep);
      return -1;
    }
    freeReplyObject(rep);
  }
  if (r->addr.db) {
    char d[16];
    snprintf(d, sizeof d, "%d", r->addr.db);
    const char *av[] = {"SELECT", d};
    size_t al[] = {6, strlen(d)};
    rep = raw_cmd(c, 2, av, al);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
      *err = xstrfmt("redis %s: SELECT: %s", r->target, rep ? rep->str : c->errstr);
      if (rep) freeReplyObject(rep);
      return -1;
    }
    freeReplyObject(rep);
  }
  if (r->addr.mode == REDIS_MODE_SENTINEL) {
    /* the node a sentinel named may have been demoted since (Sentinel clients
     * guidelines: check ROLE) */
    rep = redisCommand(c, "ROLE");
    int primary = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
                  rep->element[0]->type == REDIS_REPLY_STRING && strcmp(rep->element[0]->str, "master") == 0;
    if (!primary) *err = xstrfmt("redis %s: the node the sentinels named is not a primary (yet)", r->target);
    if (rep) freeReplyObject(rep);
    if (!primary) return -1;
  }
  return load_scripts(r, c, err);
}

/* Sentinel: asks the sentinels in turn for the primary of addr.master and makes it node 0
 * (whose connection checks that it calls itself a primary: handshake's ROLE, since a
 * sentinel may still name the old one for a moment during a failover). 0 or -1 with
 * *err. */
static int sentinel_resolve(rd_t *r, char **err) {
  *err = NULL;
  for (int k = 0; k < r->addr.nseeds; k++) {
    int i = (r->sidx + k) % r->addr.nseeds; /* from the one that answered last */
    char *why = NULL;
    redisContext *s = dial_within(r, r->addr.seed_host[i], r->addr.seed_port[i], NULL, RD_SENTINEL_TIMEOUT_MS,
                                  RD_SENTINEL_TIMEOUT_MS, &why);
    if (!s) {
      xfree(*err);
      *err = why;
      continue;
    }
    redisReply *rep = redisCommand(s, "SENTINEL get-master-addr-by-name %s", r->addr.master);
    char host[RSLOTS_HOST_MAX];
    int port;
    int ok = rep && rslots_sentinel_addr(rep, host, &port) == 0;
    if (!ok) {
      xfree(*err);
      *err = !rep ? xstrfmt("redis %s: sentinel %s:%d: %s", r->target, r->addr.seed_host[i], r->addr.seed_port[i],
                            s->errstr[0] ? s->errstr : "no answer")
                  : xstrfmt("redis %s: sentinel %s:%d does not know '%s'%s%s", r->target, r->addr.seed_host[i],
                            r->addr.seed_port[i], r->addr.master, rep->type == REDIS_REPLY_ERROR ? ": " : "",
                            rep->type == REDIS_REPLY_ERROR ? rep->str : "");
    }
    if (rep) freeReplyObject(rep);
    redisFree(s);
    if (!ok) continue;
    if (r->map.nnodes == 0) rslots_map_node(&r->map, host, port);
    if (r->map.nodes[0].port != port || strcmp(r->map.nodes[0].host, host) != 0) {
      log_info("store(redis) %s: the primary is now %s:%d", r->target, host, port);
      drop_node(r, 0);
      if (r->nconns > 0) r->failed[0] = 0; /* another node */
      snprintf(r->map.nodes[0].host, sizeof r->map.nodes[0].host, "%s", host);
      r->map.nodes[0].port = port;
    }
    xfree(*err);
    *err = NULL;
    r->stale = 0;
    r->sidx = i;
    return 0;
  }
  if (!*err) *err = xstrfmt("redis %s: no sentinel", r->target);
  return -1;
}

static redisContext *node_ctx(rd_t *r, int node, char **err);

/* Failures seen by any store handle of the process, by node address: each thread has a
 * handle of its own, which would otherwise find a hung node by itself, RD_FAILOVER_TIMEOUT_MS
 * each (a log-in waited for the edge's handle, then for the router's). g_fail_last (the
 * latest failure, uv_hrtime) keeps the lock off the path while nothing failed lately. */
#define RD_SHARED_FAILS 16
static pthread_mutex_t g_fail_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
  char host[RSLOTS_HOST_MAX];
  int port;
  uint64_t at; /* 0: free */
} g_fail[RD_SHARED_FAILS];
static _Atomic uint64_t g_fail_last;

static int fails_lately(uint64_t now) {
  uint64_t last = atomic_load_explicit(&g_fail_last, memory_order_relaxed);
  return last && now - last < RD_REDIAL_NS;
}

/* Records (at > 0) or clears (at = 0) host:port's failure. */
static void shared_fail(const rslots_node_t *n, uint64_t at) {
  pthread_mutex_lock(&g_fail_mu);
  int slot = -1;
  for (int i = 0; i < RD_SHARED_FAILS; i++) {
    if (g_fail[i].at && g_fail[i].port == n->port && !strcmp(g_fail[i].host, n->host)) {
      slot = i;
      break;
    }
    if (slot < 0 && (!g_fail[i].at || (at && at - g_fail[i].at >= RD_REDIAL_NS))) slot = i; /* free or stale */
  }
  if (slot >= 0 && (at || (g_fail[slot].port == n->port && !strcmp(g_fail[slot].host, n->host)))) {
    snprintf(g_fail[slot].host, sizeof g_fail[slot].host, "%s", n->host);
    g_fail[slot].port = n->port;
    g_fail[slot].at = at;
  }
  pthread_mutex_unlock(&g_fail_mu);
  if (at) atomic_store_explicit(&g_fail_last, at, memory_order_relaxed);
}

/* Whether another handle saw host:port fail within RD_REDIAL_NS. */
static int shared_failed(const rslots_node_t *n, uint64_t now) {
  if (!fails_lately(now)) return 0;
  int hit = 0;
  pthread_mutex_lock(&g_fail_mu);
  for (int i = 0; i < RD_SHARED_FAILS && !hit; i++)
    hit = g_fail[i].at && now - g_fail[i].at < RD_REDIAL_NS && g_fail[i].port == n->port &&
          !strcmp(g_fail[i].host, n->host);
  pthread_mutex_unlock(&g_fail_mu);
  return hit;
}

/* The node's connection failed now (no answer, refused, lost) / answered. */
static void node_failed(rd_t *r, int node) {
  if (node < 0 || node >= r->nconns) return;
  r->failed[node] = uv_hrtime();
  if (!SINGLE(r) && node < r->map.nnodes) shared_fail(&r->map.nodes[node], r->failed[node]);
}

static void node_answered(rd_t *r, int node) {
  if (node < 0 || node >= r->nconns) return;
  r->failed[node] = 0;
  if (!SINGLE(r) && node < r->map.nnodes && fails_lately(uv_hrtime())) shared_fail(&r->map.nodes[node], 0);
}

/* On a Cluster or with Sentinel: whether node failed within RD_REDIAL_NS, as this handle
 * or another one of the process saw it (not to be dialled or used again yet). */
static int redial_later(rd_t *r, int node) {
  if (SINGLE(r) || node < 0) return 0;
  uint64_t now = uv_hrtime();
  if (node < r->nconns && r->failed[node] && now - r->failed[node] < RD_REDIAL_NS) return 1;
  return node < r->map.nnodes && shared_failed(&r->map.nodes[node], now);
}

/* Whether host:port is a node that failed within RD_FAILED_NS. */
static int failed_lately(rd_t *r, const char *host, int port) {
  uint64_t now = uv_hrtime();
  for (int i = 0; i < r->nconns && i < r->map.nnodes; i++)
    if (r->failed[i] && now - r->failed[i] < RD_FAILED_NS && r->map.nodes[i].port == port &&
        strcmp(r->map.nodes[i].host, host) == 0)
      return 1;
  return 0;
}

/* Cluster: the slot map from CLUSTER SLOTS, asked of the known primaries then the seed
 * nodes until one answers; nodes that failed lately last (pass 1), so that a refresh
 * after a primary hung does not wait on it again. 0 or -1 with *err. */
static int cluster_refresh(rd_t *r, char **err) {
  *err = NULL;
  int known = r->map.nnodes;
  for (int i = 0; i < 2 * (known + r->addr.nseeds); i++) {
    int pass = i >= known + r->addr.nseeds;
    int k = i % (known + r->addr.nseeds);
    const char *h = k < known ? r->map.nodes[k].host : r->addr.seed_host[k - known];
    int hp = k < known ? r->map.nodes[k].port : r->addr.seed_port[k - known];
    if (failed_lately(r, h, hp) != pass) continue;
    char *why = NULL;
    redisContext *c;
    const char *host;
    if (k < known) {
      c = node_ctx(r, k, &why);
      host = r->map.nodes[k].host;
    } else {
      host = r->addr.seed_host[k - known];
      c = dial(r, host, r->addr.seed_port[k - known], NULL, &why);
    }
    if (!c) {
      if (k < known) node_failed(r, k);
      xfree(*err);
      *err = why;
      continue;
    }
    if (k >= known && r->addr.password) {
      redisReply *a = redisCommand(c, "AUTH %s", r->addr.password);
      if (a) freeReplyObject(a);
    }
    redisReply *rep = redisCommand(c, "CLUSTER SLOTS");
    int rc = -1;
    if (rep) rc = rslots_map_load(&r->map, rep, host, &why);
    else why = xstrfmt("CLUSTER SLOTS: %s", c->errstr);
    if (rep) freeReplyObject(rep);
    if (k >= known) redisFree(c);
    else if (!rep) {
      drop_node(r, k);
      node_failed(r, k);
    }
    if (rc == 0 && rslots_map_covered(&r->map) > 0) {
      xfree(*err);
      *err = NULL;
      r->stale = 0;
      return 0;
    }
    xfree(*err);
    *err = xstrfmt("redis %s: %s", r->target, why ? why : "CLUSTER SLOTS: no slot served");
    xfree(why);
  }
  if (!*err) *err = xstrfmt("redis %s: no node", r->target);
  return -1;
}

/* The node serving slot (-1: any, e.g. a command without keys), after refreshing what
 * is stale. -1 with *err when none is known. */
static int route(rd_t *r, int slot, char **err) {
  *err = NULL;
  if (SINGLE(r)) return 0;
  if (r->addr.mode == REDIS_MODE_SENTINEL) {
    if ((r->stale || r->map.nnodes == 0) && sentinel_resolve(r, err) != 0) return -1;
    return 0;
  }
  if (r->stale || r->map.nnodes == 0) { /* (not rslots_map_covered: 16384 steps per command) */
    char *why = NULL;
    if (cluster_refresh(r, &why) != 0) {
      if (r->map.nnodes == 0) {
        *err = why;
        return -1;
      }
      xfree(why); /* keep routing by the old map: its nodes may answer */
    }
  }
  int n = slot < 0 ? (r->map.nnodes ? 0 : -1) : rslots_map_owner(&r->map, slot);
  if (n < 0) {
    *err = xstrfmt("redis %s: no node serves slot %d", r->target, slot);
    r->stale = 1;
  }
  return n;
}

/* A usable connection to node: the open one, or a new one (handshake done). NULL with
 * *err. */
static redisContext *node_ctx(rd_t *r, int node, char **err) {
  *err = NULL;
  if (node >= r->nconns) {
    int n = r->map.nnodes > node + 1 ? r->map.nnodes : node + 1;
    r->conns = xrealloc(r->conns, (size_t)n * sizeof *r->conns);
    r->failed = xrealloc(r->failed, (size_t)n * sizeof *r->failed);
    for (int i = r->nconns; i < n; i++) {
      r->conns[i] = NULL;
      r->failed[i] = 0;
    }
    r->nconns = n;
  }
  redisContext *c = r->conns[node];
  if (c && !c->err) {
    /* Between commands nothing may be readable: data or EOF there means the server
     * closed the connection (restarted, idle timeout). Reconnect before sending, so
     * that a write is not lost on a connection already known dead. */
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    if (poll(&pfd, 1, 0) == 0) return c;
    log_warn("store(redis) %s: connection closed by the server; reconnecting", r->target);
  }
  drop_node(r, node);
  c = SINGLE(r) ? dial(r, r->addr.host, r->addr.port, r->addr.unix_path, err)
                : dial(r, r->map.nodes[node].host, r->map.nodes[node].port, NULL, err);
  if (!c) return NULL;
  if (handshake(r, c, err) != 0) {
    redisFree(c);
    return NULL;
  }
  r->conns[node] = c;
  return c;
}

/* Logs a connection failure once per outage. */
static void note_down(rd_t *r, const char *err) {
  if (!r->down) log_error("store(redis): %s (will retry on the next call)", err);
  r->down = 1;
}

static void note_up(rd_t *r) {
  if (r->down) log_info("store(redis) %s: connected again", r->target);
  r->down = 0;
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Runs one formatted command on the node serving slot, following the slot layer's
 * answers (common/redis_slots.h: MOVED, ASK, TRYAGAIN, CLUSTERDOWN, READONLY, NOSCRIPT,
 * with their bounds). Returns the reply (caller frees; may be an error reply), or NULL on a
 * connection failure (logged). A connection that cannot be made is waited out on a
 * Cluster or with Sentinel (a failover) and fails at once with one server. A command whose
 * connection died after it was sent is sent again only when retry (a read: it may have
 * been applied otherwise), once with one server. */
static redisReply *run_one(rd_t *r, const char *cmd, size_t len, int slot, int retry) {
  rslots_try_t t = {0};
  rslots_redirect_t to;
  unsigned ms = 0;
  int ask = -1, resent = 0;
  for (;;) {
    char *err = NULL;
    int node = ask >= 0 ? ask : route(r, slot, &err);
    int fresh = node >= 0 && (node >= r->nconns || !r->conns[node]);
    redisContext *c = NULL;
    if (node >= 0 && redial_later(r, node))
      err = xstrfmt("redis %s (%s:%d): failed less than %llu ms ago; waiting for a fail-over", r->target,
                    r->map.nodes[node].host, r->map.nodes[node].port, RD_REDIAL_NS / 1000000ull);
    else if (node >= 0)
      c = node_ctx(r, node, &err);
    if (!c) { /* nothing was sent */
      note_down(r, err);
      xfree(err);
      topology_lost(r);
      if (node >= 0 && !redial_later(r, node)) node_failed(r, node);
      if (SINGLE(r) || rslots_next(&t, NULL, &to, &ms) != RSLOTS_WAIT) return NULL;
      sleep_ms(ms);
      continue;
    }
    note_up(r);
    if (ask >= 0) redisAppendCommand(c, "ASKING");
    redisAppendFormattedCommand(c, cmd, len);
    redisReply *rep = NULL;
    int ok = 1;
    uint64_t t0 = uv_hrtime();
    if (ask >= 0) {
      ok = get_reply(c, &rep, &t0) == REDIS_OK && rep;
      if (rep) freeReplyObject(rep);
      rep = NULL;
    }
    ask = -1;
    if (ok) ok = get_reply(c, &rep, &t0) == REDIS_OK && rep;
    if (!ok) {
      log_error("store(redis) %s: %s", r->target, c->errstr);
      drop_node(r, node);
      node_failed(r, node);
      topology_lost(r);
      r->down = 1;
      if (!retry) return NULL;
      if (SINGLE(r)) {
        if (fresh || resent++) return NULL;
        continue;
      }
      if (rslots_next(&t, NULL, &to, &ms) != RSLOTS_WAIT) return NULL;
      sleep_ms(ms);
      continue;
    }
    node_answered(r, node);
    switch (rslots_next(&t, rep, &to, &ms)) {
    case RSLOTS_DONE:
      return rep;
    case RSLOTS_GIVE_UP:
      log_error("store(redis) %s: gave up after retries: %s", r->target, rep->str ? rep->str : "error");
      return rep;
    case RSLOTS_MOVED: {
      int n = rslots_map_node(&r->map, to.host, to.port);
      if (n >= 0) r->map.owner[to.slot] = (int16_t)n;
      r->stale = 1; /* a moved slot seldom moves alone (resharding, failover) */
      break;
    }
    case RSLOTS_ASK:
      ask = rslots_map_node(&r->map, to.host, to.port);
      if (ask < 0) return rep;
      break;
    case RSLOTS_WAIT:
      sleep_ms(ms);
      topology_lost(r);
      break;
    case RSLOTS_PRIMARY:
      drop_node(r, node);
      topology_lost(r);
      break;
    case RSLOTS_NOSCRIPT: {
      char *why = NULL;
      if (load_scripts(r, c, &why) != 0) {
        log_error("store(redis): %s", why);
        xfree(why);
        drop_node(r, node);
      }
      break;
    }
    }
    freeReplyObject(rep);
  }
}

/* Runs one command (see run_one). */
static redisReply *run(rd_t *r, int argc, const char **argv, const size_t *lens, int retry) {
  char *cmd = NULL;
  int n = redisFormatCommandArgv(&cmd, argc, argv, lens);
  if (n < 0 || !cmd) {
    log_error("store(redis): cannot format a command (out of memory)");
    abort();
  }
  int k = rslots_cmd_key(argc, argv, lens);
  redisReply *rep = run_one(r, cmd, (size_t)n, k < 0 ? -1 : rslots_key_slot(argv[k], lens[k]), retry);
  redisFreeCommand(cmd);
  return rep;
}

/* Whether a reply asks for the slot layer (a redirection, a retry, a script load) rather
 * than being the command's answer. */
static int needs_layer(const redisReply *rep) {
  rslots_try_t t = {0};
  rslots_redirect_t to;
  unsigned ms;
  return rslots_next(&t, rep, &to, &ms) != RSLOTS_DONE;
}

/* Sends commands [from, from + n) of p as pipelines, one per node (the replies of one node
 * come back in its commands' order), and puts each reply at its command's index in reps
 * (caller frees; NULL: no reply). A command answered by a redirection, TRYAGAIN,
 * CLUSTERDOWN, NOSCRIPT or READONLY, or not sent because its node could not be reached,
 * is then run alone through run_one, in order. A command whose connection died after it
 * was sent is run again only when retry (reads). */
static void pipe_run(rd_t *r, const pipe_t *p, size_t from, size_t n, int retry, redisReply **reps) {
  int *node = xmalloc((n ? n : 1) * sizeof *node);
  char *sent = xcalloc(n ? n : 1, 1);
  size_t *off = xmalloc((n ? n : 1) * sizeof *off);
  size_t o = 0;
  for (size_t i = 0; i < from; i++) o += p->len[i];
  for (size_t i = 0; i < n; i++) {
    off[i] = o;
    o += p->len[from + i];
    char *err = NULL;
    node[i] = route(r, p->slot[from + i], &err);
    xfree(err);
    reps[i] = NULL;
  }
  /* one pass per node: write its commands, then read its replies */
  char *done = xcalloc(n ? n : 1, 1);
  for (size_t i = 0; i < n; i++) {
    if (done[i] || node[i] < 0) continue;
    int nd = node[i];
    char *err = NULL;
    redisContext *c = redial_later(r, nd) ? NULL : node_ctx(r, nd, &err);
    if (!c && !err) err = xstrfmt("redis %s: node %d failed lately", r->target, nd);
    if (!c) {
      note_down(r, err);
      xfree(err);
      topology_lost(r);
      if (!redial_later(r, nd)) node_failed(r, nd);
      for (size_t k = i; k < n; k++)
        if (node[k] == nd) done[k] = 1;
      continue;
    }
    note_up(r);
    for (size_t k = i; k < n; k++)
      if (node[k] == nd) {
        redisAppendFormattedCommand(c, (const char *)p->q.data + off[k], p->len[from + k]);
        sent[k] = 1;
      }
    int dead = 0;
    uint64_t t0 = uv_hrtime(); /* one round trip per node's pipeline (metrics) */
    for (size_t k = i; k < n; k++) {
      if (node[k] != nd) continue;
      done[k] = 1;
      if (dead) continue;
      if (get_reply(c, &reps[k], &t0) != REDIS_OK || !reps[k]) {
        log_error("store(redis) %s: pipeline: %s", r->target, c->errstr);
        reps[k] = NULL;
        dead = 1;
      }
    }
    if (dead) {
      drop_node(r, nd);
      node_failed(r, nd);
      topology_lost(r);
      r->down = 1;
    }
  }
  /* what the pipelines did not settle, one by one */
  for (size_t i = 0; i < n; i++) {
    if (reps[i] && !needs_layer(reps[i])) continue;
    if (!reps[i] && sent[i] && !retry) continue;
    if (reps[i]) freeReplyObject(reps[i]);
    reps[i] = run_one(r, (const char *)p->q.data + off[i], p->len[from + i], p->slot[from + i], retry);
  }
  xfree(node);
  xfree(sent);
  xfree(off);
  xfree(done);
}

static int reply_error(rd_t *r, const char *what, redisReply *rep);

/* A read whose reply must be an array (retried once on a fresh connection): the reply,
 * or NULL with *rc the error (XMPP_EIO when Redis could not be reached). */
static redisReply *run_array(rd_t *r, int argc, const char **argv, const size_t *lens, int *rc) {
  redisReply *rep = run(r, argc, argv, lens, 1);
  if (!rep) {
    *rc = XMPP_EIO;
    return NULL;
  }
  if (rep->type != REDIS_REPLY_ARRAY) {
    *rc = reply_error(r, argv[0], rep);
    freeReplyObject(rep);
    return NULL;
  }
  return rep;
}

static int reply_error(rd_t *r, const char *what, redisReply *rep) {
  log_error("store(redis) %s: %s: %s", r->target, what, rep->str ? rep->str : "error");
  return XMPP_EIO;
}

/* ---- scripts and the batch queue ---------------------------------------------------- */

#define MAXARGS 24

static void queue_cmd(rd_t *r, int argc, const char **argv, const size_t *lens, rkind_t kind) {
  pipe_add(&r->bq, argc, argv, lens);
  if (r->bq.n > r->qkcap) {
    r->qkcap = r->bq.cap;
    r->qkind = xrealloc(r->qkind, r->qkcap * sizeof *r->qkind);
  }
  r->qkind[r->bq.n - 1] = kind;
}

/* EVALSHA sha nkeys args... into av/al (nk holds the count's text). */
static void evalsha_args(rd_t *r, int id, int nkeys, int argc, const char **argv, const size_t *lens,
                         const char **av, size_t *al, char nk[8]) {
  snprintf(nk, 8, "%d", nkeys);
  av[0] = "EVALSHA";
  al[0] = 7;
  av[1] = r->scripts.sha[id];
  al[1] = 40;
  av[2] = nk;
  al[2] = strlen(nk);
  for (int i = 0; i < argc; i++) {
    av[3 + i] = argv[i];
    al[3 + i] = lens[i];
  }
}

/* Argument arrays for argc arguments: on the stack up to MAXARGS, else allocated
 * (args_free). */
typedef struct {
  const char *sv[MAXARGS];
  size_t sl[MAXARGS];
  const char **v;
  size_t *l;
} args_t;

static void args_init(args_t *a, int argc) {
  a->v = a->sv;
  a->l = a->sl;
  if (argc > MAXARGS) {
    a->v = xmalloc((size_t)argc * sizeof *a->v);
    a->l = xmalloc((size_t)argc * sizeof *a->l);
  }
}

static void args_free(args_t *a) {
  if (a->v != a->sv) xfree(a->v);
  if (a->l != a->sl) xfree(a->l);
}

/* EVALSHA of script id with keys then args (a NOSCRIPT loads the scripts on that node and
 * sends it again: run_one). Returns the reply (may be an error reply) or NULL. */
static redisReply *script(rd_t *r, int id, int nkeys, int argc, const char **argv,
                          const size_t *lens) {
  args_t a;
  args_init(&a, argc + 3);
  char nk[8];
  evalsha_args(r, id, nkeys, argc, argv, lens, a.v, a.l, nk);
  redisReply *rep = run(r, argc + 3, a.v, a.l, 0);
  args_free(&a);
  return rep;
}

static void queue_script(rd_t *r, int id, int nkeys, int argc, const char **argv,
                         const size_t *lens, rkind_t kind) {
  args_t a;
  args_init(&a, argc + 3);
  char nk[8];
  evalsha_args(r, id, nkeys, argc, argv, lens, a.v, a.l, nk);
  queue_cmd(r, argc + 3, a.v, a.l, kind);
  args_free(&a);
}
/* Judges one reply by its kind: 0 or an XMPP_* code. */
static int judge(rd_t *r, const char *what, redisReply *rep, rkind_t kind) {
  if (!rep) return XMPP_EIO;
  if (rep->type == REDIS_REPLY_ERROR) return reply_error(r, what, rep);
  switch (kind) {
  case R_ANY: return 0;
  case R_ONE:
  case R_ROSTER_DEL:
    if (rep->type != REDIS_REPLY_INTEGER) return reply_error(r, what, rep);
    return rep->integer == 1 ? 0 : XMPP_ENOENT;
  case R_CREATE:
    if (rep->type != REDIS_REPLY_INTEGER) return reply_error(r, what, rep);
    return rep->integer == 1 ? 0 : XMPP_EEXIST;
  case R_PUSH:
    if (rep->type != REDIS_REPLY_INTEGER) return reply_error(r, what, rep);
    return rep->integer >= 0 ? 0 : rep->integer == -2 ? XMPP_ELIMIT : XMPP_ENOENT;
  }
  return XMPP_EIO;
}

/* Runs a script now, or queues it inside a batch (then 0: judged at the flush). */
static int exec_script(rd_t *r, const char *what, int id, int nkeys, int argc,
                       const char **argv, const size_t *lens, rkind_t kind) {
  if (r->batch) {
    queue_script(r, id, nkeys, argc, argv, lens, kind);
    return 0;
  }
  redisReply *rep = script(r, id, nkeys, argc, argv, lens);
  int rc = judge(r, what, rep, kind);
  if (rep) freeReplyObject(rep);
  return rc;
}

static int exec_cmd(rd_t *r, const char *what, int argc, const char **argv, const size_t *lens,
                    rkind_t kind) {
  if (r->batch) {
    queue_cmd(r, argc, argv, lens, kind);
    return 0;
  }
  redisReply *rep = run(r, argc, argv, lens, 0);
  int rc = judge(r, what, rep, kind);
  if (rep) freeReplyObject(rep);
  return rc;
}

static int mam_delete(rd_t *r, const char *bare);

static int cmp_jid_field(const void *a, const void *b) {
  return strcmp(*(const char *const *)a + 2, *(const char *const *)b + 2);
}

/* ---- keys --------------------------------------------------------------------------- */

typedef struct {
  char *a, *r, *o, *d; /* account, roster, offline, documents */
  size_t la, lr, lo, ld;
} ukeys_t;

static void ukeys(ukeys_t *k, const char *bare) {
  k->a = xstrfmt("{u:%s}:a", bare);
  k->r = xstrfmt("{u:%s}:r", bare);
  k->o = xstrfmt("{u:%s}:o", bare);
  k->d = xstrfmt("{u:%s}:d", bare);
  k->la = strlen(k->a);
  k->lr = strlen(k->r);
  k->lo = strlen(k->o);
  k->ld = strlen(k->d);
}

static void ukeys_free(ukeys_t *k) {
  xfree(k->a);
  xfree(k->r);
  xfree(k->o);
  xfree(k->d);
}

/* The user's XEP-0191 blocklist set (caller frees). */
static char *bkey(const char *bare, size_t *len) {
  char *k = xstrfmt("{u:%s}:b", bare);
  *len = strlen(k);
  return k;
}

/* ---- open / close ------------------------------------------------------------------- */

static void rd_close(void *be) {
  rd_t *r = be;
  if (!r) return;
  drop_all(r);
  xfree(r->conns);
  xfree(r->failed);
  rslots_map_free(&r->map);
  pipe_free(&r->p);
  pipe_free(&r->bq);
  xfree(r->qkind);
  if (r->bstate) strmap_free(r->bstate, NULL);
  redis_addr_free(&r->addr);
  xfree(r);
}

/* Checks (or, on an empty Redis, writes) the layout version. */
static int check_layout(rd_t *r, char **err) {
  const char *av[] = {"SET", RD_LAYOUT_KEY, "1", "NX"};
  size_t al[] = {3, strlen(RD_LAYOUT_KEY), 1, 2};
  redisReply *rep = run(r, 4, av, al, 1); /* idempotent */
  if (!rep || rep->type == REDIS_REPLY_ERROR) {
    *err = xstrfmt("redis %s: SET %s: %s", r->target, RD_LAYOUT_KEY, rep ? rep->str : "no connection");
    if (rep) freeReplyObject(rep);
    return -1;
  }
  freeReplyObject(rep);
  const char *gv[] = {"GET", RD_LAYOUT_KEY};
  size_t gl[] = {3, strlen(RD_LAYOUT_KEY)};
  rep = run(r, 2, gv, gl, 1);
  if (!rep || rep->type != REDIS_REPLY_STRING) {
    *err = xstrfmt("redis %s: GET %s: %s", r->target, RD_LAYOUT_KEY,
               rep && rep->str ? rep->str : "no connection");
    if (rep) freeReplyObject(rep);
    return -1;
  }
  char *end;
  long v = strtol(rep->str, &end, 10);
  int bad = !rep->len || *end;
  freeReplyObject(rep);
  if (bad) {
    *err = xstrfmt("redis %s: %s is not a number: not an xmppd store?", r->target, RD_LAYOUT_KEY);
    return -1;
  }
  if (v > RD_LAYOUT_VERSION) {
    *err = xstrfmt("redis %s: key layout version %ld is newer than this program's (%d)", r->target,
               v, RD_LAYOUT_VERSION);
    return -1;
  }
  return 0;
}

static void dsets_backfill(rd_t *r);

static void *rd_open(const char *path, char **err) {
  rd_t *r = xcalloc(1, sizeof *r);
  buf_init(&r->p.q);
  buf_init(&r->bq.q);
  rslots_map_init(&r->map);
  if (redis_addr_parse(&r->addr, path, err) != 0) {
    xfree(r);
    return NULL;
  }
  r->target = r->addr.shown;
  rscripts_init(&r->scripts, script_text, S_COUNT);
  /* Reach the node of the layout key now, so that a wrong address fails the open with
   * the reason (a Cluster: its slot map; Sentinel: the primary). */
  int node = route(r, rslots_key_slot(RD_LAYOUT_KEY, strlen(RD_LAYOUT_KEY)), err);
  if (node < 0 || !node_ctx(r, node, err)) goto fail;
  if (check_layout(r, err) != 0) goto fail;
  dsets_backfill(r);
  return r;
fail:
  rd_close(r);
  return NULL;
}

/* ---- batches ------------------------------------------------------------------------ */

static void queue_clear(rd_t *r) {
  pipe_clear(&r->bq);
  if (r->bstate) strmap_free(r->bstate, NULL);
  r->bstate = NULL;
}

static int rd_batch_begin(void *be) {
  rd_t *r = be;
  if (r->batch) return XMPP_EINVAL;
  queue_clear(r);
  r->bstate = strmap_new();
  r->batch = 1;
  return 0;
}

/* Sends the queue in chunks (each split per node: pipe_run), judging every reply. 0 or
 * the first failure. A fresh connection loads the scripts the queued EVALSHAs name (the
 * same SHAs: the SHA-1 of the same text). */
static int flush(rd_t *r) {
  int first = 0;
  redisReply **reps = xcalloc(RD_FLUSH_CHUNK, sizeof *reps);
  for (size_t i = 0; i < r->bq.n;) {
    size_t n = r->bq.n - i < RD_FLUSH_CHUNK ? r->bq.n - i : RD_FLUSH_CHUNK;
    pipe_run(r, &r->bq, i, n, 0, reps);
    for (size_t k = 0; k < n; k++) {
      int rc = judge(r, "batch", reps[k], r->qkind[i + k]);
      if (reps[k]) freeReplyObject(reps[k]);
      if (rc && !first) first = rc;
    }
    i += n;
  }
  xfree(reps);
  return first;
}

static int rd_batch_end(void *be, int commit) {
  rd_t *r = be;
  if (!r->batch) return XMPP_EINVAL;
  r->batch = 0;
  int rc = commit ? flush(r) : 0;
  queue_clear(r);
  /* Keep the buffer from holding a big batch's memory for the handle's life. */
  pipe_free(&r->bq);
  xfree(r->qkind);
  r->qkind = NULL;
  r->qkcap = 0;
  return rc;
}

/* ---- accounts ----------------------------------------------------------------------- */

static const char *const cred_fields[2][4] = {
    {"sha1_salt", "sha1_iter", "sha1_stored", "sha1_server"},
    {"sha256_salt", "sha256_iter", "sha256_stored", "sha256_server"},
};

/* Fills av/al with "field value" pairs for both credentials (16 entries); iters holds
 * the decimal iteration counts (2 x 16 bytes). */
static int cred_args(const store_account_t *a, const char **av, size_t *al, char iters[2][16]) {
  const scram_cred_t *cs[2] = {&a->sha1, &a->sha256};
  scram_hash_t hs[2] = {SCRAM_SHA1, SCRAM_SHA256};
  int n = 0;
  for (int h = 0; h < 2; h++) {
    size_t hl = scram_hash_len(hs[h]);
    snprintf(iters[h], 16, "%" PRIu32, cs[h]->iterations);
    const char *vals[4] = {(const char *)cs[h]->salt, iters[h], (const char *)cs[h]->stored_key,
                           (const char *)cs[h]->server_key};
    size_t lens[4] = {cs[h]->salt_len, strlen(iters[h]), hl, hl};
    for (int f = 0; f < 4; f++) {
      av[n] = cred_fields[h][f];
      al[n] = strlen(cred_fields[h][f]);
      n++;
      av[n] = vals[f];
      al[n] = lens[f];
      n++;
    }
  }
  return n;
}

/* Whether the account exists, seen from inside a batch: the batch's own creates and
 * deletes first, then Redis. 1, 0 or XMPP_EIO. */
static int exists_now(rd_t *r, const char *bare) {
  if (r->batch && r->bstate) {
    void *st = strmap_get(r->bstate, bare);
    if (st == B_CREATED) return 1;
    if (st == B_DELETED) return 0;
  }
  ukeys_t k;
  ukeys(&k, bare);
  const char *av[] = {"EXISTS", k.a};
  size_t al[] = {6, k.la};
  redisReply *rep = run(r, 2, av, al, 1);
  ukeys_free(&k);
  if (!rep) return XMPP_EIO;
  int rc = rep->type == REDIS_REPLY_INTEGER ? (rep->integer > 0) : reply_error(r, "EXISTS", rep);
  freeReplyObject(rep);
  return rc;
}

static int rd_account_exists(void *be, const char *bare) { return exists_now(be, bare); }

static int read_cred(rd_t *r, redisReply **el, scram_hash_t h, scram_cred_t *c) {
  size_t hl = scram_hash_len(h);
  for (int i = 0; i < 4; i++)
    if (el[i]->type != REDIS_REPLY_STRING) goto corrupt;
  char it[16];
  if (el[1]->len == 0 || el[1]->len >= sizeof it) goto corrupt;
  memcpy(it, el[1]->str, el[1]->len);
  it[el[1]->len] = '\0';
  char *end;
  errno = 0;
  unsigned long long iter = strtoull(it, &end, 10);
  if (errno || *end || iter == 0 || iter > UINT32_MAX) goto corrupt;
  if (el[0]->len == 0 || el[0]->len > SCRAM_MAX_SALT || (size_t)el[2]->len != hl ||
      (size_t)el[3]->len != hl)
    goto corrupt;
  memcpy(c->salt, el[0]->str, el[0]->len);
  c->salt_len = el[0]->len;
  c->iterations = (uint32_t)iter;
  memcpy(c->stored_key, el[2]->str, hl);
  memcpy(c->server_key, el[3]->str, hl);
  return 0;
corrupt:
  log_error("store(redis) %s: corrupt %s credentials", r->target, scram_mech_name(h));
  return XMPP_EIO;
}

/* One account's HMGET reply into *out: 0, XMPP_ENOENT, or XMPP_EIO (malformed). */
static int parse_account(rd_t *r, const redisReply *rep, store_account_t *out) {
  memset(out, 0, sizeof *out);
  if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 8) return reply_error(r, "HMGET", (redisReply *)rep);
  int nils = 0;
  for (size_t i = 0; i < 8; i++) nils += rep->element[i]->type == REDIS_REPLY_NIL;
  if (nils == 8) return XMPP_ENOENT;
  int rc = read_cred(r, rep->element, SCRAM_SHA1, &out->sha1);
  if (!rc) rc = read_cred(r, rep->element + 4, SCRAM_SHA256, &out->sha256);
  if (rc) memset(out, 0, sizeof *out);
  return rc;
}

/* Read-only commands in ONE pipeline: append(r, i, ud) adds command i to r->p for i in
 * 0..n-1; all are written together (one pipeline per node on a Cluster) and the n replies
 * put into reps in order (the caller frees them), so a batch costs one round trip per
 * node. On a dead connection the commands are sent again on a fresh one (reads). 0, or
 * XMPP_EIO with reps all NULL. */
static int read_pipeline(rd_t *r, size_t n, void (*append)(rd_t *r, size_t i, void *ud), void *ud,
                         redisReply **reps) {
  pipe_clear(&r->p);
  for (size_t i = 0; i < n; i++) append(r, i, ud);
  pipe_run(r, &r->p, 0, n, 1, reps);
  int rc = 0;
  for (size_t i = 0; i < n; i++)
    if (!reps[i]) rc = XMPP_EIO;
  if (rc)
    for (size_t i = 0; i < n; i++) {
      if (reps[i]) freeReplyObject(reps[i]);
      reps[i] = NULL;
    }
  if (r->p.cap > 4096) pipe_free(&r->p);
  return rc;
}

static void append_hmget_account(rd_t *r, size_t i, void *ud) {
  const char *const *bares = ud;
  ukeys_t k;
  ukeys(&k, bares[i]);
  const char *av[10] = {"HMGET", k.a};
  size_t al[10] = {5, k.la};
  for (int h = 0; h < 2; h++)
    for (int f = 0; f < 4; f++) {
      av[2 + h * 4 + f] = cred_fields[h][f];
      al[2 + h * 4 + f] = strlen(cred_fields[h][f]);
    }
  pipe_add(&r->p, 10, av, al);
  ukeys_free(&k);
}

/* n HMGETs in one pipeline: a batch of log-ins costs one round trip. */
static int rd_account_get_many(void *be, const char *const *bares, size_t n, store_account_t *out, int *rcs) {
  rd_t *r = be;
  redisReply **reps = xcalloc(n, sizeof *reps);
  int rc = read_pipeline(r, n, append_hmget_account, (void *)bares, reps);
  for (size_t i = 0; i < n; i++) {
    if (rc) {
      memset(&out[i], 0, sizeof out[i]);
      rcs[i] = XMPP_EIO;
      continue;
    }
    rcs[i] = parse_account(r, reps[i], &out[i]);
    freeReplyObject(reps[i]);
  }
  xfree(reps);
  return 0;
}

static int rd_account_get(void *be, const char *bare, store_account_t *out) {
  int rc;
  rd_account_get_many(be, &bare, 1, out, &rc);
  return rc;
}

/* The account index (its own slot: separate commands, see the top of the file). */
static int index_add(rd_t *r, const char *bare) {
  const char *av[] = {"ZADD", RD_INDEX_KEY, "0", bare};
  size_t al[] = {4, strlen(RD_INDEX_KEY), 1, strlen(bare)};
  return exec_cmd(r, "ZADD", 4, av, al, R_ANY);
}

static int index_rem(rd_t *r, const char *bare) {
  const char *av[] = {"ZREM", RD_INDEX_KEY, bare};
  size_t al[] = {4, strlen(RD_INDEX_KEY), strlen(bare)};
  return exec_cmd(r, "ZREM", 3, av, al, R_ANY);
}

/* In a batch the scripts' own account checks run only at the end: a write that needs the
 * account checks it now (0, XMPP_ENOENT, or the error of the look-up). */
static int batch_needs_account(rd_t *r, const char *bare) {
  int ex = exists_now(r, bare);
  return ex < 0 ? ex : ex ? 0 : XMPP_ENOENT;
}

/* The domain's account set (see the top of the file). */
static char *dset_key(const char *bare, size_t *len) {
  const char *at = strchr(bare, '@');
  char *k = xstrfmt("{d:%s}:n", at ? at + 1 : bare);
  *len = strlen(k);
  return k;
}

/* SADD (add) or SREM of bare in its domain's set: the command's integer (1 changed,
 * 0 not), or a negative XMPP_* code. */
static int dset_op(rd_t *r, const char *bare, int add) {
  size_t kl;
  char *k = dset_key(bare, &kl);
  const char *av[] = {add ? "SADD" : "SREM", k, bare};
  size_t al[] = {4, kl, strlen(bare)};
  int rc;
  if (r->batch) {
    rc = exec_cmd(r, av[0], 3, av, al, R_ANY);
  } else {
    redisReply *rep = run(r, 3, av, al, 0);
    rc = !rep ? XMPP_EIO : rep->type == REDIS_REPLY_INTEGER ? (int)rep->integer : reply_error(r, av[0], rep);
    if (rep) freeReplyObject(rep);
  }
  xfree(k);
  return rc;
}

static int rd_account_create(void *be, const char *bare, const store_account_t *a) {
  rd_t *r = be;
  if (strchr(bare, '@')) {
    int drc = dset_op(r, bare, 1); /* a superset, like the index */
    if (drc < 0) return drc;
  }
  if (r->batch) {
    int ex = exists_now(r, bare);
    if (ex < 0) return ex;
    if (ex) return XMPP_EEXIST;
  }
  /* The index first: it must never miss an account (list skips the extras). */
  int rc = index_add(r, bare);
  if (rc) return rc;
  ukeys_t k;
  ukeys(&k, bare);
  const char *av[MAXARGS];
  size_t al[MAXARGS];
  char iters[2][16], created[24];
  av[0] = k.a;
  al[0] = k.la;
  int n = 1 + cred_args(a, av + 1, al + 1, iters);
  snprintf(created, sizeof created, "%lld", (long long)time(NULL));
  av[n] = "created";
  al[n++] = 7;
  av[n] = created;
  al[n++] = strlen(created);
  rc = exec_script(r, "account create", S_CREATE, 1, n, av, al, R_CREATE);
  ukeys_free(&k);
  if (!rc && r->batch) strmap_put(r->bstate, bare, B_CREATED);
  return rc;
}

static int rd_account_update(void *be, const char *bare, const store_account_t *a) {
  rd_t *r = be;
  if (r->batch) {
    int rc = batch_needs_account(r, bare);
    if (rc) return rc;
  }
  ukeys_t k;
  ukeys(&k, bare);
  const char *av[MAXARGS];
  size_t al[MAXARGS];
  char iters[2][16];
  av[0] = k.a;
  al[0] = k.la;
  int n = 1 + cred_args(a, av + 1, al + 1, iters);
  int rc = exec_script(r, "account update", S_UPDATE, 1, n, av, al, R_ONE);
  ukeys_free(&k);
  return rc;
}

static int rd_account_delete(void *be, const char *bare) {
  rd_t *r = be;
  if (r->batch) {
    int rc = batch_needs_account(r, bare);
    if (rc) return rc;
  }
  ukeys_t k;
  ukeys(&k, bare);
  size_t lb;
  char *b = bkey(bare, &lb);
  const char *av[] = {k.a, k.r, k.o, k.d, b};
  size_t al[] = {k.la, k.lr, k.lo, k.ld, lb};
  int rc = exec_script(r, "account delete", S_DELETE, 5, 5, av, al, R_ONE);
  ukeys_free(&k);
  xfree(b);
  /* The index after the account: a crash in between leaves an extra member, skipped by
   * list. Removed even when the account was absent (clears such a leftover). */
  if (rc == 0 || rc == XMPP_ENOENT) {
    int irc = index_rem(r, bare);
    if (!rc) rc = irc;
    if (strchr(bare, '@')) {
      irc = dset_op(r, bare, 0);
      if (!rc && irc < 0) rc = irc;
    }
  }
  if (!rc) rc = mam_delete(r, bare);
  if (!rc) {
    char *f = xstrfmt("{u:%s}:f", bare);
    const char *dv[] = {"DEL", f};
    size_t dl[] = {3, strlen(f)};
    rc = exec_cmd(r, "fast delete", 2, dv, dl, R_ANY);
    xfree(f);
  }
  if (!rc && r->batch) strmap_put(r->bstate, bare, B_DELETED);
  return rc;
}

static int rd_account_list(void *be, store_account_cb cb, void *ud) {
  rd_t *r = be;
  char *start = xstrdup("-");
  int rc = 0;
  for (;;) {
    char cnt[16];
    snprintf(cnt, sizeof cnt, "%d", RD_LIST_PAGE);
    const char *av[] = {"ZRANGEBYLEX", RD_INDEX_KEY, start, "+", "LIMIT", "0", cnt};
    size_t al[] = {11, strlen(RD_INDEX_KEY), strlen(start), 1, 5, 1, strlen(cnt)};
    redisReply *page = run_array(r, 7, av, al, &rc);
    if (!page) break;
    size_t n = page->elements;
    /* Which members still have an account (pipelined EXISTS, one per member: one
     * pipeline per node on a Cluster). */
    char *alive = xcalloc(n ? n : 1, 1);
    size_t *at = xmalloc((n ? n : 1) * sizeof *at);
    size_t asked = 0;
    pipe_clear(&r->p);
    for (size_t i = 0; i < n; i++) {
      redisReply *m = page->element[i];
      if (m->type != REDIS_REPLY_STRING) continue;
      char *key = xstrfmt("{u:%.*s}:a", (int)m->len, m->str);
      const char *ev[] = {"EXISTS", key};
      size_t el[] = {6, strlen(key)};
      pipe_add(&r->p, 2, ev, el);
      xfree(key);
      at[asked++] = i;
    }
    redisReply **es = xcalloc(asked ? asked : 1, sizeof *es);
    pipe_run(r, &r->p, 0, asked, 1, es);
    for (size_t k = 0; k < asked; k++) {
      if (!es[k]) rc = XMPP_EIO;
      else alive[at[k]] = es[k]->type == REDIS_REPLY_INTEGER && es[k]->integer > 0;
      if (es[k]) freeReplyObject(es[k]);
    }
    xfree(es);
    xfree(at);
    if (!rc)
      for (size_t i = 0; i < n; i++)
        if (alive[i] == 1) cb(page->element[i]->str, ud);
    xfree(alive);
    if (!rc && n == RD_LIST_PAGE) {
      redisReply *last = page->element[n - 1];
      xfree(start);
      start = xmalloc(last->len + 2);
      start[0] = '(';
      memcpy(start + 1, last->str, last->len);
      start[last->len + 1] = '\0';
    }
    freeReplyObject(page);
    if (rc || n < RD_LIST_PAGE) break;
  }
  xfree(start);
  return rc;
}

/* ---- roster ------------------------------------------------------------------------- */

/* Item value: u8 version | u8 flags (sub in bits 0-1, ask_out 2, pending_in 3, has name
 * 4, approved 5: RFC 6121 §3.4; older items have it 0) | [u32 name length, name] | u32 group count | (u32 length, group)... (big-endian).
 * Lengths, not separators: a name or group may hold any byte. */
static void put_u32(buf_t *b, uint32_t v) {
  uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  buf_append(b, x, 4);
}

static void encode_item(buf_t *b, const store_roster_item_t *it) {
  uint8_t hdr[2] = {RD_ITEM_VERSION, (uint8_t)((it->sub & 3) | (it->ask_out ? 4 : 0) |
                                               (it->pending_in ? 8 : 0) | (it->name ? 16 : 0) |
                                               (it->approved ? 32 : 0))};
  buf_append(b, hdr, 2);
  if (it->name) {
    size_t n = strlen(it->name);
    put_u32(b, (uint32_t)n);
    buf_append(b, it->name, n);
  }
  put_u32(b, (uint32_t)it->ngroups);
  for (size_t i = 0; i < it->ngroups; i++) {
    size_t n = strlen(it->groups[i]);
    put_u32(b, (uint32_t)n);
    buf_append(b, it->groups[i], n);
  }
}

static int get_u32(const uint8_t **p, const uint8_t *end, uint32_t *v) {
  if (end - *p < 4) return -1;
  *v = (uint32_t)(*p)[0] << 24 | (uint32_t)(*p)[1] << 16 | (uint32_t)(*p)[2] << 8 | (*p)[3];
  *p += 4;
  return 0;
}

/* Copies a length-prefixed string out as a NUL-terminated one. */
static char *get_str(const uint8_t **p, const uint8_t *end) {
  uint32_t n;
  if (get_u32(p, end, &n) != 0 || (size_t)(end - *p) < n) return NULL;
  char *s = xstrndup((const char *)*p, n);
  *p += n;
  return s;
}

typedef struct {
  char *contact, *name;
  int flags;
  char **groups;
  size_t ngroups;
} ditem_t;

static void ditem_free(ditem_t *d) {
  xfree(d->contact);
  xfree(d->name);
  for (size_t i = 0; i < d->ngroups; i++) xfree(d->groups[i]);
  xfree(d->groups);
}

static int decode_item(const char *contact, size_t clen, const char *v, size_t vlen, ditem_t *d) {
  memset(d, 0, sizeof *d);
  const uint8_t *p = (const uint8_t *)v, *end = p + vlen;
  if (vlen < 6 || p[0] != RD_ITEM_VERSION) return -1;
  d->flags = p[1];
  p += 2;
  d->contact = xstrndup(contact, clen);
  if (d->flags & 16) {
    if (!(d->name = get_str(&p, end))) return -1;
  }
  uint32_t ng;
  if (get_u32(&p, end, &ng) != 0 || ng > (size_t)(end - p) / 4) return -1;
  d->groups = xcalloc(ng ? ng : 1, sizeof *d->groups);
  for (uint32_t i = 0; i < ng; i++) {
    if (!(d->groups[i] = get_str(&p, end))) return -1;
    d->ngroups++;
  }
  return p == end ? 0 : -1;
}

static int cmp_item(const void *a, const void *b) {
  return strcmp(((const ditem_t *)a)->contact, ((const ditem_t *)b)->contact);
}

/* One roster's HGETALL reply: cb for each item, sorted by contact like the SQLite
 * back-end (a hash has no order). 0 or XMPP_EIO (corrupt: no callback at all). */
static int roster_from_reply(rd_t *r, const char *bare, const redisReply *rep, store_roster_cb cb, void *ud) {
  if (rep->type != REDIS_REPLY_ARRAY || rep->elements % 2) return reply_error(r, "HGETALL", (redisReply *)rep);
  size_t n = rep->elements / 2;
  ditem_t *items = xcalloc(n ? n : 1, sizeof *items);
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    redisReply *f = rep->element[2 * i], *v = rep->element[2 * i + 1];
    if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
        decode_item(f->str, f->len, v->str, v->len, &items[i]) != 0) {
      log_error("store(redis) %s: corrupt roster item of %s", r->target, bare);
      rc = XMPP_EIO;
    }
  }
  if (!rc) {
    qsort(items, n, sizeof *items, cmp_item);
    for (size_t i = 0; i < n; i++) {
      store_roster_item_t it = {
          .jid = items[i].contact,
          .name = items[i].name,
          .sub = (roster_sub_t)(items[i].flags & 3),
          .ask_out = (items[i].flags & 4) != 0,
          .pending_in = (items[i].flags & 8) != 0,
          .approved = (items[i].flags & 32) != 0,
          .groups = (const char *const *)items[i].groups,
          .ngroups = items[i].ngroups,
      };
      cb(&it, ud);
    }
  }
  for (size_t i = 0; i < n; i++) ditem_free(&items[i]);
  xfree(items);
  return rc;
}

static void append_hgetall_roster(rd_t *r, size_t i, void *ud) {
  const char *const *bares = ud;
  ukeys_t k;
  ukeys(&k, bares[i]);
  const char *av[] = {"HGETALL", k.r};
  size_t al[] = {7, k.lr};
  pipe_add(&r->p, 2, av, al);
  ukeys_free(&k);
}

/* n HGETALLs in one pipeline. */
static int rd_roster_load_many(void *be, const char *const *bares, size_t n, store_roster_many_cb cb, void *ud,
                               int *rcs) {
  rd_t *r = be;
  redisReply **reps = xcalloc(n, sizeof *reps);
  int rc = read_pipeline(r, n, append_hgetall_roster, (void *)bares, reps);
  for (size_t i = 0; i < n; i++) {
    if (rc) {
      rcs[i] = XMPP_EIO;
      continue;
    }
    roster_many_t m = {cb, i, ud};
    rcs[i] = roster_from_reply(r, bares[i], reps[i], store_roster_many_item, &m);
    freeReplyObject(reps[i]);
  }
  xfree(reps);
  return 0;
}

typedef struct one_roster {
  store_roster_cb cb;
  void *ud;
} one_roster_t;

static void one_roster_item(size_t i, const store_roster_item_t *it, void *ud) {
  (void)i;
  one_roster_t *o = ud;
  o->cb(it, o->ud);
}

static int rd_roster_load(void *be, const char *bare, store_roster_cb cb, void *ud) {
  one_roster_t o = {cb, ud};
  int rc;
  rd_roster_load_many(be, &bare, 1, one_roster_item, &o, &rc);
  return rc;
}

/* One item: HGET of one field, whatever the roster's size. */
static int rd_roster_get(void *be, const char *bare, const char *contact, store_roster_cb cb, void *ud) {
  rd_t *r = be;
  ukeys_t k;
  ukeys(&k, bare);
  const char *av[] = {"HGET", k.r, contact};
  size_t al[] = {4, k.lr, strlen(contact)};
  redisReply *rep = run(r, 3, av, al, 1);
  ukeys_free(&k);
  if (!rep) return XMPP_EIO;
  int rc = 0;
  ditem_t d;
  memset(&d, 0, sizeof d);
  if (rep->type == REDIS_REPLY_NIL) {
    rc = XMPP_ENOENT;
  } else if (rep->type != REDIS_REPLY_STRING) {
    rc = reply_error(r, "HGET", rep);
  } else if (decode_item(contact, strlen(contact), rep->str, rep->len, &d) != 0) {
    log_error("store(redis) %s: corrupt roster item of %s", r->target, bare);
    rc = XMPP_EIO;
  }
  freeReplyObject(rep);
  if (!rc) {
    store_roster_item_t it = {
        .jid = d.contact,
        .name = d.name,
        .sub = (roster_sub_t)(d.flags & 3),
        .ask_out = (d.flags & 4) != 0,
        .pending_in = (d.flags & 8) != 0,
        .approved = (d.flags & 32) != 0,
        .groups = (const char *const *)d.groups,
        .ngroups = d.ngroups,
    };
    cb(&it, ud);
  }
  ditem_free(&d);
  return rc;
}

static int rd_roster_count(void *be, const char *bare) {
  rd_t *r = be;
  ukeys_t k;
  ukeys(&k, bare);
  const char *av[] = {"HLEN", k.r};
  size_t al[] = {4, k.lr};
  redisReply *rep = run(r, 2, av, al, 1);
  ukeys_free(&k);
  if (!rep) return XMPP_EIO;
  int rc = rep->type == REDIS_REPLY_INTEGER ? (rep->integer > INT_MAX ? INT_MAX : (int)rep->integer)
                                            : reply_error(r, "HLEN", rep);
  freeReplyObject(rep);
  return rc;
}

static int rd_roster_put(void *be, const char *bare, const store_roster_item_t *item) {
  rd_t *r = be;
  if (r->batch) {
    int rc = batch_needs_account(r, bare);
    if (rc) return rc;
  }
  buf_t v;
  buf_init(&v);
  encode_item(&v, item);
  ukeys_t k;
  ukeys(&k, bare);
  const char *av[] = {k.a, k.r, item->jid, (const char *)v.data};
  size_t al[] = {k.la, k.lr, strlen(item->jid), v.len};
  int rc = exec_script(r, "roster put", S_ROSTER_PUT, 2, 4, av, al, R_ONE);
  ukeys_free(&k);
  buf_free(&v);
  return rc;
}

static int rd_roster_delete(void *be, const char *bare, const char *contact) {
  rd_t *r = be;
  ukeys_t k;
  ukeys(&k, bare);
  const char *av[] = {k.a, k.r, contact};
  size_t al[] = {k.la, k.lr, strlen(contact)};
  int rc = exec_script(r, "roster delete", S_ROSTER_DEL, 2, 3, av, al, R_ROSTER_DEL);
  ukeys_free(&k);
  return rc;
}

/* ---- offline ------------------------------------------------------------------------ */

static int rd_offline_push(void *be, const char *bare, const char *xml, size_t len, unsigned max, size_t max_bytes) {
  rd_t *r = be;
  ukeys_t k;
  ukeys(&k, bare);
  char m[16], stamp[24], mb[24];
  snprintf(m, sizeof m, "%u", max);
  snprintf(stamp, sizeof stamp, "%lld", (long long)time(NULL));
  snprintf(mb, sizeof mb, "%zu", max_bytes);
  const char *av[] = {k.a, k.o, m, stamp, xml, mb};
  size_t al[] = {k.la, k.lo, strlen(m), strlen(stamp), len, strlen(mb)};
  int rc = exec_script(r, "offline push", S_OFF_PUSH, 2, 6, av, al, R_PUSH);
  ukeys_free(&k);
  return rc;
}

/* Parses "ID STAMP BYTES". 0, or -1 when the entry is not one. */
static int parse_entry(const char *s, size_t n, int64_t *id, int64_t *stamp, size_t *off) {
  int64_t v[2] = {0, 0};
  size_t i = 0;
  for (int f = 0; f < 2; f++) {
    size_t st = i;
    int neg = 0;
    if (f == 1 && i < n && s[i] == '-') {
      neg = 1;
      i++;
    }
    while (i < n && s[i] >= '0' && s[i] <= '9' && i - st < 18) v[f] = v[f] * 10 + (s[i++] - '0');
    if (i == st + (size_t)neg || i >= n || s[i] != ' ') return -1;
    if (neg) v[f] = -v[f];
    i++;
  }
  *id = v[0];
  *stamp = v[1];
  *off = i;
  return 0;
}

static int rd_offline_peek(void *be, const char *bare, int64_t after, unsigned max_count, size_t max_bytes,
                           store_offline_cb cb, void *ud) {
  rd_t *r = be;
  ukeys_t k;
  ukeys(&k, bare);
  /* the list is in id order: entries <= after (not removed yet) are at its head */
  int given = 0, rc = 0;
  size_t bytes = 0, start = 0;
  while ((unsigned)given < max_count && !(max_bytes && bytes >= max_bytes)) {
    size_t want = max_count - (unsigned)given;
    char from[24], to[24];
    snprintf(from, sizeof from, "%zu", start);
    snprintf(to, sizeof to, "%zu", start + want - 1);
    const char *av[] = {"LRANGE", k.o, from, to};
    size_t al[] = {6, k.lo, strlen(from), strlen(to)};
    redisReply *rep = run_array(r, 4, av, al, &rc);
    if (!rep) break;
    size_t got = rep->elements;
    for (size_t i = 0; i < got && !(max_bytes && bytes >= max_bytes); i++) {
      redisReply *e = rep->element[i];
      int64_t id, stamp;
      size_t off;
      if (e->type != REDIS_REPLY_STRING || parse_entry(e->str, e->len, &id, &stamp, &off) != 0) {
        log_error("store(redis) %s: corrupt offline entry of %s skipped", r->target, bare);
        continue;
      }
      if (id <= after) continue;
      /* hiredis NUL-terminates string replies: xml[len] == '\0' as the interface says. */
      cb(id, e->str + off, e->len - off, stamp, ud);
      bytes += e->len - off;
      given++;
    }
    freeReplyObject(rep);
    if (got < want) break; /* the end of the list */
    start += got;
  }
  ukeys_free(&k);
  return rc ? rc : given;
}

static int rd_offline_remove(void *be, const char *bare, int64_t upto) {
  rd_t *r = be;
  ukeys_t k;
  ukeys(&k, bare);
  char l[24];
  snprintf(l, sizeof l, "%lld", (long long)upto);
  const char *tv[] = {k.o, k.a, l};
  size_t tl[] = {k.lo, k.la, strlen(l)};
  redisReply *t = script(r, S_OFF_TRIM, 2, 3, tv, tl);
  int rc = judge(r, "offline trim", t, R_ANY);
  if (t) freeReplyObject(t);
  ukeys_free(&k);
  return rc;
}

static int llen_reply(rd_t *r, const redisReply *rep) {
  return rep->type == REDIS_REPLY_INTEGER ? (rep->integer > INT_MAX ? INT_MAX : (int)rep->integer)
                                          : reply_error(r, "LLEN", (redisReply *)rep);
}

static void append_llen_offline(rd_t *r, size_t i, void *ud) {
  const char *const *bares = ud;
  ukeys_t k;
  ukeys(&k, bares[i]);
  const char *av[] = {"LLEN", k.o};
  size_t al[] = {4, k.lo};
  pipe_add(&r->p, 2, av, al);
  ukeys_free(&k);
}

/* n LLENs in one pipeline. */
static int rd_offline_count_many(void *be, const char *const *bares, size_t n, int *counts) {
  rd_t *r = be;
  redisReply **reps = xcalloc(n, sizeof *reps);
  int rc = read_pipeline(r, n, append_llen_offline, (void *)bares, reps);
  for (size_t i = 0; i < n; i++) {
    counts[i] = rc ? XMPP_EIO : llen_reply(r, reps[i]);
    if (reps[i]) freeReplyObject(reps[i]);
  }
  xfree(reps);
  return 0;
}

static int rd_offline_count(void *be, const char *bare) {
  int count;
  rd_offline_count_many(be, &bare, 1, &count);
  return count;
}

/* ---- documents ---------------------------------------------------------------------- */

/* The field of a document in {u:JID}:d: "KIND\0KEY" (kind holds no NUL). */
static char *doc_field(const char *kind, const char *key, size_t *len) {
  size_t lk = strlen(kind), ly = strlen(key);
  char *f = xmalloc(lk + 1 + ly + 1);
  memcpy(f, kind, lk + 1);
  memcpy(f + lk + 1, key, ly + 1);
  *len = lk + 1 + ly;
  return f;
}

static int rd_doc_get(void *be, const char *bare, const char *kind, const char *key, char **data, size_t *len) {
  rd_t *r = be;
  ukeys_t k;
  ukeys(&k, bare);
  size_t fl;
  char *f = doc_field(kind, key, &fl);
  const char *av[] = {"HGET", k.d, f};
  size_t al[] = {4, k.ld, fl};
  redisReply *rep = run(r, 3, av, al, 1);
  ukeys_free(&k);
  xfree(f);
  if (!rep) return XMPP_EIO;
  int rc = 0;
  if (rep->type == REDIS_REPLY_NIL) {
    rc = XMPP_ENOENT;
  } else if (rep->type != REDIS_REPLY_STRING) {
    rc = reply_error(r, "HGET", rep);
  } else {
    char *out = xmalloc(rep->len + 1);
    memcpy(out, rep->str, rep->len);
    out[rep->len] = '\0';
    *data = out;
    *len = rep->len;
  }
  freeReplyObject(rep);
  return rc;
}

static int rd_doc_put(void *be, const char *bare, const char *kind, const char *key, const void *data, size_t len,
                      size_t max_total) {
  rd_t *r = be;
  if (r->batch) {
    int rc = batch_needs_account(r, bare);
    if (rc) return rc;
  }
  ukeys_t k;
  ukeys(&k, bare);
  size_t fl;
  char *f = doc_field(kind, key, &fl);
  char mt[24];
  snprintf(mt, sizeof mt, "%zu", max_total);
  const char *av[] = {k.a, k.d, f, data, mt};
  size_t al[] = {k.la, k.ld, fl, len, strlen(mt)};
  int rc = exec_script(r, "doc put", S_DOC_PUT, 2, 5, av, al, R_PUSH);
  ukeys_free(&k);
  xfree(f);
  return rc;
}

static int rd_doc_delete(void *be, const char *bare, const char *kind, const char *key) {
  rd_t *r = be;
  ukeys_t k;
  ukeys(&k, bare);
  size_t fl;
  char *f = doc_field(kind, key, &fl);
  const char *av[] = {k.a, k.d, f};
  size_t al[] = {k.la, k.ld, fl};
  int rc = exec_script(r, "doc delete", S_DOC_DEL, 2, 3, av, al, R_ONE);
  ukeys_free(&k);
  xfree(f);
  return rc;
}

static int64_t rd_doc_bytes(void *be, const char *bare) {
  rd_t *r = be;
  ukeys_t k;
  ukeys(&k, bare);
  const char *av[] = {"HGET", k.a, "doc_bytes"};
  size_t al[] = {4, k.la, 9};
  redisReply *rep = run(r, 3, av, al, 1);
  ukeys_free(&k);
  if (!rep) return XMPP_EIO;
  int64_t v = 0;
  if (rep->type == REDIS_REPLY_STRING) v = strtoll(rep->str, NULL, 10);
  else if (rep->type != REDIS_REPLY_NIL) v = reply_error(r, "HGET", rep);
  freeReplyObject(rep);
  return v;
}

/* ---- XEP-0313 archive ------------------------------------------------------------------ */

/* {u:JID}:m stream (the messages), :mw sorted set (the per-contact index), :mp hash
 * (preferences): S_MAM_APPEND says how they are kept. */
typedef struct {
  char *m, *mw, *mp;
} mkeys_t;

/* "{u:" bare "}" suffix, whatever its length (xstrfmt stops at 1 KiB). */
static char *ukey(const char *bare, const char *suffix) {
  size_t b = strlen(bare), x = strlen(suffix);
  char *k = xmalloc(b + x + 5);
  memcpy(k, "{u:", 3);
  memcpy(k + 3, bare, b);
  k[3 + b] = '}';
  memcpy(k + 4 + b, suffix, x + 1);
  return k;
}

static void mkeys(mkeys_t *k, const char *bare) {
  k->m = ukey(bare, ":m");
  k->mw = ukey(bare, ":mw");
  k->mp = ukey(bare, ":mp");
}

static void mkeys_free(mkeys_t *k) {
  xfree(k->m);
  xfree(k->mw);
  xfree(k->mp);
}

/* Stream id of an archive id: ms-(us % 1000). */
static void mam_sid(int64_t id, char out[48]) {
  snprintf(out, 48, "%lld-%lld", (long long)(id / 1000), (long long)(id % 1000));
}

/* Archive id of a stream id, or -1. */
static int64_t mam_id_of(const char *s, size_t n) {
  int64_t ms = 0, sq = 0;
  size_t i = 0;
  while (i < n && s[i] >= '0' && s[i] <= '9' && i < 18) ms = ms * 10 + (s[i++] - '0');
  if (!i || i >= n || s[i] != '-') return -1;
  size_t st = ++i;
  while (i < n && s[i] >= '0' && s[i] <= '9' && i - st < 4) sq = sq * 10 + (s[i++] - '0');
  if (i == st || i != n || sq > 999) return -1;
  return ms * 1000 + sq;
}

typedef struct {
  const store_mam_msg_t *msgs;
  const store_mam_limits_t *lim;
  mkeys_t *mk;
  ukeys_t *uk;
} mam_app_t;

/* The script's arguments for message i (keys, then ARGV), into av/al; num holds the
 * numbers' text. */
static void mam_append_args(const mam_app_t *x, size_t i, const char **av, size_t *al, char num[3][24]) {
  static const char replay[2][2] = {"0", "1"};
  const store_mam_msg_t *m = &x->msgs[i];
  snprintf(num[0], 24, "%lld", (long long)m->id);
  snprintf(num[1], 24, "%u", x->lim->max_messages);
  snprintf(num[2], 24, "%lld", (long long)x->lim->min_id);
  const char *v[] = {x->uk[i].a, x->mk[i].m, x->mk[i].mw, num[0], m->with, m->with_full ? m->with_full : "",
                     m->data, num[1], num[2], replay[x->lim->replay ? 1 : 0]};
  size_t l[] = {x->uk[i].la, strlen(x->mk[i].m), strlen(x->mk[i].mw), strlen(num[0]), strlen(m->with),
                m->with_full ? strlen(m->with_full) : 0, m->len, strlen(num[1]), strlen(num[2]), 1};
  for (int k = 0; k < 10; k++) {
    av[k] = v[k];
    al[k] = l[k];
  }
}

/* An error reply that says "later": loading its data set, a script running too long, a
 * failover under way. */
static int transient_reply(const redisReply *rep) {
  static const char *const pre[] = {"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"};
  for (size_t i = 0; i < sizeof pre / sizeof *pre; i++)
    if (rep->str && !strncmp(rep->str, pre[i], strlen(pre[i]))) return 1;
  return 0;
}

static int rd_mam_append(void *be, const store_mam_msg_t *msgs, size_t n, const store_mam_limits_t *lim) {
  rd_t *r = be;
  mkeys_t *mk = xcalloc(n, sizeof *mk);
  ukeys_t *uk = xcalloc(n, sizeof *uk);
  for (size_t i = 0; i < n; i++) {
    mkeys(&mk[i], msgs[i].owner);
    ukeys(&uk[i], msgs[i].owner);
  }
  mam_app_t x = {msgs, lim, mk, uk};
  int rc = 0;
  if (r->batch) {
    for (size_t i = 0; i < n; i++) {
      const char *av[10];
      size_t al[10];
      char num[3][24];
      mam_append_args(&x, i, av, al, num);
      queue_script(r, S_MAM_APPEND, 3, 10, av, al, R_ANY);
    }
  } else {
    /* one pipeline (per node): every EVALSHA written, then the replies read in order (a
     * write is not sent again on a fresh connection: it may have been applied) */
    pipe_clear(&r->p);
    for (size_t i = 0; i < n; i++) {
      const char *av[MAXARGS];
      size_t al[MAXARGS];
      const char *args[10];
      size_t lens[10];
      char num[3][24], nk[8];
      mam_append_args(&x, i, args, lens, num);
      evalsha_args(r, S_MAM_APPEND, 3, 10, args, lens, av, al, nk);
      pipe_add(&r->p, 13, av, al);
    }
    redisReply **reps = xcalloc(n ? n : 1, sizeof *reps);
    pipe_run(r, &r->p, 0, n, 0, reps);
    /* no reply (down, timed out) or a passing state: XMPP_AGAIN (store.h), which wins
     * over a permanent error of another row (the caller replays the whole group) */
    for (size_t i = 0; i < n; i++) {
      if (!reps[i]) rc = XMPP_AGAIN;
      else if (reps[i]->type == REDIS_REPLY_ERROR && rc != XMPP_AGAIN) {
        int e = reply_error(r, "archive append", reps[i]);
        rc = transient_reply(reps[i]) ? XMPP_AGAIN : rc ? rc : e;
      }
      if (reps[i]) freeReplyObject(reps[i]);
    }
    xfree(reps);
  }
  for (size_t i = 0; i < n; i++) {
    mkeys_free(&mk[i]);
    ukeys_free(&uk[i]);
  }
  xfree(mk);
  xfree(uk);
  return rc;
}

typedef struct {
  int64_t id;
  const redisReply *w, *d;
} mam_ent_t;

/* One stream entry [id, [field, value...]] into e; -1 when it is not one. */
static int mam_entry(const redisReply *el, mam_ent_t *e) {
  if (el->type != REDIS_REPLY_ARRAY || el->elements != 2 || el->element[0]->type != REDIS_REPLY_STRING ||
      el->element[1]->type != REDIS_REPLY_ARRAY)
    return -1;
  e->id = mam_id_of(el->element[0]->str, el->element[0]->len);
  e->w = e->d = NULL;
  const redisReply *f = el->element[1];
  for (size_t i = 0; i + 1 < f->elements; i += 2) {
    const redisReply *k = f->element[i], *v = f->element[i + 1];
    if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING || k->len != 1) continue;
    if (k->str[0] == 'w') e->w = v;
    else if (k->str[0] == 'd') e->d = v;
  }
  return e->id > 0 && e->w && e->d ? 0 : -1;
}

typedef struct {
  const char *m;
  const int64_t *ids;
} mam_ids_t;

static void append_xrange_id(rd_t *r, size_t i, void *ud) {
  const mam_ids_t *x = ud;
  char sid[48];
  mam_sid(x->ids[i], sid);
  const char *av[] = {"XRANGE", x->m, sid, sid};
  size_t al[] = {6, strlen(x->m), strlen(sid), strlen(sid)};
  pipe_add(&r->p, 4, av, al);
}

static int i64_cmp(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

/* ids: one XRANGE each, pipelined (sorted, duplicates once). */
static int mam_query_ids(rd_t *r, const char *bare, const mkeys_t *k, const store_mam_query_t *q, store_mam_cb cb,
                         void *ud) {
  int64_t *ids = xmalloc(q->nids * sizeof *ids);
  memcpy(ids, q->ids, q->nids * sizeof *ids);
  qsort(ids, q->nids, sizeof *ids, i64_cmp);
  size_t n = 0;
  for (size_t i = 0; i < q->nids; i++)
    if ((!n || ids[n - 1] != ids[i]) && ids[i] > 0) ids[n++] = ids[i];
  redisReply **reps = xcalloc(n ? n : 1, sizeof *reps);
  mam_ids_t x = {k->m, ids};
  int rc = n ? read_pipeline(r, n, append_xrange_id, &x, reps) : 0, given = 0;
  for (size_t i = 0; i < n; i++) {
    if (!rc && reps[i]->type == REDIS_REPLY_ARRAY && reps[i]->elements == 1) {
      mam_ent_t e;
      if (mam_entry(reps[i]->element[0], &e) == 0) {
        cb(e.id, e.w->str, e.d->str, e.d->len, ud);
        given++;
      } else {
        log_error("store(redis) %s: corrupt archive entry of %s skipped", r->target, bare);
      }
    } else if (!rc && reps[i]->type == REDIS_REPLY_ERROR) {
      rc = reply_error(r, "XRANGE", reps[i]);
    }
    if (reps[i]) freeReplyObject(reps[i]);
  }
  xfree(reps);
  xfree(ids);
  return rc ? rc : given;
}

static int rd_mam_query(void *be, const char *bare, const store_mam_query_t *q, store_mam_cb cb, void *ud,
                        int *more) {
  rd_t *r = be;
  mkeys_t k;
  mkeys(&k, bare);
  if (q->nids) {
    int rc = mam_query_ids(r, bare, &k, q, cb, ud);
    mkeys_free(&k);
    return rc;
  }
  /* inclusive bounds; an empty range reads nothing */
  int64_t lo = q->after + 1, hi = q->before - 1;
  if (lo < 1) lo = 1;
  if (hi > INT64_MAX / 2) hi = INT64_MAX / 2; /* far beyond any clock, and safe in Lua's doubles */
  if (hi > ((int64_t)1 << 53)) hi = (int64_t)1 << 53;
  if (lo > hi) {
    mkeys_free(&k);
    return 0;
  }
  char los[48], his[48], lox[24], hix[24], cnt[16];
  mam_sid(lo, los);
  mam_sid(hi, his);
  snprintf(lox, sizeof lox, "%016llx", (unsigned long long)lo);
  snprintf(hix, sizeof hix, "%016llx", (unsigned long long)hi);
  snprintf(cnt, sizeof cnt, "%u", q->max + 1);
  /* "b\0BARE\0" or "f\0FULL\0" (S_MAM_APPEND) */
  size_t plen = q->with ? strlen(q->with) + 3 : 0;
  char *prefix = xmalloc(plen + 1);
  if (q->with) {
    prefix[0] = strchr(q->with, '/') ? 'f' : 'b';
    prefix[1] = '\0';
    memcpy(prefix + 2, q->with, plen - 3);
    prefix[plen - 1] = '\0';
  }
  const char *av[] = {k.m, k.mw, prefix, los, his, lox, hix, cnt, q->last ? "1" : "0"};
  size_t al[] = {strlen(k.m), strlen(k.mw), plen, strlen(los), strlen(his), strlen(lox), strlen(hix),
                 strlen(cnt), 1};
  redisReply *rep = script(r, S_MAM_QUERY, 2, 9, av, al);
  xfree(prefix);
  mkeys_free(&k);
  if (!rep) return XMPP_EIO;
  if (rep->type != REDIS_REPLY_ARRAY) {
    int rc = reply_error(r, "archive query", rep);
    freeReplyObject(rep);
    return rc;
  }
  size_t n = rep->elements;
  if (n > q->max) {
    *more = 1;
    n = q->max;
  }
  int given = 0;
  for (size_t j = 0; j < n; j++) {
    size_t i = q->last ? n - 1 - j : j; /* newest first when last: given oldest first */
    mam_ent_t e;
    if (mam_entry(rep->element[i], &e) != 0) {
      log_error("store(redis) %s: corrupt archive entry of %s skipped", r->target, bare);
      continue;
    }
    cb(e.id, e.w->str, e.d->str, e.d->len, ud);
    given++;
  }
  freeReplyObject(rep);
  return given;
}

static int rd_mam_has(void *be, const char *bare, int64_t id) {
  rd_t *r = be;
  mkeys_t k;
  mkeys(&k, bare);
  char sid[48];
  mam_sid(id, sid);
  const char *av[] = {"XRANGE", k.m, sid, sid};
  size_t al[] = {6, strlen(k.m), strlen(sid), strlen(sid)};
  redisReply *rep = run(r, 4, av, al, 1);
  mkeys_free(&k);
  if (!rep) return XMPP_EIO;
  int rc = rep->type == REDIS_REPLY_ARRAY ? rep->elements > 0 : reply_error(r, "XRANGE", rep);
  freeReplyObject(rep);
  return rc;
}

static int rd_mam_count(void *be, const char *bare) {
  rd_t *r = be;
  mkeys_t k;
  mkeys(&k, bare);
  const char *av[] = {"XLEN", k.m};
  size_t al[] = {4, strlen(k.m)};
  redisReply *rep = run(r, 2, av, al, 1);
  mkeys_free(&k);
  if (!rep) return XMPP_EIO;
  int rc = rep->type == REDIS_REPLY_INTEGER ? (rep->integer > INT_MAX ? INT_MAX : (int)rep->integer)
                                            : reply_error(r, "XLEN", rep);
  freeReplyObject(rep);
  return rc;
}

static int rd_mam_prefs_get(void *be, const char *bare, int *dflt, store_mam_jid_cb cb, void *ud) {
  rd_t *r = be;
  mkeys_t k;
  mkeys(&k, bare);
  const char *av[] = {"HGETALL", k.mp};
  size_t al[] = {7, strlen(k.mp)};
  redisReply *rep = run(r, 2, av, al, 1);
  mkeys_free(&k);
  if (!rep) return XMPP_EIO;
  if (rep->type != REDIS_REPLY_ARRAY || rep->elements % 2) {
    int rc = reply_error(r, "HGETALL", rep);
    freeReplyObject(rep);
    return rc;
  }
  int rc = XMPP_ENOENT;
  for (size_t i = 0; i + 1 < rep->elements; i += 2) {
    const redisReply *f = rep->element[i], *v = rep->element[i + 1];
    if (f->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING && !strcmp(f->str, "default")) {
      *dflt = atoi(v->str);
      if (*dflt < STORE_MAM_ALWAYS || *dflt > STORE_MAM_NEVER) *dflt = STORE_MAM_ALWAYS;
      rc = 0;
    }
  }
  if (!rc) {
    /* sorted by JID like the SQLite back-end: the hash has no order */
    size_t n = rep->elements / 2, m = 0;
    const char **names = xcalloc(n ? n : 1, sizeof *names);
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
      const redisReply *f = rep->element[i];
      if (f->type == REDIS_REPLY_STRING && f->len > 2 && f->str[1] == ':' && (f->str[0] == 'a' || f->str[0] == 'n'))
        names[m++] = f->str;
    }
    qsort(names, m, sizeof *names, cmp_jid_field);
    for (size_t i = 0; i < m; i++) cb(names[i] + 2, names[i][0] == 'a', ud);
    xfree(names);
  }
  freeReplyObject(rep);
  return rc;
}

static int rd_mam_prefs_set(void *be, const char *bare, int dflt, const char *const *always, size_t nalways,
                            const char *const *never, size_t nnever) {
  rd_t *r = be;
  buf_t list;
  buf_init(&list);
  for (size_t i = 0; i < nalways + nnever; i++) {
    const char *j = i < nalways ? always[i] : never[i - nalways];
    buf_append(&list, i < nalways ? "a:" : "n:", 2);
    buf_append(&list, j, strlen(j));
    buf_append(&list, "", 1);
  }
  ukeys_t uk;
  ukeys(&uk, bare);
  mkeys_t k;
  mkeys(&k, bare);
  char d[4];
  snprintf(d, sizeof d, "%d", dflt);
  const char *av[] = {uk.a, k.mp, d, list.len ? (const char *)list.data : ""};
  size_t al[] = {uk.la, strlen(k.mp), strlen(d), list.len};
  int rc = exec_script(r, "archive prefs", S_MAM_PREFS_SET, 2, 4, av, al, R_ONE);
  ukeys_free(&uk);
  mkeys_free(&k);
  buf_free(&list);
  return rc;
}

/* The archive's keys of a deleted account. */
static int mam_delete(rd_t *r, const char *bare) {
  mkeys_t k;
  mkeys(&k, bare);
  const char *av[] = {"DEL", k.m, k.mw, k.mp};
  size_t al[] = {3, strlen(k.m), strlen(k.mw), strlen(k.mp)};
  int rc = exec_cmd(r, "archive delete", 4, av, al, R_ANY);
  mkeys_free(&k);
  return rc;
}

/* ---- XEP-0191 blocklist -------------------------------------------------------------- */

static int rd_block_load(void *be, const char *bare, store_block_cb cb, void *ud) {
  rd_t *r = be;
  size_t lb;
  char *b = bkey(bare, &lb);
  const char *av[] = {"SMEMBERS", b};
  size_t al[] = {8, lb};
  int rc = 0;
  redisReply *rep = run_array(r, 2, av, al, &rc);
  xfree(b);
  if (!rep) return rc;
  for (size_t i = 0; i < rep->elements; i++)
    if (rep->element[i]->type == REDIS_REPLY_STRING) cb(rep->element[i]->str, ud);
  freeReplyObject(rep);
  return 0;
}

/* Keys then the JIDs as script (or command) arguments: av/al hold nfirst + n. */
static void jid_args(args_t *a, int nfirst, const char *const *jids, size_t n) {
  args_init(a, nfirst + (int)n);
  for (size_t i = 0; i < n; i++) {
    a->v[nfirst + i] = jids[i];
    a->l[nfirst + i] = strlen(jids[i]);
  }
}

static int rd_block_add(void *be, const char *bare, const char *const *jids, size_t n, unsigned max) {
  rd_t *r = be;
  if (r->batch) {
    int rc = batch_needs_account(r, bare);
    if (rc) return rc;
  }
  ukeys_t k;
  ukeys(&k, bare);
  size_t lb;
  char *b = bkey(bare, &lb);
  char m[16];
  snprintf(m, sizeof m, "%u", max);
  args_t a;
  jid_args(&a, 3, jids, n);
  a.v[0] = k.a;
  a.l[0] = k.la;
  a.v[1] = b;
  a.l[1] = lb;
  a.v[2] = m;
  a.l[2] = strlen(m);
  /* R_PUSH: >= 0 done, -1 no account, -2 over the limit (the same codes) */
  int rc = exec_script(r, "blocklist add", S_BLOCK_ADD, 2, 3 + (int)n, a.v, a.l, R_PUSH);
  args_free(&a);
  ukeys_free(&k);
  xfree(b);
  return rc;
}

static int rd_block_remove(void *be, const char *bare, const char *const *jids, size_t n) {
  rd_t *r = be;
  size_t lb;
  char *b = bkey(bare, &lb);
  args_t a;
  jid_args(&a, 2, jids, n);
  a.v[0] = n ? "SREM" : "DEL";
  a.l[0] = strlen(a.v[0]);
  a.v[1] = b;
  a.l[1] = lb;
  int rc = exec_cmd(r, "blocklist remove", 2 + (int)n, a.v, a.l, R_ANY);
  args_free(&a);
  xfree(b);
  return rc;
}

static int rd_block_match(void *be, const char *bare, const char *const *jids, size_t n) {
  rd_t *r = be;
  size_t lb;
  char *b = bkey(bare, &lb);
  args_t a;
  jid_args(&a, 1, jids, n);
  a.v[0] = b;
  a.l[0] = lb;
  redisReply *rep = script(r, S_BLOCK_MATCH, 1, 1 + (int)n, a.v, a.l);
  args_free(&a);
  xfree(b);
  if (!rep) return XMPP_EIO;
  int rc = rep->type == REDIS_REPLY_INTEGER ? rep->integer == 1 : reply_error(r, "blocklist match", rep);
  freeReplyObject(rep);
  return rc;
}

/* ---- roster versioning (RFC 6121 §2.6) ----------------------------------------------- */

/* HGET of the account hash's roster_ver: absent (never changed, or no account) is 0. */
static int rd_roster_ver(void *be, const char *bare, int64_t *ver) {
  rd_t *r = be;
  ukeys_t k;
  ukeys(&k, bare);
  const char *av[] = {"HGET", k.a, "roster_ver"};
  size_t al[] = {4, k.la, 10};
  redisReply *rep = run(r, 3, av, al, 1);
  ukeys_free(&k);
  if (!rep) return XMPP_EIO;
  int rc = 0;
  if (rep->type == REDIS_REPLY_STRING) *ver = strtoll(rep->str, NULL, 10);
  else if (rep->type != REDIS_REPLY_NIL) rc = reply_error(r, "HGET", rep);
  freeReplyObject(rep);
  return rc;
}

/* ---- XEP-0484 FAST tokens ------------------------------------------------------------- */

static char *fkey(const char *bare, size_t *len) {
  char *k = xstrfmt("{u:%s}:f", bare);
  *len = strlen(k);
  return k;
}

static int rd_fast_get(void *be, const char *bare, const char *ua, store_fast_t *out) {
  rd_t *r = be;
  size_t lk;
  char *k = fkey(bare, &lk);
  char *ft = xstrfmt("t:%s", ua), *fe = xstrfmt("e:%s", ua), *fp = xstrfmt("p:%s", ua), *fc = xstrfmt("c:%s", ua);
  char *fd = xstrfmt("d:%s", ua), *fm = xstrfmt("m:%s", ua);
  const char *av[] = {"HMGET", k, ft, fe, fp, fc, fd, fm};
  size_t al[] = {5, lk, strlen(ft), strlen(fe), strlen(fp), strlen(fc), strlen(fd), strlen(fm)};
  int rc = 0;
  redisReply *rep = run_array(r, 8, av, al, &rc);
  xfree(k);
  xfree(ft);
  xfree(fe);
  xfree(fp);
  xfree(fc);
  xfree(fd);
  xfree(fm);
  if (!rep) return rc;
  redisReply **e = rep->element;
  if (rep->elements != 6 || e[0]->type == REDIS_REPLY_NIL) {
    rc = XMPP_ENOENT;
  } else if (e[0]->type != REDIS_REPLY_STRING || e[0]->len != 2 * STORE_FAST_HASH || e[1]->type != REDIS_REPLY_STRING ||
             e[2]->type != REDIS_REPLY_STRING || e[3]->type != REDIS_REPLY_STRING) {
    rc = XMPP_EIO;
  } else {
    memcpy(out->cur, e[0]->str, STORE_FAST_HASH);
    memcpy(out->prev, e[0]->str + STORE_FAST_HASH, STORE_FAST_HASH);
    out->cur_expiry = strtoll(e[1]->str, NULL, 10);
    out->prev_expiry = strtoll(e[2]->str, NULL, 10);
    out->count = strtoll(e[3]->str, NULL, 10);
    out->prev_count = e[4]->type == REDIS_REPLY_STRING ? strtoll(e[4]->str, NULL, 10) : -1;
    const char *m = e[5]->type == REDIS_REPLY_STRING && e[5]->len == 2 ? e[5]->str : "00"; /* layout before: -NONE */
    out->cur_mech = m[0] - '0';
    out->prev_mech = m[1] - '0';
  }
  freeReplyObject(rep);
  return rc;
}

static int rd_fast_put(void *be, const char *bare, const char *ua, const store_fast_t *t, unsigned max) {
  rd_t *r = be;
  ukeys_t k;
  ukeys(&k, bare);
  size_t lf;
  char *f = fkey(bare, &lf);
  unsigned char hashes[2 * STORE_FAST_HASH];
  memcpy(hashes, t->cur, STORE_FAST_HASH);
  memcpy(hashes + STORE_FAST_HASH, t->prev, STORE_FAST_HASH);
  char e[24], p[24], m[16], mm[3] = {(char)('0' + (t->cur_mech % 10)), (char)('0' + (t->prev_mech % 10)), 0};
  snprintf(e, sizeof e, "%" PRId64, t->cur_expiry);
  snprintf(p, sizeof p, "%" PRId64, t->prev_expiry);
  snprintf(m, sizeof m, "%u", max);
  const char *av[] = {k.a, f, ua, (const char *)hashes, e, p, m, mm};
  size_t al[] = {k.la, lf, strlen(ua), sizeof hashes, strlen(e), strlen(p), strlen(m), 2};
  int rc = exec_script(r, "fast put", S_FAST_PUT, 2, 8, av, al, R_PUSH);
  ukeys_free(&k);
  xfree(f);
  return rc;
}

static int rd_fast_count(void *be, const char *bare, const char *ua, const unsigned char *hash, int64_t count) {
  rd_t *r = be;
  size_t lf;
  char *f = fkey(bare, &lf);
  char c[24];
  snprintf(c, sizeof c, "%" PRId64, count);
  const char *av[] = {f, ua, (const char *)hash, c};
  size_t al[] = {lf, strlen(ua), STORE_FAST_HASH, strlen(c)};
  redisReply *rep = script(r, S_FAST_COUNT, 1, 4, av, al);
  xfree(f);
  if (!rep) return XMPP_EIO;
  int rc;
  if (rep->type != REDIS_REPLY_INTEGER) rc = reply_error(r, "fast count", rep);
  else rc = rep->integer == 1 ? 0 : rep->integer == 0 ? XMPP_EDENIED : XMPP_ENOENT;
  freeReplyObject(rep);
  return rc;
}

static int rd_fast_delete(void *be, const char *bare, const char *ua) {
  rd_t *r = be;
  size_t lf;
  char *f = fkey(bare, &lf);
  const char *av[] = {f, ua};
  size_t al[] = {lf, ua ? strlen(ua) : 0};
  redisReply *rep = script(r, S_FAST_DEL, 1, ua ? 2 : 1, av, al);
  xfree(f);
  if (!rep) return XMPP_EIO;
  int rc;
  if (rep->type != REDIS_REPLY_INTEGER) rc = reply_error(r, "fast delete", rep);
  else rc = (int)rep->integer;
  freeReplyObject(rep);
  return rc;
}

/* ---- runtime domains ------------------------------------------------------------------- */

#define RD_DOM_HASH "{domains}:h"
#define RD_DOM_VER "{domains}:v"

static int rd_domain_add(void *be, const store_domain_t *d) {
  rd_t *r = be;
  char *val = xstrfmt("%s\n%s\n%s\n%lld", d->tmpl, d->cert, d->key, (long long)time(NULL));
  const char *av[] = {RD_DOM_HASH, RD_DOM_VER, d->name, val};
  size_t al[] = {strlen(RD_DOM_HASH), strlen(RD_DOM_VER), strlen(d->name), strlen(val)};
  int rc = exec_script(r, "domain add", S_DOM_ADD, 2, 4, av, al, R_CREATE);
  xfree(val);
  return rc;
}

static int rd_domain_remove(void *be, const char *name) {
  rd_t *r = be;
  const char *av[] = {RD_DOM_HASH, RD_DOM_VER, name};
  size_t al[] = {strlen(RD_DOM_HASH), strlen(RD_DOM_VER), strlen(name)};
  return exec_script(r, "domain remove", S_DOM_DEL, 2, 3, av, al, R_ONE);
}

static int rd_domain_list(void *be, store_domain_cb cb, void *ud) {
  rd_t *r = be;
  const char *av[] = {"HGETALL", RD_DOM_HASH};
  size_t al[] = {7, strlen(RD_DOM_HASH)};
  int rc = 0;
  redisReply *rep = run_array(r, 2, av, al, &rc);
  if (!rep) return rc ? rc : XMPP_EIO;
  for (size_t i = 0; i + 1 < rep->elements; i += 2) {
    redisReply *k = rep->element[i], *v = rep->element[i + 1];
    if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
    char *name = xstrndup(k->str, k->len), *val = xstrndup(v->str, v->len);
    char *f[4] = {val, NULL, NULL, NULL};
    for (int j = 1; j < 4; j++) {
      char *nl = f[j - 1] ? strchr(f[j - 1], '\n') : NULL;
      if (nl) {
        *nl = '\0';
        f[j] = nl + 1;
      }
    }
    if (f[3]) {
      store_domain_t d = {name, f[0], f[1], f[2], strtoll(f[3], NULL, 10)};
      cb(&d, ud);
    } else {
      log_warn("store(redis) %s: %s field %s is malformed: skipped", r->target, RD_DOM_HASH, name);
    }
    xfree(name);
    xfree(val);
  }
  freeReplyObject(rep);
  return 0;
}

static int rd_domain_version(void *be, int64_t *ver) {
  rd_t *r = be;
  const char *av[] = {"GET", RD_DOM_VER};
  size_t al[] = {3, strlen(RD_DOM_VER)};
  redisReply *rep = run(r, 2, av, al, 1);
  if (!rep) return XMPP_EIO;
  int rc = 0;
  if (rep->type == REDIS_REPLY_NIL) *ver = 0;
  else if (rep->type == REDIS_REPLY_STRING) *ver = strtoll(rep->str, NULL, 10);
  else rc = reply_error(r, "domain version", rep);
  freeReplyObject(rep);
  return rc;
}

static int64_t rd_domain_accounts(void *be, const char *domain) {
  rd_t *r = be;
  char *k = xstrfmt("{d:%s}:n", domain);
  const char *av[] = {"SCARD", k};
  size_t al[] = {5, strlen(k)};
  redisReply *rep = run(r, 2, av, al, 1);
  xfree(k);
  if (!rep) return XMPP_EIO;
  int64_t n = rep->type == REDIS_REPLY_INTEGER ? rep->integer : reply_error(r, "domain accounts", rep);
  freeReplyObject(rep);
  return n;
}

static int rd_account_create_max(void *be, const char *bare, const store_account_t *a, unsigned max) {
  rd_t *r = be;
  if (r->batch) return XMPP_EINVAL; /* not used in batches */
  int added = dset_op(r, bare, 1);
  if (added < 0) return added;
  int64_t n = rd_domain_accounts(r, strchr(bare, '@') + 1);
  int rc = n < 0 ? (int)n : n > (int64_t)max ? XMPP_ELIMIT : 0;
  if (!rc) rc = rd_account_create(r, bare, a);
  /* refused: out of the set again, unless it was there before (an existing account) */
  if (rc && added == 1) dset_op(r, bare, 0);
  return rc;
}

struct backfill {
  rd_t *r;
  int rc;
};

static void backfill_one(const char *bare, void *ud) {
  struct backfill *bf = ud;
  if (!bf->rc && strchr(bare, '@') && dset_op(bf->r, bare, 1) < 0) bf->rc = XMPP_EIO;
}

/* Fills the per-domain sets from the account index, once per Redis (xmppd:domain_sets):
 * accounts created before the sets existed. Idempotent (SADD), so two nodes opening at
 * once do it twice, harmlessly. */
static void dsets_backfill(rd_t *r) {
  const char *gv[] = {"GET", "xmppd:domain_sets"};
  size_t gl[] = {3, 17};
  redisReply *rep = run(r, 2, gv, gl, 1);
  int done = rep && rep->type == REDIS_REPLY_STRING;
  if (rep) freeReplyObject(rep);
  if (done || !rep) return;
  struct backfill bf = {r, 0};
  int rc = rd_account_list(r, backfill_one, &bf); /* the account index, paged, live accounts only */
  if (!rc) rc = bf.rc;
  if (rc) return; /* again at the next open */
  const char *sv[] = {"SET", "xmppd:domain_sets", "1"};
  size_t sl[] = {3, 17, 1};
  rep = run(r, 3, sv, sl, 0);
  if (rep) freeReplyObject(rep);
}

const store_backend_t store_redis_backend = {
    .name = "redis",
    .open = rd_open,
    .close = rd_close,
    .account_get = rd_account_get,
    .account_get_many = rd_account_get_many,
    .account_exists = rd_account_exists,
    .account_create = rd_account_create,
    .account_update = rd_account_update,
    .account_delete = rd_account_delete,
    .account_list = rd_account_list,
    .batch_begin = rd_batch_begin,
    .batch_end = rd_batch_end,
    .roster_load = rd_roster_load,
    .roster_load_many = rd_roster_load_many,
    .roster_get = rd_roster_get,
    .roster_count = rd_roster_count,
    .roster_put = rd_roster_put,
    .roster_delete = rd_roster_delete,
    .offline_push = rd_offline_push,
    .offline_peek = rd_offline_peek,
    .offline_remove = rd_offline_remove,
    .offline_count = rd_offline_count,
    .offline_count_many = rd_offline_count_many,
    .doc_get = rd_doc_get,
    .doc_put = rd_doc_put,
    .doc_delete = rd_doc_delete,
    .doc_bytes = rd_doc_bytes,
    .mam_append = rd_mam_append,
    .mam_query = rd_mam_query,
    .mam_has = rd_mam_has,
    .mam_count = rd_mam_count,
    .mam_prefs_get = rd_mam_prefs_get,
    .mam_prefs_set = rd_mam_prefs_set,
    .block_load = rd_block_load,
    .block_add = rd_block_add,
    .block_remove = rd_block_remove,
    .block_match = rd_block_match,
    .roster_ver = rd_roster_ver,
    .fast_get = rd_fast_get,
    .fast_put = rd_fast_put,
    .fast_count = rd_fast_count,
    .fast_delete = rd_fast_delete,
    .domain_add = rd_domain_add,
    .domain_remove = rd_domain_remove,
    .domain_list = rd_domain_list,
    .domain_version = rd_domain_version,
    .domain_accounts = rd_domain_accounts,
    .account_create_max = rd_account_create_max,
};

/* Configuration: one declarative table drives everything.
 *
 * Each row names an option ("section.key"), its type, bounds, default, the offset of its
 * field in xmpp_config_t and one line of documentation. The INI file is read by inih;
 * the same setter serves the file and command-line overrides, so both are validated
 * alike. --check-config and docs/configuration.md come from the same rows. */
#include "common/config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"
#include "common/metrics.h"

typedef enum { CT_INT, CT_BOOL, CT_STR } conf_type_t;

typedef struct conf_opt {
  const char *section;
  const char *key;
  conf_type_t type;
  long min, max;
  const char *def;
  size_t off;
  const char *doc;
} conf_opt_t;

#define O(f) offsetof(xmpp_config_t, f)
static const conf_opt_t opts[] = {
  {"server", "domain", CT_STR, 1, 1023, "localhost", O(domain), "XMPP domain this server hosts"},
  {"server", "log_level", CT_STR, 0, 0, "info", O(log_level), "debug, info, warn, error or none"},
  {"server", "io_threads", CT_INT, 0, 256, "0", O(io_threads), "edge I/O threads (0 = one per core)"},
  {"server", "router_workers", CT_INT, 0, 256, "0", O(router_workers), "router worker threads (0 = one per core)"},
  {"server", "inline_routing", CT_BOOL, 0, 1, "true", O(inline_routing), "a thread that hands a frame to an idle router worker runs the worker's work itself instead of waking its thread (no hand-off, no context switch; one thread at a time per worker, order kept); single process on the SQLite store only: a cluster node, or a process on the Redis store (whose reads are network round trips, batched per batch of frames by the worker's own thread), always wakes the worker (docs/architecture.md, \"Run to completion\")"},
  {"server", "shards", CT_INT, 1, 65536, "4096", O(shards), "virtual shards S: a bare JID lives in shard hash(JID) mod S; the same on every node of a cluster (a node with another count refuses to join)"},
  {"server", "mam", CT_BOOL, 0, 1, "true", O(mam_enabled), "archive one-to-one messages (XEP-0313) and stamp them with stanza ids (XEP-0359); off: nothing is archived and queries find nothing"},
  {"server", "mam_commit_ms", CT_INT, 0, 5000, "1000", O(mam_commit_ms), "archive writes are committed by one writer thread in groups, each at most this long after its first message was routed (0 = no writer thread: each router worker commits its own at the end of every batch of frames); a process that dies loses at most this window of archive writes, never a message (docs/architecture.md, \"Archive writes\")"},
  {"server", "mam_retry_bytes", CT_INT, 0, 1073741824, "67108864", O(mam_retry_bytes), "archive rows the store could not take because it was unavailable (Redis down or timed out, SQLite busy) are kept, in order, and written again with back-off (100 ms doubling to 2 s) until it is back: at most this many bytes of them (the writer thread's, or each router worker's with mam_commit_ms = 0); beyond, rows are dropped, counted in xmppd_mam_rows_dropped_total and logged (docs/storage-redis.md, \"Failures\")"},
  {"server", "control_socket", CT_STR, 0, 4095, "auto", O(control_socket), "local control socket for `xmppctl` (sessions, kick, broadcast, status: [operations.md](operations.md#the-control-socket)): a Unix socket path (at most 107 bytes), created mode 0600; `auto` = the SQLite store's path with `.ctl` appended (none with the Redis back-end: give each process its own path), empty = none. One process per path: a second xmppd on it refuses to start (exit 2)"},
  {"server", "control_max_clients", CT_INT, 1, 1024, "16", O(control_max_clients), "control socket connections at once; beyond, a connection gets an error and is closed"},
  {"server", "control_max_request", CT_INT, 256, 65536, "4096", O(control_max_request), "bytes of one control request line (newline included); a longer one gets an error and the connection is closed"},
  {"server", "log_format", CT_STR, 1, 8, "text", O(log_format), "`text` (one line per event: time, level, thread, message) or `json` (one JSON object per line: `ts`, `level`, `thread`, `msg`)"},
  {"c2s", "address", CT_STR, 1, 255, "127.0.0.1", O(c2s_addr), "address the client listeners bind to"},
  {"c2s", "port", CT_INT, 0, 65535, "5222", O(c2s_port), "client port with STARTTLS (0 = off)"},
  {"c2s", "tls_port", CT_INT, 0, 65535, "5223", O(c2s_tls_port), "client port with direct TLS, XEP-0368 (0 = off)"},
  {"tls", "certificate", CT_STR, 0, 4095, "", O(tls_cert), "PEM certificate chain file (empty = TLS off)"},
  {"tls", "key", CT_STR, 0, 4095, "", O(tls_key), "PEM private key file"},
  {"tls", "required", CT_BOOL, 0, 1, "true", O(require_tls), "require TLS before authentication"},
  {"tls", "ciphers", CT_STR, 0, 180, "", O(tls_ciphers), "cipher suites in order of preference, colon-separated wolfSSL names; empty = the built-in list (TLS 1.3 ChaCha20-Poly1305, AES-128-GCM, AES-256-GCM, then TLS 1.2 ECDHE with the same AEADs); only suites of that list are accepted"},
  {"tls", "legacy_sasl_plus", CT_BOOL, 0, 1, "false", O(legacy_sasl_plus), "offer SCRAM -PLUS (channel binding: tls-exporter on TLS 1.3, tls-server-end-point) on RFC 6120 SASL too, not only on SASL2; off by default because clients that bind with tls-unique on TLS 1.3 (slixmpp before 1.8.5, Debian 12's 1.8.3) pick -PLUS and cannot log in with SCRAM then (docs/security.md)"},
  {"tls", "offload", CT_BOOL, 0, 1, "true", O(tls_offload), "after a TLS 1.3 handshake, free wolfSSL's session and protect records in the edge, KeyUpdate included (saves ~56 KB per connection)"},
  {"tls", "rekey_records", CT_INT, 16, 1 << 24, "16777216", O(tls_rekey_records), "AES-GCM records under one TLS 1.3 traffic key: at this count the server updates its key and asks the client to update its own (RFC 8446 5.5); a client still on its key at 2^24 + 2^22 records is disconnected. At most 2^24; lower values only cost KeyUpdates (tests use them)"},
  {"tls", "ticket_key_file", CT_STR, 0, 4095, "", O(tls_ticket_key_file), "session ticket keys shared by the edges of a cluster: one or two lines of 96 hex digits (`openssl rand -hex 48`: a 16-byte name, a 32-byte ChaCha20-Poly1305 key), the current key first, then the previous one (still accepted); read again on SIGHUP. Empty = a random key per process, turned over every `ticket_lifetime` (resumption then works only with the process that issued the ticket)"},
  {"tls", "ticket_lifetime", CT_INT, 1, 604800, "86400", O(tls_ticket_lifetime), "seconds a TLS 1.3 session ticket can resume a session (RFC 8446 4.6.1: at most 7 days); older tickets get a full handshake"},
  {"limits", "max_stanza_bytes", CT_INT, 1024, 16 << 20, "262144", O(max_stanza_bytes), "largest stanza accepted; larger gets `<policy-violation/>` (at most 16 MiB: an encoded frame stays under the bus limit)"},
  {"limits", "max_depth", CT_INT, 2, 200, "64", O(max_depth), "deepest element nesting inside a stanza (at most 200: bus frames are decoded with a fixed depth bound)"},
  {"limits", "max_attrs", CT_INT, 1, 4096, "64", O(max_attrs), "most attributes on one element, namespace declarations included (the stream header too)"},
  {"limits", "auth_timeout", CT_INT, 1, 3600, "30", O(auth_timeout), "seconds from connect to a bound resource"},
  {"limits", "idle_timeout", CT_INT, 5, 86400, "600", O(idle_timeout), "seconds without client input before `<connection-timeout/>`"},
  {"limits", "keepalive", CT_INT, 1, 86400, "90", O(keepalive), "seconds of output silence before a whitespace keepalive"},
  {"limits", "sasl_max_failures", CT_INT, 1, 5, "3", O(sasl_max_failures), "failed SASL attempts before the stream is closed (RFC 6120 6.4.5)"},
  {"limits", "sasl2_text_bytes", CT_INT, 8, 512, "64", O(sasl2_text_bytes), "bytes of each client-chosen name in a SASL2 `<authenticate/>` (XEP-0388 user agent `<software/>`, `<device/>`; XEP-0386 Bind2 `<tag/>`); longer, empty or with control characters: `<malformed-request/>`"},
  {"limits", "fast_tokens", CT_INT, 0, 64, "8", O(fast_tokens), "XEP-0484 FAST: user agents (devices) of one account holding a token; a new one beyond evicts the token that expires first (0 = FAST not offered)"},
  {"limits", "fast_token_lifetime", CT_INT, 1, 31536000, "1209600", O(fast_token_lifetime), "seconds a FAST token is accepted after it was issued (XEP-0484 `expiry`); a log-in with a token past half of it gets a new one"},
  {"limits", "offline_max", CT_INT, 0, 1000000, "1000", O(offline_max), "offline messages kept per user (0 = unlimited); beyond, the sender gets an error"},
  {"limits", "offline_max_bytes", CT_INT, 0, 1 << 30, "33554432", O(offline_max_bytes), "bytes of offline messages kept per user (0 = unlimited); beyond, the sender gets an error"},
  {"limits", "sm_max_unacked", CT_INT, 0, 1 << 20, "1000", O(sm_max_unacked), "stream management (XEP-0198): stanzas a client may leave unacknowledged; beyond, it is disconnected and the unacknowledged messages go to another resource or offline storage (0 = stream management not offered)"},
  {"limits", "sm_resume_timeout", CT_INT, 0, 86400, "300", O(sm_resume_timeout), "stream resumption (XEP-0198 §5): seconds a session whose connection dropped stays detached, waiting for the client to resume it; the server says max='N' in `<enabled/>`; past it the session ends as a closed one does (0 = resumption not offered)"},
  {"limits", "max_pending_out", CT_INT, 65536, 1 << 30, "4194304", O(max_pending_out), "bytes of output a client has not read before it is disconnected (bounds memory per slow reader)"},
  {"limits", "bus_queue_bytes", CT_INT, 65536, 1 << 30, "8388608", O(bus_queue_bytes), "bytes of frames waiting in one in-process bus queue (a router worker's, an edge thread's) before the edges stop reading their bound clients, until it is down to a quarter; frames already accepted are never refused ([architecture.md](architecture.md#the-bus))"},
  {"limits", "max_conns_per_ip", CT_INT, 0, 1000000, "1000", O(max_conns_per_ip), "simultaneous connections from one source address (0 = no cap); beyond, `<policy-violation/>`"},
  {"limits", "auth_fail_ip", CT_INT, 1, 100000, "20", O(auth_fail_ip), "failed authentications from one address in a minute before it gets `<temporary-auth-failure/>`"},
  {"limits", "auth_fail_account", CT_INT, 1, 100000, "30", O(auth_fail_account), "failed authentications for one account in a minute before it gets `<temporary-auth-failure/>`"},
  {"limits", "rate_bytes", CT_INT, 0, 1 << 30, "131072", O(rate_bytes), "bytes/s a connection may send, averaged (0 = unshaped); reading pauses beyond"},
  {"limits", "rate_stanzas", CT_INT, 0, 1000000, "200", O(rate_stanzas), "stanzas/s a bound session may send, averaged (0 = unshaped); reading pauses beyond"},
  {"limits", "rate_burst", CT_INT, 1, 3600, "5", O(rate_burst), "seconds of the rate a connection may send at once"},
  {"limits", "rate_grace", CT_INT, 1, 3600, "10", O(rate_grace), "seconds a connection may stay above its rate before `<policy-violation/>`"},
  {"limits", "max_resources", CT_INT, 1, 100000, "16", O(max_resources), "simultaneous resources per account; beyond, bind gets `<resource-constraint/>`"},
  {"limits", "max_roster_items", CT_INT, 1, 1000000, "2000", O(max_roster_items), "items in one roster; beyond, roster sets and new subscriptions get `<not-allowed/>`/`<resource-constraint/>`"},
  {"limits", "max_roster_bytes", CT_INT, 4096, 1 << 30, "1048576", O(max_roster_bytes), "bytes of the roster a roster get returns (each item counted as serialised, every character that needs escaping as 6 bytes); beyond, roster sets and new subscriptions get `<not-allowed/>`; the cap in force is at most half of `max_pending_out`, so a roster get never disconnects its owner"},
  {"limits", "max_roster_groups", CT_INT, 1, 100000, "64", O(max_roster_groups), "`<group/>` elements on one roster item; beyond, the roster set gets `<not-acceptable/>` (RFC 6121 2.3.3)"},
  {"limits", "max_roster_name", CT_INT, 1, 65535, "1023", O(max_roster_name), "bytes of a roster item's name; beyond, the roster set gets `<not-acceptable/>` (RFC 6121 2.3.3)"},
  {"limits", "max_roster_group_name", CT_INT, 1, 65535, "1023", O(max_roster_group_name), "bytes of one group name; beyond, the roster set gets `<not-acceptable/>` (RFC 6121 2.3.3)"},
  {"limits", "subscription_rate", CT_INT, 0, 100000, "10", O(subscription_rate), "subscription stanzas/s an account may send, averaged, with `rate_burst` seconds of burst (0 = no cap); beyond, `<policy-violation/>` (type wait)"},
  {"limits", "max_directed", CT_INT, 1, 100000, "256", O(max_directed), "JIDs one session may have sent directed available presence to (RFC 6121 4.6); beyond, directed presence to a new JID gets `<resource-constraint/>`"},
  {"limits", "max_doc_bytes", CT_INT, 256, 16 << 20, "65536", O(max_doc_bytes), "bytes of one stored document as XML (a vCard, XEP-0054; one private XML element, XEP-0049); a larger one gets `<not-acceptable/>`"},
  {"limits", "max_account_doc_bytes", CT_INT, 1024, 1 << 30, "1048576", O(max_account_doc_bytes), "bytes an account's stored documents take in all (vCard, private XML elements, last activity; each counted with its key, in the stored form); a set that would pass it gets `<not-allowed/>`"},
  {"limits", "max_private_elements", CT_INT, 1, 1024, "16", O(max_private_elements), "elements one private XML storage set (XEP-0049) may store at once; more gets `<not-acceptable/>`"},
  {"limits", "mam_max_messages", CT_INT, 0, 100000000, "100000", O(mam_max_messages), "messages kept in one account's archive (XEP-0313; 0 = no limit): beyond, the oldest go (pruned in steps of a sixteenth, so an archive holds at most this plus a sixteenth)"},
  {"limits", "mam_max_age_days", CT_INT, 0, 36500, "0", O(mam_max_age_days), "days a message stays in an archive (0 = forever); older ones are no longer returned and are pruned as new ones arrive"},
  {"limits", "mam_max_page", CT_INT, 1, 1000, "250", O(mam_max_page), "results one archive query returns at most (a larger RSM `<max/>` gets this many; no `<max/>` gets 50 or this, the smaller); also the most `ids` one query may name"},
  {"limits", "mam_max_prefs", CT_INT, 0, 100000, "256", O(mam_max_prefs), "JIDs in one account's archiving preferences (always and never lists together); beyond, the preferences set gets `<not-acceptable/>`"},
  {"limits", "max_blocklist", CT_INT, 1, 1000000, "2000", O(max_blocklist), "JIDs one account may block (XEP-0191); beyond, the block command gets `<not-acceptable/>` and adds nothing; the blocklist a get returns is also held to half of `max_pending_out` bytes"},
  {"storage", "backend", CT_STR, 1, 16, "sqlite", O(store_backend), "storage back-end: `sqlite` (one node) or `redis` (a cluster: [storage-redis.md](storage-redis.md))"},
  {"storage", "path", CT_STR, 1, 4095, "xmppd.db", O(store_path), "SQLite database file (backend `sqlite`); the server holds a lock on PATH.lock: one xmppd per store (xmppctl is not affected)"},
  {"storage", "redis", CT_STR, 1, 4095, "127.0.0.1:6379", O(store_redis), "Redis server (backend `redis`): `HOST:PORT`, `[IPV6]:PORT` or `unix:/PATH`; a Redis Cluster `cluster:HOST:PORT[,HOST:PORT...]` (seed nodes); a primary found by Sentinel `sentinel:HOST:PORT[,HOST:PORT...]/MASTERNAME`; optionally followed by ` db=N` (not with `cluster:`) and ` password=SECRET` ([storage-redis.md](storage-redis.md))"},
  {"storage", "scram_iterations", CT_INT, 4096, 1000000, "4096", O(scram_iterations), "PBKDF2 iterations for new credentials"},
  {"registration", "open", CT_BOOL, 0, 1, "false", O(reg_open), "in-band registration (XEP-0077): anyone may create an account, under TLS only, before authenticating; off: the stream feature is absent and a registration request gets `<service-unavailable/>` (password changes by logged-in users work either way)"},
  {"registration", "min_password", CT_INT, 1, 1023, "8", O(reg_min_password), "bytes a password set by in-band registration or a password change must have at least (else `<not-acceptable/>`)"},
  {"registration", "per_ip_per_hour", CT_INT, 1, 100000, "5", O(reg_per_ip_per_hour), "registration attempts (sets with a username and password) one source address (IPv6: its /64) may make in a sliding hour; beyond, `<resource-constraint/>` before any password hashing"},
  {"cluster", "role", CT_STR, 1, 16, "all", O(cluster_role), "`all` (edge + router in one process), `edge` (client connections) or `router` (shards); [cluster.md](cluster.md)"},
  {"cluster", "node_id", CT_INT, 0, 65535, "0", O(cluster_node), "this node's id, unique in the cluster: a lease in Redis, a node whose id is held by a live node refuses to start (0 = single process, no cluster)"},
  {"cluster", "redis", CT_STR, 0, 4095, "", O(cluster_redis), "Redis holding the node registry, shard map and session directory (same syntax as `storage.redis`: one server, `cluster:` seeds of a Redis Cluster, or `sentinel:` sentinels/NAME); needed when `node_id` is set"},
  {"cluster", "name", CT_STR, 1, 64, "xmpp", O(cluster_name), "cluster name: prefix of its Redis keys"},
  {"cluster", "bus_address", CT_STR, 1, 255, "127.0.0.1", O(bus_addr), "address bus links from other nodes are accepted on"},
  {"cluster", "bus_port", CT_INT, 0, 65535, "5270", O(bus_port), "port bus links are accepted on (0 = any free port, advertised as bound)"},
  {"cluster", "advertise", CT_STR, 0, 255, "", O(bus_advertise), "numeric address other nodes dial to reach this one (empty = `bus_address`)"},
  {"cluster", "heartbeat_ms", CT_INT, 100, 60000, "1000", O(heartbeat_ms), "node registry refresh and bus link heartbeat period"},
  {"cluster", "node_ttl_ms", CT_INT, 300, 600000, "3000", O(node_ttl_ms), "a node whose registration is this old is dead: its sessions end, its shards move, its id is free again"},
  {"cluster", "max_wait_ms", CT_INT, 100, 600000, "10000", O(link_max_wait_ms), "how long a frame waits for a down bus link; then it is re-routed if its shard moved, else the sender gets a stanza error"},
  {"cluster", "tls_certificate", CT_STR, 0, 4095, "", O(bus_tls_cert), "PEM certificate for mutual TLS on bus links (with `tls_key` and `tls_ca`; empty = plain TCP)"},
  {"cluster", "tls_key", CT_STR, 0, 4095, "", O(bus_tls_key), "PEM private key for bus links"},
  {"cluster", "tls_ca", CT_STR, 0, 4095, "", O(bus_tls_ca), "PEM CA that signs every node's bus certificate"},
  {"cluster", "dedup_window", CT_INT, 1024, 16777216, "65536", O(dedup_window), "frames re-sent after a node's death that each edge thread and router worker recognises as handled already (origin ids remembered, 16 bytes each); docs/cluster.md \"Exactly once\""},
  {"cluster", "hold_ms", CT_INT, 0, 60000, "2000", O(hold_ms), "after a shard move, how long a router worker holds stanzas for a gained shard whose session is not announced yet, until every live edge confirmed the new map, instead of storing them offline (0 = no hold); docs/cluster.md \"Shard moves without detours\""},
  {"cluster", "hold_bytes", CT_INT, 0, 1073741824, "8388608", O(hold_bytes), "bytes of stanzas each router worker holds at most during a shard move (`hold_ms`); past it the hold ends at once and what it held is handled as without it"},
  {"metrics", "listen", CT_STR, 0, 64, "", O(metrics_listen), "Prometheus / OpenMetrics endpoint, `HOST:PORT` or `[IPV6]:PORT` with a numeric address, serving `GET /metrics` ([operations.md](operations.md#metrics)); empty = off. An address other than loopback needs `token`"},
  {"metrics", "token", CT_STR, 0, 255, "", O(metrics_token), "bearer token the metrics endpoint requires (`Authorization: Bearer TOKEN`; 401 without it); empty = none, allowed only on a loopback `listen`"},
  {"metrics", "tls_cert", CT_STR, 0, 4095, "", O(metrics_tls_cert), "PEM certificate chain: the endpoint speaks HTTPS only (TLS 1.2 and 1.3), with `tls_key`; read at start; empty = plain HTTP"},
  {"metrics", "tls_key", CT_STR, 0, 4095, "", O(metrics_tls_key), "PEM private key of `tls_cert`"},
  {"admin", "listen", CT_STR, 0, 64, "", O(admin_listen), "HTTP admin API, `HOST:PORT` or `[IPV6]:PORT` with a numeric address: the control socket's commands as JSON under `/admin/` ([operations.md](operations.md#the-http-admin-api)); empty = off. Without `tls_cert`, plain HTTP: keep it on loopback (a warning otherwise)"},
  {"admin", "tls_cert", CT_STR, 0, 4095, "", O(admin_tls_cert), "PEM certificate chain: the admin API speaks HTTPS only (TLS 1.2 and 1.3), with `tls_key`; read at start; empty = plain HTTP"},
  {"admin", "tls_key", CT_STR, 0, 4095, "", O(admin_tls_key), "PEM private key of `tls_cert`"},
  {"admin", "token", CT_STR, 0, 255, "", O(admin_token), "bearer token every admin request must carry (`Authorization: Bearer TOKEN`; 401 without it, audited); at least 16 bytes, required with `listen`"},
  {"admin", "max_clients", CT_INT, 1, 256, "8", O(admin_max_clients), "admin API connections at once; beyond, a connection is answered 503 and closed"},
  {"admin", "max_body", CT_INT, 64, 65536, "8192", O(admin_max_body), "bytes of one admin request's JSON body; a larger one is answered 413 unread"},
};
#define NOPTS (sizeof opts / sizeof opts[0])

static const conf_opt_t *find_opt(const char *section, const char *key) {
  for (size_t i = 0; i < NOPTS; i++)
    if (strcmp(opts[i].section, section) == 0 && strcmp(opts[i].key, key) == 0) return &opts[i];
  return NULL;
}

/* The longest line inih reads whole (its buffer, INI_MAX_LINE = 200 in Debian's build,
 * less the NUL); read_line refuses longer ones. */
#define INI_LINE_MAX 199

/* Whether "key = value" written by config_print reads back as value: inih strips blanks
 * at both ends and an inline comment (';' after a blank), and a line ends at a control
 * character. inih does not strip that comment on a continuation line, so such a value
 * used to load from a file, then print as a line that read back as something else
 * (found by fuzz_config: tests/fuzz/regress/config/continuation-inline-comment). The
 * same rule holds for --set, so what --print-config shows is what a restart loads.
 * A value that makes the line too long was possible the same way (regress/config/
 * continuation-too-long-to-print). */
static int ini_writable(const char *key, const char *v) {
  size_t n = strlen(v);
  /* config_print writes "key = value": it must fit in one line of inih's buffer
   * (INI_LINE_MAX below; a continuation line could hold a longer value) */
  if (strlen(key) + 3 + n > INI_LINE_MAX) return 0;
  if (n && (v[0] == ' ' || v[0] == '\t' || v[n - 1] == ' ' || v[n - 1] == '\t')) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)v[i];
    if ((ch < 0x20 && ch != '\t') || ch == 0x7F) return 0;
    /* "key = ;x" reads as an empty value with a comment */
    if (ch == ';' && (i == 0 || v[i - 1] == ' ' || v[i - 1] == '\t')) return 0;
  }
  return 1;
}

static int set_opt(xmpp_config_t *c, const conf_opt_t *o, const char *value, char **err) {
  char *base = (char *)c;
  switch (o->type) {
  case CT_INT: {
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end) {
      if (err) *err = xstrfmt("%s.%s: '%s' is not an integer", o->section, o->key, value);
      return XMPP_EINVAL;
    }
    if (v < o->min || v > o->max) {
      if (err) *err = xstrfmt("%s.%s: %ld is outside [%ld, %ld]", o->section, o->key, v, o->min, o->max);
      return XMPP_EINVAL;
    }
    *(int *)(base + o->off) = (int)v;
    return 0;
  }
  case CT_BOOL: {
    int v;
    if (!strcasecmp(value, "true") || !strcasecmp(value, "yes") || !strcmp(value, "1") || !strcasecmp(value, "on")) v = 1;
    else if (!strcasecmp(value, "false") || !strcasecmp(value, "no") || !strcmp(value, "0") || !strcasecmp(value, "off")) v = 0;
    else {
      if (err) *err = xstrfmt("%s.%s: '%s' is not a boolean (true/false)", o->section, o->key, value);
      return XMPP_EINVAL;
    }
    *(int *)(base + o->off) = v;
    return 0;
  }
  case CT_STR: {
    size_t n = strlen(value);
    if (!ini_writable(o->key, value)) {
      if (err)
        *err = xstrfmt("%s.%s: '%s' cannot be written in a configuration file (control character, "
                       "blank at either end, ';' first or after a blank, or longer than a %d-byte line)",
                       o->section, o->key, value, INI_LINE_MAX);
      return XMPP_EINVAL;
    }
    if ((long)n < o->min || (o->max && (long)n > o->max)) {
      if (err) *err = xstrfmt("%s.%s: length %zu is outside [%ld, %ld]", o->section, o->key, n, o->min, o->max);
      return XMPP_EINVAL;
    }
    char **slot = (char **)(base + o->off);
    xfree(*slot);
    *slot = xstrdup(value);
    return 0;
  }
  }
  return XMPP_EINVAL;
}

void config_defaults(xmpp_config_t *c) {
  memset(c, 0, sizeof *c);
  for (size_t i = 0; i < NOPTS; i++) {
    int rc = set_opt(c, &opts[i], opts[i].def, NULL);
    (void)rc;
  }
}

static void vhosts_free(xmpp_config_t *c) {
  for (int i = 0; i < c->nvhosts; i++) {
    xmpp_vhost_conf_t *v = &c->vhosts[i];
    xfree(v->name);
    xfree(v->cert);
    xfree(v->key);
    xfree(v->disable);
  }
  xfree(c->vhosts);
  c->vhosts = NULL;
  c->nvhosts = 0;
}

void config_free(xmpp_config_t *c) {
  vhosts_free(c);
  for (size_t i = 0; i < NOPTS; i++)
    if (opts[i].type == CT_STR) {
      char **slot = (char **)((char *)c + opts[i].off);
      xfree(*slot);
      *slot = NULL;
    }
}

int config_set(xmpp_config_t *c, const char *key, const char *value, char **err) {
  const char *dot = strchr(key, '.');
  if (!dot) {
    if (err) *err = xstrfmt("option '%s': expected section.key", key);
    return XMPP_EINVAL;
  }
  char section[64];
  size_t sl = (size_t)(dot - key);
  if (sl >= sizeof section) sl = sizeof section - 1;
  memcpy(section, key, sl);
  section[sl] = '\0';
  const conf_opt_t *o = find_opt(section, dot + 1);
  if (!o) {
    if (err) *err = xstrfmt("unknown option '%s'", key);
    return XMPP_EINVAL;
  }
  return set_opt(c, o, value, err);
}

typedef struct {
  xmpp_config_t *c;
  char *err;
} ini_ctx_t;

/* The keys of a [domain NAME] section (config_print_reference lists them). */
static const struct {
  const char *key, *type, *def, *doc;
} vhost_keys[] = {
    {"certificate", "string", "", "PEM certificate chain of this domain, given to clients that name it in SNI; its subject alternative names (or CN) must cover the domain, else the server refuses to start or to reload. Empty = `tls.certificate`, which must then cover it"},
    {"key", "string", "", "PEM private key of `certificate`"},
    {"disable", "string", "", "router modules switched off on this domain, comma-separated (ping, version, time, last, vcard, private, mam, carbons, blocking, offline): their IQs get `<service-unavailable/>` there, disco#info does not list them, their hooks do not run for its accounts"},
    {"max_resources", "int", "0", "`limits.max_resources` for this domain's accounts (0 = the global value)"},
    {"max_sessions", "int", "0", "authenticated streams of this domain's accounts one edge node holds at most (0 = no cap; 0–10000000): beyond, SASL answers `<temporary-auth-failure/>` (counted per edge node: docs/operations.md \"Per-domain limits\")"},
    {"max_accounts", "int", "0", "accounts of this domain in-band registration may create (0 = no cap; 0–100000000): beyond, `<resource-constraint/>`; counted in the store, cluster-wide. `xmppctl adduser` is not capped"},
    {"rate_bytes", "int", "-1", "`limits.rate_bytes` for this domain's streams (-1 = the global value, 0 = unshaped; up to 1000000000)"},
    {"rate_stanzas", "int", "-1", "`limits.rate_stanzas` for this domain's streams (-1 = the global value, 0 = unshaped; up to 1000000)"},
};

/* [domain NAME] key = value: the section of NAME (created at its first key; key NULL:
 * only created, for a section with no key, which inih would not report). */
static int vhost_set(xmpp_config_t *c, const char *name, const char *key, const char *value, char **err) {
  xmpp_vhost_conf_t *v = NULL;
  for (int i = 0; i < c->nvhosts; i++)
    if (!strcmp(c->vhosts[i].name, name)) v = &c->vhosts[i];
  if (!v) {
    /* what config_print writes back as the same section: no blank, no ']' or comment */
    int ok = *name != '\0';
    for (const unsigned char *p = (const unsigned char *)name; *p && ok; p++)
      ok = *p > 0x20 && *p != 0x7F && !strchr("[];#=", *p);
    if (!ok) {
      *err = xstrfmt("[domain %s]: a domain name without blanks, brackets, ';', '#' or '=' is expected", name);
      return XMPP_EINVAL;
    }
    if (c->nvhosts >= XMPP_MAX_DOMAINS) {
      *err = xstrfmt("[domain %s]: more than %d domains", name, XMPP_MAX_DOMAINS);
      return XMPP_EINVAL;
    }
    c->vhosts = xrealloc(c->vhosts, (size_t)(c->nvhosts + 1) * sizeof *c->vhosts);
    v = &c->vhosts[c->nvhosts++];
    memset(v, 0, sizeof *v);
    v->name = xstrdup(name);
    v->cert = xstrdup("");
    v->key = xstrdup("");
    v->disable = xstrdup("");
    v->rate_bytes = v->rate_stanzas = -1;
  }
  if (!key) return 0;
  if (!ini_writable(key, value)) {
    *err = xstrfmt("[domain %s] %s: '%s' cannot be written in a configuration file", name, key, value);
    return XMPP_EINVAL;
  }
  char **slot = !strcmp(key, "certificate") ? &v->cert : !strcmp(key, "key") ? &v->key
              : !strcmp(key, "disable") ? &v->disable : NULL;
  if (slot) {
    xfree(*slot);
    *slot = xstrdup(value);
    return 0;
  }
  static const struct {
    const char *key;
    long min, max;
    size_t off;
  } ints[] = {
      {"max_resources", 0, 1000, offsetof(xmpp_vhost_conf_t, max_resources)},
      {"max_sessions", 0, 10000000, offsetof(xmpp_vhost_conf_t, max_sessions)},
      {"max_accounts", 0, 100000000, offsetof(xmpp_vhost_conf_t, max_accounts)},
      {"rate_bytes", -1, 1000000000, offsetof(xmpp_vhost_conf_t, rate_bytes)},
      {"rate_stanzas", -1, 1000000, offsetof(xmpp_vhost_conf_t, rate_stanzas)},
  };
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
    if (strcmp(key, ints[i].key) != 0) continue;
    char *end;
    errno = 0;
    long n = strtol(value, &end, 10);
    if (errno || end == value || *end || n < ints[i].min || n > ints[i].max) {
      *err = xstrfmt("[domain %s] %s: '%s' is not an integer in [%ld, %ld]", name, key, value, ints[i].min,
                     ints[i].max);
      return XMPP_EINVAL;
    }
    *(int *)((char *)v + ints[i].off) = (int)n;
    return 0;
  }
  *err = xstrfmt("unknown option [domain %s] %s", name, key);
  return XMPP_EINVAL;
}

static int ini_cb(void *ud, const char *section, const char *name, const char *value) {
  ini_ctx_t *x = ud;
  if (x->err) return 0;
  if (!strncmp(section, "domain ", 7)) return vhost_set(x->c, section + 7, name, value, &x->err) == 0;
  const conf_opt_t *o = find_opt(section, name);
  if (!o) {
    x->err = xstrfmt("unknown option [%s] %s", section, name);
    return 0;
  }
  return set_opt(x->c, o, value, &x->err) == 0;
}

/* Line reader for inih. inih reads into a fixed buffer (num bytes, 200 in Debian's
 * build) and takes whatever did not fit as the next line: a long value was cut, and
 * its tail was parsed as another "key = value" or, starting with a blank, as a
 * continuation that replaced the value. "path = /<190 x> backend = evil" set both.
 * A line that does not fit, or holds a NUL, is refused instead. Found while writing
 * fuzz_config, which now checks it (tests/fuzz/regress/config/long-line-*). */
typedef struct {
  FILE *f;
  xmpp_config_t *c;
  char *err; /* a [domain NAME] refused when read */
  int line;
  int too_long; /* the longest line that fits, when one did not */
  int nul;
  int long_section; /* a [section] name inih would have cut (its MAX_SECTION, 50 with the NUL) */
} line_reader_t;

/* inih keeps 49 bytes of a section name and drops the rest without a word: a
 * [domain NAME] with a long NAME would have configured another domain. */
#define INI_SECTION_MAX 49

static char *read_line(char *str, int num, void *stream) {
  line_reader_t *r = stream;
  if (r->too_long || r->nul || num < 2) return NULL;
  int i = 0, c = EOF;
  while (i < num - 1 && (c = getc(r->f)) != EOF) {
    if (c == '\0') {
      r->nul = 1;
      r->line++;
      return NULL;
    }
    str[i++] = (char)c;
    if (c == '\n') break;
  }
  if (i == 0) return NULL;
  r->line++;
  if (i == num - 1 && str[i - 1] != '\n') {
    c = getc(r->f);
    if (c != EOF && c != '\n') {
      r->too_long = num - 1;
      return NULL;
    }
  }
  str[i] = '\0';
  const char *p = str + strspn(str, " \t");
  const char *close = *p == '[' ? strchr(p, ']') : NULL;
  if (close && close - p - 1 > INI_SECTION_MAX) {
    r->long_section = 1;
    return NULL;
  }
  if (close && !strncmp(p + 1, "domain ", 7)) { /* a [domain NAME] is one even with no key */
    char name[INI_SECTION_MAX + 1];
    size_t n = (size_t)(close - p - 8);
    memcpy(name, p + 8, n);
    name[n] = '\0';
    if (vhost_set(r->c, name, NULL, NULL, &r->err) != 0) return NULL;
  }
  return str;
}

/* Parses an INI stream into c (defaults already set); name is used in messages. */
static int load_stream(xmpp_config_t *c, FILE *f, const char *name, char **err) {
  ini_ctx_t x = {c, NULL};
  line_reader_t r = {f, c, NULL, 0, 0, 0, 0};
  int rc = ini_parse_stream(read_line, &r, ini_cb, &x);
  if (x.err) {
    if (err) *err = xstrfmt("%s:%d: %s", name, rc, x.err);
    xfree(x.err);
    xfree(r.err); /* inih goes on after a handler's error: a later [domain NAME] may be refused too */
    return XMPP_EINVAL;
  }
  if (r.too_long || r.nul || r.long_section || r.err) {
    if (err) {
      if (r.err) *err = xstrfmt("%s:%d: %s", name, r.line, r.err);
      else if (r.long_section) *err = xstrfmt("%s:%d: section name longer than %d bytes (a [domain NAME] holds a name of at most 42)", name, r.line, INI_SECTION_MAX);
      else if (r.nul) *err = xstrfmt("%s:%d: NUL byte", name, r.line);
      else *err = xstrfmt("%s:%d: line longer than %d bytes", name, r.line, r.too_long);
    }
    xfree(r.err);
    return XMPP_EINVAL;
  }
  if (rc != 0) {
    if (err) *err = xstrfmt("%s:%d: syntax error", name, rc);
    return XMPP_EINVAL;
  }
  return 0;
}

int config_load(xmpp_config_t *c, const char *path, char **err) {
  config_defaults(c);
  if (!path) return 0;
  FILE *f = fopen(path, "r");
  if (!f) {
    if (err) *err = xstrfmt("cannot open config file %s: %s", path, strerror(errno));
    return XMPP_EINVAL;
  }
  int rc = load_stream(c, f, path, err);
  fclose(f);
  return rc;
}

int config_load_buffer(xmpp_config_t *c, const char *data, size_t len, const char *name,
                       char **err) {
  config_defaults(c);
  if (!name) name = "(buffer)";
  if (len == 0) return 0; /* an empty file: defaults (fmemopen refuses size 0) */
  FILE *f = fmemopen((void *)data, len, "r");
  if (!f) {
    if (err) *err = xstrfmt("%s: %s", name, strerror(errno));
    return XMPP_EINVAL;
  }
  int rc = load_stream(c, f, name, err);
  fclose(f);
  return rc;
}

int config_role(const xmpp_config_t *c) {
  if (strcmp(c->cluster_role, "edge") == 0) return ROLE_EDGE;
  if (strcmp(c->cluster_role, "router") == 0) return ROLE_ROUTER;
  if (strcmp(c->cluster_role, "all") == 0) return ROLE_ALL;
  return 0;
}

int config_apply_env(xmpp_config_t *c, char **err) {
  for (size_t i = 0; i < NOPTS; i++) {
    char name[96];
    snprintf(name, sizeof name, "XMPPD_%s_%s", opts[i].section, opts[i].key);
    for (char *p = name; *p; p++) *p = (char)toupper((unsigned char)*p);
    const char *v = getenv(name);
    if (!v) continue;
    char *why = NULL;
    if (set_opt(c, &opts[i], v, &why) != 0) {
      if (err) *err = xstrfmt("environment %s: %s", name, why ? why : "invalid");
      xfree(why);
      return XMPP_EINVAL;
    }
  }
  return 0;
}

static int validate_cluster(const xmpp_config_t *c, char **err) {
  int role = config_role(c);
  if (!role) {
    if (err) *err = xstrfmt("cluster.role: '%s' is not all, edge or router", c->cluster_role);
    return XMPP_EINVAL;
  }
  if (role != ROLE_ALL && c->cluster_node == 0) {
    if (err) *err = xstrfmt("cluster.role %s needs cluster.node_id (1-65535) and cluster.redis", c->cluster_role);
    return XMPP_EINVAL;
  }
  if (c->cluster_node && !c->cluster_redis[0]) {
    if (err) *err = xstrfmt("cluster.node_id is set: cluster.redis must name the cluster's Redis");
    return XMPP_EINVAL;
  }
  if (c->cluster_node && strcmp(c->store_backend, "redis") != 0) {
    if (err) *err = xstrfmt("a cluster node (cluster.node_id set) needs storage.backend = redis: every router must see the same accounts, rosters and offline queues");
    return XMPP_EINVAL;
  }
  int tls = !!c->bus_tls_cert[0] + !!c->bus_tls_key[0] + !!c->bus_tls_ca[0];
  if (tls != 0 && tls != 3) {
    if (err) *err = xstrfmt("cluster.tls_certificate, tls_key and tls_ca must be set together");
    return XMPP_EINVAL;
  }
  if (c->node_ttl_ms < 2 * c->heartbeat_ms) {
    if (err) *err = xstrfmt("cluster.node_ttl_ms (%d) must be at least twice cluster.heartbeat_ms (%d)", c->node_ttl_ms, c->heartbeat_ms);
    return XMPP_EINVAL;
  }
  return 0;
}

int config_validate(const xmpp_config_t *c, char **err) {
  if (validate_cluster(c, err) != 0) return XMPP_EINVAL;
  if (log_level_parse(c->log_level) < 0) {
    if (err) *err = xstrfmt("server.log_level: '%s' is not debug/info/warn/error/none", c->log_level);
    return XMPP_EINVAL;
  }
  if (strcmp(c->log_format, "text") != 0 && strcmp(c->log_format, "json") != 0) {
    if (err) *err = xstrfmt("server.log_format: '%s' is not text or json", c->log_format);
    return XMPP_EINVAL;
  }
  char *ctl = config_control_socket(c);
  size_t ctl_len = ctl ? strlen(ctl) : 0;
  xfree(ctl);
  if (ctl_len > 107) { /* sun_path holds 108 bytes with the NUL (Linux) */
    if (err) *err = xstrfmt("server.control_socket: the path is %zu bytes, a Unix socket's is at most 107", ctl_len);
    return XMPP_EINVAL;
  }
  if (strcmp(c->store_backend, "sqlite") != 0 && strcmp(c->store_backend, "redis") != 0) {
    if (err) *err = xstrfmt("storage.backend: '%s' is not supported (sqlite, redis)", c->store_backend);
    return XMPP_EINVAL;
  }
  const char *half = !!c->admin_tls_cert[0] != !!c->admin_tls_key[0]       ? "admin"
                     : !!c->metrics_tls_cert[0] != !!c->metrics_tls_key[0] ? "metrics"
                                                                           : NULL;
  if (half) {
    if (err) *err = xstrfmt("%s.tls_cert and %s.tls_key must be set together", half, half);
    return XMPP_EINVAL;
  }
  const char *const pem[][2] = {{"admin.tls_cert", c->admin_tls_cert}, {"admin.tls_key", c->admin_tls_key},
                                {"metrics.tls_cert", c->metrics_tls_cert}, {"metrics.tls_key", c->metrics_tls_key}};
  for (size_t i = 0; i < sizeof pem / sizeof pem[0]; i++) {
    if (pem[i][1][0] && access(pem[i][1], R_OK) != 0) {
      if (err) *err = xstrfmt("%s: cannot read %s: %s", pem[i][0], pem[i][1], strerror(errno));
      return XMPP_EINVAL;
    }
  }
  if (c->metrics_listen[0]) {
    struct sockaddr_storage ss;
    int loopback = 0;
    if (metrics_parse_listen(c->metrics_listen, &ss, &loopback, err) != 0) return XMPP_EINVAL;
    if (!loopback && !c->metrics_token[0]) {
      if (err) *err = xstrfmt("metrics.listen: %s is not a loopback address: set metrics.token", c->metrics_listen);
      return XMPP_EINVAL;
    }
  }
  for (int i = 0; i < c->nvhosts; i++) {
    const xmpp_vhost_conf_t *v = &c->vhosts[i];
    if (!!v->cert[0] != !!v->key[0]) {
      if (err) *err = xstrfmt("[domain %s]: certificate and key must be set together", v->name);
      return XMPP_EINVAL;
    }
    if (v->cert[0] && !c->tls_cert[0]) {
      if (err) *err = xstrfmt("[domain %s]: a certificate of its own needs tls.certificate too (the default)", v->name);
      return XMPP_EINVAL;
    }
    if (v->cert[0] && (access(v->cert, R_OK) != 0 || access(v->key, R_OK) != 0)) {
      if (err) *err = xstrfmt("[domain %s]: cannot read %s or %s", v->name, v->cert, v->key);
      return XMPP_EINVAL;
    }
  }
  if (c->admin_listen[0]) {
    struct sockaddr_storage ss;
    char *perr = NULL;
    if (metrics_parse_listen(c->admin_listen, &ss, NULL, &perr) != 0) {
      xfree(perr);
      if (err) *err = xstrfmt("admin.listen: '%s' is not a numeric HOST:PORT or [IPV6]:PORT", c->admin_listen);
      return XMPP_EINVAL;
    }
    if (strlen(c->admin_token) < 16) {
      if (err) *err = xstrfmt("admin.listen is set: admin.token must be set, at least 16 bytes");
      return XMPP_EINVAL;
    }
  }
  if (!(config_role(c) & ROLE_EDGE)) return 0; /* a router has no client listeners */
  if (c->c2s_port == 0 && c->c2s_tls_port == 0) {
    if (err) *err = xstrfmt("c2s.port and c2s.tls_port are both 0: nothing to listen on");
    return XMPP_EINVAL;
  }
  if (c->c2s_port && c->c2s_port == c->c2s_tls_port) {
    if (err) *err = xstrfmt("c2s.port and c2s.tls_port must differ");
    return XMPP_EINVAL;
  }
  int have_tls = c->tls_cert[0] != '\0';
  if (have_tls != (c->tls_key[0] != '\0')) {
    if (err) *err = xstrfmt("tls.certificate and tls.key must be set together");
    return XMPP_EINVAL;
  }
  if (have_tls) {
    if (access(c->tls_cert, R_OK) != 0) {
      if (err) *err = xstrfmt("tls.certificate: cannot read %s", c->tls_cert);
      return XMPP_EINVAL;
    }
    if (access(c->tls_key, R_OK) != 0) {
      if (err) *err = xstrfmt("tls.key: cannot read %s", c->tls_key);
      return XMPP_EINVAL;
    }
    if (c->tls_ticket_key_file[0] && access(c->tls_ticket_key_file, R_OK) != 0) {
      if (err) *err = xstrfmt("tls.ticket_key_file: cannot read %s", c->tls_ticket_key_file);
      return XMPP_EINVAL;
    }
  } else {
    if (c->c2s_tls_port) {
      if (err) *err = xstrfmt("c2s.tls_port needs tls.certificate and tls.key (or set it to 0)");
      return XMPP_EINVAL;
    }
    if (c->require_tls) {
      if (err) *err = xstrfmt("tls.required is true but no tls.certificate is configured");
      return XMPP_EINVAL;
    }
  }
  return 0;
}

char *config_control_socket(const xmpp_config_t *c) {
  if (!c->control_socket[0]) return NULL;
  if (strcmp(c->control_socket, "auto") != 0) return xstrdup(c->control_socket);
  if (strcmp(c->store_backend, "sqlite") != 0 || !strcmp(c->store_path, ":memory:") ||
      !strncmp(c->store_path, "file:", 5))
    return NULL;
  return xstrfmt("%s.ctl", c->store_path);
}

const char *config_store_target(const xmpp_config_t *c) {
  return strcmp(c->store_backend, "redis") == 0 ? c->store_redis : c->store_path;
}

long config_roster_bytes(const xmpp_config_t *c) {
  long half = c->max_pending_out / 2;
  return c->max_roster_bytes < half ? c->max_roster_bytes : half;
}

void config_print(FILE *f, const xmpp_config_t *c) {
  const char *cur = "";
  for (size_t i = 0; i < NOPTS; i++) {
    const conf_opt_t *o = &opts[i];
    if (strcmp(cur, o->section) != 0) {
      fprintf(f, "%s[%s]\n", i ? "\n" : "", o->section);
      cur = o->section;
    }
    const char *base = (const char *)c;
    switch (o->type) {
    case CT_INT: fprintf(f, "%s = %d\n", o->key, *(const int *)(base + o->off)); break;
    case CT_BOOL: fprintf(f, "%s = %s\n", o->key, *(const int *)(base + o->off) ? "true" : "false"); break;
    case CT_STR: fprintf(f, "%s = %s\n", o->key, *(char *const *)(base + o->off)); break;
    }
  }
  for (int i = 0; i < c->nvhosts; i++) {
    const xmpp_vhost_conf_t *v = &c->vhosts[i];
    fprintf(f,
            "\n[domain %s]\ncertificate = %s\nkey = %s\ndisable = %s\nmax_resources = %d\nmax_sessions = %d\n"
            "max_accounts = %d\nrate_bytes = %d\nrate_stanzas = %d\n",
            v->name, v->cert, v->key, v->disable, v->max_resources, v->max_sessions, v->max_accounts, v->rate_bytes,
            v->rate_stanzas);
  }
}

void config_print_reference(FILE *f) {
  fprintf(f, "| option | type | default | range | meaning |\n|---|---|---|---|---|\n");
  for (size_t i = 0; i < NOPTS; i++) {
    const conf_opt_t *o = &opts[i];
    const char *t = o->type == CT_INT ? "int" : o->type == CT_BOOL ? "bool" : "string";
    if (o->type == CT_INT)
      fprintf(f, "| `%s.%s` | %s | `%s` | %ld–%ld | %s |\n", o->section, o->key, t, o->def, o->min, o->max, o->doc);
    else
      fprintf(f, "| `%s.%s` | %s | `%s` | | %s |\n", o->section, o->key, t, o->def, o->doc);
  }
  for (size_t i = 0; i < sizeof vhost_keys / sizeof vhost_keys[0]; i++)
    fprintf(f, "| `[domain NAME] %s` | %s | `%s` | | %s |\n", vhost_keys[i].key, vhost_keys[i].type, vhost_keys[i].def,
            vhost_keys[i].doc);
}

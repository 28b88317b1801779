/* Bus frames: the one binary format between edges and routers (and router to router),
 * the same in-process and, with the cluster, over TCP.
 *
 * Wire layout (little-endian):
 *   u8 version (BUS_VERSION) | u8 kind | u16 flags | u32 body length
 *   body: src {u16 node, u16 thread, u64 conn} | dst {same}
 *         varint len + from JID | varint len + to JID | varint zigzag arg
 *         payload: the stanza in the compact tree encoding (xnode_encode), may be empty.
 * JIDs in frames are already normalised by the edge. Decoding never trusts a length:
 * every one is checked against what is there and against BUS_MAX_BODY. */
#ifndef XMPP_BUS_FRAME_H
#define XMPP_BUS_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define BUS_VERSION 1
#define BUS_HEADER_LEN 8
#define BUS_MAX_BODY (64u << 20)

typedef enum {
  BUS_C2S = 1,          /* edge -> shard(from): a stanza a client sent (outbound processing) */
  BUS_ROUTE = 2,        /* -> shard(to): a stanza for a local bare JID (inbound processing) */
  BUS_DELIVER = 3,      /* router -> edge: write this stanza to connection dst */
  BUS_SESSION_OPEN = 4, /* edge -> shard(from): resource bound at src; from = full JID */
  BUS_SESSION_CLOSE = 5,/* edge -> shard(from): connection src ended */
  BUS_KICK = 6,         /* router -> edge: close dst with a stream error (arg = reason) */
  BUS_BOUNCE = 7,       /* edge -> shard(to): a DELIVER whose connection was gone */
  BUS_SESSION_ACK = 8,  /* router -> edge: answer to SESSION_OPEN for dst (arg 0 = open) */
  /* TCP bus link control (common/cluster/bus_link.c, docs/cluster.md): consumed by the link,
   * never delivered to a queue. arg = data frames received so far (cumulative ack). */
  BUS_LINK_HELLO = 9,   /* first frame each way: src.node = node id, src.thread = role,
                           src.conn = incarnation, dst.thread = BUS_LINK_PROTO,
                           dst.conn = the peer incarnation arg counts frames of */
  BUS_LINK_PING = 10,   /* heartbeat; answered with PONG */
  BUS_LINK_PONG = 11,
  BUS_LINK_ACK = 12,    /* acknowledgement only (every 256 KiB / 1024 frames, and on close) */
  /* Cluster control inside one process (common/cluster/cluster.c -> local queues), never on a link: */
  BUS_MAP = 13,         /* the shard map changed. Worker: drop users of shards it no longer
                           owns. Edge thread: announce again each session whose shard owner
                           changed, and every session owned by node arg (a router that
                           restarted: it lost its state), arg 0 = none. src.conn: the
                           generation (the node's count of BUS_MAPs) */
  BUS_NODE_DOWN = 14,   /* node arg is dead (worker: its sessions end, as if closed) */
  BUS_OFFLINE_ACK = 15, /* edge -> shard(from): connection src took the offline messages
                           (DELIVER with BUS_F_OFFLINE) up to store id arg: written to its
                           socket, or acknowledged by the client under XEP-0198 */
  BUS_RESUME = 16,      /* -> edge thread dst (XEP-0198 §5): a client at src asks to resume
                           the session detached at dst; from = the account it authenticated
                           as, arg = its h, payload = the resumption id. From another edge
                           thread of the process, or (cluster) from the account's router,
                           which forwards a BUS_RESUME_ASK to where the session is */
  BUS_RESUME_STATE = 17,/* the answer, to dst: arg = the detached session (a conn_t *
                           handed over with its ownership: same process only), 0 = refused */
  BUS_RESUME_ASK = 18,  /* edge -> shard(from), cluster (XEP-0198 §5): a client at src asks to
                           resume with an id this edge node does not hold; from = the account
                           it authenticated as, arg = its h, payload = the resumption id. The
                           router forwards it as BUS_RESUME to the account's session the id
                           names (edge/sm.c: its tag), or answers SESSION_ACK|BUS_F_RESUME
                           BUS_ACK_GONE, or, when that session's edge died (an orphan:
                           router/sm_orphan.c), answers SESSION_ACK|BUS_F_RESUME BUS_ACK_OPEN
                           itself with the state it kept (docs/cluster.md "Stream resumption
                           across nodes") */
  BUS_SESSIONS_ENDED = 19, /* router node -> edge node, cluster: this router ended the edge
                           node's sessions (the node left the registry: a stall past its
                           lease) and now sees it back with the same incarnation, its
                           clients maybe still connected. The edge's cluster thread passes
                           it to each edge thread with arg = that router's node id; each
                           announces its bound sessions owned by that router again
                           (SESSION_OPEN|BUS_F_REANNOUNCE, arg BUS_REANNOUNCE_REVIVE) */
  BUS_MAP_DONE = 20,    /* cluster, the map handshake (docs/cluster.md "Shard moves without
                           detours"): an edge thread -> its cluster thread, once it has
                           handled the BUS_MAP whose src.conn (its generation) is arg, i.e.
                           announced its sessions to their new owners; then, once every edge
                           thread of the node has, edge node -> each router node: arg = the
                           hash of that map (shardmap_hash), dst.conn = the router's
                           incarnation as the edge knows it (a copy queued for an earlier
                           incarnation does not count) */
  BUS_MAP_SETTLED = 21, /* cluster thread -> its router workers, never on a link: every live
                           edge node has confirmed the map of generation arg (its sessions
                           are announced): what a worker holds for its gained shards is
                           handled now */
  BUS_SM_PARK = 22,     /* edge -> shard(to), XEP-0198 §5: to = the full JID of the session at
                           src, which is detached (docs/cluster.md "Stream resumption across
                           nodes"). With a payload: a message the session keeps (its DELIVER,
                           flags and arg as delivered), of which the router keeps a copy;
                           empty: arg BUS_PARK_ON (detached: the router also copies what it
                           delivers there, with BUS_F_PARKED), BUS_PARK_OFF (resumed and
                           <resumed/> written: the unnumbered copies go; the numbered ones
                           stay until acknowledged: BUS_SM_ACK), or n >= 0 (the h of a
                           <resume/> acknowledged the first n unnumbered copies). A copy
                           with BUS_F_PARKED keeps its number (arg): re-sent to a router
                           that took the shard over */
  BUS_ADMIN = 23,       /* main thread -> each edge thread of the process, never on a link: arg =
                           an edge_admin_t * (edge/admin.c: the control socket's sessions, kick,
                           broadcast), same process only */
  BUS_LEAVING = 24,     /* router node -> every node it links to, cluster (docs/cluster.md "A
                           router's graceful stop"): the router is stopping (SIGTERM) and has
                           left its own map; src.conn = its incarnation. The receiver takes
                           its router out of the map at once (not at its next registry poll),
                           then answers BUS_LEFT on its own link to it */
  BUS_LEFT = 25,        /* arg 0: node -> the leaving router, behind everything it sent there
                           before adopting the map without it; arg 1: the leaving router's
                           echo to a router, behind what it passed on of that: once it is
                           back, nothing that router sent the leaving one is still on its
                           way (its hold may settle) */
  BUS_SM_ACK = 26,      /* edge -> shard(from), cluster, XEP-0198: from = the full JID of the
                           session at src, which has stream management enabled (docs/cluster.md
                           "Exactly once"). arg = the client acknowledged every copy the router
                           numbered up to arg (BUS_F_PARKED DELIVERs carry their number in arg);
                           dst.conn = the highest number the edge has seen for the session, so a
                           router that has none of it (<enable/>, a shard move) numbers on above
                           it. The router keeps a copy of every message it delivers to the
                           session until then (router/session.c), and after the death of the
                           edge sends back only the copies not acknowledged. Coalesced: one per
                           connection per loop turn that had acknowledgements or wrote
                           numbered copies. Payload (little-endian; may be empty): u32 the
                           client's stanzas the edge counted (XEP-0198 inbound h; their C2S
                           frames went before this one) | u32 n | n times: u64 copy number,
                           u32 the outbound count at which that copy was written to the
                           client | optionally the session's resumption id (40 chars), once.
                           What lets the router resume the session after the edge's death
                           (router/sm_orphan.c, docs/cluster.md "Stream resumption across
                           nodes") */
  BUS_KIND_MAX = 26
} bus_kind_t;

/* arg of an empty BUS_SM_PARK */
enum { BUS_PARK_ON = -1, BUS_PARK_OFF = -2 };

enum {
  BUS_F_DIRECTED = 1 << 0, /* presence sent to an explicit JID (RFC 6121 §4.6) */
  BUS_F_SERVER = 1 << 1,   /* generated by the server, not by a client */
  BUS_F_FORWARDED = 1 << 3,  /* passed on by a router worker that no longer owns its shard
                                (common/cluster/cluster.c sends it straight to the owner) */
  BUS_F_REANNOUNCE = 1 << 2, /* SESSION_OPEN of a session already bound (its shard moved to
                                another router): payload = its last broadcast presence, no
                                SESSION_ACK and no presence broadcast (docs/cluster.md);
                                arg: who sends it and why (BUS_REANNOUNCE_*) */
  BUS_F_OFFLINE = 1 << 4,    /* DELIVER of a message still in offline storage, arg = its store
                                id: the edge confirms it with BUS_OFFLINE_ACK once taken; a
                                BOUNCE of it is dropped (the store still has it) */
  BUS_F_RESUME = 1 << 5,     /* SESSION_OPEN of a resumed session (XEP-0198 §5): the session
                                bound at dst moves to src, unchanged (no presence, no hooks);
                                SESSION_ACK BUS_ACK_GONE when it is not at dst any more. The
                                SESSION_ACK answering it has the flag too, and the same
                                payload: when src is on another node, the detached state
                                (edge/sm.c state_encode; not a stanza), which the router
                                passes on to src with the answer */
  BUS_F_ORIGIN = 1 << 6,     /* the body carries an origin id (u64 LE right after arg): what
                                the frame descends from, for idempotent re-delivery after a
                                node's death (docs/cluster.md "Exactly once"): a client's
                                stanza gets a fresh one at its edge (C2S); every frame a
                                router emits while handling a frame with one gets
                                bus_origin_derive(its id, k) for the k-th frame emitted */
  BUS_F_PARKED = 1 << 7,     /* DELIVER to a XEP-0198 session (cluster) of which the router keeps
                                a copy (BUS_SM_ACK, BUS_SM_PARK), arg = the copy's number (> 0,
                                increasing per session): the edge need not send it one, and
                                acknowledges it by number (BUS_SM_ACK). A BOUNCE with it comes
                                from a link that could not deliver it (cluster.c fail_frame):
                                the router's copy stands for it (or it was acknowledged) */
  BUS_F_SM_IN = 1 << 8,      /* C2S of a session with XEP-0198 on (cluster): arg = the edge's
                                count of the client's stanzas, this one included (the h the
                                router answers a resumption with after the edge's death) */
};

/* arg of a SESSION_OPEN|BUS_F_REANNOUNCE: the edge, after a shard move or a router restart
 * (restored silently); the shard's previous owner handing it over (never overrides what
 * the edge announced); the edge, after the router ended the session (BUS_SESSIONS_ENDED:
 * contacts saw it go, so it comes back as a new session with its initial presence) */
enum { BUS_REANNOUNCE_EDGE = 0, BUS_REANNOUNCE_HANDOVER = 1, BUS_REANNOUNCE_REVIVE = 2 };

enum { BUS_KICK_CONFLICT = 1, BUS_KICK_SHUTDOWN = 2 };
/* SESSION_ACK refusals: RFC 6120 §7.6.2.1 <resource-constraint/> */
enum { BUS_ACK_OPEN = 0, BUS_ACK_TOO_MANY_RESOURCES = 1, BUS_ACK_GONE = 2 };

typedef struct bus_addr {
  uint16_t node;
  uint16_t thread;
  uint64_t conn;
} bus_addr_t;

typedef struct bus_frame {
  uint8_t kind;
  uint16_t flags;
  bus_addr_t src, dst;
  const char *from; /* not NUL-terminated when decoded: use from_len */
  size_t from_len;
  const char *to;
  size_t to_len;
  int64_t arg;
  const uint8_t *payload;
  size_t payload_len;
  uint64_t origin; /* with BUS_F_ORIGIN (0 otherwise): see above */
} bus_frame_t;

/* splitmix64's finaliser: a bijection of 64 bits that spreads every input bit. */
static inline uint64_t bus_mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
/* The origin id of the k-th frame (k from 1) a router emits while handling a frame whose
 * origin id is origin: the same on any router that handles the same frame and emits in
 * the same order, so a receiver can recognise a re-sent frame's offspring. Never 0. */
static inline uint64_t bus_origin_derive(uint64_t origin, uint32_t k) {
  uint64_t o = bus_mix64(origin + 0x9e3779b97f4a7c15ULL * k);
  return o ? o : 1;
}

/* 1 for the kinds a TCP bus link carries between nodes (data frames): not the link's
 * own control frames, nor what stays inside a node (BUS_MAP, BUS_NODE_DOWN,
 * BUS_MAP_SETTLED, and BUS_RESUME_STATE, which carries a pointer). */
static inline int bus_kind_on_links(uint8_t k) {
  return (k >= BUS_C2S && k <= BUS_SESSION_ACK) || k == BUS_OFFLINE_ACK || k == BUS_RESUME || k == BUS_RESUME_ASK ||
         k == BUS_SESSIONS_ENDED || k == BUS_MAP_DONE ||
         k == BUS_SM_PARK || k == BUS_LEAVING || k == BUS_LEFT || k == BUS_SM_ACK;
}

static inline int bus_kind_valid(unsigned kind) { return kind != 0 && kind <= BUS_KIND_MAX; }

/* The header of an encoded frame, p[0..BUS_HEADER_LEN) (bus_hdr_version needs p[0]
 * only): what a transport checks before the rest of a frame is there, and the two
 * fields a frame in flight may change without being decoded and encoded again (a
 * DELIVER turned into a BOUNCE, a frame marked forwarded). No allocation, no check:
 * the caller has the bytes. Everything else goes through bus_frame_decode. */
static inline uint8_t bus_hdr_version(const uint8_t *p) { return p[0]; }
static inline uint8_t bus_hdr_kind(const uint8_t *p) { return p[1]; }
static inline uint16_t bus_hdr_flags(const uint8_t *p) { return (uint16_t)(p[2] | p[3] << 8); }
static inline uint32_t bus_hdr_body_len(const uint8_t *p) {
  return (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
}
static inline void bus_hdr_set_kind(uint8_t *p, uint8_t kind) { p[1] = kind; }
static inline void bus_hdr_add_flags(uint8_t *p, uint16_t flags) {
  p[2] |= (uint8_t)flags;
  p[3] |= (uint8_t)(flags >> 8);
}

/* Appends the encoded frame to out. */
void bus_frame_encode(const bus_frame_t *f, buf_t *out);
/* Decodes one frame from p[0..len). Fields point into p (zero copy).
 * Returns 0 and *used, XMPP_AGAIN when more bytes are needed, or XMPP_EINVAL. */
int bus_frame_decode(const uint8_t *p, size_t len, bus_frame_t *f, size_t *used);

#endif

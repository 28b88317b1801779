/* TCP bus links: bus frames between two processes (edge <-> router, router <-> router).
 *
 * A bus_link_t is the *logical* link from this node to one peer node. It outlives TCP
 * connections: frames sent while the link is down wait in its queue (bounded in bytes
 * and in time) and go out, in order, once a connection is up again. The client side
 * (bus_link_connect) reconnects with capped exponential back-off and jitter; the server
 * side (bus_listener_t) keeps one link per peer node id and re-attaches a reconnecting
 * peer to it, so nothing is lost or duplicated across a reconnection:
 *
 *   - each side counts the data frames it has received from the peer's incarnation and
 *     acknowledges them (cumulative count in PING / PONG / ACK / HELLO);
 *   - the sender keeps every frame until it is acknowledged; after a reconnection the
 *     peer's HELLO says how many it got, the sender drops those and re-sends the rest.
 *
 * What the owner sees of a frame it passed to bus_link_send is exactly one of: it
 * reached the peer's on_frames (once), or it came back through on_overflow (once):
 *   - immediately, when queueing it would pass cfg.queue_max_bytes;
 *   - when the link stayed down cfg.max_wait_ms (counted from the later of the send and
 *     the link going down);
 *   - when the owner closes the link (frames not yet written to the socket).
 * One ambiguity is inherent to any transport: a frame written but not yet acknowledged
 * when the connection was lost (peer crash, network failure) may have been received; if
 * the link does not come back within max_wait_ms it is reported to on_overflow all the
 * same (if it does come back, the HELLO counts settle it exactly).
 *
 * Optional mutual TLS 1.3 (cfg.tls_*): wolfSSL over memory buffers, common/cluster/bus_link_tls.c.
 *
 * Threading: a link and a listener belong to the loop thread that created them; every
 * call is made on that thread, and every callback runs on it.
 * Wire format, handshake, heartbeats and bounds: docs/cluster.md, "TCP bus links". */
#ifndef XMPP_BUS_LINK_H
#define XMPP_BUS_LINK_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/bus_queue.h"

/* Link protocol version, carried in HELLO (dst.thread). Peers must agree exactly. */
#define BUS_LINK_PROTO 1

enum { BUS_ROLE_EDGE = 1, BUS_ROLE_ROUTER = 2, BUS_ROLE_ALL = 3 };

typedef struct bus_link bus_link_t;
typedef struct bus_listener bus_listener_t;

typedef struct bus_link_config {
  uint32_t heartbeat_ms;    /* PING every heartbeat_ms of the connection's life (1000) */
  uint32_t dead_after;      /* K: no byte from the peer for K * heartbeat_ms -> down (3).
                               Also the time allowed for connect + HELLO. */
  uint32_t backoff_min_ms;  /* first reconnection delay (100), doubled per failure ... */
  uint32_t backoff_max_ms;  /* ... up to this (10000); each delay is jittered to [d/2, d] */
  uint32_t max_wait_ms;     /* how long a frame may wait for a down link (5000) */
  size_t queue_max_bytes;   /* frames queued + unacknowledged, in bytes (64 MiB) */
  size_t high_water;        /* queued bytes at which bus_link_writable turns 0 (8 MiB) */
  size_t low_water;         /* ... and at which it turns 1 again (2 MiB) */
  uint32_t max_body;        /* largest frame body accepted from the peer (16 MiB,
                               at most BUS_MAX_BODY); larger closes the connection */
  /* Mutual TLS 1.3 (PEM files, read when the link or listener is created): all three, or
   * none for plain TCP. Each side presents its certificate and requires the peer's to be
   * signed by the CA. Both ends of a link must agree. */
  const char *tls_cert, *tls_key, *tls_ca;
  /* This node's incarnation (the token of its node id's lease, docs/cluster.md), sent in
   * every HELLO (payload: 8 bytes, little-endian) for the peer's check_peer; 0: none. */
  uint64_t node_inc;
} bus_link_config_t;

/* Callbacks; any may be NULL except on_frames and on_overflow. ud is bus_link_ud(l). */
typedef struct bus_link_cbs {
  /* The handshake completed: frames flow. peer_node / peer_role from the HELLO. */
  void (*on_up)(bus_link_t *l, void *ud, uint16_t peer_node, uint8_t peer_role);
  /* The connection was lost (why: a short reason, also logged). Queued frames wait. */
  void (*on_down)(bus_link_t *l, void *ud, const char *why);
  /* Frames from the peer, in order: a FIFO list via ->next that the callback owns (each
   * message is what bus_queue carries, so it can be pushed on as is). Link-control
   * frames never reach it. */
  void (*on_frames)(bus_link_t *l, void *ud, bus_msg_t *batch);
  /* A frame that will not be sent (see above); the callback owns it and is expected to
   * turn it into a stanza error where that applies. May run inside bus_link_send. */
  void (*on_overflow)(bus_link_t *l, void *ud, bus_msg_t *m);
  /* bus_link_writable changed (high / low watermark crossed). */
  void (*on_writable)(bus_link_t *l, void *ud, int writable);
  /* At each HELLO from the peer (both sides), before anything changes: NULL accepts it,
   * else the reason it is refused: the connection is closed (logged with the reason),
   * the link, its queue and any connection already up for that node stay as they are; a
   * client retries with back-off. peer_node_inc: the peer's cfg.node_inc (0 when it sent
   * none: an older version). NULL: every HELLO is accepted. A reason starting with '~'
   * is an expected refusal (the peer's next attempt should be accepted): logged at INFO,
   * any other at WARN. */
  const char *(*check_peer)(void *ud, uint16_t peer_node, uint8_t peer_role, uint64_t peer_node_inc);
} bus_link_cbs_t;

typedef struct bus_link_stats {
  uint64_t frames_sent, bytes_sent;         /* data frames written (re-sends counted again) */
  uint64_t frames_received, bytes_received; /* data frames delivered to on_frames */
  uint64_t frames_overflowed;
  uint64_t connects;   /* connection attempts (client) / connections attached (server) */
  uint64_t ups, downs;
  size_t queued_frames, queued_bytes; /* waiting or unacknowledged, now */
} bus_link_stats_t;

void bus_link_config_default(bus_link_config_t *cfg);

/* Client side: a link to host:port (a numeric IPv4 or IPv6 address; name resolution is
 * the discovery layer's job), connecting now and reconnecting until bus_link_close.
 * cfg may be NULL (defaults). NULL (and a log) when the address does not parse or the
 * TLS files cannot be loaded. */
bus_link_t *bus_link_connect(uv_loop_t *loop, const char *host, int port, uint16_t self_node,
                             uint8_t self_role, const bus_link_config_t *cfg,
                             const bus_link_cbs_t *cbs, void *ud);

/* Takes ownership of m (a message from bus_msg_new, any data kind). Returns 0 when it is
 * queued (sent at once when the link is up), or XMPP_ELIMIT when queueing it would pass
 * cfg.queue_max_bytes: then on_overflow(m) has already run. Link-control kinds and bodies
 * over cfg.max_body are refused the same way (XMPP_EINVAL, through on_overflow). */
int bus_link_send(bus_link_t *l, bus_msg_t *m);
/* Between bus_link_cork and bus_link_uncork, bus_link_send only queues: the frames of a
 * batch go out together, in as few system calls as the kernel allows, at the uncork. */
void bus_link_cork(bus_link_t *l);
void bus_link_uncork(bus_link_t *l);
/* 1 while queued bytes are under the high watermark (hysteresis: back to 1 under the
 * low watermark). Producers that can pause their own inputs should while it is 0. */
int bus_link_writable(const bus_link_t *l);
int bus_link_is_up(const bus_link_t *l);
/* Stops / restarts reading from the peer (the consumer is behind). While paused the
 * peer's silence is not held against it (the dead timer restarts on resume); the peer
 * sees its writes back up and its own bus_link_writable turn 0. */
void bus_link_pause(bus_link_t *l);
void bus_link_resume(bus_link_t *l);
/* Peer node id from the last HELLO (0 before the first). */
uint16_t bus_link_peer(const bus_link_t *l);
/* In on_up: 1 when the peer is a new incarnation of the one this link talked to before
 * (the peer process restarted); its frames follow on_up. */
int bus_link_peer_restarted(const bus_link_t *l);
/* The peer's node incarnation from its last accepted HELLO (0: none sent). */
uint64_t bus_link_peer_node_inc(const bus_link_t *l);
void *bus_link_ud(const bus_link_t *l);
void bus_link_set_ud(bus_link_t *l, void *ud);
void bus_link_get_stats(const bus_link_t *l, bus_link_stats_t *st);
/* Drops the current connection at once, as a network failure would (no final ACK, no
 * flush). The link stays: the client side reconnects, and unacknowledged frames are
 * re-sent after the handshake, none lost and none twice. For operators and tests. */
void bus_link_reset(bus_link_t *l);
/* Ends the link: a final ACK tells the peer exactly what was received; frames not yet
 * written go to on_overflow (during this call); no callback runs afterwards, and l must
 * not be used again. Memory is released once libuv has closed the handles (keep running
 * the loop). */
void bus_link_close(bus_link_t *l);

/* Frees per-thread TLS state (wolfSSL's ECC cache): call at the end of every thread
 * that ran TLS links. */
void bus_link_thread_cleanup(void);

/* Server side: accepts links on host:port (port 0: any free port, see
 * bus_listener_port). The first connection from a peer node creates its link (with cbs,
 * ud, cfg); later connections from that node re-attach to it. NULL and a log on error. */
bus_listener_t *bus_listener_new(uv_loop_t *loop, const char *host, int port, uint16_t self_node,
                                 uint8_t self_role, const bus_link_config_t *cfg,
                                 const bus_link_cbs_t *cbs, void *ud);
int bus_listener_port(const bus_listener_t *ls);
/* The link of a peer node, or NULL when it never connected. */
bus_link_t *bus_listener_link(const bus_listener_t *ls, uint16_t peer_node);
/* Stops listening, drops connections that have not said HELLO, and closes every link
 * it created (bus_link_close). */
void bus_listener_close(bus_listener_t *ls);

#endif

/* Edge internals shared by the edge's files: one I/O thread, one connection. */
#ifndef XMPP_EDGE_INTERNAL_H
#define XMPP_EDGE_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "common/buf.h"
#include "common/bus.h"
#include "common/config.h"
#include "common/domains.h"
#include "common/jid.h"
#include "common/scram.h"
#include "common/store/store.h"
#include "common/xml_stream.h"
#include "edge/edge.h"
#include "edge/guard.h"
#include "edge/shaper.h"
#include "common/listener.h"
#include "edge/tls.h"

typedef struct conn conn_t;
typedef struct sm_item sm_item_t;
typedef struct csi_held csi_held_t;
typedef struct edge_thread edge_thread_t;
typedef struct sasl2_req sasl2_req_t;

struct edge_thread {
  edge_t *edge;
  int index;
  uv_loop_t loop;
  uv_thread_t thread;
  listener_t listeners[2]; /* [0] STARTTLS, [1] direct TLS (common/listener.c) */
  uv_timer_t sweep;
  uv_timer_t throttle;   /* runs while some connection is paused by its shaper */
  conn_t *paused;        /* connections whose reading is paused by the shaper */
  shaper_conf_t shk;
  struct strmap *dom_shk; /* a domain's own rates ([domain] rate_*): domain_t address -> shaper_conf_t */
  uv_async_t stop_async;
  const xmpp_config_t *cfg;
  bus_t *bus;
  store_t *store;
  tls_ctx_t *tls;
  /* connection table: id = generation << 32 | slot */
  conn_t **slots;
  uint32_t nslots, cap_slots;
  uint32_t *free_slots;
  uint32_t nfree;
  uint32_t generation;
  conn_t *all;       /* every live connection (for the sweep) */
  conn_t *dirty;     /* connections with output to flush */
  char rbuf[65536];  /* read buffer, used synchronously by read_cb */
  buf_t scratch;     /* serialisation buffer for deliveries, reused */
  int stopping;
  _Atomic int phase; /* 1: stop accepting and tell clients; 2: close all, end loop */
  uint64_t nconns;
  uint64_t last_accept_warn_ms;
  uint64_t last_prune_ms;   /* thread 0 prunes the guard's idle entries once a minute */
  uint64_t quit_ms;         /* when the second phase of stopping began */
  /* a drain (admin.c): connections sent away at drain_rate per second (this thread's
   * share), the timer's budget in thousandths of a connection */
  uv_timer_t drain_timer;
  int drain_rate;
  uint64_t drain_acc, drain_last_ms;
  /* account reads asked by <auth/> this loop turn, read together next turn (sasl.c) */
  uv_idle_t acct_idle;
  struct acct_req *acct_q;
  size_t acct_n, acct_cap;
  /* XEP-0198 §5 (sm.c): sessions detached from their dropped connection, oldest first;
   * each also holds its connection's slot, so frames for it still find it */
  conn_t *detached, *detached_tail;
  size_t ndetached;
  /* cluster, docs/cluster.md "Exactly once": the next origin id for a client's stanza
   * (random start), and the deliveries written here (origin id x connection), so one
   * re-sent after a router's death is not written twice */
  uint64_t next_origin;
  struct dedup *seen; /* NULL until the first DELIVER with an origin id */
  uint64_t dups;      /* deliveries dropped as written already */
};

struct edge {
  const xmpp_config_t *cfg;
  bus_t *bus;
  edge_thread_t *threads;
  int nthreads;
  tls_ctx_t *tls;
  guard_t *guard;
  /* open-file budget: connections beyond it are refused with <resource-constraint/>
   * while descriptors remain for the refusal itself, storage and logs */
  long max_conns;
  atomic_long nconns;
  /* XEP-0198 §5 (sm.c): resumption id -> where its session is (edge thread, connection
   * id); any edge thread reads and writes it, under the lock (a resume, an enable, a
   * session's end: rare) */
  uv_mutex_t rid_lock;
  struct strmap *rids;
  /* a drain (admin.c): set once by the main thread before the request reaches the
   * threads (the bus queue orders it); drain_target NULL: <system-shutdown/> instead */
  _Atomic int draining;
  char *drain_target;
};

/* Where a connection is in its negotiation (RFC 6120 §4-§7, XEP-0198 §5); the diagram
 * and the rules are at the top of negotiate.c. Changed only by conn_set_state, which
 * checks the transition. */
typedef enum {
  CONN_ST_PLAIN = 0,     /* accepted, no TLS: header, features, <starttls/>; SASL and XEP-0077
                            only with tls.required = false */
  CONN_ST_TLS,           /* <proceed/> sent, or direct TLS: the handshake runs, no XML */
  CONN_ST_SECURED,       /* TLS up, not authenticated: SASL, XEP-0077 registration */
  CONN_ST_AUTHED,        /* SASL succeeded, the stream restarted: bind, or <resume/> */
  CONN_ST_BINDING,       /* bind asked of the router (SESSION_OPEN); stanzas held */
  CONN_ST_RESUMING,      /* <resume/>: waits for the detached session (BUS_RESUME_STATE) */
  CONN_ST_RESUME_MOVING, /* has it; the router moves the session here (SESSION_ACK) */
  CONN_ST_RESUME_REMOTE, /* <resume/> of a session on another edge node: asked its router
                            (BUS_RESUME_ASK); the state comes with the answer (sm_resume_ack) */
  CONN_ST_BOUND,         /* a session: stanzas are routed, <enable/> allowed */
  CONN_ST_CLOSING,       /* ending (conn_end): no input; the session ended or detached */
  CONN_ST_DETACHED,      /* not a connection: a session waiting for a resumption (sm.c) */
} conn_st_t;

/* A SASL2 exchange (XEP-0388) and what its <authenticate/> asked inline, kept from the
 * <authenticate/> to the <success/> (sasl.c owns it; negotiate.c and sm.c read it). */
struct sasl2_req {
  char *additional;   /* base64 additional-data for <success/> (SCRAM's server-final), or NULL */
  char ua_id[40];     /* <user-agent id/>: a UUID (RFC 4122 text form), "" when absent */
  /* Bind2 (XEP-0386) */
  int bind;           /* <bind xmlns='urn:xmpp:bind:0'/> was given */
  char *tag;          /* its <tag/>, checked (sasl2_text_bytes, no control characters) */
  int sm;             /* inline XEP-0198 <enable/>: 0 none, 1 enable, 2 enable resume='true' */
  int carbons;        /* inline XEP-0280 <enable/> */
  int inactive;       /* inline XEP-0352 <inactive/> */
  /* XEP-0198 <resume/> inline in <authenticate/> */
  char *previd;
  uint32_t h;
  char *pre;          /* XML the <success/> carries before <bound/> (a failed resumption) */
  /* XEP-0484 FAST */
  int want_token;     /* <request-token mechanism/> of an HT mechanism offered here */
  int token_mech;     /* ... that one (STORE_FAST_*) */
  int64_t count;      /* <fast count/>, -1 none */
  int invalidate;     /* <fast invalidate='true'/> */
  int fast;           /* this exchange is HT-SHA-256-* (FAST) */
  int fast_mech;      /* ... which one (STORE_FAST_*) */
  int64_t fast_expiry;/* ... which expires then */
  char *token;        /* <token/> for <success/> */
};

/* How a connection ends (conn_end). */
typedef enum {
  CONN_END_CLEAN, /* we end the stream (what is queued: </stream:stream>, a stream error):
                     the session ends, TLS close_notify follows, the socket closes once
                     all is written */
  CONN_END_IDLE,  /* the same for a client silent past limits.idle_timeout, or sent to
                     another edge by a drain (see-other-host), but its session waits for a
                     resumption when it can (XEP-0198 §5) */
  CONN_END_LOST,  /* the transport failed or the peer went (EOF, reset, a TLS or write
                     error): the session is detached when it can be, else ends; no
                     close_notify; what is queued (a TLS alert) is written if it can be */
  CONN_END_ABORT, /* now: output not written is dropped, a pending write cancelled, the
                     session ends (a peer that stops reading; a shutdown's grace ran out) */
} conn_end_t;

struct conn {
  uv_tcp_t tcp;
  edge_thread_t *th;
  uint64_t id;
  conn_t *prev, *next;  /* th->all */
  conn_t *next_dirty;
  int in_dirty;
  tls_conn_t *tls;
  int direct_tls;
  xml_stream_t *xs;
  conn_st_t state;      /* the negotiation (conn_set_state) */
  /* Beside the state, not in it, because each holds in several states at once:
   * header_sent: every level restarts the stream (§5.4.3.3, §6.4.6), so "our header is
   * out on the current stream" is a sub-state of each; secure: the transport, which stays
   * on through every later state, and which a stream authenticated with
   * tls.required = false never had; handle_closed: libuv's close callback ran (freeing
   * waits for it and for pending_work); reg_busy: a job holds the connection, whatever
   * the state (registration before SASL, password change after). */
  int header_sent;      /* our stream header went out on the current stream */
  int secure;           /* TLS established */
  int handle_closed;
  int pending_work;     /* jobs holding this connection (an account read, a password check) */
  int writing;
  int sasl_failures;
  unsigned sasl_gen;    /* counts ended SASL exchanges: a late result of an earlier one is ignored */
  int reg_busy;         /* XEP-0077: a registration or password change is hashing (register.c) */
  int announced_binding; /* cluster: re-announced to a new owner while CONN_ST_BINDING (which
                            routers were told, not where the stream is) */
  char *bind_id;        /* id of the bind request being answered */
  bus_msg_t *held;      /* stanzas sent while binding, released in order when it completes */
  bus_msg_t **held_tail;
  int nheld;
  int ip_counted;       /* counted in the guard's per-address connections */
  int fd_counted;       /* counted in edge->nconns */
  int paused;           /* reading stopped by the shaper (on th->paused) */
  conn_t *next_paused;
  uint8_t ip[16];       /* peer address, IPv4 as v4-mapped */
  shaper_t shaper;
  const shaper_conf_t *shk; /* its rates: the thread's, or its domain's (conn_domain_shaper) */
  _Atomic long *dom_sessions; /* the domain's session count this authenticated stream is in */
  buf_t stash;          /* plaintext read but not parsed yet: the shaper paused this client */
  unsigned stream_gen;  /* counts stream restarts (STARTTLS, SASL success) */
  buf_t out;            /* bytes to write (ciphertext under TLS) */
  uint64_t out_handed;  /* bytes given to uv_write so far */
  uint64_t out_done;    /* ... and written by it */
  /* offline messages (BUS_F_OFFLINE) written but not yet confirmed to the router: the
   * last one's store id, and where its bytes end (out_handed + out.len when queued) */
  int64_t off_id;
  uint64_t off_mark;
  scram_server_t *scram;
  /* XEP-0388 (sasl.c): the exchange under way is SASL2, or its <success/> waits for what
   * was asked inline (Bind2, XEP-0198 resumption); NULL for legacy SASL */
  sasl2_req_t *sasl2;
  int carbons_iq;       /* Bind2 enabled carbons: the router's answer to that IQ is not the
                           client's, and is swallowed (edge_deliver_now) */
  char *auth_bare;      /* account being authenticated / authenticated */
  const char *domain;   /* the hosted domain the stream is for (common/domains.h: valid for
                           the process's life), NULL before the first stream header */
  jid_t jid;            /* bound full JID */
  /* cluster only: the last broadcast presence (encoded) and the shard owner the session
   * was announced to, for re-announcing it when its shard moves (docs/cluster.md) */
  uint8_t *presence;
  size_t presence_len;
  uint32_t announced;
  uint32_t shard;       /* shard of jid.bare, computed once at bind (hot path: every stanza) */
  /* XEP-0198 (sm.c): enabled; stanzas received / sent since; last h the client acked */
  int sm;
  int sm_r_pending;     /* our <r/> is unanswered */
  uint32_t sm_in, sm_out, sm_acked;
  sm_item_t *sm_q;      /* messages sent and not acknowledged, oldest first */
  sm_item_t **sm_q_tail;
  size_t sm_bytes;      /* their size */
  size_t sm_off;        /* how many of them came from offline storage (BUS_F_OFFLINE) */
  size_t sm_fresh;      /* detached: stanzas queued for it that were never written */
  char *sm_rid;         /* resumption id (resume='true'): registered in edge->rids */
  /* cluster (docs/cluster.md "Exactly once"): the router numbers the messages it keeps a
   * copy of (BUS_F_PARKED, arg); the highest number the client acknowledged, the highest
   * seen, and whether the router is to be told (BUS_SM_ACK, at the next edge_flush) */
  uint64_t sm_copy_acked, sm_copy_seen;
  int sm_ack_due;
  /* cluster: the numbered copies written this loop turn and at which outbound count
   * (sm.c sm_stanza_out; told with the BUS_SM_ACK, so that the router can turn the h of
   * a <resume/> into the copies received after this node's death), and whether the
   * router knows the resumption id */
  struct sm_wrote *sm_wrote;
  uint32_t sm_nwrote, sm_capwrote;
  int sm_rid_told;
  uint64_t detached_ms; /* CONN_ST_DETACHED since */
  uint32_t resume_h;    /* the h of that <resume/> */
  int resume_h_set;     /* resume_h is the client's count for this session's queue: a
                           resumption that ends before <resumed/> (sm_bounce) applies it */
  int64_t resume_ack;   /* the router's answer to the move (SESSION_ACK), -1 not yet */
  /* XEP-0352 (csi.c): the client said <inactive/>; what waits, oldest first */
  int csi_inactive;
  csi_held_t *csi_head, *csi_tail;
  size_t csi_n, csi_bytes;
  struct strmap *csi_presence; /* sender -> its held presence */
  char stream_id[24];
  uint64_t created_ms, last_in_ms, last_out_ms;
};

/* conn.c */
/* Counts c in (delta 1) or out of (-1) the metrics gauge of its state (xmppd_sessions):
 * at its birth and its end; conn_set_state moves it between gauges. */
void conn_count_state(const conn_t *c, int delta);
/* The thread's throttle timer and shaper settings (edge_create). */
void conn_thread_init(edge_thread_t *th);
/* Wraps the connection in TLS (direct TLS at accept, or after <proceed/>). */
void conn_start_tls(conn_t *c);
void conn_accept(edge_thread_t *th, int fd, int direct_tls);
conn_t *conn_lookup(edge_thread_t *th, uint64_t id);
/* Queues bytes for the client (encrypting under TLS). */
void conn_send(conn_t *c, const char *data, size_t len);
void conn_send_str(conn_t *c, const char *s);
/* c has something for edge_flush (output, a BUS_SM_ACK to send). */
void conn_mark_dirty(conn_t *c);
/* The domain the stream is for (its first header's 'to'), the default one before. */
/* The stream's domain decided (negotiate.c): its own shaper rates, if it has any. */
void conn_domain_shaper(conn_t *c, const struct domain *d);
static inline const char *conn_domain(const conn_t *c) { return c->domain ? c->domain : domain_default(); }
/* Writes everything queued on dirty connections. */
void edge_flush(edge_thread_t *th);
/* Moves c to state to: a transition negotiate.c's table does not allow is a bug (an
 * assert in debug builds, an error logged otherwise; the state is set all the same).
 * Logged at debug level. */
void conn_set_state(conn_t *c, conn_st_t to);
const char *conn_state_name(conn_st_t st);
static inline int conn_closing(const conn_t *c) { return c->state == CONN_ST_CLOSING; }
/* The router has a session for c (or is being told of one): a SESSION_CLOSE is owed
 * when it ends, and what c sends goes to its shard. */
static inline int conn_has_session(const conn_t *c) {
  return c->state == CONN_ST_BINDING || c->state == CONN_ST_BOUND || c->state == CONN_ST_RESUME_MOVING ||
         c->state == CONN_ST_DETACHED;
}
/* The one way a connection ends, whatever ends it; idempotent: the first call stops the
 * input and ends the session (or detaches it: XEP-0198 §5) and queues TLS close_notify
 * (CONN_END_CLEAN, _IDLE), once; any later call may only make it harsher (LOST or ABORT
 * drop what is not written yet, ABORT closes at once). The socket then closes once its
 * output is written: counters, the table slot and the handle go in one place, the memory
 * once libuv and every job let go of it. Safe inside any callback of c's: nothing is
 * freed before libuv's close callback. */
void conn_end(conn_t *c, conn_end_t how);
/* The session of c (a connection or a detached session) ends: the messages it did not
 * acknowledge go back to the router first (it skips this address), then SESSION_CLOSE
 * when the router has a session for it. */
void conn_session_end(conn_t *c);
/* Wrappers: a stream error then CONN_END_CLEAN (RFC 6120 §4.9; cond NULL: a plain
 * </stream:stream>); CONN_END_CLEAN; CONN_END_ABORT. */
void conn_stream_error(conn_t *c, const char *cond, const char *text);
/* A drain (admin.c): <see-other-host>host</see-other-host> (RFC 6120 §4.9.3.19), then
 * CONN_END_IDLE: a resumable session is detached, to be resumed at host. */
void conn_see_other_host(conn_t *c, const char *host);
void conn_close(conn_t *c);
void conn_abort(conn_t *c);
/* A job holding c finished: returns 1 if c was closed meanwhile (then freed once no job
 * holds it any more): the caller must not touch it. */
int conn_work_done(conn_t *c);
void conn_sweep_cb(uv_timer_t *t);
/* Frees c's slot in its thread's connection table (when c still holds it). */
void conn_table_del(edge_thread_t *th, conn_t *c);
/* The peer is gone (EOF, reset, a write error, resumed elsewhere): output not written is
 * dropped, then CONN_END_LOST. */
void conn_lost(conn_t *c);
/* Restarts the XML stream (RFC 6120 §5.4.3.3, §6.4.6): what the client sent after the
 * element that caused it, in the same read, is discarded. */
void conn_restart_stream(conn_t *c);
uint64_t edge_now_ms(void);

/* negotiate.c */
/* The router's answer to a bind: open (reply with the JID) or refused. */
void negotiate_bind_done(conn_t *c, int64_t result);
/* Bind2 (XEP-0386) after a SASL2 authentication (AUTHED): the resource is the client's
 * tag and a random suffix; the answer (<bound/>) goes into the SASL2 <success/>. pre:
 * XML to put before <bound/> in it (an inline resumption's <failed/>), may be NULL. */
void negotiate_bind2(conn_t *c, const char *pre);
/* c->carbons_iq: 1 when DELIVER f is the router's answer to the carbons IQ Bind2 sent for
 * the client (not to be written; the wait ends). */
int negotiate_swallow(conn_t *c, const bus_frame_t *f);
void negotiate_stream_start(void *ud, const xnode_t *header);
void negotiate_stanza(void *ud, xnode_t *stanza);
void negotiate_stream_end(void *ud);
void negotiate_xml_error(void *ud, xml_stream_err_t err, const char *detail);
/* Called when the TLS handshake completes. */
void negotiate_tls_ready(conn_t *c);

/* sm.c: XEP-0198 stream management (acks, resumption) */
int sm_offered(const conn_t *c);
/* <enable/>, <r/>, <a/> from the client (urn:xmpp:sm:3). */
void sm_element(conn_t *c, xnode_t *e);
/* A stanza from the client was handled (counts when enabled). */
void sm_stanza_in(conn_t *c);
/* A stanza was written to the client; deliver: its DELIVER frame when it is a message to
 * keep until acknowledged (NULL for anything else). */
void sm_stanza_out(conn_t *c, const bus_frame_t *deliver);
/* The connection ends: unacknowledged messages go back to the router (BOUNCE). */
void sm_bounce(conn_t *c);
/* conn_end only, for a connection that dropped (not a clean close): when the client
 * enabled resumption, its session moves to a detached session (CONN_ST_DETACHED)
 * holding the connection's slot; c keeps no session. Returns 1 when detached. */
int sm_detach(conn_t *c);
/* A DELIVER for detached session g: queued for the resumption (or the session ends when
 * over the stream management limits). */
void sm_detached_deliver(conn_t *g, const bus_frame_t *f);
/* A BUS_KICK for detached session g (arg: BUS_KICK_*). */
/* Cluster (docs/cluster.md "Stream resumption across nodes"): the router of detached g
 * gets a copy of each message g keeps (BUS_SM_PARK), then BUS_PARK_ON (at the detach, and
 * when a new router takes its shard). */
void sm_park_all(conn_t *g, int all);
/* Cluster, XEP-0198 (docs/cluster.md "Exactly once"): c's router is told what its client
 * acknowledged (BUS_SM_ACK; the first one, at <enable/>, makes it keep copies). */
void sm_ack_send(conn_t *c);
/* Cluster: c's shard has a new owner (or its router ended and revived it: revived),
 * which has no copy of what c keeps: it learns where c's numbers are and, unless
 * revived (that router sent its copies back when it ended the session), gets copies. */
void sm_new_router(conn_t *c, int revived);
/* A DELIVER for c: the router's number of its copy, if any, is seen. */
static inline void sm_copy_seen(conn_t *c, const bus_frame_t *f) {
  if ((f->flags & BUS_F_PARKED) && !(f->flags & BUS_F_OFFLINE) && f->arg > 0 && (uint64_t)f->arg > c->sm_copy_seen)
    c->sm_copy_seen = (uint64_t)f->arg;
}
/* Detached g was ended by its router while this node was away (BUS_SESSIONS_ENDED): the
 * router sent back what g kept; g ends here without a close and without bouncing. */
void sm_detached_released(conn_t *g);
void sm_detached_kick(conn_t *g, int64_t why);
/* Ends the detached sessions whose resume timeout ran out (all = every one: shutdown). */
void sm_sweep(edge_thread_t *th, uint64_t now, int all);
/* BUS_RESUME from another edge thread, and its answer BUS_RESUME_STATE. */
void sm_resume_request(edge_thread_t *th, const bus_frame_t *f);
void sm_resume_state(edge_thread_t *th, const bus_frame_t *f);
/* The router's answer to the SESSION_OPEN of a resumption (RESUMING, RESUME_MOVING). */
void sm_resume_done(conn_t *c, int64_t result);
/* A SESSION_ACK with BUS_F_RESUME: the answer to a resumption, with the session's state
 * when it comes from another edge node (docs/cluster.md), for connection f->dst. */
void sm_resume_ack(edge_thread_t *th, const bus_frame_t *f);
/* A DELIVER for c while it resumes (the router moved the session before the state came). */
void sm_resuming_deliver(conn_t *c, const bus_frame_t *f);
/* The connection is freed: its resumption id goes (unless a detached session took it). */
void sm_release(conn_t *c);
/* XEP-0198 <enable/> (resume: asked for it): the answer (<enabled/> or <failed/>) is
 * appended to out (Bind2 inline, XEP-0386) or, out NULL, sent. */
void sm_enable(conn_t *c, int resume, buf_t *out);
/* <resume/> inline in a SASL2 <authenticate/> (XEP-0198 "SASL2 inline"): c is AUTHED,
 * its <success/> pending; the answer goes inside it (sasl2_complete), and on failure a
 * Bind2 asked with it is tried (negotiate_bind2). Returns 0 when started. */
void sm_resume_inline(conn_t *c, const char *previd, uint32_t h);

/* csi.c: XEP-0352 client state indication */
/* A <active/> or <inactive/> (1), or not a CSI element (0). */
int csi_element(conn_t *c, xnode_t *e);
/* DELIVER f for c, which is inactive: 1 when held; 0 when it is to be written now (what
 * was held has been written first). */
int csi_hold(conn_t *c, const bus_frame_t *f, arena_t *a);
void csi_flush(conn_t *c);
void csi_free(conn_t *c);
/* Takes the oldest held frame (the caller owns it), NULL when none: a connection that
 * drops hands them to its detached session. */
bus_msg_t *csi_take(conn_t *c);

/* sasl.c */
/* SASL2 (XEP-0388): 1 when offered (TLS up, not authenticated). */
int sasl2_offered(const conn_t *c);
/* The <authentication/> stream feature with its inline features. */
void sasl2_feature(const conn_t *c, buf_t *out);
/* RFC 6120 <mechanisms/> (SCRAM -PLUS with tls.legacy_sasl_plus) and XEP-0440
 * <sasl-channel-binding/> when a -PLUS mechanism is offered (secured: TLS is up). */
void sasl_feature(const conn_t *c, buf_t *out, int secured);
/* <authenticate/>, <response/>, <abort/> of urn:xmpp:sasl:2. */
void sasl2_element(conn_t *c, xnode_t *e);
/* The SASL2 success, once what was asked inline is done: results (XML, may be NULL) go
 * inside <success/> after <authorization-identifier/> (the bound full JID when bound). */
void sasl2_complete(conn_t *c, const char *results);
/* The Bind2 the router refused (resource limit): a SASL2 failure, then the stream closes. */
void sasl2_bind_failed(conn_t *c, const char *text);
void sasl_thread_init(edge_thread_t *th);
/* Answers the account reads still queued, then closes the handle (thread stopping). */
void sasl_thread_close(edge_thread_t *th);
void sasl_auth(conn_t *c, xnode_t *auth);
void sasl_response(conn_t *c, xnode_t *resp);
void sasl_abort(conn_t *c);
void sasl_cleanup(conn_t *c);

/* register.c: XEP-0077 in-band registration and password change */
/* 1 when the <register/> stream feature is offered (registration.open, under TLS, not
 * authenticated yet). */
int register_offered(const conn_t *c);
/* Before SASL: 1 when s was a jabber:iq:register IQ to this server, answered (or queued)
 * here; 0 when it is something else. May close the stream (plaintext, TLS required). */
int register_preauth(conn_t *c, xnode_t *s);
/* Authenticated: 1 when s was a jabber:iq:register IQ to this server (password change,
 * XEP-0077 §3.3), handled here; 0 when it is to be routed. */
int register_iq(conn_t *c, xnode_t *s);

/* admin.c: a BUS_ADMIN frame's request, this thread's part (edge.h). */
void edge_admin_run(edge_thread_t *th, edge_admin_t *r);

/* route.c: frames between this edge and the routers */
void edge_route_stanza(conn_t *c, xnode_t *stanza);
void edge_session_open(conn_t *c);
void edge_session_close(conn_t *c);
/* c's bus address (this node, its thread, its id). */
bus_addr_t edge_addr(const conn_t *c);
void edge_bus_cb(void *ud, bus_msg_t *batch);
/* Frees what a connection still holds for the routers (on release). */
void edge_release_held(conn_t *c);
/* Writes a DELIVER frame to its (live, bound) connection. */
void edge_deliver_now(conn_t *c, const bus_frame_t *f);
/* Tells c's shard that its client took the offline messages up to store id id. */
void edge_offline_ack(conn_t *c, int64_t id);
/* Sends c's router a BUS_SM_ACK (sm.c builds it): the session's next frame. */
void edge_sm_ack(conn_t *c, bus_frame_t *f);
/* After a write completed: confirms the offline messages it carried (without XEP-0198). */
void edge_offline_written(conn_t *c);
/* Replies to a client stanza with a stanza error built at the edge. */
void edge_stanza_error(conn_t *c, xnode_t *stanza, const char *type, const char *cond);

#endif

/* Edge internals shared by the edge's files: one I/O thread, one connection. */
#ifndef XMPP_EDGE_INTERNAL_H
#define XMPP_EDGE_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "common/buf.h"
#include "common/bus.h"
#include "common/config.h"
#include "common/jid.h"
#include "common/scram.h"
#include "common/store/store.h"
#include "common/xml_stream.h"
#include "edge/edge.h"
#include "edge/guard.h"
#include "edge/shaper.h"
#include "edge/tls.h"

typedef struct conn conn_t;
typedef struct sm_item sm_item_t;
typedef struct csi_held csi_held_t;
typedef struct edge_thread edge_thread_t;

struct edge_thread {
  edge_t *edge;
  int index;
  uv_loop_t loop;
  uv_thread_t thread;
  uv_tcp_t listeners[2];
  int nlisteners;
  uv_timer_t sweep;
  uv_timer_t throttle;   /* runs while some connection is paused by its shaper */
  conn_t *paused;        /* connections whose reading is paused by the shaper */
  shaper_conf_t shk;
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
  /* account reads asked by <auth/> this loop turn, read together next turn (sasl.c) */
  uv_idle_t acct_idle;
  struct acct_req *acct_q;
  size_t acct_n, acct_cap;
  /* XEP-0198 §5 (sm.c): sessions detached from their dropped connection, oldest first;
   * each also holds its connection's slot, so frames for it still find it */
  conn_t *detached, *detached_tail;
  size_t ndetached;
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
};

typedef enum { ST_HEADER = 0, ST_OPEN } conn_state_t;

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
  int header_sent;      /* our stream header went out on the current stream */
  int secure;           /* TLS established */
  int authed;
  int bound;
  int closing;          /* no more input is processed; closes once output is written */
  int handle_closed;
  int pending_work;     /* jobs holding this connection (an account read, a password check) */
  int writing;
  int sasl_failures;
  unsigned sasl_gen;    /* counts ended SASL exchanges: a late result of an earlier one is ignored */
  int reg_busy;         /* XEP-0077: a registration or password change is hashing (register.c) */
  int binding;          /* bind sent to the router, result not yet given to the client */
  int announced_binding; /* cluster: re-announced to a new owner while binding */
  char *bind_id;        /* id of the bind request being answered */
  bus_msg_t *held;      /* stanzas sent while binding, released in order when it completes */
  bus_msg_t **held_tail;
  int nheld;
  int ip_counted;
  int fd_counted;       /* counted in edge->nconns */       /* counted in the guard's per-address connections */
  int paused;           /* reading stopped by the shaper (on th->paused) */
  conn_t *next_paused;
  uint8_t ip[16];       /* peer address, IPv4 as v4-mapped */
  shaper_t shaper;
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
  char *auth_bare;      /* account being authenticated / authenticated */
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
  int detached;         /* a detached session (XEP-0198 §5), not a connection: no socket */
  uint64_t detached_ms;
  int resuming;         /* <resume/> asked: 1 waits for the detached state, 2 has it and
                           waits for the router (resume_ack), 3 asked the router for a
                           session on another edge node (the state comes with its answer) */
  uint32_t resume_h;    /* the h of that <resume/> */
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
/* The thread's throttle timer and shaper settings (edge_create). */
void conn_thread_init(edge_thread_t *th);
/* Wraps the connection in TLS (direct TLS at accept, or after <proceed/>). */
void conn_start_tls(conn_t *c);
void conn_accept(edge_thread_t *th, uv_stream_t *server, int direct_tls);
conn_t *conn_lookup(edge_thread_t *th, uint64_t id);
/* Queues bytes for the client (encrypting under TLS). */
void conn_send(conn_t *c, const char *data, size_t len);
void conn_send_str(conn_t *c, const char *s);
/* Writes everything queued on dirty connections. */
void edge_flush(edge_thread_t *th);
/* Closes with a stream error (RFC 6120 §4.9; cond NULL: a plain </stream:stream>). */
void conn_stream_error(conn_t *c, const char *cond, const char *text);
void conn_close(conn_t *c);
/* Closes now, dropping output not yet written (a peer that stopped reading). */
void conn_abort(conn_t *c);
/* A job holding c finished: returns 1 if c was closed meanwhile (then freed once no job
 * holds it any more): the caller must not touch it. */
int conn_work_done(conn_t *c);
void conn_sweep_cb(uv_timer_t *t);
/* Frees c's slot in its thread's connection table (when c still holds it). */
void conn_table_del(edge_thread_t *th, conn_t *c);
/* The connection was lost or failed (not a clean close): its session is detached for
 * resumption when it can be (sm_detach), else it ends; output not written is dropped. */
void conn_lost(conn_t *c);
/* Restarts the XML stream (RFC 6120 §5.4.3.3, §6.4.6): what the client sent after the
 * element that caused it, in the same read, is discarded. */
void conn_restart_stream(conn_t *c);
uint64_t edge_now_ms(void);

/* negotiate.c */
/* The router's answer to a bind: open (reply with the JID) or refused. */
void negotiate_bind_done(conn_t *c, int64_t result);
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
/* The connection dropped (not a clean close): when the client enabled resumption, its
 * session moves to a detached session holding the connection's slot; c is left unbound,
 * to be closed. Returns 1 when detached. */
int sm_detach(conn_t *c);
/* A DELIVER for detached session g: queued for the resumption (or the session ends when
 * over the stream management limits). */
void sm_detached_deliver(conn_t *g, const bus_frame_t *f);
/* A BUS_KICK for detached session g (arg: BUS_KICK_*). */
void sm_detached_kick(conn_t *g, int64_t why);
/* Ends the detached sessions whose resume timeout ran out (all = every one: shutdown). */
void sm_sweep(edge_thread_t *th, uint64_t now, int all);
/* BUS_RESUME from another edge thread, and its answer BUS_RESUME_STATE. */
void sm_resume_request(edge_thread_t *th, const bus_frame_t *f);
void sm_resume_state(edge_thread_t *th, const bus_frame_t *f);
/* The router's answer to the SESSION_OPEN of a resumption (c->resuming). */
void sm_resume_done(conn_t *c, int64_t result);
/* A SESSION_ACK with BUS_F_RESUME: the answer to a resumption, with the session's state
 * when it comes from another edge node (docs/cluster.md), for connection f->dst. */
void sm_resume_ack(edge_thread_t *th, const bus_frame_t *f);
/* A DELIVER for c while it resumes (the router moved the session before the state came). */
void sm_resuming_deliver(conn_t *c, const bus_frame_t *f);
/* The connection is freed: its resumption id goes (unless a detached session took it). */
void sm_release(conn_t *c);

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
/* After a write completed: confirms the offline messages it carried (without XEP-0198). */
void edge_offline_written(conn_t *c);
/* Replies to a client stanza with a stanza error built at the edge. */
void edge_stanza_error(conn_t *c, xnode_t *stanza, const char *type, const char *cond);

#endif

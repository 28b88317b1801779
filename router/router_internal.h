/* Router internals shared by the router's files. Everything here belongs to one worker
 * thread: no locks, no atomics. */
#ifndef XMPP_ROUTER_INTERNAL_H
#define XMPP_ROUTER_INTERNAL_H

#include <stdint.h>
#include <uv.h>

#include "common/arena.h"
#include "common/bus.h"
#include "common/config.h"
#include "common/stanza.h"
#include "common/store/store.h"
#include "common/strmap.h"
#include "router/router.h"

typedef struct worker worker_t;

typedef struct session {
  struct session *next;
  char *full;
  const char *resource; /* points into full */
  bus_addr_t at;        /* edge thread and connection holding it */
  int available;        /* sent available presence and not unavailable since */
  int priority;
  uint8_t *presence;    /* last broadcast presence, encoded stanza; NULL if none */
  size_t presence_len;
  void **mod;           /* the modules' per-session state (router/module.h), NULL until used */
  struct sm_park *park; /* XEP-0198, cluster: copies of the messages its client has not
                           acknowledged; session.c */
  /* XEP-0198 §5, cluster (sm_orphan.c): the resumption id its edge told, the client's
   * stanzas counted (BUS_F_SM_IN, BUS_SM_ACK), since when its edge is dead (loop ms, 0:
   * alive) and a resumption asked of that edge and not answered yet */
  char *sm_rid;
  uint32_t sm_in;
  uint64_t orphan_since;
  bus_msg_t *resume_wait;
  uint64_t resume_wait_at; /* loop ms */
} session_t;

typedef struct ritem {
  char *jid;
  char *name;
  roster_sub_t sub;
  int ask_out;
  int pending_in;
  char **groups;
  size_t ngroups;
  size_t counted; /* bytes counted in its user's roster_bytes (0: hidden, or roster not loaded) */
  int approved;   /* pre-approved (RFC 6121 §3.4) */
} ritem_t;

typedef struct user {
  char *bare;
  session_t *sessions;
  int exists;       /* -1 unknown, 0 no account, 1 account */
  void **mod;       /* the modules' per-account state (router/module.h), NULL until used */
  int touched;      /* on the worker's touched list this frame */
  struct user *next_touched;
} user_t;

struct worker {
  router_t *router;
  int index;
  uv_loop_t loop;
  uv_thread_t thread;
  uv_async_t stop;
  const xmpp_config_t *cfg;
  bus_t *bus;
  store_t *store;
  strmap_t *users;      /* bare -> user_t */
  user_t *touched;      /* users looked up while handling the current frame */
  arena_t arena;        /* per frame */
  uint64_t push_seq;
  /* the stanza of the frame being handled and the bytes it was decoded from: a frame
   * that forwards that very tree reuses the bytes instead of encoding it again
   * (code that changes a decoded tree in place must clear frame_tree) */
  const xnode_t *frame_tree;
  const uint8_t *frame_payload;
  size_t frame_payload_len;
  buf_t scratch;        /* encoding buffer, reused */
  struct credis *dir;   /* cluster: this worker's connection to the session directory */
  void **mod_state;     /* the modules' per-worker state, in table order (router/module.h) */
  /* cluster, docs/cluster.md "Exactly once": the origin id of the frame being handled (0:
   * none) and how many frames were emitted for it; the origin ids of the frames handled
   * (a frame re-sent after a node's death, handled here already, is dropped) */
  uint64_t in_origin;
  uint32_t out_k;
  struct dedup *seen;   /* NULL until the first frame with an origin id */
  uint64_t dups;        /* frames dropped as handled already */
  uv_timer_t orphan_timer; /* XEP-0198, cluster: ends orphans not resumed in time (sm_orphan.c) */
  int orphan_timer_on;
  struct orphan *orphans; /* their full JIDs and since when, oldest first */
  size_t norphans, caporphans;
  uint64_t copy_no;     /* XEP-0198, cluster: the last number given to a session's copy of a
                           message (session.c); never goes back */
  uint32_t *owner_view; /* cluster: the shard map as of the last BUS_MAP this worker handled
                           (bus->owner changes earlier: frames queued before the BUS_MAP are
                           still this worker's, and go after its hand-over) */
  /* cluster, a shard move's hold (failover.c, docs/cluster.md "Shard moves without
   * detours"): stanzas for gained shards whose session is not announced yet, per bare JID
   * (held_t, in arrival order), until every live edge confirmed the map */
  int holding;          /* a hold is on */
  uint64_t hold_gen;    /* the BUS_MAP generation it waits for (BUS_MAP_SETTLED) */
  uint64_t hold_since;  /* loop time it began */
  uint8_t *gained;      /* [nshards]: shards this worker gained in the moves of this hold */
  strmap_t *held;       /* bare JID -> held_t; NULL until the first */
  size_t held_bytes, held_frames;
  uint64_t hold_stats[3]; /* of this hold: held, handed to their session, handled at the end */
  uv_timer_t hold_timer;  /* cluster.hold_ms */
  int hold_after;       /* after the current frame: 1 re-check the hold (BUS_MAP), 2 end it (settled) */
  char *hold_opened;    /* after the current frame: a session of this bare JID opened */
};

struct router {
  const xmpp_config_t *cfg;
  bus_t *bus;
  worker_t *workers;
  int nworkers;
  void **mod_state; /* the modules' per-router state, in table order (router/module.h) */
};

/* worker.c: users and sending */
user_t *user_get(worker_t *w, const char *bare);           /* creates */
int user_exists(worker_t *w, user_t *u);                   /* account in the store? */
session_t *user_session(user_t *u, const char *full);
/* Sends stanza st to a connected session: BUS_DELIVER to its edge. */
void w_deliver(worker_t *w, const session_t *s, const char *from, const char *to, const xnode_t *st);
/* The same to s->full, with the frame's flags and arg (mod_offline: BUS_F_OFFLINE and the
 * message's store id). */
void w_deliver_arg(worker_t *w, const session_t *s, const char *from, const xnode_t *st, uint16_t flags, int64_t arg);
/* A message as storage keeps it (offline queue, archive): a bus frame with its
 * addresses and the encoded stanza, decoded again with bus_frame_decode. */
void w_encode_stored(const char *from, const char *to, const xnode_t *st, buf_t *out);
/* Sends st to the shard owning 'to' for inbound processing (BUS_ROUTE). */
void w_route(worker_t *w, const char *from, const char *to, const xnode_t *st, uint16_t flags);
/* Replies to st (from -> to) with a stanza error, routed back to 'from'. */
void w_error(worker_t *w, const char *from, const char *to, const xnode_t *st, const char *type, const char *cond);
int w_is_local(const worker_t *w, const char *jid);        /* domain of jid is one we host */
/* jid is exactly one of the domains we host (the server's own address) */
int w_is_server(const worker_t *w, const char *jid);
/* The domain part of the normalised jid, in the frame arena; the default domain for
 * NULL or "" (replies "from the server" to an address that did not name one). */
char *w_domain_of(worker_t *w, const char *jid);
/* limits.max_resources for the account bare, or its domain's override ([domain]). */
int w_max_resources(const worker_t *w, const char *bare);
/* bare JID of a JID, in the frame arena */
char *w_bare(worker_t *w, const char *jid);

/* session.c */
void session_open(worker_t *w, const bus_frame_t *f);
void session_close(worker_t *w, const bus_frame_t *f);
/* BUS_RESUME_ASK (cluster, XEP-0198 §5): forwarded to the session of the asking account
 * that the resumption id names, or refused. */
void session_resume_ask(worker_t *w, const bus_frame_t *f);
void session_free(session_t *s);
/* Takes s out of u and frees it (no presence: the caller has sent what applies). */
void session_remove(worker_t *w, user_t *u, session_t *s);
/* s ends without having said unavailable (closed, replaced, its node died): the modules
 * send what applies (HOOK_SESSION_GONE), then session_remove. */
void session_finish(worker_t *w, user_t *u, session_t *s);
/* A new session of u for full (copied) at the connection at, first in u->sessions (no
 * hook, no directory write: the caller's). */
session_t *session_add(user_t *u, const char *full, const bus_addr_t *at);
/* How many sessions u has. */
int session_count(const user_t *u);
/* XEP-0198 §5 in a cluster (docs/cluster.md "Stream resumption across nodes"): what a
 * detached session keeps, copied here so that the death of its edge node loses nothing.
 * BUS_SM_PARK from the session's edge. */
void session_park(worker_t *w, const bus_frame_t *f);
/* A DELIVER f of stanza st for s, about to be sent: when s is parked and st a message
 * (not an error, not from offline storage), the router keeps a copy and f gets
 * BUS_F_PARKED. */
void session_park_copy(worker_t *w, session_t *s, bus_frame_t *f, const xnode_t *st);
/* A BOUNCE f for the session f->to names: its copy, if the session keeps one, goes (the
 * bounce takes its place). 0 when f must be dropped: a link could not deliver it
 * (BUS_F_PARKED) and the session, gone, already sent its copies back. */
int session_park_bounced(worker_t *w, const bus_frame_t *f);
/* BUS_SM_ACK from the session's edge: its client acknowledged the copies numbered up to
 * f->arg, which go; the first one starts the copying (XEP-0198 enabled). */
void session_sm_ack(worker_t *w, const bus_frame_t *f);
/* s's node died: the copies go back to the account as BOUNCE frames (another resource or
 * offline storage), after s has ended. Call before session_finish. */
void session_park_release(worker_t *w, session_t *s, int plain);

/* sm_orphan.c, XEP-0198 §5 in a cluster (docs/cluster.md "Stream resumption across
 * nodes"): a session whose edge node died is kept for limits.sm_resume_timeout, with its
 * copies, so that a <resume/> on another edge node succeeds from what the router keeps.
 * sm_orphan_note: a BUS_SM_ACK's counts and id; sm_orphan_keep: its node died, 1 when
 * kept (else the caller ends it); sm_orphan_deliver: a DELIVER for an orphan, 1 when
 * taken (kept as a copy, or dropped: not a message); sm_orphan_resume: a BUS_RESUME_ASK
 * for an orphan; sm_orphan_asked: a resumption forwarded to s's edge (answered here if
 * that edge turns out dead); sm_orphan_moved: s moved (resumed) to a live edge;
 * sm_orphan_free: with the session; sm_orphan_init/close: the worker's timer. */
void sm_orphan_note(worker_t *w, session_t *s, const bus_frame_t *f);
int sm_orphan_keep(worker_t *w, user_t *u, session_t *s);
int sm_orphan_deliver(worker_t *w, session_t *s, const bus_frame_t *f, const xnode_t *st);
void sm_orphan_resume(worker_t *w, user_t *u, session_t *s, const bus_frame_t *f);
void sm_orphan_asked(worker_t *w, session_t *s, const bus_frame_t *f);
void sm_orphan_moved(session_t *s);
/* s's edge node came back (stalled past its lease) with s's connection: s is an orphan
 * no more, and gets what was kept for it meanwhile. */
void sm_orphan_revived(worker_t *w, session_t *s);
/* The copies marked unsent (kept for an orphan, or given back by a link while the session
 * may resume) are delivered to s now (its edge lives); how many. */
size_t sm_orphan_unsent(worker_t *w, session_t *s);
/* s, an orphan, closed by its edge (back from a stall, the session ended there): the
 * copies its edge never had go to the account (the edge bounces the others). */
void sm_orphan_closed(worker_t *w, session_t *s);
void sm_orphan_free(session_t *s);
void sm_orphan_init(worker_t *w);
void sm_orphan_close(worker_t *w);

/* failover.c: the cluster's view from a worker (docs/cluster.md) */
/* SESSION_OPEN with BUS_F_REANNOUNCE: an edge re-announces a bound session (its shard
 * moved here); the session and its presence are restored without a broadcast. With
 * arg BUS_REANNOUNCE_REVIVE (the edge was away and this router had ended the session):
 * a new session and its initial presence, broadcast (RFC 6121 §4.2). */
void session_reannounce(worker_t *w, const bus_frame_t *f, const xnode_t *presence);
/* BUS_MAP: users of shards this worker no longer owns are dropped (the new owner
 * rebuilds them from the edges' re-announcements). */
void worker_map_changed(worker_t *w, uint64_t gen);
/* BUS_NODE_DOWN: sessions on that edge node end as if each had closed. */
void worker_node_down(worker_t *w, uint16_t node);
/* 1 when a router-bound frame's shard is owned by this worker (always in one process). */
int worker_owns(const worker_t *w, const bus_frame_t *f);
/* The shard move's hold (docs/cluster.md "Shard moves without detours"). hold_frame: 1
 * when it keeps m (C2S, ROUTE or BOUNCE for a gained shard whose session is not known
 * while a hold is on); hold_after_frame: what the frame just handled means for the hold
 * (a session opened: its stanzas are handled now; a new map; the map settled); hold_end:
 * everything held is handled now, the hold is off; hold_init/hold_free: worker set-up and
 * tear-down (hold_free frees what is left unhandled: after hold_end). */
int hold_frame(worker_t *w, bus_msg_t *m, const bus_frame_t *f);
void hold_after_frame(worker_t *w);
void hold_end(worker_t *w, const char *why, int ran_out);
void hold_init(worker_t *w);
void hold_close(worker_t *w);
void hold_free(worker_t *w);

/* worker.c: one frame to its end (forwarded if its shard moved away, held, or handled);
 * takes m. fresh: from the queue (a frame handled already is dropped); 0: replayed from
 * the hold. Not from inside a frame's handling. */
void worker_take(worker_t *w, bus_msg_t *m, int fresh);
/* Between frames outside a batch (a timer's): users left with no session dropped, the
 * frame arena reset. */
void worker_idle(worker_t *w);

/* directory.c: the Redis session directory (cluster only; no-ops otherwise) */
void dir_open(worker_t *w);
void dir_session(worker_t *w, const session_t *s);      /* bound, or presence changed */
void dir_session_gone(worker_t *w, const session_t *s);
void dir_close(worker_t *w);

/* What the stanza modules offer the others (each is called only by modules: the core
 * reaches them through the hook points, router/module.h). */

/* mod_presence.c (RFC 6121 §4) */
/* Sends each available resource's presence of u to 'to' (a bare JID). */
void presence_send_current(worker_t *w, user_t *u, const char *to);
/* The full/bare JIDs s sent directed presence to (RFC 6121 §4.6.3), NULL when none. */
strmap_t *presence_directed(const session_t *s);

/* mod_roster.c (RFC 6121 §2, §3) */
strmap_t *user_roster(worker_t *w, user_t *u);             /* loads on first use */
void ritem_free(void *p);
/* u's subscription to contact (a bare JID), SUB_NONE when it has no item (or the store
 * could not say): from the roster when loaded, else that one item read from the store
 * (the same cost whatever the roster's size). */
roster_sub_t roster_sub(worker_t *w, user_t *u, const char *contact);
/* 1 when u's roster is in memory (user_roster then reads nothing). */
int roster_loaded(const user_t *u);
/* 1 when u's roster has a (visible) item for contact; reads only that item when the
 * roster is not loaded. */
int roster_has(worker_t *w, user_t *u, const char *contact);


#endif

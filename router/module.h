/* Router modules: how a feature (an XEP) plugs into the router without the core naming
 * its namespace.
 *
 * A module is one const table (module_t) in its own file (router/mod_*.c) and one line in
 * router/modules.c. It declares:
 *  - disco identities and features: disco#info on the server and on an account's bare
 *    JID is built from every module's table (mod_disco.c);
 *  - IQ handlers keyed by the payload's namespace (and element name), the IQ types and
 *    the address the IQ is sent to: the server's domain, an account's bare JID (the
 *    server answers on the account's behalf, RFC 6120 §10.3.3), or a full JID whose
 *    resource is not online; an IQ request no handler takes gets <service-unavailable/>
 *    (RFC 6120 §8.4);
 *  - hooks at named points of the stanza flow (mod_hook_t): a hook sees the event and
 *    may take the stanza over (MOD_STOP: the hooks after it do not run). The core fires
 *    the points of its own flow (stanzas in and out, sessions, batches, frames); the
 *    stanza modules fire the points of theirs (mod_presence: initial presence,
 *    subscriptions, batch read-ahead; mod_message: delivered, offline). Hooks run in
 *    table order, so the modules that handle a stanza for good (mod_presence at the
 *    presence points, mod_message at HOOK_MESSAGE_IN: they return MOD_STOP) come last
 *    in router/modules.c, after every module that filters, changes or copies it;
 *  - a per-worker state slot it owns (worker_init / worker_free), a per-router one
 *    shared by the workers (router_init / router_free), per-session state
 *    through mod_session_state, and per-account state through mod_user_state (kept while
 *    the account is in memory: while it has a session, else for one frame).
 * Everything a module runs on is its worker's thread: no locks, as for the core.
 *
 * Modelled on Prosody's module:hook / module:add_feature and ejabberd's gen_iq_handler:
 * see docs/architecture.md, "Adding a feature". */
#ifndef XMPP_ROUTER_MODULE_H
#define XMPP_ROUTER_MODULE_H

#include "router/router_internal.h"

/* Where an IQ is addressed (mod_iq_t.at, a mask). */
enum {
  MOD_AT_SERVER = 1 << 0,  /* to the server's domain */
  MOD_AT_ACCOUNT = 1 << 1, /* to an account's bare JID, or with no 'to' (the sender's own) */
  MOD_AT_FULL = 1 << 2,    /* to a full JID of a local account whose resource is not online */
};
/* Who may use it (mod_iq_t.who). */
enum {
  MOD_ANYONE = 0,
  MOD_SELF = 1,    /* only the account itself (MOD_AT_ACCOUNT) */
  MOD_CONTACT = 2, /* the account itself, or an entity subscribed to its presence */
};
enum { MOD_GET = 1 << 0, MOD_SET = 1 << 1 };

/* One IQ, as a handler sees it. */
typedef struct mod_iq_ctx {
  worker_t *w;
  user_t *u;         /* the account addressed (MOD_AT_ACCOUNT, MOD_AT_FULL), else NULL */
  session_t *s;      /* the sender's session when it is one of this worker's, else NULL */
  const char *from;  /* full JID of the sender */
  const char *to;    /* as addressed (the domain, a bare or a full JID) */
  xnode_t *iq;       /* the whole IQ */
  xnode_t *payload;  /* its one child */
  int self;          /* the sender is the account addressed */
} mod_iq_ctx_t;

typedef struct mod_iq {
  const char *ns;    /* payload namespace; NULL ends the list */
  const char *name;  /* payload element name (NULL: any) */
  unsigned types;    /* MOD_GET | MOD_SET */
  unsigned at;       /* MOD_AT_* mask */
  unsigned who;      /* MOD_ANYONE, MOD_SELF, MOD_CONTACT */
  void (*handle)(mod_iq_ctx_t *c);
} mod_iq_t;

/* Hook points. */
typedef enum {
  HOOK_MESSAGE_OUT,   /* a bound client sent a message (sender's shard, before routing) */
  HOOK_MESSAGE_IN,    /* a message for a local account (its shard; the last hook, mod_message,
                         applies the delivery rules) */
  HOOK_PRESENCE_OUT,  /* a bound client sent a presence (sender's shard; the last hook,
                         mod_presence, handles it) */
  HOOK_PRESENCE_IN,   /* a presence for a local account (its shard; mod_presence last) */
  HOOK_SESSION_OPEN,  /* a resource was bound (e.s) */
  HOOK_SESSION_CLOSE, /* a session is ending (e.s, still in e.u) */
  HOOK_ROSTER_CHANGE, /* mod_roster: e.u's roster item for e.to changed (pushed to its
                         resources) */
  HOOK_BATCH_BEGIN,   /* a batch of frames begins (e.batch; e.u, e.s NULL) */
  HOOK_BATCH_END,     /* ... and ends */
  HOOK_MESSAGE_DELIVERED, /* a message for a local account went through the delivery rules
                             (RFC 6121 §8.5): e.got lists the sessions it was written to (none:
                             stored offline, or dropped as §8.5 says for its type); not called
                             when the sender got an error instead. e.skip: a bounced message
                             routed again (its sessions then are the second pass's). */
  HOOK_IQ_OUT,        /* a bound client sent an IQ to another entity (not to its own account
                         or the server: those go to the IQ handlers); sender's shard, before
                         routing */
  HOOK_IQ_IN,         /* an IQ for a local account (its shard, before delivery or the
                         handlers answering for the account) */
  HOOK_PRESENCE_BROADCAST, /* e.u's presence e.st (from e.from) is about to go to e.to: one
                         contact of a broadcast or of the initial probes, or a JID that got
                         directed presence (RFC 6121 §4.2.2, §4.3, §4.6.3); MOD_STOP: not
                         to that one */
  HOOK_SESSION_GONE,  /* e.s ends without having sent unavailable presence: closed by its
                         edge, replaced by a new bind, its edge node died (e.s still in e.u;
                         HOOK_SESSION_CLOSE follows). Not for a session handed over to
                         another router (it lives on there) */
  HOOK_SESSION_RESTORE, /* e.s was re-announced after its shard moved here (failover.c),
                         e.st its presence (NULL: none): restored without a broadcast */
  HOOK_FRAME,         /* a bus frame of a kind the core does not handle itself (e.frame);
                         MOD_STOP: taken (none takes it: logged as unexpected) */
  HOOK_MESSAGE_OFFLINE, /* mod_message: no resource of e.u takes the message e.st (RFC 6121
                         §8.5.2.1.1); MOD_STOP: stored (XEP-0160), else the sender gets
                         <service-unavailable/> */
  HOOK_PRESENCE_INITIAL, /* mod_presence: e.s sent its initial presence (RFC 6121 §4.2),
                         after the broadcast and the probes */
  HOOK_SUBSCRIPTION_OUT, /* mod_presence: e.s sent the subscription stanza e.st (RFC 6121 §3:
                         type subscribe, subscribed, unsubscribe or unsubscribed) to e.to, a
                         JID of this domain */
  HOOK_SUBSCRIPTION_IN,  /* mod_presence: a subscription stanza e.st from e.from for the
                         local account e.u (e.to) */
  HOOK_BATCH_AHEAD,   /* mod_presence, at a batch's begin: the storage reads the batch is
                         about to need, to be made in one go. e.names[0] (e.nnames[0]): users
                         about to bind, or to send their first presence with their roster not
                         in memory; e.names[1]: users whose initial presence is in the
                         batch. A list has no name or at least two */
  HOOK_COUNT
} mod_hook_t;

typedef struct mod_event {
  worker_t *w;
  user_t *u;            /* the account concerned: sender (_OUT), recipient (_IN) */
  session_t *s;         /* the session concerned, if any */
  const char *from;
  const char *to;
  xnode_t *st;          /* the stanza, if any (it may be changed: clear w->frame_tree) */
  const bus_addr_t *skip; /* _IN of a bounced message: the connection it came back from */
  session_t *const *got;  /* HOOK_MESSAGE_DELIVERED: the sessions that got the message */
  size_t ngot;
  uint16_t flags;         /* _IN: the bus frame's flags (BUS_F_DIRECTED: directed presence) */
  const bus_frame_t *frame; /* HOOK_FRAME */
  bus_msg_t *batch;       /* HOOK_BATCH_BEGIN: the batch's frames (bus_msg_frame reads one) */
  const char *const *names[2]; /* HOOK_BATCH_AHEAD */
  size_t nnames[2];
} mod_event_t;

enum { MOD_OK = 0, MOD_STOP = 1 };
typedef int (*mod_hook_fn)(mod_event_t *e);

typedef struct mod_identity {
  const char *category, *type, *name; /* category NULL ends the list */
} mod_identity_t;

typedef struct module {
  const char *name;
  const mod_identity_t *server_identities; /* disco#info of the server */
  const char *const *server_features;      /* NULL-terminated */
  const char *const *account_features;     /* disco#info of an account's bare JID */
  const mod_iq_t *iqs;                     /* ends with ns NULL */
  mod_hook_fn hooks[HOOK_COUNT];
  void *(*worker_init)(worker_t *w);       /* the module's per-worker state */
  void (*worker_free)(worker_t *w, void *state);
  void (*session_free)(void *state);       /* frees its per-session state */
  void (*user_free)(void *state);          /* frees its per-account state */
  /* The module's per-router state, shared by all the workers (e.g. a thread of its own
   * fed by them): router_init runs on the main thread before any worker_init (NULL is
   * a valid state), router_free after every worker_free, the workers' threads joined.
   * Whatever the workers touch in it is theirs to lock. */
  void *(*router_init)(router_t *r);
  void (*router_free)(router_t *r, void *state);
} module_t;

/* modules.c: the table, and the core's calls into it */
extern const module_t *const modules[];
extern const size_t nmodules;

void modules_worker_init(worker_t *w);
void modules_worker_free(worker_t *w);
void modules_router_init(router_t *r);
void modules_router_free(router_t *r);
/* A module's per-router state (what its router_init returned). */
void *mod_router_state(router_t *r, const module_t *m);
/* Runs the hooks of point h in table order until one returns MOD_STOP (returned). The
 * hooks of each point are listed once, at the first modules_worker_init: a point costs
 * one loop over the modules that hook it, none for the others. */
int modules_hook(mod_hook_t h, mod_event_t *e);
/* Dispatches an IQ get/set addressed at 'at' (MOD_AT_*) to the module that handles it;
 * none: <service-unavailable/>. An IQ result or error is absorbed. */
void modules_iq(worker_t *w, unsigned at, user_t *u, session_t *s, const char *from, const char *to, xnode_t *iq);
/* A module's state on this worker (what its worker_init returned). */
void *mod_worker_state(worker_t *w, const module_t *m);
/* A module's slot on a session (NULL until set); freed with the session by its
 * session_free. */
void **mod_session_state(session_t *s, const module_t *m);
/* The same slot's value, NULL when unset; never allocates (for per-message checks). */
void *mod_session_get(const session_t *s, const module_t *m);
void modules_session_free(session_t *s);
/* A module's slot on an account in memory (NULL until set); freed with the user_t by
 * its user_free. A user_t without sessions lives for one frame only (worker.c): state
 * kept across frames belongs to accounts with a session. */
void **mod_user_state(user_t *u, const module_t *m);
/* The same slot's value, NULL when unset; never allocates. */
void *mod_user_get(const user_t *u, const module_t *m);
void modules_user_free(user_t *u);

/* Replies to c's IQ with a result carrying payload (may be NULL), or with an error. */
void mod_iq_result(mod_iq_ctx_t *c, xnode_t *payload);
void mod_iq_error(mod_iq_ctx_t *c, const char *type, const char *cond);
/* 1 when 'from' (a full or bare JID) may see u's presence: u itself, or a contact with
 * subscription 'from' or 'both' in u's roster (RFC 6121 §3). Defined by mod_roster.c. */
int mod_is_contact(worker_t *w, user_t *u, const char *from);

/* Documents of an account holding one element (store_doc_*: vCards, private XML). */
/* Bytes of el's XML text as the server writes it (its namespace declared on it). */
size_t mod_xml_len(const xnode_t *el);
/* Stores el for bare under (kind, key) in the stored (encoded) form, within
 * limits.max_account_doc_bytes: 0, XMPP_ELIMIT, XMPP_ENOENT (no account) or XMPP_EIO.
 * The caller checks limits.max_doc_bytes (mod_xml_len) first. */
int mod_doc_put(worker_t *w, const char *bare, const char *kind, const char *key, const xnode_t *el);
/* The element stored under (kind, key), decoded into the frame arena, or NULL with *rc
 * XMPP_ENOENT (none) or another code (a storage failure, a document that does not
 * decode). */
xnode_t *mod_doc_get(worker_t *w, const char *bare, const char *kind, const char *key, int *rc);
/* Answers c with the stanza error for a failed store call: XMPP_ELIMIT <not-allowed/>
 * (the account's budget is spent), anything else <internal-server-error/> (wait). */
void mod_iq_store_error(mod_iq_ctx_t *c, int rc);

/* The modules switched off on the domain of the normalised JID jid (bit i = modules[i];
 * 0 for a domain not hosted). Any thread. */
uint64_t modules_disabled_for(const char *jid);

#endif

/* Offline messages (XEP-0160), with XEP-0203 delay stamps.
 *
 * A message for an account with no available resource of non-negative priority is
 * stored as an encoded bus frame (addresses + compact stanza), so delivering it needs
 * no XML parsing. Beyond limits.offline_max messages or limits.offline_max_bytes bytes
 * the sender gets <service-unavailable/> (XEP-0160 §5): nothing is dropped silently.
 *
 * Delivery, when a resource of the account sends initial presence with non-negative
 * priority, is paced by what the client takes: the queue goes to that one session window
 * by window (oldest first, stamped with a XEP-0203 <delay/>; a window is at most
 * OFFLINE_WINDOW_MSGS messages and a quarter of limits.max_pending_out bytes). Each
 * DELIVER carries BUS_F_OFFLINE and the message's store id; the edge answers
 * BUS_OFFLINE_ACK with the last id its client took (written to the socket, or with
 * XEP-0198 acknowledged by the client), and only then are those messages removed from
 * the store and the next window sent. So a large queue never fills the connection's
 * output (a reading client is never cut off as slow), and a connection lost mid-way
 * loses nothing: what it did not take is still stored (a DELIVER or XEP-0198 BOUNCE of
 * such a message is dropped by the worker: the store still has it) and goes to another
 * available resource, or at the next log-in. A message written but not yet confirmed
 * when the connection dies is delivered again then (at least once).
 *
 * Hooks: HOOK_MESSAGE_OFFLINE stores, HOOK_PRESENCE_INITIAL starts a delivery,
 * HOOK_FRAME takes BUS_OFFLINE_ACK, HOOK_SESSION_CLOSE hands the rest of a delivery to
 * another resource, HOOK_BATCH_AHEAD/_END read the batch's queue lengths ahead. Its
 * state: per account, the delivery in progress (off_user_t); per worker, the queues the
 * batch found empty. */
#include "router/module.h"

#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"

extern const module_t mod_offline;

/* Per worker: bares whose offline queue this batch found empty (offline_prefetch). */
typedef struct {
  strmap_t *empty;
} off_worker_t;

/* Per account: the delivery in progress. */
typedef struct {
  session_t *to;   /* offline messages are being delivered to it */
  int64_t last;    /* store id of the last message of the window it was sent */
} off_user_t;

static off_worker_t *wstate(worker_t *w) { return mod_worker_state(w, &mod_offline); }

static off_user_t *ustate(user_t *u) {
  void **slot = mod_user_state(u, &mod_offline);
  if (!*slot) *slot = xcalloc(1, sizeof(off_user_t));
  return *slot;
}

static int offline_store(worker_t *w, const char *from, const char *to, const xnode_t *st) {
  buf_t fr;
  buf_init(&fr);
  w_encode_stored(from, to, st, &fr);
  off_worker_t *ow = wstate(w);
  if (ow->empty) strmap_del(ow->empty, to); /* not empty any more */
  int rc = store_offline_push(w->store, to, (const char *)fr.data, fr.len, (unsigned)w->cfg->offline_max,
                              (size_t)w->cfg->offline_max_bytes);
  buf_free(&fr);
  if (rc == XMPP_ELIMIT) log_info("offline queue of %s is full", to);
  else if (rc != 0) log_error("offline queue of %s: write failed", to);
  return rc;
}

#define OFFLINE_WINDOW_MSGS 64

typedef struct {
  worker_t *w;
  session_t *s;
  int64_t last;      /* store id of the last message read */
  int64_t last_sent; /* ... and of the last one sent (0: none) */
} window_t;

static void window_cb(int64_t id, const char *data, size_t len, int64_t stamp, void *ud) {
  window_t *x = ud;
  worker_t *w = x->w;
  bus_frame_t f;
  size_t used;
  xnode_t *st;
  x->last = id;
  if (bus_frame_decode((const uint8_t *)data, len, &f, &used) != 0 ||
      xnode_decode(&w->arena, f.payload, f.payload_len, 256, &st) != 0) {
    log_error("offline message %lld undecodable, skipped", (long long)id);
    return; /* removed with the next confirmation (or below, if the window has nothing else) */
  }
  char ts[32];
  time_t t = (time_t)stamp;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  xnode_t *d = xnode_add(&w->arena, st, "delay", NS_DELAY);
  xnode_set_attr(&w->arena, d, "from", w_domain_of(w, x->s->full)); /* the account's server */
  xnode_set_attr(&w->arena, d, "stamp", ts);
  xnode_add_text(&w->arena, d, "Offline Storage", 15);
  char *from = arena_strndup(&w->arena, f.from, f.from_len);
  w_deliver_arg(w, x->s, from, st, BUS_F_OFFLINE, id);
  x->last_sent = id;
}

/* Sends o->to the next window of u's queue (ids > after); ends the delivery when the
 * queue is empty. */
static void send_window(worker_t *w, user_t *u, off_user_t *o, int64_t after) {
  size_t bytes = (size_t)w->cfg->max_pending_out / 4;
  for (;;) {
    window_t x = {w, o->to, after, 0};
    int n = store_offline_peek(w->store, u->bare, after, OFFLINE_WINDOW_MSGS, bytes, window_cb, &x);
    if (n < 0) log_error("offline queue of %s: read failed", u->bare);
    if (n <= 0) break;
    if (x.last_sent) {
      o->last = x.last_sent;
      return; /* the edge confirms it: offline_ack */
    }
    /* nothing in this window could be sent: drop it and read on */
    store_offline_remove(w->store, u->bare, x.last);
    after = x.last;
  }
  o->to = NULL;
  o->last = 0;
}

/* BUS_OFFLINE_ACK: the client took the offline messages up to id f->arg. */
static void offline_ack(worker_t *w, const bus_frame_t *f) {
  char *full = arena_strndup(&w->arena, f->from, f->from_len);
  user_t *u = user_get(w, w_bare(w, full));
  if (f->arg <= 0) return;
  /* taken by a client of this account, in queue order: everything up to it is done
   * (also when it comes from a session that has ended since) */
  if (store_offline_remove(w->store, u->bare, f->arg) != 0) log_error("offline queue of %s: remove failed", u->bare);
  session_t *s = user_session(u, full);
  off_user_t *o = mod_user_get(u, &mod_offline);
  if (s && o && s == o->to && bus_addr_eq(&s->at, &f->src) && f->arg == o->last) send_window(w, u, o, f->arg);
}

/* s is ending: the rest of the queue goes to another available resource, if any. */
static void offline_session_gone(worker_t *w, user_t *u, session_t *s) {
  off_user_t *o = mod_user_get(u, &mod_offline);
  if (!o || o->to != s) return;
  o->to = NULL;
  o->last = 0;
  /* what s did not confirm is still stored: another available resource takes it */
  for (session_t *n = u->sessions; n; n = n->next)
    if (n != s && n->available && n->priority >= 0) {
      o->to = n;
      send_window(w, u, o, 0);
      return;
    }
}

/* The batch read these users' queue lengths (one round trip): those found empty need
 * no read at their initial presence. Only this worker writes a user's queue, and its
 * pushes clear the mark (offline_store); the marks last one batch. */
static void offline_prefetch(worker_t *w, const char *const *bares, size_t n) {
  int *counts = xcalloc(n, sizeof *counts);
  if (store_offline_count_many(w->store, bares, n, counts) == 0) {
    off_worker_t *ow = wstate(w);
    if (!ow->empty) ow->empty = strmap_new();
    size_t empty = 0;
    for (size_t i = 0; i < n; i++)
      if (counts[i] == 0) {
        strmap_put(ow->empty, bares[i], (void *)1);
        empty++;
      }
    log_debug("router %d: %zu offline queues read ahead in one batch, %zu empty", w->index, n, empty);
  }
  xfree(counts);
}

static void offline_prefetch_end(worker_t *w) {
  off_worker_t *ow = wstate(w);
  strmap_free(ow->empty, NULL);
  ow->empty = NULL;
}

/* Starts delivering u's offline queue to s (initial presence, priority >= 0), window by
 * window as the edge confirms what the client took. */
static void offline_deliver(worker_t *w, user_t *u, session_t *s) {
  off_user_t *o = mod_user_get(u, &mod_offline);
  if (o && o->to) return; /* already going to one of its resources */
  off_worker_t *ow = wstate(w);
  if (ow->empty && strmap_del(ow->empty, u->bare)) return; /* read this batch: empty */
  o = ustate(u);
  o->to = s;
  send_window(w, u, o, 0);
}

static int message_offline(mod_event_t *e) {
  return offline_store(e->w, e->from, e->to, e->st) == 0 ? MOD_STOP : MOD_OK;
}

static int presence_initial(mod_event_t *e) {
  if (e->s->priority >= 0) offline_deliver(e->w, e->u, e->s);
  return MOD_OK;
}

static int on_session_close(mod_event_t *e) {
  offline_session_gone(e->w, e->u, e->s);
  return MOD_OK;
}

static int frame(mod_event_t *e) {
  if (e->frame->kind != BUS_OFFLINE_ACK) return MOD_OK;
  offline_ack(e->w, e->frame);
  return MOD_STOP;
}

static int batch_ahead(mod_event_t *e) {
  if (e->nnames[1]) offline_prefetch(e->w, e->names[1], e->nnames[1]);
  return MOD_OK;
}

static int batch_end(mod_event_t *e) {
  offline_prefetch_end(e->w);
  return MOD_OK;
}

static void user_free(void *state) { xfree(state); }

static void *worker_init(worker_t *w) {
  (void)w;
  return xcalloc(1, sizeof(off_worker_t));
}

static void worker_free(worker_t *w, void *state) {
  (void)w;
  off_worker_t *ow = state;
  if (ow) strmap_free(ow->empty, NULL);
  xfree(ow);
}

static const char *const features[] = {NS_OFFLINE, NS_DELAY, NULL};

const module_t mod_offline = {
    .name = "offline",
    .server_features = features,
    .hooks = {[HOOK_MESSAGE_OFFLINE] = message_offline,
              [HOOK_PRESENCE_INITIAL] = presence_initial,
              [HOOK_SESSION_CLOSE] = on_session_close,
              [HOOK_FRAME] = frame,
              [HOOK_BATCH_AHEAD] = batch_ahead,
              [HOOK_BATCH_END] = batch_end},
    .worker_init = worker_init,
    .worker_free = worker_free,
    .user_free = user_free,
};

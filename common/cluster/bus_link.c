/* TCP bus links (see bus_link.h and docs/cluster.md, "TCP bus links").
 *
 * Structure: a bus_link_t (logical link to one peer node: queue, counters, timers) and,
 * at most one at a time, a link_conn_t (one TCP connection: socket, heartbeat timer,
 * read state). A connection that fails detaches from its link; the link keeps its queue.
 *
 * Outbound queue: one FIFO of bus_msg_t, in three regions
 *   [head .. n_written)            written on this connection, not yet acknowledged
 *   [.. + n_inflight)              in the one uv_write in flight
 *   [unsent .. tail]               not yet written
 * Data frames are numbered implicitly: head has sequence number head_seq. The peer
 * acknowledges a cumulative count; acknowledged written frames are freed. */
#include "common/cluster/bus_link.h"

#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/cluster/bus_link_tls.h"
#include "common/err.h"
#include "common/listener.h"
#include "common/log.h"

#define RBUF_SIZE 65536
#define WRITE_MAX_BUFS 1024
#define WRITE_MAX_BYTES (4u << 20)
#define ACK_EVERY_BYTES (256u << 10)
#define ACK_EVERY_FRAMES 1024
#define CTRL_PENDING_MAX 4  /* heartbeats / acks are skipped while this many are unwritten */
#define HELLO_MAX_BODY 256  /* before the handshake, no frame may be larger */

enum { C_CONNECTING, C_HELLO, C_UP, C_CLOSING };

typedef struct link_conn link_conn_t;

struct link_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;        /* connect/HELLO timeout, heartbeat, graceful-close timeout */
  uv_connect_t creq;
  uv_write_t wreq;         /* the data write in flight */
  uv_shutdown_t sreq;
  uv_loop_t *loop;
  bus_link_t *link;        /* NULL before HELLO (accepted) and after detaching */
  bus_listener_t *ls;      /* accepted and waiting for HELLO */
  link_conn_t *prev, *next; /* in ls->pending */
  int state;
  int writing;
  int ctrl_pending;
  int handles;             /* libuv handles not yet closed */
  int handles_closing;
  int abrupt;              /* close without flushing anything (bus_link_reset) */
  int ack_wanted;          /* an ACK was skipped (too many control writes pending): retry */
  int pong_wanted;         /* a PING arrived in this read: answer once the batch is delivered */
  int ping_out;            /* we asked for an acknowledgement and wait for the PONG */
  uint32_t hb_ms, dead_ms;
  uint64_t started, last_rx;
  int got_bytes;           /* anything read at all (a port probe sends nothing) */
  uint8_t hdr[BUS_HEADER_LEN];
  size_t hdr_len;
  bus_msg_t *part;         /* frame being assembled */
  size_t part_have;
  bus_msg_t *batch, *batch_tail; /* complete data frames of this read, not yet delivered */
  uint64_t batch_n, batch_bytes;
  size_t ack_bytes;
  unsigned ack_frames;
  bus_msg_t *orphans;      /* frames of a write in flight when the link let go of them */
  char peer[64];
  char err[160];
  link_tls_t *tls;         /* NULL: plain TCP */
  int tls_done;            /* handshake complete */
  buf_t tout;              /* ciphertext produced, not yet handed to libuv */
  uint8_t *cbuf;           /* ciphertext read buffer (plaintext goes to rbuf) */
  uint8_t *wdata;          /* ciphertext of the data write in flight */
  uint8_t rbuf[RBUF_SIZE];
};

struct bus_link {
  uv_loop_t *loop;
  bus_link_config_t cfg;
  bus_link_cbs_t cbs;
  void *ud;
  uint16_t self_node, peer_node;
  uint8_t self_role, peer_role;
  int client;
  struct sockaddr_storage addr;
  char name[64];           /* host:port (client) */
  bus_listener_t *ls;      /* server side: the listener that holds it */
  link_conn_t *conn;
  int up, closing, paused, writable, handles;
  int corked;              /* bus_link_cork: bus_link_send queues, bus_link_uncork writes */
  uint64_t inc, peer_inc;  /* incarnations: random, fixed for a link object's life */
  uint64_t rx_count;       /* data frames delivered from peer_inc */
  int peer_restarted;      /* the last HELLO came from a new incarnation of a known peer */
  uint64_t peer_node_inc;  /* the peer node's incarnation (its HELLO's payload; 0: none) */
  /* outbound queue */
  bus_msg_t *head, *tail, *unsent;
  size_t count, bytes, n_written, n_inflight;
  uint64_t head_seq, peer_acked;
  uint64_t *stamps;        /* enqueue time of each queued frame, ring parallel to the queue */
  size_t st_cap, st_head;
  uint64_t down_since;
  uv_timer_t retry_timer, expire_timer;
  link_tls_ctx_t *tls;     /* client side with TLS */
  unsigned attempt;
  uint64_t rng;
  bus_link_stats_t st;
};

struct bus_listener {
  uv_loop_t *loop;
  listener_t lst; /* common/listener.c: calm at the open-file limit */
  bus_link_config_t cfg;
  bus_link_cbs_t cbs;
  void *ud;
  uint16_t self_node;
  uint8_t self_role;
  int port;
  bus_link_t **links;
  size_t nlinks, cap;
  link_conn_t *pending;
  link_tls_ctx_t *tls;
};

static void conn_fail(link_conn_t *c, const char *why);
static void flush(bus_link_t *l);
static void ask_ack(bus_link_t *l);
static void start_connect(bus_link_t *l);
static void on_expire(uv_timer_t *t);
static void on_retry(uv_timer_t *t);

void bus_link_config_default(bus_link_config_t *cfg) {
  cfg->heartbeat_ms = 1000;
  cfg->dead_after = 3;
  cfg->backoff_min_ms = 100;
  cfg->backoff_max_ms = 10000;
  cfg->max_wait_ms = 5000;
  cfg->queue_max_bytes = 64u << 20;
  cfg->high_water = 8u << 20;
  cfg->low_water = 2u << 20;
  cfg->max_body = 16u << 20;
  cfg->tls_cert = cfg->tls_key = cfg->tls_ca = NULL;
}

static void config_fix(bus_link_config_t *c, const bus_link_config_t *in) {
  if (in) *c = *in;
  else bus_link_config_default(c);
  if (c->heartbeat_ms == 0) c->heartbeat_ms = 1000;
  if (c->dead_after < 2) c->dead_after = 2;
  if (c->backoff_min_ms == 0) c->backoff_min_ms = 1;
  if (c->backoff_max_ms < c->backoff_min_ms) c->backoff_max_ms = c->backoff_min_ms;
  if (c->max_body == 0 || c->max_body > BUS_MAX_BODY) c->max_body = BUS_MAX_BODY;
  if (c->low_water > c->high_water) c->low_water = c->high_water;
}

/* ---- the outbound queue ----------------------------------------------------------- */

static void q_push(bus_link_t *l, bus_msg_t *m) {
  if (l->count == l->st_cap) {
    size_t cap = l->st_cap ? l->st_cap * 2 : 64;
    uint64_t *s = xmalloc(cap * sizeof *s);
    for (size_t i = 0; i < l->count; i++) s[i] = l->stamps[(l->st_head + i) & (l->st_cap - 1)];
    xfree(l->stamps);
    l->stamps = s;
    l->st_cap = cap;
    l->st_head = 0;
  }
  l->stamps[(l->st_head + l->count) & (l->st_cap - 1)] = uv_now(l->loop);
  m->next = NULL;
  if (l->tail) l->tail->next = m;
  else l->head = m;
  l->tail = m;
  if (!l->unsent) l->unsent = m;
  l->count++;
  l->bytes += m->len;
}

static bus_msg_t *q_pop(bus_link_t *l) {
  bus_msg_t *m = l->head;
  l->head = m->next;
  if (!l->head) l->tail = NULL;
  if (l->unsent == m) l->unsent = m->next;
  l->st_head = (l->st_head + 1) & (l->st_cap - 1);
  l->count--;
  l->bytes -= m->len;
  l->head_seq++;
  m->next = NULL;
  if (l->count == 0 && l->st_cap > 4096) { /* a burst is over: give its ring back */
    xfree(l->stamps);
    l->stamps = NULL;
    l->st_cap = l->st_head = 0;
  }
  return m;
}

static uint64_t q_deadline(const bus_link_t *l) {
  uint64_t t = l->stamps[l->st_head];
  if (t < l->down_since) t = l->down_since;
  return t + l->cfg.max_wait_ms;
}

static void check_water(bus_link_t *l) {
  int w = l->writable;
  if (w && l->bytes >= l->cfg.high_water) w = 0;
  else if (!w && l->bytes <= l->cfg.low_water) w = 1;
  if (w == l->writable) return;
  l->writable = w;
  if (l->cbs.on_writable && !l->closing) l->cbs.on_writable(l, l->ud, w);
}

static void overflow(bus_link_t *l, bus_msg_t *m) {
  l->st.frames_overflowed++;
  l->cbs.on_overflow(l, l->ud, m);
}

/* Frees written frames the peer has acknowledged. */
static void free_acked(bus_link_t *l) {
  while (l->n_written && l->head_seq <= l->peer_acked) {
    bus_msg_free(q_pop(l));
    l->n_written--;
  }
}

/* ---- the down-wait bound ---------------------------------------------------------- */

static void arm_expiry(bus_link_t *l) {
  if (l->closing) return;
  if (l->up || !l->count) {
    uv_timer_stop(&l->expire_timer);
    return;
  }
  uint64_t now = uv_now(l->loop), d = q_deadline(l);
  uv_timer_start(&l->expire_timer, on_expire, d > now ? d - now : 0, 0);
}

static void on_expire(uv_timer_t *t) {
  bus_link_t *l = t->data;
  uint64_t now = uv_now(l->loop);
  uint64_t n = 0;
  while (l->count && !l->up && !l->closing && q_deadline(l) <= now) {
    overflow(l, q_pop(l));
    n++;
  }
  if (n)
    log_warn("bus link %s (node %u): down for %u ms, %llu queued frame(s) handed back as undeliverable",
             l->name, l->peer_node, l->cfg.max_wait_ms, (unsigned long long)n);
  if (l->closing) return;
  check_water(l);
  arm_expiry(l);
}

/* ---- writing ---------------------------------------------------------------------- */

typedef struct ctrl_write {
  uv_write_t req;
  link_conn_t *c;
  size_t len;
  uint8_t data[];
} ctrl_write_t;

static void send_count(link_conn_t *c, uint8_t kind, uint64_t rx);

static void ctrl_done(uv_write_t *req, int status) {
  ctrl_write_t *w = req->data;
  link_conn_t *c = w->c;
  xfree(w);
  c->ctrl_pending--;
  if (c->ack_wanted && status == 0 && c->state == C_UP && c->link) send_count(c, BUS_LINK_ACK, c->link->rx_count);
}

/* Writes a copy of p[0..len) (control frames, TLS handshake and records). */
static void write_copy(link_conn_t *c, const uint8_t *p, size_t len) {
  if (!len) return;
  ctrl_write_t *w = xmalloc(sizeof *w + len);
  memcpy(w->data, p, len);
  w->len = len;
  w->c = c;
  w->req.data = w;
  uv_buf_t ub = uv_buf_init((char *)w->data, (unsigned)w->len);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, ctrl_done) != 0) {
    xfree(w);
    return;
  }
  c->ctrl_pending++;
}

/* Hands whatever TLS produced (handshake, tickets, records) to libuv. */
static void tls_flush(link_conn_t *c) {
  write_copy(c, c->tout.data, c->tout.len);
  c->tout.len = 0;
}

static void send_ctrl(link_conn_t *c, const bus_frame_t *f) {
  buf_t b;
  buf_init(&b);
  bus_frame_encode(f, &b);
  if (c->tls) {
    if (link_tls_write(c->tls, b.data, b.len) == 0) tls_flush(c);
  } else {
    write_copy(c, b.data, b.len);
  }
  buf_free(&b);
}

/* PING, PONG or ACK carrying the cumulative count of frames delivered. */
static void send_count(link_conn_t *c, uint8_t kind, uint64_t rx) {
  if (c->ctrl_pending >= CTRL_PENDING_MAX) { /* the peer is not reading (or we sent a burst) */
    if (kind != BUS_LINK_PING) c->ack_wanted = 1; /* sent when one of them completes */
    return;
  }
  c->ack_wanted = 0;
  bus_frame_t f = {0};
  f.kind = kind;
  f.arg = (int64_t)rx;
  send_ctrl(c, &f);
  c->ack_bytes = 0;
  c->ack_frames = 0;
}

static void send_hello(link_conn_t *c, uint16_t node, uint8_t role, const bus_link_t *l) {
  bus_frame_t f = {0};
  f.kind = BUS_LINK_HELLO;
  f.src.node = node;
  f.src.thread = role;
  f.src.conn = l ? l->inc : 0;
  f.dst.thread = BUS_LINK_PROTO;
  f.dst.conn = l ? l->peer_inc : 0;
  f.arg = l ? (int64_t)l->rx_count : 0;
  uint64_t ni = l ? l->cfg.node_inc : c->ls ? c->ls->cfg.node_inc : 0;
  uint8_t inc[8];
  if (ni) {
    for (int i = 0; i < 8; i++) inc[i] = (uint8_t)(ni >> (8 * i));
    f.payload = inc;
    f.payload_len = sizeof inc;
  }
  send_ctrl(c, &f);
}

static void on_write(uv_write_t *req, int status) {
  link_conn_t *c = req->data;
  c->writing = 0;
  xfree(c->wdata);
  c->wdata = NULL;
  while (c->orphans) {
    bus_msg_t *m = c->orphans;
    c->orphans = m->next;
    bus_msg_free(m);
  }
  bus_link_t *l = c->link;
  if (!l) return;
  if (status < 0) {
    conn_fail(c, uv_strerror(status));
    return;
  }
  l->n_written += l->n_inflight;
  l->n_inflight = 0;
  free_acked(l);
  flush(l);
  check_water(l);
  ask_ack(l);
}

/* Over the high watermark with written frames unacknowledged: ask for an ACK now rather
 * than wait for the peer's thresholds or the next heartbeat. */
static void ask_ack(bus_link_t *l) {
  link_conn_t *c = l->conn;
  if (c && !l->writable && l->n_written && !c->ping_out && c->state == C_UP && c->ctrl_pending < CTRL_PENDING_MAX) {
    send_count(c, BUS_LINK_PING, l->rx_count);
    c->ping_out = 1;
  }
}

/* Writes what is unsent: what the kernel takes at once is written here (uv_try_write), and
 * only a rest it does not take goes through uv_write and on_write. A write that libuv
 * completes at once still costs its pending callback and, in libuv 1.44, an epoll_ctl
 * when the socket is re-registered (uv__drain); a link writes at every batch. */
static void flush(bus_link_t *l) {
  for (;;) {
    link_conn_t *c = l->conn;
    if (!c || c->state != C_UP || c->writing || !l->unsent || l->corked) return;
    uv_buf_t bufs[WRITE_MAX_BUFS];
    unsigned n = 0;
    size_t bytes = 0;
    bus_msg_t *first = l->unsent, *m;
    for (m = first; m && n < WRITE_MAX_BUFS && bytes < WRITE_MAX_BYTES; m = m->next) {
      bufs[n++] = uv_buf_init((char *)m->data, (unsigned)m->len);
      bytes += m->len;
    }
    unsigned nbufs = n;
    size_t total = bytes;
    if (c->tls) { /* gathered (full records, not one per small frame), then encrypted into
                    one buffer that this write owns */
      buf_t pt;
      buf_init(&pt);
      buf_reserve(&pt, bytes);
      for (unsigned i = 0; i < n; i++) buf_append(&pt, bufs[i].base, bufs[i].len);
      int bad = link_tls_write(c->tls, pt.data, pt.len);
      buf_free(&pt);
      if (bad) {
        conn_fail(c, "TLS write failed");
        return;
      }
      c->wdata = buf_steal(&c->tout, &total);
      bufs[0] = uv_buf_init((char *)c->wdata, (unsigned)total);
      nbufs = 1;
    }
    int rc = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
    if (rc < 0 && rc != UV_EAGAIN) {
      conn_fail(c, uv_strerror(rc));
      return;
    }
    size_t done = rc > 0 ? (size_t)rc : 0;
    l->unsent = m;
    l->st.frames_sent += n;
    l->st.bytes_sent += bytes;
    if (done == total) { /* all of it: written, as on_write would count it */
      xfree(c->wdata);
      c->wdata = NULL;
      l->n_written += n;
      free_acked(l);
      continue; /* more than one write's bounds were queued */
    }
    unsigned i = 0;
    while (done >= bufs[i].len) done -= bufs[i++].len;
    bufs[i].base += done;
    bufs[i].len -= done;
    l->n_inflight = n;
    c->wreq.data = c;
    rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs + i, nbufs - i, on_write);
    if (rc != 0) {
      conn_fail(c, uv_strerror(rc));
      return;
    }
    c->writing = 1;
    return;
  }
}

void bus_link_cork(bus_link_t *l) { l->corked = 1; }

void bus_link_uncork(bus_link_t *l) {
  if (!l->corked) return;
  l->corked = 0;
  if (!l->up) return;
  flush(l);
  check_water(l);
  ask_ack(l);
}

/* ---- connections ------------------------------------------------------------------ */

static void conn_free(link_conn_t *c) {
  xfree(c->part);
  link_tls_free(c->tls);
  buf_free(&c->tout);
  xfree(c->cbuf);
  xfree(c->wdata);
  while (c->batch) {
    bus_msg_t *m = c->batch;
    c->batch = m->next;
    bus_msg_free(m);
  }
  while (c->orphans) {
    bus_msg_t *m = c->orphans;
    c->orphans = m->next;
    bus_msg_free(m);
  }
  xfree(c);
}

static void on_conn_closed(uv_handle_t *h) {
  link_conn_t *c = h->data;
  if (--c->handles == 0) conn_free(c);
}

static void conn_close_handles(link_conn_t *c) {
  c->state = C_CLOSING;
  if (c->handles_closing) return;
  c->handles_closing = 1;
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_tick(uv_timer_t *t);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

static void on_shutdown(uv_shutdown_t *req, int status) {
  if (status < 0) conn_close_handles(req->data);
  /* else: our side is flushed and closed; on_read discards until the peer's EOF */
}

/* A lingering close: what is queued in libuv (a refusal HELLO, a final ACK) is written,
 * then our side is shut down, and what the peer still sends is read and discarded until
 * its EOF (or the timer). Closing with unread bytes would make the kernel send a reset,
 * which can destroy our last frames in the peer's receive buffer before it reads them. */
static void conn_linger(link_conn_t *c, uint32_t ms) {
  c->state = C_CLOSING;
  uv_timer_start(&c->timer, on_tick, ms, 0);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read); /* if paused; harmless otherwise */
  if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0) conn_close_handles(c);
}

/* Ends a connection: lingering when that is safe, i.e. when no data write is in flight
 * (its frames stay in the link's queue, which may free them), else at once. */
static void conn_end(link_conn_t *c) {
  if (c->handles_closing) return;
  if (c->writing || c->abrupt || c->state == C_CONNECTING) {
    conn_close_handles(c);
    return;
  }
  conn_linger(c, c->hb_ms);
}

static link_conn_t *conn_new(uv_loop_t *loop, uint32_t hb_ms, uint32_t dead_after) {
  link_conn_t *c = xcalloc(1, sizeof *c);
  c->loop = loop;
  uv_tcp_init(loop, &c->tcp);
  uv_timer_init(loop, &c->timer);
  c->tcp.data = c->timer.data = c->creq.data = c->wreq.data = c->sreq.data = c;
  c->handles = 2;
  c->hb_ms = hb_ms;
  c->dead_ms = hb_ms * dead_after;
  /* Called from bus_link_connect too, maybe long after the loop last ran (start-up work,
   * a blocking call): a stale uv_now would make the connect look timed out at the first
   * tick, before it had any chance. */
  uv_update_time(loop);
  c->started = c->last_rx = uv_now(loop);
  uv_timer_start(&c->timer, on_tick, hb_ms, hb_ms);
  return c;
}

static void pending_unlink(link_conn_t *c) {
  bus_listener_t *ls = c->ls;
  if (!ls) return;
  if (c->prev) c->prev->next = c->next;
  else ls->pending = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
  c->ls = NULL;
}

static void schedule_retry(bus_link_t *l) {
  uint64_t d = l->cfg.backoff_min_ms;
  for (unsigned i = 0; i < l->attempt && d < l->cfg.backoff_max_ms; i++) d *= 2;
  if (d > l->cfg.backoff_max_ms) d = l->cfg.backoff_max_ms;
  l->rng ^= l->rng << 13, l->rng ^= l->rng >> 7, l->rng ^= l->rng << 17;
  d = d / 2 + l->rng % (d - d / 2 + 1); /* jitter: [d/2, d] */
  l->attempt++;
  uv_timer_start(&l->retry_timer, on_retry, d, 0);
}

static void on_retry(uv_timer_t *t) {
  bus_link_t *l = t->data;
  if (!l->closing && !l->conn) start_connect(l);
}

/* The connection is gone (or refused); the link, if any, keeps its queue. */
static void conn_fail(link_conn_t *c, const char *why) {
  if (c->state == C_CLOSING) return;
  int was_up = c->state == C_UP;
  int expected = why[0] == '~'; /* check_peer's mark (bus_link.h) */
  why += expected;
  bus_link_t *l = c->link;
  if (l && was_up)
    log_warn("bus link %s (node %u) down: %s", c->peer, l->peer_node, why);
  else if (l && l->client)
    /* a first failure is common while a cluster starts (the peer has not seen this node
     * in the registry yet): a WARN only when it persists (about 3 s of back-off) */
    log_write(l->attempt == 0 ? LOG_INFO : l->attempt == 5 ? LOG_WARN : LOG_DEBUG, "bus link %s: %s (retrying%s)",
              c->peer, why, l->attempt == 5 ? ", 6th attempt" : "");
  else /* normal, not for an operator: a port probe (a health check) that sent nothing;
          * a peer the owner expects to accept at its next attempt (check_peer's '~') */
    log_write(!c->got_bytes || expected ? LOG_INFO : LOG_WARN, "bus link from %s refused: %s", c->peer, why);
  conn_end(c);
  pending_unlink(c);
  if (!l) return;
  c->link = NULL;
  l->conn = NULL;
  l->n_written = l->n_inflight = 0;
  l->unsent = l->head;
  l->up = 0;
  if (was_up) {
    l->down_since = uv_now(l->loop);
    l->st.downs++;
  }
  arm_expiry(l);
  if (l->client) schedule_retry(l);
  if (was_up && l->cbs.on_down) l->cbs.on_down(l, l->ud, why);
}

static const char *errf(link_conn_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *errf(link_conn_t *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->err, sizeof c->err, fmt, ap);
  va_end(ap);
  return c->err;
}

static bus_link_t *link_new(uv_loop_t *loop, const bus_link_config_t *cfg, const bus_link_cbs_t *cbs,
                            void *ud, uint16_t node, uint8_t role) {
  bus_link_t *l = xcalloc(1, sizeof *l);
  l->loop = loop;
  l->cfg = *cfg;
  l->cbs = *cbs;
  l->ud = ud;
  l->self_node = node;
  l->self_role = role;
  l->writable = 1;
  l->head_seq = 1;
  if (getrandom(&l->inc, sizeof l->inc, 0) != (ssize_t)sizeof l->inc) l->inc = uv_hrtime();
  l->inc |= 1;
  l->rng = l->inc;
  uv_update_time(loop); /* as in conn_new: the wait bound counts from now, not the last loop pass */
  l->down_since = uv_now(loop);
  uv_timer_init(loop, &l->retry_timer);
  uv_timer_init(loop, &l->expire_timer);
  l->retry_timer.data = l->expire_timer.data = l;
  l->handles = 2;
  return l;
}

/* The peer's HELLO: version checks, then resume from what it says it received. */
static const char *got_hello(link_conn_t *c, const bus_frame_t *f) {
  uint16_t node = f->src.node;
  uint8_t role = (uint8_t)f->src.thread;
  bus_listener_t *ls = c->ls;
  if (f->dst.thread != BUS_LINK_PROTO) {
    if (ls) send_hello(c, ls->self_node, ls->self_role, NULL); /* so the peer can say why too */
    return errf(c, "peer node %u speaks bus link protocol %u, this node %u", node, f->dst.thread,
                BUS_LINK_PROTO);
  }
  bus_link_t *l = c->link;
  uint16_t self = l ? l->self_node : ls->self_node;
  if (node == self) return errf(c, "peer claims this node's own id %u", node);
  uint64_t node_inc = 0;
  if (f->payload_len == 8)
    for (int i = 0; i < 8; i++) node_inc |= (uint64_t)f->payload[i] << (8 * i);
  const bus_link_cbs_t *cbs = l ? &l->cbs : &ls->cbs;
  const char *no = cbs->check_peer ? cbs->check_peer(l ? l->ud : ls->ud, node, role, node_inc) : NULL;
  if (no) return errf(c, "%snode %u refused: %s", no[0] == '~' ? "~" : "", node, no[0] == '~' ? no + 1 : no);
  if (ls) { /* server side: find or create the link of this peer node */
    for (size_t i = 0; i < ls->nlinks && !l; i++)
      if (ls->links[i]->peer_node == node) l = ls->links[i];
    if (!l) {
      l = link_new(ls->loop, &ls->cfg, &ls->cbs, ls->ud, ls->self_node, ls->self_role);
      l->peer_node = node;
      l->ls = ls;
      snprintf(l->name, sizeof l->name, "node %u", node);
      if (ls->nlinks == ls->cap) {
        ls->cap = ls->cap ? ls->cap * 2 : 8;
        ls->links = xrealloc(ls->links, ls->cap * sizeof *ls->links);
      }
      ls->links[ls->nlinks++] = l;
    }
    if (l->conn) conn_fail(l->conn, "replaced by a new connection from the same node");
    if (l->closing) return "link closed by its owner";
    pending_unlink(c);
    c->link = l;
    l->conn = c;
    l->st.connects++;
  } else if (l->peer_node && l->peer_node != node) {
    log_warn("bus link %s: peer is now node %u (was %u)", c->peer, node, l->peer_node);
  }
  l->peer_restarted = l->peer_inc && f->src.conn != l->peer_inc;
  if (f->src.conn != l->peer_inc) { /* a new incarnation of the peer: count afresh */
    l->peer_inc = f->src.conn;
    l->rx_count = 0;
  }
  uint64_t a = f->dst.conn == l->inc ? (uint64_t)f->arg : 0;
  if (a > l->head_seq - 1 + l->count) return "HELLO acknowledges frames never sent";
  while (l->count && l->head_seq <= a) bus_msg_free(q_pop(l)); /* delivered before the break */
  l->head_seq = a + 1; /* renumber what is left from what the peer expects next */
  l->peer_acked = a;
  l->n_written = l->n_inflight = 0;
  l->unsent = l->head;
  if (ls) send_hello(c, l->self_node, l->self_role, l);
  c->state = C_UP;
  l->up = 1;
  l->peer_node = node;
  l->peer_role = role;
  l->peer_node_inc = node_inc;
  l->attempt = 0;
  l->st.ups++;
  c->last_rx = uv_now(c->loop);
  uv_timer_stop(&l->expire_timer);
  log_info("bus link %s up: node %u <-> node %u (role %u), %zu frame(s) queued", c->peer, l->self_node,
           node, role, l->count);
  if (l->paused) uv_read_stop((uv_stream_t *)&c->tcp);
  if (l->cbs.on_up) l->cbs.on_up(l, l->ud, node, role);
  if (l->closing || c->state != C_UP) return NULL;
  flush(l);
  check_water(l);
  return NULL;
}

static const char *got_count(bus_link_t *l, int64_t arg) {
  uint64_t a = (uint64_t)arg;
  if (a < l->peer_acked || a > l->head_seq - 1 + l->n_written + l->n_inflight)
    return "acknowledgement out of range";
  l->peer_acked = a;
  free_acked(l);
  check_water(l);
  return NULL;
}

static const char *frame_done(link_conn_t *c) {
  bus_msg_t *m = c->part;
  c->part = NULL;
  c->part_have = 0;
  bus_frame_t f;
  size_t used;
  if (bus_frame_decode(m->data, m->len, &f, &used) != 0 || used != m->len) {
    bus_msg_free(m);
    return "corrupt frame";
  }
  if (c->state != C_UP) {
    const char *e = f.kind == BUS_LINK_HELLO ? got_hello(c, &f) : "first frame is not a HELLO";
    bus_msg_free(m);
    return e;
  }
  bus_link_t *l = c->link;
  const char *e = NULL;
  switch (f.kind) {
  case BUS_LINK_HELLO:
    e = "HELLO after the handshake";
    break;
  case BUS_LINK_PING: /* answered after this read's frames are delivered, so it counts them */
    e = got_count(l, f.arg);
    c->pong_wanted = 1;
    break;
  case BUS_LINK_PONG:
    c->ping_out = 0;
    e = got_count(l, f.arg);
    break;
  case BUS_LINK_ACK:
    e = got_count(l, f.arg);
    break;
  default: /* data: delivered at the end of this read */
    if (c->batch_tail) c->batch_tail->next = m;
    else c->batch = m;
    c->batch_tail = m;
    c->batch_n++;
    c->batch_bytes += m->len;
    c->ack_frames++;
    c->ack_bytes += m->len;
    return NULL;
  }
  bus_msg_free(m);
  return e;
}

/* h: at least the first byte of a header. */
static const char *check_version(link_conn_t *c, const uint8_t *h) {
  if (bus_hdr_version(h) == BUS_VERSION) return NULL;
  return errf(c, "peer speaks bus frame version %u, this node %u", bus_hdr_version(h), BUS_VERSION);
}

static const char *check_header(link_conn_t *c, const uint8_t *h) {
  uint32_t body = bus_hdr_body_len(h);
  uint32_t max = c->state == C_UP ? c->link->cfg.max_body : HELLO_MAX_BODY;
  uint8_t kind = bus_hdr_kind(h);
  const char *e = check_version(c, h);
  if (e) return e;
  if (!bus_kind_valid(kind)) return errf(c, "unknown frame kind %u", kind);
  if (kind >= BUS_MAP && !bus_kind_on_links(kind)) return errf(c, "frame kind %u is internal to a node", kind);
  if (body > max) return errf(c, "frame body of %u bytes over the limit of %u", body, max);
  return NULL;
}

static const char *parse(link_conn_t *c, const uint8_t *p, size_t n) {
  while (n > 0) {
    if (c->state == C_CLOSING) return NULL;
    if (!c->part) {
      const uint8_t *h;
      if (c->hdr_len == 0 && n >= BUS_HEADER_LEN) {
        h = p;
        p += BUS_HEADER_LEN;
        n -= BUS_HEADER_LEN;
      } else {
        size_t take = BUS_HEADER_LEN - c->hdr_len;
        if (take > n) take = n;
        memcpy(c->hdr + c->hdr_len, p, take);
        c->hdr_len += take;
        p += take;
        n -= take;
        if (c->hdr_len < BUS_HEADER_LEN) return check_version(c, c->hdr);
        h = c->hdr;
        c->hdr_len = 0;
      }
      const char *e = check_header(c, h);
      if (e) return e;
      size_t len = BUS_HEADER_LEN + (size_t)bus_hdr_body_len(h);
      c->part = xmalloc(sizeof(bus_msg_t) + len);
      c->part->next = NULL;
      c->part->len = len;
      memcpy(c->part->data, h, BUS_HEADER_LEN);
      c->part_have = BUS_HEADER_LEN;
    }
    size_t take = c->part->len - c->part_have;
    if (take > n) take = n;
    memcpy(c->part->data + c->part_have, p, take);
    c->part_have += take;
    p += take;
    n -= take;
    if (c->part_have == c->part->len) {
      const char *e = frame_done(c);
      if (e) return e;
    }
  }
  return NULL;
}

static void deliver(link_conn_t *c) {
  if (!c->batch) return;
  bus_msg_t *b = c->batch;
  bus_link_t *l = c->link;
  uint64_t n = c->batch_n, bytes = c->batch_bytes;
  c->batch = c->batch_tail = NULL;
  c->batch_n = c->batch_bytes = 0;
  if (!l || l->closing) { /* the owner closed the link during this read: not delivered, not acked */
    while (b) {
      bus_msg_t *m = b;
      b = m->next;
      bus_msg_free(m);
    }
    return;
  }
  l->rx_count += n;
  l->st.frames_received += n;
  l->st.bytes_received += bytes;
  l->cbs.on_frames(l, l->ud, b);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  link_conn_t *c = h->data;
  if (c->tls) {
    b->base = (char *)c->cbuf;
    b->len = RBUF_SIZE;
  } else if (c->part && c->state != C_CLOSING && c->part->len - c->part_have >= RBUF_SIZE) { /* a large frame: read straight into it */
    b->base = (char *)c->part->data + c->part_have;
    b->len = c->part->len - c->part_have;
  } else {
    b->base = (char *)c->rbuf;
    b->len = RBUF_SIZE;
  }
}

static void send_hello(link_conn_t *c, uint16_t node, uint8_t role, const bus_link_t *l);

/* Ciphertext in: the handshake first (the client then sends its HELLO), then records,
 * whose plaintext is parsed like a plain stream. */
static const char *tls_input(link_conn_t *c, const char *data, size_t len) {
  link_tls_feed(c->tls, data, len);
  const char *e = NULL;
  if (!c->tls_done) {
    int rc = link_tls_handshake(c->tls, &e);
    tls_flush(c);
    if (rc < 0) return e;
    if (rc == 0) return NULL;
    c->tls_done = 1;
    if (c->link && c->link->client) send_hello(c, c->link->self_node, c->link->self_role, c->link);
  }
  for (;;) {
    int n = link_tls_read(c->tls, c->rbuf, RBUF_SIZE);
    if (n < 0) {
      e = "TLS error or close";
      break;
    }
    if (n == 0) break;
    e = parse(c, c->rbuf, (size_t)n);
    if (e || c->state == C_CLOSING) break;
  }
  if (!c->handles_closing) tls_flush(c); /* post-handshake messages */
  return e;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  link_conn_t *c = s->data;
  if (c->state == C_CLOSING) { /* lingering: discard, close on EOF */
    if (nread < 0) conn_close_handles(c);
    return;
  }
  if (nread == 0) return;
  if (nread < 0) {
    conn_fail(c, nread == UV_EOF ? "connection closed by the peer" : uv_strerror((int)nread));
    return;
  }
  c->got_bytes = 1;
  c->last_rx = uv_now(c->loop);
  const char *e = NULL;
  if (c->tls) {
    e = tls_input(c, b->base, (size_t)nread);
  } else if (b->base != (char *)c->rbuf) {
    c->part_have += (size_t)nread;
    if (c->part_have == c->part->len) e = frame_done(c);
  } else {
    e = parse(c, c->rbuf, (size_t)nread);
  }
  deliver(c); /* whole frames before a bad one still count */
  if (e) {
    conn_fail(c, e);
    return;
  }
  if (c->state != C_UP || !c->link) return;
  if (c->pong_wanted) {
    c->pong_wanted = 0;
    send_count(c, BUS_LINK_PONG, c->link->rx_count);
  } else if (c->ack_bytes >= ACK_EVERY_BYTES || c->ack_frames >= ACK_EVERY_FRAMES) {
    send_count(c, BUS_LINK_ACK, c->link->rx_count);
  }
}

/* Bytes the kernel holds for us on c's socket (0 when unknown). */
static int unread_bytes(link_conn_t *c) {
  uv_os_fd_t fd;
  int n = 0;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0 || ioctl(fd, FIONREAD, &n) != 0) return 0;
  return n;
}

static void on_tick(uv_timer_t *t) {
  link_conn_t *c = t->data;
  uint64_t now = uv_now(c->loop);
  bus_link_t *l = c->link;
  switch (c->state) {
  case C_CONNECTING:
  case C_HELLO:
    if (now - c->started >= c->dead_ms)
      conn_fail(c, c->state == C_CONNECTING ? "connect timed out" : "no HELLO in time");
    break;
  case C_UP:
    /* while we do not read, the peer's silence proves nothing; our PINGs still go out.
     * Nor does it when its bytes wait unread: after a stall of this process (a stopped
     * process, a swap storm) libuv runs the timers before polling for I/O, so the
     * heartbeats the peer sent meanwhile are in the socket but not yet read. Read on. */
    if (!l->paused && now - c->last_rx >= c->dead_ms && unread_bytes(c) > 0) c->last_rx = now;
    if (!l->paused && now - c->last_rx >= c->dead_ms) {
      snprintf(c->err, sizeof c->err, "nothing from the peer for %llu ms", (unsigned long long)(now - c->last_rx));
      conn_fail(c, c->err);
    } else {
      send_count(c, BUS_LINK_PING, l->rx_count);
    }
    break;
  case C_CLOSING: /* a graceful close that the peer does not let finish */
    conn_close_handles(c);
    break;
  }
}

static void on_connect(uv_connect_t *req, int status) {
  link_conn_t *c = req->data;
  if (c->state == C_CLOSING) return;
  if (status < 0) {
    conn_fail(c, uv_strerror(status));
    return;
  }
  bus_link_t *l = c->link;
  uv_tcp_nodelay(&c->tcp, 1);
  c->state = C_HELLO;
  c->started = uv_now(c->loop);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (c->tls) { /* the HELLO follows the TLS handshake */
    const char *e = NULL;
    int rc = link_tls_handshake(c->tls, &e);
    tls_flush(c);
    if (rc < 0) conn_fail(c, e);
    return;
  }
  send_hello(c, l->self_node, l->self_role, l);
}

static void start_connect(bus_link_t *l) {
  link_conn_t *c = conn_new(l->loop, l->cfg.heartbeat_ms, l->cfg.dead_after);
  snprintf(c->peer, sizeof c->peer, "%s", l->name);
  if (l->tls) {
    c->tls = link_tls_new(l->tls, &c->tout);
    c->cbuf = xmalloc(RBUF_SIZE);
  }
  c->link = l;
  c->state = C_CONNECTING;
  l->conn = c;
  l->st.connects++;
  int rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&l->addr, on_connect);
  if (rc != 0) conn_fail(c, uv_strerror(rc));
}

/* ---- public: links ---------------------------------------------------------------- */

/* A numeric IPv4 or IPv6 address. 0 or -1. */
static int parse_addr(const char *host, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  return uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0 || uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0
             ? 0
             : -1;
}

bus_link_t *bus_link_connect(uv_loop_t *loop, const char *host, int port, uint16_t self_node,
                             uint8_t self_role, const bus_link_config_t *cfg,
                             const bus_link_cbs_t *cbs, void *ud) {
  struct sockaddr_storage ss;
  if (parse_addr(host, port, &ss) != 0) {
    log_error("bus link: bad address %s (numeric IPv4 or IPv6 expected)", host);
    return NULL;
  }
  bus_link_config_t c;
  config_fix(&c, cfg);
  link_tls_ctx_t *tls = NULL;
  if (c.tls_cert || c.tls_key || c.tls_ca) {
    char *err = NULL;
    tls = link_tls_ctx_new(0, c.tls_cert, c.tls_key, c.tls_ca, &err);
    if (!tls) {
      log_error("bus link to %s:%d: %s", host, port, err);
      xfree(err);
      return NULL;
    }
  }
  bus_link_t *l = link_new(loop, &c, cbs, ud, self_node, self_role);
  l->tls = tls;
  l->client = 1;
  l->addr = ss;
  snprintf(l->name, sizeof l->name, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, port);
  start_connect(l);
  return l;
}

int bus_link_send(bus_link_t *l, bus_msg_t *m) {
  if (m->len < BUS_HEADER_LEN || !bus_kind_on_links(bus_hdr_kind(m->data)) || /* control and node-internal */
      m->len - BUS_HEADER_LEN > l->cfg.max_body) { /* the peer would refuse it (same config) */
    overflow(l, m);
    return XMPP_EINVAL;
  }
  if (l->closing || l->bytes + m->len > l->cfg.queue_max_bytes) {
    overflow(l, m);
    return XMPP_ELIMIT;
  }
  q_push(l, m);
  if (l->up) flush(l);
  else if (l->count == 1) arm_expiry(l);
  check_water(l);
  ask_ack(l); /* after check_water: a write done at once crossed the high watermark */
  return 0;
}

int bus_link_writable(const bus_link_t *l) { return l->writable; }
int bus_link_is_up(const bus_link_t *l) { return l->up; }
uint16_t bus_link_peer(const bus_link_t *l) { return l->peer_node; }
int bus_link_peer_restarted(const bus_link_t *l) { return l->peer_restarted; }
uint64_t bus_link_peer_node_inc(const bus_link_t *l) { return l->peer_node_inc; }
void *bus_link_ud(const bus_link_t *l) { return l->ud; }
void bus_link_set_ud(bus_link_t *l, void *ud) { l->ud = ud; }

void bus_link_pause(bus_link_t *l) {
  if (l->paused) return;
  l->paused = 1;
  if (l->conn && l->conn->state == C_UP) uv_read_stop((uv_stream_t *)&l->conn->tcp);
}

void bus_link_resume(bus_link_t *l) {
  if (!l->paused) return;
  l->paused = 0;
  link_conn_t *c = l->conn;
  if (c && c->state == C_UP) {
    c->last_rx = uv_now(l->loop);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  }
}

void bus_link_thread_cleanup(void) { link_tls_thread_cleanup(); }

void bus_link_reset(bus_link_t *l) {
  if (!l->conn || l->closing) return;
  l->conn->abrupt = 1;
  conn_fail(l->conn, "reset by this node");
}

void bus_link_get_stats(const bus_link_t *l, bus_link_stats_t *st) {
  *st = l->st;
  st->queued_frames = l->count;
  st->queued_bytes = l->bytes;
}

static void on_link_closed(uv_handle_t *h) {
  bus_link_t *l = h->data;
  if (--l->handles) return;
  link_tls_ctx_free(l->tls);
  xfree(l->stamps);
  xfree(l);
}

void bus_link_close(bus_link_t *l) {
  if (l->closing) return;
  l->closing = 1;
  uv_close((uv_handle_t *)&l->retry_timer, on_link_closed);
  uv_close((uv_handle_t *)&l->expire_timer, on_link_closed);
  if (l->ls) { /* leave the listener's table */
    bus_listener_t *ls = l->ls;
    for (size_t i = 0; i < ls->nlinks; i++)
      if (ls->links[i] == l) {
        ls->links[i] = ls->links[--ls->nlinks];
        break;
      }
    l->ls = NULL;
  }
  link_conn_t *c = l->conn;
  if (c) {
    c->link = NULL;
    l->conn = NULL;
    if (c->state == C_UP) {
      /* Graceful: a final ACK says exactly what was delivered here; what was written is
       * the peer's (it reads it before the end of the stream); the rest is refused below. */
      bus_frame_t ack = {0};
      ack.kind = BUS_LINK_ACK;
      ack.arg = (int64_t)l->rx_count;
      send_ctrl(c, &ack);
      for (size_t i = 0; i < l->n_written; i++) bus_msg_free(q_pop(l));
      bus_msg_t **tail = &c->orphans;
      for (size_t i = 0; i < l->n_inflight; i++) {
        *tail = q_pop(l);
        tail = &(*tail)->next;
      }
      l->n_written = l->n_inflight = 0;
      conn_linger(c, c->dead_ms);
    } else {
      conn_close_handles(c);
    }
  }
  l->up = 0;
  uint64_t n = l->count;
  while (l->count) overflow(l, q_pop(l));
  if (n) log_info("bus link %s closed: %llu unsent frame(s) handed back", l->name, (unsigned long long)n);
}

/* ---- public: listener ------------------------------------------------------------- */

static void on_listener_closed(listener_t *l) {
  bus_listener_t *ls = l->data;
  link_tls_ctx_free(ls->tls);
  xfree(ls->links);
  xfree(ls);
}

static void on_full(listener_t *l, int err, unsigned shed, int paused) {
  (void)l;
  (void)paused;
  log_warn("bus listener: accept: %s (%u waiting connections closed)", strerror(err), shed);
}

static void on_accept(listener_t *l, int fd) {
  bus_listener_t *ls = l->data;
  link_conn_t *c = conn_new(ls->loop, ls->cfg.heartbeat_ms, ls->cfg.dead_after);
  if (uv_tcp_open(&c->tcp, fd) != 0) {
    close(fd);
    conn_close_handles(c);
    return;
  }
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char ip[48] = "?";
  int port = 0;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
    if (ss.ss_family == AF_INET) {
      uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
      port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    } else {
      uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
      port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
  }
  snprintf(c->peer, sizeof c->peer, "%s:%d", ip, port);
  if (ls->tls) {
    c->tls = link_tls_new(ls->tls, &c->tout);
    c->cbuf = xmalloc(RBUF_SIZE);
  }
  c->ls = ls;
  c->next = ls->pending;
  if (ls->pending) ls->pending->prev = c;
  ls->pending = c;
  c->state = C_HELLO;
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

bus_listener_t *bus_listener_new(uv_loop_t *loop, const char *host, int port, uint16_t self_node,
                                 uint8_t self_role, const bus_link_config_t *cfg,
                                 const bus_link_cbs_t *cbs, void *ud) {
  struct sockaddr_storage ss;
  if (parse_addr(host, port, &ss) != 0) {
    log_error("bus listener: bad address %s", host);
    return NULL;
  }
  bus_listener_t *ls = xcalloc(1, sizeof *ls);
  ls->loop = loop;
  config_fix(&ls->cfg, cfg);
  if (ls->cfg.tls_cert || ls->cfg.tls_key || ls->cfg.tls_ca) {
    char *err = NULL;
    ls->tls = link_tls_ctx_new(1, ls->cfg.tls_cert, ls->cfg.tls_key, ls->cfg.tls_ca, &err);
    if (!ls->tls) {
      log_error("bus listener on %s:%d: %s", host, port, err);
      xfree(err);
      xfree(ls);
      return NULL;
    }
  }
  ls->cbs = *cbs;
  ls->ud = ud;
  ls->self_node = self_node;
  ls->self_role = self_role;
  int fd = listener_tcp_socket((const struct sockaddr *)&ss, 128), rc = fd < 0 ? uv_translate_sys_error(-fd) : 0;
  if (rc == 0) {
    rc = listener_open(&ls->lst, loop, fd, on_accept, on_full, ls);
    if (rc != 0) close(fd);
  }
  if (rc != 0) {
    log_error("bus listener: cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
    if (fd >= 0) listener_close(&ls->lst, on_listener_closed);
    else on_listener_closed(&(listener_t){.data = ls});
    return NULL;
  }
  socklen_t len = sizeof ss;
  getsockname(fd, (struct sockaddr *)&ss, &len);
  ls->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                          : ((struct sockaddr_in6 *)&ss)->sin6_port);
  log_info("bus listener on %s:%d (node %u)", host, ls->port, self_node);
  return ls;
}

int bus_listener_port(const bus_listener_t *ls) { return ls->port; }

bus_link_t *bus_listener_link(const bus_listener_t *ls, uint16_t peer_node) {
  for (size_t i = 0; i < ls->nlinks; i++)
    if (ls->links[i]->peer_node == peer_node) return ls->links[i];
  return NULL;
}

void bus_listener_close(bus_listener_t *ls) {
  while (ls->pending) conn_fail(ls->pending, "listener closed");
  while (ls->nlinks) bus_link_close(ls->links[ls->nlinks - 1]); /* each leaves the table */
  listener_close(&ls->lst, on_listener_closed);
}

/* One client connection: socket I/O, TLS plumbing, output buffering, closing.
 *
 * Life cycle: accept -> (direct TLS handshake) -> negotiation (negotiate.c: the states
 * and their diagram) -> bound session -> conn_end. Every close goes through conn_end,
 * whatever its cause (a stream error, the peer gone, a slow reader cut off, shutdown):
 * it ends the session once, stops the input and, once the output is written,
 * conn_finish gives back the counters, the table slot and the handle. Memory is released
 * in libuv's close callback, or later if a thread-pool job still points at the
 * connection (conn_release). Output is queued in c->out and written by edge_flush at the
 * end of each batch of work (one uv_write per connection per batch). */
#include "edge/edge_internal.h"

#include <assert.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/domains.h"
#include "common/strmap.h"
#include "common/log.h"
#include "common/metrics.h"

typedef struct write_req {
  uv_write_t req;
  conn_t *c;
  uint8_t *data;
  size_t len;
} write_req_t;

uint64_t edge_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void table_add(edge_thread_t *th, conn_t *c) {
  uint32_t slot;
  if (th->nfree) {
    slot = th->free_slots[--th->nfree];
  } else {
    if (th->nslots == th->cap_slots) {
      th->cap_slots = th->cap_slots ? th->cap_slots * 2 : 1024;
      th->slots = xrealloc(th->slots, th->cap_slots * sizeof *th->slots);
      th->free_slots = xrealloc(th->free_slots, th->cap_slots * sizeof *th->free_slots);
    }
    slot = th->nslots++;
  }
  th->slots[slot] = c;
  c->id = (uint64_t)(++th->generation) << 32 | slot;
}

void conn_table_del(edge_thread_t *th, conn_t *c) {
  uint32_t slot = (uint32_t)c->id;
  if (slot < th->nslots && th->slots[slot] == c) {
    th->slots[slot] = NULL;
    th->free_slots[th->nfree++] = slot;
  }
}

conn_t *conn_lookup(edge_thread_t *th, uint64_t id) {
  uint32_t slot = (uint32_t)id;
  if (slot >= th->nslots) return NULL;
  conn_t *c = th->slots[slot];
  return c && c->id == id ? c : NULL;
}

/* Legal transitions (the diagram: negotiate.c), one bit per target state. */
#define TO(st) (1u << (st))
static const unsigned legal[] = {
    [CONN_ST_PLAIN] = TO(CONN_ST_TLS) | TO(CONN_ST_AUTHED) | TO(CONN_ST_CLOSING),
    [CONN_ST_TLS] = TO(CONN_ST_SECURED) | TO(CONN_ST_CLOSING),
    [CONN_ST_SECURED] = TO(CONN_ST_AUTHED) | TO(CONN_ST_CLOSING),
    [CONN_ST_AUTHED] = TO(CONN_ST_BINDING) | TO(CONN_ST_RESUMING) | TO(CONN_ST_CLOSING),
    [CONN_ST_BINDING] = TO(CONN_ST_BOUND) | TO(CONN_ST_AUTHED) | TO(CONN_ST_CLOSING),
    [CONN_ST_RESUMING] = TO(CONN_ST_RESUME_MOVING) | TO(CONN_ST_RESUME_REMOTE) | TO(CONN_ST_AUTHED) | TO(CONN_ST_CLOSING),
    [CONN_ST_RESUME_MOVING] = TO(CONN_ST_BOUND) | TO(CONN_ST_AUTHED) | TO(CONN_ST_CLOSING),
    [CONN_ST_RESUME_REMOTE] = TO(CONN_ST_RESUME_MOVING) | TO(CONN_ST_AUTHED) | TO(CONN_ST_CLOSING),
    [CONN_ST_BOUND] = TO(CONN_ST_AUTHED) | TO(CONN_ST_CLOSING),
    [CONN_ST_CLOSING] = 0,
    [CONN_ST_DETACHED] = TO(CONN_ST_CLOSING),
};
#undef TO

const char *conn_state_name(conn_st_t st) {
  static const char *const names[] = {"plain",         "tls",   "secured", "authed",  "binding", "resuming",
                                      "resume-moving", "resume-remote", "bound", "closing", "detached"};
  return (unsigned)st < sizeof names / sizeof *names ? names[st] : "?";
}

/* The metrics gauge a state counts in (xmppd_sessions{state}). */
static metric_id_t state_gauge(conn_st_t st) {
  switch (st) {
  case CONN_ST_BOUND: return M_SESS_BOUND;
  case CONN_ST_CLOSING: return M_SESS_CLOSING;
  case CONN_ST_DETACHED: return M_SESS_DETACHED;
  default: return M_SESS_NEGOTIATING;
  }
}

void conn_count_state(const conn_t *c, int delta) { metrics_add(state_gauge(c->state), delta); }

void conn_set_state(conn_t *c, conn_st_t to) {
  conn_st_t from = c->state;
  if (state_gauge(from) != state_gauge(to)) {
    metrics_add(state_gauge(from), -1);
    metrics_add(state_gauge(to), 1);
  }
  if (!(legal[from] & (1u << to))) {
    log_error("conn %llx: illegal state change %s -> %s", (unsigned long long)c->id, conn_state_name(from),
              conn_state_name(to));
    assert(!"illegal connection state change");
  }
  log_debug("conn %llx: %s -> %s", (unsigned long long)c->id, conn_state_name(from), conn_state_name(to));
  c->state = to;
}

void conn_mark_dirty(conn_t *c) {
  if (c->in_dirty || c->handle_closed) return;
  c->in_dirty = 1;
  c->next_dirty = c->th->dirty;
  c->th->dirty = c;
}

static void conn_release(conn_t *c) {
  if (!c->handle_closed || c->pending_work) return;
  conn_count_state(c, -1);
  xml_stream_free(c->xs);
  csi_free(c);
  tls_conn_free(c->tls);
  buf_free(&c->out);
  buf_free(&c->stash);
  sasl_cleanup(c);
  edge_release_held(c);
  sm_release(c);
  if (c->dom_sessions) atomic_fetch_sub(c->dom_sessions, 1); /* sasl.c counted it */
  c->dom_sessions = NULL;
  jid_free(&c->jid);
  xfree(c->presence);
  xfree(c);
}

int conn_work_done(conn_t *c) {
  c->pending_work--;
  if (!c->handle_closed) return 0;
  if (!c->pending_work) conn_release(c); /* the last job holding it */
  return 1;
}

static void on_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  c->handle_closed = 1;
  conn_release(c);
}

/* The end of conn_end, once the output is written (or dropped): what the connection
 * holds of its thread and of the edge is given back, once. */
static void conn_finish(conn_t *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  edge_thread_t *th = c->th;
  if (c->ip_counted) guard_conn_close(th->edge->guard, c->ip);
  c->ip_counted = 0;
  if (c->fd_counted) atomic_fetch_sub(&th->edge->nconns, 1);
  c->fd_counted = 0;
  if (c->paused) {
    for (conn_t **pp = &th->paused; *pp; pp = &(*pp)->next_paused)
      if (*pp == c) {
        *pp = c->next_paused;
        break;
      }
    c->paused = 0;
  }
  conn_table_del(th, c);
  if (c->prev) c->prev->next = c->next;
  else th->all = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
  th->nconns--;
  uv_close((uv_handle_t *)&c->tcp, on_closed); /* a pending write is cancelled: write_cb runs first */
}

void conn_session_end(conn_t *c) {
  sm_bounce(c); /* before the session ends: the router skips this connection by its address */
  if (conn_has_session(c)) edge_session_close(c);
}

void conn_end(conn_t *c, conn_end_t how) {
  if (!conn_closing(c)) {
    if (c->xs) xml_stream_stop(c->xs);
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_read_stop((uv_stream_t *)&c->tcp);
    /* XEP-0198 §5: a client that dropped, or went silent, may come back */
    int detached = (how == CONN_END_LOST || how == CONN_END_IDLE) && sm_detach(c);
    if (!detached) conn_session_end(c);
    if (c->tls) {
      tls_conn_stop(c->tls);
      if (c->secure && (how == CONN_END_CLEAN || how == CONN_END_IDLE)) tls_conn_shutdown(c->tls);
    }
    conn_set_state(c, CONN_ST_CLOSING);
  }
  if (how == CONN_END_ABORT) {
    c->out.len = 0;
    conn_finish(c);
  } else if (!c->writing && !c->out.len) {
    conn_finish(c);
  } else {
    conn_mark_dirty(c); /* flush_one closes once it is written */
  }
}

void conn_lost(conn_t *c) {
  c->out.len = 0;
  conn_end(c, CONN_END_LOST);
}

void conn_abort(conn_t *c) { conn_end(c, CONN_END_ABORT); }

void conn_close(conn_t *c) { conn_end(c, CONN_END_CLEAN); }

static void write_cb(uv_write_t *req, int status) {
  write_req_t *w = (write_req_t *)req;
  conn_t *c = w->c;
  size_t len = w->len;
  xfree(w->data);
  xfree(w);
  c->writing = 0;
  if (status < 0) {
    conn_lost(c); /* the connection was lost, not closed */
    edge_flush(c->th);
    return;
  }
  c->out_done += len;
  edge_offline_written(c);
  if (c->out.len) conn_mark_dirty(c);
  else if (conn_closing(c)) conn_finish(c);
  edge_flush(c->th);
}

static void flush_one(conn_t *c) {
  if (c->handle_closed || uv_is_closing((uv_handle_t *)&c->tcp)) return;
  if (c->writing) return; /* write_cb continues */
  if (!c->out.len) {
    if (conn_closing(c)) conn_finish(c);
    return;
  }
  c->last_out_ms = edge_now_ms();
  /* What the kernel takes at once is written here: uv_write would write it at once too,
   * but its completion goes through the loop's pending queue, and libuv (1.44, uv__drain)
   * then re-registers the socket with epoll: an epoll_ctl, a request allocated and freed
   * and a callback per write. Not while an offline message waits for its bytes to be
   * written (write_cb confirms it, a loop turn later: the next one is not fetched within
   * this flush). */
  size_t done = 0;
  if (!c->off_id) {
    uv_buf_t t = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &t, 1);
    if (n < 0 && n != UV_EAGAIN) {
      conn_lost(c);
      return;
    }
    if (n > 0) {
      done = (size_t)n;
      c->out_handed += done;
      c->out_done += done;
      if (done == c->out.len) {
        buf_free(&c->out); /* an idle connection holds no buffer (docs/memory.md) */
        if (conn_closing(c)) conn_finish(c);
        return;
      }
    }
  }
  write_req_t *w = xmalloc(sizeof *w);
  size_t len;
  w->c = c;
  w->data = buf_steal(&c->out, &len);
  w->len = len - done; /* the rest: out_done counts what write_cb confirms */
  c->out_handed += w->len;
  uv_buf_t b = uv_buf_init((char *)w->data + done, (unsigned)w->len);
  c->writing = 1;
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
  if (rc < 0) {
    c->writing = 0;
    xfree(w->data);
    xfree(w);
    conn_lost(c);
  }
}

void edge_flush(edge_thread_t *th) {
  while (th->dirty) {
    conn_t *c = th->dirty;
    th->dirty = c->next_dirty;
    c->in_dirty = 0;
    c->next_dirty = NULL;
    if (c->sm_ack_due) sm_ack_send(c); /* cluster: this turn's XEP-0198 acks, in one frame */
    flush_one(c);
  }
}

void conn_send(conn_t *c, const char *data, size_t len) {
  if (c->handle_closed) return;
  if (c->tls && c->secure) {
    if (tls_conn_write(c->tls, data, len) != 0) {
      conn_end(c, CONN_END_LOST); /* what is queued goes, then the socket closes */
      return;
    }
  } else {
    buf_append(&c->out, data, len);
  }
  if (c->out.len > (size_t)c->th->cfg->max_pending_out && !conn_closing(c)) {
    log_info("conn %llx: client does not read (%zu bytes pending), disconnecting",
             (unsigned long long)c->id, c->out.len);
    /* drop the unread backlog: it cannot be delivered anyway */
    metrics_inc(M_LIMIT_SLOW_READER);
    conn_end(c, CONN_END_ABORT);
    return;
  }
  conn_mark_dirty(c);
}

void conn_send_str(conn_t *c, const char *s) { conn_send(c, s, strlen(s)); }

/* Writes the stream error (or the plain close), then ends the connection. */
static void stream_error(conn_t *c, conn_end_t how, const char *cond, const char *value, const char *text) {
  if (conn_closing(c)) return;
  if (!c->header_sent) {
    /* RFC 6120 §4.9.1.2: open the stream first, then send the error */
    buf_t h;
    buf_init(&h);
    buf_printf(&h, "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                   "xmlns:stream='http://etherx.jabber.org/streams' from='%s' version='1.0'>",
               conn_domain(c));
    conn_send(c, (const char *)h.data, h.len);
    buf_free(&h);
    c->header_sent = 1;
  }
  if (cond) {
    buf_t e;
    buf_init(&e);
    if (value) { /* the condition's content: see-other-host's address (§4.9.3.19) */
      buf_printf(&e, "<stream:error><%s xmlns='urn:ietf:params:xml:ns:xmpp-streams'>", cond);
      xml_escape(&e, value, strlen(value), 0);
      buf_printf(&e, "</%s>", cond);
    } else {
      buf_printf(&e, "<stream:error><%s xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", cond);
    }
    if (text) {
      buf_puts(&e, "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>");
      xml_escape(&e, text, strlen(text), 0);
      buf_puts(&e, "</text>");
    }
    buf_puts(&e, "</stream:error>");
    conn_send(c, (const char *)e.data, e.len);
    buf_free(&e);
    log_debug("conn %llx: stream error %s%s%s", (unsigned long long)c->id, cond, text ? ": " : "",
              text ? text : "");
  }
  conn_send_str(c, "</stream:stream>");
  conn_end(c, how);
}

void conn_stream_error(conn_t *c, const char *cond, const char *text) {
  stream_error(c, CONN_END_CLEAN, cond, NULL, text);
}

void conn_see_other_host(conn_t *c, const char *host) {
  /* CONN_END_IDLE: the stream ends cleanly, and a resumable session is detached so the
   * client resumes it at host (XEP-0198 §5; across nodes: docs/cluster.md) */
  stream_error(c, CONN_END_IDLE, "see-other-host", host, NULL);
}

/* Input is parsed in pieces so the shaper can stop a flood between stanzas, not only
 * between reads: once the client is over its rate, or the bus is congested (a queue
 * over its bound: bus.h), the rest waits in c->stash until the throttle timer resumes
 * it. */
#define FEED_PIECE 4096
/* Silence after which a stream's parser and its session's expanded AES keys are freed
 * (they come back on the next byte). */
#define PARSER_IDLE_MS 2000

void conn_restart_stream(conn_t *c) {
  c->stream_gen++;
  xml_stream_restart(c->xs);
}

/* Input must wait: over its rate, or a bound session while the bus is congested (what
 * it sends goes to the routers; before the bind it only negotiates). */
static int must_wait(conn_t *c) {
  return shaper_over(&c->shaper) || (conn_has_session(c) && bus_congested(c->th->bus));
}

static void feed(conn_t *c, const char *data, size_t len) {
  unsigned gen = c->stream_gen;
  while (len && !conn_closing(c)) {
    size_t n = len < FEED_PIECE ? len : FEED_PIECE;
    if (xml_stream_feed(c->xs, data, n) != 0) {
      if (c->tls) tls_conn_stop(c->tls);
      return;
    }
    if (c->stream_gen != gen) return; /* a restart discards what was pipelined after it */
    data += n;
    len -= n;
    if (len && must_wait(c)) {
      buf_append(&c->stash, data, len);
      return;
    }
  }
}

static void plain_in(void *ud, const char *data, size_t len) {
  conn_t *c = ud;
  if (conn_closing(c)) return;
  /* over its rate already (TLS hands records over one by one), or older bytes wait */
  if (c->stash.len || must_wait(c)) buf_append(&c->stash, data, len);
  else feed(c, data, len);
}

/* Feeds what the shaper held back; 1 when all of it went in. */
static int feed_stash(conn_t *c) {
  if (!c->stash.len) return 1;
  size_t len;
  uint8_t *d = buf_steal(&c->stash, &len);
  feed(c, (const char *)d, len);
  xfree(d);
  return c->stash.len == 0;
}

static void tls_up(void *ud) {
  conn_t *c = ud;
  c->secure = 1;
  negotiate_tls_ready(c);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  conn_t *c = h->data;
  *b = uv_buf_init(c->th->rbuf, sizeof c->th->rbuf);
}

static void conn_shape(conn_t *c);

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  conn_t *c = s->data;
  edge_thread_t *th = c->th;
  if (n < 0) {
    /* EOF or reset: the session ends (RFC 6121 §4.6: unavailable on abrupt loss), or is
     * detached when the client can resume it (XEP-0198 §5) */
    conn_lost(c);
    return;
  }
  if (n == 0 || conn_closing(c)) return;
  c->last_in_ms = edge_now_ms();
  shaper_charge(&c->shaper, c->shk, n, 0);
  if (c->tls) {
    int rc = tls_conn_feed(c->tls, b->base, (size_t)n, plain_in, tls_up, c);
    if (c->out.len) conn_mark_dirty(c); /* handshake records written by wolfSSL */
    if (rc != 0) conn_end(c, CONN_END_LOST); /* a pending alert is written, then it closes */
  } else {
    plain_in(c, b->base, (size_t)n);
  }
  if (!conn_closing(c)) conn_shape(c);
  edge_flush(th);
}

static void throttle_cb(uv_timer_t *t) {
  edge_thread_t *th = t->data;
  uint64_t now = edge_now_ms();
  int congested = bus_congested(th->bus);
  for (conn_t **pp = &th->paused; *pp;) {
    conn_t *c = *pp;
    if (congested && conn_has_session(c)) {
      /* waits for the bus, not for its own rate: the time is not counted as pressure */
      shaper_pressure(&c->shaper, c->shk, 0, now);
      pp = &c->next_paused;
      continue;
    }
    shaper_refill(&c->shaper, c->shk, now);
    float p = shaper_pressure(&c->shaper, c->shk, 1, now);
    if (p >= SHAPER_KICK || !shaper_over(&c->shaper)) {
      *pp = c->next_paused;
      c->paused = 0;
      c->next_paused = NULL;
      if (p >= SHAPER_KICK) {
        log_info("conn %llx: above its rate for too long", (unsigned long long)c->id);
        metrics_inc(M_LIMIT_RATE);
        conn_stream_error(c, "policy-violation", "sending too fast for too long");
      } else if (!conn_closing(c) && feed_stash(c) && !conn_closing(c) && !shaper_over(&c->shaper)) {
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
      } else if (!conn_closing(c)) {
        /* still over after the stash: stay paused */
        c->paused = 1;
        c->next_paused = th->paused;
        th->paused = c;
        if (pp == &th->paused) pp = &c->next_paused;
      }
      continue;
    }
    pp = &c->next_paused;
  }
  if (!th->paused) uv_timer_stop(t);
  edge_flush(th);
}

static void conn_shape(conn_t *c) {
  edge_thread_t *th = c->th;
  if (c->paused || conn_closing(c)) return;
  /* a bus link to another node is over its high watermark: bound clients wait (no
   * pressure is counted against them: it is not their rate) */
  int congested = conn_has_session(c) && bus_congested(th->bus);
  uint64_t now = c->last_in_ms; /* read_cb just took the time */
  shaper_refill(&c->shaper, c->shk, now);
  if (!congested && c->stash.len && !shaper_over(&c->shaper)) feed_stash(c);
  if (conn_closing(c) || (!congested && !shaper_over(&c->shaper) && !c->stash.len)) return;
  /* XEP-0205 §3: slow the reader first; TCP flow control pushes back on the client, and
   * what was read stays in c->stash (at most one read) */
  if (!congested) shaper_pressure(&c->shaper, c->shk, 0, now);
  uv_read_stop((uv_stream_t *)&c->tcp);
  metrics_inc(M_SHAPER_PAUSES);
  c->paused = 1;
  c->next_paused = th->paused;
  th->paused = c;
  if (!uv_is_active((uv_handle_t *)&th->throttle)) uv_timer_start(&th->throttle, throttle_cb, 50, 50);
}

void conn_domain_shaper(conn_t *c, const domain_t *d) {
  edge_thread_t *th = c->th;
  if (!d || (d->rate_bytes < 0 && d->rate_stanzas < 0)) {
    c->shk = &th->shk;
    return;
  }
  char key[32];
  snprintf(key, sizeof key, "%p", (const void *)d); /* a table's entries live as long as the process */
  if (!th->dom_shk) th->dom_shk = strmap_new();
  shaper_conf_t *k = strmap_get(th->dom_shk, key);
  if (!k) {
    k = xcalloc(1, sizeof *k);
    *k = th->shk;
    if (d->rate_bytes >= 0) k->rate_bytes = d->rate_bytes;
    if (d->rate_stanzas >= 0) k->rate_stanzas = d->rate_stanzas;
    strmap_put(th->dom_shk, key, k);
  }
  if (c->shk != k) {
    c->shk = k;
    shaper_init(&c->shaper, k, edge_now_ms());
  }
}

void conn_thread_init(edge_thread_t *th) {
  uv_timer_init(&th->loop, &th->throttle);
  th->throttle.data = th;
  const xmpp_config_t *cfg = th->cfg;
  th->shk.rate_bytes = cfg->rate_bytes;
  th->shk.rate_stanzas = cfg->rate_stanzas;
  th->shk.burst_s = cfg->rate_burst;
  th->shk.grace_s = cfg->rate_grace;
}

static void peer_ip(conn_t *c) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  memset(c->ip, 0, sizeof c->ip);
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) return;
  if (ss.ss_family == AF_INET6) {
    memcpy(c->ip, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
  } else if (ss.ss_family == AF_INET) {
    c->ip[10] = c->ip[11] = 0xff;
    memcpy(c->ip + 12, &((struct sockaddr_in *)&ss)->sin_addr, 4);
  }
}

void conn_start_tls(conn_t *c) {
  c->tls = tls_conn_new(c->th->tls, &c->out);
  if (!c->tls) conn_close(c);
  else conn_set_state(c, CONN_ST_TLS);
}

/* A connection refused at accept: on the STARTTLS port it gets the stream error; on the
 * direct-TLS port there is no stream to say it in before a handshake, so it is closed. */
static void refuse(conn_t *c, int direct_tls, const char *cond, const char *text) {
  if (direct_tls) {
    conn_end(c, CONN_END_ABORT);
  } else {
    conn_stream_error(c, cond, text);
    edge_flush(c->th);
  }
}

void conn_accept(edge_thread_t *th, int fd, int direct_tls) {
  conn_t *c = xcalloc(1, sizeof *c);
  c->th = th;
  conn_count_state(c, 1); /* CONN_ST_PLAIN, until conn_release */
  buf_init(&c->out);
  buf_init(&c->stash);
  uv_tcp_init(&th->loop, &c->tcp);
  c->tcp.data = c;
  table_add(th, c);
  c->next = th->all;
  if (th->all) th->all->prev = c;
  th->all = c;
  th->nconns++;
  int rc = uv_tcp_open(&c->tcp, fd);
  if (rc != 0) close(fd); /* not the handle's */
  if (rc != 0 || th->stopping) {
    conn_end(c, CONN_END_ABORT);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  peer_ip(c);
  c->created_ms = c->last_in_ms = c->last_out_ms = edge_now_ms();
  c->shk = &th->shk;
  shaper_init(&c->shaper, c->shk, c->created_ms);
  xml_stream_limits_t lim = {(size_t)th->cfg->max_stanza_bytes, (unsigned)th->cfg->max_depth,
                             (unsigned)th->cfg->max_attrs};
  xml_stream_cbs_t cbs = {negotiate_stream_start, negotiate_stanza, negotiate_stream_end,
                          negotiate_xml_error};
  c->xs = xml_stream_new(&lim, &cbs, c);
  c->direct_tls = direct_tls;
  if (direct_tls) {
    conn_start_tls(c);
    /* XEP-0368 §3: a direct-TLS client SHOULD offer ALPN, and then "xmpp-client" */
    if (c->tls && tls_conn_alpn(c->tls, "xmpp-client") != 0) {
      tls_conn_free(c->tls);
      c->tls = NULL;
    }
  }
  if (!c->xs || (direct_tls && !c->tls)) {
    conn_end(c, CONN_END_ABORT);
    return;
  }
  c->fd_counted = 1;
  if (atomic_fetch_add(&th->edge->nconns, 1) >= th->edge->max_conns) {
    /* RFC 6120 §4.9.3.15: out of descriptors; say so and close while we still can */
    uint64_t now = edge_now_ms();
    if (now - th->last_accept_warn_ms >= 10000) {
      th->last_accept_warn_ms = now;
      log_warn("at the open-file budget (%ld connections): refusing new connections", th->edge->max_conns);
    }
    metrics_inc(M_LIMIT_OPEN_FILES);
    refuse(c, direct_tls, "resource-constraint", "the server is at its connection limit");
    return;
  }
  if (guard_conn_open(th->edge->guard, c->ip) != 0) {
    log_info("conn %llx: refused, too many connections from one address", (unsigned long long)c->id);
    metrics_inc(M_LIMIT_CONNS_PER_IP);
    refuse(c, direct_tls, "policy-violation", "too many connections from your address");
    return;
  }
  c->ip_counted = 1;
  metrics_inc(M_CONNECTIONS);
  uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

void conn_sweep_cb(uv_timer_t *t) {
  edge_thread_t *th = t->data;
  const xmpp_config_t *cfg = th->cfg;
  uint64_t now = edge_now_ms();
  if (th->index == 0 && now - th->last_prune_ms >= 60000) {
    th->last_prune_ms = now;
    guard_prune(th->edge->guard, now);
  }
  for (conn_t *c = th->all, *nx; c; c = nx) {
    nx = c->next;
    if (conn_closing(c)) {
      /* a peer that never reads our final bytes must not hold the socket forever */
      if (now - c->last_in_ms > 10000) conn_end(c, CONN_END_ABORT);
      continue;
    }
    /* no session yet, or one whose bind the router has not confirmed */
    int negotiating = c->state != CONN_ST_BOUND && c->state != CONN_ST_RESUME_MOVING;
    if (negotiating && now - c->created_ms > (uint64_t)cfg->auth_timeout * 1000) {
      conn_stream_error(c, "connection-timeout", "authentication took too long");
    } else if (now - c->last_in_ms > (uint64_t)cfg->idle_timeout * 1000) {
      /* a client that went silent (lost its network) may come back: CONN_END_IDLE */
      stream_error(c, CONN_END_IDLE, "connection-timeout", NULL, NULL);
    } else if (c->header_sent && now - c->last_out_ms > (uint64_t)cfg->keepalive * 1000) {
      conn_send(c, " ", 1); /* RFC 6120 §4.6.1 whitespace keepalive */
    }
    /* a quiet stream gives its parser back (docs/memory.md); a busy one keeps it */
    if (!conn_closing(c) && now - c->last_in_ms >= PARSER_IDLE_MS && now - c->last_out_ms >= PARSER_IDLE_MS) {
      if (c->xs) xml_stream_suspend(c->xs);
      if (c->tls) tls_conn_trim(c->tls);
    }
  }
  sm_sweep(th, now, 0);
  edge_flush(th);
}

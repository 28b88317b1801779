/* Admin requests on the edge threads (the control socket's sessions, kick, broadcast:
 * common/control.h, cmd/xmppd_admin.c).
 *
 * The main thread makes one request and puts a BUS_ADMIN frame carrying its pointer on
 * every edge thread's bus queue (the one way work crosses threads here). Each thread
 * does its part on its own connections and detached sessions and writes only its own
 * slot of the request (parts[index], counts[index]); the last one to finish (an atomic
 * count down) calls done, which hands the request back to the main loop. Nothing of a
 * thread's is read by another.
 *
 * kick: the session gets <policy-violation/> (RFC 6120 §4.9.3.14: the entity violated a
 * local service policy; the server MAY say which in <text/>), as ejabberd's kick does;
 * not <reset/> (§4.9.3.16), which asks the client to open a new stream at once: a kicked
 * client should not come straight back. It ends as any clean close does (conn_end): its
 * unacknowledged messages go back to its shard for another resource or offline storage
 * (XEP-0198), the session is not kept for a resumption. A detached session (XEP-0198
 * §5) is ended the same way.
 *
 * broadcast: one <message type='headline'> from the domain to each session's full JID,
 * as a BUS_ROUTE frame to its shard: the router delivers it by the rules of RFC 6121
 * §8.5 and its modules see it, as any message to that JID (a detached session gets it
 * queued for its resumption).
 *
 * drain: each thread closes its listeners (new connections are refused: the kernel
 * resets them), then ends its connections at its share of the rate, each with <see-other-host>TARGET</see-other-host> (RFC 6120
 * §4.9.3.19: the client should reconnect there; the value is a domain or an IP
 * address, an IPv6 one in brackets, with an optional port) and CONN_END_IDLE: a session
 * with XEP-0198 resumption enabled is detached first, so its client resumes it on the
 * target node (docs/cluster.md "Stream resumption across nodes") and what it had not
 * acknowledged reaches it there, once. Without a target (one node, nowhere to send the
 * clients): <system-shutdown/> and CONN_END_CLEAN, sessions end as in a stop. The rate
 * spreads the reconnections so the other edges are not hit by all at once. */
#include "edge/edge_internal.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/control.h"
#include "common/log.h"
#include "common/stanza.h"

struct edge_admin {
  edge_t *e;
  edge_admin_op_t op;
  char *jid;
  int full; /* kick: jid has a resource */
  char *text;
  buf_t payload; /* broadcast: the encoded message */
  buf_t *parts;  /* [nthreads] */
  size_t *counts;
  buf_t json;
  size_t *detached; /* COUNT */
  int rate;         /* DRAIN */
  _Atomic int remaining;
  void (*done)(edge_admin_t *r, void *ud);
  void *ud;
};

#define KICK_TEXT "ended by the server's administrator"

edge_admin_t *edge_admin_new(edge_t *e, edge_admin_op_t op, const char *jid, const char *text) {
  edge_admin_t *r = xcalloc(1, sizeof *r);
  r->e = e;
  r->op = op;
  r->jid = jid ? xstrdup(jid) : NULL;
  r->full = jid && strchr(jid, '/') != NULL;
  r->text = xstrdup(text && *text ? text : KICK_TEXT);
  r->parts = xcalloc((size_t)e->nthreads, sizeof *r->parts);
  r->counts = xcalloc((size_t)e->nthreads, sizeof *r->counts);
  r->detached = xcalloc((size_t)e->nthreads, sizeof *r->detached);
  r->rate = 1;
  buf_init(&r->payload);
  buf_init(&r->json);
  if (op == EDGE_ADMIN_BROADCAST) {
    arena_t a;
    arena_init(&a);
    xnode_t *m = xnode_new(&a, "message", NS_CLIENT);
    xnode_set_attr(&a, m, "type", "headline");
    uint64_t rnd = 0;
    uv_random(NULL, NULL, &rnd, sizeof rnd, 0, NULL);
    char id[32];
    snprintf(id, sizeof id, "broadcast-%016llx", (unsigned long long)rnd);
    xnode_set_attr(&a, m, "id", id);
    xnode_t *body = xnode_add(&a, m, "body", NS_CLIENT);
    xnode_add_text(&a, body, text, strlen(text));
    xnode_encode(m, &r->payload);
    arena_free(&a);
  }
  return r;
}

void edge_admin_post(edge_admin_t *r, void (*done)(edge_admin_t *r, void *ud), void *ud) {
  edge_t *e = r->e;
  r->done = done;
  r->ud = ud;
  atomic_store(&r->remaining, e->nthreads);
  for (int i = 0; i < e->nthreads; i++) {
    bus_frame_t f = {0};
    f.kind = BUS_ADMIN;
    f.dst.node = e->bus->node;
    f.dst.thread = (uint16_t)i;
    f.arg = (int64_t)(uintptr_t)r;
    f.from = f.to = "";
    bus_queue_push(&e->bus->edge_q[i], bus_msg_new(&f));
  }
}

size_t edge_admin_count(const edge_admin_t *r) {
  size_t n = 0;
  for (int i = 0; i < r->e->nthreads; i++) n += r->counts[i];
  return n;
}

const char *edge_admin_json(edge_admin_t *r) {
  r->json.len = 0;
  for (int i = 0; i < r->e->nthreads; i++) {
    if (!r->parts[i].len) continue;
    if (r->json.len) buf_putc(&r->json, ',');
    buf_append(&r->json, r->parts[i].data, r->parts[i].len);
  }
  buf_putc(&r->json, '\0');
  r->json.len--;
  return (const char *)r->json.data;
}

void edge_admin_free(edge_admin_t *r) {
  if (!r) return;
  for (int i = 0; i < r->e->nthreads; i++) buf_free(&r->parts[i]);
  xfree(r->parts);
  xfree(r->counts);
  xfree(r->detached);
  buf_free(&r->payload);
  buf_free(&r->json);
  xfree(r->jid);
  xfree(r->text);
  xfree(r);
}

size_t edge_admin_detached(const edge_admin_t *r) {
  size_t n = 0;
  for (int i = 0; i < r->e->nthreads; i++) n += r->detached[i];
  return n;
}

void edge_admin_set_rate(edge_admin_t *r, int rate) { r->rate = rate > 0 ? rate : 1; }

int edge_drain_begin(edge_t *e, const char *target) {
  if (atomic_load(&e->draining)) return -1;
  e->drain_target = target ? xstrdup(target) : NULL; /* freed with the edge */
  atomic_store(&e->draining, 1);
  return 0;
}

int edge_draining(edge_t *e, const char **target, long *conns) {
  int d = atomic_load(&e->draining);
  if (target) *target = d ? e->drain_target : NULL;
  if (conns) *conns = atomic_load(&e->nconns);
  return d;
}

/* ---- on the edge thread ------------------------------------------------------------- */

static void put_time(buf_t *b, uint64_t mono_ms) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  uint64_t wall = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000 - (edge_now_ms() - mono_ms);
  time_t s = (time_t)(wall / 1000);
  struct tm tm;
  gmtime_r(&s, &tm);
  buf_printf(b, "\"%04d-%02d-%02dT%02d:%02d:%02d.%03uZ\"", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (unsigned)(wall % 1000));
}

static void put_address(buf_t *b, conn_t *c) {
  char ip[INET6_ADDRSTRLEN] = "";
  if (c->state == CONN_ST_DETACHED) { /* no socket any more */
    buf_puts(b, "null");
    return;
  }
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) {
    buf_puts(b, "null");
    return;
  }
  if (ss.ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
    buf_printf(b, "\"%s:%u\"", ip, ntohs(a->sin_port));
  } else {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
    inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
    buf_printf(b, "\"[%s]:%u\"", ip, ntohs(a->sin6_port));
  }
}

static void list_one(edge_thread_t *th, buf_t *b, conn_t *c) {
  if (b->len) buf_putc(b, ',');
  buf_puts(b, "{\"jid\":");
  text_json_str(b, c->jid.full, strlen(c->jid.full));
  buf_puts(b, ",\"address\":");
  put_address(b, c);
  int detached = c->state == CONN_ST_DETACHED;
  buf_puts(b, detached ? ",\"since\":null,\"detached_since\":" : ",\"since\":");
  put_time(b, detached ? c->detached_ms : c->created_ms);
  buf_printf(b, ",\"state\":\"%s\"", detached ? "detached" : c->state == CONN_ST_BOUND ? "bound"
                                                           : c->state == CONN_ST_BINDING ? "binding" : "resuming");
  const char *ver = !detached && c->secure && c->tls ? tls_conn_version(c->tls) : NULL;
  buf_printf(b, ",\"tls\":%s", detached ? "null" : c->secure ? "true" : "false");
  if (ver) buf_printf(b, ",\"tls_version\":\"%s\"", ver);
  buf_printf(b, ",\"sm\":%s,\"resumable\":%s", c->sm ? "true" : "false", c->sm_rid ? "true" : "false");
  if (c->sm) buf_printf(b, ",\"unacked\":%u", (unsigned)(c->sm_out - c->sm_acked));
  buf_printf(b, ",\"csi\":\"%s\",\"thread\":%d,\"conn\":\"%llx\"}", c->csi_inactive ? "inactive" : "active",
             th->index, (unsigned long long)c->id);
}

static int matches(const edge_admin_t *r, const conn_t *c) {
  if (!c->jid.full) return 0;
  return !strcmp(r->full ? c->jid.full : c->jid.bare, r->jid);
}

static void broadcast_one(edge_thread_t *th, const edge_admin_t *r, conn_t *c) {
  bus_frame_t f = {0};
  f.kind = BUS_ROUTE;
  f.flags = BUS_F_SERVER;
  f.from = conn_domain(c);
  f.from_len = strlen(f.from);
  f.to = c->jid.full;
  f.to_len = strlen(f.to);
  f.payload = r->payload.data;
  f.payload_len = r->payload.len;
  bus_to_shard(th->bus, c->shard, bus_msg_new(&f));
}

/* The drain's timer period; the budget accrues between ticks, capped at one tick's worth
 * beyond one connection (a late tick sends no burst). */
#define DRAIN_TICK_MS 10

static void drain_cb(uv_timer_t *t) {
  edge_thread_t *th = t->data;
  edge_t *e = th->edge;
  uint64_t now = edge_now_ms();
  /* budget in 1/(1000 * nthreads) of a connection: each thread sends rate/nthreads per
   * second, exactly, without rounding a small rate to 0 */
  uint64_t cost = 1000u * (uint64_t)e->nthreads, rate = (uint64_t)th->drain_rate;
  th->drain_acc += rate * (now - th->drain_last_ms);
  th->drain_last_ms = now;
  if (th->drain_acc > cost + rate * DRAIN_TICK_MS) th->drain_acc = cost + rate * DRAIN_TICK_MS;
  int left = 0;
  for (conn_t *c = th->all, *nx; c; c = nx) {
    nx = c->next;
    if (conn_closing(c)) continue;
    if (th->drain_acc < cost) {
      left = 1;
      break;
    }
    th->drain_acc -= cost;
    if (e->drain_target) {
      log_debug("conn %llx: drain: sent to %s", (unsigned long long)c->id, e->drain_target);
      conn_see_other_host(c, e->drain_target);
    } else {
      conn_stream_error(c, "system-shutdown", "this node is being drained");
    }
  }
  edge_flush(th);
  if (!left) {
    uv_timer_stop(t);
    log_info("drain: thread %d sent all its connections away (%u detached sessions wait for their resumption)",
             th->index, (unsigned)th->ndetached);
  }
}

static size_t drain_start(edge_thread_t *th, const edge_admin_t *r) {
  for (int i = 0; i < 2; i++) listener_close(&th->listeners[i], NULL); /* new connections are refused from now on */
  size_t n = 0;
  for (conn_t *c = th->all; c; c = c->next) n += !conn_closing(c);
  th->drain_rate = r->rate;
  th->drain_acc = 1000u * (uint64_t)th->edge->nthreads; /* the first goes at once */
  th->drain_last_ms = edge_now_ms();
  if (!th->stopping) uv_timer_start(&th->drain_timer, drain_cb, 0, DRAIN_TICK_MS);
  return n;
}

void edge_admin_run(edge_thread_t *th, edge_admin_t *r) {
  buf_t *b = &r->parts[th->index];
  size_t n = 0;
  if (r->op == EDGE_ADMIN_DRAIN) {
    r->counts[th->index] = drain_start(th, r);
    if (atomic_fetch_sub(&r->remaining, 1) == 1) r->done(r, r->ud);
    return;
  }
  /* two passes: the connections, then the detached sessions (XEP-0198 §5) */
  for (int pass = 0; pass < 2; pass++)
    for (conn_t *c = pass ? th->detached : th->all, *nx; c; c = nx) {
      nx = c->next; /* a kick unlinks a detached session */
      if (!pass && c->state == CONN_ST_DETACHED) continue;
      /* a removed domain's streams end whatever their state; the rest is about sessions */
      if (!pass && r->op != EDGE_ADMIN_DOMAIN_GONE && !conn_has_session(c)) continue;
      switch (r->op) {
      case EDGE_ADMIN_SESSIONS:
        if (r->jid && !matches(r, c)) break; /* one user's, or one session */
        list_one(th, b, c);
        n++;
        break;
      case EDGE_ADMIN_COUNT:
        n++;
        r->detached[th->index] += pass;
        break;
      case EDGE_ADMIN_DRAIN: break; /* above */
      case EDGE_ADMIN_BROADCAST:
        if (c->state == CONN_ST_BINDING) break; /* not a session yet: the router may refuse it */
        broadcast_one(th, r, c);
        n++;
        break;
      case EDGE_ADMIN_DOMAIN_GONE:
        if (!c->domain || strcmp(c->domain, r->jid) != 0) break;
        n++;
        log_info("conn %llx: domain %s removed", (unsigned long long)c->id, r->jid);
        if (pass) sm_detached_kick(c, BUS_KICK_SHUTDOWN);
        else conn_stream_error(c, "host-gone", "this domain is no longer served here");
        break;
      case EDGE_ADMIN_KICK:
        if (!matches(r, c)) break;
        if (b->len) buf_putc(b, ',');
        text_json_str(b, c->jid.full, strlen(c->jid.full));
        n++;
        log_info("conn %llx: %s kicked by the administrator", (unsigned long long)c->id, c->jid.full);
        if (pass) sm_detached_kick(c, BUS_KICK_SHUTDOWN); /* ends it: its messages are bounced */
        else conn_stream_error(c, "policy-violation", r->text);
        break;
      }
    }
  r->counts[th->index] = n;
  if (atomic_fetch_sub(&r->remaining, 1) == 1) r->done(r, r->ud);
}

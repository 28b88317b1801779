/* RFC 6120 stream negotiation, server side, for one client connection.
 *
 *   header -> features -> [STARTTLS (§5) -> header -> features] -> SASL (§6) ->
 *   header -> features -> bind (§7) -> stanzas are routed
 *
 * Stream errors follow §4.9.3. TLS is required before SASL unless tls.required=false;
 * PLAIN is offered only under TLS. After STARTTLS and after SASL success the stream is
 * restarted, and bytes the client pipelined after <starttls/> are discarded (§5.4.3.3).
 *
 * Where a connection is, c->state (edge_internal.h), changed only by conn_set_state,
 * which refuses (asserts on) any transition not listed here (its table: conn.c):
 *
 *   PLAIN ---<starttls/> (§5); direct TLS: at accept---> TLS ---handshake done---> SECURED
 *   SECURED, or PLAIN with tls.required = false ---SASL success (§6)---> AUTHED
 *   SECURED ---SASL2 mechanism succeeded (XEP-0388; no stream restart)---> AUTHED, then at
 *            once, when <authenticate/> asked for them inline: <resume/> (RESUMING...), else
 *            or when it fails, Bind2 (XEP-0386: BINDING); the SASL2 <success/> goes out
 *            when that ends (c->sasl2 holds it meanwhile: sasl2_complete)
 *   AUTHED ---bind (§7): SESSION_OPEN---> BINDING ---SESSION_ACK open---> BOUND
 *                                         BINDING ---refused (§7.6.2.1)---> AUTHED
 *   AUTHED ---<resume/> (XEP-0198 §5)---> RESUMING ---the detached session came---> RESUME_MOVING
 *                                         RESUMING ---not found: <failed/>---> AUTHED
 *                                         RESUMING ---not on this edge node (cluster)---> RESUME_REMOTE
 *                                         RESUME_REMOTE ---the state came with the router's answer---> RESUME_MOVING
 *                                         RESUME_REMOTE ---no such session: <failed/>---> AUTHED
 *                                         RESUME_MOVING ---SESSION_ACK open: <resumed/>---> BOUND
 *                                         RESUME_MOVING ---refused: <failed/>---> AUTHED
 *   BINDING, RESUME_MOVING, BOUND ---KICK conflict (the router replaced it)---> AUTHED,
 *                                    then closed
 *   any state ---conn_end---> CLOSING (final)
 *   DETACHED (born so by sm_detach: a session, not a connection) ---ended---> CLOSING
 *
 * What each state accepts from the client (negotiate_stanza):
 *   PLAIN        <starttls/>; SASL, XEP-0077 registration only with tls.required = false
 *   TLS          nothing (no XML until the handshake is done)
 *   SECURED      SASL (<auth/>, <response/>, <abort/>), SASL2 (<authenticate/>, <response/>,
 *                <abort/>), XEP-0077 registration (§3.1)
 *   AUTHED       bind, XEP-0198 <resume/>; anything else: <not-authorized/>
 *   BINDING      stanzas are held until the router answers (route.c); a second bind:
 *                <not-allowed/>
 *   RESUMING,
 *   RESUME_REMOTE,
 *   RESUME_MOVING  no stanza (<not-authorized/>) until <resumed/> or <failed/>
 *   BOUND        stanzas are routed; XEP-0198 <enable/>, XEP-0352, password change
 *   CLOSING      nothing is read any more
 * XEP-0198 <r/>, <a/> and XEP-0352 elements are read in every state from AUTHED on (sm.c
 * and csi.c check for themselves). DETACHED is not a connection: a session without a
 * socket (sm.c), which a RESUMING connection takes over. */
#include "edge/edge_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/metrics.h"


static void random_id(char *out, size_t n) {
  static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  unsigned char r[32];
  if (n > sizeof r + 1) n = sizeof r + 1;
  if (getrandom(r, n - 1, 0) != (ssize_t)(n - 1)) memset(r, 7, sizeof r);
  for (size_t i = 0; i + 1 < n; i++) out[i] = al[r[i] % (sizeof al - 1)];
  out[n - 1] = '\0';
}

static int tls_available(const conn_t *c) { return c->th->tls != NULL; }

static void send_features(conn_t *c) {
  buf_t f;
  buf_init(&f);
  buf_puts(&f, "<stream:features>");
  if (c->state == CONN_ST_PLAIN || c->state == CONN_ST_SECURED) {
    int secured = c->state == CONN_ST_SECURED;
    if (!secured && tls_available(c)) {
      buf_puts(&f, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
      if (c->th->cfg->require_tls) buf_puts(&f, "<required/>");
      buf_puts(&f, "</starttls>");
    }
    if (secured || !c->th->cfg->require_tls) sasl_feature(c, &f, secured);
    if (sasl2_offered(c)) sasl2_feature(c, &f); /* XEP-0388 §2.1 */
    if (register_offered(c)) buf_puts(&f, "<register xmlns='http://jabber.org/features/iq-register'/>"); /* XEP-0077 §4 */
  } else {
    buf_puts(&f, "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
                 "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>");
    if (sm_offered(c)) buf_puts(&f, "<sm xmlns='urn:xmpp:sm:3'/>"); /* XEP-0198 §2 */
    buf_puts(&f, "<csi xmlns='urn:xmpp:csi:0'/>");                    /* XEP-0352 §2 */
    buf_puts(&f, "<ver xmlns='urn:xmpp:features:rosterver'/>");       /* RFC 6121 §2.6.1 */
    buf_puts(&f, "<sub xmlns='urn:xmpp:features:pre-approval'/>");    /* RFC 6121 §3.4 */
  }
  buf_puts(&f, "</stream:features>");
  conn_send(c, (const char *)f.data, f.len);
  buf_free(&f);
}

/* RFC 6120 §4.7.5: version "1.x" (x any) is what we speak; absent means pre-1.0. */
static int version_ok(const char *v) {
  if (!v) return 0;
  char *end;
  long major = strtol(v, &end, 10);
  if (end == v || *end != '.' || major < 1) return 0;
  return 1;
}

void negotiate_stream_start(void *ud, const xnode_t *h) {
  conn_t *c = ud;
  random_id(c->stream_id, sizeof c->stream_id);
  /* The domain asked for (RFC 6120 §4.7.2): one we host, and the same in every header of
   * the connection (the stream restarts after STARTTLS and SASL must not move an
   * authenticated account to another domain). No 'to' is the default domain's. */
  const char *to = xnode_attr(h, "to");
  const domain_t *dom = NULL;
  if (to) {
    char *name = NULL;
    if (jid_prep_domain(to, strlen(to), &name) == 0) dom = domain_find(name, strlen(name));
    xfree(name);
  } else {
    dom = domain_find(conn_domain(c), strlen(conn_domain(c)));
  }
  int unknown = !dom || (c->domain && strcmp(c->domain, dom->name) != 0);
  if (!unknown) {
    c->domain = dom->name;
    conn_domain_shaper(c, dom); /* [domain] rate_bytes / rate_stanzas */
  }
  buf_t b;
  buf_init(&b);
  const char *from = xnode_attr(h, "from");
  buf_printf(&b, "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                 "xmlns:stream='http://etherx.jabber.org/streams' id='%s' from='%s' version='1.0' "
                 "xml:lang='en'",
             c->stream_id, conn_domain(c));
  if (from) {
    buf_puts(&b, " to='");
    xml_escape(&b, from, strlen(from), 1);
    buf_putc(&b, '\'');
  }
  buf_putc(&b, '>');
  conn_send(c, (const char *)b.data, b.len);
  buf_free(&b);
  c->header_sent = 1;

  const char *xmlns = xnode_attr(h, "xmlns");
  if (strcmp(h->name, "stream") != 0 || strcmp(h->ns, NS_STREAMS) != 0) {
    conn_stream_error(c, "invalid-namespace", "the stream element must be {http://etherx.jabber.org/streams}stream");
    return;
  }
  if (!xmlns || strcmp(xmlns, NS_CLIENT) != 0) {
    conn_stream_error(c, "invalid-namespace", "the content namespace must be jabber:client");
    return;
  }
  if (unknown) {
    /* RFC 6120 §4.9.3.6 */
    conn_stream_error(c, "host-unknown", c->domain ? "the stream moved to another domain" : "no such domain here");
    return;
  }
  if (!version_ok(xnode_attr(h, "version"))) {
    conn_stream_error(c, "unsupported-version", "this server speaks XMPP 1.0");
    return;
  }
  send_features(c);
}

void negotiate_stream_end(void *ud) {
  conn_t *c = ud;
  /* RFC 6120 §4.4: answer the close with our own close, then end the connection */
  conn_stream_error(c, NULL, NULL);
}

void negotiate_xml_error(void *ud, xml_stream_err_t err, const char *detail) {
  conn_t *c = ud;
  switch (err) {
  case XS_RESTRICTED_XML: conn_stream_error(c, "restricted-xml", detail); break;
  case XS_POLICY_VIOLATION:
    metrics_inc(M_LIMIT_STANZA);
    conn_stream_error(c, "policy-violation", detail);
    break;
  case XS_BAD_FORMAT: conn_stream_error(c, "bad-format", detail); break;
  default: conn_stream_error(c, "not-well-formed", NULL); break;
  }
}

void negotiate_tls_ready(conn_t *c) {
  log_debug("conn %llx: TLS up (%s, %s%s%s)", (unsigned long long)c->id, tls_conn_version(c->tls),
            tls_conn_cipher(c->tls), tls_conn_resumed(c->tls) ? ", resumed" : "",
            tls_conn_offloaded(c->tls) ? ", edge record layer" : "");
  /* direct TLS: the client now opens the stream; STARTTLS: the stream restarts */
  c->header_sent = 0;
  conn_set_state(c, CONN_ST_SECURED);
}

static void starttls(conn_t *c, xnode_t *st) {
  if (c->state != CONN_ST_PLAIN || !tls_available(c)) {
    /* RFC 6120 §5.4.2.2 */
    conn_send_str(c, "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    conn_stream_error(c, NULL, NULL);
    return;
  }
  conn_send_str(c, "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
  /* <proceed/> goes out in clear: flush it before the TLS session takes over the output */
  edge_flush(c->th);
  conn_start_tls(c);
  conn_restart_stream(c);
}

static int is_stanza(const xnode_t *s) {
  return strcmp(s->ns, NS_CLIENT) == 0 &&
         (!strcmp(s->name, "message") || !strcmp(s->name, "presence") || !strcmp(s->name, "iq"));
}

static void iq_result(conn_t *c, const char *id, const char *payload) {
  buf_t b;
  buf_init(&b);
  buf_puts(&b, "<iq type='result' id='");
  xml_escape(&b, id ? id : "", id ? strlen(id) : 0, 1);
  buf_puts(&b, "'>");
  if (payload) buf_puts(&b, payload);
  buf_puts(&b, "</iq>");
  conn_send(c, (const char *)b.data, b.len);
  buf_free(&b);
  sm_stanza_out(c, NULL);
}

/* RFC 6120 §7: resource binding. The client proposes a resource or lets us choose. */
static void bind_resource(conn_t *c, xnode_t *iq, xnode_t *bind) {
  const char *type = xnode_attr(iq, "type");
  const char *id = xnode_attr(iq, "id");
  if (!type || strcmp(type, "set") != 0 || !id) {
    edge_stanza_error(c, iq, "modify", "bad-request");
    return;
  }
  char genres[24];
  const char *res = NULL;
  xnode_t *r = xnode_child(bind, "resource", NS_BIND);
  arena_t tmp;
  arena_init(&tmp);
  if (r) res = xnode_text(&tmp, r);
  if (!res || !*res) {
    random_id(genres, sizeof genres);
    res = genres;
  }
  char *prepped = NULL;
  if (jid_prep_resource(res, strlen(res), &prepped) != 0) {
    arena_free(&tmp);
    edge_stanza_error(c, iq, "modify", "bad-request");
    return;
  }
  size_t n = strlen(c->auth_bare) + 1 + strlen(prepped) + 1;
  char *full = xmalloc(n);
  snprintf(full, n, "%s/%s", c->auth_bare, prepped);
  xfree(prepped);
  arena_free(&tmp);
  jid_t j;
  if (jid_parse(full, strlen(full), &j) != 0) {
    xfree(full);
    edge_stanza_error(c, iq, "modify", "bad-request");
    return;
  }
  xfree(full);
  /* The router decides (resource limit, conflict): the result waits for its answer. */
  c->jid = j;
  c->bind_id = xstrdup(id);
  conn_set_state(c, CONN_ST_BINDING);
  edge_session_open(c);
}

#define BIND2_CARBONS_ID "bind2-carbons"

void negotiate_bind2(conn_t *c, const char *pre) {
  sasl2_req_t *r = c->sasl2;
  char suffix[9], genres[24];
  char *res;
  if (r->tag) { /* XEP-0386 §2.4: the tag, then a random part the server chooses */
    random_id(suffix, sizeof suffix);
    size_t n = strlen(r->tag) + 1 + strlen(suffix) + 1;
    res = xmalloc(n);
    snprintf(res, n, "%s.%s", r->tag, suffix);
  } else {
    random_id(genres, sizeof genres);
    res = xstrdup(genres);
  }
  char *prepped = NULL;
  jid_t j;
  int ok = jid_prep_resource(res, strlen(res), &prepped) == 0;
  xfree(res);
  if (ok) {
    size_t n = strlen(c->auth_bare) + 1 + strlen(prepped) + 1;
    char *full = xmalloc(n);
    snprintf(full, n, "%s/%s", c->auth_bare, prepped);
    ok = jid_parse(full, strlen(full), &j) == 0;
    xfree(full);
  }
  xfree(prepped);
  if (!ok) {
    sasl2_bind_failed(c, "the bind tag is not a valid resource");
    return;
  }
  xfree(r->pre);
  r->pre = pre ? xstrdup(pre) : NULL;
  c->jid = j;
  conn_set_state(c, CONN_ST_BINDING);
  edge_session_open(c); /* negotiate_bind_done answers */
}

/* The router took the Bind2 session: the inline features, then the SASL2 <success/>. */
static void bind2_done(conn_t *c) {
  sasl2_req_t *r = c->sasl2;
  buf_t p;
  buf_init(&p);
  if (r->pre) buf_puts(&p, r->pre);
  buf_puts(&p, "<bound xmlns='urn:xmpp:bind:0'>");
  if (r->sm) sm_enable(c, r->sm == 2, &p); /* XEP-0198 §3, its <enabled/> inline */
  buf_puts(&p, "</bound>");
  buf_putc(&p, '\0');
  if (r->inactive) c->csi_inactive = 1; /* XEP-0352 */
  int carbons = r->carbons;
  sasl2_complete(c, (const char *)p.data);
  buf_free(&p);
  if (carbons) {
    /* XEP-0280 is the router's (mod_carbons): it gets the IQ the client would have sent,
     * first on the session's queue; its answer is swallowed (edge_deliver_now) */
    arena_t a;
    arena_init(&a);
    xnode_t *iq = xnode_new(&a, "iq", NS_CLIENT);
    xnode_set_attr(&a, iq, "type", "set");
    xnode_set_attr(&a, iq, "id", BIND2_CARBONS_ID);
    xnode_add(&a, iq, "enable", NS_CARBONS2);
    c->carbons_iq = 1;
    edge_route_stanza(c, iq);
    arena_free(&a);
  }
}

int negotiate_swallow(conn_t *c, const bus_frame_t *f) {
  xnode_head_t h;
  if (xnode_encoded_head(f->payload, f->payload_len, "id", &h) != 0 || h.name_len != 2 || memcmp(h.name, "iq", 2) ||
      h.attr_len != strlen(BIND2_CARBONS_ID) || memcmp(h.attr, BIND2_CARBONS_ID, h.attr_len))
    return 0;
  c->carbons_iq = 0;
  return 1;
}

void negotiate_bind_done(conn_t *c, int64_t result) {
  if (c->state != CONN_ST_BINDING) return;
  int announced = c->announced_binding;
  c->announced_binding = 0;
  char *id = c->bind_id;
  c->bind_id = NULL;
  if (result != BUS_ACK_OPEN) {
    /* RFC 6120 §7.6.2.1: the account has reached its limit of connected resources */
    log_info("conn %llx: bind of %s refused: resource limit", (unsigned long long)c->id, c->jid.full);
    /* cluster: the shard moved while the old owner refused it, and the session was
     * re-announced to the new owner meanwhile, which took it: it is ended there, else
     * it would hold one of the account's resources with no connection behind it */
    if (announced) edge_session_close(c);
    conn_set_state(c, CONN_ST_AUTHED); /* the client may bind again */
    jid_free(&c->jid);
    edge_release_held(c);
    if (c->sasl2) { /* Bind2: the answer is the SASL2 <failure/> */
      sasl2_bind_failed(c, "too many resources connected");
      return;
    }
    buf_t e;
    buf_init(&e);
    buf_puts(&e, "<iq type='error' id='");
    xml_escape(&e, id, strlen(id), 1);
    buf_puts(&e, "'><error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                 "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>too many resources connected</text></error></iq>");
    conn_send(c, (const char *)e.data, e.len);
    buf_free(&e);
    xfree(id);
    return;
  }
  conn_set_state(c, CONN_ST_BOUND);
  int bind2 = c->sasl2 != NULL;
  if (bind2) { /* Bind2: the answer is the SASL2 <success/> (which ends c->sasl2) */
    bind2_done(c);
  } else {
    buf_t p;
    buf_init(&p);
    buf_puts(&p, "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>");
    xml_escape(&p, c->jid.full, strlen(c->jid.full), 0);
    buf_puts(&p, "</jid></bind>");
    buf_putc(&p, '\0');
    iq_result(c, id, (const char *)p.data);
    buf_free(&p);
    xfree(id);
  }
  /* stanzas the client pipelined after its bind request go out now, in order */
  while (c->held) {
    bus_msg_t *m = c->held;
    c->held = m->next;
    m->next = NULL;
    bus_to_shard(c->th->bus, c->shard, m);
  }
  c->nheld = 0;
  log_debug("conn %llx: bound %s%s", (unsigned long long)c->id, c->jid.full, bind2 ? " (Bind2)" : "");
}

/* Before SASL success: PLAIN (TLS not up), SECURED (TLS up). */
static void preauth_stanza(conn_t *c, xnode_t *s) {
  if (!strcmp(s->name, "starttls") && !strcmp(s->ns, NS_TLS)) {
    starttls(c, s);
  } else if (!strcmp(s->ns, NS_SASL2)) {
    sasl2_element(c, s);
  } else if (!strcmp(s->ns, NS_SASL)) {
    if (c->state == CONN_ST_PLAIN && c->th->cfg->require_tls) {
      /* RFC 6120 §5.3.1: TLS is mandatory here; SASL before it is a policy error */
      conn_send_str(c, "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><encryption-required/></failure>");
      conn_stream_error(c, "policy-violation", "STARTTLS is required before authentication");
    } else if (!strcmp(s->name, "auth")) {
      sasl_auth(c, s);
    } else if (!strcmp(s->name, "response")) {
      sasl_response(c, s);
    } else if (!strcmp(s->name, "abort")) {
      sasl_abort(c);
    } else {
      conn_stream_error(c, "unsupported-stanza-type", NULL);
    }
  } else if (is_stanza(s)) {
    if (register_preauth(c, s)) return; /* XEP-0077 §3.1: registration before SASL */
    conn_stream_error(c, "not-authorized", "authenticate first");
  } else {
    conn_stream_error(c, "unsupported-stanza-type", NULL);
  }
}

void negotiate_stanza(void *ud, xnode_t *s) {
  conn_t *c = ud;
  switch (c->state) {
  case CONN_ST_CLOSING: return;
  case CONN_ST_PLAIN:
  case CONN_ST_TLS: /* no XML arrives while the handshake runs: the stream restarted */
  case CONN_ST_SECURED: preauth_stanza(c, s); return;
  default: break;
  }
  if (!strcmp(s->ns, NS_SM)) {
    sm_element(c, s);
    return;
  }
  if (csi_element(c, s)) return;
  if (!is_stanza(s)) {
    conn_stream_error(c, "unsupported-stanza-type", NULL);
    return;
  }
  if (c->state != CONN_ST_AUTHED && c->state != CONN_ST_BINDING && c->state != CONN_ST_BOUND) {
    /* RESUMING, RESUME_REMOTE, RESUME_MOVING (XEP-0198 §5): nothing before <resumed/> or
     * <failed/>; only the three states named here have what routing needs (a full JID) */
    conn_stream_error(c, "not-authorized", "the stream is being resumed");
    return;
  }
  sm_stanza_in(c);
  metrics_inc((metric_id_t)(M_STANZAS_IN + metrics_kind(s->name)));
  shaper_charge(&c->shaper, c->shk, 0, 1);
  if (c->state == CONN_ST_AUTHED) {
    xnode_t *b = strcmp(s->name, "iq") == 0 ? xnode_child(s, "bind", NS_BIND) : NULL;
    if (b) bind_resource(c, s, b);
    else conn_stream_error(c, "not-authorized", "bind a resource first");
    return;
  }
  /* BINDING or BOUND: what the client pipelined after its bind is held (route.c) */
  if (c->state == CONN_ST_BINDING && xnode_child(s, "bind", NS_BIND)) {
    edge_stanza_error(c, s, "cancel", "not-allowed");
    return;
  }
  if (!strcmp(s->name, "iq")) {
    if (xnode_child(s, "bind", NS_BIND)) {
      /* RFC 6120 §7.7.2.1: one resource per stream */
      edge_stanza_error(c, s, "cancel", "not-allowed");
      return;
    }
    xnode_t *sess = xnode_child(s, "session", NS_SESSION);
    const char *type = xnode_attr(s, "type");
    if (sess && type && !strcmp(type, "set")) {
      /* RFC 3921 session establishment: a no-op kept for old clients */
      iq_result(c, xnode_attr(s, "id"), NULL);
      return;
    }
    if (register_iq(c, s)) return; /* XEP-0077 §3.3 password change, at the edge */
  }
  edge_route_stanza(c, s);
}

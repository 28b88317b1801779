/* SASL on the edge (RFC 6120 §6): SCRAM-SHA-256, SCRAM-SHA-1 (RFC 5802/7677) against
 * stored keys, and PLAIN (RFC 4616) only under TLS; SASL2 (XEP-0388) with the same
 * mechanisms, SCRAM -PLUS (tls-exporter, RFC 9266, TLS 1.3) and FAST (XEP-0484).
 *
 * Accounts are read from the thread's own store handle, in batches: the <auth/>s of one
 * loop turn are read together at the start of the next (store_account_get_many: one
 * round trip to Redis for the batch, so a log-in storm does not cost a round trip per
 * user). SCRAM costs a few HMACs on the loop; PLAIN needs PBKDF2 over the stored salt,
 * which runs on the libuv thread pool and comes back in the after-work callback on this
 * connection's loop. Whatever ends an exchange meanwhile (<abort/>, a new <auth/>, the
 * connection closing) voids its pending read or check (c->sasl_gen). After
 * limits.sasl_max_failures failures the stream is closed with <policy-violation/>
 * (RFC 6120 §6.4.5). */
#include "edge/edge_internal.h"

#include <stdlib.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"
#include "common/metrics.h"

static void sasl2_free(conn_t *c) {
  sasl2_req_t *r = c->sasl2;
  if (!r) return;
  xfree(r->additional);
  xfree(r->tag);
  xfree(r->previd);
  xfree(r->pre);
  xfree(r->token);
  xfree(r);
  c->sasl2 = NULL;
}

static void send_failure_text(conn_t *c, sasl_cond_t cond, const char *text) {
  c->sasl_gen++; /* this exchange is over (aborted included): its pending work is void */
  if ((int)cond > 0 && (int)cond < METRICS_SASL_CONDS) metrics_inc((metric_id_t)(M_LOGIN_FAIL + (int)cond));
  buf_t b;
  buf_init(&b);
  if (c->sasl2) /* XEP-0388 §2.6.3: the RFC 6120 condition in its namespace, then text */
    buf_printf(&b, "<failure xmlns='urn:xmpp:sasl:2'><%s xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
               sasl_cond_name(cond));
  else
    buf_printf(&b, "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><%s/>", sasl_cond_name(cond));
  if (text) buf_printf(&b, "<text xml:lang='en'>%s</text>", text);
  buf_puts(&b, "</failure>");
  sasl2_free(c);
  if (cond == SASL_NOT_AUTHORIZED)
    guard_auth_failed(c->th->edge->guard, c->ip, c->auth_bare, edge_now_ms());
  conn_send(c, (const char *)b.data, b.len);
  buf_free(&b);
  if (c->scram) {
    scram_server_free(c->scram);
    c->scram = NULL;
  }
  xfree(c->auth_bare);
  c->auth_bare = NULL;
  if (cond == SASL_NOT_AUTHORIZED || cond == SASL_INVALID_AUTHZID) {
    log_info("conn %llx: authentication failed (%s)", (unsigned long long)c->id, sasl_cond_name(cond));
  }
  if (cond != SASL_ABORTED && ++c->sasl_failures >= c->th->cfg->sasl_max_failures) {
    metrics_inc(M_LIMIT_SASL_FAILURES);
    conn_stream_error(c, "policy-violation", "too many failed authentication attempts");
  }
}

static void send_failure(conn_t *c, sasl_cond_t cond) { send_failure_text(c, cond, NULL); }

static void send_b64(conn_t *c, const char *elem, const char *data, size_t len) {
  buf_t b;
  buf_init(&b);
  buf_printf(&b, "<%s xmlns='%s'>", elem, c->sasl2 ? NS_SASL2 : NS_SASL);
  if (len) {
    char *enc = b64_encode((const unsigned char *)data, len);
    buf_puts(&b, enc);
    xfree(enc);
  } else if (!strcmp(elem, "success")) {
    /* nothing */
  } else {
    buf_putc(&b, '=');
  }
  buf_printf(&b, "</%s>", elem);
  conn_send(c, (const char *)b.data, b.len);
  buf_free(&b);
}

static void sasl2_succeed(conn_t *c, const char *extra, size_t extra_len);

/* [domain NAME] max_sessions: the authenticated streams of the domain's accounts this
 * edge node holds (counted from SASL success to the connection's end, XEP-0198 detached
 * ones included until they expire or are resumed). At the cap the authentication fails
 * with <temporary-auth-failure/> (RFC 6120 §6.5.12: "a temporary error condition within
 * the receiving entity"; the client may try again later, as it would when the store is
 * down) rather than after it with a stream error: the client learns it before binding,
 * and the credentials it proved stay valid. 0 when counted (c->dom_sessions), -1 when
 * refused (failure sent). */
static int domain_session_take(conn_t *c) {
  const domain_t *d = domain_find(conn_domain(c), strlen(conn_domain(c)));
  if (!d || !d->sessions || c->dom_sessions) return 0;
  long n = atomic_fetch_add(d->sessions, 1);
  if (d->max_sessions && n >= d->max_sessions) {
    atomic_fetch_sub(d->sessions, 1);
    log_info("conn %llx: %s refused: the domain %s holds its %d sessions", (unsigned long long)c->id,
             c->auth_bare ? c->auth_bare : "?", d->name, d->max_sessions);
    metrics_inc(M_LIMIT_DOMAIN_SESSIONS);
    char text[256];
    snprintf(text, sizeof text, "the domain %.100s has reached its limit of %d sessions; try again later", d->name,
             d->max_sessions);
    send_failure_text(c, SASL_TEMPORARY_AUTH_FAILURE, text);
    return -1;
  }
  c->dom_sessions = d->sessions;
  return 0;
}

static void succeed(conn_t *c, const char *extra, size_t extra_len) {
  if (domain_session_take(c) != 0) return;
  metrics_inc(M_LOGINS); /* SASL and SASL2 (XEP-0388) alike */
  if (c->sasl2) {
    sasl2_succeed(c, extra, extra_len);
    return;
  }
  c->sasl_gen++;
  send_b64(c, "success", extra, extra_len);
  if (c->scram) {
    scram_server_free(c->scram);
    c->scram = NULL;
  }
  c->header_sent = 0;
  conn_set_state(c, CONN_ST_AUTHED);
  conn_restart_stream(c); /* RFC 6120 §6.4.6 */
  log_debug("conn %llx: authenticated %s", (unsigned long long)c->id, c->auth_bare);
}

/* Payload of <auth/>/<response/>: base64, "=" meaning empty (RFC 6120 §6.4.2). */
static sasl_cond_t payload(xnode_t *n, unsigned char **out, size_t *len) {
  arena_t a;
  arena_init(&a);
  char *t = xnode_text(&a, n);
  sasl_cond_t cond = SASL_OK;
  *out = NULL;
  *len = 0;
  if (*t && strcmp(t, "=") != 0 && b64_decode(t, strlen(t), out, len) != 0) cond = SASL_INCORRECT_ENCODING;
  arena_free(&a);
  return cond;
}

/* Normalises a SASL username (a localpart) to the account's bare JID. */
static char *account_of(conn_t *c, const char *user) {
  char *local = NULL;
  if (jid_prep_local(user, strlen(user), &local) != 0) return NULL;
  const char *dom = conn_domain(c);
  size_t n = strlen(local) + strlen(dom) + 2;
  char *bare = xmalloc(n);
  snprintf(bare, n, "%s@%s", local, dom);
  xfree(local);
  return bare;
}

/* Back-off for password guessing: when this address or this account failed too often in
 * the last minute, refuse the attempt without looking at the credentials. */
static int throttled(conn_t *c) {
  if (guard_auth_allowed(c->th->edge->guard, c->ip, c->auth_bare, edge_now_ms()) == 0) return 0;
  log_info("conn %llx: authentication refused, too many recent failures", (unsigned long long)c->id);
  metrics_inc(M_LIMIT_AUTH_THROTTLED);
  send_failure_text(c, SASL_TEMPORARY_AUTH_FAILURE, "too many failed attempts; try again later");
  return 1;
}

/* authzid, when given, must name the same account (we do not support proxy auth). */
static int authzid_ok(conn_t *c, const char *authzid) {
  if (!authzid || !*authzid) return 1;
  jid_t j;
  if (jid_parse(authzid, strlen(authzid), &j) != 0) return 0;
  int ok = !j.resource && strcmp(j.bare, c->auth_bare) == 0;
  jid_free(&j);
  return ok;
}

typedef struct plain_job {
  uv_work_t req;
  conn_t *c;
  store_account_t acct;
  int have_acct;
  char *password;
  int ok;
  unsigned gen; /* c->sasl_gen when it started */
} plain_job_t;

static void plain_work(uv_work_t *w) {
  plain_job_t *j = w->data;
  /* Either stored credential proves the password; SHA-1's PBKDF2 costs about half of
   * SHA-256's at the same iteration count, and PLAIN pays it on every log-in. */
  j->ok = j->have_acct && scram_cred_check_password(SCRAM_SHA1, &j->acct.sha1, j->password,
                                                    strlen(j->password)) == 0;
}

static void plain_job_free(plain_job_t *j) {
  memset(j->password, 0, strlen(j->password));
  xfree(j->password);
  memset(&j->acct, 0, sizeof j->acct);
  xfree(j);
}

static void plain_done(uv_work_t *w, int status) {
  plain_job_t *j = w->data;
  conn_t *c = j->c;
  int ok = status == 0 && j->ok;
  unsigned gen = j->gen;
  plain_job_free(j);
  if (conn_work_done(c)) return; /* the connection went away meanwhile */
  if (conn_closing(c)) return;
  /* The client aborted meanwhile (<abort/>, or a new <auth/> answered <aborted/>): the
   * exchange is over and its result void; acting on it authenticated the connection
   * with no account (auth_bare had been freed) and crashed the server at bind. */
  if (gen != c->sasl_gen) return;
  if (ok) succeed(c, NULL, 0);
  else send_failure(c, SASL_NOT_AUTHORIZED);
  edge_flush(c->th);
}

static void acct_ask(conn_t *c, plain_job_t *plain, scram_hash_t h);
static void acct_flush_cb(uv_idle_t *h);
static void scram_have_account(conn_t *c, scram_hash_t h, int rc, const store_account_t *a);

static void start_plain(conn_t *c, const unsigned char *msg, size_t len) {
  if (c->state != CONN_ST_SECURED) {
    send_failure(c, SASL_ENCRYPTION_REQUIRED);
    return;
  }
  char *authzid = NULL, *authcid = NULL, *passwd = NULL;
  sasl_cond_t cond = sasl_plain_parse(msg, len, &authzid, &authcid, &passwd);
  if (cond != SASL_OK) {
    send_failure(c, cond);
    return;
  }
  c->auth_bare = account_of(c, authcid);
  if (!c->auth_bare) {
    cond = SASL_NOT_AUTHORIZED;
  } else if (!authzid_ok(c, authzid)) {
    cond = SASL_INVALID_AUTHZID;
  }
  xfree(authzid);
  xfree(authcid);
  if (cond == SASL_OK && throttled(c)) {
    memset(passwd, 0, strlen(passwd));
    xfree(passwd);
    return;
  }
  if (cond != SASL_OK) {
    memset(passwd, 0, strlen(passwd));
    xfree(passwd);
    send_failure(c, cond);
    return;
  }
  plain_job_t *j = xcalloc(1, sizeof *j);
  j->req.data = j;
  j->c = c;
  j->password = passwd;
  j->gen = c->sasl_gen;
  acct_ask(c, j, SCRAM_SHA256);
}


/* PLAIN, the account read (rc 0 or XMPP_ENOENT; else a storage failure): the password
 * check goes to the thread pool. */
static void plain_have_account(conn_t *c, plain_job_t *j, int rc, const store_account_t *a) {
  if (rc != 0 && rc != XMPP_ENOENT) {
    plain_job_free(j);
    send_failure(c, SASL_TEMPORARY_AUTH_FAILURE);
    return;
  }
  j->have_acct = rc == 0;
  if (j->have_acct) j->acct = *a;
  c->pending_work++;
  uv_queue_work(&c->th->loop, &j->req, plain_work, plain_done);
}

/* The channel binding types of this connection, with their data: tls-exporter (RFC 9266,
 * TLS 1.3 only: on 1.2 it would need the extended master secret) and tls-server-end-point
 * (RFC 5929 §4, any version). No tls-unique: not defined for TLS 1.3 (RFC 9266 §3), and
 * on TLS 1.2 tls-server-end-point serves. */
static size_t cb_types(const conn_t *c, scram_cb_t out[SCRAM_MAX_CB_TYPES]) {
  size_t n = 0;
  if (!c->tls || !c->secure) return 0;
  const uint8_t *d;
  size_t len = tls_conn_exporter(c->tls, &d);
  if (len) out[n++] = (scram_cb_t){"tls-exporter", d, len};
  len = tls_conn_endpoint(c->tls, &d);
  if (len) out[n++] = (scram_cb_t){"tls-server-end-point", d, len};
  return n;
}

/* SCRAM -PLUS is offered: always over SASL2 (XEP-0388), over RFC 6120 SASL only with
 * tls.legacy_sasl_plus (slixmpp before 1.8.5 picks -PLUS there and binds with
 * tls-unique, which TLS 1.3 does not define: it could not log in with SCRAM at all). */
static size_t plus_types(const conn_t *c, scram_cb_t out[SCRAM_MAX_CB_TYPES]) {
  if (!c->sasl2 && !c->th->cfg->legacy_sasl_plus) return 0;
  return cb_types(c, out);
}

void sasl_feature(const conn_t *c, buf_t *out, int secured) {
  scram_cb_t cbs[SCRAM_MAX_CB_TYPES];
  size_t n = secured && c->th->cfg->legacy_sasl_plus ? cb_types(c, cbs) : 0;
  buf_puts(out, "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
  if (n) buf_puts(out, "<mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism>");
  buf_puts(out, "<mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>");
  if (secured) buf_puts(out, "<mechanism>PLAIN</mechanism>");
  buf_puts(out, "</mechanisms>");
  /* XEP-0440 §2: the types the server binds with, whether -PLUS is offered over SASL or
   * SASL2 (always under TLS) */
  if (secured && sasl2_offered(c)) n = cb_types(c, cbs);
  if (!n) return;
  buf_puts(out, "<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>");
  for (size_t i = 0; i < n; i++) buf_printf(out, "<channel-binding type='%s'/>", cbs[i].name);
  buf_puts(out, "</sasl-channel-binding>");
}

static void start_scram(conn_t *c, scram_hash_t h, int plus, const unsigned char *msg, size_t len) {
  scram_cb_t cbs[SCRAM_MAX_CB_TYPES];
  size_t n = plus_types(c, cbs);
  if (plus && !n) {
    send_failure(c, SASL_INVALID_MECHANISM);
    return;
  }
  c->scram = scram_server_new(h);
  scram_server_channel_binding(c->scram, plus, cbs, n);
  const char *user = NULL;
  sasl_cond_t cond = scram_server_client_first(c->scram, (const char *)msg, len, &user);
  if (cond != SASL_OK) {
    send_failure(c, cond);
    return;
  }
  c->auth_bare = account_of(c, user);
  if (throttled(c)) return;
  if (c->auth_bare) acct_ask(c, NULL, h);
  else scram_have_account(c, h, XMPP_ENOENT, NULL); /* not a valid localpart: no account */
}

/* SCRAM, the account read: server-first-message (a made-up salt for an unknown user, so
 * that the exchange fails only at the proof, RFC 5802 §5.1). */
static void scram_have_account(conn_t *c, scram_hash_t h, int rc, const store_account_t *a) {
  if (rc != 0 && rc != XMPP_ENOENT) {
    send_failure(c, SASL_TEMPORARY_AUTH_FAILURE);
    return;
  }
  char *out = NULL;
  size_t outlen = 0;
  sasl_cond_t cond =
      scram_server_first(c->scram, rc == 0 ? (h == SCRAM_SHA1 ? &a->sha1 : &a->sha256) : NULL, &out, &outlen);
  if (cond != SASL_OK) {
    send_failure(c, cond);
    return;
  }
  send_b64(c, "challenge", out, outlen);
  xfree(out);
}

/* ---- account reads, one batch per loop turn ---------------------------------------- */

struct acct_req {
  conn_t *c;
  unsigned gen;       /* c->sasl_gen when asked: a mismatch means the exchange ended */
  scram_hash_t h;     /* SCRAM's hash */
  plain_job_t *plain; /* PLAIN: its password check, run once the account is known */
};

/* Queues the read of c->auth_bare's account. The connection is held (pending_work++)
 * until the answer; the idle handle keeps the loop from sleeping until then. */
static void acct_ask(conn_t *c, plain_job_t *plain, scram_hash_t h) {
  edge_thread_t *th = c->th;
  if (th->acct_n == th->acct_cap) {
    th->acct_cap = th->acct_cap ? th->acct_cap * 2 : 64;
    th->acct_q = xrealloc(th->acct_q, th->acct_cap * sizeof *th->acct_q);
  }
  th->acct_q[th->acct_n++] = (struct acct_req){c, c->sasl_gen, h, plain};
  c->pending_work++;
  if (th->acct_n == 1) uv_idle_start(&th->acct_idle, acct_flush_cb);
}

static void acct_flush(edge_thread_t *th) {
  size_t n = th->acct_n;
  struct acct_req *q = th->acct_q;
  th->acct_q = NULL; /* answers below may queue new reads: they go to the next batch */
  th->acct_n = th->acct_cap = 0;
  if (!n) return;
  const char **bares = xcalloc(n, sizeof *bares);
  size_t *slot = xcalloc(n, sizeof *slot);
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    conn_t *c = q[i].c;
    slot[i] = SIZE_MAX; /* not read: the connection or the exchange is gone */
    if (c->handle_closed || conn_closing(c) || q[i].gen != c->sasl_gen || !c->auth_bare) continue;
    slot[i] = m;
    bares[m++] = c->auth_bare;
  }
  store_account_t *accts = xcalloc(m ? m : 1, sizeof *accts);
  int *rcs = xcalloc(m ? m : 1, sizeof *rcs);
  if (m && store_account_get_many(th->store, bares, m, accts, rcs) != 0)
    for (size_t k = 0; k < m; k++) rcs[k] = XMPP_EIO;
  for (size_t i = 0; i < n; i++) {
    conn_t *c = q[i].c;
    plain_job_t *plain = q[i].plain;
    if (conn_work_done(c) || slot[i] == SIZE_MAX || conn_closing(c) || q[i].gen != c->sasl_gen) {
      if (plain) plain_job_free(plain);
      continue;
    }
    if (plain) plain_have_account(c, plain, rcs[slot[i]], &accts[slot[i]]);
    else scram_have_account(c, q[i].h, rcs[slot[i]], &accts[slot[i]]);
  }
  memset(accts, 0, (m ? m : 1) * sizeof *accts); /* credentials do not linger in freed memory */
  xfree(accts);
  xfree(rcs);
  xfree(slot);
  xfree(bares);
  xfree(q);
  edge_flush(th);
}

static void acct_flush_cb(uv_idle_t *h) {
  uv_idle_stop(h);
  acct_flush(h->data);
}

void sasl_thread_init(edge_thread_t *th) {
  uv_idle_init(&th->loop, &th->acct_idle);
  th->acct_idle.data = th;
}

void sasl_thread_close(edge_thread_t *th) {
  acct_flush(th);
  uv_close((uv_handle_t *)&th->acct_idle, NULL);
}

static void start_mech(conn_t *c, const char *mech, xnode_t *resp);
static void start_fast(conn_t *c, int mech, const unsigned char *msg, size_t len);
#define NS_FAST "urn:xmpp:fast:0"
static int fast_offered(const conn_t *c) { return c->th->cfg->fast_tokens > 0; }

/* The HT mechanisms (draft-schmaus-kitten-sasl-ht), indexed by STORE_FAST_*: -NONE binds
 * to nothing, -ENDP to tls-server-end-point (RFC 5929), -EXPR to tls-exporter (RFC 9266). */
static const char *const ht_names[] = {"HT-SHA-256-NONE", "HT-SHA-256-ENDP", "HT-SHA-256-EXPR"};

static int ht_mech(const char *name) {
  for (int i = 0; i < 3; i++)
    if (name && !strcmp(name, ht_names[i])) return i;
  return -1;
}

/* The channel binding data of mech on this connection: 0 and *cb (NULL, 0 for -NONE), or
 * -1 when the connection has none of that type (the mechanism is not offered). */
static int ht_cb(const conn_t *c, int mech, const uint8_t **cb, size_t *len) {
  *cb = NULL;
  *len = 0;
  if (mech == STORE_FAST_NONE) return 0;
  if (!c->tls || !c->secure) return -1;
  *len = mech == STORE_FAST_EXPR ? tls_conn_exporter(c->tls, cb) : tls_conn_endpoint(c->tls, cb);
  return *len ? 0 : -1;
}

static int ht_offered(const conn_t *c, int mech) {
  const uint8_t *cb;
  size_t len;
  return mech >= 0 && ht_cb(c, mech, &cb, &len) == 0;
}

void sasl_auth(conn_t *c, xnode_t *auth) {
  if (c->scram || c->auth_bare || c->sasl2) {
    /* a new <auth/> while one is running: RFC 6120 §6.4.4 lets us abort the old one
     * (its pending read or check, if any, is voided by sasl_gen); the new one starts */
    send_failure(c, SASL_ABORTED);
  }
  start_mech(c, xnode_attr(auth, "mechanism"), auth);
}

/* The mechanism with its initial response (the text of resp; NULL: empty). */
static void start_mech(conn_t *c, const char *mech, xnode_t *resp) {
  unsigned char *msg = NULL;
  size_t len = 0;
  sasl_cond_t cond = resp ? payload(resp, &msg, &len) : SASL_OK;
  if (cond != SASL_OK) {
    send_failure(c, cond);
    return;
  }
  if (!mech) send_failure(c, SASL_INVALID_MECHANISM);
  else if (!strcmp(mech, "SCRAM-SHA-256")) start_scram(c, SCRAM_SHA256, 0, msg, len);
  else if (!strcmp(mech, "SCRAM-SHA-1")) start_scram(c, SCRAM_SHA1, 0, msg, len);
  else if (!strcmp(mech, "SCRAM-SHA-256-PLUS")) start_scram(c, SCRAM_SHA256, 1, msg, len);
  else if (!strcmp(mech, "SCRAM-SHA-1-PLUS")) start_scram(c, SCRAM_SHA1, 1, msg, len);
  else if (!strcmp(mech, "PLAIN")) start_plain(c, msg, len);
  else if (c->sasl2 && fast_offered(c) && ht_offered(c, ht_mech(mech))) start_fast(c, ht_mech(mech), msg, len);
  else send_failure(c, SASL_INVALID_MECHANISM);
  xfree(msg);
}

void sasl_response(conn_t *c, xnode_t *resp) {
  if (!c->scram || !c->sasl2 != !strcmp(resp->ns, NS_SASL)) { /* none running, or of the other protocol */
    send_failure(c, SASL_MALFORMED_REQUEST);
    return;
  }
  unsigned char *msg;
  size_t len;
  sasl_cond_t cond = payload(resp, &msg, &len);
  if (cond != SASL_OK) {
    send_failure(c, cond);
    return;
  }
  char *out = NULL;
  size_t outlen = 0;
  cond = scram_server_client_final(c->scram, (const char *)msg, len, &out, &outlen);
  xfree(msg);
  if (cond == SASL_OK && !authzid_ok(c, scram_server_authzid(c->scram))) cond = SASL_INVALID_AUTHZID;
  if (cond != SASL_OK) {
    xfree(out);
    send_failure(c, cond);
    return;
  }
  succeed(c, out, outlen);
  xfree(out);
}

void sasl_abort(conn_t *c) { send_failure(c, SASL_ABORTED); }

void sasl_cleanup(conn_t *c) {
  sasl2_free(c);
  if (c->scram) scram_server_free(c->scram);
  c->scram = NULL;
  xfree(c->auth_bare);
  c->auth_bare = NULL;
}

/* ---- SASL2 (XEP-0388) --------------------------------------------------------------
 * The same mechanisms and the same code as above; what differs is the framing and what
 * follows success: no stream restart (§2.6.2), and what <authenticate/> asked inline
 * (Bind2, XEP-0386; a XEP-0198 resumption) is done first, its results carried in the
 * <success/>, whose <authorization-identifier/> is then the full JID. Offered under TLS
 * only. Client-controlled sizes: the user agent's software and device, the Bind2 tag
 * (limits.sasl2_text_bytes each; the whole element is under limits.max_stanza_bytes),
 * the inline elements (each kind counted once, unknown ones ignored: §2.4). */

int sasl2_offered(const conn_t *c) { return c->state == CONN_ST_SECURED; }

void sasl2_feature(const conn_t *c, buf_t *out) {
  scram_cb_t cbs[SCRAM_MAX_CB_TYPES];
  buf_puts(out, "<authentication xmlns='urn:xmpp:sasl:2'>");
  if (cb_types(c, cbs)) /* RFC 9266, RFC 5929: the types in <sasl-channel-binding/> */
    buf_puts(out, "<mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism>");
  buf_puts(out, "<mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>"
                "<mechanism>PLAIN</mechanism><inline>"
                /* XEP-0386 §2.1: Bind2, with the features it can enable inline */
                "<bind xmlns='urn:xmpp:bind:0'><inline>"
                "<feature var='urn:xmpp:carbons:2'/><feature var='urn:xmpp:csi:0'/>");
  if (sm_offered(c)) buf_puts(out, "<feature var='urn:xmpp:sm:3'/>");
  buf_puts(out, "</inline></bind>");
  /* XEP-0484 §2: FAST, its mechanisms listed here only, channel-bound ones first */
  if (fast_offered(c)) {
    buf_puts(out, "<fast xmlns='urn:xmpp:fast:0'>");
    for (int m = STORE_FAST_EXPR; m >= STORE_FAST_NONE; m--)
      if (ht_offered(c, m)) buf_printf(out, "<mechanism>%s</mechanism>", ht_names[m]);
    buf_puts(out, "</fast>");
  }
  /* XEP-0198: resumption inline in <authenticate/> */
  if (sm_offered(c) && c->th->cfg->sm_resume_timeout > 0) buf_puts(out, "<sm xmlns='urn:xmpp:sm:3'/>");
  buf_puts(out, "</inline></authentication>");
}

/* RFC 4122 §3 text form: 8-4-4-4-12 hex digits (XEP-0388 §2.5.1: id is a UUID). */
static int is_uuid(const char *s) {
  if (strlen(s) != 36) return 0;
  for (int i = 0; i < 36; i++) {
    int dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
                                (s[i] >= 'A' && s[i] <= 'F')))
      return 0;
  }
  return 1;
}

/* Text of a client-chosen name (user agent software/device, Bind2 tag): NULL when too
 * long, empty or with control characters (C0, DEL). Allocated in a. */
static const char *short_text(arena_t *a, xnode_t *n, size_t max) {
  const char *t = xnode_text(a, n);
  size_t len = strlen(t);
  if (!len || len > max) return NULL;
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)t[i] < 0x20 || t[i] == 0x7f) return NULL;
  return t;
}

/* Reads what <authenticate/> asks besides the mechanism into r: NULL, or why it is
 * refused (static text, for <failure><malformed-request/><text/>). */
static const char *parse_inline(conn_t *c, xnode_t *e, sasl2_req_t *r) {
  size_t max = (size_t)c->th->cfg->sasl2_text_bytes;
  arena_t a;
  arena_init(&a);
  const char *why = NULL;
  xnode_t *ua = xnode_child(e, "user-agent", NS_SASL2);
  if (ua) {
    const char *id = xnode_attr(ua, "id");
    if (id && !is_uuid(id)) why = "user-agent id is not a UUID";
    else if (id) snprintf(r->ua_id, sizeof r->ua_id, "%s", id);
    for (xnode_t *k = xnode_first_elem(ua); k && !why; k = xnode_next_elem(k))
      if (!short_text(&a, k, max)) why = "user-agent software or device empty, too long or not printable";
  }
  xnode_t *b = why ? NULL : xnode_child(e, "bind", NS_BIND2);
  if (b) {
    r->bind = 1;
    xnode_t *tag = xnode_child(b, "tag", NS_BIND2);
    if (tag) {
      const char *t = short_text(&a, tag, max);
      if (!t) why = "bind tag empty, too long or not printable";
      else r->tag = xstrdup(t);
    }
    for (xnode_t *k = xnode_first_elem(b); k && !why; k = xnode_next_elem(k)) {
      if (!strcmp(k->ns, NS_SM) && !strcmp(k->name, "enable") && sm_offered(c)) {
        const char *res = xnode_attr(k, "resume");
        r->sm = res && (!strcmp(res, "true") || !strcmp(res, "1")) ? 2 : 1;
      } else if (!strcmp(k->ns, NS_CARBONS2) && !strcmp(k->name, "enable")) {
        r->carbons = 1;
      } else if (!strcmp(k->ns, NS_CSI) && !strcmp(k->name, "inactive")) {
        r->inactive = 1;
      } /* XEP-0386 §2.3: what the server does not know it ignores */
    }
  }
  r->count = -1;
  xnode_t *rt = why ? NULL : xnode_child(e, "request-token", NS_FAST);
  if (rt && fast_offered(c)) { /* a mechanism not offered here: no token (§3.1) */
    r->token_mech = ht_mech(xnode_attr(rt, "mechanism"));
    r->want_token = ht_offered(c, r->token_mech);
  }
  xnode_t *fa = why ? NULL : xnode_child(e, "fast", NS_FAST);
  if (fa) {
    const char *cs = xnode_attr(fa, "count"), *inv = xnode_attr(fa, "invalidate");
    if (cs) {
      char *end = NULL;
      unsigned long long n = strtoull(cs, &end, 10);
      if (!*cs || *end || *cs == '-' || n > INT64_MAX / 2) why = "bad <fast count/>";
      else r->count = (int64_t)n;
    }
    r->invalidate = inv && (!strcmp(inv, "true") || !strcmp(inv, "1"));
  }
  xnode_t *res = why ? NULL : xnode_child(e, "resume", NS_SM);
  if (res) {
    const char *id = xnode_attr(res, "previd"), *hs = xnode_attr(res, "h");
    char *end = NULL;
    unsigned long long h = hs ? strtoull(hs, &end, 10) : 0;
    if (!id || !hs || !*hs || *end || h > UINT32_MAX || strlen(id) > 64) why = "bad <resume/>";
    else {
      r->previd = xstrdup(id);
      r->h = (uint32_t)h;
    }
  }
  arena_free(&a);
  return why;
}

static void sasl2_authenticate(conn_t *c, xnode_t *e) {
  if (c->scram || c->auth_bare || c->sasl2) send_failure(c, SASL_ABORTED); /* as for <auth/> */
  if (conn_closing(c)) return;
  sasl2_req_t *r = xcalloc(1, sizeof *r);
  c->sasl2 = r;
  const char *why = parse_inline(c, e, r);
  if (why) {
    send_failure_text(c, SASL_MALFORMED_REQUEST, why);
    return;
  }
  start_mech(c, xnode_attr(e, "mechanism"), xnode_child(e, "initial-response", NS_SASL2));
}

void sasl2_element(conn_t *c, xnode_t *e) {
  if (c->state != CONN_ST_SECURED) {
    /* only offered under TLS, before authentication */
    if (!strcmp(e->name, "authenticate") && c->state == CONN_ST_PLAIN && !c->th->cfg->require_tls) {
      c->sasl2 = xcalloc(1, sizeof *c->sasl2);
      send_failure_text(c, SASL_ENCRYPTION_REQUIRED, "SASL2 is offered under TLS only");
      return;
    }
    conn_stream_error(c, "policy-violation", "SASL2 is offered under TLS only, before authentication");
    return;
  }
  if (!strcmp(e->name, "authenticate")) sasl2_authenticate(c, e);
  else if (!strcmp(e->name, "response")) sasl_response(c, e);
  else if (!strcmp(e->name, "abort")) {
    if (!c->sasl2) c->sasl2 = xcalloc(1, sizeof *c->sasl2); /* answered in its namespace */
    sasl_abort(c);
  } else conn_stream_error(c, "unsupported-stanza-type", NULL);
}

/* The mechanism succeeded: the account is authenticated (no stream restart, XEP-0388
 * §2.6.2); what was asked inline runs, and the <success/> waits for it. */
static void fast_tokens(conn_t *c);

static void sasl2_succeed(conn_t *c, const char *extra, size_t extra_len) {
  sasl2_req_t *r = c->sasl2;
  c->sasl_gen++;
  if (c->scram) {
    scram_server_free(c->scram);
    c->scram = NULL;
  }
  if (extra_len) r->additional = b64_encode((const unsigned char *)extra, extra_len);
  conn_set_state(c, CONN_ST_AUTHED);
  log_debug("conn %llx: authenticated %s (SASL2%s)", (unsigned long long)c->id, c->auth_bare,
            r->fast ? ", FAST" : "");
  fast_tokens(c);
  if (r->previd) sm_resume_inline(c, r->previd, r->h); /* then Bind2 if it fails */
  else if (r->bind) negotiate_bind2(c, NULL);
  else sasl2_complete(c, NULL);
}

void sasl2_complete(conn_t *c, const char *results) {
  sasl2_req_t *r = c->sasl2;
  if (!r) return;
  buf_t b;
  buf_init(&b);
  buf_puts(&b, "<success xmlns='urn:xmpp:sasl:2'>");
  if (r->additional) buf_printf(&b, "<additional-data>%s</additional-data>", r->additional);
  const char *who = c->state == CONN_ST_BOUND ? c->jid.full : c->auth_bare;
  buf_puts(&b, "<authorization-identifier>");
  xml_escape(&b, who, strlen(who), 0);
  buf_puts(&b, "</authorization-identifier>");
  if (results) buf_puts(&b, results);
  if (r->token) buf_puts(&b, r->token);
  buf_puts(&b, "</success>");
  conn_send(c, (const char *)b.data, b.len);
  buf_free(&b);
  sasl2_free(c);
}

void sasl2_bind_failed(conn_t *c, const char *text) {
  log_info("conn %llx: SASL2 bind refused: %s", (unsigned long long)c->id, text);
  c->sasl_failures = 0; /* not a credentials failure: the stream ends below anyway */
  send_failure_text(c, SASL_TEMPORARY_AUTH_FAILURE, text);
  conn_close(c);
}

/* ---- FAST (XEP-0484) ---------------------------------------------------------------
 * HT-SHA-256-EXPR, -ENDP and -NONE over SASL2: the client proves it holds a token the
 * server issued to its user agent (<user-agent id/>) with one HMAC over the channel's
 * binding data (none for -NONE), no PBKDF2, no round trip. Tokens are issued on
 * <request-token/>, bound to the mechanism it names (§3.2: used with another one, a
 * token is refused), stored as SHA-256 (store_fast_*, ht_token_key), valid
 * limits.fast_token_lifetime seconds; the one a new token replaces stays valid until the
 * new one is used (§3.3); a log-in with a token past half of its life gets a new one.
 * Replay protection (§3.2), per token: a <fast count/> must be above the last one
 * accepted with that token (checked and stored atomically by the store; a new token does
 * not reset the count of the one it replaces). A log-in without a count is accepted
 * while the token was never used with one (the XEP requires the count only of
 * authentication in TLS 0-RTT data, which this server does not accept); once it was, a
 * log-in without one is refused, so a client that counts cannot be replayed by dropping
 * the count. With -NONE the proof covers neither the count nor the channel: the count
 * stops replays of captured bytes (0-RTT style), and only -EXPR/-ENDP stop a relay of
 * the proof by someone who sees inside TLS. <fast invalidate='true'/> revokes the token
 * once authenticated. The token read is one store call on the loop (SQLite: a
 * primary-key look-up; Redis: one round trip). */

static void start_fast(conn_t *c, int mech, const unsigned char *msg, size_t len) {
  sasl2_req_t *r = c->sasl2;
  char *authcid = NULL;
  unsigned char proof[HT_KEY_LEN];
  sasl_cond_t cond = ht_parse(msg, len, &authcid, proof);
  if (cond != SASL_OK) {
    send_failure(c, cond);
    return;
  }
  c->auth_bare = account_of(c, authcid);
  xfree(authcid);
  if (!c->auth_bare || !r->ua_id[0]) { /* tokens belong to a user agent: none, none */
    send_failure_text(c, SASL_NOT_AUTHORIZED, r->ua_id[0] ? NULL : "FAST needs a user-agent id");
    return;
  }
  if (throttled(c)) return;
  const uint8_t *cb;
  size_t cblen;
  if (ht_cb(c, mech, &cb, &cblen) != 0) { /* cannot happen: offered */
    send_failure(c, SASL_INVALID_MECHANISM);
    return;
  }
  store_t *st = c->th->store;
  store_fast_t t;
  int rc = store_fast_get(st, c->auth_bare, r->ua_id, &t);
  if (rc != 0 && rc != XMPP_ENOENT) {
    send_failure(c, SASL_TEMPORARY_AUTH_FAILURE);
    return;
  }
  int64_t now = (int64_t)time(NULL);
  int which = 0; /* 1: the current token, 2: the previous one */
  if (rc == 0) {
    if (now < t.cur_expiry && t.cur_mech == mech && ht_check(t.cur, cb, cblen, proof) == 0) which = 1;
    else if (t.prev_expiry && now < t.prev_expiry && t.prev_mech == mech && ht_check(t.prev, cb, cblen, proof) == 0)
      which = 2;
  }
  if (!which) { /* unknown, forged, expired, another account's, user agent's, mechanism's or channel's */
    memset(&t, 0, sizeof t);
    send_failure(c, SASL_NOT_AUTHORIZED);
    return;
  }
  const unsigned char *key = which == 1 ? t.cur : t.prev;
  if (r->count < 0 && (which == 1 ? t.count : t.prev_count) >= 0) {
    memset(&t, 0, sizeof t);
    send_failure_text(c, SASL_NOT_AUTHORIZED, "FAST count required: this token was used with one");
    return;
  }
  if (r->count >= 0) {
    rc = store_fast_count(st, c->auth_bare, r->ua_id, key, r->count);
    if (rc != 0) {
      memset(&t, 0, sizeof t);
      if (rc == XMPP_EDENIED) send_failure_text(c, SASL_NOT_AUTHORIZED, "FAST count replayed");
      else send_failure(c, rc == XMPP_ENOENT ? SASL_NOT_AUTHORIZED : SASL_TEMPORARY_AUTH_FAILURE);
      return;
    }
  }
  unsigned char resp[HT_KEY_LEN];
  rc = ht_hmac(key, 0, cb, cblen, resp);
  r->fast = 1;
  r->fast_mech = mech;
  r->fast_expiry = which == 1 ? t.cur_expiry : t.prev_expiry;
  if (which == 1 && t.prev_expiry && !r->invalidate) {
    /* §3.3: the client has the new token: the one it replaced goes (the current one
     * keeps its count: the store matches counts by hash) */
    memset(t.prev, 0, sizeof t.prev);
    t.prev_expiry = 0;
    t.prev_mech = STORE_FAST_NONE;
    (void)store_fast_put(st, c->auth_bare, r->ua_id, &t, 0);
  }
  memset(&t, 0, sizeof t);
  if (rc != 0) {
    send_failure(c, SASL_TEMPORARY_AUTH_FAILURE);
    return;
  }
  succeed(c, (const char *)resp, sizeof resp);
}

/* After any SASL2 success: <fast invalidate/>, <request-token/>, rotation. */
static void fast_tokens(conn_t *c) {
  sasl2_req_t *r = c->sasl2;
  const xmpp_config_t *cfg = c->th->cfg;
  store_t *st = c->th->store;
  if (!fast_offered(c) || !r->ua_id[0]) return;
  if (r->invalidate) (void)store_fast_delete(st, c->auth_bare, r->ua_id); /* §3.5 */
  int64_t now = (int64_t)time(NULL), life = cfg->fast_token_lifetime;
  int rotate = r->fast && !r->invalidate && r->fast_expiry - now < life / 2;
  if (!r->want_token && !rotate) return;
  store_fast_t t, old;
  memset(&t, 0, sizeof t);
  char *tok = NULL;
  if (ht_token_make(&tok, t.cur) != 0) return;
  t.cur_expiry = now + life;
  /* bound to the mechanism asked for (§3.2); rotation keeps the one just used */
  t.cur_mech = r->want_token ? r->token_mech : r->fast_mech;
  if (!r->invalidate && store_fast_get(st, c->auth_bare, r->ua_id, &old) == 0 && now < old.cur_expiry) {
    memcpy(t.prev, old.cur, sizeof t.prev); /* still accepted until the new one is used, */
    t.prev_expiry = old.cur_expiry;         /* with its count (the store keeps it) */
    t.prev_mech = old.cur_mech;
  }
  memset(&old, 0, sizeof old);
  int rc = store_fast_put(st, c->auth_bare, r->ua_id, &t, (unsigned)cfg->fast_tokens);
  memset(&t, 0, sizeof t);
  if (rc != 0) {
    log_warn("conn %llx: FAST token for %s not stored (%d)", (unsigned long long)c->id, c->auth_bare, rc);
    xfree(tok);
    return;
  }
  char when[32];
  time_t exp = (time_t)(now + life);
  struct tm tm;
  gmtime_r(&exp, &tm);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  buf_t b;
  buf_init(&b);
  buf_printf(&b, "<token xmlns='urn:xmpp:fast:0' expiry='%s' token='%s'/>", when, tok);
  buf_putc(&b, '\0');
  xfree(r->token);
  r->token = xstrdup((const char *)b.data);
  buf_free(&b);
  memset(tok, 0, strlen(tok));
  xfree(tok);
}

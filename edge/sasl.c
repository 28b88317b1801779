/* SASL on the edge (RFC 6120 §6): SCRAM-SHA-256, SCRAM-SHA-1 (RFC 5802/7677) against
 * stored keys, and PLAIN (RFC 4616) only under TLS.
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

#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"
#include "common/metrics.h"

static void send_failure_text(conn_t *c, sasl_cond_t cond, const char *text) {
  c->sasl_gen++; /* this exchange is over (aborted included): its pending work is void */
  if ((int)cond > 0 && (int)cond < METRICS_SASL_CONDS) metrics_inc((metric_id_t)(M_LOGIN_FAIL + (int)cond));
  buf_t b;
  buf_init(&b);
  buf_printf(&b, "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><%s/>", sasl_cond_name(cond));
  if (text) buf_printf(&b, "<text xml:lang='en'>%s</text>", text);
  buf_puts(&b, "</failure>");
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
  buf_printf(&b, "<%s xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>", elem);
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

static void succeed(conn_t *c, const char *extra, size_t extra_len) {
  c->sasl_gen++;
  metrics_inc(M_LOGINS);
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
  size_t n = strlen(local) + strlen(c->th->cfg->domain) + 2;
  char *bare = xmalloc(n);
  snprintf(bare, n, "%s@%s", local, c->th->cfg->domain);
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

static void start_scram(conn_t *c, scram_hash_t h, const unsigned char *msg, size_t len) {
  c->scram = scram_server_new(h);
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

void sasl_auth(conn_t *c, xnode_t *auth) {
  if (c->scram || c->auth_bare) {
    /* a new <auth/> while one is running: RFC 6120 §6.4.4 lets us abort the old one
     * (its pending read or check, if any, is voided by sasl_gen); the new one starts */
    send_failure(c, SASL_ABORTED);
  }
  const char *mech = xnode_attr(auth, "mechanism");
  unsigned char *msg;
  size_t len;
  sasl_cond_t cond = payload(auth, &msg, &len);
  if (cond != SASL_OK) {
    send_failure(c, cond);
    return;
  }
  if (!mech) send_failure(c, SASL_INVALID_MECHANISM);
  else if (!strcmp(mech, "SCRAM-SHA-256")) start_scram(c, SCRAM_SHA256, msg, len);
  else if (!strcmp(mech, "SCRAM-SHA-1")) start_scram(c, SCRAM_SHA1, msg, len);
  else if (!strcmp(mech, "PLAIN")) start_plain(c, msg, len);
  else send_failure(c, SASL_INVALID_MECHANISM);
  xfree(msg);
}

void sasl_response(conn_t *c, xnode_t *resp) {
  if (!c->scram) {
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
  if (c->scram) scram_server_free(c->scram);
  c->scram = NULL;
  xfree(c->auth_bare);
  c->auth_bare = NULL;
}

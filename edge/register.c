/* XEP-0077 in-band registration and password change, at the edge.
 *
 * Registration (§3.1) happens before SASL, on a stream under TLS only (a password never
 * crosses in clear), and only with registration.open. The edge answers it itself, as it
 * answers SASL: the router has no session for an unauthenticated stream.
 *
 *   get  -> the form (<instructions/>, <username/>, <password/>)
 *   set  -> fields checked (missing or empty: <not-acceptable/>; localpart refused by
 *           PRECIS, jid_prep_local: <jid-malformed/>; password policy: <not-acceptable/>),
 *           then the address's budget (guard_register_take: registration.per_ip_per_hour
 *           attempts in a sliding hour, else <resource-constraint/>), then <conflict/> when
 *           the account exists, then PBKDF2 for both SCRAM credentials on the libuv thread
 *           pool (as PLAIN's check in sasl.c), then store_account_create on this loop.
 *
 * The budget is spent before any store read or hashing, so a flood of attempts costs a
 * table lookup each; one registration or password change at a time per connection.
 *
 * Password change (§3.3) by an authenticated user works whether registration is open or
 * not: the username must be the user's own, the new password meets the same policy, and
 * the credentials (new salt, new keys) are rewritten with store_account_update. Credentials
 * have exactly the writers they had before (xmppctl and the edge, each one whole-record
 * update); the router never writes them. Sessions already logged in stay so.
 *
 * Cancellation (<remove/>, §3.2) is refused with <not-allowed/>: an account's roster,
 * offline queue and documents belong to its shard on the router, which may be using them
 * at that moment; deleting them is left to the administrator (xmppctl deluser). */
#include "edge/edge_internal.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/log.h"
#include "common/metrics.h"

#define NS_REGISTER "jabber:iq:register"

typedef struct reg_job {
  uv_work_t req;
  conn_t *c;
  char *bare;      /* the account */
  char *id;        /* the request's id */
  int from_domain; /* the request was addressed to the domain: the reply comes from it */
  int change;      /* 1: password change (update), 0: registration (create) */
  char *password;
  size_t pwlen;
  uint32_t iterations;
  store_account_t acct;
  int rc;
} reg_job_t;

int register_offered(const conn_t *c) { return c->state == CONN_ST_SECURED && c->th->cfg->reg_open; }

static void reply_open(buf_t *b, const char *type, const char *id, int from_domain, const conn_t *c) {
  buf_printf(b, "<iq type='%s'", type);
  if (id) {
    buf_puts(b, " id='");
    xml_escape(b, id, strlen(id), 1);
    buf_putc(b, '\'');
  }
  if (from_domain) {
    buf_puts(b, " from='");
    xml_escape(b, conn_domain(c), strlen(conn_domain(c)), 1);
    buf_putc(b, '\'');
  }
  buf_putc(b, '>');
}

static void reply_result(conn_t *c, const char *id, int from_domain, const char *payload) {
  buf_t b;
  buf_init(&b);
  reply_open(&b, "result", id, from_domain, c);
  if (payload) buf_puts(&b, payload);
  buf_puts(&b, "</iq>");
  conn_send(c, (const char *)b.data, b.len);
  buf_free(&b);
  sm_stanza_out(c, NULL);
}

static void reply_error(conn_t *c, const char *id, int from_domain, const char *type, const char *cond,
                        const char *text) {
  buf_t b;
  buf_init(&b);
  reply_open(&b, "error", id, from_domain, c);
  buf_printf(&b, "<error type='%s'><%s xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>", type, cond);
  if (text) {
    buf_puts(&b, "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>");
    xml_escape(&b, text, strlen(text), 0);
    buf_puts(&b, "</text>");
  }
  buf_puts(&b, "</error></iq>");
  conn_send(c, (const char *)b.data, b.len);
  buf_free(&b);
  sm_stanza_out(c, NULL);
}

/* The request's query when s is an IQ of jabber:iq:register addressed to this server
 * (no 'to', or the domain); *from_domain says whether it named the domain. */
static xnode_t *register_query(conn_t *c, xnode_t *s, int *from_domain) {
  if (strcmp(s->name, "iq") != 0) return NULL;
  xnode_t *q = xnode_child(s, "query", NS_REGISTER);
  if (!q) return NULL;
  const char *to = xnode_attr(s, "to");
  *from_domain = to != NULL;
  if (!to) return q;
  char *dom = NULL;
  int ours = jid_prep_domain(to, strlen(to), &dom) == 0 && strcmp(dom, conn_domain(c)) == 0;
  xfree(dom);
  return ours ? q : NULL;
}

static void reg_job_free(reg_job_t *j) {
  if (j->password) {
    memset(j->password, 0, j->pwlen);
    xfree(j->password);
  }
  memset(&j->acct, 0, sizeof j->acct);
  xfree(j->bare);
  xfree(j->id);
  xfree(j);
}

static void reg_work(uv_work_t *w) {
  reg_job_t *j = w->data;
  j->rc = scram_cred_make(SCRAM_SHA1, j->password, j->pwlen, j->iterations, &j->acct.sha1);
  if (j->rc == 0) j->rc = scram_cred_make(SCRAM_SHA256, j->password, j->pwlen, j->iterations, &j->acct.sha256);
}

static void reg_done(uv_work_t *w, int status) {
  reg_job_t *j = w->data;
  conn_t *c = j->c;
  if (conn_work_done(c)) { /* the connection went away: nothing is stored */
    reg_job_free(j);
    return;
  }
  c->reg_busy = 0;
  if (conn_closing(c)) {
    reg_job_free(j);
    return;
  }
  if (status != 0 || j->rc != 0) {
    reply_error(c, j->id, j->from_domain, "wait", "internal-server-error", NULL);
  } else if (j->change) {
    int rc = store_account_update(c->th->store, j->bare, &j->acct);
    /* XEP-0484: a password change revokes the account's FAST tokens */
    if (rc == 0 && store_fast_delete(c->th->store, j->bare, NULL) < 0) rc = XMPP_EIO;
    if (rc == 0) {
      log_info("conn %llx: %s changed its password", (unsigned long long)c->id, j->bare);
      reply_result(c, j->id, j->from_domain, NULL);
    } else {
      reply_error(c, j->id, j->from_domain, rc == XMPP_ENOENT ? "cancel" : "wait",
                  rc == XMPP_ENOENT ? "item-not-found" : "internal-server-error", NULL);
    }
  } else {
    /* [domain NAME] max_accounts: counted in the store, so cluster-wide */
    const char *at = strchr(j->bare, '@');
    const domain_t *d = at ? domain_find(at + 1, strlen(at + 1)) : NULL;
    unsigned max = d && d->max_accounts > 0 ? (unsigned)d->max_accounts : 0;
    int rc = store_account_create_max(c->th->store, j->bare, &j->acct, max);
    if (rc == 0) {
      log_info("conn %llx: registered %s", (unsigned long long)c->id, j->bare);
      reply_result(c, j->id, j->from_domain, NULL);
    } else if (rc == XMPP_ELIMIT) {
      /* RFC 6120 §8.3.3.18: the server lacks the resources to serve the request (the
       * domain's account budget); XEP-0077 names no condition of its own for it */
      metrics_inc(M_LIMIT_DOMAIN_ACCOUNTS);
      char text[256];
      snprintf(text, sizeof text, "the domain %.100s has reached its limit of %u accounts", d->name, max);
      reply_error(c, j->id, j->from_domain, "wait", "resource-constraint", text);
    } else if (rc == XMPP_EEXIST) {
      reply_error(c, j->id, j->from_domain, "cancel", "conflict", NULL);
    } else {
      reply_error(c, j->id, j->from_domain, "wait", "internal-server-error", NULL);
    }
  }
  reg_job_free(j);
  edge_flush(c->th);
}

/* Hands the hashing to the thread pool; the connection is held until it is done. */
static void start_job(conn_t *c, const char *bare, const char *id, int from_domain, int change,
                      const char *password) {
  reg_job_t *j = xcalloc(1, sizeof *j);
  j->req.data = j;
  j->c = c;
  j->bare = xstrdup(bare);
  j->id = id ? xstrdup(id) : NULL;
  j->from_domain = from_domain;
  j->change = change;
  j->pwlen = strlen(password);
  j->password = xstrdup(password);
  j->iterations = c->th->cfg->scram_iterations > 0 ? (uint32_t)c->th->cfg->scram_iterations : 4096;
  c->reg_busy = 1;
  c->pending_work++;
  uv_queue_work(&c->th->loop, &j->req, reg_work, reg_done);
}

/* NULL when the password meets the policy, else why not. */
static const char *password_refused(conn_t *c, const char *pw) {
  size_t n = strlen(pw);
  const char *why = scram_password_problem(pw, n);
  if (why) return why;
  if (n < (size_t)c->th->cfg->reg_min_password) return "the password is too short";
  return NULL;
}

/* Text of a field of the query ("" when absent), in a. */
static const char *field(arena_t *a, xnode_t *q, const char *name, int *present) {
  xnode_t *f = xnode_child(q, name, NS_REGISTER);
  *present = f != NULL;
  return f ? xnode_text(a, f) : "";
}

/* What the edge answers to an <iq/> of type get or set before it can do anything else. */
static int iq_kind(conn_t *c, xnode_t *s, int from_domain) {
  const char *type = xnode_attr(s, "type");
  if (type && (!strcmp(type, "get") || !strcmp(type, "set"))) {
    if (xnode_attr(s, "id")) return type[0];
    reply_error(c, NULL, from_domain, "modify", "bad-request", "an IQ needs an id");
    return 0;
  }
  if (!type || (strcmp(type, "result") != 0 && strcmp(type, "error") != 0))
    reply_error(c, xnode_attr(s, "id"), from_domain, "modify", "bad-request", NULL);
  return 0; /* results and errors are not answered (RFC 6120 §8.2.3) */
}

int register_preauth(conn_t *c, xnode_t *s) {
  int from_domain = 0;
  xnode_t *q = register_query(c, s, &from_domain);
  if (!q) return 0;
  const xmpp_config_t *cfg = c->th->cfg;
  if (c->state == CONN_ST_PLAIN && cfg->require_tls) {
    /* RFC 6120 §5.3.1: TLS is mandatory here, and a password never crosses in clear */
    conn_stream_error(c, "policy-violation", "STARTTLS is required before registration");
    return 1;
  }
  int kind = iq_kind(c, s, from_domain);
  if (!kind) return 1;
  const char *id = xnode_attr(s, "id");
  if (!cfg->reg_open) { /* XEP-0077 §3.1, example 2 */
    reply_error(c, id, from_domain, "cancel", "service-unavailable", NULL);
    return 1;
  }
  if (c->state == CONN_ST_PLAIN) { /* tls.required = false, plaintext: refused all the same (XEP-0077 §13) */
    reply_error(c, id, from_domain, "auth", "not-authorized", "registration requires TLS");
    return 1;
  }
  if (kind == 'g') {
    buf_t b;
    buf_init(&b);
    buf_printf(&b,
               "<query xmlns='" NS_REGISTER "'><instructions>Choose a username and a password of at "
               "least %d characters.</instructions><username/><password/></query>",
               cfg->reg_min_password);
    buf_putc(&b, '\0');
    reply_result(c, id, from_domain, (const char *)b.data);
    buf_free(&b);
    return 1;
  }
  if (xnode_child(q, "remove", NS_REGISTER)) {
    reply_error(c, id, from_domain, "auth", "not-authorized", "authenticate to cancel a registration");
    return 1;
  }
  if (c->reg_busy) {
    reply_error(c, id, from_domain, "wait", "resource-constraint", "a registration is in progress");
    return 1;
  }
  arena_t a;
  arena_init(&a);
  int has_user, has_pw;
  const char *user = field(&a, q, "username", &has_user);
  const char *pw = field(&a, q, "password", &has_pw);
  char *local = NULL, *bare = NULL;
  const char *why;
  if (!*user || !*pw) {
    /* XEP-0077 §3.1: some required information is missing */
    reply_error(c, id, from_domain, "modify", "not-acceptable", "a username and a password are required");
  } else if (jid_prep_local(user, strlen(user), &local) != 0) {
    reply_error(c, id, from_domain, "modify", "jid-malformed", "the username is not a valid JID localpart");
  } else if ((why = password_refused(c, pw)) != NULL) {
    reply_error(c, id, from_domain, "modify", "not-acceptable", why);
  } else if (guard_register_take(c->th->edge->guard, c->ip, edge_now_ms()) != 0) {
    log_info("conn %llx: registration refused, too many from this address", (unsigned long long)c->id);
    metrics_inc(M_LIMIT_REGISTRATION);
    reply_error(c, id, from_domain, "wait", "resource-constraint",
                "too many registrations from your address; try again later");
  } else {
    bare = xstrfmt("%s@%s", local, conn_domain(c));
    int ex = store_account_exists(c->th->store, bare);
    if (ex < 0) reply_error(c, id, from_domain, "wait", "internal-server-error", NULL);
    else if (ex) reply_error(c, id, from_domain, "cancel", "conflict", NULL);
    else start_job(c, bare, id, from_domain, 0, pw);
  }
  xfree(bare);
  xfree(local);
  if (has_pw) memset((char *)pw, 0, strlen(pw));
  arena_free(&a);
  return 1;
}

int register_iq(conn_t *c, xnode_t *s) {
  int from_domain = 0;
  xnode_t *q = register_query(c, s, &from_domain);
  if (!q) return 0;
  int kind = iq_kind(c, s, from_domain);
  if (!kind) return 1;
  const char *id = xnode_attr(s, "id");
  const char *at = strchr(c->auth_bare, '@');
  size_t llen = at ? (size_t)(at - c->auth_bare) : 0;
  if (kind == 'g') { /* XEP-0077 §3.1, example 3: already registered */
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "<query xmlns='" NS_REGISTER "'><registered/><username>");
    xml_escape(&b, c->auth_bare, llen, 0);
    buf_puts(&b, "</username></query>");
    buf_putc(&b, '\0');
    reply_result(c, id, from_domain, (const char *)b.data);
    buf_free(&b);
    return 1;
  }
  if (xnode_child(q, "remove", NS_REGISTER)) {
    reply_error(c, id, from_domain, "cancel", "not-allowed", "accounts are removed by the administrator");
    return 1;
  }
  if (!c->secure) { /* XEP-0077 §3.3: the channel is not safe enough for a password */
    reply_error(c, id, from_domain, "auth", "not-authorized", "a password change requires TLS");
    return 1;
  }
  if (c->reg_busy) {
    reply_error(c, id, from_domain, "wait", "resource-constraint", "a password change is in progress");
    return 1;
  }
  arena_t a;
  arena_init(&a);
  int has_user, has_pw;
  const char *user = field(&a, q, "username", &has_user);
  const char *pw = field(&a, q, "password", &has_pw);
  char *local = NULL;
  const char *why;
  if (!*user || !*pw) { /* XEP-0077 §3.3: both are required */
    reply_error(c, id, from_domain, "modify", "bad-request", "a username and a password are required");
  } else if (jid_prep_local(user, strlen(user), &local) != 0 || strlen(local) != llen ||
             memcmp(local, c->auth_bare, llen) != 0) {
    reply_error(c, id, from_domain, "cancel", "not-allowed", "you may change only your own password");
  } else if ((why = password_refused(c, pw)) != NULL) {
    reply_error(c, id, from_domain, "modify", "not-acceptable", why);
  } else {
    start_job(c, c->auth_bare, id, from_domain, 1, pw);
  }
  xfree(local);
  if (has_pw) memset((char *)pw, 0, strlen(pw));
  arena_free(&a);
  return 1;
}

/* xmpp-bench worker threads: one libuv loop per thread, each owning a slice of the
 * connections. A connection logs in (TCP, optional STARTTLS or direct TLS through wolfSSL
 * over memory buffers, SASL PLAIN or SCRAM, bind, initial presence) and then takes part in
 * the scenario. Incoming XML is cut into top-level stanzas by bench/xscan.c; nothing else
 * is parsed. Output is buffered per connection and flushed once per batch of work. */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/hmac.h>
#include <wolfssl/wolfcrypt/pwdbased.h>

#include <arpa/inet.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "bench/bench.h"
#include "bench/xscan.h"
#include "common/alloc.h"
#include "common/buf.h"
#include "common/scram.h"
#include "common/tls_mem.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

volatile int g_phase = PH_LOGIN;
volatile uint64_t g_go_ns;

static WOLFSSL_CTX *g_ctx;

enum {
  C_IDLE = 0,   /* not launched yet */
  C_CONNECTING,
  C_FEAT1,      /* first stream, waiting for features */
  C_PROCEED,    /* sent <starttls/> */
  C_TLSHS,      /* TLS handshake */
  C_FEAT2,      /* secure stream, waiting for features (SASL) */
  C_AUTH,       /* PLAIN sent, waiting for success */
  C_SCRAM1,     /* client-first sent */
  C_SCRAM2,     /* client-final sent */
  C_FEAT3,      /* authenticated stream, waiting for features (bind) */
  C_BIND,
  C_SMENABLE,   /* <enable resume='true'/> sent (--sm) */
  C_RESUME,     /* storm: <resume/> sent instead of a bind */
  C_SASL2,      /* --fast: SASL2 <authenticate/> sent, waiting for <success/> */
  C_ONLINE,
  C_CLOSING,    /* sent </stream:stream> */
  C_DEAD
};

struct conn {
  uv_tcp_t tcp;
  worker_t *w;
  int g;          /* global connection number */
  int state;
  int handle_open;
  int writing;
  int in_dirty;
  int role;       /* 1: chat sender / presence changer */
  int inflight;   /* closed loop */
  uint64_t tx_seq; /* chat: messages sent to the peer (the body's S= number) */
  uint64_t rx_seq; /* chat: the highest S= received from the peer */
  conn_t *peer;   /* chat: the other end of the pair (same thread) */
  conn_t *next_dirty;
  WOLFSSL *ssl;
  int tls_ready;
  tls_mem_t tio;  /* ciphertext not yet taken by wolfSSL; its output goes to out */
  buf_t in;       /* stream text not yet scanned */
  xscan_t xs;
  buf_t out;      /* bytes (ciphertext under TLS) to write */
  uint64_t t_connect;
  char user[48];  /* local part */
  char *to;       /* chat: peer's bare JID */
  char *scram;    /* client-first-bare, then expected server signature (base64) */
  /* storm (--sm, --tickets) */
  char *smid;     /* XEP-0198 resumption id from <enabled/> */
  uint32_t sm_in; /* stanzas received since <enabled/> (the h we answer and resume with) */
  WOLFSSL_SESSION *sess; /* the TLS session kept at the drop, resumed by the reconnect */
  int reconnecting;      /* storm: this connection is a reconnect (figures go to the storm's) */
  char *fast_token;      /* --fast: the XEP-0484 token the server gave */
  char ua_id[37];        /* --fast: this device's user-agent id (a UUID), the token's key */
  uint32_t fast_count;   /* --fast: the <fast count/> of the last token use */
};

typedef struct wreq {
  uv_write_t req;
  conn_t *c;
  size_t len;
  char data[];
} wreq_t;

/* ---- TLS ------------------------------------------------------------------------------ */

int client_global_init(const bench_opts_t *o, char **err) {
  if (o->tls == TLS_NONE) return 0;
  wolfSSL_Init();
  g_ctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
  if (!g_ctx) {
    *err = xstrdup("wolfSSL_CTX_new failed");
    return -1;
  }
  wolfSSL_CTX_set_verify(g_ctx, WOLFSSL_VERIFY_NONE, NULL);
  /* like browsers and OpenSSL-based clients: X25519 first, P-256 as the fallback */
  int groups[] = {WOLFSSL_ECC_X25519, WOLFSSL_ECC_SECP256R1};
  wolfSSL_CTX_set_groups(g_ctx, groups, 2);
  tls_mem_use(g_ctx);
  return 0;
}

void client_global_cleanup(void) {
  if (g_ctx) {
    wolfSSL_CTX_free(g_ctx);
    g_ctx = NULL;
    wolfSSL_Cleanup();
  }
}

/* ---- statistics ----------------------------------------------------------------------- */

static void add_fail(worker_t *w, const char *reason) {
  pthread_mutex_lock(&w->mu);
  int i;
  for (i = 0; i < w->nfails; i++)
    if (strcmp(w->fails[i].reason, reason) == 0) break;
  if (i == w->nfails) {
    if (w->nfails == MAX_FAIL_REASONS) {
      i = MAX_FAIL_REASONS - 1;
      snprintf(w->fails[i].reason, sizeof w->fails[i].reason, "other");
    } else {
      snprintf(w->fails[i].reason, sizeof w->fails[i].reason, "%s", reason);
      w->nfails++;
    }
  }
  w->fails[i].count++;
  pthread_mutex_unlock(&w->mu);
}

/* ---- output --------------------------------------------------------------------------- */

static void conn_fail(conn_t *c, const char *reason);

static void mark_dirty(conn_t *c) {
  if (c->in_dirty) return;
  c->in_dirty = 1;
  c->next_dirty = c->w->dirty;
  c->w->dirty = c;
}

static void conn_send(conn_t *c, const char *data, size_t len) {
  if (c->state == C_DEAD) return;
  if (c->ssl && c->tls_ready) {
    while (len) {
      int chunk = len > 16384 ? 16384 : (int)len;
      int n = wolfSSL_write(c->ssl, data, chunk);
      if (n <= 0) {
        conn_fail(c, "tls");
        return;
      }
      data += n;
      len -= (size_t)n;
    }
  } else {
    buf_append(&c->out, data, len);
  }
  mark_dirty(c);
}

static void conn_sends(conn_t *c, const char *s) { conn_send(c, s, strlen(s)); }

static void conn_flush(conn_t *c);

static void write_cb(uv_write_t *req, int status) {
  wreq_t *r = (wreq_t *)req;
  conn_t *c = r->c;
  xfree(r);
  if (c->state == C_DEAD) return;
  c->writing = 0;
  if (status < 0) {
    conn_fail(c, c->state == C_ONLINE ? "dropped:write" : "write");
    return;
  }
  conn_flush(c);
}

static void conn_flush(conn_t *c) {
  if (c->writing || c->state == C_DEAD || !c->out.len) return;
  uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
  int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
  if (n == UV_EAGAIN) n = 0;
  if (n < 0) {
    conn_fail(c, c->state == C_ONLINE ? "dropped:write" : "write");
    return;
  }
  buf_consume(&c->out, (size_t)n);
  if (c->out.len) {
    wreq_t *r = xmalloc(sizeof *r + c->out.len);
    r->c = c;
    r->len = c->out.len;
    memcpy(r->data, c->out.data, c->out.len);
    c->out.len = 0;
    b = uv_buf_init(r->data, (unsigned)r->len);
    c->writing = 1;
    int rc = uv_write(&r->req, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
    if (rc < 0) {
      xfree(r);
      c->writing = 0;
      conn_fail(c, "write");
      return;
    }
  }
  if (!c->out.len && c->out.cap > 8192) buf_free(&c->out);
}

static void worker_flush(worker_t *w) {
  while (w->dirty) {
    conn_t *c = w->dirty;
    w->dirty = c->next_dirty;
    c->in_dirty = 0;
    conn_flush(c);
  }
}

/* ---- life cycle ----------------------------------------------------------------------- */

static void launch_more(worker_t *w);

static void worker_close_handles(worker_t *w);

static void storm_relaunch(conn_t *c);

static void close_cb(uv_handle_t *h) {
  conn_t *c = h->data;
  c->handle_open = 0;
  c->w->open_handles--;
  if (c->w->phase == PH_QUIT && c->w->open_handles == 0) worker_close_handles(c->w);
  if (c->ssl) {
    wolfSSL_free(c->ssl);
    c->ssl = NULL;
  }
  tls_mem_free(&c->tio);
  buf_free(&c->in);
  buf_free(&c->out);
  if (c->reconnecting == 1 && c->w->phase == PH_RUN) storm_relaunch(c);
}

static void conn_close(conn_t *c) {
  int was = c->state;
  c->state = C_DEAD;
  if (was == C_ONLINE || was == C_CLOSING) {
    if (was == C_ONLINE) STORE(c->w->st_online, c->w->st_online - 1);
  }
  if (c->handle_open && !uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, close_cb);
}

static void conn_fail(conn_t *c, const char *reason) {
  worker_t *w = c->w;
  if (c->state == C_DEAD) return;
  if (c->state == C_CLOSING) {
    conn_close(c);
    return;
  }
  if (c->state == C_ONLINE) {
    char r[64];
    snprintf(r, sizeof r, "dropped:%s", reason);
    if (strncmp(reason, "dropped:", 8) == 0) snprintf(r, sizeof r, "%s", reason);
    add_fail(w, r);
    BUMP(w->st_dropped);
  } else {
    add_fail(w, reason);
    BUMP(w->st_login_failed);
    w->inprog--;
  }
  conn_close(c);
  if (c->state == C_DEAD && g_phase == PH_LOGIN) launch_more(w);
}

/* ---- stream steps --------------------------------------------------------------------- */

static void open_stream(conn_t *c) {
  xscan_init(&c->xs);
  c->in.len = 0;
  char h[256];
  snprintf(h, sizeof h,
           "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
           "xmlns:stream='http://etherx.jabber.org/streams' to='%s' version='1.0'>",
           c->w->o->domain);
  conn_sends(c, h);
}

static void tls_step(conn_t *c) {
  int r = wolfSSL_connect(c->ssl);
  if (r == WOLFSSL_SUCCESS) {
    c->tls_ready = 1;
    if (c->reconnecting && wolfSSL_session_reused(c->ssl)) BUMP(c->w->st_tls_resumed);
    c->state = C_FEAT2;
    open_stream(c);
    return;
  }
  int e = wolfSSL_get_error(c->ssl, r);
  if (e != WOLFSSL_ERROR_WANT_READ && e != WOLFSSL_ERROR_WANT_WRITE) {
    conn_fail(c, "tls");
    return;
  }
  mark_dirty(c);
}

static void start_tls(conn_t *c) {
  c->ssl = wolfSSL_new(g_ctx);
  if (!c->ssl) {
    conn_fail(c, "tls");
    return;
  }
  tls_mem_attach(&c->tio, c->ssl, &c->out);
  wolfSSL_UseSNI(c->ssl, WOLFSSL_SNI_HOST_NAME, c->w->o->domain,
                 (unsigned short)strlen(c->w->o->domain));
  wolfSSL_UseKeyShare(c->ssl, WOLFSSL_ECC_X25519);
  if (c->sess) {
    wolfSSL_set_session(c->ssl, c->sess); /* a refused ticket means a full handshake */
    wolfSSL_SESSION_free(c->sess);
    c->sess = NULL;
  }
  c->state = C_TLSHS;
  tls_step(c);
}

static uint64_t rnd64(worker_t *w) {
  static __thread uint64_t s;
  if (!s) s = uv_hrtime() ^ ((uint64_t)(uintptr_t)w << 17) ^ 0x9e3779b97f4a7c15ull;
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

static int hmac(int type, const unsigned char *key, size_t klen, const void *m, size_t mlen,
                unsigned char *out);

/* --fast (XEP-0388 SASL2): the first log-in is PLAIN with a FAST token requested and Bind2
 * (with XEP-0198 enabled inline under --sm); a storm's reconnect proves the token
 * (HT-SHA-256-NONE: HMAC-SHA-256 keyed with the token over "Initiator", XEP-0484 §3.3)
 * and, under --sm, resumes its session inline. No stream restart either way. */
static void send_initial_presence(conn_t *c);

static void start_sasl2(conn_t *c) {
  const bench_opts_t *o = c->w->o;
  buf_t b;
  buf_init(&b);
  if (!c->ua_id[0]) {
    uint64_t r1 = rnd64(c->w), r2 = rnd64(c->w);
    snprintf(c->ua_id, sizeof c->ua_id, "%08x-%04x-4%03x-8%03x-%012llx", (unsigned)(r1 >> 32),
             (unsigned)(r1 >> 16) & 0xffff, (unsigned)r1 & 0xfff, (unsigned)(r2 >> 48) & 0xfff,
             (unsigned long long)(r2 & 0xffffffffffffull));
  }
  size_t ul = strlen(c->user);
  if (c->reconnecting && c->fast_token) {
    unsigned char m[128 + 32];
    memcpy(m, c->user, ul);
    m[ul] = 0;
    if (hmac(WC_SHA256, (const unsigned char *)c->fast_token, strlen(c->fast_token), "Initiator", 9, m + ul + 1) != 0) {
      conn_fail(c, "fast:hmac");
      return;
    }
    char *e = b64_encode(m, ul + 1 + 32);
    buf_printf(&b, "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'><initial-response>%s"
                   "</initial-response><user-agent id='%s'><software>xmpp-bench</software></user-agent>"
                   "<fast xmlns='urn:xmpp:fast:0' count='%u'/>",
               e, c->ua_id, ++c->fast_count);
    xfree(e);
    if (c->smid)
      buf_printf(&b, "<resume xmlns='urn:xmpp:sm:3' previd='%s' h='%u'/>", c->smid, c->sm_in);
    else /* no session to resume: a new one, bound inline */
      buf_printf(&b, "<bind xmlns='urn:xmpp:bind:0'><tag>%s</tag></bind>", o->resource);
  } else {
    size_t pl = strlen(o->password);
    unsigned char *m = xmalloc(ul + pl + 2);
    m[0] = 0;
    memcpy(m + 1, c->user, ul);
    m[1 + ul] = 0;
    memcpy(m + 2 + ul, o->password, pl);
    char *e = b64_encode(m, ul + pl + 2);
    xfree(m);
    buf_printf(&b, "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>%s"
                   "</initial-response><user-agent id='%s'><software>xmpp-bench</software></user-agent>"
                   "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"
                   "<bind xmlns='urn:xmpp:bind:0'><tag>%s</tag>%s</bind>",
               e, c->ua_id, o->resource, o->sm ? "<enable xmlns='urn:xmpp:sm:3' resume='true'/>" : "");
    xfree(e);
  }
  buf_puts(&b, "</authenticate>");
  c->state = C_SASL2;
  conn_send(c, (const char *)b.data, b.len);
  buf_free(&b);
}

/* Copies the value of attribute attr of the first element p[0, n) holds that starts
 * with open, into a new string (NULL when absent or longer than max). */
static char *inner_attr(const char *p, size_t n, const char *open, const char *attr, size_t max) {
  const char *e = xs_find(p, n, open), *v;
  size_t vl;
  if (!e || !xs_attr(e, n - (size_t)(e - p), attr, &v, &vl) || vl == 0 || vl > max) return NULL;
  char *r = xmalloc(vl + 1);
  memcpy(r, v, vl);
  r[vl] = 0;
  return r;
}

static void start_auth(conn_t *c) {
  const bench_opts_t *o = c->w->o;
  if (o->fast) {
    start_sasl2(c);
    return;
  }
  buf_t b;
  buf_init(&b);
  if (o->mech == MECH_PLAIN) {
    size_t ul = strlen(c->user), pl = strlen(o->password);
    unsigned char *m = xmalloc(ul + pl + 2);
    m[0] = 0;
    memcpy(m + 1, c->user, ul);
    m[1 + ul] = 0;
    memcpy(m + 2 + ul, o->password, pl);
    char *e = b64_encode(m, ul + pl + 2);
    xfree(m);
    buf_printf(&b, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>", e);
    xfree(e);
    c->state = C_AUTH;
  } else {
    char nonce[25];
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 24; i++) nonce[i] = al[rnd64(c->w) & 63];
    nonce[24] = 0;
    char first[160];
    snprintf(first, sizeof first, "n,,n=%s,r=%s", c->user, nonce);
    xfree(c->scram);
    c->scram = xstrdup(first + 3);
    char *e = b64_encode((const unsigned char *)first, strlen(first));
    buf_printf(&b, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='%s'>%s</auth>",
               o->mech == MECH_SCRAM1 ? "SCRAM-SHA-1" : "SCRAM-SHA-256", e);
    xfree(e);
    c->state = C_SCRAM1;
  }
  conn_send(c, (const char *)b.data, b.len);
  buf_free(&b);
}

static int hmac(int type, const unsigned char *key, size_t klen, const void *m, size_t mlen,
                unsigned char *out) {
  Hmac h;
  int rc = -1;
  if (wc_HmacInit(&h, NULL, INVALID_DEVID) != 0) return -1;
  if (wc_HmacSetKey(&h, type, key, (word32)klen) == 0 &&
      wc_HmacUpdate(&h, m, (word32)mlen) == 0 && wc_HmacFinal(&h, out) == 0)
    rc = 0;
  wc_HmacFree(&h);
  return rc;
}

/* Finds "k=" at the start or after a comma in s[0, n); value up to the next comma. */
static int scram_attr(const char *s, size_t n, char k, const char **v, size_t *vl) {
  for (size_t i = 0; i + 1 < n; i++) {
    if ((i == 0 || s[i - 1] == ',') && s[i] == k && s[i + 1] == '=') {
      const char *e = memchr(s + i + 2, ',', n - i - 2);
      *v = s + i + 2;
      *vl = e ? (size_t)(e - *v) : n - i - 2;
      return 1;
    }
  }
  return 0;
}

static void scram_challenge(conn_t *c, const char *txt, size_t tl) {
  worker_t *w = c->w;
  const bench_opts_t *o = w->o;
  int sha256 = o->mech == MECH_SCRAM256;
  int type = sha256 ? WC_SHA256 : WC_SHA;
  size_t hl = sha256 ? 32 : 20;
  unsigned char *sf = NULL, *salt = NULL;
  size_t sfl = 0, saltl = 0;
  if (b64_decode(txt, tl, &sf, &sfl) != 0) {
    conn_fail(c, "sasl:bad-challenge");
    return;
  }
  const char *r, *s, *i;
  size_t rl, sl, il;
  if (!scram_attr((char *)sf, sfl, 'r', &r, &rl) || !scram_attr((char *)sf, sfl, 's', &s, &sl) ||
      !scram_attr((char *)sf, sfl, 'i', &i, &il) || b64_decode(s, sl, &salt, &saltl) != 0 ||
      saltl > 64) {
    xfree(sf);
    xfree(salt);
    conn_fail(c, "sasl:bad-challenge");
    return;
  }
  uint32_t iter = (uint32_t)strtoul(i, NULL, 10);
  unsigned char *salted = NULL;
  for (int k = 0; k < 4; k++)
    if (w->scache[k].used && w->scache[k].hash == type && w->scache[k].iter == iter &&
        w->scache[k].salt_len == saltl && memcmp(w->scache[k].salt, salt, saltl) == 0)
      salted = w->scache[k].salted;
  if (!salted) {
    int k = (int)(rnd64(w) & 3);
    for (int j = 0; j < 4; j++)
      if (!w->scache[j].used) k = j;
    w->scache[k].used = 1;
    w->scache[k].hash = type;
    w->scache[k].iter = iter;
    memcpy(w->scache[k].salt, salt, saltl);
    w->scache[k].salt_len = saltl;
    if (wc_PBKDF2(w->scache[k].salted, (const byte *)o->password, (int)strlen(o->password), salt,
                  (int)saltl, (int)iter, (int)hl, type) != 0) {
      w->scache[k].used = 0;
      xfree(sf);
      xfree(salt);
      conn_fail(c, "sasl:pbkdf2");
      return;
    }
    salted = w->scache[k].salted;
  }
  xfree(salt);
  buf_t am;
  buf_init(&am);
  buf_puts(&am, c->scram);
  buf_putc(&am, ',');
  buf_append(&am, sf, sfl);
  size_t without_proof = am.len + 1;
  buf_puts(&am, ",c=biws,r=");
  buf_append(&am, r, rl);
  unsigned char ck[32], sk[32], stored[32], csig[32], ssig[32], proof[32];
  int bad = hmac(type, salted, hl, "Client Key", 10, ck) != 0 ||
            (sha256 ? wc_Sha256Hash(ck, (word32)hl, stored) : wc_ShaHash(ck, (word32)hl, stored)) != 0 ||
            hmac(type, stored, hl, am.data, am.len, csig) != 0 ||
            hmac(type, salted, hl, "Server Key", 10, sk) != 0 ||
            hmac(type, sk, hl, am.data, am.len, ssig) != 0;
  xfree(sf);
  if (bad) {
    buf_free(&am);
    conn_fail(c, "sasl:hmac");
    return;
  }
  for (size_t k = 0; k < hl; k++) proof[k] = ck[k] ^ csig[k];
  char *p64 = b64_encode(proof, hl);
  buf_t fin;
  buf_init(&fin);
  buf_append(&fin, am.data + without_proof, am.len - without_proof);
  buf_puts(&fin, ",p=");
  buf_puts(&fin, p64);
  xfree(p64);
  buf_free(&am);
  char *f64 = b64_encode(fin.data, fin.len);
  buf_free(&fin);
  buf_t out;
  buf_init(&out);
  buf_printf(&out, "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</response>", f64);
  xfree(f64);
  xfree(c->scram);
  c->scram = b64_encode(ssig, hl);
  c->state = C_SCRAM2;
  conn_send(c, (const char *)out.data, out.len);
  buf_free(&out);
}

static void went_online(conn_t *c) {
  worker_t *w = c->w;
  uint64_t now = uv_hrtime();
  c->state = C_ONLINE;
  w->inprog--;
  STORE(w->st_online, w->st_online + 1);
  STORE(w->st_last_online_ns, now);
  /* a storm's reconnect: its own count and latency, apart from the first log-ins */
  if (c->reconnecting) STORE(w->st_delivered, w->st_delivered + 1);
  else STORE(w->st_logins_ok, w->st_logins_ok + 1);
  pthread_mutex_lock(&w->mu);
  hdr_record(c->reconnecting ? &w->lat : &w->login, (now - c->t_connect) / 1000);
  pthread_mutex_unlock(&w->mu);
  xfree(c->scram);
  c->scram = NULL;
  if (!c->in.len) buf_free(&c->in);
  if (g_phase == PH_LOGIN) launch_more(w);
}

/* ---- scenario traffic ----------------------------------------------------------------- */

static void send_chat(conn_t *c, uint64_t stamp) {
  worker_t *w = c->w;
  char head[256];
  /* T= the send time (latency), S= this connection's sequence number towards its peer:
   * the receiver counts a delivery only for the next number (no duplicate, no gap) */
  int hl = snprintf(head, sizeof head,
                    "<message type='chat' to='%s' id='m%" PRIx64 "'><body>T=%" PRIu64 " S=%" PRIu64 " ", c->to,
                    ++w->msg_id, stamp, ++c->tx_seq);
  static const char tail[] = "</body></message>";
  size_t body_have = (size_t)hl - (size_t)(strstr(head, "<body>") - head) - 6;
  size_t pad = (size_t)w->o->size > body_have ? (size_t)w->o->size - body_have : 0;
  char stackbuf[2048];
  size_t total = (size_t)hl + pad + sizeof tail - 1;
  char *m = total <= sizeof stackbuf ? stackbuf : xmalloc(total);
  memcpy(m, head, (size_t)hl);
  memset(m + hl, 'x', pad);
  memcpy(m + hl + pad, tail, sizeof tail - 1);
  conn_send(c, m, total);
  if (m != stackbuf) xfree(m);
  c->inflight++;
  STORE(w->st_sent, w->st_sent + 1);
}

static void send_presence(conn_t *c, uint64_t stamp) {
  worker_t *w = c->w;
  char m[160];
  int n = snprintf(m, sizeof m, "<presence><show>%s</show><status>T=%" PRIu64 "</status></presence>",
                   (w->sched & 1) ? "away" : "dnd", stamp);
  conn_send(c, m, (size_t)n);
  STORE(w->st_sent, w->st_sent + 1);
}

static void record_latency(worker_t *w, const char *t, size_t tl) {
  uint64_t stamp = strtoull(t + 2, NULL, 10);
  uint64_t now = uv_hrtime();
  uint64_t us = now > stamp ? (now - stamp) / 1000 : 0;
  pthread_mutex_lock(&w->mu);
  hdr_record(&w->lat, us);
  pthread_mutex_unlock(&w->mu);
  STORE(w->st_delivered, w->st_delivered + 1);
}

/* A stanza that is not what the scenario sent, or a bounce: counted apart from the
 * deliveries (a run with any fails unless --allow-errors), its reason in the failures. */
static void stanza_error(worker_t *w, const char *what, const char *p, size_t n) {
  char r[64];
  const char *e = xs_find(p, n, "<error");
  const char *cn = NULL;
  size_t cl = e ? xs_first_child(e, n - (size_t)(e - p), &cn) : 0;
  if (cl)
    snprintf(r, sizeof r, "%s:%.*s", what, (int)(cl > 40 ? 40 : cl), cn);
  else
    snprintf(r, sizeof r, "%s", what);
  add_fail(w, r);
  BUMP(w->st_errors);
}

/* 1 when the stanza's from is user@domain or user@domain/resource. */
static int from_user(const char *p, size_t n, const char *user, const char *domain) {
  const char *f;
  size_t fl, ul = strlen(user), dl = strlen(domain);
  if (!xs_attr(p, n, "from", &f, &fl)) return 0;
  return fl >= ul + 1 + dl && memcmp(f, user, ul) == 0 && f[ul] == '@' && memcmp(f + ul + 1, domain, dl) == 0 &&
         (fl == ul + 1 + dl || f[ul + 1 + dl] == '/');
}

static int type_is(const char *p, size_t n, const char *type) {
  const char *v;
  size_t vl;
  if (!xs_attr(p, n, "type", &v, &vl)) return 0;
  return vl == strlen(type) && memcmp(v, type, vl) == 0;
}

/* Chat: a delivery is counted only at the intended recipient (the pair's other end), for
 * a type='chat' message from its peer carrying the peer's next sequence number. An error
 * bounce (which copies the body) is an error, a repeated or skipped number is an error,
 * anything else with a T= body is an error. Offline messages left by an earlier run
 * (XEP-0203 <delay/>) are not this run's: noted, not counted. */
static void on_message(conn_t *c, const char *p, size_t n) {
  worker_t *w = c->w;
  const char *t;
  size_t tl;
  if (c->w->o->carbons && memmem(p, n, "urn:xmpp:carbons:2", 18)) return; /* a copy (XEP-0280) */
  if (!xs_text(p, n, "<body", &t, &tl)) return;
  if (tl < 3 || t[0] != 'T' || t[1] != '=') return;
  conn_t *s = c->peer;
  if (type_is(p, n, "error")) {
    stanza_error(w, "message-error", p, n);
    if (c->inflight > 0) c->inflight--; /* c sent it: it is answered, if not delivered */
    return;
  }
  if (xs_find(p, n, "urn:xmpp:delay")) {
    add_fail(w, "message:offline-from-earlier-run");
    return;
  }
  if (!s || !type_is(p, n, "chat") || !from_user(p, n, s->user, w->o->domain)) {
    stanza_error(w, "message:unexpected", p, n);
    return;
  }
  const char *q = xs_find(t, tl, " S=");
  uint64_t seq = q ? strtoull(q + 3, NULL, 10) : 0;
  if (seq != c->rx_seq + 1) {
    stanza_error(w, seq <= c->rx_seq ? "message:duplicate-or-reordered" : "message:gap", p, n);
    if (seq > c->rx_seq) c->rx_seq = seq;
    return;
  }
  c->rx_seq = seq;
  record_latency(w, t, tl);
  if (s->inflight > 0) s->inflight--;
  if (w->o->rate <= 0 && g_phase == PH_RUN && s->state == C_ONLINE && s->role) send_chat(s, uv_hrtime());
}

/* Presence: a delivery is another user's available presence carrying a T= status; a
 * presence error is an error. */
static void on_presence(conn_t *c, const char *p, size_t n) {
  const char *t;
  size_t tl;
  if (!xs_text(p, n, "<status", &t, &tl) || tl < 3 || t[0] != 'T' || t[1] != '=') return;
  if (type_is(p, n, "error")) {
    stanza_error(c->w, "presence-error", p, n);
    return;
  }
  if (from_user(p, n, c->user, c->w->o->domain)) return; /* our own, reflected */
  record_latency(c->w, t, tl);
}

/* ---- incoming stanzas ----------------------------------------------------------------- */

/* A SASL or SASL2 <failure/>: the connection fails with "what:condition". */
static void fail_with_condition(conn_t *c, const char *what, const char *p, size_t n) {
  const char *cn;
  size_t cl = xs_first_child(p, n, &cn);
  char r[64];
  snprintf(r, sizeof r, "%s:%.*s", what, (int)(cl > 40 ? 40 : cl), cl ? cn : "failure");
  conn_fail(c, r);
}

static void send_initial_presence(conn_t *c) {
  const bench_opts_t *o = c->w->o;
  if (o->priority != INT_MIN) {
    char pr[64];
    snprintf(pr, sizeof pr, "<presence><priority>%d</priority></presence>", o->priority);
    conn_sends(c, pr);
  } else {
    conn_sends(c, "<presence/>");
  }
}

#define NAME_IS(nm, nl, lit) ((nl) == sizeof(lit) - 1 && memcmp((nm), (lit), (nl)) == 0)

/* Returns 1 when the stream restarts (the rest of the input must be dropped). */
static int on_stanza(conn_t *c, const char *p, size_t n) {
  const char *nm;
  size_t nl = xs_name(p, n, &nm);
  const bench_opts_t *o = c->w->o;
  if (c->smid && (c->state == C_ONLINE || c->state == C_CLOSING || c->state == C_SMENABLE)) {
    /* XEP-0198 §4: h counts the stanzas handled; a request is answered with it */
    if (NAME_IS(nm, nl, "message") || NAME_IS(nm, nl, "presence") || NAME_IS(nm, nl, "iq")) c->sm_in++;
    if (NAME_IS(nm, nl, "r")) {
      char a[80];
      snprintf(a, sizeof a, "<a xmlns='urn:xmpp:sm:3' h='%u'/>", c->sm_in);
      conn_sends(c, a);
      return 0;
    }
    if (NAME_IS(nm, nl, "a")) return 0;
  }
  if (c->state == C_ONLINE || c->state == C_CLOSING) {
    if (NAME_IS(nm, nl, "message")) {
      on_message(c, p, n);
      return 0;
    }
    if (NAME_IS(nm, nl, "presence")) {
      if (o->sc == SC_PRESENCE) on_presence(c, p, n);
      return 0;
    }
  }
  if (NAME_IS(nm, nl, "stream:error")) {
    const char *cn;
    size_t cl = xs_first_child(p, n, &cn);
    char r[64];
    snprintf(r, sizeof r, "stream:%.*s", (int)(cl > 40 ? 40 : cl), cn);
    conn_fail(c, r);
    return 1;
  }
  switch (c->state) {
  case C_FEAT1:
    if (!NAME_IS(nm, nl, "stream:features")) return 0;
    if (o->tls == TLS_STARTTLS) {
      conn_sends(c, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
      c->state = C_PROCEED;
    } else {
      start_auth(c);
    }
    return 0;
  case C_PROCEED:
    if (NAME_IS(nm, nl, "proceed")) {
      c->in.len = 0;
      start_tls(c);
      return 1;
    }
    conn_fail(c, "tls:starttls-refused");
    return 1;
  case C_FEAT2:
    if (NAME_IS(nm, nl, "stream:features")) start_auth(c);
    return 0;
  case C_AUTH:
  case C_SCRAM1:
  case C_SCRAM2:
    if (NAME_IS(nm, nl, "failure")) {
      fail_with_condition(c, "sasl", p, n);
      return 1;
    }
    if (c->state == C_SCRAM1 && NAME_IS(nm, nl, "challenge")) {
      const char *t;
      size_t tl;
      if (!xs_text(p, n, "<challenge", &t, &tl)) {
        conn_fail(c, "sasl:bad-challenge");
        return 1;
      }
      scram_challenge(c, t, tl);
      return 0;
    }
    if (c->state != C_SCRAM1 && NAME_IS(nm, nl, "success")) {
      if (c->state == C_SCRAM2) {
        const char *t;
        size_t tl;
        unsigned char *v = NULL;
        size_t vl = 0;
        int ok = xs_text(p, n, "<success", &t, &tl) && b64_decode(t, tl, &v, &vl) == 0 &&
                 vl == strlen(c->scram) + 2 && memcmp(v, "v=", 2) == 0 &&
                 memcmp(v + 2, c->scram, vl - 2) == 0;
        xfree(v);
        if (!ok) {
          conn_fail(c, "sasl:bad-server-signature");
          return 1;
        }
      }
      c->state = C_FEAT3;
      open_stream(c);
      return 1;
    }
    return 0;
  case C_FEAT3:
    if (NAME_IS(nm, nl, "stream:features") && c->smid && c->reconnecting) {
      char r[256];
      snprintf(r, sizeof r, "<resume xmlns='urn:xmpp:sm:3' previd='%s' h='%u'/>", c->smid, c->sm_in);
      conn_sends(c, r);
      c->state = C_RESUME;
    } else if (NAME_IS(nm, nl, "stream:features")) {
      char bindiq[256];
      snprintf(bindiq, sizeof bindiq,
               "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
               "<resource>%s</resource></bind></iq>",
               o->resource);
      conn_sends(c, bindiq);
      c->state = C_BIND;
    }
    return 0;
  case C_BIND:
    if (NAME_IS(nm, nl, "iq")) {
      const char *t;
      size_t tl;
      if (xs_attr(p, n, "type", &t, &tl) && tl == 6 && memcmp(t, "result", 6) == 0) {
        if (o->carbons) conn_sends(c, "<iq type='set' id='cc1'><enable xmlns='urn:xmpp:carbons:2'/></iq>");
        if (o->sm) {
          xfree(c->smid);
          c->smid = NULL;
          conn_sends(c, "<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
          c->state = C_SMENABLE;
          return 0;
        }
        send_initial_presence(c);
        went_online(c);
      } else {
        conn_fail(c, "bind");
        return 1;
      }
    }
    return 0;
  case C_SMENABLE:
    if (NAME_IS(nm, nl, "enabled")) {
      const char *id;
      size_t il;
      if (!xs_attr(p, n, "id", &id, &il) || il == 0 || il > 200) {
        conn_fail(c, "sm:no-resumption-id");
        return 1;
      }
      c->smid = xmalloc(il + 1);
      memcpy(c->smid, id, il);
      c->smid[il] = 0;
      c->sm_in = 0;
      send_initial_presence(c);
      went_online(c);
    } else if (NAME_IS(nm, nl, "failed")) {
      conn_fail(c, "sm:enable-failed");
      return 1;
    }
    return 0;
  case C_SASL2:
    if (NAME_IS(nm, nl, "failure")) {
      fail_with_condition(c, "sasl2", p, n);
      return 1;
    }
    if (NAME_IS(nm, nl, "success")) {
      char *tok = inner_attr(p, n, "<token", "token", 200);
      if (tok) { /* a new token (the first, or a rotation: XEP-0484 §3.4) */
        xfree(c->fast_token);
        c->fast_token = tok;
        c->fast_count = 0;
      }
      if (!c->fast_token) {
        conn_fail(c, "fast:no-token");
        return 1;
      }
      if (c->reconnecting) {
        if (c->smid && !xs_find(p, n, "<resumed")) {
          conn_fail(c, "sm:resume-failed");
          return 1;
        }
        if (c->smid) BUMP(c->w->st_sm_resumed);
        else send_initial_presence(c); /* a new session (Bind2) */
        went_online(c);
        return 0;
      }
      if (o->sm) {
        xfree(c->smid);
        c->smid = inner_attr(p, n, "<enabled", "id", 200);
        if (!c->smid) {
          conn_fail(c, "sm:no-resumption-id");
          return 1;
        }
        c->sm_in = 0;
      }
      send_initial_presence(c);
      went_online(c);
    }
    return 0;
  case C_RESUME:
    if (NAME_IS(nm, nl, "resumed")) {
      BUMP(c->w->st_sm_resumed);
      went_online(c); /* the session kept its presence: nothing to send */
    } else if (NAME_IS(nm, nl, "failed")) {
      conn_fail(c, "sm:resume-failed");
      return 1;
    }
    return 0;
  default: return 0;
  }
}

static void process_input(conn_t *c) {
  xs_event_t ev;
  size_t off, n;
  while (c->state != C_DEAD && xscan_next(&c->xs, (const char *)c->in.data, c->in.len, &ev, &off, &n)) {
    if (ev == XS_STREAM_OPEN) continue;
    if (ev == XS_STREAM_CLOSE) {
      if (c->state == C_CLOSING) {
        conn_close(c);
      } else {
        conn_fail(c, "stream-closed");
      }
      return;
    }
    if (on_stanza(c, (const char *)c->in.data + off, n)) return;
  }
  if (c->state == C_DEAD) return;
  size_t drop = xscan_release(&c->xs);
  buf_consume(&c->in, drop);
  if (!c->in.len && c->state == C_ONLINE && c->in.cap > 4096) buf_free(&c->in);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  conn_t *c = h->data;
  *b = uv_buf_init(c->w->rbuf, sizeof c->w->rbuf);
}

static void feed_tls(conn_t *c, const char *data, size_t len) {
  worker_t *w = c->w;
  tls_mem_feed(&c->tio, data, len);
  if (!c->tls_ready) {
    tls_step(c);
    if (!c->tls_ready || c->state == C_DEAD) goto out;
  }
  while (c->state != C_DEAD && c->ssl) {
    int n = wolfSSL_read(c->ssl, w->pbuf, sizeof w->pbuf);
    if (n > 0) {
      buf_append(&c->in, w->pbuf, (size_t)n);
      process_input(c);
      continue;
    }
    int e = wolfSSL_get_error(c->ssl, n);
    if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE) break;
    conn_fail(c, c->state == C_ONLINE ? "tls-closed" : "tls");
    return;
  }
out:
  if (c->state == C_DEAD) return;
  tls_mem_trim(&c->tio, 4096);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  conn_t *c = s->data;
  worker_t *w = c->w;
  if (nread < 0) {
    if (c->state == C_CLOSING) {
      conn_close(c);
    } else {
      char r[64];
      snprintf(r, sizeof r, "%s", nread == UV_EOF ? "closed" : uv_err_name((int)nread));
      conn_fail(c, r);
    }
    worker_flush(w);
    return;
  }
  if (nread == 0) return;
  if (c->ssl) {
    feed_tls(c, b->base, (size_t)nread);
  } else {
    buf_append(&c->in, b->base, (size_t)nread);
    process_input(c);
  }
  worker_flush(w);
}

static void connect_cb(uv_connect_t *req, int status) {
  conn_t *c = req->data;
  xfree(req);
  if (c->state == C_DEAD) return;
  if (status < 0) {
    char r[64];
    snprintf(r, sizeof r, "connect:%s", uv_err_name(status));
    conn_fail(c, r);
    return;
  }
  BUMP(c->w->st_connected);
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
  if (c->w->o->tls == TLS_DIRECT) {
    start_tls(c);
  } else {
    c->state = C_FEAT1;
    open_stream(c);
  }
  worker_flush(c->w);
}

static void conn_launch(conn_t *c) {
  worker_t *w = c->w;
  const bench_opts_t *o = w->o;
  c->t_connect = uv_hrtime();
  c->state = C_CONNECTING;
  w->inprog++;
  int rc = uv_tcp_init_ex(&w->loop, &c->tcp, AF_INET);
  if (rc < 0) {
    char r[64];
    snprintf(r, sizeof r, "socket:%s", uv_err_name(rc));
    c->state = C_CONNECTING;
    add_fail(w, r);
    BUMP(w->st_login_failed);
    w->inprog--;
    c->state = C_DEAD;
    return;
  }
  c->tcp.data = c;
  c->handle_open = 1;
  w->open_handles++;
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  }
  struct sockaddr_in src, dst;
  memset(&src, 0, sizeof src);
  src.sin_family = AF_INET;
  uint32_t range = o->src_hi - o->src_lo + 1;
  src.sin_addr.s_addr = htonl(o->src_lo + (uint32_t)c->g % range);
  rc = uv_tcp_bind(&c->tcp, (const struct sockaddr *)&src, 0);
  int port = o->port;
  if (o->nports > 1) { /* see --port in main.c's usage */
    int k = c->g / 2, n = o->nports, pi = k % n;
    if ((c->g & 1) && (k / n) % 2 == 1) pi = (pi + 1) % n;
    port = o->ports[pi];
  }
  if (rc == 0) rc = uv_ip4_addr(o->host, port, &dst);
  uv_connect_t *req = NULL;
  if (rc == 0) {
    req = xmalloc(sizeof *req);
    req->data = c;
    rc = uv_tcp_connect(req, &c->tcp, (const struct sockaddr *)&dst, connect_cb);
  }
  if (rc < 0) {
    xfree(req);
    char r[64];
    snprintf(r, sizeof r, "connect:%s", uv_err_name(rc));
    conn_fail(c, r);
  }
}

static void launch_more(worker_t *w) {
  static __thread int active; /* a launch that fails at once calls back here */
  if (g_phase >= PH_STOP || active) return;
  active = 1;
  uint64_t now = uv_hrtime();
  while (w->next_launch < w->nconns && w->inprog < w->max_inprog) {
    if (w->arrival_rate > 0) {
      double due = (double)(now - w->t_start) / 1e9 * w->arrival_rate;
      if ((double)w->next_launch >= due + 1) break;
    }
    conn_launch(&w->conns[w->next_launch++]);
  }
  active = 0;
}

/* ---- the worker loop ------------------------------------------------------------------ */

static void check_timeouts(worker_t *w, uint64_t now) {
  uint64_t limit = (uint64_t)(w->o->login_timeout_s * 1e9);
  for (size_t i = 0; i < w->next_launch; i++) {
    conn_t *c = &w->conns[i];
    if (c->state > C_IDLE && c->state < C_ONLINE && now > c->t_connect && now - c->t_connect > limit)
      conn_fail(c, "timeout");
  }
}

static conn_t *next_sender(worker_t *w) {
  for (size_t k = 0; k < w->nconns; k++) {
    conn_t *c = &w->conns[w->rr++ % w->nconns];
    if (c->role && c->state == C_ONLINE) return c;
  }
  return NULL;
}

/* Last step of QUIT: once no connection is open, the loop's own handles go and uv_run returns. */
static void worker_close_handles(worker_t *w) {
  if (uv_is_closing((uv_handle_t *)&w->tick)) return;
  uv_close((uv_handle_t *)&w->tick, NULL);
  uv_close((uv_handle_t *)&w->async, NULL);
  uv_close((uv_handle_t *)&w->quit_timer, NULL);
}

static void quit_timer_cb(uv_timer_t *t) {
  worker_t *w = t->data;
  for (size_t i = 0; i < w->nconns; i++) conn_close(&w->conns[i]);
  if (w->open_handles == 0) worker_close_handles(w);
}

/* storm: every session online drops at once (TCP reset, as a network event does: no
 * </stream>, so the server keeps a resumable session detached), and each reconnects as
 * soon as its socket is closed, keeping what --tickets and --sm let it resume. */
static void storm_drop(conn_t *c) {
  worker_t *w = c->w;
  if (c->ssl && w->o->tickets) c->sess = wolfSSL_get1_session(c->ssl);
  STORE(w->st_online, w->st_online - 1);
  c->state = C_DEAD;
  c->reconnecting = 1; /* close_cb relaunches */
  if (c->handle_open && !uv_is_closing((uv_handle_t *)&c->tcp))
    uv_tcp_close_reset(&c->tcp, close_cb);
}

static void storm_relaunch(conn_t *c) {
  c->reconnecting = 2;
  c->tls_ready = 0;
  c->writing = 0;
  xfree(c->scram);
  c->scram = NULL;
  STORE(c->w->st_sent, c->w->st_sent + 1);
  conn_launch(c);
}

static void enter_phase(worker_t *w, int ph) {
  const bench_opts_t *o = w->o;
  w->phase = ph;
  if (ph == PH_RUN) {
    w->go_ns = g_go_ns;
    w->sched = 0;
    if (o->sc == SC_STORM)
      for (size_t i = 0; i < w->nconns; i++)
        if (w->conns[i].state == C_ONLINE) storm_drop(&w->conns[i]);
    if (o->sc == SC_CHAT && o->rate <= 0) {
      for (size_t i = 0; i < w->nconns; i++) {
        conn_t *c = &w->conns[i];
        if (c->role && c->state == C_ONLINE)
          for (int k = 0; k < o->window; k++) send_chat(c, uv_hrtime());
      }
    }
  } else if (ph == PH_QUIT) {
    for (size_t i = 0; i < w->nconns; i++) {
      conn_t *c = &w->conns[i];
      if (c->state == C_ONLINE) {
        conn_sends(c, "</stream:stream>");
        c->state = C_CLOSING;
        STORE(w->st_online, w->st_online - 1);
      } else if (c->state != C_CLOSING) {
        conn_close(c);
      }
    }
    if (w->open_handles == 0)
      worker_close_handles(w);
    else
      uv_timer_start(&w->quit_timer, quit_timer_cb, 1500, 0);
  }
  worker_flush(w);
}

static void tick_cb(uv_timer_t *t) {
  worker_t *w = t->data;
  const bench_opts_t *o = w->o;
  uint64_t now = uv_hrtime();
  if (w->phase == PH_QUIT) return;
  if (g_phase == PH_LOGIN || w->inprog > 0) {
    launch_more(w);
    static __thread uint64_t last_check;
    now = uv_hrtime(); /* launch_more may have stamped connections after the tick's now */
    if (now - last_check > 100000000ull) {
      last_check = now;
      check_timeouts(w, now);
    }
  }
  if (w->phase == PH_RUN && w->send_rate > 0 &&
      (o->sc == SC_PRESENCE || (o->sc == SC_CHAT && o->rate > 0))) {
    double elapsed = now > w->go_ns ? (double)(now - w->go_ns) / 1e9 : 0;
    /* message k is due at go + k / rate (k from 0): by now, floor(elapsed * rate) + 1 of them */
    uint64_t due = (uint64_t)(elapsed * w->send_rate) + 1;
    int burst = 0;
    while (w->sched < due && burst < 20000) {
      conn_t *c = next_sender(w);
      if (!c) break;
      uint64_t intended = w->go_ns + (uint64_t)((double)w->sched * 1e9 / w->send_rate);
      if (o->sc == SC_CHAT)
        send_chat(c, intended);
      else
        send_presence(c, intended);
      w->sched++;
      burst++;
    }
  }
  worker_flush(w);
}

static void async_cb(uv_async_t *a) {
  worker_t *w = a->data;
  int ph = g_phase;
  if (ph != w->phase) {
    if (ph >= PH_RUN && w->phase < PH_RUN) enter_phase(w, PH_RUN);
    if (ph >= PH_STOP && w->phase < PH_STOP) enter_phase(w, PH_STOP);
    if (ph >= PH_QUIT && w->phase < PH_QUIT) enter_phase(w, PH_QUIT);
  }
}

static void worker_main(void *arg) {
  worker_t *w = arg;
  uv_timer_start(&w->tick, tick_cb, 1, 1);
  launch_more(w);
  worker_flush(w);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  if (g_ctx) wc_ecc_fp_free(); /* wolfSSL's per-thread ECC cache */
}

void worker_setup(worker_t *w, const bench_opts_t *o, int id, const int *gs, size_t n) {
  memset(w, 0, sizeof *w);
  w->id = id;
  w->o = o;
  pthread_mutex_init(&w->mu, NULL);
  hdr_init(&w->lat);
  hdr_init(&w->login);
  w->conns = xcalloc(n ? n : 1, sizeof *w->conns);
  w->nconns = n;
  for (size_t i = 0; i < n; i++) {
    conn_t *c = &w->conns[i];
    c->w = w;
    c->g = gs[i];
    snprintf(c->user, sizeof c->user, o->user_fmt, o->first + gs[i]);
    buf_init(&c->in);
    buf_init(&c->out);
    if (o->sc == SC_CHAT && gs[i] < 2 * o->pairs) {
      c->role = 1;
      char peer[48];
      snprintf(peer, sizeof peer, o->user_fmt, o->first + (gs[i] ^ 1));
      size_t l = strlen(peer) + 1 + strlen(o->domain) + 1;
      c->to = xmalloc(l);
      snprintf(c->to, l, "%s@%s", peer, o->domain);
    } else if (o->sc == SC_PRESENCE && gs[i] < o->users) {
      c->role = 1;
    }
  }
  /* chat: the two ends of a pair are adjacent global numbers, placed on the same thread */
  if (o->sc == SC_CHAT)
    for (size_t i = 0; i + 1 < n; i++)
      if (w->conns[i].role && w->conns[i + 1].g == (w->conns[i].g ^ 1)) {
        w->conns[i].peer = &w->conns[i + 1];
        w->conns[i + 1].peer = &w->conns[i];
        i++;
      }
  int workers = o->procs * o->threads;
  w->max_inprog = (o->concurrency + workers - 1) / workers;
  if (w->max_inprog < 1) w->max_inprog = 1;
  w->arrival_rate = o->arrival > 0 ? o->arrival / workers : 0;
  size_t senders = 0;
  for (size_t i = 0; i < n; i++) senders += w->conns[i].role;
  double share = o->active ? (double)senders / o->active : 0;
  if (o->sc == SC_CHAT && o->rate > 0) w->send_rate = o->rate * share;
  if (o->sc == SC_PRESENCE) w->send_rate = (o->rate > 0 ? o->rate : o->users / 10.0) * share;
}

int worker_start(worker_t *w) {
  if (uv_loop_init(&w->loop) != 0) return -1;
  uv_timer_init(&w->loop, &w->tick);
  uv_timer_init(&w->loop, &w->quit_timer);
  uv_async_init(&w->loop, &w->async, async_cb);
  w->tick.data = w->quit_timer.data = w->async.data = w;
  w->t_start = uv_hrtime();
  return uv_thread_create(&w->tid, worker_main, w);
}

void worker_notify(worker_t *w) { uv_async_send(&w->async); }

void worker_join(worker_t *w) {
  uv_thread_join(&w->tid);
  uv_loop_close(&w->loop);
}

void worker_free(worker_t *w) {
  for (size_t i = 0; i < w->nconns; i++) {
    conn_t *c = &w->conns[i];
    xfree(c->to);
    xfree(c->scram);
    xfree(c->smid);
    xfree(c->fast_token);
    if (c->sess) wolfSSL_SESSION_free(c->sess);
    tls_mem_free(&c->tio);
    buf_free(&c->in);
    buf_free(&c->out);
    if (c->ssl) wolfSSL_free(c->ssl);
  }
  xfree(w->conns);
  pthread_mutex_destroy(&w->mu);
}

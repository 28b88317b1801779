/* wolfSSL over memory buffers (see tls.h). */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/aes.h>
#include <wolfssl/wolfcrypt/chacha20_poly1305.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/kdf.h>

#include "edge/tls.h"
#include "edge/tls_testing.h"
#include "edge/tls_ticket.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/domains.h"
#include "common/err.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/strmap.h"
#include "common/tls_mem.h"

/* TLS 1.3 suites, then TLS 1.2 ECDHE + AEAD only, in the server's order of preference
 * (wolfSSL picks by the server's list). ChaCha20-Poly1305 first: Debian's wolfSSL has no
 * AES-NI code, and for chat-sized records its ChaCha20-Poly1305 costs about 2/3 of
 * AES-128-GCM (1.1 vs 1.6 us per 200-byte record, /tmp micro-benchmark with wolfCrypt),
 * two records per message; it also has no key schedule to keep per session. */
static const char *CIPHERS =
    "TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384";

/* The current context. A reload swaps in a new one under the lock; wolfSSL counts the
 * sessions using a context, so the old one lives until its last session ends. */
/* RFC 5929 §4.1 tls-server-end-point: the hash of our certificate (the first of the
 * chain), taken once per context; 0 bytes when its signature names no usable hash. */
typedef struct endpoint {
  uint8_t hash[64];
  uint8_t len;
} endpoint_t;

struct tls_ctx {
  pthread_mutex_t mu;
  WOLFSSL_CTX *ctx;
  endpoint_t endpoint; /* of ctx, swapped with it under mu */
  /* Virtual hosting: the context of each domain with a certificate of its own (domain
   * name -> domain_tls_t), picked by the SNI callback; a hosted domain without one is
   * served by ctx. Replaced whole by tls_ctx_set_domains, under mu. */
  strmap_t *by_domain;
};

/* by_domain's values: a domain's context and its tls-server-end-point */
typedef struct domain_tls {
  WOLFSSL_CTX *ctx;
  endpoint_t endpoint;
} domain_tls_t;

static void ctx_free_cb(void *v) {
  domain_tls_t *d = v;
  wolfSSL_CTX_free(d->ctx);
  xfree(d);
}

static void sni_switched(WOLFSSL *ssl, const endpoint_t *ep);

/* SNI (RFC 6066 §3), from wolfSSL's servername callback while it reads the ClientHello:
 * a name we host with a certificate of its own switches the session to that domain's
 * context; a hosted name without one keeps the default; a name we do not host ends the
 * handshake with a fatal unrecognized_name alert, as the RFC allows, rather than showing
 * a certificate that cannot match. No SNI: the default context. */
static int sni_cb(WOLFSSL *ssl, int *alert, void *arg) {
  tls_ctx_t *t = arg;
  const char *sni = wolfSSL_get_servername(ssl, WOLFSSL_SNI_HOST_NAME);
  if (!sni || !*sni) return 0;
  char name[256];
  size_t n = strnlen(sni, sizeof name);
  if (n == sizeof name) n = 0; /* longer than a DNS name (RFC 1035 §2.3.4): unknown below */
  for (size_t i = 0; i < n; i++) name[i] = (char)(sni[i] >= 'A' && sni[i] <= 'Z' ? sni[i] + 32 : sni[i]);
  name[n] = '\0';
  if (n && name[n - 1] == '.') name[--n] = '\0'; /* a fully qualified name's root label */
  if (!n || !domain_find(name, n)) {
    log_debug("TLS: SNI names %s, not a domain of this server", name);
    *alert = unrecognized_name;
    return fatal_return;
  }
  pthread_mutex_lock(&t->mu);
  domain_tls_t *d = t->by_domain ? strmap_get(t->by_domain, name) : NULL;
  /* the channel binding follows the certificate shown (RFC 5929 §4.1) */
  if (d && wolfSSL_set_SSL_CTX(ssl, d->ctx)) sni_switched(ssl, &d->endpoint);
  pthread_mutex_unlock(&t->mu);
  return 0;
}

/* After a TLS 1.3 handshake the session is "offloaded": the traffic keys, IVs and
 * sequence numbers are copied out of wolfSSL, the WOLFSSL object (about 56 KB with
 * Debian's build) is freed, and records are protected here with wolfCrypt's AEADs
 * (RFC 8446 §5.2-5.3). What is left per connection is this struct.
 *
 * Key updates (RFC 8446 §4.6.3, §7.2). The application traffic secrets are kept, so
 * the next ones can be derived: Debian's wolfSSL has no secret callback, but it lets a
 * context replace its HKDF-Expand-Label (a PK callback); ours computes the same thing
 * and keeps the outputs labelled "c ap traffic" / "s ap traffic" of the handshake that
 * runs on this thread (hkdf_cb). The offload checks them against wolfSSL's own keys.
 * A client KeyUpdate moves the read key at once; update_requested is answered with one
 * KeyUpdate before our next record, however many came while we were silent. We update
 * our own key before rekey_records AES-GCM records (§5.5), and ask the client for an
 * update when its records reach that count. */
typedef struct tls_rec {
  int cipher;              /* wolfssl_aes_gcm or wolfssl_chacha */
  uint8_t key_len;
  uint8_t sec_len;         /* 32 (SHA-256 suites) or 48 (SHA-384) */
  uint8_t owe_update;      /* the client sent update_requested: ours goes before our next record */
  uint8_t asked;           /* we sent update_requested; cleared by the client's KeyUpdate */
  uint8_t hs_len;          /* bytes of a KeyUpdate split over records, seen so far (< 5) */
  uint8_t hs_req;          /* its request_update byte, once seen */
  uint8_t rkey[32], wkey[32];
  uint8_t riv[12], wiv[12];
  uint8_t rsec[48], wsec[48]; /* current client and server application traffic secrets */
  uint64_t rseq, wseq;
  /* AES key schedules of a session that is busy; freed when it goes quiet (tls_conn_trim),
   * since an idle session should cost bytes, not a kilobyte of expanded keys */
  Aes *aes[2];             /* [0] read, [1] write */
} tls_rec_t;

#define REC_HDR 5
#define REC_TAG 16
#define REC_MAX_PLAIN 16384
#define REC_MAX_CIPHER (REC_MAX_PLAIN + 256) /* RFC 8446 §5.2 */

struct tls_conn {
  WOLFSSL *ssl;   /* NULL once offloaded */
  tls_mem_t io;   /* io.in: ciphertext not yet consumed (an incomplete record once
                     offloaded); io.out: the owner's output buffer */
  int ready;
  int stopped;
  int offloaded;
  int resumed;    /* the handshake resumed a session (a ticket, RFC 8446 §2.2) */
  uint8_t got_secrets; /* during the handshake: 1 client, 2 server application secret seen (hkdf_cb) */
  const char *version, *cipher_name; /* static strings, kept past the offload */
  tls_rec_t rec;
  uint8_t exporter[32]; /* RFC 9266 tls-exporter channel binding (TLS 1.3), taken before the offload */
  int has_exporter;
  endpoint_t endpoint;  /* RFC 5929 tls-server-end-point of the context the session was made on */
};

static char *cipher_list; /* NULL: CIPHERS */

int tls_set_ciphers(const char *list, char **err) {
  xfree(cipher_list);
  cipher_list = NULL;
  if (!list || !*list) return 0;
  /* every name must be one of ours: the option reorders or narrows, never widens */
  char *copy = xstrdup(list), *save = NULL;
  for (char *name = strtok_r(copy, ":", &save); name; name = strtok_r(NULL, ":", &save)) {
    size_t n = strlen(name);
    const char *p = strstr(CIPHERS, name);
    int ok = 0;
    while (p && !ok) {
      ok = (p == CIPHERS || p[-1] == ':') && (p[n] == ':' || p[n] == '\0');
      p = ok ? p : strstr(p + 1, name);
    }
    if (!ok) {
      if (err) *err = xstrfmt("tls.ciphers: '%s' is not one of the allowed AEAD suites", name);
      xfree(copy);
      return XMPP_EINVAL;
    }
  }
  xfree(copy);
  cipher_list = xstrdup(list);
  return 0;
}

/* The connection whose handshake runs on this thread (set around wolfSSL_accept). */
static _Thread_local tls_conn_t *hs_conn;

/* wolfSSL's HKDF-Expand-Label, computed the same way, keeping the application traffic
 * secrets of hs_conn (see tls_rec_t). wolfSSL calls it for every TLS 1.3 derivation. */
static int hkdf_cb(byte *okm, word32 okm_len, const byte *prk, word32 prk_len, const byte *protocol,
                   word32 protocol_len, const byte *label, word32 label_len, const byte *info, word32 info_len,
                   int digest, int side) {
  int rc = wc_Tls13_HKDF_Expand_Label(okm, okm_len, prk, prk_len, protocol, protocol_len, label, label_len, info,
                                      info_len, digest);
  tls_conn_t *c = hs_conn;
  if (rc != 0 || !c || label_len != 12 || (okm_len != 32 && okm_len != 48)) return rc;
  int client = memcmp(label, "c ap traffic", 12) == 0;
  if (!client && memcmp(label, "s ap traffic", 12) != 0) return rc;
  memcpy(client ? c->rec.rsec : c->rec.wsec, okm, okm_len);
  c->rec.sec_len = (uint8_t)okm_len;
  c->got_secrets |= client ? 1 : 2;
  return rc;
}

/* Session tickets: one key store for every context (a certificate reload keeps it). */
static tls_tickets_t *tickets;

int tls_set_tickets(const char *key_file, int lifetime, char **err) {
  tls_tickets_t *k = tls_tickets_new(key_file, lifetime, err);
  if (!k) return XMPP_EINVAL;
  tls_tickets_free(tickets);
  tickets = k;
  return 0;
}

int tls_reload_tickets(char **err) { return tickets ? tls_tickets_reload(tickets, err) : 0; }

/* wolfSSL's SessionTicketEncCb: seals (enc) or opens a ticket in place. */
static int ticket_cb(WOLFSSL *ssl, unsigned char name[WOLFSSL_TICKET_NAME_SZ], unsigned char iv[WOLFSSL_TICKET_IV_SZ],
                     unsigned char mac[WOLFSSL_TICKET_MAC_SZ], int enc, unsigned char *data, int len, int *out_len,
                     void *ud) {
  tls_tickets_t *k = ud;
  if (len <= 0) return enc ? WOLFSSL_TICKET_RET_FATAL : WOLFSSL_TICKET_RET_REJECT;
  int64_t now = (int64_t)time(NULL);
  int rc = enc ? tls_tickets_seal(k, now, name, iv, mac, data, (size_t)len)
               : tls_tickets_open(k, now, name, iv, mac, data, (size_t)len);
  *out_len = len;
  switch (rc) {
  case TLS_TICKET_OK: return WOLFSSL_TICKET_RET_OK;
  case TLS_TICKET_CREATE: return WOLFSSL_TICKET_RET_CREATE;
  case TLS_TICKET_REJECT: return WOLFSSL_TICKET_RET_REJECT;
  default: return WOLFSSL_TICKET_RET_FATAL;
  }
}

static WOLFSSL_CTX *build(tls_ctx_t *t, const char *cert_file, const char *key_file, char **err) {
  WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
  if (!ctx) {
    if (err) *err = xstrdup("wolfSSL_CTX_new failed");
    return NULL;
  }
  if (wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_set_cipher_list(ctx, cipher_list ? cipher_list : CIPHERS) != WOLFSSL_SUCCESS) {
    if (err) *err = xstrdup("cannot restrict TLS versions/ciphers");
    wolfSSL_CTX_free(ctx);
    return NULL;
  }
  if (wolfSSL_CTX_use_certificate_chain_file(ctx, cert_file) != WOLFSSL_SUCCESS) {
    if (err) *err = xstrfmt("cannot load certificate chain %s", cert_file);
    wolfSSL_CTX_free(ctx);
    return NULL;
  }
  if (wolfSSL_CTX_use_PrivateKey_file(ctx, key_file, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS) {
    if (err) *err = xstrfmt("cannot load private key (or it does not match the certificate) %s", key_file);
    wolfSSL_CTX_free(ctx);
    return NULL;
  }
  /* Key exchange: X25519 first. Modern clients send an X25519 key share, and wolfSSL's
   * X25519 is several times cheaper than its generic-math P-256 (Debian's build has no
   * dedicated P-256 code): about half of a log-in's server CPU is ECDHE otherwise. */
  int groups[] = {WOLFSSL_ECC_X25519, WOLFSSL_ECC_SECP256R1, WOLFSSL_ECC_SECP384R1, WOLFSSL_ECC_SECP521R1};
  if (wolfSSL_CTX_set_groups(ctx, groups, (int)(sizeof groups / sizeof *groups)) != WOLFSSL_SUCCESS)
    log_warn("TLS: cannot set key-exchange group preference; using wolfSSL's default");
  wolfSSL_CTX_SetHKDFExpandLabelCb(ctx, hkdf_cb);
  /* TLS 1.3 tickets sealed with our keys (tls_ticket.h), so every edge holding them can
   * resume. No TLS 1.2 tickets: a resumed TLS 1.2 session reuses the master secret with
   * no new key exchange, while TLS 1.3 resumption runs ECDHE again (psk_dhe_ke) when the
   * client offers it, as OpenSSL and the other common libraries do. wolfSSL's age check
   * is left looser than ours (tls_tickets_open refuses by the sealed issue time). */
  int lifetime = tls_tickets_lifetime(tickets);
  (void)wolfSSL_CTX_set_timeout(ctx, (unsigned)lifetime + 60); /* returns the old value here */
  if (wolfSSL_CTX_set_TicketEncCb(ctx, ticket_cb) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_set_TicketEncCtx(ctx, tickets) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_set_TicketHint(ctx, lifetime) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_NoTicketTLSv12(ctx) != WOLFSSL_SUCCESS) {
    if (err) *err = xstrdup("cannot set up session tickets");
    wolfSSL_CTX_free(ctx);
    return NULL;
  }
  wolfSSL_CTX_set_servername_callback(ctx, sni_cb);
  wolfSSL_CTX_set_servername_arg(ctx, t);
  tls_mem_use(ctx);
  return ctx;
}

/* RFC 5929 §4.1: the certificate's signature hash, SHA-256 in place of MD5 and SHA-1;
 * a signature without one of those (Ed25519, Ed448) has no tls-server-end-point. */
static void endpoint_of(WOLFSSL_CTX *ctx, endpoint_t *ep) {
  memset(ep, 0, sizeof *ep);
  WOLFSSL_X509 *x = wolfSSL_CTX_get0_certificate(ctx);
  int der_len = 0;
  const unsigned char *der = x ? wolfSSL_X509_get_der(x, &der_len) : NULL;
  if (!der || der_len <= 0) return;
  enum wc_HashType h;
  switch (wolfSSL_X509_get_signature_nid(x)) {
  case NID_md5WithRSAEncryption:
  case NID_sha1WithRSAEncryption:
  case NID_ecdsa_with_SHA1:
  case NID_sha256WithRSAEncryption:
  case NID_ecdsa_with_SHA256: h = WC_HASH_TYPE_SHA256; break;
  case NID_sha384WithRSAEncryption:
  case NID_ecdsa_with_SHA384: h = WC_HASH_TYPE_SHA384; break;
  case NID_sha512WithRSAEncryption:
  case NID_ecdsa_with_SHA512: h = WC_HASH_TYPE_SHA512; break;
  default: return; /* RSA-PSS names its hash in parameters; EdDSA has none: not offered */
  }
  int n = wc_HashGetDigestSize(h);
  if (n > 0 && n <= (int)sizeof ep->hash && wc_Hash(h, der, (word32)der_len, ep->hash, (word32)n) == 0)
    ep->len = (uint8_t)n;
}

tls_ctx_t *tls_ctx_new(const char *cert_file, const char *key_file, char **err) {
  static int inited;
  if (!inited) {
    wolfSSL_Init();
    inited = 1;
  }
  if (!tickets && tls_set_tickets(NULL, 86400, err) != 0) return NULL;
  tls_ctx_t *t = xcalloc(1, sizeof *t);
  pthread_mutex_init(&t->mu, NULL);
  t->ctx = build(t, cert_file, key_file, err);
  if (!t->ctx) {
    pthread_mutex_destroy(&t->mu);
    xfree(t);
    return NULL;
  }
  endpoint_of(t->ctx, &t->endpoint);
  return t;
}

int tls_ctx_set_domains(tls_ctx_t *t, const domains_t *d, char **err) {
  strmap_t *m = strmap_new();
  for (size_t i = 0; i < domains_count(d); i++) {
    const domain_t *dom = domains_at(d, i);
    if (!dom->own_cert) continue;
    char *why = NULL;
    WOLFSSL_CTX *ctx = build(t, dom->cert, dom->key, &why);
    if (!ctx) {
      if (err) *err = xstrfmt("domain %s: %s", dom->name, why ? why : "TLS context");
      xfree(why);
      strmap_free(m, ctx_free_cb);
      return XMPP_ERR;
    }
    domain_tls_t *dt = xcalloc(1, sizeof *dt);
    dt->ctx = ctx;
    endpoint_of(ctx, &dt->endpoint);
    strmap_put(m, dom->name, dt);
  }
  pthread_mutex_lock(&t->mu);
  strmap_t *old = t->by_domain;
  t->by_domain = m;
  pthread_mutex_unlock(&t->mu);
  if (old) strmap_free(old, ctx_free_cb); /* sessions on them keep their references */
  return 0;
}

int tls_ctx_reload(tls_ctx_t *t, const char *cert_file, const char *key_file, char **err) {
  WOLFSSL_CTX *ctx = build(t, cert_file, key_file, err);
  if (!ctx) return XMPP_ERR;
  endpoint_t ep;
  endpoint_of(ctx, &ep);
  pthread_mutex_lock(&t->mu);
  WOLFSSL_CTX *old = t->ctx;
  t->ctx = ctx;
  t->endpoint = ep;
  pthread_mutex_unlock(&t->mu);
  wolfSSL_CTX_free(old); /* drops our reference; sessions still on it keep theirs */
  return 0;
}

void tls_ctx_free(tls_ctx_t *t) {
  if (!t) return;
  wolfSSL_CTX_free(t->ctx);
  if (t->by_domain) strmap_free(t->by_domain, ctx_free_cb);
  pthread_mutex_destroy(&t->mu);
  xfree(t);
  xfree(cipher_list);
  cipher_list = NULL;
  tls_tickets_free(tickets);
  tickets = NULL;
  wolfSSL_Cleanup();
}

void tls_thread_cleanup(void) { wc_ecc_fp_free(); }

/* From sni_cb, during the handshake: the connection whose ssl moved to another domain's
 * context takes that context's tls-server-end-point (its I/O context is its io member). */
static void sni_switched(WOLFSSL *ssl, const endpoint_t *ep) {
  tls_mem_t *m = wolfSSL_GetIOReadCtx(ssl);
  if (!m) return;
  tls_conn_t *c = (tls_conn_t *)(void *)((char *)m - offsetof(tls_conn_t, io));
  c->endpoint = *ep;
}

tls_conn_t *tls_conn_new(tls_ctx_t *t, buf_t *out) {
  tls_conn_t *c = xcalloc(1, sizeof *c);
  pthread_mutex_lock(&t->mu);
  c->ssl = wolfSSL_new(t->ctx);
  c->endpoint = t->endpoint;
  pthread_mutex_unlock(&t->mu);
  if (!c->ssl) {
    xfree(c);
    return NULL;
  }
  tls_mem_attach(&c->io, c->ssl, out);
  return c;
}

void tls_conn_free(tls_conn_t *c) {
  if (!c) return;
  if (c->ssl) wolfSSL_free(c->ssl);
  tls_mem_free(&c->io);
  tls_conn_trim(c);
  explicit_bzero(&c->rec, sizeof c->rec);
  xfree(c);
}

void tls_conn_stop(tls_conn_t *c) { c->stopped = 1; }

int tls_conn_alpn(tls_conn_t *c, const char *proto) {
  /* RFC 7301 §3.2: a client that offers protocols, none of them ours, gets a fatal
   * no_application_protocol alert; a client that offers none is served */
  return wolfSSL_UseALPN(c->ssl, (char *)proto, (unsigned)strlen(proto), WOLFSSL_ALPN_FAILED_ON_MISMATCH) ==
                 WOLFSSL_SUCCESS
             ? 0
             : XMPP_ERR;
}

int tls_conn_resumed(const tls_conn_t *c) { return c->resumed; }
size_t tls_conn_exporter(const tls_conn_t *c, const uint8_t **data) {
  *data = c->has_exporter ? c->exporter : NULL;
  return c->has_exporter ? sizeof c->exporter : 0;
}
size_t tls_conn_endpoint(const tls_conn_t *c, const uint8_t **data) {
  *data = c->ready && c->endpoint.len ? c->endpoint.hash : NULL;
  return *data ? c->endpoint.len : 0;
}
int tls_conn_offloaded(const tls_conn_t *c) { return c->offloaded; }

int tls_conn_ready(const tls_conn_t *c) { return c->ready; }


static int offload_enabled = 1;
void tls_set_offload(int on) { offload_enabled = on; }

/* RFC 8446 §5.5: at most 2^24.5 full-size records under one AES-GCM key. We update our
 * key at rekey_records and ask the client to at the same count of its records; a client
 * still on its key at REKEY_HARD (2^24 + 2^22, under 2^24.5: room for the records it
 * sent before our request reached it) is disconnected. ChaCha20-Poly1305 has no
 * practical limit (2^64 records). */
static uint64_t rekey_records = 1ULL << 24;
void tls_set_rekey_records(uint64_t n) { rekey_records = n && n < (1ULL << 24) ? n : 1ULL << 24; }
#define REKEY_HARD ((1ULL << 24) + (1ULL << 22))

static int hkdf_label(uint8_t *out, size_t out_len, const uint8_t *secret, size_t sec_len, const char *label) {
  return wc_Tls13_HKDF_Expand_Label(out, (word32)out_len, secret, (word32)sec_len, (const byte *)"tls13 ", 6,
                                    (const byte *)label, (word32)strlen(label), (const byte *)"", 0,
                                    sec_len == 48 ? WC_SHA384 : WC_SHA256) == 0
             ? 0
             : XMPP_ERR;
}

int tls_traffic_keys(const uint8_t *secret, size_t sec_len, uint8_t *key, size_t key_len, uint8_t iv[12]) {
  if ((sec_len != 32 && sec_len != 48) || (key_len != 16 && key_len != 32)) return XMPP_EINVAL;
  return hkdf_label(key, key_len, secret, sec_len, "key") || hkdf_label(iv, 12, secret, sec_len, "iv") ? XMPP_ERR
                                                                                                         : 0;
}

int tls_traffic_next(uint8_t *secret, size_t sec_len) {
  if (sec_len != 32 && sec_len != 48) return XMPP_EINVAL;
  uint8_t next[48];
  int rc = hkdf_label(next, sec_len, secret, sec_len, "traffic upd");
  if (rc == 0) memcpy(secret, next, sec_len);
  explicit_bzero(next, sizeof next);
  return rc;
}

static void nonce(uint8_t out[12], const uint8_t iv[12], uint64_t seq) {
  memcpy(out, iv, 12);
  for (int i = 0; i < 8; i++) out[11 - i] ^= (uint8_t)(seq >> (8 * i));
}

static void aes_drop(Aes **a) {
  if (!*a) return;
  wc_AesFree(*a);
  explicit_bzero(*a, sizeof **a);
  xfree(*a);
  *a = NULL;
}

void tls_conn_trim(tls_conn_t *c) {
  aes_drop(&c->rec.aes[0]);
  aes_drop(&c->rec.aes[1]);
}

/* AEAD seal/open over one record; 0 or -1. */
static int aead(tls_rec_t *r, int enc, const uint8_t *key, const uint8_t n[12], const uint8_t *aad,
                const uint8_t *in, size_t len, uint8_t *out, uint8_t *tag) {
  int rc;
  if (r->cipher == wolfssl_chacha) {
    rc = enc ? wc_ChaCha20Poly1305_Encrypt(key, n, aad, REC_HDR, in, (word32)len, out, tag)
             : wc_ChaCha20Poly1305_Decrypt(key, n, aad, REC_HDR, in, (word32)len, tag, out);
    return rc == 0 ? 0 : -1;
  }
  /* the key schedule is expanded once per busy period, not once per record */
  Aes **slot = &r->aes[enc ? 1 : 0];
  if (!*slot) {
    Aes *a = xmalloc(sizeof *a);
    if (wc_AesInit(a, NULL, INVALID_DEVID) != 0) {
      xfree(a);
      return -1;
    }
    if (wc_AesGcmSetKey(a, key, r->key_len) != 0) {
      wc_AesFree(a);
      xfree(a);
      return -1;
    }
    *slot = a;
  }
  rc = enc ? wc_AesGcmEncrypt(*slot, out, in, (word32)len, n, 12, tag, REC_TAG, aad, REC_HDR)
           : wc_AesGcmDecrypt(*slot, out, in, (word32)len, n, 12, tag, REC_TAG, aad, REC_HDR);
  return rc == 0 ? 0 : -1;
}

/* Moves one direction to its next traffic secret, key and IV (RFC 8446 §7.2); the
 * expanded AES key of the old one goes (the next record expands the new one). */
static int key_next(tls_rec_t *r, int write) {
  uint8_t *sec = write ? r->wsec : r->rsec;
  if (tls_traffic_next(sec, r->sec_len) != 0 ||
      tls_traffic_keys(sec, r->sec_len, write ? r->wkey : r->rkey, r->key_len, write ? r->wiv : r->riv) != 0)
    return XMPP_ERR;
  aes_drop(&r->aes[write ? 1 : 0]);
  if (write) r->wseq = 0;
  else r->rseq = 0;
  return 0;
}

static int rec_seal(tls_conn_t *c, uint8_t type, const char *data, size_t len);

/* Sends KeyUpdate under the current key, then moves to the next (§4.6.3: the sender
 * switches after sending it). Answers a pending update_requested as well. */
static int key_update_out(tls_conn_t *c, int request) {
  tls_rec_t *r = &c->rec;
  const char m[5] = {24 /* key_update */, 0, 0, 1, (char)request};
  if (rec_seal(c, 22, m, sizeof m) != 0 || key_next(r, 1) != 0) return XMPP_ERR;
  r->owe_update = 0;
  if (request) r->asked = 1;
  return 0;
}

/* Appends one protected record (inner content type 'type') to the out buffer. Before
 * application data: the KeyUpdate we owe the client, or ours at the record limit. */
static int rec_seal(tls_conn_t *c, uint8_t type, const char *data, size_t len) {
  tls_rec_t *r = &c->rec;
  if (type == 23 && (r->owe_update || (r->cipher == wolfssl_aes_gcm && r->wseq >= rekey_records)) &&
      key_update_out(c, 0) != 0)
    return XMPP_ERR;
  uint8_t inner[REC_MAX_PLAIN + 1];
  memcpy(inner, data, len);
  inner[len] = type;
  size_t clen = len + 1 + REC_TAG;
  buf_reserve(c->io.out, REC_HDR + clen);
  uint8_t *h = c->io.out->data + c->io.out->len;
  h[0] = 23, h[1] = 3, h[2] = 3, h[3] = (uint8_t)(clen >> 8), h[4] = (uint8_t)clen;
  uint8_t n[12];
  nonce(n, r->wiv, r->wseq);
  int rc = aead(r, 1, r->wkey, n, h, inner, len + 1, h + REC_HDR, h + REC_HDR + len + 1);
  explicit_bzero(inner, len + 1);
  if (rc != 0) return XMPP_ERR;
  r->wseq++;
  c->io.out->len += REC_HDR + clen;
  return 0;
}

static void rec_alert(tls_conn_t *c, uint8_t level, uint8_t desc) {
  const char a[2] = {(char)level, (char)desc};
  rec_seal(c, 21, a, 2);
}

enum { ALERT_UNEXPECTED_MESSAGE = 10, ALERT_ILLEGAL_PARAMETER = 47, ALERT_DECODE_ERROR = 50,
       ALERT_INTERNAL_ERROR = 80 };

/* A handshake record from the client after the handshake: it may only carry KeyUpdate
 * (we never request a certificate, and tickets go the other way). KeyUpdate is type 24,
 * length 1, request_update 0 or 1 (§4.6.3), and must end its record (§5.1: the key
 * changes after it); split over records it is legal, so its bytes are checked as they
 * come. 0, or the alert to send. One derivation per KeyUpdate: each costs the client a
 * record, and the bytes are charged to the connection's shaper like any others. */
static int key_update_in(tls_conn_t *c, const uint8_t *p, size_t n) {
  tls_rec_t *r = &c->rec;
  if (n == 0) return ALERT_UNEXPECTED_MESSAGE; /* §5.1: no zero-length handshake fragments */
  for (size_t i = 0; i < n; i++) {
    uint8_t k = r->hs_len, b = p[i];
    if (k == 5) return ALERT_UNEXPECTED_MESSAGE; /* more after a KeyUpdate in its record */
    if (k == 0 && b != 24) return ALERT_UNEXPECTED_MESSAGE;
    if (k >= 1 && k <= 3 && b != (k == 3 ? 1 : 0)) return ALERT_DECODE_ERROR;
    if (k == 4 && b > 1) return ALERT_ILLEGAL_PARAMETER;
    if (k == 4) r->hs_req = b;
    r->hs_len++;
  }
  if (r->hs_len < 5) return 0; /* the rest comes in the next record */
  r->hs_len = 0;
  if (key_next(r, 0) != 0) return ALERT_INTERNAL_ERROR;
  r->asked = 0;
  if (r->hs_req) r->owe_update = 1;
  return 0;
}

static int offload(tls_conn_t *c) {
  WOLFSSL *ssl = c->ssl;
  int bulk = wolfSSL_GetBulkCipher(ssl);
  int klen = wolfSSL_GetKeySize(ssl);
  word64 wseq = 0, rseq = 0;
  if (!offload_enabled || wolfSSL_version(ssl) != TLS1_3_VERSION ||
      (bulk != wolfssl_aes_gcm && bulk != wolfssl_chacha) || (klen != 16 && klen != 32) ||
      wolfSSL_GetAeadMacSize(ssl) != REC_TAG || wolfSSL_pending(ssl) || wolfSSL_has_pending(ssl) ||
      /* a client that negotiated smaller records (RFC 6066 max_fragment_length) keeps
       * wolfSSL, which honours it; the edge's writer always fills 2^14-byte records */
      wolfSSL_GetMaxOutputSize(ssl) < REC_MAX_PLAIN)
    return 0;
  /* wolfSSL_pending/has_pending see decrypted bytes only: the hand-over is safe because
   * wolfSSL (no read-ahead in this build) reads exactly the records it needs, so no
   * ciphertext past Finished sits in its input buffer; rec_feed takes what follows */
  wolfSSL_GetSequenceNumber(ssl, &wseq);
  wolfSSL_GetPeerSequenceNumber(ssl, &rseq);
  const unsigned char *ck = wolfSSL_GetClientWriteKey(ssl), *sk = wolfSSL_GetServerWriteKey(ssl);
  const unsigned char *civ = wolfSSL_GetClientWriteIV(ssl), *siv = wolfSSL_GetServerWriteIV(ssl);
  if (!ck || !sk || !civ || !siv) return 0;
  tls_rec_t *r = &c->rec;
  r->cipher = bulk;
  r->key_len = (uint8_t)klen;
  /* the secrets hkdf_cb kept must give wolfSSL's keys, or wolfSSL keeps the session
   * (it can update keys itself) */
  if (c->got_secrets != 3 ||
      tls_traffic_keys(r->rsec, r->sec_len, r->rkey, r->key_len, r->riv) != 0 ||
      tls_traffic_keys(r->wsec, r->sec_len, r->wkey, r->key_len, r->wiv) != 0 ||
      memcmp(r->rkey, ck, (size_t)klen) || memcmp(r->wkey, sk, (size_t)klen) || memcmp(r->riv, civ, 12) ||
      memcmp(r->wiv, siv, 12)) {
    log_warn("TLS: the application traffic secrets were not captured; this session keeps wolfSSL");
    explicit_bzero(r, sizeof *r);
    return 0;
  }
  r->rseq = rseq;
  r->wseq = wseq;
  c->version = wolfSSL_get_version(ssl);
  c->cipher_name = wolfSSL_get_cipher(ssl);
  wolfSSL_free(ssl);
  c->ssl = NULL;
  c->offloaded = 1;
  return 1;
}

/* Opens the whole records in [p, p + n) of an offloaded session; *used says how many
 * bytes they took (the rest is an incomplete record). 0, or XMPP_ERR after an alert. */
static int rec_open(tls_conn_t *c, const uint8_t *p, size_t n, size_t *used, tls_plain_cb cb, void *ud) {
  tls_rec_t *r = &c->rec;
  size_t off = 0;
  int rc = 0;
  static _Thread_local uint8_t plain[REC_MAX_CIPHER];
  while (!c->stopped) {
    size_t avail = n - off;
    if (avail < REC_HDR) break;
    const uint8_t *h = p + off;
    size_t len = (size_t)h[3] << 8 | h[4];
    if (h[0] != 23) {
      /* after the handshake only protected records may come (RFC 8446 §5) */
      rec_alert(c, 2, 10 /* unexpected_message */);
      rc = XMPP_ERR;
      break;
    }
    if (len > REC_MAX_CIPHER || len < REC_TAG + 1) {
      rec_alert(c, 2, 22 /* record_overflow */);
      rc = XMPP_ERR;
      break;
    }
    if (avail < REC_HDR + len) break;
    if (r->cipher == wolfssl_aes_gcm && r->rseq >= REKEY_HARD) {
      log_info("TLS: client sent %llu AES-GCM records under one key without updating it, closing",
               (unsigned long long)r->rseq);
      rc = XMPP_ERR;
      break;
    }
    uint8_t nc[12];
    nonce(nc, r->riv, r->rseq);
    size_t plen = len - REC_TAG;
    if (aead(r, 0, r->rkey, nc, h, h + REC_HDR, plen, plain, (uint8_t *)h + REC_HDR + plen) != 0) {
      rec_alert(c, 2, 20 /* bad_record_mac */);
      rc = XMPP_ERR;
      break;
    }
    r->rseq++;
    off += REC_HDR + len;
    while (plen && plain[plen - 1] == 0) plen--;
    if (!plen) {
      rec_alert(c, 2, 10);
      rc = XMPP_ERR;
      break;
    }
    uint8_t type = plain[--plen];
    if (r->hs_len && type != 22) {
      rec_alert(c, 2, ALERT_UNEXPECTED_MESSAGE); /* §5.1: a split handshake message, interleaved */
      rc = XMPP_ERR;
      break;
    }
    if (type == 22) {
      int alert = key_update_in(c, plain, plen);
      if (alert) {
        log_info("TLS: bad post-handshake message from client (handshake type %d, %zu bytes), alert %d", plain[0],
                 plen, alert);
        rec_alert(c, 2, (uint8_t)alert);
        rc = XMPP_ERR;
        break;
      }
      continue;
    }
    if (type == 23) {
      if (plen > REC_MAX_PLAIN) {
        rec_alert(c, 2, 22);
        rc = XMPP_ERR;
        break;
      }
      /* the client's records reach the limit: ask for its KeyUpdate (once per key) */
      if (r->cipher == wolfssl_aes_gcm && r->rseq >= rekey_records && !r->asked && key_update_out(c, 1) != 0) {
        rc = XMPP_ERR;
        break;
      }
      if (plen) cb(ud, (const char *)plain, plen);
      continue;
    }
    if (type == 21) {
      /* close_notify or an error alert: either way the session ends */
      rc = XMPP_ERR;
      break;
    }
    /* change_cipher_spec or an unknown type after the handshake (§5) */
    log_info("TLS: record of content type %d from client after the handshake, closing", type);
    rec_alert(c, 2, ALERT_UNEXPECTED_MESSAGE);
    rc = XMPP_ERR;
    break;
  }
  explicit_bzero(plain, sizeof plain);
  *used = off;
  return rc;
}

/* Offloaded input: records straight from the read buffer; only an incomplete record is
 * copied (and freed as soon as it completes). */
static int rec_feed(tls_conn_t *c, const char *data, size_t len, tls_plain_cb cb, void *ud) {
  size_t used = 0;
  int rc;
  if (!c->io.in.len) {
    rc = rec_open(c, (const uint8_t *)data, len, &used, cb, ud);
    if (rc == 0 && used < len) buf_append(&c->io.in, data + used, len - used);
    return rc;
  }
  if (len) buf_append(&c->io.in, data, len);
  rc = rec_open(c, c->io.in.data, c->io.in.len, &used, cb, ud);
  buf_consume(&c->io.in, used);
  if (!c->io.in.len || rc) buf_free(&c->io.in);
  return rc;
}

int tls_conn_feed(tls_conn_t *c, const char *data, size_t len, tls_plain_cb cb, tls_ready_cb ready,
                  void *ud) {
  if (c->offloaded) return rec_feed(c, data, len, cb, ud);
  tls_mem_feed(&c->io, data, len);
  int rc = 0;
  if (!c->ready) {
    hs_conn = c;
    int r = wolfSSL_accept(c->ssl);
    hs_conn = NULL;
    if (r == WOLFSSL_SUCCESS) {
      c->ready = 1;
      c->resumed = wolfSSL_session_reused(c->ssl) == 1;
      metrics_inc(c->resumed ? M_TLS_RESUMED : M_TLS_FULL);
      /* RFC 9266 §2: TLS 1.3 only (1.2 would need the extended master secret) */
      c->has_exporter = wolfSSL_version(c->ssl) == TLS1_3_VERSION &&
                        wolfSSL_export_keying_material(c->ssl, c->exporter, sizeof c->exporter,
                                                       "EXPORTER-Channel-Binding", 24, NULL, 0, 0) == WOLFSSL_SUCCESS;
      if (!offload(c)) explicit_bzero(&c->rec, sizeof c->rec); /* wolfSSL keeps its own secrets */
      ready(ud);
    } else {
      int e = wolfSSL_get_error(c->ssl, r);
      if (e != WOLFSSL_ERROR_WANT_READ && e != WOLFSSL_ERROR_WANT_WRITE) {
        char msg[WOLFSSL_MAX_ERROR_SZ];
        log_debug("TLS handshake failed: %s", wolfSSL_ERR_error_string((unsigned long)e, msg));
        metrics_inc(M_TLS_FAILED);
        rc = XMPP_ERR;
      }
    }
  }
  if (rc == 0 && c->offloaded) {
    /* what followed the client's Finished in this read */
    buf_t rest = c->io.in;
    size_t off = c->io.in_off;
    buf_init(&c->io.in);
    c->io.in_off = 0;
    rc = rec_feed(c, (const char *)rest.data + off, rest.len - off, cb, ud);
    buf_free(&rest);
    return rc;
  }
  while (rc == 0 && c->ready && !c->stopped) {
    char plain[16384];
    int n = wolfSSL_read(c->ssl, plain, sizeof plain);
    if (n > 0) {
      cb(ud, plain, (size_t)n);
      continue;
    }
    int e = wolfSSL_get_error(c->ssl, n);
    if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE) break;
    rc = XMPP_ERR; /* close_notify or a fatal alert */
  }
  tls_mem_trim(&c->io, 0); /* drop what wolfSSL consumed */
  return rc;
}

int tls_conn_write(tls_conn_t *c, const char *data, size_t len) {
  if (c->offloaded) {
    while (len) {
      size_t chunk = len > REC_MAX_PLAIN ? REC_MAX_PLAIN : len;
      if (rec_seal(c, 23, data, chunk) != 0) return XMPP_ERR;
      data += chunk;
      len -= chunk;
    }
    return 0;
  }
  while (len) {
    int chunk = len > 16384 ? 16384 : (int)len;
    if (wolfSSL_version(c->ssl) == TLS1_3_VERSION && wolfSSL_GetBulkCipher(c->ssl) == wolfssl_aes_gcm) {
      /* a TLS 1.3 session wolfSSL keeps updates its key at the same count (§5.5); wolfSSL
       * does not by itself. Its KeyUpdate asks the client to update too. */
      word64 seq = 0;
      wolfSSL_GetSequenceNumber(c->ssl, &seq);
      if (seq >= rekey_records && wolfSSL_update_keys(c->ssl) != WOLFSSL_SUCCESS) return XMPP_ERR;
    }
    int n = wolfSSL_write(c->ssl, data, chunk);
    if (n <= 0) return XMPP_ERR;
    data += n;
    len -= (size_t)n;
  }
  return 0;
}

void tls_conn_shutdown(tls_conn_t *c) {
  if (c->offloaded) rec_alert(c, 1, 0 /* close_notify */);
  else if (c->ready) wolfSSL_shutdown(c->ssl);
}

const char *tls_conn_version(const tls_conn_t *c) { return c->ssl ? wolfSSL_get_version(c->ssl) : c->version; }
const char *tls_conn_cipher(const tls_conn_t *c) { return c->ssl ? wolfSSL_get_cipher(c->ssl) : c->cipher_name; }

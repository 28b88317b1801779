/* TLS for client connections: wolfSSL driven through its I/O callbacks over memory
 * buffers, so libuv owns the socket and protocol code never touches it.
 * TLS 1.2 and 1.3 only, AEAD suites with forward secrecy only.
 * A tls_ctx_t is shared read-only by all I/O threads; a tls_conn_t belongs to one
 * connection (one thread). */
#ifndef XMPP_TLS_H
#define XMPP_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

typedef struct tls_ctx tls_ctx_t;
typedef struct tls_conn tls_conn_t;

/* Loads the certificate chain and key (PEM). NULL and *err (caller frees) on failure. */
tls_ctx_t *tls_ctx_new(const char *cert_file, const char *key_file, char **err);
void tls_ctx_free(tls_ctx_t *t);
struct domains;
/* Virtual hosting: a context for each domain of d with a certificate of its own, chosen
 * by SNI (tls.c sni_cb); replaces the previous set (established sessions keep theirs).
 * On failure nothing changes and *err names the domain. Any thread. */
int tls_ctx_set_domains(tls_ctx_t *t, const struct domains *d, char **err);
/* Loads the files again into a new context that new connections use from now on;
 * established sessions keep the one they started with. On failure the current context
 * stays and *err says why. Safe from any thread. */
int tls_ctx_reload(tls_ctx_t *t, const char *cert_file, const char *key_file, char **err);
/* Frees wolfSSL's per-thread caches (the ECC fixed-point cache). Call at the end of
 * every thread that ran TLS handshakes. */
void tls_thread_cleanup(void);
/* Whether TLS 1.3 sessions drop their wolfSSL object after the handshake (default on). */
void tls_set_offload(int on);
/* tls.rekey_records: AES-GCM records under one TLS 1.3 traffic key before the edge
 * updates it (RFC 8446 §5.5); 0 = the default, 2^24. Call before any connection. */
void tls_set_rekey_records(uint64_t n);
/* tls.ciphers: a colon list drawn from the built-in suites (reorders or narrows them);
 * NULL or "" = the built-in list. XMPP_EINVAL with *err for a name outside it. */
int tls_set_ciphers(const char *list, char **err);

/* Session tickets (edge/tls_ticket.h): keys from key_file (NULL or "" = a random key
 * per process, turned over every lifetime), tickets valid for lifetime seconds. Call
 * before tls_ctx_new (without it: generated keys, one day). XMPP_EINVAL with *err for a
 * bad key file. */
int tls_set_tickets(const char *key_file, int lifetime, char **err);
/* Reads the ticket key file again (SIGHUP); on failure the keys stay and *err says
 * why. Any thread. */
int tls_reload_tickets(char **err);

/* Ciphertext produced by the session is appended to *out. */
tls_conn_t *tls_conn_new(tls_ctx_t *t, buf_t *out);
void tls_conn_free(tls_conn_t *c);
/* The handshake offers ALPN protocol proto (XEP-0368 direct TLS: "xmpp-client"): a
 * client offering other protocols only is refused with no_application_protocol; a
 * client offering none is served. Before the first tls_conn_feed. 0 or XMPP_ERR. */
int tls_conn_alpn(tls_conn_t *c, const char *proto);
/* Frees what a quiet session can rebuild on its next record (expanded AES keys). */
void tls_conn_trim(tls_conn_t *c);

typedef void (*tls_plain_cb)(void *ud, const char *data, size_t len);
typedef void (*tls_ready_cb)(void *ud);
/* Feeds ciphertext. Handshake progress and records are processed. When the handshake
 * completes, ready(ud) is called first; then decrypted bytes go to plain (which may call
 * tls_conn_write, and may ask to stop with tls_conn_stop). Both run synchronously.
 * Returns 0, or XMPP_ERR on a fatal TLS error or close. */
int tls_conn_feed(tls_conn_t *c, const char *data, size_t len, tls_plain_cb plain, tls_ready_cb ready,
                  void *ud);
/* The handshake is complete: tls_conn_write may be used. */
int tls_conn_ready(const tls_conn_t *c);
/* Encrypts plaintext into the out buffer. 0 or XMPP_ERR. */
int tls_conn_write(tls_conn_t *c, const char *data, size_t len);
/* Makes tls_conn_feed stop delivering plaintext (the owner is closing). */
void tls_conn_stop(tls_conn_t *c);
/* Adds a close_notify alert to the out buffer. */
void tls_conn_shutdown(tls_conn_t *c);
const char *tls_conn_version(const tls_conn_t *c);
/* After the handshake: it resumed a session from a ticket; the edge protects records. */
int tls_conn_resumed(const tls_conn_t *c);
/* The RFC 9266 tls-exporter channel binding data (32 bytes, TLS 1.3 handshakes only):
 * its length and *data, or 0. Valid once the handshake completed, offloaded or not. */
size_t tls_conn_exporter(const tls_conn_t *c, const uint8_t **data);
/* The RFC 5929 tls-server-end-point channel binding data (the hash of our certificate,
 * any TLS version): its length and *data, or 0 (before the handshake; a certificate
 * signed without a usable hash). */
size_t tls_conn_endpoint(const tls_conn_t *c, const uint8_t **data);
int tls_conn_offloaded(const tls_conn_t *c);
const char *tls_conn_cipher(const tls_conn_t *c);

#endif

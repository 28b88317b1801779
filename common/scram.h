/* SASL mechanisms' message parsing and crypto: SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802,
 * RFC 7677) server side against stored keys, PLAIN (RFC 4616) message parsing, and the
 * credential derivation used by xmppctl. Protocol code only: no sockets, no storage.
 * Any thread may call; a scram_server_t belongs to one connection. Uses wolfCrypt. */
#ifndef XMPP_SCRAM_H
#define XMPP_SCRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { SCRAM_SHA1 = 0, SCRAM_SHA256 = 1 } scram_hash_t;

#define SCRAM_MAX_KEY 32   /* SHA-256 output; SHA-1 uses the first 20 bytes */
#define SCRAM_SALT_LEN 16  /* salt length of newly made credentials */
#define SCRAM_MAX_SALT 64
#define SCRAM_PASSWORD_MAX 1023 /* bytes of a password xmppctl or in-band registration accepts */

/* What is stored for an account, per hash: never the password. */
typedef struct scram_cred {
  unsigned char salt[SCRAM_MAX_SALT];
  size_t salt_len;
  uint32_t iterations;
  unsigned char stored_key[SCRAM_MAX_KEY];
  unsigned char server_key[SCRAM_MAX_KEY];
} scram_cred_t;

/* SASL failure conditions (RFC 6120 §6.5). */
typedef enum {
  SASL_OK = 0,
  SASL_ABORTED,
  SASL_ACCOUNT_DISABLED,
  SASL_CREDENTIALS_EXPIRED,
  SASL_ENCRYPTION_REQUIRED,
  SASL_INCORRECT_ENCODING,
  SASL_INVALID_AUTHZID,
  SASL_INVALID_MECHANISM,
  SASL_MALFORMED_REQUEST,
  SASL_MECHANISM_TOO_WEAK,
  SASL_NOT_AUTHORIZED,
  SASL_TEMPORARY_AUTH_FAILURE,
} sasl_cond_t;

/* Element name of the condition, e.g. "not-authorized". */
const char *sasl_cond_name(sasl_cond_t c);
/* Mechanism name, e.g. "SCRAM-SHA-256". */
const char *scram_mech_name(scram_hash_t h);
size_t scram_hash_len(scram_hash_t h);

/* Derives stored credentials from a password (PBKDF2 + HMAC, RFC 5802 §3).
 * CPU-heavy for large iteration counts: call off the event loop. Returns 0 or XMPP_ERR. */
int scram_cred_derive(scram_hash_t h, const char *password, size_t pwlen,
                      const unsigned char *salt, size_t salt_len, uint32_t iterations,
                      scram_cred_t *out);
/* Same with a fresh random salt of SCRAM_SALT_LEN bytes. */
int scram_cred_make(scram_hash_t h, const char *password, size_t pwlen, uint32_t iterations,
                    scram_cred_t *out);
/* NULL when a new password is acceptable, else why not (static text): non-empty, at most
 * SCRAM_PASSWORD_MAX bytes, valid UTF-8 without control characters (C0, DEL, C1; NUL
 * included). Shared by xmppctl and in-band registration (edge/register.c). */
const char *scram_password_problem(const char *p, size_t len);
/* Checks a plaintext password (SASL PLAIN) against stored credentials in constant time.
 * Returns 0 on match, XMPP_EDENIED otherwise. CPU-heavy (PBKDF2). */
int scram_cred_check_password(scram_hash_t h, const scram_cred_t *cred, const char *password,
                              size_t pwlen);

/* Base64 (RFC 4648, no line breaks). Encode returns a new NUL-terminated string.
 * Decode returns 0 and a new buffer (*out, *outlen), or XMPP_EINVAL on bad input. */
char *b64_encode(const unsigned char *in, size_t len);
int b64_decode(const char *in, size_t len, unsigned char **out, size_t *outlen);

/* PLAIN (RFC 4616): message is [authzid] NUL authcid NUL passwd. On success returns
 * SASL_OK and new strings (authzid may be NULL when empty); otherwise the condition. */
sasl_cond_t sasl_plain_parse(const unsigned char *msg, size_t len, char **authzid, char **authcid,
                             char **passwd);

/* SCRAM server exchange. Sequence:
 *   s = scram_server_new(h)
 *   scram_server_client_first(s, msg) -> SASL_OK and the username (saslname decoded);
 *   look the user up; scram_server_first(s, cred or NULL if unknown, &out)
 *     (with NULL a deterministic fake salt is used so unknown users look like known ones;
 *      the exchange then always fails with not-authorized);
 *   scram_server_client_final(s, msg, &out) -> SASL_OK and the server-final message
 *     ("v=...") to send in <success/>.
 * Messages are the decoded (not base64) SASL payloads. Channel binding (RFC 5802 §6):
 * without scram_server_channel_binding, gs2 flag 'p' is refused (malformed-request), 'n'
 * and 'y' are accepted. */
typedef struct scram_server scram_server_t;
scram_server_t *scram_server_new(scram_hash_t h);
void scram_server_free(scram_server_t *s);
sasl_cond_t scram_server_client_first(scram_server_t *s, const char *msg, size_t len,
                                      const char **username);
sasl_cond_t scram_server_first(scram_server_t *s, const scram_cred_t *cred, char **out,
                               size_t *outlen);
sasl_cond_t scram_server_client_final(scram_server_t *s, const char *msg, size_t len, char **out,
                                      size_t *outlen);
/* Before scram_server_client_first: the channel binding types this channel offers
 * (n of them, at most SCRAM_MAX_CB_TYPES; n 0: -PLUS not offered) with their data, and
 * whether the -PLUS mechanism was chosen (plus: then the client must send "p=NAME" of
 * one of them and its data in c=; else 'n', or 'y' only when n is 0: with -PLUS offered,
 * 'y' is a downgrade, not-authorized). RFC 5802 §6, RFC 5929, RFC 9266. */
#define SCRAM_MAX_CB 64
#define SCRAM_MAX_CB_TYPES 2
typedef struct scram_cb {
  const char *name; /* "tls-exporter", "tls-server-end-point" (static) */
  const unsigned char *data;
  size_t len;
} scram_cb_t;
void scram_server_channel_binding(scram_server_t *s, bool plus, const scram_cb_t *cbs, size_t n);
/* The authzid given in the gs2 header (a=...), or NULL. */
const char *scram_server_authzid(const scram_server_t *s);

/* HT-SHA-256-* (XEP-0484 FAST, draft-schmaus-kitten-sasl-ht): tokens, and proofs
 * HMAC-SHA-256(token, "Initiator" || cb) / (token, "Responder" || cb), cb the channel
 * binding data (empty for -NONE). The key is SHA-256 of the token's text, which is what
 * HMAC uses for a key longer than its block (RFC 2104 §2): the server keeps that key,
 * never the token. */
#define HT_TOKEN_BYTES 66 /* random bytes of a token: 88 characters of base64 (> 64) */
#define HT_KEY_LEN 32
/* A new token (base64 text, caller xfree()s) and its key. 0 or XMPP_ERR. */
int ht_token_make(char **token, unsigned char key[HT_KEY_LEN]);
/* The key of a token's text (only correct for tokens longer than 64 bytes). */
int ht_token_key(const char *token, unsigned char key[HT_KEY_LEN]);
/* Initial response: authcid NUL proof (32 bytes). SASL_OK and a new authcid, or
 * SASL_MALFORMED_REQUEST. */
sasl_cond_t ht_parse(const unsigned char *msg, size_t len, char **authcid, unsigned char proof[HT_KEY_LEN]);
/* out = HMAC-SHA-256(key, "Initiator" or "Responder" || cb). 0 or XMPP_ERR. */
int ht_hmac(const unsigned char key[HT_KEY_LEN], int initiator, const unsigned char *cb, size_t cblen,
            unsigned char out[HT_KEY_LEN]);
/* 0 when proof is the initiator's HMAC under key (constant time), else XMPP_EDENIED. */
int ht_check(const unsigned char key[HT_KEY_LEN], const unsigned char *cb, size_t cblen,
             const unsigned char proof[HT_KEY_LEN]);

#endif

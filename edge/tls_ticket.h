/* TLS 1.3 session tickets (RFC 8446 §4.6.1): the keys that seal them and the sealing.
 *
 * Tickets are stateless: wolfSSL puts the resumption secret and the session's
 * parameters in a ticket, and we seal it with ChaCha20-Poly1305 under a key of ours,
 * so any edge holding the key can resume the session and none has to remember it.
 * Two keys at most: the current one seals and opens, the previous one only opens.
 * They come from a file every edge of a cluster reads (tls.ticket_key_file, loaded
 * again on SIGHUP), or, without one, are drawn at random at start and rotated every
 * ticket lifetime (resumption then works only with the process that issued the ticket).
 *
 * A ticket as wolfSSL lays it out: key_name[16] iv[16] len[2] sealed[len] mac[32].
 * key_name is our key's name; iv random bytes, the first 12 the nonce. What is sealed
 * is wolfSSL's ticket (TLS_TICKET_PLAIN bytes) followed by the issue time (8 bytes,
 * seconds since the epoch, big-endian), so the time is neither visible nor changeable:
 * the ticket's ciphertext goes to sealed, the time's to mac[16..24]; mac[0..16] is the
 * Poly1305 tag, mac[24..32] zero. The additional data is key_name, iv and len. A ticket
 * older than tls.ticket_lifetime, or from a key we do not hold, is refused: the client
 * gets a full handshake. 0-RTT (early data) is not compiled into Debian's wolfSSL and is
 * never offered, so a replayed ClientHello buys nothing without the resumption secret.
 *
 * Thread safety: one tls_tickets_t serves every edge thread; the keys are copied out
 * under a mutex, the crypto runs outside it. */
#ifndef XMPP_TLS_TICKET_H
#define XMPP_TLS_TICKET_H

#include <stddef.h>
#include <stdint.h>

typedef struct tls_tickets tls_tickets_t;

#define TLS_TICKET_NAME 16
#define TLS_TICKET_IV 16
#define TLS_TICKET_MAC 32
#define TLS_TICKET_STAMP 8   /* sealed issue time */
/* wolfSSL's own ticket (its InternalTicket) in Debian's 5.5.4: every ticket we seal and
 * the only length we open (see tls_tickets_open) */
#define TLS_TICKET_PLAIN 108
#define TLS_TICKET_KEY_HEX 96 /* one key line: 16-byte name and 32-byte key, in hex */

/* Keys from key_file (NULL or "" = generated), tickets valid for lifetime seconds
 * (1..604800, RFC 8446 §4.6.1). NULL and *err (caller frees) on a bad file. */
tls_tickets_t *tls_tickets_new(const char *key_file, int lifetime, char **err);
void tls_tickets_free(tls_tickets_t *k);
/* Reads the key file again; on failure the keys stay and *err says why. Without a key
 * file there is nothing to read: 0. Any thread. */
int tls_tickets_reload(tls_tickets_t *k, char **err);
int tls_tickets_lifetime(const tls_tickets_t *k);

/* Results, the values of wolfSSL's TicketEncRet. */
enum { TLS_TICKET_OK = 0, TLS_TICKET_REJECT = 1, TLS_TICKET_CREATE = 2, TLS_TICKET_FATAL = -1 };

/* Seals data[0..len) in place at time now (seconds since the epoch) and fills name, iv
 * and mac. len must be TLS_TICKET_PLAIN. TLS_TICKET_OK or TLS_TICKET_FATAL. */
int tls_tickets_seal(tls_tickets_t *k, int64_t now, uint8_t name[TLS_TICKET_NAME], uint8_t iv[TLS_TICKET_IV],
                     uint8_t mac[TLS_TICKET_MAC], uint8_t *data, size_t len);
/* Opens a sealed ticket in place at time now. TLS_TICKET_OK
 * (current key), TLS_TICKET_CREATE (previous key: wolfSSL issues a fresh ticket) or
 * TLS_TICKET_REJECT (unknown key, forged or corrupt, expired, or from the future beyond
 * clock skew; the bytes are wiped). */
int tls_tickets_open(tls_tickets_t *k, int64_t now, const uint8_t name[TLS_TICKET_NAME],
                     const uint8_t iv[TLS_TICKET_IV], const uint8_t mac[TLS_TICKET_MAC], uint8_t *data, size_t len);

/* Tests: the generated keys' rotation clock starts at now instead of the wall clock. */
tls_tickets_t *tls_tickets_new_at(const char *key_file, int lifetime, int64_t now, char **err);

#endif

/* Test-only entry points of edge/tls.c: the TLS 1.3 key schedule steps of the edge's
 * record layer, so unit tests can hold them to published vectors. Include only from
 * tests. */
#ifndef XMPP_TLS_TESTING_H
#define XMPP_TLS_TESTING_H

#include <stddef.h>
#include <stdint.h>

/* RFC 8446 §7.3: key = HKDF-Expand-Label(secret, "key", "", key_len), iv likewise with
 * "iv" and 12. sec_len 32 (SHA-256) or 48 (SHA-384); key_len 16 or 32. 0, XMPP_EINVAL or
 * XMPP_ERR. */
int tls_traffic_keys(const uint8_t *secret, size_t sec_len, uint8_t *key, size_t key_len, uint8_t iv[12]);
/* RFC 8446 §7.2: replaces secret with HKDF-Expand-Label(secret, "traffic upd", "",
 * sec_len). 0, XMPP_EINVAL or XMPP_ERR. */
int tls_traffic_next(uint8_t *secret, size_t sec_len);

#endif

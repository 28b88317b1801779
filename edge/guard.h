/* Edge-wide admission limits shared by every I/O thread: simultaneous connections per
 * source address, failed authentications per source address and per account in a
 * sliding minute, registration attempts per source address in a sliding hour. Keys reach a keyed hash table (attacker-chosen addresses and names).
 * One mutex: these run once per connect, close and authentication, never per stanza. */
#ifndef XMPP_EDGE_GUARD_H
#define XMPP_EDGE_GUARD_H

#include <stdint.h>

typedef struct guard guard_t;

typedef struct guard_conf {
  int max_conns_per_ip; /* 0 = no cap */
  int auth_fail_ip;     /* per minute */
  int auth_fail_account;
  int reg_per_ip_hour;  /* registration attempts per address in a sliding hour */
} guard_conf_t;

guard_t *guard_new(const guard_conf_t *k);
void guard_free(guard_t *g);
/* ip: 16 bytes (IPv4 as v4-mapped IPv6). 0, or XMPP_ELIMIT when the address is at its cap. */
int guard_conn_open(guard_t *g, const uint8_t ip[16]);
void guard_conn_close(guard_t *g, const uint8_t ip[16]);
/* 0 when an authentication attempt may proceed, XMPP_ELIMIT when the address or the
 * account (bare JID, may be NULL) failed too often in the last minute. */
int guard_auth_allowed(guard_t *g, const uint8_t ip[16], const char *account, uint64_t now_ms);
void guard_auth_failed(guard_t *g, const uint8_t ip[16], const char *account, uint64_t now_ms);
/* In-band registration (XEP-0077): 0 when this address may make one more attempt in the
 * sliding hour (the attempt is counted), XMPP_ELIMIT when it is at its budget (nothing
 * counted). Called before any password hashing. */
int guard_register_take(guard_t *g, const uint8_t ip[16], uint64_t now_ms);
/* Forgets entries with no connection, no failure in the last two minutes and no
 * registration attempt in the last two hours. */
void guard_prune(guard_t *g, uint64_t now_ms);
/* Number of entries (for tests and stats). */
unsigned guard_size(guard_t *g);

#endif

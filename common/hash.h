/* Keyed hashing (SipHash-2-4).
 *
 * Every table that attacker-chosen strings reach uses hash_keyed(), whose key is random
 * per process (hash_init), so collisions cannot be precomputed. Shard placement must
 * agree across processes and restarts, so it uses hash_shard() with a fixed key. */
#ifndef XMPP_HASH_H
#define XMPP_HASH_H

#include <stddef.h>
#include <stdint.h>

/* Seeds the per-process key from the OS RNG. Call once at start (idempotent). */
void hash_init(void);
uint64_t hash_siphash(const uint8_t key[16], const void *data, size_t len);
uint64_t hash_keyed(const void *data, size_t len);
/* Shard of a normalised bare JID among nshards (stable across processes). */
uint32_t hash_shard(const char *bare, size_t len, uint32_t nshards);

#endif

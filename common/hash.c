#include "common/hash.h"

#include <pthread.h>
#include <string.h>
#include <sys/random.h>

static uint8_t g_key[16];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void init_key(void) {
  if (getrandom(g_key, sizeof g_key, 0) != (ssize_t)sizeof g_key) {
    /* getrandom on Linux >= 3.17 does not fail for 16 bytes; keep a non-zero fallback. */
    uint64_t t = (uint64_t)(uintptr_t)&g_key ^ 0x9e3779b97f4a7c15ull;
    memcpy(g_key, &t, 8);
  }
}

void hash_init(void) { pthread_once(&g_once, init_key); }

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
  do {                                                                                             \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                      \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                         \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                         \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                      \
  } while (0)

static uint64_t load64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v; /* little-endian hosts only (x86_64, aarch64) */
}

uint64_t hash_siphash(const uint8_t key[16], const void *data, size_t len) {
  const uint8_t *in = data;
  uint64_t k0 = load64(key), k1 = load64(key + 8);
  uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
  uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
  const uint8_t *end = in + len - (len % 8);
  for (; in != end; in += 8) {
    uint64_t m = load64(in);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  uint64_t b = ((uint64_t)len) << 56;
  switch (len & 7) {
  case 7: b |= ((uint64_t)in[6]) << 48; /* fall through */
  case 6: b |= ((uint64_t)in[5]) << 40; /* fall through */
  case 5: b |= ((uint64_t)in[4]) << 32; /* fall through */
  case 4: b |= ((uint64_t)in[3]) << 24; /* fall through */
  case 3: b |= ((uint64_t)in[2]) << 16; /* fall through */
  case 2: b |= ((uint64_t)in[1]) << 8;  /* fall through */
  case 1: b |= ((uint64_t)in[0]); break;
  case 0: break;
  }
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t hash_keyed(const void *data, size_t len) {
  hash_init();
  return hash_siphash(g_key, data, len);
}

uint32_t hash_shard(const char *bare, size_t len, uint32_t nshards) {
  static const uint8_t shard_key[16] = "xmppd-shard-v1!";
  return (uint32_t)(hash_siphash(shard_key, bare, len) % nshards);
}

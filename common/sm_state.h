/* The wire format of a XEP-0198 session's state between nodes (docs/cluster.md, "Stream
 * resumption across nodes"): written by the edge that held a detached session
 * (edge/sm.c, state_encode) or, after that edge's death, by the account's router
 * (router/sm_orphan.c), and read by the edge the client resumes on. Integers are
 * little-endian u32s; a string is its u32 length, then its bytes. One definition, so the
 * two writers cannot drift apart. */
#ifndef XMPP_SM_STATE_H
#define XMPP_SM_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define SM_STATE_VERSION 2

static inline void sm_state_put_u32(buf_t *b, uint32_t v) {
  uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  buf_append(b, x, 4);
}

static inline void sm_state_put_str(buf_t *b, const void *p, size_t n) {
  sm_state_put_u32(b, (uint32_t)n);
  if (n) buf_append(b, p, n);
}

static inline uint32_t sm_state_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#endif

/* Growable byte buffer. One owner; not thread-safe. */
#ifndef XMPP_BUF_H
#define XMPP_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct buf {
  uint8_t *data;
  size_t len;
  size_t cap;
} buf_t;

void buf_init(buf_t *b);
void buf_free(buf_t *b);
void buf_reserve(buf_t *b, size_t extra);
void buf_append(buf_t *b, const void *p, size_t n);
void buf_puts(buf_t *b, const char *s);
void buf_putc(buf_t *b, char c);
void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Removes the first n bytes. */
void buf_consume(buf_t *b, size_t n);
/* Detaches the storage (caller frees with xfree); the buffer becomes empty. */
uint8_t *buf_steal(buf_t *b, size_t *len);
void buf_put_varint(buf_t *b, uint64_t v);
/* Reads a varint from [*p, end); advances *p. 0 or XMPP_EINVAL. */
int buf_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v);

#endif

/* Minimal incremental scanner for the bench's side of an XMPP stream: finds the stream
 * header, each top-level stanza (complete element at depth 1) and the stream close, and
 * extracts the few things the bench needs (element name, one attribute of the top tag,
 * an element's text). It trusts the server to send well-formed XML (no DTD, no CDATA with
 * '<' or '>' unescaped); it does not validate or unescape. O(bytes), no allocation. */
#ifndef XMPP_BENCH_XSCAN_H
#define XMPP_BENCH_XSCAN_H

#include <stddef.h>

typedef enum { XS_STREAM_OPEN = 1, XS_STANZA, XS_STREAM_CLOSE } xs_event_t;

typedef struct xscan {
  int depth;    /* 0 outside the stream, 1 in the stream, >= 2 inside a stanza */
  size_t pos;   /* next byte to scan */
  size_t start; /* offset of the current stanza's '<' (depth >= 2) */
} xscan_t;

void xscan_init(xscan_t *s);
/* Scans data[0, len) from s->pos. Returns 1 with an event (its bytes are data[*off, *off + *n)),
 * 0 when more data is needed. */
int xscan_next(xscan_t *s, const char *data, size_t len, xs_event_t *ev, size_t *off, size_t *n);
/* How many leading bytes the caller may now drop; rebases the scanner by that much. */
size_t xscan_release(xscan_t *s);

/* Element name of the first tag in p[0, n) (e.g. "message", "stream:features"). */
size_t xs_name(const char *p, size_t n, const char **name);
/* Value (raw, not unescaped) of attribute attr of the first tag. 1 found, 0 not. */
int xs_attr(const char *p, size_t n, const char *attr, const char **v, size_t *vlen);
/* Text of the first element whose tag starts with open (e.g. "<body"): 1 found, 0 not. */
int xs_text(const char *p, size_t n, const char *open, const char **t, size_t *tlen);
/* Name of the first child element of the top element (e.g. a stream error condition). */
size_t xs_first_child(const char *p, size_t n, const char **name);
/* memmem for a NUL-terminated needle. */
const char *xs_find(const char *p, size_t n, const char *needle);

#endif

/* libFuzzer target: the XML stream reader (common/xml_stream.c).
 *
 * Input: byte 0 chooses how the rest is split into xml_stream_feed() calls (all at once,
 * or chunks of 1..64 bytes), as a socket would deliver it. A <starttls/> or <auth/>
 * stanza asks for a stream restart, as the edge does (RFC 6120 §5.4.3.3, §6.4.6).
 *
 * Invariants, checked on every stanza delivered (abort = finding):
 *  - depth and attribute count are within the configured limits: at most MAX_ATTRS
 *    attributes and prefixed namespace declarations on an element, and on the stanza's
 *    top element besides at most MAX_ATTRS declarations of prefixes the stream header
 *    declared (xml_stream.c declare_prefix), so 2 x MAX_ATTRS there;
 *  - the stanza serialised by xnode_serialize() is well-formed, namespace-well-formed
 *    XML that the reader, fed it inside a fresh stream, delivers as exactly one stanza
 *    with the same tree (names, namespaces, attributes, text): what the server forwards
 *    is what it understood, so nothing can be smuggled past it (no extra stanza, no
 *    changed attribute, no broken stream at the recipient). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/stanza.h"
#include "common/xml_stream.h"

#define MAX_DEPTH 12
#define MAX_ATTRS 12
#define MAX_STANZA 16384

typedef struct {
  xml_stream_t *xs;
  int errors;
  int stanzas;
  const xnode_t *want; /* stanza being re-parsed */
  int matched;
} state_t;

static const xml_stream_limits_t limits = {MAX_STANZA, MAX_DEPTH, MAX_ATTRS};
/* re-parse: the serialised form may be larger (escaping) and may add a default namespace
 * declaration to an element (one counted attribute more); same depth */
static const xml_stream_limits_t big_limits = {1u << 24, MAX_DEPTH, 2 * MAX_ATTRS + 1};

static void die(const char *what, const xnode_t *n, const buf_t *xml) {
  fprintf(stderr, "INVARIANT: %s\n", what);
  if (xml) fprintf(stderr, "serialised: %.*s\n", (int)xml->len, (const char *)xml->data);
  (void)n;
  abort();
}

/* Child list with empty text nodes dropped and adjacent text merged, compared. */
static const xnode_t *next_significant(const xnode_t *c) {
  while (c && !c->name && c->text_len == 0) c = c->next;
  return c;
}

static int text_run_eq(const xnode_t **pa, const xnode_t **pb) {
  /* concatenate consecutive text nodes on each side and compare */
  buf_t x, y;
  buf_init(&x);
  buf_init(&y);
  const xnode_t *a = *pa, *b = *pb;
  for (; a && !a->name; a = a->next) buf_append(&x, a->text, a->text_len);
  for (; b && !b->name; b = b->next) buf_append(&y, b->text, b->text_len);
  int eq = x.len == y.len && (x.len == 0 || memcmp(x.data, y.data, x.len) == 0);
  buf_free(&x);
  buf_free(&y);
  *pa = a;
  *pb = b;
  return eq;
}

static int tree_eq(const xnode_t *a, const xnode_t *b) {
  if (strcmp(a->name, b->name) != 0 || strcmp(a->ns, b->ns) != 0) return 0;
  if (a->nattrs != b->nattrs) return 0;
  for (uint32_t i = 0; i < a->nattrs; i++) {
    const char *v = xnode_attr(b, a->attrs[2 * i]);
    if (!v || strcmp(v, a->attrs[2 * i + 1]) != 0) return 0;
  }
  const xnode_t *x = next_significant(a->children), *y = next_significant(b->children);
  while (x || y) {
    if (!x || !y) return 0;
    if (!x->name || !y->name) {
      if (x->name || y->name) return 0;
      if (!text_run_eq(&x, &y)) return 0;
    } else {
      if (!tree_eq(x, y)) return 0;
      x = x->next;
      y = y->next;
    }
    x = next_significant(x);
    y = next_significant(y);
  }
  return 1;
}

static void check_shape(const xnode_t *n, unsigned depth) {
  if (depth > MAX_DEPTH) die("stanza deeper than max_depth", n, NULL);
  if (n->nattrs > (depth == 1 ? 2 * MAX_ATTRS : MAX_ATTRS)) die("more attributes than max_attrs", n, NULL);
  for (const xnode_t *c = n->children; c; c = c->next)
    if (c->name) check_shape(c, depth + 1);
}

/* --- the re-parse --- */
static void re_stanza(void *ud, xnode_t *n) {
  state_t *st = ud;
  st->stanzas++;
  if (st->stanzas == 1 && tree_eq(st->want, n) && tree_eq(n, st->want)) st->matched = 1;
}
static void re_error(void *ud, xml_stream_err_t e, const char *detail) {
  state_t *st = ud;
  st->errors++;
  fprintf(stderr, "re-parse error %d: %s\n", (int)e, detail ? detail : "");
}

static const char OPEN[] =
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    "to='example.com' version='1.0'>";
static const char CLOSE[] = "</stream:stream>";

static void check_roundtrip(const xnode_t *n) {
  buf_t xml;
  buf_init(&xml);
  xnode_serialize(n, NS_CLIENT, &xml);
  static const xml_stream_cbs_t cbs = {NULL, re_stanza, NULL, re_error};
  state_t st = {0};
  st.want = n;
  xml_stream_t *xs = xml_stream_new(&big_limits, &cbs, &st);
  int rc = xml_stream_feed(xs, OPEN, sizeof OPEN - 1);
  if (rc == 0) rc = xml_stream_feed(xs, (const char *)xml.data, xml.len);
  if (rc == 0) rc = xml_stream_feed(xs, CLOSE, sizeof CLOSE - 1);
  xml_stream_free(xs);
  if (rc != 0 || st.errors) die("serialised stanza does not re-parse", n, &xml);
  if (st.stanzas != 1) die("serialised stanza re-parses as another number of stanzas", n, &xml);
  if (!st.matched) die("serialised stanza re-parses to a different tree", n, &xml);
  buf_free(&xml);
}

/* --- the stream under test --- */
static void on_stream_start(void *ud, const xnode_t *header) {
  if (!header->name || !header->ns) abort();
}
static void on_stanza(void *ud, xnode_t *n) {
  state_t *st = ud;
  st->stanzas++;
  if (!n->name) die("stanza is a text node", n, NULL);
  check_shape(n, 1);
  check_roundtrip(n);
  if (!strcmp(n->name, "starttls") || !strcmp(n->name, "auth")) xml_stream_restart(st->xs);
}
static void on_stream_end(void *ud) {}
static void on_error(void *ud, xml_stream_err_t e, const char *detail) {
  state_t *st = ud;
  if (e < XS_NOT_WELL_FORMED || e > XS_BAD_FORMAT) abort();
  st->errors++;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  xml_stream_global_init();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  unsigned mode = data[0];
  data++, size--;
  static const xml_stream_cbs_t cbs = {on_stream_start, on_stanza, on_stream_end, on_error};
  state_t st = {0};
  st.xs = xml_stream_new(&limits, &cbs, &st);
  size_t chunk = (mode & 0x80) ? size : (size_t)(mode & 0x3f) + 1;
  int rc = 0;
  for (size_t off = 0; off < size && rc == 0;) {
    size_t n = size - off < chunk ? size - off : chunk;
    rc = xml_stream_feed(st.xs, (const char *)data + off, n);
    off += n;
  }
  /* once failed, the stream stays failed */
  if (st.errors && xml_stream_feed(st.xs, "<a/>", 4) == 0) abort();
  xml_stream_free(st.xs);
  return 0;
}

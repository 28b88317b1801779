#include "common/stanza.h"

#include <string.h>

#include "common/err.h"

xnode_t *xnode_new(arena_t *a, const char *name, const char *ns) {
  xnode_t *n = arena_alloc(a, sizeof *n);
  memset(n, 0, sizeof *n);
  n->name = arena_strdup(a, name);
  n->ns = arena_strdup(a, ns ? ns : "");
  return n;
}

xnode_t *xnode_new_text(arena_t *a, const char *text, size_t len) {
  xnode_t *n = arena_alloc(a, sizeof *n);
  memset(n, 0, sizeof *n);
  n->text = arena_strndup(a, text, len);
  n->text_len = len;
  return n;
}

void xnode_append(xnode_t *parent, xnode_t *child) {
  child->parent = parent;
  child->next = NULL;
  if (parent->last) parent->last->next = child;
  else parent->children = child;
  parent->last = child;
}

xnode_t *xnode_add(arena_t *a, xnode_t *parent, const char *name, const char *ns) {
  xnode_t *c = xnode_new(a, name, ns ? ns : parent->ns);
  xnode_append(parent, c);
  return c;
}

void xnode_add_text(arena_t *a, xnode_t *parent, const char *text, size_t len) {
  xnode_append(parent, xnode_new_text(a, text, len));
}

const char *xnode_attr(const xnode_t *n, const char *name) {
  for (uint32_t i = 0; i < n->nattrs; i++)
    if (strcmp(n->attrs[2 * i], name) == 0) return n->attrs[2 * i + 1];
  return NULL;
}

void xnode_set_attr(arena_t *a, xnode_t *n, const char *name, const char *value) {
  for (uint32_t i = 0; i < n->nattrs; i++) {
    if (strcmp(n->attrs[2 * i], name) == 0) {
      if (value) {
        n->attrs[2 * i + 1] = arena_strdup(a, value);
      } else {
        memmove(&n->attrs[2 * i], &n->attrs[2 * i + 2], (n->nattrs - i - 1) * 2 * sizeof(char *));
        n->nattrs--;
      }
      return;
    }
  }
  if (value) xnode_append_attr(a, n, name, value);
}

void xnode_append_attr(arena_t *a, xnode_t *n, const char *name, const char *value) {
  if (n->nattrs == n->attr_cap) { /* geometric growth: appending is amortised O(1) */
    uint32_t cap = n->attr_cap ? n->attr_cap * 2 : 4;
    const char **na = arena_alloc(a, cap * 2 * sizeof(char *));
    if (n->nattrs) memcpy(na, n->attrs, n->nattrs * 2 * sizeof(char *));
    n->attrs = na;
    n->attr_cap = cap;
  }
  n->attrs[2 * n->nattrs] = arena_strdup(a, name);
  n->attrs[2 * n->nattrs + 1] = arena_strdup(a, value);
  n->nattrs++;
}

xnode_t *xnode_first_elem(const xnode_t *n) {
  for (xnode_t *c = n->children; c; c = c->next)
    if (c->name) return c;
  return NULL;
}

xnode_t *xnode_next_elem(const xnode_t *n) {
  for (xnode_t *c = n->next; c; c = c->next)
    if (c->name) return c;
  return NULL;
}

xnode_t *xnode_child(const xnode_t *n, const char *name, const char *ns) {
  for (xnode_t *c = n->children; c; c = c->next)
    if (c->name && (!name || strcmp(c->name, name) == 0) && (!ns || strcmp(c->ns, ns) == 0)) return c;
  return NULL;
}

size_t xnode_count_elems(const xnode_t *n) {
  size_t k = 0;
  for (xnode_t *c = n->children; c; c = c->next) k += c->name != NULL;
  return k;
}

void xnode_remove(xnode_t *c) {
  xnode_t *p = c->parent;
  if (!p) return;
  xnode_t *prev = NULL;
  for (xnode_t *x = p->children; x && x != c; x = x->next) prev = x;
  if (prev) prev->next = c->next;
  else if (p->children == c) p->children = c->next;
  else return; /* not a child of its parent: nothing to do */
  if (p->last == c) p->last = prev;
  c->parent = c->next = NULL;
}

char *xnode_text(arena_t *a, const xnode_t *n) {
  size_t len = 0;
  for (xnode_t *c = n->children; c; c = c->next)
    if (!c->name) len += c->text_len;
  char *s = arena_alloc(a, len + 1), *p = s;
  for (xnode_t *c = n->children; c; c = c->next)
    if (!c->name) memcpy(p, c->text, c->text_len), p += c->text_len;
  *p = '\0';
  return s;
}

xnode_t *xnode_copy(arena_t *a, const xnode_t *n) {
  if (!n->name) return xnode_new_text(a, n->text, n->text_len);
  xnode_t *c = xnode_new(a, n->name, n->ns);
  if (n->nattrs) { /* the source has no duplicate names: copied in one pass */
    c->attrs = arena_alloc(a, n->nattrs * 2 * sizeof(char *));
    for (uint32_t i = 0; i < 2 * n->nattrs; i++) c->attrs[i] = arena_strdup(a, n->attrs[i]);
    c->nattrs = c->attr_cap = n->nattrs;
  }
  for (xnode_t *k = n->children; k; k = k->next) xnode_append(c, xnode_copy(a, k));
  return c;
}

/* What character c is written as (NULL: itself). */
static const char *escape_of(char c, int in_attr) {
  switch (c) {
  case '&': return "&amp;";
  case '<': return "&lt;";
  case '>': return "&gt;";
  case '"': return in_attr ? "&quot;" : NULL;
  case '\'': return in_attr ? "&apos;" : NULL;
  case '\r': return "&#13;"; /* keep CR through re-parsing (XML 1.0 §2.11) */
  /* attribute-value normalisation (XML 1.0 §3.3.3) would turn these into spaces */
  case '\t': return in_attr ? "&#9;" : NULL;
  case '\n': return in_attr ? "&#10;" : NULL;
  }
  return NULL;
}

size_t xml_escape_len(const char *s, size_t len, int in_attr) {
  size_t n = len;
  for (size_t i = 0; i < len; i++) {
    const char *rep = escape_of(s[i], in_attr);
    if (rep) n += strlen(rep) - 1;
  }
  return n;
}

void xml_escape(buf_t *out, const char *s, size_t len, int in_attr) {
  size_t start = 0;
  for (size_t i = 0; i < len; i++) {
    const char *rep = escape_of(s[i], in_attr);
    if (rep) {
      buf_append(out, s + start, i - start);
      buf_puts(out, rep);
      start = i + 1;
    }
  }
  buf_append(out, s + start, len - start);
}

/* The namespace the "xml" prefix is bound to. It must not be declared as the default
 * namespace (Namespaces in XML 1.0 §3), so an element in it (<xml:foo/>, which the reader
 * accepts) is written with the prefix and leaves the default namespace as it was. Found
 * by fuzz_xml_stream (tests/fuzz/regress/xml_stream/element-in-xml-namespace): it was
 * written as <foo xmlns='http://www.w3.org/XML/1998/namespace'/>, which no parser takes. */

void xnode_serialize(const xnode_t *n, const char *parent_ns, buf_t *out) {
  if (!n->name) {
    xml_escape(out, n->text, n->text_len, 0);
    return;
  }
  const char *scope = parent_ns ? parent_ns : "";
  int xml_ns = strcmp(n->ns, NS_XML) == 0;
  buf_putc(out, '<');
  if (xml_ns) buf_puts(out, "xml:");
  buf_puts(out, n->name);
  if (!xml_ns && strcmp(n->ns, scope) != 0) {
    buf_puts(out, " xmlns='");
    xml_escape(out, n->ns, strlen(n->ns), 1);
    buf_putc(out, '\'');
  }
  for (uint32_t i = 0; i < n->nattrs; i++) {
    buf_putc(out, ' ');
    buf_puts(out, n->attrs[2 * i]);
    buf_puts(out, "='");
    xml_escape(out, n->attrs[2 * i + 1], strlen(n->attrs[2 * i + 1]), 1);
    buf_putc(out, '\'');
  }
  if (!n->children) {
    buf_puts(out, "/>");
    return;
  }
  buf_putc(out, '>');
  for (xnode_t *c = n->children; c; c = c->next) xnode_serialize(c, xml_ns ? scope : n->ns, out);
  buf_puts(out, "</");
  if (xml_ns) buf_puts(out, "xml:");
  buf_puts(out, n->name);
  buf_putc(out, '>');
}

/* Binary form: element = 'E' str(name) str(ns) varint(nattrs) {str str}* varint(nkids) kids;
 * text = 'T' str(text); str = varint(len) bytes. */
static void put_str(buf_t *b, const char *s, size_t len) {
  buf_put_varint(b, len);
  buf_append(b, s, len);
}

void xnode_encode(const xnode_t *n, buf_t *out) {
  if (!n->name) {
    buf_putc(out, 'T');
    put_str(out, n->text, n->text_len);
    return;
  }
  buf_putc(out, 'E');
  put_str(out, n->name, strlen(n->name));
  put_str(out, n->ns, strlen(n->ns));
  buf_put_varint(out, n->nattrs);
  for (uint32_t i = 0; i < n->nattrs; i++) {
    put_str(out, n->attrs[2 * i], strlen(n->attrs[2 * i]));
    put_str(out, n->attrs[2 * i + 1], strlen(n->attrs[2 * i + 1]));
  }
  size_t k = 0;
  for (xnode_t *c = n->children; c; c = c->next) k++;
  buf_put_varint(out, k);
  for (xnode_t *c = n->children; c; c = c->next) xnode_encode(c, out);
}

static int get_str(arena_t *a, const uint8_t **p, const uint8_t *end, const char **s, size_t *len) {
  uint64_t l;
  if (buf_get_varint(p, end, &l) || l > (uint64_t)(end - *p)) return XMPP_EINVAL;
  if (memchr(*p, '\0', l)) return XMPP_EINVAL;
  *s = arena_strndup(a, (const char *)*p, l);
  *len = l;
  *p += l;
  return 0;
}

static int peek_str(const uint8_t **p, const uint8_t *end, const char **s, size_t *len);

int xnode_encoded_head(const uint8_t *p, size_t len, const char *attr, xnode_head_t *h) {
  const uint8_t *end = p + len;
  memset(h, 0, sizeof *h);
  const char *ns;
  size_t nsl;
  uint64_t na;
  if (len < 1 || *p++ != 'E' || peek_str(&p, end, &h->name, &h->name_len) || peek_str(&p, end, &ns, &nsl) ||
      buf_get_varint(&p, end, &na))
    return XMPP_EINVAL;
  for (uint64_t i = 0; i < na; i++) {
    const char *k, *v;
    size_t kl, vl;
    if (peek_str(&p, end, &k, &kl) || peek_str(&p, end, &v, &vl)) return XMPP_EINVAL;
    if (attr && kl == strlen(attr) && !memcmp(k, attr, kl)) {
      h->attr = v;
      h->attr_len = vl;
    }
  }
  return 0;
}

static int decode_node(arena_t *a, const uint8_t **p, const uint8_t *end, unsigned depth, xnode_t **out) {
  if (depth == 0 || *p >= end) return XMPP_EINVAL;
  uint8_t tag = *(*p)++;
  const char *s;
  size_t len;
  xnode_t *n = arena_alloc(a, sizeof *n);
  memset(n, 0, sizeof *n);
  if (tag == 'T') {
    if (get_str(a, p, end, &s, &len)) return XMPP_EINVAL;
    n->text = s;
    n->text_len = len;
    *out = n;
    return 0;
  }
  if (tag != 'E') return XMPP_EINVAL;
  if (get_str(a, p, end, &n->name, &len) || len == 0) return XMPP_EINVAL;
  if (get_str(a, p, end, &n->ns, &len)) return XMPP_EINVAL;
  uint64_t na, nk;
  /* each attribute takes at least 2 bytes, each child at least 2: bound counts by input */
  if (buf_get_varint(p, end, &na) || na > (uint64_t)(end - *p) / 2) return XMPP_EINVAL;
  if (na) {
    n->attrs = arena_alloc(a, na * 2 * sizeof(char *));
    n->attr_cap = n->nattrs = (uint32_t)na;
    for (uint64_t i = 0; i < na; i++) {
      if (get_str(a, p, end, &n->attrs[2 * i], &len) || len == 0) return XMPP_EINVAL;
      if (get_str(a, p, end, &n->attrs[2 * i + 1], &len)) return XMPP_EINVAL;
    }
  }
  if (buf_get_varint(p, end, &nk) || nk > (uint64_t)(end - *p) / 2) return XMPP_EINVAL;
  for (uint64_t i = 0; i < nk; i++) {
    xnode_t *c;
    if (decode_node(a, p, end, depth - 1, &c)) return XMPP_EINVAL;
    xnode_append(n, c);
  }
  *out = n;
  return 0;
}

int xnode_decode(arena_t *a, const uint8_t *p, size_t len, unsigned max_depth, xnode_t **out) {
  const uint8_t *end = p + len;
  xnode_t *n;
  if (decode_node(a, &p, end, max_depth, &n) || p != end || !n->name) return XMPP_EINVAL;
  *out = n;
  return 0;
}

/* Straight from the binary form to XML, without building a tree: the edge's delivery
 * path. Same validation as decode_node. */
static int peek_str(const uint8_t **p, const uint8_t *end, const char **s, size_t *len) {
  uint64_t l;
  if (buf_get_varint(p, end, &l) || l > (uint64_t)(end - *p)) return XMPP_EINVAL;
  if (memchr(*p, '\0', l)) return XMPP_EINVAL;
  *s = (const char *)*p;
  *len = l;
  *p += l;
  return 0;
}

static void put_attr(buf_t *out, const char *name, size_t nlen, const char *v, size_t vlen) {
  buf_putc(out, ' ');
  buf_append(out, name, nlen);
  buf_puts(out, "='");
  xml_escape(out, v, vlen, 1);
  buf_putc(out, '\'');
}

static int is_attr(const char *name, size_t nlen, const char *want) {
  return nlen == strlen(want) && memcmp(name, want, nlen) == 0;
}

static int ser_encoded(const uint8_t **p, const uint8_t *end, unsigned depth, const char *pns, size_t pnslen,
                       const xnode_addr_t *addr, buf_t *out) {
  if (depth == 0 || *p >= end) return XMPP_EINVAL;
  uint8_t tag = *(*p)++;
  const char *name, *ns;
  size_t nlen, nslen;
  if (tag == 'T') {
    if (peek_str(p, end, &name, &nlen)) return XMPP_EINVAL;
    xml_escape(out, name, nlen, 0);
    return 0;
  }
  if (tag != 'E') return XMPP_EINVAL;
  if (peek_str(p, end, &name, &nlen) || nlen == 0) return XMPP_EINVAL;
  if (peek_str(p, end, &ns, &nslen)) return XMPP_EINVAL;
  /* as xnode_serialize: the xml namespace is never a default namespace, it keeps its
   * prefix (Namespaces in XML §3), and its children stay in the parent's scope */
  int xml_ns = nslen == strlen(NS_XML) && memcmp(ns, NS_XML, nslen) == 0;
  buf_putc(out, '<');
  if (xml_ns) buf_puts(out, "xml:");
  buf_append(out, name, nlen);
  if (!xml_ns && (nslen != pnslen || memcmp(ns, pns, nslen) != 0)) {
    buf_puts(out, " xmlns='");
    xml_escape(out, ns, nslen, 1);
    buf_putc(out, '\'');
  }
  /* from first, then to, as servers conventionally write them; the frame's addresses
   * replace any the payload carries */
  if (addr && addr->from_len) put_attr(out, "from", 4, addr->from, addr->from_len);
  if (addr && addr->to_len) put_attr(out, "to", 2, addr->to, addr->to_len);
  uint64_t na, nk;
  if (buf_get_varint(p, end, &na) || na > (uint64_t)(end - *p) / 2) return XMPP_EINVAL;
  for (uint64_t i = 0; i < na; i++) {
    const char *an, *av;
    size_t anl, avl;
    if (peek_str(p, end, &an, &anl) || anl == 0 || peek_str(p, end, &av, &avl)) return XMPP_EINVAL;
    if (addr && ((addr->from_len && is_attr(an, anl, "from")) || (addr->to_len && is_attr(an, anl, "to"))))
      continue;
    put_attr(out, an, anl, av, avl);
  }
  if (buf_get_varint(p, end, &nk) || nk > (uint64_t)(end - *p) / 2) return XMPP_EINVAL;
  if (nk == 0) {
    buf_puts(out, "/>");
    return 0;
  }
  buf_putc(out, '>');
  for (uint64_t i = 0; i < nk; i++)
    if (ser_encoded(p, end, depth - 1, xml_ns ? pns : ns, xml_ns ? pnslen : nslen, NULL, out)) return XMPP_EINVAL;
  buf_puts(out, "</");
  if (xml_ns) buf_puts(out, "xml:");
  buf_append(out, name, nlen);
  buf_putc(out, '>');
  return 0;
}

int xnode_serialize_encoded(const uint8_t *p, size_t len, const char *parent_ns, const xnode_addr_t *addr,
                            unsigned max_depth, buf_t *out) {
  const uint8_t *end = p + len;
  size_t mark = out->len;
  if (len == 0 || *p != 'E' ||
      ser_encoded(&p, end, max_depth, parent_ns, strlen(parent_ns), addr, out) || p != end) {
    out->len = mark;
    return XMPP_EINVAL;
  }
  return 0;
}

xnode_t *stanza_error_reply(arena_t *a, const xnode_t *st, const char *type, const char *cond) {
  const char *t = xnode_attr(st, "type");
  if (t && !strcmp(t, "error")) return NULL;
  xnode_t *e = xnode_new(a, st->name, st->ns);
  for (uint32_t i = 0; i < st->nattrs; i++) /* names are distinct: appended, not looked up */
    if (strcmp(st->attrs[2 * i], "type")) xnode_append_attr(a, e, st->attrs[2 * i], st->attrs[2 * i + 1]);
  xnode_append_attr(a, e, "type", "error");
  /* the original payload may be included (§8.3.1); it is */
  for (xnode_t *c = st->children; c; c = c->next) xnode_append(e, xnode_copy(a, c));
  xnode_t *err = xnode_add(a, e, "error", st->ns);
  xnode_set_attr(a, err, "type", type);
  xnode_add(a, err, cond, NS_STANZA_ERR);
  return e;
}

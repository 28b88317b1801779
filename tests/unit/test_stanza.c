/* Stanza trees (common/stanza.h): building, attributes, the XML serialiser (escaping and
 * namespace emission), copying, text, and the compact binary encoding with a hostile
 * decoder input. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/arena.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/stanza.h"
#include "common/xml_stream.h"
#include "support/cost.h"

static arena_t A;

static void setup(void) { arena_init(&A); }
static void teardown(void) { arena_free(&A); }

TestSuite(stanza, .init = setup, .fini = teardown);

/* Serialises n (parent namespace parent_ns) into a NUL-terminated string in the arena. */
static const char *ser_ns(const xnode_t *n, const char *parent_ns) {
  buf_t b;
  buf_init(&b);
  xnode_serialize(n, parent_ns, &b);
  char *s = arena_strndup(&A, (const char *)b.data, b.len);
  buf_free(&b);
  return s;
}
static const char *ser(const xnode_t *n) { return ser_ns(n, NS_CLIENT); }

static const char *esc(const char *s, int in_attr) {
  buf_t b;
  buf_init(&b);
  xml_escape(&b, s, strlen(s), in_attr);
  cr_assert_eq(xml_escape_len(s, strlen(s), in_attr), b.len, "xml_escape_len of %s", s);
  char *r = arena_strndup(&A, b.len ? (const char *)b.data : "", b.len);
  buf_free(&b);
  return r;
}

/* A representative stanza: attributes, nested namespaces, text, mixed content. */
static xnode_t *sample(arena_t *a) {
  xnode_t *m = xnode_new(a, "message", NS_CLIENT);
  xnode_set_attr(a, m, "to", "bob@example.net/r");
  xnode_set_attr(a, m, "type", "chat");
  xnode_set_attr(a, m, "id", "a&b<'\">");
  xnode_set_attr(a, m, "xml:lang", "en");
  xnode_t *body = xnode_add(a, m, "body", NULL);
  xnode_add_text(a, body, "hello ", 6);
  xnode_add_text(a, body, "<world> & \"you\" 'x'\r\n", 21);
  xnode_t *x = xnode_add(a, m, "x", "jabber:x:data");
  xnode_set_attr(a, x, "type", "form");
  xnode_t *f = xnode_add(a, x, "field", NULL);
  xnode_set_attr(a, f, "var", "v");
  xnode_add_text(a, xnode_add(a, f, "value", NULL), "\xe2\x98\xba", 3);
  xnode_add(a, m, "active", "http://jabber.org/protocol/chatstates");
  xnode_add_text(a, m, "tail", 4);
  return m;
}

/* ---- building --------------------------------------------------------------------- */

Test(stanza, build_tree_and_navigate) {
  xnode_t *iq = xnode_new(&A, "iq", NS_CLIENT);
  cr_assert_str_eq(iq->name, "iq");
  cr_assert_str_eq(iq->ns, NS_CLIENT);
  cr_assert_null(iq->children);
  cr_assert_null(xnode_first_elem(iq));
  cr_assert_eq(xnode_count_elems(iq), 0);

  xnode_add_text(&A, iq, " ", 1);
  xnode_t *q = xnode_add(&A, iq, "query", NS_ROSTER);
  xnode_add_text(&A, iq, "\n", 1);
  xnode_t *p = xnode_add(&A, iq, "ping", NS_PING);
  xnode_t *q2 = xnode_add(&A, iq, "query", NULL); /* inherits the parent's namespace */
  cr_assert_str_eq(q->ns, NS_ROSTER);
  cr_assert_str_eq(q2->ns, NS_CLIENT);
  cr_assert_eq(q->parent, iq);
  cr_assert_eq(iq->last, q2);
  cr_assert_eq(xnode_count_elems(iq), 3);
  cr_assert_eq(xnode_first_elem(iq), q);
  cr_assert_eq(xnode_next_elem(q), p);
  cr_assert_eq(xnode_next_elem(p), q2);
  cr_assert_null(xnode_next_elem(q2));
  cr_assert_eq(xnode_child(iq, "query", NULL), q);
  cr_assert_eq(xnode_child(iq, "query", NS_CLIENT), q2);
  cr_assert_eq(xnode_child(iq, NULL, NS_PING), p);
  cr_assert_eq(xnode_child(iq, NULL, NULL), q);
  cr_assert_null(xnode_child(iq, "query", NS_PING));
  cr_assert_null(xnode_child(iq, "nothing", NULL));

  xnode_t *t = xnode_new_text(&A, "ab\0c", 4);
  cr_assert_null(t->name);
  cr_assert_eq(t->text_len, 4);
  cr_assert_eq(memcmp(t->text, "ab\0c", 4), 0);

  xnode_t *e = xnode_new(&A, "e", NULL);
  cr_assert_str_eq(e->ns, "");
}

Test(stanza, append_moves_links) {
  xnode_t *a = xnode_new(&A, "a", "");
  xnode_t *b = xnode_new(&A, "b", "");
  xnode_t *c = xnode_new(&A, "c", "");
  xnode_append(a, b);
  xnode_append(a, c);
  cr_assert_eq(a->children, b);
  cr_assert_eq(b->next, c);
  cr_assert_null(c->next);
  cr_assert_eq(c->parent, a);
  cr_assert_str_eq(ser_ns(a, ""), "<a><b/><c/></a>");
}

/* ---- attributes ------------------------------------------------------------------- */

Test(stanza, attributes_set_replace_remove) {
  xnode_t *n = xnode_new(&A, "presence", NS_CLIENT);
  cr_assert_null(xnode_attr(n, "to"));
  xnode_set_attr(&A, n, "gone", NULL); /* removing what is not there: no-op */
  cr_assert_eq(n->nattrs, 0);

  char name[16], val[16];
  for (int i = 0; i < 20; i++) { /* forces the attribute array to grow several times */
    snprintf(name, sizeof name, "a%d", i);
    snprintf(val, sizeof val, "v%d", i);
    xnode_set_attr(&A, n, name, val);
  }
  cr_assert_eq(n->nattrs, 20);
  cr_assert_geq(n->attr_cap, 20);
  for (int i = 0; i < 20; i++) {
    snprintf(name, sizeof name, "a%d", i);
    snprintf(val, sizeof val, "v%d", i);
    cr_assert_str_eq(xnode_attr(n, name), val);
  }
  /* replacing keeps the position and the count */
  xnode_set_attr(&A, n, "a5", "five");
  cr_assert_eq(n->nattrs, 20);
  cr_assert_str_eq(n->attrs[2 * 5], "a5");
  cr_assert_str_eq(n->attrs[2 * 5 + 1], "five");
  /* removing from the middle, the front and the end keeps the others in order */
  xnode_set_attr(&A, n, "a7", NULL);
  xnode_set_attr(&A, n, "a0", NULL);
  xnode_set_attr(&A, n, "a19", NULL);
  cr_assert_eq(n->nattrs, 17);
  cr_assert_null(xnode_attr(n, "a7"));
  cr_assert_null(xnode_attr(n, "a0"));
  cr_assert_null(xnode_attr(n, "a19"));
  static const int left[] = {1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18};
  for (int i = 0; i < 17; i++) {
    snprintf(name, sizeof name, "a%d", left[i]);
    cr_assert_str_eq(n->attrs[2 * i], name);
  }
  /* a name that is a prefix of another is not confused with it */
  xnode_set_attr(&A, n, "a", "short");
  cr_assert_str_eq(xnode_attr(n, "a"), "short");
  cr_assert_str_eq(xnode_attr(n, "a1"), "v1");
  /* add again after removal */
  xnode_set_attr(&A, n, "a0", "back");
  cr_assert_str_eq(n->attrs[2 * (n->nattrs - 1)], "a0");
  cr_assert_str_eq(xnode_attr(n, "a0"), "back");
  /* empty values are values */
  xnode_set_attr(&A, n, "empty", "");
  cr_assert_str_eq(xnode_attr(n, "empty"), "");
}

Test(stanza, attribute_strings_are_copied) {
  xnode_t *n = xnode_new(&A, "m", "");
  char name[8] = "to", val[16] = "x@y";
  xnode_set_attr(&A, n, name, val);
  strcpy(name, "zz");
  strcpy(val, "changed");
  cr_assert_str_eq(xnode_attr(n, "to"), "x@y");
  char elname[8] = "body";
  xnode_t *b = xnode_new(&A, elname, "urn:a");
  strcpy(elname, "nope");
  cr_assert_str_eq(b->name, "body");
}

Test(stanza, remove_all_then_serialise) {
  xnode_t *n = xnode_new(&A, "iq", NS_CLIENT);
  xnode_set_attr(&A, n, "to", "a");
  xnode_set_attr(&A, n, "from", "b");
  xnode_set_attr(&A, n, "id", "c");
  xnode_set_attr(&A, n, "to", NULL);
  xnode_set_attr(&A, n, "from", NULL);
  cr_assert_str_eq(ser(n), "<iq id='c'/>");
  xnode_set_attr(&A, n, "id", NULL);
  cr_assert_eq(n->nattrs, 0);
  cr_assert_str_eq(ser(n), "<iq/>");
}

/* ---- serialiser: escaping ----------------------------------------------------------- */

Test(stanza, escape_text_and_attr) {
  cr_assert_str_eq(esc("", 0), "");
  cr_assert_str_eq(esc("plain", 0), "plain");
  cr_assert_str_eq(esc("&<>'\"\r", 0), "&amp;&lt;&gt;'\"&#13;");
  cr_assert_str_eq(esc("&<>'\"\r", 1), "&amp;&lt;&gt;&apos;&quot;&#13;");
  cr_assert_str_eq(esc("a&b", 0), "a&amp;b");
  cr_assert_str_eq(esc("&amp;", 0), "&amp;amp;"); /* no double-unescaping shortcut */
  cr_assert_str_eq(esc("]]>", 0), "]]&gt;");
  cr_assert_str_eq(esc("<inject/>", 0), "&lt;inject/&gt;");
  cr_assert_str_eq(esc("x'/><evil a='", 1), "x&apos;/&gt;&lt;evil a=&apos;");
  cr_assert_str_eq(esc("\xe2\x98\xba\n\t", 0), "\xe2\x98\xba\n\t");
  /* only len bytes are looked at */
  buf_t b;
  buf_init(&b);
  xml_escape(&b, "a<b<c", 2, 0);
  cr_assert_eq(b.len, 5);
  cr_assert_eq(memcmp(b.data, "a&lt;", 5), 0);
  buf_free(&b);
}

Test(stanza, serialise_escapes_text_and_attributes) {
  xnode_t *m = xnode_new(&A, "message", NS_CLIENT);
  xnode_set_attr(&A, m, "id", "&<>'\"\r");
  xnode_t *b = xnode_add(&A, m, "body", NULL);
  xnode_add_text(&A, b, "&<>'\"\r", 6);
  cr_assert_str_eq(ser(m), "<message id='&amp;&lt;&gt;&apos;&quot;&#13;'>"
                           "<body>&amp;&lt;&gt;'\"&#13;</body></message>");
}

Test(stanza, serialise_text_with_nul_length) {
  /* text is length-delimited: the whole length is written */
  xnode_t *m = xnode_new(&A, "body", NS_CLIENT);
  xnode_add_text(&A, m, "a<b", 3);
  xnode_add_text(&A, m, "", 0);
  cr_assert_str_eq(ser(m), "<body>a&lt;b</body>");
}

Test(stanza, serialise_sample) {
  xnode_t *m = sample(&A);
  cr_assert_str_eq(ser(m),
                   "<message to='bob@example.net/r' type='chat' id='a&amp;b&lt;&apos;&quot;&gt;' xml:lang='en'>"
                   "<body>hello &lt;world&gt; &amp; \"you\" 'x'&#13;\n</body>"
                   "<x xmlns='jabber:x:data' type='form'><field var='v'><value>\xe2\x98\xba</value></field></x>"
                   "<active xmlns='http://jabber.org/protocol/chatstates'/>"
                   "tail</message>");
}

/* ---- serialiser: namespaces ------------------------------------------------------- */

Test(stanza, namespace_emission) {
  xnode_t *m = xnode_new(&A, "message", NS_CLIENT);
  xnode_t *body = xnode_add(&A, m, "body", NS_CLIENT);     /* same: no xmlns */
  xnode_t *ev = xnode_add(&A, m, "event", "urn:ev");       /* differs: xmlns */
  xnode_t *item = xnode_add(&A, ev, "item", "urn:ev");     /* same as parent: none */
  xnode_t *back = xnode_add(&A, item, "x", NS_CLIENT);     /* back to the outer: xmlns again */
  xnode_t *none = xnode_add(&A, m, "bare", "");            /* no namespace under one: xmlns='' */
  xnode_t *under = xnode_add(&A, none, "kid", "");         /* still none: nothing */
  (void)body, (void)back, (void)under;
  cr_assert_str_eq(ser(m), "<message><body/><event xmlns='urn:ev'><item><x xmlns='jabber:client'/></item></event>"
                           "<bare xmlns=''><kid/></bare></message>");
  /* the same stanza written where no namespace is in scope declares its own */
  cr_assert_str_eq(ser_ns(body, ""), "<body xmlns='jabber:client'/>");
  cr_assert_str_eq(ser_ns(body, NULL), "<body xmlns='jabber:client'/>");
  cr_assert_str_eq(ser_ns(none, NULL), "<bare><kid/></bare>");
  cr_assert_str_eq(ser_ns(ev, "urn:ev"), "<event><item><x xmlns='jabber:client'/></item></event>");
}

Test(stanza, namespace_value_escaped) {
  xnode_t *n = xnode_new(&A, "q", "urn:a'b&c");
  cr_assert_str_eq(ser(n), "<q xmlns='urn:a&apos;b&amp;c'/>");
}

Test(stanza, prefixed_attributes_kept) {
  xnode_t *n = xnode_new(&A, "presence", NS_CLIENT);
  xnode_set_attr(&A, n, "xml:lang", "de");
  xnode_set_attr(&A, n, "xmlns:x", "urn:x");
  cr_assert_str_eq(ser(n), "<presence xml:lang='de' xmlns:x='urn:x'/>");
}

/* ---- serialise, then parse again: the tree survives --------------------------------- */

typedef struct {
  buf_t out;
  int errors;
} rt_t;

static void rt_stanza(void *ud, xnode_t *s) { xnode_serialize(s, NS_CLIENT, &((rt_t *)ud)->out); }
static void rt_error(void *ud, xml_stream_err_t e, const char *d) { ((rt_t *)ud)->errors++; }

/* Feeds "<stream> + xml" to the real stream reader and returns the re-serialised stanza. */
static const char *reparse(const char *xml) {
  static int inited;
  if (!inited) xml_stream_global_init(), inited = 1;
  rt_t r = {0};
  buf_init(&r.out);
  xml_stream_limits_t lim = {262144, 64, 64};
  xml_stream_cbs_t cbs = {NULL, rt_stanza, NULL, rt_error};
  xml_stream_t *xs = xml_stream_new(&lim, &cbs, &r);
  static const char *hdr = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
  cr_assert_eq(xml_stream_feed(xs, hdr, strlen(hdr)), 0);
  cr_assert_eq(xml_stream_feed(xs, xml, strlen(xml)), 0, "%s", xml);
  cr_assert_eq(r.errors, 0);
  xml_stream_free(xs);
  char *s = arena_strndup(&A, r.out.data ? (const char *)r.out.data : "", r.out.len);
  buf_free(&r.out);
  return s;
}

Test(stanza, serialised_form_reparses_identically) {
  const char *once = ser(sample(&A));
  cr_assert_str_eq(reparse(once), once);
}

Test(stanza, attribute_whitespace_survives_reparse) {
  /* XML attribute-value normalisation (XML 1.0 §3.3.3) turns a literal TAB, LF or CR in
   * an attribute into a space when parsed, so the serialiser must write them as character
   * references for the value to reach the recipient unchanged (as it does for CR). */
  xnode_t *m = xnode_new(&A, "message", NS_CLIENT);
  xnode_set_attr(&A, m, "id", "a\tb\nc\rd");
  const char *once = ser(m);
  cr_assert_str_eq(reparse(once), once, "serialised as %s", once);
}

/* ---- copy and text ---------------------------------------------------------------- */

Test(stanza, copy_is_deep_and_independent) {
  arena_t src;
  arena_init(&src);
  xnode_t *orig = sample(&src);
  const char *before = ser(orig);
  xnode_t *c = xnode_copy(&A, orig);
  cr_assert_neq(c, orig);
  cr_assert_str_eq(ser(c), before);
  cr_assert_null(c->parent);
  /* changing the copy leaves the original alone, and vice versa */
  xnode_set_attr(&A, c, "type", "normal");
  xnode_add(&A, c, "extra", NULL);
  cr_assert_str_eq(ser(orig), before);
  xnode_set_attr(&src, orig, "to", "someone@else");
  /* the copy does not point into the source arena: free it and use the copy */
  arena_free(&src);
  cr_assert_str_eq(xnode_attr(c, "to"), "bob@example.net/r");
  cr_assert_str_eq(xnode_attr(c, "type"), "normal");
  xnode_t *x = xnode_child(c, "x", "jabber:x:data");
  cr_assert_not_null(x);
  cr_assert_eq(x->parent, c);
  cr_assert_str_eq(xnode_attr(xnode_child(x, "field", NULL), "var"), "v");
  cr_assert_str_eq(xnode_text(&A, xnode_child(c, "body", NULL)), "hello <world> & \"you\" 'x'\r\n");
}

/* Issue 9: xnode_copy and stanza_error_reply added each attribute with xnode_set_attr,
 * which scans the ones already there: quadratic in the attribute count a client chose
 * (the router copies and answers stanzas the edge parsed). Both are linear now. */
typedef struct {
  xnode_t *small, *big; /* n and 8n attributes, every name distinct */
  arena_t out;
  int reply;
} many_attrs_t;

static xnode_t *with_attrs(arena_t *a, size_t n) {
  xnode_t *m = xnode_new(a, "message", NS_CLIENT);
  char name[32];
  for (size_t i = 0; i < n; i++) {
    snprintf(name, sizeof name, "a%zu", i);
    xnode_append_attr(a, m, name, "v");
  }
  xnode_add_text(a, xnode_add(a, m, "body", NULL), "hi", 2);
  return m;
}

static void copy_run(void *ud, size_t n) {
  many_attrs_t *m = ud;
  const xnode_t *src = n == m->small->nattrs ? m->small : m->big;
  xnode_t *c = m->reply ? stanza_error_reply(&m->out, src, "cancel", "not-allowed") : xnode_copy(&m->out, src);
  cr_assert_eq(c->nattrs, src->nattrs + (m->reply ? 1 : 0));
  arena_reset(&m->out);
}

static void check_linear_copy(int reply) {
  many_attrs_t m = {.reply = reply};
  m.small = with_attrs(&A, 1000);
  m.big = with_attrs(&A, 8000);
  arena_init(&m.out);
  double g = cost_growth(copy_run, &m, 1000);
  arena_free(&m.out);
  cr_assert_lt(g, 3.0, "%s of 8x the attributes costs %.1fx (1 = linear, 8 = quadratic)",
               reply ? "stanza_error_reply" : "xnode_copy", g);
}

Test(stanza, copy_is_linear_in_attributes) { check_linear_copy(0); }
Test(stanza, error_reply_is_linear_in_attributes) { check_linear_copy(1); }

Test(stanza, error_reply_keeps_attributes_and_replaces_type) {
  xnode_t *m = xnode_new(&A, "iq", NS_CLIENT);
  xnode_set_attr(&A, m, "id", "1");
  xnode_set_attr(&A, m, "type", "get");
  xnode_set_attr(&A, m, "xml:lang", "en");
  xnode_add(&A, m, "q", "urn:q");
  xnode_t *e = stanza_error_reply(&A, m, "cancel", "service-unavailable");
  cr_assert_str_eq(ser(e), "<iq id='1' xml:lang='en' type='error'><q xmlns='urn:q'/>"
                           "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                           "</error></iq>");
  xnode_set_attr(&A, m, "type", "error");
  cr_assert_null(stanza_error_reply(&A, m, "cancel", "service-unavailable"));
}

/* xnode_append_attr appends without looking; set_attr still replaces. */
Test(stanza, append_attr_grows) {
  xnode_t *m = xnode_new(&A, "x", NS_CLIENT);
  char name[16];
  for (int i = 0; i < 100; i++) {
    snprintf(name, sizeof name, "a%d", i);
    xnode_append_attr(&A, m, name, name);
  }
  cr_assert_eq(m->nattrs, 100);
  cr_assert_str_eq(xnode_attr(m, "a0"), "a0");
  cr_assert_str_eq(xnode_attr(m, "a99"), "a99");
  xnode_set_attr(&A, m, "a50", "z");
  cr_assert_eq(m->nattrs, 100);
  cr_assert_str_eq(xnode_attr(m, "a50"), "z");
}

Test(stanza, copy_text_node_and_subtree) {
  xnode_t *t = xnode_new_text(&A, "a\0b", 3);
  xnode_t *ct = xnode_copy(&A, t);
  cr_assert_null(ct->name);
  cr_assert_eq(ct->text_len, 3);
  cr_assert_eq(memcmp(ct->text, "a\0b", 3), 0);
  cr_assert_neq(ct->text, t->text);
  xnode_t *m = sample(&A);
  xnode_t *x = xnode_child(m, "x", NULL);
  xnode_t *cx = xnode_copy(&A, x);
  cr_assert_null(cx->parent);
  cr_assert_null(cx->next);
  cr_assert_str_eq(ser(cx), "<x xmlns='jabber:x:data' type='form'><field var='v'><value>\xe2\x98\xba</value></field></x>");
}

Test(stanza, text_concatenates_direct_children) {
  xnode_t *b = xnode_new(&A, "body", NS_CLIENT);
  cr_assert_str_eq(xnode_text(&A, b), "");
  xnode_add_text(&A, b, "one ", 4);
  xnode_t *i = xnode_add(&A, b, "i", NULL);
  xnode_add_text(&A, i, "nested", 6); /* not a direct child: not included */
  xnode_add_text(&A, b, "two", 3);
  xnode_add_text(&A, b, "", 0);
  xnode_add_text(&A, b, " three", 6);
  char *s = xnode_text(&A, b);
  cr_assert_str_eq(s, "one two three");
  cr_assert_str_eq(xnode_text(&A, i), "nested");
  xnode_t *e = xnode_new(&A, "e", "");
  xnode_add(&A, e, "k", NULL);
  cr_assert_str_eq(xnode_text(&A, e), "");
}

/* ---- binary encoding -------------------------------------------------------------- */

static buf_t encode(const xnode_t *n) {
  buf_t b;
  buf_init(&b);
  xnode_encode(n, &b);
  return b;
}

/* Decodes from an exact-size copy so that ASan catches any read past the input. */
static int decode_copy(const uint8_t *p, size_t len, unsigned depth, xnode_t **out) {
  uint8_t *q = xmalloc(len ? len : 1);
  if (len) memcpy(q, p, len);
  xnode_t *n = NULL;
  int rc = xnode_decode(&A, q, len, depth, &n);
  xfree(q); /* the decoded tree lives in the arena, not in the input */
  if (out) *out = n;
  return rc;
}

Test(stanza, encode_decode_roundtrip) {
  xnode_t *m = sample(&A);
  buf_t b = encode(m);
  xnode_t *d = NULL;
  cr_assert_eq(decode_copy(b.data, b.len, 64, &d), 0);
  cr_assert_not_null(d);
  cr_assert_str_eq(ser(d), ser(m));
  cr_assert_str_eq(ser_ns(d, ""), ser_ns(m, ""));
  cr_assert_str_eq(d->ns, NS_CLIENT);
  cr_assert_eq(d->nattrs, m->nattrs);
  cr_assert_str_eq(xnode_attr(d, "xml:lang"), "en");
  /* parent links are rebuilt */
  xnode_t *x = xnode_child(d, "x", "jabber:x:data");
  cr_assert_eq(x->parent, d);
  cr_assert_eq(d->last->parent, d);
  cr_assert_null(d->last->name);
  /* re-encoding the decoded tree gives the same bytes */
  buf_t b2 = encode(d);
  cr_assert_eq(b2.len, b.len);
  cr_assert_eq(memcmp(b2.data, b.data, b.len), 0);
  buf_free(&b);
  buf_free(&b2);
}

Test(stanza, encoded_head_without_decoding) {
  xnode_t *m = sample(&A);
  buf_t b = encode(m);
  xnode_head_t h;
  cr_assert_eq(xnode_encoded_head(b.data, b.len, "type", &h), 0);
  cr_assert_eq(h.name_len, 7);
  cr_assert_eq(memcmp(h.name, "message", 7), 0);
  cr_assert_eq(h.attr_len, 4);
  cr_assert_eq(memcmp(h.attr, "chat", 4), 0);
  cr_assert_eq(xnode_encoded_head(b.data, b.len, "nope", &h), 0);
  cr_assert_null(h.attr);
  cr_assert_eq(xnode_encoded_head(b.data, b.len, NULL, &h), 0);
  cr_assert_null(h.attr);
  /* every truncation of the head is refused, never read past */
  size_t head = 1 + 1 + 7 + 1 + strlen(NS_CLIENT) + 1;
  for (size_t cut = 0; cut < head + 20; cut++) {
    uint8_t *t = malloc(cut ? cut : 1);
    memcpy(t, b.data, cut);
    int rc = xnode_encoded_head(t, cut, "xml:lang", &h);
    if (rc == 0) cr_assert_geq(cut, head, "cut %zu", cut);
    free(t);
  }
  uint8_t text[] = {'T', 1, 'x'};
  cr_assert_eq(xnode_encoded_head(text, sizeof text, NULL, &h), XMPP_EINVAL);
  buf_free(&b);
}

Test(stanza, encode_decode_minimal_and_large) {
  xnode_t *e = xnode_new(&A, "e", "");
  buf_t b = encode(e);
  /* 'E' name(1+1) ns(1) nattrs(1) nkids(1) */
  cr_assert_eq(b.len, 6);
  xnode_t *d;
  cr_assert_eq(decode_copy(b.data, b.len, 1, &d), 0);
  cr_assert_str_eq(ser_ns(d, ""), "<e/>");
  buf_free(&b);

  /* lengths and counts needing multi-byte varints */
  xnode_t *m = xnode_new(&A, "message", NS_CLIENT);
  char name[16];
  for (int i = 0; i < 300; i++) {
    snprintf(name, sizeof name, "a%d", i);
    xnode_set_attr(&A, m, name, "v");
  }
  for (int i = 0; i < 200; i++) xnode_add(&A, m, "k", NULL);
  size_t tl = 100000;
  char *text = xmalloc(tl);
  memset(text, '<', tl);
  xnode_add_text(&A, m, text, tl);
  xfree(text);
  b = encode(m);
  cr_assert_eq(decode_copy(b.data, b.len, 2, &d), 0);
  cr_assert_eq(d->nattrs, 300);
  cr_assert_eq(xnode_count_elems(d), 200);
  cr_assert_eq(d->last->text_len, tl);
  cr_assert_str_eq(ser(d), ser(m));
  buf_free(&b);
}

Test(stanza, decode_rejects_truncation_at_every_byte) {
  xnode_t *m = sample(&A);
  buf_t b = encode(m);
  for (size_t n = 0; n < b.len; n++)
    cr_assert_eq(decode_copy(b.data, n, 64, NULL), XMPP_EINVAL, "prefix %zu of %zu decoded", n, b.len);
  cr_assert_eq(decode_copy(b.data, b.len, 64, NULL), 0);
  buf_free(&b);
}

Test(stanza, decode_rejects_trailing_bytes) {
  xnode_t *m = sample(&A);
  buf_t b = encode(m);
  buf_putc(&b, 'E');
  cr_assert_eq(decode_copy(b.data, b.len, 64, NULL), XMPP_EINVAL);
  b.data[b.len - 1] = 0;
  cr_assert_eq(decode_copy(b.data, b.len, 64, NULL), XMPP_EINVAL);
  buf_free(&b);
}

Test(stanza, decode_rejects_text_root) {
  xnode_t *t = xnode_new_text(&A, "hi", 2);
  buf_t b = encode(t);
  cr_assert_eq(b.data[0], 'T');
  cr_assert_eq(decode_copy(b.data, b.len, 64, NULL), XMPP_EINVAL);
  buf_free(&b);
}

Test(stanza, decode_rejects_garbage_tags) {
  static const uint8_t tags[] = {0, 'e', 't', 'X', 0xff, 0x80, 'E' + 1};
  xnode_t *m = sample(&A);
  buf_t b = encode(m);
  for (size_t i = 0; i < sizeof tags; i++) {
    uint8_t save = b.data[0];
    b.data[0] = tags[i];
    cr_assert_eq(decode_copy(b.data, b.len, 64, NULL), XMPP_EINVAL, "root tag %#x", tags[i]);
    b.data[0] = save;
  }
  buf_free(&b);
  /* a garbage tag on a child */
  static const uint8_t kid[] = {'E', 1, 'a', 0, 0, 1, 'Q', 1, 'x'};
  cr_assert_eq(decode_copy(kid, sizeof kid, 64, NULL), XMPP_EINVAL);
  static const uint8_t kid_ok[] = {'E', 1, 'a', 0, 0, 1, 'T', 1, 'x'};
  xnode_t *d;
  cr_assert_eq(decode_copy(kid_ok, sizeof kid_ok, 64, &d), 0);
  cr_assert_str_eq(ser_ns(d, ""), "<a>x</a>");
  /* empty input */
  cr_assert_eq(decode_copy(kid, 0, 64, NULL), XMPP_EINVAL);
}

Test(stanza, decode_rejects_empty_names) {
  static const uint8_t noname[] = {'E', 0, 0, 0, 0};
  cr_assert_eq(decode_copy(noname, sizeof noname, 64, NULL), XMPP_EINVAL);
  static const uint8_t noattrname[] = {'E', 1, 'a', 0, 1, 0, 1, 'v', 0};
  cr_assert_eq(decode_copy(noattrname, sizeof noattrname, 64, NULL), XMPP_EINVAL);
  static const uint8_t ok[] = {'E', 1, 'a', 0, 1, 1, 'n', 0, 0};
  xnode_t *d;
  cr_assert_eq(decode_copy(ok, sizeof ok, 64, &d), 0);
  cr_assert_str_eq(xnode_attr(d, "n"), "");
}

Test(stanza, decode_rejects_nul_in_strings) {
  /* name */
  static const uint8_t a[] = {'E', 3, 'a', 0, 'b', 0, 0, 0};
  cr_assert_eq(decode_copy(a, sizeof a, 64, NULL), XMPP_EINVAL);
  /* namespace */
  static const uint8_t b[] = {'E', 1, 'a', 2, 'u', 0, 0, 0};
  cr_assert_eq(decode_copy(b, sizeof b, 64, NULL), XMPP_EINVAL);
  /* attribute name */
  static const uint8_t c[] = {'E', 1, 'a', 0, 1, 2, 'n', 0, 1, 'v', 0};
  cr_assert_eq(decode_copy(c, sizeof c, 64, NULL), XMPP_EINVAL);
  /* attribute value */
  static const uint8_t d[] = {'E', 1, 'a', 0, 1, 1, 'n', 3, 'v', 0, 'w', 0};
  cr_assert_eq(decode_copy(d, sizeof d, 64, NULL), XMPP_EINVAL);
  /* text */
  static const uint8_t e[] = {'E', 1, 'a', 0, 0, 1, 'T', 3, 'x', 0, 'y'};
  cr_assert_eq(decode_copy(e, sizeof e, 64, NULL), XMPP_EINVAL);
  /* the same shapes without the NUL decode */
  static const uint8_t e_ok[] = {'E', 1, 'a', 0, 0, 1, 'T', 3, 'x', 'z', 'y'};
  cr_assert_eq(decode_copy(e_ok, sizeof e_ok, 64, NULL), 0);
  static const uint8_t d_ok[] = {'E', 1, 'a', 0, 1, 1, 'n', 3, 'v', 'v', 'w', 0};
  cr_assert_eq(decode_copy(d_ok, sizeof d_ok, 64, NULL), 0);
}

static xnode_t *chain(int depth) {
  xnode_t *root = xnode_new(&A, "d", "urn:d"), *cur = root;
  for (int i = 1; i < depth; i++) cur = xnode_add(&A, cur, "d", NULL);
  return root;
}

Test(stanza, decode_depth_limit) {
  for (unsigned depth = 1; depth <= 40; depth += 13) {
    buf_t b = encode(chain((int)depth));
    cr_assert_eq(decode_copy(b.data, b.len, depth, NULL), 0, "depth %u", depth);
    cr_assert_eq(decode_copy(b.data, b.len, depth + 1, NULL), 0, "depth %u", depth);
    cr_assert_eq(decode_copy(b.data, b.len, depth - 1, NULL), XMPP_EINVAL, "depth %u", depth);
    buf_free(&b);
  }
  /* deep input against the limit the routers use: refused, not a stack overflow */
  buf_t b = encode(chain(20000));
  cr_assert_eq(decode_copy(b.data, b.len, 256, NULL), XMPP_EINVAL);
  buf_free(&b);
  /* a text leaf counts as a level */
  xnode_t *e = xnode_new(&A, "e", "");
  xnode_add_text(&A, e, "x", 1);
  b = encode(e);
  cr_assert_eq(decode_copy(b.data, b.len, 1, NULL), XMPP_EINVAL);
  cr_assert_eq(decode_copy(b.data, b.len, 2, NULL), 0);
  buf_free(&b);
}

Test(stanza, decode_rejects_counts_larger_than_input) {
  /* attribute count */
  static const uint8_t a[] = {'E', 1, 'a', 0, 100, 1, 'n', 1, 'v', 0};
  cr_assert_eq(decode_copy(a, sizeof a, 64, NULL), XMPP_EINVAL);
  /* attribute count 2^63 (would overflow a size computation) */
  static const uint8_t a2[] = {'E', 1, 'a', 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0};
  cr_assert_eq(decode_copy(a2, sizeof a2, 64, NULL), XMPP_EINVAL);
  /* attribute count 2^62: 2^62 * 2 * sizeof(char *) wraps to 0 on 64-bit */
  static const uint8_t a3[] = {'E', 1, 'a', 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0};
  cr_assert_eq(decode_copy(a3, sizeof a3, 64, NULL), XMPP_EINVAL);
  /* child count */
  static const uint8_t k[] = {'E', 1, 'a', 0, 0, 50, 'T', 1, 'x'};
  cr_assert_eq(decode_copy(k, sizeof k, 64, NULL), XMPP_EINVAL);
  static const uint8_t k2[] = {'E', 1, 'a', 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
  cr_assert_eq(decode_copy(k2, sizeof k2, 64, NULL), XMPP_EINVAL);
  /* string lengths */
  static const uint8_t s[] = {'E', 200, 1, 'a', 0, 0, 0};
  cr_assert_eq(decode_copy(s, sizeof s, 64, NULL), XMPP_EINVAL);
  static const uint8_t s2[] = {'E', 1, 'a', 0, 0, 1, 'T', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
  cr_assert_eq(decode_copy(s2, sizeof s2, 64, NULL), XMPP_EINVAL);
  /* an over-long varint */
  static const uint8_t v[] = {'E', 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 'a', 0, 0, 0};
  cr_assert_eq(decode_copy(v, sizeof v, 64, NULL), XMPP_EINVAL);
  /* counts are exact: one child announced, two present */
  static const uint8_t x[] = {'E', 1, 'a', 0, 0, 1, 'T', 1, 'x', 'T', 1, 'y'};
  cr_assert_eq(decode_copy(x, sizeof x, 64, NULL), XMPP_EINVAL);
}

Test(stanza, decode_random_garbage_never_crashes) {
  uint64_t s = 0x243f6a8885a308d3ULL;
  xnode_t *m = sample(&A);
  buf_t good = encode(m);
  uint8_t *p = xmalloc(good.len);
  for (int iter = 0; iter < 20000; iter++) {
    /* flip a few bytes of a valid encoding */
    memcpy(p, good.data, good.len);
    for (int k = 0; k < 1 + iter % 4; k++) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      p[(s >> 8) % good.len] = (uint8_t)s;
    }
    xnode_t *d = NULL;
    int rc = decode_copy(p, good.len, 64, &d);
    cr_assert(rc == 0 || rc == XMPP_EINVAL);
    if (rc == 0) {
      cr_assert_not_null(d->name);
      (void)ser(d); /* whatever decoded can be written */
    }
    if (iter % 1000 == 999) arena_reset(&A);
  }
  xfree(p);
  buf_free(&good);
}

/* ---- serialising straight from the encoding (the edge's delivery path) ------------- */

/* Serialises from an exact-size copy (ASan catches over-reads); NULL when rejected. */
static const char *ser_enc(const uint8_t *p, size_t len, const xnode_addr_t *addr, unsigned depth) {
  uint8_t *q = xmalloc(len ? len : 1);
  if (len) memcpy(q, p, len);
  buf_t out;
  buf_init(&out);
  buf_puts(&out, "PRE");
  int rc = xnode_serialize_encoded(q, len, NS_CLIENT, addr, depth, &out);
  xfree(q);
  if (rc != 0) {
    cr_assert_eq(out.len, 3, "nothing appended on failure");
    buf_free(&out);
    return NULL;
  }
  const char *s = arena_strndup(&A, (const char *)out.data + 3, out.len - 3);
  buf_free(&out);
  return s;
}

Test(stanza, serialize_encoded_matches_tree_serialisation) {
  xnode_t *m = sample(&A);
  buf_t b = encode(m);
  cr_assert_str_eq(ser_enc(b.data, b.len, NULL, 64), ser(m));
  buf_free(&b);
}

Test(stanza, serialize_encoded_addresses_first_and_replacing) {
  xnode_t *m = sample(&A); /* carries to='bob@example.net/r' */
  buf_t b = encode(m);
  xnode_addr_t addr = {"a@x/r", 5, "b@y", 3};
  /* what the edge used to build: a new top element with from, to, then the rest */
  xnode_t *want = xnode_new(&A, "message", NS_CLIENT);
  xnode_set_attr(&A, want, "from", "a@x/r");
  xnode_set_attr(&A, want, "to", "b@y");
  for (uint32_t i = 0; i < m->nattrs; i++)
    if (strcmp(m->attrs[2 * i], "to") != 0) xnode_set_attr(&A, want, m->attrs[2 * i], m->attrs[2 * i + 1]);
  want->children = m->children;
  want->last = m->last;
  cr_assert_str_eq(ser_enc(b.data, b.len, &addr, 64), ser(want));
  /* only a from: the payload's own to stays */
  xnode_addr_t from_only = {"a@x/r", 5, NULL, 0};
  const char *s = ser_enc(b.data, b.len, &from_only, 64);
  cr_assert(strstr(s, "to='bob@example.net/r'"), "%s", s);
  cr_assert(!strncmp(s, "<message from='a@x/r'", 21), "%s", s);
  buf_free(&b);
}

Test(stanza, serialize_encoded_escapes_addresses) {
  xnode_t *m = xnode_new(&A, "presence", NS_CLIENT);
  buf_t b = encode(m);
  xnode_addr_t addr = {"a'<&\"@x", 7, NULL, 0};
  cr_assert_str_eq(ser_enc(b.data, b.len, &addr, 64), "<presence from='a&apos;&lt;&amp;&quot;@x'/>");
  buf_free(&b);
}

Test(stanza, serialize_encoded_rejects_what_decode_rejects) {
  xnode_t *m = sample(&A);
  buf_t b = encode(m);
  for (size_t n = 0; n < b.len; n++) cr_assert_null(ser_enc(b.data, n, NULL, 64), "prefix %zu", n);
  uint8_t *bad = xmalloc(b.len);
  for (size_t i = 0; i < b.len; i++) {
    memcpy(bad, b.data, b.len);
    bad[i] ^= 0xff;
    xnode_t *t;
    int dec = decode_copy(bad, b.len, 64, &t) == 0;
    int enc = ser_enc(bad, b.len, NULL, 64) != NULL;
    cr_assert_eq(dec, enc, "byte %zu flipped: decode %d, serialize_encoded %d", i, dec, enc);
    if (dec) cr_assert_str_eq(ser_enc(bad, b.len, NULL, 64), ser(t));
  }
  xfree(bad);
  cr_assert_null(ser_enc(b.data, b.len, NULL, 2), "depth limit");
  buf_free(&b);
}

/* Found in review: the delivery path (serialize_encoded) wrote <foo xmlns='xml ns'>, which
 * XML parsers refuse, for an element the reader accepts as <xml:foo/>; any user could
 * break another's stream with it. Both serialisers must agree on such trees. */
Test(stanza, serialize_encoded_keeps_xml_prefix) {
  xnode_t *m = xnode_new(&A, "message", NS_CLIENT);
  xnode_t *x = xnode_add(&A, m, "foo", NS_XML);
  xnode_add_text(&A, x, "hi", 2);
  xnode_t *inner = xnode_add(&A, x, "bar", NS_CLIENT);
  xnode_set_attr(&A, inner, "xml:lang", "en");
  xnode_add(&A, m, "body", NS_CLIENT);
  buf_t b = encode(m);
  const char *want = ser(m);
  cr_assert_str_eq(want, "<message><xml:foo>hi<bar xml:lang='en'/></xml:foo><body/></message>");
  cr_assert_str_eq(ser_enc(b.data, b.len, NULL, 64), want);
  buf_free(&b);
}

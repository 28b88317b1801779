/* XML stream reader over libxml2's SAX2 push parser.
 *
 * Design: input is fed to libxml2 in slices of at most SLICE bytes so that the byte
 * count of an unfinished stanza (bytes fed since the last stanza ended) is checked
 * against the limit with at most one slice of slack, even when libxml2 buffers a huge
 * attribute value internally without calling back. The stanza tree is built in an arena
 * that is reset after every stanza callback.
 *
 * Refused constructs (RFC 6120 §11.1): DOCTYPE (internalSubset/externalSubset fire
 * before any declaration inside is parsed, so no entity is ever declared), entity
 * declarations, entity references other than the five predefined ones and character
 * references, comments, processing instructions. The parser is created without
 * XML_PARSE_NOENT/DTDLOAD and with XML_PARSE_NONET: nothing is fetched or expanded. */
#include "common/xml_stream.h"

#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <string.h>
#include <unistr.h>

#include "common/alloc.h"
#include "common/err.h"

#define SLICE 4096

/* The attribute limit is checked on the bytes, before libxml2 sees them (tag_scan).
 * libxml2 2.9 compares every attribute of a start tag with every other one (the
 * uniqueness check, XML 1.0 §3.1, and Namespaces in XML §6.3) and every namespace
 * declaration with the earlier ones, all before startElementNs is called: a 250 KB tag
 * of 40,000 attributes cost 0.34 s of CPU, and a stream header of 15,000 declarations
 * 0.65 s, before authentication (issue 9), whatever on_start did with them. In a
 * well-formed start tag every '=' outside a quoted value is the Eq of one attribute or
 * one namespace declaration (XML 1.0 §3.1 [40] [41], §2.3 [25]), so counting them
 * counts exactly what max_attrs caps; text, CDATA sections, comments, PIs and other
 * "<!" markup are skipped as libxml2 skips them. In an ill-formed tag libxml2 stops at
 * the first error, having compared only the attributes before it, which were counted.
 * Bytes before the one that goes over the limit are parsed first, so an earlier error
 * (or a stream restart) keeps its place in the stream. */
enum {
  SC_TEXT = 0,   /* character data */
  SC_LT,         /* after '<' */
  SC_TAG,        /* inside a start tag */
  SC_QUOTE,      /* inside an attribute value */
  SC_ETAG,       /* inside an end tag */
  SC_PI,         /* "<?" to "?>" (the XML declaration; PIs are refused) */
  SC_BANG,       /* after "<!" */
  SC_BANG_DASH,  /* after "<!-" */
  SC_BANG_CDATA, /* matching "<![CDATA[" */
  SC_COMMENT,    /* "<!--" to "-->" (refused) */
  SC_CDATA,      /* "<![CDATA[" to "]]>" */
  SC_DECL,       /* other "<!" markup (DOCTYPE, refused) to '>' */
};

/* Suspension: an idle connection should not hold a libxml2 parser (about 16 KB: context,
 * input buffer, dictionary, stacks). When a feed ends at a stanza boundary (inside the
 * stream element, no element open, nothing but whitespace left unparsed) the parser is
 * freed. The next feed creates a new one and first feeds it a synthetic open tag with the
 * stream element's qualified name and namespace declarations (`resume`), which only
 * re-establishes the parser's state: it is not reported again. Whitespace dropped at
 * suspension is what on_chars would have ignored. Everything else (limits, errors) is
 * checked as before, on the bytes the peer sends. A stream whose header cannot be
 * reproduced simply (unusual characters in a namespace, a huge header) is never
 * suspended. */
#define MAX_RESUME 1024

struct xml_stream {
  xmlParserCtxtPtr ctxt; /* NULL while suspended or before the first byte of a stream */
  char *resume;          /* open tag that resumes the current stream (depth 1), or NULL */
  int resuming;          /* the resume tag is being fed */
  int auto_suspend;
  xml_stream_limits_t lim;
  xml_stream_cbs_t cbs;
  void *ud;
  arena_t arena;
  xnode_t *cur;      /* element being built (depth >= 1) */
  unsigned depth;    /* 0 = outside the stream element */
  size_t pending;    /* bytes fed since the last stanza boundary */
  int failed;
  int stopped;
  int restart;
  int in_feed;
  size_t text_cap; /* capacity of the buffer behind cur->last when it is text */
  xnode_t *root;   /* the stanza being built (depth >= 2) */
  /* prefixes declared on the stream header: "prefix\0uri\0" hdr_nns times (xmalloc'd) */
  char *hdr_ns;
  unsigned hdr_nns;
  /* tag_scan's state, across feeds */
  uint8_t scan, scan_quote, scan_run;
  unsigned scan_attrs; /* '=' so far in the current start tag */
};

static void fail(xml_stream_t *xs, xml_stream_err_t e, const char *detail) {
  if (xs->failed || xs->stopped) return;
  xs->failed = 1;
  if (xs->ctxt) xmlStopParser(xs->ctxt);
  if (xs->cbs.error) xs->cbs.error(xs->ud, e, detail);
}

static int halted(xml_stream_t *xs) { return xs->failed || xs->stopped || xs->restart; }

/* Without entity substitution libxml2 hands SAX2 attribute values with '&' (from &amp;
 * or a character reference) still written as "&#38;"; every other reference is already
 * decoded. A raw '&' cannot occur in a well-formed value, so each "&#38;" is one '&'. */
static char *attr_value(arena_t *a, const char *v, size_t len) {
  char *out = arena_strndup(a, v, len);
  if (!memchr(out, '&', len)) return out;
  char *w = out;
  for (size_t i = 0; i < len;) {
    if (len - i >= 5 && memcmp(v + i, "&#38;", 5) == 0) {
      *w++ = '&';
      i += 5;
    } else {
      *w++ = v[i++];
    }
  }
  *w = '\0';
  return out;
}

/* Appends s to b as it would appear quoted in an attribute; 0, or -1 when s has a
 * character we do not reproduce (then the stream is not suspended). */
static int resume_put(buf_t *b, const char *s) {
  if (strpbrk(s, "&<>'\"")) return -1;
  buf_puts(b, s);
  return 0;
}

static void record_resume(xml_stream_t *xs, const xmlChar *localname, const xmlChar *prefix, int nb_ns,
                          const xmlChar **namespaces) {
  xfree(xs->resume);
  xs->resume = NULL;
  buf_t b;
  buf_init(&b);
  int bad = 0;
  buf_putc(&b, '<');
  if (prefix) {
    buf_puts(&b, (const char *)prefix);
    buf_putc(&b, ':');
  }
  buf_puts(&b, (const char *)localname);
  for (int i = 0; i < nb_ns && !bad; i++) {
    const char *p = (const char *)namespaces[2 * i], *u = (const char *)namespaces[2 * i + 1];
    buf_puts(&b, p ? " xmlns:" : " xmlns");
    if (p) bad |= resume_put(&b, p);
    buf_puts(&b, "='");
    bad |= resume_put(&b, u ? u : "");
    buf_putc(&b, '\'');
  }
  buf_putc(&b, '>');
  buf_putc(&b, '\0');
  if (!bad && b.len <= MAX_RESUME) xs->resume = xstrdup((const char *)b.data); /* exact size */
  buf_free(&b);
}

/* Namespace names are attribute values (of xmlns declarations) and come with the same
 * "&#38;" for '&' (found by fuzz_xml_stream: xmlns='a&amp;b' gave the namespace
 * "a&#38;b", which serialised as "a&amp;#38;b", a different namespace). */
static const char *ns_uri(arena_t *a, const xmlChar *u) {
  return u ? attr_value(a, (const char *)u, strlen((const char *)u)) : "";
}

/* "p:local" in the arena (no length limit: names are bounded by the stanza size). */
static char *qname(arena_t *a, const char *p, const char *local) {
  size_t lp = strlen(p), ll = strlen(local);
  char *q = arena_alloc(a, lp + 1 + ll + 1);
  memcpy(q, p, lp);
  q[lp] = ':';
  memcpy(q + lp + 1, local, ll + 1);
  return q;
}

/* The stream header's prefixed declarations, kept for the stream's life (suspension
 * included): at most max_attrs of them. */
static void record_header_ns(xml_stream_t *xs, int nb_ns, const xmlChar **namespaces) {
  xfree(xs->hdr_ns);
  xs->hdr_ns = NULL;
  xs->hdr_nns = 0;
  buf_t b;
  buf_init(&b);
  for (int i = 0; i < nb_ns; i++) {
    const char *p = (const char *)namespaces[2 * i], *u = ns_uri(&xs->arena, namespaces[2 * i + 1]);
    if (!p) continue;
    buf_append(&b, p, strlen(p) + 1);
    buf_append(&b, u, strlen(u) + 1);
    xs->hdr_nns++;
  }
  if (b.len) {
    xs->hdr_ns = xmalloc(b.len);
    memcpy(xs->hdr_ns, b.data, b.len);
  }
  buf_free(&b);
}

static const char *header_ns(const xml_stream_t *xs, const char *prefix) {
  const char *p = xs->hdr_ns;
  for (unsigned i = 0; i < xs->hdr_nns; i++) {
    const char *u = p + strlen(p) + 1;
    if (!strcmp(p, prefix)) return u;
    p = u + strlen(u) + 1;
  }
  return NULL;
}

/* A prefixed attribute inside a stanza whose binding (prefix, uri) may come from the
 * stream header: then the stanza's top element declares it. The binding is the
 * header's when the header binds the prefix to that namespace and the top element
 * does not declare the prefix (if it declares it otherwise, the binding in force was
 * declared further in, so it is in the stanza already; one declared further in with
 * the header's namespace makes the added declaration redundant, not wrong). Cost per
 * attribute: the header's declarations and the top element's attributes, each at most
 * max_attrs (it walked every ancestor's attributes: max_depth x max_attrs). */
static void declare_prefix(xml_stream_t *xs, const char *prefix, const char *uri) {
  const char *hdr = header_ns(xs, prefix);
  if (!hdr || strcmp(hdr, uri) != 0) return;
  const xnode_t *r = xs->root;
  for (uint32_t i = 0; i < r->nattrs; i++)
    if (!strncmp(r->attrs[2 * i], "xmlns:", 6) && !strcmp(r->attrs[2 * i] + 6, prefix)) return;
  xnode_append_attr(&xs->arena, xs->root, qname(&xs->arena, "xmlns", prefix), uri);
}

static size_t tag_scan(xml_stream_t *xs, const char *p, size_t n) {
  static const char cdata[] = "[CDATA[";
  for (size_t i = 0; i < n; i++) {
    char c = p[i];
    switch (xs->scan) {
    case SC_TEXT:
      if (c == '<') xs->scan = SC_LT;
      break;
    case SC_LT:
      xs->scan_run = 0;
      if (c == '/') {
        xs->scan = SC_ETAG;
        break;
      }
      if (c == '?') {
        xs->scan = SC_PI;
        break;
      }
      if (c == '!') {
        xs->scan = SC_BANG;
        break;
      }
      xs->scan = SC_TAG;
      xs->scan_attrs = 0;
      /* fall through - c is the name's first character */
    case SC_TAG:
      if (c == '>') {
        xs->scan = SC_TEXT;
      } else if (c == '\'' || c == '"') {
        xs->scan = SC_QUOTE;
        xs->scan_quote = (uint8_t)c;
      } else if (c == '=' && ++xs->scan_attrs > xs->lim.max_attrs) {
        return i;
      }
      break;
    case SC_QUOTE:
      if ((uint8_t)c == xs->scan_quote) xs->scan = SC_TAG;
      break;
    case SC_ETAG:
    case SC_DECL:
      if (c == '>') xs->scan = SC_TEXT;
      break;
    case SC_PI:
      if (c == '>' && xs->scan_run) xs->scan = SC_TEXT;
      else xs->scan_run = c == '?';
      break;
    case SC_BANG:
      xs->scan = c == '-' ? SC_BANG_DASH : c == '[' ? SC_BANG_CDATA : c == '>' ? SC_TEXT : SC_DECL;
      xs->scan_run = 1;
      break;
    case SC_BANG_DASH:
      xs->scan = c == '-' ? SC_COMMENT : c == '>' ? SC_TEXT : SC_DECL;
      xs->scan_run = 0;
      break;
    case SC_BANG_CDATA:
      if (c == cdata[xs->scan_run]) {
        if (++xs->scan_run == sizeof cdata - 1) {
          xs->scan = SC_CDATA;
          xs->scan_run = 0;
        }
      } else {
        xs->scan = c == '>' ? SC_TEXT : SC_DECL;
      }
      break;
    case SC_COMMENT:
    case SC_CDATA: {
      char end = xs->scan == SC_COMMENT ? '-' : ']'; /* "-->", "]]>" */
      if (c == '>' && xs->scan_run >= 2) xs->scan = SC_TEXT;
      else if (c == end) xs->scan_run = xs->scan_run < 2 ? xs->scan_run + 1 : 2;
      else xs->scan_run = 0;
      break;
    }
    }
  }
  return n;
}

static void on_start(void *ctx, const xmlChar *localname, const xmlChar *prefix, const xmlChar *uri,
                     int nb_ns, const xmlChar **namespaces, int nb_attrs, int nb_defaulted,
                     const xmlChar **attrs) {
  xml_stream_t *xs = ((xmlParserCtxtPtr)ctx)->_private;
  if (halted(xs)) return;
  if (xs->resuming && xs->depth == 0) {
    xs->depth = 1; /* the synthetic open tag: state only, no event */
    return;
  }
  /* nb_attrs + nb_ns <= max_attrs: counted on the bytes (tag_scan) */
  if (xs->depth >= xs->lim.max_depth + 1) {
    fail(xs, XS_POLICY_VIOLATION, "elements nested too deep");
    return;
  }
  xnode_t *n = xnode_new(&xs->arena, (const char *)localname, ns_uri(&xs->arena, uri));
  if (xs->depth == 1) xs->root = n;
  /* libxml2 refuses a duplicate attribute or declaration, so every name is new:
   * appended without a lookup (xnode_set_attr's scan made this quadratic) */
  for (int i = 0; i < nb_ns; i++) {
    const char *p = (const char *)namespaces[2 * i], *u = ns_uri(&xs->arena, namespaces[2 * i + 1]);
    if (!p) {
      if (xs->depth == 0) xnode_append_attr(&xs->arena, n, "xmlns", u);
    } else {
      xnode_append_attr(&xs->arena, n, qname(&xs->arena, "xmlns", p), u);
    }
  }
  if (xs->depth == 0) record_header_ns(xs, nb_ns, namespaces);
  for (int i = 0; i < nb_attrs; i++) {
    const xmlChar **a = attrs + 5 * i;
    const char *name = a[1] ? qname(&xs->arena, (const char *)a[1], (const char *)a[0]) : (const char *)a[0];
    char *val = attr_value(&xs->arena, (const char *)a[3], (size_t)(a[4] - a[3]));
    xnode_append_attr(&xs->arena, n, name, val);
    /* A stanza must stand alone: its prefixed attributes may use a prefix declared on
     * the stream header, and the stanza is forwarded without that header. Declare the
     * binding in effect on the element, or the serialised stanza breaks Namespaces in
     * XML 1.0 §4 "Prefix Declared" and the recipient's stream with it. Found by
     * fuzz_xml_stream (tests/fuzz/regress/xml_stream/header-prefix-attr). "xml" is
     * bound by definition. */
    if (xs->depth >= 1 && a[1] && a[2] && strcmp((const char *)a[1], "xml") != 0)
      declare_prefix(xs, (const char *)a[1], ns_uri(&xs->arena, a[2]));
  }
  if (xs->depth == 0) {
    xs->depth = 1;
    record_resume(xs, localname, prefix, nb_ns, namespaces);
    if (xs->cbs.stream_start) xs->cbs.stream_start(xs->ud, n);
    arena_reset(&xs->arena);
    xs->pending = 0;
    return;
  }
  if (xs->cur) xnode_append(xs->cur, n);
  xs->cur = n;
  xs->depth++;
}

static void on_end(void *ctx, const xmlChar *localname, const xmlChar *prefix, const xmlChar *uri) {
  xml_stream_t *xs = ((xmlParserCtxtPtr)ctx)->_private;
  if (halted(xs)) return;
  if (xs->depth == 1) {
    xs->depth = 0;
    if (xs->cbs.stream_end) xs->cbs.stream_end(xs->ud);
    return;
  }
  xs->depth--;
  xnode_t *n = xs->cur;
  xs->cur = n->parent;
  if (xs->depth == 1) {
    xs->cur = NULL;
    if (xs->cbs.stanza) xs->cbs.stanza(xs->ud, n);
    arena_reset(&xs->arena);
    xs->pending = 0;
  }
}

static void on_chars(void *ctx, const xmlChar *ch, int len) {
  xml_stream_t *xs = ((xmlParserCtxtPtr)ctx)->_private;
  if (halted(xs)) return;
  if (xs->depth <= 1) {
    /* between stanzas only whitespace is allowed (keepalives) */
    for (int i = 0; i < len; i++)
      if (ch[i] != ' ' && ch[i] != '\t' && ch[i] != '\r' && ch[i] != '\n') {
        fail(xs, XS_BAD_FORMAT, "text at the stream level");
        return;
      }
    xs->pending = 0;
    return;
  }
  xnode_t *last = xs->cur->last;
  if (last && !last->name) {
    /* merge adjacent text (libxml2 delivers it in pieces) into a buffer that grows
     * geometrically, so a long text costs linear, not quadratic, arena space */
    size_t nl = last->text_len + (size_t)len;
    char *t = (char *)last->text;
    if (nl + 1 > xs->text_cap) {
      xs->text_cap = (nl + 1) * 2;
      t = arena_alloc(&xs->arena, xs->text_cap);
      memcpy(t, last->text, last->text_len);
    }
    memcpy(t + last->text_len, ch, (size_t)len);
    t[nl] = '\0';
    last->text = t;
    last->text_len = nl;
  } else {
    xnode_add_text(&xs->arena, xs->cur, (const char *)ch, (size_t)len);
    xs->text_cap = (size_t)len + 1;
  }
}

/* libxml2's push parser checks CDATA sections with a lighter decoder than the rest of
 * the input: it lets overlong forms through (0xC0 0xBC, an overlong '<', came out as
 * is). Such bytes are not UTF-8 (RFC 3629 §3; RFC 6120 §11.6: XMPP is UTF-8 only) and
 * would reach other clients inside forwarded stanzas, where a strict parser closes
 * the recipient's stream and a lenient one may read a '<'. Found by fuzz_xml_stream
 * (tests/fuzz/regress/xml_stream/cdata-overlong-utf8). libxml2 hands CDATA over in
 * whole characters, so each block is checked alone. */
static void on_cdata(void *ctx, const xmlChar *ch, int len) {
  xml_stream_t *xs = ((xmlParserCtxtPtr)ctx)->_private;
  if (halted(xs)) return;
  if (len > 0 && u8_check(ch, (size_t)len)) {
    fail(xs, XS_NOT_WELL_FORMED, "invalid UTF-8 in CDATA section");
    return;
  }
  on_chars(ctx, ch, len);
}

static void on_restricted(void *ctx, const char *what) {
  xml_stream_t *xs = ((xmlParserCtxtPtr)ctx)->_private;
  fail(xs, XS_RESTRICTED_XML, what);
}

static void on_internal_subset(void *ctx, const xmlChar *n, const xmlChar *e, const xmlChar *s) {
  on_restricted(ctx, "DOCTYPE");
}
static void on_entity_decl(void *ctx, const xmlChar *n, int t, const xmlChar *p, const xmlChar *s, xmlChar *c) {
  on_restricted(ctx, "entity declaration");
}
static void on_reference(void *ctx, const xmlChar *name) { on_restricted(ctx, "entity reference"); }
static xmlEntityPtr on_get_entity(void *ctx, const xmlChar *name) {
  /* predefined entities are resolved by libxml2 itself before this is asked */
  xmlEntityPtr pre = xmlGetPredefinedEntity(name);
  if (pre) return pre;
  on_restricted(ctx, "entity reference");
  return NULL;
}
static void on_comment(void *ctx, const xmlChar *v) { on_restricted(ctx, "comment"); }
static void on_pi(void *ctx, const xmlChar *t, const xmlChar *d) { on_restricted(ctx, "processing instruction"); }

static void on_serror(void *ud, xmlErrorPtr err) {
  xmlParserCtxtPtr ctxt = err ? err->ctxt : NULL;
  if (!ctxt || !ctxt->_private) return;
  xml_stream_t *xs = ctxt->_private;
  if (err->level < XML_ERR_ERROR) return;
  /* a DOCTYPE inside the stream is reported by libxml2 as a content error, before any
   * SAX callback: it is still a DTD, refused as restricted XML (RFC 6120 §11.1) */
  const xmlChar *cur = ctxt->input ? ctxt->input->cur : NULL;
  if (cur && ctxt->input->end - cur >= 9 && memcmp(cur, "<!DOCTYPE", 9) == 0) {
    fail(xs, XS_RESTRICTED_XML, "DOCTYPE");
    return;
  }
  fail(xs, XS_NOT_WELL_FORMED, err->message ? err->message : "not well-formed");
}

static xmlSAXHandler sax_handler;

void xml_stream_global_init(void) {
  xmlInitParser();
  memset(&sax_handler, 0, sizeof sax_handler);
  sax_handler.initialized = XML_SAX2_MAGIC;
  sax_handler.startElementNs = on_start;
  sax_handler.endElementNs = on_end;
  sax_handler.characters = on_chars;
  sax_handler.cdataBlock = on_cdata;
  sax_handler.internalSubset = on_internal_subset;
  sax_handler.externalSubset = on_internal_subset;
  sax_handler.entityDecl = on_entity_decl;
  sax_handler.reference = on_reference;
  sax_handler.getEntity = on_get_entity;
  sax_handler.getParameterEntity = on_get_entity;
  sax_handler.comment = on_comment;
  sax_handler.processingInstruction = on_pi;
  sax_handler.serror = on_serror;
}

static int make_parser(xml_stream_t *xs) {
  xs->ctxt = xmlCreatePushParserCtxt(&sax_handler, NULL, NULL, 0, NULL);
  if (!xs->ctxt) return XMPP_ERR;
  xs->ctxt->_private = xs;
  xs->ctxt->userData = xs->ctxt; /* SAX callbacks receive the context */
  /* XMPP is UTF-8 only (RFC 6120 §11.6): ignore any encoding declaration. */
  xmlCtxtUseOptions(xs->ctxt, XML_PARSE_NONET | XML_PARSE_IGNORE_ENC | XML_PARSE_NOXINCNODE);
  xmlSwitchEncoding(xs->ctxt, XML_CHAR_ENCODING_UTF8);
  return 0;
}

static void free_parser(xml_stream_t *xs) {
  if (!xs->ctxt) return;
  if (xs->ctxt->myDoc) xmlFreeDoc(xs->ctxt->myDoc);
  xmlFreeParserCtxt(xs->ctxt);
  xs->ctxt = NULL;
}

/* A new stream: the parser is made when its first byte arrives. */
static void new_stream(xml_stream_t *xs) {
  free_parser(xs);
  xfree(xs->resume);
  xs->resume = NULL;
  xs->depth = 0;
  xs->cur = NULL;
  xs->pending = 0;
  xs->restart = 0;
  xs->scan = SC_TEXT;
  xfree(xs->hdr_ns);
  xs->hdr_ns = NULL;
  xs->hdr_nns = 0;
  arena_free(&xs->arena);
}

/* Makes the parser for the next bytes: fresh at depth 0, or resumed inside the stream. */
static int wake(xml_stream_t *xs) {
  if (make_parser(xs)) return XMPP_ERR;
  if (xs->depth == 0) return 0;
  xs->depth = 0;
  xs->resuming = 1;
  int rc = xmlParseChunk(xs->ctxt, xs->resume, (int)strlen(xs->resume), 0);
  xs->resuming = 0;
  return rc == 0 && xs->depth == 1 && !xs->failed ? 0 : XMPP_ERR;
}

/* Frees the parser if the stream is at a stanza boundary with nothing but whitespace
 * unparsed. */
int xml_stream_suspend(xml_stream_t *xs) {
  if (!xs->ctxt) return 1;
  if (xs->failed || xs->stopped || xs->depth != 1 || xs->cur || !xs->resume)
    return 0;
  xmlParserInputPtr in = xs->ctxt->input;
  if (!in || xs->ctxt->inputNr != 1 || xs->ctxt->nameNr != 1 || xs->ctxt->instate != XML_PARSER_CONTENT) return 0;
  for (const xmlChar *p = in->cur; p < in->end; p++)
    if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') return 0;
  free_parser(xs);
  arena_free(&xs->arena);
  xs->pending = 0;
  return 1;
}

void xml_stream_set_suspend(xml_stream_t *xs, int on) { xs->auto_suspend = on; }
int xml_stream_suspended(const xml_stream_t *xs) { return xs->ctxt == NULL; }

xml_stream_t *xml_stream_new(const xml_stream_limits_t *lim, const xml_stream_cbs_t *cbs, void *ud) {
  xml_stream_t *xs = xcalloc(1, sizeof *xs);
  xs->lim = *lim;
  xs->cbs = *cbs;
  xs->ud = ud;
  arena_init(&xs->arena);
  return xs;
}

void xml_stream_free(xml_stream_t *xs) {
  if (!xs) return;
  free_parser(xs);
  xfree(xs->resume);
  xfree(xs->hdr_ns);
  arena_free(&xs->arena);
  xfree(xs);
}

void xml_stream_restart(xml_stream_t *xs) {
  if (!xs->in_feed) {
    /* outside feed (e.g. an asynchronous SASL result): start the new stream now */
    new_stream(xs);
    return;
  }
  xs->restart = 1;
  xmlStopParser(xs->ctxt);
}

void xml_stream_stop(xml_stream_t *xs) {
  xs->stopped = 1;
  if (xs->ctxt) xmlStopParser(xs->ctxt);
}

int xml_stream_feed(xml_stream_t *xs, const char *data, size_t len) {
  if (xs->failed) return XMPP_EINVAL;
  if (len && !xs->stopped && !xs->ctxt && wake(xs) != 0) {
    xs->failed = 1;
    return XMPP_ERR;
  }
  while (len && !xs->stopped) {
    size_t n = len < SLICE ? len : SLICE;
    xs->pending += n;
    /* The stream header (depth 0) is bounded too: libxml2 buffers a start tag until it
     * is complete, and nothing else limited a header's attributes before on_start
     * (megabytes per connection, before authentication). */
    if (xs->pending > xs->lim.max_stanza_bytes + SLICE) {
      fail(xs, XS_POLICY_VIOLATION, xs->depth ? "stanza too large" : "stream header too large");
      return XMPP_EINVAL;
    }
    size_t ok = tag_scan(xs, data, n); /* < n: data[ok] is one attribute too many */
    xs->in_feed = 1;
    int rc = ok ? xmlParseChunk(xs->ctxt, data, (int)ok, 0) : 0;
    xs->in_feed = 0;
    if (xs->failed) return XMPP_EINVAL;
    if (xs->restart) {
      /* discard what follows the element that asked for the restart */
      new_stream(xs);
      return 0;
    }
    if (rc != 0 && !xs->stopped) {
      fail(xs, XS_NOT_WELL_FORMED, "not well-formed");
      return XMPP_EINVAL;
    }
    if (ok < n) {
      fail(xs, XS_POLICY_VIOLATION, "too many attributes");
      return xs->failed ? XMPP_EINVAL : 0;
    }
    data += n;
    len -= n;
  }
  if (xs->auto_suspend) xml_stream_suspend(xs);
  return 0;
}

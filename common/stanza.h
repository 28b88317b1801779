/* Stanza trees: built by the XML stream reader (edge) or decoded from a bus frame
 * (router), always inside an arena that owns every node and string.
 *
 * Namespaces are resolved: each element carries its namespace URI, and the serialiser
 * writes xmlns='...' only where an element's namespace differs from its parent's.
 * Prefixed attributes keep their qualified name (xml:lang), and declarations of
 * non-default prefixes are kept as "xmlns:p" attributes; the reader adds one for a prefix
 * that an attribute uses but that was declared outside the stanza (on the stream header),
 * so every stanza serialises as namespace-well-formed XML on its own.
 *
 * Two encodings: XML text (xnode_serialize, with escaping) for clients, and a compact
 * binary form (xnode_encode/xnode_decode) carried in bus frames, so a router reads a
 * stanza without parsing XML text. */
#ifndef XMPP_STANZA_H
#define XMPP_STANZA_H

#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "common/buf.h"

#define NS_CLIENT "jabber:client"
#define NS_XML "http://www.w3.org/XML/1998/namespace" /* the xml: prefix, always bound */
#define NS_STREAMS "http://etherx.jabber.org/streams"
#define NS_STREAM_ERR "urn:ietf:params:xml:ns:xmpp-streams"
#define NS_STANZA_ERR "urn:ietf:params:xml:ns:xmpp-stanzas"
#define NS_TLS "urn:ietf:params:xml:ns:xmpp-tls"
#define NS_SASL "urn:ietf:params:xml:ns:xmpp-sasl"
#define NS_SM "urn:xmpp:sm:3"
#define NS_SASL2 "urn:xmpp:sasl:2"   /* XEP-0388 */
#define NS_BIND2 "urn:xmpp:bind:0"   /* XEP-0386 */
#define NS_CARBONS2 "urn:xmpp:carbons:2"
#define NS_CSI "urn:xmpp:csi:0"
#define NS_BIND "urn:ietf:params:xml:ns:xmpp-bind"
#define NS_SESSION "urn:ietf:params:xml:ns:xmpp-session"
#define NS_ROSTER "jabber:iq:roster"
#define NS_DISCO_INFO "http://jabber.org/protocol/disco#info"
#define NS_DISCO_ITEMS "http://jabber.org/protocol/disco#items"
#define NS_PING "urn:xmpp:ping"
#define NS_VERSION "jabber:iq:version"
#define NS_DELAY "urn:xmpp:delay"
#define NS_OFFLINE "msgoffline"

typedef struct xnode xnode_t;
struct xnode {
  xnode_t *parent, *next, *children, *last;
  const char *name; /* element local name; NULL for a text node */
  const char *ns;   /* element namespace URI ("" when none) */
  const char *text; /* text node content (not NUL-terminated-safe: use text_len) */
  size_t text_len;
  const char **attrs; /* name0, value0, name1, value1, ... */
  uint32_t nattrs, attr_cap;
};

xnode_t *xnode_new(arena_t *a, const char *name, const char *ns);
xnode_t *xnode_new_text(arena_t *a, const char *text, size_t len);
void xnode_append(xnode_t *parent, xnode_t *child);
/* Adds a child element and returns it. */
xnode_t *xnode_add(arena_t *a, xnode_t *parent, const char *name, const char *ns);
void xnode_add_text(arena_t *a, xnode_t *parent, const char *text, size_t len);

const char *xnode_attr(const xnode_t *n, const char *name);
/* Sets (replacing) or, with value NULL, removes an attribute. The strings are copied
 * into a; removing never allocates (a may then be NULL). */
void xnode_set_attr(arena_t *a, xnode_t *n, const char *name, const char *value);
/* Appends an attribute (strings copied into a) without looking for one of that name, in
 * amortised constant time: only for a name known to be absent (the XML reader's, whose
 * parser refuses duplicates; a copy of a node, which has none). xnode_set_attr scans
 * the attributes already there, so a loop of it is quadratic in their count. */
void xnode_append_attr(arena_t *a, xnode_t *n, const char *name, const char *value);

/* First child element with that name (NULL: any) and namespace (NULL: any). */
xnode_t *xnode_child(const xnode_t *n, const char *name, const char *ns);
xnode_t *xnode_first_elem(const xnode_t *n);
xnode_t *xnode_next_elem(const xnode_t *n);
size_t xnode_count_elems(const xnode_t *n);
/* Takes child c out of its parent (c stays in the arena). */
void xnode_remove(xnode_t *c);
/* Concatenated text of the direct text children, NUL-terminated, in the arena. */
char *xnode_text(arena_t *a, const xnode_t *n);
/* Deep copy into another arena. */
xnode_t *xnode_copy(arena_t *a, const xnode_t *n);

/* Appends the XML text of n to out. parent_ns is the default namespace in scope where n
 * is written (NS_CLIENT for stanzas inside a client stream). */
/* The error reply to stanza st (RFC 6120 §8.3): same name, attributes and payload,
 * type='error' and <error type='TYPE'><COND xmlns='...stanzas'/></error>; addresses are
 * the caller's. NULL when st is itself an error (never answer an error, §8.3.1). */
xnode_t *stanza_error_reply(arena_t *a, const xnode_t *st, const char *type, const char *cond);
void xnode_serialize(const xnode_t *n, const char *parent_ns, buf_t *out);
void xml_escape(buf_t *out, const char *s, size_t len, int in_attr);
/* Bytes xml_escape writes for s[0..len). */
size_t xml_escape_len(const char *s, size_t len, int in_attr);

/* Compact binary form. Decode checks every length against the input and nesting
 * against max_depth; returns 0 or XMPP_EINVAL. */
void xnode_encode(const xnode_t *n, buf_t *out);
int xnode_decode(arena_t *a, const uint8_t *p, size_t len, unsigned max_depth, xnode_t **out);

/* The top element of an encoded stanza without decoding it: its name and the value of
 * one attribute (attr_len 0 and attr NULL when absent). Pointers into p, not
 * NUL-terminated. 0, or XMPP_EINVAL when the head is malformed. */
typedef struct xnode_head {
  const char *name;
  size_t name_len;
  const char *attr;
  size_t attr_len;
} xnode_head_t;
int xnode_encoded_head(const uint8_t *p, size_t len, const char *attr, xnode_head_t *h);

/* Addresses written on the top element by xnode_serialize_encoded (lengths 0 = none). */
typedef struct xnode_addr {
  const char *from;
  size_t from_len;
  const char *to;
  size_t to_len;
} xnode_addr_t;
/* Serialises an encoded element (xnode_encode) straight to XML, as xnode_serialize would
 * the decoded tree, with addr's from/to on the top element (replacing the payload's own).
 * Validates as xnode_decode does; on XMPP_EINVAL nothing is appended. */
int xnode_serialize_encoded(const uint8_t *p, size_t len, const char *parent_ns, const xnode_addr_t *addr,
                            unsigned max_depth, buf_t *out);

#endif

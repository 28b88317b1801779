/* The XML stream reader: libxml2's SAX2 push parser fed with whatever bytes arrive,
 * producing the stream header, then one stanza tree at a time, then the stream end.
 *
 * Protocol code never touches a socket: the owner calls xml_stream_feed() with bytes
 * and gets callbacks synchronously from inside feed. Inputs may be split anywhere.
 * Hostile input is bounded here: stanza bytes, element depth and attribute count
 * (namespace declarations included, counted before libxml2 parses the tag) are
 * capped; DOCTYPE, entity declarations and references, comments and processing
 * instructions are refused (RFC 6120 §11.1) and entities are never expanded.
 * After an error callback the stream is dead: feed returns XMPP_EINVAL.
 * One owner thread. */
#ifndef XMPP_XML_STREAM_H
#define XMPP_XML_STREAM_H

#include <stddef.h>

#include "common/arena.h"
#include "common/stanza.h"

typedef enum {
  XS_NOT_WELL_FORMED = 1, /* <not-well-formed/> */
  XS_RESTRICTED_XML,      /* <restricted-xml/>: DTD, entities, comments, PIs */
  XS_POLICY_VIOLATION,    /* <policy-violation/>: size, depth or attribute limits */
  XS_BAD_FORMAT,          /* <bad-format/>: e.g. stanza text at the stream level */
} xml_stream_err_t;

typedef struct xml_stream_limits {
  size_t max_stanza_bytes;
  unsigned max_depth; /* nesting below the stream element */
  unsigned max_attrs; /* attributes plus namespace declarations on one element */
} xml_stream_limits_t;

typedef struct xml_stream_cbs {
  /* The <stream:stream> open tag: header->name/ns are the element's, its attributes are
   * in header (plus "xmlns" holding the default namespace declared on it, if any). */
  void (*stream_start)(void *ud, const xnode_t *header);
  /* One complete stanza. It and its arena are valid until the callback returns. */
  void (*stanza)(void *ud, xnode_t *stanza);
  /* </stream:stream> */
  void (*stream_end)(void *ud);
  void (*error)(void *ud, xml_stream_err_t err, const char *detail);
} xml_stream_cbs_t;

typedef struct xml_stream xml_stream_t;

/* Call once per process, from the main thread, before any stream is made. */
void xml_stream_global_init(void);

xml_stream_t *xml_stream_new(const xml_stream_limits_t *lim, const xml_stream_cbs_t *cbs, void *ud);
void xml_stream_free(xml_stream_t *xs);
/* Feeds bytes. Returns 0, or XMPP_EINVAL once the stream has failed. When a callback
 * asked for a restart (xml_stream_restart), the bytes after the element that triggered
 * it are discarded (RFC 6120 §5.4.3.3 and §6.4.6: the peer must wait for our answer). */
int xml_stream_feed(xml_stream_t *xs, const char *data, size_t len);
/* Requests a fresh stream (after STARTTLS or SASL success). Safe inside callbacks. */
void xml_stream_restart(xml_stream_t *xs);
/* Suspension: between stanzas a stream may drop its libxml2 parser; it is re-created,
 * invisibly, when bytes arrive. xml_stream_suspend does it now if the stream is at a
 * stanza boundary (returns 1 when the stream holds no parser afterwards). Automatic
 * suspension (off by default) does it at the end of every feed: cheapest in memory,
 * but a busy stream then pays a parser creation per read, so the edge instead suspends
 * streams that have been idle for a while (its sweep). */
int xml_stream_suspend(xml_stream_t *xs);
void xml_stream_set_suspend(xml_stream_t *xs, int on);
/* 1 when the stream holds no parser now (suspended, or no byte of the stream yet). */
int xml_stream_suspended(const xml_stream_t *xs);
/* Stops delivering callbacks (e.g. the owner is closing). Safe inside callbacks. */
void xml_stream_stop(xml_stream_t *xs);

#endif

/* bench/xscan.c: the bench's incremental top-level stanza scanner, fed whole and split
 * at every byte. */
#include <criterion/criterion.h>
#include <string.h>

#include "bench/xscan.h"

static const char STREAM[] =
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' id='a>b' from='localhost' version='1.0'>"
    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    "<mechanism>PLAIN</mechanism></mechanisms></stream:features>"
    "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    "<message from='user2@localhost/bench' to=\"user1@localhost/bench\" type='chat'>"
    "<body>T=123 x&gt;y</body></message>"
    "\n <presence from='a@localhost/r'><show>away</show><status attr='/>'>T=9</status></presence>"
    "<iq type='result' id='bind1'/>"
    "</stream:stream>";

static const char *const WANT[] = {"stream:features", "success", "message", "presence", "iq"};

/* Feeds STREAM in chunks of at most step bytes, the way the bench's connection does
 * (append, scan, release); returns the number of stanzas seen. */
static int run(size_t step) {
  char buf[sizeof STREAM];
  size_t len = 0, fed = 0;
  xscan_t s;
  xscan_init(&s);
  int stanzas = 0, opened = 0, closed = 0;
  while (fed < sizeof STREAM - 1) {
    size_t k = sizeof STREAM - 1 - fed < step ? sizeof STREAM - 1 - fed : step;
    memcpy(buf + len, STREAM + fed, k);
    len += k;
    fed += k;
    xs_event_t ev;
    size_t off, n;
    while (xscan_next(&s, buf, len, &ev, &off, &n)) {
      if (ev == XS_STREAM_OPEN) {
        opened++;
        cr_assert_eq(strncmp(buf + off, "<stream:stream", 14), 0);
      } else if (ev == XS_STREAM_CLOSE) {
        closed++;
      } else {
        const char *nm;
        size_t nl = xs_name(buf + off, n, &nm);
        cr_assert_lt(stanzas, 5);
        cr_assert_eq(nl, strlen(WANT[stanzas]), "step %zu stanza %d", step, stanzas);
        cr_assert_eq(memcmp(nm, WANT[stanzas], nl), 0);
        cr_assert_eq(buf[off + n - 1], '>');
        stanzas++;
      }
    }
    size_t drop = xscan_release(&s);
    memmove(buf, buf + drop, len - drop);
    len -= drop;
  }
  cr_assert_eq(opened, 1);
  cr_assert_eq(closed, 1, "step %zu", step);
  return stanzas;
}

Test(xscan, whole_and_split_at_every_size) {
  for (size_t step = 1; step <= sizeof STREAM; step++) cr_assert_eq(run(step), 5, "step %zu", step);
}

Test(xscan, extractors) {
  const char *m = "<message from='user2@localhost/bench' to=\"u1@localhost\" type='chat'>"
                  "<body>T=123 xx</body></message>";
  size_t n = strlen(m);
  const char *v;
  size_t vl;
  cr_assert(xs_attr(m, n, "from", &v, &vl));
  cr_assert_eq(vl, strlen("user2@localhost/bench"));
  cr_assert_eq(memcmp(v, "user2@localhost/bench", vl), 0);
  cr_assert(xs_attr(m, n, "to", &v, &vl));
  cr_assert_eq(memcmp(v, "u1@localhost", vl), 0);
  cr_assert(!xs_attr(m, n, "id", &v, &vl));
  cr_assert(!xs_attr(m, n, "body", &v, &vl)); /* only the top tag */
  cr_assert(xs_text(m, n, "<body", &v, &vl));
  cr_assert_eq(vl, 8);
  cr_assert_eq(memcmp(v, "T=123 xx", 8), 0);
  const char *e = "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>";
  cr_assert_eq(xs_first_child(e, strlen(e), &v), 8);
  cr_assert_eq(memcmp(v, "conflict", 8), 0);
  const char *f = "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>";
  cr_assert_eq(xs_first_child(f, strlen(f), &v), strlen("not-authorized"));
  /* a tag that merely starts like the wanted one is skipped */
  const char *b = "<x><bodyx>no</bodyx><body>yes</body></x>";
  cr_assert(xs_text(b, strlen(b), "<body", &v, &vl));
  cr_assert_eq(vl, 3);
  cr_assert_eq(memcmp(v, "yes", 3), 0);
  const char *s = "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>";
  cr_assert(xs_text(s, strlen(s), "<success", &v, &vl));
  cr_assert_eq(vl, 0);
}

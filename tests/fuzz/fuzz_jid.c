/* libFuzzer target: JID parsing and normalisation (common/jid.c, RFC 7622).
 *
 * Input: the JID string as received (any bytes).
 * Invariants when jid_parse() accepts it:
 *  - full == bare ["/" resource], bare == [local "@"] domain, parts 1..1023 octets,
 *    valid UTF-8 without NUL;
 *  - normalisation is idempotent (RFC 8264 §7: applying the rules again must not change
 *    the string): parsing full again succeeds and gives the same parts, and each part
 *    re-prepared alone is unchanged;
 *  - the normalised local and domain parts hold no separator ('@', '/'), so the full JID
 *    splits back into the same parts.
 * Whatever the input, jid_parse() leaves *out zeroed on failure. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/jid.h"

static void die(const char *what, const char *a, const char *b) {
  fprintf(stderr, "INVARIANT: %s: \"%s\" vs \"%s\"\n", what, a ? a : "(null)", b ? b : "(null)");
  abort();
}

static int streq(const char *a, const char *b) {
  if (!a || !b) return a == b;
  return strcmp(a, b) == 0;
}

static void check_part(const char *p, const char *what) {
  size_t n = strlen(p);
  if (n == 0 || n > JID_PART_MAX) die("part length out of 1..1023", what, p);
}

static void check_prep(int (*prep)(const char *, size_t, char **), const char *part,
                       const char *what) {
  char *again = NULL;
  if (prep(part, strlen(part), &again) != 0) die("part rejected when re-prepared", what, part);
  if (strcmp(again, part) != 0) die("part not stable under re-preparation", part, again);
  xfree(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  jid_t j;
  int rc = jid_parse((const char *)data, size, &j);
  if (rc != 0) {
    if (j.full || j.bare || j.local || j.domain || j.resource) die("not zeroed on failure", "", "");
    return 0;
  }
  check_part(j.domain, "domain");
  if (j.local) check_part(j.local, "local");
  if (j.resource) check_part(j.resource, "resource");
  if (j.local && (strchr(j.local, '@') || strchr(j.local, '/'))) die("separator in local", j.local, "");
  if (strchr(j.domain, '@') || strchr(j.domain, '/')) die("separator in domain", j.domain, "");

  char buf[3 * JID_PART_MAX + 8];
  snprintf(buf, sizeof buf, "%s%s%s", j.local ? j.local : "", j.local ? "@" : "", j.domain);
  if (strcmp(buf, j.bare) != 0) die("bare is not local@domain", j.bare, buf);
  snprintf(buf, sizeof buf, "%s%s%s", j.bare, j.resource ? "/" : "", j.resource ? j.resource : "");
  if (strcmp(buf, j.full) != 0) die("full is not bare/resource", j.full, buf);

  jid_t k;
  if (jid_parse(j.full, strlen(j.full), &k) != 0) die("normalised JID does not re-parse", j.full, "");
  if (!streq(j.full, k.full) || !streq(j.bare, k.bare) || !streq(j.local, k.local) ||
      !streq(j.domain, k.domain) || !streq(j.resource, k.resource))
    die("normalisation not idempotent", j.full, k.full);
  if (!jid_full_eq(&j, &k) || !jid_bare_eq(&j, &k)) die("eq disagrees", j.full, k.full);
  jid_free(&k);

  check_prep(jid_prep_domain, j.domain, "domain");
  if (j.local) check_prep(jid_prep_local, j.local, "local");
  if (j.resource) check_prep(jid_prep_resource, j.resource, "resource");
  jid_free(&j);
  return 0;
}

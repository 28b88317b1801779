#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/jid.h"
#include "support/cost.h"

static void assert_zeroed(const jid_t *j, const char *in) {
  cr_assert(!j->full && !j->bare && !j->local && !j->domain && !j->resource,
            "out not zeroed for \"%s\"", in);
}

static void assert_opt_str(const char *got, const char *want, const char *what, const char *in) {
  if (!want) {
    cr_assert_null(got, "%s of \"%s\": expected none, got \"%s\"", what, in, got ? got : "");
  } else {
    cr_assert_not_null(got, "%s of \"%s\": expected \"%s\", got none", what, in, want);
    cr_assert_str_eq(got, want, "%s of \"%s\"", what, in);
  }
}

/* Parses in and checks every field. */
static void expect_jid(const char *in, const char *full, const char *local, const char *domain,
                       const char *resource) {
  jid_t j;
  int rc = jid_parse(in, strlen(in), &j);
  cr_assert_eq(rc, 0, "\"%s\" should parse (rc %d)", in, rc);
  cr_assert_str_eq(j.full, full, "full of \"%s\"", in);
  assert_opt_str(j.local, local, "local", in);
  cr_assert_str_eq(j.domain, domain, "domain of \"%s\"", in);
  assert_opt_str(j.resource, resource, "resource", in);
  char bare[4096];
  snprintf(bare, sizeof bare, "%s%s%s", local ? local : "", local ? "@" : "", domain);
  cr_assert_str_eq(j.bare, bare, "bare of \"%s\"", in);
  /* normalisation is idempotent */
  jid_t k;
  cr_assert_eq(jid_parse(j.full, strlen(j.full), &k), 0, "re-parse of \"%s\"", j.full);
  cr_assert_str_eq(k.full, j.full, "re-parse of \"%s\"", j.full);
  cr_assert(jid_full_eq(&j, &k));
  jid_free(&k);
  jid_free(&j);
  assert_zeroed(&j, in);
}

static void expect_bad_n(const char *in, size_t len, const char *label) {
  jid_t j;
  memset(&j, 0xAB, sizeof j); /* must be zeroed on error */
  int rc = jid_parse(in, len, &j);
  cr_assert_eq(rc, XMPP_EINVAL, "\"%s\" should be rejected (rc %d)", label, rc);
  assert_zeroed(&j, label);
}

static void expect_bad(const char *in) { expect_bad_n(in, strlen(in), in); }

static char *repeat(char c, size_t n) {
  char *s = xmalloc(n + 1);
  memset(s, c, n);
  s[n] = '\0';
  return s;
}

/* ---------------------------------------------------- RFC 7622 §3.5 */

Test(jid, rfc7622_valid_examples) {
  expect_jid("juliet@example.com", "juliet@example.com", "juliet", "example.com", NULL);
  expect_jid("juliet@example.com/foo", "juliet@example.com/foo", "juliet", "example.com", "foo");
  expect_jid("juliet@example.com/foo bar", "juliet@example.com/foo bar", "juliet", "example.com",
             "foo bar");
  expect_jid("juliet@example.com/foo@bar", "juliet@example.com/foo@bar", "juliet", "example.com",
             "foo@bar");
  expect_jid("foo\\20bar@example.com", "foo\\20bar@example.com", "foo\\20bar", "example.com", NULL);
  expect_jid("fussball@example.com", "fussball@example.com", "fussball", "example.com", NULL);
  expect_jid("fu\xC3\x9F" "ball@example.com", "fu\xC3\x9F" "ball@example.com", "fu\xC3\x9F" "ball",
             "example.com", NULL);
  expect_jid("\xCF\x80@example.com", "\xCF\x80@example.com", "\xCF\x80", "example.com", NULL);
  /* Σ -> σ; σ and ς stay as they are */
  expect_jid("\xCE\xA3@example.com/foo", "\xCF\x83@example.com/foo", "\xCF\x83", "example.com",
             "foo");
  expect_jid("\xCF\x83@example.com/foo", "\xCF\x83@example.com/foo", "\xCF\x83", "example.com",
             "foo");
  expect_jid("\xCF\x82@example.com/foo", "\xCF\x82@example.com/foo", "\xCF\x82", "example.com",
             "foo");
  expect_jid("king@example.com/\xE2\x99\x9A", "king@example.com/\xE2\x99\x9A", "king",
             "example.com", "\xE2\x99\x9A");
  expect_jid("example.com", "example.com", NULL, "example.com", NULL);
  expect_jid("example.com/foobar", "example.com/foobar", NULL, "example.com", "foobar");
  expect_jid("a.example.com/b@example.net", "a.example.com/b@example.net", NULL, "a.example.com",
             "b@example.net");
}

Test(jid, rfc7622_invalid_examples) {
  expect_bad("juliet@@example.com");
  expect_bad("foo bar@example.com");
  expect_bad("henry\xE2\x85\xA3@example.com"); /* U+2163 ROMAN NUMERAL FOUR: HasCompat */
  expect_bad("\xE2\x99\x9A@example.com");      /* U+265A BLACK CHESS KING: symbol */
  expect_bad("@example.com");
  expect_bad("juliet@");
  expect_bad("juliet@example.com/");
  expect_bad("juliet@/foo");
  expect_bad("/foobar");
  expect_bad("@");
  expect_bad("/");
  expect_bad("");
  expect_bad_n(NULL, 0, "(null)");
}

/* ------------------------------------------------------------- localpart */

Test(jid, localpart_case_folding_resource_preserved) {
  expect_jid("JuLiet@Example.COM/Res", "juliet@example.com/Res", "juliet", "example.com", "Res");
  /* Non-ASCII upper case and NFC: "AME\u0301LIE" -> "amélie" (U+00E9) */
  expect_jid("AME\xCC\x81LIE@example.com", "am\xC3\xA9lie@example.com", "am\xC3\xA9lie",
             "example.com", NULL);
  /* Fullwidth letters are width-mapped, then lower-cased */
  expect_jid("\xEF\xBC\xAA\xEF\xBD\x95\xEF\xBD\x8C@example.com", "jul@example.com", "jul",
             "example.com", NULL);
  /* Final sigma follows Unicode toLowerCase: ΣΑΣ -> σας */
  expect_jid("\xCE\xA3\xCE\x91\xCE\xA3@example.com", "\xCF\x83\xCE\xB1\xCF\x82@example.com",
             "\xCF\x83\xCE\xB1\xCF\x82", "example.com", NULL);
}

Test(jid, localpart_forbidden_ascii) {
  const char *bad[] = {"a\"b@x.example", "a&b@x.example", "a'b@x.example", "a:b@x.example",
                       "a<b@x.example",  "a>b@x.example", "a\tb@x.example", "a\x7f" "b@x.example",
                       /* U+FF20 FULLWIDTH COMMERCIAL AT is width-mapped to '@' */
                       "a\xEF\xBC\xA0" "b@x.example"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) expect_bad(bad[i]);
  expect_jid("a+b.c_d!#$%*=?^`{|}~@x.example", "a+b.c_d!#$%*=?^`{|}~@x.example",
             "a+b.c_d!#$%*=?^`{|}~", "x.example", NULL);
}

Test(jid, localpart_precis_identifier_class) {
  expect_jid("\xE7\x94\xA8\xE6\x88\xB7@example.com", "\xE7\x94\xA8\xE6\x88\xB7@example.com",
             "\xE7\x94\xA8\xE6\x88\xB7", "example.com", NULL); /* 用户 */
  expect_jid("\xED\x95\x9C@example.com", "\xED\x95\x9C@example.com", "\xED\x95\x9C",
             "example.com", NULL);            /* 한 (precomposed syllable) */
  expect_bad("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB@example.com"); /* conjoining jamo: OldHangulJamo */
  expect_bad("a\xC2\xA0" "b@example.com");     /* U+00A0: HasCompat/Spaces */
  expect_bad("a\xE2\x80\x8B" "b@example.com"); /* U+200B: default ignorable */
  expect_bad("\xCD\xB8@example.com");          /* U+0378: unassigned */
  expect_bad("\xEE\x80\x80@example.com");      /* U+E000: private use */
  expect_bad("\xEF\xB7\x90@example.com");      /* U+FDD0: noncharacter */
  expect_bad("a\xC2\x85" "b@example.com");     /* U+0085: control */
  expect_bad("\xE2\x84\xAB@example.com");      /* U+212B ANGSTROM SIGN: HasCompat */
  expect_bad("a\xE2\x80\xA8" "b@example.com"); /* U+2028: Zl */
  expect_bad("\xD9\x80@example.com");          /* U+0640 TATWEEL: exception, DISALLOWED */
  expect_bad("a\xE2\x82\xAC@example.com");     /* U+20AC: symbol */
}

Test(jid, localpart_contextual_rules) {
  /* A.3 MIDDLE DOT only between two 'l' */
  expect_jid("l\xC2\xB7l@example.com", "l\xC2\xB7l@example.com", "l\xC2\xB7l", "example.com",
             NULL);
  expect_bad("a\xC2\xB7" "b@example.com");
  /* A.2 ZWJ only after a virama (U+094D) */
  expect_jid("\xE0\xA4\x95\xE0\xA5\x8D\xE2\x80\x8D@example.com",
             "\xE0\xA4\x95\xE0\xA5\x8D\xE2\x80\x8D@example.com",
             "\xE0\xA4\x95\xE0\xA5\x8D\xE2\x80\x8D", "example.com", NULL);
  expect_bad("a\xE2\x80\x8D" "b@example.com");
  /* A.1 ZWNJ between dual-joining Arabic letters (beh ZWNJ beh) */
  expect_jid("\xD8\xA8\xE2\x80\x8C\xD8\xA8@example.com",
             "\xD8\xA8\xE2\x80\x8C\xD8\xA8@example.com", "\xD8\xA8\xE2\x80\x8C\xD8\xA8",
             "example.com", NULL);
  expect_bad("a\xE2\x80\x8C" "b@example.com");
  /* A.4 KERAIA must precede a Greek character */
  expect_jid("\xCD\xB5\xCE\xB1@example.com", "\xCD\xB5\xCE\xB1@example.com", "\xCD\xB5\xCE\xB1",
             "example.com", NULL);
  expect_bad("\xCD\xB5" "a@example.com");
  /* A.8/A.9 Arabic-Indic digits of both kinds may not mix */
  expect_jid("\xD8\xA8\xD9\xA1@example.com", "\xD8\xA8\xD9\xA1@example.com", "\xD8\xA8\xD9\xA1",
             "example.com", NULL);
  expect_bad("\xD8\xA8\xD9\xA1\xDB\xB1@example.com");
}

Test(jid, localpart_bidi_rule) {
  /* שלום */
  expect_jid("\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D@example.com",
             "\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D@example.com", "\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D",
             "example.com", NULL);
  expect_bad("a\xD7\xA9@example.com"); /* LTR then RTL */
  expect_bad("1\xD7\xA9@example.com"); /* first character EN */
  /* No RTL characters: no Bidi Rule, digits may lead */
  expect_jid("1abc@example.com", "1abc@example.com", "1abc", "example.com", NULL);
}

/* ---------------------------------------------------------- resourcepart */

Test(jid, resourcepart_opaque_string) {
  /* non-ASCII spaces map to U+0020; case and compatibility characters kept */
  expect_jid("a@example.com/Foo\xC2\xA0" "Bar\xE2\x80\x83" "Baz", "a@example.com/Foo Bar Baz", "a",
             "example.com", "Foo Bar Baz");
  expect_jid("a@example.com/\xE2\x85\xA3", "a@example.com/\xE2\x85\xA3", "a", "example.com",
             "\xE2\x85\xA3");
  /* NFC: e + U+0301 -> U+00E9 */
  expect_jid("a@example.com/e\xCC\x81", "a@example.com/\xC3\xA9", "a", "example.com", "\xC3\xA9");
  /* leading/trailing ASCII spaces, '/' and '@' are opaque */
  expect_jid("a@example.com/ x/y@z ", "a@example.com/ x/y@z ", "a", "example.com", " x/y@z ");
  expect_bad("a@example.com/foo\x01");
  expect_bad("a@example.com/foo\x7f");
  expect_bad("a@example.com/foo\xE2\x80\x8B"); /* U+200B default ignorable */
  expect_bad("a@example.com/\xCD\xB8");        /* unassigned */
  expect_bad("a@example.com/\xEE\x80\x80");    /* private use */
}

/* ------------------------------------------------------------ domainpart */

Test(jid, domain_trailing_dot) {
  expect_jid("juliet@example.com./r", "juliet@example.com/r", "juliet", "example.com", "r");
  expect_jid("EXAMPLE.COM.", "example.com", NULL, "example.com", NULL);
  expect_jid("b\xC3\xBC" "cher.example\xE3\x80\x82", "b\xC3\xBC" "cher.example", NULL,
             "b\xC3\xBC" "cher.example", NULL); /* U+3002 ideographic full stop */
  expect_bad("example.com..");
  expect_bad(".");
  expect_bad("a@.");
  expect_bad(".example.com");
  expect_bad("a..example.com");
}

Test(jid, domain_ip_literals) {
  expect_jid("juliet@[2001:db8::1]/r", "juliet@[2001:db8::1]/r", "juliet", "[2001:db8::1]", "r");
  expect_jid("[::1]", "[::1]", NULL, "[::1]", NULL);
  expect_jid("a@[::1]./r", "a@[::1]/r", "a", "[::1]", "r");
  expect_jid("juliet@192.0.2.1", "juliet@192.0.2.1", "juliet", "192.0.2.1", NULL);
  expect_bad("juliet@[2001:db8::g]");
  expect_bad("juliet@[::1");
  expect_bad("juliet@[]");
  expect_bad("juliet@[192.0.2.1]");
  expect_bad("juliet@192.0.2.256"); /* not IPv4, and an all-numeric TLD */
  expect_bad("juliet@127.1");
}

Test(jid, domain_ldh) {
  expect_jid("a@Sub-1.Example.NET", "a@sub-1.example.net", "a", "sub-1.example.net", NULL);
  expect_jid("localhost", "localhost", NULL, "localhost", NULL);
  expect_bad("a@-bad.example.com");
  expect_bad("a@bad-.example.com");
  expect_bad("a@a_b.example.com");
  expect_bad("a@a b.example.com");
  expect_bad("a@ab--cd.example.com"); /* reserved LDH label */
  expect_bad("a@xn--abc.example.com"); /* invalid A-label */
  char *l63 = repeat('a', 63), *l64 = repeat('a', 64), buf[128];
  snprintf(buf, sizeof buf, "%s.example", l63);
  expect_jid(buf, buf, NULL, buf, NULL);
  snprintf(buf, sizeof buf, "%s.example", l64);
  expect_bad(buf);
  xfree(l63);
  xfree(l64);
}

Test(jid, domain_idn) {
  expect_jid("juliet@B\xC3\xBC" "cher.example", "juliet@b\xC3\xBC" "cher.example", "juliet",
             "b\xC3\xBC" "cher.example", NULL);
  expect_jid("juliet@XN--BCHER-KVA.example/r", "juliet@b\xC3\xBC" "cher.example/r", "juliet",
             "b\xC3\xBC" "cher.example", "r"); /* A-label -> U-label */
  /* fullwidth ｅｘａｍｐｌｅ．com */
  expect_jid("\xEF\xBD\x85\xEF\xBD\x98\xEF\xBD\x81\xEF\xBD\x8D\xEF\xBD\x90\xEF\xBD\x8C\xEF\xBD\x85"
             "\xEF\xBC\x8E" "com",
             "example.com", NULL, "example.com", NULL);
  expect_bad("\xE2\x99\x9A.example");         /* symbol: IDNA2008 DISALLOWED */
  expect_bad("a@b\xC3\xBC" "cher_x.example"); /* '_' in a U-label */
  expect_bad("a@b\xC3\xBC" "cher..example");
}

/* ---------------------------------------------------------------- limits */

Test(jid, part_lengths) {
  char *a1023 = repeat('a', 1023), *a1024 = repeat('a', 1024);
  char *buf = xmalloc(4096);
  jid_t j;

  snprintf(buf, 4096, "%s@example.com", a1023);
  cr_assert_eq(jid_parse(buf, strlen(buf), &j), 0);
  cr_assert_eq(strlen(j.local), 1023);
  jid_free(&j);
  snprintf(buf, 4096, "%s@example.com", a1024);
  expect_bad(buf);

  snprintf(buf, 4096, "a@example.com/%s", a1023);
  cr_assert_eq(jid_parse(buf, strlen(buf), &j), 0);
  cr_assert_eq(strlen(j.resource), 1023);
  jid_free(&j);
  snprintf(buf, 4096, "a@example.com/%s", a1024);
  expect_bad(buf);

  /* 1023-octet domain: 16 labels of 63 and 15 dots; one more octet is too long */
  char dom[1100] = "";
  for (int i = 0; i < 16; i++) {
    if (i) strcat(dom, ".");
    strncat(dom, a1023, 63);
  }
  cr_assert_eq(strlen(dom), 1023);
  snprintf(buf, 4096, "a@%s", dom);
  cr_assert_eq(jid_parse(buf, strlen(buf), &j), 0);
  cr_assert_str_eq(j.domain, dom);
  jid_free(&j);
  snprintf(buf, 4096, "a@b%s", dom);
  expect_bad(buf);
  /* ...but a trailing dot does not count */
  snprintf(buf, 4096, "a@%s.", dom);
  cr_assert_eq(jid_parse(buf, strlen(buf), &j), 0);
  jid_free(&j);

  /* Limits are in octets after normalisation: 512 x U+00E9 = 1024 octets */
  char *wide = xmalloc(2 * 512 + 32);
  for (int i = 0; i < 512; i++) memcpy(wide + 2 * i, "\xC3\xA9", 2);
  strcpy(wide + 1024, "@example.com");
  expect_bad(wide);
  strcpy(wide + 1022, "@example.com"); /* 511 x U+00E9 = 1022 octets */
  cr_assert_eq(jid_parse(wide, strlen(wide), &j), 0);
  jid_free(&j);

  xfree(wide);
  xfree(buf);
  xfree(a1023);
  xfree(a1024);
}

Test(jid, invalid_utf8_and_nul) {
  expect_bad("\xFF@example.com");
  expect_bad("\xC0\xAF@example.com");         /* overlong '/' */
  expect_bad("\xED\xA0\x80@example.com");     /* surrogate */
  expect_bad("juliet@example.com/\xC3");      /* truncated */
  expect_bad("juliet@exa\xF4\x90\x80\x80.com"); /* > U+10FFFF */
  expect_bad_n("jul\0iet@example.com", 19, "NUL in localpart");
  expect_bad_n("juliet@example.com/a\0b", 22, "NUL in resource");
  expect_bad_n("juliet@exa\0mple.com", 19, "NUL in domain");
}

/* ------------------------------------------------------------ comparison */

Test(jid, bare_and_full_eq) {
  jid_t a, b, c, d;
  cr_assert_eq(jid_parse("juliet@example.com/balcony", 26, &a), 0);
  cr_assert_eq(jid_parse("JULIET@EXAMPLE.COM./orchard", 27, &b), 0);
  cr_assert_eq(jid_parse("Juliet@Example.com/balcony", 26, &c), 0);
  cr_assert_eq(jid_parse("romeo@example.com/balcony", 25, &d), 0);
  cr_assert(jid_bare_eq(&a, &b));
  cr_assert_not(jid_full_eq(&a, &b));
  cr_assert(jid_full_eq(&a, &c));
  cr_assert(jid_bare_eq(&a, &c));
  cr_assert_not(jid_bare_eq(&a, &d));
  cr_assert_not(jid_full_eq(&a, &d));
  jid_free(&a);
  jid_free(&b);
  jid_free(&c);
  jid_free(&d);
  jid_free(&d); /* freeing a zeroed jid is harmless */
}

/* ------------------------------------------------------ part functions */

Test(jid, prep_functions) {
  char *o = (char *)"sentinel";
  cr_assert_eq(jid_prep_local("JuLiet", 6, &o), 0);
  cr_assert_str_eq(o, "juliet");
  xfree(o);
  cr_assert_eq(jid_prep_domain("Example.COM.", 12, &o), 0);
  cr_assert_str_eq(o, "example.com");
  xfree(o);
  cr_assert_eq(jid_prep_resource("Res", 3, &o), 0);
  cr_assert_str_eq(o, "Res");
  xfree(o);
  o = (char *)"sentinel";
  cr_assert_eq(jid_prep_local("", 0, &o), XMPP_EINVAL);
  cr_assert_null(o);
  o = (char *)"sentinel";
  cr_assert_eq(jid_prep_resource("", 0, &o), XMPP_EINVAL);
  cr_assert_null(o);
  o = (char *)"sentinel";
  cr_assert_eq(jid_prep_domain("", 0, &o), XMPP_EINVAL);
  cr_assert_null(o);
  cr_assert_eq(jid_prep_local("a@b", 3, &o), XMPP_EINVAL);
  cr_assert_null(o);
  /* a length shorter than the string is honoured */
  cr_assert_eq(jid_prep_domain("example.com/x", 11, &o), 0);
  cr_assert_str_eq(o, "example.com");
  xfree(o);
}

/* Found by fuzz_jid (tests/fuzz/regress/jid/alabel-not-lowercase): the A-label "xn--bce"
 * decodes to U+13EB (upper-case Cherokee since Unicode 8), which libidn2 accepts but the
 * domain mapping lower-cases to a code point it refuses, so the normalised JID could not
 * be parsed again. Such an A-label is refused; the normalisation is idempotent. */
Test(jid, alabel_whose_ulabel_is_not_in_mapped_form_is_refused) {
  expect_bad("xn--bce");
  expect_bad("user@xn--bce/res");
  expect_bad("\xe1\x8f\xab"); /* U+13EB itself */
  expect_jid("user@xn--bcher-kva.example", "user@b\xc3\xbc" "cher.example", "user",
             "b\xc3\xbc" "cher.example", NULL);
}

/* Issue 9 (class review): the contextual rules A.7 (KATAKANA MIDDLE DOT) and A.8/A.9
 * (Arabic-Indic digits) searched the whole string once per such code point: a
 * resourcepart of 1,362 U+30FB and one katakana letter took 29 ms to refuse, per JID,
 * and a client puts one in every stanza's 'to'. Now each string is searched once. */
static double prep_cpu(const char *cp, size_t reps, const char *tail) {
  char s[4100];
  size_t l = 0, cl = strlen(cp);
  for (size_t i = 0; i < reps; i++, l += cl) memcpy(s + l, cp, cl);
  memcpy(s + l, tail, strlen(tail));
  l += strlen(tail);
  double best = 0;
  for (int round = 0; round < 3; round++) {
    double t0 = cost_cpu_now();
    for (int k = 0; k < 20; k++) {
      char *out = NULL;
      jid_prep_resource(s, l, &out);
      xfree(out);
      jid_prep_local(s, l, &out);
      xfree(out);
    }
    double t = cost_cpu_now() - t0;
    if (round == 0 || t < best) best = t;
  }
  return best;
}

Test(jid, contextual_rules_cost_linear_time) {
  /* each against a string of the same length made of letters of the same script */
  double dots = prep_cpu("\xe3\x83\xbb", 1361, "\xe3\x82\xa2"), kana = prep_cpu("\xe3\x82\xa2", 1362, "");
  cr_assert_lt(dots / kana, 4.0, "U+30FB x 1361: %.1fx the cost of katakana letters", dots / kana);
  double digits = prep_cpu("\xd9\xa0", 2040, ""), letters = prep_cpu("\xd8\xa8", 2040, "");
  cr_assert_lt(digits / letters, 4.0, "U+0660 x 2040: %.1fx the cost of Arabic letters", digits / letters);
}

Test(jid, contextual_rules_still_apply) {
  char *out = NULL;
  /* A.7: U+30FB needs a Hiragana, Katakana or Han character somewhere in the string */
  cr_assert_eq(jid_prep_resource("a\xe3\x83\xbb" "b", 5, &out), XMPP_EINVAL);
  cr_assert_eq(jid_prep_resource("\xe3\x82\xa2\xe3\x83\xbb\xe3\x83\xbb", 9, &out), 0);
  xfree(out);
  /* A.8/A.9: Arabic-Indic and Extended Arabic-Indic digits do not mix */
  cr_assert_eq(jid_prep_resource("\xd9\xa0\xd9\xa1", 4, &out), 0);
  xfree(out);
  cr_assert_eq(jid_prep_resource("\xd9\xa0\xdb\xb1", 4, &out), XMPP_EINVAL);
}

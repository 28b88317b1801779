/* common/control.c: the text check every request field passes (UTF-8 without control
 * characters: it goes into XML text and log lines) and the JSON string escaping of the
 * answers and the audit lines. The socket itself: tests/integration/test_admin_socket.py. */
#include <criterion/criterion.h>
#include <string.h>

#include "common/control.h"

static int ok(const char *s) { return control_text_ok(s, strlen(s)); }

Test(control, text_accepts_utf8) {
  cr_assert(ok(""));
  cr_assert(ok("hello world"));
  cr_assert(ok("\xc3\xa9t\xc3\xa9"));          /* été */
  cr_assert(ok("\xe2\x82\xac"));               /* U+20AC */
  cr_assert(ok("\xf0\x9f\x98\x80"));           /* U+1F600 */
  cr_assert(ok("\xf4\x8f\xbf\xbd"));           /* U+10FFFD */
  cr_assert(ok("\xef\xbf\xbd"));               /* U+FFFD */
}

Test(control, text_refuses_controls_and_bad_utf8) {
  static const char *bad[] = {
      "a\tb", "a\nb", "a\rb", "\x01", "\x7f",   /* controls, DEL */
      "\x80", "\xbf", "\xc3", "\xe2\x82",        /* stray continuation, truncated */
      "\xc0\xaf", "\xe0\x80\xaf", "\xf0\x80\x80\xaf", /* overlong */
      "\xed\xa0\x80", "\xed\xbf\xbf",            /* surrogates */
      "\xf4\x90\x80\x80", "\xf8\x88\x80\x80\x80", /* past U+10FFFF, 5 bytes */
      "\xef\xbf\xbe", "\xef\xbf\xbf",            /* U+FFFE, U+FFFF: not XML characters */
      "ok\xc3",                                  /* cut at the end */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) cr_assert(!ok(bad[i]), "accepted case %zu", i);
  /* a NUL inside the given length is a control character too */
  cr_assert(!control_text_ok("a\0b", 3));
}

Test(control, json_string_escaping) {
  buf_t b;
  buf_init(&b);
  const char in[] = "a\"b\\c\n\x01\x7f\xc3\xa9";
  text_json_str(&b, in, sizeof in - 1);
  buf_putc(&b, '\0');
  cr_assert_str_eq((const char *)b.data, "\"a\\\"b\\\\c\\u000a\\u0001\\u007f\xc3\xa9\"");
  buf_free(&b);
}

/* ---- common/text.c, shared with scram.c and log.c ---- */

Test(control, text_helpers_shared) {
  cr_assert(text_utf8_valid((const unsigned char *)"\xf0\x9f\x98\x80", 4));
  cr_assert(!text_utf8_valid((const unsigned char *)"\xed\xa0\x80", 3));
  cr_assert(text_ct_equal((const unsigned char *)"abc", (const unsigned char *)"abc", 3));
  cr_assert(!text_ct_equal((const unsigned char *)"abc", (const unsigned char *)"abd", 3));
  char esc[7];
  cr_assert_eq(text_json_escape_byte('\n', esc), 6);
  cr_assert(!memcmp(esc, "\\u000a", 6));
  cr_assert_eq(text_json_escape_byte('a', esc), 1);
}

/* ---- common/control_http.c: the JSON body of an admin request ---- */

#include "common/control_http.h"
#include "common/alloc.h"

static int parse(const char *body, const char *params, char *f[7], int *argc, const char **why) {
  return control_http_parse_body(body, strlen(body), params, f, argc, why);
}

static void free_fields(char *f[7]) {
  for (int i = 0; i < 7; i++) xfree(f[i]);
}

Test(control_http, body_members_in_param_order) {
  char *f[7];
  int argc;
  const char *why;
  cr_assert_eq(parse(" { \"text\" : \"bye\\n\\u00e9\\ud83d\\ude00\\/\" , \"jid\":\"a@b\" } ", "jid,text", f, &argc, &why), 0);
  cr_assert_eq(argc, 2);
  cr_assert_str_eq(f[0], "a@b");
  cr_assert_str_eq(f[1], "bye\n\xc3\xa9\xf0\x9f\x98\x80/");
  free_fields(f);
  /* a later field without the earlier one: the earlier is "" */
  cr_assert_eq(parse("{\"text\":\"x\"}", "jid,text", f, &argc, &why), 0);
  cr_assert_eq(argc, 2);
  cr_assert_str_eq(f[0], "");
  free_fields(f);
  /* empty body, empty object: no field */
  cr_assert_eq(parse("", "jid", f, &argc, &why), 0);
  cr_assert_eq(argc, 0);
  cr_assert_eq(parse("{}", "jid", f, &argc, &why), 0);
  cr_assert_eq(argc, 0);
}

Test(control_http, body_refusals) {
  static const char *bad[] = {
      "[]", "{", "{\"jid\":1}", "{\"jid\":\"a\"", "{\"jid\":\"a\"} x", "{\"jid\":\"a\",}", "{\"jid\":\"a\",\"jid\":\"b\"}",
      "{\"other\":\"a\"}", "{\"jid\":\"\\ud800\"}", "{\"jid\":\"\\udc00\"}", "{\"jid\":\"a\\u0000b\"}",
      "{\"jid\":\"\\x\"}", "{\"jid\":\"tab\there\"}", "{\"jid\":null}", "{\"j\\u0000id\":\"a\"}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char *f[7];
    int argc = 5;
    const char *why = NULL;
    cr_assert_eq(parse(bad[i], "jid,text", f, &argc, &why), -1, "accepted case %zu", i);
    cr_assert_not_null(why);
    cr_assert_eq(argc, 0);
    for (int k = 0; k < 7; k++) cr_assert_null(f[k]);
  }
}

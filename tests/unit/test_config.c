#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/domains.h"
#include "common/err.h"

static int load(const char *text, xmpp_config_t *c, char **err) {
  *err = NULL;
  return config_load_buffer(c, text, strlen(text), "t", err);
}

Test(config, buffer_loads_like_a_file) {
  xmpp_config_t c;
  char *err;
  cr_assert_eq(load("; comment\n[server]\ndomain = example.org ; inline\n[limits]\nmax_depth = 12\n", &c, &err), 0,
               "%s", err ? err : "");
  cr_assert_str_eq(c.domain, "example.org");
  cr_assert_eq(c.max_depth, 12);
  cr_assert_str_eq(c.store_path, "xmppd.db");
  config_free(&c);
  cr_assert_eq(load("[limits]\nmax_depth = 100000\n", &c, &err), XMPP_EINVAL);
  cr_assert_not_null(strstr(err, "outside"), "%s", err);
  free(err);
  config_free(&c);
  cr_assert_eq(load("", &c, &err), 0);
  config_free(&c);
}

/* Found with fuzz_config (tests/fuzz/regress/config/long-line-*): inih cut lines longer
 * than its 200-byte buffer and parsed the tail as another line: the tail became another
 * option ("backend = evil") or, starting with a blank, a continuation that replaced
 * the value. Such a line is now an error. */
Test(config, line_too_long_is_refused_not_split) {
  char buf[1024], x[256];
  for (int n = 185; n <= 200; n++) {
    memset(x, 'x', (size_t)n);
    x[n] = '\0';
    snprintf(buf, sizeof buf, "[storage]\npath = /%s backend = evil\n[server]\ndomain = a.example\n", x);
    xmpp_config_t c;
    char *err;
    cr_assert_eq(load(buf, &c, &err), XMPP_EINVAL, "n=%d", n);
    cr_assert_not_null(strstr(err, "t:2: line longer than"), "n=%d: %s", n, err);
    cr_assert_str_eq(c.store_backend, "sqlite");
    free(err);
    config_free(&c);
  }
  /* the longest line that fits still works, with and without a final newline */
  memset(x, 'y', 191);
  x[191] = '\0';
  snprintf(buf, sizeof buf, "[storage]\npath = /%s\n", x); /* 199 bytes + LF */
  xmpp_config_t c;
  char *err;
  cr_assert_eq(load(buf, &c, &err), 0, "%s", err ? err : "");
  cr_assert_eq(strlen(c.store_path), 192);
  config_free(&c);
  buf[strlen(buf) - 1] = '\0';
  cr_assert_eq(load(buf, &c, &err), 0, "%s", err ? err : "");
  cr_assert_eq(strlen(c.store_path), 192);
  config_free(&c);
}

Test(config, nul_byte_is_refused) {
  static const char text[] = "[server]\ndomain = a\0b.example\n";
  xmpp_config_t c;
  char *err = NULL;
  cr_assert_eq(config_load_buffer(&c, text, sizeof text - 1, "t", &err), XMPP_EINVAL);
  cr_assert_not_null(strstr(err, "NUL"), "%s", err);
  free(err);
  config_free(&c);
}

/* Found by fuzz_config (tests/fuzz/regress/config/continuation-inline-comment): inih
 * does not strip an inline comment on a continuation line, so "domain" took the value
 * "x ; comment", which --print-config wrote as a line that loads as "x". Values the file
 * format cannot hold are refused, from the file and from --set alike. */
Test(config, values_the_file_cannot_hold_are_refused) {
  xmpp_config_t c;
  char *err;
  cr_assert_eq(load("[server]\ndomain = a.example ; c\n  log_level=wacom ; inline!\n", &c, &err), XMPP_EINVAL);
  cr_assert_not_null(strstr(err, "cannot be written"), "%s", err);
  free(err);
  config_free(&c);
  config_defaults(&c);
  const char *bad[] = {" lead", "trail ", "a ;b", "a\t;b", ";a", "a\nb", "a\rb", "\x7f"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err = NULL;
    cr_assert_eq(config_set(&c, "storage.path", bad[i], &err), XMPP_EINVAL, "'%s'", bad[i]);
    free(err);
  }
  const char *good[] = {"a;b", "/var/lib/x y/db", "a\tb", "#x"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    err = NULL;
    cr_assert_eq(config_set(&c, "storage.path", good[i], &err), 0, "'%s': %s", good[i], err ? err : "");
  }
  config_free(&c);
}

/* Virtual hosting: [domain NAME] sections, with keys or none (inih reports no empty
 * section: read_line registers it), then the domain table built from them. */
Test(config, domain_sections_and_their_table) {
  xmpp_config_t c;
  char *err;
  cr_assert_eq(load("[server]\ndomain = Example.NET\n[domain a.test]\ndisable = ping, version\nmax_resources = 3\n"
                    "[domain b.test]\n\n[domain A.test]\n",
                    &c, &err),
               0, "%s", err ? err : "");
  cr_assert_eq(c.nvhosts, 3);
  cr_assert_str_eq(c.vhosts[0].name, "a.test");
  cr_assert_str_eq(c.vhosts[0].disable, "ping, version");
  cr_assert_eq(c.vhosts[0].max_resources, 3);
  cr_assert_str_eq(c.vhosts[1].name, "b.test");
  cr_assert_str_eq(c.vhosts[1].cert, "");
  /* a.test and A.test are one domain once normalised: refused */
  domains_t *d = domains_build(&c, NULL, 0, &err);
  cr_assert_null(d);
  cr_assert_not_null(strstr(err, "listed twice"), "%s", err);
  free(err);
  config_free(&c);

  cr_assert_eq(load("[server]\ndomain = Example.NET\n[domain a.test]\nmax_resources = 3\n[domain b.test]\n"
                    "[domain example.net]\nmax_resources = 7\n",
                    &c, &err),
               0, "%s", err ? err : "");
  d = domains_build(&c, NULL, 0, &err);
  cr_assert_not_null(d, "%s", err ? err : "");
  cr_assert_eq(domains_count(d), 3); /* the default's own section adds to it */
  cr_assert_str_eq(domains_at(d, 0)->name, "example.net");
  cr_assert_eq(domains_at(d, 0)->max_resources, 7);
  cr_assert_eq(domains_lookup(d, "a.test", 6)->max_resources, 3);
  cr_assert_not_null(domains_lookup(d, "b.testX", 6));
  cr_assert_null(domains_lookup(d, "c.test", 6));
  cr_assert_null(domains_lookup(d, "a.tes", 5));
  domains_free(d);
  config_free(&c);
}

Test(config, domain_section_names_bounded) {
  xmpp_config_t c;
  char *err, buf[256];
  /* 42 bytes: "domain " + NAME is inih's 49 */
  snprintf(buf, sizeof buf, "[domain %s.test]\n", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
  cr_assert_eq(load(buf, &c, &err), 0, "%s", err ? err : "");
  cr_assert_eq(strlen(c.vhosts[0].name), 42);
  config_free(&c);
  snprintf(buf, sizeof buf, "[domain %s.test]\n", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
  cr_assert_eq(load(buf, &c, &err), XMPP_EINVAL);
  cr_assert_not_null(strstr(err, "section name longer than 49 bytes"), "%s", err);
  free(err);
  config_free(&c);
  cr_assert_eq(load("[domain a b]\n", &c, &err), XMPP_EINVAL);
  cr_assert_not_null(strstr(err, "without blanks"), "%s", err);
  free(err);
  config_free(&c);
}

/* Per-domain limits: parsed, bounded, and carried into the table. */
Test(config, domain_limits_parsed_and_bounded) {
  xmpp_config_t c;
  char *err;
  cr_assert_eq(load("[domain a.test]\nmax_sessions = 10\nmax_accounts = 100000000\nrate_bytes = 0\nrate_stanzas = 7\n"
                    "[domain b.test]\n",
                    &c, &err),
               0, "%s", err ? err : "");
  cr_assert_eq(c.vhosts[0].max_sessions, 10);
  cr_assert_eq(c.vhosts[0].max_accounts, 100000000);
  cr_assert_eq(c.vhosts[0].rate_bytes, 0);
  cr_assert_eq(c.vhosts[0].rate_stanzas, 7);
  cr_assert_eq(c.vhosts[1].rate_bytes, -1, "unset: the global rate");
  domains_t *d = domains_build(&c, NULL, 0, &err);
  cr_assert_not_null(d, "%s", err ? err : "");
  const domain_t *a = domains_lookup(d, "a.test", 6);
  cr_assert_eq(a->max_sessions, 10);
  cr_assert_eq(a->rate_stanzas, 7);
  cr_assert_eq(domains_lookup(d, "b.test", 6)->rate_stanzas, -1);
  cr_assert_eq(domains_lookup(d, "localhost", 9)->max_sessions, 0);
  domains_free(d);
  config_free(&c);
  static const char *const bad[] = {"max_sessions = -1", "max_sessions = 10000001", "max_accounts = 100000001",
                                    "rate_bytes = -2",   "rate_stanzas = 1000001",  "max_sessions = 3x"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char text[128];
    snprintf(text, sizeof text, "[domain a.test]\n%s\n", bad[i]);
    cr_assert_eq(load(text, &c, &err), XMPP_EINVAL, "%s", bad[i]);
    cr_assert_not_null(strstr(err, "is not an integer in"), "%s", err);
    free(err);
    config_free(&c);
  }
}

/* What domain add checks before storing, and runtime domains in the table. */
Test(config, runtime_domain_checks_and_table) {
  xmpp_config_t c;
  char *err = NULL, *norm = NULL;
  cr_assert_eq(load("[domain Tmpl.test]\nmax_sessions = 4\ndisable = ping\n", &c, &err), 0, "%s", err ? err : "");
  cr_assert_eq(domain_spec_check(&c, "New.Test", "tmpl.TEST", "", "", &norm, &err), 0, "%s", err ? err : "");
  cr_assert_str_eq(norm, "new.test");
  free(norm);
  char n253[260], n254[260];
  n253[0] = '\0';
  for (int i = 0; i < 4; i++) strcat(n253, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.");
  memcpy(n254, n253, strlen(n253) + 1);
  strcat(n254, "bb");
  strcat(n253, "b");
  cr_assert_eq(strlen(n253), 253);
  cr_assert_eq(domain_spec_check(&c, n253, "", "", "", &norm, &err), 0, "%s", err ? err : "");
  free(norm);
  static const struct {
    const char *name, *tmpl, *cert, *key, *msg;
  } bad[] = {
      {"", "", "", "", "1 to 253"},
      {NULL, "", "", "", "1 to 253"}, /* n254 */
      {"bad..name", "", "", "", "not a valid domain name"},
      {"192.168.0.1", "", "", "", "not a valid domain name"},
      {"[::1]", "", "", "", "not a valid domain name"},
      {"a b.test", "", "", "", "not a valid domain name"},
      {"x.test", "nosuch.test", "", "", "no [domain nosuch.test] section"},
      {"x.test", "", "/c.pem", "", "together"},
      {"x.test", "", "", "/k.pem", "together"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err = NULL;
    norm = (char *)"x";
    cr_assert_eq(domain_spec_check(&c, bad[i].name ? bad[i].name : n254, bad[i].tmpl, bad[i].cert, bad[i].key, &norm,
                                   &err),
                 XMPP_EINVAL, "%zu", i);
    cr_assert_null(norm);
    cr_assert_not_null(strstr(err, bad[i].msg), "%zu: %s", i, err);
    free(err);
  }
  /* the table: a runtime domain takes its template's settings; one named in the file is
   * left to the file; a template gone: the defaults */
  domain_spec_t rt[] = {{"new.test", "tmpl.test", "", ""}, {"TMPL.test", "", "", ""}, {"old.test", "gone.test", "", ""}};
  domains_t *d = domains_build_ex(&c, rt, 3, NULL, 0, &err);
  cr_assert_not_null(d, "%s", err ? err : "");
  cr_assert_eq(domains_count(d), 4);
  const domain_t *n = domains_lookup(d, "new.test", 8);
  cr_assert(n->runtime);
  cr_assert_str_eq(n->tmpl, "tmpl.test");
  cr_assert_eq(n->max_sessions, 4);
  cr_assert_eq(n->own_cert, 0);
  cr_assert(!domains_lookup(d, "tmpl.test", 9)->runtime);
  cr_assert_eq(domains_lookup(d, "old.test", 8)->max_sessions, 0);
  domains_free(d);
  config_free(&c);
}

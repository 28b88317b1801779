/* common/metrics.c: the exposition formatting (pure), the per-thread counters summed
 * across threads, metrics.listen parsing. The HTTP side: tests/integration/test_metrics.py. */
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

#include "common/metrics.h"

static char *render(int om) {
  buf_t b;
  buf_init(&b);
  metrics_out_t o = {&b, om};
  metrics_render(&o);
  buf_putc(&b, '\0');
  size_t n;
  return (char *)buf_steal(&b, &n);
}

static char *out_of(void (*fn)(metrics_out_t *), int om) {
  buf_t b;
  buf_init(&b);
  metrics_out_t o = {&b, om};
  fn(&o);
  buf_putc(&b, '\0');
  size_t n;
  return (char *)buf_steal(&b, &n);
}

static void a_counter(metrics_out_t *o) {
  metrics_family(o, "x_hits_total", "counter", "Hits \\ with\nnewline and \"quotes\"");
  metrics_sample_u64(o, "x_hits_total", "a=\"1\"", 18446744073709551615ull);
}

Test(metrics, family_names_per_format) {
  char *t = out_of(a_counter, 0);
  cr_assert_str_eq(t, "# HELP x_hits_total Hits \\\\ with\\nnewline and \"quotes\"\n# TYPE x_hits_total counter\n"
                      "x_hits_total{a=\"1\"} 18446744073709551615\n");
  free(t);
  /* OpenMetrics: the family is named without _total, and quotes in HELP are escaped */
  t = out_of(a_counter, 1);
  cr_assert_str_eq(t, "# HELP x_hits Hits \\\\ with\\nnewline and \\\"quotes\\\"\n# TYPE x_hits counter\n"
                      "x_hits_total{a=\"1\"} 18446744073709551615\n");
  free(t);
}

static void samples(metrics_out_t *o) {
  metrics_sample(o, "g", NULL, -3);
  metrics_sample(o, "g", "", 0.25);
  metrics_sample(o, "g", NULL, 1.0 / 0.0);
  metrics_sample(o, "g", NULL, 1e300);
}

Test(metrics, sample_values) {
  char *t = out_of(samples, 0);
  cr_assert_str_eq(t, "g -3\ng 0.25\ng +Inf\ng 1.0000000000000001e+300\n");
  free(t);
}

Test(metrics, label_escape) {
  buf_t b;
  buf_init(&b);
  metrics_escape_label(&b, "a\"b\\c\nd");
  buf_putc(&b, '\0');
  cr_assert_str_eq((char *)b.data, "a\\\"b\\\\c\\nd");
  buf_free(&b);
}

Test(metrics, stanza_kinds) {
  cr_assert_eq(metrics_kind("message"), METRICS_MESSAGE);
  cr_assert_eq(metrics_kind("presence"), METRICS_PRESENCE);
  cr_assert_eq(metrics_kind("iq"), METRICS_IQ);
  cr_assert_eq(metrics_kind("iqq"), METRICS_OTHER);
  cr_assert_eq(metrics_kind(NULL), METRICS_OTHER);
  cr_assert_eq(metrics_kind_xml("<message to='a'>", 16), METRICS_MESSAGE);
  cr_assert_eq(metrics_kind_xml("<messages>", 10), METRICS_OTHER);
  cr_assert_eq(metrics_kind_xml("<presence/>", 11), METRICS_PRESENCE);
  cr_assert_eq(metrics_kind_xml("<iq>", 4), METRICS_IQ);
  cr_assert_eq(metrics_kind_xml("<iq", 3), METRICS_OTHER); /* never reads past n */
  cr_assert_eq(metrics_kind_xml("<a/>", 4), METRICS_OTHER);
}

#define PER_THREAD 100000

static void counting_thread(void *arg) {
  if (arg) metrics_thread_init(); /* else: the shared array */
  for (int i = 0; i < PER_THREAD; i++) {
    metrics_inc(M_LOGINS);
    metrics_add(M_SESS_BOUND, 1);
    metrics_add(M_SESS_BOUND, -1);
  }
}

Test(metrics, threads_sum) {
  uint64_t before = metrics_value(M_LOGINS);
  uv_thread_t t[6];
  for (int i = 0; i < 6; i++) cr_assert_eq(uv_thread_create(&t[i], counting_thread, i % 2 ? (void *)1 : NULL), 0);
  for (int i = 0; i < 6; i++) uv_thread_join(&t[i]);
  cr_assert_eq(metrics_value(M_LOGINS) - before, 6 * PER_THREAD);
  cr_assert_eq((int64_t)metrics_value(M_SESS_BOUND), 0);
  /* a gauge moved down on one thread and up on another still sums right */
  metrics_thread_init();
  metrics_add(M_SESS_DETACHED, -2);
  uv_thread_t u;
  uv_thread_create(&u, counting_thread, (void *)1);
  uv_thread_join(&u);
  metrics_add(M_SESS_DETACHED, 2);
  cr_assert_eq(metrics_value(M_SESS_DETACHED), 0);
  char *t2 = render(0);
  cr_assert_not_null(strstr(t2, "xmppd_sessions{state=\"detached\"} 0\n"), "%s", t2);
  free(t2);
}

Test(metrics, histogram_cumulative) {
  metrics_redis_rtt(METRICS_REDIS_CLUSTER, 50);      /* <= 0.0001 */
  metrics_redis_rtt(METRICS_REDIS_CLUSTER, 100);     /* on the bound: the same bucket */
  metrics_redis_rtt(METRICS_REDIS_CLUSTER, 3000);    /* <= 0.005 */
  metrics_redis_rtt(METRICS_REDIS_CLUSTER, 9000000); /* +Inf */
  char *t = render(1);
  cr_assert_not_null(strstr(t, "# TYPE xmppd_redis_rtt_seconds histogram\n"));
  cr_assert_not_null(strstr(t, "xmppd_redis_rtt_seconds_bucket{client=\"cluster\",le=\"0.0001\"} 2\n"), "%s", t);
  cr_assert_not_null(strstr(t, "xmppd_redis_rtt_seconds_bucket{client=\"cluster\",le=\"0.0025\"} 2\n"));
  cr_assert_not_null(strstr(t, "xmppd_redis_rtt_seconds_bucket{client=\"cluster\",le=\"0.005\"} 3\n"));
  cr_assert_not_null(strstr(t, "xmppd_redis_rtt_seconds_bucket{client=\"cluster\",le=\"2.5\"} 3\n"));
  cr_assert_not_null(strstr(t, "xmppd_redis_rtt_seconds_bucket{client=\"cluster\",le=\"+Inf\"} 4\n"));
  cr_assert_not_null(strstr(t, "xmppd_redis_rtt_seconds_count{client=\"cluster\"} 4\n"));
  cr_assert_not_null(strstr(t, "xmppd_redis_rtt_seconds_sum{client=\"cluster\"} 9.0031499999999998\n"), "%s", t);
  cr_assert_not_null(strstr(t, "xmppd_redis_rtt_seconds_count{client=\"store\"} 0\n"));
  cr_assert(strlen(t) > 6 && !strcmp(t + strlen(t) - 6, "# EOF\n"));
  free(t);
}

static int srcs_called;
static void a_source(metrics_out_t *o, void *ud) {
  srcs_called++;
  metrics_family(o, "x_src", "gauge", "a source");
  metrics_sample(o, "x_src", NULL, *(int *)ud);
}

Test(metrics, sources_and_blocks) {
  int v = 7;
  metrics_source_add(a_source, &v);
  metrics_block_t *blk = metrics_block_new();
  buf_t a, b;
  buf_init(&a);
  buf_init(&b);
  buf_puts(&a, "# TYPE y_total counter\ny_total 1\n");
  buf_puts(&b, "# TYPE y counter\ny_total 1\n");
  metrics_block_set(blk, &a, &b);
  char *t = render(0), *om = render(1);
  cr_assert_not_null(strstr(t, "x_src 7\n# TYPE y_total counter\ny_total 1\n"), "%s", t);
  cr_assert_not_null(strstr(om, "x_src 7\n# TYPE y counter\ny_total 1\n# EOF\n"), "%s", om);
  free(t);
  free(om);
  metrics_source_remove(a_source, &v);
  metrics_block_free(blk);
  t = render(0);
  cr_assert_null(strstr(t, "x_src"));
  cr_assert_null(strstr(t, "y_total"));
  cr_assert_eq(srcs_called, 2);
  free(t);
  buf_free(&a);
  buf_free(&b);
}

Test(metrics, parse_listen) {
  struct sockaddr_storage ss;
  int lo = -1;
  char *err = NULL;
  cr_assert_eq(metrics_parse_listen("127.0.0.1:9100", &ss, &lo, &err), 0);
  cr_assert_eq(ss.ss_family, AF_INET);
  cr_assert_eq(ntohs(((struct sockaddr_in *)&ss)->sin_port), 9100);
  cr_assert_eq(lo, 1);
  cr_assert_eq(metrics_parse_listen("127.8.9.1:1", &ss, &lo, &err), 0);
  cr_assert_eq(lo, 1);
  cr_assert_eq(metrics_parse_listen("0.0.0.0:9100", &ss, &lo, &err), 0);
  cr_assert_eq(lo, 0);
  cr_assert_eq(metrics_parse_listen("[::1]:9100", &ss, &lo, &err), 0);
  cr_assert_eq(ss.ss_family, AF_INET6);
  cr_assert_eq(lo, 1);
  cr_assert_eq(metrics_parse_listen("[::]:65535", &ss, &lo, &err), 0);
  cr_assert_eq(lo, 0);
  static const char *const bad[] = {"",           "9100",        ":9100",          "127.0.0.1:",   "127.0.0.1:0",
                                    "127.0.0.1:65536", "127.0.0.1:9x", "localhost:9100", "::1:9100",     "[::1]9100",
                                    "[127.0.0.1]:9100", "[::1]:",   "1.2.3.4.5:80"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    err = NULL;
    cr_assert_eq(metrics_parse_listen(bad[i], &ss, &lo, &err), -1, "%s", bad[i]);
    cr_assert_not_null(err);
    free(err);
  }
}

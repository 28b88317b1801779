/* libFuzzer target: the configuration file parser (common/config.c over inih).
 *
 * Input: the file's content.
 * Invariants:
 *  - config_load_buffer either accepts (every option within its table bounds) or
 *    refuses with an error message; nothing leaks either way (config_free);
 *  - no line is silently cut: an accepted file has no line longer than inih's buffer
 *    (199 bytes + LF) and no NUL byte (inih used to parse the tail of a long line as
 *    another line);
 *  - print/parse round trip: a configuration that was accepted, printed with
 *    config_print, loads again to a configuration that prints identically (what
 *    --check-config shows is what a restart would get). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/config.h"

static void die(const char *what, const char *a, const char *b) {
  fprintf(stderr, "INVARIANT: %s\n--- first\n%s\n--- second\n%s\n", what, a ? a : "", b ? b : "");
  abort();
}

static char *print(const xmpp_config_t *c, size_t *len) {
  char *s = NULL;
  FILE *f = open_memstream(&s, len);
  if (!f) abort();
  config_print(f, c);
  fclose(f);
  return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  xmpp_config_t c;
  char *err = NULL;
  int rc = config_load_buffer(&c, (const char *)data, size, "fuzz", &err);
  if (rc != 0) {
    if (!err) die("refused without a message", "", "");
    free(err);
    config_free(&c);
    return 0;
  }
  if (err) die("error message on success", err, "");
  if (memchr(data, 0, size)) die("NUL byte accepted", "", "");
  for (size_t i = 0, start = 0; i <= size; i++)
    if (i == size || data[i] == '\n') {
      if (i - start > 199) die("line longer than inih's buffer accepted", "", "");
      start = i + 1;
    }
  if (c.max_depth < 2 || c.max_depth > 200 || c.shards < 1 || c.c2s_port < 0 ||
      c.c2s_port > 65535 || !c.domain || !*c.domain || strlen(c.domain) > 1023)
    die("option outside its bounds", "", "");
  (void)config_validate(&c, &err);
  free(err);
  err = NULL;

  size_t l1, l2;
  char *p1 = print(&c, &l1);
  xmpp_config_t d;
  if (config_load_buffer(&d, p1, l1, "printed", &err) != 0) die("printed configuration refused", p1, err);
  char *p2 = print(&d, &l2);
  if (l1 != l2 || memcmp(p1, p2, l1)) die("printed configuration loads differently", p1, p2);
  free(p1);
  free(p2);
  config_free(&c);
  config_free(&d);
  return 0;
}

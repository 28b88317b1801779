/* HTTPS for the admin API and the metrics endpoint (common/http_tls.h). */
#include "common/http_tls.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"

/* GnuTLS priorities: its defaults, less everything before TLS 1.2. */
static const char PRIORITIES[] = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2";

static char *read_pem(const char *what, const char *kind, const char *path, size_t *len, char **err) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    *err = xstrfmt("%s.%s: cannot read %s: %s", what, kind, path, strerror(errno));
    return NULL;
  }
  char *b = xmalloc(HTTP_TLS_MAX_PEM + 1);
  size_t n = fread(b, 1, HTTP_TLS_MAX_PEM + 1, f);
  fclose(f);
  b[n > HTTP_TLS_MAX_PEM ? HTTP_TLS_MAX_PEM : n] = '\0';
  const char *bad = n > HTTP_TLS_MAX_PEM ? "larger than 256 KiB" : !strstr(b, "-----BEGIN ") ? "not PEM" : NULL;
  if (bad) {
    explicit_bzero(b, HTTP_TLS_MAX_PEM + 1);
    xfree(b);
    *err = xstrfmt("%s.%s: %s is %s", what, kind, path, bad);
    return NULL;
  }
  *len = n;
  return b;
}

int http_tls_load(http_tls_t *t, const char *what, const char *cert_path, const char *key_path, char **err) {
  memset(t, 0, sizeof *t);
  t->opts[0].option = MHD_OPTION_END;
  int have_cert = cert_path && *cert_path, have_key = key_path && *key_path;
  if (!have_cert && !have_key) return 0;
  if (have_cert != have_key) {
    *err = xstrfmt("%s.tls_cert and %s.tls_key must be set together", what, what);
    return -1;
  }
  size_t n;
  if (!(t->cert = read_pem(what, "tls_cert", cert_path, &n, err)) ||
      !(t->key = read_pem(what, "tls_key", key_path, &t->key_len, err))) {
    http_tls_free(t);
    return -1;
  }
  t->opts[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, t->cert};
  t->opts[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, t->key};
  t->opts[2] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)PRIORITIES};
  t->opts[3] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
  return 0;
}

unsigned http_tls_flags(const http_tls_t *t) { return t->cert ? MHD_USE_TLS : 0; }

void http_tls_free(http_tls_t *t) {
  if (t->key) explicit_bzero(t->key, t->key_len);
  xfree(t->key);
  xfree(t->cert);
  memset(t, 0, sizeof *t);
  t->opts[0].option = MHD_OPTION_END;
}

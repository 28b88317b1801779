/* Redis address parsing (see redis_addr.h). Moved out of store_redis.c unchanged in
 * behaviour so that the cluster client accepts the same syntax. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/err.h"
#include "common/redis_addr.h"

void redis_addr_free(redis_addr_t *a) {
  if (!a) return;
  xfree(a->host);
  xfree(a->unix_path);
  xfree(a->shown);
  if (a->password) {
    explicit_bzero(a->password, strlen(a->password));
    xfree(a->password);
  }
  memset(a, 0, sizeof *a);
}

int redis_addr_parse(redis_addr_t *a, const char *text, char **err) {
  memset(a, 0, sizeof *a);
  char *t = xstrdup(text ? text : "");
  char *save = NULL;
  int rc = XMPP_EINVAL;
  char *addr = strtok_r(t, " \t", &save);
  if (!addr) {
    *err = xstrfmt("redis address is empty");
    goto out;
  }
  /* Messages show the address token only: what follows may hold the password. */
  char shown[256];
  snprintf(shown, sizeof shown, "%s", addr);
  if (strncmp(addr, "unix:", 5) == 0) {
    if (!addr[5]) {
      *err = xstrfmt("redis address '%s': unix: needs a socket path", addr);
      goto out;
    }
    a->unix_path = xstrdup(addr + 5);
  } else {
    char *host = addr, *port = NULL;
    if (*addr == '[') {
      char *close = strchr(addr, ']');
      if (!close || (close[1] && close[1] != ':')) {
        *err = xstrfmt("redis address '%s': bad [IPv6]:PORT", addr);
        goto out;
      }
      *close = '\0';
      host = addr + 1;
      if (close[1] == ':') port = close + 2;
    } else {
      char *colon = strrchr(addr, ':');
      if (colon) {
        *colon = '\0';
        port = colon + 1;
      }
    }
    a->port = 6379;
    if (port) {
      char *end;
      long p = strtol(port, &end, 10);
      if (!*port || *end || p < 1 || p > 65535) {
        *err = xstrfmt("redis address '%s': bad port '%s'", shown, port);
        goto out;
      }
      a->port = (int)p;
    }
    if (!*host) {
      *err = xstrfmt("redis address '%s': no host", shown);
      goto out;
    }
    a->host = xstrdup(host);
  }
  char *opt;
  while ((opt = strtok_r(NULL, " \t", &save)) != NULL) {
    if (strncmp(opt, "db=", 3) == 0) {
      char *end;
      long d = strtol(opt + 3, &end, 10);
      if (!opt[3] || *end || d < 0 || d > 1000000) {
        *err = xstrfmt("redis address: bad %s", opt);
        goto out;
      }
      a->db = (int)d;
    } else if (strncmp(opt, "password=", 9) == 0 && opt[9]) {
      if (a->password) {
        explicit_bzero(a->password, strlen(a->password));
        xfree(a->password);
      }
      a->password = xstrdup(opt + 9);
    } else {
      *err = xstrfmt("redis address: unknown option '%.*s' (db=N, password=SECRET)",
                     (int)strcspn(opt, "="), opt);
      goto out;
    }
  }
  a->shown = a->unix_path ? xstrfmt("unix:%s db %d", a->unix_path, a->db)
                          : xstrfmt("%s:%d db %d", a->host, a->port, a->db);
  rc = 0;
out:
  explicit_bzero(t, strlen(text ? text : ""));
  xfree(t);
  if (rc != 0) redis_addr_free(a);
  return rc;
}

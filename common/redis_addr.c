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
  for (int i = 0; i < a->nseeds; i++) xfree(a->seed_host[i]);
  xfree(a->seed_host);
  xfree(a->seed_port);
  xfree(a->master);
  if (a->password) {
    explicit_bzero(a->password, strlen(a->password));
    xfree(a->password);
  }
  memset(a, 0, sizeof *a);
}

/* HOST:PORT | [IPV6]:PORT | HOST (port 6379) into *host (caller frees) and *port.
 * 0, or XMPP_EINVAL with *err naming shown. Modifies text. */
static int parse_hostport(char *addr, const char *shown, char **hostp, int *portp, char **err) {
  char *host = addr, *port = NULL;
  if (*addr == '[') {
    char *close = strchr(addr, ']');
    if (!close || (close[1] && close[1] != ':')) {
      *err = xstrfmt("redis address '%s': bad [IPv6]:PORT", shown);
      return XMPP_EINVAL;
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
  int pn = 6379;
  if (port) {
    char *end;
    long p = strtol(port, &end, 10);
    if (!*port || *end || p < 1 || p > 65535) {
      *err = xstrfmt("redis address '%s': bad port '%s'", shown, port);
      return XMPP_EINVAL;
    }
    pn = (int)p;
  }
  if (!*host) {
    *err = xstrfmt("redis address '%s': no host", shown);
    return XMPP_EINVAL;
  }
  *hostp = xstrdup(host);
  *portp = pn;
  return 0;
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
  if (strncmp(addr, "cluster:", 8) == 0 || strncmp(addr, "sentinel:", 9) == 0) {
    a->mode = addr[0] == 'c' ? REDIS_MODE_CLUSTER : REDIS_MODE_SENTINEL;
    char *list = addr + (a->mode == REDIS_MODE_CLUSTER ? 8 : 9);
    if (a->mode == REDIS_MODE_SENTINEL) {
      char *slash = strrchr(list, '/');
      if (!slash || !slash[1]) {
        *err = xstrfmt("redis address '%s': sentinel: needs /MASTERNAME after the sentinels", shown);
        goto out;
      }
      *slash = '\0';
      a->master = xstrdup(slash + 1);
    }
    char *save2 = NULL;
    for (char *hp = strtok_r(list, ",", &save2); hp; hp = strtok_r(NULL, ",", &save2)) {
      if (a->nseeds == REDIS_ADDR_MAX_SEEDS) {
        *err = xstrfmt("redis address '%s': more than %d nodes", shown, REDIS_ADDR_MAX_SEEDS);
        goto out;
      }
      char *h;
      int p;
      if (parse_hostport(hp, shown, &h, &p, err) != 0) goto out;
      a->seed_host = xrealloc(a->seed_host, (size_t)(a->nseeds + 1) * sizeof *a->seed_host);
      a->seed_port = xrealloc(a->seed_port, (size_t)(a->nseeds + 1) * sizeof *a->seed_port);
      a->seed_host[a->nseeds] = h;
      a->seed_port[a->nseeds] = p;
      a->nseeds++;
    }
    if (!a->nseeds) {
      *err = xstrfmt("redis address '%s': no HOST:PORT", shown);
      goto out;
    }
    a->host = xstrdup(a->seed_host[0]);
    a->port = a->seed_port[0];
  } else if (strncmp(addr, "unix:", 5) == 0) {
    if (!addr[5]) {
      *err = xstrfmt("redis address '%s': unix: needs a socket path", addr);
      goto out;
    }
    a->unix_path = xstrdup(addr + 5);
  } else {
    if (parse_hostport(addr, shown, &a->host, &a->port, err) != 0) goto out;
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
  if (a->mode == REDIS_MODE_CLUSTER && a->db) {
    *err = xstrfmt("redis address '%s': a Redis Cluster has db 0 only", shown);
    goto out;
  }
  if (a->mode != REDIS_MODE_SINGLE)
    a->shown = a->mode == REDIS_MODE_CLUSTER ? xstrdup(shown) : xstrfmt("%s db %d", shown, a->db);
  else
    a->shown = a->unix_path ? xstrfmt("unix:%s db %d", a->unix_path, a->db)
                            : xstrfmt("%s:%d db %d", a->host, a->port, a->db);
  rc = 0;
out:
  explicit_bzero(t, strlen(text ? text : ""));
  xfree(t);
  if (rc != 0) redis_addr_free(a);
  return rc;
}

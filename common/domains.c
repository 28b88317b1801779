/* The domain table (see domains.h). Lookups are a hash map of the normalised names; the
 * current table is one atomic pointer. */
#include "common/domains.h"

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <stdatomic.h>
#include <string.h>

#include "common/alloc.h"
#include "common/bus.h"
#include "common/err.h"
#include "common/jid.h"
#include "common/log.h"
#include "common/strmap.h"

struct domains {
  domain_t *d;
  size_t n;
  strmap_t *by_name;
  int any_disabled;
  domains_t *retired; /* the table this one replaced (domains_publish) */
};

/* Whether the first certificate of the PEM file cert names domain (RFC 6125 §6.4:
 * DNS-ID in subjectAltName, else the CN; wildcards in the left-most label). */
static int cert_names(const char *cert, const char *domain, char **err) {
  wolfSSL_Init();
  WOLFSSL_X509 *x = wolfSSL_X509_load_certificate_file(cert, WOLFSSL_FILETYPE_PEM);
  int ok = 0;
  if (!x) {
    *err = xstrfmt("domain %s: cannot read the certificate %s", domain, cert);
  } else {
    ok = wolfSSL_X509_check_host(x, domain, strlen(domain), 0, NULL) == WOLFSSL_SUCCESS;
    if (!ok)
      *err = xstrfmt("domain %s: the certificate %s does not name it (no matching subject alternative name "
                     "or common name)", domain, cert);
    wolfSSL_X509_free(x);
  }
  wolfSSL_Cleanup();
  return ok;
}

/* disable = "a, b": the bits of the modules. */
static int modules_mask(const char *domain, const char *list, domains_module_fn resolve, uint64_t *mask,
                        char **err) {
  *mask = 0;
  const char *p = list;
  while (*p) {
    p += strspn(p, " \t,");
    size_t n = strcspn(p, " \t,");
    if (!n) break;
    char name[64];
    if (n >= sizeof name) {
      *err = xstrfmt("[domain %s] disable: unknown module '%.*s'", domain, (int)n, p);
      return XMPP_EINVAL;
    }
    memcpy(name, p, n);
    name[n] = '\0';
    int i = resolve ? resolve(name) : 0;
    if (i == -2) {
      *err = xstrfmt("[domain %s] disable: the module %s cannot be switched off", domain, name);
      return XMPP_EINVAL;
    }
    if (i < 0 || i >= 64) {
      *err = xstrfmt("[domain %s] disable: unknown module '%s'", domain, name);
      return XMPP_EINVAL;
    }
    if (resolve) *mask |= 1ULL << i;
    p += n;
  }
  return 0;
}

domains_t *domains_build(const xmpp_config_t *c, domains_module_fn resolve, int check_certs, char **err) {
  domains_t *t = xcalloc(1, sizeof *t);
  t->d = xcalloc((size_t)c->nvhosts + 1, sizeof *t->d);
  t->by_name = strmap_new();
  char *why = NULL;
  /* entry 0: server.domain; a [domain] section of the same name adds to it */
  for (int i = -1; i < c->nvhosts; i++) {
    const char *raw = i < 0 ? c->domain : c->vhosts[i].name;
    char *name = NULL;
    if (jid_prep_domain(raw, strlen(raw), &name) != 0) {
      why = xstrfmt("%s%s%s: not a valid domain name", i < 0 ? "server.domain " : "[domain ", raw, i < 0 ? "" : "]");
      goto fail;
    }
    domain_t *d = strmap_get(t->by_name, name);
    if (d && i >= 0 && d != &t->d[0]) {
      why = xstrfmt("[domain %s]: listed twice (as %s)", raw, name);
      xfree(name);
      goto fail;
    }
    if (!d) {
      d = &t->d[t->n++];
      d->name = name;
      d->cert = xstrdup(c->tls_cert);
      d->key = xstrdup(c->tls_key);
      strmap_put(t->by_name, name, d);
    } else {
      xfree(name);
    }
    if (i < 0) continue;
    const xmpp_vhost_conf_t *v = &c->vhosts[i];
    if (v->cert[0]) {
      xfree(d->cert);
      xfree(d->key);
      d->cert = xstrdup(v->cert);
      d->key = xstrdup(v->key);
      d->own_cert = 1;
    }
    if (modules_mask(raw, v->disable, resolve, &d->disabled, &why) != 0) goto fail;
    if (d->disabled) t->any_disabled = 1;
    d->max_resources = v->max_resources;
    /* a domain of a [domain] section must be named by the certificate serving it (the
     * default domain alone keeps its old behaviour: not checked) */
    if (check_certs && d->cert[0] && !cert_names(d->cert, d->name, &why)) goto fail;
  }
  return t;
fail:
  if (err) *err = why;
  else xfree(why);
  domains_free(t);
  return NULL;
}

void domains_free(domains_t *t) {
  if (!t) return;
  for (size_t i = 0; i < t->n; i++) {
    xfree(t->d[i].name);
    xfree(t->d[i].cert);
    xfree(t->d[i].key);
  }
  xfree(t->d);
  strmap_free(t->by_name, NULL);
  xfree(t);
}

size_t domains_count(const domains_t *t) { return t ? t->n : 0; }
const domain_t *domains_at(const domains_t *t, size_t i) { return t && i < t->n ? &t->d[i] : NULL; }

const domain_t *domains_lookup(const domains_t *t, const char *name, size_t len) {
  if (!t || !len || len > 1023) return NULL;
  char key[1024];
  memcpy(key, name, len);
  key[len] = '\0';
  return strmap_get(t->by_name, key);
}

static _Atomic(domains_t *) current;

void domains_publish(domains_t *t) {
  t->retired = atomic_load(&current);
  atomic_store(&current, t);
}

const domains_t *domains_current(void) { return atomic_load_explicit(&current, memory_order_acquire); }

const domain_t *domain_find(const char *name, size_t len) { return domains_lookup(domains_current(), name, len); }

const domain_t *domain_of_jid(const char *jid) {
  size_t bl = bus_bare_len(jid, strlen(jid));
  const char *at = memchr(jid, '@', bl);
  const char *dom = at ? at + 1 : jid;
  return domain_find(dom, bl - (size_t)(dom - jid));
}

const char *domain_default(void) {
  const domains_t *t = domains_current();
  return t && t->n ? t->d[0].name : "localhost";
}

int domains_any_disabled(void) {
  const domains_t *t = domains_current();
  return t && t->any_disabled;
}

void domains_shutdown(void) {
  domains_t *t = atomic_exchange(&current, NULL);
  while (t) {
    domains_t *next = t->retired;
    domains_free(t);
    t = next;
  }
}

/* The domain table (see domains.h). Lookups are a hash map of the normalised names; the
 * current table is one atomic pointer. */
#include "common/domains.h"

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/bus.h"
#include "common/err.h"
#include "common/jid.h"
#include "common/log.h"
#include "common/strmap.h"

struct domains {
  domain_t **d;        /* entries allocated one by one: published ones are shared (interned) */
  size_t n, alloc;
  strmap_t *by_name;
  int any_disabled;
  int published;       /* its entries belong to the interned list (domains_publish) */
  domains_t *retired;  /* the retired list's next (domains_publish) */
  uint64_t retired_ms; /* when it stopped being current */
};

/* Whether the first certificate of the PEM file cert names domain (RFC 6125 §6.4:
 * DNS-ID in subjectAltName, else the CN; wildcards in the left-most label). */
int domain_cert_names(const char *cert, const char *domain, char **err) {
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

/* The [domain] section of c whose normalised name is name, or NULL. */
static const xmpp_vhost_conf_t *section_of(const xmpp_config_t *c, const char *name) {
  for (int i = 0; i < c->nvhosts; i++) {
    char *n = NULL;
    if (jid_prep_domain(c->vhosts[i].name, strlen(c->vhosts[i].name), &n) != 0) continue;
    int same = !strcmp(n, name);
    xfree(n);
    if (same) return &c->vhosts[i];
  }
  return NULL;
}

static void limits_from(domain_t *d, const xmpp_vhost_conf_t *v) {
  d->max_resources = v ? v->max_resources : 0;
  d->max_sessions = v ? v->max_sessions : 0;
  d->max_accounts = v ? v->max_accounts : 0;
  d->rate_bytes = v ? v->rate_bytes : -1;
  d->rate_stanzas = v ? v->rate_stanzas : -1;
}

int domain_spec_check(const xmpp_config_t *c, const char *name, const char *tmpl, const char *cert,
                      const char *key, char **norm, char **err) {
  *norm = NULL;
  size_t nl = strlen(name);
  if (!nl || nl > XMPP_MAX_DOMAIN_NAME) {
    *err = xstrfmt("domain name of %zu bytes: 1 to %d are allowed", nl, XMPP_MAX_DOMAIN_NAME);
    return XMPP_EINVAL;
  }
  char *n = NULL;
  if (name[0] == '[' || jid_prep_domain(name, nl, &n) != 0 || strspn(n, "0123456789.") == strlen(n)) {
    xfree(n);
    *err = xstrfmt("'%s' is not a valid domain name (RFC 7622 domainpart, not an IP address)", name);
    return XMPP_EINVAL;
  }
  char *tn = NULL;
  if (*tmpl && (jid_prep_domain(tmpl, strlen(tmpl), &tn) != 0 || !section_of(c, tn))) {
    *err = xstrfmt("template '%s': no [domain %s] section in the configuration", tmpl, tmpl);
    xfree(tn);
    xfree(n);
    return XMPP_EINVAL;
  }
  xfree(tn);
  if (!*cert != !*key) {
    *err = xstrdup("certificate and key must be given together");
    xfree(n);
    return XMPP_EINVAL;
  }
  *norm = n;
  return 0;
}

domains_t *domains_build(const xmpp_config_t *c, domains_module_fn resolve, int check_certs, char **err) {
  return domains_build_ex(c, NULL, 0, resolve, check_certs, err);
}

domains_t *domains_build_ex(const xmpp_config_t *c, const domain_spec_t *rt, size_t nrt, domains_module_fn resolve,
                            int check_certs, char **err) {
  domains_t *t = xcalloc(1, sizeof *t);
  t->d = xcalloc((size_t)c->nvhosts + 1 + nrt, sizeof *t->d);
  t->alloc = (size_t)c->nvhosts + 1 + nrt;
  for (size_t i = 0; i < t->alloc; i++) t->d[i] = xcalloc(1, sizeof **t->d);
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
    if (d && i >= 0 && d != t->d[0]) {
      why = xstrfmt("[domain %s]: listed twice (as %s)", raw, name);
      xfree(name);
      goto fail;
    }
    if (!d) {
      d = t->d[t->n++];
      d->name = name;
      d->cert = xstrdup(c->tls_cert);
      d->key = xstrdup(c->tls_key);
      d->tmpl = xstrdup("");
      d->rate_bytes = d->rate_stanzas = -1;
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
    limits_from(d, v);
    /* a domain of a [domain] section must be named by the certificate serving it (the
     * default domain alone keeps its old behaviour: not checked) */
    if (check_certs && d->cert[0] && !domain_cert_names(d->cert, d->name, &why)) goto fail;
  }
  for (size_t i = 0; i < nrt; i++) {
    char *name = NULL;
    if (jid_prep_domain(rt[i].name, strlen(rt[i].name), &name) != 0) {
      log_warn("runtime domain %s: not a valid domain name: skipped", rt[i].name);
      continue;
    }
    if (strmap_get(t->by_name, name)) {
      log_warn("runtime domain %s: also in the configuration file, whose settings apply", name);
      xfree(name);
      continue;
    }
    domain_t *d = t->d[t->n++];
    d->name = name;
    d->runtime = 1;
    d->tmpl = xstrdup(rt[i].tmpl);
    strmap_put(t->by_name, name, d);
    const xmpp_vhost_conf_t *v = NULL;
    if (*rt[i].tmpl) {
      char *tn = NULL;
      if (jid_prep_domain(rt[i].tmpl, strlen(rt[i].tmpl), &tn) == 0) v = section_of(c, tn);
      xfree(tn);
      if (!v) log_warn("runtime domain %s: template %s is not in the configuration: the defaults apply", name, rt[i].tmpl);
    }
    if (v && modules_mask(v->name, v->disable, resolve, &d->disabled, &why) != 0) goto fail;
    if (d->disabled) t->any_disabled = 1;
    limits_from(d, v);
    d->own_cert = rt[i].cert[0] != '\0';
    d->cert = xstrdup(d->own_cert ? rt[i].cert : c->tls_cert);
    d->key = xstrdup(d->own_cert ? rt[i].key : c->tls_key);
    if (check_certs && d->own_cert && !domain_cert_names(d->cert, d->name, &why)) goto fail;
  }
  return t;
fail:
  if (err) *err = why;
  else xfree(why);
  domains_free(t);
  return NULL;
}

static void entry_free(domain_t *d) {
  xfree(d->name);
  xfree(d->cert);
  xfree(d->key);
  xfree(d->tmpl);
  xfree(d);
}

/* A published table's entries are interned (shared by later tables, pointed at by
 * connections): domains_shutdown frees them. */
void domains_free(domains_t *t) {
  if (!t) return;
  if (!t->published)
    for (size_t i = 0; i < t->alloc; i++) entry_free(t->d[i]);
  xfree(t->d);
  strmap_free(t->by_name, NULL);
  xfree(t);
}

size_t domains_count(const domains_t *t) { return t ? t->n : 0; }
const domain_t *domains_at(const domains_t *t, size_t i) { return t && i < t->n ? t->d[i] : NULL; }

const domain_t *domains_lookup(const domains_t *t, const char *name, size_t len) {
  if (!t || !len || len > 1023) return NULL;
  char key[1024];
  memcpy(key, name, len);
  key[len] = '\0';
  return strmap_get(t->by_name, key);
}

static _Atomic(domains_t *) current;

/* Every session counter made (domains_publish), freed by domains_shutdown. */
typedef struct counter {
  _Atomic long n;
  struct counter *next;
} counter_t;
static counter_t *counters;

/* Every published entry (interned), freed by domains_shutdown. */
typedef struct interned {
  domain_t *d;
  struct interned *next;
} interned_t;
static interned_t *interned;

/* Replaced tables, newest first, freed DOMAINS_GRACE_MS after they stopped being current:
 * a thread that read the current pointer before the swap is done with its look-up by
 * then (a look-up takes microseconds). Their entries stay (interned). */
#define DOMAINS_GRACE_MS 30000
static domains_t *retired;

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int same_settings(const domain_t *a, const domain_t *b) {
  return !strcmp(a->name, b->name) && !strcmp(a->cert, b->cert) && !strcmp(a->key, b->key) &&
         !strcmp(a->tmpl, b->tmpl) && a->own_cert == b->own_cert && a->disabled == b->disabled &&
         a->max_resources == b->max_resources && a->max_sessions == b->max_sessions &&
         a->max_accounts == b->max_accounts && a->rate_bytes == b->rate_bytes && a->rate_stanzas == b->rate_stanzas &&
         a->runtime == b->runtime;
}

void domains_reclaim(void) {
  uint64_t now = mono_ms();
  domains_t **pp = &retired;
  while (*pp) {
    domains_t *t = *pp;
    if (now - t->retired_ms < DOMAINS_GRACE_MS) {
      pp = &t->retired;
      continue;
    }
    *pp = t->retired;
    domains_free(t);
  }
}

void domains_publish(domains_t *t) {
  domains_t *old = atomic_load(&current);
  for (size_t i = 0; i < t->n; i++) {
    domain_t *d = t->d[i];
    const domain_t *o = domains_lookup(old, d->name, strlen(d->name));
    if (o && same_settings(o, d)) { /* unchanged: the entry is shared, the copy goes */
      t->d[i] = (domain_t *)o;
      strmap_put(t->by_name, o->name, (void *)o);
      entry_free(d);
      continue;
    }
    if (o) { /* a name served before keeps its count (its streams stay) */
      d->sessions = o->sessions;
    } else {
      counter_t *k = xcalloc(1, sizeof *k);
      k->next = counters;
      counters = k;
      d->sessions = &k->n;
    }
    interned_t *e = xcalloc(1, sizeof *e);
    e->d = d;
    e->next = interned;
    interned = e;
  }
  /* the entries beyond n (a name listed twice, a runtime domain skipped) were never used */
  for (size_t i = t->n; i < t->alloc; i++) entry_free(t->d[i]);
  t->alloc = t->n;
  t->published = 1;
  atomic_store(&current, t);
  if (old) {
    old->retired_ms = mono_ms();
    old->retired = retired;
    retired = old;
  }
  domains_reclaim();
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
  return t && t->n ? t->d[0]->name : "localhost";
}

int domains_any_disabled(void) {
  const domains_t *t = domains_current();
  return t && t->any_disabled;
}

void domains_shutdown(void) {
  domains_t *t = atomic_exchange(&current, NULL);
  if (t) domains_free(t);
  while (retired) {
    domains_t *next = retired->retired;
    domains_free(retired);
    retired = next;
  }
  while (interned) {
    interned_t *e = interned->next;
    entry_free(interned->d);
    xfree(interned);
    interned = e;
  }
  while (counters) {
    counter_t *k = counters->next;
    xfree(counters);
    counters = k;
  }
}

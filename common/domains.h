/* The domains this process serves (virtual hosting, docs/operations.md "Virtual hosting").
 *
 * A table is built from the configuration: server.domain first (the default, for streams
 * without 'to' and for replies with no better address), then each [domain NAME] section.
 * Each entry has its certificate files, the router modules switched off on it and its
 * limit overrides. One table is current for the whole process: edges read it when a
 * stream opens and in the SNI callback, routers for every "is this JID ours" question.
 * A reload (SIGHUP) or a runtime domain change (cmd/xmppd_domains.h) builds a new table
 * and publishes it with one atomic store. Entries are interned: an entry whose settings
 * did not change is shared by the new table, a new or changed one is kept until
 * domains_shutdown, so a domain_t pointer a thread took (a connection's domain) stays
 * valid for the life of the process (one entry per change). A replaced table itself (its
 * array and name map) is freed 30 s after it stopped being current (domains_reclaim):
 * look-ups through it take microseconds. */
#ifndef XMPP_DOMAINS_H
#define XMPP_DOMAINS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"

typedef struct domain {
  char *name;        /* normalised (RFC 7622 domainpart) */
  char *cert;        /* certificate serving it ("" = none: TLS off) */
  char *key;
  int own_cert;      /* cert is its own ([domain] certificate), not tls.certificate */
  uint64_t disabled; /* router modules off here: bit i = modules[i] (router/modules.c) */
  int max_resources; /* 0 = limits.max_resources */
  /* per-domain limits ([domain NAME] keys, docs/operations.md "Per-domain limits") */
  int max_sessions;  /* authenticated streams on this edge node; 0 = no cap */
  int max_accounts;  /* accounts in-band registration may bring it to; 0 = no cap */
  int rate_bytes, rate_stanzas; /* the shaper's rates for its streams; -1 = limits.* */
  /* a runtime domain (xmppctl domain add, kept in the store), not the configuration's */
  int runtime;
  char *tmpl;        /* runtime: the [domain] section its settings come from ("" = defaults) */
  /* authenticated streams of its accounts in this process (the edge counts them), shared
   * by every table that lists the name (domains_publish): valid for the process's life */
  _Atomic long *sessions;
} domain_t;

/* A runtime domain as stored (store_domain_t's strings): built into the table beside
 * the configuration's. */
typedef struct domain_spec {
  const char *name, *tmpl, *cert, *key;
} domain_spec_t;

/* Runtime domains one store may hold (xmppctl domain add refuses more). */
#define XMPP_MAX_RUNTIME_DOMAINS 1000
/* Bytes of a domain name given to domain add (a DNS name's maximum, RFC 1035 §2.3.4). */
#define XMPP_MAX_DOMAIN_NAME 253

typedef struct domains domains_t;

/* A router module's index by name for [domain] disable: >= 0, -1 unknown, -2 a module
 * the server cannot run without (router/modules.c modules_index). */
typedef int (*domains_module_fn)(const char *name);

/* Builds the table of c (copied). Checks
 * that every domain is a valid domainpart and listed once, that every module named in
 * a disable list exists and may be switched off (resolve NULL: not checked), and, when
 * check_certs, that the certificate serving a domain of a [domain] section names it
 * (subject alternative name or common name, RFC 6125 §6.4). NULL with *err. Any thread. */
domains_t *domains_build(const xmpp_config_t *c, domains_module_fn resolve, int check_certs, char **err);
/* The same with the runtime domains rt[0..nrt) after the configuration's: each takes its
 * template's disable list and limits (a [domain] section of c named tmpl; "" or a
 * section that is gone: the defaults, logged), its own certificate when cert is set
 * (checked like a section's), else tls.certificate. One named in c too is skipped
 * (the file's settings apply; logged). */
domains_t *domains_build_ex(const xmpp_config_t *c, const domain_spec_t *rt, size_t nrt, domains_module_fn resolve,
                            int check_certs, char **err);
/* What domain add checks before anything is stored: name a valid domainpart (RFC 7622
 * §3.2) of at most XMPP_MAX_DOMAIN_NAME bytes, not an IP literal; tmpl "" or a [domain]
 * section of c; cert and key both or neither. 0 with *norm (the normalised name, caller
 * frees), or XMPP_EINVAL with *err. Any thread; reads no file. */
int domain_spec_check(const xmpp_config_t *c, const char *name, const char *tmpl, const char *cert,
                      const char *key, char **norm, char **err);
/* Whether the PEM certificate at cert names domain (RFC 6125 §6.4): 1, or 0 with *err. */
int domain_cert_names(const char *cert, const char *domain, char **err);
void domains_free(domains_t *d);
size_t domains_count(const domains_t *d);
const domain_t *domains_at(const domains_t *d, size_t i);
/* The entry named name[0..len) (normalised form), or NULL. */
const domain_t *domains_lookup(const domains_t *d, const char *name, size_t len);

/* Process-wide current table. Publish from one thread at a time (main); the table is
 * owned by this module from then on. */
void domains_publish(domains_t *d);
/* Frees the tables replaced more than 30 s ago (domains_publish does it too). Main thread. */
void domains_reclaim(void);
/* The current table (NULL before the first publish). Any thread; a caller other than the
 * publishing thread must not keep it past a look-up. */
const domains_t *domains_current(void);
/* In the current table. Any thread. */
const domain_t *domain_find(const char *name, size_t len);
/* The domain of a normalised JID ([local@]domain[/resource]), or NULL when not hosted. */
const domain_t *domain_of_jid(const char *jid);
/* The default domain's name (server.domain, normalised). */
const char *domain_default(void);
/* Some domain of the current table switches a module off (the router's fast path). */
int domains_any_disabled(void);
/* Frees the current table and every replaced one. At exit, no thread running. */
void domains_shutdown(void);

#endif

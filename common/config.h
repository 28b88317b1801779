/* Server configuration: one declarative table (config.c) drives defaults, the INI file
 * parser (inih), command-line overrides ("section.key=value"), validation, --check-config
 * and the printed reference (docs/configuration.md is generated from it). */
#ifndef XMPP_CONFIG_H
#define XMPP_CONFIG_H

#include <stddef.h>
#include <stdio.h>

/* One [domain NAME] section (docs/operations.md "Virtual hosting"): a domain served
 * besides server.domain, or server.domain's own settings. Built into the runtime table by
 * common/domains.c. */
typedef struct xmpp_vhost_conf {
  char *name;        /* NAME as written (domains_build normalises it) */
  char *cert, *key;  /* its certificate and key; "" = tls.certificate / tls.key */
  char *disable;     /* router modules off on this domain, comma-separated ("" = none) */
  int max_resources; /* limits.max_resources on this domain; 0 = the global one */
  int max_sessions;  /* authenticated streams of the domain's accounts on one edge; 0 = no cap */
  int max_accounts;  /* accounts in-band registration may bring the domain to; 0 = no cap */
  int rate_bytes;    /* limits.rate_bytes for its streams; -1 = the global one */
  int rate_stanzas;  /* limits.rate_stanzas for its streams; -1 = the global one */
} xmpp_vhost_conf_t;

/* Domains one configuration may list (server.domain and [domain] sections). */
#define XMPP_MAX_DOMAINS 4096

typedef struct xmpp_config {
  /* [domain NAME] sections, in file order */
  xmpp_vhost_conf_t *vhosts;
  int nvhosts;
  /* [server] */
  char *domain;
  char *log_level;
  int io_threads;     /* edge I/O threads; 0 = number of cores */
  int router_workers; /* router worker threads; 0 = number of cores */
  int inline_routing; /* a frame's router work may run on the thread that sends it (bus_queue_inline) */
  int shards;         /* virtual shards S */
  /* [c2s] */
  char *c2s_addr;
  int c2s_port;     /* STARTTLS port; 0 = off */
  int c2s_tls_port; /* direct TLS port (XEP-0368); 0 = off */
  /* [tls] */
  char *tls_cert;
  char *tls_key;
  int require_tls;  /* bool: TLS before authentication */
  char *tls_ciphers;   /* "" = built-in list; else a subset/reordering of it */
  int legacy_sasl_plus; /* bool: SCRAM -PLUS offered on RFC 6120 SASL too (XEP-0440 types) */
  int tls_offload;  /* bool: TLS 1.3 records protected by the edge once the handshake is done */
  int tls_rekey_records; /* AES-GCM records under one TLS 1.3 key before a KeyUpdate */
  char *tls_ticket_key_file; /* "" = a random ticket key per process */
  int tls_ticket_lifetime;   /* seconds a session ticket resumes */
  /* [limits] */
  int max_stanza_bytes;
  int max_depth;
  int max_attrs;
  int auth_timeout;   /* seconds from connect to bound session */
  int idle_timeout;   /* seconds without input before <connection-timeout/> */
  int keepalive;      /* seconds of output silence before a whitespace keepalive */
  int sasl_max_failures;
  int sasl2_text_bytes;
  int fast_tokens;       /* XEP-0484: user agents with a FAST token per account (0: FAST off) */
  int fast_token_lifetime; /* seconds a FAST token is valid */
  /* XEP-0388 user agent software/device, XEP-0386 Bind2 tag: bytes each */
  int offline_max;    /* offline messages kept per user */
  int offline_max_bytes; /* and their bytes */
  int max_pending_out;   /* bytes of unread output before a slow reader is disconnected */
  int bus_queue_bytes;   /* bytes in one in-process bus queue before edges stop reading clients */
  int sm_max_unacked;    /* XEP-0198: stanzas sent and not acknowledged before disconnecting (0 = SM off) */
  int sm_resume_timeout; /* XEP-0198 §5: seconds a dropped session waits to be resumed (0 = no resumption) */
  int max_conns_per_ip;  /* simultaneous connections from one source address; 0 = no cap */
  int auth_fail_ip;      /* failed authentications per source address per minute */
  int auth_fail_account; /* failed authentications per account per minute */
  int rate_bytes;        /* client input bytes/s per connection; 0 = unshaped */
  int rate_stanzas;      /* client stanzas/s per connection; 0 = unshaped */
  int rate_burst;        /* seconds of rate a client may send at once */
  int rate_grace;        /* seconds of persistent excess before <policy-violation/> */
  int max_resources;     /* simultaneous resources per account */
  int max_roster_items;  /* items in one roster */
  int max_roster_bytes;  /* bytes of a roster as a roster get returns it (in force: at most max_pending_out / 2) */
  int max_roster_groups; /* <group/> elements on one roster item */
  int max_roster_name;   /* bytes of a roster item's name */
  int max_roster_group_name; /* bytes of one group name */
  int subscription_rate; /* subscription stanzas/s per account; 0 = no cap */
  int max_directed;      /* JIDs a session remembers having sent directed presence to */
  int max_doc_bytes;     /* bytes of one stored document as XML (vCard, private XML element) */
  int max_account_doc_bytes; /* bytes of an account's stored documents in all */
  int max_private_elements;  /* elements in one XEP-0049 set */
  /* XEP-0313 archive (router/mod_mam.c) */
  int mam_enabled;       /* archive one-to-one messages */
  int mam_commit_ms;     /* archive writer's group-commit window; 0 = workers commit their own */
  int mam_retry_bytes;   /* archive rows kept for retry while the store is unavailable, at most */
  int mam_max_messages;  /* messages kept per account; 0 = no limit */
  int mam_max_age_days;  /* days a message is kept; 0 = forever */
  int mam_max_page;      /* results one query returns at most */
  int mam_max_prefs;     /* JIDs in one account's always + never lists */
  int max_blocklist;     /* XEP-0191: JIDs one account may block */
  /* [storage] */
  char *store_backend;
  char *store_path;  /* backend sqlite: the database file */
  char *store_redis; /* backend redis: the server's address (see store_open) */
  int scram_iterations;
  /* [registration] XEP-0077 in-band registration (edge/register.c) */
  int reg_open;            /* anyone may create an account (under TLS) */
  int reg_min_password;    /* bytes of a new password at least */
  int reg_per_ip_per_hour; /* registration attempts per source address in a sliding hour */
  /* [cluster] (docs/cluster.md) */
  char *cluster_role;      /* all | edge | router */
  int cluster_node;        /* node id; 0 = single process, no cluster */
  char *cluster_redis;     /* Redis of the node registry, shard map and session directory */
  char *cluster_name;      /* prefix of the cluster's Redis keys */
  char *bus_addr;          /* where bus links from other nodes are accepted */
  int bus_port;
  char *bus_advertise;     /* address other nodes dial ("" = bus_addr) */
  int heartbeat_ms;        /* node registry and bus link heartbeat */
  int node_ttl_ms;         /* a node missing its heartbeats this long is dead */
  int link_max_wait_ms;    /* how long frames wait for a down link before a stanza error */
  char *bus_tls_cert, *bus_tls_key, *bus_tls_ca; /* mutual TLS on bus links (all or none) */
  /* [metrics] (common/metrics_http.c, docs/operations.md "Metrics") */
  char *metrics_listen;    /* HOST:PORT of the Prometheus endpoint; "" = off */
  char *metrics_token;     /* bearer token the endpoint requires; "" = none (loopback only) */
  char *metrics_tls_cert;  /* PEM files: HTTPS; "" = plain HTTP */
  char *metrics_tls_key;
  int dedup_window;        /* origin ids remembered per edge thread / router worker */
  int hold_ms;             /* a shard move's hold of stanzas for sessions not announced yet */
  int hold_bytes;          /* and its bound per router worker */
  /* [server] the local control socket (common/control.h) and the log format */
  char *control_socket;    /* "auto", "" (off) or a path: config_control_socket */
  int control_max_clients; /* control connections at once */
  int control_max_request; /* bytes of one request line */
  char *log_format;        /* text | json */
  /* [admin] the HTTP admin API (common/control_http.c) */
  char *admin_listen;      /* HOST:PORT; "" = off */
  char *admin_token;       /* bearer token, required with admin_listen */
  char *admin_tls_cert;    /* PEM files: HTTPS; "" = plain HTTP */
  char *admin_tls_key;
  int admin_max_clients;   /* connections at once */
  int admin_max_body;      /* bytes of one request body */
} xmpp_config_t;

enum { ROLE_EDGE = 1, ROLE_ROUTER = 2, ROLE_ALL = 3 };
/* cluster.role as ROLE_* bits (config_validate has checked it). */
int config_role(const xmpp_config_t *c);

/* Fills defaults. */
void config_defaults(xmpp_config_t *c);
/* Defaults, then the INI file at path (NULL: defaults only). 0 or XMPP_EINVAL with *err. */
int config_load(xmpp_config_t *c, const char *path, char **err);
/* Same, from the bytes data[0..len) as if they were the file's content (name is used in
 * error messages; NULL: "(buffer)"). The file reader is the same. */
int config_load_buffer(xmpp_config_t *c, const char *data, size_t len, const char *name,
                       char **err);
/* Sets one option by "section.key"; validates type and bounds. 0 or XMPP_EINVAL with *err. */
int config_set(xmpp_config_t *c, const char *key, const char *value, char **err);
/* Applies XMPPD_<SECTION>_<KEY> environment variables (upper case, e.g.
 * XMPPD_CLUSTER_NODE_ID) for every known option: defaults < file < environment < --set.
 * 0 or XMPP_EINVAL with *err naming the variable. */
int config_apply_env(xmpp_config_t *c, char **err);
/* Cross-option checks (files readable, ports distinct...). 0 or XMPP_EINVAL with *err. */
int config_validate(const xmpp_config_t *c, char **err);
void config_free(xmpp_config_t *c);
/* What store_open() takes after the back-end name: storage.path for sqlite,
 * storage.redis for redis. */
const char *config_store_target(const xmpp_config_t *c);
/* The roster byte cap in force: limits.max_roster_bytes, but at most half of
 * limits.max_pending_out, so that a full roster's get result never disconnects its owner. */
long config_roster_bytes(const xmpp_config_t *c);
/* The control socket's path (caller frees), or NULL when there is none: server.control_socket
 * as given; "auto" = next to the SQLite store (storage.path + ".ctl"), none with the Redis
 * back-end or an in-memory store; "" = none. */
char *config_control_socket(const xmpp_config_t *c);
/* Writes the effective configuration as an INI file. */
void config_print(FILE *f, const xmpp_config_t *c);
/* Writes the reference of every option (Markdown table). */
void config_print_reference(FILE *f);

#endif

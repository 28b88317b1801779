/* xmppctl: account administration against the server's store, and read-only views of a
 * cluster (its live nodes, shard map and session directory in cluster.redis).
 *
 *   xmppctl [-c CONFIG] [--db PATH] COMMAND ...
 *
 * The store comes from --db (the SQLite file, or the Redis address when the configuration
 * says storage.backend = redis), else from the config file's [storage] section, else the
 * defaults. JIDs are normalised (RFC 7622) and must be bare; a name without '@' gets the
 * configured domain. Only SCRAM credentials (SHA-1 and SHA-256, RFC 5802 / RFC 7677) are
 * stored, never the password. Passwords come from the command line or, when absent, one
 * line of standard input (with a terminal: prompted without echo, twice when setting one).
 *
 * Exit status: 0 success; 1 runtime failure (user exists, no such user, wrong password,
 * storage error); 2 usage error (bad arguments, bad JID or password, unreadable config);
 * `cluster` also 3 no live node, 4 no live router, 5 the shard map in Redis is not the
 * live routers' (cmd_cluster).
 *
 * status, sessions (without a JID), kick, broadcast, domains, domain, reload and drain ask the running
 * server over its
 * control socket (server.control_socket, or --socket): one tab-separated request line,
 * one JSON answer printed as it comes; exit 0 when it says "ok":true, 1 otherwise. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/config.h"
#include "common/domains.h"
#include "common/credis.h"
#include "common/err.h"
#include "common/jid.h"
#include "common/log.h"
#include "common/scram.h"
#include "common/cluster/shardmap.h"
#include "common/store/store.h"

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2
/* cluster only (docs/operations.md, "xmppctl cluster") */
#define EXIT_NO_NODE 3
#define EXIT_NO_ROUTER 4
#define EXIT_STALE_MAP 5

#define PASSWORD_MAX SCRAM_PASSWORD_MAX

static const char usage_text[] =
    "usage: xmppctl [-c CONFIG] [--db PATH] COMMAND ...\n"
    "\n"
    "commands:\n"
    "  adduser JID [PASSWORD]         create an account\n"
    "  deluser JID                    delete an account with its roster and offline messages\n"
    "  passwd JID [PASSWORD]          change an account's password\n"
    "  fast-revoke JID [USER-AGENT-ID]  revoke the account's XEP-0484 FAST tokens (all, or one device's)\n"
    "  listusers                      print every account, one per line\n"
    "  checkpassword JID [PASSWORD]   exit 0 if the password is correct, 1 if not\n"
    "  populate PREFIX COUNT PASSWORD [--roster K] [--first N]\n"
    "                                 load-test accounts PREFIX<N>..PREFIX<N+COUNT-1>\n"
    "                                 (N defaults to 1), all with PASSWORD; with --roster K,\n"
    "                                 groups of K+1 consecutive users are each other's\n"
    "                                 contacts (subscription both). Existing accounts get\n"
    "                                 the password. One transaction; the credentials are\n"
    "                                 derived once, so every account shares one salt:\n"
    "                                 for load tests only, never for real users.\n"
    "  cluster                        a cluster's live nodes and shard map (cluster.redis)\n"
    "  sessions JID                   where JID's resources are connected (session directory)\n"
    "\n"
    "commands for the running server, over its control socket (JSON answers):\n"
    "  status                         version, uptime, role, node id, sessions\n"
    "  sessions                       every session of that process: JID, address, since,\n"
    "                                 state (bound/detached), TLS, stream management\n"
    "  kick JID [TEXT]                end a full JID's session, or every session of a bare\n"
    "                                 JID, with <policy-violation/> and TEXT\n"
    "  broadcast TEXT                 a headline message from the domain to every session\n"
    "  domains                        the domains served: certificate, switched-off modules\n"
    "  domain add NAME [--template T] [--certificate FILE --key FILE]\n"
    "                                 serve NAME from now on, kept in the store (survives a\n"
    "                                 restart; every node of a Redis cluster serves it):\n"
    "                                 settings of the [domain T] section, its own certificate\n"
    "                                 (which must name it) or tls.certificate\n"
    "  domain remove NAME [--purge]   stop serving a runtime domain (its streams end with\n"
    "                                 <host-gone/>); --purge deletes its accounts too\n"
    "  domain show NAME               one domain: source, template, limits, sessions, accounts\n"
    "  reload                         read the configuration's domains and certificates again\n"
    "                                 (as SIGHUP), with the outcome; removed domains' streams\n"
    "                                 end with <host-gone/>\n"
    "  drain RATE [HOST:PORT]         (an edge) refuse new connections, send each client to\n"
    "                                 HOST:PORT with <see-other-host/>, RATE per second\n"
    "                                 (no target: <system-shutdown/>); progress: status\n"
    "\n"
    "options:\n"
    "  -c, --config CONFIG   server configuration file (for [storage] and [server] domain)\n"
    "  -S, --socket PATH     control socket (overrides server.control_socket)\n"
    "      --db PATH         database file, or Redis address with storage.backend = redis\n"
    "                        (overrides the configuration)\n"
    "  -h, --help            show this help\n"
    "\n"
    "A JID without '@' gets the configured domain appended. Without PASSWORD, one line is\n"
    "read from standard input; on a terminal the password is asked without echo (twice\n"
    "when setting it). Passwords given as arguments are visible to other local users.\n"
    "Exit status: 0 ok, 1 failure (exists, not found, wrong password; cluster: Redis\n"
    "unreachable), 2 usage error; cluster also: 3 no live node, 4 no live router, 5 the\n"
    "shard map in Redis is not the live routers' (held by a dead node, or stale).\n";

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("xmppctl: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputs("\nTry 'xmppctl --help'.\n", stderr);
  va_end(ap);
}

/* ---- configuration and store ------------------------------------------------------- */

typedef struct ctl {
  xmpp_config_t cfg;
  store_t *store;
} ctl_t;

static int open_store(ctl_t *c) {
  char *err = NULL;
  /* The database holds credentials: whatever it creates (db, -wal, -shm) is private. */
  umask(077);
  c->store = store_open(c->cfg.store_backend, config_store_target(&c->cfg), &err);
  if (!c->store) {
    /* The message names the file or the Redis address (never a Redis password). */
    fprintf(stderr, "xmppctl: cannot open the %s store: %s\n", c->cfg.store_backend,
            err ? err : "unknown error");
    xfree(err);
    return EXIT_FAIL;
  }
  return EXIT_OK;
}

static int store_failed(const char *what, const char *jid, int rc) {
  fprintf(stderr, "xmppctl: %s %s: %s\n", what, jid, xmpp_strerror(rc));
  return EXIT_FAIL;
}

/* ---- JIDs --------------------------------------------------------------------------- */

/* Normalises a user's JID into *bare (caller frees). Returns EXIT_OK or EXIT_USAGE. */
static int user_jid(const ctl_t *c, const char *in, char **bare) {
  char *tmp = NULL;
  const char *s = in;
  if (!strchr(in, '@') && !strchr(in, '/')) {
    size_t li = strlen(in), ld = strlen(c->cfg.domain);
    tmp = xmalloc(li + 1 + ld + 1);
    memcpy(tmp, in, li);
    tmp[li] = '@';
    memcpy(tmp + li + 1, c->cfg.domain, ld + 1);
    s = tmp;
  }
  jid_t j;
  memset(&j, 0, sizeof j);
  int rc = jid_parse(s, strlen(s), &j);
  xfree(tmp);
  if (rc != 0) {
    usage_error("invalid JID '%s'", in);
    return EXIT_USAGE;
  }
  if (j.resource) {
    usage_error("'%s' has a resource: give a bare JID (user@domain)", in);
    jid_free(&j);
    return EXIT_USAGE;
  }
  if (!j.local) {
    usage_error("'%s' has no user part (user@domain)", in);
    jid_free(&j);
    return EXIT_USAGE;
  }
  /* server.domain or a [domain NAME] section (common/domains.h) */
  domains_t *doms = domains_build(&c->cfg, NULL, 0, NULL);
  if (doms && !domains_lookup(doms, j.domain, strlen(j.domain)))
    fprintf(stderr,
            "xmppctl: warning: %s is not in a configured domain (%s, or a [domain] section; a runtime domain "
            "is not known here: xmppctl domains)\n",
            j.bare,
            domains_at(doms, 0)->name);
  domains_free(doms);
  *bare = xstrdup(j.bare);
  jid_free(&j);
  return EXIT_OK;
}

/* ---- passwords ---------------------------------------------------------------------- */

typedef struct password {
  char *p;
  size_t len;
} password_t;

static void password_free(password_t *pw) {
  if (pw->p) {
    explicit_bzero(pw->p, pw->len);
    xfree(pw->p);
  }
  pw->p = NULL;
  pw->len = 0;
}

/* Terminal state to restore if a signal arrives while echo is off. */
static struct termios g_saved_tty;
static volatile sig_atomic_t g_echo_off;

static void restore_tty_and_die(int sig) {
  if (g_echo_off) tcsetattr(STDIN_FILENO, TCSAFLUSH, &g_saved_tty);
  signal(sig, SIG_DFL);
  raise(sig);
}

/* Reads one line from stdin (without its line ending) into *pw. With prompt non-NULL and
 * stdin a terminal, prints the prompt on stderr and turns echo off while reading.
 * Returns 0, or -1 at end of input / on a read error. */
static int read_line(const char *prompt, password_t *pw) {
  int tty = prompt && isatty(STDIN_FILENO);
  struct sigaction sa, old[4];
  static const int sigs[4] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
  if (tty) {
    fputs(prompt, stderr);
    fflush(stderr);
    if (tcgetattr(STDIN_FILENO, &g_saved_tty) == 0) {
      memset(&sa, 0, sizeof sa);
      sa.sa_handler = restore_tty_and_die;
      sigemptyset(&sa.sa_mask);
      for (int i = 0; i < 4; i++) sigaction(sigs[i], &sa, &old[i]);
      struct termios t = g_saved_tty;
      t.c_lflag &= ~(tcflag_t)ECHO;
      t.c_lflag |= ECHONL;
      if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) == 0) g_echo_off = 1;
    }
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t n = getline(&line, &cap, stdin);
  int err = n < 0 && ferror(stdin) ? errno : 0;
  if (tty) {
    if (g_echo_off) {
      tcsetattr(STDIN_FILENO, TCSAFLUSH, &g_saved_tty);
      g_echo_off = 0;
      for (int i = 0; i < 4; i++) sigaction(sigs[i], &old[i], NULL);
    }
  }
  if (n < 0) {
    if (line) explicit_bzero(line, cap);
    free(line);
    if (err) fprintf(stderr, "xmppctl: reading the password: %s\n", strerror(err));
    return -1;
  }
  size_t len = (size_t)n;
  if (len && line[len - 1] == '\n') len--;
  if (len && line[len - 1] == '\r') len--;
  pw->p = xmalloc(len + 1);
  memcpy(pw->p, line, len);
  pw->p[len] = '\0';
  pw->len = len;
  explicit_bzero(line, cap);
  free(line);
  return 0;
}

/* The password for a command: argv's (then wiped from argv, so that ps shows less), or
 * read from stdin; confirm asks twice on a terminal. Returns EXIT_OK, EXIT_USAGE (no
 * password, or an unacceptable one when check is set) or EXIT_FAIL (mismatch). */
static int get_password(char *arg, int confirm, int check, password_t *pw) {
  memset(pw, 0, sizeof *pw);
  if (arg) {
    pw->len = strlen(arg);
    pw->p = xstrndup(arg, pw->len);
    explicit_bzero(arg, pw->len);
  } else {
    if (read_line("Password: ", pw) != 0) {
      fprintf(stderr, "xmppctl: no password given\n");
      return EXIT_USAGE;
    }
    if (confirm && isatty(STDIN_FILENO)) {
      password_t again;
      memset(&again, 0, sizeof again);
      if (read_line("Password (again): ", &again) != 0) {
        password_free(pw);
        fprintf(stderr, "xmppctl: no password given\n");
        return EXIT_USAGE;
      }
      int same = again.len == pw->len && memcmp(again.p, pw->p, pw->len) == 0;
      password_free(&again);
      if (!same) {
        password_free(pw);
        fprintf(stderr, "xmppctl: the passwords do not match\n");
        return EXIT_FAIL;
      }
    }
  }
  const char *why = check ? scram_password_problem(pw->p, pw->len) : NULL;
  if (why) {
    password_free(pw);
    fprintf(stderr, "xmppctl: %s\n", why);
    return EXIT_USAGE;
  }
  return EXIT_OK;
}

static int make_account(const ctl_t *c, const password_t *pw, store_account_t *a) {
  uint32_t iter = c->cfg.scram_iterations > 0 ? (uint32_t)c->cfg.scram_iterations : 4096;
  if (scram_cred_make(SCRAM_SHA1, pw->p, pw->len, iter, &a->sha1) != 0 ||
      scram_cred_make(SCRAM_SHA256, pw->p, pw->len, iter, &a->sha256) != 0) {
    fprintf(stderr, "xmppctl: cannot derive SCRAM credentials\n");
    explicit_bzero(a, sizeof *a);
    return EXIT_FAIL;
  }
  return EXIT_OK;
}

/* ---- commands ----------------------------------------------------------------------- */

/* Reads the new password (argument or stdin) and derives the stored credentials. */
static int new_credentials(ctl_t *c, char *arg, store_account_t *a) {
  password_t pw;
  int rc = get_password(arg, 1, 1, &pw);
  if (rc) return rc;
  rc = make_account(c, &pw, a);
  password_free(&pw);
  return rc;
}

static int cmd_adduser(ctl_t *c, char **args, int nargs) {
  char *bare = NULL;
  int rc = user_jid(c, args[0], &bare);
  if (rc) return rc;
  if ((rc = open_store(c)) != 0) goto out;
  int ex = store_account_exists(c->store, bare);
  if (ex < 0) {
    rc = store_failed("checking", bare, ex);
    goto out;
  }
  if (ex) {
    fprintf(stderr, "xmppctl: user %s already exists\n", bare);
    rc = EXIT_FAIL;
    goto out;
  }
  store_account_t a;
  if ((rc = new_credentials(c, nargs > 1 ? args[1] : NULL, &a)) != 0) goto out;
  int src = store_account_create(c->store, bare, &a);
  explicit_bzero(&a, sizeof a);
  if (src == XMPP_EEXIST) {
    fprintf(stderr, "xmppctl: user %s already exists\n", bare);
    rc = EXIT_FAIL;
  } else if (src) {
    rc = store_failed("creating", bare, src);
  } else {
    printf("user %s added\n", bare);
  }
out:
  xfree(bare);
  return rc;
}

static int cmd_deluser(ctl_t *c, char **args, int nargs) {
  char *bare = NULL;
  int rc = user_jid(c, args[0], &bare);
  if (rc) return rc;
  if ((rc = open_store(c)) != 0) goto out;
  int src = store_account_delete(c->store, bare);
  if (src == XMPP_ENOENT) {
    fprintf(stderr, "xmppctl: no such user %s\n", bare);
    rc = EXIT_FAIL;
  } else if (src) {
    rc = store_failed("deleting", bare, src);
  } else {
    printf("user %s deleted\n", bare);
  }
out:
  xfree(bare);
  return rc;
}

/* XEP-0484: revokes the FAST tokens of an account, or of one of its user agents. */
static int cmd_fast_revoke(ctl_t *c, char **args, int nargs) {
  char *bare = NULL;
  int rc = user_jid(c, args[0], &bare);
  if (rc) return rc;
  if ((rc = open_store(c)) != 0) goto out;
  int n = store_fast_delete(c->store, bare, nargs > 1 ? args[1] : NULL);
  if (n < 0) rc = store_failed("revoking FAST tokens of", bare, n);
  else printf("%d FAST token%s of %s revoked\n", n, n == 1 ? "" : "s", bare);
out:
  xfree(bare);
  return rc;
}

static int cmd_passwd(ctl_t *c, char **args, int nargs) {
  char *bare = NULL;
  int rc = user_jid(c, args[0], &bare);
  if (rc) return rc;
  if ((rc = open_store(c)) != 0) goto out;
  int ex = store_account_exists(c->store, bare);
  if (ex < 0) {
    rc = store_failed("checking", bare, ex);
    goto out;
  }
  if (!ex) {
    fprintf(stderr, "xmppctl: no such user %s\n", bare);
    rc = EXIT_FAIL;
    goto out;
  }
  store_account_t a;
  if ((rc = new_credentials(c, nargs > 1 ? args[1] : NULL, &a)) != 0) goto out;
  int src = store_account_update(c->store, bare, &a);
  explicit_bzero(&a, sizeof a);
  if (!src) { /* XEP-0484: the FAST tokens of the old password go */
    int n = store_fast_delete(c->store, bare, NULL);
    if (n < 0) src = n;
  }
  if (src == XMPP_ENOENT) {
    fprintf(stderr, "xmppctl: no such user %s\n", bare);
    rc = EXIT_FAIL;
  } else if (src) {
    rc = store_failed("updating", bare, src);
  } else {
    printf("password of %s changed\n", bare);
  }
out:
  xfree(bare);
  return rc;
}

static void print_user(const char *bare, void *ud) {
  (void)ud;
  puts(bare);
}

static int cmd_listusers(ctl_t *c, char **args, int nargs) {
  int rc = open_store(c);
  if (rc) return rc;
  int src = store_account_list(c->store, print_user, NULL);
  if (src) return store_failed("listing", "users", src);
  return EXIT_OK;
}

static int cmd_checkpassword(ctl_t *c, char **args, int nargs) {
  char *bare = NULL;
  int rc = user_jid(c, args[0], &bare);
  if (rc) return rc;
  if ((rc = open_store(c)) != 0) goto out;
  store_account_t a;
  int src = store_account_get(c->store, bare, &a);
  if (src == XMPP_ENOENT) {
    fprintf(stderr, "xmppctl: no such user %s\n", bare);
    rc = EXIT_FAIL;
    goto out;
  }
  if (src) {
    rc = store_failed("reading", bare, src);
    goto out;
  }
  password_t pw;
  /* No format check: a password that could never have been set is simply wrong. */
  if ((rc = get_password(nargs > 1 ? args[1] : NULL, 0, 0, &pw)) != 0) {
    explicit_bzero(&a, sizeof a);
    goto out;
  }
  int ok256 = scram_cred_check_password(SCRAM_SHA256, &a.sha256, pw.p, pw.len) == 0;
  int ok1 = ok256 && scram_cred_check_password(SCRAM_SHA1, &a.sha1, pw.p, pw.len) == 0;
  password_free(&pw);
  explicit_bzero(&a, sizeof a);
  if (ok256 && ok1) {
    printf("password of %s is correct\n", bare);
  } else if (ok256) {
    fprintf(stderr, "xmppctl: %s: SCRAM-SHA-256 matches but SCRAM-SHA-1 does not "
                    "(inconsistent credentials; reset with passwd)\n", bare);
    rc = EXIT_FAIL;
  } else {
    fprintf(stderr, "xmppctl: wrong password for %s\n", bare);
    rc = EXIT_FAIL;
  }
out:
  xfree(bare);
  return rc;
}

/* populate PREFIX COUNT PASSWORD [--roster K] [--first N]: bench accounts, fast. */
static int parse_count(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

static int cmd_populate(ctl_t *c, char **args, int nargs) {
  const char *prefix = args[0];
  long count, roster = 0, first = 1;
  if (parse_count(args[1], 1, 10000000, &count) != 0) {
    usage_error("COUNT must be 1..10000000, not '%s'", args[1]);
    return EXIT_USAGE;
  }
  for (int i = 3; i < nargs; i += 2) {
    long *dst = !strcmp(args[i], "--roster") ? &roster : !strcmp(args[i], "--first") ? &first : NULL;
    if (!dst || i + 1 >= nargs) {
      usage_error("populate: unknown or incomplete option '%s'", args[i]);
      return EXIT_USAGE;
    }
    if (parse_count(args[i + 1], dst == &roster ? 0 : 0, dst == &roster ? 100000 : 1000000000, dst) != 0) {
      usage_error("populate: bad value '%s' for %s", args[i + 1], args[i]);
      return EXIT_USAGE;
    }
  }
  password_t pw;
  int rc = get_password(args[2], 0, 1, &pw);
  if (rc) return rc;
  store_account_t a;
  rc = make_account(c, &pw, &a);
  password_free(&pw);
  if (rc) return rc;
  size_t plen = strlen(prefix);
  if (plen > 900) {
    usage_error("%s", "PREFIX is too long");
    return EXIT_USAGE;
  }
  char **jids = xcalloc((size_t)count, sizeof *jids);
  for (long i = 0; i < count; i++) {
    char name[1024];
    snprintf(name, sizeof name, "%s%ld", prefix, first + i);
    if ((rc = user_jid(c, name, &jids[i])) != 0) goto out;
  }
  if ((rc = open_store(c)) != 0) goto out;
  int src = store_batch_begin(c->store);
  if (src) {
    rc = store_failed("starting", "the batch", src);
    goto out;
  }
  long created = 0, updated = 0, items = 0;
  for (long i = 0; i < count && !src; i++) {
    src = store_account_create(c->store, jids[i], &a);
    if (src == XMPP_EEXIST) {
      src = store_account_update(c->store, jids[i], &a);
      updated++;
    } else if (!src) {
      created++;
    }
    if (src) store_failed("creating", jids[i], src);
  }
  if (roster > 0) {
    long g = roster + 1;
    for (long i = 0; i < count && !src; i++) {
      long base = i / g * g;
      for (long j = base; j < base + g && j < count && !src; j++) {
        if (j == i) continue;
        store_roster_item_t it;
        memset(&it, 0, sizeof it);
        it.jid = jids[j];
        it.sub = SUB_BOTH;
        src = store_roster_put(c->store, jids[i], &it);
        if (src) store_failed("adding a contact to", jids[i], src);
        items++;
      }
    }
  }
  if (src) {
    store_batch_end(c->store, 0);
    rc = EXIT_FAIL;
    goto out;
  }
  src = store_batch_end(c->store, 1);
  if (src) {
    rc = store_failed("committing", "the batch", src);
    goto out;
  }
  printf("populate: %ld accounts (%ld created, %ld updated) %s%ld..%s%ld, %ld roster items\n", count, created,
         updated, prefix, first, prefix, first + count - 1, items);
out:
  explicit_bzero(&a, sizeof a);
  for (long i = 0; i < count; i++) xfree(jids[i]);
  xfree(jids);
  return rc;
}

/* ---- cluster (read-only views of the cluster's Redis: docs/cluster.md) ---------------- */

typedef struct view {
  uv_loop_t loop;
  credis_t *r;
  uv_timer_t timer;
  int inited, up, waiting, failed;
  uint32_t *owner;
  uint32_t nshards;
  uint64_t epoch;
  credis_node_t *nodes; /* live nodes (cluster) */
  int nnodes;
} view_t;

static void view_state(void *ud, int up) { ((view_t *)ud)->up = up; }
static void view_timeout(uv_timer_t *t) { uv_stop(t->loop); }

/* Connects to cluster.redis on a private loop: EXIT_OK once up (within 5 s). */
static int view_open(ctl_t *c, view_t *v) {
  memset(v, 0, sizeof *v);
  if (!c->cfg.cluster_redis[0]) {
    fprintf(stderr, "xmppctl: cluster.redis is not set (config file or XMPPD_CLUSTER_REDIS)\n");
    return EXIT_USAGE;
  }
  uv_loop_init(&v->loop);
  uv_timer_init(&v->loop, &v->timer);
  v->inited = 1;
  static const credis_cbs_t cbs = {view_state, NULL, NULL};
  v->r = credis_new(&v->loop, c->cfg.cluster_redis, c->cfg.cluster_name, &cbs, v);
  if (!v->r) {
    fprintf(stderr, "xmppctl: cluster.redis: bad address '%s'\n", c->cfg.cluster_redis);
    return EXIT_USAGE;
  }
  uv_timer_start(&v->timer, view_timeout, 5000, 0);
  while (!v->up && uv_timer_get_due_in(&v->timer) > 0 && uv_run(&v->loop, UV_RUN_ONCE)) {
  }
  if (!v->up) {
    fprintf(stderr, "xmppctl: cannot reach the cluster's Redis %s\n", c->cfg.cluster_redis);
    return EXIT_FAIL;
  }
  return EXIT_OK;
}

/* Runs the loop until every read issued has answered. */
static void view_wait(view_t *v) {
  while (v->waiting > 0 && uv_run(&v->loop, UV_RUN_ONCE)) {
  }
}

static void view_close(view_t *v) {
  if (!v->inited) return;
  if (v->r) credis_close(v->r);
  uv_close((uv_handle_t *)&v->timer, NULL);
  uv_run(&v->loop, UV_RUN_DEFAULT);
  uv_loop_close(&v->loop);
  xfree(v->owner);
  xfree(v->nodes);
}

static const char *role_name(int role) {
  return role == ROLE_EDGE ? "edge" : role == ROLE_ROUTER ? "router" : role == ROLE_ALL ? "all" : "?";
}

static void nodes_cb(void *ud, int ok, const credis_node_t *nodes, int n) {
  view_t *v = ud;
  v->waiting--;
  if (!ok) {
    v->failed = 1;
    return;
  }
  v->nodes = xcalloc((size_t)n + 1, sizeof *v->nodes);
  if (n) memcpy(v->nodes, nodes, (size_t)n * sizeof *nodes);
  v->nnodes = n;
}

static void map_cb(void *ud, int ok, uint64_t epoch, const uint32_t *owner, uint32_t n) {
  view_t *v = ud;
  v->waiting--;
  if (!ok) {
    v->failed = 1;
    return;
  }
  v->epoch = epoch;
  v->nshards = n;
  v->owner = xcalloc(n ? n : 1, sizeof *owner);
  if (n) memcpy(v->owner, owner, n * sizeof *owner);
}

static const credis_node_t *view_node(const view_t *v, uint32_t id) {
  for (int i = 0; i < v->nnodes; i++)
    if (v->nodes[i].id == id) return &v->nodes[i];
  return NULL;
}

/* What the registry and the shard map in Redis say, checked against each other: the live
 * nodes are those whose lease (registry key) has not run out; the map is the one the live
 * routers publish (docs/cluster.md, "Shard map epoch"). Exit status (docs/operations.md):
 * 0 the map is the live routers' and only they hold shards; 1 Redis unreachable or
 * unreadable; 3 no live node; 4 no live router; 5 the map in Redis is not the live
 * routers' (a shard held by a node that is not live, moved since, or none published):
 * true for about one heartbeat after a change, longer means no live router can write. */
static int cmd_cluster(ctl_t *c, char **args, int nargs) {
  view_t v;
  int rc = view_open(c, &v);
  if (rc != EXIT_OK) {
    view_close(&v);
    return rc;
  }
  printf("cluster '%s', Redis %s\n", c->cfg.cluster_name, c->cfg.cluster_redis);
  v.waiting = 2;
  credis_nodes_get(v.r, nodes_cb, &v);
  credis_shardmap_get(v.r, map_cb, &v);
  view_wait(&v);
  if (v.failed) {
    fprintf(stderr, "xmppctl: reading the cluster's Redis failed\n");
    view_close(&v);
    return EXIT_FAIL;
  }
  int nrouters = 0;
  printf("%-6s %-7s %-8s %-22s %s\n", "node", "role", "workers", "bus address", "incarnation");
  for (int i = 0; i < v.nnodes; i++) {
    const credis_node_t *x = &v.nodes[i];
    char addr[96];
    snprintf(addr, sizeof addr, "%s:%d", x->host, x->bus_port);
    printf("%-6u %-7s %-8u %-22s %llx\n", x->id, role_name(x->role), x->workers, addr,
           (unsigned long long)x->incarnation);
    nrouters += (x->role & ROLE_ROUTER) != 0;
  }
  if (!v.nnodes) printf("(no live node)\n");
  else if (!nrouters) printf("(no live router: no shard has an owner)\n");
  uint32_t dead = 0, differ = 0;
  if (!v.nshards) {
    printf("shard map: none published\n");
  } else {
    printf("shard map: epoch %llu, %u shards\n", (unsigned long long)v.epoch, v.nshards);
    /* shards per owner node (ids are 16-bit: counted in one pass) */
    uint32_t *per = xcalloc(65536, sizeof *per);
    for (uint32_t s = 0; s < v.nshards; s++) per[v.owner[s] >> 16]++;
    for (uint32_t id = 0; id < 65536; id++) {
      if (!per[id]) continue;
      const credis_node_t *x = view_node(&v, id);
      int live = x && (x->role & ROLE_ROUTER);
      if (!live) dead += per[id];
      printf("  node %u: %u shards%s\n", id, per[id],
             !id ? " (no owner)" : live ? "" : x ? " (NOT A ROUTER)" : " (NOT LIVE)");
    }
    xfree(per);
    /* the map the live routers compute (common/cluster/shardmap.c), as every node does */
    shardmap_router_t *r = xcalloc((size_t)v.nnodes + 1, sizeof *r);
    int nr = 0;
    for (int i = 0; i < v.nnodes; i++)
      if ((v.nodes[i].role & ROLE_ROUTER) && (v.nodes[i].shards == v.nshards || !v.nodes[i].shards))
        r[nr++] = (shardmap_router_t){v.nodes[i].id, v.nodes[i].workers};
    uint32_t *want = xcalloc(v.nshards, sizeof *want);
    shardmap_compute(v.nshards, r, nr, want);
    for (uint32_t s = 0; s < v.nshards; s++) differ += want[s] != v.owner[s];
    xfree(want);
    xfree(r);
  }
  view_close(&v);
  if (!v.nnodes) return EXIT_NO_NODE;
  if (!nrouters) return EXIT_NO_ROUTER;
  if (!v.nshards) {
    printf("STALE: no shard map published although routers are live\n");
    return EXIT_STALE_MAP;
  }
  if (dead || differ) {
    printf("STALE: %u shards held by nodes that are not live routers, %u differ from the live routers' map\n", dead,
           differ);
    return EXIT_STALE_MAP;
  }
  printf("ok: the map is the live routers'\n");
  return EXIT_OK;
}

typedef struct sessions_ud {
  view_t *v;
  const char *bare;
  int n;
} sessions_ud_t;

static void sessions_cb(void *ud, int ok, const char **resources, const credis_session_t *s, int n) {
  sessions_ud_t *x = ud;
  x->v->waiting--;
  if (!ok) {
    x->v->failed = 1;
    return;
  }
  x->n = n;
  for (int i = 0; i < n; i++)
    printf("%s/%s  node %u thread %u conn %llx  priority %d  %s\n", x->bare, resources[i], s[i].node, s[i].thread,
           (unsigned long long)s[i].conn, s[i].priority, s[i].available ? "available" : "unavailable");
}

static int control_call(ctl_t *c, const char *const *fields, int n);

static int cmd_sessions(ctl_t *c, char **args, int nargs) {
  if (nargs == 0) { /* this server's sessions, over its control socket */
    const char *f[] = {"sessions"};
    return control_call(c, f, 1);
  }
  char *bare = NULL;
  int rc = user_jid(c, args[0], &bare);
  if (rc != EXIT_OK) return rc;
  view_t v;
  rc = view_open(c, &v);
  if (rc == EXIT_OK) {
    sessions_ud_t x = {&v, bare, 0};
    v.waiting = 1;
    credis_dir_get(v.r, bare, sessions_cb, &x);
    view_wait(&v);
    if (v.failed) {
      fprintf(stderr, "xmppctl: reading the cluster's Redis failed\n");
      rc = EXIT_FAIL;
    } else if (!x.n) {
      printf("%s: no session\n", bare);
    }
  }
  view_close(&v);
  xfree(bare);
  return rc;
}

/* ---- the running server's control socket (docs/operations.md "The control socket") ---- */

/* The longest answer read (a session list of a very busy edge process). */
#define CONTROL_ANSWER_MAX (256u << 20)
#define CONTROL_WAIT_MS 15000

/* The path: --socket, else server.control_socket of the configuration. */
static const char *g_socket;

/* Sends the request fields (tab-separated), prints the JSON answer on stdout; EXIT_OK when
 * it says "ok":true, EXIT_FAIL otherwise (its error on stderr too). */
static int control_call(ctl_t *c, const char *const *fields, int n) {
  char *path = g_socket ? xstrdup(g_socket) : config_control_socket(&c->cfg);
  if (!path) {
    fprintf(stderr, "xmppctl: no control socket configured (server.control_socket; with storage.backend = redis "
                    "give each process its own path), or give --socket PATH\n");
    return EXIT_USAGE;
  }
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sun.sun_path) {
    fprintf(stderr, "xmppctl: control socket path too long: %s\n", path);
    xfree(path);
    return EXIT_USAGE;
  }
  memcpy(sun.sun_path, path, strlen(path) + 1);
  buf_t req;
  buf_init(&req);
  for (int i = 0; i < n; i++) {
    for (const char *p = fields[i]; *p; p++)
      if ((unsigned char)*p < 0x20 || *p == 0x7f) {
        usage_error("argument %d has a control character (tab, newline...): not allowed", i + 1);
        buf_free(&req);
        xfree(path);
        return EXIT_USAGE;
      }
    if (i) buf_putc(&req, '\t');
    buf_puts(&req, fields[i]);
  }
  buf_putc(&req, '\n');
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
    int e = errno;
    if (e == ENOENT)
      fprintf(stderr, "xmppctl: no control socket at %s: is xmppd running with this configuration?\n", path);
    else if (e == ECONNREFUSED)
      fprintf(stderr, "xmppctl: nobody serves %s (left by a server that is not running)\n", path);
    else if (e == EACCES || e == EPERM)
      fprintf(stderr, "xmppctl: %s: %s (mode 0600: run as the server's user, or root)\n", path, strerror(e));
    else
      fprintf(stderr, "xmppctl: %s: %s\n", path, strerror(e));
    if (fd >= 0) close(fd);
    buf_free(&req);
    xfree(path);
    return EXIT_FAIL;
  }
  xfree(path);
  signal(SIGPIPE, SIG_IGN);
  size_t off = 0;
  int rc = EXIT_OK;
  while (off < req.len) {
    ssize_t w = write(fd, req.data + off, req.len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break; /* the server may have answered (an error) and closed: read it */
    off += (size_t)w;
  }
  buf_free(&req);
  buf_t ans;
  buf_init(&ans);
  for (;;) {
    struct pollfd pfd = {fd, POLLIN, 0};
    int pr = poll(&pfd, 1, CONTROL_WAIT_MS);
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) {
      fprintf(stderr, "xmppctl: no answer within %d s\n", CONTROL_WAIT_MS / 1000);
      rc = EXIT_FAIL;
      break;
    }
    buf_reserve(&ans, 65536);
    ssize_t r = read(fd, ans.data + ans.len, 65536);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    ans.len += (size_t)r;
    if (memchr(ans.data + ans.len - (size_t)r, '\n', (size_t)r)) break;
    if (ans.len > CONTROL_ANSWER_MAX) {
      fprintf(stderr, "xmppctl: answer longer than %u bytes\n", CONTROL_ANSWER_MAX);
      rc = EXIT_FAIL;
      break;
    }
  }
  close(fd);
  if (rc == EXIT_OK) {
    if (!ans.len || ans.data[ans.len - 1] != '\n') {
      fprintf(stderr, "xmppctl: the server closed without an answer\n");
      rc = EXIT_FAIL;
    } else {
      fwrite(ans.data, 1, ans.len, stdout);
      static const char okp[] = "{\"ok\":true";
      if (ans.len < sizeof okp - 1 || memcmp(ans.data, okp, sizeof okp - 1) != 0) {
        /* {"ok":false,"error":"..."}: the message, as written (JSON escapes left) */
        static const char ep[] = "{\"ok\":false,\"error\":\"";
        size_t skip = ans.len > sizeof ep + 2 && !memcmp(ans.data, ep, sizeof ep - 1) ? sizeof ep - 1 : 0;
        size_t end = skip ? ans.len - 3 : ans.len - 1; /* before "}\n */
        fprintf(stderr, "xmppctl: %.*s\n", (int)(end - skip), (const char *)ans.data + skip);
        rc = EXIT_FAIL;
      }
    }
  }
  buf_free(&ans);
  return rc;
}

static int cmd_status(ctl_t *c, char **args, int nargs) {
  const char *f[] = {"status"};
  return control_call(c, f, 1);
}

/* kick JID [TEXT...]: a JID without '@' gets the configured domain (a resource is kept). */
static int cmd_kick(ctl_t *c, char **args, int nargs) {
  char *jid = strchr(args[0], '@') ? xstrdup(args[0]) : xstrfmt("%s@%s", args[0], c->cfg.domain);
  if (!strchr(args[0], '@') && strchr(args[0], '/')) { /* user/resource */
    xfree(jid);
    size_t ul = strcspn(args[0], "/");
    jid = xstrfmt("%.*s@%s%s", (int)ul, args[0], c->cfg.domain, args[0] + ul);
  }
  buf_t text;
  buf_init(&text);
  for (int i = 1; i < nargs; i++) {
    if (i > 1) buf_putc(&text, ' ');
    buf_puts(&text, args[i]);
  }
  buf_putc(&text, '\0');
  const char *f[] = {"kick", jid, (const char *)text.data};
  int rc = control_call(c, f, nargs > 1 ? 3 : 2);
  buf_free(&text);
  xfree(jid);
  return rc;
}

/* domains, reload: virtual hosting (docs/operations.md "Virtual hosting"). */
static int cmd_domains(ctl_t *c, char **args, int nargs) {
  const char *f[] = {"domains"};
  return control_call(c, f, 1);
}

/* domain add NAME [--template T] [--certificate FILE --key FILE]
 * domain remove NAME [--purge]
 * domain show NAME
 * runtime domains (docs/operations.md "Virtual hosting"): checked by the server. */
static int cmd_domain(ctl_t *c, char **args, int nargs) {
  const char *verb = args[0];
  if (!strcmp(verb, "show") && nargs == 2) {
    const char *f[] = {"domain-show", args[1]};
    return control_call(c, f, 2);
  }
  if (!strcmp(verb, "remove") && (nargs == 2 || (nargs == 3 && !strcmp(args[2], "--purge")))) {
    const char *f[] = {"domain-remove", args[1], nargs == 3 ? "true" : "false"};
    return control_call(c, f, 3);
  }
  if (!strcmp(verb, "add") && nargs >= 2) {
    const char *tmpl = "", *cert = "", *key = "";
    for (int i = 2; i < nargs; i += 2) {
      const char **slot = !strcmp(args[i], "--template") ? &tmpl : !strcmp(args[i], "--certificate") ? &cert
                        : !strcmp(args[i], "--key")        ? &key
                                                           : NULL;
      if (!slot || i + 1 >= nargs) {
        usage_error("domain add: unknown option or missing value '%s'", args[i]);
        return EXIT_USAGE;
      }
      *slot = args[i + 1];
    }
    if (!*cert != !*key) {
      usage_error("%s", "domain add: --certificate and --key go together");
      return EXIT_USAGE;
    }
    const char *f[] = {"domain-add", args[1], tmpl, cert, key};
    return control_call(c, f, 5);
  }
  usage_error("%s", "usage: domain add NAME [--template T] [--certificate FILE --key FILE] | domain remove NAME "
                    "[--purge] | domain show NAME");
  return EXIT_USAGE;
}

static int cmd_reload(ctl_t *c, char **args, int nargs) {
  const char *f[] = {"reload"};
  return control_call(c, f, 1);
}

static int cmd_broadcast(ctl_t *c, char **args, int nargs) {
  buf_t text;
  buf_init(&text);
  for (int i = 0; i < nargs; i++) {
    if (i) buf_putc(&text, ' ');
    buf_puts(&text, args[i]);
  }
  buf_putc(&text, '\0');
  const char *f[] = {"broadcast", (const char *)text.data};
  int rc = control_call(c, f, 2);
  buf_free(&text);
  return rc;
}

/* drain RATE [HOST:PORT]: checked by the server. */
static int cmd_drain(ctl_t *c, char **args, int nargs) {
  const char *f[] = {"drain", args[0], nargs > 1 ? args[1] : ""};
  return control_call(c, f, nargs > 1 ? 3 : 2);
}

typedef struct command {
  const char *name;
  int min_args, max_args;
  const char *args_usage;
  int (*run)(ctl_t *c, char **args, int nargs);
} command_t;

static const command_t commands[] = {
    {"adduser", 1, 2, "JID [PASSWORD]", cmd_adduser},
    {"deluser", 1, 1, "JID", cmd_deluser},
    {"passwd", 1, 2, "JID [PASSWORD]", cmd_passwd},
    {"fast-revoke", 1, 2, "JID [USER-AGENT-ID]", cmd_fast_revoke},
    {"listusers", 0, 0, "", cmd_listusers},
    {"checkpassword", 1, 2, "JID [PASSWORD]", cmd_checkpassword},
    {"populate", 3, 7, "PREFIX COUNT PASSWORD [--roster K] [--first N]", cmd_populate},
    {"cluster", 0, 0, "", cmd_cluster},
    {"sessions", 0, 1, "[JID]", cmd_sessions},
    {"status", 0, 0, "", cmd_status},
    {"kick", 1, 1000, "JID [TEXT]", cmd_kick},
    {"broadcast", 1, 1000, "TEXT", cmd_broadcast},
    {"domains", 0, 0, "", cmd_domains},
    {"domain", 2, 8, "add NAME [--template T] [--certificate FILE --key FILE] | remove NAME [--purge] | show NAME",
     cmd_domain},
    {"reload", 0, 0, "", cmd_reload},
    {"drain", 1, 2, "RATE [HOST:PORT]", cmd_drain},
};

int main(int argc, char **argv) {
  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'c'},
      {"db", required_argument, NULL, 'd'},
      {"help", no_argument, NULL, 'h'},
      {"socket", required_argument, NULL, 'S'},
      {NULL, 0, NULL, 0},
  };
  const char *config_path = NULL, *db_path = NULL;
  int opt;
  log_set_level(LOG_WARN);
  /* '+': options end at COMMAND, so a password starting with '-' is not an option. */
  while ((opt = getopt_long(argc, argv, "+c:hS:", longopts, NULL)) != -1) {
    switch (opt) {
    case 'S': g_socket = optarg; break;
    case 'c': config_path = optarg; break;
    case 'd': db_path = optarg; break;
    case 'h': fputs(usage_text, stdout); return EXIT_OK;
    default: fputs("Try 'xmppctl --help'.\n", stderr); return EXIT_USAGE;
    }
  }
  if (optind >= argc) {
    usage_error("%s", "no command given");
    return EXIT_USAGE;
  }
  const char *name = argv[optind];
  const command_t *cmd = NULL;
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(commands[i].name, name) == 0) cmd = &commands[i];
  if (!cmd) {
    usage_error("unknown command '%s'", name);
    return EXIT_USAGE;
  }
  int nargs = argc - optind - 1;
  if (nargs < cmd->min_args || nargs > cmd->max_args) {
    fprintf(stderr, "usage: xmppctl [-c CONFIG] [--db PATH] %s%s%s\n", cmd->name,
            *cmd->args_usage ? " " : "", cmd->args_usage);
    return EXIT_USAGE;
  }

  ctl_t c;
  memset(&c, 0, sizeof c);
  char *err = NULL;
  if (config_load(&c.cfg, config_path, &err) != 0 || config_apply_env(&c.cfg, &err) != 0) {
    fprintf(stderr, "xmppctl: %s\n", err ? err : "cannot load the configuration");
    xfree(err);
    config_free(&c.cfg);
    return EXIT_USAGE;
  }
  if (db_path) {
    if (!*db_path) {
      config_free(&c.cfg);
      usage_error("%s", "--db needs a path");
      return EXIT_USAGE;
    }
    /* The file (sqlite) or the address (redis) of the configured back-end. */
    char **slot = strcmp(c.cfg.store_backend, "redis") == 0 ? &c.cfg.store_redis : &c.cfg.store_path;
    xfree(*slot);
    *slot = xstrdup(db_path);
  }

  int rc = cmd->run(&c, argv + optind + 1, nargs);
  if (c.store) store_close(c.store);
  config_free(&c.cfg);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "xmppctl: writing the output: %s\n", strerror(errno));
    if (rc == EXIT_OK) rc = EXIT_FAIL;
  }
  return rc;
}

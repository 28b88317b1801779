/* The address of a Redis server, as configured ("storage.redis", the cluster's Redis):
 *   HOST:PORT | [IPV6]:PORT | HOST (port 6379) | unix:/PATH            one server
 *   cluster:HOST:PORT[,HOST:PORT...]                                   a Redis Cluster (seed nodes)
 *   sentinel:HOST:PORT[,HOST:PORT...]/MASTERNAME                       a primary found by Sentinel
 * optionally followed by space- or tab-separated db=N and password=SECRET (db=N is refused
 * with cluster:, which has db 0 only; the password is the data nodes', sentinels are asked
 * without one).
 * Shared by the synchronous store back-end (common/store/store_redis.c) and the
 * asynchronous cluster client (common/credis.c), so both accept exactly the same text.
 * Pure parsing: no I/O, any thread. */
#ifndef XMPP_REDIS_ADDR_H
#define XMPP_REDIS_ADDR_H

typedef enum { REDIS_MODE_SINGLE, REDIS_MODE_CLUSTER, REDIS_MODE_SENTINEL } redis_mode_t;

#define REDIS_ADDR_MAX_SEEDS 64

typedef struct redis_addr {
  redis_mode_t mode;
  char *host;      /* NULL for a unix socket */
  char *unix_path; /* NULL for TCP */
  int port;        /* 6379 when not given; 0 for a unix socket */
  int db;          /* 0 when not given */
  char *password;  /* NULL when not given */
  char *shown;     /* "HOST:PORT db N" / "unix:/PATH db N" / "cluster:H:P,..." /
                      "sentinel:H:P,.../NAME db N", for messages: never the password */
  /* cluster: the seed nodes; sentinel: the sentinels (host/port above: the first) */
  int nseeds;
  char **seed_host;
  int *seed_port;
  char *master;    /* sentinel: the primary's name */
} redis_addr_t;

/* Parses text into *a (zeroed first). 0, or XMPP_EINVAL with a message in *err (caller
 * frees; never contains the password) and *a left empty. The caller owns the strings:
 * redis_addr_free. */
int redis_addr_parse(redis_addr_t *a, const char *text, char **err);
/* Frees the strings (the password is wiped first); *a is left empty. NULL-safe. */
void redis_addr_free(redis_addr_t *a);

#endif

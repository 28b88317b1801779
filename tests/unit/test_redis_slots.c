/* common/redis_slots.c: CRC16 and hash tags against the Redis Cluster specification's
 * values (and CLUSTER KEYSLOT of a real Redis 7), CLUSTER SLOTS and redirection parsing,
 * the retry policy's bounds, Sentinel replies, script SHAs. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/redis_slots.h"

static int slot_of(const char *k) { return rslots_key_slot(k, strlen(k)); }

Test(redis_slots, crc16_known_values) {
  /* the specification's check value: CRC16/XMODEM("123456789") = 0x31C3 */
  cr_assert_eq(rslots_crc16("123456789", 9), 0x31C3);
  cr_assert_eq(slot_of("123456789"), 12739);
  cr_assert_eq(rslots_crc16("", 0), 0);
  /* CLUSTER KEYSLOT on Redis 7.0 */
  cr_assert_eq(slot_of("foo"), 12182);
  cr_assert_eq(slot_of("bar"), 5061);
  cr_assert_eq(slot_of("hello"), 866);
}

Test(redis_slots, hash_tags) {
  cr_assert_eq(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
  cr_assert_eq(slot_of("{user1000}.following"), slot_of("user1000"));
  /* the specification's examples */
  cr_assert_eq(slot_of("foo{{bar}}zap"), slot_of("{bar")); /* the tag is "{bar" */
  cr_assert_eq(slot_of("foo{bar}{zap}"), slot_of("bar"));
  cr_assert_eq(slot_of("foo{}{bar}"), rslots_crc16("foo{}{bar}", 10) & 16383); /* empty tag: the whole key */
  cr_assert_eq(slot_of("foo{bar"), rslots_crc16("foo{bar", 7) & 16383);       /* no '}': the whole key */
  /* xmppd's layout: every key of a user in one slot, a '}' in the localpart included */
  cr_assert_eq(slot_of("{u:a@example.com}:a"), slot_of("{u:a@example.com}:mw"));
  cr_assert_eq(slot_of("{u:a}b@example.com}:a"), slot_of("{u:a}b@example.com}:o"));
  cr_assert_eq(slot_of("xmppd:s:{a@example.com}"), slot_of("a@example.com"));
  /* a key with NUL bytes: lengths, not strings */
  cr_assert_eq(rslots_key_slot("{a\0b}c", 6), rslots_crc16("a\0b", 3) & 16383);
}

Test(redis_slots, command_keys) {
  const char *get[] = {"GET", "k"};
  size_t gl[] = {3, 1};
  cr_assert_eq(rslots_cmd_key(2, get, gl), 1);
  const char *ev[] = {"EVALSHA", "0123", "2", "k1", "k2", "arg"};
  size_t el[] = {7, 4, 1, 2, 2, 3};
  cr_assert_eq(rslots_cmd_key(6, ev, el), 3);
  const char *ev0[] = {"evalsha", "0123", "0", "arg"};
  size_t e0[] = {7, 4, 1, 3};
  cr_assert_eq(rslots_cmd_key(4, ev0, e0), -1);
  const char *sc[] = {"SCRIPT", "LOAD", "return 1"};
  size_t sl[] = {6, 4, 8};
  cr_assert_eq(rslots_cmd_key(3, sc, sl), -1);
  const char *ping[] = {"PING"};
  size_t pl[] = {4};
  cr_assert_eq(rslots_cmd_key(1, ping, pl), -1);
}

Test(redis_slots, redirects) {
  rslots_redirect_t to;
  const char *m = "MOVED 3999 127.0.0.1:6381";
  cr_assert_eq(rslots_parse_redirect(m, strlen(m), &to), 0);
  cr_assert_eq(to.slot, 3999);
  cr_assert_str_eq(to.host, "127.0.0.1");
  cr_assert_eq(to.port, 6381);
  const char *a = "ASK 12739 [::1]:7002";
  cr_assert_eq(rslots_parse_redirect(a, strlen(a), &to), 0);
  cr_assert_eq(to.slot, 12739);
  cr_assert_str_eq(to.host, "::1");
  cr_assert_eq(to.port, 7002);
  const char *bad[] = {"MOVED", "MOVED x 1.2.3.4:5", "MOVED 16384 1.2.3.4:5", "MOVED 1 1.2.3.4:0",
                       "MOVED 1 1.2.3.4", "MOVED 1 :6379", "ASK -1 h:1", "ERR MOVED 1 h:1", "MOVED 1 h:1x"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    cr_assert_eq(rslots_parse_redirect(bad[i], strlen(bad[i]), &to), -1, "%s", bad[i]);
}

static redisReply err_reply(const char *s) {
  redisReply r = {.type = REDIS_REPLY_ERROR, .str = (char *)s, .len = strlen(s)};
  return r;
}

Test(redis_slots, policy) {
  rslots_try_t t = {0};
  rslots_redirect_t to;
  unsigned ms = 0;
  redisReply ok = {.type = REDIS_REPLY_INTEGER, .integer = 1};
  cr_assert_eq(rslots_next(&t, &ok, &to, &ms), RSLOTS_DONE);
  redisReply other = err_reply("ERR wrong number of arguments");
  cr_assert_eq(rslots_next(&t, &other, &to, &ms), RSLOTS_DONE);
  redisReply mv = err_reply("MOVED 5 10.0.0.1:7000");
  cr_assert_eq(rslots_next(&t, &mv, &to, &ms), RSLOTS_MOVED);
  cr_assert_eq(to.slot, 5);
  redisReply ask = err_reply("ASK 5 10.0.0.2:7000");
  cr_assert_eq(rslots_next(&t, &ask, &to, &ms), RSLOTS_ASK);
  cr_assert_str_eq(to.host, "10.0.0.2");
  /* redirects are bounded (a loop of MOVEDs between two confused nodes ends) */
  int n = 2;
  while (rslots_next(&t, &mv, &to, &ms) == RSLOTS_MOVED) n++;
  cr_assert_eq(n, RSLOTS_MAX_REDIRECTS);
  /* TRYAGAIN / CLUSTERDOWN / a lost connection: bounded, growing waits */
  rslots_try_t w = {0};
  redisReply tr = err_reply("TRYAGAIN Multiple keys request during rehashing of slot");
  redisReply cd = err_reply("CLUSTERDOWN The cluster is down");
  unsigned total = 0, last = 0;
  int waits = 0;
  for (;;) {
    const redisReply *r = waits % 3 == 0 ? &tr : waits % 3 == 1 ? &cd : NULL;
    rslots_action_t act = rslots_next(&w, r, &to, &ms);
    if (act == RSLOTS_GIVE_UP) break;
    cr_assert_eq(act, RSLOTS_WAIT);
    cr_assert_geq(ms, last);
    cr_assert_leq(ms, RSLOTS_WAIT_MAX_MS);
    last = ms;
    total += ms;
    waits++;
  }
  cr_assert_eq(waits, RSLOTS_MAX_WAITS);
  cr_assert(total >= 4000 && total <= 6000, "waits %u ms in all", total);
  /* NOSCRIPT: once */
  rslots_try_t s = {0};
  redisReply ns = err_reply("NOSCRIPT No matching script. Please use EVAL.");
  cr_assert_eq(rslots_next(&s, &ns, &to, &ms), RSLOTS_NOSCRIPT);
  cr_assert_eq(rslots_next(&s, &ns, &to, &ms), RSLOTS_GIVE_UP);
  /* READONLY: find the primary at once, then wait for the failover, bounded */
  rslots_try_t p = {0};
  redisReply ro = err_reply("READONLY You can't write against a read only replica.");
  cr_assert_eq(rslots_next(&p, &ro, &to, &ms), RSLOTS_PRIMARY);
  int k = 0;
  while (rslots_next(&p, &ro, &to, &ms) == RSLOTS_WAIT) k++;
  cr_assert_eq(k, RSLOTS_MAX_WAITS - 1);
  /* a malformed MOVED is reported as the error it is */
  rslots_try_t b = {0};
  redisReply bm = err_reply("MOVED nonsense");
  cr_assert_eq(rslots_next(&b, &bm, &to, &ms), RSLOTS_DONE);
}

/* CLUSTER SLOTS replies, built by hand. */
static redisReply *r_int(long long v) {
  redisReply *r = calloc(1, sizeof *r);
  r->type = REDIS_REPLY_INTEGER;
  r->integer = v;
  return r;
}
static redisReply *r_str(const char *s) {
  redisReply *r = calloc(1, sizeof *r);
  r->type = REDIS_REPLY_STRING;
  r->str = strdup(s);
  r->len = strlen(s);
  return r;
}
static redisReply *r_arr(size_t n, ...) {
  redisReply *r = calloc(1, sizeof *r);
  r->type = REDIS_REPLY_ARRAY;
  r->elements = n;
  r->element = calloc(n, sizeof *r->element);
  va_list ap;
  va_start(ap, n);
  for (size_t i = 0; i < n; i++) r->element[i] = va_arg(ap, redisReply *);
  va_end(ap);
  return r;
}

Test(redis_slots, cluster_slots_reply) {
  redisReply *rep = r_arr(3,
      r_arr(4, r_int(0), r_int(5460), r_arr(3, r_str("127.0.0.1"), r_int(7000), r_str("id0")),
            r_arr(3, r_str("127.0.0.1"), r_int(7003), r_str("id3"))),
      r_arr(3, r_int(5461), r_int(10922), r_arr(2, r_str(""), r_int(7001))),
      r_arr(3, r_int(10923), r_int(16383), r_arr(3, r_str("127.0.0.1"), r_int(7002), r_str("id2"))));
  rslots_map_t m;
  rslots_map_init(&m);
  char *err = NULL;
  cr_assert_eq(rslots_map_load(&m, rep, "10.1.1.1", &err), 0, "%s", err ? err : "");
  cr_assert_eq(m.nnodes, 3);
  cr_assert_eq(rslots_map_covered(&m), RSLOTS_COUNT);
  int o = rslots_map_owner(&m, 12739);
  cr_assert_eq(m.nodes[o].port, 7002);
  o = rslots_map_owner(&m, 5461);
  cr_assert_str_eq(m.nodes[o].host, "10.1.1.1"); /* "": the node asked */
  cr_assert_eq(m.nodes[o].port, 7001);
  cr_assert_eq(rslots_map_owner(&m, 0), rslots_map_owner(&m, 5460));
  /* loading again keeps the indexes */
  int before = rslots_map_owner(&m, 100);
  cr_assert_eq(rslots_map_load(&m, rep, "10.1.1.1", &err), 0);
  cr_assert_eq(rslots_map_owner(&m, 100), before);
  cr_assert_eq(m.nnodes, 3);
  /* a reply that is not one leaves the map as it was */
  redisReply *bad = r_arr(1, r_arr(3, r_int(0), r_int(20000), r_arr(2, r_str("h"), r_int(1))));
  cr_assert_eq(rslots_map_load(&m, bad, "h", &err), -1);
  cr_assert_not_null(err);
  free(err);
  err = NULL;
  cr_assert_eq(rslots_map_covered(&m), RSLOTS_COUNT);
  redisReply *bad2 = r_arr(1, r_arr(3, r_int(0), r_int(1), r_arr(2, r_str("h"), r_str("7000"))));
  cr_assert_eq(rslots_map_load(&m, bad2, "h", &err), -1);
  free(err);
  err = NULL;
  redisReply e = err_reply("ERR This instance has cluster support disabled");
  cr_assert_eq(rslots_map_load(&m, &e, "h", &err), -1);
  cr_assert(strstr(err, "cluster support disabled"));
  free(err);
  /* a partial map: the rest unknown */
  redisReply *part = r_arr(1, r_arr(3, r_int(0), r_int(99), r_arr(2, r_str("h"), r_int(1))));
  cr_assert_eq(rslots_map_load(&m, part, "h", &err), 0);
  cr_assert_eq(rslots_map_covered(&m), 100);
  cr_assert_eq(rslots_map_owner(&m, 100), -1);
  cr_assert_eq(rslots_map_owner(&m, -1), -1);
  cr_assert_eq(rslots_map_owner(&m, RSLOTS_COUNT), -1);
  rslots_map_free(&m);
  freeReplyObject(rep); /* hiredis frees str/element with free() */
  freeReplyObject(bad);
  freeReplyObject(bad2);
  freeReplyObject(part);
}

Test(redis_slots, sentinel_reply) {
  char host[RSLOTS_HOST_MAX];
  int port = 0;
  redisReply *ok = r_arr(2, r_str("127.0.0.1"), r_str("6380"));
  cr_assert_eq(rslots_sentinel_addr(ok, host, &port), 0);
  cr_assert_str_eq(host, "127.0.0.1");
  cr_assert_eq(port, 6380);
  redisReply nil = {.type = REDIS_REPLY_NIL};
  cr_assert_eq(rslots_sentinel_addr(&nil, host, &port), -1);
  redisReply *badport = r_arr(2, r_str("h"), r_str("70000"));
  cr_assert_eq(rslots_sentinel_addr(badport, host, &port), -1);
  freeReplyObject(ok);
  freeReplyObject(badport);
}

Test(redis_slots, script_sha) {
  char sha[41];
  rslots_script_sha("return 1", sha); /* SCRIPT LOAD "return 1" on Redis */
  cr_assert_str_eq(sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
}

/* common/redis_addr.c: the cluster: and sentinel: forms of storage.redis. */
#include "common/redis_addr.h"

Test(redis_addr, cluster_and_sentinel) {
  redis_addr_t a;
  char *err = NULL;
  cr_assert_eq(redis_addr_parse(&a, "cluster:127.0.0.1:7000,[::1]:7001,h password=s", &err), 0);
  cr_assert_eq(a.mode, REDIS_MODE_CLUSTER);
  cr_assert_eq(a.nseeds, 3);
  cr_assert_str_eq(a.seed_host[1], "::1");
  cr_assert_eq(a.seed_port[1], 7001);
  cr_assert_eq(a.seed_port[2], 6379);
  cr_assert_str_eq(a.password, "s");
  cr_assert_null(strstr(a.shown, "s db"));
  cr_assert_null(strstr(a.shown, "password"));
  redis_addr_free(&a);
  cr_assert_eq(redis_addr_parse(&a, "sentinel:10.0.0.1:26379,10.0.0.2:26379/mymaster db=2", &err), 0);
  cr_assert_eq(a.mode, REDIS_MODE_SENTINEL);
  cr_assert_eq(a.nseeds, 2);
  cr_assert_str_eq(a.master, "mymaster");
  cr_assert_eq(a.db, 2);
  redis_addr_free(&a);
  cr_assert_eq(redis_addr_parse(&a, "127.0.0.1:6379", &err), 0);
  cr_assert_eq(a.mode, REDIS_MODE_SINGLE);
  redis_addr_free(&a);
  const char *bad[] = {"cluster:", "cluster:h:0", "cluster:h:1 db=1", "sentinel:h:1", "sentinel:h:1/",
                       "sentinel:/m", "cluster:,,", "cluster:[::1:7000"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    err = NULL;
    cr_assert_neq(redis_addr_parse(&a, bad[i], &err), 0, "%s", bad[i]);
    cr_assert_not_null(err, "%s", bad[i]);
    free(err);
  }
}

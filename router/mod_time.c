/* XEP-0202 entity time of the server: its UTC time (XEP-0082 DateTime in whole seconds,
 * as XEP-0202 §3's example) and the offset of its local time zone. Clients answer for
 * their own full JIDs. */
#include "router/module.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define NS_TIME "urn:xmpp:time"

static void entity_time(mod_iq_ctx_t *c) {
  arena_t *a = &c->w->arena;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);

  struct tm utc, loc;
  gmtime_r(&ts.tv_sec, &utc);
  localtime_r(&ts.tv_sec, &loc);
  char u[80], z[48];
  snprintf(u, sizeof u, "%04d-%02d-%02dT%02d:%02d:%02dZ", utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday,
           utc.tm_hour, utc.tm_min, utc.tm_sec);
  long off = loc.tm_gmtoff / 60; /* minutes east of UTC */
  snprintf(z, sizeof z, "%c%02ld:%02ld", off < 0 ? '-' : '+', (off < 0 ? -off : off) / 60, (off < 0 ? -off : off) % 60);
  xnode_t *t = xnode_new(a, "time", NS_TIME);
  xnode_add_text(a, xnode_add(a, t, "tzo", NS_TIME), z, strlen(z));
  xnode_add_text(a, xnode_add(a, t, "utc", NS_TIME), u, strlen(u));
  mod_iq_result(c, t);
}

static const mod_iq_t iqs[] = {
    {NS_TIME, "time", MOD_GET, MOD_AT_SERVER, MOD_ANYONE, entity_time},
    {0},
};
static const char *const features[] = {NS_TIME, NULL};

const module_t mod_time = {
    .name = "time",
    .server_features = features,
    .iqs = iqs,
};

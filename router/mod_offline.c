/* XEP-0160 offline messages with XEP-0203 delay stamps: what the server announces
 * (the queue and its delivery are in offline.c). */
#include "router/module.h"

static const char *const features[] = {NS_OFFLINE, NS_DELAY, NULL};

const module_t mod_offline = {
    .name = "offline",
    .server_features = features,
};

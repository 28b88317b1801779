/* Test-only hooks of common/scram.c. Not part of the public interface: include only from
 * unit tests. */
#ifndef XMPP_SCRAM_TESTING_H
#define XMPP_SCRAM_TESTING_H

#include "common/scram.h"

/* Forces the server part of the nonce that the next scram_server_first() appends to the
 * client nonce (instead of random bytes), so that published test vectors can be reproduced.
 * Must be called before scram_server_first(). The suffix must be non-empty printable ASCII
 * without ','. Returns 0 or XMPP_EINVAL. */
int scram_server_set_nonce_for_test(scram_server_t *s, const char *server_nonce_suffix);

#endif

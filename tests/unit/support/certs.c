#include "tests/unit/support/certs.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

void certs_make(char *dir, size_t cap, const char *name, const char *script) {
  snprintf(dir, cap, "/tmp/%s.XXXXXX", name);
  cr_assert_not_null(mkdtemp(dir));
  char cmd[4096];
  cr_assert_lt((size_t)snprintf(cmd, sizeof cmd, "set -e; cd '%s'; { %s ; } 2>/dev/null", dir, script), sizeof cmd);
  cr_assert_eq(system(cmd), 0, "openssl failed");
}

void certs_remove(const char *dir) {
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
}

/* Certificates for TLS tests, made by openssl in a temporary directory. */
#ifndef XMPP_TEST_CERTS_H
#define XMPP_TEST_CERTS_H

#include <stddef.h>

/* Creates a directory /tmp/NAME.XXXXXX (its path in dir[0..cap)) and runs the shell
 * script there (openssl commands; their stderr is discarded). Asserts that both work. */
void certs_make(char *dir, size_t cap, const char *name, const char *script);
/* Removes the directory and what is in it. */
void certs_remove(const char *dir);

#endif

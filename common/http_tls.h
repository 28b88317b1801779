/* HTTPS for the server's HTTP endpoints (the admin API, the metrics endpoint): a PEM
 * certificate chain and key read once at start and handed to libmicrohttpd (GnuTLS),
 * TLS 1.2 and 1.3 only. */
#ifndef XMPP_HTTP_TLS_H
#define XMPP_HTTP_TLS_H

#include <stddef.h>

#include <microhttpd.h>

/* A PEM file larger than this is refused (a chain of a few certificates is ~10 KiB). */
#define HTTP_TLS_MAX_PEM (256 * 1024)

typedef struct http_tls {
  char *cert, *key; /* NUL-terminated PEM, NULL: plain HTTP */
  size_t key_len;
  struct MHD_OptionItem opts[4]; /* for MHD_OPTION_ARRAY: the TLS options, or just END */
} http_tls_t;

/* what: the section, for messages ("admin"). Both paths empty: plain HTTP (0). One set
 * without the other, a file unreadable, empty, over HTTP_TLS_MAX_PEM or not PEM: -1 with
 * *err (caller frees). */
int http_tls_load(http_tls_t *t, const char *what, const char *cert_path, const char *key_path, char **err);
/* MHD_USE_TLS when t has a certificate, else 0. */
unsigned http_tls_flags(const http_tls_t *t);
/* The key is wiped. */
void http_tls_free(http_tls_t *t);

#endif

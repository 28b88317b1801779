/* The HTTP admin API (admin.listen, admin.token): the control socket's commands
 * (common/control.h) as JSON over HTTP, for tools that cannot reach the Unix socket.
 *
 *   POST /admin/COMMAND   body: one JSON object of string fields named by the command's
 *                         params ({"jid":"alice@example.net","text":"bye"}), or empty
 *   GET  /admin/COMMAND   read-only commands (status, sessions, cluster): the fields in
 *                         the query string (?jid=alice@example.net)
 *
 * Every request carries "Authorization: Bearer TOKEN" (401 without it or with another
 * token, audited, compared in constant time). The answer is the control socket's JSON
 * line: 200 with {"ok":true,...}; 400 with {"ok":false,"error":...} for a refused or
 * failed command (404 for an unknown one); 413 for a body over admin.max_body; 503 past
 * admin.max_clients connections or while the server stops. docs/operations.md "The HTTP
 * admin API". The command runs on the control loop, exactly as a socket request
 * (control_submit): checks, audit line, one implementation. */
#ifndef XMPP_CONTROL_HTTP_H
#define XMPP_CONTROL_HTTP_H

#include <stddef.h>

#include "common/control.h"

typedef struct control_http control_http_t;

typedef struct control_http_limits {
  unsigned max_clients; /* connections at once: beyond, 503 and closed */
  size_t max_body;      /* bytes of a request body: beyond, 413 */
  const char *tls_cert, *tls_key; /* PEM files: HTTPS (common/http_tls.h); NULL or "": HTTP */
} control_http_limits_t;

/* Serves c's commands (after control_start) on listen (HOST:PORT, numeric) on threads
 * of its own; token: required, non-empty. NULL with *err (caller frees) on failure. */
control_http_t *control_http_start(control_t *c, const char *listen, const char *token,
                                   const control_http_limits_t *lim, char **err);
/* Answers the requests still waiting 503, stops and frees. Any thread but the server's
 * own; may run on the control loop (waiting requests do not need it). NULL-safe. */
void control_http_stop(control_http_t *h);

/* The JSON body of a POST: one object whose members are strings named in params
 * ("jid,text"), each at most once, in any order. fields[i] (caller frees each) is the
 * value of the i-th name, "" when absent; *argc is one past the last present (trailing
 * absent fields are left out). Linear in len. 0, or -1 with *why (static text). An
 * empty body is an empty object. */
int control_http_parse_body(const char *body, size_t len, const char *params, char *fields[7], int *argc,
                            const char **why);

#endif

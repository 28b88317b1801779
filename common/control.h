/* The local control socket (server.control_socket): a Unix stream socket, mode 0600,
 * one per process, through which `xmppctl` asks the running server (the owner's
 * commands: docs/operations.md "The control socket").
 *
 * Protocol: the client sends one line, "COMMAND[<TAB>FIELD]...\n", at most max_request
 * bytes with the newline, valid UTF-8 without other control characters (fields are
 * separated by tabs: a JID's resource may hold blanks); the server answers one line
 * of JSON, {"ok":true,...} or {"ok":false,"error":"..."}, and closes. Only the server's
 * own user and root may ask (SO_PEERCRED, beside the file mode). Every request is logged
 * at INFO as one audit line (control_audit_line below).
 *
 * Served on one libuv loop (the process's main loop); the commands are the owner's
 * table. A handler answers at once or later (work on other threads, brought back with
 * control_post); the answer goes nowhere when the client has gone meanwhile.
 *
 * The same commands come from a second transport, the HTTP admin API
 * (common/control_http.c): it hands each request in with control_submit and gets the
 * same JSON answer back; dispatch, checks, audit and the commands are this module's, one
 * implementation for both. A control_t may also serve that transport alone (no socket:
 * control_open with path NULL). */
#ifndef XMPP_CONTROL_H
#define XMPP_CONTROL_H

#include <stddef.h>
#include <sys/types.h>
#include <uv.h>

#include "common/buf.h"
#include "common/text.h"

typedef struct control control_t;
typedef struct control_req control_req_t;

/* A command: argv[0..argc) are the fields after the name (at most 7), each checked
 * (UTF-8, no control character), NUL-terminated, valid until the answer. Runs on the
 * control loop; must answer exactly once, now or later (control_reply/control_fail). */
typedef void (*control_run_cb)(void *ud, control_req_t *r, int argc, char **argv);
typedef struct control_cmd {
  const char *name;
  control_run_cb run;
  /* the fields' names, comma-separated in argv order ("jid,text"): the keys of the HTTP
   * API's JSON object (control_http.c); NULL or "": no field */
  const char *params;
  /* bit i set: field i is a secret (a password), written "***" in the audit line */
  unsigned secret;
  /* 1: changes nothing (the HTTP API also serves it to GET, fields in the query) */
  int readonly;
} control_cmd_t;

/* Claims path and binds it (path NULL: no socket, a dispatcher for control_submit
 * alone) (before the loop runs; main thread): an exclusive flock(2)
 * on PATH.lock (holding our pid), as the store's claim does, then a stale socket file
 * left by a dead process is replaced, and the socket is bound with mode 0600 and
 * listening (connections wait in the backlog until control_start). Returns NULL with
 * *err (caller frees) on failure, and *in_use = 1 when another live process holds the
 * path (one process per control socket: the caller exits 2). */
control_t *control_open(const char *path, int max_clients, size_t max_request, int *in_use, char **err);
/* Serves on loop with the commands cmds[0..n) (the table stays valid while serving). */
int control_start(control_t *c, uv_loop_t *loop, const control_cmd_t *cmds, size_t n, void *ud);
/* Stops accepting and closes every client (answers still owed go nowhere). Loop thread. */
void control_stop(control_t *c);
/* After control_stop and once no other thread may control_post any more: runs what was
 * posted and not run yet, closes the handles, removes the socket file and releases the
 * lock; the memory goes in the close callbacks (run the loop once more). NULL-safe.
 * Without control_start (a start-up that stopped early): frees at once. */
void control_close(control_t *c);

/* The answer, once. fields: JSON members without braces ("\"n\":3,\"x\":[]") or NULL;
 * detail: a few words for the audit line (NULL: none). */
void control_reply(control_req_t *r, const char *fields, const char *detail);
/* An error answer: {"ok":false,"error":msg}, audit result=error. */
void control_fail(control_req_t *r, const char *msg);
/* Any thread: fn(r, arg) runs on the control loop soon after (or in control_close). */
void control_post(control_req_t *r, void (*fn)(control_req_t *r, void *arg), void *arg);

/* 1 when s[0..len) is UTF-8 (RFC 3629: shortest forms, no surrogates, at most U+10FFFF)
 * without C0 control characters (tab included) or DEL, so it can go in XML text and a
 * log line as it is. */
int control_text_ok(const char *s, size_t len);

/* ---- the second transport (control_http.c) ---- */

/* The answer of a submitted request, on the control loop: json[0..len) is the line the
 * socket would get ({"ok":...}, newline included), ok its "ok"; json NULL when the
 * request was never answered (the server stopped first). Called exactly once. */
typedef void (*control_done_cb)(void *ud, int ok, const char *json, size_t len);
/* Any thread, after control_start: runs the command name with fields argv[0..argc) (at
 * most 7; copied) on the control loop, exactly as a socket request is run (checked,
 * audited with origin, e.g. "via=http peer=127.0.0.1:5000"), then done. */
void control_submit(control_t *c, const char *origin, const char *name, int argc, const char *const *argv,
                    control_done_cb done, void *ud);
/* The command called name, or NULL (the table is fixed once started: any thread). */
const control_cmd_t *control_command(const control_t *c, const char *name);
/* One audit line for a request refused before it reached a command (any thread):
 * "audit: ORIGIN command=NAME args=[] result=RESULT detail=...". */
void control_audit_refused(const char *origin, const char *name, const char *result, const char *detail);

#endif

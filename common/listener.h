/* A listening socket on a libuv loop that accepts by itself and stays calm at the
 * open-file limit (common/listener.c): the edge's client ports, the bus and the control socket. */
#ifndef XMPPD_COMMON_LISTENER_H
#define XMPPD_COMMON_LISTENER_H

#include <uv.h>

/* At most this many accept()s per wake-up: the connections already open get their turn. */
#define LISTENER_BATCH 64
/* At the limit with nothing left to shed with, the socket is not polled for this long. */
#define LISTENER_PAUSE_MS 100
/* At most this many waiting connections closed per shedding. */
#define LISTENER_SHED_MAX 256

typedef struct listener listener_t;
/* fd: a new connection (non-blocking, close-on-exec), now the callee's. */
typedef void (*listener_accept_cb)(listener_t *l, int fd);
/* At the limit (err: EMFILE, ENFILE, ENOBUFS or ENOMEM): shed connections were closed
 * unread; paused: the socket rests for LISTENER_PAUSE_MS. For logs and metrics. */
typedef void (*listener_full_cb)(listener_t *l, int err, unsigned shed, int paused);
/* The loop has let go of the listener: its memory may go. */
typedef void (*listener_closed_cb)(listener_t *l);

struct listener {
  uv_poll_t poll;
  uv_timer_t rest;
  int fd;      /* the listening socket, owned: closed by listener_close */
  int reserve; /* a descriptor held for shedding at the limit, or -1 */
  int open;
  int closing; /* handles still to be closed by the loop */
  listener_closed_cb on_closed;
  listener_accept_cb on_accept;
  listener_full_cb on_full;
  void *data;
};

/* Takes fd (bound and listening); 0, or a libuv error (fd then still the caller's). */
int listener_open(listener_t *l, uv_loop_t *loop, int fd, listener_accept_cb on_accept, listener_full_cb on_full,
                  void *data);
/* Stops accepting; the socket is closed once the loop has let go of it, then on_closed
 * (may be NULL) is called. Idempotent. Also for a listener_open that failed. */
void listener_close(listener_t *l, listener_closed_cb on_closed);
/* A bound, listening TCP socket (SO_REUSEADDR, close-on-exec) for ss: its fd, or -errno. */
int listener_tcp_socket(const struct sockaddr *sa, int backlog);

#endif

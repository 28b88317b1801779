/* Listening sockets that accept by themselves.
 *
 * libuv's uv_listen() accepts for its user and handles the open-file limit with one
 * reserve descriptor per loop: close it, accept and close whatever waits, open it again.
 * The reserve is per loop but the descriptor table is per process: when another thread
 * (another edge thread accepting, the store, a log file) opens a descriptor in between,
 * the reserve is lost for good. From then on, at the limit, libuv calls back with EMFILE
 * and retries accept() inside the same callback, with no way for the callback to stop it:
 * the thread spins at full CPU without ever returning to its loop, so its clients starve
 * and a stop never completes (CI, test_faults.OpenFileLimitTest under ASan: 4 CPU-seconds
 * in 2 s on 2 cores, then killed).
 *
 * So the edge accepts itself: a uv_poll_t watches the listening socket; each wake-up
 * accepts at most LISTENER_BATCH connections (level-triggered: the rest wake it again on
 * the next loop turn). At EMFILE/ENFILE (and the kernel's ENOBUFS/ENOMEM) it sheds the
 * waiting connections with a reserve descriptor of its own, so those clients see their
 * connection closed rather than hang in the backlog; when it has no reserve or the limit
 * comes back during the shedding, it stops watching the socket for LISTENER_PAUSE_MS, as
 * nginx disables its accept events for a while. Worst case at the limit: one wake-up per
 * pause per socket, never a spin. */
#include "common/listener.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

static int reserve_open(void) { return open("/dev/null", O_RDONLY | O_CLOEXEC); }

static void on_readable(uv_poll_t *p, int status, int events);

static void rest_cb(uv_timer_t *t) {
  listener_t *l = t->data;
  if (l->open) uv_poll_start(&l->poll, UV_READABLE, on_readable);
}

static void rest(listener_t *l) {
  uv_poll_stop(&l->poll);
  uv_timer_start(&l->rest, rest_cb, LISTENER_PAUSE_MS, 0);
}

static int at_limit(int e) { return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM; }

/* Out of descriptors: close what waits, unread, through the reserve. */
static void shed(listener_t *l, int err) {
  unsigned n = 0;
  int drained = 0;
  if (l->reserve < 0) l->reserve = reserve_open();
  if (l->reserve >= 0) {
    close(l->reserve);
    l->reserve = -1;
    while (n < LISTENER_SHED_MAX) {
      int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0) {
        close(fd);
        n++;
      } else if (errno != EINTR && errno != ECONNABORTED) {
        drained = errno == EAGAIN || errno == EWOULDBLOCK;
        break;
      }
    }
    l->reserve = reserve_open(); /* fails when another thread took the slot: rest below */
  }
  int paused = !drained || l->reserve < 0;
  if (paused) rest(l);
  if (l->on_full) l->on_full(l, err, n, paused);
}

static void on_readable(uv_poll_t *p, int status, int events) {
  (void)events;
  listener_t *l = p->data;
  if (status < 0) { /* the socket itself is in error: try again later */
    rest(l);
    return;
  }
  for (int i = 0; i < LISTENER_BATCH && l->open; i++) {
    int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      l->on_accept(l, fd);
      continue;
    }
    /* accept(2): these concern one connection, gone before we took it */
    if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO || errno == EPERM) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    if (at_limit(errno)) shed(l, errno);
    else rest(l);
    return;
  }
}

int listener_open(listener_t *l, uv_loop_t *loop, int fd, listener_accept_cb on_accept, listener_full_cb on_full,
                  void *data) {
  *l = (listener_t){.fd = fd, .reserve = -1, .on_accept = on_accept, .on_full = on_full, .data = data};
  uv_timer_init(loop, &l->rest);
  l->rest.data = l;
  l->closing = 1;
  int rc = uv_poll_init(loop, &l->poll, fd);
  if (rc == 0) {
    l->poll.data = l;
    l->closing = 2;
    rc = uv_poll_start(&l->poll, UV_READABLE, on_readable);
  }
  l->open = 1; /* so that listener_close cleans up, also after a failure */
  if (rc != 0) l->fd = -1; /* still the caller's */
  else l->reserve = reserve_open();
  return rc;
}

static void handle_closed(uv_handle_t *h) {
  listener_t *l = h->data;
  if (--l->closing > 0) return;
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
  if (l->on_closed) l->on_closed(l);
}

void listener_close(listener_t *l, listener_closed_cb on_closed) {
  if (!l->open) return;
  l->open = 0;
  l->on_closed = on_closed;
  if (l->reserve >= 0) close(l->reserve);
  l->reserve = -1;
  int both = l->closing == 2;
  uv_close((uv_handle_t *)&l->rest, handle_closed);
  if (both) uv_close((uv_handle_t *)&l->poll, handle_closed);
}

int listener_tcp_socket(const struct sockaddr *sa, int backlog) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  if (fd < 0) return -errno;
  socklen_t len = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 || bind(fd, sa, len) != 0 ||
      listen(fd, backlog) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

/* common/listener.c at the open-file limit. Each test lowers RLIMIT_NOFILE in its own
 * process (Criterion forks one per test) and fills the table, so the limit is exact:
 * - with its reserve descriptor, the listener closes the waiting connections (each
 *   client sees end of file) and keeps polling;
 * - without one (another thread took the slot: the case that made libuv's own accept
 *   loop spin forever), it rests LISTENER_PAUSE_MS between attempts: a handful of
 *   wake-ups and next to no CPU over a second, then accepts every waiting client as
 *   soon as descriptors are free again. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "common/listener.h"

#define CLIENTS 20

typedef struct {
  int accepted, full_calls, paused_calls;
  unsigned shed;
  int fds[CLIENTS];
} seen_t;

static void on_accept(listener_t *l, int fd) {
  seen_t *s = l->data;
  if (s->accepted < CLIENTS) s->fds[s->accepted] = fd;
  else close(fd);
  s->accepted++;
}

static void on_full(listener_t *l, int err, unsigned shed, int paused) {
  seen_t *s = l->data;
  cr_assert(err == EMFILE, "err %d", err);
  s->full_calls++;
  s->shed += shed;
  s->paused_calls += paused;
}

static int listening_socket(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  cr_assert(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
  cr_assert(listen(fd, 128) == 0);
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  *port = ntohs(a.sin_port);
  return fd;
}

/* Client sockets made now, connected later: at the limit the test cannot make any. */
static void connect_all(int *cl, int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  for (int i = 0; i < CLIENTS; i++) cr_assert(connect(cl[i], (struct sockaddr *)&a, sizeof a) == 0);
}

/* Every free descriptor taken; returns how many (to close later), their fds in *out. */
static int fill_table(int **out) {
  struct rlimit rl = {256, 256};
  cr_assert(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  int *f = calloc(256, sizeof *f), n = 0, fd;
  while ((fd = open("/dev/null", O_RDONLY)) >= 0) f[n++] = fd;
  cr_assert(errno == EMFILE);
  *out = f;
  return n;
}

/* A loop, a listener on a fresh loopback socket, and the clients' sockets (unconnected). */
static void start(uv_loop_t *loop, listener_t *l, seen_t *s, int *lfd, int *port, int *cl) {
  uv_loop_init(loop);
  *lfd = listening_socket(port);
  for (int i = 0; i < CLIENTS; i++) cl[i] = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert(listener_open(l, loop, *lfd, on_accept, on_full, s) == 0);
}

static void run_for(uv_loop_t *loop, uint64_t ms) {
  uint64_t end = uv_now(loop) + ms;
  while (uv_now(loop) < end) {
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(1000);
    uv_update_time(loop);
  }
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

Test(listener, accepts_below_the_limit) {
  uv_loop_t loop;
  seen_t s = {0};
  listener_t l;
  int port, lfd, cl[CLIENTS];
  start(&loop, &l, &s, &lfd, &port, cl);
  connect_all(cl, port);
  run_for(&loop, 200);
  cr_assert_eq(s.accepted, CLIENTS);
  cr_assert_eq(s.full_calls, 0);
  int fl = fcntl(s.fds[0], F_GETFL);
  cr_assert(fl & O_NONBLOCK, "accepted sockets are non-blocking");
  cr_assert(fcntl(s.fds[0], F_GETFD) & FD_CLOEXEC);
  listener_close(&l, NULL);
  listener_close(&l, NULL); /* idempotent */
  run_for(&loop, 10);
  cr_assert(fcntl(lfd, F_GETFD) == -1 && errno == EBADF, "the listening socket is closed with the listener");
}

Test(listener, sheds_waiting_connections_with_its_reserve) {
  uv_loop_t loop;
  seen_t s = {0};
  listener_t l;
  int port, lfd, cl[CLIENTS];
  start(&loop, &l, &s, &lfd, &port, cl);
  int *fill, nfill = fill_table(&fill);
  connect_all(cl, port);
  run_for(&loop, 300);
  cr_assert_eq(s.accepted, 0);
  cr_assert_eq(s.shed, CLIENTS, "every waiting client closed, not left in the backlog (%u)", s.shed);
  cr_assert_eq(s.paused_calls, 0, "with a reserve and a drained backlog it need not rest");
  for (int i = 0; i < CLIENTS; i++) {
    char b;
    cr_assert_eq(recv(cl[i], &b, 1, MSG_DONTWAIT), 0, "client %d sees end of file", i);
  }
  for (int i = 0; i < nfill; i++) close(fill[i]);
  free(fill);
  listener_close(&l, NULL);
}

Test(listener, rests_without_a_reserve_instead_of_spinning) {
  uv_loop_t loop;
  seen_t s = {0};
  listener_t l;
  int port, lfd, cl[CLIENTS];
  start(&loop, &l, &s, &lfd, &port, cl);
  /* another thread takes the reserve's slot */
  close(l.reserve);
  l.reserve = -1;
  int *fill, nfill = fill_table(&fill);
  connect_all(cl, port);
  double c0 = cpu_seconds();
  run_for(&loop, 1000);
  double used = cpu_seconds() - c0;
  cr_assert_eq(s.accepted, 0);
  cr_assert_eq(s.shed, 0);
  /* one attempt per LISTENER_PAUSE_MS (100 ms): ~10 in a second; a spin makes millions */
  cr_assert(s.full_calls >= 3 && s.full_calls <= 15, "wake-ups at the limit: %d", s.full_calls);
  cr_assert_eq(s.paused_calls, s.full_calls);
  cr_assert(used < 0.5, "CPU at the limit: %.2f s in 1 s", used);
  /* descriptors free again: every waiting client is accepted after the rest */
  for (int i = 0; i < nfill; i++) close(fill[i]);
  free(fill);
  run_for(&loop, 400);
  cr_assert_eq(s.accepted, CLIENTS);
  listener_close(&l, NULL);
}

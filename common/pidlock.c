#include "common/pidlock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

int pidlock_take(const char *lockpath, mode_t mode, char *holder, int *errno_out) {
  snprintf(holder, 32, "?");
  *errno_out = 0;
  int fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, mode);
  if (fd < 0) {
    *errno_out = errno;
    return PIDLOCK_ERROR;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    char pid[32] = "";
    ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
    pid[n > 0 ? n : 0] = '\0';
    pid[strcspn(pid, "\n")] = '\0';
    if (pid[0]) snprintf(holder, 32, "%s", pid);
    close(fd);
    *errno_out = e;
    return e == EWOULDBLOCK ? PIDLOCK_HELD : PIDLOCK_ERROR;
  }
  char pid[32];
  int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) { /* informative only */
  }
  return fd;
}

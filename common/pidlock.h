/* One process per resource (a SQLite store, a control socket): an exclusive flock(2) on a
 * sidecar lock file that holds the owner's pid, for the message a second process prints.
 * The kernel releases the lock with the process however it ends, so a file left behind by
 * a dead process never blocks a new one; the file itself is never removed. */
#ifndef XMPP_PIDLOCK_H
#define XMPP_PIDLOCK_H

#include <sys/types.h>

#define PIDLOCK_HELD (-1)  /* another live process holds it: holder has its pid ("?" unknown) */
#define PIDLOCK_ERROR (-2) /* the file could not be opened or locked: *errno_out says why */

/* Takes the lock on lockpath (created with mode if needed) and writes this process's pid
 * into it. Returns the open descriptor that holds the lock (close it to let go), or
 * PIDLOCK_HELD / PIDLOCK_ERROR. holder: at least 32 bytes. */
int pidlock_take(const char *lockpath, mode_t mode, char *holder, int *errno_out);

#endif

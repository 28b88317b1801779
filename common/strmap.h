/* String-keyed hash map (separate chaining, keyed SipHash, grows at load 1).
 * Keys are copied; values are borrowed pointers. Not thread-safe: one owner thread. */
#ifndef XMPP_STRMAP_H
#define XMPP_STRMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct strmap strmap_t;

strmap_t *strmap_new(void);
/* Frees the map; calls free_cb(value) on each value when given. */
void strmap_free(strmap_t *m, void (*free_cb)(void *));
void *strmap_get(const strmap_t *m, const char *key);
/* Inserts or replaces; returns the previous value or NULL. */
void *strmap_put(strmap_t *m, const char *key, void *value);
/* Removes; returns the removed value or NULL. */
void *strmap_del(strmap_t *m, const char *key);
size_t strmap_count(const strmap_t *m);
/* Calls cb for each entry; cb must not modify the map. */
void strmap_each(const strmap_t *m, void (*cb)(const char *key, void *value, void *ud), void *ud);

#endif

/* Bump allocator: one per stanza (or per batch). Everything allocated from it is freed
 * at once by arena_reset/arena_free. One owner thread. */
#ifndef XMPP_ARENA_H
#define XMPP_ARENA_H

#include <stddef.h>

typedef struct arena_chunk arena_chunk_t;
typedef struct arena {
  arena_chunk_t *head;
  size_t used_total; /* bytes handed out since the last reset */
} arena_t;

void arena_init(arena_t *a);
void *arena_alloc(arena_t *a, size_t n);
char *arena_strndup(arena_t *a, const char *s, size_t n);
char *arena_strdup(arena_t *a, const char *s);
/* Frees all but the first chunk, which is kept for reuse. */
void arena_reset(arena_t *a);
void arena_free(arena_t *a);

#endif

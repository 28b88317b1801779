/* JIDs (RFC 7622): parse, validate, normalise, compare.
 *
 * localpart: PRECIS IdentifierClass, UsernameCaseMapped profile (RFC 8265 §3.3);
 * domainpart: IDNA2008 (libidn2) U-label form, lower-cased, trailing dot removed,
 *             IP literals accepted as-is;
 * resourcepart: PRECIS FreeformClass, OpaqueString profile (RFC 8265 §4.2).
 * Each part is at most 1023 octets after normalisation (RFC 7622 §3.1).
 * All strings are UTF-8. Any thread may call; nothing is shared. */
#ifndef XMPP_JID_H
#define XMPP_JID_H

#include <stddef.h>

#define JID_PART_MAX 1023

typedef struct jid {
  char *full;     /* normalised "local@domain/resource" (owned) */
  char *bare;     /* normalised "local@domain" or "domain" (owned) */
  char *local;    /* normalised localpart, NULL when absent (owned) */
  char *domain;   /* normalised domainpart (owned) */
  char *resource; /* normalised resourcepart, NULL when absent (owned) */
} jid_t;

/* Parses and normalises s[0..len). Returns 0 and fills *out (free with jid_free),
 * or XMPP_EINVAL (out left zeroed). */
int jid_parse(const char *s, size_t len, jid_t *out);
void jid_free(jid_t *j);

/* Normalises one part alone. On success returns 0 and *out is a new string (caller frees). */
int jid_prep_local(const char *s, size_t len, char **out);
int jid_prep_domain(const char *s, size_t len, char **out);
int jid_prep_resource(const char *s, size_t len, char **out);

/* Comparisons of already-normalised JIDs (byte equality of the normalised forms). */
int jid_bare_eq(const jid_t *a, const jid_t *b);
int jid_full_eq(const jid_t *a, const jid_t *b);

#endif

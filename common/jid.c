/* JIDs (RFC 7622) with PRECIS (RFC 8264, RFC 8265) and IDNA2008 (RFC 5890-5893).
 *
 * Splitting (RFC 7622 §3.2): the first '/' starts the resourcepart; in what
 * precedes it, the first '@' ends the localpart. A separator with nothing after
 * it (or '@' with nothing before it) is an error, and so is an empty domainpart.
 *
 * localpart (RFC 7622 §3.3): PRECIS UsernameCaseMapped (RFC 8265 §3.3):
 *   width mapping of <wide>/<narrow> code points to their decomposition, check
 *   IdentifierClass (preparation, §3.3.2), toLowerCase, NFC, check
 *   IdentifierClass again (RFC 8264 §7 step 6), Bidi Rule (RFC 5893 §2) when
 *   the string holds R/AL/AN characters, and the RFC 7622 §3.3.1 ban on
 *   " & ' / : < > @.
 * resourcepart (RFC 7622 §3.4): PRECIS OpaqueString (RFC 8265 §4.2): check
 *   FreeformClass, map non-ASCII spaces (Zs) to U+0020, NFC, check again.
 * domainpart (RFC 7622 §3.2): strip one trailing label separator, accept an
 *   IPv4 literal or a [IPv6] literal as-is; otherwise a pure-ASCII name must be
 *   NR-LDH labels (lower-cased); any other name (or one with an "xn--" label)
 *   is width-mapped, lower-cased, NFC-normalised, validated by libidn2 in strict
 *   IDNA2008 mode (no TR46) and returned as U-labels.
 * Each part is 1..1023 octets after normalisation (RFC 7622 §3.1); input must be
 *   valid UTF-8 without NUL.
 *
 * The PRECIS derived property (RFC 8264 §8) is computed from libunistring's
 * Unicode data, category by category in the order of §8 (§9.1-§9.18). The only
 * code-point list here is the Exceptions set (§9.6, i.e. RFC 5892 §2.6) and the
 * contextual rules of RFC 5892 Appendix A. OldHangulJamo (§9.5, Hangul_Syllable_Type
 * L/V/T, which libunistring does not expose) is taken as "assigned and in one of
 * the Hangul Jamo blocks", which is the same set.
 *
 * Pure-ASCII parts take a fast path with no libunistring calls: for ASCII the
 * PRECIS rules reduce to "0x21-0x7E valid, space free-form only, controls
 * disallowed", mapping is ASCII lower-casing, and NFC is the identity. */
#include "common/jid.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <idn2.h>
#include <unicase.h>
#include <unictype.h>
#include <uninorm.h>
#include <unistr.h>

#include "common/alloc.h"
#include "common/err.h"

/* Nothing longer can normalise to JID_PART_MAX octets (the largest shrink, a
 * fullwidth or Kelvin-sign-like 3-octet character mapping to 1 octet, is 3x);
 * bounds the work done on hostile input. */
#define JID_INPUT_MAX (4 * JID_PART_MAX)
#define DNS_LABEL_MAX 63

/* ---------------------------------------------------------------- helpers */

/* libunistring reports failure as NULL + errno: ENOMEM is fatal, as with the
 * x* allocators; anything else (EILSEQ) is bad input. */
static void oom(void) {
  fprintf(stderr, "FATAL: out of memory in %s\n", __FILE__);
  abort();
}

static int lib_fail(void) {
  if (errno == ENOMEM) oom();
  return XMPP_EINVAL;
}

/* Checks s[0..len) is non-empty, bounded, NUL-free UTF-8; *ascii tells whether
 * every octet is < 0x80. */
static int check_input(const char *s, size_t len, bool *ascii) {
  if (!s || len == 0 || len > JID_INPUT_MAX) return XMPP_EINVAL;
  size_t i = 0;
  while (i < len && (unsigned char)s[i] < 0x80) {
    if (s[i] == '\0') return XMPP_EINVAL;
    i++;
  }
  *ascii = i == len;
  if (*ascii) return 0;
  if (memchr(s + i, '\0', len - i)) return XMPP_EINVAL;
  if (u8_check((const uint8_t *)s + i, len - i)) return XMPP_EINVAL;
  return 0;
}

static uint32_t *decode(const char *s, size_t len, size_t *n) {
  uint32_t *u = u8_to_u32((const uint8_t *)s, len, NULL, n);
  if (!u) lib_fail();
  return u;
}

/* Encodes s[0..n) as a NUL-terminated xmalloc'd UTF-8 string of 1..max octets. */
static int encode(const uint32_t *s, size_t n, size_t max, char **out) {
  size_t cap = n * 4, len = cap;
  char *buf = xmalloc(cap + 1);
  uint8_t *r = u32_to_u8(s, n, (uint8_t *)buf, &len);
  if (!r) {
    xfree(buf);
    return lib_fail();
  }
  if (r != (uint8_t *)buf) { /* cannot happen: cap is the worst case */
    xfree(buf);
    buf = xstrndup((const char *)r, len);
    free(r);
  }
  buf[len] = '\0';
  if (len == 0 || len > max) {
    xfree(buf);
    return XMPP_EINVAL;
  }
  *out = buf;
  return 0;
}

/* RFC 8265 §3.3.1 rule 1 (and RFC 5895 §2 for the domainpart): map fullwidth and
 * halfwidth code points to their <wide>/<narrow> decomposition mappings. */
static void width_map(uint32_t **ps, size_t *pn) {
  uint32_t *s = *ps;
  size_t n = *pn, total = 0;
  ucs4_t d[UC_DECOMPOSITION_MAX_LENGTH];
  int tag, k;
  for (size_t i = 0; i < n; i++) {
    k = s[i] < 0x80 ? -1 : uc_decomposition(s[i], &tag, d);
    total += (k > 0 && (tag == UC_DECOMP_WIDE || tag == UC_DECOMP_NARROW)) ? (size_t)k : 1;
  }
  /* Equal length means every mapping is 1:1 (all are, in practice): in place. */
  uint32_t *r = total == n ? s : xmalloc(total * sizeof *r);
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    k = s[i] < 0x80 ? -1 : uc_decomposition(s[i], &tag, d);
    if (k > 0 && (tag == UC_DECOMP_WIDE || tag == UC_DECOMP_NARROW)) {
      for (int m = 0; m < k; m++) r[j++] = d[m];
    } else {
      r[j++] = s[i];
    }
  }
  if (r != s) free(s);
  *ps = r;
  *pn = total;
}

/* ------------------------------------------------ PRECIS derived property */

enum precis_prop {
  PP_PVALID,     /* valid in both classes */
  PP_FREE_PVAL,  /* ID_DIS in IdentifierClass, FREE_PVAL in FreeformClass */
  PP_CONTEXTJ,   /* valid only if RFC 5892 A.1/A.2 holds */
  PP_CONTEXTO,   /* valid only if RFC 5892 A.3-A.9 holds */
  PP_DISALLOWED,
  PP_UNASSIGNED,
};

/* Exceptions (RFC 8264 §9.6 = RFC 5892 §2.6), or -1 when cp is not one. */
static int precis_exception(ucs4_t cp) {
  switch (cp) {
  case 0x00DF: case 0x03C2: case 0x06FD: case 0x06FE: case 0x0F0B: case 0x3007:
    return PP_PVALID;
  case 0x00B7: case 0x0375: case 0x05F3: case 0x05F4: case 0x30FB:
    return PP_CONTEXTO;
  case 0x0640: case 0x07FA: case 0x302E: case 0x302F: case 0x303B:
    return PP_DISALLOWED;
  }
  if ((cp >= 0x0660 && cp <= 0x0669) || (cp >= 0x06F0 && cp <= 0x06F9)) return PP_CONTEXTO;
  if (cp >= 0x3031 && cp <= 0x3035) return PP_DISALLOWED;
  return -1;
}

/* OldHangulJamo (§9.5): Hangul_Syllable_Type L, V or T, i.e. the assigned code
 * points of the blocks "Hangul Jamo", "Hangul Jamo Extended-A/-B" (callers have
 * already ruled out unassigned ones). "Hangul Compatibility Jamo" is not HST L/V/T. */
static bool is_old_hangul_jamo(ucs4_t cp) {
  const uc_block_t *b = uc_block(cp);
  return b && strncmp(b->name, "Hangul Jamo", 11) == 0;
}

/* HasCompat (§9.17): toNFKC(cp) != cp. */
static bool has_compat(ucs4_t cp) {
  ucs4_t d[UC_DECOMPOSITION_MAX_LENGTH];
  int tag;
  if (uc_decomposition(cp, &tag, d) < 0) return false; /* no mapping: NFKC is identity */
  uint32_t buf[4 * UC_DECOMPOSITION_MAX_LENGTH];
  size_t len = sizeof buf / sizeof buf[0];
  uint32_t one = cp;
  uint32_t *r = u32_normalize(UNINORM_NFKC, &one, 1, buf, &len);
  if (!r) return lib_fail() != 0; /* ENOMEM aborts; otherwise treat as compat */
  bool diff = !(len == 1 && r[0] == cp);
  if (r != buf) free(r);
  return diff;
}

/* RFC 8264 §8, in its order. */
static enum precis_prop precis_property(ucs4_t cp) {
  if (cp < 0x80) { /* ASCII7 (§9.11) / Spaces / Controls */
    if (cp >= 0x21 && cp <= 0x7E) return PP_PVALID;
    return cp == 0x20 ? PP_FREE_PVAL : PP_DISALLOWED;
  }
  int e = precis_exception(cp);
  if (e >= 0) return (enum precis_prop)e;
  /* BackwardCompatible (§9.7) is empty. */
  if (uc_is_property_unassigned_code_value(cp)) return PP_UNASSIGNED; /* §9.10: Cn, not nonchar */
  if (uc_is_property_join_control(cp)) return PP_CONTEXTJ;              /* §9.8 */
  if (is_old_hangul_jamo(cp)) return PP_DISALLOWED;                    /* §9.9 */
  if (uc_is_property_default_ignorable_code_point(cp) ||               /* §9.13 */
      uc_is_property_not_a_character(cp))
    return PP_DISALLOWED;
  uint32_t cat = uc_general_category(cp).bitmask;
  if (cat & UC_CATEGORY_MASK_Cc) return PP_DISALLOWED; /* §9.12 */
  if (has_compat(cp)) return PP_FREE_PVAL;             /* §9.17 */
  if (cat & (UC_CATEGORY_MASK_Ll | UC_CATEGORY_MASK_Lu | UC_CATEGORY_MASK_Lo | UC_CATEGORY_MASK_Nd |
             UC_CATEGORY_MASK_Lm | UC_CATEGORY_MASK_Mn | UC_CATEGORY_MASK_Mc))
    return PP_PVALID; /* LetterDigits §9.1 */
  if (cat & (UC_CATEGORY_MASK_Lt | UC_CATEGORY_MASK_Nl | UC_CATEGORY_MASK_No | UC_CATEGORY_MASK_Me))
    return PP_FREE_PVAL; /* OtherLetterDigits §9.18 */
  if (cat & UC_CATEGORY_MASK_Zs) return PP_FREE_PVAL; /* Spaces §9.14 */
  if (cat & (UC_CATEGORY_MASK_Sm | UC_CATEGORY_MASK_Sc | UC_CATEGORY_MASK_Sk | UC_CATEGORY_MASK_So))
    return PP_FREE_PVAL; /* Symbols §9.15 */
  if (cat & UC_CATEGORY_MASK_P) return PP_FREE_PVAL; /* Punctuation §9.16 */
  return PP_DISALLOWED;                              /* Zl, Zp, Cf, Co, Cs */
}

static bool script_is(ucs4_t cp, const char *name) {
  const uc_script_t *sc = uc_script(cp);
  return sc && strcmp(sc->name, name) == 0;
}

static bool any_in(const uint32_t *s, size_t n, ucs4_t lo, ucs4_t hi) {
  for (size_t k = 0; k < n; k++)
    if (s[k] >= lo && s[k] <= hi) return true;
  return false;
}

/* What rules A.7-A.9 ask of the whole string, found once per string (at first need):
 * asked again for every such code point, they made a check quadratic in the length of
 * what a client sent (issue 9). -1: not yet known. */
typedef struct {
  int kana_han, arabic_indic, ext_arabic_indic;
} context_scan_t;

static bool any_kana_han(const uint32_t *s, size_t n) {
  for (size_t k = 0; k < n; k++)
    if (script_is(s[k], "Hiragana") || script_is(s[k], "Katakana") || script_is(s[k], "Han")) return true;
  return false;
}

/* Contextual rules of RFC 5892 Appendix A for s[i] (RFC 8264 §9.8, §9.6). */
static bool context_ok(const uint32_t *s, size_t n, size_t i, context_scan_t *cs) {
  ucs4_t cp = s[i];
  switch (cp) {
  case 0x200C: { /* A.1 ZERO WIDTH NON-JOINER */
    if (i > 0 && uc_combining_class(s[i - 1]) == UC_CCC_VR) return true;
    /* (Joining_Type:{L,D})(Joining_Type:T)* ZWNJ (Joining_Type:T)*(Joining_Type:{R,D}) */
    bool left = false, right = false;
    for (size_t j = i; j-- > 0;) {
      int jt = uc_joining_type(s[j]);
      if (jt == UC_JOINING_TYPE_T) continue;
      left = jt == UC_JOINING_TYPE_L || jt == UC_JOINING_TYPE_D;
      break;
    }
    for (size_t j = i + 1; j < n; j++) {
      int jt = uc_joining_type(s[j]);
      if (jt == UC_JOINING_TYPE_T) continue;
      right = jt == UC_JOINING_TYPE_R || jt == UC_JOINING_TYPE_D;
      break;
    }
    return left && right;
  }
  case 0x200D: /* A.2 ZERO WIDTH JOINER */
    return i > 0 && uc_combining_class(s[i - 1]) == UC_CCC_VR;
  case 0x00B7: /* A.3 MIDDLE DOT */
    return i > 0 && i + 1 < n && s[i - 1] == 0x006C && s[i + 1] == 0x006C;
  case 0x0375: /* A.4 GREEK LOWER NUMERAL SIGN */
    return i + 1 < n && script_is(s[i + 1], "Greek");
  case 0x05F3: case 0x05F4: /* A.5, A.6 HEBREW GERESH / GERSHAYIM */
    return i > 0 && script_is(s[i - 1], "Hebrew");
  case 0x30FB: /* A.7 KATAKANA MIDDLE DOT */
    if (cs->kana_han < 0) cs->kana_han = any_kana_han(s, n);
    return cs->kana_han;
  }
  if (cp >= 0x0660 && cp <= 0x0669) { /* A.8 */
    if (cs->ext_arabic_indic < 0) cs->ext_arabic_indic = any_in(s, n, 0x06F0, 0x06F9);
    return !cs->ext_arabic_indic;
  }
  if (cp >= 0x06F0 && cp <= 0x06F9) { /* A.9 */
    if (cs->arabic_indic < 0) cs->arabic_indic = any_in(s, n, 0x0660, 0x0669);
    return !cs->arabic_indic;
  }
  return false;
}

/* Whether every code point of s is allowed by IdentifierClass (RFC 8264 §4.2)
 * or FreeformClass (§4.3). */
static bool precis_allowed(const uint32_t *s, size_t n, bool identifier) {
  context_scan_t cs = {-1, -1, -1};
  for (size_t i = 0; i < n; i++) {
    switch (precis_property(s[i])) {
    case PP_PVALID: break;
    case PP_FREE_PVAL:
      if (identifier) return false;
      break;
    case PP_CONTEXTJ:
    case PP_CONTEXTO:
      if (!context_ok(s, n, i, &cs)) return false;
      break;
    default: return false;
    }
  }
  return true;
}

/* The Bidi Rule (RFC 5893 §2), applied to strings holding R, AL or AN. */
static bool bidi_rule_ok(const uint32_t *s, size_t n) {
  bool rtl_chars = false;
  for (size_t i = 0; i < n && !rtl_chars; i++) {
    int c = uc_bidi_class(s[i]);
    rtl_chars = c == UC_BIDI_R || c == UC_BIDI_AL || c == UC_BIDI_AN;
  }
  if (!rtl_chars) return true;
  int first = uc_bidi_class(s[0]);
  bool en = false, an = false;
  size_t last = n; /* index of the last non-NSM character */
  if (first == UC_BIDI_R || first == UC_BIDI_AL) { /* RTL label: rules 2-4 */
    for (size_t i = 0; i < n; i++) {
      int c = uc_bidi_class(s[i]);
      switch (c) {
      case UC_BIDI_EN: en = true; break;
      case UC_BIDI_AN: an = true; break;
      case UC_BIDI_R: case UC_BIDI_AL: case UC_BIDI_ES: case UC_BIDI_CS: case UC_BIDI_ET:
      case UC_BIDI_ON: case UC_BIDI_BN: case UC_BIDI_NSM: break;
      default: return false; /* rule 2 */
      }
      if (c != UC_BIDI_NSM) last = i;
    }
    if (en && an) return false; /* rule 4 */
    if (last == n) return false;
    int c = uc_bidi_class(s[last]);
    return c == UC_BIDI_R || c == UC_BIDI_AL || c == UC_BIDI_EN || c == UC_BIDI_AN; /* rule 3 */
  }
  if (first != UC_BIDI_L) return false; /* rule 1 */
  for (size_t i = 0; i < n; i++) {     /* LTR label: rules 5-6 */
    int c = uc_bidi_class(s[i]);
    switch (c) {
    case UC_BIDI_L: case UC_BIDI_EN: case UC_BIDI_ES: case UC_BIDI_CS: case UC_BIDI_ET:
    case UC_BIDI_ON: case UC_BIDI_BN: case UC_BIDI_NSM: break;
    default: return false; /* rule 5 */
    }
    if (c != UC_BIDI_NSM) last = i;
  }
  int c = uc_bidi_class(s[last]); /* last < n: s[0] is L */
  return c == UC_BIDI_L || c == UC_BIDI_EN; /* rule 6 */
}

/* RFC 7622 §3.3.1: code points not allowed in a localpart on top of PRECIS. */
static bool local_forbidden(ucs4_t c) {
  return c == '"' || c == '&' || c == '\'' || c == '/' || c == ':' || c == '<' || c == '>' ||
         c == '@';
}

/* -------------------------------------------------------------- localpart */

static int prep_local_ascii(const char *s, size_t len, char **out) {
  if (len > JID_PART_MAX) return XMPP_EINVAL;
  char *r = xmalloc(len + 1);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x21 || c > 0x7E || local_forbidden(c)) {
      xfree(r);
      return XMPP_EINVAL;
    }
    r[i] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
  }
  r[len] = '\0';
  *out = r;
  return 0;
}

/* UsernameCaseMapped, RFC 8265 §3.3.2-§3.3.3. */
static int prep_local_unicode(const char *s, size_t len, char **out) {
  size_t n, ln;
  uint32_t *u = decode(s, len, &n);
  if (!u) return XMPP_EINVAL;
  width_map(&u, &n);
  if (!precis_allowed(u, n, true)) {
    free(u);
    return XMPP_EINVAL;
  }
  uint32_t *l = u32_tolower(u, n, NULL, UNINORM_NFC, NULL, &ln);
  free(u);
  if (!l) return lib_fail();
  int rc = XMPP_EINVAL;
  if (ln == 0 || !precis_allowed(l, ln, true) || !bidi_rule_ok(l, ln)) goto done;
  for (size_t i = 0; i < ln; i++)
    if (local_forbidden(l[i])) goto done;
  rc = encode(l, ln, JID_PART_MAX, out);
done:
  free(l);
  return rc;
}

int jid_prep_local(const char *s, size_t len, char **out) {
  if (!out) return XMPP_EINVAL;
  *out = NULL;
  bool ascii;
  if (check_input(s, len, &ascii)) return XMPP_EINVAL;
  return ascii ? prep_local_ascii(s, len, out) : prep_local_unicode(s, len, out);
}

/* ----------------------------------------------------------- resourcepart */

/* OpaqueString, RFC 8265 §4.2.2-§4.2.3. */
static int prep_resource_unicode(const char *s, size_t len, char **out) {
  size_t n, nn;
  uint32_t *u = decode(s, len, &n);
  if (!u) return XMPP_EINVAL;
  if (!precis_allowed(u, n, false)) {
    free(u);
    return XMPP_EINVAL;
  }
  for (size_t i = 0; i < n; i++) /* additional mapping: non-ASCII space -> U+0020 */
    if (u[i] >= 0x80 && uc_is_general_category(u[i], UC_CATEGORY_Zs)) u[i] = 0x20;
  uint32_t *r = u32_normalize(UNINORM_NFC, u, n, NULL, &nn);
  free(u);
  if (!r) return lib_fail();
  int rc = XMPP_EINVAL;
  if (nn > 0 && precis_allowed(r, nn, false)) rc = encode(r, nn, JID_PART_MAX, out);
  free(r);
  return rc;
}

int jid_prep_resource(const char *s, size_t len, char **out) {
  if (!out) return XMPP_EINVAL;
  *out = NULL;
  bool ascii;
  if (check_input(s, len, &ascii)) return XMPP_EINVAL;
  if (!ascii) return prep_resource_unicode(s, len, out);
  if (len > JID_PART_MAX) return XMPP_EINVAL;
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7F) return XMPP_EINVAL;
  *out = xstrndup(s, len);
  return 0;
}

/* ------------------------------------------------------------- domainpart */

enum { LABELS_OK = 0, LABELS_NEED_IDNA = 1 };

/* Checks the labels of d[0..len): every label 1..63 octets; ASCII labels are
 * NR-LDH (lower-case letters, digits, inner hyphens, no "--" at octets 3-4).
 * An "xn--" label returns LABELS_NEED_IDNA when xn_ok, else is invalid.
 * Labels with non-ASCII octets (U-labels, already validated by libidn2) are
 * only checked for being non-empty. A name whose last label is all digits
 * (not a DNS name per RFC 3696 §2, and read as a number by inet_aton) is invalid;
 * valid IPv4 literals are handled before this. */
static int check_labels(const char *d, size_t len, bool xn_ok) {
  if (len == 0 || len > JID_PART_MAX) return XMPP_EINVAL;
  int result = LABELS_OK;
  bool numeric = false;
  size_t start = 0;
  while (start <= len) {
    const char *dot = memchr(d + start, '.', len - start);
    size_t end = dot ? (size_t)(dot - d) : len, n = end - start;
    const char *l = d + start;
    if (n == 0) return XMPP_EINVAL;
    bool ascii = true;
    numeric = true;
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)l[i];
      if (c >= 0x80) ascii = false;
      if (c < '0' || c > '9') numeric = false;
    }
    if (ascii) {
      if (n > DNS_LABEL_MAX || l[0] == '-' || l[n - 1] == '-') return XMPP_EINVAL;
      for (size_t i = 0; i < n; i++) {
        char c = l[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return XMPP_EINVAL;
      }
      if (n >= 4 && l[2] == '-' && l[3] == '-') { /* R-LDH label (RFC 5890 §2.3.1) */
        if (!xn_ok || l[0] != 'x' || l[1] != 'n') return XMPP_EINVAL;
        result = LABELS_NEED_IDNA;
      }
    }
    start = end + 1;
  }
  return numeric ? XMPP_EINVAL : result;
}

static int prep_domain_ip6(const char *s, size_t len, char **out) {
  char tmp[INET6_ADDRSTRLEN];
  struct in6_addr a;
  if (len < 4 || s[len - 1] != ']' || len - 2 >= sizeof tmp) return XMPP_EINVAL;
  memcpy(tmp, s + 1, len - 2);
  tmp[len - 2] = '\0';
  if (inet_pton(AF_INET6, tmp, &a) != 1) return XMPP_EINVAL;
  *out = xstrndup(s, len);
  return 0;
}

/* Pure-ASCII name: IPv4 literal or NR-LDH labels. Returns LABELS_NEED_IDNA
 * when a label is an A-label. */
static int prep_domain_ascii(const char *s, size_t len, char **out) {
  if (len > JID_PART_MAX) return XMPP_EINVAL;
  char *d = xmalloc(len + 1);
  bool dotted_digits = true;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = (char)(c + ('a' - 'A'));
    if (!((c >= '0' && c <= '9') || c == '.')) dotted_digits = false;
    d[i] = c;
  }
  d[len] = '\0';
  struct in_addr a4;
  if (dotted_digits && inet_pton(AF_INET, d, &a4) == 1) {
    *out = d;
    return 0;
  }
  int rc = check_labels(d, len, true);
  if (rc == LABELS_OK) {
    *out = d;
    return 0;
  }
  xfree(d);
  return rc;
}

/* RFC 5895-style mapping of a domain name: width mapping, label separators to '.',
 * lower case, NFC. Returns 0 and a new string, or XMPP_EINVAL. */
static int map_domain(const char *s, size_t len, char **out) {
  size_t n, ln;
  uint32_t *u = decode(s, len, &n);
  if (!u) return XMPP_EINVAL;
  width_map(&u, &n);
  for (size_t i = 0; i < n; i++) /* label separators (RFC 3490 §3.1) */
    if (u[i] == 0x3002 || u[i] == 0xFF0E || u[i] == 0xFF61) u[i] = '.';
  uint32_t *l = u32_tolower(u, n, NULL, UNINORM_NFC, NULL, &ln);
  free(u);
  if (!l) return lib_fail();
  int rc = encode(l, ln, JID_INPUT_MAX, out);
  free(l);
  return rc;
}

/* Internationalised name (or one with A-labels): RFC 5895-style mapping, then
 * strict IDNA2008 validation (RFC 5891 §5) via libidn2, output as U-labels.
 * The U-labels that an A-label decodes to must already be in mapped form: "xn--bce"
 * is U+13EB, an upper-case letter since Unicode 8 that libidn2 still accepts, but which
 * the mapping lower-cases to a code point libidn2 refuses; such a domainpart could not
 * be parsed again from its own normalised form (RFC 8264 §7: the rules must be
 * idempotent). Found by fuzz_jid (tests/fuzz/regress/jid/alabel-not-lowercase). */
static int prep_domain_idn(const char *s, size_t len, char **out) {
  char *mapped = NULL, *remapped = NULL;
  int rc = map_domain(s, len, &mapped);
  if (rc) return rc;

  uint8_t *ace = NULL;
  char *uni = NULL;
  rc = XMPP_EINVAL;
  int irc = idn2_lookup_u8((const uint8_t *)mapped, &ace,
                           IDN2_NFC_INPUT | IDN2_NO_TR46 | IDN2_ALABEL_ROUNDTRIP);
  if (irc == IDN2_MALLOC) oom();
  if (irc != IDN2_OK) goto done;
  irc = idn2_to_unicode_8z8z((const char *)ace, &uni, 0);
  if (irc == IDN2_MALLOC) oom();
  if (irc != IDN2_OK) goto done;
  if (check_labels(uni, strlen(uni), false) != LABELS_OK) goto done;
  if (map_domain(uni, strlen(uni), &remapped) != 0 || strcmp(remapped, uni) != 0) goto done;
  *out = xstrdup(uni);
  rc = 0;
done:
  idn2_free(ace);
  idn2_free(uni);
  xfree(mapped);
  xfree(remapped);
  return rc;
}

/* Length of s without one trailing label separator: '.', U+3002, U+FF0E, U+FF61
 * (RFC 7622 §3.2: strip it before any other canonicalisation). */
static size_t strip_trailing_dot(const char *s, size_t len) {
  if (len >= 1 && s[len - 1] == '.') return len - 1;
  if (len >= 3) {
    const char *t = s + len - 3;
    if (!memcmp(t, "\xE3\x80\x82", 3) || !memcmp(t, "\xEF\xBC\x8E", 3) ||
        !memcmp(t, "\xEF\xBD\xA1", 3))
      return len - 3;
  }
  return len;
}

int jid_prep_domain(const char *s, size_t len, char **out) {
  if (!out) return XMPP_EINVAL;
  *out = NULL;
  bool ascii;
  if (check_input(s, len, &ascii)) return XMPP_EINVAL;
  len = strip_trailing_dot(s, len);
  if (len == 0) return XMPP_EINVAL;
  if (s[0] == '[') return prep_domain_ip6(s, len, out);
  if (ascii) {
    int rc = prep_domain_ascii(s, len, out);
    if (rc != LABELS_NEED_IDNA) return rc;
  }
  return prep_domain_idn(s, len, out);
}

/* -------------------------------------------------------------------- JID */

static char *join3(const char *a, char sep, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  char *r = xmalloc(la + 1 + lb + 1);
  memcpy(r, a, la);
  r[la] = sep;
  memcpy(r + la + 1, b, lb + 1);
  return r;
}

int jid_parse(const char *s, size_t len, jid_t *out) {
  if (!out) return XMPP_EINVAL;
  memset(out, 0, sizeof *out);
  if (!s || len == 0) return XMPP_EINVAL;
  jid_t j = {0};
  const char *slash = memchr(s, '/', len);
  size_t pre = slash ? (size_t)(slash - s) : len;
  const char *at = memchr(s, '@', pre);
  const char *dom = at ? at + 1 : s;
  /* Empty parts are rejected by the prep functions (len 0). */
  if (jid_prep_domain(dom, (size_t)(s + pre - dom), &j.domain)) goto fail;
  if (at && jid_prep_local(s, (size_t)(at - s), &j.local)) goto fail;
  if (slash && jid_prep_resource(slash + 1, len - pre - 1, &j.resource)) goto fail;
  j.bare = j.local ? join3(j.local, '@', j.domain) : xstrdup(j.domain);
  j.full = j.resource ? join3(j.bare, '/', j.resource) : xstrdup(j.bare);
  *out = j;
  return 0;
fail:
  jid_free(&j);
  return XMPP_EINVAL;
}

void jid_free(jid_t *j) {
  if (!j) return;
  xfree(j->full);
  xfree(j->bare);
  xfree(j->local);
  xfree(j->domain);
  xfree(j->resource);
  memset(j, 0, sizeof *j);
}

int jid_bare_eq(const jid_t *a, const jid_t *b) {
  return a && b && a->bare && b->bare && strcmp(a->bare, b->bare) == 0;
}

int jid_full_eq(const jid_t *a, const jid_t *b) {
  return a && b && a->full && b->full && strcmp(a->full, b->full) == 0;
}

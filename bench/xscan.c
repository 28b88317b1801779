/* Incremental top-level stanza scanner (see xscan.h). */
#include "bench/xscan.h"

#include <string.h>

void xscan_init(xscan_t *s) { memset(s, 0, sizeof *s); }

/* Index of the '>' ending the tag that starts at i ('<'), honouring quoted attribute
 * values; len when not yet complete. */
static size_t tag_end(const char *d, size_t i, size_t len) {
  char q = 0;
  for (size_t j = i + 1; j < len; j++) {
    char c = d[j];
    if (q) {
      if (c == q) q = 0;
    } else if (c == '\'' || c == '"') {
      q = c;
    } else if (c == '>') {
      return j;
    }
  }
  return len;
}

int xscan_next(xscan_t *s, const char *d, size_t len, xs_event_t *ev, size_t *off, size_t *n) {
  while (s->pos < len) {
    if (d[s->pos] != '<') {
      const char *lt = memchr(d + s->pos, '<', len - s->pos);
      if (!lt) {
        s->pos = len;
        return 0;
      }
      s->pos = (size_t)(lt - d);
    }
    size_t i = s->pos;
    if (i + 1 >= len) return 0;
    char c = d[i + 1];
    if (c == '?' || c == '!') {
      size_t j = tag_end(d, i, len);
      if (j == len) return 0;
      s->pos = j + 1;
      continue;
    }
    size_t j = tag_end(d, i, len);
    if (j == len) return 0;
    s->pos = j + 1;
    if (c == '/') {
      s->depth--;
      if (s->depth == 1) {
        *ev = XS_STANZA;
        *off = s->start;
        *n = s->pos - s->start;
        return 1;
      }
      if (s->depth <= 0) {
        s->depth = 0;
        *ev = XS_STREAM_CLOSE;
        *off = i;
        *n = s->pos - i;
        return 1;
      }
      continue;
    }
    int selfclose = d[j - 1] == '/';
    if (s->depth == 0) {
      s->depth = 1;
      *ev = XS_STREAM_OPEN;
      *off = i;
      *n = s->pos - i;
      return 1;
    }
    if (s->depth == 1) s->start = i;
    if (selfclose) {
      if (s->depth == 1) {
        *ev = XS_STANZA;
        *off = i;
        *n = s->pos - i;
        return 1;
      }
      continue;
    }
    s->depth++;
  }
  return 0;
}

size_t xscan_release(xscan_t *s) {
  size_t keep = s->depth >= 2 ? s->start : s->pos;
  s->pos -= keep;
  if (s->depth >= 2) s->start -= keep;
  return keep;
}

static int name_char(char c) {
  return c != ' ' && c != '>' && c != '/' && c != '\t' && c != '\n' && c != '\r';
}

size_t xs_name(const char *p, size_t n, const char **name) {
  if (n < 2 || p[0] != '<') {
    *name = p;
    return 0;
  }
  size_t i = 1;
  while (i < n && name_char(p[i])) i++;
  *name = p + 1;
  return i - 1;
}

const char *xs_find(const char *p, size_t n, const char *needle) {
  return memmem(p, n, needle, strlen(needle));
}

int xs_attr(const char *p, size_t n, const char *attr, const char **v, size_t *vlen) {
  size_t end = tag_end(p, 0, n);
  size_t al = strlen(attr);
  size_t i = 1;
  char q = 0;
  for (; i + al + 2 < end; i++) {
    char c = p[i];
    if (q) {
      if (c == q) q = 0;
      continue;
    }
    if (c == '\'' || c == '"') {
      q = c;
      continue;
    }
    if ((c == ' ' || c == '\t' || c == '\n' || c == '\r') && memcmp(p + i + 1, attr, al) == 0 &&
        p[i + 1 + al] == '=') {
      size_t k = i + 2 + al;
      char qq = p[k];
      if (qq != '\'' && qq != '"') return 0;
      const char *e = memchr(p + k + 1, qq, end - k - 1);
      if (!e) return 0;
      *v = p + k + 1;
      *vlen = (size_t)(e - *v);
      return 1;
    }
  }
  return 0;
}

int xs_text(const char *p, size_t n, const char *open, const char **t, size_t *tlen) {
  size_t ol = strlen(open);
  const char *s = p;
  for (;;) {
    const char *o = memmem(s, n - (size_t)(s - p), open, ol);
    if (!o) return 0;
    size_t rest = n - (size_t)(o - p);
    if (rest <= ol) return 0;
    char c = o[ol];
    if (c == '>' || c == ' ' || c == '/' || c == '\t' || c == '\n') {
      size_t e = tag_end(o, 0, rest);
      if (e == rest) return 0;
      if (o[e - 1] == '/') {
        *t = o + e + 1;
        *tlen = 0;
        return 1;
      }
      const char *b = o + e + 1;
      const char *lt = memchr(b, '<', n - (size_t)(b - p));
      if (!lt) return 0;
      *t = b;
      *tlen = (size_t)(lt - b);
      return 1;
    }
    s = o + 1;
  }
}

size_t xs_first_child(const char *p, size_t n, const char **name) {
  size_t e = tag_end(p, 0, n);
  if (e >= n || p[e - 1] == '/') {
    *name = p;
    return 0;
  }
  const char *lt = memchr(p + e, '<', n - e);
  if (!lt || (size_t)(lt - p) + 1 >= n || lt[1] == '/') {
    *name = p;
    return 0;
  }
  return xs_name(lt, n - (size_t)(lt - p), name);
}

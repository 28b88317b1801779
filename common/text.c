/* Shared text helpers: see text.h. */
#include "common/text.h"

#include <stdio.h>

bool text_utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    /* the second byte's range excludes overlongs (E0, F0), surrogates (ED) and
     * code points past U+10FFFF (F4); C0, C1 and F5..FF never start a sequence */
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (n - i - 1 < need) return false;
    if (s[i + 1] < lo || s[i + 1] > hi) return false;
    for (size_t k = 2; k <= need; k++)
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return false;
    i += need + 1;
  }
  return true;
}

bool text_ct_equal(const unsigned char *a, const unsigned char *b, size_t n) {
  volatile unsigned char d = 0;
  for (size_t i = 0; i < n; i++) d |= (unsigned char)(a[i] ^ b[i]);
  return d == 0;
}

size_t text_json_escape_byte(unsigned char ch, char esc[7]) {
  if (ch == '"' || ch == '\\') {
    esc[0] = '\\';
    esc[1] = (char)ch;
    return 2;
  }
  if (ch < 0x20 || ch == 0x7f) {
    static const char hex[] = "0123456789abcdef";
    esc[0] = '\\', esc[1] = 'u', esc[2] = '0', esc[3] = '0';
    esc[4] = hex[ch >> 4], esc[5] = hex[ch & 15];
    return 6;
  }
  esc[0] = (char)ch;
  return 1;
}

void text_json_str(buf_t *out, const char *s, size_t len) {
  buf_putc(out, '"');
  size_t run = 0; /* bytes copied as they are, appended at once */
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch >= 0x20 && ch != 0x7f && ch != '"' && ch != '\\') {
      run++;
      continue;
    }
    if (run) buf_append(out, s + i - run, run);
    run = 0;
    char esc[7];
    buf_append(out, esc, text_json_escape_byte(ch, esc));
  }
  if (run) buf_append(out, s + len - run, run);
  buf_putc(out, '"');
}

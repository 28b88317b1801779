/* Small text helpers shared by the modules that take text from outside and write it
 * back out: strict UTF-8 validation (SASL, the control commands), a constant-time
 * comparison (SCRAM proofs, bearer tokens), JSON string escaping (JSON log lines, the
 * control and admin answers, audit lines). One implementation of each. Any thread. */
#ifndef XMPP_TEXT_H
#define XMPP_TEXT_H

#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"

/* Strict UTF-8 (RFC 3629 §4): shortest forms only, no surrogates, nothing above
 * U+10FFFF. Control characters are valid UTF-8: callers that refuse them check them. */
bool text_utf8_valid(const unsigned char *s, size_t n);

/* 1 when a[0..n) == b[0..n), in a time that depends on n only. */
bool text_ct_equal(const unsigned char *a, const unsigned char *b, size_t n);

/* The JSON escape (RFC 8259 §7) of one byte into esc (at least 7 bytes): ", \ and the
 * control characters (with DEL) escaped, any other byte as it is (the caller gives
 * UTF-8). Returns the length written. */
size_t text_json_escape_byte(unsigned char ch, char esc[7]);
/* A JSON string literal of s[0..len), quotes included, appended to out. */
void text_json_str(buf_t *out, const char *s, size_t len);

#endif

/* The few Python str operations the reference tokenisers depend on,
 * reproduced on code points with libutf8proc. */
#ifndef CLIP_PYSTR_H
#define CLIP_PYSTR_H

#include <stddef.h>
#include <stdint.h>

/* Decode UTF-8 into *cps (grown as needed; *cap elements). Returns the
 * number of code points, or -1 with clip_error() naming the byte offset. */
long pystr_decode(const char *s, size_t len, int32_t **cps, size_t *cap);

/* UTF-8 of one code point into out (4 bytes room); returns its length. */
int pystr_encode_char(int32_t c, char *out);

int pystr_isspace(int32_t c);     /* str.isspace() */
int pystr_white_space(int32_t c); /* Unicode White_Space: `\s` of the regex module */

/* str.lower(): full mapping (U+0130 -> i + U+0307) and final sigma.
 * out needs room for 2*n code points; returns the output length. */
size_t pystr_lower(const int32_t *in, size_t n, int32_t *out);

/* unicodedata.normalize("NFD", ...) then drop category Mn, in place of
 * out (room for 4*n + 16 code points). Returns the output length. */
size_t pystr_nfd_strip_mn(const int32_t *in, size_t n, int32_t *out);

#endif

#include "core/pystr.h"

#include <utf8proc.h>

#include "core/util.h"

long pystr_decode(const char *s, size_t len, int32_t **cps, size_t *cap)
{
    if (*cap < len + 1) {
        *cap = len + 64;
        *cps = xrealloc(*cps, *cap * sizeof **cps);
    }
    size_t n = 0, i = 0;
    while (i < len) {
        unsigned char b = s[i];
        if (b < 0x80) { /* fast path */
            (*cps)[n++] = b;
            i++;
            continue;
        }
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, len - i, &c);
        if (k <= 0) {
            clip_set_error("invalid UTF-8 at byte %zu", i);
            return -1;
        }
        (*cps)[n++] = c;
        i += k;
    }
    return (long)n;
}

int pystr_encode_char(int32_t c, char *out)
{
    return (int)utf8proc_encode_char(c, (utf8proc_uint8_t *)out);
}

int pystr_white_space(int32_t c)
{
    if (c < 0x80) return c == ' ' || (c >= '\t' && c <= '\r');
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

int pystr_isspace(int32_t c)
{
    /* CPython: bidirectional class WS, B or S, or category Zs */
    if (c >= 0x1C && c <= 0x1F) return 1;
    if (c == 0x180E) /* Zs in old Unicode versions only */
        return 0;
    return pystr_white_space(c);
}

static int is_cased(int32_t c)
{
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL ||
           cat == UTF8PROC_CATEGORY_LT || utf8proc_tolower(c) != c || utf8proc_toupper(c) != c;
}

static int is_case_ignorable(int32_t c)
{
    switch (c) {
    case 0x27:
    case 0x2E:
    case 0x3A:
    case 0x5E:
    case 0x60:
    case 0xA8:
    case 0xAD:
    case 0xAF:
    case 0xB4:
    case 0xB7:
    case 0xB8:
    case 0x387:
    case 0x5F4:
    case 0x2018:
    case 0x2019:
    case 0x2024:
    case 0x2027:
    case 0xFE13:
    case 0xFE52:
    case 0xFE55:
    case 0xFF07:
    case 0xFF0E:
    case 0xFF1A: return 1;
    }
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME ||
           cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_LM ||
           cat == UTF8PROC_CATEGORY_SK;
}

static int final_sigma(const int32_t *s, size_t n, size_t i)
{
    size_t j = i;
    while (j > 0 && is_case_ignorable(s[j - 1])) j--;
    if (j == 0 || !is_cased(s[j - 1])) return 0;
    for (j = i + 1; j < n && is_case_ignorable(s[j]); j++)
        ;
    return j == n || !is_cased(s[j]);
}

size_t pystr_lower(const int32_t *in, size_t n, int32_t *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = in[i];
        if (c < 0x80) {
            out[k++] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        } else if (c == 0x130) {
            out[k++] = 'i';
            out[k++] = 0x307;
        } else if (c == 0x3A3) {
            out[k++] = final_sigma(in, n, i) ? 0x3C2 : 0x3C3;
        } else {
            out[k++] = utf8proc_tolower(c);
        }
    }
    return k;
}

size_t pystr_nfd_strip_mn(const int32_t *in, size_t n, int32_t *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = in[i];
        if (c < 0xC0) { /* nothing below decomposes except NBSP etc. (compat only) */
            out[k++] = c;
            continue;
        }
        int last = 0;
        utf8proc_int32_t buf[32];
        utf8proc_ssize_t m = utf8proc_decompose_char(c, buf, 32, UTF8PROC_DECOMPOSE, &last);
        if (m < 0 || m > 32) {
            out[k++] = c;
            continue;
        }
        /* canonical ordering: insertion sort of combining marks by class,
         * stable, never moving past a starter */
        for (utf8proc_ssize_t j = 0; j < m; j++) {
            int32_t d = buf[j];
            int ccc = utf8proc_get_property(d)->combining_class;
            size_t p = k;
            if (ccc)
                while (p > 0 && utf8proc_get_property(out[p - 1])->combining_class > ccc) {
                    out[p] = out[p - 1];
                    p--;
                }
            out[p] = d;
            k++;
        }
    }
    /* drop Mn after ordering (ordering only matters for what remains) */
    size_t w = 0;
    for (size_t i = 0; i < k; i++)
        if (utf8proc_category(out[i]) != UTF8PROC_CATEGORY_MN) out[w++] = out[i];
    return w;
}

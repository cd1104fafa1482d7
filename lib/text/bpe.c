/* Text is cleaned as SimpleTokenizer.encode does (html.unescape twice, strip,
 * collapse whitespace, lower), split by hand with the reference pattern
 *   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * and each piece's UTF-8 bytes are merged by rank. Symbols are vocabulary ids
 * throughout: byte b is id byte_id[b], with "</w>" 256 + byte_id[b], and a
 * merge (a, b) of rank r yields the id of the string a+b. */
#include "text/bpe.h"

#include <archive.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/pystr.h"
#include "core/strmap.h"
#include "core/util.h"

#define CACHE_MAX_WORDS (1 << 20)

struct bpe {
    int32_t byte_id[256];
    pairmap ranks;      /* (a, b) -> rank */
    int32_t *merged;    /* rank -> id of a+b */
    strmap cache;       /* piece bytes -> index into cache_ids (start), ... */
    int32_t *cache_ids; /* per cached piece: count, then ids */
    size_t cache_len, cache_cap;
    /* scratch */
    int32_t *buf, *low, *sym;
    size_t buf_cap, low_cap, sym_cap;
    char *bytes;
    size_t bytes_cap;
};

/* CLIP's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the
 * rest to 256 + n in byte order; vocabulary order is that list's order. */
static void bytes_to_unicode(int32_t cp[256], int32_t order[256])
{
    int n = 0, extra = 0;
    for (int b = 0; b < 256; b++)
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
            cp[b] = b;
            order[n++] = b;
        }
    for (int b = 0; b < 256; b++)
        if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))) {
            cp[b] = 256 + extra++;
            order[n++] = b;
        }
}

typedef struct {
    struct archive *a;
    const char *path;
    size_t n; /* bytes given so far */
} archive_source;

/* read_source_max's source: the file's data, gunzipped if it is gzip. */
static ssize_t read_archive(void *source, char *dst, size_t room)
{
    archive_source *s = source;
    la_ssize_t k = archive_read_data(s->a, dst, room);
    if (k < 0) {
        clip_set_error("%s: %s", s->path, archive_error_string(s->a));
        return -1;
    }
    if ((s->n += k) > CLIP_MAX_VOCAB_FILE) { /* a gzip bomb as merges */
        clip_set_error("%s: BPE merges of more than the limit of %zu bytes (uncompressed)", s->path,
                       CLIP_MAX_VOCAB_FILE);
        return -1;
    }
    return k;
}

static char *read_maybe_gzip(const char *path, size_t *len)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_raw(a);
    struct archive_entry *e;
    char *data = NULL;
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK ||
        archive_read_next_header(a, &e) != ARCHIVE_OK) {
        clip_set_error("%s: cannot read BPE merges: %s", path, archive_error_string(a));
    } else {
        archive_source src = {a, path, 0};
        /* the source's limit is the one that counts: its message names the merges */
        data = read_source_max(read_archive, &src, 1 << 20, SIZE_MAX / 2, path, NULL, len);
    }
    archive_read_free(a);
    return data;
}

bpe *bpe_load(const char *merges_path)
{
    size_t len;
    char *text = read_maybe_gzip(merges_path, &len);
    if (!text) return NULL;
    bpe *b = xcalloc(1, sizeof *b);
    strmap vocab;
    strmap_init(&vocab);
    strmap_init(&b->cache);
    pairmap_init(&b->ranks);
    b->merged = xmalloc(BPE_N_MERGES * sizeof *b->merged);

    int32_t cp[256], order[256];
    bytes_to_unicode(cp, order);
    char s[16];
    for (int i = 0; i < 256; i++) {
        int k = pystr_encode_char(cp[order[i]], s);
        b->byte_id[order[i]] = i;
        strmap_put(&vocab, s, k, i);
        memcpy(s + k, "</w>", 4);
        strmap_put(&vocab, s, k + 4, 256 + i);
    }

    /* merge lines 1..BPE_N_MERGES, split at the space */
    const char **a = xmalloc(3 * BPE_N_MERGES * sizeof *a);
    const char **sp = a + BPE_N_MERGES, **end = sp + BPE_N_MERGES;
    char *p = memchr(text, '\n', len);
    int m = 0;
    char *tend = text + len;
    while (p && m < BPE_N_MERGES) {
        p++;
        char *nl = memchr(p, '\n', tend - p);
        char *e = nl ? nl : tend;
        char *space = memchr(p, ' ', e - p);
        if (!space || space == p || space + 1 >= e || memchr(space + 1, ' ', e - space - 1)) {
            clip_set_error("%s: line %d: expected a merge \"a b\"", merges_path, m + 2);
            goto fail;
        }
        a[m] = p, sp[m] = space, end[m] = e;
        m++;
        p = nl;
    }
    if (m < BPE_N_MERGES) {
        clip_set_error("%s: %d merges, CLIP needs %d", merges_path, m, BPE_N_MERGES);
        goto fail;
    }
    char *joined = xmalloc(256);
    size_t joined_cap = 256;
    for (int r = 0; r < m; r++) {
        size_t la = sp[r] - a[r], lb = end[r] - sp[r] - 1;
        if (la + lb > joined_cap) {
            joined_cap = 2 * (la + lb);
            joined = xrealloc(joined, joined_cap);
        }
        memcpy(joined, a[r], la);
        memcpy(joined + la, sp[r] + 1, lb);
        strmap_put(&vocab, joined, la + lb, 512 + r);
    }
    strmap_put(&vocab, "<|startoftext|>", 15, BPE_START_ID);
    strmap_put(&vocab, "<|endoftext|>", 13, BPE_END_ID);
    for (int r = 0; r < m; r++) {
        size_t la = sp[r] - a[r], lb = end[r] - sp[r] - 1;
        int32_t ia, ib;
        if (!strmap_get(&vocab, a[r], la, &ia) || !strmap_get(&vocab, sp[r] + 1, lb, &ib)) {
            clip_set_error("%s: line %d: merge of a token not in the vocabulary", merges_path,
                           r + 2);
            free(joined);
            goto fail;
        }
        memcpy(joined, a[r], la);
        memcpy(joined + la, sp[r] + 1, lb);
        strmap_get(&vocab, joined, la + lb, &b->merged[r]);
        pairmap_put(&b->ranks, ia, ib, r);
    }
    free(joined);
    free(a);
    strmap_free(&vocab);
    free(text);
    return b;
fail:
    free(a);
    strmap_free(&vocab);
    free(text);
    bpe_free(b);
    return NULL;
}

void bpe_free(bpe *b)
{
    if (!b) return;
    pairmap_free(&b->ranks);
    strmap_free(&b->cache);
    free(b->merged);
    free(b->cache_ids);
    free(b->buf);
    free(b->low);
    free(b->sym);
    free(b->bytes);
    free(b);
}

/* Merge the symbols of one piece (bytes s[0..n)) into w; returns the count. */
static size_t merge_piece(const bpe *b, const unsigned char *s, size_t n, int32_t *w)
{
    for (size_t i = 0; i < n; i++) w[i] = b->byte_id[s[i]];
    w[n - 1] += 256; /* last symbol carries "</w>" */
    while (n > 1) {
        int32_t best = INT32_MAX, r;
        for (size_t i = 0; i + 1 < n; i++)
            if (pairmap_get(&b->ranks, w[i], w[i + 1], &r) && r < best) best = r;
        if (best == INT32_MAX) break;
        int32_t first = -1, second = -1;
        /* recover the pair of rank best (the first occurrence has it) */
        for (size_t i = 0; i + 1 < n; i++)
            if (pairmap_get(&b->ranks, w[i], w[i + 1], &r) && r == best) {
                first = w[i], second = w[i + 1];
                break;
            }
        size_t k = 0;
        for (size_t i = 0; i < n;) {
            if (i + 1 < n && w[i] == first && w[i + 1] == second) {
                w[k++] = b->merged[best];
                i += 2;
            } else {
                w[k++] = w[i++];
            }
        }
        n = k;
    }
    return n;
}

/* The reference's pattern does not bound a piece ([\p{L}]+ matches a 10 MB
 * word) and merging is quadratic in a piece's length. Longer pieces are
 * split into BPE_MAX_PIECE-code-point chunks, each merged as a word of its
 * own (ending in </w>), and the rest is not merged once max ids are out.
 * This differs from the reference only for runs of more than 256 letters
 * (or of more than 256 symbols) with no space, digit or punctuation; such a
 * chunk costs at most ~10^6 pair look-ups. */
#define BPE_MAX_PIECE 256

static int emit_word(bpe *b, const int32_t *cps, size_t n, int32_t *ids, int k, int max);

static int emit_piece(bpe *b, const int32_t *cps, size_t n, int32_t *ids, int k, int max)
{
    for (size_t at = 0; at < n && k < max; at += BPE_MAX_PIECE)
        k = emit_word(b, cps + at, n - at < BPE_MAX_PIECE ? n - at : BPE_MAX_PIECE, ids, k, max);
    return k;
}

static int emit_word(bpe *b, const int32_t *cps, size_t n, int32_t *ids, int k, int max)
{
    if (b->bytes_cap < 4 * n) {
        b->bytes_cap = 8 * n;
        b->bytes = xrealloc(b->bytes, b->bytes_cap);
    }
    size_t len = 0;
    for (size_t i = 0; i < n; i++) len += pystr_encode_char(cps[i], b->bytes + len);
    int32_t at;
    if (!strmap_get(&b->cache, b->bytes, len, &at)) {
        if (b->cache.n >= CACHE_MAX_WORDS) {
            strmap_clear(&b->cache);
            b->cache_len = 0;
        }
        if (b->sym_cap < len) {
            b->sym_cap = 2 * len;
            b->sym = xrealloc(b->sym, b->sym_cap * sizeof *b->sym);
        }
        size_t m = merge_piece(b, (const unsigned char *)b->bytes, len, b->sym);
        if (b->cache_cap < b->cache_len + m + 1) {
            b->cache_cap = 2 * (b->cache_len + m + 1) + 4096;
            b->cache_ids = xrealloc(b->cache_ids, b->cache_cap * sizeof *b->cache_ids);
        }
        at = b->cache_len;
        b->cache_ids[at] = m;
        memcpy(b->cache_ids + at + 1, b->sym, m * sizeof *b->sym);
        b->cache_len += m + 1;
        strmap_put(&b->cache, b->bytes, len, at);
    }
    int32_t m = b->cache_ids[at];
    for (int32_t i = 0; i < m && k < max; i++) ids[k++] = b->cache_ids[at + 1 + i];
    return k;
}

static int is_letter(int32_t c)
{
    if (c < 0x80) return (c | 32) >= 'a' && (c | 32) <= 'z';
    utf8proc_category_t cat = utf8proc_category(c);
    return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}

static int is_number(int32_t c)
{
    if (c < 0x80) return c >= '0' && c <= '9';
    utf8proc_category_t cat = utf8proc_category(c);
    return cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO;
}

static int starts_with(const int32_t *s, size_t n, const char *lit)
{
    size_t i = 0;
    for (; lit[i]; i++)
        if (i >= n || s[i] != (unsigned char)lit[i]) return 0;
    return 1;
}

/* Length of the contraction 's 't 're 've 'm 'll 'd at s (0 if none);
 * the reference matches case-insensitively, so U+017F (long s) counts as s. */
static size_t contraction(const int32_t *s, size_t n)
{
    if (n < 2 || s[0] != '\'') return 0;
    int32_t c = s[1];
    if (c == 's' || c == 0x17F || c == 't' || c == 'm' || c == 'd') return 2;
    if (n >= 3 &&
        ((c == 'r' && s[2] == 'e') || (c == 'v' && s[2] == 'e') || (c == 'l' && s[2] == 'l')))
        return 3;
    return 0;
}

/* html.unescape for the entities that occur in captions: &amp; &lt; &gt;
 * &quot; &apos; &nbsp; and numeric references. In place; returns the length. */
static size_t html_unescape(int32_t *s, size_t n)
{
    static const struct {
        const char *name;
        int32_t c;
    } named[] = {
        {"amp;", '&'}, {"lt;", '<'}, {"gt;", '>'}, {"quot;", '"'}, {"apos;", '\''}, {"nbsp;", 0xA0},
    };
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] != '&') {
            s[w++] = s[i++];
            continue;
        }
        size_t used = 0;
        int32_t c = 0;
        for (size_t j = 0; j < sizeof named / sizeof *named && !used; j++)
            if (starts_with(s + i + 1, n - i - 1, named[j].name))
                used = 1 + strlen(named[j].name), c = named[j].c;
        if (!used && i + 2 < n && s[i + 1] == '#') {
            size_t j = i + 2;
            int hex = j < n && (s[j] == 'x' || s[j] == 'X');
            j += hex;
            long v = 0;
            size_t d0 = j;
            for (; j < n && j - d0 < 8; j++) {
                int32_t ch = s[j];
                int dv = ch >= '0' && ch <= '9'                        ? ch - '0'
                         : hex && (ch | 32) >= 'a' && (ch | 32) <= 'f' ? (ch | 32) - 'a' + 10
                                                                       : -1;
                if (dv < 0) break;
                v = v * (hex ? 16 : 10) + dv;
            }
            if (j > d0 && j < n && s[j] == ';' && v > 0 && v <= 0x10FFFF &&
                !(v >= 0xD800 && v <= 0xDFFF) && !(v >= 0x80 && v <= 0x9F))
                used = j + 1 - i, c = (int32_t)v;
        }
        if (used) {
            s[w++] = c;
            i += used;
        } else {
            s[w++] = s[i++];
        }
    }
    return w;
}

int bpe_encode(bpe *b, const int32_t *text, size_t n, int32_t *ids, int max)
{
    if (b->buf_cap < n + 1) {
        b->buf_cap = 2 * n + 1;
        b->buf = xrealloc(b->buf, b->buf_cap * sizeof *b->buf);
    }
    memcpy(b->buf, text, n * sizeof *text);
    n = html_unescape(b->buf, n);
    n = html_unescape(b->buf, n);
    const int32_t *t = b->buf;
    while (n > 0 && pystr_isspace(t[0])) /* basic_clean's strip() */
        t++, n--;
    while (n > 0 && pystr_isspace(t[n - 1])) n--;
    /* collapsing whitespace changes nothing below: it only separates */
    if (b->low_cap < 2 * n + 1) {
        b->low_cap = 4 * n + 1;
        b->low = xrealloc(b->low, b->low_cap * sizeof *b->low);
    }
    n = pystr_lower(t, n, b->low);
    const int32_t *s = b->low;

    int k = 0;
    size_t i = 0;
    while (i < n && k < max) {
        int32_t c = s[i];
        size_t j;
        if (starts_with(s + i, n - i, "<|startoftext|>")) {
            ids[k++] = BPE_START_ID;
            i += 15;
        } else if (starts_with(s + i, n - i, "<|endoftext|>")) {
            ids[k++] = BPE_END_ID;
            i += 13;
        } else if ((j = contraction(s + i, n - i))) {
            k = emit_piece(b, s + i, j, ids, k, max);
            i += j;
        } else if (is_letter(c)) {
            for (j = i + 1; j < n && is_letter(s[j]); j++)
                ;
            k = emit_piece(b, s + i, j - i, ids, k, max);
            i = j;
        } else if (is_number(c)) {
            k = emit_piece(b, s + i, 1, ids, k, max);
            i++;
        } else if (pystr_white_space(c)) {
            i++;
        } else {
            for (j = i + 1;
                 j < n && !is_letter(s[j]) && !is_number(s[j]) && !pystr_white_space(s[j]); j++)
                ;
            k = emit_piece(b, s + i, j - i, ids, k, max);
            i = j;
        }
    }
    return k;
}

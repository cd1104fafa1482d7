/* Steps (BasicTokenizer.tokenize, then WordpieceTokenizer.tokenize):
 * clean (drop NUL, U+FFFD, Cc/Cf; whitespace -> space), space around CJK
 * ideographs, split on whitespace, lowercase, NFD and drop Mn, split off
 * punctuation, then greedy longest-match WordPiece with "##" continuations. */
#include "text/wordpiece.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/pystr.h"
#include "core/strmap.h"
#include "core/util.h"

#define MAX_WORD_CHARS 200

struct wordpiece {
    strmap vocab;
    int size;
    int32_t unk;
    /* scratch */
    int32_t *buf, *low, *nfd;
    size_t buf_cap, low_cap, nfd_cap;
    char *bytes;
    size_t *off;
    size_t bytes_cap, off_cap;
};

wordpiece *wordpiece_load(const char *vocab_path)
{
    size_t len;
    char *text = read_file_max(vocab_path, &len, CLIP_MAX_VOCAB_FILE, "vocabulary");
    if (!text) return NULL; /* the message names the file and the limit */
    wordpiece *wp = xcalloc(1, sizeof *wp);
    strmap_init(&wp->vocab);
    char *p = text, *end = text + len;
    while (p < end) {
        char *nl = memchr(p, '\n', end - p);
        char *e = nl ? nl : end;
        char *a = p, *b = e; /* token.strip() */
        while (a < b && (*a == ' ' || *a == '\t' || *a == '\r')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r')) b--;
        strmap_put(&wp->vocab, a, b - a, wp->size++);
        p = nl ? nl + 1 : end;
    }
    free(text);
    wp->unk = wordpiece_id(wp, "[UNK]");
    if (wp->size == 0 || wp->unk < 0 || wordpiece_id(wp, "[CLS]") < 0 ||
        wordpiece_id(wp, "[SEP]") < 0) {
        clip_set_error("%s: not a BERT vocabulary (needs [UNK], [CLS] and [SEP] lines)",
                       vocab_path);
        wordpiece_free(wp);
        return NULL;
    }
    return wp;
}

void wordpiece_free(wordpiece *wp)
{
    if (!wp) return;
    strmap_free(&wp->vocab);
    free(wp->buf);
    free(wp->low);
    free(wp->nfd);
    free(wp->bytes);
    free(wp->off);
    free(wp);
}

int32_t wordpiece_id(const wordpiece *wp, const char *token)
{
    int32_t id;
    return strmap_get(&wp->vocab, token, strlen(token), &id) ? id : -1;
}

int wordpiece_vocab_size(const wordpiece *wp) { return wp->size; }

static int is_control(int32_t c)
{
    if (c == '\t' || c == '\n' || c == '\r') return 0;
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF;
}

static int is_whitespace(int32_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' ||
           utf8proc_category(c) == UTF8PROC_CATEGORY_ZS;
}

static int is_punctuation(int32_t c)
{
    if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
        (c >= 123 && c <= 126))
        return 1;
    utf8proc_category_t cat = utf8proc_category(c);
    return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

static int is_chinese_char(int32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static void grow32(int32_t **p, size_t *cap, size_t need)
{
    if (*cap < need) {
        *cap = need * 2;
        *p = xrealloc(*p, *cap * sizeof **p);
    }
}

/* WordPiece of one punctuation-free piece; appends to ids (up to max). */
static int encode_piece(wordpiece *wp, const int32_t *s, size_t n, int32_t *ids, int k, int max)
{
    if (n > MAX_WORD_CHARS) {
        ids[k++] = wp->unk;
        return k;
    }
    /* "##" + UTF-8 of the piece; off[i] = byte offset of char i (after "##") */
    if (wp->bytes_cap < 4 * n + 8) {
        wp->bytes_cap = 8 * n + 16;
        wp->bytes = xrealloc(wp->bytes, wp->bytes_cap);
    }
    if (wp->off_cap < n + 1) {
        wp->off_cap = 2 * n + 2;
        wp->off = xrealloc(wp->off, wp->off_cap * sizeof *wp->off);
    }
    char *b = wp->bytes;
    size_t *off = wp->off, len = 2;
    b[0] = b[1] = '#';
    for (size_t i = 0; i < n; i++) {
        off[i] = len;
        len += pystr_encode_char(s[i], b + len);
    }
    off[n] = len;

    int k0 = k;
    size_t start = 0;
    while (start < n) {
        size_t end = n;
        int32_t id = -1;
        for (; end > start; end--) {
            /* a continuation uses the two bytes before it as "##" */
            size_t from = start ? off[start] - 2 : off[start];
            if (start) {
                char save0 = b[from], save1 = b[from + 1];
                b[from] = b[from + 1] = '#';
                int found = strmap_get(&wp->vocab, b + from, off[end] - from, &id);
                b[from] = save0, b[from + 1] = save1;
                if (found) break;
            } else if (strmap_get(&wp->vocab, b + from, off[end] - from, &id)) {
                break;
            }
        }
        if (end == start) { /* no sub-token matched: the whole word is [UNK] */
            ids[k0] = wp->unk;
            return k0 + 1;
        }
        if (k < max) ids[k] = id;
        k++;
        start = end;
    }
    return k < max ? k : max;
}

/* Where the piece of s[0..n) that starts at s[i] ends: after s[i] alone if
 * it is a separator, else at the next separator or n. */
static size_t piece_end(const int32_t *s, size_t i, size_t n, int (*is_separator)(int32_t))
{
    if (is_separator(s[i])) return i + 1;
    while (i < n && !is_separator(s[i])) i++;
    return i;
}

/* Lowercase, strip accents, split punctuation, WordPiece: one whitespace word. */
static int encode_word(wordpiece *wp, const int32_t *w, size_t n, int32_t *ids, int k, int max)
{
    grow32(&wp->low, &wp->low_cap, 2 * n + 1);
    size_t nl = pystr_lower(w, n, wp->low);
    grow32(&wp->nfd, &wp->nfd_cap, 4 * nl + 16);
    size_t nd = pystr_nfd_strip_mn(wp->low, nl, wp->nfd);
    const int32_t *s = wp->nfd;
    for (size_t i = 0, j; i < nd && k < max; i = j) {
        j = piece_end(s, i, nd, is_punctuation);
        k = encode_piece(wp, s + i, j - i, ids, k, max);
    }
    return k;
}

int wordpiece_encode(wordpiece *wp, const int32_t *text, size_t n, int32_t *ids, int max)
{
    grow32(&wp->buf, &wp->buf_cap, 3 * n + 1);
    int32_t *t = wp->buf;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = text[i];
        if (c == 0 || c == 0xFFFD || is_control(c)) continue;
        if (is_whitespace(c)) {
            t[m++] = ' ';
        } else if (is_chinese_char(c)) {
            t[m++] = ' ';
            t[m++] = c;
            t[m++] = ' ';
        } else {
            t[m++] = c;
        }
    }
    int k = 0;
    for (size_t i = 0, j; i < m && k < max; i = j) {
        j = piece_end(t, i, m, pystr_isspace);
        if (!pystr_isspace(t[i])) /* str.split(): also U+2028/U+2029 */
            k = encode_word(wp, t + i, j - i, ids, k, max);
    }
    return k;
}

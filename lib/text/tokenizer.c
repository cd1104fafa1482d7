#include "text/tokenizer.h"

#include <stdlib.h>

#include "text/bpe.h"
#include "core/datafile.h"
#include "core/pystr.h"
#include "core/util.h"
#include "text/wordpiece.h"

struct tokenizer {
    wordpiece *wp;
    bpe *bpe;
    int32_t start, end;
    int32_t *cps;
    size_t cps_cap;
};

/* Owns wp or b (the other NULL). */
static tokenizer *tokenizer_new(wordpiece *wp, bpe *b, int32_t start, int32_t end)
{
    tokenizer *t = xcalloc(1, sizeof *t);
    t->wp = wp;
    t->bpe = b;
    t->start = start;
    t->end = end;
    return t;
}

tokenizer *tokenizer_open_wordpiece(const char *vocab_path)
{
    wordpiece *wp = wordpiece_load(vocab_path);
    if (!wp) return NULL;
    return tokenizer_new(wp, NULL, wordpiece_id(wp, "[CLS]"), wordpiece_id(wp, "[SEP]"));
}

tokenizer *tokenizer_open_bpe(const char *merges_path)
{
    bpe *b = bpe_load(merges_path);
    return b ? tokenizer_new(NULL, b, BPE_START_ID, BPE_END_ID) : NULL;
}

tokenizer *tokenizer_open_shipped(int bpe)
{
    char *path = clip_data_path(bpe ? BPE_MERGES_FILE : WORDPIECE_VOCAB_FILE);
    if (!path) return NULL;
    tokenizer *t = bpe ? tokenizer_open_bpe(path) : tokenizer_open_wordpiece(path);
    free(path);
    return t;
}

void tokenizer_close(tokenizer *t)
{
    if (!t) return;
    wordpiece_free(t->wp);
    bpe_free(t->bpe);
    free(t->cps);
    free(t);
}

int tokenizer_encode(tokenizer *t, const char *utf8, size_t len, int32_t *ids, int context_len)
{
    if (context_len < 2) {
        clip_set_error("context length %d: needs room for the start and end tokens", context_len);
        return -1;
    }
    long n = pystr_decode(utf8, len, &t->cps, &t->cps_cap);
    if (n < 0) return -1;
    int max = context_len - 2;
    int k = t->wp ? wordpiece_encode(t->wp, t->cps, n, ids + 1, max)
                  : bpe_encode(t->bpe, t->cps, n, ids + 1, max);
    ids[0] = t->start;
    ids[k + 1] = t->end;
    return k + 2;
}

int32_t tokenizer_start_id(const tokenizer *t) { return t->start; }
int32_t tokenizer_end_id(const tokenizer *t) { return t->end; }
int32_t tokenizer_pad_id(const tokenizer *t) { return 0; }
int tokenizer_vocab_size(const tokenizer *t)
{
    return t->wp ? wordpiece_vocab_size(t->wp) : BPE_VOCAB_SIZE;
}
int tokenizer_default_context(const tokenizer *t) { return t->wp ? 52 : 77; }

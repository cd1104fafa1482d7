/* Every reference vector through the C tokenisers, exact equality. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "text/tokenizer.h"
#include "unit.h"
#include "core/util.h"

#define VECTORS "tests/fixtures/tokenize/"
#define VOCAB "share/clip-tools/"

static void run_vectors(tokenizer *t, const char *path, int context_len)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open %s", path);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, ok = 0, bad = 0;
    int32_t ids[1024];
    double t0 = now_seconds();
    while ((len = getline(&line, &cap, f)) > 0) {
        lineno++;
        json_error_t err;
        json_t *v = json_loadb(line, len, 0, &err);
        json_t *text = json_object_get(v, "text"), *want = json_object_get(v, "ids");
        if (!json_is_string(text) || !json_is_array(want)) {
            CHECK(0, "%s:%d: malformed vector", path, lineno);
            json_decref(v);
            continue;
        }
        int n = tokenizer_encode(t, json_string_value(text), json_string_length(text), ids,
                                 context_len);
        int same = n == (int)json_array_size(want);
        for (int i = 0; same && i < n; i++)
            same = ids[i] == json_integer_value(json_array_get(want, i));
        if (same) {
            ok++;
        } else if (bad++ < 10) {
            fprintf(stderr, "%s:%d: %s\n  want", path, lineno, json_string_value(text));
            for (size_t i = 0; i < json_array_size(want); i++)
                fprintf(stderr, " %lld", json_integer_value(json_array_get(want, i)));
            fprintf(stderr, "\n  got ");
            for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
            fprintf(stderr, "\n");
        }
        json_decref(v);
    }
    double dt = now_seconds() - t0;
    free(line);
    fclose(f);
    CHECK(lineno > 5000, "%s: only %d vectors", path, lineno);
    CHECK(bad == 0, "%s: %d of %d vectors differ", path, bad, lineno);
    fprintf(stderr, "%s: %d/%d exact (%.1f ms incl. JSON)\n", path, ok, lineno, dt * 1e3);
}

static void check_edges(tokenizer *t)
{
    int32_t ids[8];
    CHECK(tokenizer_encode(t, "a\xff", 2, ids, 8) == -1, "invalid UTF-8 accepted");
    CHECK(strstr(clip_error(), "UTF-8") != NULL, "error: %s", clip_error());
    CHECK(tokenizer_encode(t, "\xed\xa0\x80", 3, ids, 8) == -1, "surrogate accepted");
    CHECK(tokenizer_encode(t, "a", 1, ids, 1) == -1, "context 1 accepted");
    int n = tokenizer_encode(t, "", 0, ids, 8);
    CHECK(n == 2 && ids[0] == tokenizer_start_id(t) && ids[1] == tokenizer_end_id(t),
          "empty text: %d ids", n);
    n = tokenizer_encode(t, "dog dog dog dog", 15, ids, 3);
    CHECK(n == 3 && ids[2] == tokenizer_end_id(t), "truncation to 3: %d ids", n);
    CHECK(tokenizer_pad_id(t) == 0, "pad id");
}

int main(void)
{
    tokenizer *wp = tokenizer_open_wordpiece(VOCAB "bert-chinese-vocab.txt");
    CHECK(wp != NULL, "%s", clip_error());
    if (wp) {
        CHECK(tokenizer_vocab_size(wp) == 21128, "vocab %d", tokenizer_vocab_size(wp));
        CHECK(tokenizer_start_id(wp) == 101 && tokenizer_end_id(wp) == 102, "specials");
        CHECK(tokenizer_default_context(wp) == 52, "context");
        run_vectors(wp, VECTORS "bert-chinese-tokens.jsonl", 52);
        check_edges(wp);
        tokenizer_close(wp);
    }
    tokenizer *bpe = tokenizer_open_bpe(VOCAB "bpe_simple_vocab_16e6.txt.gz");
    CHECK(bpe != NULL, "%s", clip_error());
    if (bpe) {
        CHECK(tokenizer_start_id(bpe) == 49406 && tokenizer_end_id(bpe) == 49407, "specials");
        CHECK(tokenizer_default_context(bpe) == 77, "context");
        run_vectors(bpe, VECTORS "clip-bpe-tokens.jsonl", 77);
        check_edges(bpe);
        int32_t ids[8];
        int n = tokenizer_encode(bpe, "<|endoftext|>", 13, ids, 8);
        CHECK(n == 3 && ids[1] == 49407, "special token in text");
        tokenizer_close(bpe);
    }
    CHECK(tokenizer_open_wordpiece("/nonexistent/vocab.txt") == NULL, "missing vocab");
    CHECK(strstr(clip_error(), "/nonexistent/vocab.txt") != NULL, "error: %s", clip_error());
    CHECK(tokenizer_open_bpe("/nonexistent/bpe.gz") == NULL, "missing merges");
    CHECK(tokenizer_open_bpe(VOCAB "bert-chinese-vocab.txt") == NULL, "vocab as merges");
    return unit_done();
}

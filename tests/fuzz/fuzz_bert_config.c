/* Fuzzes bert_config_from_json (lib/model/bert.c: a Hugging Face config.json, read from a
 * memfd as it takes a path), over the configuration bert_config_from_ckpt gives
 * bert-base-chinese: each input is taken or refused with an error naming it; a taken one
 * leaves every size in its range, the heads dividing the width, and a layer-norm epsilon
 * that is a positive finite number. Seeds: tests/fuzz/corpus/bert_config/
 * (tests/fuzz/make_seeds.py); the driver: tests/fuzz/fuzz.h. */
#include "model/bert.h"
#include "core/util.h"

#include <math.h>

#define FUZZ_NAME "fuzz_bert_config"
#define FUZZ_TOKENS                                                                                \
    {                                                                                              \
        "\"hidden_size\"", "\"num_hidden_layers\"", "\"num_attention_heads\"",                     \
            "\"intermediate_size\"", "\"max_position_embeddings\"", "\"type_vocab_size\"",         \
            "\"vocab_size\"", "\"layer_norm_eps\"", "\"hidden_act\"", "\"gelu\"", "\"gelu_new\"",  \
            "0", "-1", "7", "1e-12", "1e400", "-1e-12", "2147483648", "4294967296",                \
            "9223372036854775807", "1.5", "null", "true", "[]", "{}", "\"12\""                     \
    }

static int fuzz_one(const unsigned char *data, size_t size);
#include "fuzz.h"

static int in(int v, long long lo, long long hi) { return v >= lo && v <= hi; }

static int fuzz_one(const unsigned char *data, size_t size)
{
    const char *path = fuzz_as_file(data, size);
    bert_config cfg = {.hidden = 768,
                       .layers = 12,
                       .heads = 12,
                       .intermediate = 3072,
                       .max_pos = 512,
                       .type_vocab = 2,
                       .vocab = 21128,
                       .eps = 1e-12f};
    if (bert_config_from_json(path, &cfg)) {
        fuzz_refused(path);
        return 0;
    }
    if (!fuzz_no_error()) fuzz_fail("a configuration taken left an error behind");
    if (!in(cfg.hidden, 1, BERT_MAX_WIDTH) || !in(cfg.layers, 1, BERT_MAX_LAYERS) ||
        !in(cfg.heads, 1, BERT_MAX_WIDTH) || !in(cfg.intermediate, 1, BERT_MAX_WIDTH * 8) ||
        !in(cfg.max_pos, 1, 1 << 16) || !in(cfg.type_vocab, 1, 1 << 16) ||
        !in(cfg.vocab, 1, BERT_MAX_VOCAB))
        fuzz_fail("a size outside its range was taken");
    if (cfg.hidden % cfg.heads) fuzz_fail("heads that do not divide the width were taken");
    if (!(cfg.eps > 0) || !isfinite(cfg.eps))
        fuzz_fail("a layer_norm_eps that is not a positive finite number was taken");
    return 1;
}

/* OpenAI CLIP's byte-level BPE (SimpleTokenizer), without ftfy. */
#ifndef CLIP_BPE_H
#define CLIP_BPE_H

#include <stddef.h>
#include <stdint.h>

#define BPE_N_MERGES 48894 /* 49152 - 256 - 2 */
#define BPE_VOCAB_SIZE 49408
#define BPE_START_ID 49406 /* <|startoftext|> */
#define BPE_END_ID 49407   /* <|endoftext|> */

typedef struct bpe bpe;

/* bpe_simple_vocab_16e6.txt.gz (gzip'd or plain): a #version line, then
 * merges "a b"; the first BPE_N_MERGES are used. NULL with clip_error(). */
bpe *bpe_load(const char *merges_path);
void bpe_free(bpe *b);

/* Token ids of text (n code points, no start/end tokens); writes at most max
 * ids (the first max) and returns how many. Caches words: not thread safe. */
int bpe_encode(bpe *b, const int32_t *text, size_t n, int32_t *ids, int max);

#endif

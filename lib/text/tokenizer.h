/* One interface over the two text tokenisers: Chinese BERT WordPiece
 * (vocab.txt) and OpenAI CLIP byte-level BPE (merges .txt.gz). */
#ifndef CLIP_TOKENIZER_H
#define CLIP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer;

/* NULL with clip_error() naming the file. */
tokenizer *tokenizer_open_wordpiece(const char *vocab_path);
tokenizer *tokenizer_open_bpe(const char *merges_path);
/* The vocabulary shipped with clip-tools (clip_data_path): the Chinese BERT
 * WordPiece one, or CLIP's BPE merges when bpe. NULL with clip_error(). */
tokenizer *tokenizer_open_shipped(int bpe);
void tokenizer_close(tokenizer *t);

/* Encode UTF-8 text as start + tokens + end, truncated to context_len as the
 * references do (the end token kept). Writes at most context_len ids, no
 * padding; returns their count, or -1 with clip_error() on invalid UTF-8 or
 * context_len < 2. Not thread safe (scratch buffers, BPE word cache). */
int tokenizer_encode(tokenizer *t, const char *utf8, size_t len, int32_t *ids, int context_len);

int32_t tokenizer_start_id(const tokenizer *t); /* [CLS] / <|startoftext|> */
int32_t tokenizer_end_id(const tokenizer *t);   /* [SEP] / <|endoftext|> */
int32_t tokenizer_pad_id(const tokenizer *t);   /* 0 for both */
int tokenizer_vocab_size(const tokenizer *t);
int tokenizer_default_context(const tokenizer *t); /* 52 (Chinese-CLIP) / 77 (CLIP) */

#endif

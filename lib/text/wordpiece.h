/* BERT BasicTokenizer + WordPiece, exact to the original BERT tokenization.py
 * as shipped with Chinese-CLIP (do_lower_case=True, max word 200 chars). */
#ifndef CLIP_WORDPIECE_H
#define CLIP_WORDPIECE_H

#include <stddef.h>
#include <stdint.h>

typedef struct wordpiece wordpiece;

/* vocab.txt: one token a line, id = line number. NULL with clip_error(). */
wordpiece *wordpiece_load(const char *vocab_path);
void wordpiece_free(wordpiece *wp);

int32_t wordpiece_id(const wordpiece *wp, const char *token); /* -1 if absent */
int wordpiece_vocab_size(const wordpiece *wp);

/* Token ids of text (n code points, no [CLS]/[SEP]); writes at most max ids
 * (the first max, as the reference truncates) and returns how many. */
int wordpiece_encode(wordpiece *wp, const int32_t *text, size_t n, int32_t *ids, int max);

#endif

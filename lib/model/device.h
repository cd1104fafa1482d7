/* Where an encoder runs during training: a table of the tower operations
 * the trainer calls. The CPU implementation is the only one in this build;
 * an accelerator backend (SDAA, CUDA) is one more table that keeps its own
 * copies of the weights and activations behind the same calls. */
#ifndef CLIP_DEVICE_H
#define CLIP_DEVICE_H

#include <stdint.h>

#include "model/bert.h"
#include "model/clip_text.h"
#include "model/vit.h"

/* The calls of vit.h, bert.h and clip_text.h; each 0, or -1 with an error. */
typedef struct {
    const char *name;
    int (*vit_forward)(vit *m, const compute_ctx *cx, const uint8_t *pixels, int B, float *out);
    int (*vit_backward)(vit *m, const compute_ctx *cx, const float *dout, int B);
    int (*bert_forward)(bert *m, const compute_ctx *cx, const int32_t *ids, int B, int L,
                        float *out);
    int (*bert_backward)(bert *m, const compute_ctx *cx, const int32_t *ids, const float *dout,
                         int B, int L);
    int (*clip_text_forward)(clip_text *m, const compute_ctx *cx, const int32_t *ids, int B, int L,
                             float *out);
    int (*clip_text_backward)(clip_text *m, const compute_ctx *cx, const int32_t *ids,
                              const float *dout, int B, int L);
    int (*vit_forward_masked)(vit *m, const compute_ctx *cx, const uint8_t *pixels, int B, int keep,
                              const int32_t *kept, float *out);
} clip_device;

/* "cpu"; a known accelerator name ("sdaa", "sdaa:1", "cuda:0") that is not
 * built in, or anything else, is NULL with an error listing what there is.
 * `what` names the encoder in the message. */
const clip_device *device_find(const char *name, const char *what);

#endif

/* Weight-space ensembling (WiSE-FT, Wortsman et al. 2022): two checkpoints of
 * one architecture interpolated tensor by tensor,
 *     merged = (1 - alpha) * zero + alpha * fine,
 * so that a fine-tuned model keeps some of what the zero-shot one knew. */
#ifndef CLIP_MERGE_H
#define CLIP_MERGE_H

#include "ckpt/checkpoint.h"

/* A new checkpoint with zero's tensors, in zero's order, and zero's metadata.
 * Both must hold the same names with the same dtypes and shapes, and agree on
 * the "clip_config" metadata where both have it. Floating tensors (float32,
 * float16, bfloat16: computed in float32, rounded once to their dtype;
 * float64 in double) are interpolated; alpha 0 and 1 copy zero and fine bit
 * for bit. Any other tensor (int64 position ids, ...) must be equal in both
 * and is copied. alpha outside [0, 1] extrapolates. NULL with an error naming
 * the tensor and both files. Free with ckpt_free. */
ckpt *ckpt_interpolate(const ckpt *zero, const ckpt *fine, double alpha);

/* The metadata pairs {key, value, ..., NULL} of c (NULL when it has none);
 * owned by c. */
const char *const *ckpt_metadata_pairs(const ckpt *c);

#endif

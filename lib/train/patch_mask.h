/* Patch dropout (FLIP; open_clip's PatchDropout, --force-patch-dropout):
 * in training, each image keeps a random 1 - ratio of its patch tokens (the
 * class token always), chosen as open_clip does, by the top-k of random
 * noise, here seeded so that a run is reproducible and the same under any
 * split of the batch:
 *
 *   keep      = max(1, (int)(patches * (1 - ratio)))   (open_clip's rule)
 *   state     = mix(mix(seed ^ PATCH_MASK_SALT, step), position)
 *               mix(a, b) = splitmix64 of the state a * 0x9e3779b97f4a7c15 ^ b
 *   noise[p]  = splitmix64(&state), p = 0 .. patches - 1 in turn
 *   kept      = the keep patches of largest noise (ties: the lower index),
 *               in increasing patch order
 *
 * step: the optimizer steps done before this one (0 for the first);
 * position: the image's place in the global batch (data parallelism and
 * --accum-freq: loader.h's positions), so the mask of an image depends only
 * on (seed, step, position). tests/ref/train_ref.py reimplements it. */
#ifndef CLIP_PATCH_MASK_H
#define CLIP_PATCH_MASK_H

#include <stdint.h>

#define PATCH_MASK_SALT 0x70617463686d736bull /* "patchmsk" */

/* patches kept of `patches` at this ratio (0 <= ratio < 1) */
int patch_mask_keep(int patches, double ratio);

/* kept[keep]: image `position`'s kept patch indices in [0, patches), in
 * increasing order. scratch: 2 * patches uint64 words. */
void patch_mask_indices(uint64_t seed, long step, int64_t position, int patches, int keep,
                        int32_t *kept, uint64_t *scratch);

#endif

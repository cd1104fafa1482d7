/* The symmetric contrastive (InfoNCE) loss of CLIP training over a batch of G:
 *   logits = exp(logit_scale) * img_n @ txt_n^T,   x_n = x / ||x||
 *   loss   = CE(logits, arange G) + CE(logits^T, arange G)
 * (the sum of the two batch means, as the reference training does).
 *
 * Data-parallel form (open_clip's --local-loss --gather-with-grad): a rank
 * owning rows [row0, row0 + rows) of the gathered batch computes the part of
 * the loss of its own images against all G texts and of its own texts
 * against all G images, each cross-entropy divided by G; the parts of all
 * ranks sum to the loss above, and so do their gradients, which reach every
 * one of the G features (the columns) and are summed back to their owners. */
#ifndef CLIP_CONTRASTIVE_H
#define CLIP_CONTRASTIVE_H

#include <stddef.h>

typedef struct {
    double loss;             /* this block's part of the loss */
    long hits_i2t, hits_t2i; /* own rows whose argmax is their pair */
    double dlogit_scale;     /* d(part) / d logit_scale */
} contrastive_part;

/* Floats of scratch contrastive_loss_rows needs (0: the sizes overflow). */
size_t contrastive_scratch_floats(int G, int rows, int D);

/* img, txt: [G, D] unnormalised features (all ranks'); rows [row0, row0 +
 * rows) are this block's. Writes dimg, dtxt [G, D]: the gradients of the
 * block's part w.r.t. every feature (overwritten, not accumulated).
 * scratch: contrastive_scratch_floats(G, rows, D) floats. */
void contrastive_loss_rows(const float *img, const float *txt, int G, int D, int row0, int rows,
                           float logit_scale, float *dimg, float *dtxt, float *scratch,
                           contrastive_part *part);

#endif

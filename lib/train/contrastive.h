/* The symmetric contrastive (InfoNCE) loss of CLIP training:
 *   logits = exp(logit_scale) * img_n @ txt_n^T,   x_n = x / ||x||
 *   loss   = CE(logits, arange B) + CE(logits^T, arange B)
 * (the sum of the two batch means, as the reference training does). */
#ifndef CLIP_CONTRASTIVE_H
#define CLIP_CONTRASTIVE_H

typedef struct {
    double loss;
    double acc_i2t, acc_t2i; /* fraction of rows whose argmax is the diagonal */
} contrastive_stats;

/* img, txt: [B, D] unnormalised features. Writes dimg, dtxt [B, D] and
 * *dlogit_scale, the gradients of the loss (overwritten, not accumulated).
 * scratch: at least 3 * B * B + 2 * B * D floats. */
void contrastive_loss(const float *img, const float *txt, int B, int D, float logit_scale,
                      float *dimg, float *dtxt, float *dlogit_scale, float *scratch,
                      contrastive_stats *st);

#endif

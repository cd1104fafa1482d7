/* AdamW (torch.optim.AdamW), gradient-norm clipping and the learning-rate
 * schedule of clip-train. */
#ifndef CLIP_OPTIM_H
#define CLIP_OPTIM_H

#include <stddef.h>

typedef struct {
    float beta1, beta2, eps; /* 0.9, 0.999, 1e-8 */
} adamw_config;

/* One AdamW update of n parameters, t = 1, 2, ... the step number, with
 * torch's exact arithmetic: p *= 1 - lr wd; m, v moments; p -= lr / (1 -
 * beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps). */
void adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr, float wd,
                  const adamw_config *c, long t);

/* Sum of squares of n gradients (in double). */
double sum_squares(const float *g, size_t n);
void scale_floats(float *x, size_t n, float s);

typedef enum { SCHEDULE_COSINE, SCHEDULE_CONSTANT } lr_schedule;

/* The learning rate used for step s = 0, 1, ...: linear warm-up over the
 * first `warmup` steps (base (s+1)/warmup), then cosine from base down to
 * base * min_ratio at step `total` (or constant at base). */
double lr_at_step(lr_schedule kind, double base, double min_ratio, long warmup, long total, long s);

#endif

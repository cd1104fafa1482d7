#include "train/optim.h"

#include <math.h>

void adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr, float wd,
                  const adamw_config *c, long t)
{
    float b1 = c->beta1, b2 = c->beta2, eps = c->eps;
    float step_size = lr / (float)(1.0 - pow(b1, (double)t));
    float bc2_sqrt = (float)sqrt(1.0 - pow(b2, (double)t));
    float decay = 1.0f - lr * wd;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        float mi = b1 * m[i] + (1.0f - b1) * g;
        float vi = b2 * v[i] + (1.0f - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = param[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

double sum_squares(const float *g, size_t n)
{
    double s = 0.0;
#pragma omp parallel for simd reduction(+ : s) schedule(static)
    for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return s;
}

void scale_floats(float *x, size_t n, float s)
{
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

double lr_at_step(lr_schedule kind, double base, double min_ratio, long warmup, long total, long s)
{
    if (s < warmup) return base * (double)(s + 1) / warmup;
    if (kind == SCHEDULE_CONSTANT) return base;
    long span = total - warmup > 1 ? total - warmup : 1;
    double p = (double)(s - warmup) / span;
    if (p > 1.0) p = 1.0;
    double lo = base * min_ratio;
    return lo + 0.5 * (base - lo) * (1.0 + cos(M_PI * p));
}

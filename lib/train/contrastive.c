#include "train/contrastive.h"

#include <math.h>
#include <string.h>

#include <cblas.h>

/* rows of x / ||x|| into u, the norms into norm */
static void normalize_rows(float *u, float *norm, const float *x, int B, int D)
{
    for (int i = 0; i < B; i++) {
        double s = 0.0;
        for (int j = 0; j < D; j++) s += (double)x[(size_t)i * D + j] * x[(size_t)i * D + j];
        norm[i] = (float)sqrt(s);
        float inv = 1.0f / fmaxf(norm[i], 1e-12f);
        for (int j = 0; j < D; j++) u[(size_t)i * D + j] = x[(size_t)i * D + j] * inv;
    }
}

/* dx = (du - u (u . du)) / ||x||: the gradient through x -> x / ||x|| */
static void normalize_backward(float *dx, const float *du, const float *u, const float *norm, int B,
                               int D)
{
    for (int i = 0; i < B; i++) {
        const float *ur = u + (size_t)i * D, *dr = du + (size_t)i * D;
        double dot = 0.0;
        for (int j = 0; j < D; j++) dot += (double)ur[j] * dr[j];
        float inv = 1.0f / fmaxf(norm[i], 1e-12f);
        for (int j = 0; j < D; j++) dx[(size_t)i * D + j] = (dr[j] - ur[j] * (float)dot) * inv;
    }
}

void contrastive_loss(const float *img, const float *txt, int B, int D, float logit_scale,
                      float *dimg, float *dtxt, float *dlogit_scale, float *scratch,
                      contrastive_stats *st)
{
    float *logits = scratch;              /* [B, B] */
    float *prow = logits + (size_t)B * B; /* softmax over each row (image -> texts) */
    float *pcol = prow + (size_t)B * B;   /* softmax over each column (text -> images) */
    float *u = pcol + (size_t)B * B, *v = u + (size_t)B * D;
    float nu[B], nv[B];
    normalize_rows(u, nu, img, B, D);
    normalize_rows(v, nv, txt, B, D);
    float s = expf(logit_scale);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, B, D, s, u, D, v, D, 0.0f, logits, B);

    double loss = 0.0;
    int hit_i2t = 0, hit_t2i = 0;
    for (int i = 0; i < B; i++) {
        const float *r = logits + (size_t)i * B;
        float m = r[0];
        int arg = 0;
        for (int j = 1; j < B; j++)
            if (r[j] > m) m = r[j], arg = j;
        double z = 0.0;
        for (int j = 0; j < B; j++) z += exp((double)r[j] - m);
        for (int j = 0; j < B; j++) prow[(size_t)i * B + j] = (float)(exp((double)r[j] - m) / z);
        loss += (m + log(z) - r[i]) / B;
        hit_i2t += arg == i;
    }
    for (int j = 0; j < B; j++) {
        float m = logits[j];
        int arg = 0;
        for (int i = 1; i < B; i++)
            if (logits[(size_t)i * B + j] > m) m = logits[(size_t)i * B + j], arg = i;
        double z = 0.0;
        for (int i = 0; i < B; i++) z += exp((double)logits[(size_t)i * B + j] - m);
        for (int i = 0; i < B; i++)
            pcol[(size_t)i * B + j] = (float)(exp((double)logits[(size_t)i * B + j] - m) / z);
        loss += (m + log(z) - logits[(size_t)j * B + j]) / B;
        hit_t2i += arg == j;
    }

    /* dlogits = ((prow - I) + (pcol - I)) / B, kept in prow */
    double ds = 0.0;
    for (int i = 0; i < B; i++)
        for (int j = 0; j < B; j++) {
            size_t k = (size_t)i * B + j;
            float g = (prow[k] + pcol[k] - 2.0f * (i == j)) / B;
            prow[k] = g;
            ds += (double)g * logits[k]; /* d logits / d logit_scale = logits */
        }
    *dlogit_scale = (float)ds;
    /* du = s dlogits @ v, dv = s dlogits^T @ u; then back through the norms */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, D, B, s, prow, B, v, D, 0.0f, dimg, D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, B, D, B, s, prow, B, u, D, 0.0f, dtxt, D);
    normalize_backward(dimg, dimg, u, nu, B, D);
    normalize_backward(dtxt, dtxt, v, nv, B, D);
    if (st) {
        st->loss = loss;
        st->acc_i2t = (double)hit_i2t / B;
        st->acc_t2i = (double)hit_t2i / B;
    }
}

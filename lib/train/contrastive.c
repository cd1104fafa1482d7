#include "train/contrastive.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cblas.h>

#include "kernels/ops.h"

size_t contrastive_scratch_floats(int G, int rows, int D)
{
    if (G <= 0 || rows <= 0 || D <= 0 || rows > G) return 0;
    size_t g = (size_t)G, r = (size_t)rows, d = (size_t)D;
    if (g > SIZE_MAX / 8 / (r > d ? r : d)) return 0;
    return 2 * r * g + 2 * g * d + 2 * g;
}

/* Cross-entropy of each of `rows` rows of G logits against its label row0 +
 * i, divided by G; the rows become the gradients (softmax - onehot) / G.
 * Returns the loss part; *ds += sum g * logit (d logits / d logit_scale =
 * logits / 1); *hits counts rows whose argmax is the label. */
static double ce_rows(float *x, int rows, int G, int row0, double *ds, long *hits)
{
    double loss = 0.0;
    for (int i = 0; i < rows; i++) {
        float *r = x + (size_t)i * G;
        float m = r[0];
        int arg = 0;
        for (int j = 1; j < G; j++)
            if (r[j] > m) m = r[j], arg = j;
        double z = 0.0;
        for (int j = 0; j < G; j++) z += exp((double)r[j] - m);
        int label = row0 + i;
        loss += (m + log(z) - r[label]) / G;
        *hits += arg == label;
        for (int j = 0; j < G; j++) {
            float g = ((float)(exp((double)r[j] - m) / z) - (j == label)) / G;
            *ds += (double)g * r[j];
            r[j] = g;
        }
    }
    return loss;
}

void contrastive_loss_rows(const float *img, const float *txt, int G, int D, int row0, int rows,
                           float logit_scale, float *dimg, float *dtxt, float *scratch,
                           contrastive_part *part)
{
    float *u = scratch, *v = u + (size_t)G * D;   /* [G, D] unit features */
    float *nu = v + (size_t)G * D, *nv = nu + G;  /* [G] norms */
    float *a = nv + G, *t = a + (size_t)rows * G; /* [rows, G] image->text, text->image */
    l2_normalize(u, nu, img, G, D);
    l2_normalize(v, nv, txt, G, D);
    const float *ur = u + (size_t)row0 * D, *vr = v + (size_t)row0 * D;
    float s = expf(logit_scale);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, G, D, s, ur, D, v, D, 0.0f, a, G);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, G, D, s, vr, D, u, D, 0.0f, t, G);
    memset(part, 0, sizeof *part);
    double ds = 0.0;
    part->loss = ce_rows(a, rows, G, row0, &ds, &part->hits_i2t);
    part->loss += ce_rows(t, rows, G, row0, &ds, &part->hits_t2i);
    part->dlogit_scale = ds;
    /* a = s u_r v^T: du_r = s a' v, dv = s a'^T u_r; t = s v_r u^T likewise */
    memset(dimg, 0, (size_t)G * D * sizeof *dimg);
    memset(dtxt, 0, (size_t)G * D * sizeof *dtxt);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, D, G, s, a, G, v, D, 0.0f,
                dimg + (size_t)row0 * D, D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, G, D, rows, s, t, G, vr, D, 1.0f, dimg, D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, D, G, s, t, G, u, D, 0.0f,
                dtxt + (size_t)row0 * D, D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, G, D, rows, s, a, G, ur, D, 1.0f, dtxt, D);
    l2_normalize_backward(dimg, dimg, u, nu, G, D);
    l2_normalize_backward(dtxt, dtxt, v, nv, G, D);
}

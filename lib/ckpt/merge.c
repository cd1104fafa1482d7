#include "ckpt/merge.h"
#include "ckpt/ckpt_internal.h"
#include "core/util.h"

#include <stdlib.h>
#include <string.h>

const char *const *ckpt_metadata_pairs(const ckpt *c) { return (const char *const *)c->meta; }

static int is_float(clip_dtype t)
{
    return t == DT_F32 || t == DT_F16 || t == DT_BF16 || t == DT_F64;
}

static int same_shape(const ckpt_tensor *a, const ckpt_tensor *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

/* dst = (1 - alpha) * a + alpha * b over n elements of type t */
static void interpolate(clip_dtype t, const void *a, const void *b, size_t n, double alpha,
                        void *dst, float *fa, float *fb)
{
    if (t == DT_F64) {
        const unsigned char *pa = a, *pb = b;
        for (size_t i = 0; i < n; i++) {
            double x, y;
            memcpy(&x, pa + 8 * i, 8);
            memcpy(&y, pb + 8 * i, 8);
            double r = (1 - alpha) * x + alpha * y;
            memcpy((unsigned char *)dst + 8 * i, &r, 8);
        }
        return;
    }
    /* in float32, as torch computes (1 - alpha) * x + alpha * y on float32 weights */
    float wa = (float)(1 - alpha), wb = (float)alpha;
    dtype_to_f32(t, a, n, fa);
    dtype_to_f32(t, b, n, fb);
    for (size_t i = 0; i < n; i++) fa[i] = wa * fa[i] + wb * fb[i];
    dtype_from_f32(t, fa, n, dst);
}

ckpt *ckpt_interpolate(const ckpt *zero, const ckpt *fine, double alpha)
{
    for (size_t i = 0; i < fine->n; i++)
        if (!ckpt_find(zero, fine->t[i].name)) {
            clip_set_error("%s: tensor '%s' is not in %s: the two checkpoints are not of one "
                           "architecture",
                           fine->path, fine->t[i].name, zero->path);
            return NULL;
        }
    const char *za = ckpt_metadata(zero, "clip_config"), *fa = ckpt_metadata(fine, "clip_config");
    if (za && fa && strcmp(za, fa)) {
        clip_set_error("%s and %s: different model configurations (clip_config %s vs %s)",
                       zero->path, fine->path, za, fa);
        return NULL;
    }
    size_t largest = 0;
    for (size_t i = 0; i < zero->n; i++) {
        const ckpt_tensor *x = &zero->t[i], *y = ckpt_find(fine, x->name);
        if (!y) {
            clip_set_error("%s: tensor '%s' is not in %s: the two checkpoints are not of one "
                           "architecture",
                           zero->path, x->name, fine->path);
            return NULL;
        }
        if (x->dtype != y->dtype || !same_shape(x, y)) {
            char sx[256], sy[256];
            ckpt_format_shape(sx, sizeof sx, x->ndim, x->shape);
            ckpt_format_shape(sy, sizeof sy, y->ndim, y->shape);
            clip_set_error("tensor '%s' is %s %s in %s but %s %s in %s", x->name,
                           dtype_name(x->dtype), sx, zero->path, dtype_name(y->dtype), sy,
                           fine->path);
            return NULL;
        }
        size_t bytes = x->numel * dtype_size(x->dtype);
        if (!is_float(x->dtype) && memcmp(x->data, y->data, bytes)) {
            clip_set_error("tensor '%s' is %s and differs between %s and %s: only floating "
                           "tensors can be interpolated",
                           x->name, dtype_name(x->dtype), zero->path, fine->path);
            return NULL;
        }
        if (x->numel > largest) largest = x->numel;
    }

    char *name = xmalloc(strlen(zero->path) + strlen(fine->path) + 8);
    sprintf(name, "%s + %s", zero->path, fine->path);
    ckpt *out = ckpt_new(name);
    free(name);
    float *fa_buf = xmalloc((largest ? largest : 1) * sizeof(float));
    float *fb_buf = xmalloc((largest ? largest : 1) * sizeof(float));
    for (size_t i = 0; i < zero->n; i++) {
        const ckpt_tensor *x = &zero->t[i], *y = ckpt_find(fine, x->name);
        size_t bytes = x->numel * dtype_size(x->dtype);
        void *data = ckpt_own(out, bytes);
        if (!is_float(x->dtype) || alpha == 0)
            memcpy(data, x->data, bytes);
        else if (alpha == 1)
            memcpy(data, y->data, bytes);
        else
            interpolate(x->dtype, x->data, y->data, x->numel, alpha, data, fa_buf, fb_buf);
        if (ckpt_add(out, x->name, x->dtype, x->ndim, x->shape, data) < 0) break;
    }
    free(fa_buf);
    free(fb_buf);
    if (out->n < zero->n) {
        ckpt_free(out);
        return NULL;
    }
    if (zero->meta) {
        out->meta = xcalloc(zero->n_meta + 1, sizeof *out->meta);
        for (size_t i = 0; i < zero->n_meta; i++) out->meta[i] = xstrdup(zero->meta[i]);
        out->n_meta = zero->n_meta;
    }
    return out;
}

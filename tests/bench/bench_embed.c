/* Embedding throughput of the C towers, fp32, bf16 (--amp), then int8 (--int8): bench_embed CKPT [B_IMG] [B_TXT] [L]
 * prints "key value" lines (read by tests/ref/bench_embed.py): the OpenBLAS
 * kernel, a 4096^3 sgemm's GFLOP/s, images/s and texts/s with their
 * GFLOP/s and the share of time in big GEMMs and attention. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"
#include "kernels/blas.h"
#include "model/clip_model.h"
#include "kernels/ops.h"
#include "core/util.h"

static double sgemm_peak(void)
{
    int n = 4096;
    float *a = clip_alloc_big((size_t)n * n * 4), *b = clip_alloc_big((size_t)n * n * 4),
          *c = clip_alloc_big((size_t)n * n * 4);
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = (i % 7) * 1e-3f, b[i] = (i % 5) * 1e-3f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    double t0 = now_seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    double s = now_seconds() - t0;
    clip_free_big(a, (size_t)n * n * 4), clip_free_big(b, (size_t)n * n * 4),
        clip_free_big(c, (size_t)n * n * 4);
    return 2.0 * n * n * n / s / 1e9;
}

int main(int argc, char **argv)
{
    blas_setup(argc, argv);
    clip_set_progname(argv[0]);
    if (argc < 2) die("usage: bench_embed CKPT [B_IMG] [B_TXT] [L] [REPEATS]");
    int bi = argc > 2 ? atoi(argv[2]) : 32, bt = argc > 3 ? atoi(argv[3]) : 32;
    int L = argc > 4 ? atoi(argv[4]) : 52, reps = argc > 5 ? atoi(argv[5]) : 3;
    printf("blas %s\n", blas_describe());
    fprintf(stderr, "bench_embed: CPU features %s (CLIP_CPU)\n", cpu_describe());
    printf("sgemm_gflops %.1f\n", sgemm_peak());
    fflush(stdout);
    clip_model *m = clip_model_load(argv[1], NULL);
    if (!m) die("%s", clip_error());
    m->max_batch = bi > bt ? bi : bt;
    op_profile prof;
    m->compute.prof = &prof;

    for (int mode = 0; mode < 3; mode++) {
        clip_precision p = mode == 1 ? PRECISION_BF16 : mode == 2 ? PRECISION_INT8 : PRECISION_FP32;
        if (clip_model_set_precision(m, p)) die("%s", clip_error());
        const char *sfx = mode == 1 ? "_bf16" : mode == 2 ? "_int8" : "";
        if (m->visual && bi > 0) {
            int R = clip_image_resolution(m);
            uint8_t *px = xmalloc((size_t)bi * R * R * 3);
            for (size_t i = 0; i < (size_t)bi * R * R * 3; i++)
                px[i] = (uint8_t)(i * 2654435761u >> 24);
            float *emb = xmalloc((size_t)bi * m->embed_dim * sizeof(float));
            clip_encode_images(m, px, bi, emb); /* warm-up: page faults, thread start */
            memset(&prof, 0, sizeof prof);
            double t0 = now_seconds();
            for (int r = 0; r < reps; r++) clip_encode_images(m, px, bi, emb);
            double s = (now_seconds() - t0) / reps;
            printf("images_per_s%s %.2f\n", sfx, bi / s);
            printf("image_gflops%s %.1f\n", sfx, vit_forward_flops(&m->visual->cfg) * bi / s / 1e9);
            printf("image_gemm_share%s %.3f\nimage_attention_share%s %.3f\n", sfx,
                   prof.gemm / reps / s, sfx, prof.attention / reps / s);
            fflush(stdout);
            free(px), free(emb);
        }
        if (m->bert && bt > 0) {
            int32_t *ids = xmalloc((size_t)bt * L * sizeof(int32_t));
            for (int b = 0; b < bt; b++)
                for (int t = 0; t < L; t++)
                    ids[b * L + t] = t == 0       ? 101
                                     : t == L - 1 ? 102
                                                  : 1000 + (b * 131 + t * 71) % 20000;
            float *emb = xmalloc((size_t)bt * m->embed_dim * sizeof(float));
            if (clip_encode_texts(m, ids, bt, L, emb)) die("%s", clip_error());
            memset(&prof, 0, sizeof prof);
            double t0 = now_seconds();
            for (int r = 0; r < reps; r++) clip_encode_texts(m, ids, bt, L, emb);
            double s = (now_seconds() - t0) / reps;
            printf("texts_per_s%s %.2f\n", sfx, bt / s);
            printf("text_gflops%s %.1f\n", sfx,
                   bert_forward_flops(&m->bert->cfg, L) * bt / s / 1e9);
            printf("text_gemm_share%s %.3f\ntext_attention_share%s %.3f\n", sfx,
                   prof.gemm / reps / s, sfx, prof.attention / reps / s);
            fflush(stdout);
            free(ids), free(emb);
        }
    }
    clip_model_free(m);
    return 0;
}

#include "blas.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops.h"
#include "util.h"

char *openblas_get_corename(void);
int openblas_get_num_threads(void);

void blas_setup(int argc, char **argv)
{
    (void)argc;
    if (!getenv("OPENBLAS_CORETYPE") || getenv("CLIP_KEEP_CORETYPE")) return;
    unsetenv("OPENBLAS_CORETYPE");
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the slower kernel */
}

const char *blas_describe(void)
{
    static char buf[96];
    snprintf(buf, sizeof buf, "%s, %d threads", openblas_get_corename(), openblas_get_num_threads());
    return buf;
}

void matmul_forward(float *out, int ldo, const float *inp, const float *weight, const float *bias,
                    int M, int K, int N)
{
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for
        for (int i = 0; i < M; i++) memcpy(out + (size_t)i * ldo, bias, N * sizeof(float));
        beta = 1.0f;
    }
    double t0 = now_seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, inp, K, weight, K, beta,
                out, ldo);
    op_prof.gemm += now_seconds() - t0;
}

void matmul_residual_forward(float *out, const float *inp, const float *weight, const float *bias,
                             const float *resid, int M, int K, int N)
{
#pragma omp parallel for
    for (int i = 0; i < M; i++) {
        float *o = out + (size_t)i * N;
        const float *r = resid + (size_t)i * N;
#pragma omp simd
        for (int j = 0; j < N; j++) o[j] = r[j] + (bias ? bias[j] : 0.0f);
    }
    double t0 = now_seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, inp, K, weight, K, 1.0f, out,
                N);
    op_prof.gemm += now_seconds() - t0;
}

#include "kernels/blas.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/gemm_bf16.h"
#include "kernels/gemm_int8.h"
#include "kernels/ops.h"
#include "core/util.h"

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
    int n = openblas_get_num_threads();
    snprintf(buf, sizeof buf, "%s, %d thread%s", openblas_get_corename(), n, n == 1 ? "" : "s");
    return buf;
}

void blas_set_threads(int n)
{
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

const char *precision_name(clip_precision p)
{
    return p == PRECISION_BF16 ? "bf16" : p == PRECISION_INT8 ? "int8" : "fp32";
}

/* the int8 path of both Linear forwards: bias and residual go in the epilogue */
static int linear_int8(const compute_ctx *cx, float *out, int ldo, const float *inp,
                       const qweight *qw, const float *bias, const float *resid, int M, int K)
{
    if (!qw) {
        clip_set_error("int8 precision: a Linear layer has no quantised weight (the model's "
                       "weights are quantised when its precision is set to int8)");
        return -1;
    }
    double t0 = prof_start(cx);
    int rc = gemm_int8(out, ldo, inp, M, K, qw, bias, resid, ldo);
    prof_stop(cx, PROF_GEMM, t0);
    return rc;
}

/* row-major C = op(A) @ op(B) + beta C through OpenBLAS or the bf16 kernel */
static int gemm(const compute_ctx *cx, int ta, int tb, int M, int N, int K, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc)
{
    double t0 = prof_start(cx);
    int rc = 0;
    if (cx->precision == PRECISION_BF16)
        rc = gemm_bf16(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
    else
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
    prof_stop(cx, PROF_GEMM, t0);
    return rc;
}

int matmul_forward(const compute_ctx *cx, float *out, int ldo, const float *inp,
                   const float *weight, const qweight *qw, const float *bias, int M, int K, int N)
{
    if (cx->precision == PRECISION_INT8)
        return linear_int8(cx, out, ldo, inp, qw, bias, NULL, M, K);
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for
        for (int i = 0; i < M; i++) memcpy(out + (size_t)i * ldo, bias, N * sizeof(float));
        beta = 1.0f;
    }
    return gemm(cx, 0, 1, M, N, K, inp, K, weight, K, beta, out, ldo);
}

int matmul_residual_forward(const compute_ctx *cx, float *out, const float *inp,
                            const float *weight, const qweight *qw, const float *bias,
                            const float *resid, int M, int K, int N)
{
    if (cx->precision == PRECISION_INT8) return linear_int8(cx, out, N, inp, qw, bias, resid, M, K);
        /* bias tested outside the loops: a load under a condition vectorises
     * only with AVX-512's masked loads, and the build targets SSE2 */
#pragma omp parallel for
    for (int i = 0; i < M; i++) {
        float *o = out + (size_t)i * N;
        const float *r = resid + (size_t)i * N;
        if (bias) {
#pragma omp simd
            for (int j = 0; j < N; j++) o[j] = r[j] + bias[j];
        } else {
#pragma omp simd
            for (int j = 0; j < N; j++) o[j] = r[j] + 0.0f;
        }
    }
    return gemm(cx, 0, 1, M, N, K, inp, K, weight, K, 1.0f, out, N);
}

#define BIAS_COLS 64

/* dbias[c0, c0 + n) += the sums of those columns of dout over its M rows, n
 * <= BIAS_COLS. Compiled twice (util.h): the portable copy took twice the
 * time of the AVX-512 one in a training step (perf, bench_train small). The
 * same sums in the same order either way. */
CLIP_TWICE_COMPILED void bias_grad_body(float *dbias, const float *dout, int ldd, int M, int c0,
                                        int n)
{
    float s[BIAS_COLS] = {0};
    for (int i = 0; i < M; i++) {
        const float *d = dout + (size_t)i * ldd + c0;
#pragma omp simd
        for (int j = 0; j < n; j++) s[j] += d[j];
    }
    for (int j = 0; j < n; j++) dbias[c0 + j] += s[j];
}

static void bias_grad(float *dbias, const float *dout, int ldd, int M, int c0, int n)
{
    bias_grad_body(dbias, dout, ldd, M, c0, n);
}

CLIP_TARGET_AVX512 static void bias_grad_avx512(float *dbias, const float *dout, int ldd, int M,
                                                int c0, int n)
{
    bias_grad_body(dbias, dout, ldd, M, c0, n);
}

int matmul_backward(const compute_ctx *cx, float *dinp, float *dweight, float *dbias,
                    const float *dout, int ldd, const float *inp, const float *weight, int M, int K,
                    int N)
{
    /* int8 is for the forwards only: its backward products are fp32 */
    if (dinp && gemm(cx, 0, 0, M, K, N, dout, ldd, weight, K, 1.0f, dinp, K)) return -1;
    if (dweight && gemm(cx, 1, 0, N, K, M, dout, ldd, inp, K, 1.0f, dweight, K)) return -1;
    if (!dbias) return 0;
    void (*cols)(float *, const float *, int, int, int, int) =
        cpu_has(CPU_AVX512) ? bias_grad_avx512 : bias_grad;
    /* columns split between tasks, rows summed in order: race-free, deterministic */
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < N; c0 += BIAS_COLS)
        cols(dbias, dout, ldd, M, c0, N - c0 < BIAS_COLS ? N - c0 : BIAS_COLS);
    return 0;
}

#include "kernels/blas.h"

#include <omp.h>
#include <pthread.h>
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

static int use_bf16;

void blas_set_bf16(int on) { use_bf16 = on; }

/* --int8: each weight is quantised on its first use and kept, keyed by its
 * address (the weights of a loaded model do not move or change) */
typedef struct {
    const float *w;
    int N, K;
    qweight *q;
} qcache_entry;

static int use_int8;
static qcache_entry *qcache;
static size_t qcache_n, qcache_cap;
static pthread_mutex_t qcache_lock = PTHREAD_MUTEX_INITIALIZER;

void blas_set_int8(int on)
{
    pthread_mutex_lock(&qcache_lock);
    use_int8 = on;
    if (!on) {
        for (size_t i = 0; i < qcache_n; i++) qweight_free(qcache[i].q);
        free(qcache);
        qcache = NULL, qcache_n = qcache_cap = 0;
    }
    pthread_mutex_unlock(&qcache_lock);
}

static const qweight *quantised(const float *w, int N, int K)
{
    pthread_mutex_lock(&qcache_lock);
    qweight *q = NULL;
    for (size_t i = 0; i < qcache_n && !q; i++) /* ~100 weights, once per layer call */
        if (qcache[i].w == w && qcache[i].N == N && qcache[i].K == K) q = qcache[i].q;
    if (!q) {
        if (qcache_n == qcache_cap) {
            qcache_cap = qcache_cap ? 2 * qcache_cap : 128;
            qcache = xrealloc(qcache, qcache_cap * sizeof *qcache);
        }
        q = qweight_make(w, N, K);
        qcache[qcache_n++] = (qcache_entry){w, N, K, q};
    }
    pthread_mutex_unlock(&qcache_lock);
    return q;
}

/* the int8 path of both Linear forwards: bias and residual go in the epilogue */
static void linear_int8(float *out, int ldo, const float *inp, const float *weight,
                        const float *bias, const float *resid, int M, int K, int N)
{
    double t0 = now_seconds();
    gemm_int8(out, ldo, inp, M, K, quantised(weight, N, K), bias, resid, ldo);
    op_prof.gemm += now_seconds() - t0;
}

/* row-major C = op(A) @ op(B) + beta C through OpenBLAS or the bf16 kernel */
static void gemm(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc)
{
    double t0 = now_seconds();
    if (use_bf16)
        gemm_bf16(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
    else
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
    op_prof.gemm += now_seconds() - t0;
}

void matmul_forward(float *out, int ldo, const float *inp, const float *weight, const float *bias,
                    int M, int K, int N)
{
    if (use_int8) {
        linear_int8(out, ldo, inp, weight, bias, NULL, M, K, N);
        return;
    }
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for
        for (int i = 0; i < M; i++) memcpy(out + (size_t)i * ldo, bias, N * sizeof(float));
        beta = 1.0f;
    }
    gemm(0, 1, M, N, K, inp, K, weight, K, beta, out, ldo);
}

void matmul_residual_forward(float *out, const float *inp, const float *weight, const float *bias,
                             const float *resid, int M, int K, int N)
{
    if (use_int8) {
        linear_int8(out, N, inp, weight, bias, resid, M, K, N);
        return;
    }
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
    gemm(0, 1, M, N, K, inp, K, weight, K, 1.0f, out, N);
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

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, int ldd,
                     const float *inp, const float *weight, int M, int K, int N)
{
    if (dinp) gemm(0, 0, M, K, N, dout, ldd, weight, K, 1.0f, dinp, K);
    if (dweight) gemm(1, 0, N, K, M, dout, ldd, inp, K, 1.0f, dweight, K);
    if (!dbias) return;
    void (*cols)(float *, const float *, int, int, int, int) =
        cpu_has(CPU_AVX512) ? bias_grad_avx512 : bias_grad;
    /* columns split between tasks, rows summed in order: race-free, deterministic */
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < N; c0 += BIAS_COLS)
        cols(dbias, dout, ldd, M, c0, N - c0 < BIAS_COLS ? N - c0 : BIAS_COLS);
}

/* gemm_bf16 against a double-precision reference on bf16-rounded inputs, all
 * four transpose combinations, odd sizes, padded leading dimensions, and the
 * bf16 rounding against a PyTorch dump (tests/fixtures/gemm, gemm_ref.py).
 *
 * Tolerance per element: |C - ref| <= 1e-5 * (|alpha| * sum_k |a_k b_k| +
 * |beta c0|). The bf16 products are exact in fp32, so the error is that of an
 * fp32 sum of K terms (each addition off by <= 2^-24 of the running sum) plus
 * the alpha/beta rounding: at most ~K * 6e-8 * sum |a_k b_k| in the worst
 * case, and ~sqrt(K) times less with random signs, so 1e-5 holds with a wide
 * margin for these K (up to 2049). The worst ratio error/tolerance is printed. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "tool.h"
#include "kernels/gemm_bf16.h"
#include "io/npy.h"
#include "unit.h"
#include "core/util.h"

#define FIXTURE "tests/fixtures/gemm/"

static double worst_ratio;

/* round to nearest even on the upper 16 bits, written independently of lib/ */
static float bf16_round(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

static void fill(float *x, size_t n, uint64_t seed, float scale)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t r = splitmix64(&seed);
        x[i] = scale * ((float)(r >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
    }
}

/* one call of gemm_bf16 compared element by element with the reference */
static void check_case(int ta, int tb, int M, int N, int K, float alpha, float beta, int pad)
{
    int arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
    int lda = acols + pad, ldb = bcols + pad, ldc = N + pad;
    float *A = xmalloc((size_t)arows * lda * 4), *B = xmalloc((size_t)brows * ldb * 4);
    float *C = xmalloc((size_t)M * ldc * 4), *C0 = xmalloc((size_t)M * ldc * 4);
    fill(A, (size_t)arows * lda, M * 131 + K, 2.0f);
    fill(B, (size_t)brows * ldb, N * 7 + K * 3, 0.5f);
    fill(C0, (size_t)M * ldc, 99, 1.0f);
    if (beta == 0.0f) /* beta == 0 must not read C */
        for (size_t i = 0; i < (size_t)M * ldc; i++) C0[i] = NAN;
    memcpy(C, C0, (size_t)M * ldc * 4);
    gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);

    /* op(A) as [M][K], op(B) as [N][K], rounded */
    double *ra = xmalloc((size_t)M * K * 8), *rb = xmalloc((size_t)N * K * 8);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++)
            ra[(size_t)i * K + k] =
                bf16_round(ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
    for (int j = 0; j < N; j++)
        for (int k = 0; k < K; k++)
            rb[(size_t)j * K + k] =
                bf16_round(tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
    int bad = 0;
    double worst = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0, sa = 0;
            const double *x = ra + (size_t)i * K, *y = rb + (size_t)j * K;
            for (int k = 0; k < K; k++) s += x[k] * y[k], sa += fabs(x[k] * y[k]);
            double c0 = beta == 0.0f ? 0.0 : C0[(size_t)i * ldc + j];
            double ref = alpha * s + beta * c0;
            double tol = 1e-5 * (fabs(alpha) * sa + fabs(beta * c0)) + 1e-30;
            double err = fabs(C[(size_t)i * ldc + j] - ref) / tol;
            if (!(err <= 1.0)) bad++;
            if (err > worst || err != err) worst = err;
        }
    /* the padding columns of C are untouched */
    for (int i = 0; i < M; i++)
        for (int j = N; j < ldc; j++) {
            float x = C[(size_t)i * ldc + j], y = C0[(size_t)i * ldc + j];
            if (memcmp(&x, &y, 4)) bad++;
        }
    CHECK(bad == 0, "trans %d%d M=%d N=%d K=%d alpha=%g beta=%g: %d bad, worst err/tol %.3g", ta,
          tb, M, N, K, alpha, beta, bad, worst);
    if (worst > worst_ratio || worst != worst) worst_ratio = worst;
    free(A), free(B), free(C), free(C0), free(ra), free(rb);
}

static float *load(const char *name, int rows, int cols)
{
    char path[256];
    snprintf(path, sizeof path, FIXTURE "%s", name);
    size_t len;
    char *buf = read_file(path, &len);
    npy_array a;
    if (!buf || npy_parse(buf, len, &a, path)) die("%s", clip_error());
    if (a.dtype != DT_F32 || a.ndim != 2 || a.shape[0] != rows || a.shape[1] != cols)
        die("%s: expected float32 [%d, %d]", path, rows, cols);
    float *x = xmalloc(a.count * 4);
    memcpy(x, a.data, a.count * 4);
    free(buf);
    return x;
}

/* torch's bf16 rounding (ties included) and its fp32 matmul of the rounded inputs */
static void check_torch(void)
{
    int M = 5, K = 7, N = 6;
    float *a = load("a.npy", M, K), *b = load("b.npy", K, N), *ar = load("a_bf16.npy", M, K),
          *br = load("b_bf16.npy", K, N), *c = load("c.npy", M, N);
    int mism = 0;
    for (int i = 0; i < M * K; i++) mism += bf16_round(a[i]) != ar[i];
    for (int i = 0; i < K * N; i++) mism += bf16_round(b[i]) != br[i];
    CHECK(mism == 0, "%d values round differently from torch's .bfloat16()", mism);

    float at[7 * 5], bt[6 * 7], out[5 * 6];
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) at[k * M + i] = a[i * K + k];
    for (int k = 0; k < K; k++)
        for (int j = 0; j < N; j++) bt[j * K + k] = b[k * N + j];
    for (int t = 0; t < 4; t++) {
        int ta = t & 1, tb = t >> 1;
        gemm_bf16(ta, tb, M, N, K, 1.0f, ta ? at : a, ta ? M : K, tb ? bt : b, tb ? K : N, 0.0f,
                  out, N);
        double worst = 0;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double sa = 0;
                for (int k = 0; k < K; k++) sa += fabs((double)ar[i * K + k] * br[k * N + j]);
                double e = fabs(out[i * N + j] - c[i * N + j]) / (1e-5 * sa + 1e-30);
                if (e > worst) worst = e;
            }
        CHECK(worst <= 1.0, "trans %d%d vs torch: worst err/tol %.3g", ta, tb, worst);
    }
    free(a), free(b), free(ar), free(br), free(c);
}

/* calls from the threads of a parallel region (each then runs on one thread,
 * with its own packing buffers) agree with a call from outside: bit for bit
 * with the AVX512_BF16 kernel, whose sums do not depend on the threads; to
 * 1e-5 of sum |a b| with the fallback, as OpenBLAS on one thread may sum in
 * another order than on several */
static void check_concurrent(void)
{
    int M = 70, N = 90, K = 333;
    float *A = xmalloc((size_t)M * K * 4), *B = xmalloc((size_t)N * K * 4);
    float *ref = xmalloc((size_t)M * N * 4), *out = xmalloc((size_t)4 * M * N * 4);
    fill(A, (size_t)M * K, 5, 1.0f);
    fill(B, (size_t)N * K, 6, 1.0f);
    gemm_bf16(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, ref, N);
#pragma omp parallel for num_threads(2)
    for (int t = 0; t < 4; t++)
        gemm_bf16(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, out + (size_t)t * M * N, N);
    int diff = 0, kernel = gemm_bf16_available();
    for (int t = 0; t < 4; t++) {
        const float *o = out + (size_t)t * M * N;
        int bad = 0;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double sa = 0;
                for (int k = 0; k < K; k++) sa += fabs((double)A[i * K + k] * B[j * K + k]);
                float x = o[i * N + j], y = ref[i * N + j];
                bad += kernel ? memcmp(&x, &y, 4) != 0 : !(fabs(x - y) <= 1e-5 * sa);
            }
        diff += bad > 0;
    }
    CHECK(diff == 0, "%d of 4 calls from a parallel region differ (%s)", diff,
          kernel ? "AVX512_BF16 kernel, bit for bit" : "fallback, to 1e-5");
    free(A), free(B), free(ref), free(out);
}

static const int shapes[][3] = {
    {1, 1, 1},     {1, 5, 3},      {3, 1, 7},     {2, 3, 2},      {13, 17, 19},   {14, 32, 2},
    {15, 33, 31},  {28, 64, 64},   {29, 65, 257}, {100, 37, 1},   {1, 200, 300},  {300, 1, 129},
    {45, 70, 801}, {50, 130, 769}, {37, 3100, 9}, {61, 47, 1601}, {19, 40, 2049},
};

/* The dispatch. The fallback is cblas_sgemm on the rounded inputs, which
 * this test can run itself and must match bit for bit; the kernel sums in
 * another order, so one product tells which path ran. It must be the
 * AVX512_BF16 kernel exactly when cpu_has() allows it (CLIP_CPU unset on a
 * CPU with it), and the fallback under the "avx512" and "generic" caps. */
static void check_dispatch(void)
{
    int M = 40, N = 50, K = 300;
    float *A = xmalloc((size_t)M * K * 4), *B = xmalloc((size_t)K * N * 4);
    float *C = xmalloc((size_t)M * N * 4), *F = xmalloc((size_t)M * N * 4);
    float *ra = xmalloc((size_t)M * K * 4), *rb = xmalloc((size_t)K * N * 4);
    float *own = xmalloc((size_t)M * N * 4);
    fill(A, (size_t)M * K, 21, 1.0f);
    fill(B, (size_t)K * N, 22, 1.0f);
    for (size_t i = 0; i < (size_t)M * K; i++) ra[i] = bf16_round(A[i]);
    for (size_t i = 0; i < (size_t)K * N; i++) rb[i] = bf16_round(B[i]);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, ra, K, rb, N, 0.0f, own,
                N);
    gemm_bf16(0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    int kernel = gemm_bf16_available(), fell_back = !memcmp(C, own, (size_t)M * N * 4);
    CHECK(fell_back != kernel, "%s: the AVX512_BF16 kernel is %s, but the product is %s",
          cpu_describe(), kernel ? "allowed" : "not allowed",
          fell_back ? "the fallback's" : "not the fallback's");
    static const char *caps[] = {"avx512", "generic"};
    for (int c = 0; c < 2; c++) {
        cpu_set_cap(caps[c]);
        CHECK(!gemm_bf16_available(), "cap %s: AVX512_BF16 still available", caps[c]);
        gemm_bf16(0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, F, N);
        CHECK(!memcmp(F, own, (size_t)M * N * 4), "cap %s: the product is not the fallback's",
              caps[c]);
    }
    cpu_set_cap(NULL);
    free(A), free(B), free(C), free(F), free(ra), free(rb), free(own);
}

int main(void)
{
    check_torch();
    check_dispatch();
    /* the dispatched path (CLIP_CPU's), then the fallback */
    for (int fallback = 0; fallback < 2; fallback++) {
        cpu_set_cap(fallback ? "avx512" : NULL);
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int t = 0; t < 4; t++) {
                int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                check_case(t & 1, t >> 1, M, N, K, 1.5f, -0.75f, 3);
                if (s % 3 == 0 || fallback == 0) check_case(t & 1, t >> 1, M, N, K, -0.5f, 0.0f, 0);
            }
    }
    cpu_set_cap(NULL);
    check_case(0, 1, 64, 64, 64, 1.0f, 1.0f, 5); /* accumulate into C */
    check_concurrent();
    printf("gemm_bf16 (%s; CPU features: %s): worst err/tol %.3g\n",
           gemm_bf16_available() ? "AVX512_BF16" : "fallback only", cpu_describe(), worst_ratio);
    return unit_done();
}

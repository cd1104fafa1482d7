/* gemm_int8 against two references written here, independently of lib/:
 *
 * 1. the stated scheme in exact arithmetic: per-row / per-channel scales,
 *    round half even, int64 sums, dequantised in double. Tolerance per
 *    element: 1e-6 * (scale_x * scale_w * sum_k |qx qw| + |bias| + |resid|)
 *    (the only rounding left is the fp32 conversion of the exact sum, one
 *    product and the two additions).
 * 2. the plain fp32 product in double: the int8 result must lie within the
 *    quantisation bound sum_k (|x| sw + |w| sx) / 2 + sx sw / 4, +1e-5 of
 *    sum_k |x w|. This is what makes the scheme an approximation of the matmul
 *    and not just self-consistent.
 *
 * With and without bias and residual (in place), odd shapes, padded output
 * rows, zero and NaN rows, the plain-C path (cpu_set_cap("generic"), as
 * CLIP_CPU=generic) against the dispatched one (VNNI where the CPU and CLIP_CPU
 * allow it) bit for bit, and calls from a parallel region. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/gemm_int8.h"
#include "unit.h"
#include "core/util.h"

static double worst_exact, worst_bound;

static void fill(float *x, size_t n, uint64_t seed, float scale)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t r = splitmix64(&seed);
        x[i] = scale * ((float)(r >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
    }
}

/* q = rint(x * (127 / max|x|)) in float, as the header states; returns the scale */
static double ref_quant(const float *x, int K, int *q)
{
    float amax = 0.0f;
    for (int k = 0; k < K; k++)
        if (fabsf(x[k]) > amax) amax = fabsf(x[k]);
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int k = 0; k < K; k++) {
        double v = nearbyint((double)(x[k] * inv));
        q[k] = v > 127 ? 127 : v < -127 ? -127 : (int)v;
    }
    return amax / 127.0f;
}

/* add: 0 nothing, 1 bias, 2 bias + a residual read from out itself (in place) */
static void check_case(int M, int N, int K, int pad, int add)
{
    int ldo = N + pad, accumulate = add == 2;
    float *X = xmalloc((size_t)M * K * 4), *W = xmalloc((size_t)N * K * 4);
    float *C = xmalloc((size_t)M * ldo * 4), *C0 = xmalloc((size_t)M * ldo * 4);
    fill(X, (size_t)M * K, M * 31 + K, 3.0f);
    fill(W, (size_t)N * K, N * 17 + K * 5, 0.05f);
    if (M > 2) memset(X + K, 0, K * 4);   /* an all-zero row */
    if (N > 2) W[(size_t)2 * K] *= 40.0f; /* one outlier weight in a channel */
    fill(C0, (size_t)M * ldo, 7, 1.0f);
    memcpy(C, C0, (size_t)M * ldo * 4);
    float *bias = xmalloc(N * 4);
    fill(bias, N, 11, add ? 0.5f : 0.0f);
    qweight *qw = qweight_make(W, N, K);
    gemm_int8(C, ldo, X, M, K, qw, add ? bias : NULL, accumulate ? C : NULL, ldo);

    int *qx = xmalloc((size_t)M * K * sizeof(int)), *qwr = xmalloc((size_t)N * K * sizeof(int));
    double *sx = xmalloc(M * 8), *sw = xmalloc(N * 8);
    for (int m = 0; m < M; m++) sx[m] = ref_quant(X + (size_t)m * K, K, qx + (size_t)m * K);
    for (int n = 0; n < N; n++) sw[n] = ref_quant(W + (size_t)n * K, K, qwr + (size_t)n * K);
    int bad_exact = 0, bad_bound = 0, bad_pad = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < ldo; n++) {
            double got = C[(size_t)m * ldo + n];
            double r0 = accumulate ? C0[(size_t)m * ldo + n] : 0.0, b0 = n < N ? bias[n] : 0.0;
            double base = r0 + b0, base_abs = fabs(r0) + fabs(b0); /* terms rounded one by one */
            if (n >= N) {
                bad_pad += got != C0[(size_t)m * ldo + n];
                continue;
            }
            int64_t s = 0, sabs = 0;
            double exact = 0, xabs = 0, wabs = 0, xw = 0;
            for (int k = 0; k < K; k++) {
                int a = qx[(size_t)m * K + k], b = qwr[(size_t)n * K + k];
                s += (int64_t)a * b, sabs += llabs((long long)a * b);
                double x = X[(size_t)m * K + k], w = W[(size_t)n * K + k];
                exact += x * w, xabs += fabs(x), wabs += fabs(w), xw += fabs(x * w);
            }
            double scheme = base + sx[m] * sw[n] * (double)s;
            double tol1 = 1e-6 * (sx[m] * sw[n] * (double)sabs + base_abs) + 1e-30;
            double e1 = fabs(got - scheme) / tol1;
            double tol2 = (xabs * sw[n] + wabs * sx[m]) / 2 + K * sx[m] * sw[n] / 4 +
                          1e-5 * (xw + base_abs) + 1e-30;
            double e2 = fabs(got - base - exact) / tol2;
            if (e1 > worst_exact) worst_exact = e1;
            if (e2 > worst_bound) worst_bound = e2;
            bad_exact += !(e1 <= 1.0);
            bad_bound += !(e2 <= 1.0);
        }
    CHECK(bad_exact == 0, "M=%d N=%d K=%d add=%d: %d outputs off the exact scheme", M, N, K, add,
          bad_exact);
    CHECK(bad_bound == 0, "M=%d N=%d K=%d add=%d: %d outputs outside the quantisation bound", M, N,
          K, add, bad_bound);
    CHECK(bad_pad == 0, "M=%d N=%d K=%d: %d padding columns written", M, N, K, bad_pad);

    { /* the plain-C path (CLIP_CPU=generic's) gives the same bits as the dispatched one */
        float *F = xmalloc((size_t)M * ldo * 4);
        memcpy(F, C0, (size_t)M * ldo * 4);
        cpu_set_cap("generic");
        gemm_int8(F, ldo, X, M, K, qw, add ? bias : NULL, accumulate ? F : NULL, ldo);
        cpu_set_cap(NULL);
        CHECK(!memcmp(F, C, (size_t)M * ldo * 4), "M=%d N=%d K=%d: plain C differs from %s", M, N,
              K, gemm_int8_available() ? "VNNI" : "itself");
        free(F);
    }
    qweight_free(qw);
    free(X), free(W), free(C), free(C0), free(bias), free(qx), free(qwr), free(sx), free(sw);
}

/* a NaN or infinity in a row turns that row's outputs into NaN, the others are unaffected */
static void check_nonfinite(void)
{
    int M = 20, N = 40, K = 50;
    float *X = xmalloc(M * K * 4), *W = xmalloc(N * K * 4), *C = xmalloc(M * N * 4);
    fill(X, M * K, 1, 1.0f), fill(W, N * K, 2, 1.0f);
    X[3 * K + 7] = NAN, X[15 * K] = INFINITY;
    qweight *qw = qweight_make(W, N, K);
    for (int fb = 0; fb < 2; fb++) {
        cpu_set_cap(fb ? "generic" : NULL);
        gemm_int8(C, N, X, M, K, qw, NULL, NULL, 0);
        int nan_rows = 0, finite_rows = 0;
        for (int m = 0; m < M; m++) {
            int nans = 0;
            for (int n = 0; n < N; n++) nans += isnan(C[m * N + n]);
            nan_rows += (m == 3 || m == 15) && nans == N;
            finite_rows += m != 3 && m != 15 && nans == 0;
        }
        CHECK(nan_rows == 2 && finite_rows == M - 2, "fallback %d: %d NaN rows, %d finite", fb,
              nan_rows, finite_rows);
    }
    cpu_set_cap(NULL);
    qweight_free(qw);
    free(X), free(W), free(C);
}

static void check_concurrent(void)
{
    int M = 70, N = 90, K = 333;
    float *X = xmalloc((size_t)M * K * 4), *W = xmalloc((size_t)N * K * 4);
    float *ref = xmalloc((size_t)M * N * 4), *out = xmalloc((size_t)4 * M * N * 4);
    fill(X, (size_t)M * K, 5, 1.0f), fill(W, (size_t)N * K, 6, 1.0f);
    qweight *qw = qweight_make(W, N, K);
    gemm_int8(ref, N, X, M, K, qw, NULL, NULL, 0);
#pragma omp parallel for num_threads(2)
    for (int t = 0; t < 4; t++) gemm_int8(out + (size_t)t * M * N, N, X, M, K, qw, NULL, NULL, 0);
    int diff = 0;
    for (int t = 0; t < 4; t++)
        diff += memcmp(ref, out + (size_t)t * M * N, (size_t)M * N * 4) != 0;
    CHECK(diff == 0, "%d of 4 calls from a parallel region differ", diff);
    qweight_free(qw);
    free(X), free(W), free(ref), free(out);
}

/* what used to exit the program is an error the caller gets: an input of
 * another K than the weight's (out untouched), a weight past the limit */
static void check_errors(void)
{
    int M = 3, N = 4, K = 8;
    float X[3 * 9], W[4 * 8], C[3 * 4];
    fill(X, sizeof X / sizeof X[0], 1, 1.0f), fill(W, sizeof W / sizeof W[0], 2, 1.0f);
    for (int i = 0; i < M * N; i++) C[i] = 7.0f;
    qweight *qw = qweight_make(W, N, K);
    CHECK(qw != NULL, "qweight_make: %s", clip_error());
    clip_clear_error();
    CHECK(gemm_int8(C, N, X, M, K + 1, qw, NULL, NULL, 0) == -1 && strstr(clip_error(), "9") &&
              strstr(clip_error(), "8"),
          "K 9 against a weight of K 8: %s", clip_error());
    int untouched = 1;
    for (int i = 0; i < M * N; i++) untouched &= C[i] == 7.0f;
    CHECK(untouched, "a refused call wrote to out");
    CHECK(gemm_int8(C, N, X, M, K, qw, NULL, NULL, 0) == 0, "the right K: %s", clip_error());
    qweight_free(qw);
    clip_clear_error();
    CHECK(qweight_make(W, N, GEMM_INT8_MAX_K + 1) == NULL && strstr(clip_error(), "66311"),
          "K past the exact int32 range: %s", clip_error());
    clip_clear_error();
    CHECK(qweight_make(W, 0, K) == NULL && strstr(clip_error(), "qweight_make"), "N = 0: %s",
          clip_error());
    qweight_free(NULL);
}

static const int shapes[][3] = {
    {1, 1, 1},     {1, 5, 3},     {3, 1, 7},      {2, 3, 2},      {13, 17, 19},  {14, 32, 4},
    {15, 33, 31},  {28, 64, 64},  {29, 65, 257},  {100, 37, 1},   {1, 200, 300}, {113, 40, 770},
    {300, 1, 129}, {45, 70, 801}, {230, 130, 96}, {19, 40, 3073},
};

int main(void)
{
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        check_case(shapes[s][0], shapes[s][1], shapes[s][2], 0, 0);
        check_case(shapes[s][0], shapes[s][1], shapes[s][2], 3, 2);
        if (s % 2) check_case(shapes[s][0], shapes[s][1], shapes[s][2], 1, 1);
    }
    check_nonfinite();
    check_concurrent();
    check_errors();
    printf("gemm_int8 (%s): worst err/tol %.3g against the exact scheme, %.3g against the "
           "quantisation bound\n",
           gemm_int8_available() ? "AVX512_VNNI" : "plain C only", worst_exact, worst_bound);
    return unit_done();
}

/* int8 GEMM for inference on AVX512_VNNI. vpdpbusd multiplies unsigned by
 * signed bytes, four k at a time into int32 lanes, so activations are stored
 * as u = q + 128 and the weights' column sums take the offset back out:
 * sum_k u*w = sum_k q*w + 128 * sum_k w. With |q|, |w| <= 127 and no
 * saturation in vpdpbusd, the int32 sums are exact for K < 2^31 / (255*127).
 *
 * Weights are packed once into panels of NR = 32 output channels, k in groups
 * of four: panel[k/4][n][k%4]. Each task quantises a block of MC rows into its
 * own buffer in micro-panels of MR = 14 rows (apanel[k/4][r][k%4]), then
 * runs a 14x32 kernel (28 accumulators) over its share of the weight panels,
 * dequantising straight into out. On Zen 4 vpdpbusd does 256 int8
 * multiply-adds per cycle per core, twice vdpbf16ps and four times fp32 FMA. */
#include "kernels/gemm_int8.h"

#include <immintrin.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define MR 14
#define NR 32
#define MC (MR * 8)

struct qweight {
    int N, K, K4, npan;
    int8_t *packed; /* [npan][K4 / 4][NR][4] */
    float *scale;   /* [npan * NR], 0 past N */
    int32_t *corr;  /* [npan * NR]: 128 * sum_k q[n, k] */
};

int gemm_int8_available(void) { return cpu_has(CPU_AVX512_VNNI); }

/* 127 / max|x|, or 0 for an all-zero row; *scale = max|x| / 127 (NaN when
 * the row holds a NaN or an infinity, so that the outputs show it) */
static float row_inverse(float amax, float *scale)
{
    if (!(amax < INFINITY)) {
        *scale = NAN;
        return 0.0f;
    }
    *scale = amax / 127.0f;
    return amax > 0.0f ? 127.0f / amax : 0.0f;
}

/* max |x|, NaN when x holds one */
static float absmax(const float *x, int K)
{
    float amax = 0.0f;
    int nan = 0;
    for (int k = 0; k < K; k++) {
        float a = fabsf(x[k]);
        amax = a > amax ? a : amax; /* fmaxf is a libm call at -O2 */
        nan |= x[k] != x[k];
    }
    return nan ? NAN : amax;
}

static inline int quantise(float x, float inv)
{
    float r = rintf(x * inv);
    return r > 127.0f ? 127 : r < -127.0f ? -127 : (int)r;
}

qweight *qweight_make(const float *W, int N, int K)
{
    if (N <= 0 || N > INT_MAX - NR || K <= 0 || K > GEMM_INT8_MAX_K) {
        clip_set_error("qweight_make: a weight of [%d, %d]; int8 takes 1..%d input columns "
                       "(where its int32 sums stay exact)",
                       N, K, GEMM_INT8_MAX_K);
        return NULL;
    }
    qweight *q = calloc(1, sizeof *q);
    if (!q) goto oom;
    q->N = N, q->K = K, q->K4 = (K + 3) & ~3, q->npan = (N + NR - 1) / NR;
    size_t np = (size_t)q->npan * NR;
    /* clip_alloc_big for the panels: huge pages for the big weights */
    q->packed = clip_alloc_big(np * q->K4);
    q->scale = calloc(np, sizeof(float));
    q->corr = calloc(np, sizeof(int32_t));
    if (!q->packed || !q->scale || !q->corr) goto oom;
    memset(q->packed, 0, np * q->K4);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *w = W + (size_t)n * K;
        float inv = row_inverse(absmax(w, K), &q->scale[n]);
        int8_t *panel = q->packed + (size_t)(n / NR) * q->K4 * NR;
        int32_t sum = 0;
        for (int k = 0; k < K; k++) {
            int v = quantise(w[k], inv);
            panel[(size_t)(k / 4) * NR * 4 + (n % NR) * 4 + k % 4] = (int8_t)v;
            sum += v;
        }
        q->corr[n] = 128 * sum;
    }
    return q;
oom:
    clip_set_error("qweight_make: out of memory quantising a [%d, %d] weight", N, K);
    qweight_free(q);
    return NULL;
}

void qweight_free(qweight *q)
{
    if (!q) return;
    if (q->packed) clip_free_big(q->packed, (size_t)q->npan * NR * q->K4);
    free(q->scale);
    free(q->corr);
    free(q);
}

/* Plain C: rows [r0, r0 + rows) of inp into micro-panels of u = q + 128. */
static void quantise_rows(const float *inp, int K, int K4, int rows, uint8_t *apack, float *sa)
{
    int mp = (rows + MR - 1) / MR;
    memset(apack, 128, (size_t)mp * MR * K4);
    for (int r = 0; r < rows; r++) {
        const float *x = inp + (size_t)r * K;
        float inv = row_inverse(absmax(x, K), &sa[r]);
        uint8_t *p = apack + (size_t)(r / MR) * MR * K4 + (r % MR) * 4;
        for (int k = 0; k < K; k++)
            p[(size_t)(k / 4) * MR * 4 + k % 4] = (uint8_t)(quantise(x[k], inv) + 128);
    }
}

/* out rows of a micro-panel from the exact int32 sums */
static inline float dequant(int32_t acc, int32_t corr, float sa, float sw)
{
    return (float)(acc - corr) * (sa * sw);
}

/* the epilogue's extra terms: bias[n] + resid[m, n], either may be NULL */
typedef struct {
    const float *bias, *resid;
    int ldr;
} addend;

static void kernel_c(int kq, const uint8_t *a, const int8_t *b, float *c, int ldc, int m, int n,
                     const float *sa, const float *sw, const int32_t *corr, addend add)
{
    for (int r = 0; r < m; r++)
        for (int j = 0; j < n; j++) {
            int32_t acc = 0;
            for (int p = 0; p < kq; p++)
                for (int t = 0; t < 4; t++)
                    acc += (int32_t)a[(size_t)p * MR * 4 + r * 4 + t] *
                           b[(size_t)p * NR * 4 + j * 4 + t];
            float v = dequant(acc, corr[j], sa[r], sw[j]);
            if (add.bias) v += add.bias[j];
            if (add.resid) v += add.resid[(size_t)r * add.ldr + j];
            c[(size_t)r * ldc + j] = v;
        }
}

/* The functions marked CLIP_TARGET_AVX512_VNNI (util.h) are compiled for
 * AVX512_VNNI whatever the build's flags, and run only where
 * cpu_has(CPU_AVX512_VNNI) says so (gemm_int8, at the end). */

static inline __mmask16 mask16(int n)
{
    return n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

CLIP_TARGET_AVX512_VNNI static void quantise_rows_avx512(const float *inp, int K, int K4, int rows,
                                                         uint8_t *apack, float *sa)
{
    int mp = (rows + MR - 1) / MR;
    if (rows % MR) memset(apack + (size_t)(mp - 1) * MR * K4, 128, (size_t)MR * K4);
    const __m512i off = _mm512_set1_epi32(128);
    for (int r = 0; r < rows; r++) {
        const float *x = inp + (size_t)r * K;
        __m512 vmax = _mm512_setzero_ps();
        __mmask16 nan = 0;
        for (int k = 0; k < K; k += 16) {
            __m512 v = _mm512_maskz_loadu_ps(mask16(K - k), x + k);
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q); /* max_ps would drop a NaN */
        }
        float amax = nan ? NAN : _mm512_reduce_max_ps(vmax);
        __m512 inv = _mm512_set1_ps(row_inverse(amax, &sa[r]));
        uint8_t *p = apack + (size_t)(r / MR) * MR * K4 + (r % MR) * 4;
        for (int k = 0; k < K4; k += 16) {
            __m512i q = _mm512_cvtps_epi32(
                _mm512_mul_ps(_mm512_maskz_loadu_ps(mask16(K - k), x + k), inv)); /* half even */
            q = _mm512_add_epi32(_mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(127)),
                                                  _mm512_set1_epi32(-127)),
                                 off);
            uint32_t g[4];
            _mm_storeu_si128((__m128i *)g, _mm512_cvtepi32_epi8(q));
            for (int t = 0; t < 4 && k + 4 * t < K4; t++)
                memcpy(p + (size_t)(k / 4 + t) * MR * 4, &g[t], 4);
        }
    }
}

CLIP_TARGET_AVX512_VNNI static void kernel_avx512(int kq, const uint8_t *restrict a,
                                                  const int8_t *restrict b, float *c, int ldc,
                                                  int m, int n, const float *sa, const float *sw,
                                                  const int32_t *corr, addend add)
{
    __m512i acc[MR][2];
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (int p = 0; p < kq; p++) {
        __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 64);
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            int32_t av;
            memcpy(&av, a + r * 4, 4);
            __m512i ar = _mm512_set1_epi32(av);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], ar, b0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], ar, b1);
        }
        a += MR * 4;
        b += NR * 4;
    }
    __m512i c0 = _mm512_loadu_si512(corr), c1 = _mm512_loadu_si512(corr + 16);
    __m512 s0 = _mm512_loadu_ps(sw), s1 = _mm512_loadu_ps(sw + 16);
    __mmask16 m0 = mask16(n), m1 = mask16(n - 16);
    __m512 bias0 = _mm512_setzero_ps(), bias1 = _mm512_setzero_ps();
    if (add.bias)
        bias0 = _mm512_maskz_loadu_ps(m0, add.bias),
        bias1 = _mm512_maskz_loadu_ps(m1, add.bias + 16);
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
        if (r >= m) break;
        __m512 vs = _mm512_set1_ps(sa[r]);
        __m512 x0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][0], c0)),
                                  _mm512_mul_ps(vs, s0));
        __m512 x1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][1], c1)),
                                  _mm512_mul_ps(vs, s1));
        x0 = _mm512_add_ps(x0, bias0), x1 = _mm512_add_ps(x1, bias1); /* same order as kernel_c */
        if (add.resid) {
            const float *rr = add.resid + (size_t)r * add.ldr;
            x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, rr));
            x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, rr + 16));
        }
        float *cr = c + (size_t)r * ldc;
        _mm512_mask_storeu_ps(cr, m0, x0);
        _mm512_mask_storeu_ps(cr + 16, m1, x1);
    }
}

/* each thread's quantised rows, grown as needed and kept (the pool persists) */
static _Thread_local uint8_t *a_buf;
static _Thread_local size_t a_cap;

static uint8_t *rows_buffer(size_t bytes)
{
    if (bytes > a_cap) {
        free(a_buf);
        a_cap = 0;
        if (posix_memalign((void **)&a_buf, 64, bytes)) return a_buf = NULL;
        a_cap = bytes;
    }
    return a_buf;
}

int gemm_int8(float *out, int ldo, const float *inp, int M, int K, const qweight *w,
              const float *bias, const float *resid, int ldr)
{
    if (K != w->K) {
        clip_set_error("gemm_int8: an input of %d columns against a weight quantised with %d", K,
                       w->K);
        return -1;
    }
    if (M <= 0) return 0;
    int vnni = gemm_int8_available();
    int nth = omp_in_parallel() ? 1 : omp_get_max_threads();
    int nrb = (M + MC - 1) / MC;
    /* few row blocks (small batches): split the columns too, so every thread works */
    int nch = nrb >= 4 * nth ? 1 : (4 * nth + nrb - 1) / nrb;
    if (nch > w->npan) nch = w->npan;
    int per = (w->npan + nch - 1) / nch;
    int K4 = w->K4, kq = K4 / 4, no_buffer = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth)
    for (int t = 0; t < nrb * nch; t++) {
        int r0 = t / nch * MC, rows = M - r0 < MC ? M - r0 : MC;
        int p0 = t % nch * per, p1 = p0 + per < w->npan ? p0 + per : w->npan;
        if (p0 >= p1) continue;
        uint8_t *apack = rows_buffer((size_t)MC * K4);
        if (!apack) {
#pragma omp atomic write
            no_buffer = 1;
            continue;
        }
        float sa[MC];
        if (vnni)
            quantise_rows_avx512(inp + (size_t)r0 * K, K, K4, rows, apack, sa);
        else
            quantise_rows(inp + (size_t)r0 * K, K, K4, rows, apack, sa);
        for (int p = p0; p < p1; p++) {
            int n0 = p * NR, n = w->N - n0 < NR ? w->N - n0 : NR;
            const int8_t *b = w->packed + (size_t)p * K4 * NR;
            for (int i = 0; i < rows; i += MR) {
                int m = rows - i < MR ? rows - i : MR;
                float *c = out + (size_t)(r0 + i) * ldo + n0;
                const uint8_t *a = apack + (size_t)i * K4;
                addend add = {bias ? bias + n0 : NULL,
                              resid ? resid + (size_t)(r0 + i) * ldr + n0 : NULL, ldr};
                if (vnni)
                    kernel_avx512(kq, a, b, c, ldo, m, n, sa + i, w->scale + n0, w->corr + n0, add);
                else
                    kernel_c(kq, a, b, c, ldo, m, n, sa + i, w->scale + n0, w->corr + n0, add);
            }
        }
    }
    if (no_buffer) {
        clip_set_error("gemm_int8: out of memory (%zu bytes of quantised rows per thread)",
                       (size_t)MC * K4);
        return -1;
    }
    return 0;
}

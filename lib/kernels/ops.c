#include "kernels/ops.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include <cblas.h>

#include "core/util.h"

/* glibc's libmvec (linked through libm): 16-lane expf/erff/tanhf, a few ulp.
 * Their ABI passes zmm registers: only the AVX-512 variants call them. */
CLIP_TARGET_AVX512 __m512 _ZGVeN16v_expf(__m512 x);
CLIP_TARGET_AVX512 __m512 _ZGVeN16v_erff(__m512 x);
CLIP_TARGET_AVX512 __m512 _ZGVeN16v_tanhf(__m512 x);

/* One row of LayerNorm (the AVX-512 copy is twice as fast per row on Zen 5:
 * the sums are compute-bound in L1). */
CLIP_TWICE_COMPILED void layernorm_row_body(float *o, float *mean, float *rstd, const float *x,
                                            const float *weight, const float *bias, int C,
                                            float eps)
{
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int j = 0; j < C; j++) s += x[j];
    float m = s / C;
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int j = 0; j < C; j++) v += (x[j] - m) * (x[j] - m);
    float r = 1.0f / sqrtf(v / C + eps);
#pragma omp simd
    for (int j = 0; j < C; j++) o[j] = (x[j] - m) * r * weight[j] + bias[j];
    *mean = m;
    *rstd = r;
}

typedef void layernorm_row_fn(float *o, float *mean, float *rstd, const float *x,
                              const float *weight, const float *bias, int C, float eps);

static void layernorm_row(float *o, float *mean, float *rstd, const float *x, const float *weight,
                          const float *bias, int C, float eps)
{
    layernorm_row_body(o, mean, rstd, x, weight, bias, C, eps);
}

CLIP_TARGET_AVX512 static void layernorm_row_avx512(float *o, float *mean, float *rstd,
                                                    const float *x, const float *weight,
                                                    const float *bias, int C, float eps)
{
    layernorm_row_body(o, mean, rstd, x, weight, bias, C, eps);
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int N, int C, float eps)
{
    layernorm_row_fn *row = cpu_has(CPU_AVX512) ? layernorm_row_avx512 : layernorm_row;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++)
        row(out + (size_t)i * C, mean + i, rstd + i, inp + (size_t)i * C, weight, bias, C, eps);
}

/* Elementwise maps, in tasks of CHUNK elements: each has a portable chunk
 * function (scalar libm) and an AVX-512 one (16 lanes through libmvec, the
 * portable one for the tail), picked once per call by cpu_has(). */
#define CHUNK 4096

typedef void map_fn(float *out, const float *inp, size_t n);

static void map_chunks(map_fn *f, float *out, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < n; c += CHUNK) f(out + c, inp + c, c + CHUNK < n ? CHUNK : n - c);
}

static void gelu_erf_chunk(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = 0.5f * inp[i] * (1.0f + erff(inp[i] * 0.70710678118654752f));
}

CLIP_TARGET_AVX512 static void gelu_erf_chunk_avx512(float *out, const float *inp, size_t n)
{
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f),
                 rs2 = _mm512_set1_ps(0.70710678118654752f);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(inp + i);
        __m512 e = _ZGVeN16v_erff(_mm512_mul_ps(x, rs2));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(one, e)));
    }
    gelu_erf_chunk(out + i, inp + i, n - i);
}

void gelu_erf_forward(float *out, const float *inp, size_t n)
{
    map_chunks(cpu_has(CPU_AVX512) ? gelu_erf_chunk_avx512 : gelu_erf_chunk, out, inp, n);
}

static void quickgelu_chunk(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = inp[i] / (1.0f + expf(-1.702f * inp[i]));
}

CLIP_TARGET_AVX512 static void quickgelu_chunk_avx512(float *out, const float *inp, size_t n)
{
    const __m512 k = _mm512_set1_ps(-1.702f), one = _mm512_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(inp + i);
        __m512 e = _ZGVeN16v_expf(_mm512_mul_ps(x, k));
        _mm512_storeu_ps(out + i, _mm512_div_ps(x, _mm512_add_ps(one, e)));
    }
    quickgelu_chunk(out + i, inp + i, n - i);
}

void quickgelu_forward(float *out, const float *inp, size_t n)
{
    map_chunks(cpu_has(CPU_AVX512) ? quickgelu_chunk_avx512 : quickgelu_chunk, out, inp, n);
}

static void tanh_chunk(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = tanhf(inp[i]);
}

CLIP_TARGET_AVX512 static void tanh_chunk_avx512(float *out, const float *inp, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _ZGVeN16v_tanhf(_mm512_loadu_ps(inp + i)));
    tanh_chunk(out + i, inp + i, n - i);
}

/* one thread: the pooler's few rows */
void tanh_forward(float *out, const float *inp, size_t n)
{
    (cpu_has(CPU_AVX512) ? tanh_chunk_avx512 : tanh_chunk)(out, inp, n);
}

void bias_add_forward(float *out, const float *bias, int N, int C)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *o = out + (size_t)i * C;
#pragma omp simd
        for (int j = 0; j < C; j++) o[j] += bias[j];
    }
}

void residual_forward(float *out, const float *a, const float *b, size_t n)
{
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void softmax_row_generic(float *x, int n)
{
    float m = -INFINITY, s = 0.0f;
    for (int j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
    for (int j = 0; j < n; j++) {
        x[j] = expf(x[j] - m);
        s += x[j];
    }
    for (int j = 0; j < n; j++) x[j] /= s;
}

CLIP_TARGET_AVX512 static void softmax_row_avx512(float *x, int n)
{
    /* masked tails: no scalar expf (mixing it with AVX-512 code stalls) */
    __m512 vm = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < n; j += 16) {
        __mmask16 k = n - j >= 16 ? 0xffff : (__mmask16)((1u << (n - j)) - 1);
        vm = _mm512_max_ps(vm, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, x + j));
    }
    vm = _mm512_set1_ps(_mm512_reduce_max_ps(vm));
    /* libmvec takes a slow scalar path for arguments far out of range
     * (-inf included): clamp, and zero what was -inf (masked keys) */
    const __m512 lo = _mm512_set1_ps(-80.0f), ninf = _mm512_set1_ps(-INFINITY);
    __m512 vs = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16) {
        __mmask16 k = n - j >= 16 ? 0xffff : (__mmask16)((1u << (n - j)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(k, x + j);
        __mmask16 live = k & _mm512_cmp_ps_mask(v, ninf, _CMP_NEQ_OQ);
        __m512 e =
            _mm512_maskz_mov_ps(live, _ZGVeN16v_expf(_mm512_max_ps(_mm512_sub_ps(v, vm), lo)));
        vs = _mm512_add_ps(vs, e);
        _mm512_mask_storeu_ps(x + j, k, e);
    }
    __m512 r = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vs));
    for (int j = 0; j < n; j += 16) {
        __mmask16 k = n - j >= 16 ? 0xffff : (__mmask16)((1u << (n - j)) - 1);
        _mm512_mask_storeu_ps(x + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + j), r));
    }
}

typedef void softmax_fn(float *x, int n);

static softmax_fn *softmax_pick(void)
{
    return cpu_has(CPU_AVX512) ? softmax_row_avx512 : softmax_row_generic;
}

void softmax_row(float *x, int n) { softmax_pick()(x, n); }

void attention_forward(float *out, float *att, const float *qkv, const uint8_t *key_valid,
                       int causal, int B, int T, int C, int NH)
{
    int hs = C / NH;
    int C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    softmax_fn *softmax = softmax_pick();
    /* one (sequence, head) per task; OpenBLAS runs single-threaded inside */
#pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        const float *q = qkv + (size_t)b * T * C3 + h * hs;
        const float *k = q + C;
        const float *v = q + 2 * C;
        float *a = att + (size_t)bh * T * T;
        float *o = out + (size_t)b * T * C + h * hs;
        const uint8_t *kv = key_valid ? key_valid + (size_t)b * T : NULL;
        int any_valid = 0;
        if (kv)
            for (int t = 0; t < T; t++) any_valid |= kv[t];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, C3, k, C3, 0.0f, a,
                    T);
        for (int t = 0; t < T; t++) {
            float *row = a + (size_t)t * T;
            int n = causal ? t + 1 : T;
            if (kv && any_valid)
                for (int j = 0; j < n; j++)
                    if (!kv[j]) row[j] = -INFINITY;
            softmax(row, n);
            if (n < T) memset(row + n, 0, (T - n) * sizeof(float));
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, a, T, v, C3, 0.0f, o,
                    C);
    }
}

void l2_normalize(float *out, float *norms, const float *x, int N, int D)
{
    for (int i = 0; i < N; i++) {
        const float *r = x + (size_t)i * D;
        double s = 0.0;
        for (int j = 0; j < D; j++) s += (double)r[j] * r[j];
        float norm = (float)sqrt(s), inv = 1.0f / fmaxf(norm, 1e-12f);
        if (norms) norms[i] = norm;
        for (int j = 0; j < D; j++) out[(size_t)i * D + j] = r[j] * inv;
    }
}

void l2_normalize_backward(float *dx, const float *du, const float *u, const float *norms, int N,
                           int D)
{
    for (int i = 0; i < N; i++) {
        const float *ur = u + (size_t)i * D, *dr = du + (size_t)i * D;
        double dot = 0.0;
        for (int j = 0; j < D; j++) dot += (double)ur[j] * dr[j];
        float inv = 1.0f / fmaxf(norms[i], 1e-12f);
        for (int j = 0; j < D; j++) dx[(size_t)i * D + j] = (dr[j] - ur[j] * (float)dot) * inv;
    }
}

int check_token_ids(const int32_t *ids, int B, int L, int vocab)
{
    for (size_t i = 0; i < (size_t)B * L; i++)
        if (ids[i] < 0 || ids[i] >= vocab) {
            clip_set_error("token id %d (text %zu, position %zu) is outside the vocabulary of %d",
                           ids[i], i / L, i % L, vocab);
            return -1;
        }
    return 0;
}

/* ---- backward passes ---- */

void zero_floats(float *x, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < n; c += CHUNK)
        memset(x + c, 0, (c + CHUNK < n ? CHUNK : n - c) * sizeof(float));
}

#define LN_COLS 64

/* The two loops of LayerNorm's backward, compiled twice (the AVX-512 copies
 * ~1.4x per element on Zen 5). Row i of dinp: */
CLIP_TWICE_COMPILED void layernorm_dinp_body(float *dx, const float *dy, const float *x,
                                             const float *weight, float m, float r, int C)
{
    float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
    for (int j = 0; j < C; j++) {
        float dn = weight[j] * dy[j];
        a += dn;
        b += dn * (x[j] - m) * r;
    }
    a /= C;
    b /= C;
#pragma omp simd
    for (int j = 0; j < C; j++) dx[j] += r * (weight[j] * dy[j] - a - (x[j] - m) * r * b);
}

/* columns [c0, c0 + n) of dweight and dbias, n <= LN_COLS, summed over all rows */
CLIP_TWICE_COMPILED void layernorm_dparams_body(float *dweight, float *dbias, const float *dout,
                                                const float *inp, const float *mean,
                                                const float *rstd, int N, int C, int c0, int n)
{
    float sw[LN_COLS] = {0}, sb[LN_COLS] = {0};
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C + c0, *dy = dout + (size_t)i * C + c0;
        float m = mean[i], r = rstd[i];
#pragma omp simd
        for (int j = 0; j < n; j++) {
            sb[j] += dy[j];
            sw[j] += dy[j] * (x[j] - m) * r;
        }
    }
    for (int j = 0; j < n; j++) {
        if (dweight) dweight[c0 + j] += sw[j];
        if (dbias) dbias[c0 + j] += sb[j];
    }
}

typedef void layernorm_dinp_fn(float *dx, const float *dy, const float *x, const float *weight,
                               float m, float r, int C);
typedef void layernorm_dparams_fn(float *dweight, float *dbias, const float *dout, const float *inp,
                                  const float *mean, const float *rstd, int N, int C, int c0,
                                  int n);

static void layernorm_dinp(float *dx, const float *dy, const float *x, const float *weight, float m,
                           float r, int C)
{
    layernorm_dinp_body(dx, dy, x, weight, m, r, C);
}

CLIP_TARGET_AVX512 static void layernorm_dinp_avx512(float *dx, const float *dy, const float *x,
                                                     const float *weight, float m, float r, int C)
{
    layernorm_dinp_body(dx, dy, x, weight, m, r, C);
}

static void layernorm_dparams(float *dweight, float *dbias, const float *dout, const float *inp,
                              const float *mean, const float *rstd, int N, int C, int c0, int n)
{
    layernorm_dparams_body(dweight, dbias, dout, inp, mean, rstd, N, C, c0, n);
}

CLIP_TARGET_AVX512 static void layernorm_dparams_avx512(float *dweight, float *dbias,
                                                        const float *dout, const float *inp,
                                                        const float *mean, const float *rstd, int N,
                                                        int C, int c0, int n)
{
    layernorm_dparams_body(dweight, dbias, dout, inp, mean, rstd, N, C, c0, n);
}

void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, const float *mean, const float *rstd,
                        int N, int C)
{
    int avx512 = cpu_has(CPU_AVX512);
    if (dinp) {
        layernorm_dinp_fn *row = avx512 ? layernorm_dinp_avx512 : layernorm_dinp;
#pragma omp parallel for schedule(static)
        for (int i = 0; i < N; i++)
            row(dinp + (size_t)i * C, dout + (size_t)i * C, inp + (size_t)i * C, weight, mean[i],
                rstd[i], C);
    }
    if (!dweight && !dbias) return;
    /* one block of columns per task: each sums its columns over all rows */
    layernorm_dparams_fn *cols = avx512 ? layernorm_dparams_avx512 : layernorm_dparams;
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += LN_COLS)
        cols(dweight, dbias, dout, inp, mean, rstd, N, C, c0, C - c0 < LN_COLS ? C - c0 : LN_COLS);
}

/* the activations' backward maps, chunked and dispatched as the forward ones */
typedef void grad_fn(float *dinp, const float *inp, const float *dout, size_t n);

static void grad_chunks(grad_fn *f, float *dinp, const float *inp, const float *dout, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < n; c += CHUNK)
        f(dinp + c, inp + c, dout + c, c + CHUNK < n ? CHUNK : n - c);
}

/* d/dx x*Phi(x) = Phi(x) + x*phi(x) */
#define INV_SQRT_2PI 0.39894228040143268f

static void gelu_erf_grad_chunk(float *dinp, const float *inp, const float *dout, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        dinp[i] += dout[i] * (cdf + x * INV_SQRT_2PI * expf(fmaxf(-0.5f * x * x, -80.0f)));
    }
}

CLIP_TARGET_AVX512 static void gelu_erf_grad_chunk_avx512(float *dinp, const float *inp,
                                                          const float *dout, size_t n)
{
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f),
                 rs2 = _mm512_set1_ps(0.70710678118654752f), mhalf = _mm512_set1_ps(-0.5f),
                 lo = _mm512_set1_ps(-80.0f), k = _mm512_set1_ps(INV_SQRT_2PI);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(inp + i);
        __m512 cdf = _mm512_mul_ps(half, _mm512_add_ps(one, _ZGVeN16v_erff(_mm512_mul_ps(x, rs2))));
        __m512 e = _ZGVeN16v_expf(_mm512_max_ps(_mm512_mul_ps(mhalf, _mm512_mul_ps(x, x)), lo));
        __m512 g = _mm512_fmadd_ps(_mm512_mul_ps(x, k), e, cdf);
        _mm512_storeu_ps(dinp + i,
                         _mm512_fmadd_ps(_mm512_loadu_ps(dout + i), g, _mm512_loadu_ps(dinp + i)));
    }
    gelu_erf_grad_chunk(dinp + i, inp + i, dout + i, n - i);
}

void gelu_erf_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    grad_chunks(cpu_has(CPU_AVX512) ? gelu_erf_grad_chunk_avx512 : gelu_erf_grad_chunk, dinp, inp,
                dout, n);
}

/* s = sigmoid(1.702 x): d/dx x*s = s * (1 + 1.702 x (1 - s)) */
static void quickgelu_grad_chunk(float *dinp, const float *inp, const float *dout, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float s = 1.0f / (1.0f + expf(fminf(fmaxf(-1.702f * x, -80.0f), 80.0f)));
        dinp[i] += dout[i] * s * (1.0f + 1.702f * x * (1.0f - s));
    }
}

CLIP_TARGET_AVX512 static void quickgelu_grad_chunk_avx512(float *dinp, const float *inp,
                                                           const float *dout, size_t n)
{
    const __m512 k = _mm512_set1_ps(-1.702f), kp = _mm512_set1_ps(1.702f),
                 one = _mm512_set1_ps(1.0f), lo = _mm512_set1_ps(-80.0f),
                 hi = _mm512_set1_ps(80.0f);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(inp + i);
        __m512 a = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x, k), lo), hi);
        __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, _ZGVeN16v_expf(a)));
        __m512 g =
            _mm512_mul_ps(s, _mm512_fmadd_ps(_mm512_mul_ps(kp, x), _mm512_sub_ps(one, s), one));
        _mm512_storeu_ps(dinp + i,
                         _mm512_fmadd_ps(_mm512_loadu_ps(dout + i), g, _mm512_loadu_ps(dinp + i)));
    }
    quickgelu_grad_chunk(dinp + i, inp + i, dout + i, n - i);
}

void quickgelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    grad_chunks(cpu_has(CPU_AVX512) ? quickgelu_grad_chunk_avx512 : quickgelu_grad_chunk, dinp, inp,
                dout, n);
}

void tanh_backward(float *dinp, const float *out, const float *dout, size_t n)
{
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) dinp[i] += dout[i] * (1.0f - out[i] * out[i]);
}

void attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int NH)
{
    int hs = C / NH;
    int C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        size_t off = (size_t)b * T * C3 + h * hs;
        const float *q = qkv + off, *k = q + C, *v = q + 2 * C;
        float *dq = dqkv + off, *dk = dq + C, *dv = dq + 2 * C;
        const float *a = att + (size_t)bh * T * T;
        float *da = datt + (size_t)bh * T * T;
        const float *dy = dout + (size_t)b * T * C + h * hs;
        /* dP = dY V^T, dV += P^T dY */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dy, C, v, C3, 0.0f, da,
                    T);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, a, T, dy, C, 1.0f, dv,
                    C3);
        /* softmax: dS = P * (dP - sum(P * dP)) */
        for (int t = 0; t < T; t++) {
            const float *p = a + (size_t)t * T;
            float *d = da + (size_t)t * T;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int j = 0; j < T; j++) s += p[j] * d[j];
#pragma omp simd
            for (int j = 0; j < T; j++) d[j] = p[j] * (d[j] - s);
        }
        /* S = scale Q K^T: dQ += scale dS K, dK += scale dS^T Q */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, scale, da, T, k, C3, 1.0f,
                    dq, C3);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, scale, da, T, q, C3, 1.0f,
                    dk, C3);
    }
}

int trim_padding(int32_t *out, const int32_t *ids, int B, int L)
{
    int used = 1;
    for (int i = 0; i < B; i++)
        for (int t = L - 1; t >= used; t--)
            if (ids[(size_t)i * L + t]) {
                used = t + 1;
                break;
            }
    if (used < L)
        for (int i = 0; i < B; i++)
            memcpy(out + (size_t)i * used, ids + (size_t)i * L, used * sizeof *out);
    return used;
}

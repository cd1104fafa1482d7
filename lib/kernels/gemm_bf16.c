/* bf16 GEMM on AVX512_BF16: panels of op(A) and op(B) are rounded to bf16
 * (round to nearest even, vcvtne2ps2bf16) while being packed, with
 * consecutive k in pairs (the vdpbf16ps layout: each 32-bit lane holds
 * (x[k], x[k+1]); an odd K ends with a zero), then a 14x32 register-blocked
 * kernel accumulates in fp32. Blocking as in BLIS: steps of NC columns x KC
 * depth, each with one packed B block shared by the threads, then items of
 * up to MC rows x some NR-panels taken dynamically, then jr over NR, ir over
 * MR. The packing of step s + 1 runs as the tail of step s (double buffers).
 *
 * Zen 4 runs one 512-bit vdpbf16ps per cycle (64 flop/cycle, twice its fp32
 * FMA rate). The kernel needs only 2 vector loads and 14 broadcasts per 28 of
 * them, so its operands can stream from L2 and KC is kept large: every KC
 * step re-reads and re-writes C, tens of MB for the training shapes. What is
 * left is mostly the packing, bound by the memory bandwidth for reading fp32
 * A and B (most visible in dW = dout^T @ inp, with small M and N). */
#include "kernels/gemm_bf16.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define MR 14
#define NR 32
#define KC 1024      /* even; A micro-panel 28 KB, B micro-panel 64 KB: streamed from L2 */
#define MC (MR * 16) /* A block 448 KB, in L2 */
#define NC 3072      /* multiple of NR; packed B block up to 6 MB, in L3 */
#define PCH 4        /* pairs of rows per pass of pack_rcontig */
#define PTASK 32     /* pairs of rows of src per packing task */
#define ASHARED 3072 /* up to this many rows, op(A) is packed once per step, shared */

int gemm_bf16_available(void) { return cpu_has(CPU_AVX512_BF16); }

static float round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u |= 0x00400000u; /* NaN stays a (quiet) NaN */
    else
        u += 0x7fffu + ((u >> 16) & 1);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

/* op(X) rows x cols, copied rounded into a contiguous rows x cols matrix */
static float *rounded_copy(int trans, int rows, int cols, const float *X, int ld)
{
    float *r = malloc((size_t)rows * cols * sizeof(float) + 1);
    if (!r) return NULL;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            r[(size_t)i * cols + j] =
                round_bf16(trans ? X[(size_t)j * ld + i] : X[(size_t)i * ld + j]);
    return r;
}

static int gemm_fallback(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                         int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    float *a = rounded_copy(transA, M, K, A, lda),
          *b = a ? rounded_copy(transB, K, N, B, ldb) : NULL;
    if (b)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, alpha, a, K, b, N, beta, C,
                    ldc);
    else
        clip_set_error("gemm_bf16: out of memory for the rounded copies of a %d x %d x %d product",
                       M, N, K);
    free(a);
    free(b);
    return b ? 0 : -1;
}

/* The functions marked CLIP_TARGET_AVX512_BF16 (util.h) are compiled for
 * AVX512_BF16 whatever the build's flags, and run only where
 * cpu_has(CPU_AVX512_BF16) says so (gemm_bf16, at the end). */

/* Packing. A panel of R rows (rv of them valid, the rest zero) and kc depth
 * becomes dst[p][r] = (bf16 x(r, 2p), bf16 x(r, 2p+1)), p < ceil(kc/2), with
 * an odd kc padded by a zero. */

static inline __mmask16 mask16(int n)
{
    return n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* 16 x 16 transpose of 32-bit elements: r[i] lane j -> r[j] lane i */
CLIP_TARGET_AVX512_BF16 static inline void transpose16(__m512i r[16])
{
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* u[4g + q], 128-bit lane L: column 4L + q of rows 4g..4g+3 */
    for (int g = 0; g < 4; g++) {
        u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    for (int q = 0; q < 4; q++) {
        __m512i x01 = _mm512_shuffle_i32x4(u[q], u[4 + q], 0x44),
                x23 = _mm512_shuffle_i32x4(u[q], u[4 + q], 0xee);
        __m512i y01 = _mm512_shuffle_i32x4(u[8 + q], u[12 + q], 0x44),
                y23 = _mm512_shuffle_i32x4(u[8 + q], u[12 + q], 0xee);
        r[q] = _mm512_shuffle_i32x4(x01, y01, 0x88);
        r[4 + q] = _mm512_shuffle_i32x4(x01, y01, 0xdd);
        r[8 + q] = _mm512_shuffle_i32x4(x23, y23, 0x88);
        r[12 + q] = _mm512_shuffle_i32x4(x23, y23, 0xdd);
    }
}

/* x(r, k) = src[r * ld + k]: 16 rows x 32 k at a time are converted to 16 x 16
 * pairs and transposed in registers */
CLIP_TARGET_AVX512_BF16 static void pack_kcontig(uint32_t *restrict dst, const float *src,
                                                 size_t ld, int R, int rv, int kc)
{
    for (int r0 = 0; r0 < R; r0 += 16) {
        __mmask16 sm = mask16(R - r0);
        for (int k0 = 0; k0 < kc; k0 += 32) {
            int left = kc - k0, np = (left + 1) / 2;
            __mmask16 m0 = mask16(left), m1 = mask16(left - 16);
            __m512i v[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                if (r0 + i < rv) {
                    const float *s = src + (size_t)(r0 + i) * ld + k0;
                    __m512 lo = _mm512_maskz_loadu_ps(m0, s),
                           hi = _mm512_maskz_loadu_ps(m1, s + 16);
                    v[i] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
                } else {
                    v[i] = _mm512_setzero_si512();
                }
            }
            transpose16(v);
            uint32_t *d = dst + (size_t)(k0 / 2) * R + r0;
            if (np >= 16) {
#pragma GCC unroll 16
                for (int t = 0; t < 16; t++) _mm512_mask_storeu_epi32(d + (size_t)t * R, sm, v[t]);
            } else {
                for (int t = 0; t < np; t++) _mm512_mask_storeu_epi32(d + (size_t)t * R, sm, v[t]);
            }
        }
    }
}

/* x(r, k) = src[k * ld + r], pairs pa <= p < pb: a few pairs of rows of src
 * are read across the whole block (all its panels), so that each cache line
 * is read once while each panel still receives a contiguous run */
CLIP_TARGET_AVX512_BF16 static void pack_rcontig(uint32_t *restrict dst, const float *src,
                                                 size_t ld, int R, int rv, int kc, int pa, int pb)
{
    const __m512i inter =
        _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    int kp = (kc + 1) / 2, npan = (rv + R - 1) / R;
    for (int p0 = pa; p0 < pb; p0 += PCH) {
        int p1 = p0 + PCH < pb ? p0 + PCH : pb;
        for (int ip = 0; ip < npan; ip++)
            for (int p = p0; p < p1; p++) {
                const float *s0 = src + (size_t)(2 * p) * ld + ip * R;
                int has1 = 2 * p + 1 < kc;
                uint32_t *d = dst + ((size_t)ip * kp + p) * R;
                for (int r0 = 0; r0 < R; r0 += 16) {
                    __mmask16 m = mask16(rv - ip * R - r0) & mask16(R - r0);
                    __m512 x0 = _mm512_maskz_loadu_ps(m, s0 + r0);
                    __m512 x1 = has1 ? _mm512_maskz_loadu_ps(m, s0 + ld + r0) : _mm512_setzero_ps();
                    __m512i v =
                        _mm512_permutexvar_epi16(inter, (__m512i)_mm512_cvtne2ps_pbh(x1, x0));
                    _mm512_mask_storeu_epi32(d + r0, mask16(R - r0), v);
                }
            }
    }
}

/* Packing a block of ceil(rv / R) panels (R rows, kc deep, panel after
 * panel) as independent tasks for the threads: groups of 4 panels when k is
 * contiguous in src, ranges of PTASK pairs of rows of src otherwise (long
 * contiguous reads; short ones are bound by memory latency). */
static int pack_ntasks(int kcontig, int R, int rv, int kc)
{
    return kcontig ? ((rv + R - 1) / R + 3) / 4 : ((kc + 1) / 2 + PTASK - 1) / PTASK;
}

CLIP_TARGET_AVX512_BF16 static void pack_task(uint32_t *dst, int kcontig, const float *src,
                                              size_t ld, int R, int rv, int kc, int t)
{
    int kp = (kc + 1) / 2;
    if (kcontig) {
        for (int r = t * 4 * R; r < rv && r < (t + 1) * 4 * R; r += R)
            pack_kcontig(dst + (size_t)(r / R) * kp * R, src + (size_t)r * ld, ld, R,
                         rv - r < R ? rv - r : R, kc);
    } else {
        int pa = t * PTASK, pb = pa + PTASK < kp ? pa + PTASK : kp;
        pack_rcontig(dst, src, ld, R, rv, kc, pa, pb);
    }
}

CLIP_TARGET_AVX512_BF16 static void pack_block(uint32_t *dst, int kcontig, const float *src,
                                               size_t ld, int R, int rv, int kc)
{
    for (int t = 0, n = pack_ntasks(kcontig, R, rv, kc); t < n; t++)
        pack_task(dst, kcontig, src, ld, R, rv, kc, t);
}

/* c[m<=MR, n<=NR] (=|+=) alpha * a[kp][MR] . b[kp][NR]; mode 0: c = alpha*acc
 * + beta*c (beta == 0: c not read), mode 1: c += alpha*acc */
CLIP_TARGET_AVX512_BF16 static void kernel(int kp, const uint32_t *restrict a,
                                           const uint32_t *restrict b, float *c, int ldc, int m,
                                           int n, float alpha, float beta, int mode)
{
    __m512 acc[MR][2];
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
        acc[r][0] = _mm512_setzero_ps();
        acc[r][1] = _mm512_setzero_ps();
        if (r < m) {
            _mm_prefetch((const char *)(c + (size_t)r * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + (size_t)r * ldc + NR - 1), _MM_HINT_T0);
        }
    }
    for (int p = 0; p < kp; p++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16);
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            __m512bh ar = (__m512bh)_mm512_set1_epi32((int)a[r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
        }
        a += MR;
        b += NR;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    __mmask16 m0 = mask16(n), m1 = mask16(n - 16);
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
        if (r >= m) break;
        float *cr = c + (size_t)r * ldc;
        __m512 x0, x1;
        if (mode == 1) {
            x0 = _mm512_fmadd_ps(va, acc[r][0], _mm512_maskz_loadu_ps(m0, cr));
            x1 = _mm512_fmadd_ps(va, acc[r][1], _mm512_maskz_loadu_ps(m1, cr + 16));
            _mm512_mask_storeu_ps(cr, m0, x0);
            _mm512_mask_storeu_ps(cr + 16, m1, x1);
            continue;
        }
        x0 = _mm512_mul_ps(va, acc[r][0]), x1 = _mm512_mul_ps(va, acc[r][1]);
        if (beta != 0.0f) {
            x0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, cr), x0);
            x1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, cr + 16), x1);
        }
        _mm512_mask_storeu_ps(cr, m0, x0);
        _mm512_mask_storeu_ps(cr + 16, m1, x1);
    }
}

/* Per-thread packing buffers, allocated on first use and kept: the OpenMP
 * pool's threads persist, so this is once per thread per process. The shared
 * ones (B, and A when packed whole) belong to the calling thread, two of
 * each: step s computes from one while the next step is packed into the
 * other. */
static _Thread_local uint32_t *a_buf, *b_buf[2], *as_buf[2];

static uint32_t *get_buf(uint32_t **buf, size_t words)
{
    if (!*buf) *buf = clip_alloc_big(words * sizeof(uint32_t));
    return *buf;
}

#define CDIV(a, b) (((a) + (b)-1) / (b))

typedef struct {
    int transA, transB, M, N, K, lda, ldb, ldc;
    const float *A, *B;
    float *C, alpha, beta;
    int a_shared;    /* op(A) packed whole per step (else per item) */
    int mb, mc_step; /* row blocks of the items */
    int want;        /* items per step to aim for */
} gemm_job;

/* one (jc, pc) step: NC columns x KC depth */
typedef struct {
    int j0, k0, kc, kp, nc, npan;
    int nb, nchunk; /* the items split the columns in nb chunks of nchunk panels */
    int ntb, nta;   /* packing tasks of B and of A (a_shared) */
} gemm_step;

static gemm_step step_at(const gemm_job *g, int s)
{
    gemm_step t;
    int ks = CDIV(g->K, KC);
    t.j0 = s / ks * NC, t.k0 = s % ks * KC;
    t.kc = g->K - t.k0 < KC ? g->K - t.k0 : KC, t.kp = (t.kc + 1) / 2;
    t.nc = g->N - t.j0 < NC ? g->N - t.j0 : NC, t.npan = CDIV(t.nc, NR);
    t.nb = g->mb < g->want ? CDIV(g->want, g->mb) : 1;
    if (t.nb > t.npan) t.nb = t.npan;
    t.nchunk = CDIV(t.npan, t.nb);
    t.nb = CDIV(t.npan, t.nchunk);
    t.ntb = pack_ntasks(g->transB, NR, t.nc, t.kc);
    t.nta = g->a_shared ? pack_ntasks(!g->transA, MR, g->M, t.kc) : 0;
    return t;
}

/* packing task t of step st into bp (and asp) */
CLIP_TARGET_AVX512_BF16 static void step_pack(const gemm_job *g, const gemm_step *st, int t,
                                              uint32_t *bp, uint32_t *asp)
{
    if (t < st->ntb) {
        size_t off =
            g->transB ? (size_t)st->j0 * g->ldb + st->k0 : (size_t)st->k0 * g->ldb + st->j0;
        pack_task(bp, g->transB, g->B + off, g->ldb, NR, st->nc, st->kc, t);
    } else {
        size_t off = g->transA ? (size_t)st->k0 * g->lda : (size_t)st->k0;
        pack_task(asp, !g->transA, g->A + off, g->lda, MR, g->M, st->kc, t - st->ntb);
    }
}

/* item it of step st: rows [i0, i0 + mc) x its chunk of panels */
CLIP_TARGET_AVX512_BF16 static void step_item(const gemm_job *g, const gemm_step *st, int it,
                                              const uint32_t *bp, const uint32_t *asp, uint32_t *ap,
                                              int *packed_row)
{
    int M = g->M, kp = st->kp;
    int i0 = (it / st->nb) * g->mc_step, mc = M - i0 < g->mc_step ? M - i0 : g->mc_step;
    int q0 = (it % st->nb) * st->nchunk,
        q1 = q0 + st->nchunk < st->npan ? q0 + st->nchunk : st->npan;
    const uint32_t *ablk = g->a_shared ? asp + (size_t)(i0 / MR) * kp * MR : ap;
    if (!g->a_shared && *packed_row != i0) {
        size_t off = g->transA ? (size_t)st->k0 * g->lda + i0 : (size_t)i0 * g->lda + st->k0;
        pack_block(ap, !g->transA, g->A + off, g->lda, MR, mc, st->kc);
        *packed_row = i0;
    }
    for (int q = q0; q < q1; q++) {
        int j = st->j0 + q * NR, n = g->N - j < NR ? g->N - j : NR;
        const uint32_t *bpan = bp + (size_t)q * kp * NR;
        for (int ip = 0; ip * MR < mc; ip++) {
            int i = i0 + ip * MR;
            kernel(kp, ablk + (size_t)ip * kp * MR, bpan, g->C + (size_t)i * g->ldc + j, g->ldc,
                   M - i < MR ? M - i : MR, n, g->alpha, g->beta, st->k0 > 0);
        }
    }
}

CLIP_TARGET_AVX512_BF16 static void gemm_avx512bf16(int transA, int transB, int M, int N, int K,
                                                    float alpha, const float *A, int lda,
                                                    const float *B, int ldb, float beta, float *C,
                                                    int ldc)
{
    gemm_job g = {transA, transB, M, N, K, lda, ldb, ldc, A, B, C, alpha, beta, 0, 0, 0, 0};
    int nth = omp_in_parallel() ? 1 : omp_get_max_threads();
    if ((double)M * N * K < 200000.0) nth = 1;
    /* Items of each step: up to MC rows x some NR-panels, taken dynamically
     * so that a thread that the OS parks (or that sits on a busier core) does
     * not hold the other back. At least ~4 items per thread: rows first (each
     * item then packs its own A block), columns when M is small. */
    int mpan = CDIV(M, MR);
    g.want = nth > 1 ? 4 * nth : 1;
    g.mb = CDIV(M, MC);
    if (g.mb < g.want) g.mb = mpan < g.want ? mpan : g.want;
    g.mc_step = CDIV(mpan, g.mb) * MR;
    g.mb = CDIV(M, g.mc_step);
    /* op(A) packed whole by all threads (as B is) rather than per item when
     * items would re-pack the same rows (columns split) or read short runs
     * of the rows of A (transA: each row of A is one k) */
    g.a_shared = mpan * MR <= ASHARED && (transA || g.mb < g.want);
    uint32_t *bp[2], *asp[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        bp[i] = get_buf(&b_buf[i], (size_t)(KC / 2) * NC);
        if (g.a_shared) asp[i] = get_buf(&as_buf[i], (size_t)(KC / 2) * ASHARED);
    }
    int nsteps = CDIV(N, NC) * CDIV(K, KC);

    /* Step s computes its items from buffers s % 2 while the packing tasks of
     * step s + 1 fill the others; the tasks come last in the dynamic loop and
     * are short, so they also even out the threads' ends of the step. */
#pragma omp parallel num_threads(nth)
    {
        uint32_t *ap = g.a_shared ? NULL : get_buf(&a_buf, (size_t)(KC / 2) * MC);
        gemm_step cur = step_at(&g, 0);
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < cur.ntb + cur.nta; t++) step_pack(&g, &cur, t, bp[0], asp[0]);
        for (int s = 0; s < nsteps; s++) {
            gemm_step nxt = s + 1 < nsteps ? step_at(&g, s + 1) : (gemm_step){0};
            int nitems = g.mb * cur.nb, npack = nxt.ntb + nxt.nta, packed_row = -1;
            uint32_t *b_cur = bp[s & 1], *a_cur = asp[s & 1];
            uint32_t *b_nxt = bp[(s + 1) & 1], *a_nxt = asp[(s + 1) & 1];
#pragma omp for schedule(dynamic, 1)
            for (int t = 0; t < nitems + npack; t++) {
                if (t < nitems)
                    step_item(&g, &cur, t, b_cur, a_cur, ap, &packed_row);
                else
                    step_pack(&g, &nxt, t - nitems, b_nxt, a_nxt);
            }
            cur = nxt;
        }
    }
}

int gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0 || alpha == 0.0f) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return 0;
    }
    if (!gemm_bf16_available())
        return gemm_fallback(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    gemm_avx512bf16(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return 0;
}

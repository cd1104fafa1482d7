/* int8 inference matmul (AVX512_VNNI vpdpbusd): the --int8 Linear layers. */
#ifndef CLIP_GEMM_INT8_H
#define CLIP_GEMM_INT8_H

/* A Linear weight W[N, K] quantised once: per output channel n, symmetric,
 * scale_w[n] = max_k |W[n, k]| / 127, q = round-half-even(W * (127 / max_k
 * |W[n, k]|)) in fp32, in [-127, 127]; kept packed for the kernel. */
typedef struct qweight qweight;

/* the most input columns K: 2^31 / (255 * 127), where the int32 sums stay exact */
#define GEMM_INT8_MAX_K 66311

/* W [N, K] quantised and packed into a new qweight (W is not kept); NULL
 * with an error for N or K out of range (K > GEMM_INT8_MAX_K) or out of
 * memory. Free with qweight_free (NULL is fine). */
qweight *qweight_make(const float *W, int N, int K);
void qweight_free(qweight *q);

/* out[M, N] (row stride ldo) = deq(x) @ deq(W)^T + bias[n] + resid[M, N] (row
 * stride ldr; may be out itself), bias and resid optional (NULL), with x =
 * inp[M, K] quantised per row the same way (dynamic: the scales come from
 * each call's rows; a row holding NaN or an infinity gives NaN outputs).
 * The integer products are exact (int32), so the product term is
 * scale_x[m] * scale_w[n] * sum_k qx[m, k] * qw[n, k] up to fp32 rounding of
 * that one product; bias and resid are added in the same pass. Parallel over
 * the OpenMP pool. 0, or -1 with an error: K is not the weight's, or no
 * memory for a thread's quantised rows (112 x K bytes, kept per thread). */
int gemm_int8(float *out, int ldo, const float *inp, int M, int K, const qweight *w,
              const float *bias, const float *resid, int ldr);

/* cpu_has(CPU_AVX512_VNNI) (util.h: CLIP_CPU=avx512 or generic turns it
 * off); otherwise gemm_int8 runs the same integer arithmetic in plain C (same
 * results, much slower). */
int gemm_int8_available(void);

#endif

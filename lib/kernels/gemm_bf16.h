/* bf16 GEMM with fp32 accumulation (AVX512_BF16 vdpbf16ps): the --amp matmul. */
#ifndef CLIP_GEMM_BF16_H
#define CLIP_GEMM_BF16_H

/* C[M,N] = alpha * op(A) @ op(B) + beta * C, row-major like cblas_sgemm, with
 * A and B rounded to bf16 (round to nearest even) and fp32 accumulation: the
 * numerics of torch.autocast(bfloat16) matmuls. transA/transB: 0 or 1.
 * op(A) is M x K (A is K x M with lda >= M when transA), op(B) is K x N (B is
 * N x K with ldb >= K when transB). beta == 0 does not read C. Parallel over
 * the OpenMP pool (one thread when called inside a parallel region); callable
 * from several threads at once. The AVX512_BF16 instructions flush fp32
 * denormals (|x| < 1.2e-38) in the inputs and in partial sums to zero.
 * 0, or -1 with an error (out of memory for the fallback's copies). */
int gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

/* cpu_has(CPU_AVX512_BF16) (util.h: CLIP_CPU=avx512 or generic turns it
 * off); otherwise gemm_bf16 rounds the inputs to bf16 and calls cblas_sgemm
 * (same rounding of the inputs, slower). */
int gemm_bf16_available(void);

#endif

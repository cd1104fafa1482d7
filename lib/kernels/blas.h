/* OpenBLAS setup and the one GEMM shape every layer uses. */
#ifndef CLIP_BLAS_H
#define CLIP_BLAS_H

#include <cblas.h>

/* Call first thing in main(). OpenBLAS picks its kernel when the library is
 * loaded, and OPENBLAS_CORETYPE=Haswell (set by some environments) halves
 * sgemm on AVX-512 machines: if it is set and CLIP_KEEP_CORETYPE is not, drop
 * it and re-exec ourselves so that OpenBLAS chooses its own best kernel. */
void blas_setup(int argc, char **argv);

/* "SkylakeX, 2 threads" for logs and benchmarks: OpenBLAS's core and its
 * thread count (openblas_get_num_threads, what it really uses). */
const char *blas_describe(void);

/* The -t/--threads options: n threads for both OpenMP (our kernels) and
 * OpenBLAS, which keeps a count of its own read once at load time
 * (OMP_NUM_THREADS or the cores) that omp_set_num_threads does not change. */
void blas_set_threads(int n);

/* 1: the matmul_* functions below round their operands to bf16 and
 * accumulate in fp32 (gemm_bf16.h; torch.autocast's numerics), 0: fp32. */
void blas_set_bf16(int on);

/* 1: matmul_forward and matmul_residual_forward run in int8 (gemm_int8.h:
 * weights quantised per output channel on first use and kept, inputs per row
 * at each call); inference only, the weights must not change while it is on.
 * 0: back to fp32/bf16, the quantised weights freed. */
void blas_set_int8(int on);

/* out[M, N] = inp[M, K] @ weight[N, K]^T (+ bias[N]): a PyTorch Linear with
 * its weight in the checkpoint layout. bias may be NULL. ldo: row stride of
 * out (N when contiguous), so that Q, K and V can land side by side. */
void matmul_forward(float *out, int ldo, const float *inp, const float *weight, const float *bias,
                    int M, int K, int N);
/* out[M, N] = resid[M, N] + inp @ weight^T + bias: a Linear feeding a
 * residual connection, in one pass over out. */
void matmul_residual_forward(float *out, const float *inp, const float *weight, const float *bias,
                             const float *resid, int M, int K, int N);

/* Backward of matmul_forward (out[M, N] = inp[M, K] @ weight[N, K]^T + bias),
 * accumulating: dinp[M, K] += dout @ weight; dweight[N, K] += dout^T @ inp;
 * dbias[N] += column sums of dout. Any of dinp/dweight/dbias may be NULL.
 * ldd: row stride of dout (N when contiguous). */
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, int ldd,
                     const float *inp, const float *weight, int M, int K, int N);

#endif

/* OpenBLAS setup, the compute context, and the one GEMM shape every layer uses. */
#ifndef CLIP_BLAS_H
#define CLIP_BLAS_H

#include <cblas.h>

#include "core/util.h"
#include "kernels/gemm_int8.h"

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

/* How the matrix products of the functions below compute:
 *   PRECISION_FP32  OpenBLAS sgemm;
 *   PRECISION_BF16  operands rounded to bf16, fp32 accumulation (gemm_bf16.h;
 *                   torch.autocast's numerics), forward and backward;
 *   PRECISION_INT8  matmul_forward and matmul_residual_forward in int8 with
 *                   the quantised weight they are given (gemm_int8.h),
 *                   inference only; matmul_backward stays fp32. */
typedef enum { PRECISION_FP32, PRECISION_BF16, PRECISION_INT8 } clip_precision;

/* "fp32", "bf16", "int8" for messages. */
const char *precision_name(clip_precision p);

/* Seconds spent in the big GEMMs (matmul_* and the towers' projection
 * heads) and in attention, for benchmarks; the rest of a pass is LayerNorm,
 * activations and copies. */
typedef struct {
    double gemm, attention;
} op_profile;

/* What a caller's layers compute with, passed down to every matrix product:
 * a clip_model holds the one its encoders use (clip_model.h), a trainer
 * another for its steps; nothing of it is process-wide. prof: counters to
 * add the time of each product to (owned by the caller; NULL: not timed). */
typedef struct {
    clip_precision precision;
    op_profile *prof;
} compute_ctx;

/* Timing into cx->prof: t0 = prof_start(cx) before a product, prof_stop(cx,
 * PROF_GEMM or PROF_ATTENTION, t0) after it; no clock is read when cx->prof
 * is NULL. */
typedef enum { PROF_GEMM, PROF_ATTENTION } prof_counter;

static inline double prof_start(const compute_ctx *cx) { return cx->prof ? now_seconds() : 0.0; }

static inline void prof_stop(const compute_ctx *cx, prof_counter what, double t0)
{
    if (!cx->prof) return;
    double dt = now_seconds() - t0;
    if (what == PROF_GEMM)
        cx->prof->gemm += dt;
    else
        cx->prof->attention += dt;
}

/* out[M, N] = inp[M, K] @ weight[N, K]^T (+ bias[N]): a PyTorch Linear with
 * its weight in the checkpoint layout. bias may be NULL. ldo: row stride of
 * out (N when contiguous), so that Q, K and V can land side by side. qw: the
 * same weight quantised (qweight_make(weight, N, K)), used, and required,
 * when cx->precision is PRECISION_INT8; ignored (may be NULL) otherwise.
 * 0, or -1 with an error (int8 without qw or with another K, out of memory). */
int matmul_forward(const compute_ctx *cx, float *out, int ldo, const float *inp,
                   const float *weight, const qweight *qw, const float *bias, int M, int K, int N);
/* out[M, N] = resid[M, N] + inp @ weight^T + bias: a Linear feeding a
 * residual connection, in one pass over out. qw and the result as above. */
int matmul_residual_forward(const compute_ctx *cx, float *out, const float *inp,
                            const float *weight, const qweight *qw, const float *bias,
                            const float *resid, int M, int K, int N);

/* Backward of matmul_forward (out[M, N] = inp[M, K] @ weight[N, K]^T + bias),
 * accumulating: dinp[M, K] += dout @ weight; dweight[N, K] += dout^T @ inp;
 * dbias[N] += column sums of dout. Any of dinp/dweight/dbias may be NULL.
 * ldd: row stride of dout (N when contiguous). In bf16 under
 * PRECISION_BF16, fp32 otherwise. 0, or -1 with an error (out of memory). */
int matmul_backward(const compute_ctx *cx, float *dinp, float *dweight, float *dbias,
                    const float *dout, int ldd, const float *inp, const float *weight, int M, int K,
                    int N);

#endif

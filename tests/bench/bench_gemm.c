/* cblas_sgemm vs gemm_bf16 (and gemm_int8 for the forward) on the training
 * shapes: bench_gemm [REPEATS] [M...]
 * For each token count M (default 6304 = ViT-B/16 batch 32, 1664 = BERT
 * 32 x 52) and each Linear of a base-size block (in -> out: qkv 768->2304,
 * proj 768->768, fc1 768->3072, fc2 3072->768), the three GEMMs of training:
 *   fwd   out[M,out]  = inp[M,in] @ W[out,in]^T      (transB)
 *   dinp  dinp[M,in]  = dout[M,out] @ W[out,in]      (no transpose)
 *   dW    dW[out,in]  = dout[M,out]^T @ inp[M,in]    (transA, K = M)
 * GFLOP/s = best of REPEATS (default 3) after a warm-up call, the
 * implementations alternating. int8 (inference only: clip-embed --int8) counts
 * its per-call quantisation of the input; the weight is quantised beforehand,
 * once, as the model does at load. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/blas.h"
#include "kernels/gemm_bf16.h"
#include "kernels/gemm_int8.h"
#include "core/util.h"

static float *A, *B, *C;
static qweight *QB; /* B quantised, for the forward rows */

static void run(int impl, int ta, int tb, int M, int N, int K)
{
    int lda = ta ? M : K, ldb = tb ? K : N;
    if (impl == 0)
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
    else if (impl == 1)
        gemm_bf16(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
    else
        gemm_int8(C, N, A, M, K, QB, NULL, NULL, 0);
}

/* best GFLOP/s of each implementation; the two alternate so that both see the
 * same background load */
static void measure(int ta, int tb, int M, int N, int K, int reps, int nimpl, double gf[3])
{
    double best[3] = {1e30, 1e30, 1e30};
    for (int impl = 0; impl < nimpl; impl++) run(impl, ta, tb, M, N, K);
    for (int r = 0; r < reps; r++)
        for (int impl = 0; impl < nimpl; impl++) {
            double t0 = now_seconds();
            run(impl, ta, tb, M, N, K);
            double s = now_seconds() - t0;
            if (s < best[impl]) best[impl] = s;
        }
    for (int impl = 0; impl < nimpl; impl++) gf[impl] = 2.0 * M * N * K / best[impl] / 1e9;
}

int main(int argc, char **argv)
{
    blas_setup(argc, argv);
    clip_set_progname(argv[0]);
    int reps = argc > 1 ? atoi(argv[1]) : 3;
    int tokens[8] = {6304, 1664}, nt = 2;
    if (argc > 2) {
        nt = 0;
        for (int i = 2; i < argc && nt < 8; i++) tokens[nt++] = atoi(argv[i]);
    }
    int maxm = 0;
    for (int i = 0; i < nt; i++)
        if (tokens[i] > maxm) maxm = tokens[i];
    size_t big = (size_t)maxm * 3072;
    A = clip_alloc_big(big * 4), B = clip_alloc_big(big * 4), C = clip_alloc_big(big * 4);
    fill_normal(A, big, 1.0f, 1), fill_normal(B, big, 0.02f, 2), fill_normal(C, big, 1.0f, 3);

    printf("blas: %s; gemm_bf16: %s; gemm_int8: %s (CPU features: %s)\n", blas_describe(),
           gemm_bf16_available() ? "AVX512_BF16" : "fallback (no AVX512_BF16)",
           gemm_int8_available() ? "AVX512_VNNI" : "plain C (no AVX512_VNNI)", cpu_describe());
    /* other processes on the cores show up as lower figures for both */
    FILE *f = fopen("/proc/loadavg", "r");
    double load;
    if (f && fscanf(f, "%lf", &load) == 1) printf("load average before the run: %.2f\n", load);
    if (f) fclose(f);
    printf("%-5s %-5s %5s %5s %5s   %8s %8s  %5s   %8s  %5s\n", "layer", "gemm", "M", "N", "K",
           "sgemm", "bf16", "ratio", "int8", "ratio");
    static const struct {
        const char *name;
        int in, out;
    } layers[] = {{"qkv", 768, 2304}, {"proj", 768, 768}, {"fc1", 768, 3072}, {"fc2", 3072, 768}};
    double logsum = 0, logsum8 = 0;
    int n = 0, n8 = 0;
    for (int t = 0; t < nt; t++)
        for (int l = 0; l < 4; l++)
            for (int g = 0; g < 3; g++) {
                int T = tokens[t], in = layers[l].in, out = layers[l].out;
                static const char *gname[] = {"fwd", "dinp", "dW"};
                int ta = g == 2, tb = g == 0;
                int M = g == 2 ? out : T, N = g == 0 ? out : in, K = g == 0 ? in : g == 1 ? out : T;
                double gf[3];
                if (g == 0) QB = qweight_make(B, N, K);
                measure(ta, tb, M, N, K, reps, g == 0 ? 3 : 2, gf);
                double s = gf[0], b = gf[1];
                printf("%-5s %-5s %5d %5d %5d   %8.1f %8.1f  %5.2f", layers[l].name, gname[g], M, N,
                       K, s, b, b / s);
                if (g == 0) {
                    printf("   %8.1f  %5.2f", gf[2], gf[2] / s);
                    logsum8 += log(gf[2] / s), n8++;
                    qweight_free(QB);
                }
                printf("\n");
                fflush(stdout);
                logsum += log(b / s), n++;
            }
    printf("geometric mean ratio bf16/sgemm: %.2f, int8/sgemm (fwd): %.2f (GFLOP/s, best of %d)\n",
           exp(logsum / n), exp(logsum8 / n8), reps);
    return 0;
}

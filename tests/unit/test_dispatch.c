/* The run-time dispatch of the kernels (util.h: cpu_has, CLIP_CPU), in one
 * run on whatever CPU this is:
 *
 * 1. cpu_has() against the kernel's own view of the CPU (/proc/cpuinfo
 *    flags, which also drop what the OS does not enable), and the caps:
 *    cpu_set_cap("generic") turns every feature off, "avx512" leaves AVX-512
 *    but neither BF16 nor VNNI; CLIP_CPU does the same in a fresh process
 *    (this test re-runs itself), an unknown value warns and means generic.
 * 2. Every op of lib/kernels/ops.c with an AVX-512 variant, under the dispatched cap
 *    (CLIP_CPU's) and under "generic": the two agree to a few ulp (libmvec is
 *    within 4 ulp of libm; the sums of LayerNorm change order), and their
 *    bits differ exactly when cpu_has(CPU_AVX512): libmvec and libm round
 *    differently somewhere among ~10^4 values, and so do 16-lane and 4-lane
 *    sums. The elementwise maps' generic path must also be the plain libm
 *    formula written here, bit for bit. So a variant that runs under the
 *    generic cap (or CLIP_CPU=generic), or one that never runs where it
 *    should, fails here; make check-isa runs the tests on a CPU without
 *    AVX-512 too. gemm_bf16 has its own dispatch check (test_gemm_bf16);
 *    gemm_int8, the image resize and the bias gradients give the same bits
 *    on both paths by design, so only check-isa can tell them apart. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/ops.h"
#include "unit.h"
#include "core/util.h"

/* ---- 1. features and caps ---- */

/* flag as a whole word of the "flags" line of /proc/cpuinfo; -1 when unreadable */
static int cpuinfo_has(const char *flag)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return -1;
    char line[8192];
    int found = -1;
    while (found < 0 && fgets(line, sizeof line, f))
        if (!strncmp(line, "flags", 5)) {
            found = 0;
            for (char *t = strtok(strchr(line, ':') + 1, " \n"); t; t = strtok(NULL, " \n"))
                if (!strcmp(t, flag)) found = 1;
        }
    fclose(f);
    return found;
}

static void check_features(void)
{
    cpu_set_cap("native");
    int avx512 = cpu_has(CPU_AVX512), bf16 = cpu_has(CPU_AVX512_BF16),
        vnni = cpu_has(CPU_AVX512_VNNI);
    static const char *base[] = {"avx512f",  "avx512bw", "avx512cd", "avx512dq",
                                 "avx512vl", "avx2",     "fma",      "pni",
                                 "ssse3",    "sse4_1",   "sse4_2",   "popcnt"};
    int want = cpuinfo_has("avx512f");
    if (want >= 0) {
        for (size_t i = 1; i < sizeof base / sizeof base[0]; i++) want &= cpuinfo_has(base[i]) == 1;
        CHECK(avx512 == want, "CPU_AVX512 %d, /proc/cpuinfo says %d", avx512, want);
        CHECK(bf16 == (want && cpuinfo_has("avx512_bf16") == 1), "CPU_AVX512_BF16 %d", bf16);
        CHECK(vnni == (want && cpuinfo_has("avx512_vnni") == 1), "CPU_AVX512_VNNI %d", vnni);
    }
    CHECK((!bf16 && !vnni) || avx512, "BF16/VNNI without the AVX-512 base");

    cpu_set_cap("avx512");
    CHECK(cpu_has(CPU_AVX512) == avx512 && !cpu_has(CPU_AVX512_BF16) && !cpu_has(CPU_AVX512_VNNI),
          "cap avx512: %s", cpu_describe());
    CHECK(!strcmp(cpu_describe(), avx512 ? "avx512" : "generic"), "cap avx512: %s", cpu_describe());
    cpu_set_cap("generic");
    CHECK(!cpu_has(CPU_AVX512) && !cpu_has(CPU_AVX512_BF16) && !cpu_has(CPU_AVX512_VNNI) &&
              !strcmp(cpu_describe(), "generic"),
          "cap generic: %s", cpu_describe());
    CHECK(cpu_set_cap("avx2") == -1 && strstr(clip_error(), "avx2"), "an unknown cap: %s",
          clip_error());
    CHECK(!cpu_has(CPU_AVX512), "an unknown cap leaves the cap as it was");
    cpu_set_cap(NULL);
    const char *env = getenv("CLIP_CPU");
    if (env && !strcmp(env, "generic"))
        CHECK(!strcmp(cpu_describe(), "generic"), "CLIP_CPU=generic: %s", cpu_describe());
}

static char self_path[4096];

/* what this program prints (stdout and stderr) with CLIP_CPU=value (NULL:
 * unset) and --describe */
static void child_describe(const char *value, char *out, size_t size)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "%s%s%s '%s' --describe 2>&1",
             value ? "CLIP_CPU='" : "env -u CLIP_CPU", value ? value : "", value ? "'" : "",
             self_path);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, size - 1, p) : 0;
    out[n] = 0;
    if (p) pclose(p);
}

static void check_environment(void)
{
    ssize_t len = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
    if (len <= 0 || strchr(self_path, '\'')) {
        printf("skipped the CLIP_CPU checks: no usable /proc/self/exe\n");
        return;
    }
    self_path[len] = 0;
    cpu_set_cap("native");
    char native[64], got[512];
    snprintf(native, sizeof native, "%s\n", cpu_describe());
    cpu_set_cap("avx512");
    char avx512[64];
    snprintf(avx512, sizeof avx512, "%s\n", cpu_describe());
    cpu_set_cap(NULL);

    child_describe(NULL, got, sizeof got);
    CHECK(!strcmp(got, native), "CLIP_CPU unset: '%s', expected '%s'", got, native);
    child_describe("", got, sizeof got);
    CHECK(!strcmp(got, native), "CLIP_CPU empty: '%s'", got);
    child_describe("native", got, sizeof got);
    CHECK(!strcmp(got, native), "CLIP_CPU=native: '%s'", got);
    child_describe("avx512", got, sizeof got);
    CHECK(!strcmp(got, avx512), "CLIP_CPU=avx512: '%s', expected '%s'", got, avx512);
    child_describe("generic", got, sizeof got);
    CHECK(!strcmp(got, "generic\n"), "CLIP_CPU=generic: '%s'", got);
    child_describe("AVX512", got, sizeof got);
    size_t n = strlen(got);
    CHECK(strstr(got, "CLIP_CPU=AVX512: not generic, avx512 or native") && n > 9 &&
              !strcmp(got + n - 9, "\ngeneric\n"),
          "CLIP_CPU=AVX512 (unknown): a warning, then generic: '%s'", got);
}

/* ---- 2. the ops ---- */

static void fill(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * (float)(splitmix64(&seed) >> 40) / (float)(1 << 24);
}

static double worst_ratio;
static const char *worst_op = "-";

/* got (dispatched) against gen (the generic cap's): within tol * (|gen| +
 * floor), and bit-identical exactly when the AVX-512 variants are off; ref
 * (NULL for LayerNorm, whose sums the compiler vectorises) is the plain libm
 * formula, which the generic path must give bit for bit */
static void compare(const char *what, const float *got, const float *gen, const float *ref,
                    size_t n, double tol, double floor)
{
    int avx512 = cpu_has(CPU_AVX512);
    size_t bad = 0, differ = 0, off_ref = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - gen[i]) / (tol * (fabs(gen[i]) + floor));
        bad += !(e <= 1.0);
        if (e > worst) worst = e;
        differ += memcmp(&got[i], &gen[i], sizeof(float)) != 0;
        off_ref += ref && memcmp(&gen[i], &ref[i], sizeof(float)) != 0;
    }
    if (worst > worst_ratio) worst_ratio = worst, worst_op = what;
    CHECK(bad == 0, "%s: %zu of %zu values off the generic ones, worst err/tol %.3g", what, bad, n,
          worst);
    CHECK(off_ref == 0,
          "%s: the generic path differs from plain libm in %zu of %zu values (an "
          "AVX-512 variant ran under the generic cap?)",
          what, off_ref, n);
    if (avx512)
        CHECK(differ > 0,
              "%s: the AVX-512 variant is allowed but its values are the generic "
              "cap's (it did not run, or it runs under the generic cap too)",
              what);
    else
        CHECK(differ == 0,
              "%s: %zu of %zu values differ from the generic cap's with the "
              "AVX-512 variants off (%s)",
              what, differ, n, cpu_describe());
}

#define N_ROWS 40
#define N_COLS 768
#define N_ELEMS (3 * 4096 + 21) /* several chunks and a tail */

typedef struct {
    const char *name;
    double tol, floor; /* |got - gen| <= tol * (|gen| + floor) */
    size_t len;        /* outputs */
    void (*run)(float *out, const float *in, const float *aux);
    void (*ref)(float *out, const float *in, const float *aux); /* plain libm, or NULL */
} op_case;

static void run_gelu(float *o, const float *x, const float *d) { gelu_erf_forward(o, x, N_ELEMS); }
static void ref_gelu(float *o, const float *x, const float *d)
{
    for (size_t i = 0; i < N_ELEMS; i++)
        o[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}
static void run_quickgelu(float *o, const float *x, const float *d)
{
    quickgelu_forward(o, x, N_ELEMS);
}
static void ref_quickgelu(float *o, const float *x, const float *d)
{
    for (size_t i = 0; i < N_ELEMS; i++) o[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}
static void run_tanh(float *o, const float *x, const float *d) { tanh_forward(o, x, N_ELEMS); }
static void ref_tanh(float *o, const float *x, const float *d)
{
    for (size_t i = 0; i < N_ELEMS; i++) o[i] = tanhf(x[i]);
}
static void run_gelu_back(float *o, const float *x, const float *d)
{
    memset(o, 0, N_ELEMS * sizeof(float));
    gelu_erf_backward(o, x, d, N_ELEMS);
}
static void ref_gelu_back(float *o, const float *x, const float *d)
{
    for (size_t i = 0; i < N_ELEMS; i++) {
        float cdf = 0.5f * (1.0f + erff(x[i] * 0.70710678118654752f));
        o[i] = 0.0f + d[i] * (cdf + x[i] * 0.39894228040143268f *
                                        expf(fmaxf(-0.5f * x[i] * x[i], -80.0f)));
    }
}
static void run_quickgelu_back(float *o, const float *x, const float *d)
{
    memset(o, 0, N_ELEMS * sizeof(float));
    quickgelu_backward(o, x, d, N_ELEMS);
}
static void ref_quickgelu_back(float *o, const float *x, const float *d)
{
    for (size_t i = 0; i < N_ELEMS; i++) {
        float s = 1.0f / (1.0f + expf(fminf(fmaxf(-1.702f * x[i], -80.0f), 80.0f)));
        o[i] = 0.0f + d[i] * s * (1.0f + 1.702f * x[i] * (1.0f - s));
    }
}
/* rows of 1 to 300 entries, one with a masked (-inf) key */
static void run_softmax(float *o, const float *x, const float *d)
{
    memcpy(o, x, N_ELEMS * sizeof(float));
    o[5] = -INFINITY;
    for (size_t i = 0, n = 1; i + n <= N_ELEMS; i += n, n = n % 300 + 7) softmax_row(o + i, (int)n);
}
static void ref_softmax(float *o, const float *x, const float *d)
{
    memcpy(o, x, N_ELEMS * sizeof(float));
    o[5] = -INFINITY;
    for (size_t i = 0, n = 1; i + n <= N_ELEMS; i += n, n = n % 300 + 7) {
        float *r = o + i, m = -INFINITY, s = 0.0f;
        for (size_t j = 0; j < n; j++) m = r[j] > m ? r[j] : m;
        for (size_t j = 0; j < n; j++) {
            r[j] = expf(r[j] - m);
            s += r[j];
        }
        for (size_t j = 0; j < n; j++) r[j] /= s;
    }
}
/* out: the normalised rows, then mean and rstd */
static void run_layernorm(float *o, const float *x, const float *w)
{
    layernorm_forward(o, o + N_ROWS * N_COLS, o + N_ROWS * N_COLS + N_ROWS, x, w, w + N_COLS,
                      N_ROWS, N_COLS, 1e-5f);
}
/* out: dinp, dweight, dbias from dout = aux, with the forward's mean/rstd
 * (ln_mean, ln_rstd: set once by check_ops) */
static float ln_mean[N_ROWS], ln_rstd[N_ROWS];

static void run_layernorm_back(float *o, const float *x, const float *w)
{
    memset(o, 0, (N_ROWS + 2) * N_COLS * sizeof(float));
    layernorm_backward(o, o + N_ROWS * N_COLS, o + (N_ROWS + 1) * N_COLS, w + 2 * N_COLS, x, w,
                       ln_mean, ln_rstd, N_ROWS, N_COLS);
}

static void check_ops(void)
{
    /* a few ulp for libmvec against libm, of the result or, where 1 + erf
     * or 1 + 1.702 x (1 - s) cancels, of the terms (floor 1); sums of 768
     * terms in another order for LayerNorm (relative to the rows' scale) */
    static const op_case ops[] = {
        {"gelu_erf_forward", 2e-6, 1.0, N_ELEMS, run_gelu, ref_gelu},
        {"quickgelu_forward", 6e-7, 1e-30, N_ELEMS, run_quickgelu, ref_quickgelu},
        {"tanh_forward", 6e-7, 1e-30, N_ELEMS, run_tanh, ref_tanh},
        {"gelu_erf_backward", 2e-6, 1.0, N_ELEMS, run_gelu_back, ref_gelu_back},
        {"quickgelu_backward", 2e-6, 1.0, N_ELEMS, run_quickgelu_back, ref_quickgelu_back},
        {"softmax_row", 2e-6, 1e-30, N_ELEMS, run_softmax, ref_softmax},
        {"layernorm_forward", 1e-5, 1.0, N_ROWS * N_COLS + 2 * N_ROWS, run_layernorm, NULL},
        {"layernorm_backward", 1e-5, 1.0, (N_ROWS + 2) * N_COLS, run_layernorm_back, NULL},
    };
    size_t n = N_ELEMS > (N_ROWS + 2) * N_COLS ? N_ELEMS : (N_ROWS + 2) * N_COLS;
    float *x = xmalloc(n * sizeof(float)), *aux = xmalloc(n * sizeof(float));
    float *got = xmalloc(n * sizeof(float)), *gen = xmalloc(n * sizeof(float)),
          *ref = xmalloc(n * sizeof(float));
    fill(x, n, 1, -6.0f, 6.0f);
    fill(aux, n, 2, -1.0f, 1.5f);
    layernorm_forward(got, ln_mean, ln_rstd, x, aux, aux + N_COLS, N_ROWS, N_COLS, 1e-5f);
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        const op_case *c = &ops[i];
        memset(got, 0, n * sizeof(float));
        memset(gen, 0, n * sizeof(float));
        c->run(got, x, aux);
        cpu_set_cap("generic");
        c->run(gen, x, aux);
        cpu_set_cap(NULL);
        if (c->ref) c->ref(ref, x, aux);
        compare(c->name, got, gen, c->ref ? ref : NULL, c->len, c->tol, c->floor);
    }
    free(x), free(aux), free(got), free(gen), free(ref);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--describe")) { /* check_environment's child */
        printf("%s\n", cpu_describe());
        return 0;
    }
    clip_set_progname(argv[0]);
    check_features();
    check_environment();
    check_ops();
    printf("dispatch: CPU features %s (CLIP_CPU=%s); ops against the generic path: worst "
           "err/tol %.3g (%s)\n",
           cpu_describe(), getenv("CLIP_CPU") ? getenv("CLIP_CPU") : "", worst_ratio, worst_op);
    return unit_done();
}

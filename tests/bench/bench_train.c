/* Training-step speed of the C trainer: bench_train ARCH BATCH STEPS [amp]
 * [ckpt] [mask=X] [lock|cached] runs STEPS + 1 steps (the first warms up) of
 * a randomly initialised model (ARCH as clip-train --arch; ckpt:
 * --grad-checkpointing; mask=X: patch dropout, --mask-ratio X; lock:
 * --lock-image, the image tower's forward only; cached: --lock-image with its
 * features computed before, a cached epoch's step: the text tower only) on
 * random images and captions of 10..30 tokens in a context of 52, and prints
 * one JSON line: seconds per step (median), its parts, achieved GFLOP/s, peak
 * RSS and the bytes the trainer reserves (trainer_memory: activations,
 * backward scratch, weights with gradients and moments). STEPS 0: the memory
 * only, no step. Read by tests/ref/bench_train.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "tool.h"
#include "kernels/blas.h"
#include "train/train.h"
#include "core/util.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    blas_setup(argc, argv);
    clip_set_progname(argv[0]);
    if (argc < 4) die("usage: bench_train ARCH BATCH STEPS [amp] [ckpt] [mask=X] [lock|cached]");
    train_arch arch;
    if (train_arch_parse(argv[1], &arch)) die("%s", clip_error());
    int B = atoi(argv[2]), steps = atoi(argv[3]), amp = 0, ckpt = 0, lock = 0, cached = 0;
    double mask = 0;
    for (int i = 4; i < argc; i++) {
        if (!strcmp(argv[i], "amp"))
            amp = 1;
        else if (!strcmp(argv[i], "ckpt"))
            ckpt = 1;
        else if (!strcmp(argv[i], "lock"))
            lock = 1;
        else if (!strcmp(argv[i], "cached"))
            cached = 1;
        else if (!strncmp(argv[i], "mask=", 5))
            mask = atof(argv[i] + 5);
        else
            die("bench_train: '%s': expected amp, ckpt, mask=X, lock or cached", argv[i]);
    }
    enum { L = 52 };
    train_config cfg;
    train_config_defaults(&cfg);
    cfg.lr = 1e-5;
    cfg.warmup = 0;
    cfg.total_steps = steps + 1;
    cfg.amp = amp;
    cfg.grad_checkpointing = ckpt;
    cfg.mask_ratio = mask;
    cfg.lock_image = lock || cached;
    trainer *t = trainer_create(train_model_create(&arch, 1), &cfg, B, L);
    if (!t) die("%s", clip_error());
    train_memory mem;
    trainer_memory(t, &mem);
    int R = arch.vit.resolution;
    uint8_t *px = xmalloc((size_t)B * R * R * 3);
    int32_t *ids = xcalloc((size_t)B * L, sizeof *ids);
    uint64_t rng = 7;
    for (size_t i = 0; i < (size_t)B * R * R * 3; i++) px[i] = (uint8_t)(splitmix64(&rng) >> 56);
    for (int b = 0; b < B; b++) {
        int n = 10 + (int)(splitmix64(&rng) % 21);
        ids[b * L] = 101;
        for (int j = 1; j < n - 1; j++) ids[b * L + j] = 1000 + (int)(splitmix64(&rng) % 20000);
        ids[b * L + n - 1] = 102;
    }
    float *feats = NULL;
    if (cached) { /* what a feature cache holds: computed once, before the timed steps */
        feats = xmalloc((size_t)B * arch.vit.out_dim * sizeof(float));
        if (trainer_encode(t, TRAIN_IMAGE, px, NULL, B, 0, feats)) die("%s", clip_error());
    }
    double *sec = xmalloc((steps + 1) * sizeof *sec);
    train_stats st, sum = {0};
    for (int s = 0; steps && s <= steps; s++) {
        double t0 = now_seconds();
        train_batch tb = {px, ids, B, L, {feats, NULL}};
        if (trainer_step_batch(t, &tb, &st)) die("step %d: %s", s, clip_error());
        sec[s] = now_seconds() - t0;
        if (s)
            sum.sec_image += st.sec_image, sum.sec_text += st.sec_text,
                sum.sec_optim += st.sec_optim;
        fprintf(stderr, "bench_train: step %d: %.2f s, loss %.4f\n", s, sec[s], st.loss);
    }
    qsort(sec + 1, steps, sizeof *sec, cmp_double);
    double med = steps ? sec[1 + steps / 2] : 0;
    /* multiply-adds of forward + backward = 3 x forward, GEMMs and attention */
    int longest = 30;
    /* patch dropout: the image tower over 1 + keep tokens, conv1 over keep patches */
    vit_config vm = arch.vit;
    int GG = vm.grid * vm.grid, keep = cfg.mask_ratio > 0 ? trainer_mask_keep(t) : GG;
    vm.tokens = 1 + keep;
    double vit_flops =
        vit_forward_flops(&vm) - 2.0 * (GG - keep) * 3 * vm.patch * vm.patch * vm.width;
    double image = cached ? 0 : lock ? 1 : 3; /* forward + backward = 3 forwards */
    double flops = B * (image * vit_flops + 3.0 * bert_forward_flops(&arch.bert, longest));
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf(
        "{\"impl\": \"c\", \"arch\": \"%s\", \"batch\": %d, \"amp\": %s, \"mask_ratio\": %g, "
        "\"mode\": \"%s\", \"sec_per_step\": %.3f, "
        "\"steps\": %d, \"image_s\": %.3f, \"text_s\": %.3f, \"optim_s\": %.3f, \"gflops\": %.1f, "
        "\"peak_rss_mib\": %.0f, \"grad_checkpointing\": %s, \"activation_bytes\": %zu, "
        "\"backward_bytes\": %zu, \"weight_bytes\": %zu, \"blas\": \"%s\"}\n",
        argv[1], B, amp ? "true" : "false", cfg.mask_ratio,
        lock     ? "lock"
        : cached ? "cached"
                 : "full",
        med, steps, steps ? sum.sec_image / steps : 0, steps ? sum.sec_text / steps : 0,
        steps ? sum.sec_optim / steps : 0, med ? flops / med / 1e9 : 0, ru.ru_maxrss / 1024.0,
        ckpt ? "true" : "false", mem.activations, mem.backward, mem.weights, blas_describe());
    free(feats);
    trainer_free(t);
    return 0;
}

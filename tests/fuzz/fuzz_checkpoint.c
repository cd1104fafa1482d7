/* Fuzzes ckpt_load_buffer: every input must load or fail with an error
 * message of its own that names the input ("fuzz-input: ..."), never crash,
 * leak or read out of bounds; a load that succeeds leaves no error behind, and
 * every tensor of a loaded checkpoint converts to float32. Two builds:
 *   clang -fsanitize=fuzzer,address,undefined -DUSE_LIBFUZZER ...  (libFuzzer; corpus:
 *     tests/fixtures/ckpt)
 *   cc -fsanitize=address,undefined ...  then
 *     fuzz_checkpoint ITERATIONS SEED FILE...   (a built-in mutator over the given files:
 *     byte flips, interesting values, truncation, insertion, deletion, chunk copies) */
#include "tool.h"
#include "ckpt/checkpoint.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME "fuzz-input"

static long iteration = -1; /* the built-in mutator's, for the report */

static void fail(const char *what, size_t size)
{
    fprintf(stderr, "fuzz_checkpoint: %s (input of %zu bytes", what, size);
    if (iteration >= 0) fprintf(stderr, ", iteration %ld", iteration);
    fprintf(stderr, "): %s\n", clip_error());
    abort();
}

/* clip_error() falls back to this when no message was set */
static int no_error(void) { return !strcmp(clip_error(), "unknown error"); }

static int exercise(const unsigned char *data, size_t size)
{
    clip_clear_error(); /* so that a stale message from an earlier input cannot pass */
    ckpt *c = ckpt_load_buffer(data, size, NAME);
    if (!c) {
        const char *e = clip_error();
        if (no_error()) fail("a failed load set no error", size);
        if (strncmp(e, NAME ": ", strlen(NAME ": ")) || !e[strlen(NAME ": ")])
            fail("the error of a failed load does not start with the input's name", size);
        return 0;
    }
    if (!no_error()) fail("a successful load left an error behind", size);
    size_t most = 0;
    for (size_t i = 0; i < ckpt_count(c); i++)
        if (ckpt_tensor_at(c, i)->numel > most) most = ckpt_tensor_at(c, i)->numel;
    if (most <= (64u << 20)) {
        float *buf = xmalloc((most + 1) * sizeof *buf);
        for (size_t i = 0; i < ckpt_count(c); i++) {
            const ckpt_tensor *t = ckpt_tensor_at(c, i);
            if (ckpt_read_f32(c, t->name, t->ndim, t->shape, buf) < 0)
                fail("a tensor of a loaded checkpoint does not convert", size);
        }
        free(buf);
    }
    ckpt_metadata(c, "format");
    ckpt_free(c);
    return 1;
}

#ifdef USE_LIBFUZZER
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    exercise(data, size);
    return 0;
}
#else

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t mutate(unsigned char *b, size_t n, size_t cap)
{
    static const unsigned char interesting[] = {0, 1, 0x7f, 0x80, 0xff, '(', ')', 't', 'R', 'Q', '.', 'q', 'h'};
    int k = 1 + rnd() % 4;
    while (k--) {
        size_t at = n ? rnd() % n : 0;
        switch (rnd() % 7) {
        case 0: if (n) b[at] ^= 1u << (rnd() % 8); break;
        case 1: if (n) b[at] = interesting[rnd() % sizeof interesting]; break;
        case 2: if (n) b[at] = rnd(); break;
        case 3: n = at; break; /* truncate */
        case 4: /* insert a byte */
            if (n < cap) {
                memmove(b + at + 1, b + at, n - at);
                b[at] = interesting[rnd() % sizeof interesting];
                n++;
            }
            break;
        case 5: /* delete a run */
            if (n) {
                size_t len = 1 + rnd() % 8;
                if (len > n - at) len = n - at;
                memmove(b + at, b + at + len, n - at - len);
                n -= len;
            }
            break;
        case 6: /* overwrite with a chunk from elsewhere */
            if (n > 16) {
                size_t len = 1 + rnd() % 16, from = rnd() % (n - len);
                if (at + len <= n) memmove(b + at, b + from, len);
            }
            break;
        }
    }
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s ITERATIONS SEED FILE...\n", argv[0]);
        return 2;
    }
    long iters = atol(argv[1]);
    rng_state = (uint64_t)atoll(argv[2]) * 0x9e3779b97f4a7c15ull + 1;
    int nf = argc - 3;
    unsigned char **orig = xcalloc(nf, sizeof *orig);
    size_t *len = xcalloc(nf, sizeof *len), cap = 0;
    for (int i = 0; i < nf; i++) {
        orig[i] = (unsigned char *)read_file(argv[3 + i], &len[i]);
        if (!orig[i]) die("%s", clip_error());
        if (len[i] + 64 > cap) cap = len[i] + 64;
    }
    unsigned char *buf = xmalloc(cap);
    long loaded = 0, failed = 0;
    for (long it = 0; it < iters; it++) {
        int f = rnd() % nf;
        memcpy(buf, orig[f], len[f]);
        size_t n = mutate(buf, len[f], cap);
        iteration = it;
        int ok = exercise(buf, n); /* ckpt_load_buffer makes an exact-size copy */
        loaded += ok;
        failed += !ok;
    }
    iteration = -1;
    printf("%ld iterations, %ld mutants loaded, %ld refused with a message naming the input\n",
           iters, loaded, failed);
    /* a smoke run that never reached a loader's error path checked nothing */
    if (iters >= 1000 && (!loaded || !failed)) {
        fprintf(stderr, "fuzz_checkpoint: the mutants never %s\n", loaded ? "failed" : "loaded");
        return 1;
    }
    for (int i = 0; i < nf; i++) free(orig[i]);
    free(orig);
    free(len);
    free(buf);
    return 0;
}
#endif

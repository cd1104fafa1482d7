/* The driver the fuzz targets share (tests/fuzz/fuzz_NAME.c, mk/fuzz.mk). A target defines,
 * before including this file,
 *   FUZZ_NAME                 "fuzz_NAME", for messages;
 *   static int fuzz_one(const unsigned char *data, size_t size);
 *                             1: the input was accepted, 0: refused (after fuzz_refused()),
 *                             and anything the target finds wrong goes to fuzz_fail(), which
 *                             aborts;
 * and optionally
 *   FUZZ_TOKENS               a string-literal list, { "\"dtype\"", "-1", ... }: the built-in
 *                             mutator inserts them and writes them over the input;
 *   FUZZ_FIXUP                a function void (unsigned char *buf, size_t n) that repairs
 *                             what nearly every mutant breaks (a header length, a checksum),
 *                             applied to half the mutants so that the parser behind the
 *                             check is reached; libFuzzer's mutants go through it too.
 * Two builds:
 *   clang -fsanitize=fuzzer,address,undefined -DUSE_LIBFUZZER ...   (libFuzzer)
 *   cc -fsanitize=address,undefined ...  then  fuzz_NAME ITERATIONS SEED FILE...
 *     the built-in mutator over the given files (bit flips, interesting bytes, truncation,
 *     insertion, deletion, chunk copies, tokens): ITERATIONS inputs, first each file as it
 *     is, then mutants from SEED, the same ones on every run. It prints how many were
 *     accepted and refused; a run of 1000 or more in which none was, or none was refused,
 *     fails (it checked nothing). When an input fails, runs past FUZZ_TIMEOUT seconds
 *     (default 10: a hang) or makes a sanitizer stop the run, it is written to
 *     FUZZ_NAME-crash.bin in $FUZZ_ARTIFACTS (default: the current folder); fuzz_NAME 1 0
 *     THAT_FILE runs it again. */
#ifndef CLIP_FUZZ_H
#define CLIP_FUZZ_H

#include "tool.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const unsigned char *fuzz_input; /* the input being run, for the crash file */
static size_t fuzz_input_size;
static long fuzz_iteration = -1; /* the built-in mutator's, for the report */

static void fuzz_save_input(void)
{
#ifndef USE_LIBFUZZER /* libFuzzer writes its own crash-* files */
    if (!fuzz_input) return;
    const char *dir = getenv("FUZZ_ARTIFACTS");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s-crash.bin", dir && *dir ? dir : ".", FUZZ_NAME);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(fuzz_input, 1, fuzz_input_size, f);
        fclose(f);
        fprintf(stderr, "%s: the input is in %s\n", FUZZ_NAME, path);
    }
#endif
}

static void fuzz_fail(const char *what)
{
    fprintf(stderr, "%s: %s (input of %zu bytes", FUZZ_NAME, what, fuzz_input_size);
    if (fuzz_iteration >= 0) fprintf(stderr, ", iteration %ld", fuzz_iteration);
    fprintf(stderr, "): %s\n", clip_error());
    fuzz_save_input();
    abort();
}

/* clip_error() falls back to this when no message was set */
static int fuzz_no_error(void) { return !strcmp(clip_error(), "unknown error"); }

/* A refusal: an error of its own (set since clip_clear_error()) that names the input: it
 * starts with `name` followed by ':' ("name: ..." or "name:3:7: ..."). */
static void fuzz_refused(const char *name)
{
    const char *e = clip_error();
    size_t n = strlen(name);
    if (fuzz_no_error()) fuzz_fail("a refusal set no error");
    if (strncmp(e, name, n) || e[n] != ':' || !e[n + 1])
        fuzz_fail("the error of a refusal does not start with the input's name");
}

/* The input as a file, for an API that takes a path: one memfd per process, rewritten for
 * each input, named /proc/self/fd/N. */
__attribute__((unused)) static const char *fuzz_as_file(const unsigned char *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        if ((fd = memfd_create(FUZZ_NAME, 0)) < 0) fuzz_fail("memfd_create failed");
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0)) fuzz_fail("cannot truncate the input's memfd");
    for (size_t done = 0; done < size;) {
        ssize_t n = pwrite(fd, data + done, size - done, done);
        if (n <= 0) fuzz_fail("cannot write the input's memfd");
        done += n;
    }
    return path;
}

static int fuzz_run(const unsigned char *data, size_t size)
{
    fuzz_input = data;
    fuzz_input_size = size;
    clip_clear_error(); /* so that a stale message from an earlier input cannot pass */
    int accepted = fuzz_one(data, size);
    fuzz_input = NULL;
    return accepted;
}

#ifdef USE_LIBFUZZER

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    fuzz_run(data, size);
    return 0;
}

#ifdef FUZZ_FIXUP
size_t LLVMFuzzerMutate(unsigned char *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(unsigned char *data, size_t size, size_t max_size, unsigned seed)
{
    size = LLVMFuzzerMutate(data, size, max_size);
    if (seed & 1) FUZZ_FIXUP(data, size);
    return size;
}
#endif

#else /* the built-in mutator */

#include <sanitizer/common_interface_defs.h>
#include <signal.h>

static uint64_t fuzz_rng_state;

static uint64_t fuzz_rnd(void)
{
    fuzz_rng_state ^= fuzz_rng_state << 13;
    fuzz_rng_state ^= fuzz_rng_state >> 7;
    fuzz_rng_state ^= fuzz_rng_state << 17;
    return fuzz_rng_state;
}

#ifdef FUZZ_TOKENS
static const char *const fuzz_tokens[] = FUZZ_TOKENS;
#define FUZZ_N_TOKENS (sizeof fuzz_tokens / sizeof fuzz_tokens[0])
#else
static const char *const fuzz_tokens[] = {""};
#define FUZZ_N_TOKENS 0
#endif

/* room a mutant may grow by */
#define FUZZ_SLACK 256

static size_t fuzz_insert(unsigned char *b, size_t n, size_t cap, size_t at, const void *src,
                          size_t len)
{
    if (n + len > cap) return n;
    memmove(b + at + len, b + at, n - at);
    memcpy(b + at, src, len);
    return n + len;
}

static size_t fuzz_mutate(unsigned char *b, size_t n, size_t cap)
{
    static const unsigned char interesting[] = {0,   1,    0x7f, 0x80, 0xff, '0', '9',
                                                '"', '\'', ',',  ':',  '[',  ']', '{',
                                                '}', '(',  ')',  '.',  '/'};
    int k = 1 + fuzz_rnd() % 4;
    while (k--) {
        size_t at = n ? fuzz_rnd() % n : 0;
        switch (fuzz_rnd() % (FUZZ_N_TOKENS ? 9 : 7)) {
        case 0:
            if (n) b[at] ^= 1u << (fuzz_rnd() % 8);
            break;
        case 1:
            if (n) b[at] = interesting[fuzz_rnd() % sizeof interesting];
            break;
        case 2:
            if (n) b[at] = fuzz_rnd();
            break;
        case 3: n = at; break; /* truncate */
        case 4:
            n = fuzz_insert(b, n, cap, at, &interesting[fuzz_rnd() % sizeof interesting], 1);
            break;
        case 5: /* delete a run */
            if (n) {
                size_t len = 1 + fuzz_rnd() % 8;
                if (len > n - at) len = n - at;
                memmove(b + at, b + at + len, n - at - len);
                n -= len;
            }
            break;
        case 6: /* overwrite with a chunk from elsewhere */
            if (n > 16) {
                size_t len = 1 + fuzz_rnd() % 16, from = fuzz_rnd() % (n - len);
                if (at + len <= n) memmove(b + at, b + from, len);
            }
            break;
        case 7: { /* insert a token */
            const char *t = fuzz_tokens[fuzz_rnd() % FUZZ_N_TOKENS];
            n = fuzz_insert(b, n, cap, at, t, strlen(t));
            break;
        }
        case 8: { /* write a token over the input */
            const char *t = fuzz_tokens[fuzz_rnd() % FUZZ_N_TOKENS];
            size_t len = strlen(t);
            if (at + len <= n) memcpy(b + at, t, len);
            break;
        }
        }
    }
    return n;
}

static void fuzz_on_death(void) { fuzz_save_input(); }

/* a hang: an input still running after FUZZ_TIMEOUT seconds (default 10, as libFuzzer's
 * -timeout in mk/fuzz.mk) */
static void fuzz_on_alarm(int sig)
{
    (void)sig;
    fuzz_fail("an input ran past FUZZ_TIMEOUT (a hang?)");
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s ITERATIONS SEED FILE...\n", argv[0]);
        return 2;
    }
    __sanitizer_set_death_callback(fuzz_on_death);
    signal(SIGALRM, fuzz_on_alarm);
    unsigned timeout = getenv("FUZZ_TIMEOUT") ? (unsigned)atoi(getenv("FUZZ_TIMEOUT")) : 10;
    long iters = atol(argv[1]);
    fuzz_rng_state = (uint64_t)atoll(argv[2]) * 0x9e3779b97f4a7c15ull + 1;
    int nf = argc - 3;
    unsigned char **orig = xcalloc(nf, sizeof *orig);
    size_t *len = xcalloc(nf, sizeof *len), cap = 0;
    for (int i = 0; i < nf; i++) {
        orig[i] = (unsigned char *)read_file(argv[3 + i], &len[i]);
        if (!orig[i]) die("%s", clip_error());
        if (len[i] + FUZZ_SLACK > cap) cap = len[i] + FUZZ_SLACK;
    }
    unsigned char *buf = xmalloc(cap);
    long accepted = 0, refused = 0;
    for (long it = 0; it < iters; it++) {
        int seed_run = it < nf; /* each seed once as it is, then mutants */
        int f = seed_run ? (int)it : (int)(fuzz_rnd() % nf);
        memcpy(buf, orig[f], len[f]);
        size_t n = len[f];
        if (!seed_run) {
            n = fuzz_mutate(buf, n, cap);
#ifdef FUZZ_FIXUP
            if (fuzz_rnd() & 1) FUZZ_FIXUP(buf, n);
#endif
        }
        /* an exact-size copy, so that ASan sees a read past the end */
        unsigned char *input = xmalloc(n ? n : 1);
        memcpy(input, buf, n);
        fuzz_iteration = it;
        alarm(timeout);
        int ok = fuzz_run(input, n);
        alarm(0);
        free(input);
        accepted += ok;
        refused += !ok;
    }
    fuzz_iteration = -1;
    printf("%s: %ld iterations, %ld inputs accepted, %ld refused with a message naming the "
           "input\n",
           FUZZ_NAME, iters, accepted, refused);
    for (int i = 0; i < nf; i++) free(orig[i]);
    free(orig);
    free(len);
    free(buf);
    /* a run that never reached a parser's error path, or never got past one, checked nothing */
    if (iters >= 1000 && (!accepted || !refused)) {
        fprintf(stderr, "%s: the mutants were never %s\n", FUZZ_NAME,
                accepted ? "refused" : "accepted");
        return 1;
    }
    return 0;
}
#endif /* USE_LIBFUZZER */

#endif

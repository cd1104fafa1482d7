/* Fuzzes query_request_parse, the one function between a server's request
 * bytes and a parsed request: every input must parse or fail with an error of
 * its own that starts with "request: ", never crash, leak or read out of
 * bounds (the input is not NUL-terminated); a parsed request is one of the
 * kinds with its fields in range (valid UTF-8 without NUL, k, label counts);
 * a refusal's error reply is JSON. Two builds:
 *   clang -fsanitize=fuzzer,address,undefined -DUSE_LIBFUZZER ...  (libFuzzer; corpus:
 *     tests/fuzz/corpus/request)
 *   cc -fsanitize=address,undefined ...  then
 *     fuzz_request ITERATIONS SEED FILE...   (a built-in mutator over the given files:
 *     byte flips, JSON's bytes, truncation, insertion, deletion, chunk copies) */
#include "tool.h"
#include "core/util.h"
#include "search/query.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static long iteration = -1; /* the built-in mutator's, for the report */

static void fail(const char *what, size_t size)
{
    fprintf(stderr, "fuzz_request: %s (input of %zu bytes", what, size);
    if (iteration >= 0) fprintf(stderr, ", iteration %ld", iteration);
    fprintf(stderr, "): %s\n", clip_error());
    abort();
}

/* clip_error() falls back to this when no message was set */
static int no_error(void) { return !strcmp(clip_error(), "unknown error"); }

static int valid_utf8(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t got = utf8proc_iterate((const utf8proc_uint8_t *)s + i, n - i, &cp);
        if (got <= 0 || cp == 0) return 0;
        i += got;
    }
    return 1;
}

static int exercise(const unsigned char *data, size_t size)
{
    /* an exact-size copy, so that ASan sees a read past the end */
    unsigned char *copy = xmalloc(size ? size : 1);
    memcpy(copy, data, size);
    clip_clear_error(); /* so that a stale message from an earlier input cannot pass */
    query_request r;
    int rc = query_request_parse(copy, size, &r);
    if (rc) {
        if (no_error()) fail("a refused request set no error", size);
        if (strncmp(clip_error(), "request: ", 9) || !clip_error()[9])
            fail("the error of a refused request does not start with \"request: \"", size);
        if (r.json || r.labels) fail("a refused request holds memory", size);
        json_t *e = query_error_json(clip_error());
        char *s = e ? json_dumps(e, JSON_COMPACT) : NULL;
        if (!s) fail("the error reply is not JSON", size);
        free(s);
        json_decref(e);
        free(copy);
        return 0;
    }
    if (!no_error()) fail("a parsed request left an error behind", size);
    switch (r.kind) {
    case QUERY_QUIT: break;
    case QUERY_TEXT:
        if (!r.text || strlen(r.text) != r.text_len || !valid_utf8(r.text, r.text_len))
            fail("the text is not NUL-free UTF-8 of text_len bytes", size);
        if (r.k < 1 || r.k > QUERY_MAX_K || r.image || r.labels) fail("a text request's fields", size);
        break;
    case QUERY_IMAGE:
    case QUERY_LABELS:
        if (!r.image || !*r.image || !valid_utf8(r.image, strlen(r.image)) || r.text)
            fail("an image request's path", size);
        if (r.kind == QUERY_IMAGE && (r.k < 1 || r.k > QUERY_MAX_K || r.labels))
            fail("an image request's k", size);
        if (r.kind == QUERY_LABELS) {
            if (r.n_labels < 1 || r.n_labels > QUERY_MAX_LABELS || !r.labels)
                fail("a labels request's count", size);
            for (int i = 0; i < r.n_labels; i++)
                if (!r.labels[i] || !valid_utf8(r.labels[i], strlen(r.labels[i])))
                    fail("a label is not UTF-8", size);
        }
        break;
    default: fail("a request of no kind", size);
    }
    query_request_free(&r);
    free(copy);
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
    static const unsigned char interesting[] = {0, 0x7f, 0x80, 0xc3, 0xe4, 0xff, '{', '}', '[', ']',
                                               '"', ':', ',', '\\', 'u', '0', '9', '-', 'e', 't', 'n'};
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
    long parsed = 0, refused = 0;
    for (long it = 0; it < iters; it++) {
        int f = rnd() % nf;
        memcpy(buf, orig[f], len[f]);
        size_t n = mutate(buf, len[f], cap);
        iteration = it;
        int ok = exercise(buf, n);
        parsed += ok;
        refused += !ok;
    }
    iteration = -1;
    printf("%ld iterations, %ld mutants parsed, %ld refused with a message\n",
           iters, parsed, refused);
    /* a smoke run that never reached both outcomes checked little */
    if (iters >= 1000 && (!parsed || !refused)) {
        fprintf(stderr, "fuzz_request: the mutants never %s\n", parsed ? "failed" : "parsed");
        return 1;
    }
    for (int i = 0; i < nf; i++) free(orig[i]);
    free(orig);
    free(len);
    free(buf);
    return 0;
}
#endif

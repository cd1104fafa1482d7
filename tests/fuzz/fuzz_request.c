/* Fuzzes query_request_parse, the one function between a server's request
 * bytes and a parsed request: every input must parse or fail with an error of
 * its own that starts with "request: ", never crash, leak or read out of
 * bounds (the input is not NUL-terminated); a parsed request is one of the
 * kinds with its fields in range (valid UTF-8 without NUL, k, label counts);
 * a refusal's error reply is JSON. Seeds: tests/fuzz/corpus/request/; the driver:
 * tests/fuzz/fuzz.h. */
#include "core/util.h"
#include "search/query.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define FUZZ_NAME "fuzz_request"
#define FUZZ_TOKENS                                                                                \
    {                                                                                              \
        "{", "}", "[", "]", "\"", ":", ",", "\\u0000", "\"text\"", "\"image\"", "\"labels\"",      \
            "\"k\"", "\"quit\"", "true", "null", "-1", "10001", "\xc3", "\xff"                     \
    }
static int fuzz_one(const unsigned char *data, size_t size);
#include "fuzz.h"
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

static int fuzz_one(const unsigned char *data, size_t size)
{
    /* an exact-size copy, so that ASan sees a read past the end */
    unsigned char *copy = xmalloc(size ? size : 1);
    memcpy(copy, data, size);
    clip_clear_error(); /* so that a stale message from an earlier input cannot pass */
    query_request r;
    int rc = query_request_parse(copy, size, &r);
    if (rc) {
        fuzz_refused("request"); /* "request: ..." */
        if (r.json || r.labels) fuzz_fail("a refused request holds memory");
        json_t *e = query_error_json(clip_error());
        char *s = e ? json_dumps(e, JSON_COMPACT) : NULL;
        if (!s) fuzz_fail("the error reply is not JSON");
        free(s);
        json_decref(e);
        free(copy);
        return 0;
    }
    if (!fuzz_no_error()) fuzz_fail("a parsed request left an error behind");
    switch (r.kind) {
    case QUERY_QUIT: break;
    case QUERY_TEXT:
        if (!r.text || strlen(r.text) != r.text_len || !valid_utf8(r.text, r.text_len))
            fuzz_fail("the text is not NUL-free UTF-8 of text_len bytes");
        if (r.k < 1 || r.k > QUERY_MAX_K || r.image || r.labels)
            fuzz_fail("a text request's fields");
        break;
    case QUERY_IMAGE:
    case QUERY_LABELS:
        if (!r.image || !*r.image || !valid_utf8(r.image, strlen(r.image)) || r.text)
            fuzz_fail("an image request's path");
        if (r.kind == QUERY_IMAGE && (r.k < 1 || r.k > QUERY_MAX_K || r.labels))
            fuzz_fail("an image request's k");
        if (r.kind == QUERY_LABELS) {
            if (r.n_labels < 1 || r.n_labels > QUERY_MAX_LABELS || !r.labels)
                fuzz_fail("a labels request's count");
            for (int i = 0; i < r.n_labels; i++)
                if (!r.labels[i] || !valid_utf8(r.labels[i], strlen(r.labels[i])))
                    fuzz_fail("a label is not UTF-8");
        }
        break;
    default: fuzz_fail("a request of no kind");
    }
    query_request_free(&r);
    free(copy);
    return 1;
}

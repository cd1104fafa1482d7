/* search/query.h without a model: the top-k selection against a full sort
 * (ties, NaN), a search over a hand-made index (order, caption owners, a key
 * that is not UTF-8, the budget), the request parser's answers, error replies that stay JSON,
 * --labels' splitting, and recall_load as clip-query loads an index. */
#include "tool.h"
#include "search/query.h"
#include "core/util.h"
#include "io/stream.h"
#include "unit.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    double score;
    size_t index;
} ref_hit;

static int by_score_then_index(const void *x, const void *y)
{
    const ref_hit *a = x, *b = y;
    double sa = isnan(a->score) ? -INFINITY : a->score, sb = isnan(b->score) ? -INFINITY : b->score;
    if (sa != sb) return sa < sb ? 1 : -1;
    return (a->index > b->index) - (a->index < b->index);
}

static void test_top_k(void)
{
    uint64_t rng = 7;
    for (int trial = 0; trial < 200; trial++) {
        size_t n = 1 + splitmix64(&rng) % 300, k = 1 + splitmix64(&rng) % (n + 10);
        ref_hit *ref = xmalloc(n * sizeof *ref);
        query_top top;
        query_top_init(&top, k);
        for (size_t i = 0; i < n; i++) {
            /* few distinct values: many ties; now and then a NaN */
            double s = (double)(splitmix64(&rng) % 9) - 4;
            if (splitmix64(&rng) % 50 == 0) s = NAN;
            ref[i] = (ref_hit){s, i};
            query_top_push(&top, s, i);
        }
        qsort(ref, n, sizeof *ref, by_score_then_index);
        query_top_sort(&top);
        size_t want = k < n ? k : n, bad = top.n != want;
        for (size_t r = 0; r < top.n && r < want; r++) bad += top.hit[r].index != ref[r].index;
        CHECK(!bad, "trial %d: n %zu k %zu: the top %zu differ from a full sort", trial, n, k,
              want);
        query_top_free(&top);
        free(ref);
    }
}

/* 3 samples a, b, c in 2-d; b has no captions, c two */
static void test_search(void)
{
    float img[] = {1, 0, 0, 1, 0.6f, 0.8f}, txt[] = {0, 1, 1, 0, 0.8f, 0.6f};
    int64_t off[] = {0, 1, 1, 3};
    recall_set ix = {.n_images = 3, .n_texts = 3, .dim = 2, .img = img, .txt = txt, .txt_off = off};
    char *keys[] = {"a", "b", "c\xff"},
         /* a tar name need not be UTF-8 */ *images[] = {"a.jpg", NULL, "c.jpg"},
         *caps[] = {"a's", "c's first", NULL};
    recall_meta meta = {keys, images, caps};
    query_engine qe;
    query_engine_init(&qe, NULL, NULL, 0, &ix, &meta);
    float q[] = {1, 0};
    json_t *r = query_search(&qe, q, 2, 0, NULL);
    char *s = json_dumps(r, JSON_COMPACT | JSON_REAL_PRECISION(3));
    CHECK(s && !strcmp(s, "[{\"key\":\"a\",\"score\":1.0,\"image\":\"a.jpg\"},"
                          "{\"key\":\"c?\",\"score\":0.6,\"image\":\"c.jpg\"}]"),
          "text -> images: %s", s);
    free(s), json_decref(r);
    r = query_search(&qe, q, 10, 1, NULL);
    s = json_dumps(r, JSON_COMPACT | JSON_REAL_PRECISION(3));
    CHECK(s && !strcmp(s, "[{\"key\":\"c?\",\"score\":1.0,\"caption\":\"c's first\"},"
                          "{\"key\":\"c?\",\"score\":0.8,\"caption\":null},"
                          "{\"key\":\"a\",\"score\":0.0,\"caption\":\"a's\"}]"),
          "image -> captions: each caption's own sample: %s", s);
    free(s), json_decref(r);
    query_budget spent = {.deadline = now_seconds() - 1, .seconds = 0.5};
    clip_clear_error();
    r = query_search(&qe, q, 2, 0, &spent);
    CHECK(!r, "a spent budget gives no result");
    CHECK(strstr(clip_error(), "over the time budget of 0.5 s while searching the index"), "%s",
          clip_error());
    json_decref(r);
    query_engine_destroy(&qe);
}

static void test_request_parse(void)
{
    static const struct {
        const char *json, *error; /* error NULL: parses */
        int kind, k, n_labels;
    } cases[] = {
        {"{\"text\": \"一只狗\"}", NULL, QUERY_TEXT, 5, 0},
        {"{\"text\": \"\", \"k\": 10000}", NULL, QUERY_TEXT, 10000, 0},
        {"{\"image\": \"/x.jpg\", \"k\": 3, \"quit\": false}", NULL, QUERY_IMAGE, 3, 0},
        {"{\"image\": \"/x.jpg\", \"labels\": [\"狗\", \"猫\"]}", NULL, QUERY_LABELS, 5, 2},
        {"{\"quit\": true, \"text\": 1}", NULL, QUERY_QUIT, 0, 0},
        {"", "request: not JSON", 0, 0, 0},
        {"{\"text\": \"\xff\"}", "request: not JSON", 0, 0, 0},
        {"{\"text\": \"a\\u0000b\"}", "request: not JSON", 0, 0, 0},
        {"[\"text\"]", "request: not a JSON object", 0, 0, 0},
        {"{\"text\": \"a\", \"kk\": 1}", "unknown key \"kk\"", 0, 0, 0},
        {"{\"text\": \"a\", \"text\": \"b\"}", "duplicate", 0, 0, 0},
        {"{\"text\": 1}", "\"text\" must be a string", 0, 0, 0},
        {"{\"image\": \"\"}", "\"image\" must be a non-empty string", 0, 0, 0},
        {"{\"k\": 3}", "give one of \"text\" or \"image\"", 0, 0, 0},
        {"{\"text\": \"a\", \"image\": \"b\"}", "give one of", 0, 0, 0},
        {"{\"text\": \"a\", \"k\": 10001}", "\"k\" must be an integer in 1..10000", 0, 0, 0},
        {"{\"text\": \"a\", \"k\": 0}", "\"k\" must be an integer", 0, 0, 0},
        {"{\"text\": \"a\", \"k\": 2.0}", "\"k\" must be an integer", 0, 0, 0},
        {"{\"text\": \"a\", \"k\": 123456789012345678901234567890}", "request: not JSON", 0, 0, 0},
        {"{\"image\": \"x\", \"labels\": []}", "non-empty array of strings", 0, 0, 0},
        {"{\"image\": \"x\", \"labels\": \"a,b\"}", "non-empty array of strings", 0, 0, 0},
        {"{\"image\": \"x\", \"labels\": [\"a\", 2]}", "\"labels\"[1] is not a string", 0, 0, 0},
        {"{\"text\": \"x\", \"labels\": [\"a\"]}", "\"labels\" go with \"image\"", 0, 0, 0},
        {"{\"quit\": \"yes\"}", "\"quit\" must be true or false", 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        query_request r;
        clip_clear_error();
        int rc = query_request_parse(cases[i].json, strlen(cases[i].json), &r);
        if (cases[i].error) {
            CHECK(rc == -1, "'%s' should be refused", cases[i].json);
            CHECK(strstr(clip_error(), cases[i].error) && !strncmp(clip_error(), "request: ", 9),
                  "'%s': '%s' should say '%s'", cases[i].json, clip_error(), cases[i].error);
            CHECK(!r.json && !r.labels, "'%s': a refused request holds nothing", cases[i].json);
            continue;
        }
        CHECK(rc == 0, "'%s': %s", cases[i].json, clip_error());
        if (rc) continue;
        CHECK((int)r.kind == cases[i].kind, "'%s': kind %d", cases[i].json, r.kind);
        if (r.kind == QUERY_TEXT || r.kind == QUERY_IMAGE)
            CHECK(r.k == cases[i].k, "'%s': k %d", cases[i].json, r.k);
        CHECK(r.n_labels == cases[i].n_labels, "'%s': %d labels", cases[i].json, r.n_labels);
        if (r.kind == QUERY_LABELS) CHECK(!strcmp(r.labels[1], "猫"), "%s", r.labels[1]);
        if (r.kind == QUERY_TEXT) CHECK(r.text_len == strlen(r.text), "text length");
        query_request_free(&r);
    }
    /* a request need not end in a NUL */
    query_request r;
    const char buf[] = {'{', '"', 'q', 'u', 'i', 't', '"', ':', 't', 'r', 'u', 'e', '}', 'x'};
    CHECK(query_request_parse(buf, 13, &r) == 0 && r.kind == QUERY_QUIT, "%s", clip_error());
    query_request_free(&r);
}

static void test_error_json(void)
{
    json_t *j = query_error_json("x.jpg: near '\xff\xfe' \xe4\xb8\x80");
    char *s = json_dumps(j, JSON_COMPACT);
    CHECK(s && !strcmp(s, "{\"error\":\"x.jpg: near '?"
                          "?' 一\"}"),
          "invalid UTF-8 as '?': %s", s);
    free(s), json_decref(j);
}

/* recall_load as clip-query uses it: vectors scaled to unit length, the
 * json's image and captions kept, a sample without txt_emb.npy has none, and
 * errors name the stream. */
static void test_load_index(void)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/test_query_%d.tar", (int)getpid());
    stream_writer *w = stream_open_write(path);
    if (!w) die("%s", clip_error());
    sample s;
    sample_init(&s);
    float a_img[] = {3, 4}, a_txt[] = {0, 2, 5, 0}, b_img[] = {0, 0.5f};
    int64_t ishape[] = {2}, tshape[] = {2, 2};
    sample_set_key(&s, "a");
    sample_set_npy(&s, "img_emb.npy", DT_F32, 1, ishape, a_img);
    sample_set_npy(&s, "txt_emb.npy", DT_F32, 2, tshape, a_txt);
    const char *json = "{\"image\": \"a.jpg\", \"captions\": [\"one\", \"two\"]}";
    sample_set_copy(&s, "json", json, strlen(json));
    if (stream_write(w, &s)) die("%s", clip_error());
    sample_clear(&s);
    sample_set_key(&s, "b");
    sample_set_npy(&s, "img_emb.npy", DT_F32, 1, ishape, b_img);
    if (stream_write(w, &s) || stream_close_write(w)) die("%s", clip_error());
    sample_free(&s);

    recall_set ix;
    recall_meta meta;
    int rc =
        recall_load(path, RECALL_IMAGES | RECALL_TEXTS_IF_ANY | RECALL_NAME_STREAM, 2, &ix, &meta);
    CHECK(rc == 0, "%s", clip_error());
    if (!rc) {
        CHECK(ix.n_images == 2 && ix.n_texts == 2 && ix.txt_off[1] == 2 && ix.txt_off[2] == 2,
              "%lld images, %lld captions", (long long)ix.n_images, (long long)ix.n_texts);
        CHECK(fabsf(ix.img[0] - 0.6f) < 1e-6f && fabsf(ix.img[1] - 0.8f) < 1e-6f && ix.img[3] == 1,
              "images scaled to unit length: %g %g %g", ix.img[0], ix.img[1], ix.img[3]);
        CHECK(ix.txt[1] == 1 && ix.txt[2] == 1, "captions scaled: %g %g", ix.txt[1], ix.txt[2]);
        CHECK(meta.key[1] && !strcmp(meta.key[1], "b") && meta.image[0] &&
                  !strcmp(meta.image[0], "a.jpg") && !meta.image[1] && meta.caption[1] &&
                  !strcmp(meta.caption[1], "two"),
              "meta: the keys, the json's image and captions");
        recall_meta_free(&meta, &ix);
        recall_set_free(&ix);
    }
    rc = recall_load(path, RECALL_IMAGES | RECALL_NAME_STREAM, 3, &ix, &meta);
    CHECK(rc == -1 &&
              strstr(clip_error(), ": sample a: img_emb.npy has dimension 2 but the model "
                                   "embeds in 3") &&
              !strncmp(clip_error(), path, strlen(path)),
          "%s", clip_error());
    rc = recall_load(path, RECALL_TEXTS, 0, &ix, &meta);
    CHECK(rc == -1 && !strcmp(clip_error(), "sample b: no txt_emb.npy field"), "%s", clip_error());
    unlink(path);
}

static void test_split_labels(void)
{
    char s[] = " 狗 ,, 猫,a b , ";
    const char *l[sizeof s];
    int n = query_split_labels(s, l);
    CHECK(n == 3 && !strcmp(l[0], "狗") && !strcmp(l[1], "猫") && !strcmp(l[2], "a b"), "%d labels",
          n);
}

int main(void)
{
    test_top_k();
    test_search();
    test_request_parse();
    test_error_json();
    test_split_labels();
    test_load_index();
    return unit_done();
}

/* Recall: the committed fixture matches tests/ref/recall_ref.py rank for rank;
 * the blocked algorithm equals a brute force on integer-valued data (exact
 * scores, many ties, images without captions) for every block size, and is
 * block-size invariant on continuous data; loading errors name the sample. */
#include "tool.h"
#include "search/recall.h"
#include "io/stream.h"
#include "unit.h"
#include "core/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIXTURE "tests/fixtures/recall/"

static const int blocks[][2] = {{0, 0}, {1, 1}, {7, 13}, {3, 1000}, {64, 50}, {1000, 7}};
#define N_BLOCKS (int)(sizeof blocks / sizeof blocks[0])

static void test_fixture(void)
{
    recall_set set;
    int rc = recall_load_stream(FIXTURE "embedded.tar", &set);
    CHECK(rc == 0, "%s", clip_error());
    if (rc) return;
    json_error_t jerr;
    json_t *want = json_load_file(FIXTURE "expected.json", 0, &jerr);
    CHECK(want, "expected.json: %s", jerr.text);
    if (!want) return;
    json_t *wi = json_object_get(want, "img_rank"), *wt = json_object_get(want, "txt_rank");
    CHECK((int64_t)json_array_size(wi) == set.n_images, "n_images %lld", (long long)set.n_images);
    CHECK((int64_t)json_array_size(wt) == set.n_texts, "n_texts %lld", (long long)set.n_texts);
    if ((int64_t)json_array_size(wi) != set.n_images || (int64_t)json_array_size(wt) != set.n_texts)
        return;

    int64_t *ir = xmalloc(set.n_images * sizeof(int64_t)),
            *tr = xmalloc(set.n_texts * sizeof(int64_t));
    for (int b = 0; b < N_BLOCKS; b++) {
        recall_ranks(&set, blocks[b][0], blocks[b][1], ir, tr);
        int bad = 0;
        for (int64_t i = 0; i < set.n_images; i++)
            bad += ir[i] != json_integer_value(json_array_get(wi, i));
        for (int64_t c = 0; c < set.n_texts; c++)
            bad += tr[c] != json_integer_value(json_array_get(wt, c));
        CHECK(bad == 0, "blocks %dx%d: %d ranks differ from recall_ref.py", blocks[b][0],
              blocks[b][1], bad);
    }

    recall_metrics m;
    recall_summarize(&set, ir, tr, &m);
    json_t *got = recall_metrics_json(&m), *wm = json_object_get(want, "metrics");
    CHECK(json_object_size(got) == 11 && json_object_size(wm) == 11, "11 keys");
    const char *k;
    json_t *v;
    json_object_foreach(wm, k, v)
    {
        json_t *g = json_object_get(got, k);
        CHECK(g && fabs(json_number_value(g) - json_number_value(v)) < 1e-9, "%s: got %g, want %g",
              k, g ? json_number_value(g) : NAN, json_number_value(v));
    }
    json_decref(got);
    json_decref(want);
    free(ir);
    free(tr);
    recall_set_free(&set);
}

/* A set with n_images images of 0..max_cap captions, random vectors: small
 * integers (exact dot products) or Gaussian. */
static void random_set(recall_set *s, int n_images, int max_cap, int dim, int integer,
                       unsigned seed)
{
    srand(seed);
    s->n_images = n_images;
    s->dim = dim;
    s->txt_off = xmalloc((n_images + 1) * sizeof(int64_t));
    s->txt_off[0] = 0;
    for (int i = 0; i < n_images; i++) s->txt_off[i + 1] = s->txt_off[i] + rand() % (max_cap + 1);
    s->n_texts = s->txt_off[n_images];
    s->img = xmalloc(n_images * dim * sizeof(float));
    s->txt = xmalloc(s->n_texts * dim * sizeof(float));
    float *all[2] = {s->img, s->txt};
    int64_t n[2] = {n_images * dim, s->n_texts * dim};
    for (int a = 0; a < 2; a++)
        for (int64_t k = 0; k < n[a]; k++) {
            if (integer)
                all[a][k] = (float)(rand() % 7 - 3);
            else { /* Box-Muller */
                double u = (rand() + 1.0) / (RAND_MAX + 2.0), v = (rand() + 1.0) / (RAND_MAX + 2.0);
                all[a][k] = (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v));
            }
        }
    /* captions near their image, so that ranks are spread out */
    for (int i = 0; i < n_images; i++)
        for (int64_t c = s->txt_off[i]; c < s->txt_off[i + 1]; c++)
            for (int k = 0; k < dim; k++) s->txt[c * dim + k] += s->img[i * dim + k];
}

/* Straight from the definition, scores in double; *margin_ok says whether no
 * wrong score is within eps of its true score (so float rounding is moot;
 * with eps 0 it says whether there are no exact ties). */
static void brute_force(const recall_set *s, int64_t *ir, int64_t *tr, double eps, int *margin_ok)
{
    int D = s->dim;
    int64_t NI = s->n_images, NT = s->n_texts;
    double *S = xmalloc(NI * NT * sizeof(double));
    int64_t *owner = xmalloc((NT + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < NI; i++)
        for (int64_t c = s->txt_off[i]; c < s->txt_off[i + 1]; c++) owner[c] = i;
    for (int64_t i = 0; i < NI; i++)
        for (int64_t c = 0; c < NT; c++) {
            double d = 0;
            for (int k = 0; k < D; k++) d += (double)s->img[i * D + k] * s->txt[c * D + k];
            S[i * NT + c] = d;
        }
    *margin_ok = 1;
    for (int64_t i = 0; i < NI; i++) {
        ir[i] = 0;
        if (s->txt_off[i + 1] == s->txt_off[i]) continue;
        double best = -INFINITY;
        for (int64_t c = s->txt_off[i]; c < s->txt_off[i + 1]; c++)
            best = fmax(best, S[i * NT + c]);
        ir[i] = 1;
        for (int64_t c = 0; c < NT; c++) {
            if (owner[c] == i) continue;
            ir[i] += S[i * NT + c] > best;
            if (fabs(S[i * NT + c] - best) <= eps) *margin_ok = 0;
        }
    }
    for (int64_t c = 0; c < NT; c++) {
        double t = S[owner[c] * NT + c];
        tr[c] = 1;
        for (int64_t i = 0; i < NI; i++) {
            if (i == owner[c]) continue;
            tr[c] += S[i * NT + c] > t;
            if (fabs(S[i * NT + c] - t) <= eps) *margin_ok = 0;
        }
    }
    free(owner);
    free(S);
}

static void test_brute_force(int integer, int n_images, int max_cap, int dim, unsigned seed)
{
    recall_set s;
    random_set(&s, n_images, max_cap, dim, integer, seed);
    int64_t *bi = xmalloc(s.n_images * sizeof(int64_t)),
            *bt = xmalloc((s.n_texts + 1) * sizeof(int64_t));
    int64_t *ir = xmalloc(s.n_images * sizeof(int64_t)),
            *tr = xmalloc((s.n_texts + 1) * sizeof(int64_t));
    int64_t *ir0 = xmalloc(s.n_images * sizeof(int64_t)),
            *tr0 = xmalloc((s.n_texts + 1) * sizeof(int64_t));
    int margin_ok; /* integer data: exact scores, so ties must agree too */
    brute_force(&s, bi, bt, integer ? 0 : 1e-4, &margin_ok);
    int spread = 0;
    for (int64_t c = 0; c < s.n_texts; c++) spread += bt[c] > 10;
    for (int b = 0; b < N_BLOCKS; b++) {
        recall_ranks(&s, blocks[b][0], blocks[b][1], ir, tr);
        if (b == 0) {
            memcpy(ir0, ir, s.n_images * sizeof(int64_t));
            memcpy(tr0, tr, s.n_texts * sizeof(int64_t));
        }
        int same = !memcmp(ir, ir0, s.n_images * sizeof(int64_t)) &&
                   !memcmp(tr, tr0, s.n_texts * sizeof(int64_t));
        CHECK(same, "%s data: blocks %dx%d give other ranks than the default",
              integer ? "integer" : "gaussian", blocks[b][0], blocks[b][1]);
        int bad = 0;
        for (int64_t i = 0; i < s.n_images; i++) bad += ir[i] != bi[i];
        for (int64_t c = 0; c < s.n_texts; c++) bad += tr[c] != bt[c];
        CHECK(bad == 0, "%s data: blocks %dx%d: %d ranks differ from the brute force",
              integer ? "integer" : "gaussian", blocks[b][0], blocks[b][1], bad);
    }
    CHECK(integer ? !margin_ok : margin_ok, integer
                                                ? "integer data should have ties"
                                                : "gaussian data has near ties: change the seed");
    CHECK(spread > 0, "ranks should be spread out");
    free(bi), free(bt), free(ir), free(tr), free(ir0), free(tr0);
    recall_set_free(&s);
}

/* ---- loading errors ---- */

static const char *tmp_tar(void)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/test_recall_%d.tar", (int)getpid());
    return path;
}

/* n samples with dim 4 and 2 captions; sample `bad` gets the defect `what`. */
static void write_stream(int n, int bad, const char *what)
{
    stream_writer *w = stream_open_write(tmp_tar());
    if (!w) die("%s", clip_error());
    sample s;
    sample_init(&s);
    for (int i = 0; i < n; i++) {
        char key[32];
        snprintf(key, sizeof key, "s%03d", i);
        sample_clear(&s);
        sample_set_key(&s, key);
        float img[5] = {1, 0, 0, 0, 0}, txt[10] = {0, 1, 0, 0, 0, 0, 0, 1, 0, 0};
        int64_t ishape[1] = {4}, tshape[2] = {2, 4};
        int is_bad = i == bad;
        if (is_bad && !strcmp(what, "dim")) ishape[0] = 5, tshape[1] = 5;
        if (is_bad && !strcmp(what, "nan")) txt[5] = NAN;
        if (is_bad && !strcmp(what, "zero")) img[0] = 0;
        if (is_bad && !strcmp(what, "nocap")) tshape[0] = 0;
        if (!(is_bad && !strcmp(what, "noimg")))
            sample_set_npy(&s, "img_emb.npy", DT_F32, 1, ishape, img);
        if (!(is_bad && !strcmp(what, "notxt"))) {
            if (is_bad && !strcmp(what, "int")) {
                int32_t t[8] = {0};
                sample_set_npy(&s, "txt_emb.npy", DT_I32, 2, tshape, t);
            } else {
                sample_set_npy(&s, "txt_emb.npy", DT_F32, 2, tshape, txt);
            }
        }
        if (stream_write(w, &s)) die("%s", clip_error());
    }
    if (stream_close_write(w)) die("%s", clip_error());
    sample_free(&s);
}

static void check_load_error(int n, int bad, const char *what, const char *want)
{
    write_stream(n, bad, what);
    recall_set set;
    int rc = recall_load_stream(tmp_tar(), &set);
    CHECK(rc == -1, "%s: loading should fail", what);
    if (rc == 0)
        recall_set_free(&set);
    else
        CHECK(strstr(clip_error(), want), "%s: error '%s' should mention '%s'", what, clip_error(),
              want);
}

static void test_load_errors(void)
{
    check_load_error(0, -1, "", "empty stream");
    check_load_error(3, 1, "noimg", "sample s001: no img_emb.npy");
    check_load_error(3, 2, "notxt", "sample s002: no txt_emb.npy");
    check_load_error(3, 1, "dim", "sample s001");
    check_load_error(3, 0, "nan", "sample s000: txt_emb.npy row 1 has a non-finite");
    check_load_error(3, 2, "zero", "sample s002: img_emb.npy row 0 is a zero vector");
    check_load_error(3, 1, "int", "float32");
    check_load_error(1, 0, "nocap", "no captions");

    /* an image without captions is kept as a distractor */
    write_stream(3, 1, "nocap");
    recall_set set;
    int rc = recall_load_stream(tmp_tar(), &set);
    CHECK(rc == 0, "%s", clip_error());
    if (rc == 0) {
        CHECK(set.n_images == 3 && set.n_texts == 4 && set.txt_off[2] == 2, "offsets");
        int64_t ir[3], tr[4];
        recall_ranks(&set, 0, 0, ir, tr);
        CHECK(ir[1] == 0 && ir[0] >= 1 && ir[2] >= 1, "no rank for the caption-less image");
        recall_metrics m;
        recall_summarize(&set, ir, tr, &m);
        CHECK(m.n_image_queries == 2 && m.n_images == 3, "queries %lld",
              (long long)m.n_image_queries);
        recall_set_free(&set);
    }
    unlink(tmp_tar());
}

int main(void)
{
    test_fixture();
    test_brute_force(1, 120, 4, 8, 1);
    test_brute_force(1, 300, 6, 3, 2); /* tiny dim: ties everywhere */
    test_brute_force(0, 150, 5, 24, 3);
    test_load_errors();
    return unit_done();
}
